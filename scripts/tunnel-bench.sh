#!/usr/bin/env bash
# The tunnel benchmark (issue 9): on one emulated long lossy path (default RTT 250 ms, random loss
# 1e-2 each way, 100 Mbit/s, 1-BDP drop-tail queue, built with `longhaul netem` as
# scripts/lfn-bench.sh builds its paths), (a) bulk goodput and (b) the latency of small requests
# (a 1 KiB HTTP GET every 100 ms over a pool of keep-alive connections, p50/p99), for:
#   cubic, bbr    direct TCP, Linux CUBIC / BBR (kernel sockets at both ends)
#   longhaul      direct longhaul TCP as the sender of the long leg (bulk: `longhaul perf client`;
#                 requests: a kernel client through `longhaul proxy`)
#   tunnel-bbr, tunnel-cubic
#                 through `longhaul tunnel` (client on the sender side, server across the
#                 emulator, the kernel target behind it), QUIC with quinn's BBR / CUBIC
# Run as root from anywhere:
#
#   scripts/tunnel-bench.sh            # 5 senders x (30 s bulk + 30 s requests)  (~6 min)
#   scripts/tunnel-bench.sh --quick    # 5 senders x (5 s bulk + 5 s requests)    (~1.5 min)
#
# Environment: TB_SECS (bulk seconds, default 30, 5 with --quick), TB_REQ_SECS (seconds of
# requests, the same by default), TB_RTT (ms, 250), TB_LOSS (1e-2), TB_MBIT (100), TB_SEED (netem
# seed, 1), TB_SENDERS (default "cubic bbr longhaul tunnel-bbr tunnel-cubic"), TB_TUNNEL_FLAGS
# (extra flags for both tunnel ends, e.g. "--stream-window 8M"), TB_RESULTS (default
# bench/results), TB_NICE (niceness of everything on the measured path, default -10, as
# lfn-bench.sh's LFN_NICE), CARGO_TARGET_DIR, TB_KEEP=1 (keep the logs).
#
# Topology (namespaces, TAPs and bridges are this run's own and removed on exit, also on failure;
# addresses from 198.18.0.0/15 only; only per-namespace sysctls are set):
#
#   ns S (sender side)                          ns P                      ns R (far side)
#   198.18.0.1/24 kernel clients (bridge)       longhaul netem            198.18.0.2/24 kernel (bridge):
#   198.18.0.3/24 longhaul on TAP L: perf       a ──delay/loss/rate── b   iperf3 -s, HTTP :8001 (CUBIC)
#     client, proxy or tunnel client                                      and :8002 (BBR)
#   bridge { TAP L, TAP a } ─────────────────────┘                └────── bridge { TAP b, TAP T }
#                                                                         198.18.0.4/24 tunnel server (TAP T)
#
# CPU placement as lfn-bench.sh: the emulator on CPU 0, longhaul's cores on CPU 1 (both tunnel
# ends share it), this session's autogroup at TB_NICE.
set -euo pipefail

MODE=full
for arg in "$@"; do
    case $arg in
    --quick) MODE=quick ;;
    -h | --help)
        sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "tunnel-bench.sh: unknown argument '$arg' (use --quick)" >&2
        exit 2
        ;;
    esac
done
CMDLINE="scripts/tunnel-bench.sh${*:+ $*}"

if [[ $MODE == quick ]]; then SECS=${TB_SECS:-5}; else SECS=${TB_SECS:-30}; fi
REQ_SECS=${TB_REQ_SECS:-$SECS}
RTT=${TB_RTT:-250} LOSS=${TB_LOSS:-1e-2} MBIT=${TB_MBIT:-100} SEED=${TB_SEED:-1}
# shellcheck disable=SC2206 # word splitting wanted
SENDERS=(${TB_SENDERS:-cubic bbr longhaul tunnel-bbr tunnel-cubic})
# shellcheck disable=SC2206
TUNNEL_FLAGS=(${TB_TUNNEL_FLAGS:-})
NICE="nice -n ${TB_NICE:--10}"
# Niceness only ranks tasks within one autogroup (one per session): give this session the same
# priority against other sessions' work on a shared machine.
echo "${TB_NICE:--10}" >/proc/self/autogroup 2>/dev/null || true
NETEM_CPU=0 LH_CPU=$(($(nproc) > 1 ? 1 : 0))
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${TB_RESULTS:-$ROOT/bench/results}

