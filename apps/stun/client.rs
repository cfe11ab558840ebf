//! A sans-IO STUN Binding client (RFC 8489 §6.2.1 over UDP): learns the public address and port a
//! NAT gives our UDP socket and keeps that mapping alive with one request per interval.
//!
//! The caller owns the socket and the clock. Call order, with `now` from one monotonic clock
//! (e.g. the stack's `io.now()`; never going backwards):
//! 1. [`StunClient::poll_transmit`] until `None`, sending each datagram to the address it names;
//! 2. for each datagram received on the socket, [`StunClient::handle_datagram`]; `true` means it
//!    was STUN (RFC 7983 demultiplexing) and the client took it, `false` that it belongs to
//!    whoever shares the socket (QUIC);
//! 3. [`StunClient::poll_event`] until `None`;
//! 4. sleep until [`StunClient::poll_timeout`] or the next datagram, then back to 1.
//!
//! Transactions: the first (discovery) request is retransmitted after RTO, 2·RTO, 4·RTO, … (500 ms
//! doubling) until Rc = 7 requests went out, and the transaction fails Rm·RTO = 16 × 500 ms after
//! the last one: 39.5 s in all, or earlier with [`StunClient::set_transaction_timeout`]. Once an
//! address is known, each keepalive is a single request per interval (default 20 s); a keepalive
//! that gets no answer within Rm·RTO starts a new discovery at once. A failed discovery is retried
//! one interval later. Every request has a fresh random 96-bit transaction ID (ring's system RNG).
//!
//! Sharing a socket with QUIC (the tunnel), per received datagram and after any input:
//! ```text
//! if !stun.handle_datagram(now, &buf[..n]) { /* QUIC's: quinn endpoint.handle(..) */ }
//! while let Some((to, bytes)) = stun.poll_transmit(now) { io.udp_send(udp, bytes, to) }
//! while let Some(ev) = stun.poll_event() { /* MappedAddressChanged → log / stats */ }
//! io.set_wakeup(min(quic_timeout, stun.poll_timeout()))
//! ```
//! QUIC packets have the fixed bit (0x40) set, so their first byte is never 0..=3; a peer that
//! greases that bit (RFC 9287) would also need the 32-bit cookie in bytes 4..8 to be taken for STUN.
//!
//! Work per call is bounded (one datagram parsed, at most one request written); nothing panics on
//! any input.

// A library for the tunnel as well as `longhaul stun`: each uses a part of it.
#![allow(dead_code)]

use super::codec::{self, Class, Message, MessageRepr, TransactionId, Writer, BINDING};
use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

/// Default keepalive interval (the issue's 20 s; NAT UDP mappings commonly last 30 s or more).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(20);
/// RFC 8489 §6.2.1 defaults.
pub const DEFAULT_RTO: Duration = Duration::from_millis(500);
pub const DEFAULT_RC: u32 = 7;
pub const DEFAULT_RM: u32 = 16;
/// SOFTWARE sent in every request.
pub const SOFTWARE: &str = concat!("longhaul ", env!("CARGO_PKG_VERSION"));

/// Something the caller should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StunEvent {
    /// The server reported our address for the first time (`old` is `None`) or a different one.
    MappedAddressChanged {
        old: Option<SocketAddrV4>,
        new: SocketAddrV4,
    },
    /// A transaction ended without a usable answer.
    TransactionFailed(Failure),
}

