/* transport_engine_raw.c — the fast WebSocket engine (docs/transport.md): lws opens a raw TCP
 * socket and runs the event loop; tls_client.c (wss://) and ws_client.c speak TLS and RFC 6455
 * on it as bytes in, bytes/events out; this file feeds them, turns the events into the
 * connection core's calls and runs keepalive. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <sys/socket.h>

#include <openssl/rand.h>

#include "tls_client.h"
#include "transport_engine.h"
#include "ws_client.h"

/* Room for the control frames and the header of one data frame written in one callback. */
#define OUTPUT_SLACK 1024
/* Room for TLS records' headers and tags around one callback's output, and handshake messages. */
#define TLS_SLACK (64u * 1024)

struct raw_engine_state {
    struct ws_client protocol;
    /* wss:// only (NULL otherwise): TLS, the plaintext of one read, the ciphertext to send. */
    struct tls_client *tls;
    unsigned char *plaintext;
    unsigned char *ciphertext;
    size_t ciphertext_capacity;
    int request_written;
    int input_closed; /* a Close arrived or the stream is broken: ignore what follows */

    unsigned char mask_keys[256]; /* random, 4 bytes per frame */
    size_t mask_keys_left;

    /* Output collected by put_frame(), sent from `output` (ws://) or `ciphertext` (wss://). */
    unsigned char *output;
    size_t output_size, output_capacity;
    /* What the socket has not taken yet, inside output or ciphertext: nothing new is produced
     * until it is gone. Not lws_write(): lws sends at most tx_packet_size per call (an
     * encrypted fragment is 20 bytes more), keeps the rest, and reads nothing until the rest is
     * sent, spinning on POLLIN while the peer (the relay, sending to us) waits for us to read. */
    const unsigned char *unsent;
    size_t unsent_size;

    /* Control frames to send from the next writeable callback. */
    int pong_due;
    unsigned char pong[WS_CONTROL_PAYLOAD_MAX];
    size_t pong_size;
    int ping_due;
    double last_ping;
    int echo_close_due; /* answer the peer's Close with its code */
    int hang_up;        /* close the socket once the output is flushed */
};

static int attach(struct client_connection *conn, struct lws_client_connect_info *info)
{
    info->method = "RAW";     /* keepalive: on_timer() pings by itself */
    info->ssl_connection = 0; /* TLS is ours: tls_client.c */
    struct raw_engine_state *raw = calloc(1, sizeof *raw);
    if (!raw)
        return -1;
    raw->output_capacity = TRANSPORT_STAGING_SIZE + OUTPUT_SLACK;
    raw->output = malloc(raw->output_capacity);
    conn->engine_state = raw; /* free_state() undoes a partial set-up */
    if (!raw->output)
        return -1;
    if (conn->use_tls) {
        raw->ciphertext_capacity = raw->output_capacity + TLS_SLACK;
        raw->tls = malloc(sizeof *raw->tls);
        raw->plaintext = malloc(TRANSPORT_RAW_READ_SIZE);
        raw->ciphertext = malloc(raw->ciphertext_capacity);
        if (!raw->tls || !raw->plaintext || !raw->ciphertext)
            return -1;
        if (tls_client_init(raw->tls, conn->server_name, conn->ca_file) < 0) {
            snprintf(conn->error, sizeof conn->error, "%s", raw->tls->error);
            return -1;
        }
    }
    return 0;
}

static void free_state(struct client_connection *conn)
{
    struct raw_engine_state *raw = conn->engine_state;
    conn->engine_state = NULL;
    if (!raw)
        return;
    ws_client_free(&raw->protocol);
    if (raw->tls)
        tls_client_free(raw->tls);
    free(raw->tls);
    free(raw->plaintext);
    free(raw->ciphertext);
    free(raw->output);
    free(raw);
}

/* Appends one whole masked frame whose payload is `first` then `rest`, masked straight from the
 * caller's buffer into the output: one pass, no copy. */
static int put_frame(struct raw_engine_state *raw, int opcode, int fin, const unsigned char *first,
                     size_t first_size, const unsigned char *rest, size_t rest_size)
{
    /* Mask keys come from a batch of random bytes: one RAND_bytes() per frame showed up. */
    if (raw->mask_keys_left == 0) {
        if (RAND_bytes(raw->mask_keys, sizeof raw->mask_keys) != 1)
            return -1;
        raw->mask_keys_left = sizeof raw->mask_keys / 4;
    }
    const unsigned char *key = raw->mask_keys + 4 * --raw->mask_keys_left;
    size_t written =
        ws_frame_write(raw->output + raw->output_size, raw->output_capacity - raw->output_size,
                       opcode, fin, key, first, first_size, rest, rest_size);
    if (!written)
        return -1; /* cannot happen: every frame is sized to fit */
    raw->output_size += written;
    return 0;
}

