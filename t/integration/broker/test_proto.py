"""The broker's TCP protocol V2 over raw sockets: every command, its
replies and nsqd's error frames (fatal ones close the connection), and the
delivery semantics behind them (RDY, FIN, REQ, TOUCH, timeouts, fan-out,
load balancing, #ephemeral)."""

import json
import socket
import struct
import time

import pytest

import nsqwire as nw
import tnhelp
from nsqwire import FRAME_ERROR, FRAME_RESPONSE


def test_bad_magic_closes(broker):
    b = broker(http=False)
    c = nw.Conn(b.tcp_port, magic=False)
    c.send(b"  V1")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_BAD_PROTOCOL")]


def test_invalid_command_is_fatal(broker):
    b = broker(http=False)
    c = nw.Conn(b.tcp_port)
    c.cmd("BOGUS x")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_INVALID invalid command BOGUS")]


def test_pub_sub_fin(broker):
    b = broker(http=False)
    c = nw.consumer(b.tcp_port, "orders", "ship", rdy=1)
    nw.publish(b.tcp_port, "orders", [b"one", b"two"])
    m = c.read_message()
    assert (m.body, m.attempts, len(m.id)) == (b"one", 1, 16)
    assert all(ch in b"0123456789abcdef" for ch in m.id)
    assert abs(m.ts / 1e9 - time.time()) < 30
    c.expect_silence()  # RDY 1: the second waits for the FIN
    c.fin(m.id)
    m2 = c.read_message()
    assert m2.body == b"two" and m2.id != m.id
    c.fin(m2.id)
    c.nop()  # no reply
    c.expect_silence()


def test_line_endings_crlf(broker):
    b = broker(http=False)
    with nw.Conn(b.tcp_port) as c:
        c.send(b"PUB crlf\r\n" + nw.frame_body(b"x"))
        c.expect_ok()


def test_identify_plain_and_negotiated(broker):
    b = broker(http=False, max_rdy_count=100, max_msg_timeout="5m")
    with nw.Conn(b.tcp_port) as c:
        assert c.identify(client_id="a", hostname="h", user_agent="test/1") == b"OK"
    with nw.Conn(b.tcp_port) as c:
        r = c.identify(feature_negotiation=True, msg_timeout=5000, tls_v1=True, snappy=True,
                       sample_rate=10, output_buffer_size=1024, output_buffer_timeout=100)
        assert r["max_rdy_count"] == 100
        assert r["max_msg_timeout"] == 300000
        assert r["msg_timeout"] == 5000
        assert r["tls_v1"] is False and r["snappy"] is False  # refused cleanly
        assert r["deflate"] is False
        assert r["sample_rate"] == 10
        assert r["auth_required"] is False
        assert r["output_buffer_size"] == 1024 and r["output_buffer_timeout"] == 100
        assert set(r) >= {"version", "max_deflate_level", "deflate_level"}
        c.pub("after-identify", b"x")  # the connection still works, uncompressed
        c.expect_ok()


@pytest.mark.parametrize("fields,error", [
    ({"heartbeat_interval": 500}, b"E_BAD_BODY IDENTIFY heartbeat interval (500) is invalid"),
    ({"heartbeat_interval": 120000}, b"E_BAD_BODY IDENTIFY heartbeat interval (120000) is invalid"),
    ({"msg_timeout": 999}, b"E_BAD_BODY IDENTIFY msg timeout (999) is invalid"),
    ({"msg_timeout": 3600000}, b"E_BAD_BODY IDENTIFY msg timeout (3600000) is invalid"),
    ({"sample_rate": 100}, b"E_BAD_BODY IDENTIFY sample rate (100) is invalid"),
    ({"output_buffer_size": 10}, b"E_BAD_BODY IDENTIFY output buffer size (10) is invalid"),
    ({"output_buffer_timeout": 5}, b"E_BAD_BODY IDENTIFY output buffer timeout (5) is invalid"),
    ({"heartbeat_interval": "x"}, b"E_BAD_BODY IDENTIFY failed to decode JSON body"),
])
def test_identify_errors(broker, fields, error):
    b = broker(http=False)
    c = nw.Conn(b.tcp_port)
    c.cmd("IDENTIFY", json.dumps(fields).encode())
    assert c.expect_closed() == [(FRAME_ERROR, error)]


