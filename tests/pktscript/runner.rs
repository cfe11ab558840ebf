//! Runs one script: an `Engine` on one end of a `mem` wire with virtual time, the peer on the
//! other end.

use super::app::{pattern, AppConn, ScriptApp, ENGINE_STREAM, PEER_STREAM};
use super::script::{AppAction, Icmp, Kind, Line, Num, OptSpec, Opts, Script, SegSpec, When};
use super::wire::{self, Parsed, Tcp, TcpOpt, ACK, SYN};
use longhaul::pmd::mem::{self, MemConfig, MemQueue};
use longhaul::pmd::{Frame, Queue};
use longhaul::stack::Engine;
use longhaul::{Config, ConnInfo};
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

pub const ENGINE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const ENGINE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// Flow N is the peer's port `PEER_PORT_BASE + N`.
pub const PEER_PORT_BASE: u16 = 40000;

/// The peer's view of one flow.
struct Flow {
    peer_port: u16,
    engine_port: u16,
    /// The peer's ISN for relative sequence number 0 (scripts choose relative numbers).
    peer_isn: u32,
    /// Relative sequence number of the peer's last SYN (data offsets count from after it).
    peer_syn: u32,
    /// The engine's ISN, learned from its SYN or SYN-ACK.
    engine_isn: u32,
    /// The engine's latest TSval (what `ecr *` echoes).
    engine_tsval: u32,
}

struct Seen {
    at: Duration,
    flow: Option<u16>,
    tcp: Option<Tcp>,
    what: String,
}

pub struct Runner<'a> {
    script: &'a Script,
    engine: Engine<MemQueue, ScriptApp>,
    peer: MemQueue,
    rx: Vec<<MemQueue as Queue>::Frame>,
    now: Duration,
    pending: VecDeque<Seen>,
    flows: HashMap<u16, Flow>,
    tolerance: f64,
    peer_isn_base: u32,
    listen_port: u16,
}

fn secs(d: Duration) -> String {
    format!("{:.6}", d.as_secs_f64())
}

fn dur(t: f64) -> Duration {
    Duration::from_micros((t.max(0.0) * 1e6).round() as u64)
}

