#!/usr/bin/env bash
# Puts the host's free memory in the state a benchmark of first touches
# needs, and back.
#
#   scripts/host-memory.sh status     what the host does with free memory now
#   scripts/host-memory.sh prepare    stop free page reporting, touch free memory once
#   scripts/host-memory.sh restore    put free page reporting back as prepare found it
#
# Why: these dev and CI machines are themselves VMs, and their hypervisor
# backs their RAM lazily. The guest kernel hands memory it has freed back to
# it (virtio-balloon free page reporting: 2 MiB blocks, within seconds), and
# the next first touch of such a block faults in the hypervisor below:
# measured on an AMD EPYC PVM host (2026-12-05), 0.5-0.9 GiB/s for a freshly
# reported block against 10-11 GiB/s for one this machine kept
# (MADV_POPULATE_WRITE of anonymous memory with transparent huge pages). A
# migration's destination allocates all of its guest RAM fresh, so without
# this its bulk pass measures the hypervisor below, and how much of the RAM
# the previous run freed a few seconds earlier (still warm) or long ago
# (cold). Bare-metal hosts have no such layer. docs/benchmarks.md, "Host
# memory on these machines".
#
# prepare (root): saves page_reporting_order to $STATE, sets it above the
# largest buddy order (no block is ever reported again), then touches all
# but RINGVM_HOST_MEMORY_KEEP_MIB (default 1024) of MemAvailable once, in
# 1 GiB steps, and prints the rate of the first and last step. restore puts
# the saved order back (reporting resumes) and removes $STATE. A host
# without free page reporting needs neither: prepare says so and exits 0.
# Exit status 0, 1 when a step failed (the message names it), 2 on bad
# usage.
set -euo pipefail

PARAM=/sys/module/page_reporting/parameters/page_reporting_order
STATE=${RINGVM_HOST_MEMORY_STATE:-/run/ringvm-page-reporting-order}
KEEP_MIB=${RINGVM_HOST_MEMORY_KEEP_MIB:-1024}
NEVER_ORDER=11      # > MAX_PAGE_ORDER (10): no free block is that large

reporting_devices() {
    # virtio-balloon's feature bits, bit 5 = VIRTIO_BALLOON_F_REPORTING
    local n=0 f
    for f in /sys/bus/virtio/drivers/virtio_balloon/virtio*/features; do
        [ -r "$f" ] && [ "$(cut -c6 "$f")" = 1 ] && n=$((n + 1))
    done
    echo "$n"
}

reporting_state() {
    if [ "$1" = none ]; then
        echo 'no page_reporting module'
    elif [ "$1" -ge "$NEVER_ORDER" ] 2>/dev/null; then
        echo 'reporting stopped'
    else
        echo 'reporting on'
    fi
}

status() {
    local devices order
    devices=$(reporting_devices)
    order=$(cat "$PARAM" 2>/dev/null || echo none)
    echo "host-memory: free page reporting devices: $devices; page_reporting_order: $order" \
         "($(reporting_state "$order"))"
    if [ -f "$STATE" ]; then
        echo "host-memory: prepared; restore sets page_reporting_order back to $(cat "$STATE")"
    fi
    grep -E '^(MemTotal|MemAvailable):' /proc/meminfo | tr -s ' ' | sed 's/^/host-memory: /'
}

warm() {
    local available_kib mib
    available_kib=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
    mib=$(( available_kib / 1024 - KEEP_MIB ))
    if [ "$mib" -lt 1024 ]; then
        echo "host-memory: only $((available_kib / 1024)) MiB available, nothing to warm" >&2
        return 0
    fi
    python3 - "$mib" <<'EOF'
import mmap, sys, time
MADV_POPULATE_WRITE = 23          # Linux 5.14
mib = int(sys.argv[1])
step = 1 << 30
size = (mib << 20) // step * step
area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
area.madvise(mmap.MADV_HUGEPAGE)
rates = []
for offset in range(0, size, step):
    started = time.monotonic()
    area.madvise(MADV_POPULATE_WRITE, offset, step)
    rates.append(1024 / (time.monotonic() - started))
print("host-memory: touched %d GiB once: first GiB %.0f MiB/s, last %.0f MiB/s, median %.0f MiB/s"
      % (size >> 30, rates[0], rates[-1], sorted(rates)[len(rates) // 2]))
EOF
}

prepare() {
    if [ ! -e "$PARAM" ]; then
        echo "host-memory: no free page reporting on this kernel ($PARAM missing): nothing to prepare"
        return 0
    fi
    if [ ! -w "$PARAM" ]; then
        echo "host-memory: cannot write $PARAM (needs root): free page reporting stays on" >&2
        return 1
    fi
    local order
    order=$(cat "$PARAM")
    if [ ! -f "$STATE" ]; then
        echo "$order" > "$STATE"
    fi
    echo "$NEVER_ORDER" > "$PARAM"
    echo "host-memory: free page reporting stopped (page_reporting_order $order -> $NEVER_ORDER;" \
         "'$0 restore' puts it back)"
    warm
}

restore() {
    if [ ! -f "$STATE" ]; then
        echo "host-memory: nothing to restore ($STATE missing: prepare did not run, or restore already did)"
        return 0
    fi
    local order
    order=$(cat "$STATE")
    case "$order" in ''|*[!0-9]*) echo "host-memory: $STATE holds '$order', not an order" >&2; return 1 ;; esac
    echo "$order" > "$PARAM"
    rm -f "$STATE"
    echo "host-memory: free page reporting back on (page_reporting_order $order)"
}

case "${1:-}" in
    status) status ;;
    prepare) prepare ;;
    restore) restore ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) echo "usage: $0 status|prepare|restore (see --help)" >&2; exit 2 ;;
esac
