//! DPDK's Environment Abstraction Layer: initialised once per process, cleaned up once.
//!
//! `rte_eal_init` prints a dozen lines on success and its reasons on failure (usage text on
//! stdout, `EAL:` log lines), and pins the calling thread to the main lcore. Here its output is
//! captured (stdout and stderr point at a memfd during the call), failures become one line saying
//! what to change, the caller's CPU affinity is restored, and later DPDK log lines go to stderr so
//! they never mix with an app's stdout. `LONGHAUL_DPDK_LOG=1` replays the captured output.

use super::sys;
use super::DpdkError;
use std::ffi::{CStr, CString};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Never,
    Running,
    CleanedUp,
}

/// `rte_eal_init` may run once per process, and nothing may follow `rte_eal_cleanup`.
static STATE: Mutex<State> = Mutex::new(State::Never);

/// Initialises the EAL with `args` (without the program name); returns what it printed.
pub fn init(args: &[String]) -> Result<String, DpdkError> {
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if *state != State::Never {
        return Err(DpdkError::Eal(
            "DPDK's EAL was already initialised in this process (rte_eal_init runs once per process): start one DPDK stack per process".into(),
        ));
    }
    let mut argv_owned = vec![CString::new("longhaul").expect("no NUL")];
    for a in args {
        argv_owned.push(CString::new(a.as_str()).map_err(|_| {
            DpdkError::Eal(format!("EAL argument {a:?} contains a NUL byte: remove it"))
        })?);
    }
    // EAL keeps pointers into argv (getopt permutes it, some options are kept as given): the
    // strings and the array live for the rest of the process.
    let argv_owned: &'static mut [CString] = Vec::leak(argv_owned);
    let argv: &'static mut [*mut libc::c_char] = Vec::leak(
        argv_owned
            .iter_mut()
            .map(|s| s.as_ptr() as *mut libc::c_char)
            .collect(),
    );

    let affinity = Affinity::save();
    let capture = Capture::begin();
    // SAFETY: fdopen on our own stderr descriptor; the FILE lives for the process. Log lines go
    // there instead of stdout and syslog (EAL's default), also after init.
    unsafe {
        let err = libc::fdopen(2, c"a".as_ptr());
        if !err.is_null() {
            sys::rte_openlog_stream(err.cast());
        }
    }
    // SAFETY: argv holds argc valid NUL-terminated strings that outlive the process's use of them.
    let rc = unsafe { sys::rte_eal_init(argv.len() as libc::c_int, argv.as_mut_ptr()) };
    // SAFETY: lh_errno reads the calling thread's rte_errno.
    let errno = unsafe { sys::lh_errno() };
    let output = capture.map(Capture::end).unwrap_or_default();
    affinity.restore();
    let replay = std::env::var_os("LONGHAUL_DPDK_LOG").is_some_and(|v| v != "0");
    if replay {
        eprint!("{output}");
    }
    if rc < 0 {
        // A failed rte_eal_init cannot be retried either.
        *state = State::CleanedUp;
        return Err(DpdkError::Eal(explain_failure(args, errno, &output)));
    }
    *state = State::Running;
    Ok(output)
}

/// Releases what the EAL holds. Called once, after the last port is closed.
pub fn cleanup() {
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if *state == State::Running {
        // SAFETY: the EAL was initialised and every port and pool is released; nothing calls DPDK
        // after this (the state forbids a second init).
        unsafe { sys::rte_eal_cleanup() };
        *state = State::CleanedUp;
    }
}

/// The text of DPDK's error `errno`.
pub fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    unsafe { CStr::from_ptr(sys::rte_strerror(errno)) }
        .to_string_lossy()
        .into_owned()
}

/// The lines of EAL output worth reading: log lines (`EAL: ...`, `driver_function(): ...`) and
/// getopt's complaints, not the usage text.
fn log_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("EAL:") || l.starts_with("longhaul:") || l.contains("(): "))
        .collect()
}

/// Lines that say that something failed but not why.
fn is_generic(line: &str) -> bool {
    [
        "Invalid 'command line' arguments",
        "FATAL",
        "Cannot init",
        "probe failed",
        "Detected",
        "Multi-process socket",
        "IOVA",
        "TELEMETRY",
        "Please see",
    ]
    .iter()
    .any(|g| line.contains(g))
}

