/* resume_token.c — HMAC (OpenSSL) resume tokens and the relay secret they are keyed with. */
#include "resume_token.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

bool resume_token_make_as(const unsigned char *secret, size_t secret_length, const char *room_code,
                          const char *user_id, enum resume_role role,
                          char token[RESUME_TOKEN_HEX_LENGTH + 1])
{
    char message[8 + 8 + 256 + 8];
    int n = snprintf(message, sizeof(message), "resume\n%s\n%s%s", room_code, user_id,
                     role == RESUME_HOST ? "\nhost" : "");
    if (n < 0 || (size_t)n >= sizeof(message))
        return false;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_length = 0;
    if (!HMAC(EVP_sha256(), secret, (int)secret_length, (const unsigned char *)message, (size_t)n,
              digest, &digest_length))
        return false;
    for (unsigned i = 0; i < digest_length && i < RESUME_TOKEN_HEX_LENGTH / 2; i++)
        snprintf(token + 2 * i, 3, "%02x", digest[i]);
    token[RESUME_TOKEN_HEX_LENGTH] = '\0';
    return true;
}

bool resume_token_make(const unsigned char *secret, size_t secret_length, const char *room_code,
                       const char *user_id, char token[RESUME_TOKEN_HEX_LENGTH + 1])
{
    return resume_token_make_as(secret, secret_length, room_code, user_id, RESUME_MEMBER, token);
}

bool resume_token_verify(const unsigned char *secret, size_t secret_length, const char *room_code,
                         const char *user_id, const char *token, enum resume_role *role)
{
    char member[RESUME_TOKEN_HEX_LENGTH + 1], host[RESUME_TOKEN_HEX_LENGTH + 1];
    if (strlen(token) != RESUME_TOKEN_HEX_LENGTH ||
        !resume_token_make_as(secret, secret_length, room_code, user_id, RESUME_MEMBER, member) ||
        !resume_token_make_as(secret, secret_length, room_code, user_id, RESUME_HOST, host))
        return false;
    /* Both comparisons always run, so timing does not tell which role a guess came close to. */
    bool is_member = CRYPTO_memcmp(member, token, RESUME_TOKEN_HEX_LENGTH) == 0;
    bool is_host = CRYPTO_memcmp(host, token, RESUME_TOKEN_HEX_LENGTH) == 0;
    if (is_host)
        *role = RESUME_HOST;
    else if (is_member)
        *role = RESUME_MEMBER;
    return is_member || is_host;
}

bool resume_token_check(const unsigned char *secret, size_t secret_length, const char *room_code,
                        const char *user_id, const char *token)
{
    char expected[RESUME_TOKEN_HEX_LENGTH + 1];
    if (strlen(token) != RESUME_TOKEN_HEX_LENGTH ||
        !resume_token_make(secret, secret_length, room_code, user_id, expected))
        return false;
    return CRYPTO_memcmp(expected, token, RESUME_TOKEN_HEX_LENGTH) == 0;
}

static bool fill_random(unsigned char *bytes, size_t length)
{
    size_t have = 0;
    while (have < length) {
        ssize_t n = getrandom(bytes + have, length - have, 0);
        if (n <= 0)
            return false;
        have += (size_t)n;
    }
    return true;
}

bool relay_secret_load(const char *path, unsigned char secret[RELAY_SECRET_BYTES], char *error,
                       size_t error_size)
{
    if (!path || !*path) {
        if (fill_random(secret, RELAY_SECRET_BYTES))
            return true;
        snprintf(error, error_size, "cannot read the system's random source");
        return false;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, secret, RELAY_SECRET_BYTES);
        close(fd);
        if (n == RELAY_SECRET_BYTES)
            return true;
        snprintf(error, error_size, "secret file %s: expected %d bytes, found %zd", path,
                 RELAY_SECRET_BYTES, n);
        return false;
    }
    if (errno != ENOENT) {
        snprintf(error, error_size, "secret file %s: %s", path, strerror(errno));
        return false;
    }
    if (!fill_random(secret, RELAY_SECRET_BYTES)) {
        snprintf(error, error_size, "cannot read the system's random source");
        return false;
    }
    /* Written to a private temporary file and linked into place, so that a relay starting at
     * the same moment either finds no file or a whole one, never a half-written key; if it won
     * the race, its key is the one both use. */
    char temporary[4096 + 16];
    if (snprintf(temporary, sizeof(temporary), "%s.XXXXXX", path) >= (int)sizeof(temporary)) {
        snprintf(error, error_size, "secret file %s: path too long", path);
        return false;
    }
    fd = mkstemp(temporary); /* mode 0600 */
    bool written =
        fd >= 0 && write(fd, secret, RELAY_SECRET_BYTES) == RELAY_SECRET_BYTES && fsync(fd) == 0;
    int saved_errno = errno;
    if (fd >= 0)
        close(fd);
    if (!written) {
        snprintf(error, error_size, "secret file %s: cannot create: %s", path,
                 strerror(saved_errno));
        if (fd >= 0)
            unlink(temporary);
        return false;
    }
    int linked = link(temporary, path);
    saved_errno = errno;
    unlink(temporary);
    if (linked == 0)
        return true;
    if (saved_errno == EEXIST)
        return relay_secret_load(path, secret, error, error_size);
    snprintf(error, error_size, "secret file %s: cannot create: %s", path, strerror(saved_errno));
    return false;
}
