/*
 * dscclient.c -- a test module using the discovery module's C service
 * (tn_discovery.h) the way the broker or the gateway would: at start it
 * registers an in-process producer (topic, channel) and a service instance
 * that never expires, and watches a service name, logging each change with
 * a lookup of that name. At stop it undoes all of it. Built only for
 * `make check`.
 */
#include <stdio.h>
#include <string.h>
#include <ternd/ternd.h>

#include "tn_discovery.h"

#define WHO "dscclient"

struct dscclient_conf {
    char *watch;   /* service name to watch */
    char *topic;   /* nsq topic the in-process producer registers */
    char *channel; /* and its channel */
};

struct dscclient {
    const struct tn_discovery_service *svc;
    struct tn_discovery_producer *producer;
    void *watch;
};

static struct dscclient state;

static const struct tn_conf_cmd dscclient_table[] = {
    {"watch", TN_CONF_STRING, offsetof(struct dscclient_conf, watch), NULL, NULL, NULL},
    {"topic", TN_CONF_STRING, offsetof(struct dscclient_conf, topic), NULL, NULL, NULL},
    {"channel", TN_CONF_STRING, offsetof(struct dscclient_conf, channel), NULL, NULL, NULL},
    TN_CONF_END};

static const char *const dscclient_deps[] = {"discovery", NULL};

static int dscclient_create_conf(struct tn_mod *m, void *conf)
{
    struct dscclient_conf *c = conf;

    c->watch = "gw";
    c->topic = "inproc";
    c->channel = "worker";
    return 0;
}

struct listing {
    char text[1024];
    size_t len;
};

static void each(const struct tn_discovery_instance *in, void *ud)
{
    struct listing *l = ud;
    int n = snprintf(l->text + l->len, sizeof(l->text) - l->len, "%s%s=%s(w%lld,s%d,%s)",
                     l->len ? "," : "", in->id, in->address, (long long)in->weight, in->state,
                     in->metadata);

    if (n > 0 && (size_t)n < sizeof(l->text) - l->len)
        l->len += (size_t)n;
}

static void on_change(const char *name, uint64_t index, void *ud)
{
    struct dscclient *s = ud;
    struct listing l = {"", 0};
    uint64_t idx = 0;
    long n = s->svc->lookup(name, each, &l, &idx);

    tn_log_info(WHO, "change %s index %llu lookup %ld at %llu [%s]", name,
                (unsigned long long)index, n, (unsigned long long)idx, l.text);
}

static int dscclient_start(struct tn_mod *m)
{
    struct dscclient_conf *c = m->conf;
    struct tn_discovery_producer_info info = {"10.9.9.9", "inproc-host", "1.3.0", NULL,
                                              NULL,       4150,          4151};
    struct tn_discovery_instance self = {
        "dscclient", "one", "127.0.0.1:1", "{\"routes\":[\"a\"]}", 3, TN_DISCOVERY_UP, -1, 0};
    int rc;

    state.svc = tn_service_lookup(TN_DISCOVERY_SERVICE);
    if (!state.svc || state.svc->size < sizeof(*state.svc)) {
        tn_log_error(WHO, "no discovery.registry service");
        return TN_EMODULE;
    }
    if (!(state.producer = state.svc->register_producer(&info)))
        return TN_EMODULE;
    if ((rc = state.svc->producer_register(state.producer, c->topic, c->channel)) != 0)
        return rc;
    /* a bad name is refused, as REGISTER would refuse it */
    if (state.svc->producer_register(state.producer, "bad topic", NULL) != TN_EINVAL)
        return TN_EMODULE;
    if ((rc = state.svc->register_instance(&self)) != 0)
        return rc;
    self.id = "bad id";
    if (state.svc->register_instance(&self) != TN_EINVAL)
        return TN_EMODULE;
    if (!(state.watch = state.svc->watch(c->watch, on_change, &state)))
        return TN_ENOMEM;
    tn_log_info(WHO, "started: heartbeat %d, unknown heartbeat %d",
                state.svc->heartbeat("dscclient", "one"),
                state.svc->heartbeat("dscclient", "nope") == TN_ENOTFOUND);
    return 0;
}

static int dscclient_stop(struct tn_mod *m)
{
    struct dscclient_conf *c = m->conf;

    if (!state.svc)
        return 0;
    if (state.watch)
        state.svc->unwatch(state.watch);
    if (state.producer) {
        state.svc->producer_unregister(state.producer, c->topic, c->channel);
        state.svc->unregister_producer(state.producer);
    }
    state.svc->deregister("dscclient", "one");
    tn_log_info(WHO, "stopped");
    memset(&state, 0, sizeof(state));
    return 0;
}

TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD("dscclient", "1.0"),
    dscclient_deps,
    dscclient_table,
    sizeof(struct dscclient_conf),
    dscclient_create_conf,
    NULL,
    NULL,
    dscclient_start,
    dscclient_stop,
    NULL,
    NULL,
    NULL,
};
