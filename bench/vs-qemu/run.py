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
then migration.progress every 100 ms. Guest pages/s during the migration
come from the guest's own counters: the stats page read with QMP pmemsave
(address from the guest banner) under QEMU, vm.guest-stats under ringvm.
Measuring starts once every vCPU has finished one pass over its working set
(host first-touch faults over) plus --warmup s. A run that has not converged
after --timeout seconds (120) is cancelled and counted as not converged; a
harness error (a VMM that did not start) is reported and left out of the
medians. Only localhost is used.
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
    FIELDS = ("memory", "wss", "rate", "bandwidth", "vcpus", "converge", "tracking", "transport")

    def __init__(self, **kw):
        for f in self.FIELDS:
            setattr(self, f, kw[f])

    def key(self):
        return "wss=%s rate=%s bw=%s vcpus=%d converge=%s %s %s" % (
            size_arg(self.wss), self.rate or "max", self.bandwidth or "none", self.vcpus,
            self.converge, self.tracking, self.transport)

    def workload_words(self):
        return ["workload=dirtier", "wss=%s" % size_arg(self.wss), "rate=%d" % self.rate,
                "pattern=seq", "write=8"]


def dirty_limit_mbs(case):
    """Per-vCPU dirty limit for QEMU's set-vcpu-dirty-limit (MB/s): the total
    fits half the bandwidth cap (or half of ~1 GB/s when uncapped)."""
    cap = case.bandwidth or 1000
    return max(1, int(cap * 0.5 / case.vcpus))


def empty_result(vmm, case):
    return {"vmm": vmm, "case": case.key(), "converged": False, "status": "not-run",
            "total_ms": None, "downtime_ms": None, "setup_ms": None, "iterations": None,
            "final_throttle": None, "bytes_sent": None, "guest_pps": None,
            "guest_pps_before": None, "mbps": None, "dirty_rate_pps": None, "note": ""}


# ---------------------------------------------------------------------------
# QEMU

def qemu_argv(args, case, elf, qmp_path, serial_path, incoming=None):
    accel = "kvm,dirty-ring-size=4096" if case.tracking == "ring" else "kvm"
    argv = [args.qemu, "-accel", accel,
            "-machine", "microvm,pit=off,pic=off",  # see HOST-KVM.md: dirty-limit needs no PIT
            "-cpu", "qemu64,-cx16,+xsaveerptr",
            "-m", size_arg(case.memory), "-smp", str(case.vcpus),
            "-kernel", elf, "-append", " ".join(["vcpus=%d" % case.vcpus] + case.workload_words()),
            "-display", "none", "-monitor", "none", "-serial", "file:" + serial_path,
            "-qmp", "unix:%s,server=on,wait=off" % qmp_path]
    if incoming:
        argv += ["-incoming", incoming]
    return argv


def qemu_guest_pages(qmp, stats_gpa, vcpus, scratch):
    path = os.path.join(scratch, "stats.bin")
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


def wait_warm(read_passes, args):
    """Until every vCPU has written its whole region once (first-touch
    faults on the host are over), then --warmup seconds more."""
    deadline = time.monotonic() + args.warm_timeout
    while time.monotonic() < deadline:
        if min(read_passes()) >= 1:
            break
        time.sleep(0.2)
    else:
        raise RuntimeError("the guest did not finish a first pass over its working set in %d s" % args.warm_timeout)
    time.sleep(args.warmup)


