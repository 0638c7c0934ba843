/* relay_core.h — the relay without I/O: connections, rooms, members, routing, limits.
 * The transport layer (lws_server.c) feeds events in (connection opened, data received, writable,
 * closed, timer tick) and the core answers by filling per-connection send queues and calling the
 * few transport hooks in `struct relay_io`. Unit tests drive the same functions without sockets. */
#ifndef RELAY_CORE_H
#define RELAY_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "cluster.h"
#include "config.h"
#include "metrics.h"
#include "protocol_constants.h"
#include "send_queue.h"

#define DISPLAY_NAME_MAX_BYTES 256

struct relay;
struct room;
struct member;

/* What the core asks of the transport. `transport` is the opaque handle given at open. */
struct relay_io {
    void *context;
    /* The connection has something to write: call relay_write_step when it is writable. */
    void (*want_write)(void *context, void *transport);
    /* Stop (paused=true) or resume reading from this connection. */
    void (*pause_reading)(void *context, void *transport, bool paused);
    /* Close with a WebSocket close code; the transport later reports relay_connection_closed. */
    void (*close)(void *context, void *transport, int code, const char *reason);
    /* Send a WebSocket ping. */
    void (*ping)(void *context, void *transport);
};

/* One blocked sender waiting for this connection's queue to drain (flow control). */
struct waiting_sender {
    uint64_t sender_id;
    struct relay_message *message;
};

struct connection {
    LIST_ENTRY(connection) open_link; /* every open connection, for the timers */
    uint64_t id;
    void *transport;
    char peer_address[64];   /* for logs and rate limiting */
    bool echo;               /* test-only echo endpoint: everything comes straight back */
    struct member *member;   /* NULL while in no room */
    struct send_queue queue; /* what the relay has to write to this connection */
    double opened_at;
    double last_heard;    /* last frame (or pong) received */
    double last_ping;     /* last ping sent */
    double last_progress; /* last write, or when the queue became non-empty */
    bool closing;

    /* Inbound text message being reassembled (JSON needs the whole text). */
    unsigned char *text;
    size_t text_length;
    size_t text_capacity;
    bool text_in_progress;

    /* Inbound binary message: first the bytes that may hold a frame header (routing needs it),
     * then the message being streamed to its receivers. */
    unsigned char *sniff;
    size_t sniff_length;
    bool dropping_binary; /* the rest of this binary message goes nowhere */
    uint64_t binary_bytes;
    struct relay_message *forwarding;
    /* Cluster: the same message on its way to other nodes (stream 0: none). */
    uint64_t cluster_stream;
    uint32_t cluster_piece;
    char cluster_code[ROOM_CODE_LENGTH + 1];
    char (*cluster_nodes)[CLUSTER_NODE_ID_LENGTH + 1];
    size_t cluster_node_count;

    /* Flow control: how many receivers this connection waits on, and who waits on it. */
    unsigned blocked_on;
    struct waiting_sender *waiters;
    size_t waiter_count;
    size_t waiter_capacity;
};

struct relay *relay_create(const struct relay_config *config, const struct relay_io *io,
                           const unsigned char *secret, size_t secret_length, double now);
void relay_destroy(struct relay *relay);

struct relay_metrics *relay_metrics(struct relay *relay);
size_t relay_connection_count(const struct relay *relay);
size_t relay_room_count(const struct relay *relay);
size_t relay_members_away(const struct relay *relay);
uint64_t relay_queued_bytes(const struct relay *relay);

/* A TCP connection was accepted, before any HTTP: false when its address already holds
 * --max-connections-per-address sockets or --max-handshakes-per-address unfinished handshakes
 * (the transport then closes it at once: an attacker's sockets are never queued in front of
 * others). Every accepted socket is reported closed exactly once, and upgraded at most once. */
bool relay_socket_accepted(struct relay *relay, const char *peer_address, double now);
/* The transport refused a request from `peer_address` (`what`: a constant naming it, `status`:
 * the HTTP status). Logged at once for the first of an interval, else summarised per address
 * (refusal_log.h), so that a flood of refusals cannot flood the log. */
