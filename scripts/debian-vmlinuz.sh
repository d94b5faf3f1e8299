#!/bin/sh
# Prints the path of Debian's own x86-64 kernel (the vmlinuz of the package
# linux-image-amd64 depends on), fetched once with `apt-get download` and
# unpacked into the cache outside the clone; tests/test_linux_boot.c parses and
# loads it (RINGVM_TEST_VMLINUZ) so the boot-protocol code meets a real
# distribution bzImage on every machine, not only the project's own kernel.
# Nothing is installed: the package is unpacked with dpkg-deb -x.
# Prints nothing (and exits 0) when it cannot be had; the test then skips and
# says why.
set -u
cache="${RINGVM_CACHE:-$HOME/.cache/ringvm}/debian-vmlinuz"
package=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n 1)
if [ -z "$package" ]; then
    echo "debian-vmlinuz: cannot resolve linux-image-amd64 (apt-get update not run?)" >&2
    exit 0
fi
version=${package#linux-image-}
kernel="$cache/$package/boot/vmlinuz-$version"
if [ ! -r "$kernel" ]; then
    mkdir -p "$cache" || exit 0
    work=$(mktemp -d "$cache/.fetch.XXXXXX") || exit 0
    if (cd "$work" && apt-get download -q "$package" >/dev/null 2>&1) &&
       dpkg-deb -x "$work"/*.deb "$work/unpacked" 2>/dev/null &&
       [ -r "$work/unpacked/boot/vmlinuz-$version" ]; then
        rm -rf "$cache/$package"
        mkdir -p "$cache/$package/boot"
        mv "$work/unpacked/boot/vmlinuz-$version" "$kernel.tmp" && mv "$kernel.tmp" "$kernel"
    else
        echo "debian-vmlinuz: could not download $package" >&2
    fi
    rm -rf "$work"
fi
[ -r "$kernel" ] && echo "$kernel"
exit 0
