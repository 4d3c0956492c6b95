/*
 * luaapi.c -- the gateway's Lua side: the hooks on_connect(session),
 * on_packet(session, route, seq, data) and on_disconnect(session), the
 * session object (reply, push, bind, unbind, close, get, set; id, uid,
 * addr, identity) and ternd.gateway (push, join, leave, multicast, broadcast, count,
 * session). A session object holds only the session id, so one kept by a
 * script after the client left is harmless: its methods fail softly.
 */
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <string.h>

#include "gateway.h"

#define SESSION_MT "ternd.gateway.session"

static struct gw *up_gw(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* The session object of s on the stack, created once per Lua state and
 * kept in the registry while the session lives. */
static void push_session(struct gw *gw, lua_State *L, struct gw_session *s)
{
    uint64_t *u;

    if (s->lref >= 0 && s->lgen == gw->lgen) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, s->lref);
        return;
    }
    u = lua_newuserdatauv(L, sizeof(*u), 0);
    *u = s->id;
    luaL_setmetatable(L, SESSION_MT);
    lua_pushvalue(L, -1);
    s->lref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->lgen = gw->lgen;
}

/* A session object or a session id at idx; NULL when it is gone. */
static struct gw_session *to_session(lua_State *L, int idx)
{
    struct gw *gw = up_gw(L);
    uint64_t *u = luaL_testudata(L, idx, SESSION_MT);

    if (u)
        return gw_session_find(gw, *u);
    if (lua_isinteger(L, idx))
        return gw_session_find(gw, (uint64_t)lua_tointeger(L, idx));
    luaL_argerror(L, idx, "session or session id expected");
    return NULL;
}

static int32_t check_int32(lua_State *L, int idx)
{
    lua_Integer v = luaL_checkinteger(L, idx);

    luaL_argcheck(L, v >= INT32_MIN && v <= INT32_MAX, idx, "out of range");
    return (int32_t)v;
}

