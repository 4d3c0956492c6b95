/*
 * conf.c -- the configuration: YAML (libyaml events) into a tree of nodes
 * that remember their file:line:col, key tables that turn a mapping into a
 * typed struct, and the collected, position-sorted error list.
 *
 * Everything a config generation allocates lives in its arena and goes
 * away with tn_conf_free(). Loop thread only.
 */
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <yaml.h>

#include "core.h"

#define ARENA_BLOCK 8192
#define MAX_DEPTH 64                     /* nesting allowed in a file */
#define PATH_DEPTH (MAX_DEPTH + 16)      /* key path levels kept for messages */
#define MAX_FILE_SIZE (16 * 1024 * 1024) /* a config larger than this is a mistake */
#define SHOW_MAX 64                      /* bytes of a bad value quoted in messages */
#define SHOW_BUF (SHOW_MAX * 4 + 4)

/* A bad value as quoted in a message: at most SHOW_MAX bytes, control
 * characters escaped, so that every message stays one line. */
static const char *show(const char *s, char *buf)
{
    size_t at = 0;

    for (size_t i = 0; s[i]; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i == SHOW_MAX) {
            memcpy(buf + at, "...", 3);
            at += 3;
            break;
        }
        if (c == '\n' || c == '\t') {
            buf[at++] = '\\';
            buf[at++] = c == '\n' ? 'n' : 't';
        } else if (c < 0x20 || c == 0x7f) {
            at += (size_t)snprintf(buf + at, 5, "\\x%02x", c);
        } else {
            buf[at++] = (char)c;
        }
    }
    buf[at] = '\0';
    return buf;
}
#define SHOWN(s) show((s), (char[SHOW_BUF]){0})

struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(max_align_t) unsigned char data[];
};

struct conf_err {
    int line, col; /* 0: no position */
    char *text;    /* the whole line, malloc'd */
};

struct tn_conf {
    struct arena_block *arena;
    char *file;
    struct tn_conf_node *root;

    struct conf_err *errs; /* sorted by position, stable */
    size_t nerrs, caperrs;

    /* the key path: text, and its length before each push (levels past
     * PATH_DEPTH are counted but not shown) */
    char *path;
    size_t plen, pcap;
    size_t stack[PATH_DEPTH];
    size_t nstack;
    size_t lost; /* errors that could not be stored (out of memory) */

    char *section_name; /* prefix of every path; NULL: none */
    const struct tn_conf_node *section;
};

/* ---- memory --------------------------------------------------------------- */

void *tn_conf_alloc(struct tn_conf *cf, size_t n)
{
    struct arena_block *b = cf->arena;
    size_t align = _Alignof(max_align_t);

    n = (n + align - 1) & ~(align - 1);
    if (n == 0)
        n = align;
    if (b && b->cap - b->used >= n) {
        void *p = b->data + b->used;
        b->used += n;
        return p;
    }
    if (n > ARENA_BLOCK / 4) {
        /* big pieces get their own block behind the current one, so the
         * current block's free space is not wasted */
        struct arena_block *big = calloc(1, sizeof(*big) + n);
        if (!big)
            return NULL;
        big->used = big->cap = n;
        if (b) {
            big->next = b->next;
            b->next = big;
        } else {
            cf->arena = big;
        }
        return big->data;
    }
    b = calloc(1, sizeof(*b) + ARENA_BLOCK);
    if (!b)
        return NULL;
    b->cap = ARENA_BLOCK;
    b->used = n;
    b->next = cf->arena;
    cf->arena = b;
    return b->data;
}

static char *conf_strndup(struct tn_conf *cf, const char *s, size_t len)
{
    char *p = tn_conf_alloc(cf, len + 1);
    if (p) {
        memcpy(p, s, len);
        p[len] = '\0';
    }
    return p;
}

char *tn_conf_strdup(struct tn_conf *cf, const char *s)
{
    return s ? conf_strndup(cf, s, strlen(s)) : NULL;
}

static struct tn_conf *conf_new(const char *name)
{
    struct tn_conf *cf = calloc(1, sizeof(*cf));

    if (!cf)
        return NULL;
    if (!(cf->file = tn_conf_strdup(cf, name ? name : "<embedded>"))) {
        tn_conf_free(cf);
        return NULL;
    }
    return cf;
}

void tn_conf_free(struct tn_conf *cf)
{
    if (!cf)
        return;
    for (struct arena_block *b = cf->arena, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    for (size_t i = 0; i < cf->nerrs; i++)
        free(cf->errs[i].text);
    free(cf->errs);
    free(cf->path);
    free(cf->section_name);
    free(cf);
}

const char *tn_conf_file(const struct tn_conf *cf)
{
    return cf->file;
}

const struct tn_conf_node *tn_conf_root(const struct tn_conf *cf)
{
    return cf->root;
}

/* ---- key path ------------------------------------------------------------- */

/* Appending never fails visibly: on out of memory the segment is left out
 * (the message is still printed), but the stack stays balanced for pop. */
static void path_append(struct tn_conf *cf, const char *s, size_t len)
{
    if (cf->plen + len + 1 > cf->pcap) {
        size_t cap = (cf->plen + len + 1) * 2;
        char *p = realloc(cf->path, cap);
        if (!p)
            return;
        cf->path = p;
        cf->pcap = cap;
    }
    memcpy(cf->path + cf->plen, s, len);
    cf->plen += len;
    cf->path[cf->plen] = '\0';
}

/* Remember the length to return to; 0 when the level is too deep to show. */
static int path_mark(struct tn_conf *cf)
{
    if (cf->nstack++ >= PATH_DEPTH)
        return 0;
    cf->stack[cf->nstack - 1] = cf->plen;
    return 1;
}

void tn_conf_push_key(struct tn_conf *cf, const char *key)
{
    if (!path_mark(cf))
        return;
    if (cf->plen)
        path_append(cf, ".", 1);
    path_append(cf, key, strlen(key));
}

void tn_conf_push_index(struct tn_conf *cf, size_t i)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "[%zu]", i);

    if (path_mark(cf))
        path_append(cf, buf, (size_t)n);
}

void tn_conf_pop(struct tn_conf *cf)
{
    if (cf->nstack == 0)
        return;
    if (--cf->nstack < PATH_DEPTH) {
        cf->plen = cf->stack[cf->nstack];
        if (cf->path)
            cf->path[cf->plen] = '\0';
    }
}

void tn_conf_set_section(struct tn_conf *cf, const char *name, const struct tn_conf_node *node)
{
    free(cf->section_name);
    cf->section_name = name ? strdup(name) : NULL;
    cf->section = node;
}

/* The full key path of a message: section prefix, pushed keys, extra. */
static void full_path(const struct tn_conf *cf, const char *extra, char *out, size_t len)
{
    const char *parts[3] = {cf->section_name, cf->plen ? cf->path : NULL, extra};
    size_t at = 0;

    out[0] = '\0';
    for (int i = 0; i < 3; i++) {
        const char *p = parts[i];
        if (!p || !*p)
            continue;
        if (at > 0 && p[0] != '[' && at < len)
            at += (size_t)snprintf(out + at, len - at, ".");
        if (at < len)
            at += (size_t)snprintf(out + at, len - at, "%s", p);
    }
}

