"""SIGHUP: a changed valid file applies without dropping connections; a
broken one is refused with its errors logged and the old settings kept;
modules come and go; the sample module's Lua script reloads."""

import re
import signal
import time

import pytest

import tnhelp

pytestmark = pytest.mark.usefixtures("sample_modules")


def sample_server(ternd, greeting="hello"):
    return tnhelp.start_sample(ternd, greeting=greeting)


def test_reload_applies_new_module_settings(ternd):
    t, port = sample_server(ternd, "hello")
    with tnhelp.LineClient(port) as old:
        assert old.ask("a") == "hello a"
        t.sections["sample"]["greeting"] = "bonjour"
        t.sections["sample"]["mode"] = "upper"
        log = t.reload()
        assert "core: reload done" in log
        assert 'sample: reloaded (greeting "bonjour")' in log
        # the connection opened before the reload is still served, with
        # the new settings
        assert old.ask("b") == "bonjour B"
    with tnhelp.LineClient(port) as new:
        assert new.ask("c") == "bonjour C"
    t.stop()


def test_reload_log_level(ternd):
    # at info the sample's debug line for a closed connection is not logged;
    # after a reload to debug it is
    t, port = sample_server(ternd)
    with tnhelp.LineClient(port) as c:
        c.ask("x")
    t.wait_log(r"\] core: ready")
    mark = t.log_size()
    t.daemon["log_level"] = "debug"
    t.reload()
    with tnhelp.LineClient(port) as c:
        c.ask("y")
    t.wait_log(r"\[debug\] sample: connection 127\.0\.0\.1:\d+ closed", since=mark)
    assert "[debug]" not in t.log()[:mark]
    # to warn: "reload done" (info) is not logged any more, so wait for the
    # warning a changed admin_listen gives
    t.daemon["log_level"] = "warn"
    t.daemon["admin_listen"] = "127.0.0.1:%d" % tnhelp.free_port()
    mark = t.log_size()
    t.write_conf()
    t.send_signal(signal.SIGHUP)
    t.wait_log(r"\[warn\] core: daemon\.admin_listen changed", since=mark)
    with tnhelp.LineClient(port) as c:
        c.ask("z")
    assert t.get("/ping").status == 200
    t.stop()
    after = t.log()[mark:].split("admin_listen changed", 1)[1]
    assert "[info]" not in after and "[debug]" not in after, after


def test_broken_reload_keeps_old_config(ternd):
    t, port = sample_server(ternd, "hello")
    with tnhelp.LineClient(port) as c:
        good = t.conf_text()
        broken = good.replace("greeting: hello", "greeting: hello\n  max_line: -5") \
                     .replace("log_level: info", "log_level: shouty")
        lines = broken.splitlines()
        ll_line = lines.index("  log_level: shouty") + 1
        ml_line = lines.index("  max_line: -5") + 1
        log = t.reload(broken)
        conf = re.escape(str(t.conf_path))
        assert re.search(r"\[error\] core: %s:%d:14: daemon\.log_level: " % (conf, ll_line), log), log
        assert re.search(r"\[error\] core: %s:%d:\d+: sample\.max_line: " % (conf, ml_line), log), log
        assert "reload rejected: keeping the running configuration" in log
        assert "reload done" not in log
        assert t.alive()
        # same greeting, same connection, same admin
        assert c.ask("still") == "hello still"
        assert t.get("/ping").status == 200
        # a fixed file is then accepted
        t.sections["sample"]["greeting"] = "fixed"
        log = t.reload()
        assert "reload done" in log
        assert c.ask("now") == "fixed now"
    t.stop()


def test_reload_with_syntax_error(ternd):
    t, port = sample_server(ternd)
    log = t.reload("daemon:\n  log_level: [info\n")
    assert re.search(r"core: %s:\d+:\d+: " % re.escape(str(t.conf_path)), log), log
    assert "reload rejected" in log
    with tnhelp.LineClient(port) as c:
        assert c.ask("ok") == "hello ok"
    t.stop()


