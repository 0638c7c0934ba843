/* transport_engine_raw.c — the fast WebSocket engine (docs/transport.md): lws opens a raw TCP
 * socket and runs the event loop; this file does the RFC 6455 handshake, keepalive and close
 * handshake, wslay parses the frames and put_frame() writes them, block-wise, not per byte. */
#define _GNU_SOURCE /* memmem */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <wslay/wslay.h>

#include "transport_engine.h"

#define WEBSOCKET_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define CONTROL_PAYLOAD_MAX 125
/* Room for the control frames and the header of one data frame written in one callback. */
#define OUTPUT_SLACK 1024

enum { OPCODE_CONTINUATION = 0, OPCODE_TEXT = 1, OPCODE_BINARY = 2 };
enum { OPCODE_CLOSE = 8, OPCODE_PING = 9, OPCODE_PONG = 10 };

struct raw_websocket {
    wslay_frame_context_ptr frames;
    int upgraded;
    int request_written;
    char expected_accept[32]; /* base64(SHA-1(key + GUID)): 28 characters */

    /* The server's handshake response until its blank line. */
    char *response;
    size_t response_size;

    /* Input of the current receive callback, consumed by wslay through on_wslay_recv(). */
    const unsigned char *input;
    size_t input_size;
    int input_closed; /* a Close arrived or the stream is broken: ignore what follows */

    /* The frame being parsed. */
    uint64_t frame_offset; /* payload bytes of it seen so far */
    int frame_opcode, frame_fin;
    int in_message, message_binary;
    unsigned char control[CONTROL_PAYLOAD_MAX];
    size_t control_size;

    unsigned char mask_keys[256]; /* random, 4 bytes per frame */
    size_t mask_keys_left;

    /* Output collected by put_frame() and written with one lws_write(). */
    unsigned char *output; /* LWS_PRE headroom first */
    size_t output_size, output_capacity;

    /* Control frames to send from the next writeable callback. */
    int pong_due;
    unsigned char pong[CONTROL_PAYLOAD_MAX];
    size_t pong_size;
    int ping_due;
    double last_ping;
    int echo_close_due; /* answer the peer's Close with its code */
    int hang_up;        /* close the socket once the output is flushed */
};

/* ---- wslay's I/O: memory to memory, lws does the socket ---------------------------------- */

static ssize_t on_wslay_recv(uint8_t *buffer, size_t length, int flags, void *user)
{
    (void)flags;
    struct raw_websocket *raw = user;
    if (length > raw->input_size)
        length = raw->input_size;
    memcpy(buffer, raw->input, length);
    raw->input += length;
    raw->input_size -= length;
    return (ssize_t)length; /* 0: wslay answers WSLAY_ERR_WANT_READ */
}

/* wslay_frame_recv() never sends: frames go out through put_frame(). */
static ssize_t on_wslay_send(const uint8_t *data, size_t length, int flags, void *user)
{
    (void)data, (void)length, (void)flags, (void)user;
    return -1;
}

static int on_wslay_mask(uint8_t *key, size_t length, void *user)
{
    (void)key, (void)length, (void)user;
    return -1;
}

static int attach(struct client_connection *conn, struct lws_client_connect_info *info)
{
    info->method = "RAW"; /* keepalive: on_timer() pings by itself */
    struct raw_websocket *raw = calloc(1, sizeof *raw);
    if (!raw)
        return -1;
    raw->output_capacity = TRANSPORT_STAGING_SIZE + OUTPUT_SLACK;
    raw->output = malloc(LWS_PRE + raw->output_capacity);
    static const struct wslay_frame_callbacks callbacks = {
        .send_callback = on_wslay_send,
        .recv_callback = on_wslay_recv,
        .genmask_callback = on_wslay_mask,
    };
    if (!raw->output || wslay_frame_context_init(&raw->frames, &callbacks, raw) != 0) {
        free(raw->output);
        free(raw);
        return -1;
    }
    conn->engine_state = raw;
    return 0;
}

static void free_state(struct client_connection *conn)
{
    struct raw_websocket *raw = conn->engine_state;
    conn->engine_state = NULL;
    if (!raw)
        return;
    if (raw->frames)
        wslay_frame_context_free(raw->frames);
    free(raw->output);
    free(raw->response);
    free(raw);
}

/* XORs `size` bytes of `in` into `out` with the frame's mask key, `offset` bytes into the
 * payload: eight bytes at a time, where wslay masks byte by byte through a 4 KiB bounce buffer
 * (measured: wslay_frame_send capped the sender's lws thread at ~1.7 GB/s). */
