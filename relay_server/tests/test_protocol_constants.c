/* test_protocol_constants.c — protocol/'s constants (the ones the relay and the extension both
 * compile against) against tests/vectors/protocol.json, read here with jansson, so a number
 * changed on one side only fails the build's tests instead of a conversation between peers. */
#include <string.h>

#include "core_harness.h"
#include "frame_header.h"
#include "protocol_constants.h"
#include "unit.h"

static json_int_t integer(json_t *object, const char *name)
{
    json_t *value = json_object_get(object, name);
    if (!json_is_integer(value))
        fail_msg("expected an integer field '%s'", name);
    return json_integer_value(value);
}

struct named_number {
    const char *name;
    json_int_t value;
};

/* `object` has exactly these names, each with its number. */
static void assert_names_and_numbers(json_t *object, const struct named_number *ours, size_t count)
{
    assert_int_equal(json_object_size(object), count);
    for (size_t i = 0; i < count; i++)
        assert_int_equal(integer(object, ours[i].name), ours[i].value);
}

static void test_room_codes_ids_and_chunks(void **state)
{
    json_t *vectors = harness_protocol_vectors();
    assert_int_equal(integer(vectors, "protocol_version"), PROTOCOL_VERSION);
    assert_string_equal(json_text(vectors, "room_code_alphabet"), ROOM_CODE_ALPHABET);
    assert_int_equal(integer(vectors, "room_code_length"), ROOM_CODE_LENGTH);
    assert_int_equal(integer(vectors, "user_id_max_bytes"), USER_ID_MAX_BYTES);
    assert_int_equal(integer(vectors, "chunk_size"), PROTOCOL_CHUNK_SIZE);
    json_decref(vectors);
}

static void test_close_codes(void **state)
{
    json_t *vectors = harness_protocol_vectors();
    const struct named_number ours[] = {
        {"normal", CLOSE_NORMAL},
        {"going_away", CLOSE_GOING_AWAY},
        {"invalid_utf8", CLOSE_INVALID_UTF8},
        {"message_too_big", CLOSE_MESSAGE_TOO_BIG},
        {"slow_receiver", CLOSE_SLOW_RECEIVER},
    };
    assert_names_and_numbers(json_object_get(vectors, "close_codes"), ours,
                             sizeof ours / sizeof ours[0]);
    json_decref(vectors);
}

static void test_features_in_order(void **state)
{
    json_t *vectors = harness_protocol_vectors();
    json_t *features = json_object_get(vectors, "features");
    const char *const ours[] = {FEATURE_FRAME_HEADER, FEATURE_DIRECTED, FEATURE_RESUME,
                                FEATURE_FLOW_CONTROL, FEATURE_HOST_ID,  FEATURE_MEMBER_FEATURES};
    assert_int_equal(json_array_size(features), sizeof ours / sizeof ours[0]);
    for (size_t i = 0; i < sizeof ours / sizeof ours[0]; i++)
        assert_string_equal(json_string_value(json_array_get(features, i)), ours[i]);
    json_decref(vectors);
}

static void test_frame_header_layout_and_kinds(void **state)
{
    json_t *vectors = harness_protocol_vectors();
    json_t *header = json_object_get(vectors, "frame_header");
    unsigned char magic[FRAME_MAGIC_SIZE + 1];
    assert_int_equal(harness_unhex(json_text(header, "magic_hex"), magic, sizeof magic),
                     FRAME_MAGIC_SIZE);
    assert_memory_equal(magic, FRAME_MAGIC, FRAME_MAGIC_SIZE);
    assert_int_equal(strlen(FRAME_MAGIC), FRAME_MAGIC_SIZE);
    assert_int_equal(integer(header, "version"), FRAME_HEADER_VERSION);
    assert_int_equal(integer(header, "fixed_size"), FRAME_HEADER_FIXED_SIZE);
    assert_int_equal(integer(header, "max_size"), FRAME_HEADER_MAX_SIZE);
    assert_int_equal(integer(header, "max_id_length"), FRAME_ID_MAX_LENGTH);
    assert_int_equal(integer(header, "max_recipients"), FRAME_MAX_RECIPIENTS);
    const struct named_number kinds[] = {
        {"weights", FRAME_KIND_WEIGHTS},
        {"global_model", FRAME_KIND_GLOBAL_MODEL},
        {"training_image", FRAME_KIND_TRAINING_IMAGE},
        {"training_mask", FRAME_KIND_TRAINING_MASK},
        {"other", FRAME_KIND_OTHER},
    };
    assert_names_and_numbers(json_object_get(header, "kinds"), kinds,
                             sizeof kinds / sizeof kinds[0]);
    json_decref(vectors);
}

int run_protocol_constants_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_room_codes_ids_and_chunks),
        cmocka_unit_test(test_close_codes),
        cmocka_unit_test(test_features_in_order),
        cmocka_unit_test(test_frame_header_layout_and_kinds),
    };
    return UNIT_RUN_GROUP("protocol_constants", tests, NULL, NULL, test_count);
}
