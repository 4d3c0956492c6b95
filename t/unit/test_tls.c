/*
 * test_tls.c -- TLS in the connection layer against an OpenSSL client on a
 * loopback socket, the loop stepped between client operations: a handler
 * that pauses with plaintext left in c->in gets it again on resume, and a
 * plaintext connection upgraded with tn_conn_start_tls answers over TLS.
 * The client side (tn_conn_connect_tls) runs against the server side on
 * the same loop: verified connects, the wrong CA, the wrong name, mutual
 * TLS, a server that never answers. Certificates are made in memory and
 * written to temporary files.
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
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"
#include "netutil.h"

static char cert_path[64], key_path[64];       /* the server's, for 127.0.0.1 and localhost */
static char other_path[64], other_key_path[64]; /* an identity nobody trusts */
static char client_path[64], client_key_path[64]; /* a client's, for mutual TLS */
static struct tn_tls_ctx *server_ctx;

static struct {
    char got[256];
    size_t len;
    struct tn_conn *paused;
    int closed;
} seen;

/* A self-signed certificate (its own CA) with subjectAltName san, written
 * as PEM files. */
static void write_cert(const char *crt, const char *key, const char *cn, const char *san)
{
    EVP_PKEY *pkey = EVP_RSA_gen(2048);
    X509 *x = X509_new();
    X509_NAME *name;
    X509_EXTENSION *ext;
    FILE *f;

    assert_non_null(pkey);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, pkey);
    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, name);
    assert_non_null(ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san));
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    assert_true(X509_sign(x, pkey, EVP_sha256()) > 0);
    assert_non_null(f = fopen(crt, "w"));
    PEM_write_X509(f, x);
    fclose(f);
    assert_non_null(f = fopen(key, "w"));
    PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(pkey);
}

