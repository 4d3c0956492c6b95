/*
 * services.c -- the service registry: named instances (gateway nodes and
 * anything else with an address) with metadata, weight, state and a TTL
 * kept alive by heartbeats. Every change bumps one registry index and is
 * reported through on_change, which is what watches wait for. Pure data:
 * times are passed in, the module owns the timer.
 */
#include <stdlib.h>
#include <string.h>

#include "discovery.h"

static const char *const state_names[] = {"up", "down", "draining"};

void discovery_registry_init(struct discovery_registry *reg,
                             const struct discovery_services_conf *conf,
                             discovery_change_pt on_change, void *ud)
{
    memset(reg, 0, sizeof(*reg));
    reg->conf = conf;
    reg->on_change = on_change;
    reg->ud = ud;
}

static void instance_free(struct discovery_instance *in)
{
    free(in->key);
    free(in->address);
    if (in->metadata)
        json_decref(in->metadata);
    free(in->metadata_text);
    free(in);
}

static void service_free(struct discovery_service *s)
{
    struct discovery_instance *in, *next;

    for (in = s->head; in; in = next) {
        next = in->next;
        instance_free(in);
    }
    free(s->name);
    free(s);
}

void discovery_registry_free(struct discovery_registry *reg)
{
    struct discovery_service *s, *next;

    for (s = reg->services; s; s = next) {
        next = s->next;
        service_free(s);
    }
    tn_map_free(&reg->by_name);
    tn_map_free(&reg->instances);
    reg->services = reg->last = NULL;
    reg->ninstances = 0;
}

int discovery_svc_name_valid(const char *s)
{
    size_t n = 0;

    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return n >= 1 && n <= DISCOVERY_SVC_NAME_MAX;
}

int discovery_instance_id_valid(const char *s)
{
    size_t n = 0;

    for (; s[n]; n++)
        if ((unsigned char)s[n] <= ' ' || (unsigned char)s[n] >= 0x7f)
            return 0;
    return n >= 1 && n <= DISCOVERY_SVC_NAME_MAX;
}

int discovery_state_parse(const char *s)
{
    for (int i = 0; i < (int)(sizeof(state_names) / sizeof(state_names[0])); i++)
        if (strcmp(s, state_names[i]) == 0)
            return i;
    return -1;
}

const char *discovery_state_name(int state)
{
    return state >= 0 && state < (int)(sizeof(state_names) / sizeof(state_names[0]))
               ? state_names[state]
               : "unknown";
}

struct discovery_service *discovery_registry_find(struct discovery_registry *reg, const char *name)
{
    return TN_MAP_ENTRY_OR_NULL(tn_map_find_str(&reg->by_name, name), struct discovery_service,
                                by_name);
}

/* An instance's key is its name with the NUL, then its id. */
struct discovery_instance *discovery_registry_instance(struct discovery_registry *reg,
                                                       const char *name, const char *id)
{
    struct tn_map_part key[2] = {{name, strlen(name) + 1}, {id, strlen(id)}};

    return TN_MAP_ENTRY_OR_NULL(tn_map_findv(&reg->instances, key, 2), struct discovery_instance,
                                by_key);
}

uint64_t discovery_registry_name_index(struct discovery_registry *reg, const char *name)
{
    struct discovery_service *s = name ? discovery_registry_find(reg, name) : NULL;
    return s ? s->index : reg->index;
}

/* Record a change of s (bumps the index) and tell the owner. The callback
 * may look at the registry but must not change it. */
static void changed(struct discovery_registry *reg, const char *name, struct discovery_service *s,
                    struct discovery_instance *in)
{
    reg->index++;
    if (s)
        s->index = reg->index;
    if (in)
        in->modify_index = reg->index;
    if (reg->on_change)
        reg->on_change(name, reg->index, reg->ud);
}

