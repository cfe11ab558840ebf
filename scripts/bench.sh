#!/usr/bin/env bash
# Echo throughput and request rate, HTTP requests per second (longhaul httpd vs nginx) and relay
# throughput (longhaul proxy vs socat, iperf3 through it): longhaul (on a TAP) against the Linux
# kernel (on a veth), the same load from the same client namespace in the same run. Run as root from anywhere:
#
#   scripts/bench.sh                 # 5 s per test
#   BENCH_SECS=1 scripts/bench.sh    # quick smoke test
#
# Environment: BENCH_SECS (measured seconds per test, default 5), BENCH_WARMUP (seconds before
# measuring, default 0.5), LONGHAUL_FLAGS (extra flags for `longhaul echo`, e.g. "--no-pin"),
# BENCH_SERVER_CPUS / BENCH_CLIENT_CPUS (taskset CPU lists for both echo servers / for the load
# generator; default: no affinity set), CARGO_TARGET_DIR (where cargo builds), BENCH_RESULTS
# (results directory, default bench/results), BENCH_DPDK (1/0: add the DPDK backend's echo rows,
# net_tap and af_packet; default 1 when pkg-config finds libdpdk).
#
# Topology (namespaces and links are this run's own, removed on exit; 198.18.0.0/15 only):
#
#   client ns  lhbt<pid>  198.18.0.1/24 ──TAP fd── longhaul echo 198.18.0.2/24 :7
#   client ns  lhbc<pid>  198.18.1.1/24 ──veth──── server ns lhbs<pid> 198.18.1.2/24, kernel echo :7
#   client ns  lhbd<pid>  198.18.2.1/24 ──DPDK net_tap──────── longhaul echo 198.18.2.2/24 (DPDK rows)
#   client ns  lhbk<pid>  198.18.3.1/24 ──veth── lhbp<pid> ── DPDK af_packet, longhaul echo 198.18.3.2/24
#   client ns  lhbsc<pid> 198.18.4.1/24 ──veth──── xdp ns lh-bench-xs<pid>, lhbss<pid>: longhaul echo 198.18.4.2 on AF_XDP, skb mode
#   client ns  lhbdc<pid> 198.18.5.1/24 ──veth──── xdp ns lh-bench-xd<pid>, lhbds<pid>: longhaul echo 198.18.5.2 on AF_XDP, drv mode
#
# The AF_XDP rows (echo tests only) use the same app and load as the TAP rows; their ratio is to the
# same kernel run. The client's ends of the AF_XDP veths have transmit checksum offload off (an
# AF_XDP socket on a veth sees the frame before the checksum is filled in). BENCH_XDP=0 skips them.
#
# The load comes from `longhaul loadgen` (kernel sockets) in the client namespace: `stream`
# (continuous writes, echo read back) and `rr` (64-byte request/response). Output: a table on
# stdout, the same table as markdown in $BENCH_RESULTS/echo-<date>.md, and a PNG chart next to it
# when python3 has matplotlib.
set -euo pipefail

SECS=${BENCH_SECS:-5}
WARMUP=${BENCH_WARMUP:-0.5}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${BENCH_RESULTS:-$ROOT/bench/results}

if [[ $EUID -ne 0 ]]; then
    echo "bench.sh: run as root (it creates network namespaces and a TAP)" >&2
    exit 2
fi

# --------------------------------------------------------------------------------------- build
# With DPDK rows the binary is built with the dpdk feature (a superset: the TAP rows run on it too).
BENCH_DPDK=${BENCH_DPDK:-$(pkg-config --exists libdpdk 2>/dev/null && echo 1 || echo 0)}
FEATURES=()
[[ $BENCH_DPDK == 1 ]] && FEATURES=(--features dpdk)
echo "== cargo build --release ${FEATURES[*]}"
(cd "$ROOT" && cargo build --release --quiet "${FEATURES[@]}")
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR = /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
BIN=$TARGET_DIR/release/longhaul
[[ -x $BIN ]] || { echo "bench.sh: no binary at $BIN" >&2; exit 1; }

