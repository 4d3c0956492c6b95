"""Crash safety of the broker under load: publishers run concurrently (one
connection per thread, raw PUB/MPUB, each recording which bodies got OK)
while ternd is killed with SIGKILL or stopped with SIGTERM; after a
restart everything is consumed and compared with what was acknowledged.

The guarantees checked (and documented in conf/ternd.yaml, broker section):
- mem_queue_size 0 and sync_every 1: every acknowledged message survives a
  SIGKILL (at least once; duplicates are counted, not forbidden), also
  when a consumer had received it and not FINed it, or had REQueued it
  (at once or with a delay): a record read from a channel's disk queue
  stays there until its message is finished or stored again, and after a
  restart reading resumes at the oldest such record.
- the default sync (sync_every 2500 / sync_timeout 2s): a SIGKILL loses no
  acknowledged message that went to a disk queue (the records were written
  before the OK; only a machine crash can lose the last sync_every records
  or sync_timeout of them); what sat in memory (up to mem_queue_size per
  topic and channel) is lost, as with nsqd.
- SIGTERM under load: nothing acknowledged is lost, nothing is invented;
  with messages from disk in flight or deferred, each unfinished one comes
  exactly once after the restart and no finished one comes back.
- emptying or deleting a channel with messages in flight: they are gone
  (also after a SIGKILL), and ternd goes on.
- a segment corrupted while ternd was down: the bad record (or the rest of
  that segment, when its length field is broken) is skipped with a log line
  naming the file and the offset; everything else is delivered.
Nothing here is time-sensitive: the kill comes once enough OKs arrived,
whenever that is, and every wait is bounded.
"""

import os
import re
import signal
import socket
import struct
import threading
import time
from collections import Counter
from types import SimpleNamespace

import nsqwire as nw
from brokerhelp import http, restart
from tnhelp import wait_for

from test_persist import drain, segment_files

PUBLISHERS = 4
LOAD_TIMEOUT = 15.0  # seconds the publishers get to reach the kill point


class Publisher(threading.Thread):
    """Publishes numbered bodies on one connection until stopped or the
    connection dies. `sent` holds every body written to the socket, `acked`
    those the broker answered OK; an unexpected frame ends the run with
    `error` set (a dead connection is the expected end)."""

    def __init__(self, port, topic, tag, batch):
        super().__init__(daemon=True)
        self.port, self.topic, self.tag, self.batch = port, topic, tag, batch
        self.sent, self.acked = [], []
        self.error = None
        self.halt = threading.Event()

    def run(self):
        try:
            c = nw.Conn(self.port, timeout=10.0)
        except OSError as e:
            self.error = "connect: %s" % e
            return
        i = 0
        try:
            while not self.halt.is_set():
                bodies = [b"%s-%07d" % (self.tag, i + k) for k in range(self.batch)]
                i += self.batch
                self.sent.extend(bodies)
                if self.batch == 1:
                    c.pub(self.topic, bodies[0])
                else:
                    c.mpub(self.topic, bodies)
                ftype, data = c.read_frame_skip_hb()
                if (ftype, data) != (nw.FRAME_RESPONSE, b"OK"):
                    self.error = "unexpected frame %r" % ((ftype, data),)
                    return
                self.acked.extend(bodies)
        except (nw.Closed, OSError):
            pass  # the server went away: the expected end of a run
        finally:
            c.close()


def start_load(port, topic, batches=(1, 1, 10, 25)):
    pubs = [Publisher(port, topic, b"p%d" % i, batches[i % len(batches)])
            for i in range(PUBLISHERS)]
    for p in pubs:
        p.start()
    return pubs


def acked_total(pubs):
    return sum(len(p.acked) for p in pubs)


def wait_acked(pubs, n):
    deadline = time.monotonic() + LOAD_TIMEOUT
    while acked_total(pubs) < n:
        assert time.monotonic() < deadline, "only %d acknowledged in %.0fs" % (
            acked_total(pubs), LOAD_TIMEOUT)
        assert not any(p.error for p in pubs), [p.error for p in pubs if p.error]
        time.sleep(0.01)