/* Check a spec against the rules and limits; *why names the problem. */
static int spec_check(const struct discovery_registry *reg,
                      const struct discovery_instance_spec *sp, const char **why)
{
    const struct discovery_services_conf *c = reg->conf;

    if (!sp->name || !discovery_svc_name_valid(sp->name))
        return *why = "INVALID_NAME", TN_EINVAL;
    if (!sp->id || !discovery_instance_id_valid(sp->id))
        return *why = "INVALID_ID", TN_EINVAL;
    if (!sp->address || !*sp->address || strlen(sp->address) > DISCOVERY_ADDRESS_MAX)
        return *why = "INVALID_ADDRESS", TN_EINVAL;
    if (sp->metadata && !json_is_object(sp->metadata))
        return *why = "INVALID_METADATA", TN_EINVAL;
    if (sp->weight > 1000000)
        return *why = "INVALID_WEIGHT", TN_EINVAL;
    if (sp->state < 0 || sp->state > TN_DISCOVERY_DRAINING)
        return *why = "INVALID_STATE", TN_EINVAL;
    if (sp->ttl != 0 && sp->ttl != -1 && (sp->ttl < c->min_ttl || sp->ttl > c->max_ttl))
        return *why = "INVALID_TTL", TN_EINVAL;
    return 0;
}

/* Fill in (a new) in from sp: the caller frees `in` on failure. */
static int instance_fill(const struct discovery_registry *reg, struct discovery_instance *in,
                         const struct discovery_instance_spec *sp, int64_t now, const char **why)
{
    json_t *meta = sp->metadata ? json_incref(sp->metadata) : json_object();

    in->metadata = meta;
    if (!meta || !(in->metadata_text = json_dumps(meta, JSON_COMPACT | JSON_SORT_KEYS)))
        return *why = "OUT_OF_MEMORY", TN_ENOMEM;
    if (strlen(in->metadata_text) > reg->conf->max_metadata_size)
        return *why = "METADATA_TOO_BIG", TN_ETOOBIG;
    if (!(in->key = malloc(strlen(sp->name) + 1 + strlen(sp->id) + 1)) ||
        !(in->address = strdup(sp->address)))
        return *why = "OUT_OF_MEMORY", TN_ENOMEM;
    in->name = strcpy(in->key, sp->name);
    in->id = strcpy(in->key + strlen(sp->name) + 1, sp->id);
    in->weight = sp->weight < 0 ? 1 : sp->weight;
    in->state = sp->state;
    in->remote = sp->remote;
    in->ttl = sp->ttl == 0 ? reg->conf->default_ttl : sp->ttl;
    in->expires = in->ttl >= 0 ? now + in->ttl : 0;
    return 0;
}

/* Does the new instance differ from the old one in what watchers see? */
static int instance_differs(const struct discovery_instance *a, const struct discovery_instance *b)
{
    return strcmp(a->address, b->address) != 0 || strcmp(a->metadata_text, b->metadata_text) != 0 ||
           a->weight != b->weight || a->state != b->state || a->ttl != b->ttl ||
           a->remote != b->remote;
}

static struct discovery_service *service_get(struct discovery_registry *reg, const char *name)
{
    struct discovery_service *s = discovery_registry_find(reg, name);

    if (s)
        return s;
    if (!(s = calloc(1, sizeof(*s))) || !(s->name = strdup(name)) ||
        tn_map_insert(&reg->by_name, &s->by_name, s->name, strlen(s->name)) != 0) {
        if (s)
            free(s->name);
        free(s);
        return NULL;
    }
    DISCOVERY_LIST_APPEND(reg->services, reg->last, s);
    return s;
}

/* Unlink and free a service record that has no instances left. */
static void service_drop_if_empty(struct discovery_registry *reg, struct discovery_service *s)
{
    if (s->n)
        return;
    tn_map_remove(&reg->by_name, &s->by_name);
    DISCOVERY_LIST_REMOVE(reg->services, reg->last, s);
    service_free(s);
}

/* Put the filled instance `in` into s in the place of `old`, or at the
 * end. 0 or TN_ENOMEM (nothing changed then). */
static int instance_place(struct discovery_registry *reg, struct discovery_service *s,
                          struct discovery_instance *in, struct discovery_instance *old)
{
    if (tn_map_insert(&reg->instances, &in->by_key, in->key,
                      strlen(in->name) + 1 + strlen(in->id)) != 0)
        return TN_ENOMEM;
    if (old) {
        in->prev = old->prev;
        in->next = old->next;
        in->create_index = old->create_index;
        in->modify_index = old->modify_index;
        DISCOVERY_LIST_LINK(s->head, s->tail, in);
        tn_map_remove(&reg->instances, &old->by_key);
        instance_free(old);
    } else {
        DISCOVERY_LIST_APPEND(s->head, s->tail, in);
        s->n++;
        reg->ninstances++;
    }
    return 0;
}

