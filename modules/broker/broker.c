/*
 * broker.c -- the broker module: its configuration, lifecycle (init loads
 * the persisted topics and channels, start opens the TCP and HTTP
 * listeners, stop writes every queued and in-flight message to disk), the
 * one publish path every producer goes through (Lua hook, events, store),
 * the metadata file, the service other modules call, and stats.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"

struct broker *broker_self;

int64_t broker_now(void)
{
    return tn_wall_ns() / 1000000;
}

/* ---- metadata (topics, channels, paused) ------------------------------------ */

static json_t *meta_build(struct broker *bk)
{
    json_t *topics = json_array();

    for (struct broker_topic *t = broker_topic_first(bk); t; t = broker_topic_next(bk, t)) {
        json_t *chans;
        if (t->ephemeral)
            continue;
        chans = json_array();
        for (struct broker_channel *ch = t->channels; ch; ch = ch->next)
            if (!ch->ephemeral)
                json_array_append_new(
                    chans, json_pack("{s:s, s:b}", "name", ch->name, "paused", ch->paused));
        json_array_append_new(topics, json_pack("{s:s, s:b, s:o}", "name", t->name, "paused",
                                                t->paused, "channels", chans));
    }
    /* id_ms: IDs stay unique across a restart even if the clock went back */
    return json_pack("{s:s, s:I, s:o}", "version", BROKER_VERSION, "id_ms", (json_int_t)bk->id_ms,
                     "topics", topics);
}

/* Replace meta.json atomically: write a temporary file, fsync, rename,
 * fsync the directory. */
