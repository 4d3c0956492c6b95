/*
 * lookupd.c -- the broker's side of nsqlookupd's TCP protocol V1, as nsqd
 * speaks it: connect to every broker.lookupd address, send "  V1" and
 * IDENTIFY (our address and ports), REGISTER every topic and channel, then
 * REGISTER / UNREGISTER each change and PING every lookupd_interval. A lost
 * directory is reconnected with a growing delay (1s up to the interval) and
 * gets the whole registration again. Replies are [4B size][data] frames;
 * errors are logged (the directory closes the connection after one).
 * An entry that is the discovery module of this process is left alone
 * while the broker registers there in-process (local.c).
 */
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"

#define RETRY_FIRST_MS 1000

struct lookupd_peer {
    struct broker *bk;
    struct tn_addr addr; /* a copy: the config may be replaced on reload */
    struct tn_conn *conn;
    int connected;   /* the connect finished: commands may be written */
    int down_logged; /* "cannot connect" logged once per outage */
    int local;       /* the in-process discovery: registered through local.c */
    int64_t backoff;
    ev_timer retry, ping;
};

struct broker_lookupd {
    size_t n;
    int stopping;
    struct lookupd_peer v[];
};

static void peer_connect(struct lookupd_peer *p);

const char *broker_broadcast_address(struct broker *bk)
{
    static char host[256];

    if (bk->conf->broadcast_address)
        return bk->conf->broadcast_address;
    if (!host[0] && gethostname(host, sizeof(host) - 1) != 0)
        snprintf(host, sizeof(host), "localhost");
    return host;
}

static int port_of(const char *addr)
{
    const char *colon = addr ? strrchr(addr, ':') : NULL;
    return colon ? atoi(colon + 1) : 0;
}

/* The ports actually bound (port 0 in the config picks a free one). */
int broker_tcp_port(struct broker *bk)
{
    return bk->listener ? port_of(tn_listener_addr(bk->listener)) : 0;
}

int broker_http_port(struct broker *bk)
{
    return bk->http ? port_of(tn_http_server_addr(bk->http)) : 0;
}

static void send_cmd(struct lookupd_peer *p, const char *cmd, const char *topic,
                     const char *channel)
{
    char line[2 * BROKER_NAME_MAX + 32];
    int n = snprintf(line, sizeof(line), "%s %s%s%s\n", cmd, topic, channel ? " " : "",
                     channel ? channel : "");

    tn_conn_write(p->conn, line, (size_t)n);
}

void broker_lookupd_each(struct broker *bk,
                         void (*fn)(void *ud, const char *topic, const char *channel), void *ud)
{
    for (struct broker_topic *t = broker_topic_first(bk); t; t = broker_topic_next(bk, t)) {
        if (!t->channels)
            fn(ud, t->name, NULL);
        for (struct broker_channel *ch = t->channels; ch; ch = ch->next)
            fn(ud, t->name, ch->name);
    }
}

static void send_register(void *ud, const char *topic, const char *channel)
{
    send_cmd(ud, "REGISTER", topic, channel);
}

/* IDENTIFY with what consumers need to reach us, then every registration. */
static void peer_hello(struct lookupd_peer *p)
{
    struct broker *bk = p->bk;
    char host[256] = "", size[4];
    json_t *o;
    char *s;
    size_t len;

    gethostname(host, sizeof(host) - 1);
    o = json_pack("{s:s, s:i, s:i, s:s, s:s}", "version", BROKER_VERSION, "tcp_port",
                  broker_tcp_port(bk), "http_port", broker_http_port(bk), "hostname", host,
                  "broadcast_address", broker_broadcast_address(bk));
    s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) {
        tn_conn_close(p->conn, TN_ENOMEM);
        return;
    }
    len = strlen(s);
    size[0] = (char)(len >> 24);
    size[1] = (char)(len >> 16);
    size[2] = (char)(len >> 8);
    size[3] = (char)len;
    tn_conn_write(p->conn, "  V1IDENTIFY\n", 13);
    tn_conn_write(p->conn, size, 4);
    tn_conn_write(p->conn, s, len);
    free(s);
    broker_lookupd_each(bk, send_register, p);
}

