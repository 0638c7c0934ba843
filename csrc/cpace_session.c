/* cpace_session.c — the private room's key exchange: parses and builds the three CPace
 * messages and steps one side through them, checking every share and tag before a key exists.
 * Untrusted bytes only ever reach cpace_msg_parse first. */
#include "cpace_session.h"

#include <sodium.h>
#include <string.h>

static int fail(const char **error, const char *why, int code)
{
    if (error)
        *error = why;
    return code;
}

int cpace_msg_parse(struct cpace_msg *msg, const uint8_t *data, size_t length, const char **error)
{
    memset(msg, 0, sizeof *msg);
    if (length < 2)
        return fail(error, "key-exchange message shorter than its 2-byte header", -1);
    if (data[0] != CPACE_MSG_VERSION)
        return fail(error, "key-exchange message of an unknown version", -1);
    const uint8_t *p = data + 2;
    size_t left = length - 2;
    switch (data[1]) {
    case CPACE_MSG_SHARE_A:
        if (left < CPACE_NONCE_BYTES + CPACE_POINT_BYTES + 1)
            return fail(error, "share message (type 1) is truncated", -1);
        msg->nonce = p;
        msg->share = p + CPACE_NONCE_BYTES;
        msg->ad_len = p[CPACE_NONCE_BYTES + CPACE_POINT_BYTES];
        msg->ad = p + CPACE_NONCE_BYTES + CPACE_POINT_BYTES + 1;
        left -= CPACE_NONCE_BYTES + CPACE_POINT_BYTES + 1;
        break;
    case CPACE_MSG_SHARE_B:
        if (left < CPACE_POINT_BYTES + CPACE_TAG_BYTES + 1)
            return fail(error, "share message (type 2) is truncated", -1);
        msg->share = p;
        msg->tag = p + CPACE_POINT_BYTES;
        msg->ad_len = p[CPACE_POINT_BYTES + CPACE_TAG_BYTES];
        msg->ad = p + CPACE_POINT_BYTES + CPACE_TAG_BYTES + 1;
        left -= CPACE_POINT_BYTES + CPACE_TAG_BYTES + 1;
        break;
    case CPACE_MSG_CONFIRM_A:
        if (left != CPACE_TAG_BYTES)
            return fail(error, "confirmation message (type 3) must carry exactly a 64-byte tag",
                        -1);
        msg->type = CPACE_MSG_CONFIRM_A;
        msg->tag = p;
        return 0;
    default:
        return fail(error, "key-exchange message of an unknown type", -1);
    }
    if (msg->ad_len > CPACE_AD_MAX)
        return fail(error, "associated data of a share message exceeds 64 bytes", -1);
    if (left != msg->ad_len)
        return fail(error, "share message length does not match its associated data length", -1);
    msg->type = (enum cpace_msg_type)data[1];
    return 0;
}

static void hash_lv(crypto_hash_sha512_state *state, const uint8_t *data, size_t length)
{
    uint8_t prefix[10];
    crypto_hash_sha512_update(state, prefix, cpace_leb128(prefix, length));
    if (length)
        crypto_hash_sha512_update(state, data, length);
}

/* sid = SHA-512(lv_cat(label, room, initiator, responder, nonce))[0:32]: fresh per run (the
 * initiator's nonce) and bound to the room and both parties, as the issue asks. */
static void compute_sid(struct cpace_session *s, const uint8_t nonce[CPACE_NONCE_BYTES])
{
    static const uint8_t label[] = "SegSuite private room CPace sid v1";
    uint8_t digest[64];
    crypto_hash_sha512_state state;
    crypto_hash_sha512_init(&state);
    hash_lv(&state, label, sizeof label - 1);
    hash_lv(&state, s->room, s->room_len);
    hash_lv(&state, s->initiator_id, s->initiator_id_len);
    hash_lv(&state, s->responder_id, s->responder_id_len);
    hash_lv(&state, nonce, CPACE_NONCE_BYTES);
    crypto_hash_sha512_final(&state, digest);
    memcpy(s->sid, digest, CPACE_SID_BYTES);
}

/* CI = lv_cat("A_" + initiator id, "B_" + responder id): the draft's preferred home for party
 * identities (section 10.1), with the role in each string. */
static void compute_generator(const struct cpace_session *s, uint8_t g[CPACE_POINT_BYTES])
{
    uint8_t ci[2 * (2 + 2 + CPACE_ID_MAX)];
    size_t n = 0;
    n += cpace_leb128(ci + n, 2 + s->initiator_id_len);
    ci[n++] = 'A';
    ci[n++] = '_';
    memcpy(ci + n, s->initiator_id, s->initiator_id_len);
    n += s->initiator_id_len;
    n += cpace_leb128(ci + n, 2 + s->responder_id_len);
    ci[n++] = 'B';
    ci[n++] = '_';
    memcpy(ci + n, s->responder_id, s->responder_id_len);
    n += s->responder_id_len;
    cpace_calculate_generator(g, s->prs, s->prs_len, ci, n, s->sid, CPACE_SID_BYTES);
}

