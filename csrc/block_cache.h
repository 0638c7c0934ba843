/* block_cache.h — the extension's one source of large memory blocks: encoded and decoded
 * weights (codec.c), received messages and reassembled transfers (transport). A few freed
 * blocks are kept for the next one of about their size, because fresh memory costs a page
 * fault and zeroing per page — more than the conversion or copy that fills it. Thread-safe. */
#ifndef BLOCK_CACHE_H
#define BLOCK_CACHE_H

#include <stddef.h>

/* Blocks at least this large are cached; at most BLOCK_CACHE_SLOTS of them, together at most
 * BLOCK_CACHE_MAX_BYTES. */
#define BLOCK_CACHE_SMALLEST ((size_t)1 << 20)
#define BLOCK_CACHE_SLOTS 3
#define BLOCK_CACHE_MAX_BYTES ((size_t)512 << 20)

/* At least `size` bytes aligned to `alignment` (a power of two); *capacity says how many. A
 * cached block is taken when it is at most a quarter larger; a fresh one of 4 MiB or more is
 * aligned to and advised for 2 MiB pages. NULL when out of memory. */
void *block_obtain(size_t size, size_t alignment, size_t *capacity);

/* For a message whose final size is unknown: any cached block of at least `size` bytes and at
 * most `largest` (no alignment needed), or NULL when none fits (then grow with realloc). */
void *block_obtain_cached(size_t size, size_t largest, size_t *capacity);

/* Gives a block back (NULL is fine): cached, or freed. */
void block_release(void *block, size_t capacity);

#endif
