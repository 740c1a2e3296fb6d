//! What the native nftables ruleset does to ve-nat's traffic, through the `nft` binary:
//! a forward chain that drops (policy drop, or a final unconditional drop/reject) in a
//! table of someone else's (firewalld, a hand-written `inet filter`, iptables' own
//! `filter FORWARD` seen from the nftables backend) drops container traffic whatever
//! ve-nat's rules accept, because a packet must pass every base chain on a hook. And after
//! `down` with iptables-nft, the `nat`/`filter` tables (or built-in chains) iptables-nft
//! made for ve-nat and that are now empty. Reading is `nft -j list ruleset`; without `nft`
//! installed both are skipped.

use std::process::{Command, Stdio};

use common::{Error, Result};
use serde_json::Value;

use crate::config::Family;

/// The ruleset as `nft -j list ruleset` prints it, or `None` (with a debug note) when
/// `nft` is not installed or cannot list.
pub fn ruleset() -> Option<Vec<Value>> {
    let out = match Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            log::debug!("nft: {e}: not looking at the nftables ruleset");
            return None;
        }
    };
    if !out.status.success() {
        log::debug!(
            "nft -j list ruleset failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    // An empty ruleset prints nothing at all in some versions.
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Some(Vec::new());
    }
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(v) => Some(v["nftables"].as_array().cloned().unwrap_or_default()),
        Err(e) => {
            log::debug!("nft -j list ruleset: {e}");
            None
        }
    }
}

fn nft_family(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    }
}

/// A statement of a rule, as far as "drops whatever reaches it" goes: nft's listing
/// (`unconditional_drop`) and nf_tables' expressions (`nfnl`) both read into this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stmt {
    /// Counter, log, limit: changes no verdict.
    Passive,
    /// Drop or reject.
    Drop,
    /// Anything else: a match, another verdict.
    Other,
}

/// Whether a rule of `stmts` drops or rejects whatever reaches it: no match, only
/// passive statements, then drop or reject.
pub(crate) fn drops_all(stmts: &[Stmt]) -> bool {
    stmts.last() == Some(&Stmt::Drop) && stmts.iter().all(|s| *s != Stmt::Other)
}

/// Whether a base chain drops what reaches its end: policy drop, or any rule that drops
/// whatever reaches it (`drops_all`; the rules after it see nothing).
pub(crate) fn chain_drops(policy_drop: bool, mut rules: impl Iterator<Item = bool>) -> bool {
    policy_drop || rules.any(|r| r)
}

/// Whether rule `r` (a `rule` object) drops or rejects whatever reaches it.
fn unconditional_drop(r: &Value) -> bool {
    let Some(expr) = r.get("expr").and_then(Value::as_array) else {
        return false;
    };
    let kind = |s: &Value| s.as_object().and_then(|m| m.keys().next().cloned());
    let stmts: Vec<Stmt> = expr
        .iter()
        .filter_map(kind)
        .map(|k| match k.as_str() {
            "counter" | "log" | "limit" => Stmt::Passive,
            "drop" | "reject" => Stmt::Drop,
            _ => Stmt::Other,
        })
        .collect();
    drops_all(&stmts)
}

/// Forward base chains that drop what reaches their end (policy drop, or an
/// unconditional drop/reject rule), as `FAMILY TABLE CHAIN`, with `keep` choosing which.
fn forward_drops(ruleset: &[Value], keep: impl Fn(&str, &str, &str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for item in ruleset {
        let Some(c) = item.get("chain") else {
            continue;
        };
        let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
        if s("hook") != "forward" || !keep(s("family"), s("table"), s("name")) {
            continue;
        }
        let rules = ruleset.iter().filter_map(|i| i.get("rule")).filter(|r| {
            let g = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
            g("family") == s("family") && g("table") == s("table") && g("chain") == s("name")
        });
        if chain_drops(s("policy") == "drop", rules.map(unconditional_drop)) {
            out.push(format!("{} {} {}", s("family"), s("table"), s("name")));
        }
    }
    out
}

/// Forward base chains that drop (see `forward_drops`) and see the traffic of
/// `families`, as `FAMILY TABLE CHAIN`. With the iptables-nft backend, iptables-nft's
/// own `filter FORWARD` is left out: ve-nat's accept rules are in it. ve-nat's own
/// table is always left out.
pub fn dropping_forward_chains(
    ruleset: &[Value],
    families: &[Family],
    nft_backend: bool,
) -> Vec<String> {
    forward_drops(ruleset, |fam, table, name| {
        let ours = |f: Family| fam == nft_family(f) || fam == "inet";
        if !families.iter().any(|f| ours(*f)) {
            return false;
        }
        if fam == "inet" && table == crate::nft_table::TABLE {
            return false;
        }
        !(nft_backend && fam != "inet" && table == "filter" && name == "FORWARD")
    })
}

/// iptables(-nft)'s `filter FORWARD` chains (either family) that drop: where only the
/// iptables-nft backend can put accepts that count.
pub fn iptables_forward_drops(ruleset: &[Value]) -> Vec<String> {
    forward_drops(ruleset, |fam, table, name| {
        (fam == "ip" || fam == "ip6") && table == "filter" && name == "FORWARD"
    })
}

/// The built-in chains iptables-nft creates in its tables.
fn builtin(table: &str) -> &'static [&'static str] {
    match table {
        "filter" => &["INPUT", "FORWARD", "OUTPUT"],
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        _ => &[],
    }
}

