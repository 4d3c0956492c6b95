"""ternd.discovery in Lua: the module's own script (on_change hook calling
ternd.discovery.lookup) and another module's state (the sample module's
line-evaluating script), which gets ternd.discovery through the opener the
discovery module installs."""

import json
import re

import pytest

import tnhelp
from dschelp import get, identified, post

EVAL = """
function on_line(s)
    local f = assert(load(s, "=line"))
    return f()
end
"""

ON_CHANGE = """
function on_change(name, index)
    local list, idx = ternd.discovery.lookup(name)
    local parts = {}
    for _, i in ipairs(list) do
        parts[#parts + 1] = i.id .. "@" .. i.address .. "/" .. i.state .. "/" .. i.weight
            .. "/" .. tostring(i.metadata.zone)
    end
    ternd.log("info", "change " .. name .. " " .. index .. " " .. idx .. " ["
        .. table.concat(parts, ",") .. "]")
end
"""


def register(t, **body):
    r = post(t.http_port, "/services/register", body)
    assert r.status == 200, r.body
    return r.json()


def test_on_change_hook_and_lookup(dsc, tmp_path):
    script = tmp_path / "discovery.lua"
    script.write_text(ON_CHANGE)
    t = dsc(lua={"script": str(script)}, services={"min_ttl": "100ms"})
    register(t, name="gw", id="a", address="10.0.0.1:1", metadata={"zone": "eu"}, weight=2)
    t.wait_log(r"change gw 1 1 \[a@10\.0\.0\.1:1/up/2/eu\]")
    register(t, name="gw", id="b", address="10.0.0.2:1", state="draining", ttl="200ms")
    t.wait_log(r"change gw 2 2 \[a@10\.0\.0\.1:1/up/2/eu,b@10\.0\.0\.2:1/draining/1/nil\]")
    # expiry is a change too; the list no longer has b
    t.wait_log(r"change gw 3 3 \[a@10\.0\.0\.1:1/up/2/eu\]")
    post(t.http_port, "/services/deregister", name="gw", id="a")
    t.wait_log(r"change gw 4 4 \[\]")
    m = t.metrics()
    assert m.get('ternd_lua_errors_total{module="discovery"}') == 0
    t.stop()


def test_bad_script_is_refused(dsc, tmp_path):
    script = tmp_path / "bad.lua"
    script.write_text("function on_change(\n")
    t = dsc(start=False, lua={"script": str(script)})
    r = t.check()
    assert r.returncode == 1
    assert re.search(r"discovery\.lua\.script: .*bad\.lua", r.stderr), r.stderr


@pytest.fixture
def with_sample(dsc, tmp_path):
    script = tmp_path / "sample.lua"
    script.write_text(EVAL)
    t = dsc(more={"sample": {"listen": tnhelp.ANY_PORT, "lua": {"script": str(script)}}})
    c = tnhelp.LineClient(tnhelp.sample_port(t))
    yield t, c
    c.close()
    t.stop()


def test_lookup_from_another_module(with_sample):
    t, c = with_sample
    assert c.ask("return tostring(#ternd.discovery.lookup('gw'))") == "0"
    assert c.ask("local _, i = ternd.discovery.lookup('gw') return tostring(i)") == "0"
    register(t, name="gw", id="a", address="10.0.0.1:3553",
             metadata={"routes": ["chat", "room"], "n": 1.5, "gone": None}, weight=7)
    register(t, name="gw", id="b", address="10.0.0.2:3553", ttl=-1)
    got = json.loads(c.ask("return ternd.json.encode(ternd.discovery.lookup('gw'))"))
    assert [i["id"] for i in got] == ["a", "b"]
    a = got[0]
    assert a["name"] == "gw" and a["address"] == "10.0.0.1:3553" and a["weight"] == 7
    assert a["state"] == "up" and a["ttl"] == 30000 and a["index"] == 1
    assert a["metadata"]["routes"] == ["chat", "room"] and a["metadata"]["n"] == 1.5
    assert got[1]["ttl"] == -1
    # JSON null arrives as the host's null sentinel
    assert c.ask("return tostring(ternd.discovery.lookup('gw')[1].metadata.gone"
                 " == ternd.json.null)") == "true"
    assert c.ask("local _, i = ternd.discovery.lookup('gw') return tostring(i)") == "2"
    assert c.ask("return tostring(pcall(ternd.discovery.lookup))") == "false"


def test_producers_from_lua(with_sample):
    t, c = with_sample
    assert c.ask("local p, err = ternd.discovery.producers('t') return err") == "topic not found"
    p = identified(t.tcp_port, addr="10.0.0.5", port=4150, http=4151)
    assert p.cmd("REGISTER t") == b"OK"
    got = json.loads(c.ask("return ternd.json.encode(ternd.discovery.producers('t'))"))
    assert len(got) == 1
    assert got[0]["broadcast_address"] == "10.0.0.5" and got[0]["tcp_port"] == 4150
    assert got[0]["http_port"] == 4151 and got[0]["version"] == "1.3.0"
    post(t.http_port, "/topic/tombstone", topic="t", node="10.0.0.5:4151")
    assert c.ask("return tostring(#ternd.discovery.producers('t'))") == "0"
    p.close()
    assert get(t.http_port, "/ping").status == 200


def test_not_in_pool_worker_states(dsc, tmp_path):
    """Pool workers build their states on their own threads: the registries
    are loop-thread data, so ternd.discovery is left out there."""
    script = tmp_path / "sample.lua"
    script.write_text(EVAL)
    t = dsc(start=False, more={
        "pool": {"pools": {"default": {"size": 1}}},
        "sample": {"listen": tnhelp.ANY_PORT, "lua": {"script": str(script)}}})
    # workers find task modules from the server's working directory
    (t.tmp / "work.lua").write_text(
        "local M = {}\n"
        "function M.probe() return type(ternd.discovery) .. ' ' .. type(ternd.pool) end\n"
        "return M\n")
    t.started()
    with tnhelp.LineClient(tnhelp.sample_port(t)) as c:
        assert c.ask("return type(ternd.discovery)") == "table"
        assert c.ask('R = nil ternd.pool.submit("default", "work.probe", '
                     'function(v) R = v end) return "sent"') == "sent"
        tnhelp.wait_for(lambda: c.ask("return tostring(R)") != "nil", 5, what="the worker's answer")
        assert c.ask("return R") == "nil nil"
    t.stop()
