//! Address pools and their layouts: which host/container pair is the i-th of a pool.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

use common::{Error, Result};

/// How a pool is cut into host/container pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// Two consecutive addresses per container (an aligned /31 or /127): host even,
    /// container odd. The first and last pair of the pool are never used (they hold the
    /// network and broadcast addresses), so 10.233.0.0/16 holds 32,766 containers.
    Pairs,
    /// NixOS's layout: container N gets 10.233.N.1 (host) and 10.233.N.2 (container),
    /// one /24 each, N from 1 to 254 in a /16. IPv4 only.
    Nixos,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Pairs => "pairs",
            Layout::Nixos => "nixos",
        })
    }
}

impl FromStr for Layout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pairs" => Ok(Layout::Pairs),
            "nixos" => Ok(Layout::Nixos),
            other => Err(Error::data(format!(
                "unknown layout {other:?} (expected pairs or nixos)"
            ))),
        }
    }
}

/// A network to lease pairs from, with its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    net: IpNet,
    layout: Layout,
}

/// Addresses as 128-bit numbers, so one piece of arithmetic serves IPv4 and IPv6.
fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        // Pool arithmetic never leaves the pool, so the value fits.
        IpAddr::V4(_) => IpAddr::V4((v as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(v.into()),
    }
}

impl Pool {
    /// Parse and check a pool: a network address with its prefix, of the family `v6`
    /// asks for, with room for at least one pair in `layout`.
    pub fn parse(text: &str, v6: bool, layout: Layout) -> Result<Pool> {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let net: IpNet = text.parse().map_err(|_| {
            Error::data(format!(
                "invalid {family} pool {text:?}: expected a network such as {}",
                if v6 { "fd42:ee::/64" } else { "10.233.0.0/16" }
            ))
        })?;
        if matches!(net, IpNet::V6(_)) != v6 {
            return Err(Error::data(format!(
                "invalid {family} pool {text:?}: not an {family} network"
            )));
        }
        if net.trunc() != net {
            return Err(Error::data(format!(
                "invalid pool {text:?}: not a network address (did you mean {}?)",
                net.trunc()
            )));
        }
        if let Some(why) = crate::addr::refuse_pool(net) {
            return Err(Error::data(format!(
                "pool {text} cannot hold container addresses: {why}"
            )));
        }
        let layout = if v6 { Layout::Pairs } else { layout };
        let pool = Pool { net, layout };
        if pool.capacity() == 0 {
            let need = match layout {
                Layout::Pairs if v6 => "/125 or larger",
                Layout::Pairs => "/29 or larger",
                Layout::Nixos => "/22 or larger for the nixos layout",
            };
            return Err(Error::data(format!(
                "pool {text} is too small for one address pair (need {need})"
            )));
        }
        Ok(pool)
    }

    pub fn net(&self) -> IpNet {
        self.net
    }

