/*
 * conn.c -- listeners and non-blocking stream connections on the libev loop
 * (see ternd/conn.h). Writes and closes are deferred to one ev_prepare
 * watcher that runs after every callback of a loop iteration: each dirty
 * connection gets one write per iteration, and on_close never runs from
 * inside the call that asked for the close. A TLS connection (tls.c does
 * the crypto over memory BIOs) reads ciphertext here, hands plaintext to
 * c->in, encrypts c->out into a wire buffer and sends that instead.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core.h"

#define CONN_WHO "conn"
#define ACCEPT_BATCH 64          /* accepts per readiness event */
#define ACCEPT_PAUSE 0.1         /* seconds to back off on EMFILE/ENFILE */
#define REFUSE_LOG_MS 1000       /* at most one "refused" line per second */
#define OUT_KEEP (64 * 1024)     /* output capacity kept after a drain */
#define DIRECT_WRITE (64 * 1024) /* writev at once, uncopied, from this size */
#define TLS_READ (16 * 1024)     /* ciphertext bytes per read(2) */

/* Deferred work flags (conn_impl.pend). */
enum { PEND_FLUSH = 1, PEND_DISPATCH = 2, PEND_CLOSE = 4 };

struct tn_listener {
    int fd;
    ev_io io;
    ev_timer pause; /* accept back-off after EMFILE */
    tn_accept_pt on_accept;
    void *ud;
    size_t max_conns;
    struct tn_conn_limits lim;
    char name[TN_ADDR_TEXT_MAX];
    char addr[TN_ADDR_TEXT_MAX];
    char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    dev_t unix_dev; /* the socket file we created, unlinked at close */
    ino_t unix_ino;
    size_t nconns;
    int closed;
    uint64_t refused;
    int64_t refuse_logged_ms;
    struct tn_tls_ctx *tls; /* accepted connections handshake first */
};

struct conn_impl {
    struct tn_conn c;
    ev_io rio, wio;
    ev_timer idle;
    int64_t idle_ms;
    int64_t last_read_ms;
    struct conn_impl *next_pend; /* the deferred-work list */
    unsigned pend;
    unsigned linked : 1;
    unsigned closing : 1;
    unsigned close_after : 1;  /* close once out is written */
    unsigned app_paused : 1;   /* tn_conn_pause_read */
    unsigned bp_paused : 1;    /* out above out_high */
    unsigned connecting : 1;   /* outgoing, connect not finished */
    unsigned silent_close : 1; /* no on_close (failed connect) */
    unsigned hs_wait : 1;      /* TLS client: on_connect waits for the handshake */
    unsigned hs_timer : 1;     /* the idle timer runs the handshake deadline */
    int close_reason;
    int64_t hs_deadline_ms;
    struct tn_tls_sess *tls; /* NULL: plaintext */
    struct tn_buf wire;      /* TLS: bytes for the socket, in order */
};

static struct {
    int ready;
    ev_prepare prep;
    struct conn_impl *pend_head, *pend_tail;
    int referenced; /* holds a loop reference for pending work */
    size_t open;
    size_t limit;
    uint64_t next_id;
    uint64_t refused;
    int64_t refuse_logged_ms;
} cs;

TN_STAT_DECL(st_accepted, "ternd_conn_accepted_total", TN_STAT_COUNTER, "Connections accepted");
TN_STAT_DECL(st_refused, "ternd_conn_refused_total", TN_STAT_COUNTER,
             "Connections refused by a connection limit");
TN_STAT_DECL(st_bytes_in, "ternd_conn_read_bytes_total", TN_STAT_COUNTER,
             "Bytes read from connections");
TN_STAT_DECL(st_bytes_out, "ternd_conn_written_bytes_total", TN_STAT_COUNTER,
             "Bytes written to connections");
TN_STAT_DECL(st_overflow, "ternd_conn_overflow_total", TN_STAT_COUNTER,
             "Connections closed for exceeding a buffer limit");

static void pending_cb(struct ev_loop *loop, ev_prepare *w, int revents);

static inline struct conn_impl *impl_of(const struct tn_conn *c)
{
    return (struct conn_impl *)c->priv;
}

/* Bytes queued for the peer: plaintext not yet encrypted plus what waits
 * on the wire (TLS). */
static size_t pending_bytes(const struct conn_impl *ci)
{
    return tn_buf_rlen(&ci->c.out) + tn_buf_rlen(&ci->wire);
}

static void conns_init(void)
{
    if (cs.ready)
        return;
    cs.ready = 1;
    ev_prepare_init(&cs.prep, pending_cb);
    ev_prepare_start(tn_loop(), &cs.prep);
    /* The watcher alone must not keep the loop running; pending work
     * takes a reference of its own (see pend_add). */
    ev_unref(tn_loop());
    tn_stat_register(&st_accepted);
    tn_stat_register(&st_refused);
    tn_stat_register(&st_bytes_in);
    tn_stat_register(&st_bytes_out);
    tn_stat_register(&st_overflow);
}

void tn_conns_set_limit(size_t max_connections)
{
    cs.limit = max_connections;
}

