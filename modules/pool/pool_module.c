/*
 * pool_module.c -- the pool module (pool.so): builds the named pools of
 * the `pool:` section, publishes them to other modules as the "pool"
 * service (ternd/pool.h), brings finished tasks back to the loop thread
 * through one ev_async, adopts size changes on reload, and reports every
 * pool's counts in /stats and /metrics.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pool_module.h"

#define POOL_DEFAULT_SIZE 64
#define POOL_DEFAULT_EXPIRY 10000      /* ms */
#define POOL_DEFAULT_STOP_TIMEOUT 5000 /* ms */
#define POOL_STOP_SLICE 20             /* ms between deliveries while stopping */

static struct pool_mod *self; /* the one instance, for the service API */

/* ---- configuration ------------------------------------------------------------ */

static const struct tn_conf_range pool_size_range = {1, 65536};
static const struct tn_conf_range pool_waiting_range = {0, INT32_MAX};

static const struct tn_conf_cmd pool_entry_table[] = {
    {"size", TN_CONF_INT, offsetof(struct pool_entry_conf, size), &pool_size_range, NULL, NULL},
    {"expiry", TN_CONF_DURATION, offsetof(struct pool_entry_conf, expiry), NULL, NULL, NULL},
    {"prealloc", TN_CONF_BOOL, offsetof(struct pool_entry_conf, prealloc), NULL, NULL, NULL},
    {"nonblocking", TN_CONF_BOOL, offsetof(struct pool_entry_conf, nonblocking), NULL, NULL, NULL},
    {"max_waiting", TN_CONF_INT, offsetof(struct pool_entry_conf, max_waiting), &pool_waiting_range,
     NULL, NULL},
    {"disable_purge", TN_CONF_BOOL, offsetof(struct pool_entry_conf, disable_purge), NULL, NULL,
     NULL},
    TN_CONF_END};

static void entry_default(struct pool_entry_conf *e, char *name)
{
    memset(e, 0, sizeof(*e));
    e->name = name;
    e->size = POOL_DEFAULT_SIZE;
    e->expiry = POOL_DEFAULT_EXPIRY;
}

static int valid_pool_name(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n >= POOL_NAME_MAX)
        return 0;
    for (; *s; s++)
        if (!(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z') && !(*s >= '0' && *s <= '9') &&
            *s != '_' && *s != '-')
            return 0;
    return 1;
}

static const struct tn_conf_node *map_value(const struct tn_conf_node *map, const char *key)
{
    for (size_t i = 0; map && map->type == TN_NODE_MAP && i < map->n; i++)
        if (strcmp(map->keys[i]->value, key) == 0)
            return map->items[i];
    return NULL;
}

/* One pool's settings (the key path already names the pool). */
static void set_entry(struct tn_conf *cf, const struct tn_conf_node *item,
                      struct pool_entry_conf *e)
{
    if (tn_conf_is_null(item))
        return; /* `name: ~` takes the defaults */
    if (item->type != TN_NODE_MAP) {
        tn_conf_error(cf, item, "must be a mapping of pool settings (size, expiry, ...)");
        return;
    }
    if (tn_conf_apply(cf, item, pool_entry_table, e) != 0)
        return;
    if (!e->disable_purge && e->expiry <= 0) {
        tn_conf_push_key(cf, "expiry");
        tn_conf_error(cf, map_value(item, "expiry"),
                      "must be longer than 0 (or set disable_purge)");
        tn_conf_pop(cf);
    }
}