def finish_load(pubs):
    for p in pubs:
        p.halt.set()
    for p in pubs:
        p.join(10)
        assert not p.is_alive(), "a publisher did not end"
    errors = [p.error for p in pubs if p.error]
    assert not errors, errors
    acked = set()
    sent = set()
    for p in pubs:
        acked.update(p.acked)
        sent.update(p.sent)
    return acked, sent


def sigkill(b):
    os.kill(b.pid, signal.SIGKILL)
    assert b.wait_exit() == -signal.SIGKILL


def consume_all(b, topic, channel, quiet=2.0, first=20.0):
    """Everything the channel delivers (FINed) until quiet seconds pass
    after the first message (which may take up to `first` seconds: with
    sync_every 1 every disk take is an fsync, a first SUB copies the
    topic's backlog record by record, and a RDY of 1000 takes up to 1000
    records before the first of them is written out)."""
    c = nw.Conn(b.tcp_port, timeout=first)
    try:
        c.sub(topic, channel)
        c.expect_ok()
        c.rdy(1000)
        try:
            m = c.read_message(timeout=first)
        except socket.timeout:
            return []
        c.fin(m.id)
        return [m.body] + [x.body for x in drain(c, quiet=quiet)]
    finally:
        c.close()


def audit(got, acked, sent):
    """(lost, duplicates) after checking nothing was invented."""
    counts = Counter(got)
    invented = set(counts) - sent
    assert not invented, "delivered but never sent: %r" % sorted(invented)[:5]
    lost = acked - set(counts)
    dups = sum(n - 1 for n in counts.values())
    return lost, dups


def report(what, acked, sent, got, lost, dups):
    # shows up with pytest -s / on failure: the measured figures
    print("%s: sent %d, acknowledged %d, delivered %d (%d distinct), lost %d, duplicates %d"
          % (what, len(sent), len(acked), len(got), len(set(got)), len(lost), dups))


# ---- SIGKILL -----------------------------------------------------------------------


def sigkill_round(b, topic, n, what, channel_first=True, batches=(1, 1, 10, 25)):
    """Publish under load until n are acknowledged, SIGKILL, restart and
    consume channel "ch" (created before the load when channel_first).
    Returns (got, lost, duplicates)."""
    if channel_first:
        nw.consumer(b.tcp_port, topic, "ch").close()
    pubs = start_load(b.tcp_port, topic, batches)
    wait_acked(pubs, n)
    sigkill(b)
    acked, sent = finish_load(pubs)

    restart(b)
    got = consume_all(b, topic, "ch")
    lost, dups = audit(got, acked, sent)
    report(what, acked, sent, got, lost, dups)
    return got, lost, dups


def test_sigkill_sync_every_1_keeps_every_acknowledged(broker):
    """mem_queue_size 0 + sync_every 1: an OK means the record is fsynced;
    a SIGKILL in the middle of four publishers loses none of them (a
    message sent but not acknowledged may or may not be there)."""
    b = broker(http=False, mem_queue_size=0, sync_every=1)
    _, lost, _ = sigkill_round(b, "crash", 400, "sync_every 1, SIGKILL")
    assert not lost, "%d acknowledged messages lost, e.g. %r" % (len(lost), sorted(lost)[:5])


def test_sigkill_topic_without_channels(broker):
    """A topic nobody subscribed to yet keeps its messages in its own disk
    queue: after a SIGKILL the first subscriber gets every acknowledged
    one."""
    b = broker(http=False, mem_queue_size=0, sync_every=1)
    _, lost, _ = sigkill_round(b, "lonely", 200, "topic only, SIGKILL", channel_first=False)
    assert not lost, "%d acknowledged messages lost" % len(lost)


