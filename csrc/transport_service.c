/* transport_service.c — the one libwebsockets service thread per process. It owns the lws
 * context, opens client connections, streams queued sends through each connection's staging
 * buffer, assembles received messages and records how connections end. No Python, no GIL. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "transport_internal.h"

/* A vhost per (proxy, CA file): in lws both are vhost settings, not connection settings. */
struct client_vhost {
    struct client_vhost *next;
    char *proxy;
    char *ca_file;
    char *name;
    struct lws_vhost *vhost;
};

enum service_phase { SERVICE_IDLE, SERVICE_STARTING, SERVICE_RUNNING, SERVICE_EXITED };

static struct {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    enum service_phase phase;
    int process_exiting; /* set by service_shutdown(): no new connections after it */
    int stop_requested;  /* close everything, then stop once no connection is left */
    int stop_now;        /* stop even if closing handshakes are still under way */
    int live_count;
    int thread_joined;
    pthread_t thread;
    struct lws_context *context;
    struct connection *pending_head;
    char start_error[256];
} service = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .changed = PTHREAD_COND_INITIALIZER,
};

/* Service-thread only. */
static struct client_vhost *client_vhosts;
static struct connection *live_head;
static int stop_handled;

double transport_monotonic_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

void connection_retain(struct connection *conn)
{
    atomic_fetch_add(&conn->refcount, 1);
}

void connection_release(struct connection *conn)
{
    if (atomic_fetch_sub(&conn->refcount, 1) != 1)
        return;
    for (struct received_message *m = conn->received_head, *next; m; m = next) {
        next = m->next;
        message_block_release(m->data, m->capacity);
        free(m);
    }
    for (size_t i = 0; i < conn->header_count; i++) {
        free(conn->headers[i].name);
        free(conn->headers[i].value);
    }
    free(conn->headers);
    free(conn->address);
    free(conn->path);
    free(conn->host_header);
    free(conn->ca_file);
    free(conn->proxy);
    free(conn->staging);
    free(conn->assembling);
    rawws_free(conn->raw);
    pthread_mutex_destroy(&conn->lock);
    pthread_cond_destroy(&conn->changed);
    free(conn);
}

/* ---- message blocks ----------------------------------------------------------------------- */

/* A few recently freed large message blocks, kept for the next message of about their size. A
 * fresh multi-MiB malloc is a new mmap whose every 4 KiB page faults and is zeroed when first
 * written: that cost the receiving thread about a quarter of its time on a 16 MiB-chunk
 * transfer. Bounded: at most BLOCK_CACHE_SLOTS blocks of at most BLOCK_CACHE_LARGEST bytes. */
#define BLOCK_CACHE_SLOTS 2
#define BLOCK_CACHE_SMALLEST (1u * 1024 * 1024)
#define BLOCK_CACHE_LARGEST (FRAMING_DEFAULT_MESSAGE_SIZE + 64u * 1024)

static struct {
    pthread_mutex_t lock;
    unsigned char *block[BLOCK_CACHE_SLOTS];
    size_t capacity[BLOCK_CACHE_SLOTS];
} block_cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* A cached block of at least `size` bytes, and at most `largest`; NULL if there is none. */
static unsigned char *cached_block(size_t size, size_t largest, size_t *capacity)
{
    if (size < BLOCK_CACHE_SMALLEST || size > BLOCK_CACHE_LARGEST)
        return NULL;
    unsigned char *block = NULL;
    pthread_mutex_lock(&block_cache.lock);
    for (int i = 0; i < BLOCK_CACHE_SLOTS && !block; i++) {
        size_t have = block_cache.capacity[i];
        if (block_cache.block[i] && have >= size && have <= largest) {
            block = block_cache.block[i];
            block_cache.block[i] = NULL;
            *capacity = have;
        }
    }
    pthread_mutex_unlock(&block_cache.lock);
    return block;
}

