/* floor_relay: the least work a correct relay of docs/protocol.md part 1 does on this machine.
 * Test equipment for bench/relay_bench.py (like bench/loadgen), not a product and not a peer:
 * its figures are a lower bound for what relay_server could reach, so that a target that even
 * this relay misses is known to be out of reach here rather than assumed to be.
 *
 * What no relay can skip, and all this one does: accept, answer the upgrade (SHA-1 + base64 of
 * Sec-WebSocket-Key), read every byte once, unmask it (clients mask; RFC 6455 forbids masked
 * server frames), write it once per receiver with a server frame header, parse every text
 * message as JSON (jansson) and add sender_id/sender_name to forwarded ones (spliced over the
 * closing brace, as relay_server does, not re-encoded), and bound what it buffers per receiver.
 * How, with one thread and level-triggered epoll:
 * - a binary message is forwarded as it arrives: each read (up to 1 MiB) becomes one fragment,
 *   and the read buffer is shared by every receiver (reference count), never copied;
 * - each fragment is written to each receiver straight from the receive path (writev of header
 *   and payload); only what a socket does not take is queued;
 * - while any receiver has more than 16 MiB queued, the sender is not read (TCP backpressure);
 * - frames of different messages never interleave on a receiver: one binary message at a time
 *   per room (another member's next message waits unread), and text the relay itself sends to a
 *   receiver in the middle of a binary message waits for its end.
 *
 * What it skips, because a product needs it and this benchmark does not exercise it: HTTP
 * routing (every request is taken as an upgrade: no /health, 404, 426, /api/create-room,
 * access token), request validation beyond Sec-WebSocket-Key, UTF-8 validation of text frames
 * (jansson rejects invalid UTF-8 JSON, nothing more), close codes 1002/1007/1009 (a protocol
 * error just drops the connection), message size limits (text is capped at 1 MiB only to bound
 * memory), user_id/display_name size checks, join rate limits, limits on rooms, members and
 * connections, handshake and idle timeouts, keep-alive pings, slow-receiver timeouts (a stuck
 * receiver stalls its room's senders for ever), waiting for the peer's Close, protocol 2 (relay
 * info, frame header checks, directed delivery, resume, flow-control options), LAN mode,
 * logging, metrics, graceful shutdown, and any recovery from running out of memory or fds.
 *
 * It is the floor of relays that read and write with ordinary socket calls (a copy into and out
 * of the kernel per byte and receiver). Zero-copy tricks (vmsplice/tee/splice of page-aligned
 * buffers) are not tried: they could save part of the per-receiver copy, not the TCP work.
 *
 *     build/bench/floor_relay --port 0 [--listen 127.0.0.1]   # prints "listening on HOST:PORT"
 */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* One read, one forwarded fragment: 1 MiB, as relay_server reads. */
#define CHUNK_SIZE (1024 * 1024)
#define RECEIVER_LIMIT (16u << 20) /* queued bytes past which a receiver's senders wait */
#define MAX_TEXT (1u << 20)        /* only to bound memory */
#define MAX_HANDSHAKE 8192
#define SPARE_CHUNKS 32 /* freed read buffers kept for reuse (no mmap per read) */
#define ROOM_BUCKETS 4096
#define CODE_ALPHABET "ABCDEFGHJKLMNPQRSTUVWXYZ23456789" /* 32 letters: a byte & 31 is unbiased */
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

enum { OP_CONT = 0, OP_TEXT = 1, OP_BINARY = 2, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10 };
#define RAW (-1) /* send_frame() opcode for bytes without a frame header (the 101 answer) */

/* Bytes shared by every receiver of a fragment or message. */
struct chunk {
    int refs;
    size_t capacity;
    unsigned char data[];
};

/* One frame in a receiver's queue: its header inline, its payload in a shared chunk. */
struct out {
    struct out *next;
    struct chunk *chunk;
    const unsigned char *payload;
    size_t len, done; /* done: header + payload bytes already written */
    unsigned char header[10];
    uint8_t header_len;
};