static int put_close(struct raw_engine_state *raw, int code, const char *reason)
{
    unsigned char payload[WS_CONTROL_PAYLOAD_MAX];
    size_t size = ws_close_payload(code, reason, payload);
    return put_frame(raw, WS_OPCODE_CLOSE, 1, payload, size, NULL, 0);
}

/* Sends as much of `unsent` as the socket takes now; asks for a writeable callback for the
 * rest. Returns 0, or -1 when the socket is broken. */
static int send_unsent(struct raw_engine_state *raw, struct lws *wsi)
{
    while (raw->unsent_size) {
        ssize_t sent = send(lws_get_socket_fd(wsi), raw->unsent, raw->unsent_size,
                            MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            lws_callback_on_writable(wsi);
            return 0;
        }
        if (sent <= 0)
            return -1;
        raw->unsent += sent;
        raw->unsent_size -= (size_t)sent;
    }
    return 0;
}

static int start_sending(struct raw_engine_state *raw, struct lws *wsi, const unsigned char *data,
                         size_t size)
{
    raw->unsent = data;
    raw->unsent_size = size;
    return send_unsent(raw, wsi);
}

/* Sends the TLS records waiting in the output BIO. */
static int flush_ciphertext(struct client_connection *conn, struct raw_engine_state *raw,
                            struct lws *wsi)
{
    size_t size = tls_client_pending(raw->tls);
    if (!size)
        return 0;
    if (size > raw->ciphertext_capacity) {
        snprintf(conn->error, sizeof conn->error, "TLS output larger than expected");
        return -1;
    }
    size = tls_client_take(raw->tls, raw->ciphertext, size);
    return start_sending(raw, wsi, raw->ciphertext, size);
}

/* Sends what put_frame() collected: as it is, or encrypted first for wss://. Only called with
 * nothing unsent. */
static int flush_output(struct client_connection *conn, struct raw_engine_state *raw,
                        struct lws *wsi)
{
    size_t size = raw->output_size;
    raw->output_size = 0;
    if (raw->tls) {
        if (size && tls_client_write(raw->tls, raw->output, size) < 0)
            return -1;
        return flush_ciphertext(conn, raw, wsi);
    }
    return start_sending(raw, wsi, raw->output, size);
}

static int start_handshake(struct client_connection *conn, struct raw_engine_state *raw)
{
    unsigned char nonce[16];
    if (RAND_bytes(nonce, sizeof nonce) != 1) {
        snprintf(conn->error, sizeof conn->error, "no random bytes for the handshake");
        return -1;
    }
    size_t size =
        ws_client_begin(&raw->protocol, nonce, conn->path, conn->host_header, conn->headers,
                        conn->header_count, (char *)raw->output, WS_HANDSHAKE_MAX_SIZE);
    if (!size) {
        snprintf(conn->error, sizeof conn->error, "the request headers do not fit in %u bytes",
                 WS_HANDSHAKE_MAX_SIZE);
        return -1;
    }
    raw->output_size = size;
    return 0;
}

static void start_keepalive_timer(struct client_connection *conn, struct lws *wsi)
{
    if (conn->keepalive_enabled)
        lws_set_timer_usecs(wsi, LWS_US_PER_SEC);
}

/* ---- receiving ---------------------------------------------------------------------------- */

static void after_receive(struct lws *wsi, enum receive_outcome outcome)
{
    if (outcome == RECEIVE_PAUSE_READING)
        lws_rx_flow_control(wsi, 0);
    else if (outcome == RECEIVE_SEND_CLOSE)
        lws_callback_on_writable(wsi);
}