static int meta_save(struct broker *bk)
{
    char path[4200], tmp[4200];
    json_t *j = meta_build(bk);
    char *s = j ? json_dumps(j, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
    int fd, rc = 0;
    size_t len;

    json_decref(j);
    if (!s)
        return TN_ENOMEM;
    snprintf(path, sizeof(path), "%s/meta.json", bk->dir);
    snprintf(tmp, sizeof(tmp), "%s/meta.json.tmp", bk->dir);
    len = strlen(s);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, s, len) != (ssize_t)len || fsync(fd) != 0)
        rc = -errno;
    if (fd >= 0 && close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc == 0 && (fd = open(bk->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
        fsync(fd);
        close(fd);
    }
    free(s);
    if (rc != 0)
        tn_log_error(BROKER_LOG, "cannot write %s: %s", path, tn_strerror(rc));
    bk->meta_dirty = 0;
    return rc;
}

static void meta_load_topic(struct broker *bk, json_t *jt, int64_t now)
{
    const char *name = json_string_value(json_object_get(jt, "name"));
    json_t *chans = json_object_get(jt, "channels"), *jc;
    struct broker_topic *t;
    size_t i;
    int err = 0;

    if (!name || !broker_name_valid(name, strlen(name)) ||
        !(t = broker_topic_get(bk, name, &err))) {
        tn_log_warn(BROKER_LOG, "meta.json: skipping topic %s", name ? name : "(no name)");
        return;
    }
    t->paused = json_is_true(json_object_get(jt, "paused"));
    json_array_foreach(chans, i, jc)
    {
        const char *cn = json_string_value(json_object_get(jc, "name"));
        struct broker_channel *ch;
        if (!cn || !(ch = broker_channel_get(t, cn, now, &err))) {
            tn_log_warn(BROKER_LOG, "meta.json: skipping a channel of %s", name);
            continue;
        }
        ch->paused = json_is_true(json_object_get(jc, "paused"));
    }
}

static int meta_load(struct broker *bk)
{
    char path[4200];
    json_error_t jerr;
    json_t *j, *topics, *jt;
    size_t i;
    int64_t now = broker_now();

    snprintf(path, sizeof(path), "%s/meta.json", bk->dir);
    bk->meta_loaded = 1;
    if (access(path, F_OK) != 0)
        return 0;
    j = json_load_file(path, 0, &jerr);
    if (!j) {
        tn_log_error(BROKER_LOG, "%s:%d: %s (topics start empty; the file is kept as .bad)", path,
                     jerr.line, jerr.text);
        char bad[4300];
        snprintf(bad, sizeof(bad), "%s.bad", path);
        rename(path, bad);
        return 0;
    }
    if (json_integer_value(json_object_get(j, "id_ms")) > 0)
        bk->id_ms = (uint64_t)json_integer_value(json_object_get(j, "id_ms")) + 1;
    topics = json_object_get(j, "topics");
    json_array_foreach(topics, i, jt) meta_load_topic(bk, jt, now);
    json_decref(j);
    bk->meta_dirty = 0;
    /* what waited in paused state or on disk starts flowing again */
    for (struct broker_topic *t = broker_topic_first(bk); t; t = broker_topic_next(bk, t))
        broker_topic_pump(t, now);
    tn_log_info(BROKER_LOG, "loaded %zu topics from %s", bk->topics.n, path);
    return 0;
}

void broker_meta_changed(struct broker *bk)
{
    bk->meta_dirty = 1;
}

/* ---- publishing ------------------------------------------------------------------ */

int broker_publish(struct broker *bk, const char *topic, const void *body, size_t len,
                   int64_t defer_ms, int hook)
{
    const struct broker_conf *bc = bk->conf;
    struct broker_topic *t;
    struct broker_msg *m;
    int64_t ns = tn_wall_ns(), now = ns / 1000000; /* one clock read per message */
    int err = 0;

    if (bk->stopping)
        return TN_ESTOPPED;
    if (defer_ms < 0 || defer_ms > bc->max_req_timeout || !topic ||
        !broker_name_valid(topic, strlen(topic)))
        return TN_EINVAL;
    if (len > bc->max_msg_size)
        return TN_ETOOBIG;
    if (hook && bk->hook) {
        const char *nt;
        const void *nb;
        size_t nl;
        if (broker_hook_publish(bk->hook, topic, body, len, &nt, &nb, &nl)) {
            bk->dropped_by_hook++;
            return 0;
        }
        if (!broker_name_valid(nt, strlen(nt))) {
            tn_log_warn(BROKER_LOG, "on_publish rerouted to an invalid topic name");
            return TN_EINVAL;
        }
        if (nl > bc->max_msg_size)
            return TN_ETOOBIG;
        topic = nt;
        body = nb;
        len = nl;
    }
    if (tn_event_has(TN_BROKER_PUBLISH_EVENT)) {
        struct tn_broker_publish ev = {topic, body, len, defer_ms};
        if (tn_event_emit(TN_BROKER_PUBLISH_EVENT, &ev) != 0) {
            bk->dropped_by_hook++;
            return 0;
        }
    }
    if (!(t = broker_topic_get(bk, topic, &err)))
        return err;
    if (!(m = broker_msg_new(broker_next_id(bk, now), ns, body, len)))
        return TN_ENOMEM;
    bk->published++;
    return broker_topic_put(t, m, defer_ms ? now + defer_ms : 0, now);
}

/* ---- the service ------------------------------------------------------------------- */

static int svc_publish(const char *topic, const void *body, size_t len, int64_t defer_ms)
{
    int rc;

    if (!broker_self)
        return TN_ESTOPPED;
    rc = broker_publish(broker_self, topic, body, len, defer_ms, 1);
    /* the caller may acknowledge at once: the records go out now */
    return rc == 0 ? broker_store_flush(broker_self) : rc;
}

static int64_t svc_topic_depth(const char *topic)
{
    struct broker_topic *t = broker_self ? broker_topic_find(broker_self, topic) : NULL;
    return t ? (int64_t)broker_topic_depth(t) : -1;
}

static const struct tn_broker_service broker_service = {sizeof(struct tn_broker_service),
                                                        svc_publish, svc_topic_depth};

/* ---- loop hooks ----------------------------------------------------------------------- */

static void scan_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct broker *bk = w->data;

    broker_scan(bk, broker_now());
    broker_store_sync_due(bk);
}

/* Once per loop iteration, before blocking: write what the disk queues
 * buffered, compress what deflate clients queued and persist metadata
 * changes. Priority EV_MAXPRI puts this before the connection layer's
 * prepare watcher, which sends the replies: a publisher's OK never leaves
 * before its messages are in the page cache (kill -9 safe). Publish paths
 * whose reply may go out sooner flush on their own (proto.c's on_read,
 * http.c, hook.c, svc_publish); this covers the rest (pumps, timers). */
static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct broker *bk = w->data;

    broker_store_flush(bk);
    broker_proto_flush(bk);
    if (bk->meta_dirty)
        meta_save(bk);
}

/* ---- lifecycle ------------------------------------------------------------------------- */

static int broker_create_conf(struct tn_mod *m, void *conf)
{
    broker_conf_default(conf);
    return 0;
}

static int broker_check_conf(struct tn_mod *m, struct tn_conf *cf, void *conf)
{
    return broker_conf_check(cf, conf);
}

static void broker_fini(struct tn_mod *m);

