//! The types apps see: handles, events, errors and the [`App`] trait.

use super::io::Io;
use std::fmt;
use std::net::SocketAddrV4;

/// A TCP connection on one core. Handles are per core and never reused while the app holds them
/// (a generation counter makes a stale handle fail with [`Error::InvalidHandle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
}

/// A bound UDP socket on one core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpId {
    pub(crate) idx: u32,
}

/// A listening TCP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(pub(crate) u16);

impl ListenerId {
    /// The port it listens on.
    pub fn port(self) -> u16 {
        self.0
    }
}

/// How a connection ended when it did not end by both sides closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnError {
    /// The peer sent a reset.
    Reset,
    /// The peer refused the connection (RST to our SYN).
    Refused,
    /// Nothing was acknowledged within the user timeout.
    TimedOut,
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnError::Reset => "connection reset by peer",
            ConnError::Refused => "connection refused",
            ConnError::TimedOut => "connection timed out",
        })
    }
}

impl std::error::Error for ConnError {}

/// Something happened on this core. Events are edge-triggered, as with epoll's `EPOLLET`:
/// `Readable` comes when new data (or the end of stream) arrives, or after a `read` returned
/// [`Error::WouldBlock`] and data came since; data already in the buffer raises no new event, so an
/// app that stops reading early must come back to it itself. `Writable` comes once there is room
/// after a `write` could not take everything (or `write_space` returned 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection on a listening port is established; the app now owns `conn`.
    Accepted {
        /// The listener it arrived on.
        listener: ListenerId,
        /// The new connection.
        conn: ConnId,
    },
    /// An outgoing connection is established.
    Connected(ConnId),
    /// Data (or end of stream) is ready to read.
    Readable(ConnId),
    /// The send buffer has room again.
    Writable(ConnId),
    /// The peer sent FIN: after the data already received, `read` returns `Ok(0)`.
    PeerClosed(ConnId),
    /// Both directions are closed; the handle is released.
    Closed(ConnId),
    /// The connection failed; the handle is released.
    Error(ConnId, ConnError),
    /// A UDP socket has datagrams to read.
    UdpReadable(UdpId),
}

/// Why an API call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Nothing to read, or no room to write, right now; an event follows when that changes.
    WouldBlock,
    /// The handle is not (or no longer) a live connection or socket of this core.
    InvalidHandle,
    /// The connection is not established or has been reset.
    NotConnected,
    /// `shutdown` or `close` was called already: no more writes.
    WriteClosed,
    /// The port is already in use on this core.
    AddrInUse,
    /// No free local port for an outgoing connection.
    NoFreePort,
    /// An argument is not acceptable (the text says which).
    InvalidArgument(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::WouldBlock => f.write_str("operation would block"),
            Error::InvalidHandle => f.write_str("invalid or released handle"),
            Error::NotConnected => f.write_str("not connected"),
            Error::WriteClosed => f.write_str("write side already shut down"),
            Error::AddrInUse => f.write_str("address in use"),
            Error::NoFreePort => f.write_str("no free local port"),
            Error::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
        }
    }
}

impl std::error::Error for Error {}

/// TCP state as RFC 9293 names it (serialised as the variant's name, e.g. `"Established"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum TcpState {
    Closed,
    Listen,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

/// A snapshot of one connection, like a line of `ss -ti` (serialisable: `longhaul stat --json`
/// prints it with these field names, the address as `"IP:PORT"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ConnInfo {
    /// Current state.
    pub state: TcpState,
    /// Local address and port.
    pub local: SocketAddrV4,
    /// Remote address and port.
    pub remote: SocketAddrV4,
    /// Bytes received and not yet read by the app.
    pub recv_queue: usize,
    /// Bytes written by the app and not yet acknowledged by the peer.
    pub send_queue: usize,
    /// Receive buffer size (bounds the advertised window).
    pub rmem: usize,
    /// Send buffer size.
    pub wmem: usize,
    /// Nagle's algorithm is off.
    pub nodelay: bool,
    /// Congestion control algorithm and its state (e.g. "cubic", "css").
    pub cc: &'static str,
    /// State of the congestion controller (e.g. "slow_start", "css", "avoidance").
    pub cc_state: &'static str,
    /// TCP counters and estimates, like Linux's `tcp_info`.
    pub tcp: crate::stack::tcp::conn::TcpInfo,
}

/// A per-core application. The stack creates one instance per core (from the factory given to
/// [`crate::Stack::start`]) and calls it on that core's thread only, so it needs no locks.
pub trait App: 'static {
    /// Called once when the core starts, before any packet is processed: listen or connect here.
    fn on_start(&mut self, _io: &mut Io) {}
    /// Called for every event, in order.
    fn on_event(&mut self, io: &mut Io, event: Event);
    /// Called about every 100 ms, for the app's own coarse timers.
    fn on_tick(&mut self, _io: &mut Io) {}
    /// Called once the deadline set with [`Io::set_wakeup`] has passed (for fine-grained timers,
    /// e.g. a QUIC connection's `poll_timeout`). The deadline is cleared before the call.
    fn on_wakeup(&mut self, _io: &mut Io) {}
    /// Called once when the stack is asked to stop. Close connections here; the core keeps running
    /// (up to about a second) until they are closed, then exits.
    fn on_stop(&mut self, _io: &mut Io) {}
}
