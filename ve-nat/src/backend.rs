//! Which backend writes the rules: `--backend` and what `auto` (the default) picks.
//!
//! `auto` picks native nftables unless the host's firewall says otherwise:
//! 1. iptables-legacy rules in use (a legacy table in this namespace with a rule or a
//!    non-ACCEPT policy): iptables-legacy. Both APIs apply; ours go where the host's are.
//! 2. no `nft` binary: the system's `iptables` (whichever backend it is).
//! 3. an iptables(-nft) FORWARD chain that drops (policy DROP or a final DROP/REJECT, as
//!    Docker's `iptables -P FORWARD DROP`): iptables-nft, which puts ve-nat's accepts
//!    into that chain. A drop in another table cannot be overridden from our own table.
//! 4. otherwise: nftables.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::{firewall, nft};

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendName {
    /// nftables unless iptables-legacy rules are in use, nft is missing, or an iptables
    /// FORWARD chain drops (then that iptables backend)
    Auto,
    /// Native nftables: one table, inet ve-nat, replaced in one transaction
    Nftables,
    /// iptables-nft / ip6tables-nft (nf_tables kernel API)
    #[value(alias = "nft")]
    IptablesNft,
    /// iptables-legacy / ip6tables-legacy (x_tables kernel API)
    #[value(alias = "legacy")]
    IptablesLegacy,
}

/// A resolved backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    Nftables,
    /// `None`: the system's `iptables`, whichever backend it is.
    Iptables(Option<firewall::Backend>),
}

/// What `auto` looks at, gathered by `Facts::read`.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub nft_installed: bool,
    pub legacy_in_use: bool,
    /// iptables-nft's `filter FORWARD` chains that drop.
    pub iptables_forward_drops: Vec<String>,
}

impl Facts {
    /// Read the facts; `ruleset` is `nft -j list ruleset` (`None`: nft is not there).
    pub fn read(ruleset: Option<&[Value]>) -> Facts {
        Facts {
            nft_installed: ruleset.is_some(),
            legacy_in_use: legacy_in_use(),
            iptables_forward_drops: ruleset.map(nft::iptables_forward_drops).unwrap_or_default(),
        }
    }
}

/// `auto`'s decision, with the reason for the log.
pub fn pick(f: &Facts) -> (Chosen, String) {
    if f.legacy_in_use {
        return (
            Chosen::Iptables(Some(firewall::Backend::Legacy)),
            "iptables-legacy rules are in use".into(),
        );
    }
    if !f.nft_installed {
        return (Chosen::Iptables(None), "nft is not installed".into());
    }
    if let Some(c) = f.iptables_forward_drops.first() {
        return (
            Chosen::Iptables(Some(firewall::Backend::Nft)),
            format!("the iptables chain {c} drops (ve-nat's accepts go there)"),
        );
    }
    (Chosen::Nftables, "no iptables rules in the way".into())
}

impl BackendName {
    /// The explicit choice, or `None` for `auto`.
    pub fn explicit(self) -> Option<Chosen> {
        match self {
            BackendName::Auto => None,
            BackendName::Nftables => Some(Chosen::Nftables),
            BackendName::IptablesNft => Some(Chosen::Iptables(Some(firewall::Backend::Nft))),
            BackendName::IptablesLegacy => Some(Chosen::Iptables(Some(firewall::Backend::Legacy))),
        }
    }
}

/// Whether this namespace has an iptables-legacy table with a rule or a policy other
/// than ACCEPT. The kernel lists legacy tables in /proc/net/ip*_tables_names only
/// once something loaded them; the save program is run only then (listing would load
/// the x_tables modules and create the tables).
pub fn legacy_in_use() -> bool {
    for (names, save) in [
        ("/proc/net/ip_tables_names", "iptables-legacy-save"),
        ("/proc/net/ip6_tables_names", "ip6tables-legacy-save"),
    ] {
        let listed = std::fs::read_to_string(names).unwrap_or_default();
        if listed.trim().is_empty() {
            continue;
        }
        let out = match Command::new(save)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => o.stdout,
            Ok(_) | Err(_) => {
                log::debug!("{names} lists tables, but {save} cannot show them");
                continue;
            }
        };
        if saved_rules_in_use(&String::from_utf8_lossy(&out)) {
            return true;
        }
    }
    false
}

/// `*-save` output with a rule or a built-in chain policy other than ACCEPT.
fn saved_rules_in_use(text: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("-A ")
            || (l.starts_with(':') && {
                let policy = l.split(' ').nth(1).unwrap_or("-");
                policy != "ACCEPT" && policy != "-"
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_decides_in_order() {
        let mut f = Facts {
            nft_installed: true,
            ..Facts::default()
        };
        assert_eq!(pick(&f).0, Chosen::Nftables);
        f.iptables_forward_drops = vec!["ip filter FORWARD".into()];
        assert_eq!(pick(&f).0, Chosen::Iptables(Some(firewall::Backend::Nft)));
        f.legacy_in_use = true;
        assert_eq!(
            pick(&f).0,
            Chosen::Iptables(Some(firewall::Backend::Legacy))
        );
        let none = Facts::default();
        assert_eq!(pick(&none).0, Chosen::Iptables(None));
    }

    #[test]
    fn legacy_save_output() {
        let empty = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n";
        assert!(!saved_rules_in_use(empty));
        assert!(saved_rules_in_use(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\nCOMMIT\n"
        ));
        assert!(saved_rules_in_use("*nat\n:x - [0:0]\n-A x -j RETURN\n"));
        assert!(!saved_rules_in_use("*nat\n:x - [0:0]\n"));
    }

    #[test]
    fn aliases_parse() {
        use clap::ValueEnum;
        for (s, b) in [
            ("nft", BackendName::IptablesNft),
            ("iptables-nft", BackendName::IptablesNft),
            ("legacy", BackendName::IptablesLegacy),
            ("nftables", BackendName::Nftables),
            ("auto", BackendName::Auto),
        ] {
            assert_eq!(BackendName::from_str(s, false).unwrap(), b);
        }
    }
}
