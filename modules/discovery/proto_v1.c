/*
 * proto_v1.c -- nsqlookupd's TCP protocol V1, spoken by nsqd (and the
 * broker) to announce itself: the magic "  V1", then text commands, one per
 * line (PING, IDENTIFY + [4B size][JSON], REGISTER, UNREGISTER). Every
 * reply is framed [4B big-endian size][data]. Like nsqlookupd, every error
 * is fatal: the "E_CODE description" frame is sent and the connection is
 * closed. Closing removes the producer from every registration.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "discovery.h"

#define WHO "discovery"
#define LINE_MAX_LEN 1024 /* longer than any valid command line */

struct discovery_proto_conn {
    struct discovery *d; /* NULL once the module stopped */
    struct tn_conn *conn;
    struct discovery_peer *peer; /* after IDENTIFY */
    int magic_ok;
    struct discovery_proto_conn *prev, *next;
};

static void send_frame(struct tn_conn *c, const char *data, size_t len)
{
    uint32_t size = htonl((uint32_t)len);
    struct iovec iov[2] = {{&size, 4}, {(void *)data, len}};

    tn_conn_writev(c, iov, 2);
}

static void send_str(struct tn_conn *c, const char *s)
{
    send_frame(c, s, strlen(s));
}

/* Send "CODE desc" and close once written; nothing more is read. */
static void fatal(struct discovery_proto_conn *pc, const char *code, const char *fmt, ...)
    TN_PRINTF(3, 4);

static void fatal(struct discovery_proto_conn *pc, const char *code, const char *fmt, ...)
{
    char msg[LINE_MAX_LEN + 128];
    int n = snprintf(msg, sizeof(msg), "%s ", code);
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);
    tn_log_info(WHO, "client %s: %s", pc->conn->peer, msg);
    send_str(pc->conn, msg);
    tn_conn_close_after_write(pc->conn);
}

