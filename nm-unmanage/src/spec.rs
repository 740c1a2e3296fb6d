//! Device patterns: NetworkManager's `interface-name:` device specs and bare globs, how
//! they match interface names, and how they are written into NetworkManager's config and
//! systemd-networkd's `Name=`.

use std::fmt;

use common::{Error, Result};

/// The patterns used when none are given: host ends of routed and bridged container veths.
pub const DEFAULT_PATTERNS: [&str; 2] = ["ve-*", "vb-*"];

/// One pattern over interface names, as NetworkManager's `interface-name:` spec means it:
/// `*` and `?` glob, or a literal name with `interface-name:=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    literal: bool,
}

impl Pattern {
    /// Parse `interface-name:GLOB`, `interface-name:=NAME` or a bare `GLOB`. Only the
    /// characters of interface names plus `*` and `?` are accepted, so a pattern can go
    /// into a NetworkManager config list (`;` and `,` separate entries there) unquoted.
    /// A pattern is data, not syntax: a bad one is exit 65.
    pub fn parse(spec: &str) -> Result<Pattern> {
        let bad = |why: &str| Err(Error::data(format!("invalid pattern {spec:?}: {why}")));
        let (body, literal) = match spec.split_once(':') {
            None => (spec, false),
            Some(("interface-name", rest)) => match rest.strip_prefix('=') {
                Some(name) => (name, true),
                None => (rest, false),
            },
            Some((kind, _)) => {
                return bad(&format!(
                    "only interface-name: specs are supported, not {kind}:"
                ))
            }
        };
        if body.is_empty() {
            return bad("empty");
        }
        if body.len() > common::name::MAX_IFNAME_LEN && !body.contains('*') {
            return bad("longer than an interface name can be");
        }
        let allowed = |c: char| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '~')
                || (!literal && matches!(c, '*' | '?'))
        };
        if let Some(c) = body.chars().find(|&c| !allowed(c)) {
            return bad(&format!("contains {c:?}"));
        }
        // `*`, `?*`, `**`...: a pattern of wildcards only says nothing about the name (at
        // most its length), so it takes every interface, the host's uplink included.
        if body.chars().all(|c| matches!(c, '*' | '?')) {
            return bad("it matches every interface (the uplink too); name the container interfaces, e.g. ve-*");
        }
        // NetworkManager reads a leading `~` after `interface-name:` as a modifier.
        if body.starts_with('~') {
            return bad("starts with '~'");
        }
        Ok(Pattern {
            text: body.to_string(),
            literal,
        })
    }

    /// The defaults, `ve-*` and `vb-*`.
    pub fn defaults() -> Vec<Pattern> {
        DEFAULT_PATTERNS
            .iter()
            .map(|p| Pattern::parse(p).expect("default patterns are valid"))
            .collect()
    }

    /// Whether interface `ifname` matches.
    pub fn matches(&self, ifname: &str) -> bool {
        if self.literal {
            return self.text == ifname;
        }
        glob(self.text.as_bytes(), ifname.as_bytes())
    }

    /// The NetworkManager device spec: `interface-name:GLOB` or `interface-name:=NAME`.
    pub fn nm_spec(&self) -> String {
        let eq = if self.literal { "=" } else { "" };
        format!("interface-name:{eq}{}", self.text)
    }

    /// The pattern as one of systemd-networkd's `[Match] Name=` globs (fnmatch(3): `*`
    /// and `?` as here, a literal name as itself). Refused (exit 65) when networkd would
    /// read it differently: whitespace separates globs there, a leading `!` inverts the
    /// match, `[`, `]` and `\` are fnmatch syntax, quotes and `%` are unit-file syntax;
    /// and a literal name that contains `*` or `?` would glob.
    pub fn networkd_glob(&self) -> Result<String> {
        let special =
            |c: char| c.is_whitespace() || matches!(c, '[' | ']' | '\\' | '"' | '\'' | '%' | '$');
        let why = if let Some(c) = self.text.chars().find(|&c| special(c)) {
            format!("networkd's Name= would read {c:?} as syntax")
        } else if self.text.starts_with('!') {
            "networkd's Name= reads a leading '!' as \"not\"".to_string()
        } else if self.literal && self.text.contains(['*', '?']) {
            "a literal name with '*' or '?' would glob in networkd's Name=".to_string()
        } else {
            return Ok(self.text.clone());
        };
        Err(Error::data(format!(
            "pattern {:?} cannot be given to systemd-networkd: {why}",
            self.nm_spec()
        )))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.nm_spec())
    }
}

