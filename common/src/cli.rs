//! The single entry point of every tool: parse, run, print `tool: error: ...`, exit.

use std::{ffi::OsString, io::Write, process};

use clap::{ArgMatches, Command, FromArgMatches};

use crate::{Error, Kind, Result};

/// Flags every tool takes: `-v` (more, repeatable) and `-q` (less) diagnostics on stderr.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct Verbosity {
    /// More diagnostics on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Fewer diagnostics on stderr: errors only
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl Verbosity {
    fn level(self) -> log::LevelFilter {
        if self.quiet {
            return log::LevelFilter::Error;
        }
        match self.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    }

    /// Start logging on stderr as `tool: level: message`, no timestamps. `RUST_LOG`,
    /// when set, wins over the flags.
    pub fn init_logging(self, tool: &'static str) {
        let mut b = env_logger::Builder::new();
        b.filter_level(self.level())
            .format(move |buf, rec| {
                let level = match rec.level() {
                    log::Level::Warn => "warning".to_string(),
                    l => l.as_str().to_ascii_lowercase(),
                };
                writeln!(buf, "{tool}: {level}: {}", rec.args())
            })
            .target(env_logger::Target::Stderr);
        if let Ok(spec) = std::env::var("RUST_LOG") {
            b.parse_filters(&spec);
        }
        // A second init (tests calling run twice in one process) is harmless.
        let _ = b.try_init();
    }
}

/// Parse `args` with `cmd`, turning clap's help and version into output and clap's
/// errors into a one-line usage error (exit 64).
pub fn parse<T: FromArgMatches>(cmd: Command, args: Vec<OsString>) -> Result<T> {
    let matches = parse_matches(cmd, args)?;
    T::from_arg_matches(&matches).map_err(clap_error)
}

/// [`parse`] without the conversion, for a tool that needs to know where a value came
/// from (`ArgMatches::value_source`).
pub fn parse_matches(cmd: Command, args: Vec<OsString>) -> Result<ArgMatches> {
    cmd.try_get_matches_from(args).map_err(clap_error)
}

/// A clap error as ours: help and version requests are "errors" in clap, they print
/// and exit 0; every other one is a one-line usage error (64).
pub fn clap_error(err: clap::Error) -> Error {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            Error::new(Kind::Help, "help or version shown")
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            Error::new(Kind::UsageHelp, "no subcommand; help shown")
        }
        _ => {
            // clap's message runs until the first blank line (then usage and tips);
            // some messages put the offending arguments on lines of their own.
            let text = err.render().to_string();
            let words: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let msg = words.join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            Error::usage(format!("{msg} (see --help)"))
        }
    }
}

/// Run a tool: `main` gets the arguments and returns a result; this prints the one error
/// line (unless its kind is silent: help shown, stdout's reader gone) and exits with the
/// code of its kind.
pub fn main(tool: &'static str, main: fn(Vec<OsString>) -> Result<()>) -> ! {
    let code = match main(std::env::args_os().collect()) {
        Ok(()) => 0,
        Err(e) => {
            if !e.kind().is_silent() {
                eprintln!("{tool}: error: {e}");
            }
            e.code()
        }
    };
    // Output went through locked, flushed writers already; nothing is buffered here.
    process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    #[command(name = "t")]
    struct Args {
        #[arg(long)]
        n: u32,
        #[command(flatten)]
        v: Verbosity,
    }

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn clap_errors_become_one_line_usage_errors() {
        use clap::CommandFactory;
        let e = parse::<Args>(Args::command(), args(&["t", "--n", "x"])).unwrap_err();
        assert_eq!(e.kind(), Kind::Usage);
        assert!(!e.message().contains('\n'), "{e}");
        assert!(e.message().contains("--n"), "{e}");
        let e = parse::<Args>(Args::command(), args(&["t"])).unwrap_err();
        assert!(e.message().contains("--n <N>"), "{e}");
        assert!(!e.message().contains('\n'), "{e}");
        let ok = parse::<Args>(Args::command(), args(&["t", "--n", "3", "-vv"])).unwrap();
        assert_eq!((ok.n, ok.v.level()), (3, log::LevelFilter::Debug));
        // Help is no failure and no error line: a kind, not a marker in the message.
        let e = parse::<Args>(Args::command(), args(&["t", "--help"])).unwrap_err();
        assert_eq!((e.kind(), e.code()), (Kind::Help, 0));
        assert!(e.kind().is_silent());
    }
}
