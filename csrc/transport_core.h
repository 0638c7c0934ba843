/* transport_core.h — the engine-neutral client connection: settings, the send queue cut into
 * fragments, received messages assembled in message blocks, and how a connection opens and
 * closes. Shared by the Python face (transport_connection.c), the service thread
 * (transport_service.c) and both engines (transport_engine_*.c); it calls none of them. */
#ifndef TRANSPORT_CORE_H
#define TRANSPORT_CORE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <libwebsockets.h>

#include "framing.h"
#include "transfer_assembly.h"
#include "ws_client.h" /* struct header_pair */

/* Bytes of the caller's buffer copied per WebSocket fragment. lws masks client frames in place,
 * so payloads are streamed through this bounded per-connection buffer instead of being copied
 * whole; it is also the most lws ever buffers for a partial socket write. */
#define TRANSPORT_STAGING_SIZE (256u * 1024)

/* The largest handshake request we build, and lws's read size for its own ws client. */
#define TRANSPORT_RX_BUFFER_SIZE (64u * 1024)

/* What one read takes from a raw (our own WebSocket) connection's socket. */
#define TRANSPORT_RAW_READ_SIZE (256u * 1024)

/* The largest transfer reassembled (its buffer is allocated when chunk 0 announces it). */
#define TRANSPORT_MAX_TRANSFER_SIZE (16ull * 1024 * 1024 * 1024)

/* Room for a close reason: 123 bytes of UTF-8 (RFC 6455 5.5.1) and its NUL. */
#define TRANSPORT_CLOSE_REASON_SIZE 124

enum client_connection_state {
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
    /* A private room's transfer sealed while it is sent (sealing_transfer.c): the sending
     * thread seals chunk after chunk and raises messages_ready (under the lock); the service
     * thread sends no chunk beyond it. */
    void *sealing;
    uint32_t messages_ready;
    /* progress, under the connection's lock */
    uint32_t message_index;
    size_t message_offset; /* bytes of the current message already handed to lws */
    int finished;
    int failed;
};

/* A complete received message (or reassembled transfer), owned by the receive queue until
 * recv() takes it. */
struct received_message {
    struct received_message *next;
    unsigned char *data; /* from message_block_obtain(); handed to Python without a copy */
    size_t size;
    size_t capacity; /* of the block, for message_block_release() */
    int is_binary;
    unsigned char *frame_header; /* a whole transfer: chunk 0's header (else NULL); free() */
    size_t frame_header_size;
    struct completed_transfer opened; /* a whole transfer: how it was opened (its key's) */
};

/* Frees a message and its memory (recv() hands the memory on instead). */
void received_message_free(struct received_message *message);

struct transport_engine; /* transport_engine.h */

struct client_connection {
    atomic_int refcount; /* the Python object, the service thread, the wake-up list */
    pthread_mutex_t lock;
    pthread_cond_t changed; /* state, send progress or receive queue changed */

    /* Settings fixed before the connection is handed to the service thread. */
    const struct transport_engine *engine;
    char *address;
    int port;
    char *path;
    char *host_header; /* lws's engine also takes the TLS server name from it */
    char *server_name; /* the name (or IP) the certificate must carry, and the SNI */
    int use_tls;
    char *ca_file;
    char *proxy; /* "host:port" or "user:pass@host:port"; NULL connects directly */
    struct header_pair *headers;
    size_t header_count;
    size_t max_message_size;
    size_t receive_queue_limit;
    int reassemble_transfers; /* framed binary messages become one message per transfer */
    lws_retry_bo_t keepalive; /* must outlive the wsi: lws keeps a pointer to it */
    int keepalive_enabled;

    /* Shared state, under `lock`. */
    enum client_connection_state state;
    int failed_to_open;
    char error[256]; /* why the connection could not be opened */
    int close_code;  /* 0 until closed */
    char close_reason[TRANSPORT_CLOSE_REASON_SIZE];
    int peer_close_code;
    char peer_close_reason[TRANSPORT_CLOSE_REASON_SIZE];
    struct send_request *send_head, *send_tail;
    struct received_message *received_head, *received_tail;
    size_t received_bytes;
    /* requests from Python threads, carried out by the service thread */
    int connect_requested;
    int close_requested;
    int close_requested_code;
    char close_requested_reason[TRANSPORT_CLOSE_REASON_SIZE];
    int abort_requested;
    int resume_receiving;
    int receiving_paused;
    struct transfer_key room_key; /* private rooms: the key set_transfer_key() gave */
    int room_key_changed;         /* the service thread has not taken it yet */

