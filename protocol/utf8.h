/* utf8.h — the UTF-8 rules of the protocol's text, once for the relay and the extension:
 * WebSocket text and Close reasons, the weight codec's msgpack strings, the relay's escaping of
 * log values. RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF (what Python's
 * strict decoder accepts). */
#ifndef UTF8_H
#define UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Whether all `size` bytes are UTF-8. */
bool utf8_is_valid(const unsigned char *text, size_t size);

/* The length (1 to 4) of the well-formed sequence at the start of `text`, which has `size`
 * bytes (at least 1), with its code point in *code_point; 0 when none starts there. */
size_t utf8_decode_one(const unsigned char *text, size_t size, uint32_t *code_point);

#endif
