/*
 * store.c -- the broker's message store, nsqd's model on one thread: a topic
 * fans every message out to each of its channels; a channel hands each
 * message to one ready consumer, keeps it in flight until FIN, and requeues
 * it on REQ, timeout or disconnect. Each topic and channel keeps up to
 * mem_queue_size messages in memory and overflows to a disk queue.
 *
 * Messages are reference counted: a fan-out to N channels shares one body.
 * Time is wall-clock milliseconds passed in by the caller (`now`), so the
 * logic here has no clock and no event loop and is unit-tested directly.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

#define EPHEMERAL_SUFFIX "#ephemeral"
#define EPHEMERAL_LEN 10
#define ENT_FREE_MAX 65536 /* entries kept for reuse */

/* ---- names and IDs ---------------------------------------------------------- */

int broker_name_ephemeral(const char *s, size_t n)
{
    return n > EPHEMERAL_LEN && memcmp(s + n - EPHEMERAL_LEN, EPHEMERAL_SUFFIX, EPHEMERAL_LEN) == 0;
}

int broker_name_valid(const char *s, size_t n)
{
    size_t base = n;

    if (n < 1 || n > BROKER_NAME_MAX)
        return 0;
    if (broker_name_ephemeral(s, n))
        base = n - EPHEMERAL_LEN;
    for (size_t i = 0; i < base; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

/* Like nsqd's: milliseconds << 22 | node << 12 | sequence. When more than
 * 4096 IDs are asked within one millisecond the clock part runs ahead, so
 * IDs stay unique and increasing. */
uint64_t broker_next_id(struct broker *bk, int64_t now_ms)
{
    uint64_t ms = (uint64_t)now_ms;
    uint64_t node = bk->conf ? (uint64_t)bk->conf->node_id & 0x3ff : 0;

    if (ms > bk->id_ms) {
        bk->id_ms = ms;
        bk->id_seq = 0;
    } else if (++bk->id_seq > 0xfff) {
        bk->id_ms++;
        bk->id_seq = 0;
    }
    return (bk->id_ms << 22) | (node << 12) | bk->id_seq;
}

void broker_id_hex(uint64_t id, char out[BROKER_ID_LEN])
{
    static const char hex[] = "0123456789abcdef";

    for (int i = BROKER_ID_LEN - 1; i >= 0; i--) {
        out[i] = hex[id & 0xf];
        id >>= 4;
    }
}

int broker_id_parse(const char *s, size_t n, uint64_t *id)
{
    uint64_t v = 0;

    if (n != BROKER_ID_LEN)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        int d;
        if (ch >= '0' && ch <= '9')
            d = ch - '0';
        else if (ch >= 'a' && ch <= 'f')
            d = ch - 'a' + 10;
        else if (ch >= 'A' && ch <= 'F')
            d = ch - 'A' + 10;
        else
            return -1;
        v = (v << 4) | (uint64_t)d;
    }
    *id = v;
    return 0;
}

/* ---- messages and records ------------------------------------------------------ */

struct broker_msg *broker_msg_new(uint64_t id, int64_t ts, const void *body, size_t len)
{
    struct broker_msg *m;

    if (len > UINT32_MAX)
        return NULL;
    m = malloc(sizeof(*m) + len);
    if (!m)
        return NULL;
    m->id = id;
    m->ts = ts;
    m->refs = 1;
    m->len = (uint32_t)len;
    if (len)
        memcpy(m->body, body, len);
    return m;
}

void broker_msg_unref(struct broker_msg *m)
{
    if (m && --m->refs == 0)
        free(m);
}

static void put_be64(char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (char)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

void broker_rec_header(char hdr[BROKER_REC_HEADER], const struct broker_msg *m, uint16_t attempts,
                       int64_t defer_until)
{
    hdr[0] = BROKER_REC_VERSION;
    broker_id_hex(m->id, hdr + 1);
    put_be64(hdr + 17, (uint64_t)m->ts);
    hdr[25] = (char)(attempts >> 8);
    hdr[26] = (char)(attempts & 0xff);
    put_be64(hdr + 27, (uint64_t)defer_until);
}

struct broker_msg *broker_rec_decode(const void *p, size_t len, uint16_t *attempts,
                                     int64_t *defer_until)
{
    const unsigned char *u = p;
    uint64_t id;

    if (len < BROKER_REC_HEADER || u[0] != BROKER_REC_VERSION ||
        broker_id_parse((const char *)u + 1, BROKER_ID_LEN, &id) != 0)
        return NULL;
    *attempts = (uint16_t)((u[25] << 8) | u[26]);
    *defer_until = (int64_t)get_be64(u + 27);
    return broker_msg_new(id, (int64_t)get_be64(u + 17), u + BROKER_REC_HEADER,
                          len - BROKER_REC_HEADER);
}

/* ---- entries, FIFOs, heaps, the ID map ------------------------------------------ */

static struct broker_ent *ent_new(struct broker *bk, struct broker_msg *m, uint16_t attempts)
{
    struct broker_ent *e = bk->ent_free;

    if (e) {
        bk->ent_free = e->next;
        bk->nfree--;
    } else if (!(e = malloc(sizeof(*e)))) {
        return NULL;
    }
    memset(e, 0, sizeof(*e));
    e->msg = m;
    e->attempts = attempts;
    return e;
}

/* A hold for a record read from disk: recycled, so the disk path's
 * steady state allocates only the messages. NULL when out of memory. */
static struct tn_diskq_hold *hold_new(struct broker *bk)
{
    struct tn_diskq_hold *h = bk->hold_free;

    if (h) {
        bk->hold_free = h->next;
        bk->nhold_free--;
    } else if (!(h = malloc(sizeof(*h)))) {
        return NULL;
    }
    memset(h, 0, sizeof(*h));
    return h;
}

/* Drop the entry, its message reference and its hold (released already,
 * or its queue closed, emptied or deleted). */
static void ent_free(struct broker *bk, struct broker_ent *e)
{
    broker_msg_unref(e->msg);
    if (e->hold) {
        if (bk->nhold_free < ENT_FREE_MAX) {
            e->hold->next = bk->hold_free;
            bk->hold_free = e->hold;
            bk->nhold_free++;
        } else {
            free(e->hold);
        }
        e->hold = NULL;
    }
    if (bk->nfree >= ENT_FREE_MAX) {
        free(e);
        return;
    }
    e->msg = NULL;
    e->next = bk->ent_free;
    bk->ent_free = e;
    bk->nfree++;
}

/* The entry's message is dealt with for good in ch (finished, stored
 * again, dead-lettered or dropped on purpose): the disk record it came
 * from, if any, may go. Then the entry is freed. */
static void ent_done(struct broker_channel *ch, struct broker_ent *e)
{
    if (ch->dq && e->hold)
        tn_diskq_release(ch->dq, e->hold);
    ent_free(ch->topic->bk, e);
}

static void fifo_push(struct broker_fifo *f, struct broker_ent *e)
{
    e->next = NULL;
    if (f->tail)
        f->tail->next = e;
    else
        f->head = e;
    f->tail = e;
    f->n++;
}

static struct broker_ent *fifo_pop(struct broker_fifo *f)
{
    struct broker_ent *e = f->head;

    if (!e)
        return NULL;
    f->head = e->next;
    if (!f->head)
        f->tail = NULL;
    f->n--;
    e->next = NULL;
    return e;
}

/* Sift with a hole: slots carry the key, so comparisons touch only the
 * array, never the entries (the in-flight heap is walked on every FIN). */
static void heap_set(struct broker_heap *h, size_t i, struct broker_heap_slot s)
{
    h->v[i] = s;
    s.e->hidx = (uint32_t)i;
}

static void heap_up(struct broker_heap *h, size_t i)
{
    struct broker_heap_slot s = h->v[i];

    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h->v[p].when <= s.when)
            break;
        heap_set(h, i, h->v[p]);
        i = p;
    }
    heap_set(h, i, s);
}

