//! `cargo xtask dist`: release binaries, man pages and shell completions in target/dist,
//! the pages and completions generated from the same clap definitions the tools parse
//! their arguments with (each tool crate's `command()`).

use std::{
    fs,
    path::{Path, PathBuf},
};

use clap_complete::Shell;

use crate::util::{self, cargo, Result};

const USAGE: &str = "\
usage: cargo xtask dist [--no-build] [--out DIR]

Writes to DIR (default target/dist):
  bin/                 the tools, release build (skipped with --no-build)
  man/man1/            TOOL.1 and one TOOL-SUBCOMMAND.1 per subcommand
  completions/bash/    TOOL          (for /usr/share/bash-completion/completions)
  completions/zsh/     _TOOL         (for a directory on $fpath)
  completions/fish/    TOOL.fish     (for /usr/share/fish/vendor_completions.d)
  examples/            container-net and the systemd units
";

/// Every tool with its clap definition.
pub fn tools() -> Vec<(&'static str, clap::Command)> {
    vec![
        ("ve-alloc", ve_alloc::command()),
        ("ve-link", ve_link::command()),
        ("ve-nat", ve_nat::command()),
        ("nm-unmanage", nm_unmanage::command()),
    ]
}

pub fn run(args: &[String]) -> Result {
    let mut build = true;
    let mut out = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-build" => build = false,
            "--out" => out = Some(PathBuf::from(it.next().ok_or("--out needs a directory")?)),
            "-h" | "--help" => {
                say!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("dist: unknown option {other:?}\n{USAGE}")),
        }
    }
    let target = target_dir()?;
    let out = out.unwrap_or_else(|| target.join("dist"));
    // Start from empty: nothing stale (a removed subcommand's page) survives. Only a
    // directory dist made itself (it carries a marker) is ever removed: `--out /usr`
    // by mistake must not wipe anything.
    let marker = out.join(".ve-net-dist");
    if out.exists() {
        let empty = fs::read_dir(&out)
            .map_err(|e| format!("reading {}: {e}", out.display()))?
            .next()
            .is_none();
        if !empty && !marker.exists() {
            return Err(format!(
                "dist: {} exists and was not made by dist; choose another --out",
                out.display()
            ));
        }
        fs::remove_dir_all(&out).map_err(|e| format!("removing {}: {e}", out.display()))?;
    }
    fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    fs::write(
        &marker,
        "made by cargo xtask dist; removed and remade by it\n",
    )
    .map_err(|e| format!("writing {}: {e}", marker.display()))?;
    if build {
        let mut c = cargo();
        c.args(["build", "--release", "--bins"]);
        for (tool, _) in tools() {
            c.args(["-p", tool]);
        }
        util::run(&mut c)?;
        let bin = mkdir(&out.join("bin"))?;
        for (tool, _) in tools() {
            copy(&target.join("release").join(tool), &bin.join(tool))?;
        }
    }
    generate_docs(&out)?;
    let examples = mkdir(&out.join("examples/systemd"))?;
    let src = util::root().join("examples");
    copy(
        &src.join("container-net"),
        &out.join("examples/container-net"),
    )?;
    for unit in fs::read_dir(src.join("systemd")).map_err(|e| format!("examples/systemd: {e}"))? {
        let unit = unit.map_err(|e| e.to_string())?.path();
        copy(&unit, &examples.join(unit.file_name().unwrap_or_default()))?;
    }
    sayln!("dist: wrote {}", out.display());
    Ok(())
}

