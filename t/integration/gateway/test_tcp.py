"""The gateway over TCP: packets through Lua (echo, split and merged
packets), heartbeats (answer, time, timeout), size limits, sessions (bind,
groups, broadcast, attributes), Lua errors, and reload keeping sessions."""

import re
import socket
import struct
import time
from pathlib import Path

import pytest

import tnhelp
from gwhelp import Client, Codec

SCRIPT = (Path(__file__).resolve().parent / "route_test.lua").read_text()


def test_echo_route_and_seq(gateway):
    t = gateway(SCRIPT)
    with Client(t.tcp_port) as c:
        p = c.ask(1, 77, b"hello")
        assert p == {"heartbeat": False, "route": 1, "seq": 77, "data": b"echo:hello",
                     "extcode": 0}
        assert c.ask(1, -5, b"")["seq"] == -5
        assert re.match(rb"id=\d+ addr=127\.0\.0\.1:\d+$", c.ask(14, 1, b"")["data"])


def test_split_and_merged_packets(gateway):
    t = gateway(SCRIPT)
    codec = Codec()
    with Client(t.tcp_port) as c:
        # one packet a byte at a time
        raw = codec.packet(1, 1, b"slow")
        for i in range(len(raw)):
            c.sock.sendall(raw[i:i + 1])
            time.sleep(0.002)
        assert c.recv()["data"] == b"echo:slow"
        # three packets and half of a fourth in one write
        burst = b"".join(codec.packet(1, i, b"m%d" % i) for i in range(3))
        fourth = codec.packet(1, 3, b"m3")
        c.sock.sendall(burst + fourth[:5])
        got = [c.recv() for _ in range(3)]
        assert [(p["seq"], p["data"]) for p in got] == [(i, b"echo:m%d" % i) for i in range(3)]
        c.sock.sendall(fourth[5:])
        assert c.recv()["data"] == b"echo:m3"


@pytest.mark.parametrize("rb,sb,big", [(1, 0, True), (4, 4, False), (2, 1, False)])
def test_widths_and_byte_order(gateway, rb, sb, big):
    t = gateway(SCRIPT, extra="packet: { route_bytes: %d, seq_bytes: %d, byte_order: %s }"
                % (rb, sb, "big" if big else "little"))
    with Client(t.tcp_port, Codec(rb, sb, big)) as c:
        p = c.ask(1, 9 if sb else 0, b"w")
        assert (p["route"], p["seq"], p["data"]) == (1, 9 if sb else 0, b"echo:w")


def test_heartbeat_answered(gateway):
    t = gateway(SCRIPT)
    with Client(t.tcp_port) as c:
        c.sock.sendall(c.codec.heartbeat())
        assert c.recv() == {"heartbeat": True, "time": None}
        assert c.ask(1, 1, b"x")["data"] == b"echo:x"


def test_heartbeat_with_time(gateway):
    t = gateway(SCRIPT, extra="heartbeat_time: true")
    with Client(t.tcp_port) as c:
        before = time.time_ns()
        c.sock.sendall(c.codec.heartbeat())
        p = c.recv()
        assert p["heartbeat"] and before - 5e9 < p["time"] < time.time_ns() + 5e9


def test_heartbeat_timeout_closes_idle(gateway):
    # 300 ms, stretched under valgrind (as the live client's pace below)
    hb_ms = round(300 * tnhelp.TIMEOUT_SCALE)
    t = gateway(SCRIPT, extra="heartbeat: %dms" % hb_ms)
    with Client(t.tcp_port) as idle, Client(t.tcp_port) as alive:
        start = time.monotonic()
        # the live client keeps sending heartbeats more often than 2 x 300ms
        while time.monotonic() - start < tnhelp.scaled(1.2):
            alive.sock.sendall(alive.codec.heartbeat())
            assert alive.recv()["heartbeat"]
            time.sleep(tnhelp.scaled(0.15))
        assert tnhelp.closed_by_peer(idle.sock, timeout=2.0)
        assert alive.ask(1, 1, b"still")["data"] == b"echo:still"
    t.wait_log(r"no packet for %d ms, closed" % (2 * hb_ms))


