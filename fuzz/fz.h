/*
 * fz.h -- the shared harness of the libFuzzer targets in fuzz/: a private
 * data directory, a module started in-process from a YAML snippet, and a
 * driver that pushes one input through a real connection of the core.
 */
#ifndef TERND_FUZZ_FZ_H
#define TERND_FUZZ_FZ_H

#include <stddef.h>
#include <stdint.h>

#include "core.h"

/* The entry points libFuzzer calls (each target defines both). */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Once per process: the loop, a fresh data directory (on /dev/shm when
 * there is one, so fsyncs cost nothing), logging to /dev/null unless
 * FUZZ_LOG=1. Returns the directory (absolute, owned by the harness). */
const char *fz_init(void);

/* "<data dir>/<name>": a socket path or file name inside the directory. */
const char *fz_path(const char *name);

/* Start module m (linked into the fuzzer) with its YAML section text, as
 * the core would: create_conf, the key table, check_conf, init, start.
 * Exits the process when any step fails (a harness bug, not a finding). */
struct tn_mod *fz_module_start(const struct tn_module *m, const char *section_yaml);

/* fz_module_start with a socket: yaml_fmt holds one %s, replaced by the
 * path of a new unix socket in the data directory named sock_name; returns
 * that path (static storage). */
const char *fz_module_listen(const struct tn_module *m, const char *sock_name,
                             const char *yaml_fmt);

/* Connect to the unix socket at path, send data and half-close, read and
 * drop every reply, until the server closes the connection (or stops
 * making progress, then close ours). Afterwards every server connection
 * must be gone: one left over aborts (a connection leak). */
void fz_feed(const char *path, const uint8_t *data, size_t size);

/* The gateway module (fz_gateway.c), started once: the path of its TCP
 * packet listener, or with ws of its WebSocket listener (path /ws). */
const char *fz_gateway_start(int ws);

#endif
