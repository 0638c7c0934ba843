/* address_count.c — per-address counters in a binary tree (POSIX tsearch) keyed by address_key. */
#include "address_count.h"

#include <search.h>
#include <stdlib.h>
#include <string.h>

#include "address_key.h"

struct counter {
    char key[ADDRESS_KEY_SIZE];
    unsigned count;
};

struct address_count {
    void *tree;
    size_t size;
};

static int compare_counters(const void *a, const void *b)
{
    return strcmp(((const struct counter *)a)->key, ((const struct counter *)b)->key);
}

struct address_count *address_count_create(void)
{
    return calloc(1, sizeof(struct address_count));
}

static struct counter *find(const struct address_count *counts, const char *address)
{
    struct counter probe;
    address_key(address, probe.key);
    void *const *found = tfind(&probe, &counts->tree, compare_counters);
    return found ? *found : NULL;
}

unsigned address_count_get(const struct address_count *counts, const char *address)
{
    struct counter *counter = find(counts, address);
    return counter ? counter->count : 0;
}

bool address_count_take(struct address_count *counts, const char *address, unsigned limit)
{
    struct counter *counter = find(counts, address);
    if (counter) {
        if (counter->count >= limit)
            return false;
        counter->count++;
        return true;
    }
    if (limit == 0 || !(counter = malloc(sizeof(*counter))))
        return false;
    address_key(address, counter->key);
    counter->count = 1;
    if (!tsearch(counter, &counts->tree, compare_counters)) {
        free(counter);
        return false;
    }
    counts->size++;
    return true;
}

void address_count_release(struct address_count *counts, const char *address)
{
    struct counter *counter = find(counts, address);
    if (!counter || --counter->count > 0)
        return;
    tdelete(counter, &counts->tree, compare_counters);
    free(counter);
    counts->size--;
}

size_t address_count_addresses(const struct address_count *counts)
{
    return counts->size;
}

static void free_counter(void *counter)
{
    free(counter);
}

void address_count_destroy(struct address_count *counts)
{
    if (!counts)
        return;
    tdestroy(counts->tree, free_counter);
    free(counts);
}
