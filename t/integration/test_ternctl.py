"""ternctl(1) against a real ternd: ping, pub, stats (with rates between
calls), tail on an ephemeral channel, pause/unpause, reload through the
admin endpoint's POST /reload and through a pid file, and clear failures
when nothing listens."""

import json
import os
import re
import signal
import subprocess

import pytest

import tnhelp

RUN_TIMEOUT = tnhelp.scaled(20.0)  # ternctl waits for a ternd that may run under valgrind


def ternctl_bin():
    return tnhelp.BUILD / "tools" / "ternctl"


def modules_dir():
    return tnhelp.BUILD / "lib" / "ternd" / "modules"


@pytest.fixture
def server(ternd):
    """A started ternd with the broker on free ports (t.tcp_port,
    t.http_port); the admin port comes from the log."""
    if not ternctl_bin().exists():
        pytest.skip("ternctl missing in %s: build first" % tnhelp.BUILD)
    if not (modules_dir() / "broker.so").exists():
        pytest.skip("broker.so missing: build first")
    tcp, http = tnhelp.free_port(), tnhelp.free_port()
    t = ternd(daemon={"modules_dir": str(modules_dir()),
                      "pid_file": "ternd.pid"},
              sections={"broker": {"tcp_listen": "127.0.0.1:%d" % tcp,
                                   "http_listen": "127.0.0.1:%d" % http}})
    t.tcp_port, t.http_port = tcp, http
    t.start()
    tnhelp.wait_for(lambda: tnhelp.request(http, "GET", "/ping", timeout=1).status == 200
                    if _open(http) else False, 10, what="broker HTTP")
    yield t
    if t.alive():
        t.stop()


def _open(port):
    try:
        tnhelp.socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def addr_args(t):
    return ["-a", "127.0.0.1:%d" % t.admin_port, "-b", "127.0.0.1:%d" % t.http_port,
            "-t", "127.0.0.1:%d" % t.tcp_port]


def ctl(t, *args, stdin=None, env=None):
    return subprocess.run([str(ternctl_bin())] + (addr_args(t) if t else []) + list(args),
                          input=stdin, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          env=env)


def broker_stats(t, topic=None):
    q = "/stats?format=json" + ("&topic=" + topic if topic else "")
    return tnhelp.request(t.http_port, "GET", q).json()


def topic_of(t, name):
    found = [x for x in broker_stats(t)["topics"] if x["topic_name"] == name]
    return found[0] if found else None


def test_ping(server):
    r = ctl(server, "ping")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["admin 127.0.0.1:%d: OK" % server.admin_port,
                                     "broker 127.0.0.1:%d: OK" % server.http_port]
    r = ctl(server, "ping", "broker")
    assert r.returncode == 0 and r.stdout.startswith("broker ")


def test_pub_argument_and_stdin(server):
    assert ctl(server, "pub", "orders", "first").returncode == 0
    r = ctl(server, "pub", "orders", stdin="second\nline\n")
    assert r.returncode == 0, r.stderr
    assert topic_of(server, "orders")["message_count"] == 2
    # what the broker stored: consume both with tail on a named channel
    r = ctl(server, "tail", "-n", "2", "-c", "check", "orders")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "first\nsecond\nline\n"


def test_pub_rejected_by_broker(server):
    r = ctl(server, "pub", "bad topic!", "x")
    assert r.returncode == 1
    assert "400" in r.stderr and "INVALID_TOPIC" in r.stderr


def test_stats_table_and_rates(server, tmp_path):
    state = tmp_path / "state.json"
    for i in range(3):
        ctl(server, "pub", "jobs", "m%d" % i)
    tnhelp.request(server.http_port, "POST", "/channel/create?topic=jobs&channel=work")
    r = ctl(server, "stats", "-S", str(state))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ternd ")
    assert "connections open:" in lines[0]
    row = [ln for ln in lines if ln.startswith("jobs ")][0].split()
    # name, depth, in-flight, clients, messages, rate (none yet)
    assert row[1] == str(topic_of(server, "jobs")["depth"])
    assert row[4] == "3" and row[5] == "-"
    chan = [ln for ln in lines if ln.startswith("  work ")][0].split()
    assert chan[3] == "0"  # no consumer
    assert "run again" in r.stdout
    assert json.loads(state.read_text())["counts"]["jobs"] == 3

    for i in range(4):
        ctl(server, "pub", "jobs", "n%d" % i)
    r = ctl(server, "stats", "-S", str(state))
    row = [ln for ln in r.stdout.splitlines() if ln.startswith("jobs ")][0].split()
    assert row[4] == "7"
    elapsed = float(re.search(r"over the last ([0-9.]+)s", r.stdout).group(1))
    assert elapsed > 0
    # 4 messages over the interval printed (rounded to 0.1 msg/s)
    assert abs(float(row[5]) - 4 / elapsed) <= 0.05 + 4 / elapsed * 0.2


