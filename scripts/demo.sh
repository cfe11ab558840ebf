#!/usr/bin/env bash
# The main job, as a demo: longhaul echo on a TAP in its own network namespace, driven by Linux
# kernel clients (ping, a UDP datagram, TCP stream and request/response load), printing what it
# measured. Installs what is missing, builds, and removes everything it created on exit. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

SECS=${DEMO_SECS:-3}
NS=lh-demo-$$
TAP=lhd$$
LH=198.18.0.2
cleanup() {
  [ -n "${ECHO_PID:-}" ] && kill -TERM "$ECHO_PID" 2>/dev/null && wait "$ECHO_PID" 2>/dev/null
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "== building (cargo build --release)"
cargo build --release --quiet
BIN=$(pwd)/target/release/longhaul

echo "== network: namespace $NS, TAP $TAP (kernel 198.18.0.1/24, longhaul $LH/24)"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" tuntap add dev "$TAP" mode tap multi_queue
ip -n "$NS" addr add 198.18.0.1/24 dev "$TAP"
ip -n "$NS" link set "$TAP" up

LOG=$(mktemp)
ip netns exec "$NS" "$BIN" echo --port "tap:$TAP" --ip "$LH/24" --stats-interval 1 >"$LOG" 2>&1 &
ECHO_PID=$!
for _ in $(seq 50); do grep -q ready "$LOG" && break; sleep 0.1; done
head -1 "$LOG"

echo "== ping"
ip netns exec "$NS" ping -c 3 -i 0.2 -W 2 "$LH" | tail -2

echo "== UDP echo"
ip netns exec "$NS" python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b'hello longhaul', ('$LH', 7)); data, peer = s.recvfrom(100)
print('reply', data.decode(), 'from', peer)"

echo "== TCP stream, 4 connections, ${SECS}s (echoed bytes read back)"
ip netns exec "$NS" "$BIN" loadgen stream --target "$LH:7" --conns 4 --secs "$SECS" 2>/dev/null | grep RESULT

echo "== TCP request/response, 64 B, 8 connections, ${SECS}s"
ip netns exec "$NS" "$BIN" loadgen rr --target "$LH:7" --conns 8 --secs "$SECS" 2>/dev/null | grep RESULT

echo "== stack counters"
sleep 1.2
tail -1 "$LOG"
