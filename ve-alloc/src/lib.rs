//! `ve-alloc`: leases each container a host/container address pair from a pool and
//! remembers it in an embedded store.

mod alloc;
pub mod doc;
mod import;
mod lease;
mod pool;
mod store;

use std::{
    collections::HashSet,
    ffi::OsString,
    io::{BufRead, IsTerminal},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{CommandFactory, Parser, Subcommand};

use common::{cli::Verbosity, name, output, Error, Result};

use crate::{
    alloc::Pools,
    lease::{Lease, ROW_HEADERS},
    pool::{Layout, Pool},
    store::{SqliteStore, Store},
};

pub use crate::store::Txn;

/// Where the store lives unless told otherwise.
pub const DEFAULT_STORE: &str = "/var/lib/ve-alloc";
/// The configuration file read when it exists (`--config` names another).
pub const DEFAULT_CONFIG: &str = "/etc/ve-alloc.conf";
pub const DEFAULT_POOL: &str = "10.233.0.0/16";

#[derive(Debug, Parser)]
#[command(
    name = "ve-alloc",
    version,
    about = "Lease host/container address pairs to containers",
    long_about = "Lease each container a host/container address pair (IPv4, and IPv6 when an \
IPv6 pool is configured) from a pool, remember it in an embedded store, and free it again.\n\n\
Settings come from flags, then VE_ALLOC_* environment variables, then the config file \
(/etc/ve-alloc.conf, KEY=value lines: STORE, POOL, POOL6, LAYOUT), then defaults."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Store directory [default: /var/lib/ve-alloc]
    #[arg(long, env = "VE_ALLOC_STORE", global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    /// IPv4 pool new leases come from [default: 10.233.0.0/16]
    #[arg(long, env = "VE_ALLOC_POOL", global = true, value_name = "CIDR")]
    pool: Option<String>,
    /// IPv6 pool for IPv6 pairs alongside the IPv4 ones ("none": no IPv6) [default: none]
    #[arg(long, env = "VE_ALLOC_POOL6", global = true, value_name = "CIDR")]
    pool6: Option<String>,
    /// How the IPv4 pool is cut: `pairs` (two consecutive addresses per container) or
    /// `nixos` (10.233.N.1 / 10.233.N.2) [default: pairs]
    #[arg(long, env = "VE_ALLOC_LAYOUT", global = true, value_name = "LAYOUT")]
    layout: Option<String>,
    /// Configuration file [default: /etc/ve-alloc.conf, when it exists]
    #[arg(long, env = "VE_ALLOC_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How long to wait for a store another process holds locked before exit 75
    #[arg(long, global = true, value_name = "SECONDS", default_value = "10")]
    wait: f64,
    /// Print JSON instead of KEY=value lines or columns
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    verbosity: Verbosity,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Lease an address pair to NAME (its existing lease if it has one) and print it
    Alloc { name: String },
    /// Print the container address of NAME (IPv4, else IPv6), like `nixos-container show-ip`
    ShowIp { name: String },
    /// Print the whole lease of NAME
    Show { name: String },
    /// Free the leases of the NAMEs; an unknown name is not an error
    Release {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List all leases
    List {
        /// /etc/hosts lines instead: `ADDRESS NAME.DOMAIN`, as NixOS writes them
        #[arg(long, conflicts_with = "json")]
        hosts: bool,
        /// Domain for --hosts
        #[arg(long, default_value = "containers", requires = "hosts")]
        domain: String,
    },
    /// Record a static lease with chosen addresses (inside the pool, not taken)
    Reserve {
        name: String,
        #[arg(long, value_name = "IPV4")]
        host_address: Option<Ipv4Addr>,
        #[arg(long, value_name = "IPV4", requires = "host_address")]
        local_address: Option<Ipv4Addr>,
        #[arg(long, value_name = "IPV6")]
        host_address6: Option<Ipv6Addr>,
        #[arg(long, value_name = "IPV6", requires = "host_address6")]
        local_address6: Option<Ipv6Addr>,
    },
    /// Release every dynamic lease whose name is not given (arguments, or one per line on
    /// stdin); static leases are kept. Prints the names released.
    Gc {
        /// Names of the containers that still exist; `-` or none: read stdin
        names: Vec<String>,
        /// Only print what would be released
        #[arg(long)]
        dry_run: bool,
    },
    /// Record the addresses of NixOS container conf files (DIR/*.conf) as static leases
    /// named after the files
    Import { dir: PathBuf },
}

/// The clap definition, for man pages and completions.
pub fn command() -> clap::Command {
    doc::MANUAL.attach(Cli::command())
}

/// Run `ve-alloc` with `args` (the program name first).
pub fn run(args: Vec<OsString>) -> Result<()> {
    let cli: Cli = common::cli::parse(command(), args)?;
    cli.verbosity.init_logging("ve-alloc");
    let settings = Settings::resolve(&cli)?;
    // Validate everything the command needs before opening the store.
    let names: Vec<&str> = match &cli.cmd {
        Cmd::Alloc { name }
        | Cmd::ShowIp { name }
        | Cmd::Show { name }
        | Cmd::Reserve { name, .. } => vec![name],
        Cmd::Release { names } => names.iter().map(String::as_str).collect(),
        _ => vec![],
    };
    for n in names {
        name::validate(n)?;
    }
    let mut store = SqliteStore::new(&settings.store, settings.wait);
    match &cli.cmd {
        Cmd::Alloc { name } => {
            let pools = settings.pools()?;
            let lease = store.write(|tx| alloc::allocate(tx, &pools, name))?;
            print_lease(&lease, cli.json)
        }
        Cmd::Show { name } => print_lease(&get(&mut store, name)?, cli.json),
        Cmd::ShowIp { name } => {
            let lease = get(&mut store, name)?;
            let ip = lease
                .container_ip()
                .ok_or_else(|| Error::no_input(format!("{name} has no container address")))?;
            if cli.json {
                output::print(&output::json_line(&serde_json::json!({
                    "name": name, "address": ip
                }))?)
            } else {
                output::print(&format!("{ip}\n"))
            }
        }
        Cmd::Release { names } => {
            let release = |tx: &mut dyn Txn| {
                names
                    .iter()
                    .map(|n| tx.remove(n).map(|removed| (n, removed)))
                    .collect::<Result<Vec<_>>>()
            };
            // Releasing names that hold nothing touches nothing, not even the lock.
            let held = store.read(|tx| {
                names
                    .iter()
                    .try_fold(false, |any, n| Ok(any || tx.get(n)?.is_some()))
            })?;
            let gone = if held {
                store.write(release)?
            } else {
                names.iter().map(|n| (n, false)).collect()
            };
            for (n, removed) in gone {
                if removed {
                    log::info!("released {n}");
                } else {
                    log::warn!("no lease for {n}; nothing to release");
                }
            }
            Ok(())
        }
        Cmd::List { hosts, domain } => {
            let leases = store.read(|tx| tx.all())?;
            if *hosts {
                name::validate(domain).map_err(|e| e.context("--domain"))?;
                output::print(&hosts_lines(&leases, domain))
            } else {
                print_leases(&leases, cli.json)
            }
        }
        Cmd::Reserve {
            name,
            host_address,
            local_address,
            host_address6,
            local_address6,
        } => {
            if host_address.is_none() && host_address6.is_none() {
                return Err(Error::usage(
                    "reserve needs --host-address and --local-address (or their 6 variants)",
                ));
            }
            if host_address.is_some() != local_address.is_some()
                || host_address6.is_some() != local_address6.is_some()
            {
                return Err(Error::usage("give host and local addresses in pairs"));
            }
            let pools = settings.pools()?;
            let mut want = Lease::new(name);
            want.host_address = *host_address;
            want.local_address = *local_address;
            want.host_address6 = *host_address6;
            want.local_address6 = *local_address6;
            let lease = store.write(|tx| alloc::reserve(tx, &pools, &want))?;
            print_lease(&lease, cli.json)
        }
        Cmd::Gc { names, dry_run } => {
            let keep = gc_names(names)?;
            let gone = if *dry_run {
                store.read(|tx| alloc::gc(tx, &keep, true))?
            } else {
                store.write(|tx| alloc::gc(tx, &keep, false))?
            };
            if cli.json {
                output::print(&output::json_line(&gone)?)
            } else {
                let text: String = gone.iter().map(|l| format!("{}\n", l.name)).collect();
                output::print(&text)
            }
        }
        Cmd::Import { dir } => {
            let leases = import::read_dir(dir)?;
            let done = store.write(|tx| {
                leases
                    .iter()
                    .map(|l| alloc::put_checked(tx, l).map_err(|e| e.context(&l.name)))
                    .collect::<Result<Vec<_>>>()
            })?;
            print_leases(&done, cli.json)
        }
    }
}

fn get(store: &mut SqliteStore, name: &str) -> Result<Lease> {
    store
        .read(|tx| tx.get(name))?
        .ok_or_else(|| Error::no_input(format!("no lease for {name}")))
}

fn print_lease(lease: &Lease, json: bool) -> Result<()> {
    if json {
        output::print(&output::json_line(lease)?)
    } else {
        output::print(&output::env_lines(&lease.env()))
    }
}

fn print_leases(leases: &[Lease], json: bool) -> Result<()> {
    if json {
        output::print(&output::json_line(&leases)?)
    } else {
        let rows: Vec<Vec<String>> = leases.iter().map(Lease::row).collect();
        output::print(&output::table(&ROW_HEADERS, &rows))
    }
}

/// `/etc/hosts` lines for every container address, as NixOS writes them.
fn hosts_lines(leases: &[Lease], domain: &str) -> String {
    let mut s = String::new();
    for l in leases {
        for ip in [
            l.local_address.map(Into::into),
            l.local_address6.map(Into::into),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<std::net::IpAddr>>()
        {
            s.push_str(&format!("{ip} {}.{domain}\n", l.name));
        }
    }
    s
}

/// The names `gc` keeps: its arguments, or stdin lines when there are none (or `-`).
fn gc_names(args: &[String]) -> Result<HashSet<String>> {
    let mut names: Vec<String> = args.iter().filter(|a| *a != "-").cloned().collect();
    if args.is_empty() || args.iter().any(|a| a == "-") {
        let stdin = std::io::stdin();
        if args.is_empty() && stdin.is_terminal() {
            return Err(Error::usage(
                "gc needs the names of the containers that still exist, as arguments or on stdin",
            ));
        }
        for line in stdin.lock().lines() {
            let line = line.map_err(|e| Error::io("reading names from stdin", e))?;
            let n = line.trim();
            if !n.is_empty() {
                names.push(n.to_string());
            }
        }
    }
    for n in &names {
        name::validate(n)?;
    }
    Ok(names.into_iter().collect())
}

/// Settings after flags, environment, config file and defaults are merged.
struct Settings {
    store: PathBuf,
    pool: (String, bool),
    pool6: Option<(String, bool)>,
    layout: (String, bool),
    wait: Duration,
}

impl Settings {
    fn resolve(cli: &Cli) -> Result<Settings> {
        let (path, explicit) = match &cli.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let file = read_config(&path, explicit)?;
        // Each value remembers whether it came from the config file, whose errors are
        // configuration errors (78) rather than bad input (65).
        let pick = |flag: &Option<String>, key: &str, default: &str| match (flag, file.get(key)) {
            (Some(v), _) => (v.clone(), false),
            (None, Some(v)) => (v.clone(), true),
            (None, None) => (default.to_string(), false),
        };
        let pool6 = pick(&cli.pool6, "POOL6", "none");
        if !(cli.wait.is_finite() && cli.wait >= 0.0 && cli.wait <= 86_400.0) {
            return Err(Error::usage(
                "--wait takes a number of seconds from 0 to 86400",
            ));
        }
        Ok(Settings {
            store: cli
                .store
                .clone()
                .or_else(|| file.get("STORE").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE)),
            pool: pick(&cli.pool, "POOL", DEFAULT_POOL),
            pool6: (pool6.0 != "none" && !pool6.0.is_empty()).then_some(pool6),
            layout: pick(&cli.layout, "LAYOUT", "pairs"),
            wait: Duration::from_secs_f64(cli.wait),
        })
    }

    fn pools(&self) -> Result<Pools> {
        let from_file = |e: Error, yes: bool| {
            if yes {
                Error::config(format!("{} (in the config file)", e.message()))
            } else {
                e
            }
        };
        let layout: Layout = self
            .layout
            .0
            .parse()
            .map_err(|e| from_file(e, self.layout.1))?;
        let v4 = Pool::parse(&self.pool.0, false, layout).map_err(|e| from_file(e, self.pool.1))?;
        let v6 = self
            .pool6
            .as_ref()
            .map(|(p, f)| Pool::parse(p, true, Layout::Pairs).map_err(|e| from_file(e, *f)))
            .transpose()?;
        Ok(Pools { v4, v6 })
    }
}

fn read_config(path: &Path, explicit: bool) -> Result<std::collections::BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(Default::default())
        }
        Err(e) => return Err(Error::io(format!("reading config {}", path.display()), e)),
    };
    let origin = path.display().to_string();
    let map = output::parse_env(&text, &origin).map_err(|e| Error::config(e.message()))?;
    if let Some(k) = map
        .keys()
        .find(|k| !["STORE", "POOL", "POOL6", "LAYOUT"].contains(&k.as_str()))
    {
        return Err(Error::config(format!(
            "{origin}: unknown setting {k} (known: STORE, POOL, POOL6, LAYOUT)"
        )));
    }
    Ok(map)
}