void cpace_session_wipe(struct cpace_session *s)
{
    sodium_memzero(s->prs, sizeof s->prs);
    sodium_memzero(s->y, sizeof s->y);
    sodium_memzero(s->isk, sizeof s->isk);
}

static int dead(struct cpace_session *s, const char **error, const char *why, int code)
{
    cpace_session_wipe(s);
    s->state = CPACE_STATE_FAILED;
    return fail(error, why, code);
}

int cpace_session_init(struct cpace_session *s, enum cpace_role role, const uint8_t *prs,
                       size_t prs_len, const uint8_t *room, size_t room_len,
                       const uint8_t *initiator_id, size_t initiator_id_len,
                       const uint8_t *responder_id, size_t responder_id_len, const uint8_t *ad,
                       size_t ad_len, const char **error)
{
    memset(s, 0, sizeof *s);
    s->state = CPACE_STATE_FAILED;
    if (prs_len == 0 || prs_len > CPACE_SECRET_MAX)
        return fail(error, "the secret part must be 1 to 64 bytes", CPACE_ERR_ARGUMENT);
    if (room_len == 0 || room_len > CPACE_ROOM_MAX)
        return fail(error, "the room code must be 1 to 16 bytes", CPACE_ERR_ARGUMENT);
    if (initiator_id_len == 0 || initiator_id_len > CPACE_ID_MAX || responder_id_len == 0 ||
        responder_id_len > CPACE_ID_MAX)
        return fail(error, "user ids must be 1 to 128 bytes", CPACE_ERR_ARGUMENT);
    if (ad_len > CPACE_AD_MAX)
        return fail(error, "associated data must be at most 64 bytes", CPACE_ERR_ARGUMENT);
    s->role = role;
    memcpy(s->prs, prs, prs_len);
    s->prs_len = prs_len;
    memcpy(s->room, room, room_len);
    s->room_len = room_len;
    memcpy(s->initiator_id, initiator_id, initiator_id_len);
    s->initiator_id_len = initiator_id_len;
    memcpy(s->responder_id, responder_id, responder_id_len);
    s->responder_id_len = responder_id_len;
    if (ad_len)
        memcpy(s->ad, ad, ad_len);
    s->ad_len = ad_len;
    s->state = CPACE_STATE_START;
    return CPACE_OK;
}

int cpace_session_start(struct cpace_session *s, uint8_t *out, size_t *out_len, const char **error)
{
    *out_len = 0;
    if (s->role != CPACE_INITIATOR || s->state != CPACE_STATE_START)
        return fail(error, "only a new initiator starts a key exchange", CPACE_ERR_STATE);
    uint8_t nonce[CPACE_NONCE_BYTES], g[CPACE_POINT_BYTES];
    randombytes_buf(nonce, sizeof nonce);
    compute_sid(s, nonce);
    compute_generator(s, g);
    cpace_sample_scalar(s->y);
    if (cpace_public_share(s->ya, s->y, g) != 0)
        return dead(s, error, "could not compute the public share", CPACE_ERR_BAD_POINT);
    size_t n = 0;
    out[n++] = CPACE_MSG_VERSION;
    out[n++] = CPACE_MSG_SHARE_A;
    memcpy(out + n, nonce, sizeof nonce);
    n += sizeof nonce;
    memcpy(out + n, s->ya, CPACE_POINT_BYTES);
    n += CPACE_POINT_BYTES;
    out[n++] = (uint8_t)s->ad_len;
    memcpy(out + n, s->ad, s->ad_len);
    n += s->ad_len;
    *out_len = n;
    s->state = CPACE_STATE_SENT_SHARE;
    return CPACE_OK;
}

/* K from our scalar and the peer's share, then ISK over the initiator-first transcript. */
static int derive_isk(struct cpace_session *s, const uint8_t *peer_share, const char **error)
{
    uint8_t k[CPACE_POINT_BYTES];
    if (cpace_shared_point(k, s->y, peer_share) != 0)
        return dead(s, error,
                    "the peer's share is not a valid ristretto255 element (or is the identity)",
                    CPACE_ERR_BAD_POINT);
    if (s->role == CPACE_INITIATOR)
        cpace_isk(s->isk, s->sid, CPACE_SID_BYTES, k, s->ya, s->ad, s->ad_len, s->yb, s->peer_ad,
                  s->peer_ad_len);
    else
        cpace_isk(s->isk, s->sid, CPACE_SID_BYTES, k, s->ya, s->peer_ad, s->peer_ad_len, s->yb,
                  s->ad, s->ad_len);
    sodium_memzero(k, sizeof k);
    sodium_memzero(s->y, sizeof s->y); /* the scalar is not needed once K is known */
    return CPACE_OK;
}