/* true, or nil plus the reason; raises for a route that does not fit. */
static int send_result(lua_State *L, int rc)
{
    if (rc == TN_EINVAL)
        return luaL_error(L, "route or seq out of range for packet.route_bytes/seq_bytes");
    if (rc == TN_ETOOBIG)
        return luaL_error(L, "packet over packet.max_size");
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushstring(L, tn_strerror(rc));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int gone(lua_State *L)
{
    lua_pushnil(L);
    lua_pushstring(L, "session closed");
    return 2;
}

/* ---- session methods ---------------------------------------------------------- */

static int l_reply(lua_State *L)
{
    struct gw_session *s = to_session(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);

    if (!s)
        return gone(L);
    return send_result(L, gw_session_send(s, s->route, s->seq, data, len));
}

static int l_push(lua_State *L)
{
    struct gw_session *s = to_session(L, 1);
    int32_t route = check_int32(L, 2);
    size_t len;
    const char *data = luaL_checklstring(L, 3, &len);

    if (!s)
        return gone(L);
    return send_result(L, gw_session_send(s, route, 0, data, len));
}

static int l_bind(lua_State *L)
{
    struct gw_session *s = to_session(L, 1);
    size_t len;
    const char *uid;
    int rc;

    luaL_checkany(L, 2);
    uid = luaL_tolstring(L, 2, &len);
    if (!s)
        return gone(L);
    rc = gw_session_bind(s, uid, len);
    if (rc == TN_EINVAL)
        return luaL_argerror(L, 2, "uid must be 1..255 bytes, without NUL");
    return send_result(L, rc);
}

static int l_unbind(lua_State *L)
{
    struct gw_session *s = to_session(L, 1);

    if (!s)
        return gone(L);
    gw_session_unbind(s);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_close(lua_State *L)
{
    struct gw_session *s = to_session(L, 1);

    if (s)
        gw_session_close(s, GW_CLOSE_NORMAL, "closed by the script");
    lua_pushboolean(L, s != NULL);
    return 1;
}

static int l_get(lua_State *L)
{
    struct gw_session *s = to_session(L, 1);
    const struct gw_attr *a = s ? gw_attr_get(s, luaL_checkstring(L, 2)) : NULL;

    if (!a)
        lua_pushnil(L);
    else if (a->type == GW_ATTR_STRING)
        lua_pushlstring(L, a->str, a->len);
    else if (a->type == GW_ATTR_INT)
        lua_pushinteger(L, (lua_Integer)a->i);
    else if (a->type == GW_ATTR_NUM)
        lua_pushnumber(L, a->d);
    else
        lua_pushboolean(L, (int)a->i);
    return 1;
}

static int l_set(lua_State *L)
{
    struct gw_session *s = to_session(L, 1);
    const char *key = luaL_checkstring(L, 2);
    const char *str = NULL;
    size_t len = 0;
    int type;

    switch (lua_type(L, 3)) {
    case LUA_TNIL:
    case LUA_TNONE:
        type = 0;
        break;
    case LUA_TBOOLEAN:
        type = GW_ATTR_BOOL;
        break;
    case LUA_TNUMBER:
        type = lua_isinteger(L, 3) ? GW_ATTR_INT : GW_ATTR_NUM;
        break;
    case LUA_TSTRING:
        type = GW_ATTR_STRING;
        str = lua_tolstring(L, 3, &len);
        break;
    default:
        return luaL_argerror(L, 3, "string, number, boolean or nil expected");
    }
    if (!s)
        return gone(L);
    return send_result(
        L, gw_attr_set(s, key, type,
                       type == GW_ATTR_BOOL ? lua_toboolean(L, 3) : (int64_t)lua_tointeger(L, 3),
                       lua_tonumber(L, 3), str, len));
}

/* session.id / .uid / .addr, else the methods. */
static int l_index(lua_State *L)
{
    uint64_t *u = luaL_checkudata(L, 1, SESSION_MT);
    const char *key = luaL_checkstring(L, 2);
    struct gw_session *s = gw_session_find(up_gw(L), *u);

    if (strcmp(key, "id") == 0)
        lua_pushinteger(L, (lua_Integer)*u);
    else if (strcmp(key, "uid") == 0)
        s && s->uid ? (void)lua_pushstring(L, s->uid) : lua_pushnil(L);
    else if (strcmp(key, "addr") == 0)
        s ? (void)lua_pushstring(L, gw_session_addr(s)) : lua_pushnil(L);
    else if (strcmp(key, "identity") == 0)
        lua_pushstring(L, s ? gw_auth_identity(s) : NULL); /* NULL pushes nil */
    else if (strcmp(key, "closed") == 0)
        lua_pushboolean(L, !s || s->tpclosed);
    else
        lua_rawget(L, lua_upvalueindex(2));
    return 1;
}

static int l_tostring(lua_State *L)
{
    uint64_t *u = luaL_checkudata(L, 1, SESSION_MT);

    lua_pushfstring(L, "gateway session %I", (lua_Integer)*u);
    return 1;
}

/* ---- ternd.gateway ------------------------------------------------------------------ */

static int l_gw_push(lua_State *L)
{
    struct gw *gw = up_gw(L);
    size_t ulen, len;
    const char *uid = luaL_tolstring(L, 1, &ulen);
    int32_t route = check_int32(L, 2);
    const char *data = luaL_checklstring(L, 3, &len);
    struct gw_session *s = gw_uid_find(gw, uid, ulen);

    if (!s) {
        lua_pushboolean(L, 0);
        return 1;
    }
    return send_result(L, gw_session_send(s, route, 0, data, len));
}

static int l_gw_join(lua_State *L)
{
    size_t len;
    const char *group = luaL_checklstring(L, 1, &len);
    struct gw_session *s = to_session(L, 2);
    int rc;

    if (!s)
        return gone(L);
    rc = gw_group_join(up_gw(L), group, len, s);
    if (rc == TN_EINVAL)
        return luaL_argerror(L, 1, "group names are 1..255 bytes");
    return send_result(L, rc);
}

static int l_gw_leave(lua_State *L)
{
    size_t len;
    const char *group = luaL_checklstring(L, 1, &len);
    struct gw_session *s = to_session(L, 2);

    lua_pushboolean(L, s && gw_group_leave(up_gw(L), group, len, s) == 0);
    return 1;
}

static int count_result(lua_State *L, long n)
{
    if (n < 0)
        return send_result(L, (int)n);
    lua_pushinteger(L, n);
    return 1;
}

static int l_gw_multicast(lua_State *L)
{
    size_t glen, len;
    const char *group = luaL_checklstring(L, 1, &glen);
    int32_t route = check_int32(L, 2);
    const char *data = luaL_checklstring(L, 3, &len);

    return count_result(L, gw_group_send(up_gw(L), group, glen, route, data, len));
}

static int l_gw_broadcast(lua_State *L)
{
    int32_t route = check_int32(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);

    return count_result(L, gw_broadcast(up_gw(L), route, data, len));
}

static int l_gw_count(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)up_gw(L)->nsessions);
    return 1;
}

static int l_gw_session(lua_State *L)
{
    struct gw_session *s = gw_session_find(up_gw(L), (uint64_t)luaL_checkinteger(L, 1));

    if (!s)
        lua_pushnil(L);
    else
        push_session(up_gw(L), L, s);
    return 1;
}

