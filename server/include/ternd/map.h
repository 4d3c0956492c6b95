/*
 * map.h -- an intrusive hash table with byte-string keys, for modules and
 * plugins that index their own objects (sessions by id, topics by name...).
 *
 * The object embeds a struct tn_map_node; the table only links nodes, so an
 * insert allocates nothing but, now and then, a bigger bucket array, and a
 * lookup allocates nothing. Keys are any bytes (NUL bytes and the empty key
 * included), compared with memcmp.
 *
 * Contract:
 * - Thread: a table belongs to one owner (the loop thread for module data);
 *   no call locks.
 * - Keys: the node keeps a pointer to the key (usually inside the object):
 *   the key bytes must not change or go away while the node is in a table.
 * - Duplicates: insert does not look for an equal key; a table may hold
 *   several nodes of one key (a multimap), found oldest first (tn_map_find
 *   then tn_map_find_next). Callers wanting unique keys find before insert.
 * - Layout: separate chaining, FNV-1a (64 bits), a power-of-two bucket array
 *   of 64 at the first insert, doubled with a one-shot rehash when the table
 *   holds as many nodes as buckets; never shrunk until tn_map_free. The
 *   rehash keeps the order of the nodes of one key.
 * - Cost: insert, find and remove are O(1) on average (remove walks one
 *   chain); the rehash is O(n), amortised O(1) per insert.
 * - Iteration (tn_map_first/tn_map_next) visits every node once in no given
 *   order. The node just returned may be removed (and freed) during the
 *   walk; no other node may be removed and none inserted until it ends.
 */
#ifndef TERND_MAP_H
#define TERND_MAP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <ternd/core.h>

/* Embedded in the indexed object. The fields are the table's; key and klen
 * may be read (they are what the node was inserted with). */
struct tn_map_node {
    struct tn_map_node *next;
    const void *key;
    size_t klen;
    uint64_t hash;
};

struct tn_map {
    struct tn_map_node **b;
    size_t nb; /* buckets: a power of two, or 0 before the first insert */
    size_t n;  /* nodes */
};

#define TN_MAP_INIT {NULL, 0, 0}

/* The object holding node ptr (ptr may not be NULL). */
#define TN_MAP_ENTRY(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static inline void *tn_map_entry_or_null(const struct tn_map_node *n, size_t off)
{
    return n ? (void *)((char *)(uintptr_t)n - off) : NULL;
}

/* The same for what a lookup returned: NULL stays NULL. */
#define TN_MAP_ENTRY_OR_NULL(ptr, type, member)                                                    \
    ((type *)tn_map_entry_or_null((ptr), offsetof(type, member)))

/* One piece of a key given in parts (tn_map_findv). */
struct tn_map_part {
    const void *p;
    size_t n;
};

struct tn_map_iter {
    const struct tn_map *m;
    struct tn_map_node *next; /* what tn_map_next returns */
};

/* FNV-1a (64 bits) of n bytes; the table's hash. Any thread. */
TN_API uint64_t tn_hash(const void *p, size_t n);

/* Link n under key (klen bytes, kept by pointer: see above) after any
 * nodes of an equal key. 0, or TN_ENOMEM when the table had to grow and
 * could not (nothing changed then). */
TN_API int tn_map_insert(struct tn_map *m, struct tn_map_node *n, const void *key, size_t klen);

/* Unlink n (inserted in m; a node not in m is left alone). Never fails,
 * never frees: the node's memory is the caller's. */
TN_API void tn_map_remove(struct tn_map *m, struct tn_map_node *n);

/* The oldest node of key, or NULL. */
TN_API struct tn_map_node *tn_map_find(const struct tn_map *m, const void *key, size_t klen);

/* The same for a key given as the concatenation of nparts parts (say a
 * name, a separator and an id), without building it. */
TN_API struct tn_map_node *tn_map_findv(const struct tn_map *m, const struct tn_map_part *parts,
                                        size_t nparts);

/* The next node (in insertion order) with the key of n, or NULL. */
TN_API struct tn_map_node *tn_map_find_next(const struct tn_map_node *n);

static inline struct tn_map_node *tn_map_find_str(const struct tn_map *m, const char *s)
{
    return tn_map_find(m, s, strlen(s));
}

/* Walk: for (n = tn_map_first(m, &it); n; n = tn_map_next(&it)). */
TN_API struct tn_map_node *tn_map_first(const struct tn_map *m, struct tn_map_iter *it);
TN_API struct tn_map_node *tn_map_next(struct tn_map_iter *it);

/* The same walk without an iterator: the first node, and the one after n
 * (a node in m), or NULL at the end. The caller takes the next node before
 * removing n. Nodes inserted meanwhile may or may not be visited, and an
 * insert that grew the table may make the walk skip or repeat nodes. */
TN_API struct tn_map_node *tn_map_head(const struct tn_map *m);
TN_API struct tn_map_node *tn_map_after(const struct tn_map *m, const struct tn_map_node *n);

/* Release the buckets; the nodes (the caller's) are not touched. The table
 * is empty and usable again afterwards. */
TN_API void tn_map_free(struct tn_map *m);

#endif
