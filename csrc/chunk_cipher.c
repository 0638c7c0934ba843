/* chunk_cipher.c — seals and opens a private room's transfer in place: a per-transfer key from
 * the group key and a random salt, one AEAD segment after another with the transfer's identity
 * as associated data, tags collected after the ciphertext. No allocation beyond an EVP context. */
#include "chunk_cipher.h"

#include <openssl/evp.h>
#include <sodium.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

#define NONCE_BYTES 12
#define AD_MAX (SEALED_HEADER_BYTES + 8 + 1 + 1 + 255 + 1 + 255 + 8 + 8)

static int fail(const char **error, const char *why)
{
    if (error)
        *error = why;
    return -1;
}

enum sealed_algorithm sealed_preferred_algorithm(void)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned int eax, ebx, ecx, edx;
    if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_AES) && (ecx & bit_PCLMUL))
        return SEALED_AES_256_GCM;
#elif defined(__aarch64__) && defined(__linux__)
    unsigned long hwcap = getauxval(AT_HWCAP);
    if ((hwcap & HWCAP_AES) && (hwcap & HWCAP_PMULL))
        return SEALED_AES_256_GCM;
#endif
    return SEALED_CHACHA20_POLY1305;
}

static uint64_t segment_count_of(uint64_t length, uint32_t segment_size)
{
    /* An empty transfer is one empty segment, so it still carries a tag to check. */
    return length == 0 ? 1 : (length - 1) / segment_size + 1;
}

uint64_t sealed_overhead(uint64_t length, uint32_t segment_size)
{
    return SEALED_HEADER_BYTES + segment_count_of(length, segment_size) * SEALED_TAG_BYTES;
}

static void put_le(uint8_t *out, uint64_t value, int bytes)
{
    for (int i = 0; i < bytes; i++)
        out[i] = (uint8_t)(value >> (8 * i));
}

static uint64_t get_le(const uint8_t *in, int bytes)
{
    uint64_t value = 0;
    for (int i = 0; i < bytes; i++)
        value |= (uint64_t)in[i] << (8 * i);
    return value;
}

/* transfer key = HMAC-SHA-256(group key, label || algorithm || salt): a fresh key for every
 * transfer, so nonces only need to be unique within one transfer (segment indexes are). */
static void transfer_key(uint8_t out[SEALED_KEY_BYTES], const uint8_t group_key[SEALED_KEY_BYTES],
                         uint8_t algorithm, const uint8_t salt[SEALED_SALT_BYTES])
{
    static const char label[] = "SegSuite transfer key v1"; /* NUL included: ends the label */
    crypto_auth_hmacsha256_state mac;
    crypto_auth_hmacsha256_init(&mac, group_key, SEALED_KEY_BYTES);
    crypto_auth_hmacsha256_update(&mac, (const uint8_t *)label, sizeof label);
    crypto_auth_hmacsha256_update(&mac, &algorithm, 1);
    crypto_auth_hmacsha256_update(&mac, salt, SEALED_SALT_BYTES);
    crypto_auth_hmacsha256_final(&mac, out);
    sodium_memzero(&mac, sizeof mac);
}

/* The associated data of every segment: the sealed header, the transfer's identity and the
 * segment count; the caller appends the segment index last. Returns its length. */
static size_t build_ad(uint8_t ad[AD_MAX], const uint8_t header[SEALED_HEADER_BYTES],
                       const struct sealed_context *ctx, uint64_t segment_count)
{
    size_t n = 0;
    memcpy(ad + n, header, SEALED_HEADER_BYTES);
    n += SEALED_HEADER_BYTES;
    put_le(ad + n, ctx->transfer_id, 8);
    n += 8;
    ad[n++] = ctx->kind;
    ad[n++] = (uint8_t)ctx->room_len;
    memcpy(ad + n, ctx->room, ctx->room_len);
    n += ctx->room_len;
    ad[n++] = (uint8_t)ctx->sender_len;
    memcpy(ad + n, ctx->sender, ctx->sender_len);
    n += ctx->sender_len;
    put_le(ad + n, segment_count, 8);
    n += 8;
    return n;
}

static const EVP_CIPHER *cipher_of(uint8_t algorithm)
{
    if (algorithm == SEALED_AES_256_GCM)
        return EVP_aes_256_gcm();
    if (algorithm == SEALED_CHACHA20_POLY1305)
        return EVP_chacha20_poly1305();
    return NULL;
}

#define AEAD_FORGED (-2)

/* One AEAD operation on a context that already holds its key: sets the nonce, feeds the
 * associated data, transforms data in place and writes (sealing) or checks (opening) the tag.
 * Returns 0, AEAD_FORGED when the tag does not match, or -1 when OpenSSL fails. */
