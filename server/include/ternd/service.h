/*
 * service.h -- how modules and plugins talk without linking each other:
 * named services (a pointer to a struct of functions another module
 * declared in its public header) and named events with subscribers.
 * Loop thread only.
 */
#ifndef TERND_SERVICE_H
#define TERND_SERVICE_H

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
 * Events: "conn.open", "conn.close", "broker.publish", "auth.check", ...
 * A subscriber returns 0 to let the event pass; tn_event_emit stops at the
 * first non-zero return and gives it back (used for vetoes such as auth).
 */
typedef int (*tn_event_pt)(const char *event, void *arg, void *ud);
TN_API int tn_event_on(const char *event, tn_event_pt fn, void *ud);
TN_API void tn_event_off(const char *event, tn_event_pt fn, void *ud);
TN_API int tn_event_emit(const char *event, void *arg);
/* Are there subscribers (skip building the argument when not)? */
TN_API int tn_event_has(const char *event);

#endif
