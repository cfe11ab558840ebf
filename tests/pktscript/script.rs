//! The script grammar (see `mod.rs` for the user's description) and its parser. Every error names
//! the file and line.

use super::wire::{ACK, FIN, PSH, RST, SYN};

/// A number in a segment, or `*` (anything on output; "fill in" on input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Num {
    Val(u32),
    Any,
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Val(v) => write!(f, "{v}"),
            Num::Any => f.write_str("*"),
        }
    }
}

/// An option as a script writes it; sequence numbers in SACK blocks are relative.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptSpec {
    Nop,
    Eol,
    Mss(Num),
    Wscale(Num),
    SackOk,
    Ts { val: Num, ecr: Num },
    Sack(Vec<(u32, u32)>),
}

#[derive(Clone, Debug)]
pub enum Opts {
    /// No `<...>` at all: no options.
    None,
    /// `<...>`: not checked (output only).
    Any,
    List(Vec<OptSpec>),
}

#[derive(Clone, Debug)]
pub struct SegSpec {
    pub flags: u8,
    /// Relative start sequence number and payload length.
    pub seq: u32,
    pub len: u32,
    pub ack: Option<Num>,
    pub win: Option<Num>,
    pub opts: Opts,
}

#[derive(Clone, Debug)]
pub enum Icmp {
    /// Destination unreachable, fragmentation needed, with the next-hop MTU.
    FragNeeded { mtu: u16 },
    /// Destination unreachable, host unreachable.
    HostUnreach,
}

#[derive(Clone, Debug)]
pub enum AppAction {
    Listen(u16),
    Connect,
    Write(u64),
    Read(u64),
    Eof,
    Shutdown,
    Close,
    Abort,
    Nodelay(bool),
    Cork(bool),
    /// The app has been told this event for the flow (accepted, connected, peer_closed, closed,
    /// reset, refused, timed_out).
    Saw(String),
}

#[derive(Clone, Debug)]
pub enum Kind {
    Inject(SegSpec),
    Expect(SegSpec),
    InjectIcmp {
        icmp: Icmp,
        seq: u32,
    },
    App(AppAction),
    Tcpi {
        field: String,
        value: String,
        tol: u64,
    },
    Stat {
        counter: String,
        value: u64,
    },
}

#[derive(Clone, Copy, Debug)]
pub enum When {
    Abs(f64),
    /// Relative to the previous line's time (for an expectation: when the packet was seen).
    Rel(f64),
}

#[derive(Clone, Debug)]
pub struct Line {
    pub no: usize,
    pub text: String,
    pub when: When,
    /// Tolerance in seconds, when the line gave one (`1.2~0.05`).
    pub tol: Option<f64>,
    pub flow: u16,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub struct Script {
    pub path: String,
    /// `config KEY VALUE` lines, with their line numbers.
    pub config: Vec<(usize, String, String)>,
    pub lines: Vec<Line>,
}

fn num(s: &str) -> Result<u32, String> {
    let v: u64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    u32::try_from(v).map_err(|_| format!("`{s}` does not fit in 32 bits"))
}

fn num_or_any(s: &str) -> Result<Num, String> {
    if s == "*" {
        Ok(Num::Any)
    } else {
        num(s).map(Num::Val)
    }
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a time in seconds")),
    }
}

fn parse_time(tok: &str) -> Result<(When, Option<f64>), String> {
    let (t, tol) = match tok.split_once('~') {
        Some((t, tol)) => (t, Some(seconds(tol)?)),
        None => (tok, None),
    };
    let when = match t.strip_prefix('+') {
        Some(r) => When::Rel(seconds(r)?),
        None => When::Abs(seconds(t)?),
    };
    Ok((when, tol))
}

fn parse_flags(s: &str) -> Result<u8, String> {
    let mut f = 0;
    for c in s.chars() {
        f |= match c {
            'S' => SYN,
            'F' => FIN,
            'R' => RST,
            'P' => PSH,
            '.' => ACK,
            _ => return Err(format!("unknown flag `{c}` in `{s}` (use S F R P .)")),
        };
    }
    Ok(f)
}

