//! The firewall behind a small trait: one table is read with one `iptables-save -t
//! TABLE` and changed with one `iptables-restore --noflush` transaction (all of it or
//! nothing, in both backends); a fake one (in `apply`'s tests) checks the logic
//! without root.
//!
//! Backend choice: the binaries of the chosen backend (`iptables-nft-save`,
//! `iptables-legacy-restore`, their ip6 variants), or by default the system's
//! `iptables-save`/`iptables-restore` (Debian's update-alternatives links), resolved on
//! PATH beforehand.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::{Error, Kind, Result};

use crate::{config::Family, rules::Op};

/// What ve-nat needs from a firewall, for one address family.
pub trait Firewall {
    /// One table, as `iptables-save -c -t TABLE` lists it.
    fn save(&self, table: &str) -> Result<Table>;
    /// Apply `ops` to `table` in one transaction: every one of them, or none.
    fn restore(&self, table: &str, ops: &[Op]) -> Result<()>;
}

/// A rule with its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
}

/// One table's chains and rules, as listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Every chain, built-in and user-defined, in listing order.
    pub chains: Vec<String>,
    /// Every rule with the chain it is in, in order, without the `-A CHAIN ` prefix.
    pub rules: Vec<(String, Counted)>,
}

impl Table {
    pub fn has(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c == chain)
    }

    /// The rules of `chain`, in order.
    pub fn rules_of(&self, chain: &str) -> Vec<Counted> {
        self.rules
            .iter()
            .filter(|(c, _)| c == chain)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Parse `iptables-save [-c] -t TABLE` output (one table; comments and the `*`
    /// and `COMMIT` lines are skipped).
    pub fn parse(text: &str) -> Table {
        let mut t = Table::default();
        for line in text.lines() {
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split(' ').next() {
                    t.chains.push(name.to_string());
                }
                continue;
            }
            // `-c`: `[PACKETS:BYTES] -A CHAIN RULE`.
            let (counters, rest) = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
                Some((c, rest)) => (c.split_once(':'), rest),
                None => (None, line),
            };
            let Some(rest) = rest.strip_prefix("-A ") else {
                continue;
            };
            let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
            let (packets, bytes) = counters
                .and_then(|(p, b)| Some((p.parse().ok()?, b.parse().ok()?)))
                .unwrap_or((0, 0));
            t.rules.push((
                chain.to_string(),
                Counted {
                    rule: rule.to_string(),
                    packets,
                    bytes,
                },
            ));
        }
        t
    }
}

/// Which iptables backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// iptables-nft / ip6tables-nft (nf_tables kernel API)
    Nft,
    /// iptables-legacy / ip6tables-legacy (x_tables kernel API)
    Legacy,
}

/// The command stems to try for `family`, in order (`STEM-save`, `STEM-restore`).
/// Without `--backend`: the system's `iptables` (what update-alternatives points at, so
/// ve-nat shares a backend with the rest of the host's firewall), else whichever
/// backend is installed.
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

/// The real firewall of one family: its backend's `-save` and `-restore`.
pub struct Iptables {
    save: PathBuf,
    restore: PathBuf,
    /// `nf_tables` or `legacy`.
    pub kind: String,
    pub family: Family,
}

