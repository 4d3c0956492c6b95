/*
 * gateway.c -- the gateway module: configuration hooks, lifecycle (init
 * builds the session tables and the Lua state, start opens the TCP and
 * WebSocket listeners, stop closes them and every session), reload (a new
 * script and settings without dropping sessions) and stats.
 */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

static int gw_create_conf(struct tn_mod *m, void *conf)
{
    gw_conf_default(conf);
    return 0;
}

static int gw_check_conf(struct tn_mod *m, struct tn_conf *cf, void *conf)
{
    return gw_conf_check(cf, conf);
}

static int gw_init(struct tn_mod *m)
{
    struct gw_conf *gc = m->conf;
    struct gw *gw = calloc(1, sizeof(*gw));
    int rc;

    if (!gw)
        return TN_ENOMEM;
    gw->mod = m;
    gw->conf = gc;
    gw_conf_codec(gc, &gw->codec);
    gw->idle_ms = gw_conf_idle_ms(gc);
    gw->registry = &gw_default_registry;
    if ((rc = gw_lua_start(gw, &gc->lua)) != 0) {
        free(gw);
        return rc;
    }
    m->data = gw;
    return 0;
}

/* TLS for the listener just opened (the head of gw->listeners): it holds
 * its own reference to the context. */
static int listener_tls(struct gw *gw, const struct gw_listen_conf *lc)
{
    struct gw_listener *gl = gw->listeners;
    struct tn_tls_ctx *ctx;
    char why[512];

    if (!tn_tls_conf_enabled(&lc->tls))
        return 0;
    if (!(ctx = tn_tls_ctx_new(&lc->tls, why, sizeof(why)))) {
        tn_log_error(GW_LOG, "%s: tls: %s", lc->addr.text, why);
        return TN_EINVAL;
    }
    if (gl->tcp)
        tn_listener_set_tls(gl->tcp, ctx);
    else if (gl->http)
        tn_http_server_set_tls(gl->http, ctx);
    tn_tls_ctx_free(ctx);
    tn_log_info(GW_LOG, "TLS on %s (%s)", lc->addr.text, lc->proto == GW_PROTO_WS ? "wss" : "tcp");
    return 0;
}

static int gw_start(struct tn_mod *m)
{
    struct gw *gw = m->data;
    int rc;

    if ((rc = gw_node_tls_load(gw, gw->conf)) != 0)
        return rc;
    for (size_t i = 0; i < gw->conf->nlisten; i++) {
        const struct gw_listen_conf *lc = &gw->conf->listen[i];
        rc = lc->proto == GW_PROTO_WS    ? gw_ws_listen(gw, lc)
             : lc->proto == GW_PROTO_KCP ? gw_kcp_listen(gw, lc)
                                         : gw_tcp_listen(gw, lc);
        if (rc == 0)
            gw->listeners->conf_index = i;
        if (rc == 0 && lc->proto != GW_PROTO_KCP)
            rc = listener_tls(gw, lc);
        if (rc != 0)
            return rc;
    }
    if (!gw->conf->nlisten)
        tn_log_warn(GW_LOG, "no listen: entries, no client can connect");
    return 0;
}

static void listeners_close(struct gw *gw)
{
    for (struct gw_listener *gl = gw->listeners; gl; gl = gl->next) {
        if (gl->tcp)
            tn_listener_close(gl->tcp);
        gl->tcp = NULL;
        if (gl->http)
            tn_http_server_close(gl->http);
    }
}

/* SIGTERM: no new clients; every session gets a "going away" close (the
 * WebSocket ones a close frame) and ends as its transport finishes. */
static int gw_stop(struct tn_mod *m)
{
    struct gw *gw = m->data;
    struct gw_session *s, *next;

    if (!gw || gw->stopping)
        return 0;
    gw->stopping = 1;
    listeners_close(gw);
    for (s = gw->all; s; s = next) {
        next = s->next;
        gw_session_close(s, GW_CLOSE_GOING_AWAY, "server stopping");
    }
    tn_log_info(GW_LOG, "stopping: %zu sessions closing", gw->nsessions);
    return 0;
}

static void gw_fini(struct tn_mod *m)
{
    struct gw *gw = m->data;
    struct gw_listener *gl;

    if (!gw)
        return;
    /* sessions still open (the shutdown timeout passed) end here, with no
     * more hooks: their connections forget them */
    gw_lua_stop(gw);
    gw_node_close_all(gw);
    while (gw->all) {
        struct gw_session *s = gw->all;
        s->tp->detach(s);
        gw_session_closed(s);
    }
    while ((gl = gw->listeners)) {
        gw->listeners = gl->next;
        if (gl->http)
            tn_http_server_free(gl->http);
        gw_kcp_listener_free(gl->kcp);
        free(gl->path);
        free(gl);
    }
    gw_groups_free(gw);
    tn_map_free(&gw->uids);
    tn_map_free(&gw->sessions);
    gw_ws_fini();
    free(gw);
    m->data = NULL;
}

/* Field by field: struct gw_codec has padding, which memcmp would read
 * uninitialized (valgrind found it). */
static int codec_same(const struct gw_codec *a, const struct gw_codec *b)
{
    return a->big_endian == b->big_endian && a->route_bytes == b->route_bytes &&
           a->seq_bytes == b->seq_bytes && a->max_size == b->max_size;
}

