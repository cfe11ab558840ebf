//! Steady-state operation allocates nothing per packet: a counting global allocator watches the
//! core threads of two stacks while they move at least 100,000 frames of a bulk TCP transfer.

mod support;

use longhaul::pmd::mem::MemConfig;
use longhaul::{App, ConnId, ConnOptions, Error, Event, Io};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the stacks' core threads only (in `on_start`).
    static CORE_THREAD: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) && CORE_THREAD.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) && CORE_THREAD.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn bounded() -> ConnOptions {
    ConnOptions::new().rmem(4 << 20).wmem(4 << 20)
}

/// Reads and discards everything on port 9.
struct Sink {
    buf: Vec<u8>,
    bytes: Arc<AtomicU64>,
}

impl App for Sink {
    fn on_start(&mut self, io: &mut Io) {
        CORE_THREAD.with(|c| c.set(true));
        // Buffers autotune up to their ceiling; a 4 MiB one is reached during the warm-up.
        io.listen_with(9, bounded()).unwrap();
    }
    fn on_event(&mut self, io: &mut Io, ev: Event) {
        if let Event::Readable(c) = ev {
            while let Ok(n) = io.read(c, &mut self.buf) {
                if n == 0 {
                    break;
                }
                self.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Writes forever to the sink.
struct Blast {
    buf: Vec<u8>,
    conn: Option<ConnId>,
}

impl Blast {
    fn fill(&mut self, io: &mut Io) {
        if let Some(c) = self.conn {
            loop {
                match io.write(c, &self.buf) {
                    Ok(_) => {}
                    Err(Error::WouldBlock) => break,
                    Err(e) => panic!("write failed: {e}"),
                }
            }
        }
    }
}

impl App for Blast {
    fn on_start(&mut self, io: &mut Io) {
        CORE_THREAD.with(|c| c.set(true));
        self.conn = Some(io.connect_with(server_addr(9), bounded()).unwrap());
    }
    fn on_event(&mut self, io: &mut Io, ev: Event) {
        if let Event::Connected(_) | Event::Writable(_) = ev {
            self.fill(io);
        }
    }
}

fn frames(s: &longhaul::Stack) -> u64 {
    s.stats_now()
        .iter()
        .map(|c| c.frames_in + c.frames_out)
        .sum()
}

#[test]
fn no_allocation_per_packet_in_steady_state() {
    let bytes = Arc::new(AtomicU64::new(0));
    let b = bytes.clone();
    let (server, client, _, _) = pair(
        MemConfig::default(),
        move |_| Sink {
            buf: vec![0; 64 * 1024],
            bytes: b.clone(),
        },
        |_| Blast {
            buf: vec![7; 16 * 1024],
            conn: None,
        },
    );
    // The counter itself works: an allocation on a flagged thread while armed is seen.
    CORE_THREAD.with(|c| c.set(true));
    ARMED.store(true, Ordering::SeqCst);
    let probe = std::hint::black_box(vec![1u8; 100]);
    ARMED.store(false, Ordering::SeqCst);
    CORE_THREAD.with(|c| c.set(false));
    drop(probe);
    assert_eq!(
        ALLOCS.swap(0, Ordering::SeqCst),
        1,
        "the counting allocator must see a probe"
    );

    // Warm up: let buffers, maps and queues reach their working size.
    assert!(wait_for(Duration::from_secs(30), || bytes
        .load(Ordering::Relaxed)
        > 32 << 20));
    let start = frames(&server) + frames(&client);
    ARMED.store(true, Ordering::SeqCst);
    let moved = wait_for(Duration::from_secs(60), || {
        frames(&server) + frames(&client) - start >= 100_000
    });
    ARMED.store(false, Ordering::SeqCst);
    let total = frames(&server) + frames(&client) - start;
    let allocs = ALLOCS.load(Ordering::SeqCst);
    println!("{total} frames moved with {allocs} allocations on core threads");
    assert!(moved, "only {total} frames moved");
    // Per-core tables (the timer wheel's slab, event queues) may still double once in a long
    // while under scheduling noise; anything per packet would show as thousands here.
    assert!(
        allocs * 10_000 < total,
        "{allocs} allocations while moving {total} frames"
    );
    drop(client);
    drop(server);
}
