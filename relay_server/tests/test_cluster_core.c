/* test_cluster_core.c — the core's cluster mode without NATS: two relays in one process joined
 * by a fake backplane (an in-memory directory; envelopes encoded, queued and delivered when the
 * test pumps them), so joins, merged user lists, forwarding, binary pieces, a lost node and a
 * resume on another node are checked step by step. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "core_harness.h"
#include "unit.h"

#define NODES 2
#define DIRECTORY_SIZE 64
#define PENDING_SIZE 256

struct fake_node {
    struct relay_cluster_io io;
    char id[CLUSTER_NODE_ID_LENGTH + 1];
    struct harness *harness;
    char rooms[16][ROOM_CODE_LENGTH + 1]; /* subscribed room subjects */
    unsigned data_published;              /* envelopes to a node subject (TEXT, BINARY) */
};

struct pending {
    int to;
    unsigned char *bytes;
    size_t length;
};

static struct fake_backplane {
    struct fake_node nodes[NODES];
    struct {
        char key[96];
        char value[4096];
    } directory[DIRECTORY_SIZE];
    struct pending pending[PENDING_SIZE];
    size_t pending_count;
    double clock;
    int drop_piece; /* a BINARY piece with this index is lost once (-1: none) */
} fake;

static char *directory_get(const char *key)
{
    for (int i = 0; i < DIRECTORY_SIZE; i++)
        if (!strcmp(fake.directory[i].key, key))
            return fake.directory[i].value;
    return NULL;
}

static void directory_put(const char *key, const char *value)
{
    char *slot = directory_get(key);
    for (int i = 0; !slot && i < DIRECTORY_SIZE; i++)
        if (!fake.directory[i].key[0]) {
            snprintf(fake.directory[i].key, sizeof(fake.directory[i].key), "%s", key);
            slot = fake.directory[i].value;
        }
    assert_non_null(slot);
    snprintf(slot, sizeof(fake.directory[0].value), "%s", value);
}

static void directory_delete(const char *key)
{
    for (int i = 0; i < DIRECTORY_SIZE; i++)
        if (!strcmp(fake.directory[i].key, key))
            fake.directory[i].key[0] = '\0';
}

static bool subscribed(struct fake_node *node, const char *code)
{
    for (int i = 0; i < 16; i++)
        if (!strcmp(node->rooms[i], code))
            return true;
    return false;
}

static void subscribe(struct fake_node *node, const char *code, bool on)
{
    for (int i = 0; i < 16; i++)
        if (!strcmp(node->rooms[i], code))
            node->rooms[i][0] = '\0';
    for (int i = 0; on && i < 16; i++)
        if (!node->rooms[i][0]) {
            snprintf(node->rooms[i], sizeof(node->rooms[i]), "%s", code);
            return;
        }
}

static double fake_clock(void *context)
{
    return fake.clock += 1.0;
}

static int fake_claim(void *context, const char *code)
{
    char key[96];
    cluster_room_key(code, key, sizeof key);
    if (directory_get(key))
        return 0;
    directory_put(key, "reserved");
    return 1;
}

static int fake_lookup(void *context, const char *code, char **records)
{
    struct fake_node *self = context;
    char key[96];
    cluster_room_key(code, key, sizeof key);
    const char *state = directory_get(key);
    if (!state)
        return 0;
    subscribe(self, code, true);
    if (!strcmp(state, "reserved"))
        return 2;
    json_t *all = json_array();
    for (int n = 0; n < NODES; n++) {
        cluster_members_key(code, fake.nodes[n].id, key, sizeof key);
        const char *value = directory_get(key);
        json_t *list = value ? json_loads(value, 0, NULL) : NULL;
        size_t i;
        json_t *record;
        json_array_foreach(list, i, record)
        {
            json_object_set_new(record, "node", json_string(fake.nodes[n].id));
            json_array_append(all, record);
        }
        json_decref(list);
    }
    *records = json_dumps(all, JSON_COMPACT);
    json_decref(all);
    return 1;
}

static void fake_room_changed(void *context, const char *code, const char *records)
{
    struct fake_node *self = context;
    char key[96];
    cluster_members_key(code, self->id, key, sizeof key);
    subscribe(self, code, records != NULL);
    if (!records) {
        directory_delete(key);
        return;
    }
    if (strcmp(records, "[]"))
        directory_put(key, records);
    cluster_room_key(code, key, sizeof key);
    directory_put(key, strcmp(records, "[]") ? "live" : "reserved");
}