/// `start:end(len)`.
fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not start:end(len)");
    let (a, rest) = s.split_once(':').ok_or_else(bad)?;
    let (b, rest) = rest.split_once('(').ok_or_else(bad)?;
    let l = rest.strip_suffix(')').ok_or_else(bad)?;
    let (a, b, l) = (num(a)?, num(b)?, num(l)?);
    if b.wrapping_sub(a) != l {
        return Err(format!("`{s}`: end - start is not the length"));
    }
    Ok((a, l))
}

fn parse_opts(s: &str) -> Result<Opts, String> {
    let inner = s
        .strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .ok_or_else(|| format!("options `{s}` must be in <...>"))?;
    if inner.trim() == "..." {
        return Ok(Opts::Any);
    }
    let mut list = Vec::new();
    for part in inner.split(',') {
        let w: Vec<&str> = part.split_whitespace().collect();
        let o = match w.as_slice() {
            [] => continue,
            ["nop"] => OptSpec::Nop,
            ["eol"] => OptSpec::Eol,
            ["sackOK"] => OptSpec::SackOk,
            ["mss", v] => OptSpec::Mss(num_or_any(v)?),
            ["wscale", v] => OptSpec::Wscale(num_or_any(v)?),
            ["TS", "val", v, "ecr", e] => OptSpec::Ts {
                val: num_or_any(v)?,
                ecr: num_or_any(e)?,
            },
            ["sack", blocks @ ..] if !blocks.is_empty() => {
                let mut b = Vec::new();
                for blk in blocks {
                    let (l, r) = blk
                        .split_once(':')
                        .ok_or_else(|| format!("SACK block `{blk}` is not left:right"))?;
                    b.push((num(l)?, num(r)?));
                }
                OptSpec::Sack(b)
            }
            _ => return Err(format!("unknown option `{}`", part.trim())),
        };
        list.push(o);
    }
    Ok(Opts::List(list))
}

fn parse_seg(words: &[&str], opts_text: Option<&str>) -> Result<SegSpec, String> {
    let [flags, range, rest @ ..] = words else {
        return Err("a segment needs flags and start:end(len)".into());
    };
    let flags = parse_flags(flags)?;
    let (seq, len) = parse_range(range)?;
    let mut seg = SegSpec {
        flags,
        seq,
        len,
        ack: None,
        win: None,
        opts: Opts::None,
    };
    let mut it = rest.iter();
    while let Some(&k) = it.next() {
        let v = it.next().ok_or_else(|| format!("`{k}` needs a value"))?;
        match k {
            "ack" => seg.ack = Some(num_or_any(v)?),
            "win" => seg.win = Some(num_or_any(v)?),
            _ => return Err(format!("unknown segment field `{k}` (ack, win, <options>)")),
        }
    }
    if let Some(o) = opts_text {
        seg.opts = parse_opts(o)?;
    }
    Ok(seg)
}

