#!/usr/bin/env bash
# Issue 13's "done when", timed: boots the project's Linux guest image under
# ringvm with the ledger running in user space, waits until every vCPU has
# printed LEDGER OK twice (no MISMATCH), then sends SIGTERM and expects exit
# status 0. Prints one JSON object: seconds from ringvm's start to the kernel
# banner, to /init, to the first LEDGER OK and to the last one needed, the
# LEDGER OK count per vCPU, and ringvm's exit status.
#
#   scripts/boot-time.sh [--build DIR] [--kernel bzImage|vmlinux] [--initrd cpio|cpio.gz]
#                        [--vcpus N] [--memory SIZE] [--cmdline TEXT] [--timeout S] [--console FILE]
#
# Defaults: the bzImage, the plain initramfs.cpio, 2 vCPUs, 1G,
# "ringvm.workload=ledger,wss=256M,verify=2" (the issue's command), 600 s.
# Times are from the console as this script reads it, every 50 ms. Without
# /dev/kvm it says so on stderr, prints {"skipped": ...} and exits 0.
# Exit 0 when the guest got there and ringvm exited 0 on SIGTERM, 1 when not
# (the JSON says what was missing), 2 on bad usage.
set -uo pipefail

build=build
kernel=bzImage
initrd_kind=cpio
vcpus=2
memory=1G
cmdline="ringvm.workload=ledger,wss=256M,verify=2"
timeout_s=600
console=""
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build="$2"; shift 2 ;;
        --kernel) kernel="$2"; shift 2 ;;
        --initrd) initrd_kind="$2"; shift 2 ;;
        --vcpus) vcpus="$2"; shift 2 ;;
        --memory) memory="$2"; shift 2 ;;
        --cmdline) cmdline="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        --console) console="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "boot-time: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$kernel" in bzImage|vmlinux) ;; *) echo "boot-time: --kernel takes bzImage or vmlinux, got '$kernel'" >&2; exit 2 ;; esac
case "$initrd_kind" in cpio|cpio.gz) ;; *) echo "boot-time: --initrd takes cpio or cpio.gz, got '$initrd_kind'" >&2; exit 2 ;; esac
case "$vcpus" in *[!0-9]*|''|0) echo "boot-time: --vcpus takes a number, got '$vcpus'" >&2; exit 2 ;; esac
case "$timeout_s" in *[!0-9]*|''|0) echo "boot-time: --timeout takes seconds, got '$timeout_s'" >&2; exit 2 ;; esac
image="$build/linux/$kernel"
initrd="$build/linux/initramfs.$initrd_kind"
for file in "$build/ringvm" "$image" "$initrd"; do
    [ -r "$file" ] || { echo "boot-time: $file is missing (make all linux-guest)" >&2; exit 2; }
done
if [ ! -w /dev/kvm ]; then
    echo "boot-time: SKIP: /dev/kvm unavailable" >&2
    echo '{"skipped": "/dev/kvm unavailable"}'
    exit 0
fi

if [ -z "$console" ]; then
    console=$(mktemp /tmp/ringvm-boot-time-XXXXXX.log)
    remove_console=1
else
    : >"$console"
    remove_console=0
fi
now() { date +%s.%N; }
start=$(now)
"$build/ringvm" --kernel "$image" --initrd "$initrd" --memory "$memory" --vcpus "$vcpus" \
    --cmdline "$cmdline" --serial stdout >"$console" 2>&1 &
pid=$!

banner="" init="" first_ok="" done_at="" timed_out=false
declare -a ok_counts
while :; do
    elapsed=$(echo "$(now) - $start" | bc)
    if ! kill -0 "$pid" 2>/dev/null; then
        break
    fi
    [ -z "$banner" ] && grep -q "Linux version" "$console" && banner=$elapsed
    [ -z "$init" ] && grep -q "ringvm-init: /init started" "$console" && init=$elapsed
    if [ -n "$init" ]; then
        [ -z "$first_ok" ] && grep -q "LEDGER OK" "$console" && first_ok=$elapsed
        all=1
        for ((v = 0; v < vcpus; v++)); do
            ok_counts[v]=$(grep -c "LEDGER OK .*vcpu=$v\b" "$console")
            [ "${ok_counts[v]}" -ge 2 ] || all=0
        done
        if [ "$all" = 1 ]; then
            done_at=$elapsed
            break
        fi
        grep -q "LEDGER MISMATCH" "$console" && break
    fi
    if [ "$(echo "$elapsed > $timeout_s" | bc)" = 1 ]; then
        timed_out=true
        break
    fi
    sleep 0.05
done
status=""
if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
        status="killed: no exit within 10 s of SIGTERM"
    fi
fi
wait "$pid"
exit_status=$?
mismatches=$(grep -c "LEDGER MISMATCH" "$console")
for ((v = 0; v < vcpus; v++)); do
    ok_counts[v]=$(grep -c "LEDGER OK .*vcpu=$v\b" "$console")
done
counts=$(IFS=,; echo "${ok_counts[*]}")
json_number() { [ -n "$1" ] && printf '%.3f' "$1" || printf 'null'; }
printf '{"vmm": "ringvm", "kernel": "%s", "initrd": "%s", "vcpus": %d, "memory": "%s", "cmdline": "%s", ' \
    "$image" "$initrd" "$vcpus" "$memory" "$cmdline"
printf '"banner_s": %s, "init_s": %s, "first_ledger_ok_s": %s, "two_ledger_ok_per_vcpu_s": %s, ' \
    "$(json_number "$banner")" "$(json_number "$init")" "$(json_number "$first_ok")" "$(json_number "$done_at")"
printf '"ledger_ok_per_vcpu": [%s], "mismatches": %d, "timed_out": %s, "exit_status": %d, "note": "%s"}\n' \
    "$counts" "$mismatches" "$timed_out" "$exit_status" "$status"
result=0
if [ -z "$done_at" ] || [ "$mismatches" != 0 ] || [ "$exit_status" != 0 ] || [ -n "$status" ]; then
    echo "boot-time: not done: see the JSON; the console is in $console" >&2
    result=1
elif [ "$remove_console" = 1 ]; then
    rm -f "$console"
fi
exit "$result"
