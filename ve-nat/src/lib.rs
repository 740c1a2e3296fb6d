//! `ve-nat`: installs, checks, shows and removes the NAT that lets containers on `ve-*`
//! interfaces reach the outside network, with port forwards, in chains of its own.

pub mod apply;
mod cni;
pub mod config;
pub mod doc;
pub mod firewall;
pub mod iface;
mod lock;
pub mod nft;
pub mod rules;
pub mod sysctl;

use std::ffi::OsString;

use clap::{Args, CommandFactory, Parser, Subcommand};
use common::{cli::Verbosity, output, Error, Kind, Result};
use serde::Serialize;

use crate::{
    config::{Family, Request},
    firewall::{Backend, Iptables},
    sysctl::Sysctl,
};

pub use lock::{DIR as LOCK_DIR, DIR_ENV as LOCK_DIR_ENV};

#[derive(Debug, Parser)]
#[command(
    name = "ve-nat",
    version,
    about = "NAT for containers on ve-* interfaces: masquerade, port forwards, forwarding",
    long_about = "NAT for containers on ve-* interfaces: masquerade, port forwards, forwarding.\n\n\
        All rules live in chains of ve-nat's own (nat: ve-nat-pre, ve-nat-post, \
        ve-nat-out; filter: ve-nat-fwd), each reached by one jump from its built-in \
        chain. A wildcard interface pattern (default ve-+) covers every container, so \
        adding or removing a container changes no rule.\n\n\
        Port forwards reach the container from outside, from other containers and from \
        the host itself through any of the host's addresses except loopback \
        (127.0.0.1/::1 is not covered)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    verbosity: Verbosity,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install or update the rules and turn forwarding on (idempotent)
    Up(Want),
    /// Remove ve-nat's chains and jumps from both backends, nothing else (already gone is success)
    Down(BackendArg),
    /// Exit 0 if the installed rules match the request, 1 if not
    Check(Want),
    /// Show what is installed, with packet counters
    Status {
        #[command(flatten)]
        backend: BackendArg,
        /// JSON Lines: one object per chain of ours, instead of a table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct BackendArg {
    /// iptables backend; default: the system's `iptables`, else whichever is installed
    #[arg(long, value_enum)]
    backend: Option<Backend>,
}

#[derive(Debug, Args)]
struct Want {
    /// The interface towards the outside network; `auto`: the default route's (IPv4, else IPv6)
    #[arg(long, value_name = "IFACE|auto")]
    external: String,
    /// Container interfaces, iptables wildcard `ve-+` or `ve-*` [default: ve-+]
    #[arg(long, value_name = "IFACE_PATTERN")]
    internal: Vec<String>,
    /// Also NAT traffic from these source networks
    #[arg(long, value_name = "CIDR")]
    internal_ip: Vec<String>,
    /// SNAT to this address instead of masquerading (one per address family)
    #[arg(long, value_name = "ADDR")]
    external_ip: Vec<String>,
    /// Port forward, e.g. tcp:8080:10.233.1.2:80 or udp:5000-5009:[fd00::2]:5000-5009
    #[arg(long, value_name = "PROTO:HOST_PORT[-END]:ADDR:PORT[-END]")]
    forward: Vec<String>,
    /// The same for IPv6 with ip6tables (NAT66), and IPv6 forwarding
    #[arg(long)]
    ipv6: bool,
    /// The packet mark bit tagging container connections
    #[arg(long, value_name = "BIT", default_value = "0x2000")]
    mark: String,
    #[command(flatten)]
    backend: BackendArg,
}

impl Want {
    fn request(&self) -> Result<Request> {
        // `auto` is resolved first (a read of /proc/net, which changes nothing), so the
        // internal patterns are checked against the interface it picks.
        let external = if self.external == iface::AUTO {
            let name = iface::pick(&iface::default_routes()?)?;
            log::info!("--external auto: {name}");
            name
        } else {
            self.external.clone()
        };
        Request::new(
            &external,
            &self.internal,
            &self.internal_ip,
            &self.external_ip,
            &self.forward,
            self.ipv6,
            Some(&self.mark),
        )
    }
}

/// The clap definition (for man pages and completions).
pub fn command() -> clap::Command {
    doc::MANUAL.attach(Cli::command())
}

pub fn run(args: Vec<OsString>) -> Result<()> {
    // CNI_COMMAND set: a CNI plugin (stdin config, result on stdout), not the shell tool.
    if common::cni::command().is_some() {
        return cni::run();
    }
    let cli: Cli = common::cli::parse(command(), args)?;
    cli.verbosity.init_logging("ve-nat");
    match cli.cmd {
        Cmd::Up(w) => up(&w.request()?, w.backend.backend),
        Cmd::Down(b) => down(b.backend),
        Cmd::Check(w) => check(&w.request()?, w.backend.backend),
        Cmd::Status { backend, json } => status(backend.backend, json),
    }
}

