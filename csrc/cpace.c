/* cpace.c — the CPace computations of draft-irtf-cfrg-cpace-21 for ristretto255 + SHA-512:
 * generator, public shares, the checked shared point, ISK and confirmation tags. Every
 * length-value string is hashed as it is produced, so nothing here allocates. */
#include "cpace.h"

#include <sodium.h>
#include <string.h>

static const char DSI[] = "CPaceRistretto255";
static const char DSI_ISK[] = "CPaceRistretto255_ISK";
#define SHA512_BLOCK_BYTES 128

int cpace_init(void)
{
    return sodium_init() < 0 ? -1 : 0;
}

size_t cpace_leb128(uint8_t out[10], uint64_t value)
{
    size_t n = 0;
    do {
        uint8_t byte = value & 0x7f;
        value >>= 7;
        out[n++] = byte | (value ? 0x80 : 0);
    } while (value);
    return n;
}

/* prepend_len(data) into a running SHA-512. */
static void hash_lv(crypto_hash_sha512_state *state, const void *data, size_t length)
{
    uint8_t prefix[10];
    crypto_hash_sha512_update(state, prefix, cpace_leb128(prefix, length));
    if (length)
        crypto_hash_sha512_update(state, data, length);
}

static void hmac_lv(crypto_auth_hmacsha512_state *state, const void *data, size_t length)
{
    uint8_t prefix[10];
    crypto_auth_hmacsha512_update(state, prefix, cpace_leb128(prefix, length));
    if (length)
        crypto_auth_hmacsha512_update(state, data, length);
}

void cpace_generator_hash(uint8_t hash[64], const uint8_t *prs, size_t prs_len, const uint8_t *ci,
                          size_t ci_len, const uint8_t *sid, size_t sid_len)
{
    /* The zero padding fills the hash's first block with DSI and PRS alone (section 8.1), so
     * the time to hash a short password does not depend on its length. */
    uint8_t prefix[10];
    size_t used = cpace_leb128(prefix, prs_len) + prs_len + 1 + (sizeof DSI - 1);
    size_t zpad_len = used < SHA512_BLOCK_BYTES ? SHA512_BLOCK_BYTES - used - 1 : 0;
    static const uint8_t zeros[SHA512_BLOCK_BYTES];

    crypto_hash_sha512_state state;
    crypto_hash_sha512_init(&state);
    hash_lv(&state, DSI, sizeof DSI - 1);
    hash_lv(&state, prs, prs_len);
    hash_lv(&state, zeros, zpad_len);
    hash_lv(&state, ci, ci_len);
    hash_lv(&state, sid, sid_len);
    crypto_hash_sha512_final(&state, hash);
    sodium_memzero(&state, sizeof state);
}

void cpace_calculate_generator(uint8_t g[CPACE_POINT_BYTES], const uint8_t *prs, size_t prs_len,
                               const uint8_t *ci, size_t ci_len, const uint8_t *sid, size_t sid_len)
{
    uint8_t hash[64];
    cpace_generator_hash(hash, prs, prs_len, ci, ci_len, sid, sid_len);
    crypto_core_ristretto255_from_hash(g, hash);
    sodium_memzero(hash, sizeof hash);
}

void cpace_sample_scalar(uint8_t y[CPACE_SCALAR_BYTES])
{
    crypto_core_ristretto255_scalar_random(y);
}

int cpace_public_share(uint8_t share[CPACE_POINT_BYTES], const uint8_t y[CPACE_SCALAR_BYTES],
                       const uint8_t g[CPACE_POINT_BYTES])
{
    return crypto_scalarmult_ristretto255(share, y, g) == 0 ? 0 : -1;
}

int cpace_shared_point(uint8_t k[CPACE_POINT_BYTES], const uint8_t y[CPACE_SCALAR_BYTES],
                       const uint8_t peer[CPACE_POINT_BYTES])
{
    /* libsodium refuses an encoding that is not canonical ristretto255 and a product equal to
     * the identity; either way K must not be used, so the caller gets zeros and -1. */
    if (crypto_scalarmult_ristretto255(k, y, peer) != 0) {
        sodium_memzero(k, CPACE_POINT_BYTES);
        return -1;
    }
    return 0;
}

void cpace_isk(uint8_t isk[CPACE_ISK_BYTES], const uint8_t *sid, size_t sid_len,
               const uint8_t k[CPACE_POINT_BYTES], const uint8_t ya[CPACE_POINT_BYTES],
               const uint8_t *ada, size_t ada_len, const uint8_t yb[CPACE_POINT_BYTES],
               const uint8_t *adb, size_t adb_len)
{
    crypto_hash_sha512_state state;
    crypto_hash_sha512_init(&state);
    hash_lv(&state, DSI_ISK, sizeof DSI_ISK - 1);
    hash_lv(&state, sid, sid_len);
    hash_lv(&state, k, CPACE_POINT_BYTES);
    hash_lv(&state, ya, CPACE_POINT_BYTES);
    hash_lv(&state, ada, ada_len);
    hash_lv(&state, yb, CPACE_POINT_BYTES);
    hash_lv(&state, adb, adb_len);
    crypto_hash_sha512_final(&state, isk);
    sodium_memzero(&state, sizeof state);
}

void cpace_confirmation_tag(uint8_t tag[CPACE_TAG_BYTES], const uint8_t *sid, size_t sid_len,
                            const uint8_t isk[CPACE_ISK_BYTES],
                            const uint8_t share[CPACE_POINT_BYTES], const uint8_t *ad,
                            size_t ad_len)
{
    static const char label[] = "CPaceMac";
    uint8_t mac_key[64];
    crypto_hash_sha512_state state;
    crypto_hash_sha512_init(&state);
    crypto_hash_sha512_update(&state, (const uint8_t *)label, sizeof label - 1);
    if (sid_len)
        crypto_hash_sha512_update(&state, sid, sid_len);
    crypto_hash_sha512_update(&state, isk, CPACE_ISK_BYTES);
    crypto_hash_sha512_final(&state, mac_key);

    crypto_auth_hmacsha512_state mac;
    crypto_auth_hmacsha512_init(&mac, mac_key, sizeof mac_key);
    hmac_lv(&mac, share, CPACE_POINT_BYTES);
    hmac_lv(&mac, ad, ad_len);
    crypto_auth_hmacsha512_final(&mac, tag);
    sodium_memzero(mac_key, sizeof mac_key);
    sodium_memzero(&state, sizeof state);
    sodium_memzero(&mac, sizeof mac);
}

void cpace_derive_key(uint8_t key[CPACE_KEY_BYTES], const uint8_t isk[CPACE_ISK_BYTES],
                      const char *label)
{
    static const char prefix[] = "SegSuite key"; /* its terminating NUL separates the label */
    uint8_t out[crypto_auth_hmacsha512_BYTES];
    crypto_auth_hmacsha512_state mac;
    crypto_auth_hmacsha512_init(&mac, isk, CPACE_ISK_BYTES);
    crypto_auth_hmacsha512_update(&mac, (const uint8_t *)prefix, sizeof prefix);
    crypto_auth_hmacsha512_update(&mac, (const uint8_t *)label, strlen(label));
    crypto_auth_hmacsha512_final(&mac, out);
    memcpy(key, out, CPACE_KEY_BYTES);
    sodium_memzero(out, sizeof out);
    sodium_memzero(&mac, sizeof mac);
}
