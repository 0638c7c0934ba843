/* test_ws_client.c — the sans-I/O WebSocket client fed bytes from memory: the handshake (RFC
 * 6455's own key/accept example), masking, fragmentation with control frames in between, the
 * closing handshake and every kind of bad server frame, each mapped to its close code. */
#include <stdlib.h>
#include <string.h>

#include "unit.h"
#include "ws_client.h"

/* RFC 6455 section 1.3: the key for the nonce "the sample nonce" and the server's answer. */
static const unsigned char SAMPLE_NONCE[16] = "the sample nonce";
#define SAMPLE_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define SAMPLE_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static const char GOOD_RESPONSE[] = "HTTP/1.1 101 Switching Protocols\r\n"
                                    "Upgrade: websocket\r\n"
                                    "Connection: Upgrade\r\n"
                                    "Sec-WebSocket-Accept: " SAMPLE_ACCEPT "\r\n\r\n";

/* A server frame (unmasked unless told), written here by hand rather than by the code under
 * test. Returns its size. */
static size_t server_frame(unsigned char *out, int fin, int rsv, int opcode, int masked,
                           const void *payload, size_t size)
{
    size_t n = 0;
    out[n++] = (unsigned char)((fin ? 0x80 : 0) | (rsv << 4) | opcode);
    unsigned char mask_bit = masked ? 0x80 : 0;
    if (size < 126) {
        out[n++] = (unsigned char)(mask_bit | size);
    } else if (size < 65536) {
        out[n++] = mask_bit | 126;
        out[n++] = (unsigned char)(size >> 8);
        out[n++] = (unsigned char)size;
    } else {
        out[n++] = mask_bit | 127;
        for (int i = 7; i >= 0; i--)
            out[n++] = (unsigned char)((unsigned long long)size >> (8 * i));
    }
    if (masked) {
        memset(out + n, 0, 4); /* a zero key leaves the payload as is */
        n += 4;
    }
    memcpy(out + n, payload, size);
    return n + size;
}

/* A client past its handshake. */
static void open_client(struct ws_client *client)
{
    char request[1024];
    assert_true(ws_client_begin(client, SAMPLE_NONCE, "/", "h", NULL, 0, request, sizeof request));
    struct ws_event event;
    size_t used = ws_client_receive(client, (const unsigned char *)GOOD_RESPONSE,
                                    sizeof GOOD_RESPONSE - 1, &event);
    assert_int_equal(used, sizeof GOOD_RESPONSE - 1);
    assert_int_equal(event.type, WS_EVENT_OPEN);
}

/* Feeds `size` bytes and returns the first event that is not NONE (NONE if there is none),
 * with *rest set to how many bytes are left after it. */
static struct ws_event feed(struct ws_client *client, const unsigned char *data, size_t size,
                            size_t *rest)
{
    struct ws_event event = {0};
    while (size) {
        size_t used = ws_client_receive(client, data, size, &event);
        data += used;
        size -= used;
        if (event.type != WS_EVENT_NONE)
            break;
    }
    if (rest)
        *rest = size;
    return event;
}

static void test_request_and_accept_key(void **state)
{
    (void)state;
    char accept[32];
    assert_int_equal(ws_accept_for_key(SAMPLE_KEY, accept), 0);
    assert_string_equal(accept, SAMPLE_ACCEPT);

    struct ws_client client;
    char request[1024];
    struct header_pair headers[] = {{"Authorization:", "Bearer x"}};
    size_t size = ws_client_begin(&client, SAMPLE_NONCE, "/room?x=1", "relay.test:8443", headers, 1,
                                  request, sizeof request);
    assert_true(size > 0);
    assert_int_equal(strlen(request), size);
    assert_non_null(strstr(request, "GET /room?x=1 HTTP/1.1\r\n"));
    assert_non_null(strstr(request, "\r\nHost: relay.test:8443\r\n"));
    assert_non_null(strstr(request, "\r\nSec-WebSocket-Key: " SAMPLE_KEY "\r\n"));
    assert_non_null(strstr(request, "\r\nSec-WebSocket-Version: 13\r\n"));
    assert_non_null(strstr(request, "\r\nAuthorization: Bearer x\r\n"));
    assert_memory_equal(request + size - 4, "\r\n\r\n", 4);
    /* Too small a buffer is refused, not overrun. */
    assert_int_equal(ws_client_begin(&client, SAMPLE_NONCE, "/room?x=1", "relay.test:8443", headers,
                                     1, request, size - 1),
                     0);
    ws_client_free(&client);
}

