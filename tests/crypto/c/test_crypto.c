/* test_crypto.c — the private-room C code on its own, built with ASan and UBSan by
 * tests/crypto/test_crypto_c.py: CPace against draft-irtf-cfrg-cpace-21 appendix B.3 (read from
 * tests/vectors/cpace_ristretto255.json), the session state machine, hostile key-exchange
 * messages, and sealed transfers (round trip, tampering, truncation, splicing). */
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chunk_cipher.h"
#include "cpace.h"
#include "cpace_session.h"
#include "group_key.h"

static int failures, checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

static json_t *vectors;

/* Hex field of the vector file into out; returns its length. */
static size_t vec(const char *name, uint8_t *out, size_t capacity)
{
    json_t *node = vectors;
    char path[64];
    snprintf(path, sizeof path, "%s", name);
    char *dot = strchr(path, '.');
    if (dot) {
        *dot = 0;
        node = json_object_get(node, path);
        name = dot + 1;
    }
    const char *hex = json_string_value(json_object_get(node, dot ? name : path));
    size_t length = 0;
    if (hex == NULL || sodium_hex2bin(out, capacity, hex, strlen(hex), NULL, &length, NULL) != 0) {
        fprintf(stderr, "vector %s missing or too long\n", name);
        exit(2);
    }
    return length;
}

static void test_draft_vectors(void)
{
    uint8_t prs[16], ci[64], sid[32], hash[64], want_hash[64], g[32], want_g[32];
    size_t prs_len = vec("PRS", prs, sizeof prs), ci_len = vec("CI", ci, sizeof ci),
           sid_len = vec("sid", sid, sizeof sid);
    vec("generator_hash", want_hash, sizeof want_hash);
    vec("g", want_g, sizeof want_g);
    cpace_generator_hash(hash, prs, prs_len, ci, ci_len, sid, sid_len);
    CHECK(memcmp(hash, want_hash, 64) == 0);
    cpace_calculate_generator(g, prs, prs_len, ci, ci_len, sid, sid_len);
    CHECK(memcmp(g, want_g, 32) == 0);

    uint8_t ya[32], yb[32], Ya[32], Yb[32], want_Ya[32], want_Yb[32], ada[8], adb[8];
    size_t ada_len = vec("ADa", ada, sizeof ada), adb_len = vec("ADb", adb, sizeof adb);
    vec("ya", ya, 32);
    vec("yb", yb, 32);
    vec("Ya", want_Ya, 32);
    vec("Yb", want_Yb, 32);
    CHECK(cpace_public_share(Ya, ya, g) == 0 && memcmp(Ya, want_Ya, 32) == 0);
    CHECK(cpace_public_share(Yb, yb, g) == 0 && memcmp(Yb, want_Yb, 32) == 0);

    uint8_t ka[32], kb[32], want_k[32], isk[64], want_isk[64];
    vec("K", want_k, 32);
    CHECK(cpace_shared_point(ka, ya, Yb) == 0 && memcmp(ka, want_k, 32) == 0);
    CHECK(cpace_shared_point(kb, yb, Ya) == 0 && memcmp(kb, want_k, 32) == 0);
    vec("ISK_IR", want_isk, 64);
    cpace_isk(isk, sid, sid_len, ka, Ya, ada, ada_len, Yb, adb, adb_len);
    CHECK(memcmp(isk, want_isk, 64) == 0);

    /* B.3.10 and B.3.11: scalar_mult_vfy on a valid point, a non-canonical one, the identity */
    uint8_t s[32], x[32], want[32], out[32], bad1[32], bad2[32];
    vec("scalar_mult_valid.s", s, 32);
    vec("scalar_mult_valid.X", x, 32);
    vec("scalar_mult_valid.result", want, 32);
    CHECK(cpace_shared_point(out, s, x) == 0 && memcmp(out, want, 32) == 0);
    vec("scalar_mult_invalid.Y_i1", bad1, 32);
    vec("scalar_mult_invalid.Y_i2", bad2, 32);
    CHECK(cpace_shared_point(out, s, bad1) == -1 && sodium_is_zero(out, 32));
    CHECK(cpace_shared_point(out, s, bad2) == -1 && sodium_is_zero(out, 32));

    uint8_t leb[10];
    CHECK(cpace_leb128(leb, 0) == 1 && leb[0] == 0);
    CHECK(cpace_leb128(leb, 127) == 1 && leb[0] == 0x7f);
    CHECK(cpace_leb128(leb, 128) == 2 && leb[0] == 0x80 && leb[1] == 0x01);
}

