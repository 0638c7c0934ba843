/* nats_backplane.c — a relay node's link to the others through NATS (nats.c): envelopes on core
 * subjects, the room directory in a JetStream KV bucket, a heartbeat thread that refreshes this
 * node's entries and notices other nodes' expiring. The core is only ever called on the lws
 * service thread: nats.c's threads queue what arrives and wake that thread. */
#include "nats_backplane.h"

#include <nats/nats.h>
#include <pthread.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cluster.h"
#include "log.h"

/* What may wait for the service thread, all envelopes together. Beyond it envelopes are
 * dropped (counted): a lost binary piece ends that message early on this node, nothing else
 * grows. nats.c itself is told to keep nothing (its per-subscription limits are lifted):
 * the callback copies each message out at once. */
#define MAX_QUEUED_BYTES (64u * 1024 * 1024)
/* How long a directory request may hold up the service thread. */
#define DIRECTORY_TIMEOUT_MS 2000
#define CONNECT_TIMEOUT_MS 3000
#define STATE_RESERVED "reserved"
#define STATE_LIVE "live"
#define KEY_SIZE 96

enum item_kind { ITEM_ENVELOPE, ITEM_NODE_LOST };

struct inbound_item {
    struct inbound_item *next;
    enum item_kind kind;
    char node[CLUSTER_NODE_ID_LENGTH + 1]; /* ITEM_NODE_LOST */
    natsMsg *message;                      /* ITEM_ENVELOPE: kept as nats.c made it, no copy */
    size_t length;
};

/* A directory entry this node keeps alive by writing it again every CLUSTER_REFRESH_SECONDS. */
struct kept_entry {
    struct kept_entry *next, *previous;
    char key[KEY_SIZE];
    char *value;
};

struct room_subscription {
    char code[ROOM_CODE_LENGTH + 1];
    natsSubscription *subscription;
};

struct nats_backplane {
    natsConnection *connection;
    jsCtx *js;
    kvStore *kv;
    natsSubscription *inbox;
    struct relay_cluster_io io;
    char node[CLUSTER_NODE_ID_LENGTH + 1];
    void *subscriptions;   /* tsearch tree of struct room_subscription (service thread only) */
    unsigned char *buffer; /* one outgoing envelope (service thread only) */
    size_t buffer_capacity;

    pthread_mutex_t lock; /* guards everything below */
    void (*wake)(void *context);
    void *wake_context;
    struct inbound_item *head, *tail;
    size_t queued_bytes;
    unsigned long long dropped;
    unsigned long long dropped_reported;       /* service thread only */
    struct kept_entry *entries;                /* a list, to walk */
    void *entry_index;                         /* the same entries by key (tsearch) */
    char (*known)[CLUSTER_NODE_ID_LENGTH + 1]; /* other nodes seen, watched for expiry */
    size_t known_count, known_capacity;
    bool stopping;
    pthread_cond_t stop_signal;
    pthread_t heartbeat;
    bool heartbeat_started;
};

static int compare_subscriptions(const void *a, const void *b)
{
    return strcmp(((const struct room_subscription *)a)->code,
                  ((const struct room_subscription *)b)->code);
}

/* While NATS is unreachable, directory requests fail at once instead of holding up the
 * service thread for their timeout; the heartbeat writes the kept entries again later. */
static bool connected(const struct nats_backplane *backplane)
{
    return natsConnection_Status(backplane->connection) == NATS_CONN_STATUS_CONNECTED;
}

/* --- the hand-over queue (any thread in, service thread out) ----------------------------- */

/* Queues a message (taking it over: it is destroyed here if it cannot be queued) or a lost
 * node for the service thread. */
static void enqueue(struct nats_backplane *backplane, enum item_kind kind, const char *node,
                    natsMsg *message)
{
    size_t length = message ? (size_t)natsMsg_GetDataLength(message) : 0;
    pthread_mutex_lock(&backplane->lock);
    struct inbound_item *item =
        backplane->queued_bytes + length > MAX_QUEUED_BYTES ? NULL : calloc(1, sizeof(*item));
    if (!item) {
        backplane->dropped++;
        pthread_mutex_unlock(&backplane->lock);
        natsMsg_Destroy(message);
        return;
    }
    item->kind = kind;
    snprintf(item->node, sizeof(item->node), "%s", node ? node : "");
    item->message = message;
    item->length = length;
    if (backplane->tail)
        backplane->tail->next = item;
    else
        backplane->head = item;
    backplane->tail = item;
    backplane->queued_bytes += length;
    if (backplane->wake)
        backplane->wake(backplane->wake_context);
    pthread_mutex_unlock(&backplane->lock);
}

