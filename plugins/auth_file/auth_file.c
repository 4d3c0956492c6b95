/*
 * auth_file.c -- a drop-in plugin answering the auth events (service.h:
 * auth.check and auth.authorize) from a JSON secrets file, so that NSQ AUTH
 * on the broker (and a gateway login) needs no auth server: each secret
 * maps to an identity and nsqauthd-style rules (topic regex, channel
 * regexes, publish/subscribe). For the gateway (service "gateway") a topic
 * is a route number in decimal and a channel a group name: the rules need
 * no other reading. The file is read at start and on SIGHUP.
 * With no `auth_file.file` configured the plugin subscribes to nothing.
 */
#include <errno.h>
#include <stdarg.h>
#include <jansson.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <ternd/ternd.h>

#define AF_NAME "auth_file"
#define AF_SECRET_MAX 1024
#define AF_ERR_MAX 512

enum { AF_PUBLISH = 1, AF_SUBSCRIBE = 2 };

struct af_conf {
    char *file; /* NULL: the plugin stays idle */
};

/* One authorization: the topic regex, channel regexes and what they allow. */
struct af_rule {
    regex_t topic;
    regex_t *channels;
    size_t nchannels;
    int perms; /* AF_PUBLISH | AF_SUBSCRIBE */
};

struct af_secret {
    char *secret;
    size_t len;
    char *identity;
    char *identity_url;
    struct af_rule *rules;
    size_t nrules;
};

/* What one read of the file produced; replaced whole on reload. */
struct af_table {
    struct af_secret *v;
    size_t n;
};

struct af_state {
    struct af_table *table;
    int subscribed;
    uint64_t accepted, unknown, allowed, denied, reloads, reload_errors;
};

/* ---- the secrets table ---------------------------------------------------------- */

static void rule_free(struct af_rule *r)
{
    regfree(&r->topic);
    for (size_t i = 0; i < r->nchannels; i++)
        regfree(&r->channels[i]);
    free(r->channels);
}

static void table_free(struct af_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++) {
        struct af_secret *s = &t->v[i];
        /* rules are compiled one by one: nrules counts the complete ones */
        for (size_t j = 0; j < s->nrules; j++)
            rule_free(&s->rules[j]);
        free(s->rules);
        free(s->secret);
        free(s->identity);
        free(s->identity_url);
    }
    free(t->v);
    free(t);
}

/* Report into err (the first error wins) and return TN_EINVAL. */
static int fail(char *err, const char *fmt, ...) TN_PRINTF(2, 3);
static int fail(char *err, const char *fmt, ...)
{
    va_list ap;

    if (err[0])
        return TN_EINVAL;
    va_start(ap, fmt);
    vsnprintf(err, AF_ERR_MAX, fmt, ap);
    va_end(ap);
    return TN_EINVAL;
}

static int compile(regex_t *re, json_t *j, const char *where, char *err)
{
    char msg[128];
    int rc;

    if (!json_is_string(j))
        return fail(err, "%s: must be a string (a regular expression)", where);
    rc = regcomp(re, json_string_value(j), REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        regerror(rc, re, msg, sizeof(msg));
        return fail(err, "%s: bad regular expression \"%s\": %s", where, json_string_value(j), msg);
    }
    return 0;
}

static int parse_perms(json_t *j, const char *where, int *out, char *err)
{
    size_t i;
    json_t *p;

    if (!json_is_array(j))
        return fail(err, "%s.permissions: must be a list of \"publish\" / \"subscribe\"", where);
    *out = 0;
    json_array_foreach(j, i, p)
    {
        const char *s = json_string_value(p);
        if (s && strcmp(s, "publish") == 0)
            *out |= AF_PUBLISH;
        else if (s && strcmp(s, "subscribe") == 0)
            *out |= AF_SUBSCRIBE;
        else
            return fail(err, "%s.permissions[%zu]: must be \"publish\" or \"subscribe\"", where, i);
    }
    return 0;
}

