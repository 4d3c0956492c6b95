/*
 * tn_discovery.h -- the discovery module's service, for other modules and
 * plugins (installed as <ternd/tn_discovery.h>). Look it up by name, never
 * link to discovery.so:
 *
 *     const struct tn_discovery_service *d = tn_service_lookup(TN_DISCOVERY_SERVICE);
 *     if (d && d->size >= sizeof(*d)) d->lookup("gateway", each_instance, ud, NULL);
 *
 * Two registries live behind it: named service instances (gateway nodes,
 * anything with an address) with a TTL, and the nsqlookupd table of
 * brokers and their topics, so that a broker in the same process can
 * register without a TCP connection to itself. The pointer is valid while
 * the discovery module is started (registered in start, removed in stop):
 * a module using it either lists "discovery" in its deps (it then starts
 * after and stops before discovery), or looks it up in its start and
 * follows TN_SERVICE_UP_EVENT / TN_SERVICE_DOWN_EVENT (service.h), as the
 * broker does, letting go of everything it holds on service.down.
 * Strings passed in are copied; strings handed to callbacks are valid only
 * during the call. Loop thread only.
 */
#ifndef TERND_TN_DISCOVERY_H
#define TERND_TN_DISCOVERY_H

#include <stddef.h>
#include <stdint.h>

#define TN_DISCOVERY_SERVICE "discovery.registry"

/* Instance states: lookups return every state; callers pick. */
enum { TN_DISCOVERY_UP = 0, TN_DISCOVERY_DOWN = 1, TN_DISCOVERY_DRAINING = 2 };

struct tn_discovery_instance {
    const char *name;     /* service name: [A-Za-z0-9._-], 1..128 */
    const char *id;       /* unique within the name: printable, no spaces, 1..128 */
    const char *address;  /* "host:port" or a URL; up to 255 bytes */
    const char *metadata; /* a JSON object as text (e.g. routes served); NULL: {} */
    int64_t weight;       /* 0..1000000; register: negative means the default (1) */
    int state;            /* TN_DISCOVERY_* */
    int64_t ttl_ms;       /* register: 0 the configured default, -1 never expires;
                             lookup: the TTL in force (-1: none) */
    uint64_t index;       /* lookup: registry index of the last change to it */
};

/* Called once per instance by lookup, in registration order. */
typedef void (*tn_discovery_each_pt)(const struct tn_discovery_instance *in, void *ud);
/* Called after the instance set of `name` changed (registered, changed,
 * deregistered or expired) with the registry index of that change. It runs
 * in the middle of that change (an expiry pass may report several): it may
 * look up, but must not register, deregister or heartbeat; defer such work
 * to a timer. */
typedef void (*tn_discovery_watch_pt)(const char *name, uint64_t index, void *ud);

/* What a broker announces about itself (the IDENTIFY body of nsqlookupd). */
struct tn_discovery_producer_info {
    const char *broadcast_address; /* required */
    const char *hostname;          /* NULL: broadcast_address */
    const char *version;           /* required */
    const char *topology_zone;     /* may be NULL */
    const char *topology_region;   /* may be NULL */
    int tcp_port, http_port;       /* required, 1..65535 */
};

struct tn_discovery_producer;

struct tn_discovery_service {
    uint32_t size; /* sizeof(struct tn_discovery_service); new fields go at the end */

    /* Add or replace (same name and id) an instance and start its TTL.
     * 0, TN_EINVAL (bad field), TN_ELIMIT (services.max_instances),
     * TN_ETOOBIG (metadata over services.max_metadata_size), TN_ENOMEM. */
    int (*register_instance)(const struct tn_discovery_instance *in);
    /* 0 or TN_ENOTFOUND. */
    int (*deregister)(const char *name, const char *id);
    /* Restart the TTL. 0 or TN_ENOTFOUND (expired: register again). */
    int (*heartbeat)(const char *name, const char *id);
    /* fn for each instance of name (may be NULL to count); returns the
     * number of instances; *index (may be NULL) gets the name's index. */
    long (*lookup)(const char *name, tn_discovery_each_pt fn, void *ud, uint64_t *index);
    /* fn after every change of name (NULL: of any name). Returns a handle
     * for unwatch, or NULL when out of memory. Unwatch before ud goes. */
    void *(*watch)(const char *name, tn_discovery_watch_pt fn, void *ud);
    void (*unwatch)(void *handle);

    /* nsqlookupd side, for a broker in this process: the equivalent of
     * IDENTIFY, REGISTER, UNREGISTER and closing the connection. An
     * in-process producer never goes inactive. register_producer returns
     * NULL on a bad field (missing address/version, port out of range) or
     * out of memory. topic/channel: nsq names; channel NULL for the topic
     * alone. 0, TN_EINVAL (bad name), TN_ELIMIT (max_registrations),
     * TN_ENOMEM. */
    struct tn_discovery_producer *(*register_producer)(
        const struct tn_discovery_producer_info *info);
    int (*producer_register)(struct tn_discovery_producer *p, const char *topic,
                             const char *channel);
    int (*producer_unregister)(struct tn_discovery_producer *p, const char *topic,
                               const char *channel);
    void (*unregister_producer)(struct tn_discovery_producer *p);

    /* The bound address of discovery.tcp_listen ("127.0.0.1:4160"), NULL
     * when it is off: a broker skips a TCP registration with itself. */
    const char *(*tcp_address)(void);
};

#endif
