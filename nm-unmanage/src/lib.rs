//! `nm-unmanage`: keep NetworkManager off container interfaces, at once (one-shot),
//! as they appear (`--watch`), and durably (`--persist`), over D-Bus.

pub mod doc;
mod nm;
mod persist;
mod spec;
mod unmanage;
mod watch;

use std::{ffi::OsString, path::PathBuf};

use clap::{CommandFactory, Parser};
use common::{cli::Verbosity, output, Error, Result};

pub use nm::{connect, Bus, Device, Nm, NM_IFACE, NM_NAME, NM_PATH, STATE_UNMANAGED};
pub use persist::{DEFAULT_CONF_DIR, DROP_IN};
pub use spec::{Pattern, DEFAULT_PATTERNS};
pub use unmanage::{unmanage_added, unmanage_existing, Cause, Outcome, Unmanaged};

/// Where the system bus is when DBUS_SYSTEM_BUS_ADDRESS is not set.
const DEFAULT_BUS: &str = "unix:path=/run/dbus/system_bus_socket";

/// Keep NetworkManager off container interfaces.
///
/// Sets Managed=false on every NetworkManager device whose interface name matches a
/// pattern and prints the ones it changed. --watch keeps doing so as devices appear and
/// after NetworkManager restarts, and waits for NetworkManager when it is not running
/// yet; --persist also writes a conf.d drop-in so that NetworkManager itself leaves them
/// alone, without a restart. Without NetworkManager on the bus, everything but --watch
/// exits 69 (0 with --if-running).
#[derive(Debug, Parser)]
#[command(name = "nm-unmanage", version)]
pub struct Args {
    /// Interface patterns: NetworkManager device specs (interface-name:ve-*,
    /// interface-name:=ve-foo) or bare globs (ve-*); default: ve-* vb-*
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,

    /// Keep running: unmanage matching devices as NetworkManager announces them, and
    /// again after it restarts; started before NetworkManager, wait for it to appear;
    /// stops on SIGTERM or SIGINT
    #[arg(long)]
    pub watch: bool,

    /// Also write a NetworkManager drop-in (unmanaged-devices) for the patterns and
    /// reload NetworkManager's configuration, so it holds without this tool
    #[arg(long)]
    pub persist: bool,

    /// Delete the drop-in written by --persist and reload NetworkManager's configuration
    #[arg(long, conflicts_with_all = ["watch", "persist", "patterns"])]
    pub remove: bool,

    /// NetworkManager's drop-in directory for --persist and --remove
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CONF_DIR)]
    pub conf_dir: PathBuf,

    /// D-Bus address of the system bus
    #[arg(long, value_name = "ADDRESS", env = "DBUS_SYSTEM_BUS_ADDRESS", default_value = DEFAULT_BUS)]
    pub bus_address: String,

    /// Exit 0 with a note, instead of 69, when NetworkManager is not on the bus (with
    /// --watch, which waits for NetworkManager: when the bus itself is not there)
    #[arg(long)]
    pub if_running: bool,

    /// One JSON object per device on stdout instead of its interface name (the same
    /// devices: those changed; with --watch, every device acted on)
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub verbosity: Verbosity,
}

/// The clap definition (for man pages and completions).
pub fn command() -> clap::Command {
    doc::MANUAL.attach(Args::command())
}

/// Parse, validate, act.
pub fn run(args: Vec<OsString>) -> Result<()> {
    let args: Args = common::cli::parse(command(), args)?;
    args.verbosity.init_logging("nm-unmanage");
    let patterns = if args.patterns.is_empty() {
        Pattern::defaults()
    } else {
        args.patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>>>()?
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))?;
    rt.block_on(act(&args, &patterns))
}

/// NetworkManager on the bus, or why not.
enum Reach {
    Up(Bus),
    /// The bus is there, NetworkManager is not (yet).
    NoNm(Bus, Error),
    /// The bus itself cannot be reached.
    NoBus(Error),
}

async fn reach(address: &str) -> Result<Reach> {
    let conn = match nm::connect(address).await {
        Ok(c) => c,
        Err(e) if e.exit() == common::Exit::Unavailable => return Ok(Reach::NoBus(e)),
        Err(e) => return Err(e),
    };
    let bus = Bus::new(conn);
    if bus.nm_running().await? {
        Ok(Reach::Up(bus))
    } else {
        let e = Error::unavailable(format!(
            "NetworkManager is not running on the bus at {address}"
        ));
        Ok(Reach::NoNm(bus, e))
    }
}

