"""Fixtures of the plugin tests: the built plugins (build/lib/ternd/plugins)
dropped into a test's own plugins_dir, and a ternd running the broker with
them on free loopback ports. The NSQ wire client comes from ../broker."""

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "broker"))
import tnhelp  # noqa: E402
from brokerhelp import modules_dir, tcp_open  # noqa: E402
from pluginhelp import drop, plugins_built  # noqa: E402


@pytest.fixture
def plugged(ternd):
    """A factory: plugged(plugins=[...], broker={...} or None, sections=...,
    daemon=...) returns a started ternd whose plugins_dir holds the named
    plugins; with broker set, the broker runs on free ports (t.tcp_port).
    Every server still running at the end is stopped and must exit 0."""
    made = []

    def make(plugins=(), broker=None, sections=None, daemon=None, start=True):
        for name in plugins:
            if not (plugins_built() / ("%s.so" % name)).exists():
                pytest.skip("%s.so missing in %s: build first" % (name, plugins_built()))
        secs = dict(sections or {})
        d = {"modules_dir": str(modules_dir())}
        d.update(daemon or {})
        tcp = None
        if broker is not None:
            tcp = tnhelp.free_port()
            b = {"tcp_listen": "127.0.0.1:%d" % tcp, "http_listen": None}
            b.update(broker)
            secs["broker"] = b
        t = ternd(daemon=d, sections=secs)
        t.tcp_port = tcp
        for name in plugins:
            drop(t, name)
        made.append(t)
        if start:
            t.start()
            if tcp:
                tnhelp.wait_for(lambda: tcp_open(tcp), 10, what="broker TCP port")
        return t
    yield make
    for t in made:
        if t.alive():
            assert t.stop() == 0, t.log()
