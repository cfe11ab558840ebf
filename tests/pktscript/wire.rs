//! Frames the peer builds and reads: Ethernet/IPv4/TCP with options, ICMP errors, ARP replies.
//! Written here rather than borrowed from the engine's `segment` module, so the scripts check the
//! engine's wire code too.

use std::net::Ipv4Addr;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// One TCP option, as written on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpOpt {
    Nop,
    Eol,
    Mss(u16),
    Wscale(u8),
    SackOk,
    Ts(u32, u32),
    Sack(Vec<(u32, u32)>),
}

/// A TCP segment with absolute numbers.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub win: u16,
    pub opts: Vec<TcpOpt>,
    pub payload: Vec<u8>,
}

/// What a frame from the engine is.
pub enum Parsed {
    Tcp(Tcp),
    /// An ARP request for `target` from `sender` (mac, ip).
    ArpRequest {
        sender_mac: [u8; 6],
        sender_ip: Ipv4Addr,
        target: Ipv4Addr,
    },
    Other(String),
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        s += (*b as u32) << 8;
    }
    s
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    sum16(&src.octets()) + sum16(&dst.octets()) + proto as u32 + len as u32
}

pub fn encode_opts(opts: &[TcpOpt]) -> Vec<u8> {
    let mut b = Vec::new();
    for o in opts {
        match o {
            TcpOpt::Nop => b.push(1),
            TcpOpt::Eol => b.push(0),
            TcpOpt::Mss(m) => b.extend_from_slice(&[2, 4, (m >> 8) as u8, *m as u8]),
            TcpOpt::Wscale(w) => b.extend_from_slice(&[3, 3, *w]),
            TcpOpt::SackOk => b.extend_from_slice(&[4, 2]),
            TcpOpt::Ts(v, e) => {
                b.extend_from_slice(&[8, 10]);
                b.extend_from_slice(&v.to_be_bytes());
                b.extend_from_slice(&e.to_be_bytes());
            }
            TcpOpt::Sack(blocks) => {
                b.extend_from_slice(&[5, 2 + 8 * blocks.len() as u8]);
                for (l, r) in blocks {
                    b.extend_from_slice(&l.to_be_bytes());
                    b.extend_from_slice(&r.to_be_bytes());
                }
            }
        }
    }
    while b.len() % 4 != 0 {
        b.push(0);
    }
    b
}

fn decode_opts(mut b: &[u8]) -> Result<Vec<TcpOpt>, String> {
    let mut out = Vec::new();
    while let Some(&kind) = b.first() {
        match kind {
            0 => {
                out.push(TcpOpt::Eol);
                break;
            }
            1 => {
                out.push(TcpOpt::Nop);
                b = &b[1..];
                continue;
            }
            _ => {}
        }
        let len = *b.get(1).ok_or("option without length")? as usize;
        if len < 2 || len > b.len() {
            return Err(format!("option {kind} has bad length {len}"));
        }
        let v = &b[2..len];
        let be32 = |x: &[u8]| u32::from_be_bytes([x[0], x[1], x[2], x[3]]);
        out.push(match (kind, len) {
            (2, 4) => TcpOpt::Mss(u16::from_be_bytes([v[0], v[1]])),
            (3, 3) => TcpOpt::Wscale(v[0]),
            (4, 2) => TcpOpt::SackOk,
            (8, 10) => TcpOpt::Ts(be32(&v[0..4]), be32(&v[4..8])),
            (5, n) if (n - 2) % 8 == 0 => TcpOpt::Sack(
                v.chunks(8)
                    .map(|c| (be32(&c[0..4]), be32(&c[4..8])))
                    .collect(),
            ),
            _ => return Err(format!("unknown option kind {kind} length {len}")),
        });
        b = &b[len..];
    }
    Ok(out)
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) -> [u8; 20] {
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    while f.len() < 60 {
        f.push(0);
    }
    f
}

/// The TCP header and payload bytes of `t`, checksummed for `src` → `dst`.
pub fn tcp_bytes(t: &Tcp, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let opts = encode_opts(&t.opts);
    let hlen = 20 + opts.len();
    let mut b = vec![0u8; hlen];
    b[0..2].copy_from_slice(&t.sport.to_be_bytes());
    b[2..4].copy_from_slice(&t.dport.to_be_bytes());
    b[4..8].copy_from_slice(&t.seq.to_be_bytes());
    b[8..12].copy_from_slice(&t.ack.to_be_bytes());
    b[12] = ((hlen / 4) as u8) << 4;
    b[13] = t.flags;
    b[14..16].copy_from_slice(&t.win.to_be_bytes());
    b[20..].copy_from_slice(&opts);
    b.extend_from_slice(&t.payload);
    let c = fold(pseudo(src, dst, 6, b.len()) + sum16(&b));
    b[16..18].copy_from_slice(&c.to_be_bytes());
    b
}