def test_reload_with_missing_file(ternd):
    t, port = sample_server(ternd)
    t.conf_path.unlink()
    mark = t.log_size()
    t.send_signal(signal.SIGHUP)
    log = t.wait_log(r"reload rejected", since=mark)
    assert str(t.conf_path) in log
    with tnhelp.LineClient(port) as c:
        assert c.ask("ok") == "hello ok"
    t.stop()


def test_reload_adds_and_removes_modules(ternd):
    t = ternd()
    t.start()
    port = tnhelp.free_port()
    t.sections = {"sample": {"listen": "127.0.0.1:%d" % port, "greeting": "new"}}
    log = t.reload()
    assert re.search(r"core: module sample 1\.0 started", log), log
    with tnhelp.LineClient(port) as c:
        assert c.ask("m") == "new m"
    # and sampledep too: sample is kept (no second init), sampledep starts
    t.sections["sampledep"] = {}
    log = t.reload()
    assert "sampledep: started; sample service found" in log
    assert "sample: init" not in log
    # remove both
    t.sections = {}
    log = t.reload()
    assert "module sampledep removed by the new configuration" in log
    assert "module sample removed by the new configuration" in log
    assert log.index("sampledep: stopped") < log.index("sample: stopped")
    assert "sample: fini" in log
    # the listener is gone
    with pytest.raises(OSError):
        tnhelp.LineClient(port, timeout=2).ask("gone")
    t.stop()


def test_reload_new_module_failing_is_logged(ternd):
    t = ternd()
    t.start()
    t.sections = {"sample": {"fail_init": True}}
    log = t.reload()
    assert "init refused (fail_init is set)" in log
    assert "a new module failed to start" in log
    assert t.get("/ping").status == 200
    t.stop()


def test_reload_restart_only_settings_warn(ternd):
    t = ternd()
    t.start()
    old = t.daemon["admin_listen"]
    t.daemon["admin_listen"] = "127.0.0.1:%d" % tnhelp.free_port()
    log = t.reload()
    assert re.search(r"\[warn\] core: daemon\.admin_listen changed \(%s -> %s\): takes effect "
                     r"on restart" % (re.escape(old), re.escape(t.daemon["admin_listen"])), log)
    # still on the old port
    assert t.get("/ping").status == 200
    t.stop()


def test_open_connection_survives_many_reloads(ternd):
    t, port = sample_server(ternd, "g0")
    with tnhelp.LineClient(port) as c:
        for i in range(1, 6):
            t.sections["sample"]["greeting"] = "g%d" % i
            t.reload()
            assert c.ask("x") == "g%d x" % i
    t.stop()


# ---- Lua script of the sample module ---------------------------------------

def lua_server(ternd, script_text, **lua):
    """A started ternd whose sample module runs script_text: (t, port, script)."""
    t = ternd()
    _, script = tnhelp.sample_with_lua(t, script_text, listen=tnhelp.ANY_PORT, **lua)
    t.start()
    return t, tnhelp.sample_port(t), script


V1 = 'function on_line(s) return "v1:" .. s end\n'


@pytest.mark.parametrize("new_script,expect_log,answer", [
    ('function on_line(s) return "v2:" .. s:upper() end\n', [r"core: reload done"], "v2:B"),
    # the check compiles the script: the whole reload is refused
    ("function on_line(s) return end end end\n",
     [r"\[error\] core: [^:]+:\d+:\d+: sample\.lua\.script: .*sample\.lua:1:",
      r"reload rejected"], "v1:b"),
    # compiles, so the file passes the check, but fails when it runs
    ('function on_line(s) return "v2" end\nerror("boom at load")\n',
     [r"sample: lua reload failed, keeping the old script", r"boom at load"], "v1:b"),
], ids=["valid", "syntax-error", "error-at-load"])
def test_lua_script_reload(ternd, new_script, expect_log, answer):
    t, port, script = lua_server(ternd, V1)
    with tnhelp.LineClient(port) as c:
        assert c.ask("a") == "v1:a"
        script.write_text(new_script)
        log = t.reload()
        for rx in expect_log:
            assert re.search(rx, log), (rx, log)
        assert c.ask("b") == answer
    t.stop()


