/* transport_core.c — the engine-neutral half of a client connection: its lifetime, the send
 * queue cut into fragments, received payload assembled into one message block per message, and
 * the opening/closing bookkeeping every engine shares. No sockets, no lws calls, no Python. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "block_cache.h"
#include "transport_core.h"
#include "utf8.h"

double transport_monotonic_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

struct client_connection *connection_new(void)
{
    struct client_connection *conn = calloc(1, sizeof *conn);
    if (!conn)
        return NULL;
    conn->staging = malloc(LWS_PRE + TRANSPORT_STAGING_SIZE);
    pthread_condattr_t attributes;
    pthread_condattr_init(&attributes);
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    pthread_cond_init(&conn->changed, &attributes);
    pthread_condattr_destroy(&attributes);
    pthread_mutex_init(&conn->lock, NULL);
    atomic_init(&conn->refcount, 1);
    conn->state = CONNECTION_CONNECTING;
    transfer_assembler_init(&conn->transfers, TRANSPORT_MAX_TRANSFER_SIZE);
    if (!conn->staging) {
        connection_release(conn);
        return NULL;
    }
    return conn;
}

void connection_retain(struct client_connection *conn)
{
    atomic_fetch_add(&conn->refcount, 1);
}

void connection_release(struct client_connection *conn)
{
    if (atomic_fetch_sub(&conn->refcount, 1) != 1)
        return;
    for (struct received_message *m = conn->received_head, *next; m; m = next) {
        next = m->next;
        received_message_free(m);
    }
    transfer_assembler_free(&conn->transfers);
    OPENSSL_cleanse(&conn->room_key, sizeof conn->room_key);
    for (size_t i = 0; i < conn->header_count; i++) {
        free(conn->headers[i].name);
        free(conn->headers[i].value);
    }
    free(conn->headers);
    free(conn->address);
    free(conn->path);
    free(conn->host_header);
    free(conn->server_name);
    free(conn->ca_file);
    free(conn->proxy);
    free(conn->staging);
    free(conn->assembling);
    pthread_mutex_destroy(&conn->lock);
    pthread_cond_destroy(&conn->changed);
    free(conn);
}

/* ---- message blocks ----------------------------------------------------------------------- */

/* A fragmented message's final size is unknown: growing takes a cached block that fits (a
 * frame-by-frame relay makes every large message arrive fragmented, and growing by realloc
 * would fault in fresh pages again), but not one far larger than needed. */
#define GROW_FROM_CACHE_LARGEST(size) ((size)*4 + ((size_t)16 << 20))

unsigned char *message_block_obtain(size_t size, size_t *capacity)
{
    return block_obtain(size, 16, capacity);
}

static unsigned char *message_block_grow(unsigned char *block, size_t used, size_t size,
                                         size_t *capacity)
{
    unsigned char *cached = block_obtain_cached(size, GROW_FROM_CACHE_LARGEST(size), capacity);
    if (cached) {
        memcpy(cached, block, used);
        free(block);
        return cached;
    }
    *capacity = size;
    return realloc(block, size);
}

void message_block_release(unsigned char *block, size_t capacity)
{
    block_release(block, capacity);
}

void received_message_free(struct received_message *message)
{
    message_block_release(message->data, message->capacity);
    free(message->frame_header);
    free(message);
}

/* ---- opening and closing ------------------------------------------------------------------ */

int connection_mark_open(struct client_connection *conn)
{
    conn->last_proof_of_life = transport_monotonic_seconds();
    pthread_mutex_lock(&conn->lock);
    conn->state = CONNECTION_OPEN;
    int wants_write = conn->send_head || conn->close_requested;
    pthread_cond_broadcast(&conn->changed);
    pthread_mutex_unlock(&conn->lock);
    return wants_write;
}

void connection_fail_pending_sends(struct client_connection *conn)
{
    for (struct send_request *r = conn->send_head; r; r = r->next) {
        r->finished = 1;
        r->failed = 1;
    }
    conn->send_head = conn->send_tail = NULL;
}

