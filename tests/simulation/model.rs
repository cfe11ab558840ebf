//! Model-based property test of the sans-IO core: two [`Conn`]s joined by a "network" the test
//! controls step by step. Arbitrary sequences of {AdvanceTime, AppSend, AppRead, Deliver, Drop,
//! Reorder, Duplicate}; after every step SND.UNA ≤ SND.NXT ≤ SND.MAX, the flight fits what is
//! queued, and what each app read is a prefix of what the other wrote, in order, exactly once.
//! Then the faults stop and everything must arrive and both sides close normally.

use super::support::pattern;
use longhaul::stack::tcp::cc::CcAlgorithm;
use longhaul::stack::tcp::config::TcpConfig;
use longhaul::stack::tcp::conn::{Conn, End, State};
use longhaul::stack::tcp::segment::Segment;
use longhaul::stack::tcp::{Instant, Seq};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
enum Op {
    AdvanceTime(u16),
    /// `true`: the client's app.
    AppSend(bool, u16),
    AppRead(bool, u16),
    /// `true`: the client-to-server direction; the index is taken modulo the queue length.
    Deliver(bool, u8),
    Drop(bool, u8),
    Reorder(bool, u8, u8),
    Duplicate(bool, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1u16..1500).prop_map(Op::AdvanceTime),
        3 => (any::<bool>(), 1u16..20_000).prop_map(|(c, n)| Op::AppSend(c, n)),
        3 => (any::<bool>(), 1u16..20_000).prop_map(|(c, n)| Op::AppRead(c, n)),
        8 => (any::<bool>(), any::<u8>()).prop_map(|(c, i)| Op::Deliver(c, i)),
        1 => (any::<bool>(), any::<u8>()).prop_map(|(c, i)| Op::Drop(c, i)),
        1 => (any::<bool>(), any::<u8>(), any::<u8>()).prop_map(|(c, i, j)| Op::Reorder(c, i, j)),
        1 => (any::<bool>(), any::<u8>()).prop_map(|(c, i)| Op::Duplicate(c, i)),
    ]
}

/// A segment on the wire: its header bytes (emitted, parsed again on delivery) and payload.
#[derive(Clone, Debug)]
struct OnWire(Vec<u8>);

/// One endpoint: the connection (the server's exists once a SYN reached it) and its app's
/// byte counts; the content of stream `s` at offset `o` is `pattern(s, o)`.
struct Side {
    conn: Option<Conn>,
    stream: u64,
    written: u64,
    read: u64,
    shut: bool,
}

struct Model {
    cfg: Arc<TcpConfig>,
    now: Instant,
    client: Side,
    server: Side,
    /// Index 0: client to server; 1: server to client.
    wire: [VecDeque<OnWire>; 2],
    server_iss: Seq,
}

const CLIENT: &str = "198.18.0.2:40000";
const SERVER: &str = "198.18.0.1:5001";

impl Model {
    fn new(cfg: TcpConfig, client_iss: u32, server_iss: u32) -> Model {
        let cfg = Arc::new(cfg);
        let now = Instant::from_millis(1);
        let conn = Conn::connect(
            cfg.clone(),
            now,
            CLIENT.parse().unwrap(),
            SERVER.parse().unwrap(),
            Seq(client_iss),
            client_iss.rotate_left(7),
        );
        let side = |conn, stream| Side {
            conn,
            stream,
            written: 0,
            read: 0,
            shut: false,
        };
        let mut m = Model {
            cfg,
            now,
            client: side(Some(conn), 1),
            server: side(None, 2),
            wire: [VecDeque::new(), VecDeque::new()],
            server_iss: Seq(server_iss),
        };
        m.pump();
        m
    }

    fn side(&mut self, client: bool) -> &mut Side {
        if client {
            &mut self.client
        } else {
            &mut self.server
        }
    }

    /// Takes every segment both connections want to send.
    fn pump(&mut self) {
        let now = self.now;
        for (dir, side) in [(0, &mut self.client), (1, &mut self.server)] {
            let Some(c) = side.conn.as_mut() else {
                continue;
            };
            let mut n = 0;
            while let Some(t) = c.poll_transmit(now) {
                n += 1;
                assert!(n < 100_000, "poll_transmit never runs dry: {c:?}");
                let hlen = t.seg.header_len();
                let mut bytes = vec![0u8; hlen + t.seg.len as usize];
                assert_eq!(t.seg.emit(&mut bytes), hlen);
                c.copy_payload(t.payload_offset, &mut bytes[hlen..]);
                self.wire[dir].push_back(OnWire(bytes));
            }
        }
    }

