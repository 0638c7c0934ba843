/* room_code.h — 6-character room codes from the operating system's CSPRNG. */
#ifndef ROOM_CODE_H
#define ROOM_CODE_H

#include <stdbool.h>

#include "protocol_constants.h"

/* Fills code[0..ROOM_CODE_LENGTH-1] and a NUL; returns false if the CSPRNG failed. */
bool room_code_generate(char code[ROOM_CODE_LENGTH + 1]);

/* Upper-cases `text` into code[] if it is ROOM_CODE_LENGTH characters of the alphabet (any case).
 */
bool room_code_normalize(const char *text, char code[ROOM_CODE_LENGTH + 1]);

#endif
