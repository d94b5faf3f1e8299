#!/usr/bin/env bash
# What is left of issues 13-17 is measurement on a host with /dev/kvm (the
# machines of several sessions had none). This is that measurement plan,
# one command: every run the open targets need, one after the other, each
# with its exact arguments, its stdout/stderr/JSON kept under --out, and a
# line per run (the runner of scripts/bench-smoke.sh). Hours in all; run it on
# an otherwise idle machine, then write the numbers into docs/benchmarks.md,
# docs/benchmarks-vs-qemu.md and docs/reliability.md.
#
#   scripts/measure-issues.sh [--build DIR] [--only NAME[,NAME...]] [--timeout S] [--out DIR]
#   scripts/measure-issues.sh --list        (the plan: name, issue, what it answers)
#
# --timeout bounds each run (default 5400 s). --out defaults to
# /tmp/ringvm-measure-DATE. A lock (/tmp/ringvm-measure.lock) keeps two plans
# from sharing the cores. Exit 0 when every run passed, 1 otherwise, 2 on
# bad usage or without /dev/kvm.
set -uo pipefail

build=build
only=""
timeout_s=5400
out=""
list=false
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --list) list=true; shift ;;
        --timeout)
            timeout_s="$2"; shift 2
            case "$timeout_s" in *[!0-9]*|''|0) echo "measure-issues: --timeout takes seconds, got '$timeout_s'" >&2; exit 2 ;; esac ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "measure-issues: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"

# name | what it answers (--list) | command (the runner's: exit-only: checks
# the exit status alone, JSON_FILE is where run.py writes its JSON)
plan=(
    "smoke|every benchmark runs at all, before hours are spent|exit-only:scripts/bench-smoke.sh --build $build"
    "i13-boot-bzimage|13: the done-when command with the LZ4 bzImage: LEDGER OK twice per vCPU, exit 0 on SIGTERM, how long|scripts/boot-time.sh --build $build --kernel bzImage --timeout 1800"
    "i13-boot-vmlinux|13: the same with the PVH vmlinux (0.97x QEMU's boot on 2026-12-02)|scripts/boot-time.sh --build $build --kernel vmlinux --timeout 1800"
    "i14-linux-vs-qemu|14: Linux guest vs QEMU, 256M/1G x uncapped/1024: total <= 0.7x QEMU's (1G was 1.17-1.71x)|python3 bench/vs-qemu/run.py --build $build --guest linux --workload dirtier,ledger --wss 256M,1G --bandwidth 0,1024 --vcpus 2 --converge none --tracking ring --transport unix --reps 3 --json JSON_FILE"
    "ram-backing|14: what guest RAM's page size costs a bulk pass on this host (first touches; no KVM needed): decides the backing runs of i14|$build/bench/ram-backing --json"
    "i14-linux-vs-qemu-memfd|14: the i14 matrix with QEMU's RAM on a memfd too: one THP policy for both (QEMU's default anonymous RAM gets transparent huge pages where ringvm's memfd may not)|python3 bench/vs-qemu/run.py --build $build --guest linux --workload dirtier,ledger --wss 256M,1G --bandwidth 0,1024 --vcpus 2 --converge none --tracking ring --transport unix --reps 3 --backing memfd --json JSON_FILE"
    "i14-linux-vs-qemu-anonymous|14: the i14 matrix with ringvm on anonymous RAM too (--ram anonymous): both VMMs under the anonymous THP policy, on which ram-backing measured the bulk pass 2.9x faster than a 4 KiB memfd|python3 bench/vs-qemu/run.py --build $build --guest linux --workload dirtier,ledger --wss 256M,1G --bandwidth 0,1024 --vcpus 2 --converge none --tracking ring --transport unix --reps 3 --backing anonymous --json JSON_FILE"
    "i14-migrate-memfd|14: ringvm alone, the bench/migrate quick matrix on memfd RAM: the baseline of the next run, right before it|$build/bench/migrate --quick --ram memfd --json"
    "i14-migrate-anonymous|14: the same on anonymous RAM (--ram anonymous): what it does with KVM, against the run before|$build/bench/migrate --quick --ram anonymous --json"
    "i14-linux-vs-qemu-hugepages|14: the 1G cells with both VMMs on 2 MiB huge pages (reserve first, as root: echo 1536 > /proc/sys/vm/nr_hugepages)|python3 bench/vs-qemu/run.py --build $build --guest linux --workload dirtier,ledger --wss 1G --bandwidth 0,1024 --vcpus 2 --converge none --tracking ring --transport unix --reps 3 --backing hugepages --json JSON_FILE"
    "i15-soak|15: >= 95 % of hops within downtime_ms, the worst <= 1.1x, 0 failures|exit-only:make --no-print-directory soak DURATION=600 BUILD=$build"
)
for cap in none 1024 125; do
    plan+=("i15-late-reset-256M-$cap|15 item 2: ring (late reset) vs ring-take vs bitmap guest pages/s, 256M over 2 vCPUs, cap $cap|$build/bench/migrate --json --vcpus 2 --wss 256M --caps $cap --ring-take --filter 256M/$cap/none")