unsigned char *message_block_obtain(size_t size, size_t *capacity)
{
    /* Not much larger than needed: the message keeps the block as it is. */
    unsigned char *block = cached_block(size, size + size / 4 + 4096, capacity);
    if (block)
        return block;
    *capacity = size;
    return malloc(size ? size : 1);
}

/* Grows a fragmented message's block to at least `size` bytes. Its final size is unknown, so any
 * cached block that fits is taken (a frame-by-frame relay makes every large message arrive
 * fragmented, and growing by realloc would fault in fresh pages again). */
static unsigned char *message_block_grow(unsigned char *block, size_t used, size_t size,
                                         size_t *capacity)
{
    unsigned char *cached = cached_block(size, BLOCK_CACHE_LARGEST, capacity);
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
    if (block && capacity >= BLOCK_CACHE_SMALLEST && capacity <= BLOCK_CACHE_LARGEST) {
        pthread_mutex_lock(&block_cache.lock);
        for (int i = 0; i < BLOCK_CACHE_SLOTS; i++) {
            if (!block_cache.block[i]) {
                block_cache.block[i] = block;
                block_cache.capacity[i] = capacity;
                pthread_mutex_unlock(&block_cache.lock);
                return;
            }
        }
        pthread_mutex_unlock(&block_cache.lock);
    }
    free(block);
}

/* ---- bookkeeping of connections the service thread knows -------------------------------- */

static void live_add(struct connection *conn)
{
    conn->next_live = live_head;
    conn->previous_live = NULL;
    if (live_head)
        live_head->previous_live = conn;
    live_head = conn;
    pthread_mutex_lock(&service.lock);
    service.live_count++;
    pthread_mutex_unlock(&service.lock);
}

static void live_remove(struct connection *conn)
{
    if (conn->previous_live)
        conn->previous_live->next_live = conn->next_live;
    else
        live_head = conn->next_live;
    if (conn->next_live)
        conn->next_live->previous_live = conn->previous_live;
    conn->next_live = conn->previous_live = NULL;
    pthread_mutex_lock(&service.lock);
    service.live_count--;
    pthread_cond_broadcast(&service.changed);
    pthread_mutex_unlock(&service.lock);
}

static void copy_reason(char *out, size_t capacity, const char *text, size_t length)
{
    if (length >= capacity)
        length = capacity - 1;
    memcpy(out, text, length);
    out[length] = '\0';
}

void fail_pending_sends(struct connection *conn)
{
    for (struct send_request *r = conn->send_head; r; r = r->next) {
        r->finished = 1;
        r->failed = 1;
    }
    conn->send_head = conn->send_tail = NULL;
}

void finish_connection(struct connection *conn, struct lws *wsi, const char *error)
{
    if (!conn->service_holds_reference)
        return;
    if (wsi)
        lws_set_opaque_user_data(wsi, NULL);
    conn->wsi = NULL;

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
    fail_pending_sends(conn);
    pthread_cond_broadcast(&conn->changed);
    pthread_mutex_unlock(&conn->lock);

    free(conn->assembling);
    conn->assembling = NULL;
    conn->assembling_size = conn->assembling_capacity = 0;
    live_remove(conn);
    conn->service_holds_reference = 0;
    connection_release(conn);
}

/* RFC 3629 UTF-8 (no overlongs, no surrogates, at most U+10FFFF): RFC 6455 requires text
 * messages to be valid, and lws's own client checks it too. */
static int utf8_is_valid(const unsigned char *text, size_t size)
{
    size_t i = 0;
    while (i < size) {
        unsigned char c = text[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t extra;
        unsigned char low = 0x80, high = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF)
            extra = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            extra = 2;
            if (c == 0xE0)
                low = 0xA0;
            else if (c == 0xED)
                high = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            extra = 3;
            if (c == 0xF0)
                low = 0x90;
            else if (c == 0xF4)
                high = 0x8F;
        } else
            return 0;
        if (size - i <= extra || text[i + 1] < low || text[i + 1] > high)
            return 0;
        for (size_t k = 2; k <= extra; k++)
            if ((text[i + k] & 0xC0) != 0x80)
                return 0;
        i += extra + 1;
    }
    return 1;
}

