//! Turning command-line flags and env-file input into a validated `up` request, and the
//! request into the state it asks for: links, addresses and routes on both sides.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use common::{name, netns::NetnsSpec, Error, Result};
use serde::Serialize;

/// Default name of the container end.
pub const DEFAULT_IFNAME: &str = "eth0";

/// The addresses of one container: the host end and the container end, per family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Addresses {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_address: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_address: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_address6: Option<Ipv6Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_address6: Option<Ipv6Addr>,
}

/// The env-file keys `ve-alloc` prints and NixOS container confs use.
pub const KEYS: [&str; 4] = common::lease::ADDRESS_KEYS;

impl Addresses {
    /// Read the four keys from env-file text; other keys are ignored, empty values count
    /// as absent, and a `/prefix` suffix is dropped (the links always use /32 and /128).
    pub fn from_env(text: &str, origin: &str) -> Result<Self> {
        let map = common::output::parse_env(text, origin)?;
        let mut a = Addresses::default();
        for key in KEYS {
            if let Some(v) = map.get(key).filter(|v| !v.is_empty()) {
                a.set(key, v).map_err(|e| e.context(origin))?;
            }
        }
        Ok(a)
    }

    /// Set one address from its env key and text (`10.0.0.1` or `10.0.0.1/24`).
    pub fn set(&mut self, key: &str, text: &str) -> Result<()> {
        let bare = strip_prefix_len(key, text)?;
        let bad = |family: &str| Error::data(format!("{key}: {text:?} is not an {family} address"));
        match key {
            "HOST_ADDRESS" => self.host_address = Some(bare.parse().map_err(|_| bad("IPv4"))?),
            "LOCAL_ADDRESS" => self.local_address = Some(bare.parse().map_err(|_| bad("IPv4"))?),
            "HOST_ADDRESS6" => self.host_address6 = Some(bare.parse().map_err(|_| bad("IPv6"))?),
            "LOCAL_ADDRESS6" => self.local_address6 = Some(bare.parse().map_err(|_| bad("IPv6"))?),
            _ => return Err(Error::internal(format!("unknown address key {key}"))),
        }
        Ok(())
    }

    /// The addresses as `KEY=value` pairs, in the fixed key order.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        let mut push = |k, a: Option<IpAddr>| {
            if let Some(a) = a {
                v.push((k, a.to_string()));
            }
        };
        push(KEYS[0], self.host_address.map(IpAddr::V4));
        push(KEYS[1], self.local_address.map(IpAddr::V4));
        push(KEYS[2], self.host_address6.map(IpAddr::V6));
        push(KEYS[3], self.local_address6.map(IpAddr::V6));
        v
    }

    /// The addresses given, with their keys, in the fixed key order.
    pub fn all(&self) -> Vec<(&'static str, IpAddr)> {
        [
            (KEYS[0], self.host_address.map(IpAddr::V4)),
            (KEYS[1], self.local_address.map(IpAddr::V4)),
            (KEYS[2], self.host_address6.map(IpAddr::V6)),
            (KEYS[3], self.local_address6.map(IpAddr::V6)),
        ]
        .into_iter()
        .filter_map(|(k, a)| a.map(|a| (k, a)))
        .collect()
    }
}

fn strip_prefix_len<'a>(key: &str, text: &'a str) -> Result<&'a str> {
    let text = text.trim();
    match text.split_once('/') {
        None => Ok(text),
        Some((addr, len)) => {
            let max = if addr.contains(':') { 128 } else { 32 };
            match len.parse::<u8>() {
                Ok(n) if n <= max => Ok(addr),
                _ => Err(Error::data(format!("{key}: bad prefix length in {text:?}"))),
            }
        }
    }
}

/// Everything `up` (and `check`) needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpRequest {
    /// The container name.
    pub name: String,
    /// The host end: `ve-<name>` or, in bridge mode, `vb-<name>`, shortened if needed.
    pub host_ifname: String,
    /// The unshortened host-end name, added as an alternative name when shortened.
    pub altname: Option<String>,
    /// The container end's name inside the namespace.
    pub peer_ifname: String,
    pub netns: NetnsSpec,
    pub addresses: Addresses,
    pub mtu: Option<u32>,
    /// Bridge mode: the existing bridge the host end joins.
    pub bridge: Option<String>,
    pub host_mac: [u8; 6],
    pub peer_mac: [u8; 6],
}