size_t tn_conns_open(void)
{
    return cs.open;
}

/* ---- addresses ------------------------------------------------------------ */

/* "ip:port", "[ip6]:port" or "unix:/path" for a socket address. */
static void sockaddr_text(const struct sockaddr *sa, socklen_t len, char *out, size_t outsz)
{
    char ip[INET6_ADDRSTRLEN];

    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        snprintf(out, outsz, "%s:%u", ip, (unsigned)ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        snprintf(out, outsz, "[%s]:%u", ip, (unsigned)ntohs(in6->sin6_port));
    } else if (sa->sa_family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
        size_t max = len > offsetof(struct sockaddr_un, sun_path)
                         ? len - offsetof(struct sockaddr_un, sun_path)
                         : 0;
        snprintf(out, outsz, "unix:%.*s", (int)strnlen(un->sun_path, max), un->sun_path);
    } else {
        snprintf(out, outsz, "?");
    }
}

/* ---- deferred work -------------------------------------------------------- */

static void pend_add(struct conn_impl *ci, unsigned what)
{
    ci->pend |= what;
    if (ci->linked)
        return;
    ci->linked = 1;
    ci->next_pend = NULL;
    if (cs.pend_tail)
        cs.pend_tail->next_pend = ci;
    else
        cs.pend_head = ci;
    cs.pend_tail = ci;
    /* Keep the loop alive until the prepare watcher has run. */
    if (!cs.referenced) {
        cs.referenced = 1;
        ev_ref(tn_loop());
    }
}

static struct conn_impl *pend_pop(void)
{
    struct conn_impl *ci = cs.pend_head;

    if (!ci)
        return NULL;
    cs.pend_head = ci->next_pend;
    if (!cs.pend_head)
        cs.pend_tail = NULL;
    ci->linked = 0;
    ci->next_pend = NULL;
    return ci;
}

/* ---- reading and back-pressure -------------------------------------------- */

static void update_reading(struct conn_impl *ci)
{
    struct ev_loop *loop = tn_loop();
    int want =
        !ci->closing && !ci->close_after && !ci->app_paused && !ci->bp_paused && !ci->connecting;

    if (want && !ev_is_active(&ci->rio))
        ev_io_start(loop, &ci->rio);
    else if (!want && ev_is_active(&ci->rio))
        ev_io_stop(loop, &ci->rio);
}

static void deliver(struct conn_impl *ci)
{
    struct tn_conn *c = &ci->c;

    if (tn_buf_rlen(&c->in) > 0 && c->h && c->h->on_read)
        c->h->on_read(c);
    if (ci->closing)
        return;
    if (tn_buf_rlen(&c->in) > c->lim.in_max) {
        tn_log_debug(CONN_WHO, "%s: input over %zu bytes, closing", c->peer, c->lim.in_max);
        tn_stat_inc(&st_overflow);
        tn_conn_close(c, TN_ETOOBIG);
        return;
    }
    if (tn_buf_rlen(&c->in) == 0)
        tn_buf_shrink(&c->in, c->lim.read_size);
}

/* A failure found by the connection itself. A TLS client still in its
 * handshake reports it as a failed connect (on_connect, no on_close). */
static void conn_fail(struct conn_impl *ci, int reason)
{
    struct tn_conn *c = &ci->c;

    if (!ci->hs_wait || ci->closing) {
        tn_conn_close(c, reason);
        return;
    }
    ci->hs_wait = 0;
    ci->silent_close = 1;
    tn_conn_close(c, reason);
    if (c->h && c->h->on_connect)
        c->h->on_connect(c, reason);
}

static void eof(struct conn_impl *ci)
{
    /* A peer that half-closes after its request still gets the answer
     * already queued; anything else ends the connection now (as does a
     * TLS peer gone before its handshake ended: what waits for it cannot
     * be sent). */
    if (pending_bytes(ci) > 0 && !ci->closing && (!ci->tls || tn_tls_sess_done(ci->tls))) {
        ci->close_reason = TN_EPEER;
        tn_conn_close_after_write(&ci->c);
        return;
    }
    conn_fail(ci, TN_EPEER);
}

/* ---- TLS ------------------------------------------------------------------ */

/* Ciphertext the session produced (handshake, records, alerts) goes to the
 * wire buffer, flushed this iteration. */
static int tls_output(struct conn_impl *ci)
{
    if (tn_tls_sess_drain(ci->tls, &ci->wire) != 0)
        return TN_ENOMEM;
    if (tn_buf_rlen(&ci->wire) > 0 && !ev_is_active(&ci->wio))
        pend_add(ci, PEND_FLUSH);
    return 0;
}

static void tls_fail(struct conn_impl *ci, int rc, const char *why)
{
    if (rc == TN_EPEER) { /* close_notify: an orderly end of input */
        eof(ci);
        return;
    }
    /* a client that cannot reach its server securely is worth a warning;
     * a stranger failing our handshake is routine */
    if (rc == TN_EPROTO)
        tn_log(ci->c.listener ? TN_LOG_INFO : TN_LOG_WARN, CONN_WHO, "%s: TLS %s failed: %s",
               ci->c.peer, tn_tls_sess_done(ci->tls) ? "connection" : "handshake", why);
    tls_output(ci); /* the alert, sent on the way out */
    conn_fail(ci, rc);
}

