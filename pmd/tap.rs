//! `tap`: a Linux TAP device, one non-blocking file descriptor per queue.
//!
//! Opened with `IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE`, so every queue is its own fd and the kernel
//! spreads flows over them (and steers a flow's frames to the queue that last sent for it). The
//! interface is created when it does not exist and set up. Each queue keeps a fixed pool of frame
//! buffers; `read`/`write` move one frame each (a TAP has no batched I/O), in bursts.

use super::{Caps, Frame, PoolFrame, Queue};
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// Buffers per queue: a receive burst, the transmit backlog and slack.
const POOL_FRAMES: usize = 512;
/// The kernel's queue towards us (txqueuelen) is raised to at least this many frames: the default
/// 1000 overflows when several kernel TCP flows burst at a core that reads one frame per syscall.
const MIN_TXQUEUELEN: libc::c_int = 4096;
const SIOCGIFTXQLEN: libc::c_ulong = 0x8942;
const SIOCSIFTXQLEN: libc::c_ulong = 0x8943;

/// Why a TAP could not be opened.
#[derive(Debug)]
#[non_exhaustive]
pub enum TapError {
    /// `/dev/net/tun` does not exist.
    NoTunDevice,
    /// The caller lacks CAP_NET_ADMIN.
    NotPermitted,
    /// The interface exists but is not a multi-queue TAP, or is busy.
    Incompatible(String, io::Error),
    /// Any other system error.
    Io(&'static str, io::Error),
}

impl fmt::Display for TapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TapError::NoTunDevice => f.write_str(
                "/dev/net/tun is missing: load the tun module (modprobe tun) or create the node (mknod /dev/net/tun c 10 200)",
            ),
            TapError::NotPermitted => f.write_str(
                "opening a TAP needs CAP_NET_ADMIN: run as root (or grant the capability: setcap cap_net_admin+ep longhaul)",
            ),
            TapError::Incompatible(name, e) => write!(
                f,
                "interface {name} cannot be opened as a multi-queue TAP ({e}): delete it (ip link del {name}) or pick another name"
            ),
            TapError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for TapError {}

/// One queue of a TAP device.
pub struct TapQueue {
    fd: OwnedFd,
    pool: Vec<PoolFrame>,
    caps: Caps,
}

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[repr(C)]
struct IfReqMtu {
    name: [libc::c_char; libc::IFNAMSIZ],
    mtu: libc::c_int,
    _pad: [u8; 20],
}

fn ifname(name: &str) -> [libc::c_char; libc::IFNAMSIZ] {
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *o = b as libc::c_char;
    }
    out
}

/// Opens (creating if needed) TAP interface `name` with `queues` queues and sets it up.
pub fn open(name: &str, queues: usize) -> Result<Vec<TapQueue>, TapError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(TapError::Io(
            "interface name",
            io::Error::new(io::ErrorKind::InvalidInput, "must be 1 to 15 bytes"),
        ));
    }
    let mut fds = Vec::with_capacity(queues);
    for _ in 0..queues.max(1) {
        let path: &CStr = c"/dev/net/tun";
        // SAFETY: path is a valid NUL-terminated string; the result is checked.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                    TapError::NoTunDevice
                }
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::NotPermitted,
                _ => TapError::Io("open /dev/net/tun", e),
            });
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReqFlags {
            name: ifname(name),
            flags: IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE,
            _pad: [0; 22],
        };
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReqFlags lays out (40 bytes).
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::NotPermitted,
                _ => TapError::Incompatible(name.to_string(), e),
            });
        }
        fds.push(fd);
    }
    let mtu = configure_interface(name)?;
    let caps = Caps {
        mtu,
        queues: fds.len(),
        rx_checksum_offload: false,
        tx_checksum_offload: false,
        rss: None,
    };
    let frame_cap = mtu + 14 + 4;
    Ok(fds
        .into_iter()
        .map(|fd| TapQueue {
            fd,
            pool: (0..POOL_FRAMES)
                .map(|_| PoolFrame::with_capacity(frame_cap))
                .collect(),
            caps,
        })
        .collect())
}

