//! `longhaul tunnel`: TCP carried over QUIC between two relays, both on the longhaul stack.
//!
//! ```text
//!  TCP clients ──TCP──▶ tunnel client ══QUIC/UDP (long, lossy path)══▶ tunnel server ──TCP──▶ target
//!                      (--listen TCP)      one bidi stream per TCP     (--listen UDP)   (--target)
//! ```
//!
//! - QUIC is quinn-proto (sans-IO), driven by each core's engine ([`quic`]); TLS 1.3 is rustls on
//!   the ring provider ([`tls`]). The server makes a self-signed certificate on first run (kept in
//!   `--cert-dir`, default [`tls::DEFAULT_CERT_DIR`]) or loads `--cert`/`--key`, and prints its
//!   fingerprint; the client either pins it (`--pin sha256:HEX`) or trusts a CA (`--ca FILE`).
//!   A certificate the client does not trust ends the client with one line and exit status 1
//!   (it is a configuration error, retrying cannot fix it).
//! - The wire (ALPN `longhaul-tunnel/1`): every accepted TCP connection becomes one client-opened
//!   bidirectional stream that starts with one byte 0x00 (the server's configured target; other
//!   values are reserved), followed by the TCP bytes. FIN is half-close; RESET_STREAM and
//!   STOP_SENDING carry 0 = TCP reset, 1 = target refused or unreachable, 2 = shutting down,
//!   3 = bad preamble ([`relay::code`]).
//! - Flow control gives the backpressure ([`relay`]); windows are sized for a long fat pipe
//!   (`--stream-window`, default 4 MiB per stream, and `--conn-window`, 16 MiB per connection:
//!   100 Mbit/s × 250 ms is 3.1 MB).
//! - Congestion control is quinn's controller named by the common `--cc` flag (bbr, cubic,
//!   newreno), the same name longhaul's TCP legs use. `--keepalive` (common flag) is the QUIC
//!   keep-alive here, 15 to 30 s, 20 s by default; `--idle-timeout` ends a silent connection.
//! - The client reconnects with exponential back-off (0.5 s doubling to 30 s) when the connection
//!   is lost; the TCP connections it carried are reset.
//! - Every core runs its own endpoint (and the client its own connection): run with `--cores 1`
//!   unless the port spreads flows so that a client's datagrams stay on one core.

mod client;
mod datagram;
mod nat;
mod quic;
mod relay;
mod server;
mod tls;

use crate::{run_until_signal, Common};
use clap::{Args, Subcommand};
use longhaul::stack::parse_size;
use quinn_proto::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
use quinn_proto::{IdleTimeout, TransportConfig, VarInt};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct TunnelArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Accept QUIC tunnels on a UDP port and connect their streams to --target over TCP.
    Server(ServerArgs),
    /// Accept TCP on a port and carry each connection over QUIC to a tunnel server.
    Client(ClientArgs),
}

/// QUIC settings both ends take.
#[derive(Args, Debug, Clone)]
struct QuicFlags {
    /// Receive window per stream (bytes, K/M suffixes).
    #[arg(long, default_value = "4M")]
    stream_window: String,
    /// Receive window and send buffer per QUIC connection (bytes, K/M suffixes).
    #[arg(long, default_value = "16M")]
    conn_window: String,
    /// Close a QUIC connection that heard nothing from its peer this long (e.g. 60s).
    #[arg(long, default_value = "60s")]
    idle_timeout: String,
}

#[derive(Args, Debug)]
struct ServerArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    quic: QuicFlags,
    /// UDP port for QUIC.
    #[arg(long)]
    listen: u16,
    /// Where the streams go: IP:PORT (TCP, over the stack).
    #[arg(long)]
    target: SocketAddrV4,
    /// Directory for the certificate made on first run (cert.pem, key.pem).
    #[arg(long, default_value = tls::DEFAULT_CERT_DIR, conflicts_with_all = ["cert", "key"])]
    cert_dir: PathBuf,
    /// Certificate chain (PEM) instead of the made one; needs --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Relay QUIC datagrams (from `tunnel client --udp-listen`) to this UDP IP:PORT.
    #[arg(long)]
    udp_target: Option<SocketAddrV4>,
    /// Streams a client may have open at once.
    #[arg(long, default_value_t = 1024)]
    max_streams: u32,
}