/* pool.pools: a mapping of pool names to their settings. */
static int set_pools(struct tn_conf *cf, const struct tn_conf_node *node,
                     const struct tn_conf_cmd *cmd, void *conf)
{
    struct pool_conf *pc = conf;
    int before = tn_conf_errors(cf);

    pc->pools = NULL;
    pc->npools = 0;
    if (tn_conf_is_null(node))
        return 0;
    if (node->type != TN_NODE_MAP)
        return tn_conf_error(cf, node, "must be a mapping of pool names to settings");
    if (node->n && !(pc->pools = tn_conf_alloc(cf, node->n * sizeof(*pc->pools))))
        return tn_conf_error(cf, node, "out of memory");
    for (size_t i = 0; i < node->n; i++) {
        const char *name = node->keys[i]->value;
        struct pool_entry_conf *e = &pc->pools[pc->npools];

        tn_conf_push_key(cf, name);
        if (!valid_pool_name(name)) {
            tn_conf_error(cf, node->keys[i], "pool names are 1 to %d characters of [A-Za-z0-9_-]",
                          POOL_NAME_MAX - 1);
        } else if (map_value(node, name) != node->items[i]) {
            tn_conf_error(cf, node->keys[i], "pool defined twice");
        } else {
            entry_default(e, tn_conf_strdup(cf, name));
            set_entry(cf, node->items[i], e);
            pc->npools++;
        }
        tn_conf_pop(cf);
    }
    return tn_conf_errors(cf) > before ? TN_ECONF : 0;
}

static const struct tn_conf_cmd pool_table[] = {
    {"pools", TN_CONF_CUSTOM, 0, NULL, set_pools, NULL},
    {"stop_timeout", TN_CONF_DURATION, offsetof(struct pool_conf, stop_timeout), NULL, NULL, NULL},
    {"lua", TN_CONF_SECTION, offsetof(struct pool_conf, lua), tn_lua_conf_table, NULL, NULL},
    TN_CONF_END};

static int pool_create_conf(struct tn_mod *m, void *conf)
{
    struct pool_conf *pc = conf;

    pc->stop_timeout = POOL_DEFAULT_STOP_TIMEOUT;
    tn_lua_conf_default(&pc->lua);
    return 0;
}

static int pool_check_conf(struct tn_mod *m, struct tn_conf *cf, void *conf)
{
    struct pool_conf *pc = conf;
    char err[512];

    if (pc->npools == 0) { /* none configured: one named "default" */
        pc->pools = tn_conf_alloc(cf, sizeof(*pc->pools));
        if (!pc->pools)
            return tn_conf_error_key(cf, "pools", "out of memory");
        entry_default(pc->pools, tn_conf_strdup(cf, "default"));
        pc->npools = 1;
    }
    if (pc->lua.script && tn_lua_check_file(pc->lua.script, err, sizeof(err)) != 0)
        tn_conf_error_key(cf, "lua.script", "%s", err);
    return tn_conf_errors(cf) ? TN_ECONF : 0;
}

static struct pool_opts entry_opts(const struct pool_entry_conf *e)
{
    struct pool_opts o;

    o.capacity = e->size;
    o.expiry_ms = e->expiry;
    o.max_waiting = e->max_waiting;
    o.prealloc = e->prealloc;
    o.nonblocking = e->nonblocking;
    o.disable_purge = e->disable_purge;
    return o;
}

/* ---- completions and failures ------------------------------------------------------ */

/* Worker thread: queue a finished task for the loop. The send happens
 * under the lock so fini, which sets detached under it, never races a
 * send to a loop that is going away. */
static void on_finished(struct pool_task *t, void *ud)
{
    struct pool_mod *pm = ud;

    pthread_mutex_lock(&pm->lock);
    if (!pm->detached) {
        t->next = NULL;
        if (pm->finished_tail)
            pm->finished_tail->next = t;
        else
            pm->finished = t;
        pm->finished_tail = t;
        if (t == pm->finished) /* the loop owes us a wake-up only once */
            ev_async_send(tn_loop(), &pm->async);
    }
    pthread_mutex_unlock(&pm->lock);
}

void pool_mod_deliver(struct pool_mod *pm)
{
    struct pool_task *t, *next;

    pthread_mutex_lock(&pm->lock);
    t = pm->finished;
    pm->finished = pm->finished_tail = NULL;
    pthread_mutex_unlock(&pm->lock);
    for (; t; t = next) {
        next = t->next;
        pool_task_finish(t);
    }
}

static void on_async(struct ev_loop *loop, ev_async *w, int revents)
{
    pool_mod_deliver(w->data);
}

