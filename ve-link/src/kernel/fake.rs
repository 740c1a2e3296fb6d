//! A recording fake of the kernel of two namespaces (the host's and one container's),
//! for unit tests of `up`, teardown and list without root: it keeps links, addresses
//! and routes, records every request, and fails or changes things on cue.

use std::{cell::RefCell, io, rc::Rc};

use super::{Netlink, Reply, Req};
use crate::{
    plan::{Link, Where},
    request::{Addr, Route},
};

/// The id the host gives the container namespace (and the one the container gives the
/// host).
pub const CTR_NSID: i32 = 7;
const HOST_NSID: i32 = 0;

#[derive(Debug, Clone)]
pub struct FakeLink {
    pub ns: Where,
    pub link: Link,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
}

type Hook = Box<dyn FnMut(&mut State)>;

/// What happens when a request matches a cue.
enum Cue {
    /// The kernel says no with this errno, after the world changed (another process
    /// acting just before).
    Fail(i32, Option<Hook>),
    /// The request is carried out, then the world changes (another process acting).
    After(Hook),
}

struct Rule {
    ns: Where,
    matches: Box<dyn Fn(&Req) -> bool>,
    cue: Cue,
}

#[derive(Default)]
pub struct State {
    next_index: u32,
    pub links: Vec<FakeLink>,
    pub log: Vec<(Where, Req)>,
    rules: Vec<Rule>,
    /// Routes through a gateway with no given link (`ve-link routes`'), and others'
    /// routes as [`crate::ours::is_node_route`] tells them apart: (namespace, protocol,
    /// route).
    pub gw_routes: Vec<(Where, u8, Route)>,
}

/// The shared kernel; [`World::host`] and [`World::ctr`] are its two namespaces.
#[derive(Clone)]
pub struct World(Rc<RefCell<State>>);

pub struct Ns {
    world: World,
    ns: Where,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl Default for World {
    /// A host namespace with `lo`, and a container namespace with `lo` (down).
    fn default() -> Self {
        let w = World(Rc::new(RefCell::new(State {
            next_index: 10,
            ..Default::default()
        })));
        for ns in [Where::Host, Where::Container] {
            w.0.borrow_mut().links.push(FakeLink {
                ns,
                link: Link {
                    index: 1,
                    name: "lo".into(),
                    mtu: 65536,
                    up: ns == Where::Host,
                    ..Default::default()
                },
                addrs: Vec::new(),
                routes: Vec::new(),
            });
        }
        w
    }
}

impl World {
    pub fn host(&self) -> Ns {
        Ns {
            world: self.clone(),
            ns: Where::Host,
        }
    }

    pub fn ctr(&self) -> Ns {
        Ns {
            world: self.clone(),
            ns: Where::Container,
        }
    }

    /// The next request in `ns` that `matches` fails with `errno`.
    pub fn fail(&self, ns: Where, matches: impl Fn(&Req) -> bool + 'static, errno: i32) {
        self.0.borrow_mut().rules.push(Rule {
            ns,
            matches: Box::new(matches),
            cue: Cue::Fail(errno, None),
        });
    }

    /// Like [`World::fail`], with `hook` changing the world first (someone else got
    /// there just before).
    pub fn fail_after(
        &self,
        ns: Where,
        matches: impl Fn(&Req) -> bool + 'static,
        errno: i32,
        hook: impl FnMut(&mut State) + 'static,
    ) {
        self.0.borrow_mut().rules.push(Rule {
            ns,
            matches: Box::new(matches),
            cue: Cue::Fail(errno, Some(Box::new(hook))),
        });
    }

    /// After the next request in `ns` that `matches`, `hook` changes the world.
    pub fn after(
        &self,
        ns: Where,
        matches: impl Fn(&Req) -> bool + 'static,
        hook: impl FnMut(&mut State) + 'static,
    ) {
        self.0.borrow_mut().rules.push(Rule {
            ns,
            matches: Box::new(matches),
            cue: Cue::After(Box::new(hook)),
        });
    }

    pub fn link(&self, ns: Where, name: &str) -> Option<FakeLink> {
        self.0
            .borrow()
            .links
            .iter()
            .find(|l| l.ns == ns && l.link.name == name)
            .cloned()
    }

    pub fn links(&self) -> Vec<FakeLink> {
        self.0.borrow().links.clone()
    }

    /// Every request so far, in order.
    pub fn log(&self) -> Vec<(Where, Req)> {
        self.0.borrow().log.clone()
    }

    pub fn clear_log(&self) {
        self.0.borrow_mut().log.clear();
    }

