/* log_tag.c — a room code's log tag: a truncated HMAC keyed with the relay secret (OpenSSL). */
#include "log_tag.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>

void log_tag_make(const unsigned char *secret, size_t secret_length, const char *room_code,
                  char tag[LOG_TAG_HEX_LENGTH + 1])
{
    char message[16];
    int n = snprintf(message, sizeof(message), "log\n%s", room_code);
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_length = 0;
    if (n < 0 || (size_t)n >= sizeof(message) ||
        !HMAC(EVP_sha256(), secret, (int)secret_length, (const unsigned char *)message, (size_t)n,
              digest, &digest_length) ||
        digest_length < LOG_TAG_HEX_LENGTH / 2) {
        memcpy(tag, "????????", LOG_TAG_HEX_LENGTH + 1);
        return;
    }
    for (unsigned i = 0; i < LOG_TAG_HEX_LENGTH / 2; i++)
        snprintf(tag + 2 * i, 3, "%02x", digest[i]);
}
