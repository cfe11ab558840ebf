//! `longhaul netem`: a userspace link emulator between two ports.
//!
//! Frames read from port A go through the a2b [`Link`] and leave on port B; frames from B go
//! through b2a and leave on A. Each direction has its own delay, jitter, loss, Gilbert-Elliott
//! loss, bottleneck rate and drop-tail queue, reordering, duplication and MTU black hole (see
//! [`link`]). A flag's value applies to both directions; prefixed with `a2b:` or `b2a:` it applies
//! to one, and later values override earlier ones: `--delay 25ms --delay b2a:100ms`.
//!
//! One thread busy-polls both ports and a monotonic clock (microsecond granularity): it reads
//! bursts, copies each frame into the direction's own preallocated byte pool (sized from delay ×
//! rate plus the queue, never growing: a full pool drops and counts) and gives the port its buffer
//! back, then sends every frame whose departure time has come. Departure times never decrease in
//! a direction, so the held frames are a FIFO. When nothing is due soon it sleeps on both ports'
//! descriptors until shortly before the next departure, so an idle emulator uses no CPU.

mod config;
pub mod link;

use clap::Args;
use config::{apply, parse_duration, parse_ge, parse_prob, parse_queue, parse_rate};
use link::{Link, LinkConfig, LinkStats, Nanos};
use longhaul::pmd::sys::sleep_on;
use longhaul::pmd::tap::TapQueue;
use longhaul::pmd::{Frame, PoolFrame, PortSpec, Queue};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every impairment flag takes `VALUE`, `a2b:VALUE` or `b2a:VALUE` and may be repeated.
#[derive(Args, Debug)]
pub struct NetemArgs {
    /// Port A: tap:IFACE (created if missing).
    #[arg(long)]
    a: String,
    /// Port B: tap:IFACE (created if missing).
    #[arg(long)]
    b: String,
    /// One-way delay, e.g. 125ms.
    #[arg(long, value_name = "[DIR:]DURATION")]
    delay: Vec<String>,
    /// Uniform jitter around the delay (±), e.g. 2ms; never reorders by itself.
    #[arg(long, value_name = "[DIR:]DURATION")]
    jitter: Vec<String>,
    /// Random loss, e.g. 1% or 0.01.
    #[arg(long, value_name = "[DIR:]PROB")]
    loss: Vec<String>,
    /// Gilbert-Elliott burst loss p,r[,h,k]: P(Good→Bad), P(Bad→Good), P(pass | Bad) (default
    /// 0), P(pass | Good) (default 1).
    #[arg(long, value_name = "[DIR:]P,R[,H,K]")]
    ge_loss: Vec<String>,
    /// Bottleneck rate of Ethernet frame bytes, e.g. 100mbit (default: none).
    #[arg(long, value_name = "[DIR:]RATE")]
    rate: Vec<String>,
    /// Drop-tail queue at the bottleneck: NUMBERbdp (rate × 2 × delay) or bytes, e.g. 1bdp, 256K.
    #[arg(long, value_name = "[DIR:]SIZE", default_value = "1bdp")]
    queue: Vec<String>,
    /// Probability that a frame overtakes the frame before it, e.g. 1%.
    #[arg(long, value_name = "[DIR:]PROB")]
    reorder: Vec<String>,
    /// Probability that a frame is sent twice, e.g. 1%.
    #[arg(long, value_name = "[DIR:]PROB")]
    duplicate: Vec<String>,
    /// Silently drop frames whose IP packet (Ethernet payload) is larger than this many bytes.
    #[arg(long, value_name = "[DIR:]BYTES")]
    mtu_blackhole: Vec<String>,
    /// Seed of the random generators (default: random, printed in the ready line).
    #[arg(long, value_name = "[DIR:]N")]
    seed: Vec<String>,
    /// Frame storage per direction (default: 2 × (rate × (delay + jitter) + queue), at least 1M).
    #[arg(long, value_name = "[DIR:]SIZE")]
    pool: Vec<String>,
    /// Frames read per port per loop iteration.
    #[arg(long, default_value_t = 64)]
    budget: usize,
    /// Never sleep: poll the ports continuously (a whole core) so that a frame is picked up the
    /// moment it arrives, not after a wake-up (0.1 to 2 ms here).
    #[arg(long)]
    busy_poll: bool,
    /// No periodic counter lines (the final line is still printed).
    #[arg(long)]
    quiet: bool,
    /// Seconds between counter lines.
    #[arg(long, default_value_t = 5)]
    stats_interval: u64,
}