/* One element of "authorizations": {"topic", "channels", "permissions"}. */
static int parse_rule(json_t *j, const char *where, struct af_rule *r, char *err)
{
    char at[384]; /* where (< 256) and a key */
    json_t *chans = json_object_get(j, "channels"), *c;
    size_t i;

    if (!json_is_object(j))
        return fail(err, "%s: must be an object", where);
    snprintf(at, sizeof(at), "%s.topic", where);
    if (compile(&r->topic, json_object_get(j, "topic"), at, err) != 0)
        return TN_EINVAL;
    if (parse_perms(json_object_get(j, "permissions"), where, &r->perms, err) != 0) {
        regfree(&r->topic);
        return TN_EINVAL;
    }
    if (chans && !json_is_array(chans)) {
        regfree(&r->topic);
        return fail(err, "%s.channels: must be a list of regular expressions", where);
    }
    r->channels = calloc(json_array_size(chans) + 1, sizeof(*r->channels));
    if (!r->channels) {
        regfree(&r->topic);
        return fail(err, "out of memory");
    }
    json_array_foreach(chans, i, c)
    {
        snprintf(at, sizeof(at), "%s.channels[%zu]", where, i);
        if (compile(&r->channels[i], c, at, err) != 0) {
            rule_free(r);
            return TN_EINVAL;
        }
        r->nchannels++;
    }
    return 0;
}

static char *dup_field(json_t *o, const char *key, const char *where, size_t max, char *err)
{
    json_t *j = json_object_get(o, key);
    char *s;

    if (!j)
        j = json_string("");
    else
        json_incref(j);
    /* (no NUL inside: json_load_file refuses \u0000 without JSON_ALLOW_NUL) */
    if (!json_is_string(j) || json_string_length(j) > max) {
        fail(err, "%s.%s: must be a string of at most %zu bytes", where, key, max);
        json_decref(j);
        return NULL;
    }
    s = strdup(json_string_value(j));
    json_decref(j);
    if (!s)
        fail(err, "out of memory");
    return s;
}

static int parse_secret(json_t *j, const char *where, struct af_secret *s, char *err)
{
    json_t *rules = json_object_get(j, "authorizations"), *r;
    size_t i;
    char at[256];

    if (!json_is_object(j))
        return fail(err, "%s: must be an object", where);
    if (!json_is_string(json_object_get(j, "secret")) ||
        json_string_length(json_object_get(j, "secret")) == 0)
        return fail(err, "%s.secret: must be a non-empty string", where);
    if (!(s->secret = dup_field(j, "secret", where, AF_SECRET_MAX, err)) ||
        !(s->identity = dup_field(j, "identity", where, TN_AUTH_NAME_MAX - 1, err)) ||
        !(s->identity_url = dup_field(j, "identity_url", where, TN_AUTH_NAME_MAX - 1, err)))
        return TN_EINVAL;
    s->len = strlen(s->secret);
    if (!json_is_array(rules))
        return fail(err, "%s.authorizations: must be a list", where);
    if (!(s->rules = calloc(json_array_size(rules) + 1, sizeof(*s->rules))))
        return fail(err, "out of memory");
    json_array_foreach(rules, i, r)
    {
        snprintf(at, sizeof(at), "%s.authorizations[%zu]", where, i);
        if (parse_rule(r, at, &s->rules[i], err) != 0)
            return TN_EINVAL;
        s->nrules++;
    }
    return 0;
}

/* Read and compile the secrets file. Returns the table or NULL with the
 * reason ("file:line:col: ..." or "file: secrets[2].topic: ...") in err. */
static struct af_table *table_load(const char *path, char *err)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je), *list, *j;
    struct af_table *t = NULL;
    char where[64], msg[AF_ERR_MAX];
    size_t i;

    err[0] = '\0';
    if (!root) {
        fail(err, "%s:%d:%d: %s", path, je.line, je.column, je.text);
        return NULL;
    }
    list = json_object_get(root, "secrets");
    if (!json_is_array(list)) {
        fail(err, "%s: the top level must be {\"secrets\": [...]}", path);
        goto fail;
    }
    if (!(t = calloc(1, sizeof(*t))) ||
        !(t->v = calloc(json_array_size(list) + 1, sizeof(*t->v)))) {
        fail(err, "out of memory");
        goto fail;
    }
    json_array_foreach(list, i, j)
    {
        snprintf(where, sizeof(where), "secrets[%zu]", i);
        msg[0] = '\0';
        t->n++;
        if (parse_secret(j, where, &t->v[i], msg) != 0) {
            fail(err, "%s: %s", path, msg);
            goto fail;
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(t->v[k].secret, t->v[i].secret) == 0) {
                fail(err, "%s: %s.secret: the same secret as secrets[%zu]", path, where, k);
                goto fail;
            }
    }
    json_decref(root);
    return t;
