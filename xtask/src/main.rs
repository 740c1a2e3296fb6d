//! `cargo xtask <task>`: the project's development tasks, in Rust instead of shell glue.

mod bench;
mod demo;
mod dist;
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
  bench [WHAT] [opts]   benchmarks; WHAT is one of: pipeline, alloc, link, nat, nm,
                        all (the default); see `cargo xtask bench --help`
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, r)) => (t.as_str(), r),
        None => {
            eprint!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    let result = match task {
        "test" => test::run(rest),
        "demo" => demo::run(rest),
        "dist" => dist::run(rest),
        "bench" => bench::run(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown task {other:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
