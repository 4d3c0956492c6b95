"""lossyudp -- a UDP relay on 127.0.0.1 that loses, delays, reorders and
duplicates datagrams in both directions, for KCP tests and benchmarks on
kernels without netem. A seeded random generator makes a run repeatable.

    relay = Relay(upstream_port, loss=0.05, delay=0.010, jitter=0.010, dup=0.01)
    ... clients send to relay.port ...
    relay.close(); relay.dropped, relay.passed
"""

import heapq
import random
import select
import socket
import threading
import time


class Relay:
    def __init__(self, upstream_port, loss=0.0, delay=0.0, jitter=0.0, dup=0.0, seed=1):
        self.up = ("127.0.0.1", upstream_port)
        self.loss, self.delay, self.jitter, self.dup = loss, delay, jitter, dup
        self.rnd = random.Random(seed)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.back = {}   # client address -> socket towards the server
        self.owner = {}  # that socket's fileno -> client address
        self.queue = []  # (due, n, socket, data, address)
        self.n = 0
        self.dropped = self.passed = self.reordered = 0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _schedule(self, sock, data, addr):
        if self.rnd.random() < self.loss:
            self.dropped += 1
            return
        copies = 2 if self.rnd.random() < self.dup else 1
        for _ in range(copies):
            # jitter on each datagram: a later one may overtake an earlier one
            due = time.monotonic() + self.delay + self.rnd.random() * self.jitter
            self.n += 1
            heapq.heappush(self.queue, (due, self.n, sock, data, addr))
        self.passed += 1

    def _back_sock(self, addr):
        s = self.back.get(addr)
        if s is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            self.back[addr] = s
            self.owner[s.fileno()] = addr
        return s

    def _run(self):
        last_n = 0
        while not self.stop:
            now = time.monotonic()
            while self.queue and self.queue[0][0] <= now:
                _, n, sock, data, addr = heapq.heappop(self.queue)
                if n < last_n:
                    self.reordered += 1
                last_n = max(last_n, n)
                try:
                    sock.sendto(data, addr)
                except OSError:
                    pass
            wait = min(0.05, max(0.0, self.queue[0][0] - now)) if self.queue else 0.05
            socks = [self.front] + list(self.back.values())
            ready, _, _ = select.select(socks, [], [], wait)
            for s in ready:
                try:
                    data, addr = s.recvfrom(65536)
                except OSError:
                    continue
                if s is self.front:
                    self._schedule(self._back_sock(addr), data, self.up)
                else:
                    self._schedule(self.front, data, self.owner[s.fileno()])

    def close(self):
        self.stop = True
        self.thread.join(5)
        for s in [self.front] + list(self.back.values()):
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
