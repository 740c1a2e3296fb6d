//! The kernel side: rtnetlink requests for links, addresses, routes and namespace ids,
//! and the connections that carry them (one per namespace, the container's opened on
//! a thread of its own that entered the container namespace).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    sync::mpsc,
    thread,
};

use common::{netns::Netns, Error, Result};
use futures_util::{future, StreamExt};
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
    AddressFamily, RouteNetlinkMessage,
};
use rtnetlink::{
    packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
        NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    },
    proto::{Connection, ConnectionHandle},
    sys::{protocols::NETLINK_ROUTE, AsyncSocket, SocketAddr},
};

mod msg;
use msg::Msg;

use crate::{
    guard::{CoverKind, Covering},
    plan::{Link, LinkFix},
    request::{Addr, Route},
};

/// `rtm_protocol` of the routes ve-link installs: tells ours apart from everyone
/// else's (118 is unassigned in iproute2's rt_protos).
pub const ROUTE_PROTOCOL: u8 = 118;

/// How long the kernel may take to answer one request (all parts of a dump) before
/// the command gives up with exit 75: an answer never comes when something went wrong,
/// and a container must not be able to make the host's tools wait forever.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A netlink connection to one namespace.
#[derive(Clone)]
pub struct Nl {
    handle: ConnectionHandle<Msg>,
}

/// A route netlink socket with strict checking (the kernel rejects attributes it does
/// not support in requests and filters dumps), speaking [`Msg`].
fn connect() -> io::Result<(Connection<Msg>, Nl)> {
    let (mut conn, handle, _) = rtnetlink::proto::new_connection::<Msg>(NETLINK_ROUTE)?;
    conn.socket_mut()
        .socket_mut()
        .set_netlink_get_strict_chk(true)?;
    Ok((conn, Nl { handle }))
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer from the kernel within {} s", TIMEOUT.as_secs()),
    )
}

fn os_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code.abs())
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "netlink connection closed")
}

/// What the caller was doing when the kernel said no, as a user-facing error.
pub fn step_error(step: impl std::fmt::Display, e: io::Error) -> Error {
    // A kernel EPIPE is not a reader going away: keep it an OS error.
    if e.kind() == io::ErrorKind::BrokenPipe {
        return Error::new(common::Exit::OsErr, format!("{step}: {e}"));
    }
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Error::new(common::Exit::CantCreate, format!("{step}: already exists"));
    }
    Error::io(step, e)
}

