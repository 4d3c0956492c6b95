/*
 * hook.c -- the broker's Lua side: the on_publish(topic, body) hook from
 * broker.lua.script, which may drop a message (return false), replace its
 * body (return a string) or reroute it (return topic, body); and the
 * functions scripts call, ternd.broker.publish(topic, body [, defer_ms]) and
 * ternd.broker.depth(topic), in the broker's state and in every other
 * module's state on the loop thread. A failing hook lets the message pass
 * unchanged (the error is logged and counted by the Lua host).
 */
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

struct broker_lua {
    struct broker *bk;
    struct tn_lua *lua;
    int in_hook;                     /* publishes from inside on_publish skip it */
    char topic[BROKER_NAME_MAX + 1]; /* the hook's answers, valid until the next call */
    struct tn_buf body;
};

/* Pool workers build Lua states on their own threads, and the broker must
 * not be touched from there: the opener asks tn_on_loop_thread(). */

/* The functions find the broker at call time: a state that outlives the
 * module (another module's, after a reload without a broker) gets an error
 * instead of a dangling pointer. */
static struct broker *running(lua_State *L)
{
    if (!broker_self)
        luaL_error(L, "ternd.broker: the broker module is not running");
    return broker_self;
}

/* ternd.broker.publish(topic, body [, defer_ms]) -> true | nil, error */
static int l_publish(lua_State *L)
{
    struct broker *bk = running(L);
    const char *topic = luaL_checkstring(L, 1);
    size_t len;
    const char *body = luaL_checklstring(L, 2, &len);
    lua_Integer defer = luaL_optinteger(L, 3, 0);
    int rc = broker_publish(bk, topic, body, len, (int64_t)defer, 1);

    if (rc == 0) /* the script may acknowledge at once: the records go out now */
        rc = broker_store_flush(bk);

    if (rc != 0) {
        lua_pushnil(L);
        lua_pushstring(L, tn_strerror(rc));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ternd.broker.depth(topic) -> messages waiting in the topic, or nil */
static int l_depth(lua_State *L)
{
    struct broker_topic *t = broker_topic_find(running(L), luaL_checkstring(L, 1));

    if (!t)
        lua_pushnil(L);
    else
        lua_pushinteger(L, (lua_Integer)broker_topic_depth(t));
    return 1;
}

/* Adds ternd.broker (the `ternd` table is on the top of the stack): to the
 * broker's own state, and, as an opener, to every state built on the loop
 * thread (the gateway's scripts publish this way). */
static int hook_open(lua_State *L, void *ud)
{
    static const luaL_Reg fns[] = {{"publish", l_publish}, {"depth", l_depth}, {NULL, NULL}};

    if (!tn_on_loop_thread())
        return 0;
    luaL_newlib(L, fns);
    lua_setfield(L, -2, "broker");
    return 0;
}

int broker_hook_add_opener(void)
{
    return tn_lua_add_opener("broker", hook_open, NULL);
}

void broker_hook_remove_opener(void)
{
    tn_lua_remove_opener(hook_open, NULL);
}

struct broker_lua *broker_hook_create(struct broker *bk, const struct tn_lua_conf *lc)
{
    struct broker_lua *h = calloc(1, sizeof(*h));
    char err[512];

    if (!h)
        return NULL;
    h->bk = bk;
    h->lua = tn_lua_create("broker", lc, hook_open, h, err, sizeof(err));
    if (!h->lua) {
        tn_log_error(BROKER_LOG, "lua: %s", err);
        free(h);
        return NULL;
    }
    return h;
}

int broker_hook_reload(struct broker_lua *h, const struct tn_lua_conf *lc)
{
    char err[512];
    int rc = tn_lua_reload(h->lua, lc, err, sizeof(err));

    if (rc != 0)
        tn_log_error(BROKER_LOG, "lua reload failed, keeping the old script: %s", err);
    return rc;
}

void broker_hook_destroy(struct broker_lua *h)
{
    if (!h)
        return;
    tn_lua_destroy(h->lua);
    tn_buf_free(&h->body);
    free(h);
}

uint64_t broker_hook_errors(const struct broker_lua *h)
{
    return tn_lua_errors(h->lua);
}

/* Read on_publish's answers (at -2, -1). 1 = drop. */
static int hook_answer(struct broker_lua *h, lua_State *L, const char **topic_out,
                       const void **body_out, size_t *len_out)
{
    size_t n;
    const char *s;

    if (lua_isboolean(L, -2) && !lua_toboolean(L, -2))
        return 1;
    if (lua_type(L, -2) != LUA_TSTRING)
        return 0; /* nil or true: unchanged */
    if (lua_type(L, -1) == LUA_TSTRING) {
        s = lua_tolstring(L, -2, &n);
        /* a name too long for the buffer becomes "" and fails validation */
        if (n > BROKER_NAME_MAX || memchr(s, '\0', n))
            n = 0;
        memcpy(h->topic, s, n);
        h->topic[n] = '\0';
        *topic_out = h->topic;
        s = lua_tolstring(L, -1, &n);
    } else {
        s = lua_tolstring(L, -2, &n);
    }
    tn_buf_reset(&h->body);
    if (tn_buf_append(&h->body, s, n) != 0)
        return 0;
    *body_out = tn_buf_rptr(&h->body);
    *len_out = n;
    return 0;
}

int broker_hook_publish(struct broker_lua *h, const char *topic, const void *body, size_t len,
                        const char **topic_out, const void **body_out, size_t *len_out)
{
    lua_State *L;
    int drop = 0;

    *topic_out = topic;
    *body_out = body;
    *len_out = len;
    if (h->in_hook || !tn_lua_getfunc(h->lua, "on_publish"))
        return 0;
    L = tn_lua_state(h->lua);
    lua_pushstring(L, topic);
    lua_pushlstring(L, body, len);
    h->in_hook = 1;
    if (tn_lua_pcall(h->lua, 2, 2, "on_publish") == 0) {
        drop = hook_answer(h, L, topic_out, body_out, len_out);
        lua_pop(L, 2);
    }
    h->in_hook = 0;
    return drop;
}
