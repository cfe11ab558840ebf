//! `longhaul httpd` with curl, wrk and raw kernel sockets as clients.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// A document root with a few files, removed on drop.
struct Root(PathBuf);

impl Root {
    fn new(tag: &str) -> Root {
        let dir = std::env::temp_dir().join(format!("lh-httpd-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let mut big = vec![0u8; 5 << 20];
        fill_pattern(11, 0, &mut big);
        std::fs::write(dir.join("big.bin"), &big).unwrap();
        std::fs::write(dir.join("sub/small.txt"), b"hello from longhaul httpd\n").unwrap();
        std::fs::write(dir.join("index.html"), b"<h1>longhaul</h1>\n").unwrap();
        Root(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn url(path: &str) -> String {
    format!("http://{STACK_IP}:80{path}")
}

fn in_ns(ns: &Netns, cmd: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(cmd)
        .output()
        .expect("run a command in the namespace")
}

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Sends `request` raw and returns everything the server sends until it closes (or 3 s pass).
fn raw(ns: &Netns, request: Vec<u8>) -> String {
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddrV4::new(STACK_IP, 80).into(),
            Duration::from_secs(5),
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = s.write_all(&request);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

fn start(tag: &str) -> (Netns, Root, Proc) {
    let ns = Netns::new(tag);
    let root = Root::new(tag);
    let p = ns.spawn_longhaul(
        "httpd",
        &["--listen", "80", "--root", root.path(), "--quiet"],
    );
    (ns, root, p)
}

#[test]
fn curl_gets_files_byte_exact() {
    if !root_or_skip("curl_gets_files_byte_exact") {
        return;
    }
    let (ns, root, _p) = start("hcurl");
    for file in ["big.bin", "sub/small.txt", "index.html"] {
        let out = in_ns(
            &ns,
            &["curl", "-sS", "--max-time", "20", &url(&format!("/{file}"))],
        );
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = std::fs::read(root.0.join(file)).unwrap();
        assert_eq!(out.stdout.len(), want.len(), "{file}");
        assert_eq!(sha256(&out.stdout), sha256(&want), "{file}");
    }
    // A directory serves its index.html.
    let out = in_ns(&ns, &["curl", "-sS", &url("/")]);
    assert_eq!(out.stdout, b"<h1>longhaul</h1>\n");
    // Generated payload of the asked size.
    let out = in_ns(&ns, &["curl", "-sS", &url("/bytes/100000")]);
    assert_eq!(out.stdout.len(), 100_000);
    assert!(out.stdout.iter().all(|&b| b == b'a'));
}

#[test]
fn keep_alive_reuses_the_connection_and_pipelining_works() {
    if !root_or_skip("keep_alive_reuses_the_connection_and_pipelining_works") {
        return;
    }
    let (ns, _root, _p) = start("hkeep");
    let out = in_ns(
        &ns,
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects}\n",
            &url("/sub/small.txt"),
            &url("/bytes/5000"),
            &url("/index.html"),
        ],
    );
    let counts = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        counts.lines().collect::<Vec<_>>(),
        ["1", "0", "0"],
        "one connection for three requests"
    );
    // Three requests in one write: three responses in order, then the close the last asked for.
    let reply = raw(
        &ns,
        b"GET /bytes/3 HTTP/1.1\r\nHost: x\r\n\r\nGET /sub/small.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
    );
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 3, "{reply}");
    let a = reply.find("\r\n\r\naaa").unwrap();
    let b = reply.find("hello from longhaul httpd").unwrap();
    let c = reply.rfind("\r\n\r\naa").unwrap();
    assert!(a < b && b < c, "responses in request order: {reply}");
}

#[test]
fn bad_requests_get_the_right_status() {
    if !root_or_skip("bad_requests_get_the_right_status") {
        return;
    }
    let (ns, _root, _p) = start("hbad");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage\r\n\r\n".to_vec(), "400"),
        (
            b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "403",
        ),
        (
            b"GET /sub/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "403",
        ),
        (
            b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "404",
        ),
        (
            b"POST /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999\r\n\r\n".to_vec(),
            "413",
        ),
        (
            b"DELETE /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            "405",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(20_000)
            )
            .into_bytes(),
            "431",
        ),
        (
            format!("GET / HTTP/1.1\r\n{}\r\n", "X-H: 1\r\n".repeat(100)).into_bytes(),
            "431",
        ),
    ];
    for (req, status) in cases {
        let reply = raw(&ns, req.clone());
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status} ")),
            "{}… → {reply:?}",
            String::from_utf8_lossy(&req[..req.len().min(40)])
        );
    }
    // The server is still fine after all of that.
    let out = in_ns(&ns, &["curl", "-sS", &url("/sub/small.txt")]);
    assert_eq!(out.stdout, b"hello from longhaul httpd\n");
}

#[test]
fn wrk_200_connections_without_socket_errors() {
    if !root_or_skip("wrk_200_connections_without_socket_errors") {
        return;
    }
    let (ns, _root, _p) = start("hwrk");
    let out = in_ns(
        &ns,
        &[
            "wrk",
            "-t",
            "2",
            "-c",
            "200",
            "-d",
            "3s",
            &url("/bytes/1024"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("Socket errors"), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(requests > 1000, "{text}");
}
