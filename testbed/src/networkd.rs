//! A real systemd-networkd (Debian 12, systemd 252) running standalone, as root, in a
//! sandbox namespace: a holder process keeps a private mount namespace in which /sys is
//! read-only (networkd's udev-less mode) and scratch directories cover /run,
//! /etc/systemd/network and /etc/NetworkManager; the daemon and its clients run there
//! (`nsenter`). The system bus is testbed's private one ([`crate::nm::Setup::bus`]),
//! its own or one shared with a sandboxed NetworkManager. The stock
//! `/lib/systemd/network/80-container-ve.network` stays visible: it is what grabs `ve-*`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    have_command,
    nm::{self, NetworkManager},
    process::{stop, stop_now, wait_for},
    Netns,
};

/// The daemon.
pub const DAEMON: &str = "/lib/systemd/systemd-networkd";

/// Its bus name.
pub const NAME: &str = "org.freedesktop.network1";

/// What the bus must allow networkd, which drops to uid systemd-network: to connect, to
/// own its name, to talk and be talked to. Add it to a bus that networkd should join.
pub const POLICY: &str = r#"  <policy user="systemd-network">
    <allow own="org.freedesktop.network1"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
  <policy context="default">
    <allow user="systemd-network"/>
    <allow send_destination="org.freedesktop.network1"/>
  </policy>
"#;

/// A bus that root may use for everything and networkd may join.
pub fn bus_conf(dir: &Path) -> String {
    nm::bus_conf_with(dir, &format!("{}{POLICY}", nm::ROOT_POLICY))
}

/// A sandboxed systemd-networkd (see the module doc). The daemon, the holder and a bus
/// of its own (if it has one) are stopped, and the scratch directory removed, on drop.
pub struct Networkd {
    dir: PathBuf,
    bus_address: String,
    holder: Child,
    daemon: Option<Child>,
    // Dropped after the daemon: a bus of its own (none when it shares one).
    own_bus: Option<NetworkManager>,
}

impl Networkd {
    /// The programs it needs.
    pub const COMMANDS: &'static [&'static str] = &[
        DAEMON,
        "networkctl",
        "busctl",
        "dbus-daemon",
        "nsenter",
        "unshare",
        "mount",
    ];

    /// Whether systemd-networkd and dbus are installed.
    pub fn available() -> bool {
        Self::COMMANDS.iter().all(|c| have_command(c))
    }

    /// The whole recipe: a private bus, the holder and the daemon in `host`; returns
    /// once networkd owns its bus name.
    pub fn start(host: &Netns, tag: &str) -> Result<Networkd, String> {
        let dir = Self::scratch_dir(tag);
        let bus = nm::Setup::new(dir.join("bus"))
            .bus_conf(bus_conf)
            .bus(host)?;
        let mut nd = Networkd::on_bus(host, dir, &bus.bus_address(), None)?;
        nd.own_bus = Some(bus);
        nd.spawn()?;
        Ok(nd)
    }

    /// The holder in `host`, with its scratch directories under `dir`, for a networkd
    /// on the bus at `bus_address` (whose policy includes [`POLICY`]); networkd is not
    /// running yet ([`Networkd::spawn`]). `run` is the directory bound over /run (by
    /// default `dir/run`): a sandboxed NetworkManager's own `run`, so that both daemons
    /// and the clients see one /run.
    pub fn on_bus(
        host: &Netns,
        dir: PathBuf,
        bus_address: &str,
        run: Option<&Path>,
    ) -> Result<Networkd, String> {
        let _ = fs::remove_dir_all(dir.join("etc-network"));
        for sub in ["run", "etc-network", "etc-nm"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let run = run.map_or_else(|| dir.join("run"), Path::to_path_buf);
        let ready = dir.join("holder.ready");
        let _ = fs::remove_file(&ready);
        let (d, r) = (dir.display(), run.display());
        // networkd writes its state to /run/systemd/netif as systemd-network.
        let script = format!(
            "mount -o remount,ro /sys && mount --bind {r} /run && \
             mkdir -p /run/systemd/netif /run/systemd/network && \
             chown systemd-network:systemd-network /run/systemd/netif && \
             mount --bind {d}/etc-network /etc/systemd/network && \
             mount --bind {d}/etc-nm /etc/NetworkManager && \
             touch {} && exec sleep infinity",
            ready.display()
        );
        let holder = host
            .command("unshare")
            .args(["-m", "--propagation", "slave", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the networkd holder: {e}"))?;
        let mut nd = Networkd {
            dir,
            bus_address: bus_address.to_string(),
            holder,
            daemon: None,
            own_bus: None,
        };
        let holder = &mut nd.holder;
        wait_for("the networkd holder", Duration::from_secs(10), || {
            ready.exists() || !matches!(holder.try_wait(), Ok(None))
        })?;
        if !ready.exists() {
            return Err("the networkd holder failed to set up its mounts".into());
        }
        Ok(nd)
    }

    /// Start networkd (its output appended to `networkd.log`) and wait until it owns
    /// its bus name. An error when it already runs.
    pub fn spawn(&mut self) -> Result<(), String> {
        if self.daemon.is_some() {
            return Err("networkd already running".into());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("networkd.log"))
            .map_err(|e| format!("opening networkd.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("networkd.log: {e}"))?;
        let child = self
            .command_in_mounts(DAEMON)
            .env("SYSTEMD_LOG_TARGET", "console")
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting systemd-networkd: {e}"))?;
        self.daemon = Some(child);
        let r = wait_for("networkd on the bus", Duration::from_secs(10), || {
            self.on_bus_now()
        });
        r.map_err(|e| format!("{e}; its log:\n{}", self.log_tail()))
    }

    /// Stop networkd (SIGTERM, then SIGKILL after 5 s) and wait until its name has left
    /// the bus.
    pub fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            stop(d);
        }
        let _ = wait_for("networkd to leave the bus", Duration::from_secs(5), || {
            !self.on_bus_now()
        });
    }

    /// The pid of networkd, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Whether `org.freedesktop.network1` has an owner on the bus now.
    pub fn on_bus_now(&self) -> bool {
        let out = Command::new("busctl")
            .arg(format!("--address={}", self.bus_address))
            .args(["call", "org.freedesktop.DBus", "/org/freedesktop/DBus"])
            .args(["org.freedesktop.DBus", "NameHasOwner", "s", NAME])
            .stderr(Stdio::null())
            .output();
        out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "b true")
    }

    /// The scratch directory `start(_, tag)` uses (and removes on drop).
    pub fn scratch_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ve-nd-{tag}"))
    }

    /// The scratch directory.
    pub fn scratch(&self) -> &Path {
        &self.dir
    }

    /// `unix:path=...` of the bus it is on.
    pub fn bus_address(&self) -> &str {
        &self.bus_address
    }

    /// What is /etc/systemd/network inside the sandbox (empty at the start).
    pub fn etc_dir(&self) -> PathBuf {
        self.dir.join("etc-network")
    }

    /// `program` in the holder's network and mount namespaces, with the bus in its
    /// environment: where `networkctl` works (its state comes from /run/systemd/netif)
    /// and where /run/systemd/network and /etc/systemd/network are the sandbox's.
    pub fn command_in_mounts(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-m", "-n", "--"])
            .arg(program)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus_address)
            .stdin(Stdio::null());
        c
    }

    /// `networkctl ARGS` in the sandbox: its stdout, or why it failed.
    pub fn networkctl(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command_in_mounts("networkctl")
            .args(["--no-pager", "--no-legend"])
            .args(args)
            .output()
            .map_err(|e| format!("networkctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "networkctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The SETUP column of `networkctl list` for `ifname` (`unmanaged`, `configuring`,
    /// `configured`, ...); `None` when networkctl does not list it.
    pub fn setup_state(&self, ifname: &str) -> Option<String> {
        let text = self.networkctl(&["list"]).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5 && f[1] == ifname).then(|| f[4].to_string())
        })
    }

    /// The last lines of networkd's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("networkd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Networkd {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            stop(d);
        }
        stop_now(&mut self.holder);
        self.own_bus = None;
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `ip -o monitor address` in a namespace: every address the kernel announces while it
/// runs, timestamped on arrival. It is how tests and the bench see what networkd added
/// to a link, even an address it took away again a moment later. Stopped on drop.
#[derive(Debug)]
pub struct AddrMonitor {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
}

