//! The firewall behind a small trait: the real one drives iptables/ip6tables through
//! the `iptables` crate, a fake one (in `apply`'s tests) checks the logic without root.
//!
//! Backend choice: the crate's `iptables::new(ipv6)` always runs the binary named
//! `iptables` or `ip6tables` (Debian's update-alternatives link), but its `cmd` field
//! is public, so we set it to the binary of the chosen backend (`iptables-nft`,
//! `iptables-legacy`, or their ip6 variants), resolved on PATH beforehand.

use std::{path::PathBuf, process::Command};

use common::{Error, Kind, Result};

use crate::config::Family;

/// What ve-nat needs from a firewall, for one address family.
pub trait Firewall {
    /// Names of the user-defined chains of `table`.
    fn chains(&self, table: &str) -> Result<Vec<String>>;
    /// The rules of `chain`, without the `-A CHAIN ` prefix, with packet and byte
    /// counters.
    fn rules(&self, table: &str, chain: &str) -> Result<Vec<Counted>>;
    fn new_chain(&self, table: &str, chain: &str) -> Result<()>;
    fn append(&self, table: &str, chain: &str, rule: &str) -> Result<()>;
    /// Insert at 1-based `pos`.
    fn insert(&self, table: &str, chain: &str, rule: &str, pos: usize) -> Result<()>;
    /// Delete the first rule equal to `rule`.
    fn delete(&self, table: &str, chain: &str, rule: &str) -> Result<()>;
    fn flush(&self, table: &str, chain: &str) -> Result<()>;
    fn delete_chain(&self, table: &str, chain: &str) -> Result<()>;
    fn rename_chain(&self, table: &str, from: &str, to: &str) -> Result<()>;
}

/// A rule with its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Which iptables backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// iptables-nft / ip6tables-nft (nf_tables kernel API)
    Nft,
    /// iptables-legacy / ip6tables-legacy (x_tables kernel API)
    Legacy,
}

/// The binary names to try for `family`, in order. Without `--backend`: the system's
/// `iptables` (what update-alternatives points at, so ve-nat shares a backend with the
/// rest of the host's firewall), else whichever backend is installed.
fn candidates(backend: Option<Backend>, family: Family) -> &'static [&'static str] {
    match (backend, family) {
        (None, Family::Ipv4) => &["iptables", "iptables-nft", "iptables-legacy"],
        (None, Family::Ipv6) => &["ip6tables", "ip6tables-nft", "ip6tables-legacy"],
        (Some(Backend::Nft), Family::Ipv4) => &["iptables-nft"],
        (Some(Backend::Nft), Family::Ipv6) => &["ip6tables-nft"],
        (Some(Backend::Legacy), Family::Ipv4) => &["iptables-legacy"],
        (Some(Backend::Legacy), Family::Ipv6) => &["ip6tables-legacy"],
    }
}

fn find_on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// The real firewall of one family, through the `iptables` crate.
pub struct Iptables {
    ipt: iptables::IPTables,
    /// `nf_tables` or `legacy`, from `--version`.
    pub kind: String,
    pub family: Family,
}

