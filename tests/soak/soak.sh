#!/usr/bin/env bash
# Ping-pong soak: live-migrates two guests back and forth between two emulated
# hosts (network namespaces joined by a veth pair, tests/netns/hosts.sh) for a
# given duration and checks every hop.
#
#   tests/soak/soak.sh [--duration SECONDS] [--build DIR] [--rate RATE] [--summary FILE]
#                      [--linux DIR] [--downtime-ms N]
#
# Guests: the ledger (writes, then verifies every second: prints LEDGER OK or
# MISMATCH) and the full-rate dirtier; with --linux DIR (make linux-guest's
# output: vmlinux, initramfs.cpio) also a Linux guest on 2 vCPUs running the
# ledger in user space, its destinations started with only --memory and
# --vcpus (the kernel travels in guest RAM). Hops alternate between the guests;
# each guest changes host at every one of its hops (src->dst, dst->src, ...);
# convergence alternates between auto-converge and dirty-limit.
# After every hop: the source's migration.progress says completed, the digests
# of guest RAM match (memory_digest_source == memory_digest_destination,
# verify_digest on), the source exits 0, the destination runs the guest (for
# the ledger: a new LEDGER OK, no MISMATCH ever).
# --downtime-ms: every migration's downtime_ms (default 300, migration.start's).
# Prints one line per hop (with the expected downtime's parts) and a summary:
# hops, failures, max, p99 and p50 downtime, and how many hops (and of them
# the dirtier's) stayed within the limit.
# Exit 0 when no hop failed. Needs root (namespaces).
set -uo pipefail

duration=600
build=build
rate=""
summary=""
linux=""
downtime_ms=300
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        --build) build="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --summary) summary="$2"; shift 2 ;;
        --linux) linux="$2"; shift 2 ;;
        --downtime-ms) downtime_ms="$2"; shift 2 ;;
        *) echo "soak.sh: unknown option '$1'" >&2; exit 2 ;;
    esac
done
here="$(cd "$(dirname "$0")" && pwd)"
hosts="$here/../netns/hosts.sh"
ringvm="$build/ringvm"
ringctl="$build/ringctl"
[ "$(id -u)" = 0 ] || { echo "soak.sh: needs root (network namespaces)" >&2; exit 2; }
[ -x "$ringvm" ] && [ -x "$ringctl" ] || { echo "soak.sh: $ringvm / $ringctl not built (make BUILD=$build)" >&2; exit 2; }
if [ -n "$linux" ]; then
    [ -f "$linux/vmlinux" ] && [ -f "$linux/initramfs.cpio" ] ||
        { echo "soak.sh: --linux $linux: no vmlinux and initramfs.cpio there (make linux-guest)" >&2; exit 2; }
fi

name="soak$$"
name="${name:0:8}"
work="$(mktemp -d /tmp/ringvm-soak-XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null; done
    wait 2>/dev/null
    "$hosts" down "$name"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "$rate" ]; then "$hosts" up "$name" --rate "$rate"; else "$hosts" up "$name"; fi
addr_src="$("$hosts" addr "$name" src)"
addr_dst="$("$hosts" addr "$name" dst)"

declare -A side sock log pid workload
workload[ledger]="ledger,wss=16M,verify=1"
workload[dirtier]="dirtier,wss=32M"
workload[linux]="ledger,wss=8M,verify=1"
memory=128M
vms=(ledger dirtier)
[ -z "$linux" ] || vms+=(linux)

# The guest's ringvm options: the built-in guests name their workload on
# every ringvm; the Linux guest boots once, and its destinations get only
# the shape (the kernel and its command line arrive in guest RAM).
vm_options() {   # VM FIRST(1|0)
    case "$1" in
        linux)
            if [ "$2" = 1 ]; then
                echo "--vcpus 2 --kernel $linux/vmlinux --initrd $linux/initramfs.cpio --cmdline ringvm.workload=${workload[linux]}"
            else
                echo "--vcpus 2"
            fi ;;
        *) echo "--vcpus 1 --workload ${workload[$1]}" ;;
    esac
}

# Waits (polling, bounded) until a condition command succeeds.
wait_for() {   # TIMEOUT_S CMD...
    local deadline=$(( $(date +%s%N) + $1 * 1000000000 )); shift
    until "$@" 2>/dev/null; do
        [ "$(date +%s%N)" -lt "$deadline" ] || return 1
        sleep 0.02
    done
}
alive() { kill -0 "$1" 2>/dev/null; }
ended() { "$ringctl" -s "$1" --json progress | jq -e '.state | test("completed|failed|cancelled")' > /dev/null; }

