"""A multi-host cluster on one machine: network namespaces joined by a
bridge (ip netns + veth), one etcd-server, and three ternd hosts sharing
one registry through discovery's etcd backend:

    etcd   etcd-server
    b1     discovery + broker (in-process registration) + gateway node n1
    b2     discovery + broker + gateway node n2
    g      discovery + gateway (finds its nodes in discovery.registry)

The test process (the root namespace, on the bridge) runs the nsqjs
consumer, which is given only g's discovery HTTP address and so finds the
brokers b1 and b2 through etcd, a publisher, and gateway clients. Nodes
register with the discovery of their own host; the gateway on g sees them
through etcd. Then b1 is killed (SIGKILL) with its node n1: b1's lease
runs out, consumers and the gateway move on to b2 and n2, publishing goes
to b2, and once b1 is back (same data directory) the messages it had
acknowledged come out of its disk queue: every acknowledged message is
received. Needs root for network namespaces; skips with the reason when
they cannot be made (a CI container)."""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import tnhelp

sys.path.insert(0, str(Path(__file__).resolve().parent / "broker"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "gateway"))
from gwhelp import Codec  # noqa: E402
from test_nsqjs import nsqjs_dir  # noqa: E402,F401 (the fixture)

SCRIPT = tnhelp.SRCDIR / "t" / "interop" / "nsqjs" / "cluster.js"
NODE = tnhelp.SRCDIR / "scripts" / "gateway" / "example_node.py"
TOPIC = "cluster"
BATCH = 100
# the etcd lease of each discovery, stretched under valgrind: the keepalives
# of a slow but live server must not let it run out
LEASE = tnhelp.duration(2)
CONSUMER_MS = round(60000 * tnhelp.TIMEOUT_SCALE)  # the nsqjs consumer's time limit


def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=20)


class Net:
    """A bridge in the root namespace (its .1 address) and one namespace
    per host, each on a veth pair into the bridge."""

    def __init__(self):
        tag = "%x" % (os.getpid() & 0xffff)
        self.subnet = "10.%d.%d" % (200 + os.getpid() % 50, os.getpid() // 50 % 250)
        self.bridge = "tnbr" + tag
        self.names = {}
        self.made = []
        self.tag = tag

    def sh(self, *args):
        p = run(*args)
        if p.returncode != 0:
            raise RuntimeError("%s: %s" % (" ".join(args), p.stderr.strip()))

    def up(self):
        self.sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        self.sh("ip", "addr", "add", self.subnet + ".1/24", "dev", self.bridge)
        self.sh("ip", "link", "set", self.bridge, "up")

    def host(self, name, n):
        ns = "tn%s%s" % (name, self.tag)
        veth = "tv%s%s" % (name, self.tag)
        self.sh("ip", "netns", "add", ns)
        self.made.append(("netns", ns))
        self.sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.made.append(("link", veth))
        self.sh("ip", "link", "set", veth, "master", self.bridge, "up")
        self.sh("ip", "-n", ns, "addr", "add", "%s.%d/24" % (self.subnet, n), "dev", "eth0")
        self.sh("ip", "-n", ns, "link", "set", "eth0", "up")
        self.sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.names[name] = (ns, "%s.%d" % (self.subnet, n))
        return self.names[name]

    def down(self):
        for kind, name in reversed(self.made):
            if kind == "netns":
                run("ip", "netns", "del", name)
            else:
                run("ip", "link", "del", name)


@pytest.fixture
def net():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    if not shutil.which("ip"):
        pytest.skip("ip (iproute2) not installed")
    n = Net()
    try:
        n.up()
        n.host("probe", 250)
    except RuntimeError as e:
        n.down()
        pytest.skip("network namespaces not permitted here: %s" % e)
    yield n
    n.down()


class NsTernd(tnhelp.Ternd):
    """A ternd run inside a namespace (`ip netns exec` execs it: the pid
    is ternd's). Ready when it logs "core: ready" (no admin listener)."""

    def __init__(self, ns, tmp, **kw):
        self.ns = ns
        super().__init__(tmp, **kw)

    def start(self, wait=True):
        self.start_mark = self.log_size()
        self.stderr_file = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, str(tnhelp.ternd_bin()), "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL, stdout=self.stderr_file, stderr=self.stderr_file,
            env=self.env, cwd=str(self.tmp))
        if wait:
            tnhelp.wait_for(lambda: "] core: ready" in self.log()[self.start_mark:] or
                            self.proc.poll() is not None, 20, what="ternd ready in " + self.ns)
            assert self.proc.poll() is None, self.stderr()
        return self