/// CAP_NET_ADMIN, which every iptables call (listing too) needs.
const CAP_NET_ADMIN: u32 = 12;

/// Stop at once, with one line, when the firewall cannot be read or changed: without
/// this, every iptables call would fail on its own and say so.
fn need_net_admin() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("reading /proc/self/status", e))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    match eff {
        Some(caps) if caps & (1 << CAP_NET_ADMIN) != 0 => Ok(()),
        Some(_) => Err(Error::new(
            Kind::Permission,
            "permission denied: reading or changing the firewall needs CAP_NET_ADMIN (run as root)",
        )),
        // No capability line (not Linux procfs?): let iptables decide.
        None => Ok(()),
    }
}

/// The firewalls `req` needs, and the IPv6 one to clean when it is not wanted.
fn open(req: &Request, backend: Option<Backend>) -> Result<(Vec<Iptables>, Option<Iptables>)> {
    let mut fws = vec![Iptables::open(backend, Family::Ipv4)?];
    let mut other = None;
    if req.ipv6 {
        fws.push(Iptables::open(backend, Family::Ipv6)?);
    } else {
        other = Iptables::open_optional(backend, Family::Ipv6)?;
    }
    Ok((fws, other))
}

/// The backend that is not `fw`'s.
fn other_backend(fw: &Iptables) -> Option<Backend> {
    match fw.kind.as_str() {
        "nf_tables" => Some(Backend::Legacy),
        "legacy" => Some(Backend::Nft),
        _ => None,
    }
}

/// The firewalls of the other backend than `used` (both families) that hold chains of
/// ours. iptables-legacy is only asked when the kernel has a legacy table in this
/// namespace already: listing would load the x_tables modules and create empty tables.
/// iptables-nft lists without creating anything.
fn others_holding_ours(used: &Iptables) -> Vec<Iptables> {
    let Some(b) = other_backend(used) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        if b == Backend::Legacy {
            let names = match family {
                Family::Ipv4 => "/proc/net/ip_tables_names",
                Family::Ipv6 => "/proc/net/ip6_tables_names",
            };
            let t = std::fs::read_to_string(names).unwrap_or_default();
            if !t.lines().any(|l| l == rules::NAT || l == rules::FILTER) {
                continue;
            }
        }
        let fw = match Iptables::open_optional(Some(b), family) {
            Ok(Some(fw)) => fw,
            Ok(None) => continue,
            Err(e) => {
                log::debug!("{family}: the {b:?} backend: {e}");
                continue;
            }
        };
        if apply::holds_ours(&fw).unwrap_or_else(|e| {
            log::debug!("{family}: listing the {} backend: {e}", fw.kind);
            false
        }) {
            out.push(fw);
        }
    }
    out
}

/// Native nftables forward chains with policy drop that would drop container traffic.
fn dropping_chains(fws: &[Iptables], families: &[Family]) -> Vec<String> {
    let nft_backend = fws.first().is_some_and(|f| f.kind == "nf_tables");
    match nft::ruleset() {
        Some(rs) => nft::dropping_forward_chains(&rs, families, nft_backend),
        None => Vec::new(),
    }
}

fn drop_text(chain: &str) -> String {
    format!(
        "the nftables chain {chain} has policy drop: it drops container traffic whatever \
         ve-nat accepts (accept the container interfaces there)"
    )
}

/// How long `up` and `down` wait for another ve-nat.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn up(req: &Request, backend: Option<Backend>) -> Result<()> {
    need_net_admin()?;
    let (fws, other) = open(req, backend)?;
    let ext = req.external.as_str();
    if !iface::exists(ext)? {
        return Err(Error::no_input(iface::missing(ext)));
    }
    let _lock = lock::acquire(LOCK_WAIT)?;
    for fw in &fws {
        let want = rules::wanted(req, fw.family);
        if apply::up(fw, &want).map_err(|e| e.context(format!("{} rules", fw.family)))? {
            log::info!("{}: rules installed", fw.family);
        } else {
            log::info!("{}: rules already as requested", fw.family);
        }
    }
    if let Some(fw) = &other {
        if ours_in_unused(fw).is_some_and(|have| has_any(&have)) {
            log::info!("IPv6: removing rules of an earlier --ipv6");
            joined(apply::down(fw))?;
        }
    }
    // Both backends' rules apply: ours live in the chosen one only.
    for fw in others_holding_ours(&fws[0]) {
        log::warn!(
            "{}: removing ve-nat's rules from the {} backend (both backends apply; they \
             now live in {} only)",
            fw.family,
            fw.kind,
            fws[0].kind
        );
        let have = apply::installed(&fw).ok();
        joined(down_one(&fw, have))?;
    }
    // Forwarding only once the rules are there, so nothing leaves un-NATed.
    let sys = Sysctl::default();
    for fw in &fws {
        if fw.family == Family::Ipv6 {
            sys.keep_router_advertisements(ext)?;
        }
        sys.enable_forwarding(fw.family)?;
    }
    for chain in dropping_chains(&fws, &req.families()) {
        log::warn!("{}", drop_text(&chain));
    }
    Ok(())
}

