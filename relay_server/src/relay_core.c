/* relay_core.c — rooms, members and routing: every decision the relay makes, with no I/O.
 * Control messages are parsed with jansson; forwarded text is spliced rather than re-encoded so
 * that what a client sent reaches the others byte for byte, plus the sender fields. */
#include "relay_core.h"

#include <jansson.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <search.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "address_count.h"
#include "address_key.h"
#include "frame_header.h"
#include "log.h"
#include "log_tag.h"
#include "rate_limit.h"
#include "refusal_log.h"
#include "resume_token.h"
#include "room_code.h"
#include "version.h"

#define RESERVED_ROOM_SECONDS 120.0
#define RATE_LIMITER_MAX_ADDRESSES 100000
/* The one "address" of the relay-wide budget of failed joins. */
#define EVERY_ADDRESS "*"
#define RATE_LIMITER_SWEEP_SECONDS 10.0
/* A receiver whose queue grows past this many buffers is not reading at all: close it at once. */
#define HARD_QUEUE_LIMIT_FACTOR 4

struct member {
    struct member *next; /* in the room, in joining order */
    struct room *room;
    struct connection *connection; /* NULL while away (resume grace period) */
    double away_since;
    bool wants_resume;
    /* The features it announced (bits of member_feature_names); MEMBER_SPEAKS_FRAMES marks a
     * client of protocol 2, the only kind that is sent framed binaries. */
    unsigned features;
    char user_id[USER_ID_MAX_BYTES + 1];
    char display_name[DISPLAY_NAME_MAX_BYTES + 1];
    /* `,"sender_id":…,"sender_name":…}` — spliced over the closing brace of forwarded text */
    char *sender_suffix;
    size_t sender_suffix_length;
    /* Cluster: the node the member is connected to ("" for this one), when it joined (orders
     * the merged users list), and whether that node was lost (away until it resumes). */
    char node[CLUSTER_NODE_ID_LENGTH + 1];
    double joined_at;
    bool node_lost;
};

/* Cluster: a binary message arriving from another node, piece by piece. */
struct inbound_stream {
    struct inbound_stream *next;
    char node[CLUSTER_NODE_ID_LENGTH + 1];
    char user_id[USER_ID_MAX_BYTES + 1]; /* its sender */
    uint64_t stream;
    uint32_t next_piece;
    struct relay_message *message;
};

struct room {
    LIST_ENTRY(room) link; /* every live room, for the timers */
    char code[ROOM_CODE_LENGTH + 1];
    char log_tag[LOG_TAG_HEX_LENGTH + 1]; /* what the log says instead of the code */
    struct member *members;
    size_t member_count;   /* including away members */
    double reserved_until; /* an empty room made by POST /api/create-room lives until then */
    /* LAN mode: the host every other member talks to (and the only one they hear from) */
    struct member *hub;
    /* The member who created the room (attested to everyone as `host_id`) while it is in the
     * room; NULL once it left for good. A room reserved over HTTP gets its creator at the
     * first join (`awaiting_creator`). */
    struct member *host;
    bool awaiting_creator;
    /* The address that created (or re-opened, or reserved) the room: it counts against that
     * address's --max-rooms-per-address until the room is deleted. */
    char owner[ADDRESS_KEY_SIZE];
};

struct relay {
    struct relay_config config;
    struct relay_io io;
    unsigned char secret[RELAY_SECRET_BYTES];
    size_t secret_length;
    double now;
    bool shutting_down;

    void *rooms_by_code;     /* tsearch tree of struct room */
    LIST_HEAD(, room) rooms; /* the same rooms, as a list */
    size_t room_count;

    void *connections_by_id;
    LIST_HEAD(, connection) connections;
    size_t connection_count;
    uint64_t next_connection_id;

    size_t members_away;
    /* Failed joins (unknown code) per address, and relay-wide: only failures spend them, so
     * colleagues behind one address who know the code always get in. `resume` needs no budget:
     * its token is checked before the room is looked up, so a bad one says nothing about
     * which codes are live, and a 256-bit HMAC cannot be guessed. */
    struct rate_limiter *failed_joins;
    struct rate_limiter *failed_joins_everywhere;
    struct rate_limiter *room_creations; /* per address */
    struct address_count *rooms_by_address;
    struct address_count *sockets_by_address;    /* open TCP connections, any state */
    struct address_count *handshakes_by_address; /* of those, not yet WebSocket */
    struct refusal_log *refusals;
    double last_sweep;
    json_t *relay_info;    /* the "relay" object of room_created/room_joined */
    struct room *lan_room; /* LAN mode: the one session, while its host is connected */
    struct relay_metrics metrics;
    const struct relay_cluster_io *cluster; /* NULL: a single relay, as without --nats */
    uint64_t last_stream;
    struct inbound_stream *inbound;
};

static bool is_remote(const struct member *member)
{
    return member->node[0] != '\0';
}

/* Away: disconnected within its resume grace, here or (its node lost) on another node. */
static bool is_away(const struct member *member)
{
    return !member->connection && (!is_remote(member) || member->node_lost);
}

static void cluster_sync_room(struct relay *relay, struct room *room);
static void cluster_publish_member(struct relay *relay, struct member *member,
                                   enum cluster_kind kind, bool resumed);
static void cluster_send_piece(struct relay *relay, struct connection *connection,
                               const unsigned char *bytes, size_t length, bool final);
static struct room *load_room(struct relay *relay, const char *code, const char *owner);
static void cluster_start_stream(struct relay *relay, struct connection *connection,
                                 const char **nodes, size_t node_count);
static void cluster_drop_unused(struct relay *relay, struct room *room);
static void end_inbound(struct relay *relay, struct inbound_stream **link);
static void cluster_send_text(struct relay *relay, struct member *sender, const char **nodes,
                              size_t node_count, const char *text, size_t length);

/* Adds `node` to a set of distinct node ids (capacity: the room's member count). */
static void add_node(const char **nodes, size_t *count, const char *node)
{
    for (size_t i = 0; i < *count; i++)
        if (!strcmp(nodes[i], node))
            return;
    nodes[(*count)++] = node;
}

/* --- lookups ---------------------------------------------------------------------------- */

static int compare_rooms(const void *a, const void *b)
{
    return strcmp(((const struct room *)a)->code, ((const struct room *)b)->code);
}

static int compare_connections(const void *a, const void *b)
{
    uint64_t x = ((const struct connection *)a)->id, y = ((const struct connection *)b)->id;
    return (x > y) - (x < y);
}

static struct room *find_room(struct relay *relay, const char *code)
{
    struct room probe;
    memcpy(probe.code, code, sizeof(probe.code));
    void **found = tfind(&probe, &relay->rooms_by_code, compare_rooms);
    return found ? *found : NULL;
}

static struct connection *find_connection(struct relay *relay, uint64_t id)
{
    struct connection probe = {.id = id};
    void **found = tfind(&probe, &relay->connections_by_id, compare_connections);
    return found ? *found : NULL;
}

static struct connection *queue_owner(struct send_queue *queue)
{
    return (struct connection *)((char *)queue - offsetof(struct connection, queue));
}

/* --- sending ---------------------------------------------------------------------------- */

static void begin_close(struct relay *relay, struct connection *connection, int code,
                        const char *reason, int reject_reason);

/* Called after anything was queued for `receiver`. */
static void queued_for(struct relay *relay, struct connection *receiver, bool was_empty)
{
    if (was_empty)
        receiver->last_progress = relay->now;
    uint64_t hard_limit =
        HARD_QUEUE_LIMIT_FACTOR * relay->config.receiver_buffer_bytes + relay->config.max_text_size;
    if (receiver->queue.queued_bytes > hard_limit) {
        begin_close(relay, receiver, CLOSE_SLOW_RECEIVER, "receiver too slow",
                    REJECT_SLOW_RECEIVER);
        return;
    }
    relay->io.want_write(relay->io.context, receiver->transport);
}

/* Queues one complete message for each receiver. */
static void send_to(struct relay *relay, struct connection **receivers, size_t count,
                    uint64_t sender_id, bool is_binary, const void *bytes, size_t length)
{
    struct send_queue *queues[count ? count : 1];
    bool was_empty[count ? count : 1];
    for (size_t i = 0; i < count; i++) {
        queues[i] = &receivers[i]->queue;
        was_empty[i] = receivers[i]->queue.head == NULL;
    }
    relay_message_send(sender_id, is_binary, queues, count, bytes, length);
    for (size_t i = 0; i < count; i++)
        queued_for(relay, receivers[i], was_empty[i]);
}

static void send_text_to(struct relay *relay, struct connection **receivers, size_t count,
                         const char *text, size_t length)
{
    send_to(relay, receivers, count, 0, false, text, length);
}

static void send_json(struct relay *relay, struct connection **receivers, size_t count,
                      json_t *message)
{
    char *text = json_dumps(message, JSON_COMPACT);
    json_decref(message);
    if (!text)
        return;
    send_text_to(relay, receivers, count, text, strlen(text));
    free(text);
}

static void send_error(struct relay *relay, struct connection *connection, const char *code,
                       const char *error, json_t *extra)
{
    json_t *payload = json_pack("{s:s, s:s}", "error", error, "code", code);
    if (extra) {
        json_object_update(payload, extra);
        json_decref(extra);
    }
    send_json(relay, &connection, 1, json_pack("{s:s, s:o}", "type", "error", "payload", payload));
}

static void send_field_error(struct relay *relay, struct connection *connection, const char *field,
                             const char *expected)
{
    char error[160];
    snprintf(error, sizeof(error), "Missing or invalid field '%s': expected %s", field, expected);
    send_error(relay, connection, "INVALID_FIELD", error, json_pack("{s:s}", "field", field));
    relay->metrics.rejected[REJECT_INVALID_MESSAGE]++;
}

/* --- flow control ----------------------------------------------------------------------- */

/* Whether `sender` must wait for `receiver` before sending more of `message`: the receiver's
 * backlog of this message is over `limit`, or the message waits behind others in a queue that
 * is over `limit`. The message at the head of a queue is never held back by what waits behind
 * it, so the oldest message always moves and two senders can never wait on each other. */
static bool must_wait(struct connection *receiver, struct delivery *delivery, uint64_t limit)
{
    if (!delivery)
        return false;
    if (delivery->backlog_bytes > limit)
        return true;
    return receiver->queue.head != delivery && receiver->queue.queued_bytes > limit;
}

static void add_waiter(struct relay *relay, struct connection *receiver, struct connection *sender,
                       struct relay_message *message)
{
    for (size_t i = 0; i < receiver->waiter_count; i++)
        if (receiver->waiters[i].sender_id == sender->id)
            return;
    if (receiver->waiter_count == receiver->waiter_capacity) {
        size_t capacity = receiver->waiter_capacity ? 2 * receiver->waiter_capacity : 4;
        struct waiting_sender *grown =
            realloc(receiver->waiters, capacity * sizeof(struct waiting_sender));
        if (!grown)
            return; /* the sender is not throttled; the hard queue limit still holds */
        receiver->waiters = grown;
        receiver->waiter_capacity = capacity;
    }
    if (receiver->waiter_count == 0)
        receiver->last_progress = relay->now;
    message->references++;
    receiver->waiters[receiver->waiter_count++] =
        (struct waiting_sender){.sender_id = sender->id, .message = message};
    if (sender->blocked_on++ == 0) {
        relay->metrics.senders_throttled_total++;
        relay->io.pause_reading(relay->io.context, sender->transport, true);
    }
}

