//! Command-line values of `longhaul netem`: durations, rates, probabilities, sizes, and the
//! `a2b:`/`b2a:` prefix that applies a value to one direction only.

use super::link::{GeLoss, LinkConfig, QueueLimit};
use longhaul::stack::parse_size;
use std::time::Duration;

/// Which directions a value applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dirs {
    Both,
    AtoB,
    BtoA,
}

/// Splits an optional `a2b:`/`b2a:` prefix off a flag value.
pub fn split_dir(v: &str) -> (Dirs, &str) {
    if let Some(rest) = v.strip_prefix("a2b:") {
        (Dirs::AtoB, rest)
    } else if let Some(rest) = v.strip_prefix("b2a:") {
        (Dirs::BtoA, rest)
    } else {
        (Dirs::Both, v)
    }
}

/// `125ms`, `2.5ms`, `1s`, `500us`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration '{s}': expected a number with s, ms or us, e.g. 125ms");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, unit_ns) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix("ns") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e9)
    } else {
        return Err(bad());
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !(0.0..=3600.0 * 1e9).contains(&(v * unit_ns)) {
        return Err(bad());
    }
    Ok(Duration::from_nanos((v * unit_ns).round() as u64))
}

/// `100mbit`, `1gbit`, `64kbit`, `2.5gbit`, `1000000bit` or a bare number of bit/s.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "bad rate '{s}': expected bit/s with an optional kbit, mbit or gbit unit, e.g. 100mbit"
        )
    };
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = t.strip_suffix("gbit") {
        (n.to_string(), 1e9)
    } else if let Some(n) = t.strip_suffix("mbit") {
        (n.to_string(), 1e6)
    } else if let Some(n) = t.strip_suffix("kbit") {
        (n.to_string(), 1e3)
    } else if let Some(n) = t.strip_suffix("bit") {
        (n.to_string(), 1.0)
    } else {
        (t.clone(), 1.0)
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    let bps = (v * mult).round();
    if !(1000.0..=1e12).contains(&bps) {
        return Err(format!("bad rate '{s}': use 1kbit to 1000gbit"));
    }
    Ok(bps as u64)
}

/// `1%`, `0.5%` or a fraction in [0, 1] such as `0.01`.
pub fn parse_prob(s: &str) -> Result<f64, String> {
    let bad =
        || format!("bad probability '{s}': expected a percentage like 1% or a fraction like 0.01");
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(n) => n.parse::<f64>().map_err(|_| bad())? / 100.0,
        None => t.parse::<f64>().map_err(|_| bad())?,
    };
    if !(0.0..=1.0).contains(&v) {
        return Err(bad());
    }
    Ok(v)
}

/// `p,r[,h,k]`: Good→Bad and Bad→Good transition probabilities, then the probability a frame gets
/// through in the Bad (default 0) and the Good (default 1) state.
pub fn parse_ge(s: &str) -> Result<GeLoss, String> {
    let parts: Vec<&str> = s.split(',').collect();
    if parts.len() != 2 && parts.len() != 4 {
        return Err(format!(
            "bad Gilbert-Elliott loss '{s}': expected p,r or p,r,h,k (e.g. 1%,30% or 1%,30%,0,1)"
        ));
    }
    let p = parse_prob(parts[0])?;
    let r = parse_prob(parts[1])?;
    let (h, k) = if parts.len() == 4 {
        (parse_prob(parts[2])?, parse_prob(parts[3])?)
    } else {
        (0.0, 1.0)
    };
    Ok(GeLoss { p, r, h, k })
}

