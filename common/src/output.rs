//! Everything that reaches stdout: env-file lines, JSON, aligned tables; and the
//! env-file reader that takes one tool's output as the next tool's input.
//!
//! Architecture invariant: tools write results to stdout only through this module.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use serde::Serialize;

use crate::{Error, Kind, Result};

/// Write `text` to stdout and flush. A vanished reader is [`Kind::BrokenPipe`], which
/// `cli::main` treats as success.
pub fn print(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

fn stdout_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Error::new(Kind::BrokenPipe, "writing stdout: the reader went away")
    } else {
        Error::io("writing stdout", e)
    }
}

/// Render `KEY=value` lines: the NixOS container conf format and a valid systemd
/// `EnvironmentFile`, which `eval` in a POSIX shell also accepts. Values that contain
/// anything but plain characters are single-quoted.
pub fn env_lines<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let mut s = String::new();
    for (k, v) in pairs {
        let (k, v) = (k.as_ref(), v.as_ref());
        debug_assert!(is_env_key(k), "bad env key {k:?}");
        s.push_str(k);
        s.push('=');
        if v.chars().all(is_plain) {
            s.push_str(v);
        } else {
            s.push('\'');
            s.push_str(&v.replace('\'', r"'\''"));
            s.push('\'');
        }
        s.push('\n');
    }
    s
}

fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.:/@%+,-".contains(c)
}

fn is_env_key(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One JSON document on one line.
pub fn json_line<T: Serialize>(value: &T) -> Result<String> {
    let mut s = serde_json::to_string(value)?;
    s.push('\n');
    Ok(s)
}

/// Aligned columns for people: a header row, then one row per record, separated by two
/// spaces; empty cells show as `-`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell(c).chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            out.push_str(c);
            if i < last {
                let pad = w - c.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.iter().map(|c| cell(c)).collect());
    }
    out
}

/// Parse env-file text: `KEY=value` lines, blank lines and `#` comments ignored, an
/// optional `export ` prefix, values optionally in single or double quotes. Later keys
/// win. `origin` names the input in error messages.
///
/// Errors name the line number and at most the key, never the line itself: the input
/// may be a file that was never meant to be one (`--config /etc/shadow`), and its first
/// line must not end up in a log.
pub fn parse_env(text: &str, origin: &str) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let bad = |why: &str| Error::data(format!("{origin}:{}: {why}", n + 1));
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad("not a KEY=value line"))?;
        if !is_env_key(k) {
            return Err(bad("not a KEY=value line (the key is not a variable name)"));
        }
        let v = unquote(v.trim()).ok_or_else(|| {
            bad(&format!(
                "the value of {} has unbalanced quotes or unquoted spaces",
                quote_key(k)
            ))
        })?;
        map.insert(k.to_string(), v);
    }
    Ok(map)
}

/// A key for an error message: itself when short, else its first 20 characters.
pub fn quote_key(k: &str) -> String {
    const MAX: usize = 20;
    if k.chars().count() <= MAX {
        k.escape_default().to_string()
    } else {
        let head: String = k.chars().take(MAX).collect();
        format!("{}...", head.escape_default())
    }
}

fn unquote(v: &str) -> Option<String> {
    let b = v.as_bytes();
    if b.len() >= 2 && b[0] == b'\'' && b[b.len() - 1] == b'\'' {
        // Undo env_lines' '\'' escape.
        return Some(v[1..v.len() - 1].replace(r"'\''", "'"));
    }
    if b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"' {
        return Some(
            v[1..v.len() - 1]
                .replace("\\\"", "\"")
                .replace("\\\\", "\\"),
        );
    }
    if v.contains(['\'', '"']) || v.contains(char::is_whitespace) {
        return None;
    }
    Some(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a vanished stdout reader is the silent success; a full disk behind a
    /// redirect is an error.
    #[test]
    fn stdout_errors() {
        let e = stdout_error(io::Error::from_raw_os_error(libc::EPIPE));
        assert_eq!((e.kind(), e.code()), (Kind::BrokenPipe, 0));
        let e = stdout_error(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!((e.kind(), e.code()), (Kind::Os, 71));
        assert!(e.to_string().starts_with("writing stdout: "), "{e}");
    }

    #[test]
    fn env_lines_round_trip() {
        let text = env_lines(&[
            ("HOST_ADDRESS", "10.233.0.2"),
            ("LOCAL_ADDRESS6", "fd42::3"),
            ("ODD", "a b'c"),
        ]);
        assert_eq!(
            text,
            "HOST_ADDRESS=10.233.0.2\nLOCAL_ADDRESS6=fd42::3\nODD='a b'\\''c'\n"
        );
        let map = parse_env(&text, "-").unwrap();
        assert_eq!(map["HOST_ADDRESS"], "10.233.0.2");
        assert_eq!(map["LOCAL_ADDRESS6"], "fd42::3");
        assert_eq!(map["ODD"], "a b'c");
    }

    #[test]
    fn parse_env_accepts_nixos_conf_and_rejects_garbage() {
        let conf = "# generated\nPRIVATE_NETWORK=1\nexport HOST_ADDRESS=\"10.233.1.1\"\n\nLOCAL_ADDRESS=10.233.1.2/24\n";
        let map = parse_env(conf, "foo.conf").unwrap();
        assert_eq!(map["HOST_ADDRESS"], "10.233.1.1");
        assert_eq!(map["LOCAL_ADDRESS"], "10.233.1.2/24");
        let e = parse_env("HOST_ADDRESS 10.0.0.1\n", "foo.conf").unwrap_err();
        assert_eq!(e.code(), 65);
        assert!(e.to_string().starts_with("foo.conf:1:"), "{e}");
        assert!(parse_env("X=a b\n", "-").is_err());
        assert!(parse_env("1X=a\n", "-").is_err());
    }

    #[test]
    fn errors_never_quote_the_line() {
        let secret = "root:$y$j9T$s3cr3tH4sh:19000:0:99999:7:::";
        for text in [
            secret.to_string(),
            format!("PASSWORD={secret} x"),
            format!("my {secret}=1"),
        ] {
            let e = parse_env(&format!("# ok\n{text}\n"), "f").unwrap_err();
            assert!(e.to_string().starts_with("f:2: "), "{e}");
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
        let e = parse_env("PASSWORD='x\n", "f").unwrap_err();
        assert!(e.to_string().contains("value of PASSWORD"), "{e}");
        assert_eq!(quote_key(&"K".repeat(30)), format!("{}...", "K".repeat(20)));
    }

    #[test]
    fn table_aligns() {
        let t = table(
            &["NAME", "ADDR"],
            &[
                vec!["a".into(), "10.0.0.1".into()],
                vec!["long".into(), String::new()],
            ],
        );
        assert_eq!(t, "NAME  ADDR\na     10.0.0.1\nlong  -\n");
    }
}