/* Remembers another node, so the heartbeat notices when its entry expires. */
static void remember_node(struct nats_backplane *backplane, const char *node)
{
    if (!strcmp(node, backplane->node))
        return;
    pthread_mutex_lock(&backplane->lock);
    bool known = false;
    for (size_t i = 0; i < backplane->known_count && !known; i++)
        known = !strcmp(backplane->known[i], node);
    if (!known && backplane->known_count == backplane->known_capacity) {
        size_t capacity = backplane->known_capacity ? 2 * backplane->known_capacity : 8;
        void *grown = realloc(backplane->known, capacity * sizeof(*backplane->known));
        if (grown) {
            backplane->known = grown;
            backplane->known_capacity = capacity;
        }
    }
    if (!known && backplane->known_count < backplane->known_capacity)
        snprintf(backplane->known[backplane->known_count++], sizeof(*backplane->known), "%s", node);
    pthread_mutex_unlock(&backplane->lock);
}

/* nats.c's delivery thread: copy the message out and wake the service thread. */
static void on_message(natsConnection *connection, natsSubscription *subscription, natsMsg *message,
                       void *closure)
{
    struct nats_backplane *backplane = closure;
    const unsigned char *bytes = (const unsigned char *)natsMsg_GetData(message);
    size_t length = (size_t)natsMsg_GetDataLength(message);
    struct cluster_envelope envelope;
    if (!cluster_envelope_decode(bytes, length, &envelope, NULL)) {
        natsMsg_Destroy(message);
        return;
    }
    if (envelope.kind == CLUSTER_JOIN)
        remember_node(backplane, envelope.node);
    enqueue(backplane, ITEM_ENVELOPE, NULL, message);
}

void nats_backplane_deliver(struct nats_backplane *backplane, struct relay *relay, double now)
{
    pthread_mutex_lock(&backplane->lock);
    struct inbound_item *item = backplane->head;
    backplane->head = backplane->tail = NULL;
    backplane->queued_bytes = 0;
    unsigned long long dropped = backplane->dropped;
    pthread_mutex_unlock(&backplane->lock);
    if (dropped > backplane->dropped_reported) {
        log_fields(LOG_LEVEL_WARN, "cluster_envelopes_dropped",
                   LOG_INT("count", (int64_t)(dropped - backplane->dropped_reported)));
        backplane->dropped_reported = dropped;
    }
    while (item) {
        struct inbound_item *next = item->next;
        struct cluster_envelope envelope;
        if (item->kind == ITEM_NODE_LOST) {
            log_event(LOG_LEVEL_WARN, "cluster_node_lost", "node", item->node, NULL);
            relay_cluster_node_lost(relay, item->node, now);
        } else if (cluster_envelope_decode((const unsigned char *)natsMsg_GetData(item->message),
                                           item->length, &envelope, NULL)) {
            relay_cluster_receive(relay, &envelope, now);
        }
        natsMsg_Destroy(item->message);
        free(item);
        item = next;
    }
}

/* --- directory entries kept alive by the heartbeat --------------------------------------- */

static int compare_entries(const void *a, const void *b)
{
    return strcmp(((const struct kept_entry *)a)->key, ((const struct kept_entry *)b)->key);
}

static struct kept_entry *find_entry(struct nats_backplane *backplane, const char *key)
{
    struct kept_entry probe;
    snprintf(probe.key, sizeof(probe.key), "%s", key);
    void **found = tfind(&probe, &backplane->entry_index, compare_entries);
    return found ? *found : NULL;
}

