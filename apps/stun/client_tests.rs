//! The sans-IO client at virtual times: the RFC 8489 retransmission schedule, keepalives,
//! address changes, failures, and demultiplexing against a fake server built with the codec.

use super::client::*;
use super::codec::*;
use proptest::prelude::*;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

const SERVER: &str = "198.19.0.2:3478";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn client() -> StunClient {
    StunClient::new(SERVER.parse().unwrap(), Duration::from_secs(20))
}

/// Polls one request at `now`: checks it goes to the server and is a well-formed Binding request
/// with SOFTWARE and a correct FINGERPRINT; returns its transaction ID.
fn request_at(c: &mut StunClient, now: Duration) -> Option<TransactionId> {
    let (to, data) = c.poll_transmit(now)?;
    assert_eq!(to, SERVER.parse::<SocketAddrV4>().unwrap());
    let m = Message::new_checked(data).expect("a valid message");
    let r = MessageRepr::parse(&m).expect("parses");
    assert_eq!((r.class, r.method), (Class::Request, BINDING));
    assert_eq!(r.software, Some(SOFTWARE));
    assert!(r.has_fingerprint);
    assert!(is_stun(data));
    Some(r.transaction_id)
}

fn success(id: TransactionId, mapped: &str) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let mut w = Writer::new(&mut buf, Class::Success, BINDING, id).unwrap();
    w.software("fake server").unwrap();
    w.xor_mapped_address(mapped.parse().unwrap()).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    buf[..n].to_vec()
}

fn events(c: &mut StunClient) -> Vec<StunEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

#[test]
fn discovery_follows_the_rfc_schedule_and_fails_at_39_5_s() {
    let mut c = client();
    assert_eq!(c.poll_timeout(), Some(Duration::ZERO));
    let first = request_at(&mut c, ms(0)).unwrap();
    assert!(c.poll_transmit(ms(0)).is_none(), "one request at a time");
    // RTO 500 ms doubling: 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; Rc = 7.
    for at in [500, 1500, 3500, 7500, 15_500, 31_500] {
        assert_eq!(c.poll_timeout(), Some(ms(at)));
        assert!(c.poll_transmit(ms(at - 1)).is_none(), "early at {at}");
        assert_eq!(
            request_at(&mut c, ms(at)),
            Some(first),
            "same ID when retransmitted"
        );
    }
    // Rm × RTO = 8 s after the last: 39.5 s.
    assert_eq!(c.poll_timeout(), Some(ms(39_500)));
    assert!(c.poll_transmit(ms(39_499)).is_none());
    assert!(events(&mut c).is_empty());
    assert!(c.poll_transmit(ms(39_500)).is_none());
    assert_eq!(
        events(&mut c),
        vec![StunEvent::TransactionFailed(Failure::Timeout {
            requests: 7,
            elapsed: ms(39_500)
        })]
    );
    assert_eq!(c.transaction_timeout(), ms(39_500));
    let st = c.stats();
    assert_eq!((st.requests, st.retransmissions, st.failures), (7, 6, 1));
    // Retried one interval later with a new transaction ID.
    assert_eq!(c.poll_timeout(), Some(ms(59_500)));
    let again = request_at(&mut c, ms(59_500)).unwrap();
    assert_ne!(again, first);
}

#[test]
fn the_transaction_timeout_caps_the_schedule() {
    let mut c = client();
    c.set_transaction_timeout(Some(ms(3000)));
    assert_eq!(c.transaction_timeout(), ms(3000));
    for at in [0, 500, 1500] {
        assert!(request_at(&mut c, ms(at)).is_some());
    }
    assert_eq!(
        c.poll_timeout(),
        Some(ms(3000)),
        "not the 3.5 s retransmission"
    );
    c.handle_timeout(ms(3000));
    assert_eq!(
        events(&mut c),
        vec![StunEvent::TransactionFailed(Failure::Timeout {
            requests: 3,
            elapsed: ms(3000)
        })]
    );
}

#[test]
fn a_response_sets_the_mapped_address_and_starts_keepalives() {
    let mut c = client();
    let id = request_at(&mut c, ms(0)).unwrap();
    assert!(c.handle_datagram(ms(40), &success(id, "198.19.0.1:40000")));
    let mapped: SocketAddrV4 = "198.19.0.1:40000".parse().unwrap();
    assert_eq!(c.mapped(), Some(mapped));
    assert_eq!(
        events(&mut c),
        vec![StunEvent::MappedAddressChanged {
            old: None,
            new: mapped
        }]
    );
    assert_eq!(c.stats().last_rtt, Some(ms(40)));
    // The next request one interval after the first, and only one: a keepalive.
    assert!(
        c.poll_transmit(ms(500)).is_none(),
        "no retransmission after an answer"
    );
    assert_eq!(c.poll_timeout(), Some(ms(20_000)));
    let k1 = request_at(&mut c, ms(20_000)).unwrap();
    assert_ne!(k1, id);
    // The same address again: no event.
    assert!(c.handle_datagram(ms(20_030), &success(k1, "198.19.0.1:40000")));
    assert!(events(&mut c).is_empty());
    // The NAT rebinds: the next keepalive learns the new port.
    let k2 = request_at(&mut c, ms(40_000)).unwrap();
    assert!(c.handle_datagram(ms(40_030), &success(k2, "198.19.0.1:40001")));
    assert_eq!(
        events(&mut c),
        vec![StunEvent::MappedAddressChanged {
            old: Some(mapped),
            new: "198.19.0.1:40001".parse().unwrap()
        }]
    );
    assert_eq!(c.stats().responses, 3);
}

