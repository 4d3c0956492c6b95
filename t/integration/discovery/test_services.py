"""The service registry's HTTP API (/services...): register, list,
deregister, heartbeat, TTL expiry, and the long-poll watch (answers when the
watched set changes, or at its timeout)."""

import json
import socket
import threading
import time

import pytest

import tnhelp
from dschelp import get, post

SHORT = {"services": {"min_ttl": "100ms", "default_ttl": "5s"}}


@pytest.fixture
def srv(dsc):
    t = dsc(**SHORT)
    yield t
    t.stop()


def register(t, name="gw", id="a", address="10.0.0.1:3553", **extra):
    body = {"name": name, "id": id, "address": address}
    body.update(extra)
    return post(t.http_port, "/services/register", body)


def instances(t, name):
    return get(t.http_port, "/services", name=name).json()["instances"]


def error(r, status, code):
    assert r.status == status, (r.status, r.body)
    assert r.json() == {"message": code}


def test_register_and_list(srv):
    r = register(srv, metadata={"routes": ["chat.*", "room.join"], "zone": "eu"}, weight=5,
                 state="draining", ttl="2s")
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["index"] == 1 and r.header("x-discovery-index") == "1"
    inst = doc["instance"]
    assert inst["name"] == "gw" and inst["id"] == "a" and inst["address"] == "10.0.0.1:3553"
    assert inst["metadata"] == {"routes": ["chat.*", "room.join"], "zone": "eu"}
    assert inst["weight"] == 5 and inst["state"] == "draining" and inst["ttl"] == 2000
    assert 1500 <= inst["expires_in"] <= 2000
    assert inst["create_index"] == 1 and inst["modify_index"] == 1

    r = register(srv, id="b", address="10.0.0.2:3553")
    b = r.json()["instance"]
    assert r.json()["index"] == 2
    assert b["weight"] == 1 and b["state"] == "up" and b["metadata"] == {} and b["ttl"] == 5000
    register(srv, name="other", id="x", address="h:1", ttl=-1)

    listing = get(srv.http_port, "/services", name="gw").json()
    assert listing["name"] == "gw" and listing["index"] == 2
    assert [i["id"] for i in listing["instances"]] == ["a", "b"]
    everything = get(srv.http_port, "/services").json()
    assert everything["index"] == 3
    assert list(everything["services"]) == ["gw", "other"]
    assert everything["services"]["other"][0]["ttl"] == -1
    # an unknown name is an empty list, with the registry's index
    r = get(srv.http_port, "/services", name="nobody")
    assert r.json() == {"index": 3, "name": "nobody", "instances": []}
    error(get(srv.http_port, "/services", name="bad name"), 400, "INVALID_NAME")


def test_reregister_replaces(srv):
    assert register(srv).json()["index"] == 1
    # the same fields: no change, no new index (a TTL restart)
    assert register(srv).json()["index"] == 1
    doc = register(srv, address="10.0.0.9:1", weight=3).json()
    assert doc["index"] == 2
    assert doc["instance"]["create_index"] == 1 and doc["instance"]["modify_index"] == 2
    assert [(i["address"], i["weight"]) for i in instances(srv, "gw")] == [("10.0.0.9:1", 3)]


@pytest.mark.parametrize("body,code", [
    ({"id": "a", "address": "h:1"}, "MISSING_NAME"),
    ({"name": "gw", "address": "h:1"}, "MISSING_ID"),
    ({"name": "gw", "id": "a"}, "MISSING_ADDRESS"),
    ({"name": "g w", "id": "a", "address": "h:1"}, "INVALID_NAME"),
    ({"name": "gw", "id": "a b", "address": "h:1"}, "INVALID_ID"),
    ({"name": "gw", "id": "a", "address": ""}, "INVALID_ADDRESS"),
    ({"name": "gw", "id": "a", "address": "h:1", "metadata": [1]}, "INVALID_METADATA"),
    ({"name": "gw", "id": "a", "address": "h:1", "weight": -2}, "INVALID_WEIGHT"),
    ({"name": "gw", "id": "a", "address": "h:1", "weight": "5"}, "INVALID_WEIGHT"),
    ({"name": "gw", "id": "a", "address": "h:1", "weight": 1000001}, "INVALID_WEIGHT"),
    ({"name": "gw", "id": "a", "address": "h:1", "state": "sleepy"}, "INVALID_STATE"),
    ({"name": "gw", "id": "a", "address": "h:1", "ttl": "50ms"}, "INVALID_TTL"),
    ({"name": "gw", "id": "a", "address": "h:1", "ttl": "2h"}, "INVALID_TTL"),
    ({"name": "gw", "id": "a", "address": "h:1", "ttl": "soon"}, "INVALID_TTL"),
    ({"name": "gw", "id": "a", "address": "h:1", "ttl": 0}, "INVALID_TTL"),
    ({"name": 5, "id": "a", "address": "h:1"}, "INVALID_BODY"),
])
def test_register_errors(srv, body, code):
    error(post(srv.http_port, "/services/register", body), 400, code)
    assert get(srv.http_port, "/services").json() == {"index": 0, "services": {}}


