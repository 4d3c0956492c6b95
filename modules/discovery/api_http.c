/*
 * api_http.c -- the HTTP API on http_listen: nsqlookupd's endpoints with its
 * v1 answers (JSON without the old {status_code, data} wrapper, errors as
 * {"message": "CODE"}, the X-NSQ-Content-Type header), and the service
 * registry under /services (register, deregister, heartbeat, list and a
 * long-poll watch that answers when the watched set changes).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery.h"

#define WHO "discovery"
#define ARG_MAX 256

struct discovery_watcher {
    struct discovery *d;
    struct tn_http_req *r;
    char *name;     /* NULL: every service */
    uint64_t index; /* answer once the index passes this */
    ev_timer timer;
    struct discovery_watcher *prev, *next;
};

typedef int (*handler_pt)(struct discovery *d, struct tn_http_req *r);

struct route {
    const char *path;
    unsigned methods; /* TN_HTTP_GET implies HEAD */
    handler_pt fn;
};

struct binding {
    struct discovery *d;
    const struct route *rt;
};

/* ---- replies --------------------------------------------------------------- */

static void reply_json(struct tn_http_req *r, int status, json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;

    tn_http_add_header(r, "X-NSQ-Content-Type", "nsq; version=1.0");
    if (!text)
        tn_http_reply_str(r, 500, "application/json; charset=utf-8",
                          "{\"message\":\"INTERNAL_ERROR\"}");
    else
        tn_http_reply_str(r, status, "application/json; charset=utf-8", text);
    free(text);
    if (o)
        json_decref(o);
}

static int reply_err(struct tn_http_req *r, int status, const char *code)
{
    reply_json(r, status, json_pack("{s:s}", "message", code));
    return TN_HTTP_DONE;
}

/* nsqlookupd answers a successful action with an empty body. */
static int reply_empty(struct tn_http_req *r)
{
    tn_http_add_header(r, "X-NSQ-Content-Type", "nsq; version=1.0");
    tn_http_reply(r, 200, NULL, "", 0);
    return TN_HTTP_DONE;
}

static int reply_ok(struct tn_http_req *r, json_t *o)
{
    reply_json(r, 200, o);
    return TN_HTTP_DONE;
}

static json_t *str_array_add(json_t *a, const char *s)
{
    json_array_append_new(a, json_string(s));
    return a;
}

/* ---- nsqlookupd ------------------------------------------------------------ */

static int do_ping(struct discovery *d, struct tn_http_req *r)
{
    tn_http_reply_str(r, 200, "text/plain; charset=utf-8", "OK");
    return TN_HTTP_DONE;
}

static int do_info(struct discovery *d, struct tn_http_req *r)
{
    return reply_ok(r, json_pack("{s:s}", "version", discovery_conf(d)->nsq_version));
}

static int do_topics(struct discovery *d, struct tn_http_req *r)
{
    json_t *a = json_array();

    for (struct discovery_reg *g = d->db.regs; g; g = g->next)
        if (g->kind == DISCOVERY_REG_TOPIC)
            str_array_add(a, g->topic);
    return reply_ok(r, json_pack("{s:o}", "topics", a));
}

static json_t *channels_of(struct discovery *d, const char *topic)
{
    json_t *a = json_array();

    for (struct discovery_reg *g = discovery_channels(&d->db, topic); g;
         g = discovery_channels_next(g))
        str_array_add(a, g->channel);
    return a;
}

/* The query argument `name`: 0, or a 400 MISSING_ARG_<what> was sent. */
static int need_arg(struct tn_http_req *r, const char *name, char *out, const char *missing)
{
    if (tn_http_arg(r, name, out, ARG_MAX) < 0) {
        reply_err(r, 400, missing);
        return -1;
    }
    return 0;
}

static int do_channels(struct discovery *d, struct tn_http_req *r)
{
    char topic[ARG_MAX];

    if (need_arg(r, "topic", topic, "MISSING_ARG_TOPIC") != 0)
        return TN_HTTP_DONE;
    return reply_ok(r, json_pack("{s:o}", "channels", channels_of(d, topic)));
}

static json_t *peer_json(const struct discovery_peer *p)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:s, s:s}", "remote_address",
                     p->remote_address, "hostname", p->hostname, "broadcast_address",
                     p->broadcast_address, "tcp_port", (json_int_t)p->tcp_port, "http_port",
                     (json_int_t)p->http_port, "version", p->version, "topology_zone",
                     p->topology_zone, "topology_region", p->topology_region);
}

