/* test_frame_header.c — the binary frame header against the shared vectors in
 * tests/vectors/protocol.json (exact bytes both ways), and every way a header off the network
 * can be cut short or malformed. */
#include <stdio.h>
#include <string.h>

#include "core_harness.h"
#include "frame_header.h"
#include "unit.h"

static json_t *examples(json_t *vectors)
{
    json_t *list = json_object_get(json_object_get(vectors, "frame_header"), "examples");
    assert_true(json_is_array(list));
    assert_true(json_array_size(list) >= 2);
    return list;
}

static uint64_t number(json_t *object, const char *name)
{
    json_t *value = json_object_get(object, name);
    assert_true(json_is_integer(value));
    return (uint64_t)json_integer_value(value);
}

static void test_parse_vector_examples(void **state)
{
    json_t *vectors = harness_protocol_vectors();
    size_t i;
    json_t *example;
    json_array_foreach(examples(vectors), i, example)
    {
        unsigned char bytes[FRAME_HEADER_MAX_SIZE + 8];
        size_t length = harness_unhex(json_text(example, "hex"), bytes, sizeof bytes);
        /* Payload bytes after the header do not disturb parsing. */
        memcpy(bytes + length, "payload!", 8);
        struct frame_header header;
        const char *error = NULL;
        assert_int_equal(frame_header_parse(bytes, length + 8, &header, NULL, &error), FRAME_OK);
        assert_int_equal(header.header_size, length);
        assert_int_equal(header.kind, number(example, "kind"));
        assert_int_equal(header.transfer_id, number(example, "transfer_id"));
        assert_int_equal(header.chunk_index, number(example, "chunk_index"));
        assert_int_equal(header.chunk_count, number(example, "chunk_count"));
        assert_int_equal(header.total_size, number(example, "total_size"));
        const char *sender = json_text(example, "sender");
        assert_int_equal(header.sender.length, strlen(sender));
        assert_memory_equal(header.sender.bytes, sender, strlen(sender));

        json_t *recipients = json_object_get(example, "recipients");
        assert_int_equal(header.recipient_count, json_array_size(recipients));
        size_t cursor = 0, seen = 0;
        struct frame_id id;
        while (frame_header_next_recipient(&header, &cursor, &id)) {
            const char *expected = json_string_value(json_array_get(recipients, seen++));
            assert_non_null(expected);
            assert_int_equal(id.length, strlen(expected));
            assert_memory_equal(id.bytes, expected, id.length);
        }
        assert_int_equal(seen, json_array_size(recipients));
    }
    json_decref(vectors);
}

static void test_write_vector_examples(void **state)
{
    json_t *vectors = harness_protocol_vectors();
    size_t i;
    json_t *example;
    json_array_foreach(examples(vectors), i, example)
    {
        unsigned char expected[FRAME_HEADER_MAX_SIZE];
        size_t length = harness_unhex(json_text(example, "hex"), expected, sizeof expected);
        json_t *names = json_object_get(example, "recipients");
        struct frame_id recipients[8];
        size_t count = json_array_size(names);
        assert_true(count <= 8);
        for (size_t r = 0; r < count; r++) {
            const char *name = json_string_value(json_array_get(names, r));
            recipients[r] = (struct frame_id){name, (uint8_t)strlen(name)};
        }
        const char *sender = json_text(example, "sender");
        struct frame_id sender_id = {sender, (uint8_t)strlen(sender)};
        assert_int_equal(frame_header_size(sender_id.length, recipients, count), length);
        unsigned char out[FRAME_HEADER_MAX_SIZE];
        size_t written = frame_header_write(
            out, sizeof out, (uint8_t)number(example, "kind"), number(example, "transfer_id"),
            (uint32_t)number(example, "chunk_index"), (uint32_t)number(example, "chunk_count"),
            number(example, "total_size"), sender_id, recipients, count);
        assert_int_equal(written, length);
        assert_memory_equal(out, expected, length);
        /* Too small a buffer: refused, not overrun. */
        assert_int_equal(
            frame_header_write(out, length - 1, 1, 0, 0, 1, 0, sender_id, recipients, count), 0);
    }
    json_decref(vectors);
}

/* A valid header from "bob" to "host" (the second vector's layout), for mutating. */
static size_t sample(unsigned char *out)
{
    struct frame_id to = {"host", 4};
    size_t size = frame_header_write(out, FRAME_HEADER_MAX_SIZE, 2, 99, 1, 3, 1000,
                                     (struct frame_id){"bob", 3}, &to, 1);
    assert_int_equal(size, FRAME_HEADER_FIXED_SIZE + 3 + 1 + 4);
    return size;
}

static enum frame_parse_result parse(const unsigned char *bytes, size_t length, const char **error)
{
    struct frame_header header;
    *error = NULL;
    return frame_header_parse(bytes, length, &header, NULL, error);
}

static void test_every_truncation_needs_more(void **state)
{
    unsigned char bytes[FRAME_HEADER_MAX_SIZE];
    size_t size = sample(bytes);
    for (size_t length = 0; length < size; length++) {
        struct frame_header header;
        size_t needed = 0;
        assert_int_equal(frame_header_parse(bytes, length, &header, &needed, NULL),
                         FRAME_NEED_MORE);
        /* Until the fixed part is there the full size is unknown. */
        assert_int_equal(needed, length < FRAME_HEADER_FIXED_SIZE ? FRAME_HEADER_FIXED_SIZE : size);
    }
    const char *error;
    assert_int_equal(parse(bytes, size, &error), FRAME_OK);
}