def test_register_bad_bodies(srv):
    error(post(srv.http_port, "/services/register"), 400, "MISSING_BODY")
    error(post(srv.http_port, "/services/register", "{nope"), 400, "INVALID_BODY")
    error(post(srv.http_port, "/services/register", "[1]"), 400, "INVALID_BODY")
    error(get(srv.http_port, "/services/register"), 405, "METHOD_NOT_ALLOWED")


def test_limits(dsc):
    t = dsc(services={"max_instances": 2, "max_metadata_size": "64"})
    assert register(t, id="a").status == 200
    assert register(t, id="b").status == 200
    error(register(t, id="c"), 503, "TOO_MANY_INSTANCES")
    assert register(t, id="b", address="other:1").status == 200  # replacing is fine
    error(register(t, id="a", metadata={"k": "x" * 60}), 413, "METADATA_TOO_BIG")
    assert register(t, id="a", metadata={"k": "x" * 50}).status == 200
    t.stop()


def test_deregister(srv):
    register(srv, id="a")
    register(srv, id="b")
    error(post(srv.http_port, "/services/deregister", id="a"), 400, "MISSING_NAME")
    error(post(srv.http_port, "/services/deregister", name="gw"), 400, "MISSING_ID")
    r = post(srv.http_port, "/services/deregister", name="gw", id="a")
    assert r.status == 200 and r.json() == {"index": 3}
    error(post(srv.http_port, "/services/deregister", name="gw", id="a"), 404,
          "INSTANCE_NOT_FOUND")
    # name and id may come in a JSON body, and DELETE works too
    r = tnhelp.request(srv.http_port, "DELETE", "/services/deregister",
                       body=json.dumps({"name": "gw", "id": "b"}))
    assert r.status == 200 and r.json() == {"index": 4}
    assert get(srv.http_port, "/services").json() == {"index": 4, "services": {}}


def test_ttl_expiry(srv):
    # timed from before the registration: the TTL cannot run out sooner
    # however slowly the server answers; the long one must outlast the
    # wait even under valgrind (tnhelp.duration)
    start = time.monotonic()
    register(srv, id="short", ttl=300)
    register(srv, id="long", ttl=tnhelp.duration(5))
    tnhelp.wait_for(lambda: [i["id"] for i in instances(srv, "gw")] == ["long"], 5,
                    what="the short TTL to run out")
    assert 0.25 <= time.monotonic() - start < tnhelp.scaled(2)
    m = srv.metrics()
    assert m["ternd_discovery_instances_expired_total"] == 1
    assert m["ternd_discovery_instances"] == 1


def test_heartbeat_keeps_alive(srv):
    # a TTL of 400 ms, heartbeats every 150 ms (both stretched alike under
    # valgrind so that a slow answer does not eat the margin)
    ttl_ms = round(400 * tnhelp.TIMEOUT_SCALE)
    register(srv, id="a", ttl="%dms" % ttl_ms)
    for _ in range(8):  # three times the TTL
        time.sleep(tnhelp.scaled(0.15))
        r = post(srv.http_port, "/services/heartbeat", name="gw", id="a")
        assert r.status == 200, r.body
        # renewed: a full TTL ahead again, not what was left of the last one
        assert r.json()["instance"]["expires_in"] > 0.75 * ttl_ms
    assert [i["id"] for i in instances(srv, "gw")] == ["a"]
    # a heartbeat does not change the set: the index stays
    assert r.json()["index"] == 1
    # it may change the state, which is a change
    r = post(srv.http_port, "/services/heartbeat", {"name": "gw", "id": "a", "state": "down"})
    assert r.json()["index"] == 2 and r.json()["instance"]["state"] == "down"
    error(post(srv.http_port, "/services/heartbeat", name="gw", id="a", state="odd"), 400,
          "INVALID_STATE")
    # silent: it expires; then a heartbeat is too late
    tnhelp.wait_for(lambda: instances(srv, "gw") == [], 5, what="expiry")
    error(post(srv.http_port, "/services/heartbeat", name="gw", id="a"), 404,
          "INSTANCE_NOT_FOUND")


class Watch(threading.Thread):
    """A long-poll in the background: .resp and .elapsed when done."""

    def __init__(self, port, **args):
        super().__init__(daemon=True)
        self.port, self.args = port, args
        self.resp = None

    def run(self):
        start = time.monotonic()
        self.resp = get(self.port, "/services/watch", **self.args)
        self.elapsed = time.monotonic() - start

    def result(self, timeout=5):
        self.join(tnhelp.scaled(timeout))
        assert not self.is_alive(), "the watch did not answer"
        return self.resp


