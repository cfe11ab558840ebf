//! `longhaul stun --server IP:PORT`: learns the public address and port of a longhaul UDP port
//! from a STUN server (RFC 8489 Binding) and keeps the NAT mapping alive.
//!
//! Prints `mapped address: IP:PORT` when the address is first learned and whenever it changes;
//! exits 0 after `--count` answers (or runs until SIGINT), and 1 with one line saying why when a
//! transaction fails (no answer within `--timeout`, an error response, an unusable answer).
//!
//! The protocol lives in [`client::StunClient`] (sans-IO, for the tunnel to share its QUIC socket
//! with) and [`codec`]; this file only wires it to the stack: one UDP socket on core 0, timers via
//! `Io::set_wakeup`.

pub mod client;
#[cfg(test)]
mod client_tests;
pub mod codec;
#[cfg(test)]
mod codec_tests;

use crate::Common;
use clap::Args;
use client::{Failure, StunClient, StunEvent};
use longhaul::{App, Error, Event, Io, UdpId};
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct StunArgs {
    #[command(flatten)]
    common: Common,
    /// STUN server as IPv4:PORT, e.g. 198.51.100.1:3478.
    #[arg(long)]
    server: String,
    /// Time between keepalive requests once the address is known (e.g. 20s, 500ms).
    #[arg(long, default_value = "20s")]
    interval: String,
    /// Exit after this many answered requests (0: run until SIGINT).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Give up when a transaction has no answer this long after its first request (the RFC's
    /// retransmission schedule ends at 39.5 s).
    #[arg(long, default_value = "39.5s")]
    timeout: String,
    /// Local UDP port (default: a random one in 49152..=65535).
    #[arg(long)]
    local_port: Option<u16>,
}

/// What the core tells the main thread.
#[derive(Default)]
struct Shared {
    done: AtomicBool,
    /// The one-line reason when it ended in failure.
    failure: Mutex<Option<String>>,
    summary: Mutex<String>,
}

impl Shared {
    fn finish(&self, failure: Option<String>) {
        if let Ok(mut f) = self.failure.lock() {
            if f.is_none() {
                *f = failure;
            }
        }
        self.done.store(true, Ordering::Release);
    }
}

struct StunApp {
    client: StunClient,
    local_port: u16,
    count: u64,
    udp: Option<UdpId>,
    shared: Arc<Shared>,
    buf: Box<[u8]>,
}

impl StunApp {
    /// Sends what the client has due, hands its events on, re-arms the wakeup.
    fn drive(&mut self, io: &mut Io) {
        let Some(udp) = self.udp else { return };
        let now = io.now();
        while let Some((to, data)) = self.client.poll_transmit(now) {
            // A full send buffer is a lost request: the retransmission schedule covers it.
            let _ = io.udp_send(udp, data, to);
        }
        while let Some(ev) = self.client.poll_event() {
            match ev {
                StunEvent::MappedAddressChanged { old: None, new } => {
                    println!("mapped address: {new}")
                }
                StunEvent::MappedAddressChanged {
                    old: Some(old),
                    new,
                } => {
                    println!("mapped address: {new} (changed from {old})")
                }
                StunEvent::TransactionFailed(f) => {
                    let server = self.client.server();
                    let line = match f {
                        Failure::Timeout { requests, elapsed } => format!(
                            "no answer from {server} to {requests} Binding request(s) within {:.1} s: check --server, --gateway and that UDP reaches the server",
                            elapsed.as_secs_f64()
                        ),
                        Failure::ErrorResponse { code, reason } => {
                            format!("{server} answered with error {code} {reason}")
                        }
                        Failure::BadResponse(why) => {
                            format!("{server} sent an unusable response: {why}")
                        }
                    };
                    self.shared.finish(Some(line));
                }
            }
        }
        let st = self.client.stats();
        if let Ok(mut s) = self.shared.summary.lock() {
            *s = format!(
                "responses {} requests {} retransmissions {} dropped {} rtt {}",
                st.responses,
                st.requests,
                st.retransmissions,
                st.dropped,
                st.last_rtt
                    .map_or("-".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3))
            );
        }
        if self.count > 0 && st.responses >= self.count {
            self.shared.finish(None);
        }
        io.set_wakeup(self.client.poll_timeout());
    }
}

