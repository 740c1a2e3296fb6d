//! `cargo xtask <task>`: the project's development tasks, in Rust instead of shell glue.

#[macro_use]
mod out;
mod bench;
mod demo;
mod dist;
mod guard;
mod test;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  test [--allow-skip]   install the Debian packages the tests need (as root, when
                        missing), then fmt check, clippy, and every test, privileged
                        ones included (a privileged test that cannot run fails unless
                        --allow-skip)
  demo [--count N]      the main job: the whole pipeline at work in a sandbox of
                        network namespaces (N containers, default 3), then the
                        ve-alloc tour; see `cargo xtask demo --help`
  dist [--no-build]     release binaries, man pages, bash/zsh/fish completions and
                        the examples in target/dist; see `cargo xtask dist --help`
  bench [WHAT] [opts]   benchmarks; WHAT is one of: pipeline, alloc, cni, link, nat, nm,
                        all (the default); see `cargo xtask bench --help`

Every task prints its usage on -h/--help and runs nothing. Interrupted (SIGINT,
SIGTERM, SIGHUP, a closed stdout), a task removes its sandbox namespaces and exits
128+signal (141 for a closed stdout).
";

const TEST_USAGE: &str = "\
usage: cargo xtask test [--allow-skip]

Installs the Debian packages the tests need (as root, when missing), then runs
`cargo fmt --check`, clippy, every test with privileged tests required, and the demo.

  --allow-skip   a privileged test that cannot run (no root, a missing package) skips
                 with a note instead of failing
";

fn wants_help(args: &[String]) -> bool {
    args.iter().any(|a| a == "-h" || a == "--help")
}

fn main() -> ExitCode {
    guard::install();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, r)) => (t.as_str(), r),
        None => {
            eprint!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    let result = match task {
        "test" if wants_help(rest) => {
            say!("{TEST_USAGE}");
            Ok(())
        }
        "test" => test::run(rest),
        "demo" => demo::run(rest),
        "dist" => dist::run(rest),
        "bench" => bench::run(rest),
        "help" | "-h" | "--help" => {
            say!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown task {other:?}\n{USAGE}")),
    };
    guard::wait_if_stopping();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
