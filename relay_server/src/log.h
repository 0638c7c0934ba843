/* log.h — one line per connection or room event, as text (logfmt-style) or JSON. The relay's
 * equivalent of `wrangler tail`: an operator greps or ships these lines, so each call writes
 * exactly one whole line and a value from the network can never break a line or fake a field. */
#ifndef RELAY_LOG_H
#define RELAY_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

/* Chooses the format, the lowest level written, and the stream (NULL means stderr). Until it
 * is called the logger writes text at info level to stderr. */
void log_init(enum log_format format, enum log_level level, FILE *out);

/* True if a line at `level` would be written: lets a caller skip preparing expensive values. */
bool log_enabled(enum log_level level);

/* "debug", "info", "warn" or "error". */
const char *log_level_name(enum log_level level);

/* Writes one event with string fields given as key, value pairs and terminated by NULL:
 *   log_event(LOG_LEVEL_INFO, "room_created", "room", code, "peer", address, NULL);
 * text:  2026-11-27T03:19:55.123Z INFO room_created room=K7QX2M peer=127.0.0.1
 * json:  {"time":"2026-11-27T03:19:55.123Z","level":"info","event":"room_created",...}
 * A pair whose value is NULL is left out, so optional fields need no branches at the call.
 * Keys are program constants; "time", "level" and "event" are reserved. Never pass a payload
 * or a secret (tokens) as a value. */
void log_event(enum log_level level, const char *event, ...);

/* For events with numbers: typed fields, so that JSON output carries real numbers.
 *   log_fields(LOG_LEVEL_INFO, "connection_closed",
 *              LOG_TEXT("peer", address), LOG_INT("code", 1009), LOG_INT("bytes_in", n));
 * A LOG_TEXT field whose value is NULL is left out, as in log_event. */
struct log_field {
    const char *key;
    const char *text; /* used when !is_number */
    int64_t number;
    bool is_number;
};
#define LOG_TEXT(field_key, value) ((struct log_field){.key = (field_key), .text = (value)})
#define LOG_INT(field_key, value)                                                                  \
    ((struct log_field){.key = (field_key), .number = (int64_t)(value), .is_number = true})
#define log_fields(level, event, ...)                                                              \
    log_field_array((level), (event), (const struct log_field[]){__VA_ARGS__},                     \
                    sizeof((const struct log_field[]){__VA_ARGS__}) / sizeof(struct log_field))

void log_field_array(enum log_level level, const char *event, const struct log_field *fields,
                     size_t count);

#endif
