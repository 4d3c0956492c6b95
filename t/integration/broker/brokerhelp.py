"""brokerhelp -- helpers the broker tests share besides the wire client:
where broker.so is, waiting for the TCP port, restarts and HTTP calls."""

import socket

import tnhelp


def modules_dir():
    """Where the build links broker.so (build/lib/ternd/modules)."""
    return tnhelp.BUILD / "lib" / "ternd" / "modules"


def tcp_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def restart(t):
    """Start t again (same file and data directory) after a stop."""
    t.start()
    tnhelp.wait_for(lambda: tcp_open(t.tcp_port), 10, what="broker TCP port")
    return t


def http(t, method, path, body=None):
    return tnhelp.request(t.http_port, method, path, body=body)
