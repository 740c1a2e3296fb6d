//! CNI mode with an iptables backend (`"backend": "iptables-nft"` or
//! `"iptables-legacy"`): the port mappings of CNI containers in chains of their own
//! (`rules::CNI_CHAINS`: nat `ve-nat-cni-pre`, `-out`, `-post`, filter
//! `ve-nat-cni-fwd`), installed once with their jumps and the fixed hairpin masquerade.
//! iptables has no maps, so a mapping is one rule per chain, each tagged (a comment)
//! with its attachment: `vecni-NET-ATTACHMENT`, both parts hashes (`common::cni::hash12`)
//! of the network and of `Owner`, so the tag stays plain and GC can tell one network's
//! rules from another's. ADD replaces the attachment's rules in one `iptables-restore`
//! transaction per table; DEL and GC delete by tag; CHECK compares the tagged rules.
//! The masquerade itself is the shared NAT's (`ve-nat up`'s chains), installed once
//! and never per container.

use common::{Error, Kind, Result};

use crate::{
    config::{Family, IfPattern},
    firewall::{Firewall, Table},
    nft_cni::{Mapping, Owner},
    rules::{self, CniChain, Op, CNI_CHAINS, CNI_POST, FILTER, NAT},
};

/// The tag of `network`'s rules: `vecni-NET-`.
pub fn network_tag(network: &str) -> String {
    format!(
        "vecni-{}-",
        common::cni::hash12(Owner::network_part(network).as_bytes())
    )
}

/// The tag of one attachment's rules on `network`.
pub fn tag(network: &str, owner: &Owner) -> String {
    format!(
        "{}{}",
        network_tag(network),
        common::cni::hash12(owner.as_str().as_bytes())
    )
}

/// The rules `mappings` (those of `family`) want, tagged `tag`.
fn wanted(mappings: &[Mapping], family: Family, tag: &str) -> Vec<(CniChain, String)> {
    mappings
        .iter()
        .filter(|m| m.fwd.family() == family)
        .flat_map(|m| rules::cni_mapping(&m.fwd, m.host_ip, tag))
        .collect()
}

/// Every tagged rule of ours in `nat` and `filter`: `(chain, rule)`.
fn tagged(nat: &Table, filter: &Table) -> Vec<(CniChain, String)> {
    let mut out = Vec::new();
    for c in CNI_CHAINS {
        let t = if c.table == NAT { nat } else { filter };
        for r in t.rules_of(c.chain) {
            if rules::cni_tag(&r.rule).is_some() {
                out.push((c, r.rule));
            }
        }
    }
    out
}

/// The ops that create what is missing of the chains, their jumps and the hairpin
/// rule, in `table` as read.
fn skeleton(t: &Table, table: &str, internal: &IfPattern, mark: u32) -> Vec<Op> {
    let mut ops = Vec::new();
    for c in CNI_CHAINS.iter().filter(|c| c.table == table) {
        if !t.has(c.chain) {
            ops.push(Op::Chain(c.chain.into()));
        }
        let jump = rules::jump(c.chain);
        if !t.rules_of(c.hook).iter().any(|r| r.rule == jump) {
            ops.push(if c.first {
                Op::Insert(c.hook.into(), 1, jump)
            } else {
                Op::Append(c.hook.into(), jump)
            });
        }
        if *c == CNI_POST {
            let hairpin = rules::cni_hairpin(internal, mark);
            if !t.rules_of(c.chain).iter().any(|r| r.rule == hairpin) {
                ops.push(Op::Append(c.chain.into(), hairpin));
            }
        }
    }
    ops
}

/// Refuse `want` when a host port it takes is mapped by another attachment's rules or
/// forwarded by `ve-nat up --forward` (nat `ve-nat-pre`).
fn clashes(nat: &Table, want: &[(CniChain, String)], tag: &str) -> Result<()> {
    let keys: Vec<_> = want
        .iter()
        .filter(|(c, _)| *c == rules::CNI_PRE)
        .filter_map(|(_, r)| rules::dnat_key(r))
        .collect();
    let overlaps = |a: &(Option<String>, String, u16, u16),
                    b: &(Option<String>, String, u16, u16)| {
        a.0 == b.0 && a.1 == b.1 && a.2 <= b.3 && b.2 <= a.3
    };
    for r in nat.rules_of(rules::CNI_PRE.chain) {
        let Some(other) = rules::cni_tag(&r.rule).filter(|t| *t != tag) else {
            continue;
        };
        if let Some(k) = rules::dnat_key(&r.rule).filter(|k| keys.iter().any(|w| overlaps(w, k))) {
            return Err(Error::new(
                Kind::Exists,
                format!("host port {}/{} is mapped already, for {other}", k.2, k.1),
            ));
        }
    }
    for r in nat.rules_of(rules::PRE.chain) {
        if let Some(k) = rules::dnat_key(&r.rule).filter(|k| keys.iter().any(|w| overlaps(w, k))) {
            return Err(Error::new(
                Kind::Exists,
                format!(
                    "host port {}/{} is forwarded already, by `ve-nat up --forward`",
                    k.2, k.1
                ),
            ));
        }
    }
    Ok(())
}

fn check_safe(rules: &[(CniChain, String)]) -> Result<()> {
    match rules.iter().find(|(_, r)| !rules::is_safe(r)) {
        Some((_, r)) => Err(Error::internal(format!("refusing unsafe rule text {r:?}"))),
        None => Ok(()),
    }
}

