"""The gateway over KCP, against a peer nobody here wrote: kcp-go (Debian's
golang-github-xtaci-kcp-dev), in a small Go client (scripts/bench/kcp_client.go)
built offline in GOPATH mode. Echo through Lua, fragmented packets, several
clients at once, the idle timeout, config checks; then loss, delay and
reordering: ternd and the client in two network namespaces made for the
test, joined by a bad link (netem where the kernel has it, else a TUN
bridge: tunlink.py; skipped, saying why, where namespaces cannot be made),
and through a lossy UDP relay on loopback (lossyudp.py, runs everywhere).
The same under real netem, on any host, in a VM: test_kcp_netem.py."""

import re
import subprocess
from pathlib import Path

import pytest

import tnhelp
from gwhelp import TURBO

SCRIPT = (Path(__file__).resolve().parent / "route_test.lua").read_text()


@pytest.fixture(scope="module")
def client_bin(tmp_path_factory):
    import goclient
    return goclient.build(tmp_path_factory.mktemp("kcpgo"), tnhelp.BUILD / "go-cache")


def run_client(binary, port, *args, timeout=60):
    r = subprocess.run([str(binary), "-addr", "127.0.0.1:%d" % port] + list(args),
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, "kcp client failed (%d): %s %s" % (r.returncode, r.stdout,
                                                                 r.stderr)
    return r.stdout


def replies(out):
    return [(int(m.group(1)), int(m.group(2)), m.group(3))
            for m in re.finditer(r"^reply (-?\d+) (-?\d+) (.*)$", out, re.M)]


def test_echo_with_kcp_go(gateway, client_bin):
    t = gateway(SCRIPT, kcp=TURBO)
    t.wait_log(r"KCP listening on 127\.0\.0\.1:%d" % t.kcp_port)
    out = run_client(client_bin, t.kcp_port, "-n", "50", "-prefix", "hi")
    assert replies(out) == [(1, i, "echo:hi%d" % i) for i in range(50)]
    assert out.rstrip().endswith("done")


def test_heartbeat_and_lua_close(gateway, client_bin):
    t = gateway(SCRIPT, kcp=TURBO)
    out = run_client(client_bin, t.kcp_port, "-hb", "-n", "1")
    assert out.splitlines()[0] == "heartbeat"
    assert replies(out) == [(1, 0, "echo:m0")]
    # route 9: the script replies "bye" and closes the session: the reply
    # still arrives, then the session ends (on_disconnect logs "gone ID");
    # the first client's session is still open (no idle timeout yet)
    mark = t.log_size()
    out = run_client(client_bin, t.kcp_port, "-route", "9", "-n", "1")
    assert replies(out) == [(9, 0, "bye")]
    t.wait_log(r"gone \d+ n=0", since=mark, timeout=10)
    out = run_client(client_bin, t.kcp_port, "-route", "10", "-n", "1")
    assert replies(out) == [(10, 0, "count=2")]


def test_normal_mode_and_big_packets(gateway, client_bin):
    # the listener in its defaults (normal mode), the client too; packets of
    # 20 KB are fragments of several segments each way
    t = gateway(SCRIPT, kcp={"mtu": 1200})
    out = run_client(client_bin, t.kcp_port, "-mode", "bench", "-n", "40", "-size", "20000",
                     "-window", "4", "-nodelay=false", "-nc=false", "-resend", "0",
                     "-interval", "40", "-mtu", "1200")
    assert '"n":40' in out and '"size":20000' in out


def test_several_clients(gateway, client_bin):
    t = gateway(SCRIPT, kcp=TURBO)
    procs = [subprocess.Popen([str(client_bin), "-addr", "127.0.0.1:%d" % t.kcp_port, "-n", "30",
                               "-prefix", "c%d-" % k], stdout=subprocess.PIPE, text=True)
             for k in range(4)]
    for k, p in enumerate(procs):
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out
        assert replies(out) == [(1, i, "echo:c%d-%d" % (k, i)) for i in range(30)]


def test_idle_timeout_closes(gateway, client_bin):
    # stretched under valgrind: the client's exchange must fit in it
    ms = round(600 * tnhelp.TIMEOUT_SCALE)
    t = gateway(SCRIPT, kcp=TURBO, extra="heartbeat: %dms\nheartbeat_timeout: %dms" % (ms // 2, ms))
    run_client(client_bin, t.kcp_port, "-n", "1")
    t.wait_log(r"session \d+ \(127\.0\.0\.1:\d+\): no packet for %d ms, closed" % ms, timeout=10)


def test_bad_datagrams_do_not_open_sessions(gateway, client_bin):
    import socket
    t = gateway(SCRIPT, kcp=TURBO, extra="max_connections: 2")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"short", ("127.0.0.1", t.kcp_port))
        # an ACK of an unknown conversation: no session
        s.sendto(bytes([1, 0, 0, 0, 82]) + bytes(19), ("127.0.0.1", t.kcp_port))
        # a PUSH whose length runs past the datagram: a session, input refused
        s.sendto(bytes([2, 0, 0, 0, 81]) + bytes(15) + bytes([200, 0, 0, 0]),
                 ("127.0.0.1", t.kcp_port))
    # still serving, and the limit of 2 sessions leaves room for the client
    out = run_client(client_bin, t.kcp_port, "-n", "3")
    assert len(replies(out)) == 3
    m = t.metrics()
    assert m["ternd_gateway_kcp_bad_datagrams_total"] == 1, m
    assert m["ternd_gateway_kcp_sessions"] == 2, m  # the bad PUSH's and the client's


def test_session_limit(gateway, client_bin):
    t = gateway(SCRIPT, kcp=TURBO, extra="max_connections: 1")
    # the first client's session outlives it until the idle timeout (20s):
    # KCP has no close
    assert len(replies(run_client(client_bin, t.kcp_port, "-n", "1"))) == 1
    r = subprocess.run([str(client_bin), "-addr", "127.0.0.1:%d" % t.kcp_port, "-n", "1",
                        "-timeout", "2s"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "reply" not in r.stdout, r.stdout
    t.wait_log(r"kcp 127\.0\.0\.1:%d: session refused \(max_connections\)" % t.kcp_port)


def test_config_errors(ternd):
    from gwhelp import modules_dir
    for bad, msg in [("interval: 0ms", "interval must be 1ms"),
                     ("mtu: 20", "mtu"), ("sndwnd: 4", "sndwnd"), ("resend: -1", "resend")]:
        t = ternd(daemon={"modules_dir": str(modules_dir())},
                  text="gateway:\n  listen:\n    - { proto: kcp, addr: 127.0.0.1:3555, %s }\n"
                  % bad)
        r = t.check()
        assert r.returncode != 0 and msg in (r.stdout + r.stderr), (bad, r.stdout, r.stderr)


# ---- loss and reordering between two network namespaces ----------------------------


@pytest.fixture
def bad_link():
    """link(loss, delay, jitter): two namespaces made for the test joined by a
    lossy, delaying, reordering link (tunlink: netem where the kernel has
    it, else a TUN bridge in this process). The test's thread is moved into
    the server's namespace. Skipped, with the reason, where namespaces
    cannot be made."""
    import tunlink
    why = tunlink.check()
    if why:
        pytest.skip("network namespace tests unavailable here: %s" % why)
    links = []

    def make(**kw):
        link = tunlink.Link(**kw)
        links.append(link)
        link.enter("server")
        return link
    yield make
    for link in links:
        link.close()


def test_loss_and_reorder_between_namespaces(bad_link, ternd, client_bin):
    from gwhelp import modules_dir
    link = bad_link(loss=0.05, delay=0.010, jitter=0.010, seed=5)
    port = 3555
    t = ternd(daemon={"modules_dir": str(modules_dir())},
              text="gateway:\n  listen:\n    - { proto: kcp, addr: %s:%d, %s }\n"
              "  lua: { script: %s }\n"
              % (link.addr["server"], port, ", ".join("%s: %s" % kv for kv in TURBO.items()),
                 Path(__file__).resolve().parent / "route_test.lua"))
    t.start()
    t.wait_log(r"KCP listening on %s:%d" % (re.escape(link.addr["server"]), port))
    cmd = link.exec("client") + [str(client_bin), "-addr", "%s:%d" % (link.addr["server"], port)]
    r = subprocess.run(cmd + ["-n", "300", "-prefix", "x"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert replies(r.stdout) == [(1, i, "echo:x%d" % i) for i in range(300)]
    # big packets (fragments) through the same link
    r = subprocess.run(cmd + ["-mode", "bench", "-n", "30", "-size", "8000", "-window", "8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and '"n":30' in r.stdout, r.stdout + r.stderr
    t.stop()
    if link.netem:
        assert link.netem_dropped() > 0
    else:
        assert link.dropped > 0 and link.reordered > 0, (link.dropped, link.reordered)


# ---- loss and reordering (a relay in user space: runs everywhere) ---------------------


@pytest.mark.parametrize("loss", [0.05, 0.2])
def test_lossy_relay(gateway, client_bin, loss):
    from lossyudp import Relay
    t = gateway(SCRIPT, kcp=TURBO)
    with Relay(t.kcp_port, loss=loss, delay=0.005, jitter=0.010, dup=0.02,
               seed=int(loss * 100)) as relay:
        out = run_client(client_bin, relay.port, "-n", "200", "-prefix", "r", timeout=120)
        assert replies(out) == [(1, i, "echo:r%d" % i) for i in range(200)]
        out = run_client(client_bin, relay.port, "-mode", "bench", "-n", "20", "-size",
                         "6000", "-window", "4", timeout=120)
        assert '"n":20' in out
    # the link really was bad, and the server resent what it lost
    assert relay.dropped > 0 and relay.reordered > 0, (relay.dropped, relay.reordered)
    m = t.metrics()
    assert m["ternd_gateway_kcp_retransmits_total"] > 0, m
    assert m["ternd_gateway_kcp_datagrams_in_total"] > 0 and m["ternd_gateway_kcp_dead_total"] == 0