static void fake_publish_one(void *context, const char *node,
                             const struct cluster_envelope *envelope)
{
    struct fake_node *self = context;
    if (node)
        self->data_published++;
    for (int n = 0; n < NODES; n++) {
        struct fake_node *target = &fake.nodes[n];
        if (target == self || (node && strcmp(node, target->id)) ||
            (!node && !subscribed(target, envelope->code)))
            continue;
        assert_true(fake.pending_count < PENDING_SIZE);
        unsigned char *bytes = malloc(CLUSTER_ENVELOPE_MAX_HEADER + envelope->payload_length);
        size_t header = cluster_envelope_encode(envelope, bytes, CLUSTER_ENVELOPE_MAX_HEADER);
        assert_true(header > 0);
        if (envelope->payload_length) /* LEAVE has none (and no payload pointer) */
            memcpy(bytes + header, envelope->payload, envelope->payload_length);
        fake.pending[fake.pending_count++] =
            (struct pending){n, bytes, header + envelope->payload_length};
    }
}

static void fake_publish(void *context, const char *const *nodes, size_t node_count,
                         const struct cluster_envelope *envelope)
{
    if (envelope->kind == CLUSTER_BINARY && (int)envelope->piece == fake.drop_piece) {
        fake.drop_piece = -1;
        return;
    }
    if (node_count == 0)
        fake_publish_one(context, NULL, envelope);
    for (size_t i = 0; i < node_count; i++)
        fake_publish_one(context, nodes[i], envelope);
}

/* Delivers every queued envelope, in order (what NATS does between two nodes). */
static void pump(void)
{
    for (size_t i = 0; i < fake.pending_count; i++) {
        struct cluster_envelope envelope;
        const char *why = NULL;
        assert_true(cluster_envelope_decode(fake.pending[i].bytes, fake.pending[i].length,
                                            &envelope, &why));
        struct harness *h = fake.nodes[fake.pending[i].to].harness;
        relay_cluster_receive(h->relay, &envelope, h->now);
        free(fake.pending[i].bytes);
    }
    fake.pending_count = 0;
}

static struct harness a_harness, b_harness;
static struct harness *const A = &a_harness, *const B = &b_harness;

static void start_cluster(size_t max_piece)
{
    memset(&fake, 0, sizeof fake);
    fake.drop_piece = -1;
    struct harness *harnesses[NODES] = {A, B};
    for (int n = 0; n < NODES; n++) {
        struct fake_node *node = &fake.nodes[n];
        harness_start(harnesses[n], NULL);
        snprintf(node->id, sizeof(node->id), "%016x", 0xa0 + n);
        node->harness = harnesses[n];
        node->io =
            (struct relay_cluster_io){node,       node->id,    max_piece,         fake_clock,
                                      fake_claim, fake_lookup, fake_room_changed, fake_publish};
        relay_attach_cluster(harnesses[n]->relay, &node->io);
    }
}

static void stop_cluster(void)
{
    pump();
    harness_stop(A);
    harness_stop(B);
    for (size_t i = 0; i < fake.pending_count; i++) /* LEAVEs of the relays' own shutdown */
        free(fake.pending[i].bytes);
    fake.pending_count = 0;
}

static void expect_users(json_t *payload, const char *first, const char *second, const char *third)
{
    const char *expected[] = {first, second, third};
    json_t *users = json_object_get(payload, "users");
    size_t count = third ? 3 : second ? 2 : 1;
    assert_int_equal(json_array_size(users), count);
    for (size_t i = 0; i < count; i++)
        assert_string_equal(json_text(json_array_get(users, i), "user_id"), expected[i]);
}

/* alice (A, connection 0) creates; bob (B, 0) joins; carol (A, 1) joins. With `resume`, bob's
 * resume token goes to `token` (65 bytes). */
static const char *spread_room(bool resume, char *token)
{
    harness_open(A, 0, NULL, false);
    harness_open(A, 1, NULL, false);
    harness_open(B, 0, NULL, false);
    const char *code = harness_create_room(A, 0, "alice", "Alice", resume);
    json_t *joined = harness_join(B, 0, code, "bob", "Bob", resume);
    expect_users(joined, "alice", "bob", NULL);
    assert_string_equal(json_text(joined, "host_id"), "alice");
    if (resume)
        snprintf(token, 65, "%s", json_text(joined, "resume_token"));
    pump();
    expect_users(json_payload(harness_expect(A, 0, "user_joined")), "alice", "bob", NULL);
    harness_join(A, 1, code, "carol", "Carol", resume);
    pump();
    json_t *seen = json_payload(harness_expect(B, 0, "user_joined"));
    expect_users(seen, "alice", "bob", "carol");
    assert_string_equal(json_text(seen, "host_id"), "alice");
    harness_expect(A, 0, "user_joined");
    return code;
}

static void test_join_and_forward_across_nodes(void **state)
{
    start_cluster(1000);
    spread_room(false, NULL);
    harness_text(B, 0, "{\"type\":\"note\",\"payload\":{}}");
    pump();
    for (int i = 0; i < 2; i++)
        assert_string_equal(json_text(harness_expect(A, i, "note"), "sender_id"), "bob");
    /* Directed: only carol, on node A, is named. */
    harness_text(B, 0, "{\"type\":\"private\",\"payload\":{},\"to\":[\"carol\"]}");
    pump();
    harness_expect(A, 1, "private");
    harness_expect_nothing(A, 0);
    stop_cluster();
}