impl<'a> Runner<'a> {
    /// Builds the engine from the script's `config` lines.
    pub fn new(script: &'a Script) -> Result<Runner<'a>, String> {
        let mut cfg = Config::new();
        cfg.ip("198.18.0.1/24").unwrap().mac(ENGINE_MAC).unwrap();
        cfg.pin_threads(false);
        // Scripts are written for 1 MiB buffers (window scale 5) unless they say otherwise.
        cfg.rmem(1 << 20).unwrap().wmem(1 << 20).unwrap();
        let mut wire_cfg = MemConfig {
            ring: 4096,
            ..MemConfig::default()
        };
        let mut tolerance = 0.002;
        let mut peer_isn_base = 0xffff_f000u32;
        let mut recovery = longhaul::stack::tcp::config::Recovery::default();
        let (mut mtu_probing, mut mtu_probe_interval) = (
            longhaul::stack::tcp::pmtu::MtuProbing::default(),
            Duration::from_secs(600),
        );
        for (no, k, v) in &script.config {
            let e = |m: String| format!("{}:{no}: config {k}: {m}", script.path);
            let n = || {
                v.parse::<u64>()
                    .map_err(|_| e(format!("`{v}` is not a number")))
            };
            let on = || match v.as_str() {
                "on" => Ok(true),
                "off" => Ok(false),
                _ => Err(e(format!("`{v}` is not on/off"))),
            };
            match k.as_str() {
                "mtu" => wire_cfg.mtu = n()? as usize,
                "rmem" => {
                    cfg.rmem(n()? as usize).map_err(|x| e(x.0))?;
                }
                "wmem" => {
                    cfg.wmem(n()? as usize).map_err(|x| e(x.0))?;
                }
                "backlog" => {
                    cfg.backlog(n()? as usize).map_err(|x| e(x.0))?;
                }
                "syncookies" => {
                    cfg.syncookies(on()?);
                }
                "nodelay" => {
                    cfg.nodelay(on()?);
                }
                "mss_clamp" => {
                    cfg.mss_clamp(n()? as u16).map_err(|x| e(x.0))?;
                }
                "rto_min_ms" => {
                    cfg.rto_bounds(Duration::from_millis(n()?), Duration::from_secs(120))
                        .map_err(|x| e(x.0))?;
                }
                "keepalive_s" => {
                    cfg.keepalive(Some(Duration::from_secs(n()?)));
                }
                "user_timeout_s" => {
                    cfg.user_timeout(Duration::from_secs(n()?));
                }
                "tolerance" => {
                    tolerance = v.parse().map_err(|_| e(format!("`{v}` is not seconds")))?
                }
                "peer_isn" => peer_isn_base = n()? as u32,
                "rack" => recovery.rack = on()?,
                "tlp" => recovery.tlp = on()?,
                "frto" => recovery.frto = on()?,
                "pacing" => recovery.pacing = on()?,
                "mtu_probing" => {
                    mtu_probing = v
                        .parse()
                        .map_err(|x: longhaul::stack::tcp::pmtu::ParseMtuProbingError| e(x.0))?
                }
                "mtu_probe_interval_s" => mtu_probe_interval = Duration::from_secs(n()?),
                "cc" => {
                    cfg.cc(v
                        .parse()
                        .map_err(|x: longhaul::stack::tcp::cc::ParseCcAlgorithmError| e(x.0))?);
                }
                _ => {
                    return Err(e(
                        "unknown key (mtu, rmem, wmem, backlog, syncookies, nodelay, mss_clamp, \
                         keepalive_s, user_timeout_s, rto_min_ms, tolerance, peer_isn, rack, tlp, \
                         frto, pacing, cc, mtu_probing, mtu_probe_interval_s)"
                            .into(),
                    ))
                }
            }
        }
        cfg.recovery(recovery);
        cfg.mtu_probing(mtu_probing, mtu_probe_interval);
        let (a, b) = mem::wire(wire_cfg);
        let engine = Engine::new(0, &cfg, ENGINE_MAC, 7, a, ScriptApp::default());
        Ok(Runner {
            script,
            engine,
            peer: b,
            rx: Vec::with_capacity(256),
            now: Duration::ZERO,
            pending: VecDeque::new(),
            flows: HashMap::new(),
            tolerance,
            peer_isn_base,
            listen_port: 8080,
        })
    }

    /// Runs every line; the first failure ends the script.
    pub fn run(mut self) -> Result<(), String> {
        let mut prev = 0.0f64;
        for line in &self.script.lines {
            let t = match line.when {
                When::Abs(t) => t,
                When::Rel(r) => prev + r,
            };
            let res = self.line(line, t);
            let res = res.and_then(|at| {
                let errs = std::mem::take(&mut self.engine.app().errors);
                match errs.is_empty() {
                    true => Ok(at),
                    false => Err(errs.join("; ")),
                }
            });
            match res {
                Ok(at) => prev = at,
                Err(m) => {
                    return Err(format!(
                        "{}:{}: {m}\n    {}",
                        self.script.path, line.no, line.text
                    ))
                }
            }
        }
        Ok(())
    }

    fn flow(&mut self, n: u16) -> &mut Flow {
        let (base, port) = (self.peer_isn_base, self.listen_port);
        self.flows.entry(n).or_insert_with(|| Flow {
            peer_port: PEER_PORT_BASE + n,
            engine_port: port,
            peer_isn: base.wrapping_add(n as u32 * 0x0100_0000),
            peer_syn: 0,
            engine_isn: 0,
            engine_tsval: 0,
        })
    }

    /// Runs one line at script time `t`; returns the time the next `+` counts from.
    fn line(&mut self, line: &Line, t: f64) -> Result<f64, String> {
        let tol = line.tol.unwrap_or(self.tolerance);
        if let Kind::Expect(spec) = &line.kind {
            self.advance(dur(t + tol), true)?;
            let Some(seen) = self.pending.pop_front() else {
                return Err(format!(
                    "expected a packet at {t:.6}±{tol}, nothing was sent by {}",
                    secs(self.now)
                ));
            };
            if seen.at < dur(t - tol) {
                return Err(format!(
                    "expected at {t:.6}±{tol}, but saw at {}: {}",
                    secs(seen.at),
                    seen.what
                ));
            }
            self.check(line.flow, spec, &seen)
                .map_err(|m| format!("{m}\n    saw at {}: {}", secs(seen.at), seen.what))?;
            return Ok(seen.at.as_secs_f64());
        }
        self.advance(dur(t), false)?;
        if let Some(s) = self.pending.front() {
            return Err(format!(
                "unexpected packet at {} (before this line): {}",
                secs(s.at),
                s.what
            ));
        }
        match &line.kind {
            Kind::Expect(_) => unreachable!(),
            Kind::Inject(spec) => self.inject(line.flow, spec)?,
            Kind::InjectIcmp { icmp, seq } => self.inject_icmp(line.flow, icmp, *seq)?,
            Kind::App(a) => self.app(line.flow, a)?,
            Kind::Tcpi { field, value, tol } => self.tcpi(line.flow, field, value, *tol)?,
            Kind::Stat { counter, value } => {
                let stats = self.engine.stats();
                let got = stats
                    .fields()
                    .into_iter()
                    .find(|(n, _)| n == counter)
                    .map(|(_, v)| v)
                    .ok_or_else(|| format!("no counter `{counter}` in CoreStats"))?;
                if got != *value {
                    return Err(format!("stat {counter}: expected {value}, got {got}"));
                }
            }
        }
        Ok(t)
    }

    // ------------------------------------------------------------------ time and frames

    /// Polls at the current time until the engine has nothing left to do right now.
    fn poll(&mut self) -> Result<(), String> {
        for _ in 0..1000 {
            let a = self.engine.poll(self.now);
            let arp = self.collect()?;
            if !a.busy() && !arp {
                return Ok(());
            }
        }
        Err(format!(
            "engine still busy after 1000 polls at {}",
            secs(self.now)
        ))
    }

    /// Runs timers up to `to` (stopping at the first packet when `stop_on_frame`).
    fn advance(&mut self, to: Duration, stop_on_frame: bool) -> Result<(), String> {
        self.poll()?;
        for _ in 0..100_000 {
            if stop_on_frame && !self.pending.is_empty() {
                return Ok(());
            }
            match self.engine.next_deadline() {
                Some(d) if d <= to => {
                    self.now = self.now.max(d);
                    self.poll()?;
                }
                _ => {
                    if to > self.now {
                        self.now = to;
                        self.poll()?;
                    }
                    return Ok(());
                }
            }
        }
        Err(format!("timers keep firing at {}", secs(self.now)))
    }

    fn send_frame(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut f = self.peer.alloc_tx().ok_or("the wire has no free buffer")?;
        if bytes.len() > f.capacity() {
            return Err(format!(
                "frame of {} bytes is larger than the wire's MTU",
                bytes.len()
            ));
        }
        f.set_len(bytes.len());
        f.data_mut().copy_from_slice(bytes);
        let mut v = vec![f];
        if self.peer.tx_burst(&mut v) != 1 {
            return Err("the wire did not take the frame".into());
        }
        Ok(())
    }

    /// Takes the engine's frames off the wire; answers ARP. Returns whether it answered any.
    fn collect(&mut self) -> Result<bool, String> {
        let mut arp = false;
        self.peer.rx_burst(&mut self.rx, 256);
        let frames: Vec<Vec<u8>> = self
            .rx
            .drain(..)
            .map(|f| {
                let v = f.data().to_vec();
                self.peer.free(f);
                v
            })
            .collect();
        for f in frames {
            match wire::parse(&f) {
                Parsed::ArpRequest {
                    sender_mac,
                    sender_ip,
                    target,
                } if target == PEER_IP => {
                    let r = wire::arp_reply(PEER_MAC, PEER_IP, sender_mac, sender_ip);
                    self.send_frame(&r)?;
                    arp = true;
                }
                // The stack announces its own address at start (RFC 5227); nothing to answer.
                Parsed::ArpRequest {
                    sender_ip, target, ..
                } if target == sender_ip => {}
                Parsed::ArpRequest { target, .. } => self.pending.push_back(Seen {
                    at: self.now,
                    flow: None,
                    tcp: None,
                    what: format!("ARP request for {target}"),
                }),
                Parsed::Other(what) => self.pending.push_back(Seen {
                    at: self.now,
                    flow: None,
                    tcp: None,
                    what,
                }),
                Parsed::Tcp(t) => {
                    let flow = t
                        .dport
                        .checked_sub(PEER_PORT_BASE)
                        .filter(|&n| n < 100 && f[30..34] == PEER_IP.octets());
                    if let Some(n) = flow {
                        let fl = self.flow(n);
                        if t.flags & SYN != 0 {
                            fl.engine_isn = t.seq;
                            fl.engine_port = t.sport;
                        }
                        for o in &t.opts {
                            if let TcpOpt::Ts(v, _) = o {
                                fl.engine_tsval = *v;
                            }
                        }
                    }
                    let what = self.describe(flow, &t);
                    self.pending.push_back(Seen {
                        at: self.now,
                        flow,
                        tcp: Some(t),
                        what,
                    });
                }
            }
        }
        Ok(arp)
    }

    /// A packet from the engine in script notation (relative numbers).
    fn describe(&mut self, flow: Option<u16>, t: &Tcp) -> String {
        let (eisn, pisn) = match flow {
            Some(n) => {
                let f = self.flow(n);
                (f.engine_isn, f.peer_isn)
            }
            None => (0, 0),
        };
        let at = match flow {
            Some(n) if n > 0 => format!("@{n} "),
            Some(_) => String::new(),
            None => format!("(to port {}) ", t.dport),
        };
        let mut s = format!(
            "> {at}{} {}:{}({})",
            wire::flags_text(t.flags),
            t.seq.wrapping_sub(eisn),
            t.seq
                .wrapping_sub(eisn)
                .wrapping_add(t.payload.len() as u32),
            t.payload.len()
        );
        if t.flags & ACK != 0 {
            s += &format!(" ack {}", t.ack.wrapping_sub(pisn));
        }
        s += &format!(" win {}", t.win);
        let opts: Vec<String> = t
            .opts
            .iter()
            .map(|o| match o {
                TcpOpt::Nop => "nop".into(),
                TcpOpt::Eol => "eol".into(),
                TcpOpt::Mss(m) => format!("mss {m}"),
                TcpOpt::Wscale(w) => format!("wscale {w}"),
                TcpOpt::SackOk => "sackOK".into(),
                TcpOpt::Ts(v, e) => format!("TS val {v} ecr {e}"),
                TcpOpt::Sack(b) => {
                    let blocks: Vec<String> = b
                        .iter()
                        .map(|(l, r)| format!("{}:{}", l.wrapping_sub(pisn), r.wrapping_sub(pisn)))
                        .collect();
                    format!("sack {}", blocks.join(" "))
                }
            })
            .collect();
        if !opts.is_empty() {
            s += &format!(" <{}>", opts.join(","));
        }
        s
    }

    // ------------------------------------------------------------------ checking output

    fn check(&mut self, flow: u16, spec: &SegSpec, seen: &Seen) -> Result<(), String> {
        let Some(t) = &seen.tcp else {
            return Err("expected a TCP segment".into());
        };
        if seen.flow != Some(flow) {
            return Err(format!("expected a segment of flow @{flow}"));
        }
        let f = self.flow(flow);
        let mut bad = Vec::new();
        if t.flags != spec.flags {
            bad.push(format!("flags {}", wire::flags_text(spec.flags)));
        }
        let rel = t.seq.wrapping_sub(f.engine_isn);
        if rel != spec.seq {
            bad.push(format!("seq {}", spec.seq));
        }
        if t.payload.len() as u32 != spec.len {
            bad.push(format!("length {}", spec.len));
        }
        if let Some(Num::Val(a)) = spec.ack {
            if t.ack.wrapping_sub(f.peer_isn) != a {
                bad.push(format!("ack {a}"));
            }
        }
        if let Some(Num::Val(w)) = spec.win {
            if t.win as u32 != w {
                bad.push(format!("win {w}"));
            }
        }
        if let Err(m) = check_opts(&spec.opts, &t.opts, f.peer_isn) {
            bad.push(m);
        }
        if bad.is_empty() && !t.payload.is_empty() {
            let first = spec.seq.wrapping_sub(1) as u64;
            if let Some(i) = (0..t.payload.len())
                .find(|&i| t.payload[i] != pattern(ENGINE_STREAM, first + i as u64))
            {
                bad.push(format!(
                    "payload byte {} as the app wrote it",
                    first + i as u64
                ));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("expected {}", bad.join(", ")))
        }
    }

    // ------------------------------------------------------------------ input

    fn inject(&mut self, flow: u16, spec: &SegSpec) -> Result<(), String> {
        let f = self.flow(flow);
        if spec.flags & SYN != 0 {
            f.peer_syn = spec.seq;
        }
        let ack = match spec.ack {
            Some(Num::Val(a)) => f.engine_isn.wrapping_add(a),
            Some(Num::Any) => return Err("an injected segment needs a real ack number".into()),
            None if spec.flags & ACK != 0 => return Err("an ACK needs `ack N`".into()),
            None => 0,
        };
        let win = match spec.win {
            Some(Num::Val(w)) if w <= 65535 => w as u16,
            None => 65535,
            _ => return Err("win must be 0 to 65535".into()),
        };
        let mut opts = Vec::new();
        match &spec.opts {
            Opts::None => {}
            Opts::Any => return Err("an injected segment cannot have <...> options".into()),
            Opts::List(l) => {
                for o in l {
                    opts.push(match o {
                        OptSpec::Nop => TcpOpt::Nop,
                        OptSpec::Eol => TcpOpt::Eol,
                        OptSpec::SackOk => TcpOpt::SackOk,
                        OptSpec::Mss(Num::Val(v)) if *v <= 65535 => TcpOpt::Mss(*v as u16),
                        OptSpec::Wscale(Num::Val(v)) if *v <= 255 => TcpOpt::Wscale(*v as u8),
                        OptSpec::Ts {
                            val: Num::Val(v),
                            ecr,
                        } => TcpOpt::Ts(
                            *v,
                            match ecr {
                                Num::Val(e) => *e,
                                Num::Any => f.engine_tsval,
                            },
                        ),
                        OptSpec::Sack(b) => TcpOpt::Sack(
                            b.iter()
                                .map(|(l, r)| {
                                    (f.engine_isn.wrapping_add(*l), f.engine_isn.wrapping_add(*r))
                                })
                                .collect(),
                        ),
                        _ => return Err(format!("option {o:?} cannot be sent as written")),
                    });
                }
            }
        }
        let first_data = spec.seq.wrapping_add((spec.flags & SYN != 0) as u32);
        let off = first_data.wrapping_sub(f.peer_syn).wrapping_sub(1) as u64;
        let payload = (0..spec.len as u64)
            .map(|i| pattern(PEER_STREAM, off + i))
            .collect();
        let t = Tcp {
            sport: f.peer_port,
            dport: f.engine_port,
            seq: f.peer_isn.wrapping_add(spec.seq),
            ack,
            flags: spec.flags,
            win,
            opts,
            payload,
        };
        let frame = wire::tcp_frame(&t, (PEER_IP, PEER_MAC), (ENGINE_IP, ENGINE_MAC));
        self.send_frame(&frame)?;
        self.poll()
    }

    fn inject_icmp(&mut self, flow: u16, icmp: &Icmp, seq: u32) -> Result<(), String> {
        let f = self.flow(flow);
        let inner = Tcp {
            sport: f.engine_port,
            dport: f.peer_port,
            seq: f.engine_isn.wrapping_add(seq),
            ack: 0,
            flags: ACK,
            win: 0,
            opts: Vec::new(),
            payload: Vec::new(),
        };
        let (code, mtu) = match icmp {
            Icmp::FragNeeded { mtu } => (4, *mtu),
            Icmp::HostUnreach => (1, 0),
        };
        let frame = wire::icmp_unreach_frame(
            code,
            mtu,
            &inner,
            (PEER_IP, PEER_MAC),
            (ENGINE_IP, ENGINE_MAC),
        );
        self.send_frame(&frame)?;
        self.poll()
    }

    // ------------------------------------------------------------------ app and asserts

    fn app(&mut self, flow: u16, a: &AppAction) -> Result<(), String> {
        let port = self.flow(flow).peer_port;
        let (app, io) = self.engine.app_io();
        let with_conn = |app: &mut ScriptApp| -> Result<usize, String> {
            app.conns
                .iter()
                .rposition(|c| c.peer_port == port)
                .ok_or_else(|| format!("the app has no connection for flow @{flow}"))
        };
        match a {
            AppAction::Listen(p) => {
                io.listen(*p).map_err(|e| format!("listen: {e}"))?;
                self.listen_port = *p;
                for f in self.flows.values_mut() {
                    f.engine_port = *p;
                }
            }
            AppAction::Connect => {
                let id = io
                    .connect(SocketAddrV4::new(PEER_IP, port))
                    .map_err(|e| format!("connect: {e}"))?;
                app.conns.push(AppConn {
                    peer_port: port,
                    id,
                    written: 0,
                    want_written: 0,
                    read: 0,
                    events: Vec::new(),
                    live: true,
                });
            }
            AppAction::Saw(ev) => {
                let i = with_conn(app)?;
                let c = &app.conns[i];
                if !c.events.iter().any(|e| e == ev) {
                    return Err(format!(
                        "the app was not told `{ev}`; it saw {:?}",
                        c.events
                    ));
                }
            }
            _ => {
                let i = with_conn(app)?;
                let c = &mut app.conns[i];
                match a {
                    AppAction::Write(n) => {
                        c.want_written += n;
                        ScriptApp::pump(io, c)?;
                    }
                    AppAction::Read(n) => {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut got = 0u64;
                        loop {
                            match io.read(c.id, &mut buf) {
                                Ok(0) => break,
                                Ok(k) => {
                                    for (j, &b) in buf[..k].iter().enumerate() {
                                        let off = c.read + j as u64;
                                        if b != pattern(PEER_STREAM, off) {
                                            return Err(format!(
                                                "read: byte {off} is not what the peer sent"
                                            ));
                                        }
                                    }
                                    c.read += k as u64;
                                    got += k as u64;
                                }
                                Err(longhaul::Error::WouldBlock) => break,
                                Err(e) => return Err(format!("read: {e}")),
                            }
                        }
                        if got != *n {
                            return Err(format!("read: expected {n} bytes, got {got}"));
                        }
                    }
                    AppAction::Eof => {
                        let mut buf = [0u8; 1];
                        match io.read(c.id, &mut buf) {
                            Ok(0) => {}
                            r => {
                                return Err(format!("eof: expected end of stream, read gave {r:?}"))
                            }
                        }
                    }
                    AppAction::Shutdown => {
                        io.shutdown(c.id).map_err(|e| format!("shutdown: {e}"))?
                    }
                    AppAction::Close => {
                        io.close(c.id).map_err(|e| format!("close: {e}"))?;
                        c.live = false;
                    }
                    AppAction::Abort => {
                        io.abort(c.id).map_err(|e| format!("abort: {e}"))?;
                        c.live = false;
                    }
                    AppAction::Nodelay(on) => io
                        .set_nodelay(c.id, *on)
                        .map_err(|e| format!("nodelay: {e}"))?,
                    AppAction::Cork(on) => {
                        io.set_cork(c.id, *on).map_err(|e| format!("cork: {e}"))?
                    }
                    AppAction::Listen(_) | AppAction::Connect | AppAction::Saw(_) => unreachable!(),
                }
            }
        }
        self.poll()
    }

    fn tcpi(&mut self, flow: u16, field: &str, value: &str, tol: u64) -> Result<(), String> {
        let port = self.flow(flow).peer_port;
        let info = self
            .engine
            .io()
            .all_info()
            .into_iter()
            .rev()
            .find(|i| i.remote.port() == port);
        if field == "state" {
            let got = info.map_or("Closed".to_string(), |i| format!("{:?}", i.state));
            return match got == value {
                true => Ok(()),
                false => Err(format!("tcpi state: expected {value}, got {got}")),
            };
        }
        let info = info.ok_or_else(|| format!("no connection for flow @{flow}"))?;
        let got =
            tcpi_field(&info, field).ok_or_else(|| format!("unknown tcpi field `{field}`"))?;
        let want: u64 = match value {
            "true" => 1,
            "false" => 0,
            v => v
                .parse()
                .map_err(|_| format!("`{v}` is not a number (or true/false)"))?,
        };
        if got.abs_diff(want) > tol {
            return Err(format!("tcpi {field}: expected {want} +- {tol}, got {got}"));
        }
        Ok(())
    }
}

/// Compares the options a script expects with those seen. NOP and EOL are layout and are not
/// compared; the order of the others is not compared either (Linux and longhaul lay out options
/// differently). SACK blocks are relative to `peer_isn`.
fn check_opts(spec: &Opts, seen: &[TcpOpt], peer_isn: u32) -> Result<(), String> {
    let seen: Vec<&TcpOpt> = seen
        .iter()
        .filter(|o| !matches!(o, TcpOpt::Nop | TcpOpt::Eol))
        .collect();
    let list = match spec {
        Opts::Any => return Ok(()),
        Opts::None => {
            return match seen.is_empty() {
                true => Ok(()),
                false => Err("no options".into()),
            }
        }
        Opts::List(l) => l,
    };
    let want: Vec<&OptSpec> = list
        .iter()
        .filter(|o| !matches!(o, OptSpec::Nop | OptSpec::Eol))
        .collect();
    let numeq = |n: &Num, v: u32| matches!(n, Num::Any) || *n == Num::Val(v);
    let mut used = vec![false; seen.len()];
    for w in &want {
        let hit = seen.iter().enumerate().position(|(i, s)| {
            !used[i]
                && match (w, s) {
                    (OptSpec::Mss(n), TcpOpt::Mss(v)) => numeq(n, *v as u32),
                    (OptSpec::Wscale(n), TcpOpt::Wscale(v)) => numeq(n, *v as u32),
                    (OptSpec::SackOk, TcpOpt::SackOk) => true,
                    (OptSpec::Ts { val, ecr }, TcpOpt::Ts(v, e)) => {
                        numeq(val, *v) && numeq(ecr, *e)
                    }
                    (OptSpec::Sack(b), TcpOpt::Sack(s)) => {
                        b.len() == s.len()
                            && b.iter().zip(s).all(|((l, r), (sl, sr))| {
                                sl.wrapping_sub(peer_isn) == *l && sr.wrapping_sub(peer_isn) == *r
                            })
                    }
                    _ => false,
                }
        });
        match hit {
            Some(i) => used[i] = true,
            None => return Err(format!("option <{}>", spec_text(w))),
        }
    }
    if used.iter().any(|u| !u) {
        return Err("no other options".into());
    }
    Ok(())
}

/// A numeric `tcp_info`-like field by name.
fn tcpi_field(i: &ConnInfo, name: &str) -> Option<u64> {
    let t = &i.tcp;
    Some(match name {
        "rtt_us" => t.rtt_us,
        "rttvar_us" => t.rttvar_us,
        "min_rtt_us" => t.min_rtt_us,
        "rto_us" => t.rto_us,
        "cwnd_bytes" => t.cwnd_bytes,
        "ssthresh_bytes" => t.ssthresh_bytes,
        "in_flight_bytes" => t.in_flight_bytes,
        "bytes_sent" => t.bytes_sent,
        "bytes_retrans" => t.bytes_retrans,
        "bytes_acked" => t.bytes_acked,
        "bytes_received" => t.bytes_received,
        "segs_in" => t.segs_in,
        "segs_out" => t.segs_out,
        "data_segs_in" => t.data_segs_in,
        "data_segs_out" => t.data_segs_out,
        "retransmits_total" => t.retransmits_total,
        "retransmits_current" => t.retransmits_current as u64,
        "rto_count" => t.rto_count,
        "fast_retransmits" => t.fast_retransmits,
        "dupacks_in" => t.dupacks_in,
        "sacks_in" => t.sacks_in,
        "dsacks_out" => t.dsacks_out,
        "rcv_wnd" => t.rcv_wnd,
        "snd_wnd" => t.snd_wnd,
        "snd_mss" => t.snd_mss as u64,
        "rcv_mss" => t.rcv_mss as u64,
        "snd_wscale" => t.snd_wscale as u64,
        "rcv_wscale" => t.rcv_wscale as u64,
        "timestamps" => t.timestamps as u64,
        "sack" => t.sack as u64,
        "challenge_acks" => t.challenge_acks,
        "paws_drops" => t.paws_drops,
        "zero_window_probes" => t.zero_window_probes,
        "sacked_bytes" => t.sacked_bytes,
        "lost_bytes" => t.lost_bytes,
        "retrans_out_bytes" => t.retrans_out_bytes,
        "lost_rack" => t.lost_rack,
        "lost_dupack" => t.lost_dupack,
        "lost_rto" => t.lost_rto,
        "recoveries" => t.recoveries,
        "tlp_probes" => t.tlp_probes,
        "tlp_recoveries" => t.tlp_recoveries,
        "dsacks_in" => t.dsacks_in,
        "spurious_undos" => t.spurious_undos,
        "spurious_rtos" => t.spurious_rtos,
        "reord_seen" => t.reord_seen as u64,
        "reo_wnd_mult" => t.reo_wnd_mult as u64,
        "delivered_bytes" => t.delivered_bytes,
        "delivery_rate_bps" => t.delivery_rate_bps,
        "pacing_rate_bps" => t.pacing_rate_bps,
        "pmtu" => t.pmtu as u64,
        "mtu_probes" => t.mtu_probes,
        "mtu_probe_successes" => t.mtu_probe_successes,
        "mtu_probe_failures" => t.mtu_probe_failures,
        "blackholes_detected" => t.blackholes_detected,
        "bbr_bw_bps" => t.bbr_bw_bps,
        "bbr_max_bw_bps" => t.bbr_max_bw_bps,
        "bbr_min_rtt_us" => t.bbr_min_rtt_us,
        "bbr_inflight_hi_bytes" => t.bbr_inflight_hi_bytes,
        "bbr_inflight_lo_bytes" => t.bbr_inflight_lo_bytes,
        "bbr_bw_lo_bps" => t.bbr_bw_lo_bps,
        "bbr_pacing_gain_pct" => t.bbr_pacing_gain_pct as u64,
        "bbr_cwnd_gain_pct" => t.bbr_cwnd_gain_pct as u64,
        "recv_queue" => i.recv_queue as u64,
        "send_queue" => i.send_queue as u64,
        "nodelay" => i.nodelay as u64,
        _ => return None,
    })
}

/// An expected option as a script writes it.
fn spec_text(o: &OptSpec) -> String {
    match o {
        OptSpec::Nop => "nop".into(),
        OptSpec::Eol => "eol".into(),
        OptSpec::Mss(n) => format!("mss {n}"),
        OptSpec::Wscale(n) => format!("wscale {n}"),
        OptSpec::SackOk => "sackOK".into(),
        OptSpec::Ts { val, ecr } => format!("TS val {val} ecr {ecr}"),
        OptSpec::Sack(b) => {
            let blocks: Vec<String> = b.iter().map(|(l, r)| format!("{l}:{r}")).collect();
            format!("sack {}", blocks.join(" "))
        }
    }
}