/* ---- errors --------------------------------------------------------------- */

int tn_conf_errors(const struct tn_conf *cf)
{
    return (int)(cf->nerrs + cf->lost);
}

size_t tn_conf_error_count(const struct tn_conf *cf)
{
    return cf->nerrs;
}

const char *tn_conf_error_text(const struct tn_conf *cf, size_t i)
{
    return i < cf->nerrs ? cf->errs[i].text : NULL;
}

static int pos_after(int line, int col, const struct conf_err *e)
{
    return line > e->line || (line == e->line && col >= e->col);
}

/* Record one error line, keeping the list sorted by position; errors at
 * the same place keep the order they were reported in. */
static void add_error(struct tn_conf *cf, int line, int col, const char *path, const char *fmt,
                      va_list ap)
{
    char msg[1024], text[2048];
    size_t at;

    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (line > 0)
        at = (size_t)snprintf(text, sizeof(text), "%s:%d:%d: ", cf->file, line, col);
    else
        at = (size_t)snprintf(text, sizeof(text), "%s: ", cf->file);
    if (at < sizeof(text) && path && *path)
        at += (size_t)snprintf(text + at, sizeof(text) - at, "%s: ", path);
    if (at < sizeof(text))
        snprintf(text + at, sizeof(text) - at, "%s", msg);

    if (cf->nerrs == cf->caperrs) {
        size_t cap = cf->caperrs ? cf->caperrs * 2 : 8;
        struct conf_err *e = realloc(cf->errs, cap * sizeof(*e));
        if (!e) {
            cf->lost++; /* still an error: the config must not pass */
            return;
        }
        cf->errs = e;
        cf->caperrs = cap;
    }
    char *copy = strdup(text);
    if (!copy) {
        cf->lost++;
        return;
    }
    at = cf->nerrs;
    while (at > 0 && !pos_after(line, col, &cf->errs[at - 1]))
        at--;
    memmove(cf->errs + at + 1, cf->errs + at, (cf->nerrs - at) * sizeof(*cf->errs));
    cf->errs[at] = (struct conf_err){line, col, copy};
    cf->nerrs++;
}

/* Where an error without a node goes: the section, else the file's top. */
static struct tn_conf_mark fallback_mark(const struct tn_conf *cf)
{
    if (cf->section)
        return cf->section->mark;
    return (struct tn_conf_mark){cf->file, 1, 1};
}

int tn_conf_error(struct tn_conf *cf, const struct tn_conf_node *node, const char *fmt, ...)
{
    struct tn_conf_mark m = node ? node->mark : fallback_mark(cf);
    char path[1024];
    va_list ap;

    full_path(cf, NULL, path, sizeof(path));
    va_start(ap, fmt);
    add_error(cf, m.line, m.col, path, fmt, ap);
    va_end(ap);
    return TN_ECONF;
}

/* An error at an explicit place, path given (used while loading). */
static int error_at(struct tn_conf *cf, int line, int col, const char *fmt, ...) TN_PRINTF(4, 5);
static int error_at(struct tn_conf *cf, int line, int col, const char *fmt, ...)
{
    char path[1024];
    va_list ap;

    full_path(cf, NULL, path, sizeof(path));
    va_start(ap, fmt);
    add_error(cf, line, col, path, fmt, ap);
    va_end(ap);
    return TN_ECONF;
}

/* ---- nodes ---------------------------------------------------------------- */

int tn_conf_is_null(const struct tn_conf_node *n)
{
    if (!n)
        return 1;
    if (n->type != TN_NODE_SCALAR || !n->plain)
        return 0;
    return n->vlen == 0 || strcmp(n->value, "~") == 0 || strcmp(n->value, "null") == 0 ||
           strcmp(n->value, "Null") == 0 || strcmp(n->value, "NULL") == 0;
}

const struct tn_conf_node *tn_conf_map_get(const struct tn_conf_node *map, const char *key)
{
    if (!map || map->type != TN_NODE_MAP)
        return NULL;
    for (size_t i = 0; i < map->n; i++)
        if (strcmp(map->keys[i]->value, key) == 0)
            return map->items[i];
    return NULL;
}

/* ---- loading -------------------------------------------------------------- */

struct loader {
    struct tn_conf *cf;
    yaml_parser_t parser;
    const char *text;
    size_t len;
    int failed; /* syntax error or out of memory: no tree */
};

/* A growable list of node pointers, copied into the arena when done. */
struct nodevec {
    struct tn_conf_node **v;
    size_t n, cap;
};

static int nodevec_push(struct nodevec *nv, struct tn_conf_node *n)
{
    if (nv->n == nv->cap) {
        size_t cap = nv->cap ? nv->cap * 2 : 8;
        struct tn_conf_node **v = realloc(nv->v, cap * sizeof(*v));
        if (!v)
            return TN_ENOMEM;
        nv->v = v;
        nv->cap = cap;
    }
    nv->v[nv->n++] = n;
    return 0;
}

static struct tn_conf_node **nodevec_finish(struct tn_conf *cf, struct nodevec *nv)
{
    struct tn_conf_node **v = tn_conf_alloc(cf, (nv->n ? nv->n : 1) * sizeof(*v));
    if (v && nv->n)
        memcpy(v, nv->v, nv->n * sizeof(*v));
    free(nv->v);
    nv->v = NULL;
    return v;
}

static void line_col_at(const struct loader *ld, size_t offset, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < offset && i < ld->len; i++) {
        if (ld->text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

/* The byte at a libyaml mark (0-based line, column in characters). */
static int char_at(const struct loader *ld, size_t line, size_t column)
{
    size_t i = 0;

    for (; i < ld->len && line > 0; i++)
        if (ld->text[i] == '\n')
            line--;
    for (; i < ld->len && ld->text[i] != '\n'; i++) {
        if (((unsigned char)ld->text[i] & 0xc0) == 0x80)
            continue; /* UTF-8 continuation byte: same character */
        if (column-- == 0)
            return (unsigned char)ld->text[i];
    }
    return -1;
}

static void syntax_error(struct loader *ld)
{
    yaml_parser_t *p = &ld->parser;
    int line, col;

    ld->failed = 1;
    if (p->error == YAML_MEMORY_ERROR) {
        error_at(ld->cf, 0, 0, "out of memory");
        return;
    }
    if (p->error == YAML_READER_ERROR) {
        line_col_at(ld, p->problem_offset, &line, &col);
        error_at(ld->cf, line, col, "syntax error: %s", p->problem ? p->problem : "unreadable");
        return;
    }
    line = (int)p->problem_mark.line + 1;
    col = (int)p->problem_mark.column + 1;
    if (char_at(ld, p->problem_mark.line, p->problem_mark.column) == '\t') {
        error_at(ld->cf, line, col, "syntax error: tab character (YAML indents with spaces only)");
        return;
    }
    if (p->context)
        error_at(ld->cf, line, col, "syntax error: %s (%s that starts at line %d)",
                 p->problem ? p->problem : "invalid YAML", p->context,
                 (int)p->context_mark.line + 1);
    else
        error_at(ld->cf, line, col, "syntax error: %s", p->problem ? p->problem : "invalid YAML");
}

static int next_event(struct loader *ld, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&ld->parser, ev)) {
        syntax_error(ld);
        return TN_ECONF;
    }
    return 0;
}

