"""Fixtures of the discovery module's integration tests: `dsc(**section)`
starts the real ternd with a discovery section on free loopback ports (TCP
and HTTP), waits until both accept, and gives the ports as t.tcp_port and
t.http_port. Extra keys go into the section as given (nested dicts become
YAML mappings); `more` adds other module sections after it (their .so
files are linked next to discovery.so)."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tnhelp  # noqa: E402
from dschelp import modules_dir  # noqa: E402


def _modules_with(tmp, names):
    """A directory with discovery.so and the modules named (built ones or
    test ones)."""
    d = Path(tmp) / "modules"
    d.mkdir(parents=True, exist_ok=True)
    os.symlink(modules_dir() / "discovery.so", d / "discovery.so")
    for n in names:
        src = modules_dir() / (n + ".so")
        if not src.exists():
            src = tnhelp.test_modules_dir() / (n + ".so")
        if not src.exists():
            pytest.skip("%s missing: run `make check` in %s first" % (src.name, tnhelp.BUILD))
        os.symlink(src, d / src.name)
    return d


def discovery_ports(t):
    """(tcp, http) ports a started discovery listens on, from its log."""
    tcp = tnhelp.wait_for(lambda: tnhelp.logged_port(
        t, r"discovery: TCP \(nsqlookupd protocol V1\) on"), 10, what="the TCP port line")
    http = tnhelp.wait_for(lambda: tnhelp.logged_port(t, r"discovery: HTTP on"), 10,
                           what="the HTTP port line")
    return tcp, http


@pytest.fixture
def dsc(ternd, tmp_path):
    if not (modules_dir() / "discovery.so").exists():
        pytest.skip("discovery.so missing in %s: build first" % modules_dir())
    made = []

    def make(start=True, more=None, **section):
        """Listeners on ports the kernel picks (read from the log once
        started: t.tcp_port, t.http_port); start=False leaves the start
        to the caller, who then calls t.started()."""
        mdir = modules_dir()
        if more:
            mdir = _modules_with(tmp_path / ("m%d" % len(made)), list(more))
        sec = {"tcp_listen": tnhelp.ANY_PORT, "http_listen": tnhelp.ANY_PORT}
        sec.update(section)
        sections = {"discovery": sec}
        sections.update(more or {})
        t = ternd(daemon={"modules_dir": str(mdir)}, sections=sections)
        made.append(t)
        t.tcp_port = t.http_port = None

        def started():
            t.start()
            t.tcp_port, t.http_port = discovery_ports(t)
            return t
        t.started = started
        return started() if start else t
    return make
