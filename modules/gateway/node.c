/*
 * node.c -- backend node links. When on_packet names a node service, the
 * packet goes (with the session id and uid) to one instance of it, picked
 * round-robin, at random or by weight among the instances the registry
 * lists and that did not fail recently. One TCP link per instance address,
 * opened on first use; what the node sends back (replies, pushes to a
 * session, uid, group or everyone, bind, close) is relayed to the clients.
 * The wire format is in NODE.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

#define LINK_FRAME_HEAD 5 /* len(4) type(1) */
#define LINK_EXTRA 1024   /* frame bytes beyond a packet's payload */
#define LINK_MAX_INSTANCES 64

enum {
    NODE_HEARTBEAT = 0,
    NODE_FORWARD = 1,  /* gateway -> node */
    NODE_CLOSED = 2,   /* gateway -> node: a session ended */
    NODE_SESSION = 16, /* node -> gateway: to one session (reply or push) */
    NODE_UID = 17,
    NODE_GROUP = 18,
    NODE_BROADCAST = 19,
    NODE_BIND = 20,
    NODE_CLOSE = 21,
    NODE_JOIN = 22,
    NODE_LEAVE = 23
};

struct gw_link {
    struct tn_map_node node; /* in gw->links, key: key */
    uint64_t id;
    struct gw *gw;
    struct tn_conn *conn; /* NULL when not connected */
    int up;               /* the connect finished */
    int64_t down_until;   /* ms: skipped by selection until then */
    struct tn_addr addr;
    char key[TN_ADDR_TEXT_MAX];
};

/* ---- big-endian helpers ------------------------------------------------------------ */

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) << 32 | get32(p + 4);
}

/* ---- frames from the node ------------------------------------------------------------ */

static struct gw_session *frame_session(struct gw *gw, const uint8_t *b, size_t n)
{
    return n >= 8 ? gw_session_find(gw, get64(b)) : NULL;
}

/* A length-prefixed name (2 bytes) at b; its length or -1. */
static long frame_name(const uint8_t *b, size_t n)
{
    size_t len;

    if (n < 2)
        return -1;
    len = (size_t)b[0] << 8 | b[1];
    return len + 2 <= n ? (long)len : -1;
}

static int link_frame(struct gw *gw, int type, const uint8_t *b, size_t n)
{
    struct gw_session *s;
    long len;

    gw->st.node_frames++;
    switch (type) {
    case NODE_HEARTBEAT:
        return 0;
    case NODE_SESSION:
        if (n < 16)
            return TN_EPROTO;
        if ((s = frame_session(gw, b, n)))
            gw_session_send(s, (int32_t)get32(b + 8), (int32_t)get32(b + 12), b + 16, n - 16);
        return 0;
    case NODE_UID:
        if (n < 4 || (len = frame_name(b + 4, n - 4)) < 0)
            return TN_EPROTO;
        if ((s = gw_uid_find(gw, (const char *)b + 6, (size_t)len)))
            gw_session_send(s, (int32_t)get32(b), 0, b + 6 + len, n - 6 - (size_t)len);
        return 0;
    case NODE_GROUP:
        if (n < 4 || (len = frame_name(b + 4, n - 4)) < 0)
            return TN_EPROTO;
        gw_group_send(gw, (const char *)b + 6, (size_t)len, (int32_t)get32(b), b + 6 + len,
                      n - 6 - (size_t)len);
        return 0;
    case NODE_BROADCAST:
        if (n < 4)
            return TN_EPROTO;
        gw_broadcast(gw, (int32_t)get32(b), b + 4, n - 4);
        return 0;
    case NODE_BIND:
    case NODE_CLOSE:
    case NODE_JOIN:
    case NODE_LEAVE:
        if (n < 8)
            return TN_EPROTO;
        if (!(s = frame_session(gw, b, n)))
            return 0;
        if (type == NODE_BIND && n > 8)
            gw_session_bind(s, (const char *)b + 8, n - 8);
        else if (type == NODE_BIND)
            gw_session_unbind(s);
        else if (type == NODE_CLOSE)
            gw_session_close(s, GW_CLOSE_NORMAL, "closed by the node");
        else if (type == NODE_JOIN)
            gw_group_join(gw, (const char *)b + 8, n - 8, s);
        else
            gw_group_leave(gw, (const char *)b + 8, n - 8, s);
        return 0;
    default:
        return TN_EPROTO;
    }
}

static void link_on_read(struct tn_conn *c)
{
    struct gw_link *l = c->data;
    const uint8_t *p;
    size_t avail;
    uint32_t len;

    while (l && (avail = tn_buf_rlen(&c->in)) >= LINK_FRAME_HEAD) {
        p = (const uint8_t *)tn_buf_rptr(&c->in);
        len = get32(p);
        if (len < 1 || len > l->gw->codec.max_size + LINK_EXTRA) {
            tn_log_warn(GW_LOG, "node %s: bad frame length %u, closing the link", l->key, len);
            tn_conn_close(c, TN_EPROTO);
            return;
        }
        if (avail < 4 + (size_t)len)
            return;
        if (link_frame(l->gw, p[4], p + LINK_FRAME_HEAD, len - 1) != 0) {
            tn_log_warn(GW_LOG, "node %s: malformed frame of type %d, closing the link", l->key,
                        p[4]);
            tn_conn_close(c, TN_EPROTO);
            return;
        }
        tn_buf_consume(&c->in, 4 + (size_t)len);
    }
}

