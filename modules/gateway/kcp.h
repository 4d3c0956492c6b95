/*
 * kcp.h -- a KCP ARQ engine (the protocol of skywind3000/kcp, as spoken by
 * kcp-go): reliable, ordered messages over an unreliable datagram link. It
 * does no I/O and reads no clock: the caller feeds it datagrams and the time
 * in ms, and it hands datagrams to an output callback. Pure and
 * single-threaded (the gateway runs it on the loop thread).
 */
#ifndef TERND_GW_KCP_H
#define TERND_GW_KCP_H

#include <stddef.h>
#include <stdint.h>

#define GW_KCP_OVERHEAD 24 /* segment header: conv cmd frg wnd ts sn una len, little endian */
#define GW_KCP_MTU_MIN 50
#define GW_KCP_MTU_MAX 65507 /* the largest UDP payload over IPv4 */
#define GW_KCP_FRG_MAX 127   /* fragments of one message: fits a peer's default 128 window */

enum { GW_KCP_PUSH = 81, GW_KCP_ACK = 82, GW_KCP_WASK = 83, GW_KCP_WINS = 84 };

struct gw_kcp_opts {
    int nodelay;        /* 1: min rto 30ms, backoff x1.5 instead of x2 */
    uint32_t interval;  /* ms between flushes: 10..5000 */
    uint32_t resend;    /* fast resend after this many later acks; 0: off */
    int nc;             /* 1: no congestion window (send window and peer window only) */
    uint32_t sndwnd;    /* segments in flight */
    uint32_t rcvwnd;    /* segments buffered for the reader */
    uint32_t mtu;       /* bytes of one datagram */
    uint32_t dead_link; /* transmissions of one segment before the link is dead */
};

/* Send one datagram of len bytes (valid only during the call). */
typedef void (*gw_kcp_output_pt)(const void *buf, size_t len, void *ud);

struct gw_kcp;

/* Defaults: normal mode (nodelay 0, interval 100, resend 0, nc 0),
 * windows 32/128, mtu 1400, dead link 20. */
void gw_kcp_opts_default(struct gw_kcp_opts *o);
/* A new engine for conversation conv, or NULL (out of memory, or options
 * out of range). Owned by the caller: gw_kcp_free. */
struct gw_kcp *gw_kcp_new(uint32_t conv, const struct gw_kcp_opts *o, gw_kcp_output_pt out,
                          void *ud);
void gw_kcp_free(struct gw_kcp *k);

/* Queue one message (copied). 0, TN_ETOOBIG (more than GW_KCP_FRG_MAX
 * fragments), TN_ENOMEM. Sent on the next flush. */
int gw_kcp_send(struct gw_kcp *k, const void *p, size_t n);
/* The largest message gw_kcp_send takes. */
size_t gw_kcp_max_message(const struct gw_kcp *k);
/* One datagram from the peer. 0, or TN_EPROTO (short, other conv, bad
 * command, length past the datagram or over the mss): the segments before
 * the bad one were taken. */
int gw_kcp_input(struct gw_kcp *k, const void *p, size_t n, uint32_t now_ms);
/* Size of the next whole message, or -1 when none is complete. */
long gw_kcp_peek(const struct gw_kcp *k);
/* Copy the next whole message into buf: its length, -1 when none,
 * TN_ETOOBIG when cap is smaller than gw_kcp_peek. */
long gw_kcp_recv(struct gw_kcp *k, void *buf, size_t cap);
/* Advance the clock; flushes (acks, probes, data, retransmissions) when
 * an interval has passed. */
void gw_kcp_update(struct gw_kcp *k, uint32_t now_ms);
/* Flush now (after a send or input, for latency). */
void gw_kcp_flush(struct gw_kcp *k, uint32_t now_ms);
/* When gw_kcp_update should next be called (absolute ms). */
uint32_t gw_kcp_check(const struct gw_kcp *k, uint32_t now_ms);
/* Nothing to send, resend, acknowledge or probe: no update is needed until
 * the next send or input. */
int gw_kcp_idle(const struct gw_kcp *k);
/* Segments and bytes queued or unacknowledged. */
size_t gw_kcp_waitsnd(const struct gw_kcp *k);
size_t gw_kcp_sndbytes(const struct gw_kcp *k);
/* A segment was sent dead_link times without an ack. */
int gw_kcp_dead(const struct gw_kcp *k);
/* Smoothed rtt in ms (0 before the first ack), for logs and tests. */
uint32_t gw_kcp_srtt(const struct gw_kcp *k);
/* Retransmissions (timeout and fast) so far. */
uint64_t gw_kcp_retrans(const struct gw_kcp *k);
/* The conv of a datagram, 0 and -1 when it is too short. */
int gw_kcp_conv(const void *p, size_t n, uint32_t *conv);

#endif