/* The client's handshake is done: now the connect counts as finished. */
static void hs_connected(struct conn_impl *ci)
{
    struct tn_conn *c = &ci->c;
    const char *version = NULL;

    ci->hs_wait = 0;
    if (ci->hs_timer) {
        ci->hs_timer = 0;
        ev_timer_stop(tn_loop(), &ci->idle);
    }
    tn_tls_sess_info(ci->tls, &version, NULL);
    tn_log_debug(CONN_WHO, "%s: TLS (%s) established", c->peer, version);
    if (c->h->on_connect)
        c->h->on_connect(c, 0);
}

/* Decrypt what the session holds into c->in and hand it to the handler,
 * again while the session has more and the handler keeps taking it (no
 * read event announces plaintext already inside the session). redeliver:
 * c->in is handed over even without new bytes (after a resume, a handler
 * switch or an upgrade, as the plaintext path does). */
static void tls_pump(struct conn_impl *ci, int redeliver)
{
    struct tn_conn *c = &ci->c;
    char why[256] = "";
    int was_done = tn_tls_sess_done(ci->tls);

    while (!ci->closing) {
        size_t have = tn_buf_rlen(&c->in), got;
        size_t room = have > c->lim.in_max ? 1 : c->lim.in_max + 1 - have;
        int rc = tn_tls_sess_read(ci->tls, &c->in, room, &got, why, sizeof(why));

        if (rc == 0 && tls_output(ci) != 0)
            rc = TN_ENOMEM;
        if (!was_done && tn_tls_sess_done(ci->tls)) {
            was_done = 1; /* what the handler wrote meanwhile can go now */
            if (ci->hs_wait)
                hs_connected(ci);
            if (ci->closing)
                return;
            if (tn_buf_rlen(&c->out) > 0)
                pend_add(ci, PEND_FLUSH);
        }
        if (got > 0 || (redeliver && tn_buf_rlen(&c->in) > 0))
            deliver(ci);
        redeliver = 0;
        if (rc != 0) {
            if (!ci->closing)
                tls_fail(ci, rc, why);
            return;
        }
        if (got == 0 || ci->app_paused || !tn_tls_sess_more(ci->tls))
            return;
    }
}

static void tls_read(struct conn_impl *ci)
{
    static char buf[TLS_READ]; /* loop thread only; fed to the session at once */
    struct tn_conn *c = &ci->c;
    ssize_t n = read(c->fd, buf, sizeof(buf));

    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            conn_fail(ci, -errno);
        return;
    }
    if (n == 0) {
        eof(ci);
        return;
    }
    c->bytes_in += (uint64_t)n;
    tn_stat_add(&st_bytes_in, n);
    ci->last_read_ms = tn_now_ms();
    if (tn_tls_sess_feed(ci->tls, buf, (size_t)n) != 0) {
        conn_fail(ci, TN_ENOMEM);
        return;
    }
    tls_pump(ci, 0);
}

/* Encrypt c->out onto the wire (held until the handshake is done). */
static int tls_encrypt(struct conn_impl *ci)
{
    char why[256] = "";
    int rc = tn_tls_sess_write(ci->tls, &ci->c.out, why, sizeof(why));

    if (rc == 0 && tn_tls_sess_drain(ci->tls, &ci->wire) != 0)
        rc = TN_ENOMEM;
    if (rc != 0)
        tls_fail(ci, rc, why);
    return rc;
}

/* The end of a TLS connection: our close_notify when nothing else is
 * waiting, then one non-blocking send of what is on the wire (the
 * close_notify, or the alert of a failed handshake). Best effort. */
static void tls_goodbye(struct conn_impl *ci)
{
    if (tn_buf_rlen(&ci->wire) == 0) {
        tn_tls_sess_shutdown(ci->tls);
        tn_tls_sess_drain(ci->tls, &ci->wire);
    }
    if (tn_buf_rlen(&ci->wire) > 0 && !ci->connecting)
        (void)!send(ci->c.fd, tn_buf_rptr(&ci->wire), tn_buf_rlen(&ci->wire),
                    MSG_NOSIGNAL | MSG_DONTWAIT);
    tn_tls_sess_free(ci->tls);
    ci->tls = NULL;
    tn_buf_free(&ci->wire);
}

void tn_listener_set_tls(struct tn_listener *l, struct tn_tls_ctx *ctx)
{
    struct tn_tls_ctx *old = l->tls;

    l->tls = ctx ? tn_tls_ctx_ref(ctx) : NULL;
    tn_tls_ctx_free(old);
}

