/* group_key.c — wraps and unwraps a private room's group key for one member with libsodium's
 * XChaCha20-Poly1305: a random 24-byte nonce is safe to draw for every wrap, and the associated
 * data names room, host, member and epoch so a wrapped key cannot be replayed elsewhere. */
#include "group_key.h"

#include <sodium.h>
#include <string.h>

#define NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define AD_MAX (32 + 3 * (1 + 255) + 4)

static int fail(const char **error, const char *why)
{
    if (error)
        *error = why;
    return -1;
}

static size_t put_lv(uint8_t *out, const uint8_t *data, size_t length)
{
    out[0] = (uint8_t)length;
    memcpy(out + 1, data, length);
    return 1 + length;
}

static int build_ad(uint8_t ad[AD_MAX], size_t *ad_len, const struct group_key_context *ctx,
                    const char **error)
{
    static const char label[] = "SegSuite group key v1";
    if (ctx->room_len == 0 || ctx->room_len > 255 || ctx->host_id_len == 0 ||
        ctx->host_id_len > 255 || ctx->member_id_len == 0 || ctx->member_id_len > 255)
        return fail(error, "room code and user ids must be 1 to 255 bytes");
    size_t n = 0;
    memcpy(ad, label, sizeof label); /* NUL included */
    n += sizeof label;
    n += put_lv(ad + n, ctx->room, ctx->room_len);
    n += put_lv(ad + n, ctx->host_id, ctx->host_id_len);
    n += put_lv(ad + n, ctx->member_id, ctx->member_id_len);
    for (int i = 0; i < 4; i++)
        ad[n++] = (uint8_t)(ctx->epoch >> (8 * i));
    *ad_len = n;
    return 0;
}

void group_key_generate(uint8_t key[GROUP_KEY_BYTES])
{
    randombytes_buf(key, GROUP_KEY_BYTES);
}

int group_key_wrap(uint8_t out[GROUP_WRAPPED_BYTES], const uint8_t wrap_key[GROUP_WRAP_KEY_BYTES],
                   const struct group_key_context *ctx, const uint8_t key[GROUP_KEY_BYTES],
                   const uint8_t sign_pk[GROUP_SIGN_PK_BYTES], const char **error)
{
    uint8_t ad[AD_MAX], plain[GROUP_KEY_BYTES + GROUP_SIGN_PK_BYTES];
    size_t ad_len;
    if (build_ad(ad, &ad_len, ctx, error) != 0)
        return -1;
    memcpy(plain, key, GROUP_KEY_BYTES);
    memcpy(plain + GROUP_KEY_BYTES, sign_pk, GROUP_SIGN_PK_BYTES);
    randombytes_buf(out, NONCE_BYTES);
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + NONCE_BYTES, NULL, plain, sizeof plain, ad,
                                               ad_len, NULL, out, wrap_key);
    sodium_memzero(plain, sizeof plain);
    return 0;
}

int group_key_unwrap(uint8_t key[GROUP_KEY_BYTES], uint8_t sign_pk[GROUP_SIGN_PK_BYTES],
                     const uint8_t wrap_key[GROUP_WRAP_KEY_BYTES],
                     const struct group_key_context *ctx, const uint8_t *wrapped,
                     size_t wrapped_len, const char **error)
{
    uint8_t ad[AD_MAX], plain[GROUP_KEY_BYTES + GROUP_SIGN_PK_BYTES];
    size_t ad_len;
    if (build_ad(ad, &ad_len, ctx, error) != 0)
        return -1;
    if (wrapped_len != GROUP_WRAPPED_BYTES)
        return fail(error, "a wrapped group key is exactly 104 bytes");
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(plain, NULL, NULL, wrapped + NONCE_BYTES,
                                                   wrapped_len - NONCE_BYTES, ad, ad_len, wrapped,
                                                   wrap_key) != 0)
        return fail(error, "the wrapped group key failed authentication (altered, or meant for "
                           "another room, member or epoch)");
    memcpy(key, plain, GROUP_KEY_BYTES);
    memcpy(sign_pk, plain + GROUP_KEY_BYTES, GROUP_SIGN_PK_BYTES);
    sodium_memzero(plain, sizeof plain);
    return 0;
}
