//! The iperf3 control protocol, without I/O: message codes, the parameter and result documents,
//! and the two ends of the control connection as state machines ([`ServerCtl`], [`ClientCtl`]).
//!
//! The control connection carries, in order: the client's 37-byte cookie (36 characters from
//! `a-z2-7` and a NUL), one-byte state codes, and JSON documents each preceded by their length as a
//! 4-byte big-endian integer. A server that refuses a test sends `SERVER_ERROR` followed by two
//! 4-byte big-endian integers: iperf3's error number and an errno. Data connections start with the
//! same cookie; the test's streams then carry bytes only.
//!
//! Both machines follow the sans-IO shape: `handle_input(bytes)` (append what the connection
//! delivered; `&[]` just re-runs the parser), `poll_action()` (the next thing the app must act on,
//! `None` when more input or an app call is needed), `poll_transmit()` (bytes to write on the
//! control connection). App calls (`streams_ready`, `send_results`, `test_end`) queue output.
//! Nothing here reads a clock or touches a socket; parse failures become a `Failed` action.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Cookie length on the wire, NUL included.
pub const COOKIE_SIZE: usize = 37;
/// The default iperf3 port.
pub const DEFAULT_PORT: u16 = 5201;
/// Default TCP block size (iperf3's `DEFAULT_TCP_BLKSIZE`).
pub const DEFAULT_BLKSIZE: usize = 128 * 1024;
/// Largest block size accepted (iperf3's `MAX_BLOCKSIZE`).
pub const MAX_BLKSIZE: usize = 1024 * 1024;
/// Most parallel streams accepted (iperf3's `MAX_STREAMS`).
pub const MAX_STREAMS: usize = 128;
/// Longest JSON document accepted on the control connection.
const MAX_JSON: usize = 1 << 20;

/// State codes (`signed char` on the wire).
pub mod state {
    pub const TEST_START: i8 = 1;
    pub const TEST_RUNNING: i8 = 2;
    pub const TEST_END: i8 = 4;
    pub const PARAM_EXCHANGE: i8 = 9;
    pub const CREATE_STREAMS: i8 = 10;
    pub const SERVER_TERMINATE: i8 = 11;
    pub const CLIENT_TERMINATE: i8 = 12;
    pub const EXCHANGE_RESULTS: i8 = 13;
    pub const DISPLAY_RESULTS: i8 = 14;
    pub const IPERF_START: i8 = 15;
    pub const IPERF_DONE: i8 = 16;
    pub const ACCESS_DENIED: i8 = -1;
    pub const SERVER_ERROR: i8 = -2;
}

/// iperf3 error numbers (`i_errno`) this tool sends or explains.
pub mod ierr {
    /// "an option you are trying to set is not implemented yet"
    pub const IEUNIMP: i32 = 13;
    /// "received an unknown control message"
    pub const IEMESSAGE: i32 = 110;
    /// "unable to receive parameters from client"
    pub const IERECVPARAMS: i32 = 114;
}

/// What iperf3 prints for an error number (the ones a server is likely to send).
pub fn ierr_text(code: i32) -> String {
    let s = match code {
        5 => "test duration too long",
        6 => "number of parallel streams too large",
        7 => "block size too large",
        13 => "an option you are trying to set is not implemented yet",
        18 => "no SCTP support available",
        20 => "block size invalid",
        25 => "cannot be both reverse and bidirectional",
        27 => "total required bandwidth is larger than server limit",
        100 => "unable to create a new test",
        101 => "test initialization failed",
        102 => "unable to start listener for connections",
        109 => "control socket has closed unexpectedly",
        110 => "received an unknown control message",
        114 => "unable to receive parameters from client",
        117 => "unable to receive results",
        119 => "the client has terminated",
        120 => "the server has terminated",
        121 => "the server is busy running a test. try again later",
        131 => "protocol does not exist",
        142 => "test authorization failed",
        _ => return format!("iperf3 error {code}"),
    };
    s.to_string()
}

/// A fresh random cookie: 36 characters from `a-z2-7` and a NUL.
pub fn make_cookie(random: &[u8; COOKIE_SIZE]) -> [u8; COOKIE_SIZE] {
    const CHARS: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut c = [0u8; COOKIE_SIZE];
    for (o, r) in c.iter_mut().zip(random.iter()).take(COOKIE_SIZE - 1) {
        *o = CHARS[(*r % 32) as usize];
    }
    c
}

