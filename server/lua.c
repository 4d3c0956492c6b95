/*
 * lua.c -- the Lua 5.4 host: one lua_State per tn_lua with a counting,
 * limited allocator, an instruction budget per call, errors logged with a
 * traceback, and the global `ternd` table (log, clocks, timers, JSON, plus
 * what the registered openers and the owner add).
 */
#include <ctype.h>
#include <ev.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core.h"

#ifdef PACKAGE_VERSION
#define HOST_VERSION PACKAGE_VERSION
#else
#define HOST_VERSION TN_VERSION_STRING
#endif

#define DEFAULT_MEMORY (64ULL << 20)
#define DEFAULT_INSTRUCTIONS 100000000
/* The count hook fires at most this many instructions apart, so budgets
 * larger than an int still work. (Any hook makes Lua 5.4 check on every
 * instruction; the firing itself is rare.) */
#define HOOK_CHUNK (1 << 20)
#define TIMER_MT "ternd.timer"
#define JBOX_MT "ternd.jsonbox"
#define JSON_MAX_DEPTH 1000
#define OPENER_NAME_MAX 64

/*
 * One lua_State and what hangs off it. A tn_lua owns one vm at a time;
 * reload builds a second one and swaps. The vm is the allocator's ud, which
 * is how C functions called from Lua find their owner (tn_lua_from).
 */
struct vm {
    lua_State *L;
    struct tn_lua *lua;
    size_t used;          /* bytes allocated by this state */
    size_t limit;         /* 0: unlimited */
    int64_t instr_limit;  /* per top-level call; 0: unlimited */
    int64_t budget;       /* instructions left in the current top-level call */
    int depth;            /* nesting of calls through vm_call */
    int enforce;          /* > 0 while Lua runs protected: only then is the limit applied */
    int mem_hit;          /* an allocation was refused during this call */
    struct timer *timers; /* active timers, stopped when the vm goes away */
};

struct tn_lua {
    char *owner;
    tn_lua_open_pt open;
    void *ud;
    struct vm *vm;
    uint64_t errors;
    uint64_t calls;
};

/* A ternd.timer handle: full userdata (so Lua frees it), referenced from the
 * registry while active so it cannot be collected under a running watcher. */
struct timer {
    ev_timer w; /* first: the watcher pointer is the timer pointer */
    struct vm *vm;
    int ref; /* LUA_NOREF when inactive */
    struct timer *prev, *next;
};

struct opener {
    char name[OPENER_NAME_MAX];
    tn_lua_open_pt open;
    void *ud;
};

/* Openers are added on the loop thread but read by tn_lua_create on any
 * thread (pool workers), hence the lock; creators work on a copy. */
static pthread_mutex_t openers_lock = PTHREAD_MUTEX_INITIALIZER;
static struct opener *openers;
static size_t openers_n, openers_cap;

static const struct tn_conf_range lua_instr_range = {0, INT64_MAX};

const struct tn_conf_cmd tn_lua_conf_table[] = {
    {"script", TN_CONF_PATH, offsetof(struct tn_lua_conf, script), NULL, NULL, NULL},
    {"memory_limit", TN_CONF_SIZE, offsetof(struct tn_lua_conf, memory_limit), NULL, NULL, NULL},
    {"instruction_limit", TN_CONF_INT, offsetof(struct tn_lua_conf, instruction_limit),
     &lua_instr_range, NULL, NULL},
    TN_CONF_END};

void tn_lua_conf_default(struct tn_lua_conf *lc)
{
    lc->script = NULL;
    lc->memory_limit = DEFAULT_MEMORY;
    lc->instruction_limit = DEFAULT_INSTRUCTIONS;
}

/* ---- allocator ------------------------------------------------------------ */

static struct vm *vm_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/*
 * Count every byte and refuse growth past the limit while Lua code runs;
 * Lua then collects garbage and retries once before raising "not enough
 * memory", which the caller's pcall catches. Outside protected calls the
 * host's own small pushes are never refused: an error there would panic.
 */
static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct vm *vm = ud;
    void *p;

    if (!ptr)
        osize = 0; /* then osize encodes the object type, not a size */
    if (nsize == 0) {
        free(ptr);
        __atomic_store_n(&vm->used, vm->used - osize, __ATOMIC_RELAXED);
        return NULL;
    }
    if (nsize > osize && vm->limit && vm->enforce &&
        (vm->used >= vm->limit || nsize - osize > vm->limit - vm->used)) {
        vm->mem_hit = 1;
        return NULL;
    }
    p = realloc(ptr, nsize);
    if (!p)
        return nsize <= osize ? ptr : NULL; /* Lua assumes shrinking never fails */
    __atomic_store_n(&vm->used, vm->used - osize + nsize, __ATOMIC_RELAXED);
    return p;
}

