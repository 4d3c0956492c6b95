"""The load tools of scripts/bench/run-compare: nsq_bench's fan-out mode
(-F, one channel per consumer, -P publishers) against the real broker, and
ps_bench against redis-server and nats-server when those are installed
(each started here on a free loopback port, never a system service)."""

import shutil
import subprocess
import time

import pytest
import tnhelp
from brokerhelp import http, tcp_open


def results(out):
    """nsq_bench/ps_bench result lines: {"pub": {...}, "sub": {...}}."""
    res = {}
    for line in out.splitlines():
        role, _, rest = line.partition(" ")
        if role in ("pub", "sub"):
            res[role] = {k: float(v) for k, v in (kv.split("=", 1) for kv in rest.split())}
    return res


def run_tool(name, *args):
    tool = tnhelp.BUILD / "scripts" / "bench" / name
    if not tool.exists():
        pytest.skip("%s not built" % tool)
    p = subprocess.run([str(tool)] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return results(p.stdout)


def test_nsq_bench_fanout(broker):
    b = broker()
    res = run_tool("nsq_bench", "pubsub", "-a", "127.0.0.1:%d" % b.tcp_port, "-t", "fan",
                   "-C", "ch", "-F", "-P", 1, "-c", 3, "-s", 64, "-d", 0.5, "-T")
    published = res["pub"]["msgs"]
    assert published > 0 and res["pub"]["errors"] == 0
    topic = http(b, "GET", "/stats?format=json&topic=fan").json()["topics"][0]
    chans = {c["channel_name"]: c for c in topic["channels"]}
    # one channel per consumer, each given every message
    assert sorted(chans) == ["ch0", "ch1", "ch2"]
    counts = {c["message_count"] for c in chans.values()}
    assert len(counts) == 1 and counts.pop() >= published
    # the consumers together saw at most three copies of what was published,
    # and (the run lasted half a second) more than one copy's worth
    assert published < res["sub"]["msgs"] <= 3 * topic["message_count"]


def test_nsq_bench_fanout_wants_duration():
    tool = tnhelp.BUILD / "scripts" / "bench" / "nsq_bench"
    if not tool.exists():
        pytest.skip("nsq_bench not built")
    p = subprocess.run([str(tool), "pubsub", "-F", "-n", "10"], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 2 and "-F" in p.stderr


def start_server(cmd, port, tmp_path):
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=str(tmp_path))
    deadline = time.monotonic() + 10
    while not tcp_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("%s did not start" % cmd[0])
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("kind", ["redis", "nats", "nats-queue"])
def test_ps_bench(kind, tmp_path):
    server = "redis-server" if kind == "redis" else "nats-server"
    if not shutil.which(server):
        pytest.skip("%s not installed" % server)
    port = tnhelp.free_port()
    if kind == "redis":
        cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(tmp_path)]
    else:
        cmd = [server, "-a", "127.0.0.1", "-p", str(port)]
    proc = start_server(cmd, port, tmp_path)
    try:
        extra = ["-q", "workers"] if kind == "nats-queue" else []
        res = run_tool("ps_bench", kind.split("-")[0], "-a", "127.0.0.1:%d" % port, "-c", 2,
                       "-b", 50, "-s", 32, "-d", 0.5, *extra)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    pub, sub = res["pub"]["msgs"], res["sub"]["msgs"]
    assert pub > 0 and pub % 50 == 0  # whole answered batches only
    assert res["pub"]["errors"] == 0 and res["sub"]["errors"] == 0
    if kind == "nats-queue":
        # a queue group delivers each message once, to one of the two
        assert 0 < sub <= pub + 50
    else:
        # both subscribers get every message (those still on the way when
        # the run ended are not counted)
        assert pub < sub <= 2 * (pub + 50)
