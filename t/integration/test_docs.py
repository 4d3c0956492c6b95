"""The manual pages and the shipped configuration describe what exists:
every man page formats without a groff warning, the commented-out module
sections of conf/ternd.yaml are accepted by `ternd -t` once uncommented,
and the keys ternd.yaml(5) documents are the keys conf/ternd.yaml lists."""

import re
import shutil
import subprocess

import pytest
import yaml

import tnhelp

MAN_DIR = tnhelp.SRCDIR / "man"
CONF = tnhelp.SRCDIR / "conf" / "ternd.yaml"
YAML_MAN = MAN_DIR / "ternd.yaml.5"

# A commented-out module section starts with `#name:` (no space after the
# '#'); prose comments start with "# ".
BLOCK_HEAD = re.compile(r"^#([a-z_][a-z0-9_]*):")


def man_pages():
    return sorted(p for p in MAN_DIR.iterdir() if re.search(r"\.[1-8]$", p.name))


def test_every_man_page_is_shipped():
    makefile = (tnhelp.SRCDIR / "Makefile.am").read_text()
    line = re.search(r"^dist_man_MANS\s*=(.*)$", makefile, re.M).group(1)
    assert sorted(line.split()) == sorted("man/" + p.name for p in man_pages())
    assert not list(MAN_DIR.glob("*.draft")), "unmerged draft man text"


