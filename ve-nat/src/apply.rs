//! Bringing a firewall to the wanted state (`up`), comparing (`check`), and removing
//! ours (`down`), over the `Firewall` trait.
//!
//! Each table is read once and changed in one `iptables-restore --noflush` transaction:
//! a chain whose rules differ is flushed and refilled, and its jump fixed, in the same
//! commit, so the kernel switches from the old complete set to the new one at once (no
//! staging chain, no moment without our rules). A crash (SIGKILL, power) therefore
//! leaves each table either as it was or as wanted: IPv4's filter may be new and its
//! nat old, which the next `up` finishes. Staging chains (`*-new`) that earlier
//! versions left behind are removed in the same transaction.

use common::{Error, Result};

use crate::{
    firewall::{Counted, Firewall, Table},
    rules::{self, ChainId, ChainRules, Op, CHAINS, FILTER, NAT},
};

/// The tables of ours, in the order `up` changes them (filter first: forwarded traffic
/// is accepted and the loopback guard in place before anything is NATed).
const TABLES: [&str; 2] = [FILTER, NAT];

/// Whether `rule` (as `-S` prints it, without `-A CHAIN`) jumps or goes to `chain`.
fn targets(rule: &str, chain: &str) -> bool {
    let toks: Vec<&str> = rule.split(' ').collect();
    toks.windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
}

/// The 1-based positions and texts of the rules in `id.hook` that lead to `chain`.
fn jumps(t: &Table, id: &ChainId, chain: &str) -> Vec<(usize, String)> {
    t.rules_of(id.hook)
        .into_iter()
        .enumerate()
        .filter(|(_, c)| targets(&c.rule, chain))
        .map(|(i, c)| (i + 1, c.rule))
        .collect()
}

/// Ops that remove `chain` and every jump to it from `id.hook`.
fn remove_chain(t: &Table, id: &ChainId, chain: &str, ops: &mut Vec<Op>) {
    for (_, rule) in jumps(t, id, chain) {
        ops.push(Op::Delete(id.hook.into(), rule));
    }
    if t.has(chain) {
        ops.push(Op::Flush(chain.into()));
        ops.push(Op::DeleteChain(chain.into()));
    }
}

/// The ops that make one chain of ours hold exactly `want.rules`, with exactly one
/// unconditional jump to it from its hook, in table `t` as read. None when it already
/// does.
fn sync_chain(t: &Table, want: &ChainRules) -> Result<Vec<Op>> {
    let id = &want.id;
    let mut ops = Vec::new();
    for r in &want.rules {
        if !rules::is_safe(r) {
            return Err(Error::internal(format!("refusing unsafe rule text {r:?}")));
        }
    }
    let current: Vec<String> = t.rules_of(id.chain).into_iter().map(|c| c.rule).collect();
    if !t.has(id.chain) || current != want.rules {
        // Creates the chain, or flushes it: refilled in the same commit.
        ops.push(Op::Chain(id.chain.into()));
        for r in &want.rules {
            ops.push(Op::Append(id.chain.into(), r.clone()));
        }
    }
    let ours = rules::jump(id.chain);
    let js = jumps(t, id, id.chain);
    let exact = js.iter().filter(|(_, r)| *r == ours).count();
    if exact == 0 {
        // At the top, or where someone else's conditional jump to our chain was, before
        // any deletion in this hook shifts the positions.
        let pos = js.first().map(|(p, _)| *p).unwrap_or(1);
        ops.push(Op::Insert(id.hook.into(), pos, ours.clone()));
    }
    for (_, r) in js.iter().filter(|(_, r)| *r != ours) {
        ops.push(Op::Delete(id.hook.into(), r.clone()));
    }
    for _ in 1..exact.max(1) {
        ops.push(Op::Delete(id.hook.into(), ours.clone()));
    }
    remove_chain(t, id, id.staging, &mut ops);
    Ok(ops)
}