/// ADD on one family's firewall: the chains once, then exactly `mappings` for `tag`
/// (its earlier rules deleted in the same transaction). Returns whether it changed.
/// Its caller holds the lock and has run `refuse_clashes` on every family first, so a
/// clash in a later family never leaves an earlier one's mappings written.
pub fn add(
    fw: &dyn Firewall,
    family: Family,
    mappings: &[Mapping],
    tag: &str,
    internal: &IfPattern,
    mark: u32,
) -> Result<bool> {
    let want = wanted(mappings, family, tag);
    check_safe(&want)?;
    let nat = fw.save(NAT)?;
    let filter = fw.save(FILTER)?;
    // The caller looked already; this family's own listing has the last word.
    clashes(&nat, &want, tag)?;
    let have: Vec<(CniChain, String)> = tagged(&nat, &filter)
        .into_iter()
        .filter(|(_, r)| rules::cni_tag(r) == Some(tag))
        .collect();
    let mut changed = false;
    // filter first: the accepts are in before anything is DNATed to them.
    for (table, t) in [(FILTER, &filter), (NAT, &nat)] {
        let mut ops = skeleton(t, table, internal, mark);
        let old: Vec<&(CniChain, String)> = have.iter().filter(|(c, _)| c.table == table).collect();
        let new: Vec<&(CniChain, String)> = want.iter().filter(|(c, _)| c.table == table).collect();
        if old != new {
            for (c, r) in &old {
                ops.push(Op::Delete(c.chain.into(), r.clone()));
            }
            for (c, r) in &new {
                ops.push(Op::Append(c.chain.into(), r.clone()));
            }
        }
        if !ops.is_empty() {
            fw.restore(table, &ops)?;
            changed = true;
        }
    }
    Ok(changed)
}

/// ADD's look, for each family before it installs anything (ve-nat's chains, or
/// any family's mappings): a host port of `mappings` (those of `family`) that another attachment's
/// rules map or `ve-nat up --forward` forwards is refused, with nothing changed.
pub fn refuse_clashes(
    fw: &dyn Firewall,
    family: Family,
    mappings: &[Mapping],
    tag: &str,
) -> Result<()> {
    let want = wanted(mappings, family, tag);
    if want.is_empty() {
        return Ok(());
    }
    clashes(&fw.save(NAT)?, &want, tag)
}

/// Delete the rules whose tag `gone` chooses (DEL: one attachment's; GC: this
/// network's not in valid-attachments), one transaction per table. How many it deleted.
pub fn delete_where(fw: &dyn Firewall, gone: &dyn Fn(&str) -> bool) -> Result<usize> {
    let mut n = 0;
    for table in [NAT, FILTER] {
        let t = fw.save(table)?;
        let ops: Vec<Op> = CNI_CHAINS
            .iter()
            .filter(|c| c.table == table)
            .flat_map(|c| {
                t.rules_of(c.chain)
                    .into_iter()
                    .filter(|r| rules::cni_tag(&r.rule).is_some_and(gone))
                    .map(|r| Op::Delete(c.chain.into(), r.rule))
            })
            .collect();
        if !ops.is_empty() {
            n += ops.len();
            fw.restore(table, &ops)?;
        }
    }
    Ok(n)
}

/// CHECK on one family's firewall: the chains and jumps, and exactly `mappings` for
/// `tag`. One line per difference.
pub fn differences(
    fw: &dyn Firewall,
    family: Family,
    mappings: &[Mapping],
    tag: &str,
) -> Result<Vec<String>> {
    let nat = fw.save(NAT)?;
    let filter = fw.save(FILTER)?;
    let mut diffs = Vec::new();
    for c in CNI_CHAINS {
        let t = if c.table == NAT { &nat } else { &filter };
        if !t.has(c.chain) {
            diffs.push(format!(
                "{family}: chain {} {} is missing",
                c.table, c.chain
            ));
        } else if !t
            .rules_of(c.hook)
            .iter()
            .any(|r| r.rule == rules::jump(c.chain))
        {
            diffs.push(format!(
                "{family}: {} {} does not jump to {}",
                c.table, c.hook, c.chain
            ));
        }
    }
    let want = wanted(mappings, family, tag);
    let have: Vec<(CniChain, String)> = tagged(&nat, &filter)
        .into_iter()
        .filter(|(_, r)| rules::cni_tag(r) == Some(tag))
        .collect();
    for (c, r) in want.iter().filter(|w| !have.contains(w)) {
        diffs.push(format!("{family}: rule missing in {}: {r}", c.chain));
    }
    for (c, r) in have.iter().filter(|h| !want.contains(h)) {
        diffs.push(format!("{family}: rule not wanted in {}: {r}", c.chain));
    }
    Ok(diffs)
}

/// Remove the chains and their jumps altogether (`ve-nat down --cni`). Returns whether
/// anything was there.
pub fn remove(fw: &dyn Firewall) -> Result<bool> {
    let mut any = false;
    for table in [NAT, FILTER] {
        let t = fw.save(table)?;
        let mut ops = Vec::new();
        for c in CNI_CHAINS.iter().filter(|c| c.table == table) {
            let jump = rules::jump(c.chain);
            for r in t.rules_of(c.hook).into_iter().filter(|r| r.rule == jump) {
                ops.push(Op::Delete(c.hook.into(), r.rule));
            }
            if t.has(c.chain) {
                ops.push(Op::Flush(c.chain.into()));
                ops.push(Op::DeleteChain(c.chain.into()));
            }
        }
        if !ops.is_empty() {
            any = true;
            fw.restore(table, &ops)?;
        }
    }
    Ok(any)
}

/// Whether `fw` holds any CNI chain of ours.
pub fn present(fw: &dyn Firewall) -> Result<bool> {
    for table in [NAT, FILTER] {
        let t = fw.save(table)?;
        if CNI_CHAINS
            .iter()
            .any(|c| c.table == table && t.has(c.chain))
        {
            return Ok(true);
        }
    }
    Ok(false)
}
