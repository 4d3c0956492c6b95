/*
 * gateway.h -- internals shared by the files of the gateway module: the
 * configuration, sessions and the transport interface they sit on (TCP,
 * WebSocket; a datagram transport such as KCP plugs in the same way), uid
 * bindings and groups, the Lua hooks, and backend node links. Not
 * installed. Everything here runs on the loop thread.
 */
#ifndef TERND_GATEWAY_H
#define TERND_GATEWAY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <ternd/ternd.h>

#include "codec.h"
#include "kcp.h"

#define GW_LOG "gateway"
#define GW_VERSION "0.1.0"
#define GW_UID_MAX 256  /* bytes of a bound uid */
#define GW_NAME_MAX 256 /* group and node service names */

/* WebSocket close codes, also used as the reason of a stream close. */
enum {
    GW_CLOSE_NORMAL = 1000,
    GW_CLOSE_GOING_AWAY = 1001,
    GW_CLOSE_PROTOCOL = 1002,
    GW_CLOSE_UNSUPPORTED = 1003,
    GW_CLOSE_BAD_DATA = 1007,
    GW_CLOSE_POLICY = 1008,
    GW_CLOSE_TOO_BIG = 1009,
    GW_CLOSE_ERROR = 1011
};

/* ---- configuration ------------------------------------------------------------ */

enum { GW_PROTO_TCP = 1, GW_PROTO_WS = 2, GW_PROTO_KCP = 3 };
enum { GW_SELECT_RR = 0, GW_SELECT_RANDOM = 1, GW_SELECT_WEIGHTED = 2 };

struct gw_listen_conf {
    int proto; /* GW_PROTO_* */
    struct tn_addr addr;
    char *path;             /* ws: the upgrade path ("/ws") */
    struct tn_tls_conf tls; /* cert set: TLS on this listener (tcp+tls, wss) */
    /* kcp: the engine's modes (struct gw_kcp_opts) */
    int kcp_nodelay, kcp_nc;
    int64_t kcp_interval, kcp_resend, kcp_sndwnd, kcp_rcvwnd, kcp_mtu;
};

struct gw_node_addr {
    struct tn_addr addr;
    int64_t weight; /* weighted selection: 1..1000000 */
};

/* One static node service: name -> instances. */
struct gw_node_conf {
    char *name;
    size_t n;
    struct gw_node_addr *v;
};

struct gw_packet_conf {
    int byte_order;      /* 1: big endian */
    int64_t route_bytes; /* 1, 2, 4 */
    int64_t seq_bytes;   /* 0, 1, 2, 4 */
    uint64_t max_size;   /* whole packet, size field included */
};

/* auth: client logins (auth.c) */
struct gw_auth_conf {
    int enabled;       /* new sessions must log in first */
    int64_t route;     /* the route of the login packet */
    int64_t timeout;   /* ms to log in; 0: no deadline */
    int close_on_deny; /* a packet refused by auth.authorize also closes */
};

struct gw_conf {
    size_t nlisten;
    struct gw_listen_conf *listen;
    struct gw_packet_conf packet;
    int64_t heartbeat;         /* ms: the interval clients are expected to keep */
    int64_t heartbeat_timeout; /* ms of silence before a close; 0: 2 x heartbeat */
    int heartbeat_time;        /* answer heartbeats with the server time */
    int64_t max_connections;   /* per listener; 0: only daemon.max_connections */
    uint64_t max_output;       /* bytes queued to one client before it is dropped */
    int ws_deflate;            /* accept permessage-deflate offers */
    int64_t ws_close_timeout;  /* ms to wait for the client's close frame */
    uint64_t ws_compress_min;  /* smallest message worth compressing */
    size_t nnodes;
    struct gw_node_conf *nodes;
    int node_select;              /* GW_SELECT_* */
    int64_t node_retry;           /* ms a failed node instance is skipped */
    int64_t node_connect_timeout; /* ms (covers the TLS handshake too) */
    struct tn_tls_client_conf node_tls; /* enabled: node links run TLS */
    struct tn_lua_conf lua;
    struct gw_auth_conf auth;
};

extern const struct tn_conf_cmd gw_conf_table[];
void gw_conf_default(struct gw_conf *gc);
int gw_conf_check(struct tn_conf *cf, struct gw_conf *gc);
int64_t gw_conf_idle_ms(const struct gw_conf *gc);
void gw_conf_codec(const struct gw_conf *gc, struct gw_codec *c);

/* ---- sessions and transports ------------------------------------------------------ */

struct gw_session;
struct gw;

/*
 * What a session needs from the connection under it. A stream transport
 * (TCP) writes the bytes; a message transport (WebSocket, later KCP) sends
 * one message per packet. close() starts the transport's close handshake;
 * the session ends when the transport calls gw_session_closed().
 */
