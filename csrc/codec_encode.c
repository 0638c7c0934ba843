/* Encoder: lays out a whole weights message with msgpack-c's packer in two identical passes,
 * one that only counts bytes (so the output is allocated once, at its final size) and one
 * that writes. Tensor data is written afterwards by codec_encode_data, without Python. */
#include "codec_core.h"
#include "quantize.h"

#include <msgpack.h>
#include <stdio.h>
#include <string.h>

/* msgpack-c's packer writes through a callback; with no buffer it just counts. */
typedef struct {
    uint8_t *out;
    size_t position;
    bool overflowed;
} layout_writer;

static int layout_write(void *data, const char *bytes, size_t length)
{
    layout_writer *writer = data;
    if (writer->out)
        memcpy(writer->out + writer->position, bytes, length);
    if (length > SIZE_MAX - writer->position)
        writer->overflowed = true;
    else
        writer->position += length;
    return 0;
}

static void pack_text(msgpack_packer *packer, const char *text, size_t length)
{
    msgpack_pack_str(packer, length);
    msgpack_pack_str_body(packer, text, length);
}

static void pack_key(msgpack_packer *packer, const char *key)
{
    pack_text(packer, key, strlen(key));
}

/* Size of the bin header msgpack-c chooses for a body of `length` bytes. */
static size_t bin_header_size(uint64_t length)
{
    return length < 256 ? 2 : length < 65536 ? 3 : 5;
}

/* Bytes of a tensor's 'data' field. */
static uint64_t data_length_of(const codec_tensor_source *tensor)
{
    switch (tensor->encoding) {
    case CODEC_ENCODING_Q8:
        return 2 * q8_block_count(tensor->element_count) + tensor->element_count;
    case CODEC_ENCODING_TOPK:
        return tensor->topk_length;
    default:
        return tensor->element_count * codec_dtype_size(tensor->wire);
    }
}

static void pack_tensor(msgpack_packer *packer, layout_writer *writer,
                        const codec_tensor_source *tensor, uint8_t **data_destination)
{
    pack_text(packer, tensor->name, tensor->name_length);
    bool plain = tensor->encoding == CODEC_ENCODING_PLAIN;
    msgpack_pack_map(packer, plain ? 5 : 6);
    pack_key(packer, "dtype");
    pack_key(packer, codec_dtype_name(tensor->dtype));
    pack_key(packer, "wire");
    pack_key(packer, tensor->encoding == CODEC_ENCODING_Q8     ? CODEC_WIRE_Q8
                     : tensor->encoding == CODEC_ENCODING_TOPK ? CODEC_WIRE_TOPK
                                                               : codec_dtype_name(tensor->wire));
    pack_key(packer, "shape");
    msgpack_pack_array(packer, tensor->ndim);
    for (uint32_t i = 0; i < tensor->ndim; i++)
        msgpack_pack_uint64(packer, tensor->shape[i]);
    if (tensor->encoding == CODEC_ENCODING_Q8) {
        pack_key(packer, "blocks");
        msgpack_pack_uint64(packer, q8_block_count(tensor->element_count));
    } else if (tensor->encoding == CODEC_ENCODING_TOPK) {
        pack_key(packer, "kept");
        msgpack_pack_uint64(packer, tensor->topk_keep);
    }

    /* A "pad" bin before "data" moves the data to the next aligned offset, so a receiver
     * that keeps the message aligned can view every tensor in place. */
    uint64_t data_length = data_length_of(tensor);
    size_t after_pad_header = writer->position + 4 /* "pad" */ + 2 /* bin8 header */;
    size_t data_start_unpadded = after_pad_header + 5 /* "data" */ + bin_header_size(data_length);
    size_t padding =
        (CODEC_DATA_ALIGNMENT - data_start_unpadded % CODEC_DATA_ALIGNMENT) % CODEC_DATA_ALIGNMENT;
    static const char zeros[CODEC_DATA_ALIGNMENT] = {0};
    pack_key(packer, "pad");
    msgpack_pack_bin(packer, padding);
    msgpack_pack_bin_body(packer, zeros, padding);
    pack_key(packer, "data");
    msgpack_pack_bin(packer, (size_t)data_length);

    *data_destination = writer->out ? writer->out + writer->position : NULL;
    if (data_length > SIZE_MAX - writer->position)
        writer->overflowed = true;
    else
        writer->position += (size_t)data_length;
}

