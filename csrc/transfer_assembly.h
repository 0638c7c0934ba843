/* transfer_assembly.h — the receiving side of framing.c: the chunks of one (sender, transfer
 * id) written in place into one 64-byte-aligned buffer as they arrive, so a transfer reaches
 * Python as one buffer after one copy (socket to buffer). In a private room that copy is the
 * decryption (chunk_cipher.c): each segment is opened as it lands. Sans-I/O: fed message bytes. */
#ifndef TRANSFER_ASSEMBLY_H
#define TRANSFER_ASSEMBLY_H

#include <stddef.h>
#include <stdint.h>

#include "chunk_cipher.h"
#include "frame_header.h"

/* Alignment of a transfer's payload: what the codec needs to view tensors in place. */
#define TRANSFER_ALIGNMENT 64
/* Transfers of one connection open at once; a new one beyond it drops the oldest. */
#define TRANSFER_MAX_OPEN 64

struct transfer_in_progress;

/* A private room's group key (docs/security.md): every transfer that starts while it is set is
 * opened with it as its chunks land, the frame header's sender, transfer id and kind completing
 * the associated data. A global model's last 64 bytes (the host's signature) are not sealed. */
struct transfer_key {
    int set;
    uint8_t key[SEALED_KEY_BYTES];
    uint8_t room[255];
    size_t room_len;
    uint32_t epoch;
};

enum transfer_opened {
    TRANSFER_AS_RECEIVED = 0, /* no key, or not sealed under it (another epoch): bytes as sent */
    TRANSFER_OPENED = 1,      /* plaintext at plaintext_offset; the caller still checks sender,
                                 replay and a global model's signature */
    TRANSFER_REFUSED = -1,    /* failed authentication: the ciphertext region is wiped */
};

struct completed_transfer {
    unsigned char *payload; /* aligned, `size` bytes; block_release() it with `capacity` */
    size_t size, capacity;
    unsigned char *header; /* chunk 0's frame header, `header_size` bytes; free() it */
    size_t header_size;
    enum transfer_opened opened;
    const char *open_error; /* TRANSFER_REFUSED: why (a static string) */
    uint64_t plaintext_offset, plaintext_size;
    uint32_t epoch; /* the key's, when opened */
    int has_digest; /* a global model: SHA-256 of what the host signed */
    uint8_t digest[SEALED_DIGEST_BYTES];
};

struct transfer_assembler {
    struct transfer_in_progress *open; /* most recent first */
    size_t open_count;
    uint64_t max_transfer_size;
    uint64_t dropped; /* transfers given up: out of order, truncated, too large */
    struct transfer_key key;

    /* The chunk (binary message) being received. */
    enum { CHUNK_HEADER, CHUNK_PAYLOAD, CHUNK_DROP } phase;
    unsigned char header[FRAME_HEADER_MAX_SIZE];
    size_t header_size;
    struct transfer_in_progress *current;
};

enum assembler_result {
    ASSEMBLER_TAKEN,      /* the bytes went into a transfer (or were dropped with it) */
    ASSEMBLER_COMPLETED,  /* and a transfer is complete: *done holds it */
    ASSEMBLER_NOT_FRAMED, /* the message has no frame header: header[0..header_size) and the
                             input from *used on are an ordinary message */
};

void transfer_assembler_init(struct transfer_assembler *assembler, uint64_t max_transfer_size);
void transfer_assembler_free(struct transfer_assembler *assembler);

/* The key transfers starting from now are opened with (NULL: none, received as sent). The
 * transfers already under way keep the key they started with. */
void transfer_assembler_set_key(struct transfer_assembler *assembler,
                                const struct transfer_key *key);

/* A binary message starts. */
void transfer_assembler_start_message(struct transfer_assembler *assembler);

/* The next `size` bytes of the current binary message (`last`: its end). *used says how many
 * the assembler took (all, unless ASSEMBLER_NOT_FRAMED). */
enum assembler_result transfer_assembler_take(struct transfer_assembler *assembler,
                                              const unsigned char *data, size_t size, int last,
                                              size_t *used, struct completed_transfer *done);

#endif