#[derive(Args, Debug)]
struct ClientArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    quic: QuicFlags,
    /// TCP port to accept connections on.
    #[arg(long)]
    listen: u16,
    /// The tunnel server: IP:UDP_PORT.
    #[arg(long)]
    server: SocketAddrV4,
    /// Trust the server whose certificate has this SHA-256 (as the server prints it).
    #[arg(long, conflicts_with = "ca")]
    pin: Option<String>,
    /// Trust a server certificate issued by a CA in this PEM file.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name to verify the certificate against with --ca (default: the server's IP).
    #[arg(long)]
    server_name: Option<String>,
    /// Accept UDP on this port and relay it as QUIC datagrams (to the server's --udp-target).
    #[arg(long)]
    udp_listen: Option<u16>,
    /// Local UDP port for QUIC (default: picked at random, one per core).
    #[arg(long)]
    udp_port: Option<u16>,
    /// STUN server IP:PORT: learn the tunnel socket's public address (printed, and in the
    /// stats) and keep its NAT mapping alive with a Binding request every --keepalive.
    #[arg(long)]
    stun: Option<SocketAddrV4>,
}

/// Counters one core publishes for the status line (written in `on_tick`).
#[derive(Default)]
pub struct CoreStatus {
    pub conns: AtomicU64,
    pub rtt_us: AtomicU64,
    pub cwnd: AtomicU64,
    pub lost_packets: AtomicU64,
    pub sent_packets: AtomicU64,
    pub streams: AtomicU64,
    pub streams_total: AtomicU64,
    pub streams_reset: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub dropped: AtomicU64,
    pub reconnects: AtomicU64,
    pub udp_sent: AtomicU64,
    pub udp_received: AtomicU64,
    pub udp_dropped: AtomicU64,
    /// The public address STUN learnt ([`pack_addr`]; 0 while unknown or without `--stun`).
    pub public_addr: AtomicU64,
    pub stun_requests: AtomicU64,
    pub stun_responses: AtomicU64,
    pub stun_failures: AtomicU64,
    /// The last STUN round trip (µs; 0 when none was measured).
    pub stun_rtt_us: AtomicU64,
    /// Each QUIC connection's numbers, for `longhaul stat` (replaced every tick).
    pub connections: Mutex<Vec<ConnSnapshot>>,
}

/// One QUIC connection as `longhaul stat` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnSnapshot {
    pub core: usize,
    pub remote: String,
    pub rtt_us: u64,
    pub cwnd: u64,
    pub lost_packets: u64,
    pub sent_packets: u64,
    pub streams_open: u64,
    pub streams_total: u64,
    pub streams_reset: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// An address in one atomic word: 1 in bit 48 (so 0 means none), then the IP and the port.
pub fn pack_addr(a: Option<SocketAddrV4>) -> u64 {
    a.map_or(0, |a| {
        1 << 48 | (u32::from(*a.ip()) as u64) << 16 | a.port() as u64
    })
}

/// The address [`pack_addr`] packed.
pub fn unpack_addr(v: u64) -> Option<SocketAddrV4> {
    (v >> 48 == 1).then(|| SocketAddrV4::new(((v >> 16) as u32).into(), v as u16))
}

/// Publishes one core's numbers: the worst RTT, summed windows and counters, and each
/// connection's own.
fn publish(
    s: &CoreStatus,
    core: usize,
    q: &quic::Quic,
    r: &relay::Relay,
    d: Option<&datagram::DatagramCounters>,
) {
    let (mut rtt, mut cwnd, mut lost, mut sent) = (0u64, 0u64, 0u64, 0u64);
    let mut open: HashMap<quinn_proto::ConnectionHandle, u64> = HashMap::new();
    for k in r.flows.keys() {
        *open.entry(k.0).or_default() += 1;
    }
    let mut conns = Vec::with_capacity(q.conns.len());
    for (ch, c) in &q.conns {
        let st = c.stats();
        rtt = rtt.max(st.path.rtt.as_micros() as u64);
        cwnd += st.path.cwnd;
        lost += st.path.lost_packets;
        sent += st.path.sent_packets;
        let rc = r.per_conn.get(ch).copied().unwrap_or_default();
        conns.push(ConnSnapshot {
            core,
            remote: c.remote_address().to_string(),
            rtt_us: st.path.rtt.as_micros() as u64,
            cwnd: st.path.cwnd,
            lost_packets: st.path.lost_packets,
            sent_packets: st.path.sent_packets,
            streams_open: open.get(ch).copied().unwrap_or(0),
            streams_total: rc.streams_opened,
            streams_reset: rc.streams_reset,
            bytes_up: rc.bytes_up,
            bytes_down: rc.bytes_down,
        });
    }
    if let Ok(mut c) = s.connections.lock() {
        *c = conns;
    }
    let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
    set(&s.conns, q.conns.len() as u64);
    set(&s.rtt_us, rtt);
    set(&s.cwnd, cwnd);
    set(&s.lost_packets, lost);
    set(&s.sent_packets, sent);
    set(&s.dropped, q.counters.dropped);
    set(&s.streams, r.open_streams() as u64);
    set(&s.streams_total, r.counters.streams_opened);
    set(&s.streams_reset, r.counters.streams_reset);
    set(&s.bytes_up, r.counters.bytes_up);
    set(&s.bytes_down, r.counters.bytes_down);
    if let Some(d) = d {
        set(&s.udp_sent, d.sent);
        set(&s.udp_received, d.received);
        set(&s.udp_dropped, d.dropped);
    }
}

