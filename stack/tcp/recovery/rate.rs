//! Delivery-rate estimation (draft-cheng-iccrg-delivery-rate-estimation-02, as Linux's
//! `tcp_rate.c` does it).
//!
//! Each transmission takes a [`TxSnapshot`] of the connection's delivery counters; when an ACK
//! delivers (cumulatively or by SACK) a segment, the snapshot of the most recently sent delivered
//! segment gives the interval over which the bytes delivered since then were delivered. The rate
//! is `delivered / max(send_elapsed, ack_elapsed)`: the larger of the two intervals guards
//! against ACK compression (a burst of ACKs) and against a sender burst.
//!
//! A sample taken while the application (not the network) limited sending is marked
//! app-limited: it may under-estimate the path, so a bandwidth model only uses it when it is
//! higher than what it has.

use crate::stack::tcp::time::Instant;
use std::time::Duration;

/// The connection's delivery state when a segment was (re)transmitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxSnapshot {
    /// Bytes delivered (acknowledged or SACKed) on the connection when this was sent.
    pub delivered: u64,
    /// When `delivered` last changed, as of the send.
    pub delivered_at: Instant,
    /// Send time of the segment that began the current sending interval.
    pub first_sent_at: Instant,
    /// Sent while the application limited sending.
    pub app_limited: bool,
    /// Bytes marked lost on the connection when this was sent.
    pub lost: u64,
    /// Bytes in flight just after this was sent (BBR's `tx_in_flight`).
    pub in_flight: u64,
}

/// One ACK's rate sample (the inputs a bandwidth model needs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateSample {
    /// Bytes delivered over `interval`.
    pub delivered: u64,
    /// The sampling interval (the larger of the send and ACK intervals).
    pub interval: Duration,
    /// Delivery rate in bytes per second (`None` when the interval is shorter than min RTT or
    /// nothing was delivered).
    pub rate: Option<u64>,
    /// The sample's newest segment was sent while app-limited.
    pub is_app_limited: bool,
    /// Bytes in flight when the newest delivered segment was sent.
    pub tx_in_flight: u64,
    /// Bytes marked lost between that segment's send and this ACK.
    pub lost: u64,
    /// The newest delivered segment was a retransmission.
    pub is_retrans: bool,
    /// `delivered` counter of the connection when that segment was sent (BBR's round counting).
    pub prior_delivered: u64,
    /// That segment's round-trip time, from its send time (nanosecond resolution, unlike the
    /// millisecond timestamp echo); `None` when it was a retransmission (Karn).
    pub rtt: Option<Duration>,
}

/// The connection's delivery counters (draft §3.1 "C.*").
#[derive(Clone, Copy, Debug, Default)]
pub struct RateSampler {
    /// Bytes delivered so far (cumulatively ACKed plus SACKed).
    pub delivered: u64,
    delivered_at: Instant,
    first_sent_at: Instant,
    /// Non-zero while app-limited: the `delivered` value after which samples are valid again.
    app_limited_until: u64,
    /// Bytes ever marked lost.
    pub lost: u64,
    // The sample being built for the ACK being processed.
    cur: Option<Building>,
}

#[derive(Clone, Copy, Debug)]
struct Building {
    prior_delivered: u64,
    prior_at: Instant,
    send_elapsed: Duration,
    ack_elapsed: Duration,
    app_limited: bool,
    tx_in_flight: u64,
    prior_lost: u64,
    sent_at: Instant,
    end_hint: u32,
    is_retrans: bool,
}

impl RateSampler {
    /// A segment goes out now; `in_flight_before` is what was in flight before it, `in_flight`
    /// after it. Returns the snapshot to store with the segment.
    pub fn on_send(&mut self, now: Instant, in_flight_before: u64, in_flight: u64) -> TxSnapshot {
        //= draft-cheng-iccrg-delivery-rate-estimation#section-3.2
        // With nothing in flight a new sending interval starts: there is no ACK clock to measure.
        if in_flight_before == 0 {
            self.first_sent_at = now;
            self.delivered_at = now;
        }
        TxSnapshot {
            delivered: self.delivered,
            delivered_at: self.delivered_at,
            first_sent_at: self.first_sent_at,
            app_limited: self.app_limited_until != 0,
            lost: self.lost,
            in_flight,
        }
    }

    /// The sender ran out of data with room in the window: samples are app-limited until what
    /// is in flight now has been delivered (draft §3.4).
    pub fn mark_app_limited(&mut self, in_flight: u64) {
        self.app_limited_until = (self.delivered + in_flight).max(1);
    }

    /// Whether sending is app-limited right now.
    pub fn app_limited(&self) -> bool {
        self.app_limited_until != 0
    }

    /// `bytes` were marked lost.
    pub fn on_lost(&mut self, bytes: u64) {
        self.lost += bytes;
    }

