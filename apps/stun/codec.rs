//! STUN messages (RFC 8489) on the wire: a zero-copy view over one datagram ([`Message`]), its
//! attributes ([`Attributes`]), the parsed form a Binding client needs ([`MessageRepr`]) and a
//! [`Writer`] that emits messages, with the attribute value codecs as parse/emit pairs.
//!
//! Contract: nothing here panics on any input. [`Message::new_checked`] validates the header and
//! the length before any field is read; the attribute walk checks every attribute's length against
//! the message before it hands out a value. Writing into a too small buffer is an error, not a
//! panic.
//!
//! Scope: the Binding method and the attributes of RFC 8489 section 14 that a client meets.
//! MESSAGE-INTEGRITY (HMAC-SHA1) and MESSAGE-INTEGRITY-SHA256 are verified and emitted with a key
//! given as bytes: for short-term credentials that is the password (after OpaqueString, which the
//! caller applies), for long-term credentials MD5(username ":" realm ":" password), which the caller
//! computes (there is no MD5 here: the tunnel needs no authenticated STUN).

// A library for the tunnel as well as `longhaul stun`: each uses a part of it.
#![allow(dead_code)]

use ring::hmac;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The fixed value in bytes 4..8 of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the message header.
pub const HEADER_LEN: usize = 20;
/// What the CRC-32 of a message is XORed with to make the FINGERPRINT value (RFC 8489 §14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// The Binding method.
pub const BINDING: u16 = 0x001;

/// Field offsets in the header.
mod field {
    use std::ops::Range;
    pub const TYPE: Range<usize> = 0..2;
    pub const LENGTH: Range<usize> = 2..4;
    pub const COOKIE: Range<usize> = 4..8;
    pub const TRANSACTION_ID: Range<usize> = 8..20;
}

/// Attribute types (RFC 8489 §18.3). 0x0000..=0x7FFF are comprehension-required, the rest
/// comprehension-optional.
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;

    /// True for types an agent must understand to process the message (RFC 8489 §14).
    pub fn is_comprehension_required(kind: u16) -> bool {
        kind < 0x8000
    }

    /// The comprehension-required types this codec understands. Any other comprehension-required
    /// type makes a request get a 420 and a response count as a failed transaction (§6.3).
    pub fn is_known_required(kind: u16) -> bool {
        matches!(
            kind,
            MAPPED_ADDRESS
                | USERNAME
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | REALM
                | NONCE
                | MESSAGE_INTEGRITY_SHA256
                | PASSWORD_ALGORITHM
                | USERHASH
                | XOR_MAPPED_ADDRESS
        )
    }
}

/// Why a datagram is not an acceptable STUN message, or a message could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Shorter than the header, or than the header's length field says.
    Truncated,
    /// The two top bits are not zero or the magic cookie is wrong: not RFC 5389/8489 STUN.
    NotStun,
    /// The length field is not a multiple of 4 or disagrees with the datagram's size.
    BadLength,
    /// An attribute runs past the end of the message.
    BadAttributeLength,
    /// An attribute's value is malformed (its type).
    BadAttribute(u16),
    /// An attribute follows FINGERPRINT, which must be the last one.
    AttributeAfterFingerprint,
    /// The FINGERPRINT does not match the message.
    BadFingerprint,
    /// No MESSAGE-INTEGRITY(-SHA256) to verify.
    NoIntegrity,
    /// The MESSAGE-INTEGRITY(-SHA256) does not match the message and key.
    BadIntegrity,
    /// The output buffer is too small, or the message would exceed 65535 bytes of attributes.
    BufferTooSmall,
    /// A value cannot be encoded (too long text, error code out of 300..=699).
    Unencodable,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated STUN message"),
            Error::NotStun => f.write_str("not a STUN message (bad top bits or magic cookie)"),
            Error::BadLength => f.write_str("STUN length field disagrees with the datagram"),
            Error::BadAttributeLength => f.write_str("STUN attribute runs past the message"),
            Error::BadAttribute(t) => write!(f, "malformed STUN attribute 0x{t:04x}"),
            Error::AttributeAfterFingerprint => f.write_str("STUN attribute after FINGERPRINT"),
            Error::BadFingerprint => f.write_str("wrong STUN FINGERPRINT"),
            Error::NoIntegrity => f.write_str("no STUN MESSAGE-INTEGRITY"),
            Error::BadIntegrity => f.write_str("wrong STUN MESSAGE-INTEGRITY"),
            Error::BufferTooSmall => f.write_str("buffer too small for the STUN message"),
            Error::Unencodable => f.write_str("value cannot be encoded in STUN"),
        }
    }
}

