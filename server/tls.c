/*
 * tls.c -- OpenSSL for the connection layer: the `tls:` key table, server
 * contexts, and per-connection sessions over memory BIOs. The connection
 * (conn.c) does all socket I/O itself and moves ciphertext in and out of
 * the session, so TLS fits the existing buffers, the one-write-per-
 * iteration flushing and back-pressure, and can start on a connection that
 * already carried plaintext (an upgrade).
 */
#include <arpa/inet.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

#define TLS_CHUNK (16 * 1024) /* one TLS record of plaintext */

/* A tn_tls_ctx is an SSL_CTX: OpenSSL counts its references. */
static SSL_CTX *ssl_ctx(struct tn_tls_ctx *ctx)
{
    return (SSL_CTX *)ctx;
}

/* ---- configuration ---------------------------------------------------------- */

static const struct tn_conf_enum e_version[] = {{"1.2", TN_TLS_V1_2},
                                                {"TLSv1.2", TN_TLS_V1_2},
                                                {"1.3", TN_TLS_V1_3},
                                                {"TLSv1.3", TN_TLS_V1_3},
                                                {NULL, 0}};

const struct tn_conf_cmd tn_tls_conf_table[] = {
    {"cert", TN_CONF_PATH, offsetof(struct tn_tls_conf, cert), NULL, NULL, NULL},
    {"key", TN_CONF_PATH, offsetof(struct tn_tls_conf, key), NULL, NULL, NULL},
    {"ca", TN_CONF_PATH, offsetof(struct tn_tls_conf, ca), NULL, NULL, NULL},
    {"min_version", TN_CONF_ENUM, offsetof(struct tn_tls_conf, min_version), e_version, NULL, NULL},
    {"ciphers", TN_CONF_STRING, offsetof(struct tn_tls_conf, ciphers), NULL, NULL, NULL},
    TN_CONF_END};

void tn_tls_conf_default(struct tn_tls_conf *tc)
{
    memset(tc, 0, sizeof(*tc));
    tc->min_version = TN_TLS_V1_2;
}

int tn_tls_conf_enabled(const struct tn_tls_conf *tc)
{
    return tc && tc->cert != NULL;
}

int tn_tls_conf_check(struct tn_conf *cf, const struct tn_conf_node *node,
                      const struct tn_conf_cmd *cmd, void *conf)
{
    const struct tn_tls_conf *tc = (const struct tn_tls_conf *)((char *)conf + cmd->offset);
    char err[512];
    struct tn_tls_ctx *ctx;

    if (!tc->cert && !tc->key && !tc->ca)
        return 0;
    ctx = tn_tls_ctx_new(tc, err, sizeof(err));
    if (!ctx)
        return tn_conf_error(cf, node, "%s", err);
    tn_tls_ctx_free(ctx);
    return 0;
}

/* ---- contexts -------------------------------------------------------------- */

/* OpenSSL's most relevant complaint (the last queued), then clear the queue. */
static const char *ssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();

    if (e == 0)
        snprintf(buf, len, "unknown error");
    else
        ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return buf;
}

static int ctx_fail(SSL_CTX *ctx, char *err, size_t errlen, const char *what, const char *file)
{
    char reason[256];

    ssl_reason(reason, sizeof(reason));
    if (file)
        snprintf(err, errlen, "%s %s: %s", what, file, reason);
    else
        snprintf(err, errlen, "%s: %s", what, reason);
    SSL_CTX_free(ctx);
    return -1;
}

static int ctx_verify(SSL_CTX *ctx, const char *ca, char *err, size_t errlen)
{
    STACK_OF(X509_NAME) * names;

    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
        return ctx_fail(ctx, err, errlen, "cannot load the CA file", ca);
    names = SSL_load_client_CA_file(ca);
    if (!names)
        return ctx_fail(ctx, err, errlen, "no CA names in", ca);
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return 0;
}

/* Our certificate (chain) and its key; frees ctx on failure. */
static int ctx_identity(SSL_CTX *ctx, const char *cert, const char *key, char *err, size_t errlen)
{
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        return ctx_fail(ctx, err, errlen, "cannot load the certificate", cert);
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        return ctx_fail(ctx, err, errlen, "cannot load the key", key);
    if (SSL_CTX_check_private_key(ctx) != 1)
        return ctx_fail(ctx, err, errlen, "the key does not match the certificate", key);
    return 0;
}

struct tn_tls_ctx *tn_tls_ctx_new(const struct tn_tls_conf *tc, char *err, size_t errlen)
{
    SSL_CTX *ctx;
    int minv = tc->min_version == TN_TLS_V1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;

