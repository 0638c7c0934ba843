/* test_log.c — the event logger: the exact text line, escaping of values that could break a
 * line or fake a field, level filtering, and JSON lines that parse back (with jansson) to the
 * values that were logged. The logger writes into a memory stream here. */
#include <jansson.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "unit.h"

static FILE *stream;
static char *output;
static size_t output_size;

static int start_capture(void **state)
{
    output = NULL;
    output_size = 0;
    stream = open_memstream(&output, &output_size);
    return stream ? 0 : -1;
}

static int stop_capture(void **state)
{
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_INFO, NULL);
    fclose(stream);
    free(output);
    return 0;
}

/* A fresh stream for the next case of a table-driven test, with the same settings. */
static void restart_capture(enum log_format format, enum log_level level)
{
    fclose(stream);
    free(output);
    assert_int_equal(start_capture(NULL), 0);
    log_init(format, level, stream);
}

/* What the logger wrote so far. */
static const char *captured(void)
{
    fflush(stream);
    return output ? output : "";
}

static size_t count_char(const char *text, char wanted)
{
    size_t count = 0;
    for (; *text; text++)
        count += *text == wanted;
    return count;
}

/* Checks that the output is exactly one line and returns it without the timestamp and "LEVEL "
 * (text format), after checking that the timestamp is UTC now to the millisecond. */
static const char *text_after_time(const char *level)
{
    const char *line = captured();
    assert_int_equal(count_char(line, '\n'), 1);
    assert_int_equal(line[strlen(line) - 1], '\n');

    regex_t pattern;
    assert_int_equal(regcomp(&pattern,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z ",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    int matched = regexec(&pattern, line, 0, NULL, 0);
    regfree(&pattern);
    if (matched != 0)
        fail_msg("no RFC 3339 UTC timestamp at the start of: %s", line);

    struct tm when = {0};
    assert_non_null(strptime(line, "%Y-%m-%dT%H:%M:%S", &when));
    double skew = difftime(timegm(&when), time(NULL));
    if (skew < -5 || skew > 5)
        fail_msg("timestamp %.24s is %.0f s away from now", line, skew);

    const char *rest = line + 25;
    assert_memory_equal(rest, level, strlen(level));
    assert_int_equal(rest[strlen(level)], ' ');
    return rest + strlen(level) + 1;
}

static void test_text_line_has_the_documented_shape(void **state)
{
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_INFO, stream);
    log_event(LOG_LEVEL_INFO, "room_created", "room", "K7QX2M", "user", "alice", "peer",
              "127.0.0.1", NULL);
    assert_string_equal(text_after_time("INFO"),
                        "room_created room=K7QX2M user=alice peer=127.0.0.1\n");
}

static void test_text_levels_are_upper_case(void **state)
{
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_DEBUG, stream);
    log_event(LOG_LEVEL_ERROR, "listen_failed", "reason", "busy", NULL);
    assert_string_equal(text_after_time("ERROR"), "listen_failed reason=busy\n");
}

/* One value logged in text format, and the exact text that must follow "key=". */
struct escape_case {
    const char *value;
    const char *written;
};

static const struct escape_case text_escapes[] = {
    {"plain", "plain"},
    {"alice smith", "\"alice smith\""},
    {"say \"hi\"", "\"say \\\"hi\\\"\""},
    {"two\nlines", "\"two\\nlines\""},
    {"carriage\rreturn", "\"carriage\\rreturn\""},
    {"tab\there", "\"tab\\there\""},
    {"bell\a", "\"bell\\x07\""},
    {"escape\x1b[31m", "\"escape\\x1b[31m\""},
    {"delete\x7f", "\"delete\\x7f\""},
    {"back\\slash", "\"back\\\\slash\""},
    {"a=b", "\"a=b\""},
    {"", "\"\""},
    {"x peer=1.2.3.4", "\"x peer=1.2.3.4\""}, /* cannot pose as another field */
    {"J\xc3\xbcrgen", "J\xc3\xbcrgen"},       /* UTF-8 is kept as it is */
    {"\xe6\x97\xa5\xe6\x9c\xac", "\xe6\x97\xa5\xe6\x9c\xac"},
    {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"},
    {"bad\xff", "\"bad\\xff\""},                   /* not UTF-8: the byte is shown */
    {"\xc0\xaf", "\"\\xc0\\xaf\""},                /* overlong '/' */
    {"\xed\xa0\x80", "\"\\xed\\xa0\\x80\""},       /* a UTF-16 surrogate */
    {"cut\xe6\x97", "\"cut\\xe6\\x97\""},          /* truncated sequence */
    {"next\xc2\x85line", "\"next\\u0085line\""},   /* NEL, a line break to some tools */
    {"sep\xe2\x80\xa8here", "\"sep\\u2028here\""}, /* U+2028 LINE SEPARATOR */
};

static void test_text_values_are_quoted_and_escaped(void **state)
{
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_INFO, stream);
    for (size_t i = 0; i < sizeof text_escapes / sizeof text_escapes[0]; i++) {
        restart_capture(LOG_FORMAT_TEXT, LOG_LEVEL_INFO);
        log_event(LOG_LEVEL_INFO, "joined", "name", text_escapes[i].value, NULL);
        char expected[128];
        snprintf(expected, sizeof expected, "joined name=%s\n", text_escapes[i].written);
        const char *rest = text_after_time("INFO");
        if (strcmp(rest, expected) != 0)
            fail_msg("case %zu: expected %s got      %s", i, expected, rest);
    }
}