/// Both directions' configurations, or one line saying what is wrong.
fn resolve(args: &NetemArgs) -> Result<(LinkConfig, LinkConfig), String> {
    let mut a2b = LinkConfig::default();
    let mut b2a = LinkConfig::default();
    let (x, y) = (&mut a2b, &mut b2a);
    apply("delay", &args.delay, parse_duration, x, y, |c, v| {
        c.delay = v
    })?;
    apply("jitter", &args.jitter, parse_duration, x, y, |c, v| {
        c.jitter = v
    })?;
    apply("loss", &args.loss, parse_prob, x, y, |c, v| c.loss = v)?;
    apply("ge-loss", &args.ge_loss, parse_ge, x, y, |c, v| {
        c.ge_loss = Some(v)
    })?;
    apply("rate", &args.rate, parse_rate, x, y, |c, v| {
        c.rate_bps = Some(v)
    })?;
    apply("queue", &args.queue, parse_queue, x, y, |c, v| c.queue = v)?;
    apply("reorder", &args.reorder, parse_prob, x, y, |c, v| {
        c.reorder = v
    })?;
    apply("duplicate", &args.duplicate, parse_prob, x, y, |c, v| {
        c.duplicate = v
    })?;
    let bytes = |s: &str| {
        s.parse::<usize>()
            .ok()
            .filter(|&n| (68..=65_535).contains(&n))
            .ok_or_else(|| format!("bad size '{s}': expected IP packet bytes from 68 to 65535"))
    };
    apply("mtu-blackhole", &args.mtu_blackhole, bytes, x, y, |c, v| {
        c.mtu_blackhole = Some(v)
    })?;
    let seed = longhaul::pmd::sys::random_u64();
    x.seed = seed;
    y.seed = seed;
    let num = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("bad seed '{s}': expected an unsigned integer"))
    };
    apply("seed", &args.seed, num, x, y, |c, v| c.seed = v)?;
    let size = |s: &str| {
        longhaul::stack::parse_size(s)
            .map(|b| b as u64)
            .map_err(|e| e.to_string())
    };
    apply("pool", &args.pool, size, x, y, |c, v| c.pool = Some(v))?;
    if args.budget == 0 {
        return Err("bad --budget 0: use at least 1".into());
    }
    Ok((a2b, b2a))
}

fn splitmix(x: u64) -> u64 {
    link::Rng::new(x).next_u64()
}

fn open(flag: &str, spec: &str) -> Result<TapQueue, String> {
    let spec: PortSpec = spec.parse().map_err(|e| format!("--{flag}: {e}"))?;
    match spec {
        PortSpec::Tap { iface } => longhaul::pmd::tap::open(&iface, 1)
            .map(|mut q| q.remove(0))
            .map_err(|e| format!("--{flag}: {e}")),
        other => Err(format!("--{flag}: {other:?} is not supported by netem yet")),
    }
}

/// Spin this long after the last frame before sleeping.
const SPIN_AFTER_WORK: Nanos = 50_000;
/// Wake up this long before a departure, then spin: sleeps here overshoot by 0.1 to 0.2 ms, at
/// times by milliseconds.
const WAKE_EARLY: Nanos = 1_000_000;
/// Sleep at most this long, so stop requests and counter lines are not late.
const MAX_SLEEP: Nanos = 50_000_000;

