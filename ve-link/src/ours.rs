//! Which links are ve-link's: the one rule `up`, `down`, `gc` and `list` share.

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
