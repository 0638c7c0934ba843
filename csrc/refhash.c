/* refhash128: eight 64-bit accumulators take 64-byte stripes with a 32x32->64 multiply of the
 * data mixed with a per-stripe key, plus the raw data of the neighbouring lane (so no input bit
 * can be multiplied away); every 16 stripes the accumulators are scrambled, and a final
 * 128-bit-multiply fold and avalanche give the digest. The AVX2 path computes exactly the
 * same arithmetic on four lanes per register and is tested against the scalar one. */
#include "refhash.h"

#include "fp16.h"

#include <stdbool.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define REFHASH_HAVE_AVX2 1
#include <immintrin.h>
#endif

#define LANES 8
#define STRIPE_BYTES 64
#define STRIPES_PER_BLOCK 16
#define SCRAMBLE_PRIME UINT64_C(0x9E3779B1) /* 32-bit: the AVX2 path multiplies in halves */
#define GOLDEN UINT64_C(0x9E3779B97F4A7C15)

typedef struct {
    uint64_t stripe[STRIPES_PER_BLOCK][LANES];
    uint64_t scramble[LANES];
    uint64_t initial[LANES];
    uint64_t fold[LANES];
} hash_keys;

/* splitmix64: a fixed, well-mixed sequence from which every key is drawn, so the constants
 * need no table in the source. */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += GOLDEN);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static void make_keys(hash_keys *keys)
{
    uint64_t state = UINT64_C(0x5365675375697465); /* "SegSuite" */
    for (int s = 0; s < STRIPES_PER_BLOCK; s++)
        for (int j = 0; j < LANES; j++)
            keys->stripe[s][j] = splitmix64(&state);
    for (int j = 0; j < LANES; j++) {
        keys->scramble[j] = splitmix64(&state);
        keys->initial[j] = splitmix64(&state);
        keys->fold[j] = splitmix64(&state);
    }
}

static inline uint64_t load_u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void scalar_stripe(uint64_t acc[LANES], const uint8_t *p, const uint64_t key[LANES])
{
    for (int j = 0; j < LANES; j++) {
        uint64_t value = load_u64(p + 8 * j);
        uint64_t keyed = value ^ key[j];
        acc[j] += (keyed & 0xffffffffu) * (keyed >> 32);
        /* The raw data of the neighbouring lane is added too: a keyed half that happens to be
         * zero would otherwise erase the other half from the product. */
        acc[j ^ 1] += value;
    }
}

static void scalar_scramble(uint64_t acc[LANES], const uint64_t key[LANES])
{
    for (int j = 0; j < LANES; j++) {
        uint64_t a = acc[j];
        a ^= a >> 47;
        a ^= key[j];
        acc[j] = a * SCRAMBLE_PRIME;
    }
}

/* Whole blocks and whole stripes; returns how many bytes were consumed. */
static size_t scalar_bulk(uint64_t acc[LANES], const uint8_t *data, size_t length,
                          const hash_keys *keys)
{
    size_t position = 0;
    while (length - position >= STRIPE_BYTES * STRIPES_PER_BLOCK) {
        for (int s = 0; s < STRIPES_PER_BLOCK; s++)
            scalar_stripe(acc, data + position + STRIPE_BYTES * s, keys->stripe[s]);
        scalar_scramble(acc, keys->scramble);
        position += STRIPE_BYTES * STRIPES_PER_BLOCK;
    }
    for (int s = 0; length - position >= STRIPE_BYTES; s++, position += STRIPE_BYTES)
        scalar_stripe(acc, data + position, keys->stripe[s]);
    return position;
}

