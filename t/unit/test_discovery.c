/*
 * test_discovery.c -- the discovery module's pure parts: nsq name rules,
 * the nsqlookupd registration table (register/unregister, #ephemeral,
 * inactivity, tombstones, deletes, limits) and the service registry
 * (put/replace, indexes, heartbeats, TTL expiry, limits, change reports).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "discovery.h"

/* ---- names ------------------------------------------------------------------ */

static int valid(const char *s)
{
    return discovery_name_valid(s, strlen(s));
}

static void test_names(void **state)
{
    char long_name[80];

    assert_true(valid("orders"));
    assert_true(valid("a.b_c-D9"));
    assert_true(valid("orders#ephemeral"));
    assert_false(valid(""));
    assert_false(valid("#ephemeral"));
    assert_false(valid("bad name"));
    assert_false(valid("bad/name"));
    assert_false(valid("x#ephemeralx"));
    assert_false(valid("x#other"));
    memset(long_name, 'a', 64);
    long_name[64] = '\0';
    assert_true(valid(long_name));
    long_name[64] = 'a';
    long_name[65] = '\0';
    assert_false(valid(long_name));
    /* the suffix counts towards the 64 bytes */
    memset(long_name, 'a', 55);
    strcpy(long_name + 55, "#ephemeral");
    assert_false(valid(long_name));
    assert_true(discovery_name_ephemeral("t#ephemeral"));
    assert_false(discovery_name_ephemeral("t"));
}

/* ---- the registration table --------------------------------------------------- */

static struct discovery_peer *peer(const char *id, const char *bcast, int http)
{
    struct discovery_peer *p =
        discovery_peer_new(id, id, "host", bcast, "1.0.0", NULL, NULL, 4150, http);
    assert_non_null(p);
    assert_string_equal(p->topology_zone, "");
    return p;
}

static size_t producers(struct discovery_lookup *db, const char *topic, const char *channel)
{
    struct discovery_reg *r = discovery_reg_find(
        db, channel ? DISCOVERY_REG_CHANNEL : DISCOVERY_REG_TOPIC, topic, channel);
    return r ? r->n : (size_t)-1;
}

static void test_register_unregister(void **state)
{
    struct discovery_lookup db;
    struct discovery_peer *a = peer("a", "10.0.0.1", 4151), *b = peer("b", "10.0.0.2", 4151);

    discovery_lookup_init(&db, 0);
    discovery_peer_add(&db, a);
    discovery_peer_add(&db, b);
    discovery_peer_add(&db, a); /* once only */
    assert_int_equal(db.npeers, 2);

    /* a channel registers its topic too */
    assert_int_equal(discovery_lookup_register(&db, a, "t", "c"), 0);
    assert_int_equal(producers(&db, "t", NULL), 1);
    assert_int_equal(producers(&db, "t", "c"), 1);
    assert_int_equal(discovery_lookup_register(&db, b, "t", NULL), 0);
    assert_int_equal(discovery_lookup_register(&db, b, "t", NULL), 0); /* idempotent */
    assert_int_equal(producers(&db, "t", NULL), 2);
    assert_int_equal(db.nregs, 2);

    /* unregistering the topic drops a from its channels as well, but the
     * registrations stay (like nsqlookupd) */
    discovery_lookup_unregister(&db, a, "t", NULL);
    assert_int_equal(producers(&db, "t", NULL), 1);
    assert_int_equal(producers(&db, "t", "c"), 0);
    assert_int_equal(db.nregs, 2);

    /* a peer that goes away leaves every registration */
    discovery_lookup_register(&db, a, "u", NULL);
    discovery_peer_remove(&db, b);
    assert_int_equal(producers(&db, "t", NULL), 0);
    assert_int_equal(db.npeers, 1);
    assert_ptr_equal(db.peers, a);

    discovery_peer_remove(&db, a);
    discovery_peer_free(a);
    discovery_peer_free(b);
    discovery_lookup_free(&db);
}

