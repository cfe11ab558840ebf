//! A deterministic two-ended simulation: two real engines ([`longhaul::stack::Engine`]), each on
//! one end of its own `mem` wire, joined by a link this harness owns. The harness takes every frame
//! an engine transmits, runs it through seeded impairments (loss, duplication, reordering, delay and
//! jitter, a rate limit with a drop-tail queue) and hands it to the other engine at its virtual
//! arrival time. Time jumps to the next event (a frame arrival, an engine timer, or the 100 ms app
//! tick the threaded loop would also wake for), so a simulated minute takes milliseconds, and the
//! same seed gives the same run, frame for frame.
//!
//! ```text
//!  client Engine ──mem wire── [harness end] ─▶ Link c→s ─▶ [harness end] ──mem wire── server Engine
//!                                          ◀─ Link s→c ◀─
//! ```

use super::{config, CLIENT_IP, CLIENT_MAC, SERVER_IP, SERVER_MAC};
use longhaul::pmd::mem::{self, MemConfig, MemQueue};
use longhaul::pmd::{Frame, Queue};
use longhaul::stack::Engine;
use longhaul::{App, Config};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::time::Duration;

/// The threaded core loop never sleeps longer than this (its app tick); the simulation wakes the
/// engines at least as often unless [`SimConfig::tick_wakes`] is off.
const TICK: Duration = Duration::from_millis(100);
/// Polls at one virtual instant before the harness calls it a livelock.
const SAME_INSTANT_POLLS: u64 = 100_000;

/// A small seeded generator (SplitMix64): reproducible, good enough for fault injection.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        SimRng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `[0, max)` (zero when `max` is zero).
    pub fn duration(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next_u64() % max.as_nanos() as u64)
    }
}

/// One direction of the link. Faults apply in netem's order: loss, duplication, then the rate
/// limiter's queue, then propagation delay, jitter and the reordering hold-back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// Probability that a frame is dropped before it reaches the queue.
    pub loss: f64,
    /// Probability that a frame is sent twice (the copy takes the same path).
    pub duplicate: f64,
    /// Probability that a frame is held back by an extra `[0, reorder_delay)`, so later frames
    /// overtake it.
    pub reorder: f64,
    /// Largest hold-back of a reordered frame.
    pub reorder_delay: Duration,
    /// Fixed one-way propagation delay.
    pub delay: Duration,
    /// Extra uniform delay in `[0, jitter)` per frame (frames may overtake each other, as netem).
    pub jitter: Duration,
    /// Bottleneck rate in bit/s (whole Ethernet frames); `None` for no limit.
    pub rate_bps: Option<u64>,
    /// Drop-tail queue ahead of the bottleneck, in bytes (only with `rate_bps`).
    pub queue_bytes: usize,
    /// An MTU black hole: frames whose IP packet is larger than this vanish silently (no ICMP),
    /// as `longhaul netem --mtu-blackhole` does.
    pub blackhole_above: Option<usize>,
}

impl Default for LinkConfig {
    /// A clean link with 1 ms one-way delay and no rate limit.
    fn default() -> Self {
        LinkConfig {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            delay: Duration::from_millis(1),
            jitter: Duration::ZERO,
            rate_bps: None,
            queue_bytes: usize::MAX,
            blackhole_above: None,
        }
    }
}

/// The whole simulation's shape.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Client to server.
    pub up: LinkConfig,
    /// Server to client.
    pub down: LinkConfig,
    /// Seed of the link's faults and of both engines (ISNs, ports, secrets).
    pub seed: u64,
    /// Stack configuration of each side (address and MAC are set by [`Sim::new`]).
    pub client: Config,
    pub server: Config,
    /// IP MTU of both wires.
    pub mtu: usize,
    /// Wake each engine at least every 100 ms as the threaded loop does (drives `App::on_tick`).
    pub tick_wakes: bool,
}

impl SimConfig {
    /// The same link both ways, default stack configurations.
    pub fn symmetric(link: LinkConfig, seed: u64) -> Self {
        SimConfig {
            up: link,
            down: link,
            seed,
            client: config(CLIENT_IP, CLIENT_MAC),
            server: config(SERVER_IP, SERVER_MAC),
            mtu: 1500,
            tick_wakes: true,
        }
    }
}