static void heap_down(struct broker_heap *h, size_t i)
{
    struct broker_heap_slot s = h->v[i];

    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = l;
        if (l >= h->n)
            break;
        if (r < h->n && h->v[r].when < h->v[l].when)
            m = r;
        if (s.when <= h->v[m].when)
            break;
        heap_set(h, i, h->v[m]);
        i = m;
    }
    heap_set(h, i, s);
}

static int heap_push(struct broker_heap *h, struct broker_ent *e)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct broker_heap_slot *v = realloc(h->v, cap * sizeof(*v));
        if (!v)
            return TN_ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    h->v[h->n].when = e->when;
    h->v[h->n].e = e;
    h->n++;
    heap_up(h, h->n - 1);
    return 0;
}

static void heap_remove(struct broker_heap *h, struct broker_ent *e)
{
    size_t i = e->hidx;

    h->n--;
    if (i != h->n) {
        struct broker_ent *moved = h->v[h->n].e;
        heap_set(h, i, h->v[h->n]);
        heap_up(h, i);
        heap_down(h, moved->hidx);
    }
}

/* The entry's `when` changed: restore the heap order. */
static void heap_fix(struct broker_heap *h, struct broker_ent *e)
{
    h->v[e->hidx].when = e->when;
    heap_up(h, e->hidx);
    heap_down(h, e->hidx);
}

static size_t id_slot(const struct broker_idmap *m, uint64_t id)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    return (size_t)id & m->mask;
}

static int idmap_grow(struct broker_idmap *m)
{
    size_t nsize = m->b ? (m->mask + 1) * 2 : 64;
    struct broker_ent **nb = calloc(nsize, sizeof(*nb));
    struct broker_idmap old = *m;

    if (!nb)
        return TN_ENOMEM;
    m->b = nb;
    m->mask = nsize - 1;
    for (size_t i = 0; old.b && i <= old.mask; i++) {
        struct broker_ent *e = old.b[i], *nx;
        for (; e; e = nx) {
            size_t s = id_slot(m, e->msg->id);
            nx = e->hnext;
            e->hnext = m->b[s];
            m->b[s] = e;
        }
    }
    free(old.b);
    return 0;
}

static int idmap_add(struct broker_idmap *m, struct broker_ent *e)
{
    size_t s;

    if ((!m->b || m->n >= m->mask + 1) && idmap_grow(m) != 0 && !m->b)
        return TN_ENOMEM;
    s = id_slot(m, e->msg->id);
    e->hnext = m->b[s];
    m->b[s] = e;
    m->n++;
    return 0;
}

static struct broker_ent *idmap_find(const struct broker_idmap *m, uint64_t id)
{
    if (!m->b)
        return NULL;
    for (struct broker_ent *e = m->b[id_slot(m, id)]; e; e = e->hnext)
        if (e->msg->id == id)
            return e;
    return NULL;
}

