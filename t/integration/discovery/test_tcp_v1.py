"""nsqlookupd's TCP protocol V1 on discovery.tcp_listen: the magic, PING,
IDENTIFY, REGISTER, UNREGISTER, their errors (all fatal, as in nsqlookupd),
the [size][data] framing, disconnects and inactive producers."""

import json
import socket
import struct
import time

import pytest

import tnhelp
from dschelp import V1Client, get, identified, producer_fields


@pytest.fixture
def srv(dsc):
    t = dsc(broadcast_address="lookupd.example")
    yield t
    t.stop()


def lookup(t, topic):
    return get(t.http_port, "/lookup", topic=topic)


def assert_fatal(c, text):
    assert c.frame() == text.encode()
    assert c.closed()


def test_bad_magic(srv):
    c = V1Client(srv.tcp_port, magic=b"  V2")
    assert_fatal(c, "E_BAD_PROTOCOL")


def test_magic_in_pieces(srv):
    c = V1Client(srv.tcp_port, magic=None)
    c.send(b"  ")
    time.sleep(0.05)
    c.send(b"V1PI")
    time.sleep(0.05)
    c.send(b"NG\n")
    assert c.frame() == b"OK"


def test_ping_before_identify(srv):
    with V1Client(srv.tcp_port) as c:
        assert c.cmd("PING") == b"OK"
        assert c.cmd("PING") == b"OK"


def test_identify_reply(srv):
    with V1Client(srv.tcp_port) as c:
        reply = json.loads(c.identify(**producer_fields()))
        assert set(reply) == {"tcp_port", "http_port", "version", "broadcast_address",
                              "hostname"}
        assert reply["tcp_port"] == srv.tcp_port
        assert reply["http_port"] == srv.http_port
        assert reply["broadcast_address"] == "lookupd.example"
        assert reply["version"] == "1.3.0"
        assert reply["hostname"] == socket.gethostname()
        # keys sorted, as Go marshals a map
        raw = c.cmd("PING")
        assert raw == b"OK"


def test_identify_twice(srv):
    c = identified(srv.tcp_port)
    body = json.dumps(producer_fields()).encode()
    c.send(b"IDENTIFY\n" + struct.pack(">I", len(body)) + body)
    assert_fatal(c, "E_INVALID cannot IDENTIFY again")


@pytest.mark.parametrize("fields", [
    {"tcp_port": 4150, "http_port": 4151, "version": "1"},                    # no address
    {"broadcast_address": "a", "http_port": 4151, "version": "1"},            # no tcp_port
    {"broadcast_address": "a", "tcp_port": 4150, "version": "1"},             # no http_port
    {"broadcast_address": "a", "tcp_port": 4150, "http_port": 4151},          # no version
    {"broadcast_address": "", "tcp_port": 4150, "http_port": 4151, "version": "1"},
])
def test_identify_missing_fields(srv, fields):
    c = V1Client(srv.tcp_port)
    body = json.dumps(fields).encode()
    c.send(b"IDENTIFY\n" + struct.pack(">I", len(body)) + body)
    assert_fatal(c, "E_BAD_BODY IDENTIFY missing fields")


@pytest.mark.parametrize("body", [b"{not json", b"[1,2]",
                                  b'{"broadcast_address": 5, "tcp_port": 1, "http_port": 2,'
                                  b' "version": "1"}',
                                  b'{"broadcast_address": "a", "tcp_port": "1", "http_port": 2,'
                                  b' "version": "1"}'])
def test_identify_bad_json(srv, body):
    c = V1Client(srv.tcp_port)
    c.send(b"IDENTIFY\n" + struct.pack(">I", len(body)) + body)
    assert_fatal(c, "E_BAD_BODY IDENTIFY failed to decode JSON body")


def test_identify_body_too_big(dsc):
    t = dsc(max_identify_size="1KiB")
    c = V1Client(t.tcp_port)
    c.send(b"IDENTIFY\n" + struct.pack(">I", 1025))
    assert_fatal(c, "E_BAD_BODY IDENTIFY body too big (1025 bytes)")
    # exactly the limit is read (and judged as JSON)
    c = V1Client(t.tcp_port)
    body = json.dumps(producer_fields(pad="x" * 800)).encode()
    body += b" " * (1024 - len(body))
    assert len(body) == 1024
    c.send(b"IDENTIFY\n" + struct.pack(">I", len(body)) + body)
    assert "tcp_port" in json.loads(c.frame())
    t.stop()