static int broker_init(struct tn_mod *m)
{
    struct broker_conf *bc = m->conf;
    struct broker *bk = calloc(1, sizeof(*bk));
    int rc;

    if (!bk)
        return TN_ENOMEM;
    bk->mod = m;
    bk->conf = bc;
    bk->send_msg = broker_zmtp_send_msg; /* NSQ clients go on to proto.c */
    bk->kick = broker_zmtp_kick;
    bk->start_time = broker_now() / 1000;
    if (bc->data_dir)
        snprintf(bk->dir, sizeof(bk->dir), "%s", bc->data_dir);
    else
        snprintf(bk->dir, sizeof(bk->dir), "%s/broker", tn_data_dir());
    /* the parent (daemon.data_dir) is created by the core */
    if (mkdir(bk->dir, 0755) != 0 && errno != EEXIST) {
        rc = -errno;
        tn_log_error(BROKER_LOG, "cannot create %s: %s", bk->dir, tn_strerror(rc));
        free(bk);
        return rc;
    }
    broker_store_init(bk);
    m->data = bk;
    broker_self = bk;
    /* at init, so the states of modules initialized after this one (those
     * that depend on the broker) have ternd.broker from the start */
    if ((rc = broker_hook_add_opener()) != 0) {
        broker_fini(m);
        return rc;
    }
    if (bc->lua.script && !(bk->hook = broker_hook_create(bk, &bc->lua))) {
        broker_fini(m); /* a failed init gets no fini from the core */
        return TN_ELUA;
    }
    return meta_load(bk);
}

/* The HTTP API on addr, over TLS when tls is given. */
static struct tn_http_server *http_start(struct broker *bk, const char *name,
                                         const struct tn_addr *addr, struct tn_tls_ctx *tls,
                                         int *err)
{
    struct tn_http_limits lim = {0};
    struct tn_http_server *s;

    /* room above max_body_size so the handlers, not the core, refuse
     * slightly larger bodies with nsqd's codes (BODY_TOO_BIG, ...) */
    lim.max_body_size = 2 * (size_t)bk->conf->max_body_size;
    if (!(s = tn_http_server_create(name, addr, &lim, err)))
        return NULL;
    if (tls)
        tn_http_server_set_tls(s, tls);
    if ((*err = broker_http_routes(bk, s)) != 0) {
        tn_http_server_free(s);
        return NULL;
    }
    tn_log_info(BROKER_LOG, "%s listening on %s", tls ? "HTTPS" : "HTTP", tn_http_server_addr(s));
    return s;
}

static int broker_start(struct tn_mod *m)
{
    struct broker *bk = m->data;
    const struct broker_conf *bc = bk->conf;
    struct tn_listen_opts lo = {0};
    char why[512];
    int err = 0;

    if (tn_tls_conf_enabled(&bc->tls) && !(bk->tls = tn_tls_ctx_new(&bc->tls, why, sizeof(why)))) {
        tn_log_error(BROKER_LOG, "tls: %s", why);
        return TN_EINVAL;
    }
    if (bc->tcp_listen.len) {
        lo.name = "broker.tcp";
        lo.max_conns = (size_t)bc->max_connections;
        lo.lim.in_max = (size_t)bc->max_body_size + 8192;
        /* publishers stream MPUBs: 64 KiB per read(2), not 16 */
        lo.lim.read_size = 64 * 1024;
        if (!(bk->listener = tn_listen(&bc->tcp_listen, &lo, broker_proto_accept, bk, &err)))
            return err;
        tn_log_info(BROKER_LOG, "TCP listening on %s", tn_listener_addr(bk->listener));
    }
    if ((err = broker_zmtp_start(bk)) != 0)
        return err;
    if (bc->http_listen.len &&
        !(bk->http = http_start(bk, "broker.http", &bc->http_listen, NULL, &err)))
        return err;
    if (bc->https_listen.len &&
        !(bk->https = http_start(bk, "broker.https", &bc->https_listen, bk->tls, &err)))
        return err;
    ev_timer_init(&bk->scan, scan_cb, 0., (double)bc->queue_scan_interval / 1000.0);
    bk->scan.data = bk;
    ev_timer_again(tn_loop(), &bk->scan);
    ev_prepare_init(&bk->prepare, prepare_cb);
    /* before the connection layer's own prepare watcher, which writes
     * what this one compresses in the same iteration */
    ev_set_priority(&bk->prepare, EV_MAXPRI);
    bk->prepare.data = bk;
    ev_prepare_start(tn_loop(), &bk->prepare);
    /* in-process first: the TCP path then skips an entry naming it */
    bk->announce = broker_lookupd_announce;
    if ((err = broker_local_start(bk)) != 0 ||
        (err = broker_lookupd_start(bk, broker_local_tcp(bk))) != 0)
        return err;
    if ((err = tn_service_register(TN_BROKER_SERVICE, (void *)&broker_service)) != 0)
        return err;
    /* last: a failed start is not stopped, so nothing may follow it */
    if ((err = broker_http_dashboard(bk, 1)) != 0)
        tn_service_unregister(TN_BROKER_SERVICE);
    return err;
}

