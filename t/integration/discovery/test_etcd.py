"""The etcd backend of discovery: two ternd with `backend: etcd` share one
registry through a real etcd-server (started here on free loopback ports
with a temporary data dir). Service instances and nsq producers registered
on one are seen by the other; a killed ternd's entries go when its lease
runs out; a clean deregistration propagates through the watch."""

import os
import shutil
import signal
import socket
import ssl
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
    """An etcd-server of our own: free ports, temporary data dir. tls: a
    dict {cert, key, ca, client_auth} serves the client URL over https;
    client_auth adds --trusted-ca-file ca and --client-cert-auth, and
    ready() then presents client=(cert, key)."""

    def __init__(self, tmp, host="127.0.0.1", tls=None, client=None):
        self.client = tnhelp.free_port()
        peer = tnhelp.free_port()
        self.addr = "%s:%d" % (host, self.client)
        self.tls, self.client_cert = tls, client
        scheme = "https://" if tls else "http://"
        self.url = scheme + self.addr
        self.log = open(tmp / "etcd.log", "wb")
        args = [etcd_binary(), "--name", "t", "--data-dir", str(tmp / "etcd-data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", "http://%s:%d" % (host, peer),
                "--initial-advertise-peer-urls", "http://%s:%d" % (host, peer),
                "--initial-cluster", "t=http://%s:%d" % (host, peer)]
        if tls:
            args += ["--cert-file", str(tls["cert"]), "--key-file", str(tls["key"])]
            if tls.get("client_auth"):  # (etcd 3.4 asks as soon as it has a CA file)
                args += ["--trusted-ca-file", str(tls["ca"]), "--client-cert-auth"]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        tnhelp.wait_for(self.ready, 20, interval=0.1, what="etcd to answer")

    def ready(self):
        body = b'{"key":"AA=="}'
        try:
            if not self.tls:
                r = tnhelp.request(self.client, "POST", "/v3/kv/range", body, timeout=1.0)
                return r.status == 200
            ctx = ssl.create_default_context(cafile=str(self.tls["cert"]))
            if self.client_cert:
                ctx.load_cert_chain(*[str(f) for f in self.client_cert])
            with socket.create_connection(("127.0.0.1", self.client), timeout=1.0) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.sendall(b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                              b"Connection: close\r\n\r\n%s" % (len(body), body))
                    r, _ = tnhelp.read_response(s, timeout=1.0)
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


# ---- https endpoints -------------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is missing")
    d = tmp_path_factory.mktemp("etcdcerts")
    out = {}
    for name in ("etcd", "client", "other"):
        out[name], out[name + "_key"] = tnhelp.self_signed_cert(d, name)
    # what etcd trusts: our client, and itself (its JSON gateway calls its
    # own gRPC port with its certificate when client certificates are asked)
    out["bundle"] = d / "bundle.pem"
    out["bundle"].write_text(out["etcd"].read_text() + out["client"].read_text())
    return out


def tls_etcd(tmp_path, certs, client_auth=False):
    if not etcd_binary():
        pytest.skip("etcd not installed (apt-get install etcd-server)")
    tls = {"cert": certs["etcd"], "key": certs["etcd_key"], "ca": certs["bundle"],
           "client_auth": client_auth}
    return Etcd(tmp_path, tls=tls, client=(certs["client"], certs["client_key"])
                if client_auth else None)


def https_section(e, **tls):
    sec = etcd_section(e)
    sec["etcd"]["endpoints"] = [e.url]
    sec["etcd"]["tls"] = {k: str(v) for k, v in tls.items()}
    return sec


def test_https_endpoints_share_services(dsc, tmp_path, certs):
    e = tls_etcd(tmp_path, certs)
    try:
        a = dsc(**https_section(e, ca=certs["etcd"]))
        b = dsc(**https_section(e, ca=certs["etcd"]))
        r = post(a.http_port, "/services/register",
                 {"name": "sec", "id": "s1", "address": "10.0.0.5:1", "ttl": "30s"})
        assert r.status == 200, r.body
        got = tnhelp.wait_for(lambda: instances(b, "sec"), WAIT, what="sec/s1 on b over https")
        assert [i["id"] for i in got] == ["s1"]
        assert "serving the cached registry" not in a.log()
        a.stop()
        b.stop()
    finally:
        e.stop()


def test_https_mutual_tls_and_refusals(dsc, tmp_path, certs):
    """etcd with --client-cert-auth: a ternd with the client certificate
    works; one without it, or one that does not trust etcd's certificate,
    or one that checks the wrong name, gets nowhere, with the reason
    logged."""
    e = tls_etcd(tmp_path, certs, client_auth=True)
    try:
        good = dsc(**https_section(e, ca=certs["etcd"], cert=certs["client"],
                                   key=certs["client_key"]))
        assert post(good.http_port, "/services/register",
                    {"name": "m", "id": "m1", "address": "10.0.0.6:1"}).status == 200
        anon = dsc(**https_section(e, ca=certs["etcd"]))
        anon.wait_log(r"discovery\.etcd: (connection closed|connect failed|bad HTTP).*serving "
                      r"the cached registry", timeout=WAIT)
        untrusting = dsc(**https_section(e, ca=certs["other"], cert=certs["client"],
                                         key=certs["client_key"]))
        log = untrusting.wait_log(r"TLS handshake failed: .*certificate verify failed",
                                  timeout=WAIT)
        assert "127.0.0.1:%d" % e.client in log
        untrusting.wait_log(r"discovery\.etcd: connect failed", timeout=WAIT)
        misnamed = dsc(**https_section(e, ca=certs["etcd"], cert=certs["client"],
                                       key=certs["client_key"], server_name="etcd.example"))
        misnamed.wait_log(r"TLS handshake failed: .*hostname mismatch", timeout=WAIT)
        # the refused ones learnt nothing; the good one still sees its own
        assert instances(anon, "m") == [] and instances(untrusting, "m") == []
        assert [i["id"] for i in instances(good, "m")] == ["m1"]
        # and a second good host learns it through etcd
        other = dsc(**https_section(e, ca=certs["etcd"], cert=certs["client"],
                                    key=certs["client_key"]))
        tnhelp.wait_for(lambda: instances(other, "m"), WAIT, what="m/m1 on the other host")
        for t in (good, anon, untrusting, misnamed, other):
            t.stop()
    finally:
        e.stop()


def test_endpoint_forms_and_tls_conf_checks(ternd, tmp_path):
    daemon = {"modules_dir": str(modules_dir())}
    for ep in ("https://127.0.0.1:2379", "http://127.0.0.1:2379/", "127.0.0.1:2379"):
        t = ternd(daemon=daemon, sections={"discovery": {"backend": "etcd", "etcd": {
            "endpoints": [ep]}}})
        r = t.check()
        assert r.returncode == 0, (ep, r.stderr)
    t = ternd(daemon=daemon, sections={"discovery": {"backend": "etcd", "etcd": {
        "endpoints": ["https://127.0.0.1:2379"], "tls": {"ca": str(tmp_path / "none.pem")}}}})
    r = t.check()
    assert r.returncode != 0 and "etcd.tls" in r.stderr and "none.pem" in r.stderr
    t = ternd(daemon=daemon, sections={"discovery": {"backend": "etcd", "etcd": {
        "endpoints": ["https://"]}}})
    r = t.check()
    assert r.returncode != 0 and "etcd.endpoints" in r.stderr