impl std::error::Error for Error {}

/// The message class (two bits spread over the type field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }

    fn from_bits(b: u16) -> Class {
        match b & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        }
    }
}

/// The 14-bit type field from a method (12 bits) and a class:
/// `0 0 M11..M7 C1 M6..M4 C0 M3..M0` (RFC 8489 §5).
pub fn message_type(method: u16, class: Class) -> u16 {
    let m = method & 0x0FFF;
    let c = class.bits();
    (m & 0x000F) | ((c & 1) << 4) | ((m & 0x0070) << 1) | ((c & 2) << 7) | ((m & 0x0F80) << 2)
}

/// The method and class in a type field (the top two bits are ignored).
pub fn split_message_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = ((t >> 4) & 1) | ((t >> 7) & 2);
    (method, Class::from_bits(class))
}

/// The 96-bit transaction ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TransactionId(pub [u8; 12]);

/// RFC 7983 demultiplexing: true if `datagram` can only be STUN among what shares a UDP port
/// (QUIC, DTLS, RTP): first byte 0..=3, the magic cookie at bytes 4..8, at least a header long.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN
        && datagram[0] <= 3
        && datagram[field::COOKIE] == MAGIC_COOKIE.to_be_bytes()
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// A read-only (or writable, with `T: AsMut<[u8]>`) view of one STUN message.
#[derive(Clone, Copy, Debug)]
pub struct Message<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Message<T> {
    /// Wraps `buffer` without checks: accessors may panic if it is not valid. For our own output.
    pub fn new_unchecked(buffer: T) -> Self {
        Message { buffer }
    }

    /// Wraps `buffer` after [`Self::check_len`] and the header checks (top bits, magic cookie):
    /// every accessor is then safe to call.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let m = Self::new_unchecked(buffer);
        m.check_len()?;
        let b = m.buffer.as_ref();
        if b[0] & 0xC0 != 0 || b[field::COOKIE] != MAGIC_COOKIE.to_be_bytes() {
            return Err(Error::NotStun);
        }
        Ok(m)
    }

    /// Checks that the header is there and that the length field is a multiple of 4 equal to what
    /// follows the header (a UDP datagram holds exactly one message).
    pub fn check_len(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(be16(b, field::LENGTH.start));
        if len % 4 != 0 {
            return Err(Error::BadLength);
        }
        match (HEADER_LEN + len).cmp(&b.len()) {
            std::cmp::Ordering::Greater => Err(Error::Truncated),
            std::cmp::Ordering::Less => Err(Error::BadLength),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The 14-bit type field.
    pub fn message_type(&self) -> u16 {
        be16(self.buffer.as_ref(), field::TYPE.start) & 0x3FFF
    }

    /// The class.
    pub fn class(&self) -> Class {
        split_message_type(self.message_type()).1
    }

    /// The method (12 bits).
    pub fn method(&self) -> u16 {
        split_message_type(self.message_type()).0
    }

    /// Bytes of attributes after the header.
    pub fn length(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// The transaction ID.
    pub fn transaction_id(&self) -> TransactionId {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.buffer.as_ref()[field::TRANSACTION_ID]);
        TransactionId(id)
    }

    /// The attributes in order; a malformed one ends the walk with an error.
    pub fn attributes(&self) -> Attributes<'_> {
        let b = self.buffer.as_ref();
        Attributes {
            msg: b,
            pos: HEADER_LEN.min(b.len()),
        }
    }

    /// Checks the MESSAGE-INTEGRITY-SHA256 if there is one, else the MESSAGE-INTEGRITY (HMAC-SHA1),
    /// with `key` (RFC 8489 §14.5, §14.6: the HMAC covers the message up to the attribute, with the
    /// length field as if the attribute ended the message).
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), Error> {
        let mut sha1 = None;
        let mut sha256 = None;
        for a in self.attributes() {
            let a = a?;
            match a.kind {
                attr::MESSAGE_INTEGRITY if sha1.is_none() && sha256.is_none() => sha1 = Some(a),
                attr::MESSAGE_INTEGRITY_SHA256 if sha256.is_none() => sha256 = Some(a),
                _ => {}
            }
        }
        let (a, algo, valid_len) = match (sha256, sha1) {
            (Some(a), _) => {
                let n = a.value.len();
                (a, hmac::HMAC_SHA256, (16..=32).contains(&n) && n % 4 == 0)
            }
            (None, Some(a)) => (a, hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, a.value.len() == 20),
            (None, None) => return Err(Error::NoIntegrity),
        };
        if !valid_len {
            return Err(Error::BadAttribute(a.kind));
        }
        let tag = integrity_tag(algo, key, self.as_bytes(), a.offset, a.value.len());
        if constant_time_eq(&tag.as_ref()[..a.value.len()], a.value) {
            Ok(())
        } else {
            Err(Error::BadIntegrity)
        }
    }
}

