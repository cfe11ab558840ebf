//! `xdp`: AF_XDP sockets on a NIC the kernel keeps using for its own traffic.
//!
//! `--port xdp:IFACE[:skb|drv|auto][,queues=N]` opens one AF_XDP socket per core, bound to queue
//! *i* of the interface, each with its own UMEM (8,192 frames of 4 KiB) and its own four rings.
//! A UMEM per socket rather than one shared: each core then owns its frames outright (no atomics
//! or locks on a shared free list), the memory is allocated by the core's own queue, and with a
//! separate fill/completion pair per queue anyway (the kernel requires one per queue since 5.10)
//! sharing would save only memory, 32 MiB a queue.
//!
//! A small XDP program (25 instructions, `pmd/xdp/bpf.rs`) redirects to the sockets only IPv4 frames for the stack's
//! address and ARP frames about it; all other frames go on to the kernel (`XDP_PASS`), so SSH or
//! anything else the host runs on the interface keeps working. The program is attached as a BPF
//! link, which the kernel removes as soon as its descriptor closes: on a clean stop, when a core
//! thread unwinds from a panic, and even when the process is killed.
//!
//! Frames are lent to the stack without copying: a received [`XdpFrame`] points into the UMEM and
//! goes back to the fill ring after [`Queue::free`]; transmit frames are UMEM chunks from the
//! queue's free list and return to it through the completion ring. Rings are refilled and drained
//! in bursts. With `need_wakeup` the kernel says when it wants a syscall: an idle stack makes none
//! (it sleeps in `ppoll` on the socket), a busy one only a `sendto` per transmit burst when the
//! driver asks for it (copy mode always does) and a `recvfrom` when the fill ring asks.
//!
//! Modes: `drv` attaches in the driver (native XDP), `skb` in the generic path (works on any
//! interface, slower), `auto` (the default) tries `drv` then `skb`. The socket binds zero-copy
//! when the driver offers it and in copy mode otherwise. The stack uses the interface's own MAC
//! address unless `--mac` says otherwise (a NIC drops frames for other MACs).

mod bpf;
mod error;
mod netdev;
mod ring;
mod socket;

use error::is_perm;
pub use error::XdpError;
use socket::{bind_queue, bound_zero_copy, new_socket};

use super::{Caps, Frame, Queue};
use ring::{Mmap, Ring};
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes per UMEM chunk (one frame).
const FRAME_SIZE: u32 = 4096;
/// Chunks per queue.
const FRAMES: u32 = 8192;
/// Entries per ring (fill, completion, rx, tx).
const RING_SIZE: u32 = 2048;
/// Headroom the kernel leaves before received data in copy and zero-copy mode.
const XDP_PACKET_HEADROOM: u32 = 256;
/// Chunks the fill ring never takes from the free list, so transmit always finds buffers.
const TX_RESERVE: usize = 1024;
/// Refill the fill ring only when at least this many slots are free (refills in bursts).
const FILL_BATCH: u32 = 64;
/// How long an attach that finds another XDP program is retried (a stopping longhaul's link).
const ATTACH_RETRY: Duration = Duration::from_secs(3);
/// How long a bind that fails with EBUSY (the previous socket on the queue still being torn down
/// by the kernel) is retried.
const BUSY_RETRY: Duration = Duration::from_secs(5);

/// Where the XDP program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Native mode first, generic (skb) mode if the driver has no XDP support.
    #[default]
    Auto,
    /// Native XDP, in the driver.
    Drv,
    /// Generic XDP, after the kernel built an skb (any interface; copy mode only).
    Skb,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Auto => "auto",
            XdpMode::Drv => "drv",
            XdpMode::Skb => "skb",
        })
    }
}