def test_sigkill_default_sync_loss_is_bounded(broker):
    """The default sync (sync_every 2500, sync_timeout 2s) with everything
    going to disk: the documented bound on loss is sync_every records per
    disk queue, and that is for a machine crash. A killed process loses
    none: each record was written before its OK, the kernel keeps it, and
    recovery keeps valid records found past the last synced metadata."""
    b = broker(http=False, mem_queue_size=0)
    # more than one sync_every round
    _, lost, _ = sigkill_round(b, "lazy", 3000, "default sync, SIGKILL", batches=(1, 50, 50, 100))
    assert len(lost) <= 2500, "lost %d, more than sync_every" % len(lost)
    assert not lost, "a process crash should lose nothing written; lost %d" % len(lost)


def test_sigkill_memory_queue_loss_is_bounded(broker):
    """Messages held in memory are not on disk: a SIGKILL loses at most
    mem_queue_size of them per channel (plus, for a machine crash, the
    unsynced disk records). Everything past the memory queue survives."""
    mq = 50
    b = broker(http=False, mem_queue_size=mq)
    _, lost, dups = sigkill_round(b, "mixed", 600, "mem_queue_size %d, SIGKILL" % mq)
    assert len(lost) <= mq, "lost %d, more than mem_queue_size %d" % (len(lost), mq)
    assert not dups


# ---- SIGKILL with messages in flight ----------------------------------------------


def read_until_ok(c, what):
    """Messages that arrive on c until the next OK response: a PUB sent
    after FIN/REQ (which have no reply) comes back OK only once the broker
    has handled them, in order."""
    msgs = []
    while True:
        ftype, data = c.read_frame_skip_hb(timeout=10.0)
        if ftype == nw.FRAME_MESSAGE:
            msgs.append(nw.Message(data))
            continue
        assert (ftype, data) == (nw.FRAME_RESPONSE, b"OK"), "%s: %r" % (what, (ftype, data))
        return msgs


def publish_acked(b, topic, bodies):
    """Publish (batches of MPUB), every batch acknowledged; returns the bodies."""
    with nw.Conn(b.tcp_port) as p:
        for i in range(0, len(bodies), 10):
            p.mpub(topic, bodies[i:i + 10])
            p.expect_ok()
    return set(bodies)


def publish_and_hold(b, topic, n):
    """Publish n bodies <topic>-NNNN (acknowledged) and have one consumer of
    channel "ch" receive all of them without finishing any. Returns
    (connection, acked, the messages held)."""
    c = nw.consumer(b.tcp_port, topic, "ch")
    acked = publish_acked(b, topic, [b"%s-%04d" % (topic.encode(), i) for i in range(n)])
    c.rdy(n)
    held = [c.read_message(timeout=10.0) for _ in range(n)]
    assert {m.body for m in held} == acked
    return c, acked, held


def test_sigkill_with_messages_in_flight_loses_none(broker):
    """mem_queue_size 0 + sync_every 1: messages a consumer received but
    had not FINed when ternd was SIGKILLed are delivered again after the
    restart (the disk queue's committed position stays at the oldest
    unfinished record)."""
    n = 50
    b = broker(http=False, mem_queue_size=0, sync_every=1)
    c, acked, _ = publish_and_hold(b, "ifl", n)
    sigkill(b)
    c.close()

    restart(b)
    got = consume_all(b, "ifl", "ch")
    lost, dups = audit(got, acked, acked)
    report("in flight, SIGKILL", acked, acked, got, lost, dups)
    assert not lost, "%d acknowledged messages lost, e.g. %r" % (len(lost), sorted(lost)[:5])


