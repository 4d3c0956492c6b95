#!/usr/bin/env python3
# mkseeds.py -- writes the seed corpora fuzz/corpus/<target>/ (small, valid
# or nearly valid inputs, one file each). Run from anywhere; the files are
# committed, rerun only to change them.
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def save(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def body(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b


# ---- NSQ protocol V2 -----------------------------------------------------------
ident = json.dumps({"client_id": "fz", "hostname": "h", "heartbeat_interval": 1000,
                    "feature_negotiation": True, "output_buffer_size": 128,
                    "output_buffer_timeout": 50, "msg_timeout": 2000,
                    "sample_rate": 10}).encode()
save("fuzz_nsq", "identify-pub-sub",
     b"  V2IDENTIFY\n" + body(ident) + b"PUB t\n" + body("hello") + b"PUB t\n" + body("x" * 40)
     + b"SUB t c\nRDY 10\nFIN 0123456789abcdef\nREQ 0123456789abcdef 10\n"
     b"TOUCH 0123456789abcdef\nNOP\nCLS\n")
save("fuzz_nsq", "mpub",
     b"  V2MPUB t\n" + body(struct.pack(">I", 3) + body("a") + body("bb") + body("ccc")))
save("fuzz_nsq", "dpub", b"  V2DPUB t 1000\n" + body("later") + b"PUB t#ephemeral\n" + body("e"))
save("fuzz_nsq", "auth", b"  V2AUTH\n" + body("secret"))
save("fuzz_nsq", "sub-ephemeral", b"  V2SUB t c#ephemeral\r\nRDY 5\r\nRDY 0\r\nCLS\r\n")
save("fuzz_nsq", "bad-magic", b"  V1PING\n")
z = zlib.compressobj(6, zlib.DEFLATED, -15)
deflated = z.compress(b"PUB z\n" + body("deflated") + b"SUB z c\nRDY 1\nNOP\n")
deflated += z.flush(zlib.Z_SYNC_FLUSH)
save("fuzz_nsq", "identify-deflate",
     b"  V2IDENTIFY\n" + body(json.dumps({"deflate": True, "deflate_level": 3,
                                          "feature_negotiation": True})) + deflated)

# ---- nsqlookupd protocol V1 ------------------------------------------------------
peer = json.dumps({"broadcast_address": "h", "tcp_port": 4150, "http_port": 4151,
                   "version": "1.3.0", "hostname": "h"}).encode()
save("fuzz_lookupd", "identify-register",
     b"  V1PING\nIDENTIFY\n" + body(peer) + b"REGISTER t c\nREGISTER t\nREGISTER t2 c#ephemeral\n"
     b"UNREGISTER t c\nUNREGISTER t\nPING\n")
save("fuzz_lookupd", "register-first", b"  V1REGISTER t\n")
save("fuzz_lookupd", "bad-identify", b"  V1IDENTIFY\n" + body('{"tcp_port":"x"}'))

# ---- HTTP ------------------------------------------------------------------------
save("fuzz_http", "get", "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
save("fuzz_http", "pipeline",
     "POST /echo HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
     "GET /chunk?x=1 HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\nOPTIONS / HTTP/1.1\r\n\r\n")
save("fuzz_http", "chunked-body",
     "POST /chunk HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n"
     "0\r\nTrailer: t\r\n\r\n")
save("fuzz_http", "prefix-args",
     "GET /p/abc%20d/%2F?a=1+2&a=3&b=%zz HTTP/1.0\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
     "DELETE /p/x HTTP/1.1\r\nConnection: close\r\n\r\n")
save("fuzz_http", "form-silent",
     "POST /p/form HTTP/1.1\r\nContent-Length: 6\r\n\r\nb=zz&cPOST /p/s HTTP/1.1\r\n"
     "X-Silent: 1\r\nContent-Length: 0\r\n\r\n")
save("fuzz_http", "upgrade",
     "GET /ws HTTP/1.1\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhello q")
save("fuzz_http", "expect-continue",
     "PUT /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc")
save("fuzz_http", "garbage", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")

# ---- YAML configuration ---------------------------------------------------------
with open(os.path.join(HERE, "..", "conf", "ternd.yaml"), "rb") as f:
    save("fuzz_conf", "default", f.read())
save("fuzz_conf", "small",
     "daemon:\n  log_level: debug\n  admin_listen: '[::1]:4171'\n  max_connections: 10\n"
     "  http: { max_header_size: 4KiB, keepalive_timeout: 5s }\n  plugins: [a, b]\n"
     "broker:\n  tcp_listen: unix:/tmp/x.sock\n  http_listen: ~\n  max_msg_size: 10KB\n"
     "  msg_timeout: 1m\n  lookupd: [127.0.0.1:4160, localhost:4161]\n"
     "  channels:\n    t/c: { max_attempts: 3, dead_letter_topic: dl }\n"
     "  deflate: no\n  lua: { script: ~ }\n")
save("fuzz_conf", "anchors",
     "defaults: &d { max_msg_size: 1MiB }\nbroker:\n  <<: *d\n  mem_queue_size: !!int 5\n"
     "daemon: {log_level: \"info\", data_dir: ./data}\n--- \nsecond: doc\n")

# ---- disk queue files ------------------------------------------------------------


def rec(payload):
    n = struct.pack(">I", len(payload))
    return n + struct.pack(">I", zlib.crc32(n + payload) & 0xffffffff) + payload


def meta(depth, rfile, rpos, wfile, wpos):
    text = "ternd-diskq 1\n%d\n%d,%d\n%d,%d\n" % (depth, rfile, rpos, wfile, wpos)
    return (text + "crc %08x\n" % (zlib.crc32(text.encode()) & 0xffffffff)).encode()


def dq(m, seg0, seg1=b""):
    """The raw mode (first byte even): the files' bytes."""
    return b"\0" + struct.pack(">H", len(m)) + m + struct.pack(">H", len(seg0)) + seg0 + seg1


def dq_structured(knobs, damage, payloads):
    """The structured mode (first byte odd): metadata knobs (depth delta,
    read file, read record, write position delta), damage, records."""
    return (b"\1" + bytes(knobs) + bytes([damage])
            + b"".join(bytes([len(p)]) + p for p in payloads))


seg = rec(b"one") + rec(b"two") + rec(b"three")
save("fuzz_diskq", "synced", dq(meta(3, 0, 0, 0, len(seg)), seg))
save("fuzz_diskq", "no-meta", dq(b"", seg))
save("fuzz_diskq", "unsynced-tail", dq(meta(1, 0, 0, 0, len(rec(b"one"))), seg))
save("fuzz_diskq", "torn-tail", dq(meta(0, 0, 0, 0, 0), seg[:-2]))
save("fuzz_diskq", "two-segments", dq(meta(4, 0, 0, 1, len(rec(b"four"))), seg, rec(b"four")))
save("fuzz_diskq", "corrupt-middle",
     dq(meta(3, 0, 0, 0, len(seg)), rec(b"one") + b"\0\0\0\3XXXXtwo" + rec(b"three")))

# ---- gateway packets: size(4) | header(1) | route(2) | seq(2) | data, big-endian ----


def packet(route, seq, data, ext=0):
    return struct.pack(">IBhh", 5 + len(data), ext & 0x7f, route, seq) + data


HEARTBEAT = struct.pack(">IB", 1, 0x80)
routes = b"".join(packet(r, r, b"payload-%d" % r) for r in range(1, 11))
save("fuzz_gateway", "every-route", routes + HEARTBEAT)
save("fuzz_gateway", "bind-push-group",
     packet(2, 1, b"user1") + packet(4, 2, b"abc") + packet(5, 3, b"abc") + packet(7, 4, b"user1")
     + packet(8, 5, b"attr") + packet(6, 6, b"all") + packet(3, 7, b"") + packet(9, 8, b""))
save("fuzz_gateway", "heartbeat-time", struct.pack(">IBq", 9, 0x80, 123456789))
save("fuzz_gateway", "too-big", struct.pack(">IBhh", 1 << 20, 0, 1, 1))
save("fuzz_gateway", "split", packet(1, 1, b"x" * 300)[:150])

# ---- WebSocket frames (client frames are masked); the first byte picks the opening ----


def ws_frame(payload, op=2, fin=True, rsv1=False, mask=b"\x01\x02\x03\x04"):
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | op
    n = len(payload)
    if n < 126:
        head = struct.pack(">BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack(">BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack(">BBQ", b0, 0x80 | 127, n)
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


save("fuzz_ws", "binary-packets",
     b"\x01" + ws_frame(packet(1, 1, b"hi") + packet(2, 2, b"u")) + ws_frame(HEARTBEAT)
     + ws_frame(b"\x03\xe8bye", op=8))
save("fuzz_ws", "fragmented",
     b"\x01" + ws_frame(packet(1, 1, b"frag")[:5], fin=False) + ws_frame(b"ping", op=9)
     + ws_frame(packet(1, 1, b"frag")[5:], op=0) + ws_frame(b"", op=10))
z = zlib.compressobj(6, zlib.DEFLATED, -15)
comp = z.compress(packet(1, 9, b"compressed " * 8)) + z.flush(zlib.Z_SYNC_FLUSH)
save("fuzz_ws", "deflate", b"\x02" + ws_frame(comp[:-4], rsv1=True) + ws_frame(b"\x03\xe8", op=8))
save("fuzz_ws", "text-and-close", b"\x01" + ws_frame(b"text \xc3\xa9", op=1)
     + ws_frame(b"\x03\xe9", op=8))
save("fuzz_ws", "raw-handshake",
     b"\x00GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
     b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n"
     b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
     + ws_frame(packet(1, 1, b"raw")))
save("fuzz_diskq", "structured-exact", dq_structured([0, 0, 0, 0], 0, [b"a", b"bb", b"ccc"]))
save("fuzz_diskq", "structured-two-segments",
     dq_structured([0, 1, 2, 0], 0, [bytes([65 + i]) * 200 for i in range(8)]))
save("fuzz_diskq", "structured-unsynced", dq_structured([0xfe, 0, 1, 0xf0], 0, [b"x" * 30] * 6))
save("fuzz_diskq", "structured-torn", dq_structured([0, 0, 0, 0], 0x45, [b"y" * 50] * 5))
save("fuzz_diskq", "structured-no-meta", dq_structured([0, 0, 0, 0], 0x80, [b"", b"z", b""]))
