#!/usr/bin/env bash
# Emulated test hosts for migration tests: two network namespaces joined by
# a veth pair, with tc shaping. Traffic never leaves the namespaces.
#
#   hosts.sh up NAME [--owner PID] [--rate RATE] [--delay DELAY] [--loss PCT]
#                         creates NAME-src (10.213.N.1) and NAME-dst (10.213.N.2);
#                         first sweeps stale hosts (see below)
#   hosts.sh shape NAME [--rate RATE] [--delay DELAY] [--loss PCT]
#                         changes the shaping on both ends (netem + tbf)
#   hosts.sh link NAME up|down    cuts or restores the link (veth down/up)
#   hosts.sh stall NAME           100 % loss both ways: a link that hangs without closing
#   hosts.sh shape NAME --loss 0  ends a stall
#   hosts.sh exec NAME src|dst CMD...   runs CMD inside one host
#   hosts.sh delay NAME --ms MS [--bin PATH]
#                         adds a second link with MS ms of one-way delay
#                         (TUN devices + tests/netns/delayline: no netem here)
#   hosts.sh addr NAME src|dst [--delayed]
#                         prints the host's address (on the delayed link)
#   hosts.sh down NAME            removes both namespaces (idempotent)
#
# C tests drive it through tests/netns/hosts.h (hosts_up, hosts_down,
# hosts_address, hosts_exec_prefix), compiled into the test binary.
#
# Needs root and iproute2 (scripts/install-deps.sh installs it). Callers
# register `hosts.sh down NAME` in a trap so a failing test still cleans up.
# A caller that is killed outright (SIGKILL, a Criterion .timeout) runs no
# trap, so every `up` records its owner (--owner PID, default the caller's
# parent process; "PID STARTTIME" in $owners/NAME) and first sweeps stale
# hosts: every ringvm-NAME-src|dst namespace (this script's prefix) whose
# owner is gone (or that has no owner record: made by an older hosts.sh or
# left half-removed) loses its processes (`ip netns pids`, SIGKILL: the
# ringvm guests of the dead test) and is deleted. Hosts of a live owner,
# e.g. another test run in parallel, are left alone.
set -euo pipefail

die() { echo "hosts.sh: $*" >&2; exit 1; }

[ $# -ge 2 ] || die "usage: hosts.sh up|shape|link|stall|exec|addr|down NAME ..."
command="$1"
name="$2"
shift 2
[[ "$name" =~ ^[a-z0-9]{1,8}$ ]] || die "NAME '$name': 1-8 lowercase letters or digits"

# A /24 per NAME, derived from the name so parallel test runs do not clash.
subnet=$(( $(printf '%s' "$name" | cksum | cut -d' ' -f1) % 200 + 20 ))
src_ns="ringvm-$name-src"
dst_ns="ringvm-$name-dst"
src_addr="10.213.$subnet.1"
dst_addr="10.213.$subnet.2"
src_delayed="10.214.$subnet.1"     # the delayed link (hosts.sh delay)
dst_delayed="10.214.$subnet.2"

owners=/run/ringvm-hosts

# "PID STARTTIME" of a live process (STARTTIME tells a reused PID apart).
process_identity() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat="${stat##*) }"     # fields after "(comm) ", which may hold spaces
    set -- $stat
    echo "${20}"            # field 22 of stat: start time
}

owner_alive() {
    local record pid start
    record=$(cat "$owners/$1" 2>/dev/null) || return 1
    read -r pid start <<<"$record"
    [ -n "$pid" ] && [ "$(process_identity "$pid" || true)" = "$start" ]
}

# Removes the hosts of every owner that is gone (see the header).
sweep_stale() {
    local ns stale pid
    for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }'); do
        [[ "$ns" =~ ^ringvm-([a-z0-9]{1,8})-(src|dst)$ ]] || continue
        stale="${BASH_REMATCH[1]}"
        owner_alive "$stale" && continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
        echo "hosts.sh: removed stale namespace $ns (owner gone) and its processes" >&2
        [ -n "$(ip netns list 2>/dev/null | awk -v n="ringvm-$stale-" 'index($1, n) == 1')" ] ||
            rm -f "$owners/$stale"
    done
}