static void mask_copy(unsigned char *out, const unsigned char *in, size_t size,
                      const unsigned char key[4], size_t offset)
{
    unsigned char rotated[8];
    for (int i = 0; i < 8; i++)
        rotated[i] = key[(offset + (size_t)i) & 3];
    uint64_t word_key;
    memcpy(&word_key, rotated, 8);
    size_t i = 0;
    for (; i + 8 <= size; i += 8) {
        uint64_t word;
        memcpy(&word, in + i, 8);
        word ^= word_key;
        memcpy(out + i, &word, 8);
    }
    for (; i < size; i++)
        out[i] = in[i] ^ rotated[i & 7];
}

/* Appends one whole masked frame whose payload is `first` then `rest` (RFC 6455 5.2). The
 * payload is masked straight from the caller's buffer into the output: one pass, no copy. */
static int put_frame(struct raw_websocket *raw, int opcode, int fin, const unsigned char *first,
                     size_t first_size, const unsigned char *rest, size_t rest_size)
{
    size_t size = first_size + rest_size;
    if (raw->output_capacity - raw->output_size < size + 14)
        return -1; /* cannot happen: every frame is sized to fit */
    unsigned char *out = raw->output + LWS_PRE + raw->output_size;
    /* Mask keys come from a batch of random bytes: one RAND_bytes() per frame showed up. */
    if (raw->mask_keys_left == 0) {
        if (RAND_bytes(raw->mask_keys, sizeof raw->mask_keys) != 1)
            return -1;
        raw->mask_keys_left = sizeof raw->mask_keys / 4;
    }
    const unsigned char *key = raw->mask_keys + 4 * --raw->mask_keys_left;
    size_t used = 0;
    out[used++] = (unsigned char)((fin ? 0x80 : 0) | opcode);
    if (size < 126) {
        out[used++] = (unsigned char)(0x80 | size);
    } else if (size <= 0xFFFF) {
        out[used++] = 0x80 | 126;
        out[used++] = (unsigned char)(size >> 8);
        out[used++] = (unsigned char)size;
    } else {
        out[used++] = 0x80 | 127;
        for (int shift = 56; shift >= 0; shift -= 8)
            out[used++] = (unsigned char)((uint64_t)size >> shift);
    }
    memcpy(out + used, key, 4);
    used += 4;
    mask_copy(out + used, first, first_size, key, 0);
    mask_copy(out + used + first_size, rest, rest_size, key, first_size);
    raw->output_size += used + size;
    return 0;
}

static int flush_output(struct raw_websocket *raw, struct lws *wsi)
{
    size_t size = raw->output_size;
    raw->output_size = 0;
    if (!size)
        return 0;
    /* lws keeps whatever the socket did not take and sends it before the next writeable. */
    return lws_write(wsi, raw->output + LWS_PRE, size, LWS_WRITE_RAW) < (int)size ? -1 : 0;
}

/* ---- the opening handshake ---------------------------------------------------------------- */

static int base64(const unsigned char *data, size_t size, char *out, size_t capacity)
{
    if (capacity < 4 * ((size + 2) / 3) + 1)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, data, (int)size);
    return 0;
}

static int build_request(struct client_connection *conn, struct raw_websocket *raw)
{
    unsigned char nonce[16];
    char key[32];
    if (RAND_bytes(nonce, sizeof nonce) != 1 || base64(nonce, sizeof nonce, key, sizeof key) < 0)
        return -1;

    char keyed[96];
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_size = 0;
    snprintf(keyed, sizeof keyed, "%s%s", key, WEBSOCKET_GUID);
    if (!EVP_Digest(keyed, strlen(keyed), digest, &digest_size, EVP_sha1(), NULL) ||
        base64(digest, digest_size, raw->expected_accept, sizeof raw->expected_accept) < 0)
        return -1;

    char *out = (char *)raw->output + LWS_PRE;
    size_t capacity = TRANSPORT_RX_BUFFER_SIZE, used = 0;
    int n = snprintf(out, capacity,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
                     conn->path, conn->host_header, key);
    if (n < 0 || (size_t)n >= capacity)
        goto too_large;
    used = (size_t)n;
    for (size_t i = 0; i < conn->header_count; i++) { /* names end with ':' already */
        n = snprintf(out + used, capacity - used, "%s %s\r\n", conn->headers[i].name,
                     conn->headers[i].value);
        if (n < 0 || (size_t)n >= capacity - used)
            goto too_large;
        used += (size_t)n;
    }
    if (capacity - used < 3)
        goto too_large;
    memcpy(out + used, "\r\n", 2);
    raw->output_size = used + 2;
    return 0;
too_large:
    snprintf(conn->error, sizeof conn->error, "the request headers do not fit in %u bytes",
             TRANSPORT_RX_BUFFER_SIZE);
    return -1;
}