static void link_on_connect(struct tn_conn *c, int status)
{
    struct gw_link *l = c->data;

    if (!l)
        return;
    if (status != 0) {
        tn_log_warn(GW_LOG, "node %s: connect failed: %s", l->key, tn_strerror(status));
        l->conn = NULL;
        l->down_until = tn_now_ms() + l->gw->conf->node_retry;
        return;
    }
    l->up = 1;
    tn_conn_set_idle_timeout(c, 0);
    tn_log_info(GW_LOG, "node %s: connected%s", l->key, tn_conn_tls(c, NULL, NULL) ? " (TLS)" : "");
}

static void link_on_close(struct tn_conn *c, int reason)
{
    struct gw_link *l = c->data;

    if (!l)
        return;
    tn_log_warn(GW_LOG, "node %s: link closed (%s)", l->key,
                reason ? tn_strerror(reason) : "closed");
    l->conn = NULL;
    l->up = 0;
    if (reason != 0)
        l->down_until = tn_now_ms() + l->gw->conf->node_retry;
}

static const struct tn_conn_handler link_handler = {link_on_read, link_on_connect, NULL,
                                                    link_on_close};

static struct gw_link *link_get(struct gw *gw, const char *addr)
{
    struct gw_link *l =
        TN_MAP_ENTRY_OR_NULL(tn_map_find_str(&gw->links, addr), struct gw_link, node);
    char err[128];

    if (l)
        return l;
    if (!(l = calloc(1, sizeof(*l))))
        return NULL;
    if (tn_parse_addr(addr, &l->addr, err, sizeof(err)) != 0) {
        tn_log_warn(GW_LOG, "node address %s: %s", addr, err);
        free(l);
        return NULL;
    }
    snprintf(l->key, sizeof(l->key), "%s", addr);
    l->gw = gw;
    l->id = ++gw->next_link_id;
    if (tn_map_insert(&gw->links, &l->node, l->key, strlen(l->key)) != 0) {
        free(l);
        return NULL;
    }
    return l;
}

/* A connection to l (connecting if needed), or NULL. */
static struct tn_conn *link_conn(struct gw_link *l)
{
    struct tn_conn_limits lim = {0};
    int err = 0;

    if (l->conn)
        return l->conn;
    lim.in_max = l->gw->codec.max_size + LINK_EXTRA + 64 * 1024;
    lim.out_max = 64 * 1024 * 1024;
    l->up = 0;
    l->conn = tn_connect(&l->addr, &link_handler, l, &lim, &err);
    if (!l->conn) {
        tn_log_warn(GW_LOG, "node %s: cannot connect: %s", l->key, tn_strerror(err));
        l->down_until = tn_now_ms() + l->gw->conf->node_retry;
        return NULL;
    }
    /* node_connect_timeout also bounds the handshake */
    tn_conn_set_idle_timeout(l->conn, l->gw->conf->node_connect_timeout);
    if (l->gw->node_tls && (err = tn_conn_connect_tls(l->conn, l->gw->node_tls, NULL)) != 0) {
        tn_log_warn(GW_LOG, "node %s: cannot start TLS: %s", l->key, tn_strerror(err));
        l->conn->data = NULL;
        tn_conn_close(l->conn, err);
        l->conn = NULL;
        l->down_until = tn_now_ms() + l->gw->conf->node_retry;
        return NULL;
    }
    return l->conn;
}

/* ---- selection --------------------------------------------------------------------------- */

struct pick {
    struct gw *gw;
    size_t n;
    int64_t total;
    struct gw_link *link[LINK_MAX_INSTANCES];
    int64_t weight[LINK_MAX_INSTANCES];
};

static void pick_add(const char *addr, int64_t weight, void *arg)
{
    struct pick *pk = arg;
    struct gw_link *l;

    if (pk->n >= LINK_MAX_INSTANCES || !(l = link_get(pk->gw, addr)))
        return;
    if (l->down_until > tn_now_ms())
        return;
    pk->link[pk->n] = l;
    pk->weight[pk->n] = weight > 0 ? weight : 1;
    pk->total += pk->weight[pk->n];
    pk->n++;
}

struct rr_counter {
    struct tn_map_node node; /* in gw->rr, key: name */
    uint64_t next;
    size_t len;
    char name[];
};

static size_t rr_next(struct gw *gw, const char *service, size_t n)
{
    size_t len = strlen(service);
    struct rr_counter *rc =
        TN_MAP_ENTRY_OR_NULL(tn_map_find(&gw->rr, service, len), struct rr_counter, node);

    if (!rc) {
        if (!(rc = calloc(1, sizeof(*rc) + len + 1)))
            return 0;
        memcpy(rc->name, service, len);
        rc->len = len;
        if (tn_map_insert(&gw->rr, &rc->node, rc->name, len) != 0) {
            free(rc);
            return 0;
        }
    }
    return (size_t)(rc->next++ % n);
}

