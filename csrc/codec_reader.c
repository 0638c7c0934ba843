/* msgpack pull reader over untrusted bytes (see codec_reader.h for why it is not msgpack-c's
 * unpacker). Every read checks the bytes left before touching them; errors name the offset. */
#include "codec_reader.h"

#include <stdio.h>
#include <string.h>

const char *mp_type_name(mp_type type)
{
    static const char *const names[] = {
        "nil", "bool", "unsigned integer", "negative integer", "float", "str", "bin", "array",
        "map", "ext"};
    return names[type];
}

static int truncated(const mp_reader *reader, size_t item_offset, size_t needed, codec_error *err)
{
    snprintf(err->message, sizeof err->message,
             "truncated: the item at offset %zu needs %zu more bytes but only %zu remain",
             item_offset, needed, reader->size - reader->position);
    return -1;
}

/* Big-endian integer of `width` bytes at the read position; the caller checked bounds. */
static uint64_t take_big_endian(mp_reader *reader, size_t width)
{
    uint64_t value = 0;
    for (size_t i = 0; i < width; i++)
        value = (value << 8) | reader->data[reader->position + i];
    reader->position += width;
    return value;
}

static size_t remaining(const mp_reader *reader)
{
    return reader->size - reader->position;
}

static int take_body(mp_reader *reader, mp_item *item, mp_type type, uint64_t length,
                     codec_error *err)
{
    if (length > remaining(reader))
        return truncated(reader, item->offset, (size_t)length, err);
    item->type = type;
    item->as.body.bytes = reader->data + reader->position;
    item->as.body.length = (uint32_t)length;
    reader->position += (size_t)length;
    return 0;
}

/* Each element takes at least one byte, so a count larger than the bytes left is a lie. */
static int take_container(mp_reader *reader, mp_item *item, mp_type type, uint64_t count,
                          codec_error *err)
{
    uint64_t minimum_bytes = type == MP_MAP ? 2 * count : count;
    if (minimum_bytes > remaining(reader)) {
        snprintf(err->message, sizeof err->message,
                 "%s at offset %zu declares %llu %s but only %zu bytes remain", mp_type_name(type),
                 item->offset, (unsigned long long)count, type == MP_MAP ? "pairs" : "elements",
                 remaining(reader));
        return -1;
    }
    item->type = type;
    item->as.count = (uint32_t)count;
    return 0;
}

