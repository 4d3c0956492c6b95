/*
 * session.c -- client sessions: creation and teardown around a transport,
 * the packet path (heartbeat answers, on_packet, forwarding to a node),
 * uid bindings, groups, attributes, and the TCP transport (a byte stream
 * of packets on the connection layer).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

#define GW_ATTRS_MAX 64 /* attributes per session */

struct gw_group {
    struct tn_map_node node; /* in gw->groups, key: name */
    char *name;
    size_t len;
    struct gw_member *head;
    size_t n;
};

/* A session in a group: on the group's list (gprev/gnext) and on the
 * session's (snext), so leaving either way is cheap. */
struct gw_member {
    struct gw_group *g;
    struct gw_session *s;
    struct gw_member *gprev, *gnext;
    struct gw_member *snext;
};

/* ---- lifetime ---------------------------------------------------------------- */

struct gw_session *gw_session_open(struct gw *gw, const struct gw_transport *tp, void *tpdata)
{
    struct gw_session *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->gw = gw;
    s->tp = tp;
    s->tpdata = tpdata;
    s->id = ++gw->next_id;
    s->lref = -1;
    if (gw_auth_open(s) != 0 || tn_map_insert(&gw->sessions, &s->by_id, &s->id, sizeof(s->id)) != 0) {
        gw_auth_closed(s);
        free(s);
        return NULL;
    }
    s->next = gw->all;
    if (gw->all)
        gw->all->prev = s;
    gw->all = s;
    gw->nsessions++;
    gw->st.connections++;
    tn_log_debug(GW_LOG, "session %llu open (%s %s)", (unsigned long long)s->id, tp->name,
                 gw_session_addr(s));
    if (gw_lua_on_connect(s) != 0) {
        /* refused by the script: the transport closes the connection and
         * then calls gw_session_closed like for any other close */
        s->refused = s->closing = 1;
        return s;
    }
    return s;
}

static void groups_leave_all(struct gw_session *s);

void gw_session_closed(struct gw_session *s)
{
    struct gw *gw = s->gw;
    struct gw_attr *a, *next;

    s->closing = s->tpclosed = 1;
    gw_lua_on_disconnect(s);
    gw_auth_closed(s);
    gw_node_session_closed(gw, s);
    gw_session_unbind(s);
    groups_leave_all(s);
    tn_map_remove(&gw->sessions, &s->by_id);
    if (s->prev)
        s->prev->next = s->next;
    else
        gw->all = s->next;
    if (s->next)
        s->next->prev = s->prev;
    gw->nsessions--;
    for (a = s->attrs; a; a = next) {
        next = a->next;
        free(a->str);
        free(a);
    }
    tn_log_debug(GW_LOG, "session %llu closed", (unsigned long long)s->id);
    free(s);
}

void gw_session_close(struct gw_session *s, int code, const char *why)
{
    if (s->tp && !s->tpclosed) {
        s->tpclosed = 1;
        s->tp->close(s, code, why);
    }
}

struct gw_session *gw_session_find(struct gw *gw, uint64_t id)
{
    return TN_MAP_ENTRY_OR_NULL(tn_map_find(&gw->sessions, &id, sizeof(id)), struct gw_session,
                                by_id);
}

const char *gw_session_addr(const struct gw_session *s)
{
    return s->tp->addr(s);
}

/* ---- packets ---------------------------------------------------------------------- */

int gw_session_send(struct gw_session *s, int32_t route, int32_t seq, const void *data, size_t len)
{
    uint8_t head[GW_HEAD_MAX];
    long h;
    struct iovec iov[2];
    int rc;

    if (s->tpclosed)
        return TN_ECLOSED;
    h = gw_encode_head(&s->gw->codec, head, 0, route, seq, len);
    if (h < 0)
        return (int)h;
    iov[0].iov_base = head;
    iov[0].iov_len = (size_t)h;
    iov[1].iov_base = (void *)data;
    iov[1].iov_len = len;
    rc = s->tp->send(s, iov, len ? 2 : 1);
    if (rc == 0)
        s->gw->st.packets_out++;
    return rc;
}