/* Sets (value non-NULL) or removes a kept entry; returns whether its value changed. */
static bool keep_entry(struct nats_backplane *backplane, const char *key, const char *value)
{
    pthread_mutex_lock(&backplane->lock);
    struct kept_entry *entry = find_entry(backplane, key);
    bool changed = true;
    if (!value && entry) {
        tdelete(entry, &backplane->entry_index, compare_entries);
        if (entry->previous)
            entry->previous->next = entry->next;
        else
            backplane->entries = entry->next;
        if (entry->next)
            entry->next->previous = entry->previous;
        free(entry->value);
        free(entry);
    } else if (value && entry) {
        changed = strcmp(entry->value, value) != 0;
        char *copy = changed ? strdup(value) : NULL;
        if (copy) {
            free(entry->value);
            entry->value = copy;
        }
    } else if (value && (entry = calloc(1, sizeof(*entry)))) {
        snprintf(entry->key, sizeof(entry->key), "%s", key);
        entry->value = strdup(value);
        if (!entry->value || !tsearch(entry, &backplane->entry_index, compare_entries)) {
            free(entry->value);
            free(entry);
            pthread_mutex_unlock(&backplane->lock);
            return false;
        }
        entry->next = backplane->entries;
        if (entry->next)
            entry->next->previous = entry;
        backplane->entries = entry;
    } else {
        changed = value != NULL;
    }
    pthread_mutex_unlock(&backplane->lock);
    return changed;
}

/* Writes every kept entry again, and the node's own liveness entry: asynchronous JetStream
 * publishes to the bucket's subjects, acknowledged together, so that thousands of rooms cost
 * one round trip rather than one each. An entry removed meanwhile is deleted again. */
static void refresh_entries(struct nats_backplane *backplane)
{
    char key[KEY_SIZE];
    if (cluster_node_key(backplane->node, key, sizeof(key)))
        kvStore_PutString(NULL, backplane->kv, key, "alive");
    pthread_mutex_lock(&backplane->lock);
    size_t count = 0;
    for (struct kept_entry *e = backplane->entries; e; e = e->next)
        count++;
    struct kept_entry *copies = calloc(count ? count : 1, sizeof(*copies));
    size_t copied = 0;
    for (struct kept_entry *e = backplane->entries; e && copies; e = e->next) {
        copies[copied] = *e;
        copies[copied].value = strdup(e->value);
        if (copies[copied].value)
            copied++;
    }
    pthread_mutex_unlock(&backplane->lock);
    char subject[KEY_SIZE + 32];
    for (size_t i = 0; i < copied; i++) {
        snprintf(subject, sizeof(subject), "$KV.%s.%s", CLUSTER_BUCKET, copies[i].key);
        js_PublishAsync(backplane->js, subject, copies[i].value, (int)strlen(copies[i].value),
                        NULL);
    }
    jsPubOptions wait;
    jsPubOptions_Init(&wait);
    wait.MaxWait = DIRECTORY_TIMEOUT_MS;
    js_PublishAsyncComplete(backplane->js, &wait);
    for (size_t i = 0; i < copied; i++) {
        pthread_mutex_lock(&backplane->lock);
        bool gone = !find_entry(backplane, copies[i].key);
        pthread_mutex_unlock(&backplane->lock);
        if (gone)
            kvStore_Delete(backplane->kv, copies[i].key);
        free(copies[i].value);
    }
    free(copies);
}

/* Other nodes whose liveness entry expired: their members are handed to the core as lost. */
static void check_nodes(struct nats_backplane *backplane)
{
    pthread_mutex_lock(&backplane->lock);
    size_t count = backplane->known_count;
    char(*nodes)[CLUSTER_NODE_ID_LENGTH + 1] = calloc(count ? count : 1, sizeof(*nodes));
    if (nodes && count)
        memcpy(nodes, backplane->known, count * sizeof(*nodes));
    pthread_mutex_unlock(&backplane->lock);
    for (size_t i = 0; nodes && i < count; i++) {
        char key[KEY_SIZE];
        kvEntry *entry = NULL;
        if (!cluster_node_key(nodes[i], key, sizeof(key)))
            continue;
        natsStatus status = kvStore_Get(&entry, backplane->kv, key);
        kvEntry_Destroy(entry);
        if (status != NATS_NOT_FOUND)
            continue; /* alive, or we cannot tell now: ask again next time */
        pthread_mutex_lock(&backplane->lock);
        for (size_t j = 0; j < backplane->known_count; j++)
            if (!strcmp(backplane->known[j], nodes[i])) {
                memmove(backplane->known[j], backplane->known[backplane->known_count - 1],
                        sizeof(*backplane->known));
                backplane->known_count--;
                break;
            }
        pthread_mutex_unlock(&backplane->lock);
        enqueue(backplane, ITEM_NODE_LOST, nodes[i], NULL);
    }
    free(nodes);
}

