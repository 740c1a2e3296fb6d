//! The validated request: every value a user typed, checked and put in canonical form
//! before any of it reaches a rule. Nothing here touches the system.

use std::{fmt, net::IpAddr, str::FromStr};

use common::{name::validate_ifname, Error, Result};
use ipnet::IpNet;

/// Address family: which of iptables / ip6tables a rule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// An interface name or an iptables wildcard (`ve-+`; `ve-*` is accepted and written
/// as `ve-+`). Only characters `validate_ifname` allows, plus one trailing wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfPattern(String);

impl IfPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pattern matching exactly one validated interface.
    pub fn exact(name: &IfName) -> IfPattern {
        IfPattern(name.as_str().to_string())
    }

    /// Whether this pattern matches the interface `name` (as iptables would).
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('+') {
            Some(prefix) => name.starts_with(prefix),
            None => name == self.0,
        }
    }
}

impl FromStr for IfPattern {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (stem, wild) = match s.strip_suffix(['+', '*']) {
            Some(stem) => (stem, true),
            None => (s, false),
        };
        if wild && stem.is_empty() {
            return Err(Error::data(format!(
                "invalid interface pattern {s:?}: a bare wildcard would match every interface"
            )));
        }
        validate_ifname(stem).map_err(|e| e.context(format!("invalid interface pattern {s:?}")))?;
        // iptables counts the wildcard against IFNAMSIZ too (15 bytes at most).
        if wild && stem.len() + 1 > common::name::MAX_IFNAME_LEN {
            return Err(Error::data(format!(
                "invalid interface pattern {s:?}: longer than {} bytes with its wildcard",
                common::name::MAX_IFNAME_LEN
            )));
        }
        Ok(IfPattern(if wild {
            format!("{stem}+")
        } else {
            stem.to_string()
        }))
    }
}

/// An interface name that must name one interface exactly (`--external`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        validate_ifname(s)?;
        Ok(IfName(s.to_string()))
    }
}

/// `tcp` or `udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// An inclusive port range; `first == last` for a single port. Never port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl Ports {
    /// How many ports (never zero).
    pub fn count(self) -> u32 {
        u32::from(self.last - self.first) + 1
    }

    pub fn is_single(self) -> bool {
        self.first == self.last
    }
}

impl FromStr for Ports {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let port = |p: &str| -> Result<u16> {
            // u16::from_str would take a leading '+'; only plain digits go into a rule.
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::data(format!("invalid port {p:?}")));
            }
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(Error::data(format!("invalid port {p:?}: not in 1-65535"))),
            }
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(Error::data(format!(
                "invalid port range {s:?}: start after end"
            )));
        }
        Ok(Ports { first, last })
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// `--forward PROTO:HOST_PORT[-END]:ADDR:PORT[-END]`: connections to the host's
/// addresses on `host_ports` go to `addr` on `ports` (a range maps one to one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub proto: Proto,
    pub host_ports: Ports,
    pub addr: IpAddr,
    pub ports: Ports,
}

impl Forward {
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }
}

impl FromStr for Forward {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let ctx = |e: Error| e.context(format!("invalid port forward {s:?}"));
        let shape = || {
            Error::data(format!(
                "invalid port forward {s:?}: expected PROTO:HOST_PORT[-END]:ADDR:PORT[-END] \
                 (IPv6 address in brackets)"
            ))
        };
        let (proto, rest) = s.split_once(':').ok_or_else(shape)?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => {
                return Err(ctx(Error::data(format!(
                    "protocol {proto:?} is not tcp or udp"
                ))))
            }
        };
        let (host_ports, rest) = rest.split_once(':').ok_or_else(shape)?;
        let host_ports: Ports = host_ports.parse().map_err(ctx)?;
        let (addr, ports) = rest.rsplit_once(':').ok_or_else(shape)?;
        let addr = match addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
            Some(v6) => match v6.parse::<IpAddr>() {
                Ok(a @ IpAddr::V6(_)) => a,
                _ => return Err(ctx(Error::data(format!("bad IPv6 address {v6:?}")))),
            },
            None => match addr.parse::<IpAddr>() {
                Ok(a @ IpAddr::V4(_)) => a,
                _ => return Err(shape()),
            },
        };
        check_unicast(&addr).map_err(ctx)?;
        let ports: Ports = ports.parse().map_err(ctx)?;
        if ports.count() != host_ports.count() {
            return Err(ctx(Error::data(format!(
                "host ports {host_ports} and destination ports {ports} differ in length"
            ))));
        }
        Ok(Forward {
            proto,
            host_ports,
            addr,
            ports,
        })
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = match self.addr {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        write!(
            f,
            "{}:{}:{addr}:{}",
            self.proto.as_str(),
            self.host_ports,
            self.ports
        )
    }
}

