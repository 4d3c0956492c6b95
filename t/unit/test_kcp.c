/*
 * test_kcp.c -- the gateway's KCP engine: two engines joined by an
 * in-memory link that loses, delays, reorders and duplicates datagrams on
 * a simulated clock must deliver every message whole and in order; the
 * wire header, conv and malformed-input checks, window probes, the dead
 * link.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <ternd/error.h>

#include "kcp.h"

#define LINK_MAX 20000

struct dgram {
    uint32_t at; /* delivery time */
    size_t len;
    uint8_t *p;
};

/* One direction of the link. */
struct link {
    struct dgram q[LINK_MAX];
    size_t n;
    int loss_pct, dup_pct;
    uint32_t delay, jitter; /* jitter > 0 reorders */
    uint32_t *now;
    uint64_t rnd;
    size_t sent, lost;
};

static uint32_t rnd(struct link *l)
{
    /* xorshift64: deterministic, so a failure repeats */
    l->rnd ^= l->rnd << 13;
    l->rnd ^= l->rnd >> 7;
    l->rnd ^= l->rnd << 17;
    return (uint32_t)(l->rnd >> 11);
}

static void link_push(struct link *l, const void *p, size_t len)
{
    assert_true(l->n < LINK_MAX);
    l->q[l->n].at = *l->now + l->delay + (l->jitter ? rnd(l) % l->jitter : 0);
    l->q[l->n].len = len;
    l->q[l->n].p = malloc(len);
    assert_non_null(l->q[l->n].p);
    memcpy(l->q[l->n].p, p, len);
    l->n++;
}

static void link_out(const void *buf, size_t len, void *ud)
{
    struct link *l = ud;

    l->sent++;
    if (l->loss_pct && (int)(rnd(l) % 100) < l->loss_pct) {
        l->lost++;
        return;
    }
    link_push(l, buf, len);
    if (l->dup_pct && (int)(rnd(l) % 100) < l->dup_pct)
        link_push(l, buf, len);
}

/* Hand every datagram due by now to k, in delivery-time order; with
 * ack_nodelay k answers each one at once (kcp-go's SetACKNoDelay), so
 * acks arrive one datagram each. */
static int ack_nodelay;

static void link_deliver(struct link *l, struct gw_kcp *k)
{
    for (;;) {
        size_t best = l->n;
        for (size_t i = 0; i < l->n; i++)
            if (l->q[i].at <= *l->now && (best == l->n || l->q[i].at < l->q[best].at))
                best = i;
        if (best == l->n)
            return;
        assert_int_equal(gw_kcp_input(k, l->q[best].p, l->q[best].len, *l->now), 0);
        if (ack_nodelay)
            gw_kcp_flush(k, *l->now);
        free(l->q[best].p);
        l->q[best] = l->q[--l->n];
    }
}

static void link_clear(struct link *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->q[i].p);
    l->n = 0;
}

struct pair {
    uint32_t now;
    struct link ab, ba;
    struct gw_kcp *a, *b;
};

static struct pair *pair_new(const struct gw_kcp_opts *o, int loss, uint32_t jitter)
{
    struct pair *p = calloc(1, sizeof(*p));

    assert_non_null(p);
    p->now = 0xfffff000u; /* the clock wraps during the test */
    p->ab.now = p->ba.now = &p->now;
    p->ab.rnd = 0x9e3779b97f4a7c15ull;
    p->ba.rnd = 0x2545f4914f6cdd1dull;
    p->ab.loss_pct = p->ba.loss_pct = loss;
    p->ab.delay = p->ba.delay = 20;
    p->ab.jitter = p->ba.jitter = jitter;
    p->a = gw_kcp_new(0x11223344, o, link_out, &p->ab);
    p->b = gw_kcp_new(0x11223344, o, link_out, &p->ba);
    assert_non_null(p->a);
    assert_non_null(p->b);
    return p;
}

