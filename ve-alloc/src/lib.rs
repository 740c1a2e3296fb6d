//! `ve-alloc`: leases each container a host/container address pair from a pool and
//! remembers it in an embedded store.

mod addr;
mod alloc;
mod cni;
pub mod doc;
mod import;
mod lease;
mod pool;
mod store;

use std::{
    collections::HashSet,
    ffi::OsString,
    io::{BufRead, IsTerminal},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{
    builder::TypedValueParser as _, CommandFactory, FromArgMatches as _, Parser, Subcommand,
};

use common::{cli::Verbosity, name, output, Error, Kind, Result};

use crate::{
    alloc::Pools,
    lease::{Lease, ROW_HEADERS},
    pool::{Layout, Pool},
    store::{
        etcd::{EtcdStore, Spec},
        AnyStore, Durability, SqliteStore,
    },
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
(/etc/ve-alloc.conf, KEY=value lines: STORE, POOL, POOL6, LAYOUT, DURABILITY, and for an etcd store \
NODE, NODE_ADDRESS, BLOCK_SIZE, ETCD_USER, ETCD_PASSWORD_FILE, ETCD_CACERT, ETCD_CERT, \
ETCD_KEY), then defaults. An empty \
value anywhere means \"not set here\": the next source decides."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Store directory, holding leases.db (a directory, not the file), or a fleet's
    /// etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (etcd+tls://... for TLS)
    /// [default: /var/lib/ve-alloc]
    #[arg(long, env = "VE_ALLOC_STORE", global = true, value_name = "DIR|URL",
          value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from))]
    store: Option<PathBuf>,
    /// IPv4 pool new leases come from [default: 10.233.0.0/16]
    #[arg(long, env = "VE_ALLOC_POOL", global = true, value_name = "CIDR")]
    pool: Option<String>,
    /// IPv6 pool for IPv6 pairs alongside the IPv4 ones ("none": no IPv6) [default: none]
    #[arg(long, env = "VE_ALLOC_POOL6", global = true, value_name = "CIDR")]
    pool6: Option<String>,
    /// How the IPv4 pool is cut into pairs [default: pairs]
    #[arg(
        long,
        env = "VE_ALLOC_LAYOUT",
        global = true,
        value_name = "LAYOUT",
        value_parser = LayoutParser
    )]
    layout: Option<String>,
    /// This host's node name in an etcd store [default: the hostname]
    #[arg(long, env = "VE_ALLOC_NODE", global = true, value_name = "NAME")]
    node: Option<String>,
    /// Where other nodes route to this node's containers (etcd store; recorded with the
    /// node)
    #[arg(
        long,
        env = "VE_ALLOC_NODE_ADDRESS",
        global = true,
        value_name = "ADDR"
    )]
    node_address: Option<String>,
    /// Prefix length of the IPv4 blocks an etcd store's pool is cut into (IPv6 blocks
    /// hold as many addresses); the whole fleet uses one [default: 26]
    #[arg(
        long,
        env = "VE_ALLOC_BLOCK_SIZE",
        global = true,
        value_name = "PREFIXLEN"
    )]
    block_size: Option<String>,
    /// User name for an etcd store with authentication enabled (needs
    /// --etcd-password-file)
    #[arg(long, env = "VE_ALLOC_ETCD_USER", global = true, value_name = "USER")]
    etcd_user: Option<String>,
    /// File holding the password of --etcd-user (one line)
    #[arg(
        long,
        env = "VE_ALLOC_ETCD_PASSWORD_FILE",
        global = true,
        value_name = "FILE"
    )]
    etcd_password_file: Option<String>,
    /// CA bundle that signed the etcd members' certificates (etcd+tls:// store)
    /// [default: /etc/ssl/certs/ca-certificates.crt]
    #[arg(long, env = "VE_ALLOC_ETCD_CACERT", global = true, value_name = "FILE")]
    etcd_cacert: Option<String>,
    /// Client certificate (PEM) for an etcd that checks them (--client-cert-auth);
    /// needs --etcd-key
    #[arg(long, env = "VE_ALLOC_ETCD_CERT", global = true, value_name = "FILE")]
    etcd_cert: Option<String>,
    /// Private key (PEM) of --etcd-cert
    #[arg(long, env = "VE_ALLOC_ETCD_KEY", global = true, value_name = "FILE")]
    etcd_key: Option<String>,
    /// Configuration file [default: /etc/ve-alloc.conf, when it exists]
    // Parsed as an OsString so that an empty value reaches `Settings::resolve`, where
    // it means "not set", as everywhere else (clap's PathBuf parser refuses it).
    #[arg(long, env = "VE_ALLOC_CONFIG", global = true, value_name = "FILE",
          value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from))]
    config: Option<PathBuf>,
    /// How long to wait for a store another process holds locked before exit 75
    #[arg(long, global = true, value_name = "SECONDS", default_value = "10")]
    wait: f64,
    /// What a printed lease survives (SQLite store; an etcd store refuses the flag):
    /// full (a power cut; every write synced) or normal (a kill, not a power cut;
    /// faster) [default: full]
    #[arg(long, env = "VE_ALLOC_DURABILITY", global = true, value_name = "LEVEL")]
    durability: Option<String>,
    /// Print JSON instead of KEY=value lines or columns (lists: one object per line)
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    verbosity: Verbosity,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Lease an address pair to each NAME (its existing lease if it has one) and print it
    ///
    /// Several names are leased in one transaction (all or none; on an etcd store in as
    /// many as etcd's 128 operations per transaction need, each all or none, and a
    /// failure partway keeps the leases committed before it) and need --json: one
    /// lease per line (JSON Lines), in the order given, a repeated name once; that is
    /// what `ve-link up --from -` reads. Running it again prints them all.
    Alloc {
        /// Container names: 1-63 bytes of letters, digits, '-', '_', '.'
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Print the container address of NAME (IPv4, else IPv6), like `nixos-container show-ip`
    ShowIp {
        /// Container name
        name: String,
    },
    /// Print the whole lease of NAME
    Show {
        /// Container name
        name: String,
    },
    /// Free the leases of the NAMEs; an unknown name is not an error
    Release {
        /// Container names; `-` reads more names from stdin, one per line
        #[arg(required = true, value_name = "NAME")]
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
        /// Container name
        name: String,
        /// The host end's IPv4 address (HOST_ADDRESS), inside --pool
        #[arg(long, value_name = "IPV4")]
        host_address: Option<Ipv4Addr>,
        /// The container end's IPv4 address (LOCAL_ADDRESS), inside --pool
        #[arg(long, value_name = "IPV4", requires = "host_address")]
        local_address: Option<Ipv4Addr>,
        /// The host end's IPv6 address (HOST_ADDRESS6), inside --pool6
        #[arg(long, value_name = "IPV6")]
        host_address6: Option<Ipv6Addr>,
        /// The container end's IPv6 address (LOCAL_ADDRESS6), inside --pool6
        #[arg(long, value_name = "IPV6", requires = "host_address6")]
        local_address6: Option<Ipv6Addr>,
    },
    /// Release the dynamic leases of containers that are gone; print their names
    ///
    /// Every dynamic lease whose name is not given (as arguments, or one per line on
    /// stdin) is released; static leases are kept. An empty list is refused (exit 65)
    /// unless --all-gone says that no container is left.
    Gc {
        /// Names of the containers that still exist; `-` or none: read stdin
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Only print what would be released
        #[arg(long)]
        dry_run: bool,
        /// No container exists any more: accept an empty list and release every
        /// dynamic lease
        #[arg(long)]
        all_gone: bool,
    },
    /// Record the addresses of NixOS container conf files (DIR/*.conf) as static leases
    /// named after the files
    Import {
        /// Directory of NixOS container conf files, e.g. /etc/nixos-containers
        dir: PathBuf,
    },
    /// Print the blocks of the other nodes of an etcd store, `BLOCK via ADDR` per line
    ///
    /// What `ve-link routes --from -` reads to route every other node's containers
    /// through that node; --json gives JSON Lines with the node's name. Nodes without a
    /// --node-address are left out (with a warning). The empty set is a blank line.
    Routes {
        /// Keep printing: the whole set again, then a blank line, each time it changes
        /// (through etcd's watch); with --json one {"revision":N,"routes":[...]} line per
        /// set. For `ve-link routes --from - --follow`
        #[arg(long)]
        watch: bool,
    },
    /// The nodes of an etcd store
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Forget a node known to be gone for good: release its dynamic leases, free its
    /// blocks for other nodes and remove its record; print the released leases' names
    ///
    /// Only for a node that will not come back with its containers: their addresses
    /// can be handed out again at once. A node never heard of is no error.
    Release {
        /// The node's name (its --node)
        name: String,
    },
}

