"""The admin dashboard (daemon.dashboard): the embedded page and its files
on the admin server, the broker's actions behind /dashboard/api/, and the
page rendered by a real browser -- Debian's chromium, headless -- against a
ternd running the broker and the pool, checked through its DOM and a
screenshot decoded here (no golden images: structure and colours only)."""

import http.server
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import zlib
from html.parser import HTMLParser

import pytest

import tnhelp

# seconds for one headless run (slow under ASan + load; the page's requests
# to a ternd under valgrind are slower still)
CHROMIUM_TIMEOUT = tnhelp.scaled(90)
WIDTH, HEIGHT = 1280, 900


def modules_dir():
    return tnhelp.BUILD / "lib" / "ternd" / "modules"


@pytest.fixture
def dash(ternd):
    """A started ternd with the broker (HTTP API on a free port) and the
    pool; t.http_port is the broker's HTTP API. Every server ends with a
    graceful stop that must exit 0 with no sanitizer report (ASan builds)."""
    assert (modules_dir() / "broker.so").exists(), "broker.so missing: build first"
    made = []

    def make(daemon=None, broker=True, gateway_port=None):
        d = {"modules_dir": str(modules_dir())}
        d.update(daemon or {})
        sections = {"pool": {"pools": {"workers": {"size": 4}}}}
        hport = tnhelp.free_port()
        if broker:
            sections["broker"] = {"tcp_listen": tnhelp.ANY_PORT,
                                  "http_listen": "127.0.0.1:%d" % hport}
        text = None
        if gateway_port:
            text = "gateway:\n  listen:\n    - { proto: tcp, addr: 127.0.0.1:%d }\n" % gateway_port
        t = ternd(daemon=d, sections=sections, text=text)
        t.http_port = hport
        made.append(t)
        t.start()
        if broker:
            t.wait_log(r"broker: HTTP listening on", since=t.start_mark)
        return t
    yield make
    for t in made:
        if t.alive():
            t.stop()
        assert "Sanitizer" not in t.stderr(), t.stderr()[-4000:]


def broker_post(t, path, body=b""):
    r = tnhelp.request(t.http_port, "POST", path, body=body)
    assert r.status == 200, (path, r.status, r.body)
    return r


def publish(t, topic, n):
    for i in range(n):
        broker_post(t, "/pub?topic=%s" % topic, b"message %d" % i)


def dash_post(t, path, headers=None):
    return tnhelp.request(t.admin_port, "POST", path, body=b"",
                          headers={"X-Ternd-Dashboard": "1"} if headers is None else headers)


def metric(t, name, **labels):
    """The value of one /stats sample, or None."""
    for m in t.get("/stats").json()["metrics"]:
        if m["name"] == name and m["labels"] == labels:
            return m["value"]
    return None


# ---- the page on the admin server ----------------------------------------------------------

def test_page_and_files_are_served(dash):
    t = dash(broker=False)
    page = t.get("/")
    assert page.status == 200
    assert page.header("content-type").startswith("text/html")
    assert "default-src 'self'" in page.header("content-security-policy")
    html = page.text()
    assert '<script src="/dashboard/dashboard.js"' in html
    # nothing comes from another origin
    assert "http://" not in html.replace('http://www.w3.org', '')
    assert "https://" not in html
    for path, ctype, marker in (("/dashboard/dashboard.js", "text/javascript", "fetch('/stats'"),
                                ("/dashboard/dashboard.css", "text/css", ".chart"),
                                ("/dashboard/", "text/html", "chart-rate")):
        r = t.get(path)
        assert r.status == 200, path
        assert r.header("content-type").startswith(ctype), path
        assert marker in r.text(), path
    # the embedded bytes are the source files, whole
    src = tnhelp.SRCDIR / "server" / "dashboard"
    assert t.get("/dashboard/dashboard.js").body == (src / "dashboard.js").read_bytes()
    assert page.body == (src / "index.html").read_bytes()
    assert t.get("/dashboard/nothing.js").status == 404
    # without the broker module nobody serves its actions
    assert t.get("/dashboard/api/broker").status == 404


