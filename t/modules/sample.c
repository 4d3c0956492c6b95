/*
 * sample.c -- a test module proving the loader end to end: a key table with
 * every value type, defaults, a cross-field check, every lifecycle hook,
 * a line-echo TCP listener on the connection layer, an HTTP route, a Lua
 * hook (on_line) with reload, and stats. Built only for `make check`.
 *
 * Protocol: each "text\n" from a client is answered with
 * "<greeting> <text>\n", or with on_line(text)'s result when the Lua
 * script defines it.
 */
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ternd/ternd.h>

struct sample_conf {
    struct tn_addr listen;
    struct tn_addr http_listen;
    char *greeting;
    int64_t max_line;          /* bytes */
    uint64_t buffer;           /* size */
    int64_t idle_timeout;      /* ms */
    int mode;                  /* enum */
    int fail_init;             /* bool: init fails, for tests */
    struct tn_str_list tags;
    struct tn_lua_conf lua;
};

struct sample {
    struct tn_listener *listener;
    struct tn_http_server *http;
    struct tn_lua *lua;
    struct tn_mod *mod;
};

TN_STAT_DECL(stat_lines, "ternd_sample_lines_total", TN_STAT_COUNTER, "Lines answered");

static const struct tn_conf_enum sample_modes[] = {{"echo", 0}, {"upper", 1}, {NULL, 0}};
static const struct tn_conf_range sample_line_range = {1, 65536};

static const struct tn_conf_cmd sample_table[] = {
    {"listen", TN_CONF_ADDR, offsetof(struct sample_conf, listen), NULL, NULL, NULL},
    {"http_listen", TN_CONF_ADDR, offsetof(struct sample_conf, http_listen), NULL, NULL, NULL},
    {"greeting", TN_CONF_STRING, offsetof(struct sample_conf, greeting), NULL, NULL, NULL},
    {"max_line", TN_CONF_INT, offsetof(struct sample_conf, max_line), &sample_line_range, NULL,
     NULL},
    {"buffer", TN_CONF_SIZE, offsetof(struct sample_conf, buffer), NULL, NULL, NULL},
    {"idle_timeout", TN_CONF_DURATION, offsetof(struct sample_conf, idle_timeout), NULL, NULL,
     NULL},
    {"mode", TN_CONF_ENUM, offsetof(struct sample_conf, mode), sample_modes, NULL, NULL},
    {"fail_init", TN_CONF_BOOL, offsetof(struct sample_conf, fail_init), NULL, NULL, NULL},
    {"tags", TN_CONF_STR_LIST, offsetof(struct sample_conf, tags), NULL, NULL, NULL},
    {"lua", TN_CONF_SECTION, offsetof(struct sample_conf, lua), tn_lua_conf_table, NULL, NULL},
    TN_CONF_END};

static int sample_create_conf(struct tn_mod *m, void *conf)
{
    struct sample_conf *sc = conf;
    sc->greeting = "hello";
    sc->max_line = 1024;
    sc->buffer = 64 * 1024;
    sc->idle_timeout = 0;
    tn_lua_conf_default(&sc->lua);
    return 0;
}

static int sample_check_conf(struct tn_mod *m, struct tn_conf *cf, void *conf)
{
    struct sample_conf *sc = conf;
    char err[512];

    if (sc->buffer < (uint64_t)sc->max_line)
        tn_conf_error_key(cf, "buffer", "must be at least max_line (%lld bytes)",
                          (long long)sc->max_line);
    if (sc->lua.script && tn_lua_check_file(sc->lua.script, err, sizeof(err)) != 0)
        tn_conf_error_key(cf, "lua.script", "%s", err);
    return tn_conf_errors(cf) ? TN_ECONF : 0;
}

