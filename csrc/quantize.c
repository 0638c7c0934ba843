/* q8 and topk delta kernels. The q8 float32 kernels have an AVX2 path chosen at run time (the
 * module-wide SIMD switch of fp16.c) that is bit-identical to the scalar one: the scale is
 * always computed by the same scalar code, products q * scale are exact in float32, and both
 * paths round with the current (nearest-even) mode. */
#include "quantize.h"

#include "fp16.h"

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QUANTIZE_HAVE_AVX2 1
#include <immintrin.h>
#endif

#define FLOAT32_ABS_MASK 0x7fffffffu
#define FLOAT32_EXPONENT_ALL_ONES 0x7f800000u
#define FLOAT16_INFINITY 0x7c00u

static inline uint32_t float_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static inline float bits_float(uint32_t bits)
{
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline uint16_t load_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static inline void store_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline int8_t quantize_level(float scaled)
{
    float level = nearbyintf(scaled);
    if (level > Q8_MAX_LEVEL)
        level = Q8_MAX_LEVEL;
    if (level < -Q8_MAX_LEVEL)
        level = -Q8_MAX_LEVEL;
    return (int8_t)level;
}

/* The float16 scale of a block whose largest |delta| is `max_abs`: the smallest float16 at or
 * above max_abs / 127, so that no level exceeds 127. Returns the float16 bits and sets
 * *inverse; returns FLOAT16_INFINITY when the block is too large for a float16 scale. */
static uint16_t block_scale(float max_abs, float *inverse)
{
    if (max_abs == 0.0f) {
        *inverse = 0.0f;
        return 0;
    }
    float wanted = max_abs / (float)Q8_MAX_LEVEL;
    uint16_t half = fp16_from_float32_bits(float_bits(wanted));
    if (bits_float(fp16_to_float32_bits(half)) < wanted)
        half++;    /* positive float16 bits order like their values; 0x7bff + 1 is infinity */
    if (half == 0) /* wanted is below half the smallest subnormal: use the smallest */
        half = 1;
    *inverse = half >= FLOAT16_INFINITY ? 0.0f : 1.0f / bits_float(fp16_to_float32_bits(half));
    return half;
}

/* ---- q8, scalar ------------------------------------------------------------------------- */

static int scalar_q8_encode_blocks(uint8_t *scales, int8_t *values, const float *update,
                                   const float *reference, uint64_t first_block, uint64_t count,
                                   uint64_t *bad_index)
{
    for (uint64_t start = first_block * Q8_BLOCK_SIZE; start < count; start += Q8_BLOCK_SIZE) {
        uint64_t end = count - start < Q8_BLOCK_SIZE ? count : start + Q8_BLOCK_SIZE;
        uint32_t max_bits = 0;
        for (uint64_t i = start; i < end; i++) {
            uint32_t bits = float_bits(update[i] - reference[i]) & FLOAT32_ABS_MASK;
            if (bits >= FLOAT32_EXPONENT_ALL_ONES) {
                *bad_index = i;
                return -1;
            }
            if (bits > max_bits)
                max_bits = bits;
        }
        float inverse;
        uint16_t scale = block_scale(bits_float(max_bits), &inverse);
        if (scale >= FLOAT16_INFINITY) {
            *bad_index = start;
            return -1;
        }
        store_u16(scales + 2 * (start / Q8_BLOCK_SIZE), scale);
        for (uint64_t i = start; i < end; i++)
            values[i] = quantize_level((update[i] - reference[i]) * inverse);
    }
    return 0;
}

static void scalar_q8_decode_blocks(float *out, const uint8_t *scales, const int8_t *values,
                                    const float *reference, uint64_t first_block, uint64_t count)
{
    for (uint64_t start = first_block * Q8_BLOCK_SIZE; start < count; start += Q8_BLOCK_SIZE) {
        uint64_t end = count - start < Q8_BLOCK_SIZE ? count : start + Q8_BLOCK_SIZE;
        float scale =
            bits_float(fp16_to_float32_bits(load_u16(scales + 2 * (start / Q8_BLOCK_SIZE))));
        for (uint64_t i = start; i < end; i++)
            out[i] = reference[i] + (float)values[i] * scale;
    }
}

/* ---- q8, AVX2: whole blocks only; the last partial block goes to the scalar code ----------- */

#ifdef QUANTIZE_HAVE_AVX2
#define VECTORS_PER_BLOCK (Q8_BLOCK_SIZE / 8)

__attribute__((target("avx2"))) static int avx2_q8_encode(uint8_t *scales, int8_t *values,
                                                          const float *update,
                                                          const float *reference, uint64_t blocks,
                                                          uint64_t *bad_index)
{
    const __m256i abs_mask = _mm256_set1_epi32((int)FLOAT32_ABS_MASK);
    const __m256i lowest = _mm256_set1_epi32(-Q8_MAX_LEVEL);
    const __m256i highest = _mm256_set1_epi32(Q8_MAX_LEVEL);
    /* packs works within 128-bit lanes; this puts the 32 int8 back in element order */
    const __m256i unshuffle = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (uint64_t b = 0; b < blocks; b++) {
        const float *x = update + b * Q8_BLOCK_SIZE, *r = reference + b * Q8_BLOCK_SIZE;
        __m256 delta[VECTORS_PER_BLOCK];
        __m256i max_bits = _mm256_setzero_si256();
        for (int v = 0; v < VECTORS_PER_BLOCK; v++) {
            delta[v] = _mm256_sub_ps(_mm256_loadu_ps(x + 8 * v), _mm256_loadu_ps(r + 8 * v));
            /* |delta| bits compare as signed integers like the values they encode, and a
             * NaN or infinity has bits at or above 0x7f800000: no float compare needed. */
            max_bits = _mm256_max_epi32(max_bits,
                                        _mm256_and_si256(_mm256_castps_si256(delta[v]), abs_mask));
        }
        __m128i m =
            _mm_max_epi32(_mm256_castsi256_si128(max_bits), _mm256_extracti128_si256(max_bits, 1));
        m = _mm_max_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
        m = _mm_max_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
        uint32_t block_max = (uint32_t)_mm_cvtsi128_si32(m);
        float inverse;
        uint16_t scale = block_max >= FLOAT32_EXPONENT_ALL_ONES
                             ? FLOAT16_INFINITY
                             : block_scale(bits_float(block_max), &inverse);
        if (scale >= FLOAT16_INFINITY) {
            /* let the scalar code find the exact element */
            return scalar_q8_encode_blocks(scales, values, update, reference, b,
                                           (b + 1) * Q8_BLOCK_SIZE, bad_index);
        }
        store_u16(scales + 2 * b, scale);
        const __m256 factor = _mm256_set1_ps(inverse);
        for (int v = 0; v < VECTORS_PER_BLOCK; v += 4) {
            __m256i level[4];
            for (int k = 0; k < 4; k++) {
                level[k] = _mm256_cvtps_epi32(_mm256_mul_ps(delta[v + k], factor));
                level[k] = _mm256_min_epi32(_mm256_max_epi32(level[k], lowest), highest);
            }
            __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(level[0], level[1]),
                                                _mm256_packs_epi32(level[2], level[3]));
            packed = _mm256_permutevar8x32_epi32(packed, unshuffle);
            _mm256_storeu_si256((__m256i *)(void *)(values + b * Q8_BLOCK_SIZE + 8 * v), packed);
        }
    }
    return 0;
}

