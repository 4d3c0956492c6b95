/*
 * map.c -- the gateway's hash map: byte-string keys (session ids, uids,
 * group names, node addresses) to pointers, chained, doubling when the load
 * passes 1. The key memory belongs to the value, so an entry costs one
 * small allocation.
 */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

struct gw_map_ent {
    struct gw_map_ent *next;
    uint64_t hash;
    const void *key;
    size_t klen;
    void *val;
};

/* FNV-1a, 64 bits */
static uint64_t hash_bytes(const void *key, size_t n)
{
    const unsigned char *p = key;
    uint64_t h = 14695981039346656037ULL;

    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static struct gw_map_ent **slot(const struct gw_map *m, const void *key, size_t klen, uint64_t h)
{
    struct gw_map_ent **e = &m->b[h & (m->nb - 1)];

    while (*e && !((*e)->hash == h && (*e)->klen == klen && memcmp((*e)->key, key, klen) == 0))
        e = &(*e)->next;
    return e;
}

void *gw_map_get(const struct gw_map *m, const void *key, size_t klen)
{
    struct gw_map_ent **e;

    if (!m->nb)
        return NULL;
    e = slot(m, key, klen, hash_bytes(key, klen));
    return *e ? (*e)->val : NULL;
}

static int grow(struct gw_map *m)
{
    size_t nb = m->nb ? m->nb * 2 : 64;
    struct gw_map_ent **b = calloc(nb, sizeof(*b));

    if (!b)
        return TN_ENOMEM;
    for (size_t i = 0; i < m->nb; i++) {
        struct gw_map_ent *e = m->b[i], *next;
        for (; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
    return 0;
}

int gw_map_put(struct gw_map *m, const void *key, size_t klen, void *val)
{
    uint64_t h = hash_bytes(key, klen);
    struct gw_map_ent **e, *ne;

    if (m->n >= m->nb && grow(m) != 0)
        return TN_ENOMEM;
    e = slot(m, key, klen, h);
    if (*e) {
        (*e)->key = key;
        (*e)->val = val;
        return 0;
    }
    if (!(ne = malloc(sizeof(*ne))))
        return TN_ENOMEM;
    ne->next = NULL;
    ne->hash = h;
    ne->key = key;
    ne->klen = klen;
    ne->val = val;
    *e = ne;
    m->n++;
    return 0;
}

void *gw_map_del(struct gw_map *m, const void *key, size_t klen)
{
    struct gw_map_ent **e, *old;
    void *val;

    if (!m->nb)
        return NULL;
    e = slot(m, key, klen, hash_bytes(key, klen));
    if (!(old = *e))
        return NULL;
    *e = old->next;
    val = old->val;
    free(old);
    m->n--;
    return val;
}

void gw_map_free(struct gw_map *m)
{
    for (size_t i = 0; i < m->nb; i++) {
        struct gw_map_ent *e = m->b[i], *next;
        for (; e; e = next) {
            next = e->next;
            free(e);
        }
    }
    free(m->b);
    m->b = NULL;
    m->nb = m->n = 0;
}

void gw_map_each(const struct gw_map *m, void (*fn)(void *val, void *arg), void *arg)
{
    for (size_t i = 0; i < m->nb; i++)
        for (struct gw_map_ent *e = m->b[i]; e; e = e->next)
            fn(e->val, arg);
}
