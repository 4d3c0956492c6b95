#!/usr/bin/python3
"""discovery_bench.py -- rough throughput of the discovery module, measured
with Python clients (so the figures are lower bounds: one Python client is
usually the bottleneck). Starts the ternd of a build directory on free
loopback ports with a discovery section only.

    scripts/bench/discovery_bench.py [BUILD_DIR] [N]

Measures: REGISTER commands over one V1 connection (pipelined, N distinct
topics), /lookup requests on one keep-alive connection, service
registrations and heartbeats over HTTP keep-alive (N each).
"""

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
N = int(sys.argv[2]) if len(sys.argv) > 2 else 20000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit("ternd did not open port %d" % port)


def read_frames(sock, n):
    buf, got = b"", 0
    while got < n:
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
            buf = buf[4 + struct.unpack(">I", buf[:4])[0]:]
            got += 1
        if got < n:
            buf += sock.recv(1 << 16)


class Http:
    """Sequential requests on one keep-alive connection."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def req(self, method, path, body=b""):
        self.s.sendall(b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                       % (method, path, len(body), body))
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(1 << 16)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(self.buf) < n:
            self.buf += self.s.recv(1 << 16)
        body, self.buf = self.buf[:n], self.buf[n:]
        return head.split(b" ")[1], body


def rate(what, n, fn):
    t = time.monotonic()
    fn()
    dt = time.monotonic() - t
    print("%-40s %8d in %6.3fs = %9.0f/s" % (what, n, dt, n / dt))


def main():
    tcp, http = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="dscbench")
    conf = os.path.join(tmp, "ternd.yaml")
    with open(conf, "w") as f:
        f.write("daemon:\n  log_level: warn\n  data_dir: %s/data\n  admin_listen: ~\n"
                "  modules_dir: %s/lib/ternd/modules\n"
                "discovery:\n  tcp_listen: 127.0.0.1:%d\n  http_listen: 127.0.0.1:%d\n"
                "  max_registrations: %d\n  services: { max_instances: %d }\n"
                % (tmp, BUILD, tcp, http, 2 * N + 10, N + 10))
    proc = subprocess.Popen([os.path.join(BUILD, "server", "ternd"), "-c", conf])
    try:
        wait_port(tcp)
        wait_port(http)
        s = socket.create_connection(("127.0.0.1", tcp))
        body = json.dumps({"broadcast_address": "b", "tcp_port": 1, "http_port": 2,
                           "version": "1"}).encode()
        s.sendall(b"  V1IDENTIFY\n" + struct.pack(">I", len(body)) + body)
        read_frames(s, 1)
        cmds = b"".join(b"REGISTER topic%d ch\n" % i for i in range(N))
        rate("TCP V1 REGISTER (pipelined)", N,
             lambda: (s.sendall(cmds), read_frames(s, N)))
        h = Http(http)
        rate("HTTP GET /lookup (keep-alive)", N // 4,
             lambda: [h.req(b"GET", b"/lookup?topic=topic%d" % i) for i in range(N // 4)])
        regs = [json.dumps({"name": "gw", "id": "i%d" % i, "address": "h:%d" % i}).encode()
                for i in range(N)]
        rate("HTTP POST /services/register", N,
             lambda: [h.req(b"POST", b"/services/register", b) for b in regs])
        rate("HTTP POST /services/heartbeat", N,
             lambda: [h.req(b"POST", b"/services/heartbeat?name=gw&id=i%d" % i)
                      for i in range(N)])
        s.close()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
