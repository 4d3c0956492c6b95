/*
 * kcp_transport.c -- the gateway's KCP transport: one UDP socket per
 * listener on the loop, a KCP engine and a session per (peer address,
 * conv), an update timer per session, the idle timeout and the session
 * limit. KCP has no handshake: as kcp-go's listener does, the first data
 * segment of an unknown (address, conv) opens a session; with FEC and
 * encryption off kcp-go puts nothing before the KCP header, so the
 * datagrams are plain KCP segments. Messages are read as a byte stream
 * (kcp-go cuts one write into mss-sized messages), cut into packets by the
 * codec like TCP.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gateway.h"

#define KCP_READ_BATCH 64          /* datagrams per readable event */
#define KCP_SESSIONS_DEFAULT 10000 /* when max_connections is 0 */
#define KCP_CLOSE_WAIT 3000        /* ms to flush a closing session's last replies */
#define KCP_MSG_FRAGS 16           /* fragments of one message we send */
#define KCP_SOCKBUF (4 << 20)
#define KCP_IDLE_WAKE 60.0 /* s between updates of an idle session with no idle timeout */

struct gw_kcp_listener {
    struct gw *gw;
    int fd;
    ev_io io;
    struct gw_kcp_opts opts;
    struct tn_map conns; /* key (sockaddr bytes + conv) -> struct kconn */
    size_t max;
    char text[TN_ADDR_TEXT_MAX];
    uint8_t *scratch; /* gathers one packet's iovec */
    size_t scratch_cap;
    uint64_t refused;
    /* for stats: of sessions gone, and datagrams */
    uint64_t retrans_done, dead, datagrams_in, datagrams_out, bad;
};

struct kconn {
    struct tn_map_node node; /* in kl->conns, key: key */
    struct gw_kcp_listener *kl;
    struct gw_session *s;
    struct gw_kcp *k;
    ev_timer timer;
    int64_t last_rx, close_by;
    int closing;
    struct sockaddr_storage sa;
    socklen_t salen;
    uint32_t conv;
    char *in; /* message bytes not yet a whole packet */
    size_t inlen, incap;
    char peer[TN_ADDR_TEXT_MAX];
    size_t klen;
    uint8_t key[sizeof(struct sockaddr_storage) + 4];
};

static uint32_t now32(void)
{
    return (uint32_t)tn_now_ms();
}

static size_t make_key(uint8_t *key, const struct sockaddr *sa, socklen_t len, uint32_t conv)
{
    memcpy(key, sa, len);
    memcpy(key + len, &conv, 4);
    return (size_t)len + 4;
}

static void peer_text(char *out, size_t n, const struct sockaddr_storage *sa)
{
    char host[64] = "?";

    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        snprintf(out, n, "[%s]:%u", host, ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const void *)sa;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        snprintf(out, n, "%s:%u", host, ntohs(a->sin_port));
    }
}

/* ---- a connection --------------------------------------------------------------- */

static void conn_output(const void *buf, size_t len, void *ud)
{
    struct kconn *c = ud;

    /* a full socket buffer loses the datagram: KCP resends it */
    (void)sendto(c->kl->fd, buf, len, MSG_DONTWAIT, (const struct sockaddr *)&c->sa, c->salen);
    c->kl->datagrams_out++;
}

/* The next update: when the engine needs one, else (nothing in flight,
 * owed or probed) not before the idle timeout, so idle sessions cost no
 * wakeups. */
static void conn_schedule(struct kconn *c)
{
    uint32_t now = now32(), next = gw_kcp_check(c->k, now);
    double after = (double)(int32_t)(next - now) / 1000.0;
    int64_t idle = c->kl->gw->idle_ms;

    if (gw_kcp_idle(c->k) && !c->closing)
        after = idle > 0 ? (double)(c->last_rx + idle - tn_now_ms()) / 1000.0 : KCP_IDLE_WAKE;
    if (c->closing && after > 0.05)
        after = 0.05;
    ev_timer_stop(tn_loop(), &c->timer);
    ev_timer_set(&c->timer, after > 0 ? after : 0., 0.);
    ev_timer_start(tn_loop(), &c->timer);
}

/* Forget the connection: no more callbacks, nothing sent. */
static void conn_free(struct kconn *c)
{
    ev_timer_stop(tn_loop(), &c->timer);
    c->kl->retrans_done += gw_kcp_retrans(c->k);
    tn_map_remove(&c->kl->conns, &c->node);
    gw_kcp_free(c->k);
    free(c->in);
    free(c);
}

/* The session ends: on_disconnect, then the connection goes. */
static void conn_end(struct kconn *c)
{
    struct gw_session *s = c->s;

    c->s = NULL;
    if (s)
        gw_session_closed(s);
    conn_free(c);
}

