/*
 * http.h -- the shared HTTP/1.1 server: keep-alive, pipelining (answers go
 * out in request order), body and header limits, chunked replies, protocol
 * upgrade. Modules create a server on their own address and register routes;
 * the core's admin server (daemon.admin_listen) is one such server.
 *
 * Automatic answers: 400 for unparsable requests, 404 for unknown paths, 405
 * (with Allow) for a known path with another method, 413 for a body over
 * max_body_size, 431 for headers over max_header_size, 408 when a request
 * does not arrive in time. HEAD runs the GET handler and drops the body.
 * Loop thread only.
 */
#ifndef TERND_HTTP_H
#define TERND_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <ternd/conf.h>
#include <ternd/conn.h>
#include <ternd/core.h>

struct tn_http_server;
struct tn_http_req;

enum {
    TN_HTTP_GET = 1 << 0,
    TN_HTTP_POST = 1 << 1,
    TN_HTTP_PUT = 1 << 2,
    TN_HTTP_DELETE = 1 << 3,
    TN_HTTP_HEAD = 1 << 4,
    TN_HTTP_OPTIONS = 1 << 5,
    TN_HTTP_PATCH = 1 << 6,
    TN_HTTP_ANY = 0x7f
};

/* Handler return values: done (a reply was sent, or will be sent now), or
 * the reply comes later (keep r; set r->on_abort to learn if the client
 * goes away first). A handler that returns TN_OK without replying gets a
 * 500 answer. */
#define TN_HTTP_DONE 0
#define TN_HTTP_ASYNC 1
typedef int (*tn_http_handler_pt)(struct tn_http_req *r, void *ud);

struct tn_http_limits {
    size_t max_header_size;     /* request line + headers (default 8 KiB) */
    size_t max_body_size;       /* default 5 MiB */
    int64_t keepalive_timeout;  /* ms idle between requests (default 65 s) */
    int64_t request_timeout;    /* ms to receive one whole request (default 30 s) */
    size_t max_conns;           /* 0: unlimited */
    size_t max_pipeline;        /* requests parsed ahead of answers (default 16) */
};

struct tn_http_header {
    const char *name;
    const char *value;
};

struct tn_http_req {
    int method;               /* TN_HTTP_* */
    const char *method_name;  /* "GET", ... */
    const char *path;         /* decoded path without the query, NUL-terminated */
    const char *query;        /* raw query after '?', or NULL */
    const char *body;         /* NUL-terminated for convenience; body_len bytes */
    size_t body_len;
    const struct tn_http_header *headers;
    size_t nheaders;
    int http_major, http_minor;
    int keep_alive;           /* the connection stays open after the reply */
    struct tn_conn *conn;     /* the client connection (for peer, id) */
    struct tn_http_server *server;
    void *data;               /* free for the handler (ASYNC replies) */
    /* Set by a handler that returned TN_HTTP_ASYNC: called if the client
     * disconnects before the reply; r must not be used after it. */
    void (*on_abort)(struct tn_http_req *r);
};

/* The process-wide limits (the `daemon.http` section): a server created
 * with NULL limits gets them, and every zero field of given limits is
 * taken from them. Copy and adjust to derive a module's own. */
TN_API const struct tn_http_limits *tn_http_defaults(void);

TN_API struct tn_http_server *tn_http_server_create(const char *name,
                                                    const struct tn_addr *addr,
                                                    const struct tn_http_limits *lim,
                                                    int *err);
/* Serve HTTPS: every connection accepted from now on handshakes first (the
 * server's listener takes its own reference to ctx; see ternd/tls.h). */
struct tn_tls_ctx;
TN_API void tn_http_server_set_tls(struct tn_http_server *s, struct tn_tls_ctx *ctx);
/* Stop listening and close idle connections; requests in progress finish. */
TN_API void tn_http_server_close(struct tn_http_server *s);
TN_API void tn_http_server_free(struct tn_http_server *s);
TN_API const char *tn_http_server_addr(const struct tn_http_server *s);

/* Route an exact path ("/pub"), or a prefix when the path ends in '*'
 * ("/config/" followed by a star). Exact routes win over prefixes; longer prefixes win. The
 * same path may be registered again with other methods. 0 or TN_EEXIST. */
TN_API int tn_http_route(struct tn_http_server *s, unsigned methods, const char *path,
                         tn_http_handler_pt h, void *ud);

/* Case-insensitive header lookup; NULL if absent. */
TN_API const char *tn_http_header(const struct tn_http_req *r, const char *name);
/* Query argument, %-decoded ('+' is a space). Returns its length and writes
 * a NUL-terminated copy into out (truncated to outsz-1), or -1 if absent. */
TN_API long tn_http_arg(const struct tn_http_req *r, const char *name, char *out, size_t outsz);
/* Same for any query-string text (e.g. a form body). */
TN_API long tn_http_query_get(const char *query, const char *name, char *out, size_t outsz);

/* Add a header to the coming reply (copied). */
TN_API void tn_http_add_header(struct tn_http_req *r, const char *name, const char *value);
/* Send a whole reply (Content-Length set). r is finished after this. */
TN_API void tn_http_reply(struct tn_http_req *r, int status, const char *content_type,
                          const void *body, size_t len);
TN_API void tn_http_reply_str(struct tn_http_req *r, int status, const char *content_type,
                              const char *body);
/* Chunked reply: start, any number of chunks, end. r is finished after end. */
TN_API void tn_http_chunk_start(struct tn_http_req *r, int status, const char *content_type);
TN_API void tn_http_chunk(struct tn_http_req *r, const void *p, size_t n);
TN_API void tn_http_chunk_end(struct tn_http_req *r);

/* Take the connection over (WebSocket): answers nothing, stops the HTTP
 * layer and hands c to h with data; bytes after the request stay in c->in.
 * Only the last request of the pipeline may upgrade. Returns the conn. */
TN_API struct tn_conn *tn_http_upgrade(struct tn_http_req *r, const struct tn_conn_handler *h,
                                       void *data);

/* Standard reason phrase for a status code. */
TN_API const char *tn_http_status_text(int status);

#endif
