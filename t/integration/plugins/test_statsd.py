"""statsd: a UDP socket in the test receives the metric lines the plugin
pushes every interval, counters as differences, in datagrams no larger
than udp_packet_size."""

import re
import socket
import time

import nsqwire as nw
import tnhelp

LINE = re.compile(r"^([A-Za-z0-9_.-]+):(-?\d+(?:\.\d+)?)\|(c|g)$")


class Receiver:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.datagrams = []

    def drain(self, seconds):
        """Collect datagrams for up to seconds."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.datagrams.append(self.sock.recv(65536))
            except socket.timeout:
                break

    def lines(self):
        return [ln for d in self.datagrams for ln in d.decode().split("\n")]

    def wait(self, pred, timeout=10.0, what="statsd lines"):
        def ok():
            self.drain(0.1)
            return pred(self.lines())
        return tnhelp.wait_for(ok, timeout, interval=0, what=what)


def total(lines, key, kind):
    """Sum of the values sent for key with type kind ('c' or 'g')."""
    out = 0
    for ln in lines:
        m = LINE.match(ln)
        if m and m.group(1) == key and m.group(3) == kind:
            out += float(m.group(2))
    return out


def test_statsd_push(plugged):
    rx = Receiver()
    t = plugged(plugins=("statsd",), broker={},
                sections={"statsd": {"address": "127.0.0.1:%d" % rx.port, "prefix": "t",
                                     "interval": "100ms", "udp_packet_size": 200}})
    assert "statsd: pushing to 127.0.0.1:%d every 100ms, prefix \"t.\"" % rx.port in t.log()
    nw.publish(t.tcp_port, "st", [b"a", b"b", b"c"])
    key = "t.broker_topic_messages_total.topic.st"
    rx.wait(lambda ls: total(ls, key, "c") == 3, what="3 messages counted")
    nw.publish(t.tcp_port, "st", [b"d", b"e"])
    rx.wait(lambda ls: total(ls, key, "c") == 5, what="5 messages counted")
    lines = rx.lines()
    # counters are sent as changes: never more than was published in all
    assert total(lines, key, "c") == 5
    assert [ln for ln in lines if LINE.match(ln) and ln.startswith("t.broker_topics:")][-1] \
        == "t.broker_topics:1|g"
    assert any(ln.startswith("t.uptime_seconds:") and ln.endswith("|g") for ln in lines)
    assert any(ln.startswith("t.info.version.") for ln in lines)
    bad = [ln for ln in lines if not LINE.match(ln)]
    assert not bad, bad
    assert max(len(d) for d in rx.datagrams) <= 200
    assert t.metrics()["ternd_statsd_packets_total"] >= len(rx.datagrams) > 0


def test_statsd_prefix_host_and_reload(plugged):
    rx = Receiver()
    t = plugged(plugins=("statsd",),
                sections={"statsd": {"address": "127.0.0.1:%d" % rx.port, "prefix": "a.%s",
                                     "interval": "100ms"}})
    host = socket.gethostname().replace(".", "_")
    rx.wait(lambda ls: any(ln.startswith("a.%s.uptime_seconds:" % host) for ln in ls),
            what="a line with the host in its prefix")
    t.sections["statsd"]["prefix"] = "b."
    log = t.reload()
    assert 'prefix "b."' in log, log
    rx.wait(lambda ls: any(ln.startswith("b.uptime_seconds:") for ln in ls),
            what="the new prefix")


def test_statsd_idle_without_address(plugged):
    rx = Receiver()
    t = plugged(plugins=("statsd",), sections={"statsd": {"interval": "50ms"}})
    rx.drain(0.3)
    assert rx.datagrams == []
    assert "pushing to" not in t.log()