static void conn_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct kconn *c = w->data;
    struct gw *gw = c->kl->gw;
    int64_t now = tn_now_ms();

    gw_kcp_update(c->k, (uint32_t)now);
    if (gw_kcp_dead(c->k)) {
        tn_log_info(GW_LOG, "kcp %s conv %u: no ack after %u sends, closed", c->peer, c->conv,
                    c->kl->opts.dead_link);
        c->kl->dead++;
        conn_end(c);
        return;
    }
    if (c->closing && (gw_kcp_waitsnd(c->k) == 0 || now >= c->close_by)) {
        conn_end(c);
        return;
    }
    if (!c->closing && gw->idle_ms > 0 && now - c->last_rx >= gw->idle_ms) {
        if (c->s)
            tn_log_info(GW_LOG, "session %llu (%s): no packet for %lld ms, closed",
                        (unsigned long long)c->s->id, c->peer, (long long)gw->idle_ms);
        conn_end(c);
        return;
    }
    conn_schedule(c);
}

/* Whole messages into the stream buffer, whole packets to the session. */
static void conn_read(struct kconn *c)
{
    struct gw_session *s = c->s;
    long n, r;

    while (!c->closing && (n = gw_kcp_peek(c->k)) >= 0) {
        size_t need = c->inlen + (size_t)n;
        if (need > c->incap) {
            size_t cap = c->incap ? c->incap : 4096;
            char *p;
            while (cap < need)
                cap *= 2;
            if (!(p = realloc(c->in, cap))) {
                gw_session_close(s, GW_CLOSE_ERROR, "out of memory");
                return;
            }
            c->in = p;
            c->incap = cap;
        }
        gw_kcp_recv(c->k, c->in + c->inlen, (size_t)n);
        c->inlen += (size_t)n;
        r = gw_session_input(s, c->in, c->inlen);
        if (r < 0)
            return; /* closed by the session */
        memmove(c->in, c->in + r, c->inlen - (size_t)r);
        c->inlen -= (size_t)r;
    }
}

/* ---- the transport interface ------------------------------------------------------ */

