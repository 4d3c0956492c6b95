/*
 * zmtp_bind.c -- broker.zmtp listeners: ZMTP 3.0/3.1 connections (NULL
 * mechanism) from libzmq sockets, mapped onto the store. PUB and PUSH
 * peers publish into a topic; SUB peers get a topic through a private
 * #ephemeral channel, filtered by their prefixes and dropped past hwm;
 * PULL peers are consumers of a channel, FINished once written to the
 * socket; router listeners run a Majordomo broker (mdp.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zmtp_peer.h"

#define ZMTP_LOG "broker.zmtp"
#define ZMTP_MINOR 1 /* we speak 3.1 and fall back to 3.0 */

static const struct tn_conn_handler zmtp_handler;

/* ---- writing ------------------------------------------------------------------ */

/* Forget the messages the connection has written out since we looked;
 * for a PULL peer, FIN them: they are the kernel's now. The peer takes no
 * new delivery meanwhile (rdy 0), as each FIN pumps the channel. */
static void pend_settle(struct zmtp_peer *p)
{
    struct broker_client *c = p->zl->cf.type == BROKER_ZMTP_PULL ? p->bc : NULL;
    int64_t now = c ? broker_now() : 0, rdy = c ? c->rdy : 0;

    if (c)
        c->rdy = 0;
    while (p->pn && p->pend[p->phead].end <= p->conn->bytes_out) {
        uint64_t id = p->pend[p->phead].id;
        p->phead = (p->phead + 1) % p->pcap;
        p->pn--;
        if (c && c->ch)
            broker_fin(c, id, now);
    }
    if (c && c->ch)
        broker_client_set_rdy(c, rdy, now);
    else if (c)
        c->rdy = rdy;
}

static int pend_push(struct zmtp_peer *p, uint64_t id)
{
    if (p->pn == p->pcap) {
        size_t cap = p->pcap ? 2 * p->pcap : 16;
        struct zmtp_pend *v = malloc(cap * sizeof(*v));
        if (!v)
            return TN_ENOMEM;
        for (size_t i = 0; i < p->pn; i++)
            v[i] = p->pend[(p->phead + i) % p->pcap];
        free(p->pend);
        p->pend = v;
        p->pcap = cap;
        p->phead = 0;
    }
    p->pend[(p->phead + p->pn) % p->pcap] =
        (struct zmtp_pend){p->conn->bytes_out + tn_conn_pending(p->conn), id};
    p->pn++;
    return 0;
}

/* The hwm counts messages in the output buffer, not yet written out. */
static int over_hwm(struct zmtp_peer *p)
{
    if (p->pn >= (size_t)p->zl->cf.hwm && p->zl->cf.type != BROKER_ZMTP_PULL)
        pend_settle(p);
    return p->pn >= (size_t)p->zl->cf.hwm;
}

/* Past hwm the message is dropped for this peer only: logged when an
 * episode starts and ends (on the next drain), counted always. */
static void drop_one(struct zmtp_peer *p)
{
    p->dropped++;
    p->zl->dropped++;
    if (!p->dropping)
        tn_log_warn(ZMTP_LOG, "%s: peer %s reached hwm %lld: dropping its messages", p->zl->name,
                    p->conn->peer, (long long)p->zl->cf.hwm);
    p->dropping = 1;
}

/* Queue a message; id: the store's message ID (PULL), or 0. */
static int send_parts(struct zmtp_peer *p, const struct zmtp_part *parts, size_t n, uint64_t id)
{
    struct iovec iov[2 * ZMTP_MAX_FRAMES];
    uint8_t hdr[ZMTP_MAX_FRAMES][9];
    int rc;

    if (!p->conn || tn_conn_closing(p->conn) || p->state != ZMTP_OPEN)
        return TN_ECLOSED;
    if (n == 0 || n > ZMTP_MAX_FRAMES)
        return TN_EINVAL;
    if (over_hwm(p)) {
        drop_one(p);
        return TN_ELIMIT;
    }
    for (size_t i = 0; i < n; i++) {
        iov[2 * i].iov_base = hdr[i];
        iov[2 * i].iov_len = zmtp_frame_header(hdr[i], i + 1 < n ? ZMTP_MORE : 0, parts[i].len);
        iov[2 * i + 1].iov_base = (void *)parts[i].p;
        iov[2 * i + 1].iov_len = parts[i].len;
    }
    if ((rc = tn_conn_writev(p->conn, iov, (int)(2 * n))) != 0)
        return rc;
    p->zl->sent++;
    return pend_push(p, id);
}

