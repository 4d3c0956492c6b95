/*
 * test_pool.c -- the pool module's thread pool engine (pool_core.c) driven
 * directly: expiry, tune under load, nonblocking and bounded-queue
 * overload, drain with timeout, a million tiny tasks run exactly once,
 * failures, release/reboot, prealloc and delivery through a hook.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../modules/pool/pool_core.h"

/* A gate tasks block on until the test opens it; it also records how many
 * tasks run at once. */
struct gate {
    pthread_mutex_t m;
    pthread_cond_t c;
    int open;
    int active, max_active, started;
};

static struct gate gate;

static void gate_reset(void)
{
    pthread_mutex_lock(&gate.m);
    gate.open = 0;
    gate.active = gate.max_active = gate.started = 0;
    pthread_mutex_unlock(&gate.m);
}

static void gate_open(void)
{
    pthread_mutex_lock(&gate.m);
    gate.open = 1;
    pthread_cond_broadcast(&gate.c);
    pthread_mutex_unlock(&gate.m);
}

static int gate_get(int *field)
{
    int v;
    pthread_mutex_lock(&gate.m);
    v = *field;
    pthread_mutex_unlock(&gate.m);
    return v;
}

static int gate_task(void *arg)
{
    pthread_mutex_lock(&gate.m);
    gate.started++;
    if (++gate.active > gate.max_active)
        gate.max_active = gate.active;
    while (!gate.open)
        pthread_cond_wait(&gate.c, &gate.m);
    gate.active--;
    pthread_mutex_unlock(&gate.m);
    return 0;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct tn_pool_info info_of(struct pool *p)
{
    struct tn_pool_info i;
    pool_info(p, &i);
    return i;
}

/* Poll until what(p) == want or timeout_ms pass; returns the last value. */
static int64_t wait_for(struct pool *p, int64_t (*what)(struct pool *), int64_t want,
                        int timeout_ms)
{
    int64_t end = mono_ms() + timeout_ms, v;
    while ((v = what(p)) != want && mono_ms() < end)
        usleep(2000);
    return v;
}

static int64_t running_of(struct pool *p)
{
    return info_of(p).running;
}
static int64_t idle_of(struct pool *p)
{
    return info_of(p).idle;
}
static int64_t started_of(struct pool *p)
{
    return gate_get(&gate.started);
}

static struct pool_opts opts(int64_t capacity)
{
    struct pool_opts o = {capacity, 10000, 0, 0, 0, 0};
    return o;
}

static struct pool *make(const struct pool_opts *o, const struct pool_hooks *h)
{
    int err = 0;
    struct pool *p = pool_create("test", o, h, &err);
    assert_non_null(p);
    assert_int_equal(err, 0);
    gate_reset();
    return p;
}

static void test_bad_opts(void **state)
{
    struct pool_opts o = opts(0);
    int err = 0;

    assert_null(pool_create("x", &o, NULL, &err));
    assert_int_equal(err, TN_EINVAL);
    o = opts(1);
    o.expiry_ms = 0;
    assert_null(pool_create("x", &o, NULL, &err));
    o.disable_purge = 1; /* no expiry needed then */
    struct pool *p = pool_create("x", &o, NULL, &err);
    assert_non_null(p);
    assert_string_equal(pool_name(p), "x");
    assert_ptr_equal(pool_from_handle(pool_handle(p)), p);
    assert_int_equal(pool_tune(p, 0), TN_EINVAL);
    pool_destroy(p);
}

static void test_expiry(void **state)
{
    struct pool_opts o = opts(8);
    struct pool *p;

    o.expiry_ms = 1000; /* long enough to look at the idle workers first */
    p = make(&o, NULL);
    for (int i = 0; i < 8; i++)
        assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), 0);
    assert_int_equal(wait_for(p, started_of, 8, 5000), 8);
    assert_int_equal(info_of(p).running, 8);
    gate_open();
    assert_int_equal(pool_wait(p, 5000), 0);
    /* idle, but not yet expired */
    assert_int_equal(info_of(p).running, 8);
    assert_int_equal(wait_for(p, idle_of, 8, 500), 8);
    /* each idle worker's wait is its purge timer */
    assert_int_equal(wait_for(p, running_of, 0, 5000), 0);
    assert_int_equal(info_of(p).idle, 0);
    /* a new task starts a new worker */
    assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), 0);
    assert_int_equal(pool_wait(p, 5000), 0);
    assert_int_equal(info_of(p).completed, 9);
    pool_destroy(p);
}