if [[ $EUID -ne 0 ]]; then
    echo "tunnel-bench.sh: run as root (it creates network namespaces, TAPs and bridges)" >&2
    exit 2
fi
for tool in ip iperf3 python3; do
    command -v $tool >/dev/null || {
        echo "tunnel-bench.sh: needs $tool (apt-get install iproute2 iperf3 python3)" >&2
        exit 2
    }
done
if ! grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control; then
    modprobe tcp_bbr 2>/dev/null || true
    grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control || {
        echo "tunnel-bench.sh: the kernel has no BBR (tcp_bbr)" >&2
        exit 2
    }
fi
HAVE_PLOT=1
python3 -c 'import matplotlib' 2>/dev/null || HAVE_PLOT=0

echo "== cargo build --release"
(cd "$ROOT" && cargo build --release --quiet)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR = /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
BIN=$TARGET_DIR/release/longhaul
[[ -x $BIN ]] || {
    echo "tunnel-bench.sh: no binary at $BIN" >&2
    exit 1
}

# ------------------------------------------------------------------------------ state, cleanup
ID=$$
LOGDIR=$(mktemp -d /tmp/lh-tunbench.XXXXXX)
PIDS=() # every background process this script started
NS_P=lh-tb-$ID-p NS_S=lh-tb-$ID-s NS_R=lh-tb-$ID-r
NSS=()
TAP_A=tba$ID TAP_B=tbb$ID TAP_L=tbl$ID TAP_T=tbt$ID BR_S=tbbs$ID BR_R=tbbr$ID
# Fixed MACs: the instances on TAP L and TAP T come and go, the kernels' ARP caches stay.
MAC_L=02:00:00:00:1b:03 MAC_T=02:00:00:00:1b:04

