//! The control endpoint of a running instance: a unix socket (by default
//! `/run/longhaul/<pid>.sock`, mode 0600) answering a line protocol, one JSON line per request:
//!
//! - `conns` — every connection of every core: `[{"core":0,"state":"Established",...,"tcp":{..}}]`
//! - `stats` — every core's counters: `[{"core":0,"frames_in":..,...}]`
//! - `info`  — the instance: `{"pid":..,"cmdline":"echo --port ...","cores":1}`
//! - `app`   — what the app publishes with [`set_app_stats`] (a JSON object, e.g. the tunnel's
//!   QUIC connections), or `null`
//!
//! Anything else gets one line starting with `error:`. A client may send several requests on one
//! connection; it is closed after 2 s without a request. Clients are served one at a time on the
//! endpoint's own thread, so the cores never wait for a slow client: they answer a control message
//! and go on. `longhaul stat` is the client.

use longhaul::Stack;
use serde::Serialize;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The app's own statistics: called on the control thread for each `app` request.
type AppStats = Box<dyn Fn() -> serde_json::Value + Send + Sync>;
static APP_STATS: OnceLock<AppStats> = OnceLock::new();

/// Lets an app add its own statistics to `longhaul stat` (the `app` request): `f` runs on the
/// control thread for each request, so it should only read what the cores publish (atomics, a
/// snapshot behind a mutex) and never wait for a core. One per process; a second call is ignored.
pub fn set_app_stats(f: impl Fn() -> serde_json::Value + Send + Sync + 'static) {
    let _ = APP_STATS.set(Box::new(f));
}

/// Where instances put their sockets unless told otherwise (`LONGHAUL_RUN_DIR` overrides it, e.g.
/// for tests or for users who cannot write to /run).
pub fn run_dir() -> PathBuf {
    std::env::var_os("LONGHAUL_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/longhaul"))
}

/// The default socket of the instance with this pid.
pub fn default_path(pid: u32) -> PathBuf {
    run_dir().join(format!("{pid}.sock"))
}

/// A request line longer than this is refused (the valid ones are a few bytes).
const MAX_REQUEST: u64 = 256;
/// A connected client that sends nothing for this long is dropped.
const CLIENT_IDLE: Duration = Duration::from_secs(2);
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// A bound control socket; the file is removed when this is dropped.
pub struct Endpoint {
    path: PathBuf,
    listener: UnixListener,
}

impl Endpoint {
    /// Binds `path` (mode 0600), creating its directory if needed. A socket file left by an
    /// instance that is gone is replaced; one that still answers is an error.
    pub fn bind(path: &Path) -> Result<Endpoint, String> {
        let shown = path.display();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(format!(
                        "{shown} is in use by another running instance: choose another --control PATH"
                    ));
                }
                std::fs::remove_file(path)
                    .map_err(|e| format!("cannot remove the stale socket {shown}: {e}"))?;
            }
            Ok(_) => {
                return Err(format!(
                    "{shown} exists and is not a socket: choose another --control PATH"
                ))
            }
            Err(_) => {}
        }
        if let Some(dir) = path.parent() {
            sweep_stale(dir);
        }
        let listener = UnixListener::bind(path).map_err(|e| format!("cannot bind {shown}: {e}"))?;
        let ep = Endpoint {
            path: path.to_path_buf(),
            listener,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot set the mode of {shown}: {e}"))?;
        ep.listener
            .set_nonblocking(true)
            .map_err(|e| format!("{shown}: {e}"))?;
        Ok(ep)
    }

    /// Answers clients until `stop` is set.
    pub fn serve(&self, stack: &Stack, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // A client that misbehaves only loses its own connection.
                    let _ = serve_client(stream, stack);
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    std::thread::sleep(ACCEPT_POLL)
                }
                Err(_) => std::thread::sleep(ACCEPT_POLL),
            }
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_client(stream: UnixStream, stack: &Stack) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_IDLE))?;
    stream.set_write_timeout(Some(CLIENT_IDLE))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_REQUEST + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            if n as u64 > MAX_REQUEST {
                out.write_all(b"error: request too long (try conns, stats, info or app)\n")?;
            }
            // Too long, or the client closed mid-line: either way this connection is done.
            return Ok(());
        }
        let reply = answer(String::from_utf8_lossy(&line).trim(), stack);
        out.write_all(reply.as_bytes())?;
        out.write_all(b"\n")?;
    }
}

/// One connection as `conns` lists it: the core, then [`longhaul::ConnInfo`]'s fields.
#[derive(Serialize)]
struct CoreConn<'a> {
    core: usize,
    #[serde(flatten)]
    info: &'a longhaul::ConnInfo,
}

#[derive(Serialize)]
struct CoreCounters<'a> {
    core: usize,
    #[serde(flatten)]
    stats: &'a longhaul::CoreStats,
}

/// The reply line (without the newline) to one request.
fn answer(request: &str, stack: &Stack) -> String {
    let json = match request {
        "conns" => {
            let conns = stack.connections();
            let list: Vec<CoreConn> = conns
                .iter()
                .map(|(core, info)| CoreConn { core: *core, info })
                .collect();
            serde_json::to_string(&list)
        }
        "stats" => {
            let stats = stack.stats_now();
            let list: Vec<CoreCounters> = stats
                .iter()
                .enumerate()
                .map(|(core, stats)| CoreCounters { core, stats })
                .collect();
            serde_json::to_string(&list)
        }
        "info" => {
            let cmdline: Vec<String> = std::env::args().skip(1).collect();
            serde_json::to_string(&serde_json::json!({
                "pid": std::process::id(),
                "cmdline": cmdline.join(" "),
                "cores": stack.cores(),
            }))
        }
        "app" => serde_json::to_string(&APP_STATS.get().map_or(serde_json::Value::Null, |f| f())),
        other => {
            let shown: String = other.chars().take(40).collect();
            return format!("error: unknown request '{shown}' (try conns, stats, info or app)");
        }
    };
    json.unwrap_or_else(|e| format!("error: cannot encode the reply: {e}"))
}

/// Removes `<pid>.sock` files in `dir` whose instance is gone (killed before it could remove its
/// own), so the run directory does not fill up with dead endpoints.
fn sweep_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive && UnixStream::connect(e.path()).is_err() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