impl Iptables {
    /// Find the binaries for `family`. Exit 69 when none is installed. The backend of
    /// the system's default is asked (`--version`); a named one is known by its name.
    pub fn open(backend: Option<Backend>, family: Family) -> Result<Iptables> {
        let stems = candidates(backend, family);
        let found = stems.iter().find_map(|s| {
            let save = find_on_path(&format!("{s}-save"))?;
            let restore = find_on_path(&format!("{s}-restore"))?;
            Some((save, restore))
        });
        let (save, restore) = found.ok_or_else(|| {
            let names: Vec<String> = stems.iter().map(|s| format!("{s}-restore")).collect();
            Error::unavailable(format!(
                "{} not found on PATH: install the iptables package",
                names.join(" or ")
            ))
        })?;
        let kind = match backend {
            Some(Backend::Nft) => "nf_tables".to_string(),
            Some(Backend::Legacy) => "legacy".to_string(),
            None => probe(&restore)?,
        };
        log::debug!(
            "{family}: using {} and {} ({kind})",
            save.display(),
            restore.display()
        );
        Ok(Iptables {
            save,
            restore,
            kind,
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

    fn fail(&self, bin: &Path, what: &str, stderr: &[u8], input: Option<&str>) -> Error {
        let text = String::from_utf8_lossy(stderr);
        let kind = if text.contains("Permission denied") || text.contains("must be root") {
            // iptables reports a missing privilege only in its text (its exit status is
            // the same as for any other failure): this is the one place that reads it.
            Kind::Permission
        } else {
            Kind::Os
        };
        Error::new(
            kind,
            format!("{} {what}: {}", bin.display(), describe(&text, input)),
        )
    }
}

/// One line from what iptables-save/-restore said: its lines joined (without the usage
/// hint), and the line of `input` it names, if any (both backends and their errors
/// word it differently; this is for the message only).
fn describe(stderr: &str, input: Option<&str>) -> String {
    let said: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Try `"))
        .collect();
    let mut text = if said.is_empty() {
        "failed".to_string()
    } else {
        said.join(" ")
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let n = words.windows(2).find_map(|w| {
        let is_line = w[0].trim_end_matches(':') == "line";
        is_line
            .then(|| w[1].trim_end_matches(':').parse::<usize>().ok())
            .flatten()
    });
    if let Some(l) = n.and_then(|n| input?.lines().nth(n.checked_sub(1)?)) {
        text.push_str(&format!(" (at {l:?})"));
    }
    text
}

/// `nf_tables` or `legacy`, from `BIN --version`.
fn probe(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::unavailable(format!("running {}: {e}", bin.display())))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(Error::unavailable(format!(
            "{} --version failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(if version.contains("(nf_tables)") {
        "nf_tables"
    } else if version.contains("(legacy)") {
        "legacy"
    } else {
        "unknown"
    }
    .to_string())
}

impl Firewall for Iptables {
    fn save(&self, table: &str) -> Result<Table> {
        let what = format!("-c -t {table}");
        let out = Command::new(&self.save)
            .args(["-c", "-t", table])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::unavailable(format!("running {}: {e}", self.save.display())))?;
        if !out.status.success() {
            return Err(self.fail(&self.save, &what, &out.stderr, None));
        }
        Ok(Table::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    fn restore(&self, table: &str, ops: &[Op]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut input = format!("*{table}\n");
        for op in ops {
            input.push_str(&op.line());
            input.push('\n');
        }
        input.push_str("COMMIT\n");
        log::debug!("{} --noflush <<\n{input}", self.restore.display());
        let what = format!("--noflush ({table})");
        let mut child = Command::new(&self.restore)
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::unavailable(format!("running {}: {e}", self.restore.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A restore that dies early closes its stdin; its status says why.
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(format!("waiting for {}", self.restore.display()), e))?;
        if !out.status.success() {
            return Err(self.fail(&self.restore, &what, &out.stderr, Some(&input)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_output_is_parsed_with_counters() {
        let t = Table::parse(
            "# Generated by iptables-nft-save v1.8.9 (nf_tables)\n*nat\n\
             :PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [3:180]\n:ve-nat-post - [0:0]\n\
             [0:0] -A POSTROUTING -j ve-nat-post\n\
             [12:720] -A ve-nat-post -o up0 -m mark --mark 0x2000/0x2000 -j MASQUERADE\n\
             -A ve-nat-post -m comment --comment \"a b\" -j RETURN\nCOMMIT\n# Completed\n",
        );
        assert_eq!(t.chains, ["PREROUTING", "POSTROUTING", "ve-nat-post"]);
        assert!(t.has("ve-nat-post") && !t.has("ve-nat-pre"));
        let post = t.rules_of("ve-nat-post");
        assert_eq!(
            post[0].rule,
            "-o up0 -m mark --mark 0x2000/0x2000 -j MASQUERADE"
        );
        assert_eq!((post[0].packets, post[0].bytes), (12, 720));
        assert_eq!(post[1].rule, "-m comment --comment \"a b\" -j RETURN");
        assert_eq!(t.rules_of("POSTROUTING")[0].rule, "-j ve-nat-post");
    }

    #[test]
    fn errors_name_the_refused_line() {
        let input = "*nat\n-F a\n-X a\nCOMMIT\n";
        assert_eq!(
            describe(
                "iptables-nft-restore v1.8.9 (nf_tables): \nline 3: CHAIN_DEL failed (Device or resource busy): chain a\n",
                Some(input)
            ),
            "iptables-nft-restore v1.8.9 (nf_tables): line 3: CHAIN_DEL failed (Device or \
             resource busy): chain a (at \"-X a\")"
        );
        assert_eq!(
            describe("iptables-restore: line 3 failed\n", Some(input)),
            "iptables-restore: line 3 failed (at \"-X a\")"
        );
        assert_eq!(
            describe(
                "iptables-restore v1.8.9 (legacy): Couldn't load target `x':No such file\n\n\
                 Error occurred at line: 2\nTry `iptables-restore -h' for more information.\n",
                Some(input)
            ),
            "iptables-restore v1.8.9 (legacy): Couldn't load target `x':No such file Error \
             occurred at line: 2 (at \"-F a\")"
        );
        assert_eq!(describe("", None), "failed");
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
