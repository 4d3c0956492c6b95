"""The gateway over KCP through real netem (tc), on the project's own test
host: the build and CI machines' kernel has no sch_netem and cannot load
modules, so the test boots a qemu-system-x86_64 guest with Debian's own
kernel (testvm.py: linux-image-amd64's package, fetched with apt-get download
into build/testvm/, never installed) and an initramfs holding busybox, the
sch_netem and tun modules, iproute2's tc and ip, build/server/ternd with
gateway.so and every library they need, the kcp-go client (goclient.py,
static), and python3 with pytest and this tree's integration helpers.

In the guest, on its loopback: ternd with a KCP listener in turbo mode (the
options of test_kcp.py) and route_test.lua; then for each scenario a netem
qdisc on lo (both directions cross it), the Go client echoing a few hundred
packets of ~1 KB (one KCP segment each; one scenario with 6 KB packets, a
few fragments each), `tc -s qdisc show dev lo`, and ternd's KCP metrics.
Everything comes back on the serial console, lines starting "@@ " marking
what the test reads. Asserted here: every packet answered exactly once, in
order, with its own data (length and SHA-256 of each reply); netem really
dropped packets (its "dropped" counter) in the loss scenarios and really
reordered some (its "requeues" counter: netem's enqueue counts there each
packet it puts at the head of its queue, i.e. ahead of the delayed ones) in
the reorder scenario; and segments were sent again where packets were lost
(kcp-go's counters and ternd's ternd_gateway_kcp_retransmits_total).
Then pytest, in the guest, runs test_kcp.py's namespace test, whose link
takes tunlink.py's netem path there (never on the build machines).

KVM where the host has it, else qemu's TCG emulator (slow: a few hundred
packets per scenario keep the guest's run around 30 s, 70 s with the
machine's cores busy; nothing here measures time). Skipped, saying why,
where qemu, busybox-static or the kernel package cannot be had;
scripts/dev/bootstrap installs qemu-system-x86 and busybox-static, so it
runs on CI.
"""

import hashlib
import json
import re
import time
from pathlib import Path

import pytest

import tnhelp
from gwhelp import TURBO

HERE = Path(__file__).resolve().parent
PORT, ADMIN = 3555, 4171
BOOT_TIMEOUT = 240  # seconds for the whole guest run, boot to power off

# name, netem options, packets, padding (bytes per packet)
SCENARIOS = [
    ("loss1", "delay 5ms loss 1%", 600, 1000),
    ("loss5", "delay 10ms loss 5%", 300, 1000),
    ("reorder", "delay 10ms reorder 25% 50%", 300, 1000),
    ("fragments", "delay 5ms loss 5% reorder 10%", 40, 6000),
]


def expected(n, pad, prefix="x"):
    """The client's -digest lines for n echoes of route_test.lua's route 1."""
    out = []
    for i in range(n):
        data = ("%s%d" % (prefix, i)).encode()
        if pad:
            data += b"/" + bytes(ord("a") + (i + k) % 26 for k in range(pad - 1))
        data = b"echo:" + data
        out.append("reply 1 %d %d %s" % (i, len(data), hashlib.sha256(data).hexdigest()))
    return out


def guest_config():
    kcp = ", ".join("%s: %s" % kv for kv in TURBO.items())
    return ("daemon: { log_level: info, data_dir: /tmp/ternd, modules_dir: /usr/lib/ternd/modules,\n"
            "          plugins_dir: /usr/lib/ternd/plugins, admin_listen: 127.0.0.1:%d,\n"
            "          shutdown_timeout: 3s }\n"
            "gateway:\n"
            "  listen:\n"
            "    - { proto: kcp, addr: 127.0.0.1:%d, %s }\n"
            "  lua: { script: /etc/ternd/route_test.lua }\n" % (ADMIN, PORT, kcp))


# The guest's part: ternd, then each scenario (its lines between
# "@@ scenario NAME" and "@@ scenario-end NAME"). busybox's wget crashes
# with its own -T (1.35): timeout(1) bounds it instead.
GUEST_HEAD = """
mkdir -p /tmp/ternd
/usr/bin/ternd -c /etc/ternd/ternd.yaml >/tmp/ternd.log 2>&1 &
tpid=$!
ready=no
for i in $(seq 1 100); do
    timeout 5 wget -q -O /dev/null http://127.0.0.1:%(admin)d/ping && { ready=yes; break; }
    sleep 0.3
done
echo "@@ ternd ready=$ready $(cut -d' ' -f1 /proc/uptime)"
metrics() {
    timeout 10 wget -q -O - http://127.0.0.1:%(admin)d/metrics | grep '^ternd_gateway_kcp' |
        sed 's/^/@@ metric /'
}
"""