/// What is installed of ours in a family the request does not use. A failure to
/// list (IPv6 disabled, no ip6 nat table in the kernel) means none can be there.
fn ours_in_unused(fw: &Iptables) -> Option<Vec<apply::Installed>> {
    match apply::installed(fw) {
        Ok(have) => Some(have),
        Err(e) => {
            log::warn!(
                "{}: cannot list rules, assuming none of ours: {e}",
                fw.family
            );
            None
        }
    }
}

fn has_any(have: &[apply::Installed]) -> bool {
    have.iter()
        .any(|i| i.exists || i.staging_left || !i.jumps.is_empty())
}

/// One error from several: every message, the first one's kind.
fn joined(errors: Vec<Error>) -> Result<()> {
    let mut it = errors.into_iter();
    let Some(first) = it.next() else {
        return Ok(());
    };
    let rest: Vec<String> = it.map(|e| e.to_string()).collect();
    if rest.is_empty() {
        return Err(first);
    }
    Err(Error::new(
        first.kind(),
        format!("{first}; {}", rest.join("; ")),
    ))
}

/// With iptables-nft, after `down`: delete the tables among `tables` that are left
/// empty (only built-in chains with policy accept), so the ruleset is as before `up`.
/// Best effort: a failure is a warning.
fn remove_empty_tables(fw: &Iptables, tables: &[&str]) {
    if fw.kind != "nf_tables" {
        return;
    }
    for t in tables {
        if let Err(e) = nft::remove_if_empty(fw.family, t) {
            log::warn!("{}: {e}", fw.family);
        }
    }
}

/// The tables that hold anything of ours.
fn tables_of(have: &[apply::Installed]) -> Vec<&'static str> {
    let mut t: Vec<&'static str> = have
        .iter()
        .filter(|i| i.exists || i.staging_left || !i.jumps.is_empty())
        .map(|i| i.id.table)
        .collect();
    t.dedup();
    t
}

/// Remove ours from `fw`, then the tables it leaves empty.
fn down_one(fw: &Iptables, have: Option<Vec<apply::Installed>>) -> Vec<Error> {
    let tables = have.as_deref().map(tables_of).unwrap_or_default();
    let errors = apply::down(fw);
    if errors.is_empty() {
        remove_empty_tables(fw, &tables);
    }
    errors
}

fn down(backend: Option<Backend>) -> Result<()> {
    need_net_admin()?;
    let mut errors = Vec::new();
    let v4 = Iptables::open(backend, Family::Ipv4)?;
    let _lock = lock::acquire(LOCK_WAIT)?;
    errors.extend(down_one(&v4, apply::installed(&v4).ok()));
    if let Some(v6) = Iptables::open_optional(backend, Family::Ipv6)? {
        if let Some(have) = ours_in_unused(&v6).filter(|h| has_any(h)) {
            errors.extend(
                down_one(&v6, Some(have))
                    .into_iter()
                    .map(|e| e.context("IPv6")),
            );
        }
    }
    for fw in others_holding_ours(&v4) {
        log::info!(
            "{}: removing ve-nat's rules from the {} backend too",
            fw.family,
            fw.kind
        );
        let have = apply::installed(&fw).ok();
        let ctx = format!("{} {}", fw.family, fw.kind);
        errors.extend(down_one(&fw, have).into_iter().map(|e| e.context(&ctx)));
    }
    joined(errors)
}

fn check(req: &Request, backend: Option<Backend>) -> Result<()> {
    need_net_admin()?;
    let (fws, other) = open(req, backend)?;
    let mut diffs = Vec::new();
    let ext = req.external.as_str();
    if !iface::exists(ext)? {
        diffs.push(iface::missing(ext));
    }
    let sys = Sysctl::default();
    for fw in &fws {
        let want = rules::wanted(req, fw.family);
        for d in apply::differences(&apply::installed(fw)?, Some(&want)) {
            diffs.push(format!("{}: {d}", fw.family));
        }
        if sys.forwarding(fw.family)? != Some(true) {
            diffs.push(format!("{} is not 1", Sysctl::name(fw.family)));
        }
    }
    if let Some(have) = other.as_ref().and_then(ours_in_unused) {
        for d in apply::differences(&have, None) {
            diffs.push(format!("IPv6: {d}"));
        }
    }
    for fw in others_holding_ours(&fws[0]) {
        diffs.push(format!(
            "{}: ve-nat's chains are in the {} backend too, and both backends apply \
             (`ve-nat up` or `down` removes them)",
            fw.family, fw.kind
        ));
    }
    for chain in dropping_chains(&fws, &req.families()) {
        diffs.push(drop_text(&chain));
    }
    if diffs.is_empty() {
        log::info!("installed rules match the request");
        return Ok(());
    }
    for d in &diffs {
        log::info!("{d}");
    }
    Err(Error::new(
        Kind::Differs,
        format!(
            "installed rules differ from the request: {}{}",
            diffs[0],
            if diffs.len() > 1 {
                format!(" (and {} more; -v lists them)", diffs.len() - 1)
            } else {
                String::new()
            }
        ),
    ))
}

