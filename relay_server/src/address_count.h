/* address_count.h — how many of something (open sockets, handshakes, rooms) each client address
 * holds right now, so that no single address (IPv6: /64, see address_key.h) can take a whole
 * relay-wide resource. Entries exist only while their count is above zero, so the table is
 * bounded by the things counted. */
#ifndef ADDRESS_COUNT_H
#define ADDRESS_COUNT_H

#include <stdbool.h>
#include <stddef.h>

struct address_count;

struct address_count *address_count_create(void);
void address_count_destroy(struct address_count *counts);

/* What `address` holds now. */
unsigned address_count_get(const struct address_count *counts, const char *address);

/* Counts one more for `address` if it holds fewer than `limit`; false (nothing counted) if it
 * already holds `limit`, or when out of memory. */
bool address_count_take(struct address_count *counts, const char *address, unsigned limit);

/* Gives one back (a no-op for an address that holds none). */
void address_count_release(struct address_count *counts, const char *address);

/* Addresses holding at least one. */
size_t address_count_addresses(const struct address_count *counts);

#endif
