/* Load generator for bench/relay_bench.py: drives any relay that speaks docs/protocol.md part 1
 * (fan-out throughput, small-message round trips, busy background rooms, idle connections) and
 * prints one JSON line of results. Every mode is bounded in count and in time. */
#include "ws_socket.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SETUP_TIMEOUT_MS 20000
#define IDLE_BUFFER 4096

struct options {
    const char *host;
    const char *source;
    int port;
    int receivers;
    size_t size;
    long count;
    int rooms;
    double seconds;
    int connections;
    bool wait_go;
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds this process has used, all threads: shows whether the client kept up. */
static double cpu_seconds(void)
{
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 +
           (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s\n", what);
    exit(1);
}

/* Wait for a line on stdin (the harness saying "go" or "stop"), at most `seconds`. */
static void wait_for_line(double seconds)
{
    struct pollfd in = {.fd = 0, .events = POLLIN};
    if (poll(&in, 1, (int)(seconds * 1000)) > 0) {
        char line[64];
        if (!fgets(line, sizeof line, stdin))
            return;
    }
}

static enum ws_result next_text(struct ws_conn *conn, double deadline)
{
    while (now_seconds() < deadline) {
        enum ws_result r = ws_next_message(conn, true);
        if (r != WS_MESSAGE || conn->last_opcode == WS_OPCODE_TEXT)
            return r;
    }
    return WS_CLOSED;
}

/* Read text messages until one contains `needle`; 0 when found in time. */
static int wait_for_text(struct ws_conn *conn, const char *needle, double timeout)
{
    double deadline = now_seconds() + timeout;
    while (next_text(conn, deadline) == WS_MESSAGE) {
        if (memmem(conn->message, conn->message_len, needle, strlen(needle)))
            return 0;
        if (memmem(conn->message, conn->message_len, "\"error\"", 7)) {
            fprintf(stderr, "loadgen: relay answered %.*s\n", (int)conn->message_len,
                    conn->message);
            return -1;
        }
    }
    return -1;
}

static int send_json(struct ws_conn *conn, const char *text)
{
    return ws_send(conn, WS_OPCODE_TEXT, text, strlen(text));
}

/* Connect `creator` and `joiner` and put them in one new room. */
static int make_pair(const struct options *opt, struct ws_conn *creator, struct ws_conn *joiner,
                     const char *name)
{
    char text[256], code[16];
    if (ws_connect(creator, opt->host, opt->port, opt->source, SETUP_TIMEOUT_MS))
        return -1;
    creator->collect_text = true;
    snprintf(text, sizeof text,
             "{\"type\":\"create_room\",\"payload\":{\"user_id\":\"%s-a\",\"display_name\":\"A\"}}",
             name);
    if (send_json(creator, text) || wait_for_text(creator, "room_created", 20))
        return -1;
    if (json_string_field(creator->message, creator->message_len, "room_code", code, sizeof code))
        return -1;
    if (ws_connect(joiner, opt->host, opt->port, opt->source, SETUP_TIMEOUT_MS))
        return -1;
    joiner->collect_text = true;
    snprintf(text, sizeof text,
             "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"%s-b\","
             "\"display_name\":\"B\"}}",
             code, name);
    if (send_json(joiner, text) || wait_for_text(joiner, "room_joined", 20))
        return -1;
    return 0;
}

/* ---- fan-out: one sender, N receivers, binary messages as fast as the relay takes them ---- */

struct receiver {
    struct ws_conn conn;
    pthread_t thread;
    long expected;
    double finished_at;
    bool failed;
};

static void *receive_binary(void *arg)
{
    struct receiver *r = arg;
    while ((long)r->conn.binary_messages < r->expected) {
        if (ws_next_message(&r->conn, true) != WS_MESSAGE) {
            r->failed = true;
            break;
        }
    }
    r->finished_at = now_seconds();
    return NULL;
}

/* The sender's own socket gets user_joined messages and keep-alive pings: read and answer. */
static void *drain_sender(void *arg)
{
    struct ws_conn *conn = arg;
    while (ws_next_message(conn, true) != WS_CLOSED) {
    }
    return NULL;
}

static int run_fanout(const struct options *opt)
{
    struct ws_conn sender;
    struct receiver *receivers = calloc((size_t)opt->receivers, sizeof *receivers);
    unsigned char *payload = malloc(opt->size);
    if (!receivers || !payload || ws_init(&sender, 65536))
        die("out of memory");
    if (getrandom(payload, opt->size < 256 ? opt->size : 256, 0) < 0)
        die("getrandom failed");
    for (size_t i = 256; i < opt->size; i++)
        payload[i] = payload[i % 256] ^ (unsigned char)(i >> 8);

    for (int i = 0; i < opt->receivers; i++) {
        if (ws_init(&receivers[i].conn, 65536))
            die("out of memory");
        receivers[i].expected = opt->count;
    }
    if (make_pair(opt, &sender, &receivers[0].conn, "fanout"))
        die("could not set up the fan-out room");
    char code[16], text[256];
    if (json_string_field(sender.message, sender.message_len, "room_code", code, sizeof code))
        die("no room code");
    for (int i = 1; i < opt->receivers; i++) {
        struct ws_conn *conn = &receivers[i].conn;
        if (ws_connect(conn, opt->host, opt->port, opt->source, SETUP_TIMEOUT_MS))
            die("receiver could not connect");
        conn->collect_text = true;
        snprintf(text, sizeof text,
                 "{\"type\":\"join_room\",\"payload\":{\"room_code\":\"%s\",\"user_id\":\"r%d\","
                 "\"display_name\":\"R\"}}",
                 code, i);
        if (send_json(conn, text) || wait_for_text(conn, "room_joined", 20))
            die("receiver could not join");
    }
    /* From here on receivers only count: their payloads are discarded in the kernel. */
    double stall_ms = 30000;
    for (int i = 0; i < opt->receivers; i++) {
        receivers[i].conn.collect_text = false;
        ws_set_timeout(&receivers[i].conn, (int)stall_ms);
    }
    sender.collect_text = false;
    pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;
    sender.write_lock = &write_lock;
    pthread_t drainer;
    pthread_create(&drainer, NULL, drain_sender, &sender);

    if (opt->wait_go) {
        printf("ready\n");
        fflush(stdout);
        wait_for_line(600);
    }
    double started = now_seconds();
    double cpu_started = cpu_seconds();
    for (int i = 0; i < opt->receivers; i++)
        pthread_create(&receivers[i].thread, NULL, receive_binary, &receivers[i]);
    long sent = 0;
    for (; sent < opt->count && now_seconds() - started < opt->seconds; sent++) {
        if (ws_send_premasked(&sender, WS_OPCODE_BINARY, payload, opt->size))
            break;
    }
    /* Messages not sent (time limit) are not waited for. */
    for (int i = 0; i < opt->receivers; i++)
        receivers[i].expected = sent;
    double finished = started;
    uint64_t delivered = 0, messages = 0;
    int failed = 0;
    for (int i = 0; i < opt->receivers; i++) {
        pthread_join(receivers[i].thread, NULL);
        if (receivers[i].finished_at > finished)
            finished = receivers[i].finished_at;
        delivered += receivers[i].conn.binary_bytes;
        messages += receivers[i].conn.binary_messages;
        failed += receivers[i].failed;
    }
    double client_cpu = cpu_seconds() - cpu_started;
    shutdown(sender.fd, SHUT_RDWR);
    pthread_join(drainer, NULL);
    printf("{\"mode\":\"fanout\",\"receivers\":%d,\"size\":%zu,\"sent\":%ld,"
           "\"delivered_bytes\":%llu,\"delivered_messages\":%llu,\"seconds\":%.6f,"
           "\"failed_receivers\":%d,\"client_cpu_seconds\":%.3f}\n",
           opt->receivers, opt->size, sent, (unsigned long long)delivered,
           (unsigned long long)messages, finished - started, failed, client_cpu);
    for (int i = 0; i < opt->receivers; i++)
        ws_free(&receivers[i].conn);
    ws_free(&sender);
    free(receivers);
    free(payload);
    return failed ? 1 : 0;
}

/* ---- latency: one pair, one small message in flight, round trips timed ---- */

/* A JSON text of exactly `size` bytes (at least the fixed part) with type `kind`. */
static char *small_message(const char *kind, size_t size)
{
    const char *head_format = "{\"type\":\"%s\",\"payload\":{\"pad\":\"";
    const char *tail = "\"}}";
    char head[64];
    int head_len = snprintf(head, sizeof head, head_format, kind);
    size_t fixed = (size_t)head_len + strlen(tail);
    size_t total = size > fixed ? size : fixed;
    char *text = malloc(total + 1);
    if (!text)
        die("out of memory");
    memcpy(text, head, (size_t)head_len);
    memset(text + head_len, 'x', total - fixed);
    memcpy(text + total - strlen(tail), tail, strlen(tail) + 1);
    return text;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int run_latency(const struct options *opt)
{
    struct ws_conn a, b;
    if (ws_init(&a, 65536) || ws_init(&b, 65536))
        die("out of memory");
    if (make_pair(opt, &a, &b, "probe"))
        die("could not set up the latency room");
    char *probe = small_message("probe", opt->size);
    const long warmup = opt->count / 10 < 100 ? opt->count / 10 : 100;
    double *samples = malloc(sizeof(double) * (size_t)opt->count);
    if (!samples)
        die("out of memory");
    long taken = 0;
    double deadline = now_seconds() + opt->seconds;
    for (long i = 0; i < warmup + opt->count && now_seconds() < deadline; i++) {
        double t0 = now_seconds();
        if (send_json(&a, probe) || wait_for_text(&b, "\"probe\"", 10))
            die("probe lost on the way out");
        if (send_json(&b, probe) || wait_for_text(&a, "\"probe\"", 10))
            die("probe lost on the way back");
        if (i >= warmup)
            samples[taken++] = (now_seconds() - t0) * 1e6;
    }
    if (taken == 0)
        die("no round trip completed in time");
    qsort(samples, (size_t)taken, sizeof *samples, compare_doubles);
    double sum = 0;
    for (long i = 0; i < taken; i++)
        sum += samples[i];
    printf("{\"mode\":\"latency\",\"size\":%zu,\"samples\":%ld,\"p50_us\":%.1f,\"p99_us\":%.1f,"
           "\"mean_us\":%.1f,\"max_us\":%.1f}\n",
           strlen(probe), taken, samples[taken / 2], samples[(taken * 99) / 100],
           sum / (double)taken, samples[taken - 1]);
    free(samples);
    free(probe);
    ws_free(&a);
    ws_free(&b);
    return 0;
}

/* ---- busy: N rooms, each a pair bouncing one small message back and forth ---- */

static int run_busy(const struct options *opt)
{
    int n = opt->rooms * 2;
    struct ws_conn *conns = calloc((size_t)n, sizeof *conns);
    if (!conns)
        die("out of memory");
    char *message = small_message("busy", opt->size);
    for (int i = 0; i < opt->rooms; i++) {
        char name[32];
        snprintf(name, sizeof name, "busy%d", i);
        if (ws_init(&conns[2 * i], 8192) || ws_init(&conns[2 * i + 1], 8192))
            die("out of memory");
        if (make_pair(opt, &conns[2 * i], &conns[2 * i + 1], name))
            die("could not set up a busy room");
    }
    int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, conns[i].fd, &ev))
            die("epoll_ctl failed");
    }
    printf("ready\n");
    fflush(stdout);
    double started = now_seconds();
    for (int i = 0; i < opt->rooms; i++)
        if (send_json(&conns[2 * i], message))
            die("busy send failed");
    unsigned long long bounces = 0;
    int closed = 0;
    struct pollfd in = {.fd = 0, .events = POLLIN};
    while (now_seconds() - started < opt->seconds && poll(&in, 1, 0) == 0) {
        struct epoll_event events[64];
        int ready = epoll_wait(epoll_fd, events, 64, 100);
        for (int e = 0; e < ready; e++) {
            struct ws_conn *conn = &conns[events[e].data.u32];
            enum ws_result r;
            while ((r = ws_next_message(conn, false)) == WS_MESSAGE) {
                if (conn->last_opcode != WS_OPCODE_TEXT ||
                    !memmem(conn->message, conn->message_len, "\"busy\"", 6))
                    continue;
                bounces++;
                if (send_json(conn, message))
                    r = WS_CLOSED;
            }
            if (r == WS_CLOSED) {
                epoll_ctl(epoll_fd, EPOLL_CTL_DEL, conn->fd, NULL);
                closed++;
            }
        }
    }
    double elapsed = now_seconds() - started;
    printf("{\"mode\":\"busy\",\"rooms\":%d,\"messages\":%llu,\"seconds\":%.3f,"
           "\"messages_per_second\":%.1f,\"closed\":%d}\n",
           opt->rooms, bounces, elapsed, (double)bounces / elapsed, closed);
    for (int i = 0; i < n; i++)
        ws_free(&conns[i]);
    free(conns);
    free(message);
    close(epoll_fd);
    return closed ? 1 : 0;
}

