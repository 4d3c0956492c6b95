"""Process lifecycle: graceful stop on SIGTERM/SIGINT, log reopen on
SIGUSR1, the pid file, sd_notify, max_connections, -d, log format."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import tnhelp


def index_of(lines, pattern):
    rx = re.compile(pattern)
    for i, line in enumerate(lines):
        if rx.search(line):
            return i
    raise AssertionError("no line /%s/ in:\n%s" % (pattern, "\n".join(lines)))


@pytest.mark.parametrize("sig,name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")])
def test_graceful_stop_reverse_order(ternd, sample_modules, sig, name):
    t = ternd(text="sampledep: ~\nsample: ~\n")
    t.start()
    t.stop(sig)
    lines = t.log().splitlines()
    i_sig = index_of(lines, r"\[info\] core: %s: stopping gracefully" % name)
    i_dep = index_of(lines, r"sampledep: stopped")
    i_sample = index_of(lines, r"\] sample: stopped")
    i_fini = index_of(lines, r"\] sample: fini")
    i_end = index_of(lines, r"\] core: stopped")
    assert i_sig < i_dep < i_sample < i_fini < i_end
    assert i_end == len(lines) - 1


def test_stop_without_modules(ternd):
    t = ternd()
    t.start()
    t0 = time.monotonic()
    t.stop()
    assert time.monotonic() - t0 < tnhelp.scaled(2.0)
    assert "core: stopped" in t.log()


def sample_with_client(ternd, shutdown_timeout):
    """A running ternd with the sample module, and one client that has
    been answered."""
    t, port = tnhelp.start_sample(ternd, daemon={"shutdown_timeout": shutdown_timeout})
    c = tnhelp.LineClient(port)
    assert c.ask("before") == "hello before"
    return t, port, c


def test_stop_drains_open_connections(ternd, sample_modules):
    t, port, c = sample_with_client(ternd, tnhelp.duration(10))
    t.send_signal(signal.SIGTERM)
    t.wait_log(r"sample: stopped")
    # the listener is closed, the open connection is left to drain
    time.sleep(0.3)
    assert t.alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).recv(1)
    t0 = time.monotonic()
    c.close()
    assert t.wait_exit(tnhelp.scaled(5)) == 0
    # ended by the drain, not the 10 s timeout (both scaled alike)
    assert time.monotonic() - t0 < tnhelp.scaled(3.0)
    assert "shutdown timeout" not in t.log()


def test_stop_timeout_closes_stragglers(ternd, sample_modules):
    t, port, c = sample_with_client(ternd, "500ms")
    with c:
        t0 = time.monotonic()
        t.send_signal(signal.SIGTERM)
        assert t.wait_exit(tnhelp.scaled(5)) == 0
        assert 0.4 <= time.monotonic() - t0 < tnhelp.scaled(3.0)
        assert re.search(r"\[warn\] core: shutdown timeout: closing 1 connections", t.log())
        with pytest.raises((EOFError, OSError)):
            c.ask("after")


def test_second_signal_stops_at_once(ternd, sample_modules):
    t, port, c = sample_with_client(ternd, tnhelp.duration(30))
    with c:
        t.send_signal(signal.SIGTERM)
        t.wait_log(r"SIGTERM: stopping gracefully")
        time.sleep(0.2)
        assert t.alive()
        t0 = time.monotonic()
        t.send_signal(signal.SIGINT)
        assert t.wait_exit(tnhelp.scaled(5)) == 0
        assert time.monotonic() - t0 < tnhelp.scaled(2.0)
        assert "SIGINT again: stopping now" in t.log()


def test_sigusr1_reopens_log(ternd):
    t = ternd(daemon={"log_file": "ternd.log"})
    t.start()
    log = t.tmp / "ternd.log"
    assert "core: ready" in log.read_text()
    assert "[info]" not in t.stderr()  # the lines went to the file
    os.rename(log, t.tmp / "ternd.log.1")
    t.get("/ping")
    t.send_signal(signal.SIGUSR1)
    tnhelp.wait_for(lambda: log.exists() and "reopened" in log.read_text(), 5,
                    what="the new log file")
    assert re.search(r"\[info\] core: log file .*ternd\.log reopened", log.read_text())
    t.stop()
    new = log.read_text()
    old = (t.tmp / "ternd.log.1").read_text()
    assert "core: stopped" in new and "core: stopped" not in old
    assert "core: ready" in old and "core: ready" not in new


def test_sigusr1_with_stderr_is_harmless(ternd):
    t = ternd()
    t.start()
    t.send_signal(signal.SIGUSR1)
    time.sleep(0.2)
    assert t.get("/ping").status == 200
    t.stop()


def test_log_to_unwritable_file_fails_start(ternd):
    t = ternd(daemon={"log_file": "/nonexistent-dir/ternd.log"})
    t.start(wait=False)
    assert t.wait_exit() == 1
    assert "cannot open log file /nonexistent-dir/ternd.log" in t.stderr()


def test_log_line_format(ternd):
    t = ternd()
    t.start()
    t.stop()
    lines = t.stderr().splitlines()
    assert lines
    for line in lines:
        assert tnhelp.LOG_LINE.match(line), line
    assert re.search(r"\] core: ternd \S+ starting, config %s, pid %d$"
                     % (re.escape(str(t.conf_path)), t.pid), t.stderr(), re.M)


def stale_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("before", [None, "stale", "garbage"])
def test_pid_file_written_and_removed(ternd, before):
    t = ternd(daemon={"pid_file": "run/ternd.pid"})
    (t.tmp / "run").mkdir()
    pidf = t.tmp / "run" / "ternd.pid"
    if before == "stale":  # a pid file left by a process that is gone
        pidf.write_text("%d\n" % stale_pid())
    elif before == "garbage":
        pidf.write_text("not a pid\n")
    t.start()
    assert pidf.read_text() == "%d\n" % t.pid
    t.stop()
    assert not pidf.exists()


def test_pid_file_refuses_live_pid(ternd):
    t = ternd(daemon={"pid_file": "ternd.pid"})
    pidf = t.tmp / "ternd.pid"
    pidf.write_text("%d\n" % os.getpid())  # this test process is alive
    t.start(wait=False)
    assert t.wait_exit() == 1
    assert "names running process %d: already running?" % os.getpid() in t.stderr()
    assert pidf.read_text() == "%d\n" % os.getpid()  # left alone


def test_data_dir_created(ternd):
    t = ternd(daemon={"data_dir": "deep/er/data"})
    t.start()
    assert (t.tmp / "deep" / "er" / "data").is_dir()
    t.stop()


def test_admin_port_in_use_fails_start(ternd):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        t = ternd(daemon={"admin_listen": "127.0.0.1:%d" % port})
        t.start(wait=False)
        assert t.wait_exit() == 1
    assert "admin HTTP on 127.0.0.1:%d" % port in t.stderr()


# ---- sd_notify ----------------------------------------------------------------

class NotifySocket:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, abstract=False):
        self.dir = tempfile.mkdtemp(prefix="tn-", dir="/tmp")  # short: sun_path is small
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "tn-notify-%d-%d" % (os.getpid(), id(self))
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self.env_value = os.path.join(self.dir, "notify")
            self.sock.bind(self.env_value)
        self.got = []

    def recv_until(self, pred, timeout=5.0):
        """Collect messages until pred(message) is true; returns it."""
        deadline = time.monotonic() + tnhelp.scaled(timeout)
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            self.got.append(msg)
            if pred(msg):
                return msg
        raise AssertionError("no matching notification; got %r" % self.got)

    def pending(self):
        """Every message already queued, without waiting: one string."""
        self.sock.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        return "\n".join(out)

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify():
    ns = NotifySocket()
    yield ns
    ns.close()


def fields(msg):
    return dict(line.split("=", 1) for line in msg.split("\n") if line)


def test_sd_notify_ready_reloading_stopping(ternd, notify):
    t = ternd(env={"NOTIFY_SOCKET": notify.env_value})
    t.start()
    ready = notify.recv_until(lambda m: "READY=1" in m)
    assert fields(ready) == {"READY": "1", "STATUS": "serving"}
    t.reload()
    reloading = notify.recv_until(lambda m: "RELOADING=1" in m)
    f = fields(reloading)
    assert f["RELOADING"] == "1"
    usec = int(f["MONOTONIC_USEC"])
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 30_000_000
    assert fields(notify.recv_until(lambda m: "READY=1" in m)) == {"READY": "1"}
    # a rejected reload also ends with READY=1
    t.reload("daemon: [\n")
    notify.recv_until(lambda m: "RELOADING=1" in m)
    notify.recv_until(lambda m: "READY=1" in m)
    t.send_signal(signal.SIGTERM)
    notify.recv_until(lambda m: "STOPPING=1" in m)
    assert t.wait_exit() == 0
    order = [k for m in notify.got for k in fields(m) if k in ("READY", "RELOADING", "STOPPING")]
    assert order == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"], notify.got


def test_sd_notify_abstract_socket(ternd):
    ns = NotifySocket(abstract=True)
    try:
        t = ternd(env={"NOTIFY_SOCKET": ns.env_value})
        t.start()
        assert "READY=1" in ns.recv_until(lambda m: "READY=1" in m)
        t.stop()
    finally:
        ns.close()


def test_sd_notify_watchdog(ternd, notify):
    t = ternd(env={"NOTIFY_SOCKET": notify.env_value, "WATCHDOG_USEC": "200000"})
    t.start()
    notify.recv_until(lambda m: "READY=1" in m)
    t0 = time.monotonic()
    for _ in range(3):
        notify.recv_until(lambda m: m == "WATCHDOG=1", timeout=2)
    assert time.monotonic() - t0 < tnhelp.scaled(1.5)  # every 100 ms
    t.stop()


def test_sd_notify_watchdog_for_another_pid(ternd, notify):
    t = ternd(env={"NOTIFY_SOCKET": notify.env_value, "WATCHDOG_USEC": "100000",
                   "WATCHDOG_PID": "1"})
    t.start()
    notify.recv_until(lambda m: "READY=1" in m)
    time.sleep(0.5)
    assert "WATCHDOG" not in notify.pending()
    t.stop()


def test_no_notify_socket_is_fine(ternd):
    t = ternd(env={"NOTIFY_SOCKET": ""})
    t.start()
    t.reload()
    t.stop()


# ---- connection limit --------------------------------------------------------

def assert_refused(port):
    """A new connection to port is closed without an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
        extra.sendall(b"hi\n")
        assert tnhelp.closed_by_peer(extra, 3)