def test_identify_body_in_pieces(srv):
    c = V1Client(srv.tcp_port)
    body = json.dumps(producer_fields()).encode()
    data = b"IDENTIFY\n" + struct.pack(">I", len(body)) + body + b"REGISTER t\n"
    for i in range(0, len(data), 7):
        c.send(data[i:i + 7])
        time.sleep(0.005)
    assert "tcp_port" in json.loads(c.frame())
    assert c.frame() == b"OK"
    assert [p["broadcast_address"] for p in lookup(srv, "t").json()["producers"]] == ["10.0.0.1"]


def test_pipelined_commands_answer_in_order(srv):
    c = V1Client(srv.tcp_port)
    body = json.dumps(producer_fields()).encode()
    c.send(b"PING\nIDENTIFY\n" + struct.pack(">I", len(body)) + body +
           b"REGISTER a\r\nREGISTER a ch\nUNREGISTER a ch\nPING\n")
    assert c.frame() == b"OK"
    assert "version" in json.loads(c.frame())
    assert [c.frame() for _ in range(4)] == [b"OK"] * 4


@pytest.mark.parametrize("line,reply", [
    ("REGISTER t", "E_INVALID client must IDENTIFY"),
    ("UNREGISTER t", "E_INVALID client must IDENTIFY"),
    ("FOO bar", "E_INVALID invalid command FOO"),
    ("", "E_INVALID invalid command "),
    ("ping", "E_INVALID invalid command ping"),
])
def test_errors_before_identify(srv, line, reply):
    c = V1Client(srv.tcp_port)
    c.send(line.encode() + b"\n")
    assert_fatal(c, reply)


@pytest.mark.parametrize("line,reply", [
    ("REGISTER", "E_INVALID REGISTER insufficient number of params"),
    ("UNREGISTER", "E_INVALID UNREGISTER insufficient number of params"),
    ("REGISTER bad/topic", "E_BAD_TOPIC REGISTER topic name 'bad/topic' is not valid"),
    ("REGISTER " + "x" * 65, "E_BAD_TOPIC REGISTER topic name '%s' is not valid" % ("x" * 65)),
    ("REGISTER t bad!chan", "E_BAD_CHANNEL REGISTER channel name 'bad!chan' is not valid"),
    ("UNREGISTER t#eph", "E_BAD_TOPIC UNREGISTER topic name 't#eph' is not valid"),
    ("UNREGISTER t c@", "E_BAD_CHANNEL UNREGISTER channel name 'c@' is not valid"),
    ("REGISTER  t", "E_BAD_TOPIC REGISTER topic name '' is not valid"),
])
def test_register_errors(srv, line, reply):
    c = identified(srv.tcp_port)
    c.send(line.encode() + b"\n")
    assert_fatal(c, reply)


def test_line_too_long(srv):
    c = V1Client(srv.tcp_port)
    c.send(b"PING" + b" " * 2000)
    assert_fatal(c, "E_INVALID command line too long")


def test_register_lookup_unregister(srv):
    c = identified(srv.tcp_port, port=4150, http=4151, addr="10.0.0.1",
                   topology_zone="z1", topology_region="r1")
    assert c.cmd("REGISTER orders billing") == b"OK"
    assert c.cmd("REGISTER orders audit#ephemeral") == b"OK"
    doc = lookup(srv, "orders").json()
    assert doc["channels"] == ["billing", "audit#ephemeral"]
    (p,) = doc["producers"]
    assert p == {"remote_address": p["remote_address"], "hostname": "node-10.0.0.1",
                 "broadcast_address": "10.0.0.1", "tcp_port": 4150, "http_port": 4151,
                 "version": "1.3.0", "topology_zone": "z1", "topology_region": "r1"}
    host, _, port = p["remote_address"].rpartition(":")
    assert host == "127.0.0.1" and int(port) == c.sock.getsockname()[1]
    assert get(srv.http_port, "/topics").json() == {"topics": ["orders"]}

    # an ephemeral channel goes with its last producer; a normal one stays
    assert c.cmd("UNREGISTER orders audit#ephemeral") == b"OK"
    assert c.cmd("UNREGISTER orders billing") == b"OK"
    assert get(srv.http_port, "/channels", topic="orders").json() == {"channels": ["billing"]}
    assert len(lookup(srv, "orders").json()["producers"]) == 1
    assert c.cmd("UNREGISTER orders") == b"OK"
    assert lookup(srv, "orders").json() == {"channels": ["billing"], "producers": []}
    # unregistering what is not registered is fine
    assert c.cmd("UNREGISTER nothing here") == b"OK"
    c.close()