def test_sigkill_after_some_fin_and_req(broker):
    """As above, but before the kill the consumer FINs a third of what it
    holds (scattered), REQs a sixth at once (they come back and stay in
    flight) and a sixth with a long delay (deferred in memory), and keeps
    the rest unfinished. After the restart every message not FINed comes
    back; FINed ones may come again (at least once), nothing is invented."""
    b = broker(http=False, mem_queue_size=0, sync_every=1)
    h = hold_with_fin_and_req(b, "mix", 60)
    c, acked, fin, req_now, req_later = h.c, h.acked, h.fin, h.now, h.later
    # the REQ 0 ones went back to disk and came straight back (RDY allows)
    assert {m.body for m in h.again} <= req_now
    sigkill(b)
    c.close()

    restart(b)
    got = consume_all(b, "mix", "ch")
    lost, dups = audit(got, acked, acked)
    report("FIN/REQ/in flight, SIGKILL", acked, acked, got, lost, dups)
    unfinished = acked - fin
    missing = unfinished - set(got)
    assert not missing, "%d unfinished messages lost (%d REQ 0, %d REQ later), e.g. %r" % (
        len(missing), len(missing & req_now), len(missing & req_later), sorted(missing)[:5])


def test_sigkill_deferred_publish_kept(broker):
    """DPUB with mem_queue_size 0: the deferred message is stored on disk
    with its due time before the OK (not only in memory), so a SIGKILL
    before it is due loses nothing; it arrives after the restart."""
    b = broker(http=False, mem_queue_size=0, sync_every=1)
    c = nw.consumer(b.tcp_port, "later", "ch", rdy=10)
    with nw.Conn(b.tcp_port) as p:
        for i in range(5):
            p.dpub("later", 300, b"dpub-%d" % i)
            p.expect_ok()
    sigkill(b)
    c.close()

    restart(b)
    got = consume_all(b, "later", "ch")
    assert sorted(set(got)) == [b"dpub-%d" % i for i in range(5)]


def hold_with_fin_and_req(b, topic, n):
    """Publish n (acknowledged), have one consumer receive all of them from
    the channel's disk queue, FIN a third, REQ a sixth with a long delay
    and a sixth at once (they come straight back), and wait until the
    broker handled all that. Returns a namespace:
    c (the connection), acked, fin, now (REQ 0), later (REQ with a delay),
    untouched (still in flight from the first delivery), again (what came
    back before the sync)."""
    c, acked, held = publish_and_hold(b, topic, n)
    fin, now, later, untouched = set(), set(), set(), []
    for i, m in enumerate(held):
        if i % 3 == 1:
            c.fin(m.id)
            fin.add(m.body)
        elif i % 6 == 2:
            c.req(m.id, 0)
            now.add(m.body)
        elif i % 6 == 5:
            c.req(m.id, 600000)
            later.add(m.body)
        else:
            untouched.append(m)
    c.pub(topic + "-sync", b"x")  # answered once the FINs and REQs are handled
    again = read_until_ok(c, "FIN/REQ")
    return SimpleNamespace(c=c, acked=acked, fin=fin, now=now, later=later,
                           untouched=untouched, again=again)


def test_sigterm_with_disk_messages_in_flight_exactly_once(broker):
    """The clean stop with the same state: what was in flight or deferred
    is written back and its old record released, so after the restart each
    unfinished message comes exactly once and no FINed one comes back."""
    b = broker(mem_queue_size=0, sync_every=1)
    h = hold_with_fin_and_req(b, "term0", 60)
    c, acked, fin, later = h.c, h.acked, h.fin, h.later
    b.stop()  # SIGTERM, exit 0
    c.close()

    restart(b)
    got = consume_all(b, "term0", "ch")
    report("FIN/REQ/in flight, SIGTERM", acked, acked, got, acked - fin - later - set(got),
           len(got) - len(set(got)))
    assert sorted(got) == sorted(acked - fin - later)
    # the REQs with a delay were written back deferred: they wait their turn
    st = http(b, "GET", "/stats?format=json&topic=term0&channel=ch").json()
    ch = [x for t in st["topics"] for x in t["channels"] if x["channel_name"] == "ch"]
    assert ch and ch[0]["deferred_count"] == len(later), st


