/* libFuzzer harness for the weight decoder: any input must be rejected cleanly or decoded into
 * tensors whose bytes lie inside the input; a whole (version 1) message must convert,
 * re-encode and decode again to the same tensors; a delta (version 2) message must rebuild
 * every tensor against a zero reference, with finite values wherever its q8 or topk data says
 * so. Build: make -C csrc/fuzz (output in build/fuzz/). */
#include "codec_core.h"
#include "quantize.h"

#include <stdlib.h>
#include <string.h>

#define CHECK(condition)                                                                           \
    do {                                                                                           \
        if (!(condition))                                                                          \
            __builtin_trap();                                                                      \
    } while (0)

/* Converts every tensor to its dtype and encodes the result again, as a sender would. */
static void reencode_and_compare(const uint8_t *data, const codec_message *message)
{
    size_t count = message->tensor_count;
    codec_tensor_source *sources = calloc(count ? count : 1, sizeof *sources);
    void **converted = calloc(count ? count : 1, sizeof *converted);
    uint8_t **destinations = calloc(count ? count : 1, sizeof *destinations);
    CHECK(sources && converted && destinations);
    for (size_t i = 0; i < count; i++) {
        const codec_tensor_view *tensor = &message->tensors[i];
        size_t bytes = (size_t)tensor->element_count * codec_dtype_size(tensor->dtype);
        converted[i] = malloc(bytes ? bytes : 1);
        CHECK(converted[i]);
        codec_convert(tensor->dtype, converted[i], tensor->wire, data + tensor->data_offset,
                      tensor->element_count);
        sources[i] = (codec_tensor_source){(const char *)tensor->name,
                                           tensor->name_length,
                                           tensor->dtype,
                                           tensor->wire,
                                           tensor->ndim,
                                           tensor->shape,
                                           tensor->element_count,
                                           converted[i],
                                           CODEC_ENCODING_PLAIN,
                                           NULL,
                                           0,
                                           NULL,
                                           0};
    }
    codec_encode_input input = {.kind = message->kind,
                                .metadata = data + message->metadata_offset,
                                .metadata_length = message->metadata_length,
                                .tensors = sources,
                                .tensor_count = count};
    size_t size = codec_encoded_size(&input);
    CHECK(size > 0);
    uint8_t *encoded = malloc(size);
    CHECK(encoded);
    codec_encode_layout(&input, encoded, destinations);
    codec_error encode_err;
    CHECK(codec_encode_data(&input, destinations, &encode_err) == 0);

    codec_message again;
    codec_error err;
    CHECK(codec_decode(encoded, size, &again, &err) == 0);
    CHECK(again.tensor_count == count && again.kind == message->kind);
    for (size_t i = 0; i < count; i++) {
        const codec_tensor_view *a = &message->tensors[i], *b = &again.tensors[i];
        CHECK(a->name_length == b->name_length && memcmp(a->name, b->name, a->name_length) == 0);
        CHECK(a->dtype == b->dtype && a->wire == b->wire && a->ndim == b->ndim);
        CHECK(memcmp(a->shape, b->shape, a->ndim * sizeof *a->shape) == 0);
        CHECK(b->data_offset % CODEC_DATA_ALIGNMENT == 0);
        /* float16 and exact dtypes survive wire -> dtype -> wire bit for bit; bfloat16 NaNs
         * come back quieted (docs/weights-format.md), so only its non-NaN values are. */
        if (a->wire != CODEC_BFLOAT16) {
            CHECK(memcmp(data + a->data_offset, encoded + b->data_offset, a->data_length) == 0);
        }
    }
    codec_message_free(&again);
    free(encoded);
    for (size_t i = 0; i < count; i++)
        free(converted[i]);
    free(converted);
    free(sources);
    free(destinations);
}

/* Rebuilds every tensor of a delta message against an all-zero reference: exercises the q8
 * and topk kernels on whatever the validator let through. Accepted scales are finite and
 * levels are int8, so every rebuilt value must be finite. Error feedback's in-place
 * subtraction of the same tensor from a zero residual must give exactly its negation. */
static void rebuild_against_zero(const uint8_t *data, const codec_message *message)
{
    for (size_t i = 0; i < message->tensor_count; i++) {
        const codec_tensor_view *tensor = &message->tensors[i];
        size_t bytes = (size_t)tensor->element_count * codec_dtype_size(tensor->dtype);
        void *zero = calloc(bytes ? bytes : 1, 1);
        void *out = malloc(bytes ? bytes : 1);
        CHECK(zero && out);
        codec_decode_tensor(data, tensor, zero, out);
        if (tensor->encoding != CODEC_ENCODING_PLAIN) {
            for (uint64_t k = 0; k < tensor->element_count; k++) {
                double value = tensor->dtype == CODEC_FLOAT64 ? ((const double *)out)[k]
                                                              : ((const float *)out)[k];
                CHECK(value == value && value - value == 0); /* not NaN, not infinite */
            }
        }
        if (tensor->encoding != CODEC_ENCODING_PLAIN) {
            size_t item = codec_dtype_size(tensor->dtype);
            void *residual = calloc(bytes ? bytes : 1, 1);
            void *scratch = malloc((size_t)codec_subtract_scratch_count(tensor) * item + 1);
            CHECK(residual && scratch);
            codec_subtract_rebuilt(data, tensor, zero, residual, scratch);
            for (uint64_t k = 0; k < tensor->element_count; k++) {
                if (tensor->dtype == CODEC_FLOAT64)
                    CHECK(((const double *)residual)[k] == -((const double *)out)[k]);
                else
                    CHECK(((const float *)residual)[k] == -((const float *)out)[k]);
            }
            free(residual);
            free(scratch);
        }
        free(zero);
        free(out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    codec_message message;
    codec_error err;
    if (codec_decode(data, size, &message, &err) != 0) {
        CHECK(err.message[0] != '\0');
        return 0;
    }
    for (size_t i = 0; i < message.tensor_count; i++) {
        const codec_tensor_view *tensor = &message.tensors[i];
        CHECK(tensor->data_offset <= size && tensor->data_length <= size - tensor->data_offset);
        if (tensor->encoding == CODEC_ENCODING_PLAIN)
            CHECK(tensor->data_length == tensor->element_count * codec_dtype_size(tensor->wire));
        else if (tensor->encoding == CODEC_ENCODING_Q8)
            CHECK(tensor->data_length ==
                  2 * q8_block_count(tensor->element_count) + tensor->element_count);
        else
            CHECK(tensor->topk_keep <= tensor->element_count &&
                  tensor->data_length >= 4 + 2 * tensor->topk_keep);
    }
    CHECK(message.metadata_offset + message.metadata_length <= size);
    if (message.version == CODEC_DELTA_FORMAT_VERSION)
        rebuild_against_zero(data, &message);
    else
        reencode_and_compare(data, &message);
    codec_message_free(&message);
    return 0;
}
