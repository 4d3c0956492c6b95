/*
 * test_broker_store.c -- the broker's message store without sockets: name
 * rules, IDs and disk records, fan-out and RDY-driven load balancing,
 * FIN/REQ/TOUCH, timeouts, deferral, overflow to the disk queue, the stop
 * flush and reload from disk, dead letters, #ephemeral and pausing.
 * Consumers are plain structs; deliveries are recorded instead of written.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"

#define MAX_SEEN 256

struct seen {
    struct broker_client *client;
    uint64_t id;
    uint16_t attempts;
    char body[32];
};

static struct seen seen[MAX_SEEN];
static size_t nseen, nkicked;
static struct tn_conn fake_conn;

static void record_msg(struct broker_client *c, const struct broker_ent *e)
{
    assert_true(nseen < MAX_SEEN);
    seen[nseen].client = c;
    seen[nseen].id = e->msg->id;
    seen[nseen].attempts = e->attempts;
    snprintf(seen[nseen].body, sizeof(seen[nseen].body), "%.*s", (int)e->msg->len, e->msg->body);
    nseen++;
}

static void record_kick(struct broker_client *c)
{
    nkicked++;
}

struct fixture {
    struct broker bk;
    struct broker_conf conf;
    char dir[64];
};

static void bk_open(struct fixture *f)
{
    memset(&f->bk, 0, sizeof(f->bk));
    f->bk.conf = &f->conf;
    f->bk.send_msg = record_msg;
    f->bk.kick = record_kick;
    snprintf(f->bk.dir, sizeof(f->bk.dir), "%s", f->dir);
    broker_store_init(&f->bk);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    snprintf(f->dir, sizeof(f->dir), "/tmp/test_broker_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    broker_conf_default(&f->conf);
    f->conf.msg_timeout = 1000;
    bk_open(f);
    nseen = nkicked = 0;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[128];

    broker_store_free(&f->bk);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void client_init(struct broker_client *c, struct broker *bk)
{
    memset(c, 0, sizeof(*c));
    c->bk = bk;
    c->conn = &fake_conn;
    c->msg_timeout = bk->conf->msg_timeout;
}

/* A consumer on ch with RDY rdy. */
static void consume(struct broker_client *c, struct broker *bk, struct broker_channel *ch,
                    int64_t rdy)
{
    client_init(c, bk);
    assert_int_equal(broker_client_sub(c, ch, 1000), 0);
    broker_client_set_rdy(c, rdy, 1000);
}

static void publish(struct broker *bk, const char *topic, const char *body, int64_t defer_until,
                    int64_t now)
{
    int err = 0;
    struct broker_topic *t = broker_topic_get(bk, topic, &err);

    assert_non_null(t);
    assert_int_equal(
        broker_topic_put(t,
                         broker_msg_new(broker_next_id(bk, now), now * 1000000, body, strlen(body)),
                         defer_until, now),
        0);
}

static struct broker_channel *chan(struct broker *bk, const char *topic, const char *name)
{
    int err = 0;
    struct broker_topic *t = broker_topic_get(bk, topic, &err);
    struct broker_channel *ch;

    assert_non_null(t);
    ch = broker_channel_get(t, name, 1000, &err);
    assert_non_null(ch);
    return ch;
}

/* ---- names, IDs, records -------------------------------------------------------- */

static void test_names(void **state)
{
    char long_name[80];

    assert_true(broker_name_valid("orders", 6));
    assert_true(broker_name_valid("a.b_c-D9", 8));
    assert_true(broker_name_valid("t#ephemeral", 11));
    assert_true(broker_name_ephemeral("t#ephemeral", 11));
    assert_false(broker_name_ephemeral("t", 1));
    assert_false(broker_name_valid("", 0));
    assert_false(broker_name_valid("#ephemeral", 10));
    assert_false(broker_name_valid("a b", 3));
    assert_false(broker_name_valid("a/b", 3));
    assert_false(broker_name_valid("a#b", 3));
    assert_false(broker_name_valid("a:b", 3));
    memset(long_name, 'x', sizeof(long_name));
    assert_true(broker_name_valid(long_name, 64));
    assert_false(broker_name_valid(long_name, 65));
}

