//! `longhaul perf`: throughput tests that speak the iperf3 protocol (TCP).
//!
//! - `longhaul perf server` answers the stock `iperf3 -c` client: default (client sends), `-R`,
//!   `--bidir`, `-P N`, `-t`, `-l`, `-n`/`-k`, `-N`, `--get-server-output`. UDP, SCTP and options it
//!   cannot honour (`-w`, `-M`, `-S`, `-b` when it would have to pace, `-O`, ...) are refused with
//!   `SERVER_ERROR`, which iperf3 prints as "an option you are trying to set is not implemented
//!   yet"; the server prints which option it was. One test at a time: a second client gets
//!   `ACCESS_DENIED` ("the server is busy running a test").
//! - `longhaul perf client` runs one test against a stock `iperf3 -s`: `-t`, `-P`, `-R`, `-l`,
//!   `--json`.
//!
//! Both print an interval line per stream every second and a summary, as iperf3 does. A test's
//! control connection and streams must live on one core, so perf runs with `--cores 1` (other
//! values are refused).
//!
//! [`proto`] is the protocol without I/O (unit-tested); [`server`] and [`client`] are the apps on
//! the public longhaul API; [`report`] formats numbers the way iperf3 does.

mod client;
mod proto;
mod report;
mod server;

use crate::{run_until_signal, Common};
use clap::{Args, Subcommand};
use longhaul::stack::parse_size;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct PerfArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Serve iperf3 clients (one test at a time).
    Server(ServerArgs),
    /// Run one test against an iperf3 server.
    Client(ClientArgs),
}

#[derive(Args, Debug)]
struct ServerArgs {
    #[command(flatten)]
    common: Common,
    /// TCP port for control and data connections.
    #[arg(long, default_value_t = proto::DEFAULT_PORT)]
    listen: u16,
}

#[derive(Args, Debug)]
struct ClientArgs {
    #[command(flatten)]
    common: Common,
    /// The server: IP or IP:PORT (port 5201 by default).
    #[arg(long)]
    connect: String,
    /// Seconds to transmit.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    /// Parallel streams.
    #[arg(short = 'P', long = "parallel", default_value_t = 1)]
    parallel: usize,
    /// Reverse: the server sends, we receive.
    #[arg(short = 'R', long)]
    reverse: bool,
    /// Bytes per write (K/M suffixes), 128K by default.
    #[arg(short = 'l', long = "length")]
    length: Option<String>,
    /// Print the results as one JSON document (iperf3's --json layout).
    #[arg(short = 'J', long)]
    json: bool,
}

/// Counters for the periodic stats line.
#[derive(Default)]
pub struct Totals {
    tests: AtomicU64,
    bytes: AtomicU64,
}

pub fn main(args: PerfArgs) -> ExitCode {
    match args.mode {
        Mode::Server(a) => server_main(a),
        Mode::Client(a) => client_main(a),
    }
}

fn config(common: &Common) -> Result<longhaul::Config, String> {
    if common.cores != 1 {
        return Err(format!(
            "bad --cores {}: perf keeps a test's control connection and streams on one core; use --cores 1",
            common.cores
        ));
    }
    common.config()
}

fn server_main(args: ServerArgs) -> ExitCode {
    if args.listen == 0 {
        eprintln!("longhaul perf: bad --listen 0: use a port from 1 to 65535");
        return ExitCode::from(2);
    }
    let cfg = match config(&args.common) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("longhaul perf: {e}");
            return ExitCode::from(2);
        }
    };
    let totals = Arc::new(Totals::default());
    let t = totals.clone();
    let port = args.listen;
    let stack = match crate::start_stack("perf", cfg, move |_| {
        server::PerfServer::new(port, t.clone())
    }) {
        Ok(s) => s,
        Err(code) => return code,
    };
    println!(
        "longhaul perf server ready: port {} ip {} iperf3 on tcp {}",
        args.common.port, args.common.ip, port
    );
    let extra = move || {
        format!(
            " | perf tests {} bytes {}",
            totals.tests.load(Ordering::Relaxed),
            totals.bytes.load(Ordering::Relaxed)
        )
    };
    run_until_signal(stack, &args.common, &extra)
}

