//! Packet-timed round trips for BBR, built on the engine's round boundaries.
//!
//! A BBR round ends when a packet sent after the round began is acknowledged. The engine
//! already reports such boundaries (`AckSample::round_start`: an ACK beyond the highest sequence
//! sent when the previous round began). BBR also restarts the round at arbitrary moments
//! (the draft's `StartRound()`, e.g. when a ProbeBW phase begins), which the engine's counter
//! knows nothing about. A restart mid-round ends at the earliest of: the first engine boundary
//! after which all data outstanding at the restart has been delivered, or the second engine
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
}

impl RoundTracker {
    /// Called once per ACK: does this ACK start a new round? `engine_boundary` is the engine's
    /// `round_start`, `delivered` the connection's delivered count after this ACK.
    pub(crate) fn on_ack(&mut self, engine_boundary: bool, delivered: u64) -> bool {
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
        assert!(!r.on_ack(false, 10));
        assert!(r.on_ack(true, 20));
        assert!(r.on_ack(true, 30));
    }

    #[test]
    fn restart_at_a_boundary_ends_at_the_next_boundary() {
        let mut r = RoundTracker::default();
        r.restart(true, 100, 50);
        assert!(!r.on_ack(false, 120));
        assert!(r.on_ack(true, 130));
    }

    #[test]
    fn restart_mid_round_needs_a_boundary_and_the_outstanding_data() {
        let mut r = RoundTracker::default();
        r.restart(false, 100, 50);
        // The data outstanding at the restart is delivered, but no boundary yet.
        assert!(!r.on_ack(false, 160));
        // A boundary whose round began before the restart, outstanding data not yet delivered.
        let mut s = r;
        assert!(r.on_ack(true, 170));
        assert!(!s.on_ack(false, 120));
        s.restart(false, 100, 50);
        assert!(!s.on_ack(true, 140));
        assert!(!s.on_ack(false, 145));
        assert!(s.on_ack(false, 150));
        // Losses keep delivered short: the second boundary ends the round anyway.
        s.restart(false, 1_000, 500);
        assert!(!s.on_ack(true, 1_100));
        assert!(s.on_ack(true, 1_200));
    }
}
