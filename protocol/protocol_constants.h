/* protocol_constants.h — the numbers and names of the relay protocol (docs/protocol.md) that the
 * relay and the client extension both compile against, so the two C builds cannot disagree.
 * tests/vectors/protocol.json states them for every implementation; the relay's unit tests
 * (relay_server/tests/test_protocol_constants.c) check this file against it. */
#ifndef PROTOCOL_CONSTANTS_H
#define PROTOCOL_CONSTANTS_H

/* The generation of the protocol that part 2's extensions belong to (`relay.protocol`). */
#define PROTOCOL_VERSION 2

/* Room codes: 6 characters without the look-alikes I, O, 0 and 1. */
#define ROOM_CODE_ALPHABET "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
#define ROOM_CODE_LENGTH 6

/* A user id is 1 to this many bytes of UTF-8: it travels in frame headers behind a one-byte
 * length (frame_header.h) and in the cluster's envelopes. */
#define USER_ID_MAX_BYTES 128

/* The largest binary message of a chunked send, header included, unless the relay advertises
 * another `limits.chunk_size`: the original client's 16 MiB chunks, which the original relay's
 * 32 MiB message limit was sized for. */
#define PROTOCOL_CHUNK_SIZE (16u * 1024 * 1024)

/* WebSocket close codes the relay sends, and what each tells the client (`close_codes`). */
#define CLOSE_NORMAL 1000          /* e.g. the member resumed on another connection */
#define CLOSE_GOING_AWAY 1001      /* relay shutting down, idle timeout, LAN host left */
#define CLOSE_INVALID_UTF8 1007    /* a text message that is not UTF-8 */
#define CLOSE_MESSAGE_TOO_BIG 1009 /* over --max-message-size / --max-text-size */
#define CLOSE_SLOW_RECEIVER 4008   /* fell too far behind; may reconnect and resume */

/* Extensions a relay advertises in `relay.features` and members announce (`features`). */
#define FEATURE_FRAME_HEADER "frame_header"
#define FEATURE_DIRECTED "directed"
#define FEATURE_RESUME "resume"
#define FEATURE_FLOW_CONTROL "flow_control"
#define FEATURE_HOST_ID "host_id"
#define FEATURE_MEMBER_FEATURES "member_features"

#endif