/// The cookie as text (without the NUL), for messages.
pub fn cookie_text(c: &[u8; COOKIE_SIZE]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(COOKIE_SIZE);
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// A test as the server runs it, taken from the client's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct TestParams {
    /// Seconds the client will run (0: until bytes or blocks are done).
    pub time_secs: u64,
    /// Parallel streams per direction.
    pub parallel: usize,
    /// The server sends (client's `-R`).
    pub reverse: bool,
    /// Both directions at once (client's `--bidir`).
    pub bidir: bool,
    /// Bytes per write.
    pub blksize: usize,
    /// TCP_NODELAY on the data streams.
    pub nodelay: bool,
    /// The client wants the server's text output in the results.
    pub get_server_output: bool,
    /// The client's version string, if it sent one.
    pub client_version: Option<String>,
}

impl TestParams {
    /// Streams the client connects, in the order the server assigns them: `true` = the server sends.
    /// iperf3 clients connect their sending streams first, so the server's receivers come first.
    pub fn stream_directions(&self) -> Vec<bool> {
        if self.bidir {
            let mut v = vec![false; self.parallel];
            v.extend(std::iter::repeat_n(true, self.parallel));
            v
        } else {
            vec![self.reverse; self.parallel]
        }
    }
}

/// Why a server refuses a test: the text it prints and the error it sends to the client.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// What the server prints.
    pub reason: String,
    /// iperf3 error number sent to the client.
    pub ierr: i32,
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Checks the client's parameter document. Only TCP tests that this tool can run faithfully are
/// accepted; everything else (UDP, SCTP, pacing on our side, options it cannot honour, keys it does
/// not know) is refused with a reason naming the option.
pub fn parse_params(doc: &Map<String, Value>) -> Result<TestParams, Refusal> {
    let refuse = |reason: String| Refusal {
        reason,
        ierr: ierr::IEUNIMP,
    };
    if doc.contains_key("udp") {
        return Err(refuse(
            "UDP tests (-u) are not supported: longhaul perf does TCP only".into(),
        ));
    }
    if doc.contains_key("sctp") {
        return Err(refuse(
            "SCTP tests (--sctp) are not supported: longhaul perf does TCP only".into(),
        ));
    }
    let flag = |k: &str| doc.get(k).is_some_and(|v| !matches!(v, Value::Bool(false)));
    let int = |k: &str| doc.get(k).and_then(num).unwrap_or(0.0);
    let reverse = flag("reverse");
    let bidir = flag("bidirectional");
    let mut unsupported = Vec::new();
    for (k, v) in doc {
        let nonzero = match v {
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::Bool(b) => *b,
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        match k.as_str() {
            // Understood and honoured (or irrelevant to a TCP receiver/sender on our side).
            "tcp" | "time" | "num" | "blockcount" | "parallel" | "reverse" | "bidirectional"
            | "len" | "nodelay" | "client_version" | "title" | "extra_data" | "server_affinity"
            | "get_server_output" | "repeating_payload" | "zerocopy" | "congestion_used"
            | "pacing_timer" => {}
            // Zero means "not set".
            "omit" | "MSS" | "window" | "TOS" | "flowlabel" | "fqrate" | "burst"
            | "dont_fragment" | "udp_counters_64bit" => {
                if nonzero {
                    unsupported.push(k.clone());
                }
            }
            // Pacing is the sender's job: fine when the client sends, not when we do.
            "bandwidth" => {
                if nonzero && (reverse || bidir) {
                    unsupported.push("bandwidth (-b with -R/--bidir)".into());
                }
            }
            "congestion" => {
                if !v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("cubic")) {
                    unsupported.push(format!("congestion {v} (-C; only cubic)"));
                }
            }
            "authtoken" => unsupported.push("authentication".into()),
            other => unsupported.push(format!("unknown option '{other}'")),
        }
    }
    if !unsupported.is_empty() {
        return Err(refuse(format!(
            "unsupported options from the client: {}",
            unsupported.join(", ")
        )));
    }
    if !flag("tcp") {
        return Err(Refusal {
            reason: "the client asked for no protocol this server knows (expected tcp)".into(),
            ierr: 131,
        });
    }
    if reverse && bidir {
        return Err(Refusal {
            reason: "the client asked for both reverse and bidirectional".into(),
            ierr: 25,
        });
    }
    let parallel = int("parallel");
    if !(1.0..=MAX_STREAMS as f64).contains(&parallel) {
        return Err(Refusal {
            reason: format!("bad number of parallel streams {parallel} (1 to {MAX_STREAMS})"),
            ierr: 6,
        });
    }
    let len = int("len");
    let blksize = if len == 0.0 {
        DEFAULT_BLKSIZE
    } else if (1.0..=MAX_BLKSIZE as f64).contains(&len) {
        len as usize
    } else {
        return Err(Refusal {
            reason: format!("bad block size {len} (1 to {MAX_BLKSIZE})"),
            ierr: 7,
        });
    };
    let time = int("time");
    if !(0.0..=86_400.0).contains(&time) {
        return Err(Refusal {
            reason: format!("bad duration {time}"),
            ierr: 5,
        });
    }
    Ok(TestParams {
        time_secs: time as u64,
        parallel: parallel as usize,
        reverse,
        bidir,
        blksize,
        nodelay: flag("nodelay"),
        get_server_output: flag("get_server_output"),
        client_version: doc
            .get("client_version")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    })
}