/// Parses the part of `xdp:IFACE[:skb|drv|auto][,queues=N]` after `xdp:`; `whole` is the full
/// argument, for the error message.
pub fn parse_spec(whole: &str, rest: &str) -> Result<(String, XdpMode, Option<usize>), String> {
    let usage = || {
        format!("bad port '{whole}': expected xdp:IFACE[:skb|drv|auto][,queues=N], e.g. xdp:eth1:drv,queues=2")
    };
    let mut parts = rest.split(',');
    let main = parts.next().unwrap_or("");
    let (iface, mode) = match main.split_once(':') {
        Some((i, "skb")) => (i, XdpMode::Skb),
        Some((i, "drv")) => (i, XdpMode::Drv),
        Some((i, "auto")) => (i, XdpMode::Auto),
        Some((_, m)) => {
            return Err(format!(
                "bad port '{whole}': XDP mode '{m}' is not one of skb, drv, auto"
            ))
        }
        None => (main, XdpMode::Auto),
    };
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains(['/', ' ', '=']) {
        return Err(usage());
    }
    let mut queues = None;
    for opt in parts {
        match opt.split_once('=') {
            Some(("queues", n)) => match n.parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => queues = Some(n),
                _ => {
                    return Err(format!(
                        "bad port '{whole}': queues must be a number from 1 to 256"
                    ))
                }
            },
            _ => return Err(usage()),
        }
    }
    Ok((iface.to_string(), mode, queues))
}

/// What an opened port ended up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpInfo {
    /// Where the program runs (never `Auto`).
    pub mode: XdpMode,
    /// Whether the sockets bound zero-copy.
    pub zero_copy: bool,
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// The interface's index.
    pub ifindex: u32,
}

impl fmt::Display for XdpInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mode ({}), {}",
            self.mode,
            if self.mode == XdpMode::Drv {
                "native XDP in the driver"
            } else {
                "generic XDP"
            },
            if self.zero_copy {
                "zero-copy"
            } else {
                "copy mode (the driver offers no zero-copy here)"
            }
        )
    }
}

/// What all queues of a port share: the filter's link and its socket map. The program stays
/// attached while any queue lives; the last one dropped detaches it (closing the link).
struct Attachment {
    _link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
}

/// A frame in a queue's UMEM, lent to the stack. It must go back to the queue that made it (by
/// [`Queue::free`] or [`Queue::tx_burst`]); moving it moves 24 bytes.
pub struct XdpFrame {
    ptr: NonNull<u8>,
    /// Offset of the data in the UMEM.
    addr: u64,
    len: u32,
    cap: u32,
}

// SAFETY: the frame's chunk belongs to whoever holds the XdpFrame: neither the kernel (it is in
// no ring) nor the queue's free list refers to it until it is given back.
unsafe impl Send for XdpFrame {}

impl Frame for XdpFrame {
    fn data(&self) -> &[u8] {
        // SAFETY: ptr..ptr+cap lies inside a UMEM chunk this frame owns (see the Send impl); the
        // mapping outlives every lent frame (a queue dropped with frames out leaks its UMEM).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len as usize) }
    }
    fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len as usize) }
    }
    fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.cap as usize);
        self.len = len.min(self.cap as usize) as u32;
    }
    fn capacity(&self) -> usize {
        self.cap as usize
    }
}

impl fmt::Debug for XdpFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "XdpFrame(addr {:#x}, {} bytes)", self.addr, self.len)
    }
}

/// One AF_XDP socket: a queue of the interface, owned by one core.
pub struct XdpQueue {
    // Field order is drop order: rings before the socket, the socket before the UMEM, and the
    // shared attachment last.
    fill: Ring<u64>,
    comp: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fd: OwnedFd,
    umem: Option<Mmap>,
    /// Chunk addresses owned by us and not lent: the source of tx buffers and fill entries.
    free_chunks: Vec<u64>,
    /// Frames lent to the stack and not yet given back.
    lent: usize,
    caps: Caps,
    info: XdpInfo,
    /// Frames received, and transmit kicks (`sendto`) and fill wakeups (`recvfrom`) made.
    pub stats: XdpQueueStats,
    _attachment: Arc<Attachment>,
}

/// Counters of one AF_XDP queue (plain fields: the owning core reads them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpQueueStats {
    /// Frames taken from the rx ring.
    pub rx_frames: u64,
    /// Frames put on the tx ring.
    pub tx_frames: u64,
    /// `sendto` calls made to kick transmission.
    pub tx_kicks: u64,
    /// `recvfrom` calls made because the fill ring asked for a wakeup.
    pub fill_wakeups: u64,
}

