"""wsraw -- a minimal WebSocket client on a plain socket, to send what
real clients never send (bad UTF-8, unmasked or oversized frames) and to
see the server's close frames byte for byte."""

import base64
import hashlib
import os
import socket
import struct
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class RawWS:
    def __init__(self, port, path="/ws", extensions=None, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16))
        req = (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
               % (path.encode(), key))
        if extensions:
            req += b"Sec-WebSocket-Extensions: %s\r\n" % extensions.encode()
        self.sock.sendall(req + b"\r\n")
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            b = self.sock.recv(4096)
            if not b:
                raise EOFError("closed during the handshake")
            self.buf += b
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode()
        self.status = int(self.head.split()[1])
        if self.status == 101:
            want = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
            assert "Sec-WebSocket-Accept: %s" % want in self.head, self.head

    def frame(self, op, payload, fin=True, mask=True, rsv=0):
        b0 = (0x80 if fin else 0) | rsv | op
        n = len(payload)
        if n < 126:
            h = struct.pack(">BB", b0, (0x80 if mask else 0) | n)
        elif n < 65536:
            h = struct.pack(">BBH", b0, (0x80 if mask else 0) | 126, n)
        else:
            h = struct.pack(">BBQ", b0, (0x80 if mask else 0) | 127, n)
        if mask:
            m = os.urandom(4)
            payload = bytes(c ^ m[i % 4] for i, c in enumerate(payload))
            h += m
        self.sock.sendall(h + payload)

    def recv_frame(self, timeout=5.0):
        """(fin, rsv, opcode, payload); EOFError when closed."""
        deadline = time.monotonic() + timeout

        def need(n):
            while len(self.buf) < n:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                b = self.sock.recv(65536)
                if not b:
                    raise EOFError("closed")
                self.buf += b
        need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n, off = b1 & 0x7f, 2
        if n == 126:
            need(4)
            n, off = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            need(10)
            n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
        assert not b1 & 0x80, "server frames are never masked"
        need(off + n)
        payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
        return bool(b0 & 0x80), b0 & 0x70, b0 & 0x0f, payload

    def expect_close(self, timeout=5.0):
        """Read frames until a close frame: its code (None if empty)."""
        while True:
            fin, rsv, op, p = self.recv_frame(timeout)
            if op == 8:
                return struct.unpack(">H", p[:2])[0] if len(p) >= 2 else None

    def close(self):
        self.sock.close()