static void test_ids(void **state)
{
    struct fixture *f = *state;
    char hex[BROKER_ID_LEN];
    uint64_t prev = 0, id, back;

    for (int i = 0; i < 10000; i++) { /* more than 4096 in one millisecond */
        id = broker_next_id(&f->bk, 1700000000000);
        assert_true(id > prev);
        prev = id;
    }
    broker_id_hex(0x0123456789abcdefULL, hex);
    assert_memory_equal(hex, "0123456789abcdef", 16);
    assert_int_equal(broker_id_parse(hex, 16, &back), 0);
    assert_true(back == 0x0123456789abcdefULL);
    assert_int_equal(broker_id_parse("0123456789ABCDEF", 16, &back), 0);
    assert_int_equal(broker_id_parse("0123456789abcdeg", 16, &back), -1);
    assert_int_equal(broker_id_parse("0123", 4, &back), -1);
    /* every digit position rejects what is not hex, bytes over 0x7f too */
    for (int pos = 0; pos < 16; pos++) {
        const char bad[] = {'/', ':', '@', 'G', '`', 'g', ' ', '\0', (char)0xb0, (char)0xff};

        for (size_t k = 0; k < sizeof(bad); k++) {
            memcpy(hex, "fedcba9876543210", 16);
            hex[pos] = bad[k];
            assert_int_equal(broker_id_parse(hex, 16, &back), -1);
        }
    }
    assert_int_equal(broker_id_parse("fFfFfFfFfFfFfFfF", 16, &back), 0);
    assert_true(back == UINT64_MAX);
    assert_int_equal(broker_id_parse("0000000000000000", 16, &back), 0);
    assert_true(back == 0);
}

static void test_records(void **state)
{
    struct broker_msg *m = broker_msg_new(42, 123456789, "hello", 5), *d;
    char buf[BROKER_REC_HEADER + 5];
    uint16_t attempts;
    int64_t defer;

    broker_rec_header(buf, m, 7, 99999);
    memcpy(buf + BROKER_REC_HEADER, "hello", 5);
    d = broker_rec_decode(buf, sizeof(buf), &attempts, &defer);
    assert_non_null(d);
    assert_true(d->id == 42);
    assert_true(d->ts == 123456789);
    assert_int_equal(attempts, 7);
    assert_int_equal(defer, 99999);
    assert_int_equal(d->len, 5);
    assert_memory_equal(d->body, "hello", 5);
    broker_msg_unref(d);
    assert_null(broker_rec_decode(buf, BROKER_REC_HEADER - 1, &attempts, &defer));
    buf[0] = 9; /* unknown version */
    assert_null(broker_rec_decode(buf, sizeof(buf), &attempts, &defer));
    broker_msg_unref(m);
}

/* ---- delivery ------------------------------------------------------------------------ */