/// Parse an address for a rule: unicast, not loopback or unspecified.
pub fn parse_addr(s: &str) -> Result<IpAddr> {
    let addr: IpAddr = s
        .parse()
        .map_err(|_| Error::data(format!("invalid IP address {s:?}")))?;
    check_unicast(&addr).map_err(|e| e.context(format!("invalid IP address {s:?}")))?;
    Ok(addr)
}

fn check_unicast(addr: &IpAddr) -> Result<()> {
    if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
        return Err(Error::data(format!(
            "{addr} is not a unicast address a rule can use"
        )));
    }
    match addr {
        IpAddr::V4(a) if a.is_broadcast() => {
            return Err(Error::data(format!("{addr} is a broadcast address")));
        }
        IpAddr::V6(a) => {
            if let Some(v4) = embedded_v4(a) {
                return Err(Error::data(format!(
                    "{addr} is an IPv4 address written as IPv6, which the kernel never \
                     routes: write {v4}"
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`) or IPv4-compatible
/// (`::a.b.c.d`, deprecated) IPv6 address. Neither is routed as IPv6, and iptables
/// prints the compatible form in dotted notation where Rust prints hex, so neither can
/// go into a rule.
fn embedded_v4(a: &std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = a.segments();
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    let compatible = s[..6] == [0; 6] && s[6] != 0;
    (mapped || compatible).then(|| {
        let o = a.octets();
        std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15])
    })
}

/// Parse a CIDR (`10.233.0.0/16`); host bits are dropped, as iptables does. A network
/// of IPv4 addresses written as IPv6 is refused (see `embedded_v4`). `0.0.0.0/0` and
/// `::/0` are accepted: every source (the rules then carry no `-s`/`-d` at all).
pub fn parse_cidr(s: &str) -> Result<IpNet> {
    let net: IpNet = s
        .parse()
        .map_err(|_| Error::data(format!("invalid CIDR {s:?} (expected ADDR/PREFIX)")))?;
    let net = net.trunc();
    if let IpNet::V6(n) = net {
        if n.prefix_len() >= 96 {
            if let Some(v4) = embedded_v4(&n.addr()) {
                return Err(Error::data(format!(
                    "invalid CIDR {s:?}: IPv4 addresses written as IPv6, which the kernel \
                     never routes: write {v4}/{}",
                    n.prefix_len() - 96
                )));
            }
        }
    }
    Ok(net)
}

/// A single bit of the packet mark that tags connections from containers between
/// PREROUTING and POSTROUTING.
pub fn parse_mark(s: &str) -> Result<u32> {
    let bad = || Error::data(format!("invalid mark {s:?}: expected one bit, e.g. 0x2000"));
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(bad)?;
    if hex.is_empty() || hex.len() > 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let v = u32::from_str_radix(hex, 16).map_err(|_| bad())?;
    if v.count_ones() != 1 {
        return Err(bad());
    }
    Ok(v)
}

/// Everything `up` and `check` need, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub external: IfName,
    pub internal: Vec<IfPattern>,
    pub internal_ips: Vec<IpNet>,
    pub external_ips: Vec<IpAddr>,
    pub forwards: Vec<Forward>,
    pub ipv6: bool,
    pub mark: u32,
    /// Port forwards answer on 127.0.0.1 of the host too (route_localnet on the
    /// container interfaces, guarded). On by default; `--no-localhost` turns it off.
    pub localhost: bool,
}

/// The default container interfaces: every routed container veth.
pub const DEFAULT_INTERNAL: &str = "ve-+";

/// The default mark bit (kube-proxy uses 0x4000 and 0x8000, Cilium 0x0f00, Weave
/// 0x20000 and 0x40000).
pub const DEFAULT_MARK: u32 = 0x2000;

impl Request {
    /// Validate raw command-line values into a request; the first problem is the error.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        external: &str,
        internal: &[String],
        internal_ips: &[String],
        external_ips: &[String],
        forwards: &[String],
        ipv6: bool,
        mark: Option<&str>,
    ) -> Result<Request> {
        let external: IfName = external
            .parse()
            .map_err(|e: Error| e.context("--external"))?;
        let mut pats = Vec::new();
        for p in internal {
            let p: IfPattern = p.parse()?;
            if !pats.contains(&p) {
                pats.push(p);
            }
        }
        if pats.is_empty() {
            pats.push(IfPattern(DEFAULT_INTERNAL.to_string()));
        }
        if let Some(p) = pats.iter().find(|p| p.matches(external.as_str())) {
            return Err(Error::data(format!(
                "internal interface pattern {} matches the external interface {}",
                p.as_str(),
                external.as_str()
            )));
        }
        let need_v6 = |what: &str| -> Result<()> {
            if ipv6 {
                Ok(())
            } else {
                Err(Error::data(format!("{what} is IPv6: add --ipv6")))
            }
        };
        let mut nets = Vec::new();
        for n in internal_ips {
            let net = parse_cidr(n)?;
            if let IpNet::V6(_) = net {
                need_v6(&format!("--internal-ip {n}"))?;
            }
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        let mut ext_ips: Vec<IpAddr> = Vec::new();
        for a in external_ips {
            let addr = parse_addr(a)?;
            if addr.is_ipv6() {
                need_v6(&format!("--external-ip {a}"))?;
            }
            if ext_ips
                .iter()
                .any(|e| Family::of(e) == Family::of(&addr) && *e != addr)
            {
                return Err(Error::data(format!(
                    "more than one {} --external-ip",
                    Family::of(&addr)
                )));
            }
            if !ext_ips.contains(&addr) {
                ext_ips.push(addr);
            }
        }
        let mut fwds: Vec<Forward> = Vec::new();
        for f in forwards {
            let fwd: Forward = f.parse()?;
            if fwd.addr.is_ipv6() {
                need_v6(&format!("--forward {f}"))?;
            }
            if let Some(other) = fwds.iter().find(|o| {
                o.proto == fwd.proto
                    && o.family() == fwd.family()
                    && o.host_ports.first <= fwd.host_ports.last
                    && fwd.host_ports.first <= o.host_ports.last
            }) {
                return Err(Error::data(format!(
                    "port forwards {other} and {fwd} overlap on the host side"
                )));
            }
            fwds.push(fwd);
        }
        let mark = match mark {
            Some(m) => parse_mark(m)?,
            None => DEFAULT_MARK,
        };
        Ok(Request {
            external,
            internal: pats,
            internal_ips: nets,
            external_ips: ext_ips,
            forwards: fwds,
            ipv6,
            mark,
            localhost: true,
        })
    }

    /// Whether localhost forwards are in effect: wanted, and an IPv4 forward to answer
    /// on 127.0.0.1 (the kernel cannot forward ::1: `ve-nat watch` proxies it, see
    /// `proxy`). Without one, ve-nat opens nothing on loopback.
    pub fn localhost_forwards(&self) -> bool {
        self.localhost && self.forwards.iter().any(|f| f.family() == Family::Ipv4)
    }

    /// The families this request installs rules for.
    pub fn families(&self) -> Vec<Family> {
        if self.ipv6 {
            vec![Family::Ipv4, Family::Ipv6]
        } else {
            vec![Family::Ipv4]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ext: &str, int: &[&str], fwd: &[&str]) -> Result<Request> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Request::new(ext, &s(int), &[], &[], &s(fwd), false, None)
    }

    #[test]
    fn patterns() {
        assert_eq!("ve-*".parse::<IfPattern>().unwrap().as_str(), "ve-+");
        assert_eq!("ve-+".parse::<IfPattern>().unwrap().as_str(), "ve-+");
        assert_eq!("vb-foo".parse::<IfPattern>().unwrap().as_str(), "vb-foo");
        for bad in [
            "+",
            "*",
            "ve- +",
            "ve-\"x",
            "!ve-+",
            "ve-'",
            "ve-+ -j ACCEPT",
            "",
            "ve-++",
            "-x+",
        ] {
            let e = bad.parse::<IfPattern>().unwrap_err();
            assert_eq!(e.code(), 65, "{bad}");
        }
        let p: IfPattern = "ve-+".parse().unwrap();
        assert!(p.matches("ve-foo") && !p.matches("eth0"));
    }

    #[test]
    fn forwards_parse_and_render() {
        let f: Forward = "tcp:8080:10.233.1.2:80".parse().unwrap();
        assert_eq!(f.to_string(), "tcp:8080:10.233.1.2:80");
        let f: Forward = "udp:5000-5009:[fd00::2]:6000-6009".parse().unwrap();
        assert_eq!(f.family(), Family::Ipv6);
        assert_eq!(f.ports.count(), 10);
        for bad in [
            "tcp:80:10.0.0.1:80 -j ACCEPT",
            "tcp:80:10.0.0.1:80'",
            "sctp:80:10.0.0.1:80",
            "tcp:0:10.0.0.1:80",
            "tcp:65536:10.0.0.1:80",
            "tcp:+80:10.0.0.1:80",
            "tcp:80-70:10.0.0.1:80-70",
            "tcp:80-81:10.0.0.1:80",
            "tcp:80:fd00::1:80",
            "tcp:80:[10.0.0.1]:80",
            "tcp:80:127.0.0.1:80",
            "tcp:80:10.0.0.1",
            "tcp:80:host.example:80",
        ] {
            assert_eq!(bad.parse::<Forward>().unwrap_err().code(), 65, "{bad}");
        }
    }

    #[test]
    fn requests_validate_everything() {
        let r = req("up0", &[], &["tcp:8080:10.233.1.2:80"]).unwrap();
        assert_eq!(r.internal[0].as_str(), "ve-+");
        assert_eq!(r.mark, 0x2000);
        for (ext, int, fwd) in [
            ("eth0 -j ACCEPT", &[][..], &[][..]),
            ("eth0", &["ve- +"][..], &[][..]),
            ("eth0", &["eth+"][..], &[][..]),
            (
                "eth0",
                &[][..],
                &["tcp:80:10.0.0.1:80", "tcp:70-90:10.0.0.2:70-90"][..],
            ),
            ("eth0", &[][..], &["tcp:80:[fd00::1]:80"][..]),
        ] {
            assert_eq!(
                req(ext, int, fwd).unwrap_err().code(),
                65,
                "{ext} {int:?} {fwd:?}"
            );
        }
        let e = Request::new(
            "e",
            &[],
            &["10.0.0.0/8 -j ACCEPT".into()],
            &[],
            &[],
            false,
            None,
        );
        assert_eq!(e.unwrap_err().code(), 65);
        let e = Request::new(
            "e",
            &[],
            &[],
            &["192.0.2.1 --random".into()],
            &[],
            false,
            None,
        );
        assert_eq!(e.unwrap_err().code(), 65);
        let r = Request::new(
            "e",
            &[],
            &["10.233.7.9/16".into()],
            &[],
            &[],
            false,
            Some("0x100"),
        );
        let r = r.unwrap();
        assert_eq!(r.internal_ips[0].to_string(), "10.233.0.0/16");
        assert_eq!(r.mark, 0x100);
        // iptables wants the wildcard inside IFNAMSIZ too.
        assert_eq!(
            req("e", &["abcdefghijklmn+"], &[]).unwrap().internal[0].as_str(),
            "abcdefghijklmn+"
        );
        for long in ["abcdefghijklmno+", "abcdefghijklmno*"] {
            assert_eq!(req("e", &[long], &[]).unwrap_err().code(), 65, "{long}");
        }
        // IPv4 written as IPv6: never routed, and not in iptables' -S form.
        for bad in ["tcp:80:[::ffff:1.2.3.4]:80", "tcp:80:[::1.2.3.4]:80"] {
            assert_eq!(bad.parse::<Forward>().unwrap_err().code(), 65, "{bad}");
        }
        assert!(parse_addr("::ffff:192.0.2.1").is_err());
        assert!(parse_cidr("::ffff:10.0.0.0/104").is_err());
        assert!(parse_cidr("::10.0.0.0/104").is_err());
        assert!(parse_cidr("::/0").is_ok() && parse_cidr("::/96").is_ok());
        assert!(parse_addr("::5").is_ok(), "not IPv4: ::5 prints as itself");
        for m in ["0x3", "256", "0x", "0x1ffffffff", "0x0"] {
            assert!(parse_mark(m).is_err(), "{m}");
        }
    }
}
