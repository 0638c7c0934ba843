/* room_code.c — room codes: 32 symbols, so each random byte's low 5 bits pick one without bias. */
#include "room_code.h"

#include <ctype.h>
#include <string.h>
#include <sys/random.h>

bool room_code_generate(char code[ROOM_CODE_LENGTH + 1])
{
    unsigned char random_bytes[ROOM_CODE_LENGTH];
    size_t have = 0;
    while (have < sizeof(random_bytes)) {
        ssize_t n = getrandom(random_bytes + have, sizeof(random_bytes) - have, 0);
        if (n <= 0)
            return false;
        have += (size_t)n;
    }
    for (int i = 0; i < ROOM_CODE_LENGTH; i++)
        code[i] = ROOM_CODE_ALPHABET[random_bytes[i] & 31];
    code[ROOM_CODE_LENGTH] = '\0';
    return true;
}

bool room_code_normalize(const char *text, char code[ROOM_CODE_LENGTH + 1])
{
    if (strlen(text) != ROOM_CODE_LENGTH)
        return false;
    for (int i = 0; i < ROOM_CODE_LENGTH; i++) {
        char c = (char)toupper((unsigned char)text[i]);
        if (!strchr(ROOM_CODE_ALPHABET, c) || c == '\0')
            return false;
        code[i] = c;
    }
    code[ROOM_CODE_LENGTH] = '\0';
    return true;
}
