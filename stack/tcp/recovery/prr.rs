//! Proportional Rate Reduction (RFC 6937), with the slow-start reduction bound (PRR-SSRB).
//!
//! During fast recovery PRR spreads the window reduction over the round trip: while more is in
//! flight than the new ssthresh, it sends `ssthresh / RecoverFS` of what each ACK delivered;
//! once the flight fell below ssthresh it grows back towards it at most as fast as slow start
//! (what was delivered plus one MSS per ACK). The connection sets its send quota for the ACK to
//! what [`Prr::on_ack`] returns and charges every transmission with [`Prr::on_sent`].

/// PRR state for one recovery episode. All counts are bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prr {
    /// Flight size when recovery started (RFC 6937 `RecoverFS`).
    recover_fs: u64,
    /// Bytes delivered to the receiver since recovery started.
    delivered: u64,
    /// Bytes sent since recovery started.
    out: u64,
}

impl Prr {
    /// Recovery starts with `flight` bytes outstanding (SND.NXT − SND.UNA).
    pub fn start(flight: u64) -> Prr {
        Prr {
            recover_fs: flight.max(1),
            delivered: 0,
            out: 0,
        }
    }

    /// An ACK delivered `delivered` bytes (newly acknowledged or SACKed; one MSS per duplicate
    /// ACK without SACK) and left `pipe` bytes in flight. Returns how many bytes may be sent now.
    pub fn on_ack(&mut self, delivered: u64, pipe: u64, ssthresh: u64, mss: u64) -> u64 {
        self.delivered += delivered;
        //= rfc6937#section-3.1
        let sndcnt = if pipe > ssthresh {
            // Proportional part: CEIL(prr_delivered * ssthresh / RecoverFS) - prr_out.
            let num = self.delivered as u128 * ssthresh as u128;
            let fs = self.recover_fs as u128;
            (num.div_ceil(fs)).min(u64::MAX as u128) as u64
        } else {
            // PRR-SSRB: limit = MAX(prr_delivered - prr_out, DeliveredData) + MSS.
            let limit = self.delivered.saturating_sub(self.out).max(delivered) + mss;
            (ssthresh - pipe).min(limit) + self.out
        };
        let mut sndcnt = sndcnt.saturating_sub(self.out);
        // The first ACK of recovery always lets the fast retransmit go (RFC 6937 §3: "... to
        // force a fast retransmit"; Linux does the same).
        if self.out == 0 {
            sndcnt = sndcnt.max(mss);
        }
        sndcnt
    }

    /// `bytes` were sent during recovery.
    pub fn on_sent(&mut self, bytes: u64) {
        self.out += bytes;
    }

    /// (delivered, sent) since recovery started.
    pub fn counts(&self) -> (u64, u64) {
        (self.delivered, self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportional_while_pipe_above_ssthresh() {
        // RFC 6937 appendix example: 20 segments in flight, ssthresh 10, one lost.
        let mss = 1000;
        let mut p = Prr::start(20 * mss);
        // Entering ACK (third dupack with SACK): 1 segment delivered, pipe 18 segments.
        assert_eq!(
            p.on_ack(mss, 18 * mss, 10 * mss, mss),
            mss,
            "fast retransmit forced"
        );
        p.on_sent(mss);
        // Each further ACK delivers one segment.
        let mut sent = Vec::new();
        for pipe in (10..18).rev() {
            let q = p.on_ack(mss, pipe * mss, 10 * mss, mss);
            if q >= mss {
                p.on_sent(mss);
            }
            sent.push(q >= mss);
        }
        // Half a segment per delivered one: every other ACK once the credit reaches an MSS.
        assert_eq!(sent, [false, false, true, false, true, false, true, false]);
    }

    #[test]
    fn slow_start_bound_below_ssthresh() {
        let mss = 1000;
        let mut p = Prr::start(10 * mss);
        p.on_ack(mss, 9 * mss, 5 * mss, mss);
        p.on_sent(mss);
        // A big ACK leaves the pipe far below ssthresh: at most delivered + 1 MSS, and never
        // more than ssthresh - pipe.
        assert_eq!(p.on_ack(2 * mss, mss, 5 * mss, mss), 3 * mss);
        assert_eq!(p.on_ack(6 * mss, 0, 5 * mss, mss), 5 * mss);
    }

    #[test]
    fn nothing_delivered_nothing_sent() {
        let mut p = Prr::start(0);
        p.on_sent(1000);
        assert_eq!(p.on_ack(0, 5000, 4000, 1000), 0);
        assert_eq!(p.counts(), (0, 1000));
    }
}