/// The parameter document a client sends.
pub fn params_doc(time_secs: u64, parallel: usize, reverse: bool, blksize: usize) -> Value {
    let mut m = Map::new();
    m.insert("tcp".into(), Value::Bool(true));
    m.insert("omit".into(), 0.into());
    m.insert("time".into(), time_secs.into());
    m.insert("num".into(), 0.into());
    m.insert("blockcount".into(), 0.into());
    m.insert("parallel".into(), parallel.into());
    if reverse {
        m.insert("reverse".into(), Value::Bool(true));
    }
    m.insert("len".into(), blksize.into());
    m.insert("pacing_timer".into(), 1000.into());
    m.insert(
        "client_version".into(),
        concat!("longhaul-", env!("CARGO_PKG_VERSION")).into(),
    );
    Value::Object(m)
}

/// One stream in a results document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamResult {
    #[serde(deserialize_with = "lenient_i64")]
    pub id: i64,
    #[serde(deserialize_with = "lenient_u64")]
    pub bytes: u64,
    #[serde(deserialize_with = "lenient_i64")]
    pub retransmits: i64,
    pub jitter: f64,
    #[serde(deserialize_with = "lenient_i64")]
    pub errors: i64,
    #[serde(deserialize_with = "lenient_i64")]
    pub packets: i64,
    #[serde(default)]
    pub start_time: f64,
    #[serde(default)]
    pub end_time: f64,
}

/// A byte count as cJSON may print it: an integer, or a float such as `1e+16`.
fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    n.as_u64()
        .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        .ok_or_else(|| serde::de::Error::custom(format!("bad byte count {n}")))
}

/// A count that may be -1 printed as an unsigned 64-bit number (some cJSON builds do that), or a
/// float.
fn lenient_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    n.as_i64()
        .or_else(|| n.as_u64().map(|u| u as i64))
        .or_else(|| n.as_f64().map(|f| f as i64))
        .ok_or_else(|| serde::de::Error::custom(format!("bad count {n}")))
}

/// The results document both ends exchange at the end of a test.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub cpu_util_total: f64,
    pub cpu_util_user: f64,
    pub cpu_util_system: f64,
    #[serde(deserialize_with = "lenient_i64")]
    pub sender_has_retransmits: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub congestion_used: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_output_text: Option<String>,
    pub streams: Vec<StreamResult>,
}

/// Incoming control bytes and the typed reads the protocol needs.
#[derive(Default, Debug)]
struct Inbox {
    buf: Vec<u8>,
}

enum Read<T> {
    Ready(T),
    More,
    Bad(String),
}

impl Inbox {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        if self.buf.len() < n {
            return None;
        }
        Some(self.buf.drain(..n).collect())
    }

    fn state(&mut self) -> Option<i8> {
        self.take(1).map(|b| b[0] as i8)
    }

    fn json<T: serde::de::DeserializeOwned>(&mut self) -> Read<T> {
        if self.buf.len() < 4 {
            return Read::More;
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_JSON {
            return Read::Bad(format!("JSON document of {len} bytes is too long"));
        }
        if self.buf.len() < 4 + len {
            return Read::More;
        }
        let doc = self.take(4 + len).expect("checked length");
        match serde_json::from_slice(&doc[4..]) {
            Ok(v) => Read::Ready(v),
            Err(e) => Read::Bad(format!("bad JSON document: {e}")),
        }
    }
}

