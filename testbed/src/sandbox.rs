//! Throwaway network namespaces and scratch directories.
//!
//! Tests never touch the machine's own network namespace. A [`Sandbox`] hands out
//! namespaces with a unique name prefix, so tests run in parallel, and deletes them,
//! with every process still inside, when dropped, also when the test panics.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Once,
    },
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A set of network namespaces owned by one test.
#[derive(Debug)]
pub struct Sandbox {
    prefix: String,
    made: Vec<String>,
}

impl Sandbox {
    /// A new, empty sandbox whose namespaces are named `vt<pid>x<n>-...`. The first one
    /// in a process sweeps away what killed test processes left ([`sweep_stale`]).
    pub fn new() -> Self {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(|| {
            sweep_stale();
        });
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        Sandbox {
            prefix: format!("vt{}x{n}", std::process::id()),
            made: Vec::new(),
        }
    }

    /// The unique prefix of this sandbox (useful for naming other things uniquely).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Create namespace `<prefix>-<role>` with `lo` up.
    pub fn netns(&mut self, role: &str) -> Netns {
        let name = format!("{}-{role}", self.prefix);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        self.made.push(name.clone());
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for name in self.made.iter().rev() {
            kill_all_in(name);
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The test process a sandbox namespace name says made it: `vt<pid>x<n>-<role>`.
pub fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("vt")?;
    let (pid, rest) = rest.split_once('x')?;
    let (n, _role) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// Delete the sandbox namespaces (and kill what runs in them) whose test process is
/// gone. A test killed by a signal (SIGKILL, or SIGINT from Ctrl-C on `cargo test`)
/// runs no destructor; the next sandbox cleans up after it. A namespace whose process
/// still runs, another test binary's, is left alone. Returns what it deleted.
pub fn sweep_stale() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut gone = Vec::new();
    for name in dir.filter_map(|e| e.ok()) {
        let name = name.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_all_in(&name);
        let deleted = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if deleted {
            gone.push(name);
        }
    }
    gone
}

/// Kill every process whose network namespace is `name`, so deleting it frees it.
fn kill_all_in(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain syscall; a vanished pid just yields ESRCH.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// One namespace of a sandbox, known by name under /run/netns.
#[derive(Debug, Clone)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <name> ARGS`, which must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j -n <name> ARGS` parsed as JSON.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let out = run_ok(Command::new("ip").args(["-j", "-n", &self.name]).args(args));
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `sh -c SCRIPT` inside the namespace; must succeed; returns stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = run_ok(self.command("sh").args(["-c", script]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sh -c SCRIPT` inside the namespace, success or not.
    pub fn sh_output(&self, script: &str) -> Output {
        self.command("sh")
            .args(["-c", script])
            .output()
            .expect("spawning sh")
    }
}

/// Run a command that must succeed; panics with its stderr otherwise.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A scratch directory under the system temp dir, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ve-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn only_sandbox_names_have_an_owner() {
        assert_eq!(owner_pid("vt123x0-host"), Some(123));
        assert_eq!(owner_pid("vt123x45-a-b"), Some(123));
        for other in [
            "vt123x-host",
            "vtx0-a",
            "vt12a3x0-a",
            "vt123x0",
            "demo-host",
            "vt",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }
}