/* An error outside any pcall: Lua aborts after this returns; say why first. */
static int vm_panic(lua_State *L)
{
    struct vm *vm = vm_of(L);
    const char *msg = lua_tostring(L, -1);

    tn_log_error(vm->lua ? vm->lua->owner : "lua", "unprotected Lua error: %s",
                 msg ? msg : "(not a string)");
    return 0;
}

/* ---- calls: traceback and instruction budget ------------------------------ */

static int hook_step(int64_t budget)
{
    return budget > HOOK_CHUNK ? HOOK_CHUNK : (int)(budget > 0 ? budget : 1);
}

/* Each firing means `count` instructions of this thread ran. Once the budget
 * is spent the hook fires on every instruction, so a script that catches
 * the error with pcall cannot keep running. */
static void vm_hook(lua_State *L, lua_Debug *ar)
{
    struct vm *vm = vm_of(L);

    (void)ar;
    vm->budget -= lua_gethookcount(L);
    if (vm->budget > 0) {
        lua_sethook(L, vm_hook, LUA_MASKCOUNT, hook_step(vm->budget));
        return;
    }
    lua_sethook(L, vm_hook, LUA_MASKCOUNT, 1);
    luaL_where(L, 0); /* level 0 is the running Lua function here */
    lua_pushfstring(L, "instruction limit exceeded (%I)", (LUA_INTEGER)vm->instr_limit);
    lua_concat(L, 2);
    lua_error(L);
}

static void budget_reset(struct vm *vm)
{
    if (vm->instr_limit <= 0)
        return;
    vm->budget = vm->instr_limit;
    lua_sethook(vm->L, vm_hook, LUA_MASKCOUNT, hook_step(vm->budget));
}

/* Message handler: the error as text plus a traceback. */
static int vm_msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);

    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Around running Lua code: the outermost entry starts a fresh budget, and
 * the memory limit applies until the matching leave. */
static void vm_enter(struct vm *vm)
{
    if (vm->depth++ == 0) {
        vm->mem_hit = 0;
        budget_reset(vm);
    }
    vm->enforce++;
}

static void vm_leave(struct vm *vm)
{
    vm->enforce--;
    vm->depth--;
}

/*
 * Call the function below nargs arguments with the message handler and,
 * for the outermost call, a fresh instruction budget. Returns the Lua
 * status; on error the message is left on the top (function and arguments
 * gone), on success the results.
 */
static int vm_call(struct vm *vm, int nargs, int nresults)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L) - nargs;
    int st;

    if (!lua_checkstack(L, 1)) {
        lua_pop(L, nargs + 1);
        lua_pushliteral(L, "stack overflow"); /* the popped slots make room */
        return LUA_ERRERR;
    }
    lua_pushcfunction(L, vm_msgh);
    lua_insert(L, base);
    vm_enter(vm);
    st = lua_pcall(L, nargs, nresults, base);
    vm_leave(vm);
    lua_remove(L, base);
    return st;
}

/* Run a C function protected, under the memory limit, with one light
 * userdata argument; the status is returned, an error message left on top. */
static int vm_protected(struct vm *vm, lua_CFunction f, void *arg, int nresults)
{
    int st;

    lua_pushcfunction(vm->L, f);
    lua_pushlightuserdata(vm->L, arg);
    vm->enforce++;
    st = lua_pcall(vm->L, 1, nresults, 0);
    vm->enforce--;
    return st;
}

/* The error on top of L's stack as text, with what a refused allocation
 * means spelled out (Lua's own message is just "not enough memory"). */
static void error_text(struct vm *vm, lua_State *L, int st, char *buf, size_t len)
{
    const char *msg = lua_tostring(L, -1);

    if (!msg)
        msg = "(error object is not a string)";
    if (st == LUA_ERRMEM && vm->mem_hit)
        snprintf(buf, len, "%s (memory_limit %zu bytes reached)", msg, vm->limit);
    else
        snprintf(buf, len, "%s", msg);
}

