//! An idle stack uses (almost) no CPU: it sleeps on its queue instead of busy-polling.
//!
//! Its own test binary, so nothing else runs in the process while CPU time is measured.
//! Needs root (a network namespace and a TAP); without it the test prints a note and passes.

mod common;

use common::{root_or_skip, Netns};
use longhaul::{App, Event, Io, Stack};
use std::time::Duration;

/// Listens and does nothing else.
struct Listener;

impl App for Listener {
    fn on_start(&mut self, io: &mut Io) {
        io.listen(7).expect("port free");
        io.udp_bind(7).expect("port free");
    }

    fn on_event(&mut self, _io: &mut Io, _event: Event) {}
}

/// User plus system CPU time of the whole process.
fn cpu_time() -> Duration {
    // SAFETY: rusage is plain data; getrusage fills it and the result is checked.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut ru), 0);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[test]
fn idle_stack_uses_under_two_percent_cpu() {
    if !root_or_skip("idle_stack_uses_under_two_percent_cpu") {
        return;
    }
    const WINDOW: Duration = Duration::from_secs(3);
    let ns = Netns::new("idle");
    let cfg = ns.config(1);
    let stack = ns
        .run(move || Stack::start(cfg, |_| Listener))
        .expect("start the stack on the TAP");
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_time();
    std::thread::sleep(WINDOW);
    let used = cpu_time() - before;
    let pct = used.as_secs_f64() / WINDOW.as_secs_f64() * 100.0;
    println!(
        "idle stack: {:.1} ms CPU over {} s ({pct:.2}% of one CPU); {:?}",
        used.as_secs_f64() * 1e3,
        WINDOW.as_secs(),
        stack.total()
    );
    assert!(stack.is_running(), "the core thread ended");
    assert!(
        used < WINDOW / 50,
        "an idle stack used {used:?} CPU in {WINDOW:?} (limit 2%: 60 ms)"
    );
    assert!(stack.stop(), "the core panicked");
}
