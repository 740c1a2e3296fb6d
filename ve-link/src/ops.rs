//! The subcommands at work: observe, plan, apply (with rollback), and batched teardown.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
};

use common::{name, netns::Netns, output, Error, Exit, Result};
use futures_util::future;
use serde::Serialize;

use crate::{
    guard,
    kernel::{step_error, CtrConn, HostConn, Nl},
    live,
    plan::{plan, Change, Link, Observed, Side, Where},
    request::{container_of, full_len, Addr, Route, UpRequest},
};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Exit 77 before touching anything when the process cannot change the network (and,
/// for commands that enter a container namespace, cannot `setns`).
pub fn require_privilege(setns: bool) -> Result<()> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("reading /proc/self/status", e))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let mut missing = Vec::new();
    if eff & (1 << CAP_NET_ADMIN) == 0 {
        missing.push("CAP_NET_ADMIN");
    }
    if setns && eff & (1 << CAP_SYS_ADMIN) == 0 {
        missing.push("CAP_SYS_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            Exit::NoPerm,
            format!(
                "not enough privilege: needs {} (run as root)",
                missing.join(" and ")
            ),
        ))
    }
}

async fn observe(req: &UpRequest, ns: &Netns, host: &Nl, ctr: &Nl) -> std::io::Result<Observed> {
    let bridge = async {
        match &req.bridge {
            Some(b) => host.link_by_name(b).await,
            None => Ok(None),
        }
    };
    let other_name = req.other_mode_ifname();
    // Host end first, then the container end and the namespace id: a pair created in
    // between by a concurrent `up` then shows as "container end only", never as a
    // host end without its peer, which would be taken for stale.
    let (h, other, br) = future::join3(
        host.link_by_name(&req.host_ifname),
        host.link_by_name(&other_name),
        bridge,
    )
    .await;
    let (c, lo, nsid) = future::join3(
        ctr.link_by_name(&req.peer_ifname),
        ctr.link_by_name("lo"),
        host.nsid_of(ns),
    )
    .await;
    let (h, c, lo) = (h?, c?, lo?);
    let (hs, cs) = future::join(side(host, h), side(ctr, c)).await;
    Ok(Observed {
        host: hs?,
        ctr: cs?,
        ctr_lo_up: lo.as_ref().is_some_and(|l| l.up),
        ctr_lo: lo.map(|l| l.index),
        ctr_nsid: nsid?,
        bridge: br?.map(|b| b.index),
        other: other?,
    })
}

async fn side(nl: &Nl, link: Option<Link>) -> std::io::Result<Side> {
    let Some(l) = link else {
        return Ok(Side::default());
    };
    let (a, r) = future::join(nl.addrs(l.index), nl.routes(l.index)).await;
    Ok(Side {
        link: Some(l),
        addrs: a?,
        routes: r?,
    })
}

/// What `up` undoes when a later step fails.
enum Undo {
    Link(u32),
    /// An address or route this run added: remove it.
    Addr(Where, u32, Addr),
    Route(Where, u32, Route),
    /// An address or route this run removed while converging: put it back.
    Readd(Where, u32, Addr),
    Reroute(Where, u32, Route),
}

struct Up<'a> {
    req: &'a UpRequest,
    ns: &'a Netns,
    host: &'a Nl,
    ctr: &'a Nl,
    hidx: u32,
    cidx: u32,
    journal: Vec<Undo>,
    /// The create lost a race with another `up` of the same container.
    raced: bool,
}

