/* buffer_arena.c — slots in one anonymous mapping, a stack of free slot indices, and
 * madvise(MADV_DONTNEED) to hand pages back. */
#include "buffer_arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

struct buffer_arena {
    unsigned char *base;
    size_t slot_size;
    size_t slot_count;
    size_t free_count;
    size_t *free_slots; /* a stack of free slot indices */
};

struct buffer_arena *buffer_arena_create(size_t slot_size, size_t slot_count)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    slot_size = (slot_size + page - 1) / page * page;
    if (slot_count == 0 || slot_size == 0 || slot_count > SIZE_MAX / slot_size)
        return NULL;
    struct buffer_arena *arena = calloc(1, sizeof(*arena));
    if (!arena)
        return NULL;
    arena->free_slots = malloc(slot_count * sizeof(size_t));
    arena->base = mmap(NULL, slot_size * slot_count, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (!arena->free_slots || arena->base == MAP_FAILED) {
        if (arena->base != MAP_FAILED && arena->base)
            munmap(arena->base, slot_size * slot_count);
        free(arena->free_slots);
        free(arena);
        return NULL;
    }
    arena->slot_size = slot_size;
    arena->slot_count = slot_count;
    /* Lowest slots on top, so a small number of connections stays in few page-table pages. */
    for (size_t i = 0; i < slot_count; i++)
        arena->free_slots[i] = slot_count - 1 - i;
    arena->free_count = slot_count;
    return arena;
}

void buffer_arena_destroy(struct buffer_arena *arena)
{
    if (!arena)
        return;
    munmap(arena->base, arena->slot_size * arena->slot_count);
    free(arena->free_slots);
    free(arena);
}

size_t buffer_arena_slot_size(const struct buffer_arena *arena)
{
    return arena->slot_size;
}

void *buffer_arena_take(struct buffer_arena *arena)
{
    if (arena->free_count == 0)
        return NULL;
    return arena->base + arena->free_slots[--arena->free_count] * arena->slot_size;
}

bool buffer_arena_owns(const struct buffer_arena *arena, const void *pointer)
{
    if (!arena)
        return false;
    const unsigned char *p = pointer;
    return p >= arena->base && p < arena->base + arena->slot_size * arena->slot_count;
}

void *buffer_arena_slot_of(const struct buffer_arena *arena, const void *pointer)
{
    if (!buffer_arena_owns(arena, pointer))
        return NULL;
    size_t index = (size_t)((const unsigned char *)pointer - arena->base) / arena->slot_size;
    return arena->base + index * arena->slot_size;
}

void buffer_arena_trim(struct buffer_arena *arena, void *slot)
{
    madvise(slot, arena->slot_size, MADV_DONTNEED);
}

void buffer_arena_give_back(struct buffer_arena *arena, void *slot)
{
    buffer_arena_trim(arena, slot);
    size_t index = (size_t)((unsigned char *)slot - arena->base) / arena->slot_size;
    arena->free_slots[arena->free_count++] = index;
}