impl XdpQueue {
    /// What the port ended up with (mode, zero-copy, MAC).
    pub fn info(&self) -> XdpInfo {
        self.info
    }

    fn base(&self) -> *mut u8 {
        self.umem
            .as_ref()
            .expect("UMEM mapped while the queue lives")
            .as_ptr()
    }

    fn frame_at(&self, addr: u64, len: u32) -> XdpFrame {
        let chunk_end = (addr & !(FRAME_SIZE as u64 - 1)) + FRAME_SIZE as u64;
        // SAFETY: addr < UMEM length (it comes from our own chunk list or a kernel descriptor for
        // this UMEM), so base + addr stays inside the mapping and is not null.
        let ptr = unsafe { NonNull::new_unchecked(self.base().add(addr as usize)) };
        XdpFrame {
            ptr,
            addr,
            len,
            cap: (chunk_end - addr) as u32,
        }
    }

    fn give_back(&mut self, frame: &XdpFrame) {
        // A frame from another queue's UMEM would alias our memory: never take it in.
        let ours = frame.ptr.as_ptr() as usize == self.base() as usize + frame.addr as usize;
        debug_assert!(
            ours,
            "an XdpFrame was given back to a queue that did not lend it"
        );
        if ours {
            self.free_chunks.push(frame.addr & !(FRAME_SIZE as u64 - 1));
            self.lent -= 1;
        }
    }

    /// Moves completed transmit chunks back to the free list.
    fn reap_completions(&mut self) {
        let n = self.comp.ready(RING_SIZE);
        for i in 0..n {
            let addr = self.comp.read(i);
            self.free_chunks.push(addr & !(FRAME_SIZE as u64 - 1));
        }
        if n > 0 {
            self.comp.release(n);
        }
    }

    /// Tops up the fill ring from the free list (in bursts, leaving a reserve for transmit).
    fn refill(&mut self) {
        let spare = self.free_chunks.len().saturating_sub(TX_RESERVE) as u32;
        let want = self.fill.free(RING_SIZE).min(spare);
        if want < FILL_BATCH.min(spare.max(1)) {
            return;
        }
        for i in 0..want {
            let addr = self.free_chunks.pop().expect("counted above");
            self.fill.write(i, addr);
        }
        self.fill.submit(want);
    }

    /// Asks the kernel to transmit what is on the tx ring, when it said it needs asking. In copy
    /// mode one call sends at most 32 frames, so call again while it makes progress.
    fn kick_tx(&mut self) {
        for _ in 0..(RING_SIZE / 32 + 2) {
            if !self.tx.needs_wakeup() || self.tx.pending() == 0 {
                return;
            }
            self.stats.tx_kicks += 1;
            // SAFETY: sendto with no buffer and no address, on our own socket.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc >= 0 {
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                // More to send (budget used up) or the device queue is momentarily full.
                Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) => {
                    self.reap_completions()
                }
                _ => return,
            }
        }
    }
}

impl Queue for XdpQueue {
    type Frame = XdpFrame;

    fn caps(&self) -> Caps {
        self.caps
    }