/// What one direction of the link did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames the sending engine transmitted.
    pub offered: u64,
    /// Frames that arrived at the other engine (duplicates included).
    pub delivered: u64,
    /// Frames dropped by random loss.
    pub lost: u64,
    /// Frames dropped because the bottleneck queue was full.
    pub queue_drops: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Frames held back for reordering.
    pub reordered: u64,
    /// Largest bottleneck queue seen, in bytes.
    pub max_queue_bytes: u64,
    /// Frames dropped by the MTU black hole.
    pub blackholed: u64,
}

/// Why [`Sim::drive_until`] gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stuck {
    /// The condition did not hold by the virtual-time limit.
    TimeLimit(Duration),
    /// Nothing left to happen (no frame in flight, no timer) and the condition is false.
    Quiet(Duration),
    /// The engines kept polling without virtual time moving (or the step bound ran out).
    Livelock(Duration, u64),
}

impl fmt::Display for Stuck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stuck::TimeLimit(t) => write!(f, "condition still false at the limit, t={t:?}"),
            Stuck::Quiet(t) => write!(f, "no frame in flight and no timer armed at t={t:?}"),
            Stuck::Livelock(t, n) => write!(f, "livelock: {n} polls without progress at t={t:?}"),
        }
    }
}

/// A frame on its way across the link.
struct InFlight {
    at: Duration,
    /// Tie-break: equal arrival times keep transmit order.
    order: u64,
    to_server: bool,
    bytes: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// One direction's impairment state.
struct Link {
    cfg: LinkConfig,
    rng: SimRng,
    /// When the bottleneck finishes serialising what it holds.
    busy_until: Duration,
    stats: LinkStats,
}

impl Link {
    /// Arrival times for a frame of `len` bytes offered at `now` (none if dropped, two if
    /// duplicated).
    fn admit(&mut self, now: Duration, len: usize, out: &mut Vec<Duration>) {
        self.stats.offered += 1;
        if self
            .cfg
            .blackhole_above
            .is_some_and(|m| len.saturating_sub(14) > m)
        {
            self.stats.blackholed += 1;
            return;
        }
        if self.rng.chance(self.cfg.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.cfg.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut leave = now;
            if let Some(rate) = self.cfg.rate_bps {
                let start = self.busy_until.max(now);
                let backlog_ns = (start - now).as_nanos() as u64;
                let backlog_bytes = (backlog_ns as u128 * rate as u128 / 8 / 1_000_000_000) as u64;
                if backlog_bytes as usize + len > self.cfg.queue_bytes {
                    self.stats.queue_drops += 1;
                    continue;
                }
                self.stats.max_queue_bytes = self.stats.max_queue_bytes.max(backlog_bytes);
                let tx_ns = (len as u128 * 8 * 1_000_000_000 / rate as u128) as u64;
                self.busy_until = start + Duration::from_nanos(tx_ns);
                leave = self.busy_until;
            }
            let mut at = leave + self.cfg.delay + self.rng.duration(self.cfg.jitter);
            if self.rng.chance(self.cfg.reorder) {
                self.stats.reordered += 1;
                at += self.rng.duration(self.cfg.reorder_delay);
            }
            out.push(at);
        }
    }
}

/// Two engines and the link between them, on one virtual clock.
pub struct Sim<C: App, S: App> {
    pub client: Engine<MemQueue, C>,
    pub server: Engine<MemQueue, S>,
    /// The harness's end of each engine's wire.
    client_end: MemQueue,
    server_end: MemQueue,
    up: Link,
    down: Link,
    flight: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    now: Duration,
    last_poll: [Duration; 2],
    polls: u64,
    rx: Vec<<MemQueue as Queue>::Frame>,
    spare: Vec<Vec<u8>>,
    times: Vec<Duration>,
    tick_wakes: bool,
    /// Print every frame's fate from this virtual time on (`SIM_TRACE`), for reading a failing seed.
    trace_from: Option<Duration>,
}

impl<C: App, S: App> Sim<C, S> {
    /// Builds both engines at virtual time zero (their apps' `on_start` runs here).
    pub fn new(cfg: SimConfig, client: C, server: S) -> Self {
        let wire = MemConfig {
            mtu: cfg.mtu,
            ring: 8192,
            ..MemConfig::default()
        };
        let (c_engine_end, client_end) = mem::wire(wire);
        let (s_engine_end, server_end) = mem::wire(wire);
        let mut ccfg = cfg.client.clone();
        ccfg.ip(CLIENT_IP).unwrap().mac(CLIENT_MAC).unwrap();
        let mut scfg = cfg.server.clone();
        scfg.ip(SERVER_IP).unwrap().mac(SERVER_MAC).unwrap();
        let seed = cfg.seed;
        let server = Engine::new(0, &scfg, SERVER_MAC, seed ^ 0x5E, s_engine_end, server);
        let client = Engine::new(0, &ccfg, CLIENT_MAC, seed ^ 0xC1, c_engine_end, client);
        let link = |c: LinkConfig, salt: u64| Link {
            cfg: c,
            rng: SimRng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ salt),
            busy_until: Duration::ZERO,
            stats: LinkStats::default(),
        };
        Sim {
            client,
            server,
            client_end,
            server_end,
            up: link(cfg.up, 1),
            down: link(cfg.down, 2),
            flight: BinaryHeap::new(),
            order: 0,
            now: Duration::ZERO,
            last_poll: [Duration::ZERO; 2],
            polls: 0,
            rx: Vec::with_capacity(256),
            spare: Vec::new(),
            times: Vec::with_capacity(2),
            tick_wakes: cfg.tick_wakes,
            // SIM_TRACE=1 traces everything; SIM_TRACE=<seconds> from that virtual time on.
            trace_from: std::env::var("SIM_TRACE").ok().map(|v| {
                Duration::from_secs_f64(v.parse::<f64>().ok().filter(|&s| s > 1.0).unwrap_or(0.0))
            }),
        }
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Engine polls so far (a measure of simulation work).
    pub fn polls(&self) -> u64 {
        self.polls
    }

