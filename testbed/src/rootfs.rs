//! A Debian rootfs made by debootstrap once and cached: the booted host of
//! e2e/tests/systemd_boot.rs and the container filesystem of the podman sandbox
//! ([`crate::podman`], `podman run --rootfs`: no image pulls) are the same tree.
//!
//! What it holds beyond minbase is what those users run: systemd as init, the bus, `ip`
//! and `iptables`, NetworkManager. minbase itself brings bash (`/dev/tcp` is a client)
//! and perl-base (`IO::Socket::INET` is a server); it has no python, curl or nc.

use std::{
    fs,
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

/// The Debian release the rootfs is made of, and the packages it gets on top of
/// minbase: systemd as init, the bus, `ip` and `iptables` (the units and ve-nat run
/// them), and NetworkManager, so nm-unmanage.service's ordering against it is real.
/// (libpam-systemd provides the `logind` that NetworkManager's polkitd depends on;
/// debootstrap's resolver does not pick it by itself, and then leaves both unconfigured.)
pub const SUITE: &str = "bookworm";
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "libpam-systemd",
    "dbus",
    "iproute2",
    "iptables",
    "network-manager",
];
/// The mirror debootstrap fetches from; `VE_TEST_DEBIAN_MIRROR` overrides it.
pub const MIRROR: &str = "http://deb.debian.org/debian";

/// The rootfs in the directory `cache` (the tests use `target/tmp/boot-rootfs`), built
/// on first use (debootstrap, ~1.5 min) and reused after. The cache key names the suite
/// and the packages; a build in progress is a `.partial` directory, renamed into place
/// only when complete, under a lock so two processes (or threads) never build it at
/// once. Panics when it cannot be built: every caller is a test or a bench that needs it.
pub fn cached(cache: &Path) -> PathBuf {
    fs::create_dir_all(cache).unwrap_or_else(|e| panic!("{}: {e}", cache.display()));
    let key = format!("{SUITE}-{}", PACKAGES.join("-"));
    let dir = cache.join(&key);
    let lock = fs::File::create(cache.join(format!("{key}.lock"))).expect("lock file");
    // SAFETY: flock(2) on a file descriptor we own; released when `lock` is closed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "locking the rootfs cache");
    // Rootfses of other package lists (an older version of this list) and a build
    // that was interrupted go.
    for e in fs::read_dir(cache).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != key && name != format!("{key}.lock") {
            let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
        }
    }
    if dir.join("sbin/init").exists() {
        return dir;
    }
    let partial = cache.join(format!("{key}.partial"));
    let mirror = std::env::var("VE_TEST_DEBIAN_MIRROR").unwrap_or_else(|_| MIRROR.into());
    eprintln!(
        "building the test rootfs in {} (debootstrap {SUITE}, once)",
        dir.display()
    );
    let t = Instant::now();
    // In a private mount namespace: the /proc and /sys that debootstrap mounts inside
    // the target can never be left mounted in the machine's.
    let out = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "debootstrap",
            "--variant=minbase",
        ])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&partial)
        .arg(&mirror)
        .stdin(Stdio::null())
        .output()
        .expect("spawning debootstrap");
    assert!(
        out.status.success(),
        "debootstrap failed ({}): {}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stdout), 20)
    );
    fs::rename(&partial, &dir).expect("moving the rootfs into place");
    eprintln!("rootfs built in {:.0?}", t.elapsed());
    dir
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