impl Nl {
    /// Send one request; collect the replies (within [`TIMEOUT`]); turn a NACK into
    /// its errno.
    async fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut req = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(Msg::from(msg)),
        );
        req.header.flags = flags;
        let mut resp = self
            .handle
            .request(req, SocketAddr::new(0, 0))
            .map_err(|_| closed())?;
        let replies = async {
            let mut out = Vec::new();
            while let Some(m) = resp.next().await {
                match m.payload {
                    NetlinkPayload::InnerMessage(Msg::Route(inner)) => out.push(inner),
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code {
                            return Err(os_error(code.get()));
                        }
                    }
                    _ => {}
                }
            }
            Ok(out)
        };
        tokio::time::timeout(TIMEOUT, replies)
            .await
            .map_err(|_| timed_out())?
    }

    async fn ack(&self, msg: RouteNetlinkMessage, extra: u16) -> io::Result<()> {
        self.request(msg, NLM_F_REQUEST | NLM_F_ACK | extra)
            .await
            .map(drop)
    }

    async fn dump(&self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.request(msg, NLM_F_REQUEST | NLM_F_DUMP).await
    }

    /// One link, asked for by `m`; `None` when the kernel has no such link.
    async fn get_link(&self, mut m: LinkMessage) -> io::Result<Option<Link>> {
        m.attributes.push(skip_stats());
        match self
            .request(RouteNetlinkMessage::GetLink(m), NLM_F_REQUEST)
            .await
        {
            Ok(v) => Ok(v.into_iter().find_map(as_link)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The link called `name`, if any.
    pub async fn link_by_name(&self, name: &str) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(m).await
    }

    /// Link `index` of the namespace this one knows as `nsid` (IFLA_TARGET_NETNSID).
    pub async fn link_at(&self, index: u32, nsid: i32) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfNetnsId(nsid));
        self.get_link(m).await
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> io::Result<Vec<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(skip_stats());
        Ok(self
            .dump(RouteNetlinkMessage::GetLink(m))
            .await?
            .into_iter()
            .filter_map(as_link)
            .collect())
    }

    /// Global-scope addresses on link `index` (needs a strict-check socket to filter in
    /// the kernel; filtered here too).
    pub async fn addrs(&self, index: u32) -> io::Result<Vec<Addr>> {
        self.addrs_at(index, None).await
    }

    /// Like [`Nl::addrs`], for a link in the namespace this one knows as `nsid`
    /// (IFA_TARGET_NETNSID: no need to enter it).
    pub async fn addrs_at(&self, index: u32, nsid: Option<i32>) -> io::Result<Vec<Addr>> {
        let mut m = AddressMessage::default();
        m.header.index = index;
        if let Some(id) = nsid {
            m.attributes.push(AddressAttribute::TargetNetNsId(id));
        }
        let mut out = Vec::new();
        for r in self.dump(RouteNetlinkMessage::GetAddress(m)).await? {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if a.header.index != index || a.header.scope != AddressScope::Universe {
                continue;
            }
            let addr = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                out.push((ip, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Routes in the main table through link `index` that ve-link installed.
    pub async fn routes(&self, index: u32) -> io::Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = family;
            m.header.table = RouteHeader::RT_TABLE_MAIN;
            m.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
            m.attributes.push(RouteAttribute::Oif(index));
            for r in self.dump(RouteNetlinkMessage::GetRoute(m)).await? {
                let RouteNetlinkMessage::NewRoute(r) = r else {
                    continue;
                };
                if u8::from(r.header.protocol) != ROUTE_PROTOCOL
                    || r.header.table != RouteHeader::RT_TABLE_MAIN
                {
                    continue;
                }
                let mut oif = None;
                let mut dst = None;
                let mut via = None;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        RouteAttribute::Destination(d) => dst = ip_of(d),
                        RouteAttribute::Gateway(g) => via = ip_of(g),
                        _ => {}
                    }
                }
                if oif != Some(index) {
                    continue;
                }
                let len = r.header.destination_prefix_length;
                let dst = dst.unwrap_or(match family {
                    AddressFamily::Inet => IpAddr::from([0u8; 4]),
                    _ => IpAddr::from([0u8; 16]),
                });
                out.push(Route { dst, len, via });
            }
        }
        Ok(out)
    }

    /// The route the host would use for `addr` as it is in the routing table (`ip route
    /// get fibmatch ADDR`); None when no route covers it.
    pub async fn route_to(&self, addr: IpAddr) -> io::Result<Option<Covering>> {
        let mut m = RouteMessage::default();
        m.header.address_family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.destination_prefix_length = crate::request::full_len(addr);
        m.header.flags = RouteFlags::FibMatch;
        m.attributes
            .push(RouteAttribute::Destination(route_addr(addr)));
        let replies = match self
            .request(RouteNetlinkMessage::GetRoute(m), NLM_F_REQUEST)
            .await
        {
            Ok(v) => v,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) | Some(libc::ENOENT)
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        Ok(replies.into_iter().find_map(|r| {
            let RouteNetlinkMessage::NewRoute(r) = r else {
                return None;
            };
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
        }))
    }

    /// The link with ifindex `index`, if any.
    pub async fn link_by_index(&self, index: u32) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.get_link(m).await
    }

    pub async fn add_addr(&self, index: u32, (ip, len): Addr) -> io::Result<()> {
        let mut m = addr_message(index, ip, len);
        if ip.is_ipv6() {
            // No duplicate address detection: the address is usable at once.
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.ack(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    pub async fn del_addr(&self, index: u32, (ip, len): Addr) -> io::Result<()> {
        let m = addr_message(index, ip, len);
        ignore_gone(self.ack(RouteNetlinkMessage::DelAddress(m), 0).await)
    }

    pub async fn add_route(&self, index: u32, r: &Route) -> io::Result<()> {
        let m = route_message(index, r);
        // Replace: a default route of someone else's is taken over, as asked.
        self.ack(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    pub async fn del_route(&self, index: u32, r: &Route) -> io::Result<()> {
        let m = route_message(index, r);
        ignore_gone(self.ack(RouteNetlinkMessage::DelRoute(m), 0).await)
    }

    /// Create the veth pair: `host` here, up, marked with `alias`; the peer directly in
    /// the namespace `ns`. One request, so nothing is half made.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_veth(
        &self,
        host: &str,
        alias: &str,
        host_mac: &[u8; 6],
        peer: &str,
        peer_mac: &[u8; 6],
        ns: &Netns,
        mtu: Option<u32>,
        master: Option<u32>,
    ) -> io::Result<()> {
        // The peer cannot be set up in the same request (the kernel says ENOTCONN).
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes
            .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        p.attributes.push(LinkAttribute::Address(peer_mac.to_vec()));
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        m.attributes.push(LinkAttribute::Address(host_mac.to_vec()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
            p.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(br) = master {
            m.attributes.push(LinkAttribute::Controller(br));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .await
    }

    /// Set the alias (the ve-link marker) on a link.
    pub async fn set_alias(&self, index: u32, alias: &str) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        self.ack(RouteNetlinkMessage::SetLink(m), 0).await
    }

    pub async fn add_altname(&self, index: u32, name: &str) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes
            .push(LinkAttribute::PropList(vec![Prop::AltIfName(
                name.to_string(),
            )]));
        match self
            .ack(
                RouteNetlinkMessage::NewLinkProp(m),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    pub async fn fix_link(&self, index: u32, fix: &LinkFix) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
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
        self.ack(RouteNetlinkMessage::SetLink(m), 0).await
    }

    pub async fn set_up(&self, index: u32) -> io::Result<()> {
        self.fix_link(
            index,
            &LinkFix {
                up: true,
                ..Default::default()
            },
        )
        .await
    }

    /// Delete one link (a veth takes its peer along). Already gone is success.
    pub async fn del_link(&self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        ignore_gone(self.ack(RouteNetlinkMessage::DelLink(m), 0).await)
    }

    pub async fn set_group(&self, index: u32, group: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Group(group));
        self.ack(RouteNetlinkMessage::SetLink(m), 0).await
    }

    /// Delete every link in interface group `group` in one request: the kernel tears
    /// them down together and waits for RCU once, not once per link.
    pub async fn del_group(&self, group: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::Group(group));
        ignore_gone(self.ack(RouteNetlinkMessage::DelLink(m), 0).await)
    }

    /// The id this namespace gives the namespace `ns`, if one is assigned.
    pub async fn nsid_of(&self, ns: &impl AsFd) -> io::Result<Option<i32>> {
        let mut m = NsidMessage::default();
        m.attributes
            .push(NsidAttribute::Fd(ns.as_fd().as_raw_fd() as u32));
        let replies = self
            .request(RouteNetlinkMessage::GetNsId(m), NLM_F_REQUEST)
            .await?;
        Ok(replies.into_iter().find_map(|r| match r {
            RouteNetlinkMessage::NewNsId(n) => n.attributes.into_iter().find_map(|a| match a {
                NsidAttribute::Id(id) if id >= 0 => Some(id),
                _ => None,
            }),
            _ => None,
        }))
    }
}

/// Leave the counters out of link replies: a tenth of the bytes with many links.
fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

fn ignore_gone(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENODEV)
                    | Some(libc::ESRCH)
                    | Some(libc::EADDRNOTAVAIL)
                    | Some(libc::ENOENT)
            ) =>
        {
            Ok(())
        }
        r => r,
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn addr_message(index: u32, ip: IpAddr, len: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.prefix_len = len;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(ip));
    m.attributes.push(AddressAttribute::Address(ip));
    m
}

/// The route message for `r` through link `index`, tagged with [`ROUTE_PROTOCOL`].
pub fn route_message(index: u32, r: &Route) -> RouteMessage {
    let mut m = RouteMessage::default();
    let v4 = r.dst.is_ipv4();
    m.header.address_family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
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
    m.attributes.push(RouteAttribute::Oif(index));
    m
}

fn route_addr(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(v) => RouteAddress::Inet(v),
        IpAddr::V6(v) => RouteAddress::Inet6(v),
    }
}