# ------------------------------------------------------------------------------------- network
ID=$$
NS_C=lh-bench-c$ID
NS_S=lh-bench-s$ID
NS_XS=lh-bench-xs$ID
NS_XD=lh-bench-xd$ID
XDP=${BENCH_XDP:-1}
command -v ethtool >/dev/null || XDP=0
TAP=lhbt$ID
VETH_C=lhbc$ID
VETH_S=lhbs$ID
LH_IP=198.18.0.2
KERNEL_IP=198.18.1.2
PORT=7
LOGDIR=$(mktemp -d /tmp/lh-bench.XXXXXX)
SERVER_PIN=()
CLIENT_PIN=()
[[ -n ${BENCH_SERVER_CPUS:-} ]] && SERVER_PIN=(taskset -c "$BENCH_SERVER_CPUS")
[[ -n ${BENCH_CLIENT_CPUS:-} ]] && CLIENT_PIN=(taskset -c "$BENCH_CLIENT_CPUS")
PIDS=()

cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    ip netns del "$NS_C" 2>/dev/null || true
    ip netns del "$NS_S" 2>/dev/null || true
    rm -rf "/var/run/dpdk/lhbt$ID" "/var/run/dpdk/lhbp$ID" 2>/dev/null || true
    ip netns del "$NS_XS" 2>/dev/null || true
    ip netns del "$NS_XD" 2>/dev/null || true
    if [[ $rc -ne 0 ]]; then
        echo "bench.sh: failed (exit $rc); logs kept in $LOGDIR" >&2
    else
        rm -rf "$LOGDIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== namespaces $NS_C (client) and $NS_S (kernel server)"
ip netns add "$NS_C"
ip netns add "$NS_S"
ip -n "$NS_C" link set lo up
ip -n "$NS_S" link set lo up
ip -n "$NS_C" tuntap add dev "$TAP" mode tap multi_queue
ip -n "$NS_C" addr add 198.18.0.1/24 dev "$TAP"
ip -n "$NS_C" link set "$TAP" up
ip -n "$NS_C" link add "$VETH_C" type veth peer name "$VETH_S" netns "$NS_S"
ip -n "$NS_C" addr add 198.18.1.1/24 dev "$VETH_C"
ip -n "$NS_S" addr add $KERNEL_IP/24 dev "$VETH_S"
ip -n "$NS_C" link set "$VETH_C" up
ip -n "$NS_S" link set "$VETH_S" up

# AF_XDP: one veth pair and one longhaul echo per mode (a program per interface at a time).
XDP_TARGETS=()
if [[ $XDP == 1 ]]; then
    for m in skb drv; do
        if [[ $m == skb ]]; then ns=$NS_XS net=4; else ns=$NS_XD net=5; fi
        vc=lhb${m:0:1}c$ID vs=lhb${m:0:1}s$ID
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$NS_C" link add "$vc" type veth peer name "$vs" netns "$ns"
        ip -n "$NS_C" addr add 198.18.$net.1/24 dev "$vc"
        ip -n "$NS_C" link set "$vc" up
        ip -n "$ns" link set "$vs" up
        ip netns exec "$NS_C" ethtool -K "$vc" tx off >/dev/null
        # shellcheck disable=SC2086 # LONGHAUL_FLAGS is a list of flags
        ip netns exec "$ns" "${SERVER_PIN[@]}" "$BIN" echo --port "xdp:$vs:$m" --ip 198.18.$net.2/24 --listen $PORT \
            --nodelay --quiet ${LONGHAUL_FLAGS:-} >"$LOGDIR/xdp-$m.log" 2>&1 &
        PIDS+=($!)
        XDP_TARGETS+=("xdp-$m|198.18.$net.2")
    done
fi

# ------------------------------------------------------------------------------------- servers
# shellcheck disable=SC2086 # LONGHAUL_FLAGS is a list of flags
ip netns exec "$NS_C" "${SERVER_PIN[@]}" "$BIN" echo --port "tap:$TAP" --ip $LH_IP/24 --listen $PORT --nodelay --quiet \
    ${LONGHAUL_FLAGS:-} >"$LOGDIR/longhaul.log" 2>&1 &
