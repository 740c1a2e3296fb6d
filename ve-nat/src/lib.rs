//! `ve-nat`: installs, checks, shows and removes the NAT that lets containers on `ve-*`
//! interfaces reach the outside network, with port forwards, in a table (nftables) or
//! chains (iptables) of its own.

pub mod apply;
pub mod backend;
mod cni;
mod cni_nft;
pub mod config;
pub mod doc;
pub mod firewall;
pub mod firewalld;
pub mod iface;
mod ipt_cni;
mod lock;
pub mod native;
mod nfnl;
pub mod nft;
pub mod nft_cni;
pub mod nft_table;
pub mod proxy;
pub mod rules;
pub mod sysctl;
pub mod watch;

use std::ffi::OsString;

use clap::{Args, CommandFactory, Parser, Subcommand};
use common::{cli::Verbosity, output, Error, Kind, Result};
use serde::Serialize;

use crate::{
    backend::{BackendName, Chosen},
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
        With the nftables backend all rules live in one table of ve-nat's own, inet \
        ve-nat, replaced whole in one transaction; port forwards are elements of its \
        maps. With an iptables backend they live in chains of ve-nat's own (nat: \
        ve-nat-pre, ve-nat-post, ve-nat-out; filter: ve-nat-fwd), each reached by one \
        jump from its built-in chain. A wildcard interface pattern (default ve-+) covers \
        every container, so adding or removing a container changes no rule.\n\n\
        --backend auto (the default) picks nftables unless iptables-legacy rules are in \
        use (then iptables-legacy), nft is not installed (then the system's iptables), \
        or an iptables FORWARD chain drops, as Docker's does (then iptables-nft, which \
        puts its accepts there).\n\n\
        Port forwards reach the container from outside, from other containers and from \
        the host itself through any of the host's addresses, 127.0.0.1 included \
        (--no-localhost: not 127.0.0.1 nor ::1). IPv6 forwards (TCP and UDP) answer on ::1 only \
        while ve-nat watch (or up --watch) runs: it proxies [::1]:PORT in userland, as \
        docker-proxy does; a one-shot up cannot.\n\n\
        Where firewalld runs (on the system bus, in this network namespace), up also puts \
        the container interfaces and --internal-ip networks into its trusted zone, \
        runtime and permanent, through its D-Bus API; down removes what up added there."
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
    Up(UpArgs),
    /// `up`, then stay and re-apply whenever the rules vanish (nft flush ruleset, a
    /// firewalld reload, iptables flushed); SIGTERM or SIGINT end it (exit 0)
    Watch(Want),
    /// Remove ve-nat's table and chains from every backend, nothing else (already gone is
    /// success); CNI mode's port mappings stay unless --cni
    Down(DownArgs),
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
    /// Which backend writes the rules (`ve-nat --help` says what auto picks)
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendName,
}

#[derive(Debug, Args)]
struct DownArgs {
    #[command(flatten)]
    backend: BackendArg,
    /// Also remove CNI mode's port mappings: table inet ve-nat-cni and the iptables
    /// chains ve-nat-cni-* (CNI DEL and GC remove a container's own)
    #[arg(long)]
    cni: bool,
}

#[derive(Debug, Args)]
struct UpArgs {
    #[command(flatten)]
    want: Want,
    /// Stay running afterwards, as `ve-nat watch` does
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, Args)]
struct Want {
    /// The interface towards the outside network; `auto`: the default route's (IPv4, else IPv6)
    #[arg(long, value_name = "IFACE|auto")]
    external: String,
    /// Container interfaces, wildcard `ve-+` or `ve-*` (nft: "ve-*") [default: ve-+]
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
    /// The same for IPv6 (NAT66; ip6tables, or the inet table with nftables), and IPv6 forwarding
    #[arg(long)]
    ipv6: bool,
    /// The packet mark bit tagging container connections
    #[arg(long, value_name = "BIT", default_value = "0x2000")]
    mark: String,
    /// Port forwards do not answer on 127.0.0.1 (no route_localnet on container interfaces) nor, in `watch`, on ::1
    #[arg(long)]
    no_localhost: bool,
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
        let mut req = Request::new(
            &external,
            &self.internal,
            &self.internal_ip,
            &self.external_ip,
            &self.forward,
            self.ipv6,
            Some(&self.mark),
        )?;
        req.localhost = !self.no_localhost;
        Ok(req)
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
        Cmd::Up(UpArgs {
            want: w,
            watch: false,
        }) => up(&w.request()?, w.backend.backend),
        Cmd::Up(UpArgs {
            want: w,
            watch: true,
        })
        | Cmd::Watch(w) => watch(&w.request()?, w.backend.backend),
        Cmd::Down(d) => down(d.backend.backend, d.cni),
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
/// iptables-nft lists without creating anything. And the firewalls that could not be
/// listed (not "nothing there": `down` fails with them once the rest is done, `up` and
/// `check` warn).
fn others_holding_ours(used: &Iptables) -> (Vec<Iptables>, Vec<Error>) {
    let Some(b) = other_backend(used) else {
        return (Vec::new(), Vec::new());
    };
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        if b == Backend::Legacy && !legacy_table_loaded(family) {
            continue;
        }
        let fw = match Iptables::open_optional(Some(b), family) {
            Ok(Some(fw)) => fw,
            Ok(None) => continue,
            Err(e) => {
                log::debug!("{family}: the {b:?} backend: {e}");
                continue;
            }
        };
        keep_if_ours(fw, &mut out, &mut failed);
    }
    (out, failed)
}