static void on_read(struct tn_conn *c)
{
    struct lookupd_peer *p = c->data;

    while (tn_buf_rlen(&c->in) >= 4) {
        const unsigned char *u = (const unsigned char *)tn_buf_rptr(&c->in);
        uint32_t size = (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
        if (tn_buf_rlen(&c->in) - 4 < size)
            return;
        if (size >= 2 && memcmp(u + 4, "E_", 2) == 0)
            tn_log_warn(BROKER_LOG, "lookupd %s: %.*s", p ? p->addr.text : c->peer, (int)size,
                        (const char *)u + 4);
        tn_buf_consume(&c->in, 4 + size);
    }
}

static void schedule_retry(struct lookupd_peer *p)
{
    int64_t max = p->bk->conf->lookupd_interval;

    p->conn = NULL;
    p->connected = 0;
    ev_timer_stop(tn_loop(), &p->ping);
    if (p->bk->lookupd->stopping || p->local)
        return;
    p->backoff = p->backoff ? p->backoff * 2 : RETRY_FIRST_MS;
    if (p->backoff > max)
        p->backoff = max;
    ev_timer_set(&p->retry, (double)p->backoff / 1000.0, 0.);
    ev_timer_start(tn_loop(), &p->retry);
}

static void on_connect(struct tn_conn *c, int status)
{
    struct lookupd_peer *p = c->data;
    double every = (double)p->bk->conf->lookupd_interval / 1000.0;

    if (status != 0) { /* closed right after, without on_close */
        if (!p->down_logged)
            tn_log_warn(BROKER_LOG, "lookupd %s: cannot connect: %s (retrying)", p->addr.text,
                        tn_strerror(status));
        p->down_logged = 1;
        schedule_retry(p);
        return;
    }
    tn_log_info(BROKER_LOG, "lookupd %s: connected", p->addr.text);
    p->connected = 1;
    p->down_logged = 0;
    p->backoff = 0;
    peer_hello(p);
    ev_timer_set(&p->ping, every, every);
    ev_timer_start(tn_loop(), &p->ping);
}

static void on_close(struct tn_conn *c, int reason)
{
    struct lookupd_peer *p = c->data;

    if (!p)
        return;
    if (!p->bk->lookupd->stopping && !p->local)
        tn_log_warn(BROKER_LOG, "lookupd %s: connection lost: %s (reconnecting)", p->addr.text,
                    tn_strerror(reason));
    schedule_retry(p);
}

static const struct tn_conn_handler lookupd_handler = {on_read, on_connect, NULL, on_close};

static void peer_connect(struct lookupd_peer *p)
{
    int err = 0;

    p->conn = tn_connect(&p->addr, &lookupd_handler, p, NULL, &err);
    if (!p->conn) {
        if (!p->down_logged)
            tn_log_warn(BROKER_LOG, "lookupd %s: cannot connect: %s (retrying)", p->addr.text,
                        tn_strerror(err));
        p->down_logged = 1;
        schedule_retry(p);
    }
}

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    peer_connect(w->data);
}

static void ping_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lookupd_peer *p = w->data;

    if (p->connected)
        tn_conn_write(p->conn, "PING\n", 5);
}

