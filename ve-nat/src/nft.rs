//! What the native nftables ruleset does to ve-nat's traffic, through the `nft` binary:
//! a forward chain with policy drop in a table of someone else's (firewalld, a
//! hand-written `inet filter`) drops container traffic whatever ve-nat's iptables rules
//! accept, because a packet must pass every base chain on a hook. And after `down` with
//! iptables-nft, the `nat`/`filter` tables iptables-nft made for ve-nat and that are now
//! empty. Reading is `nft -j list ruleset`; without `nft` installed both are skipped.

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

/// Whether rule `r` (a `rule` object) drops or rejects whatever reaches it: no match,
/// only statements such as counter or log, then drop or reject.
fn unconditional_drop(r: &Value) -> bool {
    let Some(expr) = r.get("expr").and_then(Value::as_array) else {
        return false;
    };
    let kind = |s: &Value| s.as_object().and_then(|m| m.keys().next().cloned());
    let kinds: Vec<String> = expr.iter().filter_map(kind).collect();
    kinds.last().is_some_and(|k| k == "drop" || k == "reject")
        && kinds
            .iter()
            .all(|k| matches!(k.as_str(), "counter" | "log" | "limit" | "drop" | "reject"))
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
        let final_drop = ruleset.iter().filter_map(|i| i.get("rule")).any(|r| {
            let g = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
            g("family") == s("family")
                && g("table") == s("table")
                && g("chain") == s("name")
                && unconditional_drop(r)
        });
        if s("policy") == "drop" || final_drop {
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

/// Delete `table` of `family` if it is empty (see `empty_table`). The ruleset is read
/// right before: the window in which another program could add a rule to the empty
/// table is the time between two `nft` calls.
pub fn remove_if_empty(family: Family, table: &str) -> Result<bool> {
    let Some(rs) = ruleset() else {
        return Ok(false);
    };
    let fam = nft_family(family);
    if !empty_table(&rs, fam, table) {
        return Ok(false);
    }
    let out = Command::new("nft")
        .args(["delete", "table", fam, table])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::unavailable(format!("running nft: {e}")))?;
    if !out.status.success() {
        return Err(Error::new(
            common::Kind::Os,
            format!(
                "nft delete table {fam} {table}: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            ),
        ));
    }
    log::info!("removed the empty table {fam} {table}");
    Ok(true)
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

/// After `down` with iptables-nft, in a table that stays (it holds someone else's
/// rules): delete the built-in chains among `hooks` that are left idle (see
/// `idle_builtin_chains`), so `nft list ruleset` is as before `up`.
pub fn remove_idle_builtin_chains(family: Family, table: &str, hooks: &[&str]) -> Result<()> {
    let Some(rs) = ruleset() else {
        return Ok(());
    };
    let fam = nft_family(family);
    for chain in idle_builtin_chains(&rs, fam, table) {
        if !hooks.contains(&chain.as_str()) {
            continue;
        }
        let out = Command::new("nft")
            .args(["delete", "chain", fam, table, &chain])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::unavailable(format!("running nft: {e}")))?;
        if !out.status.success() {
            return Err(Error::new(
                common::Kind::Os,
                format!(
                    "nft delete chain {fam} {table} {chain}: {}",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .next()
                        .unwrap_or("")
                ),
            ));
        }
        log::debug!("removed the idle chain {fam} {table} {chain}");
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
}