static int kcp_send(struct gw_session *s, const struct iovec *iov, int n)
{
    struct kconn *c = s->tpdata;
    struct gw_kcp_listener *kl;
    size_t len = 0, off = 0, chunk;
    int rc;

    if (!c || c->closing)
        return TN_ECLOSED;
    kl = c->kl;
    for (int i = 0; i < n; i++)
        len += iov[i].iov_len;
    if (gw_kcp_sndbytes(c->k) + len > kl->gw->conf->max_output) {
        tn_log_warn(GW_LOG, "session %llu (%s): over max_output unacknowledged, closing",
                    (unsigned long long)s->id, c->peer);
        gw_session_close(s, GW_CLOSE_POLICY, "too slow");
        return TN_ELIMIT;
    }
    if (len > kl->scratch_cap) {
        uint8_t *p = realloc(kl->scratch, len);
        if (!p)
            return TN_ENOMEM;
        kl->scratch = p;
        kl->scratch_cap = len;
    }
    for (int i = 0; i < n; i++) {
        memcpy(kl->scratch + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    /* the peer reads a stream of messages: cut big packets into messages
     * that fit any peer's receive window */
    chunk = (size_t)(kl->opts.mtu - GW_KCP_OVERHEAD) * KCP_MSG_FRAGS;
    for (off = 0; off < len; off += chunk)
        if ((rc = gw_kcp_send(c->k, kl->scratch + off, len - off < chunk ? len - off : chunk)) != 0)
            return rc;
    /* flush on the next loop turn: replies made in this one share datagrams */
    if (ev_timer_remaining(tn_loop(), &c->timer) > 0.0005 || !ev_is_active(&c->timer)) {
        ev_timer_stop(tn_loop(), &c->timer);
        ev_timer_set(&c->timer, 0., 0.);
        ev_timer_start(tn_loop(), &c->timer);
    }
    return 0;
}

static void kcp_close(struct gw_session *s, int code, const char *why)
{
    struct kconn *c = s->tpdata;

    if (!c || c->closing)
        return;
    /* KCP has no close message: what is queued still goes, then the
     * session ends (the client sees silence) */
    c->closing = 1;
    c->close_by = tn_now_ms() + KCP_CLOSE_WAIT;
    gw_kcp_flush(c->k, now32());
    conn_schedule(c);
}

static const char *kcp_addr(const struct gw_session *s)
{
    const struct kconn *c = s->tpdata;

    return c ? c->peer : "?";
}

static void kcp_detach(struct gw_session *s)
{
    struct kconn *c = s->tpdata;

    s->tpdata = NULL;
    if (c) {
        c->s = NULL;
        conn_free(c);
    }
}

static const struct gw_transport kcp_transport = {"kcp", kcp_send, kcp_close, kcp_addr, kcp_detach};

/* ---- datagrams ------------------------------------------------------------------------ */

static struct kconn *conn_open(struct gw_kcp_listener *kl, const struct sockaddr_storage *sa,
                               socklen_t salen, uint32_t conv, const uint8_t *key, size_t klen)
{
    struct kconn *c;

    if (kl->gw->stopping || kl->conns.n >= kl->max) {
        if (kl->refused++ % 1000 == 0)
            tn_log_warn(GW_LOG, "kcp %s: session refused (%s)", kl->text,
                        kl->gw->stopping ? "stopping" : "max_connections");
        return NULL;
    }
    if (!(c = calloc(1, sizeof(*c))))
        return NULL;
    c->kl = kl;
    c->sa = *sa;
    c->salen = salen;
    c->conv = conv;
    c->klen = klen;
    memcpy(c->key, key, klen);
    peer_text(c->peer, sizeof(c->peer), sa);
    c->last_rx = tn_now_ms();
    ev_timer_init(&c->timer, conn_timer, 0., 0.);
    c->timer.data = c;
    if (!(c->k = gw_kcp_new(conv, &kl->opts, conn_output, c)) ||
        tn_map_insert(&kl->conns, &c->node, c->key, c->klen) != 0) {
        gw_kcp_free(c->k);
        free(c);
        return NULL;
    }
    if (!(c->s = gw_session_open(kl->gw, &kcp_transport, c))) {
        conn_free(c);
        return NULL;
    }
    gw_kcp_update(c->k, now32());
    if (c->s->closing)
        gw_session_close(c->s, GW_CLOSE_POLICY, "refused by on_connect");
    return c;
}

static void on_datagram(struct gw_kcp_listener *kl, const uint8_t *p, size_t n,
                        const struct sockaddr_storage *sa, socklen_t salen)
{
    uint8_t key[sizeof(struct sockaddr_storage) + 4];
    struct kconn *c;
    uint32_t conv;
    size_t klen;

    if (gw_kcp_conv(p, n, &conv) != 0)
        return;
    klen = make_key(key, (const struct sockaddr *)sa, salen, conv);
    if (!(c = TN_MAP_ENTRY_OR_NULL(tn_map_find(&kl->conns, key, klen), struct kconn, node))) {
        /* only a data segment opens a session: stray acks and probes of
         * a session we closed do not */
        if (p[4] != GW_KCP_PUSH || !(c = conn_open(kl, sa, salen, conv, key, klen)))
            return;
    }
    kl->datagrams_in++;
    if (gw_kcp_input(c->k, p, n, now32()) != 0) {
        kl->bad++;
        tn_log_debug(GW_LOG, "kcp %s conv %u: malformed datagram dropped", c->peer, conv);
    }
    c->last_rx = tn_now_ms();
    if (c->s && !c->closing)
        conn_read(c);
    /* acks go out at the next flush; in nodelay mode flush now for latency */
    if (!c->closing && kl->opts.nodelay)
        gw_kcp_flush(c->k, now32());
    if (!c->closing || gw_kcp_waitsnd(c->k))
        conn_schedule(c);
}

static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    struct gw_kcp_listener *kl = w->data;
    uint8_t buf[GW_KCP_MTU_MAX + 1];
    struct sockaddr_storage sa;

    for (int i = 0; i < KCP_READ_BATCH; i++) {
        socklen_t salen = sizeof(sa);
        ssize_t n = recvfrom(kl->fd, buf, sizeof(buf), 0, (struct sockaddr *)&sa, &salen);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                tn_log_warn(GW_LOG, "kcp %s: recvfrom: %s", kl->text, strerror(errno));
            return;
        }
        on_datagram(kl, buf, (size_t)n, &sa, salen);
    }
}

/* ---- the listener --------------------------------------------------------------------- */