/* ---- opening connections ------------------------------------------------------------------ */

static const struct lws_protocols *client_protocols(void);

static int same_setting(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static char *duplicate_or_null(const char *text)
{
    return text ? strdup(text) : NULL;
}

static struct lws_vhost *client_vhost_for(const char *proxy, const char *ca_file)
{
    static unsigned created;
    for (struct client_vhost *v = client_vhosts; v; v = v->next)
        if (same_setting(v->proxy, proxy) && same_setting(v->ca_file, ca_file))
            return v->vhost;

    struct client_vhost *entry = calloc(1, sizeof *entry);
    if (!entry)
        return NULL;
    char name[32];
    snprintf(name, sizeof name, "client-%u", created++);
    entry->proxy = duplicate_or_null(proxy);
    entry->ca_file = duplicate_or_null(ca_file);
    entry->name = strdup(name);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = client_protocols();
    info.vhost_name = entry->name;
    info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.client_ssl_ca_filepath = ca_file;
    /* An empty proxy (rather than NULL) keeps lws from reading $http_proxy by itself: the
     * Python side decides per URL which proxy applies, honouring no_proxy. */
    info.http_proxy_address = proxy ? proxy : "";
    entry->vhost = lws_create_vhost(service.context, &info);
    if (!entry->vhost || (proxy && !entry->proxy) || (ca_file && !entry->ca_file) || !entry->name) {
        free(entry->proxy);
        free(entry->ca_file);
        free(entry->name);
        free(entry);
        return NULL;
    }
    entry->next = client_vhosts;
    client_vhosts = entry;
    return entry->vhost;
}

static void open_connection(struct connection *conn)
{
    connection_retain(conn);
    conn->service_holds_reference = 1;
    live_add(conn);

    struct lws_vhost *vhost = client_vhost_for(conn->proxy, conn->ca_file);
    if (!vhost) {
        finish_connection(conn, NULL,
                          conn->ca_file ? "could not set up TLS with the given CA file"
                                        : "could not set up the client (lws vhost)");
        return;
    }
    /* Our own WebSocket code over a raw socket is many times faster than lws 4.1's ws client
     * (which parses and masks byte by byte). lws keeps two cases: HTTP proxies (it does CONNECT
     * for its http/ws roles only) and wss:// (its 4.1 raw client fails to start TLS: "tls start
     * fail", errno EBADF). SEGMENTATION_SUITE_WS_ENGINE=lws forces lws for every connection. */
    const char *engine = getenv("SEGMENTATION_SUITE_WS_ENGINE");
    int use_raw = !conn->proxy && !conn->use_tls && !(engine && strcmp(engine, "lws") == 0);
    if (use_raw && rawws_attach(conn) < 0) {
        finish_connection(conn, NULL, "out of memory");
        return;
    }
    struct lws_client_connect_info info;
    memset(&info, 0, sizeof info);
    info.context = service.context;
    info.vhost = vhost;
    info.address = conn->address;
    info.port = conn->port;
    info.path = conn->path;
    info.host = conn->host_header;
    info.ssl_connection = conn->use_tls ? LCCSCF_USE_SSL : 0;
    info.alpn = "http/1.1";
    info.local_protocol_name = client_protocols()[0].name;
    info.opaque_user_data = conn;
    if (use_raw)
        info.method = "RAW"; /* keepalive: transport_rawws.c pings by itself */
    else
        info.retry_and_idle_policy = conn->keepalive_enabled ? &conn->keepalive : NULL;
    info.pwsi = &conn->wsi;
    conn->last_proof_of_life = transport_monotonic_seconds();
    if (!lws_client_connect_via_info(&info))
        finish_connection(conn, NULL, "could not start the connection");
}

/* ---- requests from Python threads --------------------------------------------------------- */

void service_notify(struct connection *conn)
{
    pthread_mutex_lock(&service.lock);
    if (!conn->pending) {
        conn->pending = 1;
        connection_retain(conn);
        conn->next_pending = service.pending_head;
        service.pending_head = conn;
    }
    if (service.context)
        lws_cancel_service(service.context);
    pthread_mutex_unlock(&service.lock);
}

static void handle_requests_of(struct connection *conn)
{
    pthread_mutex_lock(&conn->lock);
    int open_it = conn->connect_requested;
    conn->connect_requested = 0;
    int abort_it = conn->abort_requested;
    int resume = conn->resume_receiving && conn->receiving_paused;
    if (resume)
        conn->resume_receiving = conn->receiving_paused = 0;
    int wants_write = conn->state == CONNECTION_OPEN && (conn->send_head || conn->close_requested);
    pthread_mutex_unlock(&conn->lock);

    if (open_it) {
        open_connection(conn);
        return;
    }
    if (!conn->wsi)
        return;
    if (abort_it) {
        lws_set_timeout(conn->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        return;
    }
    if (resume)
        lws_rx_flow_control(conn->wsi, 1);
    if (wants_write)
        lws_callback_on_writable(conn->wsi);
}

static void handle_stop_request(void)
{
    for (struct connection *conn = live_head; conn; conn = conn->next_live) {
        pthread_mutex_lock(&conn->lock);
        int open = conn->state == CONNECTION_OPEN;
        if (open && !conn->close_requested) {
            conn->close_requested = 1;
            conn->close_requested_code = LWS_CLOSE_STATUS_GOINGAWAY;
            snprintf(conn->close_requested_reason, sizeof conn->close_requested_reason,
                     "client is exiting");
        }
        pthread_mutex_unlock(&conn->lock);
        if (!conn->wsi)
            continue;
        if (open)
            lws_callback_on_writable(conn->wsi);
        else
            lws_set_timeout(conn->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    }
}

/* Returns 1 when the service loop should end. */
static int handle_requests(void)
{
    pthread_mutex_lock(&service.lock);
    struct connection *pending = service.pending_head;
    service.pending_head = NULL;
    for (struct connection *c = pending; c; c = c->next_pending)
        c->pending = 0;
    int stop_requested = service.stop_requested, stop_now = service.stop_now;
    pthread_mutex_unlock(&service.lock);

    while (pending) {
        struct connection *next = pending->next_pending;
        handle_requests_of(pending);
        connection_release(pending);
        pending = next;
    }
    if (stop_requested && !stop_handled) {
        stop_handled = 1;
        handle_stop_request();
    }
    return stop_now || (stop_requested && !live_head);
}

/* ---- the lws callback --------------------------------------------------------------------- */

static int append_headers(struct connection *conn, struct lws *wsi, unsigned char **position,
                          unsigned char *end)
{
    for (size_t i = 0; i < conn->header_count; i++) {
        const struct header_pair *h = &conn->headers[i];
        if (lws_add_http_header_by_name(wsi, (const unsigned char *)h->name,
                                        (const unsigned char *)h->value, (int)strlen(h->value),
                                        position, end)) {
            snprintf(conn->error, sizeof conn->error, "the request headers do not fit in %u bytes",
                     TRANSPORT_RX_BUFFER_SIZE);
            return -1;
        }
    }
    return 0;
}

static int close_with(struct connection *conn, struct lws *wsi, int code, const char *reason)
{
    conn->close_sent = 1;
    conn->sent_close_code = code;
    snprintf(conn->sent_close_reason, sizeof conn->sent_close_reason, "%s", reason);
    lws_close_reason(wsi, (enum lws_close_status)code, (unsigned char *)conn->sent_close_reason,
                     strlen(conn->sent_close_reason));
    return -1;
}

int close_soon(struct connection *conn, struct lws *wsi, int code, const char *reason)
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
    lws_callback_on_writable(wsi);
    return 0;
}

int receive_payload(struct connection *conn, struct lws *wsi, const void *data, size_t length,
                    const struct payload_position *at)
{
    if (conn->discarding)
        return 0;
    if (at->first_of_message) {
        conn->assembling_size = 0;
        conn->assembling_binary = at->binary;
    }
    size_t still_to_come = at->rest_of_frame;
    size_t needed = conn->assembling_size + length;
    if (needed > conn->max_message_size || still_to_come > conn->max_message_size - needed) {
        char reason[64];
        snprintf(reason, sizeof reason, "message larger than %zu bytes", conn->max_message_size);
        return close_soon(conn, wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, reason);
    }
    if (needed + still_to_come > conn->assembling_capacity || !conn->assembling) {
        size_t capacity = needed + still_to_come;
        if (!at->first_of_message && capacity < 2 * conn->assembling_capacity)
            capacity = 2 * conn->assembling_capacity; /* fragmented: grow geometrically */
        if (capacity > conn->max_message_size)
            capacity = conn->max_message_size;
        if (capacity == 0)
            capacity = 1;
        unsigned char *grown =
            conn->assembling
                ? message_block_grow(conn->assembling, conn->assembling_size, capacity, &capacity)
                : message_block_obtain(capacity, &capacity);
        if (!grown)
            return close_soon(conn, wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION,
                              "client out of memory");
        conn->assembling = grown;
        conn->assembling_capacity = capacity;
    }
    if (length)
        memcpy(conn->assembling + conn->assembling_size, data, length);
    conn->assembling_size = needed;
    if (!at->last_of_message)
        return 0;
    if (!conn->assembling_binary && !utf8_is_valid(conn->assembling, conn->assembling_size))
        return close_soon(conn, wsi, LWS_CLOSE_STATUS_INVALID_PAYLOAD, "text is not UTF-8");

    struct received_message *message = malloc(sizeof *message);
    if (!message)
        return close_soon(conn, wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "client out of memory");
    message->next = NULL;
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
    if (pause)
        lws_rx_flow_control(wsi, 0);
    return 0;
}

/* lws's own WebSocket client (wss:// and proxied connections) delivered some payload. */
static int receive_fragment(struct connection *conn, struct lws *wsi, const void *data,
                            size_t length)
{
    struct payload_position at = {
        .first_of_message = lws_is_first_fragment(wsi),
        .last_of_message = lws_is_final_fragment(wsi),
        .binary = lws_frame_is_binary(wsi),
        .rest_of_frame = lws_remaining_packet_payload(wsi),
    };
    return receive_payload(conn, wsi, data, length, &at);
}

int next_fragment(struct connection *conn, unsigned char *header_out, size_t capacity,
                  struct fragment *fragment)
{
    struct send_request *request = conn->send_head;
    if (!request)
        return 0;
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

int fragment_sent(struct connection *conn, const struct fragment *fragment)
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

/* lws's own WebSocket client can take more: copy the next fragment of the oldest send into the
 * staging buffer (lws masks it there in place) and hand it to lws. One fragment per callback
 * keeps every connection served fairly and lets pings through between fragments. */
static int write_next_fragment(struct connection *conn, struct lws *wsi)
{
    unsigned char *out = conn->staging + LWS_PRE;

    pthread_mutex_lock(&conn->lock);
    if (conn->close_requested) {
        int code = conn->close_requested_code;
        char reason[124];
        memcpy(reason, conn->close_requested_reason, sizeof reason);
        fail_pending_sends(conn);
        pthread_cond_broadcast(&conn->changed);
        pthread_mutex_unlock(&conn->lock);
        return close_with(conn, wsi, code, reason);
    }
    struct fragment fragment;
    if (!next_fragment(conn, out, TRANSPORT_STAGING_SIZE, &fragment)) {
        pthread_mutex_unlock(&conn->lock);
        return 0;
    }
    size_t used = fragment.header_size + fragment.payload_size;
    if (fragment.payload_size)
        memcpy(out + fragment.header_size, fragment.payload, fragment.payload_size);
    int flags = lws_write_ws_flags(fragment.is_text ? LWS_WRITE_TEXT : LWS_WRITE_BINARY,
                                   fragment.is_start, fragment.is_end);
    int more = fragment_sent(conn, &fragment);
    pthread_mutex_unlock(&conn->lock);

    if (lws_write(wsi, out, used, (enum lws_write_protocol)flags) < (int)used)
        return -1; /* the socket is gone: finish_connection() reports 1006, or the peer's Close */
    if (more)
        lws_callback_on_writable(wsi);
    return 0;
}

static int on_lws_event(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                        size_t len)
{
    (void)user;
    struct connection *conn = wsi ? lws_get_opaque_user_data(wsi) : NULL;
    if (!conn)
        return 0; /* vhost- and context-level events, or a connection already finished */
    if (conn->raw && reason != LWS_CALLBACK_CLIENT_CONNECTION_ERROR &&
        reason != LWS_CALLBACK_WSI_DESTROY)
        return rawws_on_event(conn, wsi, reason, in, len);

    switch (reason) {
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
        return append_headers(conn, wsi, (unsigned char **)in, *(unsigned char **)in + len);

    case LWS_CALLBACK_CLIENT_ESTABLISHED: {
        conn->last_proof_of_life = transport_monotonic_seconds();
        pthread_mutex_lock(&conn->lock);
        conn->state = CONNECTION_OPEN;
        int wants_write = conn->send_head || conn->close_requested;
        pthread_cond_broadcast(&conn->changed);
        pthread_mutex_unlock(&conn->lock);
        if (wants_write)
            lws_callback_on_writable(wsi);
        return 0;
    }

    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: {
        char error[200];
        snprintf(error, sizeof error, "%s", in && len ? (const char *)in : "connection failed");
        pthread_mutex_lock(&conn->lock);
        if (!conn->error[0])
            snprintf(conn->error, sizeof conn->error, "%s", error);
        pthread_mutex_unlock(&conn->lock);
        finish_connection(conn, wsi, error);
        return 0;
    }

    case LWS_CALLBACK_CLIENT_RECEIVE:
        return receive_fragment(conn, wsi, in, len);

    case LWS_CALLBACK_CLIENT_RECEIVE_PONG:
        conn->last_proof_of_life = transport_monotonic_seconds();
        return 0;

    case LWS_CALLBACK_CLIENT_WRITEABLE:
        return write_next_fragment(conn, wsi);

    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE: {
        const unsigned char *payload = in;
        if (len >= 2) {
            conn->peer_close_code = payload[0] << 8 | payload[1];
            copy_reason(conn->peer_close_reason, sizeof conn->peer_close_reason,
                        (const char *)payload + 2, len - 2);
        } else {
            conn->peer_close_code = LWS_CLOSE_STATUS_NO_STATUS;
        }
        return 0;
    }

    case LWS_CALLBACK_CLIENT_CLOSED:
    case LWS_CALLBACK_WSI_DESTROY:
        finish_connection(conn, wsi, NULL);
        return 0;

    default:
        return 0;
    }
}

static const struct lws_protocols *client_protocols(void)
{
    static const struct lws_protocols protocols[] = {
        {
            .name = "segmentation-suite-client",
            .callback = on_lws_event,
            .rx_buffer_size = TRANSPORT_RX_BUFFER_SIZE,
            /* A whole staging fragment (plus frame header) goes out in one send(). */
            .tx_packet_size = TRANSPORT_STAGING_SIZE + 16,
        },
        {0},
    };
    return protocols;
}

/* ---- the thread --------------------------------------------------------------------------- */

static void *service_main(void *unused)
{
    (void)unused;
    const char *log_mask = getenv("SEGMENTATION_SUITE_LWS_LOG");
    lws_set_log_level(log_mask ? atoi(log_mask) : 0, NULL);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT | LWS_SERVER_OPTION_EXPLICIT_VHOSTS |
                   LWS_SERVER_OPTION_VALIDATE_UTF8;
    info.pt_serv_buf_size = TRANSPORT_RAW_READ_SIZE; /* the raw sockets' read size */
    info.count_threads = 1;
    struct lws_context *context = lws_create_context(&info);

    pthread_mutex_lock(&service.lock);
    if (!context) {
        snprintf(service.start_error, sizeof service.start_error,
                 "libwebsockets could not create its context");
        service.phase = SERVICE_EXITED;
        pthread_cond_broadcast(&service.changed);
        pthread_mutex_unlock(&service.lock);
        return NULL;
    }
    service.context = context;
    service.phase = SERVICE_RUNNING;
    pthread_cond_broadcast(&service.changed);
    pthread_mutex_unlock(&service.lock);

    while (!handle_requests())
        if (lws_service(context, 0) < 0)
            break;

    pthread_mutex_lock(&service.lock);
    service.context = NULL; /* no more lws_cancel_service() on it */
    pthread_mutex_unlock(&service.lock);
    lws_context_destroy(context); /* closes what is left: finish_connection() for each */
    while (live_head)             /* connections whose wsi never got to the callback */
        finish_connection(live_head, NULL, "the client is exiting");
    handle_requests(); /* drop wake-up references queued while stopping */
    for (struct client_vhost *v = client_vhosts, *next; v; v = next) {
        next = v->next;
        free(v->proxy);
        free(v->ca_file);
        free(v->name);
        free(v);
    }
    client_vhosts = NULL;

    pthread_mutex_lock(&service.lock);
    service.phase = SERVICE_EXITED;
    pthread_cond_broadcast(&service.changed);
    pthread_mutex_unlock(&service.lock);
    return NULL;
}

int service_start(char *error, size_t error_size)
{
    int result = 0;
    pthread_mutex_lock(&service.lock);
    if (service.process_exiting) {
        snprintf(error, error_size, "the interpreter is exiting: no new connections");
        result = -1;
    } else if (service.phase == SERVICE_IDLE) {
        service.phase = SERVICE_STARTING;
        if (pthread_create(&service.thread, NULL, service_main, NULL) != 0) {
            service.phase = SERVICE_IDLE;
            snprintf(error, error_size, "could not start the transport thread");
            result = -1;
        }
    }
    while (result == 0 && service.phase == SERVICE_STARTING)
        pthread_cond_wait(&service.changed, &service.lock);
    if (result == 0 && service.phase != SERVICE_RUNNING) {
        snprintf(error, error_size, "%s",
                 service.start_error[0] ? service.start_error : "the transport thread stopped");
        result = -1;
    }
    pthread_mutex_unlock(&service.lock);
    return result;
}

void service_shutdown(double grace_seconds)
{
    pthread_mutex_lock(&service.lock);
    service.process_exiting = 1;
    if (service.phase != SERVICE_RUNNING && service.phase != SERVICE_EXITED) {
        pthread_mutex_unlock(&service.lock);
        return;
    }
    int join = !service.thread_joined;
    service.thread_joined = 1;
    service.stop_requested = 1;
    if (service.context)
        lws_cancel_service(service.context);

    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)grace_seconds;
    deadline.tv_nsec += (long)((grace_seconds - (double)(time_t)grace_seconds) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    while (service.phase == SERVICE_RUNNING && service.live_count > 0)
        if (pthread_cond_timedwait(&service.changed, &service.lock, &deadline) != 0)
            break;
    service.stop_now = 1;
    if (service.context)
        lws_cancel_service(service.context);
    pthread_mutex_unlock(&service.lock);
    if (join)
        pthread_join(service.thread, NULL);
}
