//! Bringing a firewall to the wanted state (`up`), comparing (`check`), and removing
//! ours (`down`), over the `Firewall` trait.
//!
//! Replacing a chain's contents without a gap: the new contents are built in a staging
//! chain, a jump to it is inserted just before the old jump, the old jump and chain are
//! removed, and the staging chain is renamed to the real name (`-E`; a jump follows a
//! renamed chain in both backends). At every moment some complete set of our rules is
//! reachable, and when `up` returns there is exactly one jump per built-in chain.

use common::{Error, Result};

use crate::{
    firewall::{Counted, Firewall},
    rules::{self, ChainId, ChainRules, CHAINS},
};

/// Whether `rule` (as `-S` prints it, without `-A CHAIN`) jumps or goes to `chain`.
fn targets(rule: &str, chain: &str) -> bool {
    let toks: Vec<&str> = rule.split(' ').collect();
    toks.windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
}

/// The 1-based positions and texts of the rules in `id.hook` that lead to `chain`.
fn jumps(fw: &dyn Firewall, id: &ChainId, chain: &str) -> Result<Vec<(usize, String)>> {
    Ok(fw
        .rules(id.table, id.hook)?
        .into_iter()
        .enumerate()
        .filter(|(_, c)| targets(&c.rule, chain))
        .map(|(i, c)| (i + 1, c.rule))
        .collect())
}

/// Remove `chain` and every jump to it from `id.hook`. Gone already is fine.
fn remove_chain(fw: &dyn Firewall, id: &ChainId, chain: &str, exists: bool) -> Result<()> {
    for (_, rule) in jumps(fw, id, chain)? {
        fw.delete(id.table, id.hook, &rule)?;
    }
    if exists {
        fw.flush(id.table, chain)?;
        fw.delete_chain(id.table, chain)?;
    }
    Ok(())
}

fn fill(fw: &dyn Firewall, id: &ChainId, chain: &str, rules: &[String]) -> Result<()> {
    for r in rules {
        if !rules::is_safe(r) {
            return Err(Error::internal(format!("refusing unsafe rule text {r:?}")));
        }
        fw.append(id.table, chain, r)?;
    }
    Ok(())
}

/// Fill a chain that nothing jumps to yet; on failure remove it again, so a failed
/// `up` leaves no half-filled chain behind.
fn fill_new(fw: &dyn Firewall, id: &ChainId, chain: &str, rules: &[String]) -> Result<()> {
    fw.new_chain(id.table, chain)?;
    if let Err(e) = fill(fw, id, chain, rules) {
        if let Err(e2) = remove_chain(fw, id, chain, true) {
            log::warn!("removing {} {chain} after a failure: {e2}", id.table);
        }
        return Err(e);
    }
    Ok(())
}

/// Make one chain of ours hold exactly `want` with exactly one jump to it. Returns
/// whether anything changed.
pub fn sync_chain(fw: &dyn Firewall, want: &ChainRules) -> Result<bool> {
    let id = &want.id;
    let mut chains = fw.chains(id.table)?;
    let has = |chains: &[String], c: &str| chains.iter().any(|x| x == c);
    let mut changed = false;

    // A staging chain left by an interrupted `up`. A jump to it is inserted only once
    // it is full, so a jumped staging chain is complete, and it may be the only
    // complete set (the old chain already flushed): finish the swap, never removing the
    // staging chain's jump first. An unjumped one may be half full: nothing reaches it.
    if has(&chains, id.staging) {
        if jumps(fw, id, id.staging)?.is_empty() {
            remove_chain(fw, id, id.staging, true)?;
        } else {
            log::info!(
                "finishing an interrupted replacement of {} {}",
                id.table,
                id.chain
            );
            remove_chain(fw, id, id.chain, has(&chains, id.chain))?;
            fw.rename_chain(id.table, id.staging, id.chain)?;
        }
        chains = fw.chains(id.table)?;
        changed = true;
    }

    if !has(&chains, id.chain) {
        fill_new(fw, id, id.chain, &want.rules)?;
        fw.insert(id.table, id.hook, &rules::jump(id.chain), 1)?;
        return Ok(true);
    }

    let current: Vec<String> = fw
        .rules(id.table, id.chain)?
        .into_iter()
        .map(|c| c.rule)
        .collect();
    let js = jumps(fw, id, id.chain)?;
    if current == want.rules {
        let mut it = js.iter();
        match it.next() {
            None => {
                fw.insert(id.table, id.hook, &rules::jump(id.chain), 1)?;
                changed = true;
            }
            Some((_, first)) if *first != rules::jump(id.chain) => {
                // Someone else's conditional jump to our chain: put ours in its place.
                fw.insert(id.table, id.hook, &rules::jump(id.chain), js[0].0)?;
                fw.delete(id.table, id.hook, first)?;
                changed = true;
            }
            Some(_) => {}
        }
        for (_, extra) in it {
            fw.delete(id.table, id.hook, extra)?;
            changed = true;
        }
        return Ok(changed);
    }

    log::info!("replacing {} {}", id.table, id.chain);
    fill_new(fw, id, id.staging, &want.rules)?;
    let pos = js.first().map(|(p, _)| *p).unwrap_or(1);
    fw.insert(id.table, id.hook, &rules::jump(id.staging), pos)?;
    remove_chain(fw, id, id.chain, true)?;
    fw.rename_chain(id.table, id.staging, id.chain)?;
    Ok(true)
}