static struct tn_conf_node *new_node(struct loader *ld, int type, const yaml_event_t *ev)
{
    struct tn_conf_node *n = tn_conf_alloc(ld->cf, sizeof(*n));

    if (!n) {
        ld->failed = 1;
        error_at(ld->cf, 0, 0, "out of memory");
        return NULL;
    }
    n->type = type;
    n->mark.file = ld->cf->file;
    n->mark.line = (int)ev->start_mark.line + 1;
    n->mark.col = (int)ev->start_mark.column + 1;
    return n;
}

/* Anchors and tags are refused: sharing and typing belong to the key
 * tables, and a file that relies on them would be read differently here. */
static void check_props(struct loader *ld, const yaml_event_t *ev, const yaml_char_t *anchor,
                        const yaml_char_t *tag, int implicit)
{
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;

    if (anchor)
        error_at(ld->cf, line, col, "YAML anchors (&%s) are not supported: repeat the value",
                 (const char *)anchor);
    if (tag && !implicit) {
        const char *t = (const char *)tag, *std = "tag:yaml.org,2002:";
        int shorthand = strncmp(t, std, strlen(std)) == 0;
        error_at(ld->cf, line, col, "YAML tags (%s%s) are not supported", shorthand ? "!!" : "",
                 shorthand ? t + strlen(std) : t);
    }
}

static struct tn_conf_node *load_node(struct loader *ld, yaml_event_t *ev, int depth);

static struct tn_conf_node *load_scalar(struct loader *ld, yaml_event_t *ev)
{
    struct tn_conf_node *n = new_node(ld, TN_NODE_SCALAR, ev);

    check_props(ld, ev, ev->data.scalar.anchor, ev->data.scalar.tag,
                ev->data.scalar.plain_implicit || ev->data.scalar.quoted_implicit);
    if (!n)
        return NULL;
    n->value = conf_strndup(ld->cf, (const char *)ev->data.scalar.value, ev->data.scalar.length);
    if (!n->value) {
        ld->failed = 1;
        error_at(ld->cf, 0, 0, "out of memory");
        return NULL;
    }
    n->vlen = ev->data.scalar.length;
    n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    return n;
}

/* An alias stands for another node; it is reported once and read as this
 * empty text, which the setters pass over silently, so that the rest of
 * the file is still checked without a second message for the same place. */
static const char alias_value[] = "";

static int is_alias(const struct tn_conf_node *n)
{
    return n && n->value == alias_value;
}

static struct tn_conf_node *load_alias(struct loader *ld, yaml_event_t *ev)
{
    struct tn_conf_node *n = new_node(ld, TN_NODE_SCALAR, ev);

    error_at(ld->cf, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
             "YAML aliases (*%s) are not supported: repeat the value",
             (const char *)ev->data.alias.anchor);
    if (n) {
        n->value = alias_value;
        n->plain = 1;
    }
    return n;
}

static struct tn_conf_node *load_seq(struct loader *ld, yaml_event_t *start, int depth)
{
    struct tn_conf_node *n = new_node(ld, TN_NODE_SEQ, start);
    struct nodevec items = {0};
    yaml_event_t ev;

    check_props(ld, start, start->data.sequence_start.anchor, start->data.sequence_start.tag,
                start->data.sequence_start.implicit);
    while (n && !ld->failed) {
        if (next_event(ld, &ev) != 0)
            break;
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        tn_conf_push_index(ld->cf, items.n);
        struct tn_conf_node *item = load_node(ld, &ev, depth + 1);
        tn_conf_pop(ld->cf);
        if (item && nodevec_push(&items, item) != 0) {
            ld->failed = 1;
            error_at(ld->cf, 0, 0, "out of memory");
        }
    }
    if (!n || ld->failed) {
        free(items.v);
        return NULL;
    }
    n->n = items.n;
    n->items = nodevec_finish(ld->cf, &items);
    return n;
}

static int is_merge_key(const struct tn_conf_node *key)
{
    return key->type == TN_NODE_SCALAR && key->plain && strcmp(key->value, "<<") == 0;
}

/* Keys are plain text; a duplicate is reported at its second occurrence
 * and dropped, so the first one is the one used. */
static int accept_key(struct loader *ld, const struct nodevec *keys, struct tn_conf_node *key)
{
    if (key->type != TN_NODE_SCALAR) {
        tn_conf_error(ld->cf, key, "keys must be scalars");
        return 0;
    }
    if (is_merge_key(key)) {
        tn_conf_error(ld->cf, key, "YAML merge keys (<<) are not supported: repeat the keys");
        return 0;
    }
    for (size_t i = 0; i < keys->n; i++) {
        if (strcmp(keys->v[i]->value, key->value) == 0) {
            tn_conf_push_key(ld->cf, key->value);
            tn_conf_error(ld->cf, key, "duplicate key (first defined at line %d)",
                          keys->v[i]->mark.line);
            tn_conf_pop(ld->cf);
            return 0;
        }
    }
    return 1;
}

static struct tn_conf_node *load_map(struct loader *ld, yaml_event_t *start, int depth)
{
    struct tn_conf_node *n = new_node(ld, TN_NODE_MAP, start);
    struct nodevec keys = {0}, values = {0};
    yaml_event_t ev;

    check_props(ld, start, start->data.mapping_start.anchor, start->data.mapping_start.tag,
                start->data.mapping_start.implicit);
    while (n && !ld->failed) {
        if (next_event(ld, &ev) != 0)
            break;
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        struct tn_conf_node *key = load_node(ld, &ev, depth + 1);
        if (!key || next_event(ld, &ev) != 0)
            break;
        int keep = accept_key(ld, &keys, key);
        if (is_merge_key(key) && ev.type == YAML_ALIAS_EVENT) {
            yaml_event_delete(&ev); /* "<<: *x" is one mistake, said once */
            continue;
        }
        if (key->type == TN_NODE_SCALAR)
            tn_conf_push_key(ld->cf, key->value);
        else
            tn_conf_push_key(ld->cf, "?");
        struct tn_conf_node *value = load_node(ld, &ev, depth + 1);
        tn_conf_pop(ld->cf);
        if (keep && value && (nodevec_push(&keys, key) != 0 || nodevec_push(&values, value) != 0)) {
            ld->failed = 1;
            error_at(ld->cf, 0, 0, "out of memory");
        }
    }
    if (!n || ld->failed) {
        free(keys.v);
        free(values.v);
        return NULL;
    }
    n->n = keys.n;
    n->keys = nodevec_finish(ld->cf, &keys);
    n->items = nodevec_finish(ld->cf, &values);
    return n;
}