static void heartbeat_answer(struct gw_session *s)
{
    uint8_t hb[GW_HEARTBEAT_MAX];
    struct iovec iov;
    int with_time = s->gw->conf->heartbeat_time;

    iov.iov_base = hb;
    iov.iov_len = gw_encode_heartbeat(&s->gw->codec, hb, with_time, with_time ? tn_wall_ns() : 0);
    s->gw->st.heartbeats++;
    s->tp->send(s, &iov, 1);
}

void gw_session_packet(struct gw_session *s, const struct gw_packet *pk)
{
    char node[GW_NAME_MAX];

    if (s->closing || s->tpclosed)
        return;
    if (pk->heartbeat) {
        heartbeat_answer(s);
        return;
    }
    s->gw->st.packets_in++;
    if (!gw_auth_packet(s, pk))
        return; /* the login, or refused */
    s->route = pk->route;
    s->seq = pk->seq;
    if (gw_lua_on_packet(s, pk, node, sizeof(node)))
        gw_node_forward(s->gw, node, s, pk);
}

long gw_session_input(struct gw_session *s, const char *p, size_t n)
{
    size_t off = 0;
    struct gw_packet pk;
    long r;

    while (off < n && !s->tpclosed) {
        r = gw_decode(&s->gw->codec, p + off, n - off, &pk);
        if (r == 0)
            break;
        if (r < 0) {
            if (r == TN_ETOOBIG) {
                s->gw->st.oversize++;
                tn_log_warn(GW_LOG,
                            "session %llu (%s): packet over packet.max_size (%llu "
                            "bytes), closing",
                            (unsigned long long)s->id, gw_session_addr(s),
                            (unsigned long long)s->gw->codec.max_size);
                gw_session_close(s, GW_CLOSE_TOO_BIG, "packet too big");
            } else {
                s->gw->st.bad_packets++;
                tn_log_warn(GW_LOG, "session %llu (%s): malformed packet, closing",
                            (unsigned long long)s->id, gw_session_addr(s));
                gw_session_close(s, GW_CLOSE_POLICY, "malformed packet");
            }
            return r;
        }
        gw_session_packet(s, &pk);
        off += (size_t)r;
    }
    return (long)off;
}

/* ---- uid bindings ------------------------------------------------------------------ */

struct gw_session *gw_uid_find(struct gw *gw, const char *uid, size_t len)
{
    return TN_MAP_ENTRY_OR_NULL(tn_map_find(&gw->uids, uid, len), struct gw_session, by_uid);
}

/* One session per uid: binding a uid another session holds moves it here
 * (the older session stays connected, unbound), as a re-login would. A uid
 * is a C string (unbind finds it by strlen): one with a NUL byte is
 * refused, or its map entry would outlive the string. */
int gw_session_bind(struct gw_session *s, const char *uid, size_t len)
{
    struct gw_session *old;
    char *copy;

    if (len == 0 || len >= GW_UID_MAX || memchr(uid, '\0', len))
        return TN_EINVAL;
    if (s->uid && strlen(s->uid) == len && memcmp(s->uid, uid, len) == 0)
        return 0;
    if (!(copy = malloc(len + 1)))
        return TN_ENOMEM;
    memcpy(copy, uid, len);
    copy[len] = '\0';
    if ((old = gw_uid_find(s->gw, uid, len)))
        gw_session_unbind(old);
    gw_session_unbind(s);
    if (tn_map_insert(&s->gw->uids, &s->by_uid, copy, len) != 0) {
        free(copy);
        return TN_ENOMEM;
    }
    s->uid = copy;
    return 0;
}

void gw_session_unbind(struct gw_session *s)
{
    if (!s->uid)
        return;
    tn_map_remove(&s->gw->uids, &s->by_uid);
    free(s->uid);
    s->uid = NULL;
}

/* ---- groups ---------------------------------------------------------------------------- */

static struct gw_group *group_get(struct gw *gw, const char *name, size_t len, int create)
{
    struct gw_group *g =
        TN_MAP_ENTRY_OR_NULL(tn_map_find(&gw->groups, name, len), struct gw_group, node);

    if (g || !create)
        return g;
    if (!(g = calloc(1, sizeof(*g) + len + 1)))
        return NULL;
    g->name = (char *)(g + 1);
    memcpy(g->name, name, len);
    g->len = len;
    if (tn_map_insert(&gw->groups, &g->node, g->name, len) != 0) {
        free(g);
        return NULL;
    }
    return g;
}

