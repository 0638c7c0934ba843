/* log.c — writes one event per line, as logfmt-style text or as a JSON object (jansson).
 * Values may come from the network (display names, user ids), so every value is escaped and
 * the whole line is assembled in memory first and handed to the stream in one write. */
#include "log.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "utf8.h"

static struct {
    enum log_format format;
    enum log_level threshold;
    FILE *out; /* NULL: stderr, looked up at write time so it works before log_init */
} logger = {LOG_FORMAT_TEXT, LOG_LEVEL_INFO, NULL};

void log_init(enum log_format format, enum log_level level, FILE *out)
{
    logger.format = format;
    logger.threshold = level;
    logger.out = out;
}

bool log_enabled(enum log_level level)
{
    return level >= logger.threshold;
}

const char *log_level_name(enum log_level level)
{
    switch (level) {
    case LOG_LEVEL_DEBUG:
        return "debug";
    case LOG_LEVEL_INFO:
        return "info";
    case LOG_LEVEL_WARN:
        return "warn";
    case LOG_LEVEL_ERROR:
        return "error";
    }
    return "unknown";
}

static const char *level_label(enum log_level level)
{
    switch (level) {
    case LOG_LEVEL_DEBUG:
        return "DEBUG";
    case LOG_LEVEL_INFO:
        return "INFO";
    case LOG_LEVEL_WARN:
        return "WARN";
    case LOG_LEVEL_ERROR:
        return "ERROR";
    }
    return "UNKNOWN";
}

/* RFC 3339 in UTC with milliseconds: sortable, and unambiguous across machines. */
static void format_time(char *out, size_t size)
{
    struct timespec now;
    struct tm utc;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &utc);
    size_t length = strftime(out, size, "%Y-%m-%dT%H:%M:%S", &utc);
    snprintf(out + length, size - length, ".%03ldZ", now.tv_nsec / 1000000L);
}

/* Characters some tools treat as line breaks or controls even though they are not ASCII
 * newlines: C1 controls (NEL is U+0085) and the Unicode line and paragraph separators. */
static bool is_unicode_control(uint32_t code_point)
{
    return (code_point >= 0x80 && code_point <= 0x9F) || code_point == 0x2028 ||
           code_point == 0x2029;
}

/* A text value is written bare only if a reader splitting on spaces and '=' gets it back
 * unchanged; anything else is quoted and escaped. */
static bool needs_quotes(const char *value)
{
    if (value[0] == '\0')
        return true;
    const unsigned char *end = (const unsigned char *)value + strlen(value);
    for (const unsigned char *p = (const unsigned char *)value; *p;) {
        uint32_t code_point;
        size_t length = utf8_decode_one(p, (size_t)(end - p), &code_point);
        if (length == 0 || code_point <= 0x20 || code_point == 0x7F || code_point == '"' ||
            code_point == '=' || code_point == '\\' || is_unicode_control(code_point))
            return true;
        p += length;
    }
    return false;
}

static void write_text_value(FILE *line, const char *value)
{
    if (!needs_quotes(value)) {
        fputs(value, line);
        return;
    }
    fputc('"', line);
    const unsigned char *end = (const unsigned char *)value + strlen(value);
    for (const unsigned char *p = (const unsigned char *)value; *p;) {
        uint32_t code_point;
        size_t length = utf8_decode_one(p, (size_t)(end - p), &code_point);
        if (length == 0) {
            fprintf(line, "\\x%02x", *p); /* not UTF-8: show the byte, keep the line valid */
            p++;
            continue;
        }
        if (code_point == '"' || code_point == '\\')
            fprintf(line, "\\%c", (char)code_point);
        else if (code_point == '\n')
            fputs("\\n", line);
        else if (code_point == '\r')
            fputs("\\r", line);
        else if (code_point == '\t')
            fputs("\\t", line);
        else if (code_point < 0x20 || code_point == 0x7F)
            fprintf(line, "\\x%02x", (unsigned)code_point);
        else if (is_unicode_control(code_point))
            fprintf(line, "\\u%04x", (unsigned)code_point);
        else
            fwrite(p, 1, length, line);
        p += length;
    }
    fputc('"', line);
}