    if (!tc->cert || !tc->key) {
        snprintf(err, errlen, "tls needs both cert and key");
        return NULL;
    }
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ctx_fail(NULL, err, errlen, "cannot create a TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, minv);
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
    /* conn.c hands SSL_write a buffer that may move between retries */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    if (tc->ciphers && SSL_CTX_set_cipher_list(ctx, tc->ciphers) != 1) {
        ctx_fail(ctx, err, errlen, "no usable cipher in", tc->ciphers);
        return NULL;
    }
    if (ctx_identity(ctx, tc->cert, tc->key, err, errlen) != 0)
        return NULL;
    if (tc->ca && ctx_verify(ctx, tc->ca, err, errlen) != 0)
        return NULL;
    return (struct tn_tls_ctx *)ctx;
}

void tn_tls_ctx_free(struct tn_tls_ctx *ctx)
{
    if (ctx)
        SSL_CTX_free(ssl_ctx(ctx));
}

struct tn_tls_ctx *tn_tls_ctx_ref(struct tn_tls_ctx *ctx)
{
    SSL_CTX_up_ref(ssl_ctx(ctx));
    return ctx;
}

/* ---- client contexts ------------------------------------------------------------ */

#define OFFC(f) offsetof(struct tn_tls_client_conf, f)
const struct tn_conf_cmd tn_tls_client_conf_table[] = {
    {"enabled", TN_CONF_BOOL, OFFC(enabled), NULL, NULL, NULL},
    {"ca", TN_CONF_PATH, OFFC(ca), NULL, NULL, NULL},
    {"cert", TN_CONF_PATH, OFFC(cert), NULL, NULL, NULL},
    {"key", TN_CONF_PATH, OFFC(key), NULL, NULL, NULL},
    {"server_name", TN_CONF_STRING, OFFC(server_name), NULL, NULL, NULL},
    {"verify", TN_CONF_BOOL, OFFC(verify), NULL, NULL, NULL},
    {"min_version", TN_CONF_ENUM, OFFC(min_version), e_version, NULL, NULL},
    {"ciphers", TN_CONF_STRING, OFFC(ciphers), NULL, NULL, NULL},
    {"handshake_timeout", TN_CONF_DURATION, OFFC(handshake_timeout), NULL, NULL, NULL},
    TN_CONF_END};

void tn_tls_client_conf_default(struct tn_tls_client_conf *tc)
{
    memset(tc, 0, sizeof(*tc));
    tc->verify = 1;
    tc->min_version = TN_TLS_V1_2;
    tc->handshake_timeout = 10 * 1000;
}

int tn_tls_client_conf_check(struct tn_conf *cf, const struct tn_conf_node *node,
                             const struct tn_conf_cmd *cmd, void *conf)
{
    const struct tn_tls_client_conf *tc =
        (const struct tn_tls_client_conf *)((char *)conf + cmd->offset);
    char err[512];
    struct tn_tls_ctx *ctx;

    if (tc->handshake_timeout < 0)
        return tn_conf_error(cf, node, "handshake_timeout must not be negative");
    ctx = tn_tls_client_ctx_new(tc, err, sizeof(err));
    if (!ctx)
        return tn_conf_error(cf, node, "%s", err);
    tn_tls_ctx_free(ctx);
    return 0;
}

/* What a client context carries beyond OpenSSL's own settings, kept in
 * the SSL_CTX's ex_data (freed with it); its presence marks the context as
 * a client one. */
struct client_opts {
    int64_t handshake_ms;
    char server_name[256]; /* "" none */
};

static int client_idx = -1;

static void client_opts_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                             void *argp)
{
    free(ptr);
}

static struct client_opts *client_opts(struct tn_tls_ctx *ctx)
{
    return client_idx < 0 ? NULL : SSL_CTX_get_ex_data(ssl_ctx(ctx), client_idx);
}

static int client_opts_attach(SSL_CTX *ctx, const struct tn_tls_client_conf *tc)
{
    struct client_opts *o;

    if (client_idx < 0)
        client_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, client_opts_free);
    if (client_idx < 0 || !(o = calloc(1, sizeof(*o))))
        return -1;
    o->handshake_ms = tc->handshake_timeout;
    if (tc->server_name)
        snprintf(o->server_name, sizeof(o->server_name), "%s", tc->server_name);
    if (SSL_CTX_set_ex_data(ctx, client_idx, o) != 1) {
        free(o);
        return -1;
    }
    return 0;
}

static int client_identity(SSL_CTX *ctx, const struct tn_tls_client_conf *tc, char *err,
                           size_t errlen)
{
    if (!tc->cert != !tc->key) {
        snprintf(err, errlen, "a client certificate needs both cert and key");
        SSL_CTX_free(ctx);
        return -1;
    }
    return tc->cert ? ctx_identity(ctx, tc->cert, tc->key, err, errlen) : 0;
}

