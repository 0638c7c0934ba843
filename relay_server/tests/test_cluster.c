/* test_cluster.c — the backplane envelope (cluster.c): what one node writes another reads back
 * exactly, and anything malformed, truncated or hostile is refused with a reason. */
#include <stdio.h>
#include <string.h>

#include "cluster.h"
#include "unit.h"

static const char NODE[] = "0123456789abcdef";

static struct cluster_envelope sample(void)
{
    struct cluster_envelope envelope = {.kind = CLUSTER_BINARY,
                                        .flags = CLUSTER_FLAG_FIRST,
                                        .stream = 0x0102030405060708ull,
                                        .piece = 7};
    snprintf(envelope.code, sizeof(envelope.code), "ABC234");
    snprintf(envelope.node, sizeof(envelope.node), "%s", NODE);
    snprintf(envelope.user_id, sizeof(envelope.user_id), "alice");
    return envelope;
}

/* Header then "payload" into `out`; returns the total size. */
static size_t encode_with_payload(const struct cluster_envelope *envelope, unsigned char *out,
                                  size_t capacity)
{
    size_t header = cluster_envelope_encode(envelope, out, capacity);
    assert_true(header > 0);
    memcpy(out + header, "payload", 7);
    return header + 7;
}

static void test_round_trip(void **state)
{
    struct cluster_envelope sent = sample(), got;
    unsigned char bytes[256];
    size_t size = encode_with_payload(&sent, bytes, sizeof bytes);
    /* 24 fixed bytes, the code, the node id, the user id: the layout cluster.c documents. */
    assert_int_equal(size, 24 + 6 + 16 + 5 + 7);
    assert_memory_equal(bytes, "SC\x01\x04\x01\x10\x05\x00", 8);
    assert_memory_equal(bytes + 8, "\x08\x07\x06\x05\x04\x03\x02\x01\x07\x00\x00\x00", 12);
    const char *why = NULL;
    assert_true(cluster_envelope_decode(bytes, size, &got, &why));
    assert_int_equal(got.kind, CLUSTER_BINARY);
    assert_int_equal(got.flags, CLUSTER_FLAG_FIRST);
    assert_true(got.stream == sent.stream);
    assert_int_equal(got.piece, 7);
    assert_string_equal(got.code, "ABC234");
    assert_string_equal(got.node, NODE);
    assert_string_equal(got.user_id, "alice");
    assert_int_equal(got.payload_length, 7);
    assert_memory_equal(got.payload, "payload", 7);
}

static void test_every_truncation_is_refused(void **state)
{
    struct cluster_envelope sent = sample(), got;
    unsigned char bytes[256];
    size_t header = cluster_envelope_encode(&sent, bytes, sizeof bytes);
    for (size_t length = 0; length < header; length++) {
        const char *why = NULL;
        assert_false(cluster_envelope_decode(bytes, length, &got, &why));
        assert_non_null(why);
    }
    assert_true(cluster_envelope_decode(bytes, header, &got, NULL)); /* empty payload is fine */
    assert_int_equal(got.payload_length, 0);
}

static void expect_refused(const unsigned char *bytes, size_t size, const char *reason)
{
    struct cluster_envelope got;
    const char *why = NULL;
    assert_false(cluster_envelope_decode(bytes, size, &got, &why));
    if (!why || strcmp(why, reason))
        fail_msg("refused for \"%s\", expected \"%s\" (byte 6: %d)", why, reason, bytes[6]);
}