/* SIGHUP re-reads the listeners' certificates (rotation without a
 * restart): new connections get the new one, established ones keep
 * theirs; a file that does not load leaves the previous one in place. */
static void listeners_tls_reload(struct gw *gw, const struct gw_conf *old,
                                 const struct gw_conf *nc)
{
    for (struct gw_listener *gl = gw->listeners; gl; gl = gl->next) {
        const struct gw_listen_conf *lc = &nc->listen[gl->conf_index];
        int was = tn_tls_conf_enabled(&old->listen[gl->conf_index].tls);
        struct tn_tls_ctx *ctx;
        char why[512];

        if (gl->kcp || (!was && !tn_tls_conf_enabled(&lc->tls)))
            continue;
        if (was != tn_tls_conf_enabled(&lc->tls)) {
            tn_log_warn(GW_LOG, "%s: tls turned %s: takes effect on restart", lc->addr.text,
                        was ? "off" : "on");
            continue;
        }
        if (!(ctx = tn_tls_ctx_new(&lc->tls, why, sizeof(why)))) {
            tn_log_error(GW_LOG, "%s: tls: %s (keeping the previous certificate)", lc->addr.text,
                         why);
            continue;
        }
        if (gl->tcp)
            tn_listener_set_tls(gl->tcp, ctx);
        else if (gl->http)
            tn_http_server_set_tls(gl->http, ctx);
        tn_tls_ctx_free(ctx);
        tn_log_info(GW_LOG, "%s: certificate reloaded", lc->addr.text);
    }
}

static int gw_reload(struct tn_mod *m, void *new_conf)
{
    struct gw *gw = m->data;
    const struct gw_conf *old = gw->conf;
    struct gw_conf *nc = new_conf;
    struct gw_codec c;
    int changed = old->nlisten != nc->nlisten;

    for (size_t i = 0; !changed && i < nc->nlisten; i++)
        changed = old->listen[i].proto != nc->listen[i].proto ||
                  strcmp(old->listen[i].addr.text, nc->listen[i].addr.text) != 0;
    if (changed)
        tn_log_warn(GW_LOG, "listen changed: takes effect on restart");
    else
        listeners_tls_reload(gw, old, nc);
    gw_node_tls_load(gw, nc); /* for links opened from now on */
    gw_conf_codec(nc, &c);
    if (!codec_same(&c, &gw->codec))
        tn_log_warn(GW_LOG, "packet layout changed: takes effect on restart");
    gw->conf = nc;
    gw->idle_ms = gw_conf_idle_ms(nc); /* for new sessions */
    return gw_lua_reload(gw, &nc->lua);
}

static void emit(struct tn_stats_out *out, const char *name, int type, const char *help, uint64_t v)
{
    tn_stats_emit(out, name, type, help, NULL, (double)v);
}

static void gw_stats(struct tn_mod *m, struct tn_stats_out *out)
{
    struct gw *gw = m->data;
    const struct gw_stats *st;

    if (!gw)
        return;
    st = &gw->st;
    emit(out, "ternd_gateway_sessions", TN_STAT_GAUGE, "Open client sessions", gw->nsessions);
    emit(out, "ternd_gateway_connections_total", TN_STAT_COUNTER, "Sessions opened",
         st->connections);
    emit(out, "ternd_gateway_packets_in_total", TN_STAT_COUNTER, "Data packets received",
         st->packets_in);
    emit(out, "ternd_gateway_packets_out_total", TN_STAT_COUNTER, "Data packets sent",
         st->packets_out);
    emit(out, "ternd_gateway_heartbeats_total", TN_STAT_COUNTER, "Heartbeats answered",
         st->heartbeats);
    emit(out, "ternd_gateway_oversize_total", TN_STAT_COUNTER,
         "Clients closed for a packet over packet.max_size", st->oversize);
    emit(out, "ternd_gateway_bad_packets_total", TN_STAT_COUNTER,
         "Clients closed for a malformed packet", st->bad_packets);
    emit(out, "ternd_gateway_forwarded_total", TN_STAT_COUNTER, "Packets forwarded to nodes",
         st->forwarded);
    emit(out, "ternd_gateway_forward_failed_total", TN_STAT_COUNTER,
         "Packets that found no reachable node", st->forward_failed);
    emit(out, "ternd_gateway_node_frames_total", TN_STAT_COUNTER, "Frames received from nodes",
         st->node_frames);
    emit(out, "ternd_gateway_uids", TN_STAT_GAUGE, "Bound uids", gw->uids.n);
    emit(out, "ternd_gateway_groups", TN_STAT_GAUGE, "Groups with members", gw->groups.n);
    gw_kcp_stats(gw, out);
    gw_auth_stats(gw, out);
    if (gw->lua)
        tn_stats_emit(out, "ternd_lua_errors_total", TN_STAT_COUNTER, "Lua errors",
                      (const char *[]){"module", "gateway", NULL}, (double)tn_lua_errors(gw->lua));
}

TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD("gateway", GW_VERSION),
    NULL,
    gw_conf_table,
    sizeof(struct gw_conf),
    gw_create_conf,
    gw_check_conf,
    gw_init,
    gw_start,
    gw_stop,
    gw_fini,
    gw_reload,
    gw_stats,
};
