/* transport_service.c — the one libwebsockets service thread per process. It owns the lws
 * context, opens each connection's socket with the engine Python chose, carries out requests
 * from Python threads and ends connections; the engines speak WebSocket. No Python, no GIL. */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "transport_engine.h"
#include "transport_service.h"

/* A vhost per (proxy, CA file): in lws both are vhost settings, not connection settings. */
struct client_vhost {
    struct client_vhost *next;
    char *proxy;
    char *ca_file;
    char *name;
    struct lws_vhost *vhost;
};

enum service_phase { SERVICE_IDLE, SERVICE_STARTING, SERVICE_RUNNING, SERVICE_EXITED };

static struct {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    enum service_phase phase;
    int process_exiting; /* set by service_shutdown(): no new connections after it */
    int stop_requested;  /* close everything, then stop once no connection is left */
    int stop_now;        /* stop even if closing handshakes are still under way */
    int live_count;
    int thread_joined;
    pthread_t thread;
    struct lws_context *context;
    struct client_connection *pending_head;
    char start_error[256];
} service = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .changed = PTHREAD_COND_INITIALIZER,
};

/* libwebsockets' log levels, set from Python (transport.py reads the environment). */
static atomic_int lws_log_mask;

void service_set_log_mask(int mask)
{
    atomic_store(&lws_log_mask, mask);
}

/* Service-thread only. */
static struct client_vhost *client_vhosts;
static struct client_connection *live_head;
static int stop_handled;

/* ---- bookkeeping of connections the service thread knows -------------------------------- */

static void live_add(struct client_connection *conn)
{
    conn->next_live = live_head;
    conn->previous_live = NULL;
    if (live_head)
        live_head->previous_live = conn;
    live_head = conn;
    pthread_mutex_lock(&service.lock);
    service.live_count++;
    pthread_mutex_unlock(&service.lock);
}

static void live_remove(struct client_connection *conn)
{
    if (conn->previous_live)
        conn->previous_live->next_live = conn->next_live;
    else
        live_head = conn->next_live;
    if (conn->next_live)
        conn->next_live->previous_live = conn->previous_live;
    conn->next_live = conn->previous_live = NULL;
    pthread_mutex_lock(&service.lock);
    service.live_count--;
    pthread_cond_broadcast(&service.changed);
    pthread_mutex_unlock(&service.lock);
}

/* The wsi is gone (or never came): records how the connection ended, frees the engine's state
 * and drops the service thread's reference. Safe to reach more than once for one connection. */
static void finish_connection(struct client_connection *conn, struct lws *wsi, const char *error)
{
    if (!conn->service_holds_reference)
        return;
    if (wsi)
        lws_set_opaque_user_data(wsi, NULL);
    conn->wsi = NULL;
    connection_record_end(conn, error);
    conn->engine->free(conn);
    live_remove(conn);
    conn->service_holds_reference = 0;
    connection_release(conn);
}
/* ---- opening connections ------------------------------------------------------------------ */

static const struct lws_protocols *client_protocols(void);

