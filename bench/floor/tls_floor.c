/* tls_floor.c — the least a TLS echo on loopback costs here: one client streams N bytes to an
 * echo server and reads them back, over plain TCP or TLS 1.3, in C with 256 KiB reads and writes
 * (test equipment for bench/bench_end_to_end.py's wss/ws figure, not product code).
 *
 * Both ends run TLS as the raw engine does (an SSL between memory BIOs, big socket reads and
 * writes), each end one thread with a non-blocking poll loop, so the only difference between the
 * two modes is TLS itself: records, AES-GCM both ways at both ends, the BIO copies.
 *   tls_floor --bytes N [--tls CERT KEY] [--cipher TLS_AES_128_GCM_SHA256] [--message-size M]
 * prints "MB/s <rate> cpu_s_per_gb <cpu>": MB/s of the bytes echoed (counted once, as the
 * benchmark's echo figure) and the CPU time of both ends per GB echoed. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define IO_SIZE (256 * 1024)
#define QUEUE_LIMIT (4 * 1024 * 1024) /* plaintext an end holds before it stops reading */

struct end {
    int fd;
    SSL *ssl; /* NULL: plain TCP */
    BIO *from_network, *to_network;
    unsigned char *pending; /* bytes to send (ciphertext for TLS) */
    size_t pending_size, pending_sent;
};

static const char *cert_path, *key_path, *cipher = "TLS_AES_128_GCM_SHA256";
static size_t total_bytes = 1024u * 1024 * 1024, message_size = 4u * 1024 * 1024;

static void die(const char *what)
{
    fprintf(stderr, "tls_floor: %s (%s)\n", what, strerror(errno));
    ERR_print_errors_fp(stderr);
    exit(1);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void set_up_tls(struct end *end, SSL_CTX *context, int server)
{
    end->ssl = SSL_new(context);
    end->from_network = BIO_new(BIO_s_mem());
    end->to_network = BIO_new(BIO_s_mem());
    if (!end->ssl || !end->from_network || !end->to_network)
        die("SSL_new");
    BIO_set_mem_eof_return(end->from_network, -1);
    SSL_set_bio(end->ssl, end->from_network, end->to_network);
    server ? SSL_set_accept_state(end->ssl) : SSL_set_connect_state(end->ssl);
}

static size_t unsent(const struct end *end)
{
    return end->pending_size - end->pending_sent;
}

/* Room for `size` more bytes behind what is still unsent. */
static unsigned char *make_room(struct end *end, size_t size)
{
    if (end->pending_sent) { /* drop what was sent */
        memmove(end->pending, end->pending + end->pending_sent, unsent(end));
        end->pending_size -= end->pending_sent;
        end->pending_sent = 0;
    }
    end->pending = realloc(end->pending, end->pending_size + size);
    if (!end->pending)
        die("out of memory");
    unsigned char *room = end->pending + end->pending_size;
    end->pending_size += size;
    return room;
}

/* Ciphertext OpenSSL produced goes behind what is still unsent. */
static void collect_output(struct end *end)
{
    size_t waiting = end->ssl ? BIO_ctrl_pending(end->to_network) : 0;
    if (waiting)
        BIO_read(end->to_network, make_room(end, waiting), (int)waiting);
}

/* Queues plaintext to send: encrypted for TLS. */
static void queue_plaintext(struct end *end, const unsigned char *data, size_t size)
{
    if (end->ssl) {
        if (size && SSL_write(end->ssl, data, (int)size) != (int)size)
            die("SSL_write");
        collect_output(end);
        return;
    }
    memcpy(make_room(end, size), data, size);
}

static void send_some(struct end *end)
{
    while (unsent(end)) {
        size_t want = unsent(end) < IO_SIZE ? unsent(end) : IO_SIZE;
        ssize_t n = send(end->fd, end->pending + end->pending_sent, want, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0)
            die("send");
        end->pending_sent += (size_t)n;
    }
}

/* Reads what the socket has; hands the plaintext to `take`. Returns bytes of plaintext. */
static size_t receive_some(struct end *end, unsigned char *buffer, unsigned char *plaintext,
                           void (*take)(struct end *, const unsigned char *, size_t, void *),
                           void *context)
{
    ssize_t n = recv(end->fd, buffer, IO_SIZE, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0)
        die("recv");
    if (!end->ssl) {
        take(end, buffer, (size_t)n, context);
        return (size_t)n;
    }
    BIO_write(end->from_network, buffer, (int)n);
    size_t got = 0;
    for (;;) {
        int r = SSL_read(end->ssl, plaintext, IO_SIZE);
        if (r <= 0) {
            int reason = SSL_get_error(end->ssl, r);
            if (reason != SSL_ERROR_WANT_READ)
                die("SSL_read");
            break;
        }
        take(end, plaintext, (size_t)r, context);
        got += (size_t)r;
    }
    collect_output(end); /* handshake messages, session tickets */
    return got;
}

static void echo_back(struct end *end, const unsigned char *data, size_t size, void *unused)
{
    (void)unused;
    queue_plaintext(end, data, size);
}

static void count(struct end *end, const unsigned char *data, size_t size, void *received)
{
    (void)end;
    (void)data;
    *(size_t *)received += size;
}

static void handshake(struct end *end)
{
    if (!end->ssl)
        return;
    unsigned char buffer[16 * 1024];
    for (;;) {
        int done = SSL_do_handshake(end->ssl) == 1;
        collect_output(end);
        while (unsent(end)) {
            send_some(end);
            struct pollfd p = {end->fd, POLLOUT, 0};
            if (unsent(end))
                poll(&p, 1, 1000);
        }
        if (done)
            return;
        struct pollfd p = {end->fd, POLLIN, 0};
        if (poll(&p, 1, 5000) <= 0)
            die("handshake timed out");
        ssize_t n = recv(end->fd, buffer, sizeof buffer, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN))
            die("handshake");
        if (n > 0)
            BIO_write(end->from_network, buffer, (int)n);
    }
}