def test_dashboard_off_and_on_again_by_reload(dash):
    t = dash(daemon={"dashboard": False}, broker=False)
    assert t.get("/").status == 404
    assert t.get("/dashboard/dashboard.js").status == 404
    assert t.get("/stats").status == 200
    t.daemon["dashboard"] = True
    assert "reload done" in t.reload()
    assert t.get("/").status == 200
    t.daemon["dashboard"] = False
    t.reload()
    assert t.get("/dashboard/dashboard.css").status == 404


def test_conf_rejects_a_non_boolean(ternd):
    t = ternd(daemon={"dashboard": "sometimes"})
    r = t.check()
    assert r.returncode == 1
    assert "daemon.dashboard" in r.stderr


# ---- actions ---------------------------------------------------------------------------------

def test_actions_go_to_the_broker(dash):
    t = dash()
    broker_post(t, "/channel/create?topic=jobs&channel=work")
    publish(t, "jobs", 4)
    api = t.get("/dashboard/api/broker")
    assert api.status == 200
    assert set(api.json()["actions"]) == {"pause", "unpause", "empty", "delete"}

    # a state change needs the header a cross-origin page cannot send
    r = dash_post(t, "/dashboard/api/broker/channel/pause?topic=jobs&channel=work", headers={})
    assert r.status == 403
    assert metric(t, "ternd_broker_channel_paused", topic="jobs", channel="work") == 0

    assert dash_post(t, "/dashboard/api/broker/channel/pause?topic=jobs&channel=work").status == 200
    assert metric(t, "ternd_broker_channel_paused", topic="jobs", channel="work") == 1
    assert dash_post(t, "/dashboard/api/broker/topic/pause?topic=jobs").status == 200
    assert metric(t, "ternd_broker_topic_paused", topic="jobs") == 1
    assert dash_post(t, "/dashboard/api/broker/topic/unpause?topic=jobs").status == 200
    assert metric(t, "ternd_broker_topic_paused", topic="jobs") == 0

    assert metric(t, "ternd_broker_channel_depth", topic="jobs", channel="work") == 4
    assert dash_post(t, "/dashboard/api/broker/channel/empty?topic=jobs&channel=work").status == 200
    assert metric(t, "ternd_broker_channel_depth", topic="jobs", channel="work") == 0

    # the broker's own answers: unknown names, bad ops, GET on an action
    r = dash_post(t, "/dashboard/api/broker/channel/empty?topic=jobs&channel=nope")
    assert r.status == 404 and r.json() == {"message": "CHANNEL_NOT_FOUND"}
    assert dash_post(t, "/dashboard/api/broker/topic/explode?topic=jobs").status == 404
    assert dash_post(t, "/dashboard/api/broker/topic/x/pause?topic=jobs").status == 404
    assert t.get("/dashboard/api/broker/topic/pause?topic=jobs").status == 405
    assert dash_post(t, "/dashboard/api/brokerx").status == 404

    assert dash_post(t, "/dashboard/api/broker/topic/delete?topic=jobs").status == 200
    assert metric(t, "ternd_broker_topic_depth", topic="jobs") is None
    # the broker's HTTP API is unchanged
    assert tnhelp.request(t.http_port, "GET", "/ping").status == 200


# ---- in the browser --------------------------------------------------------------------------

def chromium():
    """Debian's chromium (scripts/dev/bootstrap installs it): its absence is
    a failure of the setup, not a reason to skip."""
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed: run scripts/dev/bootstrap (Debian package chromium)"
    return exe


def run_chromium(tmp_path, url, *mode):
    # A browser of our own: no profile shared with anyone, and none of the
    # sanitizer runtime an ASan test environment may preload.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD",)}
    env["HOME"] = str(tmp_path)
    args = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
            "--user-data-dir=%s" % (tmp_path / "chromium-profile"), "--no-first-run",
            "--window-size=%d,%d" % (WIDTH, HEIGHT), "--virtual-time-budget=5000"]
    r = subprocess.run(args + list(mode) + [url], stdin=subprocess.DEVNULL,
                       capture_output=True, env=env, timeout=CHROMIUM_TIMEOUT)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    return r


