//! `nm-unmanage`: keep the network managers (NetworkManager, systemd-networkd) off
//! container interfaces, at once (one-shot), as they appear (`--watch`), for this boot
//! (`--runtime`) and durably (`--persist`), over D-Bus.

mod cni;
pub mod doc;
mod nd_watch;
use networkd::Reload;
mod networkd;
mod nm;
mod persist;
mod spec;
mod unmanage;
mod watch;

use std::{cell::RefCell, ffi::OsString, path::PathBuf, time::Duration};

use clap::{CommandFactory, Parser};
use common::{cli::Verbosity, output, Error, Kind as ErrorKind, Result};
use tokio::signal::unix::{signal, SignalKind};

pub use common::notify::{self, NOTIFY_SOCKET};
pub use networkd::{Released, DEFAULT_NETWORKD_DIR, ND_NAME, NETWORK_FILE};
pub use nm::{
    connect, Bus, Device, Nm, DEFAULT_TIMEOUT, NM_IFACE, NM_NAME, NM_PATH, STATE_UNMANAGED,
};
pub use persist::{
    Kind, DEFAULT_CONF_DIR, DEFAULT_RUNTIME_DIR, DROP_IN, RUNTIME_DROP_IN, WATCH_DROP_IN,
};
pub use spec::{Pattern, DEFAULT_PATTERNS};
pub use unmanage::{unmanage_added, unmanage_existing, Cause, Outcome, Unmanaged};
pub use watch::START_BOUND_TIMEOUTS;

/// Where the system bus is when DBUS_SYSTEM_BUS_ADDRESS is not set.
const DEFAULT_BUS: &str = "unix:path=/run/dbus/system_bus_socket";

/// The variable that sets `--runtime-dir` (for callers that cannot change the command
/// line, such as `examples/container-net` under a sandboxed NetworkManager).
pub const RUNTIME_DIR_ENV: &str = "NM_UNMANAGE_RUNTIME_DIR";

/// The variable that sets `--timeout`.
pub const TIMEOUT_ENV: &str = "NM_UNMANAGE_TIMEOUT";

/// How long a stopping watcher waits for NetworkManager to reload without its drop-in:
/// short, so that SIGTERM ends it within a second even when NetworkManager hangs.
const STOP_RELOAD_TIMEOUT: Duration = Duration::from_millis(300);

/// Keep the network managers (NetworkManager, systemd-networkd) off container
/// interfaces.
///
/// Acts on every manager it finds on the system bus (--manager chooses). For
/// systemd-networkd it writes 10-nm-unmanage.network (Unmanaged=yes for the patterns)
/// into --networkd-dir, reloads networkd, which releases the matching links, and
/// reconfigures each of them; ve-link's addresses stay. For NetworkManager it sets
/// Managed=false on every NetworkManager device whose interface name matches a
/// pattern and prints the ones it changed. --watch first puts a runtime drop-in in place
/// (so NetworkManager leaves new matching devices alone from their first moment), then
/// keeps unmanaging as devices appear and after NetworkManager restarts, waits for
/// NetworkManager when it is not running yet, and removes the drop-in when it stops.
/// --runtime writes such a drop-in for this boot, --persist one in /etc that holds
/// without this tool. Without NetworkManager on the bus, or when it does not answer
/// within --timeout, everything but --watch exits 69 (0 with --if-running), unless
/// systemd-networkd runs and was handled.
#[derive(Debug, Parser)]
#[command(name = "nm-unmanage", version)]
pub struct Args {
    /// Interface patterns: NetworkManager device specs (interface-name:ve-*,
    /// interface-name:=ve-foo) or bare globs (ve-*); default: ve-* vb-*. A pattern of
    /// wildcards only (*, ?*) is refused
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,

    /// Keep running: write a runtime drop-in (see --runtime-dir) and reload
    /// NetworkManager, then unmanage matching devices as NetworkManager announces them,
    /// and again after it restarts; started before NetworkManager, wait for it to
    /// appear; READY=1 to $NOTIFY_SOCKET once the drop-in is in place; stops on SIGTERM
    /// or SIGINT, removing the drop-in. For systemd-networkd: its file first, then again
    /// whenever networkd restarts or reports a matching link taken; the file stays when
    /// the watcher stops
    #[arg(long)]
    pub watch: bool,

