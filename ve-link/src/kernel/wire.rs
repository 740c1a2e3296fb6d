//! Requests as route netlink messages, and the replies back as ve-link's types. Pure
//! translation, no socket.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope},
    link::{
        InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
        LinkMessage, Prop,
    },
    nsid::{NsidAttribute, NsidMessage},
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
        RouteScope, RouteType,
    },
    AddressFamily, RouteNetlinkMessage as M,
};

use super::{Reply, Req, Veth, ROUTE_PROTOCOL};
use crate::{
    guard::{CoverKind, Covering},
    plan::{Link, LinkFix},
    request::{full_len, Addr, Route},
};

/// One netlink message of a request: the message and its flags besides NLM_F_REQUEST.
/// A request without NLM_F_ACK or NLM_F_DUMP is answered by exactly one message.
pub type Part = (M, u16);

/// The messages that carry `req` (routes need one dump per family).
pub fn encode(req: &Req) -> Vec<Part> {
    let ack = NLM_F_ACK;
    match req {
        Req::LinkByName(name) => {
            let mut m = LinkMessage::default();
            m.attributes.push(LinkAttribute::IfName(name.clone()));
            vec![(M::GetLink(with_skip_stats(m)), 0)]
        }
        Req::LinkByIndex(index) => {
            let mut m = LinkMessage::default();
            m.header.index = *index;
            vec![(M::GetLink(with_skip_stats(m)), 0)]
        }
        Req::LinkAt { index, nsid } => {
            let mut m = LinkMessage::default();
            m.header.index = *index;
            m.attributes.push(LinkAttribute::IfNetnsId(*nsid));
            vec![(M::GetLink(with_skip_stats(m)), 0)]
        }
        Req::Links => vec![(
            M::GetLink(with_skip_stats(LinkMessage::default())),
            NLM_F_DUMP,
        )],
        Req::Addrs { index, nsid } => {
            // Filtered in the kernel (a strict-check socket), and again in `decode`.
            let mut m = AddressMessage::default();
            m.header.index = *index;
            if let Some(id) = nsid {
                m.attributes.push(AddressAttribute::TargetNetNsId(*id));
            }
            vec![(M::GetAddress(m), NLM_F_DUMP)]
        }
        Req::Routes(index) => [AddressFamily::Inet, AddressFamily::Inet6]
            .into_iter()
            .map(|family| {
                let mut m = RouteMessage::default();
                m.header.address_family = family;
                m.header.table = RouteHeader::RT_TABLE_MAIN;
                m.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
                m.attributes.push(RouteAttribute::Oif(*index));
                (M::GetRoute(m), NLM_F_DUMP)
            })
            .collect(),
        Req::RouteTo(addr) => {
            let mut m = RouteMessage::default();
            m.header.address_family = family(*addr);
            m.header.destination_prefix_length = full_len(*addr);
            m.header.flags = RouteFlags::FibMatch;
            m.attributes
                .push(RouteAttribute::Destination(route_addr(*addr)));
            vec![(M::GetRoute(m), 0)]
        }
        Req::NodeRoutes { v6 } => {
            let mut m = RouteMessage::default();
            m.header.address_family = if *v6 {
                AddressFamily::Inet6
            } else {
                AddressFamily::Inet
            };
            m.header.table = RouteHeader::RT_TABLE_MAIN;
            m.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
            vec![(M::GetRoute(m), NLM_F_DUMP)]
        }
        Req::AddNodeRoute { route, replace } => {
            let how = if *replace { NLM_F_REPLACE } else { NLM_F_EXCL };
            vec![(M::NewRoute(route_on(None, route)), ack | NLM_F_CREATE | how)]
        }
        Req::DelNodeRoute(r) => vec![(M::DelRoute(route_on(None, r)), ack)],
        Req::NsidOf(fd) => {
            let mut m = NsidMessage::default();
            m.attributes.push(NsidAttribute::Fd(*fd as u32));
            vec![(M::GetNsId(m), 0)]
        }
        Req::AddAddr(index, (ip, len)) => {
            let mut m = addr_message(*index, *ip, *len);
            if ip.is_ipv6() {
                // No duplicate address detection: the address is usable at once.
                m.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            vec![(M::NewAddress(m), ack | NLM_F_CREATE | NLM_F_REPLACE)]
        }
        Req::DelAddr(index, (ip, len)) => {
            vec![(M::DelAddress(addr_message(*index, *ip, *len)), ack)]
        }
        // Replace: a default route of someone else's is taken over, as asked.
        Req::AddRoute(index, r) => vec![(
            M::NewRoute(route_message(*index, r)),
            ack | NLM_F_CREATE | NLM_F_REPLACE,
        )],
        Req::DelRoute(index, r) => vec![(M::DelRoute(route_message(*index, r)), ack)],
        Req::CreateVeth(v) => vec![(M::NewLink(veth(v)), ack | NLM_F_CREATE | NLM_F_EXCL)],
        Req::SetAlias(index, alias) => {
            let mut m = link(*index);
            m.attributes.push(LinkAttribute::IfAlias(alias.clone()));
            vec![(M::SetLink(m), ack)]
        }
        Req::AddAltname(index, name) => {
            let mut m = link(*index);
            m.attributes
                .push(LinkAttribute::PropList(vec![Prop::AltIfName(name.clone())]));
            vec![(M::NewLinkProp(m), ack | NLM_F_CREATE | NLM_F_EXCL)]
        }
        Req::FixLink(index, fix) => vec![(M::SetLink(fix_message(*index, fix)), ack)],
        Req::DelLink(index) => vec![(M::DelLink(link(*index)), ack)],
        Req::SetGroup(index, group) => {
            let mut m = link(*index);
            m.attributes.push(LinkAttribute::Group(*group));
            vec![(M::SetLink(m), ack)]
        }
        Req::DelGroup(group) => {
            let mut m = LinkMessage::default();
            m.attributes.push(LinkAttribute::Group(*group));
            vec![(M::DelLink(m), ack)]
        }
    }
}

/// What the kernel's messages for `req` say.
pub fn decode(req: &Req, replies: Vec<M>) -> Reply {
    match req {
        Req::LinkByName(_) | Req::LinkByIndex(_) | Req::LinkAt { .. } => {
            Reply::Link(replies.into_iter().find_map(as_link))
        }
        Req::Links => Reply::Links(replies.into_iter().filter_map(as_link).collect()),
        Req::Addrs { index, .. } => Reply::Addrs(
            replies
                .into_iter()
                .filter_map(|r| as_addr(r, *index))
                .collect(),
        ),
        Req::Routes(index) => Reply::Routes(
            replies
                .into_iter()
                .filter_map(|r| as_route(r, *index))
                .collect(),
        ),
        Req::RouteTo(addr) => Reply::Cover(replies.into_iter().find_map(|r| as_cover(r, *addr))),
        Req::NodeRoutes { .. } => {
            Reply::Routes(replies.into_iter().filter_map(as_node_route).collect())
        }
        Req::NsidOf(_) => Reply::Nsid(replies.into_iter().find_map(|r| match r {
            M::NewNsId(n) => n.attributes.into_iter().find_map(|a| match a {
                NsidAttribute::Id(id) if id >= 0 => Some(id),
                _ => None,
            }),
            _ => None,
        })),
        _ => Reply::Done,
    }
}

/// Leave the counters out of link replies: a tenth of the bytes with many links.
fn with_skip_stats(mut m: LinkMessage) -> LinkMessage {
    m.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    m
}

fn link(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

fn fix_message(index: u32, fix: &LinkFix) -> LinkMessage {
    let mut m = link(index);
    if fix.up {
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
    }
    if let Some(mtu) = fix.mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = fix.mac {
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    if let Some(br) = fix.master {
        m.attributes.push(LinkAttribute::Controller(br));
    }
    if let Some(a) = &fix.alias {
        m.attributes.push(LinkAttribute::IfAlias(a.clone()));
    }
    m
}

fn veth(v: &Veth) -> LinkMessage {
    // The peer cannot be set up in the same request (the kernel says ENOTCONN).
    let mut p = LinkMessage::default();
    p.attributes.push(LinkAttribute::IfName(v.peer.clone()));
    p.attributes.push(LinkAttribute::NetNsFd(v.ns));
    p.attributes
        .push(LinkAttribute::Address(v.peer_mac.to_vec()));
    let mut m = LinkMessage::default();
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::IfName(v.host.clone()));
    m.attributes.push(LinkAttribute::IfAlias(v.alias.clone()));
    m.attributes
        .push(LinkAttribute::Address(v.host_mac.to_vec()));
    if let Some(mtu) = v.mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
        p.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(br) = v.master {
        m.attributes.push(LinkAttribute::Controller(br));
    }
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
    ]));
    m
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn addr_message(index: u32, ip: IpAddr, len: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(ip);
    m.header.prefix_len = len;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(ip));
    m.attributes.push(AddressAttribute::Address(ip));
    m
}