/// A log line without its `EAL: ` or `function(): ` prefix and final full stop.
fn bare(line: &str) -> &str {
    let l = line.trim_start_matches("EAL:").trim_start();
    let l = match l.find("(): ") {
        Some(i) if !l[..i].contains(' ') => &l[i + 4..],
        _ => l,
    };
    l.trim_end_matches('.')
}

/// The most specific reason in the log: its last line that is not generic (and not `skip`).
fn reason<'a>(lines: &[&'a str], skip: impl Fn(&str) -> bool) -> &'a str {
    lines
        .iter()
        .rev()
        .find(|l| !is_generic(l) && !skip(l))
        .map(|l| bare(l))
        .unwrap_or("")
}

/// One line from what `rte_eal_init` printed, its `rte_errno` and the arguments.
fn explain_failure(args: &[String], errno: i32, output: &str) -> String {
    let lines = log_lines(output);
    if lines
        .iter()
        .any(|l| l.to_ascii_lowercase().contains("hugepage"))
    {
        return "DPDK found no usable hugepages: reserve some (echo 512 > /proc/sys/vm/nr_hugepages; mount -t hugetlbfs nodev /dev/hugepages) or add --no-huge -m 512 to the EAL arguments".into();
    }
    if let Some(m) = explain_device(&lines) {
        return m;
    }
    let detail = reason(&lines, |_| false);
    if errno == libc::EACCES || output.contains("Permission denied") {
        return format!(
            "DPDK was refused access ({detail}): run as root, or give longhaul CAP_SYS_ADMIN, CAP_IPC_LOCK and CAP_NET_RAW"
        );
    }
    if errno == libc::EINVAL || output.contains("Usage:") {
        let why = if detail.is_empty() {
            "see dpdk-testpmd --help for the EAL options"
        } else {
            detail.trim_start_matches("longhaul: ")
        };
        return format!("bad EAL arguments '{}': {why}", args.join(" "));
    }
    format!(
        "DPDK EAL initialisation failed ({}){}{detail}",
        strerror(errno),
        if detail.is_empty() { "" } else { ": " }
    )
}

/// Why no port exists after a successful `rte_eal_init` whose `output` is given: a device that
/// failed to probe, or none asked for.
pub fn explain_no_port(output: &str) -> String {
    explain_device(&log_lines(output)).unwrap_or_else(|| {
        "DPDK found no Ethernet port: add -a PCI_ADDRESS of a NIC bound to vfio-pci (dpdk-devbind.py), or a virtual device such as --vdev=net_tap0,iface=lh0".into()
    })
}

/// A device that failed to parse or probe, with the driver's reason.
fn explain_device(lines: &[&str]) -> Option<String> {
    const PATTERNS: [(&str, &str); 4] = [
        ("failed to initialize ", " device"),
        ("failed to parse device \"", "\""),
        ("Driver cannot attach the device (", ")"),
        ("Cannot find device (", ")"),
    ];
    let names_device = |l: &str| PATTERNS.iter().any(|(pre, _)| l.contains(pre));
    let dev = lines.iter().find_map(|l| {
        PATTERNS.iter().find_map(|(pre, post)| {
            let rest = &l[l.find(pre)? + pre.len()..];
            Some(rest[..rest.find(post)?].to_string())
        })
    })?;
    let why = if lines.iter().any(|l| l.contains("failed to parse device")) {
        "no driver of that name is loaded".to_string()
    } else {
        reason(lines, names_device).to_string()
    };
    Some(format!(
        "DPDK could not create device {dev} ({why}): check the driver name and its arguments, e.g. --vdev=net_tap0,iface=lh0 or --vdev=net_af_packet0,iface=eth1"
    ))
}

/// The calling thread's CPU affinity, restored after `rte_eal_init` pinned it to the main lcore.
struct Affinity(Option<libc::cpu_set_t>);

impl Affinity {
    fn save() -> Affinity {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let ok =
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0;
            Affinity(ok.then_some(set))
        }
    }

    fn restore(self) {
        if let Some(set) = self.0 {
            // SAFETY: set is a live cpu_set_t; applies to the calling thread only.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        }
    }
}

