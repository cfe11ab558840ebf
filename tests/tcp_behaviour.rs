//! TCP behaviour against the kernel that RFCs pin down, one behaviour per test.

mod common;

use common::*;
use longhaul::{App, Event, Io, Stack};
use std::io::Read;
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

/// Says "bye" to every connection and closes first, so longhaul's side ends in TIME-WAIT.
struct Bye;

impl App for Bye {
    fn on_start(&mut self, io: &mut Io) {
        io.listen(7100).unwrap();
    }
    fn on_event(&mut self, io: &mut Io, ev: Event) {
        if let Event::Accepted { conn, .. } = ev {
            io.write(conn, b"bye").unwrap();
            io.close(conn).unwrap();
        }
    }
}

/// A kernel TCP connect from a fixed local port (SO_REUSEADDR), blocking.
fn connect_from(local_port: u16, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor this function owns; results are checked.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        let sa = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let local = sa(KERNEL_IP, local_port);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sa(*to.ip(), to.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

#[test]
fn syn_to_a_connection_in_time_wait_starts_a_new_one() {
    if !root_or_skip("syn_to_a_connection_in_time_wait_starts_a_new_one") {
        return;
    }
    let ns = Netns::new("twreuse");
    let cfg = ns.config(1);
    let stack: Stack = ns.run(move || Stack::start(cfg, |_| Bye)).expect("stack");
    for round in 0..3 {
        let (got, took) = ns.run(|| {
            let start = Instant::now();
            let mut s = connect_from(41000, SocketAddrV4::new(STACK_IP, 7100)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read until EOF");
            (got, start.elapsed())
        });
        assert_eq!(got, b"bye", "round {round}");
        // Without reuse the SYN meets TIME-WAIT and the kernel retries after a second or more.
        assert!(
            took < Duration::from_millis(900),
            "round {round} took {took:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let opened: u64 = stack.stats_now().iter().map(|s| s.conns_opened).sum();
    assert_eq!(opened, 3);
}
