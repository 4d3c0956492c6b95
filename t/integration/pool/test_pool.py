"""test_pool.py -- the pool module in the real ternd: Lua round trips through
ternd.pool.submit (callback and coroutine, deep copies, errors, overload),
a script of another module using it, per-pool metrics in /stats and
/metrics, reload of pool sizes, config errors by key path, graceful stop.

Runs build/server/ternd (or $TERND_BUILD/server/ternd) on free loopback ports.
"""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BUILD = os.environ.get("TERND_BUILD", os.path.join(TOP, "build"))
TERND = os.path.join(BUILD, "server", "ternd")
MODULES = os.path.join(BUILD, "lib", "ternd", "modules")
SAMPLE_SO = os.path.join(BUILD, "t", "modules", ".libs", "sample.so")

WORK_LUA = r"""
local M = {}
function M.add(a, b) return a + b end
function M.echo(...) return ... end
function M.fail(msg) error(msg, 0) end
function M.fn() return function() end end
function M.spin(n) local x = 0 for i = 1, n do x = x + i end return x end
function M.count() COUNT = (COUNT or 0) + 1 return COUNT end
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


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
        return r.read().decode()


def wait_until(fn, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    return fn()


class Ternd:
    def __init__(self, tmp, conf_text):
        self.tmp = tmp
        self.conf = os.path.join(tmp, "ternd.yaml")
        self.log = os.path.join(tmp, "ternd.log")
        with open(self.conf, "w") as f:
            f.write(conf_text)
        self.proc = subprocess.Popen([TERND, "-c", self.conf], cwd=tmp,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def log_text(self):
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


def daemon_conf(tmp, admin_port, modules_dir=MODULES):
    return ("daemon:\n  log_level: info\n  log_file: %s\n  data_dir: %s\n"
            "  admin_listen: 127.0.0.1:%d\n  modules_dir: %s\n"
            % (os.path.join(tmp, "ternd.log"), os.path.join(tmp, "data"), admin_port,
               modules_dir))


def pool_conf(size=4, extra=""):
    return ("pool:\n  pools:\n    default: { size: %d, expiry: 2s }\n"
            "    tiny: { size: 1, nonblocking: true }\n%s" % (size, extra))


def read_results(path):
    res = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                name, _, rest = line.rstrip("\n").partition(" ")
                res[name] = rest
    return res


def try_metrics(port):
    try:
        return metrics(port)
    except OSError:
        return None


def metrics(port):
    out = {}
    for m in json.loads(http_get(port, "/stats"))["metrics"]:
        if m["name"].startswith("ternd_pool_"):
            out[(m["name"], m["labels"].get("pool"))] = m["value"]
    return out


@pytest.fixture
def host(tmp_path):
    """ternd with the pool module hosting the test script itself."""
    if not os.path.exists(os.path.join(MODULES, "pool.so")):
        pytest.skip("pool.so not built")
    tmp = str(tmp_path)
    out = os.path.join(tmp, "results.txt")
    with open(os.path.join(tmp, "work.lua"), "w") as f:
        f.write(WORK_LUA)
    with open(os.path.join(tmp, "host.lua"), "w") as f:
        f.write(HOST_LUA % {"out": json.dumps(out)})
    port = free_port()
    conf = daemon_conf(tmp, port) + pool_conf(
        extra="  lua: { script: %s }\n" % os.path.join(tmp, "host.lua"))
    t = Ternd(tmp, conf)
    t.port, t.out = port, out
    yield t
    t.stop()


def test_lua_round_trip(host):
    res = wait_until(lambda: (lambda r: r if "many" in r and "spin" in r else None)(
        read_results(host.out)), timeout=20)
    assert res, "no results; log:\n" + host.log_text()
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
    # failures are logged with their message
    assert wait_until(lambda: "work.fail: boom" in host.log_text())


def test_stats_and_metrics(host):
    assert wait_until(lambda: "many" in read_results(host.out), timeout=20), host.log_text()
    m = wait_until(lambda: (lambda x: x if x and x.get(("ternd_pool_completed_total",
                                                        "default"), 0) >= 200 else None)(
        try_metrics(host.port)))
    assert m, host.log_text()
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
    text = http_get(host.port, "/metrics")
    assert 'ternd_pool_failed_total{pool="default"} 5' in text
    assert "# TYPE ternd_pool_capacity gauge" in text
    # idle workers expire (expiry 2s): the default pool empties
    assert wait_until(lambda: metrics(host.port)[("ternd_pool_running", "default")] == 0,
                      timeout=10)


def test_reload_tunes_and_removes(host):
    assert wait_until(lambda: "many" in read_results(host.out), timeout=20), host.log_text()
    with open(host.conf) as f:
        conf = f.read()
    conf = conf.replace("default: { size: 4, expiry: 2s }", "default: { size: 9, expiry: 2s }")
    conf = conf.replace("    tiny: { size: 1, nonblocking: true }\n",
                        "    extra: { size: 3, prealloc: true }\n")
    with open(host.conf, "w") as f:
        f.write(conf)
    host.proc.send_signal(signal.SIGHUP)
    m = wait_until(lambda: (lambda x: x if x.get(("ternd_pool_capacity", "default")) == 9
                            else None)(metrics(host.port)))
    assert m, host.log_text()
    assert ("ternd_pool_capacity", "tiny") not in m
    assert m[("ternd_pool_capacity", "extra")] == 3
    assert m[("ternd_pool_running", "extra")] == 3  # preallocated
    assert "pool tiny removed" in host.log_text()
    assert host.stop() == 0


def test_other_module_script(tmp_path):
    """A script of another module (sample) uses ternd.pool; the task module
    sits next to that script."""
    if not os.path.exists(SAMPLE_SO) or not os.path.exists(os.path.join(MODULES, "pool.so")):
        pytest.skip("sample.so or pool.so not built")
    tmp = str(tmp_path)
    mdir = os.path.join(tmp, "modules")
    os.mkdir(mdir)
    os.symlink(os.path.join(MODULES, "pool.so"), os.path.join(mdir, "pool.so"))
    os.symlink(SAMPLE_SO, os.path.join(mdir, "sample.so"))
    sdir = os.path.join(tmp, "scripts")
    os.mkdir(sdir)
    out = os.path.join(tmp, "results.txt")
    with open(os.path.join(sdir, "work.lua"), "w") as f:
        f.write(WORK_LUA)
    with open(os.path.join(sdir, "sample.lua"), "w") as f:
        f.write("""
