/* test_transfer_assembly.c — chunked transfers reassembled in place: chunks whose headers
 * straddle reads, two transfers interleaved, an unframed message handed back, the hostile
 * cases (out of order, more bytes than announced, a transfer too large) dropped, and a private
 * room's sealed transfer opened as it lands (a flipped bit refused and wiped). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "framing.h"
#include "transfer_assembly.h"
#include "unit.h"

/* One chunked send as framing.c plans it: every chunk's header followed by its payload slice. */
struct sent_chunk {
    unsigned char bytes[4096 + 64];
    size_t size;
};

static size_t plan_chunks(const char *sender, uint64_t id, const unsigned char *payload,
                          size_t total, size_t chunk_size, struct sent_chunk *out)
{
    struct frame_id from = {sender, (uint8_t)strlen(sender)};
    struct chunk_plan plan;
    const char *error;
    assert_int_equal(
        framing_plan(&plan, FRAME_KIND_WEIGHTS, id, from, NULL, 0, total, chunk_size, &error), 0);
    for (uint32_t i = 0; i < plan.chunk_count; i++) {
        size_t header = framing_write_header(&plan, i, out[i].bytes, sizeof out[i].bytes);
        size_t part = framing_chunk_payload_size(&plan, i);
        if (part)
            memcpy(out[i].bytes + header, payload + (size_t)i * plan.payload_per_chunk, part);
        out[i].size = header + part;
    }
    return plan.chunk_count;
}

/* Feeds one message in pieces of `piece` bytes; returns the last result. */
static enum assembler_result feed(struct transfer_assembler *a, const unsigned char *data,
                                  size_t size, size_t piece, struct completed_transfer *done)
{
    transfer_assembler_start_message(a);
    enum assembler_result result = ASSEMBLER_TAKEN;
    size_t at = 0;
    do {
        size_t n = size - at < piece ? size - at : piece;
        size_t used;
        result = transfer_assembler_take(a, data + at, n, at + n == size, &used, done);
        if (result == ASSEMBLER_NOT_FRAMED)
            return result;
        assert_int_equal(used, n);
        at += n;
    } while (at < size);
    return result;
}

static unsigned char *pattern(size_t size, int seed)
{
    unsigned char *p = malloc(size ? size : 1);
    for (size_t i = 0; i < size; i++)
        p[i] = (unsigned char)(i * 31 + seed);
    return p;
}

static void test_interleaved_transfers_arrive_whole_and_aligned(void **state)
{
    (void)state;
    struct transfer_assembler a;
    transfer_assembler_init(&a, 1 << 20);
    size_t total = 5000;
    unsigned char *one = pattern(total, 1), *two = pattern(total, 2);
    struct sent_chunk *c1 = calloc(16, sizeof *c1), *c2 = calloc(16, sizeof *c2);
    size_t n = plan_chunks("alice", 7, one, total, 1100, c1);
    assert_int_equal(plan_chunks("bob", 7, two, total, 1100, c2), n); /* same id, other sender */
    assert_true(n > 4);
    struct completed_transfer done;
    int completed = 0;
    for (size_t i = 0; i < n; i++) {
        /* 7-byte pieces: every header straddles several reads. */
        enum assembler_result r1 = feed(&a, c1[i].bytes, c1[i].size, 7, &done);
        if (r1 == ASSEMBLER_COMPLETED) {
            assert_int_equal(i, n - 1);
            assert_int_equal(done.size, total);
            assert_memory_equal(done.payload, one, total);
            assert_int_equal((uintptr_t)done.payload % TRANSFER_ALIGNMENT, 0);
            struct frame_header h;
            const char *error;
            assert_int_equal(frame_header_parse(done.header, done.header_size, &h, NULL, &error),
                             FRAME_OK);
            assert_memory_equal(h.sender.bytes, "alice", 5);
            free(done.payload);
            free(done.header);
            completed++;
        }
        enum assembler_result r2 = feed(&a, c2[i].bytes, c2[i].size, 4096, &done);
        if (r2 == ASSEMBLER_COMPLETED) {
            assert_memory_equal(done.payload, two, total);
            free(done.payload);
            free(done.header);
            completed++;
        }
    }
    assert_int_equal(completed, 2);
    assert_int_equal(a.open_count, 0);
    assert_int_equal(a.dropped, 0);
    transfer_assembler_free(&a);
    free(one);
    free(two);
    free(c1);
    free(c2);
}