/// The raw inputs of `up`/`check`, as the command line gave them.
#[derive(Debug, Clone, Default)]
pub struct UpInput {
    pub name: String,
    pub netns: Option<String>,
    pub pid: Option<u32>,
    /// Contents of `--addresses` and where they came from.
    pub env: Option<(String, String)>,
    pub host_address: Option<String>,
    pub local_address: Option<String>,
    pub host_address6: Option<String>,
    pub local_address6: Option<String>,
    pub ifname: Option<String>,
    pub mtu: Option<u32>,
    pub bridge: Option<String>,
}

impl UpRequest {
    /// Validate everything; nothing on the system is looked at yet. Flags win over
    /// `--addresses` input key by key.
    pub fn build(input: UpInput) -> Result<Self> {
        name::validate(&input.name)?;
        let netns = match (&input.netns, input.pid) {
            (Some(ns), None) => NetnsSpec::parse(ns)?,
            (None, Some(0)) => return Err(Error::data("invalid --pid 0")),
            (None, Some(pid)) => NetnsSpec::Pid(pid),
            _ => return Err(Error::usage("give exactly one of --netns and --pid")),
        };
        let mut addresses = match &input.env {
            Some((text, origin)) => {
                let a = Addresses::from_env(text, origin)?;
                // An empty pipe means the command before it failed (`ve-alloc alloc X |
                // ve-link up X ...`): making a pair without addresses would hide that.
                let flags = [
                    &input.host_address,
                    &input.local_address,
                    &input.host_address6,
                    &input.local_address6,
                ];
                if a.pairs().is_empty() && flags.iter().all(|f| f.is_none()) {
                    return Err(Error::data(format!(
                        "{origin}: no {} in the address input (did the command before the pipe fail?)",
                        KEYS.join(", ")
                    )));
                }
                a
            }
            None => Addresses::default(),
        };
        for (key, flag) in [
            (KEYS[0], &input.host_address),
            (KEYS[1], &input.local_address),
            (KEYS[2], &input.host_address6),
            (KEYS[3], &input.local_address6),
        ] {
            if let Some(v) = flag {
                addresses.set(key, v)?;
            }
        }
        validate_addresses(&addresses, input.bridge.is_some())?;
        let peer_ifname = input.ifname.unwrap_or_else(|| DEFAULT_IFNAME.into());
        name::validate_ifname(&peer_ifname)?;
        if let Some(br) = &input.bridge {
            name::validate_ifname(br)?;
        }
        if let Some(mtu) = input.mtu {
            let min = if addresses.host_address6.is_some() || addresses.local_address6.is_some() {
                1280
            } else {
                68
            };
            if !(min..=65535).contains(&mtu) {
                return Err(Error::data(format!(
                    "invalid --mtu {mtu}: must be between {min} and 65535"
                )));
            }
        }
        let prefix = if input.bridge.is_some() {
            name::BRIDGE_PREFIX
        } else {
            name::HOST_PREFIX
        };
        let host_ifname = name::ifname(prefix, &input.name);
        let full = format!("{prefix}{}", input.name);
        let altname = (full != host_ifname).then_some(full);
        Ok(UpRequest {
            host_mac: mac_for(&input.name, "host"),
            peer_mac: mac_for(&input.name, "container"),
            name: input.name,
            host_ifname,
            altname,
            peer_ifname,
            netns,
            addresses,
            mtu: input.mtu,
            bridge: input.bridge,
        })
    }