static void test_fanout_and_balance(void **state)
{
    struct fixture *f = *state;
    struct broker *bk = &f->bk;
    struct broker_channel *a = chan(bk, "t", "a"), *b = chan(bk, "t", "b");
    struct broker_client c1, c2, c3;
    size_t n1 = 0, n2 = 0;

    client_init(&c1, bk);
    client_init(&c2, bk);
    client_init(&c3, bk);
    assert_int_equal(broker_client_sub(&c1, a, 1000), 0);
    assert_int_equal(broker_client_sub(&c2, a, 1000), 0);
    assert_int_equal(broker_client_sub(&c3, b, 1000), 0);
    for (int i = 0; i < 10; i++)
        publish(bk, "t", "m", 0, 1000);
    assert_int_equal(nseen, 0); /* nobody is ready */
    assert_int_equal(broker_channel_depth(a), 10);
    assert_int_equal(broker_channel_depth(b), 10);
    broker_client_set_rdy(&c1, 3, 1000);
    broker_client_set_rdy(&c2, 3, 1000);
    broker_client_set_rdy(&c3, 100, 1000);
    for (size_t i = 0; i < nseen; i++) {
        n1 += seen[i].client == &c1;
        n2 += seen[i].client == &c2;
        assert_int_equal(seen[i].attempts, 1);
    }
    assert_int_equal(n1, 3); /* RDY caps what each consumer holds */
    assert_int_equal(n2, 3);
    assert_int_equal(nseen, 16); /* channel b got its own copy of all 10 */
    assert_int_equal(a->inflight.n, 6);
    assert_int_equal(broker_channel_depth(a), 4);
    /* a FIN frees a slot, which the next message fills */
    assert_int_equal(broker_fin(&c1, seen[0].id, 1000), 0);
    assert_int_equal(nseen, 17);
    assert_true(seen[16].client == &c1);
    broker_client_unsub(&c1, 1000);
    broker_client_unsub(&c2, 1000);
    broker_client_unsub(&c3, 1000);
}

static void test_fin_req_touch_errors(void **state)
{
    struct fixture *f = *state;
    struct broker *bk = &f->bk;
    struct broker_channel *ch = chan(bk, "t", "c");
    struct broker_client c1, c2;

    client_init(&c1, bk);
    client_init(&c2, bk);
    broker_client_sub(&c1, ch, 1000);
    broker_client_sub(&c2, ch, 1000);
    broker_client_set_rdy(&c1, 1, 1000);
    publish(bk, "t", "x", 0, 1000);
    assert_int_equal(nseen, 1);
    assert_int_equal(broker_fin(&c1, seen[0].id + 1, 1000), TN_ENOTFOUND);
    assert_int_equal(broker_fin(&c2, seen[0].id, 1000), TN_EINVAL);
    assert_int_equal(broker_req(&c2, seen[0].id, 0, 1000), TN_EINVAL);
    assert_int_equal(broker_touch(&c2, seen[0].id, 1000), TN_EINVAL);
    assert_int_equal(broker_touch(&c1, seen[0].id, 1500), 0);
    assert_int_equal(broker_fin(&c1, seen[0].id, 1600), 0);
    assert_int_equal(broker_fin(&c1, seen[0].id, 1600), TN_ENOTFOUND);
    assert_int_equal(c1.inflight, 0);
    assert_int_equal(c1.finish_count, 1);
    broker_client_unsub(&c1, 1000);
    broker_client_unsub(&c2, 1000);
}

static void test_timeout_and_touch(void **state)
{
    struct fixture *f = *state;
    struct broker *bk = &f->bk;
    struct broker_channel *ch = chan(bk, "t", "c");
    struct broker_client c;

    f->conf.max_msg_timeout = 2500;
    consume(&c, bk, ch, 1);
    publish(bk, "t", "x", 0, 1000);
    assert_int_equal(nseen, 1);
    broker_scan(bk, 1999); /* deadline 2000 */
    assert_int_equal(ch->inflight.n, 1);
    assert_int_equal(broker_touch(&c, seen[0].id, 1900), 0); /* now 2900 */
    broker_scan(bk, 2500);
    assert_int_equal(ch->inflight.n, 1);
    assert_int_equal(broker_touch(&c, seen[0].id, 2800), 0); /* capped at 1000 + 2500 */
    broker_scan(bk, 3499);
    assert_int_equal(ch->timeout_count, 0);
    broker_scan(bk, 3500);
    assert_int_equal(ch->timeout_count, 1);
    /* requeued and redelivered at once to the same (now free) consumer */
    assert_int_equal(nseen, 2);
    assert_true(seen[1].id == seen[0].id);
    assert_int_equal(seen[1].attempts, 2);
    broker_client_unsub(&c, 4000);
    /* a disconnect requeues what the consumer held */
    assert_int_equal(ch->inflight.n, 0);
    assert_int_equal(broker_channel_depth(ch), 1);
}