/* Build the node that starts with ev (consumed here). NULL on failure. */
static struct tn_conf_node *load_node(struct loader *ld, yaml_event_t *ev, int depth)
{
    struct tn_conf_node *n = NULL;

    if (depth > MAX_DEPTH) {
        error_at(ld->cf, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                 "nested deeper than %d levels", MAX_DEPTH);
        ld->failed = 1;
        yaml_event_delete(ev);
        return NULL;
    }
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        n = load_scalar(ld, ev);
        break;
    case YAML_ALIAS_EVENT:
        n = load_alias(ld, ev);
        break;
    case YAML_SEQUENCE_START_EVENT:
        n = load_seq(ld, ev, depth);
        break;
    case YAML_MAPPING_START_EVENT:
        n = load_map(ld, ev, depth);
        break;
    default:
        ld->failed = 1;
        error_at(ld->cf, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                 "syntax error: unexpected YAML event");
        break;
    }
    yaml_event_delete(ev);
    return n;
}

static struct tn_conf_node *empty_map(struct tn_conf *cf, int line, int col)
{
    struct tn_conf_node *n = tn_conf_alloc(cf, sizeof(*n));

    if (!n)
        return NULL;
    n->type = TN_NODE_MAP;
    n->mark = (struct tn_conf_mark){cf->file, line, col};
    n->keys = n->items = tn_conf_alloc(cf, sizeof(*n->keys));
    return n->keys ? n : NULL;
}

/* The document: one mapping (or nothing, read as an empty mapping). */
static struct tn_conf_node *load_document(struct loader *ld)
{
    struct tn_conf_node *root = NULL;
    yaml_event_t ev;

    if (next_event(ld, &ev) != 0)
        return NULL;
    if (ev.type == YAML_STREAM_END_EVENT) { /* no document at all */
        yaml_event_delete(&ev);
        return empty_map(ld->cf, 1, 1);
    }
    yaml_event_delete(&ev); /* DOCUMENT-START */
    if (next_event(ld, &ev) != 0)
        return NULL;
    root = load_node(ld, &ev, 0);
    if (!root || ld->failed)
        return NULL;
    if (next_event(ld, &ev) != 0) /* DOCUMENT-END */
        return NULL;
    yaml_event_delete(&ev);
    if (next_event(ld, &ev) != 0)
        return NULL;
    if (ev.type == YAML_DOCUMENT_START_EVENT)
        error_at(ld->cf, (int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1,
                 "only one YAML document is allowed in a config file");
    yaml_event_delete(&ev);

    if (tn_conf_is_null(root))
        return empty_map(ld->cf, root->mark.line, root->mark.col);
    if (root->type != TN_NODE_MAP) {
        tn_conf_error(ld->cf, root, "the top level must be a mapping (key: value lines)");
        return NULL;
    }
    return root;
}

struct tn_conf *tn_conf_load_string(const char *name, const char *text, size_t len)
{
    struct tn_conf *cf = conf_new(name);
    struct loader ld = {.cf = cf, .text = text, .len = len};
    yaml_event_t ev;

    if (!cf)
        return NULL;
    if (!yaml_parser_initialize(&ld.parser)) {
        error_at(cf, 0, 0, "out of memory");
        return cf;
    }
    yaml_parser_set_input_string(&ld.parser, (const unsigned char *)text, len);
    if (next_event(&ld, &ev) == 0) { /* STREAM-START */
        yaml_event_delete(&ev);
        struct tn_conf_node *root = load_document(&ld);
        if (!ld.failed)
            cf->root = root;
    }
    yaml_parser_delete(&ld.parser);
    return cf;
}

/* The whole file into a malloc'd buffer; 0 or an errno value. */
static int read_all(const char *path, char **textp, size_t *lenp)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    size_t len = 0, cap = 0;
    int err = 0;

    if (!f)
        return errno;
    for (;;) {
        if (len == cap) {
            char *t = cap < MAX_FILE_SIZE ? realloc(text, cap ? cap * 2 : 8192) : NULL;
            if (!t) {
                err = cap < MAX_FILE_SIZE ? ENOMEM : EFBIG;
                break;
            }
            text = t;
            cap = cap ? cap * 2 : 8192;
        }
        errno = 0;
        size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f))
                err = errno ? errno : EIO; /* EISDIR for a directory */
            break;
        }
    }
    fclose(f);
    if (err) {
        free(text);
        return err;
    }
    *textp = text;
    *lenp = len;
    return 0;
}

struct tn_conf *tn_conf_load_file(const char *path)
{
    struct tn_conf *cf;
    char *text = NULL;
    size_t len = 0;
    int err = read_all(path, &text, &len);

    if (err) {
        if ((cf = conf_new(path)))
            error_at(cf, 0, 0, "cannot read the file: %s", strerror(err));
        return cf;
    }
    cf = tn_conf_load_string(path, text ? text : "", len);
    free(text);
    return cf;
}

/* ---- text parsers ----------------------------------------------------------- */

/* Digits with an optional fraction: "12", "1.5". Returns the end, or NULL
 * when there is no digit. The fraction is kept as digits over 10^ndec. */
struct number {
    unsigned __int128 whole;
    uint64_t frac;
    int ndec;
    int overflow; /* the whole part is beyond 64 bits */
    int inexact;  /* nonzero digits past the 18 decimals kept */
};

static const char *scan_number(const char *s, struct number *num)
{
    const char *p = s;

    memset(num, 0, sizeof(*num));
    if (*p < '0' || *p > '9')
        return NULL;
    for (; *p >= '0' && *p <= '9'; p++) {
        num->whole = num->whole * 10 + (unsigned)(*p - '0');
        if (num->whole > UINT64_MAX)
            num->overflow = 1, num->whole = (unsigned __int128)UINT64_MAX + 1;
    }
    if (*p == '.' && p[1] >= '0' && p[1] <= '9') {
        for (p++; *p >= '0' && *p <= '9'; p++) {
            if (num->ndec < 18) {
                num->frac = num->frac * 10 + (uint64_t)(*p - '0');
                num->ndec++;
            } else if (*p != '0') {
                num->inexact = 1; /* finer than a byte or a millisecond */
            }
        }
    }
    return p;
}

/* value * mult, or an error when it is too large or not whole. */
static int scale(const struct number *num, uint64_t mult, uint64_t max, uint64_t *out,
                 int *not_whole)
{
    unsigned __int128 pow = 1, fr;

    *not_whole = 0;
    for (int i = 0; i < num->ndec; i++)
        pow *= 10;
    fr = (unsigned __int128)num->frac * mult;
    if (fr % pow != 0 || num->inexact) {
        *not_whole = 1;
        return TN_EINVAL;
    }
    if (num->overflow)
        return TN_ETOOBIG;
    unsigned __int128 v = num->whole * mult + fr / pow;
    if (v > max)
        return TN_ETOOBIG;
    *out = (uint64_t)v;
    return 0;
}

