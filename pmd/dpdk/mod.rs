//! `dpdk`: DPDK poll-mode drivers (feature `dpdk`). `--port dpdk:"EAL ARGS"`.
//!
//! [`open`] initialises the EAL with the user's arguments (plus `-l` with the cores' CPUs unless
//! they name lcores), takes the first Ethernet port, and configures one receive and one transmit
//! queue per core, each with a mempool of its own sized from the ring depths, checksum offloads
//! and RSS over the 4-tuple where the port offers them; then starts it and waits for the link.
//!
//! Zero copy: a [`Mbuf`] owns one DPDK mbuf (dropping it frees the mbuf). The stack reads received
//! frames straight from the mbuf the driver filled and builds outgoing frames straight in an mbuf
//! from the core's pool, which the driver then sends; nothing copies between the two.
//!
//! Threads: the stack's core threads are not EAL lcores. Each queue registers the thread that
//! first uses it with `rte_thread_register`, so it gets an lcore id and with it a mempool cache;
//! if registration fails the pool still works, without the cache. Sleeping: a port whose driver
//! has receive interrupts (net_tap, most NICs with vfio) gives each queue a descriptor to sleep
//! on; others get a timer that wakes the idle core every [`NAP`] to poll (a poll-mode driver has
//! nothing else to wait on).
//!
//! Teardown: the port is shared by its queues; when the last is dropped (the stack stopped, also
//! on Ctrl-C) the port is stopped and closed, the pools freed and `rte_eal_cleanup` runs.

#![allow(unsafe_code)]

mod args;
mod eal;
mod offload;
mod port;
mod sys;

pub use args::{parse_eal_args, ArgsError};

use super::{Caps, Frame, Queue};
use port::Port;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often an idle core polls a port without receive interrupts.
pub const NAP: Duration = Duration::from_micros(100);
/// Mbufs handed to or taken from the driver per call.
const BURST: usize = 64;

/// Why a DPDK port could not be opened. Each displays as one line saying what to change.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DpdkError {
    /// `rte_eal_init` failed, or was already run in this process.
    Eal(String),
    /// The EAL found no Ethernet port.
    NoPort(String),
    /// The port refused its configuration (queues, pools, start).
    Port(String),
    /// The link stayed down.
    LinkDown(String),
}

impl fmt::Display for DpdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DpdkError::Eal(m) | DpdkError::NoPort(m) | DpdkError::Port(m) => f.write_str(m),
            DpdkError::LinkDown(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DpdkError {}

/// What [`open`] needs from the stack's configuration.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Queue pairs, one per core.
    pub queues: usize,
    /// CPUs the cores run on (for the EAL's `-l` when the arguments name no lcores); empty: the
    /// CPUs this process may use.
    pub cpus: Vec<usize>,
    /// Frames one receive burst takes (sizes the pools).
    pub budget: usize,
    /// How long to wait for the link to come up.
    pub link_timeout: Duration,
}

/// An opened port: its queues, Ethernet address, and the CPUs its `-l` named (if the user gave a
/// plain list, the cores should run there).
pub struct Opened {
    /// One queue pair per core.
    pub queues: Vec<DpdkQueue>,
    /// The Ethernet address the stack should use: the port's, since a NIC filters on it; `None`
    /// for net_tap, whose driver gives the kernel's end of the TAP the same address as the port
    /// (the stack then picks its own, as on the TAP backend).
    pub mac: Option<[u8; 6]>,
    /// The CPUs of the user's `-l` list, if any.
    pub lcores: Vec<usize>,
}

/// Initialises the EAL with `eal_args` and opens the first port with `opts.queues` queue pairs.
pub fn open(eal_args: &[String], opts: &OpenOptions) -> Result<Opened, DpdkError> {
    let queues = opts.queues.max(1);
    let mut args = eal_args.to_vec();
    let lcores = match args::lcores_given(eal_args) {
        Some(given) => given,
        None => {
            let cpus = if opts.cpus.is_empty() {
                super::sys::allowed_cpus()
            } else {
                opts.cpus.clone()
            };
            if !cpus.is_empty() {
                let take = cpus.len().min(queues);
                args.push("-l".into());
                args.push(args::cpu_list(&cpus[..take]));
            }
            Vec::new()
        }
    };
    let eal_log = eal::init(&args)?;
    let port = Port::open(queues, opts, &eal_log)?;
    let port = Arc::new(port);
    let mut out = Vec::with_capacity(queues);
    for q in 0..queues {
        out.push(DpdkQueue::new(port.clone(), q as u16)?);
    }
    Ok(Opened {
        mac: (port.driver != "net_tap").then_some(port.mac),
        queues: out,
        lcores,
    })
}

