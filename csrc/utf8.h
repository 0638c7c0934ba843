/* utf8.h — the one UTF-8 check of the extension: WebSocket text messages (RFC 6455 8.1) and
 * the weight codec's msgpack strings both go through it. */
#ifndef UTF8_H
#define UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* RFC 3629 UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF (what Python's
 * strict decoder accepts). */
bool utf8_is_valid(const unsigned char *text, size_t size);

#endif
