/* float16/bfloat16 conversion kernels: a portable scalar reference that reproduces numpy's
 * round-to-nearest-even bit for bit, and SIMD versions (F16C/AVX2, NEON) that defer to the
 * scalar code for the lanes where hardware and numpy disagree (NaN payloads). */
#include "fp16.h"

#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FP16_HAVE_X86_SIMD 1
#include <cpuid.h>
#include <immintrin.h>
#elif defined(__aarch64__)
#define FP16_HAVE_NEON 1
#include <arm_neon.h>
#endif

/* Unaligned, aliasing-safe loads and stores; compilers turn these into single moves. */
static inline uint32_t load_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint64_t load_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint16_t load_u16(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store_u16(unsigned char *p, uint16_t v)
{
    memcpy(p, &v, sizeof v);
}

static inline void store_u32(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

/* ---- scalar reference ------------------------------------------------------------------ */

uint16_t fp16_from_float32_bits(uint32_t f)
{
    uint16_t sign = (uint16_t)((f >> 16) & 0x8000u);
    uint32_t magnitude = f & 0x7fffffffu;

    if (magnitude >= 0x7f800000u) {
        if (magnitude == 0x7f800000u)
            return sign | 0x7c00u;
        /* numpy keeps the top payload bits (and so a signalling NaN stays signalling) and
         * only makes sure truncation cannot turn the NaN into an infinity. */
        uint16_t nan = (uint16_t)(0x7c00u | ((magnitude & 0x007fffffu) >> 13));
        return sign | (nan == 0x7c00u ? 0x7c01u : nan);
    }
    /* 65520 is the midpoint between the largest half (65504) and the next power of two, and
     * ties go to the even neighbour, which is infinity. */
    if (magnitude >= 0x477ff000u)
        return sign | 0x7c00u;
    if (magnitude < 0x38800000u) {
        /* Result is a half subnormal (or zero): the significand is rounded to multiples of
         * 2^-24. At or below 2^-25 (exactly half of the smallest subnormal) it rounds to 0. */
        if (magnitude <= 0x33000000u)
            return sign;
        uint32_t exponent = magnitude >> 23;
        uint32_t significand = (magnitude & 0x007fffffu) | 0x00800000u;
        uint32_t shift = 126 - exponent;
        uint32_t result = significand >> shift;
        uint32_t remainder = significand & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (remainder > halfway || (remainder == halfway && (result & 1u)))
            result++;
        return sign | (uint16_t)result;
    }
    /* Normal: rebias the exponent and round away 13 significand bits. A carry out of the
     * significand correctly bumps the exponent. */
    uint32_t result = (magnitude >> 13) - ((127u - 15u) << 10);
    uint32_t remainder = magnitude & 0x1fffu;
    if (remainder > 0x1000u || (remainder == 0x1000u && (result & 1u)))
        result++;
    return sign | (uint16_t)result;
}

uint32_t fp16_to_float32_bits(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t significand = h & 0x03ffu;

    if (exponent == 0x1fu) /* Inf or NaN, payload kept as numpy does */
        return sign | 0x7f800000u | (significand << 13);
    if (exponent == 0) {
        if (significand == 0)
            return sign;
        /* A half subnormal is a float32 normal: shift the leading one into place. */
        uint32_t float_exponent = 113;
        while (!(significand & 0x0400u)) {
            significand <<= 1;
            float_exponent--;
        }
        return sign | (float_exponent << 23) | ((significand & 0x03ffu) << 13);
    }
    return sign | ((exponent + 112u) << 23) | (significand << 13);
}

uint16_t bf16_from_float32_bits(uint32_t f)
{
    /* NaN: keep sign and top payload, set the quiet bit so truncation never yields Inf. */
    if ((f & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((f >> 16) | 0x0040u);
    uint32_t lsb = (f >> 16) & 1u;
    return (uint16_t)((f + 0x7fffu + lsb) >> 16);
}

/* float64 -> float32 rounded to odd: truncate toward zero and set the last bit when
 * inexact. Rounding that result once more to nearest-even gives the correctly rounded
 * float16/bfloat16, because float32 carries at least two more bits than either. NaN is
 * handled by the callers. */
static uint32_t float32_round_to_odd_bits(double d)
{
    float nearest = (float)d;
    uint32_t bits;
    memcpy(&bits, &nearest, sizeof bits);
    double back = (double)nearest;
    if (back == d)
        return bits;
    if ((back > 0 ? back : -back) > (d > 0 ? d : -d))
        bits -= 1; /* one step toward zero in sign-magnitude */
    return bits | 1u;
}

static uint16_t fp16_from_float64_bits(uint64_t bits)
{
    if ((bits & 0x7fffffffffffffffull) > 0x7ff0000000000000ull) {
        /* numpy's float64 NaN rule: top ten payload bits, never turned into Inf */
        uint16_t sign = (uint16_t)((bits >> 48) & 0x8000u);
        uint16_t nan = (uint16_t)(0x7c00u | ((bits & 0x000fffffffffffffull) >> 42));
        return sign | (nan == 0x7c00u ? 0x7c01u : nan);
    }
    double d;
    memcpy(&d, &bits, sizeof d);
    return fp16_from_float32_bits(float32_round_to_odd_bits(d));
}

static uint16_t bf16_from_float64_bits(uint64_t bits)
{
    if ((bits & 0x7fffffffffffffffull) > 0x7ff0000000000000ull)
        return (uint16_t)(((bits >> 48) & 0xffc0u) | 0x7fc0u);
    double d;
    memcpy(&d, &bits, sizeof d);
    return bf16_from_float32_bits(float32_round_to_odd_bits(d));
}

static void scalar_fp16_from_float32(unsigned char *dst, const unsigned char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        store_u16(dst + 2 * i, fp16_from_float32_bits(load_u32(src + 4 * i)));
}

static void scalar_fp16_to_float32(unsigned char *dst, const unsigned char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        store_u32(dst + 4 * i, fp16_to_float32_bits(load_u16(src + 2 * i)));
}

static void scalar_bf16_from_float32(unsigned char *dst, const unsigned char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        store_u16(dst + 2 * i, bf16_from_float32_bits(load_u32(src + 4 * i)));
}

static void scalar_bf16_to_float32(unsigned char *dst, const unsigned char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        store_u32(dst + 4 * i, (uint32_t)load_u16(src + 2 * i) << 16);
}

/* ---- x86-64: F16C for float16, AVX2 integer arithmetic for bfloat16 --------------------- */

#ifdef FP16_HAVE_X86_SIMD
#define X86_SIMD_TARGET __attribute__((target("avx2,f16c")))

/* Outputs this large are written with non-temporal stores: they cannot stay in cache anyway,
 * and skipping the read-for-ownership of each destination line saves a third of the memory
 * traffic on these bandwidth-bound loops. */
#define STREAMING_THRESHOLD_BYTES ((size_t)1 << 20)

/* How many leading elements to convert with scalar code so that the rest of `dst` is
 * aligned for stream stores; or SIZE_MAX when streaming is not worth it or not possible. */
static size_t streaming_head(const unsigned char *dst, size_t n, size_t output_size,
                             size_t alignment)
{
    size_t misalignment = (uintptr_t)dst & (alignment - 1);
    size_t head = ((alignment - misalignment) & (alignment - 1)) / output_size;
    if (n * output_size < STREAMING_THRESHOLD_BYTES || misalignment % output_size || head > n)
        return SIZE_MAX;
    return head;
}

X86_SIMD_TARGET static void x86_fp16_from_float32(unsigned char *dst, const unsigned char *src,
                                                  size_t n)
{
    size_t i = streaming_head(dst, n, 2, 16);
    bool streaming = i != SIZE_MAX;
    if (streaming)
        scalar_fp16_from_float32(dst, src, i);
    else
        i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps((const float *)(const void *)(src + 4 * i));
        __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        /* The hardware quiets NaNs; numpy keeps signalling ones, so redo NaN lanes. */
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))) {
            uint16_t fixed[8];
            scalar_fp16_from_float32((unsigned char *)fixed, src + 4 * i, 8);
            h = _mm_loadu_si128((const __m128i *)(const void *)fixed);
        }
        if (streaming)
            _mm_stream_si128((__m128i *)(void *)(dst + 2 * i), h);
        else
            _mm_storeu_si128((__m128i *)(void *)(dst + 2 * i), h);
    }
    if (streaming)
        _mm_sfence();
    scalar_fp16_from_float32(dst + 2 * i, src + 4 * i, n - i);
}