int zmtp_peer_send(struct zmtp_peer *p, const struct zmtp_part *parts, size_t n)
{
    return send_parts(p, parts, n, 0);
}

/* Commands and our own control messages go out regardless of hwm. */
static void send_buf(struct zmtp_peer *p, struct tn_buf *b)
{
    tn_conn_write(p->conn, tn_buf_rptr(b), tn_buf_rlen(b));
    tn_buf_free(b);
}

static void send_cmd(struct zmtp_peer *p, const char *name, const void *data, size_t len)
{
    struct tn_buf b = TN_BUF_INIT;

    if (zmtp_cmd_append(&b, name, data, len) == 0)
        send_buf(p, &b);
    tn_buf_free(&b);
}

/* A fatal protocol error: tell the peer (ERROR) when the handshake got
 * that far, then close once written. */
static void fail(struct zmtp_peer *p, const char *reason)
{
    struct tn_buf b = TN_BUF_INIT;

    tn_log_info(ZMTP_LOG, "%s: peer %s: %s", p->zl->name, p->conn->peer, reason);
    p->zl->refused++;
    if (p->state >= ZMTP_HANDSHAKE && zmtp_error_append(&b, reason) == 0)
        send_buf(p, &b);
    tn_buf_free(&b);
    tn_conn_close_after_write(p->conn);
}

struct zmtp_peer *zmtp_peer_find(struct zmtp_listener *zl, const uint8_t *rid, size_t n)
{
    for (struct zmtp_peer *p = zl->peers; p; p = p->next)
        if (p->ridlen == n && memcmp(p->rid, rid, n) == 0 && p->state == ZMTP_OPEN)
            return p;
    return NULL;
}

/* ---- subscriptions (SUB peers) ---------------------------------------------------- */

static struct zmtp_sub *sub_find(struct zmtp_peer *p, const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < p->nsubs; i++)
        if (p->subs[i].len == n && memcmp(p->subs[i].prefix, s, n) == 0)
            return &p->subs[i];
    return NULL;
}

static void sub_add(struct zmtp_peer *p, const uint8_t *s, size_t n)
{
    struct zmtp_sub *sub = sub_find(p, s, n);

    if (sub) {
        sub->count++;
        return;
    }
    if (p->nsubs == p->capsubs) {
        size_t cap = p->capsubs ? 2 * p->capsubs : 4;
        struct zmtp_sub *v = realloc(p->subs, cap * sizeof(*v));
        if (!v)
            return;
        p->subs = v;
        p->capsubs = cap;
    }
    sub = &p->subs[p->nsubs];
    if (!(sub->prefix = malloc(n ? n : 1)))
        return;
    memcpy(sub->prefix, s, n);
    sub->len = n;
    sub->count = 1;
    p->nsubs++;
}

static void sub_cancel(struct zmtp_peer *p, const uint8_t *s, size_t n)
{
    struct zmtp_sub *sub = sub_find(p, s, n);

    if (!sub || --sub->count > 0)
        return;
    free(sub->prefix);
    *sub = p->subs[--p->nsubs];
}

static int sub_match(const struct zmtp_peer *p, const char *body, size_t len)
{
    for (size_t i = 0; i < p->nsubs; i++)
        if (p->subs[i].len <= len && memcmp(p->subs[i].prefix, body, p->subs[i].len) == 0)
            return 1;
    return 0;
}

/* ---- consumers (SUB and PULL peers) ------------------------------------------------ */