static struct gw_member **member_slot(struct gw_session *s, const struct gw_group *g)
{
    struct gw_member **m = &s->groups;

    while (*m && (*m)->g != g)
        m = &(*m)->snext;
    return m;
}

int gw_group_join(struct gw *gw, const char *name, size_t len, struct gw_session *s)
{
    struct gw_group *g;
    struct gw_member *m;

    int rc;

    if (len == 0 || len >= GW_NAME_MAX)
        return TN_EINVAL;
    if ((rc = gw_auth_join(s, name, len)) != 0)
        return rc;
    if (!(g = group_get(gw, name, len, 1)))
        return TN_ENOMEM;
    if (*member_slot(s, g))
        return 0;
    if (!(m = calloc(1, sizeof(*m))))
        return TN_ENOMEM;
    m->g = g;
    m->s = s;
    m->gnext = g->head;
    if (g->head)
        g->head->gprev = m;
    g->head = m;
    g->n++;
    m->snext = s->groups;
    s->groups = m;
    return 0;
}

/* Unlink m from its group (freeing an emptied group) and free it. */
static void member_drop(struct gw *gw, struct gw_member *m)
{
    struct gw_group *g = m->g;

    if (m->gprev)
        m->gprev->gnext = m->gnext;
    else
        g->head = m->gnext;
    if (m->gnext)
        m->gnext->gprev = m->gprev;
    free(m);
    if (--g->n == 0) {
        tn_map_remove(&gw->groups, &g->node);
        free(g);
    }
}

int gw_group_leave(struct gw *gw, const char *name, size_t len, struct gw_session *s)
{
    struct gw_group *g = group_get(gw, name, len, 0);
    struct gw_member **slot, *m;

    if (!g || !*(slot = member_slot(s, g)))
        return TN_ENOTFOUND;
    m = *slot;
    *slot = m->snext;
    member_drop(gw, m);
    return 0;
}

static void groups_leave_all(struct gw_session *s)
{
    struct gw_member *m;

    while ((m = s->groups)) {
        s->groups = m->snext;
        member_drop(s->gw, m);
    }
}

/* Every session left its groups on close, emptying (and freeing) them:
 * this frees what could remain, the groups themselves. */
void gw_groups_free(struct gw *gw)
{
    struct tn_map_iter it;

    for (struct tn_map_node *n = tn_map_first(&gw->groups, &it); n; n = tn_map_next(&it))
        free(TN_MAP_ENTRY(n, struct gw_group, node));
    tn_map_free(&gw->groups);
}

long gw_group_send(struct gw *gw, const char *name, size_t len, int32_t route, const void *data,
                   size_t dlen)
{
    struct gw_group *g = group_get(gw, name, len, 0);
    long n = 0;
    int rc;

    for (struct gw_member *m = g ? g->head : NULL; m; m = m->gnext) {
        if ((rc = gw_session_send(m->s, route, 0, data, dlen)) == 0)
            n++;
        else if (rc == TN_EINVAL || rc == TN_ETOOBIG)
            return rc;
    }
    return n;
}

long gw_broadcast(struct gw *gw, int32_t route, const void *data, size_t dlen)
{
    long n = 0;
    int rc;

    for (struct gw_session *s = gw->all; s; s = s->next) {
        if ((rc = gw_session_send(s, route, 0, data, dlen)) == 0)
            n++;
        else if (rc == TN_EINVAL || rc == TN_ETOOBIG)
            return rc;
    }
    return n;
}

/* ---- attributes ---------------------------------------------------------------------------- */

const struct gw_attr *gw_attr_get(const struct gw_session *s, const char *key)
{
    for (const struct gw_attr *a = s->attrs; a; a = a->next)
        if (strcmp(a->key, key) == 0)
            return a;
    return NULL;
}

