//! `cargo xtask test`: the README's test command and the whole of CI.

use crate::util::{self, cargo, ensure_debian_packages, Result};

/// What the privileged tests drive for real. debootstrap and systemd-container
/// (systemd-nspawn) make and boot the Debian host that e2e/tests/systemd_boot.rs runs
/// the systemd units on.
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "network-manager",
    "dbus",
    "firewalld",
    "procps",
    "debootstrap",
    "systemd-container",
    "containernetworking-plugins",
    "etcd-server",
    "etcd-client",
    "openssl",
    "podman",
    "strace",
];

/// The tools, as installed on a host: e2e/tests/systemd_boot.rs installs their release
/// build (the one `cargo xtask dist` ships) into the booted host.
const TOOLS: &[&str] = &["ve-alloc", "ve-link", "ve-nat", "nm-unmanage"];

pub fn run_tests(allow_skip: bool) -> Result {
    // Root's tools (ip, iptables, NetworkManager) live in sbin, which a login shell's
    // PATH may lack; tests and the demo find and start them through PATH. Set while
    // this process has no other threads.
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<&str> = path.split(':').filter(|d| !d.is_empty()).collect();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    std::env::set_var("PATH", dirs.join(":"));
    ensure_debian_packages(TEST_PACKAGES)?;
    util::run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    util::run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The end-to-end tests (e2e/) run the tool binaries from the target directory: the
    // debug build, and the release build for the booted host.
    util::run(cargo().args(["build", "--workspace", "--bins"]))?;
    let mut release = cargo();
    release.args(["build", "--release", "--bins"]);
    for tool in TOOLS {
        release.args(["-p", tool]);
    }
    util::run(&mut release)?;
    let mut test = cargo();
    test.args(["test", "--workspace", "--all-features"]);
    if !allow_skip {
        test.env("VE_TEST_REQUIRE_PRIVILEGED", "1");
    }
    util::run(&mut test)?;
    // The README's main command must keep working: run it as the last test.
    let demo_args: Vec<String> = if allow_skip {
        vec![]
    } else {
        vec!["--require-full".into()]
    };
    crate::demo::run(&demo_args)
}

pub fn run(args: &[String]) -> Result {
    let mut allow_skip = false;
    for a in args {
        match a.as_str() {
            "--allow-skip" => allow_skip = true,
            other => return Err(format!("test: unknown option {other:?}")),
        }
    }
    run_tests(allow_skip)
}
