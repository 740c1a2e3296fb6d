//! The env-file contract between the tools and the scripts that join them: the keys
//! `ve-alloc` writes, `ve-link` reads (and adds to), and the shell helpers parse
//! (`examples/container-net`, a container unit's `EnvironmentFile=`). The address keys
//! are the NixOS container conf's, so its files read as leases and back.
//!
//! Architecture invariant: no crate spells one of these keys out; it names the constant.

/// The host end's IPv4 address (the container's gateway).
pub const HOST_ADDRESS: &str = "HOST_ADDRESS";
/// The container end's IPv4 address.
pub const LOCAL_ADDRESS: &str = "LOCAL_ADDRESS";
/// The host end's IPv6 address.
pub const HOST_ADDRESS6: &str = "HOST_ADDRESS6";
/// The container end's IPv6 address.
pub const LOCAL_ADDRESS6: &str = "LOCAL_ADDRESS6";
/// The host end's interface name (`ve-NAME`), printed by `ve-link up`.
pub const HOST_IFACE: &str = "HOST_IFACE";
/// The container end's interface name, printed by `ve-link up`.
pub const LOCAL_IFACE: &str = "LOCAL_IFACE";
/// The bridge the host end is enslaved to, printed by `ve-link up --bridge`.
pub const HOST_BRIDGE: &str = "HOST_BRIDGE";

/// The address keys, in the order they are printed: what `ve-alloc` writes and
/// `ve-link --addresses` reads.
pub const ADDRESS_KEYS: [&str; 4] = [HOST_ADDRESS, LOCAL_ADDRESS, HOST_ADDRESS6, LOCAL_ADDRESS6];

/// The keys `ve-link up` prints before the addresses.
pub const LINK_KEYS: [&str; 3] = [HOST_IFACE, LOCAL_IFACE, HOST_BRIDGE];

/// Every key of the contract.
pub const ALL_KEYS: [&str; 7] = [
    HOST_IFACE,
    LOCAL_IFACE,
    HOST_BRIDGE,
    HOST_ADDRESS,
    LOCAL_ADDRESS,
    HOST_ADDRESS6,
    LOCAL_ADDRESS6,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_env_names_and_all_is_the_union() {
        let mut all = ALL_KEYS.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), ALL_KEYS.len());
        for k in LINK_KEYS.iter().chain(&ADDRESS_KEYS) {
            assert!(ALL_KEYS.contains(k), "{k}");
            assert!(k
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'));
        }
        let map =
            crate::output::parse_env(&crate::output::env_lines(&ALL_KEYS.map(|k| (k, "x"))), "-")
                .unwrap();
        assert_eq!(map.len(), ALL_KEYS.len());
    }
}
