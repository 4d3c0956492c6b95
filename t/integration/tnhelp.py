"""tnhelp -- run the real ternd from $TERND_BUILD in integration tests.

Every test gets a fresh ternd on free loopback ports, with its own YAML
file, data directory and (empty) plugins directory under the test's temp
directory. Its stderr goes to a file (a pipe could fill up and block the
server). Readiness is GET /ping on admin_listen answering 200. Every wait
is bounded; a server still running at the end of a test is killed.

Importable from any test below t/integration (the root conftest puts this
directory on sys.path): `import tnhelp`.
"""

import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRCDIR = HERE.parent.parent
BUILD = Path(os.environ["TERND_BUILD"]).resolve() if os.environ.get("TERND_BUILD") else None

# TERND_WRAPPER runs every ternd under a command, e.g. "valgrind
# --leak-check=full --error-exitcode=99" (scripts/dev/valgrind); the waits
# below (and every wait_for) are then multiplied by TERND_TIMEOUT_SCALE.
# So must be the upper bounds a test puts on elapsed time (scaled()) and
# the server-side periods a test must act within -- a TTL, an inactivity
# or heartbeat timeout (duration()); lower bounds stay as they are, timed
# from before the request that starts the period.
WRAPPER = shlex.split(os.environ.get("TERND_WRAPPER", ""))
TIMEOUT_SCALE = float(os.environ.get("TERND_TIMEOUT_SCALE", "1"))

START_TIMEOUT = 15.0 * TIMEOUT_SCALE   # seconds for a server to answer /ping
STOP_TIMEOUT = 15.0 * TIMEOUT_SCALE    # seconds for a graceful stop
RUN_TIMEOUT = 20.0 * TIMEOUT_SCALE     # seconds for a one-shot run (-t, -V)

LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[(error|warn|info|debug)\] ([^:]*): (.*)$")


def ternd_bin():
    return BUILD / "server" / "ternd"


def ternd_cmd(args):
    """The command line running ternd with args (under TERND_WRAPPER)."""
    return WRAPPER + [str(ternd_bin())] + [str(a) for a in args]


# Listen on a port the kernel picks: no race with other processes between
# choosing a free port and binding it. The bound port is read from the log.
ANY_PORT = "127.0.0.1:0"


def logged_port(t, prefix, since=0):
    """The port of the last log line `<prefix> 127.0.0.1:PORT` (after log
    offset since), or None."""
    found = re.findall(r"%s 127\.0\.0\.1:(\d+)$" % prefix, t.log()[since:], re.M)
    return int(found[-1]) if found else None


def test_modules_dir():
    """Where `make check` leaves sample.so, sampledep.so and badabi.so."""
    return BUILD / "t" / "modules" / ".libs"


def header_define(header, name):
    """A #define's value from a public header, e.g. TN_VERSION_STRING."""
    text = (SRCDIR / "server" / "include" / "ternd" / header).read_text()
    m = re.search(r"^#define\s+%s\s+(.+?)\s*$" % re.escape(name), text, re.M)
    assert m, "%s not in %s" % (name, header)
    return m.group(1).strip('"')


def self_signed_cert(d, name="server"):
    """A self-signed certificate for 127.0.0.1 (usable as its own CA), made
    with the openssl command in directory d: (cert path, key path)."""
    cert, key = Path(d) / ("%s.pem" % name), Path(d) / ("%s.key" % name)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS_GIVEN = set()
_PORT_RNG = random.Random(os.getpid() ^ time.monotonic_ns())


def _bindable(port):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ternd's
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port():
    """A port free on 127.0.0.1 right now for TCP and UDP, never handed out
    before by this process, and below the kernel's ephemeral range: a port
    the kernel picks (bind to 0) is also what the next outgoing connection
    may take before ternd binds it, and two picks may repeat."""
    hi = min(_ephemeral_low(), 65536) - 1
    lo = max(1024, hi - 12000)
    for _ in range(2000):
        port = _PORT_RNG.randint(lo, hi)
        if port not in _PORTS_GIVEN and _bindable(port):
            _PORTS_GIVEN.add(port)
            return port
    raise RuntimeError("no free port in %d-%d" % (lo, hi))


