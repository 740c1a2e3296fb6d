//! `up` and `check`: observe both namespaces, plan, and (for `up`) apply the plan in
//! batches, rolling back on failure and converging once more after losing a race.

use std::os::{
    fd::{AsFd, AsRawFd, RawFd},
    unix::fs::MetadataExt,
};

use common::{
    netns::{Netns, NetnsSpec},
    output, Error, Exit, Result,
};
use serde::Serialize;

use super::require_privilege;
use crate::{
    guard,
    kernel::{step_error, Netlink, Reply, Req, Socket, Veth},
    ours,
    plan::{plan, Change, Link, Observed, Side, Where},
    request::{Addr, Route, UpRequest},
};

/// Says why a create failed when it lost a race with another `up` of the same name.
const RACED: &str = "created concurrently by another ve-link up";

/// The two namespaces `up` works in.
pub struct Kernels<'a> {
    pub host: &'a dyn Netlink,
    pub ctr: &'a dyn Netlink,
    /// The container namespace (a borrowed fd), for the create and the namespace id.
    pub ns: RawFd,
}

impl Kernels<'_> {
    fn of(&self, side: Where) -> &dyn Netlink {
        match side {
            Where::Host => self.host,
            Where::Container => self.ctr,
        }
    }
}

fn observe(req: &UpRequest, k: &Kernels) -> std::io::Result<Observed> {
    let mut first = vec![
        Req::LinkByName(req.host_ifname.clone()),
        Req::LinkByName(req.other_mode_ifname()),
    ];
    if let Some(b) = &req.bridge {
        first.push(Req::LinkByName(b.clone()));
    }
    // Host end first, then the container end and the namespace id: a pair created in
    // between by a concurrent `up` then shows as "container end only", never as a
    // host end without its peer, which would be taken for stale.
    let mut hr = k.host.batch(&first).into_iter();
    let mut next = || hr.next().unwrap_or_else(|| Err(crate::kernel::closed()));
    let (h, other) = (next()?.link()?, next()?.link()?);
    let br = match req.bridge {
        Some(_) => next()?.link()?,
        None => None,
    };
    let mut cr = k
        .ctr
        .batch(&[
            Req::LinkByName(req.peer_ifname.clone()),
            Req::LinkByName("lo".into()),
        ])
        .into_iter();
    let mut next = || cr.next().unwrap_or_else(|| Err(crate::kernel::closed()));
    let (c, lo) = (next()?.link()?, next()?.link()?);
    let nsid = k.host.nsid_of(k.ns)?;
    Ok(Observed {
        host: side(k.host, h)?,
        ctr: side(k.ctr, c)?,
        ctr_lo_up: lo.as_ref().is_some_and(|l| l.up),
        ctr_lo: lo.map(|l| l.index),
        ctr_nsid: nsid,
        bridge: br.map(|b| b.index),
        other,
    })
}

fn side(nl: &dyn Netlink, link: Option<Link>) -> std::io::Result<Side> {
    let Some(l) = link else {
        return Ok(Side::default());
    };
    let mut r = nl
        .batch(&[
            Req::Addrs {
                index: l.index,
                nsid: None,
            },
            Req::Routes(l.index),
        ])
        .into_iter();
    let mut next = || r.next().unwrap_or_else(|| Err(crate::kernel::closed()));
    let addrs = next()?.addrs()?;
    let routes = next()?.routes()?;
    Ok(Side {
        link: Some(l),
        addrs,
        routes,
    })
}

/// What `up` undoes when a later step fails.
#[derive(Debug)]
enum Undo {
    Link(u32),
    /// An address or route this run added: remove it.
    Addr(Where, u32, Addr),
    Route(Where, u32, Route),
    /// An address or route this run removed while converging: put it back.
    Readd(Where, u32, Addr),
    Reroute(Where, u32, Route),
}

/// Why one round of `up` did not finish.
#[derive(Debug)]
enum Failed {
    /// Another `up` of this container created the pair between our look and our
    /// create; nothing was changed.
    Raced(Error),
    Error(Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed::Error(e)
    }
}

