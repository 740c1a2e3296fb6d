//! The native nftables backend: table `inet ve-nat` (built in `nft_table`) written,
//! compared, shown and deleted through the `nft` binary's JSON interface.
//!
//! Replacing: one `nft -j -f -` batch `add table; delete table; add table, maps, sets,
//! chains, rules`. nft sends a batch as one netlink transaction, which the kernel
//! commits at once or not at all: there is no moment without a complete table, and no
//! staging chain. The leading `add table` makes `delete` succeed when the table is not
//! there yet.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use common::{Error, Kind, Result};
use nftables::{
    batch::Batch,
    schema::{NfListObject, Table},
    types::NfFamily,
};
use serde_json::Value;

use crate::{config::Request, nft_table};

/// Exit 69 unless `nft` is on PATH (a file lookup, no process).
pub fn installed() -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("nft").is_file()));
    if found {
        Ok(())
    } else {
        Err(Error::unavailable(
            "nft not found on PATH: install the nftables package",
        ))
    }
}

/// Run `nft ARGS` (with `input` on stdin) and return its stdout.
pub fn nft(args: &[&str], input: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::unavailable("nft not found on PATH: install the nftables package")
        } else {
            Error::unavailable(format!("running nft: {e}"))
        }
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| Error::io("writing to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("waiting for nft", e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(Error::new(
            Kind::Os,
            format!("nft {}: {}", args.join(" "), first.trim()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The whole ruleset as `nft -j list ruleset` prints it (its `nftables` array).
pub fn ruleset() -> Result<Vec<Value>> {
    parse_ruleset(&nft(&["-j", "list", "ruleset"], None)?)
}

fn table() -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::INet,
        name: nft_table::TABLE.into(),
        handle: None,
    })
}

/// Whether `ruleset` holds our table.
pub fn present(ruleset: &[Value]) -> bool {
    !nft_table::ours(ruleset).is_empty()
}

/// Bring our table to what `req` wants, in one transaction, unless it is exactly that
/// already (then nothing is written, and counters keep counting). Returns whether it
/// changed.
pub fn up(req: &Request, ruleset: &[Value]) -> Result<bool> {
    let want = nft_table::wanted(req);
    if nft_table::same(&nft_table::ours(ruleset), &nft_table::wanted_values(&want)) {
        return Ok(false);
    }
    let mut batch = Batch::new();
    batch.add(table());
    batch.delete(table());
    for o in want {
        batch.add(o);
    }
    let text = serde_json::to_string(&batch.to_nftables())
        .map_err(|e| Error::internal(format!("writing nft's JSON: {e}")))?;
    nft(&["-j", "-f", "-"], Some(&text)).map_err(|e| e.context("replacing table inet ve-nat"))?;
    Ok(true)
}

/// Delete our table (gone already is success). Returns whether it was there.
pub fn down(ruleset: &[Value]) -> Result<bool> {
    if !present(ruleset) {
        return Ok(false);
    }
    nft(&["delete", "table", "inet", nft_table::TABLE], None)?;
    Ok(true)
}

/// Delete our table (gone already is success), without a look at the ruleset first:
/// the leading `add table` makes `delete` succeed when it is not there. Returns `true`
/// (nft cannot say whether it was).
pub fn delete() -> Result<bool> {
    let table = serde_json::json!({"family": "inet", "name": nft_table::TABLE});
    let batch = serde_json::json!({"nftables": [
        {"add": {"table": table}},
        {"delete": {"table": table}},
    ]});
    nft(&["-j", "-f", "-"], Some(&batch.to_string()))
        .map_err(|e| e.context("deleting table inet ve-nat"))?;
    Ok(true)
}

fn parse_ruleset(text: &str) -> Result<Vec<Value>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::internal(format!("reading nft's JSON: {e}")))?;
    Ok(v["nftables"].as_array().cloned().unwrap_or_default())
}

/// How our table differs from `req` (`None`: it should not be there), one line each.
pub fn differences(req: Option<&Request>, ruleset: &[Value]) -> Vec<String> {
    let have = nft_table::ours(ruleset);
    let Some(req) = req else {
        return if have.is_empty() {
            Vec::new()
        } else {
            vec!["table inet ve-nat: installed but not wanted".into()]
        };
    };
    if have.is_empty() {
        return vec!["table inet ve-nat: missing".into()];
    }
    let want = nft_table::wanted_values(&nft_table::wanted(req));
    let mut diffs = Vec::new();
    for w in &want {
        if !have.contains(w) {
            diffs.push(format!(
                "table inet ve-nat: {} missing or different",
                nft_table::describe(w)
            ));
        }
    }
    for h in &have {
        if !want.contains(h) {
            diffs.push(format!(
                "table inet ve-nat: unexpected {}",
                nft_table::describe(h)
            ));
        }
    }
    if diffs.is_empty() && !nft_table::same(&have, &want) {
        diffs.push("table inet ve-nat: rules in a different order".into());
    }
    diffs
}

