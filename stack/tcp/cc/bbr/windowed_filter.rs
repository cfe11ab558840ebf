//! A windowed maximum over a stream of `(time, value)` samples, in O(1) time and space.
//!
//! Kathleen Nichols' scheme (as the BBR draft suggests for `UpdateWindowedMaxFilter`): instead of
//! remembering every sample in the window, keep the best, second-best and third-best values
//! taken from successively later parts of the window. When the best one ages out, the
//! second-best takes over, which is the best of what is left in the window (up to the
//! granularity of the sub-windows, a quarter and a half of the window). `time` is any
//! monotonically non-decreasing counter: BBR uses packet-timed round trips.

/// One remembered sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sample {
    time: u64,
    value: u64,
}

/// Windowed maximum filter. The window length is passed on every update, so a caller can
/// change it (BBR's extra_acked filter is 1 round long in Startup, 10 rounds after).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WindowedMax {
    /// Best, second-best and third-best samples, each from a later part of the window.
    est: [Sample; 3],
}

impl WindowedMax {
    /// Forgets everything and starts over from one sample.
    pub(crate) fn reset(&mut self, time: u64, value: u64) {
        self.est = [Sample { time, value }; 3];
    }

    /// Adds a sample taken at `time` and returns the maximum over the last `window` time units
    /// (samples older than `time - window` are forgotten). Time going backwards is treated as
    /// no time passing.
    pub(crate) fn update(&mut self, time: u64, value: u64, window: u64) -> u64 {
        let time = time.max(self.est[2].time);
        let new = Sample { time, value };
        // A new best, or nothing in the window is recent enough to keep: start over.
        if value >= self.est[0].value || time - self.est[2].time > window {
            self.reset(time, value);
            return value;
        }
        if value >= self.est[1].value {
            self.est[1] = new;
            self.est[2] = new;
        } else if value >= self.est[2].value {
            self.est[2] = new;
        }
        self.age(new, window);
        self.est[0].value
    }

    /// Retires samples that left the window and refreshes the sub-window choices.
    fn age(&mut self, new: Sample, window: u64) {
        let age = new.time - self.est[0].time;
        if age > window {
            // The best sample expired: promote the others, and once more if the promoted one
            // is also out of the window.
            self.est = [self.est[1], self.est[2], new];
            if new.time - self.est[0].time > window {
                self.est = [self.est[1], self.est[2], new];
            }
        } else if self.est[1].time == self.est[0].time && age > window / 4 {
            // A quarter of the window passed without a distinct second choice: take one from
            // the newer part, so an expiry of the best has something recent to fall back on.
            self.est[1] = new;
            self.est[2] = new;
        } else if self.est[2].time == self.est[1].time && age > window / 2 {
            self.est[2] = new;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_maximum_within_the_window() {
        let mut f = WindowedMax::default();
        assert_eq!(f.update(0, 100, 10), 100);
        assert_eq!(f.update(1, 50, 10), 100);
        assert_eq!(f.update(5, 80, 10), 100);
        assert_eq!(f.update(10, 60, 10), 100);
        // The 100 from t=0 leaves the window at t=11; the next best is the 80 from t=5.
        assert_eq!(f.update(11, 10, 10), 80);
        assert_eq!(f.update(16, 10, 10), 60);
        assert_eq!(f.update(40, 7, 10), 7);
    }

    #[test]
    fn new_maximum_replaces_everything_and_window_one_is_one_round() {
        let mut f = WindowedMax::default();
        f.update(0, 10, 1);
        assert_eq!(f.update(0, 30, 1), 30);
        assert_eq!(f.update(1, 20, 1), 30);
        assert_eq!(f.update(2, 5, 1), 20);
        assert_eq!(f.update(3, 4, 1), 5);
        // Time going backwards counts as no time passing.
        assert_eq!(f.update(0, 1, 1), 5);
    }

    #[test]
    fn never_reports_a_sample_older_than_the_window() {
        // On a decreasing stream the exact windowed max is the oldest sample still in the
        // window. The filter may fall back to a somewhat newer (lower) sample once the best
        // expires, but never to one older than the window, and by at most half a window.
        let mut f = WindowedMax::default();
        let window = 8;
        for t in 0..200u64 {
            let got = f.update(t, 1_000 - t, window);
            let exact = 1_000 - t.saturating_sub(window);
            assert!(got <= exact, "t={t}: {got} is older than the window");
            assert!(
                got + window / 2 + 1 >= exact,
                "t={t}: {got} too far below {exact}"
            );
        }
    }
}