    /// Client-to-server and server-to-client link counters.
    pub fn link_stats(&self) -> (LinkStats, LinkStats) {
        (self.up.stats, self.down.stats)
    }

    /// Frames on the link right now.
    pub fn frames_in_flight(&self) -> usize {
        self.flight.len()
    }

    /// Changes a direction's impairments from now on (e.g. "the faults stop").
    pub fn set_link(&mut self, up: LinkConfig, down: LinkConfig) {
        self.up.cfg = up;
        self.down.cfg = down;
    }

    /// Polls one engine until it has nothing left to do at this instant, moving what it sends
    /// onto the link. Returns false on a livelock (too many polls at one instant).
    fn settle(&mut self, server: bool) -> bool {
        for _ in 0..SAME_INSTANT_POLLS {
            self.polls += 1;
            let act = if server {
                self.server.poll(self.now)
            } else {
                self.client.poll(self.now)
            };
            self.last_poll[server as usize] = self.now;
            let sent = self.collect(server);
            if !act.busy() && sent == 0 {
                return true;
            }
        }
        false
    }

    /// Takes what an engine transmitted and schedules it on its outgoing link.
    fn collect(&mut self, server: bool) -> usize {
        let (end, link) = if server {
            (&mut self.server_end, &mut self.down)
        } else {
            (&mut self.client_end, &mut self.up)
        };
        let mut n = 0;
        loop {
            let got = end.rx_burst(&mut self.rx, 256);
            if got == 0 {
                break;
            }
            n += got;
            for f in self.rx.drain(..) {
                self.times.clear();
                link.admit(self.now, f.data().len(), &mut self.times);
                if self.trace_from.is_some_and(|from| self.now >= from) {
                    let dir = if server { "s->c" } else { "c->s" };
                    let fate: Vec<String> = self.times.iter().map(|t| format!("{t:?}")).collect();
                    println!(
                        "{:>12?} {dir} {} -> arrives {}",
                        self.now,
                        describe(f.data()),
                        if fate.is_empty() {
                            "LOST".to_string()
                        } else {
                            fate.join(", ")
                        }
                    );
                }
                for &at in &self.times {
                    let mut bytes = self.spare.pop().unwrap_or_default();
                    bytes.clear();
                    bytes.extend_from_slice(f.data());
                    self.order += 1;
                    self.flight.push(Reverse(InFlight {
                        at,
                        order: self.order,
                        to_server: !server,
                        bytes,
                    }));
                }
                end.free(f);
            }
        }
        n
    }