#[test]
fn a_lost_keepalive_starts_a_discovery_at_once() {
    let mut c = client();
    let id = request_at(&mut c, ms(0)).unwrap();
    c.handle_datagram(ms(10), &success(id, "198.19.0.1:40000"));
    events(&mut c);
    let k = request_at(&mut c, ms(20_000)).unwrap();
    // A keepalive is not retransmitted; after Rm × RTO it has failed.
    assert_eq!(c.poll_timeout(), Some(ms(28_000)));
    let d = request_at(&mut c, ms(28_000)).expect("discovery right away");
    assert_ne!(d, k);
    assert_eq!(
        events(&mut c),
        vec![StunEvent::TransactionFailed(Failure::Timeout {
            requests: 1,
            elapsed: ms(8000)
        })]
    );
    // The discovery retransmits again.
    assert_eq!(request_at(&mut c, ms(28_500)), Some(d));
    // A late answer to the old keepalive is dropped (still STUN, so not handed on).
    assert!(c.handle_datagram(ms(28_600), &success(k, "198.19.0.1:40000")));
    assert_eq!(c.stats().dropped, 1);
    assert!(c.handle_datagram(ms(28_700), &success(d, "198.19.0.1:40000")));
    assert_eq!(
        c.stats().last_rtt,
        Some(ms(10)),
        "Karn: no RTT from a retransmitted one"
    );
    assert!(events(&mut c).is_empty(), "same address as before");
}

#[test]
fn mapped_address_is_used_without_xor_mapped_address() {
    let mut c = client();
    let id = request_at(&mut c, ms(0)).unwrap();
    let mut buf = [0u8; 64];
    let mut w = Writer::new(&mut buf, Class::Success, BINDING, id).unwrap();
    w.mapped_address("203.0.113.9:5000".parse().unwrap())
        .unwrap();
    let n = w.finish();
    assert!(c.handle_datagram(ms(5), &buf[..n]));
    assert_eq!(c.mapped(), Some("203.0.113.9:5000".parse().unwrap()));
}

#[test]
fn error_response_fails_the_transaction_and_retries_an_interval_later() {
    let mut c = client();
    let id = request_at(&mut c, ms(0)).unwrap();
    let mut buf = [0u8; 64];
    let mut w = Writer::new(&mut buf, Class::Error, BINDING, id).unwrap();
    w.error_code(ErrorCode {
        code: 500,
        reason: "Server Error",
    })
    .unwrap();
    let n = w.finish();
    assert!(c.handle_datagram(ms(5), &buf[..n]));
    assert_eq!(
        events(&mut c),
        vec![StunEvent::TransactionFailed(Failure::ErrorResponse {
            code: 500,
            reason: "Server Error".into()
        })]
    );
    assert!(c.poll_transmit(ms(500)).is_none(), "no retransmission");
    assert_eq!(c.poll_timeout(), Some(ms(20_000)));
    assert_eq!(c.mapped(), None);
}

#[test]
fn unknown_required_attribute_in_a_success_fails_the_transaction() {
    let mut c = client();
    let id = request_at(&mut c, ms(0)).unwrap();
    let mut buf = [0u8; 64];
    let mut w = Writer::new(&mut buf, Class::Success, BINDING, id).unwrap();
    w.xor_mapped_address("198.19.0.1:1".parse().unwrap())
        .unwrap();
    w.attribute(0x7ABC, &[0; 4]).unwrap();
    let n = w.finish();
    assert!(c.handle_datagram(ms(5), &buf[..n]));
    assert_eq!(
        c.mapped(),
        None,
        "RFC 8489 §6.3.3: the response is not used"
    );
    assert!(matches!(
        events(&mut c)[..],
        [StunEvent::TransactionFailed(Failure::BadResponse(_))]
    ));
    // An unknown comprehension-optional attribute is fine.
    let id = request_at(&mut c, ms(20_000)).unwrap();
    let mut w = Writer::new(&mut buf, Class::Success, BINDING, id).unwrap();
    w.xor_mapped_address("198.19.0.1:1".parse().unwrap())
        .unwrap();
    w.attribute(0xC057, &[1, 2]).unwrap();
    let n = w.finish();
    assert!(c.handle_datagram(ms(20_005), &buf[..n]));
    assert_eq!(c.mapped(), Some("198.19.0.1:1".parse().unwrap()));
}