def run(args, timeout=RUN_TIMEOUT, env=None, cwd=None):
    """Run ternd to completion (e.g. -t, -V): a CompletedProcess with text."""
    return subprocess.run(ternd_cmd(args),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def yaml_scalar(v):
    if v is None:
        return "~"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(yaml_scalar(x) for x in v) + "]"
    return str(v)


def to_yaml(d, indent=0):
    """A small YAML writer for nested dicts of scalars and flat lists; a
    dict value {} or None is written as `key: ~`."""
    out = []
    pad = "  " * indent
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.append("%s%s:" % (pad, k))
            out.append(to_yaml(v, indent + 1))
        elif isinstance(v, dict):
            out.append("%s%s: ~" % (pad, k))
        else:
            out.append("%s%s: %s" % (pad, k, yaml_scalar(v)))
    return "\n".join(out)


def scaled(seconds):
    """A bound on how long the server may take for something: seconds
    stretched by TERND_TIMEOUT_SCALE (valgrind runs it many times slower).
    Only upper bounds are scaled; a lower bound ("not before the TTL")
    holds at any speed."""
    return seconds * TIMEOUT_SCALE


def duration(seconds):
    """A server-side period (TTL, inactivity timeout, heartbeat) for the
    YAML or an API argument, as "<n>ms": seconds stretched by
    TERND_TIMEOUT_SCALE, so that the steps a test takes inside the period
    still fit in it when the server runs under valgrind."""
    return "%dms" % round(seconds * 1000 * TIMEOUT_SCALE)


def wait_for(pred, timeout, interval=0.02, what="condition"):
    """Poll pred() until it returns a true value (returned) or time runs out."""
    deadline = time.monotonic() + timeout * TIMEOUT_SCALE
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout * TIMEOUT_SCALE, what))
        time.sleep(interval)


