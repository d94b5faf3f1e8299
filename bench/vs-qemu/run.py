#!/usr/bin/env python3
"""ringvm vs QEMU: live migration of the same guest on the same matrix.

Boots the built-in guest (build/guest/ringvm-guest.elf) under QEMU 7.2 as a
PVH kernel and under ringvm, migrates it on localhost with the same working
set, dirty rate, bandwidth cap, vCPU count, convergence mode, dirty tracking
and transport, interleaved A B A B, and prints medians and ratios
ringvm/QEMU. Python 3 standard library only.

  bench/vs-qemu/run.py --quick
  bench/vs-qemu/run.py --wss 256M,1G --bandwidth 0,1024,125 --converge none,auto,dirty-limit \
      --tracking ring,bitmap --vcpus 1,2 --reps 3 --json results.json

QEMU is driven over QMP (source: -accel kvm[,dirty-ring-size=4096], destination:
-incoming unix:PATH|tcp:127.0.0.1:PORT). ringvm: `ringvm --incoming` on the
destination, `ringctl migrate --dispatch` (or the migration.start API
command when this ringctl has no migrate) against the source's --api-socket,
with source_digest off (QEMU hashes nothing either; results before
2026-12-04 include ringvm's after-ack hash of its RAM, ~0.2 ms per MiB, in
its total), then migration.progress every 100 ms. Guest pages/s during the migration
come from the guest's own counters: the stats page read with QMP pmemsave
(address from the guest banner) under QEMU, vm.guest-stats under ringvm.
Measuring starts once every vCPU has finished one pass over its working set
(host first-touch faults over) plus --warmup s. A run that has not converged
after --timeout seconds (120) is cancelled and counted as not converged; a
harness error (a VMM that did not start) is reported and left out of the
medians. Only localhost is used.

Post-copy (--mode postcopy,hybrid; issue 17): QEMU gets the postcopy-ram
capability on both sides (postcopy-preempt too when its QMP offers it and
--qemu-preempt allows; postcopy-blocktime on the destination),
max-postcopy-bandwidth = the cap, and migrate-start-postcopy right after
`migrate` (postcopy: QEMU has no pure post-copy) or, for hybrid, once
dirty-sync-count shows --postcopy-after passes done (or N s passed). ringvm
gets migration.start mode postcopy / hybrid with postcopy_after. Downtime is
source pause -> destination resume on both sides (QEMU: the source's STOP and
the destination's RESUME QMP event timestamps; QEMU's own `downtime` figure
is kept as downtime_qemu_ms); blocktime / faults / fault latency are the
destination's (QEMU 7.2: postcopy-blocktime, postcopy-vcpu-blocktime; it
reports no page-request latency).

The Linux guest (--guest linux; issue 14): both VMMs boot build/linux/vmlinux
(PVH entry) with build/linux/initramfs.cpio and the same kernel command line:
ringvm's defaults (plus its PVM options on PVM hosts) and
memmap=SIZE$0x10000000 ringvm.workload=SPEC ringvm.stats_at=0x10000000
ringvm.wss_at=0x10100000 (guest/linux/README.md): the working set and, for
QEMU, the per-vCPU stats slots live in RAM the kernel leaves alone. QEMU runs
`-machine microvm` with the PVM-safe -cpu of docs/benchmarks.md; its
counters are read with pmemsave at stats_at, ringvm's with vm.guest-stats.
The warm-up then includes the boot (--warm-timeout 400 s by default).
--workload dirtier,ledger picks the workload (both guests).
"""
import argparse
import contextlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
POLL_S = 0.1
MIB = 1 << 20


def running_until_pause(t_start, t_command, r):
    """Seconds the source guest ran between the first counter sample
    (t_start) and its pause, for a completed pre-copy: up to the migrate
    command, then the VMM's own total minus its downtime. Not the poll
    that saw the completion: that lags it by up to POLL_S, time in which
    the paused guest writes nothing, and which weighs most on the
    shortest migrations (a 0.3 s one by up to a third)."""
    ran = (t_command - t_start) + ((r["total_ms"] or 0) - (r["downtime_ms"] or 0)) / 1000.0
    return max(1e-3, ran)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def parse_size(text):
    m = re.fullmatch(r"(\d+)([KMGT]?)", text.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError("bad size %r (e.g. 256M, 1G)" % text)
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2)]


def size_arg(n):
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n % (1 << shift) == 0:
            return "%d%s" % (n >> shift, unit)
    return str(n)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process we started; stopped by its own pid only."""

    def __init__(self, argv, log_path):
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self):
        return self.p.poll() is None

    def stop(self, grace=3.0):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()

    def tail(self, n=800):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""


def remove_stale(*paths):
    """Sockets and logs a previous run (killed) may have left behind."""
    for path in paths:
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError("timed out after %.0f s waiting for %s" % (timeout, what))


class JsonLines:
    """A line-delimited JSON connection over a Unix socket (QMP or ringvm API)."""

    def __init__(self, path, timeout=30.0):
        # The server may have created the socket file but not listen yet.
        deadline = time.monotonic() + 10.0
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(path)
                break
            except (ConnectionRefusedError, FileNotFoundError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")

    def send(self, obj):
        self.file.write(json.dumps(obj).encode() + b"\n")
        self.file.flush()

    def read(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("connection closed")
        return json.loads(line)

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


class Qmp(JsonLines):
    def __init__(self, path):
        self.events = []  # asynchronous events read while waiting for answers
        super().__init__(path)
        self.read()  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.send({"execute": name, "arguments": args} if args else {"execute": name})
        while True:
            r = self.read()
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise QmpError("%s: %s" % (name, r["error"].get("desc", r["error"])))
            if "event" in r:
                self.events.append(r)

    def event_time(self, name):
        """Wall-clock time (s) of the first event NAME read so far, or None."""
        for e in self.events:
            if e.get("event") == name:
                ts = e.get("timestamp", {})
                return ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
        return None


class QmpError(RuntimeError):
    pass


class RingvmApi(JsonLines):
    def __init__(self, path):
        super().__init__(path)
        self.next_id = 1

    def call(self, cmd, args=None):
        rid = self.next_id
        self.next_id += 1
        request = {"id": rid, "cmd": cmd}
        if args:
            request["args"] = args
        self.send(request)
        while True:
            r = self.read()
            if r.get("id") != rid:
                continue  # an event
            if "error" in r and r["error"]:
                e = r["error"]
                raise ApiError(e.get("code", "?"), e.get("message", str(e)))
            return r.get("result", {})


class ApiError(RuntimeError):
    def __init__(self, code, message):
        super().__init__("%s: %s" % (code, message))
        self.code = code


def get(d, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


# ---------------------------------------------------------------------------
# One case of the matrix

class Case:
    FIELDS = ("memory", "wss", "rate", "bandwidth", "vcpus", "converge", "tracking", "transport",
              "mode", "postcopy_after", "workload", "guest")
    # files saved before post-copy cells, --workload and --guest
    DEFAULTS = {"mode": "precopy", "postcopy_after": None, "workload": "dirtier", "guest": "builtin"}

    def __init__(self, **kw):
        for f in self.FIELDS:
            setattr(self, f, kw[f] if f in kw else self.DEFAULTS[f])

    def key(self):
        key = "wss=%s rate=%s bw=%s vcpus=%d converge=%s %s %s" % (
            size_arg(self.wss), self.rate or "max", self.bandwidth or "none", self.vcpus,
            self.converge, self.tracking, self.transport)
        if self.mode == "hybrid":
            key += " hybrid after=%s" % self.postcopy_after
        elif self.mode != "precopy":
            key += " " + self.mode
        if self.workload != "dirtier":
            key += " " + self.workload
        if self.guest != "builtin":
            key += " guest=" + self.guest
        return key

    def workload_spec(self):
        """ringvm's --workload SPEC (the Linux guest's ringvm.workload= too).
        The dirtier writes 8 bytes per page; the ledger its records (its
        default write and verify period)."""
        spec = "%s,wss=%s,rate=%d,pattern=seq" % (self.workload, size_arg(self.wss), self.rate)
        return spec + (",write=8" if self.workload == "dirtier" else "")

    def workload_words(self):
        """The built-in guest's command line (guest/pvh.c): the same spec as words."""
        return ["workload=" + self.workload] + self.workload_spec().split(",")[1:]


