/*
 * discovery.h -- internals of the discovery module: the nsqlookupd
 * registration table (lookup_db.c), the service registry (services.c), the
 * TCP protocol V1 (proto_v1.c), the HTTP API (api_http.c), the Lua API
 * (api_lua.c) and the module glue (discovery.c). Loop thread only.
 */
#ifndef TERND_DISCOVERY_H
#define TERND_DISCOVERY_H

#include <ev.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <ternd/ternd.h>

#include "tn_discovery.h"

#define DISCOVERY_NAME_MAX 64      /* nsq topic/channel names */
#define DISCOVERY_SVC_NAME_MAX 128 /* service names and instance ids */
#define DISCOVERY_ADDRESS_MAX 255

/* ---- configuration (discovery.c) ------------------------------------------ */

struct discovery_services_conf {
    int64_t default_ttl;        /* ms, when a registration names none (30s) */
    int64_t min_ttl, max_ttl;   /* ms bounds of a requested TTL (1s, 1h) */
    int64_t max_instances;      /* instances over all names (10000) */
    uint64_t max_metadata_size; /* bytes of a metadata object as JSON (64KiB) */
    int64_t max_watchers;       /* pending HTTP long-polls (1024) */
    int64_t default_wait;       /* ms a watch waits without ?timeout= (30s) */
    int64_t max_wait;           /* ms cap on ?timeout= (5m) */
};

enum { DISCOVERY_BACKEND_EMBEDDED = 0, DISCOVERY_BACKEND_ETCD = 1 };

/* discovery.etcd: the shared registry (etcd.c). */
struct discovery_etcd_conf {
    struct tn_addr_list endpoints; /* etcd client addresses, tried in turn */
    unsigned char *https;          /* per endpoint: 1 when given as https:// (TLS) */
    struct tn_tls_client_conf tls; /* the client TLS settings for https endpoints */
    char *prefix;                  /* key prefix, ends in '/' (/ternd/) */
    int64_t lease_ttl;             /* ms; the lease is kept alive every third of it (10s) */
    int64_t dial_timeout;          /* ms for a connect or a request (2s) */
    int64_t sync_interval;         /* ms between publications of the nsq table (1s) */
};

struct discovery_conf {
    int backend;                /* DISCOVERY_BACKEND_* (embedded) */
    struct discovery_etcd_conf etcd;
    struct tn_addr tcp_listen;  /* 127.0.0.1:4160 */
    struct tn_addr http_listen; /* 127.0.0.1:4161 */
    char *broadcast_address;    /* told to producers; NULL: the hostname */
    char *nsq_version;          /* version in /info and IDENTIFY (1.3.0) */
    int64_t inactive_timeout;   /* ms without PING before a producer is hidden (300s) */
    int64_t tombstone_lifetime; /* ms a tombstone hides a producer (45s) */
    int64_t max_producers;      /* TCP producer connections (1024) */
    int64_t max_registrations;  /* topic + channel registrations (100000) */
    uint64_t max_identify_size; /* bytes of an IDENTIFY body (64KiB) */
    struct discovery_services_conf services;
    struct tn_lua_conf lua; /* optional script with on_change(name, index) */
};

/* ---- intrusive lists ---------------------------------------------------- */

/* Doubly linked lists of objects with `prev` and `next` members, held by a
 * head and a tail pointer: O(1) append and removal, creation order kept.
 * LINK puts e in the place its own prev/next name (both may be NULL). */
#define DISCOVERY_LIST_LINK(head, tail, e)                                                         \
    do {                                                                                           \
        if ((e)->prev)                                                                             \
            (e)->prev->next = (e);                                                                 \
        else                                                                                       \
            (head) = (e);                                                                          \
        if ((e)->next)                                                                             \
            (e)->next->prev = (e);                                                                 \
        else                                                                                       \
            (tail) = (e);                                                                          \
    } while (0)
#define DISCOVERY_LIST_APPEND(head, tail, e)                                                       \
    do {                                                                                           \
        (e)->prev = (tail);                                                                        \
        (e)->next = NULL;                                                                          \
        DISCOVERY_LIST_LINK(head, tail, e);                                                        \
    } while (0)
