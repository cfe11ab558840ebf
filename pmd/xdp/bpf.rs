//! The XDP filter program, its socket map and its attachment, through the raw `bpf(2)` syscall.
//!
//! The program is 25 instructions assembled here (no clang, no libbpf): IPv4 frames whose
//! destination is the stack's address, and ARP frames whose target is that address, are redirected
//! through an `XSKMAP` to the AF_XDP socket of the queue they arrived on; everything else is
//! `XDP_PASS`, so the kernel keeps its own traffic on the same interface. It is attached with a
//! BPF link (`BPF_LINK_CREATE`), which the kernel detaches by itself when the link's descriptor is
//! closed — on a clean exit, a panic, or a SIGKILL alike — so nothing is ever left attached.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// `XDP_FLAGS_SKB_MODE` / `XDP_FLAGS_DRV_MODE` from linux/if_link.h.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: i32 = 2;
/// `union bpf_attr` is 144 bytes on current kernels; older ones accept a larger, zero-tailed one.
const ATTR_SIZE: usize = 144;

/// One eBPF instruction, laid out as `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Opcodes used (class | size/op | source).
const LDX_W: u8 = 0x61; // r_dst = *(u32 *)(r_src + off)
const LDX_H: u8 = 0x69; // r_dst = *(u16 *)(r_src + off)
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const ADD64_K: u8 = 0x07;
const JGT_X: u8 = 0x2d;
const JNE_K: u8 = 0x55;
const JEQ32_K: u8 = 0x16; // 32-bit compare: the address does not get sign-extended
const JNE32_K: u8 = 0x56;
const JA: u8 = 0x05;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;

/// A tiny assembler: jumps name a label, resolved when the program is finished.
struct Asm {
    code: Vec<Insn>,
    fixups: Vec<(usize, &'static str)>,
    labels: Vec<(&'static str, usize)>,
}

impl Asm {
    fn new() -> Self {
        Asm {
            code: Vec::new(),
            fixups: Vec::new(),
            labels: Vec::new(),
        }
    }
    fn op(&mut self, i: Insn) {
        self.code.push(i);
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: &'static str) {
        self.fixups.push((self.code.len(), to));
        self.code.push(insn(code, dst, src, 0, imm));
    }
    fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.code.len()));
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, to) in self.fixups {
            let target = self
                .labels
                .iter()
                .find(|(n, _)| *n == to)
                .map(|(_, pc)| *pc)
                .expect("every jump names a defined label");
            self.code[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.code
    }
}

/// The filter for `addr`, redirecting through the map with descriptor `map_fd`.
pub fn filter_program(addr: Ipv4Addr, map_fd: RawFd) -> Vec<Insn> {
    // The address as the 32-bit little-endian load of its network-order bytes reads it.
    let ip = i32::from_le_bytes(addr.octets());
    let mut a = Asm::new();
    a.op(insn(MOV64_X, 6, 1, 0, 0)); // r6 = ctx (struct xdp_md)
    a.op(insn(LDX_W, 2, 6, 0, 0)); // r2 = data
    a.op(insn(LDX_W, 3, 6, 4, 0)); // r3 = data_end
    a.op(insn(MOV64_X, 4, 2, 0, 0));
    a.op(insn(ADD64_K, 4, 0, 0, 34)); // Ethernet + IPv4 header
    a.jump(JGT_X, 4, 3, 0, "pass");
    a.op(insn(LDX_H, 5, 2, 12, 0)); // EtherType, network order
    a.jump(JNE_K, 5, 0, 0x0008, "arp"); // 0x0800 read little-endian
    a.op(insn(LDX_W, 5, 2, 30, 0)); // IPv4 destination
    a.jump(JEQ32_K, 5, 0, ip, "redirect");
    a.jump(JA, 0, 0, 0, "pass");
    a.label("arp");
    a.jump(JNE_K, 5, 0, 0x0608, "pass"); // 0x0806
    a.op(insn(MOV64_X, 4, 2, 0, 0));
    a.op(insn(ADD64_K, 4, 0, 0, 42)); // Ethernet + ARP for IPv4
    a.jump(JGT_X, 4, 3, 0, "pass");
    a.op(insn(LDX_W, 5, 2, 38, 0)); // target protocol address
    a.jump(JNE32_K, 5, 0, ip, "pass");
    a.label("redirect");
    a.op(insn(LDX_W, 2, 6, 16, 0)); // key = rx_queue_index
    a.op(insn(LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, map_fd));
    a.op(insn(0, 0, 0, 0, 0));
    a.op(insn(MOV64_K, 3, 0, 0, XDP_PASS)); // no socket on this queue: to the kernel
    a.op(insn(CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP));
    a.op(insn(EXIT, 0, 0, 0, 0));
    a.label("pass");
    a.op(insn(MOV64_K, 0, 0, 0, XDP_PASS));
    a.op(insn(EXIT, 0, 0, 0, 0));
    a.finish()
}