static void test_req_delay(void **state)
{
    struct fixture *f = *state;
    struct broker *bk = &f->bk;
    struct broker_channel *ch = chan(bk, "t", "c");
    struct broker_client c;

    consume(&c, bk, ch, 5);
    publish(bk, "t", "x", 0, 1000);
    assert_int_equal(broker_req(&c, seen[0].id, 500, 1000), 0);
    assert_int_equal(ch->deferred.n, 1);
    assert_int_equal(nseen, 1);
    broker_scan(bk, 1499);
    assert_int_equal(nseen, 1);
    broker_scan(bk, 1500);
    assert_int_equal(nseen, 2);
    assert_int_equal(seen[1].attempts, 2);
    assert_int_equal(ch->requeue_count, 1);
    assert_int_equal(broker_fin(&c, seen[1].id, 1500), 0);
    /* a deferred publish (DPUB) waits the same way */
    publish(bk, "t", "later", 3000, 1500);
    assert_int_equal(nseen, 2);
    broker_scan(bk, 3000);
    assert_int_equal(nseen, 3);
    assert_string_equal(seen[2].body, "later");
    broker_client_unsub(&c, 3000);
}

static void test_overflow_to_disk(void **state)
{
    struct fixture *f = *state;
    struct broker *bk = &f->bk;
    struct broker_channel *ch;
    struct broker_client c;
    char body[16];

    f->conf.mem_queue_size = 2;
    ch = chan(bk, "t", "c");
    for (int i = 0; i < 5; i++) {
        snprintf(body, sizeof(body), "m%d", i);
        publish(bk, "t", body, 0, 1000);
    }
    assert_int_equal(ch->mem.n, 2);
    assert_int_equal(tn_diskq_depth(ch->dq), 3);
    consume(&c, bk, ch, 10);
    assert_int_equal(nseen, 5);
    for (int i = 0; i < 5; i++) {
        snprintf(body, sizeof(body), "m%d", i);
        assert_string_equal(seen[i].body, body);
    }
    assert_int_equal(tn_diskq_depth(ch->dq), 0);
    broker_client_unsub(&c, 1000);
}

static void test_topic_without_channels_and_pause(void **state)
{
    struct fixture *f = *state;
    struct broker *bk = &f->bk;
    struct broker_topic *t;
    struct broker_channel *ch;
    struct broker_client c;
    int err = 0;

    f->conf.mem_queue_size = 1;
    publish(bk, "t", "a", 0, 1000);
    publish(bk, "t", "b", 0, 1000); /* to the topic's disk queue */
    t = broker_topic_get(bk, "t", &err);
    assert_int_equal(broker_topic_depth(t), 2);
    ch = chan(bk, "t", "c"); /* the first channel takes what waited */
    assert_int_equal(broker_topic_depth(t), 0);
    assert_int_equal(broker_channel_depth(ch), 2);
    broker_topic_pause(t, 1, 1000);
    publish(bk, "t", "c", 0, 1000);
    assert_int_equal(broker_topic_depth(t), 1);
    assert_int_equal(broker_channel_depth(ch), 2);
    broker_topic_pause(t, 0, 1000);
    assert_int_equal(broker_channel_depth(ch), 3);
    client_init(&c, bk);
    broker_client_sub(&c, ch, 1000);
    broker_channel_pause(ch, 1, 1000);
    broker_client_set_rdy(&c, 10, 1000);
    assert_int_equal(nseen, 0);
    broker_channel_pause(ch, 0, 1000);
    assert_int_equal(nseen, 3);
    broker_client_unsub(&c, 1000);
}

/* SIGTERM writes queued, deferred and in-flight messages; a new store on
 * the same directory finds exactly those again. */
