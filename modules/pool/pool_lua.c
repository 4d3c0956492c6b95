/*
 * pool_lua.c -- ternd.pool for Lua: submit("pool", "module.func", args...,
 * [callback]) runs require(module).func(args...) in a Lua state of its own
 * on a worker thread and brings the results back on the loop thread, to
 * the callback or by resuming the calling coroutine. Values cross between
 * the two states as a deep copy (nil, booleans, numbers, strings and
 * tables of these), never as shared objects.
 *
 * A loop-thread state may close (module reload, stop) while its tasks are
 * still out: each state carries a token whose __gc marks it dead, and a
 * result for a dead state is dropped instead of touching freed memory.
 */
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#include "pool_module.h"

#define COPY_DEPTH 64        /* nesting of copied tables */
#define COPY_MAX (64u << 20) /* bytes of copied arguments or results */
#define DIRS_MAX 64          /* script dirs added to the workers' package.path */
#define TOKEN_KEY "ternd.pool.token"
#define WAITING_KEY "ternd.pool.waiting"
#define BOX_META "ternd.pool.box"

/* ---- shared by the loop and the workers (guarded by shared_lock) ---------------- */

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tn_lua_conf worker_conf; /* script always NULL */
static uint64_t worker_epoch;          /* bumped on reload: workers rebuild their state */
static char *dirs[DIRS_MAX];
static size_t ndirs;
static uint64_t dirs_gen;
static struct pool_mod *lua_pm; /* loop thread only */

/* A worker thread's own Lua state. */
struct wstate {
    struct tn_lua *lua;
    uint64_t epoch, dirs_gen;
    char *base_path; /* package.path as the state started */
};

/* Each worker thread's Lua state, under a pthread key: the module is
 * dlopen()ed, where __thread variables mean dynamic TLS (and trip
 * LeakSanitizer's scan of it). */
static pthread_key_t ws_key;
static pthread_once_t ws_key_once = PTHREAD_ONCE_INIT;

static void ws_key_make(void)
{
    (void)pthread_key_create(&ws_key, NULL);
}

/* A loop-thread state's liveness, shared by the tasks it submitted. */
struct token {
    int alive;
    int refs;
    lua_State *L; /* the main thread of the state */
    char *dir;    /* the state's script dir, once known (see caller_dir) */
};

struct lua_job {
    struct token *tok;
    int cb_ref, co_ref; /* LUA_NOREF when unused */
    int orphan;         /* its coroutine was resumed by someone else */
    int nargs, nres;
    int failed; /* res holds the error message */
    const char *pool, *target, *modname, *func;
    struct tn_buf args, res;
    char names[]; /* the strings above */
};

/* ---- deep copy ----------------------------------------------------------------- */

struct copy {
    struct tn_buf *b;
    int seen; /* stack index of the table of tables being copied */
    int depth;
    char err[128];
};

static int copy_fail(struct copy *c, const char *msg)
{
    snprintf(c->err, sizeof(c->err), "%s", msg);
    return -1;
}

static int put(struct copy *c, const void *p, size_t n)
{
    if (tn_buf_rlen(c->b) + n > COPY_MAX)
        return copy_fail(c, "more than 64 MiB to copy");
    if (tn_buf_append(c->b, p, n) != 0)
        return copy_fail(c, "out of memory");
    return 0;
}

static int put_tag(struct copy *c, char tag)
{
    return put(c, &tag, 1);
}

static int encode(lua_State *L, int idx, struct copy *c);

static int encode_table(lua_State *L, int idx, struct copy *c)
{
    uint32_t n = 0;
    size_t at;

    if (c->depth >= COPY_DEPTH)
        return copy_fail(c, "tables nested too deep");
    lua_pushvalue(L, idx);
    if (lua_rawget(L, c->seen) != LUA_TNIL) {
        lua_pop(L, 1);
        return copy_fail(c, "a table contains itself");
    }
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, c->seen);
    c->depth++;
    at = tn_buf_rlen(c->b);
    if (put_tag(c, 'T') != 0 || put(c, &n, sizeof(n)) != 0)
        return -1;
    luaL_checkstack(L, 4, "copying a table");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int top = lua_gettop(L);
        if (encode(L, top - 1, c) != 0 || encode(L, top, c) != 0) {
            lua_pop(L, 2);
            return -1;
        }
        lua_pop(L, 1);
        n++;
    }
    memcpy(tn_buf_rptr(c->b) + at + 1, &n, sizeof(n));
    c->depth--;
    lua_pushvalue(L, idx);
    lua_pushnil(L);
    lua_rawset(L, c->seen); /* shared (not cyclic) subtables may repeat */
    return 0;
}

