//! 100,000 established idle connections on one core: what each costs in memory, and that an idle
//! core does no work for them.
//!
//! - `hundred_thousand_idle_connections_virtual_time`: two [`Engine`]s over one `mem` wire, driven
//!   with virtual time from this thread (fast and deterministic). The server listens on four ports
//!   so one client address has enough ephemeral ports (32768–60999 per remote port). Connections
//!   open in batches until the server has accepted all of them; then the server's
//!   `Io::tcp_memory()` per connection is printed and checked against the target (4 KiB
//!   plus the data each holds, which is none), with the process RSS growth as a cross-check; then
//!   ten virtual minutes pass without traffic and neither engine may send, receive or report work.
//! - `idle_connections_use_no_cpu_threaded`: the same on two real core threads
//!   ([`Stack::start_on`], real clock): after the connections are up, the process may use at most
//!   2% of one CPU over 3 s.
//!
//! Both tests take one lock so that neither measures the other's memory or CPU.

mod support;

use longhaul::pmd::mem::{self, MemConfig};
use longhaul::stack::{Activity, Engine};
use longhaul::{App, Config, CoreStats, Event, Io, Stack};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{config, server_addr, CLIENT_IP, CLIENT_MAC, SERVER_IP, SERVER_MAC};

const CONNS: usize = 100_000;
/// Server ports: 4 × 28,232 ephemeral ports is room for 112,928 connections from one address.
const PORTS: [u16; 4] = [7001, 7002, 7003, 7004];
/// Connections opened at once (each batch settles before the next).
const BATCH: usize = 2_000;
/// The target for an idle connection that holds no data.
const TARGET_BYTES: usize = 4096;

static SERIAL: Mutex<()> = Mutex::new(());

/// Listens on [`PORTS`] and keeps every connection it is given.
struct Holder {
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
}

