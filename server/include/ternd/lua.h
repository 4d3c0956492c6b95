/*
 * lua.h -- the Lua 5.4 host shared by modules.
 *
 * One tn_lua per module instance, on the loop thread: a lua_State with a
 * counting allocator and a memory limit, the standard libraries, and the
 * global table `ternd` (log, now, timer, plus what modules add). Every call
 * goes through tn_lua_pcall: a message handler adds a traceback, an
 * instruction-count hook stops runaway scripts, and errors are logged and
 * counted, never fatal. Pool workers create their own states with
 * tn_lua_create as well (it is thread-safe; the state is not).
 */
#ifndef TERND_LUA_H
#define TERND_LUA_H

#include <stddef.h>
#include <stdint.h>
#include <ternd/conf.h>
#include <ternd/core.h>

typedef struct lua_State lua_State;
struct tn_lua;

/* The `lua:` section modules embed in their config (see tn_lua_conf_table). */
struct tn_lua_conf {
    char *script;              /* path (absolute after config), or NULL: no script */
    uint64_t memory_limit;     /* bytes; default 64 MiB; 0: unlimited */
    int64_t instruction_limit; /* per call; default 100,000,000; 0: unlimited */
};

/* Key table for a `lua:` mapping; use with TN_CONF_SECTION at the offset
 * of a struct tn_lua_conf. */
TN_API extern const struct tn_conf_cmd tn_lua_conf_table[];
TN_API void tn_lua_conf_default(struct tn_lua_conf *lc);

/* Called on every new state (create and reload) before the script runs, to
 * add the module's functions (e.g. ternd.broker.publish). The `ternd`
 * table is on the top of the stack. Return 0 or an error. */
typedef int (*tn_lua_open_pt)(lua_State *L, void *ud);

/*
 * Openers added by modules that extend every state (the pool module adds
 * ternd.pool this way): each runs on every state tn_lua_create/tn_lua_reload
 * build, after `ternd` exists and before the owner's own open. Remove it
 * (same open and ud) before the module that added it goes away. Loop
 * thread only. 0, TN_ENOMEM, or TN_EEXIST when already added.
 */
TN_API int tn_lua_add_opener(const char *name, tn_lua_open_pt open, void *ud);
TN_API void tn_lua_remove_opener(tn_lua_open_pt open, void *ud);

/*
 * Create a state for `owner` (the module name, used in logs and stats),
 * open libraries and `ternd`, run open, then load and run conf->script if
 * set. On failure returns NULL and writes the reason into err.
 */
TN_API struct tn_lua *tn_lua_create(const char *owner, const struct tn_lua_conf *conf,
                                    tn_lua_open_pt open, void *ud, char *err, size_t errlen);
/* Build a fresh state from conf (same owner/open) and swap it in when the
 * script loads; on failure keep the old state and return TN_ELUA with the
 * reason in err. Timers of the old state are cancelled. */
TN_API int tn_lua_reload(struct tn_lua *lua, const struct tn_lua_conf *conf, char *err,
                         size_t errlen);
TN_API void tn_lua_destroy(struct tn_lua *lua);
TN_API lua_State *tn_lua_state(struct tn_lua *lua);
/* The tn_lua a state belongs to (from inside a C function called by Lua). */
TN_API struct tn_lua *tn_lua_from(lua_State *L);
TN_API void *tn_lua_userdata(struct tn_lua *lua);

/* Push the global function `name`; returns 1 if pushed, 0 if there is no
 * such function (nothing pushed). */
TN_API int tn_lua_getfunc(struct tn_lua *lua, const char *name);
/* lua_pcall with traceback and the instruction budget; on error logs
 * "owner: where: message + traceback", counts it, pops it, returns TN_ELUA.
 * `what` names the call for the log (e.g. "on_publish"). */
TN_API int tn_lua_pcall(struct tn_lua *lua, int nargs, int nresults, const char *what);
/* Resume the coroutine co (a thread of this state) with nargs values on
 * its stack, under the budget and memory limit as tn_lua_pcall. Returns 0
 * when it finished or 1 when it yielded, with *nresults values on co's stack
 * for the caller to take; or TN_ELUA after logging "owner: what: message +
 * traceback" and counting the error (co is dead, its stack emptied). */
TN_API int tn_lua_resume(struct tn_lua *lua, lua_State *co, int nargs, int *nresults,
                         const char *what);

/* Compile a script without running it (for `ternd -t`). 0 or TN_ELUA. */
TN_API int tn_lua_check_file(const char *path, char *err, size_t errlen);

/* Errors so far, bytes in use, and calls made, for stats. */
TN_API uint64_t tn_lua_errors(const struct tn_lua *lua);
TN_API size_t tn_lua_memory(const struct tn_lua *lua);
TN_API uint64_t tn_lua_calls(const struct tn_lua *lua);

#endif
