//! `longhaul netem` against theory, with the Linux kernel on both ends.
//!
//! Each test builds three namespaces: P runs `longhaul netem`, which creates and opens two TAPs;
//! once it is ready, one TAP moves to namespace A (198.18.0.1/24) and the other to B
//! (198.18.0.2/24), so everything between A and B crosses the emulator (a TAP keeps working
//! after its interface moves). Kernel sockets in A and B measure what the path does; netem's final
//! counter line says what it did. All of it is removed in `Drop`, also when a test fails.
//!
//! Needs root; without it every test prints a note and passes. The figures depend on timing and
//! CPU, so the labs take turns (a lock held from the first namespace to the last deletion); the
//! whole file runs in about 12 s. Run with `cargo test --release --test netem`.

mod common;

use common::{root_or_skip, wait_for};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Serialises `ip netns add`/`del` (they race on the shared /var/run/netns mount).
static NS_LOCK: Mutex<()> = Mutex::new(());
/// Held by every lab from before its namespaces exist until they are gone: the figures depend on
/// timing, and creating or deleting namespaces next to a running emulator disturbs it.
static TIMING: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn timing_lock() -> MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_ok(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread inside namespace `ns` (sockets made there keep the namespace).
fn in_ns<T: Send, F: FnOnce() -> T + Send>(ns: &str, f: F) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            enter(ns);
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

fn enter(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: f is an open namespace file; setns affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", io::Error::last_os_error());
}

/// Counters of one direction from netem's final line (`key=value` pairs).
type DirStats = HashMap<String, u64>;

/// Namespaces P (netem), A and B, the netem process between them; all removed on drop.
struct Lab {
    _timing: MutexGuard<'static, ()>,
    p: String,
    a: String,
    b: String,
    tap_a: String,
    tap_b: String,
    created: Vec<String>,
    netem: Option<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Lab {
    /// Builds the three namespaces, starts `longhaul netem ARGS` in P and wires A and B to it.
    fn start(tag: &str, netem_args: &[&str]) -> Lab {
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("lh-nm-{tag}-{pid}-{n}");
        let mut lab = Lab {
            _timing: timing_lock(),
            p: format!("{base}-p"),
            a: format!("{base}-a"),
            b: format!("{base}-b"),
            tap_a: format!("lnm{}a{}", pid % 100_000, n % 100),
            tap_b: format!("lnm{}b{}", pid % 100_000, n % 100),
            created: Vec::new(),
            netem: None,
            stdout: Arc::new(Mutex::new(Vec::new())),
            stderr: Arc::new(Mutex::new(String::new())),
            readers: Vec::new(),
        };
        for ns in [lab.p.clone(), lab.a.clone(), lab.b.clone()] {
            let _g = NS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            if std::path::Path::new(&format!("/var/run/netns/{ns}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            }
            run_ok(&["ip", "netns", "add", &ns]);
            lab.created.push(ns.clone());
            drop(_g);
            run_ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            // IPv6 chatter (router solicitations, MLD) would only add frames to the counters.
            run_ok(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]);
        }
        lab.start_netem(netem_args);
        for (tap, ns, cidr) in [
            (lab.tap_a.clone(), lab.a.clone(), "198.18.0.1/24"),
            (lab.tap_b.clone(), lab.b.clone(), "198.18.0.2/24"),
        ] {
            run_ok(&["ip", "-n", &lab.p, "link", "set", &tap, "netns", &ns]);
            run_ok(&["ip", "-n", &ns, "addr", "add", cidr, "dev", &tap]);
            run_ok(&["ip", "-n", &ns, "link", "set", &tap, "up"]);
        }
        lab
    }

    fn start_netem(&mut self, args: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.p])
            .arg(env!("CARGO_BIN_EXE_longhaul"))
            .arg("netem")
            .args(["--a", &format!("tap:{}", self.tap_a)])
            .args(["--b", &format!("tap:{}", self.tap_b)])
            .args(["--stats-interval", "1"])
            .args(args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().expect("piped stdout");
        let so = self.stdout.clone();
        self.readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                so.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        }));
        let mut err = child.stderr.take().expect("piped stderr");
        let se = self.stderr.clone();
        self.readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                se.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }));
        self.netem = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("netem ready") => return,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50));
                    panic!("netem exited before it was ready: {}", self.stderr());
                }
            }
            assert!(
                Instant::now() < deadline,
                "netem printed no ready line within 10 s: {}",
                self.stderr()
            );
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stops netem with SIGTERM and returns the a2b and b2a counters of its final line.
    fn stop(&mut self) -> (DirStats, DirStats) {
        let mut child = self.netem.take().expect("netem running");
        // SAFETY: the child is not reaped yet, so its pid still names it.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("netem did not stop within 5 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        assert!(
            status.success(),
            "netem exited with {status}: {}",
            self.stderr()
        );
        let lines = self.stdout.lock().unwrap().clone();
        let last = lines
            .iter()
            .find_map(|l| l.strip_prefix("stopped: "))
            .unwrap_or_else(|| panic!("no final line in {lines:?}"))
            .to_string();
        let mut dirs = last.split(" | ").map(parse_dir);
        (dirs.next().expect("a2b"), dirs.next().expect("b2a"))
    }
}