# The Linux guest (--guest linux): build/linux/vmlinux (PVH entry) and
# build/linux/initramfs.cpio under both VMMs with the same kernel command
# line. Its working set and stats slots live in RAM the kernel is told to
# leave alone (memmap=SIZE$PHYS; guest/linux/README.md, --wss-at and
# --stats-at): the stats in the region's first MiB, the working set after it.
# The region starts at 256 MiB, above the kernel, and must end below the top
# of RAM, where both VMMs put the initramfs.
LINUX_RESERVE_AT = 256 * MIB
LINUX_STATS_BYTES = MIB
LINUX_TOP_SPARE = 64 * MIB       # initramfs (2 MB) and the kernel's own RAM above the region
LINUX_LOW_RAM_MAX = 3 << 30      # ringvm's hole (and microvm's) starts at 3 GiB
# ringvm's default kernel command line (vmm/linux_boot.h; `ringvm --help`),
# and what it adds on PVM hosts: QEMU gets both spelled out.
LINUX_DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=1 pci=off"
LINUX_PVM_CMDLINE = "noxsave clearcpuid=popcnt,cx16,smap"
# QEMU on PVM hosts (docs/benchmarks.md, "Linux guest boot time"): no PV IPIs,
# yield or unhalt (their VMCALLs never complete there).
LINUX_QEMU_CPU = "qemu64,-cx16,+xsaveerptr,-kvm-pv-ipi,-kvm-pv-sched-yield,-kvm-pv-unhalt"


def pvm_host():
    """As vmm/host.c: RINGVM_HOST_KVM=pvm|hardware, else /sys/module/kvm_pvm."""
    forced = os.environ.get("RINGVM_HOST_KVM")
    if forced in ("pvm", "hardware"):
        return forced == "pvm"
    return os.path.exists("/sys/module/kvm_pvm")


def linux_layout(case):
    """(stats_at, wss_at, reserved bytes) of the Linux guest's memmap= region."""
    wss = (case.wss + MIB - 1) // MIB * MIB
    return LINUX_RESERVE_AT, LINUX_RESERVE_AT + LINUX_STATS_BYTES, LINUX_STATS_BYTES + wss