/// One line of `status --json`: one chain of ours in one family.
#[derive(Debug, Serialize)]
struct ChainStatus {
    family: Family,
    backend: String,
    forwarding: Option<bool>,
    table: &'static str,
    chain: &'static str,
    hook: &'static str,
    installed: bool,
    jumps: usize,
    staging_left: bool,
    rules: Vec<RuleStatus>,
}

#[derive(Debug, Serialize)]
struct RuleStatus {
    rule: String,
    packets: u64,
    bytes: u64,
}

fn family_status(fw: &Iptables) -> Result<Vec<ChainStatus>> {
    let forwarding = Sysctl::default().forwarding(fw.family)?;
    Ok(apply::installed(fw)?
        .into_iter()
        .map(|i| ChainStatus {
            family: fw.family,
            backend: fw.kind.clone(),
            forwarding,
            table: i.id.table,
            chain: i.id.chain,
            hook: i.id.hook,
            installed: i.exists,
            jumps: i.jumps.len(),
            staging_left: i.staging_left,
            rules: i
                .rules
                .into_iter()
                .map(|c| RuleStatus {
                    rule: c.rule,
                    packets: c.packets,
                    bytes: c.bytes,
                })
                .collect(),
        })
        .collect())
}

fn status(backend: Option<Backend>, json: bool) -> Result<()> {
    need_net_admin()?;
    let mut chains = family_status(&Iptables::open(backend, Family::Ipv4)?)?;
    if let Some(v6) = Iptables::open_optional(backend, Family::Ipv6)? {
        match family_status(&v6) {
            Ok(st) => chains.extend(st),
            Err(e) => log::warn!("IPv6: cannot list rules: {e}"),
        }
    }
    if json {
        let mut text = String::new();
        for c in &chains {
            text.push_str(&output::json_line(c)?);
        }
        return output::print(&text);
    }
    let mut rows = Vec::new();
    for c in &chains {
        let fam = match c.family {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        };
        let fwd = match c.forwarding {
            Some(true) => "on",
            Some(false) => "off",
            None => "n/a",
        };
        let head = |rule: String, p: String, b: String| {
            vec![
                fam.to_string(),
                c.backend.clone(),
                fwd.to_string(),
                c.table.to_string(),
                c.chain.to_string(),
                format!("{}x", c.jumps),
                p,
                b,
                rule,
            ]
        };
        if !c.installed {
            rows.push(head("(not installed)".into(), String::new(), String::new()));
        } else if c.rules.is_empty() {
            rows.push(head("(empty)".into(), String::new(), String::new()));
        }
        for r in &c.rules {
            rows.push(head(
                r.rule.clone(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ));
        }
    }
    output::print(&output::table(
        &[
            "FAMILY",
            "BACKEND",
            "FORWARDING",
            "TABLE",
            "CHAIN",
            "JUMPS",
            "PACKETS",
            "BYTES",
            "RULE",
        ],
        &rows,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn bad_input_is_exit_65_before_anything_runs() {
        // Validation happens before any iptables binary is looked for.
        for a in [
            &["ve-nat", "up", "--external", "eth0 -j ACCEPT"][..],
            &["ve-nat", "up", "--external", "eth0", "--internal", "ve-'x"],
            &[
                "ve-nat",
                "check",
                "--external",
                "eth0",
                "--internal",
                "!ve-+",
            ],
            &[
                "ve-nat",
                "up",
                "--external",
                "eth0",
                "--forward",
                "tcp:1:10.0.0.1:1 -j DROP",
            ],
            &[
                "ve-nat",
                "up",
                "--external",
                "eth0",
                "--mark",
                "0x2000/0x2000",
            ],
        ] {
            assert_eq!(run(args(a)).unwrap_err().code(), 65, "{a:?}");
        }
        assert_eq!(run(args(&["ve-nat", "up"])).unwrap_err().code(), 64);
        assert_eq!(
            run(args(&["ve-nat", "down", "--backend", "xt"]))
                .unwrap_err()
                .code(),
            64
        );
    }

    #[test]
    fn command_is_consistent() {
        command().debug_assert();
    }
}
