//! Comparing what the kernel has with what a request wants: the list of changes `up`
//! applies and `check` reports. Pure logic, no kernel access.

use std::fmt;

use crate::request::{container_of, mac_text, Addr, Route, UpRequest};

/// A link as the kernel reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub veth: bool,
    /// The peer's ifindex (in the peer's namespace).
    pub peer: Option<u32>,
    /// The peer's namespace id as seen from this link's namespace (None: same namespace).
    pub peer_nsid: Option<i32>,
    pub alias: Option<String>,
    pub mtu: u32,
    pub mac: Vec<u8>,
    pub up: bool,
    pub master: Option<u32>,
    pub altnames: Vec<String>,
    pub group: u32,
}

/// One side (host or container) as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Side {
    pub link: Option<Link>,
    /// Global-scope addresses on the link.
    pub addrs: Vec<Addr>,
    /// Routes through the link that this tool installed.
    pub routes: Vec<Route>,
}

/// Everything `up` and `check` look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub host: Side,
    pub ctr: Side,
    pub ctr_lo_up: bool,
    /// The container's lo ifindex.
    pub ctr_lo: Option<u32>,
    /// The id the host namespace gives the container namespace, if any.
    pub ctr_nsid: Option<i32>,
    /// The bridge's ifindex, in bridge mode.
    pub bridge: Option<u32>,
    /// A link named as the host end of the other mode (`vb-` when routed, `ve-` when
    /// bridged).
    pub other: Option<Link>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    Host,
    Container,
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Where::Host => "host",
            Where::Container => "container",
        })
    }
}

/// Link attributes to set on an existing link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFix {
    pub up: bool,
    /// The ve-link marker, missing when a concurrent `up` has not set it yet.
    pub alias: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub master: Option<u32>,
}

/// One step towards the requested state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Delete our stale host end (its peer is not the requested container end).
    RemoveStale {
        index: u32,
        why: String,
    },
    /// Create the pair: host end up, peer made directly in the container namespace.
    Create,
    /// The host end lacks its unshortened name as altname.
    AddAltname,
    FixLink {
        side: Where,
        fix: LinkFix,
        why: String,
    },
    LoUp,
    AddAddr(Where, Addr),
    DelAddr(Where, Addr),
    AddRoute(Where, Route),
    DelRoute(Where, Route),
}

impl Change {
    /// The side a change acts on; None for the pair as a whole (removal, creation).
    pub fn side(&self) -> Option<Where> {
        match self {
            Change::RemoveStale { .. } | Change::Create => None,
            Change::AddAltname => Some(Where::Host),
            Change::LoUp => Some(Where::Container),
            Change::FixLink { side, .. }
            | Change::AddAddr(side, _)
            | Change::DelAddr(side, _)
            | Change::AddRoute(side, _)
            | Change::DelRoute(side, _) => Some(*side),
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::RemoveStale { why, .. } => write!(f, "host: stale link: {why}"),
            Change::Create => write!(f, "veth pair missing"),
            Change::AddAltname => write!(f, "host: alternative name missing"),
            Change::FixLink { side, why, .. } => write!(f, "{side}: {why}"),
            Change::LoUp => write!(f, "container: lo is down"),
            Change::AddAddr(s, (a, l)) => write!(f, "{s}: address {a}/{l} missing"),
            Change::DelAddr(s, (a, l)) => write!(f, "{s}: unexpected address {a}/{l}"),
            Change::AddRoute(s, r) => write!(f, "{s}: route {r} missing"),
            Change::DelRoute(s, r) => write!(f, "{s}: unexpected route {r}"),
        }
    }
}

/// What `up` would do, or why it cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Conflicts `up` will not resolve (someone else's link in the way).
    pub blockers: Vec<Blocker>,
}

/// Why `up` cannot go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// The bridge to attach to does not exist (exit 66).
    NoBridge(String),
    /// A link that is not this container's is in the way (exit 73).
    InTheWay(String),
}

impl Blocker {
    pub fn exit(&self) -> common::Exit {
        match self {
            Blocker::NoBridge(_) => common::Exit::NoInput,
            Blocker::InTheWay(_) => common::Exit::CantCreate,
        }
    }
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::NoBridge(b) => write!(f, "bridge {b} does not exist"),
            Blocker::InTheWay(why) => f.write_str(why),
        }
    }
}

