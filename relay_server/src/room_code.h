/* room_code.h — 6-character room codes from the operating system's CSPRNG. */
#ifndef ROOM_CODE_H
#define ROOM_CODE_H

#include <stdbool.h>

#define ROOM_CODE_ALPHABET "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

/* Fills code[0..5] and a NUL; returns false if the CSPRNG failed. */
bool room_code_generate(char code[7]);

/* Upper-cases `text` into code[] if it is 6 characters of the alphabet (any case). */
bool room_code_normalize(const char *text, char code[7]);

#endif
