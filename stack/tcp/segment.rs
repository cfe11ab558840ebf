//! A TCP segment header as the core reads and writes it: fields, flags and the options longhaul
//! understands (MSS, window scale, SACK-permitted, SACK blocks, timestamps). Checksums are the
//! engine's business (verified once on receive; filled in after the payload is copied on send).

// Fields and variants carry their RFC 9293 / Linux tcp_info names; the type docs explain them.
#![allow(missing_docs)]

use super::seq::Seq;

/// Longest TCP header (data offset 15 words).
pub const MAX_HEADER_LEN: usize = 60;
/// Fixed part of the TCP header.
pub const BASE_HEADER_LEN: usize = 20;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WS: u8 = 3;
const OPT_SACK_PERM: u8 = 4;
const OPT_SACK: u8 = 5;
const OPT_TS: u8 = 8;

/// Control bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

impl Flags {
    fn from_byte(b: u8) -> Flags {
        Flags {
            syn: b & SYN != 0,
            ack: b & ACK != 0,
            fin: b & FIN != 0,
            rst: b & RST != 0,
            psh: b & PSH != 0,
        }
    }

    fn to_byte(self) -> u8 {
        (self.syn as u8 * SYN)
            | (self.ack as u8 * ACK)
            | (self.fin as u8 * FIN)
            | (self.rst as u8 * RST)
            | (self.psh as u8 * PSH)
    }
}

/// RFC 7323 timestamps option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    pub val: u32,
    pub ecr: u32,
}

/// Up to four SACK blocks `[left, right)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SackBlocks {
    blocks: [(Seq, Seq); 4],
    len: u8,
}

impl SackBlocks {
    /// Appends a block; ignored when four are there already.
    pub fn push(&mut self, left: Seq, right: Seq) {
        if (self.len as usize) < self.blocks.len() {
            self.blocks[self.len as usize] = (left, right);
            self.len += 1;
        }
    }

    /// The blocks, in the order they were given.
    pub fn as_slice(&self) -> &[(Seq, Seq)] {
        &self.blocks[..self.len as usize]
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// No blocks.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The options of one segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamp: Option<Timestamp>,
    pub sack: SackBlocks,
}

impl Options {
    /// Bytes these options take on the wire, padded to 32-bit words, in the layout [`Segment::emit`]
    /// writes.
    pub fn wire_len(&self) -> usize {
        let mut n = 0;
        if self.mss.is_some() {
            n += 4;
        }
        // SACK-permitted shares a word with the timestamps (as Linux lays it out) or gets NOP NOP.
        if self.timestamp.is_some() {
            n += 12;
        } else if self.sack_permitted {
            n += 4;
        }
        if self.wscale.is_some() {
            n += 4;
        }
        if !self.sack.is_empty() {
            n += 4 + 8 * self.sack.len();
        }
        n
    }
}

/// One segment's header. `len` is the payload length (SYN and FIN not included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: Seq,
    /// Meaningful only when `flags.ack` is set.
    pub ack: Seq,
    pub flags: Flags,
    /// The raw (unscaled) window field.
    pub window: u16,
    pub opts: Options,
    pub len: u32,
}

/// Why a TCP header could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than its own header or data offset.
    Truncated,
    /// An option's length runs past the header, or is impossible for its kind.
    BadOption,
}

impl Segment {
    /// Sequence space the segment occupies: payload plus one for SYN and one for FIN.
    pub fn seq_len(&self) -> u32 {
        self.len + self.flags.syn as u32 + self.flags.fin as u32
    }

    /// One past the last sequence number the segment occupies.
    pub fn seq_end(&self) -> Seq {
        self.seq + self.seq_len()
    }

