//! Privilege gates: a privileged test runs as root with the programs it drives, skips
//! with a message for contributors, and fails under `cargo xtask test`.

/// Set (to anything) by `cargo xtask test`: a privileged test that cannot run fails
/// instead of skipping.
pub const REQUIRE_PRIVILEGED: &str = "VE_TEST_REQUIRE_PRIVILEGED";

/// Whether a privileged test can run. Without root it prints why and returns false (so
/// `cargo test` works for contributors), unless [`REQUIRE_PRIVILEGED`] is set, in which
/// case it panics: under the README's test command nothing skips silently.
pub fn privileged(test: &str, commands: &[&str]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for c in commands {
        if !have_command(c) {
            missing.push(format!("the `{c}` command"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("{test} needs {}", missing.join(" and "));
    if std::env::var_os(REQUIRE_PRIVILEGED).is_some() {
        panic!("{why}; {REQUIRE_PRIVILEGED} is set, so this is a failure, not a skip");
    }
    eprintln!("SKIPPED: {why} (run `cargo xtask test` as root to include it)");
    false
}

/// Whether `cmd` is on PATH (or in /usr/sbin and /sbin, where root's tools live).
pub fn have_command(cmd: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| std::path::Path::new(d).join(cmd).is_file());
    found
}
