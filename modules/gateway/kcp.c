/*
 * kcp.c -- the KCP ARQ engine: messages cut into segments (frg counts the
 * fragments left), a send window limited by the peer's advertised window
 * and an optional congestion window, cumulative (una) and selective (ACK)
 * acknowledgements, retransmission on an rto with backoff and on fast
 * resend, window probes (WASK/WINS) when the peer's window is shut. Written
 * from the protocol description; the wire format is the reference one so
 * any KCP peer (kcp-go, ikcp.c) talks to it.
 */
#include <stdlib.h>
#include <string.h>
#include <ternd/error.h>

#include "kcp.h"

#define RTO_MIN 100
#define RTO_NODELAY_MIN 30
#define RTO_DEFAULT 200
#define RTO_MAX 60000
#define PROBE_INIT 5000
#define PROBE_LIMIT 120000
#define SSTHRESH_INIT 2
#define SSTHRESH_MIN 2
#define FAST_LIMIT 5     /* fast resends stop after this many sends of a segment */
#define ACKLIST_MAX 4096 /* acks owed before the next flush; past that the peer resends */

enum { PROBE_ASK = 1, PROBE_TELL = 2 };

struct seg {
    struct seg *prev, *next;
    uint32_t conv, ts, sn, una, len, resendts, rto, fastack, xmit;
    uint8_t cmd, frg;
    uint16_t wnd;
    /* the payload follows the struct (SEG_DATA): no flexible array member,
     * so a struct seg can also be a list's sentinel */
};
#define SEG_DATA(s) ((uint8_t *)((s) + 1))

/* A circular doubly linked list with a sentinel. */
struct seglist {
    struct seg head;
    size_t n;
};

struct ack {
    uint32_t sn, ts;
};

struct gw_kcp {
    uint32_t conv, mtu, mss;
    uint32_t snd_una, snd_nxt, rcv_nxt;
    uint32_t ssthresh, cwnd, incr, rmt_wnd;
    int32_t rx_rttval, rx_srtt, rx_rto, rx_minrto;
    uint32_t current, ts_flush, ts_probe, probe_wait, probe;
    int updated, dead;
    struct gw_kcp_opts o;
    struct seglist snd_queue, snd_buf, rcv_queue, rcv_buf;
    size_t snd_bytes;
    struct ack *acks;
    size_t nacks, acks_cap;
    uint64_t retrans;
    uint8_t *buf; /* one datagram being built: mtu bytes */
    size_t blen;
    gw_kcp_output_pt output;
    void *ud;
};

/* Wrap-safe difference of two 32-bit counters (ms or sn). */
static int32_t diff(uint32_t a, uint32_t b)
{
    return (int32_t)(a - b);
}

/* ---- lists ------------------------------------------------------------------- */

static void list_init(struct seglist *l)
{
    l->head.prev = l->head.next = &l->head;
    l->n = 0;
}

static void list_insert_after(struct seglist *l, struct seg *at, struct seg *s)
{
    s->prev = at;
    s->next = at->next;
    at->next->prev = s;
    at->next = s;
    l->n++;
}

static void list_remove(struct seglist *l, struct seg *s)
{
    s->prev->next = s->next;
    s->next->prev = s->prev;
    l->n--;
}

static void list_free(struct seglist *l)
{
    struct seg *s, *next;

    for (s = l->head.next; s != &l->head; s = next) {
        next = s->next;
        free(s);
    }
    list_init(l);
}

#define FIRST(l) ((l)->head.next)
#define END(l) (&(l)->head)

static struct seg *seg_new(size_t len)
{
    struct seg *s = calloc(1, sizeof(*s) + len);

    if (s)
        s->len = (uint32_t)len;
    return s;
}

/* ---- wire format ---------------------------------------------------------------- */

static uint8_t *put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
    return p + 4;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint8_t *encode_head(uint8_t *p, const struct seg *s)
{
    p = put32(p, s->conv);
    *p++ = s->cmd;
    *p++ = s->frg;
    *p++ = (uint8_t)s->wnd;
    *p++ = (uint8_t)(s->wnd >> 8);
    p = put32(p, s->ts);
    p = put32(p, s->sn);
    p = put32(p, s->una);
    return put32(p, s->len);
}

int gw_kcp_conv(const void *p, size_t n, uint32_t *conv)
{
    if (n < GW_KCP_OVERHEAD)
        return -1;
    *conv = get32(p);
    return 0;
}

