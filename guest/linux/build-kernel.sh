#!/bin/sh
# Build (or fetch from the cache) ringvm's Linux guest kernel and copy it into
# OUT_DIR: bzImage, vmlinux (the PVH ELF), gen_init_cpio (the kernel's own
# initramfs writer, used by build-initramfs.sh without root) and kernel.config.
#
#   guest/linux/build-kernel.sh OUT_DIR
#
# Source: Debian's linux-source-6.1 (/usr/src/linux-source-6.1.tar.xz), with
# guest/linux/patches/*.patch applied in name order, configured as tinyconfig
# + guest/linux/ringvm.config.
#
# Cache: ${RINGVM_CACHE:-$HOME/.cache/ringvm}/linux-<hash>, where the hash
# covers this script, the config fragment, every patch (name and content), the
# linux-source package version and the compiler version. An entry is complete
# only when its directory exists: the build runs in linux-<hash>.tmp.<pid> and
# that directory is renamed to linux-<hash> as the very last step, so an
# interrupted build never leaves an entry that looks complete. A lock file
# serialises concurrent builds of the same hash (the second one then hits the
# cache); temp directories left by builds that died are removed.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
out_dir=$1
here=$(cd "$(dirname "$0")" && pwd)
source_tarball=/usr/src/linux-source-6.1.tar.xz
source_package=linux-source-6.1
fragment=$here/ringvm.config
patch_dir=$here/patches
cache_root=${RINGVM_CACHE:-$HOME/.cache/ringvm}

# The kernel's make must not join ringvm's make jobserver or see its flags.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES GNUMAKEFLAGS || true
# A stable banner ("Linux version 6.1.x (ringvm@ringvm) ...") whoever builds.
export KBUILD_BUILD_USER=ringvm KBUILD_BUILD_HOST=ringvm

die() {
    echo "linux-guest: $*" >&2
    exit 1
}

[ -r "$source_tarball" ] ||
    die "$source_tarball is missing: install $source_package (scripts/install-deps.sh)"
package_version=$(dpkg-query -W -f='${Version}' "$source_package" 2>/dev/null) ||
    die "cannot read the version of $source_package with dpkg-query"
for tool in make gcc bc bison flex xz lz4 flock sha256sum patch; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "'$tool' is missing: run scripts/install-deps.sh"
done

# ---- the cache key -----------------------------------------------------------
hash=$(
    {
        echo "package $source_package $package_version"
        echo "compiler $(gcc --version | head -n 1)"
        echo "script"; cat "$here/build-kernel.sh"
        echo "fragment"; cat "$fragment"
        for patch in "$patch_dir"/*.patch; do
            [ -e "$patch" ] || continue
            echo "patch $(basename "$patch")"; cat "$patch"
        done
    } | sha256sum | cut -c1-16
)
entry=$cache_root/linux-$hash

publish() {
    mkdir -p "$out_dir"
    for file in bzImage vmlinux gen_init_cpio kernel.config; do
        # Hard links cost nothing; a cache on another file system gets copies.
        ln -f "$entry/$file" "$out_dir/$file" 2>/dev/null ||
            cp -f "$entry/$file" "$out_dir/$file" ||
            die "cannot copy $entry/$file to $out_dir"
    done
}

if [ -d "$entry" ]; then
    echo "linux-guest: kernel cache hit: $entry"
    publish
    exit 0
fi

mkdir -p "$cache_root" || die "cannot create the cache directory $cache_root"
lock=$cache_root/linux-$hash.lock
exec 9>"$lock" || die "cannot open the lock file $lock"
flock 9 || die "cannot lock $lock"
if [ -d "$entry" ]; then
    echo "linux-guest: kernel cache hit (built concurrently): $entry"
    publish
    exit 0
fi

# Temp directories of builds that were killed (their pid is gone).
for stale in "$cache_root"/linux-"$hash".tmp.*; do
    [ -d "$stale" ] || continue
    stale_pid=${stale##*.tmp.}
    if ! kill -0 "$stale_pid" 2>/dev/null; then
        echo "linux-guest: removing the interrupted build $stale"
        rm -rf "$stale"
    fi
done

echo "linux-guest: kernel cache miss: building $entry (about 15 minutes on 2 cores)"
work=$cache_root/linux-$hash.tmp.$$
log=$cache_root/linux-$hash.log
rm -rf "$work"
mkdir -p "$work/src"
cleanup() {
    status=$?
    rm -rf "$work"
    if [ "$status" -ne 0 ]; then
        echo "linux-guest: kernel build FAILED (exit $status); log: $log" >&2
        tail -n 30 "$log" >&2 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

started=$(date +%s)
: >"$log"
step() {
    echo "linux-guest: $*"
    echo "==== $*" >>"$log"
}

step "unpacking $source_tarball ($source_package $package_version)"
tar -xJf "$source_tarball" -C "$work/src" --strip-components=1 >>"$log" 2>&1 ||
    die "cannot unpack $source_tarball"
src=$work/src

for patch in "$patch_dir"/*.patch; do
    [ -e "$patch" ] || continue
    step "applying $(basename "$patch")"
    patch -d "$src" -p1 --batch --forward <"$patch" >>"$log" 2>&1 ||
        die "patch $(basename "$patch") does not apply"
done

kmake() {
    make -C "$src" ARCH=x86_64 "$@" >>"$log" 2>&1
}

step "configuring: tinyconfig + $(basename "$fragment")"
kmake tinyconfig || die "make tinyconfig failed"
(cd "$src" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$fragment") \
    >>"$log" 2>&1 || die "merge_config.sh failed"
kmake olddefconfig || die "make olddefconfig failed"

# Every line of the fragment must be in the final .config: olddefconfig
# silently drops options whose dependencies are not met.
missing=""
while IFS= read -r line; do
    case $line in
    CONFIG_*=*)
        grep -qxF "$line" "$src/.config" || missing="$missing
    wanted: $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$src/.config" || echo absent)"
        ;;
    "# CONFIG_"*" is not set")
        option=${line#\# }
        option=${option%% *}
        if grep -q "^$option=" "$src/.config"; then
            missing="$missing
    wanted: $line, got: $(grep "^$option=" "$src/.config")"
        fi
        ;;
    esac
done <"$fragment"
if [ -n "$missing" ]; then
    die "options of $(basename "$fragment") did not survive olddefconfig (a dependency is missing):$missing"
fi

jobs=$(nproc)
step "make -j$jobs bzImage (log: $log)"
kmake -j"$jobs" bzImage || die "kernel build failed"
# The kernel builds usr/gen_init_cpio for its built-in initramfs; build it
# explicitly in case a configuration stops needing it.
[ -x "$src/usr/gen_init_cpio" ] || kmake usr/gen_init_cpio || die "cannot build usr/gen_init_cpio"

cp "$src/arch/x86/boot/bzImage" "$src/vmlinux" "$src/usr/gen_init_cpio" \
    "$src/System.map" "$work/" || die "cannot collect the build outputs"
cp "$src/.config" "$work/kernel.config"
rm -rf "$src"
cp "$log" "$work/build.log"
# The rename is the commit point of the cache entry.
mv -T "$work" "$entry" || die "cannot rename $work to $entry"
trap - EXIT
rm -f "$log"
echo "linux-guest: kernel built in $(($(date +%s) - started)) s: $entry"
publish
