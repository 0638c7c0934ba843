/* framing.h — how one payload is cut into self-describing binary messages (docs/protocol.md,
 * "Self-describing binary frames"): each message is a frame header followed by one slice of the
 * caller's payload, so a chunked send never assembles a second copy of the payload. */
#ifndef FRAMING_H
#define FRAMING_H

#include <stddef.h>
#include <stdint.h>

#include "frame_header.h"

/* The default largest binary message of a chunked send, header included (the protocol's). */
#define FRAMING_DEFAULT_MESSAGE_SIZE PROTOCOL_CHUNK_SIZE

/* Everything needed to produce chunk i's header and payload slice on demand. The ids point into
 * memory owned by the caller, which must outlive the plan. */
struct chunk_plan {
    uint8_t kind;
    uint64_t transfer_id;
    struct frame_id sender;
    const struct frame_id *recipients;
    size_t recipient_count;
    size_t header_size;
    uint64_t total_size;      /* payload bytes over all chunks */
    size_t payload_per_chunk; /* every chunk but the last carries exactly this much */
    uint32_t chunk_count;
};

/* Fills `plan` for sending `total_size` payload bytes in messages of at most `max_message_size`
 * bytes each (header included). Returns 0, or -1 with `error` naming what is out of range. */
int framing_plan(struct chunk_plan *plan, uint8_t kind, uint64_t transfer_id,
                 struct frame_id sender, const struct frame_id *recipients, size_t recipient_count,
                 uint64_t total_size, size_t max_message_size, const char **error);

/* Payload bytes carried by chunk `index` (the last one may be shorter, or empty when the whole
 * payload is empty). */
size_t framing_chunk_payload_size(const struct chunk_plan *plan, uint32_t index);

/* Writes chunk `index`'s header into `out`; returns plan->header_size, or 0 if it does not fit. */
size_t framing_write_header(const struct chunk_plan *plan, uint32_t index, unsigned char *out,
                            size_t capacity);

#endif