static void *heartbeat_main(void *argument)
{
    struct nats_backplane *backplane = argument;
    unsigned ticks = 0;
    pthread_mutex_lock(&backplane->lock);
    while (!backplane->stopping) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&backplane->stop_signal, &backplane->lock, &until);
        if (backplane->stopping)
            break;
        pthread_mutex_unlock(&backplane->lock);
        if (connected(backplane)) {
            if (++ticks % CLUSTER_REFRESH_SECONDS == 0)
                refresh_entries(backplane);
            check_nodes(backplane);
        }
        pthread_mutex_lock(&backplane->lock);
    }
    pthread_mutex_unlock(&backplane->lock);
    return NULL;
}

/* --- the core's hooks (service thread) ---------------------------------------------------- */

static double wall_clock(void *context)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool subscribe_room(struct nats_backplane *backplane, const char *code)
{
    struct room_subscription probe;
    snprintf(probe.code, sizeof(probe.code), "%s", code);
    if (tfind(&probe, &backplane->subscriptions, compare_subscriptions))
        return true;
    char subject[64];
    struct room_subscription *room = calloc(1, sizeof(*room));
    if (!room || !cluster_room_subject(code, subject, sizeof(subject)) ||
        natsConnection_Subscribe(&room->subscription, backplane->connection, subject, on_message,
                                 backplane) != NATS_OK) {
        free(room);
        return false;
    }
    natsSubscription_SetPendingLimits(room->subscription, -1, -1);
    memcpy(room->code, probe.code, sizeof(room->code));
    tsearch(room, &backplane->subscriptions, compare_subscriptions);
    /* No flush needed: the server handles a connection's messages in order, so by the time it
     * answers the directory request that follows on this connection it has the subscription,
     * and a JOIN published after our read reaches us (docs/architecture.md, "Cluster mode"). */
    return true;
}

static void unsubscribe_room(struct nats_backplane *backplane, const char *code)
{
    struct room_subscription probe;
    snprintf(probe.code, sizeof(probe.code), "%s", code);
    void **found = tfind(&probe, &backplane->subscriptions, compare_subscriptions);
    if (!found)
        return;
    struct room_subscription *room = *found;
    tdelete(&probe, &backplane->subscriptions, compare_subscriptions);
    natsSubscription_Unsubscribe(room->subscription);
    natsSubscription_Destroy(room->subscription);
    free(room);
}

static int claim_code(void *context, const char *code)
{
    struct nats_backplane *backplane = context;
    char key[KEY_SIZE];
    if (!cluster_room_key(code, key, sizeof(key)) || !connected(backplane))
        return -1;
    natsStatus status = kvStore_CreateString(NULL, backplane->kv, key, STATE_RESERVED);
    if (status == NATS_OK)
        return 1;
    if (status == NATS_TIMEOUT || status == NATS_CONNECTION_CLOSED ||
        status == NATS_CONNECTION_DISCONNECTED || status == NATS_NO_SERVER ||
        status == NATS_NO_RESPONDERS)
        return -1;
    return 0; /* "wrong last sequence": the key exists */
}

/* The members every other node recorded for the room, each with its node, as a JSON array. */
static char *read_members(struct nats_backplane *backplane, const char *code)
{
    char filter[KEY_SIZE];
    kvWatchOptions options;
    kvWatchOptions_Init(&options);
    options.IgnoreDeletes = true;
    kvWatcher *watcher = NULL;
    if (!cluster_members_filter(code, filter, sizeof(filter)) ||
        kvStore_Watch(&watcher, backplane->kv, filter, &options) != NATS_OK)
        return NULL;
    json_t *all = json_array();
    size_t prefix = strlen(filter) - 1; /* "members.CODE." */
    for (;;) {
        kvEntry *entry = NULL;
        if (kvWatcher_Next(&entry, watcher, DIRECTORY_TIMEOUT_MS) != NATS_OK || !entry)
            break; /* NULL: the initial values are all there */
        const char *key = kvEntry_Key(entry);
        const char *node = strlen(key) > prefix ? key + prefix : "";
        json_t *records =
            json_loadb(kvEntry_Value(entry), (size_t)kvEntry_ValueLen(entry), 0, NULL);
        size_t i;
        json_t *record;
        if (strcmp(node, backplane->node) != 0 && strlen(node) == CLUSTER_NODE_ID_LENGTH) {
            remember_node(backplane, node);
            json_array_foreach(records, i, record) if (json_is_object(record))
            {
                json_object_set_new(record, "node", json_string(node));
                json_array_append(all, record);
            }
        }
        json_decref(records);
        kvEntry_Destroy(entry);
    }
    kvWatcher_Destroy(watcher);
    char *text = json_dumps(all, JSON_COMPACT);
    json_decref(all);
    return text;
}

