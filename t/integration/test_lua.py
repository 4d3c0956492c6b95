"""The Lua host (ternd-lua(7)) through the sample module: its script's
on_line(text) answers each line, so a script that evaluates the line as Lua
lets the tests call the `ternd` table from a real running server."""

import json
import re
import time

import pytest

import tnhelp

pytestmark = pytest.mark.usefixtures("sample_modules")

EVAL = """
-- each line is a Lua chunk; its result (a string) is the answer
function on_line(s)
    local f = assert(load(s, "=line"))
    return f()
end
"""


def lua_eval_server(ternd, script=EVAL, **lua):
    t = ternd()
    tnhelp.sample_with_lua(t, script, listen=tnhelp.ANY_PORT, **lua)
    t.start()
    return t, tnhelp.LineClient(tnhelp.sample_port(t))


@pytest.fixture
def lua(ternd):
    t, c = lua_eval_server(ternd)
    yield t, c
    c.close()
    t.stop()


def test_version(lua):
    t, c = lua
    assert c.ask("return ternd.version") == tnhelp.header_define("core.h", "TN_VERSION_STRING")


def test_module_opener_ran(lua):
    # the sample's own opener adds ternd.module
    t, c = lua
    assert c.ask("return ternd.module") == "sample"


def test_now_is_wall_clock_seconds(lua):
    t, c = lua
    before = time.time()
    now = float(c.ask("return string.format('%.6f', ternd.now())"))
    after = time.time()
    assert before - 1 <= now <= after + 1


def test_monotonic_measures_elapsed(lua):
    t, c = lua
    a = float(c.ask("return string.format('%.6f', ternd.monotonic())"))
    time.sleep(0.3)
    b = float(c.ask("return string.format('%.6f', ternd.monotonic())"))
    assert 0.25 <= b - a < tnhelp.scaled(3.0)


def test_log(lua):
    t, c = lua
    mark = t.log_size()
    assert c.ask('ternd.log("warn", "from lua", 42, true) return "ok"') == "ok"
    text = t.wait_log(r"from lua", since=mark)
    assert re.search(r"\[warn\] sample[^:]*: from lua\s*42\s*true$", text, re.M), text
    # below the level: dropped
    c.ask('ternd.log("debug", "hidden line") return "ok"')
    c.ask('ternd.log("error", "shown line") return "ok"')
    text = t.wait_log(r"shown line", since=mark)
    assert "hidden line" not in text
    assert re.search(r"\[error\] sample[^:]*: shown line$", text, re.M)


@pytest.mark.parametrize("chunk", [
    'ternd.log("loud", "x") return "ok"',
    'return ternd.json.decode("{not json")',
    "return ternd.json.encode({f = function() end})",
    "return ternd.timer()",
], ids=["log-bad-level", "json-decode-invalid", "json-encode-function", "timer-no-args"])
def test_bad_calls_raise_and_state_goes_on(lua, chunk):
    t, c = lua
    assert c.ask(chunk) == "ERROR"
    assert c.ask('return "alive"') == "alive"


def test_timer_once(lua):
    t, c = lua
    assert c.ask('fired = 0 ternd.timer(0.1, function() fired = fired + 1 end) '
                 'return tostring(fired)') == "0"
    tnhelp.wait_for(lambda: c.ask("return tostring(fired)") == "1", 5, what="the timer")
    time.sleep(0.3)
    assert c.ask("return tostring(fired)") == "1"


def test_timer_repeat_and_cancel(lua):
    t, c = lua
    c.ask('ticks = 0 h = ternd.timer(0.05, function() ticks = ticks + 1 end, 0.05) '
          'return "ok"')
    tnhelp.wait_for(lambda: int(c.ask("return tostring(ticks)")) >= 3, 5, what="3 ticks")
    assert c.ask("return tostring(h:cancel())") == "true"
    n = int(c.ask("return tostring(ticks)"))
    time.sleep(0.3)
    assert int(c.ask("return tostring(ticks)")) == n
    # cancel says whether the timer was pending: not the second time, not
    # for a one-shot timer that fired
    assert c.ask("return tostring(h:cancel()) .. tostring(h:active())") == "falsefalse"
    c.ask("once = ternd.timer(0.05, function() end) return 'ok'")
    assert c.ask("return tostring(once:active())") == "true"
    time.sleep(0.3)
    assert c.ask("return tostring(once:active()) .. tostring(once:cancel())") == "falsefalse"
    c.ask("later = ternd.timer(30, function() end) return 'ok'")
    assert c.ask("return tostring(later:cancel())") == "true"


def test_timer_error_is_logged_and_repeat_goes_on(lua):
    t, c = lua
    mark = t.log_size()
    c.ask('n = 0 ternd.timer(0.05, function() n = n + 1 error("tick failed") end, 0.05) '
          'return "ok"')
    tnhelp.wait_for(lambda: int(c.ask("return tostring(n)")) >= 3, 5, what="3 ticks")
    text = t.wait_log(r"tick failed", since=mark)
    assert re.search(r"\[error\] .*tick failed", text)
    assert t.alive()


