/* transfer_assembly.c — reassembles chunked transfers (docs/protocol.md, "Self-describing
 * binary frames") straight into their final buffer: the chunk header is collected (it may
 * straddle reads), checked against the transfer it continues, and the payload copied once. */
#include <stdlib.h>
#include <string.h>

#include "block_cache.h"
#include "transfer_assembly.h"

struct transfer_in_progress {
    struct transfer_in_progress *next;
    unsigned char sender[FRAME_ID_MAX_LENGTH];
    uint8_t sender_length;
    uint64_t transfer_id;
    uint32_t chunk_count, next_index;
    uint64_t total_size, position;
    unsigned char *payload;
    size_t capacity;       /* of the payload's block */
    unsigned char *header; /* chunk 0's */
    size_t header_size;
};

void transfer_assembler_init(struct transfer_assembler *assembler, uint64_t max_transfer_size)
{
    memset(assembler, 0, sizeof *assembler);
    assembler->max_transfer_size = max_transfer_size;
}

static void free_transfer(struct transfer_in_progress *transfer)
{
    block_release(transfer->payload, transfer->capacity);
    free(transfer->header);
    free(transfer);
}

void transfer_assembler_free(struct transfer_assembler *assembler)
{
    for (struct transfer_in_progress *t = assembler->open, *next; t; t = next) {
        next = t->next;
        free_transfer(t);
    }
    assembler->open = assembler->current = NULL;
    assembler->open_count = 0;
}

static void unlink_transfer(struct transfer_assembler *assembler,
                            struct transfer_in_progress *transfer)
{
    for (struct transfer_in_progress **link = &assembler->open; *link; link = &(*link)->next)
        if (*link == transfer) {
            *link = transfer->next;
            assembler->open_count--;
            return;
        }
}

static void drop_transfer(struct transfer_assembler *assembler,
                          struct transfer_in_progress *transfer)
{
    unlink_transfer(assembler, transfer);
    free_transfer(transfer);
    assembler->dropped++;
    if (assembler->current == transfer)
        assembler->current = NULL;
}

static struct transfer_in_progress *find(struct transfer_assembler *assembler,
                                         const struct frame_header *header)
{
    for (struct transfer_in_progress *t = assembler->open; t; t = t->next)
        if (t->transfer_id == header->transfer_id && t->sender_length == header->sender.length &&
            memcmp(t->sender, header->sender.bytes, t->sender_length) == 0)
            return t;
    return NULL;
}

/* Chunk 0 opens a transfer: its buffer is allocated once, for the announced total. */
static struct transfer_in_progress *open_transfer(struct transfer_assembler *assembler,
                                                  const struct frame_header *header)
{
    if (header->total_size > assembler->max_transfer_size || header->chunk_count == 0)
        return NULL;
    if (assembler->open_count == TRANSFER_MAX_OPEN) { /* the oldest is the last */
        struct transfer_in_progress *oldest = assembler->open;
        while (oldest->next)
            oldest = oldest->next;
        drop_transfer(assembler, oldest);
    }
    struct transfer_in_progress *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->payload = block_obtain((size_t)header->total_size, TRANSFER_ALIGNMENT, &t->capacity);
    t->header = malloc(header->header_size);
    if (!t->payload || !t->header) {
        free_transfer(t);
        return NULL;
    }
    memcpy(t->header, assembler->header, header->header_size);
    t->header_size = header->header_size;
    memcpy(t->sender, header->sender.bytes, header->sender.length);
    t->sender_length = header->sender.length;
    t->transfer_id = header->transfer_id;
    t->chunk_count = header->chunk_count;
    t->total_size = header->total_size;
    t->next = assembler->open;
    assembler->open = t;
    assembler->open_count++;
    return t;
}

void transfer_assembler_start_message(struct transfer_assembler *assembler)
{
    assembler->phase = CHUNK_HEADER;
    assembler->header_size = 0;
    assembler->current = NULL;
}

/* Copies chunk payload into the current transfer, or drops the transfer if it overflows. */
static void write_payload(struct transfer_assembler *assembler, const unsigned char *data,
                          size_t size)
{
    struct transfer_in_progress *t = assembler->current;
    if (size > t->total_size - t->position) {
        drop_transfer(assembler, t);
        assembler->phase = CHUNK_DROP;
        return;
    }
    memcpy(t->payload + t->position, data, size);
    t->position += size;
}

/* The header of a chunk is complete: finds (or opens) its transfer. */
static void start_chunk(struct transfer_assembler *assembler, const struct frame_header *header)
{
    struct transfer_in_progress *t = find(assembler, header);
    if (header->chunk_index == 0) {
        if (t)
            drop_transfer(assembler, t); /* restarted: the old one cannot complete */
        t = open_transfer(assembler, header);
        if (!t)
            assembler->dropped++;
    } else if (t &&
               (header->chunk_index != t->next_index || header->chunk_count != t->chunk_count ||
                header->total_size != t->total_size)) {
        drop_transfer(assembler, t); /* out of order or inconsistent */
        t = NULL;
    }
    assembler->current = t;
    assembler->phase = t ? CHUNK_PAYLOAD : CHUNK_DROP;
    /* Payload bytes collected with the header. */
    if (t && assembler->header_size > header->header_size)
        write_payload(assembler, assembler->header + header->header_size,
                      assembler->header_size - header->header_size);
}

enum assembler_result transfer_assembler_take(struct transfer_assembler *assembler,
                                              const unsigned char *data, size_t size, int last,
                                              size_t *used, struct completed_transfer *done)
{
    *used = 0;
    if (assembler->phase == CHUNK_HEADER) {
        struct frame_header header;
        size_t needed = 0;
        const char *error = NULL;
        enum frame_parse_result parsed;
        for (;;) {
            parsed = frame_header_parse(assembler->header, assembler->header_size, &header, &needed,
                                        &error);
            if (parsed != FRAME_NEED_MORE || *used == size)
                break;
            /* Collect just what the header needs; NEED_MORE always names more than we have. */
            size_t take = needed - assembler->header_size;
            if (take > size - *used)
                take = size - *used;
            memcpy(assembler->header + assembler->header_size, data + *used, take);
            assembler->header_size += take;
            *used += take;
        }
        if (parsed == FRAME_NEED_MORE && !last)
            return ASSEMBLER_TAKEN;
        if (parsed != FRAME_OK)
            return ASSEMBLER_NOT_FRAMED; /* a v1 payload, or a bad header Python reports */
        start_chunk(assembler, &header);
    }
    if (assembler->phase == CHUNK_PAYLOAD && size > *used)
        write_payload(assembler, data + *used, size - *used);
    *used = size;
    if (!last || assembler->phase != CHUNK_PAYLOAD)
        return ASSEMBLER_TAKEN;

    struct transfer_in_progress *t = assembler->current;
    assembler->current = NULL;
    if (++t->next_index < t->chunk_count)
        return ASSEMBLER_TAKEN;
    if (t->position != t->total_size) {
        drop_transfer(assembler, t); /* the last chunk came, the bytes did not */
        return ASSEMBLER_TAKEN;
    }
    unlink_transfer(assembler, t);
    done->payload = t->payload;
    done->size = (size_t)t->total_size;
    done->capacity = t->capacity;
    done->header = t->header;
    done->header_size = t->header_size;
    free(t);
    return ASSEMBLER_COMPLETED;
}
