/* refusal_log.c — per-address refusal counts (POSIX tsearch keyed by address_key) and the log
 * lines that summarise them. */
#include "refusal_log.h"

#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "address_key.h"
#include "log.h"

/* The key under which addresses past max_addresses are counted together. */
#define OTHER_ADDRESSES "other"

struct tally {
    char key[ADDRESS_KEY_SIZE];
    double interval_started;
    const char *last_what;
    int last_status;
    unsigned long unlogged; /* refusals counted since the line written at the interval start */
};

struct refusal_log {
    void *tree;
    size_t size;
    size_t max_addresses;
};

static int compare_tallies(const void *a, const void *b)
{
    return strcmp(((const struct tally *)a)->key, ((const struct tally *)b)->key);
}

struct refusal_log *refusal_log_create(size_t max_addresses)
{
    struct refusal_log *log = calloc(1, sizeof(*log));
    if (log)
        log->max_addresses = max_addresses;
    return log;
}

static void write_first(const struct tally *tally)
{
    log_fields(LOG_LEVEL_INFO, tally->last_what, LOG_TEXT("peer", tally->key),
               LOG_INT("status", tally->last_status));
}

static void write_summary(const struct tally *tally)
{
    log_fields(LOG_LEVEL_INFO, "refusals", LOG_TEXT("peer", tally->key),
               LOG_INT("count", tally->unlogged), LOG_TEXT("last", tally->last_what),
               LOG_INT("status", tally->last_status),
               LOG_INT("seconds", (int64_t)REFUSAL_LOG_INTERVAL_SECONDS));
}

void refusal_log_note(struct refusal_log *log, const char *address, const char *what, int status,
                      double now)
{
    struct tally probe;
    address_key(address, probe.key);
    void **found = tfind(&probe, &log->tree, compare_tallies);
    if (!found && log->size >= log->max_addresses) {
        snprintf(probe.key, sizeof(probe.key), "%s", OTHER_ADDRESSES);
        found = tfind(&probe, &log->tree, compare_tallies);
    }
    struct tally *tally = found ? *found : NULL;
    if (!tally) {
        tally = calloc(1, sizeof(*tally));
        if (!tally)
            return;
        memcpy(tally->key, probe.key, sizeof(tally->key));
        if (!tsearch(tally, &log->tree, compare_tallies)) {
            free(tally);
            return;
        }
        log->size++;
        tally->interval_started = now;
        tally->last_what = what;
        tally->last_status = status;
        write_first(tally);
        return;
    }
    tally->last_what = what;
    tally->last_status = status;
    tally->unlogged++;
}

struct flush {
    double now;
    int all;
    struct tally **ended;
    size_t count;
};

static void collect_ended(const void *node, VISIT which, void *closure)
{
    if (which != postorder && which != leaf)
        return;
    struct flush *flush = closure;
    struct tally *tally = *(struct tally *const *)node;
    if (flush->all || flush->now - tally->interval_started >= REFUSAL_LOG_INTERVAL_SECONDS)
        flush->ended[flush->count++] = tally;
}

void refusal_log_flush(struct refusal_log *log, double now, int all)
{
    if (log->size == 0)
        return;
    struct flush flush = {now, all, malloc(log->size * sizeof(struct tally *)), 0};
    if (!flush.ended)
        return;
    twalk_r(log->tree, collect_ended, &flush);
    for (size_t i = 0; i < flush.count; i++) {
        struct tally *tally = flush.ended[i];
        /* An address that went quiet is forgotten; one still refused starts a new interval
         * with its summary as the line written at that interval's start. */
        if (tally->unlogged && !all) {
            write_summary(tally);
            tally->unlogged = 0;
            tally->interval_started = now;
            continue;
        }
        if (tally->unlogged)
            write_summary(tally);
        tdelete(tally, &log->tree, compare_tallies);
        free(tally);
        log->size--;
    }
    free(flush.ended);
}

size_t refusal_log_addresses(const struct refusal_log *log)
{
    return log->size;
}

static void free_tally(void *tally)
{
    free(tally);
}

void refusal_log_destroy(struct refusal_log *log)
{
    if (!log)
        return;
    tdestroy(log->tree, free_tally);
    free(log);
}
