/* test_send_queue.c — shared outbound messages: small appends gathered into one frame, fragments
 * freed oldest first once every receiver wrote them, cancelled deliveries releasing everything,
 * and an unfinished message ended by an empty final frame. Run under SANITIZE=1 for leaks. */
#include <stdlib.h>
#include <string.h>

#include "send_queue.h"
#include "unit.h"

#define KIB 1024u

static void fill(unsigned char *bytes, size_t length, unsigned char seed)
{
    for (size_t i = 0; i < length; i++)
        bytes[i] = (unsigned char)(seed + i * 13);
}

/* Writes the queue's next frame, asserting it has `length` bytes and these flags. */
static void expect_step(struct send_queue *queue, size_t length, bool continuation, bool final)
{
    struct write_step step;
    assert_true(send_queue_peek(queue, &step));
    assert_int_equal(step.length, length);
    assert_int_equal(step.continuation, continuation);
    assert_int_equal(step.final, final);
    assert_int_equal(send_queue_advance(queue), length);
}

static void test_small_appends_are_gathered(void **state)
{
    struct send_queue queue = {0};
    struct send_queue *queues[] = {&queue};
    struct relay_message *message = relay_message_start(1, true, queues, 1);
    assert_non_null(message);
    unsigned char bytes[1000];
    fill(bytes, sizeof bytes, 1);
    for (int i = 0; i < 10; i++)
        assert_true(relay_message_append(message, bytes, 100, false));
    /* Gathered: the receiver sees nothing yet. */
    struct write_step step;
    assert_false(send_queue_peek(&queue, &step));
    assert_int_equal(queue.queued_bytes, 0);
    /* The last append publishes everything as one frame. */
    assert_true(relay_message_append(message, bytes, 100, true));
    assert_true(send_queue_peek(&queue, &step));
    assert_int_equal(step.length, 1100);
    assert_true(step.is_binary);
    assert_false(step.continuation);
    assert_true(step.final);
    for (int i = 0; i < 11; i++)
        assert_memory_equal(step.bytes + 100 * i, bytes, 100);
    assert_int_equal(queue.queued_bytes, 1100);
    assert_int_equal(send_queue_advance(&queue), 1100);
    assert_int_equal(queue.queued_bytes, 0);
    assert_null(queue.head);
    relay_message_finish_sending(message);
}

static void test_gathered_bytes_published_at_the_gather_size(void **state)
{
    struct send_queue queue = {0};
    struct send_queue *queues[] = {&queue};
    struct relay_message *message = relay_message_start(1, true, queues, 1);
    unsigned char *bytes = malloc(SEND_QUEUE_GATHER_BYTES + 2000);
    fill(bytes, SEND_QUEUE_GATHER_BYTES + 2000, 7);
    size_t appended = 0;
    while (appended < SEND_QUEUE_GATHER_BYTES + 1000) {
        assert_true(relay_message_append(message, bytes + appended, 1000, false));
        appended += 1000;
    }
    struct write_step step;
    assert_true(send_queue_peek(&queue, &step));
    assert_int_equal(step.length, SEND_QUEUE_GATHER_BYTES);
    assert_memory_equal(step.bytes, bytes, SEND_QUEUE_GATHER_BYTES);
    assert_false(step.final);
    expect_step(&queue, SEND_QUEUE_GATHER_BYTES, false, false);
    assert_false(send_queue_peek(&queue, &step)); /* the rest is still gathering */
    relay_message_append(message, NULL, 0, true);
    assert_true(send_queue_peek(&queue, &step));
    assert_int_equal(step.length, appended - SEND_QUEUE_GATHER_BYTES);
    assert_memory_equal(step.bytes, bytes + SEND_QUEUE_GATHER_BYTES, step.length);
    expect_step(&queue, appended - SEND_QUEUE_GATHER_BYTES, true, true);
    relay_message_finish_sending(message);
    free(bytes);
}

