/* The delta part of the codec: preparing q8/topk tensors for the encoder, the reference id
 * that names what a delta was taken against, and rebuilding a tensor from a delta and its
 * reference on the decoding side. The byte kernels are in quantize.c and refhash.c. */
#include "codec_core.h"
#include "quantize.h"
#include "refhash.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put_le(uint8_t **cursor, uint64_t value, int bytes)
{
    for (int i = 0; i < bytes; i++)
        *(*cursor)++ = (uint8_t)(value >> (8 * i));
}

/* The id hashes, for each delta tensor in order: name length (u32) and name, dtype name
 * length (u8) and name, ndim (u32), each dimension (u64), and the 16-byte refhash128 of the
 * reference's bytes; all integers little-endian. The names, dtypes and shapes are in it so
 * that the same bytes under another layout are another reference. */
int codec_reference_id(const codec_tensor_source *tensors, size_t count,
                       uint8_t out[CODEC_REFERENCE_ID_SIZE])
{
    size_t size = 0;
    for (size_t i = 0; i < count; i++)
        if (tensors[i].encoding != CODEC_ENCODING_PLAIN)
            size += 4 + tensors[i].name_length + 1 + strlen(codec_dtype_name(tensors[i].dtype)) +
                    4 + 8 * (size_t)tensors[i].ndim + REFHASH_SIZE;
    uint8_t *summary = malloc(size ? size : 1);
    if (summary == NULL)
        return -1;
    uint8_t *cursor = summary;
    for (size_t i = 0; i < count; i++) {
        const codec_tensor_source *tensor = &tensors[i];
        if (tensor->encoding == CODEC_ENCODING_PLAIN)
            continue;
        put_le(&cursor, tensor->name_length, 4);
        memcpy(cursor, tensor->name, tensor->name_length);
        cursor += tensor->name_length;
        const char *dtype = codec_dtype_name(tensor->dtype);
        put_le(&cursor, strlen(dtype), 1);
        memcpy(cursor, dtype, strlen(dtype));
        cursor += strlen(dtype);
        put_le(&cursor, tensor->ndim, 4);
        for (uint32_t d = 0; d < tensor->ndim; d++)
            put_le(&cursor, tensor->shape[d], 8);
        refhash128(tensor->reference,
                   (size_t)tensor->element_count * codec_dtype_size(tensor->dtype), cursor);
        cursor += REFHASH_SIZE;
    }
    refhash128(summary, size, out);
    free(summary);
    return 0;
}

int codec_prepare_deltas(codec_encode_input *input, codec_error *err)
{
    for (size_t i = 0; i < input->tensor_count; i++) {
        codec_tensor_source *tensor = (codec_tensor_source *)&input->tensors[i];
        if (tensor->encoding != CODEC_ENCODING_TOPK)
            continue;
        if (tensor->topk_keep > tensor->element_count)
            tensor->topk_keep = tensor->element_count;
        uint64_t bad_index = 0;
        int rc = topk_encode(tensor->dtype == CODEC_FLOAT64, tensor->source, tensor->reference,
                             tensor->element_count, tensor->topk_keep, &tensor->topk_bytes,
                             &tensor->topk_length, &bad_index);
        if (rc == -2) {
            snprintf(err->message, sizeof err->message, "out of memory selecting topk values");
            return -1;
        }
        if (rc != 0) {
            snprintf(err->message, sizeof err->message,
                     "tensor '%.*s': the delta at index %llu is not finite",
                     (int)(tensor->name_length < 80 ? tensor->name_length : 80), tensor->name,
                     (unsigned long long)bad_index);
            return -1;
        }
    }
    if (codec_reference_id(input->tensors, input->tensor_count, input->reference_id) != 0) {
        snprintf(err->message, sizeof err->message, "out of memory hashing the reference");
        return -1;
    }
    return 0;
}

void codec_release_deltas(codec_encode_input *input)
{
    for (size_t i = 0; i < input->tensor_count; i++) {
        codec_tensor_source *tensor = (codec_tensor_source *)&input->tensors[i];
        free(tensor->topk_bytes);
        tensor->topk_bytes = NULL;
    }
}

void codec_decode_tensor(const uint8_t *message_data, const codec_tensor_view *tensor,
                         const void *reference, void *out)
{
    const uint8_t *data = message_data + tensor->data_offset;
    uint64_t count = tensor->element_count;
    switch (tensor->encoding) {
    case CODEC_ENCODING_Q8: {
        const int8_t *levels = (const int8_t *)(data + 2 * tensor->q8_blocks);
        if (tensor->dtype == CODEC_FLOAT64)
            q8_decode_float64(out, data, levels, reference, count);
        else
            q8_decode_float32(out, data, levels, reference, count);
        break;
    }
    case CODEC_ENCODING_TOPK:
        topk_decode(tensor->dtype == CODEC_FLOAT64, out, data, tensor->topk_keep, reference, count);
        break;
    default:
        codec_convert(tensor->dtype, out, tensor->wire, data, count);
    }
}

/* Pieces of whole q8 blocks: the rebuilt values stay in the L1/L2 cache until subtracted. */
#define SUBTRACT_PIECE (64 * Q8_BLOCK_SIZE)

static void subtract_values(codec_dtype dtype, void *residual, const void *rebuilt, uint64_t count)
{
    if (dtype == CODEC_FLOAT64) {
        double *into = residual;
        const double *minus = rebuilt;
        for (uint64_t i = 0; i < count; i++)
            into[i] -= minus[i];
    } else {
        float *into = residual;
        const float *minus = rebuilt;
        for (uint64_t i = 0; i < count; i++)
            into[i] -= minus[i];
    }
}

uint64_t codec_subtract_scratch_count(const codec_tensor_view *tensor)
{
    return tensor->encoding == CODEC_ENCODING_Q8 ? SUBTRACT_PIECE : tensor->element_count;
}

void codec_subtract_rebuilt(const uint8_t *message_data, const codec_tensor_view *tensor,
                            const void *reference, void *residual, void *scratch)
{
    uint64_t count = tensor->element_count;
    size_t item = codec_dtype_size(tensor->dtype);
    if (tensor->encoding != CODEC_ENCODING_Q8) {
        codec_decode_tensor(message_data, tensor, reference, scratch);
        subtract_values(tensor->dtype, residual, scratch, count);
        return;
    }
    const uint8_t *scales = message_data + tensor->data_offset;
    const int8_t *levels = (const int8_t *)(scales + 2 * tensor->q8_blocks);
    for (uint64_t start = 0; start < count; start += SUBTRACT_PIECE) {
        uint64_t piece = count - start < SUBTRACT_PIECE ? count - start : SUBTRACT_PIECE;
        const uint8_t *piece_scales = scales + 2 * (start / Q8_BLOCK_SIZE);
        const uint8_t *piece_reference = (const uint8_t *)reference + start * item;
        if (tensor->dtype == CODEC_FLOAT64)
            q8_decode_float64(scratch, piece_scales, levels + start,
                              (const double *)piece_reference, piece);
        else
            q8_decode_float32(scratch, piece_scales, levels + start, (const float *)piece_reference,
                              piece);
        subtract_values(tensor->dtype, (uint8_t *)residual + start * item, scratch, piece);
    }
}
