/* transfer_assembly.c — reassembles chunked transfers (docs/protocol.md, "Self-describing
 * binary frames") straight into their final buffer: the chunk header is collected (it may
 * straddle reads), checked against the transfer it continues, and the payload copied once (in
 * a private room: decrypted once, segment by segment while the rest arrives). */
#include <openssl/crypto.h>
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
    /* Private rooms: opened while it lands. NULL once it turned out not sealed under the key
     * (the bytes then land as sent) or failed (`open_error`; the rest is not kept). */
    struct sealed_opener *opener;
    uint64_t sealed_size; /* of the sealed part: a global model's signature follows it */
    uint32_t epoch;
    const char *open_error;
};

void transfer_assembler_init(struct transfer_assembler *assembler, uint64_t max_transfer_size)
{
    memset(assembler, 0, sizeof *assembler);
    assembler->max_transfer_size = max_transfer_size;
}

static void drop_opener(struct transfer_in_progress *transfer)
{
    if (transfer->opener) {
        sealed_opener_free(transfer->opener);
        free(transfer->opener);
        transfer->opener = NULL;
    }
}

static void free_transfer(struct transfer_in_progress *transfer)
{
    drop_opener(transfer);
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
    OPENSSL_cleanse(&assembler->key, sizeof assembler->key);
}

void transfer_assembler_set_key(struct transfer_assembler *assembler,
                                const struct transfer_key *key)
{
    OPENSSL_cleanse(&assembler->key, sizeof assembler->key);
    if (key && key->set && key->room_len > 0 && key->room_len <= sizeof key->room)
        assembler->key = *key;
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

/* With a key set, chunk 0 gives the transfer its opener (none for a global model too short to
 * carry the host's signature: it lands as sent and the caller refuses it). */
static void start_opening(struct transfer_assembler *assembler, struct transfer_in_progress *t,
                          const struct frame_header *header)
{
    const struct transfer_key *key = &assembler->key;
    uint64_t signature = header->kind == FRAME_KIND_GLOBAL_MODEL ? 64 : 0;
    if (!key->set || header->total_size < signature)
        return;
    struct sealed_context ctx = {
        .room = key->room,
        .room_len = key->room_len,
        .sender = (const uint8_t *)header->sender.bytes,
        .sender_len = header->sender.length,
        .transfer_id = header->transfer_id,
        .kind = header->kind,
        .epoch = key->epoch,
    };
    t->opener = malloc(sizeof *t->opener);
    const char *error;
    if (t->opener && sealed_opener_init(t->opener, key->key, &ctx, header->total_size - signature,
                                        signature != 0, &error) != 0) {
        free(t->opener); /* init freed what it had */
        t->opener = NULL;
    }
    t->sealed_size = header->total_size - signature;
    t->epoch = key->epoch;
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
    start_opening(assembler, t, header);
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

/* Sealed bytes into place through the opener: decrypted from `data` into the buffer. A transfer
 * that is not sealed under the key (found before anything was decrypted) lands as sent; one that
 * fails after is wiped and refused, its remaining bytes not kept. */
static void open_payload(struct transfer_in_progress *t, const unsigned char *data, size_t size)
{
    uint64_t sealed = t->position < t->sealed_size ? t->sealed_size - t->position : 0;
    if (sealed > size)
        sealed = size;
    const char *error = NULL;
    if (sealed && sealed_opener_feed_from(t->opener, t->payload, data, sealed, &error) != 0) {
        int decrypting = t->opener->keyed;
        drop_opener(t);
        if (decrypting) {
            t->open_error = error;
            return;
        }
        sealed = 0; /* not ours to open: the caller sees the bytes as they were sent */
    }
    memcpy(t->payload + t->position + sealed, data + sealed, size - sealed);
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
    if (t->opener)
        open_payload(t, data, size);
    else if (!t->open_error)
        memcpy(t->payload + t->position, data, size);
    t->position += size;
}

/* The transfer is whole: how it was opened goes to the caller with it. */
static void finish_opening(struct transfer_in_progress *t, struct completed_transfer *done)
{
    done->opened = TRANSFER_AS_RECEIVED;
    done->open_error = t->open_error;
    if (t->open_error) {
        done->opened = TRANSFER_REFUSED;
        return;
    }
    if (!t->opener)
        return;
    const char *error = NULL;
    done->has_digest = t->opener->md != NULL;
    if (sealed_opener_finish(t->opener, done->has_digest ? done->digest : NULL, &error) != 0) {
        OPENSSL_cleanse(t->payload, t->total_size); /* cannot happen once every byte is in */
        done->opened = TRANSFER_REFUSED;
        done->open_error = error;
        return;
    }
    done->opened = TRANSFER_OPENED;
    done->plaintext_offset = t->opener->data_offset;
    done->plaintext_size = t->opener->header.plaintext_len;
    done->epoch = t->epoch;
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
    memset(done, 0, sizeof *done);
    finish_opening(t, done);
    drop_opener(t);
    done->payload = t->payload;
    done->size = (size_t)t->total_size;
    done->capacity = t->capacity;
    done->header = t->header;
    done->header_size = t->header_size;
    free(t);
    return ASSEMBLER_COMPLETED;
}