static int vm_pcall_logged(struct vm *vm, int nargs, int nresults, const char *what)
{
    struct tn_lua *lua = vm->lua;
    char msg[3072];
    int st;

    __atomic_add_fetch(&lua->calls, 1, __ATOMIC_RELAXED);
    st = vm_call(vm, nargs, nresults);
    if (st == LUA_OK)
        return 0;
    __atomic_add_fetch(&lua->errors, 1, __ATOMIC_RELAXED);
    error_text(vm, vm->L, st, msg, sizeof(msg));
    lua_pop(vm->L, 1);
    tn_log_error(lua->owner, "%s: %s", what ? what : "call", msg);
    return TN_ELUA;
}

int tn_lua_pcall(struct tn_lua *lua, int nargs, int nresults, const char *what)
{
    return vm_pcall_logged(lua->vm, nargs, nresults, what);
}

/*
 * A coroutine runs under the same rules as a call. Its own hook is set
 * here: it may have been created before the current budget, and a thread
 * created while no limit applied has none.
 */
int tn_lua_resume(struct tn_lua *lua, lua_State *co, int nargs, int *nresults, const char *what)
{
    struct vm *vm = lua->vm;
    char msg[3072];
    int st, n = 0;

    __atomic_add_fetch(&lua->calls, 1, __ATOMIC_RELAXED);
    vm_enter(vm);
    if (vm->instr_limit > 0)
        lua_sethook(co, vm_hook, LUA_MASKCOUNT, hook_step(vm->budget));
    st = lua_resume(co, vm->L, nargs, &n);
    vm_leave(vm);
    *nresults = 0;
    if (st == LUA_OK || st == LUA_YIELD) {
        *nresults = n;
        return st == LUA_YIELD;
    }
    __atomic_add_fetch(&lua->errors, 1, __ATOMIC_RELAXED);
    error_text(vm, co, st, msg, sizeof(msg));
    /* the dead coroutine's stack is not unwound: its traceback is still there */
    if (st != LUA_ERRMEM && lua_checkstack(vm->L, 1)) {
        luaL_traceback(vm->L, co, msg, 0);
        snprintf(msg, sizeof(msg), "%s", lua_tostring(vm->L, -1));
        lua_pop(vm->L, 1);
    }
    lua_settop(co, 0);
    tn_log_error(lua->owner, "%s: %s", what ? what : "resume", msg);
    return TN_ELUA;
}

/* ---- ternd.log, ternd.now, ternd.monotonic -------------------------------- */

static int l_log(lua_State *L)
{
    struct vm *vm = vm_of(L);
    int level = tn_log_level_parse(luaL_checkstring(L, 1));
    int n = lua_gettop(L);
    luaL_Buffer b;
    const char *text;
    size_t len;

    luaL_argcheck(L, level >= 0, 1, "level must be \"error\", \"warn\", \"info\" or \"debug\"");
    if (!tn_log_enabled(level))
        return 0;
    luaL_buffinit(L, &b);
    for (int i = 2; i <= n; i++) {
        if (i > 2)
            luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    text = lua_tolstring(L, -1, &len);
    tn_log(level, vm->lua->owner, "%.*s", (int)(len > 65536 ? 65536 : len), text);
    return 0;
}

static int l_now(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)tn_wall_ns() / 1e9);
    return 1;
}

static int l_monotonic(lua_State *L)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* ---- ternd.timer ---------------------------------------------------------- */

/* L: the running thread (luaL_unref pushes on it). */
static void timer_stop(lua_State *L, struct timer *t)
{
    ev_timer_stop(tn_loop(), &t->w);
    if (t->prev)
        t->prev->next = t->next;
    else
        t->vm->timers = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
    t->ref = LUA_NOREF;
}

