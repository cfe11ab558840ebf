//! Packet I/O: moves Ethernet frames between a port and the stack, nothing else.
//!
//! A port has one or more queue pairs; each core owns exactly one [`Queue`]. Frame buffers belong to the
//! backend: [`Queue::rx_burst`] lends received frames to the stack, which hands each one back with
//! [`Queue::free`]; transmit frames come from [`Queue::alloc_tx`] and go out with [`Queue::tx_burst`],
//! which takes exactly the prefix it could send. In steady state nothing here allocates.
//!
//! Backends: [`tap`] (a Linux TAP device, multi-queue), [`xdp`] (AF_XDP sockets on a NIC the kernel
//! keeps using), [`mem`] (an in-process wire for tests and benchmarks, with loss and reordering
//! hooks) and, with the `dpdk` feature, `dpdk` (DPDK poll-mode drivers). [`rss`] computes which
//! queue a flow lands on.

#![allow(unsafe_code)]

#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod mem;
pub mod rss;
#[doc(hidden)]
pub mod sys;
pub mod tap;
pub mod xdp;

use std::fmt;
use std::os::fd::RawFd;

/// What a port can do, as the stack needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// IP MTU in bytes (the Ethernet payload), e.g. 1500.
    pub mtu: usize,
    /// Number of queue pairs the port was opened with.
    pub queues: usize,
    /// Received frames have their IPv4/TCP/UDP checksums verified by the port.
    pub rx_checksum_offload: bool,
    /// The port fills in IPv4/TCP/UDP checksums on transmit.
    pub tx_checksum_offload: bool,
    /// How the port spreads incoming IPv4 TCP/UDP flows over its queues (Toeplitz key and
    /// redirection table), when it does so by RSS: an outgoing connection can pick a local port
    /// whose replies land on its own queue ([`rss::RssConfig::pick_local_port`]).
    pub rss: Option<rss::RssConfig>,
}

/// A frame buffer owned by a backend and lent to the stack.
pub trait Frame: Send {
    /// The frame's bytes (its current length).
    fn data(&self) -> &[u8];
    /// The frame's bytes, mutable (its current length).
    fn data_mut(&mut self) -> &mut [u8];
    /// Sets the frame length; `len` must not exceed [`Frame::capacity`].
    fn set_len(&mut self, len: usize);
    /// The largest frame this buffer holds.
    fn capacity(&self) -> usize;
}

/// One receive/transmit queue pair of a port, owned by one core.
pub trait Queue: Send + 'static {
    /// The backend's frame buffer.
    type Frame: Frame;

    /// What the port can do.
    fn caps(&self) -> Caps;

    /// Appends up to `max` received frames to `out` and returns how many were appended.
    /// `out` should have capacity for `max` more frames so that this does not allocate.
    fn rx_burst(&mut self, out: &mut Vec<Self::Frame>, max: usize) -> usize;

    /// A free buffer to build an outgoing frame in, or `None` when the backend has none left.
    fn alloc_tx(&mut self) -> Option<Self::Frame>;

    /// Transmits frames from the front of `frames`, removing the ones sent, and returns how many.
    /// Frames the port could not take (ring full) stay in `frames`, in order.
    fn tx_burst(&mut self, frames: &mut Vec<Self::Frame>) -> usize;

    /// Gives a frame (received or allocated) back to the backend.
    fn free(&mut self, frame: Self::Frame);

    /// A descriptor that becomes readable when frames arrive, for idle sleep.
    fn wait_fd(&self) -> Option<RawFd>;

    /// Told before (`true`) and after (`false`) the core sleeps on [`Queue::wait_fd`], so a backend
    /// that must be woken explicitly (the in-memory wire) knows when to.
    fn set_sleeping(&self, _sleeping: bool) {}
}

/// A frame buffer taken from a fixed pool: a boxed slice and a length. Moving it moves a pointer.
pub struct PoolFrame {
    buf: Box<[u8]>,
    len: usize,
}