/* ---- lifetime ---------------------------------------------------------------------- */

void gw_kcp_opts_default(struct gw_kcp_opts *o)
{
    o->nodelay = 0;
    o->interval = 100;
    o->resend = 0;
    o->nc = 0;
    o->sndwnd = 32;
    o->rcvwnd = 128;
    o->mtu = 1400;
    o->dead_link = 20;
}

static int opts_valid(const struct gw_kcp_opts *o)
{
    return o->interval >= 1 && o->interval <= 5000 && o->sndwnd >= 1 && o->sndwnd <= 65535 &&
           o->rcvwnd >= 1 && o->rcvwnd <= 65535 && o->mtu >= GW_KCP_MTU_MIN &&
           o->mtu <= GW_KCP_MTU_MAX && o->dead_link >= 1;
}

struct gw_kcp *gw_kcp_new(uint32_t conv, const struct gw_kcp_opts *o, gw_kcp_output_pt out,
                          void *ud)
{
    struct gw_kcp *k;

    if (!opts_valid(o) || !(k = calloc(1, sizeof(*k))))
        return NULL;
    if (!(k->buf = malloc(o->mtu))) {
        free(k);
        return NULL;
    }
    k->o = *o;
    k->conv = conv;
    k->mtu = o->mtu;
    k->mss = o->mtu - GW_KCP_OVERHEAD;
    k->rmt_wnd = 128; /* the reference default until the peer tells its own */
    k->ssthresh = SSTHRESH_INIT;
    k->cwnd = 1;
    k->incr = k->mss;
    k->rx_rto = RTO_DEFAULT;
    k->rx_minrto = o->nodelay ? RTO_NODELAY_MIN : RTO_MIN;
    k->output = out;
    k->ud = ud;
    list_init(&k->snd_queue);
    list_init(&k->snd_buf);
    list_init(&k->rcv_queue);
    list_init(&k->rcv_buf);
    return k;
}

void gw_kcp_free(struct gw_kcp *k)
{
    if (!k)
        return;
    list_free(&k->snd_queue);
    list_free(&k->snd_buf);
    list_free(&k->rcv_queue);
    list_free(&k->rcv_buf);
    free(k->acks);
    free(k->buf);
    free(k);
}

/* ---- sending ------------------------------------------------------------------------ */

size_t gw_kcp_max_message(const struct gw_kcp *k)
{
    return (size_t)k->mss * GW_KCP_FRG_MAX;
}

int gw_kcp_send(struct gw_kcp *k, const void *p, size_t n)
{
    size_t count = n ? (n + k->mss - 1) / k->mss : 1;
    const uint8_t *d = p;

    if (count > GW_KCP_FRG_MAX)
        return TN_ETOOBIG;
    for (size_t i = 0; i < count; i++) {
        size_t len = n > k->mss ? k->mss : n;
        struct seg *s = seg_new(len);
        if (!s)
            return TN_ENOMEM; /* the fragments queued so far still go: the
                               * reader treats messages as a stream */
        if (len)
            memcpy(SEG_DATA(s), d, len);
        s->frg = (uint8_t)(count - i - 1);
        list_insert_after(&k->snd_queue, k->snd_queue.head.prev, s);
        k->snd_bytes += len;
        d += len;
        n -= len;
    }
    return 0;
}

size_t gw_kcp_waitsnd(const struct gw_kcp *k)
{
    return k->snd_buf.n + k->snd_queue.n;
}

size_t gw_kcp_sndbytes(const struct gw_kcp *k)
{
    return k->snd_bytes;
}

int gw_kcp_idle(const struct gw_kcp *k)
{
    return !k->snd_queue.n && !k->snd_buf.n && !k->nacks && !k->probe;
}

int gw_kcp_dead(const struct gw_kcp *k)
{
    return k->dead;
}

uint32_t gw_kcp_srtt(const struct gw_kcp *k)
{
    return (uint32_t)k->rx_srtt;
}

uint64_t gw_kcp_retrans(const struct gw_kcp *k)
{
    return k->retrans;
}

/* ---- acknowledgements ---------------------------------------------------------------- */