static int lookup_room(void *context, const char *code, char **records)
{
    struct nats_backplane *backplane = context;
    *records = NULL;
    char key[KEY_SIZE];
    if (!cluster_room_key(code, key, sizeof(key)) || !connected(backplane) ||
        !subscribe_room(backplane, code))
        return -1;
    kvEntry *entry = NULL;
    natsStatus status = kvStore_Get(&entry, backplane->kv, key);
    if (status != NATS_OK) {
        unsubscribe_room(backplane, code);
        return status == NATS_NOT_FOUND ? 0 : -1;
    }
    bool reserved = !strcmp(kvEntry_ValueString(entry), STATE_RESERVED);
    kvEntry_Destroy(entry);
    if (reserved)
        return 2;
    *records = read_members(backplane, code);
    if (!*records) {
        unsubscribe_room(backplane, code);
        return -1;
    }
    return 1;
}

static void room_changed(void *context, const char *code, const char *records)
{
    struct nats_backplane *backplane = context;
    char room_key[KEY_SIZE], members_key[KEY_SIZE];
    if (!cluster_room_key(code, room_key, sizeof(room_key)) ||
        !cluster_members_key(code, backplane->node, members_key, sizeof(members_key)))
        return;
    bool reachable = connected(backplane);
    if (!records) {
        unsubscribe_room(backplane, code);
        keep_entry(backplane, room_key, NULL);
        if (keep_entry(backplane, members_key, NULL) && reachable)
            kvStore_Delete(backplane->kv, members_key);
        return;
    }
    subscribe_room(backplane, code);
    bool reserved = !strcmp(records, "[]");
    /* The members first: a node that reads the room as live then finds them. */
    if (!reserved && keep_entry(backplane, members_key, records) && reachable)
        kvStore_PutString(NULL, backplane->kv, members_key, records);
    const char *state = reserved ? STATE_RESERVED : STATE_LIVE;
    if (keep_entry(backplane, room_key, state) && reachable)
        kvStore_PutString(NULL, backplane->kv, room_key, state);
}

/* Encodes the envelope once and publishes the same bytes to every subject. */
static void publish(void *context, const char *const *nodes, size_t node_count,
                    const struct cluster_envelope *envelope)
{
    struct nats_backplane *backplane = context;
    size_t needed = CLUSTER_ENVELOPE_MAX_HEADER + envelope->payload_length;
    if (needed > backplane->buffer_capacity) {
        unsigned char *grown = realloc(backplane->buffer, needed);
        if (!grown)
            return;
        backplane->buffer = grown;
        backplane->buffer_capacity = needed;
    }
    size_t header =
        cluster_envelope_encode(envelope, backplane->buffer, backplane->buffer_capacity);
    if (!header)
        return;
    if (envelope->payload_length)
        memcpy(backplane->buffer + header, envelope->payload, envelope->payload_length);
    char subject[64];
    for (size_t i = 0; i < (node_count ? node_count : 1); i++) {
        if (!(node_count ? cluster_node_subject(nodes[i], subject, sizeof(subject))
                         : cluster_room_subject(envelope->code, subject, sizeof(subject))))
            continue;
        /* While NATS is unreachable nats.c buffers up to its reconnect buffer, then refuses:
         * those envelopes are lost (docs/operations.md, "Running a cluster"). */
        natsConnection_Publish(backplane->connection, subject, backplane->buffer,
                               (int)(header + envelope->payload_length));
    }
}

/* --- setup -------------------------------------------------------------------------------- */

static void on_disconnected(natsConnection *connection, void *closure)
{
    log_event(LOG_LEVEL_WARN, "cluster_disconnected", NULL);
}

static void on_reconnected(natsConnection *connection, void *closure)
{
    log_event(LOG_LEVEL_INFO, "cluster_reconnected", NULL);
}

