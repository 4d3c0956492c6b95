/*
 * test_map.c -- the core's intrusive hash table (map.h): insert, find,
 * remove, growth over 100k keys, removal while iterating, binary and empty
 * keys, keys sharing a bucket, duplicate keys in order, keys in parts.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ternd/error.h>
#include <ternd/map.h>

struct obj {
    struct tn_map_node node;
    char key[24];
    size_t klen;
    int seen;
};

static struct obj *obj_of(struct tn_map_node *n)
{
    return TN_MAP_ENTRY_OR_NULL(n, struct obj, node);
}

static void obj_set(struct obj *o, const void *key, size_t klen)
{
    memset(o, 0, sizeof(*o));
    memcpy(o->key, key, klen);
    o->klen = klen;
}

static int obj_insert(struct tn_map *m, struct obj *o)
{
    return tn_map_insert(m, &o->node, o->key, o->klen);
}

/* Length of the chain of bucket i. */
static size_t chain_len(const struct tn_map *m, size_t i)
{
    size_t n = 0;

    for (const struct tn_map_node *p = m->b[i]; p; p = p->next)
        n++;
    return n;
}

static void test_insert_find_remove(void **state)
{
    struct tn_map m = TN_MAP_INIT;
    struct obj a, b, c;

    (void)state;
    assert_null(tn_map_find(&m, "a", 1)); /* no buckets yet */
    obj_set(&a, "alpha", 5);
    obj_set(&b, "beta", 4);
    obj_set(&c, "gamma", 5);
    assert_int_equal(obj_insert(&m, &a), 0);
    assert_int_equal(obj_insert(&m, &b), 0);
    assert_int_equal(obj_insert(&m, &c), 0);
    assert_int_equal(m.n, 3);
    assert_ptr_equal(obj_of(tn_map_find(&m, "alpha", 5)), &a);
    assert_ptr_equal(obj_of(tn_map_find_str(&m, "beta")), &b);
    assert_ptr_equal(obj_of(tn_map_find(&m, "gamma", 5)), &c);
    /* a prefix or an extension of a key is another key */
    assert_null(tn_map_find(&m, "alph", 4));
    assert_null(tn_map_find(&m, "alphas", 6));
    assert_null(tn_map_find(&m, "delta", 5));
    assert_ptr_equal(b.node.key, b.key);
    assert_int_equal(b.node.klen, 4);

    tn_map_remove(&m, &b.node);
    assert_int_equal(m.n, 2);
    assert_null(tn_map_find(&m, "beta", 4));
    assert_ptr_equal(obj_of(tn_map_find(&m, "alpha", 5)), &a);
    /* removing a node that is not in the table changes nothing */
    tn_map_remove(&m, &b.node);
    assert_int_equal(m.n, 2);
    /* and it can go back in */
    assert_int_equal(obj_insert(&m, &b), 0);
    assert_ptr_equal(obj_of(tn_map_find(&m, "beta", 4)), &b);
    assert_int_equal(m.n, 3);

    tn_map_free(&m);
    assert_null(m.b);
    assert_int_equal(m.nb, 0);
    assert_int_equal(m.n, 0);
    assert_null(tn_map_find(&m, "alpha", 5));
    tn_map_remove(&m, &a.node); /* on a freed table: nothing */
    /* a freed table is usable again */
    assert_int_equal(obj_insert(&m, &a), 0);
    assert_ptr_equal(obj_of(tn_map_find(&m, "alpha", 5)), &a);
    tn_map_free(&m);
}

#define MANY 100000

