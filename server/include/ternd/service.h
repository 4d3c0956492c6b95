/*
 * service.h -- how modules and plugins talk without linking each other:
 * named services (a pointer to a struct of functions another module
 * declared in its public header) and named events with subscribers.
 * Loop thread only.
 */
#ifndef TERND_SERVICE_H
#define TERND_SERVICE_H

#include <stddef.h>
#include <stdint.h>
#include <ternd/core.h>

/* Publish ptr under name ("broker", "discovery.registry"). TN_EEXIST if the
 * name is taken. The pointer must stay valid until unregistered.
 * Registering emits TN_SERVICE_UP_EVENT once the name resolves;
 * unregistering emits TN_SERVICE_DOWN_EVENT while it still resolves, so a
 * user can let go (a module using another's service needs no start order:
 * it looks the service up in start and follows these events). The event
 * argument is the name (const char *). */
TN_API int tn_service_register(const char *name, void *ptr);
TN_API void tn_service_unregister(const char *name);
TN_API void *tn_service_lookup(const char *name);

#define TN_SERVICE_UP_EVENT "service.up"
#define TN_SERVICE_DOWN_EVENT "service.down"

/*
 * Events: "conn.open", "conn.close" (conn.h), "auth.check", "auth.authorize"
 * (below), "broker.publish" (tn_broker.h), ...
 * A subscriber returns 0 to let the event pass; tn_event_emit stops at the
 * first non-zero return and gives it back (used for vetoes such as auth).
 */
typedef int (*tn_event_pt)(const char *event, void *arg, void *ud);
TN_API int tn_event_on(const char *event, tn_event_pt fn, void *ud);
TN_API void tn_event_off(const char *event, tn_event_pt fn, void *ud);
TN_API int tn_event_emit(const char *event, void *arg);
/* Are there subscribers (skip building the argument when not)? */
TN_API int tn_event_has(const char *event);

/*
 * The admin server's /dashboard/api/... requests (GET, or POST with an
 * X-Ternd-Dashboard header) are emitted as this event with the struct
 * tn_http_req * as arg: the subscriber that serves the path replies at once
 * and returns non-zero; when none does, the client gets 404.
 */
#define TN_ADMIN_HTTP_EVENT "admin.http"

/*
 * Authentication, shared by every protocol module that takes a secret (the
 * broker's NSQ AUTH, service "nsq"; a gateway login, service "gateway") and
 * answered by auth plugins (auth_file). The emitter zeroes the struct, sets
 * the inputs and permission_count = -1, and emits TN_AUTH_CHECK_EVENT. A
 * subscriber that knows the secret sets ok = 1, identity, identity_url,
 * authority (its own name, so that it alone decides the authorize events of
 * this client) and permission_count, and returns 0. Nobody setting ok means
 * the secret is refused.
 */
#define TN_AUTH_CHECK_EVENT "auth.check"
#define TN_AUTH_NAME_MAX 256

struct tn_auth_check {
    const char *secret;                  /* in: not NUL-terminated */
    size_t secret_len;                   /* in */
    const char *remote_addr;             /* in: "ip:port" */
    int ok;                              /* out: 1 accepted */
    char identity[TN_AUTH_NAME_MAX];     /* out */
    char identity_url[TN_AUTH_NAME_MAX]; /* out */
    const char *service;                 /* in: "nsq", "gateway" (NULL from old emitters) */
    char authority[64];                  /* out: the accepting plugin's name, or "" */
    int64_t permission_count;            /* out: rules granted; -1 when not counted */
};

/*
 * Authorization, per operation of an authenticated client: the emitter
 * fills a struct tn_auth_authorize (allowed = 0) and emits
 * TN_AUTH_AUTHORIZE_EVENT. Only the plugin named in authority judges (the
 * others return 0): it allows by setting allowed = 1 and returning 0, and
 * denies by returning a negative code (-EACCES), which stops the emit.
 * When authority is set and nobody allowed, the operation is denied, so a
 * client keeps no rights its plugin can no longer confirm (the plugin was
 * removed or lost its rules). With authority "" (the accepting plugin
 * keeps no rules) the operation is allowed unless a subscriber denies it.
 * The broker asks before PUB, MPUB and DPUB (TN_AUTH_PUBLISH, channel NULL)
 * and SUB (TN_AUTH_SUBSCRIBE), and answers a denial with E_UNAUTHORIZED.
 * A gateway would pass its route as topic and its group as channel.
 */
#define TN_AUTH_AUTHORIZE_EVENT "auth.authorize"

enum { TN_AUTH_PUBLISH = 1, TN_AUTH_SUBSCRIBE = 2 };

struct tn_auth_authorize {
    const char *service;   /* "nsq", "gateway" */
    const char *authority; /* auth.check's authority for this client ("" if none) */
    const char *secret;    /* the secret the client authenticated with */
    size_t secret_len;
    const char *identity;
    const char *remote_addr;
    int action; /* TN_AUTH_PUBLISH or TN_AUTH_SUBSCRIBE */
    const char *topic;
    const char *channel; /* TN_AUTH_SUBSCRIBE: the channel; else NULL */
    int allowed;         /* out: set to 1 by the authority */
};

#endif
