"""TLS (OpenSSL) in the connection layer, seen from real clients: the NSQ
tls_v1 upgrade after IDENTIFY (Python's ssl module wraps the socket once
the plaintext reply arrived), tls_required, the broker's HTTPS API
(`openssl s_client` and Python), client certificates, and clients that do
not speak TLS or do not trust the server: logged, closed, server fine.
Certificates are made at test time with the openssl command."""

import json
import shutil
import socket
import ssl
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import tnhelp

sys.path.insert(0, str(Path(__file__).resolve().parent / "broker"))
import nsqwire as nw  # noqa: E402
from brokerhelp import modules_dir, tcp_open  # noqa: E402

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is missing")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    server = tnhelp.self_signed_cert(d, "server")
    other = tnhelp.self_signed_cert(d, "other")  # a different, untrusted identity
    return {"cert": server[0], "key": server[1], "other_cert": other[0], "other_key": other[1]}


@pytest.fixture
def tls_broker(ternd, certs):
    """A started broker with broker.tls set; extra keys go to the section."""
    if not (modules_dir() / "broker.so").exists():
        pytest.skip("broker.so missing: build first")

    def make(tls=None, **section):
        tcp, http = tnhelp.free_port(), tnhelp.free_port()
        sec = {"tcp_listen": "127.0.0.1:%d" % tcp, "http_listen": "127.0.0.1:%d" % http,
               "tls": tls or {"cert": str(certs["cert"]), "key": str(certs["key"])}}
        sec.update(section)
        t = ternd(daemon={"modules_dir": str(modules_dir())}, sections={"broker": sec})
        t.tcp_port, t.http_port = tcp, http
        t.start()
        tnhelp.wait_for(lambda: tcp_open(tcp), 10, what="broker TCP port")
        return t
    return make


def client_ctx(certs, cafile=None, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=str(cafile or certs["cert"]))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def upgrade(c, certs, **identify):
    """IDENTIFY with tls_v1, check the plaintext reply, wrap the socket and
    read the "OK" that comes over TLS. Returns the IDENTIFY reply."""
    fields = {"feature_negotiation": True, "tls_v1": True}
    fields.update(identify)
    c.cmd("IDENTIFY", json.dumps(fields).encode())
    reply = json.loads(c.expect(nw.FRAME_RESPONSE))
    assert reply["tls_v1"] is True
    assert c.buf == b"", "plaintext after the IDENTIFY reply: %r" % c.buf
    c.sock = client_ctx(certs).wrap_socket(c.sock, server_hostname="127.0.0.1")
    c.expect_ok()
    return reply


def test_nsq_tls_v1_upgrade_pub_sub(tls_broker, certs):
    b = tls_broker()
    with nw.Conn(b.tcp_port) as cons, nw.Conn(b.tcp_port) as prod:
        upgrade(cons, certs)
        upgrade(prod, certs)
        assert prod.sock.version() in ("TLSv1.2", "TLSv1.3")
        cons.sub("secure", "ch")
        cons.expect_ok()
        cons.rdy(100)
        big = bytes(range(256)) * 2048  # 512 KiB: many TLS records both ways
        prod.pub("secure", b"hello")
        prod.expect_ok()
        prod.pub("secure", big)
        prod.expect_ok()
        prod.mpub("secure", [b"m%d" % i for i in range(50)])
        prod.expect_ok()
        got = [cons.read_message() for _ in range(52)]
        assert got[0].body == b"hello" and got[1].body == big
        assert [m.body for m in got[2:]] == [b"m%d" % i for i in range(50)]
        for m in got:
            cons.fin(m.id)
        # the HTTP stats show the connection's TLS state like nsqd's
        stats = tnhelp.request(b.http_port, "GET", "/stats?format=json").json()
        clients = stats["topics"][0]["channels"][0]["clients"]
        assert clients[0]["tls"] is True
        assert clients[0]["tls_version"] == cons.sock.version()
        assert clients[0]["tls_cipher_suite"] == cons.sock.cipher()[0]
        # a clean close: our close_notify is answered
        cons.sock.unwrap()


