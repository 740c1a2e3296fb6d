//! The kernel side: the [`Netlink`] trait ve-link talks to the kernel through, the
//! requests it makes (links, addresses, routes, namespace ids) and what they answer.
//! The real one is a blocking route netlink socket per namespace ([`socket`]); tests
//! use a recording fake (`fake`).

use std::{io, net::IpAddr, os::fd::RawFd};

use common::{Error, Exit};

mod msg;
pub mod socket;
mod wire;

#[cfg(test)]
pub mod fake;

pub use socket::Socket;

use crate::{
    guard::Covering,
    plan::{Link, LinkFix},
    request::{Addr, Route},
};

/// `rtm_protocol` of the routes ve-link installs: tells ours apart from everyone
/// else's (118 is unassigned in iproute2's rt_protos).
pub const ROUTE_PROTOCOL: u8 = 118;

/// How long the kernel may take to answer one exchange (every part of every reply)
/// before the command gives up with exit 75: an answer never comes when something went
/// wrong, and a container must not be able to make the host's tools wait forever.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The veth pair to create: the host end in the socket's namespace, the peer directly
/// in the namespace `ns` (a borrowed namespace fd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    pub host: String,
    pub alias: String,
    pub host_mac: [u8; 6],
    pub peer: String,
    pub peer_mac: [u8; 6],
    pub ns: RawFd,
    pub mtu: Option<u32>,
    pub master: Option<u32>,
}

/// One request to the kernel of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Req {
    /// The link called so ([`Reply::Link`]).
    LinkByName(String),
    LinkByIndex(u32),
    /// Link `index` of the namespace this one knows as `nsid` (IFLA_TARGET_NETNSID).
    LinkAt {
        index: u32,
        nsid: i32,
    },
    /// Every link ([`Reply::Links`]).
    Links,
    /// Global-scope addresses on a link, of this namespace or of the one this one
    /// knows as `nsid` ([`Reply::Addrs`]).
    Addrs {
        index: u32,
        nsid: Option<i32>,
    },
    /// Routes in the main table through a link that ve-link installed ([`Reply::Routes`]).
    Routes(u32),
    /// The most specific route covering an address ([`Reply::Cover`]).
    RouteTo(IpAddr),
    /// Every route of `ve-link routes` ([`crate::ours::is_node_route`]) of one family
    /// ([`Reply::Routes`]); a family without a main table has none.
    NodeRoutes {
        v6: bool,
    },
    /// A route to another node's block through its gateway, with no given link (the
    /// kernel picks the one the gateway is on); `replace` takes over the route of ours
    /// to the same block, else a route already there (someone else's) is EEXIST.
    AddNodeRoute {
        route: Route,
        replace: bool,
    },
    /// Only a route with this gateway and ve-link's protocol matches.
    DelNodeRoute(Route),
    /// The id this namespace gives a namespace fd ([`Reply::Nsid`]).
    NsidOf(RawFd),
    AddAddr(u32, Addr),
    DelAddr(u32, Addr),
    AddRoute(u32, Route),
    DelRoute(u32, Route),
    /// One request, so nothing is half made.
    CreateVeth(Veth),
    SetAlias(u32, String),
    AddAltname(u32, String),
    FixLink(u32, LinkFix),
    /// A veth takes its peer along.
    DelLink(u32),
    SetGroup(u32, u32),
    /// Every link of an interface group at once: the kernel waits for RCU once.
    DelGroup(u32),
}

/// What a request answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Done,
    Link(Option<Link>),
    Links(Vec<Link>),
    Addrs(Vec<Addr>),
    Routes(Vec<Route>),
    Cover(Option<Covering>),
    Nsid(Option<i32>),
}

fn unexpected(r: &Reply) -> io::Error {
    io::Error::other(format!("unexpected netlink reply {r:?}"))
}

impl Reply {
    pub fn link(self) -> io::Result<Option<Link>> {
        match self {
            Reply::Link(l) => Ok(l),
            r => Err(unexpected(&r)),
        }
    }
    pub fn links(self) -> io::Result<Vec<Link>> {
        match self {
            Reply::Links(l) => Ok(l),
            r => Err(unexpected(&r)),
        }
    }
    pub fn addrs(self) -> io::Result<Vec<Addr>> {
        match self {
            Reply::Addrs(a) => Ok(a),
            r => Err(unexpected(&r)),
        }
    }
    pub fn routes(self) -> io::Result<Vec<Route>> {
        match self {
            Reply::Routes(r) => Ok(r),
            r => Err(unexpected(&r)),
        }
    }
    pub fn cover(self) -> io::Result<Option<Covering>> {
        match self {
            Reply::Cover(c) => Ok(c),
            r => Err(unexpected(&r)),
        }
    }
    pub fn nsid(self) -> io::Result<Option<i32>> {
        match self {
            Reply::Nsid(n) => Ok(n),
            r => Err(unexpected(&r)),
        }
    }
    pub fn done(self) -> io::Result<()> {
        match self {
            Reply::Done => Ok(()),
            r => Err(unexpected(&r)),
        }
    }
}