impl AddrMonitor {
    pub fn start(ns: &Netns) -> std::io::Result<AddrMonitor> {
        use std::io::BufRead;
        let mut child = Command::new("ip")
            .args(["-o", "-n", ns.name(), "monitor", "address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let Some(out) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("ip monitor has no stdout"));
        };
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut v) = l2.lock() {
                    v.push((std::time::Instant::now(), line));
                }
            }
        });
        // `ip monitor` subscribes right after it starts; give it that moment.
        std::thread::sleep(Duration::from_millis(100));
        Ok(AddrMonitor { child, lines })
    }

    /// The monitor process, for a caller that must kill it if it is itself killed.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many announcements have arrived: a mark for [`AddrMonitor::foreign_since`].
    pub fn mark(&self) -> usize {
        self.lines.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// The announcements since `mark` of addresses added to links whose name starts
    /// with `prefix` that are neither IPv4 addresses `ours` accepts (ve-link's) nor the
    /// kernel's own IPv6 link-local ones: networkd's, in a sandbox where nothing else
    /// adds any.
    pub fn foreign_since(
        &self,
        mark: usize,
        prefix: &str,
        ours: impl Fn(&str) -> bool,
    ) -> Vec<(std::time::Instant, String)> {
        let Ok(v) = self.lines.lock() else {
            return Vec::new();
        };
        v.iter()
            .skip(mark)
            .filter(|(_, l)| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (Some(name), Some(fam), Some(addr)) = (f.get(1), f.get(2), f.get(3)) else {
                    return false;
                };
                !l.starts_with("Deleted")
                    && name.starts_with(prefix)
                    && ((*fam == "inet" && !ours(addr))
                        || (*fam == "inet6" && !addr.starts_with("fe80:")))
            })
            .cloned()
            .collect()
    }

    /// [`AddrMonitor::foreign_since`] the start, without the timestamps.
    pub fn foreign(&self, prefix: &str, ours: impl Fn(&str) -> bool) -> Vec<String> {
        self.foreign_since(0, prefix, ours)
            .into_iter()
            .map(|(_, l)| l)
            .collect()
    }
}

impl Drop for AddrMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