static void test_disable_purge(void **state)
{
    struct pool_opts o = opts(3);
    struct pool *p;

    o.expiry_ms = 20;
    o.disable_purge = 1;
    p = make(&o, NULL);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), 0);
    assert_int_equal(wait_for(p, started_of, 3, 5000), 3);
    gate_open();
    assert_int_equal(pool_wait(p, 5000), 0);
    usleep(150 * 1000);
    assert_int_equal(info_of(p).running, 3);
    /* turning purge back on (a reload) re-arms the idle workers */
    o.disable_purge = 0;
    assert_int_equal(pool_set_opts(p, &o), 0);
    assert_int_equal(wait_for(p, running_of, 0, 5000), 0);
    pool_destroy(p);
}

static void test_tune(void **state)
{
    struct pool *p = make(&(struct pool_opts){2, 10000, 0, 0, 0, 0}, NULL);
    struct tn_pool_info i;

    for (int k = 0; k < 10; k++)
        assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), 0);
    assert_int_equal(wait_for(p, started_of, 2, 5000), 2);
    i = info_of(p);
    assert_int_equal(i.running, 2);
    assert_int_equal(i.waiting, 8);
    assert_int_equal(i.free, 0);

    /* up under load: queued tasks get new workers at once */
    assert_int_equal(pool_tune(p, 5), 0);
    assert_int_equal(wait_for(p, started_of, 5, 5000), 5);
    i = info_of(p);
    assert_int_equal(i.capacity, 5);
    assert_int_equal(i.running, 5);
    assert_int_equal(i.waiting, 5);
    assert_int_equal(gate_get(&gate.max_active), 5);

    /* down under load: busy workers leave after their task */
    assert_int_equal(pool_tune(p, 1), 0);
    gate_open();
    assert_int_equal(pool_wait(p, 5000), 0);
    assert_int_equal(wait_for(p, running_of, 1, 5000), 1);
    assert_int_equal(info_of(p).completed, 10);

    /* and from now on one task at a time */
    gate_reset();
    for (int k = 0; k < 4; k++)
        assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), 0);
    assert_int_equal(wait_for(p, started_of, 1, 5000), 1);
    usleep(50 * 1000);
    assert_int_equal(gate_get(&gate.started), 1);
    assert_int_equal(info_of(p).waiting, 3);
    gate_open();
    assert_int_equal(pool_wait(p, 5000), 0);
    assert_int_equal(gate_get(&gate.max_active), 1);
    assert_int_equal(info_of(p).running, 1);
    pool_destroy(p);
}

static void test_nonblocking(void **state)
{
    struct pool_opts o = opts(2);
    struct pool *p;

    o.nonblocking = 1;
    o.max_waiting = 100; /* ignored: a nonblocking pool queues nothing */
    p = make(&o, NULL);
    assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), 0);
    assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), 0);
    assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), TN_EOVERLOAD);
    assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), TN_EOVERLOAD);
    assert_int_equal(info_of(p).rejected, 2);
    assert_int_equal(info_of(p).waiting, 0);
    gate_open();
    assert_int_equal(pool_wait(p, 5000), 0);
    assert_int_equal(wait_for(p, idle_of, 2, 5000), 2);
    /* idle workers again: accepted */
    assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), 0);
    assert_int_equal(pool_wait(p, 5000), 0);
    assert_int_equal(info_of(p).completed, 3);
    pool_destroy(p);
}

static void test_max_waiting(void **state)
{
    struct pool_opts o = opts(1);
    struct pool *p;

    o.max_waiting = 2;
    p = make(&o, NULL);
    assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), 0);
    assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), 0);
    assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), 0);
    assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), TN_EOVERLOAD);
    assert_int_equal(info_of(p).waiting, 2);
    assert_int_equal(info_of(p).rejected, 1);
    gate_open();
    assert_int_equal(pool_wait(p, 5000), 0);
    assert_int_equal(info_of(p).completed, 3);
    assert_int_equal(info_of(p).submitted, 3);
    pool_destroy(p);
}

static void test_drain_timeout(void **state)
{
    struct pool *p = make(&(struct pool_opts){2, 10000, 0, 0, 0, 0}, NULL);
    int64_t t0;

    assert_int_equal(pool_wait(p, 0), 0); /* nothing to wait for */
    for (int k = 0; k < 5; k++)
        assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), 0);
    t0 = mono_ms();
    assert_int_equal(pool_wait(p, 80), TN_ETIMEDOUT);
    assert_true(mono_ms() - t0 >= 75);
    assert_true(mono_ms() - t0 < 3000);
    gate_open();
    assert_int_equal(pool_wait(p, 5000), 0);
    assert_int_equal(info_of(p).waiting, 0);
    assert_int_equal(info_of(p).completed, 5);
    pool_destroy(p);
}

/* ---- a million tiny tasks ----------------------------------------------------- */

#define MANY 1000000
static uint8_t *ran, *done_seen;

