/*
 * etcd.c -- the etcd backend of discovery: several ternd hosts share one
 * registry kept in etcd (v3, through its JSON gateway over HTTP/1.1).
 *
 * The local tables stay the source of what this process serves: the
 * in-memory registry answers /lookup, /nodes, /services and the C service
 * exactly as with the embedded backend. This file mirrors them:
 *
 *   - publish: every sync, the entries registered *here* (service instances
 *     and the nsq producers with their topics and channels) are compared
 *     with what was last written, and the differences are put (with this
 *     process's lease) or deleted. One lease per process, kept alive every
 *     third of its TTL: when the process dies, etcd drops all its keys.
 *   - learn: a range over the prefix, then a watch from the next revision,
 *     applies the other hosts' keys to the local tables, marked remote (a
 *     remote instance has no TTL of its own, a remote producer never goes
 *     inactive: their lease decides).
 *
 * Keys (prefix "/ternd/" by default):
 *   <prefix>services/<name>/<id>            {host, address, metadata, weight, state}
 *   <prefix>nsq/producers/<host>/<peer id>  {host, peer fields, regs: [[topic, channel]...]}
 *
 * Endpoints given as https://host:port (or all of them with etcd.tls.enabled)
 * are reached over TLS with the etcd.tls client settings: etcd's certificate
 * verified (against tls.ca, else the system's CAs) and its name checked,
 * tls.cert/key presented when etcd runs --client-cert-auth. A handshake
 * that fails is a connect failure like any other (logged with OpenSSL's
 * reason by the connection layer).
 *
 * Any failure (connect, timeout, HTTP error, lost lease, cancelled or
 * compacted watch) closes both connections and starts again after a
 * backoff (100 ms doubling to 5 s) on the next endpoint: new lease, full
 * range (remote entries no longer in etcd are dropped), watch, full
 * publish. Meanwhile the local tables keep serving what they had.
 * Loop thread only.
 */
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "discovery.h"

#define WHO "discovery.etcd"
#define ETCD_BACKOFF_MIN_MS 100
#define ETCD_BACKOFF_MAX_MS 5000
#define ETCD_MAX_BODY (64 * 1024 * 1024) /* a range reply or a watch message */
#define REMOTE_PEER_PREFIX "etcd:"

TN_STAT_DECL(stat_errors, "ternd_discovery_etcd_errors_total", TN_STAT_COUNTER,
             "Connections to etcd lost or failed (each followed by a reconnect)");
TN_STAT_DECL(stat_events, "ternd_discovery_etcd_events_total", TN_STAT_COUNTER,
             "Keys of other hosts applied from etcd (range and watch)");

enum { ETCD_DOWN = 0, ETCD_CONNECTING, ETCD_UP };

struct discovery_etcd;

typedef void (*etcd_done_pt)(struct discovery_etcd *e, json_t *reply);

/* A unary request waiting for (or in) the request connection. */
struct etcd_req {
    const char *path;
    char *body;
    etcd_done_pt done; /* NULL: the reply only needs to be a 200 */
    struct etcd_req *next;
};

/* One HTTP/1.1 client connection to etcd. */
struct etcd_http {
    struct discovery_etcd *e; /* NULL once let go (the close frees it) */
    struct tn_conn *c;
    http_parser parser;
    struct tn_buf body;
    int complete; /* a whole response was parsed */
    int watch;    /* streaming: the body is a sequence of JSON messages */
};

struct discovery_etcd {
    struct discovery *d;
    char host[160];              /* this process in keys: hostname-pid-random */
    int state;                   /* ETCD_* */
    size_t endpoint;             /* index in the conf's endpoints */
    struct tn_addr addr;         /* the endpoint in use (a reload may change the list) */
    int https;                   /* ... given as https://: the connections run TLS */
    struct tn_tls_ctx *tls;      /* client context, built for the first https connect */
    char *prefix;                /* the conf's at start: keys written stay under it */
    struct etcd_http *kv, *wch;  /* requests; the watch stream */
    struct etcd_req *head, *tail;/* head is in flight when inflight */
    int inflight;
    int64_t sent_ms;             /* when the request in flight was sent */
    char lease[32];              /* ID as etcd writes it; "" none */
    int64_t keepalive_ms;        /* last keep-alive sent */
    int64_t synced_ms;           /* last publish pass */
    int64_t backoff;             /* ms before the next attempt */
    int64_t down_since;          /* ms; 0 when up */
    ev_timer tick;               /* keep-alive, periodic sync, timeouts, reconnect */
    ev_timer kick;               /* a publish soon after a local change */
    json_t *published;           /* key -> value text written (null: needs a re-put or delete) */
    json_t *remote;              /* key -> 1, other hosts' keys applied here */
};