/* SIGTERM: stop taking work, close the consumers (their in-flight
 * messages come back to the channels), then write every message held in
 * memory -- queued, deferred, in flight -- to the disk queues. */
static int broker_stop(struct tn_mod *m)
{
    struct broker *bk = m->data;
    uint64_t n;

    if (!bk || bk->stopping)
        return 0;
    bk->stopping = 1;
    tn_service_unregister(TN_BROKER_SERVICE);
    broker_http_dashboard(bk, 0);
    broker_hook_remove_opener();
    bk->announce = NULL;
    broker_lookupd_stop(bk);
    broker_local_stop(bk);
    if (bk->listener) {
        tn_listener_close(bk->listener);
        bk->listener = NULL;
    }
    if (bk->http)
        tn_http_server_close(bk->http);
    if (bk->https)
        tn_http_server_close(bk->https);
    ev_timer_stop(tn_loop(), &bk->scan);
    broker_proto_flush(bk);
    broker_proto_close_all(bk);
    broker_zmtp_stop(bk);
    n = broker_store_persist(bk, broker_now());
    if (bk->meta_loaded) /* never overwrite a file we did not read */
        meta_save(bk);
    ev_prepare_stop(tn_loop(), &bk->prepare);
    tn_log_info(BROKER_LOG, "stopped: %llu messages written to %s", (unsigned long long)n, bk->dir);
    return 0;
}

static void broker_fini(struct tn_mod *m)
{
    struct broker *bk = m->data;
    struct broker_client *cl;

    if (!bk)
        return;
    /* a start that failed half way gets no stop from the core */
    if (!bk->stopping)
        broker_stop(m);
    /* connections still open (the shutdown timeout passed) forget us */
    bk->kick = NULL;
    while ((cl = bk->clients)) {
        bk->clients = cl->next;
        if (cl->conn)
            cl->conn->data = NULL;
        ev_timer_stop(tn_loop(), &cl->hb);
        tn_buf_free(&cl->plain_in);
        tn_buf_free(&cl->plain_out);
        if (cl->deflate) {
            inflateEnd(&cl->zin);
            deflateEnd(&cl->zout);
        }
        free(cl);
    }
    broker_hook_remove_opener();
    broker_lookupd_free(bk);
    broker_store_free(bk);
    if (bk->http)
        tn_http_server_free(bk->http);
    if (bk->https)
        tn_http_server_free(bk->https);
    tn_tls_ctx_free(bk->tls);
    if (bk->hook)
        broker_hook_destroy(bk->hook);
    if (broker_self == bk)
        broker_self = NULL;
    free(bk);
    m->data = NULL;
}

static int addr_lists_equal(const struct tn_addr_list *a, const struct tn_addr_list *b)
{
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i].text, b->v[i].text) != 0)
            return 0;
    return 1;
}

/* Certificates are read again on reload (rotation without a restart): new
 * connections and upgrades get the new context, established ones keep
 * theirs. */
static void tls_reload(struct broker *bk, const struct broker_conf *nc)
{
    struct tn_tls_ctx *ctx = NULL;
    char why[512];

    if (tn_tls_conf_enabled(&nc->tls) && !(ctx = tn_tls_ctx_new(&nc->tls, why, sizeof(why)))) {
        tn_log_error(BROKER_LOG, "tls: %s (keeping the previous certificate)", why);
        return;
    }
    tn_tls_ctx_free(bk->tls);
    bk->tls = ctx;
    if (bk->https && ctx)
        tn_http_server_set_tls(bk->https, ctx);
}