def test_watch_wakes_on_change(srv):
    idx = register(srv, id="a").json()["index"]
    w = Watch(srv.http_port, name="gw", index=idx, timeout=tnhelp.duration(10))
    w.start()
    time.sleep(0.3)
    assert w.is_alive()
    # a change elsewhere does not wake it
    register(srv, name="other", id="x")
    time.sleep(0.2)
    assert w.is_alive()
    register(srv, id="b")
    r = w.result()
    assert 0.45 <= w.elapsed < tnhelp.scaled(5)
    doc = r.json()
    assert doc["index"] == 3 and r.header("x-discovery-index") == "3"
    assert [i["id"] for i in doc["instances"]] == ["a", "b"]


def test_watch_times_out(srv):
    idx = register(srv).json()["index"]
    w = Watch(srv.http_port, name="gw", index=idx, timeout="400ms")
    w.start()
    r = w.result()
    assert 0.35 <= w.elapsed < tnhelp.scaled(3)
    assert r.status == 200 and r.json()["index"] == idx  # unchanged: same index
    # bare numbers are milliseconds
    w = Watch(srv.http_port, name="gw", index=idx, timeout="300")
    w.start()
    w.result()
    assert 0.25 <= w.elapsed < tnhelp.scaled(3)


def test_watch_answers_at_once_when_behind(srv):
    register(srv)
    register(srv, id="b")
    start = time.monotonic()
    r = get(srv.http_port, "/services/watch", name="gw", index=1,
            timeout=tnhelp.duration(10))
    assert time.monotonic() - start < tnhelp.scaled(1)
    assert r.json()["index"] == 2
    # no index: the current state at once
    assert get(srv.http_port, "/services/watch", name="gw").json()["index"] == 2
    # a name that emptied: an index from before wakes at once
    post(srv.http_port, "/services/deregister", name="gw", id="a")
    post(srv.http_port, "/services/deregister", name="gw", id="b")
    r = get(srv.http_port, "/services/watch", name="gw", index=2, timeout="10s")
    assert r.json() == {"index": 4, "name": "gw", "instances": []}


def test_watch_all_and_expiry(srv):
    idx = get(srv.http_port, "/services").json()["index"]
    w = Watch(srv.http_port, index=idx, timeout=tnhelp.duration(10))
    w.start()
    time.sleep(0.2)
    # the TTL must outlast the answer and the start of the next watch
    register(srv, name="any", id="x", ttl=tnhelp.duration(0.3))
    r = w.result()
    assert list(r.json()["services"]) == ["any"]
    # the expiry of the instance wakes a watcher too
    w = Watch(srv.http_port, name="any", index=r.json()["index"],
              timeout=tnhelp.duration(10))
    w.start()
    r = w.result()
    assert r.json()["instances"] == []
    assert 0.1 <= w.elapsed < tnhelp.scaled(3)


def test_watch_args(srv):
    error(get(srv.http_port, "/services/watch", index="x"), 400, "INVALID_INDEX")
    error(get(srv.http_port, "/services/watch", index="-1"), 400, "INVALID_INDEX")
    error(get(srv.http_port, "/services/watch", timeout="later"), 400, "INVALID_TIMEOUT")
    error(get(srv.http_port, "/services/watch", name="a b"), 400, "INVALID_NAME")


def test_watch_wait_capped(dsc):
    t = dsc(services={"max_wait": "300ms", "default_wait": "200ms"})
    start = time.monotonic()
    get(t.http_port, "/services/watch", index=0, timeout="1h")
    assert time.monotonic() - start < tnhelp.scaled(2)
    start = time.monotonic()
    get(t.http_port, "/services/watch", index=0)  # the default wait
    assert 0.15 <= time.monotonic() - start < tnhelp.scaled(2)
    t.stop()


def test_watch_limit_and_abandoned_watch(dsc):
    t = dsc(services={"max_watchers": 1})
    s = socket.create_connection(("127.0.0.1", t.http_port), timeout=5)
    s.sendall(b"GET /services/watch?index=0&timeout=30s HTTP/1.1\r\nHost: x\r\n\r\n")
    tnhelp.wait_for(lambda: t.metrics().get("ternd_discovery_watchers") == 1, 5,
                    what="the watch to wait")
    error(get(t.http_port, "/services/watch", index=0), 503, "TOO_MANY_WATCHERS")
    s.close()  # the client goes away: its watch is dropped
    tnhelp.wait_for(lambda: t.metrics().get("ternd_discovery_watchers") == 0, 5,
                    what="the abandoned watch to go")
    r = get(t.http_port, "/services/watch", index=0, timeout="100ms")
    assert r.status == 200
    t.stop()


def test_stop_answers_pending_watches(dsc):
    t = dsc()
    w = Watch(t.http_port, index=0, timeout="60s")
    w.start()
    tnhelp.wait_for(lambda: t.metrics().get("ternd_discovery_watchers") == 1, 5,
                    what="the watch to wait")
    t.stop()
    r = w.result()
    assert r.status == 200 and r.json() == {"index": 0, "services": {}}
