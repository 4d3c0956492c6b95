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
from dschelp import free_ports, modules_dir, tcp_open  # noqa: E402


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


@pytest.fixture
def dsc(ternd, tmp_path):
    if not (modules_dir() / "discovery.so").exists():
        pytest.skip("discovery.so missing in %s: build first" % modules_dir())
    made = []

    def make(start=True, more=None, **section):
        mdir = modules_dir()
        if more:
            mdir = _modules_with(tmp_path / ("m%d" % len(made)), list(more))
        t = ternd(daemon={"modules_dir": str(mdir)})
        made.append(t)
        # distinct from each other and from the admin port tnhelp chose
        tcp, http = free_ports(2, avoid={t.admin_port})
        sec = {"tcp_listen": "127.0.0.1:%d" % tcp, "http_listen": "127.0.0.1:%d" % http}
        sec.update(section)
        t.sections = {"discovery": sec}
        t.sections.update(more or {})
        t.write_conf()
        t.tcp_port, t.http_port = tcp, http
        if start:
            t.start()
            tnhelp.wait_for(lambda: tcp_open(tcp) and tcp_open(http), 10,
                            what="discovery ports")
        return t
    return make
