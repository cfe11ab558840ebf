//! longhaul's own TCP: a sans-IO protocol core driven by the per-core engine.
//!
//! Nothing here reads a clock, touches a device or allocates per packet: time comes in as
//! [`Instant`], segments come in parsed ([`segment::Segment`]) and go out as descriptions
//! ([`conn::Transmit`]) that the engine serialises straight into the port's buffers.

pub mod cc;
pub mod config;
pub mod conn;
pub mod cookie;
pub mod pmtu;
pub mod recovery;
pub mod rx_buf;
pub mod segment;
pub mod seq;
pub mod time;
pub mod tx_buf;
pub mod wheel;

pub use self::seq::Seq;
pub use self::time::Instant;