def test_empty_and_delete_with_disk_messages_in_flight(broker):
    """Emptying a channel drops what it holds in flight (a later FIN of one
    is refused) and nothing of it comes back after a SIGKILL; deleting a
    channel with messages in flight closes its consumer and removes its
    files. ternd keeps running through both (and ASan sees no misuse of
    the records the entries held)."""
    b = broker(mem_queue_size=0, sync_every=1)
    h = hold_with_fin_and_req(b, "emp", 30)
    c, untouched = h.c, h.untouched
    assert http(b, "POST", "/channel/empty?topic=emp&channel=ch").status == 200
    c.fin(untouched[0].id)
    assert c.expect_error(b"E_FIN_FAILED").endswith(b"ID not in flight")
    c.pub("emp-sync", b"x")
    read_until_ok(c, "after empty")
    c.close()
    after = publish_acked(b, "emp", [b"emp-after-%d" % i for i in range(5)])
    sigkill(b)
    restart(b)
    assert sorted(consume_all(b, "emp", "ch")) == sorted(after)

    d = hold_with_fin_and_req(b, "del", 30).c
    assert http(b, "POST", "/channel/delete?topic=del&channel=ch").status == 200
    d.expect_closed(timeout=5.0)
    assert not [n for n in segment_files(b) if n.startswith("del:ch.")]
    # a channel of that name again: only what the channel-less topic kept
    publish_acked(b, "del", [b"del-after"])
    assert consume_all(b, "del", "ch") == [b"del-after"]
    publish_acked(b, "del", [b"del-new"])
    assert b.alive()
    sigkill(b)
    restart(b)
    assert consume_all(b, "del", "ch") == [b"del-new"]


def test_sigkill_while_a_new_channel_takes_the_topic_backlog(broker):
    """A topic nobody subscribed to holds a backlog on disk; the first SUB
    creates the channel, which takes the backlog over record by record
    (each channel copy is synced before the topic's record is released).
    ternd is killed as soon as the channel's disk queue appears, during or
    after that; after the restart (the channel's queue is reopened by the
    next SUB of that name if meta.json did not list it yet) nothing
    acknowledged is missing."""
    n = 1000
    b = broker(http=False, mem_queue_size=0, sync_every=1)
    acked = publish_acked(b, "backlog", [b"bl-%05d" % i for i in range(n)])
    c = nw.Conn(b.tcp_port)
    c.sub("backlog", "ch")
    wait_for(lambda: any(f.startswith("backlog:ch.") for f in segment_files(b)), 10,
             what="the channel's disk queue")
    sigkill(b)
    c.close()

    restart(b)
    got = consume_all(b, "backlog", "ch")
    lost, dups = audit(got, acked, acked)
    report("new channel taking a backlog, SIGKILL", acked, acked, got, lost, dups)
    assert not lost, "%d acknowledged messages lost" % len(lost)


# ---- SIGTERM -------------------------------------------------------------------------


class Consumer(threading.Thread):
    """Consumes and FINs until the connection ends; `got` in arrival order."""

    def __init__(self, port, topic, channel, rdy):
        super().__init__(daemon=True)
        self.c = nw.consumer(port, topic, channel, rdy=rdy)
        self.got = []

    def run(self):
        try:
            while True:
                m = self.c.read_message(timeout=10.0)
                self.got.append(m.body)
                self.c.fin(m.id)
        except (nw.Closed, OSError, AssertionError):
            pass
        finally:
            self.c.close()


