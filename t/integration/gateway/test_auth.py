"""Gateway logins (gateway.auth) answered by the auth_file plugin: the
secret on the login route gets nsqd's AUTH reply, then each packet is judged
per route (auth.authorize, topic = the route number) and each group join
per (route, group); bad secrets, packets before the login and slow logins
close the session; with auth off nothing changes."""

import json
import os
import time

import pytest

import tnhelp
from gwhelp import Client, Codec
from wsraw import RawWS

SCRIPT = r"""
function on_connect(s)
    -- runs before the login: no identity yet
    s:set("before", s.identity == nil and "none" or s.identity)
end

function on_packet(s, route, seq, data)
    if route == 9 then
        local ok, err = ternd.gateway.join(data, s)
        s:reply(ok and ("joined " .. data) or ("refused " .. tostring(err)))
        return
    end
    s:reply(string.format("%s|%s|%s|%d|%s", tostring(s.identity), tostring(s:get("identity")),
                          s:get("before"), route, data))
end
"""

SECRETS = {"secrets": [
    {"secret": "alice-secret", "identity": "alice",
     "identity_url": "https://example.invalid/alice",
     "authorizations": [
         {"topic": "^(1|2)$", "permissions": ["publish"]},
         {"topic": "^9$", "channels": ["^room-[0-9]+$"],
          "permissions": ["publish", "subscribe"]}]},
    {"secret": "bob-secret", "identity": "bob",
     "authorizations": [{"topic": "^2$", "permissions": ["publish"]}]},
]}


def plugin_so():
    return tnhelp.BUILD / "lib" / "ternd" / "plugins" / "auth_file.so"


def start(gateway, auth="auth: { enabled: true }", plugin=True, extra="", ws=False):
    """The gateway with SCRIPT and `auth`, and auth_file serving SECRETS."""
    if plugin and not plugin_so().exists():
        pytest.skip("auth_file.so missing: build first")
    t = gateway(SCRIPT, ws=ws, extra=auth + "\n" + extra, start=False)
    if plugin:
        os.symlink(os.path.realpath(plugin_so()), t.tmp / "plugins" / "auth_file.so")
        t.secrets = t.tmp / "secrets.json"
        t.secrets.write_text(json.dumps(SECRETS))
        os.chmod(t.secrets, 0o600)
        t.sections["auth_file"] = {"file": str(t.secrets)}
    t.write_conf()
    t.start()  # modules listen before /ping answers
    return t


def login(c, secret, route=0, seq=1):
    p = c.ask(route, seq, secret)
    assert (p["route"], p["seq"]) == (route, seq)
    return json.loads(p["data"])


def closed(c):
    """The gateway closed c (after what it had sent)."""
    with pytest.raises(EOFError):
        while True:
            c.recv()
    return True


def test_good_secret_then_routes_allowed_and_denied(gateway):
    t = start(gateway)
    with Client(t.tcp_port) as c:
        assert login(c, b"alice-secret") == {
            "identity": "alice", "identity_url": "https://example.invalid/alice",
            "permission_count": 2}
        # on_packet sees the identity; on_connect ran before the login
        assert c.ask(1, 2, b"x")["data"] == b"alice|alice|none|1|x"
        assert c.ask(2, 3, b"y")["data"] == b"alice|alice|none|2|y"
        # route 3 is in no rule: refused with an error reply, on_packet not run
        p = c.ask(3, 4, b"z")
        assert (p["route"], p["seq"]) == (3, 4)
        assert json.loads(p["data"]) == {"error": "E_UNAUTHORIZED",
                                         "message": "AUTH failed for route 3"}
        # the session stays (auth.close_on_deny is off) and keeps its rights
        assert c.ask(1, 5, b"again")["data"] == b"alice|alice|none|1|again"
        # joins are judged as subscribe on (route, group)
        assert c.ask(9, 6, b"room-7")["data"] == b"joined room-7"
        assert c.ask(9, 7, b"lobby")["data"] == b"refused Permission denied"
        # a second login is an error, not a new identity
        assert login(c, b"bob-secret", seq=8) == {"error": "E_INVALID",
                                                  "message": "AUTH already set"}
        assert c.ask(1, 9, b"still")["data"] == b"alice|alice|none|1|still"
    with Client(t.tcp_port) as c:
        assert login(c, b"bob-secret")["identity"] == "bob"
        assert json.loads(c.ask(1, 2, b"x")["data"])["error"] == "E_UNAUTHORIZED"
        assert c.ask(2, 3, b"y")["data"] == b"bob|bob|none|2|y"
    m = t.metrics()
    assert m['ternd_gateway_logins_total{result="accepted"}'] == 2
    assert m['ternd_gateway_auth_denied_total'] == 3
    assert m['ternd_auth_file_checks_total{result="accepted"}'] == 2
    assert m['ternd_auth_file_authorizations_total{result="denied"}'] == 3
    assert 'gateway alice (127.0.0.1:' in t.log()  # auth_file logs the denial


def test_bad_secret_refused_and_closed(gateway):
    t = start(gateway)
    for bad in (b"nope", b"alice-secre", b"alice-secret2", b""):
        with Client(t.tcp_port) as c:
            assert login(c, bad) == {"error": "E_AUTH_FAILED", "message": "AUTH failed"}
            assert closed(c)
    # a packet before the login: refused, closed, never reaches on_packet
    with Client(t.tcp_port) as c:
        p = c.ask(1, 1, b"early")
        assert json.loads(p["data"]) == {"error": "E_AUTH_FIRST",
                                         "message": "AUTH required before route 1"}
        assert closed(c)
    m = t.metrics()
    assert m['ternd_gateway_logins_total{result="refused"}'] == 5
    assert m['ternd_gateway_logins_total{result="accepted"}'] == 0
    assert m['ternd_auth_file_checks_total{result="unknown"}'] == 4


