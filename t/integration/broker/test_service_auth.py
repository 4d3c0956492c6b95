"""What the broker offers other modules, through a test plugin
(t/modules/brokerplug.c): publishing via the "broker" service, AUTH
checked by an auth.check subscriber, and the broker.publish event's veto.
Also AUTH's errors when broker.auth is on and nobody vouches."""

import json

import pytest

import nsqwire as nw
import tnhelp
from nsqwire import FRAME_ERROR, FRAME_RESPONSE


def plugin_path():
    p = tnhelp.test_modules_dir() / "brokerplug.so"
    if not p.exists():
        pytest.skip("brokerplug.so missing: run `make check` first")
    return str(p)


def test_service_auth_and_veto(broker):
    b = broker(http=False, auth=True, daemon={"plugins": [plugin_path()]})
    assert "brokerplug: published: success, depth 2" in b.log()
    c = nw.Conn(b.tcp_port)
    c.sub("plugin-svc", "ch")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_AUTH_FIRST AUTH required before SUB")]
    c = nw.Conn(b.tcp_port)
    c.cmd("AUTH", b"wrong")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_AUTH_FAILED AUTH failed")]
    c = nw.Conn(b.tcp_port)
    assert c.identify(feature_negotiation=True)["auth_required"] is True
    c.cmd("AUTH", b"letmein")
    reply = json.loads(c.expect(FRAME_RESPONSE))
    assert reply == {"identity": "tester", "identity_url": "http://example.invalid/tester",
                     "permission_count": 1}
    c.cmd("AUTH", b"letmein")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_INVALID AUTH already set")]

    c = nw.Conn(b.tcp_port)
    c.cmd("AUTH", b"letmein")
    c.expect(FRAME_RESPONSE)
    c.sub("plugin-svc", "ch")
    c.expect_ok()
    c.rdy(10)
    # published by the plugin at start, before the channel existed
    assert c.read_message().body == b"hello from a plugin"
    assert c.read_message(timeout=3).body == b"deferred"
    c.pub("plugin-svc", b"veto")  # the event subscriber drops it; the client gets OK
    c.expect_ok()
    c.pub("plugin-svc", b"fine")
    frames = [c.read_frame_skip_hb(), c.read_frame_skip_hb()]  # OK and message, any order
    assert (FRAME_RESPONSE, b"OK") in frames
    m = [nw.Message(d) for t, d in frames if t == nw.FRAME_MESSAGE][0]
    assert m.body == b"fine"
    c.fin(m.id)
    c.expect_silence()


def test_auth_without_a_checker(broker):
    b = broker(http=False, auth=True)
    c = nw.Conn(b.tcp_port)
    c.pub("t", b"x")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_AUTH_FIRST AUTH required before PUB")]
    c = nw.Conn(b.tcp_port)
    c.cmd("AUTH", b"anything")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_AUTH_FAILED AUTH failed")]
    c = nw.Conn(b.tcp_port)
    c.cmd("AUTH a b", b"x")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_INVALID AUTH invalid number of parameters")]
