/*
 * config.c -- the broker's YAML section: the key table, the defaults (nsqd's
 * where nsqd has the setting) and the cross-field checks run by check_conf
 * and `ternd -t`. Per-channel dead-letter policies are a map of sections.
 */
#include <stdio.h>
#include <string.h>

#include "broker.h"

static const struct tn_conf_range r_nonneg = {0, INT64_MAX};
static const struct tn_conf_range r_positive = {1, INT64_MAX};
static const struct tn_conf_range r_deflate = {1, 9};
static const struct tn_conf_range r_node = {0, 1023};
static const struct tn_conf_range r_attempts = {0, 65535};

/* A dead_letter_topic must be a valid topic name. */
static int check_topic(struct tn_conf *cf, const struct tn_conf_node *node,
                       const struct tn_conf_cmd *cmd, void *conf)
{
    const char *name = *(char **)((char *)conf + cmd->offset);

    if (name && !broker_name_valid(name, strlen(name)))
        return tn_conf_error(cf, node, "not a valid topic name ([.a-zA-Z0-9_-], 1..64)");
    return 0;
}

static const struct tn_conf_cmd policy_table[] = {
    {"max_attempts", TN_CONF_INT, offsetof(struct broker_policy, max_attempts), &r_attempts, NULL,
     NULL},
    {"dead_letter_topic", TN_CONF_STRING, offsetof(struct broker_policy, dead_letter_topic), NULL,
     NULL, check_topic},
    TN_CONF_END};

static int policy_name_ok(const char *name)
{
    const char *slash = strchr(name, '/');

    if (!slash)
        return broker_name_valid(name, strlen(name));
    return broker_name_valid(name, (size_t)(slash - name)) &&
           broker_name_valid(slash + 1, strlen(slash + 1));
}

/* channels: { NAME: { max_attempts: N, dead_letter_topic: T }, ... } where
 * NAME is a channel name (any topic) or "topic/channel". */
static int set_policies(struct tn_conf *cf, const struct tn_conf_node *node,
                        const struct tn_conf_cmd *cmd, void *conf)
{
    struct broker_policies *ps = (struct broker_policies *)((char *)conf + cmd->offset);
    int rc = 0;

    if (tn_conf_is_null(node))
        return 0;
    if (node->type != TN_NODE_MAP)
        return tn_conf_error(cf, node, "expected a mapping of channel names");
    ps->n = node->n;
    ps->v = tn_conf_alloc(cf, node->n * sizeof(*ps->v) + 1);
    if (!ps->v)
        return tn_conf_error(cf, node, "out of memory");
    for (size_t i = 0; i < node->n; i++) {
        struct broker_policy *p = &ps->v[i];
        const struct tn_conf_node *k = node->keys[i], *v = node->items[i];
        tn_conf_push_key(cf, k->value);
        p->name = tn_conf_strdup(cf, k->value);
        if (!policy_name_ok(k->value))
            rc = tn_conf_error(cf, k, "not a channel name or topic/channel: \"%s\"", k->value);
        if (v->type == TN_NODE_MAP) {
            if (tn_conf_apply(cf, v, policy_table, p) != 0)
                rc = TN_ECONF;
        } else if (!tn_conf_is_null(v)) {
            rc = tn_conf_error(cf, v, "expected a mapping (max_attempts, dead_letter_topic)");
        }
        tn_conf_pop(cf);
    }
    return rc;
}