static void test_growth_many_keys(void **state)
{
    struct tn_map m = TN_MAP_INIT;
    struct obj *v = calloc(MANY, sizeof(*v));
    char key[24];
    size_t prev_nb = 0;
    int grew = 0;

    (void)state;
    assert_non_null(v);
    for (int i = 0; i < MANY; i++) {
        int n = snprintf(key, sizeof(key), "key-%d", i);
        obj_set(&v[i], key, (size_t)n);
        assert_int_equal(obj_insert(&m, &v[i]), 0);
        if (m.nb != prev_nb) {
            /* doubling from 64: always a power of two, never fuller than 1 */
            assert_true(prev_nb == 0 ? m.nb == 64 : m.nb == prev_nb * 2);
            prev_nb = m.nb;
            grew++;
        }
        assert_true(m.n <= m.nb);
    }
    assert_int_equal(m.n, MANY);
    assert_int_equal(m.nb, 131072);
    assert_int_equal(grew, 12); /* 64 .. 131072 */
    for (int i = 0; i < MANY; i++) {
        int n = snprintf(key, sizeof(key), "key-%d", i);
        assert_ptr_equal(obj_of(tn_map_find(&m, key, (size_t)n)), &v[i]);
    }
    /* remove the odd ones: the even ones stay, the odd ones are gone */
    for (int i = 1; i < MANY; i += 2)
        tn_map_remove(&m, &v[i].node);
    assert_int_equal(m.n, MANY / 2);
    for (int i = 0; i < MANY; i++) {
        int n = snprintf(key, sizeof(key), "key-%d", i);
        struct obj *o = obj_of(tn_map_find(&m, key, (size_t)n));
        assert_ptr_equal(o, i % 2 ? NULL : &v[i]);
    }
    assert_null(tn_map_find(&m, "key-100000", 10));
    tn_map_free(&m);
    free(v);
}

static void test_iterate_and_remove(void **state)
{
    struct tn_map m = TN_MAP_INIT;
    struct obj *v = calloc(1000, sizeof(*v));
    struct tn_map_iter it;
    struct tn_map_node *n;
    char key[24];
    int visited = 0;

    (void)state;
    assert_non_null(v);
    assert_null(tn_map_first(&m, &it)); /* an empty table */
    assert_null(tn_map_head(&m));
    for (int i = 0; i < 1000; i++) {
        int len = snprintf(key, sizeof(key), "%d", i);
        obj_set(&v[i], key, (size_t)len);
        assert_int_equal(obj_insert(&m, &v[i]), 0);
    }
    /* a walk sees every node once */
    for (n = tn_map_first(&m, &it); n; n = tn_map_next(&it))
        obj_of(n)->seen++;
    for (int i = 0; i < 1000; i++)
        assert_int_equal(v[i].seen, 1);
    /* the walk without an iterator goes the same way */
    n = tn_map_first(&m, &it);
    for (struct tn_map_node *p = tn_map_head(&m); p; p = tn_map_after(&m, p)) {
        assert_ptr_equal(p, n);
        n = tn_map_next(&it);
        obj_of(p)->seen = 0;
    }
    assert_null(n);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(v[i].seen, 0);

    /* removing (and scribbling over) the current node does not derail it:
     * drop the multiples of 3 on the way */
    for (n = tn_map_first(&m, &it); n; n = tn_map_next(&it)) {
        struct obj *o = obj_of(n);
        o->seen++;
        visited++;
        if (atoi(o->key) % 3 == 0) {
            tn_map_remove(&m, n);
            memset(&o->node, 0xa5, sizeof(o->node));
        }
    }
    assert_int_equal(visited, 1000);
    assert_int_equal(m.n, 1000 - 334);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(v[i].seen, 1);
        assert_true((tn_map_find(&m, v[i].key, v[i].klen) != NULL) == (i % 3 != 0));
    }

    /* and removing every node on the way empties the table */
    visited = 0;
    for (n = tn_map_first(&m, &it); n; n = tn_map_next(&it)) {
        tn_map_remove(&m, n);
        visited++;
    }
    assert_int_equal(visited, 1000 - 334);
    assert_int_equal(m.n, 0);
    assert_null(tn_map_first(&m, &it));
    tn_map_free(&m);
    free(v);
}

