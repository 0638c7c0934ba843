/* room_code.c — room codes: 32 symbols, so each random byte's low 5 bits pick one without bias. */
#include "room_code.h"

#include <ctype.h>
#include <string.h>
#include <sys/random.h>

bool room_code_generate(char code[7])
{
    unsigned char random_bytes[6];
    size_t have = 0;
    while (have < sizeof(random_bytes)) {
        ssize_t n = getrandom(random_bytes + have, sizeof(random_bytes) - have, 0);
        if (n <= 0)
            return false;
        have += (size_t)n;
    }
    for (int i = 0; i < 6; i++)
        code[i] = ROOM_CODE_ALPHABET[random_bytes[i] & 31];
    code[6] = '\0';
    return true;
}

bool room_code_normalize(const char *text, char code[7])
{
    if (strlen(text) != 6)
        return false;
    for (int i = 0; i < 6; i++) {
        char c = (char)toupper((unsigned char)text[i]);
        if (!strchr(ROOM_CODE_ALPHABET, c) || c == '\0')
            return false;
        code[i] = c;
    }
    code[6] = '\0';
    return true;
}
