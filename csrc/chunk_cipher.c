/* chunk_cipher.c — seals a private room's transfer (a per-transfer key from the group key and a
 * random salt, one AEAD segment after another with the transfer's identity as associated data,
 * the tags ahead of the ciphertext) and opens it in place while it arrives. No allocation beyond
 * the OpenSSL contexts. */
#include "chunk_cipher.h"

#include <openssl/evp.h>
#include <pthread.h>
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

uint64_t sealed_segment_count(uint64_t length, uint32_t segment_size)
{
    /* An empty transfer is one empty segment, so it still carries a tag to check. */
    return length == 0 ? 1 : (length - 1) / segment_size + 1;
}

uint64_t sealed_data_offset(uint64_t length, uint32_t segment_size)
{
    (void)length;
    (void)segment_size;
    return SEALED_DATA_OFFSET;
}

uint64_t sealed_segment_offset(uint64_t index, uint32_t segment_size)
{
    return SEALED_DATA_OFFSET + index * ((uint64_t)segment_size + SEALED_TAG_BYTES);
}

uint64_t sealed_size(uint64_t length, uint32_t segment_size)
{
    return SEALED_DATA_OFFSET + length +
           sealed_segment_count(length, segment_size) * SEALED_TAG_BYTES;
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
                        const uint8_t *ad, size_t ad_len, const uint8_t *in, uint8_t *out, int size,
                        uint8_t *tag)
{
    int out_len;
    if (!EVP_CipherInit_ex(evp, NULL, NULL, NULL, nonce, -1) ||
        (ad_len > 0 && !EVP_CipherUpdate(evp, NULL, &out_len, ad, (int)ad_len)))
        return -1;
    if (size > 0 && !EVP_CipherUpdate(evp, out, &out_len, in, size))
        return -1;
    if (!encrypt && !EVP_CIPHER_CTX_ctrl(evp, EVP_CTRL_AEAD_SET_TAG, SEALED_TAG_BYTES, tag))
        return -1;
    if (EVP_CipherFinal_ex(evp, out + size, &out_len) != 1)
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
        rc = aead_segment(evp, encrypt, nonce, ad, ad_len, data, data, (int)length, tag);
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

/* One thread's share of a seal: segments [first, last), each written as its ciphertext and then
 * its tag at its place in the sealed transfer. Each share has its own cipher context and
 * associated-data buffer; what it writes is disjoint from the others'. */
struct seal_job {
    const struct sealed_sealer *sealer;
    uint64_t first, last;
    EVP_MD_CTX *md; /* digest of the ciphertext, only when one thread does every segment */
    int rc;
};

static int seal_range(struct seal_job *job)
{
    const struct sealed_sealer *s = job->sealer;
    uint8_t ad[AD_MAX];
    memcpy(ad, s->ad, s->ad_len);
    EVP_CIPHER_CTX *evp = EVP_CIPHER_CTX_new();
    int rc = evp && EVP_CipherInit_ex(evp, s->cipher, NULL, s->subkey, NULL, 1) ? 0 : -1;
    for (uint64_t index = job->first; rc == 0 && index < job->last; index++) {
        uint8_t nonce[NONCE_BYTES] = {0};
        uint64_t start = index * s->segment_size;
        uint64_t left = s->length - start;
        int size = (int)(left < s->segment_size ? left : s->segment_size);
        uint8_t *out = s->sealed + sealed_segment_offset(index, s->segment_size);
        /* nonce = segment index: unique within the transfer, and the key is the transfer's */
        put_le(nonce, index, 8);
        put_le(ad + s->ad_len, index, 8);
        if (aead_segment(evp, 1, nonce, ad, s->ad_len + 8, s->plaintext + start, out, size,
                         out + size) != 0 ||
            (job->md && size > 0 && !EVP_DigestUpdate(job->md, out, (size_t)size)))
            rc = -1;
    }
    EVP_CIPHER_CTX_free(evp);
    return rc;
}

static void *seal_thread(void *arg)
{
    struct seal_job *job = arg;
    job->rc = seal_range(job);
    return NULL;
}

/* Large ranges without a digest are sealed by two threads, each half of the segments: a sender
 * that seals before its first byte leaves has this time on the critical path while the relay
 * and the receiver wait (the machines this runs on have 2 or more cores). A digest (global
 * models) is one sequential hash, so those stay on one thread. */
#define SEAL_PARALLEL_SMALLEST ((uint64_t)8 << 20)

int sealed_sealer_init(struct sealed_sealer *s, const uint8_t key[SEALED_KEY_BYTES],
                       const struct sealed_context *ctx, enum sealed_algorithm algorithm,
                       uint32_t segment_size, const uint8_t *plaintext, uint64_t length,
                       uint8_t *sealed, int want_digest, const char **error)
{
    memset(s, 0, sizeof *s);
    if (check_context(ctx, error) != 0)
        return -1;
    s->cipher = cipher_of((uint8_t)algorithm);
    if (s->cipher == NULL)
        return fail(error, "algorithm must be 1 (AES-256-GCM) or 2 (ChaCha20-Poly1305)");
    if (segment_size == 0 || segment_size > SEALED_MAX_SEGMENT_SIZE)
        return fail(error, "segment size must be 1 byte to 1 GiB");
    uint64_t total = sealed_size(length, segment_size);
    if (plaintext < sealed + total && sealed < plaintext + length)
        return fail(error, "plaintext overlaps the sealed buffer (tags go between segments: "
                           "sealing is never in place)");
    s->count = sealed_segment_count(length, segment_size);
    memcpy(sealed, SEALED_MAGIC, 4);
    sealed[4] = (uint8_t)algorithm;
    sealed[5] = sealed[6] = sealed[7] = 0;
    put_le(sealed + 8, ctx->epoch, 4);
    put_le(sealed + 12, segment_size, 4);
    put_le(sealed + 16, length, 8);
    randombytes_buf(sealed + 24, SEALED_SALT_BYTES);
    memset(sealed + SEALED_HEADER_BYTES, 0, SEALED_DATA_OFFSET - SEALED_HEADER_BYTES);
    s->ad_len = build_ad(s->ad, sealed, ctx, s->count);
    transfer_key(s->subkey, key, (uint8_t)algorithm, sealed + 24);
    s->plaintext = plaintext;
    s->length = length;
    s->sealed = sealed;
    s->segment_size = segment_size;
    if (want_digest) {
        s->md = EVP_MD_CTX_new();
        if (s->md == NULL || !EVP_DigestInit_ex(s->md, EVP_sha256(), NULL) ||
            !EVP_DigestUpdate(s->md, sealed, SEALED_HEADER_BYTES)) {
            sealed_sealer_free(s);
            return fail(error, "out of memory for the digest");
        }
    }
    return 0;
}

uint64_t sealed_sealer_ready(const struct sealed_sealer *s)
{
    /* every byte before the next segment's is final */
    return s->next == s->count ? sealed_size(s->length, s->segment_size)
                               : sealed_segment_offset(s->next, s->segment_size);
}

int sealed_sealer_seal_through(struct sealed_sealer *s, uint64_t wire_end, const char **error)
{
    uint64_t last = s->next;
    while (last < s->count && sealed_segment_offset(last, s->segment_size) < wire_end)
        last++;
    if (last == s->next)
        return 0;
    struct seal_job jobs[2] = {{s, s->next, last, s->md, 0}, {s, 0, last, NULL, 0}};
    pthread_t helper;
    int helped = 0;
    if (!s->md && !s->one_thread && (last - s->next) * s->segment_size >= SEAL_PARALLEL_SMALLEST) {
        jobs[0].last = jobs[1].first = s->next + (last - s->next) / 2;
        helped = pthread_create(&helper, NULL, seal_thread, &jobs[1]) == 0;
        if (!helped)
            jobs[0].last = last; /* no thread: this one does it all */
    }
    int rc = seal_range(&jobs[0]);
    if (helped) {
        pthread_join(helper, NULL);
        rc |= jobs[1].rc;
    }
    if (rc != 0)
        return fail(error, "the cipher failed");
    s->next = last;
    return 0;
}

int sealed_sealer_finish(struct sealed_sealer *s, uint8_t digest[SEALED_DIGEST_BYTES],
                         const char **error)
{
    if (sealed_sealer_seal_through(s, UINT64_MAX, error) != 0)
        return -1;
    if (digest && (s->md == NULL || !EVP_DigestFinal_ex(s->md, digest, NULL)))
        return fail(error, "no digest was asked for");
    return 0;
}

void sealed_sealer_free(struct sealed_sealer *s)
{
    EVP_MD_CTX_free(s->md);
    s->md = NULL;
    sodium_memzero(s->subkey, sizeof s->subkey);
}

int sealed_seal(const uint8_t key[SEALED_KEY_BYTES], const struct sealed_context *ctx,
                enum sealed_algorithm algorithm, uint32_t segment_size, const uint8_t *plaintext,
                uint64_t length, uint8_t *sealed, uint8_t digest[SEALED_DIGEST_BYTES],
                const char **error)
{
    struct sealed_sealer s;
    if (sealed_sealer_init(&s, key, ctx, algorithm, segment_size, plaintext, length, sealed,
                           digest != NULL, error) != 0)
        return -1;
    int rc = sealed_sealer_finish(&s, digest, error);
    sealed_sealer_free(&s);
    return rc;
}

int sealed_parse_header(struct sealed_header *header, const uint8_t *sealed, uint64_t sealed_len,
                        const char **error)
{
    memset(header, 0, sizeof *header);
    if (sealed_len < SEALED_HEADER_BYTES)
        return fail(error, "sealed transfer shorter than its 40-byte header");
    if (memcmp(sealed, SEALED_MAGIC, 4) != 0)
        return fail(error, "not a sealed transfer (no SSE2 magic): plaintext in a private room");
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
    /* plaintext_len <= sealed_len bounds the segment count, so nothing below overflows */
    header->segment_count = sealed_segment_count(header->plaintext_len, header->segment_size);
    if (sealed_len != sealed_size(header->plaintext_len, header->segment_size))
        return fail(error, "sealed transfer size does not match its header (truncated or "
                           "extended)");
    return 0;
}

int sealed_opener_init(struct sealed_opener *opener, const uint8_t key[SEALED_KEY_BYTES],
                       const struct sealed_context *ctx, uint64_t sealed_len, int want_digest,
                       const char **error)
{
    memset(opener, 0, sizeof *opener);
    opener->state = -1;
    if (check_context(ctx, error) != 0)
        return -1;
    memcpy(opener->group_key, key, SEALED_KEY_BYTES);
    memcpy(opener->room, ctx->room, ctx->room_len);
    memcpy(opener->sender, ctx->sender, ctx->sender_len);
    opener->ctx = *ctx;
    opener->ctx.room = opener->room;
    opener->ctx.sender = opener->sender;
    opener->sealed_len = sealed_len;
    opener->evp = EVP_CIPHER_CTX_new();
    opener->md = want_digest ? EVP_MD_CTX_new() : NULL;
    if (opener->evp == NULL || (want_digest && opener->md == NULL)) {
        sealed_opener_free(opener);
        return fail(error, "out of memory for the cipher context");
    }
    opener->state = 0;
    return 0;
}

static int opener_failed(struct sealed_opener *opener, uint8_t *sealed, const char **error,
                         const char *why)
{
    if (opener->keyed && sealed != NULL) /* plaintext may be anywhere after the header */
        sodium_memzero(sealed + SEALED_DATA_OFFSET, opener->sealed_len - SEALED_DATA_OFFSET);
    opener->state = -1;
    sodium_memzero(opener->group_key, SEALED_KEY_BYTES);
    return fail(error, why);
}

/* Reads the header and its padding once they are in: checks them and keys the cipher. */
static int opener_start(struct sealed_opener *opener, const uint8_t *sealed, uint64_t available,
                        const char **error)
{
    if (available < SEALED_DATA_OFFSET)
        return 0;
    const char *why = NULL;
    if (sealed_parse_header(&opener->header, sealed, opener->sealed_len, &why) != 0)
        return opener_failed(opener, NULL, error, why);
    if (opener->header.epoch != opener->ctx.epoch)
        return opener_failed(opener, NULL, error, "sealed under another key epoch");
    for (uint64_t i = SEALED_HEADER_BYTES; i < SEALED_DATA_OFFSET; i++)
        if (sealed[i] != 0)
            return opener_failed(opener, NULL, error, "sealed transfer has non-zero padding");
    opener->data_offset = SEALED_DATA_OFFSET;
    uint8_t subkey[SEALED_KEY_BYTES];
    transfer_key(subkey, opener->group_key, sealed[4], sealed + 24);
    int ok = EVP_CipherInit_ex(opener->evp, cipher_of(sealed[4]), NULL, subkey, NULL, 0);
    sodium_memzero(subkey, sizeof subkey);
    if (!ok || (opener->md && (!EVP_DigestInit_ex(opener->md, EVP_sha256(), NULL) ||
                               !EVP_DigestUpdate(opener->md, sealed, SEALED_HEADER_BYTES))))
        return opener_failed(opener, NULL, error, "the cipher failed");
    opener->ad_len = build_ad(opener->ad, sealed, &opener->ctx, opener->header.segment_count);
    opener->state = 1;
    opener->keyed = 1;
    return 0;
}

static uint64_t segment_bytes(const struct sealed_header *h, uint64_t index)
{
    uint64_t start = index * h->segment_size;
    return h->plaintext_len - start < h->segment_size ? h->plaintext_len - start : h->segment_size;
}

/* Checks and decrypts the next segment from `src` (its ciphertext, followed by nothing in
 * particular) with `tag` into its place in the plaintext, sealed + 64 + index * segment size. */
static int open_next_segment(struct sealed_opener *opener, uint8_t *sealed, const uint8_t *src,
                             const uint8_t *tag, const char **error)
{
    const struct sealed_header *h = &opener->header;
    uint64_t index = opener->next_segment;
    uint64_t size = segment_bytes(h, index);
    uint8_t nonce[NONCE_BYTES] = {0}, tag_copy[SEALED_TAG_BYTES];
    memcpy(tag_copy, tag, SEALED_TAG_BYTES); /* the plaintext may land over it */
    put_le(nonce, index, 8);
    put_le(opener->ad + opener->ad_len, index, 8);
    if (opener->md && size > 0 && !EVP_DigestUpdate(opener->md, src, (size_t)size))
        return opener_failed(opener, sealed, error, "the digest failed");
    uint8_t *dst = sealed + SEALED_DATA_OFFSET + index * h->segment_size;
    /* In place at its wire position when the transfer was assembled whole, then moved down:
     * EVP takes the same buffer or disjoint ones, never a shifted one. */
    uint8_t *out = src == dst || src >= dst + size || src + size <= dst ? dst : (uint8_t *)src;
    int rc = aead_segment(opener->evp, 0, nonce, opener->ad, opener->ad_len + 8, src, out,
                          (int)size, tag_copy);
    if (rc == AEAD_FORGED)
        return opener_failed(opener, sealed, error,
                             "a segment failed authentication: the transfer was altered, "
                             "truncated, reordered, replayed from another transfer or room, "
                             "or sealed under another key");
    if (rc != 0)
        return opener_failed(opener, sealed, error, "the cipher failed");
    if (out != dst)
        memmove(dst, out, size);
    if (++opener->next_segment == h->segment_count)
        opener->state = 2;
    return 0;
}

/* Reads the header once `available` bytes are in; fails for good on a transfer that ends before
 * it. */
static int opener_begin(struct sealed_opener *opener, const uint8_t *sealed, uint64_t available,
                        const char **error)
{
    if (opener->state == 0 && opener_start(opener, sealed, available, error) != 0)
        return -1;
    if (opener->state == 0 && available == opener->sealed_len)
        return opener_failed(opener, NULL, error,
                             "sealed transfer shorter than its header (truncated?)");
    return 0;
}

int sealed_opener_feed(struct sealed_opener *opener, uint8_t *sealed, uint64_t available,
                       const char **error)
{
    if (opener->state < 0)
        return fail(error, "this transfer already failed to open");
    if (available > opener->sealed_len || available < opener->received)
        return opener_failed(opener, NULL, error, "fed bytes out of order or past the end");
    opener->received = available;
    if (opener_begin(opener, sealed, available, error) != 0)
        return -1;
    const struct sealed_header *h = &opener->header;
    while (opener->state == 1) {
        uint64_t start = sealed_segment_offset(opener->next_segment, h->segment_size);
        uint64_t size = segment_bytes(h, opener->next_segment);
        if (start + size + SEALED_TAG_BYTES > available)
            break;
        if (open_next_segment(opener, sealed, sealed + start, sealed + start + size, error) != 0)
            return -1;
    }
    return 0;
}

int sealed_opener_feed_from(struct sealed_opener *opener, uint8_t *sealed, const uint8_t *piece,
                            uint64_t piece_len, const char **error)
{
    if (opener->state < 0)
        return fail(error, "this transfer already failed to open");
    uint64_t cursor = opener->received, end = cursor + piece_len;
    if (piece_len > opener->sealed_len - cursor)
        return opener_failed(opener, NULL, error, "more bytes than the transfer's size");
    const struct sealed_header *h = &opener->header;
    while (cursor < end) {
        const uint8_t *here = piece + (cursor - opener->received);
        if (opener->state == 0) {
            /* the header and its padding: copied, as they are read from the buffer */
            uint64_t stop = SEALED_DATA_OFFSET < end ? SEALED_DATA_OFFSET : end;
            memcpy(sealed + cursor, here, stop - cursor);
            cursor = stop;
            if (opener_begin(opener, sealed, cursor, error) != 0)
                return -1;
            continue;
        }
        if (opener->state != 1)
            break;
        uint64_t index = opener->next_segment;
        uint64_t seg_start = sealed_segment_offset(index, h->segment_size);
        uint64_t size = segment_bytes(h, index);
        uint64_t tag_start = seg_start + size, seg_end = tag_start + SEALED_TAG_BYTES;
        uint8_t *dst = sealed + SEALED_DATA_OFFSET + index * h->segment_size;
        if (cursor == seg_start && seg_end <= end) {
            /* the whole segment and its tag are in this piece: decrypting it is the copy */
            if (open_next_segment(opener, sealed, here, here + size, error) != 0)
                return -1;
            cursor = seg_end;
            continue;
        }
        /* cut by the piece's edge: the ciphertext gathered where its plaintext goes, the tag
         * aside, and opened in place once both are in */
        uint64_t stop = seg_end < end ? seg_end : end;
        if (cursor < tag_start) {
            uint64_t ct_stop = stop < tag_start ? stop : tag_start;
            memcpy(dst + (cursor - seg_start), here, ct_stop - cursor);
            here += ct_stop - cursor;
            cursor = ct_stop;
        }
        if (cursor < stop) {
            memcpy(opener->tag + (cursor - tag_start), here, stop - cursor);
            cursor = stop;
        }
        if (cursor == seg_end && open_next_segment(opener, sealed, dst, opener->tag, error) != 0)
            return -1;
    }
    opener->received = end;
    return 0;
}

int sealed_opener_finish(struct sealed_opener *opener, uint8_t digest[SEALED_DIGEST_BYTES],
                         const char **error)
{
    if (opener->state != 2)
        return fail(error, opener->state < 0 ? "this transfer failed to open"
                                             : "the transfer ended before its last segment");
    if (digest && (opener->md == NULL || !EVP_DigestFinal_ex(opener->md, digest, NULL)))
        return fail(error, "no digest was asked for");
    return 0;
}

void sealed_opener_free(struct sealed_opener *opener)
{
    EVP_CIPHER_CTX_free(opener->evp);
    EVP_MD_CTX_free(opener->md);
    opener->evp = opener->md = NULL;
    sodium_memzero(opener->group_key, SEALED_KEY_BYTES);
}

int sealed_open(const uint8_t key[SEALED_KEY_BYTES], const struct sealed_context *ctx,
                uint8_t *sealed, uint64_t sealed_len, struct sealed_header *header,
                uint8_t digest[SEALED_DIGEST_BYTES], const char **error)
{
    struct sealed_opener opener;
    if (sealed_opener_init(&opener, key, ctx, sealed_len, digest != NULL, error) != 0)
        return -1;
    int rc = sealed_opener_feed(&opener, sealed, sealed_len, error);
    if (rc == 0)
        rc = sealed_opener_finish(&opener, digest, error);
    *header = opener.header;
    sealed_opener_free(&opener);
    return rc;
}
