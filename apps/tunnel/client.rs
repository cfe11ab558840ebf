//! The client end: TCP accepted on a port, each connection carried on its own bidirectional
//! stream of one QUIC connection to the server, which is re-made with back-off when it is lost.

use super::datagram::ClientSide;
use super::nat::NatProbe;
use super::quic::Quic;
use super::relay::{self, Key, Relay};
use super::tls::{PinReport, Trust};
use super::Status;
use longhaul::{App, ConnId, Event, Io};
use quinn_proto::{ClientConfig, ConnectionError, ConnectionHandle, Dir, StreamEvent, VarInt};
use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// First wait before a reconnect; it doubles up to [`BACKOFF_MAX`] and starts over once a
/// connection is made.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// TCP connections that may wait for a stream (while connecting, or at the stream limit).
const MAX_WAITING: usize = 4096;

/// What every core's client shares.
pub struct Settings {
    pub listen: u16,
    pub server: SocketAddrV4,
    pub server_name: String,
    pub quic: ClientConfig,
    pub trust: Trust,
    pub report: Arc<Mutex<PinReport>>,
    pub udp_port: Option<u16>,
    pub udp_listen: Option<u16>,
    /// The STUN server: Binding requests go out on this core's QUIC socket ([`Quic::udp`], so
    /// the NAT mapping learnt is the tunnel's), every `keepalive`.
    pub stun: Option<SocketAddrV4>,
    /// The QUIC keep-alive interval, also the STUN one.
    pub keepalive: Duration,
    pub status: Arc<Status>,
}

/// The state of the one QUIC connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// None; the next attempt is due at this core time.
    Down(Duration),
    Connecting(ConnectionHandle),
    Up(ConnectionHandle),
}

pub struct Client {
    s: Arc<Settings>,
    core: usize,
    quic: Option<Quic>,
    relay: Relay,
    link: Link,
    backoff: Duration,
    attempts: u64,
    waiting: VecDeque<ConnId>,
    dgram: Option<ClientSide>,
    /// The public address via STUN (`--stun`).
    nat: Option<NatProbe>,
}

/// A STUN message (RFC 8489 §5: first two bits zero, the magic cookie at bytes 4..8), which
/// cannot be QUIC since our endpoints never grease the QUIC bit.
pub fn looks_like_stun(d: &[u8]) -> bool {
    d.len() >= 20 && d[0] & 0xC0 == 0 && d[4..8] == [0x21, 0x12, 0xA4, 0x42]
}

impl Client {
    pub fn new(s: Arc<Settings>, core: usize) -> Self {
        Client {
            core,
            quic: None,
            relay: Relay::new(),
            link: Link::Down(Duration::ZERO),
            backoff: BACKOFF_MIN,
            attempts: 0,
            waiting: VecDeque::new(),
            dgram: None,
            nat: s.stun.map(|server| NatProbe::new(server, s.keepalive)),
            s,
        }
    }

    /// A STUN datagram arrived on the tunnel's socket (the STUN client matches it to its
    /// transaction; anything else is counted there as dropped).
    fn stun_datagram(&mut self, io: &mut Io, data: &[u8]) {
        if let Some(n) = self.nat.as_mut() {
            n.handle_datagram(io.now(), data);
        }
    }

    fn connect(&mut self, io: &mut Io) {
        let Some(q) = self.quic.as_mut() else {
            return;
        };
        self.attempts += 1;
        match q.connect(io, self.s.quic.clone(), self.s.server, &self.s.server_name) {
            Ok(ch) => {
                println!(
                    "tunnel client: connecting to {} (attempt {})",
                    self.s.server, self.attempts
                );
                self.link = Link::Connecting(ch);
            }
            Err(e) => {
                self.s.status.fail(&format!(
                    "longhaul tunnel client: cannot connect to {}: {e}",
                    self.s.server
                ));
                self.link = Link::Down(Duration::MAX);
            }
        }
    }

    fn poll_conn(&mut self, io: &mut Io, ch: ConnectionHandle) {
        loop {
            let Some(conn) = self.quic.as_mut().and_then(|q| q.conns.get_mut(&ch)) else {
                return;
            };
            let Some(ev) = conn.poll() else {
                return;
            };
            match ev {
                quinn_proto::Event::Connected => {
                    self.link = Link::Up(ch);
                    self.backoff = BACKOFF_MIN;
                    println!(
                        "tunnel client: connected to {} (rtt {:.1} ms)",
                        self.s.server,
                        conn.rtt().as_secs_f64() * 1e3
                    );
                    self.open_waiting(io);
                }
                quinn_proto::Event::Stream(StreamEvent::Readable { id }) => {
                    self.relay.down(io, conn, (ch, id));
                }
                quinn_proto::Event::Stream(StreamEvent::Writable { id }) => {
                    self.relay.up(io, conn, (ch, id));
                }
                quinn_proto::Event::Stream(StreamEvent::Stopped { id, .. }) => {
                    self.relay
                        .abort(io, Some(conn), (ch, id), relay::code::RESET);
                }
                quinn_proto::Event::Stream(StreamEvent::Available { dir: Dir::Bi }) => {
                    self.open_waiting(io);
                }
                quinn_proto::Event::DatagramReceived => {
                    if let Some(d) = self.dgram.as_mut() {
                        d.relay_tunnel(io, conn);
                    }
                }
                quinn_proto::Event::ConnectionLost { reason } => self.lost(io, ch, &reason),
                _ => {}
            }
        }
    }

