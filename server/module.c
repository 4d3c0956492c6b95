/*
 * module.c -- finding, loading and checking module .so files, ordering them
 * by dependency, and running their lifecycle hooks.
 *
 * A module set (tn_modset) is what one config generation asks for: a list
 * of entries in dependency order, each pairing a module instance (tn_mod)
 * with the conf struct built from that generation. Instances outlive a
 * set: on SIGHUP a new set is prepared against the running one, reusing
 * its instances, and tn_modset_reload moves them over. Shared objects are
 * never dlclose'd: a module may leave callbacks registered with libraries
 * we cannot audit, and the memory cost is nil.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core.h"

#define MOD_NAME_MAX 64

/* A shared object loaded once for the life of the process. */
struct loaded {
    struct loaded *next;
    char *path;
    void *handle;
    const struct tn_module *module;
};

struct entry {
    struct tn_mod *mod;
    void *conf;                          /* the conf of this generation */
    const struct tn_conf_node *section;  /* NULL when absent from the file */
    int is_new;                          /* instance created for this set */
    int owns;                            /* this set frees mod at the end */
    int inited;
    int visiting, done;                  /* dependency sort marks */
};

struct tn_modset {
    struct tn_conf *cf;
    struct entry *v;  /* in dependency order once prepared */
    size_t n, cap;
};

static struct loaded *loaded_list;

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int dir_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The directory to search: the configured one, else the build tree or the
 * install tree next to the binary (../lib/ternd/<kind>), else the
 * compile-time default. */
static const char *search_dir(const char *configured, const char *kind, const char *builtin,
                              char *buf, size_t len)
{
    const char *exe;

    if (configured)
        return configured;
    exe = tn_exe_dir();
    if (exe) {
        snprintf(buf, len, "%s/../lib/ternd/%s", exe, kind);
        if (dir_exists(buf))
            return buf;
    }
    return builtin;
}

const char *tn_modules_dir(const struct tn_daemon_conf *dc, char *buf, size_t len)
{
    return search_dir(dc->modules_dir, "modules", TERND_MODULES_DIR, buf, len);
}

const char *tn_plugins_dir(const struct tn_daemon_conf *dc, char *buf, size_t len)
{
    return search_dir(dc->plugins_dir, "plugins", TERND_PLUGINS_DIR, buf, len);
}

/* The size a module built against ABI 1.<minor> must at least have. */
static size_t abi_min_size(unsigned minor)
{
    (void)minor; /* 1.0 is the only minor so far */
    return sizeof(struct tn_module);
}

/* dlopen path once and validate its descriptor. On failure reports at node
 * (with the key path already pushed) and returns NULL. */
static const struct tn_module *load_so(struct tn_conf *cf, const struct tn_conf_node *node,
                                       const char *path, const char *want_name)
{
    struct loaded *l;
    const struct tn_module *m;
    void *h;
    unsigned major, minor;

    for (l = loaded_list; l; l = l->next)
        if (strcmp(l->path, path) == 0)
            return l->module;

    h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        tn_conf_error(cf, node, "cannot load %s: %s", path, dlerror());
        return NULL;
    }
    m = dlsym(h, "ternd_module");
    if (!m) {
        tn_conf_error(cf, node, "%s: not a ternd module (no symbol ternd_module)", path);
        goto fail;
    }
    major = m->abi >> 16;
    minor = m->abi & 0xffff;
    if (major != TN_ABI_MAJOR || minor > TN_ABI_MINOR) {
        tn_conf_error(cf, node, "%s: module ABI %u.%u, this ternd speaks %d.%d: rebuild it", path,
                      major, minor, TN_ABI_MAJOR, TN_ABI_MINOR);
        goto fail;
    }
    if (m->size < abi_min_size(minor)) {
        tn_conf_error(cf, node, "%s: module descriptor is %u bytes, ABI %u.%u needs %zu", path,
                      m->size, major, minor, abi_min_size(minor));
        goto fail;
    }
    if (!m->name || strcmp(m->name, want_name) != 0) {
        tn_conf_error(cf, node, "%s: declares module \"%s\", expected \"%s\"", path,
                      m->name ? m->name : "(null)", want_name);
        goto fail;
    }
    if (m->conf_size && !m->conf_table) {
        tn_conf_error(cf, node, "%s: has a conf struct but no key table", path);
        goto fail;
    }
    l = calloc(1, sizeof(*l));
    if (!l || !(l->path = strdup(path))) {
        free(l);
        tn_conf_error(cf, node, "out of memory");
        goto fail;
    }
    l->handle = h;
    l->module = m;
    l->next = loaded_list;
    loaded_list = l;
    return m;
