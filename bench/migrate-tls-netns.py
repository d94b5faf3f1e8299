#!/usr/bin/env python3
"""bench/migrate-tls-netns.py: issue 16's TLS benchmark between two network namespaces.

The same migration over TLS 1.3 (pre-shared key and x509) and in plaintext,
same guest, same run, as issue 16 asks for it: two ringvm processes, the
source in one network namespace and the destination in another, joined by a
veth pair (tests/netns/hosts.sh; unshaped unless --rate), TCP, uncapped.
bench/migrate-tls runs the same matrix with both VMs in one process over
loopback; this one adds the veth hop and two processes.

Per working set and repetition three migrations, interleaved so the
machine's noise hits them alike (plaintext, tls-psk, tls-x509), each
between two fresh 1-vCPU ringvm processes. The guest writes its working set
once and idles (dirtier,count=pages), so a migration is the pipeline moving
that data; converge none, source_digest off (no hash of the source's RAM
after the ack, as bench/migrate-tls and bench/vs-qemu/run.py run it).

Reported per migration: total ms (start to the destination's ack), downtime,
MiB on the stream, MiB/s (bytes / total), iteration 0's MiB/s, the suite,
and each side's CPU-seconds per GiB of stream: the source's `migration` and
`mig-send` threads, the destination's main thread (it runs the receiver;
only its CPU from the start on counts) and `mig-populate`, from
/proc/PID/task/TID/schedstat read every 10 ms (a thread's last <10 ms
before it exits are lost; the same for every mode). Per working set: medians
and TLS / plaintext ratios against issue 16's target (throughput >= 0.75x).

Needs root (namespaces), /dev/kvm and openssl (x509 credentials: a
throwaway ECDSA P-256 CA, server certificate for localhost, client
certificate); builds nothing (run `make` first). Without /dev/kvm or root it
says so and exits 0. Exit 1 when a migration failed, 2 for bad options.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTS = os.path.join(HERE, "tests", "netns", "hosts.sh")
MODES = ("plaintext", "tls-psk", "tls-x509")
SOURCE_THREADS = ("migration", "mig-send")
DESTINATION_THREADS = ("ringvm", "mig-populate")
TARGET = 0.75


def mib_list(text):
    values = []
    for part in text.split(","):
        part = part.strip().upper()
        scale = 1024 if part.endswith("G") else 1
        number = part.rstrip("MG")
        if not number.isdigit() or not 1 <= int(number) * scale <= 1 << 20:
            raise argparse.ArgumentTypeError("--wss %r: whole MiB (e.g. 256M, 1G), 1M to 1T" % text)
        values.append(int(number) * scale)
    return values


def parse_args():
    parser = argparse.ArgumentParser(
        description="A live migration over TLS 1.3 (psk, x509) beside the same migration in plaintext, "
                    "between two ringvm processes in two network namespaces (issue 16).")
    parser.add_argument("--build", default=os.path.join(HERE, "build"), help="ringvm build dir (default build/)")
    parser.add_argument("--wss", type=mib_list, default=[256, 1024],
                        help="working sets the guest writes once, MiB or G (default 256M,1G)")
    parser.add_argument("--memory", default="1536M", help="guest RAM, as ringvm --memory takes it (default 1536M)")
    parser.add_argument("--reps", type=int, default=3, help="migrations per mode and working set (default 3)")
    parser.add_argument("--rate", default=None,
                        help="shape the veth link with tbf at RATE (e.g. 10gbit); default unshaped")
    parser.add_argument("--timeout", type=int, default=120, help="seconds a migration may take (default 120)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    args = parser.parse_args()
    if not 1 <= args.reps <= 15:
        parser.error("--reps: 1 to 15")
    return args


def skip(reason):
    print("migrate-tls-netns: SKIP: %s" % reason, file=sys.stderr)
    sys.exit(0)


def run(command, **kwargs):
    return subprocess.run(command, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


# ---- credentials -------------------------------------------------------------------

def make_credentials(directory):
    """keys.psk and an x509 directory with the layout ringvm reads (0600 keys)."""
    psk = os.path.join(directory, "keys.psk")
    with open(os.open(psk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write("ringvm:%s\n" % os.urandom(32).hex())
    x509 = os.path.join(directory, "x509")
    os.mkdir(x509, 0o700)

    def key(name):
        path = os.path.join(x509, name)
        run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path])
        os.chmod(path, 0o600)
        return path

    ca_key = key("ca-key.pem")
    ca_cert = os.path.join(x509, "ca-cert.pem")
    run(["openssl", "req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=ringvm bench CA", "-days", "2",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-out", ca_cert])
    for role, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        role_key = key("%s-key.pem" % role)
        request = os.path.join(x509, "%s.csr" % role)
        run(["openssl", "req", "-new", "-key", role_key, "-subj", "/CN=localhost", "-out", request])
        extensions = os.path.join(x509, "%s.ext" % role)
        with open(extensions, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=%s\nsubjectAltName=DNS:localhost\n" % usage)
        run(["openssl", "x509", "-req", "-in", request, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
             "-days", "2", "-extfile", extensions, "-out", os.path.join(x509, "%s-cert.pem" % role)])
    return psk, x509


# ---- CPU per side --------------------------------------------------------------------

def read_tasks(pid):
    """{tid: (comm, runtime_ns)} of a live process; {} once it is gone."""
    tasks = {}
    try:
        names = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return tasks
    for tid in names:
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                comm = f.read().strip()
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                runtime = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        tasks[int(tid)] = (comm, runtime)
    return tasks


class CpuSampler(threading.Thread):
    """CPU-seconds of the named threads of one process from now on.

    Owned by its thread until joined: baseline (runtime each thread had at
    the start, 0 for threads born later) and latest (the largest runtime
    seen per thread)."""

    def __init__(self, pid, names):
        super().__init__(daemon=True)
        self.pid, self.names = pid, names
        self.baseline = {tid: runtime for tid, (comm, runtime) in read_tasks(pid).items() if comm in names}
        self.latest = dict(self.baseline)
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            for tid, (comm, runtime) in read_tasks(self.pid).items():
                if comm in self.names and runtime > self.latest.get(tid, 0):
                    self.latest[tid] = runtime
            self.done.wait(0.01)    # a sampling period, not synchronization

    def seconds(self):
        return sum(runtime - self.baseline.get(tid, 0) for tid, runtime in self.latest.items()) / 1e9


# ---- one migration ----------------------------------------------------------------------

class Hosts:
    def __init__(self, rate):
        self.name = "tls%d" % os.getpid()
        command = [HOSTS, "up", self.name, "--owner", str(os.getpid())]
        if rate:
            command += ["--rate", rate]
        run(command)
        self.source = run([HOSTS, "addr", self.name, "src"]).stdout.strip()
        self.destination = run([HOSTS, "addr", self.name, "dst"]).stdout.strip()

    def spawn(self, side, command, log):
        return subprocess.Popen([HOSTS, "exec", self.name, side] + command, stdout=log, stderr=subprocess.STDOUT)

    def down(self):
        subprocess.run([HOSTS, "down", self.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ringctl(build, socket, *command, timeout=60):
    result = subprocess.run([os.path.join(build, "ringctl"), "-s", socket, "--json"] + list(command),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError("ringctl %s: exit %d: %s" % (command[0], result.returncode, result.stderr.strip()))
    return json.loads(result.stdout) if result.stdout.strip() else {}


def wait_for(what, predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)    # polling a condition with a deadline
    raise RuntimeError("%s within %d s" % (what, timeout_s))


def run_one(args, hosts, work, wss_mib, mode, port, psk, x509):
    """One migration: a dict of the measurements, or one with 'error'."""
    build = args.build
    source_socket, destination_socket = os.path.join(work, "src.sock"), os.path.join(work, "dst.sock")
    for path in (source_socket, destination_socket):
        if os.path.exists(path):
            os.unlink(path)
    address = "tcp:%s:%d" % (hosts.destination, port)
    tls_destination, tls_source = [], []
    if mode == "tls-psk":
        tls_destination, tls_source = ["--tls-psk", psk], ["--tls-psk", psk]
    elif mode == "tls-x509":
        tls_destination = ["--tls-creds", x509]
        tls_source = ["--tls-creds", x509, "--tls-server-name", "localhost"]
    ringvm = os.path.join(build, "ringvm")
    logs = [open(os.path.join(work, name), "w") for name in ("dst.out", "src.out")]
    destination = hosts.spawn("dst", [ringvm, "--memory", args.memory, "--vcpus", "1", "--api-socket",
                                      destination_socket, "--incoming", address] + tls_destination, logs[0])
    source = hosts.spawn("src", [ringvm, "--memory", args.memory, "--vcpus", "1", "--api-socket", source_socket,
                                 "--workload", "dirtier,wss=%dM,count=%d" % (wss_mib, wss_mib * 256)], logs[1])
    row = {"wss_mib": wss_mib, "mode": mode}
    samplers = []
    try:
        wait_for("the API sockets did not appear",
                 lambda: os.path.exists(source_socket) and os.path.exists(destination_socket), 30)
        wait_for("the guest did not write its working set",
                 lambda: all(v.get("passes", 0) >= 1
                             for v in ringctl(build, source_socket, "guest-stats").get("vcpus", [{}])), 120)
        samplers = [CpuSampler(source.pid, SOURCE_THREADS), CpuSampler(destination.pid, DESTINATION_THREADS)]
        for sampler in samplers:
            sampler.start()
        migrate = subprocess.run([os.path.join(build, "ringctl"), "-s", source_socket, "migrate", address,
                                  "--converge", "none", "--no-source-digest", "--keep-alive",
                                  "--timeout", str(args.timeout)] + tls_source,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 timeout=args.timeout + 60)
        for sampler in samplers:
            sampler.done.set()
            sampler.join()
        progress = ringctl(build, source_socket, "progress")
        if migrate.returncode != 0 or progress.get("state") != "completed":
            error = progress.get("error") or {}
            row["error"] = "%s: %s %s" % (progress.get("state"), error.get("code"), error.get("message")) \
                if error else "ringctl migrate exit %d: %s" % (migrate.returncode, migrate.stderr.strip())
            return row
        transferred = progress["memory"]["transferred"]
        gib = transferred / float(1 << 30)
        iterations = progress.get("iterations") or [{}]
        row.update({
            "total_ms": progress["total_ms"], "downtime_ms": progress["downtime_ms"],
            "mib": transferred / 1048576.0,
            "mibs": transferred / 1048576.0 / (progress["total_ms"] / 1000.0) if progress["total_ms"] else 0.0,
            "iteration0_mibs": iterations[0].get("bandwidth_mibs", 0.0),
            "suite": (progress.get("tls") or {}).get("suite") or "none",
            "source_cpu_s_per_gib": samplers[0].seconds() / gib,
            "destination_cpu_s_per_gib": samplers[1].seconds() / gib,
        })
        return row
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as e:
        row["error"] = str(e)
        return row
    finally:
        for sampler in samplers:
            sampler.done.set()
        for socket, process in ((source_socket, source), (destination_socket, destination)):
            try:
                ringctl(build, socket, "shutdown", timeout=10)
            except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError):
                pass
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
        if "error" in row:
            for name in ("src.out", "dst.out"):
                with open(os.path.join(work, name)) as f:
                    row.setdefault("logs", {})[name] = f.read()[-2000:]


# ---- summary -------------------------------------------------------------------------

def summarise(rows, wss_mib):
    cells = {}
    for mode in MODES:
        done = [r for r in rows if r["wss_mib"] == wss_mib and r["mode"] == mode and "error" not in r]
        if not done:
            continue
        cells[mode] = {key: statistics.median(r[key] for r in done)
                       for key in ("mibs", "total_ms", "source_cpu_s_per_gib", "destination_cpu_s_per_gib")}
        cells[mode]["completed"] = len(done)
    plain = cells.get("plaintext")
    for mode, cell in cells.items():
        if mode != "plaintext" and plain:
            cell["mibs_over_plaintext"] = cell["mibs"] / plain["mibs"]
            cell["total_over_plaintext"] = cell["total_ms"] / plain["total_ms"]
            cell["target_met"] = cell["mibs_over_plaintext"] >= TARGET
    return cells


def main():
    args = parse_args()
    if not os.path.exists("/dev/kvm"):
        skip("no /dev/kvm on this machine")
    if os.geteuid() != 0:
        skip("needs root (network namespaces)")
    if shutil.which("openssl") is None:
        skip("no openssl (x509 credentials)")
    for tool in ("ringvm", "ringctl"):
        if not os.access(os.path.join(args.build, tool), os.X_OK):
            print("migrate-tls-netns: %s/%s missing: run make first" % (args.build, tool), file=sys.stderr)
            return 2
    work = tempfile.mkdtemp(prefix="ringvm-tls-netns.")
    os.chmod(work, 0o700)
    hosts = None
    rows = []
    try:
        psk, x509 = make_credentials(work)
        hosts = Hosts(args.rate)
        if not args.json:
            print("veth link %s between %s and %s" % (args.rate or "unshaped", hosts.source, hosts.destination))
            print("%-6s %-10s %4s | %9s %8s %9s %8s %8s | %7s %7s | %s" % (
                "wss", "mode", "rep", "total_ms", "down_ms", "MiB", "MiB/s", "iter0", "src_cpu", "dst_cpu",
                "suite (CPU: seconds per GiB of stream)"))
        port = 7500
        for wss_mib in args.wss:
            for rep in range(1, args.reps + 1):
                for mode in MODES:
                    port += 1
                    row = run_one(args, hosts, work, wss_mib, mode, port, psk, x509)
                    row["rep"] = rep
                    rows.append(row)
                    if "error" in row:
                        print("migrate-tls-netns: %dM %s run %d: %s" % (wss_mib, mode, rep, row["error"]),
                              file=sys.stderr)
                        for name, text in row.get("logs", {}).items():
                            print("--- %s\n%s" % (name, text), file=sys.stderr)
                    elif not args.json:
                        print("%-6s %-10s %4d | %9d %8d %9.1f %8.1f %8.1f | %7.3f %7.3f | %s" % (
                            "%dM" % wss_mib, mode, rep, row["total_ms"], row["downtime_ms"], row["mib"],
                            row["mibs"], row["iteration0_mibs"], row["source_cpu_s_per_gib"],
                            row["destination_cpu_s_per_gib"], row["suite"]))
                    sys.stdout.flush()
            if not args.json:
                cells = summarise(rows, wss_mib)
                for mode, cell in cells.items():
                    if mode == "plaintext" or "plaintext" not in cells:
                        continue
                    plain = cells["plaintext"]
                    print("  %dM %s: medians of %d: %.1f MiB/s = %.2fx plaintext's (target >= %.2f: %s), total "
                          "%.2fx; CPU-s/GiB source %.3f vs %.3f, destination %.3f vs %.3f" % (
                              wss_mib, mode, cell["completed"], cell["mibs"], cell["mibs_over_plaintext"], TARGET,
                              "met" if cell["target_met"] else "NOT met", cell["total_over_plaintext"],
                              cell["source_cpu_s_per_gib"], plain["source_cpu_s_per_gib"],
                              cell["destination_cpu_s_per_gib"], plain["destination_cpu_s_per_gib"]))
    finally:
        if hosts is not None:
            hosts.down()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"link": args.rate or "unshaped", "memory": args.memory, "reps": args.reps,
                          "runs": [{k: v for k, v in r.items() if k != "logs"} for r in rows],
                          "cells": {"%dM" % w: summarise(rows, w) for w in args.wss}}, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
