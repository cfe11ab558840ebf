//! A quinn-proto [`Endpoint`] and its connections driven by one longhaul core: datagrams from the
//! core's UDP socket go to `Endpoint::handle`, whatever the connections poll for transmission goes
//! to `Io::udp_send`, and their timers go on the core's one app deadline (`Io::set_wakeup`, armed
//! with the earliest `poll_timeout`).
//!
//! Call order, per core-loop visit: [`Quic::receive`] (on `UdpReadable`) or [`Quic::expire`] (on
//! `on_wakeup`), then the app polls the touched connections' events and does its stream I/O, then
//! [`Quic::flush`] sends and re-arms the deadline. Work per call is bounded by what arrived and by
//! the socket's transmit buffer: when `udp_send` refuses a datagram it is kept (one only) and sent
//! first on the next visit, which comes at once (the deadline is set to "now").

use bytes::BytesMut;
use longhaul::{Io, UdpId};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig,
    ServerConfig, Transmit,
};
use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

/// Largest datagram we take from the socket (longer ones are cut and counted as dropped).
const RX_BUF: usize = 9216;

/// Counters of one core's endpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct QuicCounters {
    /// Datagrams no connection took and no handshake came of (garbage, unknown connection IDs,
    /// truncated).
    pub dropped: u64,
    /// Datagrams received on the socket.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Times `udp_send` was full and a datagram had to wait.
    pub send_blocked: u64,
}

/// One core's QUIC endpoint on one longhaul UDP socket.
pub struct Quic {
    pub endpoint: Endpoint,
    pub conns: HashMap<ConnectionHandle, Connection>,
    udp: UdpId,
    /// `Instant` at the core's time zero: quinn wants `std::time::Instant`, the core counts from
    /// its start.
    base: Instant,
    rx: Box<[u8]>,
    tx: Vec<u8>,
    /// A datagram the socket refused, sent before anything else.
    held: Option<(SocketAddrV4, Vec<u8>)>,
    pub counters: QuicCounters,
    /// The deadline of another user of the socket (the client's STUN), folded into the core's
    /// one app deadline by [`Quic::flush`].
    pub also_wake: Option<std::time::Duration>,
}

/// What a [`Quic::receive`] call brought.
#[derive(Default)]
pub struct Received {
    /// Connections that got datagrams (their events are to be polled).
    pub touched: Vec<ConnectionHandle>,
    /// Connections a server accepted.
    pub accepted: Vec<ConnectionHandle>,
}

impl Quic {
    /// An endpoint on `udp` (a server when `server` is given). The QUIC bit is never greased, so
    /// a STUN message on the same socket (first two bits 00) cannot be taken for QUIC (RFC 9443).
    pub fn new(io: &Io, udp: UdpId, server: Option<Arc<ServerConfig>>) -> Self {
        let mut ep = EndpointConfig::default();
        ep.grease_quic_bit(false);
        let base = Instant::now()
            .checked_sub(io.now())
            .unwrap_or_else(Instant::now);
        Quic {
            endpoint: Endpoint::new(Arc::new(ep), server, true, None),
            conns: HashMap::new(),
            udp,
            base,
            rx: vec![0u8; RX_BUF].into_boxed_slice(),
            tx: Vec::with_capacity(2048),
            held: None,
            counters: QuicCounters::default(),
            also_wake: None,
        }
    }

    /// The core's clock as quinn's `Instant`.
    pub fn now(&self, io: &Io) -> Instant {
        self.base + io.now()
    }

    /// Starts a connection to `server`.
    pub fn connect(
        &mut self,
        io: &Io,
        cfg: ClientConfig,
        server: SocketAddrV4,
        name: &str,
    ) -> Result<ConnectionHandle, String> {
        let now = self.now(io);
        let (ch, conn) = self
            .endpoint
            .connect(now, cfg, SocketAddr::V4(server), name)
            .map_err(|e| e.to_string())?;
        self.conns.insert(ch, conn);
        Ok(ch)
    }

