/* fuzz_control.c — libFuzzer harness over the relay core: the input is a script of events for
 * three connections (text and control messages, binary chunks with and without frame headers,
 * writes, drops and reconnects, timer ticks, reservations; rooms or one LAN session), plus raw
 * sockets accepted, upgraded and closed under the per-address limits and refusals logged, played
 * as the transport would play them. Checks what must always hold: framing of every written
 * message, JSON text to room members, no user_id twice in a room's user list, an attested
 * host_id that is null or one of the room's members, the per-address socket limits, connection
 * count, and that everything queued drains once all receivers write. */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "frame_header.h"
#include "log.h"
#include "relay_core.h"
#include "resume_token.h"

#define PEERS 3
#define KNOWN_CODES 4
#define MAX_EVENTS 512
#define PAYLOAD_FROM_INPUT 8
#define FUZZ_LAN_TOKEN "fuzz-lan-host"
#define CHUNK_UNIT 97 /* chunk sizes are a byte times this: up to ~24 KiB, past the buffers */
#define RAW_SOCKETS 12
#define HANDSHAKE_CAP 2
#define SOCKET_CAP 3

/* The peers' addresses: the second and third share an IPv6 /64, so they count as one address. */
static const char *const addresses[PEERS] = {"192.0.2.1", "2001:db8::1", "2001:db8::2"};
static int address_group(int index)
{
    return index == 0 ? 0 : 1;
}

/* Raw sockets before (and after) their WebSocket handshake, as relay_socket_* sees them. */
struct raw_socket {
    bool open;
    bool upgraded;
    int address; /* index into addresses */
};
static struct raw_socket raw_sockets[RAW_SOCKETS];

/* The transport and the client of one connection. */
struct peer {
    struct connection *connection;
    bool echo;
    bool close_requested;
    bool paused;
    bool sending_binary; /* a binary message from this client is in progress */
    bool write_in_message;
    bool write_binary;
    unsigned char *text; /* the text message being written to this client */
    size_t text_length;
    size_t text_capacity;
    char user_id[16];
    char token[RESUME_TOKEN_HEX_LENGTH + 1];
};

static struct peer peers[PEERS];
static struct relay *relay;
static double now;
static char known_codes[KNOWN_CODES][ROOM_CODE_LENGTH + 1];
static unsigned next_code;
static unsigned char scratch[32 * 1024];

/* What is left of the input. */
struct script {
    const uint8_t *data;
    size_t size;
};

static uint8_t next_byte(struct script *s)
{
    if (s->size == 0)
        return 0;
    s->size--;
    return *s->data++;
}

/* --- the fake transport ------------------------------------------------------------------- */

static struct peer *peer_of(void *transport)
{
    return transport;
}

static void io_want_write(void *context, void *transport) {}

static void io_pause(void *context, void *transport, bool paused)
{
    struct peer *peer = peer_of(transport);
    if (peer->paused == paused)
        __builtin_trap(); /* the core pauses and resumes in pairs */
    peer->paused = paused;
}

static void io_close(void *context, void *transport, int code, const char *reason)
{
    struct peer *peer = peer_of(transport);
    if (peer->close_requested)
        __builtin_trap(); /* asked to close twice */
    if (code != 1000 && code != 1001 && code != 1009 && code != 4008)
        __builtin_trap();
    peer->close_requested = true;
}

static void io_ping(void *context, void *transport) {}

static const struct relay_io io = {NULL, io_want_write, io_pause, io_close, io_ping};

/* --- the client side ---------------------------------------------------------------------- */

static void remember(json_t *payload, struct peer *peer)
{
    json_t *code = json_object_get(payload, "room_code");
    if (json_is_string(code) && strlen(json_string_value(code)) == ROOM_CODE_LENGTH) {
        snprintf(known_codes[next_code++ % KNOWN_CODES], ROOM_CODE_LENGTH + 1, "%s",
                 json_string_value(code));
    }
    json_t *token = json_object_get(payload, "resume_token");
    if (json_is_string(token))
        snprintf(peer->token, sizeof peer->token, "%s", json_string_value(token));
}

