//! The parts of a tool's manual that clap has no place for: its exit status, the
//! environment and files it reads or writes, and examples. Each tool defines one
//! [`Manual`] constant (its `src/doc.rs`); [`Manual::attach`] puts it into `--help` and
//! `cargo xtask dist` renders the same data as the man page's EXIT STATUS, ENVIRONMENT,
//! FILES and EXAMPLES sections, so the two never disagree.
//!
//! The data is `&'static` and the help text is one small string built when the tool's
//! `command()` is: no parsing, no allocation beyond that string.

use std::fmt::Write as _;

use crate::Exit;

/// One exit code a tool uses: the shared meaning comes from [`Exit::meaning`], `when`
/// says what makes this tool exit with it ("" when the shared meaning says it all).
#[derive(Debug, Clone, Copy)]
pub struct ExitUse {
    pub exit: Exit,
    pub when: &'static str,
}

/// A name (environment variable, file, command line) and what it is for.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub name: &'static str,
    pub text: &'static str,
}

/// Shorthand for the tools' `src/doc.rs`.
pub const fn exit(exit: Exit, when: &'static str) -> ExitUse {
    ExitUse { exit, when }
}

/// Shorthand for the tools' `src/doc.rs`.
pub const fn entry(name: &'static str, text: &'static str) -> Entry {
    Entry { name, text }
}

/// Environment variables every tool reads.
pub const COMMON_ENV: &[Entry] = &[entry(
    "RUST_LOG",
    "Diagnostics filter for stderr (e.g. debug, or MODULE=trace); wins over -v and -q",
)];

/// What a tool's manual says beyond its options.
#[derive(Debug, Clone, Copy)]
pub struct Manual {
    /// Every exit code the tool can return, in table order; 0 included.
    pub exits: &'static [ExitUse],
    /// Environment variables it reads, besides [`COMMON_ENV`].
    pub env: &'static [Entry],
    /// Files and directories it reads or writes.
    pub files: &'static [Entry],
    /// Command lines, each with what it does.
    pub examples: &'static [Entry],
}

/// The man page sections, in order, with the help text's heading for each.
pub const SECTIONS: [(&str, &str); 4] = [
    ("EXIT STATUS", "Exit status"),
    ("ENVIRONMENT", "Environment"),
    ("FILES", "Files"),
    ("EXAMPLES", "Examples"),
];

impl Manual {
    /// The sections as (man page title, entries): the exit status entries carry the
    /// shared meaning, then the tool's own explanation.
    pub fn sections(&self) -> [(&'static str, Vec<(String, String)>); 4] {
        let exits = self
            .exits
            .iter()
            .map(|u| {
                let text = if u.when.is_empty() {
                    u.exit.meaning().to_string()
                } else {
                    format!("{}: {}", u.exit.meaning(), u.when)
                };
                (u.exit.code().to_string(), text)
            })
            .collect();
        let pairs = |v: &[Entry]| -> Vec<(String, String)> {
            v.iter()
                .map(|e| (e.name.to_string(), e.text.to_string()))
                .collect()
        };
        let env = pairs(self.env)
            .into_iter()
            .chain(pairs(COMMON_ENV))
            .collect();
        [
            (SECTIONS[0].0, exits),
            (SECTIONS[1].0, env),
            (SECTIONS[2].0, pairs(self.files)),
            (SECTIONS[3].0, pairs(self.examples)),
        ]
    }

    /// The text after the options in `--help`: one block per section; an exit code
    /// with its shared meaning on one line and the tool's explanation below, other
    /// names on a line of their own with the text below, wrapped at 80 columns.
    pub fn long_help(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}:", SECTIONS[0].1);
        for u in self.exits {
            let _ = writeln!(s, "  {:<4}{}", u.exit.code(), u.exit.meaning());
            wrap(&mut s, u.when, 6);
        }
        let common = [self.env, COMMON_ENV];
        let rest: [(&str, &[&[Entry]]); 3] = [
            (SECTIONS[1].1, &common),
            (SECTIONS[2].1, &[self.files]),
            (SECTIONS[3].1, &[self.examples]),
        ];
        for (heading, lists) in rest {
            let mut entries = lists.iter().flat_map(|l| l.iter()).peekable();
            if entries.peek().is_none() {
                continue;
            }
            let _ = writeln!(s, "\n{heading}:");
            for e in entries {
                let _ = writeln!(s, "  {}", e.name);
                wrap(&mut s, e.text, 10);
            }
        }
        s.truncate(s.trim_end().len());
        s
    }

    /// Add the manual to `cmd`: all of it after `--help`, a pointer to it after `-h`.
    pub fn attach(&self, cmd: clap::Command) -> clap::Command {
        cmd.after_help("Exit status, environment, files and examples: see --help.")
            .after_long_help(self.long_help())
    }
}

/// Append `text` to `s`, indented by `indent`, in lines of at most 80 columns (a longer
/// word gets a line of its own).
fn wrap(s: &mut String, text: &str, indent: usize) {
    let mut col = 0;
    for word in text.split_whitespace() {
        if col > 0 && col + 1 + word.len() > 80 {
            s.push('\n');
            col = 0;
        }
        if col == 0 {
            s.extend(std::iter::repeat_n(' ', indent));
            col = indent;
        } else {
            s.push(' ');
            col += 1;
        }
        s.push_str(word);
        col += word.len();
    }
    if col > 0 {
        s.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Manual = Manual {
        exits: &[exit(Exit::Ok, ""), exit(Exit::DataErr, "a malformed NAME")],
        env: &[entry("VE_X", "the x")],
        files: &[],
        examples: &[entry("tool up web", "Make web")],
    };

    /// The README's copy of the table is `Exit::meaning()`, row for row.
    #[test]
    fn readme_exit_table_is_exit_meaning() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let text = std::fs::read_to_string(path).expect("reading README.md");
        let section = text
            .split("\n## Exit codes\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README.md has an `## Exit codes` section");
        let rows: Vec<(String, String)> = section
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.strip_prefix('|')?.strip_suffix('|')?.split('|').collect();
                let [code, meaning] = cells[..] else {
                    return None;
                };
                let code = code.trim();
                code.parse::<i32>()
                    .ok()
                    .map(|_| (code.to_string(), meaning.trim().to_string()))
            })
            .collect();
        let want: Vec<(String, String)> = Exit::ALL
            .iter()
            .map(|e| (e.code().to_string(), e.meaning().to_string()))
            .collect();
        assert_eq!(
            rows, want,
            "README.md's exit-code table differs from Exit::meaning()"
        );
    }

    #[test]
    fn wrap_keeps_to_80_columns() {
        let mut s = String::new();
        wrap(&mut s, &"word ".repeat(40), 10);
        assert!(s.lines().count() > 1, "{s}");
        assert!(s
            .lines()
            .all(|l| l.len() <= 80 && l.starts_with("          w")));
    }

    #[test]
    fn long_help_lists_exit_codes_with_the_shared_meaning() {
        let h = M.long_help();
        assert!(h.starts_with("Exit status:\n  0   success\n  65  "), "{h}");
        assert!(
            h.contains(&format!(
                "  65  {}\n      a malformed NAME\n",
                Exit::DataErr.meaning()
            )),
            "{h}"
        );
        assert!(h.lines().all(|l| l.len() <= 80), "{h}");
        assert!(
            h.contains("Environment:\n  VE_X\n          the x\n  RUST_LOG\n"),
            "{h}"
        );
        assert!(!h.contains("Files:"), "empty sections are left out: {h}");
        assert!(h.ends_with("  tool up web\n          Make web"), "{h}");
    }
}
