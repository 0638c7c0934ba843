/* transport_service.h — the one libwebsockets service thread per process: what the Python face
 * (transport_connection.c) asks of it. */
#ifndef TRANSPORT_SERVICE_H
#define TRANSPORT_SERVICE_H

#include <stddef.h>

#include "transport_core.h"

/* The engine called `name` (transport_engine.h), or NULL when there is none of that name. */
const struct transport_engine *service_engine_named(const char *name);

/* libwebsockets' log-level bitmask (0: silent), applied when the service thread starts. */
void service_set_log_mask(int mask);

/* Starts the service thread if it is not running. Returns 0, or -1 with `error` filled. */
int service_start(char *error, size_t error_size);

/* Asks the service thread to look at `conn` (open it, write, close, resume reading).
 * Thread-safe; never blocks on the network. */
void service_notify(struct client_connection *conn);

/* Closes every connection (1001), waits up to `grace_seconds` for the closing handshakes, then
 * stops and joins the service thread. After it, service_start() fails: the process is exiting. */
void service_shutdown(double grace_seconds);

/* Whether service_shutdown() has been called (the interpreter is exiting). */
int service_exiting(void);

#endif
