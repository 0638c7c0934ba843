/* rate_limit.c — sliding-window event counts kept in a binary tree (POSIX tsearch) keyed by
 * address_key. */
#include "rate_limit.h"

#include <search.h>
#include <stdlib.h>
#include <string.h>

#include "address_key.h"

struct window {
    char key[ADDRESS_KEY_SIZE];
    double started;    /* when the current window began */
    unsigned current;  /* events in the current window */
    unsigned previous; /* events in the window before it */
};

struct rate_limiter {
    void *tree;
    size_t size;
    size_t max_addresses;
    unsigned per_minute;
};

static int compare_windows(const void *a, const void *b)
{
    return strcmp(((const struct window *)a)->key, ((const struct window *)b)->key);
}

struct rate_limiter *rate_limiter_create(unsigned per_minute, size_t max_addresses)
{
    struct rate_limiter *limiter = calloc(1, sizeof(*limiter));
    if (!limiter)
        return NULL;
    limiter->max_addresses = max_addresses;
    limiter->per_minute = per_minute;
    return limiter;
}

/* Moves the windows on to the one `now` falls in. */
static void advance(struct window *window, double now)
{
    double elapsed = now - window->started;
    if (elapsed < RATE_LIMIT_WINDOW_SECONDS)
        return;
    if (elapsed < 2 * RATE_LIMIT_WINDOW_SECONDS) {
        window->previous = window->current;
        window->started += RATE_LIMIT_WINDOW_SECONDS;
    } else {
        window->previous = 0;
        window->started = now;
    }
    window->current = 0;
}

/* Events within the last minute, estimated: the previous window counts for the part of it that
 * still lies within the last minute. */
static double recent(const struct window *window, double now)
{
    double still_in = 1.0 - (now - window->started) / RATE_LIMIT_WINDOW_SECONDS;
    return window->current + window->previous * (still_in > 0 ? still_in : 0);
}

static struct window *find(struct rate_limiter *limiter, const char *address, double now)
{
    struct window probe;
    address_key(address, probe.key);
    void **found = tfind(&probe, &limiter->tree, compare_windows);
    if (!found)
        return NULL;
    advance(*found, now);
    return *found;
}

bool rate_limiter_check(struct rate_limiter *limiter, const char *address, double now,
                        double *retry_after)
{
    unsigned budget = limiter->per_minute;
    struct window *window = find(limiter, address, now);
    if (!window) {
        if (budget > 0 && limiter->size < limiter->max_addresses)
            return true;
        *retry_after = RATE_LIMIT_WINDOW_SECONDS;
        return false;
    }
    if (recent(window, now) + 1 <= budget)
        return true;
    /* When the estimate falls below budget - 1: the current window's events count in full
     * until it ends; after that they are the previous window's, fading over the next minute. */
    double window_end = window->started + RATE_LIMIT_WINDOW_SECONDS;
    if (window->current + 1 > budget) {
        double fade = window->current ? 1.0 - (budget - 1.0) / window->current : 0;
        *retry_after = window_end + fade * RATE_LIMIT_WINDOW_SECONDS - now;
    } else {
        double fade = 1.0 - (budget - 1.0 - window->current) / window->previous;
        *retry_after = window->started + fade * RATE_LIMIT_WINDOW_SECONDS - now;
    }
    if (*retry_after < 0.001)
        *retry_after = 0.001;
    return false;
}

void rate_limiter_spend(struct rate_limiter *limiter, const char *address, double now)
{
    struct window *window = find(limiter, address, now);
    if (!window) {
        if (limiter->size >= limiter->max_addresses || !(window = calloc(1, sizeof(*window))))
            return;
        address_key(address, window->key);
        window->started = now;
        if (!tsearch(window, &limiter->tree, compare_windows)) {
            free(window);
            return;
        }
        limiter->size++;
    }
    window->current++;
}

bool rate_limiter_allow(struct rate_limiter *limiter, const char *address, double now,
                        double *retry_after)
{
    if (!rate_limiter_check(limiter, address, now, retry_after))
        return false;
    rate_limiter_spend(limiter, address, now);
    return true;
}

struct sweep {
    double now;
    struct window **idle;
    size_t count;
};

static void collect_idle(const void *node, VISIT which, void *closure)
{
    if (which != postorder && which != leaf)
        return;
    struct sweep *sweep = closure;
    struct window *window = *(struct window *const *)node;
    advance(window, sweep->now);
    if (recent(window, sweep->now) == 0)
        sweep->idle[sweep->count++] = window;
}

void rate_limiter_sweep(struct rate_limiter *limiter, double now)
{
    if (limiter->size == 0)
        return;
    struct sweep sweep = {now, malloc(limiter->size * sizeof(struct window *)), 0};
    if (!sweep.idle)
        return;
    twalk_r(limiter->tree, collect_idle, &sweep);
    for (size_t i = 0; i < sweep.count; i++) {
        tdelete(sweep.idle[i], &limiter->tree, compare_windows);
        free(sweep.idle[i]);
    }
    limiter->size -= sweep.count;
    free(sweep.idle);
}

size_t rate_limiter_size(const struct rate_limiter *limiter)
{
    return limiter->size;
}

static void free_window(void *window)
{
    free(window);
}

void rate_limiter_destroy(struct rate_limiter *limiter)
{
    if (!limiter)
        return;
    tdestroy(limiter->tree, free_window);
    free(limiter);
}
