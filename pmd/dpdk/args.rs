//! EAL arguments as the user writes them after `dpdk:`: split into words the way a shell would
//! (whitespace separates, `'...'` is literal, `"..."` keeps spaces and honours `\"` and `\\`, a
//! backslash outside quotes escapes the next character), and the lcore list the stack adds when
//! the user gave none.

use std::fmt;

/// EAL arguments that cannot be split into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgsError(String);

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgsError {}

/// Splits `s` into words like a POSIX shell (no expansion of variables, globs or `~`).
pub fn parse_eal_args(s: &str) -> Result<Vec<String>, ArgsError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => {
                            return Err(ArgsError(
                                "unterminated ' in the EAL arguments: close the quote".into(),
                            ))
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => word.push(e),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => break,
                        },
                        Some(c) => word.push(c),
                        None => {
                            return Err(ArgsError(
                                "unterminated \" in the EAL arguments: close the quote".into(),
                            ))
                        }
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => {
                        return Err(ArgsError(
                            "the EAL arguments end in a lone backslash: remove it".into(),
                        ))
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// What the arguments say about lcores: `None` when they name none (the stack adds `-l`);
/// `Some(cpus)` when they do, with the CPUs of a plain `-l` list (empty when the list uses a form
/// this parser does not expand, such as `--lcores` groups or a `-c` mask).
pub fn lcores_given(args: &[String]) -> Option<Vec<usize>> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let list = if a == "-l" {
            it.next().map(String::as_str)
        } else if let Some(rest) = a.strip_prefix("-l").filter(|r| !r.is_empty()) {
            Some(rest)
        } else if a == "-c" || a.starts_with("--lcores") || (a.starts_with("-c") && a.len() > 2) {
            return Some(Vec::new());
        } else {
            continue;
        };
        return Some(list.and_then(parse_cpu_list).unwrap_or_default());
    }
    None
}

/// `2-5`, `0,2,4`, `0-1,8`: the CPUs in order, or `None` if it is not such a list.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b >= 1024 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok().filter(|&c: &usize| c < 1024)?),
        }
    }
    Some(cpus)
}

/// `cpus` as an EAL lcore list (`0,1,3`).
pub fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        parse_eal_args(s).unwrap()
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split("-l 2-5  -a 0000:3b:00.0"),
            ["-l", "2-5", "-a", "0000:3b:00.0"]
        );
        assert_eq!(
            split("--vdev='net_tap0,iface=a b' x"),
            ["--vdev=net_tap0,iface=a b", "x"]
        );
        assert_eq!(split(r#""a \"b\" \\c" d\ e"#), [r#"a "b" \c"#, "d e"]);
        assert_eq!(split("''"), [""]);
        assert!(split("   ").is_empty());
        assert!(parse_eal_args("'open").is_err());
        assert!(parse_eal_args("\"open").is_err());
        assert!(parse_eal_args("end\\").is_err());
    }

    #[test]
    fn finds_lcore_lists() {
        let v = |s: &str| split(s);
        assert_eq!(lcores_given(&v("--no-pci")), None);
        assert_eq!(lcores_given(&v("-l 2-5 --no-pci")), Some(vec![2, 3, 4, 5]));
        assert_eq!(lcores_given(&v("-l0,2")), Some(vec![0, 2]));
        assert_eq!(lcores_given(&v("--lcores=1@2")), Some(vec![]));
        assert_eq!(lcores_given(&v("-c 0x3")), Some(vec![]));
        assert_eq!(lcores_given(&v("-l x")), Some(vec![]));
        assert_eq!(parse_cpu_list("0-1,8"), Some(vec![0, 1, 8]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(cpu_list(&[0, 1, 3]), "0,1,3");
    }
}
