/* chunk_cipher.h — authenticated encryption of one transfer (weights, a global model, a crop)
 * of a private room, in place, segment by segment, with AES-256-GCM (CPUs with AES
 * instructions) or ChaCha20-Poly1305 through OpenSSL EVP. Format in docs/security.md. */
#ifndef SEGSUITE_CHUNK_CIPHER_H
#define SEGSUITE_CHUNK_CIPHER_H

#include <stddef.h>
#include <stdint.h>

#define SEALED_MAGIC "SSE1"
#define SEALED_HEADER_BYTES 40
#define SEALED_TAG_BYTES 16
#define SEALED_SALT_BYTES 16
#define SEALED_KEY_BYTES 32
#define SEALED_DIGEST_BYTES 32                 /* SHA-256 of header and ciphertext */
#define SEALED_DEFAULT_SEGMENT_SIZE (1u << 20) /* small enough to stay in L2 while hashed */
#define SEALED_MAX_SEGMENT_SIZE (1u << 30)     /* EVP lengths are ints */

enum sealed_algorithm {
    SEALED_AES_256_GCM = 1,
    SEALED_CHACHA20_POLY1305 = 2,
};

/* What the associated data binds every segment to, besides its index and the segment count. */
struct sealed_context {
    const uint8_t *room; /* routing code */
    size_t room_len;
    const uint8_t *sender; /* user id */
    size_t sender_len;
    uint64_t transfer_id; /* the frame header's transfer id */
    uint8_t kind;         /* the frame header's kind */
    uint32_t epoch;       /* group key epoch */
};

/* The parsed fixed header of a sealed transfer. */
struct sealed_header {
    enum sealed_algorithm algorithm;
    uint32_t epoch;
    uint32_t segment_size;
    uint64_t plaintext_len;
    uint8_t salt[SEALED_SALT_BYTES];
    uint64_t segment_count;
};

/* AES-256-GCM when the CPU has AES and carry-less multiply instructions, else ChaCha20-Poly1305:
 * each is the faster of the two where it is chosen, and a receiver opens either. */
enum sealed_algorithm sealed_preferred_algorithm(void);

/* Bytes the sealed form adds to a plaintext of `length` bytes: header plus one tag a segment. */
uint64_t sealed_overhead(uint64_t length, uint32_t segment_size);

/* Encrypts data[0..length) in place. Writes the 40-byte header to `header` and one 16-byte tag
 * per segment to `tags` (sealed_overhead - 40 bytes). If `digest` is not NULL it receives
 * SHA-256(header || ciphertext), computed while each segment is still in cache (what the host
 * signs for a global model). Returns 0, or -1 with `error`. */
int sealed_seal(const uint8_t key[SEALED_KEY_BYTES], const struct sealed_context *ctx,
                enum sealed_algorithm algorithm, uint32_t segment_size, uint8_t *data,
                uint64_t length, uint8_t header[SEALED_HEADER_BYTES], uint8_t *tags,
                uint8_t digest[SEALED_DIGEST_BYTES], const char **error);

/* Parses and checks a sealed transfer's header against its total size. Returns 0 or -1. */
int sealed_parse_header(struct sealed_header *header, const uint8_t *sealed, uint64_t sealed_len,
                        const char **error);

/* Decrypts a whole sealed transfer (header || ciphertext || tags) in place: on success the
 * plaintext is at sealed + SEALED_HEADER_BYTES, header->plaintext_len bytes long. On any
 * failure the ciphertext region is wiped, so no unauthenticated byte is left to use.
 * `ctx->epoch` must equal the header's epoch. `digest` as for sealed_seal. */
int sealed_open(const uint8_t key[SEALED_KEY_BYTES], const struct sealed_context *ctx,
                uint8_t *sealed, uint64_t sealed_len, struct sealed_header *header,
                uint8_t digest[SEALED_DIGEST_BYTES], const char **error);

/* One AEAD operation with a caller-given 12-byte nonce, through the same code as the segments:
 * the published AES-GCM and ChaCha20-Poly1305 vectors are checked with it. Returns 0, -2 when
 * opening finds the tag wrong, -1 on bad arguments. Not for use with real keys: nonces must
 * never repeat under a key, which sealed_seal guarantees and this does not. */
int sealed_aead_raw(enum sealed_algorithm algorithm, int encrypt,
                    const uint8_t key[SEALED_KEY_BYTES], const uint8_t nonce[12], const uint8_t *ad,
                    size_t ad_len, uint8_t *data, size_t length, uint8_t tag[SEALED_TAG_BYTES]);

#endif
