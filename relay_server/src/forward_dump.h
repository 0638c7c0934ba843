/* forward_dump.h — a test build's record of every payload the relay sends (make dump, which
 * defines RELAY_DUMP_FORWARDED): the private-room tests check that it never holds a room's
 * secret part, a key or plaintext weights. The default build has none of it. */
#ifndef FORWARD_DUMP_H
#define FORWARD_DUMP_H

#include <stddef.h>

#ifdef RELAY_DUMP_FORWARDED
/* Appends `length` bytes to the file named by RELAY_DUMP_FORWARDED_FILE (nothing if unset). */
void forward_dump(const unsigned char *bytes, size_t length);
#endif

#endif
