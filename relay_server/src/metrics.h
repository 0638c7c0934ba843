/* metrics.h — counters the relay keeps about itself, rendered for GET /metrics in the
 * Prometheus text format. Plain integers: the relay is single-threaded. */
#ifndef METRICS_H
#define METRICS_H

#include <stddef.h>
#include <stdint.h>

enum drop_reason {
    DROP_NOT_IN_ROOM,
    DROP_NO_RECIPIENT,
    DROP_BAD_FRAME_HEADER,
    DROP_TRUNCATED, /* sender left mid-message */
    DROP_REASON_COUNT
};

enum reject_reason {
    REJECT_RATE_LIMITED,
    REJECT_ROOM_FULL,
    REJECT_TOO_MANY_ROOMS,
    REJECT_TOO_MANY_CONNECTIONS,
    REJECT_ROOM_NOT_FOUND,
    REJECT_INVALID_MESSAGE,
    REJECT_INVALID_RESUME_TOKEN,
    REJECT_MESSAGE_TOO_BIG,
    REJECT_UNAUTHORIZED,
    REJECT_SLOW_RECEIVER,
    REJECT_IDLE_TIMEOUT,
    REJECT_USER_ID_TAKEN,
    REJECT_GLOBAL_JOIN_BUDGET,
    REJECT_ROOMS_PER_ADDRESS,
    REJECT_CONNECTIONS_PER_ADDRESS,
    REJECT_HANDSHAKES_PER_ADDRESS,
    REJECT_ORIGIN,
    REJECT_BAD_HANDSHAKE,
    REJECT_PROTOCOL_ERROR,
    REJECT_REASON_COUNT
};

struct relay_metrics {
    uint64_t sockets_accepted_total; /* TCP connections let through to the handshake */
    uint64_t connections_total;
    uint64_t rooms_created_total;
    uint64_t messages_received[2]; /* [0] text, [1] binary */
    uint64_t messages_sent[2];
    uint64_t bytes_received[2];
    uint64_t bytes_sent[2];
    uint64_t dropped[DROP_REASON_COUNT];
    uint64_t rejected[REJECT_REASON_COUNT];
    uint64_t senders_throttled_total;
};

/* Writes the Prometheus text into `out` (capacity `size`); returns the length written, or the
 * length needed if it did not fit (as snprintf). Gauges come from the caller. */
size_t metrics_render(const struct relay_metrics *metrics, size_t connections, size_t rooms,
                      size_t members_away, uint64_t queued_bytes, char *out, size_t size);

#endif
