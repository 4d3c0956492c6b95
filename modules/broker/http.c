/*
 * http.c -- nsqd's HTTP API on the core's HTTP server: /ping, /info, /pub
 * (with defer), /mpub (newline-separated or binary), /stats (JSON or text,
 * in nsqd's shape), /topic/... and /channel/... administration and read-only
 * /config/<key>. Status codes and the {"message":"CODE"} error bodies are
 * nsqd's; every reply carries X-NSQ-Content-Type like nsqd's.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"

#define JSON_TYPE "application/json; charset=utf-8"
#define TEXT_TYPE "text/plain; charset=utf-8"

static void nsq_header(struct tn_http_req *r)
{
    tn_http_add_header(r, "X-NSQ-Content-Type", "nsq; version=1.0");
}

static int reply_err(struct tn_http_req *r, int status, const char *code)
{
    char body[128];

    snprintf(body, sizeof(body), "{\"message\":\"%s\"}", code);
    nsq_header(r);
    tn_http_reply_str(r, status, JSON_TYPE, body);
    return TN_HTTP_DONE;
}

static int reply_text(struct tn_http_req *r, const char *text)
{
    nsq_header(r);
    tn_http_reply_str(r, 200, TEXT_TYPE, text);
    return TN_HTTP_DONE;
}

static int reply_json(struct tn_http_req *r, json_t *j)
{
    /* ENCODE_ANY: /config/<key> answers bare values */
    char *s = j ? json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

    json_decref(j);
    if (!s)
        return reply_err(r, 500, "INTERNAL_ERROR");
    nsq_header(r);
    tn_http_reply_str(r, 200, JSON_TYPE, s);
    free(s);
    return TN_HTTP_DONE;
}

/* Publishing replies: a store error is nsqd's 503 EXITING while stopping,
 * else 500. The disk queues' buffered records are written before the OK
 * is queued: a connection with output pending may send it before the
 * loop's prepare watchers run. */
static int reply_pub(struct tn_http_req *r, struct broker *bk, int rc)
{
    if (rc == 0)
        rc = broker_store_flush(bk);
    if (rc == 0)
        return reply_text(r, "OK");
    if (rc == TN_ETOOBIG)
        return reply_err(r, 413, "MSG_TOO_BIG");
    if (rc == TN_ESTOPPED)
        return reply_err(r, 503, "EXITING");
    return reply_err(r, 500, "INTERNAL_ERROR");
}

/* ?topic= / ?channel= checked as nsqd's getTopicChanFromQuery: 0, or -1
 * after replying MISSING_ARG_<KEY> or INVALID_<KEY>. */
static int name_arg(struct tn_http_req *r, const char *key, char *out)
{
    long n = tn_http_arg(r, key, out, BROKER_NAME_MAX + 2);
    char code[32];

    if (n < 0 || !broker_name_valid(out, (size_t)n) || (size_t)n != strlen(out)) {
        snprintf(code, sizeof(code), "%s_%s", n < 0 ? "MISSING_ARG" : "INVALID",
                 strcmp(key, "topic") == 0 ? "TOPIC" : "CHANNEL");
        reply_err(r, 400, code);
        return -1;
    }
    return 0;
}

static int topic_arg(struct tn_http_req *r, char *topic)
{
    return name_arg(r, "topic", topic);
}

static int channel_arg(struct tn_http_req *r, char *channel)
{
    return name_arg(r, "channel", channel);
}

static int h_ping(struct tn_http_req *r, void *ud)
{
    struct broker *bk = ud;

    if (bk->stopping)
        return reply_err(r, 500, "NOK - exiting");
    return reply_text(r, "OK");
}

static int h_info(struct tn_http_req *r, void *ud)
{
    struct broker *bk = ud;
    const struct broker_conf *bc = bk->conf;
    char host[256] = "";

    gethostname(host, sizeof(host) - 1);
    return reply_json(
        r,
        json_pack("{s:s, s:s, s:s, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:s, s:s}", "version",
                  BROKER_VERSION, "broadcast_address", broker_broadcast_address(bk), "hostname",
                  host, "http_port", broker_http_port(bk), "tcp_port", broker_tcp_port(bk),
                  "start_time", (json_int_t)bk->start_time, "max_heartbeat_interval",
                  (json_int_t)bc->max_heartbeat_interval * 1000000, "max_output_buffer_size",
                  (json_int_t)bc->max_output_buffer_size, "max_output_buffer_timeout",
                  (json_int_t)bc->max_output_buffer_timeout * 1000000, "max_deflate_level",
                  (json_int_t)bc->max_deflate_level, "topology_zone", "", "topology_region", ""));
}