PIDS+=($!)
LH_PID=$!
ip netns exec "$NS_S" "${SERVER_PIN[@]}" "$BIN" loadgen echo-server --listen $KERNEL_IP:$PORT >"$LOGDIR/kernel.log" 2>&1 &
PIDS+=($!)

wait_ready() { # name log pattern
    for _ in $(seq 100); do
        grep -q "$3" "$2" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench.sh: $1 did not come up; its log:" >&2
    cat "$2" >&2
    exit 1
}
wait_ready "longhaul echo" "$LOGDIR/longhaul.log" "ready"
wait_ready "kernel echo server" "$LOGDIR/kernel.log" "listening"
for t in "${XDP_TARGETS[@]}"; do
    wait_ready "longhaul echo on AF_XDP (${t%%|*})" "$LOGDIR/${t%%|*}.log" "ready"
    ip netns exec "$NS_C" ping -c 1 -W 2 "${t#*|}" >/dev/null
    echo "== ${t%%|*}: $(grep -m1 '^longhaul: xdp' "$LOGDIR/${t%%|*}.log")"
done
# ARP and a first round trip before anything is measured.
ip netns exec "$NS_C" ping -c 1 -W 2 $LH_IP >/dev/null
ip netns exec "$NS_C" ping -c 1 -W 2 $KERNEL_IP >/dev/null

# ----------------------------------------------------------------------------------------- runs
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# Results: R[<test>|<target>|<key>] = value
declare -A R
TESTS=()

# Segments the client's kernel retransmitted, and frames the kernel dropped because the TAP's queue
# was full (longhaul did not read them in time).
client_retrans() {
    ip netns exec "$NS_C" nstat -asz TcpRetransSegs | awk '$1 == "TcpRetransSegs" { print $2; f = 1 } END { if (!f) print 0 }'
}
tap_drops() {
    ip netns exec "$NS_C" cat "/sys/class/net/$TAP/statistics/tx_dropped"
}