class DomIndex(HTMLParser):
    """The parts of the dumped DOM the test looks at: table rows with data-*
    attributes (their cell texts), cards, and every SVG element by chart."""

    def __init__(self):
        super().__init__()
        self.rows = []      # (attrs, [cell text])
        self.cards = {}     # label -> value text
        self.svg = {}       # chart id -> [(tag, attrs)]
        self.ids = {}       # id -> text
        self._row = self._cell = self._chart = self._card = self._id = None
        self._card_divs = 0
        self._id_tag = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and any(k.startswith("data-") for k in a):
            self._row = (a, [])
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "svg" and a.get("id", "").startswith("chart-"):
            self._chart = a["id"]
            self.svg[self._chart] = []
        elif self._chart is not None:
            self.svg[self._chart].append((tag, a))
        if tag == "div" and "data-card" in a:
            self._card = a["data-card"]
        if tag == "div" and self._card is not None:
            self._card_divs += 1
        if a.get("id") in ("status", "version", "actions-note"):
            self._id, self._id_tag = a["id"], tag
            self.ids[self._id] = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "svg" and self._chart is not None:
            self._chart = None
        if tag == "div" and self._card is not None:
            self._card_divs -= 1
            if self._card_divs == 0:
                self._card = None
        if tag == self._id_tag:
            self._id = self._id_tag = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._card is not None and data.strip():
            self.cards.setdefault(self._card, [])
            self.cards[self._card].append(data.strip())
        if self._id is not None:
            self.ids[self._id] += data

    def row(self, **want):
        for attrs, cells in self.rows:
            if all(attrs.get("data-" + k) == v for k, v in want.items()):
                return cells
        raise AssertionError("no row %r in %r" % (want, [r[0] for r in self.rows]))