X86_SIMD_TARGET static void x86_fp16_to_float32(unsigned char *dst, const unsigned char *src,
                                                size_t n)
{
    size_t i = streaming_head(dst, n, 4, 32);
    bool streaming = i != SIZE_MAX;
    if (streaming)
        scalar_fp16_to_float32(dst, src, i);
    else
        i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i));
        __m256 v = _mm256_cvtph_ps(h);
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))) {
            float fixed[8];
            scalar_fp16_to_float32((unsigned char *)fixed, src + 2 * i, 8);
            v = _mm256_loadu_ps(fixed);
        }
        if (streaming)
            _mm256_stream_ps((float *)(void *)(dst + 4 * i), v);
        else
            _mm256_storeu_ps((float *)(void *)(dst + 4 * i), v);
    }
    if (streaming)
        _mm_sfence();
    scalar_fp16_to_float32(dst + 4 * i, src + 2 * i, n - i);
}

X86_SIMD_TARGET static void x86_bf16_from_float32(unsigned char *dst, const unsigned char *src,
                                                  size_t n)
{
    /* vcvtneps2bf16 (AVX512-BF16) flushes subnormals to zero, so round in integers. */
    const __m256i rounding_bias = _mm256_set1_epi32(0x7fff);
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i magnitude_mask = _mm256_set1_epi32(0x7fffffff);
    const __m256i infinity = _mm256_set1_epi32(0x7f800000);
    const __m256i quiet_bit = _mm256_set1_epi32(0x0040);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i packed[2];
        for (int half = 0; half < 2; half++) {
            __m256i f =
                _mm256_loadu_si256((const __m256i *)(const void *)(src + 4 * i + 32 * half));
            __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(f, 16), one);
            __m256i rounded =
                _mm256_srli_epi32(_mm256_add_epi32(f, _mm256_add_epi32(rounding_bias, lsb)), 16);
            __m256i nan_result = _mm256_or_si256(_mm256_srli_epi32(f, 16), quiet_bit);
            __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(f, magnitude_mask), infinity);
            packed[half] = _mm256_blendv_epi8(rounded, nan_result, is_nan);
        }
        /* packus works per 128-bit lane; the permute puts the 16 results back in order. */
        __m256i both = _mm256_packus_epi32(packed[0], packed[1]);
        both = _mm256_permute4x64_epi64(both, 0xd8);
        _mm256_storeu_si256((__m256i *)(void *)(dst + 2 * i), both);
    }
    scalar_bf16_from_float32(dst + 2 * i, src + 4 * i, n - i);
}