impl App for StunApp {
    fn on_start(&mut self, io: &mut Io) {
        match io.udp_bind(self.local_port) {
            Ok(u) => self.udp = Some(u),
            Err(e) => {
                self.shared.finish(Some(format!(
                    "cannot bind UDP port {}: {e}",
                    self.local_port
                )));
                return;
            }
        }
        println!(
            "longhaul stun ready: local {}:{} server {}",
            io.local_ip(),
            self.local_port,
            self.client.server()
        );
        self.drive(io);
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        let Event::UdpReadable(u) = event else { return };
        loop {
            match io.udp_recv(u, &mut self.buf) {
                // Not STUN (false): nothing else shares this socket, so it is just dropped.
                Ok((n, _from)) => {
                    self.client.handle_datagram(io.now(), &self.buf[..n]);
                }
                Err(Error::WouldBlock) => break,
                Err(_) => continue, // too long for the buffer: dropped
            }
        }
        self.drive(io);
    }

    fn on_wakeup(&mut self, io: &mut Io) {
        self.drive(io);
    }
}

fn parse_server(s: &str) -> Result<SocketAddrV4, String> {
    match s.parse::<SocketAddrV4>() {
        Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => Ok(a),
        _ => Err(format!(
            "bad --server '{s}': expected an IPv4 address and a port, e.g. 198.51.100.1:3478"
        )),
    }
}

pub fn main(args: StunArgs) -> ExitCode {
    let usage = |e: String| {
        eprintln!("longhaul stun: {e}");
        ExitCode::from(2)
    };
    let server = match parse_server(&args.server) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let interval = match crate::proxy::parse_duration(&args.interval) {
        Ok(d) if d >= Duration::from_millis(100) => d,
        Ok(_) => {
            return usage(format!(
                "--interval {} is too short: use 100ms or more",
                args.interval
            ))
        }
        Err(e) => return usage(format!("--interval: {e}")),
    };
    let timeout = match crate::proxy::parse_duration(&args.timeout) {
        Ok(d) if d >= Duration::from_millis(10) => d,
        Ok(_) => {
            return usage(format!(
                "--timeout {} is too short: use 10ms or more",
                args.timeout
            ))
        }
        Err(e) => return usage(format!("--timeout: {e}")),
    };
    if args.local_port == Some(0) {
        return usage("bad --local-port 0: use a port from 1 to 65535".into());
    }
    if args.common.cores != 1 {
        return usage("--cores must be 1: the STUN client is one UDP socket on one core".into());
    }
    let cfg = match args.common.config() {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let local_port = args.local_port.unwrap_or_else(random_ephemeral_port);
    let shared = Arc::new(Shared::default());
    let sh = shared.clone();
    let count = args.count;
    let stack = match crate::start_stack("stun", cfg, move |_core| {
        let mut client = StunClient::new(server, interval);
        client.set_transaction_timeout(Some(timeout));
        StunApp {
            client,
            local_port,
            count,
            udp: None,
            shared: sh.clone(),
            buf: vec![0u8; 2048].into_boxed_slice(),
        }
    }) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("longhaul stun: cannot install a signal handler: {e}");
            stack.stop();
            return ExitCode::FAILURE;
        }
    }
    let mut crashed = false;
    while !stop.load(Ordering::Relaxed) && !shared.done.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20));
        if !stack.is_running() {
            crashed = true;
            break;
        }
    }
    let stopped_ok = stack.stop();
    if crashed {
        eprintln!("longhaul stun: the core stopped unexpectedly");
        return ExitCode::FAILURE;
    }
    let failure = shared.failure.lock().ok().and_then(|f| f.clone());
    let summary = shared.summary.lock().map(|s| s.clone()).unwrap_or_default();
    if !args.common.quiet {
        println!("stun: {summary}");
    }
    match failure {
        Some(line) => {
            eprintln!("longhaul stun: {line}");
            ExitCode::FAILURE
        }
        None if stopped_ok => ExitCode::SUCCESS,
        None => ExitCode::FAILURE,
    }
}

/// A port from the dynamic range (RFC 6335), so that two runs rarely share a NAT mapping.
fn random_ephemeral_port() -> u16 {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    49152 + u16::from_be_bytes(b) % (65536 - 49152) as u16
}