/// Keep `fw` in `out` when it holds ve-nat's chains; a listing that fails goes to
/// `failed` (unknown, not "nothing there").
fn keep_if_ours(fw: Iptables, out: &mut Vec<Iptables>, failed: &mut Vec<Error>) {
    match apply::holds_ours(&fw) {
        Ok(true) => out.push(fw),
        Ok(false) => {}
        Err(e) => failed.push(e.context(format!(
            "{} {}: cannot tell whether ve-nat's chains are there",
            fw.family, fw.kind
        ))),
    }
}

/// `others_holding_ours` where a firewall that cannot be listed is only a warning.
fn others_holding_ours_warned(used: &Iptables) -> Vec<Iptables> {
    let (fws, failed) = others_holding_ours(used);
    for e in failed {
        log::warn!("{e}");
    }
    fws
}

/// Native nftables forward chains with policy drop that would drop container traffic.
fn dropping_chains(fws: &[Iptables], families: &[Family]) -> Vec<String> {
    let nft_backend = fws.first().is_some_and(|f| f.kind == "nf_tables");
    match nft::ruleset() {
        Some(rs) => nft::dropping_forward_chains(&rs, families, nft_backend),
        None => Vec::new(),
    }
}

/// `chains` (`FAMILY TABLE CHAIN`) without firewalld's own when firewalld runs here:
/// its drops are dealt with through its trusted zone (see `firewalld`), and `check`
/// compares that instead.
fn foreign_drops(chains: Vec<String>) -> Vec<String> {
    let theirs = |c: &String| c.split(' ').nth(1).is_some_and(firewalld::owns_table);
    if !chains.iter().any(theirs) || firewalld::Firewalld::connect().is_none() {
        return chains;
    }
    chains.into_iter().filter(|c| !theirs(c)).collect()
}

fn drop_text(chain: &str) -> String {
    format!(
        "the nftables chain {chain} drops (policy drop or a final drop/reject): it drops \
         container traffic whatever ve-nat accepts (accept the container interfaces there)"
    )
}

/// How long `up` and `down` wait for another ve-nat.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The backend `name` stands for; `auto` decides from the ruleset and the legacy
/// tables (see `backend`).
fn choose(name: BackendName, ruleset: Option<&[serde_json::Value]>) -> Chosen {
    if let Some(c) = name.explicit() {
        return c;
    }
    let (c, why) = backend::pick(&backend::Facts::read(ruleset));
    log::info!("--backend auto: {c:?} ({why})");
    c
}

fn up(req: &Request, name: BackendName) -> Result<()> {
    need_net_admin()?;
    let rs = nft::ruleset();
    match choose(name, rs.as_deref()) {
        Chosen::Nftables => up_nftables(req)?,
        Chosen::Iptables(b) => up_iptables(req, b)?,
    }
    firewalld_up(req)
}

/// The iptables firewalls (either backend, both families) that hold chains of ours,
/// seen from the nftables side: iptables-nft's tables are in `ruleset`; legacy ones are
/// asked only when the kernel has a legacy nat or filter table.
/// A legacy table that cannot be listed is a warning here (`up`, `check`: what they
/// do does not depend on it).
fn iptables_holding_ours(ruleset: &[serde_json::Value]) -> Vec<Iptables> {
    let (fws, failed) = iptables_holding(in_iptables_nft(ruleset));
    for e in failed {
        log::warn!("{e}");
    }
    fws
}

/// Whether chains of ours (`ve-nat-*`) are in the nf_tables families ip and ip6: the
/// iptables-nft backend's, IPv4 and IPv6.
fn in_iptables_nft(ruleset: &[serde_json::Value]) -> [bool; 2] {
    ["ip", "ip6"].map(|fam| {
        ruleset.iter().filter_map(|o| o.get("chain")).any(|c| {
            c.get("family").and_then(|f| f.as_str()) == Some(fam)
                && c.get("name")
                    .and_then(|n| n.as_str())
                    .is_some_and(rules::is_ours)
        })
    })
}