/* Is ip (of family af) an address of this host? Loopback always is. */
static int host_has(int af, const void *ip)
{
    struct ifaddrs *ifs, *i;
    int found = 0;

    if (af == AF_INET && ((const unsigned char *)ip)[0] == 127)
        return 1;
    if (af == AF_INET6 && IN6_IS_ADDR_LOOPBACK((const struct in6_addr *)ip))
        return 1;
    if (getifaddrs(&ifs) != 0)
        return 0;
    for (i = ifs; i && !found; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != af)
            continue;
        if (af == AF_INET)
            found = !memcmp(&((struct sockaddr_in *)i->ifa_addr)->sin_addr, ip, 4);
        else
            found = !memcmp(&((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr, ip, 16);
    }
    freeifaddrs(ifs);
    return found;
}

/* Does a connection to a reach the listener bound at text: the same port
 * and address, or the same port on a wildcard listener and an address of
 * this host? */
static int reaches(const struct tn_addr *a, const char *text)
{
    struct tn_addr l;
    char err[128];

    if (!text || tn_parse_addr(text, &l, err, sizeof(err)) != 0 ||
        a->sa.ss_family != l.sa.ss_family)
        return 0;
    if (a->sa.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->sa, *y = (const void *)&l.sa;
        if (x->sin_port != y->sin_port)
            return 0;
        if (y->sin_addr.s_addr == htonl(INADDR_ANY))
            return host_has(AF_INET, &x->sin_addr);
        return x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->sa.ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)&a->sa, *y = (const void *)&l.sa;
        if (x->sin6_port != y->sin6_port)
            return 0;
        if (IN6_IS_ADDR_UNSPECIFIED(&y->sin6_addr))
            return host_has(AF_INET6, &x->sin6_addr);
        return !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr));
    }
    return 0;
}

int broker_lookupd_start(struct broker *bk, const char *local_tcp)
{
    const struct tn_addr_list *al = &bk->conf->lookupd;
    struct broker_lookupd *l;

    if (al->n == 0)
        return 0;
    l = calloc(1, sizeof(*l) + al->n * sizeof(l->v[0]));
    if (!l)
        return TN_ENOMEM;
    l->n = al->n;
    bk->lookupd = l;
    for (size_t i = 0; i < al->n; i++) {
        struct lookupd_peer *p = &l->v[i];
        p->bk = bk;
        p->addr = al->v[i];
        ev_init(&p->retry, retry_cb);
        ev_init(&p->ping, ping_cb);
        p->retry.data = p->ping.data = p;
    }
    broker_lookupd_local(bk, local_tcp);
    for (size_t i = 0; i < al->n; i++)
        if (!l->v[i].local)
            peer_connect(&l->v[i]);
    return 0;
}

void broker_lookupd_local(struct broker *bk, const char *local_tcp)
{
    struct broker_lookupd *l = bk->lookupd;

    for (size_t i = 0; l && !l->stopping && i < l->n; i++) {
        struct lookupd_peer *p = &l->v[i];
        int local = reaches(&p->addr, local_tcp);
        if (local == p->local)
            continue;
        p->local = local;
        if (local) {
            tn_log_info(BROKER_LOG, "lookupd %s: the discovery module of this process, "
                        "registered in-process", p->addr.text);
            ev_timer_stop(tn_loop(), &p->retry);
            p->connected = 0;
            if (p->conn) /* its on_close schedules no retry */
                tn_conn_close(p->conn, 0);
        } else if (!p->conn && !tn_stopping()) { /* else its close schedules a retry */
            p->backoff = 0;
            p->down_logged = 0;
            peer_connect(p);
        }
    }
}

void broker_lookupd_announce(struct broker *bk, int reg, const char *topic, const char *channel)
{
    struct broker_lookupd *l = bk->lookupd;

    for (size_t i = 0; l && i < l->n; i++)
        if (l->v[i].connected)
            send_cmd(&l->v[i], reg ? "REGISTER" : "UNREGISTER", topic, channel);
    broker_local_announce(bk, reg, topic, channel);
}

/* Stop reconnecting and close the connections (the directories forget us
 * when they see the close). */
void broker_lookupd_stop(struct broker *bk)
{
    struct broker_lookupd *l = bk->lookupd;

    if (!l)
        return;
    l->stopping = 1;
    for (size_t i = 0; i < l->n; i++) {
        struct lookupd_peer *p = &l->v[i];
        ev_timer_stop(tn_loop(), &p->retry);
        ev_timer_stop(tn_loop(), &p->ping);
        if (p->conn)
            tn_conn_close(p->conn, 0);
    }
}

void broker_lookupd_free(struct broker *bk)
{
    struct broker_lookupd *l = bk->lookupd;

    if (!l)
        return;
    broker_lookupd_stop(bk);
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].conn) /* still open (shutdown timeout): forget us */
            l->v[i].conn->data = NULL;
    free(l);
    bk->lookupd = NULL;
}