static int do_lookup(struct discovery *d, struct tn_http_req *r)
{
    struct discovery_conf *dc = discovery_conf(d);
    char topic[ARG_MAX];
    struct discovery_reg *g;
    json_t *producers;
    int64_t now = tn_now_ms();

    if (need_arg(r, "topic", topic, "MISSING_ARG_TOPIC") != 0)
        return TN_HTTP_DONE;
    if (!(g = discovery_reg_find(&d->db, DISCOVERY_REG_TOPIC, topic, NULL)))
        return reply_err(r, 404, "TOPIC_NOT_FOUND");
    producers = json_array();
    for (size_t i = 0; i < g->n; i++) {
        const struct discovery_producer *pr = &g->v[i];
        if (discovery_peer_active(pr->peer, now, dc->inactive_timeout) &&
            !discovery_producer_tombstoned(pr, now, dc->tombstone_lifetime))
            json_array_append_new(producers, peer_json(pr->peer));
    }
    return reply_ok(
        r, json_pack("{s:o, s:o}", "channels", channels_of(d, topic), "producers", producers));
}

/* One /nodes entry: the peer, its topics and a tombstone flag for each. */
static json_t *node_json(struct discovery *d, const struct discovery_peer *p, int64_t now)
{
    json_t *o = peer_json(p), *topics = json_array(), *tombs = json_array();

    for (struct discovery_reg *g = d->db.regs; g; g = g->next) {
        const struct discovery_producer *pr;
        if (g->kind != DISCOVERY_REG_TOPIC || !(pr = discovery_reg_producer(g, p)))
            continue;
        str_array_add(topics, g->topic);
        json_array_append_new(tombs, json_boolean(discovery_producer_tombstoned(
                                         pr, now, discovery_conf(d)->tombstone_lifetime)));
    }
    json_object_set_new(o, "tombstones", tombs);
    json_object_set_new(o, "topics", topics);
    return o;
}

static int do_nodes(struct discovery *d, struct tn_http_req *r)
{
    json_t *a = json_array();
    int64_t now = tn_now_ms();

    /* inactive producers are left out, tombstoned ones are not */
    for (struct discovery_peer *p = d->db.peers; p; p = p->next)
        if (discovery_peer_active(p, now, discovery_conf(d)->inactive_timeout))
            json_array_append_new(a, node_json(d, p, now));
    return reply_ok(r, json_pack("{s:o}", "producers", a));
}

static int reg_failed(struct tn_http_req *r, int err)
{
    return reply_err(r, err == TN_ELIMIT ? 503 : 500,
                     err == TN_ELIMIT ? "TOO_MANY_REGISTRATIONS" : "INTERNAL_ERROR");
}

static int do_topic_create(struct discovery *d, struct tn_http_req *r)
{
    char topic[ARG_MAX];
    int err = 0;

    if (need_arg(r, "topic", topic, "MISSING_ARG_TOPIC") != 0)
        return TN_HTTP_DONE;
    if (!discovery_name_valid(topic, strlen(topic)))
        return reply_err(r, 400, "INVALID_ARG_TOPIC");
    if (!discovery_reg_add(&d->db, DISCOVERY_REG_TOPIC, topic, NULL, &err))
        return reg_failed(r, err);
    tn_log_info(WHO, "topic %s created", topic);
    return reply_empty(r);
}

static int do_topic_delete(struct discovery *d, struct tn_http_req *r)
{
    char topic[ARG_MAX];

    if (need_arg(r, "topic", topic, "MISSING_ARG_TOPIC") != 0)
        return TN_HTTP_DONE;
    if (discovery_topic_delete(&d->db, topic) == 0)
        tn_log_info(WHO, "topic %s deleted with its channels", topic);
    return reply_empty(r);
}

/* topic and channel arguments as nsq checks them; 0 or an answer was sent. */
static int topic_channel_args(struct tn_http_req *r, char *topic, char *channel)
{
    if (need_arg(r, "topic", topic, "MISSING_ARG_TOPIC") != 0)
        return -1;
    if (!discovery_name_valid(topic, strlen(topic)))
        return reply_err(r, 400, "INVALID_ARG_TOPIC"), -1;
    if (need_arg(r, "channel", channel, "MISSING_ARG_CHANNEL") != 0)
        return -1;
    if (!discovery_name_valid(channel, strlen(channel)))
        return reply_err(r, 400, "INVALID_ARG_CHANNEL"), -1;
    return 0;
}

