/* test_refusal_log.c — what the log says about rooms and refusals: a room appears as a keyed
 * tag, never its code; a flood of refusals from one address becomes one line at once and one
 * summary per interval. The logger writes into a memory stream here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_harness.h"
#include "log.h"
#include "log_tag.h"
#include "refusal_log.h"
#include "unit.h"

static FILE *stream;
static char *output;
static size_t output_size;

static int start_capture(void **state)
{
    output = NULL;
    output_size = 0;
    stream = open_memstream(&output, &output_size);
    if (!stream)
        return -1;
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_DEBUG, stream);
    return 0;
}

static int stop_capture(void **state)
{
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_INFO, NULL);
    fclose(stream);
    free(output);
    return 0;
}

/* Lines written so far that contain `needle`. */
static int lines_with(const char *needle)
{
    fflush(stream);
    int count = 0;
    for (const char *line = output; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t length = end ? (size_t)(end - line) : strlen(line);
        char copy[1024];
        snprintf(copy, sizeof copy, "%.*s", (int)length, line);
        if (strstr(copy, needle))
            count++;
        line = end ? end + 1 : line + length;
    }
    return count;
}

static void test_flood_is_one_line_then_one_summary_per_interval(void **state)
{
    struct refusal_log *log = refusal_log_create(100);
    for (int i = 0; i < 200; i++)
        refusal_log_note(log, "192.0.2.9", "upgrade_refused", 401, 100.0 + i * 0.01);
    assert_int_equal(lines_with("peer=192.0.2.9"), 1);
    assert_int_equal(lines_with("upgrade_refused peer=192.0.2.9 status=401"), 1);
    refusal_log_flush(log, 105, 0); /* the interval has not ended */
    assert_int_equal(lines_with("peer=192.0.2.9"), 1);
    refusal_log_flush(log, 110, 0);
    assert_int_equal(lines_with("refusals peer=192.0.2.9 count=199 last=upgrade_refused"), 1);
    /* Still refused in the next interval: counted, summarised at its end. */
    for (int i = 0; i < 50; i++)
        refusal_log_note(log, "192.0.2.9", "http_rejected", 401, 111);
    refusal_log_flush(log, 120, 0);
    assert_int_equal(lines_with("refusals peer=192.0.2.9 count=50 last=http_rejected"), 1);
    /* A quiet interval: the address is forgotten; its next refusal is logged at once. */
    refusal_log_flush(log, 130, 0);
    assert_int_equal(refusal_log_addresses(log), 0);
    refusal_log_note(log, "192.0.2.9", "upgrade_refused", 403, 131);
    assert_int_equal(lines_with("upgrade_refused peer=192.0.2.9 status=403"), 1);
    assert_int_equal(lines_with("peer=192.0.2.9"), 4);
    refusal_log_destroy(log);
}

static void test_addresses_apart_and_ipv6_per_64(void **state)
{
    struct refusal_log *log = refusal_log_create(2);
    refusal_log_note(log, "2001:db8:1:2::1", "upgrade_refused", 404, 0);
    refusal_log_note(log, "2001:db8:1:2::ffff", "upgrade_refused", 404, 0);
    refusal_log_note(log, "198.51.100.1", "upgrade_refused", 404, 0);
    assert_int_equal(lines_with("peer=2001:db8:1:2::"), 1);
    assert_int_equal(lines_with("peer=198.51.100.1 "), 1);
    /* Past the table's size, the rest share one line. */
    refusal_log_note(log, "198.51.100.2", "upgrade_refused", 404, 0);
    refusal_log_note(log, "198.51.100.3", "upgrade_refused", 404, 0);
    assert_int_equal(lines_with("peer=other"), 1);
    /* Stopping writes the pending summaries. */
    refusal_log_flush(log, 1, 1);
    assert_int_equal(lines_with("refusals peer=2001:db8:1:2:: count=1"), 1);
    assert_int_equal(lines_with("refusals peer=other count=1"), 1);
    assert_int_equal(refusal_log_addresses(log), 0);
    refusal_log_destroy(log);
}

static void test_log_tag_is_keyed_and_stable(void **state)
{
    unsigned char secret[32] = {1, 2, 3}, other[32] = {9};
    char tag[LOG_TAG_HEX_LENGTH + 1], again[LOG_TAG_HEX_LENGTH + 1],
        elsewhere[LOG_TAG_HEX_LENGTH + 1], next[LOG_TAG_HEX_LENGTH + 1];
    log_tag_make(secret, sizeof secret, "K7QX2M", tag);
    log_tag_make(secret, sizeof secret, "K7QX2M", again);
    log_tag_make(other, sizeof other, "K7QX2M", elsewhere);
    log_tag_make(secret, sizeof secret, "K7QX2N", next);
    assert_int_equal(strlen(tag), LOG_TAG_HEX_LENGTH);
    assert_int_equal(strspn(tag, "0123456789abcdef"), LOG_TAG_HEX_LENGTH);
    assert_string_equal(tag, again);
    assert_string_not_equal(tag, elsewhere);
    assert_string_not_equal(tag, next);
}

static void test_core_logs_room_tags_never_codes(void **state)
{
    struct harness h;
    harness_start(&h, NULL);
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_DEBUG, stream); /* harness_start logs errors only */
    harness_open(&h, 0, "10.0.0.1", false);
    harness_open(&h, 1, "10.0.0.2", false);
    harness_text(&h, 0,
                 "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"host\","
                 "\"features\":[\"resume\"]}}");
    json_t *created = json_payload(harness_expect(&h, 0, "room_created"));
    char code[ROOM_CODE_LENGTH + 1];
    snprintf(code, sizeof code, "%s", json_text(created, "room_code"));
    harness_join(&h, 1, code, "bob", "", false);
    harness_closed(&h, 0);
    char reserved[ROOM_CODE_LENGTH + 1];
    assert_null(relay_reserve_room(h.relay, "10.0.0.3", h.now, reserved));
    harness_tick(&h, 200);
    char tag[LOG_TAG_HEX_LENGTH + 1], needle[32];
    log_tag_make(h.secret, sizeof h.secret, code, tag);
    snprintf(needle, sizeof needle, "room=%s", tag);
    harness_stop(&h);
    /* created, joined, away, left (bob), deleted: each names the room by its tag. */
    assert_true(lines_with(needle) >= 4);
    assert_int_equal(lines_with(code), 0);
    assert_int_equal(lines_with(reserved), 0);
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_DEBUG, stream);
}

int run_refusal_log_tests(size_t *test_count)
{
#define CAPTURED(name) cmocka_unit_test_setup_teardown(name, start_capture, stop_capture)
    const struct CMUnitTest tests[] = {
        CAPTURED(test_flood_is_one_line_then_one_summary_per_interval),
        CAPTURED(test_addresses_apart_and_ipv6_per_64),
        CAPTURED(test_log_tag_is_keyed_and_stable),
        CAPTURED(test_core_logs_room_tags_never_codes),
    };
#undef CAPTURED
    return UNIT_RUN_GROUP("refusal_log", tests, NULL, NULL, test_count);
}