/// One DPDK mbuf, owned: dropping it frees it to its pool. A single segment; its data start and
/// room are read once, when it is wrapped.
pub struct Mbuf {
    m: NonNull<sys::rte_mbuf>,
    data: NonNull<u8>,
    len: u16,
    room: u16,
}

// SAFETY: an Mbuf is the only handle to its mbuf; DPDK mbufs may be freed from any thread (the
// pools are multi-producer/multi-consumer).
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Wraps an mbuf the caller owns. `None` (and the mbuf freed) for a multi-segment chain.
    ///
    /// # Safety
    /// `m` must be a valid mbuf owned by the caller and used through nothing else afterwards.
    unsafe fn from_raw(m: *mut sys::rte_mbuf) -> Option<(Mbuf, u64)> {
        let m = NonNull::new(m)?;
        let mut v = sys::lh_mbuf_view::default();
        // SAFETY: m is a valid mbuf (the caller's promise); v is a live out-parameter.
        unsafe { sys::lh_mbuf_view(m.as_ptr(), &mut v) };
        let Some(data) = NonNull::new(v.data).filter(|_| v.nb_segs == 1) else {
            // SAFETY: we own m and nothing else refers to it.
            unsafe { sys::lh_pktmbuf_free(m.as_ptr()) };
            return None;
        };
        let mbuf = Mbuf {
            m,
            data,
            len: v.len.min(v.room),
            room: v.room,
        };
        Some((mbuf, v.ol_flags))
    }

    /// Gives up ownership (to a driver's transmit ring).
    fn into_raw(self) -> *mut sys::rte_mbuf {
        let m = self.m.as_ptr();
        std::mem::forget(self);
        m
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; it is freed exactly once, here.
        unsafe { sys::lh_pktmbuf_free(self.m.as_ptr()) };
    }
}

impl Frame for Mbuf {
    fn data(&self) -> &[u8] {
        // SAFETY: data points at `room` bytes of the mbuf's buffer, which we own; len <= room.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len as usize) }
    }
    fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.len as usize) }
    }
    fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.room as usize);
        self.len = len.min(self.room as usize) as u16;
        // SAFETY: we own the single-segment mbuf; its lengths become `len`, within its room.
        unsafe { sys::lh_mbuf_set_len(self.m.as_ptr(), self.len) };
    }
    fn capacity(&self) -> usize {
        self.room as usize
    }
}

impl fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mbuf({} of {} bytes)", self.len, self.room)
    }
}

/// How an idle core waits for this queue.
enum Wait {
    /// The driver's receive interrupt descriptor for the queue.
    Interrupt(RawFd),
    /// A timer armed for [`NAP`] before each sleep.
    Nap(OwnedFd),
}

/// One receive/transmit queue pair of a DPDK port, owned by one core.
pub struct DpdkQueue {
    port: Arc<Port>,
    id: u16,
    pool: NonNull<sys::rte_mempool>,
    caps: Caps,
    wait: Wait,
    /// The thread that registered itself as an lcore through this queue, if any.
    registered: Option<std::thread::ThreadId>,
    tried_register: bool,
    burst: [*mut sys::rte_mbuf; BURST],
    bad_checksums: u64,
}

// SAFETY: the queue is used by one thread at a time (the core that owns it); the port and pool
// it points to are shared DPDK objects made for use from any thread.
unsafe impl Send for DpdkQueue {}

impl DpdkQueue {
    fn new(port: Arc<Port>, id: u16) -> Result<DpdkQueue, DpdkError> {
        let wait = match port.interrupt_fd(id) {
            Some(fd) => Wait::Interrupt(fd),
            None => Wait::Nap(nap_timer()?),
        };
        Ok(DpdkQueue {
            pool: port.pools[id as usize],
            caps: port.caps,
            wait,
            registered: None,
            tried_register: false,
            burst: [std::ptr::null_mut(); BURST],
            bad_checksums: 0,
            port,
            id,
        })
    }

    /// Makes the calling thread an EAL lcore (once), for the mempool cache.
    #[inline]
    fn register_thread(&mut self) {
        if self.tried_register {
            return;
        }
        self.tried_register = true;
        // SAFETY: reads the calling thread's lcore id / registers the calling thread.
        unsafe {
            if sys::lh_lcore_id() == u32::MAX && sys::rte_thread_register() == 0 {
                self.registered = Some(std::thread::current().id());
            }
        }
    }
}

