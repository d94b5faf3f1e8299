#!/usr/bin/env bash
# Regenerates tests/fuzz/migration-corpus/: real migration streams (source ->
# destination bytes: hello + frames) captured from small real migrations
# between two ringvm processes on this machine, through a recording proxy.
#
#   tests/fuzz/capture-corpus.sh [BUILD_DIR]
#
# Every capture is a 64 MiB, 1-vCPU guest (the configuration the fuzzer's
# local hello expects, tests/fuzz/migration_stream_fuzz.c) with a small working
# set: zero pages travel as flags, so the files stay small.
set -euo pipefail
build="${1:-build}"
out="$(cd "$(dirname "$0")" && pwd)/migration-corpus"
work="$(mktemp -d /tmp/ringvm-capture-XXXXXX)"
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

capture() {   # NAME WORKLOAD MIGRATION_ARGS_JSON
    local name="$1" workload="$2" args="$3"
    "$build/ringvm" --memory 64M --vcpus 1 --workload "$workload" --serial none \
        --api-socket "$work/src.sock" > "$work/src.log" 2>&1 & pids+=($!); local src=$!
    "$build/ringvm" --memory 64M --vcpus 1 --workload "$workload" --serial none \
        --incoming "unix:$work/dst.sock" > "$work/dst.log" 2>&1 & pids+=($!); local dst=$!
    python3 - "$work/proxy.sock" "$work/dst.sock" "$out/$name" <<'PY' & pids+=($!)
import os, socket, sys, threading, time
listen_path, dest_path, record = sys.argv[1:4]
server = socket.socket(socket.AF_UNIX); server.bind(listen_path); server.listen(1)
for _ in range(500):
    if os.path.exists(dest_path): break
    time.sleep(0.01)
client, _ = server.accept()
upstream = socket.socket(socket.AF_UNIX); upstream.connect(dest_path)
def pump(a, b, f):
    while True:
        data = a.recv(1 << 20)
        if not data: break
        if f: f.write(data)
        try: b.sendall(data)
        except OSError: break
    try: b.shutdown(socket.SHUT_WR)
    except OSError: pass
with open(record, "wb") as f:
    t = threading.Thread(target=pump, args=(upstream, client, None)); t.start()
    pump(client, upstream, f); t.join()
PY
    local proxy=$!
    for _ in $(seq 500); do [ -S "$work/src.sock" ] && [ -S "$work/proxy.sock" ] && break; sleep 0.01; done
    "$build/ringctl" -s "$work/src.sock" raw \
        "{\"cmd\":\"migration.start\",\"args\":{\"dest\":\"unix:$work/proxy.sock\",$args}}" > /dev/null
    wait "$src" || true
    wait "$proxy" || true
    "$build/ringctl" -s "$work/src.sock" shutdown > /dev/null 2>&1 || true
    kill "$dst" 2>/dev/null || true; wait "$dst" 2>/dev/null || true
    rm -f "$work"/*.sock
    echo "captured $name: $(stat -c %s "$out/$name") bytes"
}
# Downtime limits a slow host can meet too (make test-nested's TCG: hashing
# 64 MiB takes ~0.5 s, the switch-over's dry run a few hundred ms), so that
# every capture converges. dirtier-iters' working set is meant to take about
# its limit at 1 MiB/s, so that a fast host iterates under the 99 % throttle
# (without the digest, whose cost alone exceeds that limit under TCG). The
# 2026-12 corpus was captured under make test-nested, where the slow guest
# dirtied only 25 pages in pass 0 and the capture converged right after it
# (wss=256K iterated 5 times there, but made a 1.2 MB stream: too big for a
# seed, tests/test_migration_fuzz.c keeps them under 512 KiB).
only="${RINGVM_CAPTURE_ONLY:-}"   # one name: capture just that one
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }
want ledger-verify && capture ledger-verify "ledger,wss=128K,verify=1" '"verify_digest":true,"downtime_ms":5000'
want dirtier-plain && capture dirtier-plain "dirtier,wss=128K" '"verify_digest":false'
want dirtier-iters && capture dirtier-iters "dirtier,wss=80K" '"verify_digest":false,"max_bandwidth_mibs":1,"downtime_ms":100,"converge":"auto","throttle_initial":99,"throttle_increment":0'
want idle && capture idle "idle" '"verify_digest":true,"converge":"none","downtime_ms":5000'
exit 0