/// `--layout`: one of the [`Layout`] names, which completions offer, or empty (the next
/// source decides, as everywhere).
#[derive(Clone)]
struct LayoutParser;

impl clap::builder::TypedValueParser for LayoutParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<String, clap::Error> {
        if value.is_empty() {
            return Ok(String::new());
        }
        clap::builder::EnumValueParser::<Layout>::new()
            .parse_ref(cmd, arg, value)
            .map(|l| l.to_string())
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        use clap::ValueEnum;
        Some(Box::new(
            Layout::value_variants()
                .iter()
                .filter_map(Layout::to_possible_value),
        ))
    }
}

/// The clap definition, for man pages and completions.
pub fn command() -> clap::Command {
    doc::MANUAL.attach(Cli::command())
}

/// The parsed command line. `run` needs the matches themselves (where --durability came
/// from), so it converts them here: a clap error is a usage error like any other.
fn cli_from(matches: &clap::ArgMatches) -> Result<Cli> {
    Cli::from_arg_matches(matches).map_err(common::cli::clap_error)
}

/// Run `ve-alloc` with `args` (the program name first).
pub fn run(args: Vec<OsString>) -> Result<()> {
    // CNI_COMMAND set: a CNI IPAM plugin (stdin config, result on stdout), not the shell tool.
    if common::cni::command().is_some() {
        return cni::run();
    }
    let matches = common::cli::parse_matches(command(), args)?;
    let cli = cli_from(&matches)?;
    cli.verbosity.init_logging("ve-alloc");
    let durability_flag =
        matches.value_source("durability") == Some(clap::parser::ValueSource::CommandLine);
    let settings = Settings::resolve(&cli, durability_flag)?;
    // Validate everything the command needs before opening the store.
    let names: Vec<&str> = match &cli.cmd {
        Cmd::Alloc { names } => names.iter().map(String::as_str).collect(),
        Cmd::ShowIp { name }
        | Cmd::Show { name }
        | Cmd::Reserve { name, .. }
        | Cmd::Node {
            cmd: NodeCmd::Release { name },
        } => vec![name],
        _ => vec![],
    };
    for n in names {
        name::validate(n)?;
    }
    if let Cmd::Alloc { names } = &cli.cmd {
        if names.len() > 1 && !cli.json {
            return Err(Error::usage(
                "alloc of several names needs --json (one lease per line); \
                 KEY=value lines describe one container",
            ));
        }
    }
    if let Cmd::Alloc { names } = &cli.cmd {
        alloc::check_ifnames_among(&names.iter().collect::<Vec<_>>())?;
    }
    let mut store = match &settings.etcd {
        Some(e) => AnyStore::Etcd(EtcdStore::new(
            &e.spec,
            &e.node,
            e.node_address,
            e.block_prefix,
            e.auth.clone(),
            e.tls.clone(),
            settings.wait,
        )),
        None => AnyStore::Sqlite(
            SqliteStore::new(&settings.store, settings.wait).with_durability(settings.durability),
        ),
    };
    match &cli.cmd {
        Cmd::Alloc { names } => {
            let pools = settings.pools()?;
            let mut seen = HashSet::new();
            let names: Vec<&String> = names.iter().filter(|n| seen.insert(*n)).collect();
            let leases = store.allocate(&pools, &names)?;
            match leases.as_slice() {
                [one] => print_lease(one, cli.json),
                _ => print_json_lines(&leases),
            }
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
            let names = read_names(names, NoNames::None)?;
            let gone = store.release(&names)?;
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
            if *hosts {
                name::validate(domain).map_err(|e| e.context("--domain"))?;
            }
            let with_nodes = store.list()?;
            let leases: Vec<Lease> = with_nodes.iter().map(|(l, _)| l.clone()).collect();
            if *hosts {
                output::print(&hosts_lines(&leases, domain))
            } else if cli.json && with_nodes.iter().any(|(_, n)| n.is_some()) {
                let mut text = String::new();
                for (lease, node) in &with_nodes {
                    text.push_str(&output::json_line(&WithNode { lease, node })?);
                }
                output::print(&text)
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
        Cmd::Gc {
            names,
            dry_run,
            all_gone,
        } => {
            let none = if *all_gone {
                NoNames::StdinUnlessTerminal
            } else {
                NoNames::Stdin
            };
            let keep: HashSet<String> = read_names(names, none)?.into_iter().collect();
            if keep.is_empty() && !*all_gone {
                return Err(Error::data(
                    "gc got no names of containers that still exist, which would release \
                     every dynamic lease; give --all-gone if no container is left",
                ));
            }
            let gone = store.gc(&keep, *dry_run)?;
            if cli.json {
                print_json_lines(&gone)
            } else {
                let text: String = gone.iter().map(|l| format!("{}\n", l.name)).collect();
                output::print(&text)
            }
        }
        Cmd::Import { dir } => {
            let leases = import::read_dir(dir)?;
            let done = store.import(&leases)?;
            print_leases(&done, cli.json)
        }
        Cmd::Routes { watch } => {
            let AnyStore::Etcd(etcd) = &mut store else {
                return Err(Error::usage(
                    "routes needs an etcd store (--store etcd://...); a directory store \
                     serves one host",
                ));
            };
            if *watch {
                let json = cli.json;
                return etcd.watch_routes(settings.wait, |rev, routes| {
                    output::print(&store::etcd::render_route_set(rev, routes, json)?)
                });
            }
            let routes = etcd.routes()?;
            let mut text = String::new();
            for r in &routes {
                if cli.json {
                    text.push_str(&output::json_line(r)?);
                } else {
                    text.push_str(&format!("{} via {}\n", r.block, r.via));
                }
            }
            // The empty set is a blank line, so that `ve-link routes --from -` can tell
            // it from the nothing a failed `routes` leaves in the pipe.
            if routes.is_empty() && !cli.json {
                text.push('\n');
            }
            output::print(&text)
        }
        Cmd::Node {
            cmd: NodeCmd::Release { name },
        } => {
            let AnyStore::Etcd(etcd) = &mut store else {
                return Err(Error::usage(
                    "node release needs an etcd store (--store etcd://...); a directory store \
                     has no nodes",
                ));
            };
            // Each lease is printed once its release is committed, so that a failure
            // later still tells which are gone. A reader gone or a full disk on stdout
            // does not stop the release: its error comes after.
            let mut printed: Result<()> = Ok(());
            etcd.release_node(name, |l| {
                if printed.is_ok() {
                    printed = if cli.json {
                        output::json_line(l).and_then(|line| output::print(&line))
                    } else {
                        output::print(&format!("{}\n", l.name))
                    };
                }
            })?;
            printed
        }
    }
}

/// A lease with the node holding it, as `list --json` prints it on an etcd store.
#[derive(serde::Serialize)]
struct WithNode<'a> {
    #[serde(flatten)]
    lease: &'a Lease,
    node: &'a Option<String>,
}

fn get(store: &mut AnyStore, name: &str) -> Result<Lease> {
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
        print_json_lines(leases)
    } else {
        let rows: Vec<Vec<String>> = leases.iter().map(Lease::row).collect();
        output::print(&output::table(&ROW_HEADERS, &rows))
    }
}

