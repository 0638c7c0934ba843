/* tls_client.c — TLS for the raw engine as bytes in and bytes out: an SSL object between two
 * memory BIOs, verifying the peer the way libwebsockets' client does (the system's CAs or a CA
 * file, the host name or IP on the certificate, SNI for names). */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls_client.h"

static int fail(struct tls_client *client, const char *what)
{
    unsigned long code = ERR_get_error();
    char detail[120] = "";
    if (code)
        ERR_error_string_n(code, detail, sizeof detail);
    ERR_clear_error();
    snprintf(client->error, sizeof client->error, "%s%s%s", what, code ? ": " : "", detail);
    return -1;
}

static int is_ip_literal(const char *name)
{
    unsigned char address[16];
    return inet_pton(AF_INET, name, address) == 1 || inet_pton(AF_INET6, name, address) == 1;
}

int tls_client_init(struct tls_client *client, const char *server_name, const char *ca_file)
{
    memset(client, 0, sizeof *client);
    client->context = SSL_CTX_new(TLS_client_method());
    if (!client->context)
        return fail(client, "could not set up TLS");
    SSL_CTX_set_min_proto_version(client->context, TLS1_2_VERSION);
    /* AES-128-GCM first: 10 AES rounds against 14 for every byte of a model (servers that
     * follow the client's order, nginx's default, pick it). */
    if (SSL_CTX_set_ciphersuites(client->context, TLS_CLIENT_CIPHERSUITES) != 1)
        return fail(client, "could not set the TLS 1.3 cipher suites");
    SSL_CTX_set_verify(client->context, SSL_VERIFY_PEER, NULL);
    int loaded = ca_file ? SSL_CTX_load_verify_locations(client->context, ca_file, NULL)
                         : SSL_CTX_set_default_verify_paths(client->context);
    if (loaded != 1)
        return fail(client, ca_file ? "could not load the CA file" : "could not load system CAs");
    client->ssl = SSL_new(client->context);
    client->from_network = BIO_new(BIO_s_mem());
    client->to_network = BIO_new(BIO_s_mem());
    if (!client->ssl || !client->from_network || !client->to_network)
        return fail(client, "could not set up TLS");
    /* An empty memory BIO means "no data yet", not end of file. */
    BIO_set_mem_eof_return(client->from_network, -1);
    SSL_set_bio(client->ssl, client->from_network, client->to_network); /* SSL owns them now */
    SSL_set_connect_state(client->ssl);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_set_alpn_protos(client->ssl, alpn, sizeof alpn - 1);
    if (is_ip_literal(server_name)) {
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(client->ssl), server_name) != 1)
            return fail(client, "could not set the address to verify");
    } else if (SSL_set_tlsext_host_name(client->ssl, server_name) != 1 ||
               SSL_set1_host(client->ssl, server_name) != 1) {
        return fail(client, "could not set the server name");
    }
    return 0;
}

void tls_client_free(struct tls_client *client)
{
    if (client->ssl)
        SSL_free(client->ssl); /* frees both BIOs */
    else {
        BIO_free(client->from_network);
        BIO_free(client->to_network);
    }
    SSL_CTX_free(client->context);
    memset(client, 0, sizeof *client);
}

int tls_client_feed(struct tls_client *client, const void *data, size_t size)
{
    if (size == 0)
        return 0;
    if (BIO_write(client->from_network, data, (int)size) != (int)size)
        return fail(client, "out of memory");
    return 0;
}

int tls_client_handshake(struct tls_client *client)
{
    if (client->handshake_done)
        return 1;
    int result = SSL_do_handshake(client->ssl);
    if (result == 1) {
        client->handshake_done = 1;
        return 1;
    }
    int reason = SSL_get_error(client->ssl, result);
    if (reason == SSL_ERROR_WANT_READ || reason == SSL_ERROR_WANT_WRITE)
        return 0;
    long verified = SSL_get_verify_result(client->ssl);
    if (verified != X509_V_OK) {
        ERR_clear_error();
        snprintf(client->error, sizeof client->error, "TLS certificate rejected: %s",
                 X509_verify_cert_error_string(verified));
        return -1;
    }
    return fail(client, "TLS handshake failed");
}

long tls_client_read(struct tls_client *client, unsigned char *out, size_t capacity)
{
    int size = capacity > 1u << 30 ? 1 << 30 : (int)capacity;
    int result = SSL_read(client->ssl, out, size);
    if (result > 0)
        return result;
    int reason = SSL_get_error(client->ssl, result);
    if (reason == SSL_ERROR_WANT_READ || reason == SSL_ERROR_WANT_WRITE)
        return 0;
    if (reason == SSL_ERROR_ZERO_RETURN) {
        snprintf(client->error, sizeof client->error, "the server ended TLS");
        return -1;
    }
    return fail(client, "TLS stream broken");
}

int tls_client_write(struct tls_client *client, const void *data, size_t size)
{
    /* A memory BIO takes everything, so SSL_write never stops half-way. */
    while (size) {
        int chunk = size > 1u << 30 ? 1 << 30 : (int)size;
        int written = SSL_write(client->ssl, data, chunk);
        if (written <= 0)
            return fail(client, "TLS write failed");
        data = (const unsigned char *)data + written;
        size -= (size_t)written;
    }
    return 0;
}

size_t tls_client_pending(const struct tls_client *client)
{
    return BIO_ctrl_pending(client->to_network);
}

size_t tls_client_take(struct tls_client *client, unsigned char *out, size_t capacity)
{
    int want = capacity > 1u << 30 ? 1 << 30 : (int)capacity;
    int got = BIO_read(client->to_network, out, want);
    return got > 0 ? (size_t)got : 0;
}