    /// A segment of `bytes`, sent at `sent_at` with snapshot `tx`, was delivered now. `end` is
    /// its end sequence number (orders segments sent in the same instant).
    pub fn on_delivered(
        &mut self,
        now: Instant,
        bytes: u64,
        sent_at: Instant,
        end: u32,
        retrans: bool,
        tx: &TxSnapshot,
    ) {
        self.delivered += bytes;
        self.delivered_at = now;
        let newer = match &self.cur {
            None => true,
            Some(b) => {
                sent_at > b.sent_at
                    || (sent_at == b.sent_at && (end.wrapping_sub(b.end_hint) as i32) > 0)
            }
        };
        if newer {
            //= draft-cheng-iccrg-delivery-rate-estimation#section-3.3
            // The most recently sent delivered segment defines the interval.
            self.cur = Some(Building {
                prior_delivered: tx.delivered,
                prior_at: tx.delivered_at,
                send_elapsed: sent_at.saturating_since(tx.first_sent_at),
                ack_elapsed: now.saturating_since(tx.delivered_at),
                app_limited: tx.app_limited,
                tx_in_flight: tx.in_flight,
                prior_lost: tx.lost,
                sent_at,
                end_hint: end,
                is_retrans: retrans,
            });
            self.first_sent_at = sent_at;
        }
    }

    /// Ends the ACK: the sample of what it delivered (`None` when it delivered nothing).
    pub fn take_sample(&mut self, min_rtt: Duration) -> Option<RateSample> {
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        let b = self.cur.take()?;
        let _ = b.prior_at;
        let interval = b.send_elapsed.max(b.ack_elapsed);
        let delivered = self.delivered - b.prior_delivered;
        //= draft-cheng-iccrg-delivery-rate-estimation#section-3.3
        // An interval shorter than the minimum RTT cannot be a whole round trip (a burst of
        // ACKs, or the timer granularity): no rate from it.
        let rate = if interval.is_zero() || interval < min_rtt || delivered == 0 {
            None
        } else {
            Some(
                (delivered as u128 * 1_000_000_000 / interval.as_nanos()).min(u64::MAX as u128)
                    as u64,
            )
        };
        Some(RateSample {
            delivered,
            interval,
            rate,
            is_app_limited: b.app_limited,
            tx_in_flight: b.tx_in_flight,
            lost: self.lost - b.prior_lost.min(self.lost),
            is_retrans: b.is_retrans,
            prior_delivered: b.prior_delivered,
            // `delivered_at` is this ACK's time (set by every `on_delivered`).
            rtt: (!b.is_retrans).then(|| self.delivered_at.saturating_since(b.sent_at)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn steady_flow_measures_the_ack_rate() {
        // 10 segments of 1000 bytes sent 1 ms apart from t=0; each ACKed 100 ms later.
        let mut r = RateSampler::default();
        let mut snaps = Vec::new();
        for i in 0..10u64 {
            let before = i * 1000;
            snaps.push((ms(i), r.on_send(ms(i), before, before + 1000)));
        }
        let mut last = None;
        for (i, (sent, tx)) in snaps.iter().enumerate() {
            r.on_delivered(
                ms(100 + i as u64),
                1000,
                *sent,
                (i as u32 + 1) * 1000,
                false,
                tx,
            );
            last = r.take_sample(Duration::from_millis(50));
        }
        let s = last.unwrap();
        // Delivered 10_000 bytes since the first segment's snapshot (0), over max(9 ms send,
        // 109 ms ack) = 109 ms.
        assert_eq!(s.delivered, 10_000);
        assert_eq!(s.interval, Duration::from_millis(109));
        assert_eq!(s.rate, Some(10_000 * 1000 / 109));
        assert!(!s.is_app_limited);
        assert_eq!(r.delivered, 10_000);
    }

    #[test]
    fn short_interval_gives_no_rate() {
        let mut r = RateSampler::default();
        let tx = r.on_send(ms(0), 0, 1000);
        r.on_delivered(ms(10), 1000, ms(0), 1000, false, &tx);
        let s = r.take_sample(Duration::from_millis(50)).unwrap();
        assert_eq!(s.rate, None);
        assert_eq!(s.delivered, 1000);
        assert!(
            r.take_sample(Duration::ZERO).is_none(),
            "one sample per ACK"
        );
    }

    #[test]
    fn app_limited_marks_until_the_flight_is_delivered() {
        let mut r = RateSampler::default();
        r.mark_app_limited(2000);
        assert!(r.app_limited());
        let tx = r.on_send(ms(0), 0, 1000);
        assert!(tx.app_limited);
        r.on_delivered(ms(100), 1000, ms(0), 1000, false, &tx);
        assert!(r.take_sample(Duration::ZERO).unwrap().is_app_limited);
        assert!(r.app_limited(), "2000 bytes were in flight, 1000 delivered");
        r.on_delivered(ms(101), 1001, ms(0), 2001, false, &tx);
        r.take_sample(Duration::ZERO);
        assert!(!r.app_limited());
    }

    #[test]
    fn lost_bytes_between_send_and_ack() {
        let mut r = RateSampler::default();
        let tx = r.on_send(ms(0), 0, 1000);
        r.on_lost(3000);
        r.on_delivered(ms(100), 1000, ms(0), 1000, false, &tx);
        let s = r.take_sample(Duration::ZERO).unwrap();
        assert_eq!(s.lost, 3000);
        assert_eq!(s.tx_in_flight, 1000);
    }
}
