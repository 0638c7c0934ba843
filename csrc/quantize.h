/* The kernels of the delta encodings (docs/weights-format.md): "q8", blockwise symmetric int8
 * with one float16 scale per 256 values, and "topk", the largest 1% of a delta as int8 with
 * one float32 scale and varint-coded positions. No Python; callers release the GIL. */
#ifndef SEGSUITE_QUANTIZE_H
#define SEGSUITE_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>

#define Q8_BLOCK_SIZE 256
/* |q| never exceeds this: the scale maps the block's largest |delta| to it (symmetric). */
#define Q8_MAX_LEVEL 127
/* Longest varint a topk position gap may take (positions are below 2^56). */
#define TOPK_MAX_VARINT_BYTES 9

static inline uint64_t q8_block_count(uint64_t count)
{
    return (count + Q8_BLOCK_SIZE - 1) / Q8_BLOCK_SIZE;
}

/* q8 encoding of update - reference: `scales` gets q8_block_count(count) little-endian
 * float16 scales, `values` count int8. Returns 0, or -1 with *bad_index set when a delta is
 * not finite or too large for a float16 scale (|delta| > 65504 * 127). */
int q8_encode_float32(uint8_t *scales, int8_t *values, const float *update, const float *reference,
                      uint64_t count, uint64_t *bad_index);
int q8_encode_float64(uint8_t *scales, int8_t *values, const double *update,
                      const double *reference, uint64_t count, uint64_t *bad_index);
/* out = reference + values * scale, block by block; scales were validated (finite, >= 0). */
void q8_decode_float32(float *out, const uint8_t *scales, const int8_t *values,
                       const float *reference, uint64_t count);
void q8_decode_float64(double *out, const uint8_t *scales, const int8_t *values,
                       const double *reference, uint64_t count);

/* topk encoding of update - reference (float32 or float64 as is_float64 says), keeping `keep`
 * values: writes float32 scale, `keep` int8, `keep` varint position gaps into a new malloc'd
 * buffer (*out, *out_length). Returns 0; -1 with *bad_index set for a non-finite delta; -2
 * when out of memory. */
int topk_encode(int is_float64, const void *update, const void *reference, uint64_t count,
                uint64_t keep, uint8_t **out, size_t *out_length, uint64_t *bad_index);
/* Checks a topk data field: returns NULL if valid, else a static description of the fault. */
const char *topk_validate(const uint8_t *data, size_t length, uint64_t count, uint64_t keep);
/* out = reference, plus each kept value at its position (data already validated). */
void topk_decode(int is_float64, void *out, const uint8_t *data, uint64_t keep,
                 const void *reference, uint64_t count);

#endif