def test_lua_script_removed_on_reload(ternd):
    t, port, script = lua_server(ternd, 'function on_line(s) return "lua:" .. s end\n')
    with tnhelp.LineClient(port) as c:
        assert c.ask("a") == "lua:a"
        del t.sections["sample"]["lua"]
        t.reload()
        assert c.ask("b") == "hello b"
        t.sections["sample"]["lua"] = {"script": str(script)}
        t.reload()
        assert c.ask("c") == "lua:c"
    t.stop()


def test_lua_state_is_fresh_after_reload(ternd):
    src = ("n = n or 0\n"
           "function on_line(s) n = n + 1; return tostring(n) end\n")
    t, port, script = lua_server(ternd, src)
    with tnhelp.LineClient(port) as c:
        assert [c.ask("x") for _ in range(3)] == ["1", "2", "3"]
        t.reload()
        assert c.ask("x") == "1"
    t.stop()


def test_reload_moves_the_log_file(ternd):
    t = ternd(daemon={"log_file": "a.log"})
    t.start()
    t.daemon["log_file"] = "b.log"
    t.write_conf()
    t.send_signal(signal.SIGHUP)
    # the rest of the reload is written to the new file
    t.wait_log(r"core: reload done")  # log_path() follows daemon.log_file: b.log
    t.stop()
    a, b = (t.tmp / "a.log").read_text(), (t.tmp / "b.log").read_text()
    assert "core: ready" in a and "core: reloading" in a
    assert "core: stopped" in b and "core: stopped" not in a


def test_reload_rescans_plugins_dir(ternd, sample_modules):
    t = ternd()
    plugin = t.tmp / "plugins" / "sample.so"
    plugin.symlink_to(sample_modules / "sample.so")
    t.start()
    assert re.search(r"core: module sample 1\.0 started", t.log())
    plugin.unlink()
    log = t.reload()
    assert "module sample removed by the new configuration" in log
    assert "sample: fini" in log
    plugin.symlink_to(sample_modules / "sample.so")
    log = t.reload()
    assert re.search(r"core: module sample 1\.0 started", log), log
    t.stop()


def test_sighup_during_stop_is_ignored(ternd):
    t, port = sample_server(ternd)
    with tnhelp.LineClient(port):  # keeps the drain going
        t.daemon["shutdown_timeout"] = "1s"
        t.send_signal(signal.SIGTERM)
        t.wait_log(r"stopping gracefully")
        mark = t.log_size()
        t.send_signal(signal.SIGHUP)
        assert t.wait_exit(tnhelp.scaled(10)) == 0
    assert "reloading" not in t.log()[mark:]


def test_module_that_failed_on_reload_can_be_fixed_by_another(ternd):
    # a module whose init failed during a reload is not running: the next
    # reload must start it, not hand it a new configuration as if it ran
    t = ternd()
    t.start()
    port = tnhelp.free_port()
    t.sections = {"sample": {"listen": "127.0.0.1:%d" % port, "fail_init": True}}
    log = t.reload()
    assert "init refused (fail_init is set)" in log
    t.sections["sample"]["fail_init"] = False
    log = t.reload()
    assert t.alive(), t.log()
    assert re.search(r"core: module sample 1\.0 started", log), log
    with tnhelp.LineClient(port) as c:
        assert c.ask("fixed") == "hello fixed"
    t.stop()


def test_reload_changes_shutdown_timeout(ternd):
    t, port = tnhelp.start_sample(ternd, daemon={"shutdown_timeout": tnhelp.duration(30)})
    t.daemon["shutdown_timeout"] = "300ms"
    t.reload()
    with tnhelp.LineClient(port) as c:
        c.ask("x")  # this connection would hold a 30s drain
        t0 = time.monotonic()
        t.stop()
        assert time.monotonic() - t0 < tnhelp.scaled(3)
    assert "shutdown timeout: closing 1 connections" in t.log()