    /* Service-thread only. */
    struct lws *wsi;
    void *engine_state; /* the engine's own, from its attach() */
    int service_holds_reference;
    int close_sent;
    int sent_close_code;
    char sent_close_reason[TRANSPORT_CLOSE_REASON_SIZE];
    double last_proof_of_life; /* monotonic seconds of the handshake or the latest pong */
    unsigned char *staging;    /* LWS_PRE + TRANSPORT_STAGING_SIZE (raw engine: chunk headers) */
    size_t message_bytes;      /* of the message being received, for max_message_size */
    int message_to_transfers;  /* it goes to `transfers`, not to `assembling` */
    struct transfer_assembler transfers;
    unsigned char *assembling;
    size_t assembling_size, assembling_capacity;
    int assembling_binary;
    int discarding; /* a message broke a limit: drop input until the Close is out */
    struct client_connection *next_live, *previous_live;

    /* The wake-up list, under the service's lock. */
    struct client_connection *next_pending;
    int pending;
};

/* One fragment of the oldest send, as connection_next_fragment() found it. */
struct outgoing_fragment {
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

/* What the engine must do after connection_receive(): nothing, stop reading from the socket
 * (the receive queue is full), or get a writeable callback to send the Close that is due. */
enum receive_outcome {
    RECEIVE_CONTINUE = 0,
    RECEIVE_PAUSE_READING = 1,
    RECEIVE_SEND_CLOSE = 2,
};

/* Reference counting: the last release frees the connection and everything it owns. */
struct client_connection *connection_new(void);
void connection_retain(struct client_connection *conn);
void connection_release(struct client_connection *conn);

double transport_monotonic_seconds(void);

/* The memory of one received message: at least `size` bytes (*capacity says how many), or NULL.
 * Thread-safe. Give it back with message_block_release(), which may keep it for reuse. */
unsigned char *message_block_obtain(size_t size, size_t *capacity);
void message_block_release(unsigned char *block, size_t capacity);

/* ---- service thread only -------------------------------------------------------------- */

/* The handshake is done: the connection is open. Returns 1 when a send or close is waiting
 * (the engine then asks for a writeable callback). */
int connection_mark_open(struct client_connection *conn);

/* With conn->lock held: the Close a Python thread (or close_soon) asked for, if it is due and
 * not sent yet. Returns 1 and fills `code`/`reason` (TRANSPORT_CLOSE_REASON_SIZE bytes), marks
 * it sent and fails every waiting send; 0 when no Close is due. */
int connection_take_close_request(struct client_connection *conn, int *code, char *reason);

/* With conn->lock held: describes the next fragment of the oldest send, at most `capacity`
 * bytes, writing a chunk's frame header to `header_out`. Returns 0 when nothing is queued. The
 * payload may only be read while the lock is still held (a Ctrl-C'd sender takes it back). */
int connection_next_fragment(struct client_connection *conn, unsigned char *header_out,
                             size_t capacity, struct outgoing_fragment *fragment);

/* With conn->lock held, once the fragment is out: advances its send. Returns 1 when more is
 * queued (or a close is requested). */
int connection_fragment_sent(struct client_connection *conn,
                             const struct outgoing_fragment *fragment);

/* Stores received payload in its message's one block and queues the message once complete. */
enum receive_outcome connection_receive(struct client_connection *conn, const void *data,
                                        size_t length, const struct payload_position *at);

/* Closes from inside a receive: the Close goes out from the next writeable callback (returning
 * -1 while lws 4.1 still holds buffered ws input crashes it) and the rest of the offending
 * message is dropped meanwhile. Returns RECEIVE_SEND_CLOSE. */
enum receive_outcome connection_close_soon(struct client_connection *conn, int code,
                                           const char *reason);

/* The peer's Close frame payload (`size` bytes): records its code and reason. */
void connection_record_peer_close(struct client_connection *conn, const unsigned char *payload,
                                  size_t size);

/* With conn->lock held: every waiting sender learns its send failed. */
void connection_fail_pending_sends(struct client_connection *conn);

/* The socket is gone (or never came): records how the connection ended (`error`, or NULL) and
 * wakes every waiter. */
void connection_record_end(struct client_connection *conn, const char *error);

#endif