static int do_channel_create(struct discovery *d, struct tn_http_req *r)
{
    char topic[ARG_MAX], channel[ARG_MAX];
    int err = 0;

    if (topic_channel_args(r, topic, channel) != 0)
        return TN_HTTP_DONE;
    if (!discovery_reg_add(&d->db, DISCOVERY_REG_CHANNEL, topic, channel, &err) ||
        !discovery_reg_add(&d->db, DISCOVERY_REG_TOPIC, topic, NULL, &err))
        return reg_failed(r, err);
    tn_log_info(WHO, "channel %s of topic %s created", channel, topic);
    return reply_empty(r);
}

static int do_channel_delete(struct discovery *d, struct tn_http_req *r)
{
    char topic[ARG_MAX], channel[ARG_MAX];

    if (topic_channel_args(r, topic, channel) != 0)
        return TN_HTTP_DONE;
    if (discovery_channel_delete(&d->db, topic, channel) != 0)
        return reply_err(r, 404, "CHANNEL_NOT_FOUND");
    tn_log_info(WHO, "channel %s of topic %s deleted", channel, topic);
    return reply_empty(r);
}

static int do_tombstone(struct discovery *d, struct tn_http_req *r)
{
    char topic[ARG_MAX], node[ARG_MAX];
    size_t n;

    if (need_arg(r, "topic", topic, "MISSING_ARG_TOPIC") != 0 ||
        need_arg(r, "node", node, "MISSING_ARG_NODE") != 0)
        return TN_HTTP_DONE;
    n = discovery_tombstone(&d->db, topic, node, tn_now_ms());
    tn_log_info(WHO, "tombstone for producer %s of topic %s (%zu hit)", node, topic, n);
    return reply_empty(r);
}

/* ---- the service registry -------------------------------------------------- */

json_t *discovery_instance_json(const struct discovery_instance *in, int64_t now)
{
    int64_t left = in->ttl >= 0 ? in->expires - now : -1;

    return json_pack("{s:s, s:s, s:s, s:O, s:I, s:s, s:I, s:I, s:I, s:I}", "name", in->name, "id",
                     in->id, "address", in->address, "metadata", in->metadata, "weight",
                     (json_int_t)in->weight, "state", discovery_state_name(in->state), "ttl",
                     (json_int_t)in->ttl, "expires_in",
                     (json_int_t)(left < 0 && in->ttl >= 0 ? 0 : left), "create_index",
                     (json_int_t)in->create_index, "modify_index", (json_int_t)in->modify_index);
}

static json_t *instances_json(const struct discovery_service *s, int64_t now)
{
    json_t *a = json_array();

    for (const struct discovery_instance *in = s ? s->head : NULL; in; in = in->next)
        json_array_append_new(a, discovery_instance_json(in, now));
    return a;
}

static void set_index_header(struct tn_http_req *r, uint64_t index)
{
    char buf[32];

    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)index);
    tn_http_add_header(r, "X-Discovery-Index", buf);
}

/* The answer of GET /services (and of a watch): one name or all. */
static void services_reply(struct discovery *d, struct tn_http_req *r, const char *name)
{
    uint64_t index = discovery_registry_name_index(&d->reg, name);
    int64_t now = tn_now_ms();
    json_t *o;

    if (name) {
        o = json_pack("{s:I, s:s, s:o}", "index", (json_int_t)index, "name", name, "instances",
                      instances_json(discovery_registry_find(&d->reg, name), now));
    } else {
        json_t *all = json_object();
        for (struct discovery_service *s = d->reg.services; s; s = s->next)
            json_object_set_new(all, s->name, instances_json(s, now));
        o = json_pack("{s:I, s:o}", "index", (json_int_t)index, "services", all);
    }
    set_index_header(r, index);
    reply_json(r, 200, o);
}

/* A request parameter from the query string, else from a JSON body. */
static const char *param(struct tn_http_req *r, json_t *body, const char *key, char *buf)
{
    json_t *v;

    if (tn_http_arg(r, key, buf, ARG_MAX) >= 0)
        return buf;
    v = body ? json_object_get(body, key) : NULL;
    return v && json_is_string(v) ? json_string_value(v) : NULL;
}

