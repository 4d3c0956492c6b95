"""The module loader, with the test modules of t/modules: sample (a line
echo server with every kind of key), sampledep (depends on sample) and
badabi (built for another ABI major)."""

import os
import re
import shutil
import time

import pytest

import tnhelp

pytestmark = pytest.mark.usefixtures("sample_modules")


def err_lines(stderr):
    return [line for line in stderr.splitlines()
            if re.match(r"^ternd: [^:]+:\d+:\d+: ", line)]


def check_fails(t, count):
    """ternd -t on t's file fails with count error lines: returns them."""
    r = t.check()
    assert r.returncode == 1
    lines = err_lines(r.stderr)
    assert len(lines) == count, r.stderr
    return lines


def line_of(t, text):
    """1-based line number of text in t's file."""
    return t.conf_text().splitlines().index(text) + 1


def index_of(lines, pattern, start=0):
    rx = re.compile(pattern)
    for i in range(start, len(lines)):
        if rx.search(lines[i]):
            return i
    raise AssertionError("no line /%s/ in:\n%s" % (pattern, "\n".join(lines)))


def test_sample_module_serves(ternd):
    t, port = tnhelp.start_sample(ternd, greeting="hi")
    with tnhelp.LineClient(port) as c:
        assert c.ask("abc") == "hi abc"
        assert c.ask("two words") == "hi two words"
        assert c.ask("QUIT") == "BYE"
    log = t.log()
    assert re.search(r'\[info\] sample: init \(greeting "hi", 0 tags\)', log)
    assert re.search(r"\[info\] core: module sample 1\.0 started", log)
    assert "sample: listening on 127.0.0.1:%d" % port in log
    t.stop()


def test_sample_keys_of_every_type(ternd):
    port = tnhelp.free_port()
    t = ternd(text="sample:\n"
                   "  listen: 127.0.0.1:%d\n"
                   "  greeting: yo\n"
                   "  max_line: 8\n"
                   "  buffer: 1KiB\n"
                   "  idle_timeout: 30s\n"
                   "  mode: upper\n"
                   "  fail_init: no\n"
                   "  tags: [a, b, c]\n" % port)
    r = t.check()
    assert r.returncode == 0, r.stderr
    t.start()
    assert 'sample: init (greeting "yo", 3 tags)' in t.log()
    with tnhelp.LineClient(port) as c:
        assert c.ask("shout") == "yo SHOUT"
        # max_line 8: a longer line without newline is refused
        c.sock.sendall(b"x" * 20)
        assert c.readline() == "ERROR line too long"
    t.stop()


def test_module_with_defaults_from_null_section(ternd):
    t = ternd(text="sample: ~\n")
    t.start()
    assert 'sample: init (greeting "hello", 0 tags)' in t.log()
    t.stop()


def test_module_key_errors_are_reported_with_path(ternd):
    t = ternd(text="sample:\n"
                   "  max_line: 0\n"
                   "  mode: loud\n"
                   "  nokey: 1\n"
                   "  idle_timeout: 5 fortnights\n"
                   "  lua:\n"
                   "    memory_limit: lots\n")
    base = line_of(t, "sample:")
    lines = check_fails(t, 5)
    conf = str(t.conf_path)
    for rel, key in [(1, "sample.max_line"), (2, "sample.mode"), (3, "sample.nokey"),
                     (4, "sample.idle_timeout"), (6, "sample.lua.memory_limit")]:
        rx = r"^ternd: %s:%d:\d+: %s: " % (re.escape(conf), base + rel, re.escape(key))
        assert any(re.match(rx, line) for line in lines), (key, lines)


def test_module_cross_check_reported_at_key(ternd):
    t = ternd(text="sample:\n  max_line: 100\n  buffer: 10\n")
    lines = check_fails(t, 1)
    rx = (r"^ternd: %s:%d:\d+: sample\.buffer: must be at least max_line \(100 bytes\)$"
          % (re.escape(str(t.conf_path)), line_of(t, "sample:") + 2))
    assert re.match(rx, lines[0]), lines


