"""Registration with nsqlookupd-compatible directories (nsqd's side of
lookupd's TCP protocol V1), against a directory played by the test: magic,
IDENTIFY with our ports, REGISTER of what exists, REGISTER / UNREGISTER on
changes, PING, and reconnecting with the whole registration again."""

import json
import socket
import struct
import time

import nsqwire as nw
import tnhelp
from brokerhelp import http


class Directory:
    """One fake lookupd: accepts the broker's connection and reads its
    commands, answering each as nsqlookupd does."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]
        self.conn = None
        self.buf = b""

    # every wait below is stretched by TERND_TIMEOUT_SCALE (a broker under
    # valgrind), and so is lookupd_interval in the tests: the quiet window
    # stays shorter than the interval between PINGs
    def accept(self, timeout=10):
        self.srv.settimeout(tnhelp.scaled(timeout))
        self.conn, _ = self.srv.accept()
        self.buf = b""
        return self

    def _need(self, n, deadline):
        while len(self.buf) < n:
            self.conn.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.conn.recv(65536)
            if not data:
                raise EOFError("broker closed the connection")
            self.buf += data

    def take(self, n, timeout=5):
        self._need(n, time.monotonic() + tnhelp.scaled(timeout))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def line(self, timeout=5):
        deadline = time.monotonic() + tnhelp.scaled(timeout)
        while b"\n" not in self.buf:
            self._need(len(self.buf) + 1, deadline)
        out, _, self.buf = self.buf.partition(b"\n")
        return out.decode()

    def reply(self, data):
        self.conn.sendall(struct.pack(">I", len(data)) + data)

    def handshake(self):
        assert self.take(4) == b"  V1"
        assert self.line() == "IDENTIFY"
        size = struct.unpack(">I", self.take(4))[0]
        ident = json.loads(self.take(size))
        self.reply(json.dumps({"tcp_port": 4160, "http_port": 4161, "version": "1.2.1",
                               "broadcast_address": "dir", "hostname": "dir"}).encode())
        return ident

    def command(self, timeout=5):
        """The next command other than PING (PINGs are answered)."""
        while True:
            cmd = self.line(timeout)
            self.reply(b"OK")
            if cmd != "PING":
                return cmd

    def commands_until_quiet(self, quiet=0.5):
        out = []
        while True:
            try:
                out.append(self.command(timeout=quiet))
            except socket.timeout:
                return out

    def close(self):
        if self.conn:
            self.conn.close()
        self.srv.close()


def test_register_and_unregister(broker):
    d = Directory()
    b = broker(lookupd=["127.0.0.1:%d" % d.port], broadcast_address="broker.example",
               lookupd_interval=tnhelp.duration(1))
    ident = d.accept().handshake()
    assert ident["tcp_port"] == b.tcp_port and ident["http_port"] == b.http_port
    assert ident["broadcast_address"] == "broker.example" and ident["version"]
    assert http(b, "GET", "/info").json()["broadcast_address"] == "broker.example"
    nw.publish(b.tcp_port, "t", [b"x"])
    assert d.command() == "REGISTER t"
    nw.consumer(b.tcp_port, "t", "ch")
    assert d.command() == "REGISTER t ch"
    assert http(b, "POST", "/channel/delete?topic=t&channel=ch").status == 200
    assert d.command() == "UNREGISTER t ch"
    assert http(b, "POST", "/topic/delete?topic=t").status == 200
    assert d.command() == "UNREGISTER t"
    # PINGs keep coming every lookupd_interval
    assert d.line(timeout=3) == "PING"
    d.reply(b"OK")
    d.close()


def test_reconnect_registers_everything_again(broker):
    d = Directory()
    b = broker(http=False, lookupd=["127.0.0.1:%d" % d.port],
               lookupd_interval=tnhelp.duration(2))
    d.accept().handshake()
    nw.consumer(b.tcp_port, "a", "c1").close()
    nw.consumer(b.tcp_port, "a", "c2").close()
    nw.publish(b.tcp_port, "solo", [b"x"])
    assert d.commands_until_quiet() == ["REGISTER a", "REGISTER a c1", "REGISTER a c2",
                                        "REGISTER solo"]
    d.conn.close()  # the directory restarts
    d.accept(timeout=10).handshake()
    # a topic with channels is registered through them, one without as itself
    assert sorted(d.commands_until_quiet()) == ["REGISTER a c1", "REGISTER a c2",
                                                "REGISTER solo"]
    d.close()


def test_directory_down_at_start_then_up(broker):
    port = tnhelp.free_port()
    b = broker(http=False, lookupd=["127.0.0.1:%d" % port],
               lookupd_interval=tnhelp.duration(1))
    nw.publish(b.tcp_port, "early", [b"x"])
    b.wait_log(r"lookupd 127\.0\.0\.1:%d: cannot connect" % port)
    d = Directory.__new__(Directory)
    d.srv = socket.socket()
    d.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    d.srv.bind(("127.0.0.1", port))
    d.srv.listen(1)
    d.port, d.conn, d.buf = port, None, b""
    d.accept(timeout=10).handshake()
    assert d.commands_until_quiet() == ["REGISTER early"]
    # one warning for the whole outage, not one per attempt
    assert b.log().count("cannot connect") == 1
    d.close()


def test_error_reply_is_logged(broker):
    d = Directory()
    b = broker(http=False, lookupd=["127.0.0.1:%d" % d.port])
    d.accept().handshake()
    nw.publish(b.tcp_port, "t", [b"x"])
    assert d.line() == "REGISTER t"
    d.reply(b"E_REGISTRATION_FAILED REGISTER too many registrations")
    b.wait_log(r"lookupd .*E_REGISTRATION_FAILED")
    d.close()
