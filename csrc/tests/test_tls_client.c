/* test_tls_client.c — the memory-BIO TLS client against an in-memory OpenSSL server, both in
 * this process: a certificate for "relay.test" is made at test time, bytes are carried between
 * the two by hand. Checks the handshake, data both ways, and the refusals (wrong name, a CA that
 * is not trusted). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls_client.h"
#include "unit.h"

struct fixture {
    EVP_PKEY *key;
    X509 *certificate; /* self-signed: it is its own CA */
    char ca_path[64];
};

/* A P-256 key and a self-signed certificate whose subjectAltName is DNS:relay.test. */
static int make_certificate(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    f->key = EVP_EC_gen("P-256");
    f->certificate = X509_new();
    if (!f->key || !f->certificate)
        return -1;
    X509_set_version(f->certificate, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(f->certificate), 1);
    X509_gmtime_adj(X509_getm_notBefore(f->certificate), -60);
    X509_gmtime_adj(X509_getm_notAfter(f->certificate), 3600);
    X509_NAME *name = X509_get_subject_name(f->certificate);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"relay.test", -1,
                               -1, 0);
    X509_set_issuer_name(f->certificate, name);
    X509_set_pubkey(f->certificate, f->key);
    X509V3_CTX context;
    X509V3_set_ctx_nodb(&context);
    X509V3_set_ctx(&context, f->certificate, f->certificate, NULL, NULL, 0);
    X509_EXTENSION *san =
        X509V3_EXT_conf_nid(NULL, &context, NID_subject_alt_name, "DNS:relay.test");
    X509_EXTENSION *ca = X509V3_EXT_conf_nid(NULL, &context, NID_basic_constraints, "CA:TRUE");
    if (!san || !ca || !X509_add_ext(f->certificate, san, -1) ||
        !X509_add_ext(f->certificate, ca, -1) || !X509_sign(f->certificate, f->key, EVP_sha256()))
        return -1;
    X509_EXTENSION_free(san);
    X509_EXTENSION_free(ca);
    snprintf(f->ca_path, sizeof f->ca_path, "/tmp/tls_client_test_XXXXXX");
    int fd = mkstemp(f->ca_path);
    FILE *file = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!file || !PEM_write_X509(file, f->certificate))
        return -1;
    fclose(file);
    *state = f;
    return 0;
}

static int drop_certificate(void **state)
{
    struct fixture *f = *state;
    unlink(f->ca_path);
    X509_free(f->certificate);
    EVP_PKEY_free(f->key);
    free(f);
    return 0;
}

struct server {
    SSL_CTX *context;
    SSL *ssl;
    BIO *in, *out;
};

static void server_start(struct server *s, const struct fixture *f)
{
    s->context = SSL_CTX_new(TLS_server_method());
    assert_int_equal(SSL_CTX_use_certificate(s->context, f->certificate), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(s->context, f->key), 1);
    s->ssl = SSL_new(s->context);
    s->in = BIO_new(BIO_s_mem());
    s->out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(s->in, -1);
    SSL_set_bio(s->ssl, s->in, s->out);
    SSL_set_accept_state(s->ssl);
}

static void server_stop(struct server *s)
{
    SSL_free(s->ssl);
    SSL_CTX_free(s->context);
}

/* Carries every pending byte each way once; returns how many moved. */
static size_t carry(struct tls_client *client, struct server *s)
{
    unsigned char buffer[65536];
    size_t moved = 0, n;
    while ((n = tls_client_take(client, buffer, sizeof buffer)) > 0) {
        BIO_write(s->in, buffer, (int)n);
        moved += n;
    }
    SSL_do_handshake(s->ssl); /* a no-op once done */
    int got;
    while ((got = BIO_read(s->out, buffer, sizeof buffer)) > 0) {
        assert_int_equal(tls_client_feed(client, buffer, (size_t)got), 0);
        moved += (size_t)got;
    }
    return moved;
}

/* Runs the handshake to its end; returns what tls_client_handshake() last said. */
static int handshake(struct tls_client *client, struct server *s)
{
    int result = 0;
    for (int round = 0; round < 20; round++) {
        result = tls_client_handshake(client);
        if (result != 0)
            return result;
        if (!carry(client, s))
            break;
    }
    return result;
}