/* After `message` from `sender` grew: throttle the sender or drop receivers that fell behind. */
static void apply_flow_control(struct relay *relay, struct connection *sender,
                               struct relay_message *message)
{
    uint64_t limit = relay->config.receiver_buffer_bytes;
    for (size_t i = 0; i < message->delivery_count; i++) {
        struct delivery *delivery = message->deliveries[i];
        if (!delivery)
            continue;
        struct connection *receiver = queue_owner(delivery->queue);
        if (receiver->closing || !must_wait(receiver, delivery, limit))
            continue;
        if (relay->config.flow_policy == FLOW_DROP_RECEIVER && receiver != sender)
            begin_close(relay, receiver, CLOSE_SLOW_RECEIVER, "receiver too slow",
                        REJECT_SLOW_RECEIVER);
        else
            add_waiter(relay, receiver, sender, message);
    }
}

/* Lets senders go whose reason to wait on `receiver` is gone (or all of them, with `all`). */
static void release_waiters(struct relay *relay, struct connection *receiver, bool all)
{
    uint64_t resume_below = relay->config.receiver_buffer_bytes / 2;
    size_t kept = 0;
    for (size_t i = 0; i < receiver->waiter_count; i++) {
        struct waiting_sender waiter = receiver->waiters[i];
        struct connection *sender = find_connection(relay, waiter.sender_id);
        struct delivery *delivery = send_queue_find(&receiver->queue, waiter.message);
        if (!all && sender && !sender->closing && must_wait(receiver, delivery, resume_below)) {
            receiver->waiters[kept++] = waiter;
            continue;
        }
        relay_message_release(waiter.message);
        if (sender && --sender->blocked_on == 0 && !sender->closing) {
            sender->last_heard = relay->now;
            relay->io.pause_reading(relay->io.context, sender->transport, false);
        }
    }
    receiver->waiter_count = kept;
}

/* --- rooms and members ------------------------------------------------------------------ */

/* The features a client may announce in create_room/join_room/resume/hello, as listed back in
 * its user-list entry so that every member knows who speaks what (mixed rooms). */
static const char *const member_feature_names[] = {
    FEATURE_FRAME_HEADER, FEATURE_DIRECTED, FEATURE_RESUME, FEATURE_FLOW_CONTROL, FEATURE_HOST_ID};
#define MEMBER_FEATURE_COUNT (sizeof(member_feature_names) / sizeof(member_feature_names[0]))
#define MEMBER_SPEAKS_FRAMES 1u /* bit of "frame_header" */

static unsigned announced_features(json_t *payload)
{
    unsigned bits = 0;
    size_t i;
    json_t *feature;
    json_array_foreach(json_object_get(payload, "features"), i, feature)
    {
        for (size_t k = 0; json_is_string(feature) && k < MEMBER_FEATURE_COUNT; k++)
            if (!strcmp(json_string_value(feature), member_feature_names[k]))
                bits |= 1u << k;
    }
    return bits;
}

/* `{user_id, display_name}`, as in v1; a protocol-2 member's entry also lists its features. */
static json_t *user_entry(const struct member *m)
{
    json_t *entry = json_pack("{s:s, s:s}", "user_id", m->user_id, "display_name", m->display_name);
    if (m->features & MEMBER_SPEAKS_FRAMES) {
        json_t *features = json_array();
        for (size_t k = 0; k < MEMBER_FEATURE_COUNT; k++)
            if (m->features & (1u << k))
                json_array_append_new(features, json_string(member_feature_names[k]));
        json_object_set_new(entry, "features", features);
    }
    return entry;
}

static json_t *user_list(const struct room *room)
{
    json_t *users = json_array();
    for (const struct member *m = room->members; m; m = m->next)
        json_array_append_new(users, user_entry(m));
    return users;
}

/* The attested host's user_id, or null when the creator has left the room. */
static json_t *host_id_of(const struct room *room)
{
    return room->host ? json_string(room->host->user_id) : json_null();
}

/* The connected members of a room other than `except`, into `out` (capacity: member_count). */
static size_t connected_members(const struct room *room, const struct member *except,
                                struct connection **out)
{
    size_t count = 0;
    for (const struct member *m = room->members; m; m = m->next)
        if (m != except && m->connection && !m->connection->closing)
            out[count++] = m->connection;
    return count;
}

/* LAN mode narrows `count` receivers of what `sender` sends to the host alone (none when the
 * sender is the host, whose messages go to everyone): members talk only to the host. */
static size_t lan_hub_only(const struct room *room, const struct member *sender,
                           struct connection **receivers, size_t count)
{
    if (sender == room->hub)
        return count;
    for (size_t i = 0; i < count; i++)
        if (receivers[i] == room->hub->connection) {
            receivers[0] = receivers[i];
            return 1;
        }
    return 0;
}

/* Sends `type` {user_id, display_name, users, ...extra} to everyone in the room but `subject`. */
static void tell_room(struct relay *relay, struct room *room, struct member *subject,
                      const char *type, json_t *extra)
{
    struct connection *receivers[room->member_count + 1];
    size_t count = connected_members(room, subject, receivers);
    if (room->hub) /* LAN: the host keeps the members informed itself (user_list) */
        count = lan_hub_only(room, subject, receivers, count);
    json_t *payload =
        json_pack("{s:s, s:s, s:o, s:o}", "user_id", subject->user_id, "display_name",
                  subject->display_name, "users", user_list(room), "host_id", host_id_of(room));
    if (extra) {
        json_object_update(payload, extra);
        json_decref(extra);
    }
    json_t *message = json_pack("{s:s, s:o}", "type", type, "payload", payload);
    if (count)
        send_json(relay, receivers, count, message);
    else
        json_decref(message);
}

/* A new empty room, counted against `owner`'s quota (the caller checked it has room). */
static struct room *create_room(struct relay *relay, const char *code, const char *owner)
{
    struct room *room = calloc(1, sizeof(*room));
    if (!room)
        return NULL;
    memcpy(room->code, code, sizeof(room->code));
    log_tag_make(relay->secret, relay->secret_length, code, room->log_tag);
    if (!address_count_take(relay->rooms_by_address, owner, UINT_MAX)) {
        free(room);
        return NULL;
    }
    address_key(owner, room->owner);
    if (!tsearch(room, &relay->rooms_by_code, compare_rooms)) {
        address_count_release(relay->rooms_by_address, room->owner);
        free(room);
        return NULL;
    }
    LIST_INSERT_HEAD(&relay->rooms, room, link);
    relay->room_count++;
    relay->metrics.rooms_created_total++;
    return room;
}

static void delete_room(struct relay *relay, struct room *room)
{
    if (relay->lan_room == room)
        relay->lan_room = NULL;
    tdelete(room, &relay->rooms_by_code, compare_rooms);
    LIST_REMOVE(room, link);
    relay->room_count--;
    address_count_release(relay->rooms_by_address, room->owner);
    log_event(LOG_LEVEL_INFO, "room_deleted", "room", room->log_tag, NULL);
    free(room);
}

static size_t local_members(const struct room *room)
{
    size_t count = 0;
    for (const struct member *m = room->members; m; m = m->next)
        count += !is_remote(m);
    return count;
}

static bool new_room_code(struct relay *relay, char code[ROOM_CODE_LENGTH + 1])
{
    /* 2^30 codes: a collision is rare while the relay is far from full; retry a few times. */
    for (int attempt = 0; attempt < 64; attempt++) {
        if (!room_code_generate(code) || find_room(relay, code))
            continue;
        if (!relay->cluster)
            return true;
        /* Unique cluster-wide: the directory's create fails for a code another node holds. */
        int claimed = relay->cluster->claim_code(relay->cluster->context, code);
        if (claimed != 0)
            return claimed > 0;
    }
    return false;
}

