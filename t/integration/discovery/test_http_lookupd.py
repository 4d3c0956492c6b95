"""nsqlookupd's HTTP API on discovery.http_listen, with nsqlookupd's v1
answers: /ping, /info, /lookup, /topics, /channels, /nodes, the create and
delete actions, /topic/tombstone (and its lifetime), the pre-1.0 names, and
the nsq-style 404/405 bodies."""

import socket
import time

import pytest

import tnhelp
from dschelp import get, identified, post


@pytest.fixture
def srv(dsc):
    t = dsc()
    yield t
    t.stop()


def nsq_error(r, status, code):
    assert r.status == status, (r.status, r.body)
    assert r.json() == {"message": code}
    assert r.header("x-nsq-content-type") == "nsq; version=1.0"
    assert r.header("content-type") == "application/json; charset=utf-8"


def empty_ok(r):
    assert r.status == 200, (r.status, r.body)
    assert r.body == b""
    assert r.header("x-nsq-content-type") == "nsq; version=1.0"


def test_ping(srv):
    r = get(srv.http_port, "/ping")
    assert r.status == 200 and r.body == b"OK"
    assert r.header("content-type").startswith("text/plain")
    r = tnhelp.request(srv.http_port, "HEAD", "/ping")
    assert r.status == 200 and r.body == b"" and r.header("content-length") == "2"


def test_info(srv):
    r = get(srv.http_port, "/info")
    assert r.status == 200
    assert r.json() == {"version": "1.3.0"}
    assert r.header("x-nsq-content-type") == "nsq; version=1.0"


def test_info_version_configurable(dsc):
    t = dsc(nsq_version="1.2.1")
    assert get(t.http_port, "/info").json() == {"version": "1.2.1"}
    t.stop()


def test_not_found_and_method(srv):
    nsq_error(get(srv.http_port, "/nope"), 404, "NOT_FOUND")
    nsq_error(get(srv.http_port, "/topic/nope"), 404, "NOT_FOUND")
    nsq_error(get(srv.http_port, "/topic/create", topic="t"), 405, "METHOD_NOT_ALLOWED")
    nsq_error(post(srv.http_port, "/lookup", topic="t"), 405, "METHOD_NOT_ALLOWED")
    nsq_error(tnhelp.request(srv.http_port, "DELETE", "/topics"), 405, "METHOD_NOT_ALLOWED")


def test_lookup_args(srv):
    nsq_error(get(srv.http_port, "/lookup"), 400, "MISSING_ARG_TOPIC")
    nsq_error(get(srv.http_port, "/lookup", topic="missing"), 404, "TOPIC_NOT_FOUND")
    nsq_error(get(srv.http_port, "/lookup", topic=""), 404, "TOPIC_NOT_FOUND")
    nsq_error(get(srv.http_port, "/channels"), 400, "MISSING_ARG_TOPIC")
    # a topic nobody registered has no channels, which is not an error
    r = get(srv.http_port, "/channels", topic="missing")
    assert r.status == 200 and r.json() == {"channels": []}


def test_empty_lists(srv):
    assert get(srv.http_port, "/topics").json() == {"topics": []}
    assert get(srv.http_port, "/nodes").json() == {"producers": []}


def test_topic_create_delete(srv):
    p = srv.http_port
    nsq_error(post(p, "/topic/create"), 400, "MISSING_ARG_TOPIC")
    nsq_error(post(p, "/topic/create", topic="bad topic"), 400, "INVALID_ARG_TOPIC")
    nsq_error(post(p, "/topic/create", topic="x" * 65), 400, "INVALID_ARG_TOPIC")
    empty_ok(post(p, "/topic/create", topic="a"))
    empty_ok(post(p, "/topic/create", topic="b#ephemeral"))
    empty_ok(post(p, "/topic/create", topic="a"))  # again: no duplicate
    assert get(p, "/topics").json() == {"topics": ["a", "b#ephemeral"]}
    assert get(p, "/lookup", topic="a").json() == {"channels": [], "producers": []}
    empty_ok(post(p, "/channel/create", topic="a", channel="c1"))
    empty_ok(post(p, "/channel/create", topic="a", channel="c2"))
    # delete takes the channels along; deleting the unknown is fine
    nsq_error(post(p, "/topic/delete"), 400, "MISSING_ARG_TOPIC")
    empty_ok(post(p, "/topic/delete", topic="a"))
    empty_ok(post(p, "/topic/delete", topic="never"))
    assert get(p, "/topics").json() == {"topics": ["b#ephemeral"]}
    assert get(p, "/channels", topic="a").json() == {"channels": []}
    nsq_error(get(p, "/lookup", topic="a"), 404, "TOPIC_NOT_FOUND")


