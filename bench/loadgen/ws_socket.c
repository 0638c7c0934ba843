/* ws_socket.c — sockets under the extension's sans-I/O WebSocket client (csrc/ws_client.c) for
 * the relay load generator: this file reads, writes and counts; the handshake, the frame parser
 * and the frame writer are the product's, so the benchmark drives the relay as clients do. */
#include "ws_socket.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* The parse buffer must hold at least a handshake answer's worth of bytes per read. */
#define SMALLEST_BUFFER 4096
/* The largest message ws_send() masks on the stack instead of the heap. */
#define SMALL_FRAME 4096

int ws_init(struct ws_conn *conn, size_t buffer_capacity)
{
    memset(conn, 0, sizeof *conn);
    conn->fd = -1;
    conn->buffer_capacity = buffer_capacity < SMALLEST_BUFFER ? SMALLEST_BUFFER : buffer_capacity;
    conn->buffer = malloc(conn->buffer_capacity);
    if (!conn->buffer)
        return -1;
    /* RFC 6455 wants an unpredictable key per frame; one random key per connection is enough to
     * make the relay do real unmasking work, which is all a benchmark needs. */
    if (getrandom(conn->mask_key, sizeof conn->mask_key, 0) != sizeof conn->mask_key)
        return -1;
    conn->mask_key[0] |= 1; /* never all zero: some servers skip unmasking for a zero key */
    return 0;
}

void ws_free(struct ws_conn *conn)
{
    if (conn->fd >= 0)
        close(conn->fd);
    conn->fd = -1;
    ws_client_free(&conn->client);
    free(conn->buffer);
    free(conn->message);
    conn->buffer = NULL;
    conn->message = NULL;
}

int ws_set_timeout(struct ws_conn *conn, int timeout_ms)
{
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    if (setsockopt(conn->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) ||
        setsockopt(conn->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv))
        return -1;
    return 0;
}

/* Writes every byte of `parts`, under the connection's write lock when it has one. */
static int write_all(struct ws_conn *conn, struct iovec *parts, int count)
{
    if (conn->write_lock)
        pthread_mutex_lock(conn->write_lock);
    int rc = 0;
    while (count > 0) {
        ssize_t n = writev(conn->fd, parts, count);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = -1;
            break;
        }
        while (count > 0 && (size_t)n >= parts->iov_len) {
            n -= (ssize_t)parts->iov_len;
            parts++;
            count--;
        }
        if (count > 0) {
            parts->iov_base = (char *)parts->iov_base + n;
            parts->iov_len -= (size_t)n;
        }
    }
    if (conn->write_lock)
        pthread_mutex_unlock(conn->write_lock);
    return rc;
}

