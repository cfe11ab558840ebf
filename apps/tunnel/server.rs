//! The server end: QUIC on a UDP port, each incoming bidirectional stream connected to the
//! target over longhaul TCP.

use super::datagram::ServerSide;
use super::quic::Quic;
use super::relay::{self, Key, Relay};
use super::Status;
use longhaul::{App, ConnId, Event, Io};
use quinn_proto::{ConnectionHandle, Dir, ServerConfig, StreamEvent, VarInt};
use std::net::SocketAddrV4;
use std::sync::Arc;

pub struct Server {
    port: u16,
    target: SocketAddrV4,
    config: Arc<ServerConfig>,
    status: Arc<Status>,
    core: usize,
    quic: Option<Quic>,
    relay: Relay,
    dgram: ServerSide,
}

impl Server {
    pub fn new(
        port: u16,
        target: SocketAddrV4,
        udp_target: Option<SocketAddrV4>,
        config: Arc<ServerConfig>,
        status: Arc<Status>,
        core: usize,
    ) -> Self {
        Server {
            port,
            target,
            config,
            status,
            core,
            quic: None,
            relay: Relay::new(),
            dgram: ServerSide::new(udp_target),
        }
    }

    /// Handles what connection `ch` has to say (new streams, readable/writable streams, loss).
    fn poll_conn(&mut self, io: &mut Io, ch: ConnectionHandle) {
        let Some(quic) = self.quic.as_mut() else {
            return;
        };
        loop {
            let Some(conn) = quic.conns.get_mut(&ch) else {
                return;
            };
            let Some(ev) = conn.poll() else {
                return;
            };
            match ev {
                quinn_proto::Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    while let Some(sid) = conn.streams().accept(Dir::Bi) {
                        match io.connect(self.target) {
                            Ok(tcp) => self.relay.add((ch, sid), tcp, false, false),
                            Err(_) => relay::reset_stream(conn, sid, relay::code::REFUSED),
                        }
                    }
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
                quinn_proto::Event::DatagramReceived => {
                    self.dgram.relay_tunnel(io, ch, conn);
                }
                quinn_proto::Event::ConnectionLost { reason } => {
                    println!(
                        "tunnel server: connection from {} ended: {reason}",
                        conn.remote_address()
                    );
                    self.relay.connection_lost(io, ch);
                }
                _ => {}
            }
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
        if let Some(q) = self.quic.as_mut() {
            for ch in q.flush(io) {
                self.relay.connection_lost(io, ch);
            }
        }
    }
}

impl App for Server {
    fn on_start(&mut self, io: &mut Io) {
        match io.udp_bind(self.port) {
            Ok(udp) => self.quic = Some(Quic::new(io, udp, Some(self.config.clone()))),
            Err(e) => self.status.fail(&format!(
                "longhaul tunnel server: cannot bind UDP port {}: {e}",
                self.port
            )),
        }
    }

    fn on_event(&mut self, io: &mut Io, event: Event) {
        match event {
            Event::UdpReadable(udp) => {
                let Some(q) = self.quic.as_mut() else {
                    return;
                };
                if udp != q.udp() {
                    self.dgram.relay_target(io, udp, &mut q.conns);
                    self.flush(io);
                    return;
                }
                let got = q.receive(io, &|_| false, &mut |_, _| {});
                for ch in got.touched {
                    self.poll_conn(io, ch);
                }
            }
            Event::Connected(tcp) => {
                if let Some(&key) = self.relay.by_tcp.get(&tcp) {
                    if let Some(f) = self.relay.flows.get_mut(&key) {
                        f.ready = true;
                    }
                }
                self.with_flow(io, tcp, Relay::pump);
            }
            Event::Readable(tcp) | Event::PeerClosed(tcp) => self.with_flow(io, tcp, Relay::up),
            Event::Writable(tcp) => self.with_flow(io, tcp, Relay::down),
            Event::Closed(tcp) => self.relay.tcp_closed(tcp),
            Event::Error(tcp, _) => {
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
        if let Some(q) = self.quic.as_ref() {
            self.dgram.expire(io, &q.conns);
            super::publish(
                &self.status.cores[self.core],
                self.core,
                q,
                &self.relay,
                Some(&self.dgram.counters),
            );
        }
    }

    fn on_stop(&mut self, io: &mut Io) {
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