/// The HMAC over `msg[..attr_offset]` with the length field set to end after an integrity
/// attribute of `value_len` bytes at `attr_offset`.
fn integrity_tag(
    algo: hmac::Algorithm,
    key: &[u8],
    msg: &[u8],
    attr_offset: usize,
    value_len: usize,
) -> hmac::Tag {
    let key = hmac::Key::new(algo, key);
    let mut ctx = hmac::Context::with_key(&key);
    let len = (attr_offset + 4 + value_len - HEADER_LEN) as u16;
    ctx.update(&msg[field::TYPE]);
    ctx.update(&len.to_be_bytes());
    ctx.update(&msg[field::COOKIE.start..attr_offset]);
    ctx.sign()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Message<T> {
    /// Sets the 14-bit type field.
    pub fn set_message_type(&mut self, t: u16) {
        self.buffer.as_mut()[field::TYPE].copy_from_slice(&(t & 0x3FFF).to_be_bytes());
    }

    /// Sets the length field.
    pub fn set_length(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// Writes the magic cookie.
    pub fn set_magic_cookie(&mut self) {
        self.buffer.as_mut()[field::COOKIE].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    }

    /// Sets the transaction ID.
    pub fn set_transaction_id(&mut self, id: TransactionId) {
        self.buffer.as_mut()[field::TRANSACTION_ID].copy_from_slice(&id.0);
    }
}

/// One attribute: its type, its value (without padding) and where its header starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    pub kind: u16,
    pub value: &'a [u8],
    /// Offset of the attribute's type field in the message.
    pub offset: usize,
}

/// Walks a message's attributes; yields an error (once) for one that runs past the end.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<RawAttribute<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.msg.len() - self.pos;
        if rest == 0 {
            return None;
        }
        if rest < 4 {
            self.pos = self.msg.len();
            return Some(Err(Error::BadAttributeLength));
        }
        let kind = be16(self.msg, self.pos);
        let len = usize::from(be16(self.msg, self.pos + 2));
        let padded = (len + 3) & !3;
        if padded > rest - 4 {
            self.pos = self.msg.len();
            return Some(Err(Error::BadAttributeLength));
        }
        let offset = self.pos;
        let value = &self.msg[offset + 4..offset + 4 + len];
        self.pos += 4 + padded;
        Some(Ok(RawAttribute {
            kind,
            value,
            offset,
        }))
    }
}

// ---------------------------------------------------------------------------- attribute values

const FAMILY_V4: u8 = 0x01;
const FAMILY_V6: u8 = 0x02;