static void sample_answer(struct tn_conn *c, struct sample *s, const char *line, size_t len)
{
    struct sample_conf *sc = s->mod->conf;
    lua_State *L;

    tn_stat_inc(&stat_lines);
    if (s->lua && tn_lua_getfunc(s->lua, "on_line")) {
        L = tn_lua_state(s->lua);
        lua_pushlstring(L, line, len);
        if (tn_lua_pcall(s->lua, 1, 1, "on_line") == 0) {
            size_t n = 0;
            const char *r = lua_tolstring(L, -1, &n);
            if (r) {
                tn_conn_write(c, r, n);
                tn_conn_write(c, "\n", 1);
            } else {
                tn_conn_write(c, "nil\n", 4);
            }
            lua_pop(L, 1);
        } else {
            tn_conn_write(c, "ERROR\n", 6);
        }
        return;
    }
    tn_conn_write(c, sc->greeting, strlen(sc->greeting));
    tn_conn_write(c, " ", 1);
    if (sc->mode == 1) {
        for (size_t i = 0; i < len; i++) {
            char ch = line[i] >= 'a' && line[i] <= 'z' ? (char)(line[i] - 32) : line[i];
            tn_conn_write(c, &ch, 1);
        }
    } else {
        tn_conn_write(c, line, len);
    }
    tn_conn_write(c, "\n", 1);
}

static void sample_on_read(struct tn_conn *c)
{
    struct sample *s = c->data;
    struct sample_conf *sc = s->mod->conf;

    for (;;) {
        char *p = tn_buf_rptr(&c->in), *nl = memchr(p, '\n', tn_buf_rlen(&c->in));
        if (!nl) {
            if (tn_buf_rlen(&c->in) > (size_t)sc->max_line) {
                tn_conn_write(c, "ERROR line too long\n", 20);
                tn_conn_close_after_write(c);
            }
            return;
        }
        if (nl - p == 4 && memcmp(p, "QUIT", 4) == 0) {
            tn_conn_write(c, "BYE\n", 4);
            tn_conn_close_after_write(c);
            tn_buf_consume(&c->in, tn_buf_rlen(&c->in));
            return;
        }
        sample_answer(c, s, p, (size_t)(nl - p));
        tn_buf_consume(&c->in, (size_t)(nl - p) + 1);
    }
}

static void sample_on_close(struct tn_conn *c, int reason)
{
    tn_log_debug("sample", "connection %s closed: %s", c->peer, tn_strerror(reason));
}

static const struct tn_conn_handler sample_handler = {sample_on_read, NULL, NULL, sample_on_close};

static int sample_accept(struct tn_listener *l, struct tn_conn *c, void *ud)
{
    struct sample *s = ud;
    struct sample_conf *sc = s->mod->conf;

    c->h = &sample_handler;
    c->data = s;
    if (sc->idle_timeout)
        tn_conn_set_idle_timeout(c, sc->idle_timeout);
    return 0;
}

static int sample_http_greeting(struct tn_http_req *r, void *ud)
{
    struct sample *s = ud;
    struct sample_conf *sc = s->mod->conf;
    char name[128];
    struct tn_buf b = TN_BUF_INIT;

    if (tn_http_arg(r, "name", name, sizeof(name)) < 0)
        snprintf(name, sizeof(name), "world");
    tn_buf_printf(&b, "%s %s\n", sc->greeting, name);
    tn_http_reply(r, 200, "text/plain", tn_buf_rptr(&b), tn_buf_rlen(&b));
    tn_buf_free(&b);
    return TN_HTTP_DONE;
}

static int sample_lua_open(lua_State *L, void *ud)
{
    lua_pushstring(L, "sample");
    lua_setfield(L, -2, "module");
    return 0;
}