def http_raw(port, data, timeout=5.0, host="127.0.0.1"):
    """Send raw bytes, read until the server closes (or timeout): bytes."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        return recv_all(s, timeout)


def recv_all(s, timeout=5.0):
    chunks = []
    deadline = time.monotonic() + timeout * TIMEOUT_SCALE
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            b = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def closed_by_peer(sock, timeout=3.0):
    """True when the peer closes the connection (EOF or reset) within
    timeout without sending anything; False on timeout or data."""
    sock.settimeout(timeout * TIMEOUT_SCALE)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def pid_alive(pid):
    """Is pid a live (not zombie) process?"""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # dict, lower-case names
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower())

    def text(self):
        return self.body.decode()

    def json(self):
        return json.loads(self.body)


def read_response(sock, buf=b"", head=False, timeout=5.0):
    """Read one HTTP/1.1 response (Content-Length or chunked) from sock.
    Returns (Response, leftover bytes). head: no body follows."""
    deadline = time.monotonic() + timeout * TIMEOUT_SCALE

    def more():
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        b = sock.recv(65536)
        if not b:
            raise EOFError("connection closed mid-response")
        return b

    while b"\r\n\r\n" not in buf:
        buf += more()
    head_bytes, buf = buf.split(b"\r\n\r\n", 1)
    lines = head_bytes.decode("latin-1").split("\r\n")
    m = re.match(r"^HTTP/1\.[01] (\d{3}) ?(.*)$", lines[0])
    assert m, "bad status line %r" % lines[0]
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    status = int(m.group(1))
    body = b""
    if head or status in (204, 304) or 100 <= status < 200:
        pass
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            while b"\r\n" not in buf:
                buf += more()
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                buf += more()
            body += buf[:size]
            buf = buf[size + 2:]
            if size == 0:
                break
    elif "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < n:
            buf += more()
        body, buf = buf[:n], buf[n:]
    else:
        # body until close
        while True:
            try:
                buf += more()
            except EOFError:
                break
        body, buf = buf, b""
    return Response(status, m.group(2), headers, body), buf


def request(port, method, path, body=None, headers=None, timeout=5.0):
    """One request on a fresh connection (closed after): a Response."""
    hdrs = {"Host": "127.0.0.1", "Connection": "close"}
    hdrs.update(headers or {})
    data = body if isinstance(body, (bytes, type(None))) else body.encode()
    if data is not None:
        hdrs["Content-Length"] = str(len(data))
    req = "%s %s HTTP/1.1\r\n" % (method, path)
    req += "".join("%s: %s\r\n" % kv for kv in hdrs.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout * TIMEOUT_SCALE) as s:
        s.sendall(req.encode() + (data or b""))
        resp, _ = read_response(s, head=(method == "HEAD"), timeout=timeout)
        return resp


def sample_port(t):
    """The port the sample module of a started t listens on."""
    return wait_for(lambda: logged_port(t, r"sample: listening on", getattr(t, "start_mark", 0)), 5,
                    what="the sample's listening line")


def start_sample(make, daemon=None, **keys):
    """With the `ternd` fixture's factory: a started ternd running the
    sample module on a port of its own with the given sample keys.
    Returns (t, port)."""
    section = {"listen": ANY_PORT}
    section.update(keys)
    t = make(daemon=daemon, sections={"sample": section})
    t.start()
    return t, sample_port(t)


def sample_with_lua(t, script_text, listen=None, **lua):
    """Configure t (not started) to run the sample module with script_text
    as its Lua script (sample.lua in t's directory) and the given lua:
    keys, listening on a free port, or on `listen` (ANY_PORT: a port of its
    own, sample_port(t) once started). Returns (port or None, script path)."""
    port = None
    if listen is None:
        port = free_port()
        listen = "127.0.0.1:%d" % port
    script = t.tmp / "sample.lua"
    script.write_text(script_text)
    lua_conf = {"script": str(script)}
    lua_conf.update(lua)
    t.sections = {"sample": {"listen": listen, "lua": lua_conf}}
    t.write_conf()
    return port, script


class LineClient:
    """A client of the sample module's line protocol (text\\n -> answer\\n)."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.timeout = timeout

    def ask(self, line):
        self.sock.sendall(line.encode() + b"\n")
        return self.readline()

    def readline(self):
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self.buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            b = self.sock.recv(65536)
            if not b:
                raise EOFError("closed by the server")
            self.buf += b
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Ternd:
    """One ternd process.

    daemon: overrides for the daemon section (merged into the defaults:
    log_level info, data_dir, an empty plugins_dir, modules_dir the test
    modules, admin_listen on a free port, shutdown_timeout 3s).
    sections: dict of module sections (written with to_yaml), or
    text: extra YAML text appended verbatim after the daemon section.
    """

    def __init__(self, tmp, daemon=None, sections=None, text=None, env=None, args=None):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.tmp / "ternd.yaml"
        self.stderr_path = self.tmp / "stderr.log"
        (self.tmp / "plugins").mkdir(exist_ok=True)
        self.daemon = {
            "log_level": "info",
            "data_dir": str(self.tmp / "data"),
            "modules_dir": str(test_modules_dir()),
            "plugins_dir": str(self.tmp / "plugins"),
            "admin_listen": ANY_PORT,
            "shutdown_timeout": "3s",
        }
        self.daemon.update(daemon or {})
        self.admin_port = None  # known once started when admin_listen is ANY_PORT
        self.start_mark = 0     # log offset where the current run began
        admin = self.daemon.get("admin_listen")
        if admin == ANY_PORT and self.daemon.get("log_level") in ("warn", "error"):
            # the line naming the bound port would not be logged
            self.daemon["admin_listen"] = "127.0.0.1:%d" % free_port()
            admin = self.daemon["admin_listen"]
        m = re.match(r"^127\.0\.0\.1:(\d+)$", str(admin))
        if m and admin != ANY_PORT:
            self.admin_port = int(m.group(1))
        self.sections = sections or {}
        self.text = text
        # only what a test asks for reaches the server of systemd's variables
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self.env.update(env or {})
        self.args = list(args or [])
        self.proc = None
        self.returncode = None
        self.write_conf()

    # ---- configuration ----------------------------------------------------

    def conf_text(self):
        parts = [to_yaml({"daemon": self.daemon})]
        if self.sections:
            parts.append(to_yaml(self.sections))
        if self.text:
            parts.append(self.text.rstrip("\n"))
        return "\n".join(parts) + "\n"

    def write_conf(self, text=None):
        """Write the file (atomically, so a SIGHUP never reads half of it)."""
        tmp = self.conf_path.with_suffix(".tmp")
        tmp.write_text(text if text is not None else self.conf_text())
        os.replace(tmp, self.conf_path)

    def check(self):
        """ternd -t on this file."""
        return run(["-t", "-c", self.conf_path], env=self.env)

    # ---- process ----------------------------------------------------------

    def start(self, wait=True):
        # a restart logs anew: ports picked by the kernel are read from here on
        self.start_mark = self.log_size()
        if self.daemon.get("admin_listen") == ANY_PORT:
            self.admin_port = None
        self.stderr_file = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(ternd_cmd(["-c", self.conf_path] + self.args),
                                     stdin=subprocess.DEVNULL, stdout=self.stderr_file,
                                     stderr=self.stderr_file, env=self.env, cwd=str(self.tmp))
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=START_TIMEOUT):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("ternd exited with %s before it was ready:\n%s"
                                     % (self.proc.returncode, self.stderr()))
            if self.admin_port is None and self.daemon.get("admin_listen") == ANY_PORT:
                self.admin_port = logged_port(self, r"core: admin HTTP on", self.start_mark)
                if self.admin_port is None:
                    return False
            if self.admin_port is None:  # no TCP admin endpoint
                return "] core: ready" in self.log()
            try:
                return request(self.admin_port, "GET", "/ping", timeout=1.0).status == 200
            except (OSError, EOFError):
                return False
        wait_for(ready, timeout, what="ternd to answer /ping")

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        """The exit status; kills the process (and fails) on timeout."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("ternd did not exit within %.1fs:\n%s"
                                 % (timeout, self.stderr()))
        finally:
            if not self.alive():
                self.stderr_file.close()
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Graceful stop; asserts exit status 0."""
        self.send_signal(sig)
        rc = self.wait_exit(timeout)
        assert rc == 0, "ternd exited with %d after %s:\n%s" % (rc, sig, self.stderr())
        return rc

    def kill(self):
        if self.alive():
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def reload(self, text=None, timeout=10.0):
        """Write the new file (text, or from daemon/sections), SIGHUP, and
        wait until the reload finished (done or rejected). Returns the log
        written since the SIGHUP."""
        mark = self.log_size()
        self.write_conf(text)
        self.send_signal(signal.SIGHUP)
        return self.wait_log(r"\] core: (reload done|reload rejected)", since=mark,
                             timeout=timeout)

    # ---- logs ---------------------------------------------------------------

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_path(self):
        """Where log lines go: daemon.log_file, else stderr."""
        lf = self.daemon.get("log_file")
        if lf and lf != "stderr":
            return Path(lf) if os.path.isabs(lf) else self.tmp / lf
        return self.stderr_path

    def log(self):
        try:
            return self.log_path().read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self):
        return len(self.log())

    def wait_log(self, pattern, since=0, timeout=10.0):
        """Wait until regex pattern matches the log after offset since;
        returns the log text from since."""
        rx = re.compile(pattern, re.M)

        def found():
            text = self.log()[since:]
            if rx.search(text):
                return text
            if not self.alive():
                raise AssertionError("ternd exited while waiting for /%s/:\n%s"
                                     % (pattern, self.log()))
            return None
        return wait_for(found, timeout, what="log line /%s/" % pattern)

    def log_lines(self, who=None):
        """Parsed log lines (level, who, text), optionally for one subsystem."""
        out = []
        for line in self.log().splitlines():
            m = LOG_LINE.match(line)
            if m and (who is None or m.group(2) == who):
                out.append((m.group(1), m.group(2), m.group(3)))
        return out

    # ---- admin HTTP ---------------------------------------------------------

    def get(self, path, **kw):
        return request(self.admin_port, "GET", path, **kw)

    def metrics(self):
        """The /metrics samples as {name or name{labels}: value}."""
        out = {}
        for line in self.get("/metrics").text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
