/*
 * proto.c -- nsqd's TCP protocol V2 on the core's connection layer: the
 * "  V2" magic, newline-terminated commands with optional length-prefixed
 * bodies, framed replies ([4B size][4B type][data]), IDENTIFY feature
 * negotiation (heartbeats, msg_timeout, sample_rate, output buffering,
 * deflate), heartbeats and the same error codes and texts as nsqd, so that
 * unmodified NSQ clients work. Fatal errors close the connection after the
 * error frame; E_FIN_FAILED, E_REQ_FAILED and E_TOUCH_FAILED do not.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

#define LINE_MAX_LEN 4096        /* longest command line */
#define OBUF_DEFAULT 16384       /* output_buffer_size reported by default */
#define OBUF_TIMEOUT_DEFAULT 250 /* ms */
#define OBUF_TIMEOUT_MIN 25      /* ms */
#define DEFLATE_CHUNK 16384

enum { NEED_MORE = 0, DONE = 1, STOP = -1 };

/* One parsed command: the line split on spaces (as nsqd: empty fields
 * count), then for body commands the body. */
#define MAX_PARAMS 8
struct cmd {
    const char *p[MAX_PARAMS];
    size_t n[MAX_PARAMS];
    size_t np;
    size_t line_len; /* bytes of the line with its '\n' */
};

static int pnameq(const struct cmd *c, size_t i, const char *s)
{
    return c->n[i] == strlen(s) && memcmp(c->p[i], s, c->n[i]) == 0;
}

static uint32_t get_be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

static void put_be32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

/* ---- output --------------------------------------------------------------------- */

/* Append bytes for the peer: straight to the connection, or (deflate) to
 * the plain buffer compressed once per loop iteration by broker_proto_flush. */
static void out_write(struct broker_client *cl, const struct iovec *iov, int n)
{
    if (!cl->conn)
        return;
    if (!cl->deflate) {
        tn_conn_writev(cl->conn, iov, n);
        return;
    }
    for (int i = 0; i < n; i++)
        tn_buf_append(&cl->plain_out, iov[i].iov_base, iov[i].iov_len);
    if (!cl->dirty) {
        cl->dirty = 1;
        cl->dnext = cl->bk->dirty;
        cl->bk->dirty = cl;
    }
}

static void send_frame(struct broker_client *cl, int type, const void *data, size_t len)
{
    char hdr[8];
    struct iovec iov[2];

    put_be32(hdr, (uint32_t)(len + 4));
    put_be32(hdr + 4, (uint32_t)type);
    iov[0].iov_base = hdr;
    iov[0].iov_len = sizeof(hdr);
    iov[1].iov_base = (void *)data;
    iov[1].iov_len = len;
    out_write(cl, iov, len ? 2 : 1);
}

static void send_str(struct broker_client *cl, const char *s)
{
    send_frame(cl, BROKER_FRAME_RESPONSE, s, strlen(s));
}

void broker_proto_send_msg(struct broker_client *cl, const struct broker_ent *e)
{
    char hdr[8 + BROKER_MSG_HEADER];
    const struct broker_msg *m = e->msg;
    struct iovec iov[2];
    uint64_t ts = (uint64_t)m->ts;

    put_be32(hdr, (uint32_t)(4 + BROKER_MSG_HEADER + m->len));
    put_be32(hdr + 4, BROKER_FRAME_MESSAGE);
    put_be32(hdr + 8, (uint32_t)(ts >> 32));
    put_be32(hdr + 12, (uint32_t)ts);
    hdr[16] = (char)(e->attempts >> 8);
    hdr[17] = (char)e->attempts;
    broker_id_hex(m->id, hdr + 18);
    iov[0].iov_base = hdr;
    iov[0].iov_len = sizeof(hdr);
    iov[1].iov_base = (void *)m->body;
    iov[1].iov_len = m->len;
    out_write(cl, iov, 2);
}

/* An error frame "CODE text"; fatal ones end the connection (nsqd's
 * FatalClientErr), and the rest of the input is ignored. */
static int client_error(struct broker_client *cl, int fatal, const char *code, const char *fmt, ...)
    TN_PRINTF(4, 5);
static int client_error(struct broker_client *cl, int fatal, const char *code, const char *fmt, ...)
{
    char text[1024];
    int n = snprintf(text, sizeof(text), "%s ", code);
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text + n, sizeof(text) - (size_t)n, fmt, ap);
    va_end(ap);
    send_frame(cl, BROKER_FRAME_ERROR, text, strlen(text));
    if (!fatal)
        return DONE;
    tn_log_debug(BROKER_LOG, "client %s: %s", cl->conn ? cl->conn->peer : "?", text);
    cl->state = BROKER_CLIENT_CLOSING;
    cl->rdy = 0;
    if (cl->conn) {
        broker_proto_flush(cl->bk);
        tn_conn_close_after_write(cl->conn);
    }
    return STOP;
}