static void test_handshake_byte_by_byte_then_a_frame_in_the_same_read(void **state)
{
    (void)state;
    struct ws_client client;
    char request[512];
    ws_client_begin(&client, SAMPLE_NONCE, "/", "h", NULL, 0, request, sizeof request);
    size_t length = sizeof GOOD_RESPONSE - 1;
    struct ws_event event;
    for (size_t i = 0; i + 1 < length; i++) {
        assert_int_equal(
            ws_client_receive(&client, (const unsigned char *)GOOD_RESPONSE + i, 1, &event), 1);
        assert_int_equal(event.type, WS_EVENT_NONE);
    }
    /* The last byte of the response and a whole text frame arrive together. */
    unsigned char input[64];
    input[0] = '\n';
    size_t frame = server_frame(input + 1, 1, 0, WS_OPCODE_TEXT, 0, "hi", 2);
    size_t used = ws_client_receive(&client, input, 1 + frame, &event);
    assert_int_equal(event.type, WS_EVENT_OPEN);
    assert_int_equal(used, 1);
    used = ws_client_receive(&client, input + 1, frame, &event);
    assert_int_equal(used, frame);
    assert_int_equal(event.type, WS_EVENT_DATA);
    assert_ptr_equal(event.data, input + 1 + 2); /* parsed in place: no copy */
    assert_int_equal(event.size, 2);
    assert_true(event.first_of_message && event.last_of_message && !event.binary);
    ws_client_free(&client);
}

static void expect_handshake_failure(const char *response, const char *reason_part)
{
    struct ws_client client;
    char request[512];
    ws_client_begin(&client, SAMPLE_NONCE, "/", "h", NULL, 0, request, sizeof request);
    struct ws_event event = feed(&client, (const unsigned char *)response, strlen(response), NULL);
    assert_int_equal(event.type, WS_EVENT_HANDSHAKE_FAILED);
    assert_non_null(strstr(event.reason, reason_part));
    /* Nothing more is parsed. */
    assert_int_equal(ws_client_receive(&client, (const unsigned char *)"\x81\x00", 2, &event), 2);
    assert_int_equal(event.type, WS_EVENT_NONE);
    ws_client_free(&client);
}

static void test_bad_handshakes_are_refused_with_a_reason(void **state)
{
    (void)state;
    expect_handshake_failure("HTTP/1.1 403 Forbidden\r\n\r\n", "HTTP 403");
    expect_handshake_failure("SSH-2.0-OpenSSH\r\n\r\n", "did not answer with HTTP");
    expect_handshake_failure("HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
                             "wrong Sec-WebSocket-Accept");
    expect_handshake_failure("HTTP/1.1 101 OK\r\nConnection: Upgrade\r\n"
                             "Sec-WebSocket-Accept: " SAMPLE_ACCEPT "\r\n\r\n",
                             "no Upgrade");
    expect_handshake_failure("HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: keep-alive, "
                             "Upgrade\r\nSec-WebSocket-Accept: " SAMPLE_ACCEPT
                             "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
                             "Extensions that was not offered");
}