/* A membership message: every user_id once, and host_id null or a member of the room. */
static void check_membership(json_t *payload)
{
    json_t *host = json_object_get(payload, "host_id");
    if (!json_is_null(host) && !json_is_string(host))
        __builtin_trap(); /* absent or of another type */
    json_t *users = json_object_get(payload, "users");
    if (!users)
        return; /* room_created names no users */
    bool host_listed = json_is_null(host);
    for (size_t i = 0; i < json_array_size(users); i++) {
        const char *id = json_string_value(json_object_get(json_array_get(users, i), "user_id"));
        if (!id)
            __builtin_trap();
        if (json_is_string(host) && !strcmp(id, json_string_value(host)))
            host_listed = true;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(id,
                        json_string_value(json_object_get(json_array_get(users, j), "user_id"))))
                __builtin_trap(); /* one user_id twice in a room */
    }
    if (!host_listed)
        __builtin_trap(); /* an attested host that is not in the room */
}

/* A whole text message reached a (non-echo) client: it must be a JSON object with a type. */
static void check_text(struct peer *peer)
{
    json_error_t error;
    json_t *root = json_loadb((const char *)peer->text, peer->text_length, 0, &error);
    if (!json_is_object(root) || !json_is_string(json_object_get(root, "type"))) {
        fprintf(stderr, "relay wrote text that is not a message: %.*s\n", (int)peer->text_length,
                peer->text);
        __builtin_trap();
    }
    const char *type = json_string_value(json_object_get(root, "type"));
    json_t *payload = json_object_get(root, "payload");
    if (!strcmp(type, "room_created") || !strcmp(type, "room_joined"))
        remember(payload, peer);
    bool membership = !strcmp(type, "room_created") || !strcmp(type, "room_joined") ||
                      !strcmp(type, "user_joined") || !strcmp(type, "user_left");
    if (membership)
        check_membership(payload);
    json_decref(root);
}

/* Writes up to `steps` frames to the client, checking WebSocket framing. */
static size_t write_steps(struct peer *peer, size_t steps)
{
    size_t written = 0;
    struct write_step step;
    while (written < steps && peer->connection && relay_next_write(peer->connection, &step)) {
        if (step.continuation != peer->write_in_message)
            __builtin_trap();
        if (peer->write_in_message && step.is_binary != peer->write_binary)
            __builtin_trap();
        if (!step.is_binary && !peer->echo) {
            size_t need = peer->text_length + step.length;
            if (need > peer->text_capacity) {
                peer->text_capacity = need * 2;
                peer->text = realloc(peer->text, peer->text_capacity);
                if (!peer->text)
                    abort();
            }
            memcpy(peer->text + peer->text_length, step.bytes, step.length);
            peer->text_length = need;
        }
        peer->write_in_message = !step.final;
        peer->write_binary = step.is_binary;
        relay_wrote(relay, peer->connection, now);
        if (step.final && !step.is_binary && !peer->echo)
            check_text(peer);
        if (step.final)
            peer->text_length = 0;
        written++;
    }
    return written;
}

static void open_peer(struct peer *peer, bool echo)
{
    peer->echo = echo;
    peer->close_requested = peer->paused = peer->sending_binary = false;
    peer->write_in_message = false;
    peer->text_length = 0;
    peer->connection = relay_connection_open(relay, peer, addresses[peer - peers], echo, now);
}

/* The transport saw the connection end (asked by the core, or the client went away). */
static void drop_peer(struct peer *peer)
{
    if (!peer->connection)
        return;
    relay_connection_closed(relay, peer->connection, now);
    peer->connection = NULL;
    peer->paused = false;
}

static void receive(struct peer *peer, const void *bytes, size_t length, bool binary, bool first,
                    bool final)
{
    relay_receive(relay, peer->connection, bytes, length, binary, first, final, 0, now);
}

/* A client cannot start a text message in the middle of a binary one: end that first. */
static void end_binary(struct peer *peer)
{
    if (peer->sending_binary && peer->connection)
        receive(peer, "", 0, true, false, true);
    peer->sending_binary = false;
}

