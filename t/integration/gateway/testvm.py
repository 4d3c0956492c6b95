"""testvm -- the project's own test host for what the build machine's kernel
cannot do: a qemu-system-x86_64 guest booting Debian's own kernel
(linux-image-amd64's current linux-image-6.1.0-*-amd64, downloaded with
`apt-get download` and unpacked with `dpkg-deb -x` into a cache under
build/, never installed on the host) from an initramfs made here: busybox
(busybox-static) as /init's shell, the kernel modules asked for (sch_netem),
and host binaries with every shared library ldd names (tc, ternd, ...).
No disk, no network card: the guest has its loopback only. Its console is
the serial port, read back by the caller; the guest powers off at the end
of /init, and a run that does not is killed after its timeout.

KVM is used when the host offers it (/dev/kvm and a CPU with
virtualisation), else qemu's TCG emulator: slower, same result (see boot()).
"""

import os
import re
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")
META_PACKAGE = "linux-image-amd64"


class Unavailable(Exception):
    """What is missing for the test host (the reason a test skips)."""


# ---- the kernel -----------------------------------------------------------


def kernel_package():
    """The versioned kernel package linux-image-amd64 depends on."""
    try:
        out = subprocess.run(["apt-cache", "depends", META_PACKAGE], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable("apt-cache: %s" % e)
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)\s", out)
    if not m:
        raise Unavailable("apt-cache depends %s names no kernel package" % META_PACKAGE)
    return m.group(1)


class Kernel:
    """An unpacked kernel package: vmlinuz and its modules."""

    def __init__(self, root):
        self.root = Path(root)
        boots = sorted((self.root / "boot").glob("vmlinuz-*"))
        if not boots:
            raise Unavailable("no vmlinuz in %s" % self.root)
        self.vmlinuz = boots[0]
        self.version = self.vmlinuz.name[len("vmlinuz-"):]
        self.moddir = self.root / "lib" / "modules" / self.version

    def module(self, name):
        """Path of module NAME (e.g. sch_netem) and the names it depends on
        (the package has no modules.dep: depmod runs at install time, so
        the depends= field of the module's own .modinfo is read)."""
        found = list(self.moddir.glob("kernel/**/%s.ko" % name))
        if not found:
            raise Unavailable("no %s.ko in %s" % (name, self.moddir))
        m = re.search(rb"\0depends=([^\0]*)\0", found[0].read_bytes())
        deps = [d for d in m.group(1).decode().split(",") if d] if m else []
        return found[0], deps

    def modules_in_order(self, names):
        """The .ko files for NAMES and their dependencies, dependencies first."""
        order, seen = [], set()

        def visit(n):
            if n in seen:
                return
            seen.add(n)
            path, deps = self.module(n)
            for d in deps:
                visit(d.replace("-", "_"))
            order.append(path)
        for n in names:
            visit(n)
        return order


# what is kept of the package: the kernel, the queueing disciplines, tun
KEEP = ("kernel/net/sched", "kernel/drivers/net/tun.ko")


def fetch_kernel(cache):
    """Debian's current kernel, unpacked once into CACHE/<package>/ (its
    vmlinuz and the modules under KEEP: 11 MB of the 400 unpacked). Where
    the package cannot be had (offline, stale apt lists), a kernel unpacked
    before is used."""
    cache = Path(cache)
    try:
        pkg = kernel_package()
    except Unavailable:
        old = _cached(cache)
        if old:
            return old
        raise
    root = cache / pkg
    if _unpacked(root) == _stamp(pkg):
        return Kernel(root)
    try:
        _unpack(pkg, cache, root)
    except Unavailable:
        old = _cached(cache)
        if old:
            return old
        raise
    for other in cache.glob("linux-image-*"):
        if other != root:
            shutil.rmtree(other, ignore_errors=True)
    return Kernel(root)


def _stamp(pkg):
    return "%s %s\n" % (pkg, " ".join(KEEP))


def _unpacked(root):
    try:
        return (root / ".unpacked").read_text()
    except OSError:
        return None


