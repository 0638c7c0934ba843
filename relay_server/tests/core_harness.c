/* core_harness.c — the fake transport and client side used by the core's unit tests.
 * Every frame is written through relay_next_write/relay_wrote as libwebsockets would, and the
 * WebSocket framing rules a client relies on are asserted on the way out. */
#include "core_harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "unit.h"

static struct fake_transport *transport_of(void *transport)
{
    return transport;
}

static void fake_want_write(void *context, void *transport)
{
    transport_of(transport)->want_write_calls++;
}

static void fake_pause_reading(void *context, void *transport, bool paused)
{
    struct fake_transport *t = transport_of(transport);
    if (paused)
        t->pause_calls++;
    else
        t->resume_calls++;
    t->paused = paused;
}

static void fake_close(void *context, void *transport, int code, const char *reason)
{
    struct fake_transport *t = transport_of(transport);
    t->close_calls++;
    t->close_code = code;
}

static void fake_ping(void *context, void *transport)
{
    transport_of(transport)->ping_calls++;
}

static const struct relay_io fake_io = {
    .context = NULL,
    .want_write = fake_want_write,
    .pause_reading = fake_pause_reading,
    .close = fake_close,
    .ping = fake_ping,
};

void harness_config(struct relay_config *config)
{
    config_defaults(config);
    config->ping_interval_seconds = 0;
    config->idle_timeout_seconds = 0;
    config->slow_receiver_timeout_seconds = 0;
}

static void create_relay(struct harness *h)
{
    h->relay = relay_create(&h->config, &fake_io, h->secret, sizeof h->secret, h->now);
    assert_non_null(h->relay);
}

void harness_start(struct harness *h, const struct relay_config *config)
{
    memset(h, 0, sizeof *h);
    /* Only errors: the core logs every event, which would bury cmocka's report. */
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_ERROR, NULL);
    if (config)
        h->config = *config;
    else
        harness_config(&h->config);
    for (size_t i = 0; i < sizeof h->secret; i++)
        h->secret[i] = (unsigned char)(0xA0 + i);
    h->now = HARNESS_START_TIME;
    h->keep = json_array();
    create_relay(h);
}

static void free_receivers(struct harness *h)
{
    for (int i = 0; i < HARNESS_CONNECTIONS; i++) {
        harness_forget(h, i);
        free(h->receivers[i].inbox);
        free(h->receivers[i].partial);
        memset(&h->receivers[i], 0, sizeof h->receivers[i]);
    }
}

void harness_stop(struct harness *h)
{
    relay_destroy(h->relay);
    h->relay = NULL;
    free_receivers(h);
    json_decref(h->keep);
    h->keep = NULL;
}

void harness_restart(struct harness *h)
{
    relay_destroy(h->relay);
    free_receivers(h);
    memset(h->connections, 0, sizeof h->connections);
    memset(h->transports, 0, sizeof h->transports);
    create_relay(h);
}

struct connection *harness_open(struct harness *h, int index, const char *address, bool echo)
{
    assert_true(index >= 0 && index < HARNESS_CONNECTIONS);
    assert_null(h->connections[index]);
    memset(&h->transports[index], 0, sizeof h->transports[index]);
    h->transports[index].index = index;
    struct receiver_state *r = &h->receivers[index];
    harness_forget(h, index);
    r->partial_length = 0;
    r->in_message = false;
    r->queue_was_empty = true;
    r->want_write_seen = 0;
    h->connections[index] = relay_connection_open(h->relay, &h->transports[index],
                                                  address ? address : "127.0.0.1", echo, h->now);
    assert_non_null(h->connections[index]);
    return h->connections[index];
}

void harness_closed(struct harness *h, int index)
{
    assert_non_null(h->connections[index]);
    relay_connection_closed(h->relay, h->connections[index], h->now);
    h->connections[index] = NULL;
}

void harness_tick(struct harness *h, double seconds)
{
    h->now += seconds;
    relay_tick(h->relay, h->now);
}

void harness_receive(struct harness *h, int index, const void *bytes, size_t length, bool is_binary,
                     bool first, bool final)
{
    assert_non_null(h->connections[index]);
    relay_receive(h->relay, h->connections[index], bytes, length, is_binary, first, final, 0,
                  h->now);
}

void harness_text(struct harness *h, int index, const char *text)
{
    harness_receive(h, index, text, strlen(text), false, true, true);
}

