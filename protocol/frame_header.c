/* frame_header.c — reads and writes the self-describing binary frame header.
 * Every length is checked against the bytes actually present before it is used, because the
 * relay parses headers straight off the network. */
#include "frame_header.h"

#include <string.h>

static uint16_t read_u16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t read_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t read_u64(const unsigned char *p)
{
    return (uint64_t)read_u32(p) | (uint64_t)read_u32(p + 4) << 32;
}

static void write_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void write_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void write_u64(unsigned char *p, uint64_t v)
{
    write_u32(p, (uint32_t)v);
    write_u32(p + 4, (uint32_t)(v >> 32));
}

static enum frame_parse_result malformed(const char **error, const char *why)
{
    if (error)
        *error = why;
    return FRAME_MALFORMED;
}

enum frame_parse_result frame_header_parse(const unsigned char *data, size_t length,
                                           struct frame_header *header, size_t *needed,
                                           const char **error)
{
    size_t magic_bytes = length < FRAME_MAGIC_SIZE ? length : FRAME_MAGIC_SIZE;
    if (memcmp(data, FRAME_MAGIC, magic_bytes) != 0)
        return FRAME_NOT_OURS;
    if (length < FRAME_HEADER_FIXED_SIZE) {
        if (needed)
            *needed = FRAME_HEADER_FIXED_SIZE;
        return FRAME_NEED_MORE;
    }
    if (data[4] != FRAME_HEADER_VERSION)
        return malformed(error, "unsupported header version");
    uint16_t header_size = read_u16(data + 6);
    if (header_size < FRAME_HEADER_FIXED_SIZE || header_size > FRAME_HEADER_MAX_SIZE)
        return malformed(error, "header size out of range");
    if (length < header_size) {
        if (needed)
            *needed = header_size;
        return FRAME_NEED_MORE;
    }
    header->kind = data[5];
    if (header->kind < FRAME_KIND_WEIGHTS || header->kind > FRAME_KIND_OTHER)
        return malformed(error, "unknown frame kind");
    header->header_size = header_size;
    header->transfer_id = read_u64(data + 8);
    header->chunk_index = read_u32(data + 16);
    header->chunk_count = read_u32(data + 20);
    header->total_size = read_u64(data + 24);
    if (header->chunk_count == 0 || header->chunk_index >= header->chunk_count)
        return malformed(error, "chunk index outside chunk count");
    if (read_u16(data + 34) != 0)
        return malformed(error, "reserved bytes are not zero");

    uint8_t sender_length = data[32];
    if (sender_length == 0 || sender_length > FRAME_ID_MAX_LENGTH)
        return malformed(error, "sender length out of range");
    size_t offset = FRAME_HEADER_FIXED_SIZE + sender_length;
    if (offset > header_size)
        return malformed(error, "sender runs past the header");
    header->sender.bytes = (const char *)data + FRAME_HEADER_FIXED_SIZE;
    header->sender.length = sender_length;
    header->recipient_count = data[33];
    header->recipients = data + offset;
    for (unsigned i = 0; i < header->recipient_count; i++) {
        if (offset >= header_size)
            return malformed(error, "recipient list runs past the header");
        uint8_t id_length = data[offset];
        if (id_length == 0 || id_length > FRAME_ID_MAX_LENGTH)
            return malformed(error, "recipient length out of range");
        offset += 1 + (size_t)id_length;
        if (offset > header_size)
            return malformed(error, "recipient runs past the header");
    }
    if (offset != header_size)
        return malformed(error, "header size does not match its contents");
    return FRAME_OK;
}

int frame_header_next_recipient(const struct frame_header *header, size_t *cursor,
                                struct frame_id *recipient)
{
    /* The cursor is a byte offset into the recipient list, which parsing already validated. */
    size_t end = header->header_size - FRAME_HEADER_FIXED_SIZE - header->sender.length;
    if (*cursor >= end)
        return 0;
    recipient->length = header->recipients[*cursor];
    recipient->bytes = (const char *)header->recipients + *cursor + 1;
    *cursor += 1 + (size_t)recipient->length;
    return 1;
}

size_t frame_header_size(size_t sender_length, const struct frame_id *recipients,
                         size_t recipient_count)
{
    size_t size = FRAME_HEADER_FIXED_SIZE + sender_length;
    for (size_t i = 0; i < recipient_count; i++)
        size += 1 + (size_t)recipients[i].length;
    return size;
}

size_t frame_header_write(unsigned char *out, size_t capacity, uint8_t kind, uint64_t transfer_id,
                          uint32_t chunk_index, uint32_t chunk_count, uint64_t total_size,
                          struct frame_id sender, const struct frame_id *recipients,
                          size_t recipient_count)
{
    if (sender.length == 0 || sender.length > FRAME_ID_MAX_LENGTH ||
        recipient_count > FRAME_MAX_RECIPIENTS || chunk_count == 0 || chunk_index >= chunk_count)
        return 0;
    for (size_t i = 0; i < recipient_count; i++)
        if (recipients[i].length == 0 || recipients[i].length > FRAME_ID_MAX_LENGTH)
            return 0;
    size_t size = frame_header_size(sender.length, recipients, recipient_count);
    if (size > FRAME_HEADER_MAX_SIZE || size > capacity)
        return 0;

    memcpy(out, FRAME_MAGIC, FRAME_MAGIC_SIZE);
    out[4] = FRAME_HEADER_VERSION;
    out[5] = kind;
    write_u16(out + 6, (uint16_t)size);
    write_u64(out + 8, transfer_id);
    write_u32(out + 16, chunk_index);
    write_u32(out + 20, chunk_count);
    write_u64(out + 24, total_size);
    out[32] = sender.length;
    out[33] = (uint8_t)recipient_count;
    write_u16(out + 34, 0);
    size_t offset = FRAME_HEADER_FIXED_SIZE;
    memcpy(out + offset, sender.bytes, sender.length);
    offset += sender.length;
    for (size_t i = 0; i < recipient_count; i++) {
        out[offset++] = recipients[i].length;
        memcpy(out + offset, recipients[i].bytes, recipients[i].length);
        offset += recipients[i].length;
    }
    return size;
}
