/*
 * discovery.c -- the discovery module: an nsqlookupd-compatible directory of
 * brokers (TCP protocol V1 on tcp_listen, HTTP API on http_listen) and a
 * service registry with TTLs and watches, offered to other modules as the
 * "discovery.registry" service and to Lua as ternd.discovery. This file
 * holds the configuration and the lifecycle; see discovery.h for the rest.
 */
#include <lua.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "discovery.h"

#define WHO "discovery"

TN_STAT_DECL(stat_expired, "ternd_discovery_instances_expired_total", TN_STAT_COUNTER,
             "Service instances dropped because their TTL ran out");

static struct discovery *current; /* one instance per process */

static const struct tn_conf_range range_positive = {1, INT64_MAX};
static const struct tn_conf_range range_ttl = {1, 7 * 24 * 3600 * 1000LL};
static const struct tn_conf_range range_count = {1, 100000000};

static const struct tn_conf_cmd services_table[] = {
    {"default_ttl", TN_CONF_DURATION, offsetof(struct discovery_services_conf, default_ttl),
     &range_ttl, NULL, NULL},
    {"min_ttl", TN_CONF_DURATION, offsetof(struct discovery_services_conf, min_ttl), &range_ttl,
     NULL, NULL},
    {"max_ttl", TN_CONF_DURATION, offsetof(struct discovery_services_conf, max_ttl), &range_ttl,
     NULL, NULL},
    {"max_instances", TN_CONF_INT, offsetof(struct discovery_services_conf, max_instances),
     &range_count, NULL, NULL},
    {"max_metadata_size", TN_CONF_SIZE, offsetof(struct discovery_services_conf, max_metadata_size),
     NULL, NULL, NULL},
    {"max_watchers", TN_CONF_INT, offsetof(struct discovery_services_conf, max_watchers),
     &range_count, NULL, NULL},
    {"default_wait", TN_CONF_DURATION, offsetof(struct discovery_services_conf, default_wait),
     &range_positive, NULL, NULL},
    {"max_wait", TN_CONF_DURATION, offsetof(struct discovery_services_conf, max_wait),
     &range_positive, NULL, NULL},
    TN_CONF_END};

static const struct tn_conf_enum backends[] = {
    {"embedded", DISCOVERY_BACKEND_EMBEDDED}, {"etcd", DISCOVERY_BACKEND_ETCD}, {NULL, 0}};

/* One endpoint: http://host:port, https://host:port (TLS) or host:port
 * (http), as etcd's own flags write them; a trailing '/' is allowed. */
static int endpoint_item(struct tn_conf *cf, const struct tn_conf_node *n, struct tn_addr *a,
                         unsigned char *https)
{
    struct tn_conf_node hostport = *n;
    size_t skip = 0;
    char *v;

    if (n->type != TN_NODE_SCALAR || tn_conf_is_null(n))
        return tn_conf_error(cf, n, "expected http(s)://host:port or host:port");
    *https = strncmp(n->value, "https://", 8) == 0;
    if (*https)
        skip = 8;
    else if (strncmp(n->value, "http://", 7) == 0)
        skip = 7;
    if (!(v = tn_conf_strdup(cf, n->value + skip)))
        return tn_conf_error(cf, n, "out of memory");
    if (*v && v[strlen(v) - 1] == '/')
        v[strlen(v) - 1] = '\0';
    if (!*v)
        return tn_conf_error(cf, n, "no host:port in %s", n->value);
    hostport.value = v;
    hostport.vlen = strlen(v);
    return tn_conf_parse_addr(cf, &hostport, a);
}

/* endpoints: one endpoint or a list of them */
static int set_endpoints(struct tn_conf *cf, const struct tn_conf_node *node,
                         const struct tn_conf_cmd *cmd, void *conf)
{
    struct discovery_etcd_conf *ec = conf;
    const struct tn_conf_node *one[1] = {node};
    const struct tn_conf_node *const *items = one;
    size_t n = 1;
    int rc = 0;

    ec->endpoints.n = 0;
    if (tn_conf_is_null(node))
        return 0;
    if (node->type == TN_NODE_SEQ) {
        items = (const struct tn_conf_node *const *)node->items;
        n = node->n;
    }
    ec->endpoints.v = tn_conf_alloc(cf, (n + 1) * sizeof(*ec->endpoints.v));
    ec->https = tn_conf_alloc(cf, n + 1);
    if (!ec->endpoints.v || !ec->https)
        return tn_conf_error(cf, node, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (node->type == TN_NODE_SEQ)
            tn_conf_push_index(cf, i);
        if (endpoint_item(cf, items[i], &ec->endpoints.v[i], &ec->https[i]) != 0)
            rc = TN_ECONF;
        if (node->type == TN_NODE_SEQ)
            tn_conf_pop(cf);
    }
    ec->endpoints.n = n;
    return rc;
}

