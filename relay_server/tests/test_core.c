/* test_core.c — the relay core through its public API, without sockets: rooms and codes, control
 * messages and their errors, forwarding (text spliced, binary streamed), limits, resume, flow
 * control and timers. Expectations come from docs/protocol.md and tests/vectors/protocol.json. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_harness.h"
#include "frame_header.h"
#include "resume_token.h"
#include "unit.h"

#define KIB 1024u

/* Large messages live here rather than on the heap, so that a failing test leaks nothing and
 * LeakSanitizer (SANITIZE=1) reports only the relay's own leaks. */
static unsigned char large_payloads[2][2048 * KIB];

static const char *const users[] = {"alice", "bob", "carol", "dave"};
static const char *const names[] = {"Alice", "Bob", "Carol", "Dave"};

static struct harness *harness_of(void **state)
{
    return *state;
}

static int start(void **state)
{
    struct harness *h = calloc(1, sizeof *h);
    if (!h)
        return -1;
    harness_start(h, NULL);
    *state = h;
    return 0;
}

static int stop(void **state)
{
    harness_stop(*state);
    free(*state);
    return 0;
}

/* Replaces the relay of a test with one using `config` (tests that need other limits). */
static void use_config(struct harness *h, const struct relay_config *config)
{
    harness_stop(h);
    harness_start(h, config);
}

/* Connections 0..count-1 from distinct addresses, all in one room created by 0; every inbox is
 * empty afterwards. Returns the room code. */
static const char *room_with(struct harness *h, int count, bool resume)
{
    char address[32];
    for (int i = 0; i < count; i++) {
        snprintf(address, sizeof address, "10.0.0.%d", i + 1);
        harness_open(h, i, address, false);
    }
    const char *code = harness_create_room(h, 0, users[0], names[0], resume);
    for (int i = 1; i < count; i++)
        harness_join(h, i, code, users[i], names[i], resume);
    harness_drain_all_and_forget(h);
    return code;
}

static void fill_pattern(unsigned char *bytes, size_t length, unsigned seed)
{
    for (size_t i = 0; i < length; i++)
        bytes[i] = (unsigned char)((i * 31u + seed * 7u + (i >> 8)) & 0xff);
}

/* A frame header from `sender` to `recipients` (NULL-terminated, may be empty) into `out`. */
static size_t make_header(unsigned char *out, const char *sender, const char *const *recipients)
{
    struct frame_id ids[8];
    size_t count = 0;
    for (; recipients && recipients[count]; count++)
        ids[count] = (struct frame_id){recipients[count], (uint8_t)strlen(recipients[count])};
    size_t size =
        frame_header_write(out, FRAME_HEADER_MAX_SIZE, FRAME_KIND_WEIGHTS, 42, 0, 1, 100,
                           (struct frame_id){sender, (uint8_t)strlen(sender)}, ids, count);
    assert_true(size >= FRAME_HEADER_FIXED_SIZE);
    return size;
}

static void assert_users(json_t *payload, const char *const *expected, size_t count)
{
    json_t *list = json_object_get(payload, "users");
    assert_true(json_is_array(list));
    assert_int_equal(json_array_size(list), count);
    for (size_t i = 0; i < count; i++)
        assert_string_equal(json_text(json_array_get(list, i), "user_id"), expected[i]);
}

/* --- rooms ------------------------------------------------------------------------------ */

static void test_room_created_code_and_relay_info(void **state)
{
    struct harness *h = harness_of(state);
    json_t *vectors = harness_protocol_vectors();
    const char *alphabet = json_text(vectors, "room_code_alphabet");
    size_t code_length = (size_t)json_integer_value(json_object_get(vectors, "room_code_length"));

    harness_open(h, 0, NULL, false);
    harness_text(h, 0, "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"alice\"}}");
    json_t *payload = json_payload(harness_expect(h, 0, "room_created"));
    const char *code = json_text(payload, "room_code");
    assert_int_equal(strlen(code), code_length);
    for (size_t i = 0; i < code_length; i++)
        assert_non_null(strchr(alphabet, code[i]));
    assert_null(json_object_get(payload, "resume_token")); /* not asked for */

    json_t *relay = json_object_get(payload, "relay");
    assert_int_equal(json_integer_value(json_object_get(relay, "protocol")), 2);
    assert_true(
        json_equal(json_object_get(relay, "features"), json_object_get(vectors, "features")));
    json_t *limits = json_object_get(relay, "limits");
    assert_int_equal(json_integer_value(json_object_get(limits, "max_message_size")),
                     h->config.max_message_size);
    assert_int_equal(relay_room_count(h->relay), 1);
    assert_int_equal(relay_metrics(h->relay)->rooms_created_total, 1);
    json_decref(vectors);
}

static void test_reserved_codes_are_unique_and_from_the_alphabet(void **state)
{
    struct harness *h = harness_of(state);
    json_t *vectors = harness_protocol_vectors();
    const char *alphabet = json_text(vectors, "room_code_alphabet");
    enum { ROOMS = 200 };
    static char codes[ROOMS][ROOM_CODE_LENGTH + 1];
    for (int i = 0; i < ROOMS; i++) {
        char address[32];
        snprintf(address, sizeof address, "10.1.%d.%d", i / 100, i % 100);
        assert_null(relay_reserve_room(h->relay, address, h->now, codes[i]));
        assert_int_equal(strlen(codes[i]), ROOM_CODE_LENGTH);
        assert_int_equal(strspn(codes[i], alphabet), ROOM_CODE_LENGTH);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(codes[i], codes[j]);
    }
    assert_int_equal(relay_room_count(h->relay), ROOMS);
    json_decref(vectors);
}

static void test_join_with_lower_case_code(void **state)
{
    struct harness *h = harness_of(state);
    harness_open(h, 0, "10.0.0.1", false);
    harness_open(h, 1, "10.0.0.2", false);
    char code[ROOM_CODE_LENGTH + 1];
    snprintf(code, sizeof code, "%s", harness_create_room(h, 0, "alice", "Alice", false));
    char lower[ROOM_CODE_LENGTH + 1];
    for (int i = 0; i <= ROOM_CODE_LENGTH; i++)
        lower[i] = (char)(code[i] >= 'A' && code[i] <= 'Z' ? code[i] + 32 : code[i]);

    json_t *joined = harness_join(h, 1, lower, "bob", "Bob", false);
    assert_string_equal(json_text(joined, "room_code"), code);
    const char *both[] = {"alice", "bob"};
    assert_users(joined, both, 2);
    assert_non_null(json_object_get(joined, "relay"));

    json_t *told = json_payload(harness_expect(h, 0, "user_joined"));
    assert_string_equal(json_text(told, "user_id"), "bob");
    assert_string_equal(json_text(told, "display_name"), "Bob");
    assert_users(told, both, 2);
    harness_expect_nothing(h, 0);
    harness_expect_nothing(h, 1);
}

static void test_join_unknown_room(void **state)
{
    struct harness *h = harness_of(state);
    harness_open(h, 0, NULL, false);
    harness_text(
        h, 0, "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"ZZZZZZ\",\"user_id\":\"b\"}}");
    json_t *error = harness_expect_error(h, 0, "ROOM_NOT_FOUND");
    assert_string_equal(json_text(error, "error"), "Room not found");
    /* Not a code at all (wrong length, letters outside the alphabet): also not found. */
    harness_text(h, 0,
                 "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"IO01\",\"user_id\":\"b\"}}");
    harness_expect_error(h, 0, "ROOM_NOT_FOUND");
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_ROOM_NOT_FOUND], 2);
    assert_int_equal(relay_room_count(h->relay), 0);
}

static void test_one_room_per_connection(void **state)
{
    struct harness *h = harness_of(state);
    room_with(h, 2, false); /* alice and bob */
    harness_open(h, 2, "10.0.0.3", false);
    const char *third = harness_create_room(h, 2, "carol", "Carol", false);

    /* bob creates a room of his own: he leaves alice's first. */
    harness_create_room(h, 1, "bob", "Bob", false);
    json_t *left = json_payload(harness_expect(h, 0, "user_left"));
    assert_string_equal(json_text(left, "user_id"), "bob");
    const char *only_alice[] = {"alice"};
    assert_users(left, only_alice, 1);
    assert_int_equal(relay_room_count(h->relay), 3);

    /* alice joins carol's room: her own, now empty, is deleted. */
    harness_join(h, 0, third, "alice", "Alice", false);
    assert_int_equal(relay_room_count(h->relay), 2);
    harness_expect(h, 2, "user_joined");
    harness_expect_nothing(h, 1);

    /* A chat from bob reaches nobody: he is alone in his room. */
    harness_text(h, 1, "{\"type\":\"chat\"}");
    harness_expect_nothing(h, 0);
    harness_expect_nothing(h, 2);
}

