#!/usr/bin/env bash
# Post-copy between two network namespaces over a shaped link (issue 17's
# "fault service latency over the 1 Gbit/s netns link"): two ringvm
# processes, the source in NAME-src and the destination in NAME-dst
# (tests/netns/hosts.sh), a 2-vCPU guest running the full-rate dirtier on
# a working set, migrated with `ringctl migrate --mode MODE` over TCP. Prints
# the link's round trip (16 bytes over TCP, median of 500), then per run the
# total time, downtime, faults, the destination's fault service latency
# (p50/p99/max, fault read to page placed) and blocktime, each followed by
# a JSON line (--json: the JSON lines only).
#
#   scripts/postcopy-netns.sh [--rate RATE] [--memory SIZE] [--wss MIB]
#                             [--modes LIST] [--runs N] [--json]
#                             [--ringvm-args "ARGS"]
#
# Defaults: --rate 1gbit --memory 1536M --wss 1024 --modes postcopy,hybrid
# --runs 1. --ringvm-args passes ARGS to both ringvm processes (e.g.
# "--postcopy-fifo 1", "--postcopy-queue-budget 0"). Needs root
# (namespaces), /dev/kvm and userfaultfd; builds nothing (run `make`
# first). Cleans up its namespaces on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
rate=1gbit memory=1536M wss=1024 modes=postcopy,hybrid runs=1 json=0 ringvm_args=
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift 2 ;;
        --memory) memory=$2; shift 2 ;;
        --wss) wss=$2; shift 2 ;;
        --modes) modes=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --json) json=1; shift ;;
        --ringvm-args) ringvm_args=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "postcopy-netns.sh: unknown option $1 (--help lists them)" >&2; exit 2 ;;
    esac
done
[ -e /dev/kvm ] || { echo "postcopy-netns.sh: no /dev/kvm on this machine" >&2; exit 0; }
ringvm="$here/build/ringvm" ringctl="$here/build/ringctl" hosts="$here/tests/netns/hosts.sh"
if [ ! -x "$ringvm" ] || [ ! -x "$ringctl" ]; then
    echo "postcopy-netns.sh: run make first" >&2
    exit 2
fi

name=pcn$$
dir=$(mktemp -d)
cleanup() {
    if [ -n "${src_pid:-}" ]; then kill "$src_pid" 2>/dev/null || true; fi
    if [ -n "${dst_pid:-}" ]; then kill "$dst_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    "$hosts" down "$name" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
"$hosts" up "$name" --owner $$ --rate "$rate" >/dev/null
src_addr=$("$hosts" addr "$name" src)
dst_addr=$("$hosts" addr "$name" dst)
# The round trip as the fault service sees it: 16 bytes there and back
# over a TCP connection between the namespaces, 500 times (median).
"$hosts" exec "$name" dst python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7399)); s.listen(1); c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    b = c.recv(16)
    if not b: break
    c.sendall(b)
' "$dst_addr" &
echo_pid=$!
sleep 0.5
rtt=$("$hosts" exec "$name" src python3 -c '
import socket, sys, time
c = socket.create_connection((sys.argv[1], 7399)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
times = []
for _ in range(500):
    t = time.perf_counter(); c.sendall(b"x" * 16); n = 0
    while n < 16: n += len(c.recv(16 - n))
    times.append(time.perf_counter() - t)
times.sort(); print("%.3f" % (times[len(times) // 2] * 1e3))
' "$dst_addr")
wait "$echo_pid" 2>/dev/null || true
[ "$json" = 1 ] || echo "link $rate between $src_addr and $dst_addr, round trip (16 bytes over TCP, median of 500) ${rtt} ms"

wait_socket() {
    for _ in $(seq 1 300); do [ -S "$1" ] && return 0; sleep 0.1; done
    echo "postcopy-netns.sh: $1 never appeared" >&2; return 1
}

port=7400
for mode in ${modes//,/ }; do
    for run in $(seq 1 "$runs"); do
        port=$((port + 1))
        rm -f "$dir"/*.sock
        # shellcheck disable=SC2086  # --ringvm-args: split into words on purpose
        "$hosts" exec "$name" dst "$ringvm" $ringvm_args --memory "$memory" --vcpus 2 --api-socket "$dir/dst.sock" \
            --incoming "tcp:$dst_addr:$port" >"$dir/dst.out" 2>&1 &
        dst_pid=$!
        # shellcheck disable=SC2086
        "$hosts" exec "$name" src "$ringvm" $ringvm_args --memory "$memory" --vcpus 2 --api-socket "$dir/src.sock" \
            --workload "dirtier,wss=${wss}M" >"$dir/src.out" 2>&1 &
        src_pid=$!
        wait_socket "$dir/src.sock"
        wait_socket "$dir/dst.sock"
        sleep 2     # the dirtier reaches its full rate
        extra=""
        [ "$mode" = hybrid ] && extra="--postcopy-after auto"
        # shellcheck disable=SC2086
        "$ringctl" -s "$dir/src.sock" migrate "tcp:$dst_addr:$port" --mode "$mode" $extra --yes \
            --no-source-digest >"$dir/migrate.out" 2>&1 || {
            echo "postcopy-netns.sh: $mode run $run failed:" >&2
            cat "$dir/migrate.out" "$dir/src.out" "$dir/dst.out" >&2
            exit 1
        }
        wait "$src_pid" || true
        src_pid=
        "$ringctl" -s "$dir/dst.sock" --json progress >"$dir/dst.json"
        "$ringctl" -s "$dir/dst.sock" shutdown >/dev/null 2>&1 || true
        wait "$dst_pid" || true
        dst_pid=
        python3 - "$dir/dst.json" "$mode" "$run" "$rate" "$rtt" "$json" <<'EOF'
import json, sys
path, mode, run, rate, rtt, only_json = sys.argv[1:]
p = json.load(open(path))
pc = p.get("postcopy") or {}
lat = pc.get("latency_us") or {}
row = {"mode": mode, "run": int(run), "rate": rate, "rtt_ms": float(rtt or 0),
       "total_ms": p.get("total_ms"), "downtime_ms": p.get("downtime_ms"),
       "switched": pc.get("active"), "faults": pc.get("faults"),
       "pages_requested": pc.get("pages_requested"), "pages_received": pc.get("pages_received"),
       "latency_count": lat.get("count"), "latency_p50_us": lat.get("p50"), "latency_p99_us": lat.get("p99"), "latency_max_us": lat.get("max"),
       "blocktime_total_ms": pc.get("blocktime_total_ms"),
       "stream_window_bytes": pc.get("stream_window_bytes"),
       "discarded_early_pages": pc.get("discarded_early_pages"),
       "discarded_in_pause_pages": pc.get("discarded_in_pause_pages")}
if only_json != "1":
    print(f"{mode} run {run}: total {row['total_ms']} ms, downtime {row['downtime_ms']} ms, "
          f"faults {row['faults']}, fault service p50/p99/max {lat.get('p50')}/{lat.get('p99')}/{lat.get('max')} us, "
          f"blocktime {row['blocktime_total_ms']} ms")
print(json.dumps(row))
EOF
    done
done