fn push_json(out: &mut Vec<u8>, doc: &impl Serialize) {
    let s = serde_json::to_vec(doc).expect("plain data serialises");
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(&s);
}

// ------------------------------------------------------------------------------------ server

/// What the server app must do next.
#[derive(Debug, PartialEq)]
pub enum ServerAction {
    /// Parameters accepted (`CREATE_STREAMS` is queued): accept this many data streams, then call
    /// [`ServerCtl::streams_ready`].
    CreateStreams(TestParams),
    /// Parameters refused (`SERVER_ERROR` is queued): print the reason, flush, close.
    Refused(Refusal),
    /// The client ended the test (`EXCHANGE_RESULTS` is queued): stop the streams and take the
    /// final numbers. The client's results follow.
    TestEnd,
    /// The client's results: answer with [`ServerCtl::send_results`].
    ClientResults(Results),
    /// The client is done (`IPERF_DONE`): close the control connection.
    Done,
    /// The client aborted the test (`CLIENT_TERMINATE`).
    ClientTerminated,
    /// The client broke the protocol (an error message is queued where the protocol has one).
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SPhase {
    Params,
    CreateStreams,
    Running,
    Results,
    AwaitApp,
    AwaitDone,
    Over,
}

/// The server's end of one control connection, from the moment its cookie was read.
#[derive(Debug)]
pub struct ServerCtl {
    phase: SPhase,
    inbox: Inbox,
    out: Vec<u8>,
}

impl Default for ServerCtl {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerCtl {
    /// Starts the exchange: `PARAM_EXCHANGE` is queued.
    pub fn new() -> Self {
        ServerCtl {
            phase: SPhase::Params,
            inbox: Inbox::default(),
            out: vec![state::PARAM_EXCHANGE as u8],
        }
    }

    /// Bytes that arrived on the control connection.
    pub fn handle_input(&mut self, data: &[u8]) {
        self.inbox.push(data);
    }

    /// Bytes to write on the control connection.
    pub fn poll_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// True while a test's data streams should move bytes.
    pub fn running(&self) -> bool {
        self.phase == SPhase::Running
    }

    /// True while streams are being connected.
    pub fn creating_streams(&self) -> bool {
        self.phase == SPhase::CreateStreams
    }

    /// True once the exchange is over (done, refused or failed).
    pub fn is_over(&self) -> bool {
        self.phase == SPhase::Over
    }

    fn fail(&mut self, why: String, ierr: i32) -> ServerAction {
        self.out.push(state::SERVER_ERROR as u8);
        self.out.extend_from_slice(&ierr.to_be_bytes());
        self.out.extend_from_slice(&0i32.to_be_bytes());
        self.phase = SPhase::Over;
        ServerAction::Failed(why)
    }

    /// The next action, or `None` until more input arrives (or the app answers).
    pub fn poll_action(&mut self) -> Option<ServerAction> {
        match self.phase {
            SPhase::Params => match self.inbox.json::<Value>() {
                Read::More => None,
                Read::Bad(e) => Some(self.fail(e, ierr::IERECVPARAMS)),
                Read::Ready(Value::Object(doc)) => match parse_params(&doc) {
                    Ok(p) => {
                        self.out.push(state::CREATE_STREAMS as u8);
                        self.phase = SPhase::CreateStreams;
                        Some(ServerAction::CreateStreams(p))
                    }
                    Err(r) => {
                        self.out.push(state::SERVER_ERROR as u8);
                        self.out.extend_from_slice(&r.ierr.to_be_bytes());
                        self.out.extend_from_slice(&0i32.to_be_bytes());
                        self.phase = SPhase::Over;
                        Some(ServerAction::Refused(r))
                    }
                },
                Read::Ready(_) => Some(self.fail(
                    "the parameters are not a JSON object".into(),
                    ierr::IERECVPARAMS,
                )),
            },
            SPhase::CreateStreams | SPhase::Running => {
                let s = self.inbox.state()?;
                match s {
                    state::TEST_END if self.phase == SPhase::Running => {
                        self.out.push(state::EXCHANGE_RESULTS as u8);
                        self.phase = SPhase::Results;
                        Some(ServerAction::TestEnd)
                    }
                    state::CLIENT_TERMINATE | state::IPERF_DONE => {
                        self.phase = SPhase::Over;
                        Some(ServerAction::ClientTerminated)
                    }
                    other => Some(self.fail(
                        format!("unexpected control message {other} from the client"),
                        ierr::IEMESSAGE,
                    )),
                }
            }
            SPhase::Results => match self.inbox.json::<Results>() {
                Read::More => None,
                Read::Bad(e) => Some(self.fail(format!("client results: {e}"), 117)),
                Read::Ready(r) => {
                    self.phase = SPhase::AwaitApp;
                    Some(ServerAction::ClientResults(r))
                }
            },
            SPhase::AwaitApp => None,
            SPhase::AwaitDone => {
                let s = self.inbox.state()?;
                self.phase = SPhase::Over;
                Some(match s {
                    state::IPERF_DONE => ServerAction::Done,
                    state::CLIENT_TERMINATE => ServerAction::ClientTerminated,
                    other => {
                        ServerAction::Failed(format!("unexpected message {other} after results"))
                    }
                })
            }
            SPhase::Over => None,
        }
    }