/* A JSON object body, or NULL (no body). *bad when present and not one. */
static json_t *json_body(struct tn_http_req *r, int *bad)
{
    json_t *o;

    *bad = 0;
    if (!r->body_len)
        return NULL;
    o = json_loadb(r->body, r->body_len, 0, NULL);
    if (!o || !json_is_object(o)) {
        if (o)
            json_decref(o);
        *bad = 1;
        return NULL;
    }
    return o;
}

/* ttl: a duration string ("10s") or milliseconds; -1 never expires. */
static int parse_ttl(json_t *v, int64_t *out)
{
    if (!v || json_is_null(v))
        return *out = 0, 0;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return *out >= -1 && *out != 0 ? 0 : -1;
    }
    if (json_is_string(v))
        return tn_parse_duration(json_string_value(v), out) == 0 && *out > 0 ? 0 : -1;
    return -1;
}

/* Fill a spec from a register body; NULL or the error code. */
static const char *spec_from_json(json_t *o, struct discovery_instance_spec *sp)
{
    json_t *v;

    memset(sp, 0, sizeof(*sp));
    sp->weight = -1;
    if (json_unpack(o, "{s?s, s?s, s?s}", "name", &sp->name, "id", &sp->id, "address",
                    &sp->address) != 0)
        return "INVALID_BODY";
    if (!sp->name)
        return "MISSING_NAME";
    if (!sp->id)
        return "MISSING_ID";
    if (!sp->address)
        return "MISSING_ADDRESS";
    if ((v = json_object_get(o, "metadata")) && !json_is_null(v))
        sp->metadata = v;
    if ((v = json_object_get(o, "weight")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return "INVALID_WEIGHT";
        sp->weight = json_integer_value(v);
    }
    if ((v = json_object_get(o, "state")) && !json_is_null(v) &&
        (!json_is_string(v) || (sp->state = discovery_state_parse(json_string_value(v))) < 0))
        return "INVALID_STATE";
    if (parse_ttl(json_object_get(o, "ttl"), &sp->ttl) != 0)
        return "INVALID_TTL";
    return NULL;
}

static int err_status(int rc)
{
    switch (rc) {
    case TN_EINVAL:
        return 400;
    case TN_ETOOBIG:
        return 413;
    case TN_ELIMIT:
        return 503;
    case TN_ENOTFOUND:
        return 404;
    default:
        return 500;
    }
}

static int instance_reply(struct discovery *d, struct tn_http_req *r, const char *name,
                          const char *id)
{
    struct discovery_instance *in = discovery_registry_instance(&d->reg, name, id);
    uint64_t index = discovery_registry_name_index(&d->reg, name);

    set_index_header(r, index);
    return reply_ok(r, json_pack("{s:I, s:o}", "index", (json_int_t)index, "instance",
                                 discovery_instance_json(in, tn_now_ms())));
}

static int do_svc_register(struct discovery *d, struct tn_http_req *r)
{
    struct discovery_instance_spec sp;
    const char *why = NULL;
    int bad, rc, changed;
    json_t *body = json_body(r, &bad);

    if (!body)
        return reply_err(r, 400, bad ? "INVALID_BODY" : "MISSING_BODY");
    if ((why = spec_from_json(body, &sp))) {
        json_decref(body);
        return reply_err(r, 400, why);
    }
    rc = discovery_registry_put(&d->reg, &sp, tn_now_ms(), &changed, &why);
    if (rc != 0) {
        json_decref(body);
        return reply_err(r, err_status(rc), why);
    }
    discovery_instance_put(d, sp.name, sp.id);
    if (changed)
        tn_log_info(WHO, "service %s: instance %s at %s registered", sp.name, sp.id, sp.address);
    rc = instance_reply(d, r, sp.name, sp.id);
    json_decref(body);
    return rc;
}

/* What deregister and heartbeat receive: name and id (query or JSON body)
 * and an optional state (heartbeat). */
struct name_id {
    const char *name, *id;
    int state; /* -1: not given */
};

typedef int (*name_id_pt)(struct discovery *d, struct tn_http_req *r, const struct name_id *a);

/* Parse the arguments and run fn; 400 for a bad or missing one. */
static int with_name_id(struct discovery *d, struct tn_http_req *r, name_id_pt fn)
{
    char nbuf[ARG_MAX], ibuf[ARG_MAX], sbuf[ARG_MAX];
    struct name_id a = {NULL, NULL, -1};
    const char *st, *err = NULL;
    int bad, rc = TN_HTTP_DONE;
    json_t *body = json_body(r, &bad);

    if (bad)
        err = "INVALID_BODY";
    else if (!(a.name = param(r, body, "name", nbuf)))
        err = "MISSING_NAME";
    else if (!(a.id = param(r, body, "id", ibuf)))
        err = "MISSING_ID";
    else if ((st = param(r, body, "state", sbuf)) && (a.state = discovery_state_parse(st)) < 0)
        err = "INVALID_STATE";
    if (err)
        reply_err(r, 400, err);
    else
        rc = fn(d, r, &a);
    if (body)
        json_decref(body);
    return rc;
}

static int deregister(struct discovery *d, struct tn_http_req *r, const struct name_id *a)
{
    if (discovery_registry_delete(&d->reg, a->name, a->id) != 0)
        return reply_err(r, 404, "INSTANCE_NOT_FOUND");
    tn_log_info(WHO, "service %s: instance %s deregistered", a->name, a->id);
    set_index_header(r, d->reg.index);
    return reply_ok(r, json_pack("{s:I}", "index", (json_int_t)d->reg.index));
}

static int heartbeat(struct discovery *d, struct tn_http_req *r, const struct name_id *a)
{
    if (discovery_registry_heartbeat(&d->reg, a->name, a->id, a->state, tn_now_ms()) != 0)
        return reply_err(r, 404, "INSTANCE_NOT_FOUND");
    return instance_reply(d, r, a->name, a->id);
}

static int do_svc_deregister(struct discovery *d, struct tn_http_req *r)
{
    return with_name_id(d, r, deregister);
}

static int do_svc_heartbeat(struct discovery *d, struct tn_http_req *r)
{
    return with_name_id(d, r, heartbeat);
}

/* ?name= when given (must be a valid name); 0, or an answer was sent. */
static int opt_name(struct tn_http_req *r, char *buf, const char **name)
{
    *name = NULL;
    if (tn_http_arg(r, "name", buf, ARG_MAX) < 0)
        return 0;
    if (!discovery_svc_name_valid(buf))
        return reply_err(r, 400, "INVALID_NAME"), -1;
    *name = buf;
    return 0;
}

static int do_svc_list(struct discovery *d, struct tn_http_req *r)
{
    char nbuf[ARG_MAX];
    const char *name;

    if (opt_name(r, nbuf, &name) == 0)
        services_reply(d, r, name);
    return TN_HTTP_DONE;
}

/* ---- watches ---------------------------------------------------------------- */

static void watcher_unlink(struct discovery_watcher *w)
{
    struct discovery *d = w->d;

    DISCOVERY_LIST_REMOVE(d->watchers, d->watchers_last, w);
    d->nwatchers--;
    ev_timer_stop(tn_loop(), &w->timer);
    free(w->name);
    free(w);
}

static void watcher_answer(struct discovery_watcher *w)
{
    struct tn_http_req *r = w->r;
    struct discovery *d = w->d;
    char *name = w->name;

    w->name = NULL; /* kept for the reply, freed below */
    r->on_abort = NULL;
    watcher_unlink(w);
    services_reply(d, r, name);
    free(name);
}

static void watcher_abort(struct tn_http_req *r)
{
    watcher_unlink(r->data);
}

static void watcher_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    watcher_answer(t->data);
}

