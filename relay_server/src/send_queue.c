/* send_queue.c — shared, streamed outbound messages and per-receiver delivery queues.
 * Fragments are written in order by every delivery, so a fragment whose last writer is done is
 * always the oldest one of its message: freeing is a pop from the front, never a search. */
#include "send_queue.h"

#include "forward_dump.h"

#include <stdlib.h>
#include <string.h>

static struct fragment *fragment_new(size_t capacity)
{
    struct fragment *fragment = malloc(sizeof(*fragment) + SEND_QUEUE_HEADROOM + capacity);
    if (!fragment)
        return NULL;
    fragment->next = NULL;
    fragment->pending_writers = 0;
    fragment->length = 0;
    fragment->capacity = capacity;
    fragment->is_last = false;
    return fragment;
}

static void free_if_written(struct relay_message *message, struct fragment *fragment)
{
    if (fragment->pending_writers > 0)
        return;
    message->oldest = fragment->next;
    if (message->newest == fragment)
        message->newest = NULL;
    free(fragment);
}

static void close_delivery(struct delivery *delivery)
{
    struct relay_message *message = delivery->message;
    message->deliveries[delivery->slot] = NULL;
    free(delivery);
    relay_message_release(message);
}

struct relay_message *relay_message_start(uint64_t sender_id, bool is_binary,
                                          struct send_queue **receivers, size_t receiver_count)
{
    struct relay_message *message = calloc(1, sizeof(*message));
    if (!message)
        return NULL;
    message->deliveries = calloc(receiver_count ? receiver_count : 1, sizeof(struct delivery *));
    if (!message->deliveries) {
        free(message);
        return NULL;
    }
    message->sender_id = sender_id;
    message->is_binary = is_binary;
    message->references = 1;
    for (size_t i = 0; i < receiver_count; i++) {
        struct delivery *delivery = calloc(1, sizeof(*delivery));
        if (!delivery)
            continue; /* that receiver misses the message; the others still get it */
        delivery->message = message;
        delivery->queue = receivers[i];
        delivery->slot = message->delivery_count;
        message->deliveries[message->delivery_count++] = delivery;
        message->references++;
        struct send_queue *queue = receivers[i];
        if (queue->tail)
            queue->tail->next = delivery;
        else
            queue->head = delivery;
        queue->tail = delivery;
    }
    return message;
}

/* Makes a fragment visible to every open delivery of the message. */
static void publish(struct relay_message *message, struct fragment *fragment, bool is_last)
{
    fragment->is_last = is_last;
    if (is_last)
        message->complete = true;
    for (size_t i = 0; i < message->delivery_count; i++)
        if (message->deliveries[i])
            fragment->pending_writers++;
    if (fragment->pending_writers == 0) {
        free(fragment);
        return;
    }
    if (message->newest)
        message->newest->next = fragment;
    else
        message->oldest = fragment;
    message->newest = fragment;
    for (size_t i = 0; i < message->delivery_count; i++) {
        struct delivery *delivery = message->deliveries[i];
        if (!delivery)
            continue;
        if (!delivery->cursor)
            delivery->cursor = fragment;
        delivery->backlog_bytes += fragment->length;
        delivery->queue->queued_bytes += fragment->length;
    }
}

bool relay_message_append(struct relay_message *message, const unsigned char *bytes, size_t length,
                          bool is_last)
{
#ifdef RELAY_DUMP_FORWARDED /* test build only (make dump): what every receiver is sent */
    forward_dump(bytes, length);
#endif
    if (message->complete)
        return true;
    struct fragment *filling = message->filling;
    if (filling) {
        size_t take = filling->capacity - filling->length;
        if (take > length)
            take = length;
        if (take) {
            memcpy(fragment_bytes(filling) + filling->length, bytes, take);
            filling->length += take;
            bytes += take;
            length -= take;
        }
        if (is_last || length > 0 || filling->length == filling->capacity) {
            message->filling = NULL;
            publish(message, filling, is_last && length == 0);
        }
    }
    if (length == 0 && !(is_last && !message->complete))
        return true;
    bool gather = !is_last && length < SEND_QUEUE_GATHER_BYTES / 4;
    struct fragment *fragment = fragment_new(gather ? SEND_QUEUE_GATHER_BYTES : length);
    if (!fragment)
        return false;
    if (length)
        memcpy(fragment_bytes(fragment), bytes, length);
    fragment->length = length;
    if (gather)
        message->filling = fragment;
    else
        publish(message, fragment, is_last);
    return true;
}

void relay_message_finish_sending(struct relay_message *message)
{
    if (!message->complete && !relay_message_append(message, NULL, 0, true))
        message->complete = true; /* out of memory: receivers lose the end of this message */
    relay_message_release(message);
}

bool relay_message_send(uint64_t sender_id, bool is_binary, struct send_queue **receivers,
                        size_t receiver_count, const unsigned char *bytes, size_t length)
{
    struct relay_message *message =
        relay_message_start(sender_id, is_binary, receivers, receiver_count);
    if (!message)
        return false;
    bool ok = relay_message_append(message, bytes, length, true);
    relay_message_finish_sending(message);
    return ok;
}

void relay_message_release(struct relay_message *message)
{
    if (--message->references > 0)
        return;
    while (message->oldest) {
        struct fragment *next = message->oldest->next;
        free(message->oldest);
        message->oldest = next;
    }
    free(message->filling);
    free(message->deliveries);
    free(message);
}

bool send_queue_peek(struct send_queue *queue, struct write_step *step)
{
    struct delivery *delivery = queue->head;
    if (!delivery || !delivery->cursor)
        return false;
    struct fragment *fragment = delivery->cursor;
    step->bytes = fragment_bytes(fragment);
    step->length = fragment->length;
    step->is_binary = delivery->message->is_binary;
    step->continuation = delivery->started;
    step->final = fragment->is_last;
    return true;
}

size_t send_queue_advance(struct send_queue *queue)
{
    struct delivery *delivery = queue->head;
    struct fragment *fragment = delivery->cursor;
    size_t written = fragment->length;
    bool was_last = fragment->is_last;
    delivery->started = true;
    delivery->backlog_bytes -= written;
    queue->queued_bytes -= written;
    delivery->cursor = fragment->next;
    fragment->pending_writers--;
    free_if_written(delivery->message, fragment);
    if (was_last) {
        queue->head = delivery->next;
        if (!queue->head)
            queue->tail = NULL;
        close_delivery(delivery);
    }
    return written;
}

/* Gives up a delivery's claim on the fragments it has not written. */
static void cancel_delivery(struct delivery *delivery)
{
    struct fragment *fragment = delivery->cursor;
    while (fragment) {
        struct fragment *next = fragment->next;
        fragment->pending_writers--;
        free_if_written(delivery->message, fragment);
        fragment = next;
    }
    delivery->queue->queued_bytes -= delivery->backlog_bytes;
    close_delivery(delivery);
}

void send_queue_clear(struct send_queue *queue)
{
    struct delivery *delivery = queue->head;
    queue->head = queue->tail = NULL;
    while (delivery) {
        struct delivery *next = delivery->next;
        cancel_delivery(delivery);
        delivery = next;
    }
}

struct delivery *send_queue_find(struct send_queue *queue, const struct relay_message *message)
{
    for (size_t i = 0; i < message->delivery_count; i++) {
        struct delivery *delivery = message->deliveries[i];
        if (delivery && delivery->queue == queue)
            return delivery;
    }
    return NULL;
}