static void pair_free(struct pair *p)
{
    link_clear(&p->ab);
    link_clear(&p->ba);
    gw_kcp_free(p->a);
    gw_kcp_free(p->b);
    free(p);
}

static void pair_step(struct pair *p)
{
    p->now++;
    link_deliver(&p->ab, p->b);
    link_deliver(&p->ba, p->a);
    gw_kcp_update(p->a, p->now);
    gw_kcp_update(p->b, p->now);
}

/* Message i: a length from 0 to several mss (so some are fragmented) and
 * bytes derived from i. */
static size_t msg_make(uint32_t i, uint8_t *out, size_t mss)
{
    size_t len = (i * 7919u) % (mss * 5 + 1);

    for (size_t j = 0; j < len; j++)
        out[j] = (uint8_t)(i * 31u + j);
    return len;
}

static void transfer(const struct gw_kcp_opts *o, int loss, uint32_t jitter, int dup, uint32_t nmsg,
                     uint32_t max_ms)
{
    struct pair *p = pair_new(o, loss, jitter);
    size_t mss = o->mtu - GW_KCP_OVERHEAD;
    uint8_t *want = malloc(mss * 6), *got = malloc(mss * 6);
    uint32_t sent = 0, recvd = 0, start = p->now;

    p->ab.dup_pct = p->ba.dup_pct = dup;
    while (recvd < nmsg) {
        assert_true(p->now - start < max_ms);
        /* keep a bounded backlog, as the transport does */
        while (sent < nmsg && gw_kcp_waitsnd(p->a) < 256) {
            size_t len = msg_make(sent, want, mss);
            assert_int_equal(gw_kcp_send(p->a, want, len), 0);
            sent++;
        }
        pair_step(p);
        for (long n; (n = gw_kcp_recv(p->b, got, mss * 6)) >= 0; recvd++) {
            size_t len = msg_make(recvd, want, mss);
            assert_int_equal((size_t)n, len);
            assert_memory_equal(got, want, len);
        }
    }
    assert_int_equal(gw_kcp_recv(p->b, got, mss * 6), -1);
    if (loss)
        assert_true(gw_kcp_retrans(p->a) > 0);
    assert_false(gw_kcp_dead(p->a));
    free(want);
    free(got);
    pair_free(p);
}

static struct gw_kcp_opts turbo(void)
{
    struct gw_kcp_opts o;

    gw_kcp_opts_default(&o);
    o.nodelay = 1;
    o.interval = 10;
    o.resend = 2;
    o.nc = 1;
    o.sndwnd = 128;
    o.mtu = 500;
    return o;
}

static void test_clean_link(void **state)
{
    struct gw_kcp_opts o;

    gw_kcp_opts_default(&o);
    o.mtu = 300;
    transfer(&o, 0, 0, 0, 500, 600000);
}

static void test_lossy_reordering_normal(void **state)
{
    struct gw_kcp_opts o;

    gw_kcp_opts_default(&o);
    o.mtu = 300;
    transfer(&o, 10, 40, 3, 400, 3600000);
}

static void test_lossy_reordering_turbo(void **state)
{
    struct gw_kcp_opts o = turbo();

    transfer(&o, 5, 30, 2, 2000, 3600000);
    transfer(&o, 25, 60, 5, 300, 3600000);
}

/* Acks one datagram each count up fast resends quickly: a segment lost
 * again must not be resent on every pair of them until the link is
 * declared dead (fast resends are limited and wait for acks of segments
 * sent after the resend). */
static void test_ack_nodelay_under_loss(void **state)
{
    struct gw_kcp_opts o = turbo();

    o.mtu = 1400;
    ack_nodelay = 1;
    transfer(&o, 5, 20, 0, 3000, 3600000);
    transfer(&o, 15, 20, 0, 1000, 3600000);
    ack_nodelay = 0;
}

