"""broker.zmtp: real libzmq sockets (Debian python3-zmq) joining the broker
over ZMTP 3.x -- PUB/PUSH into topics, NSQ into SUB with prefix filters,
PULL load balancing over a channel, Majordomo workers and clients, a slow
SUB over its hwm, reconnects across a restart, heartbeats -- and a raw
ZMTP client for what libzmq 4.3 does not show (the 3.0 forms, PING
contexts, refusals)."""

import socket
import struct
import time

import pytest

import nsqwire as nw
import tnhelp
from brokerhelp import restart, tcp_open

zmq = pytest.importorskip("zmq")
import zmq.utils.monitor  # noqa: E402

WAIT = 10.0  # seconds any expected event may take


# ---- helpers --------------------------------------------------------------------


def zbroker(broker, *listeners, **section):
    """A broker with the given broker.zmtp listeners, each on a free port;
    returns (t, [port, ...]) once every port accepts."""
    ls, ports = [], []
    for spec in listeners:
        port = tnhelp.free_port()
        d = {"listen": "127.0.0.1:%d" % port}
        d.update(spec)
        ls.append(d)
        ports.append(port)
    t = broker(zmtp=ls, **section)
    for p in ports:
        tnhelp.wait_for(lambda: tcp_open(p), WAIT, what="zmtp port %d" % p)
    return t, ports


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def sock(ctx, kind, port, **opts):
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, int(WAIT * 1000))
    for k, v in opts.items():
        s.setsockopt(getattr(zmq, k), v)
    s.connect("tcp://127.0.0.1:%d" % port)
    return s


