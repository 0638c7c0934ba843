/* core_harness.h — drives the sans-I/O relay core the way the transport does, without sockets:
 * a fake `struct relay_io` that records what the core asked of each connection, and helpers that
 * write a connection's queue out frame by frame, checking the frame flags and reassembling whole
 * messages, so tests read what a WebSocket client would receive. */
#ifndef CORE_HARNESS_H
#define CORE_HARNESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "relay_core.h"

#define HARNESS_CONNECTIONS 8
#define HARNESS_START_TIME 1000.0

/* What the core asked of one connection's transport. */
struct fake_transport {
    int index;
    unsigned want_write_calls;
    unsigned pause_calls;  /* pause_reading(true) */
    unsigned resume_calls; /* pause_reading(false) */
    bool paused;
    unsigned close_calls;
    int close_code;
    unsigned ping_calls;
};

/* One whole message as the client receives it. */
struct received {
    bool is_binary;
    unsigned char *bytes;
    size_t length;
};

/* Write side of one connection: the inbox of whole messages and the message being reassembled. */
struct receiver_state {
    struct received *inbox;
    size_t inbox_count;
    size_t inbox_capacity;
    unsigned char *partial;
    size_t partial_length;
    size_t partial_capacity;
    bool partial_binary;
    bool in_message;
    unsigned want_write_seen; /* want_write_calls when the queue was last seen empty */
    bool queue_was_empty;
};

struct harness {
    struct relay_config config;
    struct relay *relay;
    double now;
    unsigned char secret[32];
    struct fake_transport transports[HARNESS_CONNECTIONS];
    struct connection *connections[HARNESS_CONNECTIONS];
    struct receiver_state receivers[HARNESS_CONNECTIONS];
    json_t *keep; /* parsed messages handed to the test, freed at harness_stop */
    /* Whether create/join announce `frame_header` (protocol 2, sent framed binaries), as our
     * client does; false: a v1 client, sent only binaries without the frame header. */
    bool speaks_frames;
};

/* The test config: defaults with pings, idle and slow-receiver timers off unless a test sets
 * them, so a test only sees the timers it is about. */
void harness_config(struct relay_config *config);

/* Starts a relay with `config` (NULL: harness_config) and a fixed secret. */
void harness_start(struct harness *h, const struct relay_config *config);
/* Destroys the relay and frees everything the harness holds. */
void harness_stop(struct harness *h);
/* Destroys the relay and starts a new one with the same config and secret (a restart). */
void harness_restart(struct harness *h);

/* Opens connection `index` from `address` ("127.0.0.1" if NULL); asserts it was accepted. */
struct connection *harness_open(struct harness *h, int index, const char *address, bool echo);
/* The transport reports connection `index` closed (after the core asked, or a client drop). */
void harness_closed(struct harness *h, int index);

/* Advances the clock by `seconds` and ticks. */
void harness_tick(struct harness *h, double seconds);

/* A whole text message in one receive. */
void harness_text(struct harness *h, int index, const char *text);
/* One receive of part of a message. */
void harness_receive(struct harness *h, int index, const void *bytes, size_t length, bool is_binary,
                     bool first, bool final);
/* A whole binary message, delivered in receives of at most `piece` bytes. */
void harness_binary(struct harness *h, int index, const void *bytes, size_t length, size_t piece);

/* Writes up to `max_steps` frames of connection `index` (checking flags); returns how many. */
size_t harness_write_steps(struct harness *h, int index, size_t max_steps);
/* Writes everything connection `index` has queued; returns the number of whole messages new in
 * its inbox. Fails the test if the core queued something without calling want_write. */
size_t harness_drain(struct harness *h, int index);
/* Drains every open connection and empties every inbox. */
void harness_drain_all_and_forget(struct harness *h);
/* Empties connection `index`'s inbox. */
void harness_forget(struct harness *h, int index);

/* Drains, then takes the oldest message of the inbox: it must be text and a JSON object whose
 * "type" is `type`. Returns the whole message (owned by the harness). */
json_t *harness_expect(struct harness *h, int index, const char *type);
/* As harness_expect for an `error` whose payload code is `code`; returns the payload. */
json_t *harness_expect_error(struct harness *h, int index, const char *code);
/* Drains, then takes the oldest message: it must be text; returns its bytes (NUL-terminated,
 * owned by the harness until harness_stop). */
const char *harness_expect_text(struct harness *h, int index);
/* Drains, then takes the oldest message: it must be binary; fills *length. */
const unsigned char *harness_expect_binary(struct harness *h, int index, size_t *length);
/* Drains and asserts that nothing arrived. */
void harness_expect_nothing(struct harness *h, int index);

/* Sends create_room as `user_id`; expects room_created and returns its code (harness-owned). */
const char *harness_create_room(struct harness *h, int index, const char *user_id,
                                const char *display_name, bool resume);
/* Sends join_room; expects room_joined and returns its payload. */
json_t *harness_join(struct harness *h, int index, const char *code, const char *user_id,
                     const char *display_name, bool resume);

/* The string field `name` of `object` (asserted present). */
const char *json_text(json_t *object, const char *name);
json_t *json_payload(json_t *message);

/* tests/vectors/protocol.json, read from the repository (asserted found). Caller decrefs. */
json_t *harness_protocol_vectors(void);
/* Hex text to bytes; returns the byte count (asserted well-formed and fitting). */
size_t harness_unhex(const char *hex, unsigned char *out, size_t capacity);

#endif
