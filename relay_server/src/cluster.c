/* cluster.c — the backplane envelope (a small binary header, checked field by field when read)
 * and the names of the subjects and directory keys nodes use. No I/O: see nats_backplane.c. */
#include "cluster.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "room_code.h"

/* Layout (little-endian): CLUSTER_ENVELOPE_FIXED_SIZE fixed bytes, then the variable fields.
 *   0  2  magic "SC"    2  1  version (1)         3  1  kind         4  1  flags
 *   5  1  node id length N (16)   6  1  user id length U (0..128)   7  1  reserved, 0
 *   8  8  stream       16  4  piece              20  4  reserved, 0
 *  24  6  room code    30  N  node id            30+N  U  user id    then the payload */
#define MAGIC0 'S'
#define MAGIC1 'C'
#define VERSION 1
#define CODE_OFFSET CLUSTER_ENVELOPE_FIXED_SIZE

static void put_u64(unsigned char *out, uint64_t value)
{
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(value >> (8 * i));
}

static void put_u32(unsigned char *out, uint32_t value)
{
    for (int i = 0; i < 4; i++)
        out[i] = (unsigned char)(value >> (8 * i));
}

static uint64_t get_u64(const unsigned char *in)
{
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--)
        value = value << 8 | in[i];
    return value;
}

static uint32_t get_u32(const unsigned char *in)
{
    uint32_t value = 0;
    for (int i = 3; i >= 0; i--)
        value = value << 8 | in[i];
    return value;
}

static bool is_node_id(const char *text, size_t length)
{
    if (length != CLUSTER_NODE_ID_LENGTH)
        return false;
    for (size_t i = 0; i < length; i++)
        if (!strchr("0123456789abcdef", text[i]) || !text[i])
            return false;
    return true;
}

static bool is_code(const char *text)
{
    char normalized[ROOM_CODE_LENGTH + 1];
    return strlen(text) == ROOM_CODE_LENGTH && room_code_normalize(text, normalized) &&
           !strcmp(normalized, text);
}

size_t cluster_envelope_encode(const struct cluster_envelope *envelope, unsigned char *out,
                               size_t capacity)
{
    size_t node_length = strlen(envelope->node), user_length = strlen(envelope->user_id);
    size_t size = CODE_OFFSET + ROOM_CODE_LENGTH + node_length + user_length;
    if (envelope->kind < CLUSTER_JOIN || envelope->kind > CLUSTER_BINARY ||
        !is_node_id(envelope->node, node_length) || user_length > USER_ID_MAX_BYTES ||
        !is_code(envelope->code) || envelope->flags > 3 || size > capacity)
        return 0;
    memset(out, 0, CODE_OFFSET);
    out[0] = MAGIC0;
    out[1] = MAGIC1;
    out[2] = VERSION;
    out[3] = (unsigned char)envelope->kind;
    out[4] = (unsigned char)envelope->flags;
    out[5] = (unsigned char)node_length;
    out[6] = (unsigned char)user_length;
    put_u64(out + 8, envelope->stream);
    put_u32(out + 16, envelope->piece);
    memcpy(out + CODE_OFFSET, envelope->code, ROOM_CODE_LENGTH);
    memcpy(out + CODE_OFFSET + ROOM_CODE_LENGTH, envelope->node, node_length);
    memcpy(out + CODE_OFFSET + ROOM_CODE_LENGTH + node_length, envelope->user_id, user_length);
    return size;
}

bool cluster_envelope_decode(const unsigned char *bytes, size_t length,
                             struct cluster_envelope *envelope, const char **why)
{
    const char *problem = NULL;
    memset(envelope, 0, sizeof(*envelope));
    if (length < CODE_OFFSET + ROOM_CODE_LENGTH)
        problem = "shorter than an envelope";
    else if (bytes[0] != MAGIC0 || bytes[1] != MAGIC1)
        problem = "bad magic";
    else if (bytes[2] != VERSION)
        problem = "unknown version";
    else if (bytes[3] < CLUSTER_JOIN || bytes[3] > CLUSTER_BINARY)
        problem = "unknown kind";
    else if (bytes[4] > 3 || bytes[7] != 0 || get_u32(bytes + 20) != 0)
        problem = "reserved bits set";
    else if (bytes[5] != CLUSTER_NODE_ID_LENGTH || bytes[6] > USER_ID_MAX_BYTES)
        problem = "bad field length";
    else if (length < CODE_OFFSET + ROOM_CODE_LENGTH + (size_t)bytes[5] + bytes[6])
        problem = "ends inside its header";
    if (problem) {
        if (why)
            *why = problem;
        return false;
    }
    size_t node_length = bytes[5], user_length = bytes[6];
    const unsigned char *cursor = bytes + CODE_OFFSET;
    memcpy(envelope->code, cursor, ROOM_CODE_LENGTH);
    cursor += ROOM_CODE_LENGTH;
    memcpy(envelope->node, cursor, node_length);
    cursor += node_length;
    memcpy(envelope->user_id, cursor, user_length);
    cursor += user_length;
    if (!is_code(envelope->code))
        problem = "bad room code";
    else if (!is_node_id(envelope->node, node_length))
        problem = "bad node id";
    else if (strlen(envelope->user_id) != user_length)
        problem = "NUL in user id";
    if (problem) {
        if (why)
            *why = problem;
        return false;
    }
    envelope->kind = (enum cluster_kind)bytes[3];
    envelope->flags = bytes[4];
    envelope->stream = get_u64(bytes + 8);
    envelope->piece = get_u32(bytes + 16);
    envelope->payload = cursor;
    envelope->payload_length = length - (size_t)(cursor - bytes);
    return true;
}

bool cluster_node_id_generate(char out[CLUSTER_NODE_ID_LENGTH + 1])
{
    unsigned char random[CLUSTER_NODE_ID_LENGTH / 2];
    if (getrandom(random, sizeof(random), 0) != (ssize_t)sizeof(random))
        return false;
    for (size_t i = 0; i < sizeof(random); i++)
        snprintf(out + 2 * i, 3, "%02x", random[i]);
    return true;
}

static bool format(char *out, size_t size, int written)
{
    return written > 0 && (size_t)written < size;
}

bool cluster_room_subject(const char *code, char *out, size_t size)
{
    return format(out, size, snprintf(out, size, "segsuite.room.%s", code));
}

bool cluster_node_subject(const char *node, char *out, size_t size)
{
    return format(out, size, snprintf(out, size, "segsuite.node.%s", node));
}

bool cluster_room_key(const char *code, char *out, size_t size)
{
    return format(out, size, snprintf(out, size, "room.%s", code));
}

bool cluster_members_key(const char *code, const char *node, char *out, size_t size)
{
    return format(out, size, snprintf(out, size, "members.%s.%s", code, node));
}

bool cluster_members_filter(const char *code, char *out, size_t size)
{
    return format(out, size, snprintf(out, size, "members.%s.*", code));
}

bool cluster_node_key(const char *node, char *out, size_t size)
{
    return format(out, size, snprintf(out, size, "node.%s", node));
}
