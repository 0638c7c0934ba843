/* transport_engine.h — the small interface every WebSocket engine implements (like Redis's
 * ae_epoll.c/ae_kqueue.c behind ae.c): the service thread owns the lws context and the socket's
 * lifetime; an engine speaks WebSocket on it and feeds the connection core. */
#ifndef TRANSPORT_ENGINE_H
#define TRANSPORT_ENGINE_H

#include "transport_core.h"

struct transport_engine {
    const char *name; /* what Python passes as connect(..., engine=name) */
    int does_tls;     /* can run wss:// */
    int does_proxy;   /* can go through an HTTP CONNECT proxy */
    /* Sets up conn->engine_state and how lws opens the socket. 0, or -1 out of memory. */
    int (*attach)(struct client_connection *conn, struct lws_client_connect_info *info);
    /* Frees conn->engine_state (the socket is gone). */
    void (*free)(struct client_connection *conn);
    /* Every lws event of the socket but its end, which the service thread handles. Returns
     * what an lws callback does: -1 closes the socket. */
    int (*on_event)(struct client_connection *conn, struct lws *wsi,
                    enum lws_callback_reasons reason, void *in, size_t len);
};

/* Our own RFC 6455 client over an lws raw socket (transport_engine_raw.c). */
extern const struct transport_engine transport_engine_raw;
/* libwebsockets' own ws client (transport_engine_lws.c). */
extern const struct transport_engine transport_engine_lws;

#endif