    /// Drains the socket into the endpoint. Datagrams for which `is_foreign` is true (e.g. STUN)
    /// are handed to `foreign` instead.
    pub fn receive(
        &mut self,
        io: &mut Io,
        is_foreign: &dyn Fn(&[u8]) -> bool,
        foreign: &mut dyn FnMut(&[u8], SocketAddrV4),
    ) -> Received {
        let mut out = Received::default();
        let now = self.now(io);
        loop {
            let (n, from) = match io.udp_recv(self.udp, &mut self.rx) {
                Ok(r) => r,
                Err(longhaul::Error::WouldBlock) => break,
                Err(longhaul::Error::InvalidArgument(_)) => {
                    // Longer than RX_BUF: the socket has already discarded it.
                    self.counters.datagrams_in += 1;
                    self.counters.dropped += 1;
                    continue;
                }
                Err(_) => break,
            };
            self.counters.datagrams_in += 1;
            if is_foreign(&self.rx[..n]) {
                foreign(&self.rx[..n], from);
                continue;
            }
            let data = BytesMut::from(&self.rx[..n]);
            self.tx.clear();
            match self
                .endpoint
                .handle(now, SocketAddr::V4(from), None, None, data, &mut self.tx)
            {
                Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                    if let Some(c) = self.conns.get_mut(&ch) {
                        c.handle_event(ev);
                        if !out.touched.contains(&ch) {
                            out.touched.push(ch);
                        }
                    }
                }
                Some(DatagramEvent::NewConnection(incoming)) => {
                    self.tx.clear();
                    match self.endpoint.accept(incoming, now, &mut self.tx, None) {
                        Ok((ch, conn)) => {
                            self.conns.insert(ch, conn);
                            out.accepted.push(ch);
                            out.touched.push(ch);
                        }
                        Err(e) => {
                            self.counters.dropped += 1;
                            if let Some(t) = e.response {
                                self.send_transmit(io, &t);
                            }
                        }
                    }
                }
                Some(DatagramEvent::Response(t)) => {
                    // Version negotiation or a stateless reset: the datagram itself was not ours.
                    self.counters.dropped += 1;
                    self.send_transmit(io, &t);
                }
                None => self.counters.dropped += 1,
            }
        }
        out
    }

    /// Runs the timers of connections whose deadline has passed; returns them.
    pub fn expire(&mut self, io: &Io) -> Vec<ConnectionHandle> {
        let now = self.now(io);
        let mut due = Vec::new();
        for (&ch, c) in self.conns.iter_mut() {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
                due.push(ch);
            }
        }
        due
    }

    /// Sends what every connection has to send (until the socket is full), passes endpoint
    /// events along, forgets drained connections (returned) and re-arms the core's deadline.
    pub fn flush(&mut self, io: &mut Io) -> Vec<ConnectionHandle> {
        let now = self.now(io);
        let mut drained = Vec::new();
        let mut full = !self.send_held(io);
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in handles {
            let Some(conn) = self.conns.get_mut(&ch) else {
                continue;
            };
            while let Some(ev) = conn.poll_endpoint_events() {
                let gone = ev.is_drained();
                if let Some(back) = self.endpoint.handle_event(ch, ev) {
                    conn.handle_event(back);
                }
                if gone {
                    drained.push(ch);
                }
            }
            while !full {
                self.tx.clear();
                let Some(t) = conn.poll_transmit(now, 1, &mut self.tx) else {
                    break;
                };
                full = !send(
                    io,
                    self.udp,
                    &t,
                    &self.tx,
                    &mut self.held,
                    &mut self.counters,
                );
            }
        }
        for ch in &drained {
            self.conns.remove(ch);
        }
        self.arm(io, full);
        drained
    }

    /// Sets the core's deadline to the earliest connection timer or [`Quic::also_wake`] (or
    /// "now" while a datagram waits for room in the socket).
    fn arm(&mut self, io: &mut Io, blocked: bool) {
        if blocked {
            io.set_wakeup(Some(io.now()));
            return;
        }
        let next = self
            .conns
            .values_mut()
            .filter_map(|c| c.poll_timeout())
            .min()
            .map(|t| t.saturating_duration_since(self.base));
        let next = match (next, self.also_wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        io.set_wakeup(next);
    }

    /// Sends the held datagram; false while the socket is still full.
    fn send_held(&mut self, io: &mut Io) -> bool {
        let Some((to, data)) = self.held.take() else {
            return true;
        };
        match io.udp_send(self.udp, &data, to) {
            Ok(()) => {
                self.counters.datagrams_out += 1;
                true
            }
            Err(longhaul::Error::WouldBlock) => {
                self.held = Some((to, data));
                false
            }
            Err(_) => true,
        }
    }

    fn send_transmit(&mut self, io: &mut Io, t: &Transmit) {
        let data = std::mem::take(&mut self.tx);
        send(io, self.udp, t, &data, &mut self.held, &mut self.counters);
        self.tx = data;
    }

    /// The socket this endpoint uses (the client's STUN shares it: same socket, same NAT
    /// mapping).
    pub fn udp(&self) -> UdpId {
        self.udp
    }
}

/// Sends one transmit (one datagram, or several of `segment_size`); false when the socket was
/// full (the rest is held or, beyond one datagram, left to QUIC's loss recovery).
fn send(
    io: &mut Io,
    udp: UdpId,
    t: &Transmit,
    data: &[u8],
    held: &mut Option<(SocketAddrV4, Vec<u8>)>,
    counters: &mut QuicCounters,
) -> bool {
    let SocketAddr::V4(to) = t.destination else {
        return true; // IPv6 is not on the stack's path: nothing can be sent there
    };
    let seg = t.segment_size.unwrap_or(t.size).max(1);
    for chunk in data[..t.size].chunks(seg) {
        match io.udp_send(udp, chunk, to) {
            Ok(()) => counters.datagrams_out += 1,
            Err(longhaul::Error::WouldBlock) => {
                counters.send_blocked += 1;
                if held.is_none() {
                    *held = Some((to, chunk.to_vec()));
                }
                return false;
            }
            Err(_) => {}
        }
    }
    true
}
