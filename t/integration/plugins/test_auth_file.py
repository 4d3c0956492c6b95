"""auth_file: NSQ AUTH on the broker answered from a JSON secrets file,
with nsqauthd-style rules per topic and channel, reloaded on SIGHUP."""

import json
import os
import re

import nsqwire as nw
import tnhelp
from brokerhelp import tcp_open
from nsqwire import FRAME_ERROR, FRAME_RESPONSE

SECRETS = {"secrets": [
    {"secret": "pub-orders", "identity": "orders-writer",
     "identity_url": "https://example.invalid/orders-writer",
     "authorizations": [{"topic": "^orders$", "permissions": ["publish"]}]},
    {"secret": "reader", "identity": "reader",
     "authorizations": [{"topic": "^orders$", "channels": ["^archive$", "^audit-[0-9]+$"],
                         "permissions": ["subscribe"]},
                        {"topic": "^public\\.", "channels": [".*"],
                         "permissions": ["subscribe", "publish"]}]},
]}


def write_secrets(path, doc):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def start(plugged, doc=SECRETS):
    t = plugged(plugins=("auth_file",), broker={"auth": True}, start=False)
    t.secrets = t.tmp / "secrets.json"
    write_secrets(t.secrets, doc)
    t.sections["auth_file"] = {"file": str(t.secrets)}
    t.write_conf()
    t.start()
    tnhelp.wait_for(lambda: tcp_open(t.tcp_port), 10, what="broker TCP port")
    return t


def authed(t, secret):
    c = nw.Conn(t.tcp_port)
    c.cmd("AUTH", secret.encode())
    return c, json.loads(c.expect(FRAME_RESPONSE))


def denied(c, what, topic, channel=""):
    return c.expect_closed() == [
        (FRAME_ERROR, ('E_UNAUTHORIZED AUTH failed for %s on "%s" "%s"'
                       % (what, topic, channel)).encode())]


def test_auth_good_and_bad_secrets(plugged):
    t = start(plugged)
    assert "auth_file: 2 secrets from %s" % t.secrets in t.log()
    c, reply = authed(t, "pub-orders")
    assert reply == {"identity": "orders-writer",
                     "identity_url": "https://example.invalid/orders-writer",
                     "permission_count": 1}
    c, reply = authed(t, "reader")
    assert reply == {"identity": "reader", "identity_url": "", "permission_count": 2}
    for bad in ("nope", "pub-order", "pub-orders2", "PUB-ORDERS"):
        c = nw.Conn(t.tcp_port)
        c.cmd("AUTH", bad.encode())
        assert c.expect_closed() == [(FRAME_ERROR, b"E_AUTH_FAILED AUTH failed")], bad
    c = nw.Conn(t.tcp_port)
    c.pub("orders", b"x")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_AUTH_FIRST AUTH required before PUB")]
    m = t.metrics()
    assert m['ternd_auth_file_checks_total{result="accepted"}'] == 2
    assert m['ternd_auth_file_checks_total{result="unknown"}'] == 4
    assert m["ternd_auth_file_secrets"] == 2


def test_publish_allowed_and_denied_per_topic(plugged):
    t = start(plugged)
    c, _ = authed(t, "pub-orders")
    c.pub("orders", b"one")
    c.expect_ok()
    c.mpub("orders", [b"two", b"three"])
    c.expect_ok()
    c.dpub("orders", 10, b"four")
    c.expect_ok()
    c.pub("orders2", b"x")  # the regex is anchored by the file: ^orders$
    assert denied(c, "PUB", "orders2")
    c, _ = authed(t, "pub-orders")
    c.mpub("other", [b"x"])
    assert denied(c, "MPUB", "other")
    c, _ = authed(t, "pub-orders")
    c.dpub("other", 10, b"x")
    assert denied(c, "DPUB", "other")
    # no subscribe permission at all
    c, _ = authed(t, "pub-orders")
    c.sub("orders", "archive")
    assert denied(c, "SUB", "orders", "archive")
    m = t.metrics()
    assert m['ternd_auth_file_authorizations_total{result="allowed"}'] == 3
    assert m['ternd_auth_file_authorizations_total{result="denied"}'] == 4
    assert m['ternd_broker_topic_messages_total{topic="orders"}'] == 4
    assert 'ternd_broker_topic_messages_total{topic="other"}' not in m