static void test_disconnect_sends_user_left_and_deletes_empty_room(void **state)
{
    struct harness *h = harness_of(state);
    char code[ROOM_CODE_LENGTH + 1];
    snprintf(code, sizeof code, "%s", room_with(h, 3, false));
    harness_closed(h, 1);
    for (int i = 0; i < 3; i += 2) {
        json_t *left = json_payload(harness_expect(h, i, "user_left"));
        assert_string_equal(json_text(left, "user_id"), "bob");
        assert_string_equal(json_text(left, "display_name"), "Bob");
        const char *remaining[] = {"alice", "carol"};
        assert_users(left, remaining, 2);
    }
    /* leave_room is a disconnect for the room. */
    harness_text(h, 2, "{\"type\":\"leave_room\",\"payload\":{}}");
    json_t *left = json_payload(harness_expect(h, 0, "user_left"));
    assert_string_equal(json_text(left, "user_id"), "carol");
    harness_expect_nothing(h, 2);
    assert_int_equal(relay_room_count(h->relay), 1);
    harness_closed(h, 0);
    assert_int_equal(relay_room_count(h->relay), 0);
    assert_int_equal(relay_connection_count(h->relay), 1);

    json_t *payload = json_pack("{s:s, s:s}", "room_code", code, "user_id", "dave");
    json_t *message = json_pack("{s:s, s:o}", "type", "join_room", "payload", payload);
    char *text = json_dumps(message, JSON_COMPACT);
    harness_text(h, 2, text);
    free(text);
    json_decref(message);
    harness_expect_error(h, 2, "ROOM_NOT_FOUND");
}

static void test_room_full(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.max_room_members = 2;
    use_config(h, &config);
    const char *code = room_with(h, 2, false);
    harness_open(h, 2, "10.0.0.3", false);
    char text[256];
    snprintf(text, sizeof text,
             "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"carol\"}}",
             code);
    harness_text(h, 2, text);
    harness_expect_error(h, 2, "ROOM_FULL");
    harness_expect_nothing(h, 0);
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_ROOM_FULL], 1);
}

static void test_too_many_rooms(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.max_rooms = 1;
    use_config(h, &config);
    harness_open(h, 0, "10.0.0.1", false);
    harness_open(h, 1, "10.0.0.2", false);
    harness_create_room(h, 0, "alice", "Alice", false);
    harness_text(h, 1, "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"bob\"}}");
    harness_expect_error(h, 1, "TOO_MANY_ROOMS");
    char code[ROOM_CODE_LENGTH + 1];
    const char *refused = relay_reserve_room(h->relay, "10.0.0.9", h->now, code);
    assert_non_null(refused);
    assert_string_equal(refused, "TOO_MANY_ROOMS");
    assert_int_equal(relay_room_count(h->relay), 1);
}

static void test_max_connections(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.max_connections = 2;
    use_config(h, &config);
    harness_open(h, 0, NULL, false);
    harness_open(h, 1, NULL, false);
    assert_null(relay_connection_open(h->relay, &h->transports[2], "127.0.0.1", false, h->now));
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_TOO_MANY_CONNECTIONS], 1);
    harness_closed(h, 0);
    harness_open(h, 2, NULL, false); /* a slot is free again */
}

static void test_join_rate_limited_then_allowed(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.join_attempts_per_minute = 3;
    use_config(h, &config);
    harness_open(h, 0, "10.0.0.1", false);
    const char *code = harness_create_room(h, 0, "alice", "Alice", false);
    harness_open(h, 1, "192.0.2.7", false);
    const char *guess =
        "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"ZZZZZZ\",\"user_id\":\"eve\"}}";
    for (int i = 0; i < 3; i++) {
        harness_text(h, 1, guess);
        harness_expect_error(h, 1, "ROOM_NOT_FOUND");
    }
    /* Over the limit, even the right code is refused without being evaluated. */
    char join[256];
    snprintf(join, sizeof join,
             "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"eve\"}}",
             code);
    harness_text(h, 1, join);
    json_t *limited = harness_expect_error(h, 1, "RATE_LIMITED");
    /* 3 failures in this minute: they count in full until it ends (60 s), then fade; one more
     * attempt fits once they count for 2, a third of the way into the next minute. */
    assert_int_equal(json_integer_value(json_object_get(limited, "retry_after")), 80);
    harness_expect_nothing(h, 0);
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_RATE_LIMITED], 1);
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_ROOM_NOT_FOUND], 3);

    /* Another address is not affected. */
    harness_open(h, 2, "192.0.2.8", false);
    harness_join(h, 2, code, "carol", "Carol", false);
    harness_drain_all_and_forget(h);

    harness_tick(h, 79);
    harness_text(h, 1, join);
    harness_expect_error(h, 1, "RATE_LIMITED");
    harness_tick(h, 1);
    harness_join(h, 1, code, "eve", "Eve", false);
    harness_expect(h, 0, "user_joined");
}

static void test_correct_codes_never_spend_the_join_budget(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.join_attempts_per_minute = 3;
    config.max_room_members = 100;
    use_config(h, &config);
    harness_open(h, 0, "10.0.0.1", false);
    char code[ROOM_CODE_LENGTH + 1];
    snprintf(code, sizeof code, "%s", harness_create_room(h, 0, "host", "", false));
    /* A lab behind one address: 40 colleagues (on 7 connections, re-joining) all get in, and
     * a typo in between costs one attempt of the budget, not a place. */
    char user[16];
    for (int i = 0; i < 40; i++) {
        int index = 1 + i % 7;
        if (i < 7)
            harness_open(h, index, "192.0.2.50", false);
        snprintf(user, sizeof user, "colleague%d", i);
        harness_drain_all_and_forget(h);
        harness_join(h, index, code, user, "", false);
        if (i == 20) {
            harness_text(h, index,
                         "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"ZZZZZZ\","
                         "\"user_id\":\"typo\"}}");
            harness_expect_error(h, index, "ROOM_NOT_FOUND");
        }
    }
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_RATE_LIMITED], 0);
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_ROOM_NOT_FOUND], 1);
}

static void test_relay_wide_budget_of_failed_joins(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.join_attempts_per_minute = 100;
    config.failed_joins_per_minute = 5;
    use_config(h, &config);
    harness_open(h, 0, "10.0.0.1", false);
    const char *code = harness_create_room(h, 0, "host", "", false);
    /* Five addresses guess once each: the relay's budget is used up... */
    char address[32];
    for (int i = 1; i <= 5; i++) {
        snprintf(address, sizeof address, "198.51.100.%d", i);
        harness_open(h, i, address, false);
        harness_text(h, i,
                     "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"ZZZZZZ\","
                     "\"user_id\":\"g\"}}");
        harness_expect_error(h, i, "ROOM_NOT_FOUND");
    }
    /* ...so a sixth address's attempt is not evaluated either, right code or not. */
    harness_open(h, 6, "198.51.100.6", false);
    char join[256];
    snprintf(join, sizeof join,
             "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"x\"}}", code);
    harness_text(h, 6, join);
    json_t *limited = harness_expect_error(h, 6, "RATE_LIMITED");
    assert_true(json_integer_value(json_object_get(limited, "retry_after")) > 0);
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_GLOBAL_JOIN_BUDGET], 1);
    harness_tick(h, 120);
    harness_join(h, 6, code, "x", "", false);
}

static void test_resume_is_not_limited_by_the_join_budget(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.join_attempts_per_minute = 2;
    use_config(h, &config);
    harness_open(h, 0, "192.0.2.60", false);
    harness_open(h, 1, "192.0.2.60", false);
    const char *created = harness_create_room(h, 0, "host", "", false);
    char code[ROOM_CODE_LENGTH + 1];
    snprintf(code, sizeof code, "%s", created);
    json_t *joined = harness_join(h, 1, code, "bob", "", true);
    char token[RESUME_TOKEN_HEX_LENGTH + 1];
    snprintf(token, sizeof token, "%s", json_text(joined, "resume_token"));
    harness_drain_all_and_forget(h);
    /* A typo twice from that address: its join budget is spent... */
    for (int i = 0; i < 2; i++) {
        harness_text(h, 1,
                     "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"ZZZZZZ\","
                     "\"user_id\":\"t\"}}");
        harness_expect_error(h, 1, "ROOM_NOT_FOUND");
    }
    /* ...bad resume tokens spend nothing and say nothing about the code... */
    char text[512];
    snprintf(text, sizeof text,
             "{\"type\":\"resume\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"bob\","
             "\"resume_token\":\"%064d\"}}",
             code, 0);
    harness_text(h, 1, text);
    harness_expect_error(h, 1, "INVALID_RESUME_TOKEN");
    /* ...and bob, dropped, comes back from the same address with his token. */
    harness_closed(h, 1);
    harness_open(h, 2, "192.0.2.60", false);
    snprintf(text, sizeof text,
             "{\"type\":\"resume\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"bob\","
             "\"resume_token\":\"%s\"}}",
             code, token);
    harness_text(h, 2, text);
    harness_expect(h, 2, "room_joined");
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_RATE_LIMITED], 0);
}

