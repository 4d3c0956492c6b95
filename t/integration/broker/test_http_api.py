"""The broker's HTTP API, nsqd's: /ping, /info, /pub (with defer), /mpub
(newline and binary), /stats (JSON and text), /topic/* and /channel/*,
/config/<key>; status codes, {"message": CODE} errors and the
X-NSQ-Content-Type header."""

import struct
import time

import nsqwire as nw
from brokerhelp import http, restart


def err(r):
    return (r.status, r.json()["message"])


def test_ping_info(broker):
    b = broker(max_deflate_level=4)
    r = http(b, "GET", "/ping")
    assert (r.status, r.body) == (200, b"OK")
    assert r.header("X-NSQ-Content-Type") == "nsq; version=1.0"
    info = http(b, "GET", "/info").json()
    assert info["tcp_port"] == b.tcp_port and info["http_port"] == b.http_port
    assert info["max_deflate_level"] == 4
    assert info["max_heartbeat_interval"] == 60 * 10**9  # Go durations: ns
    assert {"version", "hostname", "broadcast_address", "start_time"} <= set(info)


def test_pub_and_errors(broker):
    b = broker(max_msg_size=10, max_req_timeout="5s")
    c = nw.consumer(b.tcp_port, "h", "ch", rdy=10)
    r = http(b, "POST", "/pub?topic=h", b"hello")
    assert (r.status, r.body) == (200, b"OK")
    assert c.read_message().body == b"hello"
    assert err(http(b, "POST", "/pub?topic=h", b"x" * 11)) == (413, "MSG_TOO_BIG")
    assert err(http(b, "POST", "/pub?topic=h", b"")) == (400, "MSG_EMPTY")
    assert err(http(b, "POST", "/pub", b"x")) == (400, "MISSING_ARG_TOPIC")
    assert err(http(b, "POST", "/pub?topic=b%21d", b"x")) == (400, "INVALID_TOPIC")
    assert err(http(b, "POST", "/pub?topic=h&defer=abc", b"x")) == (400, "INVALID_DEFER")
    assert err(http(b, "POST", "/pub?topic=h&defer=5001", b"x")) == (400, "INVALID_DEFER")
    assert http(b, "GET", "/pub?topic=h").status == 405
    t0 = time.monotonic()
    assert http(b, "POST", "/pub?topic=h&defer=400", b"later").status == 200
    m = c.read_message(timeout=5)
    assert m.body == b"later" and time.monotonic() - t0 >= 0.35


def test_mpub(broker):
    b = broker(max_msg_size=10, max_body_size=200)
    c = nw.consumer(b.tcp_port, "m", "ch", rdy=50)
    assert http(b, "POST", "/mpub?topic=m", b"a\nb\n\nc").status == 200  # empty lines skipped
    assert sorted(c.read_message().body for _ in range(3)) == [b"a", b"b", b"c"]
    binary = struct.pack(">I", 2) + nw.frame_body(b"x\ny") + nw.frame_body(b"z")
    assert http(b, "POST", "/mpub?topic=m&binary=true", binary).status == 200
    assert sorted(c.read_message().body for _ in range(2)) == [b"x\ny", b"z"]
    assert err(http(b, "POST", "/mpub?topic=m", b"a" * 201)) == (413, "BODY_TOO_BIG")
    assert err(http(b, "POST", "/mpub?topic=m", b"ok\n" + b"a" * 11)) == (413, "MSG_TOO_BIG")
    bad = struct.pack(">I", 1) + nw.frame_body(b"q" * 11)
    assert err(http(b, "POST", "/mpub?topic=m&binary=true", bad)) == (413, "BAD_MESSAGE")
    assert err(http(b, "POST", "/mpub?topic=m&binary=true", struct.pack(">I", 0))) == (413, "BAD_BODY")
    assert err(http(b, "POST", "/mpub", b"a")) == (400, "MISSING_ARG_TOPIC")
    c.expect_silence()  # nothing of the refused batches was published


