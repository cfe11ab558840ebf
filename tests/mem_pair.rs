//! Two longhaul stacks over the in-process `mem` wire: echo, half-close, loss and reordering.

mod support;

use longhaul::pmd::mem::{Impairment, MemConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

fn run_echo(wire: MemConfig, conns: usize, size: u64, limit: Duration) -> (Report, u64, u64, u64) {
    let report = Arc::new(Mutex::new(Report::default()));
    let closed = Arc::new(AtomicU64::new(0));
    let (r, cl) = (report.clone(), closed.clone());
    let (server, client, a_stats, b_stats) = pair(
        wire,
        move |_| Echo::new(7, cl.clone()),
        move |_| EchoClient::new(server_addr(7), conns, size, r.clone()),
    );
    let finished = wait_for(limit, || {
        let r = report.lock().unwrap();
        r.verified + r.failed.len() >= conns
    });
    // The server sees Closed once the client's last ACK arrives.
    wait_for(Duration::from_secs(5), || {
        closed.load(Ordering::Relaxed) >= conns as u64
    });
    let lost = a_stats.lost.load(Ordering::Relaxed) + b_stats.lost.load(Ordering::Relaxed);
    let reordered =
        a_stats.reordered.load(Ordering::Relaxed) + b_stats.reordered.load(Ordering::Relaxed);
    let server_closed = closed.load(Ordering::Relaxed);
    let rep = report.lock().unwrap().clone();
    let client_total =
        client
            .stats_now()
            .iter()
            .fold(longhaul::CoreStats::default(), |mut t, s| {
                t.add(s);
                t
            });
    assert!(finished, "not finished in {limit:?}: {rep:?}");
    assert_eq!(client_total.conns_opened, conns as u64);
    drop(client);
    drop(server);
    (rep, lost, reordered, server_closed)
}

#[test]
fn echo_many_connections_clean_wire() {
    let (rep, _, _, server_closed) = run_echo(
        MemConfig::default(),
        50,
        256 * 1024,
        Duration::from_secs(60),
    );
    assert!(rep.failed.is_empty(), "{:?}", rep.failed);
    assert_eq!(rep.verified, 50);
    assert_eq!(rep.bytes_checked, 50 * 256 * 1024);
    assert_eq!(server_closed, 50, "every server side saw both FINs");
}

#[test]
fn echo_survives_loss_and_reordering() {
    let imp = |seed| Impairment {
        loss: 0.01,
        reorder: 0.05,
        seed,
    };
    let wire = MemConfig {
        a_to_b: imp(11),
        b_to_a: imp(12),
        ..MemConfig::default()
    };
    let (rep, lost, reordered, _) = run_echo(wire, 8, 128 * 1024, Duration::from_secs(120));
    assert!(rep.failed.is_empty(), "{:?}", rep.failed);
    assert_eq!(rep.verified, 8);
    assert_eq!(rep.bytes_checked, 8 * 128 * 1024);
    assert!(lost > 0, "the loss hook must have dropped frames");
    assert!(reordered > 0, "the reorder hook must have reordered frames");
}

#[test]
fn connect_to_closed_port_is_refused() {
    let report = Arc::new(Mutex::new(Report::default()));
    let r = report.clone();
    let closed = Arc::new(AtomicU64::new(0));
    let (_server, client, _, _) = pair(
        MemConfig::default(),
        move |_| Echo::new(7, closed.clone()),
        move |_| EchoClient::new(server_addr(9), 3, 10, r.clone()),
    );
    assert!(wait_for(Duration::from_secs(10), || report
        .lock()
        .unwrap()
        .failed
        .len()
        == 3));
    let rep = report.lock().unwrap().clone();
    assert!(
        rep.failed.iter().all(|f| f.contains("refused")),
        "{:?}",
        rep.failed
    );
    let failed: u64 = client.stats_now().iter().map(|s| s.conns_failed).sum();
    assert_eq!(failed, 3);
}

/// Reads exactly 4 bytes per `Readable` and never drains: new data must still raise `Readable`.
struct ReadFour {
    got: Arc<Mutex<Vec<u8>>>,
}

impl longhaul::App for ReadFour {
    fn on_start(&mut self, io: &mut longhaul::Io) {
        io.listen(7).unwrap();
    }
    fn on_event(&mut self, io: &mut longhaul::Io, ev: longhaul::Event) {
        if let longhaul::Event::Readable(c) = ev {
            let mut b = [0u8; 4];
            if let Ok(n) = io.read(c, &mut b) {
                self.got.lock().unwrap().extend_from_slice(&b[..n]);
            }
        }
    }
}

/// Sends "abcd" at connect and "efgh" a few ticks later.
struct TwoWrites {
    conn: Option<longhaul::ConnId>,
    ticks: u32,
}

impl longhaul::App for TwoWrites {
    fn on_start(&mut self, io: &mut longhaul::Io) {
        self.conn = Some(io.connect(server_addr(7)).unwrap());
    }
    fn on_event(&mut self, io: &mut longhaul::Io, ev: longhaul::Event) {
        if let longhaul::Event::Connected(c) = ev {
            io.write(c, b"abcd").unwrap();
        }
    }
    fn on_tick(&mut self, io: &mut longhaul::Io) {
        self.ticks += 1;
        if self.ticks == 5 {
            io.write(self.conn.unwrap(), b"efgh").unwrap();
        }
    }
}

#[test]
fn new_data_raises_readable_even_when_the_app_did_not_drain() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let (_s, _c, _, _) = pair(
        MemConfig::default(),
        move |_| ReadFour { got: g.clone() },
        |_| TwoWrites {
            conn: None,
            ticks: 0,
        },
    );
    assert!(wait_for(Duration::from_secs(5), || got
        .lock()
        .unwrap()
        .len()
        == 8));
    assert_eq!(&got.lock().unwrap()[..], b"abcdefgh");
}