int connection_take_close_request(struct client_connection *conn, int *code, char *reason)
{
    if (!conn->close_requested || conn->close_sent)
        return 0;
    conn->close_sent = 1;
    conn->sent_close_code = conn->close_requested_code;
    memcpy(conn->sent_close_reason, conn->close_requested_reason, sizeof conn->sent_close_reason);
    connection_fail_pending_sends(conn);
    pthread_cond_broadcast(&conn->changed);
    *code = conn->sent_close_code;
    memcpy(reason, conn->sent_close_reason, TRANSPORT_CLOSE_REASON_SIZE);
    return 1;
}

enum receive_outcome connection_close_soon(struct client_connection *conn, int code,
                                           const char *reason)
{
    conn->discarding = 1;
    free(conn->assembling);
    conn->assembling = NULL;
    conn->assembling_size = conn->assembling_capacity = 0;
    pthread_mutex_lock(&conn->lock);
    if (!conn->close_requested) {
        conn->close_requested = 1;
        conn->close_requested_code = code;
        snprintf(conn->close_requested_reason, sizeof conn->close_requested_reason, "%s", reason);
    }
    pthread_mutex_unlock(&conn->lock);
    return RECEIVE_SEND_CLOSE;
}

void connection_record_peer_close(struct client_connection *conn, const unsigned char *payload,
                                  size_t size)
{
    if (size < 2) {
        conn->peer_close_code = LWS_CLOSE_STATUS_NO_STATUS;
        return;
    }
    conn->peer_close_code = payload[0] << 8 | payload[1];
    size_t length = size - 2;
    if (length >= sizeof conn->peer_close_reason)
        length = sizeof conn->peer_close_reason - 1;
    memcpy(conn->peer_close_reason, payload + 2, length);
    conn->peer_close_reason[length] = '\0';
}

void connection_record_end(struct client_connection *conn, const char *error)
{
    pthread_mutex_lock(&conn->lock);
    if (conn->state == CONNECTION_CONNECTING) {
        conn->failed_to_open = 1;
        if (!conn->error[0])
            snprintf(conn->error, sizeof conn->error, "%s",
                     error ? error : "the connection closed during the handshake");
        conn->close_code = 1006;
        snprintf(conn->close_reason, sizeof conn->close_reason, "%.120s", conn->error);
    } else if (conn->state == CONNECTION_OPEN) {
        if (conn->close_sent) {
            conn->close_code = conn->sent_close_code;
            memcpy(conn->close_reason, conn->sent_close_reason, sizeof conn->close_reason);
        } else if (conn->peer_close_code) {
            conn->close_code = conn->peer_close_code;
            memcpy(conn->close_reason, conn->peer_close_reason, sizeof conn->close_reason);
        } else {
            /* 1006: no Close frame. Say whether the keepalive gave up on a silent peer. */
            double silent = transport_monotonic_seconds() - conn->last_proof_of_life;
            conn->close_code = 1006;
            if (conn->keepalive_enabled && silent + 0.5 >= conn->keepalive.secs_since_valid_hangup)
                snprintf(conn->close_reason, sizeof conn->close_reason,
                         "no answer to pings for %.0f s", silent);
            else
                snprintf(conn->close_reason, sizeof conn->close_reason, "%s",
                         error ? error : "connection lost");
        }
    }
    conn->state = CONNECTION_CLOSED;
    connection_fail_pending_sends(conn);
    pthread_cond_broadcast(&conn->changed);
    pthread_mutex_unlock(&conn->lock);

    free(conn->assembling);
    conn->assembling = NULL;
    conn->assembling_size = conn->assembling_capacity = 0;
    transfer_assembler_free(&conn->transfers);
}

/* ---- sending ------------------------------------------------------------------------------ */

