/* transport_engine_lws.c — the engine that lets libwebsockets' own ws client speak WebSocket:
 * it can tunnel through HTTP CONNECT proxies, which lws does for its http/ws roles only. It
 * streams sends through the connection's staging buffer (lws masks there in place). */
#include <stdio.h>
#include <string.h>

#include "transport_engine.h"

static int attach(struct client_connection *conn, struct lws_client_connect_info *info)
{
    conn->engine_state = NULL; /* lws keeps all the protocol state */
    info->retry_and_idle_policy = conn->keepalive_enabled ? &conn->keepalive : NULL;
    return 0;
}

static void free_state(struct client_connection *conn)
{
    (void)conn;
}

static int append_headers(struct client_connection *conn, struct lws *wsi, unsigned char **position,
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

static int after_receive(struct lws *wsi, enum receive_outcome outcome)
{
    if (outcome == RECEIVE_PAUSE_READING)
        lws_rx_flow_control(wsi, 0);
    else if (outcome == RECEIVE_SEND_CLOSE)
        lws_callback_on_writable(wsi);
    return 0;
}

static int on_receive(struct client_connection *conn, struct lws *wsi, const void *data,
                      size_t length)
{
    struct payload_position at = {
        .first_of_message = lws_is_first_fragment(wsi),
        .last_of_message = lws_is_final_fragment(wsi),
        .binary = lws_frame_is_binary(wsi),
        .rest_of_frame = lws_remaining_packet_payload(wsi),
    };
    return after_receive(wsi, connection_receive(conn, data, length, &at));
}

/* lws can take more: copy the next fragment of the oldest send into the staging buffer (lws
 * masks it there in place) and hand it to lws. One fragment per callback keeps every connection
 * served fairly and lets pings through between fragments. */
static int on_writeable(struct client_connection *conn, struct lws *wsi)
{
    unsigned char *out = conn->staging + LWS_PRE;
    int close_code;
    char close_reason[TRANSPORT_CLOSE_REASON_SIZE];

    pthread_mutex_lock(&conn->lock);
    if (connection_take_close_request(conn, &close_code, close_reason)) {
        pthread_mutex_unlock(&conn->lock);
        /* lws sends the Close and waits for the peer's as the wsi closes. */
        lws_close_reason(wsi, (enum lws_close_status)close_code, (unsigned char *)close_reason,
                         strlen(close_reason));
        return -1;
    }
    struct outgoing_fragment fragment;
    if (!connection_next_fragment(conn, out, TRANSPORT_STAGING_SIZE, &fragment)) {
        pthread_mutex_unlock(&conn->lock);
        return 0;
    }
    size_t used = fragment.header_size + fragment.payload_size;
    if (fragment.payload_size)
        memcpy(out + fragment.header_size, fragment.payload, fragment.payload_size);
    int flags = lws_write_ws_flags(fragment.is_text ? LWS_WRITE_TEXT : LWS_WRITE_BINARY,
                                   fragment.is_start, fragment.is_end);
    int more = connection_fragment_sent(conn, &fragment);
    pthread_mutex_unlock(&conn->lock);

    if (lws_write(wsi, out, used, (enum lws_write_protocol)flags) < (int)used)
        return -1; /* the socket is gone: the core records 1006, or the peer's Close */
    if (more)
        lws_callback_on_writable(wsi);
    return 0;
}

static int on_event(struct client_connection *conn, struct lws *wsi,
                    enum lws_callback_reasons reason, void *in, size_t len)
{
    switch (reason) {
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
        return append_headers(conn, wsi, (unsigned char **)in, *(unsigned char **)in + len);
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        if (connection_mark_open(conn))
            lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        return on_receive(conn, wsi, in, len);
    case LWS_CALLBACK_CLIENT_RECEIVE_PONG:
        conn->last_proof_of_life = transport_monotonic_seconds();
        return 0;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        return on_writeable(conn, wsi);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        connection_record_peer_close(conn, in, len);
        return 0;
    default:
        return 0;
    }
}

const struct transport_engine transport_engine_lws = {
    .name = "lws",
    .does_tls = 1,
    .does_proxy = 1,
    .attach = attach,
    .free = free_state,
    .on_event = on_event,
};