static void etcd_fail(struct discovery_etcd *e, const char *what, int err);
static void etcd_connect(struct discovery_etcd *e);
static void etcd_sync(struct discovery_etcd *e);

static const struct discovery_etcd_conf *etcd_conf(struct discovery_etcd *e)
{
    return &discovery_conf(e->d)->etcd;
}

/* ---- base64 (keys and values travel encoded) ------------------------------ */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const char *s, size_t n)
{
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;

    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)(unsigned char)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)(unsigned char)s[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)s[i + 2];
        *o++ = b64[v >> 18 & 63];
        *o++ = b64[v >> 12 & 63];
        *o++ = i + 1 < n ? b64[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? b64[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

static int b64_value(char c)
{
    const char *p = c ? strchr(b64, c) : NULL;
    return p ? (int)(p - b64) : -1;
}

/* Decoded text (NUL-terminated, *len bytes), or NULL when not base64. */
static char *b64_decode(const char *s, size_t *len)
{
    size_t n = strlen(s), k = 0;
    char *out = malloc(n / 4 * 3 + 3);
    uint32_t v = 0;
    int bits = 0;

    if (!out)
        return NULL;
    for (size_t i = 0; i < n && s[i] != '='; i++) {
        int x = b64_value(s[i]);
        if (x < 0) {
            free(out);
            return NULL;
        }
        v = v << 6 | (uint32_t)x;
        if ((bits += 6) >= 8) {
            bits -= 8;
            out[k++] = (char)(v >> bits & 0xff);
        }
    }
    out[k] = '\0';
    *len = k;
    return out;
}

/* ---- HTTP client ------------------------------------------------------------ */

static int on_body(http_parser *p, const char *at, size_t n)
{
    struct etcd_http *h = p->data;

    if (h->body.len - h->body.pos + n > ETCD_MAX_BODY)
        return 1;
    return tn_buf_append(&h->body, at, n) == 0 ? 0 : 1;
}

static int on_message_complete(http_parser *p)
{
    ((struct etcd_http *)p->data)->complete = 1;
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void http_free(struct etcd_http *h)
{
    tn_buf_free(&h->body);
    free(h);
}

/* Let go of a connection: it closes later and frees itself. */
static void http_drop(struct etcd_http **hp)
{
    struct etcd_http *h = *hp;

    if (!h)
        return;
    *hp = NULL;
    h->e = NULL;
    tn_conn_close(h->c, 0);
}

static int http_send(struct etcd_http *h, const char *path, const char *body)
{
    const struct tn_addr *a = &h->e->addr;
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     path, a->text, strlen(body));
    struct iovec iov[2] = {{head, (size_t)n}, {(void *)body, strlen(body)}};

    return tn_conn_writev(h->c, iov, 2);
}

/* The next JSON message of a watch stream, or NULL when incomplete. */
static json_t *watch_next(struct etcd_http *h)
{
    struct tn_buf *b = &h->body;
    json_error_t err;
    json_t *m;

    while (b->pos < b->len && strchr(" \t\r\n", b->data[b->pos]))
        b->pos++;
    if (b->pos == b->len)
        return NULL;
    m = json_loadb(b->data + b->pos, b->len - b->pos, JSON_DISABLE_EOF_CHECK, &err);
    if (!m)
        return NULL;
    tn_buf_consume(b, (size_t)err.position);
    return m;
}

static void kv_reply(struct discovery_etcd *e, struct etcd_http *h);
static void watch_message(struct discovery_etcd *e, json_t *m);

static void http_on_read(struct tn_conn *c)
{
    struct etcd_http *h = c->data;
    struct tn_buf *in = &c->in;
    size_t n;

    if (!h->e) {
        tn_buf_consume(in, in->len - in->pos);
        return;
    }
    n = http_parser_execute(&h->parser, &parser_settings, in->data + in->pos, in->len - in->pos);
    if (h->parser.http_errno != HPE_OK) {
        etcd_fail(h->e, "bad HTTP response", TN_EPROTO);
        return;
    }
    tn_buf_consume(in, n);
    if (h->parser.status_code && h->parser.status_code != 200) {
        tn_log_warn(WHO, "HTTP %u from %s", h->parser.status_code, c->peer);
        etcd_fail(h->e, "request refused", TN_EPROTO);
        return;
    }
    if (h->watch) {
        struct discovery_etcd *e = h->e;
        json_t *m;
        while (e->wch == h && (m = watch_next(h)) != NULL) {
            watch_message(e, m);
            json_decref(m);
        }
        if (e->wch == h && h->complete)
            etcd_fail(e, "watch stream ended", TN_EPEER);
        return;
    }
    if (h->complete)
        kv_reply(h->e, h);
}

/* The core closes c itself: forget it before failing, so that the
 * failure does not close it a second time. */
static void http_lost(struct etcd_http *h, const char *what, int err)
{
    struct discovery_etcd *e = h->e;

    if (!e)
        return;
    if (e->kv == h)
        e->kv = NULL;
    if (e->wch == h)
        e->wch = NULL;
    h->e = NULL;
    etcd_fail(e, what, err);
}

static void http_on_connect(struct tn_conn *c, int status)
{
    struct etcd_http *h = c->data;

    if (status < 0) {
        http_lost(h, "connect failed", status);
        http_free(h);
    }
}

static void http_on_close(struct tn_conn *c, int reason)
{
    struct etcd_http *h = c->data;

    http_lost(h, "connection closed", reason ? reason : TN_EPEER);
    http_free(h);
}

static const struct tn_conn_handler http_handler = {
    .on_read = http_on_read,
    .on_connect = http_on_connect,
    .on_close = http_on_close,
};

static struct etcd_http *http_open(struct discovery_etcd *e, int watch)
{
    struct etcd_http *h = calloc(1, sizeof(*h));
    struct tn_conn_limits lim = {0};
    int err = 0;

    if (!h)
        return NULL;
    h->e = e;
    h->watch = watch;
    http_parser_init(&h->parser, HTTP_RESPONSE);
    h->parser.data = h;
    lim.in_max = 4 * 1024 * 1024;
    if (!(h->c = tn_connect(&e->addr, &http_handler, h, &lim, &err))) {
        tn_log_warn(WHO, "cannot connect to %s: %s", e->addr.text, tn_strerror(err));
        free(h);
        return NULL;
    }
    if (e->https && (err = tn_conn_connect_tls(h->c, e->tls, NULL)) != 0) {
        tn_log_warn(WHO, "cannot start TLS to %s: %s", e->addr.text, tn_strerror(err));
        h->e = NULL; /* its close frees it */
        tn_conn_close(h->c, err);
        return NULL;
    }
    return h;
}

/* ---- unary requests ----------------------------------------------------- */

static void req_free(struct etcd_req *r)
{
    free(r->body);
    free(r);
}

static void reqs_free(struct discovery_etcd *e)
{
    while (e->head) {
        struct etcd_req *r = e->head;
        e->head = r->next;
        req_free(r);
    }
    e->tail = NULL;
    e->inflight = 0;
}

static void req_pump(struct discovery_etcd *e)
{
    if (e->inflight || !e->head || !e->kv)
        return;
    if (http_send(e->kv, e->head->path, e->head->body) != 0) {
        etcd_fail(e, "write failed", TN_ECLOSED);
        return;
    }
    e->inflight = 1;
    e->sent_ms = tn_now_ms();
}

/* Queue a request; body (a new reference) is consumed. */
static void req_add(struct discovery_etcd *e, const char *path, json_t *body, etcd_done_pt done)
{
    struct etcd_req *r = calloc(1, sizeof(*r));

    if (!r || !body || !(r->body = json_dumps(body, JSON_COMPACT))) {
        json_decref(body);
        free(r);
        etcd_fail(e, "out of memory", TN_ENOMEM);
        return;
    }
    json_decref(body);
    r->path = path;
    r->done = done;
    if (e->tail)
        e->tail->next = r;
    else
        e->head = r;
    e->tail = r;
    req_pump(e);
}

static void kv_reply(struct discovery_etcd *e, struct etcd_http *h)
{
    struct etcd_req *r = e->head;
    json_t *reply;

    h->complete = 0;
    if (!r || !e->inflight) {
        etcd_fail(e, "unexpected response", TN_EPROTO);
        return;
    }
    reply = json_loadb(h->body.data + h->body.pos, h->body.len - h->body.pos, 0, NULL);
    tn_buf_reset(&h->body);
    http_parser_init(&h->parser, HTTP_RESPONSE);
    h->parser.data = h;
    e->head = r->next;
    if (!e->head)
        e->tail = NULL;
    e->inflight = 0;
    if (!reply) {
        req_free(r);
        etcd_fail(e, "response is not JSON", TN_EPROTO);
        return;
    }
    if (r->done)
        r->done(e, reply);
    json_decref(reply);
    req_free(r);
    req_pump(e);
}

static json_t *key_body(const char *key, size_t klen)
{
    char *k = b64_encode(key, klen);
    json_t *o = k ? json_pack("{ss}", "key", k) : NULL;

    free(k);
    return o;
}

/* {key, range_end}: every key under the prefix. */
static json_t *prefix_body(struct discovery_etcd *e)
{
    const char *p = e->prefix;
    size_t n = strlen(p);
    char *end = strdup(p), *b;
    json_t *o = key_body(p, n);

    if (!end || !o) {
        free(end);
        json_decref(o);
        return NULL;
    }
    end[n - 1]++; /* the prefix ends in '/': '0' follows it, no carry */
    b = b64_encode(end, n);
    free(end);
    if (!b || json_object_set_new(o, "range_end", json_string(b)) != 0) {
        free(b);
        json_decref(o);
        return NULL;
    }
    free(b);
    return o;
}

/* ---- applying other hosts' keys ------------------------------------------- */

static struct discovery_peer *peer_find(struct discovery *d, const char *id)
{
    for (struct discovery_peer *p = d->db.peers; p; p = p->next)
        if (strcmp(p->id, id) == 0)
            return p;
    return NULL;
}

int discovery_peer_remote(const struct discovery_peer *p)
{
    return strncmp(p->id, REMOTE_PEER_PREFIX, strlen(REMOTE_PEER_PREFIX)) == 0;
}

/* key relative to the prefix: "services/<name>/<id>" -> name, id. */
static int service_key(char *rel, char **name, char **id)
{
    char *slash;

    if (strncmp(rel, "services/", 9) != 0)
        return 0;
    *name = rel + 9;
    if (!(slash = strchr(*name, '/')))
        return 0;
    *slash = '\0';
    *id = slash + 1;
    return **name && **id;
}

static void remote_service_put(struct discovery_etcd *e, char *rel, json_t *v)
{
    struct discovery_instance_spec sp = {0};
    struct discovery_instance *old;
    const char *state = NULL, *why = NULL;
    char *name, *id;
    json_int_t weight = -1;

    if (!service_key(rel, &name, &id) ||
        json_unpack(v, "{s:s, s?o, s?I, s?s}", "address", &sp.address, "metadata", &sp.metadata,
                    "weight", &weight, "state", &state) != 0) {
        tn_log_warn(WHO, "ignoring a malformed service entry");
        return;
    }
    old = discovery_registry_instance(&e->d->reg, name, id);
    if (old && !old->remote) {
        tn_log_warn(WHO, "service %s/%s is registered here and on another host; keeping ours",
                    name, id);
        return;
    }
    sp.name = name;
    sp.id = id;
    sp.weight = weight;
    sp.state = state ? discovery_state_parse(state) : TN_DISCOVERY_UP;
    sp.ttl = -1; /* the other host's lease decides */
    sp.remote = 1;
    if (discovery_registry_put(&e->d->reg, &sp, tn_now_ms(), NULL, &why) != 0)
        tn_log_warn(WHO, "service %s/%s from etcd not applied: %s", name, id, why);
}

static void remote_service_delete(struct discovery_etcd *e, char *rel)
{
    struct discovery_instance *in;
    char *name, *id;

    if (service_key(rel, &name, &id) && (in = discovery_registry_instance(&e->d->reg, name, id)) &&
        in->remote)
        discovery_registry_delete(&e->d->reg, name, id);
}

static void remote_peer_delete(struct discovery_etcd *e, const char *pid)
{
    struct discovery_peer *p = peer_find(e->d, pid);

    if (p) {
        discovery_peer_remove(&e->d->db, p);
        discovery_peer_free(p);
    }
}

/* A producer with its registrations replaces the one of the same key. */
static void remote_peer_put(struct discovery_etcd *e, const char *pid, json_t *v)
{
    const char *host = NULL, *bcast = NULL, *version = NULL, *remote = "", *zone = NULL,
               *region = NULL;
    json_int_t tcp = 0, http = 0;
    json_t *regs = NULL, *r;
    struct discovery_peer *p;
    size_t i;

    if (json_unpack(v, "{s:s, s:s, s:I, s:I, s:o, s?s, s?s, s?s, s?s}", "broadcast_address",
                    &bcast, "version", &version, "tcp_port", &tcp, "http_port", &http, "regs",
                    &regs, "hostname", &host, "remote_address", &remote, "topology_zone", &zone,
                    "topology_region", &region) != 0 ||
        !json_is_array(regs)) {
        tn_log_warn(WHO, "ignoring a malformed producer entry");
        return;
    }
    remote_peer_delete(e, pid);
    if (!(p = discovery_peer_new(pid, remote, host, bcast, version, zone, region, tcp, http))) {
        tn_log_error(WHO, "out of memory for a producer from etcd");
        return;
    }
    p->local = 1; /* never inactive: the other host's lease decides */
    p->last_update = tn_now_ms();
    discovery_peer_add(&e->d->db, p);
    json_array_foreach(regs, i, r)
    {
        const char *topic = json_string_value(json_array_get(r, 0));
        const char *channel = json_string_value(json_array_get(r, 1));
        if (topic && discovery_name_valid(topic, strlen(topic)) &&
            discovery_lookup_register(&e->d->db, p, topic, channel) != 0)
            tn_log_warn(WHO, "registration %s/%s from etcd not applied", topic,
                        channel ? channel : "");
    }
}

/* The peer id in the local table of a remote producer key, or NULL. */
static char *peer_id_of(const char *rel)
{
    size_t n = strlen(REMOTE_PEER_PREFIX) + strlen(rel) + 1;
    char *id;

    if (strncmp(rel, "nsq/producers/", 14) != 0 || !(id = malloc(n)))
        return NULL;
    snprintf(id, n, "%s%s", REMOTE_PEER_PREFIX, rel + 14);
    return id;
}

/* Apply one key of another host (value NULL: deleted). rel is the key
 * without the prefix. */
static void remote_apply(struct discovery_etcd *e, char *rel, json_t *v)
{
    char *pid = peer_id_of(rel);

    tn_stat_add(&stat_events, 1);
    if (pid) {
        v ? remote_peer_put(e, pid, v) : remote_peer_delete(e, pid);
        free(pid);
    } else if (v) {
        remote_service_put(e, rel, v);
    } else {
        remote_service_delete(e, rel);
    }
}

/* One key-value of a range or watch event; deleted: a DELETE event. */
static void apply_kv(struct discovery_etcd *e, json_t *kv, int deleted)
{
    const char *k64 = json_string_value(json_object_get(kv, "key"));
    const char *v64 = json_string_value(json_object_get(kv, "value"));
    size_t plen = strlen(e->prefix), klen, vlen;
    char *key = k64 ? b64_decode(k64, &klen) : NULL, *val = NULL;
    json_t *v = NULL;
    const char *host;

    if (!key || klen != strlen(key) || klen <= plen)
        goto done;
    if (deleted) {
        if (json_object_get(e->remote, key)) {
            json_object_del(e->remote, key);
            remote_apply(e, key + plen, NULL);
        }
        goto done;
    }
    if (!v64 || !(val = b64_decode(v64, &vlen)) || !(v = json_loadb(val, vlen, 0, NULL)) ||
        !(host = json_string_value(json_object_get(v, "host")))) {
        tn_log_warn(WHO, "ignoring key %s: not a ternd entry", key);
        goto done;
    }
    if (strcmp(host, e->host) != 0) {
        json_object_set_new(e->remote, key, json_true());
        remote_apply(e, key + plen, v);
    }
done:
    json_decref(v);
    free(val);
    free(key);
}

/* ---- the watch stream -------------------------------------------------------- */

static void watch_message(struct discovery_etcd *e, json_t *m)
{
    json_t *res = json_object_get(m, "result"), *ev;
    size_t i;

    if (!res || json_is_true(json_object_get(res, "canceled")) ||
        json_object_get(res, "compact_revision")) {
        etcd_fail(e, "watch cancelled", TN_EPROTO);
        return;
    }
    json_array_foreach(json_object_get(res, "events"), i, ev)
    {
        const char *type = json_string_value(json_object_get(ev, "type"));
        apply_kv(e, json_object_get(ev, "kv"), type && strcmp(type, "DELETE") == 0);
    }
}

static void watch_open(struct discovery_etcd *e, const char *revision)
{
    json_t *create = prefix_body(e), *body;
    char *text;
    char start[32];

    snprintf(start, sizeof(start), "%lld", strtoll(revision, NULL, 10) + 1);
    if (!create || json_object_set_new(create, "start_revision", json_string(start)) != 0 ||
        !(body = json_pack("{so}", "create_request", create))) {
        json_decref(create);
        etcd_fail(e, "out of memory", TN_ENOMEM);
        return;
    }
    text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text || !(e->wch = http_open(e, 1)) || http_send(e->wch, "/v3/watch", text) != 0) {
        free(text);
        etcd_fail(e, "cannot open the watch", TN_ECLOSED);
        return;
    }
    free(text);
}

/* ---- lease, first range, publish ------------------------------------------ */

static const char *header_revision(json_t *reply)
{
    return json_string_value(json_object_get(json_object_get(reply, "header"), "revision"));
}

/* The whole prefix: other hosts' keys replace the remote cache. */
static void range_done(struct discovery_etcd *e, json_t *reply)
{
    const char *rev = header_revision(reply);
    json_t *seen = json_object(), *kv;
    const char *key;
    void *tmp;
    json_t *v;
    size_t i;

    if (!rev || !seen) {
        json_decref(seen);
        etcd_fail(e, "bad range reply", TN_EPROTO);
        return;
    }
    json_array_foreach(json_object_get(reply, "kvs"), i, kv)
    {
        const char *k64 = json_string_value(json_object_get(kv, "key"));
        if (k64)
            json_object_set_new(seen, k64, json_true());
        apply_kv(e, kv, 0);
    }
    /* remote keys gone while we were away */
    json_object_foreach_safe(e->remote, tmp, key, v)
    {
        char *k64 = b64_encode(key, strlen(key));
        if (k64 && !json_object_get(seen, k64)) {
            json_object_del(e->remote, key);
            remote_apply(e, (char *)key + strlen(e->prefix), NULL);
        }
        free(k64);
    }
    json_decref(seen);
    watch_open(e, rev);
    if (e->state == ETCD_CONNECTING) {
        e->state = ETCD_UP;
        e->backoff = ETCD_BACKOFF_MIN_MS;
        tn_log_info(WHO, "registry shared through %s (lease %s, host %s)",
                    e->addr.text, e->lease, e->host);
        e->down_since = 0;
        etcd_sync(e);
    }
}

static void grant_done(struct discovery_etcd *e, json_t *reply)
{
    const char *id = json_string_value(json_object_get(reply, "ID"));
    const char *key;
    json_t *v;

    if (!id || strlen(id) >= sizeof(e->lease)) {
        etcd_fail(e, "lease not granted", TN_EPROTO);
        return;
    }
    snprintf(e->lease, sizeof(e->lease), "%s", id);
    e->keepalive_ms = tn_now_ms();
    /* everything written before went with the old lease: write it again */
    json_object_foreach(e->published, key, v) json_object_set_new(e->published, key, json_null());
    req_add(e, "/v3/kv/range", prefix_body(e), range_done);
}

static void keepalive_done(struct discovery_etcd *e, json_t *reply)
{
    json_t *res = json_object_get(reply, "result");
    const char *ttl = json_string_value(json_object_get(res, "TTL"));

    if (!ttl || strtoll(ttl, NULL, 10) <= 0)
        etcd_fail(e, "lease expired", TN_ETIMEDOUT);
}

static void keepalive(struct discovery_etcd *e)
{
    e->keepalive_ms = tn_now_ms();
    req_add(e, "/v3/lease/keepalive", json_pack("{ss}", "ID", e->lease), keepalive_done);
}

static void put_key(struct discovery_etcd *e, const char *key, const char *value)
{
    char *k = b64_encode(key, strlen(key)), *v = b64_encode(value, strlen(value));
    json_t *body = k && v ? json_pack("{ssssss}", "key", k, "value", v, "lease", e->lease) : NULL;

    free(k);
    free(v);
    req_add(e, "/v3/kv/put", body, NULL);
}

static void delete_key(struct discovery_etcd *e, const char *key)
{
    req_add(e, "/v3/kv/deleterange", key_body(key, strlen(key)), NULL);
}

/* The local service instances as keys and values. */
static int desired_services(struct discovery_etcd *e, json_t *out)
{
    const char *prefix = e->prefix;
    char key[1024];

    for (struct discovery_service *s = e->d->reg.services; s; s = s->next)
        for (struct discovery_instance *in = s->head; in; in = in->next) {
            json_t *v;
            if (in->remote)
                continue;
            v = json_pack("{sssssOsIss}", "host", e->host, "address", in->address, "metadata",
                          in->metadata, "weight", (json_int_t)in->weight, "state",
                          discovery_state_name(in->state));
            snprintf(key, sizeof(key), "%sservices/%s/%s", prefix, in->name, in->id);
            if (!v || json_object_set_new(out, key, v) != 0)
                return TN_ENOMEM;
        }
    return 0;
}

static json_t *peer_json(struct discovery_etcd *e, const struct discovery_peer *p)
{
    return json_pack("{sssssssssssssssIsIs[]}", "host", e->host, "remote_address",
                     p->remote_address, "hostname", p->hostname, "broadcast_address",
                     p->broadcast_address, "version", p->version, "topology_zone",
                     p->topology_zone, "topology_region", p->topology_region, "tcp_port",
                     (json_int_t)p->tcp_port, "http_port", (json_int_t)p->http_port, "regs");
}

/* The local producers, active ones, with their registrations. */
static int desired_producers(struct discovery_etcd *e, json_t *out)
{
    struct discovery_conf *dc = discovery_conf(e->d);
    int64_t now = tn_now_ms();
    json_t *by_id = json_object();
    char key[1024];
    const char *id;
    json_t *v;

    if (!by_id)
        return TN_ENOMEM;
    for (struct discovery_peer *p = e->d->db.peers; p; p = p->next)
        if (!discovery_peer_remote(p) && discovery_peer_active(p, now, dc->inactive_timeout))
            json_object_set_new(by_id, p->id, peer_json(e, p));
    for (struct discovery_reg *r = e->d->db.regs; r; r = r->next)
        for (size_t i = 0; i < r->n; i++) {
            json_t *pj = json_object_get(by_id, r->v[i].peer->id);
            if (pj)
                json_array_append_new(json_object_get(pj, "regs"),
                                      json_pack("[ss]", r->topic, r->channel ? r->channel : ""));
        }
    json_object_foreach(by_id, id, v)
    {
        snprintf(key, sizeof(key), "%snsq/producers/%s/%s", e->prefix, e->host, id);
        json_object_set(out, key, v);
    }
    json_decref(by_id);
    return 0;
}

/* Write what changed since the last pass, delete what went. */
static void etcd_sync(struct discovery_etcd *e)
{
    json_t *want = json_object(), *v;
    const char *key;
    void *tmp;

    e->synced_ms = tn_now_ms();
    if (e->state != ETCD_UP)
        goto done;
    if (!want || desired_services(e, want) != 0 || desired_producers(e, want) != 0) {
        tn_log_error(WHO, "out of memory building the entries to publish");
        goto done;
    }
    json_object_foreach(want, key, v)
    {
        char *text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
        const char *old = json_string_value(json_object_get(e->published, key));
        if (text && (!old || strcmp(old, text) != 0)) {
            put_key(e, key, text);
            json_object_set_new(e->published, key, json_string(text));
        }
        free(text);
        if (e->state != ETCD_UP)
            goto done;
    }
    json_object_foreach_safe(e->published, tmp, key, v)
    {
        if (json_object_get(want, key))
            continue;
        delete_key(e, key);
        json_object_del(e->published, key);
        if (e->state != ETCD_UP)
            goto done;
    }
done:
    json_decref(want);
}

/* ---- lifecycle ------------------------------------------------------------------ */

static void etcd_connect(struct discovery_etcd *e)
{
    const struct discovery_etcd_conf *ec = etcd_conf(e);
    char why[512];

    if (!ec->endpoints.n)
        return;
    e->endpoint %= ec->endpoints.n;
    e->addr = ec->endpoints.v[e->endpoint];
    e->https = ec->tls.enabled || (ec->https && ec->https[e->endpoint]);
    e->state = ETCD_CONNECTING;
    if (e->https && !e->tls && !(e->tls = tn_tls_client_ctx_new(&ec->tls, why, sizeof(why)))) {
        tn_log_error(WHO, "etcd.tls: %s", why);
        etcd_fail(e, "TLS settings", TN_EINVAL);
        return;
    }
    if (!(e->kv = http_open(e, 0))) {
        etcd_fail(e, "connect failed", TN_ECLOSED);
        return;
    }
    e->sent_ms = tn_now_ms();
    req_add(e, "/v3/lease/grant",
            json_pack("{sI}", "TTL", (json_int_t)((ec->lease_ttl + 999) / 1000)), grant_done);
}

static void etcd_fail(struct discovery_etcd *e, const char *what, int err)
{
    if (e->state == ETCD_DOWN)
        return;
    tn_stat_add(&stat_errors, 1);
    tn_log_warn(WHO, "%s (%s): %s; serving the cached registry, retrying in %lld ms", what,
                e->addr.text, tn_strerror(err), (long long)e->backoff);
    e->state = ETCD_DOWN;
    if (!e->down_since)
        e->down_since = tn_now_ms();
    http_drop(&e->kv);
    http_drop(&e->wch);
    reqs_free(e);
    e->lease[0] = '\0';
    e->endpoint++;
    e->sent_ms = tn_now_ms(); /* the backoff counts from here */
}

/* Every 100 ms: the reconnect backoff, timeouts, keep-alive, periodic sync. */
static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct discovery_etcd *e = w->data;
    const struct discovery_etcd_conf *ec = etcd_conf(e);
    int64_t now = tn_now_ms();

    (void)loop, (void)revents;
    if (e->state == ETCD_DOWN) {
        if (now - e->sent_ms >= e->backoff) {
            e->backoff = e->backoff * 2 > ETCD_BACKOFF_MAX_MS ? ETCD_BACKOFF_MAX_MS : e->backoff * 2;
            etcd_connect(e);
        }
        return;
    }
    if ((e->inflight || e->state == ETCD_CONNECTING) && now - e->sent_ms > ec->dial_timeout) {
        etcd_fail(e, "no answer", TN_ETIMEDOUT);
        return;
    }
    if (e->state != ETCD_UP)
        return;
    if (now - e->keepalive_ms >= ec->lease_ttl / 3)
        keepalive(e);
    if (e->state == ETCD_UP && now - e->synced_ms >= ec->sync_interval)
        etcd_sync(e);
}

