/*
 * config.c -- the gateway's YAML section: listeners (a list of {proto,
 * addr, path}), the packet layout, heartbeats, WebSocket options, static
 * backend nodes ({NAME: [addr | {addr, weight}]}), and the `lua:` section.
 */
#include <stdio.h>
#include <string.h>

#include "gateway.h"

static const struct tn_conf_range r_route = {1, 4};
static const struct tn_conf_range r_seq = {0, 4};
static const struct tn_conf_range r_nonneg = {0, INT64_MAX};
static const struct tn_conf_range r_weight = {1, 1000000};
static const struct tn_conf_range r_kcp_resend = {0, 100};
static const struct tn_conf_range r_kcp_wnd = {16, 32768};
static const struct tn_conf_range r_kcp_mtu = {GW_KCP_MTU_MIN, 9000};

static const struct tn_conf_enum e_proto[] = {
    {"tcp", GW_PROTO_TCP}, {"ws", GW_PROTO_WS}, {"kcp", GW_PROTO_KCP}, {NULL, 0}};
static const struct tn_conf_enum e_order[] = {{"big", 1}, {"little", 0}, {NULL, 0}};
static const struct tn_conf_enum e_select[] = {{"round_robin", GW_SELECT_RR},
                                               {"rr", GW_SELECT_RR},
                                               {"random", GW_SELECT_RANDOM},
                                               {"weighted", GW_SELECT_WEIGHTED},
                                               {NULL, 0}};

static const struct tn_conf_cmd listen_table[] = {
    {"proto", TN_CONF_ENUM, offsetof(struct gw_listen_conf, proto), e_proto, NULL, NULL},
    {"addr", TN_CONF_ADDR, offsetof(struct gw_listen_conf, addr), NULL, NULL, NULL},
    {"path", TN_CONF_STRING, offsetof(struct gw_listen_conf, path), NULL, NULL, NULL},
    {"tls", TN_CONF_SECTION, offsetof(struct gw_listen_conf, tls), tn_tls_conf_table, NULL,
     tn_tls_conf_check},
    /* kcp only */
    {"nodelay", TN_CONF_BOOL, offsetof(struct gw_listen_conf, kcp_nodelay), NULL, NULL, NULL},
    {"interval", TN_CONF_DURATION, offsetof(struct gw_listen_conf, kcp_interval), NULL, NULL, NULL},
    {"resend", TN_CONF_INT, offsetof(struct gw_listen_conf, kcp_resend), &r_kcp_resend, NULL, NULL},
    {"nc", TN_CONF_BOOL, offsetof(struct gw_listen_conf, kcp_nc), NULL, NULL, NULL},
    {"sndwnd", TN_CONF_INT, offsetof(struct gw_listen_conf, kcp_sndwnd), &r_kcp_wnd, NULL, NULL},
    {"rcvwnd", TN_CONF_INT, offsetof(struct gw_listen_conf, kcp_rcvwnd), &r_kcp_wnd, NULL, NULL},
    {"mtu", TN_CONF_INT, offsetof(struct gw_listen_conf, kcp_mtu), &r_kcp_mtu, NULL, NULL},
    TN_CONF_END};

/* The KCP defaults: the engine's (the reference's normal mode), flushed
 * every 10ms instead of 100ms. */
static void kcp_conf_default(struct gw_listen_conf *lc)
{
    struct gw_kcp_opts o;

    gw_kcp_opts_default(&o);
    lc->kcp_nodelay = o.nodelay;
    lc->kcp_interval = 10;
    lc->kcp_resend = o.resend;
    lc->kcp_nc = o.nc;
    lc->kcp_sndwnd = o.sndwnd;
    lc->kcp_rcvwnd = o.rcvwnd;
    lc->kcp_mtu = o.mtu;
}