static void test_unframed_message_is_handed_back(void **state)
{
    (void)state;
    struct transfer_assembler a;
    transfer_assembler_init(&a, 1 << 20);
    struct completed_transfer done;
    const unsigned char v1[] = "a v1 payload without a frame header";
    assert_int_equal(feed(&a, v1, sizeof v1, 3, &done), ASSEMBLER_NOT_FRAMED);
    /* A message shorter than the magic, even one that starts like it, is not a chunk either. */
    const unsigned char short_one[] = {0x53};
    assert_int_equal(feed(&a, short_one, 1, 1, &done), ASSEMBLER_NOT_FRAMED);
    transfer_assembler_free(&a);
}

static void test_out_of_order_overflowing_and_oversized_transfers_are_dropped(void **state)
{
    (void)state;
    struct transfer_assembler a;
    transfer_assembler_init(&a, 4000);
    size_t total = 3000;
    unsigned char *payload = pattern(total, 3);
    struct sent_chunk *c = calloc(8, sizeof *c);
    size_t n = plan_chunks("carol", 1, payload, total, 1100, c);
    assert_true(n >= 3);
    struct completed_transfer done;
    /* Chunk 1 without chunk 0: nothing to continue. */
    assert_int_equal(feed(&a, c[1].bytes, c[1].size, 64, &done), ASSEMBLER_TAKEN);
    assert_int_equal(a.open_count, 0);
    /* 0, then 2: out of order, the transfer is dropped and never completes. */
    feed(&a, c[0].bytes, c[0].size, 64, &done);
    assert_int_equal(a.open_count, 1);
    feed(&a, c[2].bytes, c[2].size, 64, &done);
    assert_int_equal(a.open_count, 0);
    for (size_t i = 1; i < n; i++)
        assert_int_equal(feed(&a, c[i].bytes, c[i].size, 64, &done), ASSEMBLER_TAKEN);
    /* More payload than the header announced: dropped, not written past the buffer. */
    feed(&a, c[0].bytes, c[0].size, 64, &done);
    unsigned char *long_chunk = malloc(c[1].size + 2000);
    memcpy(long_chunk, c[1].bytes, c[1].size);
    memset(long_chunk + c[1].size, 0xAA, 2000);
    feed(&a, long_chunk, c[1].size + 2000, 500, &done);
    assert_int_equal(a.open_count, 0);
    /* A transfer announcing more than max_transfer_size is never allocated. */
    unsigned char *big = pattern(5000, 4);
    struct sent_chunk *b = calloc(8, sizeof *b);
    plan_chunks("dave", 2, big, 5000, 1100, b);
    feed(&a, b[0].bytes, b[0].size, 64, &done);
    assert_int_equal(a.open_count, 0);
    assert_int_equal(a.dropped, 3); /* out of order, overflowing, too large */
    transfer_assembler_free(&a);
    free(payload);
    free(c);
    free(long_chunk);
    free(big);
    free(b);
}

static void test_empty_transfer_completes(void **state)
{
    (void)state;
    struct transfer_assembler a;
    transfer_assembler_init(&a, 100);
    struct sent_chunk c[1];
    assert_int_equal(plan_chunks("erin", 9, NULL, 0, 1000, c), 1);
    struct completed_transfer done;
    assert_int_equal(feed(&a, c[0].bytes, c[0].size, 1000, &done), ASSEMBLER_COMPLETED);
    assert_int_equal(done.size, 0);
    free(done.payload);
    free(done.header);
    transfer_assembler_free(&a);
}

/* A private room's transfer sealed by chunk_cipher.c (small segments, so that chunk edges cut
 * segments), cut into chunks for `sender`, fed in 7-byte pieces under `key`. */