static const struct tn_conf_cmd etcd_table[] = {
    {"endpoints", TN_CONF_CUSTOM, 0, NULL, set_endpoints, NULL},
    {"tls", TN_CONF_SECTION, offsetof(struct discovery_etcd_conf, tls), tn_tls_client_conf_table,
     NULL, tn_tls_client_conf_check},
    {"prefix", TN_CONF_STRING, offsetof(struct discovery_etcd_conf, prefix), NULL, NULL, NULL},
    {"lease_ttl", TN_CONF_DURATION, offsetof(struct discovery_etcd_conf, lease_ttl), &range_ttl,
     NULL, NULL},
    {"dial_timeout", TN_CONF_DURATION, offsetof(struct discovery_etcd_conf, dial_timeout),
     &range_positive, NULL, NULL},
    {"sync_interval", TN_CONF_DURATION, offsetof(struct discovery_etcd_conf, sync_interval),
     &range_positive, NULL, NULL},
    TN_CONF_END};

static const struct tn_conf_cmd discovery_table[] = {
    {"backend", TN_CONF_ENUM, offsetof(struct discovery_conf, backend), backends, NULL, NULL},
    {"etcd", TN_CONF_SECTION, offsetof(struct discovery_conf, etcd), etcd_table, NULL, NULL},
    {"tcp_listen", TN_CONF_ADDR, offsetof(struct discovery_conf, tcp_listen), NULL, NULL, NULL},
    {"http_listen", TN_CONF_ADDR, offsetof(struct discovery_conf, http_listen), NULL, NULL, NULL},
    {"broadcast_address", TN_CONF_STRING, offsetof(struct discovery_conf, broadcast_address), NULL,
     NULL, NULL},
    {"nsq_version", TN_CONF_STRING, offsetof(struct discovery_conf, nsq_version), NULL, NULL, NULL},
    {"inactive_timeout", TN_CONF_DURATION, offsetof(struct discovery_conf, inactive_timeout),
     &range_positive, NULL, NULL},
    {"tombstone_lifetime", TN_CONF_DURATION, offsetof(struct discovery_conf, tombstone_lifetime),
     &range_positive, NULL, NULL},
    {"max_producers", TN_CONF_INT, offsetof(struct discovery_conf, max_producers), &range_count,
     NULL, NULL},
    {"max_registrations", TN_CONF_INT, offsetof(struct discovery_conf, max_registrations),
     &range_count, NULL, NULL},
    {"max_identify_size", TN_CONF_SIZE, offsetof(struct discovery_conf, max_identify_size), NULL,
     NULL, NULL},
    {"services", TN_CONF_SECTION, offsetof(struct discovery_conf, services), services_table, NULL,
     NULL},
    {"lua", TN_CONF_SECTION, offsetof(struct discovery_conf, lua), tn_lua_conf_table, NULL, NULL},
    TN_CONF_END};

static void set_default_addr(struct tn_addr *a, const char *text)
{
    char err[128];
    (void)tn_parse_addr(text, a, err, sizeof(err));
}

static int discovery_create_conf(struct tn_mod *m, void *conf)
{
    struct discovery_conf *dc = conf;

    set_default_addr(&dc->tcp_listen, "127.0.0.1:4160");
    set_default_addr(&dc->http_listen, "127.0.0.1:4161");
    dc->nsq_version = "1.3.0";
    dc->inactive_timeout = 300 * 1000;
    dc->tombstone_lifetime = 45 * 1000;
    dc->max_producers = 1024;
    dc->max_registrations = 100000;
    dc->max_identify_size = 64 * 1024;
    dc->services.default_ttl = 30 * 1000;
    dc->services.min_ttl = 1000;
    dc->services.max_ttl = 3600 * 1000;
    dc->services.max_instances = 10000;
    dc->services.max_metadata_size = 64 * 1024;
    dc->services.max_watchers = 1024;
    dc->services.default_wait = 30 * 1000;
    dc->services.max_wait = 300 * 1000;
    tn_lua_conf_default(&dc->lua);
    dc->backend = DISCOVERY_BACKEND_EMBEDDED;
    dc->etcd.prefix = "/ternd/";
    dc->etcd.lease_ttl = 10 * 1000;
    dc->etcd.dial_timeout = 2 * 1000;
    dc->etcd.sync_interval = 1000;
    tn_tls_client_conf_default(&dc->etcd.tls);
    return 0;
}

