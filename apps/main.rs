//! `longhaul`: one binary, one subcommand per app. Common flags come first:
//! `longhaul <app> --port tap:IFACE --ip CIDR [--gateway IP] [--cores N] [--budget N] [app flags]`.

mod control;
mod echo;
mod httpd;
mod loadgen;
mod netem;
mod perf;
mod proxy;
mod stat;
mod stun;
mod tunnel;

use clap::{Args, Parser, Subcommand};
use longhaul::stack::parse_size;
use longhaul::{Config, Stack};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "longhaul",
    version,
    about = "Kernel-bypass userspace TCP/IP stack for long fat networks"
)]
struct Cli {
    #[command(subcommand)]
    app: AppCmd,
}

#[derive(Subcommand)]
enum AppCmd {
    /// Echo TCP and UDP on one port; answers ARP and ping.
    Echo(echo::EchoArgs),
    /// HTTP/1.1 server: files under --root and /bytes/N, keep-alive and pipelining.
    Httpd(httpd::HttpdArgs),
    /// TCP relay to one or more upstreams, both legs on the stack.
    Proxy(proxy::ProxyArgs),
    /// Load generator on kernel sockets for scripts/bench.sh (stream, rr, echo-server).
    #[command(hide = true)]
    Loadgen(loadgen::LoadgenArgs),
    /// Link emulator between two ports: delay, jitter, loss, rate, queue, reordering, MTU black hole.
    Netem(netem::NetemArgs),
    /// iperf3-compatible throughput tests (TCP): `perf server` for iperf3 clients, `perf client`.
    Perf(perf::PerfArgs),
    /// Per-connection TCP state of a running instance, like `ss -ti` (or JSON).
    Stat(stat::StatArgs),
    /// STUN (RFC 8489) client: learns and prints the public address and port of a UDP port.
    Stun(stun::StunArgs),
    /// TCP over QUIC between two longhaul relays: `tunnel server` and `tunnel client`.
    Tunnel(tunnel::TunnelArgs),
}

/// Flags every app takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Port to use: tap:IFACE (created if missing).
    #[arg(long)]
    pub port: String,
    /// The stack's address and prefix, e.g. 198.18.0.2/24.
    #[arg(long)]
    pub ip: String,
    /// Default gateway.
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
    /// Ethernet address, e.g. 02:00:00:00:00:01 (default: random, locally administered).
    #[arg(long)]
    pub mac: Option<String>,
    /// Cores (queues and pinned threads).
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Frames received per loop iteration.
    #[arg(long, default_value_t = 64)]
    pub budget: usize,
    /// Largest receive buffer per connection (4K..64M); autotuning grows buffers up to it.
    #[arg(long, default_value = "64M")]
    pub rmem: String,
    /// Largest send buffer per connection (4K..64M); it grows with the congestion window.
    #[arg(long, default_value = "64M")]
    pub wmem: String,
    /// Half-open connections allowed per listening port and core.
    #[arg(long, default_value_t = 128)]
    pub backlog: usize,
    /// Turn Nagle's algorithm off on every connection.
    #[arg(long)]
    pub nodelay: bool,
    /// Do not pin core threads to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// CPUs to pin core threads to, e.g. 2,3 (core i runs on the i-th, cycling).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// No periodic counter lines.
    #[arg(long)]
    pub quiet: bool,
    /// Seconds between counter lines.
    #[arg(long, default_value_t = 5)]
    pub stats_interval: u64,
    /// Microseconds a core keeps busy-polling after its last work before it sleeps (0..=1000000):
    /// lower it on machines whose cores are shared with other work.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub idle_spin: u64,
    /// Congestion control: cubic, bbr or newreno (reno).
    #[arg(long, default_value = "cubic")]
    pub cc: String,
    /// Smallest retransmission timeout (e.g. 200ms, as Linux).
    #[arg(long, default_value = "200ms")]
    pub rto_min: String,
    /// Largest retransmission timeout.
    #[arg(long, default_value = "120s")]
    pub rto_max: String,
    /// Clamp the TCP MSS (bytes) for paths with a smaller MTU, e.g. tunnels.
    #[arg(long)]
    pub mss_clamp: Option<u16>,
    /// Path MTU probing: off, blackhole (probe after a black hole is detected, as Linux's
    /// tcp_mtu_probing=1) or always (start at MSS 1024 and probe up, as Linux's 2).
    #[arg(long, default_value = "blackhole")]
    pub mtu_probing: String,
    /// Pace CUBIC and NewReno as Linux does under the fq qdisc (2·cwnd/SRTT in slow start,
    /// 1.2·cwnd/SRTT after) instead of sending bursts as the window opens. BBR always paces.
    #[arg(long)]
    pub pacing: bool,
    /// Drop SYNs when the SYN queue is full instead of answering with SYN cookies.
    #[arg(long)]
    pub no_syncookies: bool,
    /// Send keepalive probes after this long without a segment from the peer (e.g. 60s).
    #[arg(long)]
    pub keepalive: Option<String>,
    /// Restart from the initial window after an idle period (RFC 5681 section 4.1).
    #[arg(long)]
    pub slow_start_after_idle: bool,
    /// Give up on a connection whose data stays unacknowledged this long.
    #[arg(long, default_value = "120s")]
    pub user_timeout: String,
    /// Control socket for `longhaul stat` (default: /run/longhaul/<pid>.sock).
    #[arg(long, value_name = "PATH")]
    pub control: Option<std::path::PathBuf>,
    /// No control socket.
    #[arg(long, conflicts_with = "control")]
    pub no_control: bool,
}

