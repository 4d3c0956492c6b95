/*
 * stats.h -- one registry of counters and gauges, exported by the core as
 * JSON (/stats), text and Prometheus (/metrics).
 *
 * Fixed metrics are declared once as static struct tn_stat and registered;
 * updates are atomic (any thread). Metrics with labels (per topic, per
 * pool, ...) are emitted on demand by a module's stats hook through
 * tn_stats_emit. Names follow Prometheus rules: ternd_<module>_<what>,
 * counters end in _total.
 */
#ifndef TERND_STATS_H
#define TERND_STATS_H

#include <stdint.h>
#include <ternd/core.h>

enum { TN_STAT_COUNTER = 1, TN_STAT_GAUGE = 2 };

struct tn_stat {
    const char *name;
    const char *help;
    int type;
    int64_t value;          /* update with the functions below */
    struct tn_stat *next;   /* registry link (core) */
};

#define TN_STAT_DECL(var, name, type, help) static struct tn_stat var = {name, help, type, 0, 0}

/* Register s (static storage, or alive until unregistered). Loop thread. */
TN_API void tn_stat_register(struct tn_stat *s);
TN_API void tn_stat_unregister(struct tn_stat *s);

static inline void tn_stat_add(struct tn_stat *s, int64_t n)
{
    __atomic_add_fetch(&s->value, n, __ATOMIC_RELAXED);
}
static inline void tn_stat_inc(struct tn_stat *s) { tn_stat_add(s, 1); }
static inline void tn_stat_dec(struct tn_stat *s) { tn_stat_add(s, -1); }
static inline void tn_stat_set(struct tn_stat *s, int64_t v)
{
    __atomic_store_n(&s->value, v, __ATOMIC_RELAXED);
}
static inline int64_t tn_stat_get(const struct tn_stat *s)
{
    return __atomic_load_n(&s->value, __ATOMIC_RELAXED);
}

struct tn_stats_out;

/* Emit one sample from a stats hook. labels: NULL or {"k","v",...,NULL}.
 * Samples with the same name must have the same type and help. */
TN_API void tn_stats_emit(struct tn_stats_out *o, const char *name, int type,
                          const char *help, const char *const *labels, double value);

/* Every metric at this moment, as /stats and /metrics show them: the
 * registered ones, the process gauges and what each started module's stats
 * hook emits, grouped by name. For plugins that export elsewhere (statsd,
 * files). Loop thread; it runs the stats hooks, so never call it from one. */
struct tn_stats_sample {
    const char *name;
    const char *help;
    int type;                  /* TN_STAT_COUNTER or TN_STAT_GAUGE */
    const char *const *labels; /* NULL or {"k","v",...,NULL} */
    double value;
};
/* Calls fn once per sample; the sample and its strings live only during
 * the call. 0 or TN_ENOMEM (then fn was not called). */
typedef void (*tn_stats_visit_pt)(const struct tn_stats_sample *s, void *ud);
TN_API int tn_stats_visit(tn_stats_visit_pt fn, void *ud);

/* Append every metric to b as JSON (the /stats body), Prometheus text
 * exposition with HELP and TYPE (/metrics) or plain "name{labels} value"
 * lines. 0 or TN_ENOMEM. */
enum { TN_STATS_JSON = 1, TN_STATS_PROMETHEUS, TN_STATS_TEXT };
struct tn_buf;
TN_API int tn_stats_render(struct tn_buf *b, int format);

#endif