static const struct tn_conf_cmd node_addr_table[] = {
    {"addr", TN_CONF_ADDR, offsetof(struct gw_node_addr, addr), NULL, NULL, NULL},
    {"weight", TN_CONF_INT, offsetof(struct gw_node_addr, weight), &r_weight, NULL, NULL},
    TN_CONF_END};

/* listen: [ {proto: tcp|ws, addr: host:port, path: /ws, tls: {...}}, ... ] */
static int set_listen(struct tn_conf *cf, const struct tn_conf_node *node,
                      const struct tn_conf_cmd *cmd, void *conf)
{
    struct gw_conf *gc = conf;
    int rc = 0;

    gc->nlisten = 0;
    if (tn_conf_is_null(node))
        return 0;
    if (node->type != TN_NODE_SEQ)
        return tn_conf_error(cf, node, "expected a list of {proto, addr, path}");
    gc->listen = tn_conf_alloc(cf, node->n * sizeof(*gc->listen) + 1);
    if (!gc->listen)
        return tn_conf_error(cf, node, "out of memory");
    for (size_t i = 0; i < node->n; i++) {
        struct gw_listen_conf *lc = &gc->listen[i];
        const struct tn_conf_node *it = node->items[i];
        tn_conf_push_index(cf, i);
        lc->proto = GW_PROTO_TCP;
        lc->path = "/ws";
        tn_tls_conf_default(&lc->tls);
        kcp_conf_default(lc);
        if (it->type != TN_NODE_MAP)
            rc = tn_conf_error(cf, it, "expected a mapping {proto, addr, path}");
        else if (tn_conf_apply(cf, it, listen_table, lc) != 0)
            rc = TN_ECONF;
        else if (!lc->addr.len)
            rc = tn_conf_error(cf, it, "addr is required");
        else if (lc->proto == GW_PROTO_WS && (!lc->path || lc->path[0] != '/'))
            rc = tn_conf_error(cf, it, "path must start with /");
        else if (lc->proto == GW_PROTO_KCP && (lc->kcp_interval < 1 || lc->kcp_interval > 5000))
            rc = tn_conf_error(cf, it, "interval must be 1ms .. 5s");
        else if (lc->proto == GW_PROTO_KCP && tn_tls_conf_enabled(&lc->tls))
            rc = tn_conf_error(cf, it, "tls is not available on kcp listeners");
        tn_conf_pop(cf);
    }
    gc->nlisten = node->n;
    return rc;
}

static int set_node_addr(struct tn_conf *cf, const struct tn_conf_node *it, struct gw_node_addr *a)
{
    a->weight = 1;
    if (it->type == TN_NODE_SCALAR)
        return tn_conf_parse_addr(cf, it, &a->addr);
    if (it->type != TN_NODE_MAP)
        return tn_conf_error(cf, it, "expected host:port or {addr, weight}");
    if (tn_conf_apply(cf, it, node_addr_table, a) != 0)
        return TN_ECONF;
    if (!a->addr.len)
        return tn_conf_error(cf, it, "addr is required");
    return 0;
}

static int set_node(struct tn_conf *cf, const struct tn_conf_node *k, const struct tn_conf_node *v,
                    struct gw_node_conf *nc)
{
    int rc = 0;

    nc->name = tn_conf_strdup(cf, k->value);
    if (!k->vlen || k->vlen >= GW_NAME_MAX)
        rc = tn_conf_error(cf, k, "node names are 1..%d bytes", GW_NAME_MAX - 1);
    if (v->type == TN_NODE_SCALAR && !tn_conf_is_null(v)) {
        nc->n = 1;
        nc->v = tn_conf_alloc(cf, sizeof(*nc->v));
        return nc->v && set_node_addr(cf, v, nc->v) == 0 ? rc : TN_ECONF;
    }
    if (v->type != TN_NODE_SEQ || v->n == 0)
        return tn_conf_error(cf, v, "expected a list of addresses");
    nc->n = v->n;
    nc->v = tn_conf_alloc(cf, v->n * sizeof(*nc->v));
    if (!nc->v)
        return tn_conf_error(cf, v, "out of memory");
    for (size_t i = 0; i < v->n; i++) {
        tn_conf_push_index(cf, i);
        if (set_node_addr(cf, v->items[i], &nc->v[i]) != 0)
            rc = TN_ECONF;
        tn_conf_pop(cf);
    }
    return rc;
}