/* One event of ws_client_receive(). Returns 0, or -1 to drop the socket. */
static int on_protocol_event(struct client_connection *conn, struct raw_engine_state *raw,
                             struct lws *wsi, const struct ws_event *event)
{
    switch (event->type) {
    case WS_EVENT_NONE:
        return 0;
    case WS_EVENT_OPEN:
        if (connection_mark_open(conn))
            lws_callback_on_writable(wsi);
        start_keepalive_timer(conn, wsi);
        return 0;
    case WS_EVENT_HANDSHAKE_FAILED:
        snprintf(conn->error, sizeof conn->error, "%s", event->reason);
        return -1; /* closes: the service thread reports conn->error */
    case WS_EVENT_DATA: {
        struct payload_position at = {
            .first_of_message = event->first_of_message,
            .last_of_message = event->last_of_message,
            .binary = event->binary,
            .rest_of_frame = (size_t)event->rest_of_frame,
        };
        after_receive(wsi, connection_receive(conn, event->data, event->size, &at));
        return 0;
    }
    case WS_EVENT_PING:
        memcpy(raw->pong, event->data, event->size);
        raw->pong_size = event->size;
        raw->pong_due = 1;
        lws_callback_on_writable(wsi);
        return 0;
    case WS_EVENT_PONG:
        conn->last_proof_of_life = transport_monotonic_seconds();
        return 0;
    case WS_EVENT_CLOSE:
        raw->input_closed = 1;
        connection_record_peer_close(conn, event->data, event->size);
        if (conn->close_sent)
            raw->hang_up = 1; /* the closing handshake is complete */
        else
            raw->echo_close_due = 1;
        lws_callback_on_writable(wsi);
        return 0;
    case WS_EVENT_PROTOCOL_ERROR:
        raw->input_closed = 1;
        after_receive(wsi, connection_close_soon(conn, event->close_code, event->reason));
        return 0;
    }
    return 0;
}

static int on_plaintext(struct client_connection *conn, struct raw_engine_state *raw,
                        struct lws *wsi, const unsigned char *data, size_t size)
{
    while (size && !raw->input_closed) {
        struct ws_event event;
        size_t used = ws_client_receive(&raw->protocol, data, size, &event);
        data += used;
        size -= used;
        if (on_protocol_event(conn, raw, wsi, &event) < 0)
            return -1;
    }
    return 0;
}

/* What the socket brought: for wss://, ciphertext that is decrypted a read's worth at a time and
 * parsed in place from the plaintext buffer. */
static int on_input(struct client_connection *conn, struct raw_engine_state *raw, struct lws *wsi,
                    const unsigned char *data, size_t size)
{
    if (!raw->tls)
        return on_plaintext(conn, raw, wsi, data, size);
    if (tls_client_feed(raw->tls, data, size) < 0)
        goto broken;
    if (!raw->tls->handshake_done) {
        int done = tls_client_handshake(raw->tls);
        if (done < 0)
            goto broken;
        if (done || tls_client_pending(raw->tls))
            lws_callback_on_writable(wsi); /* the next flight, or the WebSocket request */
        if (!done)
            return 0;
    }
    for (;;) {
        long got = tls_client_read(raw->tls, raw->plaintext, TRANSPORT_RAW_READ_SIZE);
        if (got < 0)
            goto broken;
        if (got == 0)
            break;
        if (on_plaintext(conn, raw, wsi, raw->plaintext, (size_t)got) < 0)
            return -1;
    }
    if (tls_client_pending(raw->tls)) /* e.g. a key update to answer */
        lws_callback_on_writable(wsi);
    return 0;
broken:
    snprintf(conn->error, sizeof conn->error, "%s", raw->tls->error);
    return -1; /* the service thread reports conn->error (or 1006 once open) */
}

/* ---- sending ------------------------------------------------------------------------------ */

static int on_writeable(struct client_connection *conn, struct raw_engine_state *raw,
                        struct lws *wsi)
{
    if (raw->unsent_size) {
        if (send_unsent(raw, wsi) < 0)
            return -1;
        if (raw->unsent_size)
            return 0; /* send_unsent() asked for the next writeable callback */
    }
    if (raw->tls && !raw->tls->handshake_done) {
        if (tls_client_handshake(raw->tls) < 0) { /* the first call writes the ClientHello */
            snprintf(conn->error, sizeof conn->error, "%s", raw->tls->error);
            return -1;
        }
        return flush_ciphertext(conn, raw, wsi);
    }
    if (raw->protocol.phase == WS_PHASE_HANDSHAKE) {
        if (raw->request_written)
            return flush_output(conn, raw, wsi); /* nothing, or TLS records still due */
        raw->request_written = 1;
        return flush_output(conn, raw, wsi); /* the request start_handshake() left there */
    }
    if (raw->hang_up)
        return -1; /* everything is sent */
    if (raw->pong_due && put_frame(raw, WS_OPCODE_PONG, 1, raw->pong, raw->pong_size, NULL, 0) < 0)
        return -1;
    raw->pong_due = 0;
    if (raw->ping_due && put_frame(raw, WS_OPCODE_PING, 1, NULL, 0, NULL, 0) < 0)
        return -1;
    raw->ping_due = 0;
    if (raw->echo_close_due) {
        raw->echo_close_due = 0;
        raw->hang_up = 1;
        pthread_mutex_lock(&conn->lock);
        connection_fail_pending_sends(conn);
        pthread_cond_broadcast(&conn->changed);
        pthread_mutex_unlock(&conn->lock);
        /* Echo the peer's code and reason, as lws does (RFC 6455 5.5.1). */
        if (put_close(raw, conn->peer_close_code, conn->peer_close_reason) < 0 ||
            flush_output(conn, raw, wsi) < 0)
            return -1;
        lws_callback_on_writable(wsi);
        return 0;
    }