def recv_until(s, want, timeout=WAIT):
    """Receive single-frame messages until `want(msg)` holds; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.poll(100):
            m = s.recv()
            if want(m):
                return m
    raise AssertionError("no matching message within %ss" % timeout)


def drain(s, quiet=1.0):
    """Every message that arrives until `quiet` seconds pass without one."""
    out = []
    while s.poll(int(quiet * 1000)):
        out.append(s.recv())
    return out


def metric(t, name, **labels):
    key = name + ("{" + ",".join('%s="%s"' % kv for kv in labels.items()) + "}" if labels else "")
    return t.metrics().get(key, 0)


def warm_sub(t, sub, topic, prefix=b""):
    """Publish through NSQ until the SUB sees one: its subscription has
    reached the broker (ZeroMQ's slow joiner)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        nw.publish(t.tcp_port, topic, [prefix + b"warm"])
        if sub.poll(100):
            assert sub.recv().startswith(prefix)
            drain(sub, quiet=0.2)
            return
    raise AssertionError("the SUB never received")


def warm_pub(pub, consumer, frames):
    """Send from the PUB until the NSQ consumer gets one (our SUBSCRIBE
    reached the PUB); FIN everything read."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        pub.send_multipart(frames)
        try:
            m = consumer.read_message(timeout=0.1)
        except socket.timeout:
            continue
        consumer.fin(m.id)
        while True:
            try:
                consumer.fin(consumer.read_message(timeout=0.3).id)
            except socket.timeout:
                return
    raise AssertionError("nothing published from the PUB")


def read_bodies(consumer, n):
    out = []
    for _ in range(n):
        m = consumer.read_message(timeout=WAIT)
        consumer.fin(m.id)
        out.append(m.body)
    return out


# ---- a raw ZMTP peer -------------------------------------------------------------


class Raw:
    """A hand-written ZMTP 3.x peer with the NULL mechanism."""

    def __init__(self, port, minor=1, socket_type=b"SUB", ready=True, mechanism=b"NULL"):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.buf = b""
        self.s.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, minor])
                       + mechanism.ljust(20, b"\0") + b"\0" + b"\0" * 31)
        self.greeting = self.read(64)
        if ready:
            self.command(b"READY", self.prop(b"Socket-Type", socket_type))
            name, data = self.next_command()
            assert name == b"READY"
            self.peer_props = self.props(data)

    def read(self, n):
        while len(self.buf) < n:
            d = self.s.recv(65536)
            if not d:
                raise EOFError
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self):
        flags, = self.read(1)
        size = struct.unpack(">Q", self.read(8))[0] if flags & 2 else self.read(1)[0]
        return flags, self.read(size)

    def next_command(self):
        flags, body = self.frame()
        assert flags & 4, "expected a command, got flags %d" % flags
        return body[1:1 + body[0]], body[1 + body[0]:]

    def message(self):
        parts = []
        while True:
            flags, body = self.frame()
            assert not flags & 4
            parts.append(body)
            if not flags & 1:
                return parts

    @staticmethod
    def prop(name, value):
        return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value

    @staticmethod
    def props(data):
        out = {}
        while data:
            n = data[0]
            name = data[1:1 + n]
            vlen, = struct.unpack(">I", data[1 + n:5 + n])
            out[name.lower()] = data[5 + n:5 + n + vlen]
            data = data[5 + n + vlen:]
        return out

    def send_frame(self, flags, body):
        if len(body) > 255:
            self.s.sendall(bytes([flags | 2]) + struct.pack(">Q", len(body)) + body)
        else:
            self.s.sendall(bytes([flags, len(body)]) + body)

    def command(self, name, data=b""):
        self.send_frame(4, bytes([len(name)]) + name + data)

    def send(self, *parts):
        for i, p in enumerate(parts):
            self.send_frame(1 if i + 1 < len(parts) else 0, p)

    def close(self):
        self.s.close()


# ---- PUB / PUSH -> topic -> NSQ ------------------------------------------------------


def test_pub_into_topic_and_first_frame_topic(broker, ctx):
    t, (fixed, named) = zbroker(broker, {"type": "pub", "topic": "zpub"}, {"type": "pub"})
    c = nw.consumer(t.tcp_port, "zpub", "ch", rdy=100)
    pub = sock(ctx, zmq.PUB, fixed)
    warm_pub(pub, c, [b"warm"])
    for i in range(20):
        pub.send(b"m%02d" % i)
    assert read_bodies(c, 20) == [b"m%02d" % i for i in range(20)]
    # a multipart message is one NSQ message, its frames joined
    pub.send_multipart([b"ab", b"cd"])
    assert read_bodies(c, 1) == [b"abcd"]

    # no fixed topic: frame 1 names it (ZeroMQ's envelope idiom)
    c2 = nw.consumer(t.tcp_port, "named", "ch", rdy=100)
    pub2 = sock(ctx, zmq.PUB, named)
    warm_pub(pub2, c2, [b"named", b"warm"])
    pub2.send_multipart([b"named", b"x", b"y"])
    pub2.send_multipart([b"bad topic!", b"dropped"])
    pub2.send_multipart([b"lonely"])  # no body frame: dropped
    pub2.send_multipart([b"named", b"last"])
    assert read_bodies(c2, 2) == [b"xy", b"last"]
    assert metric(t, "ternd_broker_zmtp_dropped_total", listen="127.0.0.1:%d" % named,
                  type="pub") == 2


def test_push_into_topic(broker, ctx):
    t, (port,) = zbroker(broker, {"type": "push", "topic": "zpush"})
    c = nw.consumer(t.tcp_port, "zpush", "ch", rdy=500)
    push = sock(ctx, zmq.PUSH, port)
    for i in range(300):  # PUSH queues until connected: nothing is lost
        push.send(b"p%03d" % i)
    assert sorted(read_bodies(c, 300)) == [b"p%03d" % i for i in range(300)]


# ---- NSQ -> topic -> SUB ---------------------------------------------------------------


def test_nsq_to_sub_prefix_subscribe_cancel(broker, ctx):
    t, (port,) = zbroker(broker, {"type": "sub", "topic": "zsub"})
    sub = sock(ctx, zmq.SUB, port)
    sub.setsockopt(zmq.SUBSCRIBE, b"a.")
    warm_sub(t, sub, "zsub", b"a.")
    nw.publish(t.tcp_port, "zsub", [b"a.1", b"b.1", b"a.2", b"c", b"a"])
    assert drain(sub) == [b"a.1", b"a.2"]

    # libzmq 4.3.4 sends SUBSCRIBE/CANCEL commands to a 3.1 peer; counted:
    # a second "a." needs two cancels
    sub.setsockopt(zmq.SUBSCRIBE, b"b.")
    sub.setsockopt(zmq.SUBSCRIBE, b"a.")
    sub.setsockopt(zmq.UNSUBSCRIBE, b"a.")
    warm_sub(t, sub, "zsub", b"b.")
    nw.publish(t.tcp_port, "zsub", [b"a.3", b"b.2", b"c.1"])
    assert drain(sub) == [b"a.3", b"b.2"]
    sub.setsockopt(zmq.UNSUBSCRIBE, b"a.")
    sub.setsockopt(zmq.SUBSCRIBE, b"c.")
    warm_sub(t, sub, "zsub", b"c.")
    nw.publish(t.tcp_port, "zsub", [b"a.4", b"b.3", b"c.2"])
    assert drain(sub) == [b"b.3", b"c.2"]


def test_sub_sees_messages_from_a_zmq_pub_and_nsq_sees_them_too(broker, ctx):
    t, (pport, sport) = zbroker(broker, {"type": "pub", "topic": "both"},
                                {"type": "sub", "topic": "both"})
    c = nw.consumer(t.tcp_port, "both", "nsq", rdy=100)
    sub = sock(ctx, zmq.SUB, sport)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    warm_sub(t, sub, "both")
    while True:  # the warm-up messages reached the NSQ channel too
        try:
            c.fin(c.read_message(timeout=0.3).id)
        except socket.timeout:
            break
    pub = sock(ctx, zmq.PUB, pport)
    deadline = time.monotonic() + WAIT
    while not sub.poll(50):
        assert time.monotonic() < deadline
        pub.send(b"hello")
    assert sub.recv() == b"hello"
    assert c.read_message(timeout=WAIT).body == b"hello"


def test_raw_30_subscription_messages(broker, ctx):
    t, (port,) = zbroker(broker, {"type": "sub", "topic": "raw30"})
    r = Raw(port, minor=0)
    assert r.greeting[10:12] == b"\x03\x01"
    assert r.peer_props[b"socket-type"] == b"PUB"
    r.send(b"\x01x")  # 3.0: subscribe "x" as a message
    deadline = time.monotonic() + WAIT
    while True:  # until the subscription is in
        nw.publish(t.tcp_port, "raw30", [b"x-warm"])
        r.s.settimeout(0.1)
        try:
            assert r.message() == [b"x-warm"]
            break
        except socket.timeout:
            assert time.monotonic() < deadline
    r.s.settimeout(WAIT)
    nw.publish(t.tcp_port, "raw30", [b"y1", b"x1"])
    assert r.message() == [b"x1"]
    r.send(b"\x00x")  # cancel, then a subscription to wait for
    r.send(b"\x01y")
    raw_sync(t, r, "raw30", b"y")
    nw.publish(t.tcp_port, "raw30", [b"x2", b"y2"])
    assert r.message() == [b"y2"]
    # 3.1 commands work on the same connection too
    r.command(b"CANCEL", b"y")
    r.command(b"SUBSCRIBE", b"z")
    raw_sync(t, r, "raw30", b"z")
    nw.publish(t.tcp_port, "raw30", [b"y3", b"z3"])
    assert r.message() == [b"z3"]
    r.close()


def raw_sync(t, r, topic, prefix):
    """Publish prefix-sync until the raw SUB gets it: what it sent before
    has been processed."""
    deadline = time.monotonic() + WAIT
    r.s.settimeout(0.1)
    while True:
        nw.publish(t.tcp_port, topic, [prefix + b"-sync"])
        try:
            assert r.message() == [prefix + b"-sync"]
            break
        except socket.timeout:
            assert time.monotonic() < deadline
    r.s.settimeout(0.3)
    try:
        while True:
            assert r.message() == [prefix + b"-sync"]
    except socket.timeout:
        pass
    r.s.settimeout(WAIT)


def test_raw_pub_gets_subscribe_in_its_version(broker):
    t, (port,) = zbroker(broker, {"type": "pub", "topic": "rawpub"})
    c = nw.consumer(t.tcp_port, "rawpub", "ch", rdy=10)
    r31 = Raw(port, minor=1, socket_type=b"PUB")
    assert r31.next_command() == (b"SUBSCRIBE", b"")
    r30 = Raw(port, minor=0, socket_type=b"XPUB")
    assert r30.message() == [b"\x01"]
    r30.send(b"from30")
    r31.send(b"from31")
    assert sorted(read_bodies(c, 2)) == [b"from30", b"from31"]
    r30.close()
    r31.close()


def test_raw_heartbeat_and_refusals(broker):
    t, (port,) = zbroker(broker, {"type": "sub", "topic": "hb"})
    r = Raw(port)
    r.command(b"PING", b"\x00\x00" + b"ctx-123")
    assert r.next_command() == (b"PONG", b"ctx-123")
    r.close()
    # a PUSH may not talk to a PUB endpoint: ERROR, then closed
    bad = Raw(port, socket_type=b"PUSH", ready=False)
    bad.command(b"READY", Raw.prop(b"Socket-Type", b"PUSH"))
    name, data = bad.next_command()
    if name == b"READY":
        name, data = bad.next_command()
    assert name == b"ERROR" and b"socket type" in data
    assert tnhelp.closed_by_peer(bad.s)
    # not ZMTP at all: our greeting, then the close
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    got = b""
    while len(got) < 64:
        got += s.recv(64 - len(got))
    assert tnhelp.closed_by_peer(s)
    # a message before READY: our READY, an ERROR, the close
    early = Raw(port, ready=False)
    early.send(b"\x01")
    assert early.next_command()[0] == b"READY"
    assert early.next_command()[0] == b"ERROR"
    assert tnhelp.closed_by_peer(early.s)
    # a mechanism we do not offer: closed after the greetings
    plain = Raw(port, ready=False, mechanism=b"PLAIN")
    assert tnhelp.closed_by_peer(plain.s)
    assert metric(t, "ternd_broker_zmtp_refused_total", listen="127.0.0.1:%d" % port,
                  type="sub") == 4


def test_zmq_heartbeats_answered(broker, ctx):
    t, (port,) = zbroker(broker, {"type": "sub", "topic": "zhb"})
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, int(WAIT * 1000))
    # (ms, stretched under valgrind: the broker's PONG must come within the
    # timeout however slowly it runs)
    for k, v in (("HEARTBEAT_IVL", 50), ("HEARTBEAT_TIMEOUT", 300), ("HEARTBEAT_TTL", 2000)):
        sub.setsockopt(getattr(zmq, k), round(v * tnhelp.TIMEOUT_SCALE))
    # the monitor first, so it sees the connect
    mon = sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    sub.connect("tcp://127.0.0.1:%d" % port)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    warm_sub(t, sub, "zhb")
    # many heartbeat timeouts long: PONGs keep the connection up (libzmq
    # would drop it after HEARTBEAT_TIMEOUT without them)
    time.sleep(tnhelp.scaled(1.5))
    events = []
    while mon.poll(0):
        events.append(zmq.utils.monitor.recv_monitor_message(mon)["event"])
    assert zmq.EVENT_DISCONNECTED not in events
    assert events.count(zmq.EVENT_CONNECTED) == 1
    nw.publish(t.tcp_port, "zhb", [b"still here"])
    assert sub.recv() == b"still here"


# ---- PULL consumers ---------------------------------------------------------------------


def test_pull_load_balanced_over_a_channel(broker, ctx):
    # hwm 5: each PULL holds at most 5 unwritten messages, the rest waits
    # in the channel and follows as the sockets drain
    t, (port,) = zbroker(broker, {"type": "pull", "topic": "work", "channel": "zq", "hwm": 5})
    a = sock(ctx, zmq.PULL, port)
    b = sock(ctx, zmq.PULL, port)
    tnhelp.wait_for(lambda: metric(t, "ternd_broker_zmtp_connections",
                                   listen="127.0.0.1:%d" % port, type="pull") == 2, WAIT)
    n = 200
    with nw.Conn(t.tcp_port) as p:
        p.mpub("work", [b"job%03d" % i for i in range(n)])
        p.expect_ok()
    got_a, got_b = [], []
    deadline = time.monotonic() + WAIT
    while len(got_a) + len(got_b) < n:
        assert time.monotonic() < deadline, "only %d messages" % (len(got_a) + len(got_b))
        for s, got in ((a, got_a), (b, got_b)):
            while s.poll(50):
                got.append(s.recv())
    assert sorted(got_a + got_b) == [b"job%03d" % i for i in range(n)]
    assert got_a and got_b, "both PULL sockets get a share"
    # every message was FINished once written: nothing in flight, nothing left
    tnhelp.wait_for(lambda: metric(t, "ternd_broker_channel_in_flight", topic="work",
                                   channel="zq") == 0, WAIT)
    assert metric(t, "ternd_broker_channel_depth", topic="work", channel="zq") == 0


def test_pull_and_nsq_consumer_share_a_channel(broker, ctx):
    t, (port,) = zbroker(broker, {"type": "pull", "topic": "mixed", "channel": "ch"})
    c = nw.consumer(t.tcp_port, "mixed", "ch", rdy=1000)
    z = sock(ctx, zmq.PULL, port)
    tnhelp.wait_for(lambda: metric(t, "ternd_broker_zmtp_connections",
                                   listen="127.0.0.1:%d" % port, type="pull") == 1, WAIT)
    nw.publish(t.tcp_port, "mixed", [b"m%d" % i for i in range(40)])
    zgot = drain(z)
    ngot = []
    while True:
        try:
            m = c.read_message(timeout=0.5)
        except socket.timeout:
            break
        c.fin(m.id)
        ngot.append(m.body)
    assert sorted(zgot + ngot) == sorted(b"m%d" % i for i in range(40))
    assert zgot and ngot


# ---- Majordomo ----------------------------------------------------------------------------


def worker_recv(w):
    """The next non-heartbeat command to a worker."""
    while True:
        f = w.recv_multipart()
        assert f[:2] == [b"", b"MDPW01"]
        if f[2] != b"\x04":
            return f


def test_mdp_worker_and_clients(broker, ctx):
    # 200 ms, stretched under valgrind (as the worker's pace below): a worker
    # silent for 3 intervals is dropped, however slowly the broker answers
    t, (port,) = zbroker(broker, {"type": "router", "heartbeat": tnhelp.duration(0.2)})
    # a request before any worker: it waits for one
    req = sock(ctx, zmq.REQ, port)
    req.send_multipart([b"MDPC01", b"echo", b"early"])
    w = sock(ctx, zmq.DEALER, port)
    w.send_multipart([b"", b"MDPW01", b"\x01", b"echo"])
    f = worker_recv(w)
    assert f[2] == b"\x02" and f[4] == b"" and f[5:] == [b"early"]
    w.send_multipart([b"", b"MDPW01", b"\x03", f[3], b"", b"EARLY"])
    assert req.recv_multipart() == [b"MDPC01", b"echo", b"EARLY"]

    # a DEALER client (sends the empty frame itself) with an identity (its
    # routing id then), multi-frame body
    dealer = sock(ctx, zmq.DEALER, port, ROUTING_ID=b"client-1")
    dealer.send_multipart([b"", b"MDPC01", b"echo", b"a", b"b"])
    f = worker_recv(w)
    assert f[3] == b"client-1"
    assert f[5:] == [b"a", b"b"]
    # the worker stays alive across heartbeat intervals: it answers them
    for _ in range(3):
        w.send_multipart([b"", b"MDPW01", b"\x04"])
        time.sleep(tnhelp.scaled(0.2))
    w.send_multipart([b"", b"MDPW01", b"\x03", f[3], b"", b"A", b"B"])
    assert dealer.recv_multipart() == [b"", b"MDPC01", b"echo", b"A", b"B"]

    # two workers: requests go to both
    w2 = sock(ctx, zmq.DEALER, port)
    w2.send_multipart([b"", b"MDPW01", b"\x01", b"echo"])
    tnhelp.wait_for(lambda: metric(t, "ternd_broker_mdp_workers", listen="127.0.0.1:%d" % port,
                                   type="router") == 2, WAIT)
    clients = [sock(ctx, zmq.REQ, port) for _ in range(4)]
    for i, c in enumerate(clients):
        c.send_multipart([b"MDPC01", b"echo", b"r%d" % i])
    served = {w: 0, w2: 0}
    poller = zmq.Poller()
    poller.register(w, zmq.POLLIN)
    poller.register(w2, zmq.POLLIN)
    done = 0
    while done < 4:
        ready = dict(poller.poll(WAIT * 1000))
        assert ready, "a worker gets the next request"
        for s in ready:
            f = s.recv_multipart()
            if f[2] == b"\x04":
                continue
            s.send_multipart([b"", b"MDPW01", b"\x03", f[3], b"", f[5].upper()])
            served[s] += 1
            done += 1
    for i, c in enumerate(clients):
        assert c.recv_multipart() == [b"MDPC01", b"echo", b"R%d" % i]
    assert served[w] and served[w2]


def test_mdp_unexpected_command_gets_disconnect(broker, ctx):
    t, (port,) = zbroker(broker, {"type": "router"})
    w = sock(ctx, zmq.DEALER, port)
    w.send_multipart([b"", b"MDPW01", b"\x03", b"nobody", b"", b"x"])  # REPLY before READY
    assert worker_recv(w) == [b"", b"MDPW01", b"\x05"]


def test_mdp_request_and_worker_expiry(broker, ctx):
    t, (port,) = zbroker(broker, {"type": "router", "heartbeat": "100ms",
                                  "request_timeout": "300ms"})
    lab = {"listen": "127.0.0.1:%d" % port, "type": "router"}
    # a request nobody serves expires; a worker coming later never sees it
    req = sock(ctx, zmq.REQ, port)
    req.send_multipart([b"MDPC01", b"late", b"lost"])
    tnhelp.wait_for(lambda: metric(t, "ternd_broker_mdp_expired_total", **lab) == 1, WAIT)
    assert metric(t, "ternd_broker_mdp_queued", **lab) == 0
    w = sock(ctx, zmq.DEALER, port)
    w.send_multipart([b"", b"MDPW01", b"\x01", b"late"])
    # idle workers get heartbeats; a silent one is dropped after 3 intervals
    # with DISCONNECT
    assert w.recv_multipart() == [b"", b"MDPW01", b"\x04"]
    assert worker_recv(w) == [b"", b"MDPW01", b"\x05"]
    tnhelp.wait_for(lambda: metric(t, "ternd_broker_mdp_workers", **lab) == 0, WAIT)
    assert "worker" in t.log() and "expired" in t.log()


# ---- hwm and reconnects ---------------------------------------------------------------------


def test_slow_sub_drops_at_hwm_others_unaffected(broker, ctx):
    t, (port,) = zbroker(broker, {"type": "sub", "topic": "flood", "hwm": 20})
    slow = sock(ctx, zmq.SUB, port, RCVHWM=1, RCVBUF=4096)
    slow.setsockopt(zmq.SUBSCRIBE, b"")
    fast = sock(ctx, zmq.SUB, port)
    fast.setsockopt(zmq.SUBSCRIBE, b"")
    warm_sub(t, slow, "flood")
    warm_sub(t, fast, "flood")
    body = b"x" * 32768
    total, batch = 600, 10
    got_fast = 0
    with nw.Conn(t.tcp_port) as p:
        for i in range(0, total, batch):
            p.mpub("flood", [b"%04d" % j + body for j in range(i, i + batch)])
            p.expect_ok()
            for _ in range(batch):  # the fast one keeps up: it is never over hwm
                m = fast.recv()
                assert m[:4] == b"%04d" % got_fast
                got_fast += 1
    assert got_fast == total
    lab = {"listen": "127.0.0.1:%d" % port, "type": "sub"}
    dropped = metric(t, "ternd_broker_zmtp_dropped_total", **lab)
    assert dropped > 0
    assert "reached hwm 20" in t.log()
    got_slow = [m for m in drain(slow) if m != b"warm"]
    assert 0 < len(got_slow) < total
    assert len(got_slow) + dropped == total
    # in order, with a gap where it was dropping
    seq = [int(m[:4]) for m in got_slow]
    assert seq == sorted(seq)


def test_reconnect_after_restart(broker, ctx):
    t, (pport, sport, lport) = zbroker(broker, {"type": "pub", "topic": "rc"},
                                       {"type": "sub", "topic": "rc"},
                                       {"type": "pull", "topic": "rc"})
    pull = sock(ctx, zmq.PULL, lport, RECONNECT_IVL=50, RECONNECT_IVL_MAX=200)
    sub = sock(ctx, zmq.SUB, sport, RECONNECT_IVL=50, RECONNECT_IVL_MAX=200)
    sub.setsockopt(zmq.SUBSCRIBE, b"k")
    pub = sock(ctx, zmq.PUB, pport, RECONNECT_IVL=50, RECONNECT_IVL_MAX=200)
    for _ in range(2):
        warm_sub(t, sub, "rc", b"k")
        deadline = time.monotonic() + WAIT
        while not sub.poll(50):  # PUB -> broker -> SUB, both ZeroMQ
            assert time.monotonic() < deadline
            pub.send(b"k-from-pub")
        assert recv_until(sub, lambda m: m == b"k-from-pub")
        drain(sub, quiet=0.3)
        # the PULL (channel "zmq", the default) got all of them too
        assert recv_until(pull, lambda m: m == b"k-from-pub")
        drain(pull, quiet=0.3)
        t.stop()
        restart(t)
        for p in (pport, sport, lport):
            tnhelp.wait_for(lambda: tcp_open(p), WAIT)
    # what is published while no PULL is connected waits in the channel,
    # on disk across a restart
    pull.close()
    tnhelp.wait_for(lambda: metric(t, "ternd_broker_zmtp_connections",
                                   listen="127.0.0.1:%d" % lport, type="pull") == 0, WAIT)
    nw.publish(t.tcp_port, "rc", [b"waiting"])
    t.stop()
    restart(t)
    pull = sock(ctx, zmq.PULL, lport)
    assert recv_until(pull, lambda m: m == b"waiting")


# ---- configuration ---------------------------------------------------------------------------


def test_config_checks(tmp_path):
    mods = tnhelp.BUILD / "lib" / "ternd" / "modules"
    cases = [
        ("{ listen: 127.0.0.1:5555, type: sub }", "a sub listener needs a topic"),
        ("{ listen: 127.0.0.1:5555, type: pull }", "a pull listener needs a topic"),
        ("{ listen: 127.0.0.1:5555, type: pub, channel: c }", "channel is only for type pull"),
        ("{ listen: 127.0.0.1:5555, type: router, topic: t }", "takes no topic"),
        ("{ listen: 127.0.0.1:5555, type: rep }", "zmtp"),
        ("{ type: pub }", "listen is required"),
        ("{ listen: 127.0.0.1:5555, type: sub, topic: 'bad name' }", "not a valid"),
        ("{ listen: 127.0.0.1:5555, type: sub, topic: t, hwm: 0 }", "hwm"),
    ]
    for item, msg in cases:
        conf = tmp_path / "z.yaml"
        conf.write_text("daemon:\n  modules_dir: %s\nbroker:\n  zmtp:\n    - %s\n" % (mods, item))
        r = tnhelp.run(["-t", "-c", conf], cwd=tmp_path)
        assert r.returncode == 1, item
        assert msg in r.stderr and "broker.zmtp" in r.stderr, (item, r.stderr)
    conf.write_text("daemon:\n  modules_dir: %s\nbroker:\n  zmtp:\n"
                    "    - { listen: 127.0.0.1:5555, type: pull, topic: t, channel: c, hwm: 5 }\n"
                    "    - { listen: 127.0.0.1:5556, type: router, heartbeat: 1s,"
                    " request_timeout: 1m }\n" % mods)
    r = tnhelp.run(["-t", "-c", conf], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