    /// The state this request asks for.
    pub fn want(&self) -> Want {
        let a = &self.addresses;
        let routed = self.bridge.is_none();
        let mut w = Want::default();
        if let (Some(h), Some(l)) = (a.host_address, a.local_address) {
            if routed {
                w.host_addrs.push(host(IpAddr::V4(h)));
                w.host_routes.push(Route::to(IpAddr::V4(l)));
            }
            w.ctr_routes.push(Route::to(IpAddr::V4(h)));
            w.ctr_routes.push(Route::default_via(IpAddr::V4(h)));
        }
        if let (Some(h), Some(l)) = (a.host_address6, a.local_address6) {
            if routed {
                w.host_addrs.push(host(IpAddr::V6(h)));
                w.host_routes.push(Route::to(IpAddr::V6(l)));
            }
            w.ctr_routes.push(Route::to(IpAddr::V6(h)));
            w.ctr_routes.push(Route::default_via(IpAddr::V6(h)));
        }
        if let Some(l) = a.local_address {
            w.ctr_addrs.push(host(IpAddr::V4(l)));
        }
        if let Some(l) = a.local_address6 {
            w.ctr_addrs.push(host(IpAddr::V6(l)));
        }
        w
    }

    /// The host-end name of the other mode (`vb-` when routed, `ve-` when bridged): a
    /// managed link by that name is left from an earlier `up` in the other mode.
    pub fn other_mode_ifname(&self) -> String {
        if self.bridge.is_some() {
            name::host_ifname(&self.name)
        } else {
            name::bridge_ifname(&self.name)
        }
    }

    /// The alias that marks the host end as ours and names its container.
    pub fn alias(&self) -> String {
        alias_for(&self.name)
    }

    /// The result lines `up` prints.
    pub fn output_pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("HOST_IFACE", self.host_ifname.clone()),
            ("LOCAL_IFACE", self.peer_ifname.clone()),
        ];
        if let Some(br) = &self.bridge {
            v.push(("HOST_BRIDGE", br.clone()));
        }
        v.extend(self.addresses.pairs());
        v
    }
}

/// Interface alias prefix marking links ve-link created: `ve-link:<container name>`.
pub const ALIAS_PREFIX: &str = "ve-link:";

pub fn alias_for(name: &str) -> String {
    format!("{ALIAS_PREFIX}{name}")
}

/// The container name a managed link's alias records, or None for links not ours.
pub fn container_of(alias: Option<&str>) -> Option<&str> {
    alias?
        .strip_prefix(ALIAS_PREFIX)
        .filter(|n| name::validate(n).is_ok())
}

fn validate_addresses(a: &Addresses, bridge: bool) -> Result<()> {
    for (key, addr) in a.all() {
        let bad = match addr {
            IpAddr::V4(v) => {
                v.is_unspecified() || v.is_loopback() || v.is_multicast() || v.is_broadcast()
            }
            IpAddr::V6(v) => {
                v.is_unspecified()
                    || v.is_loopback()
                    || v.is_multicast()
                    || (v.segments()[0] & 0xffc0) == 0xfe80
            }
        };
        if bad {
            return Err(Error::data(format!(
                "{key}={addr}: not a usable unicast address"
            )));
        }
    }
    let pair = |h: Option<IpAddr>, l: Option<IpAddr>, hk: &str, lk: &str| -> Result<()> {
        match (h, l) {
            (Some(h), Some(l)) if h == l => Err(Error::data(format!(
                "{hk} and {lk} are the same address {h}"
            ))),
            (Some(_), None) => Err(Error::data(format!("{hk} given without {lk}"))),
            (None, Some(_)) if !bridge => Err(Error::data(format!("{lk} given without {hk}"))),
            _ => Ok(()),
        }
    };
    pair(
        a.host_address.map(IpAddr::V4),
        a.local_address.map(IpAddr::V4),
        KEYS[0],
        KEYS[1],
    )?;
    pair(
        a.host_address6.map(IpAddr::V6),
        a.local_address6.map(IpAddr::V6),
        KEYS[2],
        KEYS[3],
    )
}

/// An address with its prefix length, as on a link.
pub type Addr = (IpAddr, u8);

fn host(a: IpAddr) -> Addr {
    (a, full_len(a))
}

pub fn full_len(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

/// A route this tool installs: a destination prefix, optionally via a gateway, always
/// through the veth end of its side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpAddr,
    pub len: u8,
    pub via: Option<IpAddr>,
}

impl Route {
    pub fn to(a: IpAddr) -> Self {
        Route {
            dst: a,
            len: full_len(a),
            via: None,
        }
    }

    pub fn default_via(gw: IpAddr) -> Self {
        let dst = match gw {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Route {
            dst,
            len: 0,
            via: Some(gw),
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.len == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}/{}", self.dst, self.len)?;
        }
        if let Some(gw) = self.via {
            write!(f, " via {gw}")?;
        }
        Ok(())
    }
}

