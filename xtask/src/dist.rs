//! `cargo xtask dist`: release binaries, man pages and shell completions in target/dist,
//! the pages and completions generated from the same clap definitions the tools parse
//! their arguments with (each tool crate's `command()`).

use std::{
    fs,
    path::{Path, PathBuf},
};

use clap_complete::Shell;
use common::doc::Manual;

use crate::util::{self, cargo, Result};

const USAGE: &str = "\
usage: cargo xtask dist [--no-build] [--out DIR]

Writes to DIR (default target/dist):
  bin/                 the tools, release build (skipped with --no-build)
  cni/                 TOOL -> ../bin/TOOL, for a CNI plugin directory (with bin/)
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

/// Every tool's manual beyond its options (what `command()` shows after `--help`).
pub fn manuals() -> [(&'static str, &'static Manual); 4] {
    [
        ("ve-alloc", &ve_alloc::doc::MANUAL),
        ("ve-link", &ve_link::doc::MANUAL),
        ("ve-nat", &ve_nat::doc::MANUAL),
        ("nm-unmanage", &nm_unmanage::doc::MANUAL),
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
        cni_links(&out)?;
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

/// `out/cni/<tool>` -> `../bin/<tool>` for every tool: the directory to link or copy
/// into a runtime's CNI plugin directory (/usr/lib/cni, /opt/cni/bin), where each tool
/// is found under its CNI `type`, its own name.
pub fn cni_links(out: &Path) -> Result {
    let cni = mkdir(&out.join("cni"))?;
    for (tool, _) in tools() {
        let link = cni.join(tool);
        std::os::unix::fs::symlink(Path::new("../bin").join(tool), &link)
            .map_err(|e| format!("linking {}: {e}", link.display()))?;
    }
    Ok(())
}

/// Man pages and completions of every tool under `out`.
pub fn generate_docs(out: &Path) -> Result {
    let man = mkdir(&out.join("man/man1"))?;
    for ((tool, cmd), (_, manual)) in tools().into_iter().zip(manuals()) {
        clap_mangen::generate_to(cmd.clone(), &man)
            .map_err(|e| format!("man pages of {tool}: {e}"))?;
        // The tool's own page again, with the manual's sections in place of clap's
        // verbatim copy of the help text after the options.
        let page = man.join(format!("{tool}.1"));
        fs::write(&page, main_page(cmd.clone(), manual)?)
            .map_err(|e| format!("writing {}: {e}", page.display()))?;
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

/// A tool's main man page: clap's title, name, synopsis, description, options and
/// subcommands, then EXIT STATUS, ENVIRONMENT, FILES and EXAMPLES from `manual`, then
/// the version.
fn main_page(cmd: clap::Command, manual: &Manual) -> Result<Vec<u8>> {
    let has_subcommands = cmd.has_subcommands();
    let man = clap_mangen::Man::new(cmd);
    let mut out = Vec::new();
    let io = |e: std::io::Error| format!("rendering a man page: {e}");
    man.render_title(&mut out).map_err(io)?;
    man.render_name_section(&mut out).map_err(io)?;
    man.render_synopsis_section(&mut out).map_err(io)?;
    man.render_description_section(&mut out).map_err(io)?;
    man.render_options_section(&mut out).map_err(io)?;
    if has_subcommands {
        man.render_subcommands_section(&mut out).map_err(io)?;
    }
    out.extend_from_slice(roff_sections(manual).as_bytes());
    man.render_version_section(&mut out).map_err(io)?;
    Ok(out)
}

/// The manual's sections in roff: one tagged paragraph (`.TP`) per entry, the name in
/// bold.
fn roff_sections(manual: &Manual) -> String {
    let mut s = String::new();
    for (title, entries) in manual.sections() {
        if entries.is_empty() {
            continue;
        }
        s.push_str(&format!(".SH \"{title}\"\n"));
        for (name, text) in entries {
            s.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", roff(&name), roff(&text)));
        }
    }
    s
}

/// Text safe in a roff line: backslashes and hyphens escaped, no leading control
/// character.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with(['.', '\'']) {
        format!("\\&{t}")
    } else {
        t
    }
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
                "alloc", "show-ip", "show", "release", "list", "reserve", "gc", "import", "routes",
                "node",
            ],
        ),
        ("ve-link", &["up", "check", "down", "gc", "list", "routes"]),
        ("ve-nat", &["up", "down", "check", "status", "watch"]),
        ("nm-unmanage", &[]),
    ];

    /// `--help` of every tool lists its exit codes (only codes of the shared table, each
    /// with its shared meaning, 0 first), environment, files and examples; `-h` points
    /// there.
    #[test]
    fn long_help_has_exit_status_environment_files_and_examples() {
        use common::Exit;
        for (tool, mut cmd) in tools() {
            let long = cmd.render_long_help().to_string();
            let short = cmd.render_help().to_string();
            assert!(short.contains("see --help"), "{tool} -h: {short}");
            for heading in ["Exit status:", "Environment:", "Files:", "Examples:"] {
                assert!(
                    long.contains(&format!("\n{heading}\n")),
                    "{tool}: {heading}"
                );
            }
            let exits = long
                .split("\nExit status:\n")
                .nth(1)
                .and_then(|s| s.split("\n\n").next())
                .unwrap_or_default();
            let mut codes = Vec::new();
            for line in exits.lines().filter(|l| !l.starts_with("      ")) {
                let (code, meaning) = line
                    .trim_start()
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("{tool}: exit status line {line:?}"));
                let code: i32 = code.parse().unwrap_or_else(|_| panic!("{tool}: {line:?}"));
                let exit = Exit::ALL
                    .into_iter()
                    .find(|e| e.code() == code)
                    .unwrap_or_else(|| panic!("{tool} lists {code}, not in the table"));
                assert_eq!(meaning.trim(), exit.meaning(), "{tool}: {code}");
                codes.push(code);
            }
            assert_eq!(codes.first(), Some(&0), "{tool}: {exits}");
            assert!(codes.contains(&64), "{tool} has usage errors: {exits}");
            assert!(codes.windows(2).all(|w| w[0] < w[1]), "{tool}: table order");
            assert!(long.contains("\n  RUST_LOG\n"), "{tool}");
        }
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn cni_links_point_at_the_binaries() {
        let out = std::env::temp_dir().join(format!("ve-dist-cni-{}", std::process::id()));
        let _ = fs::remove_dir_all(&out);
        let bin = mkdir(&out.join("bin")).unwrap();
        for (tool, _) in tools() {
            fs::write(bin.join(tool), tool).unwrap();
        }
        cni_links(&out).unwrap();
        for (tool, _) in tools() {
            assert_eq!(read(&out.join("cni").join(tool)), tool);
        }
        let _ = fs::remove_dir_all(&out);
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
            for title in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"] {
                assert!(
                    page.contains(&format!(".SH \"{title}\"\n.TP\n")),
                    "{tool}.1 lacks {title}"
                );
            }
            assert!(
                !page.contains(".SH EXTRA"),
                "{tool}.1 repeats the help text"
            );
            let (_, manual) = manuals()
                .into_iter()
                .find(|m| m.0 == *tool)
                .expect("a manual per tool");
            for u in manual.exits {
                let want = format!(".TP\n\\fB{}\\fR\n{}", u.exit.code(), u.exit.meaning());
                assert!(page.contains(&want.replace("\\-", "-")), "{tool}.1: {want}");
            }
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
