/*
 * lookup_db.c -- the nsqlookupd registration table: which producers
 * (brokers) serve which topics and channels, with tombstones. Pure data, no
 * I/O and no clock of its own (times are passed in), so it is unit-tested
 * directly. Lists are kept in creation order so answers are stable.
 */
#include <stdlib.h>
#include <string.h>

#include "discovery.h"

static char *dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

void discovery_lookup_init(struct discovery_lookup *db, size_t max_regs)
{
    memset(db, 0, sizeof(*db));
    db->max_regs = max_regs;
}

static void reg_free(struct discovery_reg *r)
{
    free(r->key);
    free(r->v);
    free(r);
}

/* Peers belong to their connection (or in-process producer), not to the
 * table: only the registrations are freed here. */
void discovery_lookup_free(struct discovery_lookup *db)
{
    struct discovery_reg *r, *next;

    for (r = db->regs; r; r = next) {
        next = r->next;
        reg_free(r);
    }
    tn_map_free(&db->by_key);
    tn_map_free(&db->channels);
    db->regs = db->last = NULL;
    db->nregs = 0;
    db->peers = NULL;
    db->npeers = 0;
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

int discovery_name_valid(const char *s, size_t n)
{
    static const char eph[] = "#ephemeral";
    size_t base = n;

    if (n < 1 || n > DISCOVERY_NAME_MAX)
        return 0;
    if (n > sizeof(eph) - 1 && memcmp(s + n - (sizeof(eph) - 1), eph, sizeof(eph) - 1) == 0)
        base = n - (sizeof(eph) - 1);
    for (size_t i = 0; i < base; i++)
        if (!name_char(s[i]))
            return 0;
    return 1;
}

int discovery_name_ephemeral(const char *s)
{
    size_t n = strlen(s);
    return n > 10 && strcmp(s + n - 10, "#ephemeral") == 0;
}

/* A registration's key is its kind (one byte: DISCOVERY_REG_*), the topic
 * with its NUL, then the channel: a topic has no NUL, so no two keys of
 * different (kind, topic, channel) are equal. */
struct discovery_reg *discovery_reg_find(struct discovery_lookup *db, int kind, const char *topic,
                                         const char *channel)
{
    unsigned char k = (unsigned char)kind;
    struct tn_map_part key[3] = {{&k, 1}, {topic, strlen(topic) + 1}, {channel, 0}};

    if (!channel)
        key[2].p = "";
    key[2].n = strlen(key[2].p);
    return TN_MAP_ENTRY_OR_NULL(tn_map_findv(&db->by_key, key, 3), struct discovery_reg, by_key);
}

struct discovery_reg *discovery_channels(struct discovery_lookup *db, const char *topic)
{
    return TN_MAP_ENTRY_OR_NULL(tn_map_find_str(&db->channels, topic), struct discovery_reg,
                                by_topic);
}

struct discovery_reg *discovery_channels_next(struct discovery_reg *r)
{
    return TN_MAP_ENTRY_OR_NULL(tn_map_find_next(&r->by_topic), struct discovery_reg, by_topic);
}

/* r->key for kind, topic, channel (or ""), with topic and channel in it. */
static int reg_key(struct discovery_reg *r, int kind, const char *topic, const char *channel,
                   size_t *klen)
{
    size_t tl = strlen(topic), cl = channel ? strlen(channel) : 0;

    if (!(r->key = malloc(1 + tl + 1 + cl + 1)))
        return TN_ENOMEM;
    r->kind = kind;
    r->key[0] = (char)kind;
    r->topic = r->key + 1;
    memcpy(r->topic, topic, tl + 1);
    r->channel = r->topic + tl + 1;
    memcpy(r->channel, channel ? channel : "", cl + 1);
    *klen = 1 + tl + 1 + cl;
    return 0;
}

struct discovery_reg *discovery_reg_add(struct discovery_lookup *db, int kind, const char *topic,
                                        const char *channel, int *err)
{
    struct discovery_reg *r = discovery_reg_find(db, kind, topic, channel);
    size_t klen;

    if (r)
        return r;
    if (db->max_regs && db->nregs >= db->max_regs) {
        *err = TN_ELIMIT;
        return NULL;
    }
    r = calloc(1, sizeof(*r));
    if (!r || reg_key(r, kind, topic, channel, &klen) != 0 ||
        tn_map_insert(&db->by_key, &r->by_key, r->key, klen) != 0)
        goto oom;
    if (kind == DISCOVERY_REG_CHANNEL &&
        tn_map_insert(&db->channels, &r->by_topic, r->topic, strlen(r->topic)) != 0) {
        tn_map_remove(&db->by_key, &r->by_key);
        goto oom;
    }
    DISCOVERY_LIST_APPEND(db->regs, db->last, r);
    db->nregs++;
    return r;
oom:
    if (r)
        reg_free(r);
    *err = TN_ENOMEM;
    return NULL;
}

void discovery_reg_remove(struct discovery_lookup *db, struct discovery_reg *r)
{
    tn_map_remove(&db->by_key, &r->by_key);
    if (r->kind == DISCOVERY_REG_CHANNEL)
        tn_map_remove(&db->channels, &r->by_topic);
    DISCOVERY_LIST_REMOVE(db->regs, db->last, r);
    db->nregs--;
    reg_free(r);
}

struct discovery_producer *discovery_reg_producer(struct discovery_reg *r,
                                                  const struct discovery_peer *p)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->v[i].peer == p)
            return &r->v[i];
    return NULL;
}