/// The addresses and routes a request wants on each side (links are compared apart).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Want {
    pub host_addrs: Vec<Addr>,
    pub host_routes: Vec<Route>,
    pub ctr_addrs: Vec<Addr>,
    pub ctr_routes: Vec<Route>,
}

/// A locally administered unicast MAC derived from the container name, stable across
/// restarts (FNV-1a 64 of a side label and the name; same idea as systemd-nspawn).
pub fn mac_for(name: &str, side: &str) -> [u8; 6] {
    let h = common::name::fnv1a64(format!("ve-link/{side}/{name}").as_bytes());
    let b = h.to_be_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

pub fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Render a map for messages (`KEY=value KEY=value`).
pub fn describe(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str) -> UpInput {
        UpInput {
            name: name.into(),
            netns: Some("/run/netns/x".into()),
            ..Default::default()
        }
    }

    #[test]
    fn env_input_with_prefixes_builds_a_full_request() {
        let env = "# from ve-alloc\nNAME=foo\nHOST_ADDRESS=10.233.0.1/32\nLOCAL_ADDRESS=10.233.0.2/24\nHOST_ADDRESS6=fd42::1/128\nLOCAL_ADDRESS6=fd42::2\n";
        let mut i = input("foo");
        i.env = Some((env.into(), "-".into()));
        let r = UpRequest::build(i).unwrap();
        assert_eq!(r.host_ifname, "ve-foo");
        assert_eq!(r.altname, None);
        assert_eq!(r.peer_ifname, "eth0");
        assert_eq!(r.netns, NetnsSpec::Path("/run/netns/x".into()));
        assert_eq!(
            r.addresses.local_address,
            Some("10.233.0.2".parse().unwrap())
        );
        let w = r.want();
        assert_eq!(
            w.host_addrs,
            vec![
                ("10.233.0.1".parse().unwrap(), 32),
                ("fd42::1".parse().unwrap(), 128)
            ]
        );
        assert_eq!(
            w.host_routes,
            vec![
                Route::to("10.233.0.2".parse().unwrap()),
                Route::to("fd42::2".parse().unwrap())
            ]
        );
        assert_eq!(
            w.ctr_addrs,
            vec![
                ("10.233.0.2".parse().unwrap(), 32),
                ("fd42::2".parse().unwrap(), 128)
            ]
        );
        assert_eq!(w.ctr_routes.len(), 4);
        assert_eq!(w.ctr_routes[1].to_string(), "default via 10.233.0.1");
        assert_eq!(w.ctr_routes[3].to_string(), "default via fd42::1");
        let out = common::output::env_lines(&r.output_pairs());
        assert!(
            out.starts_with("HOST_IFACE=ve-foo\nLOCAL_IFACE=eth0\nHOST_ADDRESS=10.233.0.1\n"),
            "{out}"
        );
    }

    #[test]
    fn empty_address_input_is_refused() {
        for text in ["", "\n", "# nothing\nNAME=foo\n"] {
            let mut i = input("foo");
            i.env = Some((text.into(), "-".into()));
            let e = UpRequest::build(i).unwrap_err();
            assert_eq!(e.code(), 65, "{text:?}");
            assert!(e.to_string().contains("command before the pipe"), "{e}");
        }
    }

    #[test]
    fn flags_win_over_env_input() {
        let mut i = input("foo");
        i.env = Some((
            "HOST_ADDRESS=10.0.0.1\nLOCAL_ADDRESS=10.0.0.2\n".into(),
            "f".into(),
        ));
        i.local_address = Some("10.0.0.9".into());
        let r = UpRequest::build(i).unwrap();
        assert_eq!(r.addresses.local_address, Some("10.0.0.9".parse().unwrap()));
    }

    #[test]
    fn bad_input_is_exit_65_or_64() {
        let cases: Vec<(UpInput, i32, &str)> = vec![
            (input("-bad"), 65, "container name"),
            (
                UpInput {
                    host_address: Some("10.0.0.300".into()),
                    local_address: Some("10.0.0.2".into()),
                    ..input("a")
                },
                65,
                "HOST_ADDRESS",
            ),
            (
                UpInput {
                    host_address: Some("10.0.0.1".into()),
                    ..input("a")
                },
                65,
                "without LOCAL_ADDRESS",
            ),
            (
                UpInput {
                    host_address: Some("10.0.0.1".into()),
                    local_address: Some("10.0.0.1".into()),
                    ..input("a")
                },
                65,
                "same address",
            ),
            (
                UpInput {
                    host_address6: Some("fe80::1".into()),
                    local_address6: Some("fd00::2".into()),
                    ..input("a")
                },
                65,
                "unicast",
            ),
            (
                UpInput {
                    host_address: Some("fd00::1".into()),
                    ..input("a")
                },
                65,
                "IPv4",
            ),
            (
                UpInput {
                    ifname: Some("eth0 up".into()),
                    ..input("a")
                },
                65,
                "interface name",
            ),
            (
                UpInput {
                    bridge: Some("br/0".into()),
                    ..input("a")
                },
                65,
                "interface name",
            ),
            (
                UpInput {
                    mtu: Some(40),
                    ..input("a")
                },
                65,
                "--mtu",
            ),
            (
                UpInput {
                    mtu: Some(1000),
                    host_address6: Some("fd00::1".into()),
                    local_address6: Some("fd00::2".into()),
                    ..input("a")
                },
                65,
                "1280",
            ),
            (
                UpInput {
                    netns: None,
                    ..input("a")
                },
                64,
                "--pid",
            ),
            (
                UpInput {
                    pid: Some(3),
                    ..input("a")
                },
                64,
                "--pid",
            ),
            (
                UpInput {
                    env: Some(("HOST_ADDRESS 1\n".into(), "in".into())),
                    ..input("a")
                },
                65,
                "in:1",
            ),
            (
                UpInput {
                    env: Some(("LOCAL_ADDRESS=10.0.0.2/40\n".into(), "in".into())),
                    ..input("a")
                },
                65,
                "prefix",
            ),
        ];
        for (i, code, text) in cases {
            let e = UpRequest::build(i.clone()).unwrap_err();
            assert_eq!(e.code(), code, "{i:?}: {e}");
            assert!(e.to_string().contains(text), "{i:?}: {e}");
        }
    }

    #[test]
    fn bridge_mode_has_no_host_address_or_route() {
        let i = UpInput {
            bridge: Some("br0".into()),
            local_address: Some("192.0.2.10/24".into()),
            ..input("web")
        };
        let r = UpRequest::build(i).unwrap();
        assert_eq!(r.host_ifname, "vb-web");
        let w = r.want();
        assert!(w.host_addrs.is_empty() && w.host_routes.is_empty());
        assert_eq!(w.ctr_addrs, vec![("192.0.2.10".parse().unwrap(), 32)]);
        assert!(w.ctr_routes.is_empty());
    }

    #[test]
    fn long_names_get_short_ifnames_and_the_full_altname() {
        let a = UpRequest::build(input(&format!("{}{}", "x".repeat(20), "a".repeat(20)))).unwrap();
        let b = UpRequest::build(input(&format!("{}{}", "x".repeat(20), "b".repeat(20)))).unwrap();
        assert_ne!(a.host_ifname, b.host_ifname);
        assert!(a.host_ifname.len() <= 15);
        assert_eq!(
            a.altname.as_deref(),
            Some(format!("ve-{}", a.name).as_str())
        );
        assert_ne!(a.host_mac, b.host_mac);
    }

    #[test]
    fn macs_are_stable_local_unicast_and_differ_per_side() {
        let m = mac_for("foo", "host");
        assert_eq!(m, mac_for("foo", "host"));
        assert_ne!(m, mac_for("foo", "container"));
        assert_eq!(m[0] & 0x03, 0x02);
        assert_eq!(mac_text(&m).len(), 17);
    }

    #[test]
    fn aliases_mark_our_links() {
        assert_eq!(container_of(Some(&alias_for("foo"))), Some("foo"));
        assert_eq!(container_of(Some("something else")), None);
        assert_eq!(container_of(Some("ve-link:../x")), None);
        assert_eq!(container_of(None), None);
    }
}
