//! SYN cookies: the listener's state for a SYN folded into the ISN of its SYN-ACK (and, with
//! timestamps, into the low bits of the timestamp), so a full SYN queue need not drop anyone.
//!
//! ISN = `t` (5 bits, 64-second counter) · MSS index (3 bits) · 24-bit keyed hash of the 4-tuple,
//! `t` and the peer's ISN. A cookie is good for the current and the previous period (64–128 s).
//! Window scale and SACK ride in the six low bits of our timestamp, as Linux does
//! (`cookie_init_timestamp`): without timestamps the connection gets neither.

use super::segment::{Options, Timestamp};
use super::seq::Seq;
use std::hash::{DefaultHasher, Hash, Hasher};

/// MSS values a cookie can encode; the largest not above the peer's MSS is used.
pub const MSS_TABLE: [u16; 8] = [216, 536, 1200, 1300, 1400, 1440, 1460, 8960];
const TS_MASK: u32 = 0x3f;
const WSCALE_NONE: u32 = 0xf;
const PERIOD_SECS: u64 = 64;

/// The tuple a cookie is bound to (addresses as u32, ports).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Tuple {
    pub local_ip: u32,
    pub local_port: u16,
    pub remote_ip: u32,
    pub remote_port: u16,
}

/// The secret and the codec.
pub struct CookieJar {
    secret: u64,
}

impl CookieJar {
    /// A jar keyed with `secret` (random per core in the engine; fixed in tests).
    pub fn new(secret: u64) -> Self {
        CookieJar { secret }
    }
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieJar")
    }
}

impl CookieJar {
    fn hash(&self, t: &Tuple, period: u32, peer_isn: Seq) -> u32 {
        let mut h = DefaultHasher::new();
        self.secret.hash(&mut h);
        t.hash(&mut h);
        period.hash(&mut h);
        peer_isn.0.hash(&mut h);
        (h.finish() as u32) & 0x00ff_ffff
    }

    /// The ISN for a SYN-ACK answering a SYN with sequence `peer_isn` and MSS `peer_mss`, at
    /// `now_secs`; and the MSS the connection will use.
    pub fn make(&self, t: &Tuple, peer_isn: Seq, peer_mss: u16, now_secs: u64) -> (Seq, u16) {
        let idx = MSS_TABLE.iter().rposition(|&m| m <= peer_mss).unwrap_or(0);
        let period = ((now_secs / PERIOD_SECS) & 0x1f) as u32;
        let isn = (period << 27) | ((idx as u32) << 24) | self.hash(t, period, peer_isn);
        (Seq(isn), MSS_TABLE[idx])
    }

    /// Checks the ACK completing a cookie handshake (`ack` = cookie + 1, `seq` = peer ISN + 1).
    /// Returns the MSS the cookie carried.
    pub fn check(&self, t: &Tuple, seq: Seq, ack: Seq, now_secs: u64) -> Option<u16> {
        let cookie = (ack + u32::MAX).0;
        let period = cookie >> 27;
        let now_p = ((now_secs / PERIOD_SECS) & 0x1f) as u32;
        let age = now_p.wrapping_sub(period) & 0x1f;
        if age > 1 {
            return None;
        }
        let peer_isn = seq + u32::MAX;
        if self.hash(t, period, peer_isn) != cookie & 0x00ff_ffff {
            return None;
        }
        Some(MSS_TABLE[((cookie >> 24) & 7) as usize])
    }
}

/// Our timestamp for a cookie SYN-ACK: `tsval_now` with window scale and SACK in the low bits,
/// never ahead of `tsval_now`.
pub fn encode_timestamp(tsval_now: u32, wscale: Option<u8>, sack: bool) -> u32 {
    let opts = wscale.map_or(WSCALE_NONE, |w| (w as u32).min(14)) | ((sack as u32) << 4);
    let ts = (tsval_now & !TS_MASK) | opts;
    if ts > tsval_now {
        ts.wrapping_sub(TS_MASK + 1)
    } else {
        ts
    }
}

/// The SYN options a cookie ACK's timestamp echo gives back: (window scale, SACK).
pub fn decode_timestamp(tsecr: u32) -> (Option<u8>, bool) {
    let w = tsecr & WSCALE_NONE;
    ((w != WSCALE_NONE).then_some(w as u8), tsecr & 0x10 != 0)
}

/// The options of the original SYN as far as the cookie ACK can restore them.
pub fn restored_options(mss: u16, ts: Option<Timestamp>) -> Options {
    let mut o = Options {
        mss: Some(mss),
        ..Options::default()
    };
    if let Some(ts) = ts {
        let (ws, sack) = decode_timestamp(ts.ecr);
        o.wscale = ws;
        o.sack_permitted = sack;
        o.timestamp = Some(Timestamp {
            val: ts.val,
            ecr: 0,
        });
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple() -> Tuple {
        Tuple {
            local_ip: 0xc612_0002,
            local_port: 80,
            remote_ip: 0xc612_0001,
            remote_port: 40000,
        }
    }

    #[test]
    fn cookie_round_trips_within_two_periods() {
        let jar = CookieJar::new(0x5eed);
        let (isn, mss) = jar.make(&tuple(), Seq(1000), 1460, 10_000);
        assert_eq!(mss, 1460);
        let (seq, ack) = (Seq(1001), isn + 1);
        assert_eq!(jar.check(&tuple(), seq, ack, 10_000), Some(1460));
        assert_eq!(jar.check(&tuple(), seq, ack, 10_000 + 64), Some(1460));
        assert_eq!(jar.check(&tuple(), seq, ack, 10_000 + 200), None, "expired");
        assert_eq!(
            jar.check(&tuple(), Seq(1002), ack, 10_000),
            None,
            "other ISN"
        );
        let mut other = tuple();
        other.remote_port += 1;
        assert_eq!(jar.check(&other, seq, ack, 10_000), None, "other tuple");
        assert_eq!(jar.check(&tuple(), seq, ack + 1, 10_000), None, "other ACK");
    }

    #[test]
    fn mss_rounds_down_to_the_table() {
        let jar = CookieJar::new(0x5eed);
        assert_eq!(jar.make(&tuple(), Seq(1), 1450, 0).1, 1440);
        assert_eq!(jar.make(&tuple(), Seq(1), 100, 0).1, 216);
        assert_eq!(jar.make(&tuple(), Seq(1), 9000, 0).1, 8960);
    }

    #[test]
    fn timestamp_carries_wscale_and_sack() {
        for (ws, sack) in [
            (Some(7), true),
            (None, false),
            (Some(14), false),
            (Some(0), true),
        ] {
            let ts = encode_timestamp(1_000_000, ws, sack);
            assert!(ts <= 1_000_000);
            assert_eq!(decode_timestamp(ts), (ws, sack));
        }
        let o = restored_options(
            1460,
            Some(Timestamp {
                val: 5,
                ecr: encode_timestamp(99, Some(7), true),
            }),
        );
        assert_eq!(
            (o.wscale, o.sack_permitted, o.mss),
            (Some(7), true, Some(1460))
        );
    }
}