    /// Hands every frame due by now to its engine (polling it when its ring is full).
    fn deliver_due(&mut self) {
        while self
            .flight
            .peek()
            .is_some_and(|Reverse(f)| f.at <= self.now)
        {
            let Reverse(f) = self.flight.pop().expect("peeked");
            let to_server = f.to_server;
            loop {
                let end = if to_server {
                    &mut self.server_end
                } else {
                    &mut self.client_end
                };
                let Some(mut frame) = end.alloc_tx() else {
                    // The pool is empty: the engine holds the frames; let it work.
                    self.settle(to_server);
                    continue;
                };
                frame.set_len(f.bytes.len());
                frame.data_mut().copy_from_slice(&f.bytes);
                let mut v = vec![frame];
                if end.tx_burst(&mut v) == 1 {
                    break;
                }
                for fr in v {
                    end.free(fr);
                }
                self.settle(to_server);
            }
            if to_server {
                self.up.stats.delivered += 1;
            } else {
                self.down.stats.delivered += 1;
            }
            self.spare.push(f.bytes);
        }
    }

    /// The next instant anything happens: a frame arrives, a timer fires, or a tick is due.
    fn next_event(&self) -> Option<Duration> {
        let mut next = self.flight.peek().map(|Reverse(f)| f.at);
        let mut consider = |t: Option<Duration>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.client.next_deadline());
        consider(self.server.next_deadline());
        if self.tick_wakes {
            consider(Some(self.last_poll[0] + TICK));
            consider(Some(self.last_poll[1] + TICK));
        }
        next.map(|t| t.max(self.now))
    }

    /// One event: settle both engines, move time to the next event and deliver what is due.
    /// Returns false when nothing more can happen, and an error on a livelock.
    pub fn step(&mut self) -> Result<bool, Stuck> {
        if !self.settle(false) || !self.settle(true) {
            return Err(Stuck::Livelock(self.now, SAME_INSTANT_POLLS));
        }
        let Some(next) = self.next_event() else {
            return Ok(false);
        };
        self.now = next;
        self.deliver_due();
        Ok(true)
    }