int tn_conn_start_tls(struct tn_conn *c, struct tn_tls_ctx *ctx)
{
    struct conn_impl *ci = impl_of(c);

    if (ci->tls || ci->closing || ci->close_after || ci->connecting || !ctx)
        return TN_EINVAL;
    if (!(ci->tls = tn_tls_sess_new(ctx)))
        return TN_ENOMEM;
    /* The answer queued so far is the last plaintext. */
    if (tn_buf_append(&ci->wire, tn_buf_rptr(&c->out), tn_buf_rlen(&c->out)) != 0 ||
        tn_tls_sess_feed(ci->tls, tn_buf_rptr(&c->in), tn_buf_rlen(&c->in)) != 0) {
        tn_conn_close(c, TN_ENOMEM);
        return TN_ENOMEM;
    }
    tn_buf_reset(&c->out);
    if (tn_buf_rlen(&c->in) > 0) {
        tn_buf_reset(&c->in);
        pend_add(ci, PEND_DISPATCH);
    }
    if (tn_buf_rlen(&ci->wire) > 0 && !ev_is_active(&ci->wio))
        pend_add(ci, PEND_FLUSH);
    return 0;
}

int tn_conn_connect_tls(struct tn_conn *c, struct tn_tls_ctx *ctx, const char *server_name)
{
    struct conn_impl *ci = impl_of(c);
    int64_t ms;

    if (!ctx || !tn_tls_ctx_is_client(ctx) || ci->tls || !ci->connecting || ci->closing ||
        c->listener)
        return TN_EINVAL;
    if (!(ci->tls = tn_tls_sess_client(ctx, server_name, c->peer)))
        return TN_ENOMEM;
    ci->hs_wait = 1;
    /* the deadline covers the TCP connect too; an idle timeout the caller
     * set already does that job instead */
    ms = tn_tls_ctx_handshake_ms(ctx);
    if (ms > 0 && !ev_is_active(&ci->idle)) {
        ci->hs_timer = 1;
        ci->hs_deadline_ms = tn_now_ms() + ms;
        ev_timer_set(&ci->idle, (double)ms / 1000.0, 0.);
        ev_timer_start(tn_loop(), &ci->idle);
    }
    return 0;
}

int tn_conn_tls(const struct tn_conn *c, const char **version, const char **cipher)
{
    const struct conn_impl *ci = impl_of(c);

    if (!ci->tls || !tn_tls_sess_done(ci->tls))
        return 0;
    tn_tls_sess_info(ci->tls, version, cipher);
    return 1;
}

/* ---- plaintext reads -------------------------------------------------------- */

static void read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn_impl *ci = w->data;
    struct tn_conn *c = &ci->c;
    size_t room, have = tn_buf_rlen(&c->in);
    ssize_t n;

    if (ci->tls) {
        tls_read(ci);
        return;
    }
    /* Read no more than one byte past in_max: enough to detect overflow
     * while bounding memory. */
    room = have > c->lim.in_max ? 1 : c->lim.in_max + 1 - have;
    if (room > c->lim.read_size)
        room = c->lim.read_size;
    /* A partial message left over should not double the buffer: read into
     * the room there is when that is half a read or more. */
    if (c->in.cap > have && c->in.cap - have >= c->lim.read_size / 2 && room > c->in.cap - have)
        room = c->in.cap - have;
    if (tn_buf_reserve(&c->in, room) != 0) {
        tn_conn_close(c, TN_ENOMEM);
        return;
    }
    n = read(c->fd, tn_buf_wptr(&c->in), room);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        tn_conn_close(c, -errno);
        return;
    }
    if (n == 0) {
        eof(ci);
        return;
    }
    tn_buf_commit(&c->in, (size_t)n);
    c->bytes_in += (uint64_t)n;
    tn_stat_add(&st_bytes_in, n);
    ci->last_read_ms = tn_now_ms();
    deliver(ci);
}

/* ---- writing -------------------------------------------------------------- */

static void drained(struct conn_impl *ci)
{
    struct tn_conn *c = &ci->c;

    ev_io_stop(tn_loop(), &ci->wio);
    tn_buf_shrink(&c->out, OUT_KEEP);
    tn_buf_shrink(&ci->wire, OUT_KEEP);
    if (ci->close_after) {
        tn_conn_close(c, ci->close_reason);
        return;
    }
    if (ci->bp_paused) {
        ci->bp_paused = 0;
        update_reading(ci);
    }
    if (c->h && c->h->on_drain)
        c->h->on_drain(c);
}

/* One send of everything queued; arms the write watcher for the rest. */
static void flush(struct conn_impl *ci)
{
    struct tn_conn *c = &ci->c;
    struct tn_buf *w = &c->out;
    size_t len;
    ssize_t n;

    if (ci->closing || ci->connecting)
        return;
    if (ci->tls) {
        if (tls_encrypt(ci) != 0)
            return;
        w = &ci->wire;
    }
    len = tn_buf_rlen(w);
    if (len == 0) {
        /* (TLS: plaintext still in c->out waits for a handshake that will
         * not happen now that reading stopped) */
        if (ci->close_after)
            tn_conn_close(c, ci->close_reason);
        return;
    }
    n = send(c->fd, tn_buf_rptr(w), len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            ev_io_start(tn_loop(), &ci->wio);
            return;
        }
        conn_fail(ci, -errno);
        return;
    }
    tn_buf_consume(w, (size_t)n);
    c->bytes_out += (uint64_t)n;
    tn_stat_add(&st_bytes_out, n);
    if (pending_bytes(ci) == 0) {
        drained(ci);
        return;
    }
    if (tn_buf_rlen(w) == 0) {
        /* TLS: the rest is plaintext waiting for the handshake */
        ev_io_stop(tn_loop(), &ci->wio);
        return;
    }
    ev_io_start(tn_loop(), &ci->wio);
    if (ci->bp_paused && pending_bytes(ci) < c->lim.out_high / 2) {
        ci->bp_paused = 0;
        update_reading(ci);
    }
}