static void test_ephemeral(void **state)
{
    struct discovery_lookup db;
    struct discovery_peer *a = peer("a", "h", 1), *b = peer("b", "h", 2);

    discovery_lookup_init(&db, 0);
    discovery_peer_add(&db, a);
    discovery_peer_add(&db, b);
    discovery_lookup_register(&db, a, "t", "c#ephemeral");
    discovery_lookup_register(&db, b, "t", "c#ephemeral");
    discovery_lookup_unregister(&db, a, "t", "c#ephemeral");
    assert_int_equal(producers(&db, "t", "c#ephemeral"), 1); /* b is still there */
    discovery_lookup_unregister(&db, b, "t", "c#ephemeral");
    assert_null(discovery_reg_find(&db, DISCOVERY_REG_CHANNEL, "t", "c#ephemeral"));
    assert_non_null(discovery_reg_find(&db, DISCOVERY_REG_TOPIC, "t", NULL));

    discovery_lookup_register(&db, a, "e#ephemeral", NULL);
    discovery_lookup_unregister(&db, a, "e#ephemeral", NULL);
    assert_null(discovery_reg_find(&db, DISCOVERY_REG_TOPIC, "e#ephemeral", NULL));

    /* a disconnect removes an #ephemeral registration it leaves empty */
    discovery_lookup_register(&db, a, "f#ephemeral", "x");
    discovery_peer_remove(&db, a);
    assert_null(discovery_reg_find(&db, DISCOVERY_REG_TOPIC, "f#ephemeral", NULL));
    assert_non_null(discovery_reg_find(&db, DISCOVERY_REG_CHANNEL, "f#ephemeral", "x"));

    discovery_peer_free(a);
    discovery_peer_remove(&db, b);
    discovery_peer_free(b);
    discovery_lookup_free(&db);
}

static void test_active_tombstone(void **state)
{
    struct discovery_lookup db;
    struct discovery_peer *a = peer("a", "10.0.0.1", 4151), *b = peer("b", "10.0.0.1", 5151);
    struct discovery_reg *r;

    discovery_lookup_init(&db, 0);
    a->last_update = 1000;
    assert_true(discovery_peer_active(a, 1000 + 300, 300));
    assert_false(discovery_peer_active(a, 1000 + 301, 300));
    a->local = 1;
    assert_true(discovery_peer_active(a, 1000000, 300));
    a->local = 0;

    discovery_lookup_register(&db, a, "t", NULL);
    discovery_lookup_register(&db, b, "t", NULL);
    discovery_lookup_register(&db, a, "u", NULL);
    /* node = broadcast_address:http_port picks one producer of one topic */
    assert_int_equal(discovery_tombstone(&db, "t", "10.0.0.1:5151", 5000), 1);
    assert_int_equal(discovery_tombstone(&db, "t", "10.0.0.1:515", 5000), 0);
    assert_int_equal(discovery_tombstone(&db, "t", "10.0.0.1:", 5000), 0);
    assert_int_equal(discovery_tombstone(&db, "nope", "10.0.0.1:5151", 5000), 0);
    r = discovery_reg_find(&db, DISCOVERY_REG_TOPIC, "t", NULL);
    assert_false(discovery_producer_tombstoned(discovery_reg_producer(r, a), 5000, 45));
    assert_true(discovery_producer_tombstoned(discovery_reg_producer(r, b), 5000 + 44, 45));
    assert_false(discovery_producer_tombstoned(discovery_reg_producer(r, b), 5000 + 45, 45));

    discovery_peer_remove(&db, a);
    discovery_peer_remove(&db, b);
    discovery_peer_free(a);
    discovery_peer_free(b);
    discovery_lookup_free(&db);
}

static void test_delete_and_limit(void **state)
{
    struct discovery_lookup db;
    int err = 0;

    discovery_lookup_init(&db, 3);
    assert_non_null(discovery_reg_add(&db, DISCOVERY_REG_TOPIC, "t", NULL, &err));
    assert_non_null(discovery_reg_add(&db, DISCOVERY_REG_CHANNEL, "t", "c1", &err));
    assert_non_null(discovery_reg_add(&db, DISCOVERY_REG_CHANNEL, "t", "c2", &err));
    /* finding an existing one is not an addition */
    assert_non_null(discovery_reg_add(&db, DISCOVERY_REG_CHANNEL, "t", "c2", &err));
    assert_null(discovery_reg_add(&db, DISCOVERY_REG_TOPIC, "u", NULL, &err));
    assert_int_equal(err, TN_ELIMIT);

    assert_int_equal(discovery_channel_delete(&db, "t", "c1"), 0);
    assert_int_equal(discovery_channel_delete(&db, "t", "c1"), TN_ENOTFOUND);
    assert_int_equal(discovery_topic_delete(&db, "t"), 0); /* with its channels */
    assert_int_equal(db.nregs, 0);
    assert_int_equal(discovery_topic_delete(&db, "t"), TN_ENOTFOUND);
    discovery_lookup_free(&db);
}

