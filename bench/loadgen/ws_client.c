/* A minimal RFC 6455 client for the relay load generator (see ws_client.h for why it exists
 * next to libwebsockets: its client parser copies every payload byte through a per-byte state
 * machine, which would make the benchmark measure the client instead of the relay). */
#include "ws_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_HANDSHAKE_ANSWER 4096

int ws_init(struct ws_conn *conn, size_t buffer_capacity)
{
    memset(conn, 0, sizeof *conn);
    conn->fd = -1;
    conn->buffer_capacity =
        buffer_capacity < MAX_HANDSHAKE_ANSWER ? MAX_HANDSHAKE_ANSWER : buffer_capacity;
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

static int write_all(int fd, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
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
    char request[512];
    int len = snprintf(request, sizeof request,
                       "GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n",
                       host, port);
    return write_all(conn->fd, request, (size_t)len);
}

int ws_finish_connect(struct ws_conn *conn)
{
    for (;;) {
        unsigned char *end = memmem(conn->buffer, conn->buffer_end, "\r\n\r\n", 4);
        if (end) {
            if (conn->buffer_end < 12 || memcmp(conn->buffer + 9, "101", 3) != 0) {
                fprintf(stderr, "loadgen: upgrade refused: %.*s\n", (int)(end - conn->buffer),
                        conn->buffer);
                return -1;
            }
            conn->buffer_start = (size_t)(end + 4 - conn->buffer);
            return 0;
        }
        if (conn->buffer_end == conn->buffer_capacity) {
            fprintf(stderr, "loadgen: handshake answer too long\n");
            return -1;
        }
        ssize_t n = recv(conn->fd, conn->buffer + conn->buffer_end,
                         conn->buffer_capacity - conn->buffer_end, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "loadgen: handshake: %s\n",
                    n == 0 ? "connection closed" : strerror(errno));
            return -1;
        }
        conn->buffer_end += (size_t)n;
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

static size_t frame_header(unsigned char *out, int opcode, uint64_t len, const uint8_t key[4])
{
    size_t n = 0;
    out[n++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        out[n++] = (unsigned char)(0x80 | len);
    } else if (len <= 0xffff) {
        out[n++] = 0x80 | 126;
        out[n++] = (unsigned char)(len >> 8);
        out[n++] = (unsigned char)len;
    } else {
        out[n++] = 0x80 | 127;
        for (int shift = 56; shift >= 0; shift -= 8)
            out[n++] = (unsigned char)(len >> shift);
    }
    memcpy(out + n, key, 4);
    return n + 4;
}

static int send_frame(struct ws_conn *conn, int opcode, const void *payload, size_t len,
                      bool already_masked)
{
    unsigned char header[14];
    size_t header_len = frame_header(header, opcode, len, conn->mask_key);
    unsigned char small[4096];
    unsigned char *masked = NULL;
    struct iovec parts[2] = {{header, header_len}, {(void *)payload, len}};
    if (!already_masked) {
        masked = len <= sizeof small ? small : malloc(len);
        if (!masked)
            return -1;
        const unsigned char *in = payload;
        for (size_t i = 0; i < len; i++)
            masked[i] = in[i] ^ conn->mask_key[i & 3];
        parts[1].iov_base = masked;
    }
    if (conn->write_lock)
        pthread_mutex_lock(conn->write_lock);
    int rc = 0;
    struct iovec *iov = parts;
    int iov_count = 2;
    while (iov_count > 0) {
        ssize_t n = writev(conn->fd, iov, iov_count);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = -1;
            break;
        }
        while (iov_count > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            iov_count--;
        }
        if (iov_count > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    if (conn->write_lock)
        pthread_mutex_unlock(conn->write_lock);
    if (masked && masked != small)
        free(masked);
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

/* Parse one frame header from the buffer; false when more bytes are needed. */
static bool take_frame_header(struct ws_conn *conn)
{
    const unsigned char *p = conn->buffer + conn->buffer_start;
    size_t available = conn->buffer_end - conn->buffer_start;
    if (available < 2)
        return false;
    size_t header_len = 2;
    uint64_t len = p[1] & 0x7f;
    bool masked = p[1] & 0x80;
    if (len == 126)
        header_len += 2;
    else if (len == 127)
        header_len += 8;
    if (masked)
        header_len += 4; /* servers must not mask; tolerated and skipped (not unmasked) */
    if (available < header_len)
        return false;
    if (len == 126) {
        len = (uint64_t)p[2] << 8 | p[3];
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
    }
    conn->frame_opcode = p[0] & 0x0f;
    conn->frame_fin = p[0] & 0x80;
    conn->frame_left = len;
    conn->in_frame = true;
    conn->buffer_start += header_len;
    if (conn->frame_opcode & 0x08) {
        conn->control_len = 0;
    } else {
        if (conn->frame_opcode != WS_CONTINUATION) {
            conn->message_opcode = conn->frame_opcode;
            conn->message_len = 0;
        }
        conn->collecting = (conn->message_opcode == WS_TEXT && conn->collect_text) ||
                           (conn->message_opcode == WS_BINARY && conn->collect_binary);
    }
    return true;
}

static int keep_payload(struct ws_conn *conn, const unsigned char *data, size_t len)
{
    if (conn->frame_opcode & 0x08) {
        size_t room = sizeof conn->control - conn->control_len;
        size_t take = len < room ? len : room;
        memcpy(conn->control + conn->control_len, data, take);
        conn->control_len += take;
        return 0;
    }
    if (conn->message_opcode == WS_BINARY)
        conn->binary_bytes += len;
    if (!conn->collecting)
        return 0;
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

/* A frame's payload is all read: answer control frames; say whether a message completed. */
static enum ws_result finish_frame(struct ws_conn *conn, bool *message_done)
{
    conn->in_frame = false;
    *message_done = false;
    switch (conn->frame_opcode) {
    case WS_PING:
        return ws_send(conn, WS_PONG, conn->control, conn->control_len) ? WS_CLOSED : WS_MESSAGE;
    case WS_PONG:
        return WS_MESSAGE;
    case WS_CLOSE:
        return WS_CLOSED;
    default:
        if (conn->frame_fin) {
            *message_done = true;
            conn->last_opcode = conn->message_opcode;
            if (conn->message_opcode == WS_BINARY)
                conn->binary_messages++;
            if (!conn->collecting)
                conn->message_len = 0;
        }
        return WS_MESSAGE;
    }
}

enum ws_result ws_next_message(struct ws_conn *conn, bool blocking)
{
    int flags = blocking ? 0 : MSG_DONTWAIT;
    for (;;) {
        if (!conn->in_frame && !take_frame_header(conn)) {
            /* Keep unparsed bytes at the front and read more after them. */
            size_t left = conn->buffer_end - conn->buffer_start;
            memmove(conn->buffer, conn->buffer + conn->buffer_start, left);
            conn->buffer_start = 0;
            conn->buffer_end = left;
            ssize_t n = recv(conn->fd, conn->buffer + left, conn->buffer_capacity - left, flags);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !blocking)
                return WS_WOULD_BLOCK;
            if (n <= 0)
                return WS_CLOSED;
            conn->buffer_end += (size_t)n;
            continue;
        }
        if (conn->frame_left > 0) {
            size_t buffered = conn->buffer_end - conn->buffer_start;
            bool keep = conn->collecting || (conn->frame_opcode & 0x08);
            if (buffered > 0) {
                size_t take = buffered < conn->frame_left ? buffered : (size_t)conn->frame_left;
                if (keep_payload(conn, conn->buffer + conn->buffer_start, take))
                    return WS_CLOSED;
                conn->buffer_start += take;
                conn->frame_left -= take;
            } else if (keep) {
                conn->buffer_start = conn->buffer_end = 0;
                ssize_t n = recv(conn->fd, conn->buffer, conn->buffer_capacity, flags);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !blocking)
                    return WS_WOULD_BLOCK;
                if (n <= 0)
                    return WS_CLOSED;
                conn->buffer_end = (size_t)n;
                continue;
            } else {
                /* Discard inside the kernel: TCP with MSG_TRUNC drops the bytes uncopied. */
                size_t want = conn->frame_left < (1u << 30) ? (size_t)conn->frame_left : 1u << 30;
                ssize_t n = recv(conn->fd, NULL, want, flags | MSG_TRUNC);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !blocking)
                    return WS_WOULD_BLOCK;
                if (n <= 0)
                    return WS_CLOSED;
                if (conn->message_opcode == WS_BINARY)
                    conn->binary_bytes += (uint64_t)n;
                conn->frame_left -= (uint64_t)n;
            }
            if (conn->frame_left > 0)
                continue;
        }
        bool message_done;
        if (finish_frame(conn, &message_done) == WS_CLOSED)
            return WS_CLOSED;
        if (message_done)
            return WS_MESSAGE;
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