/// Why a transaction failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer: `requests` sent, the first `elapsed` ago.
    Timeout { requests: u32, elapsed: Duration },
    /// The server sent an error response (e.g. 420 Unknown Attribute, 500 Server Error).
    ErrorResponse { code: u16, reason: String },
    /// A response that cannot be used (what is wrong with it).
    BadResponse(&'static str),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout { requests, elapsed } => write!(
                f,
                "no answer to {requests} request(s) within {:.1} s",
                elapsed.as_secs_f64()
            ),
            Failure::ErrorResponse { code, reason } => {
                write!(f, "error response {code} {reason}")
            }
            Failure::BadResponse(why) => write!(f, "unusable response: {why}"),
        }
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StunStats {
    /// Requests sent, retransmissions included.
    pub requests: u64,
    /// Of which retransmissions.
    pub retransmissions: u64,
    /// Success responses that gave an address.
    pub responses: u64,
    /// Transactions that failed.
    pub failures: u64,
    /// STUN datagrams dropped: malformed, wrong FINGERPRINT, unknown transaction, or a class a
    /// client does not take (requests, indications).
    pub dropped: u64,
    /// Round-trip time of the last transaction answered on its first request (Karn).
    pub last_rtt: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Discovery,
    Keepalive,
}

#[derive(Clone, Copy, Debug)]
struct Transaction {
    id: TransactionId,
    kind: Kind,
    started: Duration,
    /// Requests sent so far.
    sent: u32,
    /// When the next request goes out; `None` once all went.
    next_send: Option<Duration>,
    /// Wait before the retransmission after the next one.
    rto: Duration,
    last_sent: Duration,
    /// The transaction fails at this time.
    deadline: Duration,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// The next transaction starts at this time.
    Idle(Duration),
    Open(Transaction),
}

/// The client. See the module documentation for the call order.
#[derive(Debug)]
pub struct StunClient {
    server: SocketAddrV4,
    interval: Duration,
    rto: Duration,
    rc: u32,
    rm: u32,
    timeout_cap: Option<Duration>,
    phase: Phase,
    next_kind: Kind,
    mapped: Option<SocketAddrV4>,
    events: VecDeque<StunEvent>,
    stats: StunStats,
    request: [u8; 64],
    request_len: usize,
    rng: ring::rand::SystemRandom,
    /// Fallback ID source if the system RNG ever fails (never seen; no panic either way).
    fallback: u64,
}

impl StunClient {
    /// A client of `server` that sends its first request at the first [`Self::poll_transmit`] and
    /// a keepalive every `interval` (at least 100 ms) once it knows its address.
    pub fn new(server: SocketAddrV4, interval: Duration) -> Self {
        StunClient {
            server,
            interval: interval.max(Duration::from_millis(100)),
            rto: DEFAULT_RTO,
            rc: DEFAULT_RC,
            rm: DEFAULT_RM,
            timeout_cap: None,
            phase: Phase::Idle(Duration::ZERO),
            next_kind: Kind::Discovery,
            mapped: None,
            events: VecDeque::new(),
            stats: StunStats::default(),
            request: [0; 64],
            request_len: 0,
            rng: ring::rand::SystemRandom::new(),
            fallback: 0x5EED,
        }
    }

    /// Initial retransmission timeout (RFC 8489: 500 ms by default; more on slow paths).
    pub fn set_rto(&mut self, rto: Duration) -> &mut Self {
        self.rto = rto.max(Duration::from_millis(1));
        self
    }

    /// Rc (requests per discovery, at least 1) and Rm (wait after the last, in RTOs, at least 1).
    pub fn set_retransmissions(&mut self, rc: u32, rm: u32) -> &mut Self {
        self.rc = rc.clamp(1, 16);
        self.rm = rm.clamp(1, 1024);
        self
    }

    /// Gives up on a transaction this long after its first request at the latest (the RFC's
    /// schedule takes 39.5 s; `None` keeps it).
    pub fn set_transaction_timeout(&mut self, cap: Option<Duration>) -> &mut Self {
        self.timeout_cap = cap;
        self
    }

    /// How long a discovery transaction lasts without an answer: the RFC's schedule
    /// (RTO·(2^(Rc−1) − 1) after the first request the last goes, then Rm·RTO), or the cap.
    pub fn transaction_timeout(&self) -> Duration {
        let rfc = self.rto * ((1u32 << (self.rc - 1)) - 1) + self.rto * self.rm;
        self.timeout_cap.map_or(rfc, |c| c.min(rfc))
    }