/// Every core's counters, and whether a core hit an error that must end the process.
pub struct Status {
    pub cores: Vec<CoreStatus>,
    /// Set (after printing the reason) when the process must end with status 1.
    pub fatal: AtomicBool,
}

impl Status {
    fn new(cores: usize) -> Arc<Self> {
        Arc::new(Status {
            cores: (0..cores).map(|_| CoreStatus::default()).collect(),
            fatal: AtomicBool::new(false),
        })
    }

    /// Ends the process from a core: prints `line` once, stops the stack (SIGTERM to ourselves,
    /// which `run_until_signal` handles) and makes the exit status 1.
    pub fn fail(&self, line: &str) {
        if !self.fatal.swap(true, Ordering::SeqCst) {
            eprintln!("{line}");
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
        }
    }

    fn line(&self) -> String {
        let sum = |f: fn(&CoreStatus) -> &AtomicU64| -> u64 {
            self.cores
                .iter()
                .map(|c| f(c).load(Ordering::Relaxed))
                .sum()
        };
        let rtt = self
            .cores
            .iter()
            .map(|c| c.rtt_us.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        format!(
            " | tunnel conns {} rtt {:.1}ms cwnd {} lost {} sent {} streams {} total {} reset {} bytes up {} down {} dropped {} reconnects {} | udp sent {} recv {} dropped {}",
            sum(|c| &c.conns),
            rtt as f64 / 1000.0,
            sum(|c| &c.cwnd),
            sum(|c| &c.lost_packets),
            sum(|c| &c.sent_packets),
            sum(|c| &c.streams),
            sum(|c| &c.streams_total),
            sum(|c| &c.streams_reset),
            sum(|c| &c.bytes_up),
            sum(|c| &c.bytes_down),
            sum(|c| &c.dropped),
            sum(|c| &c.reconnects),
            sum(|c| &c.udp_sent),
            sum(|c| &c.udp_received),
            sum(|c| &c.udp_dropped),
        ) + &self.public_part()
    }

    /// What `longhaul stat` shows under the TCP connections (the control socket's `app`
    /// answer): totals over the cores, STUN's view (client), and every QUIC connection.
    fn json(&self, role: &str) -> serde_json::Value {
        let sum = |f: fn(&CoreStatus) -> &AtomicU64| -> u64 {
            self.cores
                .iter()
                .map(|c| f(c).load(Ordering::Relaxed))
                .sum()
        };
        let connections: Vec<ConnSnapshot> = self
            .cores
            .iter()
            .flat_map(|c| c.connections.lock().map(|v| v.clone()).unwrap_or_default())
            .collect();
        let public: Vec<String> = self
            .cores
            .iter()
            .filter_map(|c| unpack_addr(c.public_addr.load(Ordering::Relaxed)))
            .map(|a| a.to_string())
            .collect();
        let mut tunnel = serde_json::json!({
            "role": role,
            "conns": sum(|c| &c.conns),
            "streams_open": sum(|c| &c.streams),
            "streams_total": sum(|c| &c.streams_total),
            "streams_reset": sum(|c| &c.streams_reset),
            "bytes_up": sum(|c| &c.bytes_up),
            "bytes_down": sum(|c| &c.bytes_down),
            "dropped_datagrams": sum(|c| &c.dropped),
            "reconnects": sum(|c| &c.reconnects),
            "udp_relay": {
                "sent": sum(|c| &c.udp_sent),
                "received": sum(|c| &c.udp_received),
                "dropped": sum(|c| &c.udp_dropped),
            },
            "connections": connections,
        });
        if role == "client" {
            tunnel["public_address"] = match public.as_slice() {
                [] => serde_json::Value::Null,
                [one] => one.clone().into(),
                many => many.join(",").into(),
            };
            tunnel["stun"] = serde_json::json!({
                "requests": sum(|c| &c.stun_requests),
                "responses": sum(|c| &c.stun_responses),
                "failures": sum(|c| &c.stun_failures),
                "rtt_us": self.cores.iter().map(|c| c.stun_rtt_us.load(Ordering::Relaxed)).max().unwrap_or(0),
            });
        }
        serde_json::json!({ "tunnel": tunnel })
    }

    /// ` | public IP:PORT` (one per core that has learnt one), or nothing.
    fn public_part(&self) -> String {
        let addrs: Vec<String> = self
            .cores
            .iter()
            .filter_map(|c| unpack_addr(c.public_addr.load(Ordering::Relaxed)))
            .map(|a| a.to_string())
            .collect();
        if addrs.is_empty() {
            String::new()
        } else {
            format!(" | public {}", addrs.join(","))
        }
    }
}

/// The checked QUIC transport settings.
#[derive(Clone)]
struct Transport {
    stream_window: u64,
    conn_window: u64,
    idle: Duration,
    keepalive: Duration,
    cc: String,
}

impl Transport {
    /// Reads the flags (and takes `--keepalive` out of `common`: here it is QUIC's).
    fn from_flags(q: &QuicFlags, common: &mut Common) -> Result<Self, String> {
        let size = |flag: &str, v: &str| -> Result<u64, String> {
            let n = parse_size(v).map_err(|e| format!("{flag}: {e}"))? as u64;
            if !(16 << 10..=1 << 30).contains(&n) {
                return Err(format!("{flag} {v} is out of range: use 16K to 1G"));
            }
            Ok(n)
        };
        let dur = |flag: &str, v: &str| {
            crate::proxy::parse_duration(v).map_err(|e| format!("{flag}: {e}"))
        };
        let keepalive = match common.keepalive.take() {
            None => Duration::from_secs(20),
            Some(k) => dur("--keepalive", &k)?,
        };
        if !(Duration::from_secs(15)..=Duration::from_secs(30)).contains(&keepalive) {
            return Err(format!(
                "--keepalive {keepalive:?} is out of range: the tunnel's keep-alive is 15s to 30s"
            ));
        }
        let idle = dur("--idle-timeout", &q.idle_timeout)?;
        if idle < Duration::from_secs(1) {
            return Err("--idle-timeout must be at least 1s".into());
        }
        let cc = common.cc.trim().to_ascii_lowercase();
        let cc = match cc.as_str() {
            "bbr" | "cubic" => cc,
            "newreno" | "reno" => "newreno".into(),
            _ => {
                return Err(format!(
                    "--cc {}: the tunnel's QUIC takes bbr, cubic or newreno",
                    common.cc
                ))
            }
        };
        Ok(Transport {
            stream_window: size("--stream-window", &q.stream_window)?,
            conn_window: size("--conn-window", &q.conn_window)?,
            idle,
            keepalive,
            cc,
        })
    }

