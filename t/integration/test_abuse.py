"""Abuse: one ternd running the broker, discovery and the admin endpoint is
attacked the ways a public port is -- consumers that never read, 10k
connections opening and closing, oversized frames, garbage bytes on every
port, connections that connect and say nothing -- and must keep serving
everybody else with its memory (VmRSS) bounded."""

import random
import re
import resource
import socket
import struct
import sys
import time
from pathlib import Path

import pytest

import tnhelp

sys.path.insert(0, str(Path(__file__).resolve().parent / "broker"))
import nsqwire as nw  # noqa: E402

MSG = 1024 * 1024          # body of the slow consumer's messages
OUT_MAX = 64 * 1024 * 1024  # the connection layer's default output limit
SILENT_TIMEOUT = 2          # seconds: heartbeat 1s (read timeout 2x), HTTP and lookupd
CONNS = 10000


def modules_dir():
    return tnhelp.BUILD / "lib" / "ternd" / "modules"


@pytest.fixture
def server(ternd):
    for so in ("broker.so", "discovery.so"):
        if not (modules_dir() / so).exists():
            pytest.skip("%s missing in %s: build first" % (so, modules_dir()))
    ports = {k: tnhelp.free_port() for k in ("btcp", "bhttp", "dtcp", "dhttp", "admin")}
    t = ternd(daemon={"modules_dir": str(modules_dir()),
                      "admin_listen": "127.0.0.1:%d" % ports["admin"],
                      "max_connections": 20000,
                      "http": {"request_timeout": "%ds" % SILENT_TIMEOUT,
                               "keepalive_timeout": "%ds" % SILENT_TIMEOUT}},
              sections={"broker": {"tcp_listen": "127.0.0.1:%d" % ports["btcp"],
                                   "http_listen": "127.0.0.1:%d" % ports["bhttp"],
                                   "heartbeat_interval": "1s",
                                   "max_msg_size": "1MiB",
                                   "max_body_size": "2MiB"},
                        "discovery": {"tcp_listen": "127.0.0.1:%d" % ports["dtcp"],
                                      "http_listen": "127.0.0.1:%d" % ports["dhttp"],
                                      "inactive_timeout": "%ds" % SILENT_TIMEOUT}})
    t.ports = ports
    t.start()
    for p in ports.values():
        tnhelp.wait_for(lambda p=p: port_open(p), 10, what="port %d" % p)
    yield t
    if t.alive():
        t.stop()


