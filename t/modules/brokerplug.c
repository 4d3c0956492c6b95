/*
 * brokerplug.c -- a test plugin for what the broker offers other modules:
 * at start it publishes through the "broker" service (<ternd/tn_broker.h>),
 * it accepts the AUTH secret "letmein" through the auth.check event, and it
 * vetoes messages whose body is "veto" through the broker.publish event.
 * Built only for `make check`.
 */
#include <string.h>
#include <ternd/ternd.h>

#include "tn_broker.h"

#define WHO "brokerplug"

static int on_auth(const char *event, void *arg, void *ud)
{
    struct tn_broker_auth *a = arg;

    if (a->secret_len == 7 && memcmp(a->secret, "letmein", 7) == 0) {
        a->ok = 1;
        strcpy(a->identity, "tester");
        strcpy(a->identity_url, "http://example.invalid/tester");
    }
    return 0;
}

static int on_publish(const char *event, void *arg, void *ud)
{
    const struct tn_broker_publish *p = arg;

    return p->len == 4 && memcmp(p->body, "veto", 4) == 0;
}

static int plug_start(struct tn_mod *m)
{
    const struct tn_broker_service *b = tn_service_lookup(TN_BROKER_SERVICE);
    static const char hello[] = "hello from a plugin";
    int rc;

    if (!b || b->size < sizeof(*b)) {
        tn_log_error(WHO, "no broker service");
        return TN_EMODULE;
    }
    rc = b->publish("plugin-svc", hello, sizeof(hello) - 1, 0);
    if (rc == 0)
        rc = b->publish("plugin-svc", "deferred", 8, 300);
    if (rc == 0 && b->publish("bad name", "x", 1, 0) != TN_EINVAL)
        rc = TN_EMODULE;
    tn_log_info(WHO, "published: %s, depth %lld", tn_strerror(rc),
                (long long)b->topic_depth("plugin-svc"));
    tn_event_on(TN_BROKER_AUTH_EVENT, on_auth, NULL);
    tn_event_on(TN_BROKER_PUBLISH_EVENT, on_publish, NULL);
    return rc;
}

static int plug_stop(struct tn_mod *m)
{
    tn_event_off(TN_BROKER_AUTH_EVENT, on_auth, NULL);
    tn_event_off(TN_BROKER_PUBLISH_EVENT, on_publish, NULL);
    return 0;
}

static const char *const plug_deps[] = {"broker", NULL};

TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD("brokerplug", "1.0"),
    plug_deps,
    NULL,
    0,
    NULL,
    NULL,
    NULL,
    plug_start,
    plug_stop,
    NULL,
    NULL,
    NULL,
};
