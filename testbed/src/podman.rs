//! A real podman (Debian 12's 4.3.1) with its CNI backend, in a sandbox host namespace,
//! running containers from a cached debootstrap rootfs ([`crate::rootfs`]): no image
//! pulls, no registry, nothing of the machine's podman or CNI configuration.
//!
//! The recipe, and what it taught us:
//! - A holder, `ip netns exec HOST unshare -m -p --fork --kill-child --mount-proc
//!   --propagation slave sh -c 'MOUNTS; exec sleep infinity'`, keeps a private mount
//!   namespace and is PID 1 of a PID namespace; podman and everything it starts
//!   (conmon, crun, the containers' own PID namespaces below) run in both, by `nsenter -t
//!   INIT -m -n -p`. SIGKILL to the `unshare` (on drop, by [`crate::Sandbox`]'s sweep of
//!   the host namespace, or through `PR_SET_PDEATHSIG` when the thread that started it
//!   dies, a test killed outright included) kills its child, and with PID 1 the kernel
//!   kills every process of the namespace and of the namespaces below it: no container
//!   outlives the sandbox. The mount namespace, podman's netns files and overlays go
//!   with them.
//! - MOUNTS: a scratch directory over /run (podman's `/run/netns/cni-*`, crun's state,
//!   lock files), tmpfs over /var/lib (libcni's cache /var/lib/cni, host-local's default
//!   data dir) and /var/tmp, empty tmpfs over /etc/containers and /etc/cni (the machine's
//!   configuration is never read and nothing can land there), and `mount -t cgroup2
//!   none /sys/fs/cgroup` (`ip netns exec` mounts a fresh sysfs without it, and crun
//!   fails), and tmpfs over /dev/shm: rootful podman keeps its locks in a shared memory
//!   segment there (`libpod_lock`), and a fresh podman's first "refresh" frees every
//!   lock in it, which must never be the machine's or another sandbox's.
//! - Configuration: `CONTAINERS_CONF` names a scratch containers.conf
//!   (`network_backend = "cni"`, `cni_plugin_dirs` a directory of symlinks named after
//!   each plugin `type`, `network_config_dir` the scratch conflists, `cgroups =
//!   "disabled"`, cgroupfs, file events, `tmp_dir`, and `default_ulimits = []`: this VM
//!   refuses raising nofile/nproc); every call also gets `--root`, `--runroot`,
//!   `--storage-driver vfs`, `--cni-config-dir`, `--cgroup-manager cgroupfs` and
//!   `--events-backend file`. HOME, TMPDIR and `DBUS_SYSTEM_BUS_ADDRESS` (a socket that
//!   does not exist) point into the scratch directory; libcni passes podman's
//!   environment on to the plugins.
//! - Containers: `podman run --rootfs DIR:O` (an overlay keeps the rootfs unchanged).
//!   ~1.2-1.8 s per `run` on this 2-core machine.
//! - Podman 4.3.1 calls VERSION on every plugin of a conflist when it loads it, reads
//!   only results whose cniVersion equals the request's (not 1.1.0), and rejects a
//!   result whose container interface lacks `mac` or `sandbox`. It passes the container
//!   name as `K8S_POD_NAME` in CNI_ARGS and the `-p` mappings as the `portMappings`
//!   capability. The reference plugins (ptp with ipMasq, host-local with
//!   `routes: [{dst: 0.0.0.0/0}]`, portmap) pass in this sandbox.