def test_identify_body_errors(broker):
    b = broker(http=False, max_body_size="1KiB")
    cases = [
        (b"IDENTIFY\n" + nw.frame_body(b"{not json"), b"E_BAD_BODY IDENTIFY failed to decode JSON body"),
        (b"IDENTIFY\n" + nw.frame_body(b"[1]"), b"E_BAD_BODY IDENTIFY failed to decode JSON body"),
        (b"IDENTIFY\n" + struct.pack(">I", 0), b"E_BAD_BODY IDENTIFY invalid body size 0"),
        (b"IDENTIFY\n" + struct.pack(">I", 2048), b"E_BAD_BODY IDENTIFY body too big 2048 > 1024"),
    ]
    for data, error in cases:
        c = nw.Conn(b.tcp_port)
        c.send(data)
        assert c.expect_closed() == [(FRAME_ERROR, error)], data
    c = nw.Conn(b.tcp_port)
    c.identify()
    c.cmd("IDENTIFY", b"{}")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_INVALID cannot IDENTIFY in current state")]


def test_sub_errors(broker):
    b = broker(http=False, max_channel_consumers=1)
    cases = [
        ("SUB onlytopic", b"E_INVALID SUB insufficient number of parameters"),
        ("SUB bad!topic ch", b'E_BAD_TOPIC SUB topic name "bad!topic" is not valid'),
        ("SUB t bad/channel", b'E_BAD_CHANNEL SUB channel name "bad/channel" is not valid'),
        ("SUB " + "x" * 65 + " ch", b'E_BAD_TOPIC SUB topic name "' + b"x" * 65 + b'" is not valid'),
    ]
    for line, error in cases:
        c = nw.Conn(b.tcp_port)
        c.cmd(line)
        assert c.expect_closed() == [(FRAME_ERROR, error)], line
    c = nw.consumer(b.tcp_port, "t", "ch")
    c.sub("t", "ch")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_INVALID cannot SUB in current state")]
    held = nw.consumer(b.tcp_port, "t", "one")
    c = nw.Conn(b.tcp_port)
    c.sub("t", "one")
    assert c.expect_closed() == [
        (FRAME_ERROR, b"E_TOO_MANY_CHANNEL_CONSUMERS channel consumers for t:one exceeds limit of 1")]
    held.close()
    c = nw.Conn(b.tcp_port)
    c.identify(heartbeat_interval=-1)
    c.sub("t", "ch")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_INVALID cannot SUB with heartbeats disabled")]


def test_pub_errors(broker):
    b = broker(http=False, max_msg_size=100)
    cases = [
        (b"PUB\n", b"E_INVALID PUB insufficient number of parameters"),
        (b"PUB b@d\n" + nw.frame_body(b"x"), b'E_BAD_TOPIC PUB topic name "b@d" is not valid'),
        (b"PUB t\n" + struct.pack(">I", 0), b"E_BAD_MESSAGE PUB invalid message body size 0"),
        (b"PUB t\n" + struct.pack(">i", -5), b"E_BAD_MESSAGE PUB invalid message body size -5"),
        (b"PUB t\n" + struct.pack(">I", 101), b"E_BAD_MESSAGE PUB message too big 101 > 100"),
    ]
    for data, error in cases:
        c = nw.Conn(b.tcp_port)
        c.send(data)
        assert c.expect_closed() == [(FRAME_ERROR, error)], data
    with nw.Conn(b.tcp_port) as c:
        c.pub("t", b"y" * 100)  # exactly the limit
        c.expect_ok()
        # a body split over many writes is waited for
        c.send(b"PUB t\n" + struct.pack(">I", 10) + b"12345")
        time.sleep(0.1)
        c.send(b"67890")
        c.expect_ok()


