/*
 * mdp.c -- a Majordomo (7/MDP v0.1) broker on a router listener: clients
 * (REQ or DEALER) send requests to a named service, workers (DEALER)
 * announce READY for one service and get requests one at a time, least
 * recently used first. Requests wait for a worker up to request_timeout;
 * workers silent for 3 heartbeat intervals are dead.
 */
#include <stdlib.h>
#include <string.h>

#include "zmtp_peer.h"

#define MDP_LOG "broker.mdp"
#define MDP_LIVENESS 3
#define MDPC "MDPC01"
#define MDPW "MDPW01"

enum { MDP_READY = 1, MDP_REQUEST, MDP_REPLY, MDP_HEARTBEAT, MDP_DISCONNECT };

struct mdp_service;

/* A request waiting for a worker: the client's routing id and the body
 * frames, copied into one allocation. */
struct mdp_req {
    struct mdp_req *next;
    int64_t expires;
    uint8_t rid[ZMTP_RID_MAX];
    size_t ridlen, nframes;
    struct zmtp_part frames[];
};

struct mdp_worker {
    struct zmtp_peer *p;
    struct mdp_service *svc;
    struct mdp_worker *next, *prev; /* the service's idle list (LRU order) or not linked */
    int idle;
    int64_t expiry; /* ms: dead when nothing arrived by then */
};

struct mdp_service {
    struct mdp_service *next;
    char name[256];
    size_t nlen;
    struct mdp_req *head, *tail;
    size_t nreq;
    struct mdp_worker *idle_head, *idle_tail;
    size_t nworkers;
};

struct mdp {
    struct zmtp_listener *zl;
    struct mdp_service *services;
    ev_timer tick;
    uint64_t requests, replies, expired, workers;
};

static int64_t now_ms(void)
{
    return tn_now_ms();
}

/* ---- services and requests ------------------------------------------------------ */

static struct mdp_service *service_get(struct mdp *m, const uint8_t *name, size_t n)
{
    struct mdp_service *s;

    if (n == 0 || n > 255)
        return NULL;
    for (s = m->services; s; s = s->next)
        if (s->nlen == n && memcmp(s->name, name, n) == 0)
            return s;
    if (!(s = calloc(1, sizeof(*s))))
        return NULL;
    memcpy(s->name, name, n);
    s->nlen = n;
    s->next = m->services;
    m->services = s;
    return s;
}

static struct mdp_req *req_new(const uint8_t *rid, size_t ridlen, const struct zmtp_part *f,
                               size_t n, int64_t expires)
{
    size_t bytes = 0;
    struct mdp_req *r;
    uint8_t *data;

    for (size_t i = 0; i < n; i++)
        bytes += f[i].len;
    if (!(r = malloc(sizeof(*r) + n * sizeof(r->frames[0]) + bytes + 1)))
        return NULL;
    r->next = NULL;
    r->expires = expires;
    memcpy(r->rid, rid, ridlen);
    r->ridlen = ridlen;
    r->nframes = n;
    data = (uint8_t *)&r->frames[n];
    for (size_t i = 0; i < n; i++) {
        memcpy(data, f[i].p, f[i].len);
        r->frames[i].p = data;
        r->frames[i].len = f[i].len;
        data += f[i].len;
    }
    return r;
}

/* ---- workers ------------------------------------------------------------------------ */

static void idle_unlink(struct mdp_worker *w)
{
    struct mdp_service *s = w->svc;

    if (!w->idle)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        s->idle_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        s->idle_tail = w->prev;
    w->next = w->prev = NULL;
    w->idle = 0;
}

static void idle_push(struct mdp_worker *w)
{
    struct mdp_service *s = w->svc;

    if (w->idle)
        return;
    w->next = NULL;
    w->prev = s->idle_tail;
    if (s->idle_tail)
        s->idle_tail->next = w;
    else
        s->idle_head = w;
    s->idle_tail = w;
    w->idle = 1;
}

/* Send [""][MDPW01][command][frames...] to a worker. */
static void worker_send(struct zmtp_peer *p, uint8_t cmd, const struct zmtp_part *extra, size_t n)
{
    struct zmtp_part f[ZMTP_MAX_FRAMES];
    size_t k = 0;

    f[k++] = (struct zmtp_part){(const uint8_t *)"", 0};
    f[k++] = (struct zmtp_part){(const uint8_t *)MDPW, 6};
    f[k++] = (struct zmtp_part){&cmd, 1};
    for (size_t i = 0; i < n && k < ZMTP_MAX_FRAMES; i++)
        f[k++] = extra[i];
    zmtp_peer_send(p, f, k);
}

