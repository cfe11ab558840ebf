//! One core's engine without a thread or a clock: [`Engine::poll`] runs one iteration of the
//! NAPI-style loop (receive a burst → protocol processing → due timers → transmit and app events →
//! flush → app tick) at a time the caller gives. The core threads run it against the real clock;
//! tests run it with virtual time (packet scripts, deterministic simulations).

use super::api::{App, ConnInfo, Event};
use super::config::Config;
use super::device::TxSide;
use super::io::Io;
use super::stats::CoreStats;
use crate::pmd::{Frame, Queue};
use smoltcp::time::Instant;
use std::time::Duration;

const TICK: Duration = Duration::from_millis(100);

/// What one [`Engine::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Frames received.
    pub frames: usize,
    /// Work is left that does not wait for a frame or a timer.
    pub more: bool,
    /// Frames are left in the transmit batch (the port's ring was full).
    pub backlog: bool,
}

impl Activity {
    /// Anything happened or is pending.
    pub fn busy(&self) -> bool {
        self.frames > 0 || self.more || self.backlog
    }
}

fn instant(t: Duration) -> Instant {
    Instant::from_micros(t.as_micros() as i64)
}

/// A core's engine: its queue, protocol state and app. Time is "since the engine started".
pub struct Engine<Q: Queue, A: App> {
    io: Io,
    queue: Q,
    tx: TxSide<Q::Frame>,
    app: A,
    rx: Vec<Q::Frame>,
    budget: usize,
    last_tick: Duration,
    /// ARP frames seen in the last poll, for the caller to hand to other cores.
    pub(crate) arp_seen: Vec<Vec<u8>>,
    stopping: bool,
}

impl<Q: Queue, A: App> Engine<Q, A> {
    /// Builds the engine and calls the app's `on_start`. `seed` makes ISNs, ports and secrets.
    pub fn new(core: usize, cfg: &Config, mac: [u8; 6], seed: u64, mut queue: Q, app: A) -> Self {
        let mut tx = TxSide::new();
        let io = Io::new(
            core,
            cfg,
            mac,
            seed,
            &mut queue,
            &mut tx,
            instant(Duration::ZERO),
        );
        let budget = cfg.budget;
        let mut e = Engine {
            io,
            queue,
            tx,
            app,
            rx: Vec::with_capacity(2 * budget),
            budget,
            last_tick: Duration::ZERO,
            arp_seen: Vec::new(),
            stopping: false,
        };
        if core == 0 {
            e.io.announce(&mut e.queue, &mut e.tx);
        }
        e.app.on_start(&mut e.io);
        e
    }

    /// One loop iteration at time `now`.
    pub fn poll(&mut self, now: Duration) -> Activity {
        self.io.set_now(instant(now));
        self.queue.rx_burst(&mut self.rx, self.budget);
        let frames = self.rx.len();
        for frame in self.rx.drain(..) {
            if self.io.ingress(frame.data(), &mut self.queue, &mut self.tx) {
                self.arp_seen.push(frame.data().to_vec());
            }
            self.queue.free(frame);
        }
        self.io.expire_timers();
        for _ in 0..8 {
            self.io.service_dirty(&mut self.queue, &mut self.tx);
            if self.io.events.is_empty() {
                break;
            }
            while let Some(ev) = self.io.events.pop_front() {
                self.app.on_event(&mut self.io, ev);
                if let Event::Closed(c) | Event::Error(c, _) = ev {
                    self.io.end_delivered(c);
                }
            }
        }
        if self.io.take_due_wakeup() {
            self.app.on_wakeup(&mut self.io);
            self.io.service_dirty(&mut self.queue, &mut self.tx);
        }
        let flushed = self.tx.flush(&mut self.queue);
        if now.saturating_sub(self.last_tick) >= TICK {
            self.last_tick = now;
            self.app.on_tick(&mut self.io);
        }
        if self.io.has_work() || !flushed {
            self.io.stats.busy_polls += 1;
        }
        Activity {
            frames,
            more: self.io.has_work(),
            backlog: !flushed,
        }
    }

    /// Processes a frame another core received (ARP: every core keeps its own neighbour table).
    pub(crate) fn foreign_frame(&mut self, frame: &[u8], now: Duration) {
        self.io.set_now(instant(now));
        self.io.ingress(frame, &mut self.queue, &mut self.tx);
        self.io.stats.frames_in -= 1;
        self.io.stats.bytes_in -= frame.len() as u64;
    }

