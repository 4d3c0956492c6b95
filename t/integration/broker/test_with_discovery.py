"""The broker registering with ternd's own discovery module (in the same
process, over loopback TCP, exactly as with a separate nsqlookupd):
consumers find the broker through discovery's /lookup. Skipped until
discovery.so is built."""

import pytest

import nsqwire as nw
import tnhelp
from brokerhelp import http, modules_dir, restart


def test_lookup_finds_the_broker(broker):
    if not (modules_dir() / "discovery.so").exists():
        pytest.skip("discovery.so not built")
    dtcp, dhttp = tnhelp.free_port(), tnhelp.free_port()
    b = broker(lookupd=["127.0.0.1:%d" % dtcp], broadcast_address="127.0.0.1", start=False)
    b.sections["discovery"] = {"tcp_listen": "127.0.0.1:%d" % dtcp,
                               "http_listen": "127.0.0.1:%d" % dhttp}
    b.write_conf()
    restart(b)
    http(b, "POST", "/channel/create?topic=found&channel=c1")

    def lookup():
        r = tnhelp.request(dhttp, "GET", "/lookup?topic=found")
        return r.status == 200 and r.json()

    found = tnhelp.wait_for(lookup, 10, what="discovery to know topic found")
    assert found["channels"] == ["c1"]
    (p,) = found["producers"]
    assert (p["broadcast_address"], p["tcp_port"], p["http_port"]) == (
        "127.0.0.1", b.tcp_port, b.http_port)
    # a consumer that followed the lookup gets what is published
    c = nw.consumer(p["tcp_port"], "found", "c1", rdy=1)
    nw.publish(b.tcp_port, "found", [b"via discovery"])
    assert c.read_message().body == b"via discovery"