fail:
    json_decref(root);
    table_free(t);
    return NULL;
}

/* A secrets file others can read is worth a warning, not a refusal. */
static void warn_mode(const char *path)
{
    struct stat st;

    if (stat(path, &st) == 0 && (st.st_mode & 077))
        tn_log_warn(AF_NAME, "%s is readable by group or others (mode %03o): chmod 600 it", path,
                    (unsigned)(st.st_mode & 0777));
}

/* Equal-length secrets compare in constant time: the time taken tells only
 * the length. */
static int secret_eq(const struct af_secret *s, const char *p, size_t len)
{
    unsigned char d = 0;

    if (s->len != len)
        return 0;
    for (size_t i = 0; i < len; i++)
        d |= (unsigned char)(s->secret[i] ^ p[i]);
    return d == 0;
}

static const struct af_secret *table_find(const struct af_table *t, const char *p, size_t len)
{
    for (size_t i = 0; t && i < t->n; i++)
        if (secret_eq(&t->v[i], p, len))
            return &t->v[i];
    return NULL;
}

static int matches(const regex_t *re, const char *s)
{
    return regexec(re, s, 0, NULL, 0) == 0;
}

/* nsqauthd's rule: the permission, the topic, and for a subscribe one of
 * the channels. */
static int rule_allows(const struct af_rule *r, int action, const char *topic, const char *channel)
{
    int need = action == TN_AUTH_SUBSCRIBE ? AF_SUBSCRIBE : AF_PUBLISH;

    if (!(r->perms & need) || !matches(&r->topic, topic))
        return 0;
    if (need == AF_PUBLISH)
        return 1;
    for (size_t i = 0; i < r->nchannels; i++)
        if (matches(&r->channels[i], channel ? channel : ""))
            return 1;
    return 0;
}

/* ---- the events ------------------------------------------------------------------ */

static int on_check(const char *event, void *arg, void *ud)
{
    struct af_state *st = ud;
    struct tn_auth_check *a = arg;
    const struct af_secret *s;

    if (a->ok)
        return 0; /* another plugin already accepted it */
    if (!(s = table_find(st->table, a->secret, a->secret_len))) {
        st->unknown++;
        return 0; /* perhaps another plugin knows it */
    }
    a->ok = 1;
    snprintf(a->identity, sizeof(a->identity), "%s", s->identity);
    snprintf(a->identity_url, sizeof(a->identity_url), "%s", s->identity_url);
    snprintf(a->authority, sizeof(a->authority), "%s", AF_NAME);
    a->permission_count = (int64_t)s->nrules;
    st->accepted++;
    return 0;
}

static int on_authorize(const char *event, void *arg, void *ud)
{
    struct af_state *st = ud;
    struct tn_auth_authorize *az = arg;
    const struct af_secret *s;

    if (!az->authority || strcmp(az->authority, AF_NAME) != 0)
        return 0; /* another plugin vouched for this client */
    /* looked up again: a reload may have changed or removed the secret */
    if ((s = table_find(st->table, az->secret, az->secret_len)))
        for (size_t i = 0; i < s->nrules; i++)
            if (rule_allows(&s->rules[i], az->action, az->topic, az->channel)) {
                st->allowed++;
                az->allowed = 1;
                return 0;
            }
    st->denied++;
    tn_log_info(AF_NAME, "%s %s (%s): %s on \"%s\" \"%s\" denied", az->service ? az->service : "",
                az->identity ? az->identity : "", az->remote_addr ? az->remote_addr : "",
                az->action == TN_AUTH_SUBSCRIBE ? "subscribe" : "publish", az->topic,
                az->channel ? az->channel : "");
    return -EACCES;
}

