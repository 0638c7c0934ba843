/* lws_server.h — runs the relay on libwebsockets until SIGTERM or SIGINT. */
#ifndef LWS_SERVER_H
#define LWS_SERVER_H

#include <stddef.h>

#include "config.h"

/* Listens, serves, and on a stop signal closes every connection with 1001; returns the process
 * exit status (0 after a clean stop). */
int lws_server_run(const struct relay_config *config, const unsigned char *secret,
                   size_t secret_length);

#endif