/* Many registrations: the hash index finds each one, keeps creation order
 * through growth and removals. */
static void test_many_registrations(void **state)
{
    struct discovery_lookup db;
    struct discovery_peer *a = peer("a", "h", 1);
    char topic[32], channel[32];
    size_t i, n = 0;
    int err = 0;

    discovery_lookup_init(&db, 0);
    discovery_peer_add(&db, a);
    for (i = 0; i < 5000; i++) {
        snprintf(topic, sizeof(topic), "t%zu", i);
        snprintf(channel, sizeof(channel), "c%zu", i % 7);
        assert_int_equal(discovery_lookup_register(&db, a, topic, channel), 0);
    }
    assert_int_equal(db.nregs, 10000);
    assert_true(db.by_key.nb >= db.nregs);
    assert_int_equal(db.channels.n, 5000);
    for (i = 0; i < 5000; i += 2) {
        snprintf(topic, sizeof(topic), "t%zu", i);
        assert_int_equal(discovery_topic_delete(&db, topic), 0);
    }
    for (i = 0; i < 5000; i++) {
        struct discovery_reg *r;
        snprintf(topic, sizeof(topic), "t%zu", i);
        snprintf(channel, sizeof(channel), "c%zu", i % 7);
        r = discovery_reg_find(&db, DISCOVERY_REG_CHANNEL, topic, channel);
        assert_true((r != NULL) == (i % 2 == 1));
        assert_null(discovery_reg_find(&db, DISCOVERY_REG_CHANNEL, topic, "other"));
        if (r)
            assert_ptr_equal(discovery_reg_producer(r, a)->peer, a);
    }
    /* creation order: t1/c1, t1, t3/c3, t3, ... */
    for (struct discovery_reg *r = db.regs; r; r = r->next, n++) {
        snprintf(topic, sizeof(topic), "t%zu", (n / 2) * 2 + 1);
        assert_string_equal(r->topic, topic);
        assert_int_equal(r->kind, n % 2 ? DISCOVERY_REG_TOPIC : DISCOVERY_REG_CHANNEL);
        assert_true(r->next == NULL || r->next->prev == r);
    }
    assert_int_equal(n, 5000);
    assert_ptr_equal(db.last->prev->next, db.last);
    assert_non_null(discovery_reg_add(&db, DISCOVERY_REG_TOPIC, "new", NULL, &err));
    assert_string_equal(db.last->topic, "new");
    discovery_peer_remove(&db, a);
    discovery_peer_free(a);
    discovery_lookup_free(&db);
}

/* Channels of a topic through the topic index, oldest first, and only
 * that topic's (other topics share buckets). */
static void test_channels_of_topic(void **state)
{
    struct discovery_lookup db;
    struct discovery_reg *r;
    char name[32];
    int err = 0, n = 0;

    discovery_lookup_init(&db, 0);
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof(name), "c%d", i);
        assert_non_null(
            discovery_reg_add(&db, DISCOVERY_REG_CHANNEL, i % 3 ? "other" : "t", name, &err));
    }
    for (r = discovery_channels(&db, "t"); r; r = discovery_channels_next(r), n++) {
        snprintf(name, sizeof(name), "c%d", n * 3);
        assert_string_equal(r->channel, name);
        assert_string_equal(r->topic, "t");
    }
    assert_int_equal(n, 100);
    assert_null(discovery_channels(&db, "none"));
    assert_int_equal(discovery_channel_delete(&db, "t", "c3"), 0);
    r = discovery_channels(&db, "t");
    assert_string_equal(discovery_channels_next(r)->channel, "c6");
    assert_int_equal(discovery_topic_delete(&db, "t"), 0);
    assert_null(discovery_channels(&db, "t"));
    assert_int_equal(db.nregs, 200);
    /* where the topic ends is part of the key: ("ab","c") is not ("a","bc"),
     * and a topic is not a channel with an empty name */
    struct discovery_reg *abc = discovery_reg_add(&db, DISCOVERY_REG_CHANNEL, "ab", "c", &err);
    struct discovery_reg *a_bc = discovery_reg_add(&db, DISCOVERY_REG_CHANNEL, "a", "bc", &err);
    struct discovery_reg *ab = discovery_reg_add(&db, DISCOVERY_REG_TOPIC, "ab", NULL, &err);
    assert_non_null(abc);
    assert_non_null(a_bc);
    assert_non_null(ab);
    assert_true(abc != a_bc && ab != abc);
    assert_int_equal(db.nregs, 203);
    assert_ptr_equal(discovery_reg_find(&db, DISCOVERY_REG_CHANNEL, "ab", "c"), abc);
    assert_ptr_equal(discovery_reg_find(&db, DISCOVERY_REG_CHANNEL, "a", "bc"), a_bc);
    assert_ptr_equal(discovery_reg_find(&db, DISCOVERY_REG_TOPIC, "ab", ""), ab);
    assert_null(discovery_reg_find(&db, DISCOVERY_REG_CHANNEL, "ab", NULL));
    assert_null(discovery_reg_find(&db, DISCOVERY_REG_CHANNEL, "abc", ""));
    assert_ptr_equal(discovery_channels(&db, "ab"), abc);
    assert_null(discovery_channels_next(abc));
    discovery_lookup_free(&db);
}