static int discovery_check_conf(struct tn_mod *m, struct tn_conf *cf, void *conf)
{
    struct discovery_conf *dc = conf;
    struct discovery_services_conf *sc = &dc->services;
    char err[512];

    if (!dc->tcp_listen.len && !dc->http_listen.len)
        tn_conf_error_key(cf, "tcp_listen", "tcp_listen and http_listen cannot both be off");
    if (sc->min_ttl > sc->max_ttl)
        tn_conf_error_key(cf, "services.min_ttl", "must not exceed services.max_ttl");
    if (sc->default_ttl < sc->min_ttl || sc->default_ttl > sc->max_ttl)
        tn_conf_error_key(cf, "services.default_ttl",
                          "must lie within services.min_ttl and services.max_ttl");
    if (sc->default_wait > sc->max_wait)
        tn_conf_error_key(cf, "services.default_wait", "must not exceed services.max_wait");
    if (sc->max_metadata_size < 2)
        tn_conf_error_key(cf, "services.max_metadata_size", "must be at least 2 bytes ({})");
    if (dc->max_identify_size < 2)
        tn_conf_error_key(cf, "max_identify_size", "must be at least 2 bytes");
    if (!dc->nsq_version || !*dc->nsq_version)
        tn_conf_error_key(cf, "nsq_version", "must not be empty");
    if (dc->backend == DISCOVERY_BACKEND_ETCD && !dc->etcd.endpoints.n)
        tn_conf_error_key(cf, "etcd.endpoints", "backend etcd needs at least one endpoint");
    for (size_t i = 0; i < dc->etcd.endpoints.n; i++)
        if (dc->etcd.endpoints.v[i].sa.ss_family == AF_UNIX)
            tn_conf_error_key(cf, "etcd.endpoints", "must be host:port addresses");
    if (!dc->etcd.prefix || !*dc->etcd.prefix || dc->etcd.prefix[strlen(dc->etcd.prefix) - 1] != '/')
        tn_conf_error_key(cf, "etcd.prefix", "must be a non-empty key prefix ending in '/'");
    if (dc->etcd.lease_ttl < 2000)
        tn_conf_error_key(cf, "etcd.lease_ttl", "must be at least 2s (etcd counts in seconds)");
    if (dc->lua.script && tn_lua_check_file(dc->lua.script, err, sizeof(err)) != 0)
        tn_conf_error_key(cf, "lua.script", "%s", err);
    return tn_conf_errors(cf) ? TN_ECONF : 0;
}

struct discovery *discovery_current(void)
{
    return current;
}

const char *discovery_broadcast_address(struct discovery *d)
{
    static char host[256];
    const char *b = discovery_conf(d)->broadcast_address;

    if (b && *b)
        return b;
    if (!host[0] && gethostname(host, sizeof(host) - 1) != 0)
        snprintf(host, sizeof(host), "localhost");
    return host;
}

/* The registry changed: wake watchers (HTTP, C, Lua) and re-arm expiry. */
static void on_change(const char *name, uint64_t index, void *ud)
{
    struct discovery *d = ud;

    discovery_http_wake(d, name);
    discovery_etcd_changed(d);
    discovery_cwatch_notify(d, name, index);
    discovery_lua_on_change(d, name, index);
}

/* Expiry sweeps run at most this often: a heartbeat only pushes an expiry
 * later, so the timer may fire for nothing; this bounds the cost of that
 * (one pass over the instances) whatever the number of instances. */
#define EXPIRY_GAP_MS 100

static void arm_expiry(struct discovery *d, int64_t at)
{
    int64_t now = tn_now_ms();

    ev_timer_stop(tn_loop(), &d->expiry);
    d->expiry_at = at;
    /* a millisecond late rather than early: expiry compares with <= now */
    ev_timer_set(&d->expiry, at > now ? (double)(at - now + 1) / 1000.0 : 0.0, 0.0);
    ev_timer_start(tn_loop(), &d->expiry);
}

static void expiry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct discovery *d = w->data;
    size_t n;

    d->last_sweep = tn_now_ms();
    n = discovery_registry_expire(&d->reg, d->last_sweep);
    if (n) {
        tn_stat_add(&stat_expired, (int64_t)n);
        tn_log_debug(WHO, "%zu service instance(s) expired", n);
    }
    discovery_schedule_expiry(d);
}

