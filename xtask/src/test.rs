//! `cargo xtask test`: the README's test command and the whole of CI.

use crate::util::{self, cargo, ensure_debian_packages, Result};

/// What the privileged tests drive for real.
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "network-manager",
    "dbus",
    "procps",
];

pub fn run_tests(allow_skip: bool) -> Result {
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
    // The end-to-end tests (e2e/) run the tool binaries from the target directory.
    util::run(cargo().args(["build", "--workspace", "--bins"]))?;
    let mut test = cargo();
    test.args(["test", "--workspace", "--all-features"]);
    if !allow_skip {
        test.env("VE_TEST_REQUIRE_PRIVILEGED", "1");
    }
    util::run(&mut test)?;
    // The README's main command must keep working: run it as the last test.
    crate::demo::run(&[])
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