static int sample_init(struct tn_mod *m)
{
    struct sample_conf *sc = m->conf;
    struct sample *s;
    char err[512];

    if (sc->fail_init) {
        tn_log_error("sample", "init refused (fail_init is set)");
        return TN_EMODULE;
    }
    s = calloc(1, sizeof(*s));
    if (!s)
        return TN_ENOMEM;
    s->mod = m;
    if (sc->lua.script) {
        s->lua = tn_lua_create("sample", &sc->lua, sample_lua_open, s, err, sizeof(err));
        if (!s->lua) {
            tn_log_error("sample", "%s", err);
            free(s);
            return TN_ELUA;
        }
    }
    m->data = s;
    tn_stat_register(&stat_lines);
    tn_log_info("sample", "init (greeting \"%s\", %zu tags)", sc->greeting, sc->tags.n);
    return 0;
}

static int sample_start(struct tn_mod *m)
{
    struct sample *s = m->data;
    struct sample_conf *sc = m->conf;
    struct tn_listen_opts lo = {0};
    int err = 0;

    if (sc->listen.len) {
        lo.name = "sample.tcp";
        lo.lim.in_max = (size_t)sc->buffer;
        s->listener = tn_listen(&sc->listen, &lo, sample_accept, s, &err);
        if (!s->listener)
            return err;
        tn_log_info("sample", "listening on %s", tn_listener_addr(s->listener));
    }
    if (sc->http_listen.len) {
        s->http = tn_http_server_create("sample.http", &sc->http_listen, NULL, &err);
        if (!s->http)
            return err;
        tn_http_route(s->http, TN_HTTP_GET, "/greeting", sample_http_greeting, s);
    }
    tn_service_register("sample", s);
    tn_log_info("sample", "started");
    return 0;
}

static int sample_stop(struct tn_mod *m)
{
    struct sample *s = m->data;

    if (s->listener) {
        tn_listener_close(s->listener);
        s->listener = NULL;
    }
    if (s->http) {
        tn_http_server_close(s->http);
        tn_http_server_free(s->http);
        s->http = NULL;
    }
    tn_service_unregister("sample");
    tn_log_info("sample", "stopped");
    return 0;
}

static void sample_fini(struct tn_mod *m)
{
    struct sample *s = m->data;

    if (!s)
        return;
    if (s->lua)
        tn_lua_destroy(s->lua);
    tn_stat_unregister(&stat_lines);
    free(s);
    m->data = NULL;
    tn_log_info("sample", "fini");
}

static int sample_reload(struct tn_mod *m, void *new_conf)
{
    struct sample *s = m->data;
    struct sample_conf *nc = new_conf;
    char err[512];

    if (nc->lua.script) {
        if (s->lua) {
            if (tn_lua_reload(s->lua, &nc->lua, err, sizeof(err)) != 0) {
                tn_log_error("sample", "lua reload failed, keeping the old script: %s", err);
                return TN_ELUA;
            }
        } else if (!(s->lua = tn_lua_create("sample", &nc->lua, sample_lua_open, s, err,
                                            sizeof(err)))) {
            tn_log_error("sample", "%s", err);
            return TN_ELUA;
        }
    } else if (s->lua) {
        tn_lua_destroy(s->lua);
        s->lua = NULL;
    }
    tn_log_info("sample", "reloaded (greeting \"%s\")", nc->greeting);
    return 0;
}

static void sample_stats(struct tn_mod *m, struct tn_stats_out *out)
{
    struct sample *s = m->data;
    const char *labels[] = {"listener", "sample.tcp", NULL};

    tn_stats_emit(out, "ternd_sample_connections", TN_STAT_GAUGE, "Open sample connections",
                  labels, s->listener ? (double)tn_listener_conns(s->listener) : 0);
    if (s->lua)
        tn_stats_emit(out, "ternd_lua_errors_total", TN_STAT_COUNTER, "Lua errors",
                      (const char *[]){"module", "sample", NULL},
                      (double)tn_lua_errors(s->lua));
}

TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD("sample", "1.0"),
    NULL,
    sample_table,
    sizeof(struct sample_conf),
    sample_create_conf,
    sample_check_conf,
    sample_init,
    sample_start,
    sample_stop,
    sample_fini,
    sample_reload,
    sample_stats,
};