/* ---- the service registry ------------------------------------------------------ */

struct changes {
    int n;
    char last[64];
    uint64_t index;
};

static void on_change(const char *name, uint64_t index, void *ud)
{
    struct changes *c = ud;
    c->n++;
    snprintf(c->last, sizeof(c->last), "%s", name);
    c->index = index;
}

static struct discovery_services_conf svc_conf(void)
{
    struct discovery_services_conf c = {0};
    c.default_ttl = 30000;
    c.min_ttl = 100;
    c.max_ttl = 60000;
    c.max_instances = 3;
    c.max_metadata_size = 64;
    return c;
}

static struct discovery_instance_spec spec(const char *name, const char *id, const char *addr)
{
    struct discovery_instance_spec s = {name, id, addr, NULL, -1, TN_DISCOVERY_UP, 0, 0};
    return s;
}

/* An instance learnt from etcd (remote) keeps its flag and never expires;
 * the same instance turning local is a change (the etcd backend publishes
 * local ones only). */
static void test_registry_remote(void **state)
{
    struct discovery_services_conf c = svc_conf();
    struct discovery_registry reg;
    struct changes ch = {0};
    struct discovery_instance_spec s = spec("gw", "r", "10.0.0.2:1");
    const char *why = NULL;
    int changed;

    discovery_registry_init(&reg, &c, on_change, &ch);
    s.remote = 1;
    s.ttl = -1;
    assert_int_equal(discovery_registry_put(&reg, &s, 1000, &changed, &why), 0);
    assert_true(changed);
    assert_true(discovery_registry_instance(&reg, "gw", "r")->remote);
    assert_int_equal(discovery_registry_expire(&reg, 1000 + 7 * 24 * 3600 * 1000LL), 0);
    assert_int_equal(discovery_registry_put(&reg, &s, 2000, &changed, &why), 0);
    assert_false(changed);
    s.remote = 0;
    assert_int_equal(discovery_registry_put(&reg, &s, 3000, &changed, &why), 0);
    assert_true(changed);
    assert_false(discovery_registry_instance(&reg, "gw", "r")->remote);
    discovery_registry_free(&reg);
}