static void test_header(void **state)
{
    struct gw_kcp_opts o;
    struct pair *p;
    const uint8_t *d;

    gw_kcp_opts_default(&o);
    p = pair_new(&o, 0, 0);
    assert_int_equal(gw_kcp_send(p->a, "hello", 5), 0);
    gw_kcp_update(p->a, p->now);
    assert_int_equal(p->ab.n, 1);
    d = p->ab.q[0].p;
    assert_int_equal(p->ab.q[0].len, GW_KCP_OVERHEAD + 5);
    /* conv, little endian */
    assert_int_equal(d[0], 0x44);
    assert_int_equal(d[3], 0x11);
    assert_int_equal(d[4], GW_KCP_PUSH);
    assert_int_equal(d[5], 0);               /* frg: the only fragment */
    assert_int_equal(d[6] | d[7] << 8, 128); /* wnd: the whole receive window */
    assert_int_equal(d[8] | d[9] << 8 | d[10] << 16 | (uint32_t)d[11] << 24, p->now);
    assert_int_equal(d[12] | d[13] << 8, 0); /* sn */
    assert_int_equal(d[16] | d[17] << 8, 0); /* una */
    assert_int_equal(d[20], 5);
    assert_memory_equal(d + 24, "hello", 5);
    /* the ack that comes back: cmd 82, sn 0, the ts echoed */
    p->now += 20;
    link_deliver(&p->ab, p->b);
    gw_kcp_update(p->b, p->now);
    assert_int_equal(p->ba.n, 1);
    d = p->ba.q[0].p;
    assert_int_equal(d[4], GW_KCP_ACK);
    assert_int_equal(d[16], 1); /* una: b has sn 0 */
    pair_free(p);
}

static void test_fragments(void **state)
{
    struct gw_kcp_opts o;
    struct pair *p;
    uint8_t big[100 * 3 + 10], out[400];

    gw_kcp_opts_default(&o);
    o.mtu = 100 + GW_KCP_OVERHEAD;
    p = pair_new(&o, 0, 0);
    memset(big, 'x', sizeof(big));
    assert_int_equal(gw_kcp_send(p->a, big, sizeof(big)), 0);
    gw_kcp_update(p->a, p->now);
    /* windows of 1 (cwnd) let one fragment out first: frg counts down */
    assert_int_equal(((uint8_t *)p->ab.q[0].p)[5], 3);
    assert_int_equal(gw_kcp_max_message(p->a), 100 * GW_KCP_FRG_MAX);
    assert_int_equal(gw_kcp_send(p->a, big, 100 * GW_KCP_FRG_MAX + 1), TN_ETOOBIG);
    for (int i = 0; i < 5000 && gw_kcp_peek(p->b) < 0; i++)
        pair_step(p);
    assert_int_equal(gw_kcp_peek(p->b), sizeof(big));
    assert_int_equal(gw_kcp_recv(p->b, out, 10), TN_ETOOBIG);
    assert_int_equal(gw_kcp_recv(p->b, out, sizeof(out)), sizeof(big));
    assert_memory_equal(out, big, sizeof(big));
    pair_free(p);
}

static void test_bad_input(void **state)
{
    struct gw_kcp_opts o;
    struct gw_kcp *k;
    uint8_t d[64] = {0};
    uint32_t conv;
    struct link l = {0};
    uint32_t now = 0;

    gw_kcp_opts_default(&o);
    l.now = &now;
    k = gw_kcp_new(7, &o, link_out, &l);
    assert_int_equal(gw_kcp_input(k, d, 10, 0), TN_EPROTO); /* short */
    d[0] = 8;
    d[4] = GW_KCP_PUSH;
    assert_int_equal(gw_kcp_input(k, d, 24, 0), TN_EPROTO); /* other conv */
    d[0] = 7;
    d[4] = 99;
    assert_int_equal(gw_kcp_input(k, d, 24, 0), TN_EPROTO); /* no such command */
    d[4] = GW_KCP_PUSH;
    d[20] = 41;
    assert_int_equal(gw_kcp_input(k, d, 64, 0), TN_EPROTO); /* len past the datagram */
    d[20] = 40;
    assert_int_equal(gw_kcp_input(k, d, 64, 0), 0);
    assert_int_equal(gw_kcp_peek(k), 40);
    assert_int_equal(gw_kcp_conv(d, 24, &conv), 0);
    assert_int_equal(conv, 7);
    assert_int_equal(gw_kcp_conv(d, 23, &conv), -1);
    o.mtu = 10;
    assert_null(gw_kcp_new(7, &o, link_out, &l));
    gw_kcp_free(k);
    link_clear(&l);
}

