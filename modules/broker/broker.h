/*
 * broker.h -- internals shared by the files of the broker module: the
 * configuration, the message store (topics, channels, queues, in-flight and
 * deferred messages), consumers, and the entry points each file offers the
 * others. Not installed; other modules use tn_broker.h through service.h.
 * Everything here runs on the loop thread.
 */
#ifndef TERND_BROKER_H
#define TERND_BROKER_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <ternd/ternd.h>
#include <zlib.h>

#include "diskq.h"
#include "tn_broker.h"

#define BROKER_LOG "broker"
#define BROKER_NAME_MAX 64   /* topic and channel names, as nsqd */
#define BROKER_ID_LEN 16     /* message IDs on the wire: 16 hex digits */
#define BROKER_MSG_HEADER 26 /* timestamp 8 + attempts 2 + ID 16 */
#define BROKER_VERSION "1.3.0-ternd"

enum { BROKER_FRAME_RESPONSE = 0, BROKER_FRAME_ERROR = 1, BROKER_FRAME_MESSAGE = 2 };

/* ---- configuration -------------------------------------------------------- */

/* Dead-letter policy of one channel name (or "topic/channel"). */
struct broker_policy {
    char *name;
    int64_t max_attempts;    /* 0: unlimited */
    char *dead_letter_topic; /* NULL: messages over max_attempts are dropped */
};

struct broker_policies {
    size_t n;
    struct broker_policy *v;
};

/* One broker.zmtp listener (zmtp_bind.c): which peer sockets it accepts
 * and what it maps them onto. */
enum {
    BROKER_ZMTP_PUB = 1, /* PUB peers publish into a topic */
    BROKER_ZMTP_PUSH,    /* PUSH peers publish into a topic */
    BROKER_ZMTP_SUB,     /* SUB peers receive a topic, prefix-filtered */
    BROKER_ZMTP_PULL,    /* PULL peers consume a channel, load-balanced */
    BROKER_ZMTP_ROUTER   /* Majordomo (7/MDP) clients and workers */
};

struct broker_zmtp_conf {
    struct tn_addr listen;
    int type;                /* BROKER_ZMTP_* */
    char *topic;             /* NULL: pub/push name the topic in frame 1 */
    char *channel;           /* pull: the channel consumed */
    int64_t hwm;             /* messages queued per connection */
    int64_t heartbeat;       /* ms; router: MDP heartbeat interval */
    int64_t request_timeout; /* ms; router: requests waiting for a worker */
};

struct broker_zmtp_list {
    size_t n;
    struct broker_zmtp_conf *v;
};

struct broker_conf {
    struct tn_addr tcp_listen;
    struct tn_addr http_listen;
    struct tn_addr https_listen; /* the HTTP API over TLS (len 0: off) */
    struct tn_tls_conf tls;      /* TCP tls_v1 upgrade and https_listen */
    int tls_required;            /* TCP: no command but IDENTIFY before TLS */
    char *data_dir;              /* NULL: <daemon.data_dir>/broker */
    int64_t mem_queue_size;      /* messages in memory per topic and per channel */
    uint64_t max_msg_size;       /* bytes */
    uint64_t max_body_size;      /* bytes (MPUB, IDENTIFY, AUTH bodies) */
    int64_t max_rdy_count;
    int64_t msg_timeout;               /* ms */
    int64_t max_msg_timeout;           /* ms */
    int64_t max_req_timeout;           /* ms; also the largest DPUB / defer */
    int64_t heartbeat_interval;        /* ms, the default a client gets */
    int64_t max_heartbeat_interval;    /* ms */
    uint64_t max_output_buffer_size;   /* bytes */
    int64_t max_output_buffer_timeout; /* ms */
    int64_t sync_every;                /* disk queue operations between fsyncs */
    int64_t sync_timeout;              /* ms */
    uint64_t max_bytes_per_file;       /* disk queue segment size */
    int64_t max_channel_consumers;     /* 0: unlimited */
    int deflate;                       /* offer deflate in IDENTIFY */
    int64_t max_deflate_level;         /* 1..9 */
    int64_t queue_scan_interval;       /* ms between in-flight/deferred scans */
    int64_t max_connections;           /* TCP consumers+producers, 0: unlimited */
    int64_t node_id;                   /* 0..1023, part of every message ID */
    int auth;                          /* AUTH checked through the "auth.check" event */
    int64_t max_attempts;              /* default per-channel policy; 0: unlimited */
    char *dead_letter_topic;           /* default per-channel policy */
    struct broker_policies channels;   /* per-channel policies */
    struct tn_addr_list lookupd;       /* directories to register with */
    char *broadcast_address;           /* announced to them; NULL: the hostname */
    int64_t lookupd_interval;          /* ms between PINGs, longest reconnect delay */
    struct tn_lua_conf lua;
    struct broker_zmtp_list zmtp; /* ZeroMQ endpoints (zmtp_bind.c) */
};

