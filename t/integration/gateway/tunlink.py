"""tunlink -- two network namespaces made for a test or benchmark, joined by
a bad link: a TUN device in each, bridged by a thread of this process that
loses, delays and reorders the IP packets (any protocol: TCP and UDP see the
same link). With netem in the kernel the loss and delay are left to netem
on each TUN device instead. Needs root, `ip` and /dev/net/tun; Link.check()
says why not when it cannot be made.

    with Link(loss=0.05, delay=0.010, jitter=0.010) as link:
        link.enter("server")        # this thread (and what it starts) moves in
        ... start the server on link.addr["server"] ...
        link.enter(None)            # back to where it was
        subprocess.run(link.exec("client") + [client, ...])
"""

import ctypes
import fcntl
import heapq
import os
import random
import re
import select
import shutil
import struct
import subprocess
import threading
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
# Addresses inside the two namespaces this module makes (nowhere else).
ADDR = {"server": "10.213.0.1", "client": "10.213.0.2"}


def _setns(fd):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def _ip(*args):
    r = subprocess.run(["ip"] + list(args), capture_output=True, text=True)
    if r.returncode != 0:
        raise OSError("ip %s: %s" % (" ".join(args), r.stderr.strip()))


def check():
    """None when a Link can be made here, else the reason."""
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("ip"):
        return "iproute2 (ip) is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    name = "tnkchk%d" % os.getpid()
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return "network namespaces unavailable: %s" % r.stderr.strip()
    subprocess.run(["ip", "netns", "del", name])
    return None


def netem_available():
    name = "tnknem%d" % os.getpid()
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return False
    try:
        return subprocess.run(["tc", "-n", name, "qdisc", "add", "dev", "lo", "root", "netem",
                               "delay", "1ms"], capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", name])


class Link:
    def __init__(self, loss=0.0, delay=0.0, jitter=0.0, seed=1, use_netem=None):
        self.loss, self.delay, self.jitter = loss, delay, jitter
        self.rnd = random.Random(seed)
        self.addr = dict(ADDR)
        tag = "%d%d" % (os.getpid() % 100000, id(self) % 1000)
        self.ns = {"server": "tnks" + tag, "client": "tnkc" + tag}
        self.netem = netem_available() if use_netem is None else use_netem
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY)
        self.fds, self.queue, self.n = {}, [], 0
        self.dropped = self.passed = self.reordered = 0
        self.stop = False
        made = []
        try:
            for side, other in (("server", "client"), ("client", "server")):
                ns = self.ns[side]
                _ip("netns", "add", ns)
                made.append(ns)
                self._tun(side)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", self.addr[side], "peer", self.addr[other],
                    "dev", "tk0")
                _ip("-n", ns, "link", "set", "tk0", "up")
                if self.netem and (loss or delay):
                    args = ["tc", "-n", ns, "qdisc", "add", "dev", "tk0", "root", "netem",
                            "delay", "%dms" % (delay * 1000), "%dms" % (jitter * 1000),
                            "loss", "%g%%" % (loss * 100)]
                    subprocess.run(args, check=True, capture_output=True)
        except Exception:
            for ns in made:
                subprocess.run(["ip", "netns", "del", ns])
            raise
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _tun(self, side):
        fd = os.open("/run/netns/%s" % self.ns[side], os.O_RDONLY)
        try:
            _setns(fd)
            tun = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", b"tk0", IFF_TUN | IFF_NO_PI))
            self.fds[side] = tun
        finally:
            os.close(fd)
            _setns(self.home)

    def enter(self, side):
        """Move this thread into a side's namespace (None: back home)."""
        if side is None:
            _setns(self.home)
            return
        fd = os.open("/run/netns/%s" % self.ns[side], os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    def exec(self, side):
        return ["ip", "netns", "exec", self.ns[side]]

    def netem_dropped(self):
        """The packets netem dropped on both sides so far (0 without netem)."""
        total = 0
        for ns in self.ns.values() if self.netem else ():
            r = subprocess.run(["tc", "-n", ns, "-s", "qdisc", "show", "dev", "tk0"],
                               capture_output=True, text=True)
            total += sum(int(n) for n in re.findall(r"\(dropped (\d+),", r.stdout))
        return total

    def _schedule(self, dst, pkt):
        if not self.netem and self.rnd.random() < self.loss:
            self.dropped += 1
            return
        due = time.monotonic()
        if not self.netem:
            due += self.delay + self.rnd.random() * self.jitter
        self.n += 1
        heapq.heappush(self.queue, (due, self.n, dst, pkt))
        self.passed += 1

    def _run(self):
        last = 0
        peer = {self.fds["server"]: self.fds["client"], self.fds["client"]: self.fds["server"]}
        while not self.stop:
            now = time.monotonic()
            while self.queue and self.queue[0][0] <= now:
                _, n, dst, pkt = heapq.heappop(self.queue)
                if n < last:
                    self.reordered += 1
                last = max(last, n)
                try:
                    os.write(dst, pkt)
                except OSError:
                    pass
            wait = min(0.05, max(0.0, self.queue[0][0] - now)) if self.queue else 0.05
            ready, _, _ = select.select(list(peer), [], [], wait)
            for fd in ready:
                try:
                    pkt = os.read(fd, 65536)
                except OSError:
                    continue
                self._schedule(peer[fd], pkt)

    def close(self):
        self.stop = True
        self.thread.join(5)
        _setns(self.home)
        for fd in self.fds.values():
            os.close(fd)
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns])
        os.close(self.home)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