static void test_binary_and_empty_keys(void **state)
{
    struct tn_map m = TN_MAP_INIT;
    struct obj e, z, a0b, a0c, a;

    (void)state;
    obj_set(&e, "", 0);
    obj_set(&z, "\0", 1);
    obj_set(&a0b, "a\0b", 3);
    obj_set(&a0c, "a\0c", 3);
    obj_set(&a, "a", 1);
    assert_int_equal(obj_insert(&m, &e), 0);
    assert_int_equal(obj_insert(&m, &z), 0);
    assert_int_equal(obj_insert(&m, &a0b), 0);
    assert_int_equal(obj_insert(&m, &a0c), 0);
    assert_int_equal(obj_insert(&m, &a), 0);
    /* bytes after a NUL count, and the length is part of the key */
    assert_ptr_equal(obj_of(tn_map_find(&m, "", 0)), &e);
    assert_ptr_equal(obj_of(tn_map_find(&m, "\0", 1)), &z);
    assert_ptr_equal(obj_of(tn_map_find(&m, "a\0b", 3)), &a0b);
    assert_ptr_equal(obj_of(tn_map_find(&m, "a\0c", 3)), &a0c);
    assert_ptr_equal(obj_of(tn_map_find(&m, "a", 1)), &a);
    assert_ptr_equal(obj_of(tn_map_find_str(&m, "a\0b")), &a); /* strlen stops at the NUL */
    assert_null(tn_map_find(&m, "a\0", 2));
    assert_null(tn_map_find(&m, "\0\0", 2));
    assert_ptr_equal(obj_of(tn_map_find_str(&m, "")), &e);
    tn_map_remove(&m, &e.node);
    assert_null(tn_map_find(&m, "", 0));
    assert_ptr_equal(obj_of(tn_map_find(&m, "\0", 1)), &z);
    /* an 8-byte integer key with zero bytes, as the gateway's session ids */
    uint64_t id = 0x100, other = 0x10000;
    struct obj num;
    obj_set(&num, &id, sizeof(id));
    assert_int_equal(obj_insert(&m, &num), 0);
    assert_ptr_equal(obj_of(tn_map_find(&m, &id, sizeof(id))), &num);
    assert_null(tn_map_find(&m, &other, sizeof(other)));
    tn_map_free(&m);
}

/* Keys sharing bucket 0 of a 64-bucket table (found through tn_hash, the
 * table's own hash), some sharing even the whole hash only by chance. */
static void test_collisions(void **state)
{
    struct tn_map m = TN_MAP_INIT;
    struct obj v[6], other;
    char key[24];
    int n = 0;

    (void)state;
    for (int i = 0; n < 6 && i < 1000000; i++) {
        int len = snprintf(key, sizeof(key), "c%d", i);
        if ((tn_hash(key, (size_t)len) & 63) == 0)
            obj_set(&v[n++], key, (size_t)len);
    }
    assert_int_equal(n, 6);
    obj_set(&other, "c-elsewhere", 11);
    assert_true((tn_hash(other.key, other.klen) & 63) != 0);
    for (int i = 0; i < 6; i++)
        assert_int_equal(obj_insert(&m, &v[i]), 0);
    assert_int_equal(obj_insert(&m, &other), 0);
    assert_int_equal(m.nb, 64); /* seven nodes: no growth */
    assert_int_equal(chain_len(&m, 0), 6);
    for (int i = 0; i < 6; i++)
        assert_ptr_equal(obj_of(tn_map_find(&m, v[i].key, v[i].klen)), &v[i]);
    /* a miss that lands in the crowded bucket walks all of it */
    for (int i = 0;; i++) {
        int len = snprintf(key, sizeof(key), "miss%d", i);
        if ((tn_hash(key, (size_t)len) & 63) == 0) {
            assert_null(tn_map_find(&m, key, (size_t)len));
            break;
        }
    }
    /* remove from the middle, the head and the tail of the chain */
    tn_map_remove(&m, &v[2].node);
    tn_map_remove(&m, &v[0].node);
    tn_map_remove(&m, &v[5].node);
    assert_int_equal(chain_len(&m, 0), 3);
    assert_int_equal(m.n, 4);
    for (int i = 0; i < 6; i++) {
        struct obj *o = obj_of(tn_map_find(&m, v[i].key, v[i].klen));
        assert_ptr_equal(o, (i == 0 || i == 2 || i == 5) ? NULL : &v[i]);
    }
    assert_ptr_equal(obj_of(tn_map_find(&m, "c-elsewhere", 11)), &other);
    tn_map_free(&m);
}