/// The container a host-end link belongs to: its alias says so, or, in the moment
/// between creation and the alias (the kernel ignores IFLA_IFALIAS on creation), the
/// MAC derived from the requested container's name, set in the creating request.
/// (The rule is [`crate::ours`]'s.) Another container's when its alias says so.
pub fn owner<'a>(l: &'a Link, req: &'a UpRequest) -> Option<&'a str> {
    if crate::ours::is_host_end_of(l, &req.name) {
        return Some(&req.name);
    }
    container_of(l.alias.as_deref()).filter(|n| *n != req.name)
}

/// Compare `have` with what `req` asks for.
pub fn plan(req: &UpRequest, have: &Observed) -> Plan {
    let mut p = Plan::default();
    // Our pair from an `up` in the other mode goes first, its container end with it.
    let mut have = have;
    let without_other;
    if let Some(o) = &have.other {
        // Marked only: an unmarked one may be another `up` in the middle of its work.
        if crate::ours::container(o) == Some(req.name.as_str()) {
            p.changes.push(Change::RemoveStale {
                index: o.index,
                why: format!("{} is left from an up in the other mode", o.name),
            });
            if let Some(c) = &have.ctr.link {
                if c.peer == Some(o.index) && o.peer == Some(c.index) {
                    let mut h = have.clone();
                    h.ctr = Side::default();
                    without_other = h;
                    have = &without_other;
                }
            }
        }
    }
    let want = req.want();
    let ns = req.netns.to_string();
    if req.bridge.is_some() && have.bridge.is_none() {
        p.blockers
            .push(Blocker::NoBridge(req.bridge.clone().unwrap_or_default()));
    }
    let paired = match (&have.host.link, &have.ctr.link) {
        (Some(h), Some(c)) => {
            h.veth
                && c.veth
                && h.peer == Some(c.index)
                && c.peer == Some(h.index)
                && h.peer_nsid.is_some()
                && h.peer_nsid == have.ctr_nsid
        }
        _ => false,
    };
    let mut fresh = true;
    if let Some(h) = &have.host.link {
        match owner(h, req) {
            None => p.blockers.push(Blocker::InTheWay(format!(
                "{} exists and was not made by ve-link (no {:?} alias); not touching it",
                h.name,
                crate::request::alias_for(&req.name)
            ))),
            Some(n) if n != req.name => p.blockers.push(Blocker::InTheWay(format!(
                "{} belongs to container {n}, not {}",
                h.name, req.name
            ))),
            Some(_) if paired => fresh = false,
            Some(_) => p.changes.push(Change::RemoveStale {
                index: h.index,
                why: format!("{} is not paired with {} in {ns}", h.name, req.peer_ifname),
            }),
        }
    }
    if fresh {
        if have.ctr.link.is_some() {
            p.blockers.push(Blocker::InTheWay(format!(
                "{} already exists in {ns}",
                req.peer_ifname
            )));
        }
        p.changes.push(Change::Create);
        if !have.ctr_lo_up {
            p.changes.push(Change::LoUp);
        }
        for a in &want.host_addrs {
            p.changes.push(Change::AddAddr(Where::Host, *a));
        }
        for r in &want.host_routes {
            p.changes.push(Change::AddRoute(Where::Host, *r));
        }
        for a in &want.ctr_addrs {
            p.changes.push(Change::AddAddr(Where::Container, *a));
        }
        for r in &want.ctr_routes {
            p.changes.push(Change::AddRoute(Where::Container, *r));
        }
        return p;
    }
    let (h, c) = (
        have.host.link.as_ref().expect("paired"),
        have.ctr.link.as_ref().expect("paired"),
    );
    if let Some(alt) = &req.altname {
        if !h.altnames.contains(alt) {
            p.changes.push(Change::AddAltname);
        }
    }
    let master = if req.bridge.is_some() {
        have.bridge
    } else {
        None
    };
    if let Some(mut fix) = link_fix(h, req.mtu, &req.host_mac, master, req.bridge.is_some())
        .or_else(|| (h.alias.is_none()).then(LinkFix::default))
    {
        if h.alias.is_none() {
            fix.alias = Some(req.alias());
        }
        p.changes.push(fix_change(Where::Host, h, fix));
    }
    if let Some(fix) = link_fix(c, req.mtu, &req.peer_mac, None, false) {
        p.changes.push(fix_change(Where::Container, c, fix));
    }
    if !have.ctr_lo_up {
        p.changes.push(Change::LoUp);
    }
    diff(
        &mut p,
        Where::Host,
        &want.host_addrs,
        &have.host.addrs,
        Change::AddAddr,
        Change::DelAddr,
    );
    diff(
        &mut p,
        Where::Host,
        &want.host_routes,
        &have.host.routes,
        Change::AddRoute,
        Change::DelRoute,
    );
    diff(
        &mut p,
        Where::Container,
        &want.ctr_addrs,
        &have.ctr.addrs,
        Change::AddAddr,
        Change::DelAddr,
    );
    diff(
        &mut p,
        Where::Container,
        &want.ctr_routes,
        &have.ctr.routes,
        Change::AddRoute,
        Change::DelRoute,
    );
    p
}