struct gw_transport {
    const char *name; /* "tcp", "ws" */
    /* Queue one whole packet (the pieces of iov). 0 or a TN_* error. */
    int (*send)(struct gw_session *s, const struct iovec *iov, int n);
    /* code: GW_CLOSE_*; why: for the log and the close frame. */
    void (*close)(struct gw_session *s, int code, const char *why);
    /* "ip:port" of the client. */
    const char *(*addr)(const struct gw_session *s);
    /* The module is going away: the connection must not call back. */
    void (*detach)(struct gw_session *s);
};

struct gw_attr;
struct gw_member;

struct gw_session {
    uint64_t id;
    struct gw *gw;
    const struct gw_transport *tp;
    void *tpdata; /* the transport's connection state */
    char *uid;    /* bound uid, or NULL */
    struct gw_attr *attrs;
    struct gw_member *groups;       /* memberships of this session */
    int32_t route, seq;             /* of the last packet handled: session:reply */
    int closing;                    /* on_connect refused or the transport is gone */
    int tpclosed;                   /* close was asked of the transport */
    int refused;                    /* on_connect said no: no on_disconnect */
    int lref;                       /* registry ref of the Lua session object ... */
    uint64_t lgen;                  /* ... valid for this Lua state generation */
    uint64_t link;                  /* id of the node link last forwarded to, 0: none */
    struct gw_session *prev, *next; /* every session (broadcast) */
    struct gw_auth *auth;           /* login state (auth.c); NULL: auth was off at open */
    struct tn_map_node by_id;       /* in gw->sessions, key: id */
    struct tn_map_node by_uid;      /* in gw->uids while bound, key: uid */
};

/* A new session on transport tp; runs on_connect. NULL when refused (by the
 * hook or out of memory): the caller closes the connection. */
struct gw_session *gw_session_open(struct gw *gw, const struct gw_transport *tp, void *tpdata);
/* The transport is gone: on_disconnect, then everything is released. */
void gw_session_closed(struct gw_session *s);
/* Bytes of one whole packet arrived (a WebSocket message, or a packet cut
 * from a TCP stream): heartbeat answer or on_packet. */
void gw_session_packet(struct gw_session *s, const struct gw_packet *pk);
/* Decode every whole packet in p[0..n); returns the bytes consumed, or a
 * negative error after closing the session (oversize, malformed). */
long gw_session_input(struct gw_session *s, const char *p, size_t n);
/* Send a data packet. 0, TN_EINVAL (route/seq out of range), TN_ETOOBIG,
 * TN_ECLOSED. */
int gw_session_send(struct gw_session *s, int32_t route, int32_t seq, const void *data, size_t len);
void gw_session_close(struct gw_session *s, int code, const char *why);
struct gw_session *gw_session_find(struct gw *gw, uint64_t id);
const char *gw_session_addr(const struct gw_session *s);

int gw_session_bind(struct gw_session *s, const char *uid, size_t len);
void gw_session_unbind(struct gw_session *s);
struct gw_session *gw_uid_find(struct gw *gw, const char *uid, size_t len);

int gw_group_join(struct gw *gw, const char *group, size_t len, struct gw_session *s);
int gw_group_leave(struct gw *gw, const char *group, size_t len, struct gw_session *s);
/* fini: free every group (their sessions are gone). */
void gw_groups_free(struct gw *gw);
/* Send to every member / every session; returns how many got it. */
long gw_group_send(struct gw *gw, const char *group, size_t len, int32_t route, const void *data,
                   size_t dlen);
long gw_broadcast(struct gw *gw, int32_t route, const void *data, size_t dlen);

/* Attributes: values are strings, numbers or booleans kept in C (so they
 * survive a script reload). */
enum { GW_ATTR_STRING = 1, GW_ATTR_INT, GW_ATTR_NUM, GW_ATTR_BOOL };
struct gw_attr {
    struct gw_attr *next;
    int type;
    int64_t i;
    double d;
    size_t len;
    char *str; /* GW_ATTR_STRING value */
    char key[];
};
const struct gw_attr *gw_attr_get(const struct gw_session *s, const char *key);
/* type 0 removes the key. 0 or TN_ENOMEM / TN_ELIMIT (too many attributes). */
int gw_attr_set(struct gw_session *s, const char *key, int type, int64_t i, double d,
                const char *str, size_t len);

/* ---- client logins (auth.c) ------------------------------------------------------- */

struct gw_auth;
extern const struct tn_conf_cmd gw_auth_conf_table[];
void gw_auth_conf_default(struct gw_auth_conf *ac);
void gw_auth_conf_check(struct tn_conf *cf, const struct gw_conf *gc);
/* With auth.enabled, give s its login state and start the login deadline
 * (before on_connect). 0 or TN_ENOMEM. */
