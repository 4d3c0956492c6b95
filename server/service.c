/*
 * service.c -- named services and events: the only way modules and plugins
 * reach each other. Both tables are small and looked up rarely (at start or
 * per event name), so linked lists keep the code obvious.
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

struct service {
    struct service *next;
    char *name;
    void *ptr;
};

struct subscriber {
    struct subscriber *next;
    char *event;
    tn_event_pt fn;
    void *ud;
};

static struct service *services;
static struct subscriber *subscribers;

int tn_service_register(const char *name, void *ptr)
{
    struct service *s;

    if (tn_service_lookup(name))
        return TN_EEXIST;
    s = calloc(1, sizeof(*s));
    if (!s || !(s->name = strdup(name))) {
        free(s);
        return TN_ENOMEM;
    }
    s->ptr = ptr;
    s->next = services;
    services = s;
    tn_event_emit(TN_SERVICE_UP_EVENT, (void *)name);
    return 0;
}

void tn_service_unregister(const char *name)
{
    if (tn_service_lookup(name))
        tn_event_emit(TN_SERVICE_DOWN_EVENT, (void *)name);
    for (struct service **pp = &services; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->name, name) == 0) {
            struct service *s = *pp;
            *pp = s->next;
            free(s->name);
            free(s);
            return;
        }
    }
}

void *tn_service_lookup(const char *name)
{
    for (struct service *s = services; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s->ptr;
    return NULL;
}

/* Subscribers are appended so they run in the order they subscribed. */
int tn_event_on(const char *event, tn_event_pt fn, void *ud)
{
    struct subscriber *s = calloc(1, sizeof(*s)), **pp;

    if (!s || !(s->event = strdup(event))) {
        free(s);
        return TN_ENOMEM;
    }
    s->fn = fn;
    s->ud = ud;
    for (pp = &subscribers; *pp; pp = &(*pp)->next)
        ;
    *pp = s;
    return 0;
}

void tn_event_off(const char *event, tn_event_pt fn, void *ud)
{
    for (struct subscriber **pp = &subscribers; *pp; pp = &(*pp)->next) {
        struct subscriber *s = *pp;
        if (s->fn == fn && s->ud == ud && strcmp(s->event, event) == 0) {
            *pp = s->next;
            free(s->event);
            free(s);
            return;
        }
    }
}

int tn_event_emit(const char *event, void *arg)
{
    struct subscriber *s, *next;

    for (s = subscribers; s; s = next) {
        next = s->next; /* a subscriber may unsubscribe itself */
        if (strcmp(s->event, event) == 0) {
            int r = s->fn(event, arg, s->ud);
            if (r != 0)
                return r;
        }
    }
    return 0;
}

int tn_event_has(const char *event)
{
    for (struct subscriber *s = subscribers; s; s = s->next)
        if (strcmp(s->event, event) == 0)
            return 1;
    return 0;
}
