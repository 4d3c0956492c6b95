/*
 * hash.c -- the small intrusive hash table behind the registries' indexes
 * (registrations by name, channels by topic, services and instances). A
 * node lives inside the indexed object; a chain keeps insertion order, so
 * walking the chain of a key gives its objects oldest first. The table
 * doubles when it holds as many nodes as buckets.
 */
#include <stdlib.h>

#include "discovery.h"

uint32_t discovery_hash(uint32_t h, const char *s)
{
    /* FNV-1a; the terminating NUL is hashed too, so ("ab","c") and
     * ("a","bc") differ when strings are chained */
    do
        h = (h ^ (unsigned char)*s) * 16777619u;
    while (*s++);
    return h;
}

static void chain_append(struct discovery_hnode **b, struct discovery_hnode *n)
{
    while (*b)
        b = &(*b)->next;
    n->next = NULL;
    *b = n;
}

static int grow(struct discovery_htab *t)
{
    size_t nb = t->nb ? t->nb * 2 : 64;
    struct discovery_hnode **b = calloc(nb, sizeof(*b)), *n, *next;

    if (!b)
        return TN_ENOMEM;
    /* old chains in order: nodes of one key keep their relative order */
    for (size_t i = 0; i < t->nb; i++) {
        for (n = t->b[i]; n; n = next) {
            next = n->next;
            chain_append(&b[n->hash & (nb - 1)], n);
        }
    }
    free(t->b);
    t->b = b;
    t->nb = nb;
    return 0;
}

int discovery_htab_insert(struct discovery_htab *t, struct discovery_hnode *n, uint32_t hash)
{
    if (t->n >= t->nb && grow(t) != 0)
        return TN_ENOMEM;
    n->hash = hash;
    chain_append(&t->b[hash & (t->nb - 1)], n);
    t->n++;
    return 0;
}

void discovery_htab_remove(struct discovery_htab *t, struct discovery_hnode *n)
{
    struct discovery_hnode **pp = &t->b[n->hash & (t->nb - 1)];

    while (*pp && *pp != n)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = n->next;
        t->n--;
    }
    n->next = NULL;
}

struct discovery_hnode *discovery_htab_chain(const struct discovery_htab *t, uint32_t hash)
{
    return t->nb ? t->b[hash & (t->nb - 1)] : NULL;
}

void discovery_htab_free(struct discovery_htab *t)
{
    free(t->b);
    t->b = NULL;
    t->nb = t->n = 0;
}
