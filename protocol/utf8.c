/* utf8.c — decodes and validates UTF-8 by the byte ranges of RFC 3629's table (section 4): the
 * allowed range of a sequence's second byte depends on its first, which rules out overlong
 * forms, surrogates and code points past U+10FFFF without checking the value afterwards. */
#include "utf8.h"

size_t utf8_decode_one(const unsigned char *text, size_t size, uint32_t *code_point)
{
    unsigned char lead = text[0];
    if (lead < 0x80) {
        *code_point = lead;
        return 1;
    }
    size_t length;
    unsigned char low = 0x80, high = 0xBF; /* allowed range of the second byte */
    uint32_t value;
    if (lead >= 0xC2 && lead <= 0xDF) {
        length = 2, value = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        length = 3, value = lead & 0x0F;
        if (lead == 0xE0)
            low = 0xA0; /* below: overlong */
        else if (lead == 0xED)
            high = 0x9F; /* above: surrogates */
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        length = 4, value = lead & 0x07;
        if (lead == 0xF0)
            low = 0x90; /* below: overlong */
        else if (lead == 0xF4)
            high = 0x8F; /* above: past U+10FFFF */
    } else {
        return 0;
    }
    if (size < length || text[1] < low || text[1] > high)
        return 0;
    for (size_t i = 1; i < length; i++) {
        if ((text[i] & 0xC0) != 0x80)
            return 0;
        value = value << 6 | (text[i] & 0x3F);
    }
    *code_point = value;
    return length;
}

bool utf8_is_valid(const unsigned char *text, size_t size)
{
    size_t i = 0;
    while (i < size) {
        if (text[i] < 0x80) { /* the common case, without a call */
            i++;
            continue;
        }
        uint32_t code_point;
        size_t length = utf8_decode_one(text + i, size - i, &code_point);
        if (length == 0)
            return false;
        i += length;
    }
    return true;
}
