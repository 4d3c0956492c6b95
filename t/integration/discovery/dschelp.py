"""dschelp -- helpers of the discovery module's integration tests: where
discovery.so is, a client of nsqlookupd's TCP protocol V1 and small HTTP
shortcuts (JSON bodies, query strings)."""

import json
import socket
import struct
import time
import urllib.parse

import tnhelp


def modules_dir():
    """Where the build links the real modules (discovery.so among them)."""
    return tnhelp.BUILD / "lib" / "ternd" / "modules"


class V1Client:
    """nsqlookupd protocol V1: the magic, then lines; every answer is a
    frame [4-byte big-endian size][data]."""

    def __init__(self, port, magic=b"  V1", timeout=5.0):
        timeout = tnhelp.scaled(timeout)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.timeout = timeout
        if magic:
            self.sock.sendall(magic)

    def send(self, data):
        self.sock.sendall(data)

    def frame(self):
        """The next frame's data (bytes); EOFError if the server closed."""
        deadline = time.monotonic() + self.timeout
        while True:
            if len(self.buf) >= 4:
                (size,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + size:
                    data, self.buf = self.buf[4:4 + size], self.buf[4 + size:]
                    return data
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            b = self.sock.recv(65536)
            if not b:
                raise EOFError("closed by the server (buffered %r)" % self.buf)
            self.buf += b

    def cmd(self, line):
        self.send(line.encode() + b"\n")
        return self.frame()

    def identify(self, **fields):
        body = json.dumps(fields).encode()
        self.send(b"IDENTIFY\n" + struct.pack(">I", len(body)) + body)
        return self.frame()

    def closed(self, timeout=3.0):
        """Did the server close the connection (after what was read)?"""
        return not self.buf and tnhelp.closed_by_peer(self.sock, timeout)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def producer_fields(port=4150, http=4151, addr="10.0.0.1", **extra):
    f = {"broadcast_address": addr, "tcp_port": port, "http_port": http,
         "version": "1.3.0", "hostname": "node-" + addr}
    f.update(extra)
    return f


def identified(lookupd_port, **fields):
    """A V1Client that has sent the magic and IDENTIFY (answer checked)."""
    c = V1Client(lookupd_port)
    reply = json.loads(c.identify(**producer_fields(**fields)))
    assert "tcp_port" in reply, reply
    return c


def url(path, **args):
    return path + ("?" + urllib.parse.urlencode(args) if args else "")


def get(port, path, **args):
    return tnhelp.request(port, "GET", url(path, **args))


def post(port, path, body=None, **args):
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    return tnhelp.request(port, "POST", url(path, **args), body=body if body is not None else b"")
