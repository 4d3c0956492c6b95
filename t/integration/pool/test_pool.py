"""test_pool.py -- the pool module in the real ternd: Lua round trips through
ternd.pool.submit (callback and coroutine, deep copies, errors, overload),
scripts of another module (sample) using it, per-pool metrics in /stats and
/metrics, reload of pool sizes, config errors by key path, graceful stop.
"""
import json
import os
import time

import pytest

import tnhelp

WORK_LUA = r"""
local M = {}
function M.add(a, b) return a + b end
function M.echo(...) return ... end
function M.fail(msg) error(msg, 0) end
function M.fn() return function() end end
function M.spin(n) local x = 0 for i = 1, n do x = x + i end return x end
function M.count() COUNT = (COUNT or 0) + 1 return COUNT end
function M.forever() while true do end end
function M.hog() local t = {} for i = 1, 1e8 do t[i] = string.rep("x", 100) .. i end end
function M.probe()
  return ternd.pool == nil, ternd.timer == nil, type(ternd.log), package.path:match("^[^;]*")
end
function M.deep(n) local t = {} for i = 1, n do t = {t} end return t end
return M
"""

# The host script: runs every case at load and appends one line per result
# to OUT ("name value"); ser() gives a stable text form of copied values.
HOST_LUA = r"""
local OUT = %(out)s
local function ser(v)
  if type(v) ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = tostring(k) .. "=" .. ser(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end
local function put(name, ...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = ser((select(i, ...))) end
  local f = assert(io.open(OUT, "a"))
  f:write(name, " ", n, ":", table.concat(parts, "|"), "\n")
  f:close()
end
local function cb(name) return function(...) put(name, ...) end end

local P = ternd.pool
put("submit_ret", P.submit("default", "work.add", 2, 3, cb("add")))
P.submit("default", "work.echo", nil, 7, "s", true, 1.5, cb("echo_scalars"))
P.submit("default", "work.echo", {a = 1, b = {c = "x", d = {1, 2, 3}}, [5] = false}, cb("echo_table"))
P.submit("default", "work.fail", "boom", cb("fail"))
P.submit("default", "nosuch.func", cb("nomodule"))
P.submit("default", "work.nofunc", cb("nofunc"))
P.submit("default", "work.fn", cb("badresult"))
put("badarg", pcall(P.submit, "default", "work.add", function() end, cb("never")))
local t = {} t.self = t
put("cycle", pcall(P.submit, "default", "work.echo", t, cb("never")))
put("nopool", pcall(P.submit, "nosuch", "work.add", 1, 2, cb("never")))
put("badname", pcall(P.submit, "default", "add", 1, 2, cb("never")))
put("nocallback", pcall(P.submit, "default", "work.add", 1, 2))
coroutine.wrap(function()
  local r = P.submit("default", "work.add", 40, 2)
  local e1, e2 = P.submit("default", "work.fail", "in coroutine")
  put("coroutine", r, e1, e2)
end)()
-- a nonblocking pool of one worker: the second submit finds it busy
P.submit("tiny", "work.spin", 5000000, cb("spin"))
put("overload", P.submit("tiny", "work.spin", 1, cb("never")))
local s = P.stats("default")
put("stats", s.capacity, s.running >= 0, s.submitted >= 1)
put("statserr", pcall(P.stats, "nosuch"))
-- many tasks, all must come back exactly once
local seen, want = 0, 200
for i = 1, want do
  P.submit("default", "work.add", i, 0, function(v)
    if v == i then seen = seen + 1 end
    if i == want then put("many_last", v) end
    if seen == want then put("many", seen) end
  end)
end
put("loaded", true)
"""