GUEST_SCENARIO = """
echo "@@ scenario %(name)s $(cut -d' ' -f1 /proc/uptime)"
/usr/sbin/tc qdisc add dev lo root netem %(netem)s || echo "@@ tc failed"
/usr/bin/kcp_client -addr 127.0.0.1:%(port)d -n %(n)d -pad %(pad)d -prefix x -digest -snmp \
    -timeout 90s > /tmp/out 2>&1
echo "@@ client rc=$?"
cat /tmp/out
/usr/sbin/tc -s qdisc show dev lo | sed 's/^/@@ qdisc /'
/usr/sbin/tc qdisc del dev lo root
metrics
echo "@@ scenario-end %(name)s $(cut -d' ' -f1 /proc/uptime)"
"""

# test_kcp.py's namespace test, run by pytest in the guest: there its link
# is tunlink.py's netem path (tc netem on each TUN device), which the build
# machines cannot take. The tree and the build are at their host paths.
GUEST_PYTEST = """
echo "@@ pytest-begin $(cut -d' ' -f1 /proc/uptime)"
cd %(src)s
/usr/bin/python3 -c "import sys; sys.path.insert(0, 't/integration/gateway'); import tunlink; \
print('@@ tunlink netem=%%s' %% tunlink.netem_available())"
TERND_BUILD=%(build)s TERND_KCP_CLIENT=/usr/bin/kcp_client /usr/bin/python3 -m pytest -q \
    -p no:cacheprovider -rA t/integration/gateway/test_kcp.py -k between_namespaces 2>&1 |
    sed 's/^/@@ pytest /'
echo "@@ pytest-end $(cut -d' ' -f1 /proc/uptime)"
"""

GUEST_TAIL = """
kill -TERM $tpid
wait $tpid
rc=$?
echo "@@ ternd exit=$rc"
if [ $rc != 0 ]; then
    tail -60 /tmp/ternd.log | sed 's/^/@@ log /'
else
    grep -iE 'error|warn' /tmp/ternd.log | head -20 | sed 's/^/@@ log /'
fi
"""


def guest_body():
    body = GUEST_HEAD % {"admin": ADMIN}
    for name, netem, n, pad in SCENARIOS:
        body += GUEST_SCENARIO % {"name": name, "netem": netem, "port": PORT, "n": n,
                                  "pad": pad}
    return body + GUEST_TAIL + GUEST_PYTEST % {"src": tnhelp.SRCDIR, "build": tnhelp.BUILD}


def build_image(kernel, client, out):
    import testvm
    files = {"etc/ternd/ternd.yaml": guest_config(),
             "etc/ternd/route_test.lua": HERE / "route_test.lua"}
    # for the guest's pytest: the integration tests' helpers and the
    # gateway's tests, ternd and gateway.so at their host paths
    top = tnhelp.SRCDIR / "t" / "integration"
    for f in [top / "pytest.ini"] + sorted(top.glob("*.py")) + sorted(HERE.glob("*.py")) + \
            sorted(HERE.glob("*.lua")):
        files[str(f)] = f
    img = testvm.ternd_image(kernel, tnhelp.BUILD, guest_body(), files, client,
                             kernel_modules=("sch_netem", "tun"))
    img.binary(str(tnhelp.ternd_bin()), tnhelp.ternd_bin())
    from gwhelp import modules_dir
    img.binary(str(modules_dir() / "gateway.so"), (modules_dir() / "gateway.so").resolve())
    testvm.add_python(img)
    img.write(out)


class Scenario:
    """What the console says about one scenario."""

    def __init__(self, lines):
        self.lines = lines
        self.rc = self.find(r"^@@ client rc=(\d+)$", int)
        self.replies = [ln for ln in lines if ln.startswith("reply ")]
        self.done = "done" in lines
        snmp = self.find(r"^snmp (\{.*\})$", json.loads)
        self.snmp = snmp or {}
        qdisc = " ".join(ln for ln in lines if ln.startswith("@@ qdisc"))
        m = re.search(r"Sent \d+ bytes (\d+) pkt \(dropped (\d+), overlimits \d+ requeues (\d+)\)",
                      qdisc)
        self.qdisc = qdisc
        self.sent, self.dropped, self.requeues = map(int, m.groups()) if m else (0, 0, 0)
        self.metrics = {}
        for ln in lines:
            m = re.match(r"^@@ metric (\S+) (\S+)$", ln)
            if m:
                self.metrics[m.group(1)] = float(m.group(2))

    def find(self, pattern, conv):
        for ln in self.lines:
            m = re.match(pattern, ln)
            if m:
                return conv(m.group(1))
        return None