static void test_persist_and_reload(void **state)
{
    struct fixture *f = *state;
    struct broker *bk = &f->bk;
    struct broker_channel *ch = chan(bk, "t", "c");
    struct broker_client c;
    int err = 0;
    char body[16];
    size_t i, n2;

    f->conf.mem_queue_size = 3;
    consume(&c, bk, ch, 2);
    for (i = 0; i < 8; i++) {
        snprintf(body, sizeof(body), "m%zu", i);
        publish(bk, "t", body, 0, 1000);
    }
    publish(bk, "t", "deferred", 1000000, 1000);
    publish(bk, "u", "topic-only", 0, 1000);
    assert_int_equal(ch->inflight.n, 2);
    /* in flight, memory, the topic's; the deferred one went to disk when
     * published (the memory queue was full) */
    assert_int_equal(ch->deferred.n, 0);
    assert_int_equal(broker_store_persist(bk, 1000), 2 + 3 + 1);
    broker_client_unsub(&c, 1000);
    broker_store_free(bk);

    bk_open(f);
    nseen = 0;
    ch = chan(bk, "t", "c");
    assert_int_equal(broker_channel_depth(ch), 9);
    assert_int_equal(broker_topic_depth(broker_topic_get(bk, "u", &err)), 1);
    client_init(&c, bk);
    broker_client_sub(&c, ch, 2000);
    broker_client_set_rdy(&c, 100, 2000);
    assert_int_equal(nseen, 8); /* the deferred one waits */
    assert_int_equal(ch->deferred.n, 1);
    for (i = 0, n2 = 0; i < nseen; i++)
        n2 += seen[i].attempts == 2; /* the two in flight before: 2nd attempt */
    assert_int_equal(n2, 2);
    for (i = 0; i < nseen; i++)
        for (size_t j = i + 1; j < nseen; j++)
            assert_true(seen[i].id != seen[j].id);
    for (i = 0; i < nseen; i++)
        assert_int_equal(broker_fin(&c, seen[i].id, 3000), 0);
    broker_scan(bk, 1000000);
    assert_int_equal(nseen, 9);
    assert_string_equal(seen[8].body, "deferred");
    broker_client_unsub(&c, 1000000);
}

/* mem_queue_size 0: a message read from the channel's disk queue keeps
 * its record until FIN; REQ with a delay keeps it too, REQ at once stores
 * it again. Freeing the store without the SIGTERM persist (what a crash
 * leaves) and opening it again brings back everything from the oldest
 * record not finished on. */
static void test_disk_records_held_until_fin(void **state)
{
    struct fixture *f = *state;
    struct broker *bk = &f->bk;
    struct broker_channel *ch;
    struct broker_client c;
    struct tn_diskq_stats st;
    char body[16];
    size_t i;

    f->conf.mem_queue_size = 0;
    f->conf.sync_every = 1;
    ch = chan(bk, "t", "c");
    consume(&c, bk, ch, 6);
    for (i = 0; i < 8; i++) {
        snprintf(body, sizeof(body), "m%zu", i);
        publish(bk, "t", body, 0, 1000);
    }
    assert_int_equal(nseen, 6);
    tn_diskq_get_stats(ch->dq, &st);
    assert_int_equal(st.held, 6);
    assert_int_equal(st.commit_pos, 0);
    assert_int_equal(broker_fin(&c, seen[0].id, 1000), 0);
    assert_int_equal(broker_fin(&c, seen[2].id, 1000), 0);
    assert_int_equal(broker_req(&c, seen[3].id, 60000, 1000), 0); /* deferred, held */
    assert_int_equal(broker_req(&c, seen[4].id, 0, 1000), 0);     /* stored again */
    tn_diskq_get_stats(ch->dq, &st);
    assert_true(st.commit_pos > 0); /* past m0, stopped at m1 */
    /* in flight m1, m5, then m6 and m7 (as RDY freed up) and m4 from its
     * new record; m3 deferred: all six held */
    assert_int_equal(ch->inflight.n, 5);
    assert_int_equal(ch->deferred.n, 1);
    assert_int_equal(st.held, 6);
    assert_int_equal(tn_diskq_depth(ch->dq), 0);
    broker_store_free(bk); /* no persist: a crash */

    bk_open(f);
    nseen = 0;
    ch = chan(bk, "t", "c");
    /* from m1: m1..m7 (m2 finished but after m1) and m4 again */
    assert_int_equal(broker_channel_depth(ch), 8);
    consume(&c, bk, ch, 100);
    assert_int_equal(nseen, 8);
    assert_string_equal(seen[0].body, "m1");
    assert_string_equal(seen[7].body, "m4");
    broker_client_unsub(&c, 1000);
}