struct queue {
    struct out *head, *tail;
    size_t bytes;
};

struct room;

struct conn {
    int fd;
    uint32_t events; /* what epoll watches now */
    bool upgraded, dead, throttled, blocked, closing, pending;
    struct conn *next_dead, *next_pending, *next_member;
    char *handshake;
    size_t handshake_len;
    /* Input not parsed yet: while blocked, the rest of a read; otherwise a partial header. */
    struct chunk *rbuf;
    size_t rpos, rend;
    unsigned char partial[14];
    size_t partial_len;
    /* The client frame and data message being read. */
    bool in_frame, frame_fin, message_started;
    uint8_t frame_opcode, message_opcode, key[4];
    unsigned key_pos;
    uint64_t frame_left;
    unsigned char *text;
    size_t text_len, text_capacity;
    unsigned char control[125];
    size_t control_len;
    /* Output: frames to write, and whole messages held while a binary message streams in. */
    struct queue out, held;
    struct conn *stream_from;
    struct room *room;
    char *user_id, *display_name;
    char *sender_suffix; /* `,"sender_id":…,"sender_name":…}`, spliced into forwarded text */
};

struct room {
    char code[7];
    struct room *next_in_bucket;
    struct conn *members; /* joining order */
    struct conn *streamer;
};

static int epoll_fd;
static struct chunk *spare[SPARE_CHUNKS];
static int spare_count;
static struct conn *dead_list, *pending_list;
static struct room *buckets[ROOM_BUCKETS];

static struct chunk *chunk_new(size_t capacity)
{
    struct chunk *c =
        capacity == CHUNK_SIZE && spare_count ? spare[--spare_count] : malloc(sizeof *c + capacity);
    if (!c) {
        perror("floor_relay: out of memory");
        exit(1);
    }
    c->refs = 1;
    c->capacity = capacity;
    return c;
}

static void chunk_unref(struct chunk *c)
{
    if (--c->refs > 0)
        return;
    if (c->capacity == CHUNK_SIZE && spare_count < SPARE_CHUNKS)
        spare[spare_count++] = c;
    else
        free(c);
}

static void kill_conn(struct conn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    c->next_dead = dead_list;
    dead_list = c;
}

static void update_events(struct conn *c)
{
    uint32_t want =
        (c->throttled || c->blocked || c->closing ? 0 : EPOLLIN) | (c->out.head ? EPOLLOUT : 0);
    if (want == c->events || c->dead)
        return;
    struct epoll_event ev = {.events = want, .data.ptr = c};
    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = want;
}

static uint8_t frame_header(unsigned char *h, bool fin, int opcode, size_t len)
{
    if (opcode == RAW)
        return 0;
    h[0] = (unsigned char)((fin ? 0x80 : 0) | opcode);
    if (len < 126) {
        h[1] = (unsigned char)len;
        return 2;
    }
    if (len <= 0xffff) {
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

static void free_queue(struct queue *q)
{
    while (q->head) {
        struct out *o = q->head;
        q->head = o->next;
        chunk_unref(o->chunk);
        free(o);
    }
    q->tail = NULL;
    q->bytes = 0;
}

/* Write as much of the queue as the socket takes, many frames per writev. */
static void flush(struct conn *c)
{
    while (c->out.head && !c->dead) {
        struct iovec iov[64];
        int n = 0;
        size_t asked = 0;
        for (struct out *o = c->out.head; o && n < 63; o = o->next) {
            size_t skip = o->done;
            if (skip < o->header_len) {
                iov[n++] = (struct iovec){o->header + skip, o->header_len - skip};
                skip = 0;
            } else {
                skip -= o->header_len;
            }
            if (o->len > skip)
                iov[n++] = (struct iovec){(void *)(o->payload + skip), o->len - skip};
        }
        for (int i = 0; i < n; i++)
            asked += iov[i].iov_len;
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR)
                kill_conn(c);
            return;
        }
        c->out.bytes -= (size_t)w;
        for (size_t left = (size_t)w; c->out.head;) {
            struct out *o = c->out.head;
            size_t rest = o->header_len + o->len - o->done;
            if (left < rest) {
                o->done += left;
                break;
            }
            left -= rest;
            c->out.head = o->next;
            chunk_unref(o->chunk);
            free(o);
        }
        if (!c->out.head)
            c->out.tail = NULL;
        if ((size_t)w < asked)
            return; /* the socket is full: EPOLLOUT says when to go on */
    }
}