static void timer_fire(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct timer *t = (struct timer *)w;
    struct vm *vm = t->vm;
    lua_State *L = vm->L;

    (void)loop;
    (void)revents;
    if (!lua_checkstack(L, 2)) {
        tn_log_error(vm->lua->owner, "timer: Lua stack full, callback skipped");
        return;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
    lua_getiuservalue(L, -1, 1);
    lua_remove(L, -2);
    /* A one-shot timer is done: drop it now (the function stays on the
     * stack), so the callback may start new timers or fail freely. Nothing
     * below touches t, which the callback may have cancelled. */
    if (!ev_is_active(w))
        timer_stop(L, t);
    vm_pcall_logged(vm, 0, 0, "timer");
}

static int l_timer(lua_State *L)
{
    struct vm *vm = vm_of(L);
    lua_Number after = luaL_checknumber(L, 1);
    lua_Number every = luaL_optnumber(L, 3, 0);
    struct timer *t;

    luaL_checktype(L, 2, LUA_TFUNCTION);
    luaL_argcheck(L, isfinite(after) && after >= 0, 1, "must be a number of seconds >= 0");
    luaL_argcheck(L, lua_isnoneornil(L, 3) || (isfinite(every) && every >= 0.001), 3,
                  "must be a number of seconds >= 0.001");
    t = lua_newuserdatauv(L, sizeof(*t), 1);
    memset(t, 0, sizeof(*t));
    t->vm = vm;
    t->ref = LUA_NOREF;
    luaL_setmetatable(L, TIMER_MT);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, -1);
    t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ev_timer_init(&t->w, timer_fire, after, every);
    ev_timer_start(tn_loop(), &t->w);
    t->next = vm->timers;
    if (vm->timers)
        vm->timers->prev = t;
    vm->timers = t;
    return 1;
}

/* handle:cancel() -> true if the timer was still pending */
static int l_timer_cancel(lua_State *L)
{
    struct timer *t = luaL_checkudata(L, 1, TIMER_MT);
    int active = t->ref != LUA_NOREF;

    if (active)
        timer_stop(L, t);
    lua_pushboolean(L, active);
    return 1;
}

/* handle:active() -> true while the timer will still fire */
static int l_timer_active(lua_State *L)
{
    struct timer *t = luaL_checkudata(L, 1, TIMER_MT);

    lua_pushboolean(L, t->ref != LUA_NOREF);
    return 1;
}

static int l_timer_gc(lua_State *L)
{
    struct timer *t = luaL_checkudata(L, 1, TIMER_MT);

    if (t->ref != LUA_NOREF)
        timer_stop(L, t);
    return 0;
}

/* A metatable for full userdata with a finalizer, left on the stack. */
static void new_gc_metatable(lua_State *L, const char *name, lua_CFunction gc)
{
    luaL_newmetatable(L, name);
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
}

static void open_timer_mt(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"cancel", l_timer_cancel}, {"active", l_timer_active}, {NULL, NULL}};

    new_gc_metatable(L, TIMER_MT, l_timer_gc);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

/* ---- ternd.json ----------------------------------------------------------- */

/* jansson values live in a box with a finalizer while Lua works on them,
 * so a Lua error (bad value, out of memory) never leaks them. */
struct jbox {
    json_t *root;
    char *text;
};

static void jbox_clear(struct jbox *box)
{
    if (box->root)
        json_decref(box->root);
    free(box->text);
    box->root = NULL;
    box->text = NULL;
}

static int jbox_gc(lua_State *L)
{
    jbox_clear(luaL_checkudata(L, 1, JBOX_MT));
    return 0;
}

static struct jbox *jbox_new(lua_State *L)
{
    struct jbox *box = lua_newuserdatauv(L, sizeof(*box), 0);

    box->root = NULL;
    box->text = NULL;
    luaL_setmetatable(L, JBOX_MT);
    return box;
}

struct jenc {
    struct jbox *box;
    int seen;      /* stack index of the set of tables being encoded */
    int precision; /* significant digits the floats so far need to read back exactly */
};

/* jansson prints every real with one precision, 17 digits by default, so
 * 0.1 would come out as 0.10000000000000001; use the fewest digits that
 * give every float of the document back unchanged instead. */
static void jenc_precision(struct jenc *e, double d)
{
    char buf[40];

    for (int p = e->precision; p < 17; p++) {
        snprintf(buf, sizeof(buf), "%.*g", p, d);
        if (strtod(buf, NULL) == d) {
            e->precision = p;
            return;
        }
    }
    e->precision = 17;
}

static int jenc_fail(lua_State *L, struct jenc *e, const char *what)
{
    jbox_clear(e->box);
    return luaL_error(L, "json.encode: %s", what);
}

/* Attach v to parent (append when key is NULL) at once, so the box owns it. */
static json_t *jenc_attach(lua_State *L, struct jenc *e, json_t *parent, const char *key, json_t *v)
{
    if (!v)
        jenc_fail(L, e, "out of memory");
    if (key ? json_object_set_new(parent, key, v) != 0 : json_array_append_new(parent, v) != 0)
        jenc_fail(L, e, key ? "table key is not valid UTF-8" : "out of memory");
    return v;
}