/// Whether table `family name` exists and holds nothing but built-in chains with policy
/// accept: no rule, no other chain, no set or other object.
fn empty_table(ruleset: &[Value], family: &str, name: &str) -> bool {
    let mut seen = false;
    for item in ruleset {
        let Some((kind, v)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
        if s("family") != family {
            continue;
        }
        match kind.as_str() {
            "table" if s("name") == name => seen = true,
            "chain" if s("table") == name => {
                let base = v.get("hook").is_some();
                if !base || !builtin(name).contains(&s("name")) || s("policy") != "accept" {
                    return false;
                }
            }
            "metainfo" | "table" | "chain" => {}
            _ if s("table") == name => return false,
            _ => {}
        }
    }
    seen
}

/// The built-in chains of `table` that hold no rule and accept, as `nft -j` lists them:
/// the ones iptables-nft made only for ve-nat's jump (it creates a base chain at its
/// first rule). Such a chain filters nothing; deleting it changes no packet's fate.
fn idle_builtin_chains(ruleset: &[Value], family: &str, table: &str) -> Vec<String> {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut idle: Vec<String> = ruleset
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| s(c, "family") == family && s(c, "table") == table)
        .filter(|c| c.get("hook").is_some() && s(c, "policy") == "accept")
        .map(|c| s(c, "name"))
        .filter(|n| builtin(table).contains(&n.as_str()))
        .collect();
    for r in ruleset.iter().filter_map(|i| i.get("rule")) {
        if s(r, "family") == family && s(r, "table") == table {
            idle.retain(|c| *c != s(r, "chain"));
        }
    }
    idle
}

/// What `tidy` deletes: each of `tables` (with the built-in chains ve-nat hooked in
/// it) that is empty (see `empty_table`), and in a table that stays (it holds someone
/// else's rules) those hooked chains that are left idle (see `idle_builtin_chains`).
/// As `nft -f` lines.
fn tidy_lines(ruleset: &[Value], family: &str, tables: &[(&str, Vec<&str>)]) -> Vec<String> {
    let mut lines = Vec::new();
    for (table, hooks) in tables {
        if empty_table(ruleset, family, table) {
            lines.push(format!("delete table {family} {table}"));
            continue;
        }
        for chain in idle_builtin_chains(ruleset, family, table) {
            if hooks.contains(&chain.as_str()) {
                lines.push(format!("delete chain {family} {table} {chain}"));
            }
        }
    }
    lines
}

