"""A third-party plugin, built as plugins/README.md says: `make install`
into a DESTDIR, then plugins/example/hello.c compiled against the installed
headers found with pkg-config (ternd.pc), nothing from the source tree.
The installed ternd then loads it from the installed plugins directory,
next to the shipped plugins."""

import os
import re
import shutil
import subprocess

import pytest

import tnhelp

PREFIX_RE = re.compile(r"^prefix=(.*)$", re.M)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """make install DESTDIR=...: (destdir, the installed prefix)."""
    if not shutil.which("pkg-config") or not shutil.which(os.environ.get("CC", "cc")):
        pytest.skip("needs pkg-config and a C compiler")
    dest = tmp_path_factory.mktemp("destdir")
    r = subprocess.run(["make", "-s", "install", "DESTDIR=%s" % dest], cwd=str(tnhelp.BUILD),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    pcs = list(dest.rglob("pkgconfig/ternd.pc"))
    assert len(pcs) == 1, pcs
    prefix = PREFIX_RE.search(pcs[0].read_text()).group(1)
    return dest, prefix, pcs[0].parent


def pkg_config(installed, *args):
    dest, _, pcdir = installed
    env = dict(os.environ, PKG_CONFIG_PATH=str(pcdir), PKG_CONFIG_SYSROOT_DIR=str(dest))
    r = subprocess.run(["pkg-config"] + list(args) + ["ternd"], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def build_hello(installed, out):
    cflags = pkg_config(installed, "--cflags").split()
    assert "-I%s" % installed[0] in " ".join(cflags)
    src = tnhelp.SRCDIR / "plugins" / "example" / "hello.c"
    cmd = [os.environ.get("CC", "cc"), "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"] + \
        cflags + ["-o", str(out), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, " ".join(cmd) + "\n" + r.stderr
    return out


def test_install_layout(installed):
    dest, prefix, _ = installed
    plugindir = pkg_config(installed, "--variable=plugindir")
    if plugindir.startswith(str(dest)):  # pkgconf puts the sysroot on variables too
        plugindir = plugindir[len(str(dest)):]
    assert plugindir == prefix + "/lib/ternd/plugins"
    got = sorted(p.name for p in (dest / plugindir.lstrip("/")).iterdir())
    assert got == ["auth_file.so", "stats_file.so", "statsd.so"]  # no libtool .la files
    for h in ("ternd.h", "service.h", "stats.h", "module.h"):
        assert (dest / prefix.lstrip("/") / "include" / "ternd" / h).exists(), h


def test_hello_builds_against_installed_headers_and_loads(installed, ternd, monkeypatch):
    dest, prefix, _ = installed
    root = dest / prefix.lstrip("/")
    build_hello(installed, root / "lib" / "ternd" / "plugins" / "hello.so")
    # the installed ternd, finding modules and plugins beside itself
    binary = root / "sbin" / "ternd"
    assert binary.exists()
    monkeypatch.setattr(tnhelp, "ternd_bin", lambda: binary)
    t = ternd(daemon={"plugins_dir": None, "modules_dir": None},
              sections={"hello": {"greeting": "hi from a third party"}})
    t.start()
    log = t.log()
    assert "hello: hi from a third party" in log, log
    for name in ("hello", "auth_file", "statsd", "stats_file"):
        assert re.search(r"core: module %s \S+ started" % name, log), (name, log)
    t.reload()
    assert "hello: hi from a third party (reload 1)" in t.log()
    assert t.metrics()["ternd_hello_reloads_total"] == 1
    # conn.open / conn.close: every admin request is a connection
    before = t.metrics()["ternd_hello_connections_total"]
    for _ in range(3):
        assert t.get("/ping").status == 200
    m = tnhelp.wait_for(lambda: (lambda m: m["ternd_hello_connections_open"] == 1 and m)(
        t.metrics()), 5, what="closed connections seen")  # only the /metrics one is open
    assert m["ternd_hello_connections_total"] >= before + 4
    assert t.stop() == 0
