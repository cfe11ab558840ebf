//! The codec against the RFC 5769 test vectors, golden and truncated bytes, and a never-panics
//! property over arbitrary and mutated datagrams.

use super::codec::*;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// Hex with whitespace to bytes (the vectors are written as in the RFC's figures).
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

const TXID_5769: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];
/// The short-term password of vectors 2.1–2.3.
const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

/// RFC 5769 §2.1: a Binding request with SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
/// MESSAGE-INTEGRITY and FINGERPRINT (the USERNAME padding is spaces, as in the RFC).
fn sample_request() -> Vec<u8> {
    hex("00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
         00 24 00 04 6e 00 01 ff
         80 29 00 08 93 2f f9 b1 51 26 3b 36
         00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
         00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
         80 28 00 04 e5 7a 3b cf")
}

/// RFC 5769 §2.2: Binding success, XOR-MAPPED-ADDRESS 192.0.2.1:32853.
fn sample_ipv4_response() -> Vec<u8> {
    hex("01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
         00 20 00 08 00 01 a1 47 e1 12 a6 43
         00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
         80 28 00 04 c0 7d 4c 96")
}

/// RFC 5769 §2.3: Binding success, XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853.
fn sample_ipv6_response() -> Vec<u8> {
    hex("01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
         00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
         00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
         80 28 00 04 c8 fb 0b 4c")
}

/// RFC 5769 §2.4: a request with long-term credentials (USERNAME, NONCE, REALM,
/// MESSAGE-INTEGRITY; no FINGERPRINT).
fn sample_long_term_request() -> Vec<u8> {
    hex("00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
         00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
         00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
         00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
         00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66")
}

/// MD5("マトリックス:example.org:TheMatrIX"): the long-term key of §2.4 (RFC 8489 §9.2.2), computed
/// outside (`printf %s '…' | md5sum`): this codec has no MD5.
const LONG_TERM_KEY_2_4: &str = "e8ca7ad59d5eb0518e312911d2dab2a9";

fn parse(b: &[u8]) -> Result<MessageRepr<'_>, Error> {
    MessageRepr::parse(&Message::new_checked(b)?)
}

#[test]
fn crc32_check_value() {
    // The CRC-32 catalogue's check value.
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn message_type_bits_round_trip() {
    assert_eq!(message_type(BINDING, Class::Request), 0x0001);
    assert_eq!(message_type(BINDING, Class::Indication), 0x0011);
    assert_eq!(message_type(BINDING, Class::Success), 0x0101);
    assert_eq!(message_type(BINDING, Class::Error), 0x0111);
    for method in [0x000, 0x001, 0x003, 0x07F, 0x080, 0xFFF] {
        for class in [
            Class::Request,
            Class::Indication,
            Class::Success,
            Class::Error,
        ] {
            assert_eq!(
                split_message_type(message_type(method, class)),
                (method, class)
            );
        }
    }
}

#[test]
fn rfc5769_2_1_request() {
    let b = sample_request();
    let m = Message::new_checked(&b[..]).unwrap();
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.method(), BINDING);
    assert_eq!(m.length(), 0x58);
    let r = MessageRepr::parse(&m).unwrap();
    assert_eq!(r.transaction_id, TransactionId(TXID_5769));
    assert_eq!(r.software, Some("STUN test client"));
    assert_eq!(r.username, Some("evtj:h6vY"));
    assert!(r.has_integrity && r.has_fingerprint);
    // PRIORITY (0x0024, ICE) is comprehension-required and not ours: a server answers 420 listing
    // it; ICE-CONTROLLED (0x8029) is optional and ignored.
    assert_eq!(r.unknown_required.types(), &[0x0024]);
    assert_eq!(r.unknown_required.count, 1);
    m.verify_integrity(PASSWORD).unwrap();
    assert_eq!(m.verify_integrity(b"wrong"), Err(Error::BadIntegrity));
}

#[test]
fn rfc5769_2_2_ipv4_response() {
    let b = sample_ipv4_response();
    let m = Message::new_checked(&b[..]).unwrap();
    let r = MessageRepr::parse(&m).unwrap();
    assert_eq!(r.class, Class::Success);
    assert_eq!(r.transaction_id, TransactionId(TXID_5769));
    assert_eq!(r.software, Some("test vector"));
    let want: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    assert_eq!(r.xor_mapped_address, Some(want));
    assert_eq!(r.reflexive_address(), Some(want));
    assert!(r.unknown_required.is_empty() && r.has_fingerprint);
    m.verify_integrity(PASSWORD).unwrap();
}

#[test]
fn rfc5769_2_3_ipv6_response() {
    let b = sample_ipv6_response();
    let m = Message::new_checked(&b[..]).unwrap();
    let r = MessageRepr::parse(&m).unwrap();
    let ip: Ipv6Addr = "2001:db8:1234:5678:11:2233:4455:6677".parse().unwrap();
    assert_eq!(
        r.xor_mapped_address,
        Some(SocketAddr::new(ip.into(), 32853))
    );
    assert_eq!(r.software, Some("test vector"));
    m.verify_integrity(PASSWORD).unwrap();
}

#[test]
fn rfc5769_2_4_long_term_request() {
    let b = sample_long_term_request();
    let m = Message::new_checked(&b[..]).unwrap();
    let r = MessageRepr::parse(&m).unwrap();
    assert_eq!(r.username, Some("マトリックス"));
    assert_eq!(r.nonce, Some("f//499k954d6OL34oL9FSTvy64sA"));
    assert_eq!(r.realm, Some("example.org"));
    assert!(r.has_integrity && !r.has_fingerprint);
    m.verify_integrity(&hex(LONG_TERM_KEY_2_4)).unwrap();
}

#[test]
fn writer_reproduces_the_ipv4_response() {
    let mut buf = [0u8; 128];
    let mut w = Writer::new(&mut buf, Class::Success, BINDING, TransactionId(TXID_5769)).unwrap();
    w.software("test vector").unwrap();
    w.xor_mapped_address("192.0.2.1:32853".parse().unwrap())
        .unwrap();
    w.message_integrity(PASSWORD).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    let want = sample_ipv4_response();
    assert_eq!(n, want.len());
    // Byte for byte up to MESSAGE-INTEGRITY but for SOFTWARE's padding byte: the RFC pads with a
    // space, we pad with zero (any value is allowed), which changes the HMAC and the CRC after it.
    assert_eq!(&buf[..35], &want[..35]);
    assert_eq!((buf[35], want[35]), (0x00, 0x20));
    assert_eq!(
        &buf[36..52],
        &want[36..52],
        "XOR-MAPPED-ADDRESS and MESSAGE-INTEGRITY header"
    );
    let m = Message::new_checked(&buf[..n]).unwrap();
    m.verify_integrity(PASSWORD).unwrap();
    let r = MessageRepr::parse(&m).unwrap();
    assert_eq!(
        r.reflexive_address(),
        Some("192.0.2.1:32853".parse().unwrap())
    );
    assert!(r.has_fingerprint);
}

#[test]
fn writer_replays_the_request() {
    // Re-emit §2.1's attributes through the writer, then MESSAGE-INTEGRITY and FINGERPRINT.
    let rfc = sample_request();
    let mut buf = [0u8; 128];
    let mut w = Writer::new(&mut buf, Class::Request, BINDING, TransactionId(TXID_5769)).unwrap();
    for a in Message::new_checked(&rfc[..]).unwrap().attributes() {
        let a = a.unwrap();
        if a.kind == attr::MESSAGE_INTEGRITY {
            break;
        }
        w.attribute(a.kind, a.value).unwrap();
    }
    w.message_integrity(PASSWORD).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    assert_eq!(n, rfc.len());
    // Identical up to USERNAME's padding (spaces in the RFC, zeros from us).
    let username_pad = 20 + 20 + 8 + 12 + 4 + 9;
    assert_eq!(&buf[..username_pad], &rfc[..username_pad]);
    assert_eq!(&buf[username_pad..username_pad + 3], &[0, 0, 0]);
    let m = Message::new_checked(&buf[..n]).unwrap();
    m.verify_integrity(PASSWORD).unwrap();
    assert!(MessageRepr::parse(&m).unwrap().has_fingerprint);
}

#[test]
fn xor_address_emit_parse_pairs() {
    let id = TransactionId(TXID_5769);
    for a in [
        "192.0.2.1:32853",
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        "[::]:1",
    ] {
        let a: SocketAddr = a.parse().unwrap();
        let mut v = vec![0u8; address_len(a)];
        emit_xor_address(a, id, &mut v);
        assert_eq!(parse_xor_address(&v, id), Ok(a));
        emit_address(a, &mut v);
        assert_eq!(parse_address(&v, attr::MAPPED_ADDRESS), Ok(a));
    }
}

#[test]
fn mapped_address_is_the_fallback() {
    let id = TransactionId([7; 12]);
    let mut buf = [0u8; 64];
    let mut w = Writer::new(&mut buf, Class::Success, BINDING, id).unwrap();
    let a = SocketAddr::new(Ipv4Addr::new(198, 19, 0, 1).into(), 40000);
    w.mapped_address(a).unwrap();
    let n = w.finish();
    let r = parse(&buf[..n]).unwrap();
    assert_eq!(
        (r.xor_mapped_address, r.reflexive_address()),
        (None, Some(a))
    );
}

#[test]
fn error_code_emit_parse_pairs() {
    for (code, reason) in [
        (300, "Try Alternate"),
        (420, "Unknown Attribute"),
        (699, ""),
    ] {
        let e = ErrorCode { code, reason };
        let mut v = vec![0u8; e.buffer_len()];
        e.emit(&mut v).unwrap();
        assert_eq!(ErrorCode::parse(&v), Ok(e));
    }
    let mut v = [0u8; 4];
    assert_eq!(
        ErrorCode {
            code: 299,
            reason: ""
        }
        .emit(&mut v),
        Err(Error::Unencodable)
    );
    assert!(ErrorCode::parse(&[0, 0, 2, 0]).is_err(), "class 2");
    assert!(ErrorCode::parse(&[0, 0, 4, 100]).is_err(), "number 100");
    assert!(ErrorCode::parse(&[0, 0, 4, 20, 0xff]).is_err(), "not UTF-8");
}

#[test]
fn error_response_with_unknown_attributes() {
    let id = TransactionId([1; 12]);
    let mut buf = [0u8; 64];
    let mut w = Writer::new(&mut buf, Class::Error, BINDING, id).unwrap();
    w.error_code(ErrorCode {
        code: 420,
        reason: "Unknown Attribute",
    })
    .unwrap();
    w.unknown_attributes(&[0x0024]).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    let r = parse(&buf[..n]).unwrap();
    assert_eq!(r.class, Class::Error);
    assert_eq!(
        r.error_code,
        Some(ErrorCode {
            code: 420,
            reason: "Unknown Attribute"
        })
    );
}

#[test]
fn truncated_vectors_are_errors() {
    for v in [
        sample_request(),
        sample_ipv4_response(),
        sample_ipv6_response(),
        sample_long_term_request(),
    ] {
        for n in 0..v.len() {
            assert!(parse(&v[..n]).is_err(), "prefix of {n} bytes accepted");
        }
        // A datagram longer than the message is not a STUN message either.
        let mut longer = v.clone();
        longer.extend_from_slice(&[0; 4]);
        assert_eq!(parse(&longer).unwrap_err(), Error::BadLength);
    }
}

#[test]
fn header_checks() {
    let mut v = sample_ipv4_response();
    assert!(is_stun(&v));
    v[4] ^= 1;
    assert!(!is_stun(&v));
    assert_eq!(parse(&v).unwrap_err(), Error::NotStun);
    let mut v = sample_ipv4_response();
    v[0] |= 0x40; // top bits
    assert!(!is_stun(&v));
    assert_eq!(parse(&v).unwrap_err(), Error::NotStun);
    // A QUIC long header (first byte 0xc0..) is never STUN.
    let mut q = sample_ipv4_response();
    q[0] = 0xc3;
    assert!(!is_stun(&q));
    assert!(!is_stun(&[0u8; 19]));
}

#[test]
fn fingerprint_must_match_and_be_last() {
    let mut v = sample_ipv4_response();
    let last = v.len() - 1;
    v[last] ^= 1;
    assert_eq!(parse(&v).unwrap_err(), Error::BadFingerprint);
    // An attribute after a (correct) FINGERPRINT.
    let mut buf = [0u8; 64];
    let mut w = Writer::new(&mut buf, Class::Success, BINDING, TransactionId([5; 12])).unwrap();
    w.fingerprint().unwrap();
    w.software("late").unwrap();
    let n = w.finish();
    assert_eq!(
        parse(&buf[..n]).unwrap_err(),
        Error::BadFingerprint,
        "length changed"
    );
    // With the CRC over the final header it is the position that is wrong.
    let fp = fingerprint(&buf[..20]);
    buf[24..28].copy_from_slice(&fp.to_be_bytes());
    assert_eq!(
        parse(&buf[..n]).unwrap_err(),
        Error::AttributeAfterFingerprint
    );
}

#[test]
fn tampering_breaks_integrity() {
    let mut v = sample_ipv4_response();
    v[45] ^= 1; // inside XOR-MAPPED-ADDRESS, before MESSAGE-INTEGRITY
    let m = Message::new_unchecked(&v[..]);
    assert_eq!(m.verify_integrity(PASSWORD), Err(Error::BadIntegrity));
    // No integrity at all.
    let mut buf = [0u8; 32];
    let n = Writer::new(&mut buf, Class::Request, BINDING, TransactionId([0; 12]))
        .unwrap()
        .finish();
    let m = Message::new_checked(&buf[..n]).unwrap();
    assert_eq!(m.verify_integrity(PASSWORD), Err(Error::NoIntegrity));
}

#[test]
fn sha256_integrity_round_trip() {
    let mut buf = [0u8; 128];
    let mut w = Writer::new(&mut buf, Class::Request, BINDING, TransactionId([9; 12])).unwrap();
    w.software("x").unwrap();
    w.message_integrity_sha256(b"key").unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    let m = Message::new_checked(&buf[..n]).unwrap();
    m.verify_integrity(b"key").unwrap();
    assert_eq!(m.verify_integrity(b"other"), Err(Error::BadIntegrity));
    assert!(MessageRepr::parse(&m).unwrap().has_integrity);
}

#[test]
fn attributes_after_integrity_are_ignored() {
    // An unknown comprehension-required attribute after MESSAGE-INTEGRITY is not covered by it
    // and must be ignored (RFC 8489 §14.5).
    let mut buf = [0u8; 128];
    let mut w = Writer::new(&mut buf, Class::Success, BINDING, TransactionId([3; 12])).unwrap();
    w.message_integrity(b"k").unwrap();
    w.attribute(0x0024, &[1, 2, 3, 4]).unwrap();
    w.attribute(attr::XOR_MAPPED_ADDRESS, &[0xff]).unwrap(); // malformed, but ignored
    let n = w.finish();
    let r = parse(&buf[..n]).unwrap();
    assert!(r.unknown_required.is_empty());
    assert_eq!(r.xor_mapped_address, None);
}

#[test]
fn writer_refuses_small_buffers() {
    let mut tiny = [0u8; 19];
    assert!(Writer::new(&mut tiny, Class::Request, BINDING, TransactionId([0; 12])).is_err());
    let mut buf = [0u8; 27];
    let mut w = Writer::new(&mut buf, Class::Request, BINDING, TransactionId([0; 12])).unwrap();
    assert_eq!(w.fingerprint(), Err(Error::BufferTooSmall));
    assert_eq!(w.finish(), 20);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Parse (and integrity verification) never panics on arbitrary bytes.
    #[test]
    fn parse_never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = is_stun(&data);
        if let Ok(m) = Message::new_checked(&data[..]) {
            let _ = MessageRepr::parse(&m);
            let _ = m.verify_integrity(b"k");
            for _ in m.attributes() {}
        }
    }

    /// Nor on valid messages with mutated bytes, a fixed header (so the walk goes deep) and
    /// arbitrary attribute lengths.
    #[test]
    fn parse_never_panics_on_mutated_vectors(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
    ) {
        let mut v = match which {
            0 => sample_request(),
            1 => sample_ipv4_response(),
            2 => sample_ipv6_response(),
            _ => sample_long_term_request(),
        };
        for (at, b) in edits {
            let at = 20 + at % (v.len() - 20);
            v[at] = b;
        }
        let cut = 20 + cut % (v.len() - 19);
        v.truncate(cut);
        let len = ((v.len() - 20) & !3) as u16;
        v.truncate(20 + len as usize);
        v[2..4].copy_from_slice(&len.to_be_bytes());
        if let Ok(m) = Message::new_checked(&v[..]) {
            let _ = MessageRepr::parse(&m);
            let _ = m.verify_integrity(PASSWORD);
        }
    }

    /// What the writer emits parses back to the same values.
    #[test]
    fn emit_parse_round_trip(
        id in any::<[u8; 12]>(),
        v4 in any::<[u8; 4]>(),
        v6 in any::<[u8; 16]>(),
        port in any::<u16>(),
        ipv6 in any::<bool>(),
        software in "[a-zA-Z0-9 ./-]{0,40}",
        fp in any::<bool>(),
    ) {
        let ip: std::net::IpAddr = if ipv6 { Ipv6Addr::from(v6).into() } else { Ipv4Addr::from(v4).into() };
        let a = SocketAddr::new(ip, port);
        let mut buf = [0u8; 128];
        let mut w = Writer::new(&mut buf, Class::Success, BINDING, TransactionId(id)).unwrap();
        w.software(&software).unwrap();
        w.xor_mapped_address(a).unwrap();
        if fp {
            w.fingerprint().unwrap();
        }
        let n = w.finish();
        let r = parse(&buf[..n]).unwrap();
        prop_assert_eq!(r.transaction_id, TransactionId(id));
        prop_assert_eq!(r.xor_mapped_address, Some(a));
        prop_assert_eq!(r.software, Some(software.as_str()));
        prop_assert_eq!(r.has_fingerprint, fp);
    }
}