static void test_oversized_handshake_response_is_refused(void **state)
{
    (void)state;
    struct ws_client client;
    char request[512];
    ws_client_begin(&client, SAMPLE_NONCE, "/", "h", NULL, 0, request, sizeof request);
    size_t size = WS_HANDSHAKE_MAX_SIZE + 10;
    unsigned char *junk = malloc(size);
    assert_non_null(junk);
    memcpy(junk, "HTTP/1.1 101 OK\r\nX: ", 21);
    memset(junk + 21, 'a', size - 21);
    struct ws_event event = feed(&client, junk, size, NULL);
    assert_int_equal(event.type, WS_EVENT_HANDSHAKE_FAILED);
    assert_non_null(strstr(event.reason, "larger than"));
    free(junk);
    ws_client_free(&client);
}

/* Unmasks a frame written by ws_frame_write() by hand; returns the payload size. */
static size_t unmask(const unsigned char *frame, unsigned char *payload, int *opcode, int *fin)
{
    *opcode = frame[0] & 0x0F;
    *fin = frame[0] >> 7;
    assert_true(frame[1] & 0x80); /* client frames are always masked */
    size_t size = frame[1] & 0x7F, at = 2;
    if (size == 126) {
        size = (size_t)frame[2] << 8 | frame[3];
        at = 4;
    } else if (size == 127) {
        size = 0;
        for (int i = 2; i < 10; i++)
            size = size << 8 | frame[i];
        at = 10;
    }
    const unsigned char *key = frame + at;
    for (size_t i = 0; i < size; i++)
        payload[i] = frame[at + 4 + i] ^ key[i % 4];
    return size;
}

static void test_frames_are_masked_with_the_right_length_encoding(void **state)
{
    (void)state;
    const size_t sizes[] = {0, 1, 125, 126, 65535, 65536, 70001};
    const unsigned char key[4] = {0x37, 0xfa, 0x21, 0x3d};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        size_t size = sizes[s];
        unsigned char *payload = malloc(size + 1), *frame = malloc(size + 14);
        unsigned char *back = malloc(size + 1);
        for (size_t i = 0; i < size; i++)
            payload[i] = (unsigned char)(i * 7 + 3);
        /* Split at an offset that is not a multiple of the key's 4 bytes. */
        size_t first = size / 3;
        size_t written = ws_frame_write(frame, size + 14, WS_OPCODE_BINARY, 1, key, payload, first,
                                        payload + first, size - first);
        size_t header = size < 126 ? 6 : size < 65536 ? 8 : 14;
        assert_int_equal(written, header + size);
        int opcode, fin;
        assert_int_equal(unmask(frame, back, &opcode, &fin), size);
        assert_int_equal(opcode, WS_OPCODE_BINARY);
        assert_int_equal(fin, 1);
        assert_memory_equal(back, payload, size);
        /* Masking changed the bytes on the wire (a zero key would not). */
        if (size >= 4)
            assert_memory_not_equal(frame + header, payload, 4);
        assert_int_equal(
            ws_frame_write(frame, header + size - 1, 2, 1, key, payload, size, NULL, 0), 0);
        free(payload);
        free(frame);
        free(back);
    }
}

static void test_fragmented_message_with_ping_in_the_middle(void **state)
{
    (void)state;
    struct ws_client client;
    open_client(&client);
    unsigned char input[128];
    size_t n = server_frame(input, 0, 0, WS_OPCODE_TEXT, 0, "Hel", 3);
    n += server_frame(input + n, 1, 0, WS_OPCODE_PING, 0, "x", 1);
    n += server_frame(input + n, 0, 0, WS_OPCODE_CONTINUATION, 0, "l", 1);
    n += server_frame(input + n, 1, 0, WS_OPCODE_PONG, 0, "", 0);
    n += server_frame(input + n, 1, 0, WS_OPCODE_CONTINUATION, 0, "o", 1);

    size_t rest;
    struct ws_event e = feed(&client, input, n, &rest);
    assert_int_equal(e.type, WS_EVENT_DATA);
    assert_true(e.first_of_message && !e.last_of_message);
    assert_memory_equal(e.data, "Hel", 3);
    e = feed(&client, input + n - rest, rest, &rest);
    assert_int_equal(e.type, WS_EVENT_PING);
    assert_int_equal(e.size, 1);
    assert_memory_equal(e.data, "x", 1);
    e = feed(&client, input + n - rest, rest, &rest);
    assert_int_equal(e.type, WS_EVENT_DATA);
    assert_true(!e.first_of_message && !e.last_of_message && !e.binary);
    e = feed(&client, input + n - rest, rest, &rest);
    assert_int_equal(e.type, WS_EVENT_PONG);
    e = feed(&client, input + n - rest, rest, &rest);
    assert_int_equal(e.type, WS_EVENT_DATA);
    assert_true(!e.first_of_message && e.last_of_message);
    assert_memory_equal(e.data, "o", 1);
    assert_int_equal(rest, 0);
    ws_client_free(&client);
}