static int h_pub(struct tn_http_req *r, void *ud)
{
    struct broker *bk = ud;
    char topic[BROKER_NAME_MAX + 2], arg[32];
    int64_t defer = 0;

    if (r->body_len > bk->conf->max_msg_size)
        return reply_err(r, 413, "MSG_TOO_BIG");
    if (r->body_len == 0)
        return reply_err(r, 400, "MSG_EMPTY");
    if (topic_arg(r, topic) != 0)
        return TN_HTTP_DONE;
    if (tn_http_arg(r, "defer", arg, sizeof(arg)) >= 0) {
        char *end;
        long long v = strtoll(arg, &end, 10);
        if (!*arg || *end || v < 0 || v > bk->conf->max_req_timeout)
            return reply_err(r, 400, "INVALID_DEFER");
        defer = v;
    }
    return reply_pub(r, bk, broker_publish(bk, topic, r->body, r->body_len, defer, 1));
}

static int binary_arg(struct tn_http_req *r)
{
    char v[16];

    if (tn_http_arg(r, "binary", v, sizeof(v)) < 0)
        return 0;
    return strcmp(v, "false") != 0 && strcmp(v, "0") != 0;
}

/* Binary MPUB bodies: [4B count]([4B size][data])*, checked whole before
 * anything is published. The error codes are nsqd's (413 + code). */
static int mpub_binary(struct tn_http_req *r, struct broker *bk, const char *topic)
{
    const unsigned char *p = (const unsigned char *)r->body;
    size_t len = r->body_len, off = 4;
    int64_t max_count = ((int64_t)bk->conf->max_body_size - 4) / 5;
    uint32_t n;
    int rc = 0;

    if (len < 4)
        return reply_err(r, 413, "BAD_BODY");
    n = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    if (n == 0 || n > INT32_MAX || (int64_t)n > max_count)
        return reply_err(r, 413, "BAD_BODY");
    for (uint32_t i = 0; i < n; i++) {
        uint32_t size;
        if (len - off < 4)
            return reply_err(r, 413, "BAD_MESSAGE");
        size = (uint32_t)p[off] << 24 | (uint32_t)p[off + 1] << 16 | (uint32_t)p[off + 2] << 8 |
               p[off + 3];
        off += 4;
        if (size == 0 || size > INT32_MAX)
            return reply_err(r, 413, "BAD_MESSAGE");
        if (size > bk->conf->max_msg_size)
            return reply_err(r, 413, "BAD_MESSAGE");
        if (len - off < size)
            return reply_err(r, 413, "BAD_MESSAGE");
        off += size;
    }
    off = 4;
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        uint32_t size = (uint32_t)p[off] << 24 | (uint32_t)p[off + 1] << 16 |
                        (uint32_t)p[off + 2] << 8 | p[off + 3];
        rc = broker_publish(bk, topic, p + off + 4, size, 0, 1);
        off += 4 + size;
    }
    return reply_pub(r, bk, rc);
}

/* Newline-separated MPUB: empty lines are skipped, as nsqd does. */
static int mpub_lines(struct tn_http_req *r, struct broker *bk, const char *topic)
{
    const char *p = r->body, *end = r->body + r->body_len;
    int rc = 0;

    for (const char *q = p; q < end; q = p) {
        const char *nl = memchr(q, '\n', (size_t)(end - q));
        size_t n = nl ? (size_t)(nl - q) : (size_t)(end - q);
        if (n > bk->conf->max_msg_size)
            return reply_err(r, 413, "MSG_TOO_BIG");
        p = nl ? nl + 1 : end;
    }
    for (p = r->body; p < end && rc == 0;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n)
            rc = broker_publish(bk, topic, p, n, 0, 1);
        p = nl ? nl + 1 : end;
    }
    return reply_pub(r, bk, rc);
}

static int h_mpub(struct tn_http_req *r, void *ud)
{
    struct broker *bk = ud;
    char topic[BROKER_NAME_MAX + 2];

    if (r->body_len > bk->conf->max_body_size)
        return reply_err(r, 413, "BODY_TOO_BIG");
    if (topic_arg(r, topic) != 0)
        return TN_HTTP_DONE;
    return binary_arg(r) ? mpub_binary(r, bk, topic) : mpub_lines(r, bk, topic);
}

