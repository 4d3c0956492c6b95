"""gwhelp -- a client of the gateway's packet format (due's
size|header|route|seq|data) over TCP, and where gateway.so is."""

import socket
import struct
import time

import tnhelp

HB = 0x80
# a KCP listener's options in turbo mode (those kcp_client.go uses by default)
TURBO = {"nodelay": "true", "interval": "10ms", "resend": 2, "nc": "true",
         "sndwnd": 128, "rcvwnd": 128, "mtu": 1400}


def modules_dir():
    return tnhelp.BUILD / "lib" / "ternd" / "modules"


def _fmt(width):
    return {1: "b", 2: "h", 4: "i"}[width]


class Codec:
    def __init__(self, route_bytes=2, seq_bytes=2, big=True):
        self.rb, self.sb = route_bytes, seq_bytes
        self.order = ">" if big else "<"

    def packet(self, route, seq, data, extcode=0):
        body = struct.pack(self.order + "B" + _fmt(self.rb), extcode, route)
        if self.sb:
            body += struct.pack(self.order + _fmt(self.sb), seq)
        body += data
        return struct.pack(self.order + "I", len(body)) + body

    def heartbeat(self):
        return struct.pack(self.order + "IB", 1, HB)

    def decode(self, buf):
        """(packet or None, rest). A packet is a dict."""
        if len(buf) < 4:
            return None, buf
        (size,) = struct.unpack(self.order + "I", buf[:4])
        if len(buf) < 4 + size:
            return None, buf
        body, rest = buf[4:4 + size], buf[4 + size:]
        head = body[0]
        if head & HB:
            p = {"heartbeat": True, "time": None}
            if size == 9:
                (p["time"],) = struct.unpack(self.order + "q", body[1:9])
            return p, rest
        off = 1
        (route,) = struct.unpack(self.order + _fmt(self.rb), body[off:off + self.rb])
        off += self.rb
        seq = 0
        if self.sb:
            (seq,) = struct.unpack(self.order + _fmt(self.sb), body[off:off + self.sb])
            off += self.sb
        return {"heartbeat": False, "route": route, "seq": seq, "data": body[off:],
                "extcode": head & 0x7f}, rest


class Client:
    """One TCP client of the gateway."""

    def __init__(self, port, codec=None, timeout=5.0):
        timeout = tnhelp.scaled(timeout)
        self.codec = codec or Codec()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.timeout = timeout

    def send(self, route, seq, data):
        self.sock.sendall(self.codec.packet(route, seq, data))

    def recv(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            p, self.buf = self.codec.decode(self.buf)
            if p is not None:
                return p
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet")
            self.sock.settimeout(left)
            b = self.sock.recv(65536)
            if not b:
                raise EOFError("closed by the gateway")
            self.buf += b

    def ask(self, route, seq, data):
        self.send(route, seq, data)
        return self.recv()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