#define DISCOVERY_LIST_REMOVE(head, tail, e)                                                       \
    do {                                                                                           \
        if ((e)->prev)                                                                             \
            (e)->prev->next = (e)->next;                                                           \
        else                                                                                       \
            (head) = (e)->next;                                                                    \
        if ((e)->next)                                                                             \
            (e)->next->prev = (e)->prev;                                                           \
        else                                                                                       \
            (tail) = (e)->prev;                                                                    \
        (e)->prev = (e)->next = NULL;                                                              \
    } while (0)

/* ---- the nsqlookupd registration table (lookup_db.c) --------------------- */

/* A producer (nsqd/broker) as it identified itself. */
struct discovery_peer {
    char *id; /* unique key: remote address, or "local:N" */
    char *remote_address;
    char *hostname;
    char *broadcast_address;
    char *version;
    char *topology_zone; /* "" when not given */
    char *topology_region;
    int64_t tcp_port, http_port;
    int64_t last_update; /* ms of the IDENTIFY or last PING */
    int local;           /* in-process: never inactive */
    struct discovery_peer *next;
};

/* A peer's place in one registration, with its tombstone. */
struct discovery_producer {
    struct discovery_peer *peer;
    int tombstoned;
    int64_t tombstoned_at; /* ms */
};

enum { DISCOVERY_REG_TOPIC = 1, DISCOVERY_REG_CHANNEL = 2 };

/* A topic (channel "") or a channel of a topic, with its producers. Like
 * nsqlookupd, a registration outlives its producers (until deleted). */
struct discovery_reg {
    int kind;
    char *key;     /* the kind as a byte, the topic with its NUL, the channel */
    char *topic;   /* in key */
    char *channel; /* in key ("" for a topic) */
    struct discovery_producer *v;
    size_t n, cap;
    struct discovery_reg *next, *prev; /* creation order */
    struct tn_map_node by_key;         /* in db->by_key, key: key */
    struct tn_map_node by_topic;       /* channels only: in db->channels, key: topic */
};

struct discovery_lookup {
    struct discovery_reg *regs; /* in creation order */
    struct discovery_reg *last;
    size_t nregs;
    struct tn_map by_key;           /* (kind, topic, channel): REGISTER is O(1) */
    struct tn_map channels;         /* channel registrations by topic, oldest first */
    size_t max_regs;                /* 0: unlimited */
    struct discovery_peer *peers;   /* identified producers, in order */
    size_t npeers;
    uint64_t local_seq; /* for "local:N" ids */
};

void discovery_lookup_init(struct discovery_lookup *db, size_t max_regs);
void discovery_lookup_free(struct discovery_lookup *db);

/* nsq topic/channel names: [.a-zA-Z0-9_-]+ with an optional "#ephemeral",
 * 1..64 bytes in all. */
int discovery_name_valid(const char *s, size_t n);
int discovery_name_ephemeral(const char *s);

struct discovery_reg *discovery_reg_find(struct discovery_lookup *db, int kind, const char *topic,
                                         const char *channel);
/* The channel registrations of topic, oldest first:
 * for (r = discovery_channels(db, t); r; r = discovery_channels_next(r)) */
struct discovery_reg *discovery_channels(struct discovery_lookup *db, const char *topic);
struct discovery_reg *discovery_channels_next(struct discovery_reg *r);
/* Find or create. NULL with *err TN_ELIMIT or TN_ENOMEM. */
struct discovery_reg *discovery_reg_add(struct discovery_lookup *db, int kind, const char *topic,
                                        const char *channel, int *err);
void discovery_reg_remove(struct discovery_lookup *db, struct discovery_reg *r);
/* 1 added, 0 already there, TN_ENOMEM. */
int discovery_reg_add_producer(struct discovery_reg *r, struct discovery_peer *p);
/* 1 removed, 0 was not there; *left (may be NULL) gets the producers left. */
int discovery_reg_remove_producer(struct discovery_reg *r, struct discovery_peer *p, size_t *left);
struct discovery_producer *discovery_reg_producer(struct discovery_reg *r,
                                                  const struct discovery_peer *p);

/* Peers: new (all strings copied; NULL ones become ""), add to the table
 * of identified producers, remove (from every registration too, dropping
 * #ephemeral ones left empty) and free. */
struct discovery_peer *discovery_peer_new(const char *id, const char *remote, const char *hostname,
                                          const char *broadcast, const char *version,
                                          const char *zone, const char *region, int64_t tcp_port,
                                          int64_t http_port);
void discovery_peer_add(struct discovery_lookup *db, struct discovery_peer *p);
void discovery_peer_remove(struct discovery_lookup *db, struct discovery_peer *p);
void discovery_peer_free(struct discovery_peer *p);

