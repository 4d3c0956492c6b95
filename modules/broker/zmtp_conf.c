/*
 * zmtp_conf.c -- the broker.zmtp key: a sequence of ZeroMQ listeners, each
 * a mapping { listen, type, topic, channel, hwm, heartbeat,
 * request_timeout }, with the checks that tie type to topic and channel.
 */
#include <string.h>

#include "broker.h"

static const struct tn_conf_enum zmtp_types[] = {
    {"pub", BROKER_ZMTP_PUB},   {"push", BROKER_ZMTP_PUSH},     {"sub", BROKER_ZMTP_SUB},
    {"pull", BROKER_ZMTP_PULL}, {"router", BROKER_ZMTP_ROUTER}, {NULL, 0}};
static const struct tn_conf_range r_hwm = {1, 10 * 1000 * 1000};
static const struct tn_conf_range r_heartbeat = {100, 3600 * 1000};
static const struct tn_conf_range r_request = {100, 24 * 3600 * 1000};

static int check_name(struct tn_conf *cf, const struct tn_conf_node *node,
                      const struct tn_conf_cmd *cmd, void *conf)
{
    const char *name = *(char **)((char *)conf + cmd->offset);

    if (name && !broker_name_valid(name, strlen(name)))
        return tn_conf_error(cf, node, "not a valid topic/channel name ([.a-zA-Z0-9_-], 1..64)");
    return 0;
}

#define ZOFF(f) offsetof(struct broker_zmtp_conf, f)
static const struct tn_conf_cmd zmtp_table[] = {
    {"listen", TN_CONF_ADDR, ZOFF(listen), NULL, NULL, NULL},
    {"type", TN_CONF_ENUM, ZOFF(type), zmtp_types, NULL, NULL},
    {"topic", TN_CONF_STRING, ZOFF(topic), NULL, NULL, check_name},
    {"channel", TN_CONF_STRING, ZOFF(channel), NULL, NULL, check_name},
    {"hwm", TN_CONF_INT, ZOFF(hwm), &r_hwm, NULL, NULL},
    {"heartbeat", TN_CONF_DURATION, ZOFF(heartbeat), &r_heartbeat, NULL, NULL},
    {"request_timeout", TN_CONF_DURATION, ZOFF(request_timeout), &r_request, NULL, NULL},
    TN_CONF_END};

/* The cross-key rules of one listener; errors name the item's place. */
static int zmtp_check(struct tn_conf *cf, const struct tn_conf_node *item,
                      struct broker_zmtp_conf *z)
{
    int rc = 0;

    if (!z->listen.len)
        rc = tn_conf_error(cf, item, "listen is required");
    if (!z->type)
        rc = tn_conf_error(cf, item, "type is required (pub, push, sub, pull or router)");
    if ((z->type == BROKER_ZMTP_SUB || z->type == BROKER_ZMTP_PULL) && !z->topic)
        rc = tn_conf_error(cf, item, "a %s listener needs a topic",
                           z->type == BROKER_ZMTP_SUB ? "sub" : "pull");
    if (z->channel && z->type != BROKER_ZMTP_PULL)
        rc = tn_conf_error(cf, item, "channel is only for type pull");
    if (z->topic && z->type == BROKER_ZMTP_ROUTER)
        rc = tn_conf_error(cf, item, "a router listener takes no topic");
    return rc;
}

int broker_zmtp_conf_set(struct tn_conf *cf, const struct tn_conf_node *node,
                         const struct tn_conf_cmd *cmd, void *conf)
{
    struct broker_zmtp_list *zl = (struct broker_zmtp_list *)((char *)conf + cmd->offset);
    int rc = 0;

    if (tn_conf_is_null(node))
        return 0;
    if (node->type != TN_NODE_SEQ)
        return tn_conf_error(cf, node, "expected a sequence of listeners");
    zl->v = tn_conf_alloc(cf, node->n * sizeof(*zl->v) + 1);
    if (!zl->v)
        return tn_conf_error(cf, node, "out of memory");
    zl->n = node->n;
    for (size_t i = 0; i < node->n; i++) {
        struct broker_zmtp_conf *z = &zl->v[i];
        const struct tn_conf_node *item = node->items[i];
        memset(z, 0, sizeof(*z));
        z->hwm = 1000;
        z->heartbeat = 2500;
        z->request_timeout = 10 * 1000;
        tn_conf_push_index(cf, i);
        if (item->type != TN_NODE_MAP)
            rc = tn_conf_error(cf, item, "expected a mapping (listen, type, topic, ...)");
        else if (tn_conf_apply(cf, item, zmtp_table, z) != 0 || zmtp_check(cf, item, z) != 0)
            rc = TN_ECONF;
        tn_conf_pop(cf);
    }
    return rc;
}

static int str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static int zmtp_conf_eq(const struct broker_zmtp_conf *a, const struct broker_zmtp_conf *b)
{
    return strcmp(a->listen.text, b->listen.text) == 0 && a->type == b->type &&
           str_eq(a->topic, b->topic) && str_eq(a->channel, b->channel) && a->hwm == b->hwm &&
           a->heartbeat == b->heartbeat && a->request_timeout == b->request_timeout;
}

int broker_zmtp_conf_changed(const struct broker_zmtp_list *a, const struct broker_zmtp_list *b)
{
    if (a->n != b->n)
        return 1;
    for (size_t i = 0; i < a->n; i++)
        if (!zmtp_conf_eq(&a->v[i], &b->v[i]))
            return 1;
    return 0;
}
