"""Backend node links over TLS (`gateway.node_tls`): the gateway is the TLS
client of scripts/gateway/example_node.py started with --tls-cert/--tls-key
(Python's ssl on the node side). A node whose certificate the gateway does
not trust, or whose name does not match, gets no packet, and the reason
(OpenSSL's) is logged; with --tls-ca the node asks for the gateway's client
certificate (mutual TLS). Certificates are made with the openssl command."""

import shutil

import pytest

import tnhelp
from gwhelp import Client

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the openssl command is missing")

FORWARD = "function on_packet(s, route, seq, data) return 'game' end\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("nodecerts")
    out = {}
    for name in ("node", "other", "gw"):
        out[name], out[name + "_key"] = tnhelp.self_signed_cert(d, name)
    return out


def tls_node(nodes, name, certs, *args):
    """example_node.py serving TLS with the node certificate."""
    return nodes(name, "--tls-cert", certs["node"], "--tls-key", certs["node_key"], *args)


def node_tls_yaml(port, **tls):
    tls.setdefault("enabled", "true")
    inner = ", ".join("%s: %s" % kv for kv in tls.items())
    return ("nodes: { game: [127.0.0.1:%d] }\nnode_retry: 200ms\nnode_tls: { %s }"
            % (port, inner))


def no_answer(t, port, data):
    """The packet finds no reachable instance: nothing comes back."""
    with Client(port, timeout=1.0) as c:
        c.send(1, 1, data)
        with pytest.raises(OSError):
            c.recv(timeout=1.0)


def test_forward_over_tls(gateway, nodes, certs):
    n = tls_node(nodes, "n1", certs)
    t = gateway(FORWARD, extra=node_tls_yaml(n.port, ca=certs["node"]))
    with Client(t.tcp_port) as c:
        assert c.ask(5, 42, b"secret")["data"] == b"n1:secret"
        big = b"z" * 60000  # several TLS records each way
        assert c.ask(5, 43, big)["data"] == b"n1:" + big
    assert "node 127.0.0.1:%d: connected (TLS)" % n.port in t.log()
    # the node hears of the closed session over the same link
    assert n.stdout.readline().startswith("closed ")


def test_untrusted_node_gets_nothing(gateway, nodes, certs):
    n = tls_node(nodes, "n1", certs)
    t = gateway(FORWARD, extra=node_tls_yaml(n.port, ca=certs["other"]))
    no_answer(t, t.tcp_port, b"not for strangers")
    log = t.wait_log(r"TLS handshake failed: .*certificate verify failed")
    assert "node 127.0.0.1:%d: connect failed" % n.port in t.wait_log(r"connect failed")
    assert "self-signed certificate" in log or "unable to get local issuer" in log
    assert "conn: 127.0.0.1:%d: TLS handshake failed" % n.port in log
    assert t.alive()


def test_wrong_server_name_is_refused(gateway, nodes, certs):
    n = tls_node(nodes, "n1", certs)
    t = gateway(FORWARD, extra=node_tls_yaml(n.port, ca=certs["node"],
                                             server_name="game.example"))
    no_answer(t, t.tcp_port, b"x")
    t.wait_log(r"TLS handshake failed: .*\(hostname mismatch\)")
    # verify off: the same node is reached (encrypted, not authenticated)
    t2 = gateway(FORWARD, extra=node_tls_yaml(n.port, verify="false",
                                              server_name="game.example"))
    with Client(t2.tcp_port) as c:
        assert c.ask(1, 1, b"anyway")["data"] == b"n1:anyway"


def test_mutual_tls(gateway, nodes, certs):
    n = tls_node(nodes, "n1", certs, "--tls-ca", str(certs["gw"]))
    t = gateway(FORWARD, extra=node_tls_yaml(n.port, ca=certs["node"], cert=certs["gw"],
                                             key=certs["gw_key"]))
    with Client(t.tcp_port) as c:
        assert c.ask(2, 7, b"both sides known")["data"] == b"n1:both sides known"
    # without a client certificate the node refuses the link
    t2 = gateway(FORWARD, extra=node_tls_yaml(n.port, ca=certs["node"]))
    no_answer(t2, t2.tcp_port, b"x")
    t2.wait_log(r"node 127\.0\.0\.1:%d: (connect failed|link closed)" % n.port)


def test_plaintext_node_with_tls_on(gateway, nodes, certs):
    """A node that does not speak TLS: the handshake fails or times out
    (node_connect_timeout), the packet is lost, the gateway lives on."""
    n = nodes("plain")
    t = gateway(FORWARD, extra=node_tls_yaml(n.port, ca=certs["node"]) +
                "\nnode_connect_timeout: 500ms")
    no_answer(t, t.tcp_port, b"x")
    t.wait_log(r"node 127\.0\.0\.1:%d: (connect failed|link closed)" % n.port)
    assert t.alive()


def test_bad_node_tls_is_a_config_error(gateway, certs, tmp_path):
    t = gateway(FORWARD, extra=node_tls_yaml(1, ca=tmp_path / "missing.pem"), start=False)
    r = t.check()
    assert r.returncode != 0
    assert "node_tls" in r.stderr and "missing.pem" in r.stderr
    t = gateway(FORWARD, extra=node_tls_yaml(1, cert=certs["gw"]), start=False)
    r = t.check()
    assert r.returncode != 0 and "both cert and key" in r.stderr


def test_node_tls_reload_applies_to_new_links(gateway, nodes, certs):
    """The gateway does not trust the node at first; SIGHUP with the right
    CA: the next link (after node_retry) handshakes with the new settings."""
    n = tls_node(nodes, "n1", certs)
    t = gateway(FORWARD, extra=node_tls_yaml(n.port, ca=certs["other"]))
    no_answer(t, t.tcp_port, b"x")
    t.wait_log(r"certificate verify failed")
    t.text = t.text.replace(str(certs["other"]), str(certs["node"]))
    assert "reload done" in t.reload()

    def answered():
        with Client(t.tcp_port, timeout=1.0) as c:
            try:
                return c.ask(1, 1, b"now")["data"] == b"n1:now"
            except OSError:
                return False
    tnhelp.wait_for(answered, 10, interval=0.3, what="an answer over the new TLS settings")