void discovery_schedule_expiry(struct discovery *d)
{
    int64_t next = discovery_registry_next_expiry(&d->reg);

    if (next < 0) {
        ev_timer_stop(tn_loop(), &d->expiry);
        return;
    }
    if (next < d->last_sweep + EXPIRY_GAP_MS)
        next = d->last_sweep + EXPIRY_GAP_MS;
    arm_expiry(d, next);
}

void discovery_expiry_due(struct discovery *d, int64_t at)
{
    if (!ev_is_active(&d->expiry) || at < d->expiry_at)
        arm_expiry(d, at);
}

void discovery_instance_put(struct discovery *d, const char *name, const char *id)
{
    struct discovery_instance *in = discovery_registry_instance(&d->reg, name, id);

    if (in && in->ttl >= 0)
        discovery_expiry_due(d, in->expires);
}

static int lua_start(struct discovery *d, const struct tn_lua_conf *lc)
{
    char err[512];

    if (!lc->script)
        return 0;
    d->lua = tn_lua_create(WHO, lc, NULL, d, err, sizeof(err));
    if (!d->lua) {
        tn_log_error(WHO, "%s", err);
        return TN_ELUA;
    }
    return 0;
}

static int discovery_init(struct tn_mod *m)
{
    struct discovery_conf *dc = m->conf;
    struct discovery *d = calloc(1, sizeof(*d));
    int rc;

    if (!d)
        return TN_ENOMEM;
    d->mod = m;
    m->data = d;
    discovery_lookup_init(&d->db, (size_t)dc->max_registrations);
    discovery_registry_init(&d->reg, &dc->services, on_change, d);
    ev_timer_init(&d->expiry, expiry_cb, 0.0, 0.0);
    d->expiry.data = d;
    current = d;
    /* every Lua state made from now on (ours and other modules') gets
     * ternd.discovery; the functions find the module through `current` */
    if ((rc = tn_lua_add_opener(WHO, discovery_lua_open, NULL)) != 0 ||
        (rc = lua_start(d, &dc->lua)) != 0) {
        tn_lua_remove_opener(discovery_lua_open, NULL);
        current = NULL;
        m->data = NULL;
        free(d);
        return rc;
    }
    tn_stat_register(&stat_expired);
    return 0;
}

static int bound_port(const char *text)
{
    const char *colon = text ? strrchr(text, ':') : NULL;
    return colon ? atoi(colon + 1) : 0;
}

static int discovery_stop(struct tn_mod *m);

static int discovery_start(struct tn_mod *m)
{
    struct discovery *d = m->data;
    struct discovery_conf *dc = m->conf;
    struct tn_listen_opts lo = {0};
    int err = 0;

    d->started_ms = tn_now_ms();
    if (dc->tcp_listen.len) {
        lo.name = "discovery.tcp";
        lo.max_conns = (size_t)dc->max_producers;
        /* a whole IDENTIFY must fit in the input buffer */
        lo.lim.in_max = (size_t)dc->max_identify_size + 4096;
        if (!(d->tcp = tn_listen(&dc->tcp_listen, &lo, discovery_proto_accept, d, &err)))
            goto fail;
        d->tcp_port = bound_port(tn_listener_addr(d->tcp));
        tn_log_info(WHO, "TCP (nsqlookupd protocol V1) on %s", tn_listener_addr(d->tcp));
    }
    if (dc->http_listen.len) {
        if (!(d->http = tn_http_server_create("discovery.http", &dc->http_listen, NULL, &err)))
            goto fail;
        d->http_port = bound_port(tn_http_server_addr(d->http));
        if ((err = discovery_http_routes(d)) != 0)
            goto fail;
        tn_log_info(WHO, "HTTP on %s", tn_http_server_addr(d->http));
    }
    if ((err = tn_service_register(TN_DISCOVERY_SERVICE, (void *)&discovery_service_api)) != 0) {
        tn_log_error(WHO, "cannot offer the %s service: %s", TN_DISCOVERY_SERVICE,
                     tn_strerror(err));
        goto fail;
    }
    if (dc->backend == DISCOVERY_BACKEND_ETCD && (err = discovery_etcd_start(d)) != 0)
        goto fail;
    return 0;
fail:
    /* leave nothing open: the core may not call stop after a failed start */
    discovery_stop(m);
    return err;
}

