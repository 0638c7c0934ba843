/* cpace_session.h — one CPace run between a room's host (responder) and one member
 * (initiator), as a sans-I/O state machine over three binary messages (docs/security.md, "Key
 * exchange"): the caller carries the bytes; this decides what they mean. */
#ifndef SEGSUITE_CPACE_SESSION_H
#define SEGSUITE_CPACE_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "cpace.h"

#define CPACE_MSG_VERSION 1
#define CPACE_NONCE_BYTES 16
#define CPACE_SID_BYTES 32
#define CPACE_AD_MAX 64     /* associated data each side sends (a role and protocol label) */
#define CPACE_ID_MAX 128    /* user ids, as in the frame header */
#define CPACE_ROOM_MAX 16   /* routing code */
#define CPACE_SECRET_MAX 64 /* the secret part of the code: the PRS */
#define CPACE_MSG_MAX                                                                              \
    (2 + CPACE_NONCE_BYTES + CPACE_POINT_BYTES + 1 + CPACE_AD_MAX + CPACE_TAG_BYTES)

enum cpace_msg_type {
    CPACE_MSG_SHARE_A = 1,   /* member -> host: version, type, nonce, Ya, len, ADa */
    CPACE_MSG_SHARE_B = 2,   /* host -> member: version, type, Yb, Tb, len, ADb */
    CPACE_MSG_CONFIRM_A = 3, /* member -> host: version, type, Ta */
};

/* A parsed key-exchange message; pointers point into the parsed buffer. */
struct cpace_msg {
    enum cpace_msg_type type;
    const uint8_t *nonce; /* SHARE_A */
    const uint8_t *share; /* SHARE_A, SHARE_B */
    const uint8_t *tag;   /* SHARE_B, CONFIRM_A */
    const uint8_t *ad;    /* SHARE_A, SHARE_B */
    size_t ad_len;
};

/* Strict parse: right version, a known type, exactly its length. Returns 0, or -1 with `error`
 * saying what is wrong (never echoing the bytes). Checks the format only, not the point. */
int cpace_msg_parse(struct cpace_msg *msg, const uint8_t *data, size_t length, const char **error);

enum cpace_role { CPACE_INITIATOR, CPACE_RESPONDER };
enum cpace_state {
    CPACE_STATE_START,         /* nothing sent or received yet */
    CPACE_STATE_SENT_SHARE,    /* initiator: SHARE_A out, waiting for SHARE_B */
    CPACE_STATE_AWAIT_CONFIRM, /* responder: SHARE_B out, waiting for CONFIRM_A */
    CPACE_STATE_CONFIRMED,     /* both tags checked: the keys may be used */
    CPACE_STATE_FAILED,        /* any error: the session is dead, its secrets wiped */
};

/* Why a step failed. MISMATCH is the one that means "wrong secret part" (or an active attacker);
 * the others are malformed or out-of-order messages. */
enum cpace_result {
    CPACE_OK = 0,
    CPACE_ERR_MALFORMED = -1,
    CPACE_ERR_BAD_POINT = -2,
    CPACE_ERR_MISMATCH = -3,
    CPACE_ERR_STATE = -4,
    CPACE_ERR_ARGUMENT = -5,
};

struct cpace_session {
    enum cpace_role role;
    enum cpace_state state;
    uint8_t prs[CPACE_SECRET_MAX];
    size_t prs_len;
    uint8_t room[CPACE_ROOM_MAX];
    size_t room_len;
    uint8_t initiator_id[CPACE_ID_MAX], responder_id[CPACE_ID_MAX];
    size_t initiator_id_len, responder_id_len;
    uint8_t ad[CPACE_AD_MAX]; /* what this side sends as its AD */
    size_t ad_len;
    uint8_t sid[CPACE_SID_BYTES];
    uint8_t y[CPACE_SCALAR_BYTES];
    uint8_t ya[CPACE_POINT_BYTES], yb[CPACE_POINT_BYTES];
    uint8_t peer_ad[CPACE_AD_MAX];
    size_t peer_ad_len;
    uint8_t isk[CPACE_ISK_BYTES];
};

/* Sets up either side. The ids and the routing code enter both sid and CI, so a run between
 * other parties or for another room never yields the same key. */
int cpace_session_init(struct cpace_session *s, enum cpace_role role, const uint8_t *prs,
                       size_t prs_len, const uint8_t *room, size_t room_len,
                       const uint8_t *initiator_id, size_t initiator_id_len,
                       const uint8_t *responder_id, size_t responder_id_len, const uint8_t *ad,
                       size_t ad_len, const char **error);

/* Initiator: writes SHARE_A into out (at least CPACE_MSG_MAX bytes), *out_len its length. */
int cpace_session_start(struct cpace_session *s, uint8_t *out, size_t *out_len, const char **error);

/* Feeds one received message. Writes the answer, if any, to out (*out_len 0 when none):
 * responder gets SHARE_A -> answers SHARE_B; initiator gets SHARE_B -> answers CONFIRM_A and is
 * confirmed; responder gets CONFIRM_A -> confirmed. Any failure wipes the session's secrets. */
int cpace_session_receive(struct cpace_session *s, const uint8_t *data, size_t length, uint8_t *out,
                          size_t *out_len, const char **error);

/* Only in CPACE_STATE_CONFIRMED: a key derived from ISK for `label`. */
int cpace_session_key(const struct cpace_session *s, const char *label,
                      uint8_t key[CPACE_KEY_BYTES]);

/* Wipes every secret the session holds. */
void cpace_session_wipe(struct cpace_session *s);

#endif