static void send_text(struct peer *peer, const char *text, size_t length, size_t split)
{
    end_binary(peer);
    if (split == 0 || split >= length) {
        receive(peer, text, length, false, true, true);
        return;
    }
    receive(peer, text, split, false, true, false);
    if (peer->connection)
        receive(peer, text + split, length - split, false, false, true);
}

static void send_control(struct peer *peer, struct script *s)
{
    uint8_t choice = next_byte(s), detail = next_byte(s);
    const char *code = known_codes[(detail >> 4) % KNOWN_CODES];
    char lower[ROOM_CODE_LENGTH + 1];
    for (int i = 0; i <= ROOM_CODE_LENGTH; i++)
        lower[i] =
            (char)(code[i] >= 'A' && code[i] <= 'Z' && (detail & 8) ? code[i] + 32 : code[i]);
    snprintf(peer->user_id, sizeof peer->user_id, "u%u", detail & 3);
    const char *features = detail & 4 ? ",\"features\":[\"resume\"]" : "";
    char text[512];
    int n;
    switch (choice % 10) {
    case 0:
        n = snprintf(text, sizeof text,
                     "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"%s\","
                     "\"display_name\":\"N\\\"%u\"%s%s}}",
                     peer->user_id, detail, features,
                     detail & 16 ? ",\"host_token\":\"" FUZZ_LAN_TOKEN "\"" : "");
        break;
    case 1:
        n = snprintf(
            text, sizeof text,
            "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"%s\"%s}}",
            lower, peer->user_id, features);
        break;
    case 2:
        n = snprintf(text, sizeof text,
                     "{\"type\":\"resume\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"%s\","
                     "\"resume_token\":\"%s\"}}",
                     code, peer->user_id, peers[(detail >> 2) % PEERS].token);
        break;
    case 3:
        n = detail & 1
                ? snprintf(text, sizeof text,
                           "{\"type\":\"hello\",\"payload\":{\"user_id\":\"%s\"}}", peer->user_id)
                : snprintf(text, sizeof text, "{\"type\":\"leave_room\"}");
        break;
    case 4:
        n = snprintf(text, sizeof text, "{\"type\":\"chat\",\"payload\":{\"n\":%u}} ", detail);
        break;
    case 5:
        n = snprintf(text, sizeof text, "{\"type\":\"chat\",\"to\":[\"u%u\",\"u%u\"]}", detail & 3,
                     (detail >> 2) & 3);
        break;
    case 6:
        n = snprintf(text, sizeof text, "{\"type\":\"x\",\"sender_id\":\"me\",\"to\":%s}",
                     detail & 1 ? "[]" : "\"u1\"");
        break;
    case 7:
        n = snprintf(text, sizeof text,
                     "{\"type\":\"join_room\",\"payload\":{\"room_code\":%s,\"user_id\":%s}}",
                     detail & 1 ? "7" : "\"ZZZZZZ\"", detail & 2 ? "\"\"" : "\"u9\"");
        break;
    case 8:
        n = snprintf(text, sizeof text, "[%u]", detail);
        break;
    default:
        n = snprintf(text, sizeof text, "{\"type\":\"create_room\",\"payload\":{\"user_id\":1}}");
        break;
    }
    send_text(peer, text, (size_t)n, next_byte(s) % 8 == 0 ? (size_t)n / 2 : 0);
}

static void send_raw_text(struct peer *peer, struct script *s)
{
    size_t length = next_byte(s);
    size_t split = next_byte(s);
    if (length > s->size)
        length = s->size;
    send_text(peer, (const char *)s->data, length, split);
    s->data += length;
    s->size -= length;
}

