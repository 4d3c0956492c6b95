"""SIGHUP with a changed discovery section: limits and the script are
adopted at once, registrations survive, listen address changes are logged
as needing a restart."""

import tnhelp
from dschelp import get, identified, post


def register(t, id):
    return post(t.http_port, "/services/register", {"name": "gw", "id": id, "address": "h:1"})


def test_reload_adopts_limits_and_script(dsc, tmp_path):
    script = tmp_path / "d.lua"
    script.write_text('function on_change(n, i) ternd.log("info", "v1 " .. n) end\n')
    t = dsc(services={"max_instances": 1}, lua={"script": str(script)})
    p = identified(t.tcp_port)
    assert p.cmd("REGISTER kept") == b"OK"
    assert register(t, "a").status == 200
    t.wait_log(r"v1 gw")
    assert register(t, "b").status == 503

    script.write_text('function on_change(n, i) ternd.log("info", "v2 " .. n) end\n')
    t.sections["discovery"]["services"] = {"max_instances": 2}
    text = t.reload()
    assert "reload done" in text, text
    mark = t.log_size()
    assert register(t, "b").status == 200
    t.wait_log(r"v2 gw", since=mark)
    assert "v1 gw" not in t.log()[mark:]
    # what was registered before is still there, and the producer too
    assert [i["id"] for i in get(t.http_port, "/services", name="gw").json()["instances"]] == \
        ["a", "b"]
    assert len(get(t.http_port, "/lookup", topic="kept").json()["producers"]) == 1
    assert p.cmd("PING") == b"OK"
    p.close()
    t.stop()


def test_reload_listen_change_needs_restart(dsc):
    t = dsc()
    old_http = t.http_port
    t.sections["discovery"]["http_listen"] = "127.0.0.1:%d" % tnhelp.free_port()
    text = t.reload()
    assert "reload done" in text, text
    t.wait_log(r"\[warn\] discovery: tcp_listen/http_listen changes take effect after a restart")
    assert get(old_http, "/ping").status == 200
    t.stop()


def test_reload_with_bad_section_keeps_running(dsc):
    t = dsc()
    t.sections["discovery"]["inactive_timeout"] = "soon"
    text = t.reload()
    assert "reload rejected" in text, text
    assert "discovery.inactive_timeout" in text
    assert get(t.http_port, "/ping").status == 200
    t.stop()