static int new_pair(struct cpace_session *a, struct cpace_session *b, const char *secret_a,
                    const char *secret_b)
{
    const char *error = NULL;
    int rc = cpace_session_init(a, CPACE_INITIATOR, (const uint8_t *)secret_a, strlen(secret_a),
                                (const uint8_t *)"K7QX2M", 6, (const uint8_t *)"alice", 5,
                                (const uint8_t *)"host", 4, (const uint8_t *)"member", 6, &error);
    rc |= cpace_session_init(b, CPACE_RESPONDER, (const uint8_t *)secret_b, strlen(secret_b),
                             (const uint8_t *)"K7QX2M", 6, (const uint8_t *)"alice", 5,
                             (const uint8_t *)"host", 4, (const uint8_t *)"host", 4, &error);
    return rc;
}

static void test_sessions(void)
{
    struct cpace_session a, b;
    uint8_t m1[CPACE_MSG_MAX], m2[CPACE_MSG_MAX], m3[CPACE_MSG_MAX], ka[32], kb[32];
    size_t n1, n2, n3;
    const char *error = NULL;

    CHECK(new_pair(&a, &b, "4HRT", "4HRT") == 0);
    CHECK(cpace_session_key(&a, "x", ka) == CPACE_ERR_STATE); /* no key before confirmation */
    CHECK(cpace_session_start(&a, m1, &n1, &error) == 0 && n1 == 2 + 16 + 32 + 1 + 6);
    CHECK(cpace_session_receive(&b, m1, n1, m2, &n2, &error) == 0 && n2 == 2 + 32 + 64 + 1 + 4);
    CHECK(cpace_session_key(&b, "x", kb) == CPACE_ERR_STATE);
    CHECK(cpace_session_receive(&a, m2, n2, m3, &n3, &error) == 0 && n3 == 66);
    CHECK(cpace_session_receive(&b, m3, n3, m2, &n2, &error) == 0 && n2 == 0);
    CHECK(a.state == CPACE_STATE_CONFIRMED && b.state == CPACE_STATE_CONFIRMED);
    CHECK(cpace_session_key(&a, "x", ka) == 0 && cpace_session_key(&b, "x", kb) == 0);
    CHECK(memcmp(ka, kb, 32) == 0);
    cpace_session_key(&b, "y", kb);
    CHECK(memcmp(ka, kb, 32) != 0); /* labels separate keys */
    /* a replayed confirmation after the end is refused */
    CHECK(cpace_session_receive(&b, m3, n3, m2, &n2, &error) == CPACE_ERR_STATE);

    /* wrong secret: the initiator sees the mismatch in the host's tag */
    CHECK(new_pair(&a, &b, "4HRT", "4HRX") == 0);
    cpace_session_start(&a, m1, &n1, &error);
    CHECK(cpace_session_receive(&b, m1, n1, m2, &n2, &error) == 0);
    CHECK(cpace_session_receive(&a, m2, n2, m3, &n3, &error) == CPACE_ERR_MISMATCH);
    CHECK(strcmp(error, "the code's secret part does not match") == 0);
    CHECK(a.state == CPACE_STATE_FAILED && sodium_is_zero(a.isk, 64) && sodium_is_zero(a.prs, 64));

    /* wrong secret seen by the host: a forged CONFIRM_A (the member skipped its check) */
    CHECK(new_pair(&a, &b, "4HRT", "4HRX") == 0);
    cpace_session_start(&a, m1, &n1, &error);
    cpace_session_receive(&b, m1, n1, m2, &n2, &error);
    uint8_t forged[66] = {CPACE_MSG_VERSION, CPACE_MSG_CONFIRM_A};
    CHECK(cpace_session_receive(&b, forged, sizeof forged, m3, &n3, &error) == CPACE_ERR_MISMATCH);

    /* the identity and a non-canonical encoding as the initiator's share: the host aborts */
    for (int variant = 0; variant < 2; variant++) {
        CHECK(new_pair(&a, &b, "4HRT", "4HRT") == 0);
        cpace_session_start(&a, m1, &n1, &error);
        memset(m1 + 18, variant ? 0xff : 0x00, 32);
        CHECK(cpace_session_receive(&b, m1, n1, m2, &n2, &error) == CPACE_ERR_BAD_POINT);
        CHECK(n2 == 0 && b.state == CPACE_STATE_FAILED);
    }

    /* a different room or member id gives a different key (sid and CI bind them) */
    struct cpace_session c;
    CHECK(new_pair(&a, &b, "4HRT", "4HRT") == 0);
    cpace_session_init(&c, CPACE_RESPONDER, (const uint8_t *)"4HRT", 4, (const uint8_t *)"ZZZZZZ",
                       6, (const uint8_t *)"alice", 5, (const uint8_t *)"host", 4, NULL, 0, &error);
    cpace_session_start(&a, m1, &n1, &error);
    CHECK(cpace_session_receive(&c, m1, n1, m2, &n2, &error) == 0);
    CHECK(cpace_session_receive(&a, m2, n2, m3, &n3, &error) == CPACE_ERR_MISMATCH);
}