static void *server_main(void *listener_pointer)
{
    int listener = *(int *)listener_pointer;
    struct end end = {.fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)};
    if (end.fd < 0)
        die("accept");
    SSL_CTX *context = NULL;
    if (cert_path) {
        context = SSL_CTX_new(TLS_server_method());
        SSL_CTX_set_min_proto_version(context, TLS1_3_VERSION);
        SSL_CTX_set_ciphersuites(context, cipher);
        if (SSL_CTX_use_certificate_chain_file(context, cert_path) != 1 ||
            SSL_CTX_use_PrivateKey_file(context, key_path, SSL_FILETYPE_PEM) != 1)
            die("certificate");
        SSL_CTX_set_num_tickets(context, 0);
        set_up_tls(&end, context, 1);
    }
    handshake(&end);
    unsigned char *buffer = malloc(IO_SIZE), *plaintext = malloc(IO_SIZE);
    for (;;) {
        struct pollfd p = {end.fd, (short)(unsent(&end) < QUEUE_LIMIT ? POLLIN : 0), 0};
        if (unsent(&end))
            p.events |= POLLOUT;
        if (poll(&p, 1, 5000) <= 0)
            break;
        if (p.revents & POLLOUT)
            send_some(&end);
        if (p.revents & (POLLIN | POLLHUP)) {
            char peek;
            if (recv(end.fd, &peek, 1, MSG_PEEK) == 0)
                break; /* the client is done */
            receive_some(&end, buffer, plaintext, echo_back, NULL);
            send_some(&end);
        }
    }
    close(end.fd);
    return NULL;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tls") && i + 2 < argc) {
            cert_path = argv[++i];
            key_path = argv[++i];
        } else if (!strcmp(argv[i], "--bytes") && i + 1 < argc)
            total_bytes = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--message-size") && i + 1 < argc)
            message_size = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--cipher") && i + 1 < argc)
            cipher = argv[++i];
        else {
            fprintf(stderr, "usage: tls_floor --bytes N [--tls CERT KEY] [--cipher NAME] "
                            "[--message-size M]\n");
            return 2;
        }
    }
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t size = sizeof address;
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, size) < 0 ||
        listen(listener, 1) < 0 || getsockname(listener, (struct sockaddr *)&address, &size) < 0)
        die("listen");
    pthread_t server;
    pthread_create(&server, NULL, server_main, &listener);

    struct end end = {.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0)};
    if (connect(end.fd, (struct sockaddr *)&address, size) < 0 && errno != EINPROGRESS)
        die("connect");
    struct pollfd connected = {end.fd, POLLOUT, 0};
    poll(&connected, 1, 5000);
    SSL_CTX *context = NULL;
    if (cert_path) {
        context = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(context, TLS1_3_VERSION);
        SSL_CTX_set_ciphersuites(context, cipher);
        set_up_tls(&end, context, 0); /* no verification: the floor measures the data path */
    }
    handshake(&end);
    unsigned char *message = malloc(message_size), *buffer = malloc(IO_SIZE),
                  *plaintext = malloc(IO_SIZE);
    memset(message, 0x5A, message_size);
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    double start = now();
    size_t queued = 0, received = 0;
    while (received < total_bytes) {
        /* Keep about two messages in flight, as the benchmark's sender thread does. */
        if (queued < total_bytes && unsent(&end) < 2 * message_size) {
            queue_plaintext(&end, message, message_size);
            queued += message_size;
        }
        struct pollfd p = {end.fd, POLLIN, 0};
        if (unsent(&end))
            p.events |= POLLOUT;
        if (poll(&p, 1, 5000) <= 0)
            die("stalled");
        if (p.revents & POLLOUT)
            send_some(&end);
        if (p.revents & POLLIN)
            receive_some(&end, buffer, plaintext, count, &received);
    }
    double elapsed = now() - start;
    getrusage(RUSAGE_SELF, &after);
    double cpu = (double)(after.ru_utime.tv_sec - before.ru_utime.tv_sec) +
                 (double)(after.ru_stime.tv_sec - before.ru_stime.tv_sec) +
                 (double)(after.ru_utime.tv_usec - before.ru_utime.tv_usec) / 1e6 +
                 (double)(after.ru_stime.tv_usec - before.ru_stime.tv_usec) / 1e6;
    printf("MB/s %.0f cpu_s_per_gb %.3f\n", (double)received / elapsed / 1e6,
           cpu / ((double)received / 1e9));
    close(end.fd);
    pthread_join(server, NULL);
    return 0;
}