/// An Ethernet frame carrying `t` from `src` to `dst`.
pub fn tcp_frame(t: &Tcp, src: (Ipv4Addr, [u8; 6]), dst: (Ipv4Addr, [u8; 6])) -> Vec<u8> {
    let seg = tcp_bytes(t, src.0, dst.0);
    let mut ip = ipv4_header(src.0, dst.0, 6, seg.len()).to_vec();
    ip.extend_from_slice(&seg);
    ethernet(dst.1, src.1, 0x0800, &ip)
}

/// An ICMP destination-unreachable (code 4 = fragmentation needed, with `mtu`) from `src` about a
/// segment `inner` that `dst` sent to `src`.
pub fn icmp_unreach_frame(
    code: u8,
    mtu: u16,
    inner: &Tcp,
    src: (Ipv4Addr, [u8; 6]),
    dst: (Ipv4Addr, [u8; 6]),
) -> Vec<u8> {
    let inner_tcp = tcp_bytes(inner, dst.0, src.0);
    let mut quoted = ipv4_header(dst.0, src.0, 6, inner_tcp.len()).to_vec();
    quoted.extend_from_slice(&inner_tcp[..8]);
    let mut icmp = vec![3, code, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&quoted);
    let c = fold(sum16(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = ipv4_header(src.0, dst.0, 1, icmp.len()).to_vec();
    ip.extend_from_slice(&icmp);
    ethernet(dst.1, src.1, 0x0800, &ip)
}

/// An ARP reply telling `to` that `ip` is at `mac`.
pub fn arp_reply(mac: [u8; 6], ip: Ipv4Addr, to_mac: [u8; 6], to_ip: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 2];
    a.extend_from_slice(&mac);
    a.extend_from_slice(&ip.octets());
    a.extend_from_slice(&to_mac);
    a.extend_from_slice(&to_ip.octets());
    ethernet(to_mac, mac, 0x0806, &a)
}

/// Reads a frame the engine sent, checking lengths and checksums.
pub fn parse(f: &[u8]) -> Parsed {
    if f.len() < 14 {
        return Parsed::Other(format!("runt frame of {} bytes", f.len()));
    }
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    let p = &f[14..];
    if ethertype == 0x0806 {
        if p.len() >= 28 && p[7] == 1 {
            let ip = |x: &[u8]| Ipv4Addr::new(x[0], x[1], x[2], x[3]);
            let mut sender_mac = [0u8; 6];
            sender_mac.copy_from_slice(&p[8..14]);
            return Parsed::ArpRequest {
                sender_mac,
                sender_ip: ip(&p[14..18]),
                target: ip(&p[24..28]),
            };
        }
        return Parsed::Other("ARP (not a request)".into());
    }
    if ethertype != 0x0800 || p.len() < 20 {
        return Parsed::Other(format!("ethertype {ethertype:#06x}"));
    }
    let ihl = (p[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([p[2], p[3]]) as usize;
    if ihl < 20 || total < ihl || total > p.len() {
        return Parsed::Other(format!("IPv4 with bad lengths (ihl {ihl}, total {total})"));
    }
    if fold(sum16(&p[..ihl])) != 0 {
        return Parsed::Other("IPv4 header checksum wrong".into());
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let t = &p[ihl..total];
    if p[9] != 6 {
        return Parsed::Other(format!("IPv4 protocol {} from {src} to {dst}", p[9]));
    }
    if t.len() < 20 {
        return Parsed::Other("TCP shorter than its header".into());
    }
    if fold(pseudo(src, dst, 6, t.len()) + sum16(t)) != 0 {
        return Parsed::Other("TCP checksum wrong".into());
    }
    let hlen = (t[12] >> 4) as usize * 4;
    if hlen < 20 || hlen > t.len() {
        return Parsed::Other(format!("TCP data offset {hlen} wrong"));
    }
    let opts = match decode_opts(&t[20..hlen]) {
        Ok(o) => o,
        Err(e) => return Parsed::Other(format!("TCP options: {e}")),
    };
    let be32 = |x: &[u8]| u32::from_be_bytes([x[0], x[1], x[2], x[3]]);
    Parsed::Tcp(Tcp {
        sport: u16::from_be_bytes([t[0], t[1]]),
        dport: u16::from_be_bytes([t[2], t[3]]),
        seq: be32(&t[4..8]),
        ack: be32(&t[8..12]),
        flags: t[13] & 0x3f,
        win: u16::from_be_bytes([t[14], t[15]]),
        opts,
        payload: t[hlen..].to_vec(),
    })
}

/// Flags as the scripts write them (`S.`, `F.`, `R`, `P.`, `.`).
pub fn flags_text(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [(SYN, 'S'), (FIN, 'F'), (RST, 'R'), (PSH, 'P')] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if f & ACK != 0 {
        s.push('.');
    }
    s
}