extern const struct tn_conf_cmd broker_conf_table[];
void broker_conf_default(struct broker_conf *bc);
int broker_conf_check(struct tn_conf *cf, struct broker_conf *bc);

/* ---- messages -------------------------------------------------------------- */

/* One published message; shared (reference counted) by every channel it
 * fans out to, so a fan-out copies no body. The body follows the struct. */
struct broker_msg {
    uint64_t id;
    int64_t ts; /* ns since the epoch, when published */
    uint32_t refs;
    uint32_t len;
    char body[];
};

enum { BROKER_ENT_NONE = 0, BROKER_ENT_QUEUED, BROKER_ENT_INFLIGHT, BROKER_ENT_DEFERRED };

struct broker_client;

/* A message's place in one topic or channel queue. Entries are recycled
 * through a free list, so the steady state allocates only the messages. */
struct broker_ent {
    struct broker_msg *msg;
    union {                       /* an entry is in one of them at a time: */
        struct broker_ent *next;  /* FIFO link (or free-list link) */
        struct broker_ent *hnext; /* in-flight ID map chain */
    };
    struct broker_ent *cprev, *cnext; /* the owner client's in-flight list */
    struct broker_client *client;     /* owner while in flight */
    int64_t when;                     /* ms: in-flight deadline / deferred due time */
    int64_t delivered;                /* ms: last delivery (TOUCH's cap) */
    /* the disk record the entry was read from (the channel's, or briefly
     * the topic's), kept until the message is finished or stored again
     * (store.c, ent_done); NULL for a message that never left memory, so
     * memory entries stay at their size */
    struct tn_diskq_hold *hold;
    uint32_t hidx; /* position in the heap it is in */
    uint16_t attempts;
    uint8_t state; /* BROKER_ENT_* */
};

struct broker_fifo {
    struct broker_ent *head, *tail;
    size_t n;
};

/* Binary min-heap of entries ordered by `when` (a copy of the entry's,
 * kept in the slot so sifting does not chase pointers). */
struct broker_heap_slot {
    int64_t when;
    struct broker_ent *e;
};

struct broker_heap {
    struct broker_heap_slot *v;
    size_t n, cap;
};

/* Message ID -> in-flight entry. */
struct broker_idmap {
    struct broker_ent **b;
    size_t mask, n;
};

/* The on-disk record of a message (in a disk queue record):
 *   [1B version][16B id][8B ts ns][2B attempts][8B deferred-until ms][body]
 * all integers big-endian; the id as its 16 hex digits. */
#define BROKER_REC_VERSION 1
#define BROKER_REC_HEADER 35

/* ---- topics and channels ----------------------------------------------------- */

struct broker;
struct broker_topic;

struct broker_channel {
    struct broker_topic *topic;
    struct broker_channel *next; /* the topic's channel list */
    char name[BROKER_NAME_MAX + 1];
    int ephemeral, paused;
    struct broker_fifo mem;
    struct tn_diskq *dq; /* NULL for #ephemeral channels: overflow is dropped */
    struct broker_heap inflight, deferred;
    struct broker_idmap ids;
    struct broker_client **clients;
    size_t nclients, capclients, rr;
    int64_t max_attempts;
    const char *dead_letter_topic;
    uint64_t message_count, requeue_count, timeout_count, dead_count, dropped_count;
};

struct broker_topic {
    struct broker *bk;
    struct tn_map_node node; /* in bk->topics, key: name */
    char name[BROKER_NAME_MAX + 1];
    int ephemeral, paused;
    struct broker_fifo mem;
    struct tn_diskq *dq;
    struct broker_channel *channels;
    size_t nchannels;
    uint64_t message_count, message_bytes, dropped_count;
};

/* ---- consumers and producers (TCP clients) ------------------------------------ */

enum { BROKER_CLIENT_INIT = 0, BROKER_CLIENT_SUBSCRIBED, BROKER_CLIENT_CLOSING };