/* RFC 6298 style smoothing of one rtt sample. */
static void rtt_sample(struct gw_kcp *k, int32_t rtt)
{
    int32_t rto;

    if (k->rx_srtt == 0) {
        k->rx_srtt = rtt;
        k->rx_rttval = rtt / 2;
    } else {
        int32_t delta = rtt > k->rx_srtt ? rtt - k->rx_srtt : k->rx_srtt - rtt;
        k->rx_rttval = (3 * k->rx_rttval + delta) / 4;
        k->rx_srtt = (7 * k->rx_srtt + rtt) / 8;
        if (k->rx_srtt < 1)
            k->rx_srtt = 1;
    }
    rto = k->rx_srtt +
          ((int32_t)k->o.interval > 4 * k->rx_rttval ? (int32_t)k->o.interval : 4 * k->rx_rttval);
    k->rx_rto = rto < k->rx_minrto ? k->rx_minrto : rto > RTO_MAX ? RTO_MAX : rto;
}

static void shrink_buf(struct gw_kcp *k)
{
    k->snd_una = k->snd_buf.n ? FIRST(&k->snd_buf)->sn : k->snd_nxt;
}

static void drop_sent(struct gw_kcp *k, struct seg *s)
{
    list_remove(&k->snd_buf, s);
    k->snd_bytes -= s->len;
    free(s);
}

/* The peer has everything before una. */
static void ack_cumulative(struct gw_kcp *k, uint32_t una)
{
    struct seg *s, *next;

    for (s = FIRST(&k->snd_buf); s != END(&k->snd_buf) && diff(una, s->sn) > 0; s = next) {
        next = s->next;
        drop_sent(k, s);
    }
}

static void ack_one(struct gw_kcp *k, uint32_t sn)
{
    struct seg *s;

    if (diff(sn, k->snd_una) < 0 || diff(sn, k->snd_nxt) >= 0)
        return;
    for (s = FIRST(&k->snd_buf); s != END(&k->snd_buf) && diff(sn, s->sn) >= 0; s = s->next)
        if (s->sn == sn) {
            drop_sent(k, s);
            return;
        }
}

/* Segments before the highest acked one were skipped by that ack: count
 * it towards their fast resend, but only where the acked segment left after
 * the skipped one's last send (ts): an ack of something sent earlier says
 * nothing about a resend still on its way. */
static void ack_skipped(struct gw_kcp *k, uint32_t maxsn, uint32_t maxts)
{
    struct seg *s;

    if (diff(maxsn, k->snd_una) < 0 || diff(maxsn, k->snd_nxt) >= 0)
        return;
    for (s = FIRST(&k->snd_buf); s != END(&k->snd_buf) && diff(maxsn, s->sn) > 0; s = s->next)
        if (diff(maxts, s->ts) >= 0)
            s->fastack++;
}

static void ack_owe(struct gw_kcp *k, uint32_t sn, uint32_t ts)
{
    if (k->nacks == k->acks_cap) {
        size_t cap = k->acks_cap ? k->acks_cap * 2 : 16;
        struct ack *a;
        if (cap > ACKLIST_MAX || !(a = realloc(k->acks, cap * sizeof(*a))))
            return; /* not acked now: the peer resends and we ack then */
        k->acks = a;
        k->acks_cap = cap;
    }
    k->acks[k->nacks].sn = sn;
    k->acks[k->nacks].ts = ts;
    k->nacks++;
}

/* ---- receiving --------------------------------------------------------------------- */

/* In-order segments go from the reorder buffer to the reader's queue while
 * the reader has room. */
static void rcv_advance(struct gw_kcp *k)
{
    struct seg *s;

    while ((s = FIRST(&k->rcv_buf)) != END(&k->rcv_buf) && s->sn == k->rcv_nxt &&
           k->rcv_queue.n < k->o.rcvwnd) {
        list_remove(&k->rcv_buf, s);
        list_insert_after(&k->rcv_queue, k->rcv_queue.head.prev, s);
        k->rcv_nxt++;
    }
}

/* A data segment inside the window: into the reorder buffer, in sn order,
 * once. */
