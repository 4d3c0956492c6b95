"""The admin HTTP endpoints (/ping, /stats, /metrics) and, through them, the
core HTTP server: keep-alive, pipelining, HEAD, limits and error answers."""

import re
import socket
import time

import pytest

import tnhelp


@pytest.fixture
def srv(ternd):
    t = ternd(daemon={"http": {"max_body_size": "1KiB", "max_header_size": "2KiB",
                               "keepalive_timeout": "65s", "request_timeout": "30s"}})
    t.start()
    yield t
    t.stop()


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def get_req(path, extra=""):
    return ("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path, extra)).encode()


def send_maybe_cut(sock, data):
    """sendall, tolerating a server that answers and closes before it has
    read everything (as it may for a request over a limit)."""
    try:
        sock.sendall(data)
    except OSError:
        pass


def test_ping(srv):
    r = srv.get("/ping")
    assert r.status == 200
    assert r.body == b"OK"
    assert r.header("content-type").startswith("text/plain")
    assert r.header("content-length") == "2"


def test_stats_json(srv):
    r = srv.get("/stats")
    assert r.status == 200
    assert r.header("content-type") == "application/json"
    doc = r.json()
    assert doc["version"] == tnhelp.header_define("core.h", "TN_VERSION_STRING")
    assert isinstance(doc["uptime_ms"], int) and doc["uptime_ms"] >= 0
    by_name = {}
    for m in doc["metrics"]:
        assert set(m) == {"name", "type", "labels", "value"}, m
        assert m["type"] in ("counter", "gauge")
        assert isinstance(m["labels"], dict)
        by_name.setdefault(m["name"], []).append(m)
    for name in ("ternd_info", "ternd_uptime_seconds", "ternd_resident_memory_bytes",
                 "ternd_connections_open"):
        assert name in by_name, name
    assert by_name["ternd_info"][0]["labels"] == {"version": doc["version"]}
    assert by_name["ternd_info"][0]["value"] == 1
    assert by_name["ternd_resident_memory_bytes"][0]["value"] > 1000000
    # this very request is an open connection
    assert by_name["ternd_connections_open"][0]["value"] >= 1


def test_stats_uptime_grows(srv):
    a = srv.get("/stats").json()["uptime_ms"]
    time.sleep(0.3)
    b = srv.get("/stats").json()["uptime_ms"]
    assert 250 <= b - a < tnhelp.scaled(5000)


def test_stats_text_and_bad_format(srv):
    r = srv.get("/stats?format=text")
    assert r.status == 200
    assert r.header("content-type").startswith("text/plain")
    text = r.text()
    assert re.search(r'^ternd_info\{version="[^"]+"\} 1$', text, re.M), text
    assert re.search(r"^ternd_uptime_seconds [0-9.e+-]+$", text, re.M), text
    assert not re.search(r"^#", text, re.M)
    assert srv.get("/stats?format=json").header("content-type") == "application/json"
    r = srv.get("/stats?format=xml")
    assert r.status == 400


PROM_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*)?\})? '
    r'(-?[0-9.]+(e[+-]?[0-9]+)?|NaN|[+-]Inf)$')


def test_metrics_prometheus_format(srv):
    r = srv.get("/metrics")
    assert r.status == 200
    assert r.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    text = r.text()
    assert text.endswith("\n")
    typed, helped, seen = {}, set(), []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helped, "HELP twice for " + name
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge")
            assert name not in typed, "TYPE twice for " + name
            typed[name] = kind
        else:
            m = PROM_SAMPLE.match(line)
            assert m, "not a Prometheus sample line: %r" % line
            name = m.group(1)
            assert name in typed, "sample before its TYPE: %r" % line
            seen.append(name)
    # samples of one name are grouped together
    groups = [n for i, n in enumerate(seen) if i == 0 or seen[i - 1] != n]
    assert len(groups) == len(set(groups)), groups
    assert typed["ternd_info"] == "gauge"
    version = tnhelp.header_define("core.h", "TN_VERSION_STRING")
    assert 'ternd_info{version="%s"} 1' % version in text.splitlines()


def test_not_found(srv):
    r = srv.get("/nope")
    assert r.status == 404
    r = srv.get("/ping/extra")
    assert r.status == 404


