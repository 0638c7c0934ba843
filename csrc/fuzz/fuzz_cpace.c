/* libFuzzer harness for the private-room parsers: the first byte picks the target, the rest is
 * hostile input for the key-exchange messages (as the host's first message and as the member's
 * answer), a sealed transfer to open in place, or a wrapped group key. Invariants trap: no
 * session is ever confirmed by garbage, a transfer refused once decryption began leaves no
 * plaintext behind.
 * Build: make -C csrc/fuzz (output in build/fuzz/); seeds from make_cpace_seeds.py. */
#include "chunk_cipher.h"
#include "cpace.h"
#include "cpace_session.h"
#include "group_key.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(condition)                                                                           \
    do {                                                                                           \
        if (!(condition))                                                                          \
            __builtin_trap();                                                                      \
    } while (0)

/* The fixed key and context the seed corpus was sealed with (make_cpace_seeds.py). */
static const uint8_t FUZZ_KEY[32] = {
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42};
static const struct sealed_context FUZZ_CONTEXT = {
    (const uint8_t *)"K7QX2M", 6, (const uint8_t *)"alice", 5, 7, 1, 0};

static void init_session(struct cpace_session *s, enum cpace_role role)
{
    CHECK(cpace_session_init(s, role, (const uint8_t *)"4HRT", 4, (const uint8_t *)"K7QX2M", 6,
                             (const uint8_t *)"alice", 5, (const uint8_t *)"host", 4,
                             (const uint8_t *)"fuzz", 4, NULL) == CPACE_OK);
}

static void fuzz_key_exchange(const uint8_t *data, size_t size)
{
    struct cpace_msg msg;
    const char *error = NULL;
    if (cpace_msg_parse(&msg, data, size, &error) == 0) {
        CHECK(msg.ad_len <= CPACE_AD_MAX);
        CHECK(msg.type >= CPACE_MSG_SHARE_A && msg.type <= CPACE_MSG_CONFIRM_A);
    } else {
        CHECK(error != NULL);
    }

    /* As the host's first message: anything but a well-formed share with a valid point fails,
     * and an answer is only ever a SHARE_B of the right length. */
    struct cpace_session host;
    uint8_t out[CPACE_MSG_MAX];
    size_t out_len = 0;
    init_session(&host, CPACE_RESPONDER);
    int rc = cpace_session_receive(&host, data, size, out, &out_len, &error);
    if (rc == CPACE_OK) {
        CHECK(host.state == CPACE_STATE_AWAIT_CONFIRM);
        CHECK(out_len == 2 + CPACE_POINT_BYTES + CPACE_TAG_BYTES + 1 + 4);
    } else {
        CHECK(host.state == CPACE_STATE_FAILED && out_len == 0);
        CHECK(sodium_is_zero(host.isk, sizeof host.isk));
    }

    /* As the member's answer from the host: garbage never confirms the member. */
    struct cpace_session member;
    init_session(&member, CPACE_INITIATOR);
    CHECK(cpace_session_start(&member, out, &out_len, &error) == CPACE_OK);
    rc = cpace_session_receive(&member, data, size, out, &out_len, &error);
    CHECK(rc != CPACE_OK && member.state == CPACE_STATE_FAILED);
    uint8_t key[CPACE_KEY_BYTES];
    CHECK(cpace_session_key(&member, "x", key) == CPACE_ERR_STATE);
}

static void fuzz_sealed(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    CHECK(copy);
    memcpy(copy, data, size);
    struct sealed_header header;
    const char *error = NULL;
    int parsed = sealed_parse_header(&header, copy, size, &error);
    if (parsed == 0)
        CHECK(size == sealed_size(header.plaintext_len, header.segment_size));
    /* Opened in two feeds, as chunks would arrive, with the digest of a global model. */
    struct sealed_opener opener;
    uint8_t digest[SEALED_DIGEST_BYTES];
    CHECK(sealed_opener_init(&opener, FUZZ_KEY, &FUZZ_CONTEXT, size, 1, &error) == 0);
    int rc = sealed_opener_feed(&opener, copy, size / 2, &error);
    if (rc == 0)
        rc = sealed_opener_feed(&opener, copy, size, &error);
    if (rc == 0)
        rc = sealed_opener_finish(&opener, digest, &error);
    if (rc != 0 && opener.keyed)
        CHECK(sodium_is_zero(copy + sealed_data_offset(header.plaintext_len, header.segment_size),
                             header.plaintext_len));
    sealed_opener_free(&opener);

    /* Again as three pieces (chunk payloads) decrypted straight into a second buffer: the same
     * verdict, and the same plaintext when it opens. */
    uint8_t *received = malloc(size ? size : 1);
    CHECK(received);
    memset(received, 0, size);
    struct sealed_opener pieces;
    CHECK(sealed_opener_init(&pieces, FUZZ_KEY, &FUZZ_CONTEXT, size, 0, &error) == 0);
    size_t cut1 = size / 3, cut2 = size - size / 4;
    int rc2 = sealed_opener_feed_from(&pieces, received, data, cut1, &error);
    if (rc2 == 0)
        rc2 = sealed_opener_feed_from(&pieces, received, data + cut1, cut2 - cut1, &error);
    if (rc2 == 0)
        rc2 = sealed_opener_feed_from(&pieces, received, data + cut2, size - cut2, &error);
    if (rc2 == 0)
        rc2 = sealed_opener_finish(&pieces, NULL, &error);
    CHECK((rc == 0) == (rc2 == 0));
    if (rc == 0) { /* only the plaintext is the same: in place, the header and tags stay put */
        uint64_t offset = sealed_data_offset(header.plaintext_len, header.segment_size);
        CHECK(memcmp(received + offset, copy + offset, header.plaintext_len) == 0);
    }
    sealed_opener_free(&pieces);
    free(received);
    free(copy);
}

static void fuzz_group_key(const uint8_t *data, size_t size)
{
    struct group_key_context ctx = {
        (const uint8_t *)"K7QX2M", 6, (const uint8_t *)"host", 4, (const uint8_t *)"alice", 5, 0};
    uint8_t key[GROUP_KEY_BYTES], pk[GROUP_SIGN_PK_BYTES];
    const char *error = NULL;
    CHECK(group_key_unwrap(key, pk, FUZZ_KEY, &ctx, data, size, &error) != 0 || size == 104);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        CHECK(cpace_init() == 0);
        ready = 1;
    }
    if (size == 0)
        return 0;
    switch (data[0] % 3) {
    case 0:
        fuzz_key_exchange(data + 1, size - 1);
        break;
    case 1:
        fuzz_sealed(data + 1, size - 1);
        break;
    default:
        fuzz_group_key(data + 1, size - 1);
        break;
    }
    return 0;
}