def test_json_round_trip(lua):
    t, c = lua
    doc = {"a": [1, 2, 3], "b": {"c": "d\u00e9"}, "t": True, "f": 1.5}
    out = c.ask("local v = ternd.json.decode(%r) v.added = 'x' "
                "return ternd.json.encode(v)" % json.dumps(doc))
    got = json.loads(out)
    assert got == dict(doc, added="x")


def test_json_null_and_arrays(lua):
    t, c = lua
    # null decodes to the ternd.json.null sentinel: arrays keep their length
    assert c.ask('local a = ternd.json.decode("[1, null, 3]") '
                 'return tostring(#a) .. tostring(a[2] == ternd.json.null)') == "3true"
    assert c.ask('local v = ternd.json.decode(\'{"k": null}\') '
                 'return tostring(v.k == ternd.json.null)') == "true"
    assert c.ask('return ternd.json.encode({1, ternd.json.null, 3})') == "[1,null,3]"
    assert json.loads(c.ask("return ternd.json.encode({10, 20, 30})")) == [10, 20, 30]
    assert json.loads(c.ask("return ternd.json.encode({x = 'y'})")) == {"x": "y"}
    assert c.ask("return ternd.json.encode({})") == "{}"
    assert c.ask("return tostring(math.type(ternd.json.decode('7')))") == "integer"


def test_removed_functions(lua):
    t, c = lua
    assert c.ask("return tostring(os.exit) .. ' ' .. tostring(debug.sethook)") == "nil nil"
    # what remains of the libraries is there
    assert c.ask("return string.upper('x') .. table.concat({1, 2}) .. math.floor(2.5)") == "X122"


def test_runtime_error_logged_counted_not_fatal(lua):
    t, c = lua
    mark = t.log_size()
    assert c.ask('error("deliberate failure")') == "ERROR"
    text = t.wait_log(r"deliberate failure", since=mark)
    assert re.search(r"\[error\] sample.*on_line.*deliberate failure", text), text
    assert "traceback" in text
    assert c.ask('return "still here"') == "still here"
    assert c.ask("error({})") == "ERROR"  # a non-string error object
    m = t.metrics()
    assert m['ternd_lua_errors_total{module="sample"}'] == 2


def test_instruction_limit_stops_runaway(ternd):
    t, c = lua_eval_server(ternd, instruction_limit=1000000)
    with c:
        t0 = time.monotonic()
        mark = t.log_size()
        assert c.ask("while true do end") == "ERROR"
        assert time.monotonic() - t0 < tnhelp.scaled(5)
        assert "instruction limit exceeded (1000000)" in t.log()[mark:]
        # catching the error does not buy more time
        assert c.ask("while true do pcall(function() while true do end end) end") == "ERROR"
        # the budget is per call: a bounded loop under it works
        assert c.ask("local n = 0 for i = 1, 1000 do n = n + i end return tostring(n)") \
            == "500500"
        assert t.get("/ping").status == 200
    t.stop()


def test_memory_limit(ternd):
    t, c = lua_eval_server(ternd, memory_limit="4MiB")
    with c:
        assert c.ask("local t = {} for i = 1, 1e7 do t[i] = string.rep('x', 64) .. i end "
                     "return 'no limit'") == "ERROR"
        assert c.ask("collectgarbage() return 'usable'") == "usable"
    t.stop()
    assert re.search(r"not enough memory \(memory_limit 4194304 bytes reached\)", t.log()), \
        t.log()


def test_unlimited_when_zero(ternd):
    t, c = lua_eval_server(ternd, instruction_limit=0)
    with c:
        # 5e6 iterations: far over the 1e6 used above, fine with no limit
        assert c.ask("local n = 0 for i = 1, 5e6 do n = n + 1 end return tostring(n)") \
            == "5000000"
    t.stop()


def test_script_error_at_start_fails_startup(ternd):
    t = ternd()
    tnhelp.sample_with_lua(t, 'error("no good at load")\n')
    assert t.check().returncode == 0  # -t compiles, does not run
    t.start(wait=False)
    assert t.wait_exit() == 1
    assert "no good at load" in t.log()


def test_script_syntax_error_in_check(ternd):
    t = ternd()
    tnhelp.sample_with_lua(t, "x = = 1\n")
    r = t.check()
    assert r.returncode == 1
    assert re.search(r"^ternd: [^:]+:\d+:\d+: sample\.lua\.script: .*sample\.lua:1:", r.stderr,
                     re.M), r.stderr


def test_missing_script_in_check(ternd):
    t = ternd()
    t.sections = {"sample": {"lua": {"script": str(t.tmp / "nope.lua")}}}
    t.write_conf()
    r = t.check()
    assert r.returncode == 1
    assert re.search(r"sample\.lua\.script: .*nope\.lua", r.stderr), r.stderr


def test_reload_cancels_old_timers(ternd):
    script = EVAL + "ticks = 0\nternd.timer(0.05, function() ternd.log('info', 'tick') end, 0.05)\n"
    t, c = lua_eval_server(ternd, script=script)
    with c:
        t.wait_log(r"sample[^:]*: tick$")
        (t.tmp / "sample.lua").write_text(EVAL)
        t.reload()
        mark = t.log_size()
        time.sleep(0.4)
        assert not re.search(r": tick$", t.log()[mark:], re.M)
    t.stop()
