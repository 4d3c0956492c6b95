/*
 * service.c -- the "discovery.registry" service (tn_discovery.h) other
 * modules call in-process: the service registry (register, deregister,
 * heartbeat, lookup, watch) and the nsqlookupd table for a broker in the
 * same process (the equivalent of IDENTIFY/REGISTER/UNREGISTER).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery.h"

#define WHO "discovery"

struct discovery_cwatch {
    char *name; /* NULL: any */
    tn_discovery_watch_pt fn;
    void *ud;
    struct discovery_cwatch *next;
};

/* An in-process producer: a peer without a connection. */
struct tn_discovery_producer {
    struct discovery_peer *peer;
};

static int svc_register(const struct tn_discovery_instance *in)
{
    struct discovery *d = discovery_current();
    struct discovery_instance_spec sp;
    json_error_t jerr;
    const char *why;
    int rc;

    if (!d)
        return TN_ESTOPPED;
    memset(&sp, 0, sizeof(sp));
    sp.name = in->name;
    sp.id = in->id;
    sp.address = in->address;
    sp.weight = in->weight;
    sp.state = in->state;
    sp.ttl = in->ttl_ms;
    if (in->metadata && !(sp.metadata = json_loads(in->metadata, 0, &jerr)))
        return TN_EINVAL;
    rc = discovery_registry_put(&d->reg, &sp, tn_now_ms(), NULL, &why);
    if (sp.metadata)
        json_decref(sp.metadata);
    if (rc != 0)
        tn_log_debug(WHO, "in-process register of %s/%s refused: %s", in->name ? in->name : "?",
                     in->id ? in->id : "?", why);
    else
        discovery_instance_put(d, in->name, in->id);
    return rc;
}

static int svc_deregister(const char *name, const char *id)
{
    struct discovery *d = discovery_current();
    return d ? discovery_registry_delete(&d->reg, name, id) : TN_ESTOPPED;
}

static int svc_heartbeat(const char *name, const char *id)
{
    struct discovery *d = discovery_current();
    return d ? discovery_registry_heartbeat(&d->reg, name, id, -1, tn_now_ms()) : TN_ESTOPPED;
}

static long svc_lookup(const char *name, tn_discovery_each_pt fn, void *ud, uint64_t *index)
{
    struct discovery *d = discovery_current();
    struct discovery_service *s;

    if (!d)
        return TN_ESTOPPED;
    s = discovery_registry_find(&d->reg, name);
    if (index)
        *index = discovery_registry_name_index(&d->reg, name);
    for (struct discovery_instance *in = s && fn ? s->head : NULL; in; in = in->next) {
        struct tn_discovery_instance out = {in->name,   in->id,    in->address, in->metadata_text,
                                            in->weight, in->state, in->ttl,     in->modify_index};
        fn(&out, ud);
    }
    return s ? (long)s->n : 0;
}

static void *svc_watch(const char *name, tn_discovery_watch_pt fn, void *ud)
{
    struct discovery *d = discovery_current();
    struct discovery_cwatch *w;

    if (!d || !fn || !(w = calloc(1, sizeof(*w))))
        return NULL;
    if (name && !(w->name = strdup(name))) {
        free(w);
        return NULL;
    }
    w->fn = fn;
    w->ud = ud;
    w->next = d->cwatches;
    d->cwatches = w;
    return w;
}

static void svc_unwatch(void *handle)
{
    struct discovery *d = discovery_current();

    for (struct discovery_cwatch **pp = d ? &d->cwatches : NULL; pp && *pp; pp = &(*pp)->next) {
        if (*pp == handle) {
            struct discovery_cwatch *w = *pp;
            *pp = w->next;
            free(w->name);
            free(w);
            return;
        }
    }
}

void discovery_cwatch_notify(struct discovery *d, const char *name, uint64_t index)
{
    struct discovery_cwatch *w, *next;

    /* a callback may unwatch itself: take next first */
    for (w = d->cwatches; w; w = next) {
        next = w->next;
        if (!w->name || strcmp(w->name, name) == 0)
            w->fn(name, index, w->ud);
    }
}

void discovery_cwatch_free_all(struct discovery *d)
{
    while (d->cwatches) {
        struct discovery_cwatch *w = d->cwatches;
        d->cwatches = w->next;
        free(w->name);
        free(w);
    }
}

/* ---- in-process producers ---------------------------------------------------- */

static struct tn_discovery_producer *
svc_register_producer(const struct tn_discovery_producer_info *info)
{
    struct discovery *d = discovery_current();
    struct tn_discovery_producer *p;
    struct discovery_peer *peer;
    char id[64];

    if (!d || !info->broadcast_address || !*info->broadcast_address || !info->version ||
        !*info->version || info->tcp_port < 1 || info->tcp_port > 65535 || info->http_port < 1 ||
        info->http_port > 65535)
        return NULL;
    snprintf(id, sizeof(id), "local:%llu", (unsigned long long)++d->db.local_seq);
    peer = discovery_peer_new(id, id, info->hostname ? info->hostname : info->broadcast_address,
                              info->broadcast_address, info->version, info->topology_zone,
                              info->topology_region, info->tcp_port, info->http_port);
    if (!peer || !(p = calloc(1, sizeof(*p)))) {
        discovery_peer_free(peer);
        return NULL;
    }
    p->peer = peer;
    peer->local = 1;
    peer->last_update = tn_now_ms();
    discovery_peer_add(&d->db, peer);
    tn_log_info(WHO, "in-process producer %s:%d registered", info->broadcast_address,
                info->tcp_port);
    return p;
}

static int producer_args(struct tn_discovery_producer *p, const char *topic, const char *channel)
{
    if (!p || !topic || !discovery_name_valid(topic, strlen(topic)))
        return TN_EINVAL;
    if (channel && *channel && !discovery_name_valid(channel, strlen(channel)))
        return TN_EINVAL;
    return discovery_current() ? 0 : TN_ESTOPPED;
}

static int svc_producer_register(struct tn_discovery_producer *p, const char *topic,
                                 const char *channel)
{
    int rc = producer_args(p, topic, channel);
    return rc ? rc : discovery_lookup_register(&discovery_current()->db, p->peer, topic, channel);
}

static int svc_producer_unregister(struct tn_discovery_producer *p, const char *topic,
                                   const char *channel)
{
    int rc = producer_args(p, topic, channel);

    if (rc == 0)
        discovery_lookup_unregister(&discovery_current()->db, p->peer, topic, channel);
    return rc;
}

static void svc_unregister_producer(struct tn_discovery_producer *p)
{
    struct discovery *d = discovery_current();

    if (!p)
        return;
    if (d)
        discovery_peer_remove(&d->db, p->peer);
    discovery_peer_free(p->peer);
    free(p);
}

static const char *svc_tcp_address(void)
{
    struct discovery *d = discovery_current();
    return d && d->tcp ? tn_listener_addr(d->tcp) : NULL;
}

const struct tn_discovery_service discovery_service_api = {
    sizeof(struct tn_discovery_service),
    svc_register,
    svc_deregister,
    svc_heartbeat,
    svc_lookup,
    svc_watch,
    svc_unwatch,
    svc_register_producer,
    svc_producer_register,
    svc_producer_unregister,
    svc_unregister_producer,
    svc_tcp_address,
};
