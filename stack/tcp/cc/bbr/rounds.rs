//! Packet-timed round trips for BBR.
//!
//! A BBR round ends when a packet sent after the round began is delivered (draft §5.5.1:
//! `packet.delivered >= BBR.next_round_delivered`). With the engine's rate samples
//! (`AckSample::prior_delivered`, the delivered count when the newest delivered segment was
//! sent) that is exact, and a SACKed segment counts: a round lasts one round trip even while a
//! hole holds the cumulative ACK back (at 1% loss on a 250 ms path a hole stays open for two
//! round trips or more, and rounds counted by the cumulative ACK stretched to 0.5-1.7 s).
//!
//! Without rate samples (a caller that gives only `AckSample::round_start`, the engine's
//! cumulative-ACK boundary) the rounds follow those boundaries. BBR also restarts the round at
//! arbitrary moments (the draft's `StartRound()`), which the engine's counter knows nothing
//! about: a restart mid-round then ends at the earliest of the first engine boundary after
//! which all data outstanding at the restart has been delivered, or the second engine
//! boundary (whose round began after the restart, so it surely acknowledges later data).
//! A restart on an ACK that is itself an engine boundary ends at the next boundary, exactly.

/// A round restarted mid-way through an engine round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    /// Delivered count at which everything outstanding at the restart has been delivered.
    target_delivered: u64,
    /// Engine boundaries seen since the restart.
    boundaries: u8,
}

/// Round-trip boundaries that can be restarted at any ACK.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RoundTracker {
    pending: Option<Pending>,
    /// `BBR.next_round_delivered`.
    next_round_delivered: u64,
    /// Rate samples have been seen: rounds are counted by delivery from then on.
    by_delivery: bool,
}

impl RoundTracker {
    /// Called once per ACK: does this ACK start a new round? `engine_boundary` is the engine's
    /// `round_start`, `sample_prior_delivered` the rate sample's `prior_delivered` when the ACK
    /// delivered something, `delivered` the connection's delivered count after this ACK.
    pub(crate) fn on_ack(
        &mut self,
        engine_boundary: bool,
        sample_prior_delivered: Option<u64>,
        delivered: u64,
    ) -> bool {
        if let Some(prior) = sample_prior_delivered {
            self.by_delivery = true;
            self.pending = None;
            if prior >= self.next_round_delivered {
                self.next_round_delivered = delivered;
                return true;
            }
            return false;
        }
        if self.by_delivery {
            return false;
        }
        let Some(p) = &mut self.pending else {
            return engine_boundary;
        };
        if engine_boundary {
            p.boundaries = p.boundaries.saturating_add(1);
        }
        let done = p.boundaries >= 2 || (p.boundaries >= 1 && delivered >= p.target_delivered);
        if done {
            self.pending = None;
        }
        done
    }

    /// Restarts the round now (the draft's `StartRound()`), during an ACK that was
    /// (`at_boundary`) or was not an engine round boundary, with `in_flight` bytes outstanding.
    pub(crate) fn restart(&mut self, at_boundary: bool, delivered: u64, in_flight: u64) {
        self.next_round_delivered = delivered;
        if self.by_delivery {
            return;
        }
        self.pending = (!at_boundary).then_some(Pending {
            target_delivered: delivered.saturating_add(in_flight),
            boundaries: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_engine_boundaries_when_never_restarted() {
        let mut r = RoundTracker::default();
        assert!(!r.on_ack(false, None, 10));
        assert!(r.on_ack(true, None, 20));
        assert!(r.on_ack(true, None, 30));
    }

    #[test]
    fn restart_at_a_boundary_ends_at_the_next_boundary() {
        let mut r = RoundTracker::default();
        r.restart(true, 100, 50);
        assert!(!r.on_ack(false, None, 120));
        assert!(r.on_ack(true, None, 130));
    }

    #[test]
    fn restart_mid_round_needs_a_boundary_and_the_outstanding_data() {
        let mut r = RoundTracker::default();
        r.restart(false, 100, 50);
        // The data outstanding at the restart is delivered, but no boundary yet.
        assert!(!r.on_ack(false, None, 160));
        // A boundary whose round began before the restart, outstanding data not yet delivered.
        let mut s = r;
        assert!(r.on_ack(true, None, 170));
        assert!(!s.on_ack(false, None, 120));
        s.restart(false, 100, 50);
        assert!(!s.on_ack(true, None, 140));
        assert!(!s.on_ack(false, None, 145));
        assert!(s.on_ack(false, None, 150));
        // Losses keep delivered short: the second boundary ends the round anyway.
        s.restart(false, 1_000, 500);
        assert!(!s.on_ack(true, None, 1_100));
        assert!(s.on_ack(true, None, 1_200));
    }

    #[test]
    fn with_rate_samples_a_round_ends_when_data_sent_after_its_start_is_delivered() {
        let mut r = RoundTracker::default();
        // The first sample starts a round (next_round_delivered = 0).
        assert!(r.on_ack(false, Some(0), 10));
        // Segments sent before that (delivered count < 10 at their send) do not end it, even
        // at an engine boundary; one sent after does, SACKed or not.
        assert!(!r.on_ack(true, Some(5), 20));
        assert!(r.on_ack(false, Some(10), 30));
        // A restart moves the mark to the delivered count now.
        r.restart(false, 40, 100);
        assert!(!r.on_ack(false, Some(35), 45));
        assert!(r.on_ack(false, Some(40), 50));
        // Once samples came, an ACK without one (nothing delivered) never starts a round.
        assert!(!r.on_ack(true, None, 50));
    }
}