static void test_hostile_messages(void)
{
    struct cpace_msg msg;
    const char *error = NULL;
    uint8_t buf[CPACE_MSG_MAX + 8] = {0};
    CHECK(cpace_msg_parse(&msg, buf, 0, &error) == -1);
    CHECK(cpace_msg_parse(&msg, buf, 1, &error) == -1);
    buf[0] = 2; /* unknown version */
    buf[1] = CPACE_MSG_CONFIRM_A;
    CHECK(cpace_msg_parse(&msg, buf, 66, &error) == -1);
    buf[0] = CPACE_MSG_VERSION;
    CHECK(cpace_msg_parse(&msg, buf, 66, &error) == 0 && msg.type == CPACE_MSG_CONFIRM_A);
    CHECK(cpace_msg_parse(&msg, buf, 65, &error) == -1); /* truncated tag */
    CHECK(cpace_msg_parse(&msg, buf, 67, &error) == -1); /* trailing byte */
    buf[1] = 9;
    CHECK(cpace_msg_parse(&msg, buf, 66, &error) == -1); /* unknown type */
    buf[1] = CPACE_MSG_SHARE_A;
    buf[2 + 16 + 32] = 3; /* AD length 3 */
    CHECK(cpace_msg_parse(&msg, buf, 2 + 16 + 32 + 1 + 3, &error) == 0 && msg.ad_len == 3);
    CHECK(cpace_msg_parse(&msg, buf, 2 + 16 + 32 + 1 + 2, &error) == -1); /* AD cut short */
    CHECK(cpace_msg_parse(&msg, buf, 2 + 16 + 32 + 1 + 4, &error) == -1); /* AD too long */
    CHECK(cpace_msg_parse(&msg, buf, 2 + 16 + 31, &error) == -1);         /* share cut short */
    buf[2 + 16 + 32] = 255; /* AD length beyond the 64-byte limit, bytes present or not */
    CHECK(cpace_msg_parse(&msg, buf, sizeof buf, &error) == -1);
    buf[1] = CPACE_MSG_SHARE_B;
    buf[2 + 32 + 64] = 0;
    CHECK(cpace_msg_parse(&msg, buf, 2 + 32 + 64 + 1, &error) == 0 &&
          msg.type == CPACE_MSG_SHARE_B);
    CHECK(cpace_msg_parse(&msg, buf, 2 + 32 + 64, &error) == -1);

    /* out-of-order messages kill the session with a clear error */
    struct cpace_session a, b;
    uint8_t out[CPACE_MSG_MAX];
    size_t n;
    new_pair(&a, &b, "4HRT", "4HRT");
    CHECK(cpace_session_receive(&b, buf, 2 + 32 + 64 + 1, out, &n, &error) == CPACE_ERR_STATE);
    CHECK(b.state == CPACE_STATE_FAILED);
    CHECK(cpace_session_start(&b, out, &n, &error) == CPACE_ERR_STATE); /* responders never start */
}