/// stdout and stderr redirected into a memfd for the duration of `rte_eal_init` (or another call
/// whose complaints are expected and handled).
pub(super) struct Capture {
    file: std::fs::File,
    saved_out: OwnedFd,
    saved_err: OwnedFd,
}

impl Capture {
    pub(super) fn begin() -> Option<Capture> {
        // SAFETY: plain syscalls on descriptors we own or the process's 1 and 2; every result is
        // checked and the originals are kept to be put back by `end`.
        unsafe {
            libc::fflush(std::ptr::null_mut());
            let mfd = libc::memfd_create(c"longhaul-eal-log".as_ptr(), libc::MFD_CLOEXEC);
            if mfd < 0 {
                return None;
            }
            let file = std::fs::File::from_raw_fd(mfd);
            let out = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
            let err = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3);
            if out < 0 || err < 0 {
                for fd in [out, err] {
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
                return None;
            }
            let (saved_out, saved_err) = (OwnedFd::from_raw_fd(out), OwnedFd::from_raw_fd(err));
            libc::dup2(file.as_raw_fd(), 1);
            libc::dup2(file.as_raw_fd(), 2);
            Some(Capture {
                file,
                saved_out,
                saved_err,
            })
        }
    }

    pub(super) fn end(mut self) -> String {
        // SAFETY: flushes C stdio, then puts the saved descriptors back on 1 and 2.
        unsafe {
            libc::fflush(std::ptr::null_mut());
            libc::dup2(self.saved_out.as_raw_fd(), 1);
            libc::dup2(self.saved_err.as_raw_fd(), 2);
        }
        let mut text = String::new();
        if self.file.seek(SeekFrom::Start(0)).is_ok() {
            let mut bytes = Vec::new();
            let _ = self.file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_become_one_line() {
        let args = vec!["--vdev=net_bogus0".to_string()];
        let hp = "EAL: No free 2048 kB hugepages reported on node 0\nEAL: FATAL: Cannot get hugepage information.\nEAL: Cannot get hugepage information.\n";
        let m = explain_failure(&args, libc::EACCES, hp);
        assert!(m.contains("--no-huge"), "{m}");
        let vdev = "EAL: failed to parse device \"net_bogus0\"\nEAL: Unable to parse device 'net_bogus0'\n";
        let m = explain_failure(&args, libc::ENODEV, vdev);
        assert!(
            m.contains("could not create device net_bogus0 (no driver"),
            "{m}"
        );
        let probe = "EAL: Selected IOVA mode 'VA'\nrte_pmd_init_internals(): net_af_packet0: ioctl failed (SIOCGIFINDEX):No such device\nvdev_probe(): failed to initialize net_af_packet0 device\nEAL: Bus (vdev) probe failed.\n";
        let m = explain_no_port(probe);
        assert!(
            m.contains(
                "net_af_packet0 (net_af_packet0: ioctl failed (SIOCGIFINDEX):No such device)"
            ),
            "{m}"
        );
        assert!(explain_no_port("EAL: Detected CPU lcores: 2\n").contains("no Ethernet port"));
        let lcore = "EAL: lcore 99 unavailable\nEAL: invalid core list, please check specified cores are part of 0-1\nUsage: longhaul [options]\n  --huge-dir  Directory where hugetlbfs is mounted\nEAL: Invalid 'command line' arguments.\n";
        let m = explain_failure(&args, libc::EINVAL, lcore);
        assert!(
            m.ends_with("invalid core list, please check specified cores are part of 0-1"),
            "{m}"
        );
        let usage = "longhaul: unrecognized option '--bogus'\nEAL: Detected CPU lcores: 2\nlonghaul: unrecognized option '--bogus'\n\nUsage: longhaul [options]\n\nEAL common options:\n  --no-huge  Use malloc instead of hugetlbfs\nEAL: Invalid 'command line' arguments.\n";
        let m = explain_failure(&args, libc::EINVAL, usage);
        assert_eq!(
            m,
            "bad EAL arguments '--vdev=net_bogus0': unrecognized option '--bogus'"
        );
        for m in [
            explain_failure(&args, libc::EINVAL, usage),
            explain_failure(&args, libc::EIO, ""),
        ] {
            assert!(!m.contains('\n'), "{m}");
        }
    }
}