    /// Reads a TCP header and options from `tcp` (header and payload; checksum already checked).
    /// Returns the segment and where its payload starts in `tcp`.
    pub fn parse(tcp: &[u8]) -> Result<(Segment, usize), ParseError> {
        if tcp.len() < BASE_HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let be16 = |i: usize| u16::from_be_bytes([tcp[i], tcp[i + 1]]);
        let be32 = |b: &[u8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let hlen = ((tcp[12] >> 4) as usize) * 4;
        if hlen < BASE_HEADER_LEN || hlen > tcp.len() {
            return Err(ParseError::Truncated);
        }
        let mut seg = Segment {
            src_port: be16(0),
            dst_port: be16(2),
            seq: Seq(be32(tcp, 4)),
            ack: Seq(be32(tcp, 8)),
            flags: Flags::from_byte(tcp[13]),
            window: be16(14),
            opts: Options::default(),
            len: (tcp.len() - hlen) as u32,
        };
        let mut o = &tcp[BASE_HEADER_LEN..hlen];
        while let Some(&kind) = o.first() {
            match kind {
                OPT_END => break,
                OPT_NOP => {
                    o = &o[1..];
                    continue;
                }
                _ => {}
            }
            let Some(&len) = o.get(1) else {
                return Err(ParseError::BadOption);
            };
            let len = len as usize;
            if len < 2 || len > o.len() {
                return Err(ParseError::BadOption);
            }
            let data = &o[2..len];
            match (kind, len) {
                (OPT_MSS, 4) => seg.opts.mss = Some(u16::from_be_bytes([data[0], data[1]])),
                (OPT_WS, 3) => seg.opts.wscale = Some(data[0]),
                (OPT_SACK_PERM, 2) => seg.opts.sack_permitted = true,
                (OPT_TS, 10) => {
                    seg.opts.timestamp = Some(Timestamp {
                        val: be32(data, 0),
                        ecr: be32(data, 4),
                    })
                }
                (OPT_SACK, _) if len >= 10 && (len - 2).is_multiple_of(8) => {
                    for b in data.chunks_exact(8) {
                        seg.opts.sack.push(Seq(be32(b, 0)), Seq(be32(b, 4)));
                    }
                }
                (OPT_MSS | OPT_WS | OPT_SACK_PERM | OPT_TS | OPT_SACK, _) => {
                    return Err(ParseError::BadOption)
                }
                _ => {} // unknown options are skipped (RFC 9293 §3.1)
            }
            o = &o[len..];
        }
        Ok((seg, hlen))
    }

    /// Header length this segment will have on the wire.
    pub fn header_len(&self) -> usize {
        BASE_HEADER_LEN + self.opts.wire_len()
    }

    /// Writes the header (checksum zero) into the front of `buf` and returns its length.
    /// `buf` must hold at least [`Segment::header_len`] bytes.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let hlen = self.header_len();
        debug_assert!(hlen <= MAX_HEADER_LEN && buf.len() >= hlen);
        buf[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        buf[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        buf[4..8].copy_from_slice(&self.seq.0.to_be_bytes());
        let ack = if self.flags.ack { self.ack.0 } else { 0 };
        buf[8..12].copy_from_slice(&ack.to_be_bytes());
        buf[12] = ((hlen / 4) as u8) << 4;
        buf[13] = self.flags.to_byte();
        buf[14..16].copy_from_slice(&self.window.to_be_bytes());
        buf[16..20].fill(0);
        let mut i = BASE_HEADER_LEN;
        let mut put = |bytes: &[u8]| {
            buf[i..i + bytes.len()].copy_from_slice(bytes);
            i += bytes.len();
        };
        let o = &self.opts;
        if let Some(mss) = o.mss {
            let m = mss.to_be_bytes();
            put(&[OPT_MSS, 4, m[0], m[1]]);
        }
        if let Some(ts) = o.timestamp {
            if o.sack_permitted {
                put(&[OPT_SACK_PERM, 2]);
            } else {
                put(&[OPT_NOP, OPT_NOP]);
            }
            put(&[OPT_TS, 10]);
            put(&ts.val.to_be_bytes());
            put(&ts.ecr.to_be_bytes());
        } else if o.sack_permitted {
            put(&[OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2]);
        }
        if let Some(ws) = o.wscale {
            put(&[OPT_NOP, OPT_WS, 3, ws]);
        }
        if !o.sack.is_empty() {
            put(&[OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * o.sack.len() as u8]);
            for &(l, r) in o.sack.as_slice() {
                put(&l.0.to_be_bytes());
                put(&r.0.to_be_bytes());
            }
        }
        debug_assert_eq!(i, hlen);
        hlen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn() -> Segment {
        Segment {
            src_port: 40000,
            dst_port: 80,
            seq: Seq(1000),
            flags: Flags {
                syn: true,
                ..Flags::default()
            },
            window: 65535,
            opts: Options {
                mss: Some(1460),
                wscale: Some(7),
                sack_permitted: true,
                timestamp: Some(Timestamp { val: 5, ecr: 0 }),
                ..Options::default()
            },
            ..Segment::default()
        }
    }

    #[test]
    fn emit_then_parse_round_trips() {
        let mut s = syn();
        let mut buf = [0u8; 60];
        let n = s.emit(&mut buf);
        assert_eq!(
            n, 40,
            "Linux's SYN layout: 20 + MSS 4 + SACKOK/TS 12 + NOP/WS 4"
        );
        let (p, hlen) = Segment::parse(&buf[..n]).unwrap();
        assert_eq!(hlen, 40);
        assert_eq!(p, s);

        s.flags = Flags {
            ack: true,
            ..Flags::default()
        };
        s.opts = Options {
            timestamp: Some(Timestamp { val: 9, ecr: 7 }),
            ..Options::default()
        };
        for i in 0..3 {
            s.opts.sack.push(Seq(100 * i), Seq(100 * i + 50));
        }
        s.ack = Seq(77);
        let n = s.emit(&mut buf);
        assert_eq!(n, 20 + 12 + 4 + 24);
        assert_eq!(Segment::parse(&buf[..n]).unwrap().0, s);
    }

    #[test]
    fn rejects_truncated_and_bad_options() {
        let mut buf = [0u8; 60];
        let n = syn().emit(&mut buf);
        assert_eq!(Segment::parse(&buf[..19]), Err(ParseError::Truncated));
        assert_eq!(Segment::parse(&buf[..n - 4]), Err(ParseError::Truncated));
        // MSS option claiming length 3.
        buf[21] = 3;
        assert_eq!(Segment::parse(&buf[..n]), Err(ParseError::BadOption));
        // An option running past the header.
        buf[20] = 30;
        buf[21] = 200;
        assert_eq!(Segment::parse(&buf[..n]), Err(ParseError::BadOption));
    }

    #[test]
    fn four_sack_blocks_parse() {
        let mut s = syn();
        s.flags.syn = false;
        s.flags.ack = true;
        s.opts = Options::default();
        for i in 0..4 {
            s.opts.sack.push(Seq(10 * i), Seq(10 * i + 5));
        }
        let mut buf = [0u8; 60];
        let n = s.emit(&mut buf);
        assert_eq!(Segment::parse(&buf[..n]).unwrap().0.opts.sack.len(), 4);
    }
}
