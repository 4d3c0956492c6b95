"""Per-connection deflate negotiated by IDENTIFY (raw deflate streams both
ways, checked with Python's zlib), and the Lua side of the broker: the
on_publish hook (drop, new body, reroute) and ternd.broker.publish."""

import json
import zlib

import nsqwire as nw
import tnhelp
from nsqwire import FRAME_RESPONSE


def test_deflate_both_ways(broker):
    b = broker(http=False)
    c = nw.Conn(b.tcp_port)
    c.cmd("IDENTIFY", json.dumps({"feature_negotiation": True, "deflate": True,
                                  "deflate_level": 9}).encode())
    ftype, data = c.read_frame()
    reply = json.loads(data)  # the JSON reply itself is not compressed
    assert ftype == FRAME_RESPONSE
    assert reply["deflate"] is True
    assert reply["deflate_level"] == 6  # capped at max_deflate_level
    # from here on both directions are raw deflate (wbits -15)
    zin = zlib.decompressobj(-15)
    zout = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw = zin.decompress(c.buf)  # what came in the same read as the JSON
    while not raw.endswith(b"OK"):
        chunk = c.sock.recv(4096)
        assert chunk, "closed before the compressed OK"
        raw += zin.decompress(chunk)
    assert raw == b"\x00\x00\x00\x06\x00\x00\x00\x00OK"

    def send(data):
        c.sock.sendall(zout.compress(data) + zout.flush(zlib.Z_SYNC_FLUSH))

    def frame():
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
            chunk = c.sock.recv(65536)
            assert chunk
            buf += zin.decompress(chunk)
        return buf

    body = b"compressible " * 500
    send(b"SUB z ch\n")
    assert frame() == b"\x00\x00\x00\x06\x00\x00\x00\x00OK"
    send(b"RDY 1\n")
    send(b"PUB z\n" + nw.frame_body(body))
    data = frame()
    # OK for the PUB and the message may come in either order or together
    frames = []
    while data:
        size = int.from_bytes(data[:4], "big")
        frames.append((int.from_bytes(data[4:8], "big"), data[8:4 + size]))
        data = data[4 + size:]
    while len(frames) < 2:
        data = frame()
        size = int.from_bytes(data[:4], "big")
        frames.append((int.from_bytes(data[4:8], "big"), data[8:4 + size]))
    assert (FRAME_RESPONSE, b"OK") in frames
    msg = [nw.Message(d) for t, d in frames if t == nw.FRAME_MESSAGE][0]
    assert msg.body == body
    # an uncompressed client on the same channel sees the same bytes
    plain = nw.consumer(b.tcp_port, "z", "ch2", rdy=1)
    nw.publish(b.tcp_port, "z", [b"second"])
    assert plain.read_message().body == b"second"


def test_deflate_with_helper_and_off_switch(broker):
    b = broker(http=False)
    c = nw.Conn(b.tcp_port)
    assert c.identify(feature_negotiation=True, deflate=True)["deflate"] is True
    c.sub("h", "ch")
    c.expect_ok()
    c.rdy(10)
    for i in range(50):
        c.pub("h", b"payload-%d" % i)
    got = []
    while len(got) < 50:
        t, d = c.read_frame_skip_hb()
        if t == nw.FRAME_MESSAGE:
            got.append(nw.Message(d))
            c.fin(got[-1].id)
        else:
            assert (t, d) == (FRAME_RESPONSE, b"OK")
    assert sorted(m.body for m in got) == sorted(b"payload-%d" % i for i in range(50))
    # deflate: false in the config: the offer is declined
    b2 = broker(http=False, deflate=False)
    c2 = nw.Conn(b2.tcp_port)
    assert c2.identify(feature_negotiation=True, deflate=True)["deflate"] is False
    c2.pub("x", b"y")
    c2.expect_ok()


HOOK = """
function on_publish(topic, body)
  if body == "drop" then return false end
  if body:sub(1, 3) == "up:" then return body:sub(4):upper() end
  if body:sub(1, 3) == "re:" then return "rerouted", body:sub(4) end
  if topic == "fan" then
    assert(ternd.broker.publish("copies", "copy of " .. body))
  end
  if body == "boom" then error("hook failure") end
  return nil
end
"""


def test_lua_on_publish(broker, tmp_path):
    script = tmp_path / "hook.lua"
    script.write_text(HOOK)
    b = broker(http=False, lua={"script": str(script)})
    c = nw.consumer(b.tcp_port, "t", "ch", rdy=10)
    r = nw.consumer(b.tcp_port, "rerouted", "ch", rdy=10)
    copies = nw.consumer(b.tcp_port, "copies", "ch", rdy=10)
    nw.publish(b.tcp_port, "t", [b"drop", b"up:hello", b"re:moved", b"plain", b"boom"])
    got = sorted(c.read_message().body for _ in range(3))
    assert got == [b"HELLO", b"boom", b"plain"]  # a failing hook lets it pass
    c.expect_silence()
    assert r.read_message().body == b"moved"
    nw.publish(b.tcp_port, "fan", [b"x"])
    assert copies.read_message().body == b"copy of x"
    assert "hook failure" in b.log()


def test_lua_publish_errors(broker, tmp_path):
    script = tmp_path / "pub.lua"
    script.write_text("""
function on_publish(topic, body)
  if topic == "probe" then
    local ok, err = ternd.broker.publish("bad name!", "x")
    local ok2, err2 = ternd.broker.publish("results", tostring(ok) .. "/" .. tostring(err))
    return false
  end
end
""")
    b = broker(http=False, lua={"script": str(script)})
    c = nw.consumer(b.tcp_port, "results", "ch", rdy=1)
    nw.publish(b.tcp_port, "probe", [b"go"])
    body = c.read_message().body
    assert body.startswith(b"nil/") and len(body) > 4


def test_deflate_pipelined_burst_larger_than_body_limit(broker):
    """Well-compressing pipelined commands inflate to far more than
    max_body_size; they are run as they are inflated, never refused."""
    b = broker(http=False, max_body_size="64KiB")
    c = nw.Conn(b.tcp_port)
    c.identify(feature_negotiation=True, deflate=True)
    n = 500
    c.send(b"".join(b"PUB burst\n" + nw.frame_body(b"\0" * 1000) for _ in range(n)))
    for _ in range(n):
        c.expect_ok()
    d = nw.consumer(b.tcp_port, "burst", "ch", rdy=1)
    assert d.read_message().body == b"\0" * 1000


def test_shipped_example_script(broker):
    """scripts/broker.lua, the example hook shipped with ternd."""
    script = tnhelp.SRCDIR / "scripts" / "broker.lua"
    b = broker(http=False, lua={"script": str(script)})
    login = nw.consumer(b.tcp_port, "events.login", "ch", rdy=5)
    invalid = nw.consumer(b.tcp_port, "events.invalid", "ch", rdy=5)
    audit = nw.consumer(b.tcp_port, "audit", "ch", rdy=5)
    orders = nw.consumer(b.tcp_port, "orders", "ch", rdy=5)
    nw.publish(b.tcp_port, "events", [b'{"type":"login","user":1}', b"not json"])
    assert login.read_message().body == b'{"type":"login","user":1}'
    assert invalid.read_message().body == b"not json"
    nw.publish(b.tcp_port, "orders", [b"audit:order 7"])
    assert orders.read_message().body == b"order 7"
    assert audit.read_message().body == b"orders order 7"