#[test]
fn ipv6_mapped_address_is_refused() {
    let mut c = client();
    let id = request_at(&mut c, ms(0)).unwrap();
    assert!(c.handle_datagram(ms(5), &success(id, "[2001:db8::1]:9")));
    assert_eq!(c.mapped(), None);
    assert!(matches!(
        events(&mut c)[..],
        [StunEvent::TransactionFailed(Failure::BadResponse(_))]
    ));
}

#[test]
fn demultiplexing_and_dropping() {
    let mut c = client();
    let id = request_at(&mut c, ms(0)).unwrap();
    // QUIC (long header 0xc0.., short header 0x40..) and short junk are not STUN: handed back.
    let mut quic = success(id, "198.19.0.1:40000");
    quic[0] = 0xc0;
    assert!(!c.handle_datagram(ms(1), &quic));
    quic[0] = 0x41;
    assert!(!c.handle_datagram(ms(1), &quic));
    assert!(!c.handle_datagram(ms(1), &[0, 1, 0, 0]));
    assert_eq!(c.stats().dropped, 0);
    // STUN we cannot use: taken and dropped, and the transaction goes on.
    let mut bad_fp = success(id, "198.19.0.1:40000");
    let last = bad_fp.len() - 1;
    bad_fp[last] ^= 0xff;
    assert!(c.handle_datagram(ms(2), &bad_fp));
    assert!(c.handle_datagram(ms(2), &success(TransactionId([0; 12]), "198.19.0.1:1")));
    let mut truncated = success(id, "198.19.0.1:40000");
    truncated.truncate(24);
    assert!(c.handle_datagram(ms(2), &truncated));
    let mut request = [0u8; 64];
    let n = Writer::new(&mut request, Class::Request, BINDING, id)
        .unwrap()
        .finish();
    assert!(
        c.handle_datagram(ms(2), &request[..n]),
        "a request is not an answer"
    );
    assert_eq!(c.stats().dropped, 4);
    assert_eq!(c.mapped(), None);
    assert_eq!(
        request_at(&mut c, ms(500)),
        Some(id),
        "still retransmitting"
    );
}

#[test]
fn transaction_ids_are_random() {
    let mut seen = std::collections::HashSet::new();
    let mut c = StunClient::new(SERVER.parse().unwrap(), ms(100));
    c.set_transaction_timeout(Some(ms(10)));
    let mut now = Duration::ZERO;
    for _ in 0..2000 {
        if let Some(id) = request_at(&mut c, now) {
            assert!(seen.insert(id), "repeated transaction ID");
        }
        now += ms(5);
    }
    assert!(seen.len() >= 50, "{} transactions", seen.len());
}

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Junk(Vec<u8>),
    Answer(bool, [u8; 4], u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..50_000).prop_map(Op::Advance),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Op::Junk),
        (any::<bool>(), any::<[u8; 4]>(), any::<u16>()).prop_map(|(r, a, p)| Op::Answer(r, a, p)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary timing, junk and answers: no panic, a deadline always set, the retransmission
    /// limit kept, and the mapped address always the last one answered.
    #[test]
    fn client_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let mut c = client();
        let mut now = Duration::ZERO;
        let mut last_id = None;
        let mut last_answer = None;
        for o in ops {
            match o {
                Op::Advance(n) => now += ms(n),
                Op::Junk(mut b) => {
                    if b.len() >= 8 {
                        b[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                    }
                    c.handle_datagram(now, &b);
                }
                Op::Answer(right_id, ip, port) => {
                    let id = if right_id { last_id.unwrap_or_default() } else { TransactionId([0xEE; 12]) };
                    let a = SocketAddr::from((ip, port));
                    let before = c.stats().responses;
                    let took = c.handle_datagram(now, &{
                        let mut buf = [0u8; 64];
                        let mut w = Writer::new(&mut buf, Class::Success, BINDING, id).unwrap();
                        w.xor_mapped_address(a).unwrap();
                        let n = w.finish();
                        buf[..n].to_vec()
                    });
                    prop_assert!(took);
                    if c.stats().responses > before {
                        last_answer = Some(SocketAddrV4::new(ip.into(), port));
                    }
                }
            }
            while let Some((_, d)) = c.poll_transmit(now) {
                let m = Message::new_checked(d).unwrap();
                last_id = Some(m.transaction_id());
            }
            while c.poll_event().is_some() {}
            prop_assert!(c.poll_timeout().is_some_and(|t| t > now), "a deadline in the future");
            let st = c.stats();
            prop_assert!(st.retransmissions <= st.requests);
            if last_answer.is_some() {
                prop_assert_eq!(c.mapped(), last_answer);
            }
        }
    }
}