/* n when the table's keys are exactly 1..n (n >= 1), else 0. */
static lua_Integer jenc_array_len(lua_State *L, int idx)
{
    lua_Integer n = 0, max = 0;

    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
            lua_pop(L, 1);
            return 0;
        }
        if (lua_tointeger(L, -1) > max)
            max = lua_tointeger(L, -1);
        n++;
    }
    return n == max ? n : 0;
}

static void jenc_value(lua_State *L, struct jenc *e, int idx, json_t *parent, const char *key,
                       int depth);

/* The key at -2 (lua_next order) as text, pushed on top. */
static const char *jenc_key(lua_State *L, struct jenc *e)
{
    const char *k;
    size_t len;

    if (lua_type(L, -2) == LUA_TNUMBER) {
        lua_pushvalue(L, -2); /* tostring on a copy: lua_next needs the real key */
    } else if (lua_type(L, -2) == LUA_TSTRING) {
        lua_pushvalue(L, -2);
    } else {
        lua_pushfstring(L, "cannot encode a table key of type %s", luaL_typename(L, -2));
        jenc_fail(L, e, lua_tostring(L, -1));
    }
    k = lua_tolstring(L, -1, &len);
    if (strlen(k) != len)
        jenc_fail(L, e, "table key contains a NUL byte");
    return k;
}

static void jenc_table(lua_State *L, struct jenc *e, int idx, json_t *parent, const char *key,
                       int depth)
{
    lua_Integer n;
    json_t *v;

    if (depth > JSON_MAX_DEPTH)
        jenc_fail(L, e, "tables nested too deeply");
    luaL_checkstack(L, 6, "json.encode");
    lua_pushvalue(L, idx);
    if (lua_rawget(L, e->seen) != LUA_TNIL)
        jenc_fail(L, e, "cycle detected (a table contains itself)");
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, e->seen);

    n = jenc_array_len(L, idx);
    if (n > 0) {
        v = jenc_attach(L, e, parent, key, json_array());
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, i);
            jenc_value(L, e, lua_gettop(L), v, NULL, depth + 1);
            lua_pop(L, 1);
        }
    } else {
        v = jenc_attach(L, e, parent, key, json_object());
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            const char *k = jenc_key(L, e);
            jenc_value(L, e, lua_gettop(L) - 1, v, k, depth + 1);
            lua_pop(L, 2); /* key text, value */
        }
    }
    lua_pushvalue(L, idx);
    lua_pushnil(L);
    lua_rawset(L, e->seen); /* shared (acyclic) subtables are fine */
}

static void jenc_value(lua_State *L, struct jenc *e, int idx, json_t *parent, const char *key,
                       int depth)
{
    size_t len;
    const char *s;
    lua_Number d;
    json_t *v;

    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        jenc_attach(L, e, parent, key, json_null());
        break;
    case LUA_TBOOLEAN:
        jenc_attach(L, e, parent, key, json_boolean(lua_toboolean(L, idx)));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            jenc_attach(L, e, parent, key, json_integer((json_int_t)lua_tointeger(L, idx)));
            break;
        }
        d = lua_tonumber(L, idx);
        if (isnan(d))
            jenc_fail(L, e, "cannot encode NaN");
        if (isinf(d))
            jenc_fail(L, e, "cannot encode an infinite number");
        jenc_precision(e, d);
        jenc_attach(L, e, parent, key, json_real(d));
        break;
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &len);
        if (!(v = json_stringn(s, len))) /* jansson refuses invalid UTF-8 */
            jenc_fail(L, e, "string is not valid UTF-8");
        jenc_attach(L, e, parent, key, v);
        break;
    case LUA_TTABLE:
        jenc_table(L, e, idx, parent, key, depth);
        break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) { /* ternd.json.null */
            jenc_attach(L, e, parent, key, json_null());
            break;
        }
        /* fall through */
    default:
        lua_pushfstring(L, "cannot encode a %s value", luaL_typename(L, idx));
        jenc_fail(L, e, lua_tostring(L, -1));
    }
}

/* ternd.json.encode(value) -> text */
static int l_json_encode(lua_State *L)
{
    struct jenc e;

    luaL_checkany(L, 1);
    lua_settop(L, 1);
    e.box = jbox_new(L);
    lua_newtable(L);
    e.seen = lua_gettop(L);
    e.precision = 1;
    /* the value goes into a holder array, which the box owns from the start */
    if (!(e.box->root = json_array()))
        jenc_fail(L, &e, "out of memory");
    jenc_value(L, &e, 1, e.box->root, NULL, 0);
    e.box->text = json_dumps(json_array_get(e.box->root, 0),
                             JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(e.precision));
    if (!e.box->text)
        jenc_fail(L, &e, "out of memory");
    lua_pushstring(L, e.box->text);
    jbox_clear(e.box);
    return 1;
}

