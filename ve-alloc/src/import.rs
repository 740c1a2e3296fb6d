//! Reading NixOS container conf files (`/etc/nixos-containers/*.conf`,
//! `/etc/containers/*.conf` on older systems) as leases.

use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use common::{output::parse_env, Error, Result};

use crate::lease::Lease;

/// Parse every `*.conf` in `dir`, sorted by name. Files without any address (containers
/// that share the host's network) are skipped with a note. Any malformed file fails the
/// whole import before anything is recorded.
pub fn read_dir(dir: &Path) -> Result<Vec<Lease>> {
    let entries =
        fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let mut paths = Vec::new();
    for e in entries {
        let p = e
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .path();
        if p.extension().is_some_and(|x| x == "conf") && p.is_file() {
            paths.push(p);
        }
    }
    paths.sort();
    let mut leases = Vec::new();
    for p in paths {
        let text =
            fs::read_to_string(&p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
        match parse(&p, &text)? {
            Some(l) => leases.push(l),
            None => log::info!("{}: no addresses, skipped", p.display()),
        }
    }
    Ok(leases)
}

const KEYS: [&str; 4] = [
    "HOST_ADDRESS",
    "LOCAL_ADDRESS",
    "HOST_ADDRESS6",
    "LOCAL_ADDRESS6",
];

/// One conf file as a lease named after the file, or None when it names no address.
pub fn parse(path: &Path, text: &str) -> Result<Option<Lease>> {
    let origin = path.display().to_string();
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| Error::data(format!("{origin}: file name is not UTF-8")))?;
    common::name::validate(name).map_err(|e| e.context(&origin))?;
    // Only the address lines matter; other settings (EXTRA_NSPAWN_FLAGS, ...) are not
    // ours to judge. Non-matching lines become blank so line numbers stay right.
    let ours: String = text
        .lines()
        .map(|l| {
            let key = l
                .trim_start()
                .trim_start_matches("export ")
                .split('=')
                .next();
            if key.is_some_and(|k| KEYS.contains(&k.trim())) {
                l
            } else {
                ""
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let vars = parse_env(&ours, &origin)?;
    let mut lease = Lease::new(name);
    lease.fixed = true;
    lease.host_address = addr::<Ipv4Addr>(&vars, "HOST_ADDRESS", &origin)?;
    lease.local_address = addr::<Ipv4Addr>(&vars, "LOCAL_ADDRESS", &origin)?;
    lease.host_address6 = addr::<Ipv6Addr>(&vars, "HOST_ADDRESS6", &origin)?;
    lease.local_address6 = addr::<Ipv6Addr>(&vars, "LOCAL_ADDRESS6", &origin)?;
    Ok((!lease.addresses().is_empty()).then_some(lease))
}

/// An address variable, with or without a `/prefix` (NixOS accepts both, and its own
/// allocator misses the prefixed ones: we count them).
fn addr<T: std::str::FromStr>(
    vars: &std::collections::BTreeMap<String, String>,
    key: &str,
    origin: &str,
) -> Result<Option<T>> {
    let Some(v) = vars.get(key).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let (a, prefix) = v.split_once('/').unwrap_or((v, ""));
    let bad = || Error::data(format!("{origin}: {key}={v} is not a valid address"));
    if !prefix.is_empty() && prefix.parse::<u8>().is_err() {
        return Err(bad());
    }
    a.parse().map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nixos_conf_with_and_without_prefix() {
        let text = "PRIVATE_NETWORK=1\nHOST_ADDRESS=10.233.5.1\nLOCAL_ADDRESS=10.233.5.2/24\nLOCAL_ADDRESS6=fc00::2/7\nHOST_BRIDGE=\nEXTRA_NSPAWN_FLAGS=--foo bar\n";
        let l = parse(Path::new("/x/web.conf"), text).unwrap().unwrap();
        assert_eq!(l.name, "web");
        assert_eq!(l.host_address, Some("10.233.5.1".parse().unwrap()));
        assert_eq!(l.local_address, Some("10.233.5.2".parse().unwrap()));
        assert_eq!(l.local_address6, Some("fc00::2".parse().unwrap()));
        assert_eq!(l.host_address6, None);
        assert!(l.fixed);
    }

    #[test]
    fn no_address_is_none_and_garbage_is_an_error() {
        assert!(parse(Path::new("h.conf"), "PRIVATE_NETWORK=0\n")
            .unwrap()
            .is_none());
        let e = parse(Path::new("h.conf"), "LOCAL_ADDRESS=10.233.1\n").unwrap_err();
        assert_eq!(e.code(), 65);
        assert!(e.to_string().contains("h.conf"), "{e}");
        assert!(parse(Path::new("h.conf"), "HOST_ADDRESS=10.0.0.1/x\n").is_err());
        assert!(parse(Path::new("-bad.conf"), "HOST_ADDRESS=10.0.0.1\n").is_err());
    }
}