def test_stats_rates_restart_per_broker(server, tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"broker": "127.0.0.1:1", "start_time": 0, "ms": 0,
                                 "counts": {"x": 1}}))
    ctl(server, "pub", "x", "m")
    r = ctl(server, "stats", "-S", str(state))
    row = [ln for ln in r.stdout.splitlines() if ln.startswith("x ")][0].split()
    assert row[5] == "-"  # the old sample is of another broker


def test_tail_ephemeral_channel(server):
    args = [str(ternctl_bin())] + addr_args(server) + ["tail", "-n", "3", "events"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def subscribed():
            t = topic_of(server, "events")
            return t and any(c["channel_name"].endswith("#ephemeral") and c["client_count"] == 1
                             for c in t["channels"])
        tnhelp.wait_for(subscribed, 10, what="tail to subscribe")
        for body in ("one", "two", "three"):
            assert ctl(server, "pub", "events", body).returncode == 0
        out, err = p.communicate(timeout=RUN_TIMEOUT)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert out.splitlines() == ["one", "two", "three"]
    # the ephemeral channel went away with its only consumer
    tnhelp.wait_for(lambda: topic_of(server, "events")["channels"] == [], 10,
                    what="the ephemeral channel to go")


def test_tail_interrupted_by_signal(server):
    p = subprocess.Popen([str(ternctl_bin())] + addr_args(server) + ["tail", "sig"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        tnhelp.wait_for(lambda: topic_of(server, "sig") and topic_of(server, "sig")["channels"],
                        10, what="tail to subscribe")
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=RUN_TIMEOUT)
    finally:
        p.kill()
    assert p.returncode == -signal.SIGINT
    # the broker noticed the consumer go and dropped its ephemeral channel
    tnhelp.wait_for(lambda: topic_of(server, "sig")["channels"] == [], 10,
                    what="the ephemeral channel to go")


def test_pause_unpause(server):
    ctl(server, "pub", "p", "m")
    tnhelp.request(server.http_port, "POST", "/channel/create?topic=p&channel=c")
    assert ctl(server, "pause", "p").returncode == 0
    assert topic_of(server, "p")["paused"] is True
    assert ctl(server, "pause", "p", "c").returncode == 0
    assert topic_of(server, "p")["channels"][0]["paused"] is True
    # a state file that cannot be written costs the rates, not the table
    r = ctl(server, "stats", "-S", os.devnull + "/nodir/state.json")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^p .* paused$", r.stdout, re.M)
    assert ctl(server, "unpause", "p").returncode == 0
    assert ctl(server, "unpause", "p", "c").returncode == 0
    t = topic_of(server, "p")
    assert t["paused"] is False and t["channels"][0]["paused"] is False
    r = ctl(server, "pause", "p", "nosuch")
    assert r.returncode == 1 and "404 CHANNEL_NOT_FOUND" in r.stderr


def test_reload_through_admin(server):
    mark = server.log_size()
    server.daemon["log_level"] = "debug"
    server.write_conf()
    r = ctl(server, "reload")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "reload done"
    assert "] core: reload done" in server.log()[mark:]


def test_reload_rejected(server):
    server.write_conf(server.conf_text() + "nonsense_key_for_no_module: 1\n")
    r = ctl(server, "reload")
    assert r.returncode == 1
    assert "409" in r.stderr and "rejected" in r.stderr
    assert server.alive()


def test_reload_by_pid_file(server):
    pid_file = server.tmp / "ternd.pid"
    mark = server.log_size()
    r = ctl(server, "reload", "-p", str(pid_file))
    assert r.returncode == 0, r.stderr
    assert str(server.pid) in r.stdout
    server.wait_log(r"\] core: reload done", since=mark)


def test_server_down(tmp_path):
    if not ternctl_bin().exists():
        pytest.skip("ternctl missing")
    port = tnhelp.free_port()  # nothing listens there
    a = "127.0.0.1:%d" % port
    for args, opt in ((["-a", a, "ping", "admin"], "-a"), (["-b", a, "pub", "t", "m"], "-b"),
                      (["-t", a, "tail", "t"], "-t"), (["-a", a, "reload"], "-a")):
        r = subprocess.run([str(ternctl_bin())] + args, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT)
        assert r.returncode == 1, args
        assert "cannot connect to %s" % a in r.stderr, r.stderr
        assert "is ternd running? see %s" % opt in r.stderr


def test_usage_errors():
    if not ternctl_bin().exists():
        pytest.skip("ternctl missing")
    for args in ([], ["frobnicate"], ["pub"], ["pause"], ["tail"], ["-T", "0", "ping"],
                 ["tail", "-n", "0", "t"]):
        r = subprocess.run([str(ternctl_bin())] + args, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT)
        assert r.returncode in (1, 2), args
        assert r.stderr.strip(), args