def test_no_login_within_timeout_closed(gateway):
    # 300 ms, stretched under valgrind: the second client's login must fit
    ms = round(300 * tnhelp.TIMEOUT_SCALE)
    t = start(gateway, "auth: { enabled: true, route: 100, timeout: %dms }" % ms)
    with Client(t.tcp_port) as slow:
        # heartbeats are answered but do not count as a login
        slow.sock.sendall(slow.codec.heartbeat())
        assert slow.recv()["heartbeat"]
        p = slow.recv(timeout=tnhelp.scaled(10))
        assert (p["route"], p["seq"]) == (100, 0)
        assert json.loads(p["data"])["error"] == "E_AUTH_TIMEOUT"
        assert closed(slow)
    # a session that logged in in time outlives the deadline
    with Client(t.tcp_port) as c:
        assert login(c, b"alice-secret", route=100)["identity"] == "alice"
        tnhelp.wait_for(lambda: t.metrics()['ternd_gateway_logins_total{result="timeout"}'] >= 1,
                        10)
        time.sleep(2 * ms / 1000)  # past the deadline
        assert c.ask(1, 1, b"late")["data"] == b"alice|alice|none|1|late"
    assert "no login within %d ms, closing" % ms in t.log()


def test_close_on_deny(gateway):
    t = start(gateway, "auth: { enabled: true, close_on_deny: true }")
    with Client(t.tcp_port) as c:
        login(c, b"bob-secret")
        assert json.loads(c.ask(1, 2, b"x")["data"])["error"] == "E_UNAUTHORIZED"
        assert closed(c)


def test_no_auth_plugin_refuses_every_login(gateway):
    t = start(gateway, plugin=False)
    with Client(t.tcp_port) as c:
        assert login(c, b"alice-secret")["error"] == "E_AUTH_FAILED"
        assert closed(c)
    assert "no auth plugin (auth_file) answers auth.check" in t.log()


def test_auth_disabled_unchanged(gateway):
    # auth_file loaded with its secrets, but the gateway's auth is off
    t = start(gateway, auth="auth: { enabled: false }")
    with Client(t.tcp_port) as c:
        # route 0 is a route like any other, no identity
        assert c.ask(0, 1, b"alice-secret")["data"] == b"nil|nil|none|0|alice-secret"
        assert c.ask(3, 2, b"z")["data"] == b"nil|nil|none|3|z"
        assert c.ask(9, 3, b"lobby")["data"] == b"joined lobby"
    m = t.metrics()
    assert m['ternd_gateway_logins_total{result="accepted"}'] == 0
    assert m['ternd_auth_file_checks_total{result="accepted"}'] == 0


def test_route_must_fit_route_bytes(gateway):
    t = gateway(SCRIPT, extra="packet: { route_bytes: 1 }\nauth: { enabled: true, route: 200 }",
                start=False)
    r = t.check()
    assert r.returncode != 0
    assert "gateway.auth.route: must fit packet.route_bytes (-128..127)" in r.stderr + r.stdout


def test_login_with_one_byte_routes(gateway):
    t = start(gateway, "auth: { enabled: true, route: -1 }", extra="packet: { route_bytes: 1 }")
    with Client(t.tcp_port, Codec(1, 2)) as c:
        assert login(c, b"alice-secret", route=-1)["identity"] == "alice"
        assert c.ask(2, 1, b"y")["data"] == b"alice|alice|none|2|y"


def test_login_over_websocket(gateway):
    """The login sits above the transports: the same over WebSocket, where a
    refused secret ends with close code 1008 after the reply."""
    t = start(gateway, ws=True, extra="ws_close_timeout: 200ms")
    codec = Codec()

    def ask(ws, route, seq, data):
        ws.frame(2, codec.packet(route, seq, data))
        fin, rsv, op, payload = ws.recv_frame()
        assert op == 2
        p, rest = codec.decode(payload)
        assert rest == b"" and (p["route"], p["seq"]) == (route, seq)
        return p["data"]

    ws = RawWS(t.ws_port)
    assert json.loads(ask(ws, 0, 1, b"alice-secret"))["identity"] == "alice"
    assert ask(ws, 1, 2, b"x") == b"alice|alice|none|1|x"
    assert json.loads(ask(ws, 3, 3, b"z"))["error"] == "E_UNAUTHORIZED"
    ws.close()
    ws = RawWS(t.ws_port)
    assert json.loads(ask(ws, 0, 1, b"wrong"))["error"] == "E_AUTH_FAILED"
    assert ws.expect_close() == 1008
    assert tnhelp.closed_by_peer(ws.sock)


def test_reload_applies_to_new_sessions(gateway):
    """auth settings follow SIGHUP for sessions opened afterwards; a session
    keeps the mode it started with."""
    t = start(gateway, auth="auth: { enabled: false }")
    with Client(t.tcp_port) as before:
        assert before.ask(3, 1, b"a")["data"] == b"nil|nil|none|3|a"
        t.text = t.text.replace("auth: { enabled: false }",
                                "auth: { enabled: true, route: 50 }")
        assert "reload done" in t.reload()
        # the open session is not asked to log in
        assert before.ask(3, 2, b"b")["data"] == b"nil|nil|none|3|b"
        with Client(t.tcp_port) as after:
            assert json.loads(after.ask(3, 1, b"c")["data"])["error"] == "E_AUTH_FIRST"
            assert closed(after)
        with Client(t.tcp_port) as after:
            assert login(after, b"alice-secret", route=50)["identity"] == "alice"
            assert after.ask(1, 2, b"d")["data"] == b"alice|alice|none|1|d"