fn as_link(m: RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(m) = m else {
        return None;
    };
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))
}

/// A runtime on the calling thread with a netlink connection to the calling thread's
/// namespace (the host side).
pub struct HostConn {
    pub rt: tokio::runtime::Runtime,
    pub nl: Nl,
}

impl HostConn {
    pub fn open() -> Result<Self> {
        let rt = runtime()?;
        let nl = rt.block_on(async {
            let (conn, nl) = connect().map_err(|e| Error::io("opening a netlink socket", e))?;
            tokio::spawn(conn);
            Ok::<_, Error>(nl)
        })?;
        Ok(HostConn { rt, nl })
    }
}

/// A netlink connection inside a container namespace: the socket is opened, and its
/// connection driven, on a dedicated thread that entered the namespace with its own
/// current-thread runtime. Requests may be sent from any thread.
pub struct CtrConn {
    pub nl: Nl,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<Result<()>>>,
}

impl CtrConn {
    pub fn open(ns: &Netns) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = ns.spawn("ve-link-netns", move || {
            let rt = runtime()?;
            rt.block_on(async move {
                let (conn, nl) = connect().map_err(|e| {
                    Error::io("opening a netlink socket in the container namespace", e)
                })?;
                let _ = tx.send(nl);
                future::select(Box::pin(conn), stopped).await;
                Ok(())
            })
        })?;
        match rx.recv() {
            Ok(nl) => Ok(CtrConn {
                nl,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(_) => Err(match thread.join() {
                Ok(Err(e)) => e,
                _ => Error::internal("the container namespace thread died"),
            }),
        }
    }
}

impl Drop for CtrConn {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_the_kernel_never_answers_ends_after_the_timeout_with_exit_75() {
        let rt = runtime().unwrap();
        // A connection nobody drives: the request is never sent, so never answered.
        let (_conn, nl) = rt.block_on(async { connect() }).unwrap();
        let start = std::time::Instant::now();
        let e = rt.block_on(nl.links()).unwrap_err();
        let took = start.elapsed();
        assert!(took >= TIMEOUT && took < TIMEOUT * 2, "{took:?}");
        let e = step_error("listing links", e);
        assert_eq!(e.exit(), common::Exit::TempFail, "{e}");
        assert_eq!(
            e.to_string(),
            "listing links: no answer from the kernel within 5 s"
        );
    }
}