/* Send one frame: at once when nothing is queued before it, queueing what the socket does not
 * take. `hold`: a whole message, which waits while c receives another sender's binary message. */
static void send_frame(struct conn *c, struct chunk *chunk, const unsigned char *payload,
                       size_t len, bool fin, int opcode, bool hold)
{
    if (c->dead)
        return;
    unsigned char header[10];
    uint8_t header_len = frame_header(header, fin, opcode, len);
    bool held = hold && c->stream_from;
    size_t done = 0;
    if (!held && !c->out.head) {
        struct iovec iov[2] = {{header, header_len}, {(void *)payload, len}};
        ssize_t w = writev(c->fd, iov, 2);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            kill_conn(c);
            return;
        }
        if (w == (ssize_t)(header_len + len))
            return;
        done = w > 0 ? (size_t)w : 0;
    }
    struct out *o = malloc(sizeof *o);
    if (!o) {
        perror("floor_relay: out of memory");
        exit(1);
    }
    *o = (struct out){.chunk = chunk, .payload = payload, .len = len, .done = done};
    memcpy(o->header, header, header_len);
    o->header_len = header_len;
    chunk->refs++;
    struct queue *q = held ? &c->held : &c->out;
    if (q->tail)
        q->tail->next = o;
    else
        q->head = o;
    q->tail = o;
    q->bytes += header_len + len - done;
    if (!held)
        update_events(c);
}

static void send_copy(struct conn *c, int opcode, const void *data, size_t len)
{
    struct chunk *chunk = chunk_new(len);
    memcpy(chunk->data, data, len);
    send_frame(c, chunk, chunk->data, len, true, opcode, opcode != OP_PONG && opcode != OP_CLOSE);
    chunk_unref(chunk);
}

/* Send a text message to `to`, or to every member of `room` but `except`. */
static void send_text(struct conn *to, struct room *room, struct conn *except, struct chunk *chunk,
                      size_t len)
{
    if (to)
        send_frame(to, chunk, chunk->data, len, true, OP_TEXT, true);
    for (struct conn *m = room ? room->members : NULL; m; m = m->next_member)
        if (m != except)
            send_frame(m, chunk, chunk->data, len, true, OP_TEXT, true);
}

/* Serialize once and send_text(). Takes `msg`. */
static void send_json(struct conn *to, struct room *room, struct conn *except, json_t *msg)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!text)
        return;
    size_t len = strlen(text);
    struct chunk *chunk = chunk_new(len);
    memcpy(chunk->data, text, len);
    free(text);
    send_text(to, room, except, chunk, len);
    chunk_unref(chunk);
}

static void send_error(struct conn *c, const char *error, const char *code, const char *key,
                       const char *value)
{
    json_t *payload = json_pack("{s:s, s:s}", "error", error, "code", code);
    if (key)
        json_object_set_new(payload, key, json_string(value));
    send_json(c, NULL, NULL, json_pack("{s:s, s:o}", "type", "error", "payload", payload));
}

/* ---- rooms ---- */

static unsigned room_hash(const char *code)
{
    unsigned h = 0;
    for (int i = 0; i < 6; i++)
        h = h * 31 + (unsigned char)code[i];
    return h % ROOM_BUCKETS;
}