def test_max_connections_refuses_the_extra(ternd, sample_modules):
    t, port = tnhelp.start_sample(ternd, daemon={"max_connections": 3})
    # readiness probes must be gone before we count
    tnhelp.wait_for(lambda: t.metrics()["ternd_connections_open"] == 1, 5,
                    what="only the /metrics request open")
    clients = [tnhelp.LineClient(port) for _ in range(3)]
    try:
        for i, c in enumerate(clients):
            assert c.ask("c%d" % i) == "hello c%d" % i
        assert_refused(port)
        # the admin endpoint counts too
        with pytest.raises((EOFError, OSError, AssertionError)):
            t.get("/ping", timeout=2)
        # one goes, one more may come
        clients.pop().close()
        time.sleep(0.2)
        with tnhelp.LineClient(port) as c:
            assert c.ask("again") == "hello again"
        assert all(c.ask("still") == "hello still" for c in clients)
    finally:
        for c in clients:
            c.close()
    t.stop()


def test_max_connections_changes_on_reload(ternd, sample_modules):
    t, port = tnhelp.start_sample(ternd, daemon={"max_connections": 100})
    t.daemon["max_connections"] = 2
    t.reload()
    time.sleep(0.2)
    a, b = tnhelp.LineClient(port), tnhelp.LineClient(port)
    try:
        assert a.ask("a") == "hello a" and b.ask("b") == "hello b"
        assert_refused(port)
    finally:
        a.close()
        b.close()
    t.stop()


