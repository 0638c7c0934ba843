/* log_tag.h — how a room appears in the relay's log: a short tag keyed with the relay secret
 * instead of its code, since the code is the room's only secret. The same room always gets the
 * same tag (so an operator can follow it), and without the secret the tag cannot be turned back
 * into a code by trying all 32^6 of them. */
#ifndef LOG_TAG_H
#define LOG_TAG_H

#include <stdbool.h>
#include <stddef.h>

#define LOG_TAG_HEX_LENGTH 8

/* Writes hex(HMAC-SHA256(secret, "log\n" + room_code))[:8] and a NUL; "????????" on failure. */
void log_tag_make(const unsigned char *secret, size_t secret_length, const char *room_code,
                  char tag[LOG_TAG_HEX_LENGTH + 1]);

#endif