static void test_levels_below_the_threshold_are_dropped(void **state)
{
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_WARN, stream);
    assert_false(log_enabled(LOG_LEVEL_DEBUG));
    assert_false(log_enabled(LOG_LEVEL_INFO));
    assert_true(log_enabled(LOG_LEVEL_WARN));
    assert_true(log_enabled(LOG_LEVEL_ERROR));
    log_event(LOG_LEVEL_DEBUG, "dropped_debug", NULL);
    log_event(LOG_LEVEL_INFO, "dropped_info", NULL);
    log_fields(LOG_LEVEL_INFO, "dropped_fields", LOG_INT("n", 1));
    log_event(LOG_LEVEL_WARN, "kept_warn", NULL);
    log_event(LOG_LEVEL_ERROR, "kept_error", NULL);
    const char *text = captured();
    assert_null(strstr(text, "dropped"));
    assert_non_null(strstr(text, " WARN kept_warn\n"));
    assert_non_null(strstr(text, " ERROR kept_error\n"));
    assert_int_equal(count_char(text, '\n'), 2);

    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_DEBUG, stream);
    log_event(LOG_LEVEL_DEBUG, "kept_debug", NULL);
    assert_non_null(strstr(captured(), " DEBUG kept_debug\n"));
}

static void test_null_values_are_left_out(void **state)
{
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_INFO, stream);
    log_event(LOG_LEVEL_INFO, "connected", "user", NULL, "peer", "::1", NULL);
    assert_string_equal(text_after_time("INFO"), "connected peer=::1\n");
}

static void test_text_numbers(void **state)
{
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_INFO, stream);
    log_fields(LOG_LEVEL_INFO, "connection_closed", LOG_TEXT("peer", "10.0.0.1"),
               LOG_INT("code", 1009), LOG_INT("bytes_in", 17179869184LL), LOG_INT("delta", -3),
               LOG_TEXT("user", NULL), LOG_TEXT("reason", "too big"));
    assert_string_equal(text_after_time("INFO"),
                        "connection_closed peer=10.0.0.1 code=1009 bytes_in=17179869184 "
                        "delta=-3 reason=\"too big\"\n");
}

static void test_a_long_value_stays_on_one_line(void **state)
{
    char value[20000];
    memset(value, 'v', sizeof value - 1);
    value[sizeof value - 1] = '\0';
    value[5000] = '\n';
    log_init(LOG_FORMAT_TEXT, LOG_LEVEL_INFO, stream);
    log_event(LOG_LEVEL_INFO, "long", "value", value, NULL);
    const char *rest = text_after_time("INFO");
    assert_int_equal(strlen(rest), strlen("long value=\"\"\n") + sizeof value - 1 + 1);
}