    /// Every data stream is connected: `TEST_START` and `TEST_RUNNING` are queued.
    pub fn streams_ready(&mut self) {
        if self.phase == SPhase::CreateStreams {
            self.out.push(state::TEST_START as u8);
            self.out.push(state::TEST_RUNNING as u8);
            self.phase = SPhase::Running;
        }
    }

    /// The server's results, after [`ServerAction::ClientResults`]: the document and
    /// `DISPLAY_RESULTS` are queued.
    pub fn send_results(&mut self, r: &Results) {
        if self.phase == SPhase::AwaitApp {
            push_json(&mut self.out, r);
            self.out.push(state::DISPLAY_RESULTS as u8);
            self.phase = SPhase::AwaitDone;
        }
    }

    /// The server gives up on the test (stopping, or streams never came): `SERVER_TERMINATE`.
    pub fn terminate(&mut self) {
        if self.phase != SPhase::Over {
            self.out.push(state::SERVER_TERMINATE as u8);
            self.phase = SPhase::Over;
        }
    }
}

// ------------------------------------------------------------------------------------ client

/// What the client app must do next.
#[derive(Debug, PartialEq)]
pub enum ClientAction {
    /// Connect the data streams (each sends the cookie first).
    CreateStreams,
    /// Streams are set up; the test starts: begin the intervals.
    TestStart,
    /// Data moves from now on.
    TestRunning,
    /// The server wants our results: answer with [`ClientCtl::send_results`].
    ExchangeResults,
    /// The server's results.
    ServerResults(Results),
    /// All done (`IPERF_DONE` is queued): print the summary and close.
    Display,
    /// The test failed; the text says why (as iperf3 would print it).
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CPhase {
    States,
    ServerError,
    AwaitApp,
    ServerResults,
    Over,
}

/// The client's end of the control connection, from the moment it is connected.
#[derive(Debug)]
pub struct ClientCtl {
    phase: CPhase,
    inbox: Inbox,
    out: Vec<u8>,
    params: Value,
    started: bool,
}

impl ClientCtl {
    /// Queues the cookie; `params` is sent when the server asks for it.
    pub fn new(cookie: &[u8; COOKIE_SIZE], params: Value) -> Self {
        ClientCtl {
            phase: CPhase::States,
            inbox: Inbox::default(),
            out: cookie.to_vec(),
            params,
            started: false,
        }
    }

    /// Bytes that arrived on the control connection.
    pub fn handle_input(&mut self, data: &[u8]) {
        self.inbox.push(data);
    }

    /// Bytes to write on the control connection.
    pub fn poll_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// True once the exchange is over.
    #[cfg(test)]
    pub fn is_over(&self) -> bool {
        self.phase == CPhase::Over
    }

    fn failed(&mut self, why: String) -> Option<ClientAction> {
        self.phase = CPhase::Over;
        Some(ClientAction::Failed(why))
    }

