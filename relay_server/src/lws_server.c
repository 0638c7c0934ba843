/* lws_server.c — the thin layer between libwebsockets and the relay core: HTTP endpoints,
 * WebSocket upgrades, and turning lws callbacks into core events and core requests into lws
 * calls. All decisions about rooms and routing live in relay_core.c. */
#include "lws_server.h"

#include <libwebsockets.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buffer_arena.h"
#include "log.h"
#include "nats_backplane.h"
#include "relay_core.h"
#include "rfc6455.h"
#include "room_code.h"
#include "version.h"

_Static_assert(LWS_PRE <= SEND_QUEUE_HEADROOM, "fragments need room for the lws frame header");

/* lws reads at most this much per call, into one buffer per connection: large reads mean few
 * syscalls per forwarded byte. The buffers live in an arena that commits memory only when a
 * connection actually receives, so idle connections stay small (docs/architecture.md). */
#define RECEIVE_BUFFER_SIZE (1024 * 1024)
/* After a message this large, a connection's receive buffer gives its pages back. */
#define TRIM_RECEIVE_BUFFER_AFTER (1024 * 1024)
#define SHUTDOWN_DEADLINE_SECONDS 1.5
#define CLOSE_GRACE_SECONDS 2
#define MAX_IGNORED_BODY_BYTES (64 * 1024)
/* Handshakes in progress at once, each holding a header buffer (about 5 KB) from the moment its
 * socket is accepted: enough that --max-handshakes-per-address from a hundred addresses at once
 * do not make anyone wait for a buffer. */
#define HEADER_POOL_SIZE 1024
/* Our lws protocol's name: the one Sec-WebSocket-Protocol offer lws 4.1 can accept. */
#define RELAY_PROTOCOL_NAME "segmentation-suite-relay"

/* Per-connection state lws allocates for us (HTTP requests and WebSocket sessions). */
struct session {
    struct connection *connection;
    bool close_requested;
    bool ping_requested;
    bool draining; /* the last frame's buffer is still in use by lws (compression) */
    int close_code;
    char close_reason[64];
    size_t ignored_body_bytes;
    size_t received_since_trim;
    double last_trim;
};

struct server {
    struct lws_context *context;
    struct lws_vhost *vhost;
    struct relay *relay;
    const struct relay_config *config;
    lws_sorted_usec_list_t tick_timer;
    lws_sorted_usec_list_t shutdown_timer; /* wakes the loop often while connections close */
    double shutdown_started;
    bool shutting_down;
    struct nats_backplane *backplane; /* --nats: this relay is a node of a cluster */
};

/* An accepted socket's standing with the core's per-address limits. Kept with the wsi (lws's
 * opaque user data, which every wsi has) because the peer's address cannot be read any more when
 * lws reports the wsi destroyed: its socket is closed by then. */
struct socket_record {
    char address[64];
    bool in_handshake;
};

static struct server server;
static struct buffer_arena *receive_buffers;
static volatile sig_atomic_t stop_signal;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* lws's allocator: receive buffers come from the arena, everything else from malloc. */
static void *allocate_for_lws(void *pointer, size_t size, const char *reason)
{
    if (buffer_arena_owns(receive_buffers, pointer)) {
        if (size == 0) {
            buffer_arena_give_back(receive_buffers, pointer);
            return NULL;
        }
        if (size <= buffer_arena_slot_size(receive_buffers))
            return pointer;
        void *moved = malloc(size);
        if (moved) {
            memcpy(moved, pointer, buffer_arena_slot_size(receive_buffers));
            buffer_arena_give_back(receive_buffers, pointer);
        }
        return moved;
    }
    if (!pointer && receive_buffers && reason && !strcmp(reason, "rx_ubuf") &&
        size <= buffer_arena_slot_size(receive_buffers)) {
        void *slot = buffer_arena_take(receive_buffers);
        if (slot)
            return slot;
    }
    if (size == 0) {
        free(pointer);
        return NULL;
    }
    return realloc(pointer, size);
}

/* After large messages, hands the pages of the connection's receive buffer back, at most once a
 * second so that a steady stream does not pay page faults for every message. Safe at the end of
 * a message: lws has delivered everything that buffer held. */