shape_args() {
    rate=""; delay=""; loss="0"; owner="$PPID"
    while [ $# -gt 0 ]; do
        case "$1" in
            --owner) owner="$2"; shift 2 ;;
            --rate) rate="$2"; shift 2
                    [[ "$rate" =~ ^[0-9]+[kmgt]?bit$ ]] || die "--rate '$rate': expected N[k|m|g|t]bit, e.g. 1gbit" ;;
            --delay) delay="$2"; shift 2 ;;
            --loss) loss="$2"; shift 2 ;;
            *) die "unknown option '$1'" ;;
        esac
    done
}

# tbf burst for a rate: 2 ms worth of bytes, at least 256 KiB. A fixed
# 256 KiB (0.2 ms at 10 Gbit/s) let a 10 Gbit/s link carry only ~7.4 Gbit/s
# here (an unshaped veth pair carries ~12); 2 ms lets it reach its rate.
tbf_burst() {
    local rate="$1" number unit bits
    [[ "$rate" =~ ^([0-9]+)([kmgt]?)bit$ ]] || die "--rate '$rate': expected N[k|m|g|t]bit, e.g. 1gbit"
    number="${BASH_REMATCH[1]}"; unit="${BASH_REMATCH[2]}"
    case "$unit" in
        k) bits=$(( number * 1000 )) ;;
        m) bits=$(( number * 1000000 )) ;;
        g) bits=$(( number * 1000000000 )) ;;
        t) bits=$(( number * 1000000000000 )) ;;
        *) bits="$number" ;;
    esac
    local burst=$(( bits / 8 / 500 ))
    [ "$burst" -ge 262144 ] || burst=262144
    echo "$burst"
}

# Bandwidth: tbf. Delay: netem when the kernel has it (this project's CI
# kernel does not: CONFIG_NET_SCH_NETEM is off, so --delay fails clearly).
# Loss and stalls: nftables (numgen random), which the CI kernel has.
apply_shape() {
    for side in src dst; do
        ns="ringvm-$name-$side"
        dev="veth-$side"
        tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
        if [ -n "$delay" ]; then
            tc -n "$ns" qdisc add dev "$dev" root handle 1: netem delay "$delay" 2>/dev/null ||
                die "--delay $delay: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM); use: hosts.sh delay $name --ms MS (a delayed TUN link)"
            [ -z "$rate" ] || tc -n "$ns" qdisc add dev "$dev" parent 1: handle 2: \
                tbf rate "$rate" burst "$(tbf_burst "$rate")" latency 50ms
        elif [ -n "$rate" ]; then
            tc -n "$ns" qdisc add dev "$dev" root handle 1: tbf rate "$rate" burst "$(tbf_burst "$rate")" latency 50ms
        fi
        set_loss "$ns" "${loss:-0}"
    done
}

# Drops PCT % of the packets leaving a namespace (0 removes the rule).
set_loss() {
    local ns="$1" pct="${2%\%}"
    ip netns exec "$ns" nft delete table inet ringvm_loss 2>/dev/null || true
    [ "$pct" = 0 ] && return 0
    [[ "$pct" =~ ^[0-9]+$ ]] && [ "$pct" -le 100 ] || die "--loss '$2': expected 0..100"
    ip netns exec "$ns" nft -f - <<NFT
table inet ringvm_loss {
    chain output {
        type filter hook output priority 0; policy accept;
        $( [ "$pct" = 100 ] && echo "drop" || echo "numgen random mod 100 < $pct drop" )
    }
}
NFT
}