struct unit {
    const char *name;
    uint64_t mult;
};

static const struct unit size_units[] = {{"", 1},
                                         {"B", 1},
                                         {"k", 1ull << 10},
                                         {"K", 1ull << 10},
                                         {"KiB", 1ull << 10},
                                         {"M", 1ull << 20},
                                         {"MiB", 1ull << 20},
                                         {"G", 1ull << 30},
                                         {"GiB", 1ull << 30},
                                         {"T", 1ull << 40},
                                         {"TiB", 1ull << 40},
                                         {"kB", 1000ull},
                                         {"KB", 1000ull},
                                         {"MB", 1000000ull},
                                         {"GB", 1000000000ull},
                                         {"TB", 1000000000000ull},
                                         {NULL, 0}};

/* Parse a size; on error write why (for the config message). */
static int size_scan(const char *s, uint64_t *out, char *why, size_t wlen)
{
    struct number num;
    const char *p = s;
    int not_whole, rc;

    if (*p == '-') {
        snprintf(why, wlen, "negative sizes are not allowed");
        return TN_EINVAL;
    }
    if (*p == '+')
        p++;
    if (!(p = scan_number(p, &num))) {
        snprintf(why, wlen, "expected a size like 512, 64KiB or 1MiB, got \"%s\"", SHOWN(s));
        return TN_EINVAL;
    }
    for (const struct unit *u = size_units; u->name; u++) {
        if (strcmp(p, u->name) != 0)
            continue;
        rc = scale(&num, u->mult, UINT64_MAX, out, &not_whole);
        if (not_whole)
            snprintf(why, wlen, "\"%s\" is not a whole number of bytes", SHOWN(s));
        else if (rc != 0)
            snprintf(why, wlen, "size too large");
        return rc ? TN_EINVAL : 0;
    }
    snprintf(why, wlen,
             "unknown size unit \"%s\" (use k/KiB, M/MiB, G/GiB, T/TiB or KB, MB, GB, TB)",
             SHOWN(p));
    return TN_EINVAL;
}

int tn_parse_size(const char *s, uint64_t *out)
{
    char why[160];
    return s && size_scan(s, out, why, sizeof(why)) == 0 ? 0 : TN_EINVAL;
}

static const struct unit duration_units[] = {{"d", 86400000ull}, {"h", 3600000ull}, {"m", 60000ull},
                                             {"s", 1000ull},     {"ms", 1},         {NULL, 0}};

/* The unit at p (longest match: "ms" before "m"); its index or -1. */
static int duration_unit(const char *p, size_t *ulen)
{
    int best = -1;
    size_t blen = 0;

    for (int i = 0; duration_units[i].name; i++) {
        size_t l = strlen(duration_units[i].name);
        if (l > blen && strncmp(p, duration_units[i].name, l) == 0 &&
            !(p[l] >= 'a' && p[l] <= 'z')) {
            best = i;
            blen = l;
        }
    }
    *ulen = blen;
    return best;
}

static int duration_scan(const char *s, int64_t *out, char *why, size_t wlen)
{
    const char *p = s;
    uint64_t total = 0, part;
    int last = -1, not_whole;
    struct number num;

    if (*p == '-') {
        snprintf(why, wlen, "negative durations are not allowed");
        return TN_EINVAL;
    }
    if (*p == '+')
        p++;
    if (!scan_number(p, &num)) {
        snprintf(why, wlen, "expected a duration like 250ms, 10s, 5m, 2h or 1d, got \"%s\"",
                 SHOWN(s));
        return TN_EINVAL;
    }
    while (*p) {
        size_t ulen;
        int u;

        if (!(p = scan_number(p, &num))) {
            snprintf(why, wlen, "expected a duration like 1m30s, got \"%s\"", SHOWN(s));
            return TN_EINVAL;
        }
        if (*p == '\0') {
            if (last < 0 && num.whole == 0 && num.frac == 0) {
                *out = 0; /* a bare 0 means the same in any unit */
                return 0;
            }
            snprintf(why, wlen, "\"%s\" needs a unit: ms, s, m, h or d", SHOWN(s));
            return TN_EINVAL;
        }
        if ((u = duration_unit(p, &ulen)) < 0) {
            snprintf(why, wlen, "unknown duration unit in \"%s\" (use ms, s, m, h or d)", SHOWN(s));
            return TN_EINVAL;
        }
        if (u <= last) {
            snprintf(why, wlen, "\"%s\": units must go from largest to smallest, once each",
                     SHOWN(s));
            return TN_EINVAL;
        }
        int rc = scale(&num, duration_units[u].mult, INT64_MAX, &part, &not_whole);
        if (not_whole) {
            snprintf(why, wlen, "\"%s\" is not a whole number of milliseconds", SHOWN(s));
            return TN_EINVAL;
        }
        if (rc != 0 || part > (uint64_t)INT64_MAX - total) {
            snprintf(why, wlen, "duration too large");
            return TN_EINVAL;
        }
        total += part;
        last = u;
        p += ulen;
    }
    *out = (int64_t)total;
    return 0;
}

int tn_parse_duration(const char *s, int64_t *out_ms)
{
    char why[160];
    return s && duration_scan(s, out_ms, why, sizeof(why)) == 0 ? 0 : TN_EINVAL;
}

/* ---- addresses -------------------------------------------------------------- */

static int parse_port(const char *s, in_port_t *port, char *err, size_t errlen)
{
    unsigned long v = 0;
    const char *p = s;

    if (!*p) {
        snprintf(err, errlen, "missing port after ':'");
        return TN_EINVAL;
    }
    for (; *p; p++) {
        if (*p < '0' || *p > '9') {
            snprintf(err, errlen, "bad port \"%s\"", SHOWN(s));
            return TN_EINVAL;
        }
        if ((v = v * 10 + (unsigned long)(*p - '0')) > 65535) {
            snprintf(err, errlen, "port must be between 0 and 65535");
            return TN_EINVAL;
        }
    }
    *port = htons((in_port_t)v);
    return 0;
}

static int parse_unix(const char *path, struct tn_addr *out, char *err, size_t errlen)
{
    struct sockaddr_un *un = (struct sockaddr_un *)&out->sa;
    size_t len = strlen(path);

    if (len == 0) {
        snprintf(err, errlen, "empty unix socket path");
        return TN_EINVAL;
    }
    if (len >= sizeof(un->sun_path)) {
        snprintf(err, errlen, "unix socket path too long (%zu bytes, at most %zu)", len,
                 sizeof(un->sun_path) - 1);
        return TN_EINVAL;
    }
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, len + 1);
    out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    return 0;
}