def png_pixels(data):
    """Decode an 8-bit RGB or RGBA PNG (what chromium writes) in pure
    Python: (width, height, channels, rows of bytes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, ihdr
    ch = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = w * ch
    assert len(raw) == h * (stride + 1)
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        unfilter(f, line, prev, ch)
        rows.append(line)
        prev = line
    return w, h, ch, rows


def unfilter(f, line, prev, ch):
    n = len(line)
    if f == 0:
        return
    if f == 2:
        for i in range(n):
            line[i] = (line[i] + prev[i]) & 0xFF
        return
    for i in range(n):
        a = line[i - ch] if i >= ch else 0
        if f == 1:
            line[i] = (line[i] + a) & 0xFF
        elif f == 3:
            line[i] = (line[i] + ((a + prev[i]) >> 1)) & 0xFF
        elif f == 4:
            b, c = prev[i], prev[i - ch] if i >= ch else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        else:
            raise AssertionError("bad PNG filter %d" % f)


def color_counts(w, h, ch, rows, step=2):
    """Pixel colours, quantized to 6 bits a channel (the page's grey and
    its white panels stay apart), over every step-th pixel: {(r, g, b): count}."""
    counts = {}
    for y in range(0, h, step):
        line = rows[y]
        for x in range(0, w, step):
            o = x * ch
            k = (line[o] >> 2, line[o + 1] >> 2, line[o + 2] >> 2)
            counts[k] = counts.get(k, 0) + 1
    return counts


def near(px, rgb, tol=24):
    return all(abs(a - b) <= tol for a, b in zip(px, rgb))


def test_dashboard_in_headless_chromium(dash, tmp_path):
    t = dash()
    broker_post(t, "/channel/create?topic=orders&channel=billing")
    broker_post(t, "/channel/create?topic=orders&channel=shipping")
    publish(t, "orders", 7)
    publish(t, "clicks", 3)
    assert dash_post(t, "/dashboard/api/broker/channel/pause?topic=orders&channel=shipping").status == 200
    url = "http://127.0.0.1:%d/" % t.admin_port

    dom = DomIndex()
    dom.feed(run_chromium(tmp_path, url, "--dump-dom").stdout.decode())

    # the script ran and read /stats: live status, version, cards
    assert dom.ids["status"].startswith("live"), dom.ids
    assert dom.ids["version"] == "v" + tnhelp.header_define("core.h", "TN_VERSION_STRING")
    assert dom.cards["topics"] == ["topics", "2"]
    assert dom.cards["published"] == ["published", "10"]
    assert dom.cards["pools"] == ["pools", "1"]
    # topics with their depths and message counts, channels under them
    clicks = dom.row(topic="clicks")
    assert clicks[:2] == ["clicks", "3"] and clicks[4] == "3"
    orders = dom.row(topic="orders")
    assert orders[:2] == ["orders", "0"] and orders[4] == "7"
    assert dom.row(topic="orders", channel="billing")[:3] == ["billing", "7", "0"]
    assert dom.row(topic="orders", channel="shipping")[:2] == ["shippingpaused", "7"]
    assert dom.row(pool="workers")[:2] == ["workers", "4"]
    # the actions are offered (the broker answers /dashboard/api/broker)
    assert dom.ids["actions-note"] == ""
    # charts: a rate line, one depth line per topic, bars per channel and pool
    assert [a for tag, a in dom.svg["chart-rate"] if tag == "path" and "series" in a.get("class", "")]
    depth_series = {a.get("data-series") for tag, a in dom.svg["chart-depth"] if tag == "path"}
    assert depth_series == {"orders", "clicks"}
    bars = {a["data-label"]: float(a["height"]) for tag, a in dom.svg["chart-channels"]
            if tag == "rect" and "data-label" in a}
    assert set(bars) == {"orders/billing:depth", "orders/billing:in flight",
                         "orders/shipping:depth", "orders/shipping:in flight"}
    assert bars["orders/billing:depth"] > 10 * bars["orders/billing:in flight"]
    assert bars["orders/billing:depth"] == bars["orders/shipping:depth"]
    assert any(a.get("data-label") == "workers:capacity" for tag, a in dom.svg["chart-pools"])

    shot = tmp_path / "dashboard.png"
    run_chromium(tmp_path, url, "--screenshot=%s" % shot)
    data = shot.read_bytes()
    assert len(data) > 10000, "a screenshot of %d bytes cannot hold the page" % len(data)
    w, h = struct.unpack(">II", data[16:24])  # IHDR, read before any decoding
    assert (w, h) == (WIDTH, HEIGHT)
    w, h, ch, rows = png_pixels(data)
    counts = color_counts(w, h, ch, rows)
    total = sum(counts.values())
    # not blank: many colours, no single colour covering nearly everything
    # (white panels take about two thirds of this page)
    assert len(counts) > 100, len(counts)
    assert max(counts.values()) < 0.8 * total, max(counts.values()) / total
    # the dark header band across the top, the light page below it
    top = rows[8]
    assert all(near(top[x * ch:x * ch + 3], (0x1d, 0x27, 0x33)) for x in (300, 640, 900))
    assert near(rows[HEIGHT - 5][8 * ch:8 * ch + 3], (0xf4, 0xf6, 0xf8), tol=8)
    # the channel depth bars are drawn in the first series colour (#2f6fdf)
    blue = sum(c for k, c in counts.items() if near(k, (0x2f >> 2, 0x6f >> 2, 0xdf >> 2), tol=1))
    assert blue > 200, blue


def test_stats_json_is_what_the_page_reads(dash):
    """The page groups samples by these names and labels: keep them."""
    t = dash()
    broker_post(t, "/channel/create?topic=t1&channel=c1")
    publish(t, "t1", 2)
    js = (tnhelp.SRCDIR / "server" / "dashboard" / "dashboard.js").read_text()
    stats = t.get("/stats").json()
    names = {m["name"] for m in stats["metrics"]}
    for prefix in ("ternd_broker_topic_", "ternd_broker_channel_", "ternd_pool_"):
        assert prefix in js
        assert any(n.startswith(prefix) for n in names), prefix
    for field in ("depth", "messages_total", "paused"):
        assert "ternd_broker_topic_" + field in names
        assert "t." + field in js
    for field in ("depth", "in_flight", "deferred", "requeued_total", "timeouts_total", "paused"):
        assert "ternd_broker_channel_" + field in names
        assert "c." + field in js


class FakeStats(http.server.BaseHTTPRequestHandler):
    """Serves the dashboard's files from the source tree and a /stats with
    a gateway's metrics whose counters grow with every poll."""
    polls = 0

    def do_GET(self):
        src = tnhelp.SRCDIR / "server" / "dashboard"
        files = {"/": "index.html", "/dashboard/dashboard.js": "dashboard.js",
                 "/dashboard/dashboard.css": "dashboard.css"}
        if self.path in files:
            body = (src / files[self.path]).read_bytes()
        elif self.path == "/stats":
            FakeStats.polls += 1
            n = FakeStats.polls
            metrics = [("ternd_gateway_sessions", "gauge", {}, 3),
                       ("ternd_gateway_packets_in_total", "counter", {}, 1000 * n),
                       ("ternd_gateway_packets_out_total", "counter", {}, 10 * n),
                       ("ternd_gateway_uids", "gauge", {}, 2)]
            body = json.dumps({"version": "9.9.9", "uptime_ms": 1000 * n, "metrics": [
                {"name": a, "type": b, "labels": c, "value": d} for a, b, c, d in metrics]}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_gateway_sessions_shown_when_present(tmp_path):
    """No gateway module in this tree yet: the page reads a /stats that has
    a gateway's samples, served here next to the page's own files."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeStats)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        url = "http://127.0.0.1:%d/" % srv.server_address[1]
        dom = DomIndex()
        dom.feed(run_chromium(tmp_path, url, "--dump-dom").stdout.decode())
    finally:
        srv.shutdown()
        srv.server_close()
    assert FakeStats.polls >= 2, "the page polled /stats %d times" % FakeStats.polls
    assert dom.ids["version"] == "v9.9.9"
    assert dom.cards["gateway sessions"] == ["gateway sessions", "3"]
    assert "topics" in dom.cards and "pools" not in dom.cards
    sessions = dom.row(metric="ternd_gateway_sessions")
    assert sessions[0] == "sessions" and sessions[2] == "3"
    # counters get a rate from the second poll on: 1000 packets a poll
    pin = dom.row(metric="ternd_gateway_packets_in_total")
    assert pin[2] == num_text(1000 * FakeStats.polls) and num_value(pin[3]) > 0
    series = {a.get("data-series") for tag, a in dom.svg["chart-gateway"] if tag == "path"}
    assert series == {"sessions", "packets in/s", "packets out/s"}
    # without a broker the actions are not offered
    assert "need the broker" in dom.ids["actions-note"]


def num_value(text):
    """A number as the page writes it (12, 1.5, 12.3k, 1.20M) -> float."""
    scale = {"k": 1e3, "M": 1e6}.get(text[-1:], 1)
    return float(text.rstrip("kM")) * scale


def num_text(v):
    """How the page writes a count (its num())."""
    return "%.1fk" % (v / 1e3) if v >= 1e4 else str(v)


def test_gateway_sessions_of_the_gateway_module(dash, tmp_path):
    """With the real gateway module: its open sessions reach the page."""
    assert (modules_dir() / "gateway.so").exists(), "gateway.so missing: build first"
    gport = tnhelp.free_port()
    t = dash(broker=False, gateway_port=gport)
    clients = [socket.create_connection(("127.0.0.1", gport), timeout=5) for _ in range(2)]
    try:
        tnhelp.wait_for(lambda: metric(t, "ternd_gateway_sessions") == 2, 10,
                        what="two gateway sessions")
        dom = DomIndex()
        dom.feed(run_chromium(tmp_path, "http://127.0.0.1:%d/" % t.admin_port,
                              "--dump-dom").stdout.decode())
    finally:
        for c in clients:
            c.close()
    assert dom.cards["gateway sessions"] == ["gateway sessions", "2"]
    assert dom.row(metric="ternd_gateway_sessions")[2] == "2"
    assert dom.row(metric="ternd_gateway_connections_total")[2] == "2"
    assert any(tag == "path" and a.get("data-series") == "sessions"
               for tag, a in dom.svg["chart-gateway"])