void pool_mod_log_failure(struct pool_mod *pm, const char *pool, const char *what)
{
    struct timespec ts;
    int64_t now, last;
    uint64_t skipped;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    last = __atomic_load_n(&pm->fail_log_ms, __ATOMIC_RELAXED);
    if (now - last < 1000 || !__atomic_compare_exchange_n(&pm->fail_log_ms, &last, now, 0,
                                                          __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        __atomic_add_fetch(&pm->fail_suppressed, 1, __ATOMIC_RELAXED);
        return;
    }
    skipped = __atomic_exchange_n(&pm->fail_suppressed, 0, __ATOMIC_RELAXED);
    if (skipped)
        tn_log_warn("pool", "pool %s: task failed: %s (and %llu more failures not logged)", pool,
                    what, (unsigned long long)skipped);
    else
        tn_log_warn("pool", "pool %s: task failed: %s", pool, what);
}

/* The failure handler of C tasks (Lua tasks log their message instead). */
static void on_failure(struct pool *p, int rc, void *ud)
{
    if (rc != TN_ELUA)
        pool_mod_log_failure(ud, pool_name(p), tn_strerror(rc));
}

/* ---- the service ------------------------------------------------------------- */

struct pool *pool_mod_find(struct pool_mod *pm, const char *name)
{
    for (struct pool_named *n = pm ? pm->pools : NULL; n; n = n->next)
        if (!n->removed && strcmp(pool_name(n->core), name) == 0)
            return n->core;
    return NULL;
}

static struct pool_named *find_named(struct pool_mod *pm, const char *name)
{
    for (struct pool_named *n = pm->pools; n; n = n->next)
        if (strcmp(pool_name(n->core), name) == 0)
            return n;
    return NULL;
}

static struct tn_pool *api_find(const char *name)
{
    struct pool *p = pool_mod_find(self, name);
    return p ? pool_handle(p) : NULL;
}

static int api_submit(struct tn_pool *h, tn_pool_task_pt fn, void *arg, tn_pool_done_pt done,
                      void *udata)
{
    return pool_submit(pool_from_handle(h), fn, arg, done, udata);
}

static int api_tune(struct tn_pool *h, int64_t capacity)
{
    return pool_tune(pool_from_handle(h), capacity);
}

static void api_info(struct tn_pool *h, struct tn_pool_info *out)
{
    pool_info(pool_from_handle(h), out);
}

static int api_wait(struct tn_pool *h, int64_t timeout_ms)
{
    return pool_wait(pool_from_handle(h), timeout_ms);
}

static void api_release(struct tn_pool *h)
{
    pool_release(pool_from_handle(h));
}

static int api_release_timeout(struct tn_pool *h, int64_t timeout_ms)
{
    return pool_release_timeout(pool_from_handle(h), timeout_ms);
}

static int api_reboot(struct tn_pool *h)
{
    return pool_reboot(pool_from_handle(h));
}

static const struct tn_pool_api pool_api = {
    sizeof(struct tn_pool_api), api_find,   api_submit, api_tune, api_info, api_wait, api_release,
    api_release_timeout,        api_reboot,
};

/* ---- lifecycle ------------------------------------------------------------------ */

static int add_pool(struct pool_mod *pm, const struct pool_entry_conf *e)
{
    struct pool_hooks h = {on_finished, on_failure, pool_lua_worker_exit, pm};
    struct pool_opts o = entry_opts(e);
    struct pool_named *n = calloc(1, sizeof(*n));
    int err = TN_ENOMEM;

    if (!n || !(n->core = pool_create(e->name, &o, &h, &err))) {
        tn_log_error("pool", "cannot create pool %s: %s", e->name, tn_strerror(err));
        free(n);
        return err;
    }
    pool_handle(n->core)->api = &pool_api;
    n->next = pm->pools;
    pm->pools = n;
    tn_log_info("pool", "pool %s: size %lld, expiry %lldms%s%s", e->name, (long long)e->size,
                (long long)e->expiry, e->prealloc ? ", preallocated" : "",
                e->nonblocking ? ", nonblocking" : "");
    return 0;
}

static void free_pools(struct pool_mod *pm)
{
    while (pm->pools) {
        struct pool_named *n = pm->pools;
        pm->pools = n->next;
        pool_destroy(n->core);
        free(n);
    }
}

static int pool_init(struct tn_mod *m)
{
    struct pool_conf *pc = m->conf;
    struct pool_mod *pm = calloc(1, sizeof(*pm));
    char err[512];
    int rc;

    if (!pm)
        return TN_ENOMEM;
    pm->mod = m;
    pthread_mutex_init(&pm->lock, NULL);
    ev_async_init(&pm->async, on_async);
    pm->async.data = pm;
    ev_async_start(tn_loop(), &pm->async);
    for (size_t i = 0; i < pc->npools; i++)
        if ((rc = add_pool(pm, &pc->pools[i])) != 0)
            goto fail;
    if ((rc = pool_lua_init(pm, &pc->lua)) != 0)
        goto fail;
    if (pc->lua.script &&
        !(pm->lua = tn_lua_create("pool", &pc->lua, NULL, NULL, err, sizeof(err)))) {
        tn_log_error("pool", "%s", err);
        pool_lua_fini(pm, 0);
        rc = TN_ELUA;
        goto fail;
    }
    if ((rc = tn_service_register(TN_POOL_SERVICE, (void *)&pool_api)) != 0) {
        tn_log_error("pool", "service \"%s\": %s", TN_POOL_SERVICE, tn_strerror(rc));
        if (pm->lua)
            tn_lua_destroy(pm->lua);
        pool_lua_fini(pm, 0);
        goto fail;
    }
    self = pm;
    m->data = pm;
    return 0;
fail:
    free_pools(pm);
    ev_async_stop(tn_loop(), &pm->async);
    pthread_mutex_destroy(&pm->lock);
    free(pm);
    return rc;
}

/* Graceful stop: let queued and running tasks finish for up to
 * stop_timeout, delivering their results as they come (every module that
 * submits to us is stopped but not yet finished), then cancel the rest. */
static int pool_stop(struct tn_mod *m)
{
    struct pool_mod *pm = m->data;
    struct pool_conf *pc = m->conf;
    struct timespec ts;
    int64_t now, deadline;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    deadline = now + pc->stop_timeout;
    for (struct pool_named *n = pm->pools; n; n = n->next) {
        while (pool_wait(n->core, POOL_STOP_SLICE) != 0 && now < deadline) {
            pool_mod_deliver(pm);
            clock_gettime(CLOCK_MONOTONIC, &ts);
            now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        }
        pool_release(n->core);
    }
    for (struct pool_named *n = pm->pools; n; n = n->next) {
        int64_t left = deadline - now;
        if (pool_release_timeout(n->core, left > 0 ? left : 0) != 0)
            tn_log_warn("pool", "pool %s: tasks still running after stop_timeout",
                        pool_name(n->core));
    }
    pool_mod_deliver(pm);
    return 0;
}

static void pool_fini(struct tn_mod *m)
{
    struct pool_mod *pm = m->data;
    int stuck = 0;

    if (!pm)
        return;
    tn_service_unregister(TN_POOL_SERVICE);
    self = NULL;
    if (pm->lua)
        tn_lua_destroy(pm->lua);
    for (struct pool_named *n = pm->pools; n; n = n->next)
        if (pool_release_timeout(n->core, 0) != 0)
            stuck = 1;
    pool_lua_fini(pm, !stuck);
    pthread_mutex_lock(&pm->lock);
    pm->detached = stuck;
    pthread_mutex_unlock(&pm->lock);
    ev_async_stop(tn_loop(), &pm->async);
    m->data = NULL;
    if (stuck) {
        /* a worker is still inside a task: its pool and pm must outlive it */
        tn_log_warn("pool", "leaving stuck workers behind; their results are dropped");
        return;
    }
    pool_mod_deliver(pm); /* completions that raced with the stop (none expected) */
    free_pools(pm);
    pthread_mutex_destroy(&pm->lock);
    free(pm);
}

static int pool_reload(struct tn_mod *m, void *new_conf)
{
    struct pool_mod *pm = m->data;
    struct pool_conf *nc = new_conf;
    char err[512];
    int rc = 0;

    for (struct pool_named *n = pm->pools; n; n = n->next)
        n->removed = 2; /* 2: not seen in the new config yet */
    for (size_t i = 0; i < nc->npools; i++) {
        const struct pool_entry_conf *e = &nc->pools[i];
        struct pool_named *n = find_named(pm, e->name);
        struct pool_opts o = entry_opts(e);
        if (!n) {
            if (add_pool(pm, e) != 0)
                rc = TN_EMODULE;
            continue;
        }
        if (n->removed == 1) /* dropped by an earlier reload, back now */
            pool_reboot(n->core);
        n->removed = 0;
        if (pool_set_opts(n->core, &o) != 0)
            rc = TN_EINVAL;
    }
    for (struct pool_named *n = pm->pools; n; n = n->next) {
        if (n->removed == 2) {
            tn_log_info("pool", "pool %s removed by the new configuration", pool_name(n->core));
            pool_release(n->core);
            n->removed = 1;
        }
    }
    pool_lua_reconf(&nc->lua);
    if (nc->lua.script && pm->lua) {
        if (tn_lua_reload(pm->lua, &nc->lua, err, sizeof(err)) != 0) {
            tn_log_error("pool", "lua reload failed, keeping the old script: %s", err);
            rc = TN_ELUA;
        }
    } else if (nc->lua.script) {
        if (!(pm->lua = tn_lua_create("pool", &nc->lua, NULL, NULL, err, sizeof(err)))) {
            tn_log_error("pool", "%s", err);
            rc = TN_ELUA;
        }
    } else if (pm->lua) {
        tn_lua_destroy(pm->lua);
        pm->lua = NULL;
    }
    return rc;
}

/* The metrics of each pool, in the order pool_stats fills their values. */
static const struct {
    const char *name;
    int type;
    const char *help;
} pool_metrics[] = {
    {"ternd_pool_capacity", TN_STAT_GAUGE, "Most workers of the pool"},
    {"ternd_pool_running", TN_STAT_GAUGE, "Workers alive (busy or idle)"},
    {"ternd_pool_idle", TN_STAT_GAUGE, "Workers waiting for a task"},
    {"ternd_pool_waiting", TN_STAT_GAUGE, "Tasks queued for a worker"},
    {"ternd_pool_submitted_total", TN_STAT_COUNTER, "Tasks accepted"},
    {"ternd_pool_completed_total", TN_STAT_COUNTER, "Tasks that succeeded"},
    {"ternd_pool_failed_total", TN_STAT_COUNTER, "Tasks that returned an error"},
    {"ternd_pool_rejected_total", TN_STAT_COUNTER, "Submits refused (overload or stopped)"},
    {"ternd_pool_cancelled_total", TN_STAT_COUNTER, "Queued tasks dropped by a release"},
};

static void pool_stats(struct tn_mod *m, struct tn_stats_out *out)
{
    struct pool_mod *pm = m->data;

    for (struct pool_named *n = pm->pools; n; n = n->next) {
        const char *labels[] = {"pool", pool_name(n->core), NULL};
        struct tn_pool_info i;
        double v[sizeof(pool_metrics) / sizeof(pool_metrics[0])];

        if (n->removed)
            continue;
        pool_info(n->core, &i);
        v[0] = (double)i.capacity;
        v[1] = (double)i.running;
        v[2] = (double)i.idle;
        v[3] = (double)i.waiting;
        v[4] = (double)i.submitted;
        v[5] = (double)i.completed;
        v[6] = (double)i.failed;
        v[7] = (double)i.rejected;
        v[8] = (double)i.cancelled;
        for (size_t k = 0; k < sizeof(v) / sizeof(v[0]); k++)
            tn_stats_emit(out, pool_metrics[k].name, pool_metrics[k].type, pool_metrics[k].help,
                          labels, v[k]);
    }
}

TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD("pool", TN_VERSION_STRING),
    NULL,
    pool_table,
    sizeof(struct pool_conf),
    pool_create_conf,
    pool_check_conf,
    pool_init,
    NULL,
    pool_stop,
    pool_fini,
    pool_reload,
    pool_stats,
};
