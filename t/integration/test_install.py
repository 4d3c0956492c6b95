"""`make install` into a DESTDIR puts every file in its FHS place (with the
installed ternd.yaml and systemd unit naming the install paths), the
installed ternd checks and runs from there (finding its modules beside
itself), the unit passes `systemd-analyze verify`, and `make uninstall`
leaves no file behind."""

import os
import re
import shutil
import subprocess

import pytest

import tnhelp

MAKE_TIMEOUT = 300


def make_vars():
    """The installation directories of $TERND_BUILD's Makefile, expanded."""
    raw = {}
    for line in (tnhelp.BUILD / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*) = (.*)$", line)
        if m:
            raw.setdefault(m.group(1), m.group(2).strip())

    def expand(v, depth=0):
        assert depth < 20, "recursive make variable %s" % v
        return re.sub(r"\$[({]([A-Za-z0-9_]+)[)}]",
                      lambda m: expand(raw.get(m.group(1), ""), depth + 1), v)
    return {k: expand(v) for k, v in raw.items()}


def make(*args):
    r = subprocess.run(["make", "-s", "-C", str(tnhelp.BUILD)] + list(args),
                       capture_output=True, text=True, timeout=MAKE_TIMEOUT)
    assert r.returncode == 0, "make %s failed:\n%s%s" % (" ".join(args), r.stdout, r.stderr)
    return r


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not (tnhelp.BUILD / "Makefile").exists():
        pytest.skip("no Makefile in %s" % tnhelp.BUILD)
    root = tmp_path_factory.mktemp("destdir")
    make("install", "DESTDIR=%s" % root)
    v = make_vars()
    yield root, v, lambda var, *rest: root.joinpath(v[var].lstrip("/"), *rest)
    shutil.rmtree(root, ignore_errors=True)


def test_tree(installed):
    root, v, at = installed
    for path in (at("sbindir", "ternd"), at("bindir", "ternctl")):
        assert path.is_file() and os.access(path, os.X_OK), path
    for mod in ("broker.so", "pool.so", "discovery.so"):
        assert at("pkglibdir", "modules", mod).is_file()
    assert not list(at("pkglibdir", "modules").glob("*.la")), "libtool archives installed"
    assert at("pkglibdir", "plugins").is_dir()
    assert at("pkgdatadir", "scripts", "broker.lua").is_file()
    assert at("pkgdatadir", "scripts", "gateway", "route.lua").is_file()
    assert at("sysconfdir", "ternd", "ternd.yaml").is_file()
    for page in ("man1/ternctl.1", "man5/ternd.yaml.5", "man7/ternd-lua.7", "man8/ternd.8"):
        assert at("mandir", page).is_file(), page
    assert at("includedir", "ternd", "module.h").is_file()
    assert at("sysusersdir", "ternd.conf").is_file()
    # everything below the prefix, the system-wide systemd directories aside
    allowed = [v[d].lstrip("/") for d in ("prefix", "systemdsystemunitdir", "sysusersdir",
                                          "sysconfdir")]
    for f in files_under(root):
        assert any(f.startswith(a + "/") for a in allowed), f


def test_installed_config_uses_fhs_paths(installed):
    root, v, at = installed
    text = at("sysconfdir", "ternd", "ternd.yaml").read_text()
    assert re.search(r"^  data_dir: %s  #" % re.escape(v["terndstatedir"]), text, re.M)
    assert v["terndstatedir"] == "/var/lib/ternd" or "--with-statedir" in \
        (tnhelp.BUILD / "config.log").read_text()
    # example scripts named by the installed paths
    assert "#    script: %s/scripts/gateway/route.lua" % v["pkgdatadir"] in text
    # the built-in default (conf/ternd.yaml, embedded) keeps ./data
    assert "\n  data_dir: ./data\n" in (tnhelp.SRCDIR / "conf" / "ternd.yaml").read_text()