def pool_modules_dir(tmp_path):
    """A modules dir with pool.so (from lib/ternd/modules) and the test
    modules (sample.so, ...) side by side."""
    pool_so = tnhelp.BUILD / "lib" / "ternd" / "modules" / "pool.so"
    if not pool_so.exists():
        pytest.skip("pool.so not built")
    d = tmp_path / "modules"
    d.mkdir()
    os.symlink(pool_so, d / "pool.so")
    for so in tnhelp.test_modules_dir().glob("*.so"):
        os.symlink(so, d / so.name)
    return d


POOLS = "pool:\n  pools:\n    default: { size: 4, expiry: 2s }\n" \
        "    tiny: { size: 1, nonblocking: true }\n"
POOLS_DICT = {"pools": {"default": {"size": 4, "expiry": "2s"},
                        "tiny": {"size": 1, "nonblocking": True}}}


def read_results(path):
    res = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(" ")
            res[name] = rest
    return res


def pool_metrics(t):
    """{(name, pool): value} of the ternd_pool_* samples in /stats."""
    out = {}
    for m in t.get("/stats").json()["metrics"]:
        if m["name"].startswith("ternd_pool_"):
            out[(m["name"], m["labels"].get("pool"))] = m["value"]
    return out


@pytest.fixture
def host(ternd, tmp_path):
    """ternd with the pool module running the test script (lua.script)."""
    mdir = pool_modules_dir(tmp_path)
    work = tmp_path / "scripts"
    work.mkdir()
    (work / "work.lua").write_text(WORK_LUA)
    out = tmp_path / "results.txt"
    (work / "host.lua").write_text(HOST_LUA % {"out": json.dumps(str(out))})
    t = ternd(daemon={"modules_dir": str(mdir)},
              text=POOLS + "  lua: { script: %s }\n" % (work / "host.lua"))
    t.out = out
    t.start()
    yield t
    t.kill()


def all_results(t):
    return tnhelp.wait_for(lambda: (lambda r: r if "many" in r and "spin" in r else None)(
        read_results(t.out)), 20, what="the script's results")