void harness_binary(struct harness *h, int index, const void *bytes, size_t length, size_t piece)
{
    const unsigned char *p = bytes;
    size_t sent = 0;
    do {
        size_t n = length - sent < piece ? length - sent : piece;
        harness_receive(h, index, p + sent, n, true, sent == 0, sent + n == length);
        sent += n;
    } while (sent < length);
}

static void append_bytes(unsigned char **buffer, size_t *length, size_t *capacity,
                         const unsigned char *bytes, size_t count)
{
    if (*length + count + 1 > *capacity) {
        size_t grown = *capacity ? *capacity : 256;
        while (grown < *length + count + 1)
            grown *= 2;
        *buffer = realloc(*buffer, grown);
        assert_non_null(*buffer);
        *capacity = grown;
    }
    if (count)
        memcpy(*buffer + *length, bytes, count);
    *length += count;
    (*buffer)[*length] = '\0'; /* text messages read as C strings */
}

static void push_message(struct receiver_state *r)
{
    if (r->inbox_count == r->inbox_capacity) {
        r->inbox_capacity = r->inbox_capacity ? 2 * r->inbox_capacity : 16;
        r->inbox = realloc(r->inbox, r->inbox_capacity * sizeof *r->inbox);
        assert_non_null(r->inbox);
    }
    unsigned char *copy = malloc(r->partial_length + 1);
    assert_non_null(copy);
    memcpy(copy, r->partial ? r->partial : (unsigned char *)"", r->partial_length);
    copy[r->partial_length] = '\0';
    r->inbox[r->inbox_count++] = (struct received){
        .is_binary = r->partial_binary, .bytes = copy, .length = r->partial_length};
    r->partial_length = 0;
    r->in_message = false;
}

size_t harness_write_steps(struct harness *h, int index, size_t max_steps)
{
    struct connection *connection = h->connections[index];
    assert_non_null(connection);
    struct receiver_state *r = &h->receivers[index];
    struct fake_transport *t = &h->transports[index];
    struct write_step step;
    size_t written = 0;
    while (written < max_steps && relay_next_write(connection, &step)) {
        if (r->queue_was_empty)
            assert_true(t->want_write_calls > r->want_write_seen); /* else nobody would write */
        r->queue_was_empty = false;
        /* WebSocket framing: a message is one first frame, then continuations, one final. */
        assert_int_equal(step.continuation, r->in_message);
        if (r->in_message)
            assert_int_equal(step.is_binary, r->partial_binary);
        r->partial_binary = step.is_binary;
        r->in_message = true;
        append_bytes(&r->partial, &r->partial_length, &r->partial_capacity, step.bytes,
                     step.length);
        relay_wrote(h->relay, connection, h->now);
        if (step.final)
            push_message(r);
        written++;
    }
    if (!relay_next_write(connection, &step) && !r->in_message) {
        r->queue_was_empty = true;
        r->want_write_seen = t->want_write_calls;
    }
    return written;
}

size_t harness_drain(struct harness *h, int index)
{
    size_t before = h->receivers[index].inbox_count;
    if (h->connections[index])
        harness_write_steps(h, index, SIZE_MAX);
    return h->receivers[index].inbox_count - before;
}

void harness_forget(struct harness *h, int index)
{
    struct receiver_state *r = &h->receivers[index];
    for (size_t i = 0; i < r->inbox_count; i++)
        free(r->inbox[i].bytes);
    r->inbox_count = 0;
}

void harness_drain_all_and_forget(struct harness *h)
{
    for (int i = 0; i < HARNESS_CONNECTIONS; i++) {
        harness_drain(h, i);
        harness_forget(h, i);
    }
}

/* Removes the oldest message of the inbox; the caller owns its bytes. */
static struct received take_oldest(struct harness *h, int index)
{
    harness_drain(h, index);
    struct receiver_state *r = &h->receivers[index];
    if (r->inbox_count == 0)
        fail_msg("connection %d: expected a message, got nothing", index);
    struct received oldest = r->inbox[0];
    memmove(r->inbox, r->inbox + 1, (r->inbox_count - 1) * sizeof *r->inbox);
    r->inbox_count--;
    return oldest;
}

/* Keeps a message's bytes alive until harness_stop: jansson copies any bytes into a string
 * made with _nocheck, and the harness already frees one JSON array at the end. */
static const char *keep_text(struct harness *h, unsigned char *bytes, size_t length)
{
    json_t *holder = json_stringn_nocheck((const char *)bytes, length);
    free(bytes);
    assert_non_null(holder);
    json_array_append_new(h->keep, holder);
    return json_string_value(holder);
}

