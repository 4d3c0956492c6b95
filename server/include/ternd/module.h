/*
 * module.h -- the module ABI.
 *
 * A module (or plugin) is a shared object exporting exactly one symbol:
 *
 *     TN_API const struct tn_module ternd_module = {
 *         TN_MODULE_HEAD("broker", "0.1.0"), ...
 *     };
 *
 * The loader refuses it when abi's major differs from TN_ABI_MAJOR or its
 * minor is newer than the core's, or when size is smaller than the fields
 * that minor promises. New hooks only ever go at the end of the struct.
 *
 * Lifecycle, every hook optional (NULL does nothing), run on the loop thread
 * in dependency order (stop and fini in reverse):
 *   create_conf  fill defaults into the zeroed conf struct (conf_size bytes)
 *   (the core applies conf_table to the module's YAML section)
 *   check_conf   cross-field checks; also run by `ternd -t`
 *   init         build runtime state (m->data); may fail
 *   start        open listeners, start timers; may fail (core stops the rest)
 *   stop         stop accepting, flush to disk; graceful stop begins here
 *   fini         free everything; the .so may be unloaded after it
 *   reload       SIGHUP with a new conf that passed check_conf: adopt what
 *                can change at run time, log what needs a restart. It cannot
 *                refuse (refuse in check_conf, which rejects the whole
 *                reload): the core swaps m->conf to new_conf afterwards and
 *                frees the old config, so keep no pointer into the old one.
 *                A negative return is logged.
 *   stats        emit current metrics for /stats and /metrics
 * Hooks return 0 or a negative TN_* code; they never exit().
 */
#ifndef TERND_MODULE_H
#define TERND_MODULE_H

#include <stddef.h>
#include <stdint.h>
#include <ternd/core.h>

#define TN_ABI_MAJOR 1
#define TN_ABI_MINOR 0
#define TN_ABI_VERSION ((TN_ABI_MAJOR << 16) | TN_ABI_MINOR)

struct tn_conf;
struct tn_conf_cmd;
struct tn_stats_out;
struct tn_module;

/* One loaded module instance. Owned by the core. */
struct tn_mod {
    const struct tn_module *module;
    const char *name;   /* module name (also its YAML section) */
    const char *path;   /* the .so it came from */
    void *conf;         /* current conf struct; owned by the config generation */
    void *data;         /* the module's private state; the module owns it */
    int started;        /* core bookkeeping: start succeeded */
};

struct tn_module {
    uint32_t abi;       /* TN_ABI_VERSION */
    uint32_t size;      /* sizeof(struct tn_module) */
    const char *name;
    const char *version;
    const char *const *deps;          /* NULL-terminated module names, or NULL */
    const struct tn_conf_cmd *conf_table; /* keys of the module's section */
    size_t conf_size;                 /* size of the conf struct */

    int (*create_conf)(struct tn_mod *m, void *conf);
    int (*check_conf)(struct tn_mod *m, struct tn_conf *cf, void *conf);
    int (*init)(struct tn_mod *m);
    int (*start)(struct tn_mod *m);
    int (*stop)(struct tn_mod *m);
    void (*fini)(struct tn_mod *m);
    int (*reload)(struct tn_mod *m, void *new_conf);
    void (*stats)(struct tn_mod *m, struct tn_stats_out *out);
};

#define TN_MODULE_HEAD(name, version)                                          \
    TN_ABI_VERSION, (uint32_t)sizeof(struct tn_module), (name), (version)

/* The instance of a loaded module by name, or NULL. */
TN_API struct tn_mod *tn_module_find(const char *name);

#endif