/* --- forwarding text ---------------------------------------------------------------------- */

static void test_text_forwarded_with_sender_spliced(void **state)
{
    struct harness *h = harness_of(state);
    room_with(h, 3, false);
    uint64_t sent_before = relay_metrics(h->relay)->messages_sent[0];
    harness_text(h, 0,
                 "{\"type\":\"chat\",\"payload\":{\"text\":\"h\\u00e9 \\\"x\\\"\"},"
                 "\"timestamp\":12.50}");
    const char *expected = "{\"type\":\"chat\",\"payload\":{\"text\":\"h\\u00e9 \\\"x\\\"\"},"
                           "\"timestamp\":12.50,\"sender_id\":\"alice\",\"sender_name\":\"Alice\"}";
    assert_string_equal(harness_expect_text(h, 1), expected);
    assert_string_equal(harness_expect_text(h, 2), expected);
    harness_expect_nothing(h, 0); /* never echoed to the sender */

    /* Whitespace the client put in is kept; what follows the closing brace is not. */
    harness_text(h, 1, "{ \"type\" : \"ping\" }\n");
    assert_string_equal(harness_expect_text(h, 0),
                        "{ \"type\" : \"ping\" ,\"sender_id\":\"bob\",\"sender_name\":\"Bob\"}");
    harness_expect_text(h, 2);
    assert_int_equal(relay_metrics(h->relay)->messages_sent[0] - sent_before, 4);
}

static void test_sender_name_is_json_escaped(void **state)
{
    struct harness *h = harness_of(state);
    harness_open(h, 0, "10.0.0.1", false);
    harness_open(h, 1, "10.0.0.2", false);
    const char *code = harness_create_room(h, 0, "al\"ice", "A \\ \"B\"\n", false);
    harness_join(h, 1, code, "bob", "Bob", false);
    harness_drain_all_and_forget(h);
    harness_text(h, 0, "{\"type\":\"x\"}");
    const char *got = harness_expect_text(h, 1);
    assert_string_equal(got, "{\"type\":\"x\",\"sender_id\":\"al\\\"ice\","
                             "\"sender_name\":\"A \\\\ \\\"B\\\"\\n\"}");
}

static void test_client_sender_fields_are_overridden(void **state)
{
    struct harness *h = harness_of(state);
    room_with(h, 2, false);
    harness_text(h, 0,
                 "{\"type\":\"chat\",\"sender_id\":\"mallory\",\"sender_name\":\"M\","
                 "\"payload\":{\"n\":1}}");
    json_t *got = harness_expect(h, 1, "chat");
    assert_string_equal(json_text(got, "sender_id"), "alice");
    assert_string_equal(json_text(got, "sender_name"), "Alice");
    assert_int_equal(json_integer_value(json_object_get(json_payload(got), "n")), 1);
    /* Only one sender_name: a spliced duplicate key would be parsed as the last one. */
    harness_text(h, 0, "{\"type\":\"chat\",\"sender_name\":\"M\"}");
    got = harness_expect(h, 1, "chat");
    assert_string_equal(json_text(got, "sender_name"), "Alice");
}

static void test_messages_outside_a_room_are_dropped(void **state)
{
    struct harness *h = harness_of(state);
    room_with(h, 2, false);
    harness_open(h, 2, "10.0.0.3", false);
    harness_text(h, 2, "{\"type\":\"chat\",\"payload\":{}}");
    unsigned char bytes[100];
    fill_pattern(bytes, sizeof bytes, 1);
    harness_binary(h, 2, bytes, sizeof bytes, sizeof bytes);
    for (int i = 0; i < 3; i++)
        harness_expect_nothing(h, i);
    assert_int_equal(relay_metrics(h->relay)->dropped[DROP_NOT_IN_ROOM], 2);
}

static void test_directed_text(void **state)
{
    struct harness *h = harness_of(state);
    room_with(h, 3, false);
    harness_text(h, 0, "{\"type\":\"chat\",\"to\":[\"carol\",\"nobody\"]}");
    assert_string_equal(harness_expect_text(h, 2),
                        "{\"type\":\"chat\",\"to\":[\"carol\",\"nobody\"],\"sender_id\":\"alice\","
                        "\"sender_name\":\"Alice\"}");
    harness_expect_nothing(h, 1);
    harness_expect_nothing(h, 0);
    /* Naming yourself does not echo. */
    harness_text(h, 0, "{\"type\":\"chat\",\"to\":[\"alice\"]}");
    for (int i = 0; i < 3; i++)
        harness_expect_nothing(h, i);
    harness_text(h, 0, "{\"type\":\"chat\",\"to\":\"carol\"}");
    json_t *error = harness_expect_error(h, 0, "INVALID_FIELD");
    assert_string_equal(json_text(error, "field"), "to");
    harness_text(h, 0, "{\"type\":\"chat\",\"to\":[\"carol\",7]}");
    harness_expect_error(h, 0, "INVALID_FIELD");
    harness_expect_nothing(h, 2);
}

/* --- bad input ------------------------------------------------------------------------- */

static void test_invalid_json(void **state)
{
    struct harness *h = harness_of(state);
    harness_open(h, 0, NULL, false);
    harness_text(h, 0, "{\"type\": \"chat\",");
    json_t *error = harness_expect_error(h, 0, "INVALID_JSON");
    assert_string_equal(json_text(error, "error"), "Invalid message format");
    assert_true(strlen(json_text(error, "details")) > 0);
    harness_text(h, 0, "hello");
    harness_expect_error(h, 0, "INVALID_JSON");
    harness_text(h, 0, "{\"type\":\"chat\"} trailing");
    harness_expect_error(h, 0, "INVALID_JSON");
}

static void test_json_that_is_not_a_message(void **state)
{
    struct harness *h = harness_of(state);
    harness_open(h, 0, NULL, false);
    const char *bad[] = {"[1,2]",
                         "42",
                         "\"create_room\"",
                         "null",
                         "{\"payload\":{}}",
                         "{\"type\":7}",
                         "{\"type\":\"create_room\",\"payload\":[]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        harness_text(h, 0, bad[i]);
        harness_expect_error(h, 0, "INVALID_MESSAGE");
    }
    assert_int_equal(relay_room_count(h->relay), 0);
}

static void expect_field_error(struct harness *h, const char *text, const char *field)
{
    harness_text(h, 0, text);
    json_t *error = harness_expect_error(h, 0, "INVALID_FIELD");
    assert_string_equal(json_text(error, "field"), field);
}

