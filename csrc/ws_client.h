/* ws_client.h — the client side of RFC 6455 without I/O: the opening handshake, the frames a
 * server sends parsed straight from the caller's buffer into events, and masked frames written
 * for sending. The raw engine (transport_engine_raw.c) feeds it socket bytes; the C unit tests
 * (csrc/tests) feed it bytes from memory. */
#ifndef WS_CLIENT_H
#define WS_CLIENT_H

#include <stddef.h>
#include <stdint.h>

/* The largest handshake response read before giving up, and the largest request written. */
#define WS_HANDSHAKE_MAX_SIZE (64u * 1024)
/* RFC 6455 5.5: control frames carry at most 125 payload bytes. */
#define WS_CONTROL_PAYLOAD_MAX 125
/* The longest frame header: 2 bytes, a 64-bit length and a mask key. */
#define WS_FRAME_HEADER_MAX 14

enum ws_opcode {
    WS_OPCODE_CONTINUATION = 0,
    WS_OPCODE_TEXT = 1,
    WS_OPCODE_BINARY = 2,
    WS_OPCODE_CLOSE = 8,
    WS_OPCODE_PING = 9,
    WS_OPCODE_PONG = 10,
};

/* Close codes this file sends (RFC 6455 7.4.1). */
#define WS_CLOSE_NORMAL 1000
#define WS_CLOSE_PROTOCOL_ERROR 1002
#define WS_CLOSE_NO_STATUS 1005
#define WS_CLOSE_INVALID_PAYLOAD 1007

/* One request header: the name with the trailing ':' (what lws expects too), and its value. */
struct header_pair {
    char *name;
    char *value;
};

enum ws_event_type {
    WS_EVENT_NONE,             /* the bytes consumed completed nothing yet */
    WS_EVENT_OPEN,             /* the server accepted the handshake */
    WS_EVENT_HANDSHAKE_FAILED, /* `reason` says why; nothing more is parsed */
    WS_EVENT_DATA,             /* a piece of a text or binary message */
    WS_EVENT_PING,             /* `data`: the payload to send back in a Pong */
    WS_EVENT_PONG,
    WS_EVENT_CLOSE,          /* the peer's Close: `close_code` (1005: none), reason in data */
    WS_EVENT_PROTOCOL_ERROR, /* close with `close_code` and `reason`; nothing more is parsed */
};

struct ws_event {
    enum ws_event_type type;
    const unsigned char *data; /* DATA: inside the caller's input, no copy */
    size_t size;
    int first_of_message, last_of_message, binary; /* DATA */
    uint64_t rest_of_frame;                        /* DATA: payload bytes of the frame to come */
    int close_code;                                /* CLOSE, PROTOCOL_ERROR */
    const char *reason;                            /* HANDSHAKE_FAILED, PROTOCOL_ERROR */
};

enum ws_client_phase { WS_PHASE_HANDSHAKE, WS_PHASE_OPEN, WS_PHASE_DONE };

struct ws_client {
    enum ws_client_phase phase;
    char expected_accept[32]; /* base64(SHA-1(key + GUID)): 28 characters */
    char *response;           /* the handshake response until its blank line */
    size_t response_size;
    char reason[160];

    unsigned char header[WS_FRAME_HEADER_MAX]; /* of the frame being read */
    size_t header_size;
    int in_frame; /* the header is complete; payload follows */
    int opcode, fin;
    uint64_t payload_length, payload_seen;
    int in_message, message_binary;
    unsigned char control[WS_CONTROL_PAYLOAD_MAX];
    size_t control_size;
};

/* Starts a client whose handshake uses the 16 random bytes of `nonce`, and writes the request
 * for `path` on `host` with `header_count` extra headers into `out`. Returns its length, or 0 if
 * it does not fit in `capacity` or the digest failed. */
size_t ws_client_begin(struct ws_client *client, const unsigned char nonce[16], const char *path,
                       const char *host, const struct header_pair *headers, size_t header_count,
                       char *out, size_t capacity);

/* Frees what the client holds (the partial handshake response). */
void ws_client_free(struct ws_client *client);

/* Parses input from the server: consumes some of `data` and reports at most one event. Call it
 * again with the rest until everything is consumed. Events point into `data` or the client and
 * are valid until the next call. */
size_t ws_client_receive(struct ws_client *client, const unsigned char *data, size_t size,
                         struct ws_event *event);

/* Writes the header of a masked frame of `payload_size` bytes, mask key included, into `out`;
 * returns its size. The payload, masked with `mask_key`, follows it on the wire: ws_frame_write
 * masks it into the same buffer, a sender whose payload is masked already (bench/loadgen) sends
 * it from where it is. */
size_t ws_frame_header_write(unsigned char out[WS_FRAME_HEADER_MAX], int opcode, int fin,
                             const unsigned char mask_key[4], uint64_t payload_size);

/* Writes one masked frame whose payload is `first` then `rest` into `out`, masking straight from
 * the caller's buffers with `mask_key`. Returns the frame's size, or 0 if it does not fit. */
size_t ws_frame_write(unsigned char *out, size_t capacity, int opcode, int fin,
                      const unsigned char mask_key[4], const unsigned char *first,
                      size_t first_size, const unsigned char *rest, size_t rest_size);

/* The Close payload for `code` and `reason` (cut to fit 125 bytes) into `out`; its size. */
size_t ws_close_payload(int code, const char *reason, unsigned char out[WS_CONTROL_PAYLOAD_MAX]);

/* Sec-WebSocket-Accept for `key` (RFC 6455 4.2.2); 0, or -1 if the digest failed. */
int ws_accept_for_key(const char *key, char out[32]);

#endif
