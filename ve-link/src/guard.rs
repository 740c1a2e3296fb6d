//! Refusing addresses the host namespace already uses: `up` must not route one of the
//! host's own addresses, or one on one of its networks (the uplink's gateway), into a
//! container. Pure logic over the host's route lookups; no kernel access.

use std::net::IpAddr;

use crate::{kernel::ROUTE_PROTOCOL, request::UpRequest};

/// What kind of route covers an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoverKind {
    /// The address is one of the host namespace's own.
    Local,
    Unicast,
    /// Blackhole, unreachable, prohibit, ...: traffic to it goes nowhere today.
    Other,
}

/// The most specific route of the host that covers an address (`ip route get fibmatch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Covering {
    pub kind: CoverKind,
    pub dst: IpAddr,
    pub len: u8,
    pub protocol: u8,
    /// The link it goes through (the link holding a local address); None for multipath.
    pub oif: Option<u32>,
}

/// The addresses of a request to look up, with their keys: in routed mode all four;
/// in bridge mode only the container's (ve-link routes nothing on the host there, and
/// HOST_ADDRESS is the gateway, normally the bridge's own address).
pub fn to_check(req: &UpRequest) -> Vec<(&'static str, IpAddr)> {
    req.addresses
        .all()
        .into_iter()
        .filter(|(k, _)| req.bridge.is_none() || k.starts_with("LOCAL"))
        .collect()
}

/// Why `key`=`addr` must not be used, given the route that covers it in the host
/// namespace (`cover`), this container's existing host end (`own`, for a re-up), and
/// whether the link holding a local address is another ve-link host end (`managed`:
/// pairs may share one host address, as NixOS containers may). `name` turns an ifindex
/// into a name for the message.
pub fn refusal(
    req: &UpRequest,
    key: &str,
    addr: IpAddr,
    cover: Option<&Covering>,
    own: Option<u32>,
    managed: bool,
    name: impl Fn(Option<u32>) -> String,
) -> Option<String> {
    let c = cover?;
    let ours = own.is_some() && c.oif == own;
    match c.kind {
        _ if ours => None,
        CoverKind::Local => {
            let shared = key.starts_with("HOST") && req.bridge.is_none() && managed;
            (!shared).then(|| {
                format!(
                    "{key}={addr} is already an address of the host namespace (on {})",
                    name(c.oif)
                )
            })
        }
        // In bridge mode the container is on the bridge's network by design.
        CoverKind::Unicast if req.bridge.is_none() && c.len > 0 && c.protocol != ROUTE_PROTOCOL => {
            Some(format!(
                "{key}={addr} is on the host's route {}/{} dev {}, which is not ve-link's",
                c.dst,
                c.len,
                name(c.oif)
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::UpInput;

    fn req(bridge: bool) -> UpRequest {
        UpRequest::build(UpInput {
            name: "foo".into(),
            netns: Some("foo".into()),
            host_address: Some("10.233.0.1".into()),
            local_address: Some("10.233.0.2".into()),
            bridge: bridge.then(|| "br0".into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn cover(kind: CoverKind, len: u8, protocol: u8, oif: u32) -> Covering {
        Covering {
            kind,
            dst: "192.0.2.0".parse().unwrap(),
            len,
            protocol,
            oif: Some(oif),
        }
    }

    fn why(
        r: &UpRequest,
        key: &str,
        c: Option<Covering>,
        own: Option<u32>,
        managed: bool,
    ) -> Option<String> {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        refusal(r, key, a, c.as_ref(), own, managed, |i| {
            format!("if{}", i.unwrap_or(0))
        })
    }

    #[test]
    fn host_addresses_and_host_networks_are_refused() {
        let r = req(false);
        let e = why(
            &r,
            "LOCAL_ADDRESS",
            Some(cover(CoverKind::Local, 32, 2, 3)),
            None,
            false,
        );
        assert_eq!(
            e.as_deref(),
            Some("LOCAL_ADDRESS=192.0.2.1 is already an address of the host namespace (on if3)")
        );
        let e = why(
            &r,
            "LOCAL_ADDRESS",
            Some(cover(CoverKind::Unicast, 24, 2, 3)),
            Some(7),
            false,
        );
        assert_eq!(
            e.as_deref(),
            Some("LOCAL_ADDRESS=192.0.2.1 is on the host's route 192.0.2.0/24 dev if3, which is not ve-link's")
        );
        assert!(why(
            &r,
            "HOST_ADDRESS",
            Some(cover(CoverKind::Unicast, 24, 4, 3)),
            None,
            false
        )
        .is_some());
        // Another container's host address is no excuse for a LOCAL_ADDRESS.
        assert!(why(
            &r,
            "LOCAL_ADDRESS",
            Some(cover(CoverKind::Local, 32, 2, 3)),
            None,
            true
        )
        .is_some());
    }

    #[test]
    fn the_default_route_ours_and_re_up_are_fine() {
        let r = req(false);
        assert!(why(&r, "LOCAL_ADDRESS", None, None, false).is_none());
        assert!(why(
            &r,
            "LOCAL_ADDRESS",
            Some(cover(CoverKind::Unicast, 0, 3, 3)),
            None,
            false
        )
        .is_none());
        assert!(why(
            &r,
            "LOCAL_ADDRESS",
            Some(cover(CoverKind::Unicast, 32, 118, 9)),
            None,
            false
        )
        .is_none());
        assert!(why(
            &r,
            "LOCAL_ADDRESS",
            Some(cover(CoverKind::Other, 8, 4, 3)),
            None,
            false
        )
        .is_none());
        assert!(why(
            &r,
            "HOST_ADDRESS",
            Some(cover(CoverKind::Local, 32, 2, 5)),
            Some(5),
            false
        )
        .is_none());
        assert!(why(
            &r,
            "LOCAL_ADDRESS",
            Some(cover(CoverKind::Unicast, 24, 3, 5)),
            Some(5),
            false
        )
        .is_none());
        // A host address shared with another ve-link pair.
        assert!(why(
            &r,
            "HOST_ADDRESS",
            Some(cover(CoverKind::Local, 32, 2, 3)),
            None,
            true
        )
        .is_none());
    }

    #[test]
    fn bridge_mode_checks_only_the_container_addresses_for_being_the_hosts() {
        let r = req(true);
        assert_eq!(
            to_check(&r),
            [("LOCAL_ADDRESS", "10.233.0.2".parse::<IpAddr>().unwrap())]
        );
        assert_eq!(to_check(&req(false)).len(), 2);
        let on_bridge = Some(cover(CoverKind::Unicast, 24, 2, 3));
        assert!(why(&r, "LOCAL_ADDRESS", on_bridge, None, false).is_none());
        let hosts = Some(cover(CoverKind::Local, 32, 2, 3));
        assert!(why(&r, "LOCAL_ADDRESS", hosts, None, true).is_some());
    }
}
