/*
 * auth.c -- client logins on the gateway (the `auth:` section): a new
 * session sends its secret as one packet on auth.route, which is checked
 * through the "auth.check" event (service "gateway", answered by auth
 * plugins such as auth_file); after that every packet, and every group the
 * session joins, is judged through "auth.authorize" with the route number
 * (decimal) as topic and the group as channel (<ternd/service.h>).
 */
#include <errno.h>
#include <ev.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

/* The login state of one session (s->auth), NULL when the session was
 * opened with auth off. Owned by the session, freed by gw_auth_closed. */
struct gw_auth {
    struct gw_session *s;
    ev_timer timer; /* the login deadline, stopped once authenticated */
    /* the settings when the session opened (a reload changes new ones) */
    int32_t route;
    int64_t timeout;
    int close_on_deny;
    int authed;
    char *secret; /* kept for auth.authorize: the plugin looks it up again */
    size_t secret_len;
    char identity[TN_AUTH_NAME_MAX];
    char authority[64];
};

/* ---- configuration ------------------------------------------------------------ */

static const struct tn_conf_range r_auth_timeout = {0, 24 * 3600 * 1000};

#define AOFF(f) offsetof(struct gw_auth_conf, f)
const struct tn_conf_cmd gw_auth_conf_table[] = {
    {"enabled", TN_CONF_BOOL, AOFF(enabled), NULL, NULL, NULL},
    {"route", TN_CONF_INT, AOFF(route), NULL, NULL, NULL},
    {"timeout", TN_CONF_DURATION, AOFF(timeout), &r_auth_timeout, NULL, NULL},
    {"close_on_deny", TN_CONF_BOOL, AOFF(close_on_deny), NULL, NULL, NULL},
    TN_CONF_END};

void gw_auth_conf_default(struct gw_auth_conf *ac)
{
    ac->enabled = 0;
    ac->route = 0;
    ac->timeout = 10 * 1000;
    ac->close_on_deny = 0;
}

/* The login route must be one a client can send with packet.route_bytes
 * (signed). */
void gw_auth_conf_check(struct tn_conf *cf, const struct gw_conf *gc)
{
    int64_t bits = gc->packet.route_bytes * 8 - 1;
    int64_t max = bits >= 31 ? INT32_MAX : ((int64_t)1 << bits) - 1;

    if (gc->auth.route > max || gc->auth.route < -max - 1)
        tn_conf_error_key(cf, "auth.route", "must fit packet.route_bytes (%lld..%lld)",
                          (long long)(-max - 1), (long long)max);
}

/* ---- replies ------------------------------------------------------------------------ */

/* A JSON reply on route/seq; the session may be closed right after (the
 * transports send what is queued before closing). */
static void reply_json(struct gw_session *s, int32_t route, int32_t seq, json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

    if (text)
        gw_session_send(s, route, seq, text, strlen(text));
    else
        gw_session_send(s, route, seq, "{}", 2);
    free(text);
    json_decref(o);
}

static void reply_error(struct gw_session *s, int32_t route, int32_t seq, const char *code,
                        const char *msg)
{
    reply_json(s, route, seq, json_pack("{s:s, s:s}", "error", code, "message", msg));
}

/* ---- the login deadline ------------------------------------------------------------- */

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct gw_auth *a = w->data;
    struct gw_session *s = a->s;

    if (s->closing || s->tpclosed)
        return;
    s->gw->auth_st.timeouts++;
    tn_log_info(GW_LOG, "session %llu (%s): no login within %lld ms, closing",
                (unsigned long long)s->id, gw_session_addr(s), (long long)a->timeout);
    reply_error(s, a->route, 0, "E_AUTH_TIMEOUT", "no AUTH within auth.timeout");
    gw_session_close(s, GW_CLOSE_POLICY, "authentication timeout");
}