static int rcv_insert(struct gw_kcp *k, const uint8_t *h, const uint8_t *data, uint32_t len)
{
    uint32_t sn = get32(h + 12);
    struct seg *at, *s;

    if (diff(sn, k->rcv_nxt + k->o.rcvwnd) >= 0 || diff(sn, k->rcv_nxt) < 0)
        return 0;
    for (at = k->rcv_buf.head.prev; at != END(&k->rcv_buf); at = at->prev) {
        if (at->sn == sn)
            return 0; /* a duplicate */
        if (diff(sn, at->sn) > 0)
            break;
    }
    if (!(s = seg_new(len)))
        return TN_ENOMEM;
    s->conv = k->conv;
    s->cmd = GW_KCP_PUSH;
    s->frg = h[5];
    s->sn = sn;
    s->ts = get32(h + 8);
    memcpy(SEG_DATA(s), data, len);
    list_insert_after(&k->rcv_buf, at, s);
    rcv_advance(k);
    return 0;
}

/* Congestion window growth after new data was acked: slow start below
 * ssthresh, then about one segment per round trip. */
static void cwnd_grow(struct gw_kcp *k)
{
    uint32_t mss = k->mss;

    if (k->cwnd >= k->rmt_wnd)
        return;
    if (k->cwnd < k->ssthresh) {
        k->cwnd++;
        k->incr += mss;
    } else {
        if (k->incr < mss)
            k->incr = mss;
        k->incr += (mss * mss) / k->incr + mss / 16;
        if ((k->cwnd + 1) * mss <= k->incr)
            k->cwnd = (k->incr + mss - 1) / mss;
    }
    if (k->cwnd > k->rmt_wnd) {
        k->cwnd = k->rmt_wnd;
        k->incr = k->rmt_wnd * mss;
    }
}

static int input_seg(struct gw_kcp *k, const uint8_t *h, const uint8_t *data, uint32_t len,
                     uint32_t *maxack, uint32_t *maxts, int *acked)
{
    uint8_t cmd = h[4];
    uint32_t ts = get32(h + 8), sn = get32(h + 12);

    k->rmt_wnd = (uint32_t)h[6] | (uint32_t)h[7] << 8;
    ack_cumulative(k, get32(h + 16));
    shrink_buf(k);
    switch (cmd) {
    case GW_KCP_ACK:
        if (diff(k->current, ts) >= 0)
            rtt_sample(k, diff(k->current, ts));
        ack_one(k, sn);
        shrink_buf(k);
        if (!*acked || diff(sn, *maxack) > 0) {
            *maxack = sn;
            *maxts = ts;
        }
        *acked = 1;
        return 0;
    case GW_KCP_PUSH:
        if (diff(sn, k->rcv_nxt + k->o.rcvwnd) >= 0)
            return 0; /* past our window: no ack, the peer probes or resends */
        ack_owe(k, sn, ts);
        return rcv_insert(k, h, data, len);
    case GW_KCP_WASK:
        k->probe |= PROBE_TELL;
        return 0;
    case GW_KCP_WINS:
        return 0;
    default:
        return TN_EPROTO;
    }
}

int gw_kcp_input(struct gw_kcp *k, const void *p, size_t n, uint32_t now_ms)
{
    const uint8_t *d = p;
    uint32_t prev_una = k->snd_una, maxack = 0, maxts = 0, len;
    int acked = 0, rc = 0;

    k->current = now_ms;
    if (n < GW_KCP_OVERHEAD)
        return TN_EPROTO;
    while (n >= GW_KCP_OVERHEAD) {
        len = get32(d + 20);
        if (get32(d) != k->conv || len > n - GW_KCP_OVERHEAD || len > k->mss) {
            rc = TN_EPROTO;
            break;
        }
        if ((rc = input_seg(k, d, d + GW_KCP_OVERHEAD, len, &maxack, &maxts, &acked)) != 0)
            break;
        d += GW_KCP_OVERHEAD + len;
        n -= GW_KCP_OVERHEAD + len;
    }
    if (acked)
        ack_skipped(k, maxack, maxts);
    if (diff(k->snd_una, prev_una) > 0)
        cwnd_grow(k);
    return rc;
}

long gw_kcp_peek(const struct gw_kcp *k)
{
    const struct seg *s = FIRST(&k->rcv_queue);
    long len = 0;

    if (s == END(&k->rcv_queue) || k->rcv_queue.n < (size_t)s->frg + 1)
        return -1;
    for (; s != END(&k->rcv_queue); s = s->next) {
        len += s->len;
        if (s->frg == 0)
            break;
    }
    return len;
}