static void idmap_remove(struct broker_idmap *m, struct broker_ent *e)
{
    struct broker_ent **pp = &m->b[id_slot(m, e->msg->id)];

    for (; *pp; pp = &(*pp)->hnext) {
        if (*pp == e) {
            *pp = e->hnext;
            e->hnext = NULL;
            m->n--;
            return;
        }
    }
}

/* ---- disk queues --------------------------------------------------------------- */

#define DQ_WRITE_BUFFER (256 * 1024)

static struct tn_diskq *dq_open(struct broker *bk, const char *name, int *err)
{
    const struct broker_conf *bc = bk->conf;
    struct tn_diskq_opts o = {0};

    o.max_bytes_per_file = bc->max_bytes_per_file;
    o.min_msg_size = BROKER_REC_HEADER;
    /* the queue's hard cap, not broker.max_msg_size: publishes are checked
     * against that already, and a smaller limit would make records stored
     * under an earlier, larger max_msg_size unreadable */
    o.max_msg_size = TN_DISKQ_MSG_LIMIT;
    o.sync_every = (uint32_t)bc->sync_every;
    o.sync_timeout_ms = (uint32_t)bc->sync_timeout;
    /* one write per loop iteration (or 256 KiB) instead of one per
     * message; broker_store_flush runs before replies go out */
    o.write_buffer = DQ_WRITE_BUFFER;
    o.group = &bk->dq_group;
    /* the fsyncs of sync_every run off the loop thread (sync_every 1 stays
     * inline: an OK then means on disk) */
    o.async_sync = 1;
    return tn_diskq_open(bk->dir, name, &o, err);
}

static int dq_put(struct tn_diskq *dq, const struct broker_msg *m, uint16_t attempts,
                  int64_t defer_until)
{
    char hdr[BROKER_REC_HEADER];
    struct iovec iov[2];

    broker_rec_header(hdr, m, attempts, defer_until);
    iov[0].iov_base = hdr;
    iov[0].iov_len = sizeof(hdr);
    iov[1].iov_base = (void *)m->body;
    iov[1].iov_len = m->len;
    return tn_diskq_putv(dq, iov, 2);
}

/* Take the oldest record off a disk queue as a new entry that holds it
 * (e->hold): the record stays on disk, and comes back after a crash,
 * until the entry is done with (ent_done). Corrupt records (which the
 * disk queue already checked) that do not decode are logged and skipped.
 * NULL when empty or on a read error. */
static struct broker_ent *dq_take(struct broker *bk, struct tn_diskq *dq, const char *topic,
                                  const char *channel)
{
    for (;;) {
        const void *p;
        size_t len;
        uint16_t attempts;
        int64_t defer_until;
        struct broker_msg *m;
        struct broker_ent *e;
        int rc = tn_diskq_peek(dq, &p, &len);

        if (rc == TN_EAGAIN)
            return NULL;
        if (rc != 0) {
            tn_log_error(BROKER_LOG, "%s%s%s: disk queue read failed: %s", topic,
                         channel ? "/" : "", channel ? channel : "", tn_strerror(rc));
            return NULL;
        }
        m = broker_rec_decode(p, len, &attempts, &defer_until);
        if (!m) {
            tn_log_warn(BROKER_LOG, "%s%s%s: skipping a malformed record (%zu bytes)", topic,
                        channel ? "/" : "", channel ? channel : "", len);
            tn_diskq_advance(dq);
            continue;
        }
        e = ent_new(bk, m, attempts);
        if (!e) {
            broker_msg_unref(m);
            return NULL;
        }
        if (!(e->hold = hold_new(bk))) {
            ent_free(bk, e); /* the record stays peeked: taken next time */
            return NULL;
        }
        tn_diskq_take(dq, e->hold);
        e->when = defer_until;
        return e;
    }
}

/* ---- topics --------------------------------------------------------------------- */

void broker_store_init(struct broker *bk)
{
    memset(&bk->topics, 0, sizeof(bk->topics));
}

static struct broker_topic *topic_of(struct tn_map_node *n)
{
    return TN_MAP_ENTRY_OR_NULL(n, struct broker_topic, node);
}

struct broker_topic *broker_topic_find(struct broker *bk, const char *name)
{
    return topic_of(tn_map_find_str(&bk->topics, name));
}

struct broker_topic *broker_topic_first(struct broker *bk)
{
    return topic_of(tn_map_head(&bk->topics));
}

struct broker_topic *broker_topic_next(struct broker *bk, struct broker_topic *t)
{
    return topic_of(tn_map_after(&bk->topics, &t->node));
}

struct broker_topic *broker_topic_get(struct broker *bk, const char *name, int *err)
{
    struct broker_topic *t = broker_topic_find(bk, name);
    size_t n = strlen(name);

    if (t)
        return t;
    if (!broker_name_valid(name, n)) {
        *err = TN_EINVAL;
        return NULL;
    }
    if (!(t = calloc(1, sizeof(*t)))) {
        *err = TN_ENOMEM;
        return NULL;
    }
    t->bk = bk;
    memcpy(t->name, name, n + 1);
    t->ephemeral = broker_name_ephemeral(name, n);
    if (!t->ephemeral && !(t->dq = dq_open(bk, name, err))) {
        tn_log_error(BROKER_LOG, "topic %s: cannot open its disk queue: %s", name,
                     tn_strerror(*err));
        free(t);
        return NULL;
    }
    if (tn_map_insert(&bk->topics, &t->node, t->name, n) != 0) {
        if (t->dq)
            tn_diskq_close(t->dq);
        free(t);
        *err = TN_ENOMEM;
        return NULL;
    }
    bk->meta_dirty = 1;
    tn_log_info(BROKER_LOG, "topic %s created", name);
    if (bk->announce)
        bk->announce(bk, 1, name, NULL);
    return t;
}