static int aead_segment(EVP_CIPHER_CTX *evp, int encrypt, const uint8_t nonce[NONCE_BYTES],
                        const uint8_t *ad, size_t ad_len, uint8_t *data, int size, uint8_t *tag)
{
    int out_len;
    if (!EVP_CipherInit_ex(evp, NULL, NULL, NULL, nonce, -1) ||
        (ad_len > 0 && !EVP_CipherUpdate(evp, NULL, &out_len, ad, (int)ad_len)))
        return -1;
    if (size > 0 && !EVP_CipherUpdate(evp, data, &out_len, data, size))
        return -1;
    if (!encrypt && !EVP_CIPHER_CTX_ctrl(evp, EVP_CTRL_AEAD_SET_TAG, SEALED_TAG_BYTES, tag))
        return -1;
    if (EVP_CipherFinal_ex(evp, data + size, &out_len) != 1)
        return encrypt ? -1 : AEAD_FORGED;
    if (encrypt && !EVP_CIPHER_CTX_ctrl(evp, EVP_CTRL_AEAD_GET_TAG, SEALED_TAG_BYTES, tag))
        return -1;
    return 0;
}

int sealed_aead_raw(enum sealed_algorithm algorithm, int encrypt,
                    const uint8_t key[SEALED_KEY_BYTES], const uint8_t nonce[12], const uint8_t *ad,
                    size_t ad_len, uint8_t *data, size_t length, uint8_t tag[SEALED_TAG_BYTES])
{
    const EVP_CIPHER *cipher = cipher_of((uint8_t)algorithm);
    if (cipher == NULL || length > SEALED_MAX_SEGMENT_SIZE || ad_len > SEALED_MAX_SEGMENT_SIZE)
        return -1;
    EVP_CIPHER_CTX *evp = EVP_CIPHER_CTX_new();
    int rc = -1;
    if (evp && EVP_CipherInit_ex(evp, cipher, NULL, key, NULL, encrypt))
        rc = aead_segment(evp, encrypt, nonce, ad, ad_len, data, (int)length, tag);
    EVP_CIPHER_CTX_free(evp);
    return rc;
}

static int check_context(const struct sealed_context *ctx, const char **error)
{
    if (ctx->room_len == 0 || ctx->room_len > 255)
        return fail(error, "room code must be 1 to 255 bytes");
    if (ctx->sender_len == 0 || ctx->sender_len > 255)
        return fail(error, "sender must be 1 to 255 bytes");
    return 0;
}

/* One pass over the segments, sealing (encrypt = 1) or opening. The digest, when asked for,
 * covers each segment's ciphertext right after it is written or right before it is read. */
static int run_segments(int encrypt, const uint8_t key[SEALED_KEY_BYTES],
                        const struct sealed_context *ctx, const uint8_t *header, uint8_t *data,
                        uint64_t length, uint32_t segment_size, uint8_t *tags, uint8_t *digest,
                        const char **error)
{
    uint8_t algorithm = header[4];
    uint8_t salt_key[SEALED_KEY_BYTES];
    uint8_t ad[AD_MAX];
    uint64_t segment_count = segment_count_of(length, segment_size);
    size_t ad_len = build_ad(ad, header, ctx, segment_count);
    const EVP_CIPHER *cipher = cipher_of(algorithm);
    EVP_CIPHER_CTX *evp = EVP_CIPHER_CTX_new();
    EVP_MD_CTX *md = digest ? EVP_MD_CTX_new() : NULL;
    int rc = -1;
    if (cipher == NULL) {
        fail(error, "unknown sealed-transfer algorithm");
        goto done;
    }
    if (evp == NULL || (digest && (md == NULL || !EVP_DigestInit_ex(md, EVP_sha256(), NULL) ||
                                   !EVP_DigestUpdate(md, header, SEALED_HEADER_BYTES)))) {
        fail(error, "out of memory for the cipher context");
        goto done;
    }
    transfer_key(salt_key, key, algorithm, header + 24);
    if (!EVP_CipherInit_ex(evp, cipher, NULL, salt_key, NULL, encrypt)) {
        fail(error, "the cipher rejected its key");
        goto done;
    }
    for (uint64_t index = 0; index < segment_count; index++) {
        uint8_t nonce[NONCE_BYTES] = {0};
        uint64_t start = index * segment_size;
        int size = (int)(length - start < segment_size ? length - start : segment_size);
        uint8_t *segment = data + start;
        uint8_t *tag = tags + index * SEALED_TAG_BYTES;
        /* nonce = segment index: unique within the transfer, and the key is the transfer's */
        put_le(nonce, index, 8);
        put_le(ad + ad_len, index, 8);
        if (!encrypt && digest && size > 0 && !EVP_DigestUpdate(md, segment, (size_t)size))
            goto cipher_failed;
        int rc_segment = aead_segment(evp, encrypt, nonce, ad, ad_len + 8, segment, size, tag);
        if (rc_segment == AEAD_FORGED) {
            /* EVP decrypts before it checks: wipe everything this call touched. */
            sodium_memzero(data, length);
            fail(error, "a segment failed authentication: the transfer was altered, truncated, "
                        "reordered, replayed from another transfer or room, or sealed under "
                        "another key");
            goto done;
        }
        if (rc_segment != 0)
            goto cipher_failed;
        if (encrypt && digest && size > 0 && !EVP_DigestUpdate(md, segment, (size_t)size))
            goto cipher_failed;
    }
    if (digest && !EVP_DigestFinal_ex(md, digest, NULL))
        goto cipher_failed;
    rc = 0;
    goto done;
cipher_failed:
    if (!encrypt)
        sodium_memzero(data, length);
    fail(error, "the cipher failed");
done:
    sodium_memzero(salt_key, sizeof salt_key);
    EVP_CIPHER_CTX_free(evp);
    EVP_MD_CTX_free(md);
    return rc;
}