@pytest.mark.parametrize("page", man_pages(), ids=lambda p: p.name)
def test_man_page_formats_without_warnings(page):
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed")
    r = subprocess.run([groff, "-man", "-Tutf8", "-ww", str(page)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    # the page has a name and a description (bold is overstruck: c\bc)
    text = re.sub(r".\x08", "", r.stdout)
    assert "\nNAME\n" in text and "\nDESCRIPTION\n" in text


def uncomment_sections(text):
    """conf/ternd.yaml with every `#name:` block uncommented (a block runs
    until the first line that does not start with '#'), and the names of
    those blocks."""
    out, names, inside = [], [], False
    for line in text.splitlines(keepends=True):
        m = BLOCK_HEAD.match(line)
        if m:
            inside = True
            names.append(m.group(1))
        elif not line.startswith("#"):
            inside = False
        out.append(line[1:] if inside else line)
    return "".join(out), names


def test_uncomment_sections_keeps_prose_comments():
    text = "# prose\n#pool:\n#  # a comment\n#  pools: ~\n\nbroker: ~\n"
    out, names = uncomment_sections(text)
    assert names == ["pool"]
    assert out == "# prose\npool:\n  # a comment\n  pools: ~\n\nbroker: ~\n"


def checkable(text):
    """Uncommented conf/ternd.yaml made to run from a temporary directory:
    the modules of the build, and the example scripts it names relative to
    the source tree (-t compiles them) by their full paths."""
    modules_dir = tnhelp.BUILD / "lib" / "ternd" / "modules"
    assert re.search(r"^  modules_dir: ~$", text, re.M)
    text = re.sub(r"^  modules_dir: ~$", "  modules_dir: %s" % modules_dir, text, flags=re.M)
    script = "script: scripts/gateway/route.lua"
    assert text.count(script) == 1
    text = text.replace(script, "script: %s" % (tnhelp.SRCDIR / "scripts/gateway/route.lua"))
    # auth_file reads its secrets file at -t: the example shipped with it
    secrets = "file: /etc/ternd/secrets.json"
    assert text.count(secrets) == 1
    return text.replace(secrets, "file: %s"
                        % (tnhelp.SRCDIR / "plugins/auth_file/secrets.example.json"))


def test_commented_sections_are_accepted(tmp_path):
    text, names = uncomment_sections(CONF.read_text())
    assert {"pool", "discovery", "gateway"} <= set(names)
    doc = yaml.safe_load(text)
    assert set(names) <= set(doc), "an uncommented block is not a top-level section"
    # The modules of the build, and the documented values of every key.
    text = checkable(text)
    conf = tmp_path / "all-sections.yaml"
    conf.write_text(text)
    r = tnhelp.run(["-t", "-c", conf], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ternd: %s: configuration OK\n" % conf
    # ...and a wrong key in one of them is caught, so the check is real.
    bad = tmp_path / "bad.yaml"
    assert "\n  max_producers:" in text
    bad.write_text(text.replace("\n  max_producers:", "\n  max_producerz:"))
    r = tnhelp.run(["-t", "-c", bad], cwd=tmp_path)
    assert r.returncode == 1
    assert "discovery.max_producerz: unknown key" in r.stderr


def test_commented_gateway_section_is_checked(tmp_path):
    """The uncommented gateway block is really read by gateway.so: a value
    its own check refuses (route_bytes 3) fails."""
    text = checkable(uncomment_sections(CONF.read_text())[0])
    assert "\n    route_bytes: 2\n" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("\n    route_bytes: 2\n", "\n    route_bytes: 3\n"))
    r = tnhelp.run(["-t", "-c", bad], cwd=tmp_path)
    assert r.returncode == 1
    assert "gateway.packet.route_bytes: must be 1, 2 or 4" in r.stderr


def leaf_keys(node, prefix):
    """Dotted paths of the leaves of a parsed YAML mapping."""
    if not isinstance(node, dict) or not node:
        return {prefix}
    keys = set()
    for k, v in node.items():
        keys |= leaf_keys(v, "%s.%s" % (prefix, k))
    return keys


def man_keys(section):
    """Keys ternd.yaml(5) documents for a top-level section: the first
    line after every .TP that names section.KEY (font escapes and the
    placeholders of .BI lines joined, e.g. pool.pools.NAME.size)."""
    keys = set()
    lines = YAML_MAN.read_text().splitlines()
    for i, line in enumerate(lines[:-1]):
        if line != ".TP":
            continue
        m = re.match(r"^\.(B|BI|IB) (.*)$", lines[i + 1])
        if not m:
            continue
        words = re.findall(r'"[^"]*"|\S+', m.group(2))
        text = "".join(w.strip('"') for w in words)
        text = re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-")
        if text.startswith(section + "."):
            keys.add(text)
    return keys


def conf_sections():
    text, _ = uncomment_sections(CONF.read_text())
    return yaml.safe_load(text)


def test_daemon_keys_match_the_man_page():
    documented = man_keys("daemon")
    listed = leaf_keys(conf_sections()["daemon"], "daemon")
    assert documented == listed


@pytest.mark.parametrize("module", ["broker", "pool", "discovery", "gateway", "auth_file",
                                    "statsd", "stats_file"])
def test_module_keys_match_the_man_page(module):
    section = conf_sections()[module]
    listed = set()
    for key in leaf_keys(section, module):
        # lua: is documented once, as MODULE.lua (its keys in "The lua:
        # section"); channels: {} is one key; each pool is "name"; the
        # gateway's nodes: {NAME: [...]} is documented as one mapping.
        key = re.sub(r"^(%s\.lua)\..*$" % module, r"\1", key)
        key = re.sub(r"^pool\.pools\.[^.]+\.", "pool.pools.name.", key)
        key = re.sub(r"^gateway\.nodes\..*$", "gateway.nodes", key)
        listed.add(key)
    documented = man_keys(module)
    if module == "pool":
        documented.discard("pool.pools")  # the mapping itself, then its keys
    assert documented == listed


def man_item_keys(key):
    """The keys of the items of a list key of ternd.yaml(5), e.g. the
    listeners of broker.zmtp: the .TP/.B entries one .RS level inside the
    .TP that names key (the deeper ones are the values of those keys)."""
    lines = YAML_MAN.read_text().splitlines()
    start = lines.index(".B " + key)
    assert lines[start - 1] == ".TP"
    keys, depth = [], 0
    for i in range(start + 1, len(lines) - 1):
        line = lines[i]
        if line == ".RS":
            depth += 1
        elif line == ".RE":
            depth -= 1
        elif depth == 0 and (line in (".TP", ".SS") or line.startswith(".SH")):
            break
        elif depth == 1 and line == ".TP":
            m = re.match(r"^\.B (\S+)$", lines[i + 1])
            assert m, "an item key of %s is not one .B word: %r" % (key, lines[i + 1])
            keys.append(m.group(1))
    return keys


def conf_item_keys(key):
    """The item keys conf/ternd.yaml lists in the comment block above the
    live `key: []` line of its broker section ("#   name: VALUE ...")."""
    text = CONF.read_text()
    name = key.split(".")[-1]
    block = text[:text.index("\n  %s: []\n" % name)]
    block = block[block.rindex("\n  # ZeroMQ endpoints"):]
    return re.findall(r"^  #   ([a-z_]+): ", block, re.M)


def code_item_keys():
    """The keys zmtp_conf.c's table accepts for one broker.zmtp listener."""
    src = (tnhelp.SRCDIR / "modules" / "broker" / "zmtp_conf.c").read_text()
    table = re.search(r"zmtp_table\[\] = \{(.*?)TN_CONF_END", src, re.S).group(1)
    return re.findall(r'\{"([a-z_]+)", TN_CONF_', table)


def test_zmtp_item_keys_match_the_man_page(tmp_path):
    """broker.zmtp is one key in both places (test_module_keys_match...);
    the keys of its items are documented in ternd.yaml(5), listed in
    conf/ternd.yaml and read by the broker, the same ones in each."""
    documented = man_item_keys("broker.zmtp")
    assert len(documented) == len(set(documented))
    assert set(documented) == set(conf_item_keys("broker.zmtp"))
    assert set(documented) == set(code_item_keys())
    # ...and the real server takes every one of them (a pull listener is the
    # type that may have them all), and refuses a misspelled one.
    values = {"listen": "127.0.0.1:0", "type": "pull", "topic": "jobs", "channel": "zmq",
              "hwm": "10", "heartbeat": "1s", "request_timeout": "5s"}
    assert set(values) == set(documented)
    text = checkable(uncomment_sections(CONF.read_text())[0])
    assert text.count("\n  zmtp: []\n") == 1
    for name, bad in (("good", None), ("bad", "hwmm")):
        items = ", ".join("%s: %s" % (bad if k == "hwm" and bad else k, v)
                          for k, v in values.items())
        conf = tmp_path / ("%s.yaml" % name)
        conf.write_text(text.replace("\n  zmtp: []\n", "\n  zmtp:\n    - { %s }\n" % items))
        r = tnhelp.run(["-t", "-c", conf], cwd=tmp_path)
        if bad is None:
            assert r.returncode == 0, r.stderr
        else:
            assert r.returncode == 1
            assert "broker.zmtp[0].hwmm: unknown key" in r.stderr, r.stderr
