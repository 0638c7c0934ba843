/* The dtypes the weight format knows, which of them may travel as which wire dtype, and the
 * one conversion routine both the encoder and the decoder use to move tensor bytes. */
#include "codec_core.h"
#include "fp16.h"

#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[CODEC_DTYPE_COUNT] = {
    [CODEC_BOOL] = {"bool", 1},         [CODEC_UINT8] = {"uint8", 1},
    [CODEC_INT8] = {"int8", 1},         [CODEC_UINT16] = {"uint16", 2},
    [CODEC_INT16] = {"int16", 2},       [CODEC_UINT32] = {"uint32", 4},
    [CODEC_INT32] = {"int32", 4},       [CODEC_UINT64] = {"uint64", 8},
    [CODEC_INT64] = {"int64", 8},       [CODEC_FLOAT16] = {"float16", 2},
    [CODEC_BFLOAT16] = {"bfloat16", 2}, [CODEC_FLOAT32] = {"float32", 4},
    [CODEC_FLOAT64] = {"float64", 8},
};

const char *codec_dtype_name(codec_dtype dtype)
{
    return dtype_table[dtype].name;
}

size_t codec_dtype_size(codec_dtype dtype)
{
    return dtype_table[dtype].size;
}

bool codec_dtype_from_name(const char *name, size_t length, codec_dtype *dtype)
{
    for (int i = 0; i < CODEC_DTYPE_COUNT; i++) {
        if (strlen(dtype_table[i].name) == length &&
            memcmp(dtype_table[i].name, name, length) == 0) {
            *dtype = (codec_dtype)i;
            return true;
        }
    }
    return false;
}

static bool is_wide_float(codec_dtype dtype)
{
    return dtype == CODEC_FLOAT32 || dtype == CODEC_FLOAT64;
}

static bool is_half_float(codec_dtype dtype)
{
    return dtype == CODEC_FLOAT16 || dtype == CODEC_BFLOAT16;
}

bool codec_wire_allowed(codec_dtype dtype, codec_dtype wire)
{
    return dtype == wire || (is_wide_float(dtype) && is_half_float(wire));
}

void codec_convert(codec_dtype to, void *destination, codec_dtype from, const void *source,
                   uint64_t count)
{
    if (to == from) {
        if (count)
            memcpy(destination, source, (size_t)count * codec_dtype_size(to));
        return;
    }
    if (to == CODEC_FLOAT16 && from == CODEC_FLOAT32)
        fp16_from_float32(destination, source, count);
    else if (to == CODEC_FLOAT16 && from == CODEC_FLOAT64)
        fp16_from_float64(destination, source, count);
    else if (to == CODEC_BFLOAT16 && from == CODEC_FLOAT32)
        bf16_from_float32(destination, source, count);
    else if (to == CODEC_BFLOAT16 && from == CODEC_FLOAT64)
        bf16_from_float64(destination, source, count);
    else if (to == CODEC_FLOAT32 && from == CODEC_FLOAT16)
        fp16_to_float32(destination, source, count);
    else if (to == CODEC_FLOAT64 && from == CODEC_FLOAT16)
        fp16_to_float64(destination, source, count);
    else if (to == CODEC_FLOAT32 && from == CODEC_BFLOAT16)
        bf16_to_float32(destination, source, count);
    else if (to == CODEC_FLOAT64 && from == CODEC_BFLOAT16)
        bf16_to_float64(destination, source, count);
}

/* Pieces small enough for the float16 copy to stay in the L1/L2 cache between the passes. */
#define ROUNDING_PIECE 4096

void codec_round_to_float16(codec_dtype dtype, void *values, uint64_t count)
{
    uint16_t halves[ROUNDING_PIECE];
    size_t item = codec_dtype_size(dtype);
    for (uint64_t done = 0; done < count; done += ROUNDING_PIECE) {
        uint64_t piece = count - done < ROUNDING_PIECE ? count - done : ROUNDING_PIECE;
        uint8_t *at = (uint8_t *)values + done * item;
        codec_convert(CODEC_FLOAT16, halves, dtype, at, piece);
        codec_convert(dtype, at, CODEC_FLOAT16, halves, piece);
    }
}
