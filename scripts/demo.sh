#!/usr/bin/env bash
# The README demo: a live migration of the built-in guest on this machine.
#
# Two ringvm processes: the source runs a full-rate dirtier on 2 vCPUs, the
# destination waits with --incoming. ringctl migrates the guest over a Unix
# socket with auto-converge, showing progress, then prints the summary and
# writes the HTML report of the migration.
set -euo pipefail
build=${1:-build}
ringvm="$build/ringvm"
ringctl="$build/ringctl"

if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "demo: /dev/kvm is not available to $(id -un); ringvm needs KVM" >&2
    if [ ! -e /dev/kvm ]; then
        # Verified on such a machine: the demo completes there in 2-3 min.
        echo "demo: this machine has no /dev/kvm at all; to watch the demo anyway, inside QEMU's emulation" >&2
        echo "      (slow, and its numbers say nothing about speed): scripts/nested-kvm.sh -- scripts/demo.sh $build" >&2
    fi
    exit 1
fi

work=$(mktemp -d /tmp/ringvm-demo.XXXXXX)
source_pid=""
destination_pid=""
cleanup() {
    [ -n "$source_pid" ] && kill "$source_pid" 2>/dev/null || true
    [ -n "$destination_pid" ] && kill "$destination_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

memory=1G
vcpus=2
workload="dirtier,wss=256M,pattern=seq"
echo "demo: source: $vcpus vCPUs, $memory guest, $workload (full speed), dirty ring tracking"
"$ringvm" --memory "$memory" --vcpus "$vcpus" --workload "$workload" --serial "file:$work/source.console" \
    --api-socket "$work/source.sock" --prealloc > "$work/source.log" 2>&1 &
source_pid=$!
echo "demo: destination: waiting on unix:$work/migrate.sock"
"$ringvm" --memory "$memory" --vcpus "$vcpus" --incoming "unix:$work/migrate.sock" \
    --serial "file:$work/destination.console" --api-socket "$work/destination.sock" \
    > "$work/destination.log" 2>&1 &
destination_pid=$!

# Wait for both API sockets (pre-allocating 1 GiB takes seconds on a busy
# machine), failing at once if either process died.
wait_for_api() {
    local name=$1 pid=$2 socket=$3 tries=0
    until "$ringctl" -s "$socket" info >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo: the $name ringvm exited before its API socket came up; its log:" >&2
            cat "$work/$name.log" >&2
            exit 1
        fi
        tries=$((tries + 1))
        if [ "$tries" -ge 600 ]; then
            echo "demo: the $name ringvm's API socket $socket did not come up within 60 s" >&2
            exit 1
        fi
        sleep 0.1
    done
}
wait_for_api source "$source_pid" "$work/source.sock"
wait_for_api destination "$destination_pid" "$work/destination.sock"
# Let the guest reach full speed first (and show it).
sleep 1
"$ringctl" -s "$work/source.sock" dirty-stats | head -4 || true

echo "demo: migrating (auto-converge, downtime limit 300 ms)"
status=0
"$ringctl" -s "$work/source.sock" migrate "unix:$work/migrate.sock" --converge auto --downtime-ms 300 \
    --keep-alive || status=$?
"$ringctl" -s "$work/source.sock" progress --json > "$work/progress.json" || true
echo
echo "demo: summary"
"$ringctl" -s "$work/source.sock" progress || true
if [ "$status" -eq 0 ]; then
    echo "demo: the guest now runs on the destination:"
    "$ringctl" -s "$work/destination.sock" info || true
    if "$ringctl" -s "$work/source.sock" report --from "$work/progress.json" --out "$work/report.html"; then
        echo "demo: report: $work/report.html"
    fi
fi
"$ringctl" -s "$work/source.sock" shutdown >/dev/null 2>&1 || true
"$ringctl" -s "$work/destination.sock" shutdown >/dev/null 2>&1 || true
wait "$source_pid" 2>/dev/null || true
wait "$destination_pid" 2>/dev/null || true
source_pid=""
destination_pid=""
echo "demo: logs and consoles in $work"
exit "$status"
