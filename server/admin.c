/*
 * admin.c -- the core's own HTTP endpoints on daemon.admin_listen:
 *   GET /ping     "OK" (health check)
 *   GET /stats    every metric as JSON (?format=text for plain lines)
 *   GET /metrics  Prometheus text exposition format 0.0.4
 *   POST /reload  the SIGHUP reload, answered once it is done (for ternctl:
 *                 no pid file or signal permission needed, and the result
 *                 comes back)
 *   GET /, /dashboard/...  the dashboard (dashboard.c), if daemon.dashboard
 */
#include <string.h>

#include "core.h"

static struct tn_http_server *admin;
static struct tn_modset *admin_ms;
static int (*admin_reload)(void);

static int admin_ping(struct tn_http_req *r, void *ud)
{
    tn_http_reply_str(r, tn_stopping() ? 503 : 200, "text/plain; charset=utf-8",
                      tn_stopping() ? "STOPPING" : "OK");
    return TN_HTTP_DONE;
}

static int reply_stats(struct tn_http_req *r, int format, const char *ctype)
{
    struct tn_buf b = TN_BUF_INIT;

    if (tn_stats_format(&b, format, admin_ms) != 0) {
        tn_http_reply_str(r, 500, "text/plain", "out of memory\n");
    } else {
        tn_http_reply(r, 200, ctype, tn_buf_rptr(&b), tn_buf_rlen(&b));
    }
    tn_buf_free(&b);
    return TN_HTTP_DONE;
}

static int admin_stats(struct tn_http_req *r, void *ud)
{
    char fmt[16];

    if (tn_http_arg(r, "format", fmt, sizeof(fmt)) >= 0 && strcmp(fmt, "json") != 0) {
        if (strcmp(fmt, "text") == 0)
            return reply_stats(r, TN_STATS_TEXT, "text/plain; charset=utf-8");
        tn_http_reply_str(r, 400, "text/plain", "format must be json or text\n");
        return TN_HTTP_DONE;
    }
    return reply_stats(r, TN_STATS_JSON, "application/json");
}

static int admin_metrics(struct tn_http_req *r, void *ud)
{
    return reply_stats(r, TN_STATS_PROMETHEUS, "text/plain; version=0.0.4; charset=utf-8");
}

static int admin_reload_req(struct tn_http_req *r, void *ud)
{
    if (tn_stopping()) {
        tn_http_reply_str(r, 503, "text/plain; charset=utf-8", "STOPPING\n");
    } else if (!admin_reload) {
        tn_http_reply_str(r, 501, "text/plain; charset=utf-8", "reload not available\n");
    } else if (admin_reload() != 0) {
        /* the reasons are in the log, where a SIGHUP reload puts them */
        tn_http_reply_str(r, 409, "text/plain; charset=utf-8",
                          "reload rejected: keeping the running configuration (see the log)\n");
    } else {
        tn_http_reply_str(r, 200, "text/plain; charset=utf-8", "reload done\n");
    }
    return TN_HTTP_DONE;
}

int tn_admin_start(const struct tn_daemon_conf *dc)
{
    int err = 0;

    if (admin || dc->admin_listen.len == 0)
        return 0;
    admin = tn_http_server_create("admin", &dc->admin_listen, &dc->http, &err);
    if (!admin)
        return err ? err : TN_EIO;
    if (tn_tls_conf_enabled(&dc->admin_tls)) {
        char why[512];
        struct tn_tls_ctx *ctx = tn_tls_ctx_new(&dc->admin_tls, why, sizeof(why));
        if (!ctx) {
            tn_log_error("core", "daemon.admin_tls: %s", why);
            tn_admin_stop();
            return TN_EINVAL;
        }
        tn_http_server_set_tls(admin, ctx); /* the server keeps its own reference */
        tn_tls_ctx_free(ctx);
    }
    tn_http_route(admin, TN_HTTP_GET, "/ping", admin_ping, NULL);
    tn_http_route(admin, TN_HTTP_GET, "/stats", admin_stats, NULL);
    tn_http_route(admin, TN_HTTP_GET, "/metrics", admin_metrics, NULL);
    tn_http_route(admin, TN_HTTP_POST, "/reload", admin_reload_req, NULL);
    tn_dashboard_enable(dc->dashboard);
    if ((err = tn_dashboard_routes(admin)) != 0) {
        tn_admin_stop();
        return err;
    }
    tn_log_info("core", "admin %s on %s", tn_tls_conf_enabled(&dc->admin_tls) ? "HTTPS" : "HTTP",
                tn_http_server_addr(admin));
    return 0;
}

/* SIGHUP: the certificate is read again (rotation without a restart); new
 * connections get it, established ones keep theirs. A file that does not
 * load leaves the previous certificate in place. */
void tn_admin_reload_tls(const struct tn_daemon_conf *old, const struct tn_daemon_conf *nu)
{
    int was = tn_tls_conf_enabled(&old->admin_tls), is = tn_tls_conf_enabled(&nu->admin_tls);
    struct tn_tls_ctx *ctx;
    char why[512];

    if (!admin || (!was && !is))
        return;
    if (was != is) {
        tn_log_warn("core", "daemon.admin_tls turned %s: takes effect on restart",
                    was ? "off" : "on");
        return;
    }
    if (!(ctx = tn_tls_ctx_new(&nu->admin_tls, why, sizeof(why)))) {
        tn_log_error("core", "daemon.admin_tls: %s (keeping the previous certificate)", why);
        return;
    }
    tn_http_server_set_tls(admin, ctx);
    tn_tls_ctx_free(ctx);
    tn_log_info("core", "daemon.admin_tls: certificate reloaded");
}

void tn_admin_set_modset(struct tn_modset *ms) { admin_ms = ms; }

void tn_admin_set_reload(int (*reload)(void)) { admin_reload = reload; }

void tn_admin_stop(void)
{
    if (admin) {
        tn_http_server_close(admin);
        tn_http_server_free(admin);
        admin = NULL;
    }
}