/// Sets IFF_UP on the interface, raises its txqueuelen and returns its MTU.
fn configure_interface(name: &str) -> Result<usize, TapError> {
    // SAFETY: plain socket(2) call; the result is checked.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(TapError::Io("socket", io::Error::last_os_error()));
    }
    // SAFETY: s is a fresh descriptor owned by nothing else.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req = IfReqFlags {
        name: ifname(name),
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write a struct ifreq laid out by IfReqFlags.
    unsafe {
        if libc::ioctl(
            s.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut req as *mut IfReqFlags,
        ) < 0
        {
            return Err(TapError::Io("SIOCGIFFLAGS", io::Error::last_os_error()));
        }
        if req.flags & libc::IFF_UP as libc::c_short == 0 {
            req.flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(
                s.as_raw_fd(),
                libc::SIOCSIFFLAGS,
                &mut req as *mut IfReqFlags,
            ) < 0
            {
                return Err(TapError::Io("set interface up", io::Error::last_os_error()));
            }
        }
    }
    // struct ifreq with an int member: the same layout serves MTU and txqueuelen.
    let mut qreq = IfReqMtu {
        name: ifname(name),
        mtu: 0,
        _pad: [0; 20],
    };
    // SAFETY: SIOCGIFTXQLEN/SIOCSIFTXQLEN read and write an int in a struct ifreq (IfReqMtu layout).
    unsafe {
        if libc::ioctl(s.as_raw_fd(), SIOCGIFTXQLEN, &mut qreq as *mut IfReqMtu) == 0
            && qreq.mtu < MIN_TXQUEUELEN
        {
            qreq.mtu = MIN_TXQUEUELEN;
            // Best effort: a smaller queue only means earlier drops under bursts.
            libc::ioctl(s.as_raw_fd(), SIOCSIFTXQLEN, &mut qreq as *mut IfReqMtu);
        }
    }
    let mut mreq = IfReqMtu {
        name: ifname(name),
        mtu: 0,
        _pad: [0; 20],
    };
    // SAFETY: SIOCGIFMTU writes the MTU into a struct ifreq laid out by IfReqMtu.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFMTU, &mut mreq as *mut IfReqMtu) } < 0 {
        return Err(TapError::Io("SIOCGIFMTU", io::Error::last_os_error()));
    }
    Ok(mreq.mtu.max(576) as usize)
}

impl Queue for TapQueue {
    type Frame = PoolFrame;

    fn caps(&self) -> Caps {
        self.caps
    }

    fn rx_burst(&mut self, out: &mut Vec<PoolFrame>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(mut frame) = self.pool.pop() else {
                break;
            };
            frame.set_len(frame.capacity());
            let buf = frame.data_mut();
            // SAFETY: reads at most buf.len() bytes into a live, exclusively borrowed buffer.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                self.pool.push(frame);
                break;
            }
            frame.set_len(r as usize);
            out.push(frame);
            n += 1;
        }
        n
    }

    fn alloc_tx(&mut self) -> Option<PoolFrame> {
        let mut f = self.pool.pop()?;
        f.set_len(f.capacity());
        Some(f)
    }

    fn tx_burst(&mut self, frames: &mut Vec<PoolFrame>) -> usize {
        let mut sent = 0;
        for frame in frames.iter() {
            let data = frame.data();
            // SAFETY: writes data.len() bytes from a live buffer.
            let r = unsafe { libc::write(self.fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
            if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                break;
            }
            // Written, or refused for good (e.g. the interface is down): either way it is gone.
            sent += 1;
        }
        for frame in frames.drain(..sent) {
            self.pool.push(frame);
        }
        sent
    }

    fn free(&mut self, frame: PoolFrame) {
        if self.pool.len() < POOL_FRAMES {
            self.pool.push(frame);
        }
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}