static void trim_receive_buffer(struct session *session, const void *received, size_t length,
                                bool final)
{
    session->received_since_trim += length;
    if (!final || session->received_since_trim < TRIM_RECEIVE_BUFFER_AFTER)
        return;
    double now = now_seconds();
    if (now - session->last_trim < 1.0)
        return;
    session->received_since_trim = 0;
    session->last_trim = now;
    void *slot = buffer_arena_slot_of(receive_buffers, received);
    if (slot)
        buffer_arena_trim(receive_buffers, slot);
}

/* --- core hooks ------------------------------------------------------------------------- */

static void want_write(void *context, void *transport)
{
    lws_callback_on_writable(transport);
}

static void pause_reading(void *context, void *transport, bool paused)
{
    lws_rx_flow_control(transport, paused ? 0 : 1);
}

static void close_connection(void *context, void *transport, int code, const char *reason)
{
    struct session *session = lws_wsi_user(transport);
    session->close_requested = true;
    session->close_code = code;
    snprintf(session->close_reason, sizeof(session->close_reason), "%s", reason);
    lws_rx_flow_control(transport, 1);
    lws_callback_on_writable(transport);
    /* A receiver that stopped reading never becomes writable: drop it if the close cannot go. */
    lws_set_timeout(transport, PENDING_TIMEOUT_CLOSE_SEND, CLOSE_GRACE_SECONDS);
}

static void send_ping(void *context, void *transport)
{
    struct session *session = lws_wsi_user(transport);
    session->ping_requested = true;
    lws_callback_on_writable(transport);
}

/* --- HTTP ------------------------------------------------------------------------------- */