/// Install `want` (all chains of one family). Returns whether anything changed.
pub fn up(fw: &dyn Firewall, want: &[ChainRules]) -> Result<bool> {
    let mut changed = false;
    for c in want {
        changed |= sync_chain(fw, c)?;
    }
    Ok(changed)
}

/// Remove every chain of ours and the jumps to them, keeping going after a failure.
/// Returns the errors.
pub fn down(fw: &dyn Firewall) -> Vec<Error> {
    let mut errors = Vec::new();
    // Reverse install order: stop NATing before stopping forwarding.
    for id in CHAINS.iter().rev() {
        let chains = match fw.chains(id.table) {
            Ok(c) => c,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for chain in [id.chain, id.staging] {
            let exists = chains.iter().any(|c| c == chain);
            if let Err(e) = remove_chain(fw, id, chain, exists) {
                errors.push(e.context(format!("removing {} {chain}", id.table)));
            }
        }
    }
    errors
}

/// Whether any chain of ours (or a staging one) exists; a jump to ours cannot exist
/// without it. Two listings, for probing a backend ve-nat does not use.
pub fn holds_ours(fw: &dyn Firewall) -> Result<bool> {
    for table in [rules::NAT, rules::FILTER] {
        let chains = fw.chains(table)?;
        if CHAINS
            .iter()
            .filter(|id| id.table == table)
            .any(|id| chains.iter().any(|c| c == id.chain || c == id.staging))
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

pub fn installed(fw: &dyn Firewall) -> Result<Vec<Installed>> {
    let mut out = Vec::new();
    for id in CHAINS {
        let chains = fw.chains(id.table)?;
        let exists = chains.iter().any(|c| c == id.chain);
        let rules = if exists {
            fw.rules(id.table, id.chain)?
        } else {
            Vec::new()
        };
        let jumps = jumps(fw, &id, id.chain)?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        out.push(Installed {
            id,
            exists,
            jumps,
            rules,
            staging_left: chains.iter().any(|c| c == id.staging),
        });
    }
    Ok(out)
}

/// The differences between what is installed and `want` (`None`: nothing of ours
/// should be there), one line each; empty when they match.
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
    //! An in-memory firewall that behaves like iptables for the operations we use, and
    //! can check an invariant after every change.

    use std::{cell::RefCell, collections::BTreeMap};

    use super::*;

    type Tables = BTreeMap<String, BTreeMap<String, Vec<String>>>;
    type Invariant = Box<dyn Fn(&Tables)>;

    pub struct Fake {
        pub tables: RefCell<Tables>,
        pub ops: RefCell<Vec<String>>,
        /// Called after every change with the tables; panics to fail a test.
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
                ops: RefCell::new(vec![]),
                invariant: None,
            }
        }

        fn change(&self, op: String, f: impl FnOnce(&mut Tables) -> Result<()>) -> Result<()> {
            f(&mut self.tables.borrow_mut())?;
            self.ops.borrow_mut().push(op);
            if let Some(inv) = &self.invariant {
                inv(&self.tables.borrow());
            }
            Ok(())
        }

        pub fn chain(&self, table: &str, chain: &str) -> Vec<String> {
            self.tables.borrow()[table]
                .get(chain)
                .cloned()
                .unwrap_or_default()
        }
    }

    fn nochain() -> Error {
        Error::new(common::Kind::Os, "No chain/target/match by that name.")
    }

    impl Firewall for Fake {
        fn chains(&self, table: &str) -> Result<Vec<String>> {
            Ok(self.tables.borrow()[table]
                .keys()
                .filter(|c| !BUILTIN.contains(&(table, c.as_str())))
                .cloned()
                .collect())
        }
        fn rules(&self, table: &str, chain: &str) -> Result<Vec<Counted>> {
            let t = self.tables.borrow();
            let c = t[table].get(chain).ok_or_else(nochain)?;
            Ok(c.iter()
                .map(|r| Counted {
                    rule: r.clone(),
                    packets: 0,
                    bytes: 0,
                })
                .collect())
        }
        fn new_chain(&self, table: &str, chain: &str) -> Result<()> {
            self.change(format!("-N {chain}"), |t| {
                let tb = t.get_mut(table).unwrap();
                if tb.contains_key(chain) {
                    return Err(Error::new(common::Kind::Os, "Chain already exists."));
                }
                tb.insert(chain.into(), vec![]);
                Ok(())
            })
        }
        fn append(&self, table: &str, chain: &str, rule: &str) -> Result<()> {
            self.change(format!("-A {chain} {rule}"), |t| {
                t.get_mut(table)
                    .unwrap()
                    .get_mut(chain)
                    .ok_or_else(nochain)?
                    .push(rule.into());
                Ok(())
            })
        }
        fn insert(&self, table: &str, chain: &str, rule: &str, pos: usize) -> Result<()> {
            self.change(format!("-I {chain} {pos} {rule}"), |t| {
                let c = t
                    .get_mut(table)
                    .unwrap()
                    .get_mut(chain)
                    .ok_or_else(nochain)?;
                if pos == 0 || pos > c.len() + 1 {
                    return Err(Error::new(common::Kind::Os, "Index of insertion too big."));
                }
                c.insert(pos - 1, rule.into());
                Ok(())
            })
        }
        fn delete(&self, table: &str, chain: &str, rule: &str) -> Result<()> {
            self.change(format!("-D {chain} {rule}"), |t| {
                let c = t
                    .get_mut(table)
                    .unwrap()
                    .get_mut(chain)
                    .ok_or_else(nochain)?;
                let i = c.iter().position(|r| r == rule).ok_or_else(nochain)?;
                c.remove(i);
                Ok(())
            })
        }
        fn flush(&self, table: &str, chain: &str) -> Result<()> {
            self.change(format!("-F {chain}"), |t| {
                t.get_mut(table)
                    .unwrap()
                    .get_mut(chain)
                    .ok_or_else(nochain)?
                    .clear();
                Ok(())
            })
        }
        fn delete_chain(&self, table: &str, chain: &str) -> Result<()> {
            self.change(format!("-X {chain}"), |t| {
                let tb = t.get_mut(table).unwrap();
                let referenced = tb.values().flatten().any(|r| targets(r, chain));
                if referenced || !tb.get(chain).ok_or_else(nochain)?.is_empty() {
                    return Err(Error::new(common::Kind::Os, "Directory not empty."));
                }
                tb.remove(chain);
                Ok(())
            })
        }
        fn rename_chain(&self, table: &str, from: &str, to: &str) -> Result<()> {
            self.change(format!("-E {from} {to}"), |t| {
                let tb = t.get_mut(table).unwrap();
                let rules = tb.remove(from).ok_or_else(nochain)?;
                tb.insert(to.into(), rules);
                for c in tb.values_mut() {
                    for r in c.iter_mut() {
                        if targets(r, from) {
                            *r = r.replace(&format!("-j {from}"), &format!("-j {to}"));
                        }
                    }
                }
                Ok(())
            })
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

    #[test]
    fn up_is_idempotent_and_down_restores() {
        let fw = Fake::new();
        fw.append("nat", "POSTROUTING", "-o eth9 -j MASQUERADE")
            .unwrap();
        let before = fw.tables.borrow().clone();
        let w = want(&["tcp:8080:10.233.1.2:80"]);
        assert!(up(&fw, &w).unwrap());
        assert!(differences(&installed(&fw).unwrap(), Some(&w)).is_empty());
        let n = fw.ops.borrow().len();
        assert!(!up(&fw, &w).unwrap());
        assert_eq!(fw.ops.borrow().len(), n, "second up changed something");
        assert_eq!(fw.chain("nat", "POSTROUTING")[0], "-j ve-nat-post");
        assert_eq!(fw.chain("nat", "POSTROUTING")[1], "-o eth9 -j MASQUERADE");
        assert!(down(&fw).is_empty());
        assert_eq!(*fw.tables.borrow(), before);
        assert!(down(&fw).is_empty(), "down twice");
        assert_eq!(
            differences(&installed(&fw).unwrap(), None),
            Vec::<String>::new()
        );
    }

    #[test]
    fn replacing_never_leaves_a_gap_or_a_duplicate() {
        let mut fw = Fake::new();
        // Someone else's rule first in the hook: our jump must keep its place after it.
        fw.append("nat", "POSTROUTING", "-o eth9 -j MASQUERADE")
            .unwrap();
        let a = want(&["tcp:8080:10.233.1.2:80"]);
        up(&fw, &a).unwrap();
        fw.tables
            .borrow_mut()
            .get_mut("nat")
            .unwrap()
            .get_mut("POSTROUTING")
            .unwrap()
            .swap(0, 1);
        fw.invariant = Some(Box::new(|t| {
            // Reachable from POSTROUTING: some chain holding a masquerade rule.
            let post = &t["nat"]["POSTROUTING"];
            let ok = post.iter().any(|r| {
                r.strip_prefix("-j ")
                    .and_then(|c| t["nat"].get(c))
                    .is_some_and(|c| c.iter().any(|x| x.contains("MASQUERADE")))
            });
            assert!(ok, "no NAT reachable: {post:?}");
            let pre = &t["nat"]["PREROUTING"];
            let dnat = pre.iter().any(|r| {
                r.strip_prefix("-j ")
                    .and_then(|c| t["nat"].get(c))
                    .is_some_and(|c| c.iter().any(|x| x.contains("DNAT")))
            });
            assert!(dnat, "no DNAT reachable: {pre:?}");
        }));
        let b = want(&["tcp:8080:10.233.1.2:80", "tcp:9090:10.233.1.3:90"]);
        assert!(up(&fw, &b).unwrap());
        assert!(differences(&installed(&fw).unwrap(), Some(&b)).is_empty());
        assert_eq!(
            fw.chain("nat", "POSTROUTING"),
            ["-o eth9 -j MASQUERADE", "-j ve-nat-post"]
        );
        assert!(fw
            .ops
            .borrow()
            .iter()
            .any(|o| o.starts_with("-E ve-nat-pre-new")));
        let ve = fw.chains("nat").unwrap();
        assert_eq!(ve, ["ve-nat-out", "ve-nat-post", "ve-nat-pre"]);
    }

    #[test]
    fn duplicate_jumps_and_leftovers_are_repaired() {
        let fw = Fake::new();
        let w = want(&[]);
        up(&fw, &w).unwrap();
        fw.append("nat", "POSTROUTING", "-j ve-nat-post").unwrap();
        fw.new_chain("filter", "ve-nat-fwd-new").unwrap();
        let d = differences(&installed(&fw).unwrap(), Some(&w));
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(up(&fw, &w).unwrap());
        assert!(differences(&installed(&fw).unwrap(), Some(&w)).is_empty());
        // A crash after the old chain went but before the rename.
        fw.delete("nat", "PREROUTING", "-j ve-nat-pre").unwrap();
        fw.rename_chain("nat", "ve-nat-pre", "ve-nat-pre-new")
            .unwrap();
        fw.insert("nat", "PREROUTING", "-j ve-nat-pre-new", 1)
            .unwrap();
        assert!(up(&fw, &w).unwrap());
        assert!(differences(&installed(&fw).unwrap(), Some(&w)).is_empty());
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
    fn recovery_after_a_crash_at_every_step_keeps_a_complete_set() {
        let a = want(&[]);
        let b = want(&["tcp:8080:10.233.1.2:80"]);
        let pre = |w: &[ChainRules]| {
            w.iter()
                .find(|c| c.id.chain == "ve-nat-pre")
                .unwrap()
                .rules
                .clone()
        };
        let (pa, pb) = (pre(&a), pre(&b));
        // How many changes a changing `up` (a -> b) makes.
        let steps = {
            let fw = Fake::new();
            up(&fw, &a).unwrap();
            let n = fw.ops.borrow().len();
            up(&fw, &b).unwrap();
            let m = fw.ops.borrow().len();
            m - n
        };
        assert!(steps > 10, "{steps}");
        for budget in 0..steps {
            let mut fw = Fake::new();
            up(&fw, &a).unwrap();
            // The changing up, killed after `budget` changes.
            let killed = Stopper {
                fw: &fw,
                budget: std::cell::Cell::new(budget),
            };
            assert!(up(&killed, &b).is_err());
            // The next up, with PREROUTING reaching a complete set at every step.
            let (pa2, pb2) = (pa.clone(), pb.clone());
            fw.invariant = Some(Box::new(move |t| {
                let r = reachable(&t["nat"], "PREROUTING");
                assert!(
                    !r.is_empty() && r.iter().all(|c| *c == pa2 || *c == pb2),
                    "incomplete after a kill at step {budget}: {r:?}"
                );
            }));
            up(&fw, &b).unwrap();
            assert!(differences(&installed(&fw).unwrap(), Some(&b)).is_empty());
            assert!(!fw
                .chains("nat")
                .unwrap()
                .iter()
                .any(|c| c.ends_with("-new")));
        }
    }

    #[test]
    fn a_refused_rule_leaves_no_chain_behind() {
        // iptables refusing the second rule of a chain being built, fresh or staged.
        struct Refusing<'a>(&'a Fake);
        impl Firewall for Refusing<'_> {
            fn chains(&self, t: &str) -> Result<Vec<String>> {
                self.0.chains(t)
            }
            fn rules(&self, t: &str, c: &str) -> Result<Vec<crate::firewall::Counted>> {
                self.0.rules(t, c)
            }
            fn new_chain(&self, t: &str, c: &str) -> Result<()> {
                self.0.new_chain(t, c)
            }
            fn append(&self, t: &str, c: &str, r: &str) -> Result<()> {
                if !self.0.chain(t, c).is_empty() {
                    return Err(Error::new(common::Kind::Os, "refused"));
                }
                self.0.append(t, c, r)
            }
            fn insert(&self, t: &str, c: &str, r: &str, p: usize) -> Result<()> {
                self.0.insert(t, c, r, p)
            }
            fn delete(&self, t: &str, c: &str, r: &str) -> Result<()> {
                self.0.delete(t, c, r)
            }
            fn flush(&self, t: &str, c: &str) -> Result<()> {
                self.0.flush(t, c)
            }
            fn delete_chain(&self, t: &str, c: &str) -> Result<()> {
                self.0.delete_chain(t, c)
            }
            fn rename_chain(&self, t: &str, f: &str, to: &str) -> Result<()> {
                self.0.rename_chain(t, f, to)
            }
        }
        let fw = Fake::new();
        let before = fw.tables.borrow().clone();
        assert!(up(&Refusing(&fw), &want(&[])).is_err());
        assert_eq!(*fw.tables.borrow(), before, "a fresh chain was left");
        up(&fw, &want(&[])).unwrap();
        let installed = fw.tables.borrow().clone();
        assert!(up(&Refusing(&fw), &want(&["tcp:80:10.0.0.2:80"])).is_err());
        assert_eq!(*fw.tables.borrow(), installed, "a staging chain was left");
    }

    /// A firewall that dies (refuses every change) after `budget` changes, as an `up`
    /// killed at that moment would.
    struct Stopper<'a> {
        fw: &'a Fake,
        budget: std::cell::Cell<usize>,
    }

    impl Stopper<'_> {
        fn go(&self) -> Result<()> {
            match self.budget.get() {
                0 => Err(Error::internal("killed")),
                n => {
                    self.budget.set(n - 1);
                    Ok(())
                }
            }
        }
    }

    impl Firewall for Stopper<'_> {
        fn chains(&self, table: &str) -> Result<Vec<String>> {
            self.fw.chains(table)
        }
        fn rules(&self, table: &str, chain: &str) -> Result<Vec<crate::firewall::Counted>> {
            self.fw.rules(table, chain)
        }
        fn new_chain(&self, table: &str, chain: &str) -> Result<()> {
            self.go()?;
            self.fw.new_chain(table, chain)
        }
        fn append(&self, table: &str, chain: &str, rule: &str) -> Result<()> {
            self.go()?;
            self.fw.append(table, chain, rule)
        }
        fn insert(&self, table: &str, chain: &str, rule: &str, pos: usize) -> Result<()> {
            self.go()?;
            self.fw.insert(table, chain, rule, pos)
        }
        fn delete(&self, table: &str, chain: &str, rule: &str) -> Result<()> {
            self.go()?;
            self.fw.delete(table, chain, rule)
        }
        fn flush(&self, table: &str, chain: &str) -> Result<()> {
            self.go()?;
            self.fw.flush(table, chain)
        }
        fn delete_chain(&self, table: &str, chain: &str) -> Result<()> {
            self.go()?;
            self.fw.delete_chain(table, chain)
        }
        fn rename_chain(&self, table: &str, from: &str, to: &str) -> Result<()> {
            self.go()?;
            self.fw.rename_chain(table, from, to)
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
