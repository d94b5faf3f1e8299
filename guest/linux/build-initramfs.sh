#!/bin/sh
# Build ringvm's Linux guest initramfs, without root: the kernel's own
# gen_init_cpio writes the archive from a file list (device nodes included).
# OUTPUT ending in .gz is gzip'd (the kernel has RD_GZIP); anything else is
# the plain cpio, which is what `make linux-guest` builds: where guest ring 0
# is emulated (PVM hosts) inflating 1.4 MB took the kernel ~90 s of a boot,
# reading 2.9 MB of plain cpio ~9 s (guest/linux/README.md, "On PVM hosts").
#
#   guest/linux/build-initramfs.sh GEN_INIT_CPIO WORKLOAD_PROGRAM OUTPUT
#
# Contents: /init (guest/linux/init), busybox-static's /bin/busybox with a
# link per applet (its own --list-full), /bin/ringvm-workload (the static
# workload program) which is also /sbin/poweroff and /sbin/halt,
# /bin/clocksource (guest/linux/clocksource: shows or switches the kernel's
# clocksource), /bin/seq-lines and /bin/clear-pages (the test scripts of the
# same names),
# /dev/console, the mount points, and /etc/ringvm-guest (the marker that
# lets poweroff fall back to reboot(2); see guest/linux/README.md).
set -eu

if [ $# -ne 3 ]; then
    echo "usage: $0 GEN_INIT_CPIO WORKLOAD_PROGRAM OUTPUT" >&2
    exit 2
fi
gen_init_cpio=$1
workload=$2
output=$3
here=$(cd "$(dirname "$0")" && pwd)
busybox=/bin/busybox

die() {
    echo "linux-guest: initramfs: $*" >&2
    exit 1
}

[ -x "$gen_init_cpio" ] || die "$gen_init_cpio is missing (built with the kernel)"
[ -x "$workload" ] || die "$workload is missing"
[ -x "$busybox" ] || die "$busybox is missing: install busybox-static (scripts/install-deps.sh)"
# A dynamically linked busybox (the 'busybox' package) would not run in an
# initramfs without its libraries.
if ! file_type=$(LC_ALL=C readelf -l "$busybox" 2>&1); then
    die "cannot read $busybox with readelf: $file_type"
fi
case $file_type in
*"Requesting program interpreter"*) die "$busybox is dynamically linked: install busybox-static" ;;
esac

list=$output.list
marker=$output.marker
archive=$output.cpio
trap 'rm -f "$list" "$marker" "$archive" "$output.tmp"' EXIT
echo "ringvm Linux guest image" >"$marker"
# The image carries the program without its debug information (the guest
# kernel unpacks every byte; the copy in the build directory keeps it).
stripped=$output.ringvm-workload
trap 'rm -f "$list" "$marker" "$archive" "$output.tmp" "$stripped"' EXIT
strip -o "$stripped" "$workload" || die "cannot strip $workload into $stripped"

{
    for directory in /bin /sbin /usr /usr/bin /usr/sbin /dev /proc /sys /etc /tmp /root; do
        echo "dir $directory 0755 0 0"
    done
    echo "nod /dev/console 0600 0 0 c 5 1"
    echo "file /init $here/init 0755 0 0"
    echo "file /bin/clocksource $here/clocksource 0755 0 0"
    echo "file /bin/seq-lines $here/seq-lines 0755 0 0"
    echo "file /bin/clear-pages $here/clear-pages 0755 0 0"
    echo "file /bin/busybox $busybox 0755 0 0"
    echo "file /bin/ringvm-workload $stripped 0755 0 0"
    echo "file /etc/ringvm-guest $marker 0644 0 0"
    echo "slink /sbin/poweroff /bin/ringvm-workload 0777 0 0"
    echo "slink /sbin/halt /bin/ringvm-workload 0777 0 0"
    echo "slink /bin/sh /bin/busybox 0777 0 0"
} >"$list"

# -t 0: fixed timestamps, so the same inputs give the same archive.
"$gen_init_cpio" -t 0 "$list" >"$archive" || die "$gen_init_cpio $list failed"
case $output in
*.gz) gzip -9 -n <"$archive" >"$output.tmp" || die "gzip of $archive failed" ;;
*) cp "$archive" "$output.tmp" || die "cannot copy $archive to $output.tmp" ;;
esac
mv -f "$output.tmp" "$output"
echo "linux-guest: initramfs: $output ($(wc -c <"$output") bytes)"
