/* tls_client.h — the client side of TLS without I/O, through OpenSSL memory BIOs: ciphertext
 * from the socket goes in, plaintext comes out, and what must be sent waits in an output BIO.
 * The raw engine runs wss:// on it; the C unit tests run it against an in-memory server. */
#ifndef TLS_CLIENT_H
#define TLS_CLIENT_H

#include <stddef.h>

#include <openssl/ssl.h>

/* TLS 1.3 suites offered, in order of preference. */
#define TLS_CLIENT_CIPHERSUITES                                                                    \
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

struct tls_client {
    SSL_CTX *context;
    SSL *ssl;
    BIO *from_network; /* ciphertext received, for OpenSSL to read */
    BIO *to_network;   /* ciphertext OpenSSL wrote, to send */
    int handshake_done;
    char error[200];
};

/* Sets up a client that checks the server's certificate against `ca_file` (NULL: the system's
 * CAs) and against `server_name` (a DNS name, also sent as SNI, or an IP literal). Returns 0, or
 * -1 with client->error set; tls_client_free() is safe either way. */
int tls_client_init(struct tls_client *client, const char *server_name, const char *ca_file);
void tls_client_free(struct tls_client *client);

/* Ciphertext from the network. Returns 0, or -1 out of memory. */
int tls_client_feed(struct tls_client *client, const void *data, size_t size);

/* Advances the handshake. Returns 1 once it is done, 0 while it needs more input, -1 with
 * client->error saying why it failed (certificate, name, protocol). */
int tls_client_handshake(struct tls_client *client);

/* Decrypts into `out`. Returns the plaintext size, 0 when more input is needed, -1 when the
 * stream is broken or closed (client->error says which). */
long tls_client_read(struct tls_client *client, unsigned char *out, size_t capacity);

/* Encrypts `size` bytes (the handshake must be done). Returns 0, or -1. */
int tls_client_write(struct tls_client *client, const void *data, size_t size);

/* Ciphertext waiting to be sent, and taking up to `capacity` bytes of it into `out`. */
size_t tls_client_pending(const struct tls_client *client);
size_t tls_client_take(struct tls_client *client, unsigned char *out, size_t capacity);

#endif
