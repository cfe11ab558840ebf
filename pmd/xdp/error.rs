//! Why an AF_XDP port could not be opened, one line each with the fix.

use super::{ATTACH_RETRY, BUSY_RETRY};
use std::fmt;
use std::io;

/// Why an AF_XDP port could not be opened. Each message is one line saying how to fix it.
#[derive(Debug)]
#[non_exhaustive]
pub enum XdpError {
    /// No interface of that name (in this network namespace).
    NoInterface(String),
    /// The interface is down.
    InterfaceDown(String),
    /// A queue beyond the interface's receive queues was asked for.
    QueueOutOfRange {
        /// The interface.
        iface: String,
        /// Queues asked for.
        wanted: usize,
        /// Receive queues the interface has.
        available: u32,
    },
    /// Another XDP program is attached to the interface.
    AlreadyAttached(String, io::Error),
    /// The queue stayed busy (another AF_XDP socket on it) for the whole retry period.
    QueueBusy {
        /// The interface.
        iface: String,
        /// The busy queue.
        queue: u32,
    },
    /// `drv` was asked for and the driver has no native XDP.
    DriverModeUnsupported(String, io::Error),
    /// The interface MTU does not fit a UMEM frame.
    MtuTooLarge {
        /// The interface.
        iface: String,
        /// Its MTU.
        mtu: usize,
        /// The largest MTU a frame holds.
        max: usize,
    },
    /// Missing CAP_NET_ADMIN / CAP_NET_RAW / CAP_BPF.
    NotPermitted(&'static str),
    /// The kernel was built without AF_XDP sockets or BPF links.
    Unsupported(&'static str, io::Error),
    /// The verifier refused the filter program (a bug; the log says why).
    Verifier(io::Error, String),
    /// Any other system error.
    Io(&'static str, io::Error),
    /// The port spec and the other settings disagree.
    Config(String),
}

impl fmt::Display for XdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XdpError::NoInterface(i) => write!(
                f,
                "xdp: no interface named {i} in this network namespace: check the name with `ip link`"
            ),
            XdpError::InterfaceDown(i) => {
                write!(f, "xdp: interface {i} is down: bring it up with `ip link set {i} up`")
            }
            XdpError::QueueOutOfRange {
                iface,
                wanted,
                available,
            } => write!(
                f,
                "xdp: {iface} has {available} receive queue(s) and {wanted} were asked for: use queues={available} or fewer, or add channels with `ethtool -L {iface} combined {wanted}`"
            ),
            XdpError::AlreadyAttached(i, e) => write!(
                f,
                "xdp: another XDP program is attached to {i} ({e}, still after {}s): see it with `ip link show {i}`, remove it with `ip link set {i} xdp off` (or xdpgeneric off) if nothing needs it",
                ATTACH_RETRY.as_secs()
            ),
            XdpError::QueueBusy { iface, queue } => write!(
                f,
                "xdp: queue {queue} of {iface} is still in use by another AF_XDP socket after {}s of retries: stop the other program, or wait and start again",
                BUSY_RETRY.as_secs()
            ),
            XdpError::DriverModeUnsupported(i, e) => write!(
                f,
                "xdp: the driver of {i} has no native XDP ({e}): use xdp:{i}:skb (or :auto)"
            ),
            XdpError::MtuTooLarge { iface, mtu, max } => write!(
                f,
                "xdp: {iface} has MTU {mtu}, larger than an AF_XDP frame holds ({max}): lower it with `ip link set {iface} mtu {max}`"
            ),
            XdpError::NotPermitted(what) => write!(
                f,
                "xdp: {what} needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF: run as root (or setcap cap_net_admin,cap_net_raw,cap_bpf+ep longhaul)"
            ),
            XdpError::Unsupported(what, e) => write!(
                f,
                "xdp: this kernel cannot {what} ({e}): AF_XDP needs Linux 5.10 or newer built with CONFIG_XDP_SOCKETS and CONFIG_BPF_SYSCALL"
            ),
            XdpError::Verifier(e, log) => write!(
                f,
                "xdp: the kernel refused the filter program ({e}); verifier says: {}",
                log.lines().last().unwrap_or("nothing")
            ),
            XdpError::Io(what, e) => write!(f, "xdp: {what}: {e}"),
            XdpError::Config(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for XdpError {}

pub(super) fn is_perm(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}