    int more = 0, close_code;
    char close_reason[TRANSPORT_CLOSE_REASON_SIZE];
    pthread_mutex_lock(&conn->lock);
    if (connection_take_close_request(conn, &close_code, close_reason)) {
        pthread_mutex_unlock(&conn->lock);
        if (put_close(raw, close_code, close_reason) < 0)
            return -1;
        if (raw->input_closed) {
            raw->hang_up = 1; /* no Close can be read back from a broken stream */
            lws_callback_on_writable(wsi);
        } else {
            lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_ACK, 5); /* the peer has 5 s to answer */
        }
        return flush_output(conn, raw, wsi);
    }
    struct outgoing_fragment fragment;
    unsigned char *header = conn->staging; /* a chunk's frame header is written there */
    /* A whole fragment with its WebSocket header is then 256 KiB: 16 full TLS records, not 16
     * and a 14-byte one that costs the relay a read of its own. */
    size_t capacity = TRANSPORT_STAGING_SIZE - WS_FRAME_HEADER_MAX;
    if (!conn->close_sent && connection_next_fragment(conn, header, capacity, &fragment)) {
        int opcode = !fragment.is_start ? WS_OPCODE_CONTINUATION
                     : fragment.is_text ? WS_OPCODE_TEXT
                                        : WS_OPCODE_BINARY;
        /* Masked straight from the caller's buffer, under the lock: a Ctrl-C'd sender takes
         * its buffer back only once the lock is free. */
        if (put_frame(raw, opcode, fragment.is_end, header, fragment.header_size, fragment.payload,
                      fragment.payload_size) < 0) {
            pthread_mutex_unlock(&conn->lock);
            return -1;
        }
        more = connection_fragment_sent(conn, &fragment);
    }
    pthread_mutex_unlock(&conn->lock);
    if (flush_output(conn, raw, wsi) < 0)
        return -1;
    if (more)
        lws_callback_on_writable(wsi);
    return 0;
}

/* ---- keepalive ---------------------------------------------------------------------------- */

/* Once a second: a ping after `secs_since_valid_ping` of silence, and the socket dropped when
 * that ping stays unanswered for the rest of `secs_since_valid_hangup` (connection_record_end()
 * then names the silence). Hanging up only on an unanswered ping keeps a one-second timer from
 * dropping a live peer whose pong was simply not due yet. */
static void on_timer(struct client_connection *conn, struct raw_engine_state *raw, struct lws *wsi)
{
    double now = transport_monotonic_seconds();
    double silent = now - conn->last_proof_of_life;
    double answer_within =
        conn->keepalive.secs_since_valid_hangup - conn->keepalive.secs_since_valid_ping;
    bool ping_unanswered = raw->last_ping > conn->last_proof_of_life;
    if (ping_unanswered && now - raw->last_ping >= answer_within) {
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        return;
    }
    if (!ping_unanswered && silent >= conn->keepalive.secs_since_valid_ping) {
        raw->last_ping = now;
        raw->ping_due = 1;
        lws_callback_on_writable(wsi);
    }
    start_keepalive_timer(conn, wsi);
}

static int on_event(struct client_connection *conn, struct lws *wsi,
                    enum lws_callback_reasons reason, void *in, size_t len)
{
    struct raw_engine_state *raw = conn->engine_state;
    switch (reason) {
    case LWS_CALLBACK_RAW_CONNECTED:
        if (start_handshake(conn, raw) < 0)
            return -1;
        lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_RAW_RX:
        return on_input(conn, raw, wsi, in, len);
    case LWS_CALLBACK_RAW_WRITEABLE:
        return on_writeable(conn, raw, wsi);
    case LWS_CALLBACK_TIMER:
        if (raw->protocol.phase != WS_PHASE_HANDSHAKE)
            on_timer(conn, raw, wsi);
        return 0;
    default:
        return 0;
    }
}

const struct transport_engine transport_engine_raw = {
    .name = "raw",
    .does_tls = 1, /* through tls_client.c */
    .does_proxy = 0,
    .attach = attach,
    .free = free_state,
    .on_event = on_event,
};
