//! What the AF_XDP backend needs to know about a network interface: index, MAC, MTU, whether it
//! is up, and how many receive queues it has. Plain `ioctl`s on a datagram socket.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// `struct ifreq`: the name, then a 24-byte union (pointer-aligned).
#[repr(C, align(8))]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        for (o, b) in r.name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
            *o = b as libc::c_char;
        }
        r
    }
}

/// The interface facts the backend uses.
#[derive(Clone, Copy, Debug)]
pub struct NetDev {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: usize,
    pub up: bool,
    /// Receive queues, when the driver reports them (`ethtool -l`).
    pub rx_queues: Option<u32>,
}

/// Looks `name` up; `Ok(None)` when there is no such interface.
pub fn query(name: &str) -> io::Result<Option<NetDev>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: cname is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Ok(None);
    }
    // SAFETY: plain socket(2); the result is checked and owned below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: s is a fresh descriptor owned by nothing else.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let ioctl = |req: libc::c_ulong, r: &mut IfReq| -> io::Result<()> {
        // SAFETY: every request used here reads and writes a struct ifreq, which IfReq lays out
        // (40 bytes); SIOCETHTOOL's pointer in the union points to a live buffer (see below).
        if unsafe { libc::ioctl(s.as_raw_fd(), req, r as *mut IfReq) } < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let mut r = IfReq::new(name);
    ioctl(libc::SIOCGIFHWADDR, &mut r)?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&r.data[2..8]); // sockaddr: family (2 bytes), then the address
    let mut r = IfReq::new(name);
    ioctl(libc::SIOCGIFMTU, &mut r)?;
    let mtu = i32::from_ne_bytes(r.data[..4].try_into().expect("4 bytes")) as usize;
    let mut r = IfReq::new(name);
    ioctl(libc::SIOCGIFFLAGS, &mut r)?;
    let flags = i16::from_ne_bytes(r.data[..2].try_into().expect("2 bytes"));
    let up = flags & libc::IFF_UP as i16 != 0;
    // struct ethtool_channels: cmd, max_rx, max_tx, max_other, max_combined, rx_count, tx_count,
    // other_count, combined_count.
    let mut ch = [0u32; 9];
    ch[0] = ETHTOOL_GCHANNELS;
    let mut r = IfReq::new(name);
    r.data[..8].copy_from_slice(&(ch.as_mut_ptr() as u64).to_ne_bytes());
    let rx_queues = ioctl(SIOCETHTOOL, &mut r)
        .ok()
        .map(|()| ch[5].max(ch[8]))
        .filter(|&n| n > 0);
    Ok(Some(NetDev {
        ifindex,
        mac,
        mtu,
        up,
        rx_queues,
    }))
}