/// The route message for `r` through link `index`, tagged with [`ROUTE_PROTOCOL`].
pub fn route_message(index: u32, r: &Route) -> RouteMessage {
    route_on(Some(index), r)
}

/// The route message for `r`, through link `oif` or (None) wherever its gateway is.
fn route_on(oif: Option<u32>, r: &Route) -> RouteMessage {
    let mut m = RouteMessage::default();
    let v4 = r.dst.is_ipv4();
    m.header.address_family = family(r.dst);
    m.header.destination_prefix_length = r.len;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
    m.header.scope = if v4 && r.via.is_none() {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    m.header.kind = RouteType::Unicast;
    if r.len > 0 {
        m.attributes
            .push(RouteAttribute::Destination(route_addr(r.dst)));
    }
    if let Some(gw) = r.via {
        m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
    }
    if let Some(index) = oif {
        m.attributes.push(RouteAttribute::Oif(index));
    }
    m
}

fn route_addr(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(v) => RouteAddress::Inet(v),
        IpAddr::V6(v) => RouteAddress::Inet6(v),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn as_addr(r: M, index: u32) -> Option<Addr> {
    let M::NewAddress(a) = r else { return None };
    if a.header.index != index || a.header.scope != AddressScope::Universe {
        return None;
    }
    let local = a.attributes.iter().find_map(|at| match at {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let ip = local.or_else(|| {
        a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    Some((ip, a.header.prefix_len))
}

fn as_route(r: M, index: u32) -> Option<Route> {
    let M::NewRoute(r) = r else { return None };
    if u8::from(r.header.protocol) != ROUTE_PROTOCOL || r.header.table != RouteHeader::RT_TABLE_MAIN
    {
        return None;
    }
    let (mut dst, mut via, mut oif) = (None, None, None);
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Gateway(g) => via = ip_of(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if oif != Some(index) {
        return None;
    }
    let dst = dst.unwrap_or(match r.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    });
    Some(Route {
        dst,
        len: r.header.destination_prefix_length,
        via,
    })
}

/// A route of `ve-link routes`: ours by [`crate::ours::is_node_route`].
fn as_node_route(r: M) -> Option<Route> {
    let M::NewRoute(r) = r else { return None };
    let (mut dst, mut via) = (None, None);
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Gateway(g) => via = ip_of(g),
            _ => {}
        }
    }
    let len = r.header.destination_prefix_length;
    let main = r.header.table == RouteHeader::RT_TABLE_MAIN;
    if !crate::ours::is_node_route(u8::from(r.header.protocol), main, len, via.is_some()) {
        return None;
    }
    Some(Route {
        dst: dst?,
        len,
        via,
    })
}

fn as_cover(r: M, addr: IpAddr) -> Option<Covering> {
    let M::NewRoute(r) = r else { return None };
    let mut c = Covering {
        kind: match r.header.kind {
            RouteType::Local => CoverKind::Local,
            RouteType::Unicast => CoverKind::Unicast,
            _ => CoverKind::Other,
        },
        len: r.header.destination_prefix_length,
        protocol: u8::from(r.header.protocol),
        dst: addr,
        oif: None,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => c.oif = Some(*i),
            RouteAttribute::Destination(d) => c.dst = ip_of(d).unwrap_or(addr),
            _ => {}
        }
    }
    Some(c)
}

fn as_link(m: M) -> Option<Link> {
    let M::NewLink(m) = m else { return None };
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::IfAlias(s) => l.alias = Some(s),
            LinkAttribute::Mtu(v) => l.mtu = v,
            LinkAttribute::Address(mac) => l.mac = mac,
            LinkAttribute::Link(p) => l.peer = Some(p),
            LinkAttribute::LinkNetNsId(id) => l.peer_nsid = Some(id),
            LinkAttribute::Controller(c) => l.master = Some(c),
            LinkAttribute::Group(g) => l.group = g,
            LinkAttribute::PropList(props) => {
                for p in props {
                    if let Prop::AltIfName(n) = p {
                        l.altnames.push(n);
                    }
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                l.veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    Some(l)
}