int gw_auth_open(struct gw_session *s)
{
    const struct gw_auth_conf *ac = &s->gw->conf->auth;
    struct gw_auth *a;

    if (!ac->enabled)
        return 0;
    if (!(a = calloc(1, sizeof(*a))))
        return TN_ENOMEM;
    a->s = s;
    a->route = (int32_t)ac->route;
    a->close_on_deny = ac->close_on_deny;
    a->timeout = ac->timeout;
    ev_timer_init(&a->timer, on_deadline, (double)ac->timeout / 1000.0, 0.);
    a->timer.data = a;
    if (ac->timeout > 0)
        ev_timer_start(tn_loop(), &a->timer);
    s->auth = a;
    return 0;
}

void gw_auth_closed(struct gw_session *s)
{
    struct gw_auth *a = s->auth;

    if (!a)
        return;
    ev_timer_stop(tn_loop(), &a->timer);
    if (a->secret) {
        memset(a->secret, 0, a->secret_len);
        free(a->secret);
    }
    free(a);
    s->auth = NULL;
}

/* ---- login ---------------------------------------------------------------------------- */

static int login_refused(struct gw_session *s, const struct gw_packet *pk, const char *why)
{
    s->gw->auth_st.refused++;
    tn_log_info(GW_LOG, "session %llu (%s): login refused (%s), closing", (unsigned long long)s->id,
                gw_session_addr(s), why);
    reply_error(s, pk->route, pk->seq, "E_AUTH_FAILED", "AUTH failed");
    gw_session_close(s, GW_CLOSE_POLICY, "authentication failed");
    return 0;
}

/* Keep what auth.authorize needs, stop the deadline, answer like nsqd. */
static void login_accepted(struct gw_session *s, const struct gw_packet *pk,
                           struct tn_auth_check *c)
{
    struct gw_auth *a = s->auth;

    c->identity[sizeof(c->identity) - 1] = '\0'; /* the plugin may have filled it all */
    c->identity_url[sizeof(c->identity_url) - 1] = '\0';
    c->authority[sizeof(c->authority) - 1] = '\0';
    memcpy(a->secret, pk->data, pk->len);
    a->secret_len = pk->len;
    a->authed = 1;
    snprintf(a->identity, sizeof(a->identity), "%s", c->identity);
    snprintf(a->authority, sizeof(a->authority), "%s", c->authority);
    ev_timer_stop(tn_loop(), &a->timer);
    /* a copy for session:get("identity"); session.identity stays the truth */
    gw_attr_set(s, "identity", GW_ATTR_STRING, 0, 0, a->identity, strlen(a->identity));
    s->gw->auth_st.accepted++;
    tn_log_debug(GW_LOG, "session %llu (%s): logged in as \"%s\"", (unsigned long long)s->id,
                 gw_session_addr(s), a->identity);
    reply_json(s, pk->route, pk->seq,
               json_pack("{s:s, s:s, s:I}", "identity", c->identity, "identity_url",
                         c->identity_url, "permission_count",
                         (json_int_t)(c->permission_count < 0 ? 1 : c->permission_count)));
}

static int login(struct gw_session *s, const struct gw_packet *pk)
{
    struct gw_auth *a = s->auth;
    struct tn_auth_check c;

    if (a->authed) {
        reply_error(s, pk->route, pk->seq, "E_INVALID", "AUTH already set");
        return 0;
    }
    if (!tn_event_has(TN_AUTH_CHECK_EVENT) && !s->gw->auth_st.warned) {
        s->gw->auth_st.warned = 1;
        tn_log_warn(GW_LOG, "auth.enabled but no auth plugin (auth_file) answers auth.check: "
                            "every login is refused");
    }
    memset(&c, 0, sizeof(c));
    c.secret = pk->data;
    c.secret_len = pk->len;
    c.remote_addr = gw_session_addr(s);
    c.service = "gateway";
    c.permission_count = -1;
    tn_event_emit(TN_AUTH_CHECK_EVENT, &c);
    if (!c.ok)
        return login_refused(s, pk, pk->len ? "unknown secret" : "empty secret");
    if (!(a->secret = malloc(pk->len + 1)))
        return login_refused(s, pk, tn_strerror(TN_ENOMEM));
    login_accepted(s, pk, &c);
    return 0;
}