def test_daemon_and_module_errors_reported_together(ternd):
    t = ternd(daemon={"log_level": "chatty"}, text="sample:\n  mode: loud\n")
    r = t.check()
    assert r.returncode == 1
    keys = [re.match(r"^ternd: [^:]+:\d+:\d+: ([^:]+):", line).group(1)
            for line in err_lines(r.stderr)]
    assert "daemon.log_level" in keys and "sample.mode" in keys, r.stderr


def test_dependency_loaded_and_ordered(ternd):
    # only sampledep is named: sample comes in as its dependency, starts
    # first, and stops last
    t = ternd(text="sampledep: ~\n")
    t.start()
    lines = t.log().splitlines()
    i_sample = index_of(lines, r"core: module sample 1\.0 started")
    i_dep = index_of(lines, r"sampledep: started; sample service found")
    assert i_sample < i_dep
    assert index_of(lines, r"sample: init") < index_of(lines, r"sample: started") < i_dep
    t.stop()
    lines = t.log().splitlines()
    i_depstop = index_of(lines, r"sampledep: stopped")
    i_stop = index_of(lines, r"sample: stopped")
    i_fini = index_of(lines, r"sample: fini")
    assert i_depstop < i_stop < i_fini
    assert re.search(r"core: stopped$", lines[-1]), lines[-1]


def test_dependency_order_independent_of_file_order(ternd):
    t = ternd(text="sampledep: ~\nsample:\n  greeting: first\n")
    t.start()
    lines = t.log().splitlines()
    assert index_of(lines, r"module sample 1\.0 started") < \
        index_of(lines, r"module sampledep 1\.0 started")
    assert 'greeting "first"' in t.log()
    t.stop()


def test_bad_abi_refused_with_one_line_naming_the_file(ternd, sample_modules):
    t = ternd(text="badabi: ~\n")
    base = line_of(t, "badabi: ~")
    lines = check_fails(t, 1)
    path = str(sample_modules / "badabi.so")
    assert lines[0].startswith("ternd: %s:%d:1: badabi: " % (t.conf_path, base)), lines[0]
    assert path in lines[0]
    assert "ABI 2.0" in lines[0]
    # and the server does not start with it
    t2 = ternd(text="badabi: ~\n")
    t2.start(wait=False)
    assert t2.wait_exit() == 1
    assert path in t2.stderr()


def test_unknown_module(ternd, sample_modules):
    t = ternd(text="nosuch:\n  a: 1\n")
    base = line_of(t, "nosuch:")
    lines = check_fails(t, 1)
    assert lines[0] == ("ternd: %s:%d:1: nosuch: unknown module: no nosuch.so in %s or %s"
                        % (t.conf_path, base, sample_modules, t.tmp / "plugins")), lines[0]


def test_invalid_section_name(ternd):
    t = ternd(text="Bad-Name: 1\n")
    r = t.check()
    assert r.returncode == 1
    assert "unknown section" in r.stderr
    assert "Bad-Name" in r.stderr


def test_module_found_in_plugins_dir(ternd, sample_modules, tmp_path):
    # modules_dir has no sample.so; plugins_dir has it: a section finds it there
    empty = tmp_path / "nomods"
    empty.mkdir()
    t = ternd(daemon={"modules_dir": str(empty)}, text="sample:\n  greeting: via-plugins\n")
    shutil.copy(sample_modules / "sample.so", t.tmp / "plugins" / "sample.so")
    t.start()
    assert 'greeting "via-plugins"' in t.log()
    t.stop()


def test_plugins_dir_loads_every_so(ternd, sample_modules):
    t = ternd()
    os.symlink(sample_modules / "sample.so", t.tmp / "plugins" / "sample.so")
    t.start()
    assert re.search(r"core: module sample 1\.0 started", t.log()), t.log()
    t.stop()
    assert "sample: fini" in t.log()