int discovery_reg_add_producer(struct discovery_reg *r, struct discovery_peer *p)
{
    if (discovery_reg_producer(r, p))
        return 0;
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 4;
        struct discovery_producer *v = realloc(r->v, cap * sizeof(*v));
        if (!v)
            return TN_ENOMEM;
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n++] = (struct discovery_producer){p, 0, 0};
    return 1;
}

int discovery_reg_remove_producer(struct discovery_reg *r, struct discovery_peer *p, size_t *left)
{
    struct discovery_producer *pr = discovery_reg_producer(r, p);

    if (pr) {
        /* keep the order of the others */
        memmove(pr, pr + 1, (size_t)(r->v + r->n - (pr + 1)) * sizeof(*pr));
        r->n--;
    }
    if (left)
        *left = r->n;
    return pr != NULL;
}

struct discovery_peer *discovery_peer_new(const char *id, const char *remote, const char *hostname,
                                          const char *broadcast, const char *version,
                                          const char *zone, const char *region, int64_t tcp_port,
                                          int64_t http_port)
{
    struct discovery_peer *p = calloc(1, sizeof(*p));

    if (!p)
        return NULL;
    p->id = dup_or_empty(id);
    p->remote_address = dup_or_empty(remote);
    p->hostname = dup_or_empty(hostname);
    p->broadcast_address = dup_or_empty(broadcast);
    p->version = dup_or_empty(version);
    p->topology_zone = dup_or_empty(zone);
    p->topology_region = dup_or_empty(region);
    p->tcp_port = tcp_port;
    p->http_port = http_port;
    if (!p->id || !p->remote_address || !p->hostname || !p->broadcast_address || !p->version ||
        !p->topology_zone || !p->topology_region) {
        discovery_peer_free(p);
        return NULL;
    }
    return p;
}

void discovery_peer_free(struct discovery_peer *p)
{
    if (!p)
        return;
    free(p->id);
    free(p->remote_address);
    free(p->hostname);
    free(p->broadcast_address);
    free(p->version);
    free(p->topology_zone);
    free(p->topology_region);
    free(p);
}

void discovery_peer_add(struct discovery_lookup *db, struct discovery_peer *p)
{
    struct discovery_peer **tail;

    for (tail = &db->peers; *tail; tail = &(*tail)->next)
        if (*tail == p)
            return;
    p->next = NULL;
    *tail = p;
    db->npeers++;
}

void discovery_peer_remove(struct discovery_lookup *db, struct discovery_peer *p)
{
    struct discovery_reg *r, *next;
    size_t left;

    for (r = db->regs; r; r = next) {
        next = r->next;
        if (discovery_reg_remove_producer(r, p, &left) && left == 0 &&
            discovery_name_ephemeral(r->kind == DISCOVERY_REG_CHANNEL ? r->channel : r->topic))
            discovery_reg_remove(db, r);
    }
    for (struct discovery_peer **pp = &db->peers; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            db->npeers--;
            break;
        }
    }
    p->next = NULL;
}

