//! Which addresses and networks can be a container's: unicast addresses a host can route
//! to a veth, not the unspecified, loopback, link-local, multicast, broadcast or
//! IPv4-mapped ones.

use std::net::IpAddr;

use ipnet::IpNet;

/// The ranges no pool may overlap and no lease may hold, with what they are.
const UNUSABLE: [(&str, &str); 10] = [
    (
        "0.0.0.0/8",
        "\"this network\" (0.0.0.0, the unspecified address)",
    ),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    (
        "240.0.0.0/4",
        "reserved (with the broadcast address 255.255.255.255)",
    ),
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

fn unusable() -> impl Iterator<Item = (IpNet, &'static str)> {
    UNUSABLE.iter().map(|(net, what)| {
        // The table above is constant and well formed (a unit test parses it).
        let net: IpNet = net
            .parse()
            .unwrap_or_else(|_| unreachable!("bad table entry"));
        (net, *what)
    })
}

/// Why `a` cannot be a container's address, if it cannot.
pub fn refuse_address(a: IpAddr) -> Option<String> {
    unusable()
        .find(|(net, _)| net.contains(&a))
        .map(|(net, what)| format!("{a} is in {net}, {what}"))
}

/// Why `pool` cannot hand out container addresses, if it cannot: it overlaps a range of
/// unusable addresses.
pub fn refuse_pool(pool: IpNet) -> Option<String> {
    unusable()
        .find(|(net, _)| net.contains(&pool.network()) || pool.contains(&net.network()))
        .map(|(net, what)| format!("it overlaps {net}, {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses() {
        assert_eq!(unusable().count(), UNUSABLE.len());
    }

    #[test]
    fn addresses() {
        for bad in [
            "0.0.0.0",
            "255.255.255.255",
            "127.0.0.1",
            "224.0.0.1",
            "169.254.1.1",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(refuse_address(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in [
            "10.233.0.2",
            "192.0.2.1",
            "fd42:ee::2",
            "2001:db8::1",
            "100.64.0.1",
        ] {
            assert_eq!(refuse_address(good.parse().unwrap()), None, "{good}");
        }
    }

    #[test]
    fn pools() {
        for bad in [
            "0.0.0.0/0",
            "224.0.0.0/29",
            "127.0.0.0/29",
            "255.255.255.248/29",
            "fe80::/64",
            "::/0",
            "::ffff:0:0/120",
            "ff00::/64",
        ] {
            assert!(refuse_pool(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in ["10.233.0.0/16", "192.0.2.0/29", "fd00::/8", "2001:db8::/32"] {
            assert_eq!(refuse_pool(good.parse().unwrap()), None, "{good}");
        }
    }
}