impl Common {
    /// The stack configuration these flags describe, or one line saying what is wrong.
    pub fn config(&self) -> Result<Config, String> {
        let mut c = Config::new();
        c.port(&self.port)
            .and_then(|c| c.ip(&self.ip))
            .and_then(|c| c.cores(self.cores))
            .and_then(|c| c.budget(self.budget))
            .and_then(|c| c.backlog(self.backlog))
            .map_err(|e| e.to_string())?;
        let rmem = parse_size(&self.rmem).map_err(|e| format!("--rmem: {e}"))?;
        let wmem = parse_size(&self.wmem).map_err(|e| format!("--wmem: {e}"))?;
        c.rmem(rmem)
            .and_then(|c| c.wmem(wmem))
            .map_err(|e| e.to_string())?;
        c.idle_spin(Duration::from_micros(self.idle_spin));
        if let Some(gw) = self.gateway {
            c.gateway(gw);
        }
        if let Some(m) = &self.mac {
            c.mac(parse_mac(m)?).map_err(|e| e.to_string())?;
        }
        c.nodelay(self.nodelay).pin_threads(!self.no_pin);
        c.cpus(&self.cpus).map_err(|e| e.to_string())?;
        let cc = self.cc.parse().map_err(|e| format!("--cc: {e}"))?;
        let dur =
            |flag: &str, v: &str| proxy::parse_duration(v).map_err(|e| format!("{flag}: {e}"));
        let (rto_min, rto_max) = (
            dur("--rto-min", &self.rto_min)?,
            dur("--rto-max", &self.rto_max)?,
        );
        c.cc(cc)
            .syncookies(!self.no_syncookies)
            .slow_start_after_idle(self.slow_start_after_idle)
            .user_timeout(dur("--user-timeout", &self.user_timeout)?)
            .rto_bounds(rto_min, rto_max)
            .map_err(|e| format!("--rto-min/--rto-max: {e}"))?;
        if let Some(m) = self.mss_clamp {
            c.mss_clamp(m).map_err(|e| format!("--mss-clamp: {e}"))?;
        }
        if let Some(k) = &self.keepalive {
            c.keepalive(Some(dur("--keepalive", k)?));
        }
        let probing = self
            .mtu_probing
            .parse()
            .map_err(|e| format!("--mtu-probing: {e}"))?;
        c.mtu_probing(probing, Duration::from_secs(600));
        if self.pacing {
            c.recovery(longhaul::stack::tcp::config::Recovery {
                pacing: true,
                ..Default::default()
            });
        }
        Ok(c)
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("bad --mac '{s}': expected six hex bytes like 02:00:00:00:00:01");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// Starts the stack for `app` with one app instance per core, or prints one line saying why it
/// could not and returns the exit status (1) to end with.
pub fn start_stack<A, F>(app: &str, cfg: Config, factory: F) -> Result<Stack, ExitCode>
where
    A: longhaul::App,
    F: Fn(usize) -> A + Send + Sync + 'static,
{
    Stack::start(cfg, factory).map_err(|e| {
        eprintln!("longhaul {app}: {e}");
        ExitCode::FAILURE
    })
}

/// Runs `body` while a thread answers `longhaul stat` on the control socket (`--control`, the
/// default path, or none with `--no-control`); the socket is removed again afterwards. Fails only
/// when an explicit `--control` path cannot be bound. Sets `stop` when `body` returns.
pub fn with_control<R>(
    stack: &Stack,
    common: &Common,
    stop: &AtomicBool,
    body: impl FnOnce() -> R,
) -> Result<R, ExitCode> {
    let endpoint = if common.no_control {
        None
    } else if let Some(path) = &common.control {
        match control::Endpoint::bind(path) {
            Ok(ep) => Some(ep),
            Err(e) => {
                eprintln!("longhaul: --control: {e}");
                return Err(ExitCode::FAILURE);
            }
        }
    } else {
        // The default socket is a convenience: without it the app still runs.
        match control::Endpoint::bind(&control::default_path(std::process::id())) {
            Ok(ep) => Some(ep),
            Err(e) => {
                eprintln!("longhaul: no control socket ({e}); `longhaul stat` will not see this instance (--no-control silences this)");
                None
            }
        }
    };
    let r = std::thread::scope(|s| {
        if let Some(ep) = &endpoint {
            let spawned = std::thread::Builder::new()
                .name("longhaul-control".into())
                .spawn_scoped(s, move || ep.serve(stack, stop));
            if let Err(e) = spawned {
                eprintln!("longhaul: cannot start the control thread: {e}");
            }
        }
        let r = body();
        // Ends the control thread too (it looks at the flag every 50 ms).
        stop.store(true, Ordering::Relaxed);
        r
    });
    drop(endpoint);
    Ok(r)
}

/// Runs a started stack until SIGINT/SIGTERM, printing a counter line every `interval` unless quiet,
/// and answering `longhaul stat` on the control socket (removed again on the way out).
pub fn run_until_signal(stack: Stack, common: &Common, extra: &dyn Fn() -> String) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("longhaul: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let code = match with_control(&stack, common, &stop, || {
        run_loop(&stack, common, extra, &stop)
    }) {
        Ok(code) => code,
        Err(code) => {
            stack.stop();
            return code;
        }
    };
    if let Some(code) = code {
        return code;
    }
    let final_line = stats_line(&stack, extra);
    let ok = stack.stop();
    if !common.quiet {
        println!("stopped: {final_line}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The main thread's wait for a signal; `Some(code)` when it has to end early.
fn run_loop(
    stack: &Stack,
    common: &Common,
    extra: &dyn Fn() -> String,
    stop: &AtomicBool,
) -> Option<ExitCode> {
    let interval = Duration::from_secs(common.stats_interval.max(1));
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if !stack.is_running() {
            eprintln!("longhaul: a core stopped unexpectedly");
            return Some(ExitCode::FAILURE);
        }
        if !common.quiet && last.elapsed() >= interval {
            last = Instant::now();
            println!("{}", stats_line(stack, extra));
        }
    }
    None
}

fn stats_line(stack: &Stack, extra: &dyn Fn() -> String) -> String {
    let t = stack.total();
    format!(
        "conns {} open {} total {} failed | frames in {} out {} | bytes in {} out {} | drops malformed {} checksum {} no-socket {} ring-full {} syn-backlog {}{}",
        t.conns_current,
        t.conns_opened,
        t.conns_failed,
        t.frames_in,
        t.frames_out,
        t.bytes_in,
        t.bytes_out,
        t.drop_malformed,
        t.drop_bad_checksum,
        t.no_socket,
        t.drop_ring_full,
        t.drop_syn_backlog,
        extra()
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.app {
        AppCmd::Echo(args) => echo::main(args),
        AppCmd::Proxy(args) => proxy::main(args),
        AppCmd::Httpd(args) => httpd::main(args),
        AppCmd::Loadgen(args) => loadgen::main(args),
        AppCmd::Netem(args) => netem::main(args),
        AppCmd::Perf(args) => perf::main(args),
        AppCmd::Stat(args) => stat::main(args),
        AppCmd::Stun(args) => stun::main(args),
        AppCmd::Tunnel(args) => tunnel::main(args),
    }
}
