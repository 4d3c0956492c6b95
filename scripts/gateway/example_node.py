#!/usr/bin/python3
"""example_node -- a backend node for the ternd gateway (modules/gateway/NODE.md).

Listens on TCP; for every packet the gateway forwards it answers the client
(same route and seq) with "<name>:<data>". Data with a command prefix also
exercises the other node frames:
    bind:UID           bind the session to UID, then answer
    push:UID:TEXT      push TEXT (route 60) to the session bound to UID
    join:GROUP         add the session to GROUP
    group:GROUP:TEXT   send TEXT (route 40) to every member of GROUP
    broadcast:TEXT     send TEXT (route 50) to every session
    close              answer, then ask the gateway to close the session
Sessions the gateway reports closed are printed ("closed <id>").

With --tls-cert/--tls-key the node serves TLS (the gateway's
`gateway.node_tls`); --tls-ca also asks the gateway for a certificate that
CA signed (mutual TLS).

Usage: example_node.py [--listen 127.0.0.1:3600] [--name node1]
                       [--tls-cert node.pem --tls-key node.key [--tls-ca ca.pem]]
"""

import argparse
import asyncio
import ssl
import struct
import sys

FORWARD, CLOSED = 1, 2
SESSION, UID, GROUP, BROADCAST, BIND, CLOSE, JOIN, LEAVE = 16, 17, 18, 19, 20, 21, 22, 23


def frame(ftype, body):
    return struct.pack(">IB", len(body) + 1, ftype) + body


def name16(s):
    return struct.pack(">H", len(s)) + s


def answer(name, sid, route, seq, uid, data):
    """The frames a FORWARD gets back."""
    out = []
    reply = name.encode() + b":" + data
    if data.startswith(b"bind:"):
        out.append(frame(BIND, struct.pack(">Q", sid) + data[5:]))
    elif data.startswith(b"push:"):
        target, _, text = data[5:].partition(b":")
        out.append(frame(UID, struct.pack(">i", 60) + name16(target) + text))
    elif data.startswith(b"join:"):
        out.append(frame(JOIN, struct.pack(">Q", sid) + data[5:]))
    elif data.startswith(b"group:"):
        group, _, text = data[6:].partition(b":")
        out.append(frame(GROUP, struct.pack(">i", 40) + name16(group) + text))
    elif data.startswith(b"broadcast:"):
        out.append(frame(BROADCAST, struct.pack(">i", 50) + data[10:]))
    if data == b"whoami":
        reply = name.encode() + b":uid=" + uid
    out.append(frame(SESSION, struct.pack(">Qii", sid, route, seq) + reply))
    if data == b"close":
        out.append(frame(CLOSE, struct.pack(">Q", sid)))
    return out


async def serve_link(name, reader, writer):
    try:
        while True:
            head = await reader.readexactly(5)
            length, ftype = struct.unpack(">IB", head)
            body = await reader.readexactly(length - 1)
            if ftype == FORWARD:
                sid, route, seq, ulen = struct.unpack(">QiiH", body[:18])
                uid, data = body[18:18 + ulen], body[18 + ulen:]
                for f in answer(name, sid, route, seq, uid, data):
                    writer.write(f)
            elif ftype == CLOSED:
                print("closed %d" % struct.unpack(">Q", body[:8]), flush=True)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def tls_context(a):
    """None for plaintext, else a server context from the --tls-* options."""
    if not a.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.tls_cert, a.tls_key)
    if a.tls_ca:
        ctx.load_verify_locations(a.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def main():
    ap = argparse.ArgumentParser(description="example backend node for the ternd gateway")
    ap.add_argument("--listen", default="127.0.0.1:3600")
    ap.add_argument("--name", default="node1")
    ap.add_argument("--tls-cert", help="serve TLS with this PEM certificate (chain)")
    ap.add_argument("--tls-key", help="the certificate's PEM private key")
    ap.add_argument("--tls-ca", help="require a client certificate signed by this CA")
    a = ap.parse_args()
    host, _, port = a.listen.rpartition(":")
    server = await asyncio.start_server(lambda r, w: serve_link(a.name, r, w), host, int(port),
                                        ssl=tls_context(a))
    print("listening on %s%s" % (a.listen, " (TLS)" if a.tls_cert else ""), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