/// JSON Lines: one lease per line, nothing else (no line at all for no lease).
fn print_json_lines(leases: &[Lease]) -> Result<()> {
    let mut text = String::new();
    for l in leases {
        text.push_str(&output::json_line(l)?);
    }
    output::print(&text)
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

/// How a command takes its names when it is given none.
enum NoNames {
    /// Nothing more (`release` requires arguments anyway).
    None,
    /// Read stdin; a terminal there is a usage error (`gc` would wait for typing).
    Stdin,
    /// Read stdin, but a terminal means no names (`gc --all-gone`).
    StdinUnlessTerminal,
}

/// Container names from `args`, where `-` stands for the lines of stdin (blank lines
/// skipped), and `none` says what no arguments at all mean. All are validated.
fn read_names(args: &[String], none: NoNames) -> Result<Vec<String>> {
    let mut names: Vec<String> = args.iter().filter(|a| *a != "-").cloned().collect();
    let stdin = std::io::stdin();
    let read = if args.is_empty() {
        match none {
            NoNames::None => false,
            NoNames::Stdin if stdin.is_terminal() => return Err(Error::usage(
                "gc needs the names of the containers that still exist, as arguments or on stdin",
            )),
            NoNames::Stdin => true,
            NoNames::StdinUnlessTerminal => !stdin.is_terminal(),
        }
    } else {
        args.iter().any(|a| a == "-")
    };
    if read {
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
    Ok(names)
}

/// Settings after flags, environment, config file and defaults are merged.
struct Settings {
    store: PathBuf,
    /// Set when the store is a fleet's etcd.
    etcd: Option<EtcdSettings>,
    pool: (String, bool),
    pool6: Option<(String, bool)>,
    layout: (String, bool),
    wait: Duration,
    durability: Durability,
}

/// A value from a flag or the environment; empty means not given.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|v| !v.is_empty())
}

impl Settings {
    /// `durability_flag`: --durability was given on the command line (not through
    /// the environment), which an etcd store refuses.
    fn resolve(cli: &Cli, durability_flag: bool) -> Result<Settings> {
        let (path, explicit) = match &cli.config {
            Some(p) if !p.as_os_str().is_empty() => (p.clone(), true),
            _ => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let file = read_config(&path, explicit)?;
        // Each value remembers whether it came from the config file, whose errors are
        // configuration errors (78) rather than bad input (65). An empty value anywhere
        // is no value: the next source decides.
        let from_file = |key: &str| file.get(key).map(String::as_str).filter(|v| !v.is_empty());
        let pick = |flag: Option<&str>, key: &str, default: &str| match (flag, from_file(key)) {
            (Some(v), _) => (v.to_string(), false),
            (None, Some(v)) => (v.to_string(), true),
            (None, None) => (default.to_string(), false),
        };
        let pool6 = pick(given(&cli.pool6), "POOL6", "none");
        if !(cli.wait.is_finite() && cli.wait >= 0.0 && cli.wait <= 86_400.0) {
            return Err(Error::usage(
                "--wait takes a number of seconds from 0 to 86400",
            ));
        }
        // A path, which need not be UTF-8, so not through `pick`.
        let (store, store_from_file) = match &cli.store {
            Some(p) if !p.as_os_str().is_empty() => (p.clone(), false),
            _ => match from_file("STORE") {
                Some(v) => (PathBuf::from(v), true),
                None => (PathBuf::from(DEFAULT_STORE), false),
            },
        };
        let etcd = match Spec::parse(&store.to_string_lossy()) {
            Some(spec) => {
                // Durability is the SQLite store's: etcd syncs every write on a quorum.
                // The environment and the config file may be shared with SQLite hosts,
                // so only the flag is refused.
                if durability_flag && given(&cli.durability).is_some() {
                    return Err(Error::usage(
                        "--durability is for a SQLite store; an etcd store syncs every \
                         write on a quorum of its members",
                    ));
                }
                let spec = spec.map_err(|why| {
                    store_error(
                        &format!(
                            "store {:?} is not a valid etcd URL \
                             (etcd[+tls]://HOST:PORT[,HOST:PORT...][/PREFIX]): {why}",
                            store.to_string_lossy()
                        ),
                        store_from_file.then_some(path.as_path()),
                    )
                })?;
                Some(EtcdSettings::resolve(cli, spec, &file, &path)?)
            }
            None => {
                check_store_path(&store, store_from_file.then_some(path.as_path()))?;
                None
            }
        };
        let settings = Settings {
            store,
            pool: pick(given(&cli.pool), "POOL", DEFAULT_POOL),
            pool6: (pool6.0 != "none").then_some(pool6),
            layout: pick(given(&cli.layout), "LAYOUT", "pairs"),
            wait: Duration::from_secs_f64(cli.wait),
            durability: match etcd {
                Some(_) => Durability::Full,
                None => durability(pick(given(&cli.durability), "DURABILITY", "full"))?,
            },
            etcd,
        };
        log::debug!(
            "store {}, pool {}, pool6 {}, layout {} (config {})",
            settings.store.display(),
            settings.pool.0,
            settings.pool6.as_ref().map_or("none", |p| p.0.as_str()),
            settings.layout.0,
            path.display()
        );
        Ok(settings)
    }

    fn pools(&self) -> Result<Pools> {
        let from_file = |e: Error, yes: bool| {
            if yes {
                Error::config(format!("{e} (in the config file)"))
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

/// Refuse store paths that cannot mean a store directory, before anything is created:
/// a URL (`etcd://...`: no such store in this version) and the database file itself
/// (`x/leases.db`, which would become a directory of that name). `config` names the
/// config file the path came from (its errors are 78), else it came from --store or
/// VE_ALLOC_STORE (64).
fn check_store_path(store: &Path, config: Option<&Path>) -> Result<()> {
    let text = store.to_string_lossy();
    let problem = if let Some((scheme, _)) = text.split_once("://").filter(|(s, _)| is_scheme(s)) {
        format!(
            "store {text:?} is a URL, but the only store URLs are \
             etcd://HOST:PORT[,HOST:PORT...][/PREFIX] and etcd+tls://... ({scheme}:// is not \
             one); give a directory or an etcd:// URL"
        )
    } else if let Some(scheme) = text
        .split_once(':')
        .map(|(s, _)| s)
        .filter(|s| STORE_SCHEMES.iter().any(|k| s.eq_ignore_ascii_case(k)))
    {
        format!(
            "store {text:?} looks like a mistyped URL (a {scheme}: store is written \
             etcd://HOST:PORT[,HOST:PORT...][/PREFIX], or etcd+tls://... for TLS); give a \
             directory or an etcd:// URL"
        )
    } else if store.extension().is_some_and(|x| x == "db") && !store.is_dir() {
        let dir = store
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        format!(
            "store {text:?} looks like a database file; the store is the directory that \
             holds {}: did you mean {}?",
            crate::store::DB_FILE,
            dir.display()
        )
    } else {
        return Ok(());
    };
    Err(store_error(&problem, config))
}

/// URL schemes a store string must not start with unless it is a valid store URL: a
/// typo such as `etcd:host:2379` would otherwise become a directory named `etcd:...`.
const STORE_SCHEMES: [&str; 6] = ["etcd", "etcd+http", "etcd+tls", "etcds", "http", "https"];

fn store_error(problem: &str, config: Option<&Path>) -> Error {
    match config {
        Some(c) => Error::config(format!("{}: STORE: {problem}", c.display())),
        None => Error::usage(format!("--store (or VE_ALLOC_STORE): {problem}")),
    }
}

/// How this host takes part in an etcd store.
struct EtcdSettings {
    spec: Spec,
    node: String,
    node_address: Option<IpAddr>,
    block_prefix: u8,
    auth: Option<crate::store::etcd::Credentials>,
    /// Set for an `etcd+tls://` store, its files read and checked.
    tls: Option<crate::store::etcd::Tls>,
}

impl EtcdSettings {
    /// `file` is the config file's settings (`path`); its errors are 78, a flag's or
    /// the environment's 64.
    fn resolve(
        cli: &Cli,
        spec: Spec,
        file: &std::collections::BTreeMap<String, String>,
        path: &Path,
    ) -> Result<EtcdSettings> {
        // A flag or the environment, else the config file, and how to word an error
        // about it.
        let pick = |flag: &Option<String>, key: &'static str, what: &'static str| {
            let from_flag = given(flag).is_some();
            let v = given(flag)
                .or_else(|| file.get(key).map(String::as_str).filter(|v| !v.is_empty()))
                .map(str::to_string);
            let shown = path.display().to_string();
            let bad = move |why: String| {
                if from_flag {
                    Error::usage(format!("{what}: {why}"))
                } else {
                    Error::config(format!("{shown}: {key}: {why}"))
                }
            };
            (v, bad)
        };
        let (node, bad) = pick(&cli.node, "NODE", "--node (or VE_ALLOC_NODE)");
        let node = match node {
            Some(n) => {
                name::validate(&n).map_err(|e| bad(e.to_string()))?;
                n
            }
            None => {
                let n = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map_err(|e| Error::io("reading the hostname (for --node)", e))?
                    .trim()
                    .to_string();
                name::validate(&n).map_err(|e| {
                    Error::config(format!(
                        "the hostname cannot be a node name ({e}); give --node"
                    ))
                })?;
                n
            }
        };
        let (addr, bad) = pick(
            &cli.node_address,
            "NODE_ADDRESS",
            "--node-address (or VE_ALLOC_NODE_ADDRESS)",
        );
        let node_address = addr
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| bad(format!("{a:?} is not an IP address")))
            })
            .transpose()?;
        let (size, bad) = pick(
            &cli.block_size,
            "BLOCK_SIZE",
            "--block-size (or VE_ALLOC_BLOCK_SIZE)",
        );
        let block_prefix = match size {
            None => crate::store::etcd::DEFAULT_BLOCK_PREFIX,
            Some(b) => b
                .trim_start_matches('/')
                .parse::<u8>()
                .ok()
                .filter(|b| (16..=30).contains(b))
                .ok_or_else(|| bad(format!("{b:?} is not a prefix length from 16 to 30")))?,
        };
        let (user, bad_user) = pick(
            &cli.etcd_user,
            "ETCD_USER",
            "--etcd-user (or VE_ALLOC_ETCD_USER)",
        );
        let (pw_file, _) = pick(
            &cli.etcd_password_file,
            "ETCD_PASSWORD_FILE",
            "--etcd-password-file (or VE_ALLOC_ETCD_PASSWORD_FILE)",
        );
        let auth =
            match (user, pw_file) {
                (None, None) => None,
                (Some(user), Some(f)) => {
                    let text = std::fs::read_to_string(&f)
                        .map_err(|e| Error::io(format!("reading the etcd password file {f}"), e))?;
                    let password = text.lines().next().unwrap_or("").to_string();
                    Some(crate::store::etcd::Credentials { user, password })
                }
                (Some(_), None) => {
                    return Err(bad_user("a user needs --etcd-password-file".to_string()))
                }
                (None, Some(_)) => return Err(Error::usage(
                    "--etcd-password-file (or VE_ALLOC_ETCD_PASSWORD_FILE, ETCD_PASSWORD_FILE) \
                     needs --etcd-user",
                )),
            };
        // The TLS files of an `etcd+tls://` store, read and checked now (66, 77, 78);
        // TLS files for a plain `etcd://` store are refused, so that a certificate is
        // never silently left unused.
        let (ca, bad_ca) = pick(
            &cli.etcd_cacert,
            "ETCD_CACERT",
            "--etcd-cacert (or VE_ALLOC_ETCD_CACERT)",
        );
        let (cert, bad_cert) = pick(
            &cli.etcd_cert,
            "ETCD_CERT",
            "--etcd-cert (or VE_ALLOC_ETCD_CERT)",
        );
        let (key, bad_key) = pick(
            &cli.etcd_key,
            "ETCD_KEY",
            "--etcd-key (or VE_ALLOC_ETCD_KEY)",
        );
        let plain = |bad: &dyn Fn(String) -> Error| {
            Err(bad(format!(
                "TLS files are for an etcd+tls:// store, but the store is etcd://{}",
                spec.endpoints.join(",")
            )))
        };
        if !spec.tls {
            match (&ca, &cert, &key) {
                (Some(_), _, _) => return plain(&bad_ca),
                (_, Some(_), _) => return plain(&bad_cert),
                (_, _, Some(_)) => return plain(&bad_key),
                _ => {}
            }
        }
        let tls = if spec.tls {
            let cert = match (cert, key) {
                (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(bad_cert(
                        "a client certificate needs its key (--etcd-key, ETCD_KEY)".to_string(),
                    ))
                }
                (None, Some(_)) => {
                    return Err(bad_key(
                        "a client key needs its certificate (--etcd-cert, ETCD_CERT)".to_string(),
                    ))
                }
            };
            let files = crate::store::etcd::TlsFiles {
                ca: ca.map(PathBuf::from),
                cert,
            };
            Some(crate::store::etcd::Tls::load(&files)?)
        } else {
            None
        };
        Ok(EtcdSettings {
            spec,
            node,
            node_address,
            block_prefix,
            auth,
            tls,
        })
    }
}

/// An RFC 3986 URL scheme: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
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
    let map = output::parse_env(&text, &origin).map_err(|e| e.with_kind(Kind::Config))?;
    if let Some(k) = map.keys().find(|k| !CONFIG_KEYS.contains(&k.as_str())) {
        return Err(Error::config(format!(
            "{origin}: unknown setting {} (known: {})",
            output::quote_key(k),
            CONFIG_KEYS.join(", ")
        )));
    }
    Ok(map)
}

/// `--durability` / DURABILITY; a bad value from the config file is 78, else 64.
fn durability((v, from_file): (String, bool)) -> Result<Durability> {
    use clap::ValueEnum;
    Durability::from_str(&v, false).map_err(|_| {
        let msg = format!("durability {v:?} is neither full nor normal");
        if from_file {
            Error::config(format!("{msg} (in the config file)"))
        } else {
            Error::usage(msg)
        }
    })
}

/// The config file's settings (from NODE on for an etcd store).
const CONFIG_KEYS: [&str; 13] = [
    "STORE",
    "POOL",
    "POOL6",
    "LAYOUT",
    "DURABILITY",
    "NODE",
    "NODE_ADDRESS",
    "BLOCK_SIZE",
    "ETCD_USER",
    "ETCD_PASSWORD_FILE",
    "ETCD_CACERT",
    "ETCD_CERT",
    "ETCD_KEY",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Matches that `Cli` cannot be built from (no subcommand, which the real
    /// definition requires, so only reachable by changing it) are a usage error on one
    /// line with clap's words, not an internal one.
    #[test]
    fn a_clap_error_converting_the_matches_is_a_usage_error_on_one_line() {
        let matches = command()
            .subcommand_required(false)
            .arg_required_else_help(false)
            .try_get_matches_from(["ve-alloc", "--json"])
            .unwrap();
        let e = cli_from(&matches).unwrap_err();
        assert_eq!((e.kind(), e.code()), (Kind::Usage, 64), "{e}");
        assert!(!e.message().contains('\n'), "{e:?}");
        assert!(e.message().contains("subcommand"), "{e}");
    }
}