/* REGISTER / UNREGISTER as nsqlookupd does them (topic, or channel and its
 * topic; unregistering a topic drops the peer from its channels as well;
 * #ephemeral topics and channels left without producers are removed).
 * channel may be NULL or "". 0, TN_ELIMIT, TN_ENOMEM. */
int discovery_lookup_register(struct discovery_lookup *db, struct discovery_peer *p,
                              const char *topic, const char *channel);
void discovery_lookup_unregister(struct discovery_lookup *db, struct discovery_peer *p,
                                 const char *topic, const char *channel);

/* Is the producer shown by /lookup: pinged within inactive ms (local peers
 * always) and not under a tombstone younger than lifetime ms? */
int discovery_peer_active(const struct discovery_peer *p, int64_t now, int64_t inactive);
int discovery_producer_tombstoned(const struct discovery_producer *pr, int64_t now,
                                  int64_t lifetime);
/* Tombstone the producers of topic whose broadcast_address:http_port is
 * node. Returns how many. */
size_t discovery_tombstone(struct discovery_lookup *db, const char *topic, const char *node,
                           int64_t now);
/* Delete a topic with its channels / one channel. 0 or TN_ENOTFOUND. */
int discovery_topic_delete(struct discovery_lookup *db, const char *topic);
int discovery_channel_delete(struct discovery_lookup *db, const char *topic, const char *channel);

/* ---- the service registry (services.c) ----------------------------------- */

struct discovery_instance {
    char *key;  /* name, NUL, id (the key in reg->instances) */
    char *name; /* in key */
    char *id;   /* in key */
    char *address;
    json_t *metadata;    /* an object (owned reference) */
    char *metadata_text; /* the same as compact JSON with sorted keys */
    int64_t weight;
    int state;       /* TN_DISCOVERY_* */
    int remote;      /* learnt from etcd (another host's): never published */
    int64_t ttl;     /* ms; -1: never expires */
    int64_t expires; /* ms; meaningful when ttl >= 0 */
    uint64_t create_index;
    uint64_t modify_index;
    struct discovery_instance *next, *prev; /* registration order within its name */
    struct tn_map_node by_key;              /* in reg->instances, key: key */
};

/* All instances of one name; kept while it has instances. */
struct discovery_service {
    char *name;
    uint64_t index; /* registry index of its last change */
    struct discovery_instance *head, *tail;
    size_t n;
    struct discovery_service *next, *prev; /* creation order */
    struct tn_map_node by_name;            /* in reg->by_name, key: name */
};

/* Called after the set of a name changed (index: that change). */
typedef void (*discovery_change_pt)(const char *name, uint64_t index, void *ud);

struct discovery_registry {
    struct discovery_service *services; /* in creation order */
    struct discovery_service *last;
    struct tn_map by_name;           /* services by name */
    struct tn_map instances;         /* instances by (name, id) */
    size_t ninstances;
    uint64_t index;                             /* bumped by every change */
    const struct discovery_services_conf *conf; /* limits and TTL bounds */
    discovery_change_pt on_change;
    void *ud;
    uint64_t expired; /* instances dropped by their TTL */
};

/* An instance to register, as parsed (strings are borrowed). */
struct discovery_instance_spec {
    const char *name, *id, *address;
    json_t *metadata; /* borrowed; NULL: {} */
    int64_t weight;   /* negative: 1 */
    int state;
    int64_t ttl; /* ms; 0: default, -1: never */
    int remote;  /* another host's, from etcd */
};

void discovery_registry_init(struct discovery_registry *reg,
                             const struct discovery_services_conf *conf,
                             discovery_change_pt on_change, void *ud);
void discovery_registry_free(struct discovery_registry *reg);

int discovery_svc_name_valid(const char *s);
int discovery_instance_id_valid(const char *s);
/* "up" / "down" / "draining" and back; -1 when unknown. */
int discovery_state_parse(const char *s);
const char *discovery_state_name(int state);

/* Add or replace an instance; *changed (may be NULL) tells whether the set
 * changed (a re-registration with equal fields only restarts the TTL).
 * 0, TN_EINVAL (with *why set), TN_ELIMIT, TN_ETOOBIG, TN_ENOMEM. */
int discovery_registry_put(struct discovery_registry *reg,
                           const struct discovery_instance_spec *spec, int64_t now, int *changed,
                           const char **why);
