/*
 * local.c -- registration with the discovery module of this process,
 * through its "discovery.registry" service instead of a loopback TCP
 * connection: the producer (our address and ports) once, then every topic
 * and channel create/delete as it happens, and the producer removed at
 * stop. The service may come up before or after the broker (module order
 * in the file, a reload adding or removing discovery), so the broker looks
 * it up at start and then follows the core's service.up/service.down
 * events. A broker.lookupd entry naming the local discovery's TCP address
 * is skipped while the in-process path is active (registered once).
 */
#include <string.h>
#include <unistd.h>

#include "broker.h"
#include "tn_discovery.h"

/* The service, if it offers what we call (an older discovery may not). */
static const struct tn_discovery_service *usable_service(void)
{
    const struct tn_discovery_service *d = tn_service_lookup(TN_DISCOVERY_SERVICE);

    return d && d->size >= sizeof(*d) ? d : NULL;
}

static void register_one(void *ud, const char *topic, const char *channel)
{
    struct broker *bk = ud;
    int rc = bk->disc->producer_register(bk->disc_producer, topic, channel);

    if (rc != 0)
        tn_log_warn(BROKER_LOG, "local discovery: register %s%s%s: %s", topic, channel ? " " : "",
                    channel ? channel : "", tn_strerror(rc));
}

static void bind_service(struct broker *bk, const struct tn_discovery_service *d)
{
    char host[256] = "";
    struct tn_discovery_producer_info info = {0};

    gethostname(host, sizeof(host) - 1);
    info.broadcast_address = broker_broadcast_address(bk);
    info.hostname = host;
    info.version = BROKER_VERSION;
    info.tcp_port = broker_tcp_port(bk);
    info.http_port = broker_http_port(bk);
    /* discovery's table wants both ports: without one of our listeners
     * the TCP path (which sends 0) remains the only way */
    if (info.tcp_port == 0 || info.http_port == 0) {
        tn_log_warn(BROKER_LOG, "local discovery: tcp_listen and http_listen are needed to "
                                "register in-process; not registered");
        return;
    }
    if (!(bk->disc_producer = d->register_producer(&info))) {
        tn_log_error(BROKER_LOG, "local discovery: cannot register the producer");
        return;
    }
    bk->disc = d;
    broker_lookupd_each(bk, register_one, bk);
    broker_lookupd_local(bk, d->tcp_address());
    tn_log_info(BROKER_LOG, "registered with the discovery module in-process (%zu topics)",
                bk->topics.n);
}

static void unbind_service(struct broker *bk)
{
    if (!bk->disc)
        return;
    bk->disc->unregister_producer(bk->disc_producer);
    bk->disc = NULL;
    bk->disc_producer = NULL;
    broker_lookupd_local(bk, NULL);
}

static int on_service_up(const char *event, void *arg, void *ud)
{
    struct broker *bk = ud;
    const struct tn_discovery_service *d;

    if (strcmp(arg, TN_DISCOVERY_SERVICE) == 0 && !bk->disc && !bk->stopping &&
        (d = usable_service()))
        bind_service(bk, d);
    return 0;
}

/* Runs while the service still resolves: discovery frees our producer
 * with its tables right after. */
static int on_service_down(const char *event, void *arg, void *ud)
{
    struct broker *bk = ud;

    if (strcmp(arg, TN_DISCOVERY_SERVICE) == 0 && bk->disc) {
        tn_log_info(BROKER_LOG, "the discovery module stopped: in-process registration ends");
        unbind_service(bk);
    }
    return 0;
}

int broker_local_start(struct broker *bk)
{
    const struct tn_discovery_service *d;
    int rc;

    if ((rc = tn_event_on(TN_SERVICE_UP_EVENT, on_service_up, bk)) != 0)
        return rc;
    if ((rc = tn_event_on(TN_SERVICE_DOWN_EVENT, on_service_down, bk)) != 0) {
        tn_event_off(TN_SERVICE_UP_EVENT, on_service_up, bk);
        return rc;
    }
    bk->disc_watching = 1;
    if ((d = usable_service()))
        bind_service(bk, d);
    return 0;
}

void broker_local_stop(struct broker *bk)
{
    if (bk->disc_watching) {
        tn_event_off(TN_SERVICE_UP_EVENT, on_service_up, bk);
        tn_event_off(TN_SERVICE_DOWN_EVENT, on_service_down, bk);
        bk->disc_watching = 0;
    }
    unbind_service(bk);
}

const char *broker_local_tcp(struct broker *bk)
{
    return bk->disc ? bk->disc->tcp_address() : NULL;
}

void broker_local_announce(struct broker *bk, int reg, const char *topic, const char *channel)
{
    int rc;

    if (!bk->disc)
        return;
    if (reg)
        register_one(bk, topic, channel);
    else if ((rc = bk->disc->producer_unregister(bk->disc_producer, topic, channel)) != 0)
        tn_log_warn(BROKER_LOG, "local discovery: unregister %s: %s", topic, tn_strerror(rc));
}
