//! Kernel-side servers the relay tests put behind longhaul (proxy, tunnel): each handles one
//! accepted connection on its own thread.

use super::{fill_pattern, Netns, KERNEL_IP};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};

/// Starts a kernel TCP server on 198.18.0.1:`port` in `ns`; `serve` handles each connection on
/// its own thread. The listener thread lives until the test process ends (the namespace goes
/// first).
pub fn kernel_server(ns: &Netns, port: u16, serve: fn(TcpStream)) {
    let listener =
        ns.run(move || TcpListener::bind(SocketAddrV4::new(KERNEL_IP, port)).expect("bind"));
    ns.spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || serve(s));
        }
    });
}

/// Echoes until the peer's FIN, then half-closes.
pub fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// The body [`http_100mib`] sends.
pub const HTTP_BODY: u64 = 100 << 20;

/// Answers one HTTP request with HTTP_BODY bytes of pattern 1, then closes.
pub fn http_100mib(mut s: TcpStream) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    while r.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Length: {HTTP_BODY}\r\nConnection: close\r\n\r\n"
    );
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    while off < HTTP_BODY {
        let n = (HTTP_BODY - off).min(buf.len() as u64) as usize;
        fill_pattern(1, off, &mut buf[..n]);
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
        off += n as u64;
    }
}

/// Reads five bytes, then resets the connection (SO_LINGER 0 and close).
pub fn read_then_reset(mut s: TcpStream) {
    let mut buf = [0u8; 5];
    let _ = s.read_exact(&mut buf);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a live linger struct of the size given, on a socket we own.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(s);
}