fail:
    dlclose(h);
    return NULL;
}

static int valid_name(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= '0' && s[n] <= '9') || s[n] == '_'))
            return 0;
    return n > 0 && n < MOD_NAME_MAX;
}

static struct entry *find_entry(struct tn_modset *ms, const char *name)
{
    for (size_t i = 0; i < ms->n; i++)
        if (strcmp(ms->v[i].mod->name, name) == 0)
            return &ms->v[i];
    return NULL;
}

static struct tn_mod *find_running(struct tn_modset *ms, const char *name)
{
    struct entry *e = ms ? find_entry(ms, name) : NULL;
    return e ? e->mod : NULL;
}

static struct entry *add_entry(struct tn_modset *ms)
{
    if (ms->n == ms->cap) {
        size_t cap = ms->cap ? ms->cap * 2 : 8;
        struct entry *v = realloc(ms->v, cap * sizeof(*v));
        if (!v)
            return NULL;
        ms->v = v;
        ms->cap = cap;
    }
    memset(&ms->v[ms->n], 0, sizeof(ms->v[0]));
    return &ms->v[ms->n++];
}

/* Find NAME.so (modules dir first, then plugins dir) or take an explicit
 * path, load it and add an entry. */
static struct entry *add_module(struct tn_modset *ms, struct tn_modset *reuse,
                                const struct tn_conf_node *node, const char *name,
                                const char *explicit_path, const char *mdir, const char *pdir)
{
    struct tn_conf *cf = ms->cf;
    char path[PATH_MAX];
    const struct tn_module *m;
    struct tn_mod *mod;
    struct entry *e;

    if ((e = find_entry(ms, name)))
        return e;
    if (explicit_path) {
        snprintf(path, sizeof(path), "%s", explicit_path);
    } else {
        snprintf(path, sizeof(path), "%s/%s.so", mdir, name);
        if (!file_exists(path) && pdir) {
            snprintf(path, sizeof(path), "%s/%s.so", pdir, name);
            if (!file_exists(path)) {
                tn_conf_error(cf, node, "unknown module: no %s.so in %s or %s", name, mdir, pdir);
                return NULL;
            }
        } else if (!file_exists(path)) {
            tn_conf_error(cf, node, "unknown module: no %s.so in %s", name, mdir);
            return NULL;
        }
    }
    if (!(m = load_so(cf, node, path, name)))
        return NULL;

    mod = find_running(reuse, name);
    if (!(e = add_entry(ms)))
        goto oom;
    if (!mod) {
        mod = calloc(1, sizeof(*mod));
        if (!mod) {
            ms->n--;
            goto oom;
        }
        mod->module = m;
        for (struct loaded *l = loaded_list; l; l = l->next)
            if (l->module == m)
                mod->path = l->path, mod->name = m->name;
        e->is_new = 1;
        e->owns = 1;
    }
    e->mod = mod;
    return e;
oom:
    tn_conf_error(cf, node, "out of memory");
    return NULL;
}

/* Add every missing dependency (with its defaults); the list grows while
 * we walk it, so dependencies of dependencies are found too. */
static void add_deps(struct tn_modset *ms, struct tn_modset *reuse, const char *mdir,
                     const char *pdir)
{
    for (size_t i = 0; i < ms->n; i++) {
        const char *const *deps = ms->v[i].mod->module->deps;
        for (; deps && *deps; deps++) {
            if (find_entry(ms, *deps))
                continue;
            tn_conf_push_key(ms->cf, ms->v[i].mod->name);
            add_module(ms, reuse, ms->v[i].section, *deps, NULL, mdir, pdir);
            tn_conf_pop(ms->cf);
        }
    }
}

