/* A fast non-cryptographic 128-bit hash that names the reference model a delta message was
 * made against (docs/weights-format.md, "Reference id"). It runs at memory speed (AVX2 with a
 * bit-identical scalar fallback) because it reads every byte of a 124 MB model per message. */
#ifndef SEGSUITE_REFHASH_H
#define SEGSUITE_REFHASH_H

#include <stddef.h>
#include <stdint.h>

#define REFHASH_SIZE 16

/* Hashes `length` bytes into 16 bytes (two little-endian 64-bit words). Not a security hash:
 * it detects accidental mismatches (a stale or different model), not forged ones. */
void refhash128(const void *data, size_t length, uint8_t out[REFHASH_SIZE]);

#endif