/* ---- /topic/... and /channel/... ------------------------------------------------------ */

enum { OP_CREATE, OP_DELETE, OP_EMPTY, OP_PAUSE, OP_UNPAUSE };

static int op_of(const char *path)
{
    const char *op = strrchr(path, '/') + 1;

    if (strcmp(op, "create") == 0)
        return OP_CREATE;
    if (strcmp(op, "delete") == 0)
        return OP_DELETE;
    if (strcmp(op, "empty") == 0)
        return OP_EMPTY;
    if (strcmp(op, "pause") == 0)
        return OP_PAUSE;
    return OP_UNPAUSE;
}

static void apply_op(int op, struct broker_topic *t, struct broker_channel *ch)
{
    if (ch && op == OP_DELETE)
        broker_channel_delete(ch);
    else if (ch && op == OP_EMPTY)
        broker_channel_empty(ch);
    else if (ch)
        broker_channel_pause(ch, op == OP_PAUSE, broker_now());
    else if (op == OP_DELETE)
        broker_topic_delete(t);
    else if (op == OP_EMPTY)
        broker_topic_empty(t);
    else
        broker_topic_pause(t, op == OP_PAUSE, broker_now());
}

/* /topic/OP?topic= and /channel/OP?topic=&channel=, as nsqd. */
static int admin(struct tn_http_req *r, struct broker *bk, int with_channel)
{
    char topic[BROKER_NAME_MAX + 2], channel[BROKER_NAME_MAX + 2];
    struct broker_topic *t;
    struct broker_channel *ch = NULL;
    int op = op_of(r->path), err = 0;

    if (topic_arg(r, topic) != 0 || (with_channel && channel_arg(r, channel) != 0))
        return TN_HTTP_DONE;
    if (op == OP_CREATE) {
        if (bk->stopping)
            return reply_err(r, 503, "EXITING");
        if (!(t = broker_topic_get(bk, topic, &err)) ||
            (with_channel && !broker_channel_get(t, channel, broker_now(), &err)))
            return reply_err(r, 500, "INTERNAL_ERROR");
        return reply_text(r, "");
    }
    if (!(t = broker_topic_find(bk, topic)))
        return reply_err(r, 404, "TOPIC_NOT_FOUND");
    if (with_channel && !(ch = broker_channel_find(t, channel)))
        return reply_err(r, 404, "CHANNEL_NOT_FOUND");
    apply_op(op, t, ch);
    return reply_text(r, "");
}

static int h_topic(struct tn_http_req *r, void *ud)
{
    return admin(r, ud, 0);
}

static int h_channel(struct tn_http_req *r, void *ud)
{
    return admin(r, ud, 1);
}

/* ---- /stats ------------------------------------------------------------------------- */

static const char *client_version(void)
{
    return "V2";
}

static json_t *client_json(const struct broker_client *cl)
{
    json_t *pubs = json_array();
    const char *tls_version = "", *tls_cipher = "";
    int tls = cl->conn && tn_conn_tls(cl->conn, &tls_version, &tls_cipher);
    json_t *o;

    if (cl->pub_count && cl->ch == NULL)
        json_array_append_new(
            pubs, json_pack("{s:s, s:I}", "topic", "", "count", (json_int_t)cl->pub_count));
    o = json_pack("{s:s, s:s, s:s, s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:i, s:b, s:b, s:s, "
                  "s:b, s:s, s:s, s:o, s:b, s:s, s:s, s:s, s:b}",
                  "client_id", cl->client_id, "hostname", cl->hostname, "version", client_version(),
                  "remote_address", cl->conn ? cl->conn->peer : "", "state",
                  cl->state == BROKER_CLIENT_INIT         ? 1
                  : cl->state == BROKER_CLIENT_SUBSCRIBED ? 3
                                                          : 4,
                  "ready_count", (json_int_t)cl->rdy, "in_flight_count", (json_int_t)cl->inflight,
                  "message_count", (json_int_t)cl->message_count, "finish_count",
                  (json_int_t)cl->finish_count, "requeue_count", (json_int_t)cl->requeue_count,
                  "connect_ts", (json_int_t)cl->connect_ts, "sample_rate", cl->sample_rate,
                  "deflate", cl->deflate, "snappy", 0, "user_agent", cl->user_agent, "authed",
                  cl->authed, "auth_identity", cl->auth_identity, "auth_identity_url", "",
                  "pub_counts", pubs, "tls", tls, "tls_cipher_suite", tls_cipher, "tls_version",
                  tls_version, "tls_negotiated_protocol", "", "tls_negotiated_protocol_is_mutual",
                  0);
    return o;
}

