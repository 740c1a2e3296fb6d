//! A Debian host booted for real: a debootstrap rootfs (cached under the target
//! directory) with systemd as PID 1, run by `systemd-nspawn -b` in a network namespace
//! of its own, with files installed over it through an overlay.
//!
//! Host safety: everything runs inside `unshare -m` (a private mount namespace) with a
//! tmpfs over /run, so what systemd-nspawn keeps under /run/systemd stays private; no
//! machined registration, no /var/lib/machines (-D), no journal link; the rootfs is
//! the overlay's read-only lower layer. The container runs in a cgroup of its own,
//! which the guard kills (cgroup.kill) and removes on drop, also on panic: with its
//! processes go its network namespace, its mounts and every namespace made inside.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use testbed::TempDir;

/// PATH inside the booted host.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The cached rootfs under `target/tmp/boot-rootfs` ([`testbed::rootfs::cached`]:
/// debootstrap, ~1.5 min, once; the podman test runs containers from the same one).
pub fn rootfs() -> PathBuf {
    testbed::rootfs::cached(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-rootfs"))
}

/// Files to put over the rootfs before it boots.
#[derive(Default)]
pub struct Install {
    files: Vec<(PathBuf, Vec<u8>, u32)>,
    enable: Vec<String>,
}

impl Install {
    /// Put `contents` at `path` (absolute, inside the booted host) with `mode`.
    pub fn file(&mut self, path: &str, contents: Vec<u8>, mode: u32) -> &mut Self {
        self.files
            .push((path.trim_start_matches('/').into(), contents, mode));
        self
    }

    /// Copy the machine's file `src` to `path`, keeping its mode.
    pub fn copy(&mut self, src: &Path, path: &str) -> &mut Self {
        let contents = fs::read(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        let mode = fs::metadata(src).expect("metadata").permissions().mode() & 0o7777;
        self.file(path, contents, mode)
    }

    /// Enable `unit` before boot (`systemctl --root enable`, as a package would).
    pub fn enable(&mut self, unit: &str) -> &mut Self {
        self.enable.push(unit.to_string());
        self
    }
}

/// A booted host. Killed, with everything in it, on drop.
pub struct Booted {
    child: Option<Child>,
    /// Kills the container's cgroup when its stdin closes: on drop, and also when this
    /// test process dies without unwinding (SIGKILL), which no drop guard survives.
    /// (systemd-nspawn killed outright leaves its container running.)
    watchdog: Option<Child>,
    /// systemd, PID 1 of the container, as the machine sees it.
    pub pid1: u32,
    cgroups: Vec<PathBuf>,
    scratch: TempDir,
}

impl Booted {
    /// Boot `rootfs` with `install` over it; returns once systemd runs as PID 1 (not
    /// when boot has finished: see [`Booted::wait_booted`]).
    pub fn start(rootfs: &Path, install: &Install) -> Booted {
        remove_stale_scratch();
        let scratch = TempDir::new("boot");
        let s = scratch.path();
        for d in ["upper", "work", "merged"] {
            fs::create_dir_all(s.join(d)).expect("scratch dirs");
        }
        // Written straight into the overlay's upper layer, which the merged tree shows.
        for (path, contents, mode) in &install.files {
            let p = s.join("upper").join(path);
            fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir in upper");
            fs::write(&p, contents).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).expect("chmod");
        }
        let cgroups = make_cgroups(s);
        let mut watchdog = Command::new("sh");
        watchdog
            .args([
                "-c",
                r#"read -r _; for cg; do echo 1 > "$cg/cgroup.kill"; done"#,
            ])
            .arg("watchdog")
            .args(&cgroups)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let watchdog = watchdog.spawn().expect("spawning the watchdog");
        let mut booted = Booted {
            child: None,
            watchdog: Some(watchdog),
            pid1: 0,
            cgroups,
            scratch,
        };
        let s = booted.scratch.path();
        let machine = format!("vetest{}", std::process::id());
        let mut script = String::from("set -e\n");
        for cg in &booted.cgroups {
            script.push_str(&format!("echo $$ > '{}/cgroup.procs'\n", cg.display()));
        }
        script.push_str(&format!(
            "mount -t tmpfs -o mode=755 tmpfs /run\n\
             mount -t overlay overlay -o lowerdir='{root}',upperdir='{s}/upper',workdir='{s}/work' '{s}/merged'\n",
            root = rootfs.display(),
            s = s.display(),
        ));
        if !install.enable.is_empty() {
            script.push_str(&format!(
                "systemctl --quiet --root='{}/merged' enable {}\n",
                s.display(),
                install.enable.join(" ")
            ));
        }
        script.push_str(&format!(
            "exec systemd-nspawn --quiet -D '{s}/merged' --boot --machine={machine} \
             --private-network --capability=CAP_NET_ADMIN,CAP_NET_RAW \
             --register=no --keep-unit --link-journal=no --resolv-conf=off \
             --timezone=off --console=pipe\n",
            s = s.display()
        ));
        let log = fs::File::create(s.join("console.log")).expect("console log");
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning systemd-nspawn");
        let nspawn = child.id();
        booted.child = Some(child);
        booted.pid1 = booted.find_pid1(nspawn);
        booted
    }

    /// The container's init: the child of systemd-nspawn that runs systemd.
    fn find_pid1(&mut self, nspawn: u32) -> u32 {
        let t = Instant::now();
        loop {
            if let Some(pid) = children(nspawn).into_iter().find(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c == "systemd\n")
            }) {
                return pid;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("systemd-nspawn exited ({status}):\n{}", self.console());
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no systemd in the container after 30 s:\n{}",
                self.console()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until boot has finished; panics with the failed units and the journal
    /// unless systemd reports `running` (every unit started).
    pub fn wait_booted(&self) {
        // systemctl cannot wait before systemd has opened its socket.
        let t = Instant::now();
        while !self
            .sh_output("test -S /run/systemd/private")
            .status
            .success()
        {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "systemd opened no socket in 30 s:\n{}",
                self.console()
            );
            thread::sleep(Duration::from_millis(50));
        }
        let o = self.sh_output("timeout 150 systemctl is-system-running --wait");
        let state = stdout(&o).trim().to_string();
        if state != "running" {
            // The failed units with their own log lines, and what is still waiting.
            let units = self.sh_output(
                "systemctl --no-pager list-jobs; \
                 for u in $(systemctl --failed --plain --no-legend | cut -d' ' -f1); do \
                 echo \"--- $u\"; journalctl -b -q --no-pager -n 15 -u \"$u\"; done",
            );
            panic!(
                "boot did not finish cleanly: {state:?} ({}; {})\n{}\n{}\n--- console ---\n{}",
                o.status,
                stderr(&o).trim(),
                stdout(&units),
                self.journal(30),
                self.console()
            );
        }
    }

    /// `sh -c SCRIPT` inside the booted host (all its namespaces), success or not.
    pub fn sh_output(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a", "--", "sh", "-c", script])
            .env_clear()
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_PAGER", "")
            .stdin(Stdio::null())
            .output()
            .expect("spawning nsenter")
    }

    /// `sh -c SCRIPT` inside the booted host; must succeed; its stdout.
    pub fn sh(&self, script: &str) -> String {
        let o = self.sh_output(script);
        assert!(
            o.status.success(),
            "in the booted host: {script}: {}\n{}{}\n{}",
            o.status,
            stdout(&o),
            stderr(&o),
            self.journal(40)
        );
        stdout(&o)
    }

    /// The last `n` lines of the booted host's journal.
    pub fn journal(&self, n: usize) -> String {
        let o = self.sh_output(&format!("journalctl -b --no-pager -q -n {n}"));
        format!("--- journal ---\n{}{}", stdout(&o), stderr(&o))
    }

    fn console(&self) -> String {
        tail(
            &fs::read_to_string(self.scratch.path().join("console.log")).unwrap_or_default(),
            30,
        )
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        // Every process of the container and systemd-nspawn itself, at once.
        for cg in &self.cgroups {
            kill_cgroup(cg);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut w) = self.watchdog.take() {
            drop(w.stdin.take());
            let _ = w.wait();
        }
        for cg in &self.cgroups {
            remove_cgroup(cg);
        }
    }
}

/// The scratch directories of runs killed outright (their pid is gone).
fn remove_stale_scratch() {
    let tmp = std::env::temp_dir();
    for e in fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("ve-test-boot-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The pids whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return vec![];
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:"))
                    .is_some_and(|pp| pp.trim() == pid.to_string())
            })
        })
        .collect()
}