static struct room *find_room(const char *code)
{
    struct room *r = buckets[room_hash(code)];
    while (r && strcmp(r->code, code) != 0)
        r = r->next_in_bucket;
    return r;
}

static struct room *add_room(const char *code)
{
    struct room *r = calloc(1, sizeof *r);
    if (!r)
        exit(1);
    memcpy(r->code, code, 7);
    unsigned h = room_hash(code);
    r->next_in_bucket = buckets[h];
    buckets[h] = r;
    return r;
}

static void delete_room(struct room *r)
{
    struct room **p = &buckets[room_hash(r->code)];
    while (*p != r)
        p = &(*p)->next_in_bucket;
    *p = r->next_in_bucket;
    free(r);
}

static json_t *users_of(struct room *room)
{
    json_t *users = json_array();
    for (struct conn *m = room->members; m; m = m->next_member)
        json_array_append_new(
            users, json_pack("{s:s, s:s}", "user_id", m->user_id, "display_name", m->display_name));
    return users;
}

static void schedule(struct conn *c)
{
    if (c->pending)
        return;
    c->pending = true;
    c->next_pending = pending_list;
    pending_list = c;
}

/* Held messages go out once the binary message c was receiving has ended. */
static void release_held(struct conn *c)
{
    c->stream_from = NULL;
    if (!c->held.head)
        return;
    if (c->out.tail)
        c->out.tail->next = c->held.head;
    else
        c->out.head = c->held.head;
    c->out.tail = c->held.tail;
    c->out.bytes += c->held.bytes;
    c->held = (struct queue){0};
    flush(c);
    update_events(c);
}

/* The room's binary message is over (or cut short): members it blocked may go on. */
static void end_stream(struct room *room)
{
    room->streamer = NULL;
    for (struct conn *m = room->members; m; m = m->next_member) {
        if (m->blocked) {
            m->blocked = false;
            update_events(m);
            schedule(m); /* parse the rest of its last read outside this call chain */
        }
    }
}

static bool receivers_full(struct conn *sender)
{
    for (struct conn *m = sender->room ? sender->room->members : NULL; m; m = m->next_member)
        if (m != sender && !m->dead && m->out.bytes > RECEIVER_LIMIT)
            return true;
    return false;
}

static void unthrottle(struct room *room)
{
    for (struct conn *m = room->members; m; m = m->next_member) {
        if (m->throttled && !receivers_full(m)) {
            m->throttled = false;
            update_events(m);
        }
    }
}

static void leave_room(struct conn *c)
{
    struct room *room = c->room;
    if (!room)
        return;
    static const unsigned char nothing[1];
    struct chunk *empty = chunk_new(0);
    for (struct conn *m = room->members; m; m = m->next_member) {
        /* Cut short the binary message c was sending, or the one c was receiving. */
        if ((room->streamer == c && m->stream_from == c) || (m == c && c->stream_from)) {
            send_frame(m, empty, nothing, 0, true, OP_CONT, false);
            release_held(m);
        }
    }
    chunk_unref(empty);
    if (room->streamer == c)
        end_stream(room);
    struct conn **p = &room->members;
    while (*p != c)
        p = &(*p)->next_member;
    *p = c->next_member;
    c->room = NULL;
    c->next_member = NULL;
    if (!room->members) {
        delete_room(room);
        return;
    }
    send_json(NULL, room, NULL,
              json_pack("{s:s, s:{s:s, s:s, s:o}}", "type", "user_left", "payload", "user_id",
                        c->user_id, "display_name", c->display_name, "users", users_of(room)));
    unthrottle(room);
}