/// Echoes UDP datagrams on port 7.
struct UdpEcho {
    buf: Vec<u8>,
}

impl longhaul::App for UdpEcho {
    fn on_start(&mut self, io: &mut longhaul::Io) {
        io.udp_bind(7).unwrap();
    }
    fn on_event(&mut self, io: &mut longhaul::Io, ev: longhaul::Event) {
        if let longhaul::Event::UdpReadable(u) = ev {
            while let Ok((n, from)) = io.udp_recv(u, &mut self.buf) {
                io.udp_send(u, &self.buf[..n], from).unwrap();
            }
        }
    }
}

/// Sends datagrams of sizes 1..=1472 in steps and collects the echoes.
struct UdpClient {
    sent: Vec<Vec<u8>>,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    buf: Vec<u8>,
}

impl longhaul::App for UdpClient {
    fn on_start(&mut self, io: &mut longhaul::Io) {
        let u = io.udp_bind(5000).unwrap();
        for d in &self.sent {
            io.udp_send(u, d, server_addr(7)).unwrap();
        }
    }
    fn on_event(&mut self, io: &mut longhaul::Io, ev: longhaul::Event) {
        if let longhaul::Event::UdpReadable(u) = ev {
            while let Ok((n, from)) = io.udp_recv(u, &mut self.buf) {
                assert_eq!(from, server_addr(7));
                self.got.lock().unwrap().push(self.buf[..n].to_vec());
            }
        }
    }
}

#[test]
fn udp_echo_between_two_stacks() {
    let sent: Vec<Vec<u8>> = (0..40u64)
        .map(|i| {
            let len = 1 + (i as usize * 37) % 1472;
            (0..len as u64).map(|o| pattern(i, o)).collect()
        })
        .collect();
    let got = Arc::new(Mutex::new(Vec::new()));
    let (g, s) = (got.clone(), sent.clone());
    let (_srv, _cli, _, _) = pair(
        MemConfig::default(),
        |_| UdpEcho { buf: vec![0; 2048] },
        move |_| UdpClient {
            sent: s.clone(),
            got: g.clone(),
            buf: vec![0; 2048],
        },
    );
    assert!(wait_for(Duration::from_secs(10), || got
        .lock()
        .unwrap()
        .len()
        == sent.len()));
    let mut got = got.lock().unwrap().clone();
    let mut want = sent;
    got.sort();
    want.sort();
    assert_eq!(got, want, "every datagram comes back once, byte-exact");
}