    /// The connection `ch` is gone: its TCP connections are reset and a new one is scheduled,
    /// unless the server's certificate was refused (then the client ends: retrying cannot help).
    fn lost(&mut self, io: &mut Io, ch: ConnectionHandle, reason: &ConnectionError) {
        let was_up = self.link == Link::Up(ch);
        if !was_up && self.link != Link::Connecting(ch) {
            return;
        }
        self.relay.connection_lost(io, ch);
        while let Some(c) = self.waiting.pop_front() {
            let _ = io.abort(c);
        }
        if !was_up {
            if let Some(line) = self.handshake_refusal(reason) {
                self.s.status.fail(&line);
                self.link = Link::Down(Duration::MAX);
                return;
            }
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.link = Link::Down(io.now() + wait);
        self.s.status.cores[self.core]
            .reconnects
            .fetch_add(1, Ordering::Relaxed);
        println!(
            "tunnel client: connection to {} {}: {reason}; reconnecting in {:.1}s",
            self.s.server,
            if was_up { "lost" } else { "failed" },
            wait.as_secs_f64()
        );
    }

    /// One line for a handshake that failed on the certificate (ours or the server's verdict).
    fn handshake_refusal(&self, reason: &ConnectionError) -> Option<String> {
        let tls_alert = |code: u64| (0x100..0x200).contains(&code);
        let server = self.s.server;
        match reason {
            ConnectionError::TransportError(e) if tls_alert(e.code.into()) => {
                let seen = self.s.report.lock().ok().and_then(|r| r.mismatch);
                Some(match (&self.s.trust, seen) {
                    (Trust::Pin(pin), Some(seen)) => format!(
                        "longhaul tunnel client: the server at {server} presented certificate {seen}, which does not match --pin {pin}; pin the fingerprint the server prints at start"
                    ),
                    (Trust::Ca(ca), _) => format!(
                        "longhaul tunnel client: the server at {server} is not trusted by --ca {}: {}",
                        ca.display(),
                        e.reason
                    ),
                    _ => format!(
                        "longhaul tunnel client: TLS handshake with {server} failed: {}",
                        e.reason
                    ),
                })
            }
            ConnectionError::ConnectionClosed(c) if tls_alert(c.error_code.into()) => Some(format!(
                "longhaul tunnel client: the server at {server} refused the TLS handshake ({c}); is it a longhaul tunnel server?"
            )),
            _ => None,
        }
    }

    /// Gives waiting TCP connections their streams while the connection allows more.
    fn open_waiting(&mut self, io: &mut Io) {
        let Link::Up(ch) = self.link else {
            return;
        };
        while let Some(&tcp) = self.waiting.front() {
            let Some(conn) = self.quic.as_mut().and_then(|q| q.conns.get_mut(&ch)) else {
                return;
            };
            let Some(sid) = conn.streams().open(Dir::Bi) else {
                return; // Available follows when the server allows more
            };
            self.waiting.pop_front();
            let key: Key = (ch, sid);
            self.relay.add(key, tcp, true, true);
            // The TCP side may have data (and even FIN) buffered already: its edge has passed.
            self.relay.pump(io, conn, key);
        }
    }

    fn with_flow(
        &mut self,
        io: &mut Io,
        tcp: ConnId,
        f: fn(&mut Relay, &mut Io, &mut quinn_proto::Connection, Key),
    ) {
        let Some(&key) = self.relay.by_tcp.get(&tcp) else {
            return;
        };
        let Some(conn) = self.quic.as_mut().and_then(|q| q.conns.get_mut(&key.0)) else {
            return;
        };
        f(&mut self.relay, io, conn, key);
    }

    fn flush(&mut self, io: &mut Io) {
        let Some(q) = self.quic.as_mut() else {
            return;
        };
        if let Some(n) = self.nat.as_mut() {
            q.also_wake = n.drive(io, q.udp());
        }
        for ch in q.flush(io) {
            // Drained without a ConnectionLost we saw (e.g. closed locally).
            if self.link == Link::Up(ch) || self.link == Link::Connecting(ch) {
                self.lost(io, ch, &ConnectionError::LocallyClosed);
            }
            self.relay.connection_lost(io, ch);
        }
    }

    /// This core's UDP port: `--udp-port` plus the core number, or a random one.
    fn bind_udp(&self, io: &mut Io) -> Option<longhaul::UdpId> {
        if let Some(p) = self.s.udp_port {
            return io.udp_bind(p.wrapping_add(self.core as u16)).ok();
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as usize ^ std::process::id() as usize)
            .unwrap_or(0);
        (0..64).find_map(|i| {
            let port = 49152 + ((seed.wrapping_mul(2654435761) + i * 97 + self.core) % 16000);
            io.udp_bind(port as u16).ok()
        })
    }
}

impl App for Client {
    fn on_start(&mut self, io: &mut Io) {
        if let Err(e) = io.listen(self.s.listen) {
            self.s.status.fail(&format!(
                "longhaul tunnel client: cannot listen on TCP port {}: {e}",
                self.s.listen
            ));
            return;
        }
        let Some(udp) = self.bind_udp(io) else {
            self.s
                .status
                .fail("longhaul tunnel client: no free UDP port for QUIC (try --udp-port)");
            return;
        };
        if let Some(p) = self.s.udp_listen {
            match io.udp_bind(p) {
                Ok(u) => self.dgram = Some(ClientSide::new(u)),
                Err(e) => {
                    self.s.status.fail(&format!(
                        "longhaul tunnel client: cannot bind --udp-listen {p}: {e}"
                    ));
                    return;
                }
            }
        }
        self.quic = Some(Quic::new(io, udp, None));
        self.connect(io);
        self.flush(io);
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        match event {
            Event::UdpReadable(udp) => {
                let Some(q) = self.quic.as_mut() else {
                    return;
                };
                if let Some(d) = self.dgram.as_mut().filter(|d| d.udp == udp) {
                    let conn = match self.link {
                        Link::Up(ch) => q.conns.get_mut(&ch),
                        _ => None,
                    };
                    d.relay_local(io, conn);
                    self.flush(io);
                    return;
                }
                let stun_on = self.nat.is_some();
                let mut stun_inbox: Vec<Vec<u8>> = Vec::new();
                let got = q.receive(io, &|d| stun_on && looks_like_stun(d), &mut |d, _from| {
                    stun_inbox.push(d.to_vec())
                });
                for d in stun_inbox {
                    self.stun_datagram(io, &d);
                }
                for ch in got.touched {
                    self.poll_conn(io, ch);
                }
            }
            Event::Accepted { conn, .. } => match self.link {
                Link::Up(_) => {
                    self.waiting.push_back(conn);
                    self.open_waiting(io);
                }
                Link::Connecting(_) if self.waiting.len() < MAX_WAITING => {
                    self.waiting.push_back(conn)
                }
                _ => {
                    // No tunnel: a reset tells the TCP client at once.
                    let _ = io.abort(conn);
                }
            },
            Event::Readable(tcp) | Event::PeerClosed(tcp) => self.with_flow(io, tcp, Relay::up),
            Event::Writable(tcp) => self.with_flow(io, tcp, Relay::down),
            Event::Closed(tcp) => {
                self.waiting.retain(|&c| c != tcp);
                self.relay.tcp_closed(tcp);
            }
            Event::Error(tcp, _) => {
                self.waiting.retain(|&c| c != tcp);
                let conns = self.quic.as_mut().map(|q| &mut q.conns);
                self.relay.tcp_failed(tcp, conns);
            }
            _ => {}
        }
        self.flush(io);
    }