@pytest.fixture
def many_fds():
    """Raise this process's descriptor limit (ternd inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if want < 2500:
        pytest.skip("RLIMIT_NOFILE hard limit %d is too low" % hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield want
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def rss_kib(t):
    text = Path("/proc/%d/status" % t.pid).read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1))


def slack_kib(t, normal_mib):
    """Room for RSS growth: more under ASan (its quarantine holds freed
    memory) or a wrapper such as valgrind (which holds freed blocks too)."""
    held = tnhelp.WRAPPER or "libasan" in Path("/proc/%d/maps" % t.pid).read_text()
    return (300 if held else normal_mib) * 1024


def served(t):
    """Every service still answers a normal request."""
    assert tnhelp.request(t.ports["admin"], "GET", "/ping").status == 200
    assert tnhelp.request(t.ports["bhttp"], "GET", "/ping").status == 200
    assert tnhelp.request(t.ports["dhttp"], "GET", "/ping").status == 200
    nw.publish(t.ports["btcp"], "ok", [b"fine"])
    with socket.create_connection(("127.0.0.1", t.ports["dtcp"]), timeout=5) as s:
        s.sendall(b"  V1PING\n")
        assert read_exact(s, 6) == b"\0\0\0\x02OK"


def wait_closed(s, timeout):
    """Read (and drop) until the peer closes: True, or False on timeout."""
    deadline = time.monotonic() + timeout * tnhelp.TIMEOUT_SCALE
    while True:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not s.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def read_exact(s, n):
    data = b""
    s.settimeout(5 * tnhelp.TIMEOUT_SCALE)
    while len(data) < n:
        b = s.recv(n - len(data))
        if not b:
            break
        data += b
    return data


def drain_channel(port, topic, channel, n):
    """Consume and FIN n messages (frees what a cut-off consumer held)."""
    c = nw.consumer(port, topic, channel, rdy=50, heartbeat_interval=60000)
    for _ in range(n):
        c.fin(c.read_message(timeout=10 * tnhelp.TIMEOUT_SCALE).id)
    c.nop()
    c.close()


# ---- slow consumers ----------------------------------------------------------------


def slow_consumer_round(t, n):
    """A consumer that takes RDY and never reads: the server must cut it
    off at its output limit (with a log line naming it), and carry on."""
    mark = t.log_size()
    slow = nw.Conn(t.ports["btcp"])
    slow.identify(heartbeat_interval=60000, feature_negotiation=True)
    slow.sub("slow", "ch")
    slow.expect_ok()
    slow.rdy(2500)
    peer = "127.0.0.1:%d" % slow.sock.getsockname()[1]
    body = b"x" * MSG
    with nw.Conn(t.ports["btcp"]) as p:
        for i in range(n):
            p.pub("slow", body)
            p.expect_ok()
    text = t.wait_log(r"conn: %s: output queue over \d+ bytes, closing" % re.escape(peer),
                      since=mark, timeout=20)
    assert "over %d bytes" % OUT_MAX in text
    slow.close()
    # the cut-off consumer's messages went back to the channel
    drain_channel(t.ports["btcp"], "slow", "ch", n)
    served(t)


def test_slow_consumer_is_cut_off_and_memory_stays_bounded(server):
    t = server
    n = (OUT_MAX + 16 * 1024 * 1024) // MSG + 16  # past the limit and the socket buffers
    base = rss_kib(t)
    slow_consumer_round(t, n)
    first = rss_kib(t)
    for _ in range(2):
        slow_consumer_round(t, n)
    last = rss_kib(t)
    # the first round may keep its peak (allocator caches); later rounds
    # must not add to it
    slack = slack_kib(t, 48)
    assert last <= first + slack, "VmRSS %d -> %d -> %d KiB" % (base, first, last)
    # and the peak is the messages plus the output limit, not more
    bound = (n * MSG + OUT_MAX) // 1024 + slack + 64 * 1024
    assert first - base <= bound, "VmRSS %d -> %d KiB (bound +%d)" % (base, first, bound)


# ---- many connections ------------------------------------------------------------


def churn(port, total, batch, hello):
    """Open `batch` connections at once (sending hello on each), close them
    all, until `total` were opened."""
    opened = 0
    while opened < total:
        socks = []
        for _ in range(min(batch, total - opened)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5 * tnhelp.TIMEOUT_SCALE)
            s.connect(("127.0.0.1", port))
            socks.append(s)
        for i, s in enumerate(socks):
            if hello and i % 2 == 0:
                try:
                    s.sendall(hello)
                except OSError:
                    pass
        for s in socks:
            s.close()
        opened += len(socks)


def test_ten_thousand_connections_open_and_close(server, many_fds):
    t = server
    batch = min(1000, many_fds // 2 - 100)
    churn(t.ports["btcp"], batch, batch, b"  V2NOP\n")  # warm up: the peak
    before = rss_kib(t)
    start = time.monotonic()
    churn(t.ports["btcp"], CONNS, batch, b"  V2NOP\n")
    churn(t.ports["bhttp"], CONNS, batch, b"GET /ping HTTP/1.1\r\n\r\n")
    elapsed = time.monotonic() - start
    assert t.alive()
    served(t)
    after = rss_kib(t)
    slack = slack_kib(t, 32)
    assert after <= before + slack, "VmRSS %d -> %d KiB over 2x%d connections (%.1fs)" % (
        before, after, CONNS, elapsed)


# ---- oversized frames ------------------------------------------------------------


def http_refused(port, req):
    """Send a request the server refuses before reading all of it (it may
    close while we still send); the status of its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5 * tnhelp.TIMEOUT_SCALE) as s:
        try:
            s.sendall(req)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r, _ = tnhelp.read_response(s)
        return r.status