/* Depth-first topological sort over deps into out; reports cycles. */
static int visit(struct tn_modset *ms, struct entry *e, struct entry *out, size_t *nout)
{
    if (e->done)
        return 0;
    if (e->visiting) {
        tn_conf_push_key(ms->cf, e->mod->name);
        tn_conf_error(ms->cf, e->section, "dependency cycle through module \"%s\"",
                      e->mod->name);
        tn_conf_pop(ms->cf);
        return TN_ECONF;
    }
    e->visiting = 1;
    for (const char *const *deps = e->mod->module->deps; deps && *deps; deps++)
        if (visit(ms, find_entry(ms, *deps), out, nout) != 0)
            return TN_ECONF;
    e->visiting = 0;
    e->done = 1;
    out[(*nout)++] = *e;
    return 0;
}

static int sort_by_deps(struct tn_modset *ms)
{
    struct entry *out = calloc(ms->n + 1, sizeof(*out));
    size_t nout = 0;
    int rc = 0;

    if (!out)
        return TN_ENOMEM;
    /* Services every other module may use from its scripts (the pool
     * module's ternd.pool) come up first; then dependency order, and
     * file order among equals. */
    for (size_t i = 0; i < ms->n && rc == 0; i++)
        if (strcmp(ms->v[i].mod->name, "pool") == 0)
            rc = visit(ms, &ms->v[i], out, &nout);
    for (size_t i = 0; i < ms->n && rc == 0; i++)
        rc = visit(ms, &ms->v[i], out, &nout);
    if (rc == 0 && nout)
        memcpy(ms->v, out, nout * sizeof(*out));
    free(out);
    return rc;
}

/* Plugins: every .so of the plugins dir and every daemon.plugins entry. */
static void add_plugins(struct tn_modset *ms, struct tn_modset *reuse,
                        const struct tn_daemon_conf *dc, const char *mdir, const char *pdir)
{
    const struct tn_conf_node *root = tn_conf_root(ms->cf);
    const struct tn_conf_node *daemon = root ? tn_conf_map_get(root, "daemon") : NULL;
    DIR *d;
    struct dirent *de;

    if (pdir && (d = opendir(pdir))) {
        while ((de = readdir(d))) {
            size_t len = strlen(de->d_name);
            char name[MOD_NAME_MAX], path[PATH_MAX];
            if (len < 4 || strcmp(de->d_name + len - 3, ".so") != 0 || len - 3 >= sizeof(name))
                continue;
            memcpy(name, de->d_name, len - 3);
            name[len - 3] = '\0';
            if ((size_t)snprintf(path, sizeof(path), "%s/%s", pdir, de->d_name) >= sizeof(path))
                continue;
            tn_conf_push_key(ms->cf, "daemon");
            tn_conf_push_key(ms->cf, "plugins_dir");
            add_module(ms, reuse, daemon ? tn_conf_map_get(daemon, "plugins_dir") : NULL, name,
                       path, mdir, pdir);
            tn_conf_pop(ms->cf);
            tn_conf_pop(ms->cf);
        }
        closedir(d);
    }
    for (size_t i = 0; i < dc->plugins.n; i++) {
        const char *p = dc->plugins.v[i], *base = strrchr(p, '/');
        char name[MOD_NAME_MAX];
        size_t len;
        const struct tn_conf_node *pl = daemon ? tn_conf_map_get(daemon, "plugins") : NULL;
        const struct tn_conf_node *at = pl && pl->type == TN_NODE_SEQ && i < pl->n ? pl->items[i] : pl;

        base = base ? base + 1 : p;
        len = strlen(base);
        if (len > 3 && strcmp(base + len - 3, ".so") == 0)
            len -= 3;
        if (len >= sizeof(name))
            len = sizeof(name) - 1;
        memcpy(name, base, len);
        name[len] = '\0';
        tn_conf_push_key(ms->cf, "daemon");
        tn_conf_push_key(ms->cf, "plugins");
        tn_conf_push_index(ms->cf, i);
        add_module(ms, reuse, at, name, strchr(p, '/') ? p : NULL, mdir, pdir);
        tn_conf_pop(ms->cf);
        tn_conf_pop(ms->cf);
        tn_conf_pop(ms->cf);
    }
}