struct tn_tls_ctx *tn_tls_client_ctx_new(const struct tn_tls_client_conf *tc, char *err,
                                         size_t errlen)
{
    SSL_CTX *ctx;
    int minv = tc->min_version == TN_TLS_V1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;

    ERR_clear_error();
    if (!(ctx = SSL_CTX_new(TLS_client_method()))) {
        ctx_fail(NULL, err, errlen, "cannot create a TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, minv);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    if (tc->ciphers && SSL_CTX_set_cipher_list(ctx, tc->ciphers) != 1) {
        ctx_fail(ctx, err, errlen, "no usable cipher in", tc->ciphers);
        return NULL;
    }
    if (tc->verify) {
        if (tc->ca && SSL_CTX_load_verify_locations(ctx, tc->ca, NULL) != 1) {
            ctx_fail(ctx, err, errlen, "cannot load the CA file", tc->ca);
            return NULL;
        }
        if (!tc->ca && SSL_CTX_set_default_verify_paths(ctx) != 1) {
            ctx_fail(ctx, err, errlen, "cannot load the system's CA paths", NULL);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    if (client_identity(ctx, tc, err, errlen) != 0)
        return NULL;
    if (client_opts_attach(ctx, tc) != 0) {
        snprintf(err, errlen, "out of memory");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return (struct tn_tls_ctx *)ctx;
}

int tn_tls_ctx_is_client(struct tn_tls_ctx *ctx)
{
    return ctx && client_opts(ctx) != NULL;
}

int64_t tn_tls_ctx_handshake_ms(struct tn_tls_ctx *ctx)
{
    struct client_opts *o = client_opts(ctx);
    return o ? o->handshake_ms : 0;
}

/* ---- sessions --------------------------------------------------------------- */

struct tn_tls_sess {
    SSL *ssl;
    BIO *rb, *wb;    /* ciphertext from the peer / for the peer (owned by ssl) */
    int done;        /* handshake finished */
    int peer_closed; /* close_notify received */
    int failed;      /* a fatal error: no close_notify on the way out */
};

struct tn_tls_sess *tn_tls_sess_new(struct tn_tls_ctx *ctx)
{
    struct tn_tls_sess *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->ssl = SSL_new(ssl_ctx(ctx));
    s->rb = BIO_new(BIO_s_mem());
    s->wb = BIO_new(BIO_s_mem());
    if (!s->ssl || !s->rb || !s->wb) {
        SSL_free(s->ssl);
        BIO_free(s->rb);
        BIO_free(s->wb);
        free(s);
        ERR_clear_error();
        return NULL;
    }
    /* an empty input BIO means "more to come", not end of file */
    BIO_set_mem_eof_return(s->rb, -1);
    SSL_set_bio(s->ssl, s->rb, s->wb);
    SSL_set_accept_state(s->ssl);
    return s;
}

/* The host part of "host:port", "[v6]:port" (brackets dropped); "" for
 * unix: addresses. */
static void addr_host(const char *addr, char *host, size_t len)
{
    const char *end;

    host[0] = '\0';
    if (!addr || strncmp(addr, "unix:", 5) == 0)
        return;
    if (addr[0] == '[' && (end = strchr(addr, ']')) != NULL) {
        addr++;
    } else if (!(end = strrchr(addr, ':'))) {
        end = addr + strlen(addr);
    }
    if ((size_t)(end - addr) < len)
        snprintf(host, len, "%.*s", (int)(end - addr), addr);
}

/* The name the server is checked against: an IP literal is matched with
 * the certificate's IP addresses and never sent as SNI (RFC 6066). */
static int sess_peer_name(SSL *ssl, const char *name)
{
    unsigned char bin[16];
    int verify = SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER;

    if (!name[0])
        return 0;
    if (inet_pton(AF_INET, name, bin) == 1 || inet_pton(AF_INET6, name, bin) == 1)
        return verify && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) != 1 ? -1 : 0;
    if (SSL_set_tlsext_host_name(ssl, name) != 1)
        return -1;
    return verify && SSL_set1_host(ssl, name) != 1 ? -1 : 0;
}

struct tn_tls_sess *tn_tls_sess_client(struct tn_tls_ctx *ctx, const char *server_name,
                                       const char *addr)
{
    struct client_opts *o = client_opts(ctx);
    struct tn_tls_sess *s;
    char host[256];

    if (!o || !(s = tn_tls_sess_new(ctx)))
        return NULL;
    if (server_name)
        snprintf(host, sizeof(host), "%s", server_name);
    else if (o->server_name[0])
        snprintf(host, sizeof(host), "%s", o->server_name);
    else
        addr_host(addr, host, sizeof(host));
    SSL_set_connect_state(s->ssl);
    if (sess_peer_name(s->ssl, host) != 0) {
        ERR_clear_error();
        tn_tls_sess_free(s);
        return NULL;
    }
    return s;
}

void tn_tls_sess_free(struct tn_tls_sess *s)
{
    if (!s)
        return;
    SSL_free(s->ssl);
    free(s);
}

int tn_tls_sess_feed(struct tn_tls_sess *s, const void *p, size_t n)
{
    while (n > 0) {
        int chunk = n > INT_MAX ? INT_MAX : (int)n;
        int w = BIO_write(s->rb, p, chunk);
        if (w <= 0)
            return TN_ENOMEM;
        p = (const char *)p + w;
        n -= (size_t)w;
    }
    return 0;
}

/* A failed SSL call: 0 when it only needs more input, else the error
 * (logged by the caller with tn_tls_sess_error's text). */
static int sess_status(struct tn_tls_sess *s, int r, char *why, size_t whylen)
{
    int e = SSL_get_error(s->ssl, r);

    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    if (e == SSL_ERROR_ZERO_RETURN) {
        s->peer_closed = 1;
        return TN_EPEER;
    }
    s->failed = 1;
    if (e == SSL_ERROR_SSL) {
        long vr = SSL_get_verify_result(s->ssl);
        ssl_reason(why, whylen);
        /* "certificate verify failed" says little: add what was wrong */
        if (vr != X509_V_OK && strlen(why) + 3 < whylen)
            snprintf(why + strlen(why), whylen - strlen(why), " (%s)",
                     X509_verify_cert_error_string(vr));
    } else
        snprintf(why, whylen, "TLS error %d", e);
    return TN_EPROTO;
}

int tn_tls_sess_read(struct tn_tls_sess *s, struct tn_buf *in, size_t room, size_t *got, char *why,
                     size_t whylen)
{
    int r;

    *got = 0;
    if (s->peer_closed)
        return TN_EPEER;
    if (!s->done) {
        ERR_clear_error();
        r = SSL_do_handshake(s->ssl);
        if (r != 1)
            return sess_status(s, r, why, whylen);
        s->done = 1;
    }
    while (room > 0) {
        size_t want = room < TLS_CHUNK ? room : TLS_CHUNK;
        if (tn_buf_reserve(in, want) != 0)
            return TN_ENOMEM;
        ERR_clear_error();
        r = SSL_read(s->ssl, tn_buf_wptr(in), (int)want);
        if (r <= 0) {
            int rc = sess_status(s, r, why, whylen);
            /* data before a close_notify is handed out first */
            return rc == TN_EPEER && *got > 0 ? 0 : rc;
        }
        tn_buf_commit(in, (size_t)r);
        *got += (size_t)r;
        room -= (size_t)r;
    }
    return 0;
}

int tn_tls_sess_more(const struct tn_tls_sess *s)
{
    /* a close_notify that came behind data is still to be reported */
    return s->peer_closed || SSL_pending(s->ssl) > 0 || BIO_ctrl_pending(s->rb) > 0;
}

int tn_tls_sess_done(const struct tn_tls_sess *s)
{
    return s->done;
}

int tn_tls_sess_write(struct tn_tls_sess *s, struct tn_buf *out, char *why, size_t whylen)
{
    while (s->done && tn_buf_rlen(out) > 0) {
        size_t len = tn_buf_rlen(out);
        int r;
        ERR_clear_error();
        r = SSL_write(s->ssl, tn_buf_rptr(out), len > INT_MAX ? INT_MAX : (int)len);
        if (r <= 0)
            return sess_status(s, r, why, whylen);
        tn_buf_consume(out, (size_t)r);
    }
    return 0;
}

int tn_tls_sess_drain(struct tn_tls_sess *s, struct tn_buf *raw)
{
    size_t n;

    while ((n = BIO_ctrl_pending(s->wb)) > 0) {
        int r;
        if (n > INT_MAX)
            n = INT_MAX;
        if (tn_buf_reserve(raw, n) != 0)
            return TN_ENOMEM;
        r = BIO_read(s->wb, tn_buf_wptr(raw), (int)n);
        if (r <= 0)
            break;
        tn_buf_commit(raw, (size_t)r);
    }
    return 0;
}

void tn_tls_sess_shutdown(struct tn_tls_sess *s)
{
    if (s->done && !s->failed) {
        ERR_clear_error();
        SSL_shutdown(s->ssl); /* queues our close_notify; the peer's is not awaited */
        ERR_clear_error();
    }
}

void tn_tls_sess_info(const struct tn_tls_sess *s, const char **version, const char **cipher)
{
    if (version)
        *version = SSL_get_version(s->ssl);
    if (cipher)
        *cipher = SSL_get_cipher_name(s->ssl);
}