static int respond(struct lws *wsi, unsigned status, const char *content_type, const char *body,
                   size_t body_length)
{
    unsigned char headers[LWS_PRE + 1024];
    unsigned char *start = headers + LWS_PRE, *p = start, *end = headers + sizeof(headers) - 1;
    if (lws_add_http_common_headers(wsi, status, content_type, body_length, &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    unsigned char *buffer = malloc(LWS_PRE + body_length + 1);
    if (!buffer)
        return -1;
    memcpy(buffer + LWS_PRE, body, body_length);
    int written = lws_write(wsi, buffer + LWS_PRE, body_length, LWS_WRITE_HTTP_FINAL);
    free(buffer);
    if (written < (int)body_length)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int respond_text(struct lws *wsi, unsigned status, const char *body)
{
    return respond(wsi, status, "text/plain", body, strlen(body));
}

static void peer_address(struct lws *wsi, char *out, size_t size)
{
    lws_get_peer_simple(wsi, out, size);
    /* IPv4 clients of a dual-stack socket appear as ::ffff:a.b.c.d; log and limit them as v4. */
    if (!strncmp(out, "::ffff:", 7) && strchr(out + 7, '.'))
        memmove(out, out + 7, strlen(out + 7) + 1);
}

/* The access token, if one is configured: from "Authorization: Bearer …" or "?token=…".
 * Compared through SHA-256 so that neither contents nor length leak through timing. */
static bool authorized(struct lws *wsi)
{
    if (!server.config->access_token_set)
        return true;
    char given[512] = "";
    char header[600];
    const char *token = NULL;
    if (lws_hdr_copy(wsi, header, sizeof(header), WSI_TOKEN_HTTP_AUTHORIZATION) > 0 &&
        !strncasecmp(header, "Bearer ", 7))
        token = header + 7;
    else
        token = lws_get_urlarg_by_name(wsi, "token=", given, sizeof(given));
    if (!token)
        return false;
    unsigned char expected_digest[SHA256_DIGEST_LENGTH], given_digest[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)server.config->access_token, strlen(server.config->access_token),
           expected_digest);
    SHA256((const unsigned char *)token, strlen(token), given_digest);
    return CRYPTO_memcmp(expected_digest, given_digest, SHA256_DIGEST_LENGTH) == 0;
}

static bool is_websocket_path(const char *path)
{
    if (!strcmp(path, "/ws"))
        return true;
    if (!strncmp(path, "/room/", 6) && path[6])
        return true;
    return server.config->enable_echo && !strcmp(path, "/echo");
}

static int reject(struct lws *wsi, unsigned status, const char *body, int reject_reason)
{
    relay_metrics(server.relay)->rejected[reject_reason]++;
    char address[64];
    peer_address(wsi, address, sizeof(address));
    relay_note_refusal(server.relay, address, "http_rejected", (int)status, now_seconds());
    return respond_text(wsi, status, body);
}

static int serve_metrics(struct lws *wsi)
{
    char body[8192];
    size_t length =
        metrics_render(relay_metrics(server.relay), relay_connection_count(server.relay),
                       relay_room_count(server.relay), relay_members_away(server.relay),
                       relay_queued_bytes(server.relay), body, sizeof(body));
    if (length >= sizeof(body))
        return respond_text(wsi, 500, "metrics too large\n");
    return respond(wsi, 200, "text/plain; version=0.0.4", body, length);
}

static int serve_create_room(struct lws *wsi)
{
    char address[64], code[ROOM_CODE_LENGTH + 1], body[64];
    peer_address(wsi, address, sizeof(address));
    const char *error = relay_reserve_room(server.relay, address, now_seconds(), code);
    if (error && !strcmp(error, "LAN_SESSION"))
        return respond(wsi, 404, "application/json", "{\"error\":\"This is a LAN session\"}", 33);
    if (error && !strcmp(error, "RATE_LIMITED"))
        return respond(wsi, 429, "application/json", "{\"error\":\"Rate limited\"}", 24);
    if (error && !strcmp(error, "TOO_MANY_ROOMS_FOR_ADDRESS")) {
        const char *refusal = "{\"error\":\"Too many rooms for this address\"}";
        return respond(wsi, 429, "application/json", refusal, strlen(refusal));
    }
    if (error)
        return respond(wsi, 503, "application/json", "{\"error\":\"Too many rooms\"}", 26);
    int length = snprintf(body, sizeof(body), "{\"room_code\":\"%s\"}", code);
    return respond(wsi, 200, "application/json", body, (size_t)length);
}

static int serve_http(struct lws *wsi, struct session *session, const char *path)
{
    bool is_post = lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0;
    bool is_get = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0;
    if (is_get && (!strcmp(path, "/") || !strcmp(path, "/health"))) {
        const char *body = "{\"status\":\"ok\",\"service\":\"Segmentation Suite "
                           "Relay\",\"version\":\"" RELAY_VERSION "\"}";
        char cluster_body[256];
        if (server.backplane) { /* which node answered: behind HAProxy an operator asks */
            snprintf(cluster_body, sizeof(cluster_body),
                     "{\"status\":\"ok\",\"service\":\"Segmentation Suite Relay\",\"version\":"
                     "\"" RELAY_VERSION "\",\"node\":\"%s\"}",
                     nats_backplane_io(server.backplane)->node);
            body = cluster_body;
        }
        return respond(wsi, 200, "application/json", body, strlen(body));
    }
    if (!authorized(wsi))
        return reject(wsi, 401, "Unauthorized", REJECT_UNAUTHORIZED);
    if (is_websocket_path(path))
        return respond_text(wsi, 426, "Expected WebSocket");
    if (is_get && !strcmp(path, "/metrics"))
        return serve_metrics(wsi);
    if (is_post && !strcmp(path, "/api/create-room")) {
        /* Answer once the (ignored) body is read, so it is not taken for the next request. */
        if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0) {
            session->ignored_body_bytes = 0;
            return 0;
        }
        return serve_create_room(wsi);
    }
    return respond_text(wsi, 404, "Not Found");
}

/* Decides on a WebSocket upgrade before it happens: path, token, connection limit. */
/* Refuses a WebSocket upgrade with a plain HTTP/1.1 answer. lws's own header helpers would say
 * HTTP/1.0 at this point of an upgrade, which WebSocket clients reject as malformed. */
static int refuse_upgrade_with(struct lws *wsi, unsigned status, const char *reason_phrase,
                               const char *body, const char *extra_header, int reject_reason)
{
    if (reject_reason >= 0)
        relay_metrics(server.relay)->rejected[reject_reason]++;
    char address[64];
    peer_address(wsi, address, sizeof(address));
    relay_note_refusal(server.relay, address, "upgrade_refused", (int)status, now_seconds());
    unsigned char response[LWS_PRE + 512];
    int length = snprintf((char *)response + LWS_PRE, sizeof(response) - LWS_PRE,
                          "HTTP/1.1 %u %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                          "%s%sConnection: close\r\n\r\n%s",
                          status, reason_phrase, strlen(body), extra_header ? extra_header : "",
                          extra_header ? "\r\n" : "", body);
    if (length < 0 || (size_t)length >= sizeof(response) - LWS_PRE)
        return -1;
    lws_write(wsi, response + LWS_PRE, (size_t)length, LWS_WRITE_HTTP_FINAL);
    return 1;
}

static int refuse_upgrade(struct lws *wsi, unsigned status, const char *reason_phrase,
                          int reject_reason)
{
    return refuse_upgrade_with(wsi, status, reason_phrase, reason_phrase, NULL, reject_reason);
}

/* A header's value, or NULL when the request has none. */
static const char *header(struct lws *wsi, enum lws_token_indexes token, char *out, size_t size)
{
    if (lws_hdr_total_length(wsi, token) <= 0)
        return NULL;
    return lws_hdr_copy(wsi, out, (int)size, token) >= 0 ? out : "";
}

/* Decides on a WebSocket upgrade before it happens: path, token, connection limit. */
static int confirm_upgrade(struct lws *wsi)
{
    char path[256] = "";
    lws_hdr_copy(wsi, path, sizeof(path), WSI_TOKEN_GET_URI);
    if (!is_websocket_path(path))
        return refuse_upgrade(wsi, 404, "Not Found", -1);
    if (!authorized(wsi))
        return refuse_upgrade(wsi, 401, "Unauthorized", REJECT_UNAUTHORIZED);
    char version[16], origin[512], offered[512];
    struct upgrade_refusal refusal;
    if (!rfc6455_check_upgrade(server.config,
                               header(wsi, WSI_TOKEN_VERSION, version, sizeof(version)),
                               header(wsi, WSI_TOKEN_ORIGIN, origin, sizeof(origin)),
                               header(wsi, WSI_TOKEN_PROTOCOL, offered, sizeof(offered)),
                               RELAY_PROTOCOL_NAME, &refusal))
        return refuse_upgrade_with(wsi, refusal.status, refusal.reason_phrase, refusal.body,
                                   refusal.extra_header, refusal.reject_reason);
    if (server.shutting_down ||
        relay_connection_count(server.relay) >= server.config->max_connections)
        return refuse_upgrade(wsi, 503, "Service Unavailable", REJECT_TOO_MANY_CONNECTIONS);
    return 0;
}

/* --- sockets ---------------------------------------------------------------------------- */

/* A TCP connection was accepted: admitted under the per-address limits, or closed at once. */
static int admit_socket(struct lws *wsi)
{
    struct socket_record *record = calloc(1, sizeof(*record));
    if (!record)
        return -1;
    peer_address(wsi, record->address, sizeof(record->address));
    if (!relay_socket_accepted(server.relay, record->address, now_seconds())) {
        free(record);
        return -1;
    }
    record->in_handshake = true;
    lws_set_opaque_user_data(wsi, record);
    return 0;
}

static void socket_upgraded(struct lws *wsi)
{
    struct socket_record *record = lws_get_opaque_user_data(wsi);
    if (record && record->in_handshake) {
        record->in_handshake = false;
        relay_socket_upgraded(server.relay, record->address);
    }
}

static void socket_destroyed(struct lws *wsi)
{
    struct socket_record *record = lws_get_opaque_user_data(wsi);
    if (!record)
        return;
    lws_set_opaque_user_data(wsi, NULL);
    relay_socket_closed(server.relay, record->address, record->in_handshake);
    free(record);
}

/* --- WebSocket -------------------------------------------------------------------------- */

/* Compression is offered only on the test-only echo endpoint, where the RFC 6455/7692
 * conformance suite exercises it. Relayed weights do not compress, and compressing per receiver
 * would cost CPU for every copy the relay sends. Registering the extension at all also lets lws
 * stop reading a client's offers at the first acceptable one: lws 4.1 hangs up on offers of 255
 * bytes or more that it has to read to the end (Autobahn 13.7). */
static int accept_extension(struct lws *wsi)
{
    char path[64] = "";
    lws_hdr_copy(wsi, path, sizeof(path), WSI_TOKEN_GET_URI);
    return server.config->enable_echo && !strcmp(path, "/echo") ? 0 : 1;
}

static const struct lws_extension extensions[] = {
    {"permessage-deflate", lws_extension_callback_pm_deflate,
     "permessage-deflate; client_no_context_takeover; client_max_window_bits"},
    {NULL, NULL, NULL},
};

static int open_session(struct lws *wsi, struct session *session)
{
    char path[256] = "", address[64];
    lws_hdr_copy(wsi, path, sizeof(path), WSI_TOKEN_GET_URI);
    peer_address(wsi, address, sizeof(address));
    bool echo = server.config->enable_echo && !strcmp(path, "/echo");
    /* The conformance suite's compression cases send hundreds of messages of random bytes:
     * the fastest zlib level keeps them from dominating the test suite's run time. */
    if (echo)
        lws_set_extension_option(wsi, "permessage-deflate", "compression_level", "1");
    session->connection = relay_connection_open(server.relay, wsi, address, echo, now_seconds());
    return session->connection ? 0 : -1;
}

static int finish_close(struct lws *wsi, struct session *session)
{
    lws_close_reason(wsi, (enum lws_close_status)session->close_code,
                     (unsigned char *)session->close_reason, strlen(session->close_reason));
    return -1;
}

static int write_pending(struct lws *wsi, struct session *session)
{
    if (session->close_requested)
        return finish_close(wsi, session);
    if (session->ping_requested) {
        /* lws reports a pong to us only when it carries a payload, so the ping has one. */
        unsigned char ping[LWS_PRE + 4] = {[LWS_PRE] = 'p', 'i', 'n', 'g'};
        session->ping_requested = false;
        if (lws_write(wsi, ping + LWS_PRE, 4, LWS_WRITE_PING) < 0)
            return -1;
    }
    struct connection *connection = session->connection;
    if (session->draining) {
        /* lws is done with the frame written last time (see below): release it now. */
        session->draining = false;
        relay_wrote(server.relay, connection, now_seconds());
    }
    struct write_step step;
    while (relay_next_write(connection, &step)) {
        int flags = lws_write_ws_flags(step.is_binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT,
                                       !step.continuation, step.final);
        if (lws_write(wsi, step.bytes, step.length, (enum lws_write_protocol)flags) <
            (int)step.length)
            return -1;
        if (connection->echo) {
            /* With compression (offered on the echo endpoint only), lws keeps deflating from
             * our buffer after lws_write returns, and calls back only when it is done. */
            session->draining = true;
            lws_callback_on_writable(wsi);
            break;
        }
        relay_wrote(server.relay, connection, now_seconds());
        if (session->close_requested)
            return finish_close(wsi, session);
        /* Keep writing until the socket takes no more: lws then holds the rest of the frame
         * and calls back when it has flushed it. (lws_send_pipe_choked would poll() per frame.) */
        if (lws_partial_buffered(wsi)) {
            lws_callback_on_writable(wsi);
            break;
        }
    }
    return 0;
}

static int receive(struct lws *wsi, struct session *session, const unsigned char *bytes,
                   size_t length)
{
    bool final = lws_is_final_fragment(wsi);
    relay_receive(server.relay, session->connection, bytes, length, lws_frame_is_binary(wsi),
                  lws_is_first_fragment(wsi), final, lws_remaining_packet_payload(wsi),
                  now_seconds());
    trim_receive_buffer(session, bytes, length, final);
    return session->close_requested ? finish_close(wsi, session) : 0;
}

static void on_shutdown_tick(lws_sorted_usec_list_t *timer);

static int relay_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                          size_t len)
{
    struct session *session = user;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        return serve_http(wsi, session, in ? (const char *)in : "");
    case LWS_CALLBACK_HTTP_BODY:
        session->ignored_body_bytes += len;
        return session->ignored_body_bytes > MAX_IGNORED_BODY_BYTES ? -1 : 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return serve_create_room(wsi);
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return confirm_upgrade(wsi);
    case LWS_CALLBACK_CONFIRM_EXTENSION_OKAY:
        return accept_extension(wsi);
    case LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED:
        return admit_socket(wsi);
    case LWS_CALLBACK_WSI_DESTROY:
        socket_destroyed(wsi);
        return 0;
    case LWS_CALLBACK_ESTABLISHED:
        socket_upgraded(wsi);
        return open_session(wsi, session);
    case LWS_CALLBACK_RECEIVE:
        return session->connection ? receive(wsi, session, in, len) : -1;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        /* lws echoes a Close frame of 1 byte; RFC 6455 §5.5.1: a code takes 2 bytes. */
        if (!rfc6455_close_payload_valid(len)) {
            relay_metrics(server.relay)->rejected[REJECT_PROTOCOL_ERROR]++;
            static const char why[] = "close frame of 1 byte";
            lws_close_reason(wsi, LWS_CLOSE_STATUS_PROTOCOL_ERR, (unsigned char *)why,
                             sizeof(why) - 1);
            return -1;
        }
        return 0;
    case LWS_CALLBACK_RECEIVE_PONG:
        if (session->connection)
            relay_heard(session->connection, now_seconds());
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return session->connection ? write_pending(wsi, session) : 0;
    case LWS_CALLBACK_CLOSED:
        if (session->connection) {
            relay_connection_closed(server.relay, session->connection, now_seconds());
            session->connection = NULL;
        }
        return 0;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (server.backplane)
            nats_backplane_deliver(server.backplane, server.relay, now_seconds());
        if (stop_signal && !server.shutting_down) {
            server.shutting_down = true;
            server.shutdown_started = now_seconds();
            log_event(LOG_LEVEL_INFO, "shutting_down", "signal",
                      stop_signal == SIGINT ? "SIGINT" : "SIGTERM", NULL);
            relay_close_all(server.relay, CLOSE_GOING_AWAY, "relay shutting down");
            on_shutdown_tick(&server.shutdown_timer);
        }
        return 0;
    default:
        return 0;
    }
}

