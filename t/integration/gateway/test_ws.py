"""The gateway over WebSocket: the handshake, one packet per binary
message (python3-websockets as a real client, with and without
permessage-deflate), fragmentation, ping/pong, the close handshake, and the
failures that must close with a code (bad UTF-8 1007, oversize 1009,
unmasked 1002, text 1003, heartbeat timeout)."""

import asyncio
import struct
import zlib
from pathlib import Path

import pytest

import tnhelp
from gwhelp import Codec
from wsraw import RawWS

websockets = pytest.importorskip("websockets")

SCRIPT = (Path(__file__).resolve().parent / "route_test.lua").read_text()
C = Codec()


def url(t):
    return "ws://127.0.0.1:%d/ws" % t.ws_port


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_echo_with_websockets(gateway, compression):
    t = gateway(SCRIPT, ws=True, extra="ws_compress_min: 16")

    async def go():
        async with websockets.connect(url(t), compression=compression) as ws:
            exts = ws.response_headers.get("Sec-WebSocket-Extensions")
            assert (exts is not None) == (compression == "deflate")
            await ws.send(C.packet(1, 7, b"hello"))
            p, rest = C.decode(await ws.recv())
            assert (p["route"], p["seq"], p["data"], rest) == (1, 7, b"echo:hello", b"")
            big = b"z" * 5000  # compressible: goes out compressed when negotiated
            await ws.send(C.packet(1, 8, big))
            p, _ = C.decode(await ws.recv())
            assert p["data"] == b"echo:" + big
            await ws.send(C.heartbeat())
            p, _ = C.decode(await ws.recv())
            assert p["heartbeat"]
    run(go())


def test_fragmented_message(gateway):
    t = gateway(SCRIPT, ws=True)

    async def go():
        async with websockets.connect(url(t), compression=None) as ws:
            pkt = C.packet(1, 3, b"in pieces")
            await ws.send([pkt[:3], pkt[3:7], pkt[7:]])
            p, _ = C.decode(await ws.recv())
            assert p["data"] == b"echo:in pieces"
    run(go())


def test_fragments_with_ping_between(gateway):
    t = gateway(SCRIPT, ws=True)
    ws = RawWS(t.ws_port)
    assert ws.status == 101
    pkt = C.packet(1, 4, b"frag")
    ws.frame(2, pkt[:4], fin=False)
    ws.frame(9, b"are you there")
    assert ws.recv_frame()[2:] == (10, b"are you there")
    ws.frame(0, pkt[4:8], fin=False)
    ws.frame(0, pkt[8:], fin=True)
    fin, rsv, op, payload = ws.recv_frame()
    assert (fin, op) == (True, 2)
    assert C.decode(payload)[0]["data"] == b"echo:frag"
    ws.close()


def test_ping_and_close_handshake(gateway):
    t = gateway(SCRIPT, ws=True)

    async def go():
        ws = await websockets.connect(url(t))
        pong = await ws.ping(b"p1")
        await asyncio.wait_for(pong, 5)
        await ws.close(code=4001, reason="done")
        assert ws.close_code == 4001
    run(go())
    t.wait_log(r"gone \d+ n=0")


def test_server_close_sends_code(gateway):
    t = gateway(SCRIPT, ws=True)

    async def go():
        async with websockets.connect(url(t)) as ws:
            await ws.send(C.packet(9, 1, b""))
            p, _ = C.decode(await ws.recv())
            assert p["data"] == b"bye"
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1000
    run(go())


def test_bad_utf8_text_is_1007(gateway):
    t = gateway(SCRIPT, ws=True)
    ws = RawWS(t.ws_port)
    ws.frame(1, b"ok \xc3\x28 not utf8")
    assert ws.expect_close() == 1007
    assert tnhelp.closed_by_peer(ws.sock)
    # valid UTF-8 text is still refused: binary messages only
    ws = RawWS(t.ws_port)
    ws.frame(1, "h\u00e9llo".encode())
    assert ws.expect_close() == 1003
    # bad UTF-8 split across fragments, and an overlong encoding
    ws = RawWS(t.ws_port)
    ws.frame(1, b"ab\xe2\x82", fin=False)
    ws.frame(0, b"\x28", fin=True)
    assert ws.expect_close() == 1007
    ws = RawWS(t.ws_port)
    ws.frame(1, b"\xc0\xaf")
    assert ws.expect_close() == 1007