def test_method_not_allowed(srv):
    r = tnhelp.request(srv.admin_port, "POST", "/ping", body="x")
    assert r.status == 405
    assert "GET" in (r.header("allow") or "")
    r = tnhelp.request(srv.admin_port, "DELETE", "/stats")
    assert r.status == 405


def test_head(srv):
    with connect(srv.admin_port) as s:
        s.sendall(b"HEAD /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        r, rest = tnhelp.read_response(s, head=True)
        assert r.status == 200
        assert r.header("content-length") == "2"
        # no body followed: the next answer starts right after the head
        s.sendall(get_req("/ping"))
        r2, rest = tnhelp.read_response(s, rest)
        assert (r2.status, r2.body, rest) == (200, b"OK", b"")


def test_keep_alive(srv):
    with connect(srv.admin_port) as s:
        rest = b""
        for _ in range(5):
            s.sendall(get_req("/ping"))
            r, rest = tnhelp.read_response(s, rest)
            assert (r.status, r.body) == (200, b"OK")
            assert (r.header("connection") or "keep-alive").lower() != "close"
        assert rest == b""


def test_connection_close_honoured(srv):
    with connect(srv.admin_port) as s:
        s.sendall(get_req("/ping", "Connection: close\r\n"))
        r, rest = tnhelp.read_response(s)
        assert r.status == 200
        assert tnhelp.closed_by_peer(s)


def test_http10_closes(srv):
    with connect(srv.admin_port) as s:
        s.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
        data = tnhelp.recv_all(s, 5)
    assert data.startswith(b"HTTP/1.")
    assert b" 200 " in data.split(b"\r\n")[0]
    assert data.endswith(b"\r\n\r\nOK")


def test_pipelining_answers_in_order(srv):
    with connect(srv.admin_port) as s:
        s.sendall(get_req("/ping") + get_req("/nope") + get_req("/stats") +
                  b"HEAD /ping HTTP/1.1\r\nHost: x\r\n\r\n" + get_req("/metrics"))
        rest = b""
        statuses = []
        for head in (False, False, False, True, False):
            r, rest = tnhelp.read_response(s, rest, head=head)
            statuses.append((r.status, (r.header("content-type") or "").split(";")[0]))
        assert statuses == [(200, "text/plain"), (404, statuses[1][1]),
                            (200, "application/json"), (200, "text/plain"),
                            (200, "text/plain")]
        assert rest == b""


def test_pipelined_bytes_split_anywhere(srv):
    data = get_req("/ping") * 3
    with connect(srv.admin_port) as s:
        for i in range(0, len(data), 7):
            s.sendall(data[i:i + 7])
            time.sleep(0.005)
        rest = b""
        for _ in range(3):
            r, rest = tnhelp.read_response(s, rest)
            assert (r.status, r.body) == (200, b"OK")


def test_body_too_large_413(srv):
    # max_body_size is 1KiB
    body = b"x" * 4096
    with connect(srv.admin_port) as s:
        s.sendall(b"POST /stats HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        send_maybe_cut(s, body)
        r, _ = tnhelp.read_response(s)
    assert r.status == 413


def test_body_at_limit_is_read(srv):
    body = b"x" * 1024
    with connect(srv.admin_port) as s:
        s.sendall(b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n" + body)
        r, rest = tnhelp.read_response(s)
        # within the limit: routed normally (405: /ping is GET only)
        assert r.status == 405
        s.sendall(get_req("/ping"))
        r, rest = tnhelp.read_response(s, rest)
        assert r.status == 200


def test_chunked_body_too_large_413(srv):
    chunk = b"x" * 800
    req = (b"POST /stats HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
           (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 3 + b"0\r\n\r\n")
    with connect(srv.admin_port) as s:
        send_maybe_cut(s, req)
        r, _ = tnhelp.read_response(s)
    assert r.status == 413


def test_headers_too_large_431(srv):
    # max_header_size is 2KiB
    with connect(srv.admin_port) as s:
        send_maybe_cut(s, get_req("/ping", "X-Big: %s\r\n" % ("y" * 4096)))
        r, _ = tnhelp.read_response(s)
    assert r.status == 431


def test_garbage_400_and_close(srv):
    with connect(srv.admin_port) as s:
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        r, _ = tnhelp.read_response(s)
        assert r.status == 400
        assert tnhelp.closed_by_peer(s)


def test_bad_request_after_good_one(srv):
    with connect(srv.admin_port) as s:
        s.sendall(get_req("/ping") + b"GET / HTTP/9.9\r\n\x00\x01\r\n\r\n")
        r, rest = tnhelp.read_response(s)
        assert r.status == 200
        r, rest = tnhelp.read_response(s, rest)
        assert r.status == 400


def test_server_survives_abrupt_clients(srv):
    for _ in range(20):
        s = connect(srv.admin_port)
        s.sendall(b"GET /stats HTTP/1.1\r\nHost")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST
    assert srv.get("/ping").status == 200


def test_request_timeout_408(ternd):
    t = ternd(daemon={"http": {"request_timeout": "300ms"}})
    t.start()
    t0 = time.monotonic()  # before the connection: the timeout cannot start sooner
    with connect(t.admin_port) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # never finished
        data = tnhelp.recv_all(s, 5)
        elapsed = time.monotonic() - t0
    assert data.split(b"\r\n")[0].split(b" ")[1] == b"408", data
    assert 0.2 <= elapsed < tnhelp.scaled(3), elapsed
    t.stop()


def test_keepalive_timeout_closes_idle(ternd):
    t = ternd(daemon={"http": {"keepalive_timeout": "300ms"}})
    t.start()
    with connect(t.admin_port) as s:
        t0 = time.monotonic()  # the idle time starts after the answer, later
        s.sendall(get_req("/ping"))
        r, _ = tnhelp.read_response(s)
        assert r.status == 200
        assert tnhelp.closed_by_peer(s, 5)
        assert 0.2 <= time.monotonic() - t0 < tnhelp.scaled(3)
    t.stop()


def test_admin_off(ternd):
    t = ternd(daemon={"admin_listen": None})
    t.start()
    assert "admin HTTP on" not in t.log()
    t.stop()


def test_admin_on_unix_socket(ternd, tmp_path):
    path = tmp_path / "admin.sock"
    t = ternd(daemon={"admin_listen": "unix:%s" % path})
    t.start()  # no TCP port: ready when the log says so
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(get_req("/ping"))
        r, _ = tnhelp.read_response(s)
    assert (r.status, r.body) == (200, b"OK")
    t.stop()


def test_head_matches_get_length(srv):
    with connect(srv.admin_port) as s:
        s.sendall(get_req("/stats?format=text"))
        g, rest = tnhelp.read_response(s)
        s.sendall(b"HEAD /stats?format=text HTTP/1.1\r\nHost: x\r\n\r\n")
        h, rest = tnhelp.read_response(s, rest, head=True)
    assert h.status == 200 and h.body == b""
    # the metrics change between the two calls, their length hardly does
    assert abs(int(h.header("content-length")) - len(g.body)) < 64


def test_query_and_encoded_path(srv):
    assert srv.get("/ping?x=1&y=2").body == b"OK"
    assert srv.get("/p%69ng").body == b"OK"  # the path is %-decoded


def test_pipeline_longer_than_max_pipeline(ternd):
    # max_pipeline bounds the read-ahead, not what a client may send
    t = ternd(daemon={"http": {"max_pipeline": 2}})
    t.start()
    paths = ["/ping", "/nope", "/stats?format=xml"] * 7
    with connect(t.admin_port) as s:
        s.sendall(b"".join(get_req(p) for p in paths))
        rest = b""
        got = []
        for _ in paths:
            r, rest = tnhelp.read_response(s, rest)
            got.append(r.status)
        assert rest == b""
    assert got == [200, 404, 400] * 7
    t.stop()


def test_max_conns_per_server(ternd):
    t = ternd(daemon={"http": {"max_conns": 1}})
    t.start()
    time.sleep(0.2)  # the readiness probe's connection is gone
    with connect(t.admin_port) as first:
        first.sendall(get_req("/ping"))
        r, _ = tnhelp.read_response(first)
        assert r.status == 200
        with connect(t.admin_port) as second:
            second.sendall(get_req("/ping"))
            assert tnhelp.closed_by_peer(second, 3)
    time.sleep(0.2)
    assert t.get("/ping").status == 200
    t.stop()