impl App for Holder {
    fn on_start(&mut self, io: &mut Io) {
        for p in PORTS {
            io.listen(p).expect("port free");
        }
    }
    fn on_event(&mut self, _io: &mut Io, ev: Event) {
        match ev {
            Event::Accepted { .. } => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Event::Closed(_) | Event::Error(..) => {
                self.ended.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Opens `want` connections, at most `window` of them unanswered at a time, spread over
/// [`PORTS`] one port after the other (so the ephemeral port search never has to skip).
struct Dialer {
    want: usize,
    window: usize,
    opened: usize,
    connected: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

impl Dialer {
    fn dial(&mut self, io: &mut Io) {
        let done = self.connected.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        while self.opened < self.want && self.opened - done < self.window {
            let port = PORTS[self.opened * PORTS.len() / self.want];
            io.connect(server_addr(port))
                .expect("a free ephemeral port");
            self.opened += 1;
        }
    }
}

impl App for Dialer {
    fn on_start(&mut self, io: &mut Io) {
        self.dial(io);
    }
    fn on_event(&mut self, io: &mut Io, ev: Event) {
        match ev {
            Event::Connected(_) => {
                self.connected.fetch_add(1, Ordering::Relaxed);
            }
            Event::Error(..) | Event::Closed(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
            _ => return,
        }
        self.dial(io);
    }
    fn on_tick(&mut self, io: &mut Io) {
        self.dial(io);
    }
}

fn counters() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)))
}

fn server_config() -> Config {
    let mut c = config(SERVER_IP, SERVER_MAC);
    // A batch's SYNs all wait in the SYN queue at once; no SYN cookies in this test.
    c.backlog(4 * BATCH).unwrap();
    c
}

/// Resident set size of the process in bytes (Linux).
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm's second field");
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

/// User plus system CPU time of the whole process.
fn cpu_time() -> Duration {
    // SAFETY: rusage is plain data; getrusage fills it and the result is checked.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut ru), 0);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Polls both engines, advancing virtual time by `step` a round, until two rounds in a row do
/// nothing. Returns the rounds it took.
fn settle<A: App, B: App>(
    server: &mut Engine<mem::MemQueue, A>,
    client: &mut Engine<mem::MemQueue, B>,
    now: &mut Duration,
    step: Duration,
) -> usize {
    let mut quiet = 0;
    for round in 0..1_000_000 {
        *now += step;
        let c = client.poll(*now);
        let s = server.poll(*now);
        if c.busy() || s.busy() {
            quiet = 0;
        } else {
            quiet += 1;
            if quiet == 2 {
                return round;
            }
        }
    }
    panic!("the engines never went quiet");
}

fn traffic(s: &CoreStats) -> (u64, u64) {
    (s.frames_in, s.frames_out)
}

#[test]
fn hundred_thousand_idle_connections_virtual_time() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let wire = MemConfig {
        ring: 8192,
        ..MemConfig::default()
    };
    let (a, b) = mem::wire(wire);
    let (accepted, ended) = counters();
    let (connected, failed) = counters();
    let holder = Holder {
        accepted: accepted.clone(),
        ended: ended.clone(),
    };
    let mut server = Engine::new(0, &server_config(), SERVER_MAC, 1, a, holder);
    let dialer = Dialer {
        want: CONNS,
        window: 0, // the test opens the batches itself
        opened: 0,
        connected: connected.clone(),
        failed: failed.clone(),
    };
    let mut client = Engine::new(0, &config(CLIENT_IP, CLIENT_MAC), CLIENT_MAC, 2, b, dialer);
    let rss0 = rss_bytes();
    let (smem0, cmem0) = (server.io().tcp_memory(), client.io().tcp_memory());

    let mut now = Duration::ZERO;
    let step = Duration::from_micros(20);
    while client.app().opened < CONNS {
        let (app, io) = client.app_io();
        app.window = BATCH;
        app.dial(io);
        app.window = 0;
        settle(&mut server, &mut client, &mut now, step);
        assert_eq!(failed.load(Ordering::Relaxed), 0, "a connect failed");
    }
    let setup_time = now;
    assert_eq!(connected.load(Ordering::Relaxed), CONNS);
    assert_eq!(accepted.load(Ordering::Relaxed), CONNS);
    assert_eq!(ended.load(Ordering::Relaxed), 0);
    let st = server.stats();
    assert_eq!(st.conns_current, CONNS as u64);
    assert_eq!(st.syncookies_sent, 0, "the SYN queue overflowed");

    // (a) Memory.
    let smem = server.io().tcp_memory() - smem0;
    let cmem = client.io().tcp_memory() - cmem0;
    let rss = rss_bytes().saturating_sub(rss0);
    let per_conn = smem / CONNS;
    println!(
        "{CONNS} idle connections set up in {:.3} s of virtual time; server tcp_memory {} B = \
         {per_conn} B per connection (client {} B per connection); process RSS grew {} B = {} B \
         per connection pair (both engines, client and server side)",
        setup_time.as_secs_f64(),
        smem,
        cmem / CONNS,
        rss,
        rss / CONNS,
    );
    assert!(
        per_conn < TARGET_BYTES,
        "an idle connection takes {per_conn} B on the server (target: under {TARGET_BYTES} B)"
    );
    // The cross-check: RSS must not show much more than both engines' own accounting (the margin
    // covers allocator overhead, the timer heap and event queues the accounting leaves out).
    assert!(
        rss < (smem + cmem) * 3 / 2 + (4 << 20),
        "RSS grew {rss} B, tcp_memory accounts for {} B",
        smem + cmem
    );

    // (b) Ten idle minutes, polled as the core loop would at least poll (its 100 ms tick).
    let (s_before, c_before) = (server.stats(), client.stats());
    let mut timers_seen = 0;
    let idle_start = now;
    while now < idle_start + Duration::from_secs(600) {
        now += Duration::from_millis(100);
        for (who, act) in [("client", client.poll(now)), ("server", server.poll(now))] {
            assert_eq!(act, Activity::default(), "the {who} did work while idle");
        }
        if server.next_deadline().is_some() || client.next_deadline().is_some() {
            timers_seen += 1;
        }
    }
    let (s_after, c_after) = (server.stats(), client.stats());
    println!(
        "600 s idle: server frames in/out {:?} -> {:?}, busy polls {} -> {}; client frames \
         in/out {:?} -> {:?}; polls that still saw a timer pending: {timers_seen} (handshake \
         timers running out during the first second)",
        traffic(&s_before),
        traffic(&s_after),
        s_before.busy_polls,
        s_after.busy_polls,
        traffic(&c_before),
        traffic(&c_after),
    );
    assert_eq!(traffic(&s_before), traffic(&s_after), "server traffic");
    assert_eq!(traffic(&c_before), traffic(&c_after), "client traffic");
    assert_eq!(s_before.busy_polls, s_after.busy_polls);
    assert_eq!(c_before.busy_polls, c_after.busy_polls);
    assert!(timers_seen <= 20, "timers kept firing while idle");
    assert_eq!(server.next_deadline(), None, "a server timer is armed");
    assert_eq!(client.next_deadline(), None, "a client timer is armed");
    assert_eq!(server.stats().conns_current, CONNS as u64);
}

/// Connections for the threaded test (all of them: the setup takes a few seconds).
const THREADED_CONNS: usize = 100_000;

#[test]
fn idle_connections_use_no_cpu_threaded() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const WINDOW: Duration = Duration::from_secs(3);
    let (accepted, ended) = counters();
    let (connected, failed) = counters();
    let (acc, end) = (accepted.clone(), ended.clone());
    let (con, fail) = (connected.clone(), failed.clone());
    let wire = MemConfig {
        ring: 8192,
        ..MemConfig::default()
    };
    let (a, b) = mem::wire(wire);
    let server = Stack::start_on(server_config(), vec![a], move |_| Holder {
        accepted: acc.clone(),
        ended: end.clone(),
    })
    .expect("server stack");
    let client = Stack::start_on(config(CLIENT_IP, CLIENT_MAC), vec![b], move |_| Dialer {
        want: THREADED_CONNS,
        window: BATCH,
        opened: 0,
        connected: con.clone(),
        failed: fail.clone(),
    })
    .expect("client stack");
    let start = std::time::Instant::now();
    let up = support::wait_for(Duration::from_secs(40), || {
        accepted.load(Ordering::Relaxed) == THREADED_CONNS
            && connected.load(Ordering::Relaxed) == THREADED_CONNS
    });
    let setup = start.elapsed();
    assert!(
        up,
        "only {} accepted / {} connected of {THREADED_CONNS} within {setup:?} ({} failed)",
        accepted.load(Ordering::Relaxed),
        connected.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    // Handshake timers (SYN and SYN-ACK retransmission, 1 s) run out first.
    std::thread::sleep(Duration::from_millis(1500));
    let (s0, c0) = (server.stats_now()[0], client.stats_now()[0]);
    let before = cpu_time();
    std::thread::sleep(WINDOW);
    let used = cpu_time() - before;
    let (s1, c1) = (server.stats_now()[0], client.stats_now()[0]);
    let pct = used.as_secs_f64() / WINDOW.as_secs_f64() * 100.0;
    println!(
        "{THREADED_CONNS} connections up in {setup:.2?}; idle: {:.1} ms CPU over {} s ({pct:.2}% \
         of one CPU) for both cores; server sleeps +{}, frames in/out +{}/+{}; client sleeps +{}, \
         frames in/out +{}/+{}",
        used.as_secs_f64() * 1e3,
        WINDOW.as_secs(),
        s1.sleeps - s0.sleeps,
        s1.frames_in - s0.frames_in,
        s1.frames_out - s0.frames_out,
        c1.sleeps - c0.sleeps,
        c1.frames_in - c0.frames_in,
        c1.frames_out - c0.frames_out,
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert_eq!(ended.load(Ordering::Relaxed), 0);
    assert_eq!(traffic(&s0), traffic(&s1), "server traffic while idle");
    assert_eq!(traffic(&c0), traffic(&c1), "client traffic while idle");
    assert!(server.is_running() && client.is_running(), "a core ended");
    assert!(
        used < WINDOW / 50,
        "two idle cores with {THREADED_CONNS} connections each used {used:?} CPU in {WINDOW:?} \
         (limit 2%: 60 ms)"
    );
    drop(client);
    drop(server);
}