static void test_sealed(enum sealed_algorithm algorithm)
{
    uint8_t key[32], other_key[32];
    randombytes_buf(key, sizeof key);
    randombytes_buf(other_key, sizeof other_key);
    const size_t length = 100000, segment = 4096;
    const uint64_t offset = sealed_data_offset(length, segment),
                   total = sealed_size(length, segment);
    CHECK(sealed_segment_count(length, segment) == 25);
    CHECK(offset == 64 && total == offset + length + 25 * 16); /* a tag after each segment */
    uint8_t *plain = malloc(length), *sealed = malloc(total), *copy = malloc(total);
    for (size_t i = 0; i < length; i++)
        plain[i] = (uint8_t)(i * 7);
    struct sealed_context ctx = {
        (const uint8_t *)"K7QX2M", 6, (const uint8_t *)"alice", 5, 42, 1, 3};
    const char *error = NULL;
    uint8_t digest_seal[32], digest_open[32];
    /* out of place: the encryption is the copy */
    CHECK(sealed_seal(key, &ctx, algorithm, segment, plain, length, sealed, digest_seal, &error) ==
          0);
    CHECK(memcmp(sealed + offset, plain, length) != 0);
    memcpy(copy, sealed, total);

    struct sealed_header header;
    CHECK(sealed_open(key, &ctx, copy, total, &header, digest_open, &error) == 0);
    CHECK(header.plaintext_len == length && memcmp(copy + offset, plain, length) == 0);
    CHECK(memcmp(digest_seal, digest_open, 32) == 0);

    /* in place is refused (the tags go between the segments), and so is any overlap */
    memcpy(copy + offset, plain, length);
    CHECK(sealed_seal(key, &ctx, algorithm, segment, copy + offset, length, copy, NULL, &error) ==
          -1);
    CHECK(sealed_seal(key, &ctx, algorithm, segment, copy + offset - 8, length - 8, copy, NULL,
                      &error) == -1);

    /* streamed: fed in uneven pieces as chunks would arrive, segments open as they complete */
    struct sealed_opener opener;
    memcpy(copy, sealed, total);
    CHECK(sealed_opener_init(&opener, key, &ctx, total, 1, &error) == 0);
    uint64_t fed = 0;
    int opened_early = 0;
    while (fed < total) {
        fed = fed + 7777 < total ? fed + 7777 : total;
        CHECK(sealed_opener_feed(&opener, copy, fed, &error) == 0);
        opened_early |= opener.next_segment > 0 && fed < total;
    }
    CHECK(opened_early);
    CHECK(sealed_opener_finish(&opener, digest_open, &error) == 0);
    CHECK(memcmp(digest_seal, digest_open, 32) == 0 && memcmp(copy + offset, plain, length) == 0);
    sealed_opener_free(&opener);
    /* fed as pieces (chunk payloads), decrypted straight from them: the same result */
    for (uint64_t piece = 3; piece < total; piece = piece * 5 + 1) {
        memset(copy, 0xee, total);
        CHECK(sealed_opener_init(&opener, key, &ctx, total, 1, &error) == 0);
        for (uint64_t at = 0; at < total; at += piece)
            CHECK(sealed_opener_feed_from(&opener, copy, sealed + at,
                                          at + piece < total ? piece : total - at, &error) == 0);
        CHECK(sealed_opener_finish(&opener, digest_open, &error) == 0);
        CHECK(memcmp(digest_seal, digest_open, 32) == 0);
        CHECK(memcmp(copy, sealed, offset) == 0 && memcmp(copy + offset, plain, length) == 0);
        sealed_opener_free(&opener);
    }
    /* a flipped bit arriving in a piece is refused, and the region is wiped */
    memcpy(copy, sealed, total);
    copy[offset + 50000] ^= 1;
    uint8_t *received = malloc(total);
    CHECK(sealed_opener_init(&opener, key, &ctx, total, 0, &error) == 0);
    CHECK(sealed_opener_feed_from(&opener, received, copy, total / 3, &error) == 0);
    CHECK(sealed_opener_feed_from(&opener, received, copy + total / 3, total - total / 3, &error) ==
          -1);
    CHECK(sodium_is_zero(received + offset, length));
    CHECK(sealed_opener_feed_from(&opener, received, copy, 1, &error) == -1); /* stays failed */
    sealed_opener_free(&opener);
    free(received);
    /* a transfer cut short never finishes */
    memcpy(copy, sealed, total);
    CHECK(sealed_opener_init(&opener, key, &ctx, total, 0, &error) == 0);
    CHECK(sealed_opener_feed(&opener, copy, total - 1, &error) == 0);
    CHECK(sealed_opener_finish(&opener, NULL, &error) == -1);
    sealed_opener_free(&opener);

    /* Each alteration must fail, and leave no plaintext behind. */
    struct sealed_context wrong;
    for (int variant = 0; variant < 11; variant++) {
        memcpy(copy, sealed, total);
        uint64_t size = total;
        const uint8_t *use_key = key;
        wrong = ctx;
        switch (variant) {
        case 0:
            copy[offset + 5000] ^= 1;
            break; /* flipped ciphertext bit */
        case 1:
            copy[sealed_segment_offset(3, segment) + segment] ^= 0x80;
            break; /* flipped tag bit */
        case 2:
            copy[30] ^= 1;
            break; /* salt: another key */
        case 3:
            wrong.room = (const uint8_t *)"ZZZZZZ";
            break; /* from another room */
        case 4:
            wrong.sender = (const uint8_t *)"mallo";
            break; /* another sender */
        case 5:
            wrong.transfer_id = 43;
            break; /* another transfer */
        case 6:
            wrong.kind = 2;
            break; /* relabelled kind */
        case 7:
            use_key = other_key;
            break; /* an old epoch's key */
        case 8:    /* swap two segments with their tags: reordering */
            memcpy(copy + offset, sealed + offset + segment + 16, segment + 16);
            memcpy(copy + offset + segment + 16, sealed + offset, segment + 16);
            break;
        case 9:
            size -= 1;
            break; /* truncated */
        case 10:
            copy[50] = 1;
            break; /* padding not zero */
        }
        int rc = sealed_open(use_key, &wrong, copy, size, &header, NULL, &error);
        CHECK(rc == -1);
        if (variant <= 8)
            CHECK(sodium_is_zero(copy + offset, length));
    }
    /* wrong epoch is refused before any decryption */
    memcpy(copy, sealed, total);
    wrong = ctx;
    wrong.epoch = 4;
    CHECK(sealed_open(key, &wrong, copy, total, &header, NULL, &error) == -1);
    CHECK(strstr(error, "epoch") != NULL);
    /* a length field that lies */
    memcpy(copy, sealed, total);
    copy[16] ^= 1;
    CHECK(sealed_parse_header(&header, copy, total, &error) == -1);
    /* plaintext where a sealed transfer is due */
    CHECK(sealed_parse_header(&header, plain, length, &error) == -1);
    /* empty transfer still authenticates */
    uint8_t empty[80]; /* header, padding, one empty segment's tag */
    CHECK(sealed_size(0, segment) == sizeof empty);
    CHECK(sealed_seal(key, &ctx, algorithm, segment, plain, 0, empty, NULL, &error) == 0);
    uint8_t empty_received[80];
    struct sealed_opener empty_opener; /* as pieces too (the fuzzer found this one missing) */
    CHECK(sealed_opener_init(&empty_opener, key, &ctx, sizeof empty, 0, &error) == 0);
    CHECK(sealed_opener_feed_from(&empty_opener, empty_received, empty, 21, &error) == 0);
    CHECK(sealed_opener_feed_from(&empty_opener, empty_received, empty + 21, 59, &error) == 0);
    CHECK(sealed_opener_finish(&empty_opener, NULL, &error) == 0);
    sealed_opener_free(&empty_opener);
    CHECK(sealed_open(key, &ctx, empty, sizeof empty, &header, NULL, &error) == 0 &&
          header.plaintext_len == 0);
    free(plain);
    free(sealed);
    free(copy);
}

