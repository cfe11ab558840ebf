//! TCP connection ↔ QUIC bidirectional stream, the same on both ends of the tunnel.
//!
//! "Up" is TCP → stream, "down" is stream → TCP. Each direction moves bytes only as far as the
//! other side takes them: a TCP read happens only after the stream took everything read before
//! (at most one read's worth, 64 KiB, waits per flow when the stream is blocked), and a stream read
//! asks for no more than the TCP send buffer has room for. So memory per flow is bounded by the
//! QUIC stream window and the TCP buffers, whatever the peers do. TCP FIN ↔ stream FIN
//! (half-close), TCP reset ↔ RESET_STREAM + STOP_SENDING.

use bytes::{Buf, Bytes};
use longhaul::{ConnId, Io};
use quinn_proto::{Connection, ConnectionHandle, ReadError, StreamId, VarInt, WriteError};
use std::collections::HashMap;

/// Application error codes in RESET_STREAM / STOP_SENDING.
pub mod code {
    /// The TCP peer reset its connection (or the stream's reader went away).
    pub const RESET: u32 = 0;
    /// The server could not connect to its target.
    pub const REFUSED: u32 = 1;
    /// The tunnel end is shutting down.
    pub const SHUTDOWN: u32 = 2;
    /// The stream did not start with the expected preamble byte.
    pub const PROTOCOL: u32 = 3;
}

/// The byte a client writes first on every stream ("to the server's configured target"; other
/// values are reserved, e.g. for choosing a target).
pub const PREAMBLE: u8 = 0;

const CHUNK: usize = 64 * 1024;

/// A flow's key: the QUIC connection and stream.
pub type Key = (ConnectionHandle, StreamId);

/// One TCP connection and its stream.
pub struct Flow {
    pub tcp: ConnId,
    /// The TCP connection is established (the server's leg connects after the stream arrives).
    pub ready: bool,
    /// TCP bytes the stream has not taken yet.
    up: Vec<u8>,
    up_off: usize,
    /// TCP sent FIN and the stream is finished.
    tcp_eof: bool,
    /// Stream bytes the TCP send buffer has not taken yet.
    down: Bytes,
    /// The stream ended (FIN) and the TCP connection is shut down for writing.
    stream_eof: bool,
    /// The stream's first byte (the preamble) is still to be read (server side).
    preamble: bool,
    /// The preamble is still at the head of `up` (client side): not counted as TCP bytes.
    preamble_out: bool,
}

/// Byte and stream counters of one core.
#[derive(Clone, Copy, Debug, Default)]
pub struct RelayCounters {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub streams_opened: u64,
    pub streams_reset: u64,
}

/// How a pump ended when it cannot go on.
enum Outcome {
    Fine,
    /// Reset the flow with this code.
    Abort(u32),
}

/// The flows of one core.
#[derive(Default)]
pub struct Relay {
    pub flows: HashMap<Key, Flow>,
    pub by_tcp: HashMap<ConnId, Key>,
    buf: Vec<u8>,
    pub counters: RelayCounters,
    /// The same counters per QUIC connection (for `longhaul stat`), dropped with it.
    pub per_conn: HashMap<ConnectionHandle, RelayCounters>,
}

impl Relay {
    pub fn new() -> Self {
        Relay {
            buf: vec![0u8; CHUNK],
            ..Default::default()
        }
    }

    /// Adds a flow. A client's flow starts with the preamble queued for the stream; a server's
    /// expects it first.
    pub fn add(&mut self, key: Key, tcp: ConnId, ready: bool, client: bool) {
        self.flows.insert(
            key,
            Flow {
                tcp,
                ready,
                up: if client { vec![PREAMBLE] } else { Vec::new() },
                up_off: 0,
                tcp_eof: false,
                down: Bytes::new(),
                stream_eof: false,
                preamble: !client,
                preamble_out: client,
            },
        );
        self.by_tcp.insert(tcp, key);
        self.counters.streams_opened += 1;
        self.per_conn.entry(key.0).or_default().streams_opened += 1;
    }

    /// Streams of connection `ch` (or all) that are open.
    pub fn open_streams(&self) -> usize {
        self.flows.len()
    }

    /// Moves bytes both ways.
    pub fn pump(&mut self, io: &mut Io, conn: &mut Connection, key: Key) {
        self.up(io, conn, key);
        self.down(io, conn, key);
    }