def req(host, port, method, path, body=None, timeout=3.0):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def lookup(g_ip):
    try:
        st, body = req(g_ip, 4161, "GET", "/lookup?topic=" + TOPIC)
    except OSError:
        return []
    return sorted(p["broadcast_address"] for p in json.loads(body)["producers"]) if st == 200 \
        else []


def discovery_sec(etcd_ip, ip):
    return {"tcp_listen": ip + ":4160", "http_listen": ip + ":4161", "backend": "etcd",
            "etcd": {"endpoints": [etcd_ip + ":2379"], "lease_ttl": LEASE,
                     "dial_timeout": "1s", "sync_interval": "200ms"}}


def gw_ask(ip, port, seq, data, timeout=2.0):
    """One packet through the gateway; the node's answer, or None."""
    codec = Codec()
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.sendall(codec.packet(1, seq, data))
            buf = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                p, buf = codec.decode(buf)
                if p is not None:
                    return p["data"]
                s.settimeout(max(0.05, deadline - time.monotonic()))
                b = s.recv(65536)
                if not b:
                    return None
                buf += b
    except OSError:
        return None
    return None


def test_cluster(net, tmp_path, nsqjs_dir):  # noqa: F811
    if not shutil.which("etcd"):
        pytest.skip("etcd not installed (apt-get install etcd-server)")
    shutil.copyfile(SCRIPT, nsqjs_dir / SCRIPT.name)
    mdir = tmp_path / "modules"
    mdir.mkdir()
    for m in ("discovery", "broker", "gateway"):
        so = tnhelp.BUILD / "modules" / m / ".libs" / (m + ".so")
        if not so.exists():
            pytest.skip("%s not built" % so.name)
        os.symlink(so, mdir / so.name)
    procs = []
    e_ns, e_ip = net.host("etcd", 2)
    b1_ns, b1_ip = net.host("b1", 3)
    b2_ns, b2_ip = net.host("b2", 4)
    g_ns, g_ip = net.host("g", 5)
    elog = open(tmp_path / "etcd.log", "wb")
    etcd = subprocess.Popen(
        ["ip", "netns", "exec", e_ns, "etcd", "--name", "e", "--data-dir",
         str(tmp_path / "etcd-data"), "--listen-client-urls", "http://%s:2379" % e_ip,
         "--advertise-client-urls", "http://%s:2379" % e_ip,
         "--listen-peer-urls", "http://%s:2380" % e_ip,
         "--initial-advertise-peer-urls", "http://%s:2380" % e_ip,
         "--initial-cluster", "e=http://%s:2380" % e_ip], stdout=elog, stderr=subprocess.STDOUT)
    procs.append(etcd)
    hosts = {}
    try:
        tnhelp.wait_for(lambda: _answers(e_ip, 2379), 20, interval=0.1, what="etcd")
        daemon = {"modules_dir": str(mdir), "admin_listen": None}
        for name, ns, ip in (("b1", b1_ns, b1_ip), ("b2", b2_ns, b2_ip)):
            hosts[name] = NsTernd(ns, tmp_path / name, daemon=daemon, sections={
                "discovery": discovery_sec(e_ip, ip),
                "broker": {"tcp_listen": ip + ":4150", "http_listen": ip + ":4151",
                           "broadcast_address": ip, "mem_queue_size": 0,
                           # every message on disk and synced at once: a
                           # message read for delivery stays counted until
                           # it is finished, so what b1 held when it died
                           # is read again after (at least once)
                           "sync_every": 1}})
        route = tmp_path / "route.lua"
        route.write_text("function on_packet(s, r, q, d) return 'lobby' end\n")
        hosts["g"] = NsTernd(g_ns, tmp_path / "g", daemon=daemon, sections={
            "discovery": discovery_sec(e_ip, g_ip),
            "gateway": {"listen": [{"proto": "tcp", "addr": g_ip + ":3550"}],
                        "lua": {"script": str(route)}}})
        for t in hosts.values():
            t.start()
        # one gateway node per broker host, registered with that host's discovery
        for name, ns, ip in (("n1", b1_ns, b1_ip), ("n2", b2_ns, b2_ip)):
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(NODE),
                                  "--listen", ip + ":3600", "--name", name],
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout.readline().startswith("listening")
            st, body = req(ip, 4161, "POST", "/services/register", json.dumps(
                {"name": "lobby", "id": name, "address": ip + ":3600", "ttl": -1}))
            assert st == 200, body
            setattr(p, "node", name)
        nodes = {p.node: p for p in procs if hasattr(p, "node")}
        _run_cluster(net, tmp_path, nsqjs_dir, hosts, nodes, b1_ip, b2_ip, g_ip)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(5)
        elog.close()
        for t in hosts.values():
            if t.alive():
                t.kill()


