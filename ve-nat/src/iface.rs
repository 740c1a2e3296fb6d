//! The external interface: does it exist, and which one holds the default route
//! (`--external auto`). Read from /proc/net, which shows the network namespace of the
//! reading process (like /proc/sys/net), so this works under `nsenter` too.

use std::{fs, io};

use common::{Error, Result};

use crate::config::Family;

/// The word that asks for the default route's interface.
pub const AUTO: &str = "auto";

/// One default route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRoute {
    pub family: Family,
    pub iface: String,
    pub metric: u32,
}

const RTF_UP: u32 = 0x1;
const RTF_REJECT: u32 = 0x200;

fn read(path: &str) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        // No IPv6 in this kernel: no IPv6 routes.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io(format!("reading {path}"), e)),
    }
}

/// Interface names from `/proc/net/dev` text.
fn parse_dev(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

/// Whether interface `name` exists in this network namespace.
pub fn exists(name: &str) -> Result<bool> {
    Ok(parse_dev(&read("/proc/net/dev")?).iter().any(|n| n == name))
}

/// Default routes from `/proc/net/route` text: destination and mask 0, up, not reject.
fn parse_v4(text: &str) -> Vec<DefaultRoute> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let default = *f.get(1)? == "00000000" && *f.get(7)? == "00000000";
            (default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0).then(|| DefaultRoute {
                family: Family::Ipv4,
                iface: f[0].to_string(),
                metric: f.get(6).and_then(|m| m.parse().ok()).unwrap_or(0),
            })
        })
        .collect()
}

/// Default routes from `/proc/net/ipv6_route` text (dest, plen, src, plen, nexthop,
/// metric, refcnt, use, flags, iface): `::/0`, up, not reject, not on `lo` (where the
/// kernel parks unreachable routes).
fn parse_v6(text: &str) -> Vec<DefaultRoute> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            let default = f[0].bytes().all(|b| b == b'0') && f[1] == "00";
            (default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && f[9] != "lo").then(|| {
                DefaultRoute {
                    family: Family::Ipv6,
                    iface: f[9].to_string(),
                    metric: u32::from_str_radix(f[5], 16).unwrap_or(0),
                }
            })
        })
        .collect()
}

/// Every default route of this network namespace, IPv4 first.
pub fn default_routes() -> Result<Vec<DefaultRoute>> {
    let mut all = parse_v4(&read("/proc/net/route")?);
    all.extend(parse_v6(&read("/proc/net/ipv6_route")?));
    Ok(all)
}

/// The interface of the default route: IPv4's, else IPv6's; among several routes of a
/// family the lowest metric wins, and a tie between two interfaces is ambiguous.
pub fn pick(routes: &[DefaultRoute]) -> Result<String> {
    for family in [Family::Ipv4, Family::Ipv6] {
        let of: Vec<&DefaultRoute> = routes.iter().filter(|r| r.family == family).collect();
        let Some(best) = of.iter().map(|r| r.metric).min() else {
            continue;
        };
        let mut ifaces: Vec<&str> = of
            .iter()
            .filter(|r| r.metric == best)
            .map(|r| r.iface.as_str())
            .collect();
        ifaces.sort_unstable();
        ifaces.dedup();
        if ifaces.len() > 1 {
            return Err(Error::data(format!(
                "--external auto: the {family} default route is on {} (metric {best}): \
                 name one with --external IFACE",
                ifaces.join(" and ")
            )));
        }
        return Ok(ifaces[0].to_string());
    }
    Err(Error::no_input(
        "--external auto: this network namespace has no default route; name the uplink \
         with --external IFACE",
    ))
}

/// For messages about a missing interface: where the default route is, if anywhere.
pub fn hint() -> String {
    match default_routes().map(|r| pick(&r)) {
        Ok(Ok(i)) => format!("the default route is on {i} (--external auto picks it)"),
        Ok(Err(_)) | Err(_) => "there is no single default route to pick either".to_string(),
    }
}

/// The error for `--external NAME` naming no interface.
pub fn missing(name: &str) -> String {
    format!(
        "--external {name}: no such interface in this network namespace; {}",
        hint()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_text() {
        let dev = "Inter-|   Receive\n face |bytes\n    lo: 1 2 3\nenp1s0: 4 5\n";
        assert_eq!(parse_dev(dev), ["lo", "enp1s0"]);
        let v4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            enp1s0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            enp1s0\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
            wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
            lo\t00000000\t00000000\t0201\t0\t0\t0\t00000000\t0\t0\t0\n";
        let r = parse_v4(v4);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(pick(&r).unwrap(), "enp1s0");
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003   eth1\n\
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n\
            20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001   eth1\n";
        let r6 = parse_v6(v6);
        assert_eq!(
            r6,
            [DefaultRoute {
                family: Family::Ipv6,
                iface: "eth1".into(),
                metric: 0x400
            }]
        );
        // IPv4 first; IPv6 when there is no IPv4 default route.
        let both: Vec<DefaultRoute> = r.iter().chain(&r6).cloned().collect();
        assert_eq!(pick(&both).unwrap(), "enp1s0");
        assert_eq!(pick(&r6).unwrap(), "eth1");
        assert_eq!(pick(&[]).unwrap_err().code(), 66);
        let tie = [
            DefaultRoute {
                family: Family::Ipv4,
                iface: "a".into(),
                metric: 5,
            },
            DefaultRoute {
                family: Family::Ipv4,
                iface: "b".into(),
                metric: 5,
            },
        ];
        let e = pick(&tie).unwrap_err();
        assert_eq!(e.code(), 65);
        assert!(e.to_string().contains("a and b"), "{e}");
    }
}