__attribute__((target("avx2"))) static void avx2_q8_decode(float *out, const uint8_t *scales,
                                                           const int8_t *values,
                                                           const float *reference, uint64_t blocks)
{
    for (uint64_t b = 0; b < blocks; b++) {
        const __m256 scale =
            _mm256_set1_ps(bits_float(fp16_to_float32_bits(load_u16(scales + 2 * b))));
        const int8_t *q = values + b * Q8_BLOCK_SIZE;
        const float *r = reference + b * Q8_BLOCK_SIZE;
        float *o = out + b * Q8_BLOCK_SIZE;
        for (int v = 0; v < VECTORS_PER_BLOCK; v++) {
            __m256i level =
                _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(q + 8 * v)));
            /* level * scale is exact (7 by 11 significant bits), so only the add rounds */
            __m256 delta = _mm256_mul_ps(_mm256_cvtepi32_ps(level), scale);
            _mm256_storeu_ps(o + 8 * v, _mm256_add_ps(_mm256_loadu_ps(r + 8 * v), delta));
        }
    }
}

static bool use_avx2(void)
{
    static int supported = -1; /* the CPU cannot change: a benign race on first use */
    if (!fp16_simd_enabled())
        return false;
    if (supported < 0) {
        __builtin_cpu_init();
        supported = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return supported == 1;
}
#endif

int q8_encode_float32(uint8_t *scales, int8_t *values, const float *update, const float *reference,
                      uint64_t count, uint64_t *bad_index)
{
    uint64_t first_scalar_block = 0;
#ifdef QUANTIZE_HAVE_AVX2
    if (use_avx2()) {
        first_scalar_block = count / Q8_BLOCK_SIZE;
        if (avx2_q8_encode(scales, values, update, reference, first_scalar_block, bad_index) != 0)
            return -1;
    }
#endif
    return scalar_q8_encode_blocks(scales, values, update, reference, first_scalar_block, count,
                                   bad_index);
}

void q8_decode_float32(float *out, const uint8_t *scales, const int8_t *values,
                       const float *reference, uint64_t count)
{
    uint64_t first_scalar_block = 0;
#ifdef QUANTIZE_HAVE_AVX2
    if (use_avx2()) {
        first_scalar_block = count / Q8_BLOCK_SIZE;
        avx2_q8_decode(out, scales, values, reference, first_scalar_block);
    }
#endif
    scalar_q8_decode_blocks(out, scales, values, reference, first_scalar_block, count);
}

/* float64 tensors are rare in state dicts: scalar only. The delta is rounded to float32
 * before quantizing, which loses nothing that int8 levels could keep. */
int q8_encode_float64(uint8_t *scales, int8_t *values, const double *update,
                      const double *reference, uint64_t count, uint64_t *bad_index)
{
    for (uint64_t start = 0; start < count; start += Q8_BLOCK_SIZE) {
        uint64_t end = count - start < Q8_BLOCK_SIZE ? count : start + Q8_BLOCK_SIZE;
        float max_abs = 0.0f;
        for (uint64_t i = start; i < end; i++) {
            float delta = (float)(update[i] - reference[i]);
            if (!isfinite(delta)) {
                *bad_index = i;
                return -1;
            }
            if (fabsf(delta) > max_abs)
                max_abs = fabsf(delta);
        }
        float inverse;
        uint16_t scale = block_scale(max_abs, &inverse);
        if (scale >= FLOAT16_INFINITY) {
            *bad_index = start;
            return -1;
        }
        store_u16(scales + 2 * (start / Q8_BLOCK_SIZE), scale);
        for (uint64_t i = start; i < end; i++)
            values[i] = quantize_level((float)(update[i] - reference[i]) * inverse);
    }
    return 0;
}

void q8_decode_float64(double *out, const uint8_t *scales, const int8_t *values,
                       const double *reference, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++) {
        float scale = bits_float(fp16_to_float32_bits(load_u16(scales + 2 * (i / Q8_BLOCK_SIZE))));
        out[i] = reference[i] + (double)((float)values[i] * scale);
    }
}