static void enter_room(struct conn *c, bool create, json_t *payload)
{
    const char *user_id, *name = "", *asked = NULL;
    char code[7] = {0};
    if (json_unpack(payload, "{s:s, s?s}", "user_id", &user_id, "display_name", &name)) {
        send_error(c, "Invalid field: user_id", "INVALID_FIELD", "field", "user_id");
        return;
    }
    if (create) {
        unsigned char random[6];
        do {
            if (getrandom(random, sizeof random, 0) != sizeof random)
                exit(1);
            for (int i = 0; i < 6; i++)
                code[i] = CODE_ALPHABET[random[i] & 31];
        } while (find_room(code));
    } else {
        asked = json_string_value(json_object_get(payload, "room_code"));
        if (!asked) {
            send_error(c, "Invalid field: room_code", "INVALID_FIELD", "field", "room_code");
            return;
        }
        for (int i = 0; i < 6 && asked[i]; i++)
            code[i] = (char)(asked[i] >= 'a' && asked[i] <= 'z' ? asked[i] - 32 : asked[i]);
        if (strlen(asked) != 6 || !find_room(code)) {
            send_error(c, "Room not found", "ROOM_NOT_FOUND", NULL, NULL);
            return;
        }
    }
    leave_room(c); /* may delete the room c rejoins: it is made again below */
    struct room *room = find_room(code);
    if (!room)
        room = add_room(code);
    free(c->user_id);
    free(c->display_name);
    free(c->sender_suffix);
    c->user_id = strdup(user_id);
    c->display_name = strdup(name);
    json_t *ids = json_pack("{s:s, s:s}", "sender_id", user_id, "sender_name", name);
    c->sender_suffix = json_dumps(ids, JSON_COMPACT);
    c->sender_suffix[0] = ','; /* {"sender_id":…} becomes ,"sender_id":…} */
    json_decref(ids);
    struct conn **p = &room->members;
    while (*p)
        p = &(*p)->next_member;
    *p = c;
    c->room = room;
    if (create) {
        send_json(
            c, NULL, NULL,
            json_pack("{s:s, s:{s:s}}", "type", "room_created", "payload", "room_code", code));
        return;
    }
    json_t *users = users_of(room);
    send_json(c, NULL, NULL,
              json_pack("{s:s, s:{s:s, s:O}}", "type", "room_joined", "payload", "room_code", code,
                        "users", users));
    send_json(NULL, room, c,
              json_pack("{s:s, s:{s:s, s:s, s:o}}", "type", "user_joined", "payload", "user_id",
                        user_id, "display_name", name, "users", users));
}

/* ---- input ---- */

static void on_text(struct conn *c)
{
    json_error_t error;
    json_t *msg = json_loadb((const char *)c->text, c->text_len, 0, &error);
    if (!msg) {
        send_error(c, "Invalid message format", "INVALID_JSON", "details", error.text);
        return;
    }
    const char *type = json_string_value(json_object_get(msg, "type"));
    json_t *payload = json_object_get(msg, "payload");
    if (!json_is_object(msg) || !type || !json_is_object(payload)) {
        send_error(c, "A message must be an object with a string type and an object payload",
                   "INVALID_MESSAGE", NULL, NULL);
    } else if (strcmp(type, "create_room") == 0 || strcmp(type, "join_room") == 0) {
        enter_room(c, type[0] == 'c', payload);
    } else if (strcmp(type, "leave_room") == 0) {
        leave_room(c);
    } else if (c->room &&
               (json_object_get(msg, "sender_id") || json_object_get(msg, "sender_name"))) {
        json_object_set_new(msg, "sender_id", json_string(c->user_id));
        json_object_set_new(msg, "sender_name", json_string(c->display_name));
        send_json(NULL, c->room, c, msg);
        return;
    } else if (c->room) {
        /* Valid JSON object: splice the sender fields over its closing brace, no re-encoding. */
        size_t end = c->text_len, suffix_len = strlen(c->sender_suffix);
        while (c->text[end - 1] != '}')
            end--;
        struct chunk *chunk = chunk_new(end - 1 + suffix_len);
        memcpy(chunk->data, c->text, end - 1);
        memcpy(chunk->data + end - 1, c->sender_suffix, suffix_len);
        send_text(NULL, c->room, c, chunk, end - 1 + suffix_len);
        chunk_unref(chunk);
    }
    json_decref(msg);
}

