/* ws_client.c — RFC 6455 for a client, as bytes in and events/bytes out: builds and checks the
 * opening handshake, parses server frames in place (a data event points into the caller's
 * buffer, so no bounce copy) and writes masked frames eight bytes at a time. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "utf8.h"
#include "ws_client.h"

#define WEBSOCKET_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* ---- the opening handshake ---------------------------------------------------------------- */

static int base64(const unsigned char *data, size_t size, char *out, size_t capacity)
{
    if (capacity < 4 * ((size + 2) / 3) + 1)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, data, (int)size);
    return 0;
}

int ws_accept_for_key(const char *key, char out[32])
{
    char keyed[96];
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_size = 0;
    int n = snprintf(keyed, sizeof keyed, "%s%s", key, WEBSOCKET_GUID);
    if (n < 0 || (size_t)n >= sizeof keyed ||
        !EVP_Digest(keyed, (size_t)n, digest, &digest_size, EVP_sha1(), NULL))
        return -1;
    return base64(digest, digest_size, out, 32);
}

size_t ws_client_begin(struct ws_client *client, const unsigned char nonce[16], const char *path,
                       const char *host, const struct header_pair *headers, size_t header_count,
                       char *out, size_t capacity)
{
    memset(client, 0, sizeof *client);
    char key[32];
    if (base64(nonce, 16, key, sizeof key) < 0 ||
        ws_accept_for_key(key, client->expected_accept) < 0)
        return 0;
    int n = snprintf(out, capacity,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
                     path, host, key);
    if (n < 0 || (size_t)n >= capacity)
        return 0;
    size_t used = (size_t)n;
    for (size_t i = 0; i < header_count; i++) { /* names end with ':' already */
        n = snprintf(out + used, capacity - used, "%s %s\r\n", headers[i].name, headers[i].value);
        if (n < 0 || (size_t)n >= capacity - used)
            return 0;
        used += (size_t)n;
    }
    if (capacity - used < 3)
        return 0;
    memcpy(out + used, "\r\n", 3);
    return used + 2;
}

void ws_client_free(struct ws_client *client)
{
    free(client->response);
    client->response = NULL;
}