/// `1bdp`, `0.5bdp`, or bytes with an optional K, M or G suffix.
pub fn parse_queue(s: &str) -> Result<QueueLimit, String> {
    let t = s.trim().to_ascii_lowercase();
    if let Some(n) = t.strip_suffix("bdp") {
        let m: f64 = n.parse().map_err(|_| {
            format!("bad queue '{s}': expected NUMBERbdp (e.g. 1bdp) or bytes (e.g. 256K)")
        })?;
        if !(0.0..=1000.0).contains(&m) {
            return Err(format!("bad queue '{s}': use 0 to 1000 bdp"));
        }
        return Ok(QueueLimit::Bdp(m));
    }
    parse_size(&t)
        .map(|b| QueueLimit::Bytes(b as u64))
        .map_err(|e| format!("bad queue '{s}': {e}, or NUMBERbdp"))
}

/// Applies every value of one flag (in order, later ones win) to the two directions.
pub fn apply<T>(
    flag: &str,
    values: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
    a2b: &mut LinkConfig,
    b2a: &mut LinkConfig,
    set: impl Fn(&mut LinkConfig, T),
) -> Result<(), String>
where
    T: Clone,
{
    for v in values {
        let (dirs, value) = split_dir(v);
        let parsed = parse(value).map_err(|e| format!("--{flag}: {e}"))?;
        if dirs != Dirs::BtoA {
            set(a2b, parsed.clone());
        }
        if dirs != Dirs::AtoB {
            set(b2a, parsed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("125ms"), Ok(Duration::from_millis(125)));
        assert_eq!(parse_duration("2.5ms"), Ok(Duration::from_micros(2500)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("125").is_err());
        assert!(parse_duration("-1ms").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100mbit"), Ok(100_000_000));
        assert_eq!(parse_rate("1Gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("2.5gbit"), Ok(2_500_000_000));
        assert_eq!(parse_rate("64kbit"), Ok(64_000));
        assert_eq!(parse_rate("5000000"), Ok(5_000_000));
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("100mbps").is_err());
    }

    #[test]
    fn probabilities() {
        assert_eq!(parse_prob("1%"), Ok(0.01));
        assert_eq!(parse_prob("0.01"), Ok(0.01));
        assert_eq!(parse_prob("100%"), Ok(1.0));
        assert!(parse_prob("1").is_ok());
        assert!(parse_prob("2").is_err());
        assert!(parse_prob("101%").is_err());
        assert!(parse_prob("-1%").is_err());
    }

    #[test]
    fn gilbert_elliott() {
        let ge = parse_ge("1%,30%").unwrap();
        assert_eq!((ge.p, ge.r, ge.h, ge.k), (0.01, 0.3, 0.0, 1.0));
        let ge = parse_ge("1%,30%,10%,99%").unwrap();
        assert_eq!((ge.h, ge.k), (0.1, 0.99));
        assert!(parse_ge("1%").is_err());
        assert!(parse_ge("1%,2%,3%").is_err());
    }

    #[test]
    fn queues() {
        assert_eq!(parse_queue("1bdp"), Ok(QueueLimit::Bdp(1.0)));
        assert_eq!(parse_queue("0.5BDP"), Ok(QueueLimit::Bdp(0.5)));
        assert_eq!(parse_queue("256K"), Ok(QueueLimit::Bytes(262_144)));
        assert_eq!(parse_queue("1500"), Ok(QueueLimit::Bytes(1500)));
        assert!(parse_queue("xbdp").is_err());
    }

    #[test]
    fn direction_prefixes_override_in_order() {
        let mut a = LinkConfig::default();
        let mut b = LinkConfig::default();
        let values = vec!["25ms".to_string(), "b2a:100ms".to_string()];
        apply("delay", &values, parse_duration, &mut a, &mut b, |c, v| {
            c.delay = v
        })
        .unwrap();
        assert_eq!(a.delay, Duration::from_millis(25));
        assert_eq!(b.delay, Duration::from_millis(100));
        let err = apply(
            "delay",
            &["a2b:soon".to_string()],
            parse_duration,
            &mut a,
            &mut b,
            |c, v| c.delay = v,
        )
        .unwrap_err();
        assert!(err.starts_with("--delay: bad duration 'soon'"), "{err}");
    }
}
