//! Which links are ve-link's: the one rule `up`, `down`, `gc` and `list` share; and
//! which routes are `ve-link routes`' (routes to other nodes' blocks).

use common::name;

use crate::{
    plan::Link,
    request::{container_of, mac_for},
};

/// Whether `l` is the host end ve-link made for container `name`: a veth named by the
/// naming rule (either mode) that carries the `ve-link:NAME` alias, or no alias yet but
/// NAME's derived MAC (an `up` is between creating it and marking it: the kernel
/// ignores the alias in the creating request).
pub fn is_host_end_of(l: &Link, name: &str) -> bool {
    let named = l.name == name::host_ifname(name) || l.name == name::bridge_ifname(name);
    let marked = match &l.alias {
        Some(_) => container_of(l.alias.as_deref()) == Some(name),
        None => l.mac == mac_for(name, "host"),
    };
    l.veth && named && marked
}

/// Whether a route is one `ve-link routes` made, to another node's block: ve-link's
/// protocol (118) in the main table, a gateway, and a prefix (not a default route).
/// The routes `up` makes for containers carry protocol 118 too, but never a gateway
/// on the host (they lead to a container's address over its veth), so converging the
/// node routes never touches them; nor a container's default route, were it run there.
pub fn is_node_route(protocol: u8, main_table: bool, len: u8, gateway: bool) -> bool {
    protocol == crate::kernel::ROUTE_PROTOCOL && main_table && gateway && len > 0
}

/// The container whose marked host end `l` is, if it is one.
pub fn container(l: &Link) -> Option<&str> {
    let c = container_of(l.alias.as_deref())?;
    is_host_end_of(l, c).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::alias_for;

    fn link(name: &str, alias: Option<String>, mac: [u8; 6]) -> Link {
        Link {
            name: name.into(),
            alias,
            mac: mac.to_vec(),
            veth: true,
            ..Default::default()
        }
    }

    #[test]
    fn node_routes_are_protocol_118_main_table_prefixes_with_a_gateway() {
        assert!(is_node_route(118, true, 26, true));
        // A container's host route (no gateway), a container's default route, someone
        // else's protocol, another table.
        assert!(!is_node_route(118, true, 32, false));
        assert!(!is_node_route(118, true, 0, true));
        assert!(!is_node_route(4, true, 26, true));
        assert!(!is_node_route(118, false, 26, true));
    }

    #[test]
    fn a_link_is_ours_by_alias_or_fresh_mac_and_by_its_name() {
        let mac = mac_for("foo", "host");
        let marked = link("ve-foo", Some(alias_for("foo")), [2; 6]);
        assert!(is_host_end_of(&marked, "foo"));
        assert_eq!(container(&marked), Some("foo"));
        assert!(is_host_end_of(
            &link("vb-foo", Some(alias_for("foo")), mac),
            "foo"
        ));
        // Between creating and marking: no alias, the name's MAC.
        let fresh = link("ve-foo", None, mac);
        assert!(is_host_end_of(&fresh, "foo"));
        assert_eq!(container(&fresh), None);
        // Someone else's alias, another container's, a foreign MAC, a foreign name.
        assert!(!is_host_end_of(
            &link("ve-foo", Some("mine".into()), mac),
            "foo"
        ));
        assert!(!is_host_end_of(
            &link("ve-foo", Some(alias_for("bar")), mac),
            "foo"
        ));
        assert!(!is_host_end_of(&link("ve-foo", None, [2; 6]), "foo"));
        assert!(!is_host_end_of(
            &link("eth0", Some(alias_for("foo")), mac),
            "foo"
        ));
        assert_eq!(
            container(&link("ve-bar", Some(alias_for("foo")), mac)),
            None
        );
        // Not a veth.
        let mut dummy = marked.clone();
        dummy.veth = false;
        assert!(!is_host_end_of(&dummy, "foo"));
    }
}