run() { # test-name target-name ip mode conns [size]
    local test=$1 target=$2 ip=$3 mode=$4 conns=$5 size=${6:-}
    local args=(loadgen "$mode" --target "$ip:$PORT" --conns "$conns" --secs "$SECS" --warmup "$WARMUP")
    [[ -n $size ]] && args+=(--size "$size")
    local log=$LOGDIR/$test-$target.log line
    echo "-- $test on $target"
    local retrans0 drops0
    retrans0=$(client_retrans)
    drops0=$(tap_drops)
    if ! ip netns exec "$NS_C" "${CLIENT_PIN[@]}" "$BIN" "${args[@]}" >"$log" 2>"$log.err"; then
        echo "   failed: $(tail -n 3 "$log.err" | tr '\n' ' ')" >&2
    fi
    R[$test|$target|retrans]=$(($(client_retrans) - retrans0))
    R[$test|$target|tapdrops]=$(($(tap_drops) - drops0))
    line=$(grep '^RESULT ' "$log" || true)
    if [[ -z $line ]]; then
        R[$test|$target|ok]=0
        return
    fi
    echo "   $line"
    R[$test|$target|ok]=1
    for kv in $line; do
        [[ $kv == *=* ]] && R[$test|$target|${kv%%=*}]=${kv#*=}
    done
    if [[ $target == longhaul ]] && ! kill -0 "$LH_PID" 2>/dev/null; then
        echo "bench.sh: longhaul echo died; its log:" >&2
        cat "$LOGDIR/longhaul.log" >&2
        exit 1
    fi
}

for t in "stream 1|stream|1|" "stream 8|stream|8|" "rr 1|rr|1|64" "rr 16|rr|16|64"; do
    IFS='|' read -r name mode conns size <<<"$t"
    TESTS+=("$name")
    run "$name" longhaul $LH_IP "$mode" "$conns" "$size"
    for t in "${XDP_TARGETS[@]}"; do
        run "$name" "${t%%|*}" "${t#*|}" "$mode" "$conns" "$size"
    done
    run "$name" linux $KERNEL_IP "$mode" "$conns" "$size"
done

# -------------------------------------------------------------------------------- DPDK echo rows
# The same echo app and load on the DPDK backend: a net_tap vdev (DPDK makes the TAP) and net_af_packet
# on a veth end, one at a time, while the TAP echo above idles.
DPDK_TARGETS=()
dpdk_echo() { # target ip eal-args: starts longhaul echo on dpdk:EAL and waits for its ready line
    local target=$1 ip=$2 eal=$3
    # shellcheck disable=SC2086 # LONGHAUL_FLAGS is a list of flags
    ip netns exec "$NS_C" "${SERVER_PIN[@]}" "$BIN" echo --port "dpdk:$eal" --ip "$ip/24" --listen $PORT \
        --nodelay --quiet ${LONGHAUL_FLAGS:-} >"$LOGDIR/$target.log" 2>&1 &
    DPDK_PID=$!
    PIDS+=($DPDK_PID)
    wait_ready "longhaul echo ($target)" "$LOGDIR/$target.log" "ready"
}
dpdk_rows() { # target ip
    ip netns exec "$NS_C" ping -c 1 -W 2 "$2" >/dev/null
    for t in "stream 1|stream|1|" "stream 8|stream|8|" "rr 1|rr|1|64" "rr 16|rr|16|64"; do
        IFS='|' read -r name mode conns size <<<"$t"
        run "$name" "$1" "$2" "$mode" "$conns" "$size"
    done
    grep '^longhaul dpdk:' "$LOGDIR/$1.log" | sed 's/^/   /' || true
    kill "$DPDK_PID" 2>/dev/null || true
    wait "$DPDK_PID" 2>/dev/null || true
    DPDK_TARGETS+=("$1")
}
if [[ $BENCH_DPDK == 1 ]]; then
    echo "== DPDK net_tap (lhbd$ID)"
    dpdk_echo dpdk-tap 198.18.2.2 "--vdev=net_tap0,iface=lhbd$ID --no-huge --no-pci -m 512 --file-prefix lhbt$ID"
    ip -n "$NS_C" addr add 198.18.2.1/24 dev "lhbd$ID"
    ip -n "$NS_C" link set "lhbd$ID" up
    dpdk_rows dpdk-tap 198.18.2.2
    echo "== DPDK af_packet (veth lhbk$ID / lhbp$ID)"
    ip -n "$NS_C" link add "lhbk$ID" type veth peer name "lhbp$ID"
    ip -n "$NS_C" addr add 198.18.3.1/24 dev "lhbk$ID"
    # af_packet takes frames as the kernel queued them: no partial checksums, no GSO segments.
    ip netns exec "$NS_C" ethtool -K "lhbk$ID" tx off tso off gso off >/dev/null
    ip -n "$NS_C" link set "lhbk$ID" up
    ip -n "$NS_C" link set "lhbp$ID" up
    dpdk_echo dpdk-afp 198.18.3.2 "--vdev=net_af_packet0,iface=lhbp$ID --no-huge --no-pci -m 512 --file-prefix lhbp$ID"
    dpdk_rows dpdk-afp 198.18.3.2
fi

# ------------------------------------------------------------- httpd vs nginx, proxy vs socat
# The echo server gives the TAP to the next app (a TAP queue has one reader).
kill "$LH_PID" 2>/dev/null || true
wait "$LH_PID" 2>/dev/null || true
WWW=$LOGDIR/www
mkdir -p "$WWW"
head -c 1024 /dev/zero | tr '\0' a >"$WWW/1k.bin"

lh_start() { # app args...: starts a longhaul app on the TAP and waits for its ready line
    local app=$1
    shift
    ip netns exec "$NS_C" "${SERVER_PIN[@]}" "$BIN" "$app" --port "tap:$TAP" --ip $LH_IP/24 --quiet \
        ${LONGHAUL_FLAGS:-} "$@" >"$LOGDIR/$app.log" 2>&1 &
    LH_PID=$!
    PIDS+=($LH_PID)
    wait_ready "longhaul $app" "$LOGDIR/$app.log" "ready"
}
lh_stop() {
    kill "$LH_PID" 2>/dev/null || true
    wait "$LH_PID" 2>/dev/null || true
}
record() { # test target key value
    R[$1|$2|ok]=1
    R[$1|$2|$3]=$4
}

if command -v nginx >/dev/null && command -v wrk >/dev/null; then
    TESTS+=("http 1KiB")
    cat >"$LOGDIR/nginx.conf" <<NGINX
worker_processes 1;
pid $LOGDIR/nginx.pid;
error_log $LOGDIR/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    server { listen $KERNEL_IP:80 reuseport; root $WWW; keepalive_requests 1000000; }
}
NGINX
    ip netns exec "$NS_S" "${SERVER_PIN[@]}" nginx -c "$LOGDIR/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
    lh_start httpd --listen 80 --root "$WWW"
    sleep 0.5
    for target in longhaul linux; do
        ip=$LH_IP
        [[ $target == linux ]] && ip=$KERNEL_IP
        echo "-- http 1KiB on $target (wrk -c 50)"
        out=$(ip netns exec "$NS_C" "${CLIENT_PIN[@]}" wrk -t 1 -c 50 -d "${SECS}s" "http://$ip/1k.bin" 2>&1 || true)
        rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
        errs=$(grep -c "Socket errors\|Non-2xx" <<<"$out" || true)
        echo "   requests/s ${rps:-?} (error lines: $errs)"
        [[ -n $rps ]] && record "http 1KiB" $target rps "$rps"
        [[ $errs != 0 ]] && R[http 1KiB|$target|errors]=$errs
    done
    lh_stop