def test_tls_v1_with_deflate(tls_broker, certs):
    """nsqd's order: JSON reply, handshake, OK over TLS, then deflate's OK
    compressed inside TLS."""
    b = tls_broker()
    with nw.Conn(b.tcp_port) as c:
        reply = upgrade(c, certs, deflate=True, deflate_level=3)
        assert reply["deflate"] is True
        c.zin = zlib.decompressobj(-15)
        c.zout = zlib.compressobj(3, zlib.DEFLATED, -15)
        # bytes read with the TLS "OK" are compressed already
        pending, c.buf = c.buf, b""
        c.buf = c.zin.decompress(pending)
        c.expect_ok()
        c.pub("z", b"compressed and encrypted")
        c.expect_ok()


def test_tls_v1_not_offered_without_tls(ternd):
    """No broker.tls: the reply says tls_v1 false and the client stays in
    plaintext (as with nsqd)."""
    tcp = tnhelp.free_port()
    t = ternd(daemon={"modules_dir": str(modules_dir())},
              sections={"broker": {"tcp_listen": "127.0.0.1:%d" % tcp, "http_listen": None}})
    t.start()
    tnhelp.wait_for(lambda: tcp_open(tcp), 10, what="broker TCP port")
    with nw.Conn(tcp) as c:
        reply = c.identify(feature_negotiation=True, tls_v1=True)
        assert reply["tls_v1"] is False
        c.pub("plain", b"x")
        c.expect_ok()


def test_tls_required(tls_broker, certs):
    b = tls_broker(tls_required=True)
    with nw.Conn(b.tcp_port) as c:
        c.pub("t", b"too early")
        frames = c.expect_closed()
        assert frames and frames[0] == (nw.FRAME_ERROR, b"E_INVALID cannot PUB in current state")
    with nw.Conn(b.tcp_port) as c:
        upgrade(c, certs)
        c.pub("t", b"fine")
        c.expect_ok()


def test_plain_client_on_upgraded_connection_is_dropped(tls_broker, certs):
    """The client asks for tls_v1 and then keeps talking plaintext: the
    handshake fails, the server logs it and closes; others are unaffected."""
    b = tls_broker()
    mark = b.log_size()
    with nw.Conn(b.tcp_port) as c:
        c.cmd("IDENTIFY", json.dumps({"feature_negotiation": True, "tls_v1": True}).encode())
        c.expect(nw.FRAME_RESPONSE)
        c.send(b"PUB t\n\x00\x00\x00\x01x")
        c.expect_closed()
    b.wait_log(r"\[info\] conn: 127\.0\.0\.1:\d+: TLS handshake failed: ", since=mark)
    with nw.Conn(b.tcp_port) as c:
        upgrade(c, certs)
        c.pub("t", b"still fine")
        c.expect_ok()
    assert b.alive()


# ---- HTTPS ---------------------------------------------------------------------------


def https_broker(tls_broker, **kw):
    port = tnhelp.free_port()
    b = tls_broker(https_listen="127.0.0.1:%d" % port, **kw)
    b.https_port = port
    tnhelp.wait_for(lambda: tcp_open(port), 10, what="HTTPS port")
    return b


def https_request(port, ctx, path, method="GET", body=None):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            data = body or b""
            s.sendall(("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n"
                       "Connection: close\r\n\r\n" % (method, path, len(data))).encode() + data)
            resp, _ = tnhelp.read_response(s)
            return resp


def test_https_ping_with_openssl_s_client(tls_broker, certs):
    b = https_broker(tls_broker)
    req = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    out = subprocess.run([OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % b.https_port,
                          "-CAfile", str(certs["cert"]), "-verify_return_error", "-quiet",
                          "-servername", "127.0.0.1"],
                         input=req, capture_output=True, timeout=20)
    assert out.stdout.startswith(b"HTTP/1.1 200 OK\r\n"), (out.stdout, out.stderr)
    assert out.stdout.endswith(b"\r\n\r\nOK"), out.stdout