static int is_zmtp_client(const struct broker_client *c)
{
    return c->conn && c->conn->h == &zmtp_handler && c->conn->data;
}

/* SUB: FIN what p holds in flight (sent or filtered out or dropped), and
 * take what the channel still has the same way, until it is empty.
 * Deliveries made by each FIN's pump must not be finished unsent, so the
 * peer takes none (rdy 0) in a round. */
static void finish_all(struct zmtp_peer *p)
{
    struct broker_client *c = p->bc;
    int64_t now = broker_now();

    do {
        int64_t rdy = c->rdy;
        c->rdy = 0;
        while (c->ifl && broker_fin(c, c->ifl->msg->id, now) == 0)
            ;
        broker_client_set_rdy(c, rdy, now);
    } while (c->ifl && c->ch);
}

static void fin_list_add(struct zmtp_peer *p)
{
    struct broker_zmtp *z = p->zl->z;

    if (p->on_fin_list)
        return;
    p->on_fin_list = 1;
    p->fnext = z->fin;
    z->fin = p;
}

void broker_zmtp_send_msg(struct broker_client *c, const struct broker_ent *e)
{
    struct zmtp_peer *p;
    struct zmtp_part part;

    if (!is_zmtp_client(c)) {
        broker_proto_send_msg(c, e);
        return;
    }
    p = c->conn->data;
    part.p = (const uint8_t *)e->msg->body;
    part.len = e->msg->len;
    /* PULL: in flight until written out (never over hwm: rdy is hwm);
     * SUB: finished at the end of the loop iteration, sent or not */
    if (p->zl->cf.type == BROKER_ZMTP_PULL)
        send_parts(p, &part, 1, e->msg->id);
    else if (sub_match(p, e->msg->body, e->msg->len))
        send_parts(p, &part, 1, 0);
    fin_list_add(p);
}

void broker_zmtp_kick(struct broker_client *c)
{
    if (!is_zmtp_client(c)) {
        broker_proto_kick(c);
        return;
    }
    tn_conn_close(c->conn, 0);
}

/* Before the loop blocks: SUB deliveries of this iteration are done,
 * finish them; PULL deliveries the connection wrote out are finished, the
 * others are looked at again next iteration. */
static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct broker_zmtp *z = w->data;
    struct zmtp_peer *again = NULL;

    while (z->fin) {
        struct zmtp_peer *p = z->fin;
        z->fin = p->fnext;
        p->on_fin_list = 0;
        if (!p->bc)
            continue;
        if (p->zl->cf.type == BROKER_ZMTP_SUB) {
            finish_all(p);
            continue;
        }
        pend_settle(p);
        if (p->pn && !p->on_fin_list) {
            p->on_fin_list = 1;
            p->fnext = again;
            again = p;
        }
    }
    z->fin = again;
}

static void fin_list_remove(struct zmtp_peer *p)
{
    struct zmtp_peer **pp;

    for (pp = &p->zl->z->fin; *pp; pp = &(*pp)->fnext)
        if (*pp == p) {
            *pp = p->fnext;
            break;
        }
    p->on_fin_list = 0;
}

static int consumer_attach(struct zmtp_peer *p)
{
    struct zmtp_listener *zl = p->zl;
    struct broker *bk = zl->z->bk;
    struct broker_client *c = calloc(1, sizeof(*c));
    struct broker_topic *t;
    struct broker_channel *ch;
    char chname[BROKER_NAME_MAX + 1];
    int64_t now = broker_now();
    int err = 0;

    if (!c)
        return TN_ENOMEM;
    c->bk = bk;
    c->conn = p->conn;
    c->id = ++bk->next_client_id;
    c->msg_timeout = bk->conf->max_msg_timeout; /* held only until written */
    c->connect_ts = now / 1000;
    snprintf(c->client_id, sizeof(c->client_id), "zmq-%s", p->conn->peer);
    snprintf(c->hostname, sizeof(c->hostname), "%s", p->conn->peer);
    snprintf(c->user_agent, sizeof(c->user_agent), "libzmq/ZMTP 3.%d %s", p->minor,
             zl->cf.type == BROKER_ZMTP_SUB ? "SUB" : "PULL");
    p->bc = c;
    if (zl->cf.type == BROKER_ZMTP_SUB)
        snprintf(chname, sizeof(chname), "zmq.%llu#ephemeral", (unsigned long long)p->conn->id);
    else
        snprintf(chname, sizeof(chname), "%s", zl->channel);
    if (!(t = broker_topic_get(bk, zl->topic, &err)) ||
        !(ch = broker_channel_get(t, chname, now, &err)) ||
        (err = broker_client_sub(c, ch, now)) != 0)
        return err ? err : TN_ENOMEM;
    broker_client_set_rdy(c, zl->cf.hwm, now);
    return 0;
}