X86_SIMD_TARGET static void x86_bf16_to_float32(unsigned char *dst, const unsigned char *src,
                                                size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i));
        __m256i f = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
        _mm256_storeu_si256((__m256i *)(void *)(dst + 4 * i), f);
    }
    scalar_bf16_to_float32(dst + 4 * i, src + 2 * i, n - i);
}
#endif

/* ---- AArch64: NEON is part of the base ISA, so no run-time check is needed --------------- */

#ifdef FP16_HAVE_NEON
static void neon_fp16_from_float32(unsigned char *dst, const unsigned char *src, size_t n)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v =
            vreinterpretq_f32_u32(vld1q_u32((const uint32_t *)(const void *)(src + 4 * i)));
        uint16x4_t h = vreinterpret_u16_f16(vcvt_f16_f32(v));
        vst1_u16((uint16_t *)(void *)(dst + 2 * i), h);
        if (vminvq_u32(vceqq_f32(v, v)) == 0) /* some lane is NaN */
            scalar_fp16_from_float32(dst + 2 * i, src + 4 * i, 4);
    }
    scalar_fp16_from_float32(dst + 2 * i, src + 4 * i, n - i);
}

static void neon_fp16_to_float32(unsigned char *dst, const unsigned char *src, size_t n)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint16x4_t h = vld1_u16((const uint16_t *)(const void *)(src + 2 * i));
        float32x4_t v = vcvt_f32_f16(vreinterpret_f16_u16(h));
        vst1q_u32((uint32_t *)(void *)(dst + 4 * i), vreinterpretq_u32_f32(v));
        if (vminvq_u32(vceqq_f32(v, v)) == 0)
            scalar_fp16_to_float32(dst + 4 * i, src + 2 * i, 4);
    }
    scalar_fp16_to_float32(dst + 4 * i, src + 2 * i, n - i);
}

