//! UDP relayed as QUIC DATAGRAM frames (RFC 9221): unreliable, unordered, never blocking a
//! stream. Each frame is a 4-byte flow id (big endian) and the UDP payload.
//!
//! The client gives every local sender (address and port on `--udp-listen`) a flow id; the server
//! gives every (connection, flow id) its own UDP socket toward `--udp-target`, so replies find
//! their way back. Flows idle for [`FLOW_IDLE`] are forgotten. Nothing queues beyond quinn's
//! datagram buffers: a datagram that does not fit (too large for the path, buffer full) is
//! dropped and counted, as a router would.

use bytes::{BufMut, Bytes, BytesMut};
use longhaul::{Io, UdpId};
use quinn_proto::{Connection, ConnectionHandle, SendDatagramError};
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::Duration;

/// A flow with no datagram either way for this long is forgotten.
pub const FLOW_IDLE: Duration = Duration::from_secs(60);
/// Flows per core on either end.
const MAX_FLOWS: usize = 1024;
/// Local ports the server binds for its flows toward the target.
const FLOW_PORTS: std::ops::RangeInclusive<u16> = 20000..=29999;

/// Datagram counters of one core.
#[derive(Clone, Copy, Debug, Default)]
pub struct DatagramCounters {
    pub sent: u64,
    pub received: u64,
    /// Dropped: too large for the path, no room, unknown flow, too many flows, no target.
    pub dropped: u64,
}

fn frame(flow: u32, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + payload.len());
    b.put_u32(flow);
    b.put_slice(payload);
    b.freeze()
}

fn unframe(d: &Bytes) -> Option<(u32, Bytes)> {
    let id = u32::from_be_bytes(d.get(..4)?.try_into().ok()?);
    Some((id, d.slice(4..)))
}

/// Sends one framed datagram, dropping (and counting) what does not fit.
fn send(conn: &mut Connection, flow: u32, payload: &[u8], c: &mut DatagramCounters) {
    match conn.datagrams().send(frame(flow, payload), true) {
        Ok(()) => c.sent += 1,
        Err(SendDatagramError::Blocked(_))
        | Err(SendDatagramError::TooLarge)
        | Err(SendDatagramError::UnsupportedByPeer)
        | Err(SendDatagramError::Disabled) => c.dropped += 1,
    }
}

struct ClientFlow {
    peer: SocketAddrV4,
    last: Duration,
}

/// The client's side: one UDP socket on `--udp-listen`, flows by sender.
pub struct ClientSide {
    pub udp: UdpId,
    by_peer: HashMap<SocketAddrV4, u32>,
    flows: HashMap<u32, ClientFlow>,
    next: u32,
    buf: Vec<u8>,
    pub counters: DatagramCounters,
}

impl ClientSide {
    pub fn new(udp: UdpId) -> Self {
        ClientSide {
            udp,
            by_peer: HashMap::new(),
            flows: HashMap::new(),
            next: 0,
            buf: vec![0u8; 65536],
            counters: DatagramCounters::default(),
        }
    }

    /// Local datagrams into the tunnel (`conn` is `None` while there is no tunnel: dropped).
    pub fn relay_local(&mut self, io: &mut Io, mut conn: Option<&mut Connection>) {
        let now = io.now();
        while let Ok((n, from)) = io.udp_recv(self.udp, &mut self.buf) {
            let Some(conn) = conn.as_deref_mut() else {
                self.counters.dropped += 1;
                continue;
            };
            let id = match self.by_peer.get(&from) {
                Some(&id) => id,
                None if self.flows.len() < MAX_FLOWS => {
                    let id = self.next;
                    self.next = self.next.wrapping_add(1);
                    self.by_peer.insert(from, id);
                    self.flows.insert(
                        id,
                        ClientFlow {
                            peer: from,
                            last: now,
                        },
                    );
                    id
                }
                None => {
                    self.counters.dropped += 1;
                    continue;
                }
            };
            if let Some(f) = self.flows.get_mut(&id) {
                f.last = now;
            }
            send(conn, id, &self.buf[..n], &mut self.counters);
        }
    }

    /// Datagrams from the tunnel back to their local senders.
    pub fn relay_tunnel(&mut self, io: &mut Io, conn: &mut Connection) {
        let now = io.now();
        while let Some(d) = conn.datagrams().recv() {
            self.counters.received += 1;
            let Some((id, payload)) = unframe(&d) else {
                self.counters.dropped += 1;
                continue;
            };
            let Some(f) = self.flows.get_mut(&id) else {
                self.counters.dropped += 1;
                continue;
            };
            f.last = now;
            if io.udp_send(self.udp, &payload, f.peer).is_err() {
                self.counters.dropped += 1;
            }
        }
    }