static void on_control(struct conn *c)
{
    if (c->frame_opcode == OP_PING) {
        send_copy(c, OP_PONG, c->control, c->control_len);
    } else if (c->frame_opcode == OP_CLOSE) {
        send_copy(c, OP_CLOSE, c->control, c->control_len < 2 ? c->control_len : 2);
        c->closing = true; /* stop reading; drop the connection once the queue is written */
        if (!c->out.head)
            kill_conn(c);
        update_events(c);
    }
}

/* XOR with the 4-byte key, 16 bytes at a time (SSE2 on x86-64). */
static void unmask(unsigned char *p, size_t len, const uint8_t key[4], unsigned *pos)
{
    typedef uint8_t v16 __attribute__((vector_size(16)));
    uint8_t k[16];
    for (int i = 0; i < 16; i++)
        k[i] = key[(*pos + (unsigned)i) & 3];
    v16 kv, v;
    memcpy(&kv, k, 16);
    size_t i = 0;
    for (; i + 16 <= len; i += 16) {
        memcpy(&v, p + i, 16);
        v ^= kv;
        memcpy(p + i, &v, 16);
    }
    for (; i < len; i++)
        p[i] ^= k[i & 15];
    *pos = (*pos + (unsigned)len) & 3;
}

/* Send these bytes of c's binary message to the room as one fragment. */
static void forward_binary(struct conn *c, const unsigned char *p, size_t len, bool last)
{
    struct room *room = c->room;
    if (!room)
        return;
    bool first = !c->message_started;
    c->message_started = true;
    for (struct conn *m = room->members; m; m = m->next_member) {
        if (m == c || (!first && m->stream_from != c))
            continue; /* a member that joined after the first fragment gets none of it */
        if (first && !last)
            m->stream_from = c;
        send_frame(m, c->rbuf, p, len, last, first ? OP_BINARY : OP_CONT, false);
        if (last && m->stream_from == c)
            release_held(m);
    }
    if (!last)
        room->streamer = c;
    else if (room->streamer == c)
        end_stream(room);
}

/* Take the next client frame header from the input; false when it is not all there yet, or c
 * must wait (another member's binary message is streaming), or the frame is invalid. */
static bool take_header(struct conn *c)
{
    const unsigned char *p = c->rbuf->data + c->rpos;
    size_t available = c->rend - c->rpos;
    if (available < 2)
        return false;
    uint64_t len = p[1] & 0x7f;
    size_t need = 6 + (len == 126 ? 2 : len == 127 ? 8 : 0);
    if (available < need)
        return false;
    uint8_t opcode = p[0] & 0x0f;
    bool fin = p[0] & 0x80, control = opcode & 8;
    if (len >= 126) {
        len = 0;
        for (size_t i = 2; i < need - 4; i++)
            len = len << 8 | p[i];
    }
    if (!(p[1] & 0x80) || (p[0] & 0x70) || (opcode > OP_BINARY && opcode < OP_CLOSE) ||
        opcode > OP_PONG || (control && (!fin || len > 125)) ||
        (!control && (opcode == OP_CONT) != (c->message_opcode != 0))) {
        kill_conn(c); /* unmasked, reserved bits or opcode, or fragmentation out of order */
        return false;
    }
    bool starts_message = !control && opcode != OP_CONT;
    if (starts_message && c->room && c->room->streamer && c->room->streamer != c) {
        c->blocked = true;
        update_events(c);
        return false;
    }
    memcpy(c->key, p + need - 4, 4);
    c->key_pos = 0;
    c->rpos += need;
    c->in_frame = true;
    c->frame_opcode = opcode;
    c->frame_fin = fin;
    c->frame_left = len;
    if (control)
        c->control_len = 0;
    if (starts_message) {
        c->message_opcode = opcode;
        c->message_started = false;
        c->text_len = 0;
    }
    return true;
}