/* nodes: { NAME: [host:port | {addr: host:port, weight: N}, ...] } */
static int set_nodes(struct tn_conf *cf, const struct tn_conf_node *node,
                     const struct tn_conf_cmd *cmd, void *conf)
{
    struct gw_conf *gc = conf;
    int rc = 0;

    gc->nnodes = 0;
    if (tn_conf_is_null(node))
        return 0;
    if (node->type != TN_NODE_MAP)
        return tn_conf_error(cf, node, "expected a mapping of node names to addresses");
    gc->nodes = tn_conf_alloc(cf, node->n * sizeof(*gc->nodes) + 1);
    if (!gc->nodes)
        return tn_conf_error(cf, node, "out of memory");
    for (size_t i = 0; i < node->n; i++) {
        tn_conf_push_key(cf, node->keys[i]->value);
        if (set_node(cf, node->keys[i], node->items[i], &gc->nodes[i]) != 0)
            rc = TN_ECONF;
        tn_conf_pop(cf);
    }
    gc->nnodes = node->n;
    return rc;
}

#define OFF(f) offsetof(struct gw_conf, f)
#define POFF(f) offsetof(struct gw_packet_conf, f)
static const struct tn_conf_cmd packet_table[] = {
    {"byte_order", TN_CONF_ENUM, POFF(byte_order), e_order, NULL, NULL},
    {"route_bytes", TN_CONF_INT, POFF(route_bytes), &r_route, NULL, NULL},
    {"seq_bytes", TN_CONF_INT, POFF(seq_bytes), &r_seq, NULL, NULL},
    {"max_size", TN_CONF_SIZE, POFF(max_size), NULL, NULL, NULL},
    TN_CONF_END};

const struct tn_conf_cmd gw_conf_table[] = {
    {"listen", TN_CONF_CUSTOM, 0, NULL, set_listen, NULL},
    {"packet", TN_CONF_SECTION, OFF(packet), packet_table, NULL, NULL},
    {"heartbeat", TN_CONF_DURATION, OFF(heartbeat), NULL, NULL, NULL},
    {"heartbeat_timeout", TN_CONF_DURATION, OFF(heartbeat_timeout), NULL, NULL, NULL},
    {"heartbeat_time", TN_CONF_BOOL, OFF(heartbeat_time), NULL, NULL, NULL},
    {"max_connections", TN_CONF_INT, OFF(max_connections), &r_nonneg, NULL, NULL},
    {"max_output", TN_CONF_SIZE, OFF(max_output), NULL, NULL, NULL},
    {"ws_deflate", TN_CONF_BOOL, OFF(ws_deflate), NULL, NULL, NULL},
    {"ws_close_timeout", TN_CONF_DURATION, OFF(ws_close_timeout), NULL, NULL, NULL},
    {"ws_compress_min", TN_CONF_SIZE, OFF(ws_compress_min), NULL, NULL, NULL},
    {"nodes", TN_CONF_CUSTOM, 0, NULL, set_nodes, NULL},
    {"node_select", TN_CONF_ENUM, OFF(node_select), e_select, NULL, NULL},
    {"node_retry", TN_CONF_DURATION, OFF(node_retry), NULL, NULL, NULL},
    {"node_connect_timeout", TN_CONF_DURATION, OFF(node_connect_timeout), NULL, NULL, NULL},
    {"node_tls", TN_CONF_SECTION, OFF(node_tls), tn_tls_client_conf_table, NULL,
     tn_tls_client_conf_check},
    {"lua", TN_CONF_SECTION, OFF(lua), tn_lua_conf_table, NULL, NULL},
    {"auth", TN_CONF_SECTION, OFF(auth), gw_auth_conf_table, NULL, NULL},
    TN_CONF_END};