async fn act(args: &Args, patterns: &[Pattern]) -> Result<()> {
    let reached = reach(&args.bus_address).await?;
    let absent = !matches!(reached, Reach::Up(_));
    if args.remove {
        let path = persist::drop_in_path(&args.conf_dir);
        if persist::remove(&args.conf_dir)? {
            log::info!("removed {}", path.display());
        } else {
            log::info!("{} was not there", path.display());
        }
    }
    if args.persist {
        let path = persist::drop_in_path(&args.conf_dir);
        match persist::write(&args.conf_dir, &persist::render(patterns)) {
            Ok(true) => log::info!("wrote {}", path.display()),
            Ok(false) => log::info!("{} is up to date", path.display()),
            // No NetworkManager and not even its config directory: nothing to keep off.
            Err(e) if absent && args.if_running && e.exit() == common::Exit::NoInput => {
                log::info!("{e}")
            }
            Err(e) => return Err(e),
        }
    }
    let bus = match reached {
        Reach::Up(bus) => bus,
        // A watcher started before NetworkManager (at boot) waits for it to appear.
        Reach::NoNm(bus, e) if args.watch => {
            if args.persist {
                log::info!("{e}; the drop-in takes effect when it starts");
            }
            return watch::watch(&bus, patterns, args.json).await;
        }
        Reach::NoNm(_, e) | Reach::NoBus(e) if args.if_running => {
            let rest = if args.persist || args.remove {
                "the drop-in takes effect when it starts"
            } else {
                "nothing to do (--if-running)"
            };
            log::warn!("{e}; {rest}");
            return Ok(());
        }
        Reach::NoNm(_, e) | Reach::NoBus(e) if args.persist || args.remove => {
            return Err(e.context("the drop-in is updated, but NetworkManager did not reload it"))
        }
        Reach::NoNm(_, e) | Reach::NoBus(e) => return Err(e),
    };
    if args.persist || args.remove {
        bus.reload_config().await?;
        log::info!("NetworkManager reloaded its configuration");
    }
    if args.remove {
        return Ok(());
    }
    if args.watch {
        return watch::watch(&bus, patterns, args.json).await;
    }
    let done = unmanage_existing(&bus, patterns).await?;
    report(&done, args.json, patterns)
}

/// Print what changed, and say on stderr when nothing matched at all.
fn report(done: &[Unmanaged], json: bool, patterns: &[Pattern]) -> Result<()> {
    if done.is_empty() {
        let list: Vec<String> = patterns.iter().map(Pattern::nm_spec).collect();
        log::warn!("no NetworkManager device matches {}", list.join(", "));
        return Ok(());
    }
    for u in done.iter().filter(|u| !u.was_managed) {
        log::info!("{} was not managed; flagged unmanaged anyway", u.interface);
    }
    emit(done, json, true)
}

/// Write records to stdout (see [`unmanage::render`]).
fn emit(done: &[Unmanaged], json: bool, changed_only: bool) -> Result<()> {
    let out = unmanage::render(done, json, changed_only)?;
    if out.is_empty() {
        return Ok(());
    }
    output::print(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Args> {
        let mut v = vec![OsString::from("nm-unmanage")];
        v.extend(a.iter().map(OsString::from));
        common::cli::parse(command(), v)
    }

    #[test]
    fn command_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn remove_takes_no_patterns_or_other_modes() {
        for bad in [
            &["--remove", "ve-*"][..],
            &["--remove", "--watch"],
            &["--remove", "--persist"],
        ] {
            assert_eq!(parse(bad).unwrap_err().code(), 64, "{bad:?}");
        }
        assert!(parse(&["--persist", "--watch", "ve-*"]).is_ok());
    }

    #[test]
    fn bad_pattern_is_a_data_error_before_any_bus_access() {
        let v = [
            "nm-unmanage",
            "--bus-address",
            "unix:path=/nonexistent",
            "mac:aa",
        ];
        let e = run(v.iter().map(OsString::from).collect()).unwrap_err();
        assert_eq!(e.code(), 65, "{e}");
        assert!(e.to_string().contains("invalid pattern \"mac:aa\""), "{e}");
    }

    #[test]
    fn missing_bus_is_unavailable_unless_if_running() {
        let base = ["nm-unmanage", "--bus-address", "unix:path=/nonexistent/bus"];
        for extra in [&[][..], &["--watch"], &["--watch", "--persist"]] {
            let mut args: Vec<OsString> = base.iter().map(OsString::from).collect();
            args.extend(extra.iter().map(OsString::from));
            // No bus at all: nothing to wait on, not even for a watcher.
            let e = run(args.clone()).unwrap_err();
            assert_eq!(e.code(), 69, "{extra:?}: {e}");
            args.push("--if-running".into());
            if extra.contains(&"--persist") {
                args.extend(["--conf-dir".into(), "/nonexistent/conf.d".into()]);
            }
            run(args).unwrap();
        }
    }
}