/// `iptables_holding_ours`, with `in_nft` saying where iptables-nft holds ours (IPv4,
/// IPv6); and the loaded legacy tables that could not be listed (not "nothing there").
fn iptables_holding(in_nft: [bool; 2]) -> (Vec<Iptables>, Vec<Error>) {
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for (family, in_nft) in [Family::Ipv4, Family::Ipv6].into_iter().zip(in_nft) {
        if in_nft {
            match Iptables::open_optional(Some(Backend::Nft), family) {
                Ok(Some(fw)) => out.push(fw),
                Ok(None) => {}
                Err(e) => log::debug!("{family}: the iptables-nft backend: {e}"),
            }
        }
    }
    for family in [Family::Ipv4, Family::Ipv6] {
        if !legacy_table_loaded(family) {
            continue;
        }
        if let Ok(Some(fw)) = Iptables::open_optional(Some(Backend::Legacy), family) {
            keep_if_ours(fw, &mut out, &mut failed);
        }
    }
    (out, failed)
}

/// Whether the kernel has an iptables-legacy nat or filter table of `family` here.
fn legacy_table_loaded(family: Family) -> bool {
    let names = match family {
        Family::Ipv4 => "/proc/net/ip_tables_names",
        Family::Ipv6 => "/proc/net/ip6_tables_names",
    };
    let t = std::fs::read_to_string(names).unwrap_or_default();
    t.lines().any(|l| l == rules::NAT || l == rules::FILTER)
}

/// Remove ours from iptables (both backends apply, and they now live in nftables).
fn remove_from_iptables(ruleset: &[serde_json::Value]) -> Vec<Error> {
    let fws = iptables_holding_ours(ruleset);
    for fw in &fws {
        log::warn!(
            "{}: removing ve-nat's rules from the {} backend (they now live in table inet ve-nat)",
            fw.family,
            fw.kind
        );
    }
    remove_from(fws)
}

/// Remove ours from each of `fws`.
fn remove_from(fws: Vec<Iptables>) -> Vec<Error> {
    let mut errors = Vec::new();
    for fw in fws {
        let have = apply::installed(&fw).ok();
        let ctx = format!("{} {}", fw.family, fw.kind);
        errors.extend(down_one(&fw, have).into_iter().map(|e| e.context(&ctx)));
    }
    errors
}

fn up_nftables(req: &Request) -> Result<()> {
    up_nftables_with(req, false).map(drop)
}

/// CNI mode: `up_nftables` only when table inet ve-nat is missing, looked at under the
/// lock (so a concurrent `up --forward` or ADD keeps what it made). Whether it installed.
fn up_nftables_if_absent(req: &Request) -> Result<bool> {
    up_nftables_with(req, true)
}

fn up_nftables_with(req: &Request, only_if_absent: bool) -> Result<bool> {
    let ext = req.external.as_str();
    // nft is needed before anything else is looked at (exit 69 without it).
    native::installed()?;
    if !iface::exists(ext)? {
        return Err(Error::no_input(iface::missing(ext)));
    }
    let _lock = lock::acquire(LOCK_WAIT)?;
    let rs = native::ruleset()?;
    if only_if_absent && native::present(&rs) {
        return Ok(false);
    }
    if native::up(req, &rs)? {
        log::info!("table inet ve-nat installed");
    } else {
        log::info!("table inet ve-nat already as requested");
    }
    joined(remove_from_iptables(&rs))?;
    let sys = Sysctl::default();
    // route_localnet only once the loopback guard (in the table) is in place.
    sys.apply_localhost(req)?;
    for f in req.families() {
        if f == Family::Ipv6 {
            sys.keep_router_advertisements(ext)?;
        }
        sys.enable_forwarding(f)?;
    }
    for chain in foreign_drops(nft::dropping_forward_chains(&rs, &req.families(), false)) {
        log::warn!("{}", drop_text(&chain));
    }
    Ok(true)
}

/// With an iptables backend: our nftables table must go (both would apply).
fn remove_native(ruleset: Option<&[serde_json::Value]>) -> Result<()> {
    if let Some(rs) = ruleset {
        if native::present(rs) {
            log::warn!(
                "removing table inet ve-nat (both would apply; the rules now live in iptables)"
            );
            native::down(rs)?;
        }
    }
    Ok(())
}

fn up_iptables(req: &Request, backend: Option<Backend>) -> Result<()> {
    up_iptables_with(req, backend, false).map(drop)
}

/// CNI mode: `up_iptables` only when no chain of ours is there, looked at under the
/// lock (so a concurrent `up --forward` or ADD keeps what it made). Whether it installed.
fn up_iptables_if_absent(req: &Request, backend: Option<Backend>) -> Result<bool> {
    up_iptables_with(req, backend, true)
}