/* Above 8 MiB without a digest, two threads seal half the segments each: the result must open
 * like a one-thread seal (which a digest forces), and every segment must have been sealed. */
static void test_sealed_large(void)
{
    uint8_t key[32];
    randombytes_buf(key, sizeof key);
    const size_t length = 9u << 20; /* 9 segments of 1 MiB: the halves are 4 and 5 */
    const uint64_t offset = sealed_data_offset(length, SEALED_DEFAULT_SEGMENT_SIZE);
    const uint64_t total = sealed_size(length, SEALED_DEFAULT_SEGMENT_SIZE);
    uint8_t *plain = malloc(length), *sealed = malloc(total), digest[32];
    for (size_t i = 0; i < length; i++)
        plain[i] = (uint8_t)(i ^ (i >> 11));
    struct sealed_context ctx = {
        (const uint8_t *)"K7QX2M", 6, (const uint8_t *)"alice", 5, 1, 1, 0};
    struct sealed_header header;
    const char *error = NULL;
    for (int with_digest = 0; with_digest < 2; with_digest++) {
        CHECK(sealed_seal(key, &ctx, SEALED_AES_256_GCM, SEALED_DEFAULT_SEGMENT_SIZE, plain, length,
                          sealed, with_digest ? digest : NULL, &error) == 0);
        for (int segment = 0; segment < 9; segment++) /* every segment was encrypted */
            CHECK(memcmp(sealed + sealed_segment_offset(segment, SEALED_DEFAULT_SEGMENT_SIZE),
                         plain + ((size_t)segment << 20), 64) != 0);
        CHECK(sealed_open(key, &ctx, sealed, total, &header, NULL, &error) == 0);
        CHECK(memcmp(sealed + offset, plain, length) == 0);
    }
    free(plain);
    free(sealed);
}