int gw_auth_open(struct gw_session *s);
void gw_auth_closed(struct gw_session *s);
/* Handles the login packet and judges the others (replying to and perhaps
 * closing a refused one): 1 when pk goes on to on_packet. */
int gw_auth_packet(struct gw_session *s, const struct gw_packet *pk);
/* May s join group (auth.authorize, subscribe)? 0 or -EACCES. */
int gw_auth_join(struct gw_session *s, const char *group, size_t len);
/* The identity a logged-in session got, else NULL. */
const char *gw_auth_identity(const struct gw_session *s);
void gw_auth_stats(const struct gw *gw, struct tn_stats_out *out);

/* ---- transports ---------------------------------------------------------------- */

int gw_tcp_listen(struct gw *gw, const struct gw_listen_conf *lc);
int gw_ws_listen(struct gw *gw, const struct gw_listen_conf *lc);
void gw_ws_fini(void);
struct gw_kcp_listener;
int gw_kcp_listen(struct gw *gw, const struct gw_listen_conf *lc);
void gw_kcp_opts_from_conf(const struct gw_listen_conf *lc, struct gw_kcp_opts *o);
void gw_kcp_listener_free(struct gw_kcp_listener *kl);
void gw_kcp_stats(struct gw *gw, struct tn_stats_out *out);

/* ---- Lua (luaapi.c) ---------------------------------------------------------------- */

int gw_lua_start(struct gw *gw, const struct tn_lua_conf *lc);
int gw_lua_reload(struct gw *gw, const struct tn_lua_conf *lc);
void gw_lua_stop(struct gw *gw);
int gw_lua_on_connect(struct gw_session *s);
/* Returns 1 and the node name in name (NUL-terminated) when the script
 * asks for the packet to be forwarded, else 0. */
int gw_lua_on_packet(struct gw_session *s, const struct gw_packet *pk, char *name, size_t namelen);
void gw_lua_on_disconnect(struct gw_session *s);

/* ---- backend nodes (node.c) -------------------------------------------------------- */

/*
 * Where a node service's instances come from: the static `nodes:` of the
 * config now, the discovery module's registry (through service.h) when it
 * is there. lookup calls fn for each instance and returns how many.
 */
typedef void (*gw_instance_pt)(const char *addr, int64_t weight, void *arg);
struct gw_registry {
    const char *name;
    long (*lookup)(struct gw *gw, const char *service, gw_instance_pt fn, void *arg);
};
/* The static nodes, then (for names not among them) the discovery
 * module's registry when that module is loaded. */
extern const struct gw_registry gw_default_registry;

int gw_node_forward(struct gw *gw, const char *service, struct gw_session *s,
                    const struct gw_packet *pk);
void gw_node_session_closed(struct gw *gw, struct gw_session *s);
void gw_node_close_all(struct gw *gw);
/* (Re)build the node links' client TLS context from gc (start and reload:
 * links opened from now on use it, open ones keep theirs). On a bad file
 * the previous context stays; TN_EINVAL. */
int gw_node_tls_load(struct gw *gw, const struct gw_conf *gc);

/* ---- the module ------------------------------------------------------------------------ */

struct gw_listener {
    struct gw_listener *next;
    int proto;
    struct tn_listener *tcp;
    struct tn_http_server *http;
    char *path;
    struct gw_kcp_listener *kcp;
    size_t conf_index; /* its entry in gw_conf.listen */
};

struct gw_stats {
    uint64_t packets_in, packets_out, heartbeats, oversize, bad_packets, forwarded, forward_failed,
        node_frames, connections;
};

struct gw {
    struct tn_mod *mod;
    const struct gw_conf *conf; /* the current generation's */
    struct gw_codec codec;      /* fixed at start (packet layout of live sessions) */
    int64_t idle_ms;
    struct gw_listener *listeners;
    struct tn_map sessions; /* id -> session (by_id) */
    struct tn_map uids;     /* uid -> session (by_uid) */
    struct tn_map groups;   /* name -> struct gw_group */
    struct gw_session *all; /* list of every session */
    size_t nsessions;
    uint64_t next_id;
    int stopping;
    /* Lua */
    struct tn_lua *lua;
    uint64_t lgen; /* bumped on every new Lua state */
    /* nodes */
    const struct gw_registry *registry;
    struct tn_map links; /* "addr" -> struct gw_link */
    struct tn_map rr;    /* service -> round-robin counter */
    struct tn_tls_ctx *node_tls; /* new links handshake with it; NULL: plaintext */
    uint64_t next_link_id;
    struct gw_stats st;
    struct {
        uint64_t accepted, refused, timeouts, denied;
        int warned; /* logged that no plugin answers auth.check */
    } auth_st;
};

#endif