/// MAPPED-ADDRESS and the like (ALTERNATE-SERVER): `0 family port address` (RFC 8489 §14.1).
pub fn parse_address(value: &[u8], kind: u16) -> Result<SocketAddr, Error> {
    let bad = Error::BadAttribute(kind);
    if value.len() < 4 {
        return Err(bad);
    }
    let port = be16(value, 2);
    let ip = match (value[1], value.len()) {
        (FAMILY_V4, 8) => IpAddr::V4(Ipv4Addr::new(value[4], value[5], value[6], value[7])),
        (FAMILY_V6, 20) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&value[4..20]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(bad),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Value length of an address attribute for `addr`.
pub fn address_len(addr: SocketAddr) -> usize {
    if addr.is_ipv4() {
        8
    } else {
        20
    }
}

/// Writes an address attribute value; `out` must be [`address_len`] long.
pub fn emit_address(addr: SocketAddr, out: &mut [u8]) {
    out[0] = 0;
    out[2..4].copy_from_slice(&addr.port().to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = FAMILY_V4;
            out[4..8].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out[1] = FAMILY_V6;
            out[4..20].copy_from_slice(&ip.octets());
        }
    }
}

/// XORs an address value in place with the cookie (port, IPv4) and the cookie followed by the
/// transaction ID (IPv6), as XOR-MAPPED-ADDRESS does (RFC 8489 §14.2). Its own inverse.
fn xor_address_value(v: &mut [u8], id: TransactionId) {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(&id.0);
    v[2] ^= mask[0];
    v[3] ^= mask[1];
    for (b, m) in v[4..].iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// XOR-MAPPED-ADDRESS value of a message with transaction `id`.
pub fn parse_xor_address(value: &[u8], id: TransactionId) -> Result<SocketAddr, Error> {
    if value.len() != 8 && value.len() != 20 {
        return Err(Error::BadAttribute(attr::XOR_MAPPED_ADDRESS));
    }
    let mut v = [0u8; 20];
    v[..value.len()].copy_from_slice(value);
    xor_address_value(&mut v[..value.len()], id);
    parse_address(&v[..value.len()], attr::XOR_MAPPED_ADDRESS)
}

/// Writes an XOR-MAPPED-ADDRESS value; `out` must be [`address_len`] long.
pub fn emit_xor_address(addr: SocketAddr, id: TransactionId, out: &mut [u8]) {
    emit_address(addr, out);
    xor_address_value(out, id);
}

/// ERROR-CODE: a code in 300..=699 and a UTF-8 reason phrase (RFC 8489 §14.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    pub code: u16,
    pub reason: &'a str,
}

impl<'a> ErrorCode<'a> {
    /// Parses the value: 21 reserved bits, the class (hundreds, 3..=6), the number (0..=99).
    pub fn parse(value: &'a [u8]) -> Result<Self, Error> {
        let bad = Error::BadAttribute(attr::ERROR_CODE);
        if value.len() < 4 {
            return Err(bad);
        }
        let class = u16::from(value[2] & 0x07);
        let number = u16::from(value[3]);
        if !(3..=6).contains(&class) || number > 99 {
            return Err(bad);
        }
        let reason = std::str::from_utf8(&value[4..]).map_err(|_| bad)?;
        Ok(ErrorCode {
            code: class * 100 + number,
            reason,
        })
    }

    /// Value length.
    pub fn buffer_len(&self) -> usize {
        4 + self.reason.len()
    }

    /// Writes the value; `out` must be [`Self::buffer_len`] long.
    pub fn emit(&self, out: &mut [u8]) -> Result<(), Error> {
        if !(300..=699).contains(&self.code) || self.reason.len() > 763 {
            return Err(Error::Unencodable);
        }
        out[..2].fill(0);
        out[2] = (self.code / 100) as u8;
        out[3] = (self.code % 100) as u8;
        out[4..].copy_from_slice(self.reason.as_bytes());
        Ok(())
    }
}

/// A UTF-8 text attribute (SOFTWARE, USERNAME, REALM, NONCE).
pub fn parse_text(value: &[u8], kind: u16) -> Result<&str, Error> {
    std::str::from_utf8(value).map_err(|_| Error::BadAttribute(kind))
}

/// FINGERPRINT value for a message whose bytes before the attribute are `prefix` (the length field
/// already counting the FINGERPRINT attribute).
pub fn fingerprint(prefix: &[u8]) -> u32 {
    crc32(prefix) ^ FINGERPRINT_XOR
}

/// CRC-32 (ISO-HDLC, the one of Ethernet and zlib), as FINGERPRINT uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

// ---------------------------------------------------------------------------- parsed message

/// Up to this many unknown comprehension-required types are remembered (for a 420's
/// UNKNOWN-ATTRIBUTES); more are counted.
pub const MAX_UNKNOWN: usize = 8;

/// Comprehension-required attribute types the codec does not understand, in order of appearance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnknownRequired {
    types: [u16; MAX_UNKNOWN],
    len: usize,
    /// How many there were in all (also past [`MAX_UNKNOWN`]).
    pub count: usize,
}

