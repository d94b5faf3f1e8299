#!/bin/sh
# Run a command where /dev/kvm exists even though this machine has none: inside
# a QEMU TCG virtual machine whose emulated CPU has AMD SVM with nested paging
# (-cpu max), booted from Debian's own kernel with kvm_amd loaded. The host's
# root file system is shared into it over virtio-9p and the command runs
# chrooted there, in the caller's working directory, as root: the binaries
# are the ones built on the host, nothing is rebuilt.
#
#   scripts/nested-kvm.sh [--memory MiB] [--cpus N] [--timeout SECONDS] [--shmem-thp MODE]
#                         [--hugepages N] [--kernel-args ARGS] [--] COMMAND [ARG...]
#
# What this is good for: running ringvm against a real KVM (kvm.ko + kvm_amd.ko
# of Debian's 6.1 kernel: SVM, NPT, the dirty ring, the in-kernel irqchip)
# on the PVM-guest hosts that have no /dev/kvm. What it is not: a speed
# measurement. Every instruction of both the L1 kernel and ringvm's guest is
# translated by TCG, so timings are 10-50x off, and the host KVM is
# SVM, not the PVM of ../shared/HOST-KVM.md (ring 0 is not emulated, SYSCALL
# works). docs/testing.md says which results carry over.
#
# --cpus: the emulated machine's CPUs, 1 by default. With 2, QEMU 7.2's
# emulated SVM loses track of guest memory while L1 KVM changes its nested
# page tables (the dirty ring's write-protection): built-in guests
# triple-fault on pages their page tables map, Linux guests panic faulting
# on their own entry stack, the L1 kernel panics with "corrupted stack end
# detected inside scheduler". One CPU has not shown any of it
# (docs/testing.md, "The emulator's own failures").
#
# --shmem-thp: the VM's /sys/kernel/mm/transparent_hugepage/shmem_enabled,
# advise by default, so ringvm's default backing (MADV_HUGEPAGE on guest RAM)
# really gets transparent huge pages there and KVM, dirty tracking and
# post-copy's discards run on them; never gives the 4 KiB pages of Debian's
# default. --hugepages: 2 MiB pages reserved for --hugepages guests (default
# 512, 1 GiB of the VM's memory). --kernel-args: appended to the emulated
# machine's kernel command line (e.g. "clocksource=hpet": a host KVM
# whose clocksource is not the TSC, as on the PVM hosts).
#
# Exit status: the command's, or 125 when the VM could not be started or did
# not report one (timeout, kernel panic, no /dev/kvm inside).
set -eu

memory_mib=8192
timeout_seconds=3600
cpus=1
shmem_thp=advise
hugepages=512
kernel_args=
while [ $# -gt 0 ]; do
    case "$1" in
        --memory) memory_mib=$2; shift 2 ;;
        --timeout) timeout_seconds=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --shmem-thp) shmem_thp=$2; shift 2 ;;
        --hugepages) hugepages=$2; shift 2 ;;
        --kernel-args) kernel_args=$2; shift 2 ;;
        --help|-h)
            sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'
            exit 0 ;;
        --) shift; break ;;
        -*) echo "nested-kvm: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -eq 0 ]; then
    echo "nested-kvm: no command given (see --help)" >&2
    exit 2
fi
case "$memory_mib" in *[!0-9]*|'') echo "nested-kvm: --memory takes MiB, got '$memory_mib'" >&2; exit 2 ;; esac
case "$cpus" in *[!0-9]*|''|0) echo "nested-kvm: --cpus takes a number of CPUs, got '$cpus'" >&2; exit 2 ;; esac
case "$timeout_seconds" in *[!0-9]*|'') echo "nested-kvm: --timeout takes seconds, got '$timeout_seconds'" >&2; exit 2 ;; esac
case "$shmem_thp" in always|within_size|advise|never|deny|force) ;; *) echo "nested-kvm: --shmem-thp takes always, within_size, advise, never, deny or force, got '$shmem_thp'" >&2; exit 2 ;; esac
case "$hugepages" in *[!0-9]*|'') echo "nested-kvm: --hugepages takes a number of 2 MiB pages, got '$hugepages'" >&2; exit 2 ;; esac

for tool in qemu-system-x86_64 busybox cpio gzip dpkg-deb apt-get; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "nested-kvm: $tool not found (scripts/install-deps.sh installs it)" >&2
        exit 125
    fi
done
busybox_path=$(command -v busybox)
if ldd "$busybox_path" >/dev/null 2>&1; then
    echo "nested-kvm: $busybox_path is dynamically linked; install busybox-static" >&2
    exit 125
fi

cache="${RINGVM_CACHE:-$HOME/.cache/ringvm}/nested"
package=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n 1)
if [ -z "$package" ]; then
    echo "nested-kvm: cannot resolve linux-image-amd64 (apt-get update not run?)" >&2
    exit 125
