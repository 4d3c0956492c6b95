/*
 * fuzz_conf.c -- libFuzzer target: the YAML configuration loader
 * (server/conf.c over libyaml) and the key tables on top of it: the input
 * is a whole ternd.yaml; its daemon section goes through the daemon's
 * table and its broker section through the broker's table and checks, as
 * `ternd -t` would. Every error text is formatted (read in full).
 */
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "fz.h"

/* The loader resolves host names in addresses. Fuzzed names must not reach
 * the system resolver (slow, and the network is no part of the target):
 * this executable's getaddrinfo knows "localhost" only. */
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    struct {
        struct addrinfo ai;
        struct sockaddr_in sin;
    } *r;

    if (!node || strcmp(node, "localhost") != 0)
        return EAI_NONAME;
    if (!(r = calloc(1, sizeof(*r))))
        return EAI_MEMORY;
    r->sin.sin_family = AF_INET;
    r->sin.sin_addr.s_addr = htonl(0x7f000001);
    r->ai.ai_family = AF_INET;
    r->ai.ai_socktype = SOCK_STREAM;
    r->ai.ai_addr = (struct sockaddr *)&r->sin;
    r->ai.ai_addrlen = sizeof(r->sin);
    *res = &r->ai;
    return 0;
}

void freeaddrinfo(struct addrinfo *res)
{
    free(res);
}

/* The error texts are read in full, not just counted. */
size_t fz_conf_error_bytes;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_init();
    return 0;
}

static void apply_section(struct tn_conf *cf, const char *name, const struct tn_conf_cmd *table,
                          void *conf)
{
    const struct tn_conf_node *n = tn_conf_map_get(tn_conf_root(cf), name);

    if (!n || tn_conf_is_null(n))
        return;
    tn_conf_set_section(cf, name, n);
    tn_conf_apply(cf, n, table, conf);
    tn_conf_set_section(cf, NULL, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tn_conf *cf = tn_conf_load_string("fuzz.yaml", (const char *)data, size);
    struct tn_daemon_conf dc;
    struct broker_conf bc;

    if (!cf)
        return 0;
    if (tn_conf_root(cf)) {
        tn_daemon_conf_default(&dc);
        apply_section(cf, "daemon", tn_daemon_conf_table, &dc);
        memset(&bc, 0, sizeof(bc));
        broker_conf_default(&bc);
        apply_section(cf, "broker", broker_conf_table, &bc);
        if (tn_conf_errors(cf) == 0) {
            tn_conf_set_section(cf, "broker", tn_conf_map_get(tn_conf_root(cf), "broker"));
            broker_conf_check(cf, &bc);
            tn_conf_set_section(cf, NULL, NULL);
        }
    }
    for (size_t i = 0; i < tn_conf_error_count(cf); i++)
        fz_conf_error_bytes += strlen(tn_conf_error_text(cf, i));
    tn_conf_free(cf);
    return 0;
}