fn up_iptables_with(req: &Request, backend: Option<Backend>, only_if_absent: bool) -> Result<bool> {
    let (fws, other) = open(req, backend)?;
    let ext = req.external.as_str();
    if !iface::exists(ext)? {
        return Err(Error::no_input(iface::missing(ext)));
    }
    let _lock = lock::acquire(LOCK_WAIT)?;
    if only_if_absent && apply::holds_ours(&fws[0])? {
        return Ok(false);
    }
    // Where the last up may have set route_localnet.
    let before = apply::internal_patterns(&fws[0]).unwrap_or_default();
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
    for fw in others_holding_ours_warned(&fws[0]) {
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
    remove_native(nft::ruleset().as_deref())?;
    // route_localnet only once the loopback guard is in place.
    let sys = Sysctl::default();
    sys.apply_localhost(req)?;
    sys.forget_patterns(&before, req)?;
    // Forwarding only once the rules are there, so nothing leaves un-NATed.
    for fw in &fws {
        if fw.family == Family::Ipv6 {
            sys.keep_router_advertisements(ext)?;
        }
        sys.enable_forwarding(fw.family)?;
    }
    for chain in foreign_drops(dropping_chains(&fws, &req.families())) {
        log::warn!("{}", drop_text(&chain));
    }
    Ok(true)
}

/// Where firewalld runs: the containers into its trusted zone (see `firewalld`).
fn firewalld_up(req: &Request) -> Result<()> {
    let Some(fw) = firewalld::Firewalld::connect() else {
        return Ok(());
    };
    let dir = firewalld::state_dir();
    let mut owned = firewalld::load(&dir)?;
    let want = firewalld::wanted(req);
    for w in firewalld::up(&fw, &want, &mut owned, &mut |o| firewalld::save(&dir, o))? {
        log::warn!("{w}");
    }
    Ok(())
}

/// Undo what `firewalld_up` added. Without firewalld, everything stays recorded for a
/// later `down`: the runtime entries too, as firewalld copies our permanent ones back
/// into its runtime config when it starts.
fn firewalld_down() -> Vec<Error> {
    let dir = firewalld::state_dir();
    let mut owned = match firewalld::load(&dir) {
        Ok(o) if o.is_empty() => return Vec::new(),
        Ok(o) => o,
        Err(e) => return vec![e],
    };
    let recorded = owned.len();
    let mut errors = match firewalld::Firewalld::connect() {
        Some(fw) => firewalld::down(&fw, &mut owned),
        None => {
            for e in &owned {
                log::warn!(
                    "firewalld is not running: {e} stays in its zone {} until `ve-nat down` \
                     runs while it does",
                    firewalld::ZONE
                );
            }
            Vec::new()
        }
    };
    // `down` only removes: the same count is the same record, left as it is.
    if owned.len() != recorded {
        if let Err(e) = firewalld::save(&dir, &owned) {
            errors.push(e);
        }
    }
    errors
}

/// `up`, then watch (see `watch`). iptables-legacy tells nobody of changes: it is
/// looked at every second; otherwise the kernel's events wake the watcher, and a look
/// every 30 s is only a safety net.
fn watch(req: &Request, name: BackendName) -> Result<()> {
    need_net_admin()?;
    let legacy = match choose(name, nft::ruleset().as_deref()) {
        Chosen::Nftables => false,
        Chosen::Iptables(b) => Iptables::open(b, Family::Ipv4)?.kind == "legacy",
    };
    let differences = || differences(req, name);
    let apply = || up(req, name);
    watch::run(&watch::Watch {
        differences: &differences,
        apply: &apply,
        poll: std::time::Duration::from_secs(if legacy { 1 } else { 30 }),
        proxy: proxy::routes(req),
    })
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
/// empty (only built-in chains with policy accept), and in the others the built-in
/// chains ours hooked that are left idle, so the ruleset is as before `up`. Best
/// effort: a failure is a warning.
fn remove_empty_tables(fw: &Iptables, tables: &[&str]) {
    if fw.kind != "nf_tables" || tables.is_empty() {
        return;
    }
    let hooked: Vec<(&str, Vec<&str>)> = tables
        .iter()
        .map(|t| {
            let hooks = rules::CHAINS.iter().filter(|c| c.table == *t);
            (*t, hooks.map(|c| c.hook).collect())
        })
        .collect();
    if let Err(e) = nft::tidy(fw.family, &hooked) {
        log::warn!("{}: {e}", fw.family);
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

/// Where an earlier `up` may have set route_localnet: the patterns of the installed
/// rules, and the default one (in case the rules are gone already).
fn localnet_patterns(have: Option<&[apply::Installed]>) -> Vec<config::IfPattern> {
    let pre: Vec<String> = have
        .unwrap_or_default()
        .iter()
        .filter(|i| i.id == rules::PRE)
        .flat_map(|i| i.rules.iter().map(|c| c.rule.clone()))
        .collect();
    let mut pats = rules::internal_patterns(&pre);
    pats.extend(config::DEFAULT_INTERNAL.parse::<config::IfPattern>());
    pats
}

fn down(name: BackendName, cni: bool) -> Result<()> {
    need_net_admin()?;
    let rules = down_rules(name, cni);
    let mut errors: Vec<Error> = rules.err().into_iter().collect();
    errors.extend(firewalld_down());
    joined(errors)
}

/// What the kernel holds of ours, by where it lives.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// Shell-mode chains in iptables-nft (IPv4, IPv6).
    shell: [bool; 2],
    /// CNI chains in iptables-nft (IPv4, IPv6).
    cni_ipt: [bool; 2],
    /// Table inet ve-nat-cni.
    cni_nft: bool,
}

impl Seen {
    /// From `nft -j list ruleset`.
    fn of_ruleset(ruleset: &[serde_json::Value]) -> Seen {
        let chains = |fam: &str| -> Vec<(String, String)> {
            ruleset
                .iter()
                .filter_map(|o| o.get("chain"))
                .filter(|c| c["family"] == fam)
                .map(|c| {
                    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
                    (s("table"), s("name"))
                })
                .collect()
        };
        Seen::of_chains(&chains("ip"), &chains("ip6"), &chains("inet"))
    }

    /// From the chain names (table, chain) of the families ip, ip6 and inet.
    fn of_chains(
        ip: &[(String, String)],
        ip6: &[(String, String)],
        inet: &[(String, String)],
    ) -> Seen {
        let shell = |cs: &[(String, String)]| cs.iter().any(|(_, n)| rules::is_ours(n));
        let cni = |cs: &[(String, String)]| {
            cs.iter()
                .any(|(_, n)| rules::CNI_CHAINS.iter().any(|c| c.chain == n))
        };
        Seen {
            shell: [shell(ip), shell(ip6)],
            cni_ipt: [cni(ip), cni(ip6)],
            cni_nft: inet.iter().any(|(t, _)| t == nft_cni::TABLE),
        }
    }

    /// Over netlink (see `nfnl`).
    fn of_netlink(nl: &mut nfnl::Nfnl) -> std::io::Result<Seen> {
        use netlink_packet_netfilter::NetfilterProtoFamily as F;
        let mut names = |f: F| -> std::io::Result<Vec<(String, String)>> {
            Ok(nl
                .chains(f)?
                .into_iter()
                .map(|c| (c.table, c.name))
                .collect())
        };
        Ok(Seen::of_chains(
            &names(F::IPv4)?,
            &names(F::IPv6)?,
            &names(F::Inet)?,
        ))
    }
}

/// Whether `fw` holds CNI chains of ours. A listing that fails is not "nothing
/// there": with `--cni`, which asked for them, it is an error (`down` does the rest
/// and then exits with it); without, only the note depends on it, and it is a warning
/// (then `Err(None)`).
fn cni_chains_in(fw: &Iptables, cni: bool) -> std::result::Result<bool, Option<Error>> {
    ipt_cni::present(fw).map_err(|e| {
        let e = e.context(format!(
            "{} {}: cannot tell whether CNI mode's chains ve-nat-cni-* are there",
            fw.family, fw.kind
        ));
        if cni {
            Some(e)
        } else {
            log::warn!("{e}");
            None
        }
    })
}

/// After `down`: CNI mode's mappings are removed with `--cni`, else they stay (CNI
/// containers keep their port mappings; DEL and GC remove them) and a note says so.
/// `seen` is what nf_tables shows; legacy tables are asked only when loaded.
fn down_cni(cni: bool, seen: Seen, nl: Option<&mut nfnl::Nfnl>) -> Vec<Error> {
    let mut errors = Vec::new();
    let mut fws = Vec::new();
    let mut unknown = false;
    for (family, there) in [Family::Ipv4, Family::Ipv6].into_iter().zip(seen.cni_ipt) {
        if there {
            if let Ok(Some(fw)) = Iptables::open_optional(Some(Backend::Nft), family) {
                fws.push(fw);
            }
        }
    }
    for family in [Family::Ipv4, Family::Ipv6] {
        if legacy_table_loaded(family) {
            if let Ok(Some(fw)) = Iptables::open_optional(Some(Backend::Legacy), family) {
                match cni_chains_in(&fw, cni) {
                    Ok(true) => fws.push(fw),
                    Ok(false) => {}
                    Err(e) => {
                        unknown = true;
                        errors.extend(e);
                    }
                }
            }
        }
    }
    if !cni {
        if seen.cni_nft || !fws.is_empty() || unknown {
            log::warn!(
                "CNI mode's port mappings stay (table inet {} or chains ve-nat-cni-*): CNI \
                 DEL or GC removes a container's, `ve-nat down --cni` all; CNI containers \
                 are not masqueraded until the next CNI ADD or `ve-nat up`",
                nft_cni::TABLE
            );
        }
        return errors;
    }
    if seen.cni_nft {
        let done = match nl {
            Some(nl) => nl
                .delete_table(
                    netlink_packet_netfilter::NetfilterProtoFamily::Inet,
                    nft_cni::TABLE,
                )
                .map_err(|e| Error::io(format!("deleting table inet {}", nft_cni::TABLE), e)),
            None => native::nft(&["delete", "table", "inet", nft_cni::TABLE], None).map(|_| true),
        };
        match done {
            Ok(_) => log::info!("table inet {} removed", nft_cni::TABLE),
            Err(e) => errors.push(e),
        }
    }
    for fw in fws {
        match ipt_cni::remove(&fw) {
            Ok(_) => log::info!("{} {}: chains ve-nat-cni-* removed", fw.family, fw.kind),
            Err(e) => errors.push(e.context(format!("{} {}", fw.family, fw.kind))),
        }
    }
    errors
}

fn down_rules(name: BackendName, cni: bool) -> Result<()> {
    let chosen = match name.explicit() {
        Some(c) => c,
        // Either way `down` removes ours from every backend: only what decides how it
        // goes is looked at (no nft listing, see `down_nftables`).
        None => {
            let (c, why) = backend::pick(&backend::Facts {
                nft_installed: native::installed().is_ok(),
                legacy_in_use: backend::legacy_in_use(),
                iptables_forward_drops: Vec::new(),
            });
            log::info!("--backend auto: {c:?} ({why})");
            c
        }
    };
    match chosen {
        Chosen::Nftables => down_nftables(cni),
        Chosen::Iptables(b) => down_iptables(b, cni),
    }
}

/// Delete table inet ve-nat and whatever of ours the iptables backends hold. The table
/// goes over netlink (see `nfnl`): no nft process unless route_localnet is on somewhere,
/// when the table's own patterns must be read before it goes.
fn down_nftables(cni: bool) -> Result<()> {
    // nft is needed (exit 69 without it).
    native::installed()?;
    let _lock = lock::acquire(LOCK_WAIT)?;
    let sys = Sysctl::default();
    let mut nl = nfnl::Nfnl::open()
        .map_err(|e| log::debug!("nf_tables netlink: {e}; using nft"))
        .ok();
    let localnet = route_localnet_anywhere(&sys)?;
    // What is where, and (with route_localnet on somewhere) the table's --internal
    // patterns: over netlink, or from nft's listing when netlink cannot tell.
    let listed = nl.as_mut().map(|nl| -> std::io::Result<_> {
        let seen = Seen::of_netlink(nl)?;
        let pats = if localnet {
            nl.iifnames(
                netlink_packet_netfilter::NetfilterProtoFamily::Inet,
                nft_table::TABLE,
                "prerouting",
            )?
        } else {
            Vec::new()
        };
        Ok((seen, nft_table::patterns_of(&pats)))
    });
    let (seen, mut pats) = match listed {
        Some(Ok(found)) => found,
        other => {
            if let Some(Err(e)) = other {
                log::debug!("nf_tables netlink: {e}; using nft");
            }
            let rs = native::ruleset()?;
            (Seen::of_ruleset(&rs), nft_table::internal_patterns(&rs))
        }
    };
    // A legacy table that cannot be listed may hold ours: an error, once the rest is
    // done (down is best effort).
    let (holders, mut errors) = iptables_holding(seen.shell);
    if localnet {
        for fw in &holders {
            pats.extend(localnet_patterns(apply::installed(fw).ok().as_deref()));
        }
        pats.extend(config::DEFAULT_INTERNAL.parse::<config::IfPattern>());
        // route_localnet off while the loopback guard is still there.
        errors.extend(sys.clear_route_localnet(&pats));
    }
    if let Err(e) = delete_native(nl.as_mut()) {
        errors.push(e);
    }
    for fw in &holders {
        log::info!(
            "{}: removing ve-nat's rules from the {} backend",
            fw.family,
            fw.kind
        );
    }
    errors.extend(remove_from(holders));
    errors.extend(down_cni(cni, seen, nl.as_mut()));
    joined(errors)
}

/// Delete table inet ve-nat (gone already is success): over netlink, or with nft when
/// there is no netlink socket.
fn delete_native(nl: Option<&mut nfnl::Nfnl>) -> Result<()> {
    let was = match nl {
        Some(nl) => nl
            .delete_table(
                netlink_packet_netfilter::NetfilterProtoFamily::Inet,
                nft_table::TABLE,
            )
            .map_err(|e| Error::io("deleting table inet ve-nat", e))?,
        None => native::delete()?,
    };
    if was {
        log::info!("table inet ve-nat removed");
    } else {
        log::info!("table inet ve-nat was not there");
    }
    Ok(())
}

/// Whether any interface of this namespace has route_localnet on.
fn route_localnet_anywhere(sys: &Sysctl) -> Result<bool> {
    for i in sys.interfaces()? {
        if sys.route_localnet(&i)? == Some(true) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn down_iptables(backend: Option<Backend>, cni: bool) -> Result<()> {
    let mut errors = Vec::new();
    let v4 = Iptables::open(backend, Family::Ipv4)?;
    let _lock = lock::acquire(LOCK_WAIT)?;
    let have = apply::installed(&v4).ok();
    // route_localnet off while the loopback guard is still there.
    errors.extend(Sysctl::default().clear_route_localnet(&localnet_patterns(have.as_deref())));
    let rs = nft::ruleset();
    if let Err(e) = remove_native(rs.as_deref()) {
        errors.push(e);
    }
    errors.extend(down_one(&v4, have));
    if let Some(v6) = Iptables::open_optional(backend, Family::Ipv6)? {
        if let Some(have) = ours_in_unused(&v6).filter(|h| has_any(h)) {
            errors.extend(
                down_one(&v6, Some(have))
                    .into_iter()
                    .map(|e| e.context("IPv6")),
            );
        }
    }
    let (others, failed) = others_holding_ours(&v4);
    errors.extend(failed);
    for fw in others {
        log::info!(
            "{}: removing ve-nat's rules from the {} backend too",
            fw.family,
            fw.kind
        );
        let have = apply::installed(&fw).ok();
        let ctx = format!("{} {}", fw.family, fw.kind);
        errors.extend(down_one(&fw, have).into_iter().map(|e| e.context(&ctx)));
    }
    // The listing from before: what goes here is ve-nat's own chains, never CNI's.
    let mut seen = rs.as_deref().map(Seen::of_ruleset).unwrap_or_default();
    // Without nft, iptables-nft's CNI chains are asked for through iptables-save.
    if rs.is_none() && v4.kind == "nf_tables" {
        seen.cni_ipt[0] = match cni_chains_in(&v4, cni) {
            Ok(there) => there,
            Err(e) => {
                errors.extend(e);
                false
            }
        };
    }
    errors.extend(down_cni(cni, seen, nfnl::Nfnl::open().ok().as_mut()));
    joined(errors)
}

fn check(req: &Request, name: BackendName) -> Result<()> {
    need_net_admin()?;
    report(differences(req, name)?)
}

/// How what is installed differs from `req`, one line each (`check`, and the watcher).
fn differences(req: &Request, name: BackendName) -> Result<Vec<String>> {
    let rs = nft::ruleset();
    let mut diffs = match choose(name, rs.as_deref()) {
        Chosen::Nftables => check_nftables(req)?,
        Chosen::Iptables(b) => check_iptables(req, b)?,
    };
    if let Some(fw) = firewalld::Firewalld::connect() {
        diffs.extend(firewalld::differences(&fw, &firewalld::wanted(req))?);
    }
    Ok(diffs)
}

fn check_nftables(req: &Request) -> Result<Vec<String>> {
    let rs = native::ruleset()?;
    let mut diffs = Vec::new();
    let ext = req.external.as_str();
    if !iface::exists(ext)? {
        diffs.push(iface::missing(ext));
    }
    diffs.extend(native::differences(Some(req), &rs));
    let sys = Sysctl::default();
    for f in req.families() {
        if sys.forwarding(f)? != Some(true) {
            diffs.push(format!("{} is not 1", Sysctl::name(f)));
        }
    }
    diffs.extend(sys.localhost_differences(req)?);
    for fw in iptables_holding_ours(&rs) {
        diffs.push(format!(
            "{}: ve-nat's chains are in the {} iptables backend too, and both apply \
             (`ve-nat up` or `down` removes them)",
            fw.family, fw.kind
        ));
    }
    for chain in foreign_drops(nft::dropping_forward_chains(&rs, &req.families(), false)) {
        diffs.push(drop_text(&chain));
    }
    Ok(diffs)
}

fn check_iptables(req: &Request, backend: Option<Backend>) -> Result<Vec<String>> {
    let (fws, other) = open(req, backend)?;
    let mut diffs = Vec::new();
    if let Some(rs) = nft::ruleset() {
        if native::present(&rs) {
            diffs.push(
                "table inet ve-nat (the nftables backend's) is installed too, and both \
                 apply (`ve-nat up` or `down` removes it)"
                    .to_string(),
            );
        }
    }
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
    diffs.extend(sys.localhost_differences(req)?);
    if let Some(have) = other.as_ref().and_then(ours_in_unused) {
        for d in apply::differences(&have, None) {
            diffs.push(format!("IPv6: {d}"));
        }
    }
    for fw in others_holding_ours_warned(&fws[0]) {
        diffs.push(format!(
            "{}: ve-nat's chains are in the {} backend too, and both backends apply \
             (`ve-nat up` or `down` removes them)",
            fw.family, fw.kind
        ));
    }
    for chain in foreign_drops(dropping_chains(&fws, &req.families())) {
        diffs.push(drop_text(&chain));
    }
    Ok(diffs)
}

/// `check`'s verdict: exit 0 when `diffs` is empty, else 1 naming the first.
fn report(diffs: Vec<String>) -> Result<()> {
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

fn status(name: BackendName, json: bool) -> Result<()> {
    need_net_admin()?;
    let rs = nft::ruleset();
    match choose(name, rs.as_deref()) {
        Chosen::Nftables => status_nftables(json),
        Chosen::Iptables(b) => status_iptables(b, json),
    }
}

/// One line of `status --json` with the nftables backend: one chain, map or set of
/// table inet ve-nat.
#[derive(Debug, Serialize)]
struct NftStatus {
    backend: &'static str,
    table: &'static str,
    /// `chain`, `map` or `set`
    kind: String,
    name: String,
    installed: bool,
    /// net.ipv4.ip_forward and net.ipv6.conf.all.forwarding
    forwarding_ipv4: Option<bool>,
    forwarding_ipv6: Option<bool>,
    /// A chain's `type ... hook ...` line, a map's or set's `type ...` line
    head: String,
    rules: Vec<native::RuleLine>,
    elements: Vec<String>,
}

fn status_nftables(json: bool) -> Result<()> {
    let sys = Sysctl::default();
    let (f4, f6) = (sys.forwarding(Family::Ipv4)?, sys.forwarding(Family::Ipv6)?);
    let parts = native::listing()?;
    let installed = parts.is_some();
    let lines: Vec<NftStatus> = match parts {
        Some(ps) => ps
            .into_iter()
            .map(|p| NftStatus {
                backend: "nftables",
                table: "inet ve-nat",
                kind: p.kind,
                name: p.name,
                installed,
                forwarding_ipv4: f4,
                forwarding_ipv6: f6,
                head: p.head,
                rules: p.rules,
                elements: p.elements,
            })
            .collect(),
        None => nft_table::CHAINS
            .iter()
            .map(|(name, ..)| NftStatus {
                backend: "nftables",
                table: "inet ve-nat",
                kind: "chain".into(),
                name: name.to_string(),
                installed,
                forwarding_ipv4: f4,
                forwarding_ipv6: f6,
                head: String::new(),
                rules: Vec::new(),
                elements: Vec::new(),
            })
            .collect(),
    };
    if json {
        let mut text = String::new();
        for l in &lines {
            text.push_str(&output::json_line(l)?);
        }
        return output::print(&text);
    }
    let on = |f: Option<bool>| match f {
        Some(true) => "on",
        Some(false) => "off",
        None => "n/a",
    };
    let fwd = format!("v4 {} v6 {}", on(f4), on(f6));
    let mut rows = Vec::new();
    for l in &lines {
        let head = |what: String, p: String, b: String| {
            vec![
                "nftables".to_string(),
                fwd.clone(),
                format!("{} {}", l.kind, l.name),
                p,
                b,
                what,
            ]
        };
        if !l.installed {
            rows.push(head("(not installed)".into(), String::new(), String::new()));
            continue;
        }
        if l.kind == "chain" {
            if l.rules.is_empty() {
                rows.push(head("(empty)".into(), String::new(), String::new()));
            }
            for r in &l.rules {
                rows.push(head(
                    r.rule.clone(),
                    r.packets.to_string(),
                    r.bytes.to_string(),
                ));
            }
        } else {
            if l.elements.is_empty() {
                rows.push(head("(no elements)".into(), String::new(), String::new()));
            }
            for e in &l.elements {
                rows.push(head(e.clone(), String::new(), String::new()));
            }
        }
    }
    output::print(&output::table(
        &["BACKEND", "FORWARDING", "IN", "PACKETS", "BYTES", "RULE"],
        &rows,
    ))
}

fn status_iptables(backend: Option<Backend>, json: bool) -> Result<()> {
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
