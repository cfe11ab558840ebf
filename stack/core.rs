//! The per-core loop and the [`Stack`] handle that starts and stops cores.
//!
//! Each core is one pinned thread owning one queue, one [`Io`] and one app instance. An iteration:
//! control messages → receive up to `budget` frames → protocol processing → due timers → transmit
//! and app events (until quiet, bounded) → flush. With nothing to do it spins for `idle_spin`, then
//! sleeps on the queue's descriptor and its control eventfd until the next timer.

use super::api::{App, ConnInfo};
use super::config::{Config, ConfigError};
use super::engine::Engine;
use super::stats::{CoreStats, SharedStats};
use crate::pmd::sys::{allowed_cpus, pin_to_cpu, random_u64, sleep_on, Wake};
use crate::pmd::{tap, xdp, PortSpec, Queue};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a stopping core waits for its connections to close before resetting them.
const STOP_DRAIN: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);
const PUBLISH_EVERY: Duration = Duration::from_millis(10);

/// Why a stack could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is incomplete or inconsistent.
    Config(ConfigError),
    /// The port could not be opened.
    Port(String),
    /// A core thread could not be started.
    Thread(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Port(e) => write!(f, "{e}"),
            StartError::Thread(e) => write!(f, "cannot start a core thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

pub(crate) enum Ctl {
    Stop,
    Stats(Sender<CoreStats>),
    /// Every connection's info (for `longhaul stat`).
    Conns(Sender<Vec<ConnInfo>>),
    /// An ARP frame another core received: every core keeps its own neighbour cache.
    Arp(Vec<u8>),
}

struct CoreHandle {
    ctl: Sender<Ctl>,
    wake: Arc<Wake>,
    stats: Arc<SharedStats>,
    thread: Option<JoinHandle<()>>,
}

/// A running stack: one thread per core. Dropping it stops the cores.
pub struct Stack {
    cores: Vec<CoreHandle>,
    mac: [u8; 6],
}

impl Stack {
    /// Opens the port named in `cfg` and starts one core per queue, each with an app from `factory`
    /// (called on the core's own thread with the core index).
    pub fn start<A, F>(cfg: Config, factory: F) -> Result<Stack, StartError>
    where
        A: App,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        let port = cfg
            .port
            .clone()
            .ok_or_else(|| ConfigError("no port given: add --port tap:IFACE".to_string()))?;
        match port {
            PortSpec::Tap { iface } => {
                let queues =
                    tap::open(&iface, cfg.cores).map_err(|e| StartError::Port(e.to_string()))?;
                Self::start_on(cfg, queues, factory)
            }
            #[cfg(feature = "dpdk")]
            PortSpec::Dpdk { eal_args } => {
                use crate::pmd::dpdk;
                let opts = dpdk::OpenOptions {
                    queues: cfg.cores,
                    cpus: cfg.cpus.clone(),
                    budget: cfg.budget,
                    link_timeout: Duration::from_secs(10),
                };
                let opened =
                    dpdk::open(&eal_args, &opts).map_err(|e| StartError::Port(e.to_string()))?;
                let mut cfg = cfg;
                // A NIC filters on its own address; the cores run on the user's lcores, if named.
                if cfg.mac.is_none() {
                    cfg.mac = opened.mac;
                }
                if cfg.cpus.is_empty() && !opened.lcores.is_empty() {
                    cfg.cpus = opened.lcores;
                }
                Self::start_on(cfg, opened.queues, factory)
            }
            PortSpec::Xdp {
                iface,
                mode,
                queues,
            } => {
                let (queues, cfg) = open_xdp(&iface, mode, queues, cfg)?;
                Self::start_on(cfg, queues, factory)
            }
        }
    }

    /// Starts one core per queue on queues the caller opened (any backend, e.g. [`crate::pmd::mem`]).
    pub fn start_on<Q, A, F>(cfg: Config, queues: Vec<Q>, factory: F) -> Result<Stack, StartError>
    where
        Q: Queue,
        A: App,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        if cfg.ip.is_none() {
            return Err(ConfigError(
                "no address given: add --ip ADDR/PREFIX, e.g. --ip 198.18.0.2/24".into(),
            )
            .into());
        }
        if queues.is_empty() {
            return Err(StartError::Port("the port has no queues".into()));
        }
        let mac = cfg.mac.unwrap_or_else(|| {
            let r = random_u64().to_le_bytes();
            [0x02, r[0], r[1], r[2], r[3], r[4]]
        });
        let factory = Arc::new(factory);
        let n = queues.len();
        let mut wakes = Vec::with_capacity(n);
        let mut chans = Vec::with_capacity(n);
        for _ in 0..n {
            wakes.push(Arc::new(
                Wake::new().map_err(|e| StartError::Thread(format!("eventfd: {e}")))?,
            ));
            chans.push(unbounded::<Ctl>());
        }
        let cpus = if cfg.cpus.is_empty() {
            allowed_cpus()
        } else {
            cfg.cpus.clone()
        };
        let mut cores = Vec::with_capacity(n);
        let (ready_tx, ready_rx) = bounded::<()>(n);
        for (i, queue) in queues.into_iter().enumerate() {
            let peers: Vec<(Sender<Ctl>, Arc<Wake>)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (chans[j].0.clone(), wakes[j].clone()))
                .collect();
            let stats = Arc::new(SharedStats::default());
            let ctx = CoreCtx {
                index: i,
                cfg: cfg.clone(),
                mac,
                seed: random_u64(),
                ctl: chans[i].1.clone(),
                wake: wakes[i].clone(),
                peers,
                stats: stats.clone(),
                cpu: if cfg.pin_threads && !cpus.is_empty() {
                    Some(cpus[i % cpus.len()])
                } else {
                    None
                },
            };
            let factory = factory.clone();
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("longhaul-core{i}"))
                .spawn(move || run_core(ctx, queue, &*factory, ready))
                .map_err(|e| StartError::Thread(e.to_string()))?;
            cores.push(CoreHandle {
                ctl: chans[i].0.clone(),
                wake: wakes[i].clone(),
                stats,
                thread: Some(thread),
            });
        }
        let stack = Stack { cores, mac };
        for _ in 0..n {
            if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                return Err(StartError::Thread(
                    "a core did not come up within 10 s".into(),
                ));
            }
        }
        Ok(stack)
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// The stack's Ethernet address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Each core's counters as last published (at most ~10 ms old).
    pub fn stats(&self) -> Vec<CoreStats> {
        self.cores.iter().map(|c| c.stats.snapshot()).collect()
    }

    /// Each core's counters asked for through its control channel (exact; waits up to 1 s a core).
    pub fn stats_now(&self) -> Vec<CoreStats> {
        self.cores
            .iter()
            .map(|c| {
                let (tx, rx) = bounded(1);
                if c.ctl.send(Ctl::Stats(tx)).is_ok() {
                    c.wake.wake();
                    if let Ok(s) = rx.recv_timeout(Duration::from_secs(1)) {
                        return s;
                    }
                }
                c.stats.snapshot()
            })
            .collect()
    }

    /// Every connection of every core (including closing and TIME-WAIT ones) as `(core, info)`,
    /// asked for through each core's control channel (waits up to 1 s a core; a core that does not
    /// answer in time contributes nothing).
    pub fn connections(&self) -> Vec<(usize, ConnInfo)> {
        let mut all = Vec::new();
        for (i, c) in self.cores.iter().enumerate() {
            let (tx, rx) = bounded(1);
            if c.ctl.send(Ctl::Conns(tx)).is_ok() {
                c.wake.wake();
                if let Ok(v) = rx.recv_timeout(Duration::from_secs(1)) {
                    all.extend(v.into_iter().map(|info| (i, info)));
                }
            }
        }
        all
    }

    /// The sum of all cores' counters.
    pub fn total(&self) -> CoreStats {
        let mut t = CoreStats::default();
        for s in self.stats() {
            t.add(&s);
        }
        t
    }

    /// True while every core thread is running.
    pub fn is_running(&self) -> bool {
        self.cores
            .iter()
            .all(|c| c.thread.as_ref().is_some_and(|t| !t.is_finished()))
    }

    /// Asks every core to stop (apps get `on_stop` and about a second to close connections) and
    /// waits for the threads. Returns false if a core's app panicked.
    pub fn stop(mut self) -> bool {
        self.shutdown()
    }

    fn shutdown(&mut self) -> bool {
        for c in &self.cores {
            let _ = c.ctl.send(Ctl::Stop);
            c.wake.wake();
        }
        let mut ok = true;
        for c in &mut self.cores {
            if let Some(t) = c.thread.take() {
                ok &= t.join().is_ok();
            }
        }
        ok
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Opens an AF_XDP port: one queue per core (`queues=N` must agree with `--cores` when both are
/// given). The stack takes the interface's MAC unless one was set. Prints the mode used to stderr.
fn open_xdp(
    iface: &str,
    mode: xdp::XdpMode,
    queues: Option<usize>,
    mut cfg: Config,
) -> Result<(Vec<xdp::XdpQueue>, Config), StartError> {
    let n = match queues {
        Some(q) if cfg.cores != 1 && cfg.cores != q => {
            return Err(ConfigError(format!(
                "port xdp:{iface} has queues={q} but --cores is {}: one core serves one queue, give one of the two",
                cfg.cores
            ))
            .into())
        }
        Some(q) => q,
        None => cfg.cores,
    };
    let ip = cfg.ip.ok_or_else(|| {
        ConfigError("no address given: add --ip ADDR/PREFIX, e.g. --ip 198.18.0.2/24".into())
    })?;
    let opened = xdp::open(iface, mode, n, ip.addr).map_err(|e| StartError::Port(e.to_string()))?;
    let info = opened[0].info();
    cfg.mac.get_or_insert(info.mac);
    eprintln!("longhaul: xdp:{iface}: {n} queue(s), {info}");
    Ok((opened, cfg))
}

struct CoreCtx {
    index: usize,
    cfg: Config,
    mac: [u8; 6],
    seed: u64,
    ctl: Receiver<Ctl>,
    wake: Arc<Wake>,
    peers: Vec<(Sender<Ctl>, Arc<Wake>)>,
    stats: Arc<SharedStats>,
    cpu: Option<usize>,
}

fn run_core<Q: Queue, A: App, F: Fn(usize) -> A>(
    ctx: CoreCtx,
    queue: Q,
    factory: &F,
    ready: Sender<()>,
) {
    if let Some(cpu) = ctx.cpu {
        pin_to_cpu(cpu);
    }
    let clock = std::time::Instant::now();
    let mut engine = Engine::new(
        ctx.index,
        &ctx.cfg,
        ctx.mac,
        ctx.seed,
        queue,
        factory(ctx.index),
    );
    let _ = ready.send(());

    let mut last_work = clock.elapsed();
    let mut last_publish = last_work;
    let mut stop_deadline: Option<Duration> = None;
    loop {
        let now = clock.elapsed();
        while let Ok(msg) = ctx.ctl.try_recv() {
            match msg {
                Ctl::Stop => {
                    if stop_deadline.is_none() {
                        engine.begin_stop(now);
                        stop_deadline = Some(now + STOP_DRAIN);
                    }
                }
                Ctl::Stats(reply) => {
                    let _ = reply.send(engine.stats());
                }
                Ctl::Conns(reply) => {
                    let _ = reply.send(engine.connections(now));
                }
                Ctl::Arp(frame) => engine.foreign_frame(&frame, now),
            }
        }

        let activity = engine.poll(now);
        for frame in engine.arp_seen.drain(..) {
            for (peer, wake) in &ctx.peers {
                let _ = peer.send(Ctl::Arp(frame.clone()));
                wake.wake();
            }
        }
        if now.saturating_sub(last_publish) >= PUBLISH_EVERY {
            last_publish = now;
            ctx.stats.publish(&engine.stats());
        }
        if let Some(deadline) = stop_deadline {
            if engine.drained() || now >= deadline {
                engine.finish();
                ctx.stats.publish(&engine.stats());
                return;
            }
        }

        if activity.busy() {
            last_work = now;
            continue;
        }
        if now.saturating_sub(last_work) < ctx.cfg.idle_spin {
            std::hint::spin_loop();
            continue;
        }
        // Sleep until a frame, a control message or the next timer.
        let mut timeout = TICK;
        if let Some(d) = engine.next_deadline() {
            timeout = timeout.min(d.saturating_sub(now));
        }
        if stop_deadline.is_some() {
            timeout = timeout.min(Duration::from_millis(10));
        }
        engine.queue().set_sleeping(true);
        // A frame may have arrived after the last burst; then do not sleep.
        if engine.peek_rx() == 0 && ctx.ctl.is_empty() {
            engine.note_sleep();
            let fd = engine.queue().wait_fd();
            sleep_on(fd, ctx.wake.fd(), timeout);
        }
        engine.queue().set_sleeping(false);
        ctx.wake.drain();
        last_work = clock.elapsed();
    }
}