/// One rule of ours with its counters, from `nft list table inet ve-nat`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleLine {
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
}

/// One chain or map of ours, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Part {
    /// `chain` or `map` or `set`
    pub kind: String,
    pub name: String,
    /// A chain's `type ... hook ... priority ...; policy ...;` line
    pub head: String,
    pub rules: Vec<RuleLine>,
    /// A map's or set's elements, as nft prints them
    pub elements: Vec<String>,
}

/// Our table as `nft list table inet ve-nat` shows it, or `None` when it is not there.
pub fn listing() -> Result<Option<Vec<Part>>> {
    let rs = ruleset()?;
    if !present(&rs) {
        return Ok(None);
    }
    let text = nft(&["list", "table", "inet", nft_table::TABLE], None)?;
    Ok(Some(parse_listing(&text)))
}

/// Parse nft's text listing of one table into its chains, maps and sets.
fn parse_listing(text: &str) -> Vec<Part> {
    let mut parts: Vec<Part> = Vec::new();
    let mut in_elements = false;
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = ["chain ", "map ", "set "]
            .iter()
            .find_map(|k| l.strip_prefix(k).map(|r| (k.trim(), r)))
        {
            let (kind, rest) = rest;
            parts.push(Part {
                kind: kind.into(),
                name: rest.trim_end_matches('{').trim().to_string(),
                head: String::new(),
                rules: Vec::new(),
                elements: Vec::new(),
            });
            in_elements = false;
            continue;
        }
        let Some(p) = parts.last_mut() else {
            continue;
        };
        if l == "}" || l.is_empty() || l.starts_with("table ") {
            in_elements = false;
            continue;
        }
        if p.kind == "chain" {
            if l.starts_with("type ") {
                p.head = l.to_string();
            } else {
                p.rules.push(counted(l));
            }
            continue;
        }
        let body = if let Some(e) = l.strip_prefix("elements = {") {
            in_elements = true;
            e
        } else if in_elements {
            l
        } else {
            if p.head.is_empty() {
                p.head = l.to_string();
            }
            continue;
        };
        let body = match body.strip_suffix('}') {
            Some(b) => {
                in_elements = false;
                b
            }
            None => body,
        };
        p.elements.extend(
            body.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(String::from),
        );
    }
    parts
}

/// `... counter packets N bytes M ...`: the counters taken out of the rule text.
fn counted(line: &str) -> RuleLine {
    let toks: Vec<&str> = line.split(' ').collect();
    if let Some(i) = toks.windows(5).position(|w| {
        w[0] == "counter"
            && w[1] == "packets"
            && w[3] == "bytes"
            && w[2].parse::<u64>().is_ok()
            && w[4].parse::<u64>().is_ok()
    }) {
        let mut rest = toks[..i].to_vec();
        rest.extend_from_slice(&toks[i + 5..]);
        return RuleLine {
            rule: rest.join(" "),
            packets: toks[i + 2].parse().unwrap_or(0),
            bytes: toks[i + 4].parse().unwrap_or(0),
        };
    }
    RuleLine {
        rule: line.to_string(),
        packets: 0,
        bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_is_parsed() {
        let text = "table inet ve-nat {
	map fwd4 {
		type inet_proto . inet_service : ipv4_addr . inet_service
		elements = { tcp . 8080 : 10.233.1.2 . 80,
			     udp . 53 : 10.233.1.2 . 53 }
	}

	set dst6 {
		type inet_proto . ipv6_addr . inet_service
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname \"ve-*\" oifname \"up0\" counter packets 12 bytes 720 accept
	}
}
";
        let p = parse_listing(text);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].kind, "map");
        assert_eq!(
            p[0].elements,
            ["tcp . 8080 : 10.233.1.2 . 80", "udp . 53 : 10.233.1.2 . 53"]
        );
        assert!(p[1].elements.is_empty());
        assert_eq!(p[2].name, "forward");
        assert_eq!(
            p[2].rules,
            [RuleLine {
                rule: "iifname \"ve-*\" oifname \"up0\" accept".into(),
                packets: 12,
                bytes: 720
            }]
        );
        assert!(p[2].head.starts_with("type filter hook forward"));
    }
}
