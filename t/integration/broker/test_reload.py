"""SIGHUP with a changed broker section: the Lua hook and the dead-letter
policies change at once, connections and queued messages stay; a bad new
script keeps the old one."""

import nsqwire as nw


def test_reload_hook_and_policy(broker, tmp_path):
    script = tmp_path / "hook.lua"
    script.write_text('function on_publish(t, b) return "v1:" .. b end\n')
    b = broker(http=False, lua={"script": str(script)})
    c = nw.consumer(b.tcp_port, "t", "work", rdy=5)
    nw.publish(b.tcp_port, "t", [b"a"])
    m = c.read_message()
    assert m.body == b"v1:a"
    c.req(m.id, 0)
    held = c.read_message()
    assert held.attempts == 2  # no limit yet

    script.write_text('function on_publish(t, b) return "v2:" .. b end\n')
    b.sections["broker"]["channels"] = {"work": {"max_attempts": 3, "dead_letter_topic": "dlq"}}
    assert "reload done" in b.reload()
    dlq = nw.consumer(b.tcp_port, "dlq", "x", rdy=5)
    nw.publish(b.tcp_port, "t", [b"b"])
    m = c.read_message()
    assert m.body == b"v2:b"  # same connection, the new script
    c.fin(m.id)
    # the message held across the reload now has a limit of 3 attempts
    c.req(held.id, 0)
    third = c.read_message()
    assert (third.id, third.attempts) == (held.id, 3)
    c.req(third.id, 0)
    assert dlq.read_message().body == b"v1:a"
    c.expect_silence()


def test_bad_script_on_reload_keeps_old(broker, tmp_path):
    script = tmp_path / "hook.lua"
    script.write_text('function on_publish(t, b) return "old:" .. b end\n')
    b = broker(http=False, lua={"script": str(script)})
    script.write_text("function on_publish(  -- broken\n")
    log = b.reload()
    assert "reload rejected" in log and "hook.lua:2:" in log
    c = nw.consumer(b.tcp_port, "t", "ch", rdy=1)
    nw.publish(b.tcp_port, "t", [b"x"])
    assert c.read_message().body == b"old:x"