def test_mpub(broker):
    b = broker(http=False, max_msg_size=100, max_body_size=1000)
    c = nw.consumer(b.tcp_port, "batch", "ch", rdy=100)
    with nw.Conn(b.tcp_port) as p:
        p.mpub("batch", [b"a", b"b", b"c"])
        p.expect_ok()
    assert sorted(c.read_message().body for _ in range(3)) == [b"a", b"b", b"c"]
    cases = [
        (b"MPUB\n", b"E_INVALID MPUB insufficient number of parameters"),
        (b"MPUB b@d\n" + nw.mpub_body([b"x"]),
         b'E_BAD_TOPIC E_BAD_TOPIC MPUB topic name "b@d" is not valid'),
        (b"MPUB t\n" + struct.pack(">I", 0), b"E_BAD_BODY MPUB invalid body size 0"),
        (b"MPUB t\n" + struct.pack(">I", 1001), b"E_BAD_BODY MPUB body too big 1001 > 1000"),
        (b"MPUB t\n" + nw.frame_body(struct.pack(">I", 0)), b"E_BAD_BODY MPUB invalid message count 0"),
        (b"MPUB t\n" + nw.mpub_body([b"z" * 101]), b"E_BAD_MESSAGE MPUB message too big 101 > 100"),
        (b"MPUB t\n" + nw.frame_body(struct.pack(">II", 1, 0)),
         b"E_BAD_MESSAGE MPUB invalid message(0) body size 0"),
        (b"MPUB t\n" + nw.frame_body(struct.pack(">I", 2) + nw.frame_body(b"x")),
         b"E_BAD_MESSAGE MPUB failed to read message(1) body size"),
    ]
    for data, error in cases:
        p = nw.Conn(b.tcp_port)
        p.send(data)
        assert p.expect_closed() == [(FRAME_ERROR, error)], data
    # a bad MPUB publishes nothing of it
    p = nw.Conn(b.tcp_port)
    p.send(b"MPUB batch\n" + nw.mpub_body([b"ok", b"z" * 101]))
    p.expect_closed()
    c.expect_silence()


def test_dpub(broker):
    b = broker(http=False, max_req_timeout="10s")
    c = nw.consumer(b.tcp_port, "later", "ch", rdy=5)
    with nw.Conn(b.tcp_port) as p:
        sent = time.monotonic()
        p.dpub("later", 600, b"deferred")
        p.expect_ok()
        p.pub("later", b"now")
        p.expect_ok()
    assert c.read_message().body == b"now"
    m = c.read_message(timeout=5)
    assert m.body == b"deferred" and time.monotonic() - sent >= 0.55
    for line, error in [
        ("DPUB later\n", b"E_INVALID DPUB insufficient number of parameters"),
        ("DPUB later x\n", b"E_INVALID DPUB could not parse timeout x"),
        ("DPUB later -1\n", b"E_INVALID DPUB could not parse timeout -1"),
        ("DPUB later 10001\n", b"E_INVALID DPUB timeout 10001 out of range 0-10000"),
        ("DPUB b@d 10\n", b'E_BAD_TOPIC DPUB topic name "b@d" is not valid'),
    ]:
        p = nw.Conn(b.tcp_port)
        p.send(line.encode())
        assert p.expect_closed() == [(FRAME_ERROR, error)], line


def test_rdy_errors(broker):
    b = broker(http=False, max_rdy_count=10)
    c = nw.Conn(b.tcp_port)
    c.rdy(1)
    assert c.expect_closed() == [(FRAME_ERROR, b"E_INVALID cannot RDY in current state")]
    c = nw.consumer(b.tcp_port, "t", "c")
    c.rdy(11)
    assert c.expect_closed() == [(FRAME_ERROR, b"E_INVALID RDY count 11 out of range 0-10")]
    c = nw.consumer(b.tcp_port, "t", "c")
    c.cmd("RDY x")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_INVALID RDY could not parse count x")]
    # RDY without a count means 1; RDY 0 pauses
    c = nw.consumer(b.tcp_port, "t", "c")
    c.cmd("RDY")
    nw.publish(b.tcp_port, "t", [b"a", b"b"])
    m = c.read_message()
    c.rdy(0)
    c.fin(m.id)
    c.expect_silence()
    c.rdy(1)
    assert c.read_message().body == b"b"