/* One receive of a binary message; `with_header` starts it with a valid header. */
static void send_binary(struct peer *peer, struct script *s, bool with_header)
{
    uint8_t flags = next_byte(s);
    size_t length = (size_t)next_byte(s) * CHUNK_UNIT;
    if (length > sizeof scratch)
        length = sizeof scratch;
    /* The transport honours pause_reading, but lws may have data in hand: bit 7 delivers it. */
    bool held_back = peer->paused && !(flags & 0x80);
    size_t offset = 0;
    bool first = !peer->sending_binary || with_header;
    if (with_header && !held_back) {
        end_binary(peer);
        struct frame_id to[PEERS];
        size_t count = 0;
        char names[PEERS][4];
        for (unsigned i = 0; i < PEERS; i++)
            if (flags & (2u << i)) {
                snprintf(names[i], sizeof names[i], "u%u", i);
                to[count++] = (struct frame_id){names[i], 2};
            }
        const char *sender = flags & 0x10 ? "u3" : peer->user_id[0] ? peer->user_id : "u0";
        offset = frame_header_write(scratch, sizeof scratch, 1, flags, 0, 1, length,
                                    (struct frame_id){sender, (uint8_t)strlen(sender)}, to, count);
    }
    /* The first payload bytes come from the input (they decide whether a header is there);
     * the rest is a pattern, so that one event stays a few bytes long. */
    size_t from_input = length - (offset < length ? offset : length);
    if (from_input > PAYLOAD_FROM_INPUT)
        from_input = PAYLOAD_FROM_INPUT;
    if (from_input > s->size)
        from_input = s->size;
    memcpy(scratch + offset, s->data, from_input);
    s->data += from_input;
    s->size -= from_input;
    for (size_t i = offset + from_input; i < length; i++)
        scratch[i] = (unsigned char)i;
    if (held_back)
        return;
    if (length < offset)
        length = offset;
    bool final = flags & 1;
    if (with_header && (flags & 0x20)) {
        /* The header one byte at a time, then the rest. */
        for (size_t i = 0; i < offset && peer->connection; i++)
            receive(peer, scratch + i, 1, true, i == 0, final && i + 1 == length);
        if (peer->connection && length > offset)
            receive(peer, scratch + offset, length - offset, true, offset == 0, final);
    } else {
        receive(peer, scratch, length, true, first, final);
    }
    peer->sending_binary = !final;
}

/* A raw socket event: accept a new one (checking the per-address limits), upgrade or close one,
 * or note a refusal for the log. */
static void raw_socket_event(struct script *s)
{
    uint8_t choice = next_byte(s);
    struct raw_socket *raw = &raw_sockets[(choice >> 2) % RAW_SOCKETS];
    int address = (choice >> 6) % PEERS;
    switch (choice & 3) {
    case 0: {
        if (raw->open)
            break;
        unsigned handshakes = 0, sockets = 0;
        for (int i = 0; i < RAW_SOCKETS; i++)
            if (raw_sockets[i].open &&
                address_group(raw_sockets[i].address) == address_group(address)) {
                sockets++;
                handshakes += !raw_sockets[i].upgraded;
            }
        bool expected = handshakes < HANDSHAKE_CAP && sockets < SOCKET_CAP;
        if (relay_socket_accepted(relay, addresses[address], now) != expected)
            __builtin_trap();
        *raw = (struct raw_socket){expected, false, address};
        break;
    }
    case 1:
        if (raw->open && !raw->upgraded) {
            relay_socket_upgraded(relay, addresses[raw->address]);
            raw->upgraded = true;
        }
        break;
    case 2:
        if (raw->open) {
            relay_socket_closed(relay, addresses[raw->address], !raw->upgraded);
            raw->open = false;
        }
        break;
    default:
        relay_note_refusal(relay, addresses[address], "upgrade_refused", 400 + (choice & 0x3c),
                           now);
        break;
    }
}

/* The transport delivers closes the core asked for, and the client reconnects. */
static void settle(void)
{
    for (int i = 0; i < PEERS; i++)
        if (peers[i].close_requested) {
            drop_peer(&peers[i]);
            open_peer(&peers[i], false);
        }
    size_t open = 0;
    for (int i = 0; i < PEERS; i++)
        open += peers[i].connection != NULL;
    if (relay_connection_count(relay) != open)
        __builtin_trap();
}

