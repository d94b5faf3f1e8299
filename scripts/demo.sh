#!/usr/bin/env bash
# The README demo: boot the built-in guest with 2 vCPUs, run the full-rate
# dirtier for 10 s printing the guest dirty rate every second, shut down
# cleanly. (Becomes a live migration when migration/ lands.)
set -euo pipefail
build=${1:-build}
ringvm="$build/ringvm"

if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "demo: /dev/kvm is not available to $(id -un); ringvm needs KVM" >&2
    exit 1
fi

echo "demo: 2 vCPUs, 1 GiB guest, dirtier over 256 MiB at full speed, 10 s"
"$ringvm" --memory 1G --prealloc --vcpus 2 --workload dirtier,wss=256M,pattern=seq --stats --run-seconds 10
echo "demo: clean shutdown"
