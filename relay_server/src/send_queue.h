/* send_queue.h — messages on their way out of the relay, held once and shared by receivers.
 * A relay_message is a list of fragments appended as the sender's bytes arrive; each receiver
 * has a send_queue of deliveries, each a cursor into one message. A fragment is freed when the
 * last delivery has written it, so memory follows the slowest receiver, not the message size. */
#ifndef SEND_QUEUE_H
#define SEND_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes kept free in front of every fragment for the WebSocket frame header that the transport
 * writes in place (libwebsockets' LWS_PRE; lws_server.c checks that it fits). */
#define SEND_QUEUE_HEADROOM 32

/* Appends smaller than this are gathered; gathered bytes are published at this size. */
#define SEND_QUEUE_GATHER_BYTES (64 * 1024)

struct fragment {
    struct fragment *next;
    size_t pending_writers; /* deliveries that have not written it yet */
    size_t length;
    size_t capacity;
    bool is_last; /* ends its message */
    unsigned char storage[];
};

static inline unsigned char *fragment_bytes(struct fragment *fragment)
{
    return fragment->storage + SEND_QUEUE_HEADROOM;
}

struct delivery;

struct relay_message {
    size_t references;  /* open deliveries, plus one while the sender still appends */
    uint64_t sender_id; /* connection id of the sender, 0 for the relay's own messages */
    bool is_binary;
    bool complete;           /* the last fragment has been appended */
    struct fragment *oldest; /* fragments some delivery still has to write, in order */
    struct fragment *newest;
    struct fragment *filling; /* small appends gather here before receivers see them */
    size_t delivery_count;
    struct delivery **deliveries; /* open deliveries; closed ones are NULL */
};

struct send_queue;

struct delivery {
    struct delivery *next; /* next delivery in the receiver's queue */
    struct relay_message *message;
    struct send_queue *queue; /* the receiver's queue */
    struct fragment *cursor;  /* next fragment to write, NULL when caught up */
    uint64_t backlog_bytes;   /* appended to this delivery but not yet written */
    size_t slot;              /* index in message->deliveries */
    bool started;             /* the first frame of the message has been written */
};

struct send_queue {
    struct delivery *head;
    struct delivery *tail;
    uint64_t queued_bytes; /* total backlog of all deliveries in this queue */
};

/* What the transport must write next: one WebSocket frame. */
struct write_step {
    unsigned char *bytes; /* has SEND_QUEUE_HEADROOM writable bytes in front */
    size_t length;
    bool is_binary;
    bool continuation; /* not the first frame of the message */
    bool final;        /* last frame of the message */
};

/* Starts a message to `receiver_count` queues, appended to the tail of each. */
struct relay_message *relay_message_start(uint64_t sender_id, bool is_binary,
                                          struct send_queue **receivers, size_t receiver_count);

/* Appends bytes (copied once). Small appends are gathered into one fragment of up to
 * SEND_QUEUE_GATHER_BYTES before receivers see them, so a sender that trickles bytes does not
 * cost a frame per read; `is_last` completes the message and publishes what was gathered.
 * Returns false only when out of memory. With no receivers left nothing is kept. */
bool relay_message_append(struct relay_message *message, const unsigned char *bytes, size_t length,
                          bool is_last);

/* The sender is done with the message (after its last append, or when it went away; an
 * incomplete message is then ended with an empty final fragment so receivers stay in sync). */
void relay_message_finish_sending(struct relay_message *message);

/* A complete message in one call: start, append, finish. */
bool relay_message_send(uint64_t sender_id, bool is_binary, struct send_queue **receivers,
                        size_t receiver_count, const unsigned char *bytes, size_t length);

/* The frame the queue's owner should write now; false when nothing can be written yet. */
bool send_queue_peek(struct send_queue *queue, struct write_step *step);

/* The step returned by peek was written; moves on. Returns the number of bytes released. */
size_t send_queue_advance(struct send_queue *queue);

/* Drops every delivery (the receiver went away). */
void send_queue_clear(struct send_queue *queue);

/* The delivery of `message` in `queue`, or NULL. */
struct delivery *send_queue_find(struct send_queue *queue, const struct relay_message *message);

void relay_message_release(struct relay_message *message);

#endif
