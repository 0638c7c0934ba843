/* transport_internal.h — the state shared by the transport's two sides: the Python-facing
 * Connection (transport_connection.c) and the libwebsockets service thread
 * (transport_service.c). Plain C only: the service thread never touches Python or the GIL. */
#ifndef TRANSPORT_INTERNAL_H
#define TRANSPORT_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <libwebsockets.h>

#include "framing.h"

/* Bytes of the caller's buffer copied per WebSocket fragment. lws masks client frames in place,
 * so payloads are streamed through this bounded per-connection buffer instead of being copied
 * whole; it is also the most lws ever buffers for a partial socket write. */
#define TRANSPORT_STAGING_SIZE (256u * 1024)

/* What lws reads from the socket per callback, and the largest handshake it builds. */
#define TRANSPORT_RX_BUFFER_SIZE (64u * 1024)

enum connection_state {
    CONNECTION_CONNECTING,
    CONNECTION_OPEN,
    CONNECTION_CLOSED,
};

/* One send_*() call. It lives on the sending thread's stack: that thread waits (GIL released)
 * until the service thread has handed every byte to lws, so the caller's buffer is read in
 * place and never copied whole. */
struct send_request {
    struct send_request *next;
    int is_text;
    const unsigned char *payload;
    size_t payload_size;
    const struct chunk_plan *plan; /* NULL: one message carrying the payload as is */
    uint32_t message_count;
    /* progress, under the connection's lock */
    uint32_t message_index;
    size_t message_offset; /* bytes of the current message already handed to lws */
    int finished;
    int failed;
};

/* A complete received message, owned by the receive queue until recv() takes it. */
struct received_message {
    struct received_message *next;
    unsigned char *data; /* malloc'd once per message; handed to Python without a copy */
    size_t size;
    int is_binary;
};

struct header_pair {
    char *name; /* with the trailing ':' that lws expects */
    char *value;
};

struct connection {
    atomic_int refcount; /* the Python object, the service thread, the wake-up list */
    pthread_mutex_t lock;
    pthread_cond_t changed; /* state, send progress or receive queue changed */

    /* Settings fixed before the connection is handed to the service thread. */
    char *address;
    int port;
    char *path;
    char *host_header; /* also the TLS server name (SNI) and the name checked on the cert */
    int use_tls;
    char *ca_file;
    char *proxy; /* "host:port" or "user:pass@host:port"; NULL connects directly */
    struct header_pair *headers;
    size_t header_count;
    size_t max_message_size;
    size_t receive_queue_limit;
    lws_retry_bo_t keepalive; /* must outlive the wsi: lws keeps a pointer to it */
    int keepalive_enabled;

    /* Shared state, under `lock`. */
    enum connection_state state;
    int failed_to_open;
    char error[256]; /* why the connection could not be opened */
    int close_code;  /* 0 until closed */
    char close_reason[124];
    int peer_close_code;
    char peer_close_reason[124];
    struct send_request *send_head, *send_tail;
    struct received_message *received_head, *received_tail;
    size_t received_bytes;
    /* requests from Python threads, carried out by the service thread */
    int connect_requested;
    int close_requested;
    int close_requested_code;
    char close_requested_reason[124];
    int abort_requested;
    int resume_receiving;
    int receiving_paused;

    /* Service-thread only. */
    struct lws *wsi;
    int service_holds_reference;
    int close_sent;
    int sent_close_code;
    char sent_close_reason[124];
    double last_proof_of_life; /* monotonic seconds of the handshake or the latest pong */
    unsigned char *staging;    /* LWS_PRE + TRANSPORT_STAGING_SIZE */
    unsigned char *assembling;
    size_t assembling_size, assembling_capacity;
    int assembling_binary;
    int discarding; /* a message broke a limit: drop input until the Close is out */
    struct connection *next_live, *previous_live;

    /* The wake-up list, under the service's lock. */
    struct connection *next_pending;
    int pending;
};

/* Reference counting: the last release frees the connection and everything it owns. */
void connection_retain(struct connection *conn);
void connection_release(struct connection *conn);

double transport_monotonic_seconds(void);

/* Starts the service thread if it is not running. Returns 0, or -1 with `error` filled. */
int service_start(char *error, size_t error_size);

/* Asks the service thread to look at `conn` (open it, write, close, resume reading).
 * Thread-safe; never blocks on the network. */
void service_notify(struct connection *conn);

/* Closes every connection (1001), waits up to `grace_seconds` for the closing handshakes, then
 * stops and joins the service thread. After it, service_start() fails: the process is exiting. */
void service_shutdown(double grace_seconds);

#endif