/// `union bpf_attr` as a zeroed byte block with typed writes at the offsets linux/bpf.h gives.
struct Attr([u8; ATTR_SIZE]);

impl Attr {
    fn new() -> Self {
        Attr([0; ATTR_SIZE])
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn bytes(&mut self, at: usize, v: &[u8]) -> &mut Self {
        self.0[at..at + v.len()].copy_from_slice(v);
        self
    }
    fn call(&mut self, cmd: libc::c_long) -> io::Result<libc::c_long> {
        // SAFETY: the attribute block is a live, writable buffer of ATTR_SIZE bytes; every pointer
        // stored in it points to memory the caller keeps alive for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr(),
                ATTR_SIZE as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
    fn call_fd(&mut self, cmd: libc::c_long) -> io::Result<OwnedFd> {
        let fd = self.call(cmd)?;
        // SAFETY: the bpf() commands used with this return a fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// Creates an `XSKMAP` with `entries` slots (one per queue).
pub fn create_xskmap(entries: u32) -> io::Result<OwnedFd> {
    Attr::new()
        .u32(0, BPF_MAP_TYPE_XSKMAP)
        .u32(4, 4) // key: queue index
        .u32(8, 4) // value: socket descriptor
        .u32(12, entries)
        .bytes(28, b"longhaul_xsks")
        .call_fd(BPF_MAP_CREATE)
}

/// Puts socket `xsk` into slot `queue` of `map`.
pub fn set_xsk(map: &OwnedFd, queue: u32, xsk: RawFd) -> io::Result<()> {
    let key = queue;
    let value = xsk as u32;
    Attr::new()
        .u32(0, map.as_raw_fd() as u32)
        .u64(8, &key as *const u32 as u64)
        .u64(16, &value as *const u32 as u64)
        .call(BPF_MAP_UPDATE_ELEM)
        .map(|_| ())
}

/// Loads `prog` as an XDP program. On a verifier refusal the error carries the verifier's log.
pub fn load_xdp(prog: &[Insn]) -> Result<OwnedFd, (io::Error, String)> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let attempt = |log_level: u32, log: &mut Vec<u8>| {
        let mut a = Attr::new();
        a.u32(0, BPF_PROG_TYPE_XDP)
            .u32(4, prog.len() as u32)
            .u64(8, prog.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .bytes(48, b"longhaul_filter");
        if log_level > 0 {
            a.u32(24, log_level)
                .u32(28, log.len() as u32)
                .u64(32, log.as_mut_ptr() as u64);
        }
        a.call_fd(BPF_PROG_LOAD)
    };
    match attempt(0, &mut log) {
        Ok(fd) => Ok(fd),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            // Load again with the verifier's log, to say why.
            let _ = attempt(1, &mut log);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err((e, String::from_utf8_lossy(&log[..end]).trim().to_string()))
        }
        Err(e) => Err((e, String::new())),
    }
}

/// Attaches `prog` to interface `ifindex` in the mode `flags` selects, as a BPF link.
pub fn attach_link(prog: &OwnedFd, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    Attr::new()
        .u32(0, prog.as_raw_fd() as u32)
        .u32(4, ifindex)
        .u32(8, BPF_XDP)
        .u32(12, flags)
        .call_fd(BPF_LINK_CREATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_their_labels() {
        let p = filter_program(Ipv4Addr::new(198, 18, 0, 2), 7);
        assert_eq!(p.len(), 25);
        // The first bounds check goes to "pass" (index 23: mov r0, XDP_PASS).
        assert_eq!(p[5].code, JGT_X);
        assert_eq!(5 + 1 + p[5].off as usize, 23);
        assert_eq!(p[23], insn(MOV64_K, 0, 0, 0, XDP_PASS));
        // Not IPv4 goes to the ARP branch; a matching IPv4 destination to "redirect".
        assert_eq!(7 + 1 + p[7].off as usize, 11);
        assert_eq!(9 + 1 + p[9].off as usize, 17);
        assert_eq!(p[9].imm, i32::from_le_bytes([198, 18, 0, 2]));
        assert_eq!(p[18].imm, 7);
        assert_eq!(p[18].regs, 1 | (BPF_PSEUDO_MAP_FD << 4));
    }

    #[test]
    fn high_addresses_are_compared_as_32_bits() {
        let p = filter_program(Ipv4Addr::new(198, 18, 0, 200), 3);
        assert_eq!(p[9].code, JEQ32_K);
        assert_eq!(p[9].imm as u32, u32::from_le_bytes([198, 18, 0, 200]));
    }
}
