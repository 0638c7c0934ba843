/* test_transport_core.c — the engine-neutral connection core without sockets: received payload
 * assembled per message, limits turned into close codes (1007 bad UTF-8, 1009 too large),
 * backpressure, a requested close taken once, and a chunked send cut into fragments. */
#include <stdlib.h>
#include <string.h>

#include "transport_core.h"
#include "unit.h"

static struct client_connection *open_connection(size_t max_message, size_t queue_limit)
{
    struct client_connection *conn = connection_new();
    assert_non_null(conn);
    conn->max_message_size = max_message;
    conn->receive_queue_limit = queue_limit;
    connection_mark_open(conn);
    assert_int_equal(conn->state, CONNECTION_OPEN);
    return conn;
}

static enum receive_outcome receive(struct client_connection *conn, const char *data, int first,
                                    int last, int binary, size_t rest)
{
    struct payload_position at = {first, last, binary, rest};
    return connection_receive(conn, data, strlen(data), &at);
}

static void test_fragments_become_one_message(void **state)
{
    (void)state;
    struct client_connection *conn = open_connection(1000, 1000);
    assert_int_equal(receive(conn, "héllo ", 1, 0, 0, 0), RECEIVE_CONTINUE);
    assert_int_equal(receive(conn, "wörld", 0, 1, 0, 0), RECEIVE_CONTINUE);
    struct received_message *m = conn->received_head;
    assert_non_null(m);
    assert_int_equal(m->size, strlen("héllo wörld"));
    assert_memory_equal(m->data, "héllo wörld", m->size);
    assert_false(m->is_binary);
    assert_int_equal(conn->received_bytes, m->size);
    connection_release(conn);
}

static void test_text_that_is_not_utf8_closes_with_1007(void **state)
{
    (void)state;
    struct client_connection *conn = open_connection(1000, 1000);
    assert_int_equal(receive(conn, "ok \xc0\xaf", 1, 1, 0, 0), RECEIVE_SEND_CLOSE);
    assert_true(conn->close_requested);
    assert_int_equal(conn->close_requested_code, 1007);
    assert_null(conn->received_head);
    /* The rest of the stream is dropped until the Close is out. */
    assert_int_equal(receive(conn, "more", 1, 1, 1, 0), RECEIVE_CONTINUE);
    assert_null(conn->received_head);
    /* Binary is never checked. */
    struct client_connection *other = open_connection(1000, 1000);
    assert_int_equal(receive(other, "\xc0\xaf", 1, 1, 1, 0), RECEIVE_CONTINUE);
    assert_non_null(other->received_head);
    connection_release(other);
    connection_release(conn);
}

static void test_message_over_the_limit_closes_with_1009(void **state)
{
    (void)state;
    struct client_connection *conn = open_connection(10, 1000);
    /* The frame announces more than the limit: refused before it is stored. */
    assert_int_equal(receive(conn, "abc", 1, 0, 1, 8), RECEIVE_SEND_CLOSE);
    assert_int_equal(conn->close_requested_code, 1009);
    struct client_connection *fragmented = open_connection(10, 1000);
    assert_int_equal(receive(fragmented, "123456", 1, 0, 1, 0), RECEIVE_CONTINUE);
    assert_int_equal(receive(fragmented, "78901", 0, 1, 1, 0), RECEIVE_SEND_CLOSE);
    assert_int_equal(fragmented->close_requested_code, 1009);
    connection_release(fragmented);
    connection_release(conn);
}

static void test_full_receive_queue_pauses_reading(void **state)
{
    (void)state;
    struct client_connection *conn = open_connection(1000, 8);
    assert_int_equal(receive(conn, "1234", 1, 1, 1, 0), RECEIVE_CONTINUE);
    assert_int_equal(receive(conn, "5678", 1, 1, 1, 0), RECEIVE_PAUSE_READING);
    assert_true(conn->receiving_paused);
    /* Paused once: the next message does not ask again. */
    assert_int_equal(receive(conn, "9", 1, 1, 1, 0), RECEIVE_CONTINUE);
    assert_int_equal(conn->received_bytes, 9);
    connection_release(conn);
}

static void test_requested_close_is_taken_once_and_fails_sends(void **state)
{
    (void)state;
    struct client_connection *conn = open_connection(1000, 1000);
    struct send_request waiting = {
        .payload = (const unsigned char *)"x", .payload_size = 1, .message_count = 1};
    conn->send_head = conn->send_tail = &waiting;
    int code;
    char reason[TRANSPORT_CLOSE_REASON_SIZE];
    assert_int_equal(connection_take_close_request(conn, &code, reason), 0);
    assert_int_equal(connection_close_soon(conn, 4000, "bye"), RECEIVE_SEND_CLOSE);
    assert_int_equal(connection_take_close_request(conn, &code, reason), 1);
    assert_int_equal(code, 4000);
    assert_string_equal(reason, "bye");
    assert_true(waiting.finished && waiting.failed);
    assert_null(conn->send_head);
    assert_int_equal(connection_take_close_request(conn, &code, reason), 0);
    connection_record_end(conn, NULL);
    assert_int_equal(conn->state, CONNECTION_CLOSED);
    assert_int_equal(conn->close_code, 4000); /* what we sent, as RFC 6455 7.1.5 has it */
    connection_release(conn);
}

