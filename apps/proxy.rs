//! `longhaul proxy`: a TCP relay with both legs on the longhaul stack.
//!
//! Each accepted client gets an upstream connection (round-robin or least-connections over
//! `--upstream`); bytes are moved only as far as the other leg's send buffer has room, so memory per
//! pair is bounded by the four socket buffers whatever the peers do. FIN on one leg becomes
//! `shutdown` on the other (half-close), a reset becomes an abort. An upstream that refuses or does
//! not answer within `--connect-timeout` is marked down for `--down-time` and the client gets the
//! next one; with none left the client is closed cleanly.

use crate::{run_until_signal, Common};
use clap::{Args, ValueEnum};
use longhaul::stack::tcp::cc::CcAlgorithm;
use longhaul::stack::{parse_size, MAX_BUFFER, MIN_BUFFER};
use longhaul::{App, ConnError, ConnId, ConnOptions, Event, Io};
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct ProxyArgs {
    #[command(flatten)]
    common: Common,
    /// Port clients connect to.
    #[arg(long)]
    listen: u16,
    /// Upstream servers, IP:PORT[,IP:PORT...].
    #[arg(long, value_delimiter = ',', required = true)]
    upstream: Vec<SocketAddrV4>,
    /// How to pick an upstream for a new client.
    #[arg(long, value_enum, default_value_t = Balance::RoundRobin)]
    balance: Balance,
    /// Give up on an upstream that has not answered after this long (e.g. 3s, 500ms).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// How long an upstream that failed stays out of rotation.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    down_time: Duration,
    /// Close a pair that moved no byte for this long (0 = never).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Most client connections at once (all cores); more are closed at once.
    #[arg(long, default_value_t = 100_000)]
    max_conns: usize,
    /// Send a PROXY protocol v1 header to the upstream.
    #[arg(long, conflicts_with = "send_proxy_v2")]
    send_proxy: bool,
    /// Send a PROXY protocol v2 header to the upstream.
    #[arg(long)]
    send_proxy_v2: bool,
    /// Receive buffer of client legs (default: --rmem).
    #[arg(long)]
    client_rmem: Option<String>,
    /// Send buffer of client legs (default: --wmem).
    #[arg(long)]
    client_wmem: Option<String>,
    /// Receive buffer of upstream legs (default: --rmem).
    #[arg(long)]
    upstream_rmem: Option<String>,
    /// Send buffer of upstream legs (default: --wmem).
    #[arg(long)]
    upstream_wmem: Option<String>,
    /// Congestion control of client legs: bbr, cubic or newreno (default: --cc).
    #[arg(long)]
    client_cc: Option<String>,
    /// Congestion control of upstream legs — the long haul in a relay — bbr, cubic or newreno.
    #[arg(long, default_value = "bbr")]
    upstream_cc: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Balance {
    RoundRobin,
    LeastConns,
}

/// Parses `250ms`, `3s`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration '{s}': use e.g. 500ms, 3s or 2m");
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(bad()),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Counters shared by the cores (touched per connection or per read, never per packet).
#[derive(Default)]
struct Counters {
    active: AtomicUsize,
    total: AtomicU64,
    refused: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    upstream_failures: AtomicU64,
}

/// Upstream health and load, shared by the cores.
struct Upstreams {
    addrs: Vec<SocketAddrV4>,
    down_until_ms: Vec<AtomicU64>,
    conns: Vec<AtomicUsize>,
    next: AtomicUsize,
    epoch: Instant,
}

impl Upstreams {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn is_up(&self, i: usize) -> bool {
        self.down_until_ms[i].load(Ordering::Relaxed) <= self.now_ms()
    }

    fn mark_down(&self, i: usize, for_: Duration) {
        self.down_until_ms[i].store(self.now_ms() + for_.as_millis() as u64, Ordering::Relaxed);
    }

    /// An upstream that is up and not in `tried` (a bit per upstream), or `None`.
    fn pick(&self, balance: Balance, tried: u64) -> Option<usize> {
        let n = self.addrs.len();
        let usable = |i: usize| i < 64 && tried & (1 << i) == 0 && self.is_up(i);
        match balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
            Balance::LeastConns => (0..n)
                .filter(|&i| usable(i))
                .min_by_key(|&i| self.conns[i].load(Ordering::Relaxed)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leg {
    Client,
    Upstream,
}

struct Pair {
    client: ConnId,
    upstream: Option<ConnId>,
    up_index: usize,
    tried: u64,
    connected: bool,
    connect_started: Instant,
    last_active: Instant,
    client_open: bool,
    upstream_open: bool,
}

struct Proxy {
    port: u16,
    client_opts: ConnOptions,
    upstream_opts: ConnOptions,
    balance: Balance,
    connect_timeout: Duration,
    down_time: Duration,
    idle_timeout: Duration,
    max_conns: usize,
    proxy_header: Option<u8>,
    upstreams: Arc<Upstreams>,
    counters: Arc<Counters>,
    pairs: HashMap<u64, Pair>,
    legs: HashMap<ConnId, (u64, Leg)>,
    next_pair: u64,
    buf: Box<[u8]>,
}

impl Proxy {
    /// Connects pair `id` to the next usable upstream; closes the client when none is left.
    fn connect_upstream(&mut self, io: &mut Io, id: u64) {
        let Some(p) = self.pairs.get_mut(&id) else {
            return;
        };
        while let Some(i) = self.upstreams.pick(self.balance, p.tried) {
            p.tried |= 1 << i;
            match io.connect_with(self.upstreams.addrs[i], self.upstream_opts) {
                Ok(up) => {
                    p.upstream = Some(up);
                    p.up_index = i;
                    p.upstream_open = true;
                    p.connect_started = Instant::now();
                    self.upstreams.conns[i].fetch_add(1, Ordering::Relaxed);
                    self.legs.insert(up, (id, Leg::Upstream));
                    return;
                }
                Err(_) => {
                    self.counters
                        .upstream_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.upstreams.mark_down(i, self.down_time);
                }
            }
        }
        // Nothing left to try: a clean close for the client.
        let client = p.client;
        let _ = io.close(client);
        self.finish(id);
    }

    /// The upstream leg of `id` failed before it was established.
    fn upstream_failed(&mut self, io: &mut Io, id: u64) {
        let Some(p) = self.pairs.get_mut(&id) else {
            return;
        };
        self.counters
            .upstream_failures
            .fetch_add(1, Ordering::Relaxed);
        self.upstreams.mark_down(p.up_index, self.down_time);
        self.upstreams.conns[p.up_index].fetch_sub(1, Ordering::Relaxed);
        if let Some(up) = p.upstream.take() {
            self.legs.remove(&up);
        }
        p.upstream_open = false;
        self.connect_upstream(io, id);
    }

    /// Moves bytes from `from` to `to` while `to` has room; propagates end of stream.
    fn relay(&mut self, io: &mut Io, id: u64, dir: Leg) {
        let Some(p) = self.pairs.get_mut(&id) else {
            return;
        };
        let (Some(up), true) = (p.upstream, p.connected) else {
            return;
        };
        let (from, to) = match dir {
            Leg::Client => (p.client, up),
            Leg::Upstream => (up, p.client),
        };
        let mut moved = 0u64;
        loop {
            let room = io.write_space(to).min(self.buf.len());
            if room == 0 {
                break; // Writable on `to` resumes this direction
            }
            match io.read(from, &mut self.buf[..room]) {
                Ok(0) => {
                    let _ = io.shutdown(to);
                    break;
                }
                Ok(n) => {
                    if io.write(to, &self.buf[..n]) != Ok(n) {
                        break; // `to` is gone; its Error/Closed event tidies up
                    }
                    moved += n as u64;
                }
                Err(_) => break,
            }
        }
        if moved > 0 {
            p.last_active = Instant::now();
            let c = match dir {
                Leg::Client => &self.counters.bytes_up,
                Leg::Upstream => &self.counters.bytes_down,
            };
            c.fetch_add(moved, Ordering::Relaxed);
        }
    }

    fn write_proxy_header(&self, io: &mut Io, p: &Pair, up: ConnId) {
        let (Some(version), Some(info)) = (self.proxy_header, io.info(p.client)) else {
            return;
        };
        let (src, dst) = (info.remote, info.local);
        let header = match version {
            1 => format!(
                "PROXY TCP4 {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes(),
            _ => {
                let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
                h.extend_from_slice(&[0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4, 12 bytes
                h.extend_from_slice(&src.ip().octets());
                h.extend_from_slice(&dst.ip().octets());
                h.extend_from_slice(&src.port().to_be_bytes());
                h.extend_from_slice(&dst.port().to_be_bytes());
                h
            }
        };
        // A fresh connection's send buffer (at least 4 KiB) always takes the header whole.
        let _ = io.write(up, &header);
    }

    /// Both legs are done (or abandoned): forget the pair.
    fn finish(&mut self, id: u64) {
        if let Some(p) = self.pairs.remove(&id) {
            self.legs.remove(&p.client);
            if let Some(up) = p.upstream {
                self.legs.remove(&up);
                self.upstreams.conns[p.up_index].fetch_sub(1, Ordering::Relaxed);
            }
            self.counters.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Ends a pair at once: a reset on both legs.
    fn abort_pair(&mut self, io: &mut Io, id: u64) {
        if let Some(p) = self.pairs.get(&id) {
            if p.client_open {
                let _ = io.abort(p.client);
            }
            if let (Some(up), true) = (p.upstream, p.upstream_open) {
                let _ = io.abort(up);
            }
        }
        self.finish(id);
    }

    fn leg_ended(&mut self, io: &mut Io, c: ConnId, err: Option<ConnError>) {
        let Some(&(id, leg)) = self.legs.get(&c) else {
            return;
        };
        self.legs.remove(&c);
        let Some(p) = self.pairs.get_mut(&id) else {
            return;
        };
        match (leg, err) {
            (Leg::Upstream, Some(_)) if !p.connected => self.upstream_failed(io, id),
            // A reset on one leg resets the other.
            (_, Some(_)) => {
                match leg {
                    Leg::Client => p.client_open = false,
                    Leg::Upstream => p.upstream_open = false,
                }
                self.abort_pair(io, id);
            }
            (Leg::Client, None) => {
                p.client_open = false;
                if !p.connected {
                    if let Some(up) = p.upstream {
                        let _ = io.abort(up);
                    }
                    self.finish(id);
                } else if !p.upstream_open {
                    self.finish(id);
                }
            }
            (Leg::Upstream, None) => {
                p.upstream_open = false;
                if !p.client_open {
                    self.finish(id);
                }
            }
        }
    }
}

impl App for Proxy {
    fn on_start(&mut self, io: &mut Io) {
        io.listen_with(self.port, self.client_opts)
            .expect("a fresh core has every port free");
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        match event {
            Event::Accepted { conn, .. } => {
                if self.counters.active.load(Ordering::Relaxed) >= self.max_conns {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    let _ = io.close(conn);
                    return;
                }
                self.counters.active.fetch_add(1, Ordering::Relaxed);
                self.counters.total.fetch_add(1, Ordering::Relaxed);
                let id = self.next_pair;
                self.next_pair += 1;
                let now = Instant::now();
                self.pairs.insert(
                    id,
                    Pair {
                        client: conn,
                        upstream: None,
                        up_index: 0,
                        tried: 0,
                        connected: false,
                        connect_started: now,
                        last_active: now,
                        client_open: true,
                        upstream_open: false,
                    },
                );
                self.legs.insert(conn, (id, Leg::Client));
                self.connect_upstream(io, id);
            }
            Event::Connected(up) => {
                let Some(&(id, _)) = self.legs.get(&up) else {
                    let _ = io.abort(up);
                    return;
                };
                if let Some(p) = self.pairs.get_mut(&id) {
                    p.connected = true;
                }
                if let Some(p) = self.pairs.get(&id) {
                    self.write_proxy_header(io, p, up);
                }
                self.relay(io, id, Leg::Client);
                self.relay(io, id, Leg::Upstream);
            }
            Event::Readable(c) | Event::PeerClosed(c) => {
                if let Some(&(id, leg)) = self.legs.get(&c) {
                    self.relay(io, id, leg);
                }
            }
            Event::Writable(c) => {
                if let Some(&(id, leg)) = self.legs.get(&c) {
                    // Room on `c`: resume the direction that writes into it.
                    let from = match leg {
                        Leg::Client => Leg::Upstream,
                        Leg::Upstream => Leg::Client,
                    };
                    self.relay(io, id, from);
                }
            }
            Event::Closed(c) => self.leg_ended(io, c, None),
            Event::Error(c, e) => self.leg_ended(io, c, Some(e)),
            _ => {}
        }
    }

    fn on_tick(&mut self, io: &mut Io) {
        let now = Instant::now();
        let mut timed_out = Vec::new();
        let mut idle = Vec::new();
        for (&id, p) in &self.pairs {
            if !p.connected
                && p.upstream.is_some()
                && now - p.connect_started > self.connect_timeout
            {
                timed_out.push(id);
            } else if self.idle_timeout > Duration::ZERO && now - p.last_active > self.idle_timeout
            {
                idle.push(id);
            }
        }
        for id in timed_out {
            if let Some(up) = self.pairs.get(&id).and_then(|p| p.upstream) {
                let _ = io.abort(up);
            }
            self.upstream_failed(io, id);
        }
        for id in idle {
            if let Some(p) = self.pairs.get(&id) {
                let (client, up) = (p.client, p.upstream);
                let _ = io.close(client);
                if let Some(up) = up {
                    let _ = io.close(up);
                }
            }
            self.finish(id);
        }
    }

    fn on_stop(&mut self, io: &mut Io) {
        let ids: Vec<u64> = self.pairs.keys().copied().collect();
        for id in ids {
            if let Some(p) = self.pairs.get(&id) {
                let _ = io.close(p.client);
                if let Some(up) = p.upstream {
                    let _ = io.close(up);
                }
            }
            self.finish(id);
        }
    }
}

/// Per-leg options from the flags; sizes are checked here so a mistake stops before the port opens.
fn leg_options(
    rmem: &Option<String>,
    wmem: &Option<String>,
    cc: &str,
    nodelay: bool,
) -> Result<ConnOptions, String> {
    let size = |s: &str| -> Result<usize, String> {
        let n = parse_size(s).map_err(|e| e.to_string())?;
        if !(MIN_BUFFER..=MAX_BUFFER).contains(&n) {
            return Err(format!("{s} is out of range: use 4K to 64M"));
        }
        Ok(n)
    };
    let cc: CcAlgorithm = cc.parse().map_err(|e| format!("{e}"))?;
    let mut o = ConnOptions::new().nodelay(nodelay).cc(cc);
    if let Some(r) = rmem {
        o = o.rmem(size(r)?);
    }
    if let Some(w) = wmem {
        o = o.wmem(size(w)?);
    }
    Ok(o)
}

pub fn main(args: ProxyArgs) -> ExitCode {
    let fail = |e: String| {
        eprintln!("longhaul proxy: {e}");
        ExitCode::from(2)
    };
    if args.listen == 0 {
        return fail("bad --listen 0: use a port from 1 to 65535".into());
    }
    if args.upstream.len() > 64 {
        return fail("too many --upstream addresses: at most 64".into());
    }
    let cfg = match args.common.config() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let client_cc = args.client_cc.as_deref().unwrap_or(&args.common.cc);
    let client_opts = match leg_options(
        &args.client_rmem,
        &args.client_wmem,
        client_cc,
        args.common.nodelay,
    ) {
        Ok(o) => o,
        Err(e) => return fail(format!("--client-rmem/--client-wmem/--client-cc: {e}")),
    };
    let upstream_opts = match leg_options(
        &args.upstream_rmem,
        &args.upstream_wmem,
        &args.upstream_cc,
        args.common.nodelay,
    ) {
        Ok(o) => o,
        Err(e) => {
            return fail(format!(
                "--upstream-rmem/--upstream-wmem/--upstream-cc: {e}"
            ))
        }
    };
    let upstreams = Arc::new(Upstreams {
        down_until_ms: args.upstream.iter().map(|_| AtomicU64::new(0)).collect(),
        conns: args.upstream.iter().map(|_| AtomicUsize::new(0)).collect(),
        addrs: args.upstream.clone(),
        next: AtomicUsize::new(0),
        epoch: Instant::now(),
    });
    let counters = Arc::new(Counters::default());
    let (u, c) = (upstreams.clone(), counters.clone());
    let port = args.listen;
    let (balance, connect_timeout, down_time, idle_timeout, max_conns) = (
        args.balance,
        args.connect_timeout,
        args.down_time,
        args.idle_timeout,
        args.max_conns,
    );
    let proxy_header = if args.send_proxy {
        Some(1)
    } else if args.send_proxy_v2 {
        Some(2)
    } else {
        None
    };
    let stack = match crate::start_stack("proxy", cfg, move |_core| Proxy {
        port,
        client_opts,
        upstream_opts,
        balance,
        connect_timeout,
        down_time,
        idle_timeout,
        max_conns,
        proxy_header,
        upstreams: u.clone(),
        counters: c.clone(),
        pairs: HashMap::new(),
        legs: HashMap::new(),
        next_pair: 0,
        buf: vec![0u8; 64 * 1024].into_boxed_slice(),
    }) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let ups: Vec<String> = args.upstream.iter().map(|a| a.to_string()).collect();
    println!(
        "longhaul proxy ready: port {} ip {} cores {} listen {} upstreams {} balance {:?}",
        args.common.port,
        args.common.ip,
        stack.cores(),
        port,
        ups.join(","),
        balance
    );
    let extra = move || {
        format!(
            " | proxy active {} total {} refused {} bytes up {} down {} upstream-failures {}",
            counters.active.load(Ordering::Relaxed),
            counters.total.load(Ordering::Relaxed),
            counters.refused.load(Ordering::Relaxed),
            counters.bytes_up.load(Ordering::Relaxed),
            counters.bytes_down.load(Ordering::Relaxed),
            counters.upstream_failures.load(Ordering::Relaxed)
        )
    };
    run_until_signal(stack, &args.common, &extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn picks_skip_tried_and_down_upstreams() {
        let u = Upstreams {
            addrs: vec!["198.18.0.1:1".parse().unwrap(); 3],
            down_until_ms: (0..3).map(|_| AtomicU64::new(0)).collect(),
            conns: (0..3).map(|_| AtomicUsize::new(0)).collect(),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        };
        u.mark_down(1, Duration::from_secs(60));
        assert_eq!(u.pick(Balance::RoundRobin, 0b001), Some(2));
        assert_eq!(u.pick(Balance::RoundRobin, 0b101), None);
        u.conns[0].store(5, Ordering::Relaxed);
        assert_eq!(u.pick(Balance::LeastConns, 0), Some(2));
    }
}