    /// Carry out `f` on the state directly (someone else's change).
    pub fn with(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.0.borrow_mut());
    }
}

impl State {
    fn find(&mut self, ns: Where, index: u32) -> io::Result<&mut FakeLink> {
        self.links
            .iter_mut()
            .find(|l| l.ns == ns && l.link.index == index)
            .ok_or_else(|| errno(libc::ENODEV))
    }

    /// Remove link `index` of `ns` and, for a veth, its peer.
    pub fn remove(&mut self, ns: Where, index: u32) {
        let peer = self
            .links
            .iter()
            .find(|l| l.ns == ns && l.link.index == index)
            .and_then(|l| l.link.peer.map(|p| (other(ns), p)));
        self.links.retain(|l| {
            !(l.ns == ns && l.link.index == index) && Some((l.ns, l.link.index)) != peer
        });
    }

    pub fn remove_named(&mut self, ns: Where, name: &str) {
        if let Some(i) = self
            .links
            .iter()
            .find(|l| l.ns == ns && l.link.name == name)
            .map(|l| l.link.index)
        {
            self.remove(ns, i);
        }
    }

    /// Make a veth pair as the kernel would, unmarked (no alias).
    pub fn add_pair(&mut self, host: &str, host_mac: [u8; 6], peer: &str, peer_mac: [u8; 6]) {
        let (h, c) = (self.next_index, self.next_index + 1);
        self.next_index += 2;
        let mk = |ns, index, name: &str, mac: [u8; 6], peer, nsid, up| FakeLink {
            ns,
            link: Link {
                index,
                name: name.into(),
                veth: true,
                peer: Some(peer),
                peer_nsid: Some(nsid),
                mtu: 1500,
                mac: mac.to_vec(),
                up,
                ..Default::default()
            },
            addrs: Vec::new(),
            routes: Vec::new(),
        };
        self.links
            .push(mk(Where::Host, h, host, host_mac, c, CTR_NSID, true));
        self.links
            .push(mk(Where::Container, c, peer, peer_mac, h, HOST_NSID, false));
    }