    /// Delivers one segment to the receiving side (a SYN creates the server's connection).
    fn deliver(&mut self, to_server: bool, seg: OnWire) {
        let now = self.now;
        let (s, hlen) = Segment::parse(&seg.0).expect("what we emitted parses");
        let payload = &seg.0[hlen..];
        if to_server && self.server.conn.is_none() {
            if s.flags.syn && !s.flags.ack {
                self.server.conn = Some(Conn::accept(
                    self.cfg.clone(),
                    now,
                    SERVER.parse().unwrap(),
                    CLIENT.parse().unwrap(),
                    &s,
                    self.server_iss,
                    self.server_iss.0.rotate_left(9),
                ));
            }
            // Anything else before the SYN would earn a RST from a listener; the model drops it.
            return;
        }
        let side = self.side(!to_server);
        if let Some(c) = side.conn.as_mut() {
            c.handle_segment(now, &s, payload);
        }
    }

    fn send(&mut self, client: bool, n: usize) {
        let side = self.side(client);
        let Some(c) = side.conn.as_mut() else {
            return;
        };
        if side.shut {
            return;
        }
        let data: Vec<u8> = (0..n as u64)
            .map(|i| pattern(side.stream, side.written + i))
            .collect();
        let took = c.send(&data);
        assert!(took <= n);
        side.written += took as u64;
    }

