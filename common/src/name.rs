//! Container names, and the rule that turns a container name into an interface name.
//!
//! A container name is 1 to 63 bytes of ASCII letters, digits, `-`, `_` and `.`, and
//! does not start with `-` or `.`: it ends up in interface names, file names, host
//! names (`NAME.containers`) and command lines, so anything else is refused up front.
//!
//! The host end of a container's veth is `ve-<name>` (bridge mode: `vb-<name>`). Linux
//! limits interface names to 15 bytes, so when `ve-<name>` is longer the name is
//! shortened deterministically to `ve-` + the first 3 bytes of the name + `~` + 8
//! characters of a hash of the whole name (FNV-1a 64, low 40 bits, base32 `a-z2-7`),
//! e.g. `ve-abc~iyqxy4ya` for `abcdefghijklm`. `~` never occurs in a container name, so
//! a short form can never equal another container's unshortened name. Two long names
//! that share their first 3 bytes get the same short form only when 40 bits of their
//! hashes agree: a chance of about n^2 / 2^41 among n such names (10,000 names: 0.005 %).
//! A hash cannot rule that out, so whoever hands out names checks for it
//! ([`kept_prefix`] says which names can clash); ve-alloc refuses such a name.

use crate::{Error, Result};

/// Longest container name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// Longest Linux interface name, in bytes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Prefix of the host end of a routed container veth.
pub const HOST_PREFIX: &str = "ve-";

/// Prefix of the host end of a bridged container veth.
pub const BRIDGE_PREFIX: &str = "vb-";

const SHORT_PREFIX_LEN: usize = 3;
const HASH_LEN: usize = 8;

/// Check a container name against the rules above; the error names the first problem.
pub fn validate(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::data(format!(
            "invalid container name {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return Err(Error::data("invalid container name: empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("longer than {MAX_NAME_LEN} bytes"));
    }
    if let Some(c) = name.chars().find(|&c| !is_name_char(c)) {
        return bad(&match c {
            '/' => "contains '/'".to_string(),
            c if c.is_whitespace() => "contains whitespace".to_string(),
            c if c.is_control() => "contains a control character".to_string(),
            c => format!("contains {c:?} (allowed: letters, digits, '-', '_', '.')"),
        });
    }
    if name.starts_with('-') {
        return bad("starts with '-'");
    }
    if name.starts_with('.') {
        return bad("starts with '.'");
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// The interface name for container `name` under `prefix` (`ve-` or `vb-`): the name
/// itself when it fits in 15 bytes, else the short form described in the module docs.
/// `name` must be valid.
pub fn ifname(prefix: &str, name: &str) -> String {
    debug_assert!(validate(name).is_ok());
    let full = format!("{prefix}{name}");
    if full.len() <= MAX_IFNAME_LEN {
        return full;
    }
    let mut short = String::with_capacity(MAX_IFNAME_LEN);
    short.push_str(prefix);
    short.push_str(kept(prefix, name));
    short.push('~');
    short.push_str(&hash_base32(name.as_bytes()));
    short
}

/// The bytes of `name` that its shortened interface name under `prefix` keeps, or
/// `None` when `prefix` + `name` fits and is not shortened. Two names can only have the
/// same interface name when both are shortened and keep the same bytes. `ve-` and `vb-`
/// keep as many bytes, so two names clash under both prefixes or under neither.
pub fn kept_prefix<'a>(prefix: &str, name: &'a str) -> Option<&'a str> {
    (prefix.len() + name.len() > MAX_IFNAME_LEN).then(|| kept(prefix, name))
}

fn kept<'a>(prefix: &str, name: &'a str) -> &'a str {
    let keep = MAX_IFNAME_LEN.saturating_sub(prefix.len() + 1 + HASH_LEN);
    // Container names are ASCII, so any byte count is a character boundary.
    &name[..keep.min(SHORT_PREFIX_LEN).min(name.len())]
}

/// `ve-<name>`, shortened when needed.
pub fn host_ifname(name: &str) -> String {
    ifname(HOST_PREFIX, name)
}

/// `vb-<name>`, shortened when needed.
pub fn bridge_ifname(name: &str) -> String {
    ifname(BRIDGE_PREFIX, name)
}

/// FNV-1a 64: tiny, stable forever, and good enough to spread names over 40 bits. The
/// one copy every tool uses for names, MACs and IDs derived from text, which must not
/// change between versions.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn hash_base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let h = fnv1a64(bytes);
    (0..HASH_LEN)
        .map(|i| ALPHABET[((h >> (5 * i)) & 31) as usize] as char)
        .collect()
}