/* ---- the state ---------------------------------------------------------------------- */

static int gw_open(lua_State *L, void *ud)
{
    static const luaL_Reg methods[] = {{"reply", l_reply},   {"push", l_push},   {"bind", l_bind},
                                       {"unbind", l_unbind}, {"close", l_close}, {"get", l_get},
                                       {"set", l_set},       {NULL, NULL}};
    static const luaL_Reg fns[] = {{"push", l_gw_push},           {"join", l_gw_join},
                                   {"leave", l_gw_leave},         {"multicast", l_gw_multicast},
                                   {"broadcast", l_gw_broadcast}, {"count", l_gw_count},
                                   {"session", l_gw_session},     {NULL, NULL}};
    int t = lua_gettop(L); /* the ternd table */

    luaL_newmetatable(L, SESSION_MT);
    lua_pushlightuserdata(L, ud);
    lua_newtable(L);
    lua_pushlightuserdata(L, ud);
    luaL_setfuncs(L, methods, 1);
    lua_pushcclosure(L, l_index, 2);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, ud);
    luaL_setfuncs(L, fns, 1);
    lua_setfield(L, t, "gateway");
    return 0;
}

int gw_lua_start(struct gw *gw, const struct tn_lua_conf *lc)
{
    char err[512];

    if (!lc->script)
        return 0;
    gw->lgen++;
    gw->lua = tn_lua_create("gateway", lc, gw_open, gw, err, sizeof(err));
    if (!gw->lua) {
        tn_log_error(GW_LOG, "lua: %s", err);
        return TN_ELUA;
    }
    return 0;
}

/* A new script (or none) on SIGHUP; sessions stay, their Lua objects are
 * made again in the new state on first use. */
int gw_lua_reload(struct gw *gw, const struct tn_lua_conf *lc)
{
    char err[512];

    if (!lc->script) {
        gw_lua_stop(gw);
        return 0;
    }
    if (!gw->lua)
        return gw_lua_start(gw, lc);
    if (tn_lua_reload(gw->lua, lc, err, sizeof(err)) != 0) {
        tn_log_error(GW_LOG, "lua reload failed, keeping the old script: %s", err);
        return TN_ELUA;
    }
    gw->lgen++;
    tn_log_info(GW_LOG, "lua script reloaded (%zu sessions kept)", gw->nsessions);
    return 0;
}

void gw_lua_stop(struct gw *gw)
{
    if (gw->lua)
        tn_lua_destroy(gw->lua);
    gw->lua = NULL;
    gw->lgen++;
}

int gw_lua_on_connect(struct gw_session *s)
{
    struct gw *gw = s->gw;
    lua_State *L;
    int refuse = 0;

    if (!gw->lua || !tn_lua_getfunc(gw->lua, "on_connect"))
        return 0;
    L = tn_lua_state(gw->lua);
    push_session(gw, L, s);
    if (tn_lua_pcall(gw->lua, 1, 1, "on_connect") == 0) {
        refuse = lua_isboolean(L, -1) && !lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    return refuse ? TN_EINVAL : 0;
}

int gw_lua_on_packet(struct gw_session *s, const struct gw_packet *pk, char *name, size_t namelen)
{
    struct gw *gw = s->gw;
    lua_State *L;
    int fwd = 0;

    if (!gw->lua || !tn_lua_getfunc(gw->lua, "on_packet"))
        return 0;
    L = tn_lua_state(gw->lua);
    push_session(gw, L, s);
    lua_pushinteger(L, pk->route);
    lua_pushinteger(L, pk->seq);
    lua_pushlstring(L, pk->data, pk->len);
    if (tn_lua_pcall(gw->lua, 4, 1, "on_packet") == 0) {
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t n;
            const char *v = lua_tolstring(L, -1, &n);
            if (n > 0 && n < namelen) {
                memcpy(name, v, n + 1);
                fwd = 1;
            } else {
                tn_log_warn(GW_LOG, "on_packet returned a node name of %zu bytes", n);
            }
        }
        lua_pop(L, 1);
    }
    return fwd;
}

void gw_lua_on_disconnect(struct gw_session *s)
{
    struct gw *gw = s->gw;
    lua_State *L;

    if (!gw->lua)
        return;
    L = tn_lua_state(gw->lua);
    if (!s->refused && tn_lua_getfunc(gw->lua, "on_disconnect")) {
        push_session(gw, L, s);
        tn_lua_pcall(gw->lua, 1, 0, "on_disconnect");
    }
    if (s->lref >= 0 && s->lgen == gw->lgen)
        luaL_unref(L, LUA_REGISTRYINDEX, s->lref);
    s->lref = -1;
}
