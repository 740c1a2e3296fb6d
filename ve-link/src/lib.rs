//! `ve-link`: plumbs a container's network namespace in one go over route netlink: a veth
//! pair with its peer made directly inside the namespace, addresses and routes on both
//! sides; idempotent, converging, rolled back on failure; torn down in batches.

use std::{ffi::OsString, io::Read};

use clap::{Args, CommandFactory, Parser, Subcommand};
use common::{cli::Verbosity, netns::NetnsSpec, Error, Result};

mod cni;
pub mod doc;
pub mod guard;
pub mod kernel;
mod live;
mod ops;
pub mod ours;
pub mod plan;
pub mod request;

use request::{UpInput, UpRequest};

#[derive(Debug, Parser)]
#[command(
    name = "ve-link",
    version,
    about = "Plumb a container's network namespace: veth pair, addresses, routes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    verbosity: Verbosity,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create (or converge) the veth pair of container NAME and configure both sides
    Up(UpArgs),
    /// Exit 0 when everything `up` would make is in place, else 1 listing what differs
    Check(UpArgs),
    /// Remove the pairs of the named containers (already gone is success)
    Down(DownArgs),
    /// Remove managed links whose container namespace is gone; prints their container
    /// names, one per line
    Gc {
        /// Only print what would be removed
        #[arg(long)]
        dry_run: bool,
    },
    /// The links ve-link manages, with peer namespace, state and host addresses
    List {
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Route other nodes' blocks: converge the host's routes to exactly the `BLOCK via
    /// ADDR` lines `ve-alloc routes` prints
    ///
    /// Adds the routes missing, replaces those whose gateway changed and removes the
    /// ones it made that the set no longer has; they carry protocol 118 and a gateway,
    /// which the per-container routes of `up` never have, so those stay alone. Bad
    /// input changes nothing (exit 65).
    Routes {
        /// The set, one `BLOCK via ADDR` per line (`-`: stdin); blank lines and `#`
        /// comments are ignored
        #[arg(long, value_name = "FILE")]
        from: String,
        /// Read sets continuously, each ended by a blank line (as `ve-alloc routes
        /// --watch` prints them), and converge after each, and every 5 s again while
        /// none comes; lines after the last blank line at the end of the input are
        /// ignored
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Container name
    #[arg(required_unless_present = "from")]
    name: Option<String>,
    /// Container network namespace: a path, or a name under /run/netns
    #[arg(
        long,
        value_name = "NS",
        required_unless_present_any = ["pid", "from"],
        conflicts_with = "pid"
    )]
    netns: Option<String>,
    /// Use the network namespace of this process
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Read addresses from an env file (HOST_ADDRESS, LOCAL_ADDRESS, HOST_ADDRESS6,
    /// LOCAL_ADDRESS6); `-` for stdin. Flags win over the file
    #[arg(long, value_name = "FILE")]
    addresses: Option<String>,
    /// IPv4 address of the host end
    #[arg(long, value_name = "ADDR")]
    host_address: Option<String>,
    /// IPv4 address of the container end
    #[arg(long, value_name = "ADDR")]
    local_address: Option<String>,
    /// IPv6 address of the host end
    #[arg(long, value_name = "ADDR")]
    host_address6: Option<String>,
    /// IPv6 address of the container end
    #[arg(long, value_name = "ADDR")]
    local_address6: Option<String>,
    /// Name of the container end inside the namespace
    #[arg(long, value_name = "IFNAME", default_value = request::DEFAULT_IFNAME)]
    ifname: String,
    /// MTU of both ends
    #[arg(long)]
    mtu: Option<u32>,
    /// Bridge mode: attach the host end (vb-NAME) to this existing bridge; no host
    /// address or route
    #[arg(long, value_name = "BR")]
    bridge: Option<String>,
    /// JSON output
    #[arg(long)]
    json: bool,
    /// Bring up every container of a JSON Lines file (`-`: stdin) as `ve-alloc alloc
    /// NAME... --json` prints it, several at a time; a `netns` field overrides the
    /// default namespace /run/netns/NAME. Not with `check`
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["name", "netns", "pid", "addresses", "host_address",
                              "local_address", "host_address6", "local_address6", "bridge"]
    )]
    from: Option<String>,
}

#[derive(Debug, Args)]
struct DownArgs {
    /// Container names
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    names: Vec<String>,
    /// Every link ve-link manages (host shutdown)
    #[arg(long)]
    all: bool,
}

/// The clap definition (for man pages and completions too). The global flags are listed
/// after each command's own options.
pub fn command() -> clap::Command {
    doc::MANUAL.attach(
        Cli::command()
            .mut_arg("verbose", |a| a.display_order(1000))
            .mut_arg("quiet", |a| a.display_order(1001)),
    )
}

