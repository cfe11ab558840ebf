//! longhaul's own TCP: a sans-IO protocol core driven by the per-core engine.
//!
//! Nothing here reads a clock, touches a device or allocates per packet: time comes in as
//! [`Instant`], segments come in parsed and go out as descriptions the engine serialises.

pub mod seq;
pub mod time;

pub use self::seq::Seq;
pub use self::time::Instant;