/* ---- topk ---------------------------------------------------------------------------------- */

static inline float delta_at(int is_float64, const void *update, const void *reference, uint64_t i)
{
    if (is_float64)
        return (float)(((const double *)update)[i] - ((const double *)reference)[i]);
    return ((const float *)update)[i] - ((const float *)reference)[i];
}

/* The k-th largest (k >= 1) of `keys`, reordering them: quickselect with a three-way
 * partition, so that runs of equal keys (a delta that is mostly zero) cost nothing extra. */
static uint32_t kth_largest(uint32_t *keys, uint64_t count, uint64_t k)
{
    uint64_t low = 0, high = count; /* the answer is in keys[low, high) */
    uint64_t want = k - 1;          /* index in descending order */
    uint64_t seed = 0x2545F4914F6CDD1Dull;
    for (;;) {
        if (high - low == 1)
            return keys[low];
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        uint32_t pivot = keys[low + seed % (high - low)];
        /* [low, greater) > pivot, [greater, i) == pivot, [less, high) < pivot */
        uint64_t greater = low, i = low, less = high;
        while (i < less) {
            uint32_t key = keys[i];
            if (key > pivot) {
                keys[i++] = keys[greater];
                keys[greater++] = key;
            } else if (key < pivot) {
                keys[i] = keys[--less];
                keys[less] = key;
            } else {
                i++;
            }
        }
        if (want < greater)
            high = greater;
        else if (want < less)
            return pivot;
        else
            low = less;
    }
}