use std::{
    ffi::OsStr,
    fs,
    os::unix::{fs::symlink, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{have_command, process::wait_for, Netns, TempDir};

/// podman in a sandbox (see the module doc). Every process it started is killed and
/// the scratch directory removed on drop.
pub struct Podman {
    /// The `unshare` whose child is the holder (PID 1 of the PID namespace).
    holder: Option<Child>,
    /// That child, as the machine sees it: what `nsenter -t` enters.
    init: u32,
    rootfs: PathBuf,
    // Dropped after the holder is dead (see Drop).
    dir: TempDir,
}

impl Podman {
    /// The programs it needs.
    pub const COMMANDS: &'static [&'static str] =
        &["podman", "conmon", "crun", "nsenter", "unshare", "mount"];

    /// Whether podman and its runtime are installed.
    pub fn available() -> bool {
        Self::COMMANDS.iter().all(|c| have_command(c))
    }

    /// The holder in `host`, the scratch configuration, `plugins` (each a `type` name
    /// and the binary it links to) in the plugin directory, and `networks` (each a name
    /// and its conflist) in the configuration directory. Containers run from `rootfs`.
    pub fn start(
        host: &Netns,
        rootfs: &Path,
        plugins: &[(&str, &Path)],
        networks: &[(&str, &serde_json::Value)],
    ) -> Result<Podman, String> {
        let dir = TempDir::new("podman");
        let d = dir.path();
        for sub in [
            "run", "cni-bin", "cni-conf", "root", "runroot", "tmp", "home",
        ] {
            fs::create_dir_all(d.join(sub)).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        for (name, target) in plugins {
            symlink(target, d.join("cni-bin").join(name))
                .map_err(|e| format!("linking plugin {name}: {e}"))?;
        }
        for (name, conflist) in networks {
            fs::write(
                d.join("cni-conf").join(format!("{name}.conflist")),
                format!("{conflist:#}\n"),
            )
            .map_err(|e| format!("writing conflist {name}: {e}"))?;
        }
        fs::write(d.join("containers.conf"), containers_conf(d))
            .map_err(|e| format!("writing containers.conf: {e}"))?;
        let dd = d.display();
        let mounts = format!(
            "mount --bind {dd}/run /run && mount -t tmpfs tmpfs /var/lib && \
             mount -t tmpfs tmpfs /var/tmp && mount -t tmpfs tmpfs /etc/containers && \
             mount -t tmpfs tmpfs /etc/cni && mount -t cgroup2 none /sys/fs/cgroup && \
             mount -t tmpfs tmpfs /dev/shm && \
             exec sleep infinity"
        );
        for etc in ["/etc/containers", "/etc/cni"] {
            if !Path::new(etc).is_dir() {
                return Err(format!("{etc} is missing: is podman installed?"));
            }
        }
        let log = fs::File::create(d.join("holder.log"))
            .map_err(|e| format!("creating holder.log: {e}"))?;
        let mut cmd = host.command("unshare");
        cmd.args([
            "-m",
            "-p",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "slave",
            "sh",
            "-c",
            &mounts,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        // SAFETY: prctl(2) only, which is async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let holder = cmd
            .spawn()
            .map_err(|e| format!("starting the holder: {e}"))?;
        let mut pm = Podman {
            holder: Some(holder),
            init: 0,
            rootfs: rootfs.to_path_buf(),
            dir,
        };
        pm.init = pm.wait_holder()?;
        Ok(pm)
    }

    /// The holder's PID 1 once its mounts are done (it then runs `sleep`).
    fn wait_holder(&mut self) -> Result<u32, String> {
        let Some(holder) = self.holder.as_mut() else {
            return Err("no holder".into());
        };
        let pid = holder.id();
        let t = Instant::now();
        loop {
            let child = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok());
            if let Some(init) = child {
                if fs::read_link(format!("/proc/{init}/exe")).is_ok_and(|p| p.ends_with("sleep")) {
                    return Ok(init);
                }
            }
            if let Ok(Some(status)) = holder.try_wait() {
                return Err(format!(
                    "the podman sandbox's holder exited ({status}): {}",
                    fs::read_to_string(self.dir.path().join("holder.log")).unwrap_or_default()
                ));
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err("the podman sandbox's holder did not start in 10 s".into());
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// A command running `program` in the holder's namespaces (mount, network, PID):
    /// where podman's /run, netns files and processes are.
    pub fn in_mounts(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.init.to_string(), "-m", "-n", "-p", "--"])
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// `podman` with the sandbox's environment and global options; add the subcommand.
    pub fn command(&self) -> Command {
        let d = self.dir.path();
        let mut c = self.in_mounts("podman");
        c.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", d.join("home"))
            .env("TMPDIR", d.join("tmp"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                format!("unix:path={}", d.join("no-bus").display()),
            )
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .arg("--cni-config-dir")
            .arg(d.join("cni-conf"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        c
    }

    /// `podman ARGS`; its stdout, or an error with its stderr.
    pub fn podman(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command()
            .args(args)
            .output()
            .map_err(|e| format!("running podman: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "podman {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `podman run OPTIONS --rootfs ROOTFS:O ARGV`; its stdout.
    pub fn run(&self, options: &[&str], argv: &[&str]) -> Result<String, String> {
        let out = self
            .run_command(options, argv)
            .output()
            .map_err(|e| format!("running podman: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "podman run {} {}: {}: {}",
                options.join(" "),
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The command `podman run OPTIONS --rootfs ROOTFS:O ARGV`, not yet started.
    pub fn run_command(&self, options: &[&str], argv: &[&str]) -> Command {
        let mut c = self.command();
        c.arg("run")
            .args(options)
            .arg("--rootfs")
            .arg(format!("{}:O", self.rootfs.display()))
            .args(argv);
        c
    }

    /// The scratch directory everything lives in (removed on drop).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if let Some(mut h) = self.holder.take() {
            // unshare --fork ignores SIGTERM and SIGINT while it waits; SIGKILL takes it
            // and, by --kill-child, PID 1 of the namespace with everything in it.
            let _ = h.kill();
            let _ = h.wait();
        }
        // The kernel kills the namespace's processes after PID 1 is gone; their
        // overlays and mounts go with the last of them.
        let init = self.init;
        let _ = wait_for("the podman sandbox to die", Duration::from_secs(10), || {
            init == 0 || !Path::new(&format!("/proc/{init}")).exists()
        });
    }
}

/// The scratch containers.conf under `d`.
fn containers_conf(d: &Path) -> String {
    let d = d.display();
    format!(
        "[containers]\n\
         cgroups = \"disabled\"\n\
         default_ulimits = []\n\
         \n\
         [network]\n\
         network_backend = \"cni\"\n\
         cni_plugin_dirs = [\"{d}/cni-bin\"]\n\
         network_config_dir = \"{d}/cni-conf\"\n\
         \n\
         [engine]\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"file\"\n\
         events_logfile_path = \"{d}/events.log\"\n\
         tmp_dir = \"{d}/tmp\"\n"
    )
}