/// Check an existing interface name given on a command line (`--external`, `--ifname`,
/// `--bridge`): 1 to 15 bytes of ASCII letters, digits, `-`, `_`, `.` and `~`, not
/// starting with `-`. Narrower than the kernel's rule on purpose: such a name is safe
/// to put into a firewall rule or a NetworkManager device spec.
pub fn validate_ifname(ifname: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::data(format!(
            "invalid interface name {ifname:?}: {why}"
        )))
    };
    if ifname.is_empty() {
        return Err(Error::data("invalid interface name: empty"));
    }
    if ifname.len() > MAX_IFNAME_LEN {
        return bad(&format!("longer than {MAX_IFNAME_LEN} bytes"));
    }
    if let Some(c) = ifname
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
    {
        return bad(&format!("contains {c:?}"));
    }
    if ifname.starts_with('-') || ifname == "." || ifname == ".." {
        return bad("not a usable name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published FNV-1a 64 test vectors: derived names and MACs never change.
    #[test]
    fn fnv1a64_is_the_standard_one() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "foo",
            "web-1",
            "a",
            "db_main",
            "x.y",
            "9lives",
            &"a".repeat(63),
        ] {
            validate(n).unwrap();
        }
    }

    #[test]
    fn refuses_bad_names_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("a/b", "'/'"),
            ("a b", "whitespace"),
            ("a\tb", "whitespace"),
            ("a\u{1}b", "control"),
            ("-rf", "starts with '-'"),
            (".hidden", "starts with '.'"),
            ("a:b", "':'"),
            ("naïve", "'ï'"),
            (&"a".repeat(64), "longer than 63"),
        ];
        for (name, why) in cases {
            let e = validate(name).unwrap_err();
            assert_eq!(e.code(), 65);
            assert!(e.to_string().contains(why), "{name:?}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn short_names_are_kept() {
        assert_eq!(host_ifname("foo"), "ve-foo");
        assert_eq!(host_ifname("abcdefghijkl"), "ve-abcdefghijkl");
        assert_eq!(bridge_ifname("foo"), "vb-foo");
    }

    #[test]
    fn long_names_are_shortened_stably_and_distinctly() {
        let a = host_ifname("webserver-production-eu-west-1-aaaaaaaaaa");
        let b = host_ifname("webserver-production-eu-west-1-bbbbbbbbbb");
        assert_eq!(a.len(), 15);
        assert_eq!(b.len(), 15);
        assert!(a.starts_with("ve-web~"), "{a}");
        assert_ne!(a, b);
        // Pinned: the rule is a public contract (existing links are found by it).
        assert_eq!(host_ifname("abcdefghijklm"), "ve-abc~iyqxy4ya");
        assert_eq!(bridge_ifname("abcdefghijklm"), "vb-abc~iyqxy4ya");
        assert_eq!(hash_base32(b""), "fzieccs4");
        validate_ifname(&a).unwrap();
        assert_eq!(kept_prefix(HOST_PREFIX, "abcdefghijkl"), None);
        assert_eq!(kept_prefix(HOST_PREFIX, "abcdefghijklm"), Some("abc"));
        assert_eq!(kept_prefix(BRIDGE_PREFIX, "abcdefghijklm"), Some("abc"));
    }

    #[test]
    fn the_pair_that_shared_a_name_under_30_bits_no_longer_does() {
        // Both were ve-abcde~jjrprr when 30 bits of hash followed 5 bytes of name.
        let (a, b) = ("abcdefghij68788", "abcdefghij192812");
        assert_ne!(host_ifname(a), host_ifname(b));
        assert_ne!(bridge_ifname(a), bridge_ifname(b));
    }

    #[test]
    fn a_clash_is_still_possible_and_keeps_the_shared_prefix() {
        // Found by a search over 2.1 million random names: 40 bits can clash, which is
        // why ve-alloc checks (see `kept_prefix`).
        let (a, b) = ("abc10eeb871e86d1243", "abcf567240c36315443");
        assert_eq!(host_ifname(a), host_ifname(b));
        assert_eq!(kept_prefix(HOST_PREFIX, a), kept_prefix(HOST_PREFIX, b));
    }

    #[test]
    fn shortened_names_rarely_collide() {
        // 10,000 long names sharing their first 20 bytes (at 30 bits about 4.6 % of such
        // sets had a clash): no two interface names equal.
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let n = format!("shared-prefix-twenty-{i:05}");
            assert!(seen.insert(host_ifname(&n)), "collision at {n}");
        }
        for i in 0..10_000 {
            let n = format!("abcdefghij{i}");
            assert!(seen.insert(host_ifname(&n)), "collision at {n}");
        }
    }

    #[test]
    fn interface_names_for_rules() {
        for ok in ["eth0", "enp0s31f6", "br-lan", "eth0.100", "ve-abc~kq3zt7ab"] {
            validate_ifname(ok).unwrap();
        }
        for bad in [
            "",
            "eth0 -j ACCEPT",
            "a\"b",
            "!eth0",
            "-x",
            "sixteen-bytes-xx",
            "a+b",
            "..",
        ] {
            assert_eq!(validate_ifname(bad).unwrap_err().code(), 65, "{bad}");
        }
    }
}