static void jdec_value(lua_State *L, json_t *v)
{
    const char *k;
    json_t *item;
    size_t i;

    luaL_checkstack(L, 3, "json.decode");
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        lua_createtable(L, 0, (int)json_object_size(v));
        json_object_foreach(v, k, item)
        {
            jdec_value(L, item);
            lua_setfield(L, -2, k);
        }
        break;
    case JSON_ARRAY:
        lua_createtable(L, (int)json_array_size(v), 0);
        json_array_foreach(v, i, item)
        {
            jdec_value(L, item);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(v));
        break;
    case JSON_REAL:
        lua_pushnumber(L, (lua_Number)json_real_value(v));
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        lua_pushboolean(L, json_is_true(v));
        break;
    default:
        lua_pushlightuserdata(L, NULL); /* ternd.json.null */
        break;
    }
}

/* ternd.json.decode(text) -> value */
static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    struct jbox *box = jbox_new(L);
    json_error_t je;

    box->root = json_loadb(s, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!box->root)
        return luaL_error(L, "json.decode: %s (line %d, column %d)", je.text, je.line, je.column);
    jdec_value(L, box->root);
    jbox_clear(box);
    return 1;
}

static void open_json(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"encode", l_json_encode}, {"decode", l_json_decode}, {NULL, NULL}};

    new_gc_metatable(L, JBOX_MT, jbox_gc);
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_setfield(L, -2, "json");
}

/* ---- building a state ----------------------------------------------------- */

struct setup {
    struct tn_lua *lua;
    const struct opener *openers;
    size_t n;
    char *err;
    size_t errlen;
    int failed;
};

/* Scripts must not end the process nor switch off the instruction hook. */
static void remove_field(lua_State *L, const char *lib, const char *name)
{
    if (lua_getglobal(L, lib) == LUA_TTABLE) {
        lua_pushnil(L);
        lua_setfield(L, -2, name);
    }
    lua_pop(L, 1);
}

static void open_ternd(lua_State *L)
{
    static const luaL_Reg funcs[] = {{"log", l_log},
                                     {"now", l_now},
                                     {"monotonic", l_monotonic},
                                     {"timer", l_timer},
                                     {NULL, NULL}};

    open_timer_mt(L);
    luaL_newlib(L, funcs);
    lua_pushstring(L, HOST_VERSION);
    lua_setfield(L, -2, "version");
    open_json(L);
    lua_setglobal(L, "ternd");
}

/* Run one open function with `ternd` on the top; whatever it leaves is dropped. */
static int run_open(lua_State *L, tn_lua_open_pt open, void *ud)
{
    int top = lua_gettop(L), rc;

    lua_getglobal(L, "ternd");
    rc = open(L, ud);
    lua_settop(L, top);
    return rc;
}

/* Protected: libraries, `ternd`, the openers in order, the owner's open. */
static int vm_setup(lua_State *L)
{
    struct setup *s = lua_touserdata(L, 1);
    int rc;

    luaL_openlibs(L);
    remove_field(L, "os", "exit");
    remove_field(L, "debug", "sethook");
    open_ternd(L);
    for (size_t i = 0; i < s->n; i++) {
        if ((rc = run_open(L, s->openers[i].open, s->openers[i].ud)) != 0) {
            snprintf(s->err, s->errlen, "Lua opener '%s' failed: %s", s->openers[i].name,
                     tn_strerror(rc));
            s->failed = 1;
            return 0;
        }
    }
    if (s->lua->open && (rc = run_open(L, s->lua->open, s->lua->ud)) != 0) {
        snprintf(s->err, s->errlen, "opening the Lua state failed: %s", tn_strerror(rc));
        s->failed = 1;
    }
    return 0;
}

static struct opener *openers_copy(size_t *n)
{
    struct opener *copy = NULL;

    pthread_mutex_lock(&openers_lock);
    *n = openers_n;
    if (openers_n && (copy = malloc(openers_n * sizeof(*copy))))
        memcpy(copy, openers, openers_n * sizeof(*copy));
    pthread_mutex_unlock(&openers_lock);
    return copy;
}