/// A fresh cgroup, below this process's own, in each hierarchy systemd in the container
/// uses: the unified one (cgroup v2; /sys/fs/cgroup itself or, on a hybrid host,
/// /sys/fs/cgroup/unified) and the named `systemd` v1 hierarchy of a hybrid host.
/// systemd-nspawn delegates it to the container (its payload/ and supervisor/ below).
fn make_cgroups(scratch: &Path) -> Vec<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path_of = |prefix: &str| {
        own.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|p| p.trim_start_matches('/').to_string())
    };
    let leaf = format!(
        "ve-boot-{}-{}",
        std::process::id(),
        scratch
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').next())
            .unwrap_or("0")
    );
    let mut made = Vec::new();
    let v2 = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        Some(PathBuf::from("/sys/fs/cgroup"))
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    } else {
        None
    };
    if let (Some(mount), Some(p)) = (v2, path_of("0::")) {
        made.push(mount.join(p).join(&leaf));
    }
    if Path::new("/sys/fs/cgroup/systemd/cgroup.procs").exists() {
        if let Some(p) = own.lines().find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            rest.strip_prefix("name=systemd:")
        }) {
            made.push(
                PathBuf::from("/sys/fs/cgroup/systemd")
                    .join(p.trim_start_matches('/'))
                    .join(&leaf),
            );
        }
    }
    assert!(!made.is_empty(), "no cgroup hierarchy for the container");
    // What a run that was killed outright left behind: its cgroups, by their pid.
    for cg in &made {
        let Some(rd) = cg.parent().and_then(|p| fs::read_dir(p).ok()) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("ve-boot-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                kill_cgroup(&e.path());
                remove_cgroup(&e.path());
            }
        }
    }
    for cg in &made {
        fs::create_dir_all(cg).unwrap_or_else(|e| panic!("creating {}: {e}", cg.display()));
    }
    made
}

/// Kill every process in the cgroup `cg` and below, until none is left.
fn kill_cgroup(cg: &Path) {
    // cgroup.kill (v2, Linux 5.14) takes the whole subtree at once.
    let _ = fs::write(cg.join("cgroup.kill"), "1");
    let t = Instant::now();
    loop {
        let pids = pids_below(cg);
        if pids.is_empty() || t.elapsed() > Duration::from_secs(10) {
            return;
        }
        for pid in pids {
            // SAFETY: plain kill(2); a vanished pid just yields ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn pids_below(cg: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if let Ok(rd) = fs::read_dir(cg) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(pids_below(&e.path()));
            }
        }
    }
    pids
}

/// Remove the cgroup `cg` and the ones the container made below it (deepest first).
fn remove_cgroup(cg: &Path) {
    if let Ok(rd) = fs::read_dir(cg) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let t = Instant::now();
    // A cgroup whose last process just died may take a moment to be removable.
    while fs::remove_dir(cg).is_err() && cg.exists() && t.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(20));
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