/// After `down` with iptables-nft: delete what iptables-nft made only for ve-nat (see
/// `tidy_lines`), so `nft list ruleset` is as before `up`. One read and one nft
/// transaction (each nf_tables commit that deletes costs 15-20 ms). The ruleset is read
/// right before: the window in which another program could add a rule to an empty
/// table is the time between two `nft` calls.
pub fn tidy(family: Family, tables: &[(&str, Vec<&str>)]) -> Result<()> {
    let Some(rs) = ruleset() else {
        return Ok(());
    };
    let lines = tidy_lines(&rs, nft_family(family), tables);
    if lines.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::unavailable(format!("running nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        // An nft that dies early closes its stdin; its status says why.
        let _ = stdin.write_all(lines.join("\n").as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("waiting for nft", e))?;
    if !out.status.success() {
        return Err(Error::new(
            common::Kind::Os,
            format!(
                "nft -f - ({}): {}",
                lines.join("; "),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            ),
        ));
    }
    for l in &lines {
        log::info!("{l} (left empty by down)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(text: &str) -> Vec<Value> {
        serde_json::from_str::<Value>(text).unwrap()["nftables"]
            .as_array()
            .unwrap()
            .clone()
    }

    #[test]
    fn drop_policies_and_empty_tables() {
        let r = rs(r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "nat", "handle": 1}},
            {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "handle": 2, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
            {"table": {"family": "ip", "name": "filter", "handle": 3}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 4, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 5, "expr": []}},
            {"table": {"family": "inet", "name": "filter", "handle": 6}},
            {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 7, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"table": {"family": "ip6", "name": "fw", "handle": 8}},
            {"chain": {"family": "ip6", "table": "fw", "name": "fwd", "handle": 9, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}
        ]}"#);
        assert_eq!(
            dropping_forward_chains(&r, &[Family::Ipv4], true),
            ["inet filter forward"]
        );
        assert_eq!(
            dropping_forward_chains(&r, &[Family::Ipv4, Family::Ipv6], false),
            ["ip filter FORWARD", "inet filter forward", "ip6 fw fwd"]
        );
        assert!(empty_table(&r, "ip", "nat"));
        assert!(!empty_table(&r, "ip", "filter"), "a rule and a drop policy");
        assert!(!empty_table(&r, "ip6", "nat"), "not there");
        let set = rs(r#"{"nftables": [{"table": {"family": "ip", "name": "nat"}},
            {"set": {"family": "ip", "table": "nat", "name": "s"}}]}"#);
        assert!(!empty_table(&set, "ip", "nat"));
        let other = rs(r#"{"nftables": [{"table": {"family": "ip", "name": "nat"}},
            {"chain": {"family": "ip", "table": "nat", "name": "mine"}}]}"#);
        assert!(!empty_table(&other, "ip", "nat"));
        let idle = rs(
            r#"{"nftables": [{"table": {"family": "ip", "name": "filter"}},
            {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "hook": "input", "policy": "accept"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "accept"}},
            {"chain": {"family": "ip", "table": "filter", "name": "OUTPUT", "hook": "output", "policy": "drop"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "expr": []}}]}"#,
        );
        assert_eq!(idle_builtin_chains(&idle, "ip", "filter"), ["INPUT"]);
        assert_eq!(
            tidy_lines(&idle, "ip", &[("filter", vec!["FORWARD", "INPUT"])]),
            ["delete chain ip filter INPUT"]
        );
        assert_eq!(
            tidy_lines(
                &r,
                "ip",
                &[("nat", vec!["PREROUTING"]), ("filter", vec!["INPUT"])]
            ),
            ["delete table ip nat"]
        );
    }

    #[test]
    fn final_drops_count_conditional_ones_do_not() {
        let r = rs(r#"{"nftables": [
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
            {"chain": {"family": "inet", "table": "fw", "name": "fwd", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "fw", "chain": "fwd", "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": null}]}},
            {"chain": {"family": "inet", "table": "fw2", "name": "fwd", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "fw2", "chain": "fwd", "expr": [{"reject": null}]}},
            {"chain": {"family": "inet", "table": "ve-nat", "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}
        ]}"#);
        assert_eq!(
            dropping_forward_chains(&r, &[Family::Ipv4], false),
            ["ip filter FORWARD", "inet fw2 fwd"]
        );
        assert_eq!(
            dropping_forward_chains(&r, &[Family::Ipv4], true),
            ["inet fw2 fwd"]
        );
        assert_eq!(iptables_forward_drops(&r), ["ip filter FORWARD"]);
    }

    #[test]
    fn a_drop_anywhere_in_a_chain_counts() {
        // `-A FORWARD -j DROP` then `-A FORWARD -i x -j ACCEPT`: the accept sees nothing.
        assert!(chain_drops(false, [false, true, false].into_iter()));
        assert!(chain_drops(true, std::iter::empty()));
        assert!(!chain_drops(false, [false, false].into_iter()));
        use Stmt::*;
        assert!(drops_all(&[Passive, Drop]) && drops_all(&[Drop]));
        assert!(!drops_all(&[Other, Drop]) && !drops_all(&[Passive]) && !drops_all(&[]));
    }
}
