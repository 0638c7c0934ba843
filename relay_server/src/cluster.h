/* cluster.h — what relay nodes of one cluster say to each other over the NATS backplane, with
 * no I/O: the envelope every backplane message travels in, and the subjects and directory keys
 * it is sent to. nats_backplane.c moves envelopes; relay_core.c decides what to send. */
#ifndef CLUSTER_H
#define CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol_constants.h"

/* A node's id: random per process, so a restarted node is a new node. Hex digits only, so it
 * is a valid NATS subject token and KV key token. */
#define CLUSTER_NODE_ID_LENGTH 16

/* Fixed part of an envelope; the node id and user id follow, then the payload. */
#define CLUSTER_ENVELOPE_FIXED_SIZE 24
#define CLUSTER_ENVELOPE_MAX_HEADER                                                                \
    (CLUSTER_ENVELOPE_FIXED_SIZE + ROOM_CODE_LENGTH + CLUSTER_NODE_ID_LENGTH + USER_ID_MAX_BYTES)

/* The JetStream KV bucket of the room directory, and how long an entry that is not refreshed
 * lives: a dead node's rooms and members disappear within this (plus one liveness check). */
#define CLUSTER_BUCKET "segsuite_rooms"
#define CLUSTER_ENTRY_TTL_SECONDS 8
#define CLUSTER_REFRESH_SECONDS 2

enum cluster_kind {
    CLUSTER_JOIN = 1,   /* payload: the member's record (JSON), to the room's subject */
    CLUSTER_LEAVE = 2,  /* no payload, to the room's subject */
    CLUSTER_TEXT = 3,   /* payload: the forwarded text as receivers get it, to a node */
    CLUSTER_BINARY = 4, /* payload: one piece of a binary message, to a node */
};

#define CLUSTER_FLAG_FIRST 1u /* first piece of a binary message */
#define CLUSTER_FLAG_FINAL 2u /* last piece of a binary message */

struct cluster_envelope {
    enum cluster_kind kind;
    unsigned flags;
    uint64_t stream; /* binary: the sending node's number for this message */
    uint32_t piece;  /* binary: 0-based index, so a lost piece is noticed */
    char code[ROOM_CODE_LENGTH + 1];
    char node[CLUSTER_NODE_ID_LENGTH + 1]; /* the sending node */
    char user_id[USER_ID_MAX_BYTES + 1];   /* the member it is about or from */
    const unsigned char *payload;
    size_t payload_length;
};

/* Writes the envelope's header (everything but the payload) into `out`; returns its size, or 0
 * if a field is out of range or `capacity` is too small. */
size_t cluster_envelope_encode(const struct cluster_envelope *envelope, unsigned char *out,
                               size_t capacity);

/* Reads an envelope from a backplane message; `payload` then points into `bytes`. False, with
 * `why`, for anything malformed: the message is then dropped whole. */
bool cluster_envelope_decode(const unsigned char *bytes, size_t length,
                             struct cluster_envelope *envelope, const char **why);

/* A fresh random node id (CLUSTER_NODE_ID_LENGTH hex digits and a NUL). */
bool cluster_node_id_generate(char out[CLUSTER_NODE_ID_LENGTH + 1]);

/* Subjects and KV keys; each returns false if `out` is too small. */
bool cluster_room_subject(const char *code, char *out, size_t size);
bool cluster_node_subject(const char *node, char *out, size_t size);
bool cluster_room_key(const char *code, char *out, size_t size);
bool cluster_members_key(const char *code, const char *node, char *out, size_t size);
bool cluster_members_filter(const char *code, char *out, size_t size);
bool cluster_node_key(const char *node, char *out, size_t size);

#endif