def test_two_producers_and_disconnect(srv):
    a = identified(srv.tcp_port, addr="10.0.0.1")
    b = identified(srv.tcp_port, addr="10.0.0.2")
    assert a.cmd("REGISTER t") == b"OK"
    assert b.cmd("REGISTER t c") == b"OK"
    addrs = [p["broadcast_address"] for p in lookup(srv, "t").json()["producers"]]
    assert addrs == ["10.0.0.1", "10.0.0.2"]
    nodes = get(srv.http_port, "/nodes").json()["producers"]
    assert [n["broadcast_address"] for n in nodes] == ["10.0.0.1", "10.0.0.2"]
    a.close()
    tnhelp.wait_for(lambda: [p["broadcast_address"] for p in
                             lookup(srv, "t").json()["producers"]] == ["10.0.0.2"], 5,
                    what="the closed producer to leave")
    assert [n["broadcast_address"] for n in get(srv.http_port, "/nodes").json()["producers"]] \
        == ["10.0.0.2"]
    b.close()
    tnhelp.wait_for(lambda: get(srv.http_port, "/nodes").json() == {"producers": []}, 5,
                    what="no nodes")
    # the registrations themselves stay, like nsqlookupd
    assert lookup(srv, "t").json() == {"channels": ["c"], "producers": []}


def test_inactive_producer_hidden_until_ping(dsc):
    # 600 ms, stretched under valgrind: the lookups right after REGISTER and
    # PING must come before it runs out however slowly the server answers
    timeout = tnhelp.scaled(0.6)
    t = dsc(inactive_timeout=tnhelp.duration(0.6))
    c = identified(t.tcp_port)
    start = time.monotonic()  # before the last command it hears from c
    assert c.cmd("REGISTER t") == b"OK"
    assert len(get(t.http_port, "/lookup", topic="t").json()["producers"]) == 1
    tnhelp.wait_for(lambda: get(t.http_port, "/lookup", topic="t").json()["producers"] == [],
                    5, what="the silent producer to expire")
    assert time.monotonic() - start >= 0.8 * timeout
    assert get(t.http_port, "/nodes").json() == {"producers": []}
    # a PING brings it back (the registration was kept)
    assert c.cmd("PING") == b"OK"
    assert len(get(t.http_port, "/lookup", topic="t").json()["producers"]) == 1
    assert len(get(t.http_port, "/nodes").json()["producers"]) == 1
    # pinging keeps it active past the timeout
    for _ in range(8):
        time.sleep(timeout / 4)
        assert c.cmd("PING") == b"OK"
    assert len(get(t.http_port, "/lookup", topic="t").json()["producers"]) == 1
    c.close()
    t.stop()


def test_silent_unidentified_connection_closed(dsc):
    timeout = tnhelp.scaled(0.5)  # stretched under valgrind, as above
    t = dsc(inactive_timeout=tnhelp.duration(0.5))
    start = time.monotonic()              # before any of them connects
    quiet = V1Client(t.tcp_port)          # magic only
    pinger = V1Client(t.tcp_port)         # pings but never identifies
    producer = identified(t.tcp_port)     # identified, then silent
    assert producer.cmd("REGISTER t") == b"OK"
    for _ in range(6):
        time.sleep(timeout * 0.3)
        assert pinger.cmd("PING") == b"OK"
    assert quiet.closed(timeout=3)
    assert 0.8 * timeout <= time.monotonic() - start < tnhelp.scaled(4)
    # the identified one is only hidden, and comes back with a PING
    assert get(t.http_port, "/lookup", topic="t").json()["producers"] == []
    assert producer.cmd("PING") == b"OK"
    assert len(get(t.http_port, "/lookup", topic="t").json()["producers"]) == 1
    for c in (quiet, pinger, producer):
        c.close()
    t.stop()


def test_max_producers(dsc):
    t = dsc(max_producers=2)
    a, b = identified(t.tcp_port), identified(t.tcp_port, addr="10.0.0.2")
    c = V1Client(t.tcp_port)
    assert c.closed()
    a.close()
    tnhelp.wait_for(lambda: len(get(t.http_port, "/nodes").json()["producers"]) == 1, 5,
                    what="a to leave")
    with V1Client(t.tcp_port) as d:
        assert d.cmd("PING") == b"OK"
    b.close()
    t.stop()


def test_stop_with_producers_connected(dsc):
    t = dsc()
    c = identified(t.tcp_port)
    assert c.cmd("REGISTER t") == b"OK"
    t.stop()
    assert c.closed()