static void test_invalid_fields(void **state)
{
    struct harness *h = harness_of(state);
    harness_open(h, 0, NULL, false);
    expect_field_error(h, "{\"type\":\"join_room\",\"payload\":{\"user_id\":\"b\"}}", "room_code");
    expect_field_error(
        h, "{\"type\":\"join_room\",\"payload\":{\"room_code\":123456,\"user_id\":\"b\"}}",
        "room_code");
    expect_field_error(h, "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"ABCDEF\"}}",
                       "user_id");
    expect_field_error(h, "{\"type\":\"create_room\"}", "user_id");
    expect_field_error(h, "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"\"}}", "user_id");
    expect_field_error(h, "{\"type\":\"create_room\",\"payload\":{\"user_id\":5}}", "user_id");
    expect_field_error(
        h, "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"a\",\"display_name\":1}}",
        "display_name");

    char text[1024];
    char long_id[USER_ID_MAX_BYTES + 2];
    memset(long_id, 'u', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    snprintf(text, sizeof text, "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"%s\"}}",
             long_id);
    expect_field_error(h, text, "user_id");
    long_id[USER_ID_MAX_BYTES] = '\0'; /* exactly the maximum is fine */
    snprintf(text, sizeof text, "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"%s\"}}",
             long_id);
    harness_text(h, 0, text);
    harness_expect(h, 0, "room_created");

    char long_name[DISPLAY_NAME_MAX_BYTES + 2];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    snprintf(text, sizeof text,
             "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"a\",\"display_name\":\"%s\"}}",
             long_name);
    expect_field_error(h, text, "display_name");
}

static void test_text_over_max_text_size_closes_1009(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.max_text_size = 100;
    use_config(h, &config);
    room_with(h, 2, false);
    char text[160];
    memset(text, ' ', sizeof text);
    memcpy(text, "{\"type\":\"x\"}", 12);
    /* Exactly the limit is allowed. */
    harness_receive(h, 0, text, 100, false, true, true);
    harness_expect(h, 1, "x");
    /* In two parts, the second crossing the limit. */
    harness_receive(h, 0, text, 60, false, true, false);
    assert_int_equal(h->transports[0].close_calls, 0);
    harness_receive(h, 0, text + 60, 60, false, false, true);
    assert_int_equal(h->transports[0].close_calls, 1);
    assert_int_equal(h->transports[0].close_code, 1009);
    harness_expect_nothing(h, 1);
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_MESSAGE_TOO_BIG], 1);
}

/* --- binary ----------------------------------------------------------------------------- */

static void expect_binary_equal(struct harness *h, int index, const unsigned char *bytes,
                                size_t length)
{
    size_t got_length = 0;
    const unsigned char *got = harness_expect_binary(h, index, &got_length);
    assert_int_equal(got_length, length);
    assert_memory_equal(got, bytes, length);
}

static void test_binary_streamed_to_every_other_member(void **state)
{
    struct harness *h = harness_of(state);
    room_with(h, 3, false);
    size_t length = 300 * KIB + 17;
    unsigned char *bytes = large_payloads[0];
    fill_pattern(bytes, length, 3);

    /* Small receives (gathered by the core) then large ones; bob writes as it goes. */
    size_t sent = 0;
    while (sent < 150 * KIB) {
        harness_receive(h, 0, bytes + sent, 7000, true, sent == 0, false);
        sent += 7000;
    }
    /* Streaming: bob can write before the message has fully arrived. */
    assert_true(harness_write_steps(h, 1, SIZE_MAX) > 0);
    assert_int_equal(h->receivers[1].inbox_count, 0);
    while (sent < length) {
        size_t n = length - sent < 40 * KIB ? length - sent : 40 * KIB;
        harness_receive(h, 0, bytes + sent, n, true, false, sent + n == length);
        sent += n;
    }
    expect_binary_equal(h, 1, bytes, length);
    expect_binary_equal(h, 2, bytes, length);
    harness_expect_nothing(h, 0);
    assert_int_equal(relay_queued_bytes(h->relay), 0);
    assert_int_equal(relay_metrics(h->relay)->messages_sent[1], 2);
    assert_int_equal(relay_metrics(h->relay)->bytes_sent[1], 2 * length);

    /* One receive per message, many messages: each arrives whole and in order. */
    for (unsigned i = 0; i < 5; i++) {
        fill_pattern(bytes, 1000 + i, i);
        harness_binary(h, 2, bytes, 1000 + i, 1000 + i);
    }
    for (unsigned i = 0; i < 5; i++) {
        fill_pattern(bytes, 1000 + i, i);
        expect_binary_equal(h, 0, bytes, 1000 + i);
        expect_binary_equal(h, 1, bytes, 1000 + i);
    }
    assert_int_equal(relay_queued_bytes(h->relay), 0);
}

static void test_short_binary_without_the_magic_is_forwarded(void **state)
{
    /* docs/protocol.md: binary messages without the magic (v1 clients) are forwarded as in v1;
     * an empty message or one shorter than the 4-byte magic cannot carry it. */
    struct harness *h = harness_of(state);
    room_with(h, 2, false);
    harness_receive(h, 0, "", 0, true, true, true);
    expect_binary_equal(h, 1, (const unsigned char *)"", 0);
    harness_receive(h, 0, "SS", 2, true, true, true);
    expect_binary_equal(h, 1, (const unsigned char *)"SS", 2);
    harness_expect_nothing(h, 0);
}

static void test_directed_binary_by_header(void **state)
{
    struct harness *h = harness_of(state);
    h->speaks_frames = true;
    room_with(h, 4, false);
    unsigned char message[FRAME_HEADER_MAX_SIZE + 5000];
    const char *to[] = {"carol", "dave", "zed", NULL};
    size_t header = make_header(message, "alice", to);
    fill_pattern(message + header, 5000, 9);
    harness_binary(h, 0, message, header + 5000, 1000);
    expect_binary_equal(h, 2, message, header + 5000);
    expect_binary_equal(h, 3, message, header + 5000);
    harness_expect_nothing(h, 1);
    harness_expect_nothing(h, 0);

    /* No recipients: everyone else. */
    header = make_header(message, "alice", NULL);
    harness_binary(h, 0, message, header + 10, header + 10);
    for (int i = 1; i < 4; i++)
        expect_binary_equal(h, i, message, header + 10);
}

/* Mixed rooms: alice and carol speak protocol 2, bob is an original (v1) client that joined
 * without features. Each binary reaches only the members that read its format. */
static void test_binaries_reach_only_members_that_read_their_format(void **state)
{
    struct harness *h = harness_of(state);
    h->speaks_frames = true;
    for (int i = 0; i < 3; i++) {
        char address[32];
        snprintf(address, sizeof address, "10.0.1.%d", i + 1);
        harness_open(h, i, address, false);
    }
    const char *code = harness_create_room(h, 0, "alice", "Alice", false);
    char text[200];
    snprintf(text, sizeof text,
             "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"bob\","
             "\"display_name\":\"Bob\"}}",
             code);
    harness_text(h, 1, text);
    harness_expect(h, 1, "room_joined");
    json_t *joined = harness_join(h, 2, code, "carol", "Carol", false);

    /* The user list says who speaks what: a v1 entry stays exactly {user_id, display_name}. */
    json_t *users = json_object_get(joined, "users");
    assert_int_equal(json_array_size(users), 3);
    json_t *features = json_object_get(json_array_get(users, 0), "features");
    assert_int_equal(json_array_size(features), 1);
    assert_string_equal(json_string_value(json_array_get(features, 0)), "frame_header");
    assert_int_equal(json_object_size(json_array_get(users, 1)), 2);
    assert_null(json_object_get(json_array_get(users, 1), "features"));
    harness_drain_all_and_forget(h);

    /* Framed, even addressed to bob: never to bob. */
    unsigned char message[600];
    const char *to_bob[] = {"bob", NULL};
    size_t header = make_header(message, "alice", NULL);
    fill_pattern(message + header, 100, 1);
    harness_binary(h, 0, message, header + 100, header + 100);
    expect_binary_equal(h, 2, message, header + 100);
    harness_expect_nothing(h, 1);
    header = make_header(message, "alice", to_bob);
    harness_binary(h, 0, message, header + 100, 50);
    harness_expect_nothing(h, 1);
    harness_expect_nothing(h, 2);

    /* Alice's original-format copy (no magic) goes to bob only; carol got the framed one. */
    const unsigned char gzip_copy[] = {0x1f, 0x8b, 8, 0, 1, 2, 3};
    harness_binary(h, 0, gzip_copy, sizeof gzip_copy, sizeof gzip_copy);
    expect_binary_equal(h, 1, gzip_copy, sizeof gzip_copy);
    harness_expect_nothing(h, 2);

    /* Bob's (original) binaries go to everyone, as in v1. */
    harness_binary(h, 1, gzip_copy, sizeof gzip_copy, 3);
    expect_binary_equal(h, 0, gzip_copy, sizeof gzip_copy);
    expect_binary_equal(h, 2, gzip_copy, sizeof gzip_copy);
}

static void test_header_one_byte_per_receive(void **state)
{
    struct harness *h = harness_of(state);
    h->speaks_frames = true;
    room_with(h, 3, false);
    unsigned char message[300];
    const char *to[] = {"bob", NULL};
    size_t header = make_header(message, "alice", to);
    fill_pattern(message + header, sizeof message - header, 4);
    harness_binary(h, 0, message, sizeof message, 1);
    expect_binary_equal(h, 1, message, sizeof message);
    harness_expect_nothing(h, 2);
    harness_expect_nothing(h, 0);
}