def test_plugins_by_name_and_path(ternd, sample_modules):
    t = ternd(daemon={"plugins": ["sample"]})
    t.start()
    assert re.search(r"core: module sample 1\.0 started", t.log())
    t.stop()
    t2 = ternd(daemon={"plugins": [str(sample_modules / "sampledep.so")]})
    t2.start()
    # the plugin's dependency comes from modules_dir
    lines = t2.log().splitlines()
    assert index_of(lines, r"module sample 1\.0 started") < \
        index_of(lines, r"sampledep: started; sample service found")
    t2.stop()


def test_bad_plugin_reported_at_its_list_entry(ternd):
    t = ternd(daemon={"plugins": ["sample", "nosuchplugin"]})
    r = t.check()
    assert r.returncode == 1
    assert re.search(r"daemon\.plugins\[1\]: unknown module: no nosuchplugin\.so", r.stderr), \
        r.stderr


def test_init_failure_stops_startup(ternd):
    t = ternd(text="sample:\n  fail_init: true\n")
    assert t.check().returncode == 0  # the file is fine; init refuses
    t.start(wait=False)
    assert t.wait_exit() == 1
    log = t.log()
    assert "sample: init refused (fail_init is set)" in log
    assert re.search(r"core: module sample \(.*sample\.so\): init failed", log), log


def test_dependent_start_failure_stops_the_rest(ternd):
    # sampledep's dependency fails init: nothing starts, exit 1
    t = ternd(text="sample:\n  fail_init: true\nsampledep: ~\n")
    t.start(wait=False)
    assert t.wait_exit() == 1
    assert "sampledep: started" not in t.log()


def test_listen_failure_is_a_startup_error(ternd):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        t = ternd(sections={"sample": {"listen": "127.0.0.1:%d" % port}})
        t.start(wait=False)
        assert t.wait_exit() == 1
    assert re.search(r"module sample .*start failed", t.log()), t.log()


def test_sample_http_route_and_stats(ternd):
    port, hport = tnhelp.free_port(), tnhelp.free_port()
    t = ternd(sections={"sample": {"listen": "127.0.0.1:%d" % port,
                                   "http_listen": "127.0.0.1:%d" % hport,
                                   "greeting": "hey"}})
    t.start()
    r = tnhelp.request(hport, "GET", "/greeting?name=J%C3%BCrgen+X")
    assert r.status == 200
    assert r.text() == "hey J\u00fcrgen X\n"
    assert tnhelp.request(hport, "GET", "/greeting").text() == "hey world\n"
    with tnhelp.LineClient(port) as c:
        for i in range(3):
            c.ask("n%d" % i)
        m = t.metrics()
        assert m["ternd_sample_lines_total"] == 3
        assert m['ternd_sample_connections{listener="sample.tcp"}'] == 1
    t.stop()


def test_sample_idle_timeout_closes_quiet_connections(ternd):
    # the sample's idle_timeout goes to tn_conn_set_idle_timeout
    # 300 ms, stretched under valgrind so that a slow answer does not use
    # up the busy client's margin
    t, port = tnhelp.start_sample(ternd, idle_timeout=tnhelp.duration(0.3))
    with tnhelp.LineClient(port) as c:
        t0 = time.monotonic()  # before the last activity: it cannot close sooner
        assert c.ask("x") == "hello x"
        assert tnhelp.closed_by_peer(c.sock, 5)
        assert tnhelp.scaled(0.2) <= time.monotonic() - t0 < tnhelp.scaled(3)
    with tnhelp.LineClient(port) as busy:
        for i in range(6):  # activity keeps it open past the timeout
            time.sleep(tnhelp.scaled(0.1))
            assert busy.ask("n%d" % i) == "hello n%d" % i
    t.stop()


def test_daemon_http_limits_apply_to_module_http_servers(ternd):
    hport = tnhelp.free_port()
    t, port = tnhelp.start_sample(ternd, daemon={"http": {"max_body_size": "1KiB"}},
                                  http_listen="127.0.0.1:%d" % hport)
    assert t.get("/ping").status == 200
    r = tnhelp.request(hport, "POST", "/greeting", body="x" * 4096)
    assert r.status == 413
    t.stop()
