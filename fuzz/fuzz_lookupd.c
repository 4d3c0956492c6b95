/*
 * fuzz_lookupd.c -- libFuzzer target: the discovery module's nsqlookupd
 * TCP protocol V1 (modules/discovery/proto_v1.c), one input per
 * connection. Closing a connection removes its producer everywhere, so
 * every input starts from an empty directory.
 */
#include <stdio.h>

#include "fz.h"

extern const struct tn_module ternd_module;

static const char *sock;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    sock = fz_module_listen(&ternd_module, "lookupd.sock",
                            "discovery:\n"
                            "  tcp_listen: unix:%s\n"
                            "  http_listen: ~\n"
                            "  max_producers: 4\n"
                            "  max_registrations: 16\n"
                            "  max_identify_size: 2KiB\n");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_feed(sock, data, size);
    return 0;
}