static void connected(struct conn_impl *ci);

static void write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn_impl *ci = w->data;

    if (ci->connecting) {
        connected(ci);
        return;
    }
    flush(ci);
}

/* After bytes were queued: limits, back-pressure, and a flush this iteration. */
static int queued(struct conn_impl *ci)
{
    struct tn_conn *c = &ci->c;
    size_t pending = pending_bytes(ci);

    if (pending > c->lim.out_max) {
        tn_log_warn(CONN_WHO, "%s: output queue over %zu bytes, closing", c->peer, c->lim.out_max);
        tn_stat_inc(&st_overflow);
        tn_conn_close(c, TN_ELIMIT);
        return TN_ELIMIT;
    }
    if (pending > c->lim.out_high && !ci->bp_paused) {
        ci->bp_paused = 1;
        update_reading(ci);
    }
    if (!ev_is_active(&ci->wio))
        pend_add(ci, PEND_FLUSH);
    return 0;
}

int tn_conn_write(struct tn_conn *c, const void *p, size_t n)
{
    struct iovec iov;

    iov.iov_base = (void *)p;
    iov.iov_len = n;
    return tn_conn_writev(c, &iov, 1);
}

/* A large write to an idle connection goes out at once without a copy;
 * only what the socket does not take is queued. Returns bytes sent. */
static size_t write_direct(struct conn_impl *ci, const struct iovec *iov, int n, size_t total)
{
    struct msghdr mh;
    ssize_t sent;

    if (total < DIRECT_WRITE || ci->tls || tn_buf_rlen(&ci->c.out) > 0 || ci->connecting ||
        ev_is_active(&ci->wio))
        return 0;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = (struct iovec *)iov;
    mh.msg_iovlen = (size_t)n;
    sent = sendmsg(ci->c.fd, &mh, MSG_NOSIGNAL);
    if (sent <= 0)
        return 0; /* errors surface on the deferred flush */
    ci->c.bytes_out += (uint64_t)sent;
    tn_stat_add(&st_bytes_out, sent);
    return (size_t)sent;
}

int tn_conn_writev(struct tn_conn *c, const struct iovec *iov, int n)
{
    struct conn_impl *ci = impl_of(c);
    size_t total = 0, skip;
    int i;

    if (ci->closing || ci->close_after)
        return TN_ECLOSED;
    for (i = 0; i < n; i++)
        total += iov[i].iov_len;
    if (total == 0)
        return 0;
    skip = write_direct(ci, iov, n, total);
    if (skip == total)
        return 0;
    for (i = 0; i < n; i++) {
        size_t len = iov[i].iov_len;
        const char *p = iov[i].iov_base;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        if (tn_buf_append(&c->out, p + skip, len - skip) != 0) {
            tn_conn_close(c, TN_ENOMEM);
            return TN_ENOMEM;
        }
        skip = 0;
    }
    return queued(ci);
}

size_t tn_conn_pending(const struct tn_conn *c)
{
    return pending_bytes(impl_of(c));
}

/* ---- closing ---------------------------------------------------------------- */

void tn_conn_close(struct tn_conn *c, int reason)
{
    struct conn_impl *ci = impl_of(c);
    struct ev_loop *loop = tn_loop();

    if (ci->closing)
        return;
    ci->closing = 1;
    ci->close_reason = reason;
    ev_io_stop(loop, &ci->rio);
    ev_io_stop(loop, &ci->wio);
    ev_timer_stop(loop, &ci->idle);
    pend_add(ci, PEND_CLOSE);
}

void tn_conn_close_after_write(struct tn_conn *c)
{
    struct conn_impl *ci = impl_of(c);

    if (ci->closing || ci->close_after)
        return;
    ci->close_after = 1;
    update_reading(ci);
    if (!ev_is_active(&ci->wio))
        pend_add(ci, PEND_FLUSH);
}

int tn_conn_closing(const struct tn_conn *c)
{
    const struct conn_impl *ci = impl_of(c);
    return ci->closing || ci->close_after;
}

static void listener_unref(struct tn_listener *l);

