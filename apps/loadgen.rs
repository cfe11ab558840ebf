//! `longhaul loadgen` (hidden): a load generator for echo servers, on the kernel's sockets. It is a
//! client tool for `scripts/bench.sh`, not a stack app: it drives `longhaul echo` and a kernel echo
//! server (its own `echo-server` mode) with the same load so the two can be compared.
//!
//! - `stream`: N connections each write without pause and read the echo back; reports echoed
//!   bytes per second.
//! - `rr`: N connections each send a request of S bytes and wait for its S-byte echo, again and
//!   again; reports transactions per second and latency percentiles.
//! - `echo-server`: a kernel echo server, one thread per connection (the baseline).
//!
//! Every measuring mode prints a progress line per second on stderr and, at the end, one line on
//! stdout that scripts parse: `RESULT mode=... key=value ...`. Exit status 1 if any connection
//! failed during the run (the line is still printed, with `errors=N`).

use clap::{Args, Subcommand};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct LoadgenArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Continuous writes, echo read back: echoed bytes per second.
    Stream(Load),
    /// Request/response round trips: transactions per second, p50/p99 latency.
    Rr(Load),
    /// A kernel echo server (thread per connection).
    EchoServer(ServerArgs),
}

#[derive(Args, Debug)]
struct Load {
    /// Echo server to load, e.g. 198.18.0.2:7.
    #[arg(long)]
    target: SocketAddr,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Seconds run before measuring starts (not counted).
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Bytes per write (stream, default 64K) or per request (rr, default 64).
    #[arg(long)]
    size: Option<usize>,
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// Address to listen on, e.g. 198.18.1.2:7.
    #[arg(long)]
    listen: SocketAddr,
}

pub fn main(args: LoadgenArgs) -> ExitCode {
    match args.mode {
        Mode::Stream(l) => run_load(l, false),
        Mode::Rr(l) => run_load(l, true),
        Mode::EchoServer(s) => echo_server(s),
    }
}

/// Latencies in a log-linear histogram: exact below 128 ns, then 64 buckets per power of two
/// (under 1.6% error). Fixed size, so long runs use no more memory than short ones.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
}

impl Histogram {
    const EXACT: u64 = 128;
    const SUB_BITS: u32 = 6;

    fn new() -> Self {
        Histogram {
            counts: vec![0; 128 + 57 * 64],
        }
    }

    fn index(ns: u64) -> usize {
        if ns < Self::EXACT {
            return ns as usize;
        }
        let e = 63 - ns.leading_zeros(); // >= 7
        let m = (ns >> (e - Self::SUB_BITS)) & 63;
        (Self::EXACT + u64::from(e - 7) * 64 + m) as usize
    }

    /// The middle of bucket `i`, in nanoseconds.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < Self::EXACT {
            return i;
        }
        let e = (i - Self::EXACT) / 64 + 7;
        let m = (i - Self::EXACT) % 64;
        let width = 1u64 << (e - u64::from(Self::SUB_BITS));
        (64 + m) * width + width / 2
    }

    fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
    }

    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The value at quantile `q` (0..=1), or 0 when empty.
    fn quantile(&self, q: f64) -> u64 {
        let total = self.total();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i);
            }
        }
        Self::value(self.counts.len() - 1)
    }
}

/// What the connection threads share with the main thread.
struct Shared {
    stop: AtomicBool,
    /// Measuring has started: rr threads record latencies only from then on.
    measuring: AtomicBool,
    /// Echoed bytes (stream) or completed transactions (rr), over all connections.
    done: AtomicU64,
    errors: AtomicU64,
    hist: Mutex<Histogram>,
}

fn connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
    s.set_nodelay(true)?;
    // Threads check the stop flag at least this often.
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    s.set_write_timeout(Some(Duration::from_millis(200)))?;
    Ok(s)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

fn fail(sh: &Shared, what: &str, e: &std::io::Error) {
    if !sh.stop.load(Ordering::Relaxed) {
        sh.errors.fetch_add(1, Ordering::Relaxed);
        eprintln!("loadgen: {what}: {e}");
    }
}

/// Stream: one thread writes without pause, another reads the echo and counts it.
fn stream_conn(s: TcpStream, size: usize, sh: Arc<Shared>) -> Vec<JoinHandle<()>> {
    let mut w = s.try_clone().expect("dup of a connected socket");
    let mut r = s;
    let shw = sh.clone();
    let writer = std::thread::spawn(move || {
        let buf = vec![0x5au8; size];
        let mut off = 0;
        while !shw.stop.load(Ordering::Relaxed) {
            match w.write(&buf[off..]) {
                Ok(n) => off = (off + n) % size,
                Err(e) if is_timeout(&e) => {}
                Err(e) => return fail(&shw, "write", &e),
            }
        }
        let _ = w.shutdown(Shutdown::Write);
    });
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => {
                    if !sh.stop.load(Ordering::Relaxed) {
                        fail(&sh, "read", &ErrorKind::UnexpectedEof.into());
                    }
                    return;
                }
                Ok(n) => {
                    sh.done.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if is_timeout(&e) => {
                    if sh.stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Err(e) => return fail(&sh, "read", &e),
            }
        }
    });
    vec![writer, reader]
}