static int broker_reload(struct tn_mod *m, void *new_conf)
{
    struct broker *bk = m->data;
    const struct broker_conf *old = bk->conf;
    struct broker_conf *nc = new_conf;
    int rc = 0;

    if (strcmp(old->tcp_listen.text, nc->tcp_listen.text) != 0 ||
        strcmp(old->http_listen.text, nc->http_listen.text) != 0 ||
        strcmp(old->https_listen.text, nc->https_listen.text) != 0)
        tn_log_warn(BROKER_LOG,
                    "tcp_listen/http_listen/https_listen changed: takes effect on restart");
    tls_reload(bk, nc);
    if ((old->data_dir == NULL) != (nc->data_dir == NULL) ||
        (old->data_dir && strcmp(old->data_dir, nc->data_dir) != 0))
        tn_log_warn(BROKER_LOG, "data_dir changed: takes effect on restart");
    if (!addr_lists_equal(&old->lookupd, &nc->lookupd))
        tn_log_warn(BROKER_LOG, "lookupd changed: takes effect on restart");
    if (broker_zmtp_conf_changed(&old->zmtp, &nc->zmtp))
        tn_log_warn(BROKER_LOG, "zmtp changed: takes effect on restart");
    bk->conf = nc;
    broker_store_policies(bk);
    if (nc->lua.script) {
        if (bk->hook)
            rc = broker_hook_reload(bk->hook, &nc->lua);
        else if (!(bk->hook = broker_hook_create(bk, &nc->lua)))
            rc = TN_ELUA;
    } else if (bk->hook) {
        broker_hook_destroy(bk->hook);
        bk->hook = NULL;
    }
    if (ev_is_active(&bk->scan)) {
        bk->scan.repeat = (double)nc->queue_scan_interval / 1000.0;
        ev_timer_again(tn_loop(), &bk->scan);
    }
    return rc;
}

/* ---- stats ------------------------------------------------------------------------------ */

static void broker_stats(struct tn_mod *m, struct tn_stats_out *out)
{
    struct broker *bk = m->data;

    if (!bk)
        return;
    tn_stats_emit(out, "ternd_broker_published_total", TN_STAT_COUNTER, "Messages published", NULL,
                  (double)bk->published);
    tn_stats_emit(out, "ternd_broker_hook_dropped_total", TN_STAT_COUNTER,
                  "Messages dropped by on_publish or a broker.publish subscriber", NULL,
                  (double)bk->dropped_by_hook);
    tn_stats_emit(out, "ternd_broker_dead_lettered_total", TN_STAT_COUNTER,
                  "Messages that used up max_attempts", NULL, (double)bk->dead_lettered);
    tn_stats_emit(out, "ternd_broker_clients", TN_STAT_GAUGE, "Open TCP clients", NULL,
                  (double)bk->nclients);
    tn_stats_emit(out, "ternd_broker_topics", TN_STAT_GAUGE, "Topics", NULL, (double)bk->topics.n);
    for (struct broker_topic *t = broker_topic_first(bk); t; t = broker_topic_next(bk, t)) {
        const char *tl[] = {"topic", t->name, NULL};
        tn_stats_emit(out, "ternd_broker_topic_depth", TN_STAT_GAUGE, "Messages waiting in a topic",
                      tl, (double)broker_topic_depth(t));
        tn_stats_emit(out, "ternd_broker_topic_messages_total", TN_STAT_COUNTER,
                      "Messages published to a topic", tl, (double)t->message_count);
        tn_stats_emit(out, "ternd_broker_topic_paused", TN_STAT_GAUGE, "1 while a topic is paused",
                      tl, (double)t->paused);
        for (struct broker_channel *ch = t->channels; ch; ch = ch->next) {
            const char *cl[] = {"topic", t->name, "channel", ch->name, NULL};
            tn_stats_emit(out, "ternd_broker_channel_depth", TN_STAT_GAUGE,
                          "Messages waiting in a channel", cl, (double)broker_channel_depth(ch));
            tn_stats_emit(out, "ternd_broker_channel_paused", TN_STAT_GAUGE,
                          "1 while a channel is paused", cl, (double)ch->paused);
            tn_stats_emit(out, "ternd_broker_channel_in_flight", TN_STAT_GAUGE,
                          "Messages in flight", cl, (double)ch->inflight.n);
            tn_stats_emit(out, "ternd_broker_channel_deferred", TN_STAT_GAUGE, "Deferred messages",
                          cl, (double)ch->deferred.n);
            tn_stats_emit(out, "ternd_broker_channel_requeued_total", TN_STAT_COUNTER,
                          "Messages requeued", cl, (double)ch->requeue_count);
            tn_stats_emit(out, "ternd_broker_channel_timeouts_total", TN_STAT_COUNTER,
                          "In-flight timeouts", cl, (double)ch->timeout_count);
        }
    }
    broker_zmtp_stats(bk, out);
    if (bk->hook)
        tn_stats_emit(out, "ternd_lua_errors_total", TN_STAT_COUNTER, "Lua errors",
                      (const char *[]){"module", "broker", NULL},
                      (double)broker_hook_errors(bk->hook));
}

TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD("broker", BROKER_VERSION),
    NULL,
    broker_conf_table,
    sizeof(struct broker_conf),
    broker_create_conf,
    broker_check_conf,
    broker_init,
    broker_start,
    broker_stop,
    broker_fini,
    broker_reload,
    broker_stats,
};