static int encode(lua_State *L, int idx, struct copy *c)
{
    size_t len;
    const char *s;

    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return put_tag(c, 'n');
    case LUA_TBOOLEAN:
        return put_tag(c, lua_toboolean(L, idx) ? 't' : 'f');
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            lua_Integer i = lua_tointeger(L, idx);
            return put_tag(c, 'i') != 0 ? -1 : put(c, &i, sizeof(i));
        } else {
            lua_Number d = lua_tonumber(L, idx);
            return put_tag(c, 'd') != 0 ? -1 : put(c, &d, sizeof(d));
        }
    case LUA_TSTRING: {
        uint32_t n32;
        s = lua_tolstring(L, idx, &len);
        if (len > COPY_MAX)
            return copy_fail(c, "more than 64 MiB to copy");
        n32 = (uint32_t)len;
        if (put_tag(c, 's') != 0 || put(c, &n32, sizeof(n32)) != 0)
            return -1;
        return put(c, s, len);
    }
    case LUA_TTABLE:
        return encode_table(L, lua_absindex(L, idx), c);
    default:
        snprintf(c->err, sizeof(c->err), "cannot copy a %s value", luaL_typename(L, idx));
        return -1;
    }
}

/* Encode the values at [first, first + n) into b. 0, or -1 with the
 * reason in err (naming the value as "<what> <i>"). */
static int encode_values(lua_State *L, int first, int n, struct tn_buf *b, const char *what,
                         char *err, size_t errlen)
{
    struct copy c = {b, 0, 0, ""};

    lua_newtable(L);
    c.seen = lua_gettop(L);
    for (int i = 0; i < n; i++) {
        if (encode(L, first + i, &c) != 0) {
            snprintf(err, errlen, "%s %d: %s", what, i + 1, c.err);
            lua_settop(L, c.seen - 1);
            return -1;
        }
    }
    lua_settop(L, c.seen - 1);
    return 0;
}

struct reader {
    const char *p;
    size_t n, pos;
};

static int take(struct reader *r, void *out, size_t n)
{
    if (r->n - r->pos < n)
        return -1;
    memcpy(out, r->p + r->pos, n);
    r->pos += n;
    return 0;
}

/* Push one decoded value (may raise a Lua memory error). 0 or -1. */
static int decode(lua_State *L, struct reader *r)
{
    char tag;
    uint32_t n;

    if (!lua_checkstack(L, 3) || take(r, &tag, 1) != 0)
        return -1;
    switch (tag) {
    case 'n':
        lua_pushnil(L);
        return 0;
    case 't':
        lua_pushboolean(L, 1);
        return 0;
    case 'f':
        lua_pushboolean(L, 0);
        return 0;
    case 'i': {
        lua_Integer i;
        if (take(r, &i, sizeof(i)) != 0)
            return -1;
        lua_pushinteger(L, i);
        return 0;
    }
    case 'd': {
        lua_Number d;
        if (take(r, &d, sizeof(d)) != 0)
            return -1;
        lua_pushnumber(L, d);
        return 0;
    }
    case 's':
        if (take(r, &n, sizeof(n)) != 0 || r->n - r->pos < n)
            return -1;
        lua_pushlstring(L, r->p + r->pos, n);
        r->pos += n;
        return 0;
    case 'T':
        if (take(r, &n, sizeof(n)) != 0)
            return -1;
        lua_createtable(L, 0, n > 1024 ? 1024 : (int)n);
        for (uint32_t i = 0; i < n; i++) {
            if (decode(L, r) != 0 || decode(L, r) != 0)
                return -1;
            lua_rawset(L, -3);
        }
        return 0;
    }
    return -1;
}