int sealed_seal(const uint8_t key[SEALED_KEY_BYTES], const struct sealed_context *ctx,
                enum sealed_algorithm algorithm, uint32_t segment_size, uint8_t *data,
                uint64_t length, uint8_t header[SEALED_HEADER_BYTES], uint8_t *tags,
                uint8_t digest[SEALED_DIGEST_BYTES], const char **error)
{
    if (check_context(ctx, error) != 0)
        return -1;
    if (cipher_of((uint8_t)algorithm) == NULL)
        return fail(error, "algorithm must be 1 (AES-256-GCM) or 2 (ChaCha20-Poly1305)");
    if (segment_size == 0 || segment_size > SEALED_MAX_SEGMENT_SIZE)
        return fail(error, "segment size must be 1 byte to 1 GiB");
    memcpy(header, SEALED_MAGIC, 4);
    header[4] = (uint8_t)algorithm;
    header[5] = header[6] = header[7] = 0;
    put_le(header + 8, ctx->epoch, 4);
    put_le(header + 12, segment_size, 4);
    put_le(header + 16, length, 8);
    randombytes_buf(header + 24, SEALED_SALT_BYTES);
    return run_segments(1, key, ctx, header, data, length, segment_size, tags, digest, error);
}

int sealed_parse_header(struct sealed_header *header, const uint8_t *sealed, uint64_t sealed_len,
                        const char **error)
{
    memset(header, 0, sizeof *header);
    if (sealed_len < SEALED_HEADER_BYTES + SEALED_TAG_BYTES)
        return fail(error, "sealed transfer shorter than its header and one tag");
    if (memcmp(sealed, SEALED_MAGIC, 4) != 0)
        return fail(error, "not a sealed transfer (no SSE1 magic): plaintext in a private room");
    if (cipher_of(sealed[4]) == NULL)
        return fail(error, "sealed transfer names an unknown algorithm");
    if (sealed[5] || sealed[6] || sealed[7])
        return fail(error, "sealed transfer has non-zero reserved bytes");
    header->algorithm = (enum sealed_algorithm)sealed[4];
    header->epoch = (uint32_t)get_le(sealed + 8, 4);
    header->segment_size = (uint32_t)get_le(sealed + 12, 4);
    header->plaintext_len = get_le(sealed + 16, 8);
    memcpy(header->salt, sealed + 24, SEALED_SALT_BYTES);
    if (header->segment_size == 0 || header->segment_size > SEALED_MAX_SEGMENT_SIZE)
        return fail(error, "sealed transfer has a segment size out of range");
    if (header->plaintext_len > sealed_len)
        return fail(error, "sealed transfer is shorter than its announced length (truncated?)");
    header->segment_count = segment_count_of(header->plaintext_len, header->segment_size);
    /* plaintext_len <= sealed_len bounds segment_count, so this cannot overflow */
    if (sealed_len !=
        header->plaintext_len + sealed_overhead(header->plaintext_len, header->segment_size))
        return fail(error, "sealed transfer size does not match its header (truncated or "
                           "extended)");
    return 0;
}

int sealed_open(const uint8_t key[SEALED_KEY_BYTES], const struct sealed_context *ctx,
                uint8_t *sealed, uint64_t sealed_len, struct sealed_header *header,
                uint8_t digest[SEALED_DIGEST_BYTES], const char **error)
{
    if (check_context(ctx, error) != 0)
        return -1;
    if (sealed_parse_header(header, sealed, sealed_len, error) != 0)
        return -1;
    if (header->epoch != ctx->epoch)
        return fail(error, "sealed under another key epoch");
    uint8_t *data = sealed + SEALED_HEADER_BYTES;
    return run_segments(0, key, ctx, sealed, data, header->plaintext_len, header->segment_size,
                        data + header->plaintext_len, digest, error);
}
