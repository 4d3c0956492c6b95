"""The broker registering with ternd's own discovery module: in the same
process through the discovery.registry service (no TCP connection), with
discovery listed before or after the broker, added or removed by a reload;
and with a discovery in another ternd over TCP V1, which re-registers
everything when that ternd is killed and restarted. Skipped until
discovery.so is built."""

import pytest

import nsqwire as nw
import tnhelp
from brokerhelp import http, modules_dir, restart


@pytest.fixture
def with_discovery(broker):
    """broker(...) plus a discovery section (before or after the broker's in
    the file); gives (ternd, discovery tcp port, discovery http port)."""
    if not (modules_dir() / "discovery.so").exists():
        pytest.skip("discovery.so not built")

    def make(first=False, list_local=False, **section):
        dtcp, dhttp = tnhelp.free_port(), tnhelp.free_port()
        if list_local:
            section["lookupd"] = ["127.0.0.1:%d" % dtcp]
        b = broker(broadcast_address="127.0.0.1", start=False, **section)
        disc = {"tcp_listen": "127.0.0.1:%d" % dtcp, "http_listen": "127.0.0.1:%d" % dhttp}
        b.sections = ({"discovery": disc, **b.sections} if first else
                      {**b.sections, "discovery": disc})
        b.write_conf()
        restart(b)
        return b, dtcp, dhttp
    return make


def lookup(dhttp, topic):
    r = tnhelp.request(dhttp, "GET", "/lookup?topic=" + topic)
    return r.json() if r.status == 200 else None


def producers(dhttp, topic):
    found = lookup(dhttp, topic)
    return [(p["broadcast_address"], p["tcp_port"], p["http_port"])
            for p in (found or {}).get("producers", [])]


def nodes(dhttp):
    return [(p["broadcast_address"], p["tcp_port"], p["http_port"])
            for p in tnhelp.request(dhttp, "GET", "/nodes").json()["producers"]]


def node_topics(dhttp):
    (node,) = tnhelp.request(dhttp, "GET", "/nodes").json()["producers"]
    return sorted(node["topics"])


def test_lookup_finds_the_broker(with_discovery):
    # the local discovery is also listed in broker.lookupd: it is reached
    # in-process only, and the broker is listed there once
    b, dtcp, dhttp = with_discovery(list_local=True)
    b.wait_log(r"lookupd 127\.0\.0\.1:%d: the discovery module of this process" % dtcp)
    http(b, "POST", "/channel/create?topic=found&channel=c1")
    found = lookup(dhttp, "found")
    assert found["channels"] == ["c1"]
    (p,) = found["producers"]
    assert (p["broadcast_address"], p["tcp_port"], p["http_port"]) == (
        "127.0.0.1", b.tcp_port, b.http_port)
    # a consumer that followed the lookup gets what is published
    c = nw.consumer(p["tcp_port"], "found", "c1", rdy=1)
    nw.publish(b.tcp_port, "found", [b"via discovery"])
    assert c.read_message().body == b"via discovery"


@pytest.mark.parametrize("first", [True, False], ids=["discovery-first", "broker-first"])
def test_inprocess_registration_follows_changes(with_discovery, first):
    b, _, dhttp = with_discovery(first=first)
    me = ("127.0.0.1", b.tcp_port, b.http_port)
    b.wait_log(r"registered with the discovery module in-process")
    # the producer is known before it has any topic
    assert nodes(dhttp) == [me]
    # every change is in the table as soon as the broker's answer arrives:
    # the registration is a call, not a message on a connection
    assert http(b, "POST", "/topic/create?topic=t1").status == 200
    assert producers(dhttp, "t1") == [me]
    assert lookup(dhttp, "t1")["channels"] == []
    assert http(b, "POST", "/channel/create?topic=t1&channel=c1").status == 200
    eph = "c2%23ephemeral"
    assert http(b, "POST", "/channel/create?topic=t1&channel=" + eph).status == 200
    assert sorted(lookup(dhttp, "t1")["channels"]) == ["c1", "c2#ephemeral"]
    nw.publish(b.tcp_port, "t2", [b"x"])
    assert producers(dhttp, "t2") == [me]
    assert node_topics(dhttp) == ["t1", "t2"]
    # as with nsqlookupd, a registration outlives its last producer unless
    # it is #ephemeral: the deleted ephemeral channel disappears
    assert http(b, "POST", "/channel/delete?topic=t1&channel=" + eph).status == 200
    assert lookup(dhttp, "t1")["channels"] == ["c1"]
    assert http(b, "POST", "/topic/delete?topic=t1").status == 200
    assert producers(dhttp, "t1") == []
    assert node_topics(dhttp) == ["t2"]
    assert producers(dhttp, "t2") == [me]
    # no loopback connection was made for it
    assert "broker: lookupd" not in b.log()


