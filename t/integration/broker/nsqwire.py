"""nsqwire -- a small NSQ TCP protocol V2 client for the broker's tests,
written from the protocol spec: raw frames, every command, optional
deflate (raw zlib streams both ways), and helpers that wait for frames with
a bound. Nothing here hides protocol details: tests see the bytes.
"""

import json
import socket
import struct
import time
import zlib

import tnhelp

FRAME_RESPONSE = 0
FRAME_ERROR = 1
FRAME_MESSAGE = 2
HEARTBEAT = b"_heartbeat_"


class Closed(Exception):
    """The server closed the connection."""


class Message:
    def __init__(self, data):
        self.ts, self.attempts = struct.unpack(">qH", data[:10])
        self.id = data[10:26]
        self.body = data[26:]

    def __repr__(self):
        return "Message(id=%r, attempts=%d, body=%r)" % (self.id, self.attempts, self.body[:40])


def frame_body(body):
    return struct.pack(">I", len(body)) + body


def mpub_body(bodies):
    inner = struct.pack(">I", len(bodies)) + b"".join(frame_body(b) for b in bodies)
    return frame_body(inner)


class Conn:
    """One connection. magic=False leaves the magic to the test."""

    def __init__(self, port, magic=True, timeout=5.0, host="127.0.0.1"):
        # the default wait for an answer, stretched for a broker under
        # valgrind; a timeout given to a read is the caller's to scale
        # (a quiet window must stay shorter than the heartbeat interval)
        timeout = tnhelp.scaled(timeout)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        self.zin = None   # decompressor when deflate is on
        self.zout = None  # compressor when deflate is on
        if magic:
            self.send(b"  V2")

    # ---- raw bytes ------------------------------------------------------------

    def send(self, data):
        if self.zout:
            data = self.zout.compress(data) + self.zout.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self, deadline):
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            raise Closed()
        if self.zin:
            data = self.zin.decompress(data)
        self.buf += data

    def read_frame(self, timeout=None):
        """(type, data) of the next frame; socket.timeout when none comes."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < 4:
            self._fill(deadline)
        size = struct.unpack(">I", self.buf[:4])[0]
        while len(self.buf) < 4 + size:
            self._fill(deadline)
        ftype = struct.unpack(">I", self.buf[4:8])[0]
        data = self.buf[8:4 + size]
        self.buf = self.buf[4 + size:]
        return ftype, data

    def read_frame_skip_hb(self, timeout=None):
        """The next frame that is not a heartbeat (answered with NOP)."""
        while True:
            ftype, data = self.read_frame(timeout)
            if ftype == FRAME_RESPONSE and data == HEARTBEAT:
                self.nop()
                continue
            return ftype, data

    def expect(self, ftype, data=None, timeout=None):
        got = self.read_frame_skip_hb(timeout)
        assert got[0] == ftype, "expected frame type %d, got %r" % (ftype, got)
        if data is not None:
            assert got[1] == data, "expected %r, got %r" % (data, got[1])
        return got[1]

    def expect_ok(self):
        return self.expect(FRAME_RESPONSE, b"OK")

    def expect_error(self, prefix):
        data = self.expect(FRAME_ERROR)
        assert data.startswith(prefix), "expected error %r, got %r" % (prefix, data)
        return data

    def expect_closed(self, timeout=None):
        """Reads until the server closes: the frames that came first."""
        frames = []
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while time.monotonic() < deadline:
                frames.append(self.read_frame(max(0.01, deadline - time.monotonic())))
        except Closed:
            return frames
        raise AssertionError("connection still open; frames: %r" % frames)

    def expect_silence(self, seconds=0.3):
        """No frame (other than heartbeats) arrives within seconds."""
        try:
            got = self.read_frame_skip_hb(seconds)
        except socket.timeout:
            return
        raise AssertionError("unexpected frame %r" % (got,))

    def read_message(self, timeout=None):
        return Message(self.expect(FRAME_MESSAGE, timeout=timeout))

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- commands -----------------------------------------------------------------

    def cmd(self, line, body=None):
        data = line.encode() if isinstance(line, str) else line
        self.send(data + b"\n" + (frame_body(body) if body is not None else b""))

    def identify(self, **fields):
        """IDENTIFY; returns the JSON reply (feature negotiation) or b'OK'.
        deflate=True switches this connection to raw deflate afterwards."""
        self.cmd("IDENTIFY", json.dumps(fields).encode())
        data = self.expect(FRAME_RESPONSE)
        if not fields.get("feature_negotiation"):
            return data
        reply = json.loads(data)
        if reply.get("deflate"):
            self.zin = zlib.decompressobj(-15)
            self.zout = zlib.compressobj(reply["deflate_level"], zlib.DEFLATED, -15)
            # bytes that came with the JSON are already compressed
            pending, self.buf = self.buf, b""
            if pending:
                self.buf = self.zin.decompress(pending)
            self.expect_ok()
        return reply

    def pub(self, topic, body):
        self.cmd("PUB " + topic, body)

    def dpub(self, topic, defer_ms, body):
        self.cmd("DPUB %s %d" % (topic, defer_ms), body)

    def mpub(self, topic, bodies):
        self.send(("MPUB %s\n" % topic).encode() + mpub_body(bodies))

    def sub(self, topic, channel):
        self.cmd("SUB %s %s" % (topic, channel))

    def rdy(self, n):
        self.cmd("RDY %d" % n)

    def fin(self, mid):
        self.send(b"FIN " + mid + b"\n")

    def req(self, mid, ms=0):
        self.send(b"REQ " + mid + b" %d\n" % ms)

    def touch(self, mid):
        self.send(b"TOUCH " + mid + b"\n")

    def nop(self):
        self.send(b"NOP\n")

    def cls(self):
        self.send(b"CLS\n")


def consumer(port, topic, channel, rdy=0, **identify):
    """A connection that IDENTIFYs (when asked), SUBscribes and sets RDY."""
    c = Conn(port)
    if identify:
        c.identify(**identify)
    c.sub(topic, channel)
    c.expect_ok()
    if rdy:
        c.rdy(rdy)
    return c


def publish(port, topic, bodies):
    with Conn(port) as c:
        for b in bodies:
            c.pub(topic, b)
            c.expect_ok()
