#!/usr/bin/env bash
# Checks that longhaul links DPDK statically (the appliance build, README "DPDK backend") and that
# the binary works: builds with LONGHAUL_DPDK_STATIC=net_tap,net_af_packet into its own target
# directory (unoptimised, to keep it quick), checks that no DPDK shared library is linked, and
# answers a ping over a net_tap port in a private namespace. Run as root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${DPDK_STATIC_TARGET_DIR:-$ROOT/target/dpdk-static}
cd "$ROOT"
echo "== LONGHAUL_DPDK_STATIC=net_tap,net_af_packet cargo build --features dpdk --bin longhaul"
LONGHAUL_DPDK_STATIC=net_tap,net_af_packet CARGO_PROFILE_DEV_DEBUG=0 \
    cargo build --quiet --features dpdk --bin longhaul --target-dir "$DIR"
BIN=$DIR/debug/longhaul
if ldd "$BIN" | grep -q librte_; then
    echo "dpdk-static-check: $BIN still links DPDK shared libraries:" >&2
    ldd "$BIN" | grep librte_ >&2
    exit 1
fi
NS=lh-dstat$$
IF=lhds$$
PREFIX=lhds$$
PID=
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "/var/run/dpdk/$PREFIX"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
LOG=$(mktemp)
ip netns exec "$NS" "$BIN" echo --quiet --ip 198.18.1.2/24 \
    --port "dpdk:--vdev=net_tap0,iface=$IF --no-huge --no-pci -m 512 --file-prefix $PREFIX" >"$LOG" 2>&1 &
PID=$!
for _ in $(seq 100); do
    grep -q ready "$LOG" && break
    kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
    sleep 0.1
done
ip -n "$NS" addr add 198.18.1.1/24 dev "$IF"
ip -n "$NS" link set "$IF" up
ip netns exec "$NS" ping -c 2 -i 0.2 -W 2 198.18.1.2 >/dev/null
echo "static DPDK build: $(du -h "$BIN" | cut -f1), no librte_*.so, ping over net_tap answered"