fn nap_timer() -> Result<OwnedFd, DpdkError> {
    // SAFETY: timerfd_create takes no pointers; the result is checked.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(DpdkError::Port(format!(
            "timerfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd is fresh and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn arm_timer(fd: &OwnedFd, after: Duration) {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: spec is a live itimerspec; the old value is not wanted.
    unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
}

impl Queue for DpdkQueue {
    type Frame = Mbuf;

    fn caps(&self) -> Caps {
        self.caps
    }

    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        self.register_thread();
        let mut got = 0;
        while got < max {
            let want = (max - got).min(BURST) as u16;
            // SAFETY: burst has room for BURST >= want pointers; the port and queue are started.
            let n =
                unsafe { sys::lh_rx_burst(self.port.id, self.id, self.burst.as_mut_ptr(), want) }
                    as usize;
            for &m in &self.burst[..n] {
                // SAFETY: the driver handed us ownership of each of the n mbufs.
                let Some((mbuf, flags)) = (unsafe { Mbuf::from_raw(m) }) else {
                    continue;
                };
                if self.caps.rx_checksum_offload && !offload::rx_checksums_ok(mbuf.data(), flags) {
                    self.bad_checksums += 1;
                    continue;
                }
                out.push(mbuf);
                got += 1;
            }
            if n < want as usize {
                break;
            }
        }
        got
    }

    fn alloc_tx(&mut self) -> Option<Mbuf> {
        self.register_thread();
        // SAFETY: the pool is alive while the port is (we hold an Arc to it).
        let m = unsafe { sys::lh_pktmbuf_alloc(self.pool.as_ptr()) };
        // SAFETY: a fresh mbuf from our pool, owned by us alone.
        let (mut mbuf, _) = unsafe { Mbuf::from_raw(m) }?;
        mbuf.set_len(mbuf.capacity());
        Some(mbuf)
    }

    fn tx_burst(&mut self, frames: &mut Vec<Mbuf>) -> usize {
        let mut sent = 0;
        while sent < frames.len() {
            let end = (sent + BURST).min(frames.len());
            let chunk = &mut frames[sent..end];
            for (slot, f) in self.burst.iter_mut().zip(chunk.iter_mut()) {
                if self.caps.tx_checksum_offload {
                    if let Some((flags, l2, l3)) = offload::tx_offload(f.data_mut()) {
                        // SAFETY: we own the mbuf; only its offload fields change.
                        unsafe { sys::lh_mbuf_set_tx_offload(f.m.as_ptr(), flags, l2, l3) };
                    }
                }
                *slot = f.m.as_ptr();
            }
            let want = chunk.len() as u16;
            // SAFETY: the first `want` burst slots hold mbufs we own; the driver takes ownership of
            // the first n it returns, which are released from their wrappers below.
            let n =
                unsafe { sys::lh_tx_burst(self.port.id, self.id, self.burst.as_mut_ptr(), want) }
                    as usize;
            sent += n;
            if n < want as usize {
                break;
            }
        }
        for f in frames.drain(..sent) {
            f.into_raw();
        }
        sent
    }

    fn free(&mut self, frame: Mbuf) {
        drop(frame);
    }

    fn wait_fd(&self) -> Option<RawFd> {
        match &self.wait {
            Wait::Interrupt(fd) => Some(*fd),
            Wait::Nap(t) => Some(t.as_raw_fd()),
        }
    }

    fn set_sleeping(&self, sleeping: bool) {
        if sleeping {
            // An empty burst before sleeping: drivers that batch transmit kicks (af_packet sends
            // its ring with one sendto, retried on the next burst when the kernel said EAGAIN)
            // flush what is still queued instead of holding it until the core wakes.
            // SAFETY: zero mbufs are passed; the pointer is not read.
            unsafe { sys::lh_tx_burst(self.port.id, self.id, std::ptr::null_mut(), 0) };
        }
        match &self.wait {
            Wait::Interrupt(_) => self.port.rx_interrupt(self.id, sleeping),
            Wait::Nap(t) if sleeping => arm_timer(t, NAP),
            Wait::Nap(t) => {
                let mut v = 0u64;
                // SAFETY: reads 8 bytes into a live u64 from our non-blocking timerfd (clears it).
                unsafe { libc::read(t.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
            }
        }
    }
}

impl Drop for DpdkQueue {
    fn drop(&mut self) {
        self.port
            .bad_checksums
            .fetch_add(self.bad_checksums, Ordering::Relaxed);
        if self.registered == Some(std::thread::current().id()) {
            // SAFETY: this thread registered itself through this queue and is releasing its lcore.
            unsafe { sys::rte_thread_unregister() };
        }
    }
}