    /// Forgets idle flows (and, after a reconnect, ids mean nothing to the new server anyway).
    pub fn expire(&mut self, now: Duration) {
        let by_peer = &mut self.by_peer;
        self.flows.retain(|_, f| {
            let keep = now.saturating_sub(f.last) < FLOW_IDLE;
            if !keep {
                by_peer.remove(&f.peer);
            }
            keep
        });
    }
}

struct ServerFlow {
    udp: UdpId,
    key: (ConnectionHandle, u32),
    last: Duration,
}

/// The server's side: a UDP socket toward the target per flow.
pub struct ServerSide {
    target: Option<SocketAddrV4>,
    by_key: HashMap<(ConnectionHandle, u32), UdpId>,
    flows: HashMap<UdpId, ServerFlow>,
    next_port: u16,
    buf: Vec<u8>,
    pub counters: DatagramCounters,
}

impl ServerSide {
    pub fn new(target: Option<SocketAddrV4>) -> Self {
        ServerSide {
            target,
            by_key: HashMap::new(),
            flows: HashMap::new(),
            next_port: *FLOW_PORTS.start(),
            buf: vec![0u8; 65536],
            counters: DatagramCounters::default(),
        }
    }

    /// Datagrams from the tunnel to the target.
    pub fn relay_tunnel(&mut self, io: &mut Io, ch: ConnectionHandle, conn: &mut Connection) {
        let now = io.now();
        while let Some(d) = conn.datagrams().recv() {
            self.counters.received += 1;
            let (Some(target), Some((id, payload))) = (self.target, unframe(&d)) else {
                self.counters.dropped += 1;
                continue;
            };
            let udp = match self.by_key.get(&(ch, id)) {
                Some(&u) => u,
                None => match self.bind(io) {
                    Some(u) if self.flows.len() < MAX_FLOWS => {
                        self.by_key.insert((ch, id), u);
                        self.flows.insert(
                            u,
                            ServerFlow {
                                udp: u,
                                key: (ch, id),
                                last: now,
                            },
                        );
                        u
                    }
                    other => {
                        if let Some(u) = other {
                            io.udp_close(u);
                        }
                        self.counters.dropped += 1;
                        continue;
                    }
                },
            };
            if let Some(f) = self.flows.get_mut(&udp) {
                f.last = now;
            }
            if io.udp_send(udp, &payload, target).is_err() {
                self.counters.dropped += 1;
            }
        }
    }

    /// Replies from the target on flow socket `udp` back into the tunnel.
    pub fn relay_target(
        &mut self,
        io: &mut Io,
        udp: UdpId,
        conns: &mut HashMap<ConnectionHandle, Connection>,
    ) {
        let now = io.now();
        let Some(f) = self.flows.get_mut(&udp) else {
            return;
        };
        f.last = now;
        let (ch, id) = f.key;
        while let Ok((n, _from)) = io.udp_recv(udp, &mut self.buf) {
            match conns.get_mut(&ch) {
                Some(conn) => send(conn, id, &self.buf[..n], &mut self.counters),
                None => self.counters.dropped += 1,
            }
        }
    }

    /// Closes flows that are idle or whose connection is gone.
    pub fn expire(&mut self, io: &mut Io, live: &HashMap<ConnectionHandle, Connection>) {
        let now = io.now();
        let gone: Vec<UdpId> = self
            .flows
            .values()
            .filter(|f| now.saturating_sub(f.last) >= FLOW_IDLE || !live.contains_key(&f.key.0))
            .map(|f| f.udp)
            .collect();
        for u in gone {
            if let Some(f) = self.flows.remove(&u) {
                self.by_key.remove(&f.key);
                io.udp_close(u);
            }
        }
    }

    fn bind(&mut self, io: &mut Io) -> Option<UdpId> {
        let span = (FLOW_PORTS.end() - FLOW_PORTS.start()) as usize + 1;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p >= *FLOW_PORTS.end() {
                *FLOW_PORTS.start()
            } else {
                p + 1
            };
            if let Ok(u) = io.udp_bind(p) {
                return Some(u);
            }
        }
        None
    }
}