/* jansson refuses strings that are not UTF-8; replace each bad byte with U+FFFD so that the
 * event is still logged and the output stays valid JSON. */
static json_t *json_string_lossy(const char *value)
{
    json_t *string = json_string(value);
    if (string)
        return string;
    size_t size = strlen(value);
    char *repaired = malloc(size * 3 + 1);
    if (!repaired)
        return NULL;
    char *out = repaired;
    const unsigned char *end = (const unsigned char *)value + strlen(value);
    for (const unsigned char *p = (const unsigned char *)value; *p;) {
        uint32_t code_point;
        size_t length = utf8_decode_one(p, (size_t)(end - p), &code_point);
        if (length == 0) {
            memcpy(out, "\xEF\xBF\xBD", 3);
            out += 3;
            p++;
        } else {
            memcpy(out, p, length);
            out += length;
            p += length;
        }
    }
    *out = '\0';
    string = json_string(repaired);
    free(repaired);
    return string;
}

/* One line under construction: text is written straight into a memory stream; JSON is
 * collected in an object and serialized into the same stream at the end. */
struct log_line {
    FILE *stream;
    char *buffer;
    size_t size;
    json_t *object;
};

static bool line_begin(struct log_line *line, enum log_level level, const char *event)
{
    char time_text[40];
    format_time(time_text, sizeof time_text);
    line->buffer = NULL;
    line->size = 0;
    line->object = NULL;
    line->stream = open_memstream(&line->buffer, &line->size);
    if (!line->stream)
        return false;
    if (logger.format == LOG_FORMAT_JSON) {
        line->object = json_pack("{s:s, s:s, s:s}", "time", time_text, "level",
                                 log_level_name(level), "event", event);
        if (!line->object) {
            fclose(line->stream);
            free(line->buffer);
            return false;
        }
    } else {
        fprintf(line->stream, "%s %s %s", time_text, level_label(level), event);
    }
    return true;
}

static void line_add_text(struct log_line *line, const char *key, const char *value)
{
    if (!value)
        return;
    if (line->object) {
        /* The first value for a key wins, so a field cannot overwrite time, level or event. */
        if (!json_object_get(line->object, key))
            json_object_set_new(line->object, key, json_string_lossy(value));
    } else {
        fprintf(line->stream, " %s=", key);
        write_text_value(line->stream, value);
    }
}

static void line_add_number(struct log_line *line, const char *key, int64_t value)
{
    if (line->object) {
        if (!json_object_get(line->object, key))
            json_object_set_new(line->object, key, json_integer((json_int_t)value));
    } else {
        fprintf(line->stream, " %s=%lld", key, (long long)value);
    }
}

static void line_finish(struct log_line *line)
{
    if (line->object) {
        json_dumpf(line->object, line->stream, JSON_COMPACT);
        json_decref(line->object);
    }
    fputc('\n', line->stream);
    bool complete = !ferror(line->stream);
    fclose(line->stream);
    if (complete) {
        FILE *out = logger.out ? logger.out : stderr;
        fwrite(line->buffer, 1, line->size, out);
        fflush(out);
    }
    free(line->buffer);
}

void log_event(enum log_level level, const char *event, ...)
{
    struct log_line line;
    if (!log_enabled(level) || !line_begin(&line, level, event))
        return;
    va_list pairs;
    va_start(pairs, event);
    for (const char *key; (key = va_arg(pairs, const char *)) != NULL;)
        line_add_text(&line, key, va_arg(pairs, const char *));
    va_end(pairs);
    line_finish(&line);
}

void log_field_array(enum log_level level, const char *event, const struct log_field *fields,
                     size_t count)
{
    struct log_line line;
    if (!log_enabled(level) || !line_begin(&line, level, event))
        return;
    for (size_t i = 0; i < count; i++) {
        if (fields[i].is_number)
            line_add_number(&line, fields[i].key, fields[i].number);
        else
            line_add_text(&line, fields[i].key, fields[i].text);
    }
    line_finish(&line);
}