static void fifo_clear(struct broker *bk, struct broker_fifo *f)
{
    struct broker_ent *e;
    while ((e = fifo_pop(f)))
        ent_free(bk, e);
}

uint64_t broker_topic_depth(const struct broker_topic *t)
{
    return t->mem.n + (t->dq ? tn_diskq_depth(t->dq) : 0);
}

static void channel_free(struct broker_channel *ch, int remove_files);

static void topic_unlink(struct broker_topic *t)
{
    tn_map_remove(&t->bk->topics, &t->node);
}

void broker_topic_delete(struct broker_topic *t)
{
    struct broker *bk = t->bk;

    while (t->channels)
        channel_free(t->channels, 1);
    fifo_clear(bk, &t->mem);
    if (t->dq)
        tn_diskq_delete(t->dq);
    topic_unlink(t);
    bk->meta_dirty = 1;
    tn_log_info(BROKER_LOG, "topic %s deleted", t->name);
    if (bk->announce)
        bk->announce(bk, 0, t->name, NULL);
    free(t);
}

void broker_topic_empty(struct broker_topic *t)
{
    fifo_clear(t->bk, &t->mem);
    if (t->dq)
        tn_diskq_empty(t->dq);
}

void broker_topic_pause(struct broker_topic *t, int paused, int64_t now)
{
    if (t->paused == !!paused)
        return;
    t->paused = !!paused;
    t->bk->meta_dirty = 1;
    if (!t->paused)
        broker_topic_pump(t, now);
}

/* ---- channels: queueing ---------------------------------------------------------- */

/* Queue an entry that is ready now: memory while below mem_queue_size,
 * else the disk queue, else (ephemeral) it is dropped, as nsqd does. */
static void channel_queue(struct broker_channel *ch, struct broker_ent *e)
{
    struct broker *bk = ch->topic->bk;
    int rc;

    e->client = NULL;
    if ((int64_t)ch->mem.n < bk->conf->mem_queue_size) {
        e->state = BROKER_ENT_QUEUED;
        fifo_push(&ch->mem, e);
        return;
    }
    if (ch->dq) {
        rc = dq_put(ch->dq, e->msg, e->attempts, 0);
        if (rc == 0) {
            ent_done(ch, e); /* the new record replaces the one it held */
            return;
        }
        if (e->hold) {
            /* its record is still on disk: keep it deliverable (in memory,
             * over the limit) rather than drop it until a restart */
            tn_log_error(BROKER_LOG, "channel %s/%s: disk queue write failed, kept in memory: %s",
                         ch->topic->name, ch->name, tn_strerror(rc));
            e->state = BROKER_ENT_QUEUED;
            fifo_push(&ch->mem, e);
            return;
        }
        tn_log_error(BROKER_LOG, "channel %s/%s: disk queue write failed, message lost: %s",
                     ch->topic->name, ch->name, tn_strerror(rc));
    }
    ch->dropped_count++;
    ent_free(bk, e);
}

static void channel_defer(struct broker_channel *ch, struct broker_ent *e, int64_t until)
{
    e->client = NULL;
    e->when = until;
    e->state = BROKER_ENT_DEFERRED;
    if (heap_push(&ch->deferred, e) != 0)
        channel_queue(ch, e); /* no memory for the heap: deliver early rather than lose it */
}

/* A new message (or one from the topic) arrives in the channel. Takes a
 * message reference. */
static void channel_put(struct broker_channel *ch, struct broker_msg *m, uint16_t attempts,
                        int64_t defer_until, int64_t now)
{
    struct broker *bk = ch->topic->bk;
    struct broker_ent *e = ent_new(bk, m, attempts);

    if (!e) {
        broker_msg_unref(m);
        ch->dropped_count++;
        return;
    }
    ch->message_count++;
    if (defer_until <= now) {
        channel_queue(ch, e);
        return;
    }
    /* a deferred message follows the memory limit too: past it (always,
     * with mem_queue_size 0) its record goes to disk with the due time,
     * and comes back to the deferred heap, held, when the reader meets it */
    if (ch->dq && (int64_t)ch->mem.n >= bk->conf->mem_queue_size &&
        dq_put(ch->dq, m, attempts, defer_until) == 0) {
        ent_free(bk, e);
        return;
    }
    channel_defer(ch, e, defer_until);
}

/* The next message ready for delivery: memory first, then disk. A record
 * from disk still deferred goes to the deferred heap and the next is taken. */
static struct broker_ent *channel_take(struct broker_channel *ch, int64_t now)
{
    struct broker_ent *e = fifo_pop(&ch->mem);

    if (e || !ch->dq || tn_diskq_depth(ch->dq) == 0)
        return e;
    while ((e = dq_take(ch->topic->bk, ch->dq, ch->topic->name, ch->name))) {
        if (e->when <= now)
            return e;
        channel_defer(ch, e, e->when);
    }
    return NULL;
}

static int client_ready(const struct broker_client *c)
{
    return c->state == BROKER_CLIENT_SUBSCRIBED && c->rdy > 0 && (int64_t)c->inflight < c->rdy &&
           c->conn != NULL;
}

