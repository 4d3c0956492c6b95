/*
 * netutil.h -- helpers for unit tests that drive the real libev loop with
 * real loopback sockets: the client side is a non-blocking socket, and the
 * loop is stepped between client operations (no threads).
 */
#ifndef TN_TEST_NETUTIL_H
#define TN_TEST_NETUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core.h"

/* 127.0.0.1:port (0: any free port). */
void nu_addr_loopback(struct tn_addr *a, int port);
/* unix:path */
void nu_addr_unix(struct tn_addr *a, const char *path);
/* Turn "127.0.0.1:1234" into an address. */
void nu_addr_parse(struct tn_addr *a, const char *text);

/* Run the loop once, waiting at most ms for an event. */
void nu_step(int ms);
/* Step the loop until pred(ud) is true or timeout_ms pass; returns pred. */
int nu_until(int (*pred)(void *ud), void *ud, int timeout_ms);
/* Step the loop for ms milliseconds. */
void nu_spin(int ms);

/* A non-blocking client connected to addr (the loop steps while it
 * connects). */
int nu_connect(const struct tn_addr *a);
/* Send all of p (stepping the loop while the socket is full); -1 if the
 * socket stays full for timeout_ms. */
int nu_send(int fd, const void *p, size_t n, int timeout_ms);
int nu_send_str(int fd, const char *s);
/* Read until want bytes arrived, EOF, or timeout. Returns bytes read;
 * *eof is set when the peer closed. */
size_t nu_recv(int fd, char *buf, size_t want, int timeout_ms, int *eof);
/* Read until the peer closes (or timeout); out is NUL-terminated. */
size_t nu_recv_all(int fd, char *buf, size_t cap, int timeout_ms, int *eof);
/* Read until the text so far contains `until` (or EOF/timeout). */
size_t nu_recv_until(int fd, char *buf, size_t cap, const char *until, int timeout_ms, int *eof);

#endif