# ---- background mode -----------------------------------------------------------

def test_daemonize(ternd):
    t = ternd(daemon={"pid_file": "ternd.pid", "log_file": "ternd.log",
                      "admin_listen": "127.0.0.1:%d" % tnhelp.free_port()})
    pidf = t.tmp / "ternd.pid"
    r = tnhelp.run(["-d", "-c", t.conf_path], cwd=t.tmp, timeout=10)
    assert r.returncode == 0, r.stderr
    pid = int(tnhelp.wait_for(lambda: pidf.exists() and pidf.read_text().strip(), 10,
                              what="the pid file"))
    try:
        tnhelp.wait_for(lambda: _ping(t.admin_port), 10, what="/ping")
        assert "core: ready" in (t.tmp / "ternd.log").read_text()
        assert os.getsid(pid) == pid  # its own session
    finally:
        os.kill(pid, signal.SIGTERM)
    tnhelp.wait_for(lambda: not pidf.exists(), 10, what="the pid file removed")
    tnhelp.wait_for(lambda: not tnhelp.pid_alive(pid), 10, what="the daemon to exit")
    assert "core: stopped" in (t.tmp / "ternd.log").read_text()


def _ping(port):
    try:
        return tnhelp.request(port, "GET", "/ping", timeout=1).status == 200
    except (OSError, EOFError):
        return False


