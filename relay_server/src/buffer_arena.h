/* buffer_arena.h — fixed-size buffers whose memory is committed only when written.
 * libwebsockets keeps one receive buffer per connection; it must be large for fast bulk
 * transfers, yet most connections sit idle. Slots of one big MAP_NORESERVE mapping cost no
 * resident memory until touched, and give their pages back when released or trimmed. */
#ifndef BUFFER_ARENA_H
#define BUFFER_ARENA_H

#include <stdbool.h>
#include <stddef.h>

struct buffer_arena;

/* `slot_count` buffers of at least `slot_size` bytes; NULL if the mapping fails. */
struct buffer_arena *buffer_arena_create(size_t slot_size, size_t slot_count);
void buffer_arena_destroy(struct buffer_arena *arena);

size_t buffer_arena_slot_size(const struct buffer_arena *arena);

/* A free slot, or NULL when all are taken. */
void *buffer_arena_take(struct buffer_arena *arena);

/* Whether `pointer` is a slot of this arena (NULL arena: false). */
bool buffer_arena_owns(const struct buffer_arena *arena, const void *pointer);

/* The slot that contains `pointer`, or NULL if none does. */
void *buffer_arena_slot_of(const struct buffer_arena *arena, const void *pointer);

/* Returns a slot; its pages go back to the system. */
void buffer_arena_give_back(struct buffer_arena *arena, void *slot);

/* Gives a slot's pages back but keeps the slot (its contents become zero). */
void buffer_arena_trim(struct buffer_arena *arena, void *slot);

#endif