struct Up<'a> {
    req: &'a UpRequest,
    k: &'a Kernels<'a>,
    hidx: u32,
    cidx: u32,
    journal: Vec<Undo>,
}

impl Up<'_> {
    fn target(&self, side: Where) -> (&dyn Netlink, u32, &str) {
        match side {
            Where::Host => (self.k.host, self.hidx, &self.req.host_ifname),
            Where::Container => (self.k.ctr, self.cidx, &self.req.peer_ifname),
        }
    }

    /// Remove a stale pair and create the new one: the steps both sides wait for.
    fn prepare(&mut self, c: &Change, have: &Observed) -> std::result::Result<(), Failed> {
        match c {
            Change::RemoveStale { index, why } => {
                log::info!("replacing stale link: {why}");
                self.k
                    .host
                    .act(Req::DelLink(*index))
                    .map_err(|e| step_error(format!("removing a stale link ({why})"), e).into())
            }
            Change::Create => self.create(have),
            _ => Ok(()),
        }
    }

    /// The request for one change of a side, what undoes it, and the step it is.
    fn step(&self, c: &Change, have: &Observed) -> Result<Option<(Req, Option<Undo>, String)>> {
        let req = self.req;
        Ok(Some(match c {
            Change::RemoveStale { .. } | Change::Create => return Ok(None),
            Change::AddAltname => {
                let alt = req.altname.clone().unwrap_or_default();
                let step = format!("adding altname {alt} to {}", req.host_ifname);
                (Req::AddAltname(self.hidx, alt), None, step)
            }
            Change::FixLink { side, fix, .. } => {
                let (_, idx, name) = self.target(*side);
                let step = format!("configuring {side} link {name}");
                (Req::FixLink(idx, fix.clone()), None, step)
            }
            Change::LoUp => {
                let lo = have
                    .ctr_lo
                    .ok_or_else(|| Error::data("the container namespace has no lo"))?;
                (
                    Req::FixLink(lo, up_fix()),
                    None,
                    "setting container lo up".into(),
                )
            }
            Change::AddAddr(side, a) => {
                let (_, idx, name) = self.target(*side);
                let step = format!("adding address {}/{} to {side} link {name}", a.0, a.1);
                (
                    Req::AddAddr(idx, *a),
                    Some(Undo::Addr(*side, idx, *a)),
                    step,
                )
            }
            Change::DelAddr(side, a) => {
                let (_, idx, name) = self.target(*side);
                let step = format!("removing address {}/{} from {side} link {name}", a.0, a.1);
                (
                    Req::DelAddr(idx, *a),
                    Some(Undo::Readd(*side, idx, *a)),
                    step,
                )
            }
            Change::AddRoute(side, r) => {
                let (_, idx, name) = self.target(*side);
                let step = format!("adding {side} route {r} dev {name}");
                (
                    Req::AddRoute(idx, *r),
                    Some(Undo::Route(*side, idx, *r)),
                    step,
                )
            }
            Change::DelRoute(side, r) => {
                let (_, idx, name) = self.target(*side);
                let step = format!("removing {side} route {r} dev {name}");
                (
                    Req::DelRoute(idx, *r),
                    Some(Undo::Reroute(*side, idx, *r)),
                    step,
                )
            }
        }))
    }

    /// Apply the changes of one side in one batch (the kernel carries them out in
    /// order); what was done is recorded for rollback, the first failure returned.
    fn side(&mut self, side: Where, changes: &[&Change], have: &Observed) -> Result<()> {
        let mut steps = Vec::new();
        for c in changes {
            log::debug!("{}: {c}", self.req.name);
            if let Some(s) = self.step(c, have)? {
                steps.push(s);
            }
        }
        if steps.is_empty() {
            return Ok(());
        }
        let reqs: Vec<Req> = steps.iter().map(|(r, _, _)| r.clone()).collect();
        let answers = self.k.of(side).batch(&reqs);
        let mut first = None;
        for ((_, undo, step), a) in steps.into_iter().zip(answers) {
            match a {
                Ok(_) => self.journal.extend(undo),
                Err(e) => {
                    first.get_or_insert_with(|| step_error(step, e));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn create(&mut self, have: &Observed) -> std::result::Result<(), Failed> {
        let req = self.req;
        let step = format!(
            "creating veth {} with {} in network namespace {}",
            req.host_ifname, req.peer_ifname, req.netns
        );
        let master = if req.bridge.is_some() {
            have.bridge
        } else {
            None
        };
        let veth = Veth {
            host: req.host_ifname.clone(),
            alias: req.alias(),
            host_mac: req.host_mac,
            peer: req.peer_ifname.clone(),
            peer_mac: req.peer_mac,
            ns: self.k.ns,
            mtu: req.mtu,
            master,
        };
        match self.k.host.act(Req::CreateVeth(veth)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && have.host.link.is_none() => {
                return Err(Failed::Raced(Error::new(
                    Exit::TempFail,
                    format!("{step}: {RACED}"),
                )));
            }
            Err(e) => return Err(step_error(&step, e).into()),
        }
        let h = self
            .k
            .host
            .link_by_name(&req.host_ifname)
            .map_err(|e| step_error(&step, e))?
            .ok_or_else(|| removed_meanwhile(&step, &req.host_ifname))?;
        self.journal.push(Undo::Link(h.index));
        let c = self
            .k
            .ctr
            .link_by_name(&req.peer_ifname)
            .map_err(|e| step_error(&step, e))?
            .ok_or_else(|| removed_meanwhile(&step, &req.peer_ifname))?;
        self.hidx = h.index;
        self.cidx = c.index;
        let ctr_up = self
            .k
            .ctr
            .act(Req::FixLink(c.index, up_fix()))
            .map_err(|e| {
                step_error(
                    format!("setting {} up in the container", req.peer_ifname),
                    e,
                )
            });
        let mut mark = Vec::new();
        if h.alias.as_deref() != Some(req.alias().as_str()) {
            // The kernel ignores IFLA_IFALIAS when creating a link.
            mark.push((
                Req::SetAlias(h.index, req.alias()),
                format!("marking {} as ve-link's", req.host_ifname),
            ));
        }
        if let Some(alt) = &req.altname {
            mark.push((
                Req::AddAltname(h.index, alt.clone()),
                format!("adding altname {alt} to {}", req.host_ifname),
            ));
        }
        let reqs: Vec<Req> = mark.iter().map(|(r, _)| r.clone()).collect();
        let marked = self
            .k
            .host
            .batch(&reqs)
            .into_iter()
            .zip(mark)
            .try_for_each(|(a, (_, step))| a.map(drop).map_err(|e| step_error(step, e)));
        ctr_up.and(marked).map_err(Failed::Error)
    }

    fn rollback(&mut self, before: &Observed) -> Vec<String> {
        let mut errors = Vec::new();
        let link = self.journal.iter().find_map(|u| match u {
            Undo::Link(i) => Some(*i),
            _ => None,
        });
        if let Some(idx) = link {
            // Deleting the new pair takes every address and route on it along.
            if let Err(e) = self.k.host.act(Req::DelLink(idx)) {
                errors.push(format!("removing {}: {e}", self.req.host_ifname));
            }
            return errors;
        }
        for u in self.journal.drain(..).rev() {
            let (side, req) = match u {
                Undo::Link(_) => continue,
                Undo::Addr(s, i, a) => (s, Req::DelAddr(i, a)),
                Undo::Route(s, i, r) => (s, Req::DelRoute(i, r)),
                Undo::Readd(s, i, a) => (s, Req::AddAddr(i, a)),
                Undo::Reroute(s, i, r) => (s, Req::AddRoute(i, r)),
            };
            if let Err(e) = self.k.of(side).act(req) {
                errors.push(e.to_string());
            }
        }
        // Removing an address also makes the kernel drop the routes that use it as
        // their source: put back every route of ours that was there before.
        for (side, idx, routes) in [
            (Where::Host, self.hidx, &before.host.routes),
            (Where::Container, self.cidx, &before.ctr.routes),
        ] {
            // Routes to the neighbour first: a route via it needs one.
            let (direct, via): (Vec<&Route>, Vec<&Route>) =
                routes.iter().partition(|r| r.via.is_none());
            for r in direct.into_iter().chain(via) {
                match self.k.of(side).act(Req::AddRoute(idx, *r)) {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                        errors.push(format!("restoring {side} route {r}: {e}"));
                    }
                    _ => {}
                }
            }
        }
        errors
    }
}

fn up_fix() -> crate::plan::LinkFix {
    crate::plan::LinkFix {
        up: true,
        ..Default::default()
    }
}

/// A link this run just created is gone: a concurrent `down` (or someone) removed it.
/// Not a bug, and the next `up` makes it again.
fn removed_meanwhile(step: &str, ifname: &str) -> Error {
    Error::new(
        Exit::TempFail,
        format!("{step}: {ifname} was removed meanwhile (a concurrent down?); try again"),
    )
}

#[derive(Serialize)]
struct UpOutput<'a> {
    name: &'a str,
    host_iface: &'a str,
    local_iface: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_bridge: Option<&'a str>,
    netns: String,
    #[serde(flatten)]
    addresses: &'a crate::request::Addresses,
    changes: Vec<String>,
}

/// The container namespace must not be the one ve-link runs in: the container end,
/// its addresses and its default route would land on the host (`--pid 1`, a pid that
/// has not entered its namespace yet, `/proc/self/ns/net`).
pub(super) fn refuse_own_namespace(ns: &Netns) -> Result<()> {
    if ns.id()? == Netns::current()?.id()? {
        return Err(Error::data(format!(
            "network namespace {} is the one ve-link runs in, not a container's",
            ns.label()
        )));
    }
    Ok(())
}

/// Bring `req` up (what `up` does, printing nothing): the changes made.
pub fn bring_up(req: &UpRequest) -> Result<Vec<Change>> {
    bring_up_opened(req, Opened::open(&req.netns)?)
}

/// What `up` needs before it looks at anything: the container namespace, checked, and
/// a netlink socket on each side. Opening them changes nothing, so `up` can do it while
/// the command before the pipe is still writing the addresses ([`Opened::early`]).
pub struct Opened {
    spec: NetnsSpec,
    ns: Netns,
    host: Socket,
    ctr: Socket,
}

impl Opened {
    pub fn open(spec: &NetnsSpec) -> Result<Opened> {
        let ns = spec.open()?;
        refuse_own_namespace(&ns)?;
        require_privilege(true)?;
        let host = Socket::host()?;
        let ctr = Socket::inside(&ns)?;
        Ok(Opened {
            spec: spec.clone(),
            ns,
            host,
            ctr,
        })
    }

    /// Whether the namespace's name (or path, or pid) still leads to the namespace
    /// opened: the command before the pipe may have deleted it and made a new one of
    /// that name while `up` waited for the addresses ([`Opened::early`]). One stat.
    fn still_names_it(&self) -> bool {
        let Ok(st) = std::fs::metadata(self.spec.path()) else {
            // Gone: opening it again reports that as the plain `up` would.
            return false;
        };
        self.ns.id().is_ok_and(|id| id == (st.dev(), st.ino()))
    }

    /// Open `spec`, then run `input` (the read of stdin), and return both: the opening
    /// overlaps the writer's wait (the pipe holds what it writes meanwhile). The caller
    /// reports `input`'s errors first, as if nothing had been opened, and uses the
    /// opening only for the request's own namespace. (No reader thread: its start and
    /// two wake-ups, when the bytes come and at the join, wait for the scheduler.)
    pub fn early<T>(spec: &NetnsSpec, input: impl FnOnce() -> T) -> (T, Result<Opened>) {
        let opened = Opened::open(spec);
        (input(), opened)
    }
}

/// [`bring_up`] with the namespace and sockets already open. An opening made for
/// another namespace than the request's is not used.
pub fn bring_up_opened(req: &UpRequest, o: Opened) -> Result<Vec<Change>> {
    if o.spec != req.netns || !o.still_names_it() {
        return bring_up(req);
    }
    let k = Kernels {
        host: &o.host,
        ctr: &o.ctr,
        ns: o.ns.as_fd().as_raw_fd(),
    };
    converge(req, &k)
}

/// `ve-link up`.
pub fn up(req: &UpRequest, json: bool) -> Result<()> {
    up_opened(req, None, json)
}

/// `ve-link up`, with what [`Opened::early`] opened when it did.
pub fn up_opened(req: &UpRequest, opened: Option<Opened>, json: bool) -> Result<()> {
    let changes = match opened {
        Some(o) => bring_up_opened(req, o)?,
        None => bring_up(req)?,
    };
    if changes.is_empty() {
        log::info!("{}: already up, nothing changed", req.name);
    }
    if json {
        output::print(&up_json(req, &changes)?)
    } else {
        output::print(&output::env_lines(&req.output_pairs()))
    }
}

/// `up --json`'s line for `req` after `changes`.
pub(super) fn up_json(req: &UpRequest, changes: &[Change]) -> Result<String> {
    output::json_line(&UpOutput {
        name: &req.name,
        host_iface: &req.host_ifname,
        local_iface: &req.peer_ifname,
        host_bridge: req.bridge.as_deref(),
        netns: req.netns.to_string(),
        addresses: &req.addresses,
        changes: changes.iter().map(|c| c.to_string()).collect(),
    })
}

/// Bring `req` up: one round, and a second one after losing the create to another `up`
/// of this container (which made the pair between our look and our create): look
/// again and converge what it made.
pub fn converge(req: &UpRequest, k: &Kernels) -> Result<Vec<Change>> {
    let again = match up_once(req, k) {
        Ok(c) => return Ok(c),
        Err(Failed::Error(e)) => return Err(e),
        Err(Failed::Raced(_)) => {
            log::info!("{}: {RACED}; converging", req.name);
            up_once(req, k)
        }
    };
    match again {
        Ok(c) => Ok(c),
        Err(Failed::Error(e)) => Err(e),
        Err(Failed::Raced(e)) => Err(e.context(format!("up {}", req.name))),
    }
}

/// One look-plan-apply round of `up`, rolled back on failure.
fn up_once(req: &UpRequest, k: &Kernels) -> std::result::Result<Vec<Change>, Failed> {
    let look = || observe(req, k).map_err(|e| step_error("reading the current links", e));
    let mut have = look()?;
    let mut p = plan(req, &have);
    if !p.blockers.is_empty() {
        // The two ends are looked up one after the other; a pair another `up` created
        // in between shows only its container end. A second look sees both.
        have = look()?;
        p = plan(req, &have);
    }
    if let Some(b) = p.blockers.first() {
        return Err(Error::new(b.exit(), format!("up {}: {b}", req.name)).into());
    }
    let own = have
        .host
        .link
        .as_ref()
        .filter(|l| crate::plan::owner(l, req) == Some(req.name.as_str()))
        .map(|l| l.index);
    refuse_host_addresses(req, k.host, own)?;
    let mut run = Up {
        req,
        k,
        hidx: have.host.link.as_ref().map_or(0, |l| l.index),
        cidx: have.ctr.link.as_ref().map_or(0, |l| l.index),
        journal: Vec::new(),
    };
    // Stale removal and creation first; then each side in one batch.
    let mut result = Ok(());
    for c in p.changes.iter().filter(|c| c.side().is_none()) {
        log::debug!("{}: {c}", req.name);
        match run.prepare(c, &have) {
            Ok(()) => {}
            Err(Failed::Raced(e)) => return Err(Failed::Raced(e)),
            Err(Failed::Error(e)) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        let of = |w| {
            p.changes
                .iter()
                .filter(|c| c.side() == Some(w))
                .collect::<Vec<_>>()
        };
        let hr = run.side(Where::Host, &of(Where::Host), &have);
        let cr = run.side(Where::Container, &of(Where::Container), &have);
        result = hr.and(cr);
    }
    if let Err(e) = result {
        let errors = run.rollback(&have);
        let tail = if errors.is_empty() {
            "; rolled back".to_string()
        } else {
            format!("; rollback incomplete: {}", errors.join("; "))
        };
        return Err(Error::new(e.exit(), format!("up {}: {e}{tail}", req.name)).into());
    }
    Ok(p.changes)
}

/// Exit 65 when an address of the request is one the host namespace already uses: one
/// of its own (other than on this container's host end), or one on a network it has a
/// route to that is neither ve-link's nor through this container's host end.
fn refuse_host_addresses(req: &UpRequest, host: &dyn Netlink, own: Option<u32>) -> Result<()> {
    let keys = guard::to_check(req);
    let reqs: Vec<Req> = keys.iter().map(|(_, a)| Req::RouteTo(*a)).collect();
    let covers = host.batch(&reqs);
    for ((key, addr), cover) in keys.into_iter().zip(covers) {
        let cover = cover
            .and_then(Reply::cover)
            .map_err(|e| step_error(format!("looking up the host's route to {addr}"), e))?;
        let Some(c) = cover.filter(|c| own.is_none() || c.oif != own) else {
            continue;
        };
        // Only when it may be refused: the link it is on, to tell and to name it.
        let mut dev = None;
        if c.kind != guard::CoverKind::Other && (c.len > 0 || c.kind == guard::CoverKind::Local) {
            if let Some(i) = c.oif {
                dev = host
                    .link_by_index(i)
                    .map_err(|e| step_error(format!("looking up link {i}"), e))?;
            }
        }
        let managed = dev.as_ref().is_some_and(|l| ours::container(l).is_some());
        let name = |i: Option<u32>| match (&dev, i) {
            (Some(l), _) => l.name.clone(),
            (None, Some(i)) => format!("link {i}"),
            (None, None) => "several links".to_string(),
        };
        if let Some(why) = guard::refusal(req, key, addr, Some(&c), own, managed, name) {
            return Err(Error::data(format!("up {}: {why}", req.name)));
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct CheckOutput<'a> {
    name: &'a str,
    ok: bool,
    differences: Vec<String>,
}

/// What differs from everything `up` of `req` makes (empty: all in place).
pub fn differences(req: &UpRequest) -> Result<Vec<String>> {
    let ns = req.netns.open()?;
    require_privilege(true)?;
    let host = Socket::host()?;
    let ctr = Socket::inside(&ns)?;
    let k = Kernels {
        host: &host,
        ctr: &ctr,
        ns: ns.as_fd().as_raw_fd(),
    };
    let have = observe(req, &k).map_err(|e| step_error("reading the current links", e))?;
    let p = plan(req, &have);
    let mut diffs: Vec<String> = p.blockers.iter().map(|b| b.to_string()).collect();
    diffs.extend(p.changes.iter().map(|c| c.to_string()));
    Ok(diffs)
}

/// `ve-link check`: exit 0 when everything `up` makes is in place, else 1 with the list.
pub fn check(req: &UpRequest, json: bool) -> Result<()> {
    let diffs = differences(req)?;
    if json {
        output::print(&output::json_line(&CheckOutput {
            name: &req.name,
            ok: diffs.is_empty(),
            differences: diffs.clone(),
        })?)?;
    } else {
        let text: String = diffs.iter().map(|d| format!("{d}\n")).collect();
        output::print(&text)?;
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            Exit::Differs,
            format!(
                "{}: {} difference(s) from the request",
                req.name,
                diffs.len()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::fake::{State, World},
        request::{mac_for, UpInput},
    };

    fn req(host: &str) -> UpRequest {
        UpRequest::build(UpInput {
            name: "foo".into(),
            netns: Some("ctr".into()),
            host_address: Some(host.into()),
            local_address: Some("10.0.0.2".into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn up_in(w: &World, r: &UpRequest) -> Result<Vec<Change>> {
        let (host, ctr) = (w.host(), w.ctr());
        let k = Kernels {
            host: &host,
            ctr: &ctr,
            ns: 3,
        };
        converge(r, &k)
    }

    fn v4(a: &str, len: u8) -> Addr {
        (a.parse().unwrap(), len)
    }

    #[test]
    fn up_makes_both_ends_and_a_second_up_changes_nothing() {
        let w = World::default();
        let r = req("10.0.0.1");
        assert!(!up_in(&w, &r).unwrap().is_empty());
        let h = w.link(Where::Host, "ve-foo").unwrap();
        assert_eq!(h.link.alias.as_deref(), Some("ve-link:foo"));
        assert_eq!(h.addrs, [v4("10.0.0.1", 32)]);
        assert_eq!(h.routes.len(), 1);
        let c = w.link(Where::Container, "eth0").unwrap();
        assert!(c.link.up);
        assert_eq!(c.routes.len(), 2);
        assert!(w.link(Where::Container, "lo").unwrap().link.up);
        w.clear_log();
        assert_eq!(up_in(&w, &r).unwrap(), []);
        // Looking only: nothing but questions went to the kernel.
        assert!(w.log().iter().all(|(_, q)| matches!(
            q,
            Req::LinkByName(_)
                | Req::Addrs { .. }
                | Req::Routes(_)
                | Req::NsidOf(_)
                | Req::RouteTo(_)
        )));
    }

    #[test]
    fn a_failed_step_rolls_back_the_pair_it_created() {
        let w = World::default();
        w.fail(
            Where::Container,
            |q| matches!(q, Req::AddRoute(..)),
            libc::EINVAL,
        );
        let e = up_in(&w, &req("10.0.0.1")).unwrap_err();
        assert!(e.to_string().ends_with("; rolled back"), "{e}");
        assert!(
            e.to_string().starts_with("up foo: adding container route"),
            "{e}"
        );
        assert!(w.link(Where::Host, "ve-foo").is_none());
        assert!(w.link(Where::Container, "eth0").is_none());
        assert!(w
            .log()
            .iter()
            .any(|(s, q)| *s == Where::Host && matches!(q, Req::DelLink(_))));
    }

    #[test]
    fn a_converging_up_that_fails_restores_what_it_removed() {
        let w = World::default();
        up_in(&w, &req("10.0.0.1")).unwrap();
        let (h0, c0) = (
            w.link(Where::Host, "ve-foo").unwrap(),
            w.link(Where::Container, "eth0").unwrap(),
        );
        // A new host address: the old one goes, the container's routes change.
        w.fail(
            Where::Container,
            |q| matches!(q, Req::AddRoute(..)),
            libc::EINVAL,
        );
        let e = up_in(&w, &req("10.0.0.3")).unwrap_err();
        assert!(e.to_string().ends_with("; rolled back"), "{e}");
        assert!(w
            .log()
            .iter()
            .any(|(_, q)| matches!(q, Req::DelAddr(_, a) if *a == v4("10.0.0.1", 32))));
        let (h, c) = (
            w.link(Where::Host, "ve-foo").unwrap(),
            w.link(Where::Container, "eth0").unwrap(),
        );
        assert_eq!(h.link.index, h0.link.index, "the pair stays");
        assert_eq!(h.addrs, h0.addrs);
        let sorted = |mut v: Vec<Route>| {
            v.sort_by_key(|r| r.to_string());
            v
        };
        assert_eq!(sorted(h.routes), sorted(h0.routes));
        assert_eq!(sorted(c.routes), sorted(c0.routes));
    }

    #[test]
    fn a_link_removed_in_the_middle_of_up_is_a_race_75_not_a_bug() {
        let w = World::default();
        w.after(
            Where::Host,
            |q| matches!(q, Req::CreateVeth(_)),
            |s: &mut State| s.remove_named(Where::Host, "ve-foo"),
        );
        let e = up_in(&w, &req("10.0.0.1")).unwrap_err();
        assert_eq!(e.exit(), Exit::TempFail, "{e}");
        assert!(
            e.to_string().contains("ve-foo was removed meanwhile"),
            "{e}"
        );
        assert!(w.links().iter().all(|l| l.link.name == "lo"));
    }

    #[test]
    fn losing_the_create_to_another_up_converges_what_that_one_made() {
        let w = World::default();
        w.fail_after(
            Where::Host,
            |q| matches!(q, Req::CreateVeth(_)),
            libc::EEXIST,
            |s: &mut State| {
                s.add_pair(
                    "ve-foo",
                    mac_for("foo", "host"),
                    "eth0",
                    mac_for("foo", "container"),
                )
            },
        );
        let changes = up_in(&w, &req("10.0.0.1")).unwrap();
        assert!(!changes.contains(&Change::Create), "{changes:?}");
        let creates = w
            .log()
            .iter()
            .filter(|(_, q)| matches!(q, Req::CreateVeth(_)))
            .count();
        assert_eq!(creates, 1);
        // The other `up` had not marked it yet: this one did, and configured it.
        let h = w.link(Where::Host, "ve-foo").unwrap();
        assert_eq!(h.link.alias.as_deref(), Some("ve-link:foo"));
        assert_eq!(h.addrs, [v4("10.0.0.1", 32)]);
        assert_eq!(w.link(Where::Container, "eth0").unwrap().routes.len(), 2);
    }

    #[test]
    fn losing_the_create_twice_is_75() {
        let w = World::default();
        for _ in 0..2 {
            w.fail(
                Where::Host,
                |q| matches!(q, Req::CreateVeth(_)),
                libc::EEXIST,
            );
        }
        let e = up_in(&w, &req("10.0.0.1")).unwrap_err();
        assert_eq!(e.exit(), Exit::TempFail, "{e}");
        assert!(e.to_string().starts_with("up foo: creating veth"), "{e}");
        assert!(e.to_string().ends_with(RACED), "{e}");
    }

    #[test]
    fn a_missing_bridge_is_66_and_someone_elses_link_73_and_nothing_changes() {
        let w = World::default();
        let mut r = req("10.0.0.1");
        r.bridge = Some("br9".into());
        let e = up_in(&w, &r).unwrap_err();
        assert_eq!(e.exit(), Exit::NoInput, "{e}");
        w.with(|s| s.add_pair("ve-foo", [2, 0, 0, 0, 0, 1], "eth9", [2, 0, 0, 0, 0, 2]));
        let e = up_in(&w, &req("10.0.0.1")).unwrap_err();
        assert_eq!(e.exit(), Exit::CantCreate, "{e}");
        assert!(e.to_string().contains("not made by ve-link"), "{e}");
        assert!(w.log().iter().all(|(_, q)| !matches!(
            q,
            Req::CreateVeth(_) | Req::DelLink(_) | Req::AddAddr(..) | Req::AddRoute(..)
        )));
    }

    #[test]
    fn a_link_with_our_alias_that_is_no_veth_is_never_replaced() {
        let w = World::default();
        // A dummy link someone named and marked like ours.
        w.with(|s| {
            s.links.push(crate::kernel::fake::FakeLink {
                ns: Where::Host,
                link: Link {
                    index: 5,
                    name: "ve-foo".into(),
                    alias: Some("ve-link:foo".into()),
                    mac: mac_for("foo", "host").to_vec(),
                    ..Default::default()
                },
                addrs: Vec::new(),
                routes: Vec::new(),
            })
        });
        let e = up_in(&w, &req("10.0.0.1")).unwrap_err();
        assert_eq!(e.exit(), Exit::CantCreate, "{e}");
        assert!(w.link(Where::Host, "ve-foo").is_some());
        assert!(w.log().iter().all(|(_, q)| !matches!(q, Req::DelLink(_))));
    }
}