    /// The next action, or `None` until more input arrives (or the app answers).
    pub fn poll_action(&mut self) -> Option<ClientAction> {
        match self.phase {
            CPhase::States => {
                let s = self.inbox.state()?;
                match s {
                    state::PARAM_EXCHANGE => {
                        let p = std::mem::take(&mut self.params);
                        push_json(&mut self.out, &p);
                        self.poll_action()
                    }
                    state::CREATE_STREAMS => Some(ClientAction::CreateStreams),
                    state::TEST_START => {
                        self.started = true;
                        Some(ClientAction::TestStart)
                    }
                    state::TEST_RUNNING => Some(ClientAction::TestRunning),
                    state::EXCHANGE_RESULTS => {
                        self.phase = CPhase::AwaitApp;
                        Some(ClientAction::ExchangeResults)
                    }
                    state::DISPLAY_RESULTS => {
                        self.out.push(state::IPERF_DONE as u8);
                        self.phase = CPhase::Over;
                        Some(ClientAction::Display)
                    }
                    state::IPERF_START | state::IPERF_DONE => self.poll_action(),
                    state::SERVER_TERMINATE => self.failed(ierr_text(120)),
                    state::ACCESS_DENIED => self.failed(ierr_text(121)),
                    state::SERVER_ERROR => {
                        self.phase = CPhase::ServerError;
                        self.poll_action()
                    }
                    other => self.failed(format!("received an unknown control message ({other})")),
                }
            }
            CPhase::ServerError => {
                let b = self.inbox.take(8)?;
                let code = i32::from_be_bytes(b[..4].try_into().expect("4 bytes"));
                let errno = i32::from_be_bytes(b[4..].try_into().expect("4 bytes"));
                let mut text = format!("the server refused the test: {}", ierr_text(code));
                if errno != 0 {
                    text.push_str(&format!(": {}", std::io::Error::from_raw_os_error(errno)));
                }
                self.failed(text)
            }
            CPhase::AwaitApp | CPhase::Over => None,
            CPhase::ServerResults => match self.inbox.json::<Results>() {
                Read::More => None,
                Read::Bad(e) => self.failed(format!("server results: {e}")),
                Read::Ready(r) => {
                    self.phase = CPhase::States;
                    Some(ClientAction::ServerResults(r))
                }
            },
        }
    }

    /// Our results, after [`ClientAction::ExchangeResults`].
    pub fn send_results(&mut self, r: &Results) {
        if self.phase == CPhase::AwaitApp {
            push_json(&mut self.out, r);
            self.phase = CPhase::ServerResults;
        }
    }

    /// The test time is up: `TEST_END`.
    pub fn test_end(&mut self) {
        if self.phase == CPhase::States {
            self.out.push(state::TEST_END as u8);
        }
    }