static json_t *latency_json(void)
{
    return json_pack("{s:i, s:n}", "count", 0, "percentiles");
}

static json_t *channel_json(const struct broker_channel *ch, int clients)
{
    json_t *cl = json_array();

    for (size_t i = 0; clients && i < ch->nclients; i++)
        json_array_append_new(cl, client_json(ch->clients[i]));
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:i, s:o, s:b, s:o}", "channel_name",
                     ch->name, "depth", (json_int_t)broker_channel_depth(ch), "backend_depth",
                     (json_int_t)(ch->dq ? tn_diskq_depth(ch->dq) : 0), "in_flight_count",
                     (json_int_t)ch->inflight.n, "deferred_count", (json_int_t)ch->deferred.n,
                     "message_count", (json_int_t)ch->message_count, "requeue_count",
                     (json_int_t)ch->requeue_count, "timeout_count", (json_int_t)ch->timeout_count,
                     "client_count", (int)ch->nclients, "clients", cl, "paused", ch->paused,
                     "e2e_processing_latency", latency_json());
}

static json_t *topic_json(const struct broker_topic *t, const char *channel, int clients)
{
    json_t *chans = json_array();

    for (const struct broker_channel *ch = t->channels; ch; ch = ch->next)
        if (!channel || strcmp(channel, ch->name) == 0)
            json_array_append_new(chans, channel_json(ch, clients));
    return json_pack("{s:s, s:o, s:I, s:I, s:I, s:I, s:b, s:o}", "topic_name", t->name, "channels",
                     chans, "depth", (json_int_t)broker_topic_depth(t), "backend_depth",
                     (json_int_t)(t->dq ? tn_diskq_depth(t->dq) : 0), "message_count",
                     (json_int_t)t->message_count, "message_bytes", (json_int_t)t->message_bytes,
                     "paused", t->paused, "e2e_processing_latency", latency_json());
}

static int bool_arg(struct tn_http_req *r, const char *name, int def)
{
    char v[16];

    if (tn_http_arg(r, name, v, sizeof(v)) < 0)
        return def;
    return strcmp(v, "false") != 0 && strcmp(v, "0") != 0;
}

static json_t *stats_json(struct broker *bk, const char *topic, const char *channel, int clients,
                          int mem)
{
    json_t *topics = json_array(), *producers = json_array(), *o;

    for (struct broker_topic *t = broker_topic_first(bk); t; t = broker_topic_next(bk, t))
        if (!topic || strcmp(topic, t->name) == 0)
            json_array_append_new(topics, topic_json(t, channel, clients));
    for (struct broker_client *cl = bk->clients; clients && cl; cl = cl->next)
        if (!cl->ch && cl->pub_count)
            json_array_append_new(producers, client_json(cl));
    o = json_pack("{s:s, s:s, s:I, s:o}", "version", BROKER_VERSION, "health",
                  bk->stopping ? "NOK - exiting" : "OK", "start_time", (json_int_t)bk->start_time,
                  "topics", topics);
    if (mem)
        json_object_set_new(o, "memory",
                            json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i}",
                                      "heap_objects", 0, "heap_idle_bytes", 0, "heap_in_use_bytes",
                                      0, "heap_released_bytes", 0, "gc_pause_usec_100", 0,
                                      "gc_pause_usec_99", 0, "gc_pause_usec_95", 0, "next_gc_bytes",
                                      0, "gc_total_runs", 0));
    json_object_set_new(o, "producers", producers);
    return o;
}

