/*
 * test_lua.c -- the Lua host: state creation and script errors with their
 * full path, pcall error logging, the memory and instruction limits, the
 * sandbox, ternd.log/now/timer/json, reload, openers and check_file.
 * Scripts live in t/unit/lua; log lines go to a temporary file the tests read.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <ev.h>
#include <lauxlib.h>
#include <lua.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

#define SCRIPT(name) TEST_SRCDIR "/t/unit/lua/" name

static char log_path[] = "/tmp/ternd-test-lua-log-XXXXXX";
static int bumps;      /* ternd.test_bump() calls, across states */
static char order[16]; /* which open functions ran, in order */
static struct tn_lua_conf reload_conf;

/* ---- helpers -------------------------------------------------------------- */

static char *log_text(void)
{
    FILE *f = fopen(log_path, "r");
    char *s = calloc(1, 1 << 20);
    size_t n;

    assert_non_null(f);
    assert_non_null(s);
    n = fread(s, 1, (1 << 20) - 1, f);
    s[n] = '\0';
    fclose(f);
    return s;
}

static size_t count_of(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* How often needle occurs in the log so far. */
static size_t log_count(const char *needle)
{
    char *s = log_text();
    size_t n = count_of(s, needle);

    if (n == 0)
        fprintf(stderr, "log does not contain \"%s\"; log:\n%s\n", needle, s);
    free(s);
    return n;
}

static int bump(lua_State *L)
{
    bumps++;
    return 0;
}

/* ternd.test_call(f): call f through tn_lua_pcall from inside a call. */
static int call_nested(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_pushvalue(L, 1);
    lua_pushboolean(L, tn_lua_pcall(tn_lua_from(L), 0, 0, "nested") == 0);
    return 1;
}

/* Reloading from inside a call must be refused. */
static int reload_inside(lua_State *L)
{
    char err[256];
    int rc = tn_lua_reload(tn_lua_from(L), &reload_conf, err, sizeof(err));

    lua_pushinteger(L, rc);
    lua_pushstring(L, err);
    return 2;
}

static int owner_open(lua_State *L, void *ud)
{
    strcat(order, "o");
    lua_pushcfunction(L, bump);
    lua_setfield(L, -2, "test_bump");
    lua_pushcfunction(L, reload_inside);
    lua_setfield(L, -2, "test_reload");
    lua_pushcfunction(L, call_nested);
    lua_setfield(L, -2, "test_call");
    return 0;
}

static struct tn_lua *make(const char *script, uint64_t mem, int64_t instr)
{
    struct tn_lua_conf lc;
    char err[1024] = "";
    struct tn_lua *lua;

    tn_lua_conf_default(&lc);
    lc.script = (char *)script;
    if (mem)
        lc.memory_limit = mem;
    if (instr)
        lc.instruction_limit = instr;
    lua = tn_lua_create("test", &lc, owner_open, &bumps, err, sizeof(err));
    if (!lua)
        fprintf(stderr, "create failed: %s\n", err);
    assert_non_null(lua);
    return lua;
}

/* Compile and run code through tn_lua_pcall; results stay on the stack. */
static int run(struct tn_lua *lua, const char *code, int nresults)
{
    lua_State *L = tn_lua_state(lua);
    int rc;

    assert_int_equal(luaL_loadstring(L, code), LUA_OK);
    rc = tn_lua_pcall(lua, 0, nresults, "test");
    if (rc != 0 && log_count("test: test:") == 0)
        fail_msg("failed call not logged");
    return rc;
}

/* Run code returning one string; a copy of it (the caller frees). */
static char *eval_str(struct tn_lua *lua, const char *code)
{
    lua_State *L = tn_lua_state(lua);
    int top = lua_gettop(L);
    char *s;

    if (run(lua, code, 1) != 0) {
        char *log = log_text();
        fail_msg("%s failed; log:\n%s", code, log);
    }
    assert_int_equal(lua_type(L, -1), LUA_TSTRING);
    s = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    assert_int_equal(lua_gettop(L), top);
    return s;
}

static void assert_eval(struct tn_lua *lua, const char *code, const char *want)
{
    char *s = eval_str(lua, code);

    assert_string_equal(s, want);
    free(s);
}

static lua_Number eval_num(struct tn_lua *lua, const char *code)
{
    lua_State *L = tn_lua_state(lua);
    lua_Number n;

    assert_int_equal(run(lua, code, 1), 0);
    assert_true(lua_isnumber(L, -1));
    n = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return n;
}

static void loop_break(struct ev_loop *loop, ev_timer *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

/* Run the core's loop for a bounded time. */
static void run_loop(double seconds)
{
    ev_timer guard;

    ev_now_update(tn_loop());
    ev_timer_init(&guard, loop_break, seconds, 0);
    ev_timer_start(tn_loop(), &guard);
    ev_run(tn_loop(), 0);
    ev_timer_stop(tn_loop(), &guard);
}

/* tn_lua_create on script must fail; returns the reason (a static buffer). */
static const char *create_error(const char *script)
{
    static char err[2048];
    struct tn_lua_conf lc;

    tn_lua_conf_default(&lc);
    lc.script = (char *)script;
    err[0] = '\0';
    assert_null(tn_lua_create("test", &lc, owner_open, NULL, err, sizeof(err)));
    return err;
}

/*
 * Load script from a path longer than Lua keeps in its messages (LUA_IDSIZE
 * is 60) with tn_lua_create, or tn_lua_check_file when compile_only, and
 * check that the error starts with the full path followed by suffix.
 */
static void check_long_path(const char *script, int compile_only, const char *suffix)
{
    char dir[] = "/tmp/ternd-test-lua-XXXXXX";
    const char *sub = "a-directory-name-long-enough-to-be-shortened/by-lua";
    char cmd[2048], path[1024], want[1200], err[2048] = "";

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, strrchr(script, '/') + 1);
    assert_true(strlen(path) > 60);
    snprintf(cmd, sizeof(cmd), "mkdir -p '%s/%s' && cp '%s' '%s'", dir, sub, script, path);
    assert_int_equal(system(cmd), 0);
    if (compile_only)
        assert_int_equal(tn_lua_check_file(path, err, sizeof(err)), TN_ELUA);
    else
        snprintf(err, sizeof(err), "%s", create_error(path));
    snprintf(want, sizeof(want), "%s%s", path, suffix);
    if (strncmp(err, want, strlen(want)) != 0)
        fail_msg("error \"%s\" does not start with \"%s\"", err, want);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static int setup(void **state)
{
    assert_int_equal(truncate(log_path, 0), 0);
    bumps = 0;
    order[0] = '\0';
    return 0;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_create_without_script(void **state)
{
    struct tn_lua *lua = make(NULL, 0, 0);
    lua_State *L = tn_lua_state(lua);

    assert_string_equal(order, "o");
    assert_ptr_equal(tn_lua_from(L), lua);
    assert_ptr_equal(tn_lua_from(lua_newthread(L)), lua); /* coroutines too */
    lua_pop(L, 1);
    assert_ptr_equal(tn_lua_userdata(lua), &bumps);
    assert_true(tn_lua_memory(lua) > 1000);
    assert_eval(lua, "return ternd.version", PACKAGE_VERSION);
    assert_eval(lua,
                "return type(ternd.log) .. type(ternd.now) .. type(ternd.monotonic) .."
                "type(ternd.timer) .. type(ternd.json.encode) .. type(ternd.json.decode)",
                "functionfunctionfunctionfunctionfunctionfunction");
    assert_int_equal(tn_lua_getfunc(lua, "fail"), 0);
    assert_int_equal(lua_gettop(L), 0);
    assert_int_equal(tn_lua_errors(lua), 0);
    tn_lua_destroy(lua);

    /* a state no tn_lua made */
    L = luaL_newstate();
    assert_null(tn_lua_from(L));
    lua_close(L);
}

static void test_create_with_script(void **state)
{
    struct tn_lua *lua = make(SCRIPT("basic.lua"), 0, 0);
    lua_State *L = tn_lua_state(lua);
    uint64_t calls = tn_lua_calls(lua);

    assert_int_equal(tn_lua_getfunc(lua, "greeting"), 0); /* a string, not a function */
    assert_int_equal(lua_gettop(L), 0);
    assert_int_equal(tn_lua_getfunc(lua, "add"), 1);
    lua_pushinteger(L, 40);
    lua_pushinteger(L, 2);
    assert_int_equal(tn_lua_pcall(lua, 2, 1, "add"), 0);
    assert_int_equal(lua_gettop(L), 1);
    assert_int_equal(lua_tointeger(L, -1), 42);
    lua_pop(L, 1);

    lua_pushstring(L, "below"); /* the call must not disturb what is under it */
    assert_int_equal(tn_lua_getfunc(lua, "three"), 1);
    assert_int_equal(tn_lua_pcall(lua, 0, LUA_MULTRET, "three"), 0);
    assert_int_equal(lua_gettop(L), 4);
    assert_string_equal(lua_tostring(L, 1), "below");
    assert_string_equal(lua_tostring(L, 3), "two");
    lua_settop(L, 0);

    assert_int_equal(tn_lua_getfunc(lua, "bump_twice"), 1);
    assert_int_equal(tn_lua_pcall(lua, 0, 0, "bump_twice"), 0);
    assert_int_equal(bumps, 2);
    assert_int_equal(tn_lua_calls(lua), calls + 3);
    assert_int_equal(tn_lua_errors(lua), 0);
    tn_lua_destroy(lua);
}

static void test_syntax_error(void **state)
{
    const char *err = create_error(SCRIPT("syntax_error.lua"));

    assert_non_null(strstr(err, SCRIPT("syntax_error.lua") ":3:"));
    assert_non_null(strstr(err, "near '='"));
    /* a path longer than Lua keeps in its messages is still named in full */
    check_long_path(SCRIPT("syntax_error.lua"), 0, ":3:");

    err = create_error("/nonexistent/ternd/script.lua");
    assert_non_null(strstr(err, "cannot open /nonexistent/ternd/script.lua"));
}

static void test_runtime_error_at_load(void **state)
{
    const char *err = create_error(SCRIPT("load_error.lua"));

    assert_non_null(strstr(err, SCRIPT("load_error.lua") ":3: broken at load"));
    assert_non_null(strstr(err, "stack traceback:"));

    check_long_path(SCRIPT("load_error.lua"), 0, ":3: broken at load\nstack traceback:");

    /* the timer the failed script started went away with its state */
    run_loop(0.05);
    assert_int_equal(bumps, 0);
}

static void test_pcall_error(void **state)
{
    struct tn_lua *lua = make(SCRIPT("basic.lua"), 0, 0);
    lua_State *L = tn_lua_state(lua);

    lua_pushstring(L, "below");
    assert_int_equal(tn_lua_getfunc(lua, "fail"), 1);
    assert_int_equal(tn_lua_pcall(lua, 0, 1, "on_fail"), TN_ELUA);
    assert_int_equal(lua_gettop(L), 1); /* function and error are gone */
    assert_string_equal(lua_tostring(L, 1), "below");
    lua_settop(L, 0);
    assert_int_equal(tn_lua_errors(lua), 1);
    assert_int_equal(tn_lua_calls(lua), 1);
    assert_int_equal(
        log_count("[error] test: on_fail: " SCRIPT("basic.lua") ":6: failing on purpose\n"
                                                                "stack traceback:"),
        1);
    assert_int_equal(log_count("failing on purpose"), 1); /* logged once */
    assert_int_equal(log_count("in function 'fail'"), 1);

    /* error values that are not strings */
    assert_int_equal(run(lua, "error({})", 0), TN_ELUA);
    assert_int_equal(log_count("(error object is a table value)"), 1);
    assert_int_equal(run(lua,
                         "error(setmetatable({}, {__tostring = function() "
                         "return 'custom error' end}))",
                         0),
                     TN_ELUA);
    assert_int_equal(log_count("test: test: custom error"), 1);
    assert_int_equal(tn_lua_errors(lua), 3);
    assert_int_equal(lua_gettop(L), 0);
    tn_lua_destroy(lua);
}

static void test_memory_limit(void **state)
{
    const uint64_t limit = 1 << 20;
    struct tn_lua *lua = make(SCRIPT("basic.lua"), limit, 0);
    lua_State *L = tn_lua_state(lua);
    struct tn_lua_conf lc;
    char err[256];

    assert_int_equal(run(lua, "hoard = {} for i = 1, 1e6 do hoard[i] = ('x'):rep(64) .. i end", 0),
                     TN_ELUA);
    assert_int_equal(tn_lua_errors(lua), 1);
    assert_int_equal(log_count("test: test: not enough memory (memory_limit 1048576 bytes "
                               "reached)"),
                     1);
    assert_true(tn_lua_memory(lua) <= limit);

    /* one big allocation is refused as well */
    assert_int_equal(run(lua, "return ('x'):rep(1 << 24)", 1), TN_ELUA);
    assert_int_equal(tn_lua_errors(lua), 2);
    assert_int_equal(lua_gettop(L), 0);

    /* JSON work cut short by the limit: the state survives, jansson memory is boxed */
    assert_int_equal(run(lua,
                         "local s = ('y'):rep(100000) local t = {} for i = 1, 20 do t[i] = s end "
                         "return ternd.json.encode(t)",
                         1),
                     TN_ELUA);
    assert_int_equal(run(lua, "return ternd.json.decode('[' .. ('1,'):rep(100000) .. '1]')", 1),
                     TN_ELUA);
    assert_int_equal(log_count("not enough memory"), 4);
    assert_int_equal(tn_lua_errors(lua), 4);

    /* and the state goes on working */
    assert_int_equal(tn_lua_getfunc(lua, "add"), 1);
    lua_pushinteger(L, 1);
    lua_pushinteger(L, 2);
    assert_int_equal(tn_lua_pcall(lua, 2, 1, "add"), 0);
    assert_int_equal(lua_tointeger(L, -1), 3);
    lua_pop(L, 1);
    assert_int_equal(eval_num(lua, "local t = {} for i = 1, 1000 do t[i] = i end return #t"), 1000);
    assert_true(tn_lua_memory(lua) <= limit);
    assert_int_equal(tn_lua_errors(lua), 4);
    tn_lua_destroy(lua);

    /* a limit the bare state does not fit in fails cleanly */
    tn_lua_conf_default(&lc);
    lc.memory_limit = 4096;
    assert_null(tn_lua_create("test", &lc, NULL, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "not enough memory"));
}

static void test_instruction_limit(void **state)
{
    struct tn_lua *lua = make(NULL, 0, 100000);

    assert_int_equal(run(lua, "while true do end", 0), TN_ELUA);
    assert_int_equal(log_count("instruction limit exceeded (100000)"), 1);
    assert_int_equal(tn_lua_errors(lua), 1);

    /* the budget is per call: two calls of ~60000 instructions both pass */
    assert_int_equal(run(lua, "local n = 0 for i = 1, 20000 do n = n + i end", 0), 0);
    assert_int_equal(run(lua, "local n = 0 for i = 1, 20000 do n = n + i end", 0), 0);

    /* catching the error does not buy more instructions */
    assert_int_equal(run(lua, "while true do pcall(function() while true do end end) end", 0),
                     TN_ELUA);
    /* nor does running in a coroutine */
    assert_int_equal(run(lua, "coroutine.wrap(function() while true do end end)()", 0), TN_ELUA);
    /* nor do calls nested through the host: they share the outer budget */
    assert_int_equal(eval_num(lua, "return ternd.test_call(function() end) and 1 or 0"), 1);
    assert_int_equal(run(lua, "while true do ternd.test_call(function() end) end", 0), TN_ELUA);
    assert_true(tn_lua_errors(lua) >= 4); /* the nested call may fail too */
    assert_int_equal(eval_num(lua, "return 6 * 7"), 42);
    tn_lua_destroy(lua);

    /* 0: unlimited */
    lua = make(NULL, 0, 0);
    assert_int_equal(run(lua, "local n = 0 for i = 1, 3e5 do n = n + i end", 0), 0);
    tn_lua_destroy(lua);
}

/* The coroutine in global `name`, kept alive by that global. */
static lua_State *global_thread(struct tn_lua *lua, const char *name)
{
    lua_State *L = tn_lua_state(lua), *co;

    lua_getglobal(L, name);
    co = lua_tothread(L, -1);
    lua_pop(L, 1);
    assert_non_null(co);
    return co;
}

static void test_resume(void **state)
{
    struct tn_lua *lua = make(NULL, 1 << 20, 100000);
    lua_State *co, *fresh;
    int n = -1;

    /* a thread made before any call has no hook to inherit */
    fresh = lua_newthread(tn_lua_state(lua));
    lua_setglobal(tn_lua_state(lua), "fresh");
    assert_int_equal(luaL_loadstring(fresh, "while true do end"), LUA_OK);

    assert_int_equal(run(lua,
                         "co = coroutine.create(function(a) "
                         "  local b = coroutine.yield(a + 1) error('co failed: ' .. b) end) "
                         "small = coroutine.create(function() "
                         "  local n = 0 for i = 1, 2000 do n = n + i end coroutine.yield(n) end) "
                         "spin = coroutine.create(function() while true do end end) "
                         "hog = coroutine.create(function() local t = {} "
                         "  for i = 1, 1e6 do t[i] = ('x'):rep(64) .. i end end)",
                         0),
                     0);
    co = global_thread(lua, "co");
    lua_pushinteger(co, 41);
    assert_int_equal(tn_lua_resume(lua, co, 1, &n, "co"), 1); /* yielded */
    assert_int_equal(n, 1);
    assert_int_equal(lua_tointeger(co, -1), 42);
    lua_pop(co, n);
    lua_pushstring(co, "x");
    assert_int_equal(tn_lua_resume(lua, co, 1, &n, "co"), TN_ELUA);
    assert_int_equal(n, 0);
    assert_int_equal(lua_gettop(co), 0);
    assert_int_equal(log_count("[error] test: co: [string \"co = coroutine.create"), 1);
    assert_int_equal(log_count("co failed: x\nstack traceback:"), 1);
    assert_int_equal(tn_lua_errors(lua), 1);

    /* every resume gets a fresh budget, even right after one ran out */
    assert_int_equal(run(lua, "while true do end", 0), TN_ELUA);
    co = global_thread(lua, "small");
    assert_int_equal(tn_lua_resume(lua, co, 0, &n, "small"), 1);
    assert_int_equal(lua_tointeger(co, -1), 2001000);
    lua_pop(co, n);
    assert_int_equal(tn_lua_resume(lua, co, 0, &n, "small"), 0); /* finished */
    assert_int_equal(n, 0);
    assert_int_equal(tn_lua_resume(lua, global_thread(lua, "spin"), 0, &n, "spin"), TN_ELUA);
    assert_int_equal(tn_lua_resume(lua, fresh, 0, &n, "fresh"), TN_ELUA);
    assert_int_equal(log_count("instruction limit exceeded (100000)"), 3);
    /* and the memory limit applies */
    assert_int_equal(tn_lua_resume(lua, global_thread(lua, "hog"), 0, &n, "hog"), TN_ELUA);
    assert_int_equal(log_count("test: hog: not enough memory (memory_limit 1048576"), 1);
    assert_int_equal(tn_lua_errors(lua), 5);
    assert_int_equal(lua_gettop(tn_lua_state(lua)), 0);
    tn_lua_destroy(lua);
}

static void test_sandbox(void **state)
{
    struct tn_lua *lua = make(NULL, 0, 0);

    assert_eval(lua,
                "return type(debug.sethook) .. ' ' .. type(os.exit) .. ' ' .."
                "type(debug.traceback) .. ' ' .. type(os.time) .. ' ' .. type(io.open) .."
                "' ' .. type(string.rep) .. ' ' .. type(require('debug').sethook)",
                "nil nil function function function function nil");
    assert_int_equal(run(lua, "os.exit(1)", 0), TN_ELUA);
    assert_int_equal(run(lua, "debug.sethook()", 0), TN_ELUA);
    tn_lua_destroy(lua);
}

static void test_log_and_clocks(void **state)
{
    struct tn_lua *lua = make(NULL, 0, 0);
    lua_Number now, m1, m2;

    assert_int_equal(run(lua, "ternd.log('warn', 'hello', 42, true, nil, 1.5)", 0), 0);
    assert_int_equal(log_count("[warn] test: hello 42 true nil 1.5\n"), 1);
    assert_int_equal(run(lua, "ternd.log('info')", 0), 0);
    assert_int_equal(log_count("[info] test: \n"), 1);
    assert_int_equal(run(lua, "ternd.log('debug', 'not shown at info level')", 0), 0);
    assert_int_equal(run(lua, "ternd.log('loud', 'x')", 0), TN_ELUA);
    assert_int_equal(log_count("level must be"), 1);
    {
        char *s = log_text();
        assert_null(strstr(s, "not shown at info level"));
        free(s);
    }

    now = eval_num(lua, "return ternd.now()");
    assert_true(now > (lua_Number)time(NULL) - 2 && now < (lua_Number)time(NULL) + 2);
    assert_int_equal(eval_num(lua, "return math.type(ternd.now()) == 'float' and 1 or 0"), 1);
    m1 = eval_num(lua, "return ternd.monotonic()");
    usleep(20000);
    m2 = eval_num(lua, "return ternd.monotonic()");
    assert_true(m2 - m1 >= 0.015 && m2 - m1 < 5);
    tn_lua_destroy(lua);
}

static void test_timers(void **state)
{
    struct tn_lua *lua = make(SCRIPT("timers.lua"), 0, 0);

    assert_int_equal(run(lua, "collectgarbage()", 0), 0); /* dropped handles still fire */
    run_loop(0.2);
    assert_int_equal(eval_num(lua, "return fired.once"), 1);
    assert_int_equal(eval_num(lua, "return once:active() and 1 or 0"), 0); /* fired: done */
    assert_int_equal(eval_num(lua, "return fired.rep"), 3);
    assert_int_equal(eval_num(lua, "return fired.cancelled"), 0);
    assert_int_equal(eval_num(lua, "return fired.failing"), 1);
    assert_int_equal(eval_num(lua, "return (rep_cancel_result == true and rep_active_after == "
                                   "false and cancel_active_before == true and cancel_result == "
                                   "true and cancel_again == false) and 1 or 0"),
                     1);
    assert_int_equal(tn_lua_errors(lua), 1);
    assert_int_equal(log_count("[error] test: timer: " SCRIPT("timers.lua")), 1);
    assert_int_equal(log_count("timer failed on purpose"), 1);

    /* bad arguments */
    assert_int_equal(run(lua, "ternd.timer(-1, print)", 0), TN_ELUA);
    assert_int_equal(run(lua, "ternd.timer(1, 'not a function')", 0), TN_ELUA);
    assert_int_equal(run(lua, "ternd.timer(1, print, 0)", 0), TN_ELUA);

    /* destroying the state stops a pending timer */
    assert_int_equal(run(lua, "ternd.timer(0.01, ternd.test_bump, 0.01)", 0), 0);
    tn_lua_destroy(lua);
    run_loop(0.05);
    assert_int_equal(bumps, 0);
}

static void test_reload_success(void **state)
{
    struct tn_lua *lua = make(SCRIPT("reload_a.lua"), 0, 0);
    lua_State *old = tn_lua_state(lua);
    char err[512] = "", *s;
    int seen;

    run_loop(0.05);
    assert_true(bumps > 0); /* generation a's timer runs */

    /* not from inside a call */
    tn_lua_conf_default(&reload_conf);
    reload_conf.script = SCRIPT("reload_b.lua");
    assert_int_equal(run(lua, "rc, why = ternd.test_reload()", 0), 0);
    assert_int_equal(eval_num(lua, "return rc"), TN_ELUA);
    s = eval_str(lua, "return why");
    assert_non_null(strstr(s, "inside"));
    free(s);

    order[0] = '\0';
    assert_int_equal(tn_lua_reload(lua, &reload_conf, err, sizeof(err)), 0);
    assert_string_equal(order, "o"); /* the owner's open ran on the new state */
    assert_ptr_not_equal(tn_lua_state(lua), old);
    assert_eval(lua, "return generation", "b");
    seen = bumps;
    run_loop(0.05);
    assert_int_equal(bumps, seen); /* the old timer is gone */
    tn_lua_destroy(lua);
}

static void test_reload_failure(void **state)
{
    struct tn_lua *lua = make(SCRIPT("reload_a.lua"), 0, 0);
    lua_State *old = tn_lua_state(lua);
    struct tn_lua_conf lc;
    char err[1024] = "";
    int seen;

    assert_int_equal(run(lua, "kept = 'still here'", 0), 0);
    tn_lua_conf_default(&lc);
    lc.script = SCRIPT("syntax_error.lua");
    assert_int_equal(tn_lua_reload(lua, &lc, err, sizeof(err)), TN_ELUA);
    assert_non_null(strstr(err, SCRIPT("syntax_error.lua") ":3:"));
    lc.script = SCRIPT("load_error.lua");
    assert_int_equal(tn_lua_reload(lua, &lc, err, sizeof(err)), TN_ELUA);
    assert_non_null(strstr(err, SCRIPT("load_error.lua") ":3: broken at load"));
    assert_int_equal(tn_lua_errors(lua), 2);

    assert_ptr_equal(tn_lua_state(lua), old);
    assert_eval(lua, "return generation .. ' ' .. kept", "a still here");
    seen = bumps;
    run_loop(0.05);
    assert_true(bumps > seen); /* the old state's timer still runs */
    tn_lua_destroy(lua);
}

static int opener_one(lua_State *L, void *ud)
{
    strcat(order, "1");
    lua_getfield(L, -1, "version"); /* `ternd` is on the top */
    assert_int_equal(lua_type(L, -1), LUA_TSTRING);
    lua_pop(L, 1);
    lua_pushstring(L, ud);
    lua_setfield(L, -2, "one");
    return 0;
}

static int opener_two(lua_State *L, void *ud)
{
    strcat(order, "2");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "two");
    lua_pushstring(L, "left over"); /* junk on the stack is dropped */
    return 0;
}

static int opener_bad(lua_State *L, void *ud)
{
    strcat(order, "x");
    return TN_EINVAL;
}

static void test_openers(void **state)
{
    struct tn_lua *lua;
    char err[256];

    assert_int_equal(tn_lua_add_opener("one", opener_one, "first"), 0);
    assert_int_equal(tn_lua_add_opener("two", opener_two, NULL), 0);
    assert_int_equal(tn_lua_add_opener("one again", opener_one, "first"), TN_EEXIST);
    assert_int_equal(tn_lua_add_opener("none", NULL, NULL), TN_EINVAL);
    lua = make(NULL, 0, 0);
    assert_string_equal(order, "12o");
    assert_eval(lua, "return ternd.one .. ' ' .. tostring(ternd.two)", "first true");
    assert_int_equal(lua_gettop(tn_lua_state(lua)), 0);

    /* openers run on reloaded states too (NULL conf: the defaults) */
    order[0] = '\0';
    assert_int_equal(tn_lua_reload(lua, NULL, err, sizeof(err)), 0);
    assert_string_equal(order, "12o");
    tn_lua_destroy(lua);

    tn_lua_remove_opener(opener_one, "first");
    order[0] = '\0';
    lua = make(NULL, 0, 0);
    assert_string_equal(order, "2o");
    assert_eval(lua, "return tostring(ternd.one)", "nil");
    tn_lua_destroy(lua);

    /* a failing opener fails the create, naming it */
    assert_int_equal(tn_lua_add_opener("bad", opener_bad, NULL), 0);
    order[0] = '\0';
    assert_null(tn_lua_create("test", NULL, owner_open, NULL, err, sizeof(err)));
    assert_string_equal(order, "2x");
    assert_non_null(strstr(err, "opener 'bad'"));
    tn_lua_remove_opener(opener_bad, NULL);
    tn_lua_remove_opener(opener_two, NULL);
    tn_lua_remove_opener(opener_two, NULL); /* removing twice is harmless */

    order[0] = '\0';
    lua = make(NULL, 0, 0);
    assert_string_equal(order, "o");
    tn_lua_destroy(lua);
}

static void test_json_round_trip(void **state)
{
    struct tn_lua *lua = make(SCRIPT("json.lua"), 0, 0);

    assert_eval(lua, "return ternd.json.encode({1, 2, 'x', true, 1.5})", "[1,2,\"x\",true,1.5]");
    assert_eval(lua, "return ternd.json.encode({a = {b = {ternd.json.null}}})",
                "{\"a\":{\"b\":[null]}}");
    assert_eval(lua, "return ternd.json.encode({0.1, 2.0, -1e-300})", "[0.1,2.0,-1e-300]");
    assert_eval(lua, "return tostring(ternd.json.decode(ternd.json.encode(1/3)) == 1/3)", "true");
    assert_eval(lua, "return ternd.json.encode({})", "{}");
    assert_eval(lua, "return ternd.json.encode({[10] = 'ten'})", "{\"10\":\"ten\"}");
    assert_eval(lua, "return ternd.json.encode('quote\" and \\n newline')",
                "\"quote\\\" and \\n newline\"");
    assert_eval(lua,
                "local t = ternd.json.decode('{\"k\":[3,{\"z\":false}]}') "
                "return type(t.k) .. #t.k .. tostring(t.k[2].z)",
                "table2false");
    assert_int_equal(tn_lua_getfunc(lua, "json_round_trips"), 1);
    assert_int_equal(tn_lua_pcall(lua, 0, 0, "json_round_trips"), 0);
    assert_int_equal(tn_lua_errors(lua), 0);
    tn_lua_destroy(lua);
}

static void test_json_errors(void **state)
{
    struct tn_lua *lua = make(SCRIPT("json.lua"), 0, 0);

    assert_int_equal(tn_lua_getfunc(lua, "json_errors"), 1);
    if (tn_lua_pcall(lua, 0, 0, "json_errors") != 0) {
        char *log = log_text();
        fail_msg("json_errors failed; log:\n%s", log);
    }
    assert_int_equal(run(lua, "ternd.json.encode({print})", 0), TN_ELUA);
    assert_int_equal(log_count("json.encode: cannot encode a function value"), 1);
    assert_int_equal(run(lua, "ternd.json.decode('{\"a\":')", 0), TN_ELUA);
    assert_int_equal(log_count("json.decode: "), 1);
    assert_int_equal(lua_gettop(tn_lua_state(lua)), 0);
    tn_lua_destroy(lua);
}

static void test_check_file(void **state)
{
    char err[1024] = "";

    assert_int_equal(tn_lua_check_file(SCRIPT("basic.lua"), err, sizeof(err)), 0);
    /* compiled, not run: the error at load does not happen */
    assert_int_equal(tn_lua_check_file(SCRIPT("load_error.lua"), err, sizeof(err)), 0);
    assert_int_equal(tn_lua_check_file(SCRIPT("syntax_error.lua"), err, sizeof(err)), TN_ELUA);
    assert_non_null(strstr(err, SCRIPT("syntax_error.lua") ":3:"));
    check_long_path(SCRIPT("syntax_error.lua"), 1, ":3:");
    assert_int_equal(tn_lua_check_file("/nonexistent/x.lua", err, sizeof(err)), TN_ELUA);
    assert_non_null(strstr(err, "cannot open /nonexistent/x.lua"));
}

/* Precompiled chunks are refused: bytecode is not checked by Lua. */
static void test_binary_chunk_refused(void **state)
{
    char path[] = "/tmp/ternd-test-lua-chunk-XXXXXX", code[256], err[512];
    struct tn_lua *lua = make(NULL, 0, 0);
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    close(fd);
    snprintf(code, sizeof(code),
             "local f = assert(io.open('%s', 'wb')) "
             "f:write(string.dump(function() return 1 end)) f:close()",
             path);
    assert_int_equal(run(lua, code, 0), 0);
    tn_lua_destroy(lua);
    assert_int_equal(tn_lua_check_file(path, err, sizeof(err)), TN_ELUA);
    assert_non_null(strstr(err, "binary chunk"));
    assert_non_null(strstr(create_error(path), "binary chunk"));
    unlink(path);
}

static void test_conf_default(void **state)
{
    struct tn_lua_conf lc = {(char *)"x", 1, 2};
    const struct tn_conf_cmd *c;
    int found = 0;

    tn_lua_conf_default(&lc);
    assert_null(lc.script);
    assert_int_equal(lc.memory_limit, 64ULL << 20);
    assert_int_equal(lc.instruction_limit, 100000000);
    for (c = tn_lua_conf_table; c->key; c++) {
        if (strcmp(c->key, "script") == 0 && c->type == TN_CONF_PATH &&
            c->offset == offsetof(struct tn_lua_conf, script))
            found |= 1;
        if (strcmp(c->key, "memory_limit") == 0 && c->type == TN_CONF_SIZE &&
            c->offset == offsetof(struct tn_lua_conf, memory_limit))
            found |= 2;
        if (strcmp(c->key, "instruction_limit") == 0 && c->type == TN_CONF_INT &&
            c->offset == offsetof(struct tn_lua_conf, instruction_limit))
            found |= 4;
    }
    assert_int_equal(found, 7);
    assert_int_equal(c - tn_lua_conf_table, 3);
}

static int opener_flag(lua_State *L, void *ud)
{
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "flag");
    return 0;
}

/* A pool worker's life: states created, used and destroyed off the loop thread. */
static void *worker(void *arg)
{
    struct tn_lua_conf lc;
    char err[512];
    long ok = 0;

    tn_lua_conf_default(&lc);
    lc.script = SCRIPT("basic.lua");
    for (int i = 0; i < 40; i++) {
        struct tn_lua *lua = tn_lua_create("worker", &lc, NULL, NULL, err, sizeof(err));
        lua_State *L;

        if (!lua)
            continue;
        L = tn_lua_state(lua);
        if (tn_lua_getfunc(lua, "add")) {
            lua_pushinteger(L, i);
            lua_pushinteger(L, 1);
            if (tn_lua_pcall(lua, 2, 1, "add") == 0 && lua_tointeger(L, -1) == i + 1)
                ok++;
            lua_settop(L, 0);
        }
        tn_lua_destroy(lua);
    }
    return (void *)ok;
}

static void test_threads(void **state)
{
    pthread_t th[3];
    void *ok;

    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker, NULL), 0);
    for (int i = 0; i < 200; i++) { /* openers come and go meanwhile */
        assert_int_equal(tn_lua_add_opener("flag", opener_flag, NULL), 0);
        tn_lua_remove_opener(opener_flag, NULL);
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pthread_join(th[i], &ok), 0);
        assert_int_equal((long)ok, 40);
    }
}