json_t *harness_expect(struct harness *h, int index, const char *type)
{
    struct received message = take_oldest(h, index);
    if (message.is_binary)
        fail_msg("connection %d: expected text '%s', got %zu binary bytes", index, type,
                 message.length);
    json_error_t error;
    json_t *root = json_loadb((const char *)message.bytes, message.length, 0, &error);
    if (!root)
        fail_msg("connection %d: not JSON (%s): %s", index, error.text, message.bytes);
    json_t *got = json_object_get(root, "type");
    if (!json_is_string(got) || strcmp(json_string_value(got), type) != 0)
        fail_msg("connection %d: expected '%s', got %s", index, type, message.bytes);
    free(message.bytes);
    json_array_append_new(h->keep, root);
    return root;
}

json_t *harness_expect_error(struct harness *h, int index, const char *code)
{
    json_t *payload = json_payload(harness_expect(h, index, "error"));
    assert_string_equal(json_text(payload, "code"), code);
    assert_true(strlen(json_text(payload, "error")) > 0);
    return payload;
}

const char *harness_expect_text(struct harness *h, int index)
{
    struct received message = take_oldest(h, index);
    assert_false(message.is_binary);
    return keep_text(h, message.bytes, message.length);
}

const unsigned char *harness_expect_binary(struct harness *h, int index, size_t *length)
{
    struct received message = take_oldest(h, index);
    assert_true(message.is_binary);
    *length = message.length;
    return (const unsigned char *)keep_text(h, message.bytes, message.length);
}

void harness_expect_nothing(struct harness *h, int index)
{
    harness_drain(h, index);
    struct receiver_state *r = &h->receivers[index];
    if (r->inbox_count)
        fail_msg("connection %d: expected nothing, got %zu message(s), first: %.200s", index,
                 r->inbox_count, r->inbox[0].is_binary ? "(binary)" : (char *)r->inbox[0].bytes);
    assert_false(r->in_message);
}

static void send_identity_message(struct harness *h, int index, const char *type, const char *code,
                                  const char *user_id, const char *display_name, bool resume)
{
    json_t *payload = json_pack("{s:s, s:s}", "user_id", user_id, "display_name", display_name);
    if (code)
        json_object_set_new(payload, "room_code", json_string(code));
    json_t *features = json_array();
    if (h->speaks_frames)
        json_array_append_new(features, json_string("frame_header"));
    if (resume)
        json_array_append_new(features, json_string("resume"));
    if (json_array_size(features))
        json_object_set_new(payload, "features", features);
    else
        json_decref(features);
    json_t *message = json_pack("{s:s, s:o}", "type", type, "payload", payload);
    char *text = json_dumps(message, JSON_COMPACT);
    json_decref(message);
    harness_text(h, index, text);
    free(text);
}

const char *harness_create_room(struct harness *h, int index, const char *user_id,
                                const char *display_name, bool resume)
{
    send_identity_message(h, index, "create_room", NULL, user_id, display_name, resume);
    return json_text(json_payload(harness_expect(h, index, "room_created")), "room_code");
}

json_t *harness_join(struct harness *h, int index, const char *code, const char *user_id,
                     const char *display_name, bool resume)
{
    send_identity_message(h, index, "join_room", code, user_id, display_name, resume);
    return json_payload(harness_expect(h, index, "room_joined"));
}

const char *json_text(json_t *object, const char *name)
{
    json_t *value = json_object_get(object, name);
    if (!json_is_string(value))
        fail_msg("expected a string field '%s'", name);
    return json_string_value(value);
}

json_t *json_payload(json_t *message)
{
    json_t *payload = json_object_get(message, "payload");
    assert_true(json_is_object(payload));
    return payload;
}

json_t *harness_protocol_vectors(void)
{
    /* make runs the tests from relay_server/; allow the repository root and build/ too. */
    static const char *const candidates[] = {
        "../tests/vectors/protocol.json",
        "tests/vectors/protocol.json",
        "../../tests/vectors/protocol.json",
    };
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        json_error_t error;
        json_t *root = json_load_file(candidates[i], 0, &error);
        if (root)
            return root;
    }
    fail_msg("tests/vectors/protocol.json not found from the working directory");
    return NULL;
}

size_t harness_unhex(const char *hex, unsigned char *out, size_t capacity)
{
    size_t length = strlen(hex);
    assert_int_equal(length % 2, 0);
    assert_true(length / 2 <= capacity);
    for (size_t i = 0; i < length / 2; i++) {
        unsigned value;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &value), 1);
        out[i] = (unsigned char)value;
    }
    return length / 2;
}