def parse(lines):
    """{name: Scenario} from the console's lines; each scenario's retransmits
    are ternd's counter less what it was at the end of the one before."""
    out, cur, name, before = {}, None, None, 0
    for ln in lines:
        m = re.match(r"^@@ scenario (\S+) ", ln)
        if m:
            name, cur = m.group(1), []
            continue
        if ln.startswith("@@ scenario-end ") and cur is not None:
            out[name] = s = Scenario(cur)
            total = s.metrics.get("ternd_gateway_kcp_retransmits_total", 0)
            s.retransmits, before = total - before, total
            cur = None
            continue
        if cur is not None:
            cur.append(ln)
    return out


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    import testvm
    from gwhelp import modules_dir
    why = testvm.qemu_available()
    if why:
        pytest.skip("test host VM unavailable: %s" % why)
    if not (modules_dir() / "gateway.so").exists():
        pytest.skip("gateway.so missing in %s: build first" % modules_dir())
    try:
        kernel = testvm.fetch_kernel(tnhelp.BUILD / "testvm")
        import goclient
        tmp = tmp_path_factory.mktemp("netemvm")
        client = goclient.build(tmp / "go", tnhelp.BUILD / "go-cache")
        assert not testvm.shared_libs(client), "the Go client must be static (CGO_ENABLED=0)"
        made = time.monotonic()
        build_image(kernel, client, tmp / "initrd.cpio")
        made = time.monotonic() - made
    except testvm.Unavailable as e:
        pytest.skip("test host VM unavailable: %s" % e)
    run = testvm.boot(kernel, tmp / "initrd.cpio", BOOT_TIMEOUT, log=tmp / "console.log")
    run.scenarios = parse(run.lines())
    # how long it took, on which accelerator: shown with -s or -rP
    print("test host VM: %s, kernel %s, image made in %.1fs, %.1fs from start to power off, "
          "console in %s" % (run.accel, kernel.version, made, run.seconds, tmp / "console.log"))
    if run.kvm_failure:
        print("KVM was tried first and given up:\n%s" % run.kvm_failure)
    return run


def test_guest_boots_with_netem_and_ternd(guest):
    text = guest.console
    assert not guest.timed_out, "the guest did not power off in %ds:\n%s" % (
        BOOT_TIMEOUT, text[-4000:])
    assert "@@ booted" in text, text[-4000:]
    assert "@@ insmod" not in text, text[-4000:]
    assert "@@ ternd ready=yes" in text, text[-4000:]
    assert "@@ tc failed" not in text, text[-4000:]
    assert "@@ end" in text, text[-4000:]
    assert re.search(r"^@@ ternd exit=0$", text.replace("\r", ""), re.M), text[-4000:]
    assert set(guest.scenarios) == {s[0] for s in SCENARIOS}, text[-4000:]
    # over all the scenarios, ternd resent what netem dropped on its way
    assert sum(s.retransmits for s in guest.scenarios.values()) > 0, text[-4000:]


def test_namespace_test_on_netem_in_the_guest(guest):
    """test_kcp.py's loss test between two namespaces, run by pytest in the
    guest, where tunlink takes its netem path (and asserts netem dropped)."""
    out = "\n".join(ln[len("@@ pytest "):] for ln in guest.lines()
                    if ln.startswith("@@ pytest "))
    assert "@@ pytest-end" in guest.console, guest.console[-4000:]
    assert "@@ tunlink netem=True" in guest.console, guest.console[-4000:]
    assert re.search(r"^PASSED .*test_loss_and_reorder_between_namespaces", out, re.M), out
    assert re.search(r"^1 passed, \d+ deselected", out, re.M), out


@pytest.mark.parametrize("name,netem,n,pad", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_echo_through_netem(guest, name, netem, n, pad):
    s = guest.scenarios.get(name)
    assert s is not None, "scenario %s missing:\n%s" % (name, guest.console[-4000:])
    assert s.rc == 0 and s.done, "\n".join(s.lines[-30:])
    # every packet answered exactly once, in order, with its own data
    assert s.replies == expected(n, pad), "\n".join(s.lines[-30:])
    assert "netem" in s.qdisc and s.sent > 0, s.qdisc
    if "loss" in netem:
        # netem really dropped packets, and segments were sent again (by
        # either end: the few losses of 1% may all fall on one direction)
        assert s.dropped > 0, s.qdisc
        assert s.snmp.get("RetransSegs", 0) + s.retransmits > 0, (s.snmp, s.metrics)
    if "reorder" in netem:
        # netem counts as requeues the packets it moved ahead of the queue
        assert s.requeues > 0, s.qdisc
    assert s.metrics.get("ternd_gateway_kcp_dead_total") == 0, s.metrics
