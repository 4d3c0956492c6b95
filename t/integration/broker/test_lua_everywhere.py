"""ternd.broker in other modules' Lua states: the sample test module's
script (t/modules/sample.c, a line protocol answered by on_line) publishes
to the broker, as a gateway script would."""

import os
import socket

import pytest

import nsqwire as nw
import tnhelp
from brokerhelp import modules_dir, restart


def test_other_module_script_publishes(broker, tmp_path):
    sample = tnhelp.test_modules_dir() / "sample.so"
    if not sample.exists():
        pytest.skip("sample.so missing: run `make check` first")
    mods = tmp_path / "mods"
    mods.mkdir()
    os.symlink(modules_dir() / "broker.so", mods / "broker.so")
    os.symlink(sample, mods / "sample.so")
    script = tmp_path / "sample.lua"
    script.write_text("""
function on_line(line)
  local ok, err = ternd.broker.publish("from-sample", line)
  return tostring(ok) .. " " .. tostring(ternd.broker.depth("from-sample"))
end
""")
    line_port = tnhelp.free_port()
    b = broker(http=False, start=False, daemon={"modules_dir": str(mods)})
    b.sections["sample"] = {"listen": "127.0.0.1:%d" % line_port,
                            "lua": {"script": str(script)}}
    b.write_conf()
    restart(b)
    with socket.create_connection(("127.0.0.1", line_port), timeout=5) as s:
        s.sendall(b"hello broker\n")
        answer = s.makefile("rb").readline()
    assert answer == b"true 1\n"
    c = nw.consumer(b.tcp_port, "from-sample", "ch", rdy=1)
    assert c.read_message().body == b"hello broker"