static int make_cert(void **state)
{
    char err[256];
    struct tn_tls_conf tc;
    int pid = (int)getpid();

    snprintf(cert_path, sizeof(cert_path), "/tmp/tn-test-tls-%d.crt", pid);
    snprintf(key_path, sizeof(key_path), "/tmp/tn-test-tls-%d.key", pid);
    snprintf(other_path, sizeof(other_path), "/tmp/tn-test-tls-%d-other.crt", pid);
    snprintf(other_key_path, sizeof(other_key_path), "/tmp/tn-test-tls-%d-other.key", pid);
    snprintf(client_path, sizeof(client_path), "/tmp/tn-test-tls-%d-client.crt", pid);
    snprintf(client_key_path, sizeof(client_key_path), "/tmp/tn-test-tls-%d-client.key", pid);
    write_cert(cert_path, key_path, "127.0.0.1", "IP:127.0.0.1,DNS:localhost");
    write_cert(other_path, other_key_path, "127.0.0.1", "IP:127.0.0.1");
    write_cert(client_path, client_key_path, "client", "DNS:client");
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
    unlink(other_path);
    unlink(other_key_path);
    unlink(client_path);
    unlink(client_key_path);
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


/* ---- the client side ------------------------------------------------------------- */

/* The server echoes every byte; the client counts its callbacks. */
static void echo_read(struct tn_conn *c)
{
    tn_conn_write(c, tn_buf_rptr(&c->in), tn_buf_rlen(&c->in));
    tn_buf_consume(&c->in, tn_buf_rlen(&c->in));
}

static const struct tn_conn_handler echo_handler = {echo_read, NULL, NULL, note_close};

static int accept_echo(struct tn_listener *l, struct tn_conn *c, void *ud)
{
    c->h = &echo_handler;
    return 0;
}

/* Never answers: a handshake against it can only time out. */
static void mute_read(struct tn_conn *c)
{
    tn_buf_consume(&c->in, tn_buf_rlen(&c->in));
}

static const struct tn_conn_handler mute_handler = {mute_read, NULL, NULL, NULL};

static int accept_mute(struct tn_listener *l, struct tn_conn *c, void *ud)
{
    c->h = &mute_handler;
    return 0;
}

static struct {
    int connects, status, closes, reason;
    char got[64];
    size_t len;
} cli;

static void cli_connect(struct tn_conn *c, int status)
{
    cli.connects++;
    cli.status = status;
    if (status == 0)
        assert_true(tn_conn_tls(c, NULL, NULL)); /* verified and finished already */
}

static void cli_read(struct tn_conn *c)
{
    size_t n = tn_buf_rlen(&c->in);

    if (n > sizeof(cli.got) - cli.len)
        n = sizeof(cli.got) - cli.len;
    memcpy(cli.got + cli.len, tn_buf_rptr(&c->in), n);
    cli.len += n;
    tn_buf_consume(&c->in, tn_buf_rlen(&c->in));
}

static void cli_close(struct tn_conn *c, int reason)
{
    cli.closes++;
    cli.reason = reason;
}

static const struct tn_conn_handler cli_handler = {cli_read, cli_connect, NULL, cli_close};

static int cli_settled(void *ud)
{
    return cli.closes > 0 || (cli.connects > 0 && cli.status != 0) ||
           cli.len >= (size_t)(uintptr_t)ud;
}

static struct tn_tls_ctx *client_ctx_for(const char *ca, const char *cert, const char *key,
                                         const char *name, int verify)
{
    struct tn_tls_client_conf tc;
    struct tn_tls_ctx *ctx;
    char err[256];

    tn_tls_client_conf_default(&tc);
    tc.ca = (char *)ca;
    tc.cert = (char *)cert;
    tc.key = (char *)key;
    tc.server_name = (char *)name;
    tc.verify = verify;
    tc.handshake_timeout = 5000;
    ctx = tn_tls_client_ctx_new(&tc, err, sizeof(err));
    assert_non_null(ctx);
    return ctx;
}

/* Connect to the echo server (TLS with sctx) as a client with cctx; the
 * word is written right away, before the handshake. */
static struct tn_conn *client_run(struct tn_tls_ctx *sctx, struct tn_tls_ctx *cctx,
                                  tn_accept_pt on_accept, const char *name, const char *word)
{
    struct tn_addr a;
    struct tn_listener *l;
    struct tn_conn *c;
    int err = 0;

    memset(&cli, 0, sizeof(cli));
    memset(&seen, 0, sizeof(seen));
    l = listen_any(on_accept, &a);
    tn_listener_set_tls(l, sctx);
    assert_non_null(c = tn_connect(&a, &cli_handler, NULL, NULL, &err));
    assert_int_equal(tn_conn_connect_tls(c, cctx, name), 0);
    assert_int_equal(tn_conn_connect_tls(c, cctx, name), TN_EINVAL); /* once */
    assert_int_equal(tn_conn_write(c, word, strlen(word)), 0);
    assert_true(nu_until(cli_settled, (void *)(uintptr_t)strlen(word), 5000));
    tn_listener_close(l);
    return c;
}

static void client_end(struct tn_conn *c)
{
    if (cli.closes == 0 && cli.status == 0)
        tn_conn_close(c, 0);
    assert_true(nu_until(conns_zero, NULL, 3000));
}

static void test_client_verified_echo(void **state)
{
    struct tn_tls_ctx *cctx = client_ctx_for(cert_path, NULL, NULL, NULL, 1);
    struct tn_conn *c = client_run(server_ctx, cctx, accept_echo, NULL, "held until verified");
    const char *version = NULL;

    assert_int_equal(cli.connects, 1);
    assert_int_equal(cli.status, 0);
    assert_int_equal(cli.len, strlen("held until verified"));
    assert_memory_equal(cli.got, "held until verified", cli.len);
    assert_true(tn_conn_tls(c, &version, NULL));
    assert_true(strncmp(version, "TLSv1.", 6) == 0);
    client_end(c);
    assert_int_equal(cli.closes, 1); /* our own close */
    /* a DNS name from the certificate works as well */
    c = client_run(server_ctx, cctx, accept_echo, "localhost", "by name");
    assert_int_equal(cli.status, 0);
    assert_int_equal(cli.len, 7);
    client_end(c);
    tn_tls_ctx_free(cctx);
}

static void test_client_unknown_ca(void **state)
{
    struct tn_tls_ctx *cctx = client_ctx_for(other_path, NULL, NULL, NULL, 1);
    struct tn_conn *c = client_run(server_ctx, cctx, accept_echo, NULL, "x");

    assert_int_equal(cli.connects, 1);
    assert_int_equal(cli.status, TN_EPROTO);
    assert_int_equal(cli.closes, 0); /* a failed connect: no on_close */
    assert_int_equal(cli.len, 0);
    client_end(c);
    assert_int_equal(seen.closed, 1); /* the server saw the alert */
    tn_tls_ctx_free(cctx);
    /* verify off: the same client gets through */
    cctx = client_ctx_for(other_path, NULL, NULL, NULL, 0);
    c = client_run(server_ctx, cctx, accept_echo, NULL, "x");
    assert_int_equal(cli.status, 0);
    assert_int_equal(cli.len, 1);
    client_end(c);
    tn_tls_ctx_free(cctx);
}

static void test_client_wrong_name(void **state)
{
    struct tn_tls_ctx *cctx = client_ctx_for(cert_path, NULL, NULL, "wrong.example", 1);
    struct tn_conn *c = client_run(server_ctx, cctx, accept_echo, NULL, "x");

    assert_int_equal(cli.connects, 1);
    assert_int_equal(cli.status, TN_EPROTO);
    assert_int_equal(cli.closes, 0);
    client_end(c);
    /* the name given to the call wins over the context's */
    c = client_run(server_ctx, cctx, accept_echo, "127.0.0.1", "ok");
    assert_int_equal(cli.status, 0);
    assert_int_equal(cli.len, 2);
    client_end(c);
    tn_tls_ctx_free(cctx);
}

static void test_client_mutual(void **state)
{
    struct tn_tls_conf tc;
    struct tn_tls_ctx *sctx, *with, *without;
    struct tn_conn *c;
    char err[256];

    tn_tls_conf_default(&tc);
    tc.cert = cert_path;
    tc.key = key_path;
    tc.ca = client_path; /* the server asks for a certificate this signed */
    assert_non_null(sctx = tn_tls_ctx_new(&tc, err, sizeof(err)));
    with = client_ctx_for(cert_path, client_path, client_key_path, NULL, 1);
    without = client_ctx_for(cert_path, NULL, NULL, NULL, 1);
    c = client_run(sctx, with, accept_echo, NULL, "mutual");
    assert_int_equal(cli.status, 0);
    assert_int_equal(cli.len, 6);
    client_end(c);
    /* refused by the server: in TLS 1.3 the client has finished already,
     * so the error comes as on_close; in 1.2 as on_connect */
    c = client_run(sctx, without, accept_echo, NULL, "anonymous");
    assert_int_equal(cli.len, 0);
    assert_true(cli.closes ? cli.reason == TN_EPROTO || cli.reason == TN_EPEER
                           : cli.status == TN_EPROTO);
    client_end(c);
    tn_tls_ctx_free(with);
    tn_tls_ctx_free(without);
    tn_tls_ctx_free(sctx);
}

static void test_client_handshake_timeout(void **state)
{
    struct tn_tls_client_conf tc;
    struct tn_tls_ctx *cctx;
    struct tn_addr a;
    struct tn_listener *l;
    struct tn_conn *c;
    char err[256];
    int e = 0;

    tn_tls_client_conf_default(&tc);
    tc.ca = cert_path;
    tc.handshake_timeout = 100;
    assert_non_null(cctx = tn_tls_client_ctx_new(&tc, err, sizeof(err)));
    memset(&cli, 0, sizeof(cli));
    l = listen_any(accept_mute, &a); /* plaintext, silent */
    assert_non_null(c = tn_connect(&a, &cli_handler, NULL, NULL, &e));
    assert_int_equal(tn_conn_connect_tls(c, cctx, NULL), 0);
    assert_true(nu_until(cli_settled, (void *)1, 5000));
    assert_int_equal(cli.status, TN_ETIMEDOUT);
    assert_int_equal(cli.closes, 0);
    tn_listener_close(l);
    assert_true(nu_until(conns_zero, NULL, 3000));
    tn_tls_ctx_free(cctx);
}

static void test_client_ctx_errors(void **state)
{
    struct tn_tls_client_conf tc;
    struct tn_tls_ctx *ctx;
    struct tn_addr a;
    struct tn_conn *c;
    char err[256];
    int e = 0;

    tn_tls_client_conf_default(&tc);
    assert_int_equal(tc.verify, 1);
    tc.ca = "/nonexistent/ca.pem";
    assert_null(tn_tls_client_ctx_new(&tc, err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent/ca.pem"));
    tc.ca = NULL;
    tc.cert = client_path; /* without its key */
    assert_null(tn_tls_client_ctx_new(&tc, err, sizeof(err)));
    assert_non_null(strstr(err, "key"));
    tc.key = other_key_path; /* not its key */
    assert_null(tn_tls_client_ctx_new(&tc, err, sizeof(err)));
    assert_non_null(strstr(err, other_key_path));
    tc.cert = tc.key = NULL; /* the system's CAs */
    assert_non_null(ctx = tn_tls_client_ctx_new(&tc, err, sizeof(err)));
    /* only on an outgoing connection still connecting, only a client context */
    nu_addr_loopback(&a, 1);
    memset(&cli, 0, sizeof(cli));
    assert_non_null(c = tn_connect(&a, &cli_handler, NULL, NULL, &e));
    assert_int_equal(tn_conn_connect_tls(c, server_ctx, NULL), TN_EINVAL);
    assert_int_equal(tn_conn_connect_tls(c, NULL, NULL), TN_EINVAL);
    assert_int_equal(tn_conn_connect_tls(c, ctx, NULL), 0);
    /* port 1 refuses: the connect's own failure, reported once */
    assert_true(nu_until(cli_settled, (void *)1, 5000));
    assert_int_equal(cli.connects, 1);
    assert_true(cli.status < 0);
    assert_true(nu_until(conns_zero, NULL, 3000));
    assert_int_equal(cli.closes, 0);
    tn_tls_ctx_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_redelivers),
        cmocka_unit_test(test_start_tls_upgrade),
        cmocka_unit_test(test_client_verified_echo),
        cmocka_unit_test(test_client_unknown_ca),
        cmocka_unit_test(test_client_wrong_name),
        cmocka_unit_test(test_client_mutual),
        cmocka_unit_test(test_client_handshake_timeout),
        cmocka_unit_test(test_client_ctx_errors),
    };
    int rc = cmocka_run_group_tests(tests, make_cert, drop_cert);

    SSL_CTX_free(client_ctx);
    return rc;
}