static void kick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    etcd_sync(w->data);
}

void discovery_etcd_changed(struct discovery *d)
{
    struct discovery_etcd *e = d->etcd;

    if (e && e->state == ETCD_UP && !ev_is_active(&e->kick)) {
        ev_timer_set(&e->kick, 0.02, 0.0);
        ev_timer_start(tn_loop(), &e->kick);
    }
}

int discovery_etcd_start(struct discovery *d)
{
    struct discovery_etcd *e = calloc(1, sizeof(*e));
    char hn[64] = "";

    if (!e || !(e->published = json_object()) || !(e->remote = json_object()) ||
        !(e->prefix = strdup(discovery_conf(d)->etcd.prefix))) {
        if (e) {
            json_decref(e->published);
            json_decref(e->remote);
        }
        free(e);
        return TN_ENOMEM;
    }
    e->d = d;
    gethostname(hn, sizeof(hn) - 1);
    /* unique per process run: a restarted ternd never takes over the keys
     * of its previous life (those go with the old lease) */
    snprintf(e->host, sizeof(e->host), "%s-%d-%lld", *hn ? hn : "ternd", (int)getpid(),
             (long long)(tn_wall_ns() % 1000000000));
    for (char *p = e->host; *p; p++)
        if (*p == '/' || *p == ' ')
            *p = '_';
    e->backoff = ETCD_BACKOFF_MIN_MS;
    ev_timer_init(&e->tick, tick_cb, 0.1, 0.1);
    e->tick.data = e;
    ev_timer_init(&e->kick, kick_cb, 0.02, 0.0);
    e->kick.data = e;
    ev_timer_start(tn_loop(), &e->tick);
    tn_stat_register(&stat_errors);
    tn_stat_register(&stat_events);
    d->etcd = e;
    etcd_connect(e);
    return 0;
}