static void test_header_naming_another_sender_is_refused(void **state)
{
    struct harness *h = harness_of(state);
    h->speaks_frames = true;
    room_with(h, 3, false);
    unsigned char message[400];
    size_t header = make_header(message, "bob", NULL);
    fill_pattern(message + header, sizeof message - header, 5);
    harness_binary(h, 0, message, sizeof message, 50);
    harness_expect_error(h, 0, "BAD_FRAME_HEADER");
    harness_expect_nothing(h, 1);
    harness_expect_nothing(h, 2);
    assert_int_equal(relay_metrics(h->relay)->dropped[DROP_BAD_FRAME_HEADER], 1);

    /* A malformed header (reserved bytes set) likewise; then a good message still goes out. */
    header = make_header(message, "alice", NULL);
    message[34] = 1;
    harness_binary(h, 0, message, sizeof message, sizeof message);
    harness_expect_error(h, 0, "BAD_FRAME_HEADER");
    message[34] = 0;
    harness_binary(h, 0, message, sizeof message, 64);
    expect_binary_equal(h, 1, message, sizeof message);
    expect_binary_equal(h, 2, message, sizeof message);
    /* A message that ends inside its header. */
    harness_binary(h, 0, message, 20, 20);
    harness_expect_error(h, 0, "BAD_FRAME_HEADER");
    harness_expect_nothing(h, 1);
}

static void test_binary_over_max_message_size_closes_1009(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.max_message_size = 1000;
    use_config(h, &config);
    room_with(h, 3, false);
    unsigned char bytes[1200];
    fill_pattern(bytes, sizeof bytes, 6);
    harness_receive(h, 0, bytes, 600, true, true, false);
    harness_receive(h, 0, bytes + 600, 600, true, false, true);
    assert_int_equal(h->transports[0].close_calls, 1);
    assert_int_equal(h->transports[0].close_code, 1009);
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_MESSAGE_TOO_BIG], 1);
    /* Receivers got the part that was forwarded, ended so that they stay in sync. */
    for (int i = 1; i < 3; i++) {
        size_t length = 0;
        harness_expect_binary(h, i, &length);
        assert_true(length <= 600);
    }
    harness_closed(h, 0);
    harness_expect(h, 1, "user_left");
    harness_expect(h, 2, "user_left");
    /* The others are unaffected. */
    harness_binary(h, 1, bytes, 1000, 300);
    expect_binary_equal(h, 2, bytes, 1000);
    harness_text(h, 2, "{\"type\":\"after\"}");
    harness_expect(h, 1, "after");
    assert_int_equal(relay_queued_bytes(h->relay), 0);
}

static void test_sender_leaving_mid_message_ends_it(void **state)
{
    struct harness *h = harness_of(state);
    room_with(h, 2, false);
    unsigned char bytes[100 * KIB];
    fill_pattern(bytes, sizeof bytes, 8);
    harness_receive(h, 0, bytes, sizeof bytes, true, true, false);
    harness_closed(h, 0);
    expect_binary_equal(h, 1, bytes, sizeof bytes);
    harness_expect(h, 1, "user_left");
    assert_int_equal(relay_metrics(h->relay)->dropped[DROP_TRUNCATED], 1);
    assert_int_equal(relay_queued_bytes(h->relay), 0);
}

/* --- echo ------------------------------------------------------------------------------- */

static void test_echo_returns_everything_unchanged(void **state)
{
    struct harness *h = harness_of(state);
    harness_open(h, 0, NULL, true);
    harness_text(h, 0, "not json at all");
    assert_string_equal(harness_expect_text(h, 0), "not json at all");
    size_t length = 100 * KIB + 3;
    unsigned char *bytes = large_payloads[0];
    fill_pattern(bytes, length, 2);
    harness_binary(h, 0, bytes, length, 9 * KIB);
    expect_binary_equal(h, 0, bytes, length);
    harness_receive(h, 0, "{\"type\":", 8, false, true, false);
    harness_receive(h, 0, "\"x\"}", 4, false, false, true);
    assert_string_equal(harness_expect_text(h, 0), "{\"type\":\"x\"}");
    assert_int_equal(relay_room_count(h->relay), 0);
    assert_int_equal(relay_queued_bytes(h->relay), 0);
}

static void test_echo_that_never_reads_is_bounded(void **state)
{
    /* A peer that sends faster than it reads on the echo endpoint fills its own queue: the relay
     * never buffers without bound, so it is closed with 4008 (and stays memory-safe doing it). */
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.receiver_buffer_bytes = 64 * KIB;
    config.max_text_size = 1 * KIB;
    use_config(h, &config);
    harness_open(h, 0, NULL, true);
    size_t length = 64 * KIB;
    unsigned char *bytes = large_payloads[0];
    fill_pattern(bytes, length, 1);
    int sent = 0;
    while (h->transports[0].close_calls == 0 && sent < 64) {
        harness_receive(h, 0, bytes, length / 2, true, true, false);
        harness_receive(h, 0, bytes + length / 2, length / 2, true, false, true);
        sent++;
    }
    assert_int_equal(h->transports[0].close_calls, 1);
    assert_int_equal(h->transports[0].close_code, 4008);
    assert_true(sent * length <= 16 * config.receiver_buffer_bytes);
    harness_closed(h, 0);
    assert_int_equal(relay_queued_bytes(h->relay), 0);
}

/* --- resume ----------------------------------------------------------------------------- */

static void send_resume(struct harness *h, int index, const char *code, const char *user_id,
                        const char *token)
{
    json_t *payload = json_pack("{s:s, s:s, s:s, s:s}", "room_code", code, "user_id", user_id,
                                "display_name", "Again", "resume_token", token);
    json_t *message = json_pack("{s:s, s:o}", "type", "resume", "payload", payload);
    char *text = json_dumps(message, JSON_COMPACT);
    json_decref(message);
    harness_text(h, index, text);
    free(text);
}

/* alice (with resume) and bob (without) in a room; returns alice's token (harness-owned). */
static const char *resumable_room(struct harness *h, char code[ROOM_CODE_LENGTH + 1])
{
    harness_open(h, 0, "10.0.0.1", false);
    harness_open(h, 1, "10.0.0.2", false);
    harness_text(h, 0,
                 "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"alice\","
                 "\"display_name\":\"Alice\",\"features\":[\"resume\"]}}");
    json_t *created = json_payload(harness_expect(h, 0, "room_created"));
    snprintf(code, ROOM_CODE_LENGTH + 1, "%s", json_text(created, "room_code"));
    const char *token = json_text(created, "resume_token");
    assert_int_equal(strlen(token), RESUME_TOKEN_HEX_LENGTH);
    assert_int_equal(strspn(token, "0123456789abcdef"), RESUME_TOKEN_HEX_LENGTH);
    harness_join(h, 1, code, "bob", "Bob", false);
    harness_drain_all_and_forget(h);
    return token;
}

static void test_resume_within_grace(void **state)
{
    struct harness *h = harness_of(state);
    char code[ROOM_CODE_LENGTH + 1];
    const char *token = resumable_room(h, code);
    harness_closed(h, 0);
    harness_expect_nothing(h, 1); /* away, not gone */
    assert_int_equal(relay_members_away(h->relay), 1);
    harness_tick(h, 20);
    harness_expect_nothing(h, 1);

    harness_open(h, 2, "10.0.0.1", false);
    send_resume(h, 2, code, "alice", token);
    json_t *joined = json_payload(harness_expect(h, 2, "room_joined"));
    assert_true(json_is_true(json_object_get(joined, "resumed")));
    assert_string_equal(json_text(joined, "room_code"), code);
    const char *both[] = {"alice", "bob"};
    assert_users(joined, both, 2);
    harness_expect_nothing(h, 1); /* the others are not told */
    assert_int_equal(relay_members_away(h->relay), 0);

    /* The resumed connection is alice: bob's messages reach it, and hers carry her name. */
    harness_text(h, 1, "{\"type\":\"hi\"}");
    harness_expect(h, 2, "hi");
    harness_text(h, 2, "{\"type\":\"back\"}");
    assert_string_equal(json_text(harness_expect(h, 1, "back"), "sender_id"), "alice");
    /* Past the old grace deadline nothing happens: she is connected. */
    harness_tick(h, 60);
    harness_expect_nothing(h, 1);
}

