//! `ve-nat`: installs, checks, shows and removes the NAT that lets containers on `ve-*`
//! interfaces reach the outside network, with port forwards, in chains of its own.

pub mod apply;
pub mod config;
pub mod doc;
pub mod firewall;
mod lock;
pub mod rules;
pub mod sysctl;

use std::ffi::OsString;

use clap::{Args, CommandFactory, Parser, Subcommand};
use common::{cli::Verbosity, output, Error, Exit, Result};
use serde::Serialize;

use crate::{
    config::{Family, Request},
    firewall::{Backend, Iptables},
    sysctl::Sysctl,
};

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
    /// Remove ve-nat's chains and jumps, nothing else (already gone is success)
    Down(BackendArg),
    /// Exit 0 if the installed rules match the request, 1 if not
    Check(Want),
    /// Show what is installed, with packet counters
    Status {
        #[command(flatten)]
        backend: BackendArg,
        /// One JSON document instead of a table
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
    /// The interface towards the outside network
    #[arg(long, value_name = "IFACE")]
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
        Request::new(
            &self.external,
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
    let cli: Cli = common::cli::parse(command(), args)?;
    cli.verbosity.init_logging("ve-nat");
    match cli.cmd {
        Cmd::Up(w) => up(&w.request()?, w.backend.backend),
        Cmd::Down(b) => down(b.backend),
        Cmd::Check(w) => check(&w.request()?, w.backend.backend),
        Cmd::Status { backend, json } => status(backend.backend, json),
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

/// How long `up` and `down` wait for another ve-nat in the same namespace.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn up(req: &Request, backend: Option<Backend>) -> Result<()> {
    let (fws, other) = open(req, backend)?;
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
    // Forwarding only once the rules are there, so nothing leaves un-NATed.
    let sys = Sysctl::default();
    for fw in &fws {
        if fw.family == Family::Ipv6 {
            sys.keep_router_advertisements(req.external.as_str())?;
        }
        sys.enable_forwarding(fw.family)?;
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

/// One error from several: every message, the first one's exit code.
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
        first.exit(),
        format!("{first}; {}", rest.join("; ")),
    ))
}

fn down(backend: Option<Backend>) -> Result<()> {
    let mut errors = Vec::new();
    let v4 = Iptables::open(backend, Family::Ipv4)?;
    let _lock = lock::acquire(LOCK_WAIT)?;
    errors.extend(apply::down(&v4));
    if let Some(v6) = Iptables::open_optional(backend, Family::Ipv6)? {
        if ours_in_unused(&v6).is_some_and(|have| has_any(&have)) {
            errors.extend(apply::down(&v6).into_iter().map(|e| e.context("IPv6")));
        }
    }
    joined(errors)
}

fn check(req: &Request, backend: Option<Backend>) -> Result<()> {
    let (fws, other) = open(req, backend)?;
    let mut diffs = Vec::new();
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
    if diffs.is_empty() {
        log::info!("installed rules match the request");
        return Ok(());
    }
    for d in &diffs {
        log::info!("{d}");
    }
    Err(Error::new(
        Exit::Differs,
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

#[derive(Debug, Serialize)]
struct Status {
    families: Vec<FamilyStatus>,
}

#[derive(Debug, Serialize)]
struct FamilyStatus {
    family: Family,
    backend: String,
    forwarding: Option<bool>,
    chains: Vec<ChainStatus>,
}

#[derive(Debug, Serialize)]
struct ChainStatus {
    table: &'static str,
    chain: &'static str,
    hook: &'static str,
    installed: bool,
    jumps: usize,
    rules: Vec<RuleStatus>,
}

#[derive(Debug, Serialize)]
struct RuleStatus {
    rule: String,
    packets: u64,
    bytes: u64,
}

fn family_status(fw: &Iptables) -> Result<FamilyStatus> {
    let chains = apply::installed(fw)?
        .into_iter()
        .map(|i| ChainStatus {
            table: i.id.table,
            chain: i.id.chain,
            hook: i.id.hook,
            installed: i.exists,
            jumps: i.jumps.len(),
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
        .collect();
    Ok(FamilyStatus {
        family: fw.family,
        backend: fw.kind.clone(),
        forwarding: Sysctl::default().forwarding(fw.family)?,
        chains,
    })
}

fn status(backend: Option<Backend>, json: bool) -> Result<()> {
    let mut families = vec![family_status(&Iptables::open(backend, Family::Ipv4)?)?];
    if let Some(v6) = Iptables::open_optional(backend, Family::Ipv6)? {
        match family_status(&v6) {
            Ok(st) => families.push(st),
            Err(e) => log::warn!("IPv6: cannot list rules: {e}"),
        }
    }
    let st = Status { families };
    if json {
        return output::print(&output::json_line(&st)?);
    }
    let mut rows = Vec::new();
    for f in &st.families {
        let fam = match f.family {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        };
        let fwd = match f.forwarding {
            Some(true) => "on",
            Some(false) => "off",
            None => "n/a",
        };
        for c in &f.chains {
            let head = |rule: String, p: String, b: String| {
                vec![
                    fam.to_string(),
                    f.backend.clone(),
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