static void test_large_appends_are_not_copied_twice(void **state)
{
    /* An append of at least a quarter of the gather size is its own frame, straight away. */
    struct send_queue queue = {0};
    struct send_queue *queues[] = {&queue};
    struct relay_message *message = relay_message_start(1, true, queues, 1);
    unsigned char *bytes = malloc(SEND_QUEUE_GATHER_BYTES);
    fill(bytes, SEND_QUEUE_GATHER_BYTES, 3);
    assert_true(relay_message_append(message, bytes, SEND_QUEUE_GATHER_BYTES / 4, false));
    assert_int_equal(queue.queued_bytes, SEND_QUEUE_GATHER_BYTES / 4);
    expect_step(&queue, SEND_QUEUE_GATHER_BYTES / 4, false, false);
    relay_message_finish_sending(message); /* ended early: an empty final frame */
    expect_step(&queue, 0, true, true);
    assert_null(queue.head);
    free(bytes);
}

static void test_fragments_freed_oldest_first_when_all_wrote(void **state)
{
    struct send_queue fast = {0}, slow = {0};
    struct send_queue *queues[] = {&fast, &slow};
    struct relay_message *message = relay_message_start(1, true, queues, 2);
    size_t size = 20 * KIB; /* above the gather threshold: one fragment per append */
    unsigned char *bytes = malloc(size);
    for (unsigned char i = 0; i < 3; i++) {
        fill(bytes, size, i);
        assert_true(relay_message_append(message, bytes, size, i == 2));
    }
    struct fragment *first = message->oldest;
    assert_non_null(first);
    struct fragment *second = first->next, *third = second->next;
    assert_non_null(third);
    assert_ptr_equal(message->newest, third);
    assert_int_equal(first->pending_writers, 2);

    expect_step(&fast, size, false, false);
    expect_step(&fast, size, true, false);
    /* The slow receiver still needs them: nothing freed, one writer left on each. */
    assert_ptr_equal(message->oldest, first);
    assert_int_equal(first->pending_writers, 1);
    assert_int_equal(second->pending_writers, 1);
    assert_int_equal(third->pending_writers, 2);
    assert_int_equal(slow.queued_bytes, 3 * size);
    assert_int_equal(fast.queued_bytes, size);

    struct write_step step;
    assert_true(send_queue_peek(&slow, &step));
    fill(bytes, size, 0);
    assert_memory_equal(step.bytes, bytes, size);
    expect_step(&slow, size, false, false);
    assert_ptr_equal(message->oldest, second); /* the first one went */
    expect_step(&fast, size, true, true);
    assert_null(fast.head);
    assert_ptr_equal(message->oldest, second);
    assert_int_equal(third->pending_writers, 1);
    expect_step(&slow, size, true, false);
    assert_ptr_equal(message->oldest, third);
    assert_true(send_queue_peek(&slow, &step));
    fill(bytes, size, 2);
    assert_memory_equal(step.bytes, bytes, size);
    expect_step(&slow, size, true, true);
    assert_null(message->oldest);
    assert_int_equal(slow.queued_bytes, 0);
    relay_message_finish_sending(message); /* frees the message itself */
    free(bytes);
}

static void test_messages_queue_in_order(void **state)
{
    struct send_queue queue = {0};
    struct send_queue *queues[] = {&queue};
    assert_true(relay_message_send(0, false, queues, 1, (const unsigned char *)"one", 3));
    struct relay_message *streamed = relay_message_start(2, true, queues, 1);
    assert_true(relay_message_send(0, false, queues, 1, (const unsigned char *)"three", 5));
    struct write_step step;
    assert_true(send_queue_peek(&queue, &step));
    assert_memory_equal(step.bytes, "one", 3);
    assert_false(step.is_binary);
    expect_step(&queue, 3, false, true);
    /* The streamed message has nothing yet, and the one behind it must wait its turn. */
    assert_false(send_queue_peek(&queue, &step));
    unsigned char bytes[30 * KIB];
    fill(bytes, sizeof bytes, 9);
    relay_message_append(streamed, bytes, sizeof bytes, true);
    relay_message_finish_sending(streamed);
    assert_true(send_queue_peek(&queue, &step));
    assert_true(step.is_binary);
    expect_step(&queue, sizeof bytes, false, true);
    assert_true(send_queue_peek(&queue, &step));
    assert_memory_equal(step.bytes, "three", 5);
    expect_step(&queue, 5, false, true);
    assert_null(queue.head);
    assert_null(queue.tail);
}