static void test_resume_grace_expires_with_user_left(void **state)
{
    struct harness *h = harness_of(state);
    char code[ROOM_CODE_LENGTH + 1];
    const char *token = resumable_room(h, code);
    harness_closed(h, 0);
    harness_tick(h, h->config.resume_grace_seconds - 1);
    harness_expect_nothing(h, 1);
    harness_tick(h, 2);
    json_t *left = json_payload(harness_expect(h, 1, "user_left"));
    assert_string_equal(json_text(left, "user_id"), "alice");
    const char *only_bob[] = {"bob"};
    assert_users(left, only_bob, 1);
    assert_int_equal(relay_members_away(h->relay), 0);

    /* A valid token still gets her back in, as a new member the others are told about. */
    harness_open(h, 2, "10.0.0.1", false);
    send_resume(h, 2, code, "alice", token);
    json_t *joined = json_payload(harness_expect(h, 2, "room_joined"));
    assert_true(json_is_true(json_object_get(joined, "resumed")));
    json_t *told = json_payload(harness_expect(h, 1, "user_joined"));
    assert_string_equal(json_text(told, "user_id"), "alice");
    assert_true(json_is_true(json_object_get(told, "resumed")));
}

static void test_room_of_away_members_survives_grace_then_goes(void **state)
{
    struct harness *h = harness_of(state);
    char code[ROOM_CODE_LENGTH + 1];
    resumable_room(h, code);
    harness_closed(h, 1); /* bob (no resume) leaves at once */
    harness_closed(h, 0);
    assert_int_equal(relay_room_count(h->relay), 1);
    harness_tick(h, h->config.resume_grace_seconds + 1);
    assert_int_equal(relay_room_count(h->relay), 0);
    assert_int_equal(relay_members_away(h->relay), 0);
}

static void test_resume_on_a_new_connection_closes_the_old_one(void **state)
{
    struct harness *h = harness_of(state);
    char code[ROOM_CODE_LENGTH + 1];
    const char *token = resumable_room(h, code);
    harness_open(h, 2, "10.0.0.1", false);
    send_resume(h, 2, code, "alice", token);
    harness_expect(h, 2, "room_joined");
    assert_int_equal(h->transports[0].close_calls, 1);
    assert_int_equal(h->transports[0].close_code, 1000);
    harness_closed(h, 0);
    harness_expect_nothing(h, 1); /* alice is still there, on connection 2 */
    harness_text(h, 1, "{\"type\":\"hi\"}");
    harness_expect(h, 2, "hi");
}

static void test_resume_reopens_room_after_restart(void **state)
{
    struct harness *h = harness_of(state);
    char code[ROOM_CODE_LENGTH + 1];
    const char *token = resumable_room(h, code);
    char saved_token[RESUME_TOKEN_HEX_LENGTH + 1];
    snprintf(saved_token, sizeof saved_token, "%s", token);
    harness_restart(h); /* same secret */
    assert_int_equal(relay_room_count(h->relay), 0);

    harness_open(h, 0, "10.0.0.1", false);
    send_resume(h, 0, code, "alice", saved_token);
    json_t *joined = json_payload(harness_expect(h, 0, "room_joined"));
    assert_true(json_is_true(json_object_get(joined, "resumed")));
    assert_string_equal(json_text(joined, "room_code"), code);
    assert_int_equal(relay_room_count(h->relay), 1);
    harness_open(h, 1, "10.0.0.2", false);
    harness_join(h, 1, code, "bob", "Bob", false);
}

static void test_bad_resume_token(void **state)
{
    struct harness *h = harness_of(state);
    char code[ROOM_CODE_LENGTH + 1];
    const char *token = resumable_room(h, code);
    harness_open(h, 2, "10.0.0.3", false);
    send_resume(h, 2, code, "mallory", token); /* alice's token, another user */
    harness_expect_error(h, 2, "INVALID_RESUME_TOKEN");
    char zeros[RESUME_TOKEN_HEX_LENGTH + 1];
    memset(zeros, '0', RESUME_TOKEN_HEX_LENGTH);
    zeros[RESUME_TOKEN_HEX_LENGTH] = '\0';
    send_resume(h, 2, code, "alice", zeros);
    harness_expect_error(h, 2, "INVALID_RESUME_TOKEN");
    send_resume(h, 2, "ZZZZZZ", "alice", token); /* right token, other room */
    harness_expect_error(h, 2, "INVALID_RESUME_TOKEN");
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_INVALID_RESUME_TOKEN], 3);
    assert_int_equal(relay_room_count(h->relay), 1);
    harness_expect_nothing(h, 0);
    harness_expect_nothing(h, 1);
    assert_int_equal(h->transports[0].close_calls, 0);
}

static void test_resume_token_matches_the_shared_vector(void **state)
{
    struct harness *h = harness_of(state);
    json_t *vectors = harness_protocol_vectors();
    json_t *vector = json_object_get(vectors, "resume_token");
    harness_unhex(json_text(vector, "secret_hex"), h->secret, sizeof h->secret);
    harness_restart(h);
    /* A fresh relay re-opens the vector's room for the vector's token... */
    harness_open(h, 0, NULL, false);
    send_resume(h, 0, json_text(vector, "room_code"), json_text(vector, "user_id"),
                json_text(vector, "token_hex"));
    json_t *joined = json_payload(harness_expect(h, 0, "room_joined"));
    assert_string_equal(json_text(joined, "room_code"), json_text(vector, "room_code"));
    /* ...and hands out exactly that token. */
    assert_string_equal(json_text(joined, "resume_token"), json_text(vector, "token_hex"));
    json_decref(vectors);
}

/* --- flow control ------------------------------------------------------------------------ */

static void flow_config(struct relay_config *config)
{
    harness_config(config);
    config->receiver_buffer_bytes = 64 * KIB;
}

static void test_slow_receiver_throttles_sender(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    flow_config(&config);
    use_config(h, &config);
    room_with(h, 2, false);
    size_t piece = 32 * KIB, length = 1024 * KIB;
    unsigned char *bytes = large_payloads[0];
    fill_pattern(bytes, length, 11);

    /* Bob does not write: after the backlog passes 64 KiB alice is paused, not before. */
    harness_receive(h, 0, bytes, piece, true, true, false);
    harness_receive(h, 0, bytes + piece, piece, true, false, false);
    assert_int_equal(h->transports[0].pause_calls, 0);
    harness_receive(h, 0, bytes + 2 * piece, piece, true, false, false);
    assert_int_equal(h->transports[0].pause_calls, 1);
    assert_true(h->transports[0].paused);
    assert_int_equal(relay_metrics(h->relay)->senders_throttled_total, 1);
    size_t sent = 3 * piece;

    /* Bob writes one frame at a time until alice may go on; she is let go only once bob has
     * caught up below the limit. */
    size_t guard = 0;
    while (h->transports[0].paused) {
        assert_int_equal(harness_write_steps(h, 1, 1), 1);
        assert_true(++guard < 100);
    }
    assert_int_equal(h->transports[0].resume_calls, 1);
    assert_true(relay_queued_bytes(h->relay) <= config.receiver_buffer_bytes);

    /* The rest goes through with bob writing whenever alice is paused. */
    guard = 0;
    while (sent < length) {
        assert_true(++guard < 10000);
        if (h->transports[0].paused) {
            assert_int_equal(harness_write_steps(h, 1, 1), 1);
            continue;
        }
        harness_receive(h, 0, bytes + sent, piece, true, false, sent + piece == length);
        sent += piece;
    }
    expect_binary_equal(h, 1, bytes, length);
    assert_false(h->transports[0].paused);
    assert_int_equal(relay_queued_bytes(h->relay), 0);
    assert_int_equal(h->transports[1].close_calls, 0);
}