/* ---- authorization ------------------------------------------------------------------------ */

/* Ask the authority that accepted the login (as the broker does for NSQ):
 * 0 allowed, -EACCES denied. channel is NUL-terminated or NULL. */
static int authorize(struct gw_session *s, int action, int32_t route, const char *channel)
{
    struct gw_auth *a = s->auth;
    struct tn_auth_authorize az;
    char topic[16];
    int judged = a->authority[0] != '\0';

    if (!judged && !tn_event_has(TN_AUTH_AUTHORIZE_EVENT))
        return 0;
    snprintf(topic, sizeof(topic), "%d", (int)route);
    memset(&az, 0, sizeof(az));
    az.service = "gateway";
    az.authority = a->authority;
    az.secret = a->secret;
    az.secret_len = a->secret_len;
    az.identity = a->identity;
    az.remote_addr = gw_session_addr(s);
    az.action = action;
    az.topic = topic;
    az.channel = channel;
    if (tn_event_emit(TN_AUTH_AUTHORIZE_EVENT, &az) != 0 || (judged && !az.allowed))
        return -EACCES;
    return 0;
}

int gw_auth_packet(struct gw_session *s, const struct gw_packet *pk)
{
    struct gw_auth *a = s->auth;
    char msg[96];

    if (!a)
        return 1;
    if (pk->route == a->route)
        return login(s, pk);
    if (!a->authed) {
        s->gw->auth_st.refused++;
        snprintf(msg, sizeof(msg), "AUTH required before route %d", (int)pk->route);
        reply_error(s, pk->route, pk->seq, "E_AUTH_FIRST", msg);
        gw_session_close(s, GW_CLOSE_POLICY, "authentication required");
        return 0;
    }
    if (authorize(s, TN_AUTH_PUBLISH, pk->route, NULL) == 0)
        return 1;
    s->gw->auth_st.denied++;
    snprintf(msg, sizeof(msg), "AUTH failed for route %d", (int)pk->route);
    reply_error(s, pk->route, pk->seq, "E_UNAUTHORIZED", msg);
    if (a->close_on_deny)
        gw_session_close(s, GW_CLOSE_POLICY, "not authorized");
    return 0;
}

/* Joining a group is subscribing to (route of the packet being handled,
 * group). A name with a NUL byte would be judged by its prefix only, so it
 * is refused. */
int gw_auth_join(struct gw_session *s, const char *group, size_t len)
{
    char name[GW_NAME_MAX];

    if (!s->auth)
        return 0;
    if (!s->auth->authed || len >= sizeof(name) || memchr(group, '\0', len)) {
        s->gw->auth_st.denied++;
        return -EACCES;
    }
    memcpy(name, group, len);
    name[len] = '\0';
    if (authorize(s, TN_AUTH_SUBSCRIBE, s->route, name) != 0) {
        s->gw->auth_st.denied++;
        return -EACCES;
    }
    return 0;
}

const char *gw_auth_identity(const struct gw_session *s)
{
    return s->auth && s->auth->authed ? s->auth->identity : NULL;
}

/* ---- stats ------------------------------------------------------------------------------ */

void gw_auth_stats(const struct gw *gw, struct tn_stats_out *out)
{
    static const char *const acc[] = {"result", "accepted", NULL};
    static const char *const ref[] = {"result", "refused", NULL};
    static const char *const tmo[] = {"result", "timeout", NULL};
    const char *name = "ternd_gateway_logins_total", *help = "Gateway logins";

    tn_stats_emit(out, name, TN_STAT_COUNTER, help, acc, (double)gw->auth_st.accepted);
    tn_stats_emit(out, name, TN_STAT_COUNTER, help, ref, (double)gw->auth_st.refused);
    tn_stats_emit(out, name, TN_STAT_COUNTER, help, tmo, (double)gw->auth_st.timeouts);
    tn_stats_emit(out, "ternd_gateway_auth_denied_total", TN_STAT_COUNTER,
                  "Packets and group joins refused by auth.authorize", NULL,
                  (double)gw->auth_st.denied);
}
