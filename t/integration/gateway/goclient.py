"""goclient -- builds scripts/bench/kcp_client.go (kcp-go, Debian's
golang-github-xtaci-kcp-dev) offline in GOPATH mode, for the KCP tests and
scripts/bench/run-kcp."""

import os
import shutil
import subprocess
from pathlib import Path

TOP = Path(__file__).resolve().parents[3]
SRC = TOP / "scripts" / "bench" / "kcp_client.go"
GOCODE = Path("/usr/share/gocode")
KCP_GO = GOCODE / "src" / "github.com" / "xtaci" / "kcp-go"


def build(out_dir, cache_dir):
    """The client binary in out_dir; the Go build cache in cache_dir. With
    $TERND_KCP_CLIENT set, that binary, built before (the test host VM has
    no Go: test_kcp_netem.py builds the client on the host)."""
    if os.environ.get("TERND_KCP_CLIENT"):
        return Path(os.environ["TERND_KCP_CLIENT"])
    go = shutil.which("go")
    assert go and KCP_GO.is_dir(), (
        "the KCP client needs golang-go and golang-github-xtaci-kcp-dev "
        "(scripts/dev/bootstrap installs them)")
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    src = out_dir / "gopath" / "src" / "kcpclient"
    src.mkdir(parents=True, exist_ok=True)
    shutil.copy(SRC, src / "main.go")
    cache_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GO111MODULE="off",
               GOPATH="%s:%s" % (out_dir / "gopath", GOCODE), GOCACHE=str(cache_dir),
               GOPROXY="off", GOFLAGS="", CGO_ENABLED="0")
    binary = out_dir / "kcp_client"
    r = subprocess.run([go, "build", "-o", str(binary), "."], cwd=src, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "go build failed:\n%s" % r.stderr
    return binary
