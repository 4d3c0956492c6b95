"""Durability of the broker: overflow from memory to the disk queue, and
SIGTERM writing queued, deferred and in-flight messages to disk so a
restart delivers each exactly once more -- none lost, none invented."""

import os
import signal
import socket
import time

import nsqwire as nw
from brokerhelp import http, restart


def drain(c, fin=True, quiet=1.0):
    """Every message that arrives until `quiet` seconds pass without one."""
    out = []
    while True:
        try:
            m = c.read_message(timeout=quiet)
        except socket.timeout:
            return out
        out.append(m)
        if fin:
            c.fin(m.id)


def segment_files(t):
    d = t.tmp / "data" / "broker"
    return sorted(p.name for p in d.iterdir() if ".diskqueue." in p.name and p.name.endswith(".dat")
                  and "meta" not in p.name)


def test_overflow_to_disk(broker):
    b = broker(http=False, mem_queue_size=10)
    nw.consumer(b.tcp_port, "big", "ch")  # a channel, not ready
    n = 1000
    with nw.Conn(b.tcp_port) as p:
        for chunk in range(0, n, 100):
            p.mpub("big", [b"%04d" % i for i in range(chunk, chunk + 100)])
            p.expect_ok()
    assert any(name.startswith("big:ch.") for name in segment_files(b))
    c = nw.consumer(b.tcp_port, "big", "ch", rdy=200)
    got = drain(c)
    # memory first, then disk: each message once, in publish order here
    assert [m.body for m in got] == [b"%04d" % i for i in range(n)]


def test_mem_queue_size_zero_goes_through_disk(broker):
    b = broker(http=False, mem_queue_size=0, sync_every=1)
    c = nw.consumer(b.tcp_port, "d", "ch")
    nw.publish(b.tcp_port, "d", [b"a", b"b", b"c"])
    c.rdy(10)
    assert [m.body for m in drain(c)] == [b"a", b"b", b"c"]


def test_restart_with_backlog(broker):
    """Publish N; hold some in flight, defer some, leave the rest queued in
    memory and on disk; SIGTERM; restart; consume exactly N distinct."""
    b = broker(http=False, mem_queue_size=50)
    n = 400
    held = nw.consumer(b.tcp_port, "jobs", "work", rdy=25)
    nw.consumer(b.tcp_port, "jobs", "audit").close()  # a second channel, idle
    with nw.Conn(b.tcp_port) as p:
        for i in range(n - 10):
            p.pub("jobs", b"msg-%d" % i)
            p.expect_ok()
        for i in range(n - 10, n):
            p.dpub("jobs", 2000, b"msg-%d" % i)
            p.expect_ok()
    inflight = [held.read_message() for _ in range(25)]
    assert len({m.id for m in inflight}) == 25
    b.stop()  # SIGTERM: exit 0
    assert "messages written to" in b.log()
    held.close()

    restart(b)
    got = {}
    for channel in ("work", "audit"):
        c = nw.consumer(b.tcp_port, "jobs", channel, rdy=500)
        msgs = drain(c, quiet=3.0)  # the deferred ones come after 2s
        bodies = [m.body for m in msgs]
        assert len(bodies) == n, "%s: %d of %d" % (channel, len(bodies), n)
        assert set(bodies) == {b"msg-%d" % i for i in range(n)}
        got[channel] = msgs
        c.close()
    # the ones that were in flight count their earlier attempt
    again = {m.id: m.attempts for m in got["work"]}
    assert all(again[m.id] == 2 for m in inflight)
    b.stop()


def test_restart_keeps_topics_channels_and_empty_state(broker):
    b = broker(http=False)
    nw.consumer(b.tcp_port, "kept", "chan").close()
    nw.consumer(b.tcp_port, "gone#ephemeral", "x").close()
    b.stop()
    restart(b)
    # the channel exists again: a publish lands there before anyone subscribes
    nw.publish(b.tcp_port, "kept", [b"hello"])
    c = nw.consumer(b.tcp_port, "kept", "chan", rdy=1)
    assert c.read_message().body == b"hello"
    meta = (b.tmp / "data" / "broker" / "meta.json").read_text()
    assert "kept" in meta and "ephemeral" not in meta


def test_corrupt_tail_is_skipped(broker):
    b = broker(http=False, mem_queue_size=0, sync_every=1)
    nw.consumer(b.tcp_port, "c", "ch").close()
    nw.publish(b.tcp_port, "c", [b"first", b"second"])
    b.stop()
    seg = b.tmp / "data" / "broker" / [n for n in segment_files(b) if n.startswith("c:ch.")][0]
    with open(seg, "ab") as f:
        f.write(b"\x00\x00\x00\x20garbage-that-is-not-a-record")
    restart(b)
    c = nw.consumer(b.tcp_port, "c", "ch", rdy=10)
    assert [m.body for m in drain(c)] == [b"first", b"second"]
    assert b.alive()


def test_sigkill_loses_nothing_synced(broker):
    """With sync_every 1 every acknowledged PUB is on disk before OK."""
    b = broker(http=False, mem_queue_size=0, sync_every=1)
    nw.consumer(b.tcp_port, "k", "ch").close()
    nw.publish(b.tcp_port, "k", [b"%d" % i for i in range(20)])
    os.kill(b.pid, signal.SIGKILL)
    b.wait_exit()
    restart(b)
    c = nw.consumer(b.tcp_port, "k", "ch", rdy=50)
    assert sorted(int(m.body) for m in drain(c)) == list(range(20))
    time.sleep(0.1)


def test_failed_start_keeps_data(broker):
    """The HTTP port is taken: start fails after the TCP listener opened;
    ternd exits non-zero without crashing, and the next start still has
    every topic and message."""
    b = broker(http=False)
    nw.consumer(b.tcp_port, "keep", "ch").close()
    nw.publish(b.tcp_port, "keep", [b"a", b"b"])
    b.stop()
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    b.sections["broker"]["http_listen"] = "127.0.0.1:%d" % busy.getsockname()[1]
    b.write_conf()
    b.start(wait=False)
    assert b.wait_exit() != 0
    assert "Sanitizer" not in b.stderr() and "runtime error" not in b.stderr()
    busy.close()
    b.sections["broker"]["http_listen"] = None
    b.write_conf()
    restart(b)
    c = nw.consumer(b.tcp_port, "keep", "ch", rdy=5)
    assert sorted(m.body for m in drain(c)) == [b"a", b"b"]


def test_restart_paused_topic_backlog_reaches_every_channel(broker):
    """A paused topic with two channels keeps what is published in its own
    disk queue. After a restart it is still paused (nothing moved to the
    channels while they were being recreated), and unpausing it gives
    every channel every message."""
    b = broker(mem_queue_size=0, sync_every=1)
    for ch in ("a", "b"):
        nw.consumer(b.tcp_port, "pz", ch).close()
    assert http(b, "POST", "/topic/pause?topic=pz").status == 200
    nw.publish(b.tcp_port, "pz", [b"pz-%d" % i for i in range(10)])
    b.stop()
    restart(b)
    t = http(b, "GET", "/stats?format=json&topic=pz").json()["topics"][0]
    assert t["paused"] and t["depth"] == 10, t
    assert [c["depth"] for c in t["channels"]] == [0, 0], t
    assert http(b, "POST", "/topic/unpause?topic=pz").status == 200
    for ch in ("a", "b"):
        c = nw.consumer(b.tcp_port, "pz", ch, rdy=20)
        assert sorted(m.body for m in drain(c)) == [b"pz-%d" % i for i in range(10)], ch
        c.close()
