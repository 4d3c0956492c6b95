"""Fixtures of the broker's integration tests: `broker(**section)` starts
the real ternd with a broker section on free loopback ports (TCP and HTTP)
and waits until the TCP port accepts. Extra keys go into the section as
given (nested dicts become YAML mappings). A server still running at the
end of a test is stopped with SIGTERM and must exit 0."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tnhelp  # noqa: E402
from brokerhelp import modules_dir, tcp_open  # noqa: E402


@pytest.fixture
def broker(ternd):
    if not (modules_dir() / "broker.so").exists():
        pytest.skip("broker.so missing in %s: build first" % modules_dir())

    made = []

    def make(http=True, start=True, daemon=None, **section):
        tcp = tnhelp.free_port()
        hport = tnhelp.free_port() if http else None
        sec = {"tcp_listen": "127.0.0.1:%d" % tcp,
               "http_listen": "127.0.0.1:%d" % hport if http else None}
        sec.update(section)
        d = {"modules_dir": str(modules_dir())}
        d.update(daemon or {})
        t = ternd(daemon=d, sections={"broker": sec})
        t.tcp_port, t.http_port = tcp, hport
        made.append(t)
        if start:
            t.start()
            tnhelp.wait_for(lambda: tcp_open(tcp), 10, what="broker TCP port")
        return t
    yield make
    # every test ends with a graceful stop: exit 0 (no crash on the stop
    # path, and no leak under the sanitizers' leak checker)
    for t in made:
        if t.alive():
            t.stop()