static void consumer_detach(struct zmtp_peer *p)
{
    if (!p->bc)
        return;
    if (p->on_fin_list)
        fin_list_remove(p);
    /* SUB: what is in flight was written or dropped, finish it; PULL: what
     * was written out is finished, the rest goes back to the channel for
     * another consumer */
    p->bc->rdy = 0;
    if (p->zl->cf.type == BROKER_ZMTP_PULL) {
        pend_settle(p);
    } else if (p->bc->ch) {
        while (p->bc->ifl && broker_fin(p->bc, p->bc->ifl->msg->id, broker_now()) == 0)
            ;
    }
    broker_client_unsub(p->bc, broker_now());
    free(p->bc);
    p->bc = NULL;
}

/* ---- incoming messages ---------------------------------------------------------------- */

/* PUB/PUSH peers: into the listener's topic, or the topic frame 1 names
 * (the ZeroMQ envelope idiom). Frames of the body are joined. */
static void publish(struct zmtp_peer *p, const struct zmtp_part *f, size_t n)
{
    struct zmtp_listener *zl = p->zl;
    char topic[BROKER_NAME_MAX + 1];
    const void *body;
    size_t len, first = 0;
    int rc;

    zl->received++;
    if (zl->topic[0]) {
        snprintf(topic, sizeof(topic), "%s", zl->topic);
    } else {
        if (n < 2 || !broker_name_valid((const char *)f[0].p, f[0].len)) {
            tn_log_debug(ZMTP_LOG, "%s: message without a valid topic frame dropped", zl->name);
            zl->dropped++;
            return;
        }
        memcpy(topic, f[0].p, f[0].len);
        topic[f[0].len] = '\0';
        first = 1;
    }
    if (n - first == 1) {
        body = f[first].p;
        len = f[first].len;
    } else {
        tn_buf_reset(&zl->scratch);
        for (size_t i = first; i < n; i++)
            if (tn_buf_append(&zl->scratch, f[i].p, f[i].len) != 0)
                return;
        body = tn_buf_rptr(&zl->scratch);
        len = tn_buf_rlen(&zl->scratch);
    }
    if ((rc = broker_publish(zl->z->bk, topic, body, len, 0, 1)) != 0) {
        zl->dropped++;
        tn_log_debug(ZMTP_LOG, "%s: publish to %s: %s", zl->name, topic, tn_strerror(rc));
        return;
    }
    zl->published++;
}

static void on_message(struct zmtp_peer *p, const struct zmtp_part *f, size_t n)
{
    switch (p->zl->cf.type) {
    case BROKER_ZMTP_PUB:
    case BROKER_ZMTP_PUSH:
        publish(p, f, n);
        break;
    case BROKER_ZMTP_SUB:
        /* ZMTP 3.0 subscriptions: 0x01 + prefix, 0x00 + prefix; other
         * messages from a SUB mean nothing to a PUB */
        if (f[0].len >= 1 && f[0].p[0] == 1)
            sub_add(p, f[0].p + 1, f[0].len - 1);
        else if (f[0].len >= 1 && f[0].p[0] == 0)
            sub_cancel(p, f[0].p + 1, f[0].len - 1);
        break;
    case BROKER_ZMTP_ROUTER:
        mdp_message(p->zl->mdp, p, f, n);
        break;
    default: /* PULL peers send nothing */
        break;
    }
}