static void test_group_key(void)
{
    uint8_t wrap_key[32], key[32], pk[32], out[GROUP_WRAPPED_BYTES], got_key[32], got_pk[32];
    randombytes_buf(wrap_key, 32);
    group_key_generate(key);
    randombytes_buf(pk, 32);
    struct group_key_context ctx = {
        (const uint8_t *)"K7QX2M", 6, (const uint8_t *)"host", 4, (const uint8_t *)"alice", 5, 7};
    const char *error = NULL;
    CHECK(group_key_wrap(out, wrap_key, &ctx, key, pk, &error) == 0);
    CHECK(group_key_unwrap(got_key, got_pk, wrap_key, &ctx, out, sizeof out, &error) == 0);
    CHECK(memcmp(got_key, key, 32) == 0 && memcmp(got_pk, pk, 32) == 0);
    struct group_key_context other = ctx;
    other.member_id = (const uint8_t *)"bobby";
    CHECK(group_key_unwrap(got_key, got_pk, wrap_key, &other, out, sizeof out, &error) == -1);
    other = ctx;
    other.epoch = 8;
    CHECK(group_key_unwrap(got_key, got_pk, wrap_key, &other, out, sizeof out, &error) == -1);
    CHECK(group_key_unwrap(got_key, got_pk, wrap_key, &ctx, out, sizeof out - 1, &error) == -1);
    out[50] ^= 1;
    CHECK(group_key_unwrap(got_key, got_pk, wrap_key, &ctx, out, sizeof out, &error) == -1);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s tests/vectors/cpace_ristretto255.json\n", argv[0]);
        return 2;
    }
    json_error_t json_error;
    vectors = json_load_file(argv[1], 0, &json_error);
    if (vectors == NULL || cpace_init() != 0) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], json_error.text);
        return 2;
    }
    test_draft_vectors();
    test_sessions();
    test_hostile_messages();
    test_sealed(SEALED_AES_256_GCM);
    test_sealed(SEALED_CHACHA20_POLY1305);
    test_sealed_large();
    test_group_key();
    json_decref(vectors);
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
