/*
 * fuzz_gateway.c -- libFuzzer target: the gateway's client packet codec
 * and session layer (modules/gateway/codec.c, session.c, luaapi.c) over a
 * TCP-style connection, one input per connection (see fz_gateway.c).
 */
#include "fz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_gateway_start(0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_feed(fz_gateway_start(0), data, size);
    return 0;
}