def _answers(ip, port):
    try:
        return req(ip, port, "POST", "/v3/kv/range", b'{"key":"AA=="}', timeout=1.0)[0] == 200
    except OSError:
        return False


def publish(ip, body, tries=1):
    """True when the broker acknowledged (200 OK); the last error is kept
    in publish.why. A try that got no answer may still have stored the
    message: such a body counts once it is acknowledged."""
    for _ in range(tries):
        try:
            st, answer = req(ip, 4151, "POST", "/pub?topic=" + TOPIC, body.encode(), timeout=5.0)
            if st == 200:
                return True
            publish.why = "%d %r" % (st, answer)
        except OSError as e:
            publish.why = repr(e)
    return False


def _run_cluster(net, tmp_path, nsqjs_dir, hosts, nodes, b1_ip, b2_ip, g_ip):
    acked = set()
    for i in range(BATCH):
        for who, ip in (("A", b1_ip), ("B", b2_ip)):
            body = "%s1-%d" % (who, i)
            assert publish(ip, body, 3), (body, publish.why)
            acked.add(body)
    # g's discovery lists both brokers, learnt through etcd
    tnhelp.wait_for(lambda: lookup(g_ip) == sorted([b1_ip, b2_ip]), 15,
                    what="both brokers in g's /lookup")
    # the gateway on g reaches both nodes, registered on b1 and b2
    answered = set()

    def both_nodes():
        a = gw_ask(g_ip, 3550, 1, b"hi")
        if a:
            answered.add(a.split(b":")[0])
        return answered == {b"n1", b"n2"}
    tnhelp.wait_for(both_nodes, 15, interval=0.05, what="answers from n1 and n2")

    total = 4 * BATCH + BATCH  # batch 1 (A+B), batch 2 (2 * BATCH), batch 3 on b1
    consumer = subprocess.Popen(["node", SCRIPT.name, g_ip + ":4161", TOPIC, str(total),
                                 str(CONSUMER_MS)], cwd=str(nsqjs_dir), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(consumer.stdout), daemon=True)
    reader.start()
    try:
        tnhelp.wait_for(lambda: len([x for x in lines if x.startswith("connected")]) >= 2, 20,
                        what="the consumer connected to both brokers")
        # b1 dies with its node, without a goodbye
        hosts["b1"].kill()
        nodes["n1"].kill()
        # publishing moves on: a broker that does not answer is skipped
        for i in range(BATCH):
            for who, first in (("A", b1_ip), ("B", b2_ip)):
                body = "%s2-%d" % (who, i)
                if publish(first, body) or publish(b2_ip, body, 3):
                    acked.add(body)
        # b1's lease runs out: g drops it and its node
        tnhelp.wait_for(lambda: lookup(g_ip) == [b2_ip], 15, what="b1 gone from g's /lookup")
        # the gateway forwards to n2 only now
        for seq in range(20):
            a = tnhelp.wait_for(lambda: gw_ask(g_ip, 3550, seq, b"x"), 10, interval=0.05,
                                what="an answer after the node died")
            assert a.startswith(b"n2:"), a
        # b1 comes back with its data directory: what it acknowledged is delivered
        hosts["b1"].start()
        tnhelp.wait_for(lambda: lookup(g_ip) == sorted([b1_ip, b2_ip]), 15,
                        what="b1 back in g's /lookup")
        for i in range(BATCH):
            body = "A3-%d" % i
            assert publish(b1_ip, body, 3), (body, publish.why)
            acked.add(body)
        assert len(acked) == total
        consumer.wait(CONSUMER_MS / 1000 + 10)
        reader.join(5)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait(5)
    res = json.loads(lines[-1])
    detail = "error=%s errors=%s got=%d stderr=%s" % (res["error"], res["errors"],
                                                     len(res["bodies"]), consumer.stderr.read())
    missing = acked - set(res["bodies"])
    by_batch = {}
    for body in missing:
        by_batch[body.split("-")[0]] = by_batch.get(body.split("-")[0], 0) + 1
    assert not missing, "lost %d acknowledged messages (per batch %s), e.g. %s; %s" % (
        len(missing), by_batch, sorted(missing)[:5], detail)
    assert res["error"] is None, detail
    assert set(res["bodies"]) == acked
    # duplicates are allowed (at-least-once: b1 may deliver again what it
    # had delivered before it died); losses are not
    for t in hosts.values():
        t.send_signal(signal.SIGTERM)
        assert t.wait_exit(tnhelp.scaled(15)) == 0, t.stderr()