fn parse_dir(s: &str) -> DirStats {
    s.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse::<f64>().expect("a number") as u64))
        .collect()
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.netem.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _g = NS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for ns in &self.created {
            for attempt in 0..5 {
                let ok = Command::new("ip")
                    .args(["netns", "del", ns])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                if attempt == 4 {
                    eprintln!("warning: ip netns del {ns} failed");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Sets a socket's receive buffer past rmem_max (root).
fn force_rcvbuf(fd: i32, bytes: i32) {
    // SAFETY: setsockopt reads a live int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", io::Error::last_os_error());
}

/// Connect times from A to B, after one connect that resolves ARP.
fn handshake_times(lab: &Lab, port: u16, n: usize) -> Vec<Duration> {
    let to = SocketAddr::V4(SocketAddrV4::new(B_IP, port));
    in_ns(&lab.a, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("first connect");
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
                let d = t.elapsed();
                drop(s);
                d
            })
            .collect()
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn check_handshake_rtt(tag: &str, one_way: &str, rtt: Duration, samples: usize) {
    let mut lab = Lab::start(tag, &["--delay", one_way]);
    // The kernel completes handshakes into the backlog (128) without accept().
    let _listener = in_ns(&lab.b, || {
        TcpListener::bind((B_IP, 5001)).expect("bind in B")
    });
    let times = handshake_times(&lab, 5001, samples);
    let m = median(times.clone());
    let (a2b, b2a) = lab.stop();
    eprintln!(
        "handshake at {rtt:?} configured: median {m:?}, all {times:?}; late a2b max {} µs avg {} µs, b2a max {} µs avg {} µs",
        a2b["late_max_us"], a2b["late_avg_us"], b2a["late_max_us"], b2a["late_avg_us"]
    );
    let err = |t: Duration| (t.as_secs_f64() - rtt.as_secs_f64()).abs();
    assert!(
        err(m) <= 0.002,
        "median handshake {m:?}, configured RTT {rtt:?} (±2 ms); all {times:?}"
    );
    // The emulator never makes the path shorter than configured.
    for t in &times {
        assert!(
            *t >= rtt,
            "handshake took {t:?}, less than the configured {rtt:?}"
        );
    }
    assert!(a2b["out"] >= samples as u64 * 2 && b2a["out"] >= samples as u64 * 2);
}

// ------------------------------------------------------------------ RTT

#[test]
fn handshake_rtt_matches_50ms() {
    if !root_or_skip("handshake_rtt_matches_50ms") {
        return;
    }
    check_handshake_rtt("rtt50", "25ms", Duration::from_millis(50), 7);
}

#[test]
fn handshake_rtt_matches_250ms() {
    if !root_or_skip("handshake_rtt_matches_250ms") {
        return;
    }
    check_handshake_rtt("rtt250", "125ms", Duration::from_millis(250), 3);
}

// ------------------------------------------------------------------ rate

/// Bytes received on `iface`, from /proc/thread-self/net/dev of the calling thread's namespace.
fn rx_bytes(iface: &str) -> u64 {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("read net/dev");
    dev.lines()
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == iface).then(|| rest.split_whitespace().next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("{iface} not in {dev}"))
}

/// A kernel TCP flow A→B through a 50 Mbit/s bottleneck (RTT 20 ms, 2-BDP drop-tail queue):
/// goodput at B after slow start reaches 90–100% of the rate, and the bytes arriving on B's
/// interface (the kernel's own counter, sampled every 250 ms) never exceed the rate, overall and
/// in any window (allowing for the emulator's reported lateness).
#[test]
fn tcp_through_50mbit_reaches_the_rate_and_never_exceeds_it() {
    if !root_or_skip("tcp_through_50mbit_reaches_the_rate_and_never_exceeds_it") {
        return;
    }
    let rate_bps = 50_000_000f64;
    let mut lab = Lab::start(
        "rate",
        &["--rate", "50mbit", "--delay", "10ms", "--queue", "2bdp"],
    );
    const RUN: Duration = Duration::from_secs(5);
    const WARMUP: Duration = Duration::from_secs(1);
    let l = in_ns(&lab.b, || {
        TcpListener::bind((B_IP, 5002)).expect("bind in B")
    });
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let start = Instant::now();
        let (mut total, mut after_warmup) = (0u64, 0u64);
        let mut buf = vec![0u8; 128 * 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
            let t = start.elapsed();
            if t >= WARMUP && t < RUN {
                after_warmup += n as u64;
            }
        }
        (total, after_warmup)
    });
    // The wire: B's interface counter every 250 ms.
    let tap_b = lab.tap_b.clone();
    let sampling = Arc::new(AtomicBool::new(true));
    let on = sampling.clone();
    let b_ns = lab.b.clone();
    let sampler = std::thread::spawn(move || {
        enter(&b_ns);
        let mut samples = vec![(Instant::now(), rx_bytes(&tap_b))];
        while on.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            samples.push((Instant::now(), rx_bytes(&tap_b)));
        }
        samples
    });
    let sender = in_ns(&lab.a, || {
        TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(B_IP, 5002)),
            Duration::from_secs(5),
        )
        .expect("connect")
    });
    let closer = sender.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut s = sender;
        let buf = vec![0x5au8; 128 * 1024];
        while s.write_all(&buf).is_ok() {}
    });
    std::thread::sleep(RUN);
    let _ = closer.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    let (total, steady_bytes) = receiver.join().unwrap();
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let (a2b, _) = lab.stop();
    let steady = steady_bytes as f64 * 8.0 / (RUN - WARMUP).as_secs_f64() / rate_bps;
    let wire: Vec<f64> = samples
        .windows(2)
        .map(|w| {
            let dt = (w[1].0 - w[0].0).as_secs_f64();
            (w[1].1 - w[0].1) as f64 * 8.0 / dt / rate_bps
        })
        .collect();
    eprintln!(
        "50 Mbit/s: {total} bytes; goodput {:.1}% of the rate from 1 s to 5 s; wire per 250 ms (fraction of the rate): {wire:.3?}; netem a2b {a2b:?}",
        steady * 100.0
    );
    assert!(
        (0.90..=1.0).contains(&steady),
        "goodput {:.1}% of 50 Mbit/s",
        steady * 100.0
    );
    // Frames leave at their departure times, or as soon as the emulator runs again if it was
    // descheduled (it reports how late it ever was): a window [t1, t2] carries at most what was due
    // in [t1 - late_max, t2]. The sampler's own skew (a millisecond: 4 frames) is slack too.
    let late_max = a2b["late_max_us"] as f64 / 1e6;
    let slack_bits = 8.0 * 1514.0 * 8.0;
    for (i, w) in samples.windows(2).enumerate() {
        let bits = (w[1].1 - w[0].1) as f64 * 8.0;
        let allowed = rate_bps * ((w[1].0 - w[0].0).as_secs_f64() + late_max) + slack_bits;
        assert!(
            bits <= allowed,
            "window {i}: the wire carried {:.1}% of the rate (netem at most {late_max} s late)",
            wire[i] * 100.0
        );
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let overall = (last.1 - first.1) as f64 * 8.0 / (last.0 - first.0).as_secs_f64() / rate_bps;
    assert!(
        overall <= 1.0 + 0.001,
        "the wire carried {:.2}% of the rate overall",
        overall * 100.0
    );
    assert!(a2b["queue_hwm"] <= 250_000, "queue limit is 2 BDP");
    assert_eq!(a2b["out"] + a2b["queue_full"] + a2b["held"], a2b["in"]);
}

