/*
 * zmtp_peer.h -- what zmtp_bind.c (ZeroMQ connections mapped onto topics
 * and channels) and mdp.c (the Majordomo broker) share: listeners, peers
 * and the calls to send a multipart message. Loop thread only.
 */
#ifndef TERND_ZMTP_PEER_H
#define TERND_ZMTP_PEER_H

#include "broker.h"
#include "zmtp.h"

#define ZMTP_MAX_FRAMES 64 /* frames in one incoming message */
#define ZMTP_RID_MAX 255   /* routing ids (ROUTER), as ZMTP identities */

/* One frame of a message: points into the connection's input buffer (for
 * received messages, valid during the call) or into the caller's memory. */
struct zmtp_part {
    const uint8_t *p;
    size_t len;
};

struct mdp;
struct mdp_worker;
struct broker_zmtp;
struct zmtp_peer;

struct zmtp_listener {
    struct broker_zmtp *z;
    struct broker_zmtp_conf cf;      /* copied: the config may be reloaded */
    char topic[BROKER_NAME_MAX + 1]; /* "" when frame 1 names it (pub/push) */
    char channel[BROKER_NAME_MAX + 1];
    char name[TN_ADDR_TEXT_MAX]; /* the configured listen address */
    const char *our_type;        /* Socket-Type we announce */
    struct tn_listener *l;
    struct zmtp_peer *peers;
    size_t npeers;
    struct mdp *mdp;       /* router listeners */
    struct tn_buf scratch; /* joining multipart bodies */
    uint64_t received, published, sent, dropped, refused;
};

/* A message in a connection's output buffer: where it ends in the stream
 * of bytes sent on the connection (it is written out once c->bytes_out
 * reaches that), and the store's ID of a PULL delivery (FIN then). */
struct zmtp_pend {
    uint64_t end;
    uint64_t id;
};

/* A subscription prefix of a SUB peer, counted (ZMTP: subscribing twice
 * needs two cancels). */
struct zmtp_sub {
    uint8_t *prefix;
    size_t len;
    uint32_t count;
};

enum { ZMTP_SIG = 0, ZMTP_GREET, ZMTP_HANDSHAKE, ZMTP_OPEN };

struct zmtp_peer {
    struct zmtp_listener *zl;
    struct tn_conn *conn;
    struct zmtp_peer *prev, *next; /* the listener's peers */
    struct zmtp_peer *fnext;       /* the finish list (SUB peers) */
    int on_fin_list;
    int state, minor;
    uint8_t rid[ZMTP_RID_MAX]; /* routing id (router listeners) */
    size_t ridlen;
    struct zmtp_sub *subs;
    size_t nsubs, capsubs;
    struct broker_client *bc; /* sub and pull peers: the consumer */
    struct zmtp_pend *pend;   /* messages in the output buffer, oldest first */
    size_t pcap, phead, pn;   /* (a ring; pn of them are not yet written out) */
    uint64_t dropped;
    int dropping;              /* over hwm right now (logged once per episode) */
    struct mdp_worker *worker; /* router: this peer is a Majordomo worker */
};

struct broker_zmtp {
    struct broker *bk;
    struct zmtp_listener *ls;
    size_t nls;
    struct zmtp_peer *fin; /* SUB peers holding messages to finish */
    ev_prepare prepare;
    uint32_t next_rid;
};

/* Queue a multipart message for p, unless p is over its hwm: 0, or
 * TN_ELIMIT (dropped and counted), TN_ECLOSED. */
int zmtp_peer_send(struct zmtp_peer *p, const struct zmtp_part *parts, size_t n);
/* The peer of a router listener with routing id rid, or NULL. */
struct zmtp_peer *zmtp_peer_find(struct zmtp_listener *zl, const uint8_t *rid, size_t n);

/* mdp.c: the Majordomo broker of one router listener. */
struct mdp *mdp_create(struct zmtp_listener *zl);
void mdp_free(struct mdp *m);
/* A message from a client or worker (frames as received). */
void mdp_message(struct mdp *m, struct zmtp_peer *p, const struct zmtp_part *f, size_t n);
/* The peer is going away: forget it as a worker or client. */
void mdp_peer_gone(struct mdp *m, struct zmtp_peer *p);
void mdp_stats(struct mdp *m, struct tn_stats_out *out, const char **labels);

#endif