/* ---- handshake and commands --------------------------------------------------------------- */

/* The peer is READY: start what the listener maps it onto. */
static void on_open(struct zmtp_peer *p)
{
    struct zmtp_listener *zl = p->zl;
    int rc;

    p->state = ZMTP_OPEN;
    switch (zl->cf.type) {
    case BROKER_ZMTP_PUB:
        /* a PUB filters at its end: subscribe to everything, as a command
         * for 3.1 peers and as a message for 3.0 ones */
        if (p->minor >= 1) {
            send_cmd(p, "SUBSCRIBE", NULL, 0);
        } else {
            struct tn_buf b = TN_BUF_INIT;
            if (zmtp_frame_append(&b, 0, "\x01", 1) == 0)
                send_buf(p, &b);
            tn_buf_free(&b);
        }
        break;
    case BROKER_ZMTP_SUB:
    case BROKER_ZMTP_PULL:
        if ((rc = consumer_attach(p)) != 0) {
            tn_log_warn(ZMTP_LOG, "%s: cannot attach %s to %s: %s", zl->name, p->conn->peer,
                        zl->topic, tn_strerror(rc));
            fail(p, "cannot attach to the topic");
        }
        break;
    default:
        break;
    }
}

static void on_ready(struct zmtp_peer *p, const struct zmtp_cmd *c)
{
    struct zmtp_listener *zl = p->zl;
    const uint8_t *v;
    size_t vlen;

    if (zmtp_props_valid(c->data, c->dlen) != 0) {
        fail(p, "malformed READY properties");
        return;
    }
    if (!zmtp_prop_find(c->data, c->dlen, "Socket-Type", &v, &vlen) ||
        !zmtp_socket_compatible(zl->our_type, v, vlen)) {
        fail(p, "invalid socket type");
        return;
    }
    /* a routing id: the peer's Identity when it has one (first byte
     * non-zero), else one of ours starting with 0 as libzmq does */
    if (zmtp_prop_find(c->data, c->dlen, "Identity", &v, &vlen) && vlen > 0 && v[0] != 0 &&
        !zmtp_peer_find(zl, v, vlen)) {
        memcpy(p->rid, v, vlen < ZMTP_RID_MAX ? vlen : ZMTP_RID_MAX);
        p->ridlen = vlen < ZMTP_RID_MAX ? vlen : ZMTP_RID_MAX;
    } else {
        uint32_t n = ++zl->z->next_rid;
        p->rid[0] = 0;
        p->rid[1] = (uint8_t)(n >> 24);
        p->rid[2] = (uint8_t)(n >> 16);
        p->rid[3] = (uint8_t)(n >> 8);
        p->rid[4] = (uint8_t)n;
        p->ridlen = 5;
    }
    on_open(p);
}

static void on_command(struct zmtp_peer *p, const uint8_t *body, size_t len)
{
    struct zmtp_cmd c;

    if (zmtp_cmd_parse(body, len, &c) != 0) {
        fail(p, "malformed command");
        return;
    }
    if (p->state == ZMTP_HANDSHAKE) {
        if (zmtp_cmd_is(&c, "READY"))
            on_ready(p, &c);
        else
            fail(p, "expected READY");
        return;
    }
    if (zmtp_cmd_is(&c, "PING")) {
        /* PONG echoes the context; a TTL asks us to give up on the peer
         * when it stays silent that long (tenths of a second) */
        unsigned ttl = c.dlen >= 2 ? (unsigned)c.data[0] << 8 | c.data[1] : 0;
        size_t ctx = c.dlen > 2 ? c.dlen - 2 : 0;
        send_cmd(p, "PONG", c.data + 2, ctx > 16 ? 16 : ctx);
        if (ttl)
            tn_conn_set_idle_timeout(p->conn, (int64_t)ttl * 100);
    } else if (zmtp_cmd_is(&c, "SUBSCRIBE") && p->zl->cf.type == BROKER_ZMTP_SUB) {
        sub_add(p, c.data, c.dlen);
    } else if (zmtp_cmd_is(&c, "CANCEL") && p->zl->cf.type == BROKER_ZMTP_SUB) {
        sub_cancel(p, c.data, c.dlen);
    } else if (zmtp_cmd_is(&c, "ERROR")) {
        tn_log_info(ZMTP_LOG, "%s: peer %s sent ERROR", p->zl->name, p->conn->peer);
        tn_conn_close(p->conn, 0);
    } else if (zmtp_cmd_is(&c, "READY")) {
        fail(p, "READY twice");
    }
    /* PONG and unknown commands: nothing to do (any traffic is a sign of
     * life for the idle timeout) */
}