/* Whether the comma-separated header value `list` has `token` (case-insensitive). */
static int has_token(const char *list, size_t list_size, const char *token)
{
    size_t token_size = strlen(token), i = 0;
    while (i < list_size) {
        while (i < list_size && (list[i] == ' ' || list[i] == '\t' || list[i] == ','))
            i++;
        size_t start = i;
        while (i < list_size && list[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (list[end - 1] == ' ' || list[end - 1] == '\t'))
            end--;
        if (end - start == token_size && strncasecmp(list + start, token, token_size) == 0)
            return 1;
    }
    return 0;
}

/* Checks the server's response (up to its blank line) per RFC 6455 4.1; 0, or -1 with
 * conn->error saying why. */
static int check_response(struct client_connection *conn, struct raw_websocket *raw,
                          const char *text, size_t size)
{
    const char *line_end = memmem(text, size, "\r\n", 2);
    int status = 0;
    if (!line_end || sscanf(text, "HTTP/1.%*[01] %3d", &status) != 1) {
        snprintf(conn->error, sizeof conn->error, "the server did not answer with HTTP");
        return -1;
    }
    if (status != 101) {
        snprintf(conn->error, sizeof conn->error,
                 "the server answered HTTP %d instead of switching to WebSocket (%.*s)", status,
                 (int)(line_end - text < 100 ? line_end - text : 100), text);
        return -1;
    }
    int upgrade = 0, connection = 0, accept = 0;
    for (const char *line = line_end + 2; line < text + size;) {
        const char *end = memmem(line, (size_t)(text + size - line), "\r\n", 2);
        if (!end || end == line)
            break;
        const char *colon = memchr(line, ':', (size_t)(end - line));
        if (colon) {
            size_t name_size = (size_t)(colon - line);
            const char *value = colon + 1;
            while (value < end && (*value == ' ' || *value == '\t'))
                value++;
            size_t value_size = (size_t)(end - value);
            while (value_size && (value[value_size - 1] == ' ' || value[value_size - 1] == '\t'))
                value_size--;
#define IS(name) (name_size == sizeof name - 1 && strncasecmp(line, name, name_size) == 0)
            if (IS("Upgrade"))
                upgrade = value_size == 9 && strncasecmp(value, "websocket", 9) == 0;
            else if (IS("Connection"))
                connection = has_token(value, value_size, "upgrade");
            else if (IS("Sec-WebSocket-Accept"))
                accept = value_size == strlen(raw->expected_accept) &&
                         memcmp(value, raw->expected_accept, value_size) == 0;
            else if (IS("Sec-WebSocket-Extensions") || IS("Sec-WebSocket-Protocol")) {
                snprintf(conn->error, sizeof conn->error,
                         "the server chose a WebSocket %.*s that was not offered",
                         (int)name_size - 14, line + 14);
                return -1;
            }
#undef IS
        }
        line = end + 2;
    }
    if (!upgrade || !connection || !accept) {
        snprintf(conn->error, sizeof conn->error,
                 "the server's WebSocket handshake is invalid (%s)",
                 !upgrade      ? "no Upgrade: websocket"
                 : !connection ? "no Connection: Upgrade"
                               : "wrong Sec-WebSocket-Accept");
        return -1;
    }
    return 0;
}

static void start_keepalive_timer(struct client_connection *conn, struct lws *wsi)
{
    if (conn->keepalive_enabled)
        lws_set_timer_usecs(wsi, LWS_US_PER_SEC);
}

/* Takes handshake response bytes; once the blank line is there, checks the response and opens
 * the connection. Returns the number of bytes that belong to the handshake, or -1. */
static long take_response(struct client_connection *conn, struct raw_websocket *raw,
                          struct lws *wsi, const unsigned char *data, size_t size)
{
    size_t room = TRANSPORT_RX_BUFFER_SIZE - raw->response_size;
    size_t take = size < room ? size : room;
    if (!raw->response && !(raw->response = malloc(TRANSPORT_RX_BUFFER_SIZE))) {
        snprintf(conn->error, sizeof conn->error, "out of memory");
        return -1;
    }
    memcpy(raw->response + raw->response_size, data, take);
    size_t before = raw->response_size;
    raw->response_size += take;
    /* Search from 3 bytes before the new data: the blank line may straddle two reads. */
    size_t from = before > 3 ? before - 3 : 0;
    const char *blank = memmem(raw->response + from, raw->response_size - from, "\r\n\r\n", 4);
    if (!blank) {
        if (raw->response_size == TRANSPORT_RX_BUFFER_SIZE) {
            snprintf(conn->error, sizeof conn->error,
                     "the server's handshake response is larger than %u bytes",
                     TRANSPORT_RX_BUFFER_SIZE);
            return -1;
        }
        return (long)take;
    }
    size_t header_size = (size_t)(blank + 4 - raw->response);
    if (check_response(conn, raw, raw->response, header_size) < 0)
        return -1;
    free(raw->response);
    raw->response = NULL;
    raw->upgraded = 1;

    if (connection_mark_open(conn))
        lws_callback_on_writable(wsi);
    start_keepalive_timer(conn, wsi);
    return (long)(header_size - before);
}

/* ---- receiving ---------------------------------------------------------------------------- */

static int after_receive(struct lws *wsi, enum receive_outcome outcome)
{
    if (outcome == RECEIVE_PAUSE_READING)
        lws_rx_flow_control(wsi, 0);
    else if (outcome == RECEIVE_SEND_CLOSE)
        lws_callback_on_writable(wsi);
    return 0;
}

static int protocol_error(struct client_connection *conn, struct raw_websocket *raw,
                          struct lws *wsi, const char *reason)
{
    raw->input_closed = 1; /* the stream can no longer be parsed */
    return after_receive(wsi, connection_close_soon(conn, LWS_CLOSE_STATUS_PROTOCOL_ERR, reason));
}

static void on_control_frame(struct client_connection *conn, struct raw_websocket *raw,
                             struct lws *wsi)
{
    switch (raw->frame_opcode) {
    case OPCODE_PING:
        memcpy(raw->pong, raw->control, raw->control_size);
        raw->pong_size = raw->control_size;
        raw->pong_due = 1;
        lws_callback_on_writable(wsi);
        break;
    case OPCODE_PONG:
        conn->last_proof_of_life = transport_monotonic_seconds();
        break;
    case OPCODE_CLOSE:
        raw->input_closed = 1;
        if (raw->control_size == 1) {
            protocol_error(conn, raw, wsi, "a Close frame with a 1-byte payload");
            break;
        }
        connection_record_peer_close(conn, raw->control, raw->control_size);
        if (conn->close_sent)
            raw->hang_up = 1; /* the closing handshake is complete */
        else
            raw->echo_close_due = 1;
        lws_callback_on_writable(wsi);
        break;
    }
}

/* One piece of a frame's payload that wslay parsed. */
static int on_frame_data(struct client_connection *conn, struct raw_websocket *raw, struct lws *wsi,
                         const struct wslay_frame_iocb *piece)
{
    int frame_start = raw->frame_offset == 0;
    if (frame_start) {
        if (piece->mask)
            return protocol_error(conn, raw, wsi, "the server masked a frame");
        if (piece->rsv)
            return protocol_error(conn, raw, wsi, "reserved bits set without an extension");
        int opcode = piece->opcode;
        if (opcode == OPCODE_CONTINUATION ? !raw->in_message
            : opcode == OPCODE_TEXT || opcode == OPCODE_BINARY
                ? raw->in_message
                : opcode < OPCODE_CLOSE || opcode > OPCODE_PONG)
            return protocol_error(conn, raw, wsi, "unexpected opcode");
        raw->frame_opcode = opcode;
        raw->frame_fin = piece->fin;
        raw->control_size = 0;
    }
    uint64_t seen = raw->frame_offset + piece->data_length;
    int frame_end = seen == piece->payload_length;
    raw->frame_offset = frame_end ? 0 : seen;

    if (raw->frame_opcode >= OPCODE_CLOSE) {
        memcpy(raw->control + raw->control_size, piece->data, piece->data_length);
        raw->control_size += piece->data_length;
        if (frame_end)
            on_control_frame(conn, raw, wsi);
        return 0;
    }
    int first = frame_start && raw->frame_opcode != OPCODE_CONTINUATION;
    if (first)
        raw->message_binary = raw->frame_opcode == OPCODE_BINARY;
    raw->in_message = !(frame_end && raw->frame_fin);
    struct payload_position at = {
        .first_of_message = first,
        .last_of_message = !raw->in_message,
        .binary = raw->message_binary,
        .rest_of_frame = piece->payload_length - seen,
    };
    return after_receive(wsi, connection_receive(conn, piece->data, piece->data_length, &at));
}

static int on_input(struct client_connection *conn, struct raw_websocket *raw, struct lws *wsi,
                    const unsigned char *data, size_t size)
{
    if (!raw->upgraded) {
        long used = take_response(conn, raw, wsi, data, size);
        if (used < 0)
            return -1; /* closes: the service thread reports conn->error */
        if (!raw->upgraded)
            return 0; /* the response's blank line has not come yet */
        data += used;
        size -= (size_t)used;
    }
    raw->input = data;
    raw->input_size = size;
    while (!raw->input_closed) { /* until wslay wants more than this read brought */
        struct wslay_frame_iocb piece;
        memset(&piece, 0, sizeof piece);
        ssize_t result = wslay_frame_recv(raw->frames, &piece);
        if (result == WSLAY_ERR_WANT_READ)
            break;
        if (result < 0) {
            protocol_error(conn, raw, wsi, "malformed frame");
            break;
        }
        on_frame_data(conn, raw, wsi, &piece);
    }
    raw->input = NULL;
    raw->input_size = 0;
    return 0;
}

/* ---- sending ------------------------------------------------------------------------------ */

static int put_close(struct raw_websocket *raw, int code, const char *reason)
{
    unsigned char payload[CONTROL_PAYLOAD_MAX];
    size_t size = 0;
    if (code != LWS_CLOSE_STATUS_NO_STATUS) {
        payload[0] = (unsigned char)(code >> 8);
        payload[1] = (unsigned char)code;
        size_t reason_size = strlen(reason);
        if (reason_size > CONTROL_PAYLOAD_MAX - 2)
            reason_size = CONTROL_PAYLOAD_MAX - 2;
        memcpy(payload + 2, reason, reason_size);
        size = 2 + reason_size;
    }
    return put_frame(raw, OPCODE_CLOSE, 1, payload, size, NULL, 0);
}

static int on_writeable(struct client_connection *conn, struct raw_websocket *raw, struct lws *wsi)
{
    if (!raw->upgraded) {
        if (raw->request_written)
            return 0;
        raw->request_written = 1;
        return flush_output(raw, wsi); /* the request build_request() left there */
    }
    if (raw->hang_up)
        return -1; /* lws has flushed everything before calling us again */
    if (raw->pong_due && put_frame(raw, OPCODE_PONG, 1, raw->pong, raw->pong_size, NULL, 0) < 0)
        return -1;
    raw->pong_due = 0;
    if (raw->ping_due && put_frame(raw, OPCODE_PING, 1, NULL, 0, NULL, 0) < 0)
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
            flush_output(raw, wsi) < 0)
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
        return flush_output(raw, wsi);
    }
    struct outgoing_fragment fragment;
    unsigned char *header = conn->staging; /* a chunk's frame header is written there */
    if (!conn->close_sent &&
        connection_next_fragment(conn, header, TRANSPORT_STAGING_SIZE, &fragment)) {
        int opcode = !fragment.is_start ? OPCODE_CONTINUATION
                     : fragment.is_text ? OPCODE_TEXT
                                        : OPCODE_BINARY;
        /* wslay masks straight from the caller's buffer, under the lock: a Ctrl-C'd sender
         * takes its buffer back only once the lock is free. */
        if (put_frame(raw, opcode, fragment.is_end, header, fragment.header_size, fragment.payload,
                      fragment.payload_size) < 0) {
            pthread_mutex_unlock(&conn->lock);
            return -1;
        }
        more = connection_fragment_sent(conn, &fragment);
    }
    pthread_mutex_unlock(&conn->lock);
    if (flush_output(raw, wsi) < 0)
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
static void on_timer(struct client_connection *conn, struct raw_websocket *raw, struct lws *wsi)
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
    struct raw_websocket *raw = conn->engine_state;
    switch (reason) {
    case LWS_CALLBACK_RAW_CONNECTED:
        if (build_request(conn, raw) < 0)
            return -1;
        lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_RAW_RX:
        return on_input(conn, raw, wsi, in, len);
    case LWS_CALLBACK_RAW_WRITEABLE:
        return on_writeable(conn, raw, wsi);
    case LWS_CALLBACK_TIMER:
        if (raw->upgraded)
            on_timer(conn, raw, wsi);
        return 0;
    default:
        return 0;
    }
}

const struct transport_engine transport_engine_raw = {
    .name = "raw",
    .does_tls = 0,
    .does_proxy = 0,
    .attach = attach,
    .free = free_state,
    .on_event = on_event,
};