    /// TCP → stream.
    pub fn up(&mut self, io: &mut Io, conn: &mut Connection, key: Key) {
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        if !f.ready || f.tcp_eof {
            return;
        }
        let mut outcome = Outcome::Fine;
        'pump: loop {
            while f.up_off < f.up.len() {
                match conn.send_stream(key.1).write(&f.up[f.up_off..]) {
                    Ok(n) => {
                        f.up_off += n;
                        let tcp_bytes = if f.preamble_out && n > 0 {
                            f.preamble_out = false;
                            n - 1
                        } else {
                            n
                        } as u64;
                        self.counters.bytes_up += tcp_bytes;
                        self.per_conn.entry(key.0).or_default().bytes_up += tcp_bytes;
                    }
                    // A partial write registers nothing; the write that returns Blocked does
                    // (quinn then raises Writable).
                    Err(WriteError::Blocked) => break 'pump,
                    Err(WriteError::Stopped(_)) | Err(WriteError::ClosedStream) => {
                        outcome = Outcome::Abort(code::RESET);
                        break 'pump;
                    }
                }
            }
            f.up.clear();
            f.up_off = 0;
            match io.read(f.tcp, &mut self.buf) {
                Ok(0) => {
                    f.tcp_eof = true;
                    if conn.send_stream(key.1).finish().is_err() {
                        outcome = Outcome::Abort(code::RESET);
                    }
                    break;
                }
                Ok(n) => f.up.extend_from_slice(&self.buf[..n]),
                // WouldBlock: Readable follows. Other errors: the TCP Error event follows.
                Err(_) => break,
            }
        }
        if let Outcome::Abort(c) = outcome {
            self.abort(io, Some(conn), key, c);
        }
    }

    /// Stream → TCP.
    pub fn down(&mut self, io: &mut Io, conn: &mut Connection, key: Key) {
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        if !f.ready || f.stream_eof {
            return;
        }
        if !f.down.is_empty() {
            match io.write(f.tcp, &f.down) {
                Ok(n) => {
                    f.down.advance(n);
                    self.counters.bytes_down += n as u64;
                    self.per_conn.entry(key.0).or_default().bytes_down += n as u64;
                }
                Err(_) => return, // Writable (or the TCP Error event) follows
            }
            if !f.down.is_empty() {
                return;
            }
        }
        let outcome = match conn.recv_stream(key.1).read(true) {
            // The stream is gone (reset and already reported, or never opened).
            Err(_) => Outcome::Abort(code::RESET),
            Ok(mut chunks) => {
                let mut outcome = Outcome::Fine;
                loop {
                    let room = if f.preamble { 1 } else { io.write_space(f.tcp) };
                    if room == 0 {
                        break; // Writable on the TCP leg resumes this direction
                    }
                    match chunks.next(room) {
                        Ok(Some(chunk)) if f.preamble => {
                            f.preamble = false;
                            if chunk.bytes.first() != Some(&PREAMBLE) {
                                outcome = Outcome::Abort(code::PROTOCOL);
                                break;
                            }
                        }
                        Ok(Some(chunk)) => {
                            let n = io.write(f.tcp, &chunk.bytes).unwrap_or(0);
                            self.counters.bytes_down += n as u64;
                            self.per_conn.entry(key.0).or_default().bytes_down += n as u64;
                            if n < chunk.bytes.len() {
                                f.down = chunk.bytes.slice(n..);
                                break;
                            }
                        }
                        Ok(None) => {
                            f.stream_eof = true;
                            let _ = io.shutdown(f.tcp);
                            break;
                        }
                        Err(ReadError::Blocked) => break,
                        Err(ReadError::Reset(c)) => {
                            outcome = Outcome::Abort(c.into_inner().min(u32::MAX as u64) as u32);
                            break;
                        }
                    }
                }
                // Gives the peer its flow-control credit back (sent by the next flush).
                let _ = chunks.finalize();
                outcome
            }
        };
        if let Outcome::Abort(c) = outcome {
            self.abort(io, Some(conn), key, c);
        }
    }

    /// The TCP leg ended in order (both FINs): the flow is done.
    pub fn tcp_closed(&mut self, tcp: ConnId) {
        if let Some(key) = self.by_tcp.remove(&tcp) {
            self.flows.remove(&key);
        }
    }

    /// The TCP leg failed: the stream is reset both ways (on its QUIC connection among `conns`,
    /// when that is still there). Returns its key.
    pub fn tcp_failed(
        &mut self,
        tcp: ConnId,
        conns: Option<&mut HashMap<ConnectionHandle, Connection>>,
    ) -> Option<Key> {
        let key = self.by_tcp.remove(&tcp)?;
        let f = self.flows.remove(&key)?;
        let c = if f.ready { code::RESET } else { code::REFUSED };
        if let Some(conn) = conns.and_then(|c| c.get_mut(&key.0)) {
            reset_stream(conn, key.1, c);
        }
        self.counters.streams_reset += 1;
        self.per_conn.entry(key.0).or_default().streams_reset += 1;
        Some(key)
    }

    /// Ends a flow at once: TCP reset, RESET_STREAM and STOP_SENDING with `c`.
    pub fn abort(&mut self, io: &mut Io, conn: Option<&mut Connection>, key: Key, c: u32) {
        if let Some(f) = self.flows.remove(&key) {
            self.by_tcp.remove(&f.tcp);
            let _ = io.abort(f.tcp);
            self.counters.streams_reset += 1;
            self.per_conn.entry(key.0).or_default().streams_reset += 1;
        }
        if let Some(conn) = conn {
            reset_stream(conn, key.1, c);
        }
    }

    /// The QUIC connection `ch` is gone: its TCP legs are reset (and its counters forgotten).
    pub fn connection_lost(&mut self, io: &mut Io, ch: ConnectionHandle) {
        let keys: Vec<Key> = self.flows.keys().filter(|k| k.0 == ch).copied().collect();
        for k in keys {
            self.abort(io, None, k, code::RESET);
        }
        self.per_conn.remove(&ch);
    }

    /// The flows of connection `ch`.
    pub fn keys_of(&self, ch: ConnectionHandle) -> Vec<Key> {
        self.flows.keys().filter(|k| k.0 == ch).copied().collect()
    }
}

/// RESET_STREAM and STOP_SENDING (whichever halves are still open).
pub fn reset_stream(conn: &mut Connection, id: StreamId, c: u32) {
    let c = VarInt::from_u32(c);
    let _ = conn.send_stream(id).reset(c);
    let _ = conn.recv_stream(id).stop(c);
}