/* Round-robin over the consumers for one that can take a message. */
static struct broker_client *next_ready(struct broker_channel *ch)
{
    for (size_t i = 0; i < ch->nclients; i++) {
        struct broker_client *c = ch->clients[(ch->rr + i) % ch->nclients];
        if (client_ready(c)) {
            ch->rr = (ch->rr + i + 1) % ch->nclients;
            return c;
        }
    }
    return NULL;
}

static void client_link(struct broker_client *c, struct broker_ent *e)
{
    e->client = c;
    e->cprev = NULL;
    e->cnext = c->ifl;
    if (c->ifl)
        c->ifl->cprev = e;
    c->ifl = e;
    c->inflight++;
}

static void client_unlink(struct broker_ent *e)
{
    struct broker_client *c = e->client;

    if (e->cprev)
        e->cprev->cnext = e->cnext;
    else
        c->ifl = e->cnext;
    if (e->cnext)
        e->cnext->cprev = e->cprev;
    e->cprev = e->cnext = NULL;
    e->client = NULL;
    c->inflight--;
}

/* Hand e to c: count the attempt, start its timeout, write the frame. A
 * consumer with a sample_rate only sees that share of the messages; the
 * rest are consumed without delivery (nsqd's behaviour). */
static void deliver(struct broker_channel *ch, struct broker_client *c, struct broker_ent *e,
                    int64_t now)
{
    struct broker *bk = ch->topic->bk;

    if (c->sample_rate > 0 && rand() % 100 > c->sample_rate) {
        ent_done(ch, e);
        return;
    }
    if (e->attempts < UINT16_MAX)
        e->attempts++;
    e->state = BROKER_ENT_INFLIGHT;
    e->when = now + c->msg_timeout;
    e->delivered = now;
    if (heap_push(&ch->inflight, e) != 0) {
        channel_queue(ch, e);
        return;
    }
    if (idmap_add(&ch->ids, e) != 0) {
        heap_remove(&ch->inflight, e);
        channel_queue(ch, e);
        return;
    }
    client_link(c, e);
    c->message_count++;
    bk->send_msg(c, e);
}

void broker_channel_pump(struct broker_channel *ch, int64_t now)
{
    if (ch->paused)
        return;
    while (ch->mem.n || (ch->dq && tn_diskq_depth(ch->dq))) {
        struct broker_client *c = next_ready(ch);
        struct broker_ent *e;
        if (!c)
            return;
        if (!(e = channel_take(ch, now)))
            return;
        deliver(ch, c, e, now);
    }
}

uint64_t broker_channel_depth(const struct broker_channel *ch)
{
    return ch->mem.n + (ch->dq ? tn_diskq_depth(ch->dq) : 0);
}

/* ---- topics: fan-out -------------------------------------------------------------- */

static void topic_fanout(struct broker_topic *t, struct broker_msg *m, uint16_t attempts,
                         int64_t defer_until, int64_t now)
{
    for (struct broker_channel *ch = t->channels; ch; ch = ch->next) {
        m->refs++;
        channel_put(ch, m, attempts, defer_until, now);
    }
    for (struct broker_channel *ch = t->channels; ch; ch = ch->next)
        broker_channel_pump(ch, now);
    broker_msg_unref(m);
}

int broker_topic_put(struct broker_topic *t, struct broker_msg *m, int64_t defer_until, int64_t now)
{
    struct broker *bk = t->bk;
    struct broker_ent *e;
    int rc;

    t->message_count++;
    t->message_bytes += m->len;
    if (t->channels && !t->paused) {
        topic_fanout(t, m, 0, defer_until, now);
        return 0;
    }
    if ((int64_t)t->mem.n < bk->conf->mem_queue_size) {
        if (!(e = ent_new(bk, m, 0))) {
            broker_msg_unref(m);
            return TN_ENOMEM;
        }
        e->when = defer_until;
        e->state = BROKER_ENT_QUEUED;
        fifo_push(&t->mem, e);
        return 0;
    }
    rc = t->dq ? dq_put(t->dq, m, 0, defer_until) : 0;
    if (!t->dq)
        t->dropped_count++;
    broker_msg_unref(m);
    return rc;
}

void broker_topic_pump(struct broker_topic *t, int64_t now)
{
    struct broker_ent *e;

    if (!t->channels || t->paused)
        return;
    while ((e = fifo_pop(&t->mem)) || (t->dq && (e = dq_take(t->bk, t->dq, t->name, NULL)))) {
        e->msg->refs++;
        topic_fanout(t, e->msg, e->attempts, e->when, now);
        /* only now, with every channel's copy stored, may the topic's
         * record go (a crash in between delivers it twice, never not) */
        if (e->hold)
            tn_diskq_release(t->dq, e->hold);
        ent_free(t->bk, e);
    }
}

/* ---- channels: lifecycle ------------------------------------------------------------ */

struct broker_channel *broker_channel_find(struct broker_topic *t, const char *name)
{
    for (struct broker_channel *ch = t->channels; ch; ch = ch->next)
        if (strcmp(ch->name, name) == 0)
            return ch;
    return NULL;
}

/* Dead-letter policy: "topic/channel" first, then the channel name, then
 * the broker-wide default. */