static void play(struct script *s)
{
    for (int events = 0; s->size > 0 && events < MAX_EVENTS; events++) {
        uint8_t op = next_byte(s);
        struct peer *peer = &peers[op % PEERS];
        if (!peer->connection)
            open_peer(peer, false);
        if (!peer->connection)
            continue;
        switch ((op / PEERS) % 13) {
        case 0:
            send_raw_text(peer, s);
            break;
        case 1:
        case 2:
            send_control(peer, s);
            break;
        case 3:
            send_binary(peer, s, false);
            break;
        case 4:
            send_binary(peer, s, true);
            break;
        case 5:
        case 6:
            write_steps(peer, next_byte(s));
            break;
        case 7:
            drop_peer(peer);
            open_peer(peer, next_byte(s) == 'E');
            break;
        case 8:
            now += next_byte(s);
            relay_tick(relay, now);
            break;
        case 9: {
            char code[ROOM_CODE_LENGTH + 1];
            if (!relay_reserve_room(relay, "198.51.100.1", now, code))
                snprintf(known_codes[next_code++ % KNOWN_CODES], sizeof code, "%s", code);
            break;
        }
        case 10:
            relay_heard(peer->connection, now);
            break;
        case 11:
            raw_socket_event(s);
            break;
        default:
            if (next_byte(s) == 0xC1)
                relay_close_all(relay, 1001, "shutting down");
            break;
        }
        settle();
    }
}

/* Every client finishes what it was sending and every receiver writes everything. */
static void drain_everything(void)
{
    for (int i = 0; i < PEERS; i++)
        end_binary(&peers[i]);
    settle();
    for (int round = 0; round < 64; round++) {
        size_t written = 0;
        for (int i = 0; i < PEERS; i++)
            written += write_steps(&peers[i], SIZE_MAX);
        settle();
        if (written == 0)
            break;
    }
    if (relay_queued_bytes(relay) != 0)
        __builtin_trap(); /* something queued that nobody can write */
    for (int i = 0; i < PEERS; i++)
        if (peers[i].connection && (peers[i].paused || peers[i].write_in_message))
            __builtin_trap(); /* a sender still held back, or a message left open */
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_ERROR, NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct script s = {data, size};
    uint8_t setup = next_byte(&s);
    struct relay_config config;
    config_defaults(&config);
    /* Small limits so that a short input reaches them (the buffer at its smallest legal size:
     * the core gathers up to 64 KiB before receivers see it). */
    config.max_message_size = 256 * 1024;
    config.max_text_size = 2048;
    config.max_room_members = 3;
    config.max_rooms = 3;
    config.join_attempts_per_minute = 20;
    config.failed_joins_per_minute = setup & 4 ? 3 : 3000;
    config.max_rooms_per_address = 2;
    config.rooms_created_per_minute = setup & 8 ? 2 : 60;
    config.max_handshakes_per_address = HANDSHAKE_CAP;
    config.max_connections_per_address = SOCKET_CAP;
    config.receiver_buffer_bytes = 64 * 1024;
    config.flow_policy = setup & 1 ? FLOW_DROP_RECEIVER : FLOW_THROTTLE_SENDER;
    config.resume_grace_seconds = 30;
    config.ping_interval_seconds = 30;
    config.idle_timeout_seconds = 200;
    config.slow_receiver_timeout_seconds = 15;
    config.lan_mode = setup & 2; /* one LAN session (create_room with the token, hello) */
    snprintf(config.lan_host_token, sizeof config.lan_host_token, "%s", FUZZ_LAN_TOKEN);

    static const unsigned char secret[RELAY_SECRET_BYTES] = {7};
    now = 1000;
    relay = relay_create(&config, &io, secret, sizeof secret, now);
    if (!relay)
        abort();
    memset(peers, 0, sizeof peers);
    memset(raw_sockets, 0, sizeof raw_sockets);
    memset(known_codes, 0, sizeof known_codes);
    next_code = 0;
    for (int i = 0; i < PEERS; i++)
        open_peer(&peers[i], i == 2 && (setup & 2));

    play(&s);
    drain_everything();
    for (int i = 0; i < RAW_SOCKETS; i++)
        if (raw_sockets[i].open)
            relay_socket_closed(relay, addresses[raw_sockets[i].address], !raw_sockets[i].upgraded);

    relay_destroy(relay);
    relay = NULL;
    for (int i = 0; i < PEERS; i++)
        free(peers[i].text);
    return 0;
}