    /// quinn's transport configuration; `bidi_streams` is how many streams the peer may open.
    fn config(&self, bidi_streams: u32) -> Result<TransportConfig, String> {
        let mut t = TransportConfig::default();
        let stream = VarInt::from_u64(self.stream_window).map_err(|e| e.to_string())?;
        let conn = VarInt::from_u64(self.conn_window).map_err(|e| e.to_string())?;
        let idle = IdleTimeout::try_from(self.idle)
            .map_err(|_| "--idle-timeout is too long".to_string())?;
        t.stream_receive_window(stream)
            .receive_window(conn)
            .send_window(self.conn_window)
            .max_concurrent_bidi_streams(VarInt::from_u32(bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .keep_alive_interval(Some(self.keepalive))
            .max_idle_timeout(Some(idle));
        match self.cc.as_str() {
            "bbr" => t.congestion_controller_factory(Arc::new(BbrConfig::default())),
            "newreno" => t.congestion_controller_factory(Arc::new(NewRenoConfig::default())),
            _ => t.congestion_controller_factory(Arc::new(CubicConfig::default())),
        };
        Ok(t)
    }
}

pub fn main(args: TunnelArgs) -> ExitCode {
    match args.mode {
        Mode::Server(a) => server_main(a),
        Mode::Client(a) => client_main(a),
    }
}

fn fail(role: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("longhaul tunnel {role}: {e}");
    ExitCode::from(2)
}

fn server_main(mut a: ServerArgs) -> ExitCode {
    if a.listen == 0 {
        return fail("server", "bad --listen 0: use a UDP port from 1 to 65535");
    }
    let transport = match Transport::from_flags(&a.quic, &mut a.common) {
        Ok(t) => t,
        Err(e) => return fail("server", e),
    };
    let cfg = match a.common.config() {
        Ok(c) => c,
        Err(e) => return fail("server", e),
    };
    let ip = a.common.ip.split('/').next().unwrap_or("").to_string();
    let identity = match (&a.cert, &a.key) {
        (Some(c), Some(k)) => tls::Identity::load(c, k),
        _ => tls::Identity::load_or_create(&a.cert_dir, &["longhaul-tunnel".into(), ip]).map(
            |(id, made)| {
                if made {
                    println!(
                        "tunnel server: made a self-signed certificate in {}",
                        a.cert_dir.display()
                    );
                }
                id
            },
        ),
    };
    let identity = match identity {
        Ok(i) => i,
        Err(e) => return fail("server", e),
    };
    let fingerprint = identity.fingerprint();
    let crypto = match tls::server_crypto(identity) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail("server", e),
    };
    let tc = match transport.config(a.max_streams) {
        Ok(t) => Arc::new(t),
        Err(e) => return fail("server", e),
    };
    let mut sc = quinn_proto::ServerConfig::with_crypto(crypto);
    sc.transport_config(tc);
    let sc = Arc::new(sc);
    let status = Status::new(a.common.cores);
    let st = status.clone();
    let (port, target, udp_target) = (a.listen, a.target, a.udp_target);
    let stack = match crate::start_stack("tunnel server", cfg, move |core| {
        server::Server::new(port, target, udp_target, sc.clone(), st.clone(), core)
    }) {
        Ok(s) => s,
        Err(code) => return code,
    };
    println!(
        "longhaul tunnel server ready: port {} ip {} cores {} udp {} target {} cc {} fingerprint {}",
        a.common.port,
        a.common.ip,
        stack.cores(),
        port,
        target,
        transport.cc,
        fingerprint
    );
    let (s2, s3) = (status.clone(), status.clone());
    crate::control::set_app_stats(move || s3.json("server"));
    let code = run_until_signal(stack, &a.common, &move || s2.line());
    if status.fatal.load(Ordering::SeqCst) {
        return ExitCode::FAILURE;
    }
    code
}

fn client_main(mut a: ClientArgs) -> ExitCode {
    if a.listen == 0 || a.udp_listen == Some(0) {
        return fail(
            "client",
            "bad --listen/--udp-listen 0: use a port from 1 to 65535",
        );
    }
    let trust = match (&a.pin, &a.ca) {
        (Some(p), None) => match tls::Fingerprint::parse(p) {
            Ok(f) => tls::Trust::Pin(f),
            Err(e) => return fail("client", e),
        },
        (None, Some(ca)) => tls::Trust::Ca(ca.clone()),
        _ => {
            return fail(
                "client",
                "say how to trust the server: --pin sha256:HEX (printed by the server at start) or --ca FILE",
            )
        }
    };
    let transport = match Transport::from_flags(&a.quic, &mut a.common) {
        Ok(t) => t,
        Err(e) => return fail("client", e),
    };
    let cfg = match a.common.config() {
        Ok(c) => c,
        Err(e) => return fail("client", e),
    };
    let report = Arc::new(std::sync::Mutex::new(tls::PinReport::default()));
    let crypto = match tls::client_crypto(&trust, report.clone()) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail("client", e),
    };
    let tc = match transport.config(0) {
        Ok(t) => Arc::new(t),
        Err(e) => return fail("client", e),
    };
    let mut qc = quinn_proto::ClientConfig::new(crypto);
    qc.transport_config(tc);
    let server_name = a
        .server_name
        .clone()
        .unwrap_or_else(|| a.server.ip().to_string());
    let status = Status::new(a.common.cores);
    let settings = Arc::new(client::Settings {
        listen: a.listen,
        server: a.server,
        server_name,
        quic: qc,
        trust,
        report,
        udp_port: a.udp_port,
        udp_listen: a.udp_listen,
        stun: a.stun,
        keepalive: transport.keepalive,
        status: status.clone(),
    });
    let stack = match crate::start_stack("tunnel client", cfg, move |core| {
        client::Client::new(settings.clone(), core)
    }) {
        Ok(s) => s,
        Err(code) => return code,
    };
    println!(
        "longhaul tunnel client ready: port {} ip {} cores {} listen {} server {} cc {}",
        a.common.port,
        a.common.ip,
        stack.cores(),
        a.listen,
        a.server,
        transport.cc
    );
    let (s2, s3) = (status.clone(), status.clone());
    crate::control::set_app_stats(move || s3.json("client"));
    let code = run_until_signal(stack, &a.common, &move || s2.line());
    if status.fatal.load(Ordering::SeqCst) {
        return ExitCode::FAILURE;
    }
    code
}