fn parse_app(words: &[&str]) -> Result<AppAction, String> {
    let on_off = |v: &str| match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{v}` is not on/off")),
    };
    let n = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("`{v}` is not a number"))
    };
    Ok(match words {
        ["listen"] => AppAction::Listen(8080),
        ["listen", p] => AppAction::Listen(
            p.parse()
                .map_err(|_| format!("`{p}` is not a port number"))?,
        ),
        ["connect"] => AppAction::Connect,
        ["write", v] => AppAction::Write(n(v)?),
        ["read", v] => AppAction::Read(n(v)?),
        ["eof"] => AppAction::Eof,
        ["shutdown"] => AppAction::Shutdown,
        ["close"] => AppAction::Close,
        ["abort"] => AppAction::Abort,
        ["nodelay", v] => AppAction::Nodelay(on_off(v)?),
        ["cork", v] => AppAction::Cork(on_off(v)?),
        ["saw", ev] => AppAction::Saw(ev.to_string()),
        _ => {
            return Err(format!(
                "unknown app action `{}` (listen [port], connect, write N, read N, eof, shutdown, \
                 close, abort, nodelay on|off, cork on|off, saw EVENT)",
                words.join(" ")
            ))
        }
    })
}

/// A line's time and tolerance, when it has them; its flow; what it does.
type Parsed = (Option<(When, Option<f64>)>, u16, Kind);

fn parse_line(text: &str) -> Result<Option<Parsed>, String> {
    // Options may contain spaces: take the `<...>` tail off first.
    let (head, opts) = match (text.rfind(" <"), text.trim_end().ends_with('>')) {
        (Some(i), true) if text[..i].split_whitespace().count() > 2 => {
            (&text[..i], Some(text[i + 1..].trim_end()))
        }
        _ => (text, None),
    };
    let mut words: Vec<&str> = head.split_whitespace().collect();
    if words.is_empty() {
        return Ok(None);
    }
    let time = if words[0].starts_with(|c: char| c.is_ascii_digit() || c == '+') {
        let t = parse_time(words[0])?;
        words.remove(0);
        Some(t)
    } else {
        None
    };
    let cmd = *words.first().ok_or("a time with no command")?;
    let mut args = &words[1..];
    let mut flow = 0;
    if let Some(f) = args.first().and_then(|a| a.strip_prefix('@')) {
        flow = f
            .parse::<u16>()
            .ok()
            .filter(|&f| f < 100)
            .ok_or_else(|| format!("`@{f}` is not a flow number (0 to 99)"))?;
        args = &args[1..];
    }
    let kind = match cmd {
        "<" if args.first() == Some(&"icmp") => {
            let (icmp, seq) = match &args[1..] {
                ["frag_needed", "mtu", m, "seq", s] => (
                    Icmp::FragNeeded {
                        mtu: m.parse().map_err(|_| format!("`{m}` is not an MTU"))?,
                    },
                    num(s)?,
                ),
                ["host_unreach", "seq", s] => (Icmp::HostUnreach, num(s)?),
                _ => {
                    return Err(
                        "icmp is `icmp frag_needed mtu M seq S` or `icmp host_unreach seq S`"
                            .into(),
                    )
                }
            };
            Kind::InjectIcmp { icmp, seq }
        }
        "<" => Kind::Inject(parse_seg(args, opts)?),
        ">" => Kind::Expect(parse_seg(args, opts)?),
        "app" => Kind::App(parse_app(args)?),
        "tcpi" => match args {
            [field, value] => Kind::Tcpi {
                field: field.to_string(),
                value: value.to_string(),
                tol: 0,
            },
            [field, value, "+-", tol] => Kind::Tcpi {
                field: field.to_string(),
                value: value.to_string(),
                tol: tol
                    .parse()
                    .map_err(|_| format!("`{tol}` is not a number"))?,
            },
            _ => return Err("tcpi is `tcpi [@N] FIELD VALUE [+- TOLERANCE]`".into()),
        },
        "stat" => match args {
            [counter, value] => Kind::Stat {
                counter: counter.to_string(),
                value: value
                    .parse()
                    .map_err(|_| format!("`{value}` is not a number"))?,
            },
            _ => return Err("stat is `stat COUNTER VALUE`".into()),
        },
        "config" => return Err("config lines take no time".into()),
        _ => {
            return Err(format!(
                "unknown command `{cmd}` (<, >, app, tcpi, stat, config)"
            ))
        }
    };
    if opts.is_some() && !matches!(kind, Kind::Inject(_) | Kind::Expect(_)) {
        return Err("only segments take <options>".into());
    }
    Ok(Some((time, flow, kind)))
}

/// Parses a script's text.
pub fn parse(path: &str, text: &str) -> Result<Script, String> {
    let mut s = Script {
        path: path.to_string(),
        config: Vec::new(),
        lines: Vec::new(),
    };
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let code = raw.split('#').next().unwrap_or("").trim();
        if code.is_empty() {
            continue;
        }
        let err = |e: String| format!("{path}:{no}: {e}\n    {}", raw.trim());
        let words: Vec<&str> = code.split_whitespace().collect();
        if words[0] == "config" {
            if !s.lines.is_empty() {
                return Err(err("config lines come before the first timed line".into()));
            }
            match words.as_slice() {
                [_, k, v] => s.config.push((no, k.to_string(), v.to_string())),
                _ => return Err(err("config is `config KEY VALUE`".into())),
            }
            continue;
        }
        let Some((time, flow, kind)) = parse_line(code).map_err(err)? else {
            continue;
        };
        let (when, tol) =
            time.ok_or_else(|| err("a line needs a time (`0.1` or `+0.1`)".into()))?;
        s.lines.push(Line {
            no,
            text: code.to_string(),
            when,
            tol,
            flow,
            kind,
        });
    }
    if s.lines.is_empty() {
        return Err(format!("{path}: no timed lines"));
    }
    Ok(s)
}