static void test_two_senders_two_receivers_no_deadlock(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    flow_config(&config);
    use_config(h, &config);
    h->speaks_frames = true; /* (use_config starts a new harness) */
    room_with(h, 4, false);  /* alice and bob send to carol and dave */
    const char *to[] = {"carol", "dave", NULL};
    size_t length = 2048 * KIB, piece = 24 * KIB;
    unsigned char *messages[2];
    size_t sent[2] = {0, 0};
    for (int s = 0; s < 2; s++) {
        messages[s] = large_payloads[s];
        fill_pattern(messages[s], length, 20 + (unsigned)s);
        make_header(messages[s], users[s], to);
    }
    size_t rounds = 0;
    while (sent[0] < length || sent[1] < length) {
        assert_true(++rounds < 20000); /* a deadlock would spin here */
        bool progress = false;
        for (int s = 0; s < 2; s++) {
            if (sent[s] == length || h->transports[s].paused)
                continue;
            size_t n = length - sent[s] < piece ? length - sent[s] : piece;
            harness_receive(h, s, messages[s] + sent[s], n, true, sent[s] == 0,
                            sent[s] + n == length);
            sent[s] += n;
            progress = true;
        }
        /* Receivers take turns, one frame each. */
        progress |= harness_write_steps(h, 2, 1) > 0;
        progress |= harness_write_steps(h, 3, 1) > 0;
        assert_true(progress);
    }
    for (int r = 2; r < 4; r++) {
        harness_drain(h, r);
        assert_int_equal(h->receivers[r].inbox_count, 2);
        for (size_t m = 0; m < 2; m++) {
            struct received *got = &h->receivers[r].inbox[m];
            assert_int_equal(got->length, length);
            int s = memcmp(got->bytes + FRAME_HEADER_FIXED_SIZE, "alice", 5) == 0 ? 0 : 1;
            assert_memory_equal(got->bytes, messages[s], length);
        }
        assert_memory_not_equal(h->receivers[r].inbox[0].bytes + FRAME_HEADER_FIXED_SIZE,
                                h->receivers[r].inbox[1].bytes + FRAME_HEADER_FIXED_SIZE, 3);
    }
    harness_expect_nothing(h, 0);
    harness_expect_nothing(h, 1);
    assert_false(h->transports[0].paused);
    assert_false(h->transports[1].paused);
    assert_int_equal(relay_queued_bytes(h->relay), 0);
}

static void test_drop_policy_closes_slow_receiver(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    flow_config(&config);
    config.flow_policy = FLOW_DROP_RECEIVER;
    use_config(h, &config);
    room_with(h, 3, false); /* bob never writes, carol does */
    size_t piece = 32 * KIB, length = 512 * KIB;
    unsigned char *bytes = large_payloads[0];
    fill_pattern(bytes, length, 12);
    for (size_t sent = 0; sent < length; sent += piece) {
        harness_receive(h, 0, bytes + sent, piece, true, sent == 0, sent + piece == length);
        harness_write_steps(h, 2, SIZE_MAX);
        if (sent == 2 * piece) { /* 96 KiB queued for bob */
            assert_int_equal(h->transports[1].close_calls, 1);
            assert_int_equal(h->transports[1].close_code, 4008);
            harness_closed(h, 1);
        }
    }
    assert_int_equal(h->transports[0].pause_calls, 0);
    expect_binary_equal(h, 2, bytes, length);
    harness_expect(h, 0, "user_left");
    harness_expect(h, 2, "user_left");
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_SLOW_RECEIVER], 1);
    assert_int_equal(relay_queued_bytes(h->relay), 0);
}

static void test_slow_receiver_timeout_closes_4008(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    flow_config(&config);
    config.slow_receiver_timeout_seconds = 15;
    use_config(h, &config);
    room_with(h, 2, false);
    unsigned char bytes[32 * KIB];
    fill_pattern(bytes, sizeof bytes, 13);
    for (int i = 0; i < 3; i++)
        harness_receive(h, 0, bytes, sizeof bytes, true, i == 0, false);
    assert_true(h->transports[0].paused);
    harness_tick(h, 10);
    assert_int_equal(h->transports[1].close_calls, 0);
    harness_tick(h, 6);
    assert_int_equal(h->transports[1].close_calls, 1);
    assert_int_equal(h->transports[1].close_code, 4008);
    assert_false(h->transports[0].paused); /* the sender goes on */
    assert_int_equal(h->transports[0].close_calls, 0);
}

static void test_throttled_sender_is_not_idle(void **state)
{
    /* While the relay itself stops reading from a sender (throttled behind a slow but moving
     * receiver), the sender's silence is the relay's doing, not the client's idleness. */
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.receiver_buffer_bytes = 1024 * KIB;
    config.idle_timeout_seconds = 90;
    config.slow_receiver_timeout_seconds = 15;
    use_config(h, &config);
    room_with(h, 2, false);
    size_t piece = 32 * KIB;
    unsigned char *bytes = large_payloads[0];
    fill_pattern(bytes, piece, 14);
    bool first = true;
    while (!h->transports[0].paused) {
        harness_receive(h, 0, bytes, piece, true, first, false);
        first = false;
        assert_true(relay_queued_bytes(h->relay) < 4 * config.receiver_buffer_bytes);
    }
    /* Bob writes one frame every 10 s: progress, but slower than the idle timeout needs. */
    for (int step = 0; step < 12; step++) {
        harness_tick(h, 10);
        relay_heard(h->connections[1], h->now); /* bob answers pings */
        assert_int_equal(harness_write_steps(h, 1, 1), 1);
        assert_true(h->transports[0].paused); /* still over half the buffer: still throttled */
    }
    assert_true(h->now - HARNESS_START_TIME > config.idle_timeout_seconds);
    assert_int_equal(h->transports[1].close_calls, 0);
    if (h->transports[0].close_calls)
        fail_msg("the throttled sender was closed with %d", h->transports[0].close_code);
}

/* --- timers and shutdown ------------------------------------------------------------------ */

static void test_idle_timeout_closes_1001(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.idle_timeout_seconds = 90;
    use_config(h, &config);
    harness_open(h, 0, NULL, false);
    harness_open(h, 1, NULL, false);
    harness_tick(h, 60);
    relay_heard(h->connections[1], h->now); /* a pong */
    harness_tick(h, 29);
    assert_int_equal(h->transports[0].close_calls, 0);
    harness_tick(h, 2);
    assert_int_equal(h->transports[0].close_calls, 1);
    assert_int_equal(h->transports[0].close_code, 1001);
    assert_int_equal(h->transports[1].close_calls, 0);
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_IDLE_TIMEOUT], 1);
}

static void test_pings_at_the_interval(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.ping_interval_seconds = 30;
    use_config(h, &config);
    harness_open(h, 0, NULL, false);
    harness_tick(h, 29);
    assert_int_equal(h->transports[0].ping_calls, 0);
    harness_tick(h, 1);
    assert_int_equal(h->transports[0].ping_calls, 1);
    harness_tick(h, 15);
    assert_int_equal(h->transports[0].ping_calls, 1);
    harness_tick(h, 15);
    assert_int_equal(h->transports[0].ping_calls, 2);
}

static void test_close_all_closes_every_connection_1001(void **state)
{
    struct harness *h = harness_of(state);
    char code[ROOM_CODE_LENGTH + 1];
    resumable_room(h, code);
    harness_open(h, 2, NULL, false);
    relay_close_all(h->relay, 1001, "shutting down");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(h->transports[i].close_calls, 1);
        assert_int_equal(h->transports[i].close_code, 1001);
        harness_closed(h, i);
    }
    /* Shutting down, even resumable members are gone, not away. */
    assert_int_equal(relay_members_away(h->relay), 0);
    assert_int_equal(relay_room_count(h->relay), 0);
    assert_int_equal(relay_connection_count(h->relay), 0);
}

/* --- LAN mode: one session, members talk only to its host ------------------------------- */

#define LAN_TOKEN "lan-host-token-0123456789"

static void start_lan_session(struct harness *h)
{
    struct relay_config config;
    harness_config(&config);
    snprintf(config.lan_host_token, sizeof config.lan_host_token, "%s", LAN_TOKEN);
    config.lan_mode = true;
    use_config(h, &config);
    harness_open(h, 0, "127.0.0.1", false);
    harness_text(h, 0,
                 "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"hub\",\"host_token\":\""
                 "wrong-token\"}}");
    harness_expect_error(h, 0, "LAN_SESSION");
    harness_text(h, 0,
                 "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"hub\",\"display_name\":"
                 "\"Host\",\"features\":[\"frame_header\"],\"host_token\":\"" LAN_TOKEN "\"}}");
    harness_expect(h, 0, "room_created");
}

static void say_hello(struct harness *h, int index, const char *user_id)
{
    char text[160];
    snprintf(text, sizeof text,
             "{\"type\":\"hello\",\"payload\":{\"user_id\":\"%s\",\"display_name\":\"%s\","
             "\"features\":[\"frame_header\"]}}",
             user_id, user_id);
    harness_text(h, index, text);
    json_t *joined = json_payload(harness_expect(h, 0, "user_joined"));
    assert_string_equal(json_text(joined, "user_id"), user_id);
    harness_expect_nothing(h, index); /* the host, not the relay, answers with welcome */
}

