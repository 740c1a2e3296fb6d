//! Reading NixOS container conf files (`/etc/nixos-containers/*.conf`,
//! `/etc/containers/*.conf` on older systems) as leases.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use ipnet::IpNet;

use common::{lease as keys, output::parse_env, Error, Result};

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
            if key.is_some_and(|k| keys::ADDRESS_KEYS.contains(&k.trim())) {
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
    lease.host_address = addr::<Ipv4Addr>(&vars, keys::HOST_ADDRESS, &origin)?;
    lease.local_address = addr::<Ipv4Addr>(&vars, keys::LOCAL_ADDRESS, &origin)?;
    lease.host_address6 = addr::<Ipv6Addr>(&vars, keys::HOST_ADDRESS6, &origin)?;
    lease.local_address6 = addr::<Ipv6Addr>(&vars, keys::LOCAL_ADDRESS6, &origin)?;
    Ok((!lease.addresses().is_empty()).then_some(lease))
}

/// An address variable, with or without a `/prefix` (NixOS accepts both, and its own
/// allocator misses the prefixed ones: we count them). It must be a usable unicast
/// address (see [`crate::addr`]), with a prefix no longer than its family's, and not
/// the network or broadcast address of that prefix.
fn addr<T: std::str::FromStr + Into<IpAddr> + Copy>(
    vars: &std::collections::BTreeMap<String, String>,
    key: &str,
    origin: &str,
) -> Result<Option<T>> {
    let Some(v) = vars.get(key).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let (a, prefix) = v.split_once('/').unwrap_or((v, ""));
    let bad = |why: &str| Error::data(format!("{origin}: {key}={v}: {why}"));
    let parsed: T = a.parse().map_err(|_| bad("not a valid address"))?;
    let ip: IpAddr = parsed.into();
    if let Some(why) = crate::addr::refuse_address(ip) {
        return Err(bad(&format!("not a container address: {why}")));
    }
    if !prefix.is_empty() {
        let len: u8 = prefix
            .parse()
            .map_err(|_| bad("the prefix is not a number"))?;
        let net = IpNet::new(ip, len).map_err(|_| {
            bad(&format!(
                "prefix /{len} is longer than {}",
                if ip.is_ipv4() { 32 } else { 128 }
            ))
        })?;
        let edge = net.max_prefix_len() - len >= 2
            && (ip == net.network() || (ip.is_ipv4() && ip == net.broadcast()));
        if edge {
            return Err(bad(&format!(
                "the network or broadcast address of {}",
                net.trunc()
            )));
        }
    }
    Ok(Some(parsed))
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
        for (line, why) in [
            ("HOST_ADDRESS=0.0.0.0", "0.0.0.0/8"),
            ("HOST_ADDRESS=255.255.255.255", "broadcast"),
            ("HOST_ADDRESS=127.0.0.1", "loopback"),
            ("HOST_ADDRESS=224.0.0.5", "multicast"),
            ("HOST_ADDRESS6=ff02::1", "multicast"),
            ("HOST_ADDRESS6=::1", "loopback"),
            ("HOST_ADDRESS=10.0.0.1/200", "prefix /200 is longer than 32"),
            (
                "HOST_ADDRESS6=fd00::1/200",
                "prefix /200 is longer than 128",
            ),
            (
                "HOST_ADDRESS=10.0.0.255/24",
                "broadcast address of 10.0.0.0/24",
            ),
            ("HOST_ADDRESS=10.0.0.0/24", "network or broadcast"),
        ] {
            let e = parse(Path::new("h.conf"), &format!("{line}\n")).unwrap_err();
            assert_eq!(e.code(), 65, "{line}");
            assert!(e.to_string().contains(why), "{line}: {e}");
        }
        // A /31 or /32 has no network or broadcast address to avoid.
        assert!(parse(Path::new("h.conf"), "HOST_ADDRESS=10.0.0.0/31\n").is_ok());
    }
}
