/*
 * tn_broker.h -- the broker's service, for other modules and plugins
 * (installed as <ternd/tn_broker.h>). Look it up by name, never link to
 * broker.so:
 *
 *     const struct tn_broker_service *b = tn_service_lookup(TN_BROKER_SERVICE);
 *     if (b && b->size >= sizeof(*b)) b->publish("events", body, len, 0);
 *
 * The pointer is valid while the broker module is started (it unregisters
 * in its stop hook); look it up again rather than keeping it across a
 * reload. Loop thread only.
 */
#ifndef TERND_TN_BROKER_H
#define TERND_TN_BROKER_H

#include <stddef.h>
#include <stdint.h>
#include <ternd/service.h>

#define TN_BROKER_SERVICE "broker"

struct tn_broker_service {
    uint32_t size; /* sizeof(struct tn_broker_service); new fields go at the end */
    /* Publish a copy of body to topic (created if needed), after `defer_ms`
     * (0: now; at most broker.max_req_timeout). Runs the Lua on_publish hook
     * like any other publish. 0, TN_EINVAL (bad topic name or defer),
     * TN_ETOOBIG (over max_msg_size), TN_ESTOPPED, TN_ENOMEM. */
    int (*publish)(const char *topic, const void *body, size_t len, int64_t defer_ms);
    /* Messages waiting in a topic (memory + disk, not counting its
     * channels), or -1 when there is no such topic. */
    int64_t (*topic_depth)(const char *topic);
};

/*
 * With broker.auth on, AUTH <secret> from a TCP client is offered to the
 * subscribers of this event (tn_event_emit with a struct tn_auth_check,
 * service "nsq"; see <ternd/service.h>): one that accepts sets ok = 1 and
 * may fill identity / identity_url. No acceptance means E_AUTH_FAILED;
 * without AUTH, PUB/SUB get E_AUTH_FIRST. Every PUB, MPUB, DPUB and SUB of
 * an authenticated client is then offered to TN_AUTH_AUTHORIZE_EVENT; a
 * denial is answered with E_UNAUTHORIZED. The names below are the ones
 * this header first had.
 */
#define TN_BROKER_AUTH_EVENT TN_AUTH_CHECK_EVENT
#define tn_broker_auth tn_auth_check

/*
 * Every accepted publish is announced as TN_BROKER_PUBLISH_EVENT with a
 * struct tn_broker_publish (after the Lua hook); a subscriber returning
 * non-zero drops the message (it still counts as published for the client).
 */
#define TN_BROKER_PUBLISH_EVENT "broker.publish"

struct tn_broker_publish {
    const char *topic;
    const void *body;
    size_t len;
    int64_t defer_ms;
};

#endif