int connection_next_fragment(struct client_connection *conn, unsigned char *header_out,
                             size_t capacity, struct outgoing_fragment *fragment)
{
    struct send_request *request = conn->send_head;
    if (!request || (request->sealing && request->message_index >= request->messages_ready))
        return 0; /* nothing, or the next chunk is not sealed yet (its sealer wakes us) */
    const struct chunk_plan *plan = request->plan;
    size_t header_size = plan ? plan->header_size : 0;
    size_t payload_size =
        plan ? framing_chunk_payload_size(plan, request->message_index) : request->payload_size;
    memset(fragment, 0, sizeof *fragment);
    fragment->request = request;
    fragment->is_text = request->is_text;
    fragment->is_start = request->message_offset == 0;
    if (fragment->is_start && plan)
        fragment->header_size =
            framing_write_header(plan, request->message_index, header_out, capacity);
    /* The header always goes whole into the first fragment, so later offsets are payload. */
    size_t payload_done = request->message_offset ? request->message_offset - header_size : 0;
    size_t take = payload_size - payload_done;
    if (take > capacity - fragment->header_size)
        take = capacity - fragment->header_size;
    fragment->payload = request->payload + payload_done;
    if (plan)
        fragment->payload += (size_t)request->message_index * plan->payload_per_chunk;
    fragment->payload_size = take;
    fragment->is_end =
        request->message_offset + fragment->header_size + take == header_size + payload_size;
    return 1;
}

int connection_fragment_sent(struct client_connection *conn,
                             const struct outgoing_fragment *fragment)
{
    struct send_request *request = fragment->request;
    request->message_offset += fragment->header_size + fragment->payload_size;
    if (fragment->is_end) {
        request->message_offset = 0;
        conn->send_head = request->next;
        if (!conn->send_head)
            conn->send_tail = NULL;
        request->next = NULL;
        if (++request->message_index == request->message_count) {
            request->finished = 1;
            pthread_cond_broadcast(&conn->changed);
        } else {
            /* Between two chunks, let other threads' messages through (round robin). */
            if (conn->send_tail)
                conn->send_tail->next = request;
            else
                conn->send_head = request;
            conn->send_tail = request;
        }
    }
    return conn->send_head != NULL || conn->close_requested;
}

/* ---- receiving ---------------------------------------------------------------------------- */

/* Queues a complete message (pausing the socket when the receive queue is full). */
static enum receive_outcome queue_message(struct client_connection *conn,
                                          struct received_message *message)
{
    pthread_mutex_lock(&conn->lock);
    if (conn->received_tail)
        conn->received_tail->next = message;
    else
        conn->received_head = message;
    conn->received_tail = message;
    conn->received_bytes += message->size;
    /* Stop reading while Python is behind: TCP backpressure then reaches the peer. */
    int pause = conn->received_bytes >= conn->receive_queue_limit && !conn->receiving_paused;
    if (pause) {
        conn->receiving_paused = 1;
        conn->resume_receiving = 0;
    }
    pthread_cond_broadcast(&conn->changed);
    pthread_mutex_unlock(&conn->lock);
    return pause ? RECEIVE_PAUSE_READING : RECEIVE_CONTINUE;
}

/* Appends to the message's one block; queues the message at its end. */
static enum receive_outcome append_to_message(struct client_connection *conn, const void *data,
                                              size_t length, int last, size_t still_to_come)
{
    size_t needed = conn->assembling_size + length;
    if (needed + still_to_come > conn->assembling_capacity || !conn->assembling) {
        size_t capacity = needed + still_to_come;
        if (conn->assembling && capacity < 2 * conn->assembling_capacity)
            capacity = 2 * conn->assembling_capacity; /* fragmented: grow geometrically */
        if (capacity > conn->max_message_size)
            capacity = conn->max_message_size;
        if (capacity < needed)
            capacity = needed;
        if (capacity == 0)
            capacity = 1;
        unsigned char *grown =
            conn->assembling
                ? message_block_grow(conn->assembling, conn->assembling_size, capacity, &capacity)
                : message_block_obtain(capacity, &capacity);
        if (!grown)
            return connection_close_soon(conn, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION,
                                         "client out of memory");
        conn->assembling = grown;
        conn->assembling_capacity = capacity;
    }
    if (length)
        memcpy(conn->assembling + conn->assembling_size, data, length);
    conn->assembling_size = needed;
    if (!last)
        return RECEIVE_CONTINUE;
    if (!conn->assembling_binary && !utf8_is_valid(conn->assembling, conn->assembling_size))
        return connection_close_soon(conn, LWS_CLOSE_STATUS_INVALID_PAYLOAD, "text is not UTF-8");

    struct received_message *message = calloc(1, sizeof *message);
    if (!message)
        return connection_close_soon(conn, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION,
                                     "client out of memory");
    message->data = conn->assembling;
    message->size = conn->assembling_size;
    message->capacity = conn->assembling_capacity;
    message->is_binary = conn->assembling_binary;
    if (conn->assembling_capacity > message->size + message->size / 4 + 4096) {
        unsigned char *trimmed = realloc(message->data, message->size ? message->size : 1);
        if (trimmed) {
            message->data = trimmed;
            message->capacity = message->size ? message->size : 1;
        }
    }
    conn->assembling = NULL;
    conn->assembling_size = conn->assembling_capacity = 0;
    return queue_message(conn, message);
}