static int discovery_stop(struct tn_mod *m)
{
    struct discovery *d = m->data;

    if (!d)
        return 0;
    if (tn_service_lookup(TN_DISCOVERY_SERVICE) == &discovery_service_api)
        tn_service_unregister(TN_DISCOVERY_SERVICE);
    ev_timer_stop(tn_loop(), &d->expiry);
    discovery_etcd_stop(d);
    if (d->tcp) {
        tn_listener_close(d->tcp);
        d->tcp = NULL;
    }
    discovery_proto_close_all(d);
    if (d->http) {
        /* closing first keeps the connections of pending watches open
         * until the answers given below are written */
        tn_http_server_close(d->http);
        discovery_http_finish_all(d);
        tn_http_server_free(d->http);
        d->http = NULL;
    }
    return 0;
}

static void discovery_fini(struct tn_mod *m)
{
    struct discovery *d = m->data;

    if (!d)
        return;
    tn_lua_remove_opener(discovery_lua_open, NULL);
    if (d->lua)
        tn_lua_destroy(d->lua);
    discovery_cwatch_free_all(d);
    /* nothing may report changes while the registry is torn down */
    d->reg.on_change = NULL;
    discovery_registry_free(&d->reg);
    discovery_lookup_free(&d->db);
    tn_stat_unregister(&stat_expired);
    if (current == d)
        current = NULL;
    free(d);
    m->data = NULL;
}

static int lua_reload(struct discovery *d, const struct tn_lua_conf *lc)
{
    char err[512];

    if (!lc->script) {
        if (d->lua)
            tn_lua_destroy(d->lua);
        d->lua = NULL;
        return 0;
    }
    if (!d->lua)
        return lua_start(d, lc);
    if (tn_lua_reload(d->lua, lc, err, sizeof(err)) != 0) {
        tn_log_error(WHO, "Lua reload failed, keeping the old script: %s", err);
        return TN_ELUA;
    }
    return 0;
}

/* Limits, timeouts and the script change at once; the listeners and what
 * producers were told at IDENTIFY need a restart. */
static int discovery_reload(struct tn_mod *m, void *new_conf)
{
    struct discovery *d = m->data;
    struct discovery_conf *oc = m->conf, *nc = new_conf;

    if (strcmp(oc->tcp_listen.text, nc->tcp_listen.text) != 0 ||
        strcmp(oc->http_listen.text, nc->http_listen.text) != 0)
        tn_log_warn(WHO, "tcp_listen/http_listen changes take effect after a restart");
    if (oc->backend != nc->backend || strcmp(oc->etcd.prefix, nc->etcd.prefix) != 0)
        tn_log_warn(WHO, "backend and etcd.prefix changes take effect after a restart");
    d->db.max_regs = (size_t)nc->max_registrations;
    d->reg.conf = &nc->services;
    discovery_schedule_expiry(d);
    discovery_etcd_reload(d);
    return lua_reload(d, &nc->lua);
}

static void discovery_stats(struct tn_mod *m, struct tn_stats_out *out)
{
    struct discovery *d = m->data;
    size_t topics = 0, channels = 0;

    if (!d)
        return;
    for (struct discovery_reg *r = d->db.regs; r; r = r->next)
        r->kind == DISCOVERY_REG_TOPIC ? topics++ : channels++;
    tn_stats_emit(out, "ternd_discovery_producers", TN_STAT_GAUGE, "Identified producers (brokers)",
                  NULL, (double)d->db.npeers);
    tn_stats_emit(out, "ternd_discovery_topics", TN_STAT_GAUGE, "Registered topics", NULL,
                  (double)topics);
    tn_stats_emit(out, "ternd_discovery_channels", TN_STAT_GAUGE, "Registered channels", NULL,
                  (double)channels);
    tn_stats_emit(out, "ternd_discovery_instances", TN_STAT_GAUGE, "Service instances registered",
                  NULL, (double)d->reg.ninstances);
    tn_stats_emit(out, "ternd_discovery_watchers", TN_STAT_GAUGE, "Pending HTTP watches", NULL,
                  (double)d->nwatchers);
    tn_stats_emit(out, "ternd_discovery_index", TN_STAT_GAUGE, "Service registry index", NULL,
                  (double)d->reg.index);
    if (d->lua)
        tn_stats_emit(out, "ternd_lua_errors_total", TN_STAT_COUNTER, "Lua errors",
                      (const char *[]){"module", WHO, NULL}, (double)tn_lua_errors(d->lua));
}

TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD("discovery", TN_VERSION_STRING),
    NULL,
    discovery_table,
    sizeof(struct discovery_conf),
    discovery_create_conf,
    discovery_check_conf,
    discovery_init,
    discovery_start,
    discovery_stop,
    discovery_fini,
    discovery_reload,
    discovery_stats,
};
