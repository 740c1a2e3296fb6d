//! A lease: the addresses one container holds, and how it is printed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::lease::{HOST_ADDRESS, HOST_ADDRESS6, LOCAL_ADDRESS, LOCAL_ADDRESS6};
use serde::Serialize;

/// The addresses leased to one container. IPv4 or IPv6 may be absent (leases imported
/// from NixOS configs can carry either; allocated leases always have IPv4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub name: String,
    pub host_address: Option<Ipv4Addr>,
    pub local_address: Option<Ipv4Addr>,
    pub host_address6: Option<Ipv6Addr>,
    pub local_address6: Option<Ipv6Addr>,
    /// Reserved or imported rather than allocated: `gc` leaves it alone.
    #[serde(rename = "static")]
    pub fixed: bool,
}

impl Lease {
    pub fn new(name: &str) -> Self {
        Lease {
            name: name.to_string(),
            host_address: None,
            local_address: None,
            host_address6: None,
            local_address6: None,
            fixed: false,
        }
    }

    /// Every address the lease holds.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = Vec::with_capacity(4);
        v.extend(self.host_address.map(IpAddr::V4));
        v.extend(self.local_address.map(IpAddr::V4));
        v.extend(self.host_address6.map(IpAddr::V6));
        v.extend(self.local_address6.map(IpAddr::V6));
        v
    }

    /// The NixOS container conf variables, in their usual order, for those present.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::with_capacity(4);
        let mut put = |k, a: Option<String>| {
            if let Some(a) = a {
                v.push((k, a));
            }
        };
        put(HOST_ADDRESS, self.host_address.map(|a| a.to_string()));
        put(LOCAL_ADDRESS, self.local_address.map(|a| a.to_string()));
        put(HOST_ADDRESS6, self.host_address6.map(|a| a.to_string()));
        put(LOCAL_ADDRESS6, self.local_address6.map(|a| a.to_string()));
        v
    }

    /// The container's own address, as `nixos-container show-ip` prints it: IPv4,
    /// falling back to IPv6.
    pub fn container_ip(&self) -> Option<IpAddr> {
        self.local_address
            .map(IpAddr::V4)
            .or(self.local_address6.map(IpAddr::V6))
    }

    /// A row for `list`: name, the four addresses, kind.
    pub fn row(&self) -> Vec<String> {
        fn s<T: ToString>(a: Option<T>) -> String {
            a.map(|a| a.to_string()).unwrap_or_default()
        }
        vec![
            self.name.clone(),
            s(self.host_address),
            s(self.local_address),
            s(self.host_address6),
            s(self.local_address6),
            if self.fixed { "static" } else { "dynamic" }.to_string(),
        ]
    }
}

/// `list`'s columns: the address columns are headed by their env-file keys.
pub const ROW_HEADERS: [&str; 6] = [
    "NAME",
    HOST_ADDRESS,
    LOCAL_ADDRESS,
    HOST_ADDRESS6,
    LOCAL_ADDRESS6,
    "KIND",
];
