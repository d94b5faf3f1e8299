#!/usr/bin/env bash
# Emulated test hosts for migration tests: two network namespaces joined by
# a veth pair, with tc shaping. Traffic never leaves the namespaces.
#
#   hosts.sh up NAME [--rate RATE] [--delay DELAY] [--loss PCT]
#                         creates NAME-src (10.213.N.1) and NAME-dst (10.213.N.2)
#   hosts.sh shape NAME [--rate RATE] [--delay DELAY] [--loss PCT]
#                         changes the shaping on both ends (netem + tbf)
#   hosts.sh link NAME up|down    cuts or restores the link (veth down/up)
#   hosts.sh stall NAME           100 % loss both ways: a link that hangs without closing
#   hosts.sh shape NAME --loss 0  ends a stall
#   hosts.sh exec NAME src|dst CMD...   runs CMD inside one host
#   hosts.sh addr NAME src|dst    prints the host's address
#   hosts.sh down NAME            removes both namespaces (idempotent)
#
# Needs root and iproute2 (scripts/install-deps.sh installs it). Callers
# register `hosts.sh down NAME` in a trap so a failing test still cleans up.
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

shape_args() {
    rate=""; delay=""; loss="0"
    while [ $# -gt 0 ]; do
        case "$1" in
            --rate) rate="$2"; shift 2 ;;
            --delay) delay="$2"; shift 2 ;;
            --loss) loss="$2"; shift 2 ;;
            *) die "unknown option '$1'" ;;
        esac
    done
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
                die "--delay $delay: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM)"
            [ -z "$rate" ] || tc -n "$ns" qdisc add dev "$dev" parent 1: handle 2: \
                tbf rate "$rate" burst 256kb latency 50ms
        elif [ -n "$rate" ]; then
            tc -n "$ns" qdisc add dev "$dev" root handle 1: tbf rate "$rate" burst 256kb latency 50ms
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
        "$0" down "$name"
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
    addr)
        case "${1:-}" in src) echo "$src_addr" ;; dst) echo "$dst_addr" ;; *) die "addr NAME src|dst" ;; esac
        ;;
    down)
        ip netns del "$src_ns" 2>/dev/null || true
        ip netns del "$dst_ns" 2>/dev/null || true
        ;;
    *)
        die "unknown command '$command'"
        ;;
esac