    fn on_wakeup(&mut self, io: &mut Io) {
        let due = match self.quic.as_mut() {
            Some(q) => q.expire(io),
            None => return,
        };
        for ch in due {
            self.poll_conn(io, ch);
        }
        self.flush(io);
    }

    fn on_tick(&mut self, io: &mut Io) {
        if let Link::Down(at) = self.link {
            if io.now() >= at {
                self.connect(io);
                self.flush(io);
            }
        }
        if let Some(d) = self.dgram.as_mut() {
            d.expire(io.now());
        }
        if let Some(q) = self.quic.as_ref() {
            super::publish(
                &self.s.status.cores[self.core],
                self.core,
                q,
                &self.relay,
                self.dgram.as_ref().map(|d| &d.counters),
            );
        }
        if let Some(n) = self.nat.as_ref() {
            let c = &self.s.status.cores[self.core];
            let st = n.stats();
            let set = |a: &std::sync::atomic::AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
            set(&c.public_addr, super::pack_addr(n.public()));
            set(&c.stun_requests, st.requests);
            set(&c.stun_responses, st.responses);
            set(&c.stun_failures, st.failures);
            set(
                &c.stun_rtt_us,
                st.last_rtt.map_or(0, |d| d.as_micros() as u64),
            );
        }
    }

    fn on_stop(&mut self, io: &mut Io) {
        self.link = Link::Down(Duration::MAX);
        while let Some(c) = self.waiting.pop_front() {
            let _ = io.abort(c);
        }
        let Some(q) = self.quic.as_mut() else {
            return;
        };
        let now = q.now(io);
        for (&ch, conn) in q.conns.iter_mut() {
            for key in self.relay.keys_of(ch) {
                self.relay.abort(io, Some(conn), key, relay::code::SHUTDOWN);
            }
            conn.close(
                now,
                VarInt::from_u32(0),
                bytes::Bytes::from_static(b"shutdown"),
            );
        }
        self.flush(io);
    }
}