static void test_registry_put(void **state)
{
    struct discovery_services_conf c = svc_conf();
    struct discovery_registry reg;
    struct changes ch = {0};
    struct discovery_instance_spec s = spec("gw", "a", "10.0.0.1:3553");
    struct discovery_instance *in;
    const char *why = NULL;
    int changed;

    discovery_registry_init(&reg, &c, on_change, &ch);
    assert_int_equal(discovery_registry_put(&reg, &s, 1000, &changed, &why), 0);
    assert_true(changed);
    assert_int_equal(ch.n, 1);
    assert_string_equal(ch.last, "gw");
    assert_int_equal(reg.index, 1);
    in = discovery_registry_instance(&reg, "gw", "a");
    assert_non_null(in);
    assert_int_equal(in->weight, 1);
    assert_int_equal(in->ttl, 30000); /* the default */
    assert_int_equal(in->expires, 31000);
    assert_string_equal(in->metadata_text, "{}");
    assert_int_equal(in->create_index, 1);

    /* the same again: only the TTL restarts, no change is reported */
    assert_int_equal(discovery_registry_put(&reg, &s, 2000, &changed, &why), 0);
    assert_false(changed);
    assert_int_equal(ch.n, 1);
    assert_int_equal(discovery_registry_instance(&reg, "gw", "a")->expires, 32000);

    /* a new address is a change; create_index stays */
    s.address = "10.0.0.9:3553";
    s.metadata = json_pack("{s:[i,i]}", "routes", 1, 2);
    assert_int_equal(discovery_registry_put(&reg, &s, 2000, &changed, &why), 0);
    json_decref(s.metadata);
    assert_true(changed);
    in = discovery_registry_instance(&reg, "gw", "a");
    assert_string_equal(in->address, "10.0.0.9:3553");
    assert_string_equal(in->metadata_text, "{\"routes\":[1,2]}");
    assert_int_equal(in->create_index, 1);
    assert_int_equal(in->modify_index, 2);
    assert_int_equal(discovery_registry_name_index(&reg, "gw"), 2);
    assert_int_equal(reg.ninstances, 1);

    discovery_registry_free(&reg);
}

static void test_registry_rules(void **state)
{
    struct discovery_services_conf c = svc_conf();
    struct discovery_registry reg;
    struct discovery_instance_spec s;
    const char *why = NULL;

    discovery_registry_init(&reg, &c, NULL, NULL);
    s = spec("bad name", "a", "x:1");
    assert_int_equal(discovery_registry_put(&reg, &s, 0, NULL, &why), TN_EINVAL);
    assert_string_equal(why, "INVALID_NAME");
    s = spec("gw", "has space", "x:1");
    assert_int_equal(discovery_registry_put(&reg, &s, 0, NULL, &why), TN_EINVAL);
    assert_string_equal(why, "INVALID_ID");
    s = spec("gw", "a", "");
    assert_int_equal(discovery_registry_put(&reg, &s, 0, NULL, &why), TN_EINVAL);
    assert_string_equal(why, "INVALID_ADDRESS");
    s = spec("gw", "a", "x:1");
    s.ttl = 50; /* below min_ttl */
    assert_int_equal(discovery_registry_put(&reg, &s, 0, NULL, &why), TN_EINVAL);
    assert_string_equal(why, "INVALID_TTL");
    s.ttl = 0;
    s.state = 7;
    assert_int_equal(discovery_registry_put(&reg, &s, 0, NULL, &why), TN_EINVAL);
    assert_string_equal(why, "INVALID_STATE");
    s.state = TN_DISCOVERY_UP;
    s.metadata =
        json_pack("{s:s}", "k", "0123456789012345678901234567890123456789012345678901234567");
    assert_int_equal(discovery_registry_put(&reg, &s, 0, NULL, &why), TN_ETOOBIG);
    assert_string_equal(why, "METADATA_TOO_BIG");
    json_decref(s.metadata);
    s.metadata = json_pack("[i]", 1);
    assert_int_equal(discovery_registry_put(&reg, &s, 0, NULL, &why), TN_EINVAL);
    assert_string_equal(why, "INVALID_METADATA");
    json_decref(s.metadata);
    s.metadata = NULL;
    assert_int_equal(reg.ninstances, 0);
    assert_null(reg.services);

    /* max_instances counts over all names; replacing is not adding */
    for (int i = 0; i < 3; i++) {
        char id[8];
        snprintf(id, sizeof(id), "i%d", i);
        s = spec(i ? "gw" : "other", id, "x:1");
        assert_int_equal(discovery_registry_put(&reg, &s, 0, NULL, &why), 0);
    }
    s = spec("gw", "i9", "x:1");
    assert_int_equal(discovery_registry_put(&reg, &s, 0, NULL, &why), TN_ELIMIT);
    s = spec("gw", "i1", "y:2");
    assert_int_equal(discovery_registry_put(&reg, &s, 0, NULL, &why), 0);

    assert_int_equal(discovery_state_parse("draining"), TN_DISCOVERY_DRAINING);
    assert_int_equal(discovery_state_parse("sleepy"), -1);
    assert_string_equal(discovery_state_name(TN_DISCOVERY_DOWN), "down");
    discovery_registry_free(&reg);
}