    /// Also write a NetworkManager drop-in (unmanaged-devices) into --conf-dir and reload
    /// NetworkManager's configuration, so it holds without this tool (systemd-networkd:
    /// its file in --networkd-dir, as every mode)
    #[arg(long)]
    pub persist: bool,

    /// Like --persist, but for this boot only: the drop-in goes into --runtime-dir;
    /// NetworkManager is reloaded only when the file changed. Nothing is written when
    /// NetworkManager is not on the bus and --if-running is given
    #[arg(long, conflicts_with_all = ["watch", "persist"])]
    pub runtime: bool,

    /// Delete the drop-in written by --persist (with --runtime: by --runtime) and reload
    /// NetworkManager's configuration; delete networkd's file from --networkd-dir and
    /// reload networkd, which then takes back existing ve-* links and deletes ve-link's
    /// addresses on them
    #[arg(long, conflicts_with_all = ["watch", "persist", "patterns"])]
    pub remove: bool,

    /// Which network managers to keep off: nm (NetworkManager), networkd
    /// (systemd-networkd) or all; default: those running on the bus. An explicit
    /// networkd (or all) makes --watch write networkd's file even before networkd runs
    #[arg(long, value_enum, value_name = "MANAGER")]
    pub manager: Option<Manager>,

    /// systemd-networkd's directory for 10-nm-unmanage.network, written by every mode
    /// but --remove (which deletes it); created if missing. /etc/systemd/network makes
    /// it last across reboots
    #[arg(long, value_name = "DIR", default_value = DEFAULT_NETWORKD_DIR)]
    pub networkd_dir: PathBuf,

    /// NetworkManager's drop-in directory for --persist and --remove
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CONF_DIR)]
    pub conf_dir: PathBuf,

    /// NetworkManager's per-boot drop-in directory, for --runtime and --watch (created
    /// if missing)
    #[arg(long, value_name = "DIR", env = RUNTIME_DIR_ENV, default_value = DEFAULT_RUNTIME_DIR)]
    pub runtime_dir: PathBuf,

    /// D-Bus address of the system bus
    #[arg(long, value_name = "ADDRESS", env = "DBUS_SYSTEM_BUS_ADDRESS", default_value = DEFAULT_BUS)]
    pub bus_address: String,

    /// Seconds any one exchange with the bus or NetworkManager may take (decimals
    /// allowed) before NetworkManager counts as not answering (exit 69); a watcher gives
    /// up on a NetworkManager that owns its name but does not answer for 6 times this
    #[arg(long, value_name = "SECONDS", env = TIMEOUT_ENV, default_value = "5",
          value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Exit 0 with a note, instead of 69, when NetworkManager is not on the bus or does
    /// not answer (with --watch, which waits for NetworkManager: when the bus itself is
    /// not there)
    #[arg(long)]
    pub if_running: bool,

    /// One JSON object per device on stdout instead of its interface name (the same
    /// devices: those changed; with --watch, every device acted on)
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub verbosity: Verbosity,

    /// Called as a CNI plugin: stdout is the CNI result, so the one-shot path prints
    /// nothing, and networkd is reloaded only when needed (as --runtime).
    #[arg(skip)]
    pub cni: bool,
}

/// The network managers `--manager` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Manager {
    /// NetworkManager
    Nm,
    /// systemd-networkd
    Networkd,
    /// both
    All,
}

impl Args {
    fn wants_nm(&self) -> bool {
        self.manager != Some(Manager::Networkd)
    }

    fn wants_networkd(&self) -> bool {
        self.manager != Some(Manager::Nm)
    }
}

/// A positive number of seconds, at most a day.
fn parse_timeout(s: &str) -> std::result::Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "{s:?}: must be more than 0 and at most 86400 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The clap definition (for man pages and completions).
pub fn command() -> clap::Command {
    doc::MANUAL.attach(Args::command())
}