/* The end of a connection: callback, counters, memory. */
static void finish_close(struct conn_impl *ci)
{
    struct tn_conn *c = &ci->c;
    struct tn_listener *l = c->listener;

    if (!ci->silent_close && c->h && c->h->on_close)
        c->h->on_close(c, ci->close_reason);
    if (l && tn_event_has(TN_CONN_CLOSE_EVENT))
        tn_event_emit(TN_CONN_CLOSE_EVENT, c);
    if (ci->tls)
        tls_goodbye(ci);
    close(c->fd);
    cs.open--;
    tn_buf_free(&c->in);
    tn_buf_free(&c->out);
    free(ci);
    if (l) {
        l->nconns--;
        listener_unref(l);
    }
}

static void pending_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct conn_impl *ci;

    if (!cs.pend_head)
        return;
    while ((ci = pend_pop()) != NULL) {
        unsigned what = ci->pend;
        ci->pend = 0;
        if (ci->closing) {
            finish_close(ci);
            continue;
        }
        if ((what & PEND_DISPATCH) && ci->tls)
            tls_pump(ci, 1);
        else if (what & PEND_DISPATCH)
            deliver(ci);
        if (!ci->closing && ((ci->pend | what) & PEND_FLUSH)) {
            ci->pend &= ~(unsigned)PEND_FLUSH;
            flush(ci);
        }
    }
    if (cs.referenced) {
        cs.referenced = 0;
        ev_unref(loop);
    }
}

/* ---- per-connection controls ------------------------------------------------ */

void tn_conn_pause_read(struct tn_conn *c)
{
    struct conn_impl *ci = impl_of(c);

    ci->app_paused = 1;
    update_reading(ci);
}

void tn_conn_resume_read(struct tn_conn *c)
{
    struct conn_impl *ci = impl_of(c);

    if (!ci->app_paused)
        return;
    ci->app_paused = 0;
    update_reading(ci);
    /* Bytes read before the pause are handed over again. */
    if (!ci->closing && (tn_buf_rlen(&c->in) > 0 || (ci->tls && tn_tls_sess_more(ci->tls))))
        pend_add(ci, PEND_DISPATCH);
}

static void idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn_impl *ci = w->data;
    int64_t due = ci->hs_timer ? ci->hs_deadline_ms : ci->last_read_ms + ci->idle_ms;
    int64_t now = tn_now_ms();

    /* The timer is not re-armed on every read; check the real deadline. */
    if (now < due) {
        ev_timer_set(w, (double)(due - now) / 1000.0, 0.);
        ev_timer_start(loop, w);
        return;
    }
    if (ci->hs_wait)
        tn_log_warn(CONN_WHO, "%s: TLS handshake timed out", ci->c.peer);
    conn_fail(ci, TN_ETIMEDOUT);
}

void tn_conn_set_idle_timeout(struct tn_conn *c, int64_t ms)
{
    struct conn_impl *ci = impl_of(c);
    struct ev_loop *loop = tn_loop();

    ev_timer_stop(loop, &ci->idle);
    ci->hs_timer = 0; /* the caller's timeout replaces the handshake's */
    ci->idle_ms = ms;
    if (ms <= 0 || ci->closing)
        return;
    ci->last_read_ms = tn_now_ms();
    ev_timer_set(&ci->idle, (double)ms / 1000.0, 0.);
    ev_timer_start(loop, &ci->idle);
}

void tn_conn_set_handler(struct tn_conn *c, const struct tn_conn_handler *h, void *data)
{
    struct conn_impl *ci = impl_of(c);

    c->h = h;
    c->data = data;
    if (!ci->closing && (tn_buf_rlen(&c->in) > 0 || (ci->tls && tn_tls_sess_more(ci->tls))))
        pend_add(ci, PEND_DISPATCH);
}

/* ---- connection objects ----------------------------------------------------- */

static void limits_fill(struct tn_conn_limits *dst, const struct tn_conn_limits *src)
{
    static const struct tn_conn_limits defaults = {1024 * 1024, 1024 * 1024, 64 * 1024 * 1024,
                                                   16 * 1024};

    *dst = src ? *src : defaults;
    if (!dst->in_max)
        dst->in_max = defaults.in_max;
    if (!dst->out_high)
        dst->out_high = defaults.out_high;
    if (!dst->out_max)
        dst->out_max = defaults.out_max;
    if (!dst->read_size)
        dst->read_size = defaults.read_size;
    if (dst->out_max < dst->out_high)
        dst->out_max = dst->out_high;
}

static struct conn_impl *conn_new(int fd, const struct tn_conn_limits *lim)
{
    struct conn_impl *ci = calloc(1, sizeof(*ci));

    if (!ci)
        return NULL;
    ci->c.fd = fd;
    ci->c.id = ++cs.next_id;
    ci->c.priv = ci;
    ci->c.connected_ms = tn_now_ms();
    limits_fill(&ci->c.lim, lim);
    ev_io_init(&ci->rio, read_cb, fd, EV_READ);
    ev_io_init(&ci->wio, write_cb, fd, EV_WRITE);
    ev_timer_init(&ci->idle, idle_cb, 0., 0.);
    ci->rio.data = ci->wio.data = ci->idle.data = ci;
    cs.open++;
    return ci;
}

