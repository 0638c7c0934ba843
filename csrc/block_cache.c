/* block_cache.c — large blocks from posix_memalign, huge-page advised, and a small cache of
 * freed ones: a model is encoded, received and decoded again every round at the same sizes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* MADV_HUGEPAGE */
#endif
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "block_cache.h"

#define HUGE_PAGE_SIZE ((size_t)2 << 20)

static struct {
    pthread_mutex_t lock;
    void *block[BLOCK_CACHE_SLOTS];
    size_t capacity[BLOCK_CACHE_SLOTS];
    uint64_t released_at[BLOCK_CACHE_SLOTS]; /* `releases` when the slot was filled */
    uint64_t releases;
    size_t cached_bytes;
} cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Takes a cached block that `fits`; NULL if none does. */
static void *take(size_t size, size_t largest, size_t alignment, size_t *capacity)
{
    if (size < BLOCK_CACHE_SMALLEST)
        return NULL;
    void *found = NULL;
    pthread_mutex_lock(&cache.lock);
    for (int i = 0; i < BLOCK_CACHE_SLOTS && !found; i++) {
        size_t have = cache.capacity[i];
        if (cache.block[i] && have >= size && have <= largest &&
            (uintptr_t)cache.block[i] % alignment == 0) {
            found = cache.block[i];
            *capacity = have;
            cache.block[i] = NULL;
            cache.cached_bytes -= have;
        }
    }
    pthread_mutex_unlock(&cache.lock);
    return found;
}

void *block_obtain(size_t size, size_t alignment, size_t *capacity)
{
    void *block = take(size, size + size / 4, alignment, capacity);
    if (block)
        return block;
    int huge = size >= 2 * HUGE_PAGE_SIZE;
    if (huge)
        alignment = HUGE_PAGE_SIZE;
    else if (alignment < sizeof(void *))
        alignment = sizeof(void *);
    if (posix_memalign(&block, alignment, size ? size : 1) != 0)
        return NULL;
#ifdef MADV_HUGEPAGE
    if (huge)
        (void)madvise(block, size, MADV_HUGEPAGE); /* only advice; failure is harmless */
#endif
    *capacity = size ? size : 1;
    return block;
}

void *block_obtain_cached(size_t size, size_t largest, size_t *capacity)
{
    return take(size, largest, 1, capacity);
}

void block_release(void *block, size_t capacity)
{
    if (!block)
        return;
    void *evicted = NULL;
    if (capacity >= BLOCK_CACHE_SMALLEST && capacity <= BLOCK_CACHE_MAX_BYTES) {
        pthread_mutex_lock(&cache.lock);
        /* A free slot, else the least recently released block makes room: a block of a size
         * no longer asked for (e.g. the first round's whole model) must not keep the sizes of
         * every later round out of the cache. */
        int slot = -1;
        for (int i = 0; i < BLOCK_CACHE_SLOTS; i++) {
            if (!cache.block[i]) {
                slot = i;
                break;
            }
            if (slot < 0 || cache.released_at[i] < cache.released_at[slot])
                slot = i;
        }
        if (cache.block[slot]) {
            evicted = cache.block[slot];
            cache.cached_bytes -= cache.capacity[slot];
            cache.block[slot] = NULL;
        }
        if (cache.cached_bytes + capacity <= BLOCK_CACHE_MAX_BYTES) {
            cache.block[slot] = block;
            cache.capacity[slot] = capacity;
            cache.released_at[slot] = ++cache.releases;
            cache.cached_bytes += capacity;
            block = NULL;
        }
        pthread_mutex_unlock(&cache.lock);
    }
    free(evicted);
    free(block);
}