def test_restart_registers_persisted_topics(with_discovery):
    b, _, dhttp = with_discovery()
    nw.consumer(b.tcp_port, "kept", "ch").close()
    b.stop()
    restart(b)
    b.wait_log(r"registered with the discovery module in-process \(1 topics\)")
    found = lookup(dhttp, "kept")
    assert found["channels"] == ["ch"]
    assert len(found["producers"]) == 1


def test_reload_removes_and_adds_each_side(with_discovery):
    b, dtcp, dhttp = with_discovery(lookupd_interval="1s")
    me = ("127.0.0.1", b.tcp_port, b.http_port)
    assert http(b, "POST", "/topic/create?topic=r").status == 200
    sections = dict(b.sections)
    # the broker leaves the configuration: discovery forgets it
    b.sections = {"discovery": sections["discovery"]}
    b.reload()
    tnhelp.wait_for(lambda: nodes(dhttp) == [], 10, what="the broker to leave /nodes")
    assert producers(dhttp, "r") == []
    # back: registered again, with the topic it kept on disk
    b.sections = sections
    b.reload()
    tnhelp.wait_for(lambda: producers(dhttp, "r") == [me], 10, what="the broker back in /lookup")
    # discovery leaves: the broker lets go of it and keeps working
    since = b.log_size()
    b.sections = {"broker": sections["broker"]}
    b.reload()
    b.wait_log(r"in-process registration ends", since=since)
    nw.publish(b.tcp_port, "r", [b"still here"])
    # discovery comes back (the service appears after the broker started)
    b.sections = sections
    b.reload()
    tnhelp.wait_for(lambda: producers(dhttp, "r") == [me], 10, what="registration after re-add")
    assert b.alive()
    assert "[error]" not in b.stderr()


def test_local_lookupd_entry_resumes_when_discovery_leaves(with_discovery):
    # the local discovery listed in broker.lookupd is skipped while it
    # runs in-process; when a reload removes it, the TCP path takes the
    # address over again (and finds nobody there)
    b, dtcp, dhttp = with_discovery(list_local=True, lookupd_interval="1s")
    b.wait_log(r"lookupd 127\.0\.0\.1:%d: the discovery module of this process" % dtcp)
    sections = dict(b.sections)
    since = b.log_size()
    b.sections = {"broker": sections["broker"]}
    b.reload()
    b.wait_log(r"lookupd 127\.0\.0\.1:%d: cannot connect" % dtcp, since=since)


def test_remote_discovery_restart_gets_everything_again(broker, ternd):
    """Kill the ternd that runs discovery (SIGKILL: no goodbye), start it
    again on the same ports: the broker reconnects with backoff and
    registers every topic and channel again."""
    if not (modules_dir() / "discovery.so").exists():
        pytest.skip("discovery.so not built")
    dtcp, dhttp = tnhelp.free_port(), tnhelp.free_port()
    d = ternd(daemon={"modules_dir": str(modules_dir())},
              sections={"discovery": {"tcp_listen": "127.0.0.1:%d" % dtcp,
                                      "http_listen": "127.0.0.1:%d" % dhttp}})
    d.start()
    b = broker(lookupd=["127.0.0.1:%d" % dtcp], broadcast_address="127.0.0.1",
               lookupd_interval="2s")
    me = ("127.0.0.1", b.tcp_port, b.http_port)
    nw.consumer(b.tcp_port, "a", "c1").close()
    nw.consumer(b.tcp_port, "a", "c2").close()
    nw.publish(b.tcp_port, "solo", [b"x"])

    def all_there():
        return (producers(dhttp, "a") == [me] and producers(dhttp, "solo") == [me] and
                sorted(lookup(dhttp, "a")["channels"]) == ["c1", "c2"])
    tnhelp.wait_for(all_there, 10, what="the registrations")
    d.kill()
    b.wait_log(r"lookupd 127\.0\.0\.1:%d: connection lost" % dtcp)
    # a change while the directory is away is part of the next hello
    nw.consumer(b.tcp_port, "late", "c3").close()
    d.start()
    tnhelp.wait_for(all_there, 15, what="the registrations after the restart")
    assert producers(dhttp, "late") == [me]
    assert lookup(dhttp, "late")["channels"] == ["c3"]
    # changes flow again on the new connection
    assert http(b, "POST", "/topic/delete?topic=solo").status == 200
    tnhelp.wait_for(lambda: node_topics(dhttp) == ["a", "late"], 10,
                    what="UNREGISTER on the new connection")