int mp_read(mp_reader *reader, mp_item *item, codec_error *err)
{
    item->offset = reader->position;
    if (remaining(reader) < 1)
        return truncated(reader, item->offset, 1, err);
    uint8_t tag = reader->data[reader->position++];

    if (tag <= 0x7f) {
        item->type = MP_UINT;
        item->as.uint_value = tag;
        return 0;
    }
    if (tag >= 0xe0) {
        item->type = MP_INT;
        item->as.int_value = (int8_t)tag;
        return 0;
    }
    if ((tag & 0xe0) == 0xa0)
        return take_body(reader, item, MP_STR, tag & 0x1f, err);
    if ((tag & 0xf0) == 0x90)
        return take_container(reader, item, MP_ARRAY, tag & 0x0f, err);
    if ((tag & 0xf0) == 0x80)
        return take_container(reader, item, MP_MAP, tag & 0x0f, err);

    /* The remaining tags carry a fixed-width field after the tag byte. */
    static const uint8_t field_width[32] = {
        /* c0 nil, c1 unused, c2 false, c3 true */ 0,
        0,
        0,
        0,
        /* c4-c6 bin 8/16/32 */ 1,
        2,
        4,
        /* c7-c9 ext 8/16/32 (length; the type byte follows) */ 1,
        2,
        4,
        /* ca float32, cb float64 */ 4,
        8,
        /* cc-cf uint 8/16/32/64 */ 1,
        2,
        4,
        8,
        /* d0-d3 int 8/16/32/64 */ 1,
        2,
        4,
        8,
        /* d4-d8 fixext 1/2/4/8/16 (type byte) */ 1,
        1,
        1,
        1,
        1,
        /* d9-db str 8/16/32 */ 1,
        2,
        4,
        /* dc-dd array 16/32 */ 2,
        4,
        /* de-df map 16/32 */ 2,
        4};
    size_t width = field_width[tag - 0xc0];
    if (remaining(reader) < width)
        return truncated(reader, item->offset, width, err);

    switch (tag) {
    case 0xc0:
        item->type = MP_NIL;
        return 0;
    case 0xc1:
        snprintf(err->message, sizeof err->message, "byte 0xc1 at offset %zu is not valid msgpack",
                 item->offset);
        return -1;
    case 0xc2:
    case 0xc3:
        item->type = MP_BOOL;
        item->as.boolean = tag == 0xc3;
        return 0;
    case 0xc4:
    case 0xc5:
    case 0xc6:
        return take_body(reader, item, MP_BIN, take_big_endian(reader, width), err);
    case 0xc7:
    case 0xc8:
    case 0xc9: {
        uint64_t length = take_big_endian(reader, width);
        if (remaining(reader) < 1)
            return truncated(reader, item->offset, 1, err);
        reader->position++; /* ext type byte */
        return take_body(reader, item, MP_EXT, length, err);
    }
    case 0xca: {
        uint32_t bits = (uint32_t)take_big_endian(reader, 4);
        float value;
        memcpy(&value, &bits, sizeof value);
        item->type = MP_FLOAT;
        item->as.float_value = value;
        return 0;
    }
    case 0xcb: {
        uint64_t bits = take_big_endian(reader, 8);
        memcpy(&item->as.float_value, &bits, sizeof bits);
        item->type = MP_FLOAT;
        return 0;
    }
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf:
        item->type = MP_UINT;
        item->as.uint_value = take_big_endian(reader, width);
        return 0;
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        uint64_t raw = take_big_endian(reader, width);
        unsigned bits = (unsigned)(8 * width);
        /* sign-extend without relying on implementation-defined conversions */
        int64_t value = bits == 64            ? (int64_t)raw
                        : (raw >> (bits - 1)) ? (int64_t)(raw | ~((UINT64_C(1) << bits) - 1))
                                              : (int64_t)raw;
        if (value >= 0) {
            item->type = MP_UINT;
            item->as.uint_value = (uint64_t)value;
        } else {
            item->type = MP_INT;
            item->as.int_value = value;
        }
        return 0;
    }
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        reader->position++; /* ext type byte */
        return take_body(reader, item, MP_EXT, (uint64_t)1 << (tag - 0xd4), err);
    case 0xd9:
    case 0xda:
    case 0xdb:
        return take_body(reader, item, MP_STR, take_big_endian(reader, width), err);
    case 0xdc:
    case 0xdd:
        return take_container(reader, item, MP_ARRAY, take_big_endian(reader, width), err);
    default: /* 0xde, 0xdf */
        return take_container(reader, item, MP_MAP, take_big_endian(reader, width), err);
    }
}

int mp_skip(mp_reader *reader, int max_depth, codec_error *err)
{
    mp_item item;
    if (mp_read(reader, &item, err) != 0)
        return -1;
    if (item.type != MP_ARRAY && item.type != MP_MAP)
        return 0;
    if (max_depth <= 0) {
        snprintf(err->message, sizeof err->message, "%s at offset %zu is nested too deeply",
                 mp_type_name(item.type), item.offset);
        return -1;
    }
    uint64_t children = item.type == MP_MAP ? 2 * (uint64_t)item.as.count : item.as.count;
    for (uint64_t i = 0; i < children; i++)
        if (mp_skip(reader, max_depth - 1, err) != 0)
            return -1;
    return 0;
}

bool mp_str_equals(const mp_item *item, const char *text)
{
    size_t length = strlen(text);
    return item->type == MP_STR && item->as.body.length == length &&
           memcmp(item->as.body.bytes, text, length) == 0;
}