def _cached(cache):
    done = sorted(p.parent for p in cache.glob("linux-image-*/.unpacked")
                  if _unpacked(p.parent) == _stamp(p.parent.name))
    return Kernel(done[-1]) if done else None


def _unpack(pkg, cache, root):
    if not shutil.which("dpkg-deb") or not shutil.which("apt-get"):
        raise Unavailable("apt-get and dpkg-deb are needed to fetch %s" % pkg)
    work = cache / "download"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        r = subprocess.run(["apt-get", "download", pkg], cwd=work, capture_output=True,
                           text=True, timeout=600)
        debs = list(work.glob("*.deb"))
        if r.returncode != 0 or not debs:
            raise Unavailable("apt-get download %s failed: %s" % (pkg, r.stderr.strip()[-300:]))
        full = work / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(full)], check=True, timeout=600)
        shutil.rmtree(root, ignore_errors=True)
        (root / "lib" / "modules").mkdir(parents=True)
        shutil.move(str(full / "boot"), str(root / "boot"))
        for mods in (full / "lib" / "modules").iterdir():
            for sub in KEEP:
                if (mods / sub).exists():
                    (root / "lib" / "modules" / mods.name / sub).parent.mkdir(parents=True,
                                                                             exist_ok=True)
                    shutil.move(str(mods / sub), str(root / "lib" / "modules" / mods.name / sub))
        (root / ".unpacked").write_text(_stamp(pkg))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- the initramfs --------------------------------------------------------


def shared_libs(binary):
    """The absolute paths of the libraries ldd lists for BINARY (none for a
    static one), the dynamic loader included."""
    r = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=60)
    libs = []
    for line in r.stdout.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


class Image:
    """The files of an initramfs, written as an uncompressed newc cpio
    archive (the kernel unpacks it without a decompressor: faster under
    emulation than a gzip one)."""

    def __init__(self):
        self.entries = {}  # path in the image -> (mode, data or link target)

    def dir(self, path):
        parts = Path(path.lstrip("/")).parts
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), (stat.S_IFDIR | 0o755, b""))

    def parent(self, path):
        if "/" in path:
            self.dir(str(Path(path).parent))

    def data(self, path, data, mode=0o644):
        path = path.lstrip("/")
        self.parent(path)
        self.entries[path] = (stat.S_IFREG | mode,
                              data.encode() if isinstance(data, str) else data)

    def file(self, path, src, mode=None):
        src = Path(src)
        st = src.stat()
        self.data(path, src.read_bytes(), mode if mode is not None else st.st_mode & 0o777)

    def symlink(self, path, target):
        path = path.lstrip("/")
        self.parent(path)
        self.entries[path] = (stat.S_IFLNK | 0o777, target.encode())

    def binary(self, path, src):
        """A host executable or library at PATH, with its shared libraries
        at their host paths (so the loader finds them as it would there)."""
        self.file(path, src, 0o755)
        for lib in shared_libs(src):
            if lib.lstrip("/") not in self.entries:
                real = os.path.realpath(lib)
                self.file(lib, real, 0o755)

    def tree(self, src, skip=()):
        """The files under host directory SRC at the same paths, but for the
        names in SKIP; shared objects with their libraries."""
        for root, dirs, files in os.walk(src):
            dirs[:] = [d for d in dirs if d not in skip]
            for f in files:
                if f in skip:
                    continue
                path = os.path.join(root, f)
                if re.search(r"\.so(\.\d+)*$", f):
                    self.binary(path, os.path.realpath(path))
                else:
                    self.file(path, os.path.realpath(path))

    def write(self, out):
        with open(out, "wb") as f:
            for ino, (name, (mode, data)) in enumerate(sorted(self.entries.items()), 1):
                _cpio_entry(f, ino, name, mode, data)
            _cpio_entry(f, 0, "TRAILER!!!", 0, b"")


def _cpio_entry(f, ino, name, mode, data):
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08X" % v for v in fields)
    f.write(head + name.encode() + b"\0")
    f.write(b"\0" * (-(len(head) + len(name) + 1) % 4))
    f.write(data)
    f.write(b"\0" * (-len(data) % 4))