static natsStatus connect_nats(struct nats_backplane *backplane, const struct relay_config *config)
{
    natsOptions *options = NULL;
    char urls[sizeof(config->nats_urls)];
    const char *servers[64];
    int count = 0;
    snprintf(urls, sizeof(urls), "%s", config->nats_urls);
    for (char *save = NULL, *url = strtok_r(urls, ",", &save); url && count < 64;
         url = strtok_r(NULL, ",", &save))
        servers[count++] = url;
    natsStatus status = natsOptions_Create(&options);
    if (status == NATS_OK)
        status = natsOptions_SetServers(options, servers, count);
    if (status == NATS_OK)
        status = natsOptions_SetName(options, "segmentation-suite-relay");
    if (status == NATS_OK)
        status = natsOptions_SetNoEcho(options, true);
    /* Write each envelope at once: nats.c otherwise batches in a flusher thread that sleeps a
     * millisecond per flush, which a cross-node round trip would pay twice. */
    if (status == NATS_OK)
        status = natsOptions_SetSendAsap(options, true);
    if (status == NATS_OK)
        status = natsOptions_SetMaxReconnect(options, -1);
    if (status == NATS_OK)
        status = natsOptions_SetReconnectWait(options, 500);
    if (status == NATS_OK)
        status = natsOptions_SetTimeout(options, CONNECT_TIMEOUT_MS);
    if (status == NATS_OK)
        status = natsOptions_SetDisconnectedCB(options, on_disconnected, backplane);
    if (status == NATS_OK)
        status = natsOptions_SetReconnectedCB(options, on_reconnected, backplane);
    if (status == NATS_OK && config->nats_creds[0])
        status = natsOptions_SetUserCredentialsFromFiles(options, config->nats_creds, NULL);
    if (status == NATS_OK && config->nats_ca[0])
        status = natsOptions_SetSecure(options, true);
    if (status == NATS_OK && config->nats_ca[0])
        status = natsOptions_LoadCATrustedCertificates(options, config->nats_ca);
    if (status == NATS_OK && config->nats_cert[0])
        status = natsOptions_LoadCertificatesChain(options, config->nats_cert, config->nats_key);
    if (status == NATS_OK)
        status = natsConnection_Connect(&backplane->connection, options);
    natsOptions_Destroy(options);
    return status;
}

static natsStatus open_directory(struct nats_backplane *backplane)
{
    jsOptions options;
    jsOptions_Init(&options);
    options.Wait = DIRECTORY_TIMEOUT_MS;
    natsStatus status = natsConnection_JetStream(&backplane->js, backplane->connection, &options);
    if (status != NATS_OK)
        return status;
    if (js_KeyValue(&backplane->kv, backplane->js, CLUSTER_BUCKET) == NATS_OK)
        return NATS_OK;
    kvConfig config;
    kvConfig_Init(&config);
    config.Bucket = CLUSTER_BUCKET;
    config.History = 1;
    config.TTL = (int64_t)CLUSTER_ENTRY_TTL_SECONDS * 1000000000; /* nanoseconds */
    config.StorageType = js_MemoryStorage; /* soft state: every node writes its part again */
    status = js_CreateKeyValue(&backplane->kv, backplane->js, &config);
    if (status != NATS_OK) { /* another node made it meanwhile? */
        log_event(LOG_LEVEL_INFO, "cluster_bucket", "error", nats_GetLastError(NULL), NULL);
        status = js_KeyValue(&backplane->kv, backplane->js, CLUSTER_BUCKET);
    }
    return status;
}