def test_topic_and_channel_admin(broker):
    b = broker()
    assert http(b, "POST", "/topic/create?topic=adm").status == 200
    assert http(b, "POST", "/channel/create?topic=adm&channel=c1").status == 200
    assert err(http(b, "POST", "/channel/create?topic=adm")) == (400, "MISSING_ARG_CHANNEL")
    assert err(http(b, "POST", "/channel/create?topic=adm&channel=b%20d")) == (400, "INVALID_CHANNEL")
    assert err(http(b, "POST", "/topic/pause?topic=nope")) == (404, "TOPIC_NOT_FOUND")
    assert err(http(b, "POST", "/channel/pause?topic=adm&channel=nope")) == (404, "CHANNEL_NOT_FOUND")
    # a created channel keeps messages for consumers to come
    http(b, "POST", "/pub?topic=adm", b"one")
    # pause the channel: nothing is delivered until unpause
    assert http(b, "POST", "/channel/pause?topic=adm&channel=c1").status == 200
    c = nw.consumer(b.tcp_port, "adm", "c1", rdy=10)
    c.expect_silence()
    assert http(b, "POST", "/channel/unpause?topic=adm&channel=c1").status == 200
    assert c.read_message().body == b"one"
    # pause the topic: messages wait in the topic
    assert http(b, "POST", "/topic/pause?topic=adm").status == 200
    http(b, "POST", "/pub?topic=adm", b"two")
    c.expect_silence()
    topic = http(b, "GET", "/stats?format=json&topic=adm").json()["topics"][0]
    assert topic["paused"] is True and topic["depth"] == 1
    assert http(b, "POST", "/topic/unpause?topic=adm").status == 200
    assert c.read_message().body == b"two"
    # empty a channel
    c.rdy(0)
    time.sleep(0.1)
    http(b, "POST", "/mpub?topic=adm", b"3\n4\n5")
    assert http(b, "POST", "/channel/empty?topic=adm&channel=c1").status == 200
    c.rdy(10)
    c.expect_silence()
    # deleting the channel closes its consumers
    assert http(b, "POST", "/channel/delete?topic=adm&channel=c1").status == 200
    c.expect_closed()
    assert http(b, "POST", "/topic/empty?topic=adm").status == 200
    assert http(b, "POST", "/topic/delete?topic=adm").status == 200
    assert err(http(b, "POST", "/topic/delete?topic=adm")) == (404, "TOPIC_NOT_FOUND")
    assert http(b, "GET", "/stats?format=json").json()["topics"] == []


def test_paused_state_survives_restart(broker):
    b = broker()
    http(b, "POST", "/channel/create?topic=p&channel=c")
    http(b, "POST", "/channel/pause?topic=p&channel=c")
    http(b, "POST", "/pub?topic=p", b"kept")
    b.stop()
    restart(b)
    ch = http(b, "GET", "/stats?format=json&topic=p").json()["topics"][0]["channels"][0]
    assert ch["channel_name"] == "c" and ch["paused"] is True and ch["depth"] == 1
    http(b, "POST", "/channel/unpause?topic=p&channel=c")
    c = nw.consumer(b.tcp_port, "p", "c", rdy=1)
    assert c.read_message().body == b"kept"


def test_stats_shape(broker):
    b = broker(mem_queue_size=2)
    c = nw.consumer(b.tcp_port, "s", "ch", rdy=1, client_id="cid", hostname="hst",
                    user_agent="test/1.0")
    for i in range(5):
        http(b, "POST", "/pub?topic=s", b"%d" % i)
    m = c.read_message()
    c.req(m.id, 60000)  # deferred
    c.read_message()    # in flight
    time.sleep(0.1)
    st = http(b, "GET", "/stats?format=json").json()
    assert st["health"] == "OK" and "version" in st and "start_time" in st
    assert "memory" in st and "producers" in st
    t = [t for t in st["topics"] if t["topic_name"] == "s"][0]
    assert t["message_count"] == 5 and t["message_bytes"] == 5
    assert {"depth", "backend_depth", "paused", "e2e_processing_latency"} <= set(t)
    ch = t["channels"][0]
    assert ch["channel_name"] == "ch"
    assert ch["in_flight_count"] == 1 and ch["deferred_count"] == 1
    # 0 in flight then deferred, 1 in flight, 2 in memory, 3 and 4 on disk
    assert ch["depth"] == 3 and ch["backend_depth"] == 2
    assert ch["requeue_count"] == 1 and ch["message_count"] == 5
    assert ch["client_count"] == 1
    cl = ch["clients"][0]
    assert (cl["client_id"], cl["hostname"], cl["user_agent"]) == ("cid", "hst", "test/1.0")
    assert cl["ready_count"] == 1 and cl["in_flight_count"] == 1 and cl["state"] == 3
    assert cl["version"] == "V2" and cl["deflate"] is False
    no_clients = http(b, "GET", "/stats?format=json&include_clients=false").json()
    assert [t for t in no_clients["topics"] if t["topic_name"] == "s"][0]["channels"][0]["clients"] == []
    assert "memory" not in http(b, "GET", "/stats?format=json&include_mem=false").json()
    text = http(b, "GET", "/stats?format=text").text()
    assert "Health: OK" in text and "[s" in text and "inflt: 1" in text
    plain = http(b, "GET", "/stats")  # text is the default, as nsqd
    assert plain.text().startswith("ternd broker") and "inflt: 1" in plain.text()


def test_config(broker):
    b = broker(mem_queue_size=123, max_msg_size="2KiB")
    assert http(b, "GET", "/config/mem_queue_size").json() == 123
    assert http(b, "GET", "/config/max_msg_size").json() == 2048
    assert http(b, "GET", "/config/tcp_listen").json() == "127.0.0.1:%d" % b.tcp_port
    assert err(http(b, "GET", "/config/nope")) == (400, "INVALID_OPTION")
    assert err(http(b, "PUT", "/config/mem_queue_size", b"5")) == (400, "INVALID_OPTION")


def test_unknown_path(broker):
    b = broker()
    assert http(b, "GET", "/nope").status == 404