impl UnknownRequired {
    fn push(&mut self, kind: u16) {
        if self.len < MAX_UNKNOWN && !self.types[..self.len].contains(&kind) {
            self.types[self.len] = kind;
            self.len += 1;
        }
        self.count += 1;
    }

    /// The types (at most [`MAX_UNKNOWN`]).
    pub fn types(&self) -> &[u16] {
        &self.types[..self.len]
    }

    /// True when there were none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// What a message says, for the attributes this codec knows (the first occurrence of each counts,
/// RFC 8489 §14). Text and the error reason borrow from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageRepr<'a> {
    pub class: Class,
    pub method: u16,
    pub transaction_id: TransactionId,
    /// XOR-MAPPED-ADDRESS.
    pub xor_mapped_address: Option<SocketAddr>,
    /// MAPPED-ADDRESS (what RFC 3489 servers send instead).
    pub mapped_address: Option<SocketAddr>,
    pub software: Option<&'a str>,
    pub username: Option<&'a str>,
    pub realm: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub error_code: Option<ErrorCode<'a>>,
    /// ALTERNATE-SERVER (with a 300 Try Alternate).
    pub alternate_server: Option<SocketAddr>,
    /// A MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 is present (check it with
    /// [`Message::verify_integrity`]).
    pub has_integrity: bool,
    /// A FINGERPRINT was present (and correct: a wrong one fails the parse).
    pub has_fingerprint: bool,
    /// Comprehension-required attributes not understood (before any integrity attribute).
    pub unknown_required: UnknownRequired,
}