/* Free a connection that never reached a handler (no on_close). */
static void conn_discard(struct conn_impl *ci)
{
    tn_tls_sess_free(ci->tls);
    tn_buf_free(&ci->wire);
    close(ci->c.fd);
    cs.open--;
    free(ci);
}

/* ---- listeners -------------------------------------------------------------- */

static void listener_free(struct tn_listener *l)
{
    tn_tls_ctx_free(l->tls);
    free(l);
}

static void listener_unref(struct tn_listener *l)
{
    if (l->closed && l->nconns == 0)
        listener_free(l);
}

/* Log refusals at most once a second, with how many were not logged. */
static void refuse_log(struct tn_listener *l, const char *why, size_t limit)
{
    int64_t now = tn_now_ms();

    cs.refused++;
    tn_stat_inc(&st_refused);
    if (now - cs.refuse_logged_ms < REFUSE_LOG_MS && cs.refuse_logged_ms != 0)
        return;
    tn_log_warn(CONN_WHO, "%s: %s limit of %zu reached: refusing connections (%llu refused so far)",
                l->name, why, limit, (unsigned long long)cs.refused);
    cs.refuse_logged_ms = now;
}

static int accept_allowed(struct tn_listener *l)
{
    if (cs.limit && cs.open >= cs.limit) {
        refuse_log(l, "process connection", cs.limit);
        return 0;
    }
    if (l->max_conns && l->nconns >= l->max_conns) {
        l->refused++;
        refuse_log(l, "listener connection", l->max_conns);
        return 0;
    }
    return 1;
}

static void accept_one(struct tn_listener *l, int fd, const struct sockaddr *sa, socklen_t len)
{
    struct conn_impl *ci;
    int one = 1;

    if (!accept_allowed(l)) {
        close(fd);
        return;
    }
    if (sa->sa_family != AF_UNIX)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ci = conn_new(fd, &l->lim);
    if (!ci) {
        close(fd);
        return;
    }
    if (sa->sa_family == AF_UNIX)
        snprintf(ci->c.peer, sizeof(ci->c.peer), "unix:%s", l->unix_path);
    else
        sockaddr_text(sa, len, ci->c.peer, sizeof(ci->c.peer));
    ci->c.listener = l;
    l->nconns++;
    tn_stat_inc(&st_accepted);
    /* before on_accept: a greeting the handler writes is TLS data already */
    if ((l->tls && !(ci->tls = tn_tls_sess_new(l->tls))) || l->on_accept(l, &ci->c, l->ud) != 0 ||
        !ci->c.h) {
        l->nconns--;
        conn_discard(ci);
        return;
    }
    update_reading(ci);
    if (tn_event_has(TN_CONN_OPEN_EVENT))
        tn_event_emit(TN_CONN_OPEN_EVENT, &ci->c);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct tn_listener *l = w->data;
    struct sockaddr_storage ss;
    socklen_t len;
    int i, fd;

    for (i = 0; i < ACCEPT_BATCH; i++) {
        len = sizeof(ss);
        fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            accept_one(l, fd, (struct sockaddr *)&ss, len);
            if (l->closed) {
                /* on_accept closed the listener: free it if that refused
                 * connection was its last. */
                listener_unref(l);
                return;
            }
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
            continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* Out of descriptors: the pending connection stays in the
             * backlog; retry shortly instead of spinning. */
            tn_log_error(CONN_WHO, "%s: accept: %s", l->name, strerror(errno));
            ev_io_stop(loop, &l->io);
            ev_timer_set(&l->pause, ACCEPT_PAUSE, 0.);
            ev_timer_start(loop, &l->pause);
        }
        return; /* EAGAIN or a pause */
    }
}

static void accept_resume_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct tn_listener *l = w->data;

    if (!l->closed)
        ev_io_start(loop, &l->io);
}

/* A unix socket path left by a dead process is removed; one a live server
 * answers on, or a file that is not a socket, is left alone. */
static int unix_stale_remove(const struct sockaddr_un *un, socklen_t len)
{
    struct stat st;
    int fd, rc;

    if (un->sun_path[0] == '\0' || stat(un->sun_path, &st) != 0)
        return 0;
    if (!S_ISSOCK(st.st_mode))
        return -EADDRINUSE;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    rc = connect(fd, (const struct sockaddr *)un, len);
    close(fd);
    if (rc == 0)
        return -EADDRINUSE;
    if (errno == ECONNREFUSED && unlink(un->sun_path) != 0 && errno != ENOENT)
        return -errno;
    return 0;
}

static int listen_socket(const struct tn_addr *addr, int backlog, struct tn_listener *l)
{
    int family = addr->sa.ss_family, fd, one = 1, rc;

    if (family == AF_UNIX) {
        rc = unix_stale_remove((const struct sockaddr_un *)&addr->sa, addr->len);
        if (rc != 0)
            return rc;
    }
    fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (family != AF_UNIX)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* [::] means IPv6 only, so a separate 0.0.0.0 listener on the same
     * port can coexist (as nginx does). */
    if (family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&addr->sa, addr->len) != 0 ||
        listen(fd, backlog > 0 ? backlog : 511) != 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    if (family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)&addr->sa;
        struct stat st;
        snprintf(l->unix_path, sizeof(l->unix_path), "%s", un->sun_path);
        if (stat(l->unix_path, &st) == 0) {
            l->unix_dev = st.st_dev;
            l->unix_ino = st.st_ino;
        }
    }
    return fd;
}