/// Rr: write a request, read exactly its echo, record the round trip; repeat.
fn rr_conn(mut s: TcpStream, size: usize, sh: Arc<Shared>) -> Vec<JoinHandle<()>> {
    vec![std::thread::spawn(move || {
        let req = vec![0x5au8; size];
        let mut resp = vec![0u8; size];
        let mut hist = Histogram::new();
        'run: while !sh.stop.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            let mut off = 0;
            while off < size {
                match s.write(&req[off..]) {
                    Ok(n) => off += n,
                    Err(e) if is_timeout(&e) => {
                        if sh.stop.load(Ordering::Relaxed) {
                            break 'run;
                        }
                    }
                    Err(e) => {
                        fail(&sh, "write", &e);
                        break 'run;
                    }
                }
            }
            let mut got = 0;
            while got < size {
                match s.read(&mut resp[got..]) {
                    Ok(0) => {
                        fail(&sh, "read", &ErrorKind::UnexpectedEof.into());
                        break 'run;
                    }
                    Ok(n) => got += n,
                    Err(e) if is_timeout(&e) => {
                        if sh.stop.load(Ordering::Relaxed) {
                            break 'run;
                        }
                    }
                    Err(e) => {
                        fail(&sh, "read", &e);
                        break 'run;
                    }
                }
            }
            if sh.measuring.load(Ordering::Relaxed) {
                hist.record(t0.elapsed().as_nanos() as u64);
            }
            sh.done.fetch_add(1, Ordering::Relaxed);
        }
        let _ = s.shutdown(Shutdown::Write);
        sh.hist
            .lock()
            .expect("no thread panics holding it")
            .merge(&hist);
    })]
}

fn run_load(l: Load, rr: bool) -> ExitCode {
    let mode = if rr { "rr" } else { "stream" };
    let size = l.size.unwrap_or(if rr { 64 } else { 64 * 1024 });
    let finite_pos = |x: f64| x.is_finite() && x > 0.0;
    if l.conns == 0
        || size == 0
        || !finite_pos(l.secs)
        || !(finite_pos(l.warmup) || l.warmup == 0.0)
    {
        eprintln!(
            "loadgen {mode}: --conns, --size and --secs must be positive, --warmup not negative"
        );
        return ExitCode::from(2);
    }
    let sh = Arc::new(Shared {
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        hist: Mutex::new(Histogram::new()),
    });
    let mut socks = Vec::with_capacity(l.conns);
    for i in 0..l.conns {
        match connect(l.target) {
            Ok(s) => socks.push(s),
            Err(e) => {
                eprintln!(
                    "loadgen {mode}: connection {} of {} to {}: {e}",
                    i + 1,
                    l.conns,
                    l.target
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let mut threads = Vec::new();
    for s in &socks {
        let s = s.try_clone().expect("dup of a connected socket");
        threads.extend(if rr {
            rr_conn(s, size, sh.clone())
        } else {
            stream_conn(s, size, sh.clone())
        });
    }

    std::thread::sleep(Duration::from_secs_f64(l.warmup));
    sh.measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let start_done = sh.done.load(Ordering::Relaxed);
    let end = start + Duration::from_secs_f64(l.secs);
    let (mut last_t, mut last_done) = (start, start_done);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_secs(1)));
        let (t, d) = (Instant::now(), sh.done.load(Ordering::Relaxed));
        let rate = (d - last_done) as f64 / (t - last_t).as_secs_f64();
        let rate = if rr {
            format!("{rate:.0} tx/s")
        } else {
            format!("{:.3} Gbit/s", rate * 8.0 / 1e9)
        };
        eprintln!(
            "loadgen {mode}: t={:.1}s conns={} {rate} errors={}",
            (t - start).as_secs_f64(),
            l.conns,
            sh.errors.load(Ordering::Relaxed)
        );
        (last_t, last_done) = (t, d);
    }
    let secs = start.elapsed().as_secs_f64();
    let done = sh.done.load(Ordering::Relaxed) - start_done;
    sh.measuring.store(false, Ordering::Relaxed);
    sh.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(socks);
    let errors = sh.errors.load(Ordering::Relaxed);
    if rr {
        let h = sh.hist.lock().expect("no thread panics holding it");
        let us = |q| h.quantile(q) as f64 / 1e3;
        println!(
            "RESULT mode=rr target={} conns={} size={size} secs={secs:.2} transactions={done} tps={:.0} \
             p50_us={:.1} p99_us={:.1} p999_us={:.1} errors={errors}",
            l.target,
            l.conns,
            done as f64 / secs,
            us(0.50),
            us(0.99),
            us(0.999),
        );
    } else {
        let bps = done as f64 / secs;
        println!(
            "RESULT mode=stream target={} conns={} size={size} secs={secs:.2} bytes={done} \
             bytes_per_s={bps:.0} gbit_per_s={:.3} errors={errors}",
            l.target,
            l.conns,
            bps * 8.0 / 1e9,
        );
    }
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn echo_server(a: ServerArgs) -> ExitCode {
    let listener = match TcpListener::bind(a.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("loadgen echo-server: cannot listen on {}: {e}", a.listen);
            return ExitCode::FAILURE;
        }
    };
    println!("loadgen echo-server listening on {}", a.listen);
    for conn in listener.incoming() {
        let mut s = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("loadgen echo-server: accept: {e}");
                continue;
            }
        };
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        let _ = s.shutdown(Shutdown::Write);
                        return;
                    }
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn histogram_buckets_are_tight() {
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            1000,
            65_432,
            1_000_000,
            123_456_789_012,
        ] {
            let got = Histogram::value(Histogram::index(v));
            let err = (got as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 0.016, "{v} -> {got}");
        }
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() < 0.02, "{p50}");
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.02, "{p99}");
    }
}
