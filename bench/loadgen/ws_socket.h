/* ws_socket.h — the load generator's WebSocket connections: blocking or non-blocking sockets
 * driven through the extension's sans-I/O client (csrc/ws_client.c), so the benchmark speaks
 * the same RFC 6455 as the product. Payloads the caller does not want are discarded inside the
 * kernel (recv with MSG_TRUNC), so a receiver costs the relay's side of the copy and no more. */
#ifndef WS_SOCKET_H
#define WS_SOCKET_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ws_client.h"

/* What ws_next_message() found. */
enum ws_result {
    WS_MESSAGE = 1,     /* a complete data message; see last_opcode, message, message_len */
    WS_WOULD_BLOCK = 0, /* non-blocking read and nothing complete yet */
    WS_CLOSED = -1,     /* the peer closed, sent Close, or an error or timeout occurred */
};

struct ws_conn {
    int fd;
    struct ws_client client; /* the protocol state: handshake, frame parser */
    /* Bytes read from the socket but not parsed yet. */
    unsigned char *buffer;
    size_t buffer_start, buffer_end, buffer_capacity;
    /* Payload bytes of the current data frame still to come (from the last data event). */
    uint64_t frame_rest;
    /* The data message being read: its opcode, and its bytes if the caller collects them. */
    uint8_t message_opcode;
    bool collecting;
    unsigned char *message;
    size_t message_len, message_capacity;
    /* Which data messages the caller wants the bytes of; others are only counted. */
    bool collect_text, collect_binary;
    uint8_t last_opcode;
    uint64_t binary_bytes, binary_messages;
    /* Writers on other threads (a pong from the reader) take this lock when it is set. */
    pthread_mutex_t *write_lock;
    uint8_t mask_key[4];
};

/* Allocate the parse buffer; a small one suits connections that only idle. */
int ws_init(struct ws_conn *conn, size_t buffer_capacity);
void ws_free(struct ws_conn *conn);

/* Connect (optionally from source_address) and send the upgrade request, without waiting. */
int ws_start_connect(struct ws_conn *conn, const char *host, int port, const char *source_address);
/* Read and check the 101 answer; bytes after it stay buffered for ws_next_message(). */
int ws_finish_connect(struct ws_conn *conn);
/* Both of the above, with a receive/send timeout set on the socket. */
int ws_connect(struct ws_conn *conn, const char *host, int port, const char *source_address,
               int timeout_ms);
int ws_set_timeout(struct ws_conn *conn, int timeout_ms);

/* Read until one data message is complete. Pings are answered, pongs ignored. */
enum ws_result ws_next_message(struct ws_conn *conn, bool blocking);

/* Send one whole message (WS_OPCODE_*), masked with the connection's key into a copy (the copy
 * suits small messages). */
int ws_send(struct ws_conn *conn, int opcode, const void *data, size_t len);
/* Send a message whose payload is already masked with the connection's key, without copying:
 * the load generator fills it with random bytes once and sends it again and again. */
int ws_send_premasked(struct ws_conn *conn, int opcode, const void *payload, size_t len);

/* Find "name":"<value>" in a JSON text and copy the value (no escapes); 0 when found. */
int json_string_field(const unsigned char *text, size_t len, const char *name, char *out,
                      size_t out_size);

#endif