struct tn_modset *tn_modset_prepare(struct tn_conf *cf, const struct tn_daemon_conf *dc,
                                    struct tn_modset *reuse)
{
    const struct tn_conf_node *root = tn_conf_root(cf);
    char mbuf[PATH_MAX], pbuf[PATH_MAX];
    const char *mdir = tn_modules_dir(dc, mbuf, sizeof(mbuf));
    const char *pdir = tn_plugins_dir(dc, pbuf, sizeof(pbuf));
    struct tn_modset *ms = calloc(1, sizeof(*ms));
    int base = tn_conf_errors(cf); /* the daemon section's, reported too */

    if (!ms)
        return NULL;
    ms->cf = cf;
    if (!dir_exists(pdir))
        pdir = NULL;

    /* 1. one module per top-level section */
    for (size_t i = 0; root && i < root->n; i++) {
        const char *key = root->keys[i]->value;
        if (strcmp(key, "daemon") == 0)
            continue;
        tn_conf_push_key(cf, key);
        if (!valid_name(key)) {
            tn_conf_error(cf, root->keys[i], "unknown section (module names are [a-z0-9_]+)");
        } else {
            struct entry *e = add_module(ms, reuse, root->keys[i], key, NULL, mdir, pdir);
            if (e)
                e->section = root->items[i];
        }
        tn_conf_pop(cf);
    }
    add_plugins(ms, reuse, dc, mdir, pdir);
    if (tn_conf_errors(cf) > base)
        return ms;

    /* 2. dependencies, then dependency order */
    add_deps(ms, reuse, mdir, pdir);
    if (tn_conf_errors(cf) > base || sort_by_deps(ms) != 0)
        return ms;

    /* 3. defaults, the section's keys, cross-checks */
    for (size_t i = 0; i < ms->n; i++) {
        struct entry *e = &ms->v[i];
        const struct tn_module *m = e->mod->module;
        int before = tn_conf_errors(cf);

        e->conf = m->conf_size ? tn_conf_alloc(cf, m->conf_size) : NULL;
        if (m->conf_size && !e->conf) {
            tn_conf_error(cf, e->section, "out of memory");
            continue;
        }
        tn_conf_set_section(cf, m->name, e->section);
        if (m->create_conf && m->create_conf(e->mod, e->conf) != 0)
            tn_conf_error(cf, e->section, "module failed to set its defaults");
        if (e->section && !tn_conf_is_null(e->section)) {
            if (!m->conf_table)
                tn_conf_error(cf, e->section, "module %s takes no settings", m->name);
            else
                tn_conf_apply(cf, e->section, m->conf_table, e->conf);
        }
        if (tn_conf_errors(cf) == before && m->check_conf)
            m->check_conf(e->mod, cf, e->conf);
        tn_conf_set_section(cf, NULL, NULL);
    }
    return ms;
}

static void run_stop(struct tn_modset *ms, size_t from, size_t upto)
{
    for (size_t i = upto; i-- > from;) {
        struct tn_mod *m = ms->v[i].mod;
        if (m->started) {
            if (m->module->stop) {
                int rc = m->module->stop(m);
                if (rc != 0)
                    tn_log_error("core", "module %s: stop: %s", m->name, tn_strerror(rc));
            }
            m->started = 0;
        }
    }
}

static void run_fini(struct tn_modset *ms, size_t from, size_t upto)
{
    for (size_t i = upto; i-- > from;) {
        struct entry *e = &ms->v[i];
        if (e->inited) {
            if (e->mod->module->fini)
                e->mod->module->fini(e->mod);
            e->inited = 0;
        }
    }
}

