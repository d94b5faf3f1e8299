#!/bin/sh
# Install the Debian packages ringvm needs to build and test, and only the
# missing ones. Idempotent: a second run with everything present does nothing
# and never touches the network.
#
#   scripts/install-deps.sh            build + test dependencies
#   scripts/install-deps.sh --bench    also the peers used by bench/ (qemu, gnuplot)
set -eu

packages="gcc make clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev
libnuma-dev libcriterion-dev libjansson-dev libxxhash-dev libgnutls28-dev linux-libc-dev
pkg-config iproute2 nftables libclang-rt-14-dev gnuplot-nox"
# The Linux guest image (make linux-guest, guest/linux/): Debian's kernel
# source and what building it needs, busybox-static for the initramfs (it
# replaces the dynamically linked 'busybox' package if that is installed),
# musl-tools (the static workload program in the initramfs is linked
# against musl: a tenth of the size with glibc),
# lz4 (the bzImage is LZ4-compressed: its decompressor is emulated on PVM
# hosts, guest/linux/ringvm.config), and QEMU, which boots the image in
# tests/test_linux_image.c.
packages="$packages linux-source-6.1 busybox-static musl-tools bc bison flex cpio xz-utils lz4 patch
qemu-system-x86"

if [ "${1:-}" = "--bench" ]; then
    packages="$packages qemu-system-x86 gnuplot-nox python3"
fi

missing=""
for package in $packages; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done

if [ -z "$missing" ]; then
    exit 0
fi

echo "install-deps: installing:$missing"
if [ "$(id -u)" -ne 0 ]; then
    sudo=sudo
else
    sudo=""
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "install-deps: done"
