/* transport_internal.h — the state shared by the Python-facing Connection
 * (transport_connection.c) and the libwebsockets service thread (transport_service.c, with its
 * raw-socket WebSocket engine in transport_rawws.c). Plain C: that thread never touches Python. */
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

/* The largest handshake request we build, and lws's read size for its own ws client. */
#define TRANSPORT_RX_BUFFER_SIZE (64u * 1024)

/* What one read takes from a raw (our own WebSocket) connection's socket. */
#define TRANSPORT_RAW_READ_SIZE (256u * 1024)

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
    unsigned char *data; /* from message_block_obtain(); handed to Python without a copy */
    size_t size;
    size_t capacity; /* of the block, for message_block_release() */
    int is_binary;
};

/* The WebSocket protocol state of a connection that speaks it itself over an lws raw socket
 * (transport_rawws.c); NULL when lws's own ws client runs the connection. */
struct raw_websocket;

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
    struct raw_websocket *raw;
    int service_holds_reference;
    int close_sent;
    int sent_close_code;
    char sent_close_reason[124];
    double last_proof_of_life; /* monotonic seconds of the handshake or the latest pong */
    unsigned char *staging;    /* LWS_PRE + TRANSPORT_STAGING_SIZE (raw engine: chunk headers) */
    unsigned char *assembling;
    size_t assembling_size, assembling_capacity;
    int assembling_binary;
    int discarding; /* a message broke a limit: drop input until the Close is out */
    struct connection *next_live, *previous_live;

    /* The wake-up list, under the service's lock. */
    struct connection *next_pending;
    int pending;
};

/* One fragment of the oldest send, as next_fragment() found it. */
struct fragment {
    struct send_request *request;
    size_t header_size; /* frame header bytes written to the caller's header buffer */
    const unsigned char *payload;
    size_t payload_size;
    int is_text, is_start, is_end;
};

/* Where a piece of received payload sits in its message. */
struct payload_position {
    int first_of_message, last_of_message, binary;
    size_t rest_of_frame; /* payload bytes of the current frame still to come */
};

/* Reference counting: the last release frees the connection and everything it owns. */
void connection_retain(struct connection *conn);
void connection_release(struct connection *conn);

double transport_monotonic_seconds(void);

/* The memory of one received message: at least `size` bytes (*capacity says how many), or NULL.
 * Thread-safe. Give it back with message_block_release(), which may keep it for reuse. */
unsigned char *message_block_obtain(size_t size, size_t *capacity);
void message_block_release(unsigned char *block, size_t capacity);

/* ---- shared by both WebSocket engines, service thread only ----------------------------- */

/* With conn->lock held: describes the next fragment of the oldest send, at most `capacity`
 * bytes, writing a chunk's frame header to `header_out`. Returns 0 when nothing is queued. The
 * payload may only be read while the lock is still held (a Ctrl-C'd sender takes it back). */
int next_fragment(struct connection *conn, unsigned char *header_out, size_t capacity,
                  struct fragment *fragment);

/* With conn->lock held, once the fragment is out: advances its send. Returns 1 when more is
 * queued (or a close is requested). */
int fragment_sent(struct connection *conn, const struct fragment *fragment);

/* Stores received payload in its message's one block and queues the message once complete
 * (pausing the socket when the receive queue is full). Returns 0, or what close_soon() does. */
int receive_payload(struct connection *conn, struct lws *wsi, const void *data, size_t length,
                    const struct payload_position *at);

/* Closes from inside the receive callback: the Close goes out from the next writeable callback
 * (returning -1 while lws 4.1 still holds buffered ws input crashes it) and the rest of the
 * offending message is dropped meanwhile. Returns 0. */
int close_soon(struct connection *conn, struct lws *wsi, int code, const char *reason);

/* With conn->lock held: every waiting sender learns its send failed. */
void fail_pending_sends(struct connection *conn);

/* The wsi is gone (or never came): records how the connection ended, wakes every waiter and
 * drops the service thread's reference. Safe to reach more than once for one connection. */
void finish_connection(struct connection *conn, struct lws *wsi, const char *error);

/* transport_rawws.c: our own WebSocket client over an lws raw socket. */
int rawws_attach(struct connection *conn); /* 0, or -1 out of memory */
void rawws_free(struct raw_websocket *raw);
int rawws_on_event(struct connection *conn, struct lws *wsi, enum lws_callback_reasons reason,
                   void *in, size_t len);

/* Starts the service thread if it is not running. Returns 0, or -1 with `error` filled. */
int service_start(char *error, size_t error_size);

/* Asks the service thread to look at `conn` (open it, write, close, resume reading).
 * Thread-safe; never blocks on the network. */
void service_notify(struct connection *conn);

/* Closes every connection (1001), waits up to `grace_seconds` for the closing handshakes, then
 * stops and joins the service thread. After it, service_start() fails: the process is exiting. */
void service_shutdown(double grace_seconds);

#endif