    #[cfg(test)]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    fn base(&self) -> u128 {
        to_u128(self.net.network())
    }

    fn host_bits(&self) -> u32 {
        u32::from(self.net.max_prefix_len() - self.net.prefix_len())
    }

    /// Number of pairs the pool holds.
    pub fn capacity(&self) -> u128 {
        let bits = self.host_bits();
        let units = match self.layout {
            // Pairs per pool, less the first and the last.
            Layout::Pairs if bits >= 1 => 1u128.checked_shl(bits - 1).unwrap_or(u128::MAX),
            Layout::Nixos if bits >= 8 => 1u128 << (bits - 8),
            _ => 0,
        };
        units.saturating_sub(2)
    }

    /// The `i`-th pair (host, container); `i < capacity()`.
    pub fn pair(&self, i: u128) -> (IpAddr, IpAddr) {
        debug_assert!(i < self.capacity());
        let like = self.net.network();
        let host = match self.layout {
            Layout::Pairs => self.base() + 2 * (i + 1),
            Layout::Nixos => self.base() + 256 * (i + 1) + 1,
        };
        (from_u128(host, like), from_u128(host + 1, like))
    }

    /// Which pair `host` is the host address of, if it is one in this pool.
    pub fn index_of(&self, host: IpAddr) -> Option<u128> {
        if !self.net.contains(&host) {
            return None;
        }
        let off = to_u128(host) - self.base();
        let i = match self.layout {
            Layout::Pairs if off.is_multiple_of(2) => (off / 2).checked_sub(1)?,
            Layout::Nixos if off % 256 == 1 => (off / 256).checked_sub(1)?,
            _ => return None,
        };
        (i < self.capacity()).then_some(i)
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        self.net.contains(&a)
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_pool_holds_32766_pairs() {
        let p = Pool::parse("10.233.0.0/16", false, Layout::Pairs).unwrap();
        assert_eq!(p.capacity(), 32766);
        assert_eq!(p.pair(0), (a("10.233.0.2"), a("10.233.0.3")));
        assert_eq!(p.pair(32765), (a("10.233.255.252"), a("10.233.255.253")));
        assert_eq!(p.index_of(a("10.233.0.2")), Some(0));
        assert_eq!(p.index_of(a("10.233.255.252")), Some(32765));
        // Network, broadcast, container addresses and strangers are no pair's host.
        for s in ["10.233.0.0", "10.233.255.254", "10.233.0.3", "10.234.0.2"] {
            assert_eq!(p.index_of(a(s)), None, "{s}");
        }
    }

    #[test]
    fn nixos_layout_matches_nixos_container() {
        let p = Pool::parse("10.233.0.0/16", false, Layout::Nixos).unwrap();
        assert_eq!(p.capacity(), 254);
        assert_eq!(p.pair(0), (a("10.233.1.1"), a("10.233.1.2")));
        assert_eq!(p.pair(3), (a("10.233.4.1"), a("10.233.4.2")));
        assert_eq!(p.pair(253), (a("10.233.254.1"), a("10.233.254.2")));
        assert_eq!(p.index_of(a("10.233.4.1")), Some(3));
        assert_eq!(p.index_of(a("10.233.4.2")), None);
        assert_eq!(p.index_of(a("10.233.255.1")), None);
    }

    #[test]
    fn ipv6_pools() {
        let p = Pool::parse("fd42:ee::/64", true, Layout::Nixos).unwrap();
        assert_eq!(p.layout(), Layout::Pairs, "IPv6 always uses pairs");
        assert_eq!(p.capacity(), (1u128 << 63) - 2);
        assert_eq!(p.pair(0), (a("fd42:ee::2"), a("fd42:ee::3")));
        let last = p.capacity() - 1;
        assert_eq!(
            p.pair(last),
            (
                a("fd42:ee::ffff:ffff:ffff:fffc"),
                a("fd42:ee::ffff:ffff:ffff:fffd")
            )
        );
        assert_eq!(p.index_of(a("fd42:ee::ffff:ffff:ffff:fffc")), Some(last));
        let huge = Pool::parse("fd00::/8", true, Layout::Pairs).unwrap();
        assert_eq!(huge.capacity(), (1u128 << 119) - 2);
        let big = Pool::parse("2000::/3", true, Layout::Pairs).unwrap();
        assert_eq!(big.capacity(), (1u128 << 124) - 2);
    }

    #[test]
    fn pool_edges() {
        let p = Pool::parse("192.0.2.0/29", false, Layout::Pairs).unwrap();
        assert_eq!(p.capacity(), 2);
        assert_eq!(p.pair(1), (a("192.0.2.4"), a("192.0.2.5")));
        for (text, why) in [
            ("192.0.2.0/30", "too small"),
            ("192.0.2.0/32", "too small"),
            (
                "10.233.0.1/16",
                "not a network address (did you mean 10.233.0.0/16?)",
            ),
            ("10.233.0.0", "expected a network"),
            ("fd42::/64", "not an IPv4 network"),
            ("10.233.0.0/33", "expected a network"),
            ("0.0.0.0/0", "overlaps 0.0.0.0/8"),
            ("224.0.0.0/29", "multicast"),
            ("127.0.0.0/29", "loopback"),
            ("169.254.0.0/16", "link-local"),
        ] {
            let e = Pool::parse(text, false, Layout::Pairs).unwrap_err();
            assert_eq!(e.code(), 65);
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
        assert!(Pool::parse("10.0.0.0/23", false, Layout::Nixos).is_err());
        assert_eq!(
            Pool::parse("10.0.0.0/22", false, Layout::Nixos)
                .unwrap()
                .capacity(),
            2
        );
        assert!(Pool::parse("fd42::/126", true, Layout::Pairs).is_err());
        for v6 in ["fe80::/64", "::/0", "ff02::/64", "::ffff:0:0/96"] {
            let e = Pool::parse(v6, true, Layout::Pairs).unwrap_err();
            assert_eq!(e.code(), 65, "{v6}");
            assert!(
                e.to_string().contains("cannot hold container addresses"),
                "{e}"
            );
        }
        assert!(Pool::parse("10.0.0.0/8", true, Layout::Pairs).is_err());
    }
}