impl Up<'_> {
    fn nl(&self, side: Where) -> (&Nl, u32, &str) {
        match side {
            Where::Host => (self.host, self.hidx, &self.req.host_ifname),
            Where::Container => (self.ctr, self.cidx, &self.req.peer_ifname),
        }
    }

    /// Remove a stale pair and create the new one: the steps both sides wait for.
    async fn prepare(&mut self, c: &Change, have: &Observed) -> Result<()> {
        match c {
            Change::RemoveStale { index, why } => {
                log::info!("replacing stale link: {why}");
                self.host
                    .del_link(*index)
                    .await
                    .map_err(|e| step_error(format!("removing a stale link ({why})"), e))
            }
            Change::Create => self.create(have).await,
            _ => Ok(()),
        }
    }

    /// Apply the changes of one side in order; what was added is recorded for rollback.
    async fn side(&self, changes: &[&Change], have: &Observed) -> (Vec<Undo>, Result<()>) {
        let mut undo = Vec::new();
        for c in changes {
            log::debug!("{}: {c}", self.req.name);
            match self.apply(c, have).await {
                Ok(u) => undo.extend(u),
                Err(e) => return (undo, Err(e)),
            }
        }
        (undo, Ok(()))
    }

    async fn apply(&self, c: &Change, have: &Observed) -> Result<Option<Undo>> {
        let req = self.req;
        match c {
            Change::RemoveStale { .. } | Change::Create => {}
            Change::AddAltname => {
                let alt = req.altname.as_deref().unwrap_or_default();
                self.host.add_altname(self.hidx, alt).await.map_err(|e| {
                    step_error(format!("adding altname {alt} to {}", req.host_ifname), e)
                })?;
            }
            Change::FixLink { side, fix, .. } => {
                let (nl, idx, name) = self.nl(*side);
                nl.fix_link(idx, fix)
                    .await
                    .map_err(|e| step_error(format!("configuring {side} link {name}"), e))?;
            }
            Change::LoUp => {
                let lo = have
                    .ctr_lo
                    .ok_or_else(|| Error::data("the container namespace has no lo"))?;
                self.ctr
                    .set_up(lo)
                    .await
                    .map_err(|e| step_error("setting container lo up", e))?;
            }
            Change::AddAddr(side, a) => {
                let (nl, idx, name) = self.nl(*side);
                nl.add_addr(idx, *a).await.map_err(|e| {
                    step_error(
                        format!("adding address {}/{} to {side} link {name}", a.0, a.1),
                        e,
                    )
                })?;
                return Ok(Some(Undo::Addr(*side, idx, *a)));
            }
            Change::DelAddr(side, a) => {
                let (nl, idx, name) = self.nl(*side);
                nl.del_addr(idx, *a).await.map_err(|e| {
                    step_error(
                        format!("removing address {}/{} from {side} link {name}", a.0, a.1),
                        e,
                    )
                })?;
                return Ok(Some(Undo::Readd(*side, idx, *a)));
            }
            Change::AddRoute(side, r) => {
                let (nl, idx, name) = self.nl(*side);
                nl.add_route(idx, r)
                    .await
                    .map_err(|e| step_error(format!("adding {side} route {r} dev {name}"), e))?;
                return Ok(Some(Undo::Route(*side, idx, *r)));
            }
            Change::DelRoute(side, r) => {
                let (nl, idx, name) = self.nl(*side);
                nl.del_route(idx, r)
                    .await
                    .map_err(|e| step_error(format!("removing {side} route {r} dev {name}"), e))?;
                return Ok(Some(Undo::Reroute(*side, idx, *r)));
            }
        }
        Ok(None)
    }

    async fn create(&mut self, have: &Observed) -> Result<()> {
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
        self.host
            .create_veth(
                &req.host_ifname,
                &req.alias(),
                &req.host_mac,
                &req.peer_ifname,
                &req.peer_mac,
                self.ns,
                req.mtu,
                master,
            )
            .await
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EEXIST) && have.host.link.is_none() {
                    self.raced = true;
                    Error::new(Exit::TempFail, format!("{step}: {RACED}"))
                } else {
                    step_error(&step, e)
                }
            })?;
        let (h, c) = future::join(
            self.host.link_by_name(&req.host_ifname),
            self.ctr.link_by_name(&req.peer_ifname),
        )
        .await;
        let h = h
            .map_err(|e| step_error(&step, e))?
            .ok_or_else(|| removed_meanwhile(&step, &req.host_ifname))?;
        self.journal.push(Undo::Link(h.index));
        let c = c
            .map_err(|e| step_error(&step, e))?
            .ok_or_else(|| removed_meanwhile(&step, &req.peer_ifname))?;
        self.hidx = h.index;
        self.cidx = c.index;
        let ctr_up = async {
            self.ctr.set_up(c.index).await.map_err(|e| {
                step_error(
                    format!("setting {} up in the container", req.peer_ifname),
                    e,
                )
            })
        };
        let mark = async {
            if h.alias.as_deref() != Some(req.alias().as_str()) {
                // The kernel ignores IFLA_IFALIAS when creating a link.
                self.host
                    .set_alias(h.index, &req.alias())
                    .await
                    .map_err(|e| {
                        step_error(format!("marking {} as ve-link's", req.host_ifname), e)
                    })?;
            }
            if let Some(alt) = &req.altname {
                self.host.add_altname(h.index, alt).await.map_err(|e| {
                    step_error(format!("adding altname {alt} to {}", req.host_ifname), e)
                })?;
            }
            Ok(())
        };
        let (a, b) = future::join(ctr_up, mark).await;
        a.and(b)
    }

    async fn rollback(&mut self, before: &Observed) -> Vec<String> {
        let mut errors = Vec::new();
        let link = self.journal.iter().find_map(|u| match u {
            Undo::Link(i) => Some(*i),
            _ => None,
        });
        if let Some(idx) = link {
            // Deleting the new pair takes every address and route on it along.
            if let Err(e) = self.host.del_link(idx).await {
                errors.push(format!("removing {}: {e}", self.req.host_ifname));
            }
            return errors;
        }
        for u in self.journal.drain(..).rev() {
            let r = match u {
                Undo::Link(_) => Ok(()),
                Undo::Addr(Where::Host, i, a) => self.host.del_addr(i, a).await,
                Undo::Addr(Where::Container, i, a) => self.ctr.del_addr(i, a).await,
                Undo::Route(Where::Host, i, r) => self.host.del_route(i, &r).await,
                Undo::Route(Where::Container, i, r) => self.ctr.del_route(i, &r).await,
                Undo::Readd(Where::Host, i, a) => self.host.add_addr(i, a).await,
                Undo::Readd(Where::Container, i, a) => self.ctr.add_addr(i, a).await,
                Undo::Reroute(Where::Host, i, r) => self.host.add_route(i, &r).await,
                Undo::Reroute(Where::Container, i, r) => self.ctr.add_route(i, &r).await,
            };
            if let Err(e) = r {
                errors.push(e.to_string());
            }
        }
        // Removing an address also makes the kernel drop the routes that use it as
        // their source: put back every route of ours that was there before.
        for (side, idx, routes) in [
            (Where::Host, self.hidx, &before.host.routes),
            (Where::Container, self.cidx, &before.ctr.routes),
        ] {
            let nl = if side == Where::Host {
                self.host
            } else {
                self.ctr
            };
            // Routes to the neighbour first: a route via it needs one.
            let (direct, via): (Vec<&Route>, Vec<&Route>) =
                routes.iter().partition(|r| r.via.is_none());
            for r in direct.into_iter().chain(via) {
                match nl.add_route(idx, r).await {
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
fn refuse_own_namespace(ns: &Netns) -> Result<()> {
    if ns.id()? == Netns::current()?.id()? {
        return Err(Error::data(format!(
            "network namespace {} is the one ve-link runs in, not a container's",
            ns.label()
        )));
    }
    Ok(())
}

/// Says why a create failed when it lost a race with another `up` of the same name.
const RACED: &str = "created concurrently by another ve-link up";

/// A link this run just created is gone: a concurrent `down` (or someone) removed it.
/// Not a bug, and the next `up` makes it again.
fn removed_meanwhile(step: &str, ifname: &str) -> Error {
    Error::new(
        Exit::TempFail,
        format!("{step}: {ifname} was removed meanwhile (a concurrent down?); try again"),
    )
}

/// Why one round of `up` did not finish.
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

/// `ve-link up`.
pub fn up(req: &UpRequest, json: bool) -> Result<()> {
    let ns = req.netns.open()?;
    refuse_own_namespace(&ns)?;
    require_privilege(true)?;
    let host = HostConn::open()?;
    let ctr = CtrConn::open(&ns)?;
    let changes = host.rt.block_on(async {
        let again = match up_once(req, &ns, &host.nl, &ctr.nl).await {
            Ok(c) => return Ok(c),
            Err(Failed::Error(e)) => return Err(e),
            // Another `up` of this container made the pair between our look and our
            // create: look again and converge what it made.
            Err(Failed::Raced(_)) => {
                log::info!("{}: {RACED}; converging", req.name);
                up_once(req, &ns, &host.nl, &ctr.nl).await
            }
        };
        match again {
            Ok(c) => Ok(c),
            Err(Failed::Error(e)) => Err(e),
            Err(Failed::Raced(e)) => Err(e.context(format!("up {}", req.name))),
        }
    })?;
    if changes.is_empty() {
        log::info!("{}: already up, nothing changed", req.name);
    }
    if json {
        output::print(&output::json_line(&UpOutput {
            name: &req.name,
            host_iface: &req.host_ifname,
            local_iface: &req.peer_ifname,
            host_bridge: req.bridge.as_deref(),
            netns: req.netns.to_string(),
            addresses: &req.addresses,
            changes: changes.iter().map(|c| c.to_string()).collect(),
        })?)
    } else {
        output::print(&output::env_lines(&req.output_pairs()))
    }
}

/// One look-plan-apply round of `up`, rolled back on failure.
async fn up_once(
    req: &UpRequest,
    ns: &Netns,
    host: &Nl,
    ctr: &Nl,
) -> std::result::Result<Vec<Change>, Failed> {
    let mut have = observe(req, ns, host, ctr)
        .await
        .map_err(|e| step_error("reading the current links", e))?;
    let mut p = plan(req, &have);
    if !p.blockers.is_empty() {
        // The two ends are looked up at once; a pair another `up` created in between
        // shows only its container end. A second look sees both.
        have = observe(req, ns, host, ctr)
            .await
            .map_err(|e| step_error("reading the current links", e))?;
        p = plan(req, &have);
    }
    if let Some(b) = p.blockers.first() {
        let exit = if b.starts_with("bridge") {
            Exit::NoInput
        } else {
            Exit::CantCreate
        };
        return Err(Error::new(exit, format!("up {}: {b}", req.name)).into());
    }
    let own = have
        .host
        .link
        .as_ref()
        .filter(|l| crate::plan::owner(l, req) == Some(req.name.as_str()))
        .map(|l| l.index);
    refuse_host_addresses(req, host, own).await?;
    let mut run = Up {
        req,
        ns,
        host,
        ctr,
        hidx: have.host.link.as_ref().map_or(0, |l| l.index),
        cidx: have.ctr.link.as_ref().map_or(0, |l| l.index),
        journal: Vec::new(),
        raced: false,
    };
    // Stale removal and creation first; then both sides at once.
    let mut result = Ok(());
    for c in p.changes.iter().filter(|c| c.side().is_none()) {
        log::debug!("{}: {c}", req.name);
        result = run.prepare(c, &have).await;
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        let of = |w| {
            p.changes
                .iter()
                .filter(|c| c.side() == Some(w))
                .collect::<Vec<_>>()
        };
        let (host_changes, ctr_changes) = (of(Where::Host), of(Where::Container));
        let ((hu, hr), (cu, cr)) = future::join(
            run.side(&host_changes, &have),
            run.side(&ctr_changes, &have),
        )
        .await;
        run.journal.extend(hu);
        run.journal.extend(cu);
        result = hr.and(cr);
    }
    if let Err(e) = result {
        if run.raced {
            return Err(Failed::Raced(e));
        }
        let errors = run.rollback(&have).await;
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
async fn refuse_host_addresses(req: &UpRequest, host: &Nl, own: Option<u32>) -> Result<()> {
    let keys = guard::to_check(req);
    let covers = future::join_all(keys.iter().map(|(_, a)| host.route_to(*a))).await;
    for ((key, addr), cover) in keys.into_iter().zip(covers) {
        let cover =
            cover.map_err(|e| step_error(format!("looking up the host's route to {addr}"), e))?;
        let Some(c) = cover.filter(|c| own.is_none() || c.oif != own) else {
            continue;
        };
        // Only when it may be refused: the link it is on, to tell and to name it.
        let mut dev = None;
        if c.kind != guard::CoverKind::Other && (c.len > 0 || c.kind == guard::CoverKind::Local) {
            if let Some(i) = c.oif {
                dev = host
                    .link_by_index(i)
                    .await
                    .map_err(|e| step_error(format!("looking up link {i}"), e))?;
            }
        }
        let managed = dev.as_ref().is_some_and(|l| managed_container(l).is_some());
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

/// `ve-link check`: exit 0 when everything `up` makes is in place, else 1 with the list.
pub fn check(req: &UpRequest, json: bool) -> Result<()> {
    let ns = req.netns.open()?;
    require_privilege(true)?;
    let host = HostConn::open()?;
    let ctr = CtrConn::open(&ns)?;
    let have = host
        .rt
        .block_on(observe(req, &ns, &host.nl, &ctr.nl))
        .map_err(|e| step_error("reading the current links", e))?;
    let p = plan(req, &have);
    let mut diffs: Vec<String> = p.blockers.clone();
    diffs.extend(p.changes.iter().map(|c| c.to_string()));
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

/// A managed host end and the container it belongs to.
struct Managed {
    link: Link,
    container: String,
}

/// The container whose managed host end `l` is, if it is one.
fn managed_container(l: &Link) -> Option<String> {
    let c = container_of(l.alias.as_deref())?;
    // The marker and the naming rule must agree: both are ours.
    let ours = l.name == name::host_ifname(c) || l.name == name::bridge_ifname(c);
    (ours && l.veth).then(|| c.to_string())
}

fn managed(links: Vec<Link>) -> Vec<Managed> {
    links
        .into_iter()
        .filter_map(|l| {
            let container = managed_container(&l)?;
            Some(Managed { link: l, container })
        })
        .collect()
}

/// `ve-link down NAME...` / `down --all`.
pub fn down(names: &[String], all: bool) -> Result<()> {
    for n in names {
        name::validate(n)?;
    }
    require_privilege(false)?;
    let host = HostConn::open()?;
    host.rt.block_on(async {
        let nl = &host.nl;
        if let [n] = names {
            // One pair: two lookups by name and one delete, no dump.
            let mut errors = Vec::new();
            let mut victims = Vec::new();
            for ifname in [name::host_ifname(n), name::bridge_ifname(n)] {
                match nl.link_by_name(&ifname).await {
                    Ok(Some(l)) => victims.extend(select(l, n)),
                    Ok(None) => {}
                    Err(e) => errors.push(step_error(format!("looking up {ifname}"), e)),
                }
            }
            for l in victims {
                if let Err(e) = nl.del_link(l.index).await {
                    errors.push(step_error(format!("removing {}", l.name), e));
                }
            }
            return first_of(errors).map_or(Ok(()), Err);
        }
        let links = nl
            .links()
            .await
            .map_err(|e| step_error("listing links", e))?;
        let victims: Vec<Link> = if all {
            managed(links.clone()).into_iter().map(|m| m.link).collect()
        } else {
            let wanted: BTreeMap<String, &String> = names
                .iter()
                .flat_map(|n| [(name::host_ifname(n), n), (name::bridge_ifname(n), n)])
                .collect();
            links
                .iter()
                .filter_map(|l| select(l.clone(), wanted.get(&l.name)?))
                .collect()
        };
        delete_batch(nl, victims, &links).await
    })
}

/// `l` if it is the managed host end of container `n`; a warning otherwise.
fn select(l: Link, n: &str) -> Option<Link> {
    // No alias yet but the name's MAC: an `up` is between creating and marking it.
    let fresh = l.alias.is_none() && l.mac == crate::request::mac_for(n, "host");
    if (container_of(l.alias.as_deref()) == Some(n) || fresh) && l.veth {
        Some(l)
    } else {
        log::warn!("{} is not managed by ve-link; left alone", l.name);
        None
    }
}

fn first_of(mut errors: Vec<Error>) -> Option<Error> {
    let n = errors.len();
    if n == 0 {
        return None;
    }
    let first = errors.remove(0);
    let rest: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    if rest.is_empty() {
        Some(first)
    } else {
        Some(Error::new(
            first.exit(),
            format!("{first}; {}", rest.join("; ")),
        ))
    }
}

/// Delete `victims` (host ends of managed pairs), paying the kernel's teardown cost once:
/// they are moved into an interface group no link of `all` (a fresh dump) is in, and
/// that group is deleted in one request.
async fn delete_batch(nl: &Nl, victims: Vec<Link>, all: &[Link]) -> Result<()> {
    let mut errors = Vec::new();
    match victims.len() {
        0 => return Ok(()),
        1 => {
            let l = &victims[0];
            nl.del_link(l.index)
                .await
                .map_err(|e| step_error(format!("removing {}", l.name), e))?;
            log::info!("removed {}", l.name);
            return Ok(());
        }
        _ => {}
    }
    let used: HashSet<u32> = all.iter().map(|l| l.group).collect();
    let group = batch_group(&used);
    let moved = future::join_all(victims.iter().map(|l| nl.set_group(l.index, group))).await;
    let mut grouped = Vec::new();
    for (l, r) in victims.iter().zip(moved) {
        match r {
            Ok(()) => grouped.push(l),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => errors.push(step_error(format!("removing {}", l.name), e)),
        }
    }
    if let Err(e) = nl.del_group(group).await {
        log::warn!("batch delete failed ({e}); deleting one by one");
        for l in grouped {
            if let Err(e) = nl.del_link(l.index).await {
                errors.push(step_error(format!("removing {}", l.name), e));
            }
        }
    } else {
        log::info!("removed {} links in one batch", grouped.len());
    }
    first_of(errors).map_or(Ok(()), Err)
}

/// A group number in no use, from a range nobody configures by hand.
fn batch_group(used: &HashSet<u32>) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut g = 0x7600_0000 | ((std::process::id() ^ t.rotate_left(7)) & 0x00ff_ffff);
    while used.contains(&g) {
        g = 0x7600_0000 | (g.wrapping_add(1) & 0x00ff_ffff);
    }
    g
}

/// Whether the container namespace of host end `l` (namespace id `id`) is in use. Only
/// when some process may not be inspected is the container end looked at.
async fn verdict(nl: &Nl, live: &live::Live, l: &Link, id: i32) -> Result<live::Verdict> {
    let mut peer = None;
    if let v @ live::Verdict::Live(_) = live.verdict(id, None) {
        return Ok(v);
    }
    if live.has_hidden() {
        if let Some(pi) = l.peer {
            peer = nl
                .link_at(pi, id)
                .await
                .map_err(|e| step_error(format!("reading the container end of {}", l.name), e))?;
        }
    }
    Ok(live.verdict(
        id,
        peer.as_ref().map(|p| live::Peer {
            index: p.index,
            name: &p.name,
            mac: &p.mac,
        }),
    ))
}

/// `ve-link gc`: remove managed links whose container namespace is gone.
pub fn gc(dry_run: bool) -> Result<()> {
    require_privilege(false)?;
    let host = HostConn::open()?;
    host.rt.block_on(async {
        let nl = &host.nl;
        let links = nl
            .links()
            .await
            .map_err(|e| step_error("listing links", e))?;
        let live = live::live(nl).await?;
        let mut stale: Vec<Managed> = Vec::new();
        for m in managed(links.clone()) {
            // No peer namespace id: the peer is in this namespace, not a container's.
            let Some(id) = m.link.peer_nsid else {
                continue;
            };
            match verdict(nl, &live, &m.link, id).await? {
                live::Verdict::Gone => stale.push(m),
                live::Verdict::Live(_) => {}
                live::Verdict::Unknown(who) => log::warn!(
                    "keeping {}: cannot tell whether its namespace is gone ({who} may not be inspected: needs CAP_SYS_PTRACE)",
                    m.link.name
                ),
            }
        }
        // Container names, not interface names: the next tool in the pipe
        // (`ve-alloc release -`) keys on them, and a long name's interface is shortened.
        let mut names: Vec<&str> = stale.iter().map(|m| m.container.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        if !dry_run {
            let victims = stale.iter().map(|m| m.link.clone()).collect();
            delete_batch(nl, victims, &links).await?;
        }
        output::print(&text)
    })
}

#[derive(Serialize)]
struct ListRow {
    name: String,
    iface: String,
    mode: &'static str,
    netns: String,
    /// The container end's name.
    peer: String,
    state: &'static str,
    /// Host-end addresses.
    addresses: Vec<String>,
    container_addresses: Vec<String>,
}

fn gone_is_empty<T>(r: std::io::Result<Vec<T>>) -> std::io::Result<Vec<T>> {
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::EINVAL)) => {
            Ok(Vec::new())
        }
        r => r,
    }
}

fn show_addrs(addrs: &[Addr]) -> Vec<String> {
    addrs
        .iter()
        .map(|(a, l)| {
            if *l == full_len(*a) {
                a.to_string()
            } else {
                format!("{a}/{l}")
            }
        })
        .collect()
}

/// `ve-link list`: the links this tool manages. Without the privilege to see the
/// container ends and which namespaces are in use it exits 77 rather than guess.
pub fn list(json: bool) -> Result<()> {
    require_privilege(false)?;
    let host = HostConn::open()?;
    let rows = host.rt.block_on(async {
        let nl = &host.nl;
        let links = nl
            .links()
            .await
            .map_err(|e| step_error("listing links", e))?;
        let live = live::live(nl).await?;
        let mut unknown = false;
        let mut rows = Vec::new();
        for m in managed(links) {
            let l = &m.link.name;
            // A link removed meanwhile shows without addresses; anything else is an error.
            let addrs = gone_is_empty(nl.addrs(m.link.index).await)
                .map_err(|e| step_error(format!("reading the addresses of {l}"), e))?;
            // The container end, read through the namespace id.
            let (mut peer, mut ctr_addrs) = (String::new(), Vec::new());
            if let (Some(id), Some(pi)) = (m.link.peer_nsid, m.link.peer) {
                if let Some(p) = nl
                    .link_at(pi, id)
                    .await
                    .map_err(|e| step_error(format!("reading the container end of {l}"), e))?
                {
                    peer = p.name;
                }
                ctr_addrs = gone_is_empty(nl.addrs_at(pi, Some(id)).await).map_err(|e| {
                    step_error(format!("reading the container addresses of {l}"), e)
                })?;
            }
            let netns = match m.link.peer_nsid {
                Some(id) => match verdict(nl, &live, &m.link, id).await? {
                    live::Verdict::Live(label) => label,
                    live::Verdict::Gone => format!("nsid {id} (gone)"),
                    live::Verdict::Unknown(_) => {
                        unknown = true;
                        format!("nsid {id} (unknown)")
                    }
                },
                None => "-".into(),
            };
            rows.push(ListRow {
                mode: if m.link.name.starts_with(name::BRIDGE_PREFIX) {
                    "bridge"
                } else {
                    "routed"
                },
                name: m.container,
                iface: m.link.name,
                netns,
                peer,
                state: if m.link.up { "up" } else { "down" },
                addresses: show_addrs(&addrs),
                container_addresses: show_addrs(&ctr_addrs),
            });
        }
        if unknown {
            log::warn!(
                "some processes may not be inspected (needs CAP_SYS_PTRACE): a namespace shown as unknown may be in use"
            );
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok::<_, Error>(rows)
    })?;
    if json {
        let mut s = String::new();
        for r in &rows {
            s.push_str(&output::json_line(r)?);
        }
        output::print(&s)
    } else {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.iface.clone(),
                    r.mode.to_string(),
                    r.netns.clone(),
                    r.peer.clone(),
                    r.state.to_string(),
                    r.addresses.join(","),
                    r.container_addresses.join(","),
                ]
            })
            .collect();
        output::print(&output::table(
            &[
                "NAME",
                "IFACE",
                "MODE",
                "NETNS",
                "PEER",
                "STATE",
                "HOST",
                "CONTAINER",
            ],
            &cells,
        ))
    }
}
