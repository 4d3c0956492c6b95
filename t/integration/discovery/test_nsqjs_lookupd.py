"""Interop with a real NSQ client's lookupd support: nsqjs 0.13.0 (the
pinned t/interop/nsqjs) reads a topic knowing only discovery's HTTP
address. The broker and discovery run in one ternd; the broker registers
itself in-process (through the discovery.registry service). Needs node and the nsqjs packages that
the broker's nsqjs test installs under $TERND_BUILD/t/interop/nsqjs."""

import json
import shutil
import subprocess

import pytest

import tnhelp
from dschelp import get

SCRIPT = tnhelp.SRCDIR / "t" / "interop" / "nsqjs" / "lookupd.js"
COUNT = 500


@pytest.fixture
def nsqjs():
    d = tnhelp.BUILD / "t" / "interop" / "nsqjs"
    if shutil.which("node") is None or not (d / "node_modules" / "nsqjs").is_dir():
        pytest.skip("nsqjs not installed in %s (t/integration/broker/test_nsqjs.py "
                    "runs npm ci there)" % d)
    shutil.copyfile(SCRIPT, d / SCRIPT.name)
    return d


def test_reader_finds_broker_through_lookup(nsqjs, dsc):
    t = dsc(more={"broker": {"tcp_listen": tnhelp.ANY_PORT, "http_listen": tnhelp.ANY_PORT,
                             "broadcast_address": "127.0.0.1"}})
    bport = tnhelp.wait_for(lambda: tnhelp.logged_port(t, r"broker: TCP listening on"), 5,
                            what="the broker's TCP port")
    bhttp = tnhelp.wait_for(lambda: tnhelp.logged_port(t, r"broker: HTTP listening on"), 5,
                            what="the broker's HTTP port")
    assert tnhelp.request(bhttp, "POST", "/topic/create?topic=lk").status == 200
    (p,) = get(t.http_port, "/lookup", topic="lk").json()["producers"]
    assert (p["tcp_port"], p["http_port"]) == (bport, bhttp)
    r = subprocess.run(["node", SCRIPT.name, "127.0.0.1:%d" % t.http_port,
                        "127.0.0.1:%d" % bport, "lk", str(COUNT)], cwd=str(nsqjs),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    lines = r.stdout.strip().splitlines()
    assert lines, "lookupd.js printed nothing (exit %d):\n%s" % (r.returncode, r.stderr)
    res = json.loads(lines[-1])
    detail = "%s\n%s\n%s" % (res, r.stderr, t.stderr()[-2000:])
    assert res["error"] is None and r.returncode == 0, detail
    assert res["received"] == COUNT, detail
    assert res["connected"] == ["127.0.0.1:%d" % bport], detail
    t.stop()