    fn rx_burst(&mut self, out: &mut Vec<XdpFrame>, max: usize) -> usize {
        let n = self.rx.ready(max.min(RING_SIZE as usize) as u32);
        for i in 0..n {
            let d = self.rx.read(i);
            out.push(self.frame_at(d.addr, d.len));
        }
        if n > 0 {
            self.rx.release(n);
            self.lent += n as usize;
            self.stats.rx_frames += n as u64;
        }
        self.refill();
        // Transmission the last kick could not finish (device queue full) goes on from here.
        if self.tx.pending() > 0 {
            self.kick_tx();
            self.reap_completions();
        }
        if n == 0 && self.fill.needs_wakeup() {
            self.stats.fill_wakeups += 1;
            // SAFETY: recvfrom with no buffer on our own socket: only wakes the driver's rx.
            unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        n as usize
    }

    fn alloc_tx(&mut self) -> Option<XdpFrame> {
        if self.free_chunks.is_empty() {
            self.reap_completions();
        }
        let addr = self.free_chunks.pop()?;
        self.lent += 1;
        Some(self.frame_at(addr, FRAME_SIZE))
    }

    fn tx_burst(&mut self, frames: &mut Vec<XdpFrame>) -> usize {
        let n = self.tx.free(frames.len().min(RING_SIZE as usize) as u32);
        for (i, f) in frames.iter().take(n as usize).enumerate() {
            self.tx.write(
                i as u32,
                libc::xdp_desc {
                    addr: f.addr,
                    len: f.len,
                    options: 0,
                },
            );
        }
        if n > 0 {
            self.tx.submit(n);
            // The chunks now belong to the kernel until they come back on the completion ring.
            frames.drain(..n as usize);
            self.lent -= n as usize;
            self.stats.tx_frames += n as u64;
        }
        self.kick_tx();
        self.reap_completions();
        n as usize
    }

    fn free(&mut self, frame: XdpFrame) {
        self.give_back(&frame);
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}

impl Drop for XdpQueue {
    fn drop(&mut self) {
        // Frames still lent out point into the UMEM: keep it mapped rather than leave them dangling.
        if self.lent > 0 {
            if let Some(m) = self.umem.take() {
                m.leak();
            }
        }
    }
}

impl fmt::Debug for XdpQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "XdpQueue({}, fd {})", self.info, self.fd.as_raw_fd())
    }
}