#define OFF(f) offsetof(struct broker_conf, f)
const struct tn_conf_cmd broker_conf_table[] = {
    {"tcp_listen", TN_CONF_ADDR, OFF(tcp_listen), NULL, NULL, NULL},
    {"http_listen", TN_CONF_ADDR, OFF(http_listen), NULL, NULL, NULL},
    {"https_listen", TN_CONF_ADDR, OFF(https_listen), NULL, NULL, NULL},
    {"tls", TN_CONF_SECTION, OFF(tls), tn_tls_conf_table, NULL, tn_tls_conf_check},
    {"tls_required", TN_CONF_BOOL, OFF(tls_required), NULL, NULL, NULL},
    {"data_dir", TN_CONF_PATH, OFF(data_dir), NULL, NULL, NULL},
    {"mem_queue_size", TN_CONF_INT, OFF(mem_queue_size), &r_nonneg, NULL, NULL},
    {"max_msg_size", TN_CONF_SIZE, OFF(max_msg_size), NULL, NULL, NULL},
    {"max_body_size", TN_CONF_SIZE, OFF(max_body_size), NULL, NULL, NULL},
    {"max_rdy_count", TN_CONF_INT, OFF(max_rdy_count), &r_positive, NULL, NULL},
    {"msg_timeout", TN_CONF_DURATION, OFF(msg_timeout), NULL, NULL, NULL},
    {"max_msg_timeout", TN_CONF_DURATION, OFF(max_msg_timeout), NULL, NULL, NULL},
    {"max_req_timeout", TN_CONF_DURATION, OFF(max_req_timeout), NULL, NULL, NULL},
    {"heartbeat_interval", TN_CONF_DURATION, OFF(heartbeat_interval), NULL, NULL, NULL},
    {"max_heartbeat_interval", TN_CONF_DURATION, OFF(max_heartbeat_interval), NULL, NULL, NULL},
    {"max_output_buffer_size", TN_CONF_SIZE, OFF(max_output_buffer_size), NULL, NULL, NULL},
    {"max_output_buffer_timeout", TN_CONF_DURATION, OFF(max_output_buffer_timeout), NULL, NULL,
     NULL},
    {"sync_every", TN_CONF_INT, OFF(sync_every), &r_positive, NULL, NULL},
    {"sync_timeout", TN_CONF_DURATION, OFF(sync_timeout), NULL, NULL, NULL},
    {"max_bytes_per_file", TN_CONF_SIZE, OFF(max_bytes_per_file), NULL, NULL, NULL},
    {"max_channel_consumers", TN_CONF_INT, OFF(max_channel_consumers), &r_nonneg, NULL, NULL},
    {"max_connections", TN_CONF_INT, OFF(max_connections), &r_nonneg, NULL, NULL},
    {"deflate", TN_CONF_BOOL, OFF(deflate), NULL, NULL, NULL},
    {"max_deflate_level", TN_CONF_INT, OFF(max_deflate_level), &r_deflate, NULL, NULL},
    {"queue_scan_interval", TN_CONF_DURATION, OFF(queue_scan_interval), NULL, NULL, NULL},
    {"node_id", TN_CONF_INT, OFF(node_id), &r_node, NULL, NULL},
    {"auth", TN_CONF_BOOL, OFF(auth), NULL, NULL, NULL},
    {"max_attempts", TN_CONF_INT, OFF(max_attempts), &r_attempts, NULL, NULL},
    {"dead_letter_topic", TN_CONF_STRING, OFF(dead_letter_topic), NULL, NULL, check_topic},
    {"channels", TN_CONF_CUSTOM, OFF(channels), NULL, set_policies, NULL},
    {"lookupd", TN_CONF_ADDR_LIST, OFF(lookupd), NULL, NULL, NULL},
    {"broadcast_address", TN_CONF_STRING, OFF(broadcast_address), NULL, NULL, NULL},
    {"lookupd_interval", TN_CONF_DURATION, OFF(lookupd_interval), NULL, NULL, NULL},
    {"lua", TN_CONF_SECTION, OFF(lua), tn_lua_conf_table, NULL, NULL},
    {"zmtp", TN_CONF_CUSTOM, OFF(zmtp), NULL, broker_zmtp_conf_set, NULL},
    TN_CONF_END};

static void default_addr(struct tn_addr *a, const char *text)
{
    char err[128];

    if (tn_parse_addr(text, a, err, sizeof(err)) != 0)
        tn_log_error(BROKER_LOG, "default address %s: %s", text, err);
}