def test_subscribe_allowed_and_denied_per_channel(plugged):
    t = start(plugged)
    w, _ = authed(t, "pub-orders")
    w.pub("orders", b"m1")
    w.expect_ok()
    c, _ = authed(t, "reader")
    c.sub("orders", "archive")
    c.expect_ok()
    c.rdy(1)
    assert c.read_message().body == b"m1"
    c2, _ = authed(t, "reader")
    c2.sub("orders", "audit-7")
    c2.expect_ok()
    for channel in ("audit-x", "archive2", "other"):
        c3, _ = authed(t, "reader")
        c3.sub("orders", channel)
        assert denied(c3, "SUB", "orders", channel), channel
    # the second rule: any channel of public.*, and publishing there
    c4, _ = authed(t, "reader")
    c4.pub("public.news", b"hi")
    c4.expect_ok()
    c4.sub("public.news", "anything")
    c4.expect_ok()
    # subscribe without publish permission on orders
    c5, _ = authed(t, "reader")
    c5.pub("orders", b"x")
    assert denied(c5, "PUB", "orders")


def test_secrets_reloaded_on_sighup(plugged):
    t = start(plugged)
    kept, _ = authed(t, "reader")  # authenticated before the reload
    doc = {"secrets": [SECRETS["secrets"][0],
                       {"secret": "newbie", "identity": "newbie", "authorizations": [
                           {"topic": "^orders$", "channels": ["^archive$"],
                            "permissions": ["subscribe"]}]}]}
    write_secrets(t.secrets, doc)
    log = t.reload()
    assert "core: reload done" in log and "auth_file: 2 secrets from" in log, log
    c = nw.Conn(t.tcp_port)
    c.cmd("AUTH", b"reader")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_AUTH_FAILED AUTH failed")]
    c, reply = authed(t, "newbie")
    assert reply["identity"] == "newbie"
    c.sub("orders", "archive")
    c.expect_ok()
    # the revoked secret loses its rights on its next command, too
    kept.sub("orders", "archive")
    assert denied(kept, "SUB", "orders", "archive")


def test_clients_lose_their_rights_with_the_file(plugged):
    """A client auth_file vouched for is judged by auth_file alone: once the
    file is no longer configured, nothing confirms its rights and every
    operation is refused (not allowed by default)."""
    t = start(plugged)
    kept, _ = authed(t, "pub-orders")
    kept.pub("orders", b"before")
    kept.expect_ok()
    del t.sections["auth_file"]
    log = t.reload()
    assert "core: reload done" in log, log
    kept.pub("orders", b"after")
    assert denied(kept, "PUB", "orders")
    c = nw.Conn(t.tcp_port)
    c.cmd("AUTH", b"pub-orders")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_AUTH_FAILED AUTH failed")]


def test_broken_secrets_file(plugged):
    t = start(plugged)
    t.secrets.write_text('{"secrets": [\n  {"secret": "a", "authorizations": [}\n]}\n')
    r = t.check()
    assert r.returncode != 0
    assert re.search(r"auth_file\.file: %s:2:\d+: " % re.escape(str(t.secrets)), r.stderr), \
        r.stderr
    log = t.reload()
    assert "core: reload rejected" in log, log
    c, reply = authed(t, "pub-orders")  # the old secrets still answer
    assert reply["identity"] == "orders-writer"
    cases = [
        ({"secrets": [{"secret": "", "authorizations": []}]}, "secrets[0].secret: must be"),
        ({"secrets": [{"secret": "a", "authorizations": [{"topic": "(", "permissions": []}]}]},
         "secrets[0].authorizations[0].topic: bad regular expression"),
        ({"secrets": [{"secret": "a", "authorizations": [
            {"topic": "x", "permissions": ["write"]}]}]},
         'secrets[0].authorizations[0].permissions[0]: must be "publish" or "subscribe"'),
        ({"secrets": [{"secret": "a", "authorizations": []},
                      {"secret": "a", "authorizations": []}]},
         "secrets[1].secret: the same secret as secrets[0]"),
        ({"users": []}, 'the top level must be {"secrets": [...]}'),
        ({"secrets": [{"secret": "a\u0000b", "authorizations": []}]},
         "\\u0000 is not allowed"),  # jansson refuses it: no secret is cut short at a NUL
    ]
    for doc, msg in cases:
        write_secrets(t.secrets, doc)
        r = t.check()
        assert r.returncode != 0 and msg in r.stderr, (msg, r.stderr)


def test_group_readable_file_warns(plugged):
    t = start(plugged)
    os.chmod(t.secrets, 0o644)
    log = t.reload()
    assert re.search(r"\[warn\] auth_file: .*secrets\.json is readable by group or others", log), log


def test_no_file_leaves_auth_to_the_broker(plugged):
    """auth_file loaded without a section answers nothing: AUTH fails as with
    no auth plugin at all."""
    t = plugged(plugins=("auth_file",), broker={"auth": True})
    c = nw.Conn(t.tcp_port)
    c.cmd("AUTH", b"pub-orders")
    assert c.expect_closed() == [(FRAME_ERROR, b"E_AUTH_FAILED AUTH failed")]