pub fn main(args: NetemArgs) -> ExitCode {
    let (a2b_cfg, b2a_cfg) = match resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("longhaul netem: {e}");
            return ExitCode::from(2);
        }
    };
    let (mut qa, mut qb) = match (open("a", &args.a), open("b", &args.b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("longhaul netem: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("longhaul netem: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let max_frame = qa.caps().mtu.max(qb.caps().mtu) + 18;
    // The same seed must not give both directions the same losses: each mixes in its name.
    let salted = |c: &LinkConfig, salt: u64| LinkConfig {
        seed: splitmix(c.seed ^ salt),
        ..c.clone()
    };
    let mut dirs = [
        Dir::new(Link::new(&salted(&a2b_cfg, 0xa2b), max_frame), args.budget),
        Dir::new(Link::new(&salted(&b2a_cfg, 0xb2a), max_frame), args.budget),
    ];
    println!(
        "longhaul netem ready: a {} b {} | a2b {} seed {} | b2a {} seed {}",
        args.a,
        args.b,
        describe(&dirs[0].link),
        a2b_cfg.seed,
        describe(&dirs[1].link),
        b2a_cfg.seed
    );
    let (fd_a, fd_b) = (qa.wait_fd(), qb.wait_fd());
    let clock = Instant::now();
    let now_ns = || clock.elapsed().as_nanos() as Nanos;
    let interval = Duration::from_secs(args.stats_interval.max(1)).as_nanos() as Nanos;
    let mut next_stats = interval;
    let mut last_work: Nanos = 0;
    while !stop.load(Ordering::Relaxed) {
        let now = now_ns();
        let [ab, ba] = &mut dirs;
        let mut work = ab.receive(&mut qa, now) + ba.receive(&mut qb, now);
        let now = now_ns();
        work += ab.transmit(&mut qb, now) + ba.transmit(&mut qa, now);
        if now >= next_stats {
            next_stats = now + interval;
            if !args.quiet {
                println!(
                    "netem t={:.3}s {}",
                    now as f64 / 1e9,
                    stats_line(&dirs, now)
                );
            }
        }
        if work > 0 {
            last_work = now;
            continue;
        }
        if args.busy_poll || now - last_work < SPIN_AFTER_WORK {
            std::hint::spin_loop();
            continue;
        }
        let next = [dirs[0].next_due(), dirs[1].next_due()]
            .into_iter()
            .flatten()
            .min();
        let until = next.map_or(MAX_SLEEP, |t| t.saturating_sub(now));
        if until <= WAKE_EARLY {
            std::hint::spin_loop();
            continue;
        }
        let sleep = (until - WAKE_EARLY)
            .min(MAX_SLEEP)
            .min(next_stats.saturating_sub(now));
        if let (Some(a), Some(b)) = (fd_a, fd_b) {
            sleep_on(Some(b), a, Duration::from_nanos(sleep));
        } else {
            std::thread::sleep(Duration::from_nanos(sleep.min(1_000_000)));
        }
    }
    println!("stopped: {}", stats_line(&dirs, now_ns()));
    ExitCode::SUCCESS
}

/// One direction: its link, the receive burst and the frames the egress port has not taken yet.
struct Dir {
    link: Link,
    budget: usize,
    rx: Vec<PoolFrame>,
    tx: Vec<PoolFrame>,
    /// How late frames left (the clock read before the burst minus the departure time).
    late_max_ns: u64,
    late_sum_ns: u64,
}

impl Dir {
    fn new(link: Link, budget: usize) -> Dir {
        Dir {
            link,
            budget,
            rx: Vec::with_capacity(budget),
            tx: Vec::with_capacity(budget),
            late_max_ns: 0,
            late_sum_ns: 0,
        }
    }

    /// Reads a burst from `port` into the link; returns how many frames.
    fn receive<Q: Queue<Frame = PoolFrame>>(&mut self, port: &mut Q, now: Nanos) -> usize {
        let n = port.rx_burst(&mut self.rx, self.budget);
        for f in self.rx.drain(..) {
            self.link.handle_frame(now, f.data());
            port.free(f);
        }
        n
    }

    /// Sends the frames due at `now` out of `port`; returns how many went out.
    fn transmit<Q: Queue<Frame = PoolFrame>>(&mut self, port: &mut Q, now: Nanos) -> usize {
        if !self.tx.is_empty() {
            let sent = port.tx_burst(&mut self.tx);
            if !self.tx.is_empty() {
                return sent;
            }
        }
        while self.tx.len() < self.budget {
            let Some(data) = self.link.peek_due(now) else {
                break;
            };
            let Some(mut f) = port.alloc_tx() else {
                break;
            };
            if data.len() > f.capacity() {
                port.free(f);
                self.link.drop_due();
                continue;
            }
            f.set_len(data.len());
            f.data_mut().copy_from_slice(data);
            self.tx.push(f);
            let late = now - self.link.poll_timeout().expect("a frame is due");
            self.late_max_ns = self.late_max_ns.max(late);
            self.late_sum_ns += late;
            self.link.pop_due();
        }
        if self.tx.is_empty() {
            return 0;
        }
        port.tx_burst(&mut self.tx)
    }

    /// When the next frame is due: now if some wait for the port.
    fn next_due(&self) -> Option<Nanos> {
        if !self.tx.is_empty() {
            return Some(0);
        }
        self.link.poll_timeout()
    }
}

fn describe(link: &Link) -> String {
    let c = link.config();
    let mut s = format!("delay {:?} jitter {:?}", c.delay, c.jitter);
    if c.loss > 0.0 {
        let _ = write!(s, " loss {}%", c.loss * 100.0);
    }
    if let Some(ge) = c.ge_loss {
        let _ = write!(
            s,
            " ge-loss p={} r={} h={} k={} (mean {:.4}%)",
            ge.p,
            ge.r,
            ge.h,
            ge.k,
            ge.mean_loss() * 100.0
        );
    }
    if let (Some(r), Some(q)) = (c.rate_bps, link.queue_limit()) {
        let _ = write!(s, " rate {r}bit/s queue {q}B");
    }
    if c.reorder > 0.0 {
        let _ = write!(s, " reorder {}%", c.reorder * 100.0);
    }
    if c.duplicate > 0.0 {
        let _ = write!(s, " duplicate {}%", c.duplicate * 100.0);
    }
    if let Some(m) = c.mtu_blackhole {
        let _ = write!(s, " mtu-blackhole {m}");
    }
    let _ = write!(s, " pool {}B", link.pool_bytes());
    s
}

/// `a2b: in=.. out=.. ... | b2a: ...`: whitespace-separated key=value pairs per direction (a
/// number in each value).
fn stats_line(dirs: &[Dir; 2], now: Nanos) -> String {
    let one = |name: &str, d: &Dir| {
        let s: &LinkStats = d.link.stats();
        format!(
            "{name}: in={} out={} out_bytes={} loss={} ge_loss={} queue_full={} blackhole={} pool_full={} oversize={} dup={} reordered={} queue_hwm={} held={} backlog={} late_max_us={} late_avg_us={:.1}",
            s.received,
            s.passed,
            s.bytes_passed,
            s.drop_loss,
            s.drop_ge,
            s.drop_queue,
            s.drop_blackhole,
            s.drop_pool,
            s.drop_oversize,
            s.duplicated,
            s.reordered,
            s.queue_max_bytes,
            d.link.held(),
            d.link.backlog_bytes(now),
            d.late_max_ns / 1000,
            d.late_sum_ns as f64 / 1000.0 / s.passed.max(1) as f64,
        )
    };
    format!("{} | {}", one("a2b", &dirs[0]), one("b2a", &dirs[1]))
}