cleanup() {
    local rc=$?
    trap - EXIT
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    if [[ $rc -ne 0 ]]; then
        echo "tunnel-bench.sh: failed (exit $rc); logs kept in $LOGDIR" >&2
    elif [[ -n ${TB_KEEP:-} ]]; then
        echo "tunnel-bench.sh: logs kept in $LOGDIR (TB_KEEP)"
    else
        rm -rf "$LOGDIR"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- helpers (python)
# server: a minimal HTTP/1.1 keep-alive server answering every GET with 1 KiB in one write, its
# listening socket (and so every accepted one) on the given congestion control, Nagle off.
# client: a GET every 100 ms for SECS seconds, whatever is still outstanding, each on an idle
# keep-alive connection from a pool of 16 opened beforehand (a new one when none is idle, its
# handshake then counted), timed from the request's write to the body's last byte. Prints JSON:
# requests sent and answered, p50/p99/max in ms, errors, connections opened.
cat >"$LOGDIR/http.py" <<'EOF'
import json, queue, socket, sys, threading, time

POOL = 16

BODY = b"x" * 1024
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nContent-Type: text/plain\r\n\r\n" + BODY

def server(ip, port, cc):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    ls.bind((ip, port))
    ls.listen(64)
    print("http ready", flush=True)
    def handle(c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    x = c.recv(4096)
                    if not x:
                        return
                    buf += x
                _, _, buf = buf.partition(b"\r\n\r\n")
                c.sendall(RESPONSE)
        except OSError:
            pass
        finally:
            c.close()
    while True:
        c, _ = ls.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()

def client(host, port, secs, cc):
    lat, errors, opened, lock = [], [0], [0], threading.Lock()
    idle = queue.LifoQueue()
    req = ("GET /1k HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode()

    def connect():
        s = socket.socket()
        if cc != "-":
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(30)
        s.connect((host, port))
        with lock:
            opened[0] += 1
        return s

    def one():
        try:
            s = idle.get_nowait()
        except queue.Empty:
            s = None
        try:
            if s is None:
                s = connect()  # the pool ran dry: the handshake counts
            t = time.monotonic()
            s.sendall(req)
            got = 0
            while got < len(RESPONSE):
                x = s.recv(65536)
                if not x:
                    raise EOFError("closed")
                got += len(x)
            with lock:
                lat.append(time.monotonic() - t)
            idle.put(s)
        except Exception:
            with lock:
                errors[0] += 1
            if s is not None:
                s.close()

    for _ in range(POOL):  # warm connections, so that requests do not pay for handshakes
        idle.put(connect())
    threads, start = [], time.monotonic()
    k = 0
    while time.monotonic() < start + secs:
        th = threading.Thread(target=one, daemon=True)
        th.start()
        threads.append(th)
        k += 1
        time.sleep(max(0.0, start + k * 0.1 - time.monotonic()))
    for th in threads:
        th.join(timeout=60)
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else None
    print(json.dumps({"sent": k, "count": len(lat), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                      "max_ms": lat[-1] * 1e3 if lat else None, "errors": errors[0],
                      "connections": opened[0]}))

if sys.argv[1] == "server":
    server(sys.argv[2], int(sys.argv[3]), sys.argv[4])
else:
    client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
EOF

wait_for() { # name log pattern [tenths]
    for _ in $(seq "${4:-100}"); do
        grep -q "$3" "$2" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "tunnel-bench.sh: $1 did not come up; its log:" >&2
    cat "$2" >&2
    exit 1
}
sysctl_ns() { ip netns exec "$1" sysctl -qw "$2" >/dev/null; }
spawn() { # log command...: runs in the background, remembered for cleanup; the pid in $BG
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    BG=$!
    PIDS+=("$BG")
}
stop() { # pid
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# ------------------------------------------------------------------------------- the topology
build_path() {
    for ns in "$NS_P" "$NS_S" "$NS_R"; do
        ip netns add "$ns"
        NSS+=("$ns")
        ip -n "$ns" link set lo up
        sysctl_ns "$ns" net.ipv6.conf.all.disable_ipv6=1
        sysctl_ns "$ns" net.ipv6.conf.default.disable_ipv6=1
    done
    for ns in "$NS_S" "$NS_R"; do
        sysctl_ns "$ns" "net.ipv4.tcp_rmem=4096 131072 67108864"
        sysctl_ns "$ns" "net.ipv4.tcp_wmem=4096 16384 67108864"
        sysctl_ns "$ns" net.ipv4.tcp_no_metrics_save=1
    done
    local nargs=(--delay "$((RTT / 2))ms" --rate "${MBIT}mbit" --queue 1bdp)
    [[ $LOSS != 0 ]] && nargs+=(--loss "$LOSS")
    spawn "$LOGDIR/netem.log" $NICE taskset -c $NETEM_CPU ip netns exec "$NS_P" "$BIN" netem \
        --a "tap:$TAP_A" --b "tap:$TAP_B" --quiet --seed "$SEED" "${nargs[@]}"
    NETEM_PID=$BG
    NETEM_ARGS="${nargs[*]} --seed $SEED"
    wait_for "longhaul netem" "$LOGDIR/netem.log" "netem ready"
    # The emulator keeps its open TAPs when they move (see lfn-bench.sh).
    ip -n "$NS_P" link set "$TAP_A" netns "$NS_S"
    ip -n "$NS_P" link set "$TAP_B" netns "$NS_R"
    ip -n "$NS_S" link add "$BR_S" type bridge stp_state 0 forward_delay 0
    ip -n "$NS_S" tuntap add dev "$TAP_L" mode tap multi_queue
    ip -n "$NS_S" link set "$TAP_A" master "$BR_S"
    ip -n "$NS_S" link set "$TAP_L" master "$BR_S"
    ip -n "$NS_S" addr add 198.18.0.1/24 dev "$BR_S"
    for l in "$TAP_A" "$TAP_L" "$BR_S"; do ip -n "$NS_S" link set "$l" up; done
    ip -n "$NS_R" link add "$BR_R" type bridge stp_state 0 forward_delay 0
    ip -n "$NS_R" tuntap add dev "$TAP_T" mode tap multi_queue
    ip -n "$NS_R" link set "$TAP_B" master "$BR_R"
    ip -n "$NS_R" link set "$TAP_T" master "$BR_R"
    ip -n "$NS_R" addr add 198.18.0.2/24 dev "$BR_R"
    for l in "$TAP_B" "$TAP_T" "$BR_R"; do ip -n "$NS_R" link set "$l" up; done
    spawn "$LOGDIR/iperf3-s.log" $NICE ip netns exec "$NS_R" iperf3 -s -B 198.18.0.2
    spawn "$LOGDIR/http-cubic.log" $NICE ip netns exec "$NS_R" python3 "$LOGDIR/http.py" server 198.18.0.2 8001 cubic
    wait_for "HTTP server (cubic)" "$LOGDIR/http-cubic.log" "http ready"
    spawn "$LOGDIR/http-bbr.log" $NICE ip netns exec "$NS_R" python3 "$LOGDIR/http.py" server 198.18.0.2 8002 bbr
    wait_for "HTTP server (bbr)" "$LOGDIR/http-bbr.log" "http ready"
    sleep 0.3
    # ARP and a first round trip (any of five answers: the path loses some).
    ip netns exec "$NS_S" ping -c 5 -i 0.2 -W 3 198.18.0.2 >/dev/null || {
        echo "tunnel-bench.sh: no ping through the emulated path; netem log:" >&2
        cat "$LOGDIR/netem.log" >&2
        exit 1
    }
}

# --------------------------------------------------------------------- the longhaul instances
# tunnel_up CC TARGET_PORT LISTEN_PORT: a tunnel server in R (TAP T) towards 198.18.0.2:TARGET and
# a client in S (TAP L) listening on LISTEN, connected.
tunnel_up() {
    local cc=$1 target=$2 listen=$3 n=$((++TUNNELS))
    spawn "$LOGDIR/tunnel-server-$n.log" $NICE ip netns exec "$NS_R" "$BIN" tunnel server --port "tap:$TAP_T" \
        --ip 198.18.0.4/24 --mac $MAC_T --listen 4433 --target "198.18.0.2:$target" --cc "$cc" \
        --cert-dir "$LOGDIR/certs" --cpus "$LH_CPU" --no-control --quiet "${TUNNEL_FLAGS[@]}"
    TS_PID=$BG
    wait_for "tunnel server" "$LOGDIR/tunnel-server-$n.log" "ready"
    local pin
    pin=$(sed -n 's/.*fingerprint \(sha256:[0-9a-f]*\).*/\1/p' "$LOGDIR/tunnel-server-$n.log" | head -n 1)
    TC_CTL=$LOGDIR/tunnel-client-$n.sock
    spawn "$LOGDIR/tunnel-client-$n.log" $NICE ip netns exec "$NS_S" "$BIN" tunnel client --port "tap:$TAP_L" \
        --ip 198.18.0.3/24 --mac $MAC_L --listen "$listen" --server 198.18.0.4:4433 --pin "$pin" --cc "$cc" \
        --cpus "$LH_CPU" --control "$TC_CTL" --quiet "${TUNNEL_FLAGS[@]}"
    TC_PID=$BG
    wait_for "tunnel client" "$LOGDIR/tunnel-client-$n.log" "connected to" 300
}
tunnel_down() {
    stop "$TC_PID"
    stop "$TS_PID"
}
TUNNELS=0

# ----------------------------------------------------------------------------------- the runs
declare -A BULK LAT QS # BULK[sender]="mbit|err"; LAT[sender]="count|p50|p99|max|errors"; QS: QUIC stats
RUN_I=0 RUN_TOTAL=$((${#SENDERS[@]} * 2)) T_START=$(date +%s)
progress() { # label result
    local el=$(($(date +%s) - T_START))
    printf '[%d/%d] %-34s %s  (elapsed %dm%02ds)\n' "$RUN_I" "$RUN_TOTAL" "$1" "$2" $((el / 60)) $((el % 60))
}
iperf_mbit() { # json-file -> "mbit|error"
    python3 - "$1" <<'EOF'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as e:
    print("|no JSON (%s)" % e.__class__.__name__); sys.exit()
rx = j.get("end", {}).get("sum_received", {})
if rx.get("bytes", 0) > 0:
    print("%.1f|" % (rx["bits_per_second"] / 1e6))
else:
    print("|" + str(j.get("error", "no data")).replace("|", "/")[:80])
EOF
}
quic_stats() { # control socket -> "rtt_ms lost/sent" of the tunnel client's connection
    ip netns exec "$NS_S" "$BIN" stat --socket "$1" --json 2>/dev/null | python3 -c '
import json, sys
lines = sys.stdin.read().splitlines()
try:
    c = json.loads(lines[1])["app"]["tunnel"]["connections"][0]
    print("%.0f|%d|%d" % (c["rtt_us"] / 1e3, c["lost_packets"], c["sent_packets"]))
except Exception:
    print("||")'
}

bulk() { # sender
    local s=$1 js=$LOGDIR/bulk-$1.json
    local limit=$((SECS + 60))
    case $s in
    cubic | bbr)
        $NICE ip netns exec "$NS_S" timeout $limit iperf3 -c 198.18.0.2 -t "$SECS" -C "$s" -J >"$js" 2>"$js.err" || true
        ;;
    longhaul)
        $NICE ip netns exec "$NS_S" timeout $limit "$BIN" perf client --port "tap:$TAP_L" --ip 198.18.0.3/24 \
            --mac $MAC_L --connect 198.18.0.2 -t "$SECS" --json --no-control --cpus "$LH_CPU" \
            --rmem 64M --wmem 64M --nodelay --cc bbr --quiet >"$js" 2>"$js.err" || true
        ;;
    tunnel-*)
        tunnel_up "${s#tunnel-}" 5201 5201
        $NICE ip netns exec "$NS_S" timeout $limit iperf3 -c 198.18.0.3 -t "$SECS" -J >"$js" 2>"$js.err" || true
        QS[$s]=$(quic_stats "$TC_CTL")
        tunnel_down
        ;;
    esac
    BULK[$s]=$(iperf_mbit "$js")
    kill -0 "$NETEM_PID" 2>/dev/null || {
        echo "tunnel-bench.sh: netem died; its log:" >&2
        cat "$LOGDIR/netem.log" >&2
        exit 1
    }
    sleep 2 # the bottleneck queue drains before the next run
}

requests() { # sender
    local s=$1 out=$LOGDIR/req-$1.json host=198.18.0.2 port=8001 cc=$1 proxy=''
    case $s in
    bbr) port=8002 ;;
    longhaul)
        spawn "$LOGDIR/proxy.log" $NICE ip netns exec "$NS_S" "$BIN" proxy --port "tap:$TAP_L" --ip 198.18.0.3/24 \
            --mac $MAC_L --listen 8080 --upstream 198.18.0.2:8001 --upstream-wmem 64M --upstream-rmem 64M \
            --nodelay --quiet --no-control --cpus "$LH_CPU"
        proxy=$BG
        wait_for "longhaul proxy" "$LOGDIR/proxy.log" "ready"
        host=198.18.0.3 port=8080 cc=-
        ;;
    tunnel-*)
        tunnel_up "${s#tunnel-}" 8001 8080
        host=198.18.0.3 port=8080 cc=-
        ;;
    esac
    $NICE ip netns exec "$NS_S" timeout $((REQ_SECS + 90)) python3 "$LOGDIR/http.py" client $host $port "$REQ_SECS" $cc \
        >"$out" 2>"$out.err" || true
    [[ -n $proxy ]] && stop "$proxy"
    [[ $s == tunnel-* ]] && tunnel_down
    LAT[$s]=$(python3 -c '
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    f = lambda v: "" if v is None else "%.0f" % v
    print("%d/%d|%s|%s|%s|%d" % (r["count"], r["sent"], f(r["p50_ms"]), f(r["p99_ms"]), f(r["max_ms"]), r["errors"]))
except Exception:
    print("0||||no result")' "$out")
    sleep 1
}

label() {
    case $1 in
    cubic) echo "Linux CUBIC (direct)" ;;
    bbr) echo "Linux BBR (direct)" ;;
    longhaul) echo "longhaul TCP (direct)" ;;
    tunnel-*) echo "longhaul tunnel, QUIC ${1#tunnel-}" ;;
    *) echo "$1" ;;
    esac
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== $MODE run: RTT ${RTT} ms, loss $LOSS, ${MBIT} Mbit/s; ${#SENDERS[@]} senders x (${SECS} s bulk + ${REQ_SECS} s requests); logs in $LOGDIR"
build_path
for s in "${SENDERS[@]}"; do
    RUN_I=$((RUN_I + 1))
    bulk "$s"
    IFS='|' read -r g e <<<"${BULK[$s]}"
    progress "bulk $s" "${g:+$g Mbit/s}${e:+FAILED $e}"
    RUN_I=$((RUN_I + 1))
    requests "$s"
    IFS='|' read -r n p50 p99 mx errs <<<"${LAT[$s]}"
    progress "requests $s" "$n GETs, p50 ${p50:-?} ms, p99 ${p99:-?} ms, max ${mx:-?} ms, errors $errs"
done

# ---------------------------------------------------------------------------------- the report
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
DATE=$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
SUFFIX=''
[[ $MODE != full ]] && SUFFIX=-$MODE
MD=$RESULTS/tunnel-$DATE$SUFFIX.md
PNG=${MD%.md}.png
CSV=$LOGDIR/results.csv
: >"$CSV"
{
    echo "# Tunnel benchmark — $DATE UTC ($MODE)"
    echo
    echo "- command: \`$CMDLINE\`${TB_TUNNEL_FLAGS:+ with TB_TUNNEL_FLAGS=\"$TB_TUNNEL_FLAGS\"}"
    echo "- host: $(uname -srm), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')); load average at start $LOAD_START, at end $LOAD_END"
    echo "- commit: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
    echo "- path: \`longhaul netem $NETEM_ARGS\` (every impairment on both directions), one emulator and topology for all runs, one run after another"
    echo "- bulk: ${SECS} s, sender side → far side, goodput as the receiving \`iperf3 -s\` counted it (\`end.sum_received\`). Direct CUBIC/BBR: \`iperf3 -c -C cubic|bbr\` (tcp_rmem/wmem max 64 MiB per namespace); longhaul TCP: \`longhaul perf client --rmem 64M --wmem 64M --nodelay --cc bbr\` (requests through \`longhaul proxy\`, whose upstream leg runs BBR); tunnel: \`iperf3 -c\` to the tunnel client, whose server end connects to the same \`iperf3 -s\` (the long leg is QUIC, the legs at each end are local)"
    echo "- requests: ${REQ_SECS} s of \`GET /1k\` every 100 ms, each on an idle keep-alive connection from a pool of 16 opened beforehand (requests never wait for each other; a new connection only when none is idle), each timed from the request's write to the response's last byte; a kernel server answering 1 KiB in one write (TCP_NODELAY both ends). Direct: kernel client and server with the named congestion control; longhaul TCP: through \`longhaul proxy\` on the sender side (its upstream, the long leg, is longhaul's TCP; the answers come from the far kernel's CUBIC); tunnel: through the tunnel"
    echo "- QUIC columns: the tunnel client's connection after the bulk run, from \`longhaul stat --json\` (smoothed RTT; packets quinn declared lost / sent)"
    echo
    echo "| sender | bulk goodput Mbit/s | % of rate | requests answered/sent | p50 ms | p99 ms | max ms | request errors | QUIC RTT ms | QUIC lost/sent packets |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} >"$MD"
printf '\n%-32s %10s %6s %6s %8s %8s %8s\n' sender Mbit/s "%" GETs p50ms p99ms maxms
for s in "${SENDERS[@]}"; do
    IFS='|' read -r g e <<<"${BULK[$s]:-|no result}"
    IFS='|' read -r n p50 p99 mx errs <<<"${LAT[$s]:-0||||no result}"
    IFS='|' read -r qrtt qlost qsent <<<"${QS[$s]:-||}"
    pct=''
    [[ -n $g ]] && pct=$(python3 -c "print('%.1f' % (100 * $g / $MBIT))")
    gtxt=${g:-FAIL${e:+ ($e)}}
    qls=''
    [[ -n $qsent ]] && qls="$qlost / $qsent"
    echo "| $(label "$s") | $gtxt | $pct | $n | $p50 | $p99 | $mx | $errs | $qrtt | $qls |" >>"$MD"
    printf '%-32s %10s %6s %6s %8s %8s %8s\n' "$(label "$s")" "$gtxt" "$pct" "$n" "$p50" "$p99" "$mx"
    echo "$s|$(label "$s")|${g:-0}|${p50:-0}|${p99:-0}" >>"$CSV"
done

if ((HAVE_PLOT)); then
    python3 - "$CSV" "$PNG" "$RTT" "$LOSS" "$MBIT" "$SECS" <<'EOF'
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = [l.rstrip("\n").split("|") for l in open(sys.argv[1]) if l.strip()]
names = [r[1].replace(" (direct)", "\n(direct)").replace(", QUIC", "\nQUIC") for r in rows]
f = lambda v: float(v) if v else 0.0
good = [f(r[2]) for r in rows]
p50 = [f(r[3]) for r in rows]
p99 = [f(r[4]) for r in rows]
colors = {"cubic": "#4a7fb0", "bbr": "#3a9a5b", "longhaul": "#d9822b", "tunnel-bbr": "#8e5ea2",
          "tunnel-cubic": "#c0698f"}
col = [colors.get(r[0], "#8e5ea2") for r in rows]
rtt, loss, mbit, secs = sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6]
fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
x = range(len(rows))
a.bar(x, good, color=col)
a.axhline(mbit * 0.957, color="grey", lw=0.8, ls="--")
a.set_xticks(list(x))
a.set_xticklabels(names, fontsize=7)
a.set_ylabel("goodput (Mbit/s)")
a.set_title(f"bulk, {secs} s")
for i, g in enumerate(good):
    a.text(i, g, "%.1f" % g, ha="center", va="bottom", fontsize=8)
w = 0.38
b.bar([i - w / 2 for i in x], p50, w, color=col, alpha=0.55, label="p50")
b.bar([i + w / 2 for i in x], p99, w, color=col, label="p99")
b.axhline(float(rtt), color="grey", lw=0.8, ls="--")
b.set_xticks(list(x))
b.set_xticklabels(names, fontsize=7)
b.set_ylabel("ms (dashed: one RTT)")
b.set_title("1 KiB GET every 100 ms: p50 (light), p99 (dark)")
for i in x:
    b.text(i + w / 2, p99[i], "%.0f" % p99[i], ha="center", va="bottom", fontsize=8)
fig.suptitle(f"RTT {rtt} ms, random loss {loss} each way, {mbit:.0f} Mbit/s, 1-BDP queue (longhaul netem)", fontsize=10)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
EOF
    printf '\n![bulk goodput and request latency](%s)\n' "$(basename "$PNG")" >>"$MD"
    echo "plot: $PNG"
fi
echo "results: $MD"
el=$(($(date +%s) - T_START))
echo "== done in $((el / 60))m$((el % 60))s"