/* Whether the comma-separated header value `list` has `token` (case-insensitive). */
static int has_token(const char *list, size_t list_size, const char *token)
{
    size_t token_size = strlen(token), i = 0;
    while (i < list_size) {
        while (i < list_size && (list[i] == ' ' || list[i] == '\t' || list[i] == ','))
            i++;
        size_t start = i;
        while (i < list_size && list[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (list[end - 1] == ' ' || list[end - 1] == '\t'))
            end--;
        if (end - start == token_size && strncasecmp(list + start, token, token_size) == 0)
            return 1;
    }
    return 0;
}

/* Checks the server's response (up to its blank line) per RFC 6455 4.1; 0, or -1 with
 * client->reason saying why. */
static int check_response(struct ws_client *client, const char *text, size_t size)
{
    const char *line_end = memmem(text, size, "\r\n", 2);
    int status = 0;
    if (!line_end || sscanf(text, "HTTP/1.%*[01] %3d", &status) != 1) {
        snprintf(client->reason, sizeof client->reason, "the server did not answer with HTTP");
        return -1;
    }
    if (status != 101) {
        snprintf(client->reason, sizeof client->reason,
                 "the server answered HTTP %d instead of switching to WebSocket (%.*s)", status,
                 (int)(line_end - text < 100 ? line_end - text : 100), text);
        return -1;
    }
    int upgrade = 0, connection = 0, accept = 0;
    for (const char *line = line_end + 2; line < text + size;) {
        const char *end = memmem(line, (size_t)(text + size - line), "\r\n", 2);
        if (!end || end == line)
            break;
        const char *colon = memchr(line, ':', (size_t)(end - line));
        if (colon) {
            size_t name_size = (size_t)(colon - line);
            const char *value = colon + 1;
            while (value < end && (*value == ' ' || *value == '\t'))
                value++;
            size_t value_size = (size_t)(end - value);
            while (value_size && (value[value_size - 1] == ' ' || value[value_size - 1] == '\t'))
                value_size--;
#define IS(name) (name_size == sizeof name - 1 && strncasecmp(line, name, name_size) == 0)
            if (IS("Upgrade"))
                upgrade = value_size == 9 && strncasecmp(value, "websocket", 9) == 0;
            else if (IS("Connection"))
                connection = has_token(value, value_size, "upgrade");
            else if (IS("Sec-WebSocket-Accept"))
                accept = value_size == strlen(client->expected_accept) &&
                         memcmp(value, client->expected_accept, value_size) == 0;
            else if (IS("Sec-WebSocket-Extensions") || IS("Sec-WebSocket-Protocol")) {
                snprintf(client->reason, sizeof client->reason,
                         "the server chose a WebSocket %.*s that was not offered",
                         (int)name_size - 14, line + 14);
                return -1;
            }
#undef IS
        }
        line = end + 2;
    }
    if (!upgrade || !connection || !accept) {
        snprintf(client->reason, sizeof client->reason,
                 "the server's WebSocket handshake is invalid (%s)",
                 !upgrade      ? "no Upgrade: websocket"
                 : !connection ? "no Connection: Upgrade"
                               : "wrong Sec-WebSocket-Accept");
        return -1;
    }
    return 0;
}

static size_t handshake_failed(struct ws_client *client, size_t consumed, struct ws_event *event)
{
    client->phase = WS_PHASE_DONE;
    ws_client_free(client);
    event->type = WS_EVENT_HANDSHAKE_FAILED;
    event->reason = client->reason;
    return consumed;
}

/* Takes handshake response bytes until its blank line. */
static size_t take_response(struct ws_client *client, const unsigned char *data, size_t size,
                            struct ws_event *event)
{
    if (!client->response && !(client->response = malloc(WS_HANDSHAKE_MAX_SIZE))) {
        snprintf(client->reason, sizeof client->reason, "out of memory");
        return handshake_failed(client, size, event);
    }
    size_t room = WS_HANDSHAKE_MAX_SIZE - client->response_size;
    size_t take = size < room ? size : room;
    memcpy(client->response + client->response_size, data, take);
    size_t before = client->response_size;
    client->response_size += take;
    /* Search from 3 bytes before the new data: the blank line may straddle two reads. */
    size_t from = before > 3 ? before - 3 : 0;
    const char *blank =
        memmem(client->response + from, client->response_size - from, "\r\n\r\n", 4);
    if (!blank) {
        if (client->response_size == WS_HANDSHAKE_MAX_SIZE) {
            snprintf(client->reason, sizeof client->reason,
                     "the server's handshake response is larger than %u bytes",
                     WS_HANDSHAKE_MAX_SIZE);
            return handshake_failed(client, size, event);
        }
        return take;
    }
    size_t header_size = (size_t)(blank + 4 - client->response);
    if (check_response(client, client->response, header_size) < 0)
        return handshake_failed(client, size, event);
    ws_client_free(client);
    client->phase = WS_PHASE_OPEN;
    event->type = WS_EVENT_OPEN;
    return header_size - before; /* what follows the blank line is frames */
}

/* ---- frames from the server --------------------------------------------------------------- */

static size_t protocol_error(struct ws_client *client, size_t consumed, int code,
                             const char *reason, struct ws_event *event)
{
    client->phase = WS_PHASE_DONE; /* the stream can no longer be parsed */
    snprintf(client->reason, sizeof client->reason, "%s", reason);
    event->type = WS_EVENT_PROTOCOL_ERROR;
    event->close_code = code;
    event->reason = client->reason;
    return consumed;
}

static int close_code_allowed(int code)
{
    /* RFC 6455 7.4: 1004-1006 and 1015 are never sent; 1012-1014 are registered since. */
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* The control frame in client->control is complete. */
static size_t on_control_frame(struct ws_client *client, size_t consumed, struct ws_event *event)
{
    client->in_frame = 0;
    event->data = client->control;
    event->size = client->control_size;
    switch (client->opcode) {
    case WS_OPCODE_PING:
        event->type = WS_EVENT_PING;
        return consumed;
    case WS_OPCODE_PONG:
        event->type = WS_EVENT_PONG;
        return consumed;
    default: /* Close */
        if (client->control_size == 1)
            return protocol_error(client, consumed, WS_CLOSE_PROTOCOL_ERROR,
                                  "a Close frame with a 1-byte payload", event);
        event->close_code = WS_CLOSE_NO_STATUS;
        if (client->control_size >= 2) {
            event->close_code = client->control[0] << 8 | client->control[1];
            if (!close_code_allowed(event->close_code))
                return protocol_error(client, consumed, WS_CLOSE_PROTOCOL_ERROR,
                                      "a Close frame with an invalid code", event);
            if (!utf8_is_valid(client->control + 2, client->control_size - 2))
                return protocol_error(client, consumed, WS_CLOSE_INVALID_PAYLOAD,
                                      "a Close reason that is not UTF-8", event);
        }
        client->phase = WS_PHASE_DONE; /* nothing may follow a Close */
        event->type = WS_EVENT_CLOSE;
        return consumed;
    }
}

/* The frame header in client->header is complete: checks it. Returns 0, or -1 after reporting a
 * protocol error. */
static int start_frame(struct ws_client *client, struct ws_event *event)
{
    const unsigned char *h = client->header;
    int opcode = h[0] & 0x0F;
    client->fin = (h[0] & 0x80) != 0;
    uint64_t length = h[1] & 0x7F;
    if (length == 126)
        length = (uint64_t)h[2] << 8 | h[3];
    else if (length == 127) {
        length = 0;
        for (int i = 2; i < 10; i++)
            length = length << 8 | h[i];
    }
    const char *error = NULL;
    if (h[1] & 0x80)
        error = "the server masked a frame";
    else if (h[0] & 0x70)
        error = "reserved bits set without an extension";
    else if (length >> 63)
        error = "a frame length with its most significant bit set";
    else if (opcode >= WS_OPCODE_CLOSE && opcode <= WS_OPCODE_PONG) {
        if (!client->fin)
            error = "a fragmented control frame";
        else if (length > WS_CONTROL_PAYLOAD_MAX)
            error = "a control frame longer than 125 bytes";
    } else if (opcode == WS_OPCODE_CONTINUATION) {
        if (!client->in_message)
            error = "a continuation frame outside a message";
    } else if (opcode == WS_OPCODE_TEXT || opcode == WS_OPCODE_BINARY) {
        if (client->in_message)
            error = "a new message inside a fragmented one";
    } else
        error = "a reserved opcode";
    if (error) {
        protocol_error(client, 0, WS_CLOSE_PROTOCOL_ERROR, error, event);
        return -1;
    }
    client->opcode = opcode;
    client->payload_length = length;
    client->payload_seen = 0;
    client->control_size = 0;
    client->in_frame = 1;
    client->header_size = 0;
    if (opcode == WS_OPCODE_TEXT || opcode == WS_OPCODE_BINARY)
        client->message_binary = opcode == WS_OPCODE_BINARY;
    return 0;
}

/* Bytes of the header that the first two announce. */
static size_t header_needed(const unsigned char *h)
{
    size_t length = h[1] & 0x7F;
    return 2 + (length == 126 ? 2 : length == 127 ? 8 : 0) + (h[1] & 0x80 ? 4 : 0);
}

size_t ws_client_receive(struct ws_client *client, const unsigned char *data, size_t size,
                         struct ws_event *event)
{
    memset(event, 0, sizeof *event);
    if (client->phase == WS_PHASE_DONE)
        return size; /* after a Close or an error, input is dropped */
    if (client->phase == WS_PHASE_HANDSHAKE)
        return take_response(client, data, size, event);

    size_t consumed = 0;
    if (!client->in_frame) {
        /* Collect the header, which may straddle reads: at most 14 bytes are copied. */
        while (consumed < size) {
            size_t needed = client->header_size < 2 ? 2 : header_needed(client->header);
            if (client->header_size == needed)
                break;
            client->header[client->header_size++] = data[consumed++];
        }
        if (client->header_size < 2 || client->header_size < header_needed(client->header))
            return consumed;
        if (start_frame(client, event) < 0) {
            event->type = WS_EVENT_PROTOCOL_ERROR;
            return size;
        }
    }

    uint64_t left = client->payload_length - client->payload_seen;
    size_t take = size - consumed < left ? size - consumed : (size_t)left;
    client->payload_seen += take;
    int frame_end = client->payload_seen == client->payload_length;
    if (take == 0 && !frame_end)
        return consumed; /* only the header so far */
    if (client->opcode >= WS_OPCODE_CLOSE) {
        memcpy(client->control + client->control_size, data + consumed, take);
        client->control_size += take;
        consumed += take;
        return frame_end ? on_control_frame(client, consumed, event) : consumed;
    }
    event->type = WS_EVENT_DATA;
    event->data = data + consumed;
    event->size = take;
    event->first_of_message = take == client->payload_seen && client->opcode != 0;
    event->binary = client->message_binary;
    event->rest_of_frame = client->payload_length - client->payload_seen;
    if (frame_end) {
        client->in_frame = 0;
        client->in_message = !client->fin;
    } else {
        client->in_message = 1;
    }
    event->last_of_message = frame_end && client->fin;
    return consumed + take;
}

/* ---- frames to the server ----------------------------------------------------------------- */

/* XORs `size` bytes of `in` into `out` with the frame's mask key, `offset` bytes into the
 * payload, eight bytes at a time (byte-by-byte masking capped the sender at ~1.7 GB/s). */
static void mask_copy(unsigned char *out, const unsigned char *in, size_t size,
                      const unsigned char key[4], size_t offset)
{
    unsigned char rotated[8];
    for (int i = 0; i < 8; i++)
        rotated[i] = key[(offset + (size_t)i) & 3];
    uint64_t word_key;
    memcpy(&word_key, rotated, 8);
    size_t i = 0;
    for (; i + 8 <= size; i += 8) {
        uint64_t word;
        memcpy(&word, in + i, 8);
        word ^= word_key;
        memcpy(out + i, &word, 8);
    }
    for (; i < size; i++)
        out[i] = in[i] ^ rotated[i & 7];
}

size_t ws_frame_header_write(unsigned char out[WS_FRAME_HEADER_MAX], int opcode, int fin,
                             const unsigned char mask_key[4], uint64_t payload_size)
{
    size_t used = 0;
    out[used++] = (unsigned char)((fin ? 0x80 : 0) | opcode);
    if (payload_size < 126) {
        out[used++] = (unsigned char)(0x80 | payload_size);
    } else if (payload_size <= 0xFFFF) {
        out[used++] = 0x80 | 126;
        out[used++] = (unsigned char)(payload_size >> 8);
        out[used++] = (unsigned char)payload_size;
    } else {
        out[used++] = 0x80 | 127;
        for (int shift = 56; shift >= 0; shift -= 8)
            out[used++] = (unsigned char)(payload_size >> shift);
    }
    memcpy(out + used, mask_key, 4);
    return used + 4;
}

size_t ws_frame_write(unsigned char *out, size_t capacity, int opcode, int fin,
                      const unsigned char mask_key[4], const unsigned char *first,
                      size_t first_size, const unsigned char *rest, size_t rest_size)
{
    size_t size = first_size + rest_size;
    if (capacity < WS_FRAME_HEADER_MAX || capacity - WS_FRAME_HEADER_MAX < size)
        return 0;
    size_t used = ws_frame_header_write(out, opcode, fin, mask_key, size);
    if (first_size)
        mask_copy(out + used, first, first_size, mask_key, 0);
    if (rest_size)
        mask_copy(out + used + first_size, rest, rest_size, mask_key, first_size);
    return used + size;
}

size_t ws_close_payload(int code, const char *reason, unsigned char out[WS_CONTROL_PAYLOAD_MAX])
{
    if (code == WS_CLOSE_NO_STATUS)
        return 0; /* 1005 means "no code": the frame carries none */
    out[0] = (unsigned char)(code >> 8);
    out[1] = (unsigned char)code;
    size_t reason_size = strlen(reason);
    if (reason_size > WS_CONTROL_PAYLOAD_MAX - 2)
        reason_size = WS_CONTROL_PAYLOAD_MAX - 2;
    memcpy(out + 2, reason, reason_size);
    return 2 + reason_size;
}
