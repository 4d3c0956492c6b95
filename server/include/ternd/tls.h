/*
 * tls.h -- TLS (OpenSSL) on stream connections: the `tls:` section a module
 * embeds for a listener, a server context built from it, and the calls that
 * put TLS on a listener (every accepted connection handshakes first) or on
 * an established connection (a protocol's upgrade, e.g. NSQ's tls_v1 after
 * IDENTIFY). The client side: a `tls:` client section, a client context,
 * and TLS on a connection ternd opens with tn_connect. Handlers see
 * plaintext in c->in and write plaintext with tn_conn_write; limits and
 * back-pressure count the encrypted bytes queued too. Loop thread only.
 */
#ifndef TERND_TLS_H
#define TERND_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <ternd/conf.h>
#include <ternd/conn.h>
#include <ternd/core.h>

/* The `tls:` section (apply tn_tls_conf_table as a TN_CONF_SECTION). */
struct tn_tls_conf {
    char *cert;      /* PEM certificate (chain) file; NULL: TLS is off */
    char *key;       /* PEM private key file (required with cert) */
    char *ca;        /* PEM CA file: clients must present a certificate it
                        signed; NULL: client certificates are not asked for */
    int min_version; /* TN_TLS_V1_2 (default) or TN_TLS_V1_3 */
    char *ciphers;   /* OpenSSL cipher list for TLS 1.2; NULL: OpenSSL's default */
};
enum { TN_TLS_V1_2 = 12, TN_TLS_V1_3 = 13 };

TN_API extern const struct tn_conf_cmd tn_tls_conf_table[];
TN_API void tn_tls_conf_default(struct tn_tls_conf *tc);
/* Non-zero when the section turns TLS on (a cert is set). */
TN_API int tn_tls_conf_enabled(const struct tn_tls_conf *tc);
/* The check for a `tls` key of a table (a tn_conf_check_pt): builds a
 * context from the section to prove the files load and match, reporting
 * problems at the section. 0 or TN_ECONF. Nothing to do when TLS is off:
 *   {"tls", TN_CONF_SECTION, OFF(tls), tn_tls_conf_table, NULL, tn_tls_conf_check} */
TN_API int tn_tls_conf_check(struct tn_conf *cf, const struct tn_conf_node *node,
                             const struct tn_conf_cmd *cmd, void *conf);

/* A server context (certificate, key, verification, versions). Reference
 * counted: listeners and connections using it hold their own reference, so
 * the creator may free its reference at any time. */
struct tn_tls_ctx;
/* NULL with a reason in err (naming the file and OpenSSL's complaint). */
TN_API struct tn_tls_ctx *tn_tls_ctx_new(const struct tn_tls_conf *tc, char *err, size_t errlen);
TN_API void tn_tls_ctx_free(struct tn_tls_ctx *ctx); /* NULL ok */

/* Every connection accepted from now on starts with a TLS handshake (the
 * listener takes a reference to ctx). A failed handshake is logged and the
 * connection closed with TN_EPROTO; the handler's on_close still runs. */
TN_API void tn_listener_set_tls(struct tn_listener *l, struct tn_tls_ctx *ctx);

/* Upgrade an established (accepted) connection to TLS, server side: what
 * is already queued in c->out goes out in plaintext first (a protocol's
 * "OK, switching" answer), everything written after this call is sent
 * encrypted once the handshake is done; unread bytes in c->in are taken as
 * the start of the handshake. 0, TN_EINVAL (already TLS, or closing),
 * TN_ENOMEM. */
TN_API int tn_conn_start_tls(struct tn_conn *c, struct tn_tls_ctx *ctx);

/* Non-zero when c runs TLS with a finished handshake; then *version and
 * *cipher (either may be NULL) point to static names ("TLSv1.3", ...). */
TN_API int tn_conn_tls(const struct tn_conn *c, const char **version, const char **cipher);

/* ---- the client side ---------------------------------------------------------- */

/* The client `tls:` section (apply tn_tls_client_conf_table as a
 * TN_CONF_SECTION). The peer's certificate chain is verified against ca
 * (the system's default CA paths when ca is not set) and its name against
 * server_name, unless verify is off. */
struct tn_tls_client_conf {
    int enabled;               /* on: the connections it is for use TLS (a module
                                  may decide otherwise, e.g. per https:// URL) */
    char *ca;                  /* PEM CA file; NULL: the system's default CAs */
    char *cert;                /* PEM client certificate (chain) for mutual TLS */
    char *key;                 /* its private key (required with cert) */
    char *server_name;         /* SNI and the name checked; NULL: the host of the address */
    int verify;                /* default on: chain and name are checked */
    int min_version;           /* TN_TLS_V1_2 (default) or TN_TLS_V1_3 */
    char *ciphers;             /* OpenSSL cipher list for TLS 1.2; NULL: the default */
    int64_t handshake_timeout; /* ms for connect + handshake (default 10s; 0: none) */
};

TN_API extern const struct tn_conf_cmd tn_tls_client_conf_table[];
TN_API void tn_tls_client_conf_default(struct tn_tls_client_conf *tc);
/* The check for a client `tls` key (a tn_conf_check_pt): builds a client
 * context to prove the files load, reporting problems at the section. */
TN_API int tn_tls_client_conf_check(struct tn_conf *cf, const struct tn_conf_node *node,
                                    const struct tn_conf_cmd *cmd, void *conf);
/* A client context from the section (whether or not enabled is set);
 * reference counted like a server one. NULL with a reason in err. */
TN_API struct tn_tls_ctx *tn_tls_client_ctx_new(const struct tn_tls_client_conf *tc, char *err,
                                                size_t errlen);

/* Run TLS as the client on c, an outgoing connection from tn_connect whose
 * on_connect has not run yet (call it right after tn_connect). The handshake
 * follows the TCP connect, and on_connect(c, 0) only comes once it is done
 * and the peer verified: writes made before are held until then. A failed
 * handshake (unknown CA, name mismatch, protocol error, the peer closing)
 * is logged with OpenSSL's reason and reported as on_connect(c, TN_EPROTO)
 * (or TN_EPEER, -errno), as is a handshake_timeout as TN_ETIMEDOUT when
 * the caller set no idle timeout of its own (an idle timeout that fires
 * before the handshake ended is reported the same way); the connection is
 * then closed without on_close, like a failed connect. A close the caller
 * asks for meanwhile gets on_close as usual. server_name: the name sent
 * (SNI) and checked; NULL takes the context's server_name, else the host
 * of the address tn_connect was given (an IP is checked against the
 * certificate's IP addresses and not sent as SNI; unix: addresses check no
 * name). The connection takes a reference to ctx. 0, TN_EINVAL (not an
 * outgoing connection still connecting, already TLS, not a client
 * context), TN_ENOMEM. */
TN_API int tn_conn_connect_tls(struct tn_conn *c, struct tn_tls_ctx *ctx, const char *server_name);

#endif