static int on_greeting(struct zmtp_peer *p, const uint8_t *g)
{
    struct zmtp_greeting pg;
    struct tn_buf b = TN_BUF_INIT;

    if (zmtp_greeting_parse(g, &pg) != 0 || strcmp(pg.mechanism, "NULL") != 0) {
        fail(p, "only the NULL mechanism is offered");
        return -1;
    }
    p->minor = pg.minor >= ZMTP_MINOR ? ZMTP_MINOR : 0;
    p->state = ZMTP_HANDSHAKE;
    /* NULL: both sides send READY without waiting (3.0); a 3.1 server
     * answers the client's READY, which sending first also satisfies as
     * the mechanism carries no negotiation */
    if (zmtp_ready_append(&b, p->zl->our_type, NULL, 0) == 0)
        send_buf(p, &b);
    tn_buf_free(&b);
    return 0;
}

/* One whole message (or one command) at the start of in: its frames in
 * f/n and the bytes it takes; 0 when incomplete, < 0 on a protocol error. */
static ssize_t next_message(struct zmtp_peer *p, const uint8_t *in, size_t len, struct zmtp_part *f,
                            size_t *n, int *command)
{
    uint64_t max = p->zl->z->bk->conf->max_msg_size;
    size_t off = 0;
    struct zmtp_frame fr;
    ssize_t used;

    *n = 0;
    *command = 0;
    for (;;) {
        if ((used = zmtp_frame_parse(in + off, len - off, max, &fr)) <= 0)
            return used;
        if (fr.flags & ZMTP_COMMAND) {
            if (*n > 0)
                return TN_EPROTO; /* a command inside a multipart message */
            *command = 1;
        }
        if (*n == ZMTP_MAX_FRAMES)
            return TN_ELIMIT;
        f[*n].p = fr.body;
        f[(*n)++].len = (size_t)fr.len;
        off += (size_t)used;
        if (!(fr.flags & ZMTP_MORE))
            return (ssize_t)off;
    }
}

static void zmtp_read(struct tn_conn *c)
{
    struct zmtp_peer *p = c->data;
    struct zmtp_part f[ZMTP_MAX_FRAMES];

    while (p && !tn_conn_closing(c)) {
        const uint8_t *in = (const uint8_t *)tn_buf_rptr(&c->in);
        size_t len = tn_buf_rlen(&c->in), n;
        ssize_t used;
        int command;

        if (p->state == ZMTP_SIG) {
            if (len < ZMTP_SIG_LEN)
                return;
            if (zmtp_signature_check(in, len) != 0) {
                fail(p, "not a ZMTP 3 greeting");
                return;
            }
            p->state = ZMTP_GREET;
            continue;
        }
        if (p->state == ZMTP_GREET) {
            if (len < ZMTP_GREETING_LEN || on_greeting(p, in) != 0)
                return;
            tn_buf_consume(&c->in, ZMTP_GREETING_LEN);
            continue;
        }
        if ((used = next_message(p, in, len, f, &n, &command)) == 0)
            return;
        if (used < 0) {
            fail(p, used == TN_ETOOBIG ? "frame larger than max_msg_size" : "malformed frame");
            return;
        }
        if (command)
            on_command(p, f[0].p, f[0].len);
        else if (p->state != ZMTP_OPEN)
            fail(p, "message before READY");
        else
            on_message(p, f, n);
        tn_buf_consume(&c->in, (size_t)used);
    }
}