def test_https_pub_and_stats_with_python(tls_broker, certs):
    b = https_broker(tls_broker)
    ctx = client_ctx(certs)
    assert https_request(b.https_port, ctx, "/pub?topic=web", "POST", b"over https").status == 200
    stats = https_request(b.https_port, ctx, "/stats?format=json").json()
    assert stats["topics"][0]["topic_name"] == "web"
    assert stats["topics"][0]["message_count"] == 1
    # the plaintext port serves the same API
    assert tnhelp.request(b.http_port, "GET", "/ping").status == 200


def test_plain_http_to_https_port(tls_broker, certs):
    b = https_broker(tls_broker)
    mark = b.log_size()
    out = tnhelp.http_raw(b.https_port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" not in out
    # at most a TLS alert record (content type 21) before the close
    assert out == b"" or out[0] == 0x15, out[:20]
    b.wait_log(r"conn: 127\.0\.0\.1:\d+: TLS handshake failed: .*", since=mark)
    assert https_request(b.https_port, client_ctx(certs), "/ping").status == 200


def test_untrusting_client_is_closed_and_logged(tls_broker, certs):
    """A client that does not trust our certificate aborts the handshake:
    the server logs the alert and carries on."""
    b = https_broker(tls_broker)
    mark = b.log_size()
    with pytest.raises(ssl.SSLCertVerificationError):
        https_request(b.https_port, client_ctx(certs, cafile=certs["other_cert"]), "/ping")
    b.wait_log(r"TLS handshake failed: .*(unknown ca|certificate unknown|bad certificate)",
               since=mark)
    assert https_request(b.https_port, client_ctx(certs), "/ping").status == 200


def test_client_certificates_with_ca(tls_broker, certs):
    """tls.ca: clients must show a certificate the CA signed."""
    tls = {"cert": str(certs["cert"]), "key": str(certs["key"]), "ca": str(certs["cert"]),
           "min_version": "1.2"}
    b = https_broker(tls_broker, tls=tls)
    good = client_ctx(certs, cert=certs["cert"], key=certs["key"])
    assert https_request(b.https_port, good, "/ping").status == 200
    for ctx in (client_ctx(certs), client_ctx(certs, cert=certs["other_cert"],
                                              key=certs["other_key"])):
        with pytest.raises((ssl.SSLError, ConnectionResetError, EOFError, BrokenPipeError)):
            https_request(b.https_port, ctx, "/ping")
    assert https_request(b.https_port, good, "/ping").status == 200


def test_min_version_1_3_refuses_1_2(tls_broker, certs):
    b = https_broker(tls_broker, tls={"cert": str(certs["cert"]), "key": str(certs["key"]),
                                      "min_version": "1.3"})
    old = client_ctx(certs)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        https_request(b.https_port, old, "/ping")
    assert https_request(b.https_port, client_ctx(certs), "/ping").status == 200


def test_bad_tls_config_is_reported(ternd, certs, tmp_path):
    missing = tmp_path / "nope.pem"
    t = ternd(daemon={"modules_dir": str(modules_dir())},
              sections={"broker": {"tcp_listen": tnhelp.ANY_PORT, "http_listen": None,
                                   "https_listen": tnhelp.ANY_PORT,
                                   "tls": {"cert": str(missing), "key": str(certs["key"])}}})
    r = t.check()
    assert r.returncode == 1
    assert "broker.tls: cannot load the certificate %s" % missing in r.stderr, r.stderr
    t = ternd(daemon={"modules_dir": str(modules_dir())},
              sections={"broker": {"tcp_listen": tnhelp.ANY_PORT, "http_listen": None,
                                   "tls": {"cert": str(certs["cert"]),
                                           "key": str(certs["other_key"])}}})
    r = t.check()
    assert r.returncode == 1 and "mismatch" in r.stderr, r.stderr
    assert "broker.tls: cannot load the key %s" % certs["other_key"] in r.stderr
    t = ternd(daemon={"modules_dir": str(modules_dir())},
              sections={"broker": {"tcp_listen": tnhelp.ANY_PORT, "http_listen": None,
                                   "https_listen": tnhelp.ANY_PORT}})
    r = t.check()
    assert r.returncode == 1 and "https_listen: needs tls.cert and tls.key" in r.stderr, r.stderr


# ---- gateway: wss and TCP over TLS -----------------------------------------------------

GW_DIR = Path(__file__).resolve().parent / "gateway"


def gw_start(ternd, certs, tmp_path, cert=None, key=None):
    """A gateway with a TLS TCP listener and a wss listener (route_test.lua:
    route 1 echoes), with the test certificate or cert/key. Returns (t,
    tcp_port, ws_port)."""
    if not (modules_dir() / "gateway.so").exists():
        pytest.skip("gateway.so missing: build first")
    tcp, ws = tnhelp.free_port(), tnhelp.free_port()
    tls = "tls: { cert: %s, key: %s }" % (cert or certs["cert"], key or certs["key"])
    text = ("gateway:\n  listen:\n"
            "    - { proto: tcp, addr: 127.0.0.1:%d, %s }\n"
            "    - { proto: ws, addr: 127.0.0.1:%d, path: /ws, %s }\n"
            "  lua: { script: %s }\n" % (tcp, tls, ws, tls, GW_DIR / "route_test.lua"))
    t = ternd(daemon={"modules_dir": str(modules_dir())}, text=text)
    t.start()
    tnhelp.wait_for(lambda: tcp_open(ws), 10, what="wss port")
    return t, tcp, ws


def test_gateway_wss_with_websockets(ternd, certs, tmp_path):
    websockets = pytest.importorskip("websockets")
    import asyncio
    sys.path.insert(0, str(GW_DIR))
    from gwhelp import Codec
    codec = Codec()
    t, _, ws_port = gw_start(ternd, certs, tmp_path)

    async def go():
        async with websockets.connect("wss://127.0.0.1:%d/ws" % ws_port,
                                      ssl=client_ctx(certs), compression=None) as ws:
            for i, data in enumerate((b"hello", b"y" * 50000)):
                await ws.send(codec.packet(1, i, data))
                p, rest = codec.decode(await ws.recv())
                assert (p["route"], p["seq"], p["data"], rest) == (1, i, b"echo:" + data, b"")
    asyncio.run(asyncio.wait_for(go(), 20))
    # plain ws:// to the wss port: the handshake fails, logged, server fine
    mark = t.log_size()

    async def plain():
        async with websockets.connect("ws://127.0.0.1:%d/ws" % ws_port, open_timeout=5):
            pass
    with pytest.raises(Exception):
        asyncio.run(asyncio.wait_for(plain(), 10))
    t.wait_log(r"TLS handshake failed", since=mark)
    assert t.alive()


def test_gateway_tcp_over_tls(ternd, certs, tmp_path):
    sys.path.insert(0, str(GW_DIR))
    from gwhelp import Codec
    codec = Codec()
    t, tcp_port, _ = gw_start(ternd, certs, tmp_path)
    raw = socket.create_connection(("127.0.0.1", tcp_port), timeout=5)
    with client_ctx(certs).wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(codec.packet(1, 9, b"over tls"))
        buf = b""
        while True:
            p, rest = codec.decode(buf)
            if p:
                break
            buf += s.recv(65536)
        assert (p["route"], p["seq"], p["data"]) == (1, 9, b"echo:over tls")


def test_admin_over_https(ternd, certs):
    """daemon.admin_tls: /ping, /stats and /metrics over HTTPS."""
    port = tnhelp.free_port()
    t = ternd(daemon={"admin_listen": "127.0.0.1:%d" % port,
                      "admin_tls": {"cert": str(certs["cert"]), "key": str(certs["key"])}})
    t.start(wait=False)
    t.wait_log(r"\] core: ready")
    assert "core: admin HTTPS on 127.0.0.1:%d" % port in t.log()
    ctx = client_ctx(certs)
    r = https_request(port, ctx, "/ping")
    assert (r.status, r.body) == (200, b"OK")
    assert "ternd_conn_accepted_total" in https_request(port, ctx, "/metrics").text()
    t.stop()


def test_reload_rotates_the_certificate(tls_broker, certs):
    """SIGHUP reads the certificate again: new connections (HTTPS and the
    tls_v1 upgrade) get the new one; an established TLS connection goes on."""
    b = https_broker(tls_broker)
    with nw.Conn(b.tcp_port) as old:
        upgrade(old, certs)
        b.sections["broker"]["tls"] = {"cert": str(certs["other_cert"]),
                                       "key": str(certs["other_key"])}
        assert "reload done" in b.reload()
        new_ctx = client_ctx(certs, cafile=certs["other_cert"])
        assert https_request(b.https_port, new_ctx, "/ping").status == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            https_request(b.https_port, client_ctx(certs), "/ping")
        with nw.Conn(b.tcp_port) as c:
            c.cmd("IDENTIFY", json.dumps({"feature_negotiation": True, "tls_v1": True}).encode())
            c.expect(nw.FRAME_RESPONSE)
            c.sock = new_ctx.wrap_socket(c.sock, server_hostname="127.0.0.1")
            c.expect_ok()
        old.pub("rot", b"old connection still works")
        old.expect_ok()


def test_client_gone_before_handshake_frees_the_connection(tls_broker, certs):
    """IDENTIFY with tls_v1, then the client leaves without a handshake:
    the "OK" waiting for TLS is dropped and the connection closed (not kept
    open forever waiting to send it)."""
    b = tls_broker()
    for _ in range(3):
        with nw.Conn(b.tcp_port) as c:
            c.cmd("IDENTIFY", json.dumps({"feature_negotiation": True, "tls_v1": True}).encode())
            c.expect(nw.FRAME_RESPONSE)
    # open then: only the admin connection asking
    tnhelp.wait_for(lambda: b.metrics()["ternd_connections_open"] == 1, 5,
                    what="the abandoned connections to close")


def test_https_pipelining_and_big_body(tls_broker, certs):
    """40 requests in one TLS write (past max_pipeline 16: the HTTP layer
    pauses reading with plaintext still to hand over) and a 1 MiB MPUB
    body: every answer comes, in order."""
    b = https_broker(tls_broker)
    raw = socket.create_connection(("127.0.0.1", b.https_port), timeout=10)
    with client_ctx(certs).wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n" * 40)
        buf = b""
        for _ in range(40):
            r, buf = tnhelp.read_response(s, buf)
            assert (r.status, r.body) == (200, b"OK")
        body = b"\n".join(b"%06d" % i + b"x" * 1000 for i in range(1000))
        s.sendall(b"POST /mpub?topic=bulk HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                  % len(body) + body)
        r, buf = tnhelp.read_response(s, buf)
        assert r.status == 200, r.body
    stats = tnhelp.request(b.http_port, "GET", "/stats?format=json&topic=bulk").json()
    assert stats["topics"][0]["message_count"] == 1000


def test_gateway_wss_frame_sent_with_the_upgrade(ternd, certs, tmp_path):
    """The upgrade request and the first WebSocket frame in one TLS write:
    the frame, left in the connection's input when the HTTP layer hands
    over, still reaches the WebSocket handler."""
    sys.path.insert(0, str(GW_DIR))
    import base64
    import os
    import struct
    import time
    from gwhelp import Codec
    codec = Codec()
    _, _, ws_port = gw_start(ternd, certs, tmp_path)
    pkt = codec.packet(1, 5, b"early")
    mask = os.urandom(4)
    frame = struct.pack(">BB", 0x82, 0x80 | len(pkt)) + mask + bytes(
        c ^ mask[i % 4] for i, c in enumerate(pkt))
    req = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
           % base64.b64encode(os.urandom(16)))
    raw = socket.create_connection(("127.0.0.1", ws_port), timeout=5)
    with client_ctx(certs).wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(req + frame)
        buf, deadline = b"", time.monotonic() + 5
        while time.monotonic() < deadline:
            if b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                if len(rest) >= 2 and len(rest) >= 2 + (rest[1] & 0x7f):
                    break
            chunk = s.recv(65536)
            assert chunk, "closed; got %r" % buf
            buf += chunk
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert rest[0] == 0x82
        p, _ = codec.decode(rest[2:2 + (rest[1] & 0x7f)])
        assert (p["route"], p["seq"], p["data"]) == (1, 5, b"echo:early")


# ---- certificate rotation on SIGHUP: gateway listeners, admin ---------------------------

def peer_der(port, keep=False):
    """The certificate (DER) the server on port presents, as any client
    sees it (no verification). keep: also return the open TLS socket."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))
    der = s.getpeercert(binary_form=True)
    if keep:
        return der, s
    s.close()
    return der


def file_der(path):
    return ssl.PEM_cert_to_DER_cert(Path(path).read_text())


def rotating_cert(tmp_path):
    """A cert/key pair at fixed paths, and a function writing a fresh
    identity over them (what a certificate renewal does)."""
    live = tmp_path / "live"
    live.mkdir()
    paths = (live / "cert.pem", live / "key.pem")
    count = [0]

    def renew():
        count[0] += 1
        cert, key = tnhelp.self_signed_cert(tmp_path, "gen%d" % count[0])
        shutil.copy(cert, paths[0])
        shutil.copy(key, paths[1])
        return file_der(paths[0])
    return paths, renew


def test_gateway_reload_rotates_tls_and_wss(ternd, certs, tmp_path):
    """The file behind gateway tls (TCP and wss) is renewed, SIGHUP: new
    connections get the new certificate, the established one keeps its
    session; a broken file is refused at reload and the current one stays."""
    sys.path.insert(0, str(GW_DIR))
    from gwhelp import Codec
    codec = Codec()
    (cert, key), renew = rotating_cert(tmp_path)
    first = renew()
    t, tcp_port, ws_port = gw_start(ternd, certs, tmp_path, cert=cert, key=key)
    assert peer_der(tcp_port) == first and peer_der(ws_port) == first
    der, old = peer_der(tcp_port, keep=True)
    with old:
        second = renew()
        assert second != first
        log = t.reload()
        assert "reload done" in log
        assert "127.0.0.1:%d: certificate reloaded" % tcp_port in log
        assert "127.0.0.1:%d: certificate reloaded" % ws_port in log
        assert peer_der(tcp_port) == second and peer_der(ws_port) == second
        # the connection made before goes on, with the certificate it had
        old.sendall(codec.packet(1, 3, b"still here"))
        buf = b""
        while True:
            p, buf = codec.decode(buf)
            if p:
                break
            chunk = old.recv(65536)
            assert chunk, "the old connection was closed"
            buf += chunk
        assert p["data"] == b"echo:still here"
        assert old.getpeercert(binary_form=True) == first
    # a broken renewal: logged, and the server keeps presenting the second
    Path(cert).write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    log = t.reload()
    assert "reload rejected" in log and str(cert) in log
    assert peer_der(tcp_port) == second and peer_der(ws_port) == second
    assert t.alive()


def test_admin_tls_reload_rotates(ternd, tmp_path):
    """daemon.admin_tls: the renewed certificate is served after SIGHUP
    (checked with openssl s_client, by serial); a key that does not match
    it is refused and the current certificate stays."""
    (cert, key), renew = rotating_cert(tmp_path)
    first = renew()
    port = tnhelp.free_port()
    t = ternd(daemon={"admin_listen": "127.0.0.1:%d" % port,
                      "admin_tls": {"cert": str(cert), "key": str(key)}})
    t.start(wait=False)
    t.wait_log(r"\] core: ready")

    def served_serial():
        out = subprocess.run([OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port],
                             input=b"", capture_output=True, timeout=20).stdout
        pem = out[out.index(b"-----BEGIN CERTIFICATE-----"):]
        return subprocess.run([OPENSSL, "x509", "-noout", "-serial"], input=pem,
                              capture_output=True, timeout=20, check=True).stdout

    def file_serial():
        return subprocess.run([OPENSSL, "x509", "-noout", "-serial", "-in", str(cert)],
                              capture_output=True, timeout=20, check=True).stdout
    assert peer_der(port) == first
    before = served_serial()
    assert before == file_serial()
    second = renew()
    log = t.reload()
    assert "reload done" in log and "daemon.admin_tls: certificate reloaded" in log
    assert served_serial() == file_serial() != before
    assert peer_der(port) == second
    # the key of another identity: refused, the served certificate stays
    other_key = tnhelp.self_signed_cert(tmp_path, "stranger")[1]
    shutil.copy(other_key, key)
    log = t.reload()
    assert "reload rejected" in log and "admin_tls" in log
    assert peer_der(port) == second
    t.stop()