void discovery_http_wake(struct discovery *d, const char *name)
{
    struct discovery_watcher *w, *next;

    for (w = d->watchers; w; w = next) {
        next = w->next;
        if ((!w->name || strcmp(w->name, name) == 0) &&
            discovery_registry_name_index(&d->reg, w->name) > w->index)
            watcher_answer(w);
    }
}

void discovery_http_finish_all(struct discovery *d)
{
    while (d->watchers)
        watcher_answer(d->watchers);
}

/* ?timeout=: "10s"/"500ms" or bare milliseconds; capped at max_wait. */
static int parse_wait(struct tn_http_req *r, const struct discovery_services_conf *sc, int64_t *ms)
{
    char buf[ARG_MAX], *end;
    long long v;

    *ms = sc->default_wait;
    if (tn_http_arg(r, "timeout", buf, sizeof(buf)) < 0)
        return 0;
    v = strtoll(buf, &end, 10);
    if (*buf && *end == '\0' && v >= 0)
        *ms = v;
    else if (tn_parse_duration(buf, ms) != 0 || *ms < 0)
        return -1;
    if (*ms > sc->max_wait)
        *ms = sc->max_wait;
    return 0;
}

static int do_svc_watch(struct discovery *d, struct tn_http_req *r)
{
    const struct discovery_services_conf *sc = &discovery_conf(d)->services;
    char nbuf[ARG_MAX], ibuf[ARG_MAX], *end;
    const char *name;
    unsigned long long index = 0;
    int64_t wait;
    struct discovery_watcher *w;

    if (opt_name(r, nbuf, &name) != 0)
        return TN_HTTP_DONE;
    if (tn_http_arg(r, "index", ibuf, sizeof(ibuf)) >= 0 &&
        ((index = strtoull(ibuf, &end, 10)), !*ibuf || *end || *ibuf == '-'))
        return reply_err(r, 400, "INVALID_INDEX");
    if (parse_wait(r, sc, &wait) != 0)
        return reply_err(r, 400, "INVALID_TIMEOUT");
    if (discovery_registry_name_index(&d->reg, name) > index || wait == 0) {
        services_reply(d, r, name);
        return TN_HTTP_DONE;
    }
    if (d->nwatchers >= (size_t)sc->max_watchers)
        return reply_err(r, 503, "TOO_MANY_WATCHERS");
    if (!(w = calloc(1, sizeof(*w))) || (name && !(w->name = strdup(name)))) {
        free(w);
        return reply_err(r, 500, "INTERNAL_ERROR");
    }
    w->d = d;
    w->r = r;
    w->index = index;
    ev_timer_init(&w->timer, watcher_timeout, (double)wait / 1000.0, 0.0);
    w->timer.data = w;
    ev_timer_start(tn_loop(), &w->timer);
    DISCOVERY_LIST_APPEND(d->watchers, d->watchers_last, w);
    d->nwatchers++;
    r->data = w;
    r->on_abort = watcher_abort;
    return TN_HTTP_ASYNC;
}