static void parse_input(struct conn *c)
{
    while (!c->dead && !c->blocked && !c->closing && (c->in_frame || take_header(c))) {
        size_t available = c->rend - c->rpos;
        size_t take = available < c->frame_left ? available : (size_t)c->frame_left;
        unsigned char *p = c->rbuf->data + c->rpos;
        unmask(p, take, c->key, &c->key_pos);
        c->rpos += take;
        c->frame_left -= take;
        bool done = c->frame_left == 0;
        if (c->frame_opcode & 8) {
            memcpy(c->control + c->control_len, p, take);
            c->control_len += take;
        } else if (c->message_opcode == OP_TEXT) {
            if (c->text_len + take > MAX_TEXT) {
                kill_conn(c);
                return;
            }
            if (c->text_len + take > c->text_capacity) {
                size_t capacity = (c->text_len + take) * 2;
                if (!(c->text = realloc(c->text, capacity)))
                    exit(1);
                c->text_capacity = capacity;
            }
            memcpy(c->text + c->text_len, p, take);
            c->text_len += take;
        } else if (take > 0 || (done && c->frame_fin)) {
            forward_binary(c, p, take, done && c->frame_fin);
        }
        if (!done)
            return; /* the rest of the frame is still to be read */
        c->in_frame = false;
        if (c->frame_opcode & 8) {
            on_control(c);
        } else if (c->frame_fin) {
            if (c->message_opcode == OP_TEXT)
                on_text(c);
            c->message_opcode = 0;
        }
    }
}

/* After parsing: keep a partial header (at most 13 bytes) and give the read buffer back, or keep
 * the whole buffer while c is blocked. */
static void settle_input(struct conn *c)
{
    if (!c->rbuf || (c->blocked && !c->dead))
        return;
    size_t left = c->rend - c->rpos;
    c->partial_len = c->dead || c->closing || left > sizeof c->partial ? 0 : left;
    memcpy(c->partial, c->rbuf->data + c->rpos, c->partial_len);
    chunk_unref(c->rbuf);
    c->rbuf = NULL;
}

static void process_input(struct conn *c)
{
    parse_input(c);
    settle_input(c);
    if (!c->dead && !c->throttled && receivers_full(c)) {
        c->throttled = true;
        update_events(c);
    }
}