/* ---- idle: many connections that only answer keep-alive pings ---- */

static int run_idle(const struct options *opt)
{
    int n = opt->connections;
    struct ws_conn *conns = calloc((size_t)n, sizeof *conns);
    if (!conns)
        die("out of memory");
    /* Batches stay well under the listen backlog, so no SYN is dropped and retried. */
    const int batch = 128;
    double deadline = now_seconds() + opt->seconds;
    for (int first = 0; first < n; first += batch) {
        int last = first + batch < n ? first + batch : n;
        for (int i = first; i < last; i++) {
            if (ws_init(&conns[i], IDLE_BUFFER) ||
                ws_start_connect(&conns[i], opt->host, opt->port, opt->source) ||
                ws_set_timeout(&conns[i], SETUP_TIMEOUT_MS))
                die("idle connection failed");
        }
        for (int i = first; i < last; i++) {
            if (ws_finish_connect(&conns[i]))
                die("idle handshake failed");
        }
        if (now_seconds() > deadline)
            die("idle connections took too long to open");
    }
    int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, conns[i].fd, &ev))
            die("epoll_ctl failed");
    }
    printf("ready %d\n", n);
    fflush(stdout);
    int closed = 0;
    struct pollfd in = {.fd = 0, .events = POLLIN};
    while (now_seconds() < deadline && poll(&in, 1, 0) == 0) {
        struct epoll_event events[64];
        int ready = epoll_wait(epoll_fd, events, 64, 100);
        for (int e = 0; e < ready; e++) {
            struct ws_conn *conn = &conns[events[e].data.u32];
            enum ws_result r;
            while ((r = ws_next_message(conn, false)) == WS_MESSAGE) {
            }
            if (r == WS_CLOSED) {
                epoll_ctl(epoll_fd, EPOLL_CTL_DEL, conn->fd, NULL);
                closed++;
            }
        }
    }
    printf("{\"mode\":\"idle\",\"connections\":%d,\"closed_by_relay\":%d}\n", n, closed);
    fflush(stdout);
    for (int i = 0; i < n; i++)
        ws_free(&conns[i]);
    free(conns);
    close(epoll_fd);
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen MODE --port PORT [options]\n"
            "  fanout   --receivers N --size BYTES --count N [--seconds S] [--wait-go]\n"
            "  latency  --size BYTES --count N [--seconds S]\n"
            "  busy     --rooms N --size BYTES --seconds S  (stops early on a line on stdin)\n"
            "  idle     --connections N --seconds S [--source 127.0.0.x]  (ends on stdin)\n"
            "common: --host 127.0.0.1 (IPv4 address); prints one JSON line of results\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct options opt = {.host = "127.0.0.1",
                          .receivers = 4,
                          .size = 100,
                          .count = 1000,
                          .rooms = 200,
                          .seconds = 60,
                          .connections = 100};
    if (argc < 2)
        usage();
    const char *mode = argv[1];
    static const struct option longopts[] = {{"host", required_argument, NULL, 'h'},
                                             {"port", required_argument, NULL, 'p'},
                                             {"source", required_argument, NULL, 'S'},
                                             {"receivers", required_argument, NULL, 'r'},
                                             {"size", required_argument, NULL, 's'},
                                             {"count", required_argument, NULL, 'c'},
                                             {"rooms", required_argument, NULL, 'R'},
                                             {"seconds", required_argument, NULL, 't'},
                                             {"connections", required_argument, NULL, 'n'},
                                             {"wait-go", no_argument, NULL, 'g'},
                                             {NULL, 0, NULL, 0}};
    int c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            opt.host = optarg;
            break;
        case 'p':
            opt.port = atoi(optarg);
            break;
        case 'S':
            opt.source = optarg;
            break;
        case 'r':
            opt.receivers = atoi(optarg);
            break;
        case 's':
            opt.size = (size_t)strtoull(optarg, NULL, 10);
            break;
        case 'c':
            opt.count = atol(optarg);
            break;
        case 'R':
            opt.rooms = atoi(optarg);
            break;
        case 't':
            opt.seconds = atof(optarg);
            break;
        case 'n':
            opt.connections = atoi(optarg);
            break;
        case 'g':
            opt.wait_go = true;
            break;
        default:
            usage();
        }
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.receivers < 1 || opt.count < 1 || opt.rooms < 1 ||
        opt.connections < 1 || opt.seconds <= 0 || opt.size < 1)
        usage();
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(mode, "fanout") == 0)
        return run_fanout(&opt);
    if (strcmp(mode, "latency") == 0)
        return run_latency(&opt);
    if (strcmp(mode, "busy") == 0)
        return run_busy(&opt);
    if (strcmp(mode, "idle") == 0)
        return run_idle(&opt);
    usage();
}
