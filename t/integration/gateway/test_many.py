"""10,000 concurrent TCP clients on one gateway: every one gets its echo,
the session count is exact, and all sessions go away when they close.

The test raises its own RLIMIT_NOFILE soft limit to the hard one; ternd
(which does not change its limit) inherits it, and daemon.max_connections
is set above 10,000 (its default is exactly 10,000)."""

import resource
import selectors
import socket
import time
from pathlib import Path

import pytest

import tnhelp
from gwhelp import Codec

N = 10000
SCRIPT = (Path(__file__).resolve().parent / "route_test.lua").read_text()


def test_ten_thousand_connections(gateway):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = N + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip("RLIMIT_NOFILE hard limit %d < %d" % (hard, need))
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need) if hard == resource.RLIM_INFINITY
                                                else hard, hard))
    try:
        run(gateway)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run(gateway):
    t = gateway(SCRIPT, daemon={"max_connections": N + 100})
    codec = Codec()
    socks = []
    for i in range(N):
        s = socket.socket()
        s.settimeout(10)
        s.connect(("127.0.0.1", t.tcp_port))
        s.setblocking(False)
        socks.append(s)
    sel = selectors.DefaultSelector()
    want = {}
    for i, s in enumerate(socks):
        s.send(codec.packet(1, i % 30000, b"c%d" % i))
        sel.register(s, selectors.EVENT_READ, i)
        want[i] = b""
    done = 0
    deadline = time.monotonic() + tnhelp.scaled(60)
    while done < N and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            i = key.data
            want[i] += key.fileobj.recv(4096)
            p, rest = codec.decode(want[i])
            if p is not None:
                assert p["data"] == b"echo:c%d" % i and rest == b""
                sel.unregister(key.fileobj)
                done += 1
    assert done == N, "%d of %d clients answered" % (done, N)
    m = t.metrics()
    assert m["ternd_gateway_sessions"] == N
    assert m["ternd_gateway_packets_in_total"] == N
    for s in socks:
        s.close()
    tnhelp.wait_for(lambda: t.metrics()["ternd_gateway_sessions"] == 0, 30,
                    what="every session closed")