/// Opens `queues` AF_XDP sockets on `iface` (queues 0..queues) and attaches the filter that sends
/// them the frames for `ip` (and ARP about it). The queues share one attachment; dropping the
/// last one detaches the program.
pub fn open(
    iface: &str,
    mode: XdpMode,
    queues: usize,
    ip: Ipv4Addr,
) -> Result<Vec<XdpQueue>, XdpError> {
    let dev = netdev::query(iface)
        .map_err(|e| XdpError::Io("query the interface", e))?
        .ok_or_else(|| XdpError::NoInterface(iface.to_string()))?;
    if !dev.up {
        return Err(XdpError::InterfaceDown(iface.to_string()));
    }
    let queues = queues.max(1);
    if let Some(available) = dev.rx_queues {
        if queues > available as usize {
            return Err(XdpError::QueueOutOfRange {
                iface: iface.to_string(),
                wanted: queues,
                available,
            });
        }
    }
    let max_mtu = (FRAME_SIZE - XDP_PACKET_HEADROOM) as usize - 14 - 4;
    if dev.mtu > max_mtu {
        return Err(XdpError::MtuTooLarge {
            iface: iface.to_string(),
            mtu: dev.mtu,
            max: max_mtu,
        });
    }

    let map = bpf::create_xskmap(queues as u32).map_err(|e| {
        if is_perm(&e) {
            XdpError::NotPermitted("creating a BPF map")
        } else {
            XdpError::Io("create the XSKMAP", e)
        }
    })?;
    let prog = bpf::load_xdp(&bpf::filter_program(ip, map.as_raw_fd())).map_err(|(e, log)| {
        if is_perm(&e) && log.is_empty() {
            XdpError::NotPermitted("loading an XDP program")
        } else {
            XdpError::Verifier(e, log)
        }
    })?;
    // Attach first (so the mode is known and a foreign program is found before any socket takes
    // a queue); until the sockets are in the map, frames for us go to the kernel (XDP_PASS).
    // A program already there may belong to a longhaul still stopping on this interface (its link
    // goes when that process ends, within ~1 s): retry for a while before calling it foreign.
    let started = Instant::now();
    let attach = |flags| {
        let mut pause = Duration::from_millis(20);
        loop {
            match bpf::attach_link(&prog, dev.ifindex, flags) {
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST))
                        && started.elapsed() < ATTACH_RETRY =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                r => return r,
            }
        }
    };
    let already = |e: io::Error| XdpError::AlreadyAttached(iface.to_string(), e);
    let (link, used) = match mode {
        XdpMode::Skb => (attach(bpf::XDP_FLAGS_SKB_MODE), XdpMode::Skb),
        XdpMode::Drv => (attach(bpf::XDP_FLAGS_DRV_MODE), XdpMode::Drv),
        XdpMode::Auto => match attach(bpf::XDP_FLAGS_DRV_MODE) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                ) =>
            {
                (attach(bpf::XDP_FLAGS_SKB_MODE), XdpMode::Skb)
            }
            r => (r, XdpMode::Drv),
        },
    };
    let link = link.map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) | Some(libc::EEXIST) => already(e),
        Some(libc::EPERM) | Some(libc::EACCES) => {
            XdpError::NotPermitted("attaching an XDP program")
        }
        Some(libc::EOPNOTSUPP) if used == XdpMode::Drv => {
            XdpError::DriverModeUnsupported(iface.to_string(), e)
        }
        _ => XdpError::Io("attach the XDP program", e),
    })?;
    let attachment = Arc::new(Attachment {
        _link: link,
        _prog: prog,
        _map: map,
    });

    let mut out = Vec::with_capacity(queues);
    let mut zero_copy_all = true;
    for q in 0..queues as u32 {
        let mut s = new_socket()?;
        // Give the kernel receive buffers before the queue goes live.
        let mut free_chunks: Vec<u64> = (0..FRAMES as u64)
            .rev()
            .map(|i| i * FRAME_SIZE as u64)
            .collect();
        let n = s.fill.free(RING_SIZE);
        for i in 0..n {
            s.fill
                .write(i, free_chunks.pop().expect("more frames than fill slots"));
        }
        s.fill.submit(n);
        let zero_copy =
            bind_queue(&s, iface, dev.ifindex, q, used == XdpMode::Drv).map_err(|e| match e {
                XdpError::Io(_, ref io) if io.raw_os_error() == Some(libc::EINVAL) => {
                    XdpError::QueueOutOfRange {
                        iface: iface.to_string(),
                        wanted: queues,
                        available: q,
                    }
                }
                e => e,
            })?;
        // The kernel's word on the mode, when it gives it.
        let zero_copy = bound_zero_copy(&s.fd).unwrap_or(zero_copy);
        zero_copy_all &= zero_copy;
        bpf::set_xsk(&attachment._map, q, s.fd.as_raw_fd())
            .map_err(|e| XdpError::Io("put the socket into the XSKMAP", e))?;
        out.push(XdpQueue {
            fill: s.fill,
            comp: s.comp,
            rx: s.rx,
            tx: s.tx,
            fd: s.fd,
            umem: Some(s.umem),
            free_chunks,
            lent: 0,
            caps: Caps {
                mtu: dev.mtu,
                queues,
                rx_checksum_offload: false,
                tx_checksum_offload: false,
                rss: None,
            },
            info: XdpInfo {
                mode: used,
                zero_copy,
                mac: dev.mac,
                ifindex: dev.ifindex,
            },
            stats: XdpQueueStats::default(),
            _attachment: attachment.clone(),
        });
    }
    for q in &mut out {
        q.info.zero_copy = zero_copy_all;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let p = |s: &str| parse_spec(s, s.strip_prefix("xdp:").unwrap());
        assert_eq!(p("xdp:eth1"), Ok(("eth1".into(), XdpMode::Auto, None)));
        assert_eq!(p("xdp:eth1:drv"), Ok(("eth1".into(), XdpMode::Drv, None)));
        assert_eq!(
            p("xdp:veth0:skb,queues=2"),
            Ok(("veth0".into(), XdpMode::Skb, Some(2)))
        );
        assert_eq!(
            p("xdp:veth0,queues=4"),
            Ok(("veth0".into(), XdpMode::Auto, Some(4)))
        );
        for bad in [
            "xdp:",
            "xdp::drv",
            "xdp:eth1:fast",
            "xdp:eth1,queues=0",
            "xdp:eth1,queues=x",
            "xdp:eth1,rings=2",
            "xdp:waytoolonginterfacename",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn missing_interface_is_one_line() {
        let e = open(
            "lh-no-such0",
            XdpMode::Auto,
            1,
            Ipv4Addr::new(198, 18, 0, 2),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no interface named lh-no-such0"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