static void channel_policy(struct broker_channel *ch)
{
    const struct broker_conf *bc = ch->topic->bk->conf;
    const struct broker_policy *by_name = NULL, *by_full = NULL;
    size_t tl = strlen(ch->topic->name);

    ch->max_attempts = bc->max_attempts;
    ch->dead_letter_topic = bc->dead_letter_topic;
    for (size_t i = 0; i < bc->channels.n; i++) {
        const struct broker_policy *p = &bc->channels.v[i];
        if (strcmp(p->name, ch->name) == 0)
            by_name = p;
        else if (strncmp(p->name, ch->topic->name, tl) == 0 && p->name[tl] == '/' &&
                 strcmp(p->name + tl + 1, ch->name) == 0)
            by_full = p;
    }
    if (by_full || by_name) {
        const struct broker_policy *p = by_full ? by_full : by_name;
        ch->max_attempts = p->max_attempts;
        ch->dead_letter_topic = p->dead_letter_topic;
    }
}

void broker_store_policies(struct broker *bk)
{
    for (struct broker_topic *t = broker_topic_first(bk); t; t = broker_topic_next(bk, t))
        for (struct broker_channel *ch = t->channels; ch; ch = ch->next)
            channel_policy(ch);
}

struct broker_channel *broker_channel_get(struct broker_topic *t, const char *name, int64_t now,
                                          int *err)
{
    struct broker *bk = t->bk;
    struct broker_channel *ch = broker_channel_find(t, name), **pp;
    char qname[2 * BROKER_NAME_MAX + 2];
    size_t n = strlen(name);

    if (ch)
        return ch;
    if (!broker_name_valid(name, n)) {
        *err = TN_EINVAL;
        return NULL;
    }
    if (!(ch = calloc(1, sizeof(*ch)))) {
        *err = TN_ENOMEM;
        return NULL;
    }
    ch->topic = t;
    memcpy(ch->name, name, n + 1);
    ch->ephemeral = broker_name_ephemeral(name, n);
    snprintf(qname, sizeof(qname), "%s:%s", t->name, name);
    if (!ch->ephemeral && !t->ephemeral && !(ch->dq = dq_open(bk, qname, err))) {
        tn_log_error(BROKER_LOG, "channel %s/%s: cannot open its disk queue: %s", t->name, name,
                     tn_strerror(*err));
        free(ch);
        return NULL;
    }
    channel_policy(ch);
    for (pp = &t->channels; *pp; pp = &(*pp)->next)
        ;
    *pp = ch;
    t->nchannels++;
    bk->meta_dirty = 1;
    tn_log_info(BROKER_LOG, "channel %s/%s created", t->name, name);
    if (bk->announce)
        bk->announce(bk, 1, t->name, name);
    /* the first channel starts the flow of what waited in the topic */
    broker_topic_pump(t, now);
    return ch;
}

static void heap_clear(struct broker *bk, struct broker_heap *h)
{
    for (size_t i = 0; i < h->n; i++) {
        struct broker_ent *e = h->v[i].e;
        if (e->client)
            client_unlink(e);
        ent_free(bk, e);
    }
    h->n = 0;
}

static void channel_clear(struct broker_channel *ch)
{
    struct broker *bk = ch->topic->bk;

    fifo_clear(bk, &ch->mem);
    heap_clear(bk, &ch->inflight);
    heap_clear(bk, &ch->deferred);
    free(ch->ids.b);
    memset(&ch->ids, 0, sizeof(ch->ids));
}

/* Unlink and free a channel; its consumers are told (kick) and detached. */
static void channel_free(struct broker_channel *ch, int remove_files)
{
    struct broker_topic *t = ch->topic;
    struct broker *bk = t->bk;
    struct broker_channel **pp;

    for (pp = &t->channels; *pp; pp = &(*pp)->next) {
        if (*pp == ch) {
            *pp = ch->next;
            t->nchannels--;
            break;
        }
    }
    /* the queue first: closing writes the committed position, so what
     * the entries hold is kept for the next start (delete: gone anyway) */
    if (ch->dq) {
        if (remove_files)
            tn_diskq_delete(ch->dq);
        else
            tn_diskq_close(ch->dq);
        ch->dq = NULL;
    }
    channel_clear(ch);
    while (ch->nclients) {
        struct broker_client *c = ch->clients[--ch->nclients];
        c->ch = NULL;
        if (bk->kick)
            bk->kick(c);
    }
    free(ch->clients);
    free(ch->inflight.v);
    free(ch->deferred.v);
    if (remove_files && bk->announce) /* deleted, not just freed at exit */
        bk->announce(bk, 0, t->name, ch->name);
    bk->meta_dirty = 1;
    free(ch);
}

void broker_channel_delete(struct broker_channel *ch)
{
    struct broker_topic *t = ch->topic;

    tn_log_info(BROKER_LOG, "channel %s/%s deleted", t->name, ch->name);
    channel_free(ch, 1);
    if (t->ephemeral && !t->channels)
        broker_topic_delete(t);
}

void broker_channel_empty(struct broker_channel *ch)
{
    /* emptying forgets the records the entries hold, in flight or not */
    if (ch->dq)
        tn_diskq_empty(ch->dq);
    channel_clear(ch);
}

void broker_channel_pause(struct broker_channel *ch, int paused, int64_t now)
{
    if (ch->paused == !!paused)
        return;
    ch->paused = !!paused;
    ch->topic->bk->meta_dirty = 1;
    if (!ch->paused)
        broker_channel_pump(ch, now);
}

/* ---- consumers ------------------------------------------------------------------------- */