/* The `lua:` key table through the real config loader. */
static struct tn_conf *apply_lua_yaml(const char *yaml, struct tn_lua_conf *lc)
{
    struct tn_conf *cf = tn_conf_load_string("test.yaml", yaml, strlen(yaml));
    const struct tn_conf_node *map;

    assert_non_null(cf);
    assert_int_equal(tn_conf_error_count(cf), 0);
    map = tn_conf_map_get(tn_conf_root(cf), "lua");
    assert_non_null(map);
    tn_lua_conf_default(lc);
    tn_conf_push_key(cf, "lua");
    tn_conf_apply(cf, map, tn_lua_conf_table, lc);
    tn_conf_pop(cf);
    return cf;
}

static void test_conf_table(void **state)
{
    struct tn_lua_conf lc;
    struct tn_conf *cf;
    char cwd[1024];

    cf = apply_lua_yaml("lua: {script: t/unit/lua/basic.lua, memory_limit: 2MiB,\n"
                        "      instruction_limit: 5000}\n",
                        &lc);
    assert_int_equal(tn_conf_error_count(cf), 0);
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_non_null(lc.script);
    assert_memory_equal(lc.script, cwd, strlen(cwd)); /* made absolute */
    assert_string_equal(lc.script + strlen(cwd), "/t/unit/lua/basic.lua");
    assert_int_equal(lc.memory_limit, 2 << 20);
    assert_int_equal(lc.instruction_limit, 5000);
    tn_conf_free(cf);

    cf = apply_lua_yaml("lua: {memory_limit: 0, instruction_limit: 0}\n", &lc);
    assert_int_equal(tn_conf_error_count(cf), 0);
    assert_null(lc.script);
    assert_int_equal(lc.memory_limit, 0);
    assert_int_equal(lc.instruction_limit, 0);
    tn_conf_free(cf);

    cf = apply_lua_yaml("lua:\n  instruction_limit: -1\n  scirpt: x.lua\n", &lc);
    assert_int_equal(tn_conf_error_count(cf), 2);
    assert_non_null(strstr(tn_conf_error_text(cf, 0), "test.yaml:2:"));
    assert_non_null(strstr(tn_conf_error_text(cf, 0), "lua.instruction_limit"));
    assert_non_null(strstr(tn_conf_error_text(cf, 1), "test.yaml:3:"));
    tn_conf_free(cf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_create_without_script, setup),
        cmocka_unit_test_setup(test_create_with_script, setup),
        cmocka_unit_test_setup(test_syntax_error, setup),
        cmocka_unit_test_setup(test_runtime_error_at_load, setup),
        cmocka_unit_test_setup(test_pcall_error, setup),
        cmocka_unit_test_setup(test_memory_limit, setup),
        cmocka_unit_test_setup(test_instruction_limit, setup),
        cmocka_unit_test_setup(test_resume, setup),
        cmocka_unit_test_setup(test_sandbox, setup),
        cmocka_unit_test_setup(test_log_and_clocks, setup),
        cmocka_unit_test_setup(test_timers, setup),
        cmocka_unit_test_setup(test_reload_success, setup),
        cmocka_unit_test_setup(test_reload_failure, setup),
        cmocka_unit_test_setup(test_openers, setup),
        cmocka_unit_test_setup(test_json_round_trip, setup),
        cmocka_unit_test_setup(test_json_errors, setup),
        cmocka_unit_test_setup(test_check_file, setup),
        cmocka_unit_test_setup(test_binary_chunk_refused, setup),
        cmocka_unit_test_setup(test_threads, setup),
        cmocka_unit_test_setup(test_conf_default, setup),
        cmocka_unit_test_setup(test_conf_table, setup),
    };
    int fd = mkstemp(log_path), rc;

    if (fd < 0)
        return 1;
    alarm(120); /* a runaway script must fail the test, not hang it */
    close(fd);
    tn_log_open(log_path);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    tn_log_open(NULL);
    unlink(log_path);
    return rc;
}
