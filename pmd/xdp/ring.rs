//! The four AF_XDP rings (fill, completion, rx, tx) as mapped from the socket, and the UMEM area.
//!
//! Each ring is a single-producer single-consumer array shared with the kernel: a producer and a
//! consumer index (free-running `u32`s), a flags word (`XDP_RING_NEED_WAKEUP`) and the entries.
//! We keep cached copies of the other side's index and read the shared one only when the cached
//! view runs out, so a burst costs two atomic loads and one store, as in libxdp.

use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// An `mmap`ed region, unmapped on drop.
pub struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; who may touch which part is ruled by the ring protocol and
// by frame ownership (see XdpFrame), not by the thread.
unsafe impl Send for Mmap {}

impl Mmap {
    /// Anonymous memory for a UMEM, populated up front so the first frames do not fault.
    pub fn anonymous(len: usize) -> io::Result<Mmap> {
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Self::checked(p, len)
    }

    /// A ring of socket `fd` at page offset `pgoff`.
    pub fn ring(fd: RawFd, len: usize, pgoff: u64) -> io::Result<Mmap> {
        // SAFETY: maps `len` bytes of the socket's ring at the offset the kernel documents for it;
        // the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        Self::checked(p, len)
    }

    fn checked(p: *mut libc::c_void, len: usize) -> io::Result<Mmap> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap {
            ptr: NonNull::new(p.cast()).expect("mmap returned a non-null address"),
            len,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Keeps the memory mapped for the rest of the process (frames are still lent out).
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `checked`; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One mapped ring with entries of type `T` (`u64` addresses or `xdp_desc`).
pub struct Ring<T> {
    _map: Mmap,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    entries: NonNull<T>,
    mask: u32,
    size: u32,
    /// Our producer index (producer rings) or the kernel's as last read (consumer rings).
    cached_prod: u32,
    /// Our consumer index (consumer rings) or the kernel's as last read (producer rings).
    cached_cons: u32,
    _t: PhantomData<T>,
}

// SAFETY: a ring is used by the one core that owns its socket; the kernel side is synchronised
// through the acquire/release index protocol below.
unsafe impl<T: Send> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    /// Maps a ring of `size` entries described by `off` at page offset `pgoff` of socket `fd`.
    pub fn map(fd: RawFd, off: &libc::xdp_ring_offset, size: u32, pgoff: u64) -> io::Result<Self> {
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        let map = Mmap::ring(fd, len, pgoff)?;
        let base = map.as_ptr();
        // SAFETY: the kernel's offsets lie inside the mapping just made (len covers desc + entries)
        // and are suitably aligned for the types (u32 indices, u64/xdp_desc entries).
        let at = |o: u64| unsafe { NonNull::new_unchecked(base.add(o as usize)) };
        let mut r = Ring {
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            entries: at(off.desc).cast(),
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
            _map: map,
            _t: PhantomData,
        };
        r.cached_prod = r.prod().load(Ordering::Acquire);
        r.cached_cons = r.cons().load(Ordering::Acquire);
        Ok(r)
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: points into our live mapping, at a u32 the kernel only accesses atomically.
        unsafe { self.producer.as_ref() }
    }

    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as for `prod`.
        unsafe { self.consumer.as_ref() }
    }

    /// True when the kernel asks to be woken by a syscall for this ring (`need_wakeup`).
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `prod`.
        let flags = unsafe { self.flags.as_ref() };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, idx: u32) -> *mut T {
        // SAFETY: idx & mask < size, so the entry lies inside the mapped array.
        unsafe { self.entries.as_ptr().add((idx & self.mask) as usize) }
    }

    // ---------------------------------------------------------------- producer side (fill, tx)

    /// How many entries can be produced now (up to `want`; reads the kernel's index only when the
    /// cached view has fewer).
    pub fn free(&mut self, want: u32) -> u32 {
        let free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if free >= want {
            return want;
        }
        self.cached_cons = self.cons().load(Ordering::Acquire);
        (self.size - self.cached_prod.wrapping_sub(self.cached_cons)).min(want)
    }

    /// Writes entry `i` of the batch being produced (`i` < what `free` granted).
    pub fn write(&mut self, i: u32, v: T) {
        let p = self.slot(self.cached_prod.wrapping_add(i));
        // SAFETY: the slot is inside the ring and owned by the producer until `submit`.
        unsafe { p.write(v) };
    }

    /// Publishes `n` written entries to the kernel.
    pub fn submit(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.prod().store(self.cached_prod, Ordering::Release);
    }

    /// Entries produced that the kernel has not consumed yet.
    pub fn pending(&self) -> u32 {
        self.cached_prod
            .wrapping_sub(self.cons().load(Ordering::Acquire))
    }

    // ---------------------------------------------------------------- consumer side (rx, completion)

    /// How many entries are ready to consume (up to `want`).
    pub fn ready(&mut self, want: u32) -> u32 {
        let avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail >= want {
            return want;
        }
        self.cached_prod = self.prod().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons).min(want)
    }

    /// Reads entry `i` of the ready batch (`i` < what `ready` granted).
    pub fn read(&self, i: u32) -> T {
        let p = self.slot(self.cached_cons.wrapping_add(i));
        // SAFETY: the slot is inside the ring and was published by the kernel (acquire above).
        unsafe { p.read() }
    }

    /// Hands `n` consumed entries back to the kernel.
    pub fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.cons().store(self.cached_cons, Ordering::Release);
    }
}
