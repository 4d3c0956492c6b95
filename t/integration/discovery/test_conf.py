"""The discovery section: the commented example in conf/ternd.yaml is valid
once uncommented and names every key, the default config does not start
discovery, and cross-field checks report their key."""

import re

import tnhelp
from dschelp import modules_dir

CONF = tnhelp.SRCDIR / "conf" / "ternd.yaml"
KEYS = ["tcp_listen", "http_listen", "broadcast_address", "nsq_version", "inactive_timeout",
        "tombstone_lifetime", "max_producers", "max_registrations", "max_identify_size",
        "services", "default_ttl", "min_ttl", "max_ttl", "max_instances", "max_metadata_size",
        "max_watchers", "default_wait", "max_wait", "lua"]


def commented_section():
    text = CONF.read_text()
    m = re.search(r"^#discovery:\n((?:#.*\n?)*)", text, re.M)
    assert m, "no commented discovery section in conf/ternd.yaml"
    return "discovery:\n" + "".join(line[1:] + "\n" for line in m.group(1).splitlines())


def test_example_section_is_valid(ternd):
    section = commented_section()
    for key in KEYS:
        assert re.search(r"^\s+%s:" % key, section, re.M), key
    t = ternd(daemon={"modules_dir": str(modules_dir())}, text=section)
    r = t.check()
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout + r.stderr


def test_default_config_has_no_discovery():
    assert not re.search(r"^discovery:", CONF.read_text(), re.M)


def test_cross_checks(ternd):
    t = ternd(daemon={"modules_dir": str(modules_dir())}, sections={"discovery": {
        "services": {"min_ttl": "10s", "max_ttl": "5s", "default_ttl": "1h",
                     "default_wait": "10m", "max_wait": "1m"},
        "nsq_version": '""'}})
    r = t.check()
    assert r.returncode == 1
    err = r.stderr
    assert re.search(r":\d+:\d+: discovery\.services\.min_ttl: must not exceed services\.max_ttl",
                     err), err
    assert "discovery.services.default_ttl: must lie within" in err
    assert "discovery.services.default_wait: must not exceed services.max_wait" in err
    assert "discovery.nsq_version: must not be empty" in err


def test_unknown_key(ternd):
    t = ternd(daemon={"modules_dir": str(modules_dir())},
              sections={"discovery": {"services": {"ttl": "1s"}}})
    r = t.check()
    assert r.returncode == 1
    assert "discovery.services.ttl" in r.stderr, r.stderr


def test_port_in_use_fails_start(ternd):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        t = ternd(daemon={"modules_dir": str(modules_dir())}, sections={"discovery": {
            "tcp_listen": tnhelp.ANY_PORT,
            "http_listen": "127.0.0.1:%d" % port}})
        t.start(wait=False)
        rc = t.wait_exit()
    assert rc != 0
    assert re.search(r"\[error\] core: module discovery .*start failed: Address already in use",
                     t.stderr()), t.stderr()