static void pack_message(const codec_encode_input *input, layout_writer *writer,
                         uint8_t **data_destinations)
{
    msgpack_packer packer;
    msgpack_packer_init(&packer, writer, layout_write);
    msgpack_pack_map(&packer, input->delta ? 6 : 5);
    /* format and version come first so that any future version is recognised as such */
    pack_key(&packer, "format");
    pack_key(&packer, CODEC_FORMAT_NAME);
    pack_key(&packer, "version");
    msgpack_pack_uint32(&packer, input->delta ? CODEC_DELTA_FORMAT_VERSION : CODEC_FORMAT_VERSION);
    pack_key(&packer, "kind");
    pack_key(&packer, input->kind == CODEC_KIND_TORCH ? "torch" : "numpy");
    if (input->delta) {
        pack_key(&packer, "reference");
        msgpack_pack_bin(&packer, CODEC_REFERENCE_ID_SIZE);
        msgpack_pack_bin_body(&packer, input->reference_id, CODEC_REFERENCE_ID_SIZE);
    }
    pack_key(&packer, "metadata");
    layout_write(writer, (const char *)input->metadata, input->metadata_length);
    pack_key(&packer, "tensors");
    msgpack_pack_map(&packer, input->tensor_count);
    for (size_t i = 0; i < input->tensor_count; i++) {
        uint8_t *unused;
        pack_tensor(&packer, writer, &input->tensors[i],
                    data_destinations ? &data_destinations[i] : &unused);
    }
}

size_t codec_encoded_size(const codec_encode_input *input)
{
    layout_writer counter = {NULL, 0, false};
    pack_message(input, &counter, NULL);
    return counter.overflowed ? 0 : counter.position;
}

void codec_encode_layout(const codec_encode_input *input, uint8_t *out, uint8_t **data_destinations)
{
    layout_writer writer = {out, 0, false};
    pack_message(input, &writer, data_destinations);
}

int codec_encode_data(const codec_encode_input *input, uint8_t *const *data_destinations,
                      codec_error *err)
{
    for (size_t i = 0; i < input->tensor_count; i++) {
        const codec_tensor_source *tensor = &input->tensors[i];
        uint8_t *out = data_destinations[i];
        uint64_t count = tensor->element_count, bad_index = 0;
        int rc = 0;
        if (tensor->encoding == CODEC_ENCODING_Q8) {
            /* the scales first, then the levels */
            int8_t *levels = (int8_t *)(out + 2 * q8_block_count(count));
            rc = tensor->dtype == CODEC_FLOAT64
                     ? q8_encode_float64(out, levels, tensor->source, tensor->reference, count,
                                         &bad_index)
                     : q8_encode_float32(out, levels, tensor->source, tensor->reference, count,
                                         &bad_index);
        } else if (tensor->encoding == CODEC_ENCODING_TOPK) {
            if (tensor->topk_length)
                memcpy(out, tensor->topk_bytes, tensor->topk_length);
        } else {
            codec_convert(tensor->wire, out, tensor->dtype, tensor->source, count);
        }
        if (rc != 0) {
            snprintf(err->message, sizeof err->message,
                     "tensor '%.*s': the delta near index %llu is not finite or too large for "
                     "q8 (|delta| above 65504 * 127)",
                     (int)(tensor->name_length < 80 ? tensor->name_length : 80), tensor->name,
                     (unsigned long long)bad_index);
            return -1;
        }
    }
    return 0;
}