def test_fin_req_touch_errors(broker):
    b = broker(http=False)
    for cmd in (b"FIN 0000000000000000\n", b"REQ 0000000000000000 0\n", b"TOUCH 0000000000000000\n"):
        c = nw.Conn(b.tcp_port)
        c.send(cmd)
        name = cmd.split()[0].decode()
        assert c.expect_closed() == [
            (FRAME_ERROR, ("E_INVALID cannot %s in current state" % name).encode())]
    a = nw.consumer(b.tcp_port, "t", "c", rdy=1)
    other = nw.consumer(b.tcp_port, "t", "c")
    nw.publish(b.tcp_port, "t", [b"x"])
    m = a.read_message()
    # not fatal: the connection stays usable after each
    a.fin(b"0123456789abcdef")
    assert a.expect_error(b"E_FIN_FAILED") == b"E_FIN_FAILED FIN 0123456789abcdef failed ID not in flight"
    a.req(b"0123456789abcdef", 0)
    assert a.expect_error(b"E_REQ_FAILED") == b"E_REQ_FAILED REQ 0123456789abcdef failed ID not in flight"
    a.touch(b"zzzzzzzzzzzzzzzz")
    assert a.expect_error(b"E_TOUCH_FAILED") == b"E_TOUCH_FAILED TOUCH zzzzzzzzzzzzzzzz failed ID not in flight"
    other.fin(m.id)
    assert other.expect_error(b"E_FIN_FAILED") == (
        b"E_FIN_FAILED FIN " + m.id + b" failed client does not own message")
    a.fin(m.id)
    a.nop()
    a.expect_silence()
    for cmd, error in [(b"FIN\n", b"E_INVALID FIN insufficient number of params"),
                       (b"REQ " + m.id + b"\n", b"E_INVALID REQ insufficient number of params"),
                       (b"REQ " + m.id + b" soon\n", b"E_INVALID REQ could not parse timeout soon"),
                       (b"FIN 123\n", b"E_INVALID Invalid Message ID")]:
        c = nw.consumer(b.tcp_port, "t", "c")
        c.send(cmd)
        assert c.expect_closed() == [(FRAME_ERROR, error)], cmd


def test_req_and_delay(broker):
    b = broker(http=False)
    c = nw.consumer(b.tcp_port, "t", "c", rdy=1)
    nw.publish(b.tcp_port, "t", [b"retry"])
    m = c.read_message()
    c.req(m.id, 0)
    m2 = c.read_message()
    assert (m2.id, m2.attempts) == (m.id, 2)
    t0 = time.monotonic()
    c.req(m2.id, 500)
    c.expect_silence(0.3)
    m3 = c.read_message(timeout=5)
    assert m3.attempts == 3 and time.monotonic() - t0 >= 0.45
    c.fin(m3.id)


def test_req_delay_clamped_to_max(broker):
    b = broker(http=False, max_req_timeout="1s")
    c = nw.consumer(b.tcp_port, "t", "c", rdy=1)
    nw.publish(b.tcp_port, "t", [b"x"])
    m = c.read_message()
    c.req(m.id, 3600000)  # clamped to 1s, not refused
    assert c.read_message(timeout=5).id == m.id


def test_timeout_requeue_and_touch(broker):
    b = broker(http=False, queue_scan_interval="20ms")
    # 1 s, stretched under valgrind (as the pace of the TOUCHes) so that a
    # slow answer does not use up the margin
    msg_timeout = round(1000 * tnhelp.TIMEOUT_SCALE)
    c = nw.consumer(b.tcp_port, "t", "c", rdy=1, msg_timeout=msg_timeout)
    nw.publish(b.tcp_port, "t", [b"slow"])
    m = c.read_message()
    # TOUCH twice keeps it ours well past the 1s timeout
    for _ in range(3):
        time.sleep(tnhelp.scaled(0.6))
        c.touch(m.id)
    c.expect_silence(tnhelp.scaled(0.3))
    # then let it time out: it comes back with the next attempt
    m2 = c.read_message(timeout=tnhelp.scaled(3))
    assert (m2.id, m2.attempts) == (m.id, 2)
    c.fin(m2.id)


def test_disconnect_requeues(broker):
    b = broker(http=False)
    a = nw.consumer(b.tcp_port, "t", "c", rdy=5)
    nw.publish(b.tcp_port, "t", [b"1", b"2"])
    got = [a.read_message(), a.read_message()]
    a.close()
    c = nw.consumer(b.tcp_port, "t", "c", rdy=5)
    again = sorted((c.read_message(), c.read_message()), key=lambda m: m.body)
    assert [m.id for m in again] == sorted((m.id for m in got))
    assert all(m.attempts == 2 for m in again)