def test_lua_round_trip(host):
    res = all_results(host)
    assert res["loaded"] == "1:true"
    assert res["submit_ret"] == "1:true"
    assert res["add"] == "1:5"
    # nil stays an argument, integers stay integers, floats floats
    assert res["echo_scalars"] == "5:nil|7|s|true|1.5"
    assert res["echo_table"] == "1:{5=false,a=1,b={c=x,d={1=1,2=2,3=3}}}"
    assert res["fail"] == "2:nil|boom"
    assert res["nomodule"].startswith("2:nil|module 'nosuch' not found")
    assert res["nofunc"] == "2:nil|work.nofunc is not a function"
    assert res["badresult"] == "2:nil|result 1: cannot copy a function value"
    assert res["badarg"].startswith("2:false|")
    assert "argument 1: cannot copy a function value" in res["badarg"]
    assert "a table contains itself" in res["cycle"]
    assert 'no pool named "nosuch"' in res["nopool"]
    assert "is not \"module.function\"" in res["badname"]
    assert "pass a callback, or call it in a coroutine" in res["nocallback"]
    assert res["coroutine"] == "3:42|nil|in coroutine"
    assert res["overload"] == "2:nil|pool overloaded"
    assert res["spin"] == "1:%d" % (5000000 * 5000001 // 2)
    assert res["stats"] == "3:4|true|true"
    assert 'no pool named "nosuch"' in res["statserr"]
    assert res["many"] == "1:200"
    assert res["many_last"] == "1:200"
    assert "never" not in res
    # failures are logged with their message, at most one line a second
    host.wait_log(r"\[warn\] pool: pool default: task failed: (work\.fail: boom|"
                  r"nosuch\.func: module 'nosuch' not found|work\.nofunc: work\.nofunc is not "
                  r"a function|work\.fn: result 1: cannot copy a function value)")
    assert len([x for x in host.log_lines("pool") if "task failed" in x[2]]) <= 2
    host.stop()


def test_stats_and_metrics(host):
    all_results(host)
    m = tnhelp.wait_for(lambda: (lambda x: x if x.get(("ternd_pool_completed_total",
                                                       "default"), 0) >= 204 else None)(
        pool_metrics(host)), 10, what="204 completed tasks")
    assert m[("ternd_pool_capacity", "default")] == 4
    assert m[("ternd_pool_capacity", "tiny")] == 1
    assert 0 <= m[("ternd_pool_running", "default")] <= 4
    assert 0 <= m[("ternd_pool_idle", "default")] <= m[("ternd_pool_running", "default")]
    assert m[("ternd_pool_waiting", "default")] == 0
    # 200 + add, 2 echo, nofunc, nomodule, fail, badresult, 2 in the coroutine
    assert m[("ternd_pool_submitted_total", "default")] == 209
    # failed: fail, nomodule, nofunc, badresult, the coroutine's fail
    assert m[("ternd_pool_failed_total", "default")] == 5
    assert m[("ternd_pool_completed_total", "default")] == 204
    assert m[("ternd_pool_rejected_total", "tiny")] == 1
    assert m[("ternd_pool_rejected_total", "default")] == 0
    prom = host.metrics()
    assert prom['ternd_pool_failed_total{pool="default"}'] == 5
    assert "# TYPE ternd_pool_capacity gauge" in host.get("/metrics").text()
    # idle workers expire (expiry 2s): the default pool empties
    tnhelp.wait_for(lambda: pool_metrics(host)[("ternd_pool_running", "default")] == 0, 10,
                    what="idle workers to expire")
    host.stop()


def test_reload_tunes_adds_and_removes(host):
    all_results(host)
    text = host.conf_path.read_text()
    text = text.replace("default: { size: 4, expiry: 2s }", "default: { size: 9, expiry: 2s }")
    text = text.replace("    tiny: { size: 1, nonblocking: true }\n",
                        "    extra: { size: 3, prealloc: true }\n")
    log = host.reload(text)
    assert "reload done" in log, log
    m = pool_metrics(host)
    assert m[("ternd_pool_capacity", "default")] == 9
    assert ("ternd_pool_capacity", "tiny") not in m
    assert m[("ternd_pool_capacity", "extra")] == 3
    assert m[("ternd_pool_running", "extra")] == 3  # preallocated
    assert "pool tiny removed by the new configuration" in log
    host.stop()


EVAL = """
function on_line(s)
    local f = assert(load(s, "=line"))
    return f()
end
"""


def sample_server(ternd, tmp_path, pool=POOLS_DICT, **lua):
    """ternd (not started) with the sample module's script (a Lua evaluator
    on a line protocol) in its own directory, not the working one, with
    work.lua beside it, and the pool module loaded first. Returns (t, port)."""
    mdir = pool_modules_dir(tmp_path)
    t = ternd(daemon={"modules_dir": str(mdir)})
    port, script = tnhelp.sample_with_lua(t, EVAL, **lua)
    lua_dir = t.tmp / "lua"
    lua_dir.mkdir()
    script = script.rename(lua_dir / "sample.lua")
    (lua_dir / "work.lua").write_text(WORK_LUA)
    t.sections["sample"]["lua"]["script"] = str(script)
    # pool first: its init adds ternd.pool before the sample's state is made
    t.sections = dict([("pool", pool)] + list(t.sections.items()))
    t.write_conf()
    t.lua_dir = lua_dir
    return t, port


@pytest.fixture
def sample(ternd, tmp_path):
    t, port = sample_server(ternd, tmp_path)
    t.start()
    c = tnhelp.LineClient(port)
    yield t, c
    c.close()
    t.kill()


def test_other_module_callback_and_coroutine(sample):
    t, c = sample
    assert c.ask("return tostring(ternd.pool ~= nil)") == "true"
    assert c.ask('R = nil ternd.pool.submit("default", "work.add", 20, 22, '
                 'function(v) R = v end) return "sent"') == "sent"
    tnhelp.wait_for(lambda: c.ask("return tostring(R)") == "42", 5, what="the callback")
    # a coroutine parks in submit and is resumed with the results
    assert c.ask('C = "waiting" coroutine.wrap(function() '
                 'local a, b = ternd.pool.submit("default", "work.echo", "x", {y = 1}) '
                 'C = a .. b.y end)() return C') == "waiting"
    tnhelp.wait_for(lambda: c.ask("return C") == "x1", 5, what="the coroutine")
    # a worker state keeps its globals from task to task
    assert c.ask('N = {} for i = 1, 6 do ternd.pool.submit("default", "work.count", '
                 'function(v) N[#N + 1] = v end) end return "ok"') == "ok"
    tnhelp.wait_for(lambda: c.ask("return tostring(#N)") == "6", 5, what="6 counts")
    counts = [int(c.ask("return tostring(N[%d])" % i)) for i in range(1, 7)]
    assert all(n >= 1 for n in counts) and max(counts) >= 2, counts
    t.stop()


def ask_result(c, call):
    """Submit call (a string of Lua arguments after the pool) with a
    callback and wait for its results, joined with |."""
    c.ask('RES = nil ternd.pool.submit("default", %s, function(...) '
          'local t = table.pack(...) for i = 1, t.n do t[i] = tostring(t[i]) end '
          'RES = table.concat(t, "|") end) return "sent"' % call)
    return tnhelp.wait_for(lambda: (lambda r: r if r != "nil" else None)(
        c.ask("return tostring(RES)")), 10, what="the result of " + call)


def test_worker_states(sample):
    t, c = sample
    # no ternd.pool or timers inside a task; the script's dir leads package.path
    pool_nil, timer_nil, log_type, first = ask_result(c, '"work.probe"').split("|")
    assert (pool_nil, timer_nil, log_type) == ("true", "true", "function")
    assert first == str(t.lua_dir / "?.lua")
    # shared subtables are copied (twice), nesting is bounded
    assert ask_result(c, '"work.echo", (function() local s = {1} return {s, s} end)()') \
        .startswith("table: ")
    assert ask_result(c, '"work.deep", 60') .startswith("table: ")
    assert ask_result(c, '"work.deep", 70') == "nil|result 1: tables nested too deep"
    assert c.ask('return select(2, pcall(ternd.pool.submit, "default", "work.echo", '
                 '(function() local t = {} for i = 1, 70 do t = {t} end return t end)(), '
                 'print))').endswith("argument 1: tables nested too deep")
    t.stop()


def test_worker_limits(ternd, tmp_path):
    """The pool's lua: limits bound each task in its worker state."""
    t, port = sample_server(ternd, tmp_path, dict(
        POOLS_DICT, lua={"instruction_limit": 1000000, "memory_limit": "8MiB"}))
    t.start()
    with tnhelp.LineClient(port) as c:
        r = ask_result(c, '"work.forever"')
        assert r.startswith("nil|") and "instruction limit exceeded (1000000)" in r, r
        r = ask_result(c, '"work.hog"')
        assert r.startswith("nil|") and "not enough memory" in r, r
        # the worker's state is still usable after both
        assert ask_result(c, '"work.add", 1, 2') == "3"
    t.stop()


def test_resumed_coroutine_runs_under_the_budget(ternd, tmp_path):
    """A coroutine the pool resumes gets a fresh instruction budget: a
    runaway one is stopped and logged, the caller's state goes on."""
    t, port = sample_server(ternd, tmp_path, instruction_limit=1000000)
    t.start()
    with tnhelp.LineClient(port) as c:
        mark = t.log_size()
        assert c.ask('coroutine.wrap(function() ternd.pool.submit("default", "work.add", 1, 2) '
                     'while true do end end)() return "ok"') == "ok"
        text = t.wait_log(r"instruction limit exceeded \(1000000\)", since=mark)
        assert "coroutine resumed by ternd.pool.submit: " in text, text
        assert c.ask('return "alive"') == "alive"
    t.stop()


def test_resumed_early_coroutine_gets_an_error(sample):
    t, c = sample
    got = c.ask('co = coroutine.create(function() '
                'return ternd.pool.submit("default", "work.spin", 3000000) end) '
                'coroutine.resume(co) local ok, err = coroutine.resume(co) '
                'return tostring(ok) .. " " .. tostring(err)')
    assert got.startswith("false ") and "resumed before its task finished" in got, got
    # the late result is dropped quietly; the server goes on
    time.sleep(0.5)
    assert c.ask('return "alive"') == "alive"
    t.stop()


def test_results_for_a_reloaded_script_are_dropped(sample):
    t, c = sample
    assert c.ask('ternd.pool.submit("default", "work.spin", 20000000, '
                 'function(v) ternd.log("error", "stale callback ran") end) '
                 'return "sent"') == "sent"
    # replace the sample's Lua state while the task runs
    log = t.reload()
    assert "reload done" in log, log
    c.close()
    tnhelp.wait_for(lambda: pool_metrics(t).get(("ternd_pool_completed_total", "default")) == 1,
                    10, what="the task to finish")
    time.sleep(0.3)
    assert "stale callback ran" not in t.log()
    assert t.get("/ping").status == 200
    t.stop()


def test_config_errors(ternd, tmp_path):
    mdir = pool_modules_dir(tmp_path)
    t = ternd(daemon={"modules_dir": str(mdir)},
              text="pool:\n  pools:\n    default: { size: 0 }\n"
                   "    io: { expiry: 0s }\n    bad name: ~\n    x: { colour: red }\n"
                   "    y: 3\n")
    r = t.check()
    err = r.stdout + r.stderr
    assert r.returncode == 1, err
    for key in ("pool.pools.default.size", "pool.pools.io.expiry", "pool.pools.bad name",
                "pool.pools.x.colour", "pool.pools.y"):
        assert key in err, (key, err)


def test_default_pool(ternd, tmp_path):
    mdir = pool_modules_dir(tmp_path)
    t = ternd(daemon={"modules_dir": str(mdir)}, text="pool: ~\n")
    r = t.check()
    assert r.returncode == 0, r.stdout + r.stderr
    t.start()
    m = pool_metrics(t)
    assert m[("ternd_pool_capacity", "default")] == 64
    assert m[("ternd_pool_running", "default")] == 0  # workers start on demand
    t.stop()


def test_c_api_through_the_service(ternd, tmp_path):
    """A module (t/modules/pooluser.c) that depends on pool finds its pool
    through the "pool" service, submits C tasks and gets every completion
    back on the loop thread; it is listed first, the dependency orders it."""
    mdir = pool_modules_dir(tmp_path)
    if not (mdir / "pooluser.so").exists():
        pytest.skip("pooluser.so missing: run `make check` first")
    t = ternd(daemon={"modules_dir": str(mdir)},
              text="pooluser: { pool: work, tasks: 1000, tune: 2 }\n"
                   "pool:\n  pools:\n    work: { size: 4 }\n")
    t.start()
    log = t.wait_log(r"pooluser: all done")
    want = sum(i * i for i in range(1, 1001) if i % 10)
    assert ("all done: 1000 done, 100 failed, 0 refused, sum %d, off the loop 0, "
            "pool submitted 1000 failed 100" % want) in log, log
    assert "tuned work to 2" in log
    m = pool_metrics(t)
    assert m[("ternd_pool_capacity", "work")] == 2
    assert m[("ternd_pool_completed_total", "work")] == 900
    assert m[("ternd_pool_failed_total", "work")] == 100
    # C task failures are logged through the failure handler, rate-limited
    assert "[warn] pool: pool work: task failed: invalid argument" in log
    t.stop()