static void stats_text(struct tn_buf *b, struct broker *bk, const char *topic, const char *channel,
                       int clients)
{
    int64_t up = broker_now() / 1000 - bk->start_time;

    tn_buf_printf(b, "ternd broker %s\nstart_time %lld\nuptime %llds\n\nHealth: %s\n",
                  BROKER_VERSION, (long long)bk->start_time, (long long)up,
                  bk->stopping ? "NOK - exiting" : "OK");
    if (bk->topics.n == 0) {
        tn_buf_printf(b, "\nTopics: None\n");
        return;
    }
    tn_buf_printf(b, "\nTopics:");
    for (struct broker_topic *t = broker_topic_first(bk); t; t = broker_topic_next(bk, t)) {
        if (topic && strcmp(topic, t->name) != 0)
            continue;
        tn_buf_printf(b, "\n   [%-15s] depth: %-5llu be-depth: %-5llu msgs: %-8llu e2e%%: %s\n",
                      t->name, (unsigned long long)broker_topic_depth(t),
                      (unsigned long long)(t->dq ? tn_diskq_depth(t->dq) : 0),
                      (unsigned long long)t->message_count, t->paused ? "(paused)" : "");
        for (struct broker_channel *ch = t->channels; ch; ch = ch->next) {
            if (channel && strcmp(channel, ch->name) != 0)
                continue;
            tn_buf_printf(b,
                          "      [%-15s] depth: %-5llu be-depth: %-5llu inflt: %-4zu def: %-4zu "
                          "re-q: %-5llu timeout: %-5llu msgs: %-8llu e2e%%: %s\n",
                          ch->name, (unsigned long long)broker_channel_depth(ch),
                          (unsigned long long)(ch->dq ? tn_diskq_depth(ch->dq) : 0), ch->inflight.n,
                          ch->deferred.n, (unsigned long long)ch->requeue_count,
                          (unsigned long long)ch->timeout_count,
                          (unsigned long long)ch->message_count, ch->paused ? "(paused)" : "");
            for (size_t i = 0; clients && i < ch->nclients; i++) {
                const struct broker_client *cl = ch->clients[i];
                tn_buf_printf(
                    b,
                    "        [V2 %-21s] state: %d inflt: %-4llu rdy: %-4lld fin: %-8llu "
                    "re-q: %-8llu msgs: %-8llu connected: %llds\n",
                    cl->hostname[0] ? cl->hostname : (cl->conn ? cl->conn->peer : ""),
                    cl->state == BROKER_CLIENT_SUBSCRIBED ? 3 : 4, (unsigned long long)cl->inflight,
                    (long long)cl->rdy, (unsigned long long)cl->finish_count,
                    (unsigned long long)cl->requeue_count, (unsigned long long)cl->message_count,
                    (long long)(broker_now() / 1000 - cl->connect_ts));
            }
        }
    }
}

static int h_stats(struct tn_http_req *r, void *ud)
{
    struct broker *bk = ud;
    char format[16] = "", topic[BROKER_NAME_MAX + 2], channel[BROKER_NAME_MAX + 2];
    const char *tp = NULL, *cp = NULL;
    int clients = bool_arg(r, "include_clients", 1), mem = bool_arg(r, "include_mem", 1);

    tn_http_arg(r, "format", format, sizeof(format));
    if (tn_http_arg(r, "topic", topic, sizeof(topic)) >= 0)
        tp = topic;
    if (tp && tn_http_arg(r, "channel", channel, sizeof(channel)) >= 0)
        cp = channel;
    /* text unless format=json, as nsqd (nsqadmin asks for json) */
    if (strcmp(format, "json") != 0) {
        struct tn_buf b = TN_BUF_INIT;
        stats_text(&b, bk, tp, cp, clients);
        nsq_header(r);
        tn_http_reply(r, 200, TEXT_TYPE, tn_buf_rptr(&b), tn_buf_rlen(&b));
        tn_buf_free(&b);
        return TN_HTTP_DONE;
    }
    return reply_json(r, stats_json(bk, tp, cp, clients, mem));
}

/* ---- /config/<key>: the running broker settings, read-only --------------------------- */

static json_t *config_value(const struct broker_conf *bc, const char *key)
{
    struct {
        const char *key;
        int64_t v;
    } ints[] = {
        {"mem_queue_size", bc->mem_queue_size},
        {"max_msg_size", (int64_t)bc->max_msg_size},
        {"max_body_size", (int64_t)bc->max_body_size},
        {"max_rdy_count", bc->max_rdy_count},
        {"msg_timeout", bc->msg_timeout},
        {"max_msg_timeout", bc->max_msg_timeout},
        {"max_req_timeout", bc->max_req_timeout},
        {"heartbeat_interval", bc->heartbeat_interval},
        {"max_heartbeat_interval", bc->max_heartbeat_interval},
        {"max_output_buffer_size", (int64_t)bc->max_output_buffer_size},
        {"max_output_buffer_timeout", bc->max_output_buffer_timeout},
        {"sync_every", bc->sync_every},
        {"sync_timeout", bc->sync_timeout},
        {"max_bytes_per_file", (int64_t)bc->max_bytes_per_file},
        {"max_channel_consumers", bc->max_channel_consumers},
        {"max_deflate_level", bc->max_deflate_level},
        {"node_id", bc->node_id},
        {"max_attempts", bc->max_attempts},
    };

    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        if (strcmp(key, ints[i].key) == 0)
            return json_integer((json_int_t)ints[i].v);
    if (strcmp(key, "tcp_listen") == 0)
        return json_string(bc->tcp_listen.text);
    if (strcmp(key, "http_listen") == 0)
        return json_string(bc->http_listen.text);
    if (strcmp(key, "deflate") == 0)
        return json_boolean(bc->deflate);
    if (strcmp(key, "auth") == 0)
        return json_boolean(bc->auth);
    return NULL;
}