    /// We give up (signal or error): `CLIENT_TERMINATE` if a test was under way.
    pub fn terminate(&mut self) {
        if self.phase != CPhase::Over {
            if self.started {
                self.out.push(state::CLIENT_TERMINATE as u8);
            }
            self.phase = CPhase::Over;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn framed(doc: &Value) -> Vec<u8> {
        let mut v = Vec::new();
        push_json(&mut v, doc);
        v
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    /// What iperf3 3.12 sends for `iperf3 -c X -t 2 -P 4 -R -l 64K`.
    fn iperf312_params() -> Value {
        json!({"tcp":true,"omit":0,"time":2,"num":0,"blockcount":0,"parallel":4,"reverse":true,
               "len":65536,"pacing_timer":1000,"client_version":"3.12"})
    }

    #[test]
    fn cookie_is_36_chars_of_base32_and_nul() {
        let c = make_cookie(&[0xffu8; COOKIE_SIZE]);
        assert_eq!(c[36], 0);
        assert!(c[..36]
            .iter()
            .all(|b| b"abcdefghijklmnopqrstuvwxyz234567".contains(b)));
        assert_eq!(cookie_text(&c).len(), 36);
    }

    #[test]
    fn iperf312_parameters_are_accepted() {
        let p = parse_params(&obj(iperf312_params())).unwrap();
        assert_eq!(p.time_secs, 2);
        assert_eq!(p.parallel, 4);
        assert!(p.reverse && !p.bidir);
        assert_eq!(p.blksize, 65536);
        assert_eq!(p.stream_directions(), vec![true; 4]);
        assert_eq!(p.client_version.as_deref(), Some("3.12"));
    }

    #[test]
    fn default_block_size_and_bidir_order() {
        let p = parse_params(&obj(
            json!({"tcp":true,"time":1,"parallel":2,"bidirectional":true}),
        ))
        .unwrap();
        assert_eq!(p.blksize, DEFAULT_BLKSIZE);
        assert_eq!(p.stream_directions(), vec![false, false, true, true]);
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        let udp = parse_params(&obj(
            json!({"udp":true,"time":2,"parallel":1,"len":1460,"bandwidth":1048576}),
        ))
        .unwrap_err();
        assert!(udp.reason.contains("UDP"), "{udp:?}");
        assert_eq!(udp.ierr, ierr::IEUNIMP);
        let sctp = parse_params(&obj(json!({"sctp":true,"parallel":1}))).unwrap_err();
        assert!(sctp.reason.contains("SCTP"));
        let w = parse_params(&obj(
            json!({"tcp":true,"parallel":1,"window":4194304,"MSS":1000}),
        ))
        .unwrap_err();
        assert!(
            w.reason.contains("window") && w.reason.contains("MSS"),
            "{w:?}"
        );
        let unknown =
            parse_params(&obj(json!({"tcp":true,"parallel":1,"frobnicate":1}))).unwrap_err();
        assert!(unknown.reason.contains("frobnicate"));
        let paced_reverse = parse_params(&obj(
            json!({"tcp":true,"parallel":1,"reverse":true,"bandwidth":1000}),
        ))
        .unwrap_err();
        assert!(paced_reverse.reason.contains("bandwidth"));
        // Pacing by the client (it sends) is fine.
        assert!(parse_params(&obj(json!({"tcp":true,"parallel":1,"bandwidth":1000}))).is_ok());
        assert_eq!(
            parse_params(&obj(json!({"tcp":true,"parallel":0})))
                .unwrap_err()
                .ierr,
            6
        );
        assert_eq!(
            parse_params(&obj(json!({"tcp":true,"parallel":1,"len":4194304})))
                .unwrap_err()
                .ierr,
            7
        );
    }

    #[test]
    fn results_from_iperf312_parse_with_wrapped_minus_one() {
        // iperf3 3.12 with Debian's cJSON prints -1 as 2^64-1 and may print big counts as floats.
        let doc = br#"{"cpu_util_total":1.5,"cpu_util_user":0.5,"cpu_util_system":1,"sender_has_retransmits":18446744073709551615,"streams":[{"id":1,"bytes":1e+16,"retransmits":18446744073709551615,"jitter":0,"errors":0,"packets":0,"start_time":0,"end_time":2.000107}]}"#;
        let r: Results = serde_json::from_slice(doc).unwrap();
        assert_eq!(r.sender_has_retransmits, -1);
        assert_eq!(r.streams[0].retransmits, -1);
        assert_eq!(r.streams[0].bytes, 10_000_000_000_000_000);
    }

    #[test]
    fn server_runs_a_whole_test() {
        let mut s = ServerCtl::new();
        assert_eq!(s.poll_transmit(), vec![9]);
        let params = framed(&iperf312_params());
        // Parameters arrive in two pieces.
        s.handle_input(&params[..3]);
        assert_eq!(s.poll_action(), None);
        s.handle_input(&params[3..]);
        match s.poll_action() {
            Some(ServerAction::CreateStreams(p)) => assert_eq!(p.parallel, 4),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.poll_transmit(), vec![10]);
        assert!(s.creating_streams());
        s.streams_ready();
        assert!(s.running());
        assert_eq!(s.poll_transmit(), vec![1, 2]);
        s.handle_input(&[4]);
        assert_eq!(s.poll_action(), Some(ServerAction::TestEnd));
        assert_eq!(s.poll_transmit(), vec![13]);
        let client = Results {
            cpu_util_total: 1.0,
            sender_has_retransmits: -1,
            streams: vec![StreamResult {
                id: 1,
                bytes: 1000,
                retransmits: -1,
                end_time: 2.0,
                ..Default::default()
            }],
            ..Default::default()
        };
        s.handle_input(&framed(&serde_json::to_value(&client).unwrap()));
        assert_eq!(
            s.poll_action(),
            Some(ServerAction::ClientResults(client.clone()))
        );
        assert_eq!(s.poll_action(), None, "waits for the app's results");
        s.send_results(&client);
        let out = s.poll_transmit();
        assert_eq!(*out.last().unwrap(), 14);
        let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(len + 5, out.len());
        let back: Results = serde_json::from_slice(&out[4..4 + len]).unwrap();
        assert_eq!(back, client);
        s.handle_input(&[16]);
        assert_eq!(s.poll_action(), Some(ServerAction::Done));
        assert!(s.is_over());
    }

    #[test]
    fn server_refuses_udp_with_server_error() {
        let mut s = ServerCtl::new();
        s.poll_transmit();
        s.handle_input(&framed(
            &json!({"udp":true,"omit":0,"time":2,"parallel":1,"len":1460,
                                        "bandwidth":1048576,"client_version":"3.12"}),
        ));
        match s.poll_action() {
            Some(ServerAction::Refused(r)) => assert!(r.reason.contains("UDP")),
            other => panic!("{other:?}"),
        }
        let out = s.poll_transmit();
        assert_eq!(out.len(), 9);
        assert_eq!(out[0] as i8, state::SERVER_ERROR);
        assert_eq!(
            i32::from_be_bytes(out[1..5].try_into().unwrap()),
            ierr::IEUNIMP
        );
        assert!(s.is_over());
        assert_eq!(s.poll_action(), None);
    }

    #[test]
    fn server_rejects_garbage_and_early_test_end() {
        let mut s = ServerCtl::new();
        s.handle_input(&[0, 0, 0, 3, b'{', b'x', b'}']);
        assert!(matches!(s.poll_action(), Some(ServerAction::Failed(_))));
        let mut s = ServerCtl::new();
        s.handle_input(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(s.poll_action(), Some(ServerAction::Failed(_))));
        let mut s = ServerCtl::new();
        s.handle_input(&framed(&iperf312_params()));
        assert!(matches!(
            s.poll_action(),
            Some(ServerAction::CreateStreams(_))
        ));
        s.handle_input(&[4]);
        assert!(matches!(s.poll_action(), Some(ServerAction::Failed(_))));
        let mut s = ServerCtl::new();
        s.handle_input(&framed(&iperf312_params()));
        s.poll_action();
        s.handle_input(&[12]);
        assert_eq!(s.poll_action(), Some(ServerAction::ClientTerminated));
    }

    #[test]
    fn client_runs_a_whole_test() {
        let cookie = make_cookie(&[7; COOKIE_SIZE]);
        let params = params_doc(2, 1, false, DEFAULT_BLKSIZE);
        let mut c = ClientCtl::new(&cookie, params.clone());
        assert_eq!(c.poll_transmit(), cookie.to_vec());
        c.handle_input(&[9, 10]);
        assert_eq!(c.poll_action(), Some(ClientAction::CreateStreams));
        assert_eq!(c.poll_transmit(), framed(&params));
        c.handle_input(&[1, 2]);
        assert_eq!(c.poll_action(), Some(ClientAction::TestStart));
        assert_eq!(c.poll_action(), Some(ClientAction::TestRunning));
        assert_eq!(c.poll_action(), None);
        c.test_end();
        assert_eq!(c.poll_transmit(), vec![4]);
        c.handle_input(&[13]);
        assert_eq!(c.poll_action(), Some(ClientAction::ExchangeResults));
        let server = Results {
            streams: vec![StreamResult {
                id: 1,
                bytes: 5,
                ..Default::default()
            }],
            ..Default::default()
        };
        // The server's document may arrive before we answered: it waits.
        let mut rest = framed(&serde_json::to_value(&server).unwrap());
        rest.push(14);
        c.handle_input(&rest);
        assert_eq!(c.poll_action(), None);
        c.send_results(&Results::default());
        assert_eq!(c.poll_action(), Some(ClientAction::ServerResults(server)));
        assert_eq!(c.poll_action(), Some(ClientAction::Display));
        let out = c.poll_transmit();
        assert_eq!(*out.last().unwrap(), 16);
        assert!(c.is_over());
    }

    #[test]
    fn client_reports_refusals_like_iperf3() {
        let cookie = make_cookie(&[1; COOKIE_SIZE]);
        let mut c = ClientCtl::new(&cookie, json!({}));
        c.handle_input(&[0xff]);
        match c.poll_action() {
            Some(ClientAction::Failed(t)) => assert!(t.contains("busy"), "{t}"),
            other => panic!("{other:?}"),
        }
        let mut c = ClientCtl::new(&cookie, json!({}));
        let mut msg = vec![9, 0xfe];
        msg.extend_from_slice(&13i32.to_be_bytes());
        c.handle_input(&msg);
        assert_eq!(c.poll_action(), None, "needs both error numbers");
        c.handle_input(&0i32.to_be_bytes());
        match c.poll_action() {
            Some(ClientAction::Failed(t)) => assert!(t.contains("not implemented"), "{t}"),
            other => panic!("{other:?}"),
        }
        let mut c = ClientCtl::new(&cookie, json!({}));
        c.handle_input(&[77]);
        assert!(matches!(c.poll_action(), Some(ClientAction::Failed(_))));
    }
}