static void test_large_frame_fed_in_odd_pieces_is_reported_in_order(void **state)
{
    (void)state;
    struct ws_client client;
    open_client(&client);
    size_t size = 70000;
    unsigned char *payload = malloc(size), *input = malloc(size + 14), *back = malloc(size);
    for (size_t i = 0; i < size; i++)
        payload[i] = (unsigned char)(i % 251);
    size_t n = server_frame(input, 1, 0, WS_OPCODE_BINARY, 0, payload, size);
    size_t at = 0, got = 0, pieces = 0;
    while (at < n) {
        size_t piece = n - at < 997 ? n - at : 997; /* straddles the 10-byte header too */
        if (at == 0)
            piece = 3;
        size_t fed = 0;
        while (fed < piece) {
            struct ws_event e;
            size_t used = ws_client_receive(&client, input + at + fed, piece - fed, &e);
            fed += used;
            if (e.type == WS_EVENT_DATA) {
                assert_int_equal(e.first_of_message, got == 0);
                assert_int_equal(e.rest_of_frame, size - got - e.size);
                memcpy(back + got, e.data, e.size);
                got += e.size;
                pieces++;
                assert_int_equal(e.last_of_message, got == size);
            }
        }
        at += piece;
    }
    assert_int_equal(got, size);
    assert_memory_equal(back, payload, size);
    assert_true(pieces > 1);
    free(payload);
    free(input);
    free(back);
    ws_client_free(&client);
}

static void test_close_frame_ends_the_stream(void **state)
{
    (void)state;
    struct ws_client client;
    open_client(&client);
    unsigned char input[64];
    size_t n = server_frame(input, 1, 0, WS_OPCODE_CLOSE, 0, "\x0f\xa1going", 7);
    n += server_frame(input + n, 1, 0, WS_OPCODE_TEXT, 0, "late", 4);
    size_t rest;
    struct ws_event e = feed(&client, input, n, &rest);
    assert_int_equal(e.type, WS_EVENT_CLOSE);
    assert_int_equal(e.close_code, 4001);
    assert_int_equal(e.size, 7);
    assert_memory_equal(e.data + 2, "going", 5);
    /* Nothing after a Close is reported. */
    e = feed(&client, input + n - rest, rest, &rest);
    assert_int_equal(e.type, WS_EVENT_NONE);

    open_client(&client);
    n = server_frame(input, 1, 0, WS_OPCODE_CLOSE, 0, "", 0);
    e = feed(&client, input, n, NULL);
    assert_int_equal(e.type, WS_EVENT_CLOSE);
    assert_int_equal(e.close_code, WS_CLOSE_NO_STATUS);

    unsigned char payload[WS_CONTROL_PAYLOAD_MAX];
    char long_reason[200];
    memset(long_reason, 'r', sizeof long_reason - 1);
    long_reason[sizeof long_reason - 1] = '\0';
    assert_int_equal(ws_close_payload(1000, long_reason, payload), WS_CONTROL_PAYLOAD_MAX);
    assert_int_equal(payload[0] << 8 | payload[1], 1000);
    assert_int_equal(ws_close_payload(WS_CLOSE_NO_STATUS, "", payload), 0);
    ws_client_free(&client);
}