# start VM_NAME SIDE [--incoming ADDRESS]
generation=0
start_vm() {
    local vm="$1" where="$2"; shift 2
    local first=1
    [ $# -eq 0 ] || first=0
    generation=$((generation + 1))
    sock[$vm]="$work/$vm-$generation.sock"
    log[$vm]="$work/$vm-$generation.log"
    side[$vm]="$where"
    # shellcheck disable=SC2046 # vm_options is a list of words without spaces
    "$hosts" exec "$name" "$where" "$ringvm" --memory "$memory" $(vm_options "$vm" "$first") \
        --api-socket "${sock[$vm]}" "$@" > "${log[$vm]}" 2> "${log[$vm]}.err" &
    pid[$vm]=$!
    pids+=("${pid[$vm]}")
    wait_for 20 test -S "${sock[$vm]}" || { echo "soak.sh: $vm did not open its API socket" >&2; return 1; }
}

for vm in "${vms[@]}"; do start_vm "$vm" src || exit 1; done
wait_for 30 grep -q "LEDGER OK" "${log[ledger]}" || { echo "soak.sh: the ledger never verified" >&2; exit 1; }
# A Linux boot takes ~25 s of emulated ring 0 on PVM hosts, more beside other guests.
if [ -n "$linux" ]; then
    wait_for 240 grep -q "LEDGER OK" "${log[linux]}" || { echo "soak.sh: the Linux guest's ledger never verified" >&2; exit 1; }
fi

hops=0 failures=0 port=7100
downtimes="$work/downtimes"
: > "$downtimes"
: > "$downtimes.by-guest"
started=$(date +%s)
echo "soak: ${duration}s, ${memory} guests, ledger (${workload[ledger]}) and dirtier (${workload[dirtier]})${linux:+, Linux (2 vCPUs, ${workload[linux]})}, $name"
while [ $(( $(date +%s) - started )) -lt "$duration" ]; do
    for vm in "${vms[@]}"; do
        hops=$((hops + 1))
        mode=$([ $(( (hops - 1) / 2 % 2 )) = 0 ] && echo auto || echo dirty-limit)
        from="${side[$vm]}"
        to=$([ "$from" = src ] && echo dst || echo src)
        to_addr=$([ "$to" = src ] && echo "$addr_src" || echo "$addr_dst")
        port=$(( port >= 7999 ? 7100 : port + 1 ))
        old_sock="${sock[$vm]}" old_pid="${pid[$vm]}" old_log="${log[$vm]}"
        ok_before=0
        [ "$vm" != dirtier ] && ok_before=$(grep -c "LEDGER OK" "$old_log")
        cause=""
        if ! start_vm "$vm" "$to" --incoming "tcp:$to_addr:$port"; then
            cause="destination did not start"
        elif ! "$ringctl" -s "$old_sock" raw "{\"cmd\":\"migration.start\",\"args\":{\"dest\":\"tcp:$to_addr:$port\",\"keep_alive\":true,\"converge\":\"$mode\",\"verify_digest\":true,\"timeout_s\":120,\"downtime_ms\":$downtime_ms}}" \
                > "$work/migrate.out" 2>&1 || ! grep -q '"ok": *true' "$work/migrate.out"; then
            cause="migration.start failed: $(tail -1 "$work/migrate.out")"
        elif ! wait_for 150 ended "$old_sock"; then
            cause="the migration did not end within 150 s"
        fi
        progress="$("$ringctl" -s "$old_sock" --json progress 2>/dev/null)"
        state="$(jq -r .state <<<"$progress" 2>/dev/null)"
        ds="$(jq -r .memory_digest_source <<<"$progress" 2>/dev/null)"
        dd="$(jq -r .memory_digest_destination <<<"$progress" 2>/dev/null)"
        downtime="$(jq -r .downtime_ms <<<"$progress" 2>/dev/null)"
        iterations="$(jq -r .iteration_count <<<"$progress" 2>/dev/null)"
        if [ -z "$cause" ] && [ "$state" != completed ]; then cause="state $state: $(jq -c .error <<<"$progress")"; fi
        if [ -z "$cause" ] && { [ "$ds" = null ] || [ "$ds" != "$dd" ]; }; then cause="digests differ: $ds $dd"; fi
        if [ "$state" != completed ]; then
            # The guest still runs on the source: drop the destination, keep the source.
            echo "hop $hops $vm $from->$to $mode: FAILED: $cause"
            failures=$((failures + 1))
            cp "$old_log.err" "$work/failed-$hops-source.err" 2>/dev/null
            cp "${log[$vm]}.err" "$work/failed-$hops-destination.err" 2>/dev/null
            kill -9 "${pid[$vm]}" 2>/dev/null; wait "${pid[$vm]}" 2>/dev/null
            sock[$vm]="$old_sock" pid[$vm]="$old_pid" log[$vm]="$old_log" side[$vm]="$from"
            continue
        fi
        "$ringctl" -s "$old_sock" shutdown > /dev/null 2>&1
        if ! wait_for 20 bash -c "! kill -0 $old_pid"; then kill -9 "$old_pid" 2>/dev/null; fi
        wait "$old_pid"; rc=$?
        if [ -z "$cause" ] && [ "$rc" != 0 ]; then cause="source exited $rc"; fi
        if [ -z "$cause" ] && ! alive "${pid[$vm]}"; then cause="destination not running"; fi
        if [ -z "$cause" ] && [ "$vm" != dirtier ]; then
            wait_for 20 bash -c "[ \$(grep -c 'LEDGER OK' '${log[$vm]}') -ge 1 ]" || cause="no LEDGER OK on the destination"
        fi
        if [ -z "$cause" ] && grep -q MISMATCH "${log[$vm]}" "$old_log"; then cause="ledger MISMATCH"; fi
        if [ -n "$cause" ]; then
            failures=$((failures + 1))
            echo "hop $hops $vm $from->$to $mode: FAILED: $cause"
            cp "$old_log.err" "$work/failed-$hops-source.err" 2>/dev/null
            cp "${log[$vm]}.err" "$work/failed-$hops-destination.err" 2>/dev/null
            # Recover: if the destination does not run the guest, restart it.
            if ! alive "${pid[$vm]}"; then
                [ "$vm" != linux ] || { echo "soak.sh: the Linux guest is lost (not restarted)" >&2; exit 1; }
                start_vm "$vm" src || exit 1
            fi
        else
            echo "$downtime" >> "$downtimes"
            echo "$vm $downtime" >> "$downtimes.by-guest"
            # The expected downtime's parts (issue 15, item 1): what decided the switch-over.
            parts="$(jq -r '"expected \(.expected_downtime_ms) ms = transfer \(.expected_downtime_parts.transfer_ms) + digest \(.expected_downtime_parts.digest_ms) + switch-over \(.expected_downtime_parts.switch_over_ms) (dry run \(.switch_over.dry_run_us) us, learned \(.switch_over.learned_us) us, measured \(.switch_over.measured_us) us)"' <<<"$progress" 2>/dev/null)"
            echo "hop $hops $vm $from->$to $mode: ok, $iterations iterations, downtime ${downtime} ms, $parts, digest $ds"
        fi
        rm -f "$old_log" "$old_log.err"
    done
done
elapsed=$(( $(date +%s) - started ))
n=$(wc -l < "$downtimes")
max=$(sort -n "$downtimes" | tail -1)
p99=$( [ "$n" -gt 0 ] && sort -n "$downtimes" | sed -n "$(( (n * 99 + 99) / 100 ))p" )
p50=$( [ "$n" -gt 0 ] && sort -n "$downtimes" | sed -n "$(( (n + 1) / 2 ))p" )
# Within the limit: all hops and the dirtier's alone.
within=$(awk -v limit="$downtime_ms" '$2 <= limit { n++ } END { print n + 0 }' "$downtimes.by-guest" 2>/dev/null)
dirtier_hops=$(awk '$1 == "dirtier" { n++ } END { print n + 0 }' "$downtimes.by-guest" 2>/dev/null)
dirtier_within=$(awk -v limit="$downtime_ms" '$1 == "dirtier" && $2 <= limit { n++ } END { print n + 0 }' \
                 "$downtimes.by-guest" 2>/dev/null)
line="soak: ${elapsed}s, hops $hops, failures $failures, downtime max ${max:-n/a} ms, p99 ${p99:-n/a} ms, p50 ${p50:-n/a} ms, within ${downtime_ms} ms ${within:-0}/$n (dirtier ${dirtier_within:-0}/${dirtier_hops:-0})"
echo "$line"
[ -z "$summary" ] || echo "$line" > "$summary"
[ "$failures" = 0 ]
