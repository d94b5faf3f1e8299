#!/usr/bin/env bash
# Runs every benchmark once in its smallest configuration and checks that it
# ends with exit 0 and prints one valid JSON document: that the benchmarks
# still work, not what they measure (a run this small measures nothing).
# For a session that is about to spend hours measuring on a KVM host, and
# under scripts/nested-kvm.sh where there is none:
#
#   scripts/bench-smoke.sh [--build DIR] [--only NAME[,NAME...]] [--timeout S] [--out DIR]
#   scripts/nested-kvm.sh --timeout 3600 -- scripts/bench-smoke.sh --build build-nested --out DIR
#
# Each run's stdout and stderr are kept in --out DIR (default: a new scratch
# directory under /tmp, which inside nested-kvm.sh is the VM's own), and a
# line per run says what its JSON holds (top-level keys, array lengths), so
# a benchmark that ran nothing (an empty list of cells) shows.
# Exit 0 when every run passed, 1 otherwise, 2 on bad usage.
set -uo pipefail

build=build
only=""
timeout_s=900
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --timeout)
            timeout_s="$2"; shift 2
            case "$timeout_s" in *[!0-9]*|''|0) echo "bench-smoke: --timeout takes seconds, got '$timeout_s'" >&2; exit 2 ;; esac ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-smoke: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ -d "$build/bench" ] || { echo "bench-smoke: $build/bench not found (make BUILD=$build all)" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
command -v python3 >/dev/null || { echo "bench-smoke: python3 is needed to check the JSON" >&2; exit 2; }

# name | command (run from the repository root; --json makes stdout JSON, or
# the file named by JSON_FILE for run.py)
runs=(
    "guest-rate|$build/bench/guest-rate --seconds 1 --wss 16M --json"
    "harvest|$build/bench/harvest --quick --reps 1 --seconds 1 --json"
    "api-latency|$build/bench/api-latency --requests 200 --memory 64M --wss 16M --json"
    "bpf-overhead|$build/bench/bpf-overhead --seconds 1 --rounds 1 --wss 16M --json"
    "migrate|$build/bench/migrate --caps 125 --wss 16M --memory 128M --filter 16M/125/none --json"
    "migrate-reaction|$build/bench/migrate --reaction 1 --json"
    "migrate-tls|$build/bench/migrate-tls --wss 16M --memory 64M --reps 1 --json"
    "postcopy|$build/bench/postcopy --wss 32M --memory 128M --caps 125 --json"
    "handover|$build/bench/handover --sizes 256M --vcpus 1 --runs 1 --json"
    "fault-service|$build/bench/fault-service --memory 64M --faults 200 --transport unix --json"
    "tls-throughput|$build/bench/tls-throughput --bytes 16M --reps 1 --json"
    "ram-backing|$build/bench/ram-backing --memory 64M --reps 1 --json"
    "boot-time|scripts/boot-time.sh --build $build --vcpus 1 --memory 256M --cmdline ringvm.workload=ledger,wss=8M,verify=1"
    "vs-qemu|python3 bench/vs-qemu/run.py --build $build --memory 256M --wss 16M --bandwidth 125 --vcpus 1 --converge none --tracking ring --reps 1 --warmup 0.5 --json JSON_FILE"
)

if [ -n "$out" ]; then
    mkdir -p "$out" || exit 2
    work="$(cd "$out" && pwd)"
else
    work="$(mktemp -d /tmp/ringvm-bench-smoke-XXXXXX)"
fi
echo "bench-smoke: outputs in $work"
label=bench-smoke
# shellcheck source=scripts/lib/run-benches.sh
. "$root/scripts/lib/run-benches.sh"
run_benches