/// Entry point: parse, validate, act.
pub fn run(args: Vec<OsString>) -> Result<()> {
    // CNI_COMMAND set: a CNI plugin (stdin config, result on stdout), not the shell tool.
    if common::cni::command().is_some() {
        return cni::run();
    }
    let cli: Cli = common::cli::parse(command(), args)?;
    cli.verbosity.init_logging("ve-link");
    match cli.cmd {
        Cmd::Up(a) => {
            let json = a.json;
            if let Some(from) = &a.from {
                let (text, origin) = read_input(from, "containers")?;
                let shared = ops::bulk::Shared {
                    ifname: Some(a.ifname.clone()),
                    mtu: a.mtu,
                };
                return ops::bulk::up_from(&text, &origin, &shared, json);
            }
            // Addresses from a pipe: open the namespace and the sockets while the
            // command before it (`ve-alloc alloc`, waiting for its disk) is writing.
            if let (Some("-"), Some(spec)) = (a.addresses.as_deref(), early_netns(&a)) {
                let (req, opened) = ops::Opened::early(&spec, move || build(a));
                return ops::up_opened(&req?, opened.ok(), json);
            }
            ops::up(&build(a)?, json)
        }
        Cmd::Check(a) => {
            if a.from.is_some() {
                return Err(Error::usage("check takes one container; --from is for up"));
            }
            let json = a.json;
            ops::check(&build(a)?, json)
        }
        Cmd::Down(a) => ops::down(&a.names, a.all),
        Cmd::Gc { dry_run } => ops::gc(dry_run),
        Cmd::List { json } => ops::list(json),
        Cmd::Routes { from, follow } => {
            if follow {
                return if from == "-" {
                    // Larger than Stdin's own buffer, so that one stays empty and what
                    // is buffered is this reader's, which `follow` checks before polling.
                    ops::routes::follow(
                        std::io::BufReader::with_capacity(64 * 1024, std::io::stdin()),
                        "stdin",
                    )
                } else {
                    let f = std::fs::File::open(&from)
                        .map_err(|e| Error::io(format!("reading {from}"), e))?;
                    ops::routes::follow(std::io::BufReader::new(f), &from)
                };
            }
            let (text, origin) = read_input(&from, "routes")?;
            ops::routes::once(&text, &origin)
        }
    }
}

/// The contents of FILE (`-`: stdin) and how to name it in messages.
fn read_input(f: &str, what: &str) -> Result<(String, String)> {
    if f == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Error::io(format!("reading {what} from stdin"), e))?;
        Ok((s, "stdin".to_string()))
    } else {
        let s = std::fs::read_to_string(f).map_err(|e| Error::io(format!("reading {f}"), e))?;
        Ok((s, f.to_string()))
    }
}

/// The namespace `a` names, when it names exactly one that parses: anything else is
/// left to [`build`] to report.
fn early_netns(a: &UpArgs) -> Option<NetnsSpec> {
    match (&a.netns, a.pid) {
        (Some(ns), None) => NetnsSpec::parse(ns).ok(),
        (None, Some(pid)) if pid != 0 => Some(NetnsSpec::Pid(pid)),
        _ => None,
    }
}

fn build(a: UpArgs) -> Result<UpRequest> {
    let env = match &a.addresses {
        None => None,
        Some(f) => Some(read_input(f, "addresses")?),
    };
    UpRequest::build(UpInput {
        name: a.name.unwrap_or_default(),
        netns: a.netns,
        pid: a.pid,
        env,
        host_address: a.host_address,
        local_address: a.local_address,
        host_address6: a.host_address6,
        local_address6: a.local_address6,
        ifname: Some(a.ifname),
        mtu: a.mtu,
        bridge: a.bridge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn command_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn global_flags_come_after_each_commands_own_options_in_help() {
        let mut cmd = command();
        cmd.build();
        for sub in cmd.get_subcommands_mut().filter(|s| s.get_name() != "help") {
            let help = sub.render_help().to_string();
            let pos = |flag: &str| {
                help.find(flag)
                    .unwrap_or_else(|| panic!("{flag} missing:\n{help}"))
            };
            let own: Vec<usize> = sub
                .get_arguments()
                .filter(|a| !a.is_global_set() && a.get_long().is_some_and(|l| l != "help"))
                .map(|a| pos(&format!("--{}", a.get_long().unwrap_or_default())))
                .collect();
            let first_global = pos("--verbose").min(pos("--quiet"));
            assert!(
                own.iter().all(|&p| p < first_global),
                "{}:\n{help}",
                sub.get_name()
            );
        }
    }

    #[test]
    fn usage_errors_are_64_and_bad_data_65_before_any_syscall() {
        let e = run(args(&["ve-link", "up", "foo"])).unwrap_err();
        assert_eq!(e.code(), 64, "{e}");
        let e = run(args(&[
            "ve-link", "up", "foo", "--netns", "x", "--pid", "3",
        ]))
        .unwrap_err();
        assert_eq!(e.code(), 64, "{e}");
        let e = run(args(&["ve-link", "up", "a b", "--netns", "x"])).unwrap_err();
        assert_eq!(e.code(), 65, "{e}");
        let e = run(args(&["ve-link", "down", "-x"])).unwrap_err();
        assert_eq!(e.code(), 64, "{e}");
        let e = run(args(&["ve-link", "down", "a/b"])).unwrap_err();
        assert_eq!(e.code(), 65, "{e}");
        let e = run(args(&[
            "ve-link",
            "up",
            "foo",
            "--netns",
            "x",
            "--addresses",
            "/nonexistent/f",
        ]))
        .unwrap_err();
        assert_eq!(e.code(), 66, "{e}");
    }
}
