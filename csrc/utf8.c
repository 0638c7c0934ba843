/* utf8.c — validates UTF-8 by the byte ranges of RFC 3629's table (section 4), which rules out
 * overlong forms, surrogates and code points past U+10FFFF without decoding them. */
#include "utf8.h"

bool utf8_is_valid(const unsigned char *text, size_t size)
{
    size_t i = 0;
    while (i < size) {
        unsigned char c = text[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t extra;
        unsigned char low = 0x80, high = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF)
            extra = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            extra = 2;
            if (c == 0xE0)
                low = 0xA0;
            else if (c == 0xED)
                high = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            extra = 3;
            if (c == 0xF0)
                low = 0x90;
            else if (c == 0xF4)
                high = 0x8F;
        } else
            return false;
        if (size - i <= extra || text[i + 1] < low || text[i + 1] > high)
            return false;
        for (size_t k = 2; k <= extra; k++)
            if ((text[i + k] & 0xC0) != 0x80)
                return false;
        i += extra + 1;
    }
    return true;
}
