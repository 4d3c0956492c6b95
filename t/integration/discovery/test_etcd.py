"""The etcd backend of discovery: two ternd with `backend: etcd` share one
registry through a real etcd-server (started here on free loopback ports
with a temporary data dir). Service instances and nsq producers registered
on one are seen by the other; a killed ternd's entries go when its lease
runs out; a clean deregistration propagates through the watch."""

import os
import shutil
import signal
import subprocess
import time

import pytest

import tnhelp
from dschelp import get, identified, modules_dir, post, producer_fields

WAIT = 15.0  # bounded wait for a change to cross etcd (normally < 1 s)


def etcd_binary():
    for p in ("/usr/bin/etcd", shutil.which("etcd") or ""):
        if p and os.access(p, os.X_OK):
            return p
    return None


class Etcd:
    """An etcd-server of our own: free ports, temporary data dir."""

    def __init__(self, tmp, host="127.0.0.1"):
        self.client = tnhelp.free_port()
        peer = tnhelp.free_port()
        self.addr = "%s:%d" % (host, self.client)
        self.log = open(tmp / "etcd.log", "wb")
        self.proc = subprocess.Popen(
            [etcd_binary(), "--name", "t", "--data-dir", str(tmp / "etcd-data"),
             "--listen-client-urls", "http://" + self.addr,
             "--advertise-client-urls", "http://" + self.addr,
             "--listen-peer-urls", "http://%s:%d" % (host, peer),
             "--initial-advertise-peer-urls", "http://%s:%d" % (host, peer),
             "--initial-cluster", "t=http://%s:%d" % (host, peer)],
            stdout=self.log, stderr=subprocess.STDOUT)
        tnhelp.wait_for(self.ready, 20, interval=0.1, what="etcd to answer")

    def ready(self):
        try:
            r = tnhelp.request(self.client, "POST", "/v3/kv/range", b'{"key":"AA=="}',
                               timeout=1.0)
            return r.status == 200
        except OSError:
            return False

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.fixture
def etcd(tmp_path):
    if not etcd_binary():
        pytest.skip("etcd not installed (apt-get install etcd-server)")
    e = Etcd(tmp_path)
    yield e
    e.stop()


def etcd_section(e, ttl=None):
    # 2 s by default, stretched under valgrind: a slow but live server's
    # keepalives must not let its lease run out
    ttl = ttl or tnhelp.duration(2)
    return {"backend": "etcd",
            "etcd": {"endpoints": [e.addr], "prefix": "/t/", "lease_ttl": ttl,
                     "dial_timeout": "1s", "sync_interval": "200ms"}}


def instances(t, name):
    r = get(t.http_port, "/services", name=name)
    assert r.status == 200, r.body
    return r.json()["instances"]


def lookup(t, topic):
    r = get(t.http_port, "/lookup", topic=topic)
    return r.json()["producers"] if r.status == 200 else []


def test_two_hosts_share_services(dsc, etcd):
    a = dsc(**etcd_section(etcd))
    b = dsc(**etcd_section(etcd))
    r = post(a.http_port, "/services/register",
             {"name": "gw", "id": "n1", "address": "10.0.0.1:9000", "metadata": {"r": 1},
              "ttl": "30s"})
    assert r.status == 200, r.body
    got = tnhelp.wait_for(lambda: instances(b, "gw"), WAIT, what="gw/n1 on b")
    assert [(i["id"], i["address"], i["metadata"]) for i in got] == \
        [("n1", "10.0.0.1:9000", {"r": 1})]
    # and the other way round
    assert post(b.http_port, "/services/register",
                {"name": "gw", "id": "n2", "address": "10.0.0.2:9000"}).status == 200
    tnhelp.wait_for(lambda: len(instances(a, "gw")) == 2, WAIT, what="both on a")
    # a deregistration travels through the watch
    assert post(a.http_port, "/services/deregister", name="gw", id="n1").status == 200
    tnhelp.wait_for(lambda: [i["id"] for i in instances(b, "gw")] == ["n2"], WAIT,
                    what="n1 gone from b")
    a.stop()
    b.stop()


def test_producers_shared_and_lease_expiry(dsc, etcd):
    a = dsc(**etcd_section(etcd))
    b = dsc(**etcd_section(etcd))
    with identified(a.tcp_port, **producer_fields(port=4150, http=4151, addr="10.1.1.1")) as c:
        assert c.cmd("REGISTER orders ch1") == b"OK"
        got = tnhelp.wait_for(lambda: lookup(b, "orders"), WAIT, what="orders on b")
        assert [(p["broadcast_address"], p["tcp_port"]) for p in got] == [("10.1.1.1", 4150)]
        r = get(b.http_port, "/channels", topic="orders")
        assert r.json()["channels"] == ["ch1"]
        # an instance on b, so that b's death can be watched from a
        assert post(b.http_port, "/services/register",
                    {"name": "node", "id": "b1", "address": "10.0.0.9:1"}).status == 200
        tnhelp.wait_for(lambda: instances(a, "node"), WAIT, what="node/b1 on a")
        # kill a without a goodbye: its lease (2 s) runs out, b drops it
        a.kill()
        start = time.monotonic()
        tnhelp.wait_for(lambda: not lookup(b, "orders"), WAIT, what="a's producer gone")
        assert time.monotonic() - start < tnhelp.scaled(WAIT)
    assert instances(b, "node")  # b's own entries stay
    b.stop()


def test_cache_survives_etcd_outage(dsc, etcd):
    a = dsc(**etcd_section(etcd))
    b = dsc(**etcd_section(etcd))
    assert post(a.http_port, "/services/register",
                {"name": "gw", "id": "x", "address": "10.0.0.1:1", "ttl": "1h"}).status == 200
    tnhelp.wait_for(lambda: instances(b, "gw"), WAIT, what="gw/x on b")
    etcd.proc.send_signal(signal.SIGSTOP)
    try:
        tnhelp.wait_for(lambda: "serving the cached registry" in b.log(), WAIT,
                        what="b noticing the outage")
        assert [i["id"] for i in instances(b, "gw")] == ["x"]
    finally:
        etcd.proc.send_signal(signal.SIGCONT)
    # back: a new registration crosses again (after the reconnect backoff)
    assert post(a.http_port, "/services/register",
                {"name": "gw", "id": "y", "address": "10.0.0.1:2"}).status == 200
    tnhelp.wait_for(lambda: len(instances(b, "gw")) == 2, WAIT, what="gw/y on b")
    a.stop()
    b.stop()


def test_conf_checks(ternd):
    daemon = {"modules_dir": str(modules_dir())}
    t = ternd(daemon=daemon, sections={"discovery": {"backend": "etcd"}})
    r = t.check()
    assert r.returncode != 0
    assert "etcd.endpoints" in r.stderr
    t = ternd(daemon=daemon, sections={"discovery": {"backend": "etcd", "etcd": {
        "endpoints": ["127.0.0.1:2379"], "prefix": "/x"}}})
    r = t.check()
    assert r.returncode != 0
    assert "etcd.prefix" in r.stderr
