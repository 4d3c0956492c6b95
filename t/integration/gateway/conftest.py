"""Fixtures of the gateway's integration tests: `gateway(script=..., **section)`
starts the real ternd with a gateway section listening for TCP (and WS with
ws=True) on free loopback ports. A server still running at the end of a test
is stopped with SIGTERM and must exit 0."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tnhelp  # noqa: E402
from gwhelp import modules_dir  # noqa: E402

NODE = tnhelp.SRCDIR / "scripts" / "gateway" / "example_node.py"


def tcp_open(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def udp_free_port():
    return tnhelp.free_port()  # free for UDP too


def gateway_yaml(tcp, ws, script, extra, kcp=None):
    lines = ["gateway:", "  listen:"]
    if tcp:
        lines.append("    - { proto: tcp, addr: 127.0.0.1:%d }" % tcp)
    if ws:
        lines.append("    - { proto: ws, addr: 127.0.0.1:%d, path: /ws }" % ws)
    if kcp:
        port, opts = kcp
        lines.append("    - { proto: kcp, addr: 127.0.0.1:%d%s }"
                     % (port, "".join(", %s: %s" % kv for kv in opts.items())))
    if script:
        lines.append("  lua: { script: %s }" % script)
    for line in extra.splitlines():
        lines.append("  " + line)
    return "\n".join(lines) + "\n"


@pytest.fixture
def gateway(ternd):
    if not (modules_dir() / "gateway.so").exists():
        pytest.skip("gateway.so missing in %s: build first" % modules_dir())
    made = []

    def make(script=None, ws=False, extra="", daemon=None, start=True, kcp=None):
        tcp = tnhelp.free_port()
        wsp = tnhelp.free_port() if ws else None
        # kcp: a dict of the kcp listener's options ({} for the defaults)
        kcpp = udp_free_port() if kcp is not None else None
        d = {"modules_dir": str(modules_dir())}
        d.update(daemon or {})
        t = ternd(daemon=d)
        path = None
        if script is not None:
            path = t.tmp / "route.lua"
            path.write_text(script)
        t.text = gateway_yaml(tcp, wsp, path, extra, (kcpp, kcp) if kcp is not None else None)
        t.script_path = path
        t.tcp_port, t.ws_port, t.kcp_port = tcp, wsp, kcpp
        t.write_conf()
        made.append(t)
        if start:
            t.start()
            tnhelp.wait_for(lambda: tcp_open(tcp), 10, what="gateway TCP port")
            # the probe was a session too: the test starts once it is gone
            # (a slow server -- valgrind -- would otherwise count it, or
            # log its on_disconnect, in the middle of the test)
            tnhelp.wait_for(lambda: t.metrics().get("ternd_gateway_sessions") == 0, 10,
                            what="the port probe's session to close")
        return t
    yield make
    for t in made:
        if t.alive():
            t.stop()


@pytest.fixture
def nodes():
    """nodes(name, *args) starts scripts/gateway/example_node.py on a free
    port (p.port) with more options in args (e.g. --tls-cert); every node
    is killed at the end of the test."""
    procs = []

    def start(name, *args):
        port = tnhelp.free_port()
        p = subprocess.Popen([sys.executable, str(NODE), "--listen", "127.0.0.1:%d" % port,
                              "--name", name] + [str(a) for a in args],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert p.stdout.readline().startswith("listening")
        procs.append(p)
        p.port = port
        return p
    yield start
    for p in procs:
        p.kill()
        p.wait()