impl Iptables {
    /// Find and probe the binary for `family`. Exit 69 when none is installed.
    pub fn open(backend: Option<Backend>, family: Family) -> Result<Iptables> {
        let names = candidates(backend, family);
        let path = names.iter().find_map(|n| find_on_path(n)).ok_or_else(|| {
            Error::unavailable(format!(
                "{} not found on PATH: install the iptables package",
                names.join(" or ")
            ))
        })?;
        let out = Command::new(&path)
            .arg("--version")
            .output()
            .map_err(|e| Error::unavailable(format!("running {}: {e}", path.display())))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(Error::unavailable(format!(
                "{} --version failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let kind = if version.contains("(nf_tables)") {
            "nf_tables"
        } else if version.contains("(legacy)") {
            "legacy"
        } else {
            "unknown"
        };
        match (backend, kind) {
            (Some(Backend::Nft), "nf_tables") | (Some(Backend::Legacy), "legacy") | (None, _) => {}
            (Some(b), _) => {
                return Err(Error::unavailable(format!(
                    "{} is not the {b:?} backend ({version})",
                    path.display()
                )))
            }
        }
        log::debug!("{family}: using {} ({version})", path.display());
        // The crate wants a 'static command name; one small string per process.
        let cmd: &'static str = Box::leak(path.to_string_lossy().into_owned().into_boxed_str());
        let mut ipt = iptables::IPTables {
            cmd,
            has_check: true,
            has_wait: true,
            is_numeric: true,
        };
        ipt.set_numeric(true);
        Ok(Iptables {
            ipt,
            kind: kind.to_string(),
            family,
        })
    }

    /// Like `open`, but `None` when the binary is simply not installed (for cleaning
    /// up a family the request does not use).
    pub fn open_optional(backend: Option<Backend>, family: Family) -> Result<Option<Iptables>> {
        match Iptables::open(backend, family) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == Kind::Unavailable => {
                log::debug!("{family}: {e}");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn fail(&self, what: String, err: Box<dyn std::error::Error>) -> Error {
        let text = match err.downcast_ref::<iptables::error::IptablesError>() {
            Some(e) => e.msg.trim().to_string(),
            None => err.to_string(),
        };
        let text = text.lines().next().unwrap_or("").to_string();
        // iptables reports a missing privilege only in its text (its exit status is
        // the same as for any other failure): this is the one place that reads it.
        let kind = if text.contains("Permission denied") || text.contains("must be root") {
            Kind::Permission
        } else {
            Kind::Os
        };
        Error::new(kind, format!("{} {what}: {text}", self.ipt.cmd))
    }
}

impl Firewall for Iptables {
    fn chains(&self, table: &str) -> Result<Vec<String>> {
        let out = self
            .ipt
            .execute(table, "-S")
            .map_err(|e| self.fail(format!("-t {table} -S"), e))?;
        if !out.status.success() {
            return Err(self.fail(
                format!("-t {table} -S"),
                Box::new(iptables::error::IptablesError::from(out)),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .map(|c| c.trim().to_string())
            .collect())
    }

    fn rules(&self, table: &str, chain: &str) -> Result<Vec<Counted>> {
        let what = format!("-t {table} -v -S {chain}");
        let out = self
            .ipt
            .execute(table, &format!("-v -S {chain}"))
            .map_err(|e| self.fail(what.clone(), e))?;
        if !out.status.success() {
            return Err(self.fail(what, Box::new(iptables::error::IptablesError::from(out))));
        }
        let prefix = format!("-A {chain} ");
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(parse_counted)
            .collect())
    }

    fn new_chain(&self, table: &str, chain: &str) -> Result<()> {
        self.ipt
            .new_chain(table, chain)
            .map_err(|e| self.fail(format!("-t {table} -N {chain}"), e))
    }

    fn append(&self, table: &str, chain: &str, rule: &str) -> Result<()> {
        self.ipt
            .append(table, chain, rule)
            .map_err(|e| self.fail(format!("-t {table} -A {chain} {rule}"), e))
    }

    fn insert(&self, table: &str, chain: &str, rule: &str, pos: usize) -> Result<()> {
        let p = i32::try_from(pos).map_err(|_| Error::internal("rule position out of range"))?;
        self.ipt
            .insert(table, chain, rule, p)
            .map_err(|e| self.fail(format!("-t {table} -I {chain} {pos} {rule}"), e))
    }

    fn delete(&self, table: &str, chain: &str, rule: &str) -> Result<()> {
        self.ipt
            .delete(table, chain, rule)
            .map_err(|e| self.fail(format!("-t {table} -D {chain} {rule}"), e))
    }

    fn flush(&self, table: &str, chain: &str) -> Result<()> {
        self.ipt
            .flush_chain(table, chain)
            .map_err(|e| self.fail(format!("-t {table} -F {chain}"), e))
    }

    fn delete_chain(&self, table: &str, chain: &str) -> Result<()> {
        self.ipt
            .delete_chain(table, chain)
            .map_err(|e| self.fail(format!("-t {table} -X {chain}"), e))
    }

    fn rename_chain(&self, table: &str, from: &str, to: &str) -> Result<()> {
        self.ipt
            .rename_chain(table, from, to)
            .map_err(|e| self.fail(format!("-t {table} -E {from} {to}"), e))
    }
}

/// `-v -S` puts `-c PACKETS BYTES` among a rule's arguments; take it out.
fn parse_counted(line: &str) -> Counted {
    let toks: Vec<&str> = line.split(' ').collect();
    if let Some(i) = toks.iter().position(|t| *t == "-c") {
        if let (Some(p), Some(b)) = (toks.get(i + 1), toks.get(i + 2)) {
            if let (Ok(packets), Ok(bytes)) = (p.parse(), b.parse()) {
                let mut rest = toks[..i].to_vec();
                rest.extend_from_slice(&toks[i + 3..]);
                return Counted {
                    rule: rest.join(" "),
                    packets,
                    bytes,
                };
            }
        }
    }
    Counted {
        rule: line.to_string(),
        packets: 0,
        bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_taken_out() {
        let c = parse_counted("-o up0 -m mark --mark 0x2000/0x2000 -c 12 720 -j MASQUERADE");
        assert_eq!(c.rule, "-o up0 -m mark --mark 0x2000/0x2000 -j MASQUERADE");
        assert_eq!((c.packets, c.bytes), (12, 720));
        let c = parse_counted("-c 0 0 -j ve-nat-pre");
        assert_eq!(c.rule, "-j ve-nat-pre");
    }

    #[test]
    fn backend_binaries() {
        assert_eq!(
            candidates(Some(Backend::Legacy), Family::Ipv6),
            ["ip6tables-legacy"]
        );
        assert_eq!(candidates(None, Family::Ipv4)[0], "iptables");
    }
}