def base_image(kernel, modules=()):
    """busybox as /bin/sh (and its applets, linked at boot by /init),
    /lib/modules/NAME.ko for each module asked for and its dependencies,
    listed in /lib/modules/order for insmod."""
    if not BUSYBOX.exists() or shared_libs(BUSYBOX):
        raise Unavailable("%s is missing or not static: install busybox-static" % BUSYBOX)
    img = Image()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc"):
        img.dir(d)
    img.file("bin/busybox", os.path.realpath(BUSYBOX), 0o755)
    img.symlink("bin/sh", "busybox")
    order = []
    for ko in kernel.modules_in_order(modules):
        img.file("lib/modules/" + ko.name, ko)
        order.append(ko.name)
    img.data("lib/modules/order", "".join(n + "\n" for n in order))
    return img


INIT_HEAD = """#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /run
mount -t tmpfs run /run
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# busybox's shell runs its own applets before PATH (its tc is not
# iproute2's): the host binaries are called by their full paths
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m || echo "@@ insmod $m failed"; done
echo "@@ booted $(cut -d' ' -f1 /proc/uptime)"
dmesg | grep -q "Hypervisor detected: KVM" && echo "@@ accel kvm" || echo "@@ accel tcg"
ip link set lo up
"""

INIT_TAIL = """
echo "@@ end $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"""


# the sanitizers' settings of an ASan build's test run (scripts/dev/test)
PASSED_ENV = ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")


def init_script(body):
    """/init: mounts, modules, lo up, the host's PASSED_ENV, BODY (sh),
    then power off."""
    env = "".join("export %s='%s'\n" % (k, os.environ[k]) for k in PASSED_ENV
                  if k in os.environ and "'" not in os.environ[k])
    return INIT_HEAD + env + body + INIT_TAIL


PYTHON_SKIP = ("lib2to3", "idlelib", "tkinter", "ensurepip", "pydoc_data", "turtledemo", "test",
               "site-packages", "dist-packages")
PYTHON_PACKAGES = ("_pytest", "pytest", "py", "py.py", "pluggy", "iniconfig", "packaging",
                   "attr", "attrs", "yaml", "_yaml")


def add_python(img, packages=PYTHON_PACKAGES):
    """The host's /usr/bin/python3 with its standard library (less what no
    test imports) and PACKAGES of /usr/lib/python3/dist-packages (pytest's
    by default) with their metadata."""
    dist = Path("/usr/lib/python3/dist-packages")
    missing = [p for p in packages if not (dist / p).exists()]
    if missing:
        raise Unavailable("%s missing in %s (python3-pytest, python3-yaml)" % (missing, dist))
    exe = Path(os.path.realpath("/usr/bin/python3"))
    img.binary("usr/bin/" + exe.name, exe)
    img.symlink("usr/bin/python3", exe.name)
    stdlib = Path("/usr/lib") / exe.name
    # config-*: the static library and Makefile for embedding, 25 MB
    img.tree(str(stdlib), PYTHON_SKIP + tuple(p.name for p in stdlib.glob("config-*")))
    for entry in dist.iterdir():
        base = re.split(r"[-.]", entry.name, maxsplit=1)[0]
        if entry.name in packages or (base in packages and entry.name.endswith(("-info",))):
            if entry.is_dir():
                img.tree(str(entry))
            else:
                img.file(str(entry), entry)


