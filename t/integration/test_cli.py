"""The command line: -V, -h, -t on good and bad files, usage errors."""

import re
import shutil
import subprocess

import tnhelp

ERR_LINE = re.compile(r"^ternd: (?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): "
                      r"(?P<key>[^:]+): (?P<msg>.+)$")


def errors(stderr):
    """The file:line:col: key: message lines of a failed check."""
    out = []
    for line in stderr.splitlines():
        m = ERR_LINE.match(line)
        if m:
            out.append((m.group("file"), int(m.group("line")), int(m.group("col")),
                        m.group("key"), m.group("msg")))
    return out


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_version():
    r = tnhelp.run(["-V"])
    assert r.returncode == 0, r.stderr
    version = tnhelp.header_define("core.h", "TN_VERSION_STRING")
    major = tnhelp.header_define("module.h", "TN_ABI_MAJOR")
    minor = tnhelp.header_define("module.h", "TN_ABI_MINOR")
    assert r.stdout == "ternd %s (module ABI %s.%s)\n" % (version, major, minor)
    assert r.stderr == ""


def test_help():
    r = tnhelp.run(["-h"])
    assert r.returncode == 0
    assert r.stdout.startswith("usage: ternd")
    for opt in ("-c FILE", "-t", "-d", "-V", "-h"):
        assert opt in r.stdout


def test_unknown_option_prints_usage():
    r = tnhelp.run(["-x"])
    assert r.returncode == 1
    assert "usage: ternd" in r.stderr
    assert r.stdout == ""


def test_extra_argument_refused():
    r = tnhelp.run(["-t", "stray"])
    assert r.returncode == 1
    assert 'unexpected argument "stray"' in r.stderr
    assert "usage: ternd" in r.stderr


def test_missing_option_argument():
    r = tnhelp.run(["-c"])
    assert r.returncode == 1
    assert "usage: ternd" in r.stderr


def test_check_good_file(tmp_path):
    p = write(tmp_path, "good.yaml",
              "daemon:\n"
              "  log_level: debug\n"
              "  data_dir: %s\n"
              "  admin_listen: 127.0.0.1:1\n"
              "  max_connections: 50\n"
              "  shutdown_timeout: 1m30s\n"
              "  http:\n"
              "    max_header_size: 4KiB\n"
              "    max_body_size: 10KB\n"
              "    keepalive_timeout: 250ms\n"
              "    request_timeout: 2h\n"
              "    max_pipeline: 1024\n" % (tmp_path / "data"))
    r = tnhelp.run(["-t", "-c", p])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ternd: %s: configuration OK\n" % p
    # -t opens nothing and creates nothing
    assert not (tmp_path / "data").exists()


def test_check_shipped_file():
    p = tnhelp.SRCDIR / "conf" / "ternd.yaml"
    r = tnhelp.run(["-t", "-c", p])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ternd: %s: configuration OK\n" % p