/* Output written out: nothing counts towards hwm any more, and a PULL
 * peer's messages are now the kernel's: FIN them (and take more). */
static void zmtp_drain(struct tn_conn *c)
{
    struct zmtp_peer *p = c->data;

    if (!p)
        return;
    if (p->dropping) {
        tn_log_info(ZMTP_LOG, "%s: peer %s below hwm again (%llu dropped so far)", p->zl->name,
                    c->peer, (unsigned long long)p->dropped);
        p->dropping = 0;
    }
    pend_settle(p);
}

static void peer_free(struct zmtp_peer *p)
{
    struct zmtp_listener *zl = p->zl;

    consumer_detach(p);
    if (zl->mdp)
        mdp_peer_gone(zl->mdp, p);
    for (size_t i = 0; i < p->nsubs; i++)
        free(p->subs[i].prefix);
    free(p->subs);
    free(p->pend);
    if (p->prev)
        p->prev->next = p->next;
    else
        zl->peers = p->next;
    if (p->next)
        p->next->prev = p->prev;
    zl->npeers--;
    free(p);
}

static void zmtp_close(struct tn_conn *c, int reason)
{
    struct zmtp_peer *p = c->data;

    if (!p)
        return;
    tn_log_debug(ZMTP_LOG, "%s: peer %s gone: %s", p->zl->name, c->peer,
                 reason ? tn_strerror(reason) : "closed");
    c->data = NULL;
    peer_free(p);
}

static const struct tn_conn_handler zmtp_handler = {zmtp_read, NULL, zmtp_drain, zmtp_close};

static int zmtp_accept(struct tn_listener *l, struct tn_conn *c, void *ud)
{
    struct zmtp_listener *zl = ud;
    struct zmtp_peer *p = calloc(1, sizeof(*p));
    uint8_t g[ZMTP_GREETING_LEN];

    if (!p)
        return TN_ENOMEM;
    p->zl = zl;
    p->conn = c;
    p->next = zl->peers;
    if (zl->peers)
        zl->peers->prev = p;
    zl->peers = p;
    zl->npeers++;
    c->h = &zmtp_handler;
    c->data = p;
    /* the whole greeting at once: we only speak 3.x, so nothing depends
     * on the peer's first 11 bytes */
    zmtp_greeting_build(g, ZMTP_MINOR);
    tn_conn_write(c, g, sizeof(g));
    return 0;
}

/* ---- lifecycle and stats ------------------------------------------------------------------ */

static const char *our_type(int type)
{
    switch (type) {
    case BROKER_ZMTP_PUB:
        return "SUB";
    case BROKER_ZMTP_PUSH:
        return "PULL";
    case BROKER_ZMTP_SUB:
        return "PUB";
    case BROKER_ZMTP_PULL:
        return "PUSH";
    default:
        return "ROUTER";
    }
}

static const char *type_name(int type)
{
    static const char *names[] = {"?", "pub", "push", "sub", "pull", "router"};

    return type >= 0 && type <= BROKER_ZMTP_ROUTER ? names[type] : "?";
}

static int listener_start(struct broker_zmtp *z, struct zmtp_listener *zl,
                          const struct broker_zmtp_conf *cf)
{
    const struct broker_conf *bc = z->bk->conf;
    struct tn_listen_opts lo = {0};
    int err = 0;

    zl->z = z;
    zl->cf = *cf;
    snprintf(zl->topic, sizeof(zl->topic), "%s", cf->topic ? cf->topic : "");
    snprintf(zl->channel, sizeof(zl->channel), "%s", cf->channel ? cf->channel : "zmq");
    snprintf(zl->name, sizeof(zl->name), "%s", cf->listen.text);
    zl->cf.topic = zl->cf.channel = NULL; /* the config's strings may go on reload */
    zl->our_type = our_type(cf->type);
    if (cf->type == BROKER_ZMTP_ROUTER && !(zl->mdp = mdp_create(zl)))
        return TN_ENOMEM;
    lo.name = "broker.zmtp";
    lo.max_conns = (size_t)bc->max_connections;
    /* one whole message must fit in the input buffer */
    lo.lim.in_max = (size_t)bc->max_msg_size + 64 * 1024;
    if (!(zl->l = tn_listen(&cf->listen, &lo, zmtp_accept, zl, &err)))
        return err;
    tn_log_info(BROKER_LOG, "ZMTP (%s) listening on %s", type_name(cf->type),
                tn_listener_addr(zl->l));
    return 0;
}

