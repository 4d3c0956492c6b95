/*
 * conn.h -- non-blocking stream connections on the loop: listeners,
 * accepted and outgoing connections, per-connection buffers, back-pressure
 * and limits.
 *
 * Reads land in c->in; the handler's on_read consumes what it can with
 * tn_buf_consume(). Writes are appended to c->out and flushed when the
 * socket is writable: at most one writev per connection per loop iteration,
 * so many small replies cost one syscall. When c->out holds more than
 * out_high bytes the connection stops reading until it drains below half of
 * that (the peer that does not read cannot make us buffer without bound);
 * past out_max it is closed with TN_ELIMIT. c->in past in_max closes it
 * with TN_ETOOBIG. Loop thread only.
 */
#ifndef TERND_CONN_H
#define TERND_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <ternd/buf.h>
#include <ternd/conf.h>
#include <ternd/core.h>

struct tn_conn;
struct tn_listener;

struct tn_conn_handler {
    /* New bytes are in c->in. May write, close, or switch handlers. */
    void (*on_read)(struct tn_conn *c);
    /* Outgoing connections only: the connect finished (status 0) or failed
     * (negative; the connection is then closed right after, without
     * on_close). */
    void (*on_connect)(struct tn_conn *c, int status);
    /* c->out became empty after having data (optional). */
    void (*on_drain)(struct tn_conn *c);
    /* The connection is closing: reason 0 for a local close, TN_EPEER for
     * EOF, TN_ETIMEDOUT, TN_ELIMIT, TN_ETOOBIG or -errno. Free c->data
     * here. c is freed after it returns. */
    void (*on_close)(struct tn_conn *c, int reason);
};

struct tn_conn_limits {
    size_t in_max;   /* largest c->in before closing (default 1 MiB) */
    size_t out_high; /* stop reading above this many queued bytes (default 1 MiB) */
    size_t out_max;  /* close when queued output exceeds this (default 64 MiB) */
    size_t read_size;/* bytes asked of each read(2) (default 16 KiB) */
};

struct tn_conn {
    int fd;
    uint64_t id;                        /* unique in the process */
    struct tn_buf in;
    struct tn_buf out;
    const struct tn_conn_handler *h;
    void *data;                         /* the handler's per-connection state */
    struct tn_listener *listener;       /* NULL for outgoing connections */
    struct tn_conn_limits lim;
    char peer[TN_ADDR_TEXT_MAX];        /* "ip:port" of the peer */
    int64_t connected_ms;               /* tn_now_ms() at accept/connect */
    uint64_t bytes_in, bytes_out;
    void *priv;                         /* core-private; do not touch */
};

/* Called for each accepted connection: set c->h and c->data, return 0; or
 * return a negative code to refuse (the socket is closed, no on_close). */
typedef int (*tn_accept_pt)(struct tn_listener *l, struct tn_conn *c, void *ud);

struct tn_listen_opts {
    size_t max_conns;          /* 0: unlimited (the process-wide limit still applies) */
    int backlog;               /* 0: 511 */
    struct tn_conn_limits lim; /* zero fields take the defaults */
    const char *name;          /* for logs and stats, e.g. "broker.tcp" */
};

/* Bind, listen and start accepting. Returns NULL and sets *err (TN_* or
 * -errno) on failure, with the reason logged. SO_REUSEADDR is set. */
TN_API struct tn_listener *tn_listen(const struct tn_addr *addr,
                                     const struct tn_listen_opts *opts,
                                     tn_accept_pt on_accept, void *ud, int *err);
/* Stop accepting and close the listening socket. Established connections
 * are not touched. */
TN_API void tn_listener_close(struct tn_listener *l);
/* Connections currently open from this listener. */
TN_API size_t tn_listener_conns(const struct tn_listener *l);
/* The bound address as text (useful when port 0 was asked). */
TN_API const char *tn_listener_addr(const struct tn_listener *l);
/* The listener's user data as given to tn_listen. */
TN_API void *tn_listener_data(const struct tn_listener *l);

/* Start a non-blocking connect; h->on_connect reports the outcome. Returns
 * NULL and *err when the connect cannot even start. */
TN_API struct tn_conn *tn_connect(const struct tn_addr *addr,
                                  const struct tn_conn_handler *h, void *data,
                                  const struct tn_conn_limits *lim, int *err);

/* Queue bytes for the peer (copied). 0, TN_ECLOSED, TN_ENOMEM, or TN_ELIMIT
 * (the connection is then being closed). */
TN_API int tn_conn_write(struct tn_conn *c, const void *p, size_t n);
TN_API int tn_conn_writev(struct tn_conn *c, const struct iovec *iov, int n);
/* Bytes queued and not yet written. */
TN_API size_t tn_conn_pending(const struct tn_conn *c);
/* Close now (reason as in on_close; pending output is dropped), or once the
 * pending output is written (tn_conn_close_after_write; reading stops). The
 * close callback runs later in the same loop iteration, never from inside
 * this call, so it is safe to call from on_read. */
TN_API void tn_conn_close(struct tn_conn *c, int reason);
TN_API void tn_conn_close_after_write(struct tn_conn *c);
/* Application back-pressure: stop/resume reading from the socket. */
TN_API void tn_conn_pause_read(struct tn_conn *c);
TN_API void tn_conn_resume_read(struct tn_conn *c);
/* Close with TN_ETIMEDOUT when nothing is read for ms (0 disables). */
TN_API void tn_conn_set_idle_timeout(struct tn_conn *c, int64_t ms);
/* Hand the connection to another handler (protocol upgrade). Unread bytes
 * stay in c->in; on_read of the new handler runs if any are there. */
TN_API void tn_conn_set_handler(struct tn_conn *c, const struct tn_conn_handler *h,
                                void *data);
/* Is the connection closing (a close was requested)? */
TN_API int tn_conn_closing(const struct tn_conn *c);

/*
 * Events (service.h) for plugins watching clients: TN_CONN_OPEN_EVENT once
 * an accepted connection has its handler, TN_CONN_CLOSE_EVENT after that
 * handler's on_close (c->data is then gone; c->peer, c->listener,
 * connected_ms and the byte counts are still there). The argument is the
 * struct tn_conn *, valid only during the call; return values are ignored.
 * Outgoing connections are not announced. Loop thread.
 */
#define TN_CONN_OPEN_EVENT "conn.open"
#define TN_CONN_CLOSE_EVENT "conn.close"

/* Process-wide limit on open connections (daemon.max_connections); accepts
 * beyond it are refused and counted. */
TN_API size_t tn_conns_open(void);

#endif