/* host (numeric first, then the resolver) and port into out. */
static int resolve_host(const char *host, in_port_t port, struct tn_addr *out, char *err,
                        size_t errlen)
{
    struct sockaddr_in *in4 = (struct sockaddr_in *)&out->sa;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->sa;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc;

    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = port;
        out->len = sizeof(*in4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = port;
        out->len = sizeof(*in6);
        return 0;
    }
    if ((rc = getaddrinfo(host, NULL, &hints, &res)) != 0 || !res) {
        snprintf(err, errlen, "cannot resolve host \"%s\": %s", SHOWN(host),
                 rc ? gai_strerror(rc) : "no address");
        return TN_EINVAL;
    }
    memcpy(&out->sa, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    if (res->ai_family == AF_INET)
        in4->sin_port = port;
    else
        in6->sin6_port = port;
    freeaddrinfo(res);
    return 0;
}

int tn_parse_addr(const char *s, struct tn_addr *out, char *err, size_t errlen)
{
    const char *colon, *hs = s;
    char host[256];
    size_t hlen;
    in_port_t port;

    memset(out, 0, sizeof(*out));
    if (strlen(s) >= sizeof(out->text)) {
        snprintf(err, errlen, "address too long (at most %zu bytes)", sizeof(out->text) - 1);
        return TN_EINVAL;
    }
    if (strncmp(s, "unix:", 5) == 0) {
        if (parse_unix(s + 5, out, err, errlen) != 0)
            return TN_EINVAL;
        goto done;
    }
    if (*s == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') {
            snprintf(err, errlen, "expected [ipv6]:port, got \"%s\"", SHOWN(s));
            return TN_EINVAL;
        }
        hs = s + 1;
        hlen = (size_t)(close - hs);
        colon = close + 1;
    } else {
        if (!(colon = strrchr(s, ':'))) {
            snprintf(err, errlen,
                     "expected host:port, [ipv6]:port, :port or unix:/path, got \"%s\"", SHOWN(s));
            return TN_EINVAL;
        }
        hlen = (size_t)(colon - s);
        if (memchr(s, ':', hlen)) {
            snprintf(err, errlen, "IPv6 addresses need brackets: [%.*s]:port", (int)hlen, s);
            return TN_EINVAL;
        }
    }
    if (parse_port(colon + 1, &port, err, errlen) != 0)
        return TN_EINVAL;
    memcpy(host, hs, hlen);
    host[hlen] = '\0';
    if (hlen == 0 && *s != '[') /* ":port": every interface */
        snprintf(host, sizeof(host), "0.0.0.0");
    else if (hlen == 0) {
        snprintf(err, errlen, "empty IPv6 address in \"%s\"", SHOWN(s));
        return TN_EINVAL;
    }
    if (resolve_host(host, port, out, err, errlen) != 0)
        return TN_EINVAL;
    if (*s == '[' && out->sa.ss_family != AF_INET6) {
        memset(out, 0, sizeof(*out));
        snprintf(err, errlen, "not an IPv6 address: \"%s\"", host);
        return TN_EINVAL;
    }
done:
    snprintf(out->text, sizeof(out->text), "%s", s);
    return 0;
}

/* ---- node parsers ----------------------------------------------------------- */

static const char *kind_name(int type)
{
    return type == TN_NODE_MAP ? "a mapping" : type == TN_NODE_SEQ ? "a sequence" : "a scalar";
}

/* The text of a scalar that must carry a value, or NULL after reporting. */
static const char *scalar_text(struct tn_conf *cf, const struct tn_conf_node *n, const char *what)
{
    if (is_alias(n))
        return NULL; /* already reported */
    if (!n || n->type != TN_NODE_SCALAR) {
        tn_conf_error(cf, n, "expected a scalar, got %s", n ? kind_name(n->type) : "nothing");
        return NULL;
    }
    if (tn_conf_is_null(n)) {
        tn_conf_error(cf, n, "missing value: expected %s", what);
        return NULL;
    }
    if (strlen(n->value) != n->vlen) {
        tn_conf_error(cf, n, "the value contains a NUL byte");
        return NULL;
    }
    return n->value;
}

int tn_conf_parse_bool(struct tn_conf *cf, const struct tn_conf_node *n, int *out)
{
    static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
    const char *what = "a boolean (true/false, yes/no, on/off)";
    const char *s = scalar_text(cf, n, what);

    if (!s)
        return TN_ECONF;
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return tn_conf_error(cf, n, "expected %s, got \"%s\"", what, SHOWN(s));
}

int tn_conf_parse_int(struct tn_conf *cf, const struct tn_conf_node *n,
                      const struct tn_conf_range *r, int64_t *out)
{
    const char *s = scalar_text(cf, n, "an integer");
    char *end;
    long long v;

    if (!s)
        return TN_ECONF;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (end == s || *end || !((*s >= '0' && *s <= '9') || *s == '-' || *s == '+'))
        return tn_conf_error(cf, n, "expected an integer, got \"%s\"", SHOWN(s));
    if (errno == ERANGE)
        return tn_conf_error(cf, n, "integer out of range");
    if (r && (v < r->min || v > r->max))
        return tn_conf_error(cf, n, "must be between %lld and %lld", (long long)r->min,
                             (long long)r->max);
    *out = v;
    return 0;
}

int tn_conf_parse_size(struct tn_conf *cf, const struct tn_conf_node *n, uint64_t *out)
{
    const char *s = scalar_text(cf, n, "a size like 512, 64KiB or 1MiB");
    char why[256];

    if (!s)
        return TN_ECONF;
    if (size_scan(s, out, why, sizeof(why)) != 0)
        return tn_conf_error(cf, n, "%s", why);
    return 0;
}

int tn_conf_parse_duration(struct tn_conf *cf, const struct tn_conf_node *n, int64_t *out)
{
    const char *s = scalar_text(cf, n, "a duration like 250ms, 10s, 5m, 2h or 1d");
    char why[256];

    if (!s)
        return TN_ECONF;
    if (duration_scan(s, out, why, sizeof(why)) != 0)
        return tn_conf_error(cf, n, "%s", why);
    return 0;
}

int tn_conf_parse_string(struct tn_conf *cf, const struct tn_conf_node *n, char **out)
{
    if (!n || n->type != TN_NODE_SCALAR)
        return tn_conf_error(cf, n, "expected a scalar, got %s",
                             n ? kind_name(n->type) : "nothing");
    if (tn_conf_is_null(n)) {
        *out = NULL;
        return 0;
    }
    if (strlen(n->value) != n->vlen)
        return tn_conf_error(cf, n, "the value contains a NUL byte");
    if (!(*out = tn_conf_strdup(cf, n->value)))
        return tn_conf_error(cf, n, "out of memory");
    return 0;
}

