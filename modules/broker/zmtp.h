/*
 * zmtp.h -- ZMTP 3.0/3.1 (23/ZMTP, 37/ZMTP) wire codec with the NULL
 * mechanism: greeting, frames, commands (READY, ERROR, SUBSCRIBE, CANCEL,
 * PING, PONG) and READY properties. Pure functions over byte ranges, no
 * I/O and no state, so every rule is unit-tested (t/unit/test_zmtp.c).
 */
#ifndef TERND_ZMTP_H
#define TERND_ZMTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <ternd/buf.h>

#define ZMTP_GREETING_LEN 64
#define ZMTP_SIG_LEN 11 /* signature (10) + major version: enough to decide */

enum { ZMTP_MORE = 1, ZMTP_LONG = 2, ZMTP_COMMAND = 4 };

struct zmtp_greeting {
    int major, minor;
    char mechanism[21];
    int as_server;
};

/* Our greeting: version 3.minor, mechanism NULL, as-server 0. */
void zmtp_greeting_build(uint8_t out[ZMTP_GREETING_LEN], int minor);
/* The first ZMTP_SIG_LEN bytes of a peer's greeting: 0 when they are a
 * ZMTP 3.x signature, TN_EPROTO otherwise (an older ZMTP or not ZMTP). */
int zmtp_signature_check(const uint8_t *p, size_t n);
/* A full greeting (ZMTP_GREETING_LEN bytes): 0, or TN_EPROTO. */
int zmtp_greeting_parse(const uint8_t *p, struct zmtp_greeting *g);

struct zmtp_frame {
    int flags; /* ZMTP_MORE | ZMTP_LONG | ZMTP_COMMAND */
    const uint8_t *body;
    uint64_t len;
};

/* Parse one frame at p (n bytes available). Returns the bytes it takes
 * (> 0), 0 when more bytes are needed, TN_EPROTO for reserved flag bits or
 * a command with MORE, TN_ETOOBIG when the body exceeds max. */
ssize_t zmtp_frame_parse(const uint8_t *p, size_t n, uint64_t max, struct zmtp_frame *f);
/* Write a frame header for a body of len bytes (short form when it fits)
 * into hdr; returns its size (2 or 9). */
size_t zmtp_frame_header(uint8_t hdr[9], int flags, uint64_t len);
/* Append a whole frame to b. 0 or TN_ENOMEM. */
int zmtp_frame_append(struct tn_buf *b, int flags, const void *body, size_t len);

struct zmtp_cmd {
    const uint8_t *name;
    size_t nlen;
    const uint8_t *data;
    size_t dlen;
};

/* Split a command frame's body into name and data: 0 or TN_EPROTO. */
int zmtp_cmd_parse(const uint8_t *body, size_t len, struct zmtp_cmd *c);
/* Is the command's name exactly name (case-sensitive, as the RFC)? */
int zmtp_cmd_is(const struct zmtp_cmd *c, const char *name);
/* Append a command frame: name + data. 0 or TN_ENOMEM / TN_EINVAL. */
int zmtp_cmd_append(struct tn_buf *b, const char *name, const void *data, size_t len);

/* READY/metadata properties in p: 0 when well formed (each name 1..255
 * bytes, each value length within the data), TN_EPROTO otherwise. */
int zmtp_props_valid(const uint8_t *p, size_t n);
/* Find a property by name (case-insensitive) in well-formed properties:
 * 1 with the value in v and vlen, or 0. */
int zmtp_prop_find(const uint8_t *p, size_t n, const char *name, const uint8_t **v, size_t *vlen);
/* Append a READY command with Socket-Type (and Identity when idlen > 0). */
int zmtp_ready_append(struct tn_buf *b, const char *socket_type, const void *id, size_t idlen);
/* Append an ERROR command (reason truncated to 255 bytes). */
int zmtp_error_append(struct tn_buf *b, const char *reason);

/* May a socket of type ours talk to a peer announcing type peer (n bytes),
 * per the RFC's table of valid pairs? 1 or 0. */
int zmtp_socket_compatible(const char *ours, const uint8_t *peer, size_t n);

#endif
