/* test_identity.c — who is who in a room, through the core without sockets: a user_id held by a
 * member (connected or away) cannot be taken by a join, and the relay attests the room's creator
 * as `host_id` in every membership message, across resumes and restarts (docs/protocol.md,
 * "Identity and the attested host"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_harness.h"
#include "resume_token.h"
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

static void send_join(struct harness *h, int index, const char *code, const char *user_id)
{
    char text[256];
    snprintf(text, sizeof text,
             "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"%s\"}}", code,
             user_id);
    harness_text(h, index, text);
}

static void send_resume(struct harness *h, int index, const char *code, const char *user_id,
                        const char *token)
{
    char text[512];
    snprintf(text, sizeof text,
             "{\"type\":\"resume\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"%s\","
             "\"resume_token\":\"%s\"}}",
             code, user_id, token);
    harness_text(h, index, text);
}

/* The payload's host_id: the string, or NULL for JSON null (asserted present either way). */
static const char *host_id(json_t *payload)
{
    json_t *value = json_object_get(payload, "host_id");
    assert_non_null(value);
    if (json_is_null(value))
        return NULL;
    assert_true(json_is_string(value));
    return json_string_value(value);
}

static void test_join_with_a_connected_members_id_is_refused(void **state)
{
    struct harness *h = harness_of(state);
    harness_open(h, 0, "10.0.0.1", false);
    harness_open(h, 1, "10.0.0.2", false);
    harness_open(h, 2, "10.0.0.3", false);
    const char *code = harness_create_room(h, 0, "host", "Host", false);
    harness_join(h, 1, code, "bob", "Bob", false);
    harness_drain_all_and_forget(h);

    send_join(h, 2, code, "host");
    harness_expect_error(h, 2, "USER_ID_TAKEN");
    send_join(h, 2, code, "bob");
    harness_expect_error(h, 2, "USER_ID_TAKEN");
    assert_int_equal(relay_metrics(h->relay)->rejected[REJECT_USER_ID_TAKEN], 2);
    /* Nobody in the room heard of the attempt, and directed text still reaches the host only. */
    harness_expect_nothing(h, 0);
    harness_expect_nothing(h, 1);
    harness_text(h, 1, "{\"type\":\"weights_push\",\"to\":[\"host\"]}");
    harness_expect(h, 0, "weights_push");
    harness_expect_nothing(h, 2);
    /* A free id gets in. */
    json_t *joined = harness_join(h, 2, code, "carol", "Carol", false);
    assert_int_equal(json_array_size(json_object_get(joined, "users")), 3);
}

static void test_away_members_id_is_kept_for_its_resume(void **state)
{
    struct harness *h = harness_of(state);
    harness_open(h, 0, "10.0.0.1", false);
    harness_open(h, 1, "10.0.0.2", false);
    const char *code = harness_create_room(h, 0, "host", "Host", false);
    json_t *joined = harness_join(h, 1, code, "bob", "Bob", true);
    char token[RESUME_TOKEN_HEX_LENGTH + 1];
    snprintf(token, sizeof token, "%s", json_text(joined, "resume_token"));
    harness_closed(h, 1); /* bob is away, within his grace period */

    harness_open(h, 2, "10.0.0.3", false);
    send_join(h, 2, code, "bob");
    harness_expect_error(h, 2, "USER_ID_TAKEN");
    /* Bob himself comes back with his token. */
    harness_open(h, 3, "10.0.0.2", false);
    send_resume(h, 3, code, "bob", token);
    harness_expect(h, 3, "room_joined");
    /* Once he left for good, his id is free again. */
    harness_text(h, 3, "{\"type\":\"leave_room\"}");
    harness_drain_all_and_forget(h);
    harness_join(h, 2, code, "bob", "Another Bob", false);
}

static void test_host_id_in_every_membership_message(void **state)
{
    struct harness *h = harness_of(state);
    harness_open(h, 0, "10.0.0.1", false);
    harness_open(h, 1, "10.0.0.2", false);
    harness_open(h, 2, "10.0.0.3", false);
    harness_text(h, 0, "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"host\"}}");
    json_t *created = json_payload(harness_expect(h, 0, "room_created"));
    assert_string_equal(host_id(created), "host");
    const char *code = json_text(created, "room_code");

    /* Join order does not decide who the host is. */
    assert_string_equal(host_id(harness_join(h, 1, code, "aaron", "", false)), "host");
    assert_string_equal(host_id(json_payload(harness_expect(h, 0, "user_joined"))), "host");
    harness_join(h, 2, code, "zoe", "", false);
    harness_drain_all_and_forget(h);
    harness_closed(h, 1);
    assert_string_equal(host_id(json_payload(harness_expect(h, 0, "user_left"))), "host");
    harness_drain_all_and_forget(h);

    /* The creator leaves: nobody inherits the attestation, and its id cannot bring it back. */
    harness_closed(h, 0);
    json_t *left = json_payload(harness_expect(h, 2, "user_left"));
    assert_string_equal(json_text(left, "user_id"), "host");
    assert_null(host_id(left));
    harness_open(h, 3, "10.0.0.4", false);
    assert_null(host_id(harness_join(h, 3, code, "host", "", false)));
    assert_null(host_id(json_payload(harness_expect(h, 2, "user_joined"))));
}