/* `,"sender_id":…,"sender_name":…}`, spliced over the closing brace of what it sends. */
static bool make_sender_suffix(struct member *member)
{
    json_t *fields =
        json_pack("{s:s, s:s}", "sender_id", member->user_id, "sender_name", member->display_name);
    char *encoded = json_dumps(fields, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(fields);
    if (!encoded)
        return false;
    encoded[0] = ','; /* `{"sender_id":…}` becomes `,"sender_id":…}` */
    member->sender_suffix = encoded;
    member->sender_suffix_length = strlen(encoded);
    return true;
}

static struct member *add_member(struct room *room, struct connection *connection,
                                 const char *user_id, const char *display_name, bool wants_resume,
                                 unsigned features)
{
    struct member *member = calloc(1, sizeof(*member));
    if (!member)
        return NULL;
    snprintf(member->user_id, sizeof(member->user_id), "%s", user_id);
    snprintf(member->display_name, sizeof(member->display_name), "%s", display_name);
    if (!make_sender_suffix(member)) {
        free(member);
        return NULL;
    }
    member->room = room;
    member->connection = connection;
    member->wants_resume = wants_resume;
    member->features = features;
    struct member **tail = &room->members;
    while (*tail)
        tail = &(*tail)->next;
    *tail = member;
    room->member_count++;
    room->reserved_until = 0;
    connection->member = member;
    return member;
}

/* Takes a member out of its room for good: the others get user_left; an empty room goes. */
static void remove_member(struct relay *relay, struct member *member)
{
    struct room *room = member->room;
    struct member **link = &room->members;
    while (*link != member)
        link = &(*link)->next;
    *link = member->next;
    room->member_count--;
    bool local = !is_remote(member);
    if (member->connection)
        member->connection->member = NULL;
    else if (local)
        relay->members_away--;
    if (local)
        cluster_publish_member(relay, member, CLUSTER_LEAVE, false);
    log_event(LOG_LEVEL_INFO, "user_left", "room", room->log_tag, "user", member->user_id, NULL);
    if (member == room->host)
        room->host = NULL; /* nobody inherits the creator's attestation */
    if (member == room->hub) {
        /* Without its host a LAN session cannot go on: send its members away. */
        room->hub = NULL;
        relay->lan_room = NULL;
        for (struct member *m = room->members; m; m = m->next)
            if (m->connection && !m->connection->closing)
                begin_close(relay, m->connection, CLOSE_GOING_AWAY, "the LAN host left", -1);
    } else if (room->member_count > 0) {
        tell_room(relay, room, member, "user_left", NULL);
    }
    free(member->sender_suffix);
    free(member);
    if (room->member_count == 0) {
        if (relay->cluster && local)
            relay->cluster->room_changed(relay->cluster->context, room->code, NULL);
        delete_room(relay, room);
    } else if (local) {
        cluster_sync_room(relay, room);
    }
}

static json_t *membership_payload(struct relay *relay, struct member *member)
{
    json_t *payload = json_pack("{s:s, s:O, s:o}", "room_code", member->room->code, "relay",
                                relay->relay_info, "host_id", host_id_of(member->room));
    if (member->wants_resume) {
        char token[RESUME_TOKEN_HEX_LENGTH + 1];
        enum resume_role role = member == member->room->host ? RESUME_HOST : RESUME_MEMBER;
        if (resume_token_make_as(relay->secret, relay->secret_length, member->room->code,
                                 member->user_id, role, token))
            json_object_set_new(payload, "resume_token", json_string(token));
    }
    return payload;
}

static void send_room_joined(struct relay *relay, struct member *member, bool resumed)
{
    json_t *payload = membership_payload(relay, member);
    json_object_set_new(payload, "users", user_list(member->room));
    if (resumed)
        json_object_set_new(payload, "resumed", json_true());
    struct connection *connection = member->connection;
    send_json(relay, &connection, 1,
              json_pack("{s:s, s:o}", "type", "room_joined", "payload", payload));
}

/* --- control messages ------------------------------------------------------------------- */

/* Reads a string field of 1..max bytes (0..max with allow_empty); answers INVALID_FIELD if not. */
static const char *string_field(struct relay *relay, struct connection *connection, json_t *payload,
                                const char *field, size_t max, bool allow_empty)
{
    json_t *value = json_object_get(payload, field);
    size_t length = json_is_string(value) ? json_string_length(value) : 0;
    if (!json_is_string(value) || length > max || (length == 0 && !allow_empty) ||
        strlen(json_string_value(value)) != length) {
        char expected[64];
        snprintf(expected, sizeof(expected), "a string of %s to %zu bytes", allow_empty ? "0" : "1",
                 max);
        send_field_error(relay, connection, field, expected);
        return NULL;
    }
    return json_string_value(value);
}

struct identity {
    const char *user_id;
    const char *display_name;
    bool wants_resume;
    unsigned features; /* bits of member_feature_names */
};

static bool read_identity(struct relay *relay, struct connection *connection, json_t *payload,
                          struct identity *identity)
{
    identity->user_id =
        string_field(relay, connection, payload, "user_id", USER_ID_MAX_BYTES, false);
    if (!identity->user_id)
        return false;
    identity->display_name = "";
    if (json_object_get(payload, "display_name")) {
        identity->display_name =
            string_field(relay, connection, payload, "display_name", DISPLAY_NAME_MAX_BYTES, true);
        if (!identity->display_name)
            return false;
    }
    identity->wants_resume = false;
    json_t *features = json_object_get(payload, "features");
    size_t i;
    json_t *feature;
    json_array_foreach(features, i,
                       feature) if (json_is_string(feature) &&
                                    !strcmp(json_string_value(feature), FEATURE_RESUME))
        identity->wants_resume = true;
    identity->features = announced_features(payload);
    return true;
}

static void leave_current_room(struct relay *relay, struct connection *connection)
{
    if (connection->member)
        remove_member(relay, connection->member);
}

static void rate_limited(struct relay *relay, struct connection *connection, const char *error,
                         double retry_after)
{
    send_error(relay, connection, "RATE_LIMITED", error,
               json_pack("{s:i}", "retry_after", (int)(retry_after + 0.999)));
}

/* LAN hello: every attempt counts (there is no code to guess, but a flood is still refused). */
static bool allow_join_attempt(struct relay *relay, struct connection *connection)
{
    double retry_after = 0;
    if (rate_limiter_allow(relay->failed_joins, connection->peer_address, relay->now, &retry_after))
        return true;
    relay->metrics.rejected[REJECT_RATE_LIMITED]++;
    rate_limited(relay, connection, "Too many join attempts; try again later", retry_after);
    return false;
}

/* Before a join is evaluated: refused, unevaluated, once this address or the relay as a whole
 * has used its budget of failed attempts, so that a guesser learns nothing more. */
static bool join_budget_left(struct relay *relay, struct connection *connection)
{
    double retry_after = 0;
    if (!rate_limiter_check(relay->failed_joins, connection->peer_address, relay->now,
                            &retry_after)) {
        relay->metrics.rejected[REJECT_RATE_LIMITED]++;
        rate_limited(relay, connection, "Too many failed join attempts; try again later",
                     retry_after);
        return false;
    }
    if (!rate_limiter_check(relay->failed_joins_everywhere, EVERY_ADDRESS, relay->now,
                            &retry_after)) {
        relay->metrics.rejected[REJECT_GLOBAL_JOIN_BUDGET]++;
        rate_limited(relay, connection, "The relay is refusing joins for a moment; try again later",
                     retry_after);
        return false;
    }
    return true;
}

/* A join named no live room: that is what guessing costs. */
static void join_failed(struct relay *relay, struct connection *connection)
{
    rate_limiter_spend(relay->failed_joins, connection->peer_address, relay->now);
    rate_limiter_spend(relay->failed_joins_everywhere, EVERY_ADDRESS, relay->now);
}

static bool room_has_space(struct relay *relay, struct connection *connection, struct room *room)
{
    if (room->member_count < relay->config.max_room_members)
        return true;
    relay->metrics.rejected[REJECT_ROOM_FULL]++;
    send_error(relay, connection, "ROOM_FULL", "Room is full", NULL);
    return false;
}

/* Whether `address` may have one more room: the relay's --max-rooms, and the address's share,
 * so that one address cannot fill the room table (rooms in their resume grace and reserved
 * rooms count too). NULL if so, else the error code, counted in the metrics. */
static const char *room_quota_refusal(struct relay *relay, const char *address)
{
    if (relay->room_count >= relay->config.max_rooms) {
        relay->metrics.rejected[REJECT_TOO_MANY_ROOMS]++;
        return "TOO_MANY_ROOMS";
    }
    if (address_count_get(relay->rooms_by_address, address) >=
        relay->config.max_rooms_per_address) {
        relay->metrics.rejected[REJECT_ROOMS_PER_ADDRESS]++;
        return "TOO_MANY_ROOMS_FOR_ADDRESS";
    }
    return NULL;
}

static bool can_create_room(struct relay *relay, struct connection *connection)
{
    const char *refusal = room_quota_refusal(relay, connection->peer_address);
    if (!refusal)
        return true;
    send_error(relay, connection, "TOO_MANY_ROOMS",
               strcmp(refusal, "TOO_MANY_ROOMS") == 0
                   ? "The relay has too many rooms"
                   : "This address has too many rooms open; close some first",
               NULL);
    return false;
}

/* create_room (WebSocket) and POST /api/create-room: a room per address per so often. */
static bool creation_allowed(struct relay *relay, const char *address, double *retry_after)
{
    if (rate_limiter_allow(relay->room_creations, address, relay->now, retry_after))
        return true;
    relay->metrics.rejected[REJECT_RATE_LIMITED]++;
    return false;
}

static struct member *find_member(struct room *room, const char *user_id)
{
    for (struct member *m = room->members; m; m = m->next)
        if (!strcmp(m->user_id, user_id))
            return m;
    return NULL;
}

/* A user_id names one member of a room: a member who is connected or away (in its resume grace)
 * keeps it, so nobody can take another's place, and with it directed messages meant for it.
 * Only `resume` with that member's token takes an id over. */
static bool user_id_free(struct relay *relay, struct connection *connection, struct room *room,
                         const char *user_id)
{
    if (!find_member(room, user_id))
        return true;
    relay->metrics.rejected[REJECT_USER_ID_TAKEN]++;
    send_error(relay, connection, "USER_ID_TAKEN", "This user_id is already in the room", NULL);
    return false;
}

/* --- LAN mode: one session, a host (the AggregationServer) and members who say hello ------ */

static void refuse_in_lan_mode(struct relay *relay, struct connection *connection)
{
    relay->metrics.rejected[REJECT_INVALID_MESSAGE]++;
    send_error(relay, connection, "LAN_SESSION",
               "This is a LAN session, not a relay: connect with hello", NULL);
}

/* create_room with the host token: the host opens the session (once). */
static void open_lan_session(struct relay *relay, struct connection *connection, json_t *payload)
{
    json_t *token = json_object_get(payload, "host_token");
    const char *expected = relay->config.lan_host_token;
    size_t length = strlen(expected);
    if (!json_is_string(token) || json_string_length(token) != length ||
        CRYPTO_memcmp(json_string_value(token), expected, length) != 0) {
        refuse_in_lan_mode(relay, connection);
        return;
    }
    if (relay->lan_room) {
        send_error(relay, connection, "LAN_HOST_TAKEN", "The LAN session already has a host", NULL);
        return;
    }
    struct identity identity;
    if (!read_identity(relay, connection, payload, &identity))
        return;
    leave_current_room(relay, connection);
    char code[ROOM_CODE_LENGTH + 1];
    struct room *room =
        new_room_code(relay, code) ? create_room(relay, code, connection->peer_address) : NULL;
    struct member *host = room ? add_member(room, connection, identity.user_id,
                                            identity.display_name, false, identity.features)
                               : NULL;
    if (!host) {
        if (room)
            delete_room(relay, room);
        send_error(relay, connection, "INTERNAL", "Could not open the LAN session", NULL);
        return;
    }
    room->hub = host;
    room->host = host;
    relay->lan_room = room;
    log_event(LOG_LEVEL_INFO, "lan_session_opened", "room", room->log_tag, "user", identity.user_id,
              "peer", connection->peer_address, NULL);
    send_json(relay, &connection, 1,
              json_pack("{s:s, s:o}", "type", "room_created", "payload",
                        membership_payload(relay, host)));
}

/* hello {user_id, display_name}: a member joins the session; the host answers it (welcome). */
static void handle_hello(struct relay *relay, struct connection *connection, json_t *payload)
{
    struct identity identity;
    if (!allow_join_attempt(relay, connection) ||
        !read_identity(relay, connection, payload, &identity))
        return;
    struct room *room = relay->lan_room;
    if (!room) {
        relay->metrics.rejected[REJECT_ROOM_NOT_FOUND]++;
        send_error(relay, connection, "NO_HOST", "The LAN session has no host yet", NULL);
        return;
    }
    if (connection->member && connection->member->room == room)
        return; /* said hello twice: already in */
    if (!user_id_free(relay, connection, room, identity.user_id) ||
        !room_has_space(relay, connection, room))
        return;
    leave_current_room(relay, connection);
    struct member *member = add_member(room, connection, identity.user_id, identity.display_name,
                                       false, identity.features);
    if (!member)
        return;
    log_event(LOG_LEVEL_INFO, "user_joined", "room", room->log_tag, "user", identity.user_id,
              "peer", connection->peer_address, NULL);
    tell_room(relay, room, member, "user_joined", NULL);
}

static void handle_create_room(struct relay *relay, struct connection *connection, json_t *payload)
{
    struct identity identity;
    if (!read_identity(relay, connection, payload, &identity))
        return;
    leave_current_room(relay, connection);
    char code[ROOM_CODE_LENGTH + 1];
    if (!can_create_room(relay, connection))
        return;
    double retry_after = 0;
    if (!creation_allowed(relay, connection->peer_address, &retry_after)) {
        rate_limited(relay, connection, "Too many rooms created; try again later", retry_after);
        return;
    }
    struct room *room =
        new_room_code(relay, code) ? create_room(relay, code, connection->peer_address) : NULL;
    if (!room ||
        !(room->host = add_member(room, connection, identity.user_id, identity.display_name,
                                  identity.wants_resume, identity.features))) {
        if (room && room->member_count == 0)
            delete_room(relay, room);
        send_error(relay, connection, "INTERNAL", "Could not create a room", NULL);
        return;
    }
    log_event(LOG_LEVEL_INFO, "room_created", "room", room->log_tag, "user", identity.user_id,
              "peer", connection->peer_address, NULL);
    cluster_sync_room(relay, room);
    send_json(relay, &connection, 1,
              json_pack("{s:s, s:o}", "type", "room_created", "payload",
                        membership_payload(relay, connection->member)));
}

/* Looks up the code in a join or resume after the rate limit; NULL (answered) if absent. */
static bool read_room_code(struct relay *relay, struct connection *connection, json_t *payload,
                           char code[ROOM_CODE_LENGTH + 1])
{
    json_t *value = json_object_get(payload, "room_code");
    if (!json_is_string(value)) {
        send_field_error(relay, connection, "room_code", "a string");
        return false;
    }
    if (!room_code_normalize(json_string_value(value), code))
        code[0] = '\0'; /* cannot name a room: answered as not found, like the original */
    return true;
}

static void room_not_found(struct relay *relay, struct connection *connection)
{
    relay->metrics.rejected[REJECT_ROOM_NOT_FOUND]++;
    send_error(relay, connection, "ROOM_NOT_FOUND", "Room not found", NULL);
}

/* What join_room and resume start with: the room code and the identity (answered if bad). */
static bool read_join_request(struct relay *relay, struct connection *connection, json_t *payload,
                              char code[ROOM_CODE_LENGTH + 1], struct identity *identity)
{
    return read_room_code(relay, connection, payload, code) &&
           read_identity(relay, connection, payload, identity);
}

static void handle_join_room(struct relay *relay, struct connection *connection, json_t *payload)
{
    char code[ROOM_CODE_LENGTH + 1];
    struct identity identity;
    /* The budget first, so that guesses beyond it are refused without being evaluated. */
    if (!join_budget_left(relay, connection) ||
        !read_join_request(relay, connection, payload, code, &identity))
        return;
    struct room *room = code[0] ? load_room(relay, code, connection->peer_address) : NULL;
    if (!room) {
        join_failed(relay, connection);
        room_not_found(relay, connection);
        return;
    }
    if (connection->member && connection->member->room == room) {
        send_room_joined(relay, connection->member, false); /* already there: say so again */
        return;
    }
    if (!user_id_free(relay, connection, room, identity.user_id) ||
        !room_has_space(relay, connection, room)) {
        cluster_drop_unused(relay, room);
        return;
    }
    leave_current_room(relay, connection);
    struct member *member = add_member(room, connection, identity.user_id, identity.display_name,
                                       identity.wants_resume, identity.features);
    if (!member) {
        cluster_drop_unused(relay, room);
        return;
    }
    if (room->awaiting_creator) {
        room->awaiting_creator = false;
        room->host = member;
    }
    log_event(LOG_LEVEL_INFO, "user_joined", "room", room->log_tag, "user", identity.user_id,
              "peer", connection->peer_address, NULL);
    send_room_joined(relay, member, false);
    tell_room(relay, room, member, "user_joined", NULL);
    cluster_sync_room(relay, room);
    cluster_publish_member(relay, member, CLUSTER_JOIN, false);
}

static void handle_resume(struct relay *relay, struct connection *connection, json_t *payload)
{
    char code[ROOM_CODE_LENGTH + 1];
    struct identity identity;
    if (!read_join_request(relay, connection, payload, code, &identity))
        return;
    const char *token =
        string_field(relay, connection, payload, "resume_token", RESUME_TOKEN_HEX_LENGTH, false);
    if (!token)
        return;
    enum resume_role role = RESUME_MEMBER;
    if (!code[0] || !resume_token_verify(relay->secret, relay->secret_length, code,
                                         identity.user_id, token, &role)) {
        relay->metrics.rejected[REJECT_INVALID_RESUME_TOKEN]++;
        send_error(relay, connection, "INVALID_RESUME_TOKEN", "Invalid resume token", NULL);
        return;
    }
    struct room *room = find_room(relay, code);
    struct member *member = room ? find_member(room, identity.user_id) : NULL;
    if (member && member->connection == connection) {
        send_room_joined(relay, member, true);
        return;
    }
    if (connection->member)
        leave_current_room(relay, connection);
    /* Leaving may have emptied and deleted it; in a cluster it may live on other nodes. */
    room = load_room(relay, code, connection->peer_address);
    member = room ? find_member(room, identity.user_id) : NULL;
    if (member) {
        /* Back within the grace period (or before the old connection was found dead), or, in
         * a cluster, moved here from another node. */
        struct connection *old = member->connection;
        bool moved = is_remote(member);
        if (old) {
            old->member = NULL;
            begin_close(relay, old, CLOSE_NORMAL, "resumed on another connection", -1);
        } else if (!moved) {
            relay->members_away--;
        }
        member->node[0] = '\0';
        member->node_lost = false;
        member->connection = connection;
        member->wants_resume = true;
        member->features = identity.features; /* the new connection may be another client */
        connection->member = member;
        if (role == RESUME_HOST && !member->room->host)
            member->room->host = member;
        log_event(LOG_LEVEL_INFO, "user_resumed", "room", member->room->log_tag, "user",
                  member->user_id, "peer", connection->peer_address, NULL);
        send_room_joined(relay, member, true);
        if (moved) {
            cluster_sync_room(relay, member->room);
            cluster_publish_member(relay, member, CLUSTER_JOIN, true);
        }
        return;
    }
    if (!room) {
        if (!can_create_room(relay, connection) ||
            !(room = create_room(relay, code, connection->peer_address)))
            return;
        if (relay->cluster) /* the directory had no such room: hold its code again */
            relay->cluster->claim_code(relay->cluster->context, code);
        log_event(LOG_LEVEL_INFO, "room_reopened", "room", room->log_tag, "user", identity.user_id,
                  NULL);
    } else if (!room_has_space(relay, connection, room)) {
        cluster_drop_unused(relay, room);
        return;
    }
    member = add_member(room, connection, identity.user_id, identity.display_name, true,
                        identity.features);
    if (!member) {
        if (room->member_count == 0)
            delete_room(relay, room);
        else
            cluster_drop_unused(relay, room);
        return;
    }
    /* The creator's token re-attests it as host after a restart or after it had left. */
    if (role == RESUME_HOST && !room->host)
        room->host = member;
    log_event(LOG_LEVEL_INFO, "user_resumed", "room", room->log_tag, "user", member->user_id,
              "peer", connection->peer_address, NULL);
    send_room_joined(relay, member, true);
    tell_room(relay, room, member, "user_joined", json_pack("{s:b}", "resumed", 1));
    cluster_sync_room(relay, room);
    cluster_publish_member(relay, member, CLUSTER_JOIN, true);
}

/* Whether `user_id` is named by a directed message's `to` list (NULL list: everyone). */
static bool addressed_to(json_t *to, const char *user_id)
{
    if (!to)
        return true;
    size_t i;
    json_t *name;
    json_array_foreach(to, i, name) if (!strcmp(json_string_value(name), user_id)) return true;
    return false;
}

/* Any other type: to the other members (or those named in `to`), with the sender fields. */
static void forward_text(struct relay *relay, struct connection *connection, json_t *root,
                         const char *text, size_t length)
{
    struct member *sender = connection->member;
    if (!sender) {
        relay->metrics.dropped[DROP_NOT_IN_ROOM]++;
        return;
    }
    json_t *to = json_object_get(root, "to");
    if (to) {
        bool valid = json_is_array(to);
        size_t i;
        json_t *name;
        json_array_foreach(to, i, name) valid = valid && json_is_string(name);
        if (!valid) {
            send_field_error(relay, connection, "to", "a list of user_id strings");
            return;
        }
    }
    struct room *room = sender->room;
    struct connection *receivers[room->member_count + 1];
    const char *nodes[room->member_count + 1]; /* other nodes with receivers (cluster) */
    size_t count = 0, node_count = 0;
    for (struct member *m = room->members; m; m = m->next) {
        if (is_remote(m) && !m->node_lost && addressed_to(to, m->user_id))
            add_node(nodes, &node_count, m->node);
        if (m != sender && m->connection && !m->connection->closing && addressed_to(to, m->user_id))
            receivers[count++] = m->connection;
    }
    if (room->hub)
        count = lan_hub_only(room, sender, receivers, count);
    if (count == 0 && node_count == 0) {
        relay->metrics.dropped[DROP_NO_RECIPIENT]++;
        return;
    }

    if (json_object_get(root, "sender_id") || json_object_get(root, "sender_name")) {
        /* The client set these itself: the relay's values win, as in the original. */
        json_object_set_new(root, "sender_id", json_string(sender->user_id));
        json_object_set_new(root, "sender_name", json_string(sender->display_name));
        char *encoded = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (encoded) {
            if (count)
                send_text_to(relay, receivers, count, encoded, strlen(encoded));
            cluster_send_text(relay, sender, nodes, node_count, encoded, strlen(encoded));
            free(encoded);
        }
        return;
    }
    /* Splice the sender fields over the closing brace, keeping the client's bytes as sent. */
    size_t end = length;
    while (end > 0 && text[end - 1] != '}')
        end--;
    size_t spliced_length = end - 1 + sender->sender_suffix_length;
    char *spliced = malloc(spliced_length);
    if (!spliced)
        return;
    memcpy(spliced, text, end - 1);
    memcpy(spliced + end - 1, sender->sender_suffix, sender->sender_suffix_length);
    if (count)
        send_text_to(relay, receivers, count, spliced, spliced_length);
    cluster_send_text(relay, sender, nodes, node_count, spliced, spliced_length);
    free(spliced);
}

/* The control messages of a LAN session; everything else is forwarded (members to the host). */
static void handle_lan_text(struct relay *relay, struct connection *connection, json_t *root,
                            const char *name, json_t *payload, const char *text, size_t length)
{
    if (!strcmp(name, "create_room"))
        open_lan_session(relay, connection, payload);
    else if (!strcmp(name, "hello"))
        handle_hello(relay, connection, payload);
    else if (!strcmp(name, "join_room") || !strcmp(name, "resume"))
        refuse_in_lan_mode(relay, connection);
    else if (!strcmp(name, "leave_room"))
        leave_current_room(relay, connection);
    else
        forward_text(relay, connection, root, text, length);
}

static void handle_text(struct relay *relay, struct connection *connection, const char *text,
                        size_t length)
{
    json_error_t error;
    json_t *root = json_loadb(text, length, JSON_DECODE_ANY, &error);
    if (!root) {
        relay->metrics.rejected[REJECT_INVALID_MESSAGE]++;
        send_error(relay, connection, "INVALID_JSON", "Invalid message format",
                   json_pack("{s:s}", "details", error.text));
        return;
    }
    json_t *type = json_object_get(root, "type");
    json_t *payload = json_object_get(root, "payload");
    const char *problem = !json_is_object(root)   ? "expected a JSON object"
                          : !json_is_string(type) ? "expected a string field 'type'"
                          : payload && !json_is_object(payload)
                              ? "expected 'payload' to be an object"
                              : NULL;
    if (problem) {
        relay->metrics.rejected[REJECT_INVALID_MESSAGE]++;
        send_error(relay, connection, "INVALID_MESSAGE", "Invalid message format",
                   json_pack("{s:s}", "details", problem));
        json_decref(root);
        return;
    }
    const char *name = json_string_value(type);
    json_t *empty = json_object();
    if (!payload)
        payload = empty;
    if (relay->config.lan_mode)
        handle_lan_text(relay, connection, root, name, payload, text, length);
    else if (!strcmp(name, "create_room"))
        handle_create_room(relay, connection, payload);
    else if (!strcmp(name, "join_room"))
        handle_join_room(relay, connection, payload);
    else if (!strcmp(name, "resume"))
        handle_resume(relay, connection, payload);
    else if (!strcmp(name, "leave_room"))
        leave_current_room(relay, connection);
    else
        forward_text(relay, connection, root, text, length);
    json_decref(empty);
    json_decref(root);
}

/* --- binary messages -------------------------------------------------------------------- */

static void stop_forwarding(struct relay *relay, struct connection *connection, bool truncated)
{
    if (connection->forwarding) {
        if (truncated && !connection->forwarding->complete)
            relay->metrics.dropped[DROP_TRUNCATED]++;
        relay_message_finish_sending(connection->forwarding);
        connection->forwarding = NULL;
    }
    if (connection->cluster_stream) /* ends the other nodes' copy early, as the local ones */
        cluster_send_piece(relay, connection, NULL, 0, true);
    free(connection->sniff);
    connection->sniff = NULL;
    connection->sniff_length = 0;
}

/* Starts streaming the connection's binary message to `receivers`. */
static void start_forwarding(struct connection *connection, struct connection **receivers,
                             size_t count)
{
    struct send_queue *queues[count ? count : 1];
    for (size_t i = 0; i < count; i++)
        queues[i] = &receivers[i]->queue;
    connection->forwarding = relay_message_start(connection->id, true, queues, count);
}

/* Decides who gets a binary message, from its frame header when it has one. Returns false while
 * more bytes are needed; sets *drop when the message goes nowhere. */
static bool route_binary(struct relay *relay, struct connection *connection,
                         const unsigned char *bytes, size_t length, bool final, bool *drop)
{
    struct member *sender = connection->member;
    struct frame_header header;
    size_t needed = 0;
    const char *why = NULL;
    enum frame_parse_result parsed = frame_header_parse(bytes, length, &header, &needed, &why);
    if (parsed == FRAME_NEED_MORE && final && length < FRAME_MAGIC_SIZE)
        parsed = FRAME_NOT_OURS; /* too short to hold the magic: a v1 payload */
    if (parsed == FRAME_NEED_MORE && !final)
        return false;
    if (parsed == FRAME_NEED_MORE)
        why = "message ends inside its header";
    if (parsed == FRAME_OK &&
        (header.sender.length != strlen(sender->user_id) ||
         memcmp(header.sender.bytes, sender->user_id, header.sender.length) != 0)) {
        parsed = FRAME_MALFORMED;
        why = "header names another sender";
    }
    if (parsed == FRAME_MALFORMED || parsed == FRAME_NEED_MORE) {
        relay->metrics.dropped[DROP_BAD_FRAME_HEADER]++;
        send_error(relay, connection, "BAD_FRAME_HEADER", "Malformed binary frame header",
                   json_pack("{s:s}", "details", why));
        *drop = true;
        return true;
    }
    struct room *room = sender->room;
    struct connection *receivers[room->member_count + 1];
    const char *nodes[room->member_count + 1]; /* other nodes with receivers (cluster) */
    size_t count = 0, node_count = 0;
    bool framed = parsed == FRAME_OK;
    for (struct member *m = room->members; m; m = m->next) {
        bool remote = is_remote(m) && !m->node_lost;
        if (m == sender || (!remote && (!m->connection || m->connection->closing)))
            continue;
        /* A binary goes only to members that read its format: framed ones never reach an
         * original (v1) client, and the original-format copies a protocol-2 client sends
         * for original members never reach a protocol-2 member (it gets the framed copy). */
        bool speaks_frames = m->features & MEMBER_SPEAKS_FRAMES;
        if (framed ? !speaks_frames : (sender->features & MEMBER_SPEAKS_FRAMES) && speaks_frames)
            continue;
        bool wanted = !framed || header.recipient_count == 0;
        size_t cursor = 0;
        struct frame_id recipient;
        while (!wanted && frame_header_next_recipient(&header, &cursor, &recipient))
            wanted = recipient.length == strlen(m->user_id) &&
                     !memcmp(recipient.bytes, m->user_id, recipient.length);
        if (wanted && remote)
            add_node(nodes, &node_count, m->node);
        else if (wanted)
            receivers[count++] = m->connection;
    }
    if (room->hub)
        count = lan_hub_only(room, sender, receivers, count);
    if (count == 0 && node_count == 0) {
        relay->metrics.dropped[DROP_NO_RECIPIENT]++;
        *drop = true;
        return true;
    }
    start_forwarding(connection, receivers, count);
    *drop = connection->forwarding == NULL;
    if (!*drop && node_count)
        cluster_start_stream(relay, connection, nodes, node_count);
    return true;
}

/* Appends to the message being forwarded and wakes its receivers. */
static void forward_bytes(struct relay *relay, struct connection *connection,
                          const unsigned char *bytes, size_t length, bool final)
{
    struct relay_message *message = connection->forwarding;
    bool was_empty[message->delivery_count + 1];
    for (size_t i = 0; i < message->delivery_count; i++)
        was_empty[i] = message->deliveries[i] && message->deliveries[i]->queue->queued_bytes == 0;
    relay_message_append(message, bytes, length, final);
    if (connection->cluster_stream)
        cluster_send_piece(relay, connection, bytes, length, final);
    for (size_t i = 0; i < message->delivery_count; i++) {
        struct delivery *delivery = message->deliveries[i];
        if (delivery)
            queued_for(relay, queue_owner(delivery->queue), was_empty[i]);
    }
    if (!connection->closing)
        apply_flow_control(relay, connection, message);
}

/* A binary message, streamed to its receivers as it arrives. Routing needs its frame header,
 * which may arrive in pieces and is gathered first. */
static void receive_streamed(struct relay *relay, struct connection *connection,
                             const unsigned char *bytes, size_t length, bool first, bool final)
{
    if (first) {
        connection->dropping_binary = false;
        if (!connection->member) {
            connection->dropping_binary = true;
            relay->metrics.dropped[DROP_NOT_IN_ROOM]++;
        }
    }
    if (!connection->forwarding && !connection->dropping_binary) {
        size_t consumed = 0;
        bool gathered = connection->sniff_length > 0 || (length < FRAME_HEADER_MAX_SIZE && !final);
        const unsigned char *view = bytes;
        size_t view_length = length;
        if (gathered) {
            if (!connection->sniff && !(connection->sniff = malloc(FRAME_HEADER_MAX_SIZE))) {
                connection->dropping_binary = true;
                goto done;
            }
            consumed = FRAME_HEADER_MAX_SIZE - connection->sniff_length;
            if (consumed > length)
                consumed = length;
            memcpy(connection->sniff + connection->sniff_length, bytes, consumed);
            connection->sniff_length += consumed;
            view = connection->sniff;
            view_length = connection->sniff_length;
        }
        bool drop = false;
        if (!route_binary(relay, connection, view, view_length,
                          final || view_length == FRAME_HEADER_MAX_SIZE, &drop))
            return; /* wait for the rest of the header */
        connection->dropping_binary = drop;
        if (!drop && gathered)
            forward_bytes(relay, connection, view, view_length, final && consumed == length);
        free(connection->sniff);
        connection->sniff = NULL;
        connection->sniff_length = 0;
        bytes += consumed;
        length -= consumed;
        if (drop || (gathered && length == 0))
            goto done;
    }
    if (connection->forwarding && !connection->dropping_binary)
        forward_bytes(relay, connection, bytes, length, final);
done:
    if (final) {
        stop_forwarding(relay, connection, false);
        connection->dropping_binary = false;
    }
}

/* --- events ----------------------------------------------------------------------------- */

struct relay *relay_create(const struct relay_config *config, const struct relay_io *io,
                           const unsigned char *secret, size_t secret_length, double now)
{
    struct relay *relay = calloc(1, sizeof(*relay));
    if (!relay)
        return NULL;
    relay->config = *config;
    relay->io = *io;
    relay->now = now;
    relay->last_sweep = now;
    relay->secret_length =
        secret_length < sizeof(relay->secret) ? secret_length : sizeof(relay->secret);
    memcpy(relay->secret, secret, relay->secret_length);
    relay->failed_joins =
        rate_limiter_create(config->join_attempts_per_minute, RATE_LIMITER_MAX_ADDRESSES);
    relay->failed_joins_everywhere = rate_limiter_create(config->failed_joins_per_minute, 1);
    relay->room_creations =
        rate_limiter_create(config->rooms_created_per_minute, RATE_LIMITER_MAX_ADDRESSES);
    relay->rooms_by_address = address_count_create();
    relay->sockets_by_address = address_count_create();
    relay->handshakes_by_address = address_count_create();
    relay->refusals = refusal_log_create(RATE_LIMITER_MAX_ADDRESSES);
    relay->relay_info = json_pack(
        "{s:s, s:i, s:[s,s,s,s,s,s], s:{s:I, s:I, s:i, s:I, s:i}}", "version", RELAY_VERSION,
        "protocol", PROTOCOL_VERSION, "features", FEATURE_FRAME_HEADER, FEATURE_DIRECTED,
        FEATURE_RESUME, FEATURE_FLOW_CONTROL, FEATURE_HOST_ID, FEATURE_MEMBER_FEATURES, "limits",
        "max_message_size", (json_int_t)config->max_message_size, "max_text_size",
        (json_int_t)config->max_text_size, "max_room_members", (int)config->max_room_members,
        "chunk_size",
        (json_int_t)(config->max_message_size < PROTOCOL_CHUNK_SIZE ? config->max_message_size
                                                                    : PROTOCOL_CHUNK_SIZE),
        "resume_grace_seconds", (int)config->resume_grace_seconds);
    if (!relay->failed_joins || !relay->failed_joins_everywhere || !relay->room_creations ||
        !relay->rooms_by_address || !relay->sockets_by_address || !relay->handshakes_by_address ||
        !relay->refusals || !relay->relay_info) {
        relay_destroy(relay);
        return NULL;
    }
    return relay;
}

struct relay_metrics *relay_metrics(struct relay *relay)
{
    return &relay->metrics;
}

size_t relay_connection_count(const struct relay *relay)
{
    return relay->connection_count;
}

size_t relay_room_count(const struct relay *relay)
{
    return relay->room_count;
}

size_t relay_members_away(const struct relay *relay)
{
    return relay->members_away;
}

uint64_t relay_queued_bytes(const struct relay *relay)
{
    uint64_t total = 0;
    const struct connection *c;
    LIST_FOREACH(c, &relay->connections, open_link)
    total += c->queue.queued_bytes;
    return total;
}

struct connection *relay_connection_open(struct relay *relay, void *transport,
                                         const char *peer_address, bool echo, double now)
{
    relay->now = now;
    if (relay->connection_count >= relay->config.max_connections) {
        relay->metrics.rejected[REJECT_TOO_MANY_CONNECTIONS]++;
        return NULL;
    }
    struct connection *connection = calloc(1, sizeof(*connection));
    if (!connection)
        return NULL;
    connection->id = ++relay->next_connection_id;
    connection->transport = transport;
    connection->echo = echo;
    snprintf(connection->peer_address, sizeof(connection->peer_address), "%s", peer_address);
    connection->opened_at = connection->last_heard = connection->last_ping = now;
    connection->last_progress = now;
    if (!tsearch(connection, &relay->connections_by_id, compare_connections)) {
        free(connection);
        return NULL;
    }
    LIST_INSERT_HEAD(&relay->connections, connection, open_link);
    relay->connection_count++;
    relay->metrics.connections_total++;
    log_event(LOG_LEVEL_INFO, "connected", "peer", peer_address, "endpoint",
              echo ? "echo" : "relay", NULL);
    return connection;
}

bool relay_socket_accepted(struct relay *relay, const char *peer_address, double now)
{
    relay->now = now;
    const struct relay_config *config = &relay->config;
    if (address_count_get(relay->sockets_by_address, peer_address) >=
        config->max_connections_per_address) {
        relay->metrics.rejected[REJECT_CONNECTIONS_PER_ADDRESS]++;
        refusal_log_note(relay->refusals, peer_address, "connections_per_address", 0, now);
        return false;
    }
    if (!address_count_take(relay->handshakes_by_address, peer_address,
                            config->max_handshakes_per_address)) {
        relay->metrics.rejected[REJECT_HANDSHAKES_PER_ADDRESS]++;
        refusal_log_note(relay->refusals, peer_address, "handshakes_per_address", 0, now);
        return false;
    }
    if (!address_count_take(relay->sockets_by_address, peer_address, UINT_MAX)) {
        address_count_release(relay->handshakes_by_address, peer_address);
        return false;
    }
    relay->metrics.sockets_accepted_total++;
    return true;
}

void relay_note_refusal(struct relay *relay, const char *peer_address, const char *what, int status,
                        double now)
{
    relay->now = now;
    refusal_log_note(relay->refusals, peer_address, what, status, now);
}

void relay_socket_upgraded(struct relay *relay, const char *peer_address)
{
    address_count_release(relay->handshakes_by_address, peer_address);
}

void relay_socket_closed(struct relay *relay, const char *peer_address, bool in_handshake)
{
    if (in_handshake)
        address_count_release(relay->handshakes_by_address, peer_address);
    address_count_release(relay->sockets_by_address, peer_address);
}

static void message_too_big(struct relay *relay, struct connection *connection)
{
    begin_close(relay, connection, CLOSE_MESSAGE_TOO_BIG, "message too big",
                REJECT_MESSAGE_TOO_BIG);
}

/* Gathers a whole message in connection->text, up to `limit` bytes (else closes with 1009). */
static bool reassemble(struct relay *relay, struct connection *connection,
                       const unsigned char *bytes, size_t length, bool first,
                       uint64_t frame_remaining, uint64_t limit)
{
    if (first)
        connection->text_length = 0;
    uint64_t total = connection->text_length + length;
    if (total > limit || frame_remaining > limit - total) {
        message_too_big(relay, connection);
        return false;
    }
    if (total > connection->text_capacity) {
        size_t capacity = connection->text_capacity ? connection->text_capacity : 1024;
        while (capacity < total + frame_remaining && capacity < limit)
            capacity *= 2;
        if (capacity < total)
            capacity = total;
        unsigned char *grown = realloc(connection->text, capacity);
        if (!grown) {
            message_too_big(relay, connection);
            return false;
        }
        connection->text = grown;
        connection->text_capacity = capacity;
    }
    if (length)
        memcpy(connection->text + connection->text_length, bytes, length);
    connection->text_length = total;
    return true;
}

void relay_receive(struct relay *relay, struct connection *connection, const unsigned char *bytes,
                   size_t length, bool is_binary, bool first, bool final, uint64_t frame_remaining,
                   double now)
{
    relay->now = now;
    connection->last_heard = now;
    if (connection->closing)
        return;
    int kind = is_binary ? 1 : 0;
    relay->metrics.bytes_received[kind] += length;
    if (first)
        relay->metrics.messages_received[kind]++;

    if (is_binary && !connection->echo) {
        uint64_t limit = relay->config.max_message_size;
        if (first)
            connection->binary_bytes = 0;
        connection->binary_bytes += length;
        if (connection->binary_bytes > limit ||
            frame_remaining > limit - connection->binary_bytes) {
            message_too_big(relay, connection);
            return;
        }
        receive_streamed(relay, connection, bytes, length, first, final);
        return;
    }
    /* Text, and everything on the echo endpoint, is handled as a whole message. The echo sends
     * each message back in one frame, because lws 4.1 corrupts compressed messages written in
     * several frames (its documented Autobahn 12.4/12.5 failures). */
    uint64_t limit =
        connection->echo ? relay->config.max_message_size : relay->config.max_text_size;
    if (!reassemble(relay, connection, bytes, length, first, frame_remaining, limit) || !final)
        return;
    if (connection->echo)
        send_to(relay, &connection, 1, connection->id, is_binary, connection->text,
                connection->text_length);
    else
        handle_text(relay, connection, (const char *)connection->text, connection->text_length);
    connection->text_length = 0;
    if (connection->text_capacity > 64 * 1024) {
        /* Do not keep a large buffer for an idle connection. */
        free(connection->text);
        connection->text = NULL;
        connection->text_capacity = 0;
    }
}

void relay_heard(struct connection *connection, double now)
{
    connection->last_heard = now;
}

bool relay_next_write(struct connection *connection, struct write_step *step)
{
    return send_queue_peek(&connection->queue, step);
}

void relay_wrote(struct relay *relay, struct connection *connection, double now)
{
    relay->now = now;
    struct write_step step;
    if (!send_queue_peek(&connection->queue, &step))
        return;
    int kind = step.is_binary ? 1 : 0;
    relay->metrics.bytes_sent[kind] += step.length;
    if (step.final)
        relay->metrics.messages_sent[kind]++;
    send_queue_advance(&connection->queue);
    connection->last_progress = now;
    if (connection->waiter_count)
        release_waiters(relay, connection, false);
}

/* Stops everything the connection is doing; the transport closes it and then reports closed. */
static void quiesce(struct relay *relay, struct connection *connection)
{
    stop_forwarding(relay, connection, true);
    free(connection->text);
    connection->text = NULL;
    connection->text_capacity = connection->text_length = 0;
    release_waiters(relay, connection, true);
    free(connection->waiters);
    connection->waiters = NULL;
    connection->waiter_capacity = 0;
    send_queue_clear(&connection->queue);
}

static void begin_close(struct relay *relay, struct connection *connection, int code,
                        const char *reason, int reject_reason)
{
    if (connection->closing)
        return;
    connection->closing = true;
    if (reject_reason >= 0)
        relay->metrics.rejected[reject_reason]++;
    log_fields(LOG_LEVEL_INFO, "closing", LOG_TEXT("peer", connection->peer_address),
               LOG_INT("code", code), LOG_TEXT("reason", reason));
    quiesce(relay, connection);
    relay->io.close(relay->io.context, connection->transport, code, reason);
}

void relay_connection_closed(struct relay *relay, struct connection *connection, double now)
{
    relay->now = now;
    connection->closing = true;
    quiesce(relay, connection);
    struct member *member = connection->member;
    if (member) {
        if (member->wants_resume && !relay->shutting_down) {
            connection->member = NULL;
            member->connection = NULL;
            member->away_since = now;
            relay->members_away++;
            log_event(LOG_LEVEL_INFO, "user_away", "room", member->room->log_tag, "user",
                      member->user_id, NULL);
        } else {
            remove_member(relay, member);
        }
    }
    tdelete(connection, &relay->connections_by_id, compare_connections);
    LIST_REMOVE(connection, open_link);
    relay->connection_count--;
    log_fields(LOG_LEVEL_INFO, "disconnected", LOG_TEXT("peer", connection->peer_address),
               LOG_INT("seconds", (int64_t)(now - connection->opened_at)));
    free(connection);
}

static void expire_rooms(struct relay *relay, double now)
{
    double grace = relay->config.resume_grace_seconds;
    struct room *room = LIST_FIRST(&relay->rooms);
    while (room) {
        struct room *next_room = LIST_NEXT(room, link);
        if (room->member_count == 0 && room->reserved_until && room->reserved_until < now) {
            if (relay->cluster) /* the backplane stops keeping its code alive */
                relay->cluster->room_changed(relay->cluster->context, room->code, NULL);
            delete_room(relay, room);
            room = next_room;
            continue;
        }
        /* remove_member may delete the room, so the member walk stops when it empties. */
        struct member *member = room->members;
        size_t remaining = room->member_count;
        while (member && remaining > 0) {
            struct member *next_member = member->next;
            remaining--;
            if (is_away(member) && now - member->away_since >= grace) {
                /* In a cluster the room also goes when its last member on this node goes. */
                bool last = room->member_count == 1 ||
                            (relay->cluster && !is_remote(member) && local_members(room) == 1);
                remove_member(relay, member);
                if (last)
                    break;
            }
            member = next_member;
        }
        room = next_room;
    }
}

static void check_connections(struct relay *relay, double now)
{
    const struct relay_config *config = &relay->config;
    struct connection *c;
    LIST_FOREACH(c, &relay->connections, open_link)
    {
        if (c->closing)
            continue;
        /* A throttled sender is silent because the relay stopped reading it, not idle. */
        if (config->idle_timeout_seconds && c->blocked_on == 0 &&
            now - c->last_heard > config->idle_timeout_seconds) {
            begin_close(relay, c, CLOSE_GOING_AWAY, "idle timeout", REJECT_IDLE_TIMEOUT);
            continue;
        }
        /* A receiver of other nodes' senders (cluster) has no waiters: its queue says it. */
        bool behind = c->waiter_count ||
                      (relay->cluster && c->queue.queued_bytes > config->receiver_buffer_bytes);
        if (behind && config->slow_receiver_timeout_seconds &&
            now - c->last_progress > config->slow_receiver_timeout_seconds) {
            begin_close(relay, c, CLOSE_SLOW_RECEIVER, "receiver too slow", REJECT_SLOW_RECEIVER);
            continue;
        }
        if (config->ping_interval_seconds && now - c->last_ping >= config->ping_interval_seconds) {
            c->last_ping = now;
            relay->io.ping(relay->io.context, c->transport);
        }
    }
}

void relay_tick(struct relay *relay, double now)
{
    relay->now = now;
    refusal_log_flush(relay->refusals, now, 0);
    expire_rooms(relay, now);
    check_connections(relay, now);
    if (now - relay->last_sweep >= RATE_LIMITER_SWEEP_SECONDS) {
        rate_limiter_sweep(relay->failed_joins, now);
        rate_limiter_sweep(relay->failed_joins_everywhere, now);
        rate_limiter_sweep(relay->room_creations, now);
        relay->last_sweep = now;
    }
}

const char *relay_reserve_room(struct relay *relay, const char *peer_address, double now,
                               char code[ROOM_CODE_LENGTH + 1])
{
    relay->now = now;
    if (relay->config.lan_mode)
        return "LAN_SESSION";
    const char *refusal = room_quota_refusal(relay, peer_address);
    if (refusal)
        return refusal;
    double retry_after;
    if (!creation_allowed(relay, peer_address, &retry_after))
        return "RATE_LIMITED";
    struct room *room = new_room_code(relay, code) ? create_room(relay, code, peer_address) : NULL;
    if (!room)
        return "INTERNAL";
    room->reserved_until = now + RESERVED_ROOM_SECONDS;
    room->awaiting_creator = true; /* whoever reserved it joins first, with the code */
    cluster_sync_room(relay, room);
    log_event(LOG_LEVEL_INFO, "room_reserved", "room", room->log_tag, "peer", peer_address, NULL);
    return NULL;
}

void relay_close_all(struct relay *relay, int code, const char *reason)
{
    relay->shutting_down = true;
    struct connection *c;
    LIST_FOREACH(c, &relay->connections, open_link)
    begin_close(relay, c, code, reason, -1);
}

static void free_room_tree_node(void *node)
{
    (void)node; /* rooms are freed through the list */
}

void relay_destroy(struct relay *relay)
{
    if (!relay)
        return;
    relay->shutting_down = true;
    while (relay->inbound)
        end_inbound(relay, &relay->inbound);
    while (!LIST_EMPTY(&relay->connections))
        relay_connection_closed(relay, LIST_FIRST(&relay->connections), relay->now);
    /* What is left are away members and reserved rooms. */
    while (!LIST_EMPTY(&relay->rooms)) {
        struct room *room = LIST_FIRST(&relay->rooms);
        while (room->members) {
            struct member *member = room->members;
            room->members = member->next;
            free(member->sender_suffix);
            free(member);
        }
        LIST_REMOVE(room, link);
        free(room);
    }
    tdestroy(relay->rooms_by_code, free_room_tree_node);
    rate_limiter_destroy(relay->failed_joins);
    rate_limiter_destroy(relay->failed_joins_everywhere);
    rate_limiter_destroy(relay->room_creations);
    address_count_destroy(relay->rooms_by_address);
    address_count_destroy(relay->sockets_by_address);
    address_count_destroy(relay->handshakes_by_address);
    if (relay->refusals)
        refusal_log_flush(relay->refusals, relay->now, 1);
    refusal_log_destroy(relay->refusals);
    json_decref(relay->relay_info);
    free(relay);
}

/* --- cluster (--nats): rooms whose members are spread over several relay nodes ----------
 * Each node holds, for every room it has members in, the whole member list: its own members
 * (connected here) and the others' (`node` set), learnt from the directory when the room came
 * here and from the JOIN/LEAVE envelopes on the room's subject since. Whatever a member sends
 * goes to this node's receivers directly and, once, to each other node that has receivers. */

void relay_attach_cluster(struct relay *relay, const struct relay_cluster_io *cluster)
{
    relay->cluster = cluster;
}

static json_t *member_record(const struct member *member)
{
    /* The features go along (as in the user list), so that every node knows who reads framed
     * binaries (mixed rooms). */
    json_t *entry = user_entry(member);
    json_t *record =
        json_pack("{s:s, s:s, s:f, s:b, s:b}", "user_id", member->user_id, "display_name",
                  member->display_name, "joined_at", member->joined_at, "host",
                  member == member->room->host, "resume", member->wants_resume);
    json_t *features = json_object_get(entry, "features");
    if (record && features)
        json_object_set(record, "features", features);
    json_decref(entry);
    return record;
}

/* Forgets a room that has no members on this node any more: the others' members go silently
 * (their own nodes hold them), and the backplane stops listening to the room. */
static void forget_room(struct relay *relay, struct room *room)
{
    relay->cluster->room_changed(relay->cluster->context, room->code, NULL);
    while (room->members) {
        struct member *member = room->members;
        room->members = member->next;
        free(member->sender_suffix);
        free(member);
    }
    room->member_count = 0;
    room->host = NULL;
    delete_room(relay, room);
}

/* After this node's members of `room` changed: tells the directory. A room left with only
 * other nodes' members is forgotten here (the caller must not use it afterwards). */
static void cluster_sync_room(struct relay *relay, struct room *room)
{
    if (!relay->cluster)
        return;
    json_t *records = json_array();
    size_t local = 0;
    for (struct member *m = room->members; m; m = m->next) {
        if (is_remote(m))
            continue;
        if (m->joined_at == 0)
            m->joined_at = relay->cluster->wall_clock(relay->cluster->context);
        json_array_append_new(records, member_record(m));
        local++;
    }
    if (local == 0 && !(room->member_count == 0 && room->reserved_until)) {
        json_decref(records);
        forget_room(relay, room);
        return;
    }
    char *text = json_dumps(records, JSON_COMPACT);
    json_decref(records);
    if (text)
        relay->cluster->room_changed(relay->cluster->context, room->code, text);
    free(text);
}

/* A room loaded from the directory whose join or resume then failed. */
static void cluster_drop_unused(struct relay *relay, struct room *room)
{
    if (relay->cluster && local_members(room) == 0 && !room->reserved_until)
        forget_room(relay, room);
}

/* Tells the other nodes holding the room that one of ours joined (or resumed here) or left. */
static void cluster_publish_member(struct relay *relay, struct member *member,
                                   enum cluster_kind kind, bool resumed)
{
    if (!relay->cluster)
        return;
    struct cluster_envelope envelope = {.kind = kind};
    memcpy(envelope.code, member->room->code, sizeof(envelope.code));
    snprintf(envelope.node, sizeof(envelope.node), "%s", relay->cluster->node);
    snprintf(envelope.user_id, sizeof(envelope.user_id), "%s", member->user_id);
    char *text = NULL;
    if (kind == CLUSTER_JOIN) {
        json_t *record = member_record(member);
        if (resumed)
            json_object_set_new(record, "resumed", json_true());
        text = json_dumps(record, JSON_COMPACT);
        json_decref(record);
        if (!text)
            return;
        envelope.payload = (const unsigned char *)text;
        envelope.payload_length = strlen(text);
    }
    relay->cluster->publish(relay->cluster->context, NULL, 0, &envelope);
    free(text);
}

/* Another node's member, from a directory record or a JOIN envelope; NULL if malformed. */
static struct member *add_remote_member(struct room *room, const char *node, json_t *record)
{
    const char *user_id = NULL, *display_name = NULL;
    double joined_at = 0;
    int host = 0, resume = 0;
    if (json_unpack(record, "{s:s, s:s, s:F, s?b, s?b}", "user_id", &user_id, "display_name",
                    &display_name, "joined_at", &joined_at, "host", &host, "resume", &resume) ||
        strlen(user_id) == 0 || strlen(user_id) > USER_ID_MAX_BYTES ||
        strlen(display_name) > DISPLAY_NAME_MAX_BYTES || strlen(node) != CLUSTER_NODE_ID_LENGTH)
        return NULL;
    struct member *member = calloc(1, sizeof(*member));
    if (!member)
        return NULL;
    snprintf(member->user_id, sizeof(member->user_id), "%s", user_id);
    snprintf(member->display_name, sizeof(member->display_name), "%s", display_name);
    snprintf(member->node, sizeof(member->node), "%s", node);
    if (!make_sender_suffix(member)) { /* needed if it resumes here */
        free(member);
        return NULL;
    }
    member->joined_at = joined_at;
    member->wants_resume = resume;
    member->features = announced_features(record);
    member->room = room;
    /* The merged users list is in joining order across nodes. */
    struct member **link = &room->members;
    while (*link && (*link)->joined_at <= joined_at)
        link = &(*link)->next;
    member->next = *link;
    *link = member;
    room->member_count++;
    room->reserved_until = 0;
    if (host)
        room->host = member;
    return member;
}

/* The room, from this node or else from the directory (with its members on other nodes). */
static struct room *load_room(struct relay *relay, const char *code, const char *owner)
{
    struct room *room = find_room(relay, code);
    if (room || !relay->cluster)
        return room;
    char *records = NULL;
    int found = relay->cluster->lookup_room(relay->cluster->context, code, &records);
    json_t *list = found == 1 && records ? json_loads(records, 0, NULL) : NULL;
    free(records);
    if (found == 2 || (found == 1 && json_array_size(list) > 0))
        room = create_room(relay, code, owner);
    if (room && found == 2) {
        room->reserved_until = relay->now + RESERVED_ROOM_SECONDS;
        room->awaiting_creator = true; /* reserved on another node: the first joiner creates it */
    }
    size_t i;
    json_t *record;
    json_array_foreach(list, i, record)
    {
        json_t *node = json_object_get(record, "node");
        if (room && json_is_string(node) &&
            strcmp(json_string_value(node), relay->cluster->node) != 0 &&
            !find_member(room, json_string_value(json_object_get(record, "user_id"))))
            add_remote_member(room, json_string_value(node), record);
    }
    json_decref(list);
    if (room && room->member_count == 0 && found != 2) {
        /* The directory's records were unusable: as good as no room. */
        forget_room(relay, room);
        return NULL;
    }
    return room;
}

static void cluster_send_text(struct relay *relay, struct member *sender, const char **nodes,
                              size_t node_count, const char *text, size_t length)
{
    if (!relay->cluster || node_count == 0)
        return;
    struct cluster_envelope envelope = {
        .kind = CLUSTER_TEXT, .payload = (const unsigned char *)text, .payload_length = length};
    memcpy(envelope.code, sender->room->code, sizeof(envelope.code));
    snprintf(envelope.node, sizeof(envelope.node), "%s", relay->cluster->node);
    snprintf(envelope.user_id, sizeof(envelope.user_id), "%s", sender->user_id);
    relay->cluster->publish(relay->cluster->context, nodes, node_count, &envelope);
}

static void cluster_start_stream(struct relay *relay, struct connection *connection,
                                 const char **nodes, size_t node_count)
{
    connection->cluster_nodes = calloc(node_count, sizeof(*connection->cluster_nodes));
    if (!connection->cluster_nodes)
        return; /* the other nodes miss this message; this node's receivers still get it */
    for (size_t i = 0; i < node_count; i++)
        snprintf(connection->cluster_nodes[i], sizeof(connection->cluster_nodes[i]), "%s",
                 nodes[i]);
    connection->cluster_node_count = node_count;
    connection->cluster_stream = ++relay->last_stream;
    connection->cluster_piece = 0;
    memcpy(connection->cluster_code, connection->member->room->code,
           sizeof(connection->cluster_code));
}

/* Sends bytes of the connection's binary message to the other nodes, in pieces that fit the
 * backplane's message size; `final` ends the message there (an empty final piece if need be). */
static void cluster_send_piece(struct relay *relay, struct connection *connection,
                               const unsigned char *bytes, size_t length, bool final)
{
    struct cluster_envelope envelope = {.kind = CLUSTER_BINARY,
                                        .stream = connection->cluster_stream};
    memcpy(envelope.code, connection->cluster_code, sizeof(envelope.code));
    snprintf(envelope.node, sizeof(envelope.node), "%s", relay->cluster->node);
    if (connection->member)
        snprintf(envelope.user_id, sizeof(envelope.user_id), "%s", connection->member->user_id);
    size_t max_piece = relay->cluster->max_piece;
    const char *nodes[connection->cluster_node_count + 1];
    for (size_t i = 0; i < connection->cluster_node_count; i++)
        nodes[i] = connection->cluster_nodes[i];
    do {
        size_t piece = length < max_piece ? length : max_piece;
        envelope.piece = connection->cluster_piece++;
        envelope.flags = (envelope.piece == 0 ? CLUSTER_FLAG_FIRST : 0) |
                         (final && piece == length ? CLUSTER_FLAG_FINAL : 0);
        envelope.payload = bytes;
        envelope.payload_length = piece;
        relay->cluster->publish(relay->cluster->context, nodes, connection->cluster_node_count,
                                &envelope);
        bytes += piece;
        length -= piece;
    } while (length > 0);
    if (final) {
        free(connection->cluster_nodes);
        connection->cluster_nodes = NULL;
        connection->cluster_node_count = 0;
        connection->cluster_stream = 0;
    }
}

/* JOIN: a member of another node joined the room, or resumed there (it may have been ours). */
static void cluster_member_joined(struct relay *relay, struct room *room,
                                  const struct cluster_envelope *envelope)
{
    json_t *record = json_loadb((const char *)envelope->payload, envelope->payload_length, 0, NULL);
    json_t *user_id = json_object_get(record, "user_id");
    if (!json_is_string(user_id) || strcmp(json_string_value(user_id), envelope->user_id) != 0) {
        json_decref(record);
        return;
    }
    bool resumed = json_is_true(json_object_get(record, "resumed"));
    if (local_members(room) == 0) {
        /* A room reserved here was joined on another node first: that node holds it now. */
        json_decref(record);
        room->reserved_until = 0;
        forget_room(relay, room);
        return;
    }
    struct member *member = find_member(room, envelope->user_id);
    if (member && !is_remote(member)) {
        if (resumed) {
            /* Our member resumed on another node: it moved, nobody left. */
            struct connection *old = member->connection;
            if (old) {
                old->member = NULL;
                member->connection = NULL;
                begin_close(relay, old, CLOSE_NORMAL, "resumed on another connection", -1);
            } else {
                relay->members_away--;
            }
            snprintf(member->node, sizeof(member->node), "%s", envelope->node);
            member->node_lost = false;
            cluster_sync_room(relay, room); /* may forget the room */
        }
        /* else the same id joined on two nodes at once: each keeps its own (documented) */
        json_decref(record);
        return;
    }
    if (member) { /* known: it moved between other nodes, or was lost and is back */
        snprintf(member->node, sizeof(member->node), "%s", envelope->node);
        member->node_lost = false;
        json_decref(record);
        return;
    }
    member = add_remote_member(room, envelope->node, record);
    json_decref(record);
    if (member)
        tell_room(relay, room, member, "user_joined",
                  resumed ? json_pack("{s:b}", "resumed", 1) : NULL);
}

/* TEXT: a message from another node's member, for this node's members it names (or all). */
static void cluster_text(struct relay *relay, struct room *room,
                         const struct cluster_envelope *envelope)
{
    json_t *root = json_loadb((const char *)envelope->payload, envelope->payload_length, 0, NULL);
    json_t *to = json_object_get(root, "to");
    if (!root || (to && !json_is_array(to))) {
        json_decref(root);
        return;
    }
    struct connection *receivers[room->member_count + 1];
    size_t count = 0;
    for (struct member *m = room->members; m; m = m->next)
        if (m->connection && !m->connection->closing && strcmp(m->user_id, envelope->user_id) &&
            addressed_to(to, m->user_id))
            receivers[count++] = m->connection;
    json_decref(root);
    if (count)
        send_text_to(relay, receivers, count, (const char *)envelope->payload,
                     envelope->payload_length);
}

static void end_inbound(struct relay *relay, struct inbound_stream **link)
{
    struct inbound_stream *stream = *link;
    *link = stream->next;
    relay_message_finish_sending(stream->message);
    free(stream);
}

/* BINARY: a piece of another node's member's message. Pieces of one message arrive in order
 * (one publisher, one subscriber); a gap ends this node's copy early, as a sender's
 * disconnect does. The send queues keep messages to one receiver from interleaving. */
static void cluster_binary(struct relay *relay, struct room *room,
                           const struct cluster_envelope *envelope)
{
    struct inbound_stream **link = &relay->inbound;
    while (*link && ((*link)->stream != envelope->stream || strcmp((*link)->node, envelope->node)))
        link = &(*link)->next;
    struct inbound_stream *stream = *link;
    if (!stream && !(envelope->flags & CLUSTER_FLAG_FIRST))
        return; /* its start was not for us, or was lost */
    if (stream && (envelope->piece != stream->next_piece || envelope->flags & CLUSTER_FLAG_FIRST)) {
        relay->metrics.dropped[DROP_TRUNCATED]++;
        end_inbound(relay, link);
        return;
    }
    if (!stream) {
        /* One sender's messages follow each other: an open one from it whose end was lost
         * (the hand-over queue was full) ends here, so it cannot hold its receivers' queues. */
        for (struct inbound_stream **open = &relay->inbound; *open;)
            if (!strcmp((*open)->node, envelope->node) &&
                !strcmp((*open)->user_id, envelope->user_id))
                end_inbound(relay, open);
            else
                open = &(*open)->next;
        if (!room)
            return;
        struct frame_header header;
        size_t needed = 0;
        const char *why = NULL;
        enum frame_parse_result parsed =
            frame_header_parse(envelope->payload, envelope->payload_length, &header, &needed, &why);
        struct send_queue *queues[room->member_count + 1];
        size_t count = 0;
        for (struct member *m = room->members; m; m = m->next) {
            if (!m->connection || m->connection->closing || !strcmp(m->user_id, envelope->user_id))
                continue;
            bool wanted = parsed != FRAME_OK || header.recipient_count == 0;
            size_t cursor = 0;
            struct frame_id recipient;
            while (!wanted && frame_header_next_recipient(&header, &cursor, &recipient))
                wanted = recipient.length == strlen(m->user_id) &&
                         !memcmp(recipient.bytes, m->user_id, recipient.length);
            if (wanted)
                queues[count++] = &m->connection->queue;
        }
        if (count == 0)
            return;
        stream = calloc(1, sizeof(*stream));
        if (!stream)
            return;
        stream->message = relay_message_start(0, true, queues, count);
        if (!stream->message) {
            free(stream);
            return;
        }
        snprintf(stream->node, sizeof(stream->node), "%s", envelope->node);
        snprintf(stream->user_id, sizeof(stream->user_id), "%s", envelope->user_id);
        stream->stream = envelope->stream;
        stream->next = relay->inbound;
        relay->inbound = stream;
        link = &relay->inbound;
    }
    stream->next_piece++;
    struct relay_message *message = stream->message;
    bool final = envelope->flags & CLUSTER_FLAG_FINAL;
    bool was_empty[message->delivery_count + 1];
    for (size_t i = 0; i < message->delivery_count; i++)
        was_empty[i] = message->deliveries[i] && message->deliveries[i]->queue->queued_bytes == 0;
    relay_message_append(message, envelope->payload, envelope->payload_length, final);
    /* The sender is on another node and cannot be slowed down from here: a receiver that falls
     * behind is dropped (at once with --flow-control drop, else after
     * --slow-receiver-timeout without progress, see check_connections). */
    for (size_t i = 0; i < message->delivery_count; i++) {
        struct delivery *delivery = message->deliveries[i];
        if (!delivery)
            continue;
        struct connection *receiver = queue_owner(delivery->queue);
        queued_for(relay, receiver, was_empty[i]);
        if (relay->config.flow_policy == FLOW_DROP_RECEIVER &&
            delivery->backlog_bytes > relay->config.receiver_buffer_bytes)
            begin_close(relay, receiver, CLOSE_SLOW_RECEIVER, "receiver too slow",
                        REJECT_SLOW_RECEIVER);
    }
    if (final)
        end_inbound(relay, link);
}

void relay_cluster_receive(struct relay *relay, const struct cluster_envelope *envelope, double now)
{
    relay->now = now;
    if (!relay->cluster || !strcmp(envelope->node, relay->cluster->node))
        return; /* our own, echoed back */
    struct room *room = find_room(relay, envelope->code);
    if (envelope->kind == CLUSTER_BINARY) {
        cluster_binary(relay, room, envelope);
        return;
    }
    if (!room)
        return;
    if (envelope->kind == CLUSTER_JOIN) {
        cluster_member_joined(relay, room, envelope);
    } else if (envelope->kind == CLUSTER_LEAVE) {
        struct member *member = find_member(room, envelope->user_id);
        if (member && is_remote(member) && !strcmp(member->node, envelope->node))
            remove_member(relay, member);
    } else if (envelope->kind == CLUSTER_TEXT) {
        cluster_text(relay, room, envelope);
    }
}

void relay_cluster_node_lost(struct relay *relay, const char *node, double now)
{
    relay->now = now;
    for (struct inbound_stream **link = &relay->inbound; *link;)
        if (!strcmp((*link)->node, node))
            end_inbound(relay, link);
        else
            link = &(*link)->next;
    struct room *room = LIST_FIRST(&relay->rooms);
    while (room) {
        struct room *next_room = LIST_NEXT(room, link);
        struct member *member = room->members;
        while (member) {
            struct member *next_member = member->next;
            if (is_remote(member) && !member->node_lost && !strcmp(member->node, node)) {
                log_event(LOG_LEVEL_INFO, "node_lost_member", "user", member->user_id, NULL);
                if (member->wants_resume) {
                    member->node_lost = true; /* away: it may resume on any node */
                    member->away_since = now;
                } else {
                    remove_member(relay, member); /* the room keeps its local members */
                }
            }
            member = next_member;
        }
        room = next_room;
    }
}