static int decode_values(lua_State *L, const struct tn_buf *b, int n)
{
    struct reader r = {tn_buf_rptr(b), tn_buf_rlen(b), 0};

    for (int i = 0; i < n; i++)
        if (decode(L, &r) != 0)
            return luaL_error(L, "ternd.pool: corrupt copy");
    return n;
}

/* ---- jobs ------------------------------------------------------------------------ */

static void token_unref(struct token *t)
{
    if (--t->refs == 0) {
        free(t->dir);
        free(t);
    }
}

static struct lua_job *job_new(const char *pool, const char *target)
{
    size_t lp = strlen(pool) + 1, lt = strlen(target) + 1;
    struct lua_job *j = calloc(1, sizeof(*j) + lp + 2 * lt);
    char *s, *dot;

    if (!j)
        return NULL;
    j->cb_ref = j->co_ref = LUA_NOREF;
    s = j->names;
    j->pool = memcpy(s, pool, lp);
    j->target = memcpy(s + lp, target, lt);
    j->modname = memcpy(s + lp + lt, target, lt);
    dot = strrchr(s + lp + lt, '.');
    *dot = '\0';
    j->func = dot + 1;
    return j;
}

/* Free j; drop its registry references while its state is alive. Loop. */
static void job_free(struct lua_job *j)
{
    if (j->tok) {
        if (j->tok->alive) {
            luaL_unref(j->tok->L, LUA_REGISTRYINDEX, j->cb_ref);
            luaL_unref(j->tok->L, LUA_REGISTRYINDEX, j->co_ref);
        }
        token_unref(j->tok);
    }
    tn_buf_free(&j->args);
    tn_buf_free(&j->res);
    free(j);
}

static void job_set_error(struct lua_job *j, const char *msg)
{
    tn_buf_reset(&j->res);
    tn_buf_append(&j->res, msg, strlen(msg));
    j->failed = 1;
}

/* ---- the worker side -------------------------------------------------------------- */

static int worker_open(lua_State *L, void *ud)
{
    /* timers belong to the loop thread */
    lua_pushnil(L);
    lua_setfield(L, -2, "timer");
    return 0;
}

static void wstate_free(void)
{
    struct wstate *ws;

    pthread_once(&ws_key_once, ws_key_make);
    if (!(ws = pthread_getspecific(ws_key)))
        return;
    tn_lua_destroy(ws->lua);
    free(ws->base_path);
    free(ws);
    pthread_setspecific(ws_key, NULL);
}

/* This thread's state, rebuilt when the config changed. */
static struct wstate *worker_state(char *err, size_t errlen)
{
    struct wstate *ws;
    struct tn_lua_conf lc;
    uint64_t epoch;
    lua_State *L;