else
    echo "-- http: skipped (needs nginx and wrk)"
fi

if command -v iperf3 >/dev/null && command -v socat >/dev/null; then
    TESTS+=("proxy iperf3")
    # Upstream: one iperf3 server in the client namespace, reached over the TAP (longhaul proxy)
    # or the veth (socat relay in the server namespace).
    ip netns exec "$NS_C" iperf3 -s -p 5301 >"$LOGDIR/iperf3-s.log" 2>&1 &
    PIDS+=($!)
    lh_start proxy --listen 5201 --upstream 198.18.0.1:5301 --nodelay
    ip netns exec "$NS_S" "${SERVER_PIN[@]}" socat TCP-LISTEN:5201,bind=$KERNEL_IP,reuseaddr,fork TCP:198.18.1.1:5301 &
    PIDS+=($!)
    sleep 0.5
    for target in longhaul linux; do
        ip=$LH_IP
        [[ $target == linux ]] && ip=$KERNEL_IP
        echo "-- proxy iperf3 on $target"
        bps=$(ip netns exec "$NS_C" "${CLIENT_PIN[@]}" iperf3 -c "$ip" -p 5201 -t "$SECS" -J 2>/dev/null |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])' 2>/dev/null || true)
        if [[ -n $bps ]]; then
            g=$(awk -v b="$bps" 'BEGIN { printf "%.3f", b / 1e9 }')
            echo "   $g Gbit/s"
            record "proxy iperf3" $target gbit_per_s "$g"
        fi
    done
    lh_stop
else
    echo "-- proxy: skipped (needs iperf3 and socat)"
fi

# ---------------------------------------------------------------------------------------- table
# Rows: label | key | unit | higher-is-better
ROWS=()
for name in "${TESTS[@]}"; do
    if [[ $name == stream* ]]; then
        ROWS+=("$name conn echo|$name|gbit_per_s|Gbit/s|up")
    elif [[ $name == http* ]]; then
        ROWS+=("$name wrk -c 50 (httpd vs nginx)|$name|rps|req/s|up")
    elif [[ $name == proxy* ]]; then
        ROWS+=("$name (proxy vs socat)|$name|gbit_per_s|Gbit/s|up")
    else
        ROWS+=("$name conn 64 B|$name|tps|tx/s|up")
        ROWS+=("$name conn 64 B p50|$name|p50_us|µs|down")
        ROWS+=("$name conn 64 B p99|$name|p99_us|µs|down")
    fi
