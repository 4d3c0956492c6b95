/*
 * api_lua.c -- ternd.discovery for every Lua state (added as an opener, so
 * the gateway's or the broker's scripts see it too): lookup(name) returns
 * the instances of a service, producers(topic) the brokers of an nsq topic.
 * The functions find the module at call time, so a state that outlives
 * the module gets nil and a message instead of a dangling pointer. The
 * module's own script may define on_change(name, index).
 */
#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#include "discovery.h"

#define WHO "discovery"

/* Pool workers build Lua states on their own threads, and the registries
 * must not be read from there: the opener asks tn_on_loop_thread(). */

/* Metadata as a Lua table through the host's ternd.json.decode (so JSON
 * null is the same ternd.json.null sentinel everywhere); the JSON text
 * when the host has no decoder. */
static void push_metadata(lua_State *L, const char *json)
{
    int top = lua_gettop(L);

    if (lua_getglobal(L, "ternd") == LUA_TTABLE && lua_getfield(L, -1, "json") == LUA_TTABLE &&
        lua_getfield(L, -1, "decode") == LUA_TFUNCTION) {
        lua_pushstring(L, json);
        lua_call(L, 1, 1);
        lua_replace(L, top + 1); /* the result where ternd was */
    } else {
        lua_settop(L, top);
        lua_pushstring(L, json);
    }
    lua_settop(L, top + 1);
}

static void set_str(lua_State *L, const char *k, const char *v)
{
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

static void set_int(lua_State *L, const char *k, int64_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

static void push_instance(lua_State *L, const struct discovery_instance *in)
{
    lua_createtable(L, 0, 8);
    set_str(L, "name", in->name);
    set_str(L, "id", in->id);
    set_str(L, "address", in->address);
    set_int(L, "weight", in->weight);
    set_str(L, "state", discovery_state_name(in->state));
    set_int(L, "ttl", in->ttl);
    set_int(L, "index", (int64_t)in->modify_index);
    push_metadata(L, in->metadata_text);
    lua_setfield(L, -2, "metadata");
}

/* Instances of name as an array (empty when none), and the name's index;
 * nil, message when the discovery module is not running. */
static int l_lookup(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    struct discovery *d = discovery_current();
    struct discovery_service *s;
    lua_Integer i = 0;

    if (!d) {
        lua_pushnil(L);
        lua_pushliteral(L, "the discovery module is not running");
        return 2;
    }
    s = discovery_registry_find(&d->reg, name);
    lua_createtable(L, s ? (int)s->n : 0, 0);
    for (struct discovery_instance *in = s ? s->head : NULL; in; in = in->next) {
        push_instance(L, in);
        lua_rawseti(L, -2, ++i);
    }
    lua_pushinteger(L, (lua_Integer)discovery_registry_name_index(&d->reg, name));
    return 2;
}

/* Active, untombstoned producers of an nsq topic (as /lookup lists them);
 * nil, message when the topic is unknown or the module is not running. */
static int l_producers(lua_State *L)
{
    const char *topic = luaL_checkstring(L, 1);
    struct discovery *d = discovery_current();
    struct discovery_reg *g;
    int64_t now = tn_now_ms();
    lua_Integer i = 0;

    if (!d || !(g = discovery_reg_find(&d->db, DISCOVERY_REG_TOPIC, topic, NULL))) {
        lua_pushnil(L);
        lua_pushstring(L, d ? "topic not found" : "the discovery module is not running");
        return 2;
    }
    lua_createtable(L, (int)g->n, 0);
    for (size_t k = 0; k < g->n; k++) {
        const struct discovery_producer *pr = &g->v[k];
        if (!discovery_peer_active(pr->peer, now, discovery_conf(d)->inactive_timeout) ||
            discovery_producer_tombstoned(pr, now, discovery_conf(d)->tombstone_lifetime))
            continue;
        lua_createtable(L, 0, 6);
        set_str(L, "broadcast_address", pr->peer->broadcast_address);
        set_str(L, "hostname", pr->peer->hostname);
        set_int(L, "tcp_port", pr->peer->tcp_port);
        set_int(L, "http_port", pr->peer->http_port);
        set_str(L, "version", pr->peer->version);
        set_str(L, "remote_address", pr->peer->remote_address);
        lua_rawseti(L, -2, ++i);
    }
    return 1;
}

int discovery_lua_open(lua_State *L, void *ud)
{
    static const luaL_Reg fns[] = {{"lookup", l_lookup}, {"producers", l_producers}, {NULL, NULL}};

    if (!tn_on_loop_thread())
        return 0; /* a worker's state: no ternd.discovery there */

    luaL_newlib(L, fns);
    lua_setfield(L, -2, "discovery");
    return 0;
}

void discovery_lua_on_change(struct discovery *d, const char *name, uint64_t index)
{
    lua_State *L;

    if (!d->lua || !tn_lua_getfunc(d->lua, "on_change"))
        return;
    L = tn_lua_state(d->lua);
    lua_pushstring(L, name);
    lua_pushinteger(L, (lua_Integer)index);
    tn_lua_pcall(d->lua, 2, 0, "on_change");
}
