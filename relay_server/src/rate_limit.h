/* rate_limit.h — join attempts per client address per minute (a token bucket per address), so
 * that a room code cannot be found by guessing. IPv6 clients are grouped by their /64, since
 * one host usually owns a whole /64. */
#ifndef RATE_LIMIT_H
#define RATE_LIMIT_H

#include <stdbool.h>
#include <stddef.h>

struct rate_limiter;

/* `per_minute` attempts per address; at most `max_addresses` addresses are tracked (past that,
 * new addresses are refused until old entries refill and are forgotten). */
struct rate_limiter *rate_limiter_create(unsigned per_minute, size_t max_addresses);
void rate_limiter_destroy(struct rate_limiter *limiter);

/* Takes one attempt for `address`; false (and *retry_after seconds) when over the limit. */
bool rate_limiter_allow(struct rate_limiter *limiter, const char *address, double now,
                        double *retry_after);

/* Forgets addresses whose bucket is full again; call now and then. */
void rate_limiter_sweep(struct rate_limiter *limiter, double now);

size_t rate_limiter_size(const struct rate_limiter *limiter);

#endif
