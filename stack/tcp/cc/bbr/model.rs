//! A packet-level model of one bulk flow over a single bottleneck, for the congestion-control
//! tests: FIFO bottleneck of `rate` bytes/s with a tail-drop buffer, fixed base RTT, optional
//! random loss, one ACK per segment. The sender obeys `window()` and paces at `pacing_rate()`
//! (when the algorithm gives one); delivery-rate samples follow
//! draft-cheng-iccrg-delivery-rate-estimation, as the engine's estimator will; a lost segment
//! is detected when a later one is acknowledged (RACK without reordering) and reported as
//! `lost_bytes` on that ACK, starting a recovery episode as the engine does. Lost data is not
//! retransmitted: the flow always has new data, and the model is about the sending rate.

use std::collections::VecDeque;
use std::time::Duration;

use crate::stack::tcp::cc::{AckSample, CongestionControl};
use crate::stack::tcp::time::Instant;

/// The bottleneck path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Path {
    /// Bottleneck rate, bytes per second.
    pub rate: u64,
    /// Two-way propagation delay.
    pub rtt: Duration,
    /// Bottleneck buffer, bytes.
    pub buffer: u64,
    /// Probability of a random drop per segment.
    pub loss: f64,
    pub mss: u32,
    pub seed: u64,
}

impl Path {
    /// The path's bandwidth-delay product, bytes.
    pub fn bdp(&self) -> u64 {
        (u128::from(self.rate) * self.rtt.as_nanos() / 1_000_000_000) as u64
    }
}