void broker_conf_default(struct broker_conf *bc)
{
    default_addr(&bc->tcp_listen, "127.0.0.1:4150");
    default_addr(&bc->http_listen, "127.0.0.1:4151");
    bc->mem_queue_size = 10000;
    bc->max_msg_size = 1024 * 1024;
    bc->max_body_size = 5 * 1024 * 1024;
    bc->max_rdy_count = 2500;
    bc->msg_timeout = 60 * 1000;
    bc->max_msg_timeout = 15 * 60 * 1000;
    bc->max_req_timeout = 60 * 60 * 1000;
    bc->heartbeat_interval = 30 * 1000;
    bc->max_heartbeat_interval = 60 * 1000;
    bc->max_output_buffer_size = 64 * 1024;
    bc->max_output_buffer_timeout = 30 * 1000;
    bc->sync_every = 2500;
    bc->sync_timeout = 2000;
    bc->max_bytes_per_file = 100 * 1024 * 1024;
    bc->deflate = 1;
    bc->max_deflate_level = 6;
    bc->queue_scan_interval = 100;
    bc->lookupd_interval = 15 * 1000;
    tn_lua_conf_default(&bc->lua);
    tn_tls_conf_default(&bc->tls);
}

int broker_conf_check(struct tn_conf *cf, struct broker_conf *bc)
{
    char err[512];

    if (bc->max_msg_size < 1 || bc->max_msg_size > TN_DISKQ_MSG_LIMIT - BROKER_REC_HEADER)
        tn_conf_error_key(cf, "max_msg_size", "must be 1 byte .. %u bytes",
                          TN_DISKQ_MSG_LIMIT - BROKER_REC_HEADER);
    if (bc->max_body_size < 5 || bc->max_body_size > INT32_MAX)
        tn_conf_error_key(cf, "max_body_size", "must be 5 bytes .. 2 GiB");
    if (bc->msg_timeout < 1000 || bc->msg_timeout > bc->max_msg_timeout)
        tn_conf_error_key(cf, "msg_timeout", "must be 1s .. max_msg_timeout");
    if (bc->max_req_timeout < 0)
        tn_conf_error_key(cf, "max_req_timeout", "must not be negative");
    if (bc->heartbeat_interval < 1000 || bc->heartbeat_interval > bc->max_heartbeat_interval)
        tn_conf_error_key(cf, "heartbeat_interval", "must be 1s .. max_heartbeat_interval");
    if (bc->max_output_buffer_size < 64)
        tn_conf_error_key(cf, "max_output_buffer_size", "must be at least 64 bytes");
    if (bc->max_output_buffer_timeout < 25)
        tn_conf_error_key(cf, "max_output_buffer_timeout", "must be at least 25ms");
    if (bc->sync_timeout < 1 || bc->sync_timeout > UINT32_MAX)
        tn_conf_error_key(cf, "sync_timeout", "must be 1ms .. 49 days");
    if (bc->max_bytes_per_file < 1024)
        tn_conf_error_key(cf, "max_bytes_per_file", "must be at least 1KiB");
    if (bc->queue_scan_interval < 1 || bc->queue_scan_interval > 60000)
        tn_conf_error_key(cf, "queue_scan_interval", "must be 1ms .. 60s");
    if (bc->lookupd_interval < 1000 || bc->lookupd_interval > 3600 * 1000)
        tn_conf_error_key(cf, "lookupd_interval", "must be 1s .. 1h");
    if (bc->sync_every > UINT32_MAX)
        tn_conf_error_key(cf, "sync_every", "too large");
    if (!tn_tls_conf_enabled(&bc->tls) && bc->https_listen.len)
        tn_conf_error_key(cf, "https_listen", "needs tls.cert and tls.key");
    if (!tn_tls_conf_enabled(&bc->tls) && bc->tls_required)
        tn_conf_error_key(cf, "tls_required", "needs tls.cert and tls.key");
    if (bc->lua.script && tn_lua_check_file(bc->lua.script, err, sizeof(err)) != 0)
        tn_conf_error_key(cf, "lua.script", "%s", err);
    return tn_conf_errors(cf) ? TN_ECONF : 0;
}