static void test_dead_letter(void **state)
{
    struct fixture *f = *state;
    struct broker *bk = &f->bk;
    struct broker_policy pol = {"work", 2, "dlq"};
    struct broker_channel *ch, *other;
    struct broker_topic *dlq;
    struct broker_client c;
    int err = 0;

    f->conf.channels.n = 1;
    f->conf.channels.v = &pol;
    ch = chan(bk, "jobs", "work");
    other = chan(bk, "jobs", "audit"); /* no policy: unlimited */
    assert_int_equal(ch->max_attempts, 2);
    assert_int_equal(other->max_attempts, 0);
    consume(&c, bk, ch, 1);
    publish(bk, "jobs", "poison", 0, 1000);
    assert_int_equal(broker_req(&c, seen[0].id, 0, 1000), 0);
    assert_int_equal(nseen, 2);
    assert_int_equal(seen[1].attempts, 2);
    assert_int_equal(broker_req(&c, seen[1].id, 0, 1000), 0);
    assert_int_equal(nseen, 2); /* not delivered a third time */
    assert_int_equal(ch->dead_count, 1);
    dlq = broker_topic_find(bk, "dlq");
    assert_non_null(dlq);
    assert_int_equal(broker_topic_depth(dlq), 1);
    assert_int_equal(dlq->mem.head->msg->len, 6);
    assert_memory_equal(dlq->mem.head->msg->body, "poison", 6);
    (void)err;
    broker_client_unsub(&c, 1000);
}

static void test_ephemeral(void **state)
{
    struct fixture *f = *state;
    struct broker *bk = &f->bk;
    struct broker_channel *ch = chan(bk, "t#ephemeral", "c#ephemeral");
    struct broker_client c;

    f->conf.mem_queue_size = 1;
    assert_null(ch->dq);
    assert_null(ch->topic->dq);
    client_init(&c, bk);
    broker_client_sub(&c, ch, 1000);
    publish(bk, "t#ephemeral", "a", 0, 1000);
    publish(bk, "t#ephemeral", "b", 0, 1000); /* no disk: overflow is dropped */
    assert_int_equal(broker_channel_depth(ch), 1);
    assert_int_equal(ch->dropped_count, 1);
    broker_client_unsub(&c, 1000); /* last consumer: channel, then topic go */
    assert_null(broker_topic_find(bk, "t#ephemeral"));
}

static void test_delete_kicks(void **state)
{
    struct fixture *f = *state;
    struct broker *bk = &f->bk;
    struct broker_channel *ch = chan(bk, "t", "c");
    struct broker_client c;

    consume(&c, bk, ch, 1);
    publish(bk, "t", "a", 0, 1000);
    assert_int_equal(c.inflight, 1);
    broker_topic_delete(broker_topic_find(bk, "t"));
    assert_int_equal(nkicked, 1);
    assert_null(c.ch);
    assert_int_equal(c.inflight, 0);
    assert_int_equal(access(f->dir, F_OK), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_records),
        cmocka_unit_test_setup_teardown(test_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fanout_and_balance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fin_req_touch_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_and_touch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_req_delay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overflow_to_disk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_topic_without_channels_and_pause, setup, teardown),
        cmocka_unit_test_setup_teardown(test_persist_and_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_records_held_until_fin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ephemeral, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_kicks, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