/* Tensors at least this large find their threshold from a sample first (see below). */
#define TOPK_SAMPLING_MIN_COUNT ((uint64_t)1 << 16)
#define TOPK_SAMPLE_SIZE 8192

/* The keep-th largest of `keys` (keep >= 1), leaving `keys` as they are. For a large tensor a
 * strided sample gives a threshold somewhat below the answer (aiming at twice `keep` keys);
 * every key at or above it is copied out, and when they are at least `keep`, the exact answer
 * is the keep-th largest of those few: one pass over the tensor instead of a quickselect over
 * all of it. Otherwise (or for small tensors) a quickselect over a copy. 0 with *failed set
 * when out of memory. */
static uint32_t select_threshold(const uint32_t *keys, uint64_t count, uint64_t keep, int *failed)
{
    if (count >= TOPK_SAMPLING_MIN_COUNT && keep <= count / 8) {
        uint64_t stride = count / TOPK_SAMPLE_SIZE, samples = count / stride;
        uint64_t wanted = keep * 2 * samples / count + 32;
        uint64_t capacity = count / 4 + keep;
        uint32_t *sample = malloc(samples * sizeof *sample);
        uint32_t *candidates = malloc(capacity * sizeof *candidates);
        if (sample == NULL || candidates == NULL) {
            free(sample);
            free(candidates);
            *failed = 1;
            return 0;
        }
        for (uint64_t i = 0; i < samples; i++)
            sample[i] = keys[i * stride];
        uint64_t found = 0;
        if (wanted < samples) {
            uint32_t estimate = kth_largest(sample, samples, wanted);
            for (uint64_t i = 0; i < count && found <= capacity; i++)
                if (keys[i] >= estimate && found++ < capacity)
                    candidates[found - 1] = keys[i];
        }
        free(sample);
        if (found >= keep && found <= capacity) {
            uint32_t threshold = kth_largest(candidates, found, keep);
            free(candidates);
            return threshold;
        }
        free(candidates);
    }
    uint32_t *copy = malloc(count * sizeof *copy);
    if (copy == NULL) {
        *failed = 1;
        return 0;
    }
    memcpy(copy, keys, count * sizeof *copy);
    uint32_t threshold = kth_largest(copy, count, keep);
    free(copy);
    return threshold;
}

static size_t put_varint(uint8_t *out, uint64_t value)
{
    size_t n = 0;
    while (value >= 0x80) {
        out[n++] = (uint8_t)(value | 0x80);
        value >>= 7;
    }
    out[n++] = (uint8_t)value;
    return n;
}