    /// Runs until `cond` holds, or fails when virtual time passes `limit`, nothing is left to
    /// happen, or the engines spin. Returns the virtual time it took.
    pub fn drive_until(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&mut Self) -> bool,
    ) -> Result<Duration, Stuck> {
        let start = self.now;
        let mut same_instant = 0u64;
        loop {
            if cond(self) {
                return Ok(self.now - start);
            }
            if self.now - start > limit {
                return Err(Stuck::TimeLimit(self.now));
            }
            let before = self.now;
            if !self.step()? {
                // One more look: the last settle may have made the condition true.
                if cond(self) {
                    return Ok(self.now - start);
                }
                return Err(Stuck::Quiet(self.now));
            }
            if self.now == before {
                same_instant += 1;
                if same_instant > SAME_INSTANT_POLLS {
                    return Err(Stuck::Livelock(self.now, same_instant));
                }
            } else {
                same_instant = 0;
            }
        }
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) -> Result<(), Stuck> {
        let end = self.now + d;
        match self.drive_until(d, |s| s.now >= end) {
            Ok(_) | Err(Stuck::Quiet(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// 64-bit FNV-1a over a byte stream, fed in pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHash(pub u64);

impl Default for StreamHash {
    fn default() -> Self {
        StreamHash(0xcbf2_9ce4_8422_2325)
    }
}

impl StreamHash {
    /// Adds `bytes` to the hash.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// How a [`Transfer`] app behaves.
#[derive(Clone, Copy, Debug)]
pub struct TransferPlan {
    /// Bytes this side sends (then it half-closes).
    pub send: u64,
    /// Content seeds of the streams this side sends and expects ([`super::pattern`]).
    pub send_stream: u64,
    pub recv_stream: u64,
    /// Largest single `write` and `read` (each call picks a size in `1..=max`).
    pub max_write: usize,
    pub max_read: usize,
    /// Probability that the app stops reading or writing after a call and only comes back on its
    /// next tick (exercises full windows, zero-window probes and app-limited sending). It pauses
    /// at most once per [`PAUSE_EVERY`] bytes moved, so tiny calls do not crawl.
    pub pause: f64,
    /// Seed of the app's own choices.
    pub seed: u64,
}

/// What a [`Transfer`] saw.
#[derive(Clone, Debug, Default)]
pub struct TransferReport {
    pub sent: u64,
    pub sent_hash: StreamHash,
    pub received: u64,
    pub received_hash: StreamHash,
    /// Offset of the first received byte that differed from the peer's stream.
    pub first_bad_byte: Option<u64>,
    /// The peer's end of stream was read.
    pub eof: bool,
    /// The `Closed` event arrived.
    pub closed: bool,
    pub connected: bool,
    /// Error events and unexpected API errors.
    pub errors: Vec<String>,
}

/// Bytes a [`Transfer`] moves in a direction between two pauses, at least.
pub const PAUSE_EVERY: u64 = 16 * 1024;

/// One side of a transfer in both directions: the client connects to `target`, the server
/// listens on `listen`; each writes its stream in random chunks, half-closes after the last byte,
/// and reads and checks the peer's stream in random chunks.
pub struct Transfer {
    plan: TransferPlan,
    target: Option<std::net::SocketAddrV4>,
    listen: Option<u16>,
    conn: Option<longhaul::ConnId>,
    rng: SimRng,
    buf: Vec<u8>,
    shut: bool,
    /// Bytes written and read since the last pause in that direction.
    since_pause: [u64; 2],
    pub report: TransferReport,
}

impl Transfer {
    /// The connecting side.
    pub fn client(plan: TransferPlan, target: std::net::SocketAddrV4) -> Self {
        Self::new(plan, Some(target), None)
    }

    /// The listening side.
    pub fn server(plan: TransferPlan, port: u16) -> Self {
        Self::new(plan, None, Some(port))
    }

    fn new(
        plan: TransferPlan,
        target: Option<std::net::SocketAddrV4>,
        listen: Option<u16>,
    ) -> Self {
        Transfer {
            plan,
            target,
            listen,
            conn: None,
            rng: SimRng::new(plan.seed),
            buf: vec![0; plan.max_write.max(plan.max_read).max(1)],
            shut: false,
            since_pause: [0; 2],
            report: TransferReport::default(),
        }
    }

    /// Both directions done: everything sent and shut, the peer's stream read to its end.
    pub fn done(&self) -> bool {
        self.shut && self.report.eof
    }

    /// After moving `n` bytes in direction `dir` (0 write, 1 read): pause now?
    fn pause(&mut self, dir: usize, n: usize) -> bool {
        self.since_pause[dir] += n as u64;
        if self.since_pause[dir] >= PAUSE_EVERY && self.rng.chance(self.plan.pause) {
            self.since_pause[dir] = 0;
            return true;
        }
        false
    }

    fn write_some(&mut self, io: &mut longhaul::Io, c: longhaul::ConnId) {
        while self.report.sent < self.plan.send {
            let left = self.plan.send - self.report.sent;
            let n = (self.rng.range(1, self.plan.max_write as u64)).min(left) as usize;
            // Build no more than the buffer takes (write_space 0 arms `Writable`).
            let n = n.min(io.write_space(c).max(1));
            for (i, b) in self.buf[..n].iter_mut().enumerate() {
                *b = super::pattern(self.plan.send_stream, self.report.sent + i as u64);
            }
            match io.write(c, &self.buf[..n]) {
                Ok(w) => {
                    self.report.sent_hash.update(&self.buf[..w]);
                    self.report.sent += w as u64;
                    if self.report.sent < self.plan.send && self.pause(0, w) {
                        return;
                    }
                }
                Err(longhaul::Error::WouldBlock) => return,
                Err(e) => {
                    self.report.errors.push(format!("write: {e}"));
                    return;
                }
            }
        }
        if !self.shut {
            self.shut = true;
            if let Err(e) = io.shutdown(c) {
                self.report.errors.push(format!("shutdown: {e}"));
            }
        }
    }

    /// Reads and checks; stops early at a pause unless `drain` (the handle is about to go).
    fn read_some(&mut self, io: &mut longhaul::Io, c: longhaul::ConnId, drain: bool) {
        while !self.report.eof {
            let n = self.rng.range(1, self.plan.max_read as u64) as usize;
            match io.read(c, &mut self.buf[..n]) {
                Ok(0) => self.report.eof = true,
                Ok(got) => {
                    let data = &self.buf[..got];
                    if self.report.first_bad_byte.is_none() {
                        let off = self.report.received;
                        if let Some(i) = (0..got).find(|&i| {
                            data[i] != super::pattern(self.plan.recv_stream, off + i as u64)
                        }) {
                            self.report.first_bad_byte = Some(off + i as u64);
                        }
                    }
                    self.report.received_hash.update(data);
                    self.report.received += got as u64;
                    if self.pause(1, got) && !drain {
                        return;
                    }
                }
                Err(longhaul::Error::WouldBlock) => return,
                Err(e) => {
                    self.report.errors.push(format!("read: {e}"));
                    return;
                }
            }
        }
    }

    fn pump(&mut self, io: &mut longhaul::Io) {
        if !self.report.connected {
            return; // a shutdown in SYN-SENT would end the connect
        }
        if let Some(c) = self.conn {
            self.read_some(io, c, false);
            self.write_some(io, c);
        }
    }
}

impl App for Transfer {
    fn on_start(&mut self, io: &mut longhaul::Io) {
        if let Some(p) = self.listen {
            io.listen(p).expect("listen");
        }
        if let Some(t) = self.target {
            match io.connect(t) {
                Ok(c) => self.conn = Some(c),
                Err(e) => self.report.errors.push(format!("connect: {e}")),
            }
        }
    }

    fn on_event(&mut self, io: &mut longhaul::Io, ev: longhaul::Event) {
        use longhaul::Event as E;
        match ev {
            E::Accepted { conn, .. } => {
                if self.conn.is_some() {
                    self.report.errors.push("a second connection".into());
                    let _ = io.abort(conn);
                    return;
                }
                self.conn = Some(conn);
                self.report.connected = true;
                self.pump(io);
            }
            E::Connected(_) => {
                self.report.connected = true;
                self.pump(io);
            }
            E::Readable(c) | E::PeerClosed(c) if Some(c) == self.conn => {
                let conn = self.conn.expect("matched");
                self.read_some(io, conn, false);
            }
            E::Writable(c) if Some(c) == self.conn => {
                let conn = self.conn.expect("matched");
                self.write_some(io, conn);
            }
            E::Closed(c) if Some(c) == self.conn => {
                // The handle is valid until this event returns: read what is still buffered.
                self.read_some(io, c, true);
                self.report.closed = true;
                self.conn = None;
            }
            E::Error(c, e) if Some(c) == self.conn => {
                self.report.errors.push(format!("connection error: {e}"));
                self.conn = None;
            }
            other => self
                .report
                .errors
                .push(format!("unexpected event {other:?}")),
        }
    }

    fn on_tick(&mut self, io: &mut longhaul::Io) {
        // Paused reads and writes resume here (the API is edge-triggered: no new event comes
        // for data already buffered).
        self.pump(io);
    }
}

/// A one-line summary of a frame (ARP, or TCP flags, sequence numbers, length and options).
pub fn describe(frame: &[u8]) -> String {
    use smoltcp::wire::{EthernetFrame, EthernetProtocol, Ipv4Packet, TcpPacket};
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return format!("runt {} bytes", frame.len());
    };
    if eth.ethertype() == EthernetProtocol::Arp {
        return "ARP".into();
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return "not IPv4".into();
    };
    if ip.next_header() != smoltcp::wire::IpProtocol::Tcp {
        return format!("IPv4 proto {}", ip.next_header());
    }
    let Ok(t) = TcpPacket::new_checked(ip.payload()) else {
        return "bad TCP".into();
    };
    let flags: String = [
        (t.syn(), 'S'),
        (t.fin(), 'F'),
        (t.rst(), 'R'),
        (t.psh(), 'P'),
        (t.ack(), '.'),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, c)| *c)
    .collect();
    let len = t.payload().len();
    let opts = longhaul::stack::tcp::segment::Segment::parse(ip.payload())
        .map(|(s, _)| {
            let sack: Vec<String> = s
                .opts
                .sack
                .as_slice()
                .iter()
                .map(|(l, r)| format!("{}-{}", l.0, r.0))
                .collect();
            if sack.is_empty() {
                String::new()
            } else {
                format!(" sack {}", sack.join(","))
            }
        })
        .unwrap_or_default();
    format!(
        "{}:{} [{flags}] seq {} ack {} win {} len {len}{opts}",
        t.src_port(),
        t.dst_port(),
        t.seq_number().0 as u32,
        t.ack_number().0 as u32,
        t.window_len(),
    )
}