struct tn_listener *tn_listen(const struct tn_addr *addr, const struct tn_listen_opts *opts,
                              tn_accept_pt on_accept, void *ud, int *err)
{
    struct tn_listener *l;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int fd;

    conns_init();
    if (!addr || addr->len == 0 || !on_accept) {
        *err = TN_EINVAL;
        return NULL;
    }
    l = calloc(1, sizeof(*l));
    if (!l) {
        *err = TN_ENOMEM;
        return NULL;
    }
    snprintf(l->name, sizeof(l->name), "%s", opts && opts->name ? opts->name : addr->text);
    fd = listen_socket(addr, opts ? opts->backlog : 0, l);
    if (fd < 0) {
        tn_log_error(CONN_WHO, "%s: listen on %s: %s", l->name, addr->text, tn_strerror(fd));
        *err = fd;
        free(l);
        return NULL;
    }
    l->fd = fd;
    l->on_accept = on_accept;
    l->ud = ud;
    l->max_conns = opts ? opts->max_conns : 0;
    limits_fill(&l->lim, opts ? &opts->lim : NULL);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0 && ss.ss_family != AF_UNIX)
        sockaddr_text((struct sockaddr *)&ss, len, l->addr, sizeof(l->addr));
    else
        snprintf(l->addr, sizeof(l->addr), "%s", addr->text);
    if (!opts || !opts->name)
        snprintf(l->name, sizeof(l->name), "%s", l->addr);
    ev_io_init(&l->io, accept_cb, fd, EV_READ);
    ev_timer_init(&l->pause, accept_resume_cb, 0., 0.);
    l->io.data = l->pause.data = l;
    ev_io_start(tn_loop(), &l->io);
    return l;
}

void tn_listener_close(struct tn_listener *l)
{
    struct stat st;

    if (!l || l->closed)
        return;
    ev_io_stop(tn_loop(), &l->io);
    ev_timer_stop(tn_loop(), &l->pause);
    close(l->fd);
    l->fd = -1;
    /* Remove our socket file, not one a newer listener bound since. */
    if (l->unix_path[0] && stat(l->unix_path, &st) == 0 && st.st_dev == l->unix_dev &&
        st.st_ino == l->unix_ino)
        unlink(l->unix_path);
    l->closed = 1;
    listener_unref(l);
}

size_t tn_listener_conns(const struct tn_listener *l)
{
    return l->nconns;
}

const char *tn_listener_addr(const struct tn_listener *l)
{
    return l->addr;
}

void *tn_listener_data(const struct tn_listener *l)
{
    return l->ud;
}

/* ---- outgoing connections ----------------------------------------------------- */

static void connected(struct conn_impl *ci)
{
    struct tn_conn *c = &ci->c;
    int soerr = 0;
    socklen_t len = sizeof(soerr);

    ev_io_stop(tn_loop(), &ci->wio);
    ci->connecting = 0;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
        soerr = errno;
    if (soerr != 0) {
        if (c->h->on_connect)
            c->h->on_connect(c, -soerr);
        ci->silent_close = 1;
        tn_conn_close(c, -soerr);
        return;
    }
    c->connected_ms = tn_now_ms();
    ci->last_read_ms = c->connected_ms;
    update_reading(ci);
    if (ci->hs_wait) {
        tls_pump(ci, 0); /* the ClientHello; on_connect follows the handshake */
        return;
    }
    if (c->h->on_connect)
        c->h->on_connect(c, 0);
    if (!ci->closing && tn_buf_rlen(&c->out) > 0)
        pend_add(ci, PEND_FLUSH);
}

struct tn_conn *tn_connect(const struct tn_addr *addr, const struct tn_conn_handler *h, void *data,
                           const struct tn_conn_limits *lim, int *err)
{
    struct conn_impl *ci;
    int fd, one = 1, family;

    conns_init();
    if (!addr || addr->len == 0 || !h) {
        *err = TN_EINVAL;
        return NULL;
    }
    family = addr->sa.ss_family;
    fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = -errno;
        return NULL;
    }
    if (family != AF_UNIX)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)&addr->sa, addr->len) != 0 && errno != EINPROGRESS &&
        errno != EINTR) {
        *err = -errno;
        close(fd);
        return NULL;
    }
    ci = conn_new(fd, lim);
    if (!ci) {
        close(fd);
        *err = TN_ENOMEM;
        return NULL;
    }
    snprintf(ci->c.peer, sizeof(ci->c.peer), "%s", addr->text);
    ci->c.h = h;
    ci->c.data = data;
    /* Writability reports the outcome, also for a connect that already
     * succeeded: on_connect always runs from the loop. */
    ci->connecting = 1;
    ev_io_start(tn_loop(), &ci->wio);
    return &ci->c;
}