static void worker_delete(struct mdp *m, struct mdp_worker *w, int disconnect)
{
    if (disconnect)
        worker_send(w->p, MDP_DISCONNECT, NULL, 0);
    idle_unlink(w);
    w->svc->nworkers--;
    w->p->worker = NULL;
    m->workers--;
    free(w);
}

/* Hand queued requests to idle workers, the longest idle first. */
static void dispatch(struct mdp *m, struct mdp_service *s)
{
    while (s->head && s->idle_head) {
        struct mdp_req *r = s->head;
        struct mdp_worker *w = s->idle_head;
        struct zmtp_part f[ZMTP_MAX_FRAMES];
        size_t k = 0;

        s->head = r->next;
        if (!s->head)
            s->tail = NULL;
        s->nreq--;
        idle_unlink(w);
        f[k++] = (struct zmtp_part){r->rid, r->ridlen};
        f[k++] = (struct zmtp_part){(const uint8_t *)"", 0};
        for (size_t i = 0; i < r->nframes && k < ZMTP_MAX_FRAMES - 3; i++)
            f[k++] = r->frames[i];
        worker_send(w->p, MDP_REQUEST, f, k);
        free(r);
    }
}

/* ---- messages ----------------------------------------------------------------------- */

static int frame_is(const struct zmtp_part *f, const char *s)
{
    size_t n = strlen(s);

    return f->len == n && memcmp(f->p, s, n) == 0;
}

/* [""][MDPC01][service][body...] */
static void client_request(struct mdp *m, struct zmtp_peer *p, const struct zmtp_part *f, size_t n)
{
    struct mdp_service *s;
    struct mdp_req *r;

    if (n < 3 || !(s = service_get(m, f[2].p, f[2].len))) {
        tn_log_debug(MDP_LOG, "%s: malformed client request from %s", m->zl->name, p->conn->peer);
        return;
    }
    if (!(r = req_new(p->rid, p->ridlen, f + 3, n - 3, now_ms() + m->zl->cf.request_timeout)))
        return;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    s->nreq++;
    m->requests++;
    dispatch(m, s);
}

/* REPLY: [client][""][body...] -> the client as [""][MDPC01][service][body...] */
static void worker_reply(struct mdp *m, struct mdp_worker *w, const struct zmtp_part *f, size_t n)
{
    struct zmtp_part out[ZMTP_MAX_FRAMES];
    struct zmtp_peer *client;
    size_t k = 0;

    if (n < 2 || f[1].len != 0) {
        worker_delete(m, w, 1);
        return;
    }
    if ((client = zmtp_peer_find(m->zl, f[0].p, f[0].len))) {
        out[k++] = (struct zmtp_part){(const uint8_t *)"", 0};
        out[k++] = (struct zmtp_part){(const uint8_t *)MDPC, 6};
        out[k++] = (struct zmtp_part){(const uint8_t *)w->svc->name, w->svc->nlen};
        for (size_t i = 2; i < n && k < ZMTP_MAX_FRAMES; i++)
            out[k++] = f[i];
        zmtp_peer_send(client, out, k);
        m->replies++;
    }
    idle_push(w);
    dispatch(m, w->svc);
}

static void worker_ready(struct mdp *m, struct zmtp_peer *p, const struct zmtp_part *f, size_t n)
{
    struct mdp_service *s = n >= 1 ? service_get(m, f[0].p, f[0].len) : NULL;
    struct mdp_worker *w;

    if (!s || !(w = calloc(1, sizeof(*w)))) {
        worker_send(p, MDP_DISCONNECT, NULL, 0);
        return;
    }
    w->p = p;
    w->svc = s;
    w->expiry = now_ms() + MDP_LIVENESS * m->zl->cf.heartbeat;
    p->worker = w;
    s->nworkers++;
    m->workers++;
    idle_push(w);
    dispatch(m, s);
}