void relay_note_refusal(struct relay *relay, const char *peer_address, const char *what, int status,
                        double now);

/* Its WebSocket handshake is done: it no longer counts as a handshake. */
void relay_socket_upgraded(struct relay *relay, const char *peer_address);
/* It closed; `in_handshake` if it was never upgraded. */
void relay_socket_closed(struct relay *relay, const char *peer_address, bool in_handshake);

/* A WebSocket connection was accepted; NULL when over --max-connections or out of memory. */
struct connection *relay_connection_open(struct relay *relay, void *transport,
                                         const char *peer_address, bool echo, double now);

/* Bytes of a message arrived. `first`/`final` mark the message's first and last bytes;
 * `frame_remaining` is what the current frame still announces beyond these bytes. */
void relay_receive(struct relay *relay, struct connection *connection, const unsigned char *bytes,
                   size_t length, bool is_binary, bool first, bool final, uint64_t frame_remaining,
                   double now);

/* A pong (or any sign of life outside messages) arrived. */
void relay_heard(struct connection *connection, double now);

/* The connection is writable: the next frame to write, if any. */
bool relay_next_write(struct connection *connection, struct write_step *step);
/* The frame from relay_next_write was written. */
void relay_wrote(struct relay *relay, struct connection *connection, double now);

/* The transport closed the connection (for whatever reason); frees it. */
void relay_connection_closed(struct relay *relay, struct connection *connection, double now);

/* Timers: resume grace, reserved rooms, pings, idle and slow-receiver timeouts. Call ~1/s. */
void relay_tick(struct relay *relay, double now);

/* POST /api/create-room: reserves an empty room. Returns NULL and the code, or why not:
 * "RATE_LIMITED" (--create-rate), "TOO_MANY_ROOMS" (--max-rooms), "TOO_MANY_ROOMS_FOR_ADDRESS"
 * (--max-rooms-per-address), "LAN_SESSION" or "INTERNAL". */
const char *relay_reserve_room(struct relay *relay, const char *peer_address, double now,
                               char code[ROOM_CODE_LENGTH + 1]);

/* --- cluster mode (--nats): rooms shared with other relay nodes (docs/architecture.md) ---- */

/* What the core asks of the backplane (nats_backplane.c); every call is on the service thread. */
struct relay_cluster_io {
    void *context;
    const char *node; /* this node's id */
    size_t max_piece; /* largest binary piece that crosses in one backplane message */
    double (*wall_clock)(void *context); /* seconds since the epoch: orders joins across nodes */
    /* Claims a fresh code cluster-wide: 1 claimed, 0 another node holds it, -1 unreachable. */
    int (*claim_code)(void *context, const char *code);
    /* A room this node does not have: 0 no such room, 1 live, 2 reserved and still empty,
     * -1 unreachable. For 1, *records is a malloc'd JSON array of its members on other nodes,
     * each {node, user_id, display_name, joined_at, host, resume}. */
    int (*lookup_room)(void *context, const char *code, char **records);
    /* This node's members of a room changed: `records` is their JSON array ("[]" for a reserved
     * room), or NULL once this node no longer holds the room. */
    void (*room_changed)(void *context, const char *code, const char *records);
    /* Sends an envelope to these nodes, or (node_count 0) to the room's subject: every node
     * holding the room. */
    void (*publish)(void *context, const char *const *nodes, size_t node_count,
                    const struct cluster_envelope *envelope);
};

/* Joins the relay to a cluster; `cluster` must outlive the relay. */
void relay_attach_cluster(struct relay *relay, const struct relay_cluster_io *cluster);

/* An envelope from another node (decoded by cluster_envelope_decode). */
void relay_cluster_receive(struct relay *relay, const struct cluster_envelope *envelope,
                           double now);

/* Another node's directory entry expired: its members leave (or, if they asked for resume, are
 * away for the resume grace, to resume on any node). */
void relay_cluster_node_lost(struct relay *relay, const char *node, double now);

/* Starts a graceful shutdown: every connection is closed with 1001. */
void relay_close_all(struct relay *relay, int code, const char *reason);

#endif
