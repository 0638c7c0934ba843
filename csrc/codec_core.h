/* The weight codec without Python: dtype rules, the encoder that lays a state dict out as one
 * msgpack message, and the validating decoder that turns untrusted bytes into tensor views.
 * docs/weights-format.md describes the bytes; the Python binding (codec.c) and the fuzz
 * harness (fuzz/fuzz_decode.c) both sit on top of this layer. */
#ifndef SEGSUITE_CODEC_CORE_H
#define SEGSUITE_CODEC_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CODEC_FORMAT_NAME "segmentation-suite-weights"
/* Version 1: every tensor whole. Version 2 adds the delta encodings (q8, topk) against a
 * reference model named by its id; messages without deltas are still written as version 1,
 * so that older receivers read them. */
#define CODEC_FORMAT_VERSION 1
#define CODEC_DELTA_FORMAT_VERSION 2
#define CODEC_REFERENCE_ID_SIZE 16
/* The 'wire' names of the delta encodings (in place of a dtype). */
#define CODEC_WIRE_Q8 "q8"
#define CODEC_WIRE_TOPK "topk"
/* Tensor data starts at a multiple of this offset from the start of the message. */
#define CODEC_DATA_ALIGNMENT 64
#define CODEC_MAX_NDIM 32
#define CODEC_MAX_NAME_LENGTH 4096
#define CODEC_MAX_METADATA_DEPTH 32
/* No dimension, and no product of the non-zero dimensions, may exceed this many elements:
 * far beyond any real tensor, small enough that byte counts never overflow. */
#define CODEC_MAX_ELEMENTS (UINT64_C(1) << 56)

typedef enum {
    CODEC_BOOL,
    CODEC_UINT8,
    CODEC_INT8,
    CODEC_UINT16,
    CODEC_INT16,
    CODEC_UINT32,
    CODEC_INT32,
    CODEC_UINT64,
    CODEC_INT64,
    CODEC_FLOAT16,
    CODEC_BFLOAT16,
    CODEC_FLOAT32,
    CODEC_FLOAT64,
    CODEC_DTYPE_COUNT
} codec_dtype;

typedef enum { CODEC_KIND_NUMPY, CODEC_KIND_TORCH } codec_kind;

/* How a tensor travels: whole as its wire dtype, or as a delta against the reference. */
typedef enum { CODEC_ENCODING_PLAIN, CODEC_ENCODING_Q8, CODEC_ENCODING_TOPK } codec_encoding;

typedef struct {
    char message[320];
} codec_error;

/* dtype names as written on the wire ("float16", "int64", ...). */
const char *codec_dtype_name(codec_dtype dtype);
/* Returns false when the name is not one of ours. */
bool codec_dtype_from_name(const char *name, size_t length, codec_dtype *dtype);
size_t codec_dtype_size(codec_dtype dtype);
/* Whether a tensor of `dtype` may travel as `wire`: the same dtype always, and float32 or
 * float64 as float16 or bfloat16. */
bool codec_wire_allowed(codec_dtype dtype, codec_dtype wire);
/* Converts `count` elements from `from` to `to`: the same dtype, or either direction of a
 * pair codec_wire_allowed accepts.
 * Touches no Python state, so callers run it with the GIL released. */
void codec_convert(codec_dtype to, void *destination, codec_dtype from, const void *source,
                   uint64_t count);
/* Rounds `count` float32 or float64 values (as `dtype` says) in place to float16 values: the
 * same bits as converting them to a float16 wire and back (the same kernels), in one pass. */
void codec_round_to_float16(codec_dtype dtype, void *values, uint64_t count);

/* ---- encoding ------------------------------------------------------------------------- */

typedef struct {
    const char *name; /* UTF-8, not NUL-terminated */
    size_t name_length;
    codec_dtype dtype;
    codec_dtype wire;
    uint32_t ndim;
    const uint64_t *shape;
    uint64_t element_count;
    const void *source; /* element_count values of dtype, C order */
    /* Delta encodings only (dtype float32 or float64): */
    codec_encoding encoding;
    const void *reference; /* element_count values of dtype: what the delta is taken against */
    uint64_t topk_keep;    /* how many values topk keeps */
    uint8_t *topk_bytes;   /* the topk data field, made by codec_prepare_deltas */
    size_t topk_length;
} codec_tensor_source;