def ternd_image(kernel, build, body, files=None, client=None, ternd_modules=("gateway",),
                kernel_modules=("sch_netem",)):
    """An image for running ternd under netem: base_image with KERNEL_MODULES,
    iproute2's tc and ip (/usr/sbin), BUILD's server/ternd (/usr/bin/ternd)
    and the modules named (/usr/lib/ternd/modules), CLIENT (a static
    binary) as /usr/bin/kcp_client, FILES ({path in the image: text or
    host Path}) and an /init running BODY (sh)."""
    build = Path(build)
    img = base_image(kernel, kernel_modules)
    for tool in ("tc", "ip"):
        img.binary("usr/sbin/" + tool, shutil.which(tool) or "/usr/sbin/" + tool)
    img.binary("usr/bin/ternd", build / "server" / "ternd")
    for m in ternd_modules:
        img.binary("usr/lib/ternd/modules/%s.so" % m,
                   (build / "lib" / "ternd" / "modules" / ("%s.so" % m)).resolve())
    img.dir("usr/lib/ternd/plugins")
    if client:
        img.binary("usr/bin/kcp_client", client)
    for path, content in (files or {}).items():
        if isinstance(content, Path):
            img.file(path, content)
        else:
            img.data(path, content)
    img.data("init", init_script(body), 0o755)
    return img


# ---- booting ----------------------------------------------------------------


def qemu_available():
    """None, or why the guest cannot be started."""
    if not shutil.which(QEMU):
        return "%s is not installed (Debian package qemu-system-x86)" % QEMU
    if not Path("/usr/share/seabios/bios-256k.bin").exists() and \
            not Path("/usr/share/qemu/bios-256k.bin").exists():
        return "qemu's BIOS (seabios) is missing"
    return None


def kvm_usable():
    """/dev/kvm can be opened and the CPU has vmx or svm (else qemu's KVM
    accelerator would refuse to start and TCG is used)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError:
        return False
    flags = Path("/proc/cpuinfo").read_text()
    return bool(re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M))


class Run:
    def __init__(self, console, seconds, accel, returncode, timed_out):
        self.console, self.seconds, self.accel = console, seconds, accel
        self.returncode, self.timed_out = returncode, timed_out
        self.kvm_failure = None  # the console of a KVM attempt given up

    def lines(self):
        return self.console.replace("\r", "").splitlines()


def boot(kernel, initrd, timeout, mem=512, cpus=2, log=None):
    """Boot KERNEL with INITRD; the console until the guest powers off or
    TIMEOUT seconds pass (then qemu is killed). KVM first where it looks
    usable (or where $TERND_TESTVM_ACCEL says kvm), TCG when KVM refuses to
    start or the guest has not booted under it within KVM_BOOT seconds
    (nested KVM can hang: it does in this project's CI VMs, which offer
    /dev/kvm without vmx or svm). $TERND_TESTVM_ACCEL=tcg forces TCG."""
    want = os.environ.get("TERND_TESTVM_ACCEL", "")
    if want == "tcg" or (want != "kvm" and not kvm_usable()):
        return _boot(kernel, initrd, timeout, mem, cpus, "tcg", log)
    run = _boot(kernel, initrd, timeout, mem, cpus, "kvm", log, boot_deadline=KVM_BOOT)
    if BOOTED in run.console:
        return run
    tcg = _boot(kernel, initrd, timeout, mem, cpus, "tcg", log)
    tcg.kvm_failure = run.console[-500:]
    return tcg


KVM_BOOT = 30
BOOTED = "@@ booted"


def _boot(kernel, initrd, timeout, mem, cpus, accel, log, boot_deadline=None):
    cmd = [QEMU, "-accel", accel + (",thread=multi" if accel == "tcg" else ""),
           "-m", str(mem), "-smp", str(cpus), "-nographic", "-no-reboot", "-nodefaults",
           "-serial", "stdio", "-monitor", "none", "-display", "none",
           "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
           "-append", "console=ttyS0 quiet panic=-1 rdinit=/init"]
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: p.stdout.read1(4096),
                                                                 b"")), daemon=True)
    reader.start()
    timed_out = False
    while p.poll() is None:
        now = time.monotonic() - start
        late = boot_deadline and now > boot_deadline and BOOTED.encode() not in b"".join(chunks)
        if now > timeout or late:
            timed_out = True
            p.kill()
            break
        time.sleep(0.2)
    p.wait()
    reader.join(10)
    seconds = time.monotonic() - start
    text = b"".join(chunks).decode("utf-8", "replace")
    if log:
        Path(log).write_text(text)
    return Run(text, seconds, accel, p.returncode, timed_out)