static int h_config(struct tn_http_req *r, void *ud)
{
    struct broker *bk = ud;
    const char *key = r->path + strlen("/config/");
    json_t *v;

    /* nothing here changes at run time: use SIGHUP with a new file */
    if (r->method != TN_HTTP_GET && r->method != TN_HTTP_HEAD)
        return reply_err(r, 400, "INVALID_OPTION");
    if (!(v = config_value(bk->conf, key)))
        return reply_err(r, 400, "INVALID_OPTION");
    return reply_json(r, v);
}

/* ---- the admin dashboard's actions ------------------------------------------------------ */

/*
 * The core's admin server offers /dashboard/api/... to the modules (the
 * dashboard page cannot call this HTTP API: another origin, no CORS).
 * GET /dashboard/api/broker says the actions exist; POST
 * /dashboard/api/broker/{topic,channel}/OP?topic=&channel= is the same as
 * this API's /topic/OP and /channel/OP.
 */
#define DASH_PATH "/dashboard/api/broker"

static int dash_op_known(const char *op)
{
    static const char *const ops[] = {"create", "delete", "empty", "pause", "unpause"};

    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (strcmp(op, ops[i]) == 0)
            return 1;
    return 0;
}

static int on_admin_http(const char *event, void *arg, void *ud)
{
    struct tn_http_req *r = arg;
    const char *rest;
    int with_channel;

    if (strncmp(r->path, DASH_PATH, strlen(DASH_PATH)) != 0)
        return 0;
    rest = r->path + strlen(DASH_PATH);
    if (*rest && *rest != '/')
        return 0; /* another module's name that starts with "broker" */
    if (*rest == '\0') {
        reply_json(r, json_pack("{s:[s,s,s,s]}", "actions", "pause", "unpause", "empty", "delete"));
        return 1;
    }
    if (strncmp(rest, "/topic/", 7) == 0)
        with_channel = 0;
    else if (strncmp(rest, "/channel/", 9) == 0)
        with_channel = 1;
    else
        return 0;
    if (!dash_op_known(strrchr(rest, '/') + 1) || strchr(rest + 1, '/') != strrchr(rest, '/'))
        return 0;
    if (r->method != TN_HTTP_POST)
        reply_err(r, 405, "METHOD_NOT_ALLOWED");
    else
        admin(r, ud, with_channel);
    return 1;
}

int broker_http_dashboard(struct broker *bk, int on)
{
    if (!on) {
        tn_event_off(TN_ADMIN_HTTP_EVENT, on_admin_http, bk);
        return 0;
    }
    return tn_event_on(TN_ADMIN_HTTP_EVENT, on_admin_http, bk);
}

int broker_http_routes(struct broker *bk, struct tn_http_server *s)
{
    static const char *const ops[] = {"create", "delete", "empty", "pause", "unpause"};
    char path[64];
    int rc = 0;

    rc |= tn_http_route(s, TN_HTTP_GET, "/ping", h_ping, bk);
    rc |= tn_http_route(s, TN_HTTP_GET, "/info", h_info, bk);
    rc |= tn_http_route(s, TN_HTTP_POST | TN_HTTP_PUT, "/pub", h_pub, bk);
    rc |= tn_http_route(s, TN_HTTP_POST | TN_HTTP_PUT, "/mpub", h_mpub, bk);
    rc |= tn_http_route(s, TN_HTTP_GET, "/stats", h_stats, bk);
    rc |= tn_http_route(s, TN_HTTP_GET | TN_HTTP_PUT, "/config/*", h_config, bk);
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        snprintf(path, sizeof(path), "/topic/%s", ops[i]);
        rc |= tn_http_route(s, TN_HTTP_POST, path, h_topic, bk);
        snprintf(path, sizeof(path), "/channel/%s", ops[i]);
        rc |= tn_http_route(s, TN_HTTP_POST, path, h_channel, bk);
    }
    return rc ? TN_EEXIST : 0;
}