/// Whether any of `patterns` matches `ifname`.
pub fn any_matches(patterns: &[Pattern], ifname: &str) -> bool {
    patterns.iter().any(|p| p.matches(ifname))
}

/// `*` matches any run of bytes (also empty), `?` exactly one; everything else itself.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with one backtrack point: linear in practice, no recursion.
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn bare_globs_and_device_specs_mean_the_same() {
        assert_eq!(p("ve-*"), p("interface-name:ve-*"));
        assert_eq!(p("ve-*").nm_spec(), "interface-name:ve-*");
        assert_eq!(p("interface-name:=ve-x").nm_spec(), "interface-name:=ve-x");
    }

    #[test]
    fn globs_match_like_network_manager() {
        let ve = p("ve-*");
        for yes in ["ve-", "ve-test", "ve-abcde~iyqxy4"] {
            assert!(ve.matches(yes), "{yes}");
        }
        for no in ["vz-other", "eth0", "xve-test", "v", "vb-test"] {
            assert!(!ve.matches(no), "{no}");
        }
        assert!(p("ve-?").matches("ve-a"));
        assert!(!p("ve-?").matches("ve-ab"));
        assert!(p("*-1*").matches("ve-foo-12"));
        assert!(p("a*b*c").matches("axxbyyc"));
        assert!(!p("a*b*c").matches("axxbyy"));
        assert!(p("*-*").matches("ve-x"));
        assert!(p("ve-test").matches("ve-test"));
        assert!(!p("ve-test").matches("ve-test2"));
    }

    #[test]
    fn literal_specs_do_not_glob() {
        let lit = p("interface-name:=ve-test");
        assert!(lit.matches("ve-test"));
        assert!(!lit.matches("ve-test2"));
    }

    #[test]
    fn refuses_what_network_manager_would_read_differently() {
        for bad in [
            "",
            "interface-name:",
            "mac:00:11:22:33:44:55",
            "type:veth",
            "ve-*;eth*",
            "ve-*,eth0",
            "ve *",
            "interface-name:~ve-*",
            "ve-[ab]",
            "interface-name:=ve-*",
            "ve-this-is-far-too-long",
        ] {
            let e = Pattern::parse(bad).unwrap_err();
            assert_eq!(e.code(), 65, "{bad:?}: {e}");
        }
    }

    #[test]
    fn refuses_patterns_that_match_every_interface() {
        for bad in [
            "*",
            "**",
            "?*",
            "*?",
            "???*",
            "?",
            "interface-name:*",
            "interface-name:?*",
        ] {
            let e = Pattern::parse(bad).unwrap_err();
            assert_eq!(e.code(), 65, "{bad:?}: {e}");
            assert!(e.to_string().contains("matches every interface"), "{e}");
        }
        // One literal character is enough to be a choice.
        for ok in ["e*", "*0", "?e*", "*-*"] {
            Pattern::parse(ok).unwrap();
        }
    }

    #[test]
    fn patterns_become_networkd_name_globs() {
        assert_eq!(p("ve-*").networkd_glob().unwrap(), "ve-*");
        assert_eq!(
            p("interface-name:ve-?x*").networkd_glob().unwrap(),
            "ve-?x*"
        );
        assert_eq!(p("interface-name:=ve-x").networkd_glob().unwrap(), "ve-x");
        // What networkd would read as syntax is refused (parse already refuses these
        // characters; the translation does not rely on it).
        for (text, literal) in [
            ("ve-[ab]", false),
            ("ve x", false),
            ("!ve-*", false),
            ("ve-\\*", false),
            ("ve-%i", false),
            ("ve-*", true),
        ] {
            let pat = Pattern {
                text: text.into(),
                literal,
            };
            let e = pat.networkd_glob().unwrap_err();
            assert_eq!(e.code(), 65, "{text}: {e}");
            assert!(e.to_string().contains("systemd-networkd"), "{e}");
        }
    }

    #[test]
    fn defaults_cover_routed_and_bridged_veths() {
        let d = Pattern::defaults();
        assert!(any_matches(&d, "ve-foo"));
        assert!(any_matches(&d, "vb-foo"));
        assert!(!any_matches(&d, "vz-other"));
        assert!(!any_matches(&d, "eth0"));
    }
}