def test_channel_create_delete(srv):
    p = srv.http_port
    nsq_error(post(p, "/channel/create", channel="c"), 400, "MISSING_ARG_TOPIC")
    nsq_error(post(p, "/channel/create", topic="t"), 400, "MISSING_ARG_CHANNEL")
    nsq_error(post(p, "/channel/create", topic="t!", channel="c"), 400, "INVALID_ARG_TOPIC")
    nsq_error(post(p, "/channel/create", topic="t", channel="c c"), 400, "INVALID_ARG_CHANNEL")
    empty_ok(post(p, "/channel/create", topic="t", channel="c"))
    # the topic comes with it
    assert get(p, "/topics").json() == {"topics": ["t"]}
    assert get(p, "/lookup", topic="t").json() == {"channels": ["c"], "producers": []}
    nsq_error(post(p, "/channel/delete", topic="t"), 400, "MISSING_ARG_CHANNEL")
    empty_ok(post(p, "/channel/delete", topic="t", channel="c"))
    nsq_error(post(p, "/channel/delete", topic="t", channel="c"), 404, "CHANNEL_NOT_FOUND")
    assert get(p, "/channels", topic="t").json() == {"channels": []}
    assert get(p, "/topics").json() == {"topics": ["t"]}


def test_deprecated_names(srv):
    p = srv.http_port
    empty_ok(get(p, "/create_topic", topic="old"))
    empty_ok(post(p, "/create_channel", topic="old", channel="c"))
    assert get(p, "/lookup", topic="old").json() == {"channels": ["c"], "producers": []}
    empty_ok(get(p, "/delete_channel", topic="old", channel="c"))
    empty_ok(post(p, "/tombstone_topic_producer", topic="old", node="x:1"))
    empty_ok(get(p, "/delete_topic", topic="old"))
    assert get(p, "/topics").json() == {"topics": []}


def test_nodes(srv):
    p = srv.http_port
    a = identified(srv.tcp_port, addr="10.0.0.1", http=4151)
    b = identified(srv.tcp_port, addr="10.0.0.2", http=5151)
    assert a.cmd("REGISTER t1 c") == b"OK"
    assert a.cmd("REGISTER t2") == b"OK"
    assert b.cmd("REGISTER t2") == b"OK"
    nodes = get(p, "/nodes").json()["producers"]
    assert [n["broadcast_address"] for n in nodes] == ["10.0.0.1", "10.0.0.2"]
    n = nodes[0]
    assert set(n) == {"remote_address", "hostname", "broadcast_address", "tcp_port",
                      "http_port", "version", "topology_zone", "topology_region",
                      "tombstones", "topics"}
    assert n["topics"] == ["t1", "t2"] and n["tombstones"] == [False, False]
    assert nodes[1]["topics"] == ["t2"] and nodes[1]["tombstones"] == [False]
    assert nodes[1]["http_port"] == 5151 and nodes[1]["hostname"] == "node-10.0.0.2"
    a.close()
    b.close()


def test_tombstone_args(srv):
    nsq_error(post(srv.http_port, "/topic/tombstone", node="a:1"), 400, "MISSING_ARG_TOPIC")
    nsq_error(post(srv.http_port, "/topic/tombstone", topic="t"), 400, "MISSING_ARG_NODE")
    empty_ok(post(srv.http_port, "/topic/tombstone", topic="t", node="nobody:1"))


def test_tombstone_lifetime(dsc):
    # 1 s, stretched under valgrind: the checks below must come before it ends
    lifetime = tnhelp.scaled(1)
    t = dsc(tombstone_lifetime=tnhelp.duration(1))
    p = t.http_port
    a = identified(t.tcp_port, addr="10.0.0.1", http=4151)
    b = identified(t.tcp_port, addr="10.0.0.2", http=4151)
    for c in (a, b):
        assert c.cmd("REGISTER t") == b"OK"
        assert c.cmd("REGISTER u") == b"OK"

    def producers(topic):
        return [x["broadcast_address"] for x in get(p, "/lookup", topic=topic).json()["producers"]]

    # the node is broadcast_address:http_port; only that producer of that topic
    start = time.monotonic()  # the tombstone cannot end sooner than this + lifetime
    empty_ok(post(p, "/topic/tombstone", topic="t", node="10.0.0.1:4151"))
    assert producers("t") == ["10.0.0.2"]
    assert producers("u") == ["10.0.0.1", "10.0.0.2"]
    nodes = get(p, "/nodes").json()["producers"]  # tombstoned nodes are still listed
    assert nodes[0]["topics"] == ["t", "u"] and nodes[0]["tombstones"] == [True, False]
    assert nodes[1]["tombstones"] == [False, False]
    tnhelp.wait_for(lambda: producers("t") == ["10.0.0.1", "10.0.0.2"], 5,
                    what="the tombstone to end")
    elapsed = time.monotonic() - start
    assert 0.8 * lifetime <= elapsed < tnhelp.scaled(3), elapsed
    assert get(p, "/nodes").json()["producers"][0]["tombstones"] == [False, False]
    a.close()
    b.close()
    t.stop()


def test_keep_alive_pipelined(srv):
    """Several requests on one connection, answered in order."""
    p = srv.http_port
    post(p, "/topic/create", topic="k")
    req = b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path
                   for path in (b"/ping", b"/topics", b"/info"))
    with socket.create_connection(("127.0.0.1", p), timeout=5) as s:
        s.sendall(req)
        r1, rest = tnhelp.read_response(s)
        r2, rest = tnhelp.read_response(s, rest)
        r3, _ = tnhelp.read_response(s, rest)
    assert r1.body == b"OK"
    assert r2.json() == {"topics": ["k"]}
    assert r3.json() == {"version": "1.3.0"}