local out = %s
coroutine.wrap(function()
  local a = ternd.pool.submit("default", "work.add", 20, 22)
  local f = assert(io.open(out, "w")) f:write(tostring(a), "\\n") f:close()
end)()
""" % json.dumps(out))
    port = free_port()
    conf = (daemon_conf(tmp, port, mdir) + pool_conf() +
            "sample:\n  lua: { script: %s }\n" % os.path.join(sdir, "sample.lua"))
    t = Ternd(tmp, conf)
    try:
        assert wait_until(lambda: os.path.exists(out) and open(out).read() == "42\n"), \
            t.log_text()
    finally:
        assert t.stop() == 0


def test_config_errors(tmp_path):
    tmp = str(tmp_path)
    conf = os.path.join(tmp, "bad.yaml")
    with open(conf, "w") as f:
        f.write(daemon_conf(tmp, free_port()) +
                "pool:\n  pools:\n    default: { size: 0 }\n"
                "    io: { expiry: 0s }\n    bad name: ~\n    x: { colour: red }\n")
    r = subprocess.run([TERND, "-t", "-c", conf], capture_output=True, text=True, timeout=30)
    err = r.stdout + r.stderr
    assert r.returncode == 1, err
    assert "pool.pools.default.size" in err
    assert "pool.pools.io.expiry" in err
    assert "pool.pools.bad name" in err
    assert "pool.pools.x.colour" in err


def test_default_pool_and_check(tmp_path):
    tmp = str(tmp_path)
    port = free_port()
    conf_text = daemon_conf(tmp, port) + "pool: ~\n"
    with open(os.path.join(tmp, "ok.yaml"), "w") as f:
        f.write(conf_text)
    r = subprocess.run([TERND, "-t", "-c", os.path.join(tmp, "ok.yaml")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    t = Ternd(tmp, conf_text)
    try:
        m = wait_until(lambda: try_metrics(port))
        assert m, t.log_text()
        assert m[("ternd_pool_capacity", "default")] == 64
        assert m[("ternd_pool_running", "default")] == 0  # workers start on demand
    finally:
        assert t.stop() == 0