static void subscribe(struct af_state *st, int on)
{
    if (on == st->subscribed)
        return;
    if (on) {
        if (tn_event_on(TN_AUTH_CHECK_EVENT, on_check, st) != 0 ||
            tn_event_on(TN_AUTH_AUTHORIZE_EVENT, on_authorize, st) != 0) {
            tn_log_error(AF_NAME, "cannot subscribe to the auth events: out of memory");
            tn_event_off(TN_AUTH_CHECK_EVENT, on_check, st);
            return;
        }
    } else {
        tn_event_off(TN_AUTH_CHECK_EVENT, on_check, st);
        tn_event_off(TN_AUTH_AUTHORIZE_EVENT, on_authorize, st);
    }
    st->subscribed = on;
}

/* ---- the lifecycle --------------------------------------------------------------- */

/* `ternd -t` and a SIGHUP both check the file here, so a broken one is
 * reported with the config and rejects the reload. */
static int af_check_conf(struct tn_mod *m, struct tn_conf *cf, void *conf)
{
    const struct af_conf *c = conf;
    char err[AF_ERR_MAX];
    struct af_table *t;

    if (!c->file)
        return 0;
    if (!(t = table_load(c->file, err)))
        return tn_conf_error_key(cf, "file", "%s", err);
    table_free(t);
    return 0;
}

static int af_init(struct tn_mod *m)
{
    m->data = calloc(1, sizeof(struct af_state));
    return m->data ? 0 : TN_ENOMEM;
}

/* Load the file named by conf (or nothing) and swap it in. */
static int load(struct af_state *st, const struct af_conf *c)
{
    char err[AF_ERR_MAX];
    struct af_table *t = NULL;

    if (c->file) {
        if (!(t = table_load(c->file, err))) {
            tn_log_error(AF_NAME, "%s", err);
            return TN_EINVAL;
        }
        warn_mode(c->file);
        tn_log_info(AF_NAME, "%zu secrets from %s", t->n, c->file);
    }
    table_free(st->table);
    st->table = t;
    subscribe(st, t != NULL);
    return 0;
}

static int af_start(struct tn_mod *m)
{
    return load(m->data, m->conf);
}

static int af_reload(struct tn_mod *m, void *new_conf)
{
    struct af_state *st = m->data;
    int rc = load(st, new_conf);

    st->reloads++;
    if (rc != 0)
        st->reload_errors++; /* the previous secrets stay in force */
    return rc;
}

static int af_stop(struct tn_mod *m)
{
    subscribe(m->data, 0);
    return 0;
}

static void af_fini(struct tn_mod *m)
{
    struct af_state *st = m->data;

    if (st)
        table_free(st->table);
    free(st);
    m->data = NULL;
}

static void af_stats(struct tn_mod *m, struct tn_stats_out *o)
{
    const struct af_state *st = m->data;
    static const char *const acc[] = {"result", "accepted", NULL};
    static const char *const unk[] = {"result", "unknown", NULL};
    static const char *const alw[] = {"result", "allowed", NULL};
    static const char *const den[] = {"result", "denied", NULL};
    const char *ck = "ternd_auth_file_checks_total", *az = "ternd_auth_file_authorizations_total";

    tn_stats_emit(o, "ternd_auth_file_secrets", TN_STAT_GAUGE, "Secrets loaded from the file", NULL,
                  st->table ? (double)st->table->n : 0);
    tn_stats_emit(o, ck, TN_STAT_COUNTER, "Secrets checked", acc, (double)st->accepted);
    tn_stats_emit(o, ck, TN_STAT_COUNTER, "Secrets checked", unk, (double)st->unknown);
    tn_stats_emit(o, az, TN_STAT_COUNTER, "Operations judged", alw, (double)st->allowed);
    tn_stats_emit(o, az, TN_STAT_COUNTER, "Operations judged", den, (double)st->denied);
    tn_stats_emit(o, "ternd_auth_file_reload_errors_total", TN_STAT_COUNTER,
                  "Reloads that kept the old secrets", NULL, (double)st->reload_errors);
}

static const struct tn_conf_cmd af_conf_table[] = {
    {"file", TN_CONF_PATH, offsetof(struct af_conf, file), NULL, NULL, NULL}, TN_CONF_END};

TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD(AF_NAME, TN_VERSION_STRING),
    NULL,
    af_conf_table,
    sizeof(struct af_conf),
    NULL,
    af_check_conf,
    af_init,
    af_start,
    af_stop,
    af_fini,
    af_reload,
    af_stats,
};