int broker_client_sub(struct broker_client *c, struct broker_channel *ch, int64_t now)
{
    const struct broker_conf *bc = ch->topic->bk->conf;

    if (bc->max_channel_consumers > 0 && (int64_t)ch->nclients >= bc->max_channel_consumers)
        return TN_ELIMIT;
    if (ch->nclients == ch->capclients) {
        size_t cap = ch->capclients ? ch->capclients * 2 : 4;
        struct broker_client **v = realloc(ch->clients, cap * sizeof(*v));
        if (!v)
            return TN_ENOMEM;
        ch->clients = v;
        ch->capclients = cap;
    }
    ch->clients[ch->nclients++] = c;
    c->ch = ch;
    c->state = BROKER_CLIENT_SUBSCRIBED;
    broker_channel_pump(ch, now);
    return 0;
}

static int over_attempts(const struct broker_channel *ch, const struct broker_ent *e)
{
    return ch->max_attempts > 0 && e->attempts >= ch->max_attempts;
}

/* The message failed max_attempts times: publish it to the dead-letter
 * topic (without the Lua hook: it was already published once), or drop it. */
static void dead_letter(struct broker_channel *ch, struct broker_ent *e, int64_t now)
{
    struct broker *bk = ch->topic->bk;
    struct broker_topic *dlq = NULL;
    int err = 0;

    ch->dead_count++;
    bk->dead_lettered++;
    if (ch->dead_letter_topic && strcmp(ch->dead_letter_topic, ch->topic->name) != 0)
        dlq = broker_topic_get(bk, ch->dead_letter_topic, &err);
    if (dlq) {
        struct broker_msg *m =
            broker_msg_new(broker_next_id(bk, now), e->msg->ts, e->msg->body, e->msg->len);
        if (m) {
            tn_log_info(BROKER_LOG, "channel %s/%s: message failed %u attempts, moved to %s",
                        ch->topic->name, ch->name, e->attempts, dlq->name);
            broker_topic_put(dlq, m, 0, now);
        }
    } else {
        tn_log_warn(BROKER_LOG, "channel %s/%s: message failed %u attempts, dropped",
                    ch->topic->name, ch->name, e->attempts);
    }
    ent_done(ch, e);
}

/* An in-flight entry comes back (REQ, timeout, disconnect): after `delay`
 * ms, or now; or to the dead-letter topic once it used up its attempts. */
static void requeue(struct broker_channel *ch, struct broker_ent *e, int64_t delay, int64_t now)
{
    heap_remove(&ch->inflight, e);
    idmap_remove(&ch->ids, e);
    if (e->client)
        client_unlink(e);
    if (over_attempts(ch, e)) {
        dead_letter(ch, e, now);
        return;
    }
    if (delay > 0)
        channel_defer(ch, e, now + delay);
    else
        channel_queue(ch, e);
}

void broker_client_unsub(struct broker_client *c, int64_t now)
{
    struct broker_channel *ch = c->ch;

    if (!ch)
        return;
    while (c->ifl) {
        ch->requeue_count++;
        requeue(ch, c->ifl, 0, now);
    }
    for (size_t i = 0; i < ch->nclients; i++) {
        if (ch->clients[i] == c) {
            ch->clients[i] = ch->clients[--ch->nclients];
            break;
        }
    }
    if (ch->rr >= ch->nclients)
        ch->rr = 0;
    c->ch = NULL;
    if (ch->ephemeral && ch->nclients == 0) {
        broker_channel_delete(ch);
        return;
    }
    broker_channel_pump(ch, now);
}

void broker_client_set_rdy(struct broker_client *c, int64_t rdy, int64_t now)
{
    c->rdy = rdy;
    if (c->ch)
        broker_channel_pump(c->ch, now);
}

/* The in-flight entry id of c's channel, checked to belong to c. */
static int owned(struct broker_client *c, uint64_t id, struct broker_ent **out)
{
    struct broker_ent *e;

    if (!c->ch || !(e = idmap_find(&c->ch->ids, id)))
        return TN_ENOTFOUND;
    if (e->client != c)
        return TN_EINVAL;
    *out = e;
    return 0;
}

int broker_fin(struct broker_client *c, uint64_t id, int64_t now)
{
    struct broker_channel *ch = c->ch;
    struct broker_ent *e;
    int rc = owned(c, id, &e);

    if (rc)
        return rc;
    heap_remove(&ch->inflight, e);
    idmap_remove(&ch->ids, e);
    client_unlink(e);
    ent_done(ch, e);
    c->finish_count++;
    broker_channel_pump(ch, now);
    return 0;
}

int broker_req(struct broker_client *c, uint64_t id, int64_t delay_ms, int64_t now)
{
    struct broker_channel *ch = c->ch;
    struct broker_ent *e;
    int rc = owned(c, id, &e);

    if (rc)
        return rc;
    ch->requeue_count++;
    c->requeue_count++;
    requeue(ch, e, delay_ms, now);
    broker_channel_pump(ch, now);
    return 0;
}

/* Restart the timeout, but never past max_msg_timeout after the delivery. */
int broker_touch(struct broker_client *c, uint64_t id, int64_t now)
{
    const struct broker_conf *bc;
    struct broker_ent *e;
    int rc = owned(c, id, &e);
    int64_t when;

    if (rc)
        return rc;
    bc = c->ch->topic->bk->conf;
    when = now + c->msg_timeout;
    if (when - e->delivered >= bc->max_msg_timeout)
        when = e->delivered + bc->max_msg_timeout;
    e->when = when;
    heap_fix(&c->ch->inflight, e);
    return 0;
}

