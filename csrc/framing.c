/* framing.c — plans chunked binary sends: how many messages, how much payload in each, and the
 * frame header of each one. Kept free of sockets and Python so its arithmetic stays checkable on
 * its own; the transport asks it for one header at a time while streaming the payload. */
#include "framing.h"

static int fail(const char **error, const char *why)
{
    if (error)
        *error = why;
    return -1;
}

int framing_plan(struct chunk_plan *plan, uint8_t kind, uint64_t transfer_id,
                 struct frame_id sender, const struct frame_id *recipients, size_t recipient_count,
                 uint64_t total_size, size_t max_message_size, const char **error)
{
    if (kind < FRAME_KIND_WEIGHTS || kind > FRAME_KIND_OTHER)
        return fail(error, "kind must be one of the FRAME_KIND_* values (1 to 5)");
    if (sender.length == 0 || sender.length > FRAME_ID_MAX_LENGTH)
        return fail(error, "sender must be 1 to 128 bytes of UTF-8");
    if (recipient_count > FRAME_MAX_RECIPIENTS)
        return fail(error, "at most 255 recipients fit in a frame header");
    for (size_t i = 0; i < recipient_count; i++)
        if (recipients[i].length == 0 || recipients[i].length > FRAME_ID_MAX_LENGTH)
            return fail(error, "each recipient must be 1 to 128 bytes of UTF-8");
    size_t header_size = frame_header_size(sender.length, recipients, recipient_count);
    if (header_size > FRAME_HEADER_MAX_SIZE)
        return fail(error, "the frame header would exceed 4096 bytes");
    if (max_message_size <= header_size)
        return fail(error, "chunk_size must be larger than the frame header");

    size_t payload_per_chunk = max_message_size - header_size;
    /* An empty payload still travels as one chunk, so the receiver learns the transfer ended. */
    uint64_t chunk_count = total_size == 0 ? 1 : (total_size - 1) / payload_per_chunk + 1;
    if (chunk_count > UINT32_MAX)
        return fail(error, "too many chunks: raise chunk_size");

    plan->kind = kind;
    plan->transfer_id = transfer_id;
    plan->sender = sender;
    plan->recipients = recipients;
    plan->recipient_count = recipient_count;
    plan->header_size = header_size;
    plan->total_size = total_size;
    plan->payload_per_chunk = payload_per_chunk;
    plan->chunk_count = (uint32_t)chunk_count;
    return 0;
}

size_t framing_chunk_payload_size(const struct chunk_plan *plan, uint32_t index)
{
    uint64_t start = (uint64_t)index * plan->payload_per_chunk;
    if (start >= plan->total_size)
        return 0;
    uint64_t left = plan->total_size - start;
    return left < plan->payload_per_chunk ? (size_t)left : plan->payload_per_chunk;
}

size_t framing_write_header(const struct chunk_plan *plan, uint32_t index, unsigned char *out,
                            size_t capacity)
{
    return frame_header_write(out, capacity, plan->kind, plan->transfer_id, index,
                              plan->chunk_count, plan->total_size, plan->sender, plan->recipients,
                              plan->recipient_count);
}