def test_unit(installed):
    root, v, at = installed
    unit = at("systemdsystemunitdir", "ternd.service").read_text()
    conf = os.path.join(v["sysconfdir"], "ternd", "ternd.yaml")
    keys = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, val = line.partition("=")
            keys.setdefault(k, val)
    assert keys["ExecStart"] == "%s/ternd -c %s" % (v["sbindir"], conf)
    assert keys["Type"] == "notify"
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert keys["WatchdogSec"] == "30"
    assert keys["User"] == keys["Group"] == "ternd"
    assert keys["StateDirectory"] == "ternd"
    assert keys["ReadWritePaths"] == "-" + v["terndstatedir"]
    for k in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "LimitNOFILE",
              "LogsDirectory", "RuntimeDirectory"):
        assert keys.get(k), k
    assert not re.search(r"@[a-z_]+@", unit), "unsubstituted @...@ left"


def test_unit_verifies(installed, tmp_path):
    root, v, at = installed
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze not installed")
    # verify checks that ExecStart exists: point it at the DESTDIR copy
    unit = at("systemdsystemunitdir", "ternd.service").read_text()
    unit = unit.replace(v["sbindir"] + "/ternd", str(at("sbindir", "ternd")))
    (tmp_path / "ternd.service").write_text(unit)
    r = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "ternd.service")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def adjusted_config(root, v, at, tmp_path, listen):
    """The installed ternd.yaml with its FHS paths moved into tmp_path and
    the shipped broker script as hook."""
    text = at("sysconfdir", "ternd", "ternd.yaml").read_text()
    text = text.replace("  data_dir: %s " % v["terndstatedir"],
                        "  data_dir: %s " % (tmp_path / "data"), 1)
    text = text.replace("admin_listen: 127.0.0.1:4171", "admin_listen: %s" % listen)
    text = text.replace("tcp_listen: 127.0.0.1:4150", "tcp_listen: %s" % listen, 1)
    text = text.replace("http_listen: 127.0.0.1:4151", "http_listen: %s" % listen, 1)
    text = re.sub(r"^    script: ~", "    script: %s" % at("pkgdatadir", "scripts", "broker.lua"),
                  text, count=1, flags=re.M)
    assert str(tmp_path / "data") in text and "broker.lua" in text
    path = tmp_path / "ternd.yaml"
    path.write_text(text)
    return path


def test_installed_binary_checks_config(installed, tmp_path):
    root, v, at = installed
    conf = adjusted_config(root, v, at, tmp_path, "127.0.0.1:0")
    r = subprocess.run([str(at("sbindir", "ternd")), "-t", "-c", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    # ... and it is the installed tree it loads: a broken script is caught
    bad = tmp_path / "bad.lua"
    bad.write_text("this is not lua(\n")
    conf.write_text(conf.read_text().replace(str(at("pkgdatadir", "scripts", "broker.lua")),
                                             str(bad)))
    r = subprocess.run([str(at("sbindir", "ternd")), "-t", "-c", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1


def test_installed_binary_runs_and_ternctl_talks_to_it(installed, tmp_path):
    root, v, at = installed
    conf = adjusted_config(root, v, at, tmp_path, "127.0.0.1:0")
    log = open(tmp_path / "stderr.log", "wb")
    p = subprocess.Popen([str(at("sbindir", "ternd")), "-c", str(conf)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(tmp_path))
    try:
        def port(prefix):
            m = re.findall(r"%s 127\.0\.0\.1:(\d+)$" % prefix,
                           (tmp_path / "stderr.log").read_text(), re.M)
            return int(m[-1]) if m else None

        def ready():
            assert p.poll() is None, (tmp_path / "stderr.log").read_text()
            return "] core: ready" in (tmp_path / "stderr.log").read_text()
        tnhelp.wait_for(ready, 15, what="the installed ternd to start")
        assert "] core: module broker " in (tmp_path / "stderr.log").read_text()
        admin, http = port("core: admin HTTP on"), port("broker: HTTP listening on")
        r = subprocess.run([str(at("bindir", "ternctl")), "-a", "127.0.0.1:%d" % admin,
                            "-b", "127.0.0.1:%d" % http, "ping"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "data").is_dir()
    finally:
        p.terminate()
        try:
            assert p.wait(timeout=15) == 0
        finally:
            p.kill()
            log.close()


def test_uninstall_leaves_no_files(tmp_path):
    if not (tnhelp.BUILD / "Makefile").exists():
        pytest.skip("no Makefile in %s" % tnhelp.BUILD)
    make("install", "DESTDIR=%s" % tmp_path)
    assert files_under(tmp_path)
    make("uninstall", "DESTDIR=%s" % tmp_path)
    assert files_under(tmp_path) == []
