//! Sender-side loss recovery, in small pieces the connection (`conn.rs`) wires together.
//!
//! - [`scoreboard`]: what is in flight, segment by segment (RFC 6675's scoreboard): send time,
//!   SACKed/lost/retransmitted marks and the delivery-rate snapshot taken when it was sent; and
//!   the records RACK examines in send-time order.
//! - [`rack`]: RACK-TLP loss detection (RFC 8985): time-based loss marking with a reordering
//!   window that adapts to D-SACKs; an ACK costs the holes, not the flight.
//! - [`prr`]: Proportional Rate Reduction (RFC 6937, PRR-SSRB): how much may be sent per ACK
//!   during fast recovery.
//! - [`rate`]: delivery-rate estimation (draft-cheng-iccrg-delivery-rate-estimation).
//! - [`pacer`]: the earliest departure time of the next segment at a pacing rate.
//!
//! # Contract
//! Sans-IO like the rest of `stack::tcp`: time comes in as [`Instant`](super::Instant), nothing
//! reads a clock or allocates per packet (the scoreboard's ring and its send-time slab grow
//! with the window and are reused). No input panics: SACK blocks outside what is in flight are
//! ignored.

pub mod pacer;
pub mod prr;
pub mod rack;
pub mod rate;
pub mod scoreboard;

pub use self::pacer::Pacer;
pub use self::prr::Prr;
pub use self::rack::Rack;
pub use self::rate::{RateSample, RateSampler, TxSnapshot};
pub use self::scoreboard::{AckOutcome, Scoreboard, SentSeg};

#[cfg(test)]
mod sim_tests;