/*
 * Lua shortens chunk names in messages to LUA_IDSIZE ("...of/the/file.lua:3:
 * msg"). Put the full path back at the start so an error always names the
 * real file; prefix it when the message does not start with a position.
 */
static void format_script_error(char *err, size_t errlen, const char *path, const char *msg)
{
    size_t plen = strlen(path);

    if (!msg)
        msg = "(error object is not a string)";
    if (strncmp(msg, path, plen) == 0 && msg[plen] == ':') {
        snprintf(err, errlen, "%s", msg);
        return;
    }
    if (strncmp(msg, "...", 3) == 0) {
        for (const char *c = strchr(msg + 3, ':'); c; c = strchr(c + 1, ':')) {
            size_t tlen = (size_t)(c - (msg + 3));
            if (tlen > 0 && tlen <= plen && memcmp(path + plen - tlen, msg + 3, tlen) == 0 &&
                isdigit((unsigned char)c[1])) {
                snprintf(err, errlen, "%s%s", path, c);
                return;
            }
        }
    }
    if (strstr(msg, path))
        snprintf(err, errlen, "%s", msg);
    else
        snprintf(err, errlen, "%s: %s", path, msg);
}

/* Protected: compile the script (text only: binary chunks are unchecked). */
static int vm_loadfile(lua_State *L)
{
    const char *path = lua_touserdata(L, 1);

    if (luaL_loadfilex(L, path, "t") != LUA_OK)
        return lua_error(L);
    return 1;
}

static int vm_run_script(struct vm *vm, const char *path, char *err, size_t errlen)
{
    char msg[2048];
    int st;

    st = vm_protected(vm, vm_loadfile, (void *)path, 1);
    if (st == LUA_OK)
        st = vm_call(vm, 0, 0);
    if (st == LUA_OK)
        return 0;
    error_text(vm, vm->L, st, msg, sizeof(msg));
    lua_pop(vm->L, 1);
    format_script_error(err, errlen, path, msg);
    return TN_ELUA;
}

static void vm_close(struct vm *vm)
{
    if (!vm)
        return;
    while (vm->timers)
        timer_stop(vm->L, vm->timers);
    if (vm->L) {
        budget_reset(vm); /* finalizers run at close: give them a budget */
        lua_close(vm->L);
    }
    free(vm);
}

static struct vm *vm_build(struct tn_lua *lua, const struct tn_lua_conf *conf, char *err,
                           size_t errlen)
{
    struct setup s = {lua, NULL, 0, err, errlen, 0};
    struct tn_lua_conf defaults;
    struct vm *vm = calloc(1, sizeof(*vm));
    char msg[1024];
    int st;

    if (!conf) { /* NULL: the defaults, no script */
        tn_lua_conf_default(&defaults);
        conf = &defaults;
    }
    if (!vm || !(vm->L = lua_newstate(vm_alloc, vm))) {
        snprintf(err, errlen, "cannot create a Lua state: out of memory");
        free(vm);
        return NULL;
    }
    vm->lua = lua;
    vm->limit = conf->memory_limit > SIZE_MAX ? SIZE_MAX : (size_t)conf->memory_limit;
    vm->instr_limit = conf->instruction_limit > 0 ? conf->instruction_limit : 0;
    lua_atpanic(vm->L, vm_panic);

    s.openers = openers_copy(&s.n);
    if (s.n && !s.openers) {
        snprintf(err, errlen, "cannot create a Lua state: out of memory");
        goto fail;
    }
    st = vm_protected(vm, vm_setup, &s, 0);
    free((void *)s.openers);
    if (st != LUA_OK) {
        error_text(vm, vm->L, st, msg, sizeof(msg));
        snprintf(err, errlen, "cannot set up the Lua state: %s", msg);
        goto fail;
    }
    if (s.failed)
        goto fail;
    if (conf->script && vm_run_script(vm, conf->script, err, errlen) != 0)
        goto fail;
    return vm;

fail:
    vm_close(vm);
    return NULL;
}

/* ---- the public API ------------------------------------------------------- */

int tn_lua_add_opener(const char *name, tn_lua_open_pt open, void *ud)
{
    int rc = 0;

    if (!open)
        return TN_EINVAL;
    pthread_mutex_lock(&openers_lock);
    for (size_t i = 0; i < openers_n; i++) {
        if (openers[i].open == open && openers[i].ud == ud) {
            rc = TN_EEXIST;
            goto done;
        }
    }
    if (openers_n == openers_cap) {
        size_t cap = openers_cap ? openers_cap * 2 : 8;
        struct opener *v = realloc(openers, cap * sizeof(*v));
        if (!v) {
            rc = TN_ENOMEM;
            goto done;
        }
        openers = v;
        openers_cap = cap;
    }
    snprintf(openers[openers_n].name, OPENER_NAME_MAX, "%s", name ? name : "?");
    openers[openers_n].open = open;
    openers[openers_n].ud = ud;
    openers_n++;
done:
    pthread_mutex_unlock(&openers_lock);
    return rc;
}