static void test_not_ours(void **state)
{
    const char *error;
    assert_int_equal(parse((const unsigned char *)"XSBF", 4, &error), FRAME_NOT_OURS);
    assert_int_equal(parse((const unsigned char *)"SSBx and more", 13, &error), FRAME_NOT_OURS);
    assert_int_equal(parse((const unsigned char *)"Sx", 2, &error), FRAME_NOT_OURS);
}

/* Sets a field of the sample and expects MALFORMED with an error message. */
static void expect_malformed(size_t offset, const unsigned char *value, size_t value_length)
{
    unsigned char bytes[FRAME_HEADER_MAX_SIZE];
    size_t size = sample(bytes);
    memcpy(bytes + offset, value, value_length);
    const char *error;
    assert_int_equal(parse(bytes, size, &error), FRAME_MALFORMED);
    assert_non_null(error);
    assert_true(strlen(error) > 0);
}

static void test_malformed_fields(void **state)
{
    expect_malformed(4, (const unsigned char *)"\x02", 1);        /* version 2 */
    expect_malformed(4, (const unsigned char *)"\x00", 1);        /* version 0 */
    expect_malformed(5, (const unsigned char *)"\x00", 1);        /* kind 0 */
    expect_malformed(5, (const unsigned char *)"\x06", 1);        /* kind 6 */
    expect_malformed(6, (const unsigned char *)"\x23\x00", 2);    /* size 35 < fixed */
    expect_malformed(6, (const unsigned char *)"\x01\x10", 2);    /* size 4097 > max */
    expect_malformed(20, (const unsigned char *)"\0\0\0\0", 4);   /* chunk count 0 */
    expect_malformed(16, (const unsigned char *)"\x03\0\0\0", 4); /* index 3 of 3 */
    expect_malformed(34, (const unsigned char *)"\x01", 1);       /* reserved */
    expect_malformed(35, (const unsigned char *)"\x80", 1);       /* reserved, high byte */
    expect_malformed(32, (const unsigned char *)"\x00", 1);       /* sender length 0 */
    expect_malformed(32, (const unsigned char *)"\x81", 1);       /* sender length 129 */
    expect_malformed(32, (const unsigned char *)"\x06", 1);       /* sender runs into recipient */
    expect_malformed(33, (const unsigned char *)"\x02", 1);       /* two recipients, one present */
    expect_malformed(33, (const unsigned char *)"\x00", 1);       /* size says more than contents */
    expect_malformed(39, (const unsigned char *)"\x05", 1);       /* recipient overruns */
    expect_malformed(39, (const unsigned char *)"\x00", 1);       /* recipient length 0 */
    expect_malformed(39, (const unsigned char *)"\x02", 1);       /* size says more than contents */
}

static void test_size_with_room_to_spare_is_malformed(void **state)
{
    /* A declared size larger than sender + recipients, with the bytes present. */
    unsigned char bytes[FRAME_HEADER_MAX_SIZE] = {0};
    size_t size = sample(bytes);
    bytes[6] = (unsigned char)(size + 1);
    const char *error;
    assert_int_equal(parse(bytes, size + 1, &error), FRAME_MALFORMED);
    assert_non_null(error);
}

static void test_id_lengths_at_the_limits(void **state)
{
    char id[FRAME_ID_MAX_LENGTH + 1];
    memset(id, 'x', sizeof id);
    unsigned char bytes[FRAME_HEADER_MAX_SIZE];
    struct frame_id longest = {id, FRAME_ID_MAX_LENGTH};
    size_t size = frame_header_write(bytes, sizeof bytes, 1, 0, 0, 1, 0, longest, &longest, 1);
    assert_int_equal(size, FRAME_HEADER_FIXED_SIZE + 128 + 1 + 128);
    const char *error;
    assert_int_equal(parse(bytes, size, &error), FRAME_OK);

    struct frame_id too_long = {id, FRAME_ID_MAX_LENGTH + 1};
    struct frame_id empty = {id, 0};
    assert_int_equal(frame_header_write(bytes, sizeof bytes, 1, 0, 0, 1, 0, too_long, NULL, 0), 0);
    assert_int_equal(frame_header_write(bytes, sizeof bytes, 1, 0, 0, 1, 0, empty, NULL, 0), 0);
    assert_int_equal(frame_header_write(bytes, sizeof bytes, 1, 0, 0, 1, 0, longest, &empty, 1), 0);
    assert_int_equal(frame_header_write(bytes, sizeof bytes, 1, 0, 1, 1, 0, longest, NULL, 0), 0);
    assert_int_equal(frame_header_write(bytes, sizeof bytes, 1, 0, 0, 0, 0, longest, NULL, 0), 0);

    /* 255 recipients of 128 bytes would pass 4096: refused. */
    struct frame_id many[FRAME_MAX_RECIPIENTS];
    for (size_t i = 0; i < FRAME_MAX_RECIPIENTS; i++)
        many[i] = longest;
    assert_int_equal(
        frame_header_write(bytes, sizeof bytes, 1, 0, 0, 1, 0, longest, many, FRAME_MAX_RECIPIENTS),
        0);
    /* 30 of them fit (36 + 128 + 30 * 129 = 4034). */
    size = frame_header_write(bytes, sizeof bytes, 1, 0, 0, 1, 0, longest, many, 30);
    assert_int_equal(size, 4034);
    assert_int_equal(parse(bytes, size, &error), FRAME_OK);
}

int run_frame_header_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_vector_examples),
        cmocka_unit_test(test_write_vector_examples),
        cmocka_unit_test(test_every_truncation_needs_more),
        cmocka_unit_test(test_not_ours),
        cmocka_unit_test(test_malformed_fields),
        cmocka_unit_test(test_size_with_room_to_spare_is_malformed),
        cmocka_unit_test(test_id_lengths_at_the_limits),
    };
    return UNIT_RUN_GROUP("frame_header", tests, NULL, NULL, test_count);
}