static void test_binary_crosses_in_pieces_and_a_gap_ends_it_early(void **state)
{
    start_cluster(1000); /* pieces of at most 1000 bytes */
    spread_room(false, NULL);
    unsigned char message[10000];
    for (size_t i = 0; i < sizeof message; i++)
        message[i] = (unsigned char)(i * 7);
    harness_binary(B, 0, message, sizeof message, 4096);
    pump();
    for (int i = 0; i < 2; i++) {
        size_t length = 0;
        const unsigned char *got = harness_expect_binary(A, i, &length);
        assert_int_equal(length, sizeof message);
        assert_memory_equal(got, message, sizeof message);
    }
    /* A lost piece: the receivers' copy ends early and the next message arrives whole. */
    fake.drop_piece = 3;
    harness_binary(B, 0, message, sizeof message, 4096);
    harness_binary(B, 0, message, 500, 500);
    pump();
    size_t length = 0;
    harness_expect_binary(A, 0, &length);
    assert_true(length < sizeof message);
    harness_expect_binary(A, 0, &length);
    assert_int_equal(length, 500);
    stop_cluster();
}

static void test_a_room_on_one_node_publishes_no_data(void **state)
{
    start_cluster(1000);
    harness_open(A, 0, NULL, false);
    harness_open(A, 1, NULL, false);
    const char *code = harness_create_room(A, 0, "alice", "Alice", false);
    harness_join(A, 1, code, "bob", "Bob", false);
    harness_text(A, 0, "{\"type\":\"note\",\"payload\":{}}");
    unsigned char message[5000] = {1};
    harness_binary(A, 0, message, sizeof message, 4096);
    harness_expect(A, 0, "user_joined");
    harness_expect(A, 1, "note");
    size_t length = 0;
    harness_expect_binary(A, 1, &length);
    assert_int_equal(length, sizeof message);
    assert_int_equal(fake.nodes[0].data_published, 0);
    stop_cluster();
}

static void test_a_lost_node_s_members_leave_or_wait_to_resume(void **state)
{
    start_cluster(1000);
    spread_room(false, NULL);
    relay_cluster_node_lost(A->relay, fake.nodes[1].id, A->now);
    for (int i = 0; i < 2; i++) {
        json_t *left = json_payload(harness_expect(A, i, "user_left"));
        assert_string_equal(json_text(left, "user_id"), "bob");
        expect_users(left, "alice", "carol", NULL);
    }
    stop_cluster();
}

static void test_resume_members_of_a_lost_node_are_away_for_the_grace(void **state)
{
    start_cluster(1000);
    char token[65];
    spread_room(true, token);
    relay_cluster_node_lost(A->relay, fake.nodes[1].id, A->now);
    harness_expect_nothing(A, 0); /* away, not gone: it may resume on any node */
    harness_tick(A, 31);          /* past --resume-grace (30 s) */
    for (int i = 0; i < 2; i++)
        assert_string_equal(json_text(json_payload(harness_expect(A, i, "user_left")), "user_id"),
                            "bob");
    stop_cluster();
}

static void test_a_member_of_a_lost_node_resumes_on_another(void **state)
{
    start_cluster(1000);
    char token[65], text[512];
    const char *code = spread_room(true, token);
    relay_cluster_node_lost(A->relay, fake.nodes[1].id, A->now);
    harness_open(A, 2, NULL, false);
    snprintf(text, sizeof text,
             "{\"type\":\"resume\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"bob\","
             "\"display_name\":\"Bob\",\"resume_token\":\"%s\"}}",
             code, token);
    harness_text(A, 2, text);
    json_t *resumed = json_payload(harness_expect(A, 2, "room_joined"));
    assert_true(json_is_true(json_object_get(resumed, "resumed")));
    expect_users(resumed, "alice", "bob", "carol");
    assert_string_equal(json_text(resumed, "host_id"), "alice");
    harness_expect_nothing(A, 0); /* to the others it never left */
    harness_expect_nothing(A, 1);
    harness_text(A, 2, "{\"type\":\"back\",\"payload\":{}}");
    assert_string_equal(json_text(harness_expect(A, 0, "back"), "sender_id"), "bob");
    harness_tick(A, 40); /* the grace is over, and he is here: nothing happens */
    harness_expect_nothing(A, 0);
    stop_cluster();
}

int run_cluster_core_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_join_and_forward_across_nodes),
        cmocka_unit_test(test_binary_crosses_in_pieces_and_a_gap_ends_it_early),
        cmocka_unit_test(test_a_room_on_one_node_publishes_no_data),
        cmocka_unit_test(test_a_lost_node_s_members_leave_or_wait_to_resume),
        cmocka_unit_test(test_resume_members_of_a_lost_node_are_away_for_the_grace),
        cmocka_unit_test(test_a_member_of_a_lost_node_resumes_on_another),
    };
    return UNIT_RUN_GROUP("cluster_core", tests, NULL, NULL, test_count);
}