#[derive(Clone, Copy, Debug)]
struct Pkt {
    seq: u64,
    size: u64,
    sent: Instant,
    /// None: dropped at the bottleneck.
    ack_at: Option<Instant>,
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    app_limited: bool,
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Totals {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub congestion_events: u64,
    pub rtos: u64,
}

/// The sender, the path, and the state of the flow.
pub(crate) struct Sim<C: CongestionControl> {
    pub path: Path,
    pub cc: C,
    pub now: Instant,
    pub totals: Totals,
    /// Bytes the application still has to send; None: unlimited.
    pub app_budget: Option<u64>,
    flight: VecDeque<Pkt>,
    in_flight: u64,
    next_seq: u64,
    next_send: Instant,
    bottleneck_free: Instant,
    delivered_time: Instant,
    first_sent_time: Instant,
    /// Delivered count up to which samples are app-limited (0: not app-limited).
    app_limited_until: u64,
    round_end: u64,
    in_recovery: bool,
    recover: u64,
    min_rtt: Option<Duration>,
    srtt: Option<Duration>,
    last_send: Instant,
    rng: u64,
}

impl<C: CongestionControl> Sim<C> {
    pub fn new(path: Path, cc: C) -> Self {
        Sim {
            path,
            cc,
            now: Instant::ZERO,
            totals: Totals::default(),
            app_budget: None,
            flight: VecDeque::new(),
            in_flight: 0,
            next_seq: 0,
            next_send: Instant::ZERO,
            bottleneck_free: Instant::ZERO,
            delivered_time: Instant::ZERO,
            first_sent_time: Instant::ZERO,
            app_limited_until: 0,
            round_end: 0,
            in_recovery: false,
            recover: 0,
            min_rtt: None,
            srtt: None,
            last_send: Instant::ZERO,
            rng: path.seed | 1,
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn can_send(&self) -> bool {
        let mss = u64::from(self.path.mss);
        self.in_flight + mss <= self.cc.window() && self.app_budget != Some(0)
    }

    fn send(&mut self) {
        let size = u64::from(self.path.mss);
        let now = self.now;
        if self.in_flight == 0 {
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        // The bottleneck: tail drop when the queue is full, then random loss.
        let busy_until = self.bottleneck_free.max(now);
        let queued = (u128::from(self.path.rate) * busy_until.saturating_since(now).as_nanos()
            / 1_000_000_000) as u64;
        let ack_at = if queued > self.path.buffer || self.random() < self.path.loss {
            None
        } else {
            let service = Duration::from_nanos(size * 1_000_000_000 / self.path.rate.max(1));
            self.bottleneck_free = busy_until + service;
            Some(self.bottleneck_free + self.path.rtt)
        };
        self.flight.push_back(Pkt {
            seq: self.next_seq,
            size,
            sent: now,
            ack_at,
            delivered: self.totals.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            app_limited: self.app_limited_until != 0,
        });
        self.next_seq += 1;
        self.in_flight += size;
        self.totals.sent += size;
        if let Some(b) = &mut self.app_budget {
            *b = b.saturating_sub(size);
            if *b == 0 {
                // Nothing more to send: what follows is app-limited until it is delivered.
                self.app_limited_until = (self.totals.delivered + self.in_flight).max(1);
            }
        }
        self.last_send = now;
        self.cc.on_sent(now, size, self.in_flight);
        if let Some(rate) = self.cc.pacing_rate() {
            let gap = Duration::from_nanos(
                (u128::from(size) * 1_000_000_000 / u128::from(rate.max(1)))
                    .min(u128::from(u64::MAX)) as u64,
            );
            self.next_send = self.next_send.max(now) + gap;
        }
    }

    /// Processes the ACK for the first segment that was not dropped (and detects the drops
    /// before it). Calls `observe` after the algorithm saw the ACK.
    fn ack(&mut self, observe: &mut impl FnMut(&Self, &AckSample)) {
        let now = self.now;
        let mut lost = 0;
        while self.flight.front().is_some_and(|p| p.ack_at.is_none()) {
            let p = self.flight.pop_front().expect("front exists");
            lost += p.size;
            self.in_flight -= p.size;
        }
        let prior_in_flight = self.in_flight + lost;
        let p = self.flight.pop_front().expect("an ACK is due");
        self.in_flight -= p.size;
        self.totals.lost += lost;
        self.totals.delivered += p.size;
        self.delivered_time = now;
        if self.app_limited_until != 0 && self.totals.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        let rtt = now.saturating_since(p.sent);
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        self.srtt = Some(self.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
        // Delivery rate over max(send interval, ack interval), discarded when shorter than
        // min_rtt (draft-cheng-iccrg-delivery-rate-estimation).
        let send_elapsed = p.sent.saturating_since(p.first_sent_time);
        let ack_elapsed = now.saturating_since(p.delivered_time);
        self.first_sent_time = p.sent;
        let interval = send_elapsed.max(ack_elapsed);
        let delivery_rate = (interval >= self.min_rtt.unwrap_or_default() && !interval.is_zero())
            .then(|| {
                ((u128::from(self.totals.delivered - p.delivered) * 1_000_000_000)
                    / interval.as_nanos()) as u64
            });
        let round_start = p.seq >= self.round_end;
        if round_start {
            self.round_end = self.next_seq;
        }
        if lost > 0 && !self.in_recovery {
            self.in_recovery = true;
            self.recover = self.next_seq;
            self.totals.congestion_events += 1;
            self.cc
                .on_congestion_event(now, prior_in_flight, self.path.mss);
        }
        let in_recovery = self.in_recovery;
        if self.in_recovery && p.seq >= self.recover {
            self.in_recovery = false;
            self.cc.on_recovery_end(now);
        }
        let sample = AckSample {
            now,
            acked_bytes: p.size,
            rtt: Some(rtt),
            srtt: self.srtt.unwrap_or(rtt),
            min_rtt: self.min_rtt.unwrap_or(rtt),
            prior_in_flight,
            in_flight: self.in_flight,
            delivered: self.totals.delivered,
            delivery_rate,
            app_limited: p.app_limited,
            round_start,
            in_recovery,
            mss: self.path.mss,
            lost_bytes: lost,
            prior_delivered: p.delivered,
            rate_delivered: self.totals.delivered - p.delivered,
            ..AckSample::default()
        };
        self.cc.on_ack(&sample);
        observe(self, &sample);
    }

    /// Runs the flow until `end`, calling `observe` after every ACK.
    pub fn run_until(&mut self, end: Instant, mut observe: impl FnMut(&Self, &AckSample)) {
        while self.now < end {
            if self.can_send() && self.now >= self.next_send {
                self.send();
                continue;
            }
            let ack_at = self.flight.iter().find_map(|p| p.ack_at);
            let send_at = self.can_send().then_some(self.next_send);
            // Everything in flight was dropped and nothing more may be sent: a timeout.
            let rto_at = (ack_at.is_none() && send_at.is_none() && !self.flight.is_empty())
                .then(|| self.last_send + Duration::from_secs(1));
            let Some(next) = [ack_at, send_at, rto_at].into_iter().flatten().min() else {
                // Idle with nothing to send.
                self.now = end;
                break;
            };
            if next > end {
                self.now = end;
                break;
            }
            self.now = self.now.max(next);
            if Some(next) == ack_at {
                self.ack(&mut observe);
            } else if Some(next) == rto_at && send_at.is_none() {
                self.totals.rtos += 1;
                for p in self.flight.drain(..) {
                    self.totals.lost += p.size;
                }
                self.in_flight = 0;
                self.in_recovery = false;
                self.cc.on_rto(self.now, self.path.mss);
            }
        }
    }
}