static void test_creator_token_reattests_the_host_after_a_restart(void **state)
{
    struct harness *h = harness_of(state);
    harness_open(h, 0, "10.0.0.1", false);
    harness_open(h, 1, "10.0.0.2", false);
    harness_text(h, 0,
                 "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"host\","
                 "\"features\":[\"resume\"]}}");
    json_t *created = json_payload(harness_expect(h, 0, "room_created"));
    char code[ROOM_CODE_LENGTH + 1], host_token[RESUME_TOKEN_HEX_LENGTH + 1],
        bob_token[RESUME_TOKEN_HEX_LENGTH + 1];
    snprintf(code, sizeof code, "%s", json_text(created, "room_code"));
    snprintf(host_token, sizeof host_token, "%s", json_text(created, "resume_token"));
    snprintf(bob_token, sizeof bob_token, "%s",
             json_text(harness_join(h, 1, code, "bob", "", true), "resume_token"));
    /* The creator's token is of its own kind: a member's token for the same id is another. */
    char member_form[RESUME_TOKEN_HEX_LENGTH + 1];
    assert_true(resume_token_make(h->secret, sizeof h->secret, code, "host", member_form));
    assert_string_not_equal(host_token, member_form);

    harness_restart(h);
    /* Bob is back first: the room re-opens with no attested host... */
    harness_open(h, 1, "10.0.0.2", false);
    send_resume(h, 1, code, "bob", bob_token);
    assert_null(host_id(json_payload(harness_expect(h, 1, "room_joined"))));
    /* ...until the creator proves itself with its token. */
    harness_open(h, 0, "10.0.0.1", false);
    send_resume(h, 0, code, "host", host_token);
    json_t *joined = json_payload(harness_expect(h, 0, "room_joined"));
    assert_string_equal(host_id(joined), "host");
    assert_string_equal(json_text(joined, "resume_token"), host_token);
    json_t *told = json_payload(harness_expect(h, 1, "user_joined"));
    assert_string_equal(host_id(told), "host");
}

static void test_member_token_does_not_make_a_host(void **state)
{
    struct harness *h = harness_of(state);
    /* Someone who joined under the creator's id after it left holds a member token only. */
    harness_open(h, 0, "10.0.0.1", false);
    harness_open(h, 1, "10.0.0.2", false);
    const char *created_code = harness_create_room(h, 0, "host", "", false);
    char code[ROOM_CODE_LENGTH + 1];
    snprintf(code, sizeof code, "%s", created_code);
    harness_join(h, 1, code, "bob", "", false);
    harness_closed(h, 0);
    harness_open(h, 2, "10.0.0.3", false);
    json_t *joined = harness_join(h, 2, code, "host", "", true);
    char token[RESUME_TOKEN_HEX_LENGTH + 1];
    snprintf(token, sizeof token, "%s", json_text(joined, "resume_token"));
    harness_restart(h);
    harness_open(h, 2, "10.0.0.3", false);
    send_resume(h, 2, code, "host", token);
    assert_null(host_id(json_payload(harness_expect(h, 2, "room_joined"))));
}

static void test_reserved_room_is_hosted_by_its_first_member(void **state)
{
    struct harness *h = harness_of(state);
    char code[ROOM_CODE_LENGTH + 1];
    assert_null(relay_reserve_room(h->relay, "10.0.0.1", h->now, code));
    harness_open(h, 0, "10.0.0.1", false);
    harness_open(h, 1, "10.0.0.2", false);
    assert_string_equal(host_id(harness_join(h, 0, code, "host", "", false)), "host");
    assert_string_equal(host_id(harness_join(h, 1, code, "bob", "", false)), "host");
}

static void test_host_id_is_advertised(void **state)
{
    struct harness *h = harness_of(state);
    harness_open(h, 0, NULL, false);
    harness_text(h, 0, "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"host\"}}");
    json_t *relay = json_object_get(json_payload(harness_expect(h, 0, "room_created")), "relay");
    json_t *features = json_object_get(relay, "features");
    bool found = false;
    size_t i;
    json_t *feature;
    json_array_foreach(features, i, feature) found =
        found || (json_is_string(feature) && !strcmp(json_string_value(feature), "host_id"));
    assert_true(found);
}

int run_identity_tests(size_t *test_count)
{
#define IDENTITY_TEST(name) cmocka_unit_test_setup_teardown(name, start, stop)
    const struct CMUnitTest tests[] = {
        IDENTITY_TEST(test_join_with_a_connected_members_id_is_refused),
        IDENTITY_TEST(test_away_members_id_is_kept_for_its_resume),
        IDENTITY_TEST(test_host_id_in_every_membership_message),
        IDENTITY_TEST(test_creator_token_reattests_the_host_after_a_restart),
        IDENTITY_TEST(test_member_token_does_not_make_a_host),
        IDENTITY_TEST(test_reserved_room_is_hosted_by_its_first_member),
        IDENTITY_TEST(test_host_id_is_advertised),
    };
#undef IDENTITY_TEST
    return UNIT_RUN_GROUP("identity", tests, NULL, NULL, test_count);
}