static void on_handshake(struct conn *c)
{
    char *h = c->handshake;
    char *end = memmem(h, c->handshake_len, "\r\n\r\n", 4);
    if (!end) {
        if (c->handshake_len == MAX_HANDSHAKE)
            kill_conn(c);
        return;
    }
    *end = 0;
    char *key = strcasestr(h, "\r\nSec-WebSocket-Key:");
    size_t key_len = 0;
    if (key) {
        key += 20;
        key += strspn(key, " \t");
        key_len = strcspn(key, " \t\r");
    }
    if (key_len == 0 || key_len > 64) {
        const char *refusal = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        send_copy(c, RAW, refusal, strlen(refusal));
        c->closing = true;
        if (!c->out.head)
            kill_conn(c);
        update_events(c);
        return;
    }
    unsigned char input[64 + sizeof WS_GUID], digest[SHA_DIGEST_LENGTH];
    memcpy(input, key, key_len);
    memcpy(input + key_len, WS_GUID, sizeof WS_GUID - 1);
    SHA1(input, key_len + sizeof WS_GUID - 1, digest);
    char accept[32], answer[160];
    EVP_EncodeBlock((unsigned char *)accept, digest, SHA_DIGEST_LENGTH);
    int len = snprintf(answer, sizeof answer,
                       "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                       accept);
    send_copy(c, RAW, answer, (size_t)len);
    c->upgraded = true;
    /* Frames the client sent right behind its request. */
    size_t extra = c->handshake_len - (size_t)(end + 4 - h);
    if (extra) {
        c->rbuf = chunk_new(CHUNK_SIZE);
        memcpy(c->rbuf->data, end + 4, extra);
        c->rpos = 0;
        c->rend = extra;
        process_input(c);
    }
    free(c->handshake);
    c->handshake = NULL;
}

static void on_readable(struct conn *c)
{
    if (!c->upgraded) {
        if (!c->handshake && !(c->handshake = malloc(MAX_HANDSHAKE)))
            exit(1);
        ssize_t n =
            recv(c->fd, c->handshake + c->handshake_len, MAX_HANDSHAKE - c->handshake_len, 0);
        if (n <= 0) {
            if (n == 0 || (errno != EAGAIN && errno != EINTR))
                kill_conn(c);
            return;
        }
        c->handshake_len += (size_t)n;
        on_handshake(c);
        return;
    }
    if (!c->rbuf) {
        c->rbuf = chunk_new(CHUNK_SIZE);
        memcpy(c->rbuf->data, c->partial, c->partial_len);
        c->rpos = 0;
        c->rend = c->partial_len;
    }
    ssize_t n = recv(c->fd, c->rbuf->data + c->rend, CHUNK_SIZE - c->rend, 0);
    if (n <= 0 && (n == 0 || (errno != EAGAIN && errno != EINTR)))
        kill_conn(c);
    if (n > 0)
        c->rend += (size_t)n;
    process_input(c);
}

static void on_writable(struct conn *c)
{
    bool was_full = c->out.bytes > RECEIVER_LIMIT;
    flush(c);
    if (c->dead)
        return;
    update_events(c);
    if (c->closing && !c->out.head)
        kill_conn(c);
    else if (was_full && c->out.bytes <= RECEIVER_LIMIT && c->room)
        unthrottle(c->room);
}

static void on_accept(int listener)
{
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c)
            exit(1);
        c->fd = fd;
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev);
    }
}

/* Parse what blocked members left unread, now that they may go on. */
static void run_pending(void)
{
    while (pending_list) {
        struct conn *c = pending_list;
        pending_list = c->next_pending;
        c->pending = false;
        if (!c->dead && !c->blocked && c->rbuf)
            process_input(c);
    }
}

static void reap(void)
{
    while (dead_list) {
        struct conn *c = dead_list;
        dead_list = c->next_dead;
        leave_room(c);
        for (struct conn **p = &pending_list; *p; p = &(*p)->next_pending) {
            if (*p == c) {
                *p = c->next_pending;
                break;
            }
        }
        free_queue(&c->out);
        free_queue(&c->held);
        if (c->rbuf)
            chunk_unref(c->rbuf);
        close(c->fd);
        free(c->handshake);
        free(c->text);
        free(c->user_id);
        free(c->display_name);
        free(c->sender_suffix);
        free(c);
    }
}

int main(int argc, char **argv)
{
    const char *listen_address = "127.0.0.1";
    int port = 8787;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--listen") == 0)
            listen_address = argv[i + 1];
    }
    if (argc % 2 == 0 || port < 0 || port > 65535) {
        fprintf(stderr, "usage: floor_relay [--port PORT] [--listen IPV4]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t address_len = sizeof address;
    if (inet_pton(AF_INET, listen_address, &address.sin_addr) != 1 ||
        bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 4096) ||
        getsockname(listener, (struct sockaddr *)&address, &address_len)) {
        perror("floor_relay: listen");
        return 1;
    }
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &ev);
    printf("listening on %s:%d\n", listen_address, ntohs(address.sin_port));
    fflush(stdout);
    for (;;) {
        struct epoll_event events[256];
        int n = epoll_wait(epoll_fd, events, 256, pending_list ? 0 : -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                on_accept(listener);
                continue;
            }
            if (!c->dead && (events[i].events & EPOLLOUT))
                on_writable(c);
            if (!c->dead && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                on_readable(c);
        }
        run_pending();
        reap();
    }
}