static struct gw_link *select_link(struct gw *gw, const char *service)
{
    struct pick pk;
    int64_t r;
    size_t i;

    pk.gw = gw;
    pk.n = 0;
    pk.total = 0;
    gw->registry->lookup(gw, service, pick_add, &pk);
    if (pk.n == 0)
        return NULL;
    switch (gw->conf->node_select) {
    case GW_SELECT_RANDOM:
        return pk.link[(size_t)random() % pk.n];
    case GW_SELECT_WEIGHTED:
        r = (int64_t)(random() % pk.total);
        for (i = 0; i + 1 < pk.n && r >= pk.weight[i]; i++)
            r -= pk.weight[i];
        return pk.link[i];
    default:
        return pk.link[rr_next(gw, service, pk.n)];
    }
}

/* ---- forwarding ------------------------------------------------------------------------ */

int gw_node_forward(struct gw *gw, const char *service, struct gw_session *s,
                    const struct gw_packet *pk)
{
    struct gw_link *l = select_link(gw, service);
    struct tn_conn *c = l ? link_conn(l) : NULL;
    size_t ulen = s->uid ? strlen(s->uid) : 0;
    uint8_t head[LINK_FRAME_HEAD + 8 + 4 + 4 + 2];
    struct iovec iov[3];
    int rc;

    if (!c) {
        gw->st.forward_failed++;
        tn_log_warn(GW_LOG, "session %llu: no instance of node %s reachable, packet dropped",
                    (unsigned long long)s->id, service);
        return TN_ENOTFOUND;
    }
    put32(head, (uint32_t)(1 + 8 + 4 + 4 + 2 + ulen + pk->len));
    head[4] = NODE_FORWARD;
    put64(head + 5, s->id);
    put32(head + 13, (uint32_t)pk->route);
    put32(head + 17, (uint32_t)pk->seq);
    head[21] = (uint8_t)(ulen >> 8);
    head[22] = (uint8_t)ulen;
    iov[0].iov_base = head;
    iov[0].iov_len = sizeof(head);
    iov[1].iov_base = s->uid;
    iov[1].iov_len = ulen;
    iov[2].iov_base = (void *)pk->data;
    iov[2].iov_len = pk->len;
    rc = tn_conn_writev(c, iov, 3);
    if (rc == 0) {
        gw->st.forwarded++;
        s->link = l->id;
    } else {
        gw->st.forward_failed++;
    }
    return rc;
}

struct closed_note {
    uint64_t link;
    uint8_t frame[LINK_FRAME_HEAD + 8];
};

/* Tell the node the session last went to that it is gone (stateful nodes
 * drop what they keep for it). */
void gw_node_session_closed(struct gw *gw, struct gw_session *s)
{
    struct closed_note cn;
    struct tn_map_iter it;

    if (!s->link)
        return;
    cn.link = s->link;
    put32(cn.frame, 9);
    cn.frame[4] = NODE_CLOSED;
    put64(cn.frame + 5, s->id);
    for (struct tn_map_node *n = tn_map_first(&gw->links, &it); n; n = tn_map_next(&it)) {
        struct gw_link *l = TN_MAP_ENTRY(n, struct gw_link, node);
        if (l->id == cn.link && l->conn)
            tn_conn_write(l->conn, cn.frame, sizeof(cn.frame));
    }
}

int gw_node_tls_load(struct gw *gw, const struct gw_conf *gc)
{
    struct tn_tls_ctx *ctx = NULL;
    char why[512];

    if (gc->node_tls.enabled && !(ctx = tn_tls_client_ctx_new(&gc->node_tls, why, sizeof(why)))) {
        tn_log_error(GW_LOG, "node_tls: %s%s", why,
                     gw->node_tls ? " (keeping the previous settings)" : "");
        return TN_EINVAL;
    }
    tn_tls_ctx_free(gw->node_tls);
    gw->node_tls = ctx;
    return 0;
}

static void link_free(struct gw_link *l)
{
    if (l->conn) {
        l->conn->data = NULL;
        tn_conn_close(l->conn, 0);
    }
    free(l);
}

/* Close every link (stop) and forget them. */
void gw_node_close_all(struct gw *gw)
{
    struct tn_map_iter it;
    struct tn_map_node *n;

    for (n = tn_map_first(&gw->links, &it); n; n = tn_map_next(&it))
        link_free(TN_MAP_ENTRY(n, struct gw_link, node));
    tn_map_free(&gw->links);
    for (n = tn_map_first(&gw->rr, &it); n; n = tn_map_next(&it))
        free(TN_MAP_ENTRY(n, struct rr_counter, node));
    tn_map_free(&gw->rr);
    tn_tls_ctx_free(gw->node_tls);
    gw->node_tls = NULL;
}
