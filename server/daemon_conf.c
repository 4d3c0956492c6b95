/*
 * daemon_conf.c -- the `daemon:` section of ternd.yaml: its key table and
 * defaults. conf/ternd.yaml documents every key; the two must agree.
 */
#include <stddef.h>
#include <string.h>

#include "core.h"

/* SIZE keys store a uint64_t; tn_http_limits keeps its sizes as size_t. */
_Static_assert(sizeof(size_t) == sizeof(uint64_t), "size_t must be 64 bits");

/* Counts kept as size_t (connections, pipelined requests): an integer
 * within cmd->arg's range. */
static int set_count(struct tn_conf *cf, const struct tn_conf_node *node,
                     const struct tn_conf_cmd *cmd, void *conf)
{
    int64_t v;

    if (tn_conf_parse_int(cf, node, cmd->arg, &v) != 0)
        return TN_ECONF;
    *(size_t *)((char *)conf + cmd->offset) = (size_t)v;
    return 0;
}

static const struct tn_conf_enum log_levels[] = {{"error", TN_LOG_ERROR},
                                                 {"warn", TN_LOG_WARN},
                                                 {"info", TN_LOG_INFO},
                                                 {"debug", TN_LOG_DEBUG},
                                                 {NULL, 0}};

static const struct tn_conf_range header_size_range = {1024, 1024 * 1024};
static const struct tn_conf_range max_conns_range = {0, 10000000};
static const struct tn_conf_range pipeline_range = {1, 1024};
static const struct tn_conf_range connections_range = {1, 10000000};

#define HTTP_OFF(f) offsetof(struct tn_http_limits, f)

static const struct tn_conf_cmd http_table[] = {
    {"max_header_size", TN_CONF_SIZE, HTTP_OFF(max_header_size), &header_size_range, NULL, NULL},
    {"max_body_size", TN_CONF_SIZE, HTTP_OFF(max_body_size), NULL, NULL, NULL},
    {"keepalive_timeout", TN_CONF_DURATION, HTTP_OFF(keepalive_timeout), NULL, NULL, NULL},
    {"request_timeout", TN_CONF_DURATION, HTTP_OFF(request_timeout), NULL, NULL, NULL},
    {"max_conns", TN_CONF_CUSTOM, HTTP_OFF(max_conns), &max_conns_range, set_count, NULL},
    {"max_pipeline", TN_CONF_CUSTOM, HTTP_OFF(max_pipeline), &pipeline_range, set_count, NULL},
    TN_CONF_END};

#define DC_OFF(f) offsetof(struct tn_daemon_conf, f)

const struct tn_conf_cmd tn_daemon_conf_table[] = {
    {"log_level", TN_CONF_ENUM, DC_OFF(log_level), log_levels, NULL, NULL},
    /* "stderr" or a path; log.c opens it relative to where ternd started */
    {"log_file", TN_CONF_STRING, DC_OFF(log_file), NULL, NULL, NULL},
    {"pid_file", TN_CONF_PATH, DC_OFF(pid_file), NULL, NULL, NULL},
    {"data_dir", TN_CONF_PATH, DC_OFF(data_dir), NULL, NULL, NULL},
    {"modules_dir", TN_CONF_PATH, DC_OFF(modules_dir), NULL, NULL, NULL},
    {"plugins_dir", TN_CONF_PATH, DC_OFF(plugins_dir), NULL, NULL, NULL},
    {"plugins", TN_CONF_STR_LIST, DC_OFF(plugins), NULL, NULL, NULL},
    {"admin_listen", TN_CONF_ADDR, DC_OFF(admin_listen), NULL, NULL, NULL},
    {"max_connections", TN_CONF_INT, DC_OFF(max_connections), &connections_range, NULL, NULL},
    {"shutdown_timeout", TN_CONF_DURATION, DC_OFF(shutdown_timeout), NULL, NULL, NULL},
    {"dashboard", TN_CONF_BOOL, DC_OFF(dashboard), NULL, NULL, NULL},
    {"http", TN_CONF_SECTION, DC_OFF(http), http_table, NULL, NULL},
    {"admin_tls", TN_CONF_SECTION, DC_OFF(admin_tls), tn_tls_conf_table, NULL, tn_tls_conf_check},
    TN_CONF_END};

/* The documented defaults. Strings point at constants (never freed: the
 * config generation owns whatever the file sets instead). */
void tn_daemon_conf_default(struct tn_daemon_conf *dc)
{
    char err[128];

    memset(dc, 0, sizeof(*dc));
    dc->log_level = TN_LOG_INFO;
    dc->data_dir = (char *)"./data";
    /* numeric, so it cannot fail or touch the resolver */
    tn_parse_addr("127.0.0.1:4171", &dc->admin_listen, err, sizeof(err));
    dc->max_connections = 10000;
    dc->shutdown_timeout = 10 * 1000;
    dc->dashboard = 1;
    dc->http.max_header_size = 8 * 1024;
    dc->http.max_body_size = 5 * 1024 * 1024;
    dc->http.keepalive_timeout = 65 * 1000;
    dc->http.request_timeout = 30 * 1000;
    dc->http.max_conns = 0;
    dc->http.max_pipeline = 16;
    tn_tls_conf_default(&dc->admin_tls);
}
