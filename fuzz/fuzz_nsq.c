/*
 * fuzz_nsq.c -- libFuzzer target: the broker's NSQ TCP protocol V2
 * (modules/broker/proto.c) fed one input per connection, the module started
 * in-process with small limits so queues overflow to disk and limits are
 * reached. Each input starts from an empty broker: the topics an input
 * created are deleted after it.
 */
#include <stdio.h>

#include "broker.h"
#include "fz.h"

extern const struct tn_module ternd_module;

static const char *sock;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    sock = fz_module_listen(&ternd_module, "nsq.sock",
                            "broker:\n"
                            "  tcp_listen: unix:%s\n"
                            "  http_listen: ~\n"
                            "  mem_queue_size: 2\n"
                            "  max_msg_size: 2KiB\n"
                            "  max_body_size: 16KiB\n"
                            "  max_rdy_count: 50\n"
                            "  max_bytes_per_file: 4KiB\n"
                            "  max_channel_consumers: 2\n"
                            "  max_attempts: 3\n"
                            "  dead_letter_topic: dead\n"
                            "  sync_every: 1000\n");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct broker_topic *t;

    fz_feed(sock, data, size);
    while ((t = broker_topic_first(broker_self)))
        broker_topic_delete(t);
    return 0;
}
