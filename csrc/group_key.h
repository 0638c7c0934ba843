/* group_key.h — how the host hands a private room's group key to one member: the key and the
 * host's signing public key, sealed with XChaCha20-Poly1305 under a key derived from that
 * member's CPace session, bound to room, both ids and the key epoch. */
#ifndef SEGSUITE_GROUP_KEY_H
#define SEGSUITE_GROUP_KEY_H

#include <stddef.h>
#include <stdint.h>

#define GROUP_KEY_BYTES 32
#define GROUP_SIGN_PK_BYTES 32
#define GROUP_WRAP_KEY_BYTES 32
#define GROUP_WRAPPED_BYTES (24 + GROUP_KEY_BYTES + GROUP_SIGN_PK_BYTES + 16)

/* Who the wrapped key is for; both sides build it from what they know, never from the wire. */
struct group_key_context {
    const uint8_t *room;
    size_t room_len;
    const uint8_t *host_id;
    size_t host_id_len;
    const uint8_t *member_id;
    size_t member_id_len;
    uint32_t epoch;
};

/* A fresh random group key. */
void group_key_generate(uint8_t key[GROUP_KEY_BYTES]);

/* Writes GROUP_WRAPPED_BYTES to `out`: nonce, then the sealed key and signing key. Returns 0,
 * or -1 with `error` (ids out of range). */
int group_key_wrap(uint8_t out[GROUP_WRAPPED_BYTES], const uint8_t wrap_key[GROUP_WRAP_KEY_BYTES],
                   const struct group_key_context *ctx, const uint8_t key[GROUP_KEY_BYTES],
                   const uint8_t sign_pk[GROUP_SIGN_PK_BYTES], const char **error);

/* Checks and opens a wrapped key. Returns 0, or -1 with `error` (wrong length, or it was
 * altered, or made for another room, member, host or epoch). */
int group_key_unwrap(uint8_t key[GROUP_KEY_BYTES], uint8_t sign_pk[GROUP_SIGN_PK_BYTES],
                     const uint8_t wrap_key[GROUP_WRAP_KEY_BYTES],
                     const struct group_key_context *ctx, const uint8_t *wrapped,
                     size_t wrapped_len, const char **error);

#endif