    pthread_mutex_lock(&shared_lock);
    epoch = worker_epoch;
    lc = worker_conf;
    pthread_mutex_unlock(&shared_lock);
    pthread_once(&ws_key_once, ws_key_make);
    ws = pthread_getspecific(ws_key);
    if (ws && ws->epoch == epoch)
        return ws;
    wstate_free();
    if (!(ws = calloc(1, sizeof(*ws)))) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* our opener leaves ternd.pool out of worker states (not the loop thread) */
    if (!(ws->lua = tn_lua_create("pool", &lc, worker_open, NULL, err, errlen))) {
        free(ws);
        return NULL;
    }
    if (pthread_setspecific(ws_key, ws) != 0) {
        tn_lua_destroy(ws->lua);
        free(ws);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ws->epoch = epoch;
    L = tn_lua_state(ws->lua);
    lua_getglobal(L, "package");
    if (lua_istable(L, -1) && lua_getfield(L, -1, "path") == LUA_TSTRING)
        ws->base_path = strdup(lua_tostring(L, -1));
    lua_settop(L, 0);
    return ws;
}

/* Put the script dirs submitters came from in front of package.path. */
static void update_path(struct wstate *w)
{
    struct tn_buf b = TN_BUF_INIT;
    lua_State *L = tn_lua_state(w->lua);

    pthread_mutex_lock(&shared_lock);
    if (w->dirs_gen == dirs_gen) {
        pthread_mutex_unlock(&shared_lock);
        return;
    }
    for (size_t i = 0; i < ndirs; i++)
        tn_buf_printf(&b, "%s/?.lua;%s/?/init.lua;", dirs[i], dirs[i]);
    w->dirs_gen = dirs_gen;
    pthread_mutex_unlock(&shared_lock);
    tn_buf_printf(&b, "%s", w->base_path ? w->base_path : "");
    lua_getglobal(L, "package");
    if (lua_istable(L, -1)) {
        lua_pushlstring(L, tn_buf_rptr(&b), tn_buf_rlen(&b));
        lua_setfield(L, -2, "path");
    }
    lua_settop(L, 0);
    tn_buf_free(&b);
}

static int job_error_from_stack(lua_State *L, struct lua_job *j)
{
    const char *msg = lua_tostring(L, -1);
    char buf[96];

    if (!msg) {
        snprintf(buf, sizeof(buf), "(error object is a %s value)", luaL_typename(L, -1));
        msg = buf;
    }
    job_set_error(j, msg);
    return 0;
}

/* Protected (under tn_lua_pcall's budget): require(module).func(args...),
 * results copied into j->res. Task errors land in j, not in a throw. */
static int job_call(lua_State *L)
{
    struct lua_job *j = lua_touserdata(L, 1);
    char err[160];
    int nres;

    lua_settop(L, 0);
    lua_getglobal(L, "require");
    lua_pushstring(L, j->modname);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK)
        return job_error_from_stack(L, j);
    if (!lua_istable(L, -1)) {
        snprintf(err, sizeof(err), "module '%s' did not return a table", j->modname);
        job_set_error(j, err);
        return 0;
    }
    if (lua_getfield(L, -1, j->func) != LUA_TFUNCTION) {
        snprintf(err, sizeof(err), "%s is not a function", j->target);
        job_set_error(j, err);
        return 0;
    }
    lua_remove(L, 1);
    decode_values(L, &j->args, j->nargs);
    if (lua_pcall(L, j->nargs, LUA_MULTRET, 0) != LUA_OK)
        return job_error_from_stack(L, j);
    nres = lua_gettop(L);
    if (encode_values(L, 1, nres, &j->res, "result", err, sizeof(err)) != 0) {
        job_set_error(j, err);
        return 0;
    }
    j->nres = nres;
    return 0;
}

/* The pool task (worker thread). */
static int job_run(void *arg)
{
    struct lua_job *j = arg;
    struct wstate *w;
    char err[512], what[160];

    if (!(w = worker_state(err, sizeof(err)))) {
        job_set_error(j, err);
    } else {
        lua_State *L = tn_lua_state(w->lua);
        update_path(w);
        snprintf(what, sizeof(what), "pool task %s", j->target);
        lua_pushcfunction(L, job_call);
        lua_pushlightuserdata(L, j);
        if (tn_lua_pcall(w->lua, 1, 0, what) != 0 && !j->failed)
            job_set_error(j, "the task's Lua state failed (see the log)");
        lua_settop(L, 0);
    }
    if (!j->failed)
        return 0;
    tn_buf_append(&j->res, "", 1); /* NUL for the log line, not delivered */
    snprintf(what, sizeof(what), "%s: %.*s", j->target, (int)tn_buf_rlen(&j->res) - 1,
             tn_buf_rptr(&j->res));
    j->res.len--;
    pool_mod_log_failure(lua_pm, j->pool, what);
    return TN_ELUA;
}

void pool_lua_worker_exit(struct pool *p, void *ud)
{
    wstate_free();
}

/* ---- the loop side ------------------------------------------------------------------ */

/* Protected: push what the task gave back: its results, or nil and a
 * message. */
static int push_results(lua_State *L)
{
    struct lua_job *j = lua_touserdata(L, 1);

    lua_settop(L, 0);
    if (j->failed) {
        lua_pushnil(L);
        lua_pushlstring(L, tn_buf_rptr(&j->res), tn_buf_rlen(&j->res));
        return 2;
    }
    return decode_values(L, &j->res, j->nres);
}