/* [""][MDPW01][command][...] */
static void worker_command(struct mdp *m, struct zmtp_peer *p, const struct zmtp_part *f, size_t n)
{
    struct mdp_worker *w = p->worker;
    int cmd = n >= 3 && f[2].len == 1 ? f[2].p[0] : 0;

    if (w) /* any command is a sign of life */
        w->expiry = now_ms() + MDP_LIVENESS * m->zl->cf.heartbeat;
    if (cmd == MDP_READY && !w)
        worker_ready(m, p, f + 3, n - 3);
    else if (cmd == MDP_REPLY && w && !w->idle)
        worker_reply(m, w, f + 3, n - 3);
    else if (cmd == MDP_HEARTBEAT && w)
        ;
    else if (cmd == MDP_DISCONNECT && w)
        worker_delete(m, w, 0);
    else if (cmd != MDP_DISCONNECT && w) /* unexpected but valid, or invalid */
        worker_delete(m, w, 1);
    else if (cmd != MDP_DISCONNECT)
        worker_send(p, MDP_DISCONNECT, NULL, 0);
}

void mdp_message(struct mdp *m, struct zmtp_peer *p, const struct zmtp_part *f, size_t n)
{
    if (n >= 2 && f[0].len == 0 && frame_is(&f[1], MDPC))
        client_request(m, p, f, n);
    else if (n >= 3 && f[0].len == 0 && frame_is(&f[1], MDPW))
        worker_command(m, p, f, n);
    else
        tn_log_debug(MDP_LOG, "%s: not an MDP/0.1 message from %s", m->zl->name, p->conn->peer);
}

void mdp_peer_gone(struct mdp *m, struct zmtp_peer *p)
{
    if (p->worker)
        worker_delete(m, p->worker, 0);
}

/* ---- heartbeats and expiry ------------------------------------------------------------ */

static void expire_requests(struct mdp *m, struct mdp_service *s, int64_t now)
{
    struct mdp_req **pp = &s->head, *r;

    s->tail = NULL;
    while ((r = *pp)) {
        if (r->expires <= now) {
            *pp = r->next;
            s->nreq--;
            m->expired++;
            free(r);
            continue;
        }
        s->tail = r;
        pp = &r->next;
    }
}

/* Every heartbeat interval: drop dead workers, heartbeat idle ones (busy
 * ones see traffic), expire requests nobody took. */
static void tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct mdp *m = t->data;
    int64_t now = now_ms();

    for (struct zmtp_peer *p = m->zl->peers; p; p = p->next) {
        struct mdp_worker *w = p->worker;
        if (!w)
            continue;
        if (w->expiry <= now) {
            tn_log_info(MDP_LOG, "%s: worker %s for %s expired", m->zl->name, p->conn->peer,
                        w->svc->name);
            worker_delete(m, w, 1);
        } else if (w->idle) {
            worker_send(p, MDP_HEARTBEAT, NULL, 0);
        }
    }
    for (struct mdp_service *s = m->services; s; s = s->next)
        expire_requests(m, s, now);
}

struct mdp *mdp_create(struct zmtp_listener *zl)
{
    struct mdp *m = calloc(1, sizeof(*m));
    double ivl = (double)zl->cf.heartbeat / 1000.0;

    if (!m)
        return NULL;
    m->zl = zl;
    ev_timer_init(&m->tick, tick_cb, ivl, ivl);
    m->tick.data = m;
    ev_timer_start(tn_loop(), &m->tick);
    return m;
}

/* Called after every peer is gone (so no worker is left). */
void mdp_free(struct mdp *m)
{
    struct mdp_service *s;

    ev_timer_stop(tn_loop(), &m->tick);
    while ((s = m->services)) {
        m->services = s->next;
        while (s->head) {
            struct mdp_req *r = s->head;
            s->head = r->next;
            free(r);
        }
        free(s);
    }
    free(m);
}

void mdp_stats(struct mdp *m, struct tn_stats_out *out, const char **labels)
{
    uint64_t queued = 0;

    for (struct mdp_service *s = m->services; s; s = s->next)
        queued += s->nreq;
    tn_stats_emit(out, "ternd_broker_mdp_workers", TN_STAT_GAUGE, "Majordomo workers", labels,
                  (double)m->workers);
    tn_stats_emit(out, "ternd_broker_mdp_queued", TN_STAT_GAUGE,
                  "Majordomo requests waiting for a worker", labels, (double)queued);
    tn_stats_emit(out, "ternd_broker_mdp_requests_total", TN_STAT_COUNTER,
                  "Majordomo requests received", labels, (double)m->requests);
    tn_stats_emit(out, "ternd_broker_mdp_replies_total", TN_STAT_COUNTER,
                  "Majordomo replies sent to clients", labels, (double)m->replies);
    tn_stats_emit(out, "ternd_broker_mdp_expired_total", TN_STAT_COUNTER,
                  "Majordomo requests expired without a worker", labels, (double)m->expired);
}