void discovery_etcd_reload(struct discovery *d)
{
    struct discovery_etcd *e = d->etcd;

    /* rebuilt from the new settings at the next https connect (the open
     * connections keep theirs) */
    if (e) {
        tn_tls_ctx_free(e->tls);
        e->tls = NULL;
    }
}

/* The table does not own its peers (their connections do): the ones
 * learnt from etcd are ours to free. */
static void drop_remote_peers(struct discovery *d)
{
    struct discovery_peer *p = d->db.peers, *next;

    for (; p; p = next) {
        next = p->next;
        if (discovery_peer_remote(p)) {
            discovery_peer_remove(&d->db, p);
            discovery_peer_free(p);
        }
    }
}

void discovery_etcd_stop(struct discovery *d)
{
    struct discovery_etcd *e = d->etcd;

    if (!e)
        return;
    ev_timer_stop(tn_loop(), &e->tick);
    ev_timer_stop(tn_loop(), &e->kick);
    e->state = ETCD_DOWN;
    http_drop(&e->kv);
    http_drop(&e->wch);
    reqs_free(e);
    drop_remote_peers(d);
    json_decref(e->published);
    json_decref(e->remote);
    free(e->prefix);
    tn_tls_ctx_free(e->tls);
    tn_stat_unregister(&stat_errors);
    tn_stat_unregister(&stat_events);
    d->etcd = NULL;
    free(e);
}