int discovery_lookup_register(struct discovery_lookup *db, struct discovery_peer *p,
                              const char *topic, const char *channel)
{
    struct discovery_reg *r;
    int err = 0;

    if (channel && *channel) {
        if (!(r = discovery_reg_add(db, DISCOVERY_REG_CHANNEL, topic, channel, &err)))
            return err;
        if ((err = discovery_reg_add_producer(r, p)) < 0)
            return err;
    }
    if (!(r = discovery_reg_add(db, DISCOVERY_REG_TOPIC, topic, NULL, &err)))
        return err;
    err = discovery_reg_add_producer(r, p);
    return err < 0 ? err : 0;
}

/* Drop p from r; remove r too when it is #ephemeral (by `name`) and empty. */
static void leave(struct discovery_lookup *db, struct discovery_reg *r, struct discovery_peer *p,
                  const char *name)
{
    size_t left;

    discovery_reg_remove_producer(r, p, &left);
    if (left == 0 && discovery_name_ephemeral(name))
        discovery_reg_remove(db, r);
}

void discovery_lookup_unregister(struct discovery_lookup *db, struct discovery_peer *p,
                                 const char *topic, const char *channel)
{
    struct discovery_reg *r;

    if (channel && *channel) {
        if ((r = discovery_reg_find(db, DISCOVERY_REG_CHANNEL, topic, channel)))
            leave(db, r, p, channel);
        return;
    }
    /* the topic alone: its channels go first (nsqd should have sent them) */
    for (r = discovery_channels(db, topic); r; r = discovery_channels_next(r))
        discovery_reg_remove_producer(r, p, NULL);
    if ((r = discovery_reg_find(db, DISCOVERY_REG_TOPIC, topic, NULL)))
        leave(db, r, p, topic);
}

int discovery_peer_active(const struct discovery_peer *p, int64_t now, int64_t inactive)
{
    return p->local || now - p->last_update <= inactive;
}

int discovery_producer_tombstoned(const struct discovery_producer *pr, int64_t now,
                                  int64_t lifetime)
{
    return pr->tombstoned && now - pr->tombstoned_at < lifetime;
}

/* "broadcast_address:http_port" of p equals node? */
static int node_matches(const struct discovery_peer *p, const char *node)
{
    size_t n = strlen(p->broadcast_address);
    char *end;
    long port;

    if (strncmp(node, p->broadcast_address, n) != 0 || node[n] != ':')
        return 0;
    port = strtol(node + n + 1, &end, 10);
    return *end == '\0' && end != node + n + 1 && port == p->http_port;
}

size_t discovery_tombstone(struct discovery_lookup *db, const char *topic, const char *node,
                           int64_t now)
{
    struct discovery_reg *r = discovery_reg_find(db, DISCOVERY_REG_TOPIC, topic, NULL);
    size_t hits = 0;

    for (size_t i = 0; r && i < r->n; i++) {
        if (node_matches(r->v[i].peer, node)) {
            r->v[i].tombstoned = 1;
            r->v[i].tombstoned_at = now;
            hits++;
        }
    }
    return hits;
}

int discovery_topic_delete(struct discovery_lookup *db, const char *topic)
{
    struct discovery_reg *r, *next;
    int found = 0;

    for (r = discovery_channels(db, topic); r; r = next, found = 1) {
        next = discovery_channels_next(r);
        discovery_reg_remove(db, r);
    }
    if ((r = discovery_reg_find(db, DISCOVERY_REG_TOPIC, topic, NULL))) {
        discovery_reg_remove(db, r);
        found = 1;
    }
    return found ? 0 : TN_ENOTFOUND;
}

int discovery_channel_delete(struct discovery_lookup *db, const char *topic, const char *channel)
{
    struct discovery_reg *r = discovery_reg_find(db, DISCOVERY_REG_CHANNEL, topic, channel);

    if (!r)
        return TN_ENOTFOUND;
    discovery_reg_remove(db, r);
    return 0;
}