int broker_zmtp_start(struct broker *bk)
{
    const struct broker_zmtp_list *list = &bk->conf->zmtp;
    struct broker_zmtp *z;
    int rc;

    if (list->n == 0)
        return 0;
    if (!(z = calloc(1, sizeof(*z))) || !(z->ls = calloc(list->n, sizeof(*z->ls)))) {
        free(z);
        return TN_ENOMEM;
    }
    z->bk = bk;
    bk->zmtp = z;
    ev_prepare_init(&z->prepare, prepare_cb);
    /* before the connection layer writes what this one produces */
    ev_set_priority(&z->prepare, EV_MAXPRI);
    z->prepare.data = z;
    ev_prepare_start(tn_loop(), &z->prepare);
    for (size_t i = 0; i < list->n; i++) {
        z->nls++;
        if ((rc = listener_start(z, &z->ls[i], &list->v[i])) != 0)
            return rc;
    }
    return 0;
}

/* Close every connection now: consumers leave their channels (a PULL
 * peer's unwritten messages are requeued, to be persisted by the caller). */
void broker_zmtp_stop(struct broker *bk)
{
    struct broker_zmtp *z = bk->zmtp;

    if (!z)
        return;
    for (size_t i = 0; i < z->nls; i++) {
        struct zmtp_listener *zl = &z->ls[i];
        if (zl->l)
            tn_listener_close(zl->l);
        while (zl->peers) {
            struct tn_conn *c = zl->peers->conn;
            c->data = NULL;
            peer_free(zl->peers);
            tn_conn_close(c, 0);
        }
        if (zl->mdp)
            mdp_free(zl->mdp);
        tn_buf_free(&zl->scratch);
    }
    ev_prepare_stop(tn_loop(), &z->prepare);
    free(z->ls);
    free(z);
    bk->zmtp = NULL;
}

void broker_zmtp_stats(struct broker *bk, struct tn_stats_out *out)
{
    struct broker_zmtp *z = bk->zmtp;

    for (size_t i = 0; z && i < z->nls; i++) {
        struct zmtp_listener *zl = &z->ls[i];
        const char *lb[] = {"listen", zl->name, "type", type_name(zl->cf.type), NULL};
        tn_stats_emit(out, "ternd_broker_zmtp_connections", TN_STAT_GAUGE,
                      "Open ZeroMQ connections", lb, (double)zl->npeers);
        tn_stats_emit(out, "ternd_broker_zmtp_received_total", TN_STAT_COUNTER,
                      "Messages received from ZeroMQ peers", lb, (double)zl->received);
        tn_stats_emit(out, "ternd_broker_zmtp_published_total", TN_STAT_COUNTER,
                      "Messages published into topics from ZeroMQ peers", lb,
                      (double)zl->published);
        tn_stats_emit(out, "ternd_broker_zmtp_sent_total", TN_STAT_COUNTER,
                      "Messages sent to ZeroMQ peers", lb, (double)zl->sent);
        tn_stats_emit(out, "ternd_broker_zmtp_dropped_total", TN_STAT_COUNTER,
                      "Messages dropped (over hwm, bad topic frame, refused publish)", lb,
                      (double)zl->dropped);
        tn_stats_emit(out, "ternd_broker_zmtp_refused_total", TN_STAT_COUNTER,
                      "Connections closed for a protocol error", lb, (double)zl->refused);
        if (zl->mdp)
            mdp_stats(zl->mdp, out, lb);
    }
}