done
# The same rows for AF_XDP (echo tests only), against the same kernel run: label|..|target.
TAP_ROWS=("${ROWS[@]}")
for t in "${XDP_TARGETS[@]}"; do
    x=${t%%|*}
    for row in "${TAP_ROWS[@]}"; do
        [[ $row == stream* || $row == rr* ]] && ROWS+=("${row%%|*} [AF_XDP ${x#xdp-}]|${row#*|}|$x")
    done
done

cell() { # test target key
    if [[ ${R[$1|$2|ok]:-0} == 1 ]]; then
        local v=${R[$1|$2|$3]:-?} e=${R[$1|$2|errors]:-0}
        [[ $e != 0 ]] && v="$v (errors $e)"
        echo "$v"
    else
        echo "FAIL"
    fi
}

ratio() { # a b
    awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "-" }'
}

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
DATE=$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
MD=$RESULTS/echo-$DATE.md
CSV=$LOGDIR/table.csv
: >"$CSV"
{
    echo "# longhaul echo vs Linux — $DATE"
    echo
    echo "- host: $(uname -srm), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
    echo "- commit: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
    echo "- $SECS s measured per test after ${WARMUP} s warm-up; client: \`longhaul loadgen\` (kernel sockets, TCP_NODELAY)"
    echo "- longhaul: \`longhaul echo --port tap:IFACE --nodelay ${LONGHAUL_FLAGS:-}\`, 1 core, kernel client through a TAP"
    echo "- linux: \`longhaul loadgen echo-server\` (thread per connection) in another namespace, through a veth"
    [[ ${#XDP_TARGETS[@]} -gt 0 ]] && echo "- [AF_XDP skb/drv] rows: the same \`longhaul echo\` on \`--port xdp:VETH:skb|drv\` (copy mode: a veth offers no zero-copy), kernel client through a veth with tx checksum offload off; the ratio is to the same linux run"
    echo "- not the same wire: a veth passes 64 KB GSO/GRO segments, the TAP (no vnet header) 1514-byte frames, one syscall each"
    echo "- longhaul busy-polls, the kernel server sleeps: on a VM each wake-up of an idle vCPU can cost tens of µs, which dominates rr with few connections on an otherwise idle machine"
    echo "- CPU affinity: servers ${BENCH_SERVER_CPUS:-any}, client ${BENCH_CLIENT_CPUS:-any}; load average at start $LOAD_START, at end $LOAD_END (anything else running skews the numbers)"
    echo "- ratio = longhaul / linux (above 1 is better for longhaul on throughput rows, below 1 on latency rows)"
    echo
    echo "| test | longhaul | linux | ratio |"
    echo "|---|---:|---:|---:|"
} >"$MD"

printf '\n%-22s %16s %16s %7s\n' test longhaul linux ratio
for row in "${ROWS[@]}"; do
    IFS='|' read -r label test key unit dir target <<<"$row"
    a=$(cell "$test" "${target:-longhaul}" "$key")
    b=$(cell "$test" linux "$key")
    r=$(ratio "$a" "$b")
    printf '%-22s %16s %16s %7s\n' "$label ($unit)" "$a" "$b" "$r"
    echo "| $label ($unit) | $a | $b | $r |" >>"$MD"
    echo "$label ($unit)|$a|$b|$dir" >>"$CSV"
done
{
    echo
    echo "Diagnostics per test (longhaul / linux): segments the client retransmitted; frames the kernel"
    echo "dropped at the TAP because longhaul had not read them yet."
    echo
    echo "| test | client retransmits | TAP drops |"
    echo "|---|---:|---:|"
    for name in "${TESTS[@]}"; do
        [[ -n ${R[$name|longhaul|retrans]:-} ]] || continue
        echo "| $name | ${R[$name|longhaul|retrans]:-?} / ${R[$name|linux|retrans]:-?} | ${R[$name|longhaul|tapdrops]:-?} |"
    done
} >>"$MD"
printf '\n%-22s %22s %10s\n' test "client retransmits" "TAP drops"
for name in "${TESTS[@]}"; do
    [[ -n ${R[$name|longhaul|retrans]:-} ]] || continue
    printf '%-22s %22s %10s\n' "$name" "${R[$name|longhaul|retrans]:-?} / ${R[$name|linux|retrans]:-?}" \
        "${R[$name|longhaul|tapdrops]:-?}"
done
echo
echo "markdown: $MD"

# ----------------------------------------------------------------------------- DPDK table
if [[ ${#DPDK_TARGETS[@]} -gt 0 ]]; then
    {
        echo
        echo "DPDK backend, same echo app and load (\`--port dpdk:\"--vdev=... --no-huge --no-pci -m 512\"\`,"
        echo "1 core): net_tap (a TAP DPDK creates; read/write per frame, checksums verified and filled by the"
        echo "driver in software) and net_af_packet on a veth (kernel offloads off on the peer). Ratios to the"
        echo "kernel server of this run."
        echo
        echo "| test | dpdk net_tap | ratio | dpdk af_packet | ratio | linux |"
        echo "|---|---:|---:|---:|---:|---:|"
    } >>"$MD"
    printf '\n%-22s %14s %7s %14s %7s %14s\n' "DPDK test" "net_tap" ratio "af_packet" ratio linux
    for name in "${TESTS[@]}"; do
        for row in "${ROWS[@]}"; do
            IFS='|' read -r label test key unit dir <<<"$row"
            [[ $test == "$name" && $name != http* && $name != proxy* ]] || continue
            a=$(cell "$test" dpdk-tap "$key")
            b=$(cell "$test" dpdk-afp "$key")
            l=$(cell "$test" linux "$key")
            printf '%-22s %14s %7s %14s %7s %14s\n' "$label ($unit)" "$a" "$(ratio "$a" "$l")" "$b" "$(ratio "$b" "$l")" "$l"
            echo "| $label ($unit) | $a | $(ratio "$a" "$l") | $b | $(ratio "$b" "$l") | $l |" >>"$MD"
        done
    done
fi

# ---------------------------------------------------------------------------------------- chart
PNG=${MD%.md}.png
if python3 -c 'import matplotlib' 2>/dev/null; then
    python3 - "$CSV" "$PNG" <<'EOF'
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = []
for line in open(sys.argv[1]):
    label, a, b, d = line.rstrip("\n").split("|")
    try:
        rows.append((label, float(a.split()[0]), float(b.split()[0]), d))
    except ValueError:
        rows.append((label, 0.0, 0.0, d))
cols = 4
nrows = (len(rows) + cols - 1) // cols
fig, axes = plt.subplots(nrows, cols, figsize=(2.4 * cols, 3.0 * nrows), squeeze=False)
axes = axes.flatten()
for ax in axes[len(rows):]:
    ax.axis("off")
for ax, (label, a, b, d) in zip(axes, rows):
    bars = ax.bar(["longhaul", "linux"], [a, b], color=["#d9822b", "#4a7fb0"])
    ax.set_title(label + ("" if d == "up" else "\n(lower is better)"), fontsize=8)
    ax.tick_params(labelsize=7)
    for bar, v in zip(bars, (a, b)):
        ax.annotate(f"{v:.3g}", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                    va="bottom", fontsize=7)
fig.suptitle("echo through TAP (longhaul) vs veth (Linux)", fontsize=10)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
EOF
    echo "chart: $PNG"
    printf '\n![chart](%s)\n' "$(basename "$PNG")" >>"$MD"
else
    echo "chart: skipped (python3 has no matplotlib; pip install matplotlib)"
fi