static void test_cancel_mid_message_frees_everything(void **state)
{
    struct send_queue a = {0}, b = {0};
    struct send_queue *queues[] = {&a, &b};
    struct relay_message *message = relay_message_start(1, true, queues, 2);
    unsigned char bytes[20 * KIB];
    fill(bytes, sizeof bytes, 5);
    relay_message_append(message, bytes, sizeof bytes, false);
    relay_message_append(message, bytes, sizeof bytes, false);
    relay_message_append(message, bytes, 100, false); /* gathering */
    /* A second message behind it in a's queue. */
    assert_true(relay_message_send(0, false, queues, 1, (const unsigned char *)"x", 1));
    expect_step(&a, sizeof bytes, false, false);

    send_queue_clear(&a); /* a went away mid-message */
    assert_null(a.head);
    assert_int_equal(a.queued_bytes, 0);
    assert_int_equal(b.queued_bytes, 2 * sizeof bytes);
    assert_null(send_queue_find(&a, message));
    assert_non_null(send_queue_find(&b, message));
    /* b still gets the whole message. */
    relay_message_append(message, bytes, 100, true);
    relay_message_finish_sending(message);
    expect_step(&b, sizeof bytes, false, false);
    expect_step(&b, sizeof bytes, true, false);
    expect_step(&b, 200, true, true);
    assert_null(b.head);
    /* No leak here is checked by LeakSanitizer under SANITIZE=1. */
}

static void test_cancel_before_sender_finishes(void **state)
{
    struct send_queue a = {0};
    struct send_queue *queues[] = {&a};
    struct relay_message *message = relay_message_start(1, true, queues, 1);
    unsigned char bytes[20 * KIB];
    fill(bytes, sizeof bytes, 5);
    relay_message_append(message, bytes, sizeof bytes, false);
    send_queue_clear(&a);
    /* With no receiver left, further appends keep nothing; the sender's finish frees it. */
    assert_true(relay_message_append(message, bytes, sizeof bytes, false));
    assert_null(message->oldest);
    relay_message_finish_sending(message);
}

static void test_unfinished_message_ends_with_empty_final_frame(void **state)
{
    struct send_queue queue = {0};
    struct send_queue *queues[] = {&queue};
    struct relay_message *message = relay_message_start(1, true, queues, 1);
    unsigned char bytes[200];
    fill(bytes, sizeof bytes, 4);
    relay_message_append(message, bytes, sizeof bytes, false); /* gathered */
    relay_message_finish_sending(message);                     /* the sender went away */
    /* What was gathered is published, then an empty final frame ends the message. */
    struct write_step step;
    assert_true(send_queue_peek(&queue, &step));
    assert_memory_equal(step.bytes, bytes, sizeof bytes);
    if (step.final) {
        assert_int_equal(step.length, sizeof bytes);
        expect_step(&queue, sizeof bytes, false, true);
    } else {
        expect_step(&queue, sizeof bytes, false, false);
        expect_step(&queue, 0, true, true);
    }
    assert_null(queue.head);
}

static void test_message_without_receivers(void **state)
{
    struct relay_message *message = relay_message_start(1, true, NULL, 0);
    assert_non_null(message);
    unsigned char bytes[20 * KIB] = {0};
    assert_true(relay_message_append(message, bytes, sizeof bytes, false));
    assert_null(message->oldest);
    relay_message_finish_sending(message);
    assert_true(relay_message_send(0, false, NULL, 0, bytes, 10));
}

int run_send_queue_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_appends_are_gathered),
        cmocka_unit_test(test_gathered_bytes_published_at_the_gather_size),
        cmocka_unit_test(test_large_appends_are_not_copied_twice),
        cmocka_unit_test(test_fragments_freed_oldest_first_when_all_wrote),
        cmocka_unit_test(test_messages_queue_in_order),
        cmocka_unit_test(test_cancel_mid_message_frees_everything),
        cmocka_unit_test(test_cancel_before_sender_finishes),
        cmocka_unit_test(test_unfinished_message_ends_with_empty_final_frame),
        cmocka_unit_test(test_message_without_receivers),
    };
    return UNIT_RUN_GROUP("send_queue", tests, NULL, NULL, test_count);
}