/* Parses the single JSON line the logger wrote, checking the fields every line has. */
static json_t *json_line(const char *level, const char *event)
{
    const char *line = captured();
    assert_int_equal(count_char(line, '\n'), 1);
    assert_int_equal(line[strlen(line) - 1], '\n');
    json_error_t error;
    json_t *object = json_loads(line, 0, &error);
    if (!object)
        fail_msg("not JSON (%s): %s", error.text, line);
    assert_true(json_is_object(object));
    assert_string_equal(json_string_value(json_object_get(object, "level")), level);
    assert_string_equal(json_string_value(json_object_get(object, "event")), event);

    const char *time_text = json_string_value(json_object_get(object, "time"));
    assert_non_null(time_text);
    regex_t pattern;
    assert_int_equal(regcomp(&pattern,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    int matched = regexec(&pattern, time_text, 0, NULL, 0);
    regfree(&pattern);
    if (matched != 0)
        fail_msg("bad time %s", time_text);
    return object;
}

static void test_json_line_has_the_documented_fields(void **state)
{
    log_init(LOG_FORMAT_JSON, LOG_LEVEL_INFO, stream);
    log_event(LOG_LEVEL_INFO, "room_created", "room", "K7QX2M", "user", "alice", "peer",
              "127.0.0.1", NULL);
    json_t *object = json_line("info", "room_created");
    assert_string_equal(json_string_value(json_object_get(object, "room")), "K7QX2M");
    assert_string_equal(json_string_value(json_object_get(object, "user")), "alice");
    assert_string_equal(json_string_value(json_object_get(object, "peer")), "127.0.0.1");
    assert_int_equal(json_object_size(object), 6);
    /* Fixed fields come first, so lines read well in a terminal too. */
    assert_non_null(strstr(captured(), "{\"time\":\""));
    assert_non_null(strstr(captured(), "\"level\":\"info\",\"event\":\"room_created\""));
    json_decref(object);
}

static void test_json_values_round_trip(void **state)
{
    /* Every valid UTF-8 value must come back exactly as logged. */
    log_init(LOG_FORMAT_JSON, LOG_LEVEL_DEBUG, stream);
    for (size_t i = 0; i < sizeof text_escapes / sizeof text_escapes[0]; i++) {
        const char *value = text_escapes[i].value;
        json_t *probe = json_string(value); /* jansson's UTF-8 check; bad ones are below */
        if (!probe)
            continue;
        json_decref(probe);
        restart_capture(LOG_FORMAT_JSON, LOG_LEVEL_DEBUG);
        log_event(LOG_LEVEL_DEBUG, "joined", "name", value, NULL);
        json_t *object = json_line("debug", "joined");
        const char *back = json_string_value(json_object_get(object, "name"));
        if (!back || strcmp(back, value) != 0)
            fail_msg("case %zu did not round-trip: %s", i, captured());
        json_decref(object);
    }
}

static void test_json_replaces_bytes_that_are_not_utf8(void **state)
{
    log_init(LOG_FORMAT_JSON, LOG_LEVEL_INFO, stream);
    log_event(LOG_LEVEL_WARN, "odd_name", "name",
              "ab\xff"
              "c\xc0\xaf",
              NULL);
    json_t *object = json_line("warn", "odd_name");
    assert_string_equal(json_string_value(json_object_get(object, "name")),
                        "ab\xef\xbf\xbd"
                        "c\xef\xbf\xbd\xef\xbf\xbd");
    json_decref(object);
}

static void test_json_numbers_are_numbers(void **state)
{
    log_init(LOG_FORMAT_JSON, LOG_LEVEL_INFO, stream);
    log_fields(LOG_LEVEL_ERROR, "connection_closed", LOG_TEXT("peer", "::1"), LOG_INT("code", 1009),
               LOG_INT("bytes_in", 17179869184LL), LOG_INT("delta", -3), LOG_TEXT("user", NULL));
    json_t *object = json_line("error", "connection_closed");
    assert_true(json_is_integer(json_object_get(object, "code")));
    assert_int_equal(json_integer_value(json_object_get(object, "code")), 1009);
    assert_int_equal(json_integer_value(json_object_get(object, "bytes_in")), 17179869184LL);
    assert_int_equal(json_integer_value(json_object_get(object, "delta")), -3);
    assert_null(json_object_get(object, "user"));
    assert_string_equal(json_string_value(json_object_get(object, "peer")), "::1");
    json_decref(object);
}

static void test_json_fields_cannot_replace_the_fixed_ones(void **state)
{
    log_init(LOG_FORMAT_JSON, LOG_LEVEL_INFO, stream);
    log_event(LOG_LEVEL_INFO, "real_event", "event", "fake", "level", "error", NULL);
    json_t *object = json_line("info", "real_event");
    json_decref(object);
}

static void test_level_names(void **state)
{
    assert_string_equal(log_level_name(LOG_LEVEL_DEBUG), "debug");
    assert_string_equal(log_level_name(LOG_LEVEL_INFO), "info");
    assert_string_equal(log_level_name(LOG_LEVEL_WARN), "warn");
    assert_string_equal(log_level_name(LOG_LEVEL_ERROR), "error");
}

#define CAPTURED(test) cmocka_unit_test_setup_teardown(test, start_capture, stop_capture)

int run_log_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        CAPTURED(test_text_line_has_the_documented_shape),
        CAPTURED(test_text_levels_are_upper_case),
        CAPTURED(test_text_values_are_quoted_and_escaped),
        CAPTURED(test_levels_below_the_threshold_are_dropped),
        CAPTURED(test_null_values_are_left_out),
        CAPTURED(test_text_numbers),
        CAPTURED(test_a_long_value_stays_on_one_line),
        CAPTURED(test_json_line_has_the_documented_fields),
        CAPTURED(test_json_values_round_trip),
        CAPTURED(test_json_replaces_bytes_that_are_not_utf8),
        CAPTURED(test_json_numbers_are_numbers),
        CAPTURED(test_json_fields_cannot_replace_the_fixed_ones),
        cmocka_unit_test(test_level_names),
    };
    return UNIT_RUN_GROUP("log", tests, NULL, NULL, test_count);
}
