/*
 * test_tls.c -- TLS in the connection layer against an OpenSSL client on a
 * loopback socket, the loop stepped between client operations: a handler
 * that pauses with plaintext left in c->in gets it again on resume, and a
 * plaintext connection upgraded with tn_conn_start_tls answers over TLS.
 * The certificate is made in memory and written to temporary files.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"
#include "netutil.h"

static char cert_path[64], key_path[64];
static struct tn_tls_ctx *server_ctx;

static struct {
    char got[256];
    size_t len;
    struct tn_conn *paused;
    int closed;
} seen;

/* A self-signed certificate for 127.0.0.1, written as PEM files. */
static int make_cert(void **state)
{
    EVP_PKEY *pkey = EVP_RSA_gen(2048);
    X509 *x = X509_new();
    X509_NAME *name;
    FILE *f;
    char err[256];
    struct tn_tls_conf tc;

    snprintf(cert_path, sizeof(cert_path), "/tmp/tn-test-tls-%d.crt", (int)getpid());
    snprintf(key_path, sizeof(key_path), "/tmp/tn-test-tls-%d.key", (int)getpid());
    assert_non_null(pkey);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, pkey);
    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    assert_true(X509_sign(x, pkey, EVP_sha256()) > 0);
    assert_non_null(f = fopen(cert_path, "w"));
    PEM_write_X509(f, x);
    fclose(f);
    assert_non_null(f = fopen(key_path, "w"));
    PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(pkey);
    tn_tls_conf_default(&tc);
    tc.cert = cert_path;
    tc.key = key_path;
    server_ctx = tn_tls_ctx_new(&tc, err, sizeof(err));
    assert_non_null(server_ctx);
    return 0;
}

static int drop_cert(void **state)
{
    tn_tls_ctx_free(server_ctx);
    unlink(cert_path);
    unlink(key_path);
    return 0;
}

/* ---- a non-blocking OpenSSL client, the loop stepped while it waits ---------- */

static SSL_CTX *client_ctx;

static int ssl_retry(SSL *ssl, int r)
{
    int e = SSL_get_error(ssl, r);

    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        return 0;
    nu_step(5);
    return 1;
}

static SSL *client_tls(int fd)
{
    SSL *ssl;
    int r, tries = 0;

    if (!client_ctx)
        client_ctx = SSL_CTX_new(TLS_client_method());
    ssl = SSL_new(client_ctx);
    SSL_set_fd(ssl, fd);
    while ((r = SSL_connect(ssl)) != 1 && ssl_retry(ssl, r) && tries++ < 400)
        ;
    assert_int_equal(r, 1);
    return ssl;
}

static void client_send(SSL *ssl, const char *s)
{
    int r, tries = 0;

    while ((r = SSL_write(ssl, s, (int)strlen(s))) <= 0 && ssl_retry(ssl, r) && tries++ < 400)
        ;
    assert_int_equal(r, (int)strlen(s));
}

/* Read until `want` bytes arrived: what was read. */
static size_t client_recv(SSL *ssl, char *buf, size_t want)
{
    size_t have = 0;
    int r, tries = 0;

    while (have < want && tries++ < 400) {
        r = SSL_read(ssl, buf + have, (int)(want - have));
        if (r > 0)
            have += (size_t)r;
        else if (!ssl_retry(ssl, r))
            break;
    }
    return have;
}

static void client_close(SSL *ssl, int fd)
{
    SSL_free(ssl);
    close(fd);
}

/* ---- handlers ------------------------------------------------------------------ */

static void note_close(struct tn_conn *c, int reason)
{
    seen.closed++;
}

/* Takes input up to and including 'P', then pauses with the rest unread. */
static void pause_at_p(struct tn_conn *c)
{
    const char *p = tn_buf_rptr(&c->in);
    size_t n = tn_buf_rlen(&c->in);
    const char *stop = seen.paused ? NULL : memchr(p, 'P', n);

    if (stop)
        n = (size_t)(stop - p) + 1;
    memcpy(seen.got + seen.len, p, n);
    seen.len += n;
    tn_buf_consume(&c->in, n);
    if (stop) {
        seen.paused = c;
        tn_conn_pause_read(c);
    }
}

static const struct tn_conn_handler pause_handler = {pause_at_p, NULL, NULL, note_close};

static int accept_pause(struct tn_listener *l, struct tn_conn *c, void *ud)
{
    c->h = &pause_handler;
    return 0;
}