static void neon_bf16_from_float32(unsigned char *dst, const unsigned char *src, size_t n)
{
    const uint32x4_t rounding_bias = vdupq_n_u32(0x7fff);
    const uint32x4_t one = vdupq_n_u32(1);
    const uint32x4_t magnitude_mask = vdupq_n_u32(0x7fffffff);
    const uint32x4_t infinity = vdupq_n_u32(0x7f800000);
    const uint32x4_t quiet_bit = vdupq_n_u32(0x0040);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32x4_t f = vld1q_u32((const uint32_t *)(const void *)(src + 4 * i));
        uint32x4_t lsb = vandq_u32(vshrq_n_u32(f, 16), one);
        uint32x4_t rounded = vshrq_n_u32(vaddq_u32(f, vaddq_u32(rounding_bias, lsb)), 16);
        uint32x4_t nan_result = vorrq_u32(vshrq_n_u32(f, 16), quiet_bit);
        uint32x4_t is_nan = vcgtq_u32(vandq_u32(f, magnitude_mask), infinity);
        vst1_u16((uint16_t *)(void *)(dst + 2 * i),
                 vmovn_u32(vbslq_u32(is_nan, nan_result, rounded)));
    }
    scalar_bf16_from_float32(dst + 2 * i, src + 4 * i, n - i);
}

static void neon_bf16_to_float32(unsigned char *dst, const unsigned char *src, size_t n)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint16x4_t h = vld1_u16((const uint16_t *)(const void *)(src + 2 * i));
        vst1q_u32((uint32_t *)(void *)(dst + 4 * i), vshll_n_u16(h, 16));
    }
    scalar_bf16_to_float32(dst + 4 * i, src + 2 * i, n - i);
}
#endif

/* ---- dispatch -------------------------------------------------------------------------- */

typedef void (*bulk_conversion)(unsigned char *dst, const unsigned char *src, size_t n);

struct conversion_table {
    const char *name;
    bulk_conversion fp16_from_float32;
    bulk_conversion fp16_to_float32;
    bulk_conversion bf16_from_float32;
    bulk_conversion bf16_to_float32;
};

static const struct conversion_table scalar_table = {
    "scalar", scalar_fp16_from_float32, scalar_fp16_to_float32, scalar_bf16_from_float32,
    scalar_bf16_to_float32};

#ifdef FP16_HAVE_X86_SIMD
static const struct conversion_table x86_table = {"f16c+avx2", x86_fp16_from_float32,
                                                  x86_fp16_to_float32, x86_bf16_from_float32,
                                                  x86_bf16_to_float32};
