/*
 * map.c -- the intrusive hash table of map.h: chained buckets, FNV-1a,
 * doubling with a one-shot rehash. Chains keep insertion order (appends at
 * the tail, a rehash that walks the old chains in order), which is what
 * lets a multimap hand out the nodes of one key oldest first.
 */
#include <stdlib.h>
#include <string.h>

#include <ternd/error.h>
#include <ternd/map.h>

#define MAP_MIN_BUCKETS 64

#define FNV_OFFSET 14695981039346656037ULL
#define FNV_PRIME 1099511628211ULL

static uint64_t hash_more(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;

    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= FNV_PRIME;
    }
    return h;
}

uint64_t tn_hash(const void *p, size_t n)
{
    return hash_more(FNV_OFFSET, p, n);
}

static void chain_append(struct tn_map_node **b, struct tn_map_node *n)
{
    while (*b)
        b = &(*b)->next;
    n->next = NULL;
    *b = n;
}

static int grow(struct tn_map *m)
{
    size_t nb = m->nb ? m->nb * 2 : MAP_MIN_BUCKETS;
    struct tn_map_node **b = calloc(nb, sizeof(*b));
    struct tn_map_node *n, *next;

    if (!b)
        return TN_ENOMEM;
    /* An old chain splits into buckets i and i + m->nb only: keep the tail
     * of both as they fill, so the rehash stays linear. Walking the old
     * chains in order keeps the nodes of one key in order. */
    for (size_t i = 0; i < m->nb; i++) {
        struct tn_map_node **lo = &b[i], **hi = &b[i + m->nb];
        for (n = m->b[i]; n; n = next) {
            struct tn_map_node ***tail = (n->hash & (nb - 1)) == i ? &lo : &hi;
            next = n->next;
            n->next = NULL;
            **tail = n;
            *tail = &n->next;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
    return 0;
}

int tn_map_insert(struct tn_map *m, struct tn_map_node *n, const void *key, size_t klen)
{
    if (m->n >= m->nb && grow(m) != 0)
        return TN_ENOMEM;
    n->key = key;
    n->klen = klen;
    n->hash = tn_hash(key, klen);
    chain_append(&m->b[n->hash & (m->nb - 1)], n);
    m->n++;
    return 0;
}

void tn_map_remove(struct tn_map *m, struct tn_map_node *n)
{
    struct tn_map_node **pp;

    if (!m->nb)
        return;
    pp = &m->b[n->hash & (m->nb - 1)];
    while (*pp && *pp != n)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = n->next;
        m->n--;
    }
    n->next = NULL;
}

/* The first node at or after n with this hash and key. */
static struct tn_map_node *chain_find(struct tn_map_node *n, uint64_t h, const void *key,
                                      size_t klen)
{
    for (; n; n = n->next)
        if (n->hash == h && n->klen == klen && (!klen || memcmp(n->key, key, klen) == 0))
            return n;
    return NULL;
}

struct tn_map_node *tn_map_find(const struct tn_map *m, const void *key, size_t klen)
{
    uint64_t h;

    if (!m->nb)
        return NULL;
    h = tn_hash(key, klen);
    return chain_find(m->b[h & (m->nb - 1)], h, key, klen);
}

static int parts_equal(const struct tn_map_node *n, const struct tn_map_part *parts,
                       size_t nparts, size_t len)
{
    const char *k = n->key;

    if (n->klen != len)
        return 0;
    for (size_t i = 0; i < nparts; k += parts[i].n, i++)
        if (parts[i].n && memcmp(k, parts[i].p, parts[i].n) != 0)
            return 0;
    return 1;
}

struct tn_map_node *tn_map_findv(const struct tn_map *m, const struct tn_map_part *parts,
                                 size_t nparts)
{
    uint64_t h = FNV_OFFSET;
    size_t len = 0;

    if (!m->nb)
        return NULL;
    for (size_t i = 0; i < nparts; i++) {
        h = hash_more(h, parts[i].p, parts[i].n);
        len += parts[i].n;
    }
    for (struct tn_map_node *n = m->b[h & (m->nb - 1)]; n; n = n->next)
        if (n->hash == h && parts_equal(n, parts, nparts, len))
            return n;
    return NULL;
}

struct tn_map_node *tn_map_find_next(const struct tn_map_node *n)
{
    return chain_find(n->next, n->hash, n->key, n->klen);
}

/* The head of the first non-empty bucket from i on. */
static struct tn_map_node *bucket_from(const struct tn_map *m, size_t i)
{
    for (; i < m->nb; i++)
        if (m->b[i])
            return m->b[i];
    return NULL;
}

struct tn_map_node *tn_map_head(const struct tn_map *m)
{
    return bucket_from(m, 0);
}

struct tn_map_node *tn_map_after(const struct tn_map *m, const struct tn_map_node *n)
{
    /* the walk goes bucket by bucket: n's is found again from its hash */
    return n->next ? n->next : bucket_from(m, (n->hash & (m->nb - 1)) + 1);
}

struct tn_map_node *tn_map_first(const struct tn_map *m, struct tn_map_iter *it)
{
    it->m = m;
    it->next = tn_map_head(m);
    return tn_map_next(it);
}

struct tn_map_node *tn_map_next(struct tn_map_iter *it)
{
    struct tn_map_node *cur = it->next;

    /* look ahead now: the caller may remove cur before calling again */
    if (cur)
        it->next = tn_map_after(it->m, cur);
    return cur;
}

void tn_map_free(struct tn_map *m)
{
    free(m->b);
    m->b = NULL;
    m->nb = m->n = 0;
}
