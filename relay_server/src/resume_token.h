/* resume_token.h — tokens that let a member back into its room after a dropped connection or a
 * relay restart: HMAC-SHA256(secret, "resume\n" + code + "\n" + user_id), with "\nhost" appended
 * for the room's creator so that the attested host survives a restart; checked without any
 * stored state. */
#ifndef RESUME_TOKEN_H
#define RESUME_TOKEN_H

#include <stdbool.h>
#include <stddef.h>

#define RESUME_TOKEN_HEX_LENGTH 64
#define RELAY_SECRET_BYTES 32

/* What a token proves besides membership: whether its holder created the room. */
enum resume_role { RESUME_MEMBER, RESUME_HOST };

/* Writes the member token as 64 lowercase hex digits and a NUL. */
bool resume_token_make(const unsigned char *secret, size_t secret_length, const char *room_code,
                       const char *user_id, char token[RESUME_TOKEN_HEX_LENGTH + 1]);

/* Constant-time comparison of `token` against the expected one. */
bool resume_token_check(const unsigned char *secret, size_t secret_length, const char *room_code,
                        const char *user_id, const char *token);

/* As resume_token_make, for `role` (RESUME_HOST: the room creator's token). */
bool resume_token_make_as(const unsigned char *secret, size_t secret_length, const char *room_code,
                          const char *user_id, enum resume_role role,
                          char token[RESUME_TOKEN_HEX_LENGTH + 1]);

/* Checks `token` against both roles in constant time; true and *role if either matches. */
bool resume_token_verify(const unsigned char *secret, size_t secret_length, const char *room_code,
                         const char *user_id, const char *token, enum resume_role *role);

/* Loads the relay secret from `path`, creating it (mode 0600, from the CSPRNG) if missing; with
 * an empty path, a random secret that lives as long as the process. Returns false and a message
 * in `error` on failure. */
bool relay_secret_load(const char *path, unsigned char secret[RELAY_SECRET_BYTES], char *error,
                       size_t error_size);

#endif
