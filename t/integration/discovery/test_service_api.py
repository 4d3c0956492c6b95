"""The discovery.registry C service (tn_discovery.h), through the dscclient
test module: an in-process producer shows in /lookup and /nodes like one
that came over TCP, an in-process instance never expires, a C watch sees
changes of its name with a consistent lookup, and stop undoes it all."""

import re

import pytest

import tnhelp
from dschelp import get, post


@pytest.fixture
def srv(dsc):
    t = dsc(more={"dscclient": {"watch": "gw", "topic": "inproc", "channel": "worker"}},
            services={"min_ttl": "100ms"})
    yield t
    if t.alive():
        t.stop()


def test_in_process_producer(srv):
    doc = get(srv.http_port, "/lookup", topic="inproc").json()
    assert doc["channels"] == ["worker"]
    (p,) = doc["producers"]
    assert p["broadcast_address"] == "10.9.9.9" and p["hostname"] == "inproc-host"
    assert p["tcp_port"] == 4150 and p["http_port"] == 4151 and p["version"] == "1.3.0"
    assert p["remote_address"].startswith("local:")
    (n,) = get(srv.http_port, "/nodes").json()["producers"]
    assert n["topics"] == ["inproc"] and n["tombstones"] == [False]
    # the bad topic name was refused
    assert get(srv.http_port, "/topics").json() == {"topics": ["inproc"]}


def test_in_process_instance(srv):
    (i,) = get(srv.http_port, "/services", name="dscclient").json()["instances"]
    assert i["id"] == "one" and i["address"] == "127.0.0.1:1" and i["weight"] == 3
    assert i["metadata"] == {"routes": ["a"]} and i["ttl"] == -1
    srv.wait_log(r"dscclient: started: heartbeat 0, unknown heartbeat 1")


def test_watch_callback(srv):
    post(srv.http_port, "/services/register",
         {"name": "gw", "id": "a", "address": "h:1", "metadata": {"z": 1}, "weight": 2})
    # index 2: the in-process instance was change 1
    srv.wait_log(r'dscclient: change gw index 2 lookup 1 at 2 \[a=h:1\(w2,s0,\{"z":1\}\)\]')
    post(srv.http_port, "/services/register",
         {"name": "gw", "id": "b", "address": "h:2", "state": "down", "ttl": "200ms"})
    srv.wait_log(r"dscclient: change gw index 3 lookup 2 at 3 \[a=h:1\(w2,s0,\{\"z\":1\}\),"
                 r"b=h:2\(w1,s1,\{\}\)\]")
    srv.wait_log(r"dscclient: change gw index 4 lookup 1 at 4 \[a=h:1")  # b expired
    # other names are not reported
    post(srv.http_port, "/services/register", {"name": "other", "id": "x", "address": "h:3"})
    post(srv.http_port, "/services/deregister", name="gw", id="a")
    text = srv.wait_log(r"dscclient: change gw index 6 lookup 0 at 6 \[\]")
    assert not re.search(r"change other", text)


def test_removed_client_undoes_its_registrations(srv):
    """A reload without the dscclient section stops it; discovery keeps
    running and forgets its producer, its instance and its watch."""
    del srv.sections["dscclient"]
    text = srv.reload()
    assert "reload done" in text, text
    srv.wait_log(r"dscclient: stopped")
    assert get(srv.http_port, "/lookup", topic="inproc").json() == {
        "channels": ["worker"], "producers": []}
    assert get(srv.http_port, "/nodes").json() == {"producers": []}
    assert get(srv.http_port, "/services", name="dscclient").json()["instances"] == []
    mark = srv.log_size()
    post(srv.http_port, "/services/register", {"name": "gw", "id": "a", "address": "h:1"})
    assert get(srv.http_port, "/services", name="gw").json()["instances"][0]["id"] == "a"
    assert "dscclient: change" not in srv.log()[mark:]