typedef struct {
    codec_kind kind;
    bool delta; /* a version-2 message with reference_id (codec_prepare_deltas fills it) */
    uint8_t reference_id[CODEC_REFERENCE_ID_SIZE];
    const uint8_t *metadata; /* one msgpack map, written as is */
    size_t metadata_length;
    const codec_tensor_source *tensors;
    size_t tensor_count;
} codec_encode_input;

/* For a delta message: selects the topk values (malloc'd into the sources; free with
 * codec_release_deltas) and computes the reference id. Needs no Python. Returns -1 and says
 * why when a delta is not finite. */
int codec_prepare_deltas(codec_encode_input *input, codec_error *err);
void codec_release_deltas(codec_encode_input *input);
/* The id of the reference of the delta tensors among `tensors` (in their order): a hash of
 * each one's name, dtype, shape and reference bytes. See docs/weights-format.md. */
int codec_reference_id(const codec_tensor_source *tensors, size_t count,
                       uint8_t out[CODEC_REFERENCE_ID_SIZE]);

/* Exact size of the encoded message, or 0 if it would not fit in size_t. */
size_t codec_encoded_size(const codec_encode_input *input);
/* Writes the message structure into `out` (codec_encoded_size bytes) and records where
 * each tensor's data goes; the data itself is written by codec_encode_data, which needs no
 * Python and so can run without the GIL. */
void codec_encode_layout(const codec_encode_input *input, uint8_t *out,
                         uint8_t **data_destinations);
int codec_encode_data(const codec_encode_input *input, uint8_t *const *data_destinations,
                      codec_error *err);

/* Checks a metadata map (the value of "metadata") by the rules the decoder applies, so the
 * encoder never writes what a receiver would reject. */
int codec_validate_metadata(const uint8_t *data, size_t size, codec_error *err);

/* ---- decoding ------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *name; /* points into the message */
    uint32_t name_length;
    codec_dtype dtype;
    codec_dtype wire;
    uint32_t ndim;
    const uint64_t *shape; /* ndim dimensions, in codec_message.dimensions */
    size_t shape_start;
    uint64_t element_count;
    size_t data_offset; /* from the start of the message */
    size_t data_length; /* element_count * size of wire, for the plain encoding */
    codec_encoding encoding;
    uint64_t q8_blocks; /* q8: scales in data, one per 256 values */
    uint64_t topk_keep; /* topk: values kept */
} codec_tensor_view;

typedef struct {
    uint32_t version;
    codec_kind kind;
    uint8_t reference_id[CODEC_REFERENCE_ID_SIZE]; /* version 2 only */
    size_t metadata_offset;                        /* the metadata map, already validated */
    size_t metadata_length;
    codec_tensor_view *tensors; /* in message order */
    size_t tensor_count;
    uint64_t *dimensions; /* every tensor's shape, one after the other */
    size_t dimension_count;
} codec_message;

/* Validates the whole message; on success the caller owns the message's arrays (free with
 * codec_message_free). On failure returns -1 and err says what and where; nothing to free.
 * Allocation grows only with tensors actually parsed, so it is bounded by the input size. */
int codec_decode(const uint8_t *data, size_t size, codec_message *message, codec_error *err);
void codec_message_free(codec_message *message);
/* Writes one validated tensor, in its dtype, to `out`: converts a plain tensor, or adds a
 * delta to `reference` (element_count values of the tensor's dtype). Needs no Python. */
void codec_decode_tensor(const uint8_t *message_data, const codec_tensor_view *tensor,
                         const void *reference, void *out);
/* residual -= what the validated delta `tensor` rebuilds against `reference` (the same bits
 * as codec_decode_tensor's, then one subtraction each), for a sender's error feedback without
 * a model-sized temporary. `scratch` holds codec_subtract_scratch_count(tensor) values of the
 * tensor's dtype. */
uint64_t codec_subtract_scratch_count(const codec_tensor_view *tensor);
void codec_subtract_rebuilt(const uint8_t *message_data, const codec_tensor_view *tensor,
                            const void *reference, void *residual, void *scratch);

#endif