static int tiny_task(void *arg)
{
    __atomic_add_fetch(&ran[(uintptr_t)arg], 1, __ATOMIC_RELAXED);
    return 0;
}

static void tiny_done(void *udata, int rc)
{
    if (rc == 0)
        __atomic_add_fetch(&done_seen[(uintptr_t)udata], 1, __ATOMIC_RELAXED);
}

static void test_million(void **state)
{
    struct pool *p = make(&(struct pool_opts){4, 10000, 0, 0, 0, 0}, NULL);
    struct tn_pool_info i;
    size_t bad = 0;

    ran = calloc(MANY, 1);
    done_seen = calloc(MANY, 1);
    assert_non_null(ran);
    assert_non_null(done_seen);
    for (uintptr_t k = 0; k < MANY; k++)
        assert_int_equal(pool_submit(p, tiny_task, (void *)k, tiny_done, (void *)k), 0);
    assert_int_equal(pool_wait(p, 60000), 0);
    for (size_t k = 0; k < MANY; k++)
        bad += ran[k] != 1 || done_seen[k] != 1;
    assert_int_equal(bad, 0);
    i = info_of(p);
    assert_int_equal(i.submitted, MANY);
    assert_int_equal(i.completed, MANY);
    assert_int_equal(i.failed, 0);
    assert_true(i.running >= 1 && i.running <= 4);
    free(ran);
    free(done_seen);
    pool_destroy(p);
}

/* ---- failures ------------------------------------------------------------------ */

static int failures_seen, done_errors;
static struct pool *failure_pool;

static int odd_fails(void *arg)
{
    return ((uintptr_t)arg & 1) ? TN_EINVAL : 0;
}

static void count_failure(struct pool *p, int rc, void *ud)
{
    if (p == failure_pool && rc == TN_EINVAL && ud == &failures_seen)
        __atomic_add_fetch(&failures_seen, 1, __ATOMIC_RELAXED);
}

static void count_done(void *udata, int rc)
{
    if (rc == TN_EINVAL && ((uintptr_t)udata & 1))
        __atomic_add_fetch(&done_errors, 1, __ATOMIC_RELAXED);
}

static void test_failures(void **state)
{
    struct pool_hooks h = {NULL, count_failure, NULL, &failures_seen};
    struct pool *p = make(&(struct pool_opts){3, 10000, 0, 0, 0, 0}, &h);
    struct tn_pool_info i;

    failure_pool = p;
    for (uintptr_t k = 0; k < 1000; k++)
        assert_int_equal(pool_submit(p, odd_fails, (void *)k, count_done, (void *)k), 0);
    assert_int_equal(pool_wait(p, 10000), 0);
    i = info_of(p);
    assert_int_equal(i.failed, 500);
    assert_int_equal(i.completed, 500);
    assert_int_equal(__atomic_load_n(&failures_seen, __ATOMIC_RELAXED), 500);
    assert_int_equal(__atomic_load_n(&done_errors, __ATOMIC_RELAXED), 500);
    assert_true(i.running >= 1); /* failing tasks do not kill workers */
    assert_int_equal(pool_submit(p, odd_fails, (void *)2, NULL, NULL), 0);
    assert_int_equal(pool_wait(p, 5000), 0);
    assert_int_equal(info_of(p).completed, 501);
    pool_destroy(p);
}

/* ---- release / reboot ------------------------------------------------------------ */

static int stopped_dones, ok_dones, exits;

static void release_done(void *udata, int rc)
{
    __atomic_add_fetch(rc == TN_ESTOPPED ? &stopped_dones : &ok_dones, 1, __ATOMIC_RELAXED);
}

static void count_exit(struct pool *p, void *ud)
{
    __atomic_add_fetch(&exits, 1, __ATOMIC_RELAXED);
}

static void test_release_reboot(void **state)
{
    struct pool_hooks h = {NULL, NULL, count_exit, NULL};
    struct pool *p = make(&(struct pool_opts){2, 10000, 0, 0, 0, 0}, &h);
    struct tn_pool_info i;

    for (int k = 0; k < 5; k++)
        assert_int_equal(pool_submit(p, gate_task, NULL, release_done, NULL), 0);
    assert_int_equal(wait_for(p, started_of, 2, 5000), 2);
    pool_release(p);
    assert_true(pool_is_closed(p));
    /* queued tasks are cancelled at once, never run */
    assert_int_equal(stopped_dones, 3);
    assert_int_equal(pool_submit(p, gate_task, NULL, NULL, NULL), TN_ESTOPPED);
    /* the busy workers hold the release up */
    assert_int_equal(pool_release_timeout(p, 50), TN_ETIMEDOUT);
    gate_open();
    assert_int_equal(pool_release_timeout(p, 5000), 0);
    i = info_of(p);
    assert_int_equal(i.running, 0);
    assert_int_equal(i.cancelled, 3);
    assert_int_equal(i.completed, 2);
    assert_int_equal(__atomic_load_n(&ok_dones, __ATOMIC_RELAXED), 2);
    assert_int_equal(__atomic_load_n(&exits, __ATOMIC_RELAXED), 2);
    assert_int_equal(gate_get(&gate.started), 2);

    assert_int_equal(pool_reboot(p), 0);
    assert_false(pool_is_closed(p));
    assert_int_equal(pool_submit(p, gate_task, NULL, release_done, NULL), 0);
    assert_int_equal(pool_wait(p, 5000), 0);
    assert_int_equal(__atomic_load_n(&ok_dones, __ATOMIC_RELAXED), 3);
    pool_destroy(p);
    assert_int_equal(__atomic_load_n(&exits, __ATOMIC_RELAXED), 3);
}

