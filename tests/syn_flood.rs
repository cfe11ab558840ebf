//! A SYN flood from a raw socket (50,000 SYNs from spoofed sources) does not stop legitimate
//! connections: the SYN queue stays at the backlog, SYN cookies answer the rest, and 100 kernel
//! clients that connect during the flood all complete and echo their data.

mod common;
mod support;

use common::{root_or_skip, Netns, STACK_IP};
use longhaul::{App, Event, Io, Stack};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PORT: u16 = 7;
const STACK_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x42];
const FLOOD: u32 = 50_000;
const CLIENTS: usize = 100;

/// Echoes every connection on `PORT`.
struct Echo {
    buf: Vec<u8>,
}

impl App for Echo {
    fn on_start(&mut self, io: &mut Io) {
        io.listen(PORT).expect("listen");
    }
    fn on_event(&mut self, io: &mut Io, ev: Event) {
        match ev {
            Event::Readable(c) => loop {
                match io.read(c, &mut self.buf) {
                    Ok(0) => {
                        let _ = io.close(c);
                        break;
                    }
                    Ok(n) => {
                        // Small messages: the send buffer always has room for them.
                        let _ = io.write(c, &self.buf[..n]);
                    }
                    Err(_) => break,
                }
            },
            Event::PeerClosed(c) => {
                let _ = io.shutdown(c);
            }
            _ => {}
        }
    }
}

/// Sends raw Ethernet frames on `iface` (inside the caller's namespace).
struct RawSender {
    fd: i32,
    addr: libc::sockaddr_ll,
}

impl RawSender {
    fn open(iface: &str) -> RawSender {
        let name = std::ffi::CString::new(iface).unwrap();
        // SAFETY: plain syscalls on values we own; the name is NUL-terminated.
        let (fd, index) = unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            (fd, libc::if_nametoindex(name.as_ptr()))
        };
        assert!(fd >= 0 && index > 0, "raw socket on {iface}");
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&STACK_MAC);
        RawSender { fd, addr }
    }

    /// Sends `frame`; false when the socket's buffer is full for now.
    fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: `frame` and `addr` outlive the call; the lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        n == frame.len() as isize
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor we opened.
        unsafe { libc::close(self.fd) };
    }
}

#[test]
fn syn_flood_does_not_stop_real_connections() {
    if !root_or_skip("syn_flood_does_not_stop_real_connections") {
        return;
    }
    let ns = Netns::new("synf");
    let mut cfg = ns.config(1);
    cfg.mac(STACK_MAC).unwrap();
    let stack = ns
        .run(move || {
            Stack::start(cfg, |_| Echo {
                buf: vec![0; 64 * 1024],
            })
        })
        .expect("start the stack");

    let flood_sent = Arc::new(AtomicU64::new(0));
    let flooding = Arc::new(AtomicBool::new(true));
    let tap = ns.tap().to_string();
    let (sent, on) = (flood_sent.clone(), flooding.clone());
    let flood = ns.spawn(move || {
        let raw = RawSender::open(&tap);
        for i in 0..FLOOD {
            // Spoofed on-link sources that never answer: 198.18.0.100–249, ports from 1024.
            let src = [198, 18, 0, 100 + (i % 150) as u8];
            let frame = support::syn_frame(
                [2, 0, 0, 0, 0, 0x99],
                STACK_MAC,
                src,
                [198, 18, 0, 2],
                1024 + (i / 150) as u16,
                PORT,
                i.wrapping_mul(2_654_435_761),
            );
            while !raw.send(&frame) {
                std::thread::sleep(Duration::from_micros(200));
            }
            sent.fetch_add(1, Ordering::Relaxed);
        }
        on.store(false, Ordering::Relaxed);
    });

    // Real clients start once the SYN queue is long full.
    assert!(common::wait_for(Duration::from_secs(30), || flood_sent
        .load(Ordering::Relaxed)
        >= 5_000));
    let to = SocketAddrV4::new(STACK_IP, PORT);
    let clients = ns.spawn(move || -> Result<usize, String> {
        let mut ok = 0;
        for i in 0..CLIENTS {
            let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(20))
                .map_err(|e| format!("client {i}: connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let msg = format!("hello {i} through the flood").into_bytes();
            s.write_all(&msg)
                .map_err(|e| format!("client {i}: write: {e}"))?;
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back)
                .map_err(|e| format!("client {i}: read: {e}"))?;
            if back != msg {
                return Err(format!("client {i}: echo differs"));
            }
            ok += 1;
        }
        Ok(ok)
    });
    let done = clients.join().expect("client thread");
    let during_flood = flooding.load(Ordering::Relaxed);
    flood.join().expect("flood thread");
    let s = stack.stats_now()[0];
    println!(
        "flood: {} SYNs; clients done while flooding: {during_flood}; {s:?}",
        flood_sent.load(Ordering::Relaxed)
    );
    assert_eq!(done, Ok(CLIENTS), "{s:?}");
    assert!(
        s.syncookies_sent > 0,
        "the SYN queue overflowed into cookies: {s:?}"
    );
    assert_eq!(s.drop_syn_backlog, 0, "{s:?}");
    // Half-open state never exceeds the backlog (128) plus the real connections in flight.
    assert!(s.conns_current <= 128 + CLIENTS as u64, "{s:?}");
    assert!(stack.stop(), "a core panicked");
}
