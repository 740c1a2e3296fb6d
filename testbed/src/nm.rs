//! A real NetworkManager and a private system bus in a sandbox namespace, with only the
//! programs of Debian's `dbus` and `network-manager` packages.

use std::{
    fs,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    have_command,
    process::{stop, stop_now, wait_for},
    Netns,
};

/// A real NetworkManager and a private system bus, both running in one sandbox
/// namespace (the "host"). NetworkManager gets a private mount namespace with `/sys`
/// read-only (its no-udev mode: with a writable /sys and no udevd it never finishes
/// starting) and scratch directories over `/run` and `/var/lib/NetworkManager`, so it
/// writes nothing of the machine's. Both processes are stopped, and the scratch
/// directory removed, on drop.
///
/// [`NetworkManager::start`] is the whole recipe; [`Setup`] is the same in steps, for
/// tests that pick the bus policy or start, stop and restart NetworkManager themselves.
pub struct NetworkManager {
    host: Netns,
    dir: PathBuf,
    dbus: Child,
    nm: Option<Child>,
}

/// How a [`NetworkManager`] sandbox is laid out, before anything runs: its scratch
/// directory, the bus policy, extra `[keyfile]` lines and extra directories.
pub struct Setup {
    dir: PathBuf,
    bus_conf: fn(&Path) -> String,
    keyfile_extra: String,
    extra_dirs: Vec<String>,
}

impl Setup {
    /// The defaults [`NetworkManager::start`] uses, with all state under `dir`: a bus
    /// only root may use (for everything), no extra keyfile settings.
    pub fn new(dir: PathBuf) -> Setup {
        Setup {
            dir,
            bus_conf,
            keyfile_extra: String::new(),
            extra_dirs: Vec::new(),
        }
    }

    /// The bus's configuration, made from the scratch directory (where its socket
    /// `DIR/bus` must listen).
    pub fn bus_conf(mut self, conf: fn(&Path) -> String) -> Setup {
        self.bus_conf = conf;
        self
    }

    /// Lines added to `nm.conf`'s `[keyfile]` section.
    pub fn keyfile(mut self, extra: &str) -> Setup {
        self.keyfile_extra = extra.to_string();
        self
    }

    /// Another (empty) directory to make under the scratch directory.
    pub fn dir(mut self, sub: &str) -> Setup {
        self.extra_dirs.push(sub.to_string());
        self
    }