    /// The server.
    pub fn server(&self) -> SocketAddrV4 {
        self.server
    }

    /// The public address and port the server saw last, if any.
    pub fn mapped(&self) -> Option<SocketAddrV4> {
        self.mapped
    }

    /// Counters.
    pub fn stats(&self) -> StunStats {
        self.stats
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<StunEvent> {
        self.events.pop_front()
    }

    /// When to call [`Self::poll_transmit`] (or [`Self::handle_timeout`]) next at the latest.
    pub fn poll_timeout(&self) -> Option<Duration> {
        Some(match self.phase {
            Phase::Idle(at) => at,
            Phase::Open(t) => t.next_send.map_or(t.deadline, |s| s.min(t.deadline)),
        })
    }

    /// Advances the timers: starts a due transaction, fails an expired one. Idempotent.
    pub fn handle_timeout(&mut self, now: Duration) {
        match self.phase {
            Phase::Idle(at) if now >= at => self.start(now),
            Phase::Open(t) if now >= t.deadline => {
                self.fail(
                    now,
                    Failure::Timeout {
                        requests: t.sent,
                        elapsed: now.saturating_sub(t.started),
                    },
                );
                // A lost keepalive may mean a lost mapping: rediscover at once.
                if t.kind == Kind::Keepalive {
                    self.start(now);
                }
            }
            _ => {}
        }
    }

    /// The next datagram to send and where, if one is due at `now` (runs the timers first).
    pub fn poll_transmit(&mut self, now: Duration) -> Option<(SocketAddrV4, &[u8])> {
        self.handle_timeout(now);
        let Phase::Open(t) = &mut self.phase else {
            return None;
        };
        match t.next_send {
            Some(at) if at <= now => {}
            _ => return None,
        }
        //= rfc8489#section-6.2.1: retransmit after RTO, doubling, until Rc requests were sent; the
        //= transaction fails Rm·RTO after the last one. Retransmissions reuse the transaction ID.
        t.sent += 1;
        t.last_sent = now;
        if t.sent > 1 {
            self.stats.retransmissions += 1;
        }
        self.stats.requests += 1;
        let last = t.kind == Kind::Keepalive || t.sent >= self.rc;
        if last {
            t.next_send = None;
            let cap = self.timeout_cap.map_or(t.deadline, |c| t.started + c);
            t.deadline = (now + self.rto * self.rm).min(cap);
        } else {
            t.next_send = Some(now + t.rto);
            t.rto = t.rto.saturating_mul(2);
        }
        Some((self.server, &self.request[..self.request_len]))
    }

    /// Takes a datagram received on the shared socket. Returns `false` (and does nothing) when it
    /// is not STUN by RFC 7983's test, so the caller passes it on; `true` when it was STUN, whether
    /// it answered our transaction or was dropped (counted in [`StunStats::dropped`]).
    pub fn handle_datagram(&mut self, now: Duration, datagram: &[u8]) -> bool {
        if !codec::is_stun(datagram) {
            return false;
        }
        let Phase::Open(t) = self.phase else {
            self.stats.dropped += 1;
            return true;
        };
        let repr = match Message::new_checked(datagram).and_then(|m| MessageRepr::parse(&m)) {
            Ok(r) => r,
            Err(_) => {
                self.stats.dropped += 1;
                return true;
            }
        };
        //= rfc8489#section-6.3: a response is matched to its request by the transaction ID;
        //= indications and requests are not answers.
        if repr.transaction_id != t.id
            || repr.method != BINDING
            || !matches!(repr.class, Class::Success | Class::Error)
        {
            self.stats.dropped += 1;
            return true;
        }
        self.on_response(now, t, &repr);
        true
    }

    fn on_response(&mut self, now: Duration, t: Transaction, r: &MessageRepr<'_>) {
        //= rfc8489#section-6.3.3 / 6.3.4: unknown comprehension-required attributes in a
        //= response, or an error response without ERROR-CODE: the transaction has failed.
        if !r.unknown_required.is_empty() {
            return self.fail_until_next(
                now,
                t,
                Failure::BadResponse("unknown comprehension-required attributes"),
            );
        }
        if r.class == Class::Error {
            let failure = match r.error_code {
                Some(e) => Failure::ErrorResponse {
                    code: e.code,
                    reason: e.reason.chars().take(128).collect(),
                },
                None => Failure::BadResponse("error response without ERROR-CODE"),
            };
            return self.fail_until_next(now, t, failure);
        }
        let addr = match r.reflexive_address() {
            Some(SocketAddr::V4(a)) => a,
            Some(SocketAddr::V6(_)) => {
                return self.fail_until_next(
                    now,
                    t,
                    Failure::BadResponse("an IPv6 address for an IPv4 socket"),
                )
            }
            None => {
                return self.fail_until_next(
                    now,
                    t,
                    Failure::BadResponse("no (XOR-)MAPPED-ADDRESS"),
                )
            }
        };
        self.stats.responses += 1;
        if t.sent == 1 {
            self.stats.last_rtt = Some(now.saturating_sub(t.last_sent));
        }
        if self.mapped != Some(addr) {
            self.events.push_back(StunEvent::MappedAddressChanged {
                old: self.mapped,
                new: addr,
            });
            self.mapped = Some(addr);
        }
        self.next_kind = Kind::Keepalive;
        self.phase = Phase::Idle((t.started + self.interval).max(now));
    }

    /// Ends a transaction that got an answer we cannot use; the next one starts an interval after
    /// this one did (no tight loop against a server that always refuses).
    fn fail_until_next(&mut self, now: Duration, t: Transaction, failure: Failure) {
        self.fail(now, failure);
        self.phase = Phase::Idle((t.started + self.interval).max(now));
    }

    fn fail(&mut self, now: Duration, failure: Failure) {
        self.stats.failures += 1;
        self.events.push_back(StunEvent::TransactionFailed(failure));
        self.next_kind = Kind::Discovery;
        self.phase = Phase::Idle(now + self.interval);
    }

    /// Opens a transaction of `next_kind` now: a fresh ID and the request bytes.
    fn start(&mut self, now: Duration) {
        let id = self.new_id();
        self.request_len = encode_request(&mut self.request, id);
        let kind = self.next_kind;
        self.phase = Phase::Open(Transaction {
            id,
            kind,
            started: now,
            sent: 0,
            next_send: Some(now),
            rto: self.rto,
            last_sent: now,
            deadline: now + self.transaction_timeout(),
        });
    }

    fn new_id(&mut self) -> TransactionId {
        let mut id = [0u8; 12];
        if ring::rand::SecureRandom::fill(&self.rng, &mut id).is_err() {
            // Not expected on Linux; IDs must still differ between transactions.
            for chunk in id.chunks_mut(8) {
                self.fallback = splitmix64(self.fallback);
                chunk.copy_from_slice(&self.fallback.to_le_bytes()[..chunk.len()]);
            }
        }
        TransactionId(id)
    }
}

/// A Binding request with SOFTWARE and FINGERPRINT (so that a server and any demultiplexer can
/// tell it from other traffic on the port). Returns its length.
fn encode_request(buf: &mut [u8; 64], id: TransactionId) -> usize {
    let build = |buf: &mut [u8]| -> Result<usize, codec::Error> {
        let mut w = Writer::new(buf, Class::Request, BINDING, id)?;
        w.software(SOFTWARE)?;
        w.fingerprint()?;
        Ok(w.finish())
    };
    // Cannot fail: the request always fits (checked at compile time below).
    build(buf).unwrap_or(0)
}

// Header, SOFTWARE (header, value, padding) and FINGERPRINT fit the request buffer.
const _: () = assert!(codec::HEADER_LEN + 4 + SOFTWARE.len() + 3 + 8 <= 64);

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