static void test_how_a_connection_ended_is_recorded(void **state)
{
    (void)state;
    struct client_connection *never = connection_new();
    connection_record_end(never, "refused");
    assert_true(never->failed_to_open);
    assert_string_equal(never->error, "refused");
    assert_int_equal(never->close_code, 1006);
    connection_release(never);

    struct client_connection *conn = open_connection(1000, 1000);
    connection_record_peer_close(conn, (const unsigned char *)"\x0f\xa8server says bye", 17);
    connection_record_end(conn, NULL);
    assert_int_equal(conn->close_code, 4008);
    assert_string_equal(conn->close_reason, "server says bye");
    connection_release(conn);

    conn = open_connection(1000, 1000);
    connection_record_end(conn, NULL);
    assert_int_equal(conn->close_code, 1006);
    assert_string_equal(conn->close_reason, "connection lost");
    connection_release(conn);
}

static void test_chunked_send_is_cut_into_fragments_with_headers(void **state)
{
    (void)state;
    struct client_connection *conn = open_connection(1000, 1000);
    size_t total = 10000;
    unsigned char *payload = malloc(total);
    for (size_t i = 0; i < total; i++)
        payload[i] = (unsigned char)i;
    struct frame_id sender = {"alice", 5};
    struct chunk_plan plan;
    const char *error = NULL;
    assert_int_equal(
        framing_plan(&plan, FRAME_KIND_WEIGHTS, 7, sender, NULL, 0, total, 4096, &error), 0);
    struct send_request request = {.payload = payload,
                                   .payload_size = total,
                                   .plan = &plan,
                                   .message_count = plan.chunk_count};
    conn->send_head = conn->send_tail = &request;
    unsigned char header[4096];
    size_t messages = 0, payload_seen = 0, fragments = 0;
    struct outgoing_fragment f;
    while (connection_next_fragment(conn, header, 1000, &f)) {
        fragments++;
        if (f.is_start) {
            struct frame_header parsed;
            size_t needed;
            assert_int_equal(frame_header_parse(header, f.header_size, &parsed, &needed, &error),
                             FRAME_OK);
            assert_int_equal(parsed.chunk_index, messages);
            assert_int_equal(parsed.total_size, total);
        }
        assert_ptr_equal(f.payload, payload + payload_seen); /* read in place */
        payload_seen += f.payload_size;
        assert_true(f.header_size + f.payload_size <= 1000);
        if (f.is_end)
            messages++;
        connection_fragment_sent(conn, &f);
    }
    assert_int_equal(messages, plan.chunk_count);
    assert_int_equal(payload_seen, total);
    assert_true(fragments > messages);
    assert_true(request.finished && !request.failed);
    free(payload);
    connection_release(conn);
}

/* A transfer sealed while it is sent: no chunk leaves before its sealer says it is ready. */
static void test_chunk_not_yet_sealed_waits(void **state)
{
    (void)state;
    struct client_connection *conn = open_connection(1000, 1000);
    size_t total = 10000;
    unsigned char *payload = calloc(1, total);
    struct frame_id sender = {"alice", 5};
    struct chunk_plan plan;
    const char *error = NULL;
    assert_int_equal(
        framing_plan(&plan, FRAME_KIND_WEIGHTS, 7, sender, NULL, 0, total, 4096, &error), 0);
    assert_true(plan.chunk_count >= 3);
    int sealer; /* only its address matters here */
    struct send_request request = {.payload = payload,
                                   .payload_size = total,
                                   .plan = &plan,
                                   .message_count = plan.chunk_count,
                                   .sealing = &sealer};
    conn->send_head = conn->send_tail = &request;
    unsigned char header[4096];
    struct outgoing_fragment f;
    assert_int_equal(connection_next_fragment(conn, header, 1000, &f), 0); /* nothing sealed */
    for (uint32_t ready = 1; ready <= plan.chunk_count; ready++) {
        request.messages_ready = ready;
        size_t messages_now = 0;
        while (connection_next_fragment(conn, header, 1000, &f)) {
            messages_now += f.is_end;
            connection_fragment_sent(conn, &f);
        }
        assert_int_equal(messages_now, 1); /* exactly the chunk just sealed */
        assert_int_equal(request.message_index, ready);
    }
    assert_true(request.finished && !request.failed);
    free(payload);
    connection_release(conn);
}

int run_transport_core_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fragments_become_one_message),
        cmocka_unit_test(test_text_that_is_not_utf8_closes_with_1007),
        cmocka_unit_test(test_message_over_the_limit_closes_with_1009),
        cmocka_unit_test(test_full_receive_queue_pauses_reading),
        cmocka_unit_test(test_requested_close_is_taken_once_and_fails_sends),
        cmocka_unit_test(test_how_a_connection_ended_is_recorded),
        cmocka_unit_test(test_chunked_send_is_cut_into_fragments_with_headers),
        cmocka_unit_test(test_chunk_not_yet_sealed_waits),
    };
    return UNIT_RUN_GROUP("transport_core", tests, NULL, NULL, test_count);
}