static void test_malformed_fields_are_refused(void **state)
{
    struct cluster_envelope sent = sample();
    unsigned char good[256], bad[256];
    size_t size = encode_with_payload(&sent, good, sizeof good);
    static const struct {
        size_t offset;
        unsigned char value;
        const char *reason;
    } cases[] = {
        {0, 'X', "bad magic"},        {2, 2, "unknown version"},
        {3, 0, "unknown kind"},       {3, 5, "unknown kind"},
        {4, 4, "reserved bits set"},  {7, 1, "reserved bits set"},
        {20, 1, "reserved bits set"}, {5, 15, "bad field length"},
        {6, 129, "bad field length"}, {6, 100, "ends inside its header"},
        {24, 'a', "bad room code"},   /* lower case: codes travel normalized */
        {24, '0', "bad room code"},   /* not in the alphabet */
        {30, 'G', "bad node id"},     /* not hex */
        {30, 'A', "bad node id"},     /* upper-case hex */
        {46, '\0', "NUL in user id"}, /* would cut the id short */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(bad, good, size);
        bad[cases[i].offset] = cases[i].value;
        if (cases[i].offset == 6 && cases[i].value == 100)
            expect_refused(bad, 24 + 6 + 16 + 99, cases[i].reason);
        else
            expect_refused(bad, size, cases[i].reason);
    }
}

static void test_encode_refuses_what_decode_would(void **state)
{
    unsigned char bytes[512];
    struct cluster_envelope envelope = sample();
    envelope.kind = 9;
    assert_int_equal(cluster_envelope_encode(&envelope, bytes, sizeof bytes), 0);
    envelope = sample();
    snprintf(envelope.node, sizeof(envelope.node), "short");
    assert_int_equal(cluster_envelope_encode(&envelope, bytes, sizeof bytes), 0);
    envelope = sample();
    snprintf(envelope.code, sizeof(envelope.code), "abc234");
    assert_int_equal(cluster_envelope_encode(&envelope, bytes, sizeof bytes), 0);
    envelope = sample();
    envelope.flags = 4;
    assert_int_equal(cluster_envelope_encode(&envelope, bytes, sizeof bytes), 0);
    envelope = sample();
    assert_int_equal(cluster_envelope_encode(&envelope, bytes, 24 + 6 + 16 + 4), 0);
    /* The longest user id fits CLUSTER_ENVELOPE_MAX_HEADER exactly. */
    memset(envelope.user_id, 'u', USER_ID_MAX_BYTES);
    envelope.user_id[USER_ID_MAX_BYTES] = '\0';
    assert_int_equal(cluster_envelope_encode(&envelope, bytes, CLUSTER_ENVELOPE_MAX_HEADER),
                     CLUSTER_ENVELOPE_MAX_HEADER);
}

static void test_node_ids_and_names(void **state)
{
    char a[CLUSTER_NODE_ID_LENGTH + 1], b[CLUSTER_NODE_ID_LENGTH + 1];
    assert_true(cluster_node_id_generate(a));
    assert_true(cluster_node_id_generate(b));
    assert_int_equal(strlen(a), CLUSTER_NODE_ID_LENGTH);
    assert_int_equal(strspn(a, "0123456789abcdef"), CLUSTER_NODE_ID_LENGTH);
    assert_string_not_equal(a, b);
    char name[96];
    assert_true(cluster_room_subject("ABC234", name, sizeof name));
    assert_string_equal(name, "segsuite.room.ABC234");
    assert_true(cluster_node_subject(NODE, name, sizeof name));
    assert_string_equal(name, "segsuite.node.0123456789abcdef");
    assert_true(cluster_members_key("ABC234", NODE, name, sizeof name));
    assert_string_equal(name, "members.ABC234.0123456789abcdef");
    assert_true(cluster_members_filter("ABC234", name, sizeof name));
    assert_string_equal(name, "members.ABC234.*");
    assert_false(cluster_room_key("ABC234", name, 8)); /* too small: refused, not cut */
}

int run_cluster_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_every_truncation_is_refused),
        cmocka_unit_test(test_malformed_fields_are_refused),
        cmocka_unit_test(test_encode_refuses_what_decode_would),
        cmocka_unit_test(test_node_ids_and_names),
    };
    return UNIT_RUN_GROUP("cluster", tests, NULL, NULL, test_count);
}