/// Parse, validate, act.
pub fn run(args: Vec<OsString>) -> Result<()> {
    // CNI_COMMAND set: a CNI plugin (stdin config, result on stdout), not the shell tool.
    if common::cni::command().is_some() {
        return cni::run();
    }
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
    // networkd's file text: every pattern must have a Name= glob (65 otherwise), before
    // anything is touched.
    let nd_globs = if args.wants_networkd() {
        Some(networkd::globs(&patterns)?)
    } else {
        None
    };
    let nd_text = nd_globs.as_deref();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))?;
    if args.watch {
        return rt.block_on(watch_mode(&args, &patterns, nd_text));
    }
    match rt.block_on(act(&args, &patterns, nd_text)) {
        // Not there or not answering: nothing to keep off (--if-running).
        Err(e)
            if args.if_running
                && matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::NoAnswer) =>
        {
            log::warn!("{e}; nothing more to do (--if-running)");
            Ok(())
        }
        r => r,
    }
}

/// NetworkManager on the bus, or why not.
pub(crate) enum Reach {
    Up(Bus),
    /// The bus is there, NetworkManager is not (yet).
    NoNm(Bus, Error),
    /// The bus itself cannot be reached, or does not answer.
    NoBus(Error),
}

pub(crate) async fn reach(address: &str, timeout: Duration) -> Result<Reach> {
    let conn = match nm::connect(address, timeout).await {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::NoAnswer) => {
            return Ok(Reach::NoBus(e))
        }
        Err(e) => return Err(e),
    };
    let bus = Bus::new(conn);
    match bus.nm_running().await {
        Ok(true) => Ok(Reach::Up(bus)),
        Ok(false) => {
            let e = Error::unavailable(format!(
                "NetworkManager is not running on the bus at {address}"
            ));
            Ok(Reach::NoNm(bus, e))
        }
        Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::NoAnswer) => {
            Ok(Reach::NoBus(e))
        }
        Err(e) => Err(e),
    }
}

