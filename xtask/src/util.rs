//! Small helpers shared by the tasks: running commands, finding the workspace, packages.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub type Result<T = ()> = std::result::Result<T, String>;

/// The workspace root (the parent of xtask/).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Run a command, echoing it; fail with its exit status.
pub fn run(cmd: &mut Command) -> Result {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("running {}: {e}", show(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {status}", show(cmd)))
    }
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Marks the policy-rc.d that `ensure_debian_packages` writes and removes.
const POLICY_MARKER: &str = "written by cargo xtask while it installs packages";

/// Install the Debian packages in `wanted` that are missing, saying which. Only as root
/// on a machine with apt-get; elsewhere it just reports what is missing.
pub fn ensure_debian_packages(wanted: &[&str]) -> Result {
    if !Path::new("/usr/bin/dpkg-query").exists() {
        eprintln!("xtask: not a Debian system; make sure these are installed: {wanted:?}");
        return Ok(());
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${db:Status-Abbrev}", p])
                .output()
                .map(|o| o.stdout.starts_with(b"ii"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "missing Debian packages {missing:?}; install them (as root: apt-get install {})",
            missing.join(" ")
        ));
    }
    eprintln!(
        "xtask: installing missing Debian packages: {}",
        missing.join(" ")
    );
    // Installing network-manager on a systemd host would start it on the real network:
    // a policy-rc.d that says "no" keeps every package's service stopped.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    // One left by an earlier run that was killed is ours too (it carries our marker).
    let ours = !policy.exists()
        || std::fs::read_to_string(policy).is_ok_and(|t| t.contains(POLICY_MARKER));
    if ours {
        std::fs::write(policy, format!("#!/bin/sh\n# {POLICY_MARKER}\nexit 101\n"))
            .map_err(|e| e.to_string())?;
        run(Command::new("chmod").args(["755", "/usr/sbin/policy-rc.d"]))?;
    }
    let result = run(Command::new("apt-get").args(["update", "-qq"])).and_then(|()| {
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing))
    });
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result
}