struct nats_backplane *nats_backplane_start(const struct relay_config *config,
                                            void (*wake)(void *context), void *wake_context,
                                            char *error, size_t error_size)
{
    struct nats_backplane *backplane = calloc(1, sizeof(*backplane));
    if (!backplane || !cluster_node_id_generate(backplane->node)) {
        snprintf(error, error_size, "cannot start the cluster backplane");
        free(backplane);
        return NULL;
    }
    pthread_mutex_init(&backplane->lock, NULL);
    pthread_cond_init(&backplane->stop_signal, NULL);
    backplane->wake = wake;
    backplane->wake_context = wake_context;
    const char *step = "connect to NATS at --nats";
    natsStatus status = connect_nats(backplane, config);
    if (status == NATS_OK) {
        step = "open the room directory (JetStream KV; is JetStream enabled?)";
        status = open_directory(backplane);
    }
    char subject[64];
    if (status == NATS_OK) {
        step = "subscribe to this node's subject";
        cluster_node_subject(backplane->node, subject, sizeof(subject));
        status = natsConnection_Subscribe(&backplane->inbox, backplane->connection, subject,
                                          on_message, backplane);
    }
    if (status != NATS_OK) {
        snprintf(error, error_size, "cannot %s: %s", step, natsStatus_GetText(status));
        nats_backplane_stop(backplane);
        return NULL;
    }
    natsSubscription_SetPendingLimits(backplane->inbox, -1, -1);
    int64_t max_payload = natsConnection_GetMaxPayload(backplane->connection);
    size_t max_piece = max_payload > 2 * CLUSTER_ENVELOPE_MAX_HEADER
                           ? (size_t)max_payload - CLUSTER_ENVELOPE_MAX_HEADER
                           : CLUSTER_ENVELOPE_MAX_HEADER;
    backplane->io = (struct relay_cluster_io){
        .context = backplane,
        .node = backplane->node,
        .max_piece = max_piece,
        .wall_clock = wall_clock,
        .claim_code = claim_code,
        .lookup_room = lookup_room,
        .room_changed = room_changed,
        .publish = publish,
    };
    char key[KEY_SIZE];
    cluster_node_key(backplane->node, key, sizeof(key));
    kvStore_PutString(NULL, backplane->kv, key, "alive");
    if (pthread_create(&backplane->heartbeat, NULL, heartbeat_main, backplane) != 0) {
        snprintf(error, error_size, "cannot start the cluster heartbeat thread");
        nats_backplane_stop(backplane);
        return NULL;
    }
    backplane->heartbeat_started = true;
    log_fields(LOG_LEVEL_INFO, "cluster_joined", LOG_TEXT("node", backplane->node),
               LOG_INT("max_piece", (int64_t)max_piece));
    return backplane;
}

const struct relay_cluster_io *nats_backplane_io(struct nats_backplane *backplane)
{
    return &backplane->io;
}

static void free_nothing(void *node)
{
    (void)node; /* entries are freed through their list */
}

static void free_subscription(void *node)
{
    struct room_subscription *room = node;
    natsSubscription_Destroy(room->subscription);
    free(room);
}

void nats_backplane_stop(struct nats_backplane *backplane)
{
    if (!backplane)
        return;
    pthread_mutex_lock(&backplane->lock);
    backplane->stopping = true;
    backplane->wake = NULL;
    pthread_cond_signal(&backplane->stop_signal);
    pthread_mutex_unlock(&backplane->lock);
    if (backplane->heartbeat_started)
        pthread_join(backplane->heartbeat, NULL);
    /* A clean stop takes this node out of the directory at once rather than by expiry. */
    char key[KEY_SIZE];
    bool reachable = backplane->connection && connected(backplane);
    for (struct kept_entry *e = backplane->entries; e && backplane->kv && reachable; e = e->next)
        if (!strncmp(e->key, "members.", 8))
            kvStore_Delete(backplane->kv, e->key);
    if (backplane->kv && reachable && cluster_node_key(backplane->node, key, sizeof(key)))
        kvStore_Delete(backplane->kv, key);
    natsSubscription_Destroy(backplane->inbox);
    tdestroy(backplane->subscriptions, free_subscription);
    kvStore_Destroy(backplane->kv);
    jsCtx_Destroy(backplane->js);
    natsConnection_Destroy(backplane->connection);
    tdestroy(backplane->entry_index, free_nothing);
    while (backplane->entries) {
        struct kept_entry *next = backplane->entries->next;
        free(backplane->entries->value);
        free(backplane->entries);
        backplane->entries = next;
    }
    while (backplane->head) {
        struct inbound_item *next = backplane->head->next;
        natsMsg_Destroy(backplane->head->message);
        free(backplane->head);
        backplane->head = next;
    }
    free(backplane->known);
    free(backplane->buffer);
    pthread_mutex_destroy(&backplane->lock);
    pthread_cond_destroy(&backplane->stop_signal);
    free(backplane);
    /* nats.c's own threads and global state: gone before exit, so leak checkers see none. */
    nats_CloseAndWait(1000);
}