static void resume_coroutine(struct lua_job *j, lua_State *L, int n)
{
    lua_State *co;
    int nres = 0;

    lua_rawgeti(L, LUA_REGISTRYINDEX, j->co_ref);
    co = lua_tothread(L, -1);
    lua_pop(L, 1);
    /* still parked in our submit? (not resumed by anyone else meanwhile) */
    lua_getfield(L, LUA_REGISTRYINDEX, WAITING_KEY);
    lua_rawgeti(L, LUA_REGISTRYINDEX, j->co_ref);
    lua_rawget(L, -2);
    if (!co || lua_touserdata(L, -1) != j || lua_status(co) != LUA_YIELD ||
        !lua_checkstack(co, n + 1)) {
        lua_pop(L, 2 + n);
        return;
    }
    lua_pop(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, j->co_ref);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    lua_xmove(L, co, n);
    /* under the host's instruction budget and memory limit; a failure is
     * logged with its traceback and counted by the host */
    if (tn_lua_resume(tn_lua_from(L), co, n, &nres, "coroutine resumed by ternd.pool.submit") >= 0)
        lua_pop(co, nres);
}

/* Protected: resume the coroutine of job 1 with the values above it. */
static int resume_job(lua_State *L)
{
    resume_coroutine(lua_touserdata(L, 1), L, lua_gettop(L) - 1);
    return 0;
}

/* The pool completion (loop thread): hand the results to the callback or
 * the waiting coroutine, unless the submitting state is gone. */
static void job_done(void *udata, int rc)
{
    struct lua_job *j = udata;
    lua_State *L = j->tok->L;
    struct tn_lua *lua;
    int top, n;

    if (!j->tok->alive || j->orphan) {
        job_free(j);
        return;
    }
    if (rc == TN_ESTOPPED)
        job_set_error(j, "pool stopped");
    top = lua_gettop(L);
    if (j->cb_ref != LUA_NOREF)
        lua_rawgeti(L, LUA_REGISTRYINDEX, j->cb_ref);
    lua_pushcfunction(L, push_results);
    lua_pushlightuserdata(L, j);
    if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) {
        tn_log_error("pool", "%s: cannot hand the results back: %s", j->target,
                     lua_tostring(L, -1));
        lua_settop(L, top);
        job_free(j);
        return;
    }
    n = lua_gettop(L) - top - (j->cb_ref != LUA_NOREF);
    if (j->cb_ref == LUA_NOREF) { /* resume_job(j, results...) */
        lua_pushcfunction(L, resume_job);
        lua_pushlightuserdata(L, j);
        lua_rotate(L, top + 1, 2);
        n++;
    }
    /* through tn_lua_pcall: a fresh instruction budget, errors logged */
    if ((lua = tn_lua_from(L)))
        tn_lua_pcall(lua, n, 0, "ternd.pool.submit completion");
    else if (lua_pcall(L, n, 0, 0) != LUA_OK)
        tn_log_error("pool", "ternd.pool.submit completion: %s", lua_tostring(L, -1));
    lua_settop(L, top);
    job_free(j);
}

/* Write the directory of a "@path" chunk name into out; 0 or -1. */
static int source_dir(const char *source, char *out, size_t len)
{
    const char *slash;

    if (source[0] != '@')
        return -1;
    slash = strrchr(source + 1, '/');
    if (!slash)
        snprintf(out, len, ".");
    else if ((size_t)(slash - source - 1) < len)
        snprintf(out, len, "%.*s", (int)(slash - source - 1), source + 1);
    else
        return -1;
    return 0;
}

/* A global Lua function defined in a file (a hook such as on_line): the
 * state's script, when the call stack has no file to show. */
static int global_function_dir(lua_State *L, char *out, size_t len)
{
    int found = -1;
    lua_Debug ar;

    lua_pushglobaltable(L);
    lua_pushnil(L);
    while (found != 0 && lua_next(L, -2)) {
        if (lua_type(L, -1) == LUA_TFUNCTION && !lua_iscfunction(L, -1)) {
            lua_pushvalue(L, -1);
            if (lua_getinfo(L, ">S", &ar))
                found = source_dir(ar.source, out, len);
        }
        lua_pop(L, 1);
    }
    if (found == 0)
        lua_pop(L, 1); /* the key lua_next left */
    lua_pop(L, 1);
    return found;
}