def linux_check_fits(case):
    """None, or why the case's region does not fit its guest's RAM."""
    at, _, size = linux_layout(case)
    need = at + size + LINUX_TOP_SPARE
    if case.memory > LINUX_LOW_RAM_MAX:
        return "--memory %s: the Linux guest runs below the 3 GiB hole here (at most 3G)" % size_arg(case.memory)
    if need > case.memory:
        return "wss %s needs a Linux guest of at least %s (memmap region 0x%x + %s, %s spare at the top)" % (
            size_arg(case.wss), size_arg((need + MIB - 1) // MIB * MIB), at, size_arg(size),
            size_arg(LINUX_TOP_SPARE))
    return None


def linux_user_cmdline(case):
    """What ringvm gets with --cmdline (appended to its defaults)."""
    stats_at, wss_at, size = linux_layout(case)
    return "memmap=%s$0x%x ringvm.workload=%s ringvm.stats_at=0x%x ringvm.wss_at=0x%x" % (
        size_arg(size), stats_at, case.workload_spec(), stats_at, wss_at)


def linux_full_cmdline(case):
    """What QEMU gets with -append: ringvm's whole command line for the same guest."""
    words = [LINUX_DEFAULT_CMDLINE] + ([LINUX_PVM_CMDLINE] if pvm_host() else []) + [linux_user_cmdline(case)]
    return " ".join(words)


def parse_after(text):
    """--postcopy-after: N passes (int) or "Ns" seconds (str), as migration.start takes it."""
    if re.fullmatch(r"[1-9]\d*", text):
        return int(text)
    if re.fullmatch(r"[1-9]\d*s", text):
        return text
    raise argparse.ArgumentTypeError("--postcopy-after: N (passes) or Ns (seconds), not %r" % text)


def dirty_limit_mbs(case):
    """Per-vCPU dirty limit for QEMU's set-vcpu-dirty-limit (MB/s): the total
    fits half the bandwidth cap (or half of ~1 GB/s when uncapped)."""
    cap = case.bandwidth or 1000
    return max(1, int(cap * 0.5 / case.vcpus))


def empty_result(vmm, case):
    return {"vmm": vmm, "case": case.key(), "converged": False, "status": "not-run",
            "total_ms": None, "downtime_ms": None, "setup_ms": None, "iterations": None,
            "final_throttle": None, "bytes_sent": None, "guest_pps": None,
            "guest_pps_before": None, "mbps": None, "dirty_rate_pps": None, "note": "",
            # post-copy and hybrid cells
            "mode": case.mode, "switched": None, "switch_ms": None, "downtime_qemu_ms": None,
            "pc_requests": None, "pc_faults": None, "blocktime_ms": None, "vcpu_blocktime_ms": None,
            "latency_p50_us": None, "latency_p99_us": None, "latency_max_us": None,
            "guest_pps_pre": None, "guest_pps_pc": None, "qemu_caps": None, "postcopy_raw": None,
            "dst_done_ms": None, "loadavg": None, "warm_s": None}


# ---------------------------------------------------------------------------
# QEMU

# Guest RAM's backing (--backing). "default": each VMM as it starts without
# options: QEMU's anonymous RAM, which it advises MADV_HUGEPAGE (transparent
# huge pages where /sys/kernel/mm/transparent_hugepage/enabled is madvise or
# always), ringvm's memfd, which it advises the same (granted only where
# shmem_enabled is advise or always). "memfd": QEMU's RAM on a memfd too
# (memory-backend-memfd), so both live under the same shmem policy.
# "hugepages": both on 2 MiB hugetlbfs pages (ringvm --hugepages).
# "anonymous": both on anonymous RAM (QEMU's default, ringvm --ram
# anonymous), so both live under the anonymous THP policy.
def qemu_memory_backend(args, case):
    if args.backing in ("default", "anonymous"):
        return []
    spec = "memory-backend-memfd,id=ram,size=%s" % size_arg(case.memory)
    if args.backing == "hugepages":
        spec += ",hugetlb=on,hugetlbsize=2M"
    return ["-object", spec]


def ringvm_memory_args(args):
    return {"hugepages": ["--hugepages"], "anonymous": ["--ram", "anonymous"]}.get(args.backing, [])


def host_page_settings():
    """What the host grants, recorded with every run (the backing's effect
    depends on it)."""
    def read(path):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            return None
        m = re.search(r"\[(\w+)\]", text)
        return m.group(1) if m else text
    return {"thp_enabled": read("/sys/kernel/mm/transparent_hugepage/enabled"),
            "thp_shmem_enabled": read("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
            "nr_hugepages": read("/proc/sys/vm/nr_hugepages"),
            # 11 or more: free page reporting stopped (scripts/host-memory.sh
            # prepare); 9, the default, hands freed 2 MiB blocks back to the
            # hypervisor below, whose next first touch is 10x slower. None:
            # no free page reporting on this host.
            "page_reporting_order": read("/sys/module/page_reporting/parameters/page_reporting_order")}


def qemu_argv(args, case, elf, qmp_path, serial_path, incoming=None):
    accel = "kvm,dirty-ring-size=4096" if case.tracking == "ring" else "kvm"
    if case.guest == "linux":
        # microvm with its PIT and PIC: how this kernel was measured booting
        # under QEMU on PVM hosts (docs/benchmarks.md).
        boot = ["-machine", "microvm", "-cpu", LINUX_QEMU_CPU, "-kernel", args.linux_kernel,
                "-initrd", args.linux_initrd, "-append", linux_full_cmdline(case), "-no-reboot"]
    else:
        boot = ["-machine", "microvm,pit=off,pic=off",  # see HOST-KVM.md: dirty-limit needs no PIT
                "-cpu", "qemu64,-cx16,+xsaveerptr",
                "-kernel", elf, "-append", " ".join(["vcpus=%d" % case.vcpus] + case.workload_words())]
    backend = qemu_memory_backend(args, case)
    if backend:
        boot[1] += ",memory-backend=ram"
    argv = [args.qemu, "-accel", accel] + boot + backend + [
            "-m", size_arg(case.memory), "-smp", str(case.vcpus),
            "-display", "none", "-monitor", "none", "-serial", "file:" + serial_path,
            "-qmp", "unix:%s,server=on,wait=off" % qmp_path]
    if incoming:
        argv += ["-incoming", incoming]
    return argv


def qemu_guest_pages(qmp, stats_gpa, vcpus, scratch, name="stats.bin"):
    path = os.path.join(scratch, name)
    qmp.cmd("pmemsave", val=stats_gpa, size=256 * vcpus, filename=path)
    with open(path, "rb") as f:
        data = f.read()
    return sum(struct.unpack_from("<Q", data, 256 * i)[0] for i in range(vcpus))


def qemu_guest_passes(qmp, stats_gpa, vcpus, scratch):
    path = os.path.join(scratch, "stats.bin")
    qmp.cmd("pmemsave", val=stats_gpa, size=256 * vcpus, filename=path)
    with open(path, "rb") as f:
        data = f.read()
    return [struct.unpack_from("<Q", data, 256 * i + 8)[0] for i in range(vcpus)]


def wait_warm(read_passes, args, case, alive=lambda: True):
    """Until every vCPU has written its whole region once (first-touch
    faults on the host are over), then --warmup seconds more. The Linux
    guest boots first: its timeout counts from the VMM's start. Returns the
    seconds it took (warm_s in the results)."""
    timeout = args.warm_timeout or (args.linux_warm_timeout if case.guest == "linux" else 120)
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        passes = read_passes()
        if len(passes) >= case.vcpus and min(passes) >= 1:
            break
        if not alive():
            raise RuntimeError("the source VMM exited before the guest finished a first pass")
        time.sleep(0.2 if case.guest == "builtin" else 1.0)
    else:
        raise RuntimeError("the guest did not finish a first pass over its working set in %d s%s" % (
            timeout, " (boot included)" if case.guest == "linux" else ""))
    warm_s = time.monotonic() - start
    time.sleep(args.warmup)
    return warm_s


def file_tail(path, n=300):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace").strip()
    except OSError:
        return ""


def crash_line(proc):
    """What a process killed by a signal said last about it: the log's last
    line naming an assertion or a fatal signal, else the signal."""
    name = os.path.basename(proc.argv[0])
    signame = signal.Signals(-proc.p.returncode).name if -proc.p.returncode in signal.valid_signals() else \
        "signal %d" % -proc.p.returncode
    lines = [l for l in proc.tail(4000).splitlines() if "Assertion" in l or "assertion" in l or "fatal" in l]
    return "%s died of %s%s" % (name, signame, ": " + lines[-1].strip() if lines else "")


@contextlib.contextmanager
def recorded_run(r, procs, conns, consoles=()):
    """One VMM's run of a case: a failure is recorded in r (status "error", or
    "crashed" when one of its processes died of a signal, named first; then
    the exception and the tail of each process's log and of the guest
    consoles written to files) and the benchmark goes on; the connections and
    processes opened meanwhile end either way."""
    try:
        yield
    except Exception as e:
        r["status"] = "error"
        tails = [p.tail(300).strip() for p in procs] + ["console: " + file_tail(c) for c in consoles]
        r["note"] = "%s; %s" % (e, " | ".join(tails))
        # A VMM that died by a signal (an assertion's abort) did not fail
        # to start or to migrate: it crashed, and the guest with it. Say
        # which and why first; the QMP/API error is only the symptom.
        crashes = [crash_line(p) for p in procs if p.p.poll() is not None and p.p.returncode < 0]
        if crashes:
            r["status"] = "crashed"
            r["note"] = "%s; %s" % ("; ".join(crashes), r["note"])
    finally:
        for c in conns:
            c.close()
        for p in procs:
            p.stop()


def run_qemu(args, case, scratch):
    r = empty_result("qemu", case)
    if case.converge == "dirty-limit" and case.tracking != "ring":
        r["status"] = "unsupported"
        r["note"] = "QEMU 7.2 set-vcpu-dirty-limit needs the dirty ring"
        return r
    elf = args.guest
    src_qmp, dst_qmp = os.path.join(scratch, "qsrc.qmp"), os.path.join(scratch, "qdst.qmp")
    src_log, dst_log = os.path.join(scratch, "qsrc.serial"), os.path.join(scratch, "qdst.serial")
    if case.transport == "unix":
        uri = "unix:" + os.path.join(scratch, "qmig.sock")
    else:
        uri = "tcp:127.0.0.1:%d" % free_port()
    procs, conns = [], []
    remove_stale(src_qmp, dst_qmp, src_log, dst_log, uri[5:] if uri.startswith("unix:") else None)
    with recorded_run(r, procs, conns, [src_log] if case.guest == "linux" else []):
        dst = Proc(qemu_argv(args, case, elf, dst_qmp, dst_log, incoming=uri), os.path.join(scratch, "qdst.log"))
        procs.append(dst)
        src = Proc(qemu_argv(args, case, elf, src_qmp, src_log), os.path.join(scratch, "qsrc.log"))
        procs.append(src)
        wait_for(lambda: os.path.exists(src_qmp) and os.path.exists(dst_qmp), 20, "QMP sockets")
        qs, qd = Qmp(src_qmp), Qmp(dst_qmp)
        conns += [qs, qd]

        def banner():
            try:
                with open(src_log, "rb") as f:
                    m = re.search(rb"stats at (0x[0-9a-f]+)", f.read())
                return int(m.group(1), 16) if m else None
            except OSError:
                return None
        if case.guest == "linux":
            # ringvm.stats_at: zero until ringvm-workload starts (RAM starts zeroed)
            stats_gpa = linux_layout(case)[0]
        else:
            stats_gpa = wait_for(banner, 30, "the guest banner on the QEMU serial")
        r["warm_s"] = wait_warm(lambda: qemu_guest_passes(qs, stats_gpa, case.vcpus, scratch), args, case,
                                src.alive)
        p0, t0 = qemu_guest_pages(qs, stats_gpa, case.vcpus, scratch), time.monotonic()
        time.sleep(1.0)
        p1, t1 = qemu_guest_pages(qs, stats_gpa, case.vcpus, scratch), time.monotonic()
        r["guest_pps_before"] = (p1 - p0) / (t1 - t0)

        caps = [{"capability": "auto-converge", "state": case.converge == "auto"}]
        bw = case.bandwidth * MIB if case.bandwidth else 100 * (1 << 30)  # QEMU's default is 128 MiB/s
        params = {"downtime-limit": args.downtime_ms, "max-bandwidth": bw,
                  "cpu-throttle-initial": 20, "cpu-throttle-increment": 10, "max-cpu-throttle": 99}
        if case.mode != "precopy":
            offered = {c["capability"] for c in qs.cmd("query-migrate-capabilities")}
            on = ["postcopy-ram"]
            if args.qemu_preempt == "on" or (args.qemu_preempt == "auto" and "postcopy-preempt" in offered):
                on.append("postcopy-preempt")
            caps += [{"capability": c, "state": True} for c in on]
            dst_on = on + (["postcopy-blocktime"] if "postcopy-blocktime" in offered else [])
            qd.cmd("migrate-set-capabilities",
                   capabilities=[{"capability": c, "state": True} for c in dst_on])
            r["qemu_caps"] = {"source": [c["capability"] for c in caps if c["state"]], "destination": dst_on,
                              "offered": sorted(offered)}
            # 7.2 paces post-copy with its own parameter; 0 (its default) = unlimited
            params["max-postcopy-bandwidth"] = case.bandwidth * MIB if case.bandwidth else 0
        qs.cmd("migrate-set-capabilities", capabilities=caps)
        qs.cmd("migrate-set-parameters", **params)
        if case.converge == "dirty-limit":
            try:
                qs.cmd("set-vcpu-dirty-limit", **{"dirty-rate": dirty_limit_mbs(case)})
                r["note"] = "dirty limit %d MB/s per vCPU" % dirty_limit_mbs(case)
            except QmpError as e:
                r["status"] = "unsupported"
                r["note"] = str(e)
                return r

        p_start, t_start = qemu_guest_pages(qs, stats_gpa, case.vcpus, scratch), time.monotonic()
        if case.mode != "precopy":
            qemu_postcopy(args, case, r, qs, qd, uri, stats_gpa, scratch, p_start, t_start)
            return r
        t_command = time.monotonic()
        qs.cmd("migrate", uri=uri)
        throttle, last = 0, {}
        while True:
            info = qs.cmd("query-migrate")
            last = info
            throttle = info.get("cpu-throttle-percentage", throttle)
            status = info.get("status")
            if status in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() - t_start > args.timeout:
                qs.cmd("migrate_cancel")
                wait_for(lambda: qs.cmd("query-migrate").get("status") in ("cancelled", "failed"),
                         30, "QEMU to cancel")
                r["status"] = "timeout"
                r["note"] = ("cancelled after %d s" % args.timeout + ("; " + r["note"] if r["note"] else ""))
                break
            time.sleep(POLL_S)
        t_end = time.monotonic()
        ram = last.get("ram", {})
        r.update({"iterations": ram.get("dirty-sync-count"), "bytes_sent": ram.get("transferred"),
                  "mbps": ram.get("mbps"), "final_throttle": throttle,
                  "dirty_rate_pps": ram.get("dirty-pages-rate")})
        if last.get("status") == "completed":
            r.update({"status": "completed", "converged": True, "total_ms": last.get("total-time"),
                      "downtime_ms": last.get("downtime"), "setup_ms": last.get("setup-time")})
            # The source is stopped (postmigrate): its stats page holds the
            # counters at the pause.
            p_end = qemu_guest_pages(qs, stats_gpa, case.vcpus, scratch)
            r["guest_pps"] = (p_end - p_start) / running_until_pause(t_start, t_command, r)
            dst_status = wait_for(lambda: qd.cmd("query-status").get("status") == "running", 10,
                                  "the QEMU destination to run")
            if not dst_status:
                r["note"] += " destination not running"
        elif r["status"] == "timeout":
            # Cancelled: the source guest runs on; its rate from the start
            # to now (throttled passes included) is what it kept meanwhile.
            p_end = qemu_guest_pages(qs, stats_gpa, case.vcpus, scratch)
            r["guest_pps"] = (p_end - p_start) / max(1e-3, time.monotonic() - t_start)
        elif r["status"] != "timeout":
            r["status"] = last.get("status", "?")
            r["note"] = last.get("error-desc", "")
        if case.converge == "dirty-limit":
            try:
                qs.cmd("cancel-vcpu-dirty-limit")
            except QmpError:
                pass
    return r


def rate_between(samples):
    """pages/s between the first and last (pages, time) sample, or None under 0.2 s."""
    if len(samples) < 2 or samples[-1][1] - samples[0][1] < 0.2:
        return None
    return (samples[-1][0] - samples[0][0]) / (samples[-1][1] - samples[0][1])


def qemu_postcopy(args, case, r, qs, qd, uri, stats_gpa, scratch, p_start, t_start):
    """QEMU post-copy / hybrid: migrate, migrate-start-postcopy at once
    (postcopy) or after --postcopy-after (hybrid), then poll both sides to the
    end. Errors QEMU reports are recorded word for word."""
    t_wall = time.time()
    qs.cmd("migrate", uri=uri)
    requested = False
    if case.mode == "postcopy":
        try:
            qs.cmd("migrate-start-postcopy")
            requested = True
        except QmpError as e:
            r["note"] = "migrate-start-postcopy: %s" % e
    after = case.postcopy_after
    dst_samples, last, dinfo, switched = [], {}, {}, False
    while True:
        info = qs.cmd("query-migrate")
        last = info
        status = info.get("status")
        elapsed = time.monotonic() - t_start
        if case.mode == "hybrid" and not requested and status in ("setup", "active"):
            syncs = get(info, "ram", "dirty-sync-count", default=0) or 0
            due = (syncs >= after + 1) if isinstance(after, int) else (elapsed >= int(after[:-1]))
            if due:  # 1 sync at setup, then 1 at the end of every pass
                try:
                    qs.cmd("migrate-start-postcopy")
                    r["note"] = "migrate-start-postcopy at dirty-sync-count %d, %.0f ms" % (syncs, elapsed * 1e3)
                except QmpError as e:
                    r["note"] = "migrate-start-postcopy: %s" % e
                requested = True
        if status in ("postcopy-active", "postcopy-paused", "postcopy-recover"):
            switched = True
        if switched:
            dinfo = qd.cmd("query-migrate")
            if dinfo.get("status") == "postcopy-active":
                try:
                    dst_samples.append((qemu_guest_pages(qd, stats_gpa, case.vcpus, scratch, "dstats.bin"),
                                        time.monotonic()))
                except QmpError:
                    pass
        if status in ("completed", "failed", "cancelled", "postcopy-paused"):
            break
        if elapsed > args.timeout:
            if switched:  # the guest runs on the destination: nothing to cancel
                r["status"] = "timeout"
                r["note"] = ("still %s after %d s (post-copy cannot be cancelled); %s"
                             % (status, args.timeout, r["note"]))
                break
            qs.cmd("migrate_cancel")
            wait_for(lambda: qs.cmd("query-migrate").get("status") in ("cancelled", "failed"),
                     30, "QEMU to cancel")
            r["status"] = "timeout"
            r["note"] = "cancelled after %d s before switching; %s" % (args.timeout, r["note"])
            break
        time.sleep(0.02 if case.mode == "hybrid" and not requested else POLL_S)
    ram = last.get("ram", {})
    # a post-copy phase shorter than one poll is seen only in its bytes
    switched = switched or (ram.get("postcopy-bytes") or 0) > 0
    r.update({"iterations": ram.get("dirty-sync-count"), "bytes_sent": ram.get("transferred"),
              "mbps": ram.get("mbps"), "final_throttle": last.get("cpu-throttle-percentage", 0),
              "dirty_rate_pps": ram.get("dirty-pages-rate"), "switched": switched,
              "pc_requests": ram.get("postcopy-requests")})
    if last.get("status") != "completed":
        if r["status"] != "timeout":
            r["status"] = last.get("status", "?")
            r["note"] = "%s; %s" % (last.get("error-desc", ""), r["note"])
        try:
            dinfo = qd.cmd("query-migrate")
        except (QmpError, OSError, ConnectionError) as e:
            dinfo = {"error": str(e)}
        r["postcopy_raw"] = {"source": last, "destination": dinfo}
        return
    # The source completes once the destination closed the return path; the
    # destination's query-migrate carries blocktime only in state completed.
    dinfo = wait_for(lambda: (lambda d: d if d.get("status") in ("completed", "failed") else None)(
        qd.cmd("query-migrate")), 30, "the QEMU destination to complete")
    r["dst_done_ms"] = (time.monotonic() - t_start) * 1e3  # as seen here: +- one poll
    r["postcopy_raw"] = {"source": last, "destination": dinfo}
    r.update({"status": "completed", "converged": True, "total_ms": last.get("total-time"),
              "setup_ms": last.get("setup-time"), "downtime_qemu_ms": last.get("downtime")})
    stop, resume = qs.event_time("STOP"), qd.event_time("RESUME")
    if stop and resume:
        r["downtime_ms"] = (resume - stop) * 1e3
        r["switch_ms"] = (stop - t_wall) * 1e3
    else:
        r["note"] += " no STOP/RESUME events (%s/%s): downtime is QEMU's own" % (stop, resume)
        r["downtime_ms"] = last.get("downtime")
    vcpu_bt = dinfo.get("postcopy-vcpu-blocktime")
    if vcpu_bt is not None:
        r["vcpu_blocktime_ms"] = vcpu_bt
        r["blocktime_ms"] = sum(vcpu_bt)  # as ringvm's blocktime_total_ms: summed over vCPUs
    # The source stopped at the switch-over: its counters are the guest's there.
    p_src = qemu_guest_pages(qs, stats_gpa, case.vcpus, scratch)
    if case.mode == "hybrid" and r["switch_ms"]:
        r["guest_pps_pre"] = (p_src - p_start) / max(1e-3, r["switch_ms"] / 1e3)
    r["guest_pps_pc"] = rate_between(dst_samples)
    if not dst_samples:
        r["note"] += " no destination sample in post-copy (it took < %.0f ms)" % (POLL_S * 1e3)
    if dinfo.get("status") != "completed":
        r["note"] += " destination %s" % dinfo.get("status")


# ---------------------------------------------------------------------------
# ringvm

def ringctl_has_migrate(ringctl):
    try:
        out = subprocess.run([ringctl, "--help"], capture_output=True, text=True, timeout=10)
    except OSError:
        return False
    return re.search(r"^\s+migrate\s", out.stdout + out.stderr, re.M) is not None


def ringvm_guest_pages(api):
    stats = api.call("vm.guest-stats")
    total = stats.get("total_pages_written")
    if total is None:
        total = sum(v.get("pages_written", 0) for v in stats.get("vcpus", []))
    return total


def run_ringvm(args, case, scratch):
    r = empty_result("ringvm", case)
    src_sock, dst_sock = os.path.join(scratch, "rsrc.sock"), os.path.join(scratch, "rdst.sock")
    if case.transport == "unix":
        dest = "unix:" + os.path.join(scratch, "rmig.sock")
    else:
        dest = "tcp:127.0.0.1:%d" % free_port()
    common = ["--memory", size_arg(case.memory), "--vcpus", str(case.vcpus)] + ringvm_memory_args(args)
    serial = None
    if case.guest == "linux":
        # The console to a file: the boot is long, and its log says how far it got.
        serial = os.path.join(scratch, "rsrc.serial")
        remove_stale(serial)
        guest = ["--kernel", args.linux_kernel, "--initrd", args.linux_initrd,
                 "--cmdline", linux_user_cmdline(case), "--serial", "file:" + serial]
    else:
        guest = ["--workload", case.workload_spec(), "--serial", "none"]
    procs, conns = [], []
    remove_stale(src_sock, dst_sock, dest[5:] if dest.startswith("unix:") else None)
    with recorded_run(r, procs, conns, [serial] if case.guest == "linux" else []):
        dst = Proc([args.ringvm, "--incoming", dest, "--api-socket", dst_sock, "--serial", "none"] + common,
                   os.path.join(scratch, "rdst.log"))
        procs.append(dst)
        src = Proc([args.ringvm] + guest + ["--dirty-log", case.tracking, "--api-socket", src_sock] + common +
                   shlex.split(args.ringvm_source_args),
                   os.path.join(scratch, "rsrc.log"))
        procs.append(src)
        wait_for(lambda: os.path.exists(src_sock) or not src.alive(), 20, "the ringvm API socket")
        if not src.alive():
            raise RuntimeError("ringvm source exited: " + src.tail())
        if case.transport == "unix":
            wait_for(lambda: os.path.exists(dest[5:]) or not dst.alive(), 20, "the ringvm destination")
        else:
            time.sleep(0.5)
        if not dst.alive():
            raise RuntimeError("ringvm destination exited: " + dst.tail())
        api = RingvmApi(src_sock)
        conns.append(api)
        r["warm_s"] = wait_warm(
            lambda: [v.get("passes", 0) for v in api.call("vm.guest-stats").get("vcpus", [])] or [0], args, case,
            src.alive)
        p0, t0 = ringvm_guest_pages(api), time.monotonic()
        time.sleep(1.0)
        p1, t1 = ringvm_guest_pages(api), time.monotonic()
        r["guest_pps_before"] = (p1 - p0) / (t1 - t0)

        p_start, t_start = ringvm_guest_pages(api), time.monotonic()
        if args.use_ringctl:
            argv = [args.ringctl, "-s", src_sock, "--json", "migrate", "--dispatch",
                    "--downtime-ms", str(args.downtime_ms), "--converge", case.converge,
                    "--max-bandwidth", str(case.bandwidth), "--keep-alive",
                    "--timeout", str(args.timeout + 30), "--no-source-digest", dest]
            if case.mode != "precopy":
                argv[-1:-1] = ["--mode", case.mode, "--yes"]
                if case.mode == "hybrid":
                    argv[-1:-1] = ["--postcopy-after", str(case.postcopy_after)]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                message = (out.stderr or out.stdout).strip()
                if "invalid-argument" in message:  # e.g. dirty-limit without the dirty ring
                    r["status"] = "unsupported"
                    r["note"] = message
                    return r
                raise RuntimeError("ringctl migrate: " + message)
        else:
            start = {"dest": dest, "downtime_ms": args.downtime_ms, "converge": case.converge,
                     "max_bandwidth_mibs": case.bandwidth, "timeout_s": args.timeout + 30,
                     "keep_alive": True, "source_digest": False}
            if case.mode != "precopy":
                start["mode"] = case.mode
                if case.mode == "hybrid":
                    start["postcopy_after"] = case.postcopy_after
            api.call("migration.start", start)
        # After the start returned (ringctl's exec and exit included): the
        # migration began before this, so ringvm's guest's running time to
        # the pause is counted long if anything. QEMU's is taken just
        # before its migrate command, so counted short if anything: both
        # errors favour QEMU's rate.
        t_command = time.monotonic()
        last = {}
        throttle = 0
        dapi, dst_samples, switched = None, [], False
        while True:
            try:
                last = api.call("migration.progress")
            except ApiError as e:
                if e.code == "no-migration":
                    time.sleep(POLL_S)
                    continue
                raise
            if get(last, "postcopy", "active"):
                switched = True
                if dapi is None:
                    dapi = RingvmApi(dst_sock)
                    conns.append(dapi)
                try:  # the guest's counters on the destination while its RAM follows
                    if dapi.call("migration.progress").get("phase") == "postcopy":
                        dst_samples.append((ringvm_guest_pages(dapi), time.monotonic()))
                except ApiError:
                    pass
            if last.get("state") in ("completed", "failed", "cancelled"):
                break
            throttle = last.get("throttle_percent", throttle)  # while active: the throttle applied
            if switched and time.monotonic() - t_start > args.timeout:
                r["status"] = "timeout"  # the guest runs on the destination: nothing to cancel
                r["note"] = "still %s/%s after %d s (post-copy cannot be cancelled)" % (
                    last.get("state"), last.get("phase"), args.timeout)
                break
            if time.monotonic() - t_start > args.timeout:
                api.call("migration.cancel")
                wait_for(lambda: api.call("migration.progress").get("state") in ("cancelled", "failed"),
                         30, "ringvm to cancel")
                r["status"] = "timeout"
                r["note"] = "cancelled after %d s" % args.timeout
                last = api.call("migration.progress")
                break
            time.sleep(POLL_S)
        t_end = time.monotonic()
        if isinstance(last.get("iterations"), list) and last["iterations"]:
            # The final snapshot shows the throttle lifted; the last iteration's is the one that converged.
            throttle = max(throttle or 0, last["iterations"][-1].get("throttle") or 0)
        iterations = last.get("iteration_count")
        if iterations is None and isinstance(last.get("iterations"), list):
            iterations = len(last["iterations"])
        r.update({"iterations": iterations, "bytes_sent": get(last, "memory", "transferred"),
                  "final_throttle": throttle, "dirty_rate_pps": last.get("dirty_rate_pps"),
                  "mbps": (last.get("bandwidth_mibs") or 0) * 8 * MIB / 1e6})
        if args.keep_progress:
            with open(os.path.join(args.keep_progress, "progress-%d.json" % int(time.time() * 1000)), "w") as f:
                json.dump(last, f, indent=1)
        if case.mode != "precopy":
            ringvm_postcopy_result(r, case, last, dst_sock, dapi, conns, dst_samples, switched, t_start)
        if last.get("state") == "completed":
            r.update({"status": "completed", "converged": True, "total_ms": last.get("total_ms"),
                      "downtime_ms": last.get("downtime_ms"), "setup_ms": last.get("setup_ms")})
            try:  # keep_alive: the source answers in state migrated, counters frozen at the pause
                p_end = ringvm_guest_pages(api)
                if case.mode == "precopy":
                    r["guest_pps"] = (p_end - p_start) / running_until_pause(t_start, t_command, r)
                elif case.mode == "hybrid" and r["switch_ms"]:
                    r["guest_pps_pre"] = (p_end - p_start) / max(1e-3, r["switch_ms"] / 1e3)
            except (ApiError, OSError, ConnectionError) as e:
                r["note"] = "guest counters after completion: %s" % e
        elif r["status"] == "timeout" and case.mode == "precopy":
            # Cancelled: the guest runs on here; its rate from the start to
            # now is what it kept during the migration.
            try:
                p_end = ringvm_guest_pages(api)
                r["guest_pps"] = (p_end - p_start) / max(1e-3, time.monotonic() - t_start)
            except (ApiError, OSError, ConnectionError) as e:
                r["note"] += "; guest counters after the cancel: %s" % e
        elif r["status"] != "timeout":
            r["status"] = last.get("state", "?")
            r["note"] = json.dumps(last.get("error"))
    return r


def ringvm_postcopy_result(r, case, last, dst_sock, dapi, conns, dst_samples, switched, t_start):
    """Post-copy figures: the source's switch-over and pages, the destination's
    faults, blocktime and fault service latency (migration.progress there)."""
    src_pc = last.get("postcopy") or {}
    r["switched"] = bool(src_pc.get("active")) or switched
    r["switch_ms"] = src_pc.get("switched_at_ms") if r["switched"] else None
    r["iterations"] = last.get("iteration_count", r["iterations"])
    dst = {}
    try:
        if dapi is None:
            dapi = RingvmApi(dst_sock)
            conns.append(dapi)
        # The source completes on the destination's ACK; give the destination's
        # snapshot a moment to say so.
        dst = wait_for(lambda: (lambda d: d if d.get("state") in ("completed", "failed") else None)(
            dapi.call("migration.progress")), 10, "the ringvm destination to complete")
        r["dst_done_ms"] = (time.monotonic() - t_start) * 1e3  # as seen here: +- one poll
    except (ApiError, OSError, ConnectionError, RuntimeError) as e:
        r["note"] += " destination progress: %s" % e
    dst_pc = dst.get("postcopy") or {}
    r["postcopy_raw"] = {"source": src_pc, "destination": dst_pc,
                         "source_memory": last.get("memory"), "destination_state": dst.get("state")}
    if r["switched"]:
        lat = dst_pc.get("latency_us") or {}
        r.update({"pc_requests": dst_pc.get("pages_requested"), "pc_faults": dst_pc.get("faults"),
                  "blocktime_ms": dst_pc.get("blocktime_total_ms"),
                  "vcpu_blocktime_ms": [v.get("blocktime_ms") for v in dst_pc.get("vcpus", [])],
                  "latency_p50_us": lat.get("p50"), "latency_p99_us": lat.get("p99"),
                  "latency_max_us": lat.get("max")})
    r["guest_pps_pc"] = rate_between(dst_samples)


# ---------------------------------------------------------------------------
# Summary

METRICS = (("converged", "converged"), ("total_ms", "total ms"), ("downtime_ms", "downtime ms"),
           ("iterations", "iterations"), ("final_throttle", "final throttle %"),
           ("bytes_sent", "MiB sent"), ("guest_pps", "guest pages/s in migration"),
           ("guest_pps_before", "guest pages/s before"))
# Post-copy and hybrid cells. iterations: ringvm's pre-copy passes before the
# switch; QEMU's dirty-sync-count (setup + one per pass + one at the switch).
# page requests: the destination's (ringvm) / the source's postcopy-requests
# (QEMU). blocktime: summed over vCPUs on both. Fault latency: ringvm only.
PC_METRICS = (("converged", "completed"), ("total_ms", "total ms"), ("downtime_ms", "downtime ms"),
              ("switch_ms", "switch at ms"), ("iterations", "iterations"), ("bytes_sent", "MiB sent"),
              ("pc_requests", "page requests"), ("blocktime_ms", "blocktime ms"),
              ("latency_p50_us", "fault p50 us"), ("latency_p99_us", "fault p99 us"),
              ("guest_pps_before", "guest pages/s before"), ("guest_pps_pre", "guest pages/s pre-copy"),
              ("guest_pps_pc", "guest pages/s post-copy"))


def median_of(results, metric):
    if metric == "converged":
        # Harness errors (a VMM that did not start, ...) are not migrations: left out.
        done = [r for r in results if r["status"] not in ("unsupported", "not-run", "error", "crashed")]
        return "%d/%d" % (sum(1 for r in done if r["converged"]), len(done)) if done else None
    values = [r[metric] for r in results if r["converged"] and r[metric] is not None]
    if not values:
        return None
    v = statistics.median(values)
    return v / MIB if metric == "bytes_sent" else v


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if abs(v) >= 1e5:
        return "%.0fk" % (v / 1e3) if abs(v) < 1e7 else "%.1fM" % (v / 1e6)
    if abs(v) >= 100 or float(v).is_integer():
        return "%.0f" % v
    return "%.2f" % v


def summarize(cases, results, markdown=False):
    """One table for the pre-copy cases, one for the post-copy / hybrid ones."""
    pre = [c for c in cases if c.mode == "precopy"]
    post = [c for c in cases if c.mode != "precopy"]
    parts = []
    if pre:
        parts.append(summarize_table(pre, results, METRICS, markdown))
    if post:
        parts.append(summarize_table(post, results, PC_METRICS, markdown))
    return "\n\n".join(parts)


def summarize_table(cases, results, metrics, markdown):
    lines = []
    if markdown:
        lines.append("| case | | " + " | ".join(label for _, label in metrics) + " |")
        lines.append("| --- | --- |" + " ---: |" * len(metrics))
    for case in cases:
        mine = [r for r in results if r["case"] == case.key()]
        rv = [r for r in mine if r["vmm"] == "ringvm"]
        qm = [r for r in mine if r["vmm"] == "qemu"]
        a_row, b_row, ratios = [], [], []
        for metric, label in metrics:
            a, b = median_of(rv, metric), median_of(qm, metric)
            ratio = "n/a"
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
                ratio = "%.2f" % (a / b)
            a_row.append(fmt(a))
            b_row.append(fmt(b))
            ratios.append(ratio if metric != "converged" else "")
        if markdown:
            lines.append("| %s | ringvm | %s |" % (case.key(), " | ".join(a_row)))
            lines.append("| | QEMU | %s |" % " | ".join(b_row))
            lines.append("| | ratio | %s |" % " | ".join(ratios))
            continue
        lines.append("== " + case.key())
        lines.append("  %-28s %14s %14s %12s" % ("metric", "ringvm", "QEMU", "ringvm/QEMU"))
        for (metric, label), a, b, ratio in zip(metrics, a_row, b_row, ratios):
            lines.append("  %-28s %14s %14s %12s" % (label, a, b, ratio or "-"))
        for n in sorted({"%s: %s" % (r["vmm"], r["note"]) for r in mine if r["note"]}):
            lines.append("  note " + n[:300])
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="ringvm build dir (default build/)")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--ringvm-source-args", default="",
                    help="extra options for the ringvm source, e.g. '--bitmap-sync-ms 60000'")
    ap.add_argument("--quick", action="store_true", help="small matrix: 512M guest, wss 256M, ring+bitmap, auto")
    ap.add_argument("--memory", type=parse_size, default=parse_size("1536M"))
    ap.add_argument("--wss", default="256M,1G")
    ap.add_argument("--rate", default="0", help="pages/s per vCPU, 0 = full speed (comma list)")
    ap.add_argument("--bandwidth", default="0,125", help="MiB/s caps, 0 = none (comma list)")
    ap.add_argument("--vcpus", default="1,2")
    ap.add_argument("--converge", default="none,auto,dirty-limit")
    ap.add_argument("--tracking", default="ring,bitmap")
    ap.add_argument("--transport", default="unix", help="unix,tcp")
    ap.add_argument("--mode", default="precopy",
                    help="precopy,postcopy,hybrid (comma list; post-copy cells: see the docstring)")
    ap.add_argument("--postcopy-after", type=parse_after, default=1,
                    help="hybrid: switch after N pre-copy passes (default 1) or Ns seconds")
    ap.add_argument("--qemu-preempt", choices=("auto", "on", "off"), default="auto",
                    help="QEMU capability postcopy-preempt: auto = when query-migrate-capabilities offers it")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=("both", "qemu", "ringvm"), default="both")
    ap.add_argument("--timeout", type=int, default=120, help="cancel a migration after this many s")
    ap.add_argument("--downtime-ms", type=int, default=300)
    ap.add_argument("--warmup", type=float, default=1.0,
                    help="s of workload after every vCPU's first pass over its working set, before measuring")
    ap.add_argument("--warm-timeout", type=int, default=None,
                    help="give up when the first pass takes longer than this (s; default 120, "
                         "with --guest linux 400: the boot counts)")
    ap.add_argument("--guest", choices=("builtin", "linux"), default="builtin",
                    help="builtin: build/guest/ringvm-guest.elf; linux: build/linux/vmlinux + initramfs.cpio")
    ap.add_argument("--workload", default="dirtier", help="dirtier,ledger (comma list)")
    ap.add_argument("--backing", choices=("default", "memfd", "anonymous", "hugepages"), default="default",
                    help="guest RAM of both VMMs: default (each its own: QEMU anonymous RAM, ringvm a "
                         "memfd, both advised MADV_HUGEPAGE), memfd (QEMU on a memfd too: one shmem "
                         "policy for both), anonymous (ringvm --ram anonymous: both on anonymous RAM, "
                         "one THP policy), hugepages (both on 2 MiB hugetlbfs pages)")
    ap.add_argument("--json", help="write every run's result to this file")
    ap.add_argument("--markdown", action="store_true", help="print the summary as a Markdown table")
    ap.add_argument("--keep-progress", help="directory to store each ringvm progress snapshot")
    ap.add_argument("--summarize", metavar="JSON", help="only print the summary of a saved --json file")
    args = ap.parse_args()
    if args.summarize:
        with open(args.summarize) as f:
            saved = json.load(f)
        # One run's --json, or several keyed by name (results-*.json).
        sets = {"": saved} if "cases" in saved else saved
        for name, one in sets.items():
            if name:
                print("\n## " + name)
            print(summarize([Case(**c) for c in one["cases"]], one["results"], args.markdown))
        return
    if args.quick:
        args.memory = parse_size("512M")
        args.wss, args.bandwidth, args.vcpus = "256M", "0", "1"
        args.converge, args.tracking, args.reps = "auto", "ring,bitmap", 2

    guest_kind = args.guest
    args.guest = os.path.join(args.build, "guest", "ringvm-guest.elf")
    args.linux_kernel = os.path.join(args.build, "linux", "vmlinux")
    args.linux_initrd = os.path.join(args.build, "linux", "initramfs.cpio")
    args.linux_warm_timeout = 400
    args.ringvm = os.path.join(args.build, "ringvm")
    args.ringctl = os.path.join(args.build, "ringctl")
    vmms = ["ringvm", "qemu"] if args.only == "both" else [args.only]
    if "qemu" in vmms and not shutil.which(args.qemu):
        sys.exit("run.py: %s not found: run `make bench-deps` (installs qemu-system-x86)" % args.qemu)
    needed = [args.guest] if guest_kind == "builtin" else [args.linux_kernel, args.linux_initrd]
    for path in needed:
        if not os.path.exists(path):
            sys.exit("run.py: %s missing: run `make BUILD=%s%s`" % (
                path, args.build, " linux-guest" if guest_kind == "linux" else ""))
    if "ringvm" in vmms:
        if not os.access(args.ringvm, os.X_OK):
            sys.exit("run.py: %s missing: build ringvm first" % args.ringvm)
        args.use_ringctl = os.access(args.ringctl, os.X_OK) and ringctl_has_migrate(args.ringctl)
        if not args.use_ringctl:
            log("run.py: this ringctl has no `migrate`: using the migration.start API command")
    if args.keep_progress:
        os.makedirs(args.keep_progress, exist_ok=True)

    def ints(text):
        return [int(x) for x in text.split(",") if x != ""]
    modes = args.mode.split(",")
    for m in modes:
        if m not in ("precopy", "postcopy", "hybrid"):
            sys.exit("run.py: --mode %r: precopy, postcopy or hybrid" % m)
    workloads = args.workload.split(",")
    for w in workloads:
        if w not in ("dirtier", "ledger"):
            sys.exit("run.py: --workload %r: dirtier or ledger" % w)
    cases = [Case(memory=args.memory, wss=parse_size(w), rate=rate, bandwidth=bw, vcpus=v, converge=c,
                  tracking=t, transport=tr, mode=m,
                  postcopy_after=args.postcopy_after if m == "hybrid" else None, workload=wl, guest=guest_kind)
             for wl, w, rate, bw, v, c, t, tr, m in itertools.product(
                 workloads, args.wss.split(","), ints(args.rate), ints(args.bandwidth), ints(args.vcpus),
                 args.converge.split(","), args.tracking.split(","), args.transport.split(","), modes)]
    for c in cases:
        if c.wss + (32 << 20) > c.memory:
            sys.exit("run.py: wss %s does not fit in a %s guest" % (size_arg(c.wss), size_arg(c.memory)))
        why = linux_check_fits(c) if c.guest == "linux" else None
        if why:
            sys.exit("run.py: " + why)

    host_pages = host_page_settings()
    log("run.py: backing %s; host: THP enabled %s, shmem_enabled %s, %s huge pages reserved, "
        "page_reporting_order %s" % (
            args.backing, host_pages["thp_enabled"], host_pages["thp_shmem_enabled"], host_pages["nr_hugepages"],
            host_pages["page_reporting_order"]))
    if host_pages["page_reporting_order"] not in (None, "") and int(host_pages["page_reporting_order"]) < 11:
        log("run.py: warning: free page reporting is on: guest RAM the VMMs allocate may be backed lazily by the "
            "hypervisor below this host, first touches then measure it (scripts/host-memory.sh prepare stops it)")
    if args.backing == "hugepages":
        # Source and destination are alive at once.
        needed = max(2 * c.memory // (2 << 20) for c in cases)
        free = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("HugePages_Free:"):
                    free = int(line.split()[1])
        if free < needed:
            sys.exit("run.py: --backing hugepages needs %d free 2 MiB huge pages, %d free "
                     "(as root: echo %d > /proc/sys/vm/nr_hugepages)" % (needed, free, needed))

    qemu_version = None
    if "qemu" in vmms:
        qemu_version = subprocess.run([args.qemu, "--version"], capture_output=True,
                                      text=True).stdout.splitlines()[0]
        log("run.py: " + qemu_version)
    results = []
    runners = {"ringvm": run_ringvm, "qemu": run_qemu}
    total = len(cases) * args.reps * len(vmms)
    n = 0
    with tempfile.TemporaryDirectory(prefix="vs-qemu-") as scratch:
        for case in cases:
            for rep in range(args.reps):
                for vmm in vmms:  # A B A B
                    n += 1
                    r = runners[vmm](args, case, scratch)
                    r["rep"] = rep
                    r["loadavg"] = os.getloadavg()[0]  # shared machines: how busy it was
                    results.append(r)
                    extra = ""
                    if case.mode != "precopy":
                        extra = " switch=%s ms requests=%s blocktime=%s ms p99=%s us pps_pc=%s" % (
                            fmt(r["switch_ms"]), fmt(r["pc_requests"]), fmt(r["blocktime_ms"]),
                            fmt(r["latency_p99_us"]), fmt(r["guest_pps_pc"]))
                    log("[%d/%d] %-6s %s rep %d: %s total=%s ms downtime=%s ms iters=%s pps=%s%s %s" % (
                        n, total, vmm, case.key(), rep, r["status"], fmt(r["total_ms"]),
                        fmt(r["downtime_ms"]), fmt(r["iterations"]), fmt(r["guest_pps"]), extra,
                        r["note"][:300]))
                    if args.json:
                        with open(args.json, "w") as f:
                            json.dump({"cases": [vars(c) for c in cases], "results": results,
                                       "ringvm_source_args": args.ringvm_source_args,
                                       "qemu_version": qemu_version, "guest": guest_kind,
                                       "linux_cmdline": {c.key(): linux_full_cmdline(c) for c in cases
                                                         if c.guest == "linux"},
                                       "qemu_preempt": args.qemu_preempt, "backing": args.backing,
                                       "host_pages": host_pages}, f, indent=1)
    print(summarize(cases, results, args.markdown))


if __name__ == "__main__":
    main()
