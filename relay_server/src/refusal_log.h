/* refusal_log.h — logging refusals (handshakes over a limit, unauthorized or malformed requests)
 * without letting a flood write a line per attempt: the first refusal of an address (IPv6: its
 * /64) in an interval is logged at once, the rest are counted and summarised in one line per
 * address at the end of the interval (or when the relay stops). */
#ifndef REFUSAL_LOG_H
#define REFUSAL_LOG_H

#include <stddef.h>

#define REFUSAL_LOG_INTERVAL_SECONDS 10.0

struct refusal_log;

/* At most `max_addresses` addresses are tracked; refusals from others go to one shared line. */
struct refusal_log *refusal_log_create(size_t max_addresses);
void refusal_log_destroy(struct refusal_log *log);

/* One refusal of `address`; `what` names it (a program constant such as "upgrade_refused"),
 * `status` is the HTTP status or close code (0 if none). */
void refusal_log_note(struct refusal_log *log, const char *address, const char *what, int status,
                      double now);

/* Writes the summary of every address whose interval has ended (all of them with `all`). */
void refusal_log_flush(struct refusal_log *log, double now, int all);

size_t refusal_log_addresses(const struct refusal_log *log);

#endif