/* One bad server frame: a protocol error with `code`, and nothing parsed after it. */
static void expect_protocol_error(const unsigned char *frame, size_t size, int code,
                                  const char *reason_part)
{
    struct ws_client client;
    open_client(&client);
    size_t rest = size;
    struct ws_event e;
    do /* past the pieces of messages that were still fine */
        e = feed(&client, frame + size - rest, rest, &rest);
    while (e.type == WS_EVENT_DATA);
    assert_int_equal(e.type, WS_EVENT_PROTOCOL_ERROR);
    assert_int_equal(e.close_code, code);
    assert_non_null(strstr(e.reason, reason_part));
    unsigned char next[8];
    size_t n = server_frame(next, 1, 0, WS_OPCODE_TEXT, 0, "ok", 2);
    e = feed(&client, next, n, NULL);
    assert_int_equal(e.type, WS_EVENT_NONE);
    ws_client_free(&client);
}

static void test_bad_server_frames_get_their_close_codes(void **state)
{
    (void)state;
    unsigned char f[300], big[200];
    memset(big, 'p', sizeof big);
    expect_protocol_error(f, server_frame(f, 1, 0, WS_OPCODE_TEXT, 1, "hi", 2), 1002, "masked");
    expect_protocol_error(f, server_frame(f, 1, 4, WS_OPCODE_BINARY, 0, "hi", 2), 1002,
                          "reserved bits");
    expect_protocol_error(f, server_frame(f, 1, 0, WS_OPCODE_PING, 0, big, 126), 1002,
                          "longer than 125");
    expect_protocol_error(f, server_frame(f, 0, 0, WS_OPCODE_PING, 0, "x", 1), 1002,
                          "fragmented control");
    expect_protocol_error(f, server_frame(f, 1, 0, WS_OPCODE_CONTINUATION, 0, "x", 1), 1002,
                          "continuation frame outside");
    expect_protocol_error(f, server_frame(f, 1, 0, 3, 0, "x", 1), 1002, "reserved opcode");
    expect_protocol_error(f, server_frame(f, 1, 0, 0xB, 0, "x", 1), 1002, "reserved opcode");
    expect_protocol_error(f, server_frame(f, 1, 0, WS_OPCODE_CLOSE, 0, "x", 1), 1002,
                          "1-byte payload");
    expect_protocol_error(f, server_frame(f, 1, 0, WS_OPCODE_CLOSE, 0, "\x03\xed", 2), 1002,
                          "invalid code"); /* 1005 may never be sent */
    expect_protocol_error(f, server_frame(f, 1, 0, WS_OPCODE_CLOSE, 0, "\x03\xe8\xc0\xaf", 4), 1007,
                          "not UTF-8");
    size_t n = server_frame(f, 0, 0, WS_OPCODE_TEXT, 0, "a", 1);
    n += server_frame(f + n, 1, 0, WS_OPCODE_BINARY, 0, "b", 1);
    expect_protocol_error(f, n, 1002, "new message inside");
    /* A 64-bit length with its top bit set. */
    unsigned char huge[10] = {0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1};
    expect_protocol_error(huge, sizeof huge, 1002, "most significant bit");
}

int run_ws_client_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_and_accept_key),
        cmocka_unit_test(test_handshake_byte_by_byte_then_a_frame_in_the_same_read),
        cmocka_unit_test(test_bad_handshakes_are_refused_with_a_reason),
        cmocka_unit_test(test_oversized_handshake_response_is_refused),
        cmocka_unit_test(test_frames_are_masked_with_the_right_length_encoding),
        cmocka_unit_test(test_fragmented_message_with_ping_in_the_middle),
        cmocka_unit_test(test_large_frame_fed_in_odd_pieces_is_reported_in_order),
        cmocka_unit_test(test_close_frame_ends_the_stream),
        cmocka_unit_test(test_bad_server_frames_get_their_close_codes),
    };
    return UNIT_RUN_GROUP("ws_client", tests, NULL, NULL, test_count);
}