struct broker_client {
    struct broker *bk;
    struct tn_conn *conn;              /* NULL once the connection is gone */
    struct broker_client *prev, *next; /* the broker's client list */
    struct broker_client *dnext;       /* deflate flush list */
    uint64_t id;
    int state;
    int magic_ok;
    int identified;
    struct broker_channel *ch;
    int64_t rdy;
    uint64_t inflight;
    struct broker_ent *ifl; /* in-flight entries owned by this client */
    int64_t msg_timeout;    /* ms */
    int64_t heartbeat;      /* ms, 0: off */
    int64_t obuf_size, obuf_timeout;
    int sample_rate;
    int feature_negotiation;
    int tls; /* upgraded (tls_v1): every command after IDENTIFY came over TLS */
    int deflate, deflate_level, dirty;
    int zpending; /* zlib may hold inflated bytes not yet handed out */
    z_stream zin, zout;
    struct tn_buf plain_in;  /* inflated input (deflate) */
    struct tn_buf plain_out; /* frames waiting to be deflated */
    ev_timer hb;
    char client_id[256], hostname[256], user_agent[256];
    char auth_identity[256];
    char auth_authority[64]; /* the plugin that accepted the secret */
    char *auth_secret;       /* kept for the auth.authorize events (malloc) */
    size_t auth_secret_len;
    int authed;
    int64_t connect_ts; /* seconds since the epoch */
    uint64_t message_count, finish_count, requeue_count, pub_count;
};

/* ---- the broker ------------------------------------------------------------------ */

struct broker_lua;
struct broker_lookupd;
struct tn_discovery_service;
struct tn_discovery_producer;

struct broker {
    struct tn_mod *mod;
    const struct broker_conf *conf; /* == mod->conf; refreshed on reload */
    char dir[4096];                 /* data directory of the disk queues */
    struct tn_map topics;           /* by name; .n: how many */
    struct broker_ent *ent_free;
    size_t nfree;
    struct tn_diskq_hold *hold_free; /* recycled holds (linked by their next) */
    size_t nhold_free;
    struct tn_diskq_group dq_group; /* every disk queue: records buffered until a flush */
    uint64_t id_ms, id_seq;
    struct tn_listener *listener;
    struct tn_http_server *http;
    struct tn_http_server *https;
    struct tn_tls_ctx *tls; /* NULL: TLS not configured */
    struct broker_lua *hook;
    struct broker_client *clients;
    size_t nclients;
    struct broker_client *dirty;
    uint64_t next_client_id;
    ev_timer scan;
    ev_prepare prepare;
    int meta_dirty;
    int meta_loaded; /* meta.json was read (or absent): it may be written */
    int stopping;
    int64_t start_time; /* seconds since the epoch */
    /* delivery: write one message frame to a client (proto.c; tests stub it) */
    void (*send_msg)(struct broker_client *c, const struct broker_ent *e);
    /* a channel the client is on went away: close the client */
    void (*kick)(struct broker_client *c);
    /* a topic or channel (NULL: the topic) was created (reg 1) or deleted
     * (reg 0): tell the directories (lookupd.c) */
    void (*announce)(struct broker *bk, int reg, const char *topic, const char *channel);
    struct broker_lookupd *lookupd;
    /* the discovery module of this process, while it runs (local.c) */
    const struct tn_discovery_service *disc;
    struct tn_discovery_producer *disc_producer;
    int disc_watching; /* subscribed to the service events */
    uint64_t published, dropped_by_hook, dead_lettered;
    struct broker_zmtp *zmtp; /* the ZeroMQ endpoints while they run */
};

/* ---- store.c ----------------------------------------------------------------------- */

/* Is s (n bytes) a valid topic or channel name: [.a-zA-Z0-9_-]+ with an
 * optional "#ephemeral" suffix, 1..64 bytes? */
int broker_name_valid(const char *s, size_t n);
int broker_name_ephemeral(const char *s, size_t n);

void broker_store_init(struct broker *bk);
/* Free every topic, channel and message (no disk writes). */
void broker_store_free(struct broker *bk);

uint64_t broker_next_id(struct broker *bk, int64_t now_ms);
void broker_id_hex(uint64_t id, char out[BROKER_ID_LEN]);
/* 0 and *id, or -1 when s is not 16 hex digits. */
int broker_id_parse(const char *s, size_t n, uint64_t *id);

/* A new message with refs 1 (NULL when out of memory). */
struct broker_msg *broker_msg_new(uint64_t id, int64_t ts, const void *body, size_t len);
void broker_msg_unref(struct broker_msg *m);