/* A null address is "off": len 0. */
int tn_conf_parse_addr(struct tn_conf *cf, const struct tn_conf_node *n, struct tn_addr *out)
{
    struct tn_addr a;
    char err[256];

    if (!n || n->type != TN_NODE_SCALAR)
        return tn_conf_error(cf, n, "expected a scalar, got %s",
                             n ? kind_name(n->type) : "nothing");
    if (tn_conf_is_null(n)) {
        memset(out, 0, sizeof(*out));
        out->mark = n->mark;
        return 0;
    }
    if (strlen(n->value) != n->vlen)
        return tn_conf_error(cf, n, "the value contains a NUL byte");
    if (tn_parse_addr(n->value, &a, err, sizeof(err)) != 0)
        return tn_conf_error(cf, n, "%s", err); /* out keeps its default */
    a.mark = n->mark;
    *out = a;
    return 0;
}

/* ---- key tables ------------------------------------------------------------- */

/* Sizes and durations in messages, in the largest unit that is exact. */
static void fmt_size(uint64_t v, char *buf, size_t len)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB"};
    int u = -1;

    while (u < 3 && v >= 1024 && v % 1024 == 0)
        v /= 1024, u++;
    snprintf(buf, len, "%llu%s", (unsigned long long)v, u >= 0 ? units[u] : "");
}

static void fmt_duration(int64_t ms, char *buf, size_t len)
{
    size_t at = 0;

    if (ms <= 0) {
        snprintf(buf, len, "%lld", (long long)ms);
        return;
    }
    buf[0] = '\0';
    for (int i = 0; duration_units[i].name && at < len; i++) {
        int64_t m = (int64_t)duration_units[i].mult;
        if (ms >= m) {
            at += (size_t)snprintf(buf + at, len - at, "%lld%s", (long long)(ms / m),
                                   duration_units[i].name);
            ms %= m;
        }
    }
}

static int set_size(struct tn_conf *cf, const struct tn_conf_node *n, const struct tn_conf_cmd *cmd,
                    void *field)
{
    const struct tn_conf_range *r = cmd->arg;
    char lo[32], hi[32];
    uint64_t v;

    if (tn_conf_parse_size(cf, n, &v) != 0)
        return TN_ECONF;
    if (r && (v < (uint64_t)r->min || v > (uint64_t)r->max)) {
        fmt_size((uint64_t)r->min, lo, sizeof(lo));
        fmt_size((uint64_t)r->max, hi, sizeof(hi));
        return tn_conf_error(cf, n, "must be between %s and %s", lo, hi);
    }
    memcpy(field, &v, sizeof(v));
    return 0;
}

static int set_duration(struct tn_conf *cf, const struct tn_conf_node *n,
                        const struct tn_conf_cmd *cmd, void *field)
{
    const struct tn_conf_range *r = cmd->arg;
    char lo[64], hi[64];
    int64_t v;

    if (tn_conf_parse_duration(cf, n, &v) != 0)
        return TN_ECONF;
    if (r && (v < r->min || v > r->max)) {
        fmt_duration(r->min, lo, sizeof(lo));
        fmt_duration(r->max, hi, sizeof(hi));
        return tn_conf_error(cf, n, "must be between %s and %s", lo, hi);
    }
    memcpy(field, &v, sizeof(v));
    return 0;
}

static int set_enum(struct tn_conf *cf, const struct tn_conf_node *n, const struct tn_conf_cmd *cmd,
                    void *field)
{
    const struct tn_conf_enum *e = cmd->arg;
    char allowed[512], what[560];
    size_t at = 0;
    const char *s;

    allowed[0] = '\0';
    for (const struct tn_conf_enum *i = e; i && i->name && at < sizeof(allowed); i++)
        at += (size_t)snprintf(allowed + at, sizeof(allowed) - at, "%s%s", i == e ? "" : ", ",
                               i->name);
    snprintf(what, sizeof(what), "one of: %s", allowed);
    if (!(s = scalar_text(cf, n, what)))
        return TN_ECONF;
    for (const struct tn_conf_enum *i = e; i && i->name; i++) {
        if (strcasecmp(s, i->name) == 0) {
            memcpy(field, &i->value, sizeof(int));
            return 0;
        }
    }
    return tn_conf_error(cf, n, "unknown value \"%s\" (expected %s)", SHOWN(s), what);
}

/* "./x" and "x" become "$PWD/x": the daemon may later run elsewhere
 * (reloads, a changed directory) and must not reinterpret them. */
static int set_path(struct tn_conf *cf, const struct tn_conf_node *n, char **out)
{
    char cwd[PATH_MAX], *s;
    const char *rel;

    if (tn_conf_parse_string(cf, n, &s) != 0)
        return TN_ECONF;
    if (!s || s[0] == '/') {
        *out = s;
        return 0;
    }
    if (s[0] == '\0')
        return tn_conf_error(cf, n, "empty path");
    if (!getcwd(cwd, sizeof(cwd)))
        return tn_conf_error(cf, n, "cannot get the working directory: %s", strerror(errno));
    for (rel = s; rel[0] == '.' && (rel[1] == '/' || rel[1] == '\0');)
        rel += rel[1] ? 2 : 1;
    while (*rel == '/')
        rel++;
    size_t clen = strlen(cwd), rlen = strlen(rel);
    int slash = rlen && strcmp(cwd, "/") != 0;
    if (clen + (size_t)slash + rlen >= PATH_MAX)
        return tn_conf_error(cf, n, "path too long (at most %d bytes)", PATH_MAX - 1);
    char *p = tn_conf_alloc(cf, clen + (size_t)slash + rlen + 1); /* zeroed: terminated */
    if (!p)
        return tn_conf_error(cf, n, "out of memory");
    memcpy(p, cwd, clen);
    memcpy(p + clen, "/", (size_t)slash);
    memcpy(p + clen + slash, rel, rlen);
    *out = p;
    return 0;
}

/* A sequence, or one scalar standing for a sequence of one. */
static int list_items(struct tn_conf *cf, const struct tn_conf_node *n, size_t *count)
{
    if (tn_conf_is_null(n)) {
        *count = 0;
        return 0;
    }
    if (n->type == TN_NODE_MAP)
        return tn_conf_error(cf, n, "expected a sequence, got a mapping");
    *count = n->type == TN_NODE_SEQ ? n->n : 1;
    return 0;
}

static const struct tn_conf_node *list_item(const struct tn_conf_node *n, size_t i)
{
    return n->type == TN_NODE_SEQ ? n->items[i] : n;
}

/* List items must carry a value: "- ~" is a mistake, not an empty entry. */
static int str_item(struct tn_conf *cf, const struct tn_conf_node *n, void *slot)
{
    return scalar_text(cf, n, "a string") ? tn_conf_parse_string(cf, n, slot) : TN_ECONF;
}

static int addr_item(struct tn_conf *cf, const struct tn_conf_node *n, void *slot)
{
    return scalar_text(cf, n, "an address") ? tn_conf_parse_addr(cf, n, slot) : TN_ECONF;
}

/* Fill an arena array of isize-byte items with parse(); *vp and *np are
 * set only when every item parsed. */
