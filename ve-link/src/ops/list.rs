//! `ve-link list`: the managed pairs, with their container ends, namespaces, states and
//! addresses.

use common::{name, output, Result};
use serde::Serialize;

use super::{require_privilege, teardown::managed};
use crate::{
    kernel::{step_error, Netlink, Socket},
    live,
    request::{full_len, Addr},
};

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
    let nl = Socket::host()?;
    let rows = rows(&nl)?;

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

/// The rows of `list`, sorted by container name.
fn rows(nl: &dyn Netlink) -> Result<Vec<ListRow>> {
    let links = nl.links().map_err(|e| step_error("listing links", e))?;
    let live = live::live(nl)?;
    let mut unknown = false;
    let mut rows = Vec::new();
    for m in managed(links) {
        let l = &m.link.name;
        // A link removed meanwhile shows without addresses; anything else is an error.
        let addrs = gone_is_empty(nl.addrs_at(m.link.index, None))
            .map_err(|e| step_error(format!("reading the addresses of {l}"), e))?;
        // The container end, read through the namespace id.
        let (mut peer, mut ctr_addrs) = (String::new(), Vec::new());
        if let (Some(id), Some(pi)) = (m.link.peer_nsid, m.link.peer) {
            if let Some(p) = nl
                .link_at(pi, id)
                .map_err(|e| step_error(format!("reading the container end of {l}"), e))?
            {
                peer = p.name;
            }
            ctr_addrs = gone_is_empty(nl.addrs_at(pi, Some(id)))
                .map_err(|e| step_error(format!("reading the container addresses of {l}"), e))?;
        }
        let netns = match m.link.peer_nsid {
            Some(id) => match live::verdict_of(nl, &live, &m.link, id)? {
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
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::{fake::World, Req},
        plan::Where,
        request::{alias_for, mac_for},
    };

    #[test]
    fn list_shows_managed_pairs_with_both_ends_addresses_and_mode_only() {
        let w = World::default();
        w.with(|s| {
            s.add_pair("ve-foo", mac_for("foo", "host"), "eth0", [2, 0, 0, 0, 0, 2]);
            s.add_pair("vb-bar", mac_for("bar", "host"), "eth1", [2, 0, 0, 0, 0, 3]);
            // Someone else's veth, and a pair an `up` has not marked yet.
            s.add_pair("ve-baz", [2, 0, 0, 0, 0, 4], "x", [2, 0, 0, 0, 0, 5]);
            s.add_pair("ve-new", mac_for("new", "host"), "eth2", [2, 0, 0, 0, 0, 6]);
            for l in &mut s.links {
                match l.link.name.as_str() {
                    "ve-foo" => {
                        l.link.alias = Some(alias_for("foo"));
                        l.addrs.push(("10.0.0.1".parse().unwrap(), 32));
                    }
                    "vb-bar" => l.link.alias = Some(alias_for("bar")),
                    "ve-baz" => l.link.alias = Some("mine".into()),
                    "eth0" => l.addrs.push(("10.0.0.2".parse().unwrap(), 24)),
                    _ => {}
                }
            }
        });
        let rows = rows(&w.host()).unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.iface.as_str(),
                    r.mode,
                    r.peer.as_str(),
                    r.state,
                    r.addresses.join(","),
                    r.container_addresses.join(","),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "bar",
                    "vb-bar",
                    "bridge",
                    "eth1",
                    "up",
                    "".into(),
                    "".into()
                ),
                (
                    "foo",
                    "ve-foo",
                    "routed",
                    "eth0",
                    "up",
                    "10.0.0.1".into(),
                    "10.0.0.2/24".into()
                ),
            ]
        );
        assert!(w.log().iter().all(|(s, q)| *s == Where::Host
            && !matches!(q, Req::DelLink(_) | Req::SetGroup(..) | Req::FixLink(..))));
    }
}
