/*
 * bench_pool.c -- tiny-task throughput and submit latency of the pool
 * module's engine (pool_core.c) against GLib's GThreadPool and a thread per
 * task. Not a test: a measurement, printed as medians of 3 runs.
 *
 * Build and run (from the top of the tree): scripts/bench/bench-pool
 */
#include <glib.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../modules/pool/pool_core.h"

#define RUNS 3
#define LAT_SAMPLES 20000

static long n_tasks;
static long counter;
static sem_t all_done, one_done;
static int64_t started_ns;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The tiny task: count, and tell the submitter when the last one ran. */
static void tiny(void)
{
    if (__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) == n_tasks)
        sem_post(&all_done);
}

/* The latency probe: note when it started running. */
static void probe(void)
{
    __atomic_store_n(&started_ns, now_ns(), __ATOMIC_RELEASE);
    sem_post(&one_done);
}

/* ---- the three contenders ------------------------------------------------------ */

struct contender {
    const char *name;
    void (*setup)(int workers);
    void (*submit)(void (*fn)(void));
    void (*teardown)(void);
};

static struct pool *tn;

static int pool_fn(void *arg)
{
    ((void (*)(void))arg)();
    return 0;
}

static void pool_setup(int workers)
{
    struct pool_opts o = {workers, 10000, 0, 0, 0, 0};
    int err;
    if (!(tn = pool_create("bench", &o, NULL, &err))) {
        fprintf(stderr, "pool_create: %d\n", err);
        exit(1);
    }
}

static void pool_submit_fn(void (*fn)(void))
{
    /* a function pointer travels as the task's arg */
    void *arg;
    memcpy(&arg, &fn, sizeof(arg));
    if (pool_submit(tn, pool_fn, arg, NULL, NULL) != 0)
        abort();
}

static void pool_teardown(void)
{
    pool_destroy(tn);
}

static GThreadPool *gp;

static void gpool_fn(gpointer data, gpointer user)
{
    void (*fn)(void);
    memcpy(&fn, &data, sizeof(fn));
    fn();
}

static void gpool_setup(int workers)
{
    gp = g_thread_pool_new(gpool_fn, NULL, workers, FALSE, NULL);
}

static void gpool_submit(void (*fn)(void))
{
    gpointer data;
    memcpy(&data, &fn, sizeof(data));
    g_thread_pool_push(gp, data, NULL);
}

static void gpool_teardown(void)
{
    g_thread_pool_free(gp, FALSE, TRUE);
}

static void *thread_fn(void *arg)
{
    void (*fn)(void);
    memcpy(&fn, &arg, sizeof(fn));
    fn();
    return NULL;
}

static pthread_attr_t detached;

static void tpt_setup(int workers)
{
    pthread_attr_init(&detached);
    pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
}

static void tpt_submit(void (*fn)(void))
{
    pthread_t t;
    void *arg;
    memcpy(&arg, &fn, sizeof(arg));
    while (pthread_create(&t, &detached, thread_fn, arg) != 0)
        sched_yield(); /* too many threads at once: let some finish */
}

static void tpt_teardown(void)
{
    pthread_attr_destroy(&detached);
}

static const struct contender contenders[] = {
    {"ternd pool", pool_setup, pool_submit_fn, pool_teardown},
    {"GThreadPool", gpool_setup, gpool_submit, gpool_teardown},
    {"thread per task", tpt_setup, tpt_submit, tpt_teardown},
};

/* ---- measurements ------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median3(double v[RUNS])
{
    qsort(v, RUNS, sizeof(double), cmp_double);
    return v[RUNS / 2];
}

/* Tasks per second for n tiny tasks from one submitting thread, and the
 * mean cost of one submit call (ns). */
static void throughput(const struct contender *c, int workers, long n, double *tps,
                       double *submit_ns)
{
    int64_t t0, t1, t2;

    n_tasks = n;
    counter = 0;
    c->setup(workers);
    t0 = now_ns();
    for (long i = 0; i < n; i++)
        c->submit(tiny);
    t1 = now_ns();
    sem_wait(&all_done);
    t2 = now_ns();
    c->teardown();
    *tps = (double)n / ((double)(t2 - t0) / 1e9);
    *submit_ns = (double)(t1 - t0) / (double)n;
}

/* Submit-to-start latency of one task at a time (idle workers), in µs:
 * median and 99th percentile. */
static void latency(const struct contender *c, int workers, double *p50, double *p99)
{
    static double lat[LAT_SAMPLES];

    c->setup(workers);
    for (int i = 0; i < LAT_SAMPLES; i++) {
        int64_t t0 = now_ns();
        c->submit(probe);
        sem_wait(&one_done);
        lat[i] = (double)(__atomic_load_n(&started_ns, __ATOMIC_ACQUIRE) - t0) / 1000.0;
    }
    c->teardown();
    qsort(lat, LAT_SAMPLES, sizeof(double), cmp_double);
    *p50 = lat[LAT_SAMPLES / 2];
    *p99 = lat[LAT_SAMPLES * 99 / 100];
}

int main(int argc, char **argv)
{
    int workers = argc > 1 ? atoi(argv[1]) : 4;
    long n = argc > 2 ? atol(argv[2]) : 1000000;
    long n_tpt = n / 10; /* a thread each: fewer, or it takes minutes */

    sem_init(&all_done, 0, 0);
    sem_init(&one_done, 0, 0);
    printf("workers %d, tiny tasks %ld (thread per task: %ld), latency samples %d, "
           "medians of %d runs\n\n",
           workers, n, n_tpt, LAT_SAMPLES, RUNS);
    printf("%-16s %14s %14s %14s %14s\n", "", "tasks/s", "submit ns", "start p50 us",
           "start p99 us");
    for (size_t k = 0; k < sizeof(contenders) / sizeof(contenders[0]); k++) {
        const struct contender *c = &contenders[k];
        double tps[RUNS], sub[RUNS], p50[RUNS], p99[RUNS];
        long tasks = strcmp(c->name, "thread per task") == 0 ? n_tpt : n;
        for (int r = 0; r < RUNS; r++) {
            throughput(c, workers, tasks, &tps[r], &sub[r]);
            latency(c, workers, &p50[r], &p99[r]);
        }
        printf("%-16s %14.0f %14.0f %14.1f %14.1f\n", c->name, median3(tps), median3(sub),
               median3(p50), median3(p99));
        fflush(stdout);
    }
    return 0;
}