    /// Reads up to `n` bytes and checks they continue the peer's stream exactly.
    fn read(&mut self, client: bool, n: usize) -> usize {
        let now = self.now;
        let (peer_stream, peer_written) = {
            let p = self.side(!client);
            (p.stream, p.written)
        };
        let side = self.side(client);
        let Some(c) = side.conn.as_mut() else {
            return 0;
        };
        let mut buf = vec![0u8; n];
        let got = c.recv(now, &mut buf);
        for (i, &b) in buf[..got].iter().enumerate() {
            let off = side.read + i as u64;
            assert!(
                off < peer_written,
                "read byte {off} that the peer never wrote ({peer_written} written)"
            );
            assert_eq!(b, pattern(peer_stream, off), "wrong byte at offset {off}");
        }
        side.read += got as u64;
        got
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        let now = self.now;
        for s in [&mut self.client, &mut self.server] {
            if let Some(c) = s.conn.as_mut() {
                c.handle_timeout(now);
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        let pick = |q: &VecDeque<OnWire>, i: u8| (!q.is_empty()).then(|| i as usize % q.len());
        match *op {
            Op::AdvanceTime(ms) => self.advance(Duration::from_millis(ms as u64)),
            Op::AppSend(c, n) => self.send(c, n as usize),
            Op::AppRead(c, n) => {
                self.read(c, n as usize);
            }
            Op::Deliver(up, i) => {
                let q = &mut self.wire[!up as usize];
                if let Some(i) = pick(q, i) {
                    let seg = q.remove(i).expect("in range");
                    self.deliver(up, seg);
                }
            }
            Op::Drop(up, i) => {
                let q = &mut self.wire[!up as usize];
                if let Some(i) = pick(q, i) {
                    q.remove(i);
                }
            }
            Op::Reorder(up, i, j) => {
                let q = &mut self.wire[!up as usize];
                if let (Some(i), Some(j)) = (pick(q, i), pick(q, j)) {
                    q.swap(i, j);
                }
            }
            Op::Duplicate(up, i) => {
                let q = &mut self.wire[!up as usize];
                if let Some(i) = pick(q, i) {
                    let s = q[i].clone();
                    q.push_back(s);
                }
            }
        }
        self.pump();
    }

    /// The invariants that hold after every step.
    fn check(&self) {
        for (name, s, peer) in [
            ("client", &self.client, &self.server),
            ("server", &self.server, &self.client),
        ] {
            assert!(s.read <= peer.written, "{name} read more than was written");
            let Some(c) = s.conn.as_ref() else {
                continue;
            };
            assert!(
                c.snd_una().le(c.snd_nxt()) && c.snd_nxt().le(c.snd_max()),
                "{name}: SND.UNA <= SND.NXT <= SND.MAX broken: {c:?}"
            );
            // In flight: at most what is queued, plus SYN and FIN.
            let flight = c.snd_max() - c.snd_una();
            assert!(
                flight as u64 <= c.send_queued() as u64 + 2,
                "{name}: {flight} in flight but {} queued: {c:?}",
                c.send_queued()
            );
            assert!(
                c.send_queued() as u64 <= s.written,
                "{name}: more queued than written"
            );
            assert!(
                s.read + c.recv_available() as u64 <= peer.written,
                "{name}: more received than the peer wrote"
            );
            assert!(
                matches!(c.end(), None | Some(End::Normal)),
                "{name} ended abnormally with only genuine segments on the wire: {:?} {c:?}",
                c.end()
            );
        }
    }

    fn settled(&self) -> bool {
        let closed = |s: &Side| {
            s.conn.as_ref().is_some_and(|c| {
                c.fin_received() && matches!(c.state(), State::TimeWait | State::Closed)
            })
        };
        self.client.read == self.server.written
            && self.server.read == self.client.written
            && closed(&self.client)
            && closed(&self.server)
    }

    /// Faults stop: everything is delivered in order, apps read everything and close when they
    /// have read all; both sides must end normally with every byte delivered.
    fn finish(&mut self) {
        for step in 0..200_000u32 {
            if self.settled() {
                for s in [&self.client, &self.server] {
                    assert_eq!(s.conn.as_ref().unwrap().end(), Some(End::Normal));
                }
                return;
            }
            while self.read(true, 65536) > 0 {}
            while self.read(false, 65536) > 0 {}
            for client in [true, false] {
                let (read_all, side) = if client {
                    (self.client.read == self.server.written, &mut self.client)
                } else {
                    (self.server.read == self.client.written, &mut self.server)
                };
                if read_all && !side.shut {
                    if let Some(c) = side.conn.as_mut() {
                        if c.may_send() {
                            side.shut = true;
                            c.shutdown(self.now);
                        }
                    }
                }
            }
            self.pump();
            self.check();
            if let Some(seg) = self.wire[0].pop_front() {
                self.deliver(true, seg);
            } else if let Some(seg) = self.wire[1].pop_front() {
                self.deliver(false, seg);
            } else {
                // Nothing on the wire: the next timer must move things on.
                let next = [&self.client, &self.server]
                    .into_iter()
                    .filter_map(|s| s.conn.as_ref()?.poll_timeout())
                    .min();
                let Some(next) = next else {
                    panic!(
                        "stalled at step {step} with nothing in flight and no timer: client {:?} read {}/{} server {:?} read {}/{}",
                        self.client.conn, self.client.read, self.server.written,
                        self.server.conn, self.server.read, self.client.written
                    );
                };
                assert!(
                    next.saturating_since(Instant::ZERO) < Duration::from_secs(7200),
                    "no progress for two virtual hours: {:?} {:?}",
                    self.client.conn,
                    self.server.conn
                );
                let d = next.saturating_since(self.now);
                self.advance(d);
            }
            self.pump();
            self.check();
        }
        panic!(
            "not settled after 200,000 steps: client {:?} server {:?}",
            self.client.conn, self.server.conn
        );
    }
}

fn tcp_config(rmem: usize, cc: bool, nodelay: bool) -> TcpConfig {
    TcpConfig {
        rmem_max: rmem,
        rmem_initial: rmem.min(128 << 10),
        wmem_max: 256 << 10,
        wmem_initial: 64 << 10,
        nodelay,
        cc: if cc {
            CcAlgorithm::Cubic
        } else {
            CcAlgorithm::NewReno
        },
        // The properties are about data, not about giving up: no timeout may end a run.
        user_timeout: Duration::from_secs(100_000),
        syn_retries: 100,
        synack_retries: 100,
        ..TcpConfig::default()
    }
}

proptest! {
    // PROPTEST_CASES=<n> runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn conn_pair_delivers_exactly_once_in_order_under_any_fault_sequence(
        ops in proptest::collection::vec(op(), 1..200),
        rmem in 4096usize..300_000,
        cubic in any::<bool>(),
        nodelay in any::<bool>(),
        client_iss in any::<u32>(),
        server_iss in any::<u32>(),
    ) {
        let mut m = Model::new(tcp_config(rmem, cubic, nodelay), client_iss, server_iss);
        for op in &ops {
            m.apply(op);
            m.check();
        }
        m.finish();
    }
}
