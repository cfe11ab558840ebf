//! `longhaul echo`: echoes TCP and UDP on one port (default 7). The stack answers ARP and ping.

use crate::{run_until_signal, Common};
use clap::Args;
use longhaul::{App, ConnId, Error, Event, Io};
use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct EchoArgs {
    #[command(flatten)]
    common: Common,
    /// TCP and UDP port to echo on.
    #[arg(long, default_value_t = 7)]
    listen: u16,
}

/// Bytes echoed, summed over cores.
#[derive(Default)]
struct Totals {
    tcp_bytes: AtomicU64,
    udp_datagrams: AtomicU64,
}

struct Echo {
    port: u16,
    conns: HashSet<ConnId>,
    buf: Box<[u8]>,
    totals: Arc<Totals>,
}

impl Echo {
    /// Moves what can be moved from the receive side to the send side of `c`.
    fn pump(&mut self, io: &mut Io, c: ConnId) {
        let mut moved = 0u64;
        loop {
            let room = io.write_space(c).min(self.buf.len());
            if room == 0 {
                break; // Writable follows
            }
            match io.read(c, &mut self.buf[..room]) {
                Ok(0) => {
                    let _ = io.shutdown(c);
                    break;
                }
                Ok(n) => match io.write(c, &self.buf[..n]) {
                    Ok(_) => moved += n as u64,
                    Err(_) => {
                        let _ = io.abort(c);
                        self.conns.remove(&c);
                        break;
                    }
                },
                Err(_) => break,
            }
        }
        self.totals.tcp_bytes.fetch_add(moved, Ordering::Relaxed);
    }
}

impl App for Echo {
    fn on_start(&mut self, io: &mut Io) {
        io.listen(self.port)
            .expect("a fresh core has every port free");
        io.udp_bind(self.port)
            .expect("a fresh core has every port free");
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        match event {
            Event::Accepted { conn, .. } => {
                self.conns.insert(conn);
            }
            Event::Readable(c) | Event::Writable(c) | Event::PeerClosed(c) => self.pump(io, c),
            Event::Closed(c) | Event::Error(c, _) => {
                self.conns.remove(&c);
            }
            Event::UdpReadable(u) => loop {
                match io.udp_recv(u, &mut self.buf) {
                    Ok((n, from)) => {
                        if io.udp_send(u, &self.buf[..n], from).is_ok() {
                            self.totals.udp_datagrams.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(Error::WouldBlock) => break,
                    Err(_) => continue,
                }
            },
            _ => {}
        }
    }

    fn on_stop(&mut self, io: &mut Io) {
        for c in self.conns.drain() {
            let _ = io.close(c);
        }
    }
}

pub fn main(args: EchoArgs) -> ExitCode {
    if args.listen == 0 {
        eprintln!("longhaul echo: bad --listen 0: use a port from 1 to 65535");
        return ExitCode::from(2);
    }
    let cfg = match args.common.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("longhaul echo: {e}");
            return ExitCode::from(2);
        }
    };
    let totals = Arc::new(Totals::default());
    let port = args.listen;
    let t = totals.clone();
    let stack = match crate::start_stack("echo", cfg, move |_core| Echo {
        port,
        conns: HashSet::new(),
        buf: vec![0u8; 64 * 1024].into_boxed_slice(),
        totals: t.clone(),
    }) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let m = stack.mac();
    println!(
        "longhaul echo ready: port {} ip {} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} cores {} echo tcp+udp {}",
        args.common.port,
        args.common.ip,
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        stack.cores(),
        port
    );
    let extra = move || {
        format!(
            " | echoed tcp bytes {} udp datagrams {}",
            totals.tcp_bytes.load(Ordering::Relaxed),
            totals.udp_datagrams.load(Ordering::Relaxed)
        )
    };
    run_until_signal(stack, &args.common, &extra)
}