case "$command" in
    up)
        shape_args "$@"
        [[ "$owner" =~ ^[0-9]+$ ]] && owner_start=$(process_identity "$owner") ||
            die "--owner '$owner': not a running process"
        "$0" down "$name"
        # The record comes first: a parallel sweep never sees our hosts
        # without an owner.
        mkdir -p "$owners"
        echo "$owner $owner_start" > "$owners/$name"
        sweep_stale
        ip netns add "$src_ns"
        ip netns add "$dst_ns"
        ip link add veth-src netns "$src_ns" type veth peer name veth-dst netns "$dst_ns"
        ip -n "$src_ns" addr add "$src_addr/24" dev veth-src
        ip -n "$dst_ns" addr add "$dst_addr/24" dev veth-dst
        for ns in "$src_ns" "$dst_ns"; do ip -n "$ns" link set lo up; done
        ip -n "$src_ns" link set veth-src up
        ip -n "$dst_ns" link set veth-dst up
        apply_shape
        ;;
    shape)
        shape_args "$@"
        apply_shape
        ;;
    link)
        state="${1:-}"
        [ "$state" = up ] || [ "$state" = down ] || die "link NAME up|down"
        ip -n "$src_ns" link set veth-src "$state"
        ;;
    stall)
        set_loss "$src_ns" 100
        set_loss "$dst_ns" 100
        ;;
    exec)
        side="${1:-}"; shift || true
        case "$side" in src) ns="$src_ns" ;; dst) ns="$dst_ns" ;; *) die "exec NAME src|dst CMD" ;; esac
        exec ip netns exec "$ns" "$@"
        ;;
    delay)
        # A second link between the hosts with a fixed one-way delay: TUN
        # devices dl-src/dl-dst joined by tests/netns/delayline (the kernel
        # has no netem: see the header of delayline.c). Its addresses:
        # `addr NAME src|dst --delayed`.
        ms=""; bin="${RINGVM_BUILD_DIR:-build}/tests/delayline"
        while [ $# -gt 0 ]; do
            case "$1" in
                --ms) ms="$2"; shift 2 ;;
                --bin) bin="$2"; shift 2 ;;
                *) die "unknown option '$1'" ;;
            esac
        done
        [[ "$ms" =~ ^[0-9]+$ ]] || die "delay NAME --ms MS: expected whole milliseconds"
        [ -x "$bin" ] || die "delay: $bin is not built (make $bin)"
        [ -d "$owners" ] || die "delay: no hosts $name (hosts.sh up first)"
        if [ -f "$owners/$name.delayline.pid" ]; then
            kill -KILL "$(cat "$owners/$name.delayline.pid")" 2>/dev/null || true
        fi
        "$bin" --delay-ms "$ms" "$src_ns" dl-src "$dst_ns" dl-dst > "$owners/$name.delayline.log" 2>&1 &
        echo $! > "$owners/$name.delayline.pid"
        for _ in $(seq 1 50); do
            grep -q '^ready$' "$owners/$name.delayline.log" 2>/dev/null && break
            kill -0 "$(cat "$owners/$name.delayline.pid")" 2>/dev/null ||
                die "delay: delayline failed: $(cat "$owners/$name.delayline.log")"
            sleep 0.1
        done
        grep -q '^ready$' "$owners/$name.delayline.log" || die "delay: delayline did not start within 5 s"
        ip -n "$src_ns" addr add "$src_delayed/32" peer "$dst_delayed/32" dev dl-src
        ip -n "$dst_ns" addr add "$dst_delayed/32" peer "$src_delayed/32" dev dl-dst
        ip -n "$src_ns" link set dl-src mtu 1500 up
        ip -n "$dst_ns" link set dl-dst mtu 1500 up
        ;;
    addr)
        if [ "${2:-}" = --delayed ]; then
            case "${1:-}" in src) echo "$src_delayed" ;; dst) echo "$dst_delayed" ;; *) die "addr NAME src|dst [--delayed]" ;; esac
        else
            case "${1:-}" in src) echo "$src_addr" ;; dst) echo "$dst_addr" ;; *) die "addr NAME src|dst [--delayed]" ;; esac
        fi
        ;;
    down)
        if [ -f "$owners/$name.delayline.pid" ]; then
            kill -KILL "$(cat "$owners/$name.delayline.pid")" 2>/dev/null || true
            rm -f "$owners/$name.delayline.pid" "$owners/$name.delayline.log"
        fi
        ip netns del "$src_ns" 2>/dev/null || true
        ip netns del "$dst_ns" 2>/dev/null || true
        rm -f "$owners/$name"
        ;;
    *)
        die "unknown command '$command'"
        ;;
esac