impl PoolFrame {
    /// A zero-capacity placeholder (no allocation), left behind when a frame is moved out of a slot.
    pub fn empty() -> Self {
        PoolFrame {
            buf: Box::new([]),
            len: 0,
        }
    }

    /// A new buffer of `capacity` bytes (used only when a pool is built).
    pub fn with_capacity(capacity: usize) -> Self {
        PoolFrame {
            buf: vec![0u8; capacity].into_boxed_slice(),
            len: 0,
        }
    }
}

impl Frame for PoolFrame {
    fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
    fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.buf.len());
        self.len = len.min(self.buf.len());
    }
    fn capacity(&self) -> usize {
        self.buf.len()
    }
}

impl fmt::Debug for PoolFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolFrame({} bytes)", self.len)
    }
}

/// Which port to open, as written on the command line (`--port`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PortSpec {
    /// `tap:IFACE` — a TAP device, created if it does not exist.
    Tap {
        /// Interface name (at most 15 bytes).
        iface: String,
    },
    /// `xdp:IFACE[:skb|drv|auto][,queues=N]` — AF_XDP sockets on an existing interface.
    Xdp {
        /// Interface name.
        iface: String,
        /// Where the XDP program runs.
        mode: xdp::XdpMode,
        /// Queues to open (default: one per core).
        queues: Option<usize>,
    },
    /// `dpdk:"EAL ARGS"` — the first Ethernet port DPDK finds after `rte_eal_init` with these
    /// arguments (split like a shell would), e.g. `dpdk:"-l 2-5 -a 0000:3b:00.0"`.
    #[cfg(feature = "dpdk")]
    Dpdk {
        /// The EAL arguments, one word each.
        eal_args: Vec<String>,
    },
}

/// A port argument that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpecError(pub String);

impl fmt::Display for PortSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PortSpecError {}

impl std::str::FromStr for PortSpec {
    type Err = PortSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "tap" => {
                if rest.is_empty() || rest.len() > 15 || rest.contains(['/', ' ', ':']) {
                    return Err(PortSpecError(format!(
                        "bad port '{s}': expected tap:IFACE with an interface name of 1 to 15 characters"
                    )));
                }
                Ok(PortSpec::Tap {
                    iface: rest.to_string(),
                })
            }
            "xdp" => xdp::parse_spec(s, rest)
                .map(|(iface, mode, queues)| PortSpec::Xdp {
                    iface,
                    mode,
                    queues,
                })
                .map_err(PortSpecError),
            #[cfg(feature = "dpdk")]
            "dpdk" => dpdk::parse_eal_args(rest)
                .map(|eal_args| PortSpec::Dpdk { eal_args })
                .map_err(|e| PortSpecError(format!("bad port '{s}': {e}"))),
            #[cfg(not(feature = "dpdk"))]
            "dpdk" => Err(PortSpecError(format!(
                "port '{s}': this longhaul was built without DPDK: rebuild with --features dpdk (needs libdpdk-dev libclang-dev pkg-config)"
            ))),
            _ => Err(PortSpecError(format!(
                "bad port '{s}': expected tap:IFACE, xdp:IFACE[:skb|drv|auto][,queues=N] or dpdk:\"EAL ARGS\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tap_spec() {
        assert_eq!(
            "tap:lh0".parse::<PortSpec>().unwrap(),
            PortSpec::Tap {
                iface: "lh0".into()
            }
        );
        assert!("tap:".parse::<PortSpec>().is_err());
        assert!("tap:waytoolonginterfacename".parse::<PortSpec>().is_err());
        assert!("eth0".parse::<PortSpec>().is_err());
    }

    #[cfg(not(feature = "dpdk"))]
    #[test]
    fn dpdk_spec_without_the_feature_says_how_to_get_it() {
        let e = "dpdk:-l 1".parse::<PortSpec>().unwrap_err().to_string();
        assert!(e.contains("rebuild with --features dpdk"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn pool_frame_len_is_clamped() {
        let mut f = PoolFrame::with_capacity(64);
        f.set_len(10);
        assert_eq!(f.data().len(), 10);
        assert_eq!(f.capacity(), 64);
    }
}