int gw_attr_set(struct gw_session *s, const char *key, int type, int64_t i, double d,
                const char *str, size_t len)
{
    struct gw_attr **p = &s->attrs, *a;
    size_t n = 0;

    for (; *p && strcmp((*p)->key, key) != 0; p = &(*p)->next)
        n++;
    if ((a = *p)) {
        *p = a->next;
        free(a->str);
        free(a);
    }
    if (type == 0)
        return 0;
    if (n >= GW_ATTRS_MAX)
        return TN_ELIMIT;
    if (!(a = calloc(1, sizeof(*a) + strlen(key) + 1)))
        return TN_ENOMEM;
    strcpy(a->key, key);
    a->type = type;
    a->i = i;
    a->d = d;
    if (type == GW_ATTR_STRING) {
        if (!(a->str = malloc(len + 1))) {
            free(a);
            return TN_ENOMEM;
        }
        memcpy(a->str, str, len);
        a->str[len] = '\0';
        a->len = len;
    }
    a->next = s->attrs;
    s->attrs = a;
    return 0;
}

/* ---- the TCP transport ------------------------------------------------------------------------
 */

static int tcp_send(struct gw_session *s, const struct iovec *iov, int n)
{
    return tn_conn_writev(s->tpdata, iov, n);
}

static void tcp_close(struct gw_session *s, int code, const char *why)
{
    /* what was queued (a last reply) still goes out */
    tn_conn_close_after_write(s->tpdata);
}

static const char *tcp_addr(const struct gw_session *s)
{
    return ((struct tn_conn *)s->tpdata)->peer;
}

static void tcp_detach(struct gw_session *s)
{
    ((struct tn_conn *)s->tpdata)->data = NULL;
    tn_conn_close(s->tpdata, 0);
}

static const struct gw_transport tcp_transport = {"tcp", tcp_send, tcp_close, tcp_addr, tcp_detach};

static void tcp_on_read(struct tn_conn *c)
{
    struct gw_session *s = c->data;
    long r;

    if (!s)
        return;
    r = gw_session_input(s, tn_buf_rptr(&c->in), tn_buf_rlen(&c->in));
    if (r > 0)
        tn_buf_consume(&c->in, (size_t)r);
    else if (r < 0)
        tn_buf_consume(&c->in, tn_buf_rlen(&c->in));
    /* nothing left over: an idle client keeps no read buffer (the core
     * would keep read_size bytes); the next read allocates again */
    if (tn_buf_rlen(&c->in) == 0)
        tn_buf_shrink(&c->in, 0);
}

static void tcp_on_close(struct tn_conn *c, int reason)
{
    struct gw_session *s = c->data;

    if (!s)
        return;
    if (reason == TN_ETIMEDOUT)
        tn_log_info(GW_LOG, "session %llu (%s): no packet for %lld ms, closed",
                    (unsigned long long)s->id, c->peer, (long long)s->gw->idle_ms);
    c->data = NULL;
    gw_session_closed(s);
}

static const struct tn_conn_handler tcp_handler = {tcp_on_read, NULL, NULL, tcp_on_close};

static int tcp_accept(struct tn_listener *l, struct tn_conn *c, void *ud)
{
    struct gw *gw = ud;
    struct gw_session *s;

    if (gw->stopping)
        return TN_ESTOPPED;
    c->h = &tcp_handler;
    if (!(s = gw_session_open(gw, &tcp_transport, c)))
        return TN_ENOMEM;
    c->data = s;
    if (s->closing) {
        gw_session_close(s, GW_CLOSE_POLICY, "refused by on_connect");
        return 0;
    }
    if (gw->idle_ms > 0)
        tn_conn_set_idle_timeout(c, gw->idle_ms);
    return 0;
}

int gw_tcp_listen(struct gw *gw, const struct gw_listen_conf *lc)
{
    struct gw_listener *gl = calloc(1, sizeof(*gl));
    struct tn_listen_opts lo = {0};
    int err = 0;

    if (!gl)
        return TN_ENOMEM;
    lo.name = "gateway.tcp";
    lo.max_conns = (size_t)gw->conf->max_connections;
    lo.lim.in_max = gw->codec.max_size + 64 * 1024;
    lo.lim.out_max = gw->conf->max_output;
    lo.lim.out_high = gw->conf->max_output / 2;
    lo.lim.read_size = 16 * 1024;
    if (!(gl->tcp = tn_listen(&lc->addr, &lo, tcp_accept, gw, &err))) {
        free(gl);
        return err;
    }
    gl->proto = GW_PROTO_TCP;
    gl->next = gw->listeners;
    gw->listeners = gl;
    tn_log_info(GW_LOG, "TCP listening on %s", tn_listener_addr(gl->tcp));
    return 0;
}
