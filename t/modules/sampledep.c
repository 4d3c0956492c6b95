/*
 * sampledep.c -- a test module that depends on "sample": proves dependency
 * loading (sample is loaded even when the file does not name it) and
 * ordering (it starts after sample and finds sample's service).
 */
#include <ternd/ternd.h>

static const char *const sampledep_deps[] = {"sample", NULL};

static int sampledep_start(struct tn_mod *m)
{
    void *s = tn_service_lookup("sample");

    tn_log_info("sampledep", "started; sample service %s", s ? "found" : "missing");
    return s ? 0 : TN_ENOTFOUND;
}

static int sampledep_stop(struct tn_mod *m)
{
    tn_log_info("sampledep", "stopped");
    return 0;
}

TN_API const struct tn_module ternd_module = {
    TN_MODULE_HEAD("sampledep", "1.0"),
    sampledep_deps,
    NULL, 0,
    NULL, NULL, NULL, sampledep_start, sampledep_stop, NULL, NULL, NULL,
};