static int same_setting(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static char *duplicate_or_null(const char *text)
{
    return text ? strdup(text) : NULL;
}

static struct lws_vhost *client_vhost_for(const char *proxy, const char *ca_file)
{
    static unsigned created;
    for (struct client_vhost *v = client_vhosts; v; v = v->next)
        if (same_setting(v->proxy, proxy) && same_setting(v->ca_file, ca_file))
            return v->vhost;

    struct client_vhost *entry = calloc(1, sizeof *entry);
    if (!entry)
        return NULL;
    char name[32];
    snprintf(name, sizeof name, "client-%u", created++);
    entry->proxy = duplicate_or_null(proxy);
    entry->ca_file = duplicate_or_null(ca_file);
    entry->name = strdup(name);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = client_protocols();
    info.vhost_name = entry->name;
    info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.client_ssl_ca_filepath = ca_file;
    /* An empty proxy (rather than NULL) keeps lws from reading $http_proxy by itself: the
     * Python side decides per URL which proxy applies, honouring no_proxy. */
    info.http_proxy_address = proxy ? proxy : "";
    entry->vhost = lws_create_vhost(service.context, &info);
    if (!entry->vhost || (proxy && !entry->proxy) || (ca_file && !entry->ca_file) || !entry->name) {
        free(entry->proxy);
        free(entry->ca_file);
        free(entry->name);
        free(entry);
        return NULL;
    }
    entry->next = client_vhosts;
    client_vhosts = entry;
    return entry->vhost;
}

static void open_connection(struct client_connection *conn)
{
    connection_retain(conn);
    conn->service_holds_reference = 1;
    live_add(conn);

    struct lws_vhost *vhost = client_vhost_for(conn->proxy, conn->ca_file);
    if (!vhost) {
        finish_connection(conn, NULL,
                          conn->ca_file ? "could not set up TLS with the given CA file"
                                        : "could not set up the client (lws vhost)");
        return;
    }
    struct lws_client_connect_info info;
    memset(&info, 0, sizeof info);
    info.context = service.context;
    info.vhost = vhost;
    info.address = conn->address;
    info.port = conn->port;
    info.path = conn->path;
    info.host = conn->host_header;
    info.ssl_connection = conn->use_tls ? LCCSCF_USE_SSL : 0;
    info.alpn = "http/1.1";
    info.local_protocol_name = client_protocols()[0].name;
    info.opaque_user_data = conn;
    info.pwsi = &conn->wsi;
    /* The engine sets up its state and adjusts how lws opens the socket. */
    if (conn->engine->attach(conn, &info) < 0) {
        finish_connection(conn, NULL, "out of memory"); /* unless attach() said why */
        return;
    }
    conn->last_proof_of_life = transport_monotonic_seconds();
    if (!lws_client_connect_via_info(&info))
        finish_connection(conn, NULL, "could not start the connection");
}

/* ---- requests from Python threads --------------------------------------------------------- */

void service_notify(struct client_connection *conn)
{
    pthread_mutex_lock(&service.lock);
    if (!conn->pending) {
        conn->pending = 1;
        connection_retain(conn);
        conn->next_pending = service.pending_head;
        service.pending_head = conn;
    }
    if (service.context)
        lws_cancel_service(service.context);
    pthread_mutex_unlock(&service.lock);
}

static void handle_requests_of(struct client_connection *conn)
{
    pthread_mutex_lock(&conn->lock);
    int open_it = conn->connect_requested;
    conn->connect_requested = 0;
    int abort_it = conn->abort_requested;
    int resume = conn->resume_receiving && conn->receiving_paused;
    if (resume)
        conn->resume_receiving = conn->receiving_paused = 0;
    int wants_write = conn->state == CONNECTION_OPEN && (conn->send_head || conn->close_requested);
    pthread_mutex_unlock(&conn->lock);

    if (open_it) {
        open_connection(conn);
        return;
    }
    if (!conn->wsi)
        return;
    if (abort_it) {
        lws_set_timeout(conn->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        return;
    }
    if (resume)
        lws_rx_flow_control(conn->wsi, 1);
    if (wants_write)
        lws_callback_on_writable(conn->wsi);
}

static void handle_stop_request(void)
{
    for (struct client_connection *conn = live_head; conn; conn = conn->next_live) {
        pthread_mutex_lock(&conn->lock);
        int open = conn->state == CONNECTION_OPEN;
        if (open && !conn->close_requested) {
            conn->close_requested = 1;
            conn->close_requested_code = LWS_CLOSE_STATUS_GOINGAWAY;
            snprintf(conn->close_requested_reason, sizeof conn->close_requested_reason,
                     "client is exiting");
        }
        pthread_mutex_unlock(&conn->lock);
        if (!conn->wsi)
            continue;
        if (open)
            lws_callback_on_writable(conn->wsi);
        else
            lws_set_timeout(conn->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    }
}

/* Returns 1 when the service loop should end. */
static int handle_requests(void)
{
    pthread_mutex_lock(&service.lock);
    struct client_connection *pending = service.pending_head;
    service.pending_head = NULL;
    for (struct client_connection *c = pending; c; c = c->next_pending)
        c->pending = 0;
    int stop_requested = service.stop_requested, stop_now = service.stop_now;
    pthread_mutex_unlock(&service.lock);

    while (pending) {
        struct client_connection *next = pending->next_pending;
        handle_requests_of(pending);
        connection_release(pending);
        pending = next;
    }
    if (stop_requested && !stop_handled) {
        stop_handled = 1;
        handle_stop_request();
    }
    return stop_now || (stop_requested && !live_head);
}

/* ---- the lws callback --------------------------------------------------------------------- */

/* Every lws event of a client socket: its end is handled here, once for every engine; the rest
 * goes to the connection's engine. */
static int on_lws_event(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                        size_t len)
{
    (void)user;
    struct client_connection *conn = wsi ? lws_get_opaque_user_data(wsi) : NULL;
    if (!conn)
        return 0; /* vhost- and context-level events, or a connection already finished */
    switch (reason) {
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: {
        char error[200];
        snprintf(error, sizeof error, "%s", in && len ? (const char *)in : "connection failed");
        pthread_mutex_lock(&conn->lock);
        if (!conn->error[0])
            snprintf(conn->error, sizeof conn->error, "%s", error);
        pthread_mutex_unlock(&conn->lock);
        finish_connection(conn, wsi, error);
        return 0;
    }
    case LWS_CALLBACK_RAW_CLOSE:
    case LWS_CALLBACK_CLIENT_CLOSED:
    case LWS_CALLBACK_WSI_DESTROY:
        finish_connection(conn, wsi, NULL);
        return 0;
    default:
        return conn->engine->on_event(conn, wsi, reason, in, len);
    }
}

static const struct lws_protocols *client_protocols(void)
{
    static const struct lws_protocols protocols[] = {
        {
            .name = "segmentation-suite-client",
            .callback = on_lws_event,
            .rx_buffer_size = TRANSPORT_RX_BUFFER_SIZE,
            /* A whole staging fragment (plus frame header) goes out in one send(). */
            .tx_packet_size = TRANSPORT_STAGING_SIZE + 16,
        },
        {0},
    };
    return protocols;
}

const struct transport_engine *service_engine_named(const char *name)
{
    static const struct transport_engine *const engines[] = {&transport_engine_raw,
                                                             &transport_engine_lws};
    for (size_t i = 0; i < sizeof engines / sizeof *engines; i++)
        if (strcmp(engines[i]->name, name) == 0)
            return engines[i];
    return NULL;
}

/* ---- the thread --------------------------------------------------------------------------- */

static void *service_main(void *unused)
{
    (void)unused;
    lws_set_log_level(atomic_load(&lws_log_mask), NULL);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT | LWS_SERVER_OPTION_EXPLICIT_VHOSTS |
                   LWS_SERVER_OPTION_VALIDATE_UTF8;
    info.pt_serv_buf_size = TRANSPORT_RAW_READ_SIZE; /* the raw sockets' read size */
    info.count_threads = 1;
    struct lws_context *context = lws_create_context(&info);

    pthread_mutex_lock(&service.lock);
    if (!context) {
        snprintf(service.start_error, sizeof service.start_error,
                 "libwebsockets could not create its context");
        service.phase = SERVICE_EXITED;
        pthread_cond_broadcast(&service.changed);
        pthread_mutex_unlock(&service.lock);
        return NULL;
    }
    service.context = context;
    service.phase = SERVICE_RUNNING;
    pthread_cond_broadcast(&service.changed);
    pthread_mutex_unlock(&service.lock);

    while (!handle_requests())
        if (lws_service(context, 0) < 0)
            break;

    pthread_mutex_lock(&service.lock);
    service.context = NULL; /* no more lws_cancel_service() on it */
    pthread_mutex_unlock(&service.lock);
    lws_context_destroy(context); /* closes what is left: finish_connection() for each */
    while (live_head)             /* connections whose wsi never got to the callback */
        finish_connection(live_head, NULL, "the client is exiting");
    handle_requests(); /* drop wake-up references queued while stopping */
    for (struct client_vhost *v = client_vhosts, *next; v; v = next) {
        next = v->next;
        free(v->proxy);
        free(v->ca_file);
        free(v->name);
        free(v);
    }
    client_vhosts = NULL;

    pthread_mutex_lock(&service.lock);
    service.phase = SERVICE_EXITED;
    pthread_cond_broadcast(&service.changed);
    pthread_mutex_unlock(&service.lock);
    return NULL;
}

int service_start(char *error, size_t error_size)
{
    int result = 0;
    pthread_mutex_lock(&service.lock);
    if (service.process_exiting) {
        snprintf(error, error_size, "the interpreter is exiting: no new connections");
        result = -1;
    } else if (service.phase == SERVICE_IDLE) {
        service.phase = SERVICE_STARTING;
        if (pthread_create(&service.thread, NULL, service_main, NULL) != 0) {
            service.phase = SERVICE_IDLE;
            snprintf(error, error_size, "could not start the transport thread");
            result = -1;
        }
    }
    while (result == 0 && service.phase == SERVICE_STARTING)
        pthread_cond_wait(&service.changed, &service.lock);
    if (result == 0 && service.phase != SERVICE_RUNNING) {
        snprintf(error, error_size, "%s",
                 service.start_error[0] ? service.start_error : "the transport thread stopped");
        result = -1;
    }
    pthread_mutex_unlock(&service.lock);
    return result;
}

int service_exiting(void)
{
    pthread_mutex_lock(&service.lock);
    int exiting = service.process_exiting;
    pthread_mutex_unlock(&service.lock);
    return exiting;
}

void service_shutdown(double grace_seconds)
{
    pthread_mutex_lock(&service.lock);
    service.process_exiting = 1;
    if (service.phase != SERVICE_RUNNING && service.phase != SERVICE_EXITED) {
        pthread_mutex_unlock(&service.lock);
        return;
    }
    int join = !service.thread_joined;
    service.thread_joined = 1;
    service.stop_requested = 1;
    if (service.context)
        lws_cancel_service(service.context);

    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)grace_seconds;
    deadline.tv_nsec += (long)((grace_seconds - (double)(time_t)grace_seconds) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    while (service.phase == SERVICE_RUNNING && service.live_count > 0)
        if (pthread_cond_timedwait(&service.changed, &service.lock, &deadline) != 0)
            break;
    service.stop_now = 1;
    if (service.context)
        lws_cancel_service(service.context);
    pthread_mutex_unlock(&service.lock);
    if (join)
        pthread_join(service.thread, NULL);
}
