/* test_quota.c — what one client address may hold, through the core without sockets: sockets and
 * unfinished handshakes (relay_socket_*), rooms (live, in their resume grace, or reserved) and
 * room creations per minute; IPv6 addresses count per /64. Also address_count on its own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "address_count.h"
#include "core_harness.h"
#include "unit.h"

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

static void use_config(struct harness *h, const struct relay_config *config)
{
    harness_stop(h);
    harness_start(h, config);
}

static void test_address_count_takes_up_to_the_limit_and_forgets_at_zero(void **state)
{
    struct address_count *counts = address_count_create();
    assert_non_null(counts);
    assert_true(address_count_take(counts, "192.0.2.1", 2));
    assert_true(address_count_take(counts, "192.0.2.1", 2));
    assert_false(address_count_take(counts, "192.0.2.1", 2));
    assert_int_equal(address_count_get(counts, "192.0.2.1"), 2);
    /* One /64 is one address; its neighbour is another. */
    assert_true(address_count_take(counts, "2001:db8:0:1::1", 2));
    assert_true(address_count_take(counts, "2001:db8:0:1:ffff::2", 2));
    assert_false(address_count_take(counts, "2001:db8:0:1::3", 2));
    assert_true(address_count_take(counts, "2001:db8:0:2::1", 2));
    assert_int_equal(address_count_addresses(counts), 3);
    address_count_release(counts, "192.0.2.1");
    address_count_release(counts, "192.0.2.1");
    address_count_release(counts, "192.0.2.1"); /* one too many: harmless */
    assert_int_equal(address_count_get(counts, "192.0.2.1"), 0);
    assert_int_equal(address_count_addresses(counts), 2);
    assert_false(address_count_take(counts, "192.0.2.9", 0));
    address_count_destroy(counts);
}

static void test_handshakes_per_address(void **state)
{
    struct harness *h = harness_of(state);
    unsigned cap = h->config.max_handshakes_per_address;
    assert_int_equal(cap, 8);
    for (unsigned i = 0; i < cap; i++)
        assert_true(relay_socket_accepted(h->relay, "198.51.100.7", h->now));
    /* 300 more silent sockets from that address are refused at once, never queued... */
    for (int i = 0; i < 300; i++)
        assert_false(relay_socket_accepted(h->relay, "198.51.100.7", h->now));
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_HANDSHAKES_PER_ADDRESS], 300);
    /* ...while another address is let through. */
    assert_true(relay_socket_accepted(h->relay, "198.51.100.8", h->now));
    /* A finished handshake, or a closed socket, frees a place. */
    relay_socket_upgraded(h->relay, "198.51.100.7");
    assert_true(relay_socket_accepted(h->relay, "198.51.100.7", h->now));
    assert_false(relay_socket_accepted(h->relay, "198.51.100.7", h->now));
    relay_socket_closed(h->relay, "198.51.100.7", true);
    assert_true(relay_socket_accepted(h->relay, "198.51.100.7", h->now));
    /* The upgraded socket closing frees no handshake place, only its socket. */
    relay_socket_closed(h->relay, "198.51.100.7", false);
    assert_false(relay_socket_accepted(h->relay, "198.51.100.7", h->now));
    assert_int_equal(relay_metrics(h->relay)->sockets_accepted_total, cap + 3);
}

static void test_open_connections_per_address(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.max_connections_per_address = 20;
    use_config(h, &config);
    /* Twenty sockets that finished their handshakes: a lab behind one address. */
    for (int i = 0; i < 20; i++) {
        assert_true(relay_socket_accepted(h->relay, "2001:db8:5::1", h->now));
        relay_socket_upgraded(h->relay, "2001:db8:5::1");
    }
    /* The /64 holds its share, whatever the interface id. */
    assert_false(relay_socket_accepted(h->relay, "2001:db8:5::ffff", h->now));
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_CONNECTIONS_PER_ADDRESS], 1);
    assert_true(relay_socket_accepted(h->relay, "2001:db8:6::1", h->now));
    relay_socket_closed(h->relay, "2001:db8:5::1", false);
    assert_true(relay_socket_accepted(h->relay, "2001:db8:5::2", h->now));
}

/* create_room and drop the connection, `attempts` times from `address` on connection 0 (with
 * resume, so every room outlives its creator in the grace period); returns the rooms made. */
static int create_and_drop(struct harness *h, const char *address, int attempts)
{
    int created = 0;
    for (int i = 0; i < attempts; i++) {
        harness_open(h, 0, address, false);
        harness_text(h, 0,
                     "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"u\","
                     "\"features\":[\"resume\"]}}");
        json_t *answer = json_loads(harness_expect_text(h, 0), 0, NULL);
        assert_non_null(answer);
        const char *type = json_string_value(json_object_get(answer, "type"));
        if (!strcmp(type, "room_created")) {
            created++;
        } else {
            const char *code = json_text(json_payload(answer), "code");
            assert_true(!strcmp(code, "RATE_LIMITED") || !strcmp(code, "TOO_MANY_ROOMS"));
        }
        json_decref(answer);
        harness_closed(h, 0);
    }
    return created;
}