/// Install `want` (all chains of one family): one read and at most one transaction
/// per table. Returns whether anything changed.
pub fn up(fw: &dyn Firewall, want: &[ChainRules]) -> Result<bool> {
    let mut changed = false;
    for table in TABLES {
        let t = fw.save(table)?;
        let mut ops = Vec::new();
        for c in want.iter().filter(|c| c.id.table == table) {
            ops.extend(sync_chain(&t, c)?);
        }
        if !ops.is_empty() {
            log::info!("updating the {table} table");
            fw.restore(table, &ops)?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Remove every chain of ours (and earlier versions' staging chains) and the jumps to
/// them: one transaction per table, nothing run where nothing of ours is. Keeps going
/// after a failure (a table that refuses the whole is retried one change at a time, so
/// everything else still goes); returns the errors.
pub fn down(fw: &dyn Firewall) -> Vec<Error> {
    let mut errors = Vec::new();
    // Reverse install order: stop NATing before stopping forwarding.
    for table in TABLES.iter().rev() {
        let t = match fw.save(table) {
            Ok(t) => t,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let per_chain: Vec<(&ChainId, Vec<Op>)> = CHAINS
            .iter()
            .filter(|id| id.table == *table)
            .map(|id| {
                let mut ops = Vec::new();
                for chain in [id.chain, id.staging] {
                    remove_chain(&t, id, chain, &mut ops);
                }
                (id, ops)
            })
            .filter(|(_, ops)| !ops.is_empty())
            .collect();
        let all: Vec<Op> = per_chain.iter().flat_map(|(_, o)| o.clone()).collect();
        if all.is_empty() || fw.restore(table, &all).is_ok() {
            continue;
        }
        // One op at a time, as far as each goes: jumps first, so nothing reaches a
        // chain being flushed.
        for (id, ops) in &per_chain {
            for op in ops {
                if let Err(e) = fw.restore(table, std::slice::from_ref(op)) {
                    errors.push(e.context(format!("removing {} {}", id.table, id.chain)));
                }
            }
        }
    }
    errors
}

/// Whether any chain of ours (or a staging one) exists; a jump to ours cannot exist
/// without it. Two listings, for probing a backend ve-nat does not use.
pub fn holds_ours(fw: &dyn Firewall) -> Result<bool> {
    for table in TABLES {
        let t = fw.save(table)?;
        if CHAINS
            .iter()
            .filter(|id| id.table == table)
            .any(|id| t.has(id.chain) || t.has(id.staging))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What is installed of ours for one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub id: ChainId,
    pub exists: bool,
    pub jumps: Vec<String>,
    pub rules: Vec<Counted>,
    pub staging_left: bool,
}

/// What is installed of ours, one entry per chain in `CHAINS` order: one listing per
/// table.
pub fn installed(fw: &dyn Firewall) -> Result<Vec<Installed>> {
    let mut tables = Vec::new();
    for table in TABLES {
        tables.push((table, fw.save(table)?));
    }
    Ok(CHAINS
        .iter()
        .map(|id| {
            let t = tables
                .iter()
                .find(|(name, _)| *name == id.table)
                .map(|(_, t)| t)
                .expect("every chain's table is listed");
            Installed {
                id: *id,
                exists: t.has(id.chain),
                jumps: jumps(t, id, id.chain).into_iter().map(|(_, r)| r).collect(),
                rules: t.rules_of(id.chain),
                staging_left: t.has(id.staging),
            }
        })
        .collect())
}

pub fn differences(have: &[Installed], want: Option<&[ChainRules]>) -> Vec<String> {
    let mut diffs = Vec::new();
    for h in have {
        let name = format!("{} {}", h.id.table, h.id.chain);
        if h.staging_left {
            diffs.push(format!("{name}: staging chain {} left over", h.id.staging));
        }
        let Some(want) = want else {
            if h.exists || !h.jumps.is_empty() {
                diffs.push(format!("{name}: installed but not wanted"));
            }
            continue;
        };
        let Some(w) = want.iter().find(|w| w.id == h.id) else {
            continue;
        };
        if !h.exists {
            diffs.push(format!("{name}: missing"));
            continue;
        }
        if h.jumps.len() != 1 || h.jumps[0] != rules::jump(h.id.chain) {
            diffs.push(format!(
                "{name}: {} jumps from {}, expected one",
                h.jumps.len(),
                h.id.hook
            ));
        }
        let current: Vec<&str> = h.rules.iter().map(|c| c.rule.as_str()).collect();
        let before = diffs.len();
        for r in &w.rules {
            if !current.contains(&r.as_str()) {
                diffs.push(format!("{name}: missing rule {r}"));
            }
        }
        for r in &current {
            if !w.rules.iter().any(|x| x == r) {
                diffs.push(format!("{name}: unexpected rule {r}"));
            }
        }
        if diffs.len() == before
            && current != w.rules.iter().map(String::as_str).collect::<Vec<_>>()
        {
            diffs.push(format!("{name}: rules in a different order"));
        }
    }
    diffs
}

#[cfg(test)]
pub mod fake {
    //! An in-memory firewall that applies a transaction as iptables-restore does: all
    //! of it or nothing, refusing what iptables refuses; it can check an invariant
    //! after every commit (the only states the kernel ever shows).

    use std::{cell::RefCell, collections::BTreeMap};

    use super::*;

    pub type Tables = BTreeMap<String, BTreeMap<String, Vec<String>>>;
    type Invariant = Box<dyn Fn(&Tables)>;

    pub struct Fake {
        pub tables: RefCell<Tables>,
        /// Every committed transaction, as restore lines.
        pub commits: RefCell<Vec<Vec<String>>>,
        /// Called after every commit with the tables; panics to fail a test.
        pub invariant: Option<Invariant>,
    }

    pub const BUILTIN: [(&str, &str); 5] = [
        ("nat", "PREROUTING"),
        ("nat", "POSTROUTING"),
        ("nat", "OUTPUT"),
        ("filter", "FORWARD"),
        ("filter", "INPUT"),
    ];

    impl Default for Fake {
        fn default() -> Self {
            Self::new()
        }
    }

    fn refused(what: &str) -> Error {
        Error::new(common::Kind::Os, what)
    }

    fn builtin(table: &str, chain: &str) -> bool {
        BUILTIN.contains(&(table, chain))
    }

    /// One op on one table, as iptables-restore --noflush applies it.
    fn apply(table: &str, tb: &mut BTreeMap<String, Vec<String>>, op: &Op) -> Result<()> {
        let chain = |tb: &mut BTreeMap<String, Vec<String>>, c: &str| {
            tb.get_mut(c)
                .map(|_| ())
                .ok_or_else(|| refused("No chain/target/match by that name."))
        };
        // A jump's target must exist.
        let target_ok = |tb: &BTreeMap<String, Vec<String>>, r: &str| {
            let toks: Vec<&str> = r.split(' ').collect();
            match toks.windows(2).find(|w| w[0] == "-j" || w[0] == "-g") {
                Some(w) if w[1].starts_with("ve-") && !tb.contains_key(w[1]) => {
                    Err(refused("Couldn't load target"))
                }
                _ => Ok(()),
            }
        };
        match op {
            Op::Chain(c) => {
                tb.entry(c.clone()).or_default().clear();
            }
            Op::Append(c, r) => {
                chain(tb, c)?;
                target_ok(tb, r)?;
                tb.get_mut(c).expect("checked").push(r.clone());
            }
            Op::Insert(c, pos, r) => {
                chain(tb, c)?;
                target_ok(tb, r)?;
                let rules = tb.get_mut(c).expect("checked");
                if *pos == 0 || *pos > rules.len() + 1 {
                    return Err(refused("Index of insertion too big."));
                }
                rules.insert(pos - 1, r.clone());
            }
            Op::Delete(c, r) => {
                chain(tb, c)?;
                let rules = tb.get_mut(c).expect("checked");
                let i = rules.iter().position(|x| x == r).ok_or_else(|| {
                    refused("Bad rule (does a matching rule exist in that chain?).")
                })?;
                rules.remove(i);
            }
            Op::Flush(c) => {
                chain(tb, c)?;
                tb.get_mut(c).expect("checked").clear();
            }
            Op::DeleteChain(c) => {
                chain(tb, c)?;
                let referenced = tb.values().flatten().any(|r| targets(r, c));
                if builtin(table, c) || referenced || !tb[c.as_str()].is_empty() {
                    return Err(refused("Directory not empty."));
                }
                tb.remove(c.as_str());
            }
        }
        Ok(())
    }

    impl Fake {
        pub fn new() -> Fake {
            let mut t = Tables::new();
            for (table, chain) in BUILTIN {
                t.entry(table.into())
                    .or_default()
                    .insert(chain.into(), vec![]);
            }
            Fake {
                tables: RefCell::new(t),
                commits: RefCell::new(vec![]),
                invariant: None,
            }
        }

        pub fn chain(&self, table: &str, chain: &str) -> Vec<String> {
            self.tables.borrow()[table]
                .get(chain)
                .cloned()
                .unwrap_or_default()
        }

        /// Change the tables by hand (another program, an earlier version's crash).
        pub fn edit(&self, f: impl FnOnce(&mut Tables)) {
            f(&mut self.tables.borrow_mut());
        }

        pub fn user_chains(&self, table: &str) -> Vec<String> {
            self.tables.borrow()[table]
                .keys()
                .filter(|c| !builtin(table, c))
                .cloned()
                .collect()
        }
    }

    impl Firewall for Fake {
        fn save(&self, table: &str) -> Result<Table> {
            let tables = self.tables.borrow();
            let tb = &tables[table];
            // Built-in chains first, as iptables-save lists them.
            let mut chains: Vec<String> =
                tb.keys().filter(|c| builtin(table, c)).cloned().collect();
            chains.extend(tb.keys().filter(|c| !builtin(table, c)).cloned());
            let rules = chains
                .iter()
                .flat_map(|c| {
                    tb[c.as_str()].iter().map(move |r| {
                        (
                            c.clone(),
                            Counted {
                                rule: r.clone(),
                                packets: 0,
                                bytes: 0,
                            },
                        )
                    })
                })
                .collect();
            Ok(Table { chains, rules })
        }

        fn restore(&self, table: &str, ops: &[Op]) -> Result<()> {
            let mut tb = self.tables.borrow()[table].clone();
            for op in ops {
                apply(table, &mut tb, op)?;
            }
            self.tables.borrow_mut().insert(table.into(), tb);
            self.commits
                .borrow_mut()
                .push(ops.iter().map(Op::line).collect());
            if let Some(inv) = &self.invariant {
                inv(&self.tables.borrow());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::Fake, *};
    use crate::config::{Family, Request};

    fn want(fwd: &[&str]) -> Vec<ChainRules> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let r = Request::new("up0", &[], &[], &[], &s(fwd), false, None).unwrap();
        rules::wanted(&r, Family::Ipv4)
    }

    fn by_hand(fw: &Fake, table: &str, ops: &[Op]) {
        fw.restore(table, ops).unwrap();
    }

    fn a(chain: &str, rule: &str) -> Op {
        Op::Append(chain.into(), rule.into())
    }

    #[test]
    fn up_is_idempotent_and_down_restores() {
        let fw = Fake::new();
        by_hand(&fw, "nat", &[a("POSTROUTING", "-o eth9 -j MASQUERADE")]);
        let before = fw.tables.borrow().clone();
        let w = want(&["tcp:8080:10.233.1.2:80"]);
        let n = fw.commits.borrow().len();
        assert!(up(&fw, &w).unwrap());
        assert_eq!(
            fw.commits.borrow().len() - n,
            2,
            "one transaction per table"
        );
        assert!(differences(&installed(&fw).unwrap(), Some(&w)).is_empty());
        let n = fw.commits.borrow().len();
        assert!(!up(&fw, &w).unwrap());
        assert_eq!(fw.commits.borrow().len(), n, "second up changed something");
        assert_eq!(fw.chain("nat", "POSTROUTING")[0], "-j ve-nat-post");
        assert_eq!(fw.chain("nat", "POSTROUTING")[1], "-o eth9 -j MASQUERADE");
        assert!(down(&fw).is_empty());
        assert_eq!(*fw.tables.borrow(), before);
        let n = fw.commits.borrow().len();
        assert!(down(&fw).is_empty(), "down twice");
        assert_eq!(
            fw.commits.borrow().len(),
            n,
            "down of nothing ran a transaction"
        );
        assert_eq!(
            differences(&installed(&fw).unwrap(), None),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_change_is_one_transaction_in_place_keeping_the_jumps() {
        let mut fw = Fake::new();
        up(&fw, &want(&["tcp:8080:10.233.1.2:80"])).unwrap();
        // Someone else's rule before our jump: the jump keeps its place after it.
        fw.edit(|t| {
            t.get_mut("nat")
                .unwrap()
                .get_mut("POSTROUTING")
                .unwrap()
                .insert(0, "-o eth9 -j MASQUERADE".into())
        });
        fw.invariant = Some(Box::new(|t| {
            for (hook, what) in [("POSTROUTING", "MASQUERADE"), ("PREROUTING", "DNAT")] {
                let ok = t["nat"][hook].iter().any(|r| {
                    r.strip_prefix("-j ")
                        .and_then(|c| t["nat"].get(c))
                        .is_some_and(|c| c.iter().any(|x| x.contains(what)))
                });
                assert!(ok, "no {what} reachable from {hook}");
            }
        }));
        let b = want(&["tcp:8080:10.233.1.2:80", "tcp:9090:10.233.1.3:90"]);
        let n = fw.commits.borrow().len();
        assert!(up(&fw, &b).unwrap());
        let commits = fw.commits.borrow()[n..].to_vec();
        assert_eq!(commits.len(), 2, "filter and nat changed: {commits:?}");
        assert!(
            commits.iter().flatten().all(|l| !l.contains("-new")),
            "{commits:?}"
        );
        // Our chains are refilled in place: no jump touched.
        assert!(
            commits
                .iter()
                .flatten()
                .all(|l| !l.starts_with("-I ") && !l.starts_with("-D ")),
            "{commits:?}"
        );
        assert!(differences(&installed(&fw).unwrap(), Some(&b)).is_empty());
        assert_eq!(
            fw.chain("nat", "POSTROUTING"),
            ["-o eth9 -j MASQUERADE", "-j ve-nat-post"]
        );
        assert_eq!(
            fw.user_chains("nat"),
            ["ve-nat-out", "ve-nat-post", "ve-nat-pre"]
        );
        // Only the table that differs is written.
        let c = want(&["tcp:8080:10.233.1.2:80", "udp:9090:10.233.1.3:90"]);
        let n = fw.commits.borrow().len();
        fw.edit(|t| {
            t.get_mut("filter").unwrap().insert(
                "ve-nat-fwd".into(),
                c.iter().find(|x| x.id == rules::FWD).unwrap().rules.clone(),
            );
        });
        up(&fw, &c).unwrap();
        let commits = fw.commits.borrow()[n..].to_vec();
        assert_eq!(commits.len(), 1);
        assert!(commits[0].iter().any(|l| l == ":ve-nat-pre - [0:0]"));
    }

    #[test]
    fn duplicate_and_foreign_jumps_and_leftovers_are_repaired() {
        let fw = Fake::new();
        let w = want(&[]);
        up(&fw, &w).unwrap();
        by_hand(&fw, "nat", &[a("POSTROUTING", "-j ve-nat-post")]);
        by_hand(&fw, "filter", &[Op::Chain("ve-nat-fwd-new".into())]);
        let d = differences(&installed(&fw).unwrap(), Some(&w));
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(up(&fw, &w).unwrap());
        assert!(differences(&installed(&fw).unwrap(), Some(&w)).is_empty());
        assert_eq!(fw.chain("nat", "POSTROUTING"), ["-j ve-nat-post"]);
        // Someone else's conditional jump to our chain instead of ours: ours takes its
        // place.
        by_hand(
            &fw,
            "nat",
            &[
                a("PREROUTING", "-i foo -j ACCEPT"),
                a("PREROUTING", "-i bar -j ve-nat-pre"),
                Op::Delete("PREROUTING".into(), "-j ve-nat-pre".into()),
            ],
        );
        assert!(up(&fw, &w).unwrap());
        assert_eq!(
            fw.chain("nat", "PREROUTING"),
            ["-i foo -j ACCEPT", "-j ve-nat-pre"]
        );
    }

    /// The reachable contents of `hook`'s ve-nat chains, in order.
    fn reachable(
        t: &std::collections::BTreeMap<String, Vec<String>>,
        hook: &str,
    ) -> Vec<Vec<String>> {
        t[hook]
            .iter()
            .filter_map(|r| r.strip_prefix("-j "))
            .filter(|c| c.starts_with("ve-nat-"))
            .map(|c| t[c].clone())
            .collect()
    }

    #[test]
    fn an_earlier_version_crashed_mid_swap_is_finished() {
        // Staging chains as earlier versions left them when killed: jumped (complete)
        // with the old chain already gone, and unjumped (maybe half full).
        let w = want(&["tcp:8080:10.233.1.2:80"]);
        let fw = Fake::new();
        up(&fw, &want(&[])).unwrap();
        by_hand(
            &fw,
            "nat",
            &[
                Op::Chain("ve-nat-pre-new".into()),
                a(
                    "ve-nat-pre-new",
                    "-i ve-+ -j MARK --set-xmark 0x2000/0x2000",
                ),
                Op::Insert("PREROUTING".into(), 1, "-j ve-nat-pre-new".into()),
                Op::Delete("PREROUTING".into(), "-j ve-nat-pre".into()),
                Op::Flush("ve-nat-pre".into()),
                Op::DeleteChain("ve-nat-pre".into()),
                Op::Chain("ve-nat-post-new".into()),
            ],
        );
        let d = differences(&installed(&fw).unwrap(), Some(&w));
        assert!(d.iter().any(|l| l.contains("staging")), "{d:?}");
        let mut fw = fw;
        fw.invariant = Some(Box::new(|t| {
            assert_eq!(reachable(&t["nat"], "PREROUTING").len(), 1, "{t:?}");
        }));
        assert!(up(&fw, &w).unwrap());
        assert!(differences(&installed(&fw).unwrap(), Some(&w)).is_empty());
        assert!(!fw.user_chains("nat").iter().any(|c| c.ends_with("-new")));
    }

    #[test]
    fn a_crash_after_any_commit_keeps_complete_sets_and_is_finished() {
        let a0 = want(&[]);
        let b = want(&["tcp:8080:10.233.1.2:80"]);
        let sets = |w: &[ChainRules]| -> Vec<(String, Vec<String>)> {
            w.iter()
                .filter(|c| c.id.table == "nat")
                .map(|c| (c.id.chain.to_string(), c.rules.clone()))
                .collect()
        };
        let (sa, sb) = (sets(&a0), sets(&b));
        for budget in 0..=2 {
            let mut fw = Fake::new();
            up(&fw, &a0).unwrap();
            let (sa, sb) = (sa.clone(), sb.clone());
            fw.invariant = Some(Box::new(move |t| {
                // Every nat chain of ours holds one of the complete sets.
                for (chain, _) in &sa {
                    let got = &t["nat"][chain.as_str()];
                    let ok = sa.iter().chain(&sb).any(|(c, r)| c == chain && r == got);
                    assert!(ok, "{chain} incomplete: {got:?}");
                }
            }));
            // The changing up, killed after `budget` commits.
            let killed = Stopper {
                fw: &fw,
                budget: std::cell::Cell::new(budget),
            };
            let r = up(&killed, &b);
            assert_eq!(r.is_err(), budget < 2, "budget {budget}");
            up(&fw, &b).unwrap();
            assert!(differences(&installed(&fw).unwrap(), Some(&b)).is_empty());
        }
    }

    #[test]
    fn a_refused_rule_changes_nothing() {
        // iptables refusing one rule of a transaction, fresh or changing.
        struct Refusing<'a>(&'a Fake);
        impl Firewall for Refusing<'_> {
            fn save(&self, t: &str) -> Result<Table> {
                self.0.save(t)
            }
            fn restore(&self, t: &str, ops: &[Op]) -> Result<()> {
                let mut ops = ops.to_vec();
                ops.push(a("no-such-chain", "-j ACCEPT"));
                self.0.restore(t, &ops)
            }
        }
        let fw = Fake::new();
        let before = fw.tables.borrow().clone();
        assert!(up(&Refusing(&fw), &want(&[])).is_err());
        assert_eq!(*fw.tables.borrow(), before, "a fresh chain was left");
        up(&fw, &want(&[])).unwrap();
        let installed = fw.tables.borrow().clone();
        assert!(up(&Refusing(&fw), &want(&["tcp:80:10.0.0.2:80"])).is_err());
        assert_eq!(*fw.tables.borrow(), installed, "a half change was left");
    }

    #[test]
    fn down_goes_on_change_by_change_when_a_table_refuses() {
        let fw = Fake::new();
        up(&fw, &want(&[])).unwrap();
        // Someone else's chain jumps to ve-nat-post: that chain cannot go, the others do.
        by_hand(
            &fw,
            "nat",
            &[Op::Chain("theirs".into()), a("theirs", "-j ve-nat-post")],
        );
        let errors = down(&fw);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("ve-nat-post"),
            "{}",
            errors[0]
        );
        let left = fw.user_chains("nat");
        assert_eq!(left, ["theirs", "ve-nat-post"]);
        assert!(fw.user_chains("filter").is_empty());
    }

    /// A firewall that dies (refuses every transaction) after `budget` commits, as an
    /// `up` killed at that moment would.
    struct Stopper<'a> {
        fw: &'a Fake,
        budget: std::cell::Cell<usize>,
    }

    impl Firewall for Stopper<'_> {
        fn save(&self, table: &str) -> Result<Table> {
            self.fw.save(table)
        }
        fn restore(&self, table: &str, ops: &[Op]) -> Result<()> {
            match self.budget.get() {
                0 => Err(Error::internal("killed")),
                n => {
                    self.budget.set(n - 1);
                    self.fw.restore(table, ops)
                }
            }
        }
    }

    #[test]
    fn check_reports_changed_rules() {
        let fw = Fake::new();
        up(&fw, &want(&[])).unwrap();
        let d = differences(
            &installed(&fw).unwrap(),
            Some(&want(&["tcp:80:10.0.0.2:80"])),
        );
        assert!(d.iter().any(|l| l.contains("missing rule")), "{d:?}");
        assert!(!differences(&installed(&fw).unwrap(), None).is_empty());
    }
}