fn parse_server(s: &str) -> Result<SocketAddrV4, String> {
    if let Ok(a) = s.parse::<SocketAddrV4>() {
        return Ok(a);
    }
    s.parse::<Ipv4Addr>()
        .map(|ip| SocketAddrV4::new(ip, proto::DEFAULT_PORT))
        .map_err(|_| format!("bad --connect '{s}': expected IP or IP:PORT, e.g. 198.18.0.1:5201"))
}

fn random_cookie() -> [u8; proto::COOKIE_SIZE] {
    let mut r = [0u8; proto::COOKIE_SIZE];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut r))
        .is_ok();
    if !ok {
        // Fall back on std's randomly keyed hasher.
        use std::hash::{BuildHasher, Hasher};
        for chunk in r.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(Instant::now().elapsed().as_nanos() as u64);
            let v = h.finish().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    proto::make_cookie(&r)
}

fn client_main(args: ClientArgs) -> ExitCode {
    let bad = |e: String| {
        eprintln!("longhaul perf: {e}");
        ExitCode::from(2)
    };
    let server = match parse_server(&args.connect) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let blksize = match args.length.as_deref().map(parse_size) {
        None => proto::DEFAULT_BLKSIZE,
        Some(Ok(n)) if (1..=proto::MAX_BLKSIZE).contains(&n) => n,
        Some(Ok(n)) => return bad(format!("bad -l {n}: use 1 to 1M")),
        Some(Err(e)) => return bad(format!("-l: {e}")),
    };
    if !(1..=proto::MAX_STREAMS).contains(&args.parallel) {
        return bad(format!(
            "bad -P {}: use 1 to {}",
            args.parallel,
            proto::MAX_STREAMS
        ));
    }
    if !(1..=86_400).contains(&args.time) {
        return bad(format!("bad -t {}: use 1 to 86400 seconds", args.time));
    }
    let cfg = match config(&args.common) {
        Ok(c) => c,
        Err(e) => return bad(e),
    };
    let opts = client::ClientOpts {
        server,
        time_secs: args.time,
        parallel: args.parallel,
        reverse: args.reverse,
        blksize,
        json: args.json,
    };
    let cookie = random_cookie();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let stack = match crate::start_stack("perf", cfg, move |_| {
        let tx = tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("one core");
        client::PerfClient::new(opts.clone(), cookie, tx)
    }) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    // The app bounds every phase itself; this is a last resort.
    let deadline = Instant::now() + Duration::from_secs(args.time + 90);
    let ctl_stop = AtomicBool::new(false);
    let waited = crate::with_control(&stack, &args.common, &ctl_stop, || loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(o) => break Some(o),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
        }
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline || !stack.is_running() {
            break None;
        }
    });
    let outcome = match waited {
        Ok(o) => o,
        Err(code) => {
            stack.stop();
            return code;
        }
    };
    // Stopping lets the app send CLIENT_TERMINATE if the test was cut short.
    let stopped_ok = stack.stop();
    let outcome = outcome.or_else(|| rx.try_recv().ok());
    let Some(o) = outcome else {
        eprintln!("longhaul perf: error - the test did not finish");
        return ExitCode::FAILURE;
    };
    if let Some(j) = &o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(j).expect("plain data serialises")
        );
    }
    match o.error {
        Some(e) => {
            eprintln!("longhaul perf: error - {e}");
            ExitCode::FAILURE
        }
        None if !stopped_ok => ExitCode::FAILURE,
        None => {
            if !args.json && o.received == 0 {
                eprintln!("longhaul perf: warning - no bytes were received");
            }
            ExitCode::SUCCESS
        }
    }
}