static void test_rooms_per_address_count_rooms_in_their_grace(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.rooms_created_per_minute = 1000; /* this test is about the quota alone */
    use_config(h, &config);
    assert_int_equal(create_and_drop(h, "203.0.113.5", 300), 64);
    assert_int_equal(relay_room_count(h->relay), 64);
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_ROOMS_PER_ADDRESS], 236);
    /* Another address still creates; reservations from the full one are refused too. */
    assert_int_equal(create_and_drop(h, "203.0.113.6", 1), 1);
    char code[ROOM_CODE_LENGTH + 1];
    assert_string_equal(relay_reserve_room(h->relay, "203.0.113.5", h->now, code),
                        "TOO_MANY_ROOMS_FOR_ADDRESS");
    /* When the grace periods end the rooms go, and so does the address's count. */
    harness_tick(h, h->config.resume_grace_seconds + 1);
    assert_int_equal(relay_room_count(h->relay), 0);
    assert_int_equal(create_and_drop(h, "203.0.113.5", 1), 1);
}

static void test_defaults_hold_300_attempts_under_the_quota(void **state)
{
    struct harness *h = harness_of(state);
    int created = create_and_drop(h, "203.0.113.5", 300);
    assert_true(created > 0);
    assert_true(created <= (int)h->config.max_rooms_per_address);
    assert_int_equal(create_and_drop(h, "203.0.113.6", 1), 1);
}

static void test_reserved_rooms_count_against_their_address(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.rooms_created_per_minute = 1000;
    config.max_rooms_per_address = 10;
    use_config(h, &config);
    char code[ROOM_CODE_LENGTH + 1];
    int reserved = 0;
    for (int i = 0; i < 300; i++)
        if (!relay_reserve_room(h->relay, "2001:db8:9::1", h->now, code))
            reserved++;
    assert_int_equal(reserved, 10);
    /* The same /64 is the same address; a WebSocket create_room from it is refused too. */
    assert_string_equal(relay_reserve_room(h->relay, "2001:db8:9::abcd", h->now, code),
                        "TOO_MANY_ROOMS_FOR_ADDRESS");
    assert_int_equal(create_and_drop(h, "2001:db8:9::2", 1), 0);
    assert_null(relay_reserve_room(h->relay, "2001:db8:a::1", h->now, code));
    /* Unused reservations expire (120 s) and give the address its quota back. */
    harness_tick(h, 121);
    assert_null(relay_reserve_room(h->relay, "2001:db8:9::1", h->now, code));
}

static void test_room_creations_per_minute(void **state)
{
    struct harness *h = harness_of(state);
    struct relay_config config;
    harness_config(&config);
    config.rooms_created_per_minute = 5;
    use_config(h, &config);
    char code[ROOM_CODE_LENGTH + 1];
    /* Rooms dropped at once (no resume) hold no quota, but creating them is rate limited,
     * over WebSocket and HTTP alike. */
    harness_open(h, 0, "203.0.113.9", false);
    for (int i = 0; i < 4; i++) {
        harness_text(h, 0, "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"u\"}}");
        harness_expect(h, 0, "room_created");
    }
    assert_null(relay_reserve_room(h->relay, "203.0.113.9", h->now, code));
    assert_string_equal(relay_reserve_room(h->relay, "203.0.113.9", h->now, code), "RATE_LIMITED");
    harness_text(h, 0, "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"u\"}}");
    json_t *limited = harness_expect_error(h, 0, "RATE_LIMITED");
    assert_true(json_integer_value(json_object_get(limited, "retry_after")) > 0);
    assert_null(relay_reserve_room(h->relay, "203.0.113.10", h->now, code));
}

int run_quota_tests(size_t *test_count)
{
#define QUOTA_TEST(name) cmocka_unit_test_setup_teardown(name, start, stop)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_address_count_takes_up_to_the_limit_and_forgets_at_zero),
        QUOTA_TEST(test_handshakes_per_address),
        QUOTA_TEST(test_open_connections_per_address),
        QUOTA_TEST(test_rooms_per_address_count_rooms_in_their_grace),
        QUOTA_TEST(test_defaults_hold_300_attempts_under_the_quota),
        QUOTA_TEST(test_reserved_rooms_count_against_their_address),
        QUOTA_TEST(test_room_creations_per_minute),
    };
#undef QUOTA_TEST
    return UNIT_RUN_GROUP("quota", tests, NULL, NULL, test_count);
}