fn is(e: &io::Error, codes: &[i32]) -> bool {
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}

/// The kernel's answer as ve-link reads it: no such link is `None`, removing what is
/// already gone and adding an altname already there succeed.
fn settle(req: &Req, r: io::Result<Reply>) -> io::Result<Reply> {
    let Err(e) = r else { return r };
    let gone = [libc::ENODEV, libc::ESRCH, libc::EADDRNOTAVAIL, libc::ENOENT];
    match req {
        Req::LinkByName(_) | Req::LinkByIndex(_) | Req::LinkAt { .. }
            if is(&e, &[libc::ENODEV, libc::ENOENT]) =>
        {
            Ok(Reply::Link(None))
        }
        Req::RouteTo(_) if is(&e, &[libc::ENETUNREACH, libc::EHOSTUNREACH, libc::ENOENT]) => {
            Ok(Reply::Cover(None))
        }
        // A strict dump of a table the family does not have yet.
        Req::NodeRoutes { .. } if is(&e, &[libc::ENOENT]) => Ok(Reply::Routes(Vec::new())),
        Req::DelAddr(..)
        | Req::DelRoute(..)
        | Req::DelNodeRoute(_)
        | Req::DelLink(_)
        | Req::DelGroup(_)
            if is(&e, &gone) =>
        {
            Ok(Reply::Done)
        }
        Req::AddAltname(..) if is(&e, &[libc::EEXIST]) => Ok(Reply::Done),
        _ => Err(e),
    }
}

/// The kernel of one network namespace.
pub trait Netlink {
    /// Send every request at once and collect one answer per request, in order; the
    /// kernel carries them out in that order. Bounded by [`TIMEOUT`] in all.
    fn exchange(&self, reqs: &[Req]) -> Vec<io::Result<Reply>>;

    /// [`Netlink::exchange`], with the answers settled as ve-link reads them.
    fn batch(&self, reqs: &[Req]) -> Vec<io::Result<Reply>> {
        let mut out = self.exchange(reqs);
        out.resize_with(reqs.len(), || Err(closed()));
        out.into_iter()
            .zip(reqs)
            .map(|(r, q)| settle(q, r))
            .collect()
    }

    fn one(&self, req: Req) -> io::Result<Reply> {
        self.batch(std::slice::from_ref(&req))
            .pop()
            .unwrap_or_else(|| Err(closed()))
    }

    fn link_by_name(&self, name: &str) -> io::Result<Option<Link>> {
        self.one(Req::LinkByName(name.to_string()))?.link()
    }
    fn link_by_index(&self, index: u32) -> io::Result<Option<Link>> {
        self.one(Req::LinkByIndex(index))?.link()
    }
    fn link_at(&self, index: u32, nsid: i32) -> io::Result<Option<Link>> {
        self.one(Req::LinkAt { index, nsid })?.link()
    }
    fn links(&self) -> io::Result<Vec<Link>> {
        self.one(Req::Links)?.links()
    }
    fn addrs_at(&self, index: u32, nsid: Option<i32>) -> io::Result<Vec<Addr>> {
        self.one(Req::Addrs { index, nsid })?.addrs()
    }
    fn nsid_of(&self, ns: RawFd) -> io::Result<Option<i32>> {
        self.one(Req::NsidOf(ns))?.nsid()
    }
    fn act(&self, req: Req) -> io::Result<()> {
        self.one(req)?.done()
    }
    /// Delete link `index` (a veth takes its peer along) and return once it is gone
    /// from the namespace. The real socket does not wait for the kernel to finish
    /// freeing it (see [`Socket::del_link_unwaited`]); gone already is success.
    fn del_link_unwaited(&self, index: u32) -> io::Result<()> {
        self.act(Req::DelLink(index))
    }
}

pub(crate) fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "netlink connection closed")
}

pub(crate) fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer from the kernel within {} s", TIMEOUT.as_secs()),
    )
}

/// What the caller was doing when the kernel said no, as a user-facing error.
pub fn step_error(step: impl std::fmt::Display, e: io::Error) -> Error {
    // A kernel EPIPE is not a reader going away: keep it an OS error.
    if e.kind() == io::ErrorKind::BrokenPipe {
        return Error::new(Exit::OsErr, format!("{step}: {e}"));
    }
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Error::new(Exit::CantCreate, format!("{step}: already exists"));
    }
    Error::io(step, e)
}
