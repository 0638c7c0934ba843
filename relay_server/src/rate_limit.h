/* rate_limit.h — events per client address per minute (failed joins, room creations), so that a
 * room code cannot be found by guessing and one address cannot churn through rooms. IPv6
 * clients are grouped by their /64 (address_key.h). A limiter with one fixed address serves as
 * a relay-wide budget.
 *
 * The count is a sliding window estimated from two fixed one-minute windows: the current one
 * plus the previous one weighted by how much of it still lies within the last minute. Unlike a
 * token bucket that refills continuously, a burst within one minute is held to exactly the
 * budget however long it takes, so the bound does not depend on how fast a machine answers. */
#ifndef RATE_LIMIT_H
#define RATE_LIMIT_H

#include <stdbool.h>
#include <stddef.h>

#define RATE_LIMIT_WINDOW_SECONDS 60.0

struct rate_limiter;

/* `per_minute` events per address; at most `max_addresses` addresses are tracked (past that,
 * new addresses are refused until old entries are forgotten). */
struct rate_limiter *rate_limiter_create(unsigned per_minute, size_t max_addresses);
void rate_limiter_destroy(struct rate_limiter *limiter);

/* Whether one more event from `address` would be within the budget, without counting it; when
 * not, *retry_after says in how many seconds it will be. */
bool rate_limiter_check(struct rate_limiter *limiter, const char *address, double now,
                        double *retry_after);

/* Counts one event for `address` (checked or not: a failure is counted even past the budget). */
void rate_limiter_spend(struct rate_limiter *limiter, const char *address, double now);

/* check, then spend if allowed. */
bool rate_limiter_allow(struct rate_limiter *limiter, const char *address, double now,
                        double *retry_after);

/* Forgets addresses with no event in the last two windows; call now and then. */
void rate_limiter_sweep(struct rate_limiter *limiter, double now);

size_t rate_limiter_size(const struct rate_limiter *limiter);

#endif