static enum assembler_result feed_sealed(struct transfer_assembler *a, const char *sender,
                                         const unsigned char *sealed, size_t wire_size,
                                         struct completed_transfer *done)
{
    struct sent_chunk *c = calloc(16, sizeof *c);
    size_t n = plan_chunks(sender, 7, sealed, wire_size, 1100, c);
    enum assembler_result result = ASSEMBLER_TAKEN;
    for (size_t i = 0; i < n; i++)
        result = feed(a, c[i].bytes, c[i].size, 7, done);
    free(c);
    return result;
}

static void test_sealed_transfer_is_opened_as_it_lands(void **state)
{
    (void)state;
    const size_t total = 5000;
    const uint32_t segment = 300;
    unsigned char *plain = pattern(total, 5);
    struct transfer_key key = {.set = 1, .room = "K7QX2M", .room_len = 6, .epoch = 3};
    memset(key.key, 0x42, sizeof key.key);
    struct sealed_context ctx = {key.room,           6, (const uint8_t *)"alice", 5, 7,
                                 FRAME_KIND_WEIGHTS, 3};
    size_t wire_size = (size_t)sealed_size(total, segment);
    unsigned char *sealed = malloc(wire_size);
    const char *error = NULL;
    assert_int_equal(
        sealed_seal(key.key, &ctx, SEALED_AES_256_GCM, segment, plain, total, sealed, NULL, &error),
        0);
    struct transfer_assembler a;
    transfer_assembler_init(&a, 1 << 20);
    transfer_assembler_set_key(&a, &key);
    struct completed_transfer done;

    /* Opened: the plaintext where the header says, under the key's epoch. */
    assert_int_equal(feed_sealed(&a, "alice", sealed, wire_size, &done), ASSEMBLER_COMPLETED);
    assert_int_equal(done.opened, TRANSFER_OPENED);
    assert_int_equal(done.plaintext_size, total);
    assert_int_equal(done.epoch, 3);
    assert_memory_equal(done.payload + done.plaintext_offset, plain, total);
    free(done.payload);
    free(done.header);

    /* One flipped bit in the last segment: refused, and no plaintext kept. */
    sealed[wire_size - 10] ^= 1;
    assert_int_equal(feed_sealed(&a, "alice", sealed, wire_size, &done), ASSEMBLER_COMPLETED);
    assert_int_equal(done.opened, TRANSFER_REFUSED);
    assert_non_null(done.open_error);
    for (size_t i = 0; i < total; i++)
        assert_int_equal(done.payload[SEALED_DATA_OFFSET + i], 0);
    free(done.payload);
    free(done.header);
    sealed[wire_size - 10] ^= 1;

    /* Under another sender's name (the associated data): refused. */
    assert_int_equal(feed_sealed(&a, "mallory", sealed, wire_size, &done), ASSEMBLER_COMPLETED);
    assert_int_equal(done.opened, TRANSFER_REFUSED);
    free(done.payload);
    free(done.header);

    /* A key of another epoch: not opened here, the bytes arrive as sent (the caller decides). */
    key.epoch = 4;
    transfer_assembler_set_key(&a, &key);
    assert_int_equal(feed_sealed(&a, "alice", sealed, wire_size, &done), ASSEMBLER_COMPLETED);
    assert_int_equal(done.opened, TRANSFER_AS_RECEIVED);
    assert_memory_equal(done.payload, sealed, wire_size);
    free(done.payload);
    free(done.header);
    transfer_assembler_free(&a);
    free(plain);
    free(sealed);
}

int run_transfer_assembly_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interleaved_transfers_arrive_whole_and_aligned),
        cmocka_unit_test(test_unframed_message_is_handed_back),
        cmocka_unit_test(test_out_of_order_overflowing_and_oversized_transfers_are_dropped),
        cmocka_unit_test(test_empty_transfer_completes),
        cmocka_unit_test(test_sealed_transfer_is_opened_as_it_lands),
    };
    return UNIT_RUN_GROUP("transfer_assembly", tests, NULL, NULL, test_count);
}