static void test_lan_members_talk_only_to_the_host(void **state)
{
    struct harness *h = harness_of(state);
    start_lan_session(h);
    harness_open(h, 1, "10.0.0.2", false);
    harness_open(h, 2, "10.0.0.3", false);
    say_hello(h, 1, "alice");
    say_hello(h, 2, "bob");
    harness_expect_nothing(h, 1); /* alice hears nothing of bob's arrival from the relay */

    harness_text(h, 1, "{\"type\":\"weights_push\"}");
    assert_string_equal(harness_expect_text(h, 0),
                        "{\"type\":\"weights_push\",\"sender_id\":\"alice\",\"sender_name\":"
                        "\"alice\"}");
    harness_expect_nothing(h, 2);
    harness_text(h, 1, "{\"type\":\"chat\",\"to\":[\"bob\"]}"); /* not even when named */
    harness_expect_nothing(h, 2);
    harness_expect_nothing(h, 0);

    harness_text(h, 0, "{\"type\":\"welcome\",\"to\":[\"alice\"]}");
    harness_expect(h, 1, "welcome");
    harness_expect_nothing(h, 2);
    harness_text(h, 0, "{\"type\":\"user_list\"}");
    harness_expect(h, 1, "user_list");
    harness_expect(h, 2, "user_list");

    unsigned char message[FRAME_HEADER_MAX_SIZE + 300];
    size_t header = make_header(message, "alice", NULL);
    fill_pattern(message + header, 300, 5);
    harness_binary(h, 1, message, header + 300, 100);
    expect_binary_equal(h, 0, message, header + 300);
    harness_expect_nothing(h, 2);
    header = make_header(message, "hub", NULL);
    harness_binary(h, 0, message, header + 300, 300);
    expect_binary_equal(h, 1, message, header + 300);
    expect_binary_equal(h, 2, message, header + 300);
}

static void test_lan_session_has_one_host_and_refuses_rooms(void **state)
{
    struct harness *h = harness_of(state);
    start_lan_session(h);
    harness_open(h, 1, "10.0.0.2", false);
    harness_text(
        h, 1,
        "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"x\",\"host_token\":\"" LAN_TOKEN
        "\"}}");
    harness_expect_error(h, 1, "LAN_HOST_TAKEN");
    harness_text(h, 1,
                 "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"ABCDEF\","
                 "\"user_id\":\"x\"}}");
    harness_expect_error(h, 1, "LAN_SESSION");
    harness_text(h, 1, "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"x\"}}");
    harness_expect_error(h, 1, "LAN_SESSION");
    char code[ROOM_CODE_LENGTH + 1];
    assert_string_equal(relay_reserve_room(h->relay, "10.0.0.2", h->now, code), "LAN_SESSION");
    harness_text(h, 1, "{\"type\":\"hello\",\"payload\":{}}");
    assert_string_equal(json_text(harness_expect_error(h, 1, "INVALID_FIELD"), "field"), "user_id");
}

static void test_lan_host_leaving_ends_the_session(void **state)
{
    struct harness *h = harness_of(state);
    start_lan_session(h);
    harness_open(h, 1, "10.0.0.2", false);
    harness_open(h, 2, "10.0.0.3", false);
    say_hello(h, 1, "alice");
    say_hello(h, 2, "bob");
    harness_closed(h, 1);
    json_t *left = json_payload(harness_expect(h, 0, "user_left"));
    assert_string_equal(json_text(left, "user_id"), "alice");
    harness_expect_nothing(h, 2);

    harness_closed(h, 0);
    assert_int_equal(h->transports[2].close_calls, 1);
    assert_int_equal(h->transports[2].close_code, 1001);
    harness_closed(h, 2);
    assert_int_equal(relay_room_count(h->relay), 0);
    harness_open(h, 3, "10.0.0.4", false);
    harness_text(h, 3, "{\"type\":\"hello\",\"payload\":{\"user_id\":\"carol\"}}");
    harness_expect_error(h, 3, "NO_HOST");
}

static void test_reserved_room_is_joinable_then_expires(void **state)
{
    struct harness *h = harness_of(state);
    char first[ROOM_CODE_LENGTH + 1], second[ROOM_CODE_LENGTH + 1];
    assert_null(relay_reserve_room(h->relay, "10.0.0.1", h->now, first));
    assert_null(relay_reserve_room(h->relay, "10.0.0.1", h->now, second));
    assert_int_equal(relay_room_count(h->relay), 2);
    harness_tick(h, 60);
    harness_open(h, 0, "10.0.0.2", false);
    json_t *joined = harness_join(h, 0, first, "bob", "Bob", false);
    const char *only_bob[] = {"bob"};
    assert_users(joined, only_bob, 1);
    harness_tick(h, 59);
    assert_int_equal(relay_room_count(h->relay), 2);
    harness_tick(h, 2); /* 121 s after reservation */
    assert_int_equal(relay_room_count(h->relay), 1);
    harness_open(h, 1, "10.0.0.3", false);
    char text[256];
    snprintf(text, sizeof text,
             "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"c\"}}",
             second);
    harness_text(h, 1, text);
    harness_expect_error(h, 1, "ROOM_NOT_FOUND");
    harness_join(h, 1, first, "carol", "Carol", false); /* the joined one lives on */
}

int run_core_tests(size_t *test_count)
{
#define CORE_TEST(name) cmocka_unit_test_setup_teardown(name, start, stop)
    const struct CMUnitTest tests[] = {
        CORE_TEST(test_room_created_code_and_relay_info),
        CORE_TEST(test_reserved_codes_are_unique_and_from_the_alphabet),
        CORE_TEST(test_join_with_lower_case_code),
        CORE_TEST(test_join_unknown_room),
        CORE_TEST(test_one_room_per_connection),
        CORE_TEST(test_disconnect_sends_user_left_and_deletes_empty_room),
        CORE_TEST(test_room_full),
        CORE_TEST(test_too_many_rooms),
        CORE_TEST(test_max_connections),
        CORE_TEST(test_join_rate_limited_then_allowed),
        CORE_TEST(test_correct_codes_never_spend_the_join_budget),
        CORE_TEST(test_relay_wide_budget_of_failed_joins),
        CORE_TEST(test_resume_is_not_limited_by_the_join_budget),
        CORE_TEST(test_text_forwarded_with_sender_spliced),
        CORE_TEST(test_sender_name_is_json_escaped),
        CORE_TEST(test_client_sender_fields_are_overridden),
        CORE_TEST(test_messages_outside_a_room_are_dropped),
        CORE_TEST(test_directed_text),
        CORE_TEST(test_invalid_json),
        CORE_TEST(test_json_that_is_not_a_message),
        CORE_TEST(test_invalid_fields),
        CORE_TEST(test_text_over_max_text_size_closes_1009),
        CORE_TEST(test_binary_streamed_to_every_other_member),
        CORE_TEST(test_short_binary_without_the_magic_is_forwarded),
        CORE_TEST(test_directed_binary_by_header),
        CORE_TEST(test_binaries_reach_only_members_that_read_their_format),
        CORE_TEST(test_header_one_byte_per_receive),
        CORE_TEST(test_header_naming_another_sender_is_refused),
        CORE_TEST(test_binary_over_max_message_size_closes_1009),
        CORE_TEST(test_sender_leaving_mid_message_ends_it),
        CORE_TEST(test_echo_returns_everything_unchanged),
        CORE_TEST(test_echo_that_never_reads_is_bounded),
        CORE_TEST(test_resume_within_grace),
        CORE_TEST(test_resume_grace_expires_with_user_left),
        CORE_TEST(test_room_of_away_members_survives_grace_then_goes),
        CORE_TEST(test_resume_on_a_new_connection_closes_the_old_one),
        CORE_TEST(test_resume_reopens_room_after_restart),
        CORE_TEST(test_bad_resume_token),
        CORE_TEST(test_resume_token_matches_the_shared_vector),
        CORE_TEST(test_slow_receiver_throttles_sender),
        CORE_TEST(test_two_senders_two_receivers_no_deadlock),
        CORE_TEST(test_drop_policy_closes_slow_receiver),
        CORE_TEST(test_slow_receiver_timeout_closes_4008),
        CORE_TEST(test_throttled_sender_is_not_idle),
        CORE_TEST(test_idle_timeout_closes_1001),
        CORE_TEST(test_pings_at_the_interval),
        CORE_TEST(test_close_all_closes_every_connection_1001),
        CORE_TEST(test_reserved_room_is_joinable_then_expires),
        CORE_TEST(test_lan_members_talk_only_to_the_host),
        CORE_TEST(test_lan_session_has_one_host_and_refuses_rooms),
        CORE_TEST(test_lan_host_leaving_ends_the_session),
    };
#undef CORE_TEST
    return UNIT_RUN_GROUP("core", tests, NULL, NULL, test_count);
}