@contextlib.contextmanager
def recorded_run(r, procs, conns):
    """One VMM's run of a case: a failure is recorded in r (status "error",
    the exception and the tail of each process's log) and the benchmark goes
    on; the connections and processes opened meanwhile end either way."""
    try:
        yield
    except Exception as e:
        r["status"] = "error"
        r["note"] = "%s; %s" % (e, " | ".join(p.tail(300).strip() for p in procs))
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
    with recorded_run(r, procs, conns):
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
        stats_gpa = wait_for(banner, 30, "the guest banner on the QEMU serial")
        wait_warm(lambda: qemu_guest_passes(qs, stats_gpa, case.vcpus, scratch), args)
        p0, t0 = qemu_guest_pages(qs, stats_gpa, case.vcpus, scratch), time.monotonic()
        time.sleep(1.0)
        p1, t1 = qemu_guest_pages(qs, stats_gpa, case.vcpus, scratch), time.monotonic()
        r["guest_pps_before"] = (p1 - p0) / (t1 - t0)

        caps = [{"capability": "auto-converge", "state": case.converge == "auto"}]
        qs.cmd("migrate-set-capabilities", capabilities=caps)
        bw = case.bandwidth * MIB if case.bandwidth else 100 * (1 << 30)  # QEMU's default is 128 MiB/s
        qs.cmd("migrate-set-parameters", **{"downtime-limit": args.downtime_ms, "max-bandwidth": bw,
                                            "cpu-throttle-initial": 20, "cpu-throttle-increment": 10,
                                            "max-cpu-throttle": 99})
        if case.converge == "dirty-limit":
            try:
                qs.cmd("set-vcpu-dirty-limit", **{"dirty-rate": dirty_limit_mbs(case)})
                r["note"] = "dirty limit %d MB/s per vCPU" % dirty_limit_mbs(case)
            except QmpError as e:
                r["status"] = "unsupported"
                r["note"] = str(e)
                return r

        p_start, t_start = qemu_guest_pages(qs, stats_gpa, case.vcpus, scratch), time.monotonic()
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
            running_s = max(1e-3, (t_end - t_start) - (r["downtime_ms"] or 0) / 1000.0)
            r["guest_pps"] = (p_end - p_start) / running_s
            dst_status = wait_for(lambda: qd.cmd("query-status").get("status") == "running", 10,
                                  "the QEMU destination to run")
            if not dst_status:
                r["note"] += " destination not running"
        elif r["status"] != "timeout":
            r["status"] = last.get("status", "?")
            r["note"] = last.get("error-desc", "")
        if case.converge == "dirty-limit":
            try:
                qs.cmd("cancel-vcpu-dirty-limit")
            except QmpError:
                pass
    return r


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
    common = ["--memory", size_arg(case.memory), "--vcpus", str(case.vcpus), "--serial", "none"]
    workload = "dirtier,wss=%s,rate=%d,pattern=seq,write=8" % (size_arg(case.wss), case.rate)
    procs, conns = [], []
    remove_stale(src_sock, dst_sock, dest[5:] if dest.startswith("unix:") else None)
    with recorded_run(r, procs, conns):
        dst = Proc([args.ringvm, "--incoming", dest, "--api-socket", dst_sock] + common,
                   os.path.join(scratch, "rdst.log"))
        procs.append(dst)
        src = Proc([args.ringvm, "--workload", workload, "--dirty-log", case.tracking,
                    "--api-socket", src_sock] + common + shlex.split(args.ringvm_source_args),
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
        wait_warm(lambda: [v.get("passes", 0) for v in api.call("vm.guest-stats").get("vcpus", [])] or [0], args)
        p0, t0 = ringvm_guest_pages(api), time.monotonic()
        time.sleep(1.0)
        p1, t1 = ringvm_guest_pages(api), time.monotonic()
        r["guest_pps_before"] = (p1 - p0) / (t1 - t0)

        p_start, t_start = ringvm_guest_pages(api), time.monotonic()
        if args.use_ringctl:
            argv = [args.ringctl, "-s", src_sock, "--json", "migrate", "--dispatch",
                    "--downtime-ms", str(args.downtime_ms), "--converge", case.converge,
                    "--max-bandwidth", str(case.bandwidth), "--keep-alive",
                    "--timeout", str(args.timeout + 30), dest]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                message = (out.stderr or out.stdout).strip()
                if "invalid-argument" in message:  # e.g. dirty-limit without the dirty ring
                    r["status"] = "unsupported"
                    r["note"] = message
                    return r
                raise RuntimeError("ringctl migrate: " + message)
        else:
            api.call("migration.start", {"dest": dest, "downtime_ms": args.downtime_ms,
                                         "converge": case.converge,
                                         "max_bandwidth_mibs": case.bandwidth,
                                         "timeout_s": args.timeout + 30, "keep_alive": True})
        last = {}
        throttle = 0
        while True:
            try:
                last = api.call("migration.progress")
            except ApiError as e:
                if e.code == "no-migration":
                    time.sleep(POLL_S)
                    continue
                raise
            if last.get("state") in ("completed", "failed", "cancelled"):
                break
            throttle = last.get("throttle_percent", throttle)  # while active: the throttle applied
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
        if last.get("state") == "completed":
            r.update({"status": "completed", "converged": True, "total_ms": last.get("total_ms"),
                      "downtime_ms": last.get("downtime_ms"), "setup_ms": last.get("setup_ms")})
            try:  # keep_alive: the source answers in state migrated, counters frozen at the pause
                p_end = ringvm_guest_pages(api)
                running_s = max(1e-3, (t_end - t_start) - (r["downtime_ms"] or 0) / 1000.0)
                r["guest_pps"] = (p_end - p_start) / running_s
            except (ApiError, OSError, ConnectionError) as e:
                r["note"] = "guest counters after completion: %s" % e
        elif r["status"] != "timeout":
            r["status"] = last.get("state", "?")
            r["note"] = json.dumps(last.get("error"))
    return r


# ---------------------------------------------------------------------------
# Summary

METRICS = (("converged", "converged"), ("total_ms", "total ms"), ("downtime_ms", "downtime ms"),
           ("iterations", "iterations"), ("final_throttle", "final throttle %"),
           ("bytes_sent", "MiB sent"), ("guest_pps", "guest pages/s in migration"),
           ("guest_pps_before", "guest pages/s before"))


def median_of(results, metric):
    if metric == "converged":
        # Harness errors (a VMM that did not start, ...) are not migrations: left out.
        done = [r for r in results if r["status"] not in ("unsupported", "not-run", "error")]
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
    lines = []
    if markdown:
        lines.append("| case | | " + " | ".join(label for _, label in METRICS) + " |")
        lines.append("| --- | --- |" + " ---: |" * len(METRICS))
    for case in cases:
        mine = [r for r in results if r["case"] == case.key()]
        rv = [r for r in mine if r["vmm"] == "ringvm"]
        qm = [r for r in mine if r["vmm"] == "qemu"]
        a_row, b_row, ratios = [], [], []
        for metric, label in METRICS:
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
        for (metric, label), a, b, ratio in zip(METRICS, a_row, b_row, ratios):
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
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=("both", "qemu", "ringvm"), default="both")
    ap.add_argument("--timeout", type=int, default=120, help="cancel a migration after this many s")
    ap.add_argument("--downtime-ms", type=int, default=300)
    ap.add_argument("--warmup", type=float, default=1.0,
                    help="s of workload after every vCPU's first pass over its working set, before measuring")
    ap.add_argument("--warm-timeout", type=int, default=120,
                    help="give up when the first pass takes longer than this (s)")
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

    args.guest = os.path.join(args.build, "guest", "ringvm-guest.elf")
    args.ringvm = os.path.join(args.build, "ringvm")
    args.ringctl = os.path.join(args.build, "ringctl")
    vmms = ["ringvm", "qemu"] if args.only == "both" else [args.only]
    if "qemu" in vmms and not shutil.which(args.qemu):
        sys.exit("run.py: %s not found: run `make bench-deps` (installs qemu-system-x86)" % args.qemu)
    if not os.path.exists(args.guest):
        sys.exit("run.py: %s missing: run `make BUILD=%s`" % (args.guest, args.build))
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
    cases = [Case(memory=args.memory, wss=parse_size(w), rate=rate, bandwidth=bw, vcpus=v, converge=c,
                  tracking=t, transport=tr)
             for w, rate, bw, v, c, t, tr in itertools.product(
                 args.wss.split(","), ints(args.rate), ints(args.bandwidth), ints(args.vcpus),
                 args.converge.split(","), args.tracking.split(","), args.transport.split(","))]
    for c in cases:
        if c.wss + (32 << 20) > c.memory:
            sys.exit("run.py: wss %s does not fit in a %s guest" % (size_arg(c.wss), size_arg(c.memory)))

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
                    results.append(r)
                    log("[%d/%d] %-6s %s rep %d: %s total=%s ms downtime=%s ms iters=%s pps=%s %s" % (
                        n, total, vmm, case.key(), rep, r["status"], fmt(r["total_ms"]),
                        fmt(r["downtime_ms"]), fmt(r["iterations"]), fmt(r["guest_pps"]), r["note"][:200]))
                    if args.json:
                        with open(args.json, "w") as f:
                            json.dump({"cases": [vars(c) for c in cases], "results": results,
                                       "ringvm_source_args": args.ringvm_source_args}, f, indent=1)
    print(summarize(cases, results, args.markdown))


if __name__ == "__main__":
    main()
