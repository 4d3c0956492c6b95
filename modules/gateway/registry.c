/*
 * registry.c -- where the instances of a node service come from: the
 * static `nodes:` of the config, then the discovery module's service
 * registry (looked up by name through service.h at each forward, so the
 * gateway needs neither a link to discovery.so nor a load order). The
 * discovery part compiles when its public header, tn_discovery.h, is in
 * the tree.
 */
#include <string.h>

#include "gateway.h"

#if defined(__has_include)
#if __has_include("tn_discovery.h")
#include "tn_discovery.h"
#define GW_HAVE_DISCOVERY 1
#endif
#endif

static long static_lookup(struct gw *gw, const char *service, gw_instance_pt fn, void *arg)
{
    for (size_t i = 0; i < gw->conf->nnodes; i++) {
        const struct gw_node_conf *nc = &gw->conf->nodes[i];
        if (strcmp(nc->name, service) != 0)
            continue;
        for (size_t j = 0; j < nc->n; j++)
            fn(nc->v[j].addr.text, nc->v[j].weight, arg);
        return (long)nc->n;
    }
    return -1; /* not a static node service */
}

#ifdef GW_HAVE_DISCOVERY
struct disc_each {
    gw_instance_pt fn;
    void *arg;
    long n;
};

/* Instances that are up, with a host:port address. */
static void disc_instance(const struct tn_discovery_instance *in, void *ud)
{
    struct disc_each *de = ud;

    if (in->state != TN_DISCOVERY_UP || !in->address || strstr(in->address, "://"))
        return;
    de->fn(in->address, in->weight, de->arg);
    de->n++;
}

static long discovery_lookup(const char *service, gw_instance_pt fn, void *arg)
{
    const struct tn_discovery_service *d = tn_service_lookup(TN_DISCOVERY_SERVICE);
    struct disc_each de = {fn, arg, 0};

    if (!d || d->size < sizeof(*d) || !d->lookup)
        return 0;
    d->lookup(service, disc_instance, &de, NULL);
    return de.n;
}
#else
static long discovery_lookup(const char *service, gw_instance_pt fn, void *arg)
{
    return 0; /* built without the discovery module's header */
}
#endif

static long default_lookup(struct gw *gw, const char *service, gw_instance_pt fn, void *arg)
{
    long n = static_lookup(gw, service, fn, arg);

    return n >= 0 ? n : discovery_lookup(service, fn, arg);
}

const struct gw_registry gw_default_registry = {"static+discovery", default_lookup};
