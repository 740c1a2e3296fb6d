//! Teardown: `down` of named containers or all, and `gc` of pairs whose container
//! namespace is gone; several pairs go in one batched delete.

use std::collections::{BTreeMap, HashSet};

use common::{name, output, Result};

use super::{first_of, require_privilege};
use crate::{
    kernel::{step_error, Netlink, Req, Socket},
    live, ours,
    plan::Link,
};

/// A managed host end and the container it belongs to.
pub(super) struct Managed {
    pub link: Link,
    pub container: String,
}

/// The managed host ends among `links`.
pub(super) fn managed(links: Vec<Link>) -> Vec<Managed> {
    links
        .into_iter()
        .filter_map(|l| {
            let container = ours::container(&l)?.to_string();
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
    let nl = Socket::host()?;
    down_in(&nl, names, all)
}

fn down_in(nl: &dyn Netlink, names: &[String], all: bool) -> Result<()> {
    if let [n] = names {
        // One pair: two lookups by name (one batch) and one delete, no dump.
        let mut errors = Vec::new();
        let mut victims = Vec::new();
        let ifnames = [name::host_ifname(n), name::bridge_ifname(n)];
        let reqs = ifnames.clone().map(Req::LinkByName);
        for (ifname, r) in ifnames.iter().zip(nl.batch(&reqs)) {
            match r.and_then(crate::kernel::Reply::link) {
                Ok(Some(l)) => victims.extend(select(l, n)),
                Ok(None) => {}
                Err(e) => errors.push(step_error(format!("looking up {ifname}"), e)),
            }
        }
        for l in victims {
            if let Err(e) = nl.del_link_unwaited(l.index) {
                errors.push(step_error(format!("removing {}", l.name), e));
            }
        }
        return first_of(errors).map_or(Ok(()), Err);
    }
    let links = nl.links().map_err(|e| step_error("listing links", e))?;
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
    delete_batch(nl, victims, &links)
}

/// `l` if it is the host end of container `n`; a warning otherwise.
fn select(l: Link, n: &str) -> Option<Link> {
    if ours::is_host_end_of(&l, n) {
        Some(l)
    } else {
        log::warn!("{} is not managed by ve-link; left alone", l.name);
        None
    }
}

/// Delete `victims` (host ends of managed pairs), paying the kernel's teardown cost once:
/// they are moved into an interface group no link of `all` (a fresh dump) is in, and
/// that group is deleted in one request.
fn delete_batch(nl: &dyn Netlink, victims: Vec<Link>, all: &[Link]) -> Result<()> {
    let mut errors = Vec::new();
    match victims.len() {
        0 => return Ok(()),
        1 => {
            let l = &victims[0];
            nl.del_link_unwaited(l.index)
                .map_err(|e| step_error(format!("removing {}", l.name), e))?;
            log::info!("removed {}", l.name);
            return Ok(());
        }
        _ => {}
    }
    let used: HashSet<u32> = all.iter().map(|l| l.group).collect();
    let group = batch_group(&used);
    let reqs: Vec<Req> = victims
        .iter()
        .map(|l| Req::SetGroup(l.index, group))
        .collect();
    let mut grouped = Vec::new();
    for (l, r) in victims.iter().zip(nl.batch(&reqs)) {
        match r {
            Ok(_) => grouped.push(l),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => errors.push(step_error(format!("removing {}", l.name), e)),
        }
    }
    if let Err(e) = nl.act(Req::DelGroup(group)) {
        log::warn!("batch delete failed ({e}); deleting one by one");
        for l in grouped {
            if let Err(e) = nl.act(Req::DelLink(l.index)) {
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

/// `ve-link gc`: remove managed links whose container namespace is gone.
pub fn gc(dry_run: bool) -> Result<()> {
    require_privilege(false)?;
    let nl = Socket::host()?;
    let links = nl.links().map_err(|e| step_error("listing links", e))?;
    let live = live::live(&nl)?;
    let mut stale: Vec<Managed> = Vec::new();
    for m in managed(links.clone()) {
        // No peer namespace id: the peer is in this namespace, not a container's.
        let Some(id) = m.link.peer_nsid else {
            continue;
        };
        match live::verdict_of(&nl, &live, &m.link, id)? {
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
        delete_batch(&nl, victims, &links)?;
    }
    output::print(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::fake::World,
        plan::Where,
        request::{alias_for, mac_for},
    };

    fn pair(w: &World, name: &str, marked: bool) {
        let host = name::host_ifname(name);
        w.with(|s| {
            s.add_pair(&host, mac_for(name, "host"), "eth0", [2, 0, 0, 0, 0, 2]);
            if marked {
                if let Some(l) = s.links.iter_mut().find(|l| l.link.name == host) {
                    l.link.alias = Some(alias_for(name));
                }
            }
        });
    }

    #[test]
    fn down_of_several_deletes_them_in_one_group_and_leaves_foreign_links() {
        let w = World::default();
        for n in ["a", "b", "c"] {
            pair(&w, n, true);
        }
        // Named like c's sibling, but someone else's.
        w.with(|s| s.add_pair("ve-d", [2, 0, 0, 0, 0, 9], "x", [2, 0, 0, 0, 0, 8]));
        let names: Vec<String> = ["a", "b", "d", "e"].map(String::from).into();
        down_in(&w.host(), &names, false).unwrap();
        let left: Vec<String> = w
            .links()
            .into_iter()
            .filter(|l| l.ns == Where::Host)
            .map(|l| l.link.name)
            .collect();
        assert_eq!(left, ["lo", "ve-c", "ve-d"]);
        let deletes: Vec<Req> = w
            .log()
            .into_iter()
            .map(|(_, q)| q)
            .filter(|q| matches!(q, Req::DelGroup(_) | Req::DelLink(_)))
            .collect();
        assert!(matches!(deletes[..], [Req::DelGroup(_)]), "{deletes:?}");
        down_in(&w.host(), &[], true).unwrap();
        let left = w
            .links()
            .into_iter()
            .filter(|l| l.ns == Where::Host)
            .count();
        assert_eq!(left, 2, "lo and ve-d stay");
    }

    #[test]
    fn down_of_one_takes_a_pair_an_up_has_not_marked_yet_and_gone_is_success() {
        let w = World::default();
        pair(&w, "a", false);
        down_in(&w.host(), &["a".into()], false).unwrap();
        assert!(w.link(Where::Host, "ve-a").is_none());
        assert!(w.link(Where::Container, "eth0").is_none());
        down_in(&w.host(), &["a".into()], false).unwrap();
    }
}