int ws_start_connect(struct ws_conn *conn, const char *host, int port, const char *source_address)
{
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &address.sin_addr) != 1) {
        fprintf(stderr, "loadgen: %s is not an IPv4 address\n", host);
        return -1;
    }
    conn->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (conn->fd < 0) {
        perror("loadgen: socket");
        return -1;
    }
    int one = 1;
    setsockopt(conn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (source_address) {
        /* Let connect() pick the port knowing the destination, so that each source address
         * gives a full ephemeral range per relay port. */
        setsockopt(conn->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in source = {.sin_family = AF_INET};
        if (inet_pton(AF_INET, source_address, &source.sin_addr) != 1 ||
            bind(conn->fd, (struct sockaddr *)&source, sizeof source)) {
            fprintf(stderr, "loadgen: cannot bind to %s: %s\n", source_address, strerror(errno));
            return -1;
        }
    }
    if (connect(conn->fd, (struct sockaddr *)&address, sizeof address)) {
        fprintf(stderr, "loadgen: connect to %s:%d: %s\n", host, port, strerror(errno));
        return -1;
    }
    unsigned char nonce[16];
    char authority[64], request[512];
    snprintf(authority, sizeof authority, "%s:%d", host, port);
    size_t size = getrandom(nonce, sizeof nonce, 0) == sizeof nonce
                      ? ws_client_begin(&conn->client, nonce, "/ws", authority, NULL, 0, request,
                                        sizeof request)
                      : 0;
    if (size == 0) {
        fprintf(stderr, "loadgen: cannot write the upgrade request\n");
        return -1;
    }
    struct iovec part = {request, size};
    return write_all(conn, &part, 1);
}

/* Reads into the (emptied) parse buffer, or discards up to `discard` bytes in the kernel. */
static ssize_t read_some(struct ws_conn *conn, bool blocking, uint64_t discard)
{
    int flags = blocking ? 0 : MSG_DONTWAIT;
    for (;;) {
        ssize_t n = discard ? recv(conn->fd, NULL, discard < (1u << 30) ? discard : 1u << 30,
                                   flags | MSG_TRUNC)
                            : recv(conn->fd, conn->buffer, conn->buffer_capacity, flags);
        if (n < 0 && errno == EINTR)
            continue;
        return n;
    }
}

int ws_finish_connect(struct ws_conn *conn)
{
    for (;;) {
        while (conn->buffer_start < conn->buffer_end) {
            struct ws_event event;
            conn->buffer_start +=
                ws_client_receive(&conn->client, conn->buffer + conn->buffer_start,
                                  conn->buffer_end - conn->buffer_start, &event);
            if (event.type == WS_EVENT_OPEN)
                return 0; /* what follows stays buffered for ws_next_message() */
            if (event.type == WS_EVENT_HANDSHAKE_FAILED) {
                fprintf(stderr, "loadgen: upgrade refused: %s\n", event.reason);
                return -1;
            }
        }
        conn->buffer_start = conn->buffer_end = 0;
        ssize_t n = read_some(conn, true, 0);
        if (n <= 0) {
            fprintf(stderr, "loadgen: handshake: %s\n",
                    n == 0 ? "connection closed" : strerror(errno));
            return -1;
        }
        conn->buffer_end = (size_t)n;
    }
}

int ws_connect(struct ws_conn *conn, const char *host, int port, const char *source_address,
               int timeout_ms)
{
    if (ws_start_connect(conn, host, port, source_address))
        return -1;
    if (ws_set_timeout(conn, timeout_ms))
        return -1;
    return ws_finish_connect(conn);
}

static int send_frame(struct ws_conn *conn, int opcode, const void *payload, size_t len,
                      bool already_masked)
{
    unsigned char header[WS_FRAME_HEADER_MAX], small[SMALL_FRAME];
    if (already_masked) {
        struct iovec parts[2] = {
            {header, ws_frame_header_write(header, opcode, 1, conn->mask_key, len)},
            {(void *)payload, len},
        };
        return write_all(conn, parts, 2);
    }
    size_t capacity = WS_FRAME_HEADER_MAX + len;
    unsigned char *frame = capacity <= sizeof small ? small : malloc(capacity);
    if (!frame)
        return -1;
    struct iovec part = {
        frame, ws_frame_write(frame, capacity, opcode, 1, conn->mask_key, payload, len, NULL, 0)};
    int rc = write_all(conn, &part, 1);
    if (frame != small)
        free(frame);
    return rc;
}

int ws_send(struct ws_conn *conn, int opcode, const void *data, size_t len)
{
    return send_frame(conn, opcode, data, len, false);
}

int ws_send_premasked(struct ws_conn *conn, int opcode, const void *payload, size_t len)
{
    return send_frame(conn, opcode, payload, len, true);
}

static int keep_payload(struct ws_conn *conn, const unsigned char *data, size_t len)
{
    if (conn->message_len + len + 1 > conn->message_capacity) {
        size_t capacity = (conn->message_len + len + 1) * 2;
        unsigned char *grown = realloc(conn->message, capacity);
        if (!grown)
            return -1;
        conn->message = grown;
        conn->message_capacity = capacity;
    }
    memcpy(conn->message + conn->message_len, data, len);
    conn->message_len += len;
    conn->message[conn->message_len] = 0;
    return 0;
}

/* What one event of the parser means here: WS_CLOSED, or WS_MESSAGE with *message_done when a
 * data message completed. Pings are answered. */
static enum ws_result on_event(struct ws_conn *conn, const struct ws_event *event,
                               bool *message_done)
{
    *message_done = false;
    switch (event->type) {
    case WS_EVENT_DATA:
        conn->frame_rest = event->rest_of_frame;
        if (event->first_of_message) {
            conn->message_opcode = event->binary ? WS_OPCODE_BINARY : WS_OPCODE_TEXT;
            conn->message_len = 0;
            conn->collecting = event->binary ? conn->collect_binary : conn->collect_text;
        }
        if (event->binary)
            conn->binary_bytes += event->size;
        if (conn->collecting && keep_payload(conn, event->data, event->size))
            return WS_CLOSED;
        if (event->last_of_message) {
            *message_done = true;
            conn->last_opcode = conn->message_opcode;
            if (event->binary)
                conn->binary_messages++;
            if (!conn->collecting)
                conn->message_len = 0;
        }
        return WS_MESSAGE;
    case WS_EVENT_PING:
        return ws_send(conn, WS_OPCODE_PONG, event->data, event->size) ? WS_CLOSED : WS_MESSAGE;
    case WS_EVENT_NONE:
    case WS_EVENT_PONG:
    case WS_EVENT_OPEN:
        return WS_MESSAGE;
    default: /* the peer's Close, a protocol error */
        return WS_CLOSED;
    }
}

enum ws_result ws_next_message(struct ws_conn *conn, bool blocking)
{
    for (;;) {
        bool message_done;
        if (conn->buffer_start < conn->buffer_end) {
            struct ws_event event;
            conn->buffer_start +=
                ws_client_receive(&conn->client, conn->buffer + conn->buffer_start,
                                  conn->buffer_end - conn->buffer_start, &event);
            if (on_event(conn, &event, &message_done) == WS_CLOSED)
                return WS_CLOSED;
            if (message_done)
                return WS_MESSAGE;
            continue;
        }
        conn->buffer_start = conn->buffer_end = 0;
        /* Inside a data frame nobody wants: drop its payload in the kernel, uncopied. */
        uint64_t discard = conn->collecting ? 0 : conn->frame_rest;
        ssize_t n = read_some(conn, blocking, discard);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !blocking)
            return WS_WOULD_BLOCK;
        if (n <= 0)
            return WS_CLOSED;
        if (!discard) {
            conn->buffer_end = (size_t)n;
            continue;
        }
        /* The parser counts a data frame's payload and never reads it (ws_client_receive), so
         * the discarded bytes are handed to it as that many bytes of the parse buffer. At most
         * the frame's rest was discarded: every piece is payload of this frame. */
        for (size_t left = (size_t)n; left > 0;) {
            size_t piece = left < conn->buffer_capacity ? left : conn->buffer_capacity;
            struct ws_event event;
            left -= ws_client_receive(&conn->client, conn->buffer, piece, &event);
            if (on_event(conn, &event, &message_done) == WS_CLOSED)
                return WS_CLOSED;
            if (message_done)
                return WS_MESSAGE;
        }
    }
}

int json_string_field(const unsigned char *text, size_t len, const char *name, char *out,
                      size_t out_size)
{
    char key[64];
    int key_len = snprintf(key, sizeof key, "\"%s\"", name);
    const unsigned char *p = memmem(text, len, key, (size_t)key_len);
    if (!p)
        return -1;
    const unsigned char *end = text + len;
    p += key_len;
    while (p < end && (*p == ' ' || *p == ':'))
        p++;
    if (p >= end || *p != '"')
        return -1;
    p++;
    size_t n = 0;
    while (p < end && *p != '"' && n + 1 < out_size)
        out[n++] = (char)*p++;
    out[n] = 0;
    return p < end && *p == '"' ? 0 : -1;
}