/* ---- routing ------------------------------------------------------------------ */

#define GET TN_HTTP_GET
#define POST TN_HTTP_POST

static const struct route routes[] = {
    {"/ping", GET, do_ping},
    {"/info", GET, do_info},
    {"/lookup", GET, do_lookup},
    {"/topics", GET, do_topics},
    {"/channels", GET, do_channels},
    {"/nodes", GET, do_nodes},
    {"/topic/create", POST, do_topic_create},
    {"/topic/delete", POST, do_topic_delete},
    {"/channel/create", POST, do_channel_create},
    {"/channel/delete", POST, do_channel_delete},
    {"/topic/tombstone", POST, do_tombstone},
    /* the names nsqlookupd still accepts from before 1.0 */
    {"/create_topic", GET | POST, do_topic_create},
    {"/delete_topic", GET | POST, do_topic_delete},
    {"/create_channel", GET | POST, do_channel_create},
    {"/delete_channel", GET | POST, do_channel_delete},
    {"/tombstone_topic_producer", GET | POST, do_tombstone},
    /* the service registry */
    {"/services", GET, do_svc_list},
    {"/services/watch", GET, do_svc_watch},
    {"/services/register", POST | TN_HTTP_PUT, do_svc_register},
    {"/services/deregister", POST | TN_HTTP_DELETE, do_svc_deregister},
    {"/services/heartbeat", POST | TN_HTTP_PUT, do_svc_heartbeat},
    /* everything else: nsq's 404 body */
    {"/*", 0, NULL},
};

#define NROUTES (sizeof(routes) / sizeof(routes[0]))

/* Every route takes any method, so that 404 and 405 answers carry nsq's
 * {"message": ...} body rather than the core's plain ones. */
static int dispatch(struct tn_http_req *r, void *ud)
{
    const struct binding *b = ud;
    unsigned allowed = b->rt->methods;

    if (!b->rt->fn)
        return reply_err(r, 404, "NOT_FOUND");
    if (allowed & TN_HTTP_GET)
        allowed |= TN_HTTP_HEAD;
    if (!(r->method & allowed))
        return reply_err(r, 405, "METHOD_NOT_ALLOWED");
    return b->rt->fn(b->d, r);
}

int discovery_http_routes(struct discovery *d)
{
    static struct binding bindings[NROUTES];
    int rc;

    for (size_t i = 0; i < NROUTES; i++) {
        bindings[i] = (struct binding){d, &routes[i]};
        if ((rc = tn_http_route(d->http, TN_HTTP_ANY, routes[i].path, dispatch, &bindings[i])) != 0)
            return rc;
    }
    return 0;
}