def test_explicit_heartbeat_timeout(gateway):
    t = gateway(SCRIPT, extra="heartbeat: 10s\nheartbeat_timeout: 400ms")
    t0 = time.monotonic()  # before the connection: the timeout cannot start sooner
    with Client(t.tcp_port) as c:
        assert tnhelp.closed_by_peer(c.sock, timeout=3.0)
        assert 0.3 < time.monotonic() - t0 < tnhelp.scaled(2.5)


def test_oversize_packet_closes(gateway):
    t = gateway(SCRIPT, extra="packet: { max_size: 1KiB }")
    with Client(t.tcp_port) as c:
        assert c.ask(1, 1, b"x" * (1024 - 9 - 5))["data"].startswith(b"echo:")
        c.sock.sendall(struct.pack(">I", 1024 - 4 + 1) + b"\0" * 10)
        assert tnhelp.closed_by_peer(c.sock)
    t.wait_log(r"packet over packet.max_size \(1024 bytes\), closing")
    assert t.metrics()["ternd_gateway_oversize_total"] == 1


def test_malformed_packet_closes(gateway):
    t = gateway(SCRIPT)
    with Client(t.tcp_port) as c:
        c.sock.sendall(struct.pack(">IB", 3, 0x80) + b"xx")  # heartbeat of 3 bytes
        assert tnhelp.closed_by_peer(c.sock)
    t.wait_log(r"malformed packet, closing")


def test_bind_push_uid(gateway):
    t = gateway(SCRIPT)
    with Client(t.tcp_port) as a, Client(t.tcp_port) as b:
        assert a.ask(2, 1, b"alice")["data"] == b"bound:alice"
        assert b.ask(6, 2, b"alice:hi alice")["data"] == b"pushed:true"
        p = a.recv()
        assert (p["route"], p["seq"], p["data"]) == (60, 0, b"hi alice")
        assert b.ask(6, 3, b"nobody:x")["data"] == b"pushed:false"
        # a second bind of the same uid moves it to the new session
        assert b.ask(2, 4, b"alice")["data"] == b"bound:alice"
        a.send(6, 5, b"alice:moved")
        assert a.recv()["data"] == b"pushed:true"
        assert b.recv()["data"] == b"moved"
        assert b.ask(13, 6, b"")["data"] == b"uid=nil"


def test_bind_refuses_a_uid_with_nul(gateway):
    """A uid is a C string: one with a NUL byte is refused (found by
    fuzz_ws: it was bound, and its map entry outlived the session's copy of
    it, so the next bind of that uid read freed memory)."""
    t = gateway("function on_packet(s, route, seq, data)\n"
                "  s:reply(pcall(s.bind, s, data) and 'bound' or 'refused')\n"
                "end\n")
    with Client(t.tcp_port) as a:
        assert a.ask(1, 1, b"a\x00b")["data"] == b"refused"
        assert a.ask(1, 2, b"ab")["data"] == b"bound"
    with Client(t.tcp_port) as b:
        assert b.ask(1, 3, b"a\x00b")["data"] == b"refused"
        assert b.ask(1, 4, b"ab")["data"] == b"bound"
    assert t.alive()


def test_groups_and_broadcast(gateway):
    t = gateway(SCRIPT)
    with Client(t.tcp_port) as a, Client(t.tcp_port) as b, Client(t.tcp_port) as c:
        assert a.ask(3, 1, b"room")["data"] == b"joined"
        assert b.ask(3, 1, b"room")["data"] == b"joined"
        assert c.ask(4, 1, b"room")["data"] == b"sent:2"
        for x in (a, b):
            p = x.recv()
            assert (p["route"], p["data"]) == (40, b"to-room")
        assert b.ask(12, 2, b"room")["data"] == b"left"
        assert c.ask(4, 2, b"room")["data"] == b"sent:1"
        assert a.recv()["data"] == b"to-room"
        # the broadcast reaches the sender too, before its reply
        assert c.ask(5, 3, b"all")["data"] == b"all"
        assert c.recv()["data"] == b"sent:3"
        for x in (a, b):
            p = x.recv()
            assert (p["route"], p["data"]) == (50, b"all")
        assert c.ask(10, 4, b"")["data"] == b"count=3"
    # a closed member leaves its groups
    with Client(t.tcp_port) as d:
        tnhelp.wait_for(lambda: d.ask(10, 1, b"")["data"] == b"count=1", 5, what="count 1")
        assert d.ask(4, 2, b"room")["data"] == b"sent:0"