/* A key set from Python reaches the assembler between messages, so a transfer's chunks see one
 * key (the transfer keeps the one its chunk 0 saw). */
static void take_room_key(struct client_connection *conn)
{
    pthread_mutex_lock(&conn->lock);
    if (conn->room_key_changed) {
        transfer_assembler_set_key(&conn->transfers, &conn->room_key);
        conn->room_key_changed = 0;
    }
    pthread_mutex_unlock(&conn->lock);
}

/* A framed chunk's bytes: into its transfer's buffer, or (no frame header after all) into an
 * ordinary message. */
static enum receive_outcome receive_chunk(struct client_connection *conn, const void *data,
                                          size_t length, const struct payload_position *at)
{
    size_t used;
    struct completed_transfer done;
    switch (transfer_assembler_take(&conn->transfers, data, length, at->last_of_message, &used,
                                    &done)) {
    case ASSEMBLER_TAKEN:
        return RECEIVE_CONTINUE;
    case ASSEMBLER_NOT_FRAMED: {
        conn->message_to_transfers = 0;
        conn->assembling_size = 0;
        conn->assembling_binary = 1;
        const unsigned char *rest = (const unsigned char *)data + used;
        size_t rest_size = length - used;
        enum receive_outcome outcome =
            append_to_message(conn, conn->transfers.header, conn->transfers.header_size,
                              at->last_of_message && rest_size == 0, rest_size + at->rest_of_frame);
        if (outcome != RECEIVE_CONTINUE || rest_size == 0)
            return outcome;
        return append_to_message(conn, rest, rest_size, at->last_of_message, at->rest_of_frame);
    }
    case ASSEMBLER_COMPLETED:
        break;
    }
    struct received_message *message = calloc(1, sizeof *message);
    if (!message) {
        block_release(done.payload, done.capacity);
        free(done.header);
        return connection_close_soon(conn, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION,
                                     "client out of memory");
    }
    message->data = done.payload;
    message->size = done.size;
    message->capacity = done.capacity;
    message->is_binary = 1;
    message->frame_header = done.header;
    message->frame_header_size = done.header_size;
    message->opened = done;
    message->opened.payload = message->opened.header = NULL; /* owned above */
    return queue_message(conn, message);
}

enum receive_outcome connection_receive(struct client_connection *conn, const void *data,
                                        size_t length, const struct payload_position *at)
{
    if (conn->discarding)
        return RECEIVE_CONTINUE;
    if (at->first_of_message) {
        conn->message_bytes = 0;
        conn->message_to_transfers = at->binary && conn->reassemble_transfers;
        conn->assembling_size = 0;
        conn->assembling_binary = at->binary;
        if (conn->message_to_transfers) {
            transfer_assembler_start_message(&conn->transfers);
            take_room_key(conn);
        }
    }
    size_t still_to_come = at->rest_of_frame;
    size_t needed = conn->message_bytes + length;
    if (needed > conn->max_message_size || still_to_come > conn->max_message_size - needed) {
        char reason[64];
        snprintf(reason, sizeof reason, "message larger than %zu bytes", conn->max_message_size);
        return connection_close_soon(conn, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, reason);
    }
    conn->message_bytes = needed;
    if (conn->message_to_transfers)
        return receive_chunk(conn, data, length, at);
    return append_to_message(conn, data, length, at->last_of_message, still_to_come);
}