def test_check_without_c_uses_a_default(tmp_path):
    # no -c: prefix/conf/ternd.yaml, sysconfdir, or the embedded copy
    r = tnhelp.run(["-t"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.match(r"^ternd: .+: configuration OK\n$", r.stdout), r.stdout


def test_check_empty_file_is_valid(tmp_path):
    p = write(tmp_path, "empty.yaml", "")
    r = tnhelp.run(["-t", "-c", p])
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout


def test_check_reports_every_error_with_its_place(tmp_path):
    text = ("daemon:\n"                        # 1
            "  log_level: loud\n"              # 2  value at col 14
            "  max_connections: lots\n"        # 3  value at col 20
            "  bogus_key: 1\n"                 # 4  unknown key
            "  shutdown_timeout: 10\n"         # 5  duration without unit, col 21
            "  http:\n"                        # 6
            "    max_pipeline: 5000\n"         # 7  out of 1..1024, col 19
            "    max_body_size: 3 parsecs\n")  # 8  bad size, col 20
    p = write(tmp_path, "bad.yaml", text)
    r = tnhelp.run(["-t", "-c", p])
    assert r.returncode == 1
    assert r.stdout == ""
    errs = errors(r.stderr)
    got = {(e[1], e[3]): e for e in errs}
    assert all(e[0] == str(p) for e in errs), errs
    expect = {(2, "daemon.log_level"): 14,
              (3, "daemon.max_connections"): 20,
              (5, "daemon.shutdown_timeout"): 21,
              (7, "daemon.http.max_pipeline"): 19,
              (8, "daemon.http.max_body_size"): 20}
    for (line, key), col in expect.items():
        assert (line, key) in got, "no error for %s at line %d in:\n%s" % (key, line, r.stderr)
        assert got[(line, key)][2] == col, got[(line, key)]
    # the unknown key: at the key (col 3) or its value (col 14)
    assert (4, "daemon.bogus_key") in got, r.stderr
    assert got[(4, "daemon.bogus_key")][2] in (3, 14)
    assert len(errs) == 6, r.stderr
    assert r.stderr.rstrip("\n").endswith("ternd: %s: configuration check failed" % p)


def test_check_error_messages_are_one_line_each(tmp_path):
    p = write(tmp_path, "bad.yaml", "daemon:\n  log_level: 3\n  data_dir: [a, b]\n")
    r = tnhelp.run(["-t", "-c", p])
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[-1] == "ternd: %s: configuration check failed" % p
    for line in lines[:-1]:
        assert ERR_LINE.match(line), line
    keys = [e[3] for e in errors(r.stderr)]
    assert "daemon.log_level" in keys and "daemon.data_dir" in keys


def test_check_duplicate_key(tmp_path):
    p = write(tmp_path, "dup.yaml", "daemon:\n  log_level: info\n  log_level: debug\n")
    r = tnhelp.run(["-t", "-c", p])
    assert r.returncode == 1
    errs = errors(r.stderr)
    assert [e[1] for e in errs if e[3] == "daemon.log_level"] == [3], r.stderr


def test_check_yaml_syntax_error_has_position(tmp_path):
    p = write(tmp_path, "syntax.yaml", "daemon:\n  log_level: info\n   bad: [unclosed\n")
    r = tnhelp.run(["-t", "-c", p])
    assert r.returncode == 1
    assert re.search(r"^ternd: %s:\d+:\d+: " % re.escape(str(p)), r.stderr, re.M), r.stderr
    assert "configuration check failed" in r.stderr


def test_check_root_must_be_a_mapping(tmp_path):
    p = write(tmp_path, "list.yaml", "- daemon\n- broker\n")
    r = tnhelp.run(["-t", "-c", p])
    assert r.returncode == 1
    assert re.search(r"^ternd: %s:1:1: " % re.escape(str(p)), r.stderr, re.M), r.stderr


def test_check_daemon_section_must_be_a_mapping(tmp_path):
    p = write(tmp_path, "scalar.yaml", "daemon: 7\n")
    r = tnhelp.run(["-t", "-c", p])
    assert r.returncode == 1
    assert re.search(r"^ternd: %s:1:9: daemon: " % re.escape(str(p)), r.stderr, re.M), r.stderr


def test_check_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    r = tnhelp.run(["-t", "-c", p])
    assert r.returncode == 1
    assert str(p) in r.stderr
    assert "configuration check failed" in r.stderr
    assert r.stdout == ""


def test_start_with_missing_file_fails(tmp_path):
    p = tmp_path / "nope.yaml"
    r = tnhelp.run(["-c", p])
    assert r.returncode == 1
    assert str(p) in r.stderr


def test_start_with_bad_file_fails_before_listening(tmp_path):
    port = tnhelp.free_port()
    p = write(tmp_path, "bad.yaml",
              "daemon:\n  admin_listen: 127.0.0.1:%d\n  log_level: nope\n" % port)
    r = tnhelp.run(["-c", p])
    assert r.returncode == 1
    assert any(e[3] == "daemon.log_level" and e[1] == 3 for e in errors(r.stderr)), r.stderr


def test_address_forms(tmp_path):
    good = ["127.0.0.1:4171", '"[::1]:4171"', ":4171", "unix:%s" % (tmp_path / "a.sock"), "~"]
    for i, addr in enumerate(good):
        p = write(tmp_path, "a%d.yaml" % i, "daemon:\n  admin_listen: %s\n" % addr)
        r = tnhelp.run(["-t", "-c", p])
        assert r.returncode == 0, (addr, r.stderr)
    for i, addr in enumerate(["127.0.0.1", "127.0.0.1:99999", "host:port", "\"unix:\""]):
        p = write(tmp_path, "b%d.yaml" % i, "daemon:\n  admin_listen: %s\n" % addr)
        r = tnhelp.run(["-t", "-c", p])
        assert r.returncode == 1, addr
        assert [e[1:4] for e in errors(r.stderr)] == [(2, 17, "daemon.admin_listen")], \
            (addr, r.stderr)


def test_config_and_modules_found_beside_the_binary(tmp_path):
    # an unpacked tree: PREFIX/bin/ternd finds PREFIX/conf/ternd.yaml and
    # PREFIX/lib/ternd/modules without being told
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "conf").mkdir()
    mods = prefix / "lib" / "ternd" / "modules"
    mods.mkdir(parents=True)
    exe = prefix / "bin" / "ternd"
    shutil.copy(tnhelp.ternd_bin(), exe)
    r = subprocess.run([str(exe), "-t"], capture_output=True, text=True, timeout=20,
                       cwd=tmp_path)
    # the built-in config loads the broker: found beside the binary once there
    assert r.returncode == 1 and "no broker.so in %s/../lib/ternd/modules" % (prefix / "bin") \
        in r.stderr, r.stderr
    for so in (tnhelp.BUILD / "lib" / "ternd" / "modules").glob("*.so"):
        (mods / so.name).symlink_to(so.resolve())
    r = subprocess.run([str(exe), "-t"], capture_output=True, text=True, timeout=20,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "/conf/ternd.yaml" not in r.stdout  # not there yet
    conf = prefix / "conf" / "ternd.yaml"
    conf.write_text("sample:\n  greeting: found\n")
    r = subprocess.run([str(exe), "-t"], capture_output=True, text=True, timeout=20,
                       cwd=tmp_path)
    assert r.returncode == 1  # found the file, but no sample.so yet
    shown = "%s/../conf/ternd.yaml" % (prefix / "bin")  # as ternd found it
    assert "ternd: %s:1:1: sample: unknown module: no sample.so in %s/../lib/ternd/modules\n" \
        % (shown, prefix / "bin") in r.stderr, r.stderr
    (mods / "sample.so").symlink_to(tnhelp.test_modules_dir() / "sample.so")
    r = subprocess.run([str(exe), "-t"], capture_output=True, text=True, timeout=20,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ternd: %s: configuration OK\n" % shown


def test_check_reports_hundreds_of_errors(tmp_path):
    keys = "".join("  bad_key_%03d: 1\n" % i for i in range(300))
    p = write(tmp_path, "many.yaml", "daemon:\n" + keys)
    r = tnhelp.run(["-t", "-c", p])
    assert r.returncode == 1
    errs = errors(r.stderr)
    assert len(errs) == 300
    assert [e[1] for e in errs] == list(range(2, 302))  # in file order
    assert all(e[3].startswith("daemon.bad_key_") for e in errs)
