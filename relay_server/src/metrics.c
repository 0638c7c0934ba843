/* metrics.c — renders the relay's counters as Prometheus text (exposition format 0.0.4). */
#include "metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

static const char *const drop_names[DROP_REASON_COUNT] = {
    [DROP_NOT_IN_ROOM] = "not_in_room",
    [DROP_NO_RECIPIENT] = "no_recipient",
    [DROP_BAD_FRAME_HEADER] = "bad_frame_header",
    [DROP_TRUNCATED] = "truncated",
};

static const char *const reject_names[REJECT_REASON_COUNT] = {
    [REJECT_RATE_LIMITED] = "rate_limited",
    [REJECT_ROOM_FULL] = "room_full",
    [REJECT_TOO_MANY_ROOMS] = "too_many_rooms",
    [REJECT_TOO_MANY_CONNECTIONS] = "too_many_connections",
    [REJECT_ROOM_NOT_FOUND] = "room_not_found",
    [REJECT_INVALID_MESSAGE] = "invalid_message",
    [REJECT_INVALID_RESUME_TOKEN] = "invalid_resume_token",
    [REJECT_MESSAGE_TOO_BIG] = "message_too_big",
    [REJECT_UNAUTHORIZED] = "unauthorized",
    [REJECT_SLOW_RECEIVER] = "slow_receiver",
    [REJECT_IDLE_TIMEOUT] = "idle_timeout",
    [REJECT_USER_ID_TAKEN] = "user_id_taken",
    [REJECT_GLOBAL_JOIN_BUDGET] = "global_join_budget",
    [REJECT_ROOMS_PER_ADDRESS] = "rooms_per_address",
    [REJECT_CONNECTIONS_PER_ADDRESS] = "connections_per_address",
    [REJECT_HANDSHAKES_PER_ADDRESS] = "handshakes_per_address",
    [REJECT_ORIGIN] = "origin",
    [REJECT_BAD_HANDSHAKE] = "bad_handshake",
    [REJECT_PROTOCOL_ERROR] = "protocol_error",
};

struct writer {
    char *out;
    size_t size;
    size_t length;
};

static void emit(struct writer *w, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    size_t room = w->length < w->size ? w->size - w->length : 0;
    int n = vsnprintf(room ? w->out + w->length : NULL, room, format, args);
    va_end(args);
    if (n > 0)
        w->length += (size_t)n;
}

static void family(struct writer *w, const char *name, const char *type, const char *help)
{
    emit(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void by_kind(struct writer *w, const char *name, const char *help, const uint64_t v[2])
{
    family(w, name, "counter", help);
    emit(w, "%s{kind=\"text\"} %" PRIu64 "\n%s{kind=\"binary\"} %" PRIu64 "\n", name, v[0], name,
         v[1]);
}

size_t metrics_render(const struct relay_metrics *m, size_t connections, size_t rooms,
                      size_t members_away, uint64_t queued_bytes, char *out, size_t size)
{
    struct writer w = {out, size, 0};
    family(&w, "relay_connections", "gauge", "Open WebSocket connections.");
    emit(&w, "relay_connections %zu\n", connections);
    family(&w, "relay_rooms", "gauge", "Live rooms.");
    emit(&w, "relay_rooms %zu\n", rooms);
    family(&w, "relay_members_away", "gauge", "Members within their resume grace period.");
    emit(&w, "relay_members_away %zu\n", members_away);
    family(&w, "relay_queued_bytes", "gauge", "Bytes waiting to be written to receivers.");
    emit(&w, "relay_queued_bytes %" PRIu64 "\n", queued_bytes);
    family(&w, "relay_sockets_accepted_total", "counter",
           "TCP connections let through to the HTTP/WebSocket handshake.");
    emit(&w, "relay_sockets_accepted_total %" PRIu64 "\n", m->sockets_accepted_total);
    family(&w, "relay_connections_total", "counter", "WebSocket connections accepted.");
    emit(&w, "relay_connections_total %" PRIu64 "\n", m->connections_total);
    family(&w, "relay_rooms_created_total", "counter", "Rooms created.");
    emit(&w, "relay_rooms_created_total %" PRIu64 "\n", m->rooms_created_total);
    by_kind(&w, "relay_messages_received_total", "Messages received from clients.",
            m->messages_received);
    by_kind(&w, "relay_messages_sent_total", "Messages written to clients.", m->messages_sent);
    by_kind(&w, "relay_bytes_received_total", "Payload bytes received.", m->bytes_received);
    by_kind(&w, "relay_bytes_sent_total", "Payload bytes written.", m->bytes_sent);
    family(&w, "relay_messages_dropped_total", "counter", "Messages not forwarded, by reason.");
    for (int i = 0; i < DROP_REASON_COUNT; i++)
        emit(&w, "relay_messages_dropped_total{reason=\"%s\"} %" PRIu64 "\n", drop_names[i],
             m->dropped[i]);
    family(&w, "relay_rejects_total", "counter", "Requests refused, by reason.");
    for (int i = 0; i < REJECT_REASON_COUNT; i++)
        emit(&w, "relay_rejects_total{reason=\"%s\"} %" PRIu64 "\n", reject_names[i],
             m->rejected[i]);
    family(&w, "relay_senders_throttled_total", "counter",
           "Times a sender was paused because a receiver fell behind.");
    emit(&w, "relay_senders_throttled_total %" PRIu64 "\n", m->senders_throttled_total);
    return w.length;
}