static void test_prealloc(void **state)
{
    struct pool_opts o = opts(4);
    struct pool *p;

    o.prealloc = 1;
    p = make(&o, NULL);
    assert_int_equal(info_of(p).running, 4);
    assert_int_equal(wait_for(p, idle_of, 4, 5000), 4);
    assert_int_equal(pool_tune(p, 6), 0);
    assert_int_equal(wait_for(p, idle_of, 6, 5000), 6);
    assert_int_equal(pool_tune(p, 2), 0); /* surplus idle workers go at once */
    assert_int_equal(info_of(p).running, 2);
    pool_release(p);
    assert_int_equal(pool_release_timeout(p, 5000), 0);
    assert_int_equal(pool_reboot(p), 0); /* preallocates again */
    assert_int_equal(info_of(p).running, 2);
    pool_destroy(p);
}

/* ---- delivery through a hook (as the module does to reach the loop) --------------- */

struct inbox {
    pthread_mutex_t m;
    pthread_cond_t c;
    struct pool_task *head;
};

static struct inbox inbox = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL};
static pthread_t main_thread;
static int done_on_main, done_elsewhere;

static void to_inbox(struct pool_task *t, void *ud)
{
    pthread_mutex_lock(&inbox.m);
    t->next = inbox.head;
    inbox.head = t;
    pthread_cond_signal(&inbox.c);
    pthread_mutex_unlock(&inbox.m);
}

static void where_done(void *udata, int rc)
{
    if (pthread_equal(pthread_self(), main_thread))
        done_on_main++;
    else
        __atomic_add_fetch(&done_elsewhere, 1, __ATOMIC_RELAXED);
}

static int drain_inbox(int want)
{
    int got = 0;
    int64_t end = mono_ms() + 5000;

    while (got < want && mono_ms() < end) {
        struct pool_task *list;
        pthread_mutex_lock(&inbox.m);
        if (!inbox.head)
            pthread_cond_wait(&inbox.c, &inbox.m);
        list = inbox.head;
        inbox.head = NULL;
        pthread_mutex_unlock(&inbox.m);
        while (list) {
            struct pool_task *next = list->next;
            pool_task_finish(list);
            list = next;
            got++;
        }
    }
    return got;
}

static void test_deliver(void **state)
{
    struct pool_hooks h = {to_inbox, NULL, NULL, NULL};
    struct pool *p = make(&(struct pool_opts){2, 10000, 0, 0, 0, 0}, &h);

    main_thread = pthread_self();
    for (int k = 0; k < 100; k++)
        assert_int_equal(pool_submit(p, odd_fails, (void *)0, where_done, NULL), 0);
    assert_int_equal(drain_inbox(100), 100);
    /* cancelled tasks come through the hook too */
    gate_reset();
    for (int k = 0; k < 4; k++)
        assert_int_equal(pool_submit(p, gate_task, NULL, where_done, NULL), 0);
    assert_int_equal(wait_for(p, started_of, 2, 5000), 2);
    pool_release(p);
    assert_int_equal(drain_inbox(2), 2);
    gate_open();
    assert_int_equal(drain_inbox(2), 2);
    assert_int_equal(pool_release_timeout(p, 5000), 0);
    assert_int_equal(done_on_main, 104);
    assert_int_equal(__atomic_load_n(&done_elsewhere, __ATOMIC_RELAXED), 0);
    pool_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_opts),      cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_disable_purge), cmocka_unit_test(test_tune),
        cmocka_unit_test(test_nonblocking),   cmocka_unit_test(test_max_waiting),
        cmocka_unit_test(test_drain_timeout), cmocka_unit_test(test_million),
        cmocka_unit_test(test_failures),      cmocka_unit_test(test_release_reboot),
        cmocka_unit_test(test_prealloc),      cmocka_unit_test(test_deliver),
    };
    pthread_mutex_init(&gate.m, NULL);
    pthread_cond_init(&gate.c, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