def test_pid_file_in_missing_directory_fails_start(ternd):
    t = ternd(daemon={"pid_file": "no/such/dir/ternd.pid"})
    t.start(wait=False)
    assert t.wait_exit() == 1
    assert re.search(r"cannot write pid file .*no/such/dir/ternd\.pid", t.stderr()), t.stderr()


def test_idle_keepalive_admin_connection_does_not_hold_the_stop(ternd):
    t = ternd(daemon={"shutdown_timeout": tnhelp.duration(10)})
    t.start()
    with socket.create_connection(("127.0.0.1", t.admin_port), timeout=5) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        r, _ = tnhelp.read_response(s)
        assert r.status == 200
        t0 = time.monotonic()
        t.stop()
        assert time.monotonic() - t0 < tnhelp.scaled(3.0)
        assert tnhelp.closed_by_peer(s, 1)
    assert "shutdown timeout" not in t.log()


def test_sd_notify_no_ready_when_startup_fails(ternd, notify, sample_modules):
    t = ternd(env={"NOTIFY_SOCKET": notify.env_value}, text="sample:\n  fail_init: true\n")
    t.start(wait=False)
    assert t.wait_exit() == 1
    assert "READY=1" not in notify.pending()


def test_sigusr1_reopen_failure_keeps_the_old_log(ternd):
    t = ternd(daemon={"log_file": "logs/ternd.log"})
    (t.tmp / "logs").mkdir()
    t.start()
    os.rename(t.tmp / "logs", t.tmp / "logs.old")  # the directory is gone
    t.send_signal(signal.SIGUSR1)
    old = t.tmp / "logs.old" / "ternd.log"
    tnhelp.wait_for(lambda: "cannot open log file" in old.read_text(), 5,
                    what="the reopen error in the old file")
    assert t.get("/ping").status == 200
    (t.tmp / "logs").mkdir()
    t.send_signal(signal.SIGUSR1)
    new = t.tmp / "logs" / "ternd.log"
    tnhelp.wait_for(lambda: new.exists() and "reopened" in new.read_text(), 5,
                    what="the new log file")
    t.stop()
    assert "core: stopped" in new.read_text()


def test_signal_flood(ternd, sample_modules):
    t, port = tnhelp.start_sample(ternd)
    with tnhelp.LineClient(port) as c:
        for i in range(30):
            t.send_signal(signal.SIGHUP if i % 2 else signal.SIGUSR1)
        tnhelp.wait_for(lambda: t.log().count("reload done") >= 1, 10, what="a reload")
        time.sleep(0.3)
        assert c.ask("still") == "hello still"
    assert t.get("/ping").status == 200
    t.stop()
