/* A bounds-checked pull reader for msgpack: one item header at a time, straight from the
 * untrusted buffer, allocating nothing. msgpack-c's unpacker allocates for the element
 * count a header declares before it has seen the elements, which a hostile 5-byte input
 * turns into gigabytes; this reader instead checks every count against the bytes left. */
#ifndef SEGSUITE_CODEC_READER_H
#define SEGSUITE_CODEC_READER_H

#include "codec_core.h"
#include "utf8.h"

typedef enum {
    MP_NIL,
    MP_BOOL,
    MP_UINT, /* non-negative integers, whatever their encoding */
    MP_INT,  /* negative integers */
    MP_FLOAT,
    MP_STR,
    MP_BIN,
    MP_ARRAY,
    MP_MAP,
    MP_EXT
} mp_type;

typedef struct {
    mp_type type;
    size_t offset; /* of the item's first byte, for error messages */
    union {
        bool boolean;
        uint64_t uint_value;
        int64_t int_value;
        double float_value;
        struct {
            const uint8_t *bytes; /* str, bin and ext bodies, inside the buffer */
            uint32_t length;
        } body;
        uint32_t count; /* array elements or map pairs */
    } as;
} mp_item;

typedef struct {
    const uint8_t *data;
    size_t size;
    size_t position;
} mp_reader;

const char *mp_type_name(mp_type type);
/* Reads one item. For str/bin/ext the body is skipped too (and checked to be in bounds);
 * for arrays and maps only the header is read and the count is checked to be possible. */
int mp_read(mp_reader *reader, mp_item *item, codec_error *err);
/* Skips one whole value, nested at most max_depth levels deep. */
int mp_skip(mp_reader *reader, int max_depth, codec_error *err);
/* A str body's UTF-8 check: the extension's one validator (utf8.c). */
static inline bool mp_utf8_valid(const uint8_t *bytes, size_t length)
{
    return utf8_is_valid(bytes, length);
}
bool mp_str_equals(const mp_item *item, const char *text);

#endif