/* Go's %q for the names in error texts: quoted, with escapes. */
static const char *quote(const char *p, size_t n, char *out, size_t outsz)
{
    size_t o = 0;

    out[o++] = '"';
    for (size_t i = 0; i < n && o + 6 < outsz; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else if (ch == '\t') {
            out[o++] = '\\';
            out[o++] = 't';
        } else if (ch == '\r') {
            out[o++] = '\\';
            out[o++] = 'r';
        } else if (ch < 0x20 || ch >= 0x7f) {
            o += (size_t)snprintf(out + o, outsz - o, "\\x%02x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

/* nsqd's ByteToBase10: decimal digits only (no sign). -1 on error. */
static int64_t base10(const char *p, size_t n)
{
    int64_t v = 0;

    if (n == 0 || n > 18)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static void client_heartbeat(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct broker_client *cl = w->data;

    send_str(cl, "_heartbeat_");
}

/* Start (or restart) the heartbeat and the read timeout of twice it. */
static void heartbeat_arm(struct broker_client *cl)
{
    ev_timer_stop(tn_loop(), &cl->hb);
    if (cl->heartbeat > 0) {
        double s = (double)cl->heartbeat / 1000.0;
        ev_timer_set(&cl->hb, s, s);
        ev_timer_start(tn_loop(), &cl->hb);
    }
    if (cl->conn)
        tn_conn_set_idle_timeout(cl->conn, cl->heartbeat > 0 ? 2 * cl->heartbeat : 0);
}

/* ---- deflate ------------------------------------------------------------------------ */

static int deflate_start(struct broker_client *cl, int level)
{
    memset(&cl->zin, 0, sizeof(cl->zin));
    memset(&cl->zout, 0, sizeof(cl->zout));
    /* raw deflate streams both ways (negative window bits), like Go's flate */
    if (inflateInit2(&cl->zin, -15) != Z_OK)
        return TN_ENOMEM;
    if (deflateInit2(&cl->zout, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        inflateEnd(&cl->zin);
        return TN_ENOMEM;
    }
    cl->deflate = 1;
    return 0;
}

static void deflate_end(struct broker_client *cl)
{
    if (!cl->deflate)
        return;
    inflateEnd(&cl->zin);
    deflateEnd(&cl->zout);
    cl->deflate = 0;
}

/* Inflate at most one chunk of c->in into plain_in: 1 when it produced
 * bytes, 0 when there is nothing more for now, -1 on a corrupt stream or
 * a plain input larger than any command may be. Commands are run between
 * chunks, so plain_in only ever holds one incomplete command plus a chunk,
 * however well the peer's data compresses. */
static int inflate_some(struct broker_client *cl)
{
    struct tn_conn *c = cl->conn;
    size_t limit = (size_t)cl->bk->conf->max_body_size + LINE_MAX_LEN + 8 + DEFLATE_CHUNK;
    size_t avail = tn_buf_rlen(&c->in), produced;
    int rc;

    if (avail == 0 && !cl->zpending)
        return 0;
    if (tn_buf_reserve(&cl->plain_in, DEFLATE_CHUNK) != 0)
        return -1;
    cl->zin.next_in = (Bytef *)tn_buf_rptr(&c->in);
    cl->zin.avail_in = (uInt)avail;
    cl->zin.next_out = (Bytef *)tn_buf_wptr(&cl->plain_in);
    cl->zin.avail_out = DEFLATE_CHUNK;
    rc = inflate(&cl->zin, Z_SYNC_FLUSH);
    produced = DEFLATE_CHUNK - cl->zin.avail_out;
    tn_buf_commit(&cl->plain_in, produced);
    tn_buf_consume(&c->in, avail - cl->zin.avail_in);
    /* a full output chunk may leave more inside zlib with no input left */
    cl->zpending = cl->zin.avail_out == 0;
    if ((rc != Z_OK && rc != Z_BUF_ERROR) || tn_buf_rlen(&cl->plain_in) > limit)
        return -1;
    return produced > 0;
}

static void deflate_flush_one(struct broker_client *cl)
{
    char out[DEFLATE_CHUNK];

    cl->dirty = 0;
    if (!cl->conn || !cl->deflate || tn_buf_rlen(&cl->plain_out) == 0)
        return;
    cl->zout.next_in = (Bytef *)tn_buf_rptr(&cl->plain_out);
    cl->zout.avail_in = (uInt)tn_buf_rlen(&cl->plain_out);
    do {
        cl->zout.next_out = (Bytef *)out;
        cl->zout.avail_out = sizeof(out);
        deflate(&cl->zout, Z_SYNC_FLUSH);
        tn_conn_write(cl->conn, out, sizeof(out) - cl->zout.avail_out);
    } while (cl->zout.avail_out == 0);
    tn_buf_reset(&cl->plain_out);
    tn_buf_shrink(&cl->plain_out, 64 * 1024);
}

/* Compress what each deflate client queued this iteration: one sync-flushed
 * block per client per loop iteration, like nsqd's buffered writer. */
void broker_proto_flush(struct broker *bk)
{
    while (bk->dirty) {
        struct broker_client *cl = bk->dirty;
        bk->dirty = cl->dnext;
        cl->dnext = NULL;
        deflate_flush_one(cl);
    }
}

/* ---- IDENTIFY ----------------------------------------------------------------------------- */

struct ident {
    json_int_t heartbeat, obuf_size, obuf_timeout, sample_rate, msg_timeout, deflate_level;
    int feature_negotiation, tls_v1, snappy, deflate;
};

static int json_str_field(json_t *o, const char *key, char *out, size_t outsz)
{
    json_t *v = json_object_get(o, key);

    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return -1;
    snprintf(out, outsz, "%s", json_string_value(v));
    return 0;
}

static int json_int_field(json_t *o, const char *key, json_int_t *out)
{
    json_t *v = json_object_get(o, key);

    *out = 0;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    return -1;
}

static int json_bool_field(json_t *o, const char *key, int *out)
{
    json_t *v = json_object_get(o, key);

    *out = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return -1;
    *out = json_is_true(v);
    return 0;
}

/* Decode the IDENTIFY body as Go's json.Unmarshal would into nsqd's struct:
 * unknown keys are ignored, a known key of the wrong type is an error. */
static int ident_decode(struct broker_client *cl, json_t *o, struct ident *id)
{
    if (!json_is_object(o))
        return -1;
    if (json_str_field(o, "client_id", cl->client_id, sizeof(cl->client_id)) ||
        json_str_field(o, "hostname", cl->hostname, sizeof(cl->hostname)) ||
        json_str_field(o, "user_agent", cl->user_agent, sizeof(cl->user_agent)) ||
        json_int_field(o, "heartbeat_interval", &id->heartbeat) ||
        json_int_field(o, "output_buffer_size", &id->obuf_size) ||
        json_int_field(o, "output_buffer_timeout", &id->obuf_timeout) ||
        json_int_field(o, "sample_rate", &id->sample_rate) ||
        json_int_field(o, "msg_timeout", &id->msg_timeout) ||
        json_int_field(o, "deflate_level", &id->deflate_level) ||
        json_bool_field(o, "feature_negotiation", &id->feature_negotiation) ||
        json_bool_field(o, "tls_v1", &id->tls_v1) || json_bool_field(o, "snappy", &id->snappy) ||
        json_bool_field(o, "deflate", &id->deflate))
        return -1;
    return 0;
}

/* nsqd's client.Identify: each setting checked against its limits. */
static int ident_apply(struct broker_client *cl, const struct ident *id, char *why, size_t whylen)
{
    const struct broker_conf *bc = cl->bk->conf;
    int64_t obuf_timeout = cl->obuf_timeout;

    if (id->heartbeat == -1)
        cl->heartbeat = 0;
    else if (id->heartbeat != 0) {
        if (id->heartbeat < 1000 || id->heartbeat > bc->max_heartbeat_interval) {
            snprintf(why, whylen, "heartbeat interval (%lld) is invalid", (long long)id->heartbeat);
            return -1;
        }
        cl->heartbeat = id->heartbeat;
    }
    if (id->obuf_timeout == -1)
        obuf_timeout = 0;
    else if (id->obuf_timeout != 0) {
        if (id->obuf_timeout < OBUF_TIMEOUT_MIN ||
            id->obuf_timeout > bc->max_output_buffer_timeout) {
            snprintf(why, whylen, "output buffer timeout (%lld) is invalid",
                     (long long)id->obuf_timeout);
            return -1;
        }
        obuf_timeout = id->obuf_timeout;
    }
    if (id->obuf_size == -1) {
        cl->obuf_size = 1;
        obuf_timeout = 0;
    } else if (id->obuf_size != 0) {
        if (id->obuf_size < 64 || id->obuf_size > (json_int_t)bc->max_output_buffer_size) {
            snprintf(why, whylen, "output buffer size (%lld) is invalid", (long long)id->obuf_size);
            return -1;
        }
        cl->obuf_size = id->obuf_size;
    }
    cl->obuf_timeout = obuf_timeout;
    if (id->sample_rate < 0 || id->sample_rate > 99) {
        snprintf(why, whylen, "sample rate (%lld) is invalid", (long long)id->sample_rate);
        return -1;
    }
    cl->sample_rate = (int)id->sample_rate;
    if (id->msg_timeout != 0) {
        if (id->msg_timeout < 1000 || id->msg_timeout > bc->max_msg_timeout) {
            snprintf(why, whylen, "msg timeout (%lld) is invalid", (long long)id->msg_timeout);
            return -1;
        }
        cl->msg_timeout = id->msg_timeout;
    }
    return 0;
}

static int identify_reply(struct broker_client *cl, const struct ident *id)
{
    const struct broker_conf *bc = cl->bk->conf;
    int deflate = bc->deflate && id->deflate;
    int level = 6;
    json_t *o;
    char *s;

    if (deflate && id->deflate_level > 0)
        level = (int)(id->deflate_level > 9 ? 9 : id->deflate_level);
    if (level > bc->max_deflate_level)
        level = (int)bc->max_deflate_level;
    int tls = cl->bk->tls != NULL && id->tls_v1;

    /* snappy is not offered (nor TLS without broker.tls): the reply says
     * false, as nsqd does when they are not configured, and the client
     * carries on without. */
    o = json_pack("{s:I, s:s, s:I, s:I, s:b, s:b, s:i, s:I, s:b, s:i, s:b, s:I, s:I}",
                  "max_rdy_count", (json_int_t)bc->max_rdy_count, "version", BROKER_VERSION,
                  "max_msg_timeout", (json_int_t)bc->max_msg_timeout, "msg_timeout",
                  (json_int_t)cl->msg_timeout, "tls_v1", tls, "deflate", deflate, "deflate_level",
                  level, "max_deflate_level", (json_int_t)bc->max_deflate_level, "snappy", 0,
                  "sample_rate", cl->sample_rate, "auth_required", bc->auth, "output_buffer_size",
                  (json_int_t)cl->obuf_size, "output_buffer_timeout", (json_int_t)cl->obuf_timeout);
    s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (!s)
        return client_error(cl, 1, "E_IDENTIFY_FAILED", "IDENTIFY failed out of memory");
    send_str(cl, s);
    free(s);
    /* nsqd's order: the reply in plaintext, the handshake, "OK" over TLS,
     * then deflate (inside TLS) with its own "OK" */
    if (tls) {
        if (tn_conn_start_tls(cl->conn, cl->bk->tls) != 0)
            return client_error(cl, 1, "E_IDENTIFY_FAILED", "IDENTIFY failed tls");
        cl->tls = 1;
        send_str(cl, "OK");
    }
    if (deflate) {
        if (deflate_start(cl, level) != 0)
            return client_error(cl, 1, "E_IDENTIFY_FAILED", "IDENTIFY failed deflate");
        cl->deflate_level = level;
        send_str(cl, "OK");
    }
    return DONE;
}

static int do_identify(struct broker_client *cl, const char *body, size_t len)
{
    struct ident id;
    json_error_t jerr;
    json_t *o;
    char why[256];

    memset(&id, 0, sizeof(id));
    o = json_loadb(body, len, JSON_DECODE_ANY, &jerr);
    if (!o || ident_decode(cl, o, &id) != 0) {
        json_decref(o);
        return client_error(cl, 1, "E_BAD_BODY", "IDENTIFY failed to decode JSON body");
    }
    json_decref(o);
    if (ident_apply(cl, &id, why, sizeof(why)) != 0)
        return client_error(cl, 1, "E_BAD_BODY", "IDENTIFY %s", why);
    cl->identified = 1;
    cl->feature_negotiation = id.feature_negotiation;
    heartbeat_arm(cl);
    if (!id.feature_negotiation) {
        send_str(cl, "OK");
        return DONE;
    }
    return identify_reply(cl, &id);
}

/* ---- commands ----------------------------------------------------------------------------- */

/* Wall-clock ms as of this loop iteration (libev's ev_now is the real
 * time, read once per iteration): FIN, REQ, TOUCH and RDY come by the
 * thousand per read, and ms deadlines need no clock read of their own. */
static int64_t now_ms(void)
{
    return tn_now_ms();
}

/* Body commands: wait for [4B size][body], after checking the size. The
 * checks and texts follow nsqd's for each command (E_BAD_BODY for whole
 * command bodies, E_BAD_MESSAGE for one message). */
static int need_body(struct broker_client *cl, struct tn_buf *in, const struct cmd *c,
                     const char *what, const char *code, uint64_t max, const char **body,
                     size_t *len)
{
    size_t avail = tn_buf_rlen(in) - c->line_len;
    const char *p = tn_buf_rptr(in) + c->line_len;
    int32_t size;

    if (avail < 4)
        return NEED_MORE;
    size = (int32_t)get_be32(p);
    if (strcmp(code, "E_BAD_BODY") == 0 && size > 0 && (uint64_t)size > max)
        return client_error(cl, 1, code, "%s body too big %d > %llu", what, size,
                            (unsigned long long)max);
    if (size <= 0)
        return client_error(cl, 1, code, "%s invalid %s size %d", what,
                            strcmp(code, "E_BAD_BODY") == 0 ? "body" : "message body", size);
    if ((uint64_t)size > max)
        return client_error(cl, 1, code, "%s message too big %d > %llu", what, size,
                            (unsigned long long)max);
    if (avail - 4 < (size_t)size)
        return NEED_MORE;
    *body = p + 4;
    *len = (size_t)size;
    return DONE;
}

/* With broker.auth on: authenticated first, then the auth plugin that
 * accepted the secret (its authority) must allow this topic (and channel,
 * for SUB); a client accepted by a plugin without rules passes unless some
 * subscriber denies. */
static int check_auth(struct broker_client *cl, const char *what, const char *topic,
                      const char *channel)
{
    struct tn_auth_authorize az;
    int judged = cl->auth_authority[0] != '\0';

    if (!cl->bk->conf->auth)
        return DONE;
    if (!cl->authed)
        return client_error(cl, 1, "E_AUTH_FIRST", "AUTH required before %s", what);
    if (!judged && !tn_event_has(TN_AUTH_AUTHORIZE_EVENT))
        return DONE;
    az.service = "nsq";
    az.authority = cl->auth_authority;
    az.secret = cl->auth_secret ? cl->auth_secret : "";
    az.secret_len = cl->auth_secret_len;
    az.identity = cl->auth_identity;
    az.remote_addr = cl->conn ? cl->conn->peer : "";
    az.action = channel ? TN_AUTH_SUBSCRIBE : TN_AUTH_PUBLISH;
    az.topic = topic;
    az.channel = channel;
    az.allowed = 0;
    if (tn_event_emit(TN_AUTH_AUTHORIZE_EVENT, &az) != 0 || (judged && !az.allowed))
        return client_error(cl, 1, "E_UNAUTHORIZED", "AUTH failed for %s on \"%s\" \"%s\"", what,
                            topic, channel ? channel : "");
    return DONE;
}

static int pub_result(struct broker_client *cl, int rc, const char *code, const char *what)
{
    if (rc != 0)
        return client_error(cl, 1, code, "%s failed %s", what, tn_strerror(rc));
    send_str(cl, "OK");
    return DONE;
}

static int topic_param(struct broker_client *cl, const struct cmd *c, const char *prefix,
                       char *topic)
{
    char q[300];

    if (!broker_name_valid(c->p[1], c->n[1]))
        return client_error(cl, 1, "E_BAD_TOPIC", "%s topic name %s is not valid", prefix,
                            quote(c->p[1], c->n[1], q, sizeof(q)));
    memcpy(topic, c->p[1], c->n[1]);
    topic[c->n[1]] = '\0';
    return DONE;
}

static int cmd_pub(struct broker_client *cl, struct tn_buf *in, const struct cmd *c, size_t *used)
{
    char topic[BROKER_NAME_MAX + 1];
    const char *body;
    size_t len;
    int rc;

    if (c->np < 2)
        return client_error(cl, 1, "E_INVALID", "PUB insufficient number of parameters");
    if ((rc = topic_param(cl, c, "PUB", topic)) != DONE)
        return rc;
    rc = need_body(cl, in, c, "PUB", "E_BAD_MESSAGE", cl->bk->conf->max_msg_size, &body, &len);
    if (rc != DONE)
        return rc;
    *used = c->line_len + 4 + len;
    if ((rc = check_auth(cl, "PUB", topic, NULL)) != DONE)
        return rc;
    cl->pub_count++;
    return pub_result(cl, broker_publish(cl->bk, topic, body, len, 0, 1), "E_PUB_FAILED", "PUB");
}

static int cmd_dpub(struct broker_client *cl, struct tn_buf *in, const struct cmd *c, size_t *used)
{
    const struct broker_conf *bc = cl->bk->conf;
    char topic[BROKER_NAME_MAX + 1];
    const char *body;
    size_t len;
    int64_t defer;
    int rc;

    if (c->np < 3)
        return client_error(cl, 1, "E_INVALID", "DPUB insufficient number of parameters");
    if ((rc = topic_param(cl, c, "DPUB", topic)) != DONE)
        return rc;
    if ((defer = base10(c->p[2], c->n[2])) < 0)
        return client_error(cl, 1, "E_INVALID", "DPUB could not parse timeout %.*s", (int)c->n[2],
                            c->p[2]);
    if (defer > bc->max_req_timeout)
        return client_error(cl, 1, "E_INVALID", "DPUB timeout %lld out of range 0-%lld",
                            (long long)defer, (long long)bc->max_req_timeout);
    rc = need_body(cl, in, c, "DPUB", "E_BAD_MESSAGE", bc->max_msg_size, &body, &len);
    if (rc != DONE)
        return rc;
    *used = c->line_len + 4 + len;
    if ((rc = check_auth(cl, "DPUB", topic, NULL)) != DONE)
        return rc;
    cl->pub_count++;
    return pub_result(cl, broker_publish(cl->bk, topic, body, len, defer, 1), "E_DPUB_FAILED",
                      "DPUB");
}

/* Check the MPUB body completely before publishing any of it: an MPUB is
 * all or nothing. */
static int mpub_check(struct broker_client *cl, const char *p, size_t len, uint32_t *count)
{
    const struct broker_conf *bc = cl->bk->conf;
    int64_t max_count = ((int64_t)bc->max_body_size - 4) / 5;
    int32_t n;
    size_t off = 4;

    if (len < 4)
        return client_error(cl, 1, "E_BAD_BODY", "MPUB failed to read message count");
    n = (int32_t)get_be32(p);
    if (n <= 0 || n > max_count)
        return client_error(cl, 1, "E_BAD_BODY", "MPUB invalid message count %d", n);
    for (int32_t i = 0; i < n; i++) {
        int32_t size;
        if (len - off < 4)
            return client_error(cl, 1, "E_BAD_MESSAGE", "MPUB failed to read message(%d) body size",
                                i);
        size = (int32_t)get_be32(p + off);
        off += 4;
        if (size <= 0)
            return client_error(cl, 1, "E_BAD_MESSAGE", "MPUB invalid message(%d) body size %d", i,
                                size);
        if ((uint64_t)size > bc->max_msg_size)
            return client_error(cl, 1, "E_BAD_MESSAGE", "MPUB message too big %d > %llu", size,
                                (unsigned long long)bc->max_msg_size);
        if (len - off < (size_t)size)
            return client_error(cl, 1, "E_BAD_MESSAGE", "MPUB failed to read message body");
        off += (size_t)size;
    }
    if (off != len)
        return client_error(cl, 1, "E_BAD_BODY", "MPUB body size %zu does not match its messages",
                            len);
    *count = (uint32_t)n;
    return DONE;
}

static int cmd_mpub(struct broker_client *cl, struct tn_buf *in, const struct cmd *c, size_t *used)
{
    char topic[BROKER_NAME_MAX + 1], q[300];
    const char *body;
    size_t len, off = 4;
    uint32_t count = 0;
    int rc = 0;

    if (c->np < 2)
        return client_error(cl, 1, "E_INVALID", "MPUB insufficient number of parameters");
    if (!broker_name_valid(c->p[1], c->n[1]))
        return client_error(cl, 1, "E_BAD_TOPIC", "E_BAD_TOPIC MPUB topic name %s is not valid",
                            quote(c->p[1], c->n[1], q, sizeof(q)));
    memcpy(topic, c->p[1], c->n[1]);
    topic[c->n[1]] = '\0';
    if ((rc = check_auth(cl, "MPUB", topic, NULL)) != DONE)
        return rc;
    rc = need_body(cl, in, c, "MPUB", "E_BAD_BODY", cl->bk->conf->max_body_size, &body, &len);
    if (rc != DONE)
        return rc;
    *used = c->line_len + 4 + len;
    if ((rc = mpub_check(cl, body, len, &count)) != DONE)
        return rc;
    rc = 0;
    for (uint32_t i = 0; i < count && rc == 0; i++) {
        size_t size = get_be32(body + off);
        rc = broker_publish(cl->bk, topic, body + off + 4, size, 0, 1);
        off += 4 + size;
    }
    cl->pub_count += count;
    return pub_result(cl, rc, "E_MPUB_FAILED", "MPUB");
}

static int cmd_sub(struct broker_client *cl, const struct cmd *c)
{
    struct broker *bk = cl->bk;
    char topic[BROKER_NAME_MAX + 1], channel[BROKER_NAME_MAX + 1], q[300];
    struct broker_topic *t;
    struct broker_channel *ch;
    int err = 0, rc;

    if (cl->state != BROKER_CLIENT_INIT)
        return client_error(cl, 1, "E_INVALID", "cannot SUB in current state");
    if (cl->heartbeat <= 0)
        return client_error(cl, 1, "E_INVALID", "cannot SUB with heartbeats disabled");
    if (c->np < 3)
        return client_error(cl, 1, "E_INVALID", "SUB insufficient number of parameters");
    if ((rc = topic_param(cl, c, "SUB", topic)) != DONE)
        return rc;
    if (!broker_name_valid(c->p[2], c->n[2]))
        return client_error(cl, 1, "E_BAD_CHANNEL", "SUB channel name %s is not valid",
                            quote(c->p[2], c->n[2], q, sizeof(q)));
    memcpy(channel, c->p[2], c->n[2]);
    channel[c->n[2]] = '\0';
    if ((rc = check_auth(cl, "SUB", topic, channel)) != DONE)
        return rc;
    if (!(t = broker_topic_get(bk, topic, &err)) ||
        !(ch = broker_channel_get(t, channel, now_ms(), &err)))
        return client_error(cl, 1, "E_SUB_FAILED", "SUB failed %s", tn_strerror(err));
    if (broker_client_sub(cl, ch, now_ms()) != 0)
        return client_error(cl, 1, "E_TOO_MANY_CHANNEL_CONSUMERS",
                            "channel consumers for %s:%s exceeds limit of %lld", topic, channel,
                            (long long)bk->conf->max_channel_consumers);
    send_str(cl, "OK");
    return DONE;
}

static int cmd_rdy(struct broker_client *cl, const struct cmd *c)
{
    int64_t count = 1;

    if (cl->state == BROKER_CLIENT_CLOSING)
        return DONE; /* ignored after CLS */
    if (cl->state != BROKER_CLIENT_SUBSCRIBED)
        return client_error(cl, 1, "E_INVALID", "cannot RDY in current state");
    if (c->np > 1 && (count = base10(c->p[1], c->n[1])) < 0)
        return client_error(cl, 1, "E_INVALID", "RDY could not parse count %.*s", (int)c->n[1],
                            c->p[1]);
    if (count > cl->bk->conf->max_rdy_count)
        return client_error(cl, 1, "E_INVALID", "RDY count %lld out of range 0-%lld",
                            (long long)count, (long long)cl->bk->conf->max_rdy_count);
    broker_client_set_rdy(cl, count, now_ms());
    return DONE;
}

/* FIN, REQ and TOUCH share the checks before the ID lookup. */
static int msg_cmd_check(struct broker_client *cl, const struct cmd *c, const char *what,
                         size_t nparams, uint64_t *id)
{
    if (cl->state != BROKER_CLIENT_SUBSCRIBED && cl->state != BROKER_CLIENT_CLOSING)
        return client_error(cl, 1, "E_INVALID", "cannot %s in current state", what);
    if (c->np < nparams)
        return client_error(cl, 1, "E_INVALID", "%s insufficient number of params", what);
    if (c->n[1] != BROKER_ID_LEN)
        return client_error(cl, 1, "E_INVALID", "Invalid Message ID");
    /* an ID that is not hex cannot be in flight */
    if (broker_id_parse(c->p[1], c->n[1], id) != 0)
        *id = UINT64_MAX;
    return DONE;
}

static const char *lookup_error(int rc)
{
    return rc == TN_EINVAL ? "client does not own message" : "ID not in flight";
}

static int cmd_fin(struct broker_client *cl, const struct cmd *c)
{
    uint64_t id;
    int rc = msg_cmd_check(cl, c, "FIN", 2, &id);

    if (rc != DONE)
        return rc;
    if ((rc = broker_fin(cl, id, now_ms())) != 0)
        return client_error(cl, 0, "E_FIN_FAILED", "FIN %.*s failed %s", BROKER_ID_LEN, c->p[1],
                            lookup_error(rc));
    return DONE;
}

static int cmd_req(struct broker_client *cl, const struct cmd *c)
{
    int64_t delay, max = cl->bk->conf->max_req_timeout;
    uint64_t id;
    int rc = msg_cmd_check(cl, c, "REQ", 3, &id);

    if (rc != DONE)
        return rc;
    if ((delay = base10(c->p[2], c->n[2])) < 0)
        return client_error(cl, 1, "E_INVALID", "REQ could not parse timeout %.*s", (int)c->n[2],
                            c->p[2]);
    if (delay > max) /* clamped, as nsqd since 1.0 */
        delay = max;
    if ((rc = broker_req(cl, id, delay, now_ms())) != 0)
        return client_error(cl, 0, "E_REQ_FAILED", "REQ %.*s failed %s", BROKER_ID_LEN, c->p[1],
                            lookup_error(rc));
    return DONE;
}

static int cmd_touch(struct broker_client *cl, const struct cmd *c)
{
    uint64_t id;
    int rc = msg_cmd_check(cl, c, "TOUCH", 2, &id);

    if (rc != DONE)
        return rc;
    if ((rc = broker_touch(cl, id, now_ms())) != 0)
        return client_error(cl, 0, "E_TOUCH_FAILED", "TOUCH %.*s failed %s", BROKER_ID_LEN, c->p[1],
                            lookup_error(rc));
    return DONE;
}

static int cmd_cls(struct broker_client *cl)
{
    if (cl->state != BROKER_CLIENT_SUBSCRIBED)
        return client_error(cl, 1, "E_INVALID", "cannot CLS in current state");
    cl->state = BROKER_CLIENT_CLOSING;
    cl->rdy = 0;
    send_str(cl, "CLOSE_WAIT");
    return DONE;
}

/* AUTH: with broker.auth on, the secret is checked by whoever listens to
 * the "auth.check" event (a plugin); nobody accepting it means failure. */
static int do_auth(struct broker_client *cl, const char *body, size_t len)
{
    struct tn_broker_auth a;
    char *s;
    json_t *o;

    if (cl->authed)
        return client_error(cl, 1, "E_INVALID", "AUTH already set");
    if (!cl->bk->conf->auth)
        return client_error(cl, 1, "E_AUTH_DISABLED", "AUTH disabled");
    memset(&a, 0, sizeof(a));
    a.secret = body;
    a.secret_len = len;
    a.remote_addr = cl->conn ? cl->conn->peer : "";
    a.service = "nsq";
    a.permission_count = -1;
    tn_event_emit(TN_AUTH_CHECK_EVENT, &a);
    if (!a.ok)
        return client_error(cl, 1, "E_AUTH_FAILED", "AUTH failed");
    if (!(cl->auth_secret = malloc(len + 1)))
        return client_error(cl, 1, "E_AUTH_FAILED", "AUTH failed %s", tn_strerror(TN_ENOMEM));
    memcpy(cl->auth_secret, body, len);
    cl->auth_secret[len] = '\0';
    cl->auth_secret_len = len;
    cl->authed = 1;
    a.identity[sizeof(a.identity) - 1] = '\0'; /* the plugin may have filled it all */
    a.identity_url[sizeof(a.identity_url) - 1] = '\0';
    a.authority[sizeof(a.authority) - 1] = '\0';
    snprintf(cl->auth_identity, sizeof(cl->auth_identity), "%s", a.identity);
    snprintf(cl->auth_authority, sizeof(cl->auth_authority), "%s", a.authority);
    o = json_pack("{s:s, s:s, s:I}", "identity", a.identity, "identity_url", a.identity_url,
                  "permission_count",
                  (json_int_t)(a.permission_count < 0 ? 1 : a.permission_count));
    s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    send_str(cl, s ? s : "{}");
    free(s);
    return DONE;
}

static int cmd_with_body(struct broker_client *cl, struct tn_buf *in, const struct cmd *c,
                         size_t *used, int identify)
{
    const char *what = identify ? "IDENTIFY" : "AUTH";
    const char *body;
    size_t len;
    int rc;

    if (cl->state != BROKER_CLIENT_INIT || (identify && cl->identified))
        return client_error(cl, 1, "E_INVALID", "cannot %s in current state", what);
    if (!identify && c->np != 1)
        return client_error(cl, 1, "E_INVALID", "AUTH invalid number of parameters");
    rc = need_body(cl, in, c, what, "E_BAD_BODY", cl->bk->conf->max_body_size, &body, &len);
    if (rc != DONE)
        return rc;
    *used = c->line_len + 4 + len;
    /* consume before running: IDENTIFY may switch the rest of the input
     * to deflate */
    tn_buf_consume(in, *used);
    *used = 0;
    return identify ? do_identify(cl, body, len) : do_auth(cl, body, len);
}

static int dispatch(struct broker_client *cl, struct tn_buf *in, const struct cmd *c, size_t *used)
{
    *used = c->line_len;
    if (pnameq(c, 0, "IDENTIFY"))
        return cmd_with_body(cl, in, c, used, 1);
    if (cl->bk->conf->tls_required && !cl->tls)
        return client_error(cl, 1, "E_INVALID", "cannot %.*s in current state", (int)c->n[0],
                            c->p[0]);
    if (pnameq(c, 0, "FIN"))
        return cmd_fin(cl, c);
    if (pnameq(c, 0, "RDY"))
        return cmd_rdy(cl, c);
    if (pnameq(c, 0, "REQ"))
        return cmd_req(cl, c);
    if (pnameq(c, 0, "PUB"))
        return cmd_pub(cl, in, c, used);
    if (pnameq(c, 0, "MPUB"))
        return cmd_mpub(cl, in, c, used);
    if (pnameq(c, 0, "DPUB"))
        return cmd_dpub(cl, in, c, used);
    if (pnameq(c, 0, "NOP"))
        return DONE;
    if (pnameq(c, 0, "TOUCH"))
        return cmd_touch(cl, c);
    if (pnameq(c, 0, "SUB"))
        return cmd_sub(cl, c);
    if (pnameq(c, 0, "CLS"))
        return cmd_cls(cl);
    if (pnameq(c, 0, "AUTH"))
        return cmd_with_body(cl, in, c, used, 0);
    return client_error(cl, 1, "E_INVALID", "invalid command %.*s", (int)c->n[0], c->p[0]);
}

/* Split the first line of in; NEED_MORE until a '\n' arrives. */
static int parse_line(struct broker_client *cl, struct tn_buf *in, struct cmd *c)
{
    const char *p = tn_buf_rptr(in), *nl = memchr(p, '\n', tn_buf_rlen(in));
    size_t len, start = 0;

    if (!nl) {
        if (tn_buf_rlen(in) > LINE_MAX_LEN)
            return client_error(cl, 1, "E_INVALID", "command line too long");
        return NEED_MORE;
    }
    len = (size_t)(nl - p);
    c->line_len = len + 1;
    if (len && p[len - 1] == '\r')
        len--;
    c->np = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || p[i] == ' ') {
            if (c->np == MAX_PARAMS)
                break;
            c->p[c->np] = p + start;
            c->n[c->np++] = i - start;
            start = i + 1;
        }
    }
    return DONE;
}

static int run_one(struct broker_client *cl, struct tn_buf *in)
{
    struct cmd c;
    size_t used = 0;
    int rc = parse_line(cl, in, &c);

    if (rc != DONE)
        return rc;
    rc = dispatch(cl, in, &c, &used);
    if (rc == DONE && used)
        tn_buf_consume(in, used);
    return rc;
}

static int check_magic(struct broker_client *cl, struct tn_buf *in)
{
    if (tn_buf_rlen(in) < 4)
        return NEED_MORE;
    if (memcmp(tn_buf_rptr(in), "  V2", 4) != 0) {
        send_frame(cl, BROKER_FRAME_ERROR, "E_BAD_PROTOCOL", 14);
        tn_conn_close_after_write(cl->conn);
        return STOP;
    }
    tn_buf_consume(in, 4);
    cl->magic_ok = 1;
    return DONE;
}

static void on_read(struct tn_conn *c)
{
    struct broker_client *cl = c->data;

    while (!tn_conn_closing(c)) {
        struct tn_buf *in = cl->deflate ? &cl->plain_in : &c->in;
        int rc = NEED_MORE;

        if (tn_buf_rlen(in))
            rc = cl->magic_ok ? run_one(cl, in) : check_magic(cl, in);
        if (rc == DONE)
            continue;
        if (rc == STOP || !cl->deflate)
            break;
        /* deflate: decompress more only when the commands need it */
        rc = inflate_some(cl);
        if (rc < 0)
            client_error(cl, 1, "E_INVALID", "deflate stream corrupt");
        if (rc <= 0)
            break;
    }
    if (tn_conn_closing(c))
        tn_buf_consume(&c->in, tn_buf_rlen(&c->in));
    /* The OKs of this batch of commands are queued, not sent: write the
     * records they acknowledge now, since a connection with output pending
     * sends from its write watcher, possibly before the prepare watchers.
     * A failure is logged by the queue, whose puts fail until it recovers. */
    broker_store_flush(cl->bk);
}

static void client_free(struct broker_client *cl)
{
    struct broker *bk = cl->bk;

    ev_timer_stop(tn_loop(), &cl->hb);
    if (cl->dirty) {
        struct broker_client **pp = &bk->dirty;
        for (; *pp; pp = &(*pp)->dnext)
            if (*pp == cl) {
                *pp = cl->dnext;
                break;
            }
    }
    deflate_end(cl);
    free(cl->auth_secret);
    tn_buf_free(&cl->plain_in);
    tn_buf_free(&cl->plain_out);
    if (cl->prev)
        cl->prev->next = cl->next;
    else
        bk->clients = cl->next;
    if (cl->next)
        cl->next->prev = cl->prev;
    bk->nclients--;
    free(cl);
}

static void on_close(struct tn_conn *c, int reason)
{
    struct broker_client *cl = c->data;

    if (!cl)
        return;
    tn_log_debug(BROKER_LOG, "client %s closed: %s", c->peer, tn_strerror(reason));
    cl->conn = NULL;
    broker_client_unsub(cl, now_ms());
    client_free(cl);
    c->data = NULL;
}

static const struct tn_conn_handler proto_handler = {on_read, NULL, NULL, on_close};

int broker_proto_accept(struct tn_listener *l, struct tn_conn *c, void *ud)
{
    struct broker *bk = ud;
    const struct broker_conf *bc = bk->conf;
    struct broker_client *cl;

    if (bk->stopping)
        return TN_ESTOPPED;
    if (!(cl = calloc(1, sizeof(*cl))))
        return TN_ENOMEM;
    cl->bk = bk;
    cl->conn = c;
    cl->id = ++bk->next_client_id;
    cl->msg_timeout = bc->msg_timeout;
    cl->heartbeat = bc->heartbeat_interval;
    cl->obuf_size = OBUF_DEFAULT;
    cl->obuf_timeout = OBUF_TIMEOUT_DEFAULT;
    cl->connect_ts = broker_now() / 1000;
    ev_init(&cl->hb, client_heartbeat);
    cl->hb.data = cl;
    cl->next = bk->clients;
    if (bk->clients)
        bk->clients->prev = cl;
    bk->clients = cl;
    bk->nclients++;
    c->h = &proto_handler;
    c->data = cl;
    heartbeat_arm(cl);
    return 0;
}

void broker_proto_kick(struct broker_client *cl)
{
    if (cl->conn) {
        cl->state = BROKER_CLIENT_CLOSING;
        tn_conn_close_after_write(cl->conn);
    }
}

void broker_proto_close_all(struct broker *bk)
{
    for (struct broker_client *cl = bk->clients; cl; cl = cl->next) {
        ev_timer_stop(tn_loop(), &cl->hb);
        cl->state = BROKER_CLIENT_CLOSING;
        cl->rdy = 0;
        if (cl->conn)
            tn_conn_close(cl->conn, 0);
    }
}