/* The directory workers should find the caller's modules in: that of the
 * nearest function on the call stack that came from a file; else (a chunk
 * from a string, or a tail call that left no frame) the one remembered for
 * this state, else that of a global function from a file. out is empty
 * when none is known. */
static void caller_dir(lua_State *L, struct token *tok, char *out, size_t len)
{
    lua_Debug ar;

    out[0] = '\0';
    for (int level = 1; level < 16 && lua_getstack(L, level, &ar); level++)
        if (lua_getinfo(L, "S", &ar) && source_dir(ar.source, out, len) == 0)
            goto found;
    if (tok->dir) {
        snprintf(out, len, "%s", tok->dir);
        return;
    }
    if (global_function_dir(L, out, len) != 0) {
        out[0] = '\0';
        return;
    }
found:
    if (!tok->dir)
        tok->dir = strdup(out);
}

static void add_dir(const char *dir)
{
    if (!dir[0])
        return;
    pthread_mutex_lock(&shared_lock);
    for (size_t i = 0; i < ndirs; i++)
        if (strcmp(dirs[i], dir) == 0)
            goto out;
    if (ndirs < DIRS_MAX && (dirs[ndirs] = strdup(dir))) {
        ndirs++;
        dirs_gen++;
    }
out:
    pthread_mutex_unlock(&shared_lock);
}

/* A box owns a job until it is submitted, so a Lua error while building it
 * (a bad argument, out of memory) frees it with the box. */
static int box_gc(lua_State *L)
{
    struct lua_job **bj = lua_touserdata(L, 1);
    if (*bj) {
        job_free(*bj);
        *bj = NULL;
    }
    return 0;
}

static int submit_cont(lua_State *L, int status, lua_KContext ctx)
{
    struct lua_job *j;

    lua_getfield(L, LUA_REGISTRYINDEX, WAITING_KEY);
    lua_pushthread(L);
    lua_rawget(L, -2);
    if ((j = lua_touserdata(L, -1))) { /* resumed by someone else: give up the result */
        j->orphan = 1;
        lua_pop(L, 1);
        lua_pushthread(L);
        lua_pushnil(L);
        lua_rawset(L, -3);
        return luaL_error(L, "ternd.pool.submit: coroutine resumed before its task finished");
    }
    lua_pop(L, 2);
    return lua_gettop(L) - (int)ctx;
}

static struct token *state_token(lua_State *L)
{
    struct token **tp;

    lua_getfield(L, LUA_REGISTRYINDEX, TOKEN_KEY);
    tp = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return tp ? *tp : NULL;
}

/* ternd.pool.submit(pool, "module.func", args..., [callback]) */
static int l_submit(lua_State *L)
{
    const char *pname = luaL_checkstring(L, 1), *target = luaL_checkstring(L, 2);
    const char *dot = strrchr(target, '.');
    int top = lua_gettop(L), cb = top >= 3 && lua_isfunction(L, top), rc;
    struct pool *p = pool_mod_find(lua_pm, pname);
    struct token *tok = state_token(L);
    struct lua_job **bj, *j;
    char err[192], dir[PATH_MAX];

    if (!p)
        return luaL_error(L, "ternd.pool.submit: no pool named \"%s\"", pname);
    if (!dot || dot == target || !dot[1])
        return luaL_error(L, "ternd.pool.submit: \"%s\" is not \"module.function\"", target);
    if (!cb && !lua_isyieldable(L))
        return luaL_error(L, "ternd.pool.submit: pass a callback, or call it in a coroutine");
    if (!tok)
        return luaL_error(L, "ternd.pool.submit: not available in this state");
    bj = lua_newuserdatauv(L, sizeof(*bj), 0);
    *bj = NULL;
    luaL_setmetatable(L, BOX_META);
    if (!(*bj = j = job_new(pname, target)))
        return luaL_error(L, "ternd.pool.submit: out of memory");
    j->tok = tok;
    tok->refs++;
    j->nargs = top - 2 - cb;
    if (encode_values(L, 3, j->nargs, &j->args, "argument", err, sizeof(err)) != 0)
        return luaL_error(L, "ternd.pool.submit: %s", err);
    caller_dir(L, tok, dir, sizeof(dir));
    add_dir(dir);
    if (cb)
        lua_pushvalue(L, top);
    else
        lua_pushthread(L);
    if (cb)
        j->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else
        j->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if ((rc = pool_submit(p, job_run, j, job_done, j)) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, rc == TN_EOVERLOAD  ? "pool overloaded"
                          : rc == TN_ESTOPPED ? "pool stopped"
                                              : tn_strerror(rc));
        return 2; /* the box frees j */
    }
    *bj = NULL; /* the pool owns j now */
    if (cb) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, WAITING_KEY);
    lua_pushthread(L);
    lua_pushlightuserdata(L, j);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    return lua_yieldk(L, 0, (lua_KContext)lua_gettop(L), submit_cont);
}

