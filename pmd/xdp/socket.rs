//! One AF_XDP socket: UMEM registration, ring sizing and mapping, and the bind (zero-copy when the
//! driver offers it, EBUSY retried with back-off).

use super::ring::{Mmap, Ring};
use super::{XdpError, BUSY_RETRY, FRAMES, FRAME_SIZE, RING_SIZE};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: passes a live T of its own size to an AF_XDP option that takes exactly that struct.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether the bound socket runs zero-copy, as the kernel reports it (`XDP_OPTIONS`).
pub(super) fn bound_zero_copy(fd: &OwnedFd) -> io::Result<bool> {
    let mut v = libc::xdp_options { flags: 0 };
    let mut len = std::mem::size_of::<libc::xdp_options>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into the live struct.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_OPTIONS,
            (&mut v as *mut libc::xdp_options).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v.flags & libc::XDP_OPTIONS_ZEROCOPY != 0)
    }
}

/// A socket with its UMEM registered and its rings mapped, not yet bound.
pub(super) struct Unbound {
    pub fd: OwnedFd,
    pub umem: Mmap,
    pub fill: Ring<u64>,
    pub comp: Ring<u64>,
    pub rx: Ring<libc::xdp_desc>,
    pub tx: Ring<libc::xdp_desc>,
}

pub(super) fn new_socket() -> Result<Unbound, XdpError> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => XdpError::NotPermitted("an AF_XDP socket"),
            Some(libc::EAFNOSUPPORT) => XdpError::Unsupported("open AF_XDP sockets", e),
            _ => XdpError::Io("socket(AF_XDP)", e),
        });
    }
    // SAFETY: fd is fresh and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // In copy mode every frame in flight is an skb charged to the socket's send buffer; the default
    // (~200 KiB) would stall transmission long before the ring or the UMEM runs out, so make the
    // UMEM the only limit. Best effort: without CAP_NET_ADMIN the default stays.
    let sndbuf: libc::c_int = (FRAMES * FRAME_SIZE * 2) as libc::c_int;
    // SAFETY: passes a live c_int of its own size to a socket-level option that takes one.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&sndbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let umem = Mmap::anonymous((FRAMES * FRAME_SIZE) as usize)
        .map_err(|e| XdpError::Io("allocate the UMEM", e))?;
    let reg = libc::xdp_umem_reg {
        addr: umem.as_ptr() as u64,
        len: umem.len() as u64,
        chunk_size: FRAME_SIZE,
        headroom: 0,
        flags: 0,
        tx_metadata_len: 0,
    };
    setsockopt(&fd, libc::XDP_UMEM_REG, &reg).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOBUFS) | Some(libc::ENOMEM) => XdpError::Io(
            "register the UMEM (locked memory limit? raise it with `ulimit -l unlimited`)",
            e,
        ),
        _ => XdpError::Io("register the UMEM", e),
    })?;
    for opt in [
        libc::XDP_UMEM_FILL_RING,
        libc::XDP_UMEM_COMPLETION_RING,
        libc::XDP_RX_RING,
        libc::XDP_TX_RING,
    ] {
        setsockopt(&fd, opt, &RING_SIZE).map_err(|e| XdpError::Io("size the rings", e))?;
    }
    let off: libc::xdp_mmap_offsets = getsockopt_offsets(&fd)?;
    let raw = fd.as_raw_fd();
    let io = |e| XdpError::Io("map the rings", e);
    let fill = Ring::map(raw, &off.fr, RING_SIZE, libc::XDP_UMEM_PGOFF_FILL_RING).map_err(io)?;
    let comp = Ring::map(
        raw,
        &off.cr,
        RING_SIZE,
        libc::XDP_UMEM_PGOFF_COMPLETION_RING,
    )
    .map_err(io)?;
    let rx = Ring::map(raw, &off.rx, RING_SIZE, libc::XDP_PGOFF_RX_RING as u64).map_err(io)?;
    let tx = Ring::map(raw, &off.tx, RING_SIZE, libc::XDP_PGOFF_TX_RING as u64).map_err(io)?;
    Ok(Unbound {
        fd,
        umem,
        fill,
        comp,
        rx,
        tx,
    })
}

fn getsockopt_offsets(fd: &OwnedFd) -> Result<libc::xdp_mmap_offsets, XdpError> {
    // SAFETY: xdp_mmap_offsets is plain integers; all-zero is a valid value.
    let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into the live struct.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
            (&mut off as *mut libc::xdp_mmap_offsets).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(XdpError::Io(
            "read the ring offsets",
            io::Error::last_os_error(),
        ));
    }
    if len as usize != std::mem::size_of::<libc::xdp_mmap_offsets>() {
        return Err(XdpError::Unsupported(
            "report ring flags (need_wakeup)",
            io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    Ok(off)
}

fn bind(fd: &OwnedFd, ifindex: u32, queue: u32, flags: u16) -> io::Result<()> {
    let sa = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags | libc::XDP_USE_NEED_WAKEUP,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: 0,
    };
    // SAFETY: sa is a live sockaddr_xdp and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_xdp).cast(),
            std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Binds zero-copy when allowed and offered, copy mode otherwise; retries EBUSY with back-off.
pub(super) fn bind_queue(
    s: &Unbound,
    iface: &str,
    ifindex: u32,
    queue: u32,
    try_zero_copy: bool,
) -> Result<bool, XdpError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    let mut zero_copy = try_zero_copy;
    loop {
        let flags = if zero_copy {
            libc::XDP_ZEROCOPY
        } else {
            libc::XDP_COPY
        };
        match bind(&s.fd, ifindex, queue, flags) {
            Ok(()) => return Ok(zero_copy),
            Err(e) => match e.raw_os_error() {
                Some(libc::EBUSY) if started.elapsed() < BUSY_RETRY => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Some(libc::EBUSY) => {
                    return Err(XdpError::QueueBusy {
                        iface: iface.to_string(),
                        queue,
                    })
                }
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::EPROTONOSUPPORT)
                    if zero_copy =>
                {
                    zero_copy = false
                }
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    return Err(XdpError::NotPermitted("binding an AF_XDP socket"))
                }
                _ => return Err(XdpError::Io("bind the AF_XDP socket", e)),
            },
        }
    }
}