static void test_handshake_and_data_both_ways(void **state)
{
    struct fixture *f = *state;
    struct server s;
    server_start(&s, f);
    struct tls_client client;
    assert_int_equal(tls_client_init(&client, "relay.test", f->ca_path), 0);
    assert_int_equal(handshake(&client, &s), 1);
    carry(&client, &s); /* the client's Finished */
    assert_int_equal(SSL_is_init_finished(s.ssl), 1);

    /* Client to server: 100 KiB, more than one TLS record. */
    size_t size = 100 * 1024;
    unsigned char *data = malloc(size), *back = malloc(size);
    for (size_t i = 0; i < size; i++)
        data[i] = (unsigned char)(i * 13);
    assert_int_equal(tls_client_write(&client, data, size), 0);
    assert_true(tls_client_pending(&client) > size); /* encrypted: records add headers/tags */
    carry(&client, &s);
    size_t got = 0;
    int n;
    while (got < size && (n = SSL_read(s.ssl, back + got, (int)(size - got))) > 0)
        got += (size_t)n;
    assert_int_equal(got, size);
    assert_memory_equal(back, data, size);

    /* Server to client. */
    assert_int_equal(SSL_write(s.ssl, "hello client", 12), 12);
    carry(&client, &s);
    unsigned char text[64];
    long read = 0, r;
    while ((r = tls_client_read(&client, text + read, sizeof text - (size_t)read)) > 0)
        read += r;
    assert_int_equal(read, 12);
    assert_memory_equal(text, "hello client", 12);
    /* Nothing more yet: 0, not an error. */
    assert_int_equal(tls_client_read(&client, text, sizeof text), 0);

    /* The server ends TLS: the client says so. */
    SSL_shutdown(s.ssl);
    carry(&client, &s);
    assert_int_equal(tls_client_read(&client, text, sizeof text), -1);
    assert_non_null(strstr(client.error, "ended TLS"));
    free(data);
    free(back);
    tls_client_free(&client);
    server_stop(&s);
}

static void test_a_certificate_for_another_name_is_refused(void **state)
{
    struct fixture *f = *state;
    struct server s;
    server_start(&s, f);
    struct tls_client client;
    assert_int_equal(tls_client_init(&client, "other.test", f->ca_path), 0);
    assert_int_equal(handshake(&client, &s), -1);
    assert_non_null(strstr(client.error, "hostname mismatch"));
    tls_client_free(&client);
    server_stop(&s);
}

static void test_a_certificate_from_an_untrusted_ca_is_refused(void **state)
{
    struct fixture *f = *state;
    struct server s;
    server_start(&s, f);
    struct tls_client client;
    assert_int_equal(tls_client_init(&client, "relay.test", NULL), 0); /* the system's CAs */
    assert_int_equal(handshake(&client, &s), -1);
    assert_non_null(strstr(client.error, "certificate rejected"));
    tls_client_free(&client);
    server_stop(&s);
}

static void test_garbage_instead_of_tls_is_an_error_and_a_missing_ca_file_too(void **state)
{
    (void)state;
    struct tls_client client;
    assert_int_equal(tls_client_init(&client, "relay.test", NULL), 0);
    assert_int_equal(tls_client_handshake(&client), 0); /* ClientHello written */
    const char reply[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
    assert_int_equal(tls_client_feed(&client, reply, sizeof reply - 1), 0);
    assert_int_equal(tls_client_handshake(&client), -1);
    assert_non_null(strstr(client.error, "TLS handshake failed"));
    tls_client_free(&client);

    assert_int_equal(tls_client_init(&client, "relay.test", "/nonexistent/ca.pem"), -1);
    assert_non_null(strstr(client.error, "CA file"));
    tls_client_free(&client);
}

int run_tls_client_tests(size_t *test_count)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_and_data_both_ways),
        cmocka_unit_test(test_a_certificate_for_another_name_is_refused),
        cmocka_unit_test(test_a_certificate_from_an_untrusted_ca_is_refused),
        cmocka_unit_test(test_garbage_instead_of_tls_is_an_error_and_a_missing_ca_file_too),
    };
    return UNIT_RUN_GROUP("tls_client", tests, make_certificate, drop_certificate, test_count);
}
