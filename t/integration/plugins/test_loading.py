"""Drop-in loading: every .so in plugins_dir loads at start, one dropped in
later loads on SIGHUP, and the shipped plugins do nothing without their
sections (the default run stays as it was)."""

import re
import shutil

import pytest

import tnhelp
from pluginhelp import drop, plugins_built

SHIPPED = ("auth_file", "statsd", "stats_file")


def started(t, name, since=0):
    return re.search(r"\] core: module %s \S+ started$" % name, t.log()[since:], re.M)


def test_plugins_dir_loads_at_start_and_idles(plugged):
    t = plugged(plugins=SHIPPED)
    for name in SHIPPED:
        assert started(t, name), t.log()
    m = t.metrics()
    assert m["ternd_auth_file_secrets"] == 0
    # statsd and stats_file report nothing while they have nothing to do
    assert not [k for k in m if k.startswith(("ternd_statsd_", "ternd_stats_file_"))]
    assert not [ln for ln in t.log_lines() if ln[0] in ("warn", "error")], t.log()
    # nothing written next to the config
    assert sorted(p.name for p in t.tmp.iterdir()) == ["data", "plugins", "stderr.log",
                                                       "ternd.yaml"]


def test_default_plugins_dir_is_the_build_tree(plugged):
    """Without daemon.plugins_dir the build tree's lib/ternd/plugins is used:
    every shipped plugin loads, idle."""
    t = plugged(daemon={"plugins_dir": None})
    for name in SHIPPED:
        assert started(t, name), t.log()
    assert not [ln for ln in t.log_lines() if ln[0] in ("warn", "error")], t.log()


def test_plugin_dropped_in_loads_on_sighup(plugged):
    t = plugged(plugins=("auth_file",))
    assert started(t, "auth_file") and not started(t, "stats_file")
    out = t.tmp / "stats.prom"
    drop(t, "stats_file")
    t.sections = {"stats_file": {"path": str(out), "interval": "1s"}}
    log = t.reload()
    assert "core: reload done" in log, log
    assert started(t, "stats_file", t.log_size() - len(log)), log
    tnhelp.wait_for(out.exists, 5, what="the stats file")
    assert "ternd_stats_file_writes_total" in t.metrics()
    # removed from the directory and the config: stopped on the next SIGHUP
    (t.tmp / "plugins" / "stats_file.so").unlink()
    t.sections = {}
    log = t.reload()
    assert "module stats_file removed by the new configuration" in log, log
    assert "ternd_stats_file_writes_total" not in t.metrics()


def test_section_of_a_missing_plugin_is_an_error(ternd):
    t = ternd(sections={"statsd": {"address": "127.0.0.1:8125"}})
    r = t.check()
    assert r.returncode != 0
    assert "statsd: unknown module: no statsd.so in" in r.stderr


def test_bad_plugin_key_is_reported_with_its_place(plugged):
    t = plugged(plugins=("statsd",), sections={"statsd": {"interval": "5ms"}}, start=False)
    r = t.check()
    assert r.returncode != 0
    assert re.search(r"ternd\.yaml:\d+:\d+: statsd\.interval: must be between", r.stderr), r.stderr


def test_copied_plugin_file_works_too(plugged, tmp_path):
    """A plain copy (not a symlink) of the .so is just as good."""
    t = plugged(start=False)
    shutil.copy(plugins_built() / "auth_file.so", t.tmp / "plugins" / "auth_file.so")
    t.start()
    assert started(t, "auth_file"), t.log()


CONF = tnhelp.SRCDIR / "conf" / "ternd.yaml"
KEYS = {"auth_file": ["file"], "statsd": ["address", "prefix", "interval", "udp_packet_size"],
        "stats_file": ["path", "format", "interval"]}


def commented_section(name):
    m = re.search(r"^#%s:\n((?:#.*\n?)*)" % name, CONF.read_text(), re.M)
    assert m, "no commented %s section in conf/ternd.yaml" % name
    return "%s:\n" % name + "".join(line[1:] + "\n" for line in m.group(1).splitlines())


@pytest.mark.parametrize("name", sorted(KEYS))
def test_commented_sections_are_valid(plugged, name):
    section = commented_section(name)
    for key in KEYS[name]:
        assert re.search(r"^  %s:" % key, section, re.M), key
    t = plugged(plugins=SHIPPED, start=False)
    secrets = t.tmp / "secrets.json"
    secrets.write_text('{"secrets": []}')
    t.text = section.replace("/etc/ternd/secrets.json", str(secrets))
    t.write_conf()
    r = t.check()
    assert r.returncode == 0 and "configuration OK" in r.stdout + r.stderr, r.stderr
    # and none of them is on in the default configuration
    assert not re.search(r"^%s:" % name, CONF.read_text(), re.M)