def test_attributes_and_disconnect_hook(gateway):
    t = gateway(SCRIPT)
    with Client(t.tcp_port) as c:
        assert c.ask(7, 1, b"")["data"] == b"n=1"
        assert c.ask(7, 2, b"")["data"] == b"n=2"
    t.wait_log(r"gone \d+ n=2")


def test_script_close(gateway):
    t = gateway(SCRIPT)
    with Client(t.tcp_port) as c:
        assert c.ask(9, 1, b"")["data"] == b"bye"
        assert tnhelp.closed_by_peer(c.sock)


def test_lua_error_counted_not_fatal(gateway):
    t = gateway(SCRIPT)
    with Client(t.tcp_port) as c:
        c.send(8, 1, b"")
        assert c.ask(1, 2, b"after")["data"] == b"echo:after"
    t.wait_log(r"on_packet.*boom")
    assert t.metrics()['ternd_lua_errors_total{module="gateway"}'] == 1


def test_on_connect_can_refuse(gateway):
    t = gateway("function on_connect(s) return false end\n"
                "function on_disconnect(s) ternd.log('info', 'should not run') end\n")
    with Client(t.tcp_port) as c:
        assert tnhelp.closed_by_peer(c.sock)
    time.sleep(0.2)
    assert "should not run" not in t.log()


def test_reload_keeps_sessions(gateway):
    t = gateway("function on_packet(s, r, q, d) s:set('k', d) s:reply('v1:' .. d) end\n")
    with Client(t.tcp_port) as c:
        assert c.ask(1, 1, b"a")["data"] == b"v1:a"
        t.script_path.write_text(
            "function on_packet(s, r, q, d) s:reply('v2:' .. d .. ':' .. s:get('k')) end\n")
        log = t.reload()
        assert "reload done" in log
        # the packet layout did not change (it was compared with memcmp,
        # padding included: valgrind saw the uninitialized bytes)
        assert "packet layout changed" not in log
        assert c.ask(1, 2, b"b")["data"] == b"v2:b:a"
        # a broken script is refused and the running one stays
        t.script_path.write_text("function on_packet(")
        log = t.reload()
        assert "reload rejected" in log or "keeping the old script" in log
        assert c.ask(1, 3, b"c")["data"] == b"v2:c:a"


def test_no_script_drops_packets(gateway):
    t = gateway(None)
    with Client(t.tcp_port) as c:
        c.sock.sendall(c.codec.heartbeat())
        assert c.recv()["heartbeat"]
        c.send(1, 1, b"nobody listens")
        with pytest.raises(TimeoutError):
            c.recv(timeout=0.3)
    assert t.metrics()["ternd_gateway_packets_in_total"] == 1


def test_check_conf_errors(gateway):
    t = gateway(None, start=False,
                extra="packet: { seq_bytes: 5 }\nnodes: { a: [] }\nbogus: 1")
    r = t.check()
    assert r.returncode == 1
    err = r.stderr
    assert re.search(r"ternd\.yaml:\d+:\d+: gateway\.packet\.seq_bytes", err), err
    assert "gateway.nodes.a: expected a list of addresses" in err, err
    assert "gateway.bogus" in err, err
    # cross-field checks run once the keys parse
    t.text = t.text.replace("seq_bytes: 5", "route_bytes: 3").replace("nodes: { a: [] }\n", "")
    t.text = t.text.replace("  bogus: 1\n", "")
    t.write_conf()
    r = t.check()
    assert r.returncode == 1 and "gateway.packet.route_bytes: must be 1, 2 or 4" in r.stderr, \
        r.stderr