#ifdef REFHASH_HAVE_AVX2
__attribute__((target("avx2"))) static size_t
avx2_bulk(uint64_t acc_out[LANES], const uint8_t *data, size_t length, const hash_keys *keys)
{
    __m256i acc[2], stripe_keys[STRIPES_PER_BLOCK][2];
    for (int h = 0; h < 2; h++)
        acc[h] = _mm256_loadu_si256((const __m256i *)(const void *)(acc_out + 4 * h));
    for (int s = 0; s < STRIPES_PER_BLOCK; s++)
        for (int h = 0; h < 2; h++)
            stripe_keys[s][h] =
                _mm256_loadu_si256((const __m256i *)(const void *)(keys->stripe[s] + 4 * h));
    const __m256i prime = _mm256_set1_epi64x((long long)SCRAMBLE_PRIME);
    __m256i scramble_keys[2];
    for (int h = 0; h < 2; h++)
        scramble_keys[h] =
            _mm256_loadu_si256((const __m256i *)(const void *)(keys->scramble + 4 * h));

    size_t position = 0;
    int s = 0;
    while (length - position >= STRIPE_BYTES) {
        for (int h = 0; h < 2; h++) {
            __m256i value =
                _mm256_loadu_si256((const __m256i *)(const void *)(data + position + 32 * h));
            __m256i keyed = _mm256_xor_si256(value, stripe_keys[s][h]);
            __m256i product = _mm256_mul_epu32(keyed, _mm256_srli_epi64(keyed, 32));
            /* swap the 64-bit lanes of each pair: lane j receives the data of lane j ^ 1 */
            __m256i neighbour = _mm256_shuffle_epi32(value, _MM_SHUFFLE(1, 0, 3, 2));
            acc[h] = _mm256_add_epi64(acc[h], _mm256_add_epi64(product, neighbour));
        }
        position += STRIPE_BYTES;
        if (++s == STRIPES_PER_BLOCK) {
            for (int h = 0; h < 2; h++) {
                __m256i a = _mm256_xor_si256(acc[h], _mm256_srli_epi64(acc[h], 47));
                a = _mm256_xor_si256(a, scramble_keys[h]);
                __m256i low = _mm256_mul_epu32(a, prime);
                __m256i high = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), prime);
                acc[h] = _mm256_add_epi64(low, _mm256_slli_epi64(high, 32));
            }
            s = 0;
        }
    }
    for (int h = 0; h < 2; h++)
        _mm256_storeu_si256((__m256i *)(void *)(acc_out + 4 * h), acc[h]);
    return position;
}

static bool cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#endif

static uint64_t avalanche(uint64_t x)
{
    x ^= x >> 33;
    x *= UINT64_C(0xFF51AFD7ED558CCD);
    x ^= x >> 29;
    x *= UINT64_C(0xC4CEB9FE1A85EC53);
    return x ^ (x >> 32);
}

/* The low and high halves of the 128-bit product a * b, xored; in 32-bit pieces so that it
 * needs no __int128 (not ISO C, and missing on 32-bit targets). */
static uint64_t fold_multiply(uint64_t a, uint64_t b)
{
    uint64_t a_low = a & 0xffffffffu, a_high = a >> 32, b_low = b & 0xffffffffu, b_high = b >> 32;
    uint64_t low_low = a_low * b_low, high_low = a_high * b_low;
    uint64_t low_high = a_low * b_high, high_high = a_high * b_high;
    uint64_t cross = (low_low >> 32) + (high_low & 0xffffffffu) + low_high;
    uint64_t low = (cross << 32) | (low_low & 0xffffffffu);
    uint64_t high = high_high + (high_low >> 32) + (cross >> 32);
    return low ^ high;
}

void refhash128(const void *data, size_t length, uint8_t out[REFHASH_SIZE])
{
    hash_keys keys;
    make_keys(&keys);
    uint64_t acc[LANES];
    memcpy(acc, keys.initial, sizeof acc);
    const uint8_t *bytes = data;
    size_t consumed;
#ifdef REFHASH_HAVE_AVX2
    if (fp16_simd_enabled() && cpu_has_avx2())
        consumed = avx2_bulk(acc, bytes, length, &keys);
    else
#endif
        consumed = scalar_bulk(acc, bytes, length, &keys);
    /* The last partial stripe is zero-padded; the length mixed in below tells "ab" from
     * "ab\0". Its key is the next stripe's, as if the stripe were whole. */
    size_t tail = length - consumed;
    if (tail) {
        uint8_t last[STRIPE_BYTES] = {0};
        memcpy(last, bytes + consumed, tail);
        size_t stripe_index = (consumed / STRIPE_BYTES) % STRIPES_PER_BLOCK;
        scalar_stripe(acc, last, keys.stripe[stripe_index]);
    }
    uint64_t low = (uint64_t)length * GOLDEN, high = ~(uint64_t)length * SCRAMBLE_PRIME;
    for (int j = 0; j < LANES; j += 2) {
        low += fold_multiply(acc[j] ^ keys.fold[j], acc[j + 1] ^ keys.fold[j + 1]);
        high += fold_multiply(acc[j] ^ keys.fold[(j + 3) % LANES],
                              acc[j + 1] ^ keys.fold[(j + 6) % LANES]);
    }
    low = avalanche(low);
    high = avalanche(high ^ low);
    for (int i = 0; i < 8; i++) {
        out[i] = (uint8_t)(low >> (8 * i));
        out[8 + i] = (uint8_t)(high >> (8 * i));
    }
}
