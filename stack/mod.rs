//! The stack: one engine per core that turns frames into connections.
//!
//! [`Stack`] starts the cores; each runs an [`App`] instance that talks to the stack through
//! [`Io`]. smoltcp's `Interface` does ARP, ICMP and the TCP/UDP sockets; everything around it (demux
//! by hash, listen backlog, timers, events, counters) is ours. No smoltcp type leaves this module.

mod api;
mod config;
mod core;
mod demux;
mod device;
mod engine;
mod io;
mod neigh;
mod stats;
pub mod tcp;

pub use self::api::{App, ConnError, ConnId, ConnInfo, Error, Event, ListenerId, TcpState, UdpId};
pub use self::config::{parse_size, Config, ConfigError, Ipv4Cidr, MAX_BUFFER, MIN_BUFFER};
pub use self::core::{Stack, StartError};
#[doc(hidden)]
pub use self::engine::{Activity, Engine};
pub use self::io::{ConnOptions, Io};
pub use self::stats::CoreStats;

#[doc(hidden)]
pub mod fuzz {
    //! Entry points for fuzz and property tests of the receive path.
    pub use super::demux::fuzz_classify as classify;
}
