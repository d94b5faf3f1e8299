#!/usr/bin/env bash
# `make demo-linux`: boot the project's Linux guest image (make linux-guest)
# with 2 vCPUs running the ledger in Linux user space: the kernel's banner
# and the LEDGER lines on the console, a console socket to attach to
# (`build/ringctl console --socket /tmp/ringvm-demo-linux.*/console.sock`),
# a clean shutdown after DEMO_SECONDS (default 40), and the count of
# LEDGER OK and MISMATCH lines.
set -euo pipefail
build=${1:-build}
ringvm="$build/ringvm"
kernel="$build/linux/bzImage"
initrd="$build/linux/initramfs.cpio"
seconds=${DEMO_SECONDS:-40}

if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "demo-linux: /dev/kvm is not available to $(id -un); ringvm needs KVM" >&2
    echo "demo-linux: the same image boots without KVM under QEMU's emulator:" >&2
    echo "  qemu-system-x86_64 -accel tcg -m 512M -smp 2 -nographic -no-reboot -kernel $kernel \\" >&2
    echo "      -initrd $initrd -append 'console=ttyS0 reboot=k panic=1 ringvm.workload=ledger,wss=64M,verify=2'" >&2
    exit 1
fi
for file in "$kernel" "$initrd"; do
    [ -r "$file" ] || { echo "demo-linux: $file is missing (make linux-guest)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/ringvm-demo-linux.XXXXXX)
echo "demo-linux: ringvm --kernel $kernel --initrd $initrd --memory 1G --vcpus 2"
echo "demo-linux: guest command line adds: ringvm.workload=ledger,wss=256M,verify=2"
status=0
timeout --foreground "$seconds" "$ringvm" --kernel "$kernel" --initrd "$initrd" --memory 1G --vcpus 2 \
    --cmdline "ringvm.workload=ledger,wss=256M,verify=2" --console "unix:$work/console.sock" \
    --api-socket "$work/api.sock" --run-seconds "$seconds" 2>&1 | tee "$work/console.log" || status=$?
echo
echo "demo-linux: $(grep -c 'LEDGER OK' "$work/console.log" || true) LEDGER OK lines," \
     "$(grep -c 'LEDGER MISMATCH' "$work/console.log" || true) MISMATCH; console in $work/console.log"
exit "$status"