def test_oversize_is_1009(gateway):
    t = gateway(SCRIPT, ws=True, extra="packet: { max_size: 1KiB }")
    ws = RawWS(t.ws_port)
    ws.frame(2, C.packet(1, 1, b"x" * 2000))
    assert ws.expect_close() == 1009
    # the limit holds for a message built of small fragments too
    ws = RawWS(t.ws_port)
    for i in range(3):
        ws.frame(0 if i else 2, b"y" * 400, fin=False)
    assert ws.expect_close() == 1009
    t.wait_log(r"message over packet.max_size, closing with 1009")

    async def go():
        async with websockets.connect(url(t), compression=None) as ws:
            await ws.send(C.packet(1, 1, b"x" * 2000))
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1009
    run(go())


def test_inflated_oversize_is_1009(gateway):
    t = gateway(SCRIPT, ws=True, extra="packet: { max_size: 1KiB }")
    ws = RawWS(t.ws_port, extensions="permessage-deflate; client_max_window_bits")
    assert "permessage-deflate" in ws.head
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    small = co.compress(C.packet(1, 1, b"a" * 100000)) + co.flush(zlib.Z_SYNC_FLUSH)
    assert len(small) < 1024
    ws.frame(2, small[:-4], rsv=0x40)
    assert ws.expect_close() == 1009


def test_protocol_errors_are_1002(gateway):
    t = gateway(SCRIPT, ws=True)
    ws = RawWS(t.ws_port)
    ws.frame(2, C.packet(1, 1, b"x"), mask=False)
    assert ws.expect_close() == 1002
    ws = RawWS(t.ws_port)
    ws.frame(0, b"continuation with nothing to continue")
    assert ws.expect_close() == 1002
    ws = RawWS(t.ws_port)
    ws.frame(2, C.packet(1, 1, b"x"), rsv=0x40)  # RSV1 without deflate
    assert ws.expect_close() == 1002
    ws = RawWS(t.ws_port)
    ws.frame(9, b"p" * 126)  # control frames carry at most 125 bytes
    assert ws.expect_close() == 1002
    ws = RawWS(t.ws_port)
    ws.frame(8, struct.pack(">H", 1005))  # a code that must not be sent
    assert ws.expect_close() == 1002


def test_message_must_hold_one_packet(gateway):
    t = gateway(SCRIPT, ws=True)
    ws = RawWS(t.ws_port)
    ws.frame(2, C.packet(1, 1, b"a") + C.packet(1, 2, b"b"))
    assert ws.expect_close() == 1008
    # none at all: an empty message was taken for a whole packet and its
    # uninitialized fields handed to Lua (found by fuzz_ws)
    ws = RawWS(t.ws_port)
    ws.frame(2, b"")
    assert ws.expect_close() == 1008
    ws = RawWS(t.ws_port)
    ws.frame(2, C.packet(1, 1, b"a")[:3])
    assert ws.expect_close() == 1008
    ws = RawWS(t.ws_port)  # empty fragments
    ws.frame(2, b"", fin=False)
    ws.frame(0, b"")
    assert ws.expect_close() == 1008
    assert t.alive()


def test_handshake_refusals(gateway):
    t = gateway(SCRIPT, ws=True)
    r = tnhelp.request(t.ws_port, "GET", "/ws")
    assert r.status == 400
    r = tnhelp.request(t.ws_port, "GET", "/ws", headers={
        "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "8"})
    assert r.status == 426 and r.header("Sec-WebSocket-Version") == "13"
    assert tnhelp.request(t.ws_port, "GET", "/other").status == 404


def test_ws_heartbeat_timeout(gateway):
    t = gateway(SCRIPT, ws=True, extra="heartbeat: 200ms")
    ws = RawWS(t.ws_port)
    assert tnhelp.closed_by_peer(ws.sock, timeout=3.0)


def test_ws_and_tcp_share_sessions(gateway):
    """A push from a TCP client reaches a uid bound over WebSocket."""
    from gwhelp import Client
    t = gateway(SCRIPT, ws=True)

    async def go():
        async with websockets.connect(url(t)) as ws:
            await ws.send(C.packet(2, 1, b"wsuser"))
            assert C.decode(await ws.recv())[0]["data"] == b"bound:wsuser"
            with Client(t.tcp_port) as c:
                assert c.ask(6, 1, b"wsuser:over tcp")["data"] == b"pushed:true"
            p, _ = C.decode(await ws.recv())
            assert (p["route"], p["data"]) == (60, b"over tcp")
    run(go())


def test_stop_closes_ws_with_1001(gateway):
    t = gateway(SCRIPT, ws=True)
    ws = RawWS(t.ws_port)
    ws.frame(2, C.packet(10, 1, b""))
    ws.recv_frame()
    t.send_signal(__import__("signal").SIGTERM)
    assert ws.expect_close() == 1001
    ws.frame(8, struct.pack(">H", 1001))
    assert t.wait_exit() == 0