static void test_registry_ttl(void **state)
{
    struct discovery_services_conf c = svc_conf();
    struct discovery_registry reg;
    struct changes ch = {0};
    struct discovery_instance_spec s;
    const char *why;

    discovery_registry_init(&reg, &c, on_change, &ch);
    assert_int_equal(discovery_registry_next_expiry(&reg), -1);
    s = spec("gw", "a", "x:1");
    s.ttl = 1000;
    discovery_registry_put(&reg, &s, 0, NULL, &why);
    s = spec("gw", "b", "x:2");
    s.ttl = 2000;
    discovery_registry_put(&reg, &s, 0, NULL, &why);
    s = spec("forever", "c", "x:3");
    s.ttl = -1;
    discovery_registry_put(&reg, &s, 0, NULL, &why);
    assert_int_equal(discovery_registry_next_expiry(&reg), 1000);

    /* a heartbeat restarts the TTL; a state change is a change */
    assert_int_equal(discovery_registry_heartbeat(&reg, "gw", "a", -1, 900), 0);
    assert_int_equal(ch.n, 3);
    assert_int_equal(discovery_registry_next_expiry(&reg), 1900);
    assert_int_equal(discovery_registry_heartbeat(&reg, "gw", "a", TN_DISCOVERY_DRAINING, 900), 0);
    assert_int_equal(ch.n, 4);
    assert_int_equal(discovery_registry_heartbeat(&reg, "gw", "zz", -1, 900), TN_ENOTFOUND);

    assert_int_equal(discovery_registry_expire(&reg, 1899), 0);
    assert_int_equal(discovery_registry_expire(&reg, 1900), 1);
    assert_null(discovery_registry_instance(&reg, "gw", "a"));
    assert_int_equal(ch.n, 5);
    assert_int_equal(discovery_registry_expire(&reg, 5000), 1);
    /* the name is gone: its index is the registry's, so a watcher that
     * saw an older index wakes */
    assert_null(discovery_registry_find(&reg, "gw"));
    assert_int_equal(discovery_registry_name_index(&reg, "gw"), reg.index);
    assert_string_equal(ch.last, "gw");
    assert_int_equal(ch.index, reg.index);
    assert_int_equal(reg.expired, 2);
    /* never expires */
    assert_int_equal(discovery_registry_expire(&reg, INT64_MAX / 2), 0);
    assert_int_equal(discovery_registry_next_expiry(&reg), -1);
    assert_int_equal(reg.ninstances, 1);

    assert_int_equal(discovery_registry_delete(&reg, "forever", "c"), 0);
    assert_int_equal(discovery_registry_delete(&reg, "forever", "c"), TN_ENOTFOUND);
    assert_int_equal(reg.ninstances, 0);
    discovery_registry_free(&reg);
}

static void test_registry_order(void **state)
{
    struct discovery_services_conf c = svc_conf();
    struct discovery_registry reg;
    struct discovery_instance_spec s;
    struct discovery_service *svc;
    const char *why;

    discovery_registry_init(&reg, &c, NULL, NULL);
    s = spec("gw", "a", "x:1");
    discovery_registry_put(&reg, &s, 0, NULL, &why);
    s = spec("gw", "b", "x:2");
    discovery_registry_put(&reg, &s, 0, NULL, &why);
    s = spec("gw", "c", "x:3");
    discovery_registry_put(&reg, &s, 0, NULL, &why);
    /* replacing keeps the place; deleting keeps the order of the rest */
    s = spec("gw", "b", "x:22");
    discovery_registry_put(&reg, &s, 0, NULL, &why);
    discovery_registry_delete(&reg, "gw", "a");
    svc = discovery_registry_find(&reg, "gw");
    assert_int_equal(svc->n, 2);
    assert_string_equal(svc->head->id, "b");
    assert_string_equal(svc->head->address, "x:22");
    assert_string_equal(svc->head->next->id, "c");
    assert_null(svc->head->next->next);
    discovery_registry_free(&reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_register_unregister),
        cmocka_unit_test(test_ephemeral),
        cmocka_unit_test(test_active_tombstone),
        cmocka_unit_test(test_delete_and_limit),
        cmocka_unit_test(test_many_registrations),
        cmocka_unit_test(test_channels_of_topic),
        cmocka_unit_test(test_registry_put),
        cmocka_unit_test(test_registry_remote),
        cmocka_unit_test(test_registry_rules),
        cmocka_unit_test(test_registry_ttl),
        cmocka_unit_test(test_registry_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
