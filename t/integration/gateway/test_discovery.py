"""Node instances found through the discovery module's service registry
(when discovery.so is built): a node registered over discovery's HTTP API
gets the packets for its service name; static nodes take precedence."""

import json

import pytest

import tnhelp
from gwhelp import Client, modules_dir


def test_forward_to_discovered_node(gateway, nodes):
    if not (modules_dir() / "discovery.so").exists():
        pytest.skip("discovery.so not built")
    n = nodes("found")
    http = tnhelp.free_port()
    t = gateway("function on_packet(s, r, q, d) return 'lobby' end\n", start=False)
    t.text = ("discovery: { tcp_listen: 127.0.0.1:%d, http_listen: 127.0.0.1:%d }\n"
              % (tnhelp.free_port(), http)) + t.text
    t.write_conf()
    t.start()
    tnhelp.wait_for(lambda: t.log().find("gateway: TCP listening") >= 0, 10, what="gateway")
    with Client(t.tcp_port) as c:
        c.send(1, 1, b"before")
        with pytest.raises(TimeoutError):
            c.recv(timeout=0.3)
        body = json.dumps({"name": "lobby", "id": "n-1", "address": "127.0.0.1:%d" % n.port,
                           "ttl": -1})
        r = tnhelp.request(http, "POST", "/services/register", body=body,
                           headers={"Content-Type": "application/json"})
        assert r.status == 200, r.body
        p = c.ask(1, 2, b"after")
        assert (p["seq"], p["data"]) == (2, b"found:after")
    assert t.metrics()["ternd_gateway_forward_failed_total"] == 1