impl<'a> MessageRepr<'a> {
    /// Parses a checked message. Follows RFC 8489 §14: after MESSAGE-INTEGRITY only
    /// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT count, after MESSAGE-INTEGRITY-SHA256 only
    /// FINGERPRINT, and FINGERPRINT must be last and correct. A known attribute with a malformed
    /// value fails the parse.
    pub fn parse(msg: &Message<&'a [u8]>) -> Result<MessageRepr<'a>, Error> {
        let (method, class) = split_message_type(msg.message_type());
        let id = msg.transaction_id();
        let mut r = MessageRepr {
            class,
            method,
            transaction_id: id,
            xor_mapped_address: None,
            mapped_address: None,
            software: None,
            username: None,
            realm: None,
            nonce: None,
            error_code: None,
            alternate_server: None,
            has_integrity: false,
            has_fingerprint: false,
            unknown_required: UnknownRequired::default(),
        };
        let bytes: &'a [u8] = msg.buffer;
        // 0: anything, 1: after MESSAGE-INTEGRITY, 2: after MESSAGE-INTEGRITY-SHA256.
        let mut protected = 0u8;
        let mut walk = Attributes {
            msg: bytes,
            pos: HEADER_LEN,
        };
        for a in &mut walk {
            let a = a?;
            if r.has_fingerprint {
                return Err(Error::AttributeAfterFingerprint);
            }
            //= rfc8489#section-14.7: FINGERPRINT is the last attribute; a mismatch means the
            //= message is not STUN (or was damaged), so it is rejected.
            match a.kind {
                attr::FINGERPRINT => {
                    if a.value.len() != 4 {
                        return Err(Error::BadAttribute(a.kind));
                    }
                    let want = u32::from_be_bytes([a.value[0], a.value[1], a.value[2], a.value[3]]);
                    if fingerprint(&bytes[..a.offset]) != want {
                        return Err(Error::BadFingerprint);
                    }
                    r.has_fingerprint = true;
                    continue;
                }
                attr::MESSAGE_INTEGRITY_SHA256 if protected < 2 => {
                    r.has_integrity = true;
                    protected = 2;
                    continue;
                }
                attr::MESSAGE_INTEGRITY if protected == 0 => {
                    r.has_integrity = true;
                    protected = 1;
                    continue;
                }
                _ if protected > 0 => continue, // not covered by the integrity: ignored
                _ => {}
            }
            let v = a.value;
            match a.kind {
                attr::XOR_MAPPED_ADDRESS if r.xor_mapped_address.is_none() => {
                    r.xor_mapped_address = Some(parse_xor_address(v, id)?)
                }
                attr::MAPPED_ADDRESS if r.mapped_address.is_none() => {
                    r.mapped_address = Some(parse_address(v, a.kind)?)
                }
                attr::ALTERNATE_SERVER if r.alternate_server.is_none() => {
                    r.alternate_server = Some(parse_address(v, a.kind)?)
                }
                attr::SOFTWARE if r.software.is_none() => r.software = Some(parse_text(v, a.kind)?),
                attr::USERNAME if r.username.is_none() => r.username = Some(parse_text(v, a.kind)?),
                attr::REALM if r.realm.is_none() => r.realm = Some(parse_text(v, a.kind)?),
                attr::NONCE if r.nonce.is_none() => r.nonce = Some(parse_text(v, a.kind)?),
                attr::ERROR_CODE if r.error_code.is_none() => {
                    r.error_code = Some(ErrorCode::parse(v)?)
                }
                k if attr::is_comprehension_required(k) && !attr::is_known_required(k) => {
                    r.unknown_required.push(k)
                }
                _ => {}
            }
        }
        Ok(r)
    }

    /// The address the server saw: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (RFC 8489 §14.1 keeps
    /// the latter for RFC 3489 servers).
    pub fn reflexive_address(&self) -> Option<SocketAddr> {
        self.xor_mapped_address.or(self.mapped_address)
    }
}

// ---------------------------------------------------------------------------- writing

/// Builds a message in a caller's buffer: header first, then attributes in order, each padded to
/// 4 bytes with zeros; MESSAGE-INTEGRITY and FINGERPRINT are computed over what is there already.
#[derive(Debug)]
pub struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> Writer<'b> {
    /// Starts a message of `class`/`method` with transaction `id`.
    pub fn new(
        buf: &'b mut [u8],
        class: Class,
        method: u16,
        id: TransactionId,
    ) -> Result<Self, Error> {
        if buf.len() < HEADER_LEN {
            return Err(Error::BufferTooSmall);
        }
        let mut m = Message::new_unchecked(&mut buf[..HEADER_LEN]);
        m.set_message_type(message_type(method, class));
        m.set_length(0);
        m.set_magic_cookie();
        m.set_transaction_id(id);
        Ok(Writer {
            buf,
            len: HEADER_LEN,
        })
    }