/// Everything but `--watch`: networkd (when it runs and is wanted), then NetworkManager
/// (when wanted); both are tried, the first error is returned.
pub(crate) async fn act(
    args: &Args,
    patterns: &[Pattern],
    nd_text: Option<&[String]>,
) -> Result<()> {
    let reached = reach(&args.bus_address, args.timeout).await?;
    let mut nd_running = false;
    let mut first_err = None;
    if let Some(text) = nd_text {
        let bus = match &reached {
            Reach::Up(bus) | Reach::NoNm(bus, _) => Some(bus),
            Reach::NoBus(_) => None,
        };
        if let Some(bus) = bus {
            nd_running = bus.networkd_running().await?;
        }
        match bus {
            Some(bus) if nd_running => match networkd_act(args, bus, text, patterns).await {
                Ok(done) if args.cni => {
                    log::info!("systemd-networkd released {} link(s)", done.len())
                }
                Ok(done) => emit_released(&done, args.json, true)?,
                Err(e) => first_err = Some(e),
            },
            _ if args.manager == Some(Manager::Networkd) => {
                return Err(match reached {
                    Reach::NoBus(e) => e,
                    _ => networkd::not_running(&args.bus_address),
                })
            }
            _ => log::debug!("systemd-networkd is not on the bus"),
        }
    }
    if args.wants_nm() {
        // With networkd handled, a missing NetworkManager is no failure: as --if-running.
        let forgiving = args.if_running || nd_running;
        if let Err(e) = act_nm(args, patterns, reached, forgiving).await {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// networkd's part of everything but `--watch`: `--remove` deletes the file and
/// reloads (networkd then takes the links back); every other mode writes it, reloads
/// and reconfigures the matching links ([`networkd::apply`]).
async fn networkd_act(
    args: &Args,
    bus: &Bus,
    text: &[String],
    patterns: &[Pattern],
) -> Result<Vec<Released>> {
    let dir = &args.networkd_dir;
    if args.remove {
        let path = dir.join(NETWORK_FILE);
        if persist::remove_file(dir, NETWORK_FILE)? {
            log::info!("removed {}", path.display());
        } else {
            log::info!("{} was not there", path.display());
        }
        networkd::Networkd::reload(bus).await?;
        log::info!("systemd-networkd reloaded its configuration");
        return Ok(Vec::new());
    }
    // --runtime runs before every container start: networkd is reloaded only when the
    // file changed or a matching link is managed after all.
    let when = if args.runtime || args.cni {
        networkd::Reload::IfNeeded
    } else {
        networkd::Reload::Always
    };
    let write = || networkd::write(dir, text);
    networkd::apply(bus, patterns, write, Cause::Existing, when).await
}

/// NetworkManager's part of everything but `--watch`. `forgiving`: a missing
/// NetworkManager (or its missing conf dir) is not an error (--if-running, or networkd
/// was handled).
async fn act_nm(args: &Args, patterns: &[Pattern], reached: Reach, forgiving: bool) -> Result<()> {
    let absent = !matches!(reached, Reach::Up(_));
    let drop_in = |kind| match kind {
        Kind::Persist => (args.conf_dir.as_path(), kind),
        _ => (args.runtime_dir.as_path(), kind),
    };
    let mut reload = false;
    if args.remove {
        let (dir, kind) = drop_in(if args.runtime {
            Kind::Runtime
        } else {
            Kind::Persist
        });
        let path = persist::drop_in_path(dir, kind);
        if persist::remove(dir, kind)? {
            log::info!("removed {}", path.display());
        } else {
            log::info!("{} was not there", path.display());
        }
        reload = true;
    } else if args.persist {
        let (dir, kind) = drop_in(Kind::Persist);
        let path = persist::drop_in_path(dir, kind);
        match persist::write(dir, kind, &persist::render(patterns, kind)) {
            Ok(true) => log::info!("wrote {}", path.display()),
            Ok(false) => log::info!("{} is up to date", path.display()),
            // No NetworkManager and not even its config directory: nothing to keep off.
            Err(e) if absent && forgiving && e.kind() == ErrorKind::NotFound => {
                log::info!("{e}")
            }
            Err(e) => return Err(e),
        }
        reload = true;
    } else if args.runtime && !(absent && forgiving) {
        let (dir, kind) = drop_in(Kind::Runtime);
        persist::create_dir(dir)?;
        let path = persist::drop_in_path(dir, kind);
        // Reloading costs NetworkManager a re-read of everything: only when it matters.
        reload = persist::write(dir, kind, &persist::render(patterns, kind))?;
        if reload {
            log::info!("wrote {}", path.display());
        } else {
            log::info!("{} is up to date", path.display());
        }
    }
    let writes = args.persist || args.remove || args.runtime;
    let bus = match reached {
        Reach::Up(bus) => bus,
        Reach::NoNm(_, e) | Reach::NoBus(e) if forgiving => {
            let rest = if args.runtime && !args.remove {
                "nothing written for it"
            } else if writes {
                "the drop-in takes effect when it starts"
            } else {
                "nothing to do for it"
            };
            log::warn!("{e}; {rest}");
            return Ok(());
        }
        Reach::NoNm(_, e) | Reach::NoBus(e) if writes => {
            return Err(e.context("the drop-in is updated, but NetworkManager did not reload it"))
        }
        Reach::NoNm(_, e) | Reach::NoBus(e) => return Err(e),
    };
    if reload {
        bus.reload_config().await?;
        log::info!("NetworkManager reloaded its configuration");
    }
    if args.remove {
        return Ok(());
    }
    let done = unmanage_existing(&bus, patterns).await?;
    if args.cni {
        for u in &done {
            log::info!("{}: unmanaged by NetworkManager", u.interface);
        }
        return Ok(());
    }
    report(&done, args.json, patterns)
}

/// `--watch`: the watch itself raced against SIGTERM and SIGINT, which end it at any
/// moment (also while a D-Bus call is outstanding); then the runtime drop-in goes.
async fn watch_mode(args: &Args, patterns: &[Pattern], nd_text: Option<&[String]>) -> Result<()> {
    let sig = |kind| signal(kind).map_err(|e| Error::io("installing a signal handler", e));
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    // What the cleanup needs: the bus (once connected) and whether the drop-in is ours.
    let held: RefCell<(Option<Bus>, bool)> = RefCell::new((None, false));
    let result = tokio::select! {
        r = watch_body(args, patterns, nd_text, &held) => r,
        _ = term.recv() => {
            log::info!("SIGTERM: stopping");
            Ok(())
        }
        _ = int.recv() => {
            log::info!("SIGINT: stopping");
            Ok(())
        }
    };
    let (bus, wrote) = held.into_inner();
    if wrote {
        let path = persist::drop_in_path(&args.runtime_dir, Kind::Watch);
        match persist::remove(&args.runtime_dir, Kind::Watch) {
            Ok(_) => log::info!("removed {}", path.display()),
            Err(e) => log::error!("{e}"),
        }
        if let Some(bus) = bus {
            match tokio::time::timeout(STOP_RELOAD_TIMEOUT, bus.reload_config()).await {
                Ok(Ok(())) => log::info!("NetworkManager reloaded its configuration"),
                Ok(Err(e)) => log::info!("{e}"),
                Err(_) => log::warn!(
                    "NetworkManager did not reload its configuration within {}; it drops \
                     the removed drop-in at its next reload or start",
                    nm::seconds(STOP_RELOAD_TIMEOUT)
                ),
            }
        }
    }
    result
}

async fn watch_body(
    args: &Args,
    patterns: &[Pattern],
    nd_text: Option<&[String]>,
    held: &RefCell<(Option<Bus>, bool)>,
) -> Result<()> {
    let (bus, running) = match reach(&args.bus_address, args.timeout).await? {
        // No bus at all: nothing to wait on, not even for a watcher.
        Reach::NoBus(e) if args.if_running => {
            log::warn!("{e}; nothing to do (--if-running)");
            return Ok(());
        }
        Reach::NoBus(e) => return Err(e),
        Reach::Up(bus) => (bus, true),
        Reach::NoNm(bus, _) => (bus, false),
    };
    held.borrow_mut().0 = Some(bus.clone());
    // networkd's file first, as NetworkManager's drop-in below: networkd leaves a new
    // matching link alone from its first moment. Written when networkd runs, or before
    // it does when --manager names it.
    let nd_running = match nd_text {
        Some(_) => bus.networkd_running().await?,
        None => false,
    };
    let nd_explicit = matches!(args.manager, Some(Manager::Networkd | Manager::All));
    if let Some(text) = nd_text {
        if nd_running || nd_explicit {
            networkd::write(&args.networkd_dir, text)?;
        }
        if nd_running {
            let done =
                networkd::apply(&bus, patterns, || Ok(true), Cause::Existing, Reload::Always)
                    .await?;
            emit_released(&done, args.json, false)?;
        } else {
            log::info!("systemd-networkd is not on the bus; watching for it");
        }
    }
    if !args.wants_nm() {
        notify::ready();
        return nd_watch::watch(&bus, patterns, nd_text.unwrap_or_default(), args).await;
    }
    // The drop-in first: NetworkManager leaves a new matching device alone from its
    // first moment, not just from our Managed=false a few milliseconds later.
    let dir = &args.runtime_dir;
    persist::create_dir(dir)?;
    let path = persist::drop_in_path(dir, Kind::Watch);
    persist::write(dir, Kind::Watch, &persist::render(patterns, Kind::Watch))?;
    held.borrow_mut().1 = true;
    log::info!("wrote {}", path.display());
    if args.persist {
        let (dir, kind) = (&args.conf_dir, Kind::Persist);
        if persist::write(dir, kind, &persist::render(patterns, kind))? {
            log::info!("wrote {}", persist::drop_in_path(dir, kind).display());
        }
    }
    if running {
        match bus.reload_config().await {
            Ok(()) => log::info!("NetworkManager reloaded its configuration"),
            // Not answering: the watch's own bound decides whether it ever will.
            Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::NoAnswer) => {
                log::warn!("{e}")
            }
            Err(e) => return Err(e),
        }
    } else {
        log::info!("NetworkManager is not on the bus; the drop-in takes effect when it starts");
    }
    notify::ready();
    let nm = watch::watch(&bus, patterns, args.json, args.timeout);
    match nd_text {
        Some(text) => tokio::try_join!(nm, nd_watch::watch(&bus, patterns, text, args)).map(drop),
        None => nm.await,
    }
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

/// Write networkd's records to stdout (see [`networkd::render_released`]).
fn emit_released(done: &[Released], json: bool, changed_only: bool) -> Result<()> {
    let out = networkd::render_released(done, json, changed_only)?;
    if out.is_empty() {
        return Ok(());
    }
    output::print(&out)
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
        // Never the machine's own directories.
        let tmp = testbed::TempDir::new("nmu-nobus");
        let scratch = tmp.path().join("dirs");
        let (conf, rt) = (scratch.join("conf.d"), scratch.join("run/conf.d"));
        let base = [
            "nm-unmanage".into(),
            "--bus-address".into(),
            "unix:path=/nonexistent/bus".into(),
            "--conf-dir".into(),
            conf.clone().into_os_string(),
            "--runtime-dir".into(),
            rt.clone().into_os_string(),
        ];
        for extra in [
            &[][..],
            &["--watch"],
            &["--watch", "--persist"],
            &["--runtime"],
        ] {
            let mut args: Vec<OsString> = base.to_vec();
            args.extend(extra.iter().map(OsString::from));
            // No bus at all: nothing to wait on, not even for a watcher, and (with
            // --if-running) nothing written.
            args.push("--if-running".into());
            run(args.clone()).unwrap();
            assert!(!scratch.exists(), "{extra:?}");
            args.pop();
            let e = run(args).unwrap_err();
            assert_eq!(e.code(), 69, "{extra:?}: {e}");
        }
        // Without --if-running, --runtime writes its drop-in all the same (it takes
        // effect when NetworkManager starts); a watcher writes nothing without a bus.
        assert!(rt.join(RUNTIME_DROP_IN).exists());
        assert!(!rt.join(WATCH_DROP_IN).exists());
    }

    #[test]
    fn a_pattern_that_takes_every_interface_is_refused_before_any_bus_access() {
        for bad in ["*", "interface-name:*", "?*", "**"] {
            let v = [
                "nm-unmanage",
                "--bus-address",
                "unix:path=/nonexistent",
                "--persist",
                "--conf-dir",
                "/nonexistent/conf.d",
                bad,
            ];
            let e = run(v.iter().map(OsString::from).collect()).unwrap_err();
            assert_eq!(e.code(), 65, "{bad}: {e}");
            assert!(e.to_string().contains("matches every interface"), "{e}");
        }
    }

    #[test]
    fn manager_choice_and_networkd_without_a_bus() {
        assert_eq!(
            parse(&["--manager", "networkd"]).unwrap().manager,
            Some(Manager::Networkd)
        );
        assert_eq!(parse(&[]).unwrap().manager, None);
        assert_eq!(parse(&["--manager", "systemd"]).unwrap_err().code(), 64);
        let tmp = testbed::TempDir::new("nmu-nd-nobus");
        let nd_dir = tmp.path().join("network");
        let base = [
            "nm-unmanage".into(),
            "--bus-address".into(),
            "unix:path=/nonexistent/bus".into(),
            "--manager".into(),
            "networkd".into(),
            "--networkd-dir".into(),
            nd_dir.clone().into_os_string(),
        ];
        for extra in [&[][..], &["--persist"], &["--watch"], &["--remove"]] {
            let mut args: Vec<OsString> = base.to_vec();
            args.extend(extra.iter().map(OsString::from));
            let e = run(args.clone()).unwrap_err();
            assert_eq!(e.code(), 69, "{extra:?}: {e}");
            args.push("--if-running".into());
            run(args).unwrap();
            assert!(!nd_dir.exists(), "{extra:?}");
        }
    }

    #[test]
    fn timeouts_are_positive_seconds() {
        let a = parse(&["--timeout", "0.25"]).unwrap();
        assert_eq!(a.timeout, Duration::from_millis(250));
        assert_eq!(parse(&[]).unwrap().timeout, DEFAULT_TIMEOUT);
        for bad in ["0", "-1", "x", "1e9", "nan"] {
            assert_eq!(parse(&["--timeout", bad]).unwrap_err().code(), 64, "{bad}");
        }
    }

    #[test]
    fn runtime_is_a_one_shot_mode_of_its_own() {
        for bad in [&["--runtime", "--watch"][..], &["--runtime", "--persist"]] {
            assert_eq!(parse(bad).unwrap_err().code(), 64, "{bad:?}");
        }
        assert!(parse(&["--remove", "--runtime"]).is_ok());
        assert!(parse(&["--runtime", "--if-running", "ve-*"]).is_ok());
    }
}