    /// Make the scratch directory (traversable by anyone, for unprivileged clients)
    /// and start the private bus in `host`; returns once the bus accepts connections.
    /// NetworkManager is not running yet: [`NetworkManager::spawn`].
    pub fn bus(self, host: &Netns) -> Result<NetworkManager, String> {
        let dir = self.dir;
        let _ = fs::remove_dir_all(&dir);
        let subs = ["run", "varlib", "conf.d", "sysconf.d", "conns"];
        for sub in subs
            .iter()
            .copied()
            .chain(self.extra_dirs.iter().map(|s| s.as_str()))
        {
            fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let write = |name: &str, text: String| {
            fs::write(dir.join(name), text).map_err(|e| format!("writing {name}: {e}"))
        };
        write("bus.conf", (self.bus_conf)(&dir))?;
        write("nm.conf", nm_conf(&dir, &self.keyfile_extra))?;
        let log = fs::File::create(dir.join("dbus.log"))
            .map_err(|e| format!("creating dbus.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("dbus.log: {e}"))?;
        let dbus = host
            .command("dbus-daemon")
            .arg(format!("--config-file={}", dir.join("bus.conf").display()))
            .args(["--nofork", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting dbus-daemon: {e}"))?;
        let sb = NetworkManager {
            host: host.clone(),
            dir,
            dbus,
            nm: None,
        };
        // Connectable, not just there: dbus-daemon binds the path before it listens.
        wait_for("the private bus", Duration::from_secs(10), || {
            UnixStream::connect(sb.dir.join("bus")).is_ok()
        })?;
        Ok(sb)
    }
}

impl NetworkManager {
    /// The programs it needs.
    pub const COMMANDS: &'static [&'static str] = &[
        "dbus-daemon",
        "NetworkManager",
        "nm-online",
        "nmcli",
        "mount",
    ];

    /// Whether network-manager and dbus are installed.
    pub fn available() -> bool {
        Self::COMMANDS.iter().all(|c| have_command(c))
    }

    /// Start the bus and NetworkManager in `host`; returns when NetworkManager has
    /// finished starting. Devices that exist now (an uplink with addresses) are
    /// assumed as they are; veths created later get NetworkManager's default
    /// treatment (a DHCP connection), the worst case for containers.
    pub fn start(host: &Netns, tag: &str) -> Result<NetworkManager, String> {
        let mut sb = Setup::new(Self::scratch_dir(tag)).bus(host)?;
        sb.spawn()?;
        // nm-online -s: wait until NetworkManager has finished starting.
        let mut online = sb.client("nm-online");
        online.args(["-s", "-q", "-t", "20"]);
        let ok = online.status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            return Err(format!(
                "NetworkManager did not finish starting; its log:\n{}",
                sb.log_tail()
            ));
        }
        Ok(sb)
    }

    /// Start NetworkManager on the bus (its output appended to `nm.log`), without
    /// waiting for it to finish starting. An error when it already runs.
    pub fn spawn(&mut self) -> Result<(), String> {
        if self.nm.is_some() {
            return Err("NetworkManager already running".into());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nm.log"))
            .map_err(|e| format!("opening nm.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("nm.log: {e}"))?;
        let nm = nm_command(&self.host, &self.dir, &self.bus_address())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting NetworkManager: {e}"))?;
        self.nm = Some(nm);
        Ok(())
    }

    /// Stop NetworkManager (SIGTERM, then SIGKILL after 5 s), leaving the bus running.
    pub fn stop(&mut self) {
        if let Some(nm) = self.nm.take() {
            stop(nm);
        }
    }

    /// The pid of NetworkManager, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.nm.as_ref().map(Child::id)
    }

    /// The scratch directory everything lives in (removed on drop).
    pub fn scratch(&self) -> &Path {
        &self.dir
    }

    /// The scratch directory `start(_, tag)` uses (and removes on drop), so that a
    /// caller that may be interrupted can register it for removal beforehand.
    pub fn scratch_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ve-nm-{tag}"))
    }

    /// A command that runs `program` in NetworkManager's own network and mount
    /// namespaces (`nsenter`), where scratch directories cover /run and
    /// /var/lib/NetworkManager: a client that writes under /run/NetworkManager (such as
    /// `nm-unmanage --watch`, which writes a runtime drop-in there) writes the
    /// sandbox's, never the machine's. /run/netns is not visible there.
    pub fn command_in_mounts(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let pid = self.nm.as_ref().map_or(0, Child::id);
        let mut c = Command::new("nsenter");
        c.args(["-t", &pid.to_string(), "-m", "-n", "--"])
            .arg(program)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .stdin(Stdio::null());
        c
    }

    /// `unix:path=DIR/bus`, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.dir.join("bus").display())
    }

    /// The drop-in directory NetworkManager reads (`nm-unmanage --persist --conf-dir`).
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("conf.d")
    }

    /// A client program (nmcli, nm-online, nm-unmanage...) pointed at this bus.
    pub fn client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .stdin(Stdio::null());
        c
    }

    /// NetworkManager's state of the device `ifname`, e.g. `10 (unmanaged)` or
    /// `100 (connected)`; `None` when it has no such device.
    pub fn device_state(&self, ifname: &str) -> Option<String> {
        let out = self
            .client("nmcli")
            .args(["-g", "GENERAL.STATE", "device", "show", ifname])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    }

    /// Whether NetworkManager has `ifname` and leaves it alone (state 10).
    pub fn is_unmanaged(&self, ifname: &str) -> bool {
        self.device_state(ifname)
            .is_some_and(|s| s.starts_with("10 "))
    }

    /// The last lines of NetworkManager's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("nm.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for NetworkManager {
    fn drop(&mut self) {
        if let Some(nm) = self.nm.take() {
            stop(nm);
        }
        stop_now(&mut self.dbus);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `nm.conf` for a sandboxed NetworkManager whose scratch directory is `dir`: keyfile
/// connections kept there, no DNS, hostname or connectivity business; `keyfile_extra`
/// lines go into its `[keyfile]` section.
pub fn nm_conf(dir: &Path, keyfile_extra: &str) -> String {
    format!(
        "[main]\nplugins=keyfile\ndns=none\nrc-manager=unmanaged\nhostname-mode=none\n\
         [connectivity]\nenabled=false\n[keyfile]\npath={}/conns\n{keyfile_extra}",
        dir.display()
    )
}

/// The command that runs NetworkManager in `host` on the bus at `bus_address`, all its
/// state in `dir` (with `run`, `varlib`, `conf.d`, `sysconf.d` and `nm.conf` made).
/// `ip netns exec` gives it a private mount namespace, where `/sys` is remounted
/// read-only (no udev: otherwise it never finishes starting and manages nothing) and
/// scratch directories cover `/run` and `/var/lib/NetworkManager`.
pub fn nm_command(host: &Netns, dir: &Path, bus_address: &str) -> Command {
    let d = dir.display();
    let script = format!(
        "mount -o remount,ro /sys && mount --bind {d}/run /run && \
         mount --bind {d}/varlib /var/lib/NetworkManager && \
         exec NetworkManager --no-daemon --config={d}/nm.conf --config-dir={d}/conf.d \
         --system-config-dir={d}/sysconf.d --intern-config={d}/intern.conf \
         --state-file={d}/state --pid-file=/run/nm.pid"
    );
    let mut c = host.command("sh");
    c.args(["-c", &script])
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus_address);
    c
}

/// Root may use the bus for everything.
pub const ROOT_POLICY: &str = r#"  <policy user="root">
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
"#;

/// A system bus that root may use for everything and nothing gets activated on; a
/// sandboxed systemd-networkd may join it too ([`crate::networkd::POLICY`]), so both
/// managers can share one bus.
pub fn bus_conf(dir: &Path) -> String {
    crate::networkd::bus_conf(dir)
}

/// A system bus listening in `dir` with these `<policy>` elements and no service
/// directories: nothing gets activated.
pub fn bus_conf_with(dir: &Path, policies: &str) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
{policies}</busconfig>
"#,
        dir.display()
    )
}