/* Records in the disk queues. encode writes the header into hdr. */
void broker_rec_header(char hdr[BROKER_REC_HEADER], const struct broker_msg *m, uint16_t attempts,
                       int64_t defer_until);
/* Decode a record: a new message, its attempts and deferral; NULL when the
 * record is malformed (or out of memory). */
struct broker_msg *broker_rec_decode(const void *p, size_t len, uint16_t *attempts,
                                     int64_t *defer_until);

struct broker_topic *broker_topic_find(struct broker *bk, const char *name);
/* Find or create (name already validated). NULL and *err on failure. */
struct broker_topic *broker_topic_get(struct broker *bk, const char *name, int *err);
void broker_topic_delete(struct broker_topic *t);
void broker_topic_empty(struct broker_topic *t);
void broker_topic_pause(struct broker_topic *t, int paused, int64_t now);
/* Queue a message (takes the caller's reference). defer_until: ms or 0. */
int broker_topic_put(struct broker_topic *t, struct broker_msg *m, int64_t defer_until,
                     int64_t now);
/* Move what waits in the topic to its channels (when it has channels and
 * is not paused). */
void broker_topic_pump(struct broker_topic *t, int64_t now);
uint64_t broker_topic_depth(const struct broker_topic *t);

struct broker_channel *broker_channel_find(struct broker_topic *t, const char *name);
struct broker_channel *broker_channel_get(struct broker_topic *t, const char *name, int64_t now,
                                          int *err);
void broker_channel_delete(struct broker_channel *ch);
void broker_channel_empty(struct broker_channel *ch);
void broker_channel_pause(struct broker_channel *ch, int paused, int64_t now);
uint64_t broker_channel_depth(const struct broker_channel *ch);
/* Deliver to ready clients while there are messages. */
void broker_channel_pump(struct broker_channel *ch, int64_t now);

/* Consumers. sub: TN_ELIMIT when max_channel_consumers is reached. */
int broker_client_sub(struct broker_client *c, struct broker_channel *ch, int64_t now);
/* Leave the channel: requeue what the client holds in flight. */
void broker_client_unsub(struct broker_client *c, int64_t now);
void broker_client_set_rdy(struct broker_client *c, int64_t rdy, int64_t now);

/* FIN / REQ / TOUCH: 0, or TN_ENOTFOUND ("ID not in flight"), TN_EINVAL
 * ("client does not own message"). */
int broker_fin(struct broker_client *c, uint64_t id, int64_t now);
int broker_req(struct broker_client *c, uint64_t id, int64_t delay_ms, int64_t now);
int broker_touch(struct broker_client *c, uint64_t id, int64_t now);

/* Time out in-flight messages and release deferred ones that are due. */
void broker_scan(struct broker *bk, int64_t now);
/* Stop: write memory, deferred and in-flight messages to the disk queues
 * and close them (SIGTERM). Returns the number of messages written. */
uint64_t broker_store_persist(struct broker *bk, int64_t now);
/* Re-read every channel's dead-letter policy (after a reload). */
void broker_store_policies(struct broker *bk);
/* Sync the disk queues whose sync timeout has passed. */
void broker_store_sync_due(struct broker *bk);
/* Write the records the disk queues buffered (one write per queue): due
 * before anything that acknowledges a publish can reach a socket. 0 or
 * the first -errno (the records stay buffered and are retried). */
int broker_store_flush(struct broker *bk);

/* Iterate topics: for (t = broker_topic_first(bk); t; t = broker_topic_next(bk, t)) */
struct broker_topic *broker_topic_first(struct broker *bk);
struct broker_topic *broker_topic_next(struct broker *bk, struct broker_topic *t);

/* ---- broker.c ------------------------------------------------------------------------ */

extern struct broker *broker_self;
/* Publish through the Lua hook and events: the one way in for PUB, MPUB,
 * DPUB, HTTP, Lua and the service. Copies body. 0, TN_EINVAL (bad topic),
 * TN_ETOOBIG, TN_ESTOPPED, TN_ENOMEM. A message the hook drops counts as
 * published (0). */
int broker_publish(struct broker *bk, const char *topic, const void *body, size_t len,
                   int64_t defer_ms, int hook);
/* Persist topics/channels/paused at the end of this loop iteration. */
void broker_meta_changed(struct broker *bk);
int64_t broker_now(void); /* wall-clock ms */