def test_sigterm_under_load_loses_nothing(broker):
    """Publishers and a consumer running, memory queues in use (the
    default mem_queue_size): SIGTERM writes what is queued and in flight to
    disk; after the restart the acknowledged messages are all there, none
    invented, and only messages in flight at the stop come twice."""
    rdy = 20
    b = broker(http=False)
    cons = Consumer(b.tcp_port, "term", "ch", rdy)
    cons.start()
    pubs = start_load(b.tcp_port, "term")
    wait_acked(pubs, 1500)
    b.stop()  # SIGTERM, exit 0
    acked, sent = finish_load(pubs)
    cons.join(15)
    assert not cons.is_alive()
    assert "messages written to" in b.log()

    restart(b)
    after = consume_all(b, "term", "ch")
    got = cons.got + after
    lost, dups = audit(got, acked, sent)
    report("SIGTERM", acked, sent, got, lost, dups)
    assert not lost, "%d acknowledged messages lost" % len(lost)
    assert not [x for x, n in Counter(after).items() if n > 1], "duplicates after the restart"
    # a duplicate is a message delivered (maybe FINed too late) before the
    # stop and written back as in flight: at most RDY of them
    assert dups <= rdy


# ---- corruption --------------------------------------------------------------------


def segment(b, prefix):
    names = [n for n in segment_files(b) if n.startswith(prefix)]
    assert names, "no segment for %s in %r" % (prefix, segment_files(b))
    return b.tmp / "data" / "broker" / names[0]


def record_offsets(path):
    """Start offsets of the records of a segment ([4B len][4B crc][payload])."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos + 8 <= len(data):
        out.append(pos)
        pos += 8 + struct.unpack(">I", data[pos:pos + 4])[0]
    assert pos == len(data), "segment does not parse"
    return out


def flip(path, offset, n=4):
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(n)
        f.seek(offset)
        f.write(bytes(x ^ 0x5A for x in old))


def fill_and_stop(b, topic, bodies):
    nw.consumer(b.tcp_port, topic, "ch").close()
    with nw.Conn(b.tcp_port) as p:
        for i in range(0, len(bodies), 20):
            p.mpub(topic, bodies[i:i + 20])
            p.expect_ok()
    b.stop()


def test_corrupt_record_in_the_middle_is_skipped(broker):
    """Bytes flipped inside one record's payload while ternd is down: the
    restart logs the file and the offset, that record is skipped, every
    other one is delivered."""
    b = broker(http=False, mem_queue_size=0, sync_every=1)
    bodies = [b"rec-%04d-" % i + b"x" * 40 for i in range(100)]
    fill_and_stop(b, "bad", bodies)
    seg = segment(b, "bad:ch.")
    offs = record_offsets(seg)
    assert len(offs) == 100
    victim = 37
    flip(seg, offs[victim] + 8 + 20)  # inside the payload

    restart(b)
    mark = b.start_mark
    got = consume_all(b, "bad", "ch")
    assert got == bodies[:victim] + bodies[victim + 1:]
    text = b.log()[mark:]
    assert re.search(r"\[warn\] broker: .*%s.* offset %d\b" % (re.escape(seg.name), offs[victim]),
                     text), text
    assert b.alive()


def test_corrupt_length_skips_rest_of_that_segment_only(broker):
    """A broken length field cannot be stepped over: the rest of that
    segment is skipped (logged with file and offset) and the next segments
    are delivered in full."""
    b = broker(http=False, mem_queue_size=0, sync_every=1, max_bytes_per_file="2KiB")
    bodies = [b"seg-%04d-" % i + b"y" * 100 for i in range(60)]
    fill_and_stop(b, "len", bodies)
    segs = sorted(n for n in segment_files(b) if n.startswith("len:ch."))
    assert len(segs) >= 3, segs
    first = b.tmp / "data" / "broker" / segs[0]
    offs = record_offsets(first)
    victim = len(offs) // 2
    with open(first, "r+b") as f:  # a length no record may have
        f.seek(offs[victim])
        f.write(b"\xff\xff\xff\xf0")

    restart(b)
    mark = b.start_mark
    got = consume_all(b, "len", "ch")
    # everything before the damage and everything in the later segments
    assert got == bodies[:victim] + bodies[len(offs):]
    text = b.log()[mark:]
    assert re.search(r"\[warn\] broker: .*%s.* offset %d\b" % (re.escape(first.name), offs[victim]),
                     text), text
    assert b.alive()
