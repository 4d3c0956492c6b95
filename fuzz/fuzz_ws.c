/*
 * fuzz_ws.c -- libFuzzer target: the gateway's WebSocket path
 * (modules/gateway/ws.c: handshake, frames, fragmentation, control frames,
 * permessage-deflate) carrying gateway packets. The first input byte picks
 * the opening: 0 the input is the whole stream (handshake included), 1 a
 * valid handshake is sent first, 2 one offering permessage-deflate; the
 * rest of the input follows it.
 */
#include <stdlib.h>
#include <string.h>

#include "fz.h"

static const char hs[] = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n";
static const char deflate[] =
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_gateway_start(1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t mode, n = 0;
    uint8_t *buf;

    if (size == 0)
        return 0;
    mode = data[0] % 3;
    if (!(buf = malloc(sizeof(hs) + sizeof(deflate) + 2 + size)))
        return 0;
    if (mode) {
        memcpy(buf, hs, sizeof(hs) - 1);
        n = sizeof(hs) - 1;
        if (mode == 2) {
            memcpy(buf + n, deflate, sizeof(deflate) - 1);
            n += sizeof(deflate) - 1;
        }
        memcpy(buf + n, "\r\n", 2);
        n += 2;
    }
    memcpy(buf + n, data + 1, size - 1);
    fz_feed(fz_gateway_start(1), buf, n + size - 1);
    free(buf);
    return 0;
}