def test_fanout_and_load_balance(broker):
    b = broker(http=False)
    c1 = nw.consumer(b.tcp_port, "t", "shared", rdy=100)
    c2 = nw.consumer(b.tcp_port, "t", "shared", rdy=100)
    solo = nw.consumer(b.tcp_port, "t", "solo", rdy=100)
    nw.publish(b.tcp_port, "t", [b"%d" % i for i in range(20)])
    assert sorted(int(solo.read_message().body) for _ in range(20)) == list(range(20))
    seen = []
    for c in (c1, c2):
        while True:
            try:
                seen.append((c, c.read_message(timeout=0.5)))
            except socket.timeout:
                break
    assert sorted(int(m.body) for _, m in seen) == list(range(20))
    assert {c for c, _ in seen} == {c1, c2}  # both got a share


def test_cls(broker):
    b = broker(http=False)
    c = nw.Conn(b.tcp_port)
    c.cls()
    assert c.expect_closed() == [(FRAME_ERROR, b"E_INVALID cannot CLS in current state")]
    c = nw.consumer(b.tcp_port, "t", "c", rdy=5)
    nw.publish(b.tcp_port, "t", [b"a"])
    m = c.read_message()
    c.cls()
    c.expect(FRAME_RESPONSE, b"CLOSE_WAIT")
    c.fin(m.id)  # still allowed while closing
    c.rdy(5)     # ignored after CLS
    nw.publish(b.tcp_port, "t", [b"b"])
    c.expect_silence()


def test_auth_disabled(broker):
    b = broker(http=False)
    c = nw.Conn(b.tcp_port)
    c.cmd("AUTH", b"secret")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_AUTH_DISABLED AUTH disabled")]


def test_heartbeats(broker):
    b = broker(http=False)
    c = nw.Conn(b.tcp_port)
    c.identify(heartbeat_interval=1000)
    assert c.read_frame(timeout=3) == (FRAME_RESPONSE, b"_heartbeat_")
    c.nop()
    assert c.read_frame(timeout=3) == (FRAME_RESPONSE, b"_heartbeat_")
    # no answer for two intervals: the server gives up on us
    frames = c.expect_closed(timeout=5)
    assert all(f == (FRAME_RESPONSE, b"_heartbeat_") for f in frames)


def test_ephemeral_channel_goes_away(broker):
    b = broker(http=False)
    nw.consumer(b.tcp_port, "t", "keep")  # the topic fans out to this one meanwhile
    c = nw.consumer(b.tcp_port, "t", "tmp#ephemeral", rdy=5)
    nw.publish(b.tcp_port, "t", [b"seen"])
    assert c.read_message().body == b"seen"
    c.close()
    time.sleep(0.2)
    nw.publish(b.tcp_port, "t", [b"while-gone"])
    c = nw.consumer(b.tcp_port, "t", "tmp#ephemeral", rdy=5)
    c.expect_silence()  # a new channel: nothing was kept for it
    nw.publish(b.tcp_port, "t", [b"new"])
    assert c.read_message().body == b"new"


def test_sample_rate(broker):
    b = broker(http=False)
    c = nw.consumer(b.tcp_port, "t", "c", rdy=1000, sample_rate=20)
    nw.publish(b.tcp_port, "t", [b"x"] * 400)
    n = 0
    while True:
        try:
            c.read_message(timeout=0.5)
            n += 1
        except socket.timeout:
            break
    assert 20 < n < 160  # about a fifth (20 %), far from all


def test_dead_letter(broker):
    b = broker(http=False, channels={"work": {"max_attempts": 2, "dead_letter_topic": "dlq"}})
    dlq = nw.consumer(b.tcp_port, "dlq", "inspect", rdy=5)
    c = nw.consumer(b.tcp_port, "jobs", "work", rdy=5)
    nw.publish(b.tcp_port, "jobs", [b"poison"])
    for attempt in (1, 2):
        m = c.read_message()
        assert m.attempts == attempt
        c.req(m.id, 0)
    c.expect_silence()
    d = dlq.read_message()
    assert (d.body, d.attempts) == (b"poison", 1)


def test_too_long_line(broker):
    b = broker(http=False)
    c = nw.Conn(b.tcp_port)
    c.send(b"X" * 5000)
    assert c.expect_closed() == [(FRAME_ERROR, b"E_INVALID command line too long")]
