"""A real NSQ consumer finding two brokers through discovery: nsqjs 0.13.0
(t/interop/nsqjs) is given only the discovery's HTTP address. Ternd A runs
discovery and a broker (registered in-process); ternd B runs a broker only,
registered with A's discovery over TCP V1. Half the messages are published
to each broker; the reader must get every one exactly once, from both.
node and npm are required (test_nsqjs.py's fixture installs nsqjs)."""

import json
import shutil
import subprocess

import pytest

import tnhelp
from brokerhelp import http, modules_dir
from test_nsqjs import nsqjs_dir  # noqa: F401 (the fixture)

SCRIPT = tnhelp.SRCDIR / "t" / "interop" / "nsqjs" / "lookupd_two.js"
HALF = 1000
TOPIC = "two_brokers"


def lookup_producers(dhttp):
    r = tnhelp.request(dhttp, "GET", "/lookup?topic=" + TOPIC)
    return sorted(p["tcp_port"] for p in r.json()["producers"]) if r.status == 200 else []


def publish(b, prefix):
    body = "\n".join("%s-%d" % (prefix, i) for i in range(HALF)).encode()
    r = http(b, "POST", "/mpub?topic=" + TOPIC, body=body)
    assert r.status == 200, r.text()


def test_reader_consumes_from_two_brokers(nsqjs_dir, broker):  # noqa: F811
    if not (modules_dir() / "discovery.so").exists():
        pytest.skip("discovery.so not built")
    shutil.copyfile(SCRIPT, nsqjs_dir / SCRIPT.name)
    dtcp, dhttp = tnhelp.free_port(), tnhelp.free_port()
    a = broker(broadcast_address="127.0.0.1", start=False)
    a.sections["discovery"] = {"tcp_listen": "127.0.0.1:%d" % dtcp,
                               "http_listen": "127.0.0.1:%d" % dhttp}
    a.write_conf()
    a.start()
    b = broker(broadcast_address="127.0.0.1", lookupd=["127.0.0.1:%d" % dtcp])
    publish(a, "A")
    publish(b, "B")
    tnhelp.wait_for(lambda: lookup_producers(dhttp) == sorted([a.tcp_port, b.tcp_port]), 10,
                    what="both brokers in /lookup")
    p = subprocess.run(["node", SCRIPT.name, "127.0.0.1:%d" % dhttp, TOPIC, str(2 * HALF)],
                       cwd=str(nsqjs_dir), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    lines = p.stdout.strip().splitlines()
    assert lines, "lookupd_two.js printed nothing (exit %d):\n%s" % (p.returncode, p.stderr)
    res = json.loads(lines[-1])
    detail = "%s\n%s\nA:\n%s\nB:\n%s" % (res, p.stderr, a.stderr()[-2000:], b.stderr()[-2000:])
    assert res["error"] is None and p.returncode == 0, detail
    assert res["received"] == 2 * HALF, detail
    assert res["perBroker"] == {"A": HALF, "B": HALF}, detail
    assert res["duplicates"] == 0, detail
    assert sorted(res["connected"]) == sorted(
        "127.0.0.1:%d" % t.tcp_port for t in (a, b)), detail
    # nothing left behind on either broker
    for t in (a, b):
        (topic,) = [x for x in http(t, "GET", "/stats?format=json").json()["topics"]
                    if x["topic_name"] == TOPIC]
        (ch,) = topic["channels"]
        assert ch["depth"] == 0 and ch["in_flight_count"] == 0, (t, ch)