def test_oversized_frames_are_refused_and_closed(server):
    t = server
    with nw.Conn(t.ports["btcp"]) as c:
        # the size alone is refused: the body is never waited for
        c.send(b"PUB big\n" + struct.pack(">I", 1024 * 1024 + 1))
        c.expect_error(b"E_BAD_MESSAGE")
        c.expect_closed()
    with nw.Conn(t.ports["btcp"]) as c:
        c.send(b"MPUB big\n" + struct.pack(">I", 2 * 1024 * 1024 + 1))
        c.expect_error(b"E_BAD_BODY")
        c.expect_closed()
    with nw.Conn(t.ports["btcp"]) as c:
        c.send(b"PUB big\n" + struct.pack(">I", 0xffffffff))
        c.expect_error(b"E_BAD_MESSAGE")
        c.expect_closed()
    with nw.Conn(t.ports["btcp"]) as c:
        c.send(b"IDENTIFY\n" + struct.pack(">I", 0x7fffffff))
        c.expect_error(b"E_BAD_BODY")
        c.expect_closed()
    # a command line with no end
    with nw.Conn(t.ports["btcp"]) as c:
        c.send(b"PUB " + b"t" * 65536)
        c.expect_error(b"E_INVALID")
        c.expect_closed()
    # HTTP: a body over the limit, a header block over the limit
    body = b"x" * (5 * 1024 * 1024)
    assert http_refused(t.ports["bhttp"], b"POST /pub?topic=big HTTP/1.1\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body) + body) == 413
    assert http_refused(t.ports["admin"], b"GET /ping HTTP/1.1\r\nX-Big: %s\r\n\r\n"
                        % (b"y" * 65536)) == 431
    # lookupd: an IDENTIFY over max_identify_size
    with socket.create_connection(("127.0.0.1", t.ports["dtcp"]), timeout=5) as s:
        s.sendall(b"  V1IDENTIFY\n" + struct.pack(">I", 0x7fffffff))
        reply = tnhelp.recv_all(s)
        assert b"E_BAD_BODY" in reply
    assert t.alive()
    served(t)


# ---- garbage ---------------------------------------------------------------------


def test_garbage_on_every_port(server):
    t = server
    rng = random.Random(20261130)
    for name, port in t.ports.items():
        for i in range(20):
            blob = rng.randbytes(rng.choice([1, 7, 100, 4096, 70000]))
            if i % 4 == 0:  # a valid start, then garbage
                blob = {"btcp": b"  V2", "dtcp": b"  V1"}.get(name, b"GET / HTTP/1.1\r\n") + blob
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                try:
                    s.sendall(blob)
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # closed (reset) while we were still sending: fine
                # whatever it answers, the server closes its side
                assert wait_closed(s, 5), "%s: still open after garbage and EOF" % name
        assert t.alive(), "ternd died from garbage on %s" % name
    served(t)


# ---- half-open connections -------------------------------------------------------


def test_silent_connections_time_out_and_starve_nobody(server):
    t = server
    silent = []
    for name, port in t.ports.items():
        for i in range(20):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:  # half a request, then nothing
                s.sendall({"btcp": b"  V2PU", "dtcp": b"  V1PI"}.get(name, b"GET /ping HT"))
            silent.append((name, s))
    start = time.monotonic()
    served(t)  # while they hang, others are served
    for name, s in silent:
        # an error frame, heartbeats or a 408 may come first
        left = SILENT_TIMEOUT + 5 - (time.monotonic() - start)
        assert wait_closed(s, max(0.1, left)), \
            "a silent connection on %s was still open after %.1fs" % (
                name, time.monotonic() - start)
        s.close()
    served(t)