/* ---- proto.c: TCP protocol V2 ---------------------------------------------------------- */

int broker_proto_accept(struct tn_listener *l, struct tn_conn *c, void *ud);
void broker_proto_send_msg(struct broker_client *c, const struct broker_ent *e);
void broker_proto_kick(struct broker_client *c);
void broker_proto_flush(struct broker *bk);
void broker_proto_close_all(struct broker *bk);

/* ---- zmtp_bind.c, mdp.c: ZeroMQ endpoints (broker.zmtp) ------------------------------ */

/* The broker.zmtp key (a sequence of listener mappings). */
int broker_zmtp_conf_set(struct tn_conf *cf, const struct tn_conf_node *node,
                         const struct tn_conf_cmd *cmd, void *conf);
/* Do two broker.zmtp lists differ (reload: the listeners keep running)? */
int broker_zmtp_conf_changed(const struct broker_zmtp_list *a, const struct broker_zmtp_list *b);
/* bk->send_msg / bk->kick: ZeroMQ consumers are handled here, NSQ ones
 * are passed on to proto.c. */
void broker_zmtp_send_msg(struct broker_client *c, const struct broker_ent *e);
void broker_zmtp_kick(struct broker_client *c);
/* Open the listeners (start) / close them and every ZeroMQ connection,
 * handing in-flight messages back to their channels (stop). */
int broker_zmtp_start(struct broker *bk);
void broker_zmtp_stop(struct broker *bk);
void broker_zmtp_stats(struct broker *bk, struct tn_stats_out *out);

/* ---- http.c: HTTP API -------------------------------------------------------------------- */

int broker_http_routes(struct broker *bk, struct tn_http_server *s);
/* Serve (on) or stop serving the admin dashboard's actions (TN_ADMIN_HTTP_EVENT). */
int broker_http_dashboard(struct broker *bk, int on);

/* ---- lookupd.c: registration with nsqlookupd-compatible directories ---- */

/* Connect to every broker.lookupd address (after the listeners started:
 * their ports are announced) except the one listening at local_tcp. */
int broker_lookupd_start(struct broker *bk, const char *local_tcp);
void broker_lookupd_stop(struct broker *bk);
void broker_lookupd_free(struct broker *bk);
/* bk->announce: every connected directory and the in-process one. */
void broker_lookupd_announce(struct broker *bk, int reg, const char *topic, const char *channel);
/* What a directory is told on (re)connecting: each channel of a topic, or
 * the topic alone when it has none (as nsqd). */
void broker_lookupd_each(struct broker *bk,
                         void (*fn)(void *ud, const char *topic, const char *channel), void *ud);
/* The in-process discovery listens on local_tcp (NULL: none runs): stop
 * (or resume) the TCP registration with the broker.lookupd entries that
 * name it, so the broker is registered there once. */
void broker_lookupd_local(struct broker *bk, const char *local_tcp);

/* ---- local.c: registration with the discovery module of this process ---- */

/* Register through the "discovery.registry" service now or whenever it
 * comes up (discovery listed after the broker, or added by a reload). */
int broker_local_start(struct broker *bk);
void broker_local_stop(struct broker *bk);
/* The TCP address of the in-process discovery we registered with, or NULL. */
const char *broker_local_tcp(struct broker *bk);
void broker_local_announce(struct broker *bk, int reg, const char *topic, const char *channel);
/* The address announced (broadcast_address or the hostname), and the
 * ports actually bound (0 when that listener is off). */
const char *broker_broadcast_address(struct broker *bk);
int broker_tcp_port(struct broker *bk);
int broker_http_port(struct broker *bk);

/* ---- hook.c: Lua ---------------------------------------------------------------------------- */

struct broker_lua *broker_hook_create(struct broker *bk, const struct tn_lua_conf *lc);
int broker_hook_reload(struct broker_lua *h, const struct tn_lua_conf *lc);
void broker_hook_destroy(struct broker_lua *h);
/* Run on_publish: 0 = pass (maybe with a new topic/body in *topic_out /
 * *body_out, owned by the hook until the next call), 1 = drop. */
int broker_hook_publish(struct broker_lua *h, const char *topic, const void *body, size_t len,
                        const char **topic_out, const void **body_out, size_t *len_out);
uint64_t broker_hook_errors(const struct broker_lua *h);
/* ternd.broker in every Lua state built on the loop thread (start / stop). */
int broker_hook_add_opener(void);
void broker_hook_remove_opener(void);

#endif