static int got_len(void *ud)
{
    return seen.len >= (size_t)(uintptr_t)ud;
}

static int conns_zero(void *ud)
{
    return tn_conns_open() == 0;
}

static struct tn_listener *listen_any(tn_accept_pt on_accept, struct tn_addr *a)
{
    struct tn_listener *l;
    int err = 0;

    nu_addr_loopback(a, 0);
    l = tn_listen(a, NULL, on_accept, NULL, &err);
    assert_non_null(l);
    nu_addr_parse(a, tn_listener_addr(l));
    return l;
}

/* Plaintext the handler left in c->in when it paused is handed over again
 * on resume, though no new byte arrives (it is not inside the session any
 * more, so no read event and no decryption announces it). */
static void test_resume_redelivers(void **state)
{
    struct tn_addr a;
    struct tn_listener *l;
    SSL *ssl;
    int fd;

    memset(&seen, 0, sizeof(seen));
    l = listen_any(accept_pause, &a);
    tn_listener_set_tls(l, server_ctx);
    fd = nu_connect(&a);
    ssl = client_tls(fd);
    client_send(ssl, "abcPdef");
    assert_true(nu_until(got_len, (void *)4, 2000));
    nu_spin(50);
    assert_int_equal(seen.len, 4); /* paused: "def" waits in c->in */
    assert_non_null(seen.paused);
    tn_conn_resume_read(seen.paused);
    assert_true(nu_until(got_len, (void *)7, 2000));
    assert_memory_equal(seen.got, "abcPdef", 7);
    client_close(ssl, fd);
    tn_listener_close(l);
    assert_true(nu_until(conns_zero, NULL, 2000));
}

/* A plaintext line protocol: "TLS\n" is answered "GO\n" in plaintext and
 * the connection switches to TLS; afterwards every line is echoed. */
static void starttls_read(struct tn_conn *c)
{
    char *nl;

    while ((nl = memchr(tn_buf_rptr(&c->in), '\n', tn_buf_rlen(&c->in)))) {
        size_t n = (size_t)(nl - tn_buf_rptr(&c->in)) + 1;
        if (n == 4 && memcmp(tn_buf_rptr(&c->in), "TLS\n", 4) == 0 && !tn_conn_tls(c, NULL, NULL)) {
            tn_buf_consume(&c->in, n);
            tn_conn_write(c, "GO\n", 3);
            assert_int_equal(tn_conn_start_tls(c, server_ctx), 0);
            assert_int_equal(tn_conn_start_tls(c, server_ctx), TN_EINVAL);
            continue;
        }
        tn_conn_write(c, tn_buf_rptr(&c->in), n);
        tn_buf_consume(&c->in, n);
    }
}

static const struct tn_conn_handler starttls_handler = {starttls_read, NULL, NULL, note_close};

static struct tn_conn *starttls_conn;

static int accept_starttls(struct tn_listener *l, struct tn_conn *c, void *ud)
{
    c->h = &starttls_handler;
    starttls_conn = c;
    return 0;
}

static void test_start_tls_upgrade(void **state)
{
    struct tn_addr a;
    struct tn_listener *l;
    const char *version = NULL, *cipher = NULL;
    char buf[64];
    int fd, eof = 0;
    SSL *ssl;

    memset(&seen, 0, sizeof(seen));
    l = listen_any(accept_starttls, &a);
    fd = nu_connect(&a);
    assert_int_equal(nu_send_str(fd, "plain\nTLS\n"), 0);
    assert_int_equal(nu_recv(fd, buf, 9, 2000, &eof), 9);
    assert_memory_equal(buf, "plain\nGO\n", 9);
    ssl = client_tls(fd);
    client_send(ssl, "secret\n");
    assert_int_equal(client_recv(ssl, buf, 7), 7);
    assert_memory_equal(buf, "secret\n", 7);
    assert_true(tn_conn_tls(starttls_conn, &version, &cipher));
    assert_true(strncmp(version, "TLSv1.", 6) == 0);
    assert_non_null(cipher);
    client_close(ssl, fd);
    tn_listener_close(l);
    assert_true(nu_until(conns_zero, NULL, 2000));
    assert_int_equal(seen.closed, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_redelivers),
        cmocka_unit_test(test_start_tls_upgrade),
    };
    int rc = cmocka_run_group_tests(tests, make_cert, drop_cert);

    SSL_CTX_free(client_ctx);
    return rc;
}