fn diff<T: PartialEq + Copy>(
    p: &mut Plan,
    side: Where,
    want: &[T],
    have: &[T],
    add: fn(Where, T) -> Change,
    del: fn(Where, T) -> Change,
) {
    // Removals first: an old default route must go before its replacement comes.
    for h in have.iter().filter(|h| !want.contains(h)) {
        p.changes.push(del(side, *h));
    }
    for w in want.iter().filter(|w| !have.contains(w)) {
        p.changes.push(add(side, *w));
    }
}

fn link_fix(
    l: &Link,
    mtu: Option<u32>,
    mac: &[u8; 6],
    master: Option<u32>,
    bridged: bool,
) -> Option<LinkFix> {
    let fix = LinkFix {
        up: !l.up,
        mtu: mtu.filter(|m| *m != l.mtu),
        mac: (l.mac != mac).then_some(*mac),
        master: master.filter(|m| bridged && l.master != Some(*m)),
        alias: None,
    };
    (fix != LinkFix::default()).then_some(fix)
}

fn fix_change(side: Where, l: &Link, fix: LinkFix) -> Change {
    let mut why = Vec::new();
    if fix.up {
        why.push(format!("{} is down", l.name));
    }
    if let Some(m) = fix.mtu {
        why.push(format!("{} has mtu {}, not {m}", l.name, l.mtu));
    }
    if let Some(m) = fix.mac {
        why.push(format!(
            "{} has MAC {}, not {}",
            l.name,
            mac_text(&l.mac),
            mac_text(&m)
        ));
    }
    if fix.master.is_some() {
        why.push(format!("{} is not attached to the bridge", l.name));
    }
    if fix.alias.is_some() {
        why.push(format!("{} lacks the ve-link alias", l.name));
    }
    Change::FixLink {
        side,
        fix,
        why: why.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{alias_for, UpInput};

    fn req() -> UpRequest {
        UpRequest::build(UpInput {
            name: "foo".into(),
            netns: Some("ctr".into()),
            host_address: Some("10.0.0.1".into()),
            local_address: Some("10.0.0.2".into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn in_place(r: &UpRequest) -> Observed {
        let w = r.want();
        Observed {
            host: Side {
                link: Some(Link {
                    index: 10,
                    name: r.host_ifname.clone(),
                    veth: true,
                    peer: Some(2),
                    peer_nsid: Some(0),
                    alias: Some(alias_for(&r.name)),
                    mtu: 1500,
                    mac: r.host_mac.to_vec(),
                    up: true,
                    ..Default::default()
                }),
                addrs: w.host_addrs.clone(),
                routes: w.host_routes.clone(),
            },
            ctr: Side {
                link: Some(Link {
                    index: 2,
                    name: "eth0".into(),
                    veth: true,
                    peer: Some(10),
                    mtu: 1500,
                    mac: r.peer_mac.to_vec(),
                    up: true,
                    ..Default::default()
                }),
                addrs: w.ctr_addrs.clone(),
                routes: w.ctr_routes.clone(),
            },
            ctr_lo_up: true,
            ctr_lo: Some(1),
            ctr_nsid: Some(0),
            bridge: None,
            other: None,
        }
    }

    #[test]
    fn nothing_to_do_when_everything_is_in_place() {
        let r = req();
        assert_eq!(plan(&r, &in_place(&r)), Plan::default());
    }

    #[test]
    fn empty_system_gets_everything() {
        let r = req();
        let p = plan(&r, &Observed::default());
        assert!(p.blockers.is_empty());
        assert_eq!(p.changes[0], Change::Create);
        assert_eq!(p.changes[1], Change::LoUp);
        assert_eq!(p.changes.len(), 2 + 1 + 1 + 1 + 2);
    }

    #[test]
    fn new_addresses_converge_old_ones_go() {
        let r = req();
        let mut have = in_place(&r);
        let old: std::net::IpAddr = "10.9.9.9".parse().unwrap();
        have.ctr.addrs = vec![(old, 32)];
        have.ctr.routes.pop();
        let p = plan(&r, &have);
        assert_eq!(
            p.changes,
            vec![
                Change::DelAddr(Where::Container, (old, 32)),
                Change::AddAddr(Where::Container, ("10.0.0.2".parse().unwrap(), 32)),
                Change::AddRoute(Where::Container, r.want().ctr_routes[1]),
            ]
        );
        assert_eq!(
            p.changes[2].to_string(),
            "container: route default via 10.0.0.1 missing"
        );
    }

    #[test]
    fn unpaired_host_end_is_stale_and_replaced() {
        let r = req();
        let mut have = in_place(&r);
        have.ctr = Side::default();
        let p = plan(&r, &have);
        assert!(p.blockers.is_empty());
        assert!(matches!(
            p.changes[0],
            Change::RemoveStale { index: 10, .. }
        ));
        assert_eq!(p.changes[1], Change::Create);
    }

    #[test]
    fn a_pair_from_the_other_mode_is_replaced() {
        let r = req();
        let mut have = in_place(&r);
        let mut old = have.host.link.take().unwrap();
        old.name = "vb-foo".into();
        have.other = Some(old);
        have.host = Side::default();
        let p = plan(&r, &have);
        assert!(p.blockers.is_empty(), "{p:?}");
        assert!(matches!(
            p.changes[0],
            Change::RemoveStale { index: 10, .. }
        ));
        assert_eq!(p.changes[1], Change::Create);
        // Someone else's vb-foo is not ours to remove.
        have.other.as_mut().unwrap().alias = None;
        let p = plan(&r, &have);
        assert!(!p
            .changes
            .iter()
            .any(|c| matches!(c, Change::RemoveStale { .. })));
        assert!(p.blockers[0].to_string().contains("eth0 already exists"));
    }

    #[test]
    fn foreign_links_block() {
        let r = req();
        let mut have = in_place(&r);
        have.host.link.as_mut().unwrap().alias = None;
        have.host.link.as_mut().unwrap().mac = vec![2, 0, 0, 0, 0, 1];
        assert!(plan(&r, &have).blockers[0]
            .to_string()
            .contains("not made by ve-link"));
        // Same MAC but some other alias: still not ours.
        let mut have = in_place(&r);
        have.host.link.as_mut().unwrap().alias = Some("uplink".into());
        assert!(plan(&r, &have).blockers[0]
            .to_string()
            .contains("not made by ve-link"));
        let mut have = in_place(&r);
        have.host.link = None;
        let p = plan(&r, &have);
        assert!(
            p.blockers[0].to_string().contains("eth0 already exists"),
            "{p:?}"
        );
    }

    #[test]
    fn a_pair_being_marked_by_a_concurrent_up_is_ours() {
        let r = req();
        let mut have = in_place(&r);
        have.host.link.as_mut().unwrap().alias = None;
        let p = plan(&r, &have);
        assert!(p.blockers.is_empty(), "{p:?}");
        match &p.changes[..] {
            [Change::FixLink {
                side: Where::Host,
                fix,
                why,
            }] => {
                assert_eq!(fix.alias.as_deref(), Some("ve-link:foo"));
                assert!(why.contains("lacks the ve-link alias"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn link_attributes_are_fixed() {
        let mut r = req();
        r.mtu = Some(1400);
        let mut have = in_place(&r);
        have.ctr.link.as_mut().unwrap().up = false;
        let p = plan(&r, &have);
        assert_eq!(p.changes.len(), 2);
        assert!(
            p.changes[1].to_string().contains("eth0 is down"),
            "{}",
            p.changes[1]
        );
        assert!(p.changes[0].to_string().contains("mtu 1500, not 1400"));
    }
}
