/* chunk_cipher.h — authenticated encryption of one transfer (weights, a global model, a crop)
 * of a private room, in place, segment by segment, with AES-256-GCM (CPUs with AES
 * instructions) or ChaCha20-Poly1305 through OpenSSL EVP. Format in docs/security.md. */
#ifndef SEGSUITE_CHUNK_CIPHER_H
#define SEGSUITE_CHUNK_CIPHER_H

#include <stddef.h>
#include <stdint.h>

#define SEALED_MAGIC "SSE2" /* 2: each tag after its segment (SSE1 had them all first) */
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

/* Layout of a sealed transfer of `length` plaintext bytes in segments of `segment_size`:
 *   header (40) | 24 zero bytes | for each segment: its ciphertext, then its 16-byte tag
 * Each tag follows its segment so that a sender can send the first segments while it seals the
 * next ones, and a receiver can check and decrypt each segment as soon as its bytes arrive.
 * Opened, the plaintext lies contiguous from byte 64 of the buffer (64-byte aligned, so that a
 * decoder can view it in place): the receiver decrypts each segment to its place there. */
#define SEALED_DATA_OFFSET 64
uint64_t sealed_segment_count(uint64_t length, uint32_t segment_size);
/* Where the plaintext starts once opened: SEALED_DATA_OFFSET. */
uint64_t sealed_data_offset(uint64_t length, uint32_t segment_size);
/* Where segment `index` (its ciphertext, then its tag) starts in the sealed transfer. */
uint64_t sealed_segment_offset(uint64_t index, uint32_t segment_size);
uint64_t sealed_size(uint64_t length, uint32_t segment_size);

/* Seals a transfer segment by segment, so that its first bytes can be sent while the rest is
 * still being sealed. init writes the header; seal_through seals every segment that starts
 * before `wire_end` (sealed_sealer_ready then says how many bytes are final); finish seals the
 * rest and gives the digest, if one was asked for: SHA-256(header || ciphertext), computed while
 * each segment is in cache (what the host signs for a global model). `plaintext` and `sealed`
 * (sealed_size bytes) must not overlap and must stay valid until finish. Ranges of 8 MiB or
 * more without a digest are sealed by two threads. Each returns 0, or -1 with `error`. */
struct sealed_sealer {
    const void *cipher; /* EVP_CIPHER */
    uint8_t subkey[SEALED_KEY_BYTES];
    uint8_t ad[SEALED_HEADER_BYTES + 8 + 1 + 1 + 255 + 1 + 255 + 8 + 8];
    size_t ad_len;
    const uint8_t *plaintext;
    uint64_t length;
    uint8_t *sealed;
    uint32_t segment_size;
    uint64_t count, next; /* segments [0, next) are sealed */
    void *md;             /* EVP_MD_CTX of the digest, or NULL */
    int one_thread;       /* set after init: never a helper thread (see sealing_transfer.c) */
};
int sealed_sealer_init(struct sealed_sealer *sealer, const uint8_t key[SEALED_KEY_BYTES],
                       const struct sealed_context *ctx, enum sealed_algorithm algorithm,
                       uint32_t segment_size, const uint8_t *plaintext, uint64_t length,
                       uint8_t *sealed, int want_digest, const char **error);
int sealed_sealer_seal_through(struct sealed_sealer *sealer, uint64_t wire_end, const char **error);
uint64_t sealed_sealer_ready(const struct sealed_sealer *sealer);
int sealed_sealer_finish(struct sealed_sealer *sealer, uint8_t digest[SEALED_DIGEST_BYTES],
                         const char **error);
/* Frees the digest context and wipes the transfer key; safe to call twice. */
void sealed_sealer_free(struct sealed_sealer *sealer);

/* All of a seal at once: init, finish, free. */
int sealed_seal(const uint8_t key[SEALED_KEY_BYTES], const struct sealed_context *ctx,
                enum sealed_algorithm algorithm, uint32_t segment_size, const uint8_t *plaintext,
                uint64_t length, uint8_t *sealed, uint8_t digest[SEALED_DIGEST_BYTES],
                const char **error);

/* Parses and checks a sealed transfer's header against its total size. Returns 0 or -1. */
int sealed_parse_header(struct sealed_header *header, const uint8_t *sealed, uint64_t sealed_len,
                        const char **error);

/* Opens a sealed transfer in place while it arrives: feed it the receive buffer each time more
 * bytes are in, and it checks and decrypts every segment that is complete. */
struct sealed_opener {
    int state; /* 0 waiting for header and tags, 1 opening, 2 done, -1 failed */
    int keyed; /* header and tags checked, decryption may have begun: a failure wipes */
    uint8_t group_key[SEALED_KEY_BYTES];
    uint8_t room[255], sender[255];
    struct sealed_context ctx;
    uint64_t sealed_len;
    struct sealed_header header;
    uint64_t data_offset, next_segment;
    uint64_t received;             /* bytes of the transfer fed so far */
    uint8_t tag[SEALED_TAG_BYTES]; /* of a segment cut by a piece's edge, gathered */
    size_t ad_len;
    uint8_t ad[SEALED_HEADER_BYTES + 8 + 1 + 1 + 255 + 1 + 255 + 8 + 8];
    void *evp, *md; /* OpenSSL cipher and digest contexts */
};

/* `ctx` is copied; `sealed_len` is the whole transfer's size (the frame header's total size).
 * With `want_digest`, the digest is available in sealed_opener_finish. Returns 0 or -1. */
int sealed_opener_init(struct sealed_opener *opener, const uint8_t key[SEALED_KEY_BYTES],
                       const struct sealed_context *ctx, uint64_t sealed_len, int want_digest,
                       const char **error);

/* `sealed` holds the transfer's first `available` bytes (the same buffer every call). Decrypts
 * every segment now complete, in place, and moves its plaintext down to its place from byte 64
 * on (over tags already used). On any failure everything after the header is wiped (EVP
 * decrypts before it checks), the opener fails for good, and -1 is returned. */
int sealed_opener_feed(struct sealed_opener *opener, uint8_t *sealed, uint64_t available,
                       const char **error);

/* The same for a transfer that arrives as pieces (the payloads of its chunks, in order): each
 * segment's plaintext ends up at its place in `sealed` (from byte 64 on), segments wholly
 * inside the piece decrypted straight from it (the decryption is the reassembly copy), the
 * others gathered first. */
int sealed_opener_feed_from(struct sealed_opener *opener, uint8_t *sealed, const uint8_t *piece,
                            uint64_t piece_len, const char **error);

/* After the last feed: 0 if every segment was opened (digest written if asked for), else -1. */
int sealed_opener_finish(struct sealed_opener *opener, uint8_t digest[SEALED_DIGEST_BYTES],
                         const char **error);

/* Frees the OpenSSL contexts and wipes the key; safe to call twice. */
void sealed_opener_free(struct sealed_opener *opener);

/* A whole sealed transfer at once: init, one feed, finish, free. On success the plaintext is at
 * sealed + sealed_data_offset, header->plaintext_len bytes long. */
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