/* ternd.pool.stats(pool) -> table */
static int l_stats(lua_State *L)
{
    const char *pname = luaL_checkstring(L, 1);
    struct pool *p = pool_mod_find(lua_pm, pname);
    struct tn_pool_info i;

    if (!p)
        return luaL_error(L, "ternd.pool.stats: no pool named \"%s\"", pname);
    pool_info(p, &i);
    lua_createtable(L, 0, 10);
#define FIELD(name) (lua_pushinteger(L, (lua_Integer)i.name), lua_setfield(L, -2, #name))
    FIELD(capacity);
    FIELD(running);
    FIELD(idle);
    FIELD(free);
    FIELD(waiting);
    FIELD(submitted);
    FIELD(completed);
    FIELD(failed);
    FIELD(rejected);
    FIELD(cancelled);
#undef FIELD
    return 1;
}

static int token_gc(lua_State *L)
{
    struct token **tp = lua_touserdata(L, 1);
    (*tp)->alive = 0;
    token_unref(*tp);
    return 0;
}

/* The opener: ternd.pool in every loop-thread state. */
static int pool_lua_open(lua_State *L, void *ud)
{
    static const luaL_Reg funcs[] = {{"submit", l_submit}, {"stats", l_stats}, {NULL, NULL}};
    struct token *t, **tp;

    if (!tn_on_loop_thread())
        return 0; /* no submits from inside a task: a full pool would deadlock */
    if (!(t = calloc(1, sizeof(*t))))
        return TN_ENOMEM;
    t->alive = 1;
    t->refs = 1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    t->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    tp = lua_newuserdatauv(L, sizeof(*tp), 0);
    *tp = t;
    if (luaL_newmetatable(L, "ternd.pool.token")) {
        lua_pushcfunction(L, token_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, TOKEN_KEY);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, WAITING_KEY);
    if (luaL_newmetatable(L, BOX_META)) {
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, 2);
    luaL_setfuncs(L, funcs, 0);
    lua_setfield(L, -2, "pool");
    return 0;
}

void pool_lua_reconf(const struct tn_lua_conf *lc)
{
    pthread_mutex_lock(&shared_lock);
    worker_conf = *lc;
    worker_conf.script = NULL;
    worker_epoch++;
    pthread_mutex_unlock(&shared_lock);
}

int pool_lua_init(struct pool_mod *pm, const struct tn_lua_conf *lc)
{
    int rc;

    lua_pm = pm;
    pool_lua_reconf(lc);
    if ((rc = tn_lua_add_opener("pool", pool_lua_open, pm)) != 0)
        tn_log_error("pool", "cannot add ternd.pool to Lua: %s", tn_strerror(rc));
    return rc;
}

void pool_lua_fini(struct pool_mod *pm, int workers_gone)
{
    tn_lua_remove_opener(pool_lua_open, pm);
    if (!workers_gone)
        return; /* stuck workers may still read the dirs and lua_pm */
    lua_pm = NULL;
    pthread_mutex_lock(&shared_lock);
    for (size_t i = 0; i < ndirs; i++)
        free(dirs[i]);
    ndirs = 0;
    dirs_gen++;
    pthread_mutex_unlock(&shared_lock);
}