    /// The next protocol timer, as time since the start.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.io
            .next_deadline()
            .map(|t| Duration::from_micros(t.total_micros().max(0) as u64))
    }

    /// Starts stopping: listeners go away and the app's `on_stop` runs.
    pub fn begin_stop(&mut self, now: Duration) {
        if !self.stopping {
            self.stopping = true;
            self.io.set_now(instant(now));
            self.io.begin_stop();
            self.app.on_stop(&mut self.io);
        }
    }

    /// True when no connection is left.
    pub fn drained(&self) -> bool {
        self.io.only_listeners_left()
    }

    /// Resets what is still open and flushes (the end of a stop).
    pub fn finish(&mut self) {
        self.io.abort_all(&mut self.queue, &mut self.tx);
        self.tx.flush(&mut self.queue);
    }

    /// Counters, with the transmit side's up to date.
    pub fn stats(&mut self) -> CoreStats {
        self.io.stats.frames_out = self.tx.frames;
        self.io.stats.bytes_out = self.tx.bytes;
        self.io.stats.drop_ring_full = self.tx.ring_full;
        self.io.stats
    }

    /// Every connection of this core with its info at `now` (the control plane's `connections`).
    pub fn connections(&mut self, now: Duration) -> Vec<ConnInfo> {
        self.io.set_now(instant(now));
        self.io.all_info()
    }

    /// The app's handle to the stack (to call the API from a test between polls).
    pub fn io(&mut self) -> &mut Io {
        &mut self.io
    }

    /// The app.
    pub fn app(&mut self) -> &mut A {
        &mut self.app
    }

    /// Both at once.
    pub fn app_io(&mut self) -> (&mut A, &mut Io) {
        (&mut self.app, &mut self.io)
    }

    /// The queue (for idle sleep on its descriptor).
    pub fn queue(&mut self) -> &mut Q {
        &mut self.queue
    }

    /// Pulls frames into the receive burst without processing them (the last look before sleep).
    pub(crate) fn peek_rx(&mut self) -> usize {
        self.queue.rx_burst(&mut self.rx, self.budget)
    }

    pub(crate) fn note_sleep(&mut self) {
        self.io.stats.sleeps += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pmd::mem::{self, MemConfig};

    /// Re-arms its wakeup twice and records when it ran.
    struct Waker(Vec<Duration>);

    impl App for Waker {
        fn on_start(&mut self, io: &mut Io) {
            io.set_wakeup(Some(Duration::from_millis(5)));
        }
        fn on_event(&mut self, _io: &mut Io, _ev: Event) {}
        fn on_wakeup(&mut self, io: &mut Io) {
            self.0.push(io.now());
            if self.0.len() < 2 {
                io.set_wakeup(Some(io.now() + Duration::from_millis(7)));
            }
        }
    }

    #[test]
    fn core_zero_announces_its_address_at_start() {
        use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame};
        let (q, mut peer) = mem::wire(MemConfig::default());
        let mut cfg = Config::new();
        cfg.ip("198.18.0.1/24").unwrap();
        let mac = [2, 0, 0, 0, 0, 1];
        let mut e = Engine::new(0, &cfg, mac, 1, q, Waker(Vec::new()));
        e.poll(Duration::ZERO);
        let mut got = Vec::new();
        peer.rx_burst(&mut got, 8);
        assert_eq!(got.len(), 1, "one announcement");
        let eth = EthernetFrame::new_checked(got[0].data()).unwrap();
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = arp
        else {
            panic!("not an IPv4 ARP: {arp:?}");
        };
        assert_eq!(operation, ArpOperation::Request);
        assert_eq!(source_hardware_addr.0, mac);
        let ip = std::net::Ipv4Addr::new(198, 18, 0, 1);
        assert_eq!((source_protocol_addr, target_protocol_addr), (ip, ip));
    }

    #[test]
    fn app_wakeup_fires_once_at_its_deadline_and_bounds_the_sleep() {
        let (q, _peer) = mem::wire(MemConfig::default());
        let mut cfg = Config::new();
        cfg.ip("198.18.0.1/24").unwrap();
        let mac = [2, 0, 0, 0, 0, 1];
        let mut e = Engine::new(0, &cfg, mac, 1, q, Waker(Vec::new()));
        let ms = Duration::from_millis;
        assert!(e.next_deadline().unwrap() <= ms(5) + Duration::from_micros(1));
        e.poll(ms(4));
        assert!(e.app().0.is_empty(), "woke before its deadline");
        e.poll(ms(5));
        assert_eq!(e.app().0, vec![ms(5)]);
        assert!(e.next_deadline().unwrap() <= ms(12) + Duration::from_micros(1));
        e.poll(ms(6));
        e.poll(ms(20));
        e.poll(ms(40));
        assert_eq!(e.app().0, vec![ms(5), ms(20)], "one call per request");
        e.io().set_wakeup(Some(ms(50)));
        e.io().set_wakeup(None);
        e.poll(ms(60));
        assert_eq!(e.app().0.len(), 2, "a cancelled wakeup does not fire");
    }
}
