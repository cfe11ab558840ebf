//! # longhaul
//!
//! A kernel-bypass userspace TCP/IP stack for long fat networks. Frames come from a poll-mode
//! backend ([`pmd`]: TAP today, an in-memory wire for tests; AF_XDP and DPDK later) and feed one
//! engine per core ([`stack`]) that busy-polls with NAPI-style budgets. Applications implement
//! [`App`]; the stack creates one instance per core and calls it with edge-triggered [`Event`]s.
//!
//! ```no_run
//! use longhaul::{App, Config, Event, Io, Stack};
//!
//! /// Echoes every byte back on TCP port 7.
//! struct Echo;
//!
//! impl App for Echo {
//!     fn on_start(&mut self, io: &mut Io) {
//!         io.listen(7).expect("port 7 free");
//!     }
//!
//!     fn on_event(&mut self, io: &mut Io, event: Event) {
//!         let conn = match event {
//!             Event::Readable(c) | Event::Writable(c) => c,
//!             Event::PeerClosed(c) => {
//!                 let _ = io.shutdown(c);
//!                 return;
//!             }
//!             _ => return,
//!         };
//!         let mut buf = [0u8; 16 * 1024];
//!         loop {
//!             // Read only what can be written back: backpressure instead of buffering.
//!             let room = io.write_space(conn).min(buf.len());
//!             if room == 0 {
//!                 break; // Writable follows
//!             }
//!             match io.read(conn, &mut buf[..room]) {
//!                 Ok(0) | Err(_) => break, // end of stream, or Readable follows
//!                 Ok(n) => {
//!                     io.write(conn, &buf[..n]).expect("room was checked");
//!                 }
//!             }
//!         }
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut cfg = Config::new();
//!     cfg.port("tap:lh0")?.ip("198.18.0.2/24")?.cores(1)?;
//!     let stack = Stack::start(cfg, |_core| Echo)?;
//!     std::thread::sleep(std::time::Duration::from_secs(60));
//!     stack.stop();
//!     Ok(())
//! }
//! ```

#![warn(missing_docs)]
// FFI and ring code lives in `pmd/`, the only module allowed `unsafe` (each block with a SAFETY line).
#![deny(unsafe_code)]

pub mod pmd;
pub mod stack;

pub use stack::{
    App, Config, ConnError, ConnId, ConnInfo, ConnOptions, CoreStats, Error, Event, Io, ListenerId,
    Stack, StartError, TcpState, UdpId,
};