static int set_list(struct tn_conf *cf, const struct tn_conf_node *n, size_t isize,
                    int (*parse)(struct tn_conf *, const struct tn_conf_node *, void *), void **vp,
                    size_t *np)
{
    size_t count = 0;
    int rc = 0;

    if (list_items(cf, n, &count) != 0)
        return TN_ECONF;
    char *v = tn_conf_alloc(cf, (count ? count : 1) * isize);
    if (!v)
        return tn_conf_error(cf, n, "out of memory");
    for (size_t i = 0; i < count; i++) {
        if (n->type == TN_NODE_SEQ)
            tn_conf_push_index(cf, i);
        if (parse(cf, list_item(n, i), v + i * isize) != 0)
            rc = TN_ECONF;
        if (n->type == TN_NODE_SEQ)
            tn_conf_pop(cf);
    }
    if (rc == 0) {
        *vp = v;
        *np = count;
    }
    return rc;
}

/* Parse node by cmd->type into the field at conf + cmd->offset. */
static int set_value(struct tn_conf *cf, const struct tn_conf_node *n,
                     const struct tn_conf_cmd *cmd, void *conf)
{
    void *field = (char *)conf + cmd->offset;
    int64_t i64;
    int b;

    if (is_alias(n))
        return TN_ECONF; /* already reported */
    switch (cmd->type) {
    case TN_CONF_BOOL:
        if (tn_conf_parse_bool(cf, n, &b) != 0)
            return TN_ECONF;
        memcpy(field, &b, sizeof(b));
        return 0;
    case TN_CONF_INT:
        if (tn_conf_parse_int(cf, n, cmd->arg, &i64) != 0)
            return TN_ECONF;
        memcpy(field, &i64, sizeof(i64));
        return 0;
    case TN_CONF_SIZE:
        return set_size(cf, n, cmd, field);
    case TN_CONF_DURATION:
        return set_duration(cf, n, cmd, field);
    case TN_CONF_STRING:
        return tn_conf_parse_string(cf, n, field);
    case TN_CONF_PATH:
        return set_path(cf, n, field);
    case TN_CONF_ENUM:
        return set_enum(cf, n, cmd, field);
    case TN_CONF_ADDR:
        return tn_conf_parse_addr(cf, n, field);
    case TN_CONF_ADDR_LIST: {
        struct tn_addr_list *l = field;
        return set_list(cf, n, sizeof(*l->v), addr_item, (void **)&l->v, &l->n);
    }
    case TN_CONF_STR_LIST: {
        struct tn_str_list *l = field;
        return set_list(cf, n, sizeof(*l->v), str_item, (void **)&l->v, &l->n);
    }
    case TN_CONF_SECTION:
        if (tn_conf_is_null(n))
            return 0; /* "http: ~" keeps every default */
        return tn_conf_apply(cf, n, cmd->arg, field);
    case TN_CONF_CUSTOM:
        if (!cmd->set)
            return tn_conf_error(cf, n, "internal error: key has no setter");
        return cmd->set(cf, n, cmd, conf);
    default:
        return tn_conf_error(cf, n, "internal error: unknown key type %d", cmd->type);
    }
}

/* Edit distance (insert, delete, substitute, swap of neighbours), capped. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t d[3][65];

    if (la > 64 || lb > 64)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t *cur = d[i % 3], *prev = d[(i - 1) % 3], *prev2 = d[(i + 1) % 3];
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t v = prev[j] + 1;
            if (cur[j - 1] + 1 < v)
                v = cur[j - 1] + 1;
            if (prev[j - 1] + cost < v)
                v = prev[j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                prev2[j - 2] + 1 < v)
                v = prev2[j - 2] + 1;
            cur[j] = v;
        }
    }
    return d[la % 3][lb];
}

/* The known key closest to an unknown one, if close enough to be a typo. */
static const char *suggest(const char *key, const struct tn_conf_cmd *table)
{
    const char *best = NULL;
    size_t bestd = SIZE_MAX, len = strlen(key);
    size_t limit = len <= 3 ? 1 : len <= 6 ? 2 : 3;

    for (const struct tn_conf_cmd *c = table; c->key; c++) {
        size_t d = edit_distance(key, c->key);
        if (d < bestd) {
            bestd = d;
            best = c->key;
        }
    }
    return bestd <= limit ? best : NULL;
}

static const struct tn_conf_cmd *find_cmd(const struct tn_conf_cmd *table, const char *key)
{
    for (const struct tn_conf_cmd *c = table; c->key; c++)
        if (strcmp(c->key, key) == 0)
            return c;
    return NULL;
}

int tn_conf_apply(struct tn_conf *cf, const struct tn_conf_node *map,
                  const struct tn_conf_cmd *table, void *conf)
{
    int before = tn_conf_errors(cf);

    if (tn_conf_is_null(map))
        return 0;
    if (map->type != TN_NODE_MAP)
        return tn_conf_error(cf, map, "expected a mapping, got %s", kind_name(map->type));
    for (size_t i = 0; i < map->n; i++) {
        const struct tn_conf_node *key = map->keys[i], *value = map->items[i];
        const struct tn_conf_cmd *cmd = find_cmd(table, key->value);

        tn_conf_push_key(cf, key->value);
        if (!cmd) {
            const char *near = suggest(key->value, table);
            if (near)
                tn_conf_error(cf, key, "unknown key (did you mean %s?)", near);
            else
                tn_conf_error(cf, key, "unknown key");
        } else if (set_value(cf, value, cmd, conf) == 0 && cmd->check) {
            cmd->check(cf, value, cmd, conf);
        }
        tn_conf_pop(cf);
    }
    return tn_conf_errors(cf) > before ? TN_ECONF : 0;
}

/* ---- errors by key ---------------------------------------------------------- */

/* Follow "a.b[2].c" from node; stops at the deepest node that exists.
 * Returns 1 when the whole path was found. */
static int walk_path(const struct tn_conf_node *node, const char *path,
                     const struct tn_conf_node **found)
{
    const char *p = path;
    char key[256];

    *found = node;
    while (*p && node) {
        if (*p == '[') {
            char *end;
            unsigned long i = strtoul(p + 1, &end, 10);
            if (*end != ']' || node->type != TN_NODE_SEQ || i >= node->n)
                return 0;
            node = node->items[i];
            p = end + 1;
        } else {
            size_t len = strcspn(p, ".[");
            if (len == 0 || len >= sizeof(key))
                return 0;
            memcpy(key, p, len);
            key[len] = '\0';
            if (!(node = tn_conf_map_get(node, key)))
                return 0;
            p += len;
        }
        *found = node;
        if (*p == '.')
            p++;
    }
    return node != NULL;
}

int tn_conf_error_key(struct tn_conf *cf, const char *relpath, const char *fmt, ...)
{
    const struct tn_conf_node *at = NULL;
    struct tn_conf_mark m;
    char path[1024];
    va_list ap;

    if (cf->section)
        walk_path(cf->section, relpath, &at);
    m = at ? at->mark : fallback_mark(cf);
    full_path(cf, relpath, path, sizeof(path));
    va_start(ap, fmt);
    add_error(cf, m.line, m.col, path, fmt, ap);
    va_end(ap);
    return TN_ECONF;
}