/* A reader that stops reading shuts its window; the sender stops, probes
 * (WASK), and resumes when the reader drains and tells (WINS). */
static void test_window_probe(void **state)
{
    struct gw_kcp_opts o = turbo();
    struct pair *p;
    uint8_t buf[600];
    int asked = 0, sent = 0, got = 0;

    o.rcvwnd = 8;
    p = pair_new(&o, 0, 0);
    for (int i = 0; i < 40; i++)
        assert_int_equal(gw_kcp_send(p->a, buf, 10), 0);
    for (int i = 0; i < 8000; i++) {
        for (size_t j = 0; j < p->ab.n; j++)
            asked |= ((uint8_t *)p->ab.q[j].p)[4] == GW_KCP_WASK;
        pair_step(p);
    }
    assert_true(asked);
    /* 8 wait for the reader, 8 more in its reorder buffer: both acked */
    assert_int_equal(gw_kcp_waitsnd(p->a), 40 - 16);
    for (int i = 0; i < 20000 && (got < 40 || gw_kcp_waitsnd(p->a)); i++) {
        pair_step(p);
        while (gw_kcp_recv(p->b, buf, sizeof(buf)) == 10)
            got++;
        sent++;
    }
    assert_int_equal(got, 40);
    assert_int_equal(gw_kcp_waitsnd(p->a), 0);
    pair_free(p);
}

/* No answer at all: the segment is resent with a growing rto until the
 * dead-link count. */
static void test_dead_link(void **state)
{
    struct gw_kcp_opts o;
    struct pair *p;
    uint32_t steps = 0;

    gw_kcp_opts_default(&o);
    o.dead_link = 5;
    p = pair_new(&o, 100, 0);
    assert_int_equal(gw_kcp_send(p->a, "x", 1), 0);
    while (!gw_kcp_dead(p->a) && steps < 600000) {
        pair_step(p);
        steps++;
    }
    assert_true(gw_kcp_dead(p->a));
    assert_int_equal(p->ab.sent, 5);
    /* backoff: 200 + 400 + 800 + 1600 ms at least before the fifth try */
    assert_true(steps >= 3000);
    pair_free(p);
}

static void test_check(void **state)
{
    struct gw_kcp_opts o = turbo();
    struct pair *p = pair_new(&o, 0, 0);
    uint32_t t;

    gw_kcp_update(p->a, p->now);
    t = gw_kcp_check(p->a, p->now);
    assert_true(t - p->now > 0 && t - p->now <= o.interval);
    assert_true(gw_kcp_idle(p->a));
    assert_int_equal(gw_kcp_send(p->a, "x", 1), 0);
    assert_false(gw_kcp_idle(p->a));
    for (int i = 0; i < 200; i++)
        pair_step(p);
    /* delivered and acked: nothing owed either way */
    assert_true(gw_kcp_idle(p->a));
    assert_true(gw_kcp_idle(p->b));
    pair_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header),
        cmocka_unit_test(test_fragments),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_clean_link),
        cmocka_unit_test(test_lossy_reordering_normal),
        cmocka_unit_test(test_lossy_reordering_turbo),
        cmocka_unit_test(test_ack_nodelay_under_loss),
        cmocka_unit_test(test_window_probe),
        cmocka_unit_test(test_dead_link),
        cmocka_unit_test(test_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