static int socket_open(const struct tn_addr *a, char *text, size_t tlen)
{
    int fd = socket(a->sa.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1, sz = KCP_SOCKBUF;
    struct sockaddr_storage sa;
    socklen_t salen = sizeof(sa);

    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    if (bind(fd, (const struct sockaddr *)&a->sa, a->len) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &salen) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    peer_text(text, tlen, &sa);
    return fd;
}

void gw_kcp_opts_from_conf(const struct gw_listen_conf *lc, struct gw_kcp_opts *o)
{
    gw_kcp_opts_default(o);
    o->nodelay = lc->kcp_nodelay;
    o->interval = (uint32_t)lc->kcp_interval;
    o->resend = (uint32_t)lc->kcp_resend;
    o->nc = lc->kcp_nc;
    o->sndwnd = (uint32_t)lc->kcp_sndwnd;
    o->rcvwnd = (uint32_t)lc->kcp_rcvwnd;
    o->mtu = (uint32_t)lc->kcp_mtu;
}

int gw_kcp_listen(struct gw *gw, const struct gw_listen_conf *lc)
{
    struct gw_listener *gl = calloc(1, sizeof(*gl));
    struct gw_kcp_listener *kl = calloc(1, sizeof(*kl));

    if (!gl || !kl) {
        free(gl);
        free(kl);
        return TN_ENOMEM;
    }
    kl->gw = gw;
    gw_kcp_opts_from_conf(lc, &kl->opts);
    kl->max =
        gw->conf->max_connections > 0 ? (size_t)gw->conf->max_connections : KCP_SESSIONS_DEFAULT;
    if ((kl->fd = socket_open(&lc->addr, kl->text, sizeof(kl->text))) < 0) {
        int err = kl->fd;
        tn_log_error(GW_LOG, "kcp %s: %s", lc->addr.text, strerror(-err));
        free(gl);
        free(kl);
        return err;
    }
    ev_io_init(&kl->io, on_readable, kl->fd, EV_READ);
    kl->io.data = kl;
    ev_io_start(tn_loop(), &kl->io);
    gl->proto = GW_PROTO_KCP;
    gl->kcp = kl;
    gl->next = gw->listeners;
    gw->listeners = gl;
    tn_log_info(GW_LOG,
                "KCP listening on %s (udp; nodelay %d interval %ums resend %u nc %d "
                "wnd %u/%u mtu %u)",
                kl->text, kl->opts.nodelay, kl->opts.interval, kl->opts.resend, kl->opts.nc,
                kl->opts.sndwnd, kl->opts.rcvwnd, kl->opts.mtu);
    return 0;
}

static void conn_drop(struct kconn *c)
{
    ev_timer_stop(tn_loop(), &c->timer);
    gw_kcp_free(c->k);
    free(c->in);
    free(c);
}

/* fini: the module detached every session (conn_free) already; anything
 * left goes with the socket. */
void gw_kcp_listener_free(struct gw_kcp_listener *kl)
{
    struct tn_map_iter it;

    if (!kl)
        return;
    for (struct tn_map_node *n = tn_map_first(&kl->conns, &it); n; n = tn_map_next(&it))
        conn_drop(TN_MAP_ENTRY(n, struct kconn, node));
    tn_map_free(&kl->conns);
    ev_io_stop(tn_loop(), &kl->io);
    close(kl->fd);
    free(kl->scratch);
    free(kl);
}

/* ---- stats ------------------------------------------------------------------------------ */

static uint64_t conns_retrans(const struct gw_kcp_listener *kl)
{
    struct tn_map_iter it;
    uint64_t n = 0;

    for (struct tn_map_node *p = tn_map_first(&kl->conns, &it); p; p = tn_map_next(&it))
        n += gw_kcp_retrans(TN_MAP_ENTRY(p, struct kconn, node)->k);
    return n;
}

static void emit(struct tn_stats_out *out, const char *name, int type, const char *help, uint64_t v)
{
    tn_stats_emit(out, name, type, help, NULL, (double)v);
}

void gw_kcp_stats(struct gw *gw, struct tn_stats_out *out)
{
    uint64_t sessions = 0, retrans = 0, dead = 0, in = 0, outn = 0, bad = 0, refused = 0;
    int any = 0;

    for (struct gw_listener *gl = gw->listeners; gl; gl = gl->next) {
        struct gw_kcp_listener *kl = gl->kcp;
        if (!kl)
            continue;
        any = 1;
        sessions += kl->conns.n;
        retrans += kl->retrans_done;
        retrans += conns_retrans(kl);
        dead += kl->dead;
        in += kl->datagrams_in;
        outn += kl->datagrams_out;
        bad += kl->bad;
        refused += kl->refused;
    }
    if (!any)
        return;
    emit(out, "ternd_gateway_kcp_sessions", TN_STAT_GAUGE, "Open KCP conversations", sessions);
    emit(out, "ternd_gateway_kcp_retransmits_total", TN_STAT_COUNTER,
         "KCP segments sent again (timeout or fast resend)", retrans);
    emit(out, "ternd_gateway_kcp_dead_total", TN_STAT_COUNTER,
         "KCP sessions closed for a segment never acknowledged", dead);
    emit(out, "ternd_gateway_kcp_datagrams_in_total", TN_STAT_COUNTER,
         "UDP datagrams of known or new KCP conversations", in);
    emit(out, "ternd_gateway_kcp_datagrams_out_total", TN_STAT_COUNTER, "UDP datagrams sent", outn);
    emit(out, "ternd_gateway_kcp_bad_datagrams_total", TN_STAT_COUNTER,
         "KCP datagrams refused (wrong conv, bad command or length)", bad);
    emit(out, "ternd_gateway_kcp_refused_total", TN_STAT_COUNTER,
         "New KCP conversations refused (max_connections, stopping)", refused);
}