/* ---- timers ------------------------------------------------------------------------------ */

static void channel_scan(struct broker_channel *ch, int64_t now)
{
    while (ch->inflight.n && ch->inflight.v[0].when <= now) {
        ch->timeout_count++;
        requeue(ch, ch->inflight.v[0].e, 0, now);
    }
    while (ch->deferred.n && ch->deferred.v[0].when <= now) {
        struct broker_ent *e = ch->deferred.v[0].e;
        heap_remove(&ch->deferred, e);
        channel_queue(ch, e);
    }
    broker_channel_pump(ch, now);
}

void broker_scan(struct broker *bk, int64_t now)
{
    struct broker_topic *t = broker_topic_first(bk), *tn;

    /* a dead letter may create a topic: take the next one first */
    for (; t; t = tn) {
        tn = broker_topic_next(bk, t);
        for (struct broker_channel *ch = t->channels; ch; ch = ch->next)
            channel_scan(ch, now);
    }
}

int broker_store_flush(struct broker *bk)
{
    return bk->dq_group.dirty ? tn_diskq_group_flush(&bk->dq_group) : 0;
}

void broker_store_sync_due(struct broker *bk)
{
    for (struct broker_topic *t = broker_topic_first(bk); t; t = broker_topic_next(bk, t)) {
        if (t->dq && tn_diskq_sync_due(t->dq))
            tn_diskq_sync(t->dq);
        for (struct broker_channel *ch = t->channels; ch; ch = ch->next)
            if (ch->dq && tn_diskq_sync_due(ch->dq))
                tn_diskq_sync(ch->dq);
    }
}

/* ---- stop: everything to disk -------------------------------------------------------------- */

/* Write e to dq, and release the record it held there: after the restart
 * the message comes once, from the new record. When the write fails, an
 * entry holding a record goes to `kept` (freed after dq is closed: the
 * hold must stay valid until then) and the old record comes back. */
static uint64_t persist_ent(struct broker *bk, struct tn_diskq *dq, struct broker_ent *e,
                            int64_t defer_until, const char *what, struct broker_fifo *kept)
{
    int rc = dq_put(dq, e->msg, e->attempts, defer_until);

    if (rc == 0 && e->hold) {
        tn_diskq_release(dq, e->hold);
    } else if (rc != 0) {
        tn_log_error(BROKER_LOG, "%s: cannot write a message to disk%s: %s", what,
                     e->hold ? " (its earlier record is kept)" : "", tn_strerror(rc));
        if (e->hold) {
            fifo_push(kept, e);
            return 0;
        }
    }
    ent_free(bk, e);
    return rc == 0;
}

static uint64_t persist_channel(struct broker_channel *ch, struct broker_fifo *kept)
{
    struct broker *bk = ch->topic->bk;
    struct broker_ent *e;
    char what[2 * BROKER_NAME_MAX + 2];
    uint64_t n = 0;

    snprintf(what, sizeof(what), "%s/%s", ch->topic->name, ch->name);
    /* in flight first: those were the oldest to be delivered */
    while (ch->inflight.n) {
        e = ch->inflight.v[0].e;
        heap_remove(&ch->inflight, e);
        idmap_remove(&ch->ids, e);
        if (e->client)
            client_unlink(e);
        n += persist_ent(bk, ch->dq, e, 0, what, kept);
    }
    while ((e = fifo_pop(&ch->mem)))
        n += persist_ent(bk, ch->dq, e, 0, what, kept);
    while (ch->deferred.n) {
        e = ch->deferred.v[0].e;
        heap_remove(&ch->deferred, e);
        n += persist_ent(bk, ch->dq, e, e->when, what, kept);
    }
    return n;
}

uint64_t broker_store_persist(struct broker *bk, int64_t now)
{
    uint64_t n = 0;
    struct broker_ent *e;
    struct broker_fifo kept = {0};

    for (struct broker_topic *t = broker_topic_first(bk); t; t = broker_topic_next(bk, t)) {
        if (t->dq)
            while ((e = fifo_pop(&t->mem)))
                n += persist_ent(bk, t->dq, e, e->when, t->name, &kept);
        for (struct broker_channel *ch = t->channels; ch; ch = ch->next) {
            if (ch->dq) {
                n += persist_channel(ch, &kept);
                tn_diskq_close(ch->dq);
                ch->dq = NULL;
                fifo_clear(bk, &kept);
            }
        }
        if (t->dq) {
            tn_diskq_close(t->dq);
            t->dq = NULL;
        }
    }
    (void)now;
    return n;
}

void broker_store_free(struct broker *bk)
{
    struct broker_topic *t;
    struct broker_ent *e;
    struct tn_diskq_hold *h;

    while ((t = broker_topic_first(bk))) {
        while (t->channels)
            channel_free(t->channels, 0);
        fifo_clear(bk, &t->mem);
        if (t->dq)
            tn_diskq_close(t->dq);
        topic_unlink(t);
        free(t);
    }
    tn_map_free(&bk->topics);
    while ((e = bk->ent_free)) {
        bk->ent_free = e->next;
        free(e);
    }
    bk->nfree = 0;
    while ((h = bk->hold_free)) {
        bk->hold_free = h->next;
        free(h);
    }
    bk->nhold_free = 0;
}
