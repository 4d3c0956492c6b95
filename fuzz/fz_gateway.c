/*
 * fz_gateway.c -- the gateway module as the fuzz targets fuzz_gateway
 * (packets over TCP) and fuzz_ws (WebSocket frames) run it: both
 * listeners on unix sockets, small limits, and a Lua script whose
 * on_packet lets the packet's route choose the work (reply, bind, groups,
 * push, broadcast, attributes, close, forward to a missing node), so the
 * fuzzer reaches the whole session layer from the bytes alone.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fz.h"

extern const struct tn_module ternd_module;

static const char script[] =
    "function on_connect(s) return true end\n"
    "function on_packet(s, route, seq, data)\n"
    "  local r = route % 10\n"
    "  if r == 1 then s:reply(data)\n"
    "  elseif r == 2 then s:bind(#data > 0 and data or 'u')\n"
    "  elseif r == 3 then s:unbind()\n"
    "  elseif r == 4 then ternd.gateway.join('g' .. (#data % 3), s)\n"
    "  elseif r == 5 then ternd.gateway.multicast('g' .. (#data % 3), route, data)\n"
    "  elseif r == 6 then ternd.gateway.broadcast(route, data)\n"
    "  elseif r == 7 then ternd.gateway.push(data, route, data)\n"
    "  elseif r == 8 then s:set('k', data); s:push(route, s:get('k') or '')\n"
    "  elseif r == 9 then s:close()\n"
    "  else return 'nonode' end\n"
    "end\n";

const char *fz_gateway_start(int ws)
{
    static char tcp_sock[512], ws_sock[512];
    char yaml[4096], path[512];
    FILE *f;

    if (!tcp_sock[0]) {
        snprintf(tcp_sock, sizeof(tcp_sock), "%s", fz_path("gw.sock"));
        snprintf(ws_sock, sizeof(ws_sock), "%s", fz_path("ws.sock"));
        snprintf(path, sizeof(path), "%s", fz_path("route.lua"));
        if (!(f = fopen(path, "w")) || fputs(script, f) < 0 || fclose(f) != 0) {
            perror("fuzz: route.lua");
            exit(1);
        }
        snprintf(yaml, sizeof(yaml),
                 "gateway:\n"
                 "  listen:\n"
                 "    - { proto: tcp, addr: 'unix:%s' }\n"
                 "    - { proto: ws, addr: 'unix:%s', path: /ws }\n"
                 "  packet: { route_bytes: 2, seq_bytes: 2, max_size: 4KiB }\n"
                 "  max_output: 64KiB\n"
                 "  ws_compress_min: 16\n"
                 "  lua: { script: '%s' }\n",
                 tcp_sock, ws_sock, path);
        fz_module_start(&ternd_module, yaml);
    }
    return ws ? ws_sock : tcp_sock;
}
