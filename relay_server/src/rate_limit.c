/* rate_limit.c — token buckets kept in a binary tree (POSIX tsearch) keyed by address. */
#include "rate_limit.h"

#include <arpa/inet.h>
#include <search.h>
#include <stdlib.h>
#include <string.h>

struct bucket {
    char key[64];
    double tokens;
    double updated;
};

struct rate_limiter {
    void *tree;
    size_t size;
    size_t max_addresses;
    double capacity;
    double per_second;
};

static int compare_buckets(const void *a, const void *b)
{
    return strcmp(((const struct bucket *)a)->key, ((const struct bucket *)b)->key);
}

/* The key of an address: IPv4 as is, IPv6 reduced to its /64 prefix. */
static void address_key(const char *address, char key[64])
{
    struct in6_addr v6;
    if (inet_pton(AF_INET6, address, &v6) == 1 && !IN6_IS_ADDR_V4MAPPED(&v6)) {
        memset(v6.s6_addr + 8, 0, 8);
        inet_ntop(AF_INET6, &v6, key, 64);
        return;
    }
    strncpy(key, address, 63);
    key[63] = '\0';
}

struct rate_limiter *rate_limiter_create(unsigned per_minute, size_t max_addresses)
{
    struct rate_limiter *limiter = calloc(1, sizeof(*limiter));
    if (!limiter)
        return NULL;
    limiter->max_addresses = max_addresses;
    limiter->capacity = per_minute;
    limiter->per_second = per_minute / 60.0;
    return limiter;
}

static void refill(struct rate_limiter *limiter, struct bucket *bucket, double now)
{
    double elapsed = now - bucket->updated;
    if (elapsed > 0) {
        bucket->tokens += elapsed * limiter->per_second;
        if (bucket->tokens > limiter->capacity)
            bucket->tokens = limiter->capacity;
    }
    bucket->updated = now;
}

bool rate_limiter_allow(struct rate_limiter *limiter, const char *address, double now,
                        double *retry_after)
{
    struct bucket probe;
    address_key(address, probe.key);
    void **found = tfind(&probe, &limiter->tree, compare_buckets);
    struct bucket *bucket;
    if (found) {
        bucket = *found;
        refill(limiter, bucket, now);
    } else {
        if (limiter->size >= limiter->max_addresses || limiter->capacity < 1) {
            *retry_after = 60;
            return false;
        }
        bucket = malloc(sizeof(*bucket));
        if (!bucket) {
            *retry_after = 1;
            return false;
        }
        *bucket = probe;
        bucket->tokens = limiter->capacity;
        bucket->updated = now;
        tsearch(bucket, &limiter->tree, compare_buckets);
        limiter->size++;
    }
    if (bucket->tokens >= 1) {
        bucket->tokens -= 1;
        return true;
    }
    *retry_after = (1 - bucket->tokens) / limiter->per_second;
    return false;
}

struct sweep {
    struct rate_limiter *limiter;
    double now;
    struct bucket **full;
    size_t count;
};

static void collect_full(const void *node, VISIT which, void *closure)
{
    if (which != postorder && which != leaf)
        return;
    struct sweep *sweep = closure;
    struct bucket *bucket = *(struct bucket *const *)node;
    refill(sweep->limiter, bucket, sweep->now);
    if (bucket->tokens >= sweep->limiter->capacity)
        sweep->full[sweep->count++] = bucket;
}

void rate_limiter_sweep(struct rate_limiter *limiter, double now)
{
    if (limiter->size == 0)
        return;
    struct sweep sweep = {limiter, now, malloc(limiter->size * sizeof(struct bucket *)), 0};
    if (!sweep.full)
        return;
    twalk_r(limiter->tree, collect_full, &sweep);
    for (size_t i = 0; i < sweep.count; i++) {
        tdelete(sweep.full[i], &limiter->tree, compare_buckets);
        free(sweep.full[i]);
    }
    limiter->size -= sweep.count;
    free(sweep.full);
}

size_t rate_limiter_size(const struct rate_limiter *limiter)
{
    return limiter->size;
}

static void free_bucket(void *bucket)
{
    free(bucket);
}

void rate_limiter_destroy(struct rate_limiter *limiter)
{
    if (!limiter)
        return;
    tdestroy(limiter->tree, free_bucket);
    free(limiter);
}