fi
version=${package#linux-image-}
# Keyed by this script too: a change to the module list or the init below
# builds a new initramfs.
script_hash=$(sha256sum "$0" | cut -c1-12)
kernel_dir="$cache/$package-$script_hash"

# The modules the init loads, dependencies first: virtio-pci and 9p for the
# shared root; KVM (kvm_amd needs ccp for SEV and kvm needs irqbypass); and
# what tests/netns/hosts.sh builds its emulated hosts from (veth, tbf and
# netem shaping, nftables with numgen for loss, tun for its delay line).
modules="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci fs/netfs/netfs fs/fscache/fscache
net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p virt/lib/irqbypass drivers/crypto/ccp/ccp
arch/x86/kvm/kvm arch/x86/kvm/kvm-amd
crypto/crc32c_generic lib/libcrc32c net/netfilter/nfnetlink net/netfilter/nf_tables
net/netfilter/nft_numgen drivers/net/veth net/sched/sch_tbf net/sched/sch_netem drivers/net/tun"

if [ ! -r "$kernel_dir/initrd.gz" ]; then
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/.fetch.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    echo "nested-kvm: fetching $package (once, into $cache)" >&2
    (cd "$work" && apt-get download -q "$package" >/dev/null 2>&1) ||
        { echo "nested-kvm: apt-get download $package failed" >&2; exit 125; }
    dpkg-deb -x "$work"/*.deb "$work/unpacked"
    mkdir -p "$work/initrd/bin" "$work/initrd/modules" "$work/initrd/proc" \
             "$work/initrd/sys" "$work/initrd/dev" "$work/initrd/host"
    cp "$busybox_path" "$work/initrd/bin/busybox"
    for module in $modules; do
        source_path="$work/unpacked/lib/modules/$version/kernel/$module.ko"
        if [ ! -r "$source_path" ]; then
            echo "nested-kvm: $package has no $module.ko" >&2
            exit 125
        fi
        cp "$source_path" "$work/initrd/modules/"
        basename "$module" >> "$work/initrd/modules/order"
    done
    cat > "$work/initrd/init" <<'INIT'
#!/bin/busybox sh
# PID 1 of the nested-kvm VM: load the modules, mount the host's root over
# 9p, give it the kernel file systems a test run needs, run the command of
# ringvm_nested= chrooted there and print its status for the host to read.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
hostname ringvm-nested
for module in $(cat /modules/order); do
    insmod "/modules/$module.ko" || echo "nested-kvm: insmod $module failed"
done
root=/host
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose host $root; then
    echo "nested-kvm: mounting the host's root over 9p failed"
    poweroff -f
fi
mount -t proc proc $root/proc
mount -t sysfs sys $root/sys
mount -t devtmpfs dev $root/dev
mkdir -p $root/dev/pts $root/dev/shm
mount -t devpts devpts $root/dev/pts
mount -t tmpfs shm $root/dev/shm
mount -t tmpfs tmp $root/tmp
mount -t tmpfs run $root/run
mount -t debugfs debugfs $root/sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs $root/sys/kernel/tracing 2>/dev/null
if [ ! -c /dev/kvm ]; then
    echo "nested-kvm: no /dev/kvm inside the VM (kvm_amd did not load: does this QEMU emulate SVM?)"
    poweroff -f
fi
command_file=$(sed -n 's/.*ringvm_nested=\([^ ]*\).*/\1/p' /proc/cmdline)
chroot $root /bin/sh "$command_file"
echo "nested-kvm: exit $?"
poweroff -f
INIT
    chmod +x "$work/initrd/init"
    (cd "$work/initrd" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$work/initrd.gz"
    rm -rf "$kernel_dir"
    mkdir -p "$kernel_dir"
    mv "$work/unpacked/boot/vmlinuz-$version" "$kernel_dir/vmlinuz"
    mv "$work/initrd.gz" "$kernel_dir/initrd.gz"
    rm -rf "$work"
    trap - EXIT
fi

# The command travels as a script in the cache (the host's /tmp is hidden by
# the VM's own tmpfs): same directory, same environment variables that matter.
run_dir=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$run_dir"' EXIT
{
    echo "cd '$(pwd)' || exit 125"
    for variable in RINGVM_BUILD_DIR RINGVM_TEST_VMLINUZ LSAN_OPTIONS ASAN_OPTIONS UBSAN_OPTIONS \
                    RINGVM_FUZZ_SEED RINGVM_FUZZ_RUNS RINGVM_PINGPONG_HOPS CRITERION_OUTPUTS; do
        eval "value=\${$variable-}"
        [ -n "$value" ] && printf "export %s='%s'\n" "$variable" "$value"
    done
    echo "export RINGVM_NESTED_KVM=1 PATH='$PATH'"
    echo "echo $shmem_thp > /sys/kernel/mm/transparent_hugepage/shmem_enabled || echo 'nested-kvm: cannot set shmem_enabled' >&2"
    echo "echo $hugepages > /proc/sys/vm/nr_hugepages || echo 'nested-kvm: cannot reserve huge pages' >&2"
    printf 'exec'
    for argument in "$@"; do
        printf " '%s'" "$(printf '%s' "$argument" | sed "s/'/'\\\\''/g")"
    done
    printf '\n'
} > "$run_dir/command.sh"

status_file="$run_dir/status"
set +e
timeout "$timeout_seconds" qemu-system-x86_64 -accel tcg,thread=multi -cpu max \
    -m "$memory_mib" -smp "$cpus" -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$kernel_dir/vmlinuz" -initrd "$kernel_dir/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 ringvm_nested=$run_dir/command.sh${kernel_args:+ $kernel_args}" \
    -virtfs "local,path=/,mount_tag=host,security_model=passthrough,id=host,multidevs=remap" \
    2>&1 | tee "$status_file" | grep --line-buffered -v -a -E '^nested-kvm: exit [0-9]+|reboot: Power down|SeaBIOS|Booting from ROM|iPXE|Press Ctrl-B'
set -e
status=$(sed -n 's/^nested-kvm: exit \([0-9][0-9]*\).*/\1/p' "$status_file" | tail -n 1)
if [ -z "$status" ]; then
    echo "nested-kvm: the VM reported no exit status (timeout after ${timeout_seconds}s, panic, or no /dev/kvm inside)" >&2
    exit 125
fi
exit "$status"