    /// Reserves an attribute of `kind` with a `value_len`-byte value, updates the length field, and
    /// returns the value's bytes (the padding is zeroed already).
    fn reserve(&mut self, kind: u16, value_len: usize) -> Result<&mut [u8], Error> {
        let padded = (value_len + 3) & !3;
        let end = self.len + 4 + padded;
        if end > self.buf.len() || end - HEADER_LEN > usize::from(u16::MAX) || value_len > 0xFFFF {
            return Err(Error::BufferTooSmall);
        }
        let at = self.len;
        self.buf[at..at + 2].copy_from_slice(&kind.to_be_bytes());
        self.buf[at + 2..at + 4].copy_from_slice(&(value_len as u16).to_be_bytes());
        self.buf[at + 4 + value_len..end].fill(0);
        self.len = end;
        Message::new_unchecked(&mut self.buf[..HEADER_LEN]).set_length((end - HEADER_LEN) as u16);
        Ok(&mut self.buf[at + 4..at + 4 + value_len])
    }

    /// Appends an attribute with the given value.
    pub fn attribute(&mut self, kind: u16, value: &[u8]) -> Result<(), Error> {
        self.reserve(kind, value.len())?.copy_from_slice(value);
        Ok(())
    }

    /// Appends XOR-MAPPED-ADDRESS.
    pub fn xor_mapped_address(&mut self, addr: SocketAddr) -> Result<(), Error> {
        let id = Message::new_unchecked(&self.buf[..HEADER_LEN]).transaction_id();
        emit_xor_address(
            addr,
            id,
            self.reserve(attr::XOR_MAPPED_ADDRESS, address_len(addr))?,
        );
        Ok(())
    }

    /// Appends MAPPED-ADDRESS.
    pub fn mapped_address(&mut self, addr: SocketAddr) -> Result<(), Error> {
        emit_address(addr, self.reserve(attr::MAPPED_ADDRESS, address_len(addr))?);
        Ok(())
    }

    /// Appends SOFTWARE (fewer than 128 characters, RFC 8489 §14.14).
    pub fn software(&mut self, name: &str) -> Result<(), Error> {
        if name.chars().count() >= 128 || name.len() > 763 {
            return Err(Error::Unencodable);
        }
        self.attribute(attr::SOFTWARE, name.as_bytes())
    }

    /// Appends ERROR-CODE.
    pub fn error_code(&mut self, e: ErrorCode<'_>) -> Result<(), Error> {
        if !(300..=699).contains(&e.code) || e.reason.len() > 763 {
            return Err(Error::Unencodable);
        }
        e.emit(self.reserve(attr::ERROR_CODE, e.buffer_len())?)
    }

    /// Appends UNKNOWN-ATTRIBUTES listing `types`.
    pub fn unknown_attributes(&mut self, types: &[u16]) -> Result<(), Error> {
        let v = self.reserve(attr::UNKNOWN_ATTRIBUTES, types.len() * 2)?;
        for (o, t) in v.chunks_exact_mut(2).zip(types) {
            o.copy_from_slice(&t.to_be_bytes());
        }
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 with `key`).
    pub fn message_integrity(&mut self, key: &[u8]) -> Result<(), Error> {
        self.integrity(
            attr::MESSAGE_INTEGRITY,
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            20,
            key,
        )
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256 with `key`, untruncated).
    pub fn message_integrity_sha256(&mut self, key: &[u8]) -> Result<(), Error> {
        self.integrity(attr::MESSAGE_INTEGRITY_SHA256, hmac::HMAC_SHA256, 32, key)
    }

    fn integrity(
        &mut self,
        kind: u16,
        algo: hmac::Algorithm,
        len: usize,
        key: &[u8],
    ) -> Result<(), Error> {
        let at = self.len;
        self.reserve(kind, len)?;
        let tag = integrity_tag(algo, key, &self.buf[..at], at, len);
        self.buf[at + 4..at + 4 + len].copy_from_slice(&tag.as_ref()[..len]);
        Ok(())
    }

    /// Appends FINGERPRINT; it must be the last attribute.
    pub fn fingerprint(&mut self) -> Result<(), Error> {
        let at = self.len;
        self.reserve(attr::FINGERPRINT, 4)?;
        let fp = fingerprint(&self.buf[..at]);
        self.buf[at + 4..at + 8].copy_from_slice(&fp.to_be_bytes());
        Ok(())
    }

    /// Ends the message; returns its length.
    pub fn finish(self) -> usize {
        self.len
    }
}