done
for wss in 16M 64M 256M 1024M; do
    for cap in none 125; do
        plan+=("i15-wss-$wss-$cap|15 item 4: ring vs bitmap with $wss per vCPU, cap $cap, converge auto|$build/bench/migrate --json --wss $wss --caps $cap --filter $wss/$cap/auto")
    done
done
plan+=(
    "i15-vs-qemu-tracking|15: ringvm ring and bitmap vs QEMU bitmap, same run (ring >= QEMU bitmap, bitmap >= 0.9x)|python3 bench/vs-qemu/run.py --build $build --wss 256M --bandwidth 0,1024,125 --vcpus 2 --converge none --tracking ring,bitmap --reps 3 --json JSON_FILE"
    "i16-tls-channel|16: the TLS channel alone (cipher-bound on loopback)|$build/bench/tls-throughput --bytes 1G --reps 5 --json"
    "i16-migrate-tls|16: a whole migration over TLS vs plaintext: >= 0.75x, CPU-s/GiB per side|$build/bench/migrate-tls --json"
    "i16-migrate-tls-netns|16: the same between two ringvm processes in two network namespaces (veth, unshaped)|python3 bench/migrate-tls-netns.py --build $build --json"
    "i17-postcopy|17: 1 GiB at 125 MiB/s and uncapped: total <= 1.2x ideal, downtime <= 50 ms, fault p99; with --fifo 1|$build/bench/postcopy --fifo 1 --json"
    "i17-postcopy-quick-tcp|17: 256 MiB over TCP, with --fifo 1|$build/bench/postcopy --quick --transport tcp --fifo 1 --json"
    "i17-fault-service|17: the fault path beside two spinning threads, fair class vs SCHED_FIFO|$build/bench/fault-service --busy 2 --json"
    "i17-vs-qemu-postcopy|17: post-copy and hybrid vs QEMU 7.2's, 256M/1G at 125 MiB/s|python3 bench/vs-qemu/run.py --build $build --wss 256M,1G --bandwidth 125 --vcpus 2 --converge none --tracking ring --mode postcopy,hybrid --reps 2 --json JSON_FILE"
)
runs=()
for entry in "${plan[@]}"; do
    name="${entry%%|*}"
    rest="${entry#*|}"
    runs+=("$name|${rest#*|}")
done

if [ "$list" = true ]; then
    for entry in "${plan[@]}"; do
        rest="${entry#*|}"
        printf '%-26s %s\n    %s\n' "${entry%%|*}" "${rest%%|*}" "${rest#*|}"
    done
    exit 0
fi
[ -w /dev/kvm ] || { echo "measure-issues: /dev/kvm is not usable here: this plan is for a KVM host" >&2; exit 2; }
[ -d "$build/bench" ] || { echo "measure-issues: $build/bench not found (make BUILD=$build all linux-guest)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "measure-issues: python3 is needed (scripts/install-deps.sh --bench)" >&2; exit 2; }

exec 9>/tmp/ringvm-measure.lock
flock -n 9 || { echo "measure-issues: another plan holds /tmp/ringvm-measure.lock" >&2; exit 2; }
work="${out:-/tmp/ringvm-measure-$(date +%Y%m%d-%H%M)}"
mkdir -p "$work" || exit 2
work="$(cd "$work" && pwd)"
echo "measure-issues: outputs in $work ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo no git), $(date -u))"
label=measure-issues
# First touches of fresh RAM decide the bulk passes measured here; on a host
# that hands freed memory back to the hypervisor below (free page
# reporting), they would measure that hypervisor. Stop it for the plan,
# put it back after (scripts/host-memory.sh, docs/benchmarks.md "Host
# memory on these machines").
if "$root/scripts/host-memory.sh" prepare; then
    trap '"$root/scripts/host-memory.sh" restore' EXIT
else
    echo "measure-issues: free page reporting stays on: first-touch rates below include the hypervisor below this host" >&2
fi
# shellcheck source=scripts/lib/run-benches.sh
. "$root/scripts/lib/run-benches.sh"
run_benches