int discovery_registry_put(struct discovery_registry *reg,
                           const struct discovery_instance_spec *spec, int64_t now,
                           int *changed_out, const char **why)
{
    struct discovery_instance *old, *in;
    struct discovery_service *s;
    int rc, differs;

    if (changed_out)
        *changed_out = 0;
    if ((rc = spec_check(reg, spec, why)) != 0)
        return rc;
    old = discovery_registry_instance(reg, spec->name, spec->id);
    if (!old && reg->conf->max_instances && reg->ninstances >= (size_t)reg->conf->max_instances)
        return *why = "TOO_MANY_INSTANCES", TN_ELIMIT;
    if (!(in = calloc(1, sizeof(*in))))
        return *why = "OUT_OF_MEMORY", TN_ENOMEM;
    if ((rc = instance_fill(reg, in, spec, now, why)) != 0 || !(s = service_get(reg, spec->name))) {
        instance_free(in);
        return rc ? rc : (*why = "OUT_OF_MEMORY", TN_ENOMEM);
    }
    differs = !old || instance_differs(old, in);
    if (!old)
        in->create_index = reg->index + 1;
    if (instance_place(reg, s, in, old) != 0) {
        instance_free(in);
        service_drop_if_empty(reg, s);
        return *why = "OUT_OF_MEMORY", TN_ENOMEM;
    }
    if (differs)
        changed(reg, s->name, s, in);
    if (changed_out)
        *changed_out = differs;
    return 0;
}

/* Unlink and free in from s; drops s when it empties. Reports the change. */
static void instance_remove(struct discovery_registry *reg, struct discovery_service *s,
                            struct discovery_instance *in)
{
    tn_map_remove(&reg->instances, &in->by_key);
    DISCOVERY_LIST_REMOVE(s->head, s->tail, in);
    instance_free(in);
    s->n--;
    reg->ninstances--;
    /* report before the record may go, so the callback sees a valid name */
    changed(reg, s->name, s, NULL);
    service_drop_if_empty(reg, s);
}

int discovery_registry_delete(struct discovery_registry *reg, const char *name, const char *id)
{
    struct discovery_service *s = discovery_registry_find(reg, name);
    struct discovery_instance *in = discovery_registry_instance(reg, name, id);

    if (!in)
        return TN_ENOTFOUND;
    instance_remove(reg, s, in);
    return 0;
}

int discovery_registry_heartbeat(struct discovery_registry *reg, const char *name, const char *id,
                                 int state, int64_t now)
{
    struct discovery_instance *in = discovery_registry_instance(reg, name, id);

    if (!in)
        return TN_ENOTFOUND;
    if (in->ttl >= 0)
        in->expires = now + in->ttl;
    if (state >= 0 && state != in->state) {
        in->state = state;
        changed(reg, in->name, discovery_registry_find(reg, name), in);
    }
    return 0;
}

size_t discovery_registry_expire(struct discovery_registry *reg, int64_t now)
{
    struct discovery_service *s, *snext;
    struct discovery_instance *in, *inext;
    size_t n = 0;

    for (s = reg->services; s; s = snext) {
        snext = s->next; /* s may be freed by instance_remove */
        for (in = s->head; in; in = inext) {
            inext = in->next;
            if (in->ttl >= 0 && in->expires <= now) {
                int last = s->n == 1;
                instance_remove(reg, s, in);
                n++;
                if (last)
                    break;
            }
        }
    }
    reg->expired += n;
    return n;
}

int64_t discovery_registry_next_expiry(const struct discovery_registry *reg)
{
    int64_t next = -1;

    for (const struct discovery_service *s = reg->services; s; s = s->next)
        for (const struct discovery_instance *in = s->head; in; in = in->next)
            if (in->ttl >= 0 && (next < 0 || in->expires < next))
                next = in->expires;
    return next;
}