/* Split a trimmed line at single spaces into at most max params. */
static size_t split(char *line, char **params, size_t max)
{
    size_t n = 0;

    params[n++] = line;
    for (char *p = line; *p && n < max; p++) {
        if (*p == ' ') {
            *p = '\0';
            params[n++] = p + 1;
        }
    }
    return n;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/* ---- IDENTIFY ------------------------------------------------------------- */

/* A string field, "" when absent; -1 when present with another type. */
static int json_str(json_t *o, const char *key, const char **out)
{
    json_t *v = json_object_get(o, key);

    *out = "";
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return -1;
    *out = json_string_value(v);
    return 0;
}

static int json_port(json_t *o, const char *key, int64_t *out)
{
    json_t *v = json_object_get(o, key);

    *out = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return -1;
    *out = json_integer_value(v);
    return 0;
}

static struct discovery_peer *peer_from_json(struct discovery_proto_conn *pc, json_t *o,
                                             const char **why)
{
    const char *bcast, *host, *version, *zone, *region;
    int64_t tcp, http;

    if (!json_is_object(o) || json_str(o, "broadcast_address", &bcast) ||
        json_str(o, "hostname", &host) || json_str(o, "version", &version) ||
        json_str(o, "topology_zone", &zone) || json_str(o, "topology_region", &region) ||
        json_port(o, "tcp_port", &tcp) || json_port(o, "http_port", &http)) {
        *why = "IDENTIFY failed to decode JSON body";
        return NULL;
    }
    if (!*bcast || !tcp || !http || !*version) {
        *why = "IDENTIFY missing fields";
        return NULL;
    }
    *why = "out of memory";
    return discovery_peer_new(pc->conn->peer, pc->conn->peer, host, bcast, version, zone, region,
                              tcp, http);
}

static void identify_reply(struct discovery_proto_conn *pc)
{
    struct discovery *d = pc->d;
    char host[256] = "";
    json_t *o = json_object();
    char *text;

    gethostname(host, sizeof(host) - 1);
    json_object_set_new(o, "tcp_port", json_integer(d->tcp_port));
    json_object_set_new(o, "http_port", json_integer(d->http_port));
    json_object_set_new(o, "version", json_string(discovery_conf(d)->nsq_version));
    json_object_set_new(o, "broadcast_address", json_string(discovery_broadcast_address(d)));
    json_object_set_new(o, "hostname", json_string(host));
    text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    send_str(pc->conn, text ? text : "OK");
    free(text);
    json_decref(o);
}

/* IDENTIFY\n[4B size][JSON]: returns the bytes used after the line, 0 when
 * the body has not fully arrived, or -1 after a fatal error. */
static long do_identify(struct discovery_proto_conn *pc, const char *p, size_t avail)
{
    uint32_t size;
    json_t *o;
    json_error_t jerr;
    const char *why = NULL;

    if (pc->peer)
        return fatal(pc, "E_INVALID", "cannot IDENTIFY again"), -1;
    if (avail < 4)
        return 0;
    memcpy(&size, p, 4);
    size = ntohl(size);
    if (size > discovery_conf(pc->d)->max_identify_size)
        return fatal(pc, "E_BAD_BODY", "IDENTIFY body too big (%u bytes)", size), -1;
    if (avail - 4 < size)
        return 0;
    o = json_loadb(p + 4, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!o)
        return fatal(pc, "E_BAD_BODY", "IDENTIFY failed to decode JSON body"), -1;
    pc->peer = peer_from_json(pc, o, &why);
    json_decref(o);
    if (!pc->peer)
        return fatal(pc, "E_BAD_BODY", "%s", why), -1;
    pc->peer->last_update = tn_now_ms();
    discovery_peer_add(&pc->d->db, pc->peer);
    /* an identified producer may go quiet: it is hidden, not dropped */
    tn_conn_set_idle_timeout(pc->conn, 0);
    tn_log_info(WHO, "client %s: IDENTIFY address %s TCP %lld HTTP %lld version %s", pc->conn->peer,
                pc->peer->broadcast_address, (long long)pc->peer->tcp_port,
                (long long)pc->peer->http_port, pc->peer->version);
    identify_reply(pc);
    return 4 + (long)size;
}

/* ---- REGISTER / UNREGISTER ------------------------------------------------ */

/* Check "<topic> [<channel>]"; 0 or -1 after a fatal error. */
static int topic_chan(struct discovery_proto_conn *pc, const char *cmd, char **params, size_t n,
                      const char **topic, const char **channel)
{
    if (!pc->peer)
        return fatal(pc, "E_INVALID", "client must IDENTIFY"), -1;
    if (n < 2)
        return fatal(pc, "E_INVALID", "%s insufficient number of params", cmd), -1;
    *topic = params[1];
    *channel = n >= 3 ? params[2] : "";
    if (!discovery_name_valid(*topic, strlen(*topic)))
        return fatal(pc, "E_BAD_TOPIC", "%s topic name '%s' is not valid", cmd, *topic), -1;
    if (**channel && !discovery_name_valid(*channel, strlen(*channel)))
        return fatal(pc, "E_BAD_CHANNEL", "%s channel name '%s' is not valid", cmd, *channel), -1;
    return 0;
}

static int do_register(struct discovery_proto_conn *pc, char **params, size_t n)
{
    const char *topic, *channel;
    int rc;

    if (topic_chan(pc, "REGISTER", params, n, &topic, &channel) != 0)
        return -1;
    rc = discovery_lookup_register(&pc->d->db, pc->peer, topic, channel);
    if (rc == TN_ELIMIT)
        return fatal(pc, "E_REGISTRATION_FAILED", "REGISTER too many registrations"), -1;
    if (rc != 0)
        return fatal(pc, "E_REGISTRATION_FAILED", "REGISTER %s", tn_strerror(rc)), -1;
    tn_log_debug(WHO, "client %s: REGISTER %s %s", pc->conn->peer, topic, channel);
    send_str(pc->conn, "OK");
    return 0;
}

static int do_unregister(struct discovery_proto_conn *pc, char **params, size_t n)
{
    const char *topic, *channel;

    if (topic_chan(pc, "UNREGISTER", params, n, &topic, &channel) != 0)
        return -1;
    discovery_lookup_unregister(&pc->d->db, pc->peer, topic, channel);
    tn_log_debug(WHO, "client %s: UNREGISTER %s %s", pc->conn->peer, topic, channel);
    send_str(pc->conn, "OK");
    return 0;
}

/* ---- the command loop ----------------------------------------------------- */

/* Handle one command whose line ends at nl. Returns the bytes it used
 * (line and body), 0 when more bytes are needed, -1 after a fatal error. */
static long command(struct discovery_proto_conn *pc, char *p, char *nl, size_t avail)
{
    char line[LINE_MAX_LEN + 1], *s, *e, *params[4];
    size_t len = (size_t)(nl - p), n;

    if (len > LINE_MAX_LEN)
        return fatal(pc, "E_INVALID", "command line too long"), -1;
    memcpy(line, p, len);
    line[len] = '\0';
    for (s = line; is_space(*s); s++)
        ;
    for (e = s + strlen(s); e > s && is_space(e[-1]); e--)
        ;
    *e = '\0';
    n = split(s, params, 4);
    if (strcmp(params[0], "PING") == 0) {
        if (pc->peer)
            pc->peer->last_update = tn_now_ms();
        send_str(pc->conn, "OK");
    } else if (strcmp(params[0], "IDENTIFY") == 0) {
        long body = do_identify(pc, nl + 1, avail - len - 1);
        return body <= 0 ? body : (long)len + 1 + body;
    } else if (strcmp(params[0], "REGISTER") == 0) {
        if (do_register(pc, params, n) != 0)
            return -1;
    } else if (strcmp(params[0], "UNREGISTER") == 0) {
        if (do_unregister(pc, params, n) != 0)
            return -1;
    } else {
        return fatal(pc, "E_INVALID", "invalid command %s", params[0]), -1;
    }
    return (long)len + 1;
}

static void on_read(struct tn_conn *c)
{
    struct discovery_proto_conn *pc = c->data;

    if (!pc->d || tn_conn_closing(c))
        return;
    if (!pc->magic_ok) {
        if (tn_buf_rlen(&c->in) < 4)
            return;
        if (memcmp(tn_buf_rptr(&c->in), "  V1", 4) != 0) {
            tn_log_info(WHO, "client %s: bad protocol magic", c->peer);
            send_str(c, "E_BAD_PROTOCOL");
            tn_conn_close_after_write(c);
            return;
        }
        tn_buf_consume(&c->in, 4);
        pc->magic_ok = 1;
    }
    while (tn_buf_rlen(&c->in)) {
        char *p = tn_buf_rptr(&c->in);
        size_t avail = tn_buf_rlen(&c->in);
        char *nl = memchr(p, '\n', avail);
        long used;

        if (!nl) {
            if (avail > LINE_MAX_LEN)
                fatal(pc, "E_INVALID", "command line too long");
            return;
        }
        used = command(pc, p, nl, avail);
        if (used <= 0)
            return;
        tn_buf_consume(&c->in, (size_t)used);
    }
}

/* Forget the producer and leave the module's list (the module may be
 * going away: after this pc no longer points at it). */
static void detach(struct discovery_proto_conn *pc)
{
    if (!pc->d)
        return;
    if (pc->peer) {
        tn_log_info(WHO, "client %s: gone, unregistering %s:%lld", pc->conn->peer,
                    pc->peer->broadcast_address, (long long)pc->peer->tcp_port);
        discovery_peer_remove(&pc->d->db, pc->peer);
        discovery_peer_free(pc->peer);
        pc->peer = NULL;
    }
    DISCOVERY_LIST_REMOVE(pc->d->conns, pc->d->conns_last, pc);
    pc->d = NULL;
}

static void on_close(struct tn_conn *c, int reason)
{
    struct discovery_proto_conn *pc = c->data;

    detach(pc);
    free(pc);
}

static const struct tn_conn_handler proto_handler = {on_read, NULL, NULL, on_close};

int discovery_proto_accept(struct tn_listener *l, struct tn_conn *c, void *ud)
{
    struct discovery *d = ud;
    struct discovery_proto_conn *pc = calloc(1, sizeof(*pc));

    if (!pc)
        return TN_ENOMEM;
    pc->d = d;
    pc->conn = c;
    DISCOVERY_LIST_APPEND(d->conns, d->conns_last, pc);
    c->h = &proto_handler;
    c->data = pc;
    /* a connection that never identifies must not hold a slot for ever */
    tn_conn_set_idle_timeout(c, discovery_conf(d)->inactive_timeout);
    tn_log_debug(WHO, "client %s: connected", c->peer);
    return 0;
}

/* At stop: drop every producer now and close the connections (their
 * on_close may run after the module is gone, so they are detached). */
void discovery_proto_close_all(struct discovery *d)
{
    while (d->conns) {
        struct discovery_proto_conn *pc = d->conns;
        struct tn_conn *c = pc->conn;
        detach(pc);
        tn_conn_close(c, 0);
    }
}