    fn apply(&mut self, ns: Where, req: &Req) -> io::Result<Reply> {
        let named = |s: &State, n: &str| {
            s.links
                .iter()
                .find(|l| {
                    l.ns == ns && (l.link.name == n || l.link.altnames.iter().any(|a| a == n))
                })
                .map(|l| l.link.clone())
        };
        let at = |nsid: i32| {
            if nsid == CTR_NSID {
                Where::Container
            } else {
                Where::Host
            }
        };
        Ok(match req {
            Req::LinkByName(n) => {
                Reply::Link(Some(named(self, n).ok_or_else(|| errno(libc::ENODEV))?))
            }
            Req::LinkByIndex(i) => Reply::Link(Some(self.find(ns, *i)?.link.clone())),
            Req::LinkAt { index, nsid } => {
                Reply::Link(Some(self.find(at(*nsid), *index)?.link.clone()))
            }
            Req::Links => Reply::Links(
                self.links
                    .iter()
                    .filter(|l| l.ns == ns)
                    .map(|l| l.link.clone())
                    .collect(),
            ),
            Req::Addrs { index, nsid } => {
                let ns = nsid.map_or(ns, at);
                Reply::Addrs(self.find(ns, *index)?.addrs.clone())
            }
            Req::Routes(i) => Reply::Routes(self.find(ns, *i)?.routes.clone()),
            Req::RouteTo(_) => return Err(errno(libc::ENETUNREACH)),
            Req::NodeRoutes { v6 } => Reply::Routes(
                self.gw_routes
                    .iter()
                    .filter(|(n, p, r)| {
                        *n == ns
                            && r.dst.is_ipv6() == *v6
                            && crate::ours::is_node_route(*p, true, r.len, r.via.is_some())
                    })
                    .map(|(_, _, r)| *r)
                    .collect(),
            ),
            Req::AddNodeRoute { route, replace } => {
                let same = |(n, _, r): &(Where, u8, Route)| {
                    *n == ns && r.dst == route.dst && r.len == route.len
                };
                match self.gw_routes.iter().position(same) {
                    Some(_) if !replace => return Err(errno(libc::EEXIST)),
                    Some(i) => self.gw_routes[i] = (ns, crate::kernel::ROUTE_PROTOCOL, *route),
                    None => self
                        .gw_routes
                        .push((ns, crate::kernel::ROUTE_PROTOCOL, *route)),
                }
                Reply::Done
            }
            Req::DelNodeRoute(route) => {
                let n = self.gw_routes.len();
                self.gw_routes.retain(|(w, p, r)| {
                    !(*w == ns && *p == crate::kernel::ROUTE_PROTOCOL && r == route)
                });
                if self.gw_routes.len() == n {
                    return Err(errno(libc::ESRCH));
                }
                Reply::Done
            }
            Req::NsidOf(_) => Reply::Nsid(Some(if ns == Where::Host {
                CTR_NSID
            } else {
                HOST_NSID
            })),
            Req::AddAddr(i, a) => {
                let l = self.find(ns, *i)?;
                if !l.addrs.contains(a) {
                    l.addrs.push(*a);
                }
                Reply::Done
            }
            Req::DelAddr(i, a) => {
                let l = self.find(ns, *i)?;
                let n = l.addrs.len();
                l.addrs.retain(|x| x != a);
                if l.addrs.len() == n {
                    return Err(errno(libc::EADDRNOTAVAIL));
                }
                Reply::Done
            }
            Req::AddRoute(i, r) => {
                let l = self.find(ns, *i)?;
                if !l.routes.contains(r) {
                    l.routes.push(*r);
                }
                Reply::Done
            }
            Req::DelRoute(i, r) => {
                let l = self.find(ns, *i)?;
                let n = l.routes.len();
                l.routes.retain(|x| x != r);
                if l.routes.len() == n {
                    return Err(errno(libc::ESRCH));
                }
                Reply::Done
            }
            Req::CreateVeth(v) => {
                if named(self, &v.host).is_some()
                    || self
                        .links
                        .iter()
                        .any(|l| l.ns == Where::Container && l.link.name == v.peer)
                {
                    return Err(errno(libc::EEXIST));
                }
                // Like the kernel: the alias of a new link is ignored.
                self.add_pair(&v.host, v.host_mac, &v.peer, v.peer_mac);
                let n = self.links.len();
                for l in &mut self.links[n - 2..] {
                    l.link.mtu = v.mtu.unwrap_or(1500);
                }
                self.links[n - 2].link.master = v.master;
                Reply::Done
            }
            Req::SetAlias(i, a) => {
                self.find(ns, *i)?.link.alias = Some(a.clone());
                Reply::Done
            }
            Req::AddAltname(i, a) => {
                let l = self.find(ns, *i)?;
                if l.link.altnames.contains(a) {
                    return Err(errno(libc::EEXIST));
                }
                l.link.altnames.push(a.clone());
                Reply::Done
            }
            Req::FixLink(i, f) => {
                let l = &mut self.find(ns, *i)?.link;
                l.up |= f.up;
                if let Some(m) = f.mtu {
                    l.mtu = m;
                }
                if let Some(m) = f.mac {
                    l.mac = m.to_vec();
                }
                if let Some(m) = f.master {
                    l.master = Some(m);
                }
                if let Some(a) = &f.alias {
                    l.alias = Some(a.clone());
                }
                Reply::Done
            }
            Req::DelLink(i) => {
                self.find(ns, *i)?;
                self.remove(ns, *i);
                Reply::Done
            }
            Req::SetGroup(i, g) => {
                self.find(ns, *i)?.link.group = *g;
                Reply::Done
            }
            Req::DelGroup(g) => {
                let victims: Vec<u32> = self
                    .links
                    .iter()
                    .filter(|l| l.ns == ns && l.link.group == *g)
                    .map(|l| l.link.index)
                    .collect();
                if victims.is_empty() {
                    return Err(errno(libc::ENODEV));
                }
                for i in victims {
                    self.remove(ns, i);
                }
                Reply::Done
            }
        })
    }
}

fn other(ns: Where) -> Where {
    match ns {
        Where::Host => Where::Container,
        Where::Container => Where::Host,
    }
}

impl Netlink for Ns {
    fn exchange(&self, reqs: &[Req]) -> Vec<io::Result<Reply>> {
        reqs.iter()
            .map(|req| {
                let mut s = self.world.0.borrow_mut();
                s.log.push((self.ns, req.clone()));
                let hit = s
                    .rules
                    .iter()
                    .position(|r| r.ns == self.ns && (r.matches)(req));
                let rule = hit.map(|i| s.rules.remove(i));
                match rule.map(|r| r.cue) {
                    Some(Cue::Fail(e, hook)) => {
                        if let Some(mut hook) = hook {
                            hook(&mut s);
                        }
                        Err(errno(e))
                    }
                    Some(Cue::After(mut hook)) => {
                        let r = s.apply(self.ns, req);
                        hook(&mut s);
                        r
                    }
                    None => s.apply(self.ns, req),
                }
            })
            .collect()
    }
}