// ------------------------------------------------------------------ loss

/// 1% random loss A→B over 100,000+ UDP datagrams: netem drops 0.8–1.2% and B misses exactly
/// what netem dropped.
#[test]
fn one_percent_loss_over_100k_frames() {
    if !root_or_skip("one_percent_loss_over_100k_frames") {
        return;
    }
    let mut lab = Lab::start("loss", &["--loss", "a2b:1%", "--seed", "12345"]);
    const N: u64 = 100_000;
    let rx = in_ns(&lab.b, || UdpSocket::bind((B_IP, 5003)).expect("bind in B"));
    force_rcvbuf(rx.as_raw_fd(), 64 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let tx = in_ns(&lab.a, || UdpSocket::bind((A_IP, 0)).expect("bind in A"));
    tx.connect((B_IP, 5003)).unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let warm = Arc::new(AtomicBool::new(false));
    let (g, w) = (got.clone(), warm.clone());
    let receiver = std::thread::spawn(move || {
        let mut seen = vec![false; N as usize];
        let mut buf = [0u8; 64];
        let mut idle_since = Instant::now();
        loop {
            match rx.recv(&mut buf) {
                Ok(8) => {
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                    if seq == u64::MAX {
                        w.store(true, Ordering::Relaxed);
                    } else if !std::mem::replace(&mut seen[seq as usize], true) {
                        g.fetch_add(1, Ordering::Relaxed);
                    }
                    idle_since = Instant::now();
                }
                Ok(_) => {}
                Err(_) if idle_since.elapsed() > Duration::from_secs(2) => break,
                Err(_) => {}
            }
        }
        seen.iter().filter(|&&s| s).count() as u64
    });
    // Warm-up datagrams until ARP is resolved and one gets through.
    assert!(
        wait_for(Duration::from_secs(5), || {
            let _ = tx.send(&u64::MAX.to_be_bytes());
            std::thread::sleep(Duration::from_millis(20));
            warm.load(Ordering::Relaxed)
        }),
        "no warm-up datagram arrived"
    );
    let start = Instant::now();
    for seq in 0..N {
        // Flow control: at most ~3,000 datagrams (plus the expected losses) in flight.
        while seq - got.load(Ordering::Relaxed) > 3_000 + seq / 50 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "receiver stalled"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        tx.send(&seq.to_be_bytes()).expect("send");
    }
    let sent_in = start.elapsed();
    let received = receiver.join().unwrap();
    let (a2b, b2a) = lab.stop();
    let netem_ratio = a2b["loss"] as f64 / a2b["in"] as f64;
    let e2e_ratio = (N - received) as f64 / N as f64;
    eprintln!(
        "{N} datagrams in {sent_in:?}: B got {received}; end-to-end loss {:.3}%, netem {:.3}% ({a2b:?})",
        e2e_ratio * 100.0,
        netem_ratio * 100.0
    );
    assert!(a2b["in"] >= N);
    assert!(
        (0.008..=0.012).contains(&netem_ratio),
        "netem lost {netem_ratio}"
    );
    assert!((0.008..=0.012).contains(&e2e_ratio), "B missed {e2e_ratio}");
    for k in [
        "ge_loss",
        "queue_full",
        "blackhole",
        "pool_full",
        "oversize",
    ] {
        assert_eq!(a2b[k], 0, "{k}");
    }
    assert_eq!(b2a["loss"], 0, "loss was set for a2b only");
    assert_eq!(
        a2b["in"] - a2b["loss"],
        a2b["out"],
        "everything else passed"
    );
}

// ------------------------------------------------------------------ MTU black hole

/// `--mtu-blackhole 1400`: UDP datagrams whose IP packets are 1380..=1420 bytes; exactly those
/// up to 1400 arrive, and netem counts the others.
#[test]
fn mtu_blackhole_drops_exactly_the_large_frames() {
    if !root_or_skip("mtu_blackhole_drops_exactly_the_large_frames") {
        return;
    }
    let mut lab = Lab::start("mtubh", &["--mtu-blackhole", "1400"]);
    let rx = in_ns(&lab.b, || UdpSocket::bind((B_IP, 5004)).expect("bind in B"));
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let tx = in_ns(&lab.a, || UdpSocket::bind((A_IP, 0)).expect("bind in A"));
    tx.connect((B_IP, 5004)).unwrap();
    let mut buf = vec![0u8; 2048];
    // ARP first, with a small datagram.
    assert!(
        wait_for(Duration::from_secs(5), || {
            let _ = tx.send(&[0u8; 8]);
            rx.recv(&mut buf).is_ok()
        }),
        "no small datagram arrived"
    );
    while rx.recv(&mut buf).is_ok() {}
    let sizes = 1380..=1420usize;
    const COPIES: usize = 3;
    for _ in 0..COPIES {
        for ip_len in sizes.clone() {
            let payload = vec![0xa5u8; ip_len - 28];
            tx.send(&payload).expect("send");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut arrived = BTreeSet::new();
    let mut count = 0;
    while let Ok(n) = rx.recv(&mut buf) {
        arrived.insert(n + 28);
        count += 1;
    }
    let (a2b, _) = lab.stop();
    let want: BTreeSet<usize> = (1380..=1400).collect();
    assert_eq!(arrived, want, "IP sizes that arrived");
    assert_eq!(count, want.len() * COPIES);
    assert_eq!(a2b["blackhole"], (20 * COPIES) as u64, "{a2b:?}");
}

// ------------------------------------------------------------------ configuration errors

/// A bad value gets one line naming the flag, and exit status 2, before any port is opened.
#[test]
fn bad_flags_get_one_line_and_status_2() {
    for (args, want) in [
        (&["--delay", "5"][..], "--delay: bad duration '5'"),
        (&["--loss", "a2b:2"][..], "--loss: bad probability '2'"),
        (&["--rate", "100mbps"][..], "--rate: bad rate '100mbps'"),
        (&["--queue", "xbdp"][..], "--queue: bad queue 'xbdp'"),
        (
            &["--ge-loss", "1%"][..],
            "--ge-loss: bad Gilbert-Elliott loss '1%'",
        ),
        (
            &["--mtu-blackhole", "10"][..],
            "--mtu-blackhole: bad size '10'",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_longhaul"))
            .args(["netem", "--a", "tap:lhnmbad0", "--b", "tap:lhnmbad1"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run longhaul");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