/* Several nodes of one key come back oldest first, across a rehash too. */
static void test_duplicates_in_order(void **state)
{
    struct tn_map m = TN_MAP_INIT;
    struct obj d[4], *fill = calloc(500, sizeof(*fill));
    struct tn_map_node *n;
    char key[24];
    int i;

    (void)state;
    assert_non_null(fill);
    for (i = 0; i < 4; i++) {
        obj_set(&d[i], "topic", 5);
        d[i].seen = i;
        assert_int_equal(obj_insert(&m, &d[i]), 0);
        /* others in between, so the table grows twice meanwhile */
        for (int j = 0; j < 125; j++) {
            int len = snprintf(key, sizeof(key), "f%d", i * 125 + j);
            obj_set(&fill[i * 125 + j], key, (size_t)len);
            assert_int_equal(obj_insert(&m, &fill[i * 125 + j]), 0);
        }
    }
    assert_true(m.nb >= 512);
    for (i = 0, n = tn_map_find(&m, "topic", 5); n; n = tn_map_find_next(n), i++)
        assert_int_equal(obj_of(n)->seen, i);
    assert_int_equal(i, 4);
    /* without the second, the others keep their order */
    tn_map_remove(&m, &d[1].node);
    n = tn_map_find(&m, "topic", 5);
    assert_ptr_equal(obj_of(n), &d[0]);
    assert_ptr_equal(obj_of(n = tn_map_find_next(n)), &d[2]);
    assert_ptr_equal(obj_of(n = tn_map_find_next(n)), &d[3]);
    assert_null(tn_map_find_next(n));
    /* a re-inserted one goes last */
    assert_int_equal(obj_insert(&m, &d[1]), 0);
    assert_ptr_equal(obj_of(tn_map_find_next(&d[3].node)), &d[1]);
    tn_map_free(&m);
    free(fill);
}

static void test_find_in_parts(void **state)
{
    struct tn_map m = TN_MAP_INIT;
    struct obj k, e;
    static const char name[] = "svc", id[] = "i-1";

    (void)state;
    obj_set(&k, "svc\0i-1", 7);
    obj_set(&e, "", 0);
    assert_int_equal(obj_insert(&m, &k), 0);
    assert_int_equal(obj_insert(&m, &e), 0);
    struct tn_map_part p[] = {{name, sizeof(name)}, {id, 3}};
    assert_ptr_equal(obj_of(tn_map_findv(&m, p, 2)), &k);
    /* the key is the concatenation: any split finds it */
    struct tn_map_part q[] = {{"sv", 2}, {"c\0i", 3}, {"", 0}, {"-1", 2}};
    assert_ptr_equal(obj_of(tn_map_findv(&m, q, 4)), &k);
    /* without the separator it is another key */
    struct tn_map_part r[] = {{name, 3}, {id, 3}};
    assert_null(tn_map_findv(&m, r, 2));
    struct tn_map_part s[] = {{name, sizeof(name)}, {"i-2", 3}};
    assert_null(tn_map_findv(&m, s, 2));
    /* no parts: the empty key */
    assert_ptr_equal(obj_of(tn_map_findv(&m, NULL, 0)), &e);
    tn_map_free(&m);
    assert_null(tn_map_findv(&m, p, 2));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_insert_find_remove), cmocka_unit_test(test_growth_many_keys),
        cmocka_unit_test(test_iterate_and_remove), cmocka_unit_test(test_binary_and_empty_keys),
        cmocka_unit_test(test_collisions),         cmocka_unit_test(test_duplicates_in_order),
        cmocka_unit_test(test_find_in_parts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