void gw_conf_default(struct gw_conf *gc)
{
    gc->packet.byte_order = 1;
    gc->packet.route_bytes = 2;
    gc->packet.seq_bytes = 2;
    gc->packet.max_size = 64 * 1024;
    gc->heartbeat = 10 * 1000;
    gc->heartbeat_timeout = 0;
    gc->max_output = 4 * 1024 * 1024;
    gc->ws_deflate = 1;
    gc->ws_close_timeout = 3000;
    gc->ws_compress_min = 256;
    gc->node_select = GW_SELECT_RR;
    gc->node_retry = 1000;
    gc->node_connect_timeout = 3000;
    tn_tls_client_conf_default(&gc->node_tls);
    tn_lua_conf_default(&gc->lua);
    gw_auth_conf_default(&gc->auth);
}

void gw_conf_codec(const struct gw_conf *gc, struct gw_codec *c)
{
    c->big_endian = gc->packet.byte_order;
    c->route_bytes = (int)gc->packet.route_bytes;
    c->seq_bytes = (int)gc->packet.seq_bytes;
    c->max_size = gc->packet.max_size;
}

int64_t gw_conf_idle_ms(const struct gw_conf *gc)
{
    return gc->heartbeat_timeout ? gc->heartbeat_timeout : 2 * gc->heartbeat;
}

int gw_conf_check(struct tn_conf *cf, struct gw_conf *gc)
{
    struct gw_codec c;
    char err[512];

    gw_conf_codec(gc, &c);
    if (gc->packet.route_bytes == 3)
        tn_conf_error_key(cf, "packet.route_bytes", "must be 1, 2 or 4");
    if (gc->packet.seq_bytes == 3)
        tn_conf_error_key(cf, "packet.seq_bytes", "must be 0, 1, 2 or 4");
    if (gc->packet.max_size < gw_codec_head_len(&c) || gc->packet.max_size < GW_HEARTBEAT_MAX ||
        gc->packet.max_size > 64 * 1024 * 1024)
        tn_conf_error_key(cf, "packet.max_size", "must be %zu bytes .. 64MiB",
                          gw_codec_head_len(&c) > GW_HEARTBEAT_MAX ? gw_codec_head_len(&c)
                                                                   : (size_t)GW_HEARTBEAT_MAX);
    if (gc->heartbeat < 0)
        tn_conf_error_key(cf, "heartbeat", "must not be negative");
    if (gc->heartbeat_timeout < 0)
        tn_conf_error_key(cf, "heartbeat_timeout", "must not be negative");
    if (gc->max_output < 4096)
        tn_conf_error_key(cf, "max_output", "must be at least 4KiB");
    if (gc->ws_close_timeout < 1)
        tn_conf_error_key(cf, "ws_close_timeout", "must be at least 1ms");
    if (gc->node_retry < 0 || gc->node_connect_timeout < 1)
        tn_conf_error_key(cf, "node_retry", "node_retry >= 0 and node_connect_timeout >= 1ms");
    for (size_t i = 0; i < gc->nlisten; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(gc->listen[i].addr.text, gc->listen[j].addr.text) == 0) {
                char key[64];
                snprintf(key, sizeof(key), "listen[%zu].addr", i);
                tn_conf_error_key(cf, key, "the same address is listed twice");
            }
    if (gc->lua.script && tn_lua_check_file(gc->lua.script, err, sizeof(err)) != 0)
        tn_conf_error_key(cf, "lua.script", "%s", err);
    gw_auth_conf_check(cf, gc);
    return tn_conf_errors(cf) ? TN_ECONF : 0;
}