int topk_encode(int is_float64, const void *update, const void *reference, uint64_t count,
                uint64_t keep, uint8_t **out, size_t *out_length, uint64_t *bad_index)
{
    if (keep > count)
        keep = count;
    uint8_t *buffer = malloc(4 + keep * (1 + TOPK_MAX_VARINT_BYTES));
    uint32_t *keys = malloc((count ? count : 1) * sizeof *keys);
    if (buffer == NULL || keys == NULL) {
        free(buffer);
        free(keys);
        return -2;
    }
    uint32_t largest = 0;
    for (uint64_t i = 0; i < count; i++) {
        keys[i] = float_bits(delta_at(is_float64, update, reference, i)) & FLOAT32_ABS_MASK;
        if (keys[i] >= FLOAT32_EXPONENT_ALL_ONES) {
            free(buffer);
            free(keys);
            *bad_index = i;
            return -1;
        }
        if (keys[i] > largest)
            largest = keys[i];
    }
    int failed = 0;
    uint32_t threshold = keep ? select_threshold(keys, count, keep, &failed) : UINT32_MAX;
    if (failed) {
        free(buffer);
        free(keys);
        return -2;
    }
    uint64_t above = 0; /* keys above the threshold are all kept; ties fill up in order */
    for (uint64_t i = 0; keep && i < count; i++)
        above += keys[i] > threshold;
    uint64_t ties_left = keep - above;

    float scale = bits_float(largest) / (float)Q8_MAX_LEVEL;
    float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
    memcpy(buffer, &scale, 4); /* little-endian hosts only, as every tensor byte */
    int8_t *levels = (int8_t *)buffer + 4;
    uint8_t *gaps = buffer + 4 + keep;
    uint64_t taken = 0, previous = 0;
    size_t gap_bytes = 0;
    for (uint64_t i = 0; taken < keep && i < count; i++) {
        uint32_t key = keys[i];
        if (key < threshold || (key == threshold && ties_left == 0))
            continue;
        if (key == threshold)
            ties_left--;
        levels[taken] = quantize_level(delta_at(is_float64, update, reference, i) * inverse);
        gap_bytes += put_varint(gaps + gap_bytes, taken ? i - previous : i);
        previous = i;
        taken++;
    }
    free(keys);
    *out = buffer;
    *out_length = 4 + keep + gap_bytes;
    return 0;
}

const char *topk_validate(const uint8_t *data, size_t length, uint64_t count, uint64_t keep)
{
    if (keep > count)
        return "keeps more values than the tensor has";
    if (length < 4 || length - 4 < keep)
        return "is too short for its scale and values";
    float scale;
    memcpy(&scale, data, 4);
    if (!isfinite(scale) || signbit(scale))
        return "has a scale that is not a finite non-negative number";
    /* An encoder's scale is a finite |delta| / 127; a larger one makes level 127 infinite. */
    if (scale > FLT_MAX / Q8_MAX_LEVEL)
        return "has a scale larger than the largest float32 / 127";
    const uint8_t *gaps = data + 4 + keep, *end = data + length;
    uint64_t position = 0;
    for (uint64_t n = 0; n < keep; n++) {
        uint64_t gap = 0;
        unsigned shift = 0;
        for (;;) {
            if (gaps == end)
                return "has fewer positions than values";
            if (shift >= 7 * TOPK_MAX_VARINT_BYTES)
                return "has a position gap longer than 9 bytes";
            uint8_t byte = *gaps++;
            gap |= (uint64_t)(byte & 0x7f) << shift;
            shift += 7;
            if (!(byte & 0x80))
                break;
        }
        if (n > 0 && gap == 0)
            return "repeats a position";
        if (gap >= count || (n > 0 && position + gap >= count))
            return "has a position past the end of the tensor";
        position = n ? position + gap : gap;
    }
    if (gaps != end)
        return "has bytes after its last position";
    return NULL;
}

void topk_decode(int is_float64, void *out, const uint8_t *data, uint64_t keep,
                 const void *reference, uint64_t count)
{
    if (count)
        memcpy(out, reference, (size_t)count * (is_float64 ? 8 : 4));
    float scale;
    memcpy(&scale, data, 4);
    const int8_t *levels = (const int8_t *)data + 4;
    const uint8_t *gaps = data + 4 + keep;
    uint64_t position = 0;
    for (uint64_t n = 0; n < keep; n++) {
        uint64_t gap = 0;
        unsigned shift = 0;
        uint8_t byte;
        do {
            byte = *gaps++;
            gap |= (uint64_t)(byte & 0x7f) << shift;
            shift += 7;
        } while (byte & 0x80);
        position = n ? position + gap : gap;
        float delta = (float)levels[n] * scale;
        if (is_float64)
            ((double *)out)[position] += (double)delta;
        else
            ((float *)out)[position] += delta;
    }
}