#endif
#ifdef FP16_HAVE_NEON
static const struct conversion_table neon_table = {"neon", neon_fp16_from_float32,
                                                   neon_fp16_to_float32, neon_bf16_from_float32,
                                                   neon_bf16_to_float32};
#endif

static bool simd_enabled = true;

static const struct conversion_table *best_supported_table(void)
{
#ifdef FP16_HAVE_X86_SIMD
    /* __builtin_cpu_supports("avx2") also checks that the OS saves AVX registers; F16C is
     * read from CPUID directly because older clang (14) does not know the "f16c" name. */
    unsigned eax, ebx, ecx, edx;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __get_cpuid(1, &eax, &ebx, &ecx, &edx) &&
        (ecx & bit_F16C))
        return &x86_table;
#endif
#ifdef FP16_HAVE_NEON
    return &neon_table;
#endif
    return &scalar_table;
}

static const struct conversion_table *active_table(void)
{
    /* The CPU cannot change under us, so a benign race on first use is harmless. */
    static const struct conversion_table *detected;
    if (!simd_enabled)
        return &scalar_table;
    if (detected == NULL)
        detected = best_supported_table();
    return detected;
}

void fp16_set_simd_enabled(bool enabled)
{
    simd_enabled = enabled;
}

bool fp16_simd_enabled(void)
{
    return simd_enabled;
}

const char *fp16_active_path(void)
{
    return active_table()->name;
}

void fp16_from_float32(void *dst, const void *src, size_t count)
{
    active_table()->fp16_from_float32(dst, src, count);
}

void fp16_to_float32(void *dst, const void *src, size_t count)
{
    active_table()->fp16_to_float32(dst, src, count);
}

void bf16_from_float32(void *dst, const void *src, size_t count)
{
    active_table()->bf16_from_float32(dst, src, count);
}

void bf16_to_float32(void *dst, const void *src, size_t count)
{
    active_table()->bf16_to_float32(dst, src, count);
}

/* float64 tensors are rare in state dicts, so their conversions stay scalar. */

void fp16_from_float64(void *dst, const void *src, size_t count)
{
    unsigned char *out = dst;
    const unsigned char *in = src;
    for (size_t i = 0; i < count; i++)
        store_u16(out + 2 * i, fp16_from_float64_bits(load_u64(in + 8 * i)));
}

/* float32 bits -> float64, keeping NaN payloads: a hardware widening would quiet a
 * signalling NaN, numpy shifts the payload instead. */
static void store_float64_from_float32_bits(unsigned char *out, uint32_t bits)
{
    uint64_t wide;
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        wide = ((uint64_t)(bits & 0x80000000u) << 32) | 0x7ff0000000000000ull |
               ((uint64_t)(bits & 0x007fffffu) << 29);
    } else {
        float value;
        memcpy(&value, &bits, sizeof value);
        double widened = value;
        memcpy(&wide, &widened, sizeof wide);
    }
    memcpy(out, &wide, sizeof wide);
}

void fp16_to_float64(void *dst, const void *src, size_t count)
{
    unsigned char *out = dst;
    const unsigned char *in = src;
    for (size_t i = 0; i < count; i++)
        store_float64_from_float32_bits(out + 8 * i, fp16_to_float32_bits(load_u16(in + 2 * i)));
}

void bf16_from_float64(void *dst, const void *src, size_t count)
{
    unsigned char *out = dst;
    const unsigned char *in = src;
    for (size_t i = 0; i < count; i++)
        store_u16(out + 2 * i, bf16_from_float64_bits(load_u64(in + 8 * i)));
}

void bf16_to_float64(void *dst, const void *src, size_t count)
{
    unsigned char *out = dst;
    const unsigned char *in = src;
    for (size_t i = 0; i < count; i++)
        store_float64_from_float32_bits(out + 8 * i, (uint32_t)load_u16(in + 2 * i) << 16);
}