long gw_kcp_recv(struct gw_kcp *k, void *buf, size_t cap)
{
    long size = gw_kcp_peek(k);
    int was_full = k->rcv_queue.n >= k->o.rcvwnd;
    uint8_t *out = buf;
    struct seg *s;
    int last = 0;

    if (size < 0)
        return -1;
    if ((size_t)size > cap)
        return TN_ETOOBIG;
    while (!last && (s = FIRST(&k->rcv_queue)) != END(&k->rcv_queue)) {
        memcpy(out, SEG_DATA(s), s->len);
        out += s->len;
        last = s->frg == 0;
        list_remove(&k->rcv_queue, s);
        free(s);
    }
    rcv_advance(k);
    /* the window was shut and now has room: say so without waiting for
     * the peer's next probe */
    if (was_full && k->rcv_queue.n < k->o.rcvwnd)
        k->probe |= PROBE_TELL;
    return size;
}

/* ---- flushing ------------------------------------------------------------------------ */

static uint16_t wnd_unused(const struct gw_kcp *k)
{
    size_t free_slots = k->rcv_queue.n < k->o.rcvwnd ? k->o.rcvwnd - k->rcv_queue.n : 0;

    return (uint16_t)(free_slots > 65535 ? 65535 : free_slots);
}

static void out_flush(struct gw_kcp *k)
{
    if (k->blen) {
        k->output(k->buf, k->blen, k->ud);
        k->blen = 0;
    }
}

/* Append one segment to the datagram being built, sending the datagram
 * first when the segment does not fit. */
static void out_seg(struct gw_kcp *k, const struct seg *s, const void *data)
{
    if (k->blen + GW_KCP_OVERHEAD + s->len > k->mtu)
        out_flush(k);
    encode_head(k->buf + k->blen, s);
    k->blen += GW_KCP_OVERHEAD;
    if (s->len) {
        memcpy(k->buf + k->blen, data, s->len);
        k->blen += s->len;
    }
}

static void flush_acks(struct gw_kcp *k, struct seg *ctl)
{
    ctl->cmd = GW_KCP_ACK;
    for (size_t i = 0; i < k->nacks; i++) {
        ctl->sn = k->acks[i].sn;
        ctl->ts = k->acks[i].ts;
        out_seg(k, ctl, NULL);
    }
    k->nacks = 0;
}

/* The peer's window is shut: ask it for its window, backing off. */
static void flush_probes(struct gw_kcp *k, struct seg *ctl)
{
    if (k->rmt_wnd == 0) {
        if (k->probe_wait == 0) {
            k->probe_wait = PROBE_INIT;
            k->ts_probe = k->current + k->probe_wait;
        } else if (diff(k->current, k->ts_probe) >= 0) {
            k->probe_wait += k->probe_wait / 2;
            if (k->probe_wait > PROBE_LIMIT)
                k->probe_wait = PROBE_LIMIT;
            k->ts_probe = k->current + k->probe_wait;
            k->probe |= PROBE_ASK;
        }
    } else {
        k->ts_probe = k->probe_wait = 0;
    }
    ctl->sn = ctl->ts = 0;
    if (k->probe & PROBE_ASK) {
        ctl->cmd = GW_KCP_WASK;
        out_seg(k, ctl, NULL);
    }
    if (k->probe & PROBE_TELL) {
        ctl->cmd = GW_KCP_WINS;
        out_seg(k, ctl, NULL);
    }
    k->probe = 0;
}

/* Queued segments enter the send buffer as the windows allow. */
static void fill_window(struct gw_kcp *k)
{
    uint32_t wnd = k->o.sndwnd < k->rmt_wnd ? k->o.sndwnd : k->rmt_wnd;
    struct seg *s;

    if (!k->o.nc && k->cwnd < wnd)
        wnd = k->cwnd;
    while (diff(k->snd_nxt, k->snd_una + wnd) < 0 &&
           (s = FIRST(&k->snd_queue)) != END(&k->snd_queue)) {
        list_remove(&k->snd_queue, s);
        s->conv = k->conv;
        s->cmd = GW_KCP_PUSH;
        s->sn = k->snd_nxt++;
        s->xmit = 0;
        s->fastack = 0;
        list_insert_after(&k->snd_buf, k->snd_buf.head.prev, s);
    }
}

/* Send what is due in the send buffer: first transmissions, timeouts
 * (with backoff) and fast resends. Returns lost (1) / fast (2) bits. */