/// Man pages and completions of every tool under `out`.
pub fn generate_docs(out: &Path) -> Result {
    let man = mkdir(&out.join("man/man1"))?;
    for (tool, cmd) in tools() {
        clap_mangen::generate_to(cmd.clone(), &man)
            .map_err(|e| format!("man pages of {tool}: {e}"))?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let dir = mkdir(&out.join("completions").join(shell.to_string()))?;
            let mut cmd = cmd.clone();
            let file = clap_complete::generate_to(shell, &mut cmd, tool, &dir)
                .map_err(|e| format!("{shell} completions of {tool}: {e}"))?;
            // bash-completion looks a command's completions up by its bare name.
            if shell == Shell::Bash {
                fs::rename(&file, dir.join(tool))
                    .map_err(|e| format!("renaming {}: {e}", file.display()))?;
            }
        }
    }
    Ok(())
}

/// The target directory: the parent of the profile directory this xtask runs from.
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| format!("finding xtask: {e}"))?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} is not in a target directory", exe.display()))
}

fn mkdir(p: &Path) -> Result<PathBuf> {
    fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
    Ok(p.to_path_buf())
}

fn copy(from: &Path, to: &Path) -> Result {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each tool must offer; a subcommand clap knows but this list does not is
    /// caught too, since every subcommand of `command()` is checked.
    const EXPECTED: &[(&str, &[&str])] = &[
        (
            "ve-alloc",
            &[
                "alloc", "show-ip", "show", "release", "list", "reserve", "gc", "import",
            ],
        ),
        ("ve-link", &["up", "check", "down", "gc", "list"]),
        ("ve-nat", &["up", "down", "check", "status"]),
        ("nm-unmanage", &[]),
    ];

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn man_pages_and_completions_exist_and_mention_every_subcommand() {
        let out = std::env::temp_dir().join(format!("ve-dist-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&out);
        generate_docs(&out).unwrap();
        let tools = tools();
        assert_eq!(tools.len(), EXPECTED.len());
        for ((tool, cmd), (name, expected)) in tools.iter().zip(EXPECTED) {
            assert_eq!(tool, name);
            let mut subs: Vec<String> = cmd
                .get_subcommands()
                .map(|s| s.get_name().to_string())
                .filter(|s| s != "help")
                .collect();
            for e in *expected {
                assert!(subs.iter().any(|s| s == e), "{tool} has no subcommand {e}");
            }
            subs.sort();
            let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
            want.sort();
            assert_eq!(subs, want, "{tool}: update EXPECTED (and the README)");

            // roff writes `-` as `\-`.
            let page = read(&out.join(format!("man/man1/{tool}.1"))).replace("\\-", "-");
            assert!(page.contains(&format!(".TH {tool} 1")), "{tool}.1: {page}");
            let bash = read(&out.join(format!("completions/bash/{tool}")));
            let zsh = read(&out.join(format!("completions/zsh/_{tool}")));
            let fish = read(&out.join(format!("completions/fish/{tool}.fish")));
            for sub in &subs {
                assert!(
                    page.contains(&format!("{tool}-{sub}(1)")),
                    "{tool}.1 lacks {sub}"
                );
                let subpage = read(&out.join(format!("man/man1/{tool}-{sub}.1")));
                assert!(subpage.contains(".SH SYNOPSIS"), "{tool}-{sub}.1");
                assert!(
                    bash.contains(sub.as_str()),
                    "bash completion of {tool}: {sub}"
                );
                assert!(
                    zsh.contains(&format!("'{sub}:")),
                    "zsh completion of {tool}: {sub}"
                );
                assert!(
                    fish.contains(&format!("-a \"{sub}\"")),
                    "fish completion of {tool}: {sub}"
                );
            }
            // Options are there too (nm-unmanage has options only).
            for opt in cmd.get_arguments().filter_map(|a| a.get_long()) {
                assert!(page.contains(&format!("--{opt}")), "{tool}.1 lacks --{opt}");
                assert!(fish.contains(&format!("-l {opt}")), "fish: {tool} --{opt}");
                assert!(bash.contains(&format!("--{opt}")), "bash: {tool} --{opt}");
                assert!(zsh.contains(&format!("--{opt}")), "zsh: {tool} --{opt}");
            }
        }
        let _ = fs::remove_dir_all(&out);
    }
}