static const char MISMATCH[] = "the code's secret part does not match";

int cpace_session_receive(struct cpace_session *s, const uint8_t *data, size_t length, uint8_t *out,
                          size_t *out_len, const char **error)
{
    *out_len = 0;
    struct cpace_msg msg;
    if (s->state == CPACE_STATE_FAILED || s->state == CPACE_STATE_CONFIRMED)
        return fail(error, "this key exchange is already over", CPACE_ERR_STATE);
    if (cpace_msg_parse(&msg, data, length, error) != 0)
        return dead(s, NULL, NULL, CPACE_ERR_MALFORMED);

    if (s->role == CPACE_RESPONDER && s->state == CPACE_STATE_START &&
        msg.type == CPACE_MSG_SHARE_A) {
        uint8_t g[CPACE_POINT_BYTES];
        memcpy(s->ya, msg.share, CPACE_POINT_BYTES);
        memcpy(s->peer_ad, msg.ad, msg.ad_len);
        s->peer_ad_len = msg.ad_len;
        compute_sid(s, msg.nonce);
        compute_generator(s, g);
        cpace_sample_scalar(s->y);
        if (cpace_public_share(s->yb, s->y, g) != 0)
            return dead(s, error, "could not compute the public share", CPACE_ERR_BAD_POINT);
        int rc = derive_isk(s, s->ya, error);
        if (rc != CPACE_OK)
            return rc;
        size_t n = 0;
        out[n++] = CPACE_MSG_VERSION;
        out[n++] = CPACE_MSG_SHARE_B;
        memcpy(out + n, s->yb, CPACE_POINT_BYTES);
        n += CPACE_POINT_BYTES;
        cpace_confirmation_tag(out + n, s->sid, CPACE_SID_BYTES, s->isk, s->yb, s->ad, s->ad_len);
        n += CPACE_TAG_BYTES;
        out[n++] = (uint8_t)s->ad_len;
        memcpy(out + n, s->ad, s->ad_len);
        n += s->ad_len;
        *out_len = n;
        s->state = CPACE_STATE_AWAIT_CONFIRM;
        return CPACE_OK;
    }
    if (s->role == CPACE_INITIATOR && s->state == CPACE_STATE_SENT_SHARE &&
        msg.type == CPACE_MSG_SHARE_B) {
        memcpy(s->yb, msg.share, CPACE_POINT_BYTES);
        memcpy(s->peer_ad, msg.ad, msg.ad_len);
        s->peer_ad_len = msg.ad_len;
        int rc = derive_isk(s, s->yb, error);
        if (rc != CPACE_OK)
            return rc;
        uint8_t expected[CPACE_TAG_BYTES];
        cpace_confirmation_tag(expected, s->sid, CPACE_SID_BYTES, s->isk, s->yb, msg.ad,
                               msg.ad_len);
        int same = sodium_memcmp(expected, msg.tag, CPACE_TAG_BYTES) == 0;
        if (!same)
            return dead(s, error, MISMATCH, CPACE_ERR_MISMATCH);
        out[0] = CPACE_MSG_VERSION;
        out[1] = CPACE_MSG_CONFIRM_A;
        cpace_confirmation_tag(out + 2, s->sid, CPACE_SID_BYTES, s->isk, s->ya, s->ad, s->ad_len);
        *out_len = 2 + CPACE_TAG_BYTES;
        s->state = CPACE_STATE_CONFIRMED;
        return CPACE_OK;
    }
    if (s->role == CPACE_RESPONDER && s->state == CPACE_STATE_AWAIT_CONFIRM &&
        msg.type == CPACE_MSG_CONFIRM_A) {
        uint8_t expected[CPACE_TAG_BYTES];
        cpace_confirmation_tag(expected, s->sid, CPACE_SID_BYTES, s->isk, s->ya, s->peer_ad,
                               s->peer_ad_len);
        if (sodium_memcmp(expected, msg.tag, CPACE_TAG_BYTES) != 0)
            return dead(s, error, MISMATCH, CPACE_ERR_MISMATCH);
        s->state = CPACE_STATE_CONFIRMED;
        return CPACE_OK;
    }
    return dead(s, error, "key-exchange message out of order for this side", CPACE_ERR_STATE);
}

int cpace_session_key(const struct cpace_session *s, const char *label,
                      uint8_t key[CPACE_KEY_BYTES])
{
    if (s->state != CPACE_STATE_CONFIRMED)
        return CPACE_ERR_STATE;
    cpace_derive_key(key, s->isk, label);
    return CPACE_OK;
}
