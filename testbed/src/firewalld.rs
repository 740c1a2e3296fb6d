//! A real firewalld (Debian 12's 1.3.3) on a private system bus in a sandbox namespace,
//! with only the programs of Debian's `dbus` and `firewalld` packages.
//!
//! The recipe, and what it taught us:
//! - A holder (`ip netns exec H unshare -m --propagation slave sh -c 'MOUNTS; exec
//!   sleep infinity'`) keeps a private mount namespace with scratch directories over
//!   /etc/firewalld (seeded with the package's firewalld.conf only), /run and /var/log;
//!   firewalld, firewall-cmd and the tool under test run there by `nsenter -t HOLDER -m
//!   -n`. firewalld 1.3 writes nothing under /var/lib; its permanent config (`--permanent`
//!   changes: zones/*.xml) lands in the scratch /etc/firewalld.
//! - Without firewalld.conf it logs an error and runs on built-in fallbacks; Debian's
//!   (DefaultZone=public, FirewallBackend=nftables, FlushAllOnReload=yes,
//!   CleanupOnExit=yes) is what hosts run, so it is copied in.
//! - The bus is `nm::Setup`'s: root may do everything, nothing is activated (the stock
//!   system.conf would activate polkit). firewalld needs no other service on it.
//! - `--nofork --nopid --log-target console`: no pid file, no /var/log/firewalld.
//! - It takes its bus name early and answers `firewall-cmd --state` with `running` once
//!   its rules are in: 1.5 s on this 2-core machine, a reload 0.7 s.
//! - Start and reload run `iptables-restore` (iptables-nft on Debian) with flush over
//!   every iptables table: other tools' iptables-nft rules go, iptables-legacy rules
//!   stay. Its own rules are one nft table, `inet firewalld`, removed at exit.
//! - `ve-+` is a valid zone interface (`+` is its wildcard, `*` is refused); asking for
//!   the zone of `ve-x` does not match it, asking for `ve-+` does.
//! - The container traffic it rejects: forwarding out of an interface in no zone ends in
//!   `reject with icmpx admin-prohibited` in its filter_FORWARD chain, whatever other
//!   tables accept.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    have_command,
    nm::{NetworkManager, Setup},
    process::{stop, stop_now, wait_for},
    Netns,
};

/// firewalld running in a sandbox namespace on a private bus. Everything it runs and
/// writes is stopped and removed on drop (the bus and the scratch directory with it).
pub struct Firewalld {
    holder: Child,
    fw: Option<Child>,
    /// The private bus (no NetworkManager runs on it) and the scratch directory.
    bus: NetworkManager,
}

impl Firewalld {
    /// The programs it needs.
    pub const COMMANDS: &'static [&'static str] = &[
        "dbus-daemon",
        "firewalld",
        "firewall-cmd",
        "nsenter",
        "unshare",
        "mount",
    ];

    /// Whether firewalld and dbus are installed.
    pub fn available() -> bool {
        Self::COMMANDS.iter().all(|c| have_command(c))
    }

    /// The scratch directory `start(_, tag)` uses (and removes on drop).
    pub fn scratch_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ve-fwd-{tag}"))
    }

    /// The bus, the holder and firewalld in `host`; returns once firewalld is running
    /// (its rules in place).
    pub fn start(host: &Netns, tag: &str) -> Result<Firewalld, String> {
        let bus = Setup::new(Self::scratch_dir(tag))
            .dir("etc-firewalld")
            .dir("log")
            .bus(host)?;
        let d = bus.scratch().to_path_buf();
        // Debian's own settings, as a host has them; nothing else of /etc/firewalld.
        let conf = "/etc/firewalld/firewalld.conf";
        if Path::new(conf).exists() {
            fs::copy(conf, d.join("etc-firewalld/firewalld.conf"))
                .map_err(|e| format!("copying {conf}: {e}"))?;
        }
        let dd = d.display();
        let mounts = format!(
            "mount --bind {dd}/etc-firewalld /etc/firewalld && mount --bind {dd}/run /run && \
             mount --bind {dd}/log /var/log && exec sleep infinity"
        );
        // `ip netns exec` execs unshare, which execs sh, which execs sleep: one pid.
        let holder = host
            .command("unshare")
            .args(["-m", "--propagation", "slave", "sh", "-c", &mounts])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the mount holder: {e}"))?;
        let mut sb = Firewalld {
            holder,
            fw: None,
            bus,
        };
        let pid = sb.holder.id();
        // The holder's /run is the scratch one once its mounts are done.
        wait_for("the holder's mounts", Duration::from_secs(10), || {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("sleep"))
        })?;
        sb.spawn()?;
        sb.wait_running(Duration::from_secs(30))?;
        Ok(sb)
    }

    /// Start firewalld (its output appended to `firewalld.log`) without waiting.
    pub fn spawn(&mut self) -> Result<(), String> {
        if self.fw.is_some() {
            return Err("firewalld already running".into());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.scratch().join("firewalld.log"))
            .map_err(|e| format!("opening firewalld.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("firewalld.log: {e}"))?;
        let fw = self
            .command("firewalld")
            .args(["--nofork", "--nopid", "--log-target", "console"])
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting firewalld: {e}"))?;
        self.fw = Some(fw);
        Ok(())
    }

    /// Wait until `firewall-cmd --state` says running.
    pub fn wait_running(&self, timeout: Duration) -> Result<(), String> {
        wait_for("firewalld to run", timeout, || {
            self.command("firewall-cmd")
                .arg("--state")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map_err(|e| format!("{e}; its log:\n{}", self.log_tail()))
    }

    /// Stop firewalld (SIGTERM: it removes its table; SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(fw) = self.fw.take() {
            stop(fw);
        }
    }

    /// Stop and start it again, as `systemctl restart firewalld` does; returns once it
    /// runs.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()?;
        self.wait_running(Duration::from_secs(30))
    }

    /// `firewall-cmd ARGS`; its stdout, or its stderr as the error.
    pub fn cmd(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command("firewall-cmd")
            .args(args)
            .output()
            .map_err(|e| format!("running firewall-cmd: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "firewall-cmd {args:?}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Everything firewalld would say of its config: each zone's settings, runtime and
    /// permanent, and the default zone. Equal before and after means it is as it was.
    pub fn config(&self) -> Result<String, String> {
        Ok(format!(
            "runtime:\n{}\npermanent:\n{}\ndefault: {}",
            self.cmd(&["--list-all-zones"])?,
            self.cmd(&["--permanent", "--list-all-zones"])?,
            self.cmd(&["--get-default-zone"])?
        ))
    }

    /// A command running `program` in the holder's mount and network namespaces (where
    /// /etc/firewalld, /run and /var/log are the sandbox's), on the private bus.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-m", "-n", "--"])
            .arg(program)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .stdin(Stdio::null());
        c
    }

    /// `unix:path=DIR/bus`, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn bus_address(&self) -> String {
        self.bus.bus_address()
    }

    /// The pid of firewalld, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.fw.as_ref().map(Child::id)
    }

    /// The scratch directory everything lives in (removed on drop).
    pub fn scratch(&self) -> &Path {
        self.bus.scratch()
    }

    /// The last lines of firewalld's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.scratch().join("firewalld.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Firewalld {
    fn drop(&mut self) {
        self.stop();
        stop_now(&mut self.holder);
        // `bus` drops next: the bus daemon stops and the scratch directory goes.
    }
}

/// `nft list ruleset` of the machine's own namespace (only read), to prove a sandboxed
/// daemon left it alone: compare it before and after.
pub fn root_ruleset() -> String {
    Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