static int flush_data(struct gw_kcp *k, uint16_t wnd)
{
    uint32_t resent = k->o.resend ? k->o.resend : UINT32_MAX;
    uint32_t rtomin = k->o.nodelay ? 0 : (uint32_t)k->rx_rto >> 3;
    int events = 0;

    for (struct seg *s = FIRST(&k->snd_buf); s != END(&k->snd_buf); s = s->next) {
        int send = 0;
        if (s->xmit == 0) {
            send = 1;
            s->rto = (uint32_t)k->rx_rto;
            s->resendts = k->current + s->rto + rtomin;
        } else if (diff(k->current, s->resendts) >= 0) {
            send = 1;
            s->rto += k->o.nodelay ? s->rto / 2
                                   : (s->rto > (uint32_t)k->rx_rto ? s->rto : (uint32_t)k->rx_rto);
            if (s->rto > RTO_MAX)
                s->rto = RTO_MAX;
            s->resendts = k->current + s->rto;
            events |= 1;
        } else if (s->fastack >= resent && s->xmit <= FAST_LIMIT) {
            send = 1;
            s->fastack = 0;
            s->resendts = k->current + s->rto;
            events |= 2;
        }
        if (!send)
            continue;
        if (s->xmit++)
            k->retrans++;
        s->ts = k->current;
        s->wnd = wnd;
        s->una = k->rcv_nxt;
        out_seg(k, s, SEG_DATA(s));
        if (s->xmit >= k->o.dead_link)
            k->dead = 1;
    }
    return events;
}

/* Loss shrinks the congestion window: a fast resend halves it, a timeout
 * starts over from one segment. */
static void cwnd_react(struct gw_kcp *k, int events)
{
    if (events & 2) {
        uint32_t inflight = k->snd_nxt - k->snd_una;
        k->ssthresh = inflight / 2 < SSTHRESH_MIN ? SSTHRESH_MIN : inflight / 2;
        k->cwnd = k->ssthresh + (k->o.resend ? k->o.resend : 0);
        k->incr = k->cwnd * k->mss;
    }
    if (events & 1) {
        k->ssthresh = k->cwnd / 2 < SSTHRESH_MIN ? SSTHRESH_MIN : k->cwnd / 2;
        k->cwnd = 1;
        k->incr = k->mss;
    }
    if (k->cwnd < 1) {
        k->cwnd = 1;
        k->incr = k->mss;
    }
}

void gw_kcp_flush(struct gw_kcp *k, uint32_t now_ms)
{
    struct seg ctl;

    k->current = now_ms;
    if (!k->updated)
        return;
    memset(&ctl, 0, sizeof(ctl));
    ctl.conv = k->conv;
    ctl.wnd = wnd_unused(k);
    ctl.una = k->rcv_nxt;
    flush_acks(k, &ctl);
    flush_probes(k, &ctl);
    fill_window(k);
    cwnd_react(k, flush_data(k, ctl.wnd));
    out_flush(k);
}

void gw_kcp_update(struct gw_kcp *k, uint32_t now_ms)
{
    int32_t slap;

    k->current = now_ms;
    if (!k->updated) {
        k->updated = 1;
        k->ts_flush = now_ms;
    }
    slap = diff(now_ms, k->ts_flush);
    if (slap >= 10000 || slap < -10000) { /* the clock jumped */
        k->ts_flush = now_ms;
        slap = 0;
    }
    if (slap >= 0) {
        k->ts_flush += k->o.interval;
        if (diff(now_ms, k->ts_flush) >= 0)
            k->ts_flush = now_ms + k->o.interval;
        gw_kcp_flush(k, now_ms);
    }
}

uint32_t gw_kcp_check(const struct gw_kcp *k, uint32_t now_ms)
{
    uint32_t next = k->o.interval;
    int32_t d;

    if (!k->updated)
        return now_ms;
    d = diff(k->ts_flush, now_ms);
    if (d <= 0 || d >= 10000)
        return now_ms;
    if ((uint32_t)d < next)
        next = (uint32_t)d;
    for (const struct seg *s = FIRST(&k->snd_buf); s != END(&k->snd_buf); s = s->next) {
        d = diff(s->resendts, now_ms);
        if (d <= 0)
            return now_ms;
        if ((uint32_t)d < next)
            next = (uint32_t)d;
    }
    return now_ms + next;
}
