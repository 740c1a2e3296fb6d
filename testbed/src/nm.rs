//! A real NetworkManager and a private system bus in a sandbox namespace, with only the
//! programs of Debian's `dbus` and `network-manager` packages.

use std::{
    fs,
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
pub struct NetworkManager {
    dir: PathBuf,
    dbus: Child,
    nm: Option<Child>,
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
        let dir = Self::scratch_dir(tag);
        let _ = fs::remove_dir_all(&dir);
        for sub in ["run", "varlib", "conf.d", "sysconf.d", "conns"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let d = dir.display().to_string();
        let write = |name: &str, text: String| {
            fs::write(dir.join(name), text).map_err(|e| format!("writing {name}: {e}"))
        };
        write("bus.conf", bus_conf(&d))?;
        write("nm.conf", nm_conf(&dir, ""))?;
        let logs = dir.clone();
        let log = move |name: &str| {
            fs::File::create(logs.join(name)).map_err(|e| format!("creating {name}: {e}"))
        };
        let dbus = host
            .command("dbus-daemon")
            .arg(format!("--config-file={d}/bus.conf"))
            .args(["--nofork", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("dbus.log")?)
            .spawn()
            .map_err(|e| format!("starting dbus-daemon: {e}"))?;
        let mut sb = NetworkManager {
            dir,
            dbus,
            nm: None,
        };
        wait_for("the private bus", Duration::from_secs(5), || {
            sb.dir.join("bus").exists()
        })?;
        let nm = nm_command(host, &sb.dir, &sb.bus_address())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("nm.log")?)
            .spawn()
            .map_err(|e| format!("starting NetworkManager: {e}"))?;
        sb.nm = Some(nm);
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
        lines[lines.len().saturating_sub(30)..].join("\n")
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

/// A system bus that root may use for everything and nothing gets activated on.
fn bus_conf(dir: &str) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={dir}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy user="root">
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#
    )
}