int discovery_registry_delete(struct discovery_registry *reg, const char *name, const char *id);
/* Restart the TTL; state >= 0 also sets the state (a change if it
 * differs). 0 or TN_ENOTFOUND. */
int discovery_registry_heartbeat(struct discovery_registry *reg, const char *name, const char *id,
                                 int state, int64_t now);
struct discovery_service *discovery_registry_find(struct discovery_registry *reg, const char *name);
struct discovery_instance *discovery_registry_instance(struct discovery_registry *reg,
                                                       const char *name, const char *id);
/* The index a watcher of name compares with: the name's last change, or
 * the registry's index when the name has no instances (so a watcher that
 * saw it before it emptied wakes at once). name NULL: the registry's. */
uint64_t discovery_registry_name_index(struct discovery_registry *reg, const char *name);
/* Drop instances whose TTL ran out by now. Returns how many. */
size_t discovery_registry_expire(struct discovery_registry *reg, int64_t now);
/* The earliest expiry (ms), or -1 when nothing expires. */
int64_t discovery_registry_next_expiry(const struct discovery_registry *reg);

/* ---- the module (discovery.c) --------------------------------------------- */

struct discovery_watcher;
struct discovery_etcd;
struct discovery_proto_conn;
struct discovery_cwatch;

struct discovery {
    struct tn_mod *mod;
    struct discovery_lookup db;
    struct discovery_registry reg;
    struct tn_listener *tcp;
    struct tn_http_server *http;
    struct tn_lua *lua;
    ev_timer expiry;                                    /* next TTL expiry of the registry */
    int64_t expiry_at;                                  /* ms the timer is armed for */
    int64_t last_sweep;                                 /* ms of the last expiry pass */
    struct discovery_proto_conn *conns, *conns_last;    /* open TCP V1 connections */
    struct discovery_watcher *watchers, *watchers_last; /* pending HTTP long-polls */
    size_t nwatchers;
    struct discovery_cwatch *cwatches; /* watches of the C service */
    int tcp_port, http_port;           /* bound ports (IDENTIFY reply) */
    struct discovery_etcd *etcd;       /* backend etcd: the shared registry client */
    int64_t started_ms;
};

static inline struct discovery_conf *discovery_conf(struct discovery *d)
{
    return d->mod->conf;
}

/* The running instance, or NULL (the C service and Lua use it). */
struct discovery *discovery_current(void);
/* The expiry timer: recompute from every instance (after a sweep, a
 * reload); or make sure it fires by `at` (cheap; after a registration).
 * Deletes and heartbeats need neither: they never make an expiry earlier. */
void discovery_schedule_expiry(struct discovery *d);
void discovery_expiry_due(struct discovery *d, int64_t at);
/* After a registration of name/id: arm the timer for its expiry. */
void discovery_instance_put(struct discovery *d, const char *name, const char *id);
/* "broadcast_address" for IDENTIFY replies (configured or the hostname). */
const char *discovery_broadcast_address(struct discovery *d);

/* proto_v1.c */
int discovery_proto_accept(struct tn_listener *l, struct tn_conn *c, void *ud);
void discovery_proto_close_all(struct discovery *d);

/* api_http.c */
int discovery_http_routes(struct discovery *d);
void discovery_http_wake(struct discovery *d, const char *name);
void discovery_http_finish_all(struct discovery *d);
/* JSON of one instance (a new reference). */
json_t *discovery_instance_json(const struct discovery_instance *in, int64_t now);

/* api_lua.c */
int discovery_lua_open(lua_State *L, void *ud);
void discovery_lua_on_change(struct discovery *d, const char *name, uint64_t index);

/* etcd.c: the etcd backend. Local registrations are published under
 * etcd.prefix with one lease per process; a watch on the prefix feeds the
 * other hosts' entries into the local tables (marked remote). */
int discovery_etcd_start(struct discovery *d);
void discovery_etcd_stop(struct discovery *d);
/* Reload: connections opened from now on use the new tls settings. */
void discovery_etcd_reload(struct discovery *d);
/* The registry changed: publish soon. */
void discovery_etcd_changed(struct discovery *d);
/* Is the peer another host's (from etcd)? */
int discovery_peer_remote(const struct discovery_peer *p);

/* service.c */
extern const struct tn_discovery_service discovery_service_api;
void discovery_cwatch_notify(struct discovery *d, const char *name, uint64_t index);
void discovery_cwatch_free_all(struct discovery *d);

#endif
