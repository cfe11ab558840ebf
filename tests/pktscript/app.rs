//! The engine-side app the scripts drive: it only acts when a script line tells it to (so received
//! data stays in the buffer until `app read`), except that it finishes writes the send buffer
//! could not take at once when `Writable` comes.

use longhaul::{App, ConnId, Error, Event, Io};

/// The byte at `offset` of a stream: the engine's app writes `pattern(ENGINE_STREAM, ..)`, the
/// peer sends `pattern(PEER_STREAM, ..)`, and each side checks what it gets.
pub fn pattern(stream: u8, offset: u64) -> u8 {
    let x = offset.wrapping_mul(0x9E37_79B9) ^ (stream as u64 * 0x5bd1_e995);
    (x ^ (x >> 11) ^ (x >> 23)) as u8
}

pub const ENGINE_STREAM: u8 = 1;
pub const PEER_STREAM: u8 = 2;

/// One connection the app holds, by the peer's port.
pub struct AppConn {
    pub peer_port: u16,
    pub id: ConnId,
    /// Bytes handed to `write` so far, and how many the script asked for.
    pub written: u64,
    pub want_written: u64,
    pub read: u64,
    pub events: Vec<&'static str>,
    /// The app still holds the handle.
    pub live: bool,
}

#[derive(Default)]
pub struct ScriptApp {
    pub conns: Vec<AppConn>,
    /// Problems found inside event handlers (wrong write results), reported by the runner.
    pub errors: Vec<String>,
}

fn event_name(ev: &Event) -> &'static str {
    match ev {
        Event::Accepted { .. } => "accepted",
        Event::Connected(_) => "connected",
        Event::PeerClosed(_) => "peer_closed",
        Event::Closed(_) => "closed",
        Event::Error(_, e) => match e {
            longhaul::ConnError::Reset => "reset",
            longhaul::ConnError::Refused => "refused",
            longhaul::ConnError::TimedOut => "timed_out",
            _ => "error",
        },
        Event::Readable(_) => "readable",
        Event::Writable(_) => "writable",
        _ => "other",
    }
}

impl ScriptApp {
    fn by_id(&mut self, id: ConnId) -> Option<&mut AppConn> {
        self.conns.iter_mut().rev().find(|c| c.id == id)
    }

    /// Writes what the script asked for, as far as the send buffer takes it.
    pub fn pump(io: &mut Io, c: &mut AppConn) -> Result<(), String> {
        let mut buf = [0u8; 4096];
        while c.written < c.want_written {
            let n = ((c.want_written - c.written) as usize).min(buf.len());
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(ENGINE_STREAM, c.written + i as u64);
            }
            match io.write(c.id, &buf[..n]) {
                Ok(w) => c.written += w as u64,
                Err(Error::WouldBlock) => return Ok(()),
                Err(e) => return Err(format!("write failed: {e}")),
            }
        }
        Ok(())
    }
}

impl App for ScriptApp {
    fn on_event(&mut self, io: &mut Io, ev: Event) {
        let name = event_name(&ev);
        let id = match ev {
            Event::Accepted { conn, .. } => {
                let Some(info) = io.info(conn) else {
                    self.errors
                        .push("accepted a connection without info".into());
                    return;
                };
                self.conns.push(AppConn {
                    peer_port: info.remote.port(),
                    id: conn,
                    written: 0,
                    want_written: 0,
                    read: 0,
                    events: Vec::new(),
                    live: true,
                });
                conn
            }
            Event::Connected(c)
            | Event::Readable(c)
            | Event::Writable(c)
            | Event::PeerClosed(c)
            | Event::Closed(c)
            | Event::Error(c, _) => c,
            _ => return,
        };
        let Some(c) = self.by_id(id) else {
            return;
        };
        c.events.push(name);
        let res = match ev {
            Event::Closed(_) | Event::Error(..) => {
                c.live = false;
                Ok(())
            }
            Event::Writable(_) => Self::pump(io, c),
            _ => Ok(()),
        };
        if let Err(e) = res {
            self.errors.push(e);
        }
    }
}