void tn_lua_remove_opener(tn_lua_open_pt open, void *ud)
{
    pthread_mutex_lock(&openers_lock);
    for (size_t i = 0; i < openers_n; i++) {
        if (openers[i].open == open && openers[i].ud == ud) {
            memmove(&openers[i], &openers[i + 1], (openers_n - i - 1) * sizeof(*openers));
            openers_n--;
            break;
        }
    }
    if (openers_n == 0) {
        free(openers);
        openers = NULL;
        openers_cap = 0;
    }
    pthread_mutex_unlock(&openers_lock);
}

struct tn_lua *tn_lua_create(const char *owner, const struct tn_lua_conf *conf, tn_lua_open_pt open,
                             void *ud, char *err, size_t errlen)
{
    struct tn_lua *lua = calloc(1, sizeof(*lua));

    if (!lua || !(lua->owner = strdup(owner ? owner : "lua"))) {
        snprintf(err, errlen, "cannot create a Lua state: out of memory");
        free(lua);
        return NULL;
    }
    lua->open = open;
    lua->ud = ud;
    if (!(lua->vm = vm_build(lua, conf, err, errlen))) {
        free(lua->owner);
        free(lua);
        return NULL;
    }
    return lua;
}

int tn_lua_reload(struct tn_lua *lua, const struct tn_lua_conf *conf, char *err, size_t errlen)
{
    struct vm *vm;

    if (lua->vm->depth > 0) {
        /* closing the running state would pull it from under the caller */
        snprintf(err, errlen, "cannot reload a Lua state from inside one of its calls");
        return TN_ELUA;
    }
    if (!(vm = vm_build(lua, conf, err, errlen))) {
        __atomic_add_fetch(&lua->errors, 1, __ATOMIC_RELAXED);
        return TN_ELUA;
    }
    vm_close(lua->vm);
    lua->vm = vm;
    return 0;
}

void tn_lua_destroy(struct tn_lua *lua)
{
    if (!lua)
        return;
    vm_close(lua->vm);
    free(lua->owner);
    free(lua);
}

lua_State *tn_lua_state(struct tn_lua *lua)
{
    return lua->vm->L;
}

struct tn_lua *tn_lua_from(lua_State *L)
{
    void *ud;

    if (lua_getallocf(L, &ud) != vm_alloc)
        return NULL;
    return ((struct vm *)ud)->lua;
}

void *tn_lua_userdata(struct tn_lua *lua)
{
    return lua->ud;
}

/* Raw lookup: a metatable on _G must not run code outside a pcall. */
int tn_lua_getfunc(struct tn_lua *lua, const char *name)
{
    lua_State *L = lua->vm->L;

    if (!lua_checkstack(L, 2))
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    lua_pushstring(L, name);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    if (lua_isfunction(L, -1))
        return 1;
    lua_pop(L, 1);
    return 0;
}

int tn_lua_check_file(const char *path, char *err, size_t errlen)
{
    lua_State *L = luaL_newstate();
    int st;

    if (!L) {
        snprintf(err, errlen, "%s: cannot create a Lua state: out of memory", path);
        return TN_ELUA;
    }
    lua_pushcfunction(L, vm_loadfile);
    lua_pushlightuserdata(L, (void *)path);
    st = lua_pcall(L, 1, 1, 0);
    if (st != LUA_OK)
        format_script_error(err, errlen, path, lua_tostring(L, -1));
    lua_close(L);
    return st == LUA_OK ? 0 : TN_ELUA;
}

uint64_t tn_lua_errors(const struct tn_lua *lua)
{
    return __atomic_load_n(&lua->errors, __ATOMIC_RELAXED);
}

size_t tn_lua_memory(const struct tn_lua *lua)
{
    return __atomic_load_n(&lua->vm->used, __ATOMIC_RELAXED);
}

uint64_t tn_lua_calls(const struct tn_lua *lua)
{
    return __atomic_load_n(&lua->calls, __ATOMIC_RELAXED);
}
