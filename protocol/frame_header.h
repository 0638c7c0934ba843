/* frame_header.h — the self-describing header at the start of every binary message our
 * clients send (docs/protocol.md, "Self-describing binary frames"): its layout, kinds and limits,
 * and the parser and writer. Compiled into both the relay and the Python extension. */
#ifndef FRAME_HEADER_H
#define FRAME_HEADER_H

#include <stddef.h>
#include <stdint.h>

#include "protocol_constants.h"

#define FRAME_MAGIC "SSBF"
#define FRAME_MAGIC_SIZE 4
#define FRAME_HEADER_VERSION 1
#define FRAME_HEADER_FIXED_SIZE 36
#define FRAME_HEADER_MAX_SIZE 4096
#define FRAME_ID_MAX_LENGTH USER_ID_MAX_BYTES /* sender and recipients are user ids */
#define FRAME_MAX_RECIPIENTS 255

enum frame_kind {
    FRAME_KIND_WEIGHTS = 1,
    FRAME_KIND_GLOBAL_MODEL = 2,
    FRAME_KIND_TRAINING_IMAGE = 3,
    FRAME_KIND_TRAINING_MASK = 4,
    FRAME_KIND_OTHER = 5,
};

/* An id inside a header: points into the parsed buffer, not NUL-terminated. */
struct frame_id {
    const char *bytes;
    uint8_t length;
};

struct frame_header {
    uint8_t kind;
    uint16_t header_size; /* where the payload starts */
    uint64_t transfer_id;
    uint32_t chunk_index;
    uint32_t chunk_count;
    uint64_t total_size;
    struct frame_id sender;
    uint8_t recipient_count;
    const unsigned char *recipients; /* recipient_count entries of (length, bytes) */
};

enum frame_parse_result {
    FRAME_OK = 0,
    FRAME_NOT_OURS,  /* does not start with the magic: a v1 payload, forward as is */
    FRAME_NEED_MORE, /* starts with the magic but fewer than header_size bytes so far */
    FRAME_MALFORMED, /* starts with the magic, header invalid; `error` says why */
};

/* Parses the header at the start of `data`. With FRAME_NEED_MORE, *needed (if not NULL) is the
 * number of bytes required (known once the fixed part has arrived, else FIXED_SIZE). */
enum frame_parse_result frame_header_parse(const unsigned char *data, size_t length,
                                           struct frame_header *header, size_t *needed,
                                           const char **error);

/* Iterates recipients: call with *cursor = 0 first; returns 0 at the end. */
int frame_header_next_recipient(const struct frame_header *header, size_t *cursor,
                                struct frame_id *recipient);

/* Size of a header with these ids. */
size_t frame_header_size(size_t sender_length, const struct frame_id *recipients,
                         size_t recipient_count);

/* Writes a header into `out` (capacity `capacity`); returns its size, or 0 if the ids are out
 * of range or it does not fit. */
size_t frame_header_write(unsigned char *out, size_t capacity, uint8_t kind, uint64_t transfer_id,
                          uint32_t chunk_index, uint32_t chunk_count, uint64_t total_size,
                          struct frame_id sender, const struct frame_id *recipients,
                          size_t recipient_count);

#endif