/* init then start, for the entries [from, to) */
static int run_init_start(struct tn_modset *ms, size_t from, size_t to)
{
    size_t i;
    int rc = 0;

    for (i = from; i < to; i++) {
        struct entry *e = &ms->v[i];
        e->mod->conf = e->conf;
        if (e->mod->module->init && (rc = e->mod->module->init(e->mod)) != 0) {
            tn_log_error("core", "module %s (%s): init failed: %s", e->mod->name, e->mod->path,
                         tn_strerror(rc));
            goto fail;
        }
        e->inited = 1;
    }
    for (i = from; i < to; i++) {
        struct tn_mod *m = ms->v[i].mod;
        if (m->module->start && (rc = m->module->start(m)) != 0) {
            tn_log_error("core", "module %s (%s): start failed: %s", m->name, m->path,
                         tn_strerror(rc));
            goto fail;
        }
        m->started = 1;
        tn_log_info("core", "module %s %s started", m->name,
                    m->module->version ? m->module->version : "");
    }
    return 0;
fail:
    run_stop(ms, from, to);
    run_fini(ms, from, to);
    return rc ? rc : TN_EMODULE;
}

int tn_modset_init_start(struct tn_modset *ms) { return run_init_start(ms, 0, ms->n); }

void tn_modset_stop(struct tn_modset *ms) { run_stop(ms, 0, ms->n); }

void tn_modset_fini(struct tn_modset *ms) { run_fini(ms, 0, ms->n); }

int tn_modset_reload(struct tn_modset *running, struct tn_modset *next)
{
    int rc = 0;

    /* modules the new config no longer names: stop and forget them */
    for (size_t i = running->n; i-- > 0;) {
        struct entry *old = &running->v[i];
        if (!find_entry(next, old->mod->name)) {
            struct tn_mod *m = old->mod;
            tn_log_info("core", "module %s removed by the new configuration", m->name);
            if (m->started && m->module->stop)
                m->module->stop(m);
            m->started = 0;
            if (old->inited && m->module->fini)
                m->module->fini(m);
            old->inited = 0;
            free(m);
            old->mod = NULL;
        }
    }
    /* kept modules adopt their new conf, in dependency order */
    for (size_t i = 0; i < next->n; i++) {
        struct entry *e = &next->v[i];
        struct tn_mod *m = e->mod;
        if (!e->is_new && !m->started)
            e->is_new = 1; /* its init or start failed last time: start it afresh */
        if (e->is_new)
            continue;
        if (m->module->reload) {
            int r = m->module->reload(m, e->conf);
            if (r != 0)
                tn_log_warn("core", "module %s: reload: %s", m->name, tn_strerror(r));
        }
        m->conf = e->conf;
        e->inited = 1;
    }
    /* new modules start like at boot */
    for (size_t i = 0; i < next->n; i++) {
        struct entry *e = &next->v[i];
        if (e->is_new) {
            int r = run_init_start(next, i, i + 1);
            if (r != 0)
                rc = r;
            else
                e->is_new = 0;
        }
    }
    /* the instances now belong to next */
    for (size_t i = 0; i < running->n; i++)
        running->v[i].mod = NULL;
    for (size_t i = 0; i < next->n; i++)
        next->v[i].owns = 1;
    return rc;
}

void tn_modset_free(struct tn_modset *ms)
{
    if (!ms)
        return;
    for (size_t i = 0; i < ms->n; i++) {
        struct entry *e = &ms->v[i];
        /* a set frees the instances it owns once they are stopped and
         * finished (or were never started: a rejected reload) */
        if (e->mod && e->owns && !e->inited && !e->mod->started)
            free(e->mod);
    }
    free(ms->v);
    free(ms);
}

void tn_modset_stats(struct tn_modset *ms, struct tn_stats_out *out)
{
    for (size_t i = 0; i < ms->n; i++) {
        struct tn_mod *m = ms->v[i].mod;
        if (m && m->started && m->module->stats)
            m->module->stats(m, out);
    }
}

struct tn_conf *tn_modset_conf(struct tn_modset *ms) { return ms->cf; }

static struct tn_modset *current_set;

void tn_modset_set_current(struct tn_modset *ms) { current_set = ms; }

struct tn_modset *tn_modset_current(void) { return current_set; }

struct tn_mod *tn_module_find(const char *name) { return find_running(current_set, name); }
