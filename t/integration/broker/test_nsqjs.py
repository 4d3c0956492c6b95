"""Interop with a real NSQ client: nsqjs 0.13.0 (t/interop/nsqjs, pinned by
its lock file) publishes 10000 messages through the broker (half PUB, half
MPUB) and consumes them, requeueing every 100th once; plain, with
deflate, over TLS (tls: true, tlsVerification: false) and both. node and npm
are required: without them the test fails."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import tnhelp

SRC = tnhelp.SRCDIR / "t" / "interop" / "nsqjs"
FILES = ("package.json", "package-lock.json", "interop.js")
COUNT = 10000
NPM_TIMEOUT = 600  # a fresh npm cache downloads the packages


def copy_if_changed(src, dst):
    if not dst.exists() or dst.read_bytes() != src.read_bytes():
        shutil.copyfile(src, dst)


@pytest.fixture(scope="module")
def nsqjs_dir():
    """$TERND_BUILD/t/interop/nsqjs with node_modules installed by `npm ci`,
    which runs again only when the lock file changed (its hash is kept in
    node_modules/.ternd-lock-sha256). Module-scoped: outside the per-test
    time limit, so a slow first download does not fail a test."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail("%s not found: the nsqjs interop test needs node and npm "
                        "(scripts/dev/bootstrap installs them)" % tool)
    dst = tnhelp.BUILD / "t" / "interop" / "nsqjs"
    dst.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        copy_if_changed(SRC / name, dst / name)
    lock_hash = hashlib.sha256((SRC / "package-lock.json").read_bytes()).hexdigest()
    stamp = dst / "node_modules" / ".ternd-lock-sha256"
    if not stamp.exists() or stamp.read_text().strip() != lock_hash:
        p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=str(dst),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=NPM_TIMEOUT)
        assert p.returncode == 0, "npm ci failed:\n%s%s" % (p.stdout, p.stderr)
        stamp.write_text(lock_hash + "\n")
    return dst


def run_interop(d, port, topic, *extra):
    """node interop.js; returns its JSON summary (the last stdout line)."""
    p = subprocess.run(["node", "interop.js", "127.0.0.1:%d" % port, topic, str(COUNT)]
                       + list(extra), cwd=str(d), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=100)
    lines = p.stdout.strip().splitlines()
    assert lines, "interop.js printed nothing (exit %d):\n%s" % (p.returncode, p.stderr)
    return json.loads(lines[-1]), p


@pytest.mark.parametrize("mode", ["plain", "deflate", "tls", "tls+deflate"])
def test_nsqjs_publish_consume_requeue(nsqjs_dir, broker, mode, tmp_path):
    tls = "tls" in mode
    if tls and shutil.which("openssl") is None:
        pytest.skip("the openssl command is missing")
    if tls:
        cert, key = tnhelp.self_signed_cert(tmp_path)
        t = broker(tls={"cert": str(cert), "key": str(key)})
    else:
        t = broker()
    extra = [mode] if mode != "plain" else []
    res, p = run_interop(nsqjs_dir, t.tcp_port, "interop_" + mode.replace("+", "_"), *extra)
    detail = "%s\nstderr:\n%s\nternd:\n%s" % (res, p.stderr, t.stderr()[-3000:])
    assert res["error"] is None, detail
    assert p.returncode == 0, detail
    assert res["published"] == COUNT, detail
    assert res["finished"] == COUNT, detail
    assert res["distinct"] == COUNT, detail
    assert res["duplicates"] == 0, detail
    assert res["missing"] == 0, detail
    assert res["badAttempts"] == 0, detail
    assert res["requeued"] == COUNT // 100, detail
    # the writer's and the reader's connections both switched to deflate
    assert res["compressed"] == (2 if "deflate" in mode else 0), detail
    # ... and to TLS (nsqjs wraps the socket after the IDENTIFY reply)
    assert res["tls"] == (2 if tls else 0), detail
    assert t.alive(), detail
    assert "[error]" not in t.stderr(), detail