static const struct lws_protocols protocols[] = {
    {
        .name = RELAY_PROTOCOL_NAME,
        .callback = relay_callback,
        .per_session_data_size = sizeof(struct session),
        .rx_buffer_size = RECEIVE_BUFFER_SIZE,
    },
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void on_tick(lws_sorted_usec_list_t *timer)
{
    relay_tick(server.relay, now_seconds());
    lws_sul_schedule(server.context, 0, timer, on_tick, LWS_US_PER_SEC);
}

static void on_shutdown_tick(lws_sorted_usec_list_t *timer)
{
    lws_sul_schedule(server.context, 0, timer, on_shutdown_tick, LWS_US_PER_SEC / 20);
}

/* The backplane's threads: envelopes are waiting for the service thread. */
static void wake_service(void *context)
{
    struct lws_context *lws = __atomic_load_n(&server.context, __ATOMIC_ACQUIRE);
    if (lws)
        lws_cancel_service(lws);
}

static void on_stop_signal(int signal_number)
{
    stop_signal = signal_number;
    if (server.context)
        lws_cancel_service(server.context);
}

int lws_server_run(const struct relay_config *config, const unsigned char *secret,
                   size_t secret_length)
{
    struct relay_io io = {
        .want_write = want_write,
        .pause_reading = pause_reading,
        .close = close_connection,
        .ping = send_ping,
    };
    server.config = config;
    server.relay = relay_create(config, &io, secret, secret_length, now_seconds());
    if (!server.relay) {
        fprintf(stderr, "relay_server: out of memory\n");
        return 1;
    }
    if (config->nats_urls[0]) {
        char error[512];
        server.backplane = nats_backplane_start(config, wake_service, NULL, error, sizeof(error));
        if (!server.backplane) {
            fprintf(stderr, "relay_server: %s\n", error);
            relay_destroy(server.relay);
            return 1;
        }
        relay_attach_cluster(server.relay, nats_backplane_io(server.backplane));
    }
    lws_set_log_level(LLL_ERR, NULL);
    /* Room for lws's own header and zlib trailer next to each receive buffer. */
    receive_buffers = buffer_arena_create(RECEIVE_BUFFER_SIZE + LWS_PRE + 64,
                                          (size_t)config->max_connections + 16);
    if (receive_buffers)
        lws_set_allocator(allocate_for_lws);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_VALIDATE_UTF8 |
                   LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.timeout_secs = config->handshake_timeout_seconds;
    /* A connection holding a header buffer without finishing its request: lws's default is
     * 10 s, whatever timeout_secs says. */
    info.timeout_secs_ah_idle = config->handshake_timeout_seconds;
    /* One read buffer per service thread: large reads mean fewer syscalls per forwarded byte. */
    info.pt_serv_buf_size = 1024 * 1024;
    info.fd_limit_per_thread = 0;
    /* lws gives every accepted socket a header buffer from this pool at once and queues sockets
     * when it is empty: silent sockets would make everyone else wait. The per-address handshake
     * cap (relay_socket_accepted) keeps one address from taking many. */
    info.max_http_header_pool = HEADER_POOL_SIZE;
    struct lws_context *created = lws_create_context(&info);
    __atomic_store_n(&server.context, created, __ATOMIC_RELEASE);
    if (!server.context) {
        fprintf(stderr, "relay_server: cannot create the libwebsockets context\n");
        relay_destroy(server.relay);
        nats_backplane_stop(server.backplane);
        return 1;
    }

    info.port = config->port;
    bool any_address = !config->listen_address[0] || !strcmp(config->listen_address, "0.0.0.0") ||
                       !strcmp(config->listen_address, "::");
    info.iface = any_address ? NULL : config->listen_address;
    info.protocols = protocols;
    info.vhost_name = "relay";
    info.extensions = extensions;
    if (config->tls_cert_path[0]) {
        info.ssl_cert_filepath = config->tls_cert_path;
        info.ssl_private_key_filepath = config->tls_key_path;
        /* TLS 1.3: AES-128-GCM first (lws makes ours the server's preference). Every relayed
         * byte is decrypted and encrypted again here, and 128-bit keys take 10 AES rounds
         * against 14; all three suites are TLS 1.3's mandatory or recommended ones. */
        info.tls1_3_plus_cipher_list =
            "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
    }
    server.vhost = lws_create_vhost(server.context, &info);
    if (!server.vhost) {
        fprintf(stderr,
                "relay_server: cannot listen on %s:%d (in use, or a bad address or "
                "TLS certificate/key?)\n",
                config->listen_address, config->port);
        lws_context_destroy(server.context);
        relay_destroy(server.relay);
        nats_backplane_stop(server.backplane);
        return 1;
    }

    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGPIPE, SIG_IGN);

    printf("listening on %s:%d (%s)\n", any_address ? config->listen_address : info.iface,
           lws_get_vhost_listen_port(server.vhost), config->tls_cert_path[0] ? "wss" : "ws");
    fflush(stdout);
    log_fields(LOG_LEVEL_INFO, "started", LOG_TEXT("version", RELAY_VERSION),
               LOG_INT("port", lws_get_vhost_listen_port(server.vhost)),
               LOG_TEXT("tls", config->tls_cert_path[0] ? "yes" : "no"),
               LOG_TEXT("access_token", config->access_token_set ? "required" : "none"));

    lws_sul_schedule(server.context, 0, &server.tick_timer, on_tick, LWS_US_PER_SEC);
    while (lws_service(server.context, 0) >= 0) {
        if (!server.shutting_down)
            continue;
        if (relay_connection_count(server.relay) == 0 ||
            now_seconds() - server.shutdown_started > SHUTDOWN_DEADLINE_SECONDS)
            break;
    }
    struct lws_context *context = server.context;
    __atomic_store_n(&server.context, NULL, __ATOMIC_RELEASE);
    lws_context_destroy(context);
    /* The core tells the backplane of the members that leave: stop the backplane after it. */
    relay_destroy(server.relay);
    nats_backplane_stop(server.backplane);
    buffer_arena_destroy(receive_buffers);
    receive_buffers = NULL;
    log_event(LOG_LEVEL_INFO, "stopped", NULL);
    return 0;
}
