//! `cargo xtask demo`: the README's main command. Runs the real tools, built from this
//! workspace, against scratch state only, and checks what they do.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::util::{self, cargo, Result};

pub fn run(args: &[String]) -> Result {
    let mut count = 300usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--count" => {
                count = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--count needs a number")?;
            }
            other => return Err(format!("demo: unknown option {other:?}")),
        }
    }
    util::run(cargo().args(["build", "--quiet", "-p", "ve-alloc"]))?;
    let bin = util::root().join("target/debug/ve-alloc");
    let scratch = std::env::temp_dir().join(format!("ve-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let demo = Demo {
        bin,
        store: scratch.join("store"),
        checks: Vec::new(),
    };
    let result = demo.alloc_tour(count);
    let _ = std::fs::remove_dir_all(&scratch);
    let checks = result?;
    println!();
    let width = checks.iter().map(|c| c.0.len()).max().unwrap_or(0);
    let mut failed = 0;
    for (what, ok) in &checks {
        println!("  {what:width$}  {}", if *ok { "pass" } else { "FAIL" });
        failed += usize::from(!ok);
    }
    if failed > 0 {
        return Err(format!("demo: {failed} of {} checks failed", checks.len()));
    }
    println!(
        "\ndemo: all {} checks passed; scratch state removed",
        checks.len()
    );
    Ok(())
}

struct Demo {
    bin: PathBuf,
    store: PathBuf,
    checks: Vec<(String, bool)>,
}

impl Demo {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("VE_ALLOC_STORE", &self.store)
            .env("VE_ALLOC_CONFIG", "/dev/null")
            .env("VE_ALLOC_POOL6", "fd42:ee::/64")
            .env_remove("VE_ALLOC_POOL")
            .args(args);
        c
    }

    /// Run `ve-alloc ARGS`, show it like a terminal session, return (exit code, stdout).
    fn show(&self, args: &[&str], max_lines: usize) -> Result<(i32, String)> {
        println!("$ ve-alloc {}", args.join(" "));
        let o = self
            .cmd(args)
            .output()
            .map_err(|e| format!("running ve-alloc: {e}"))?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        for (i, l) in out.lines().enumerate() {
            if i == max_lines {
                println!("  ... ({} lines in all)", out.lines().count());
                break;
            }
            println!("  {l}");
        }
        for l in String::from_utf8_lossy(&o.stderr).lines() {
            println!("  (stderr) {l}");
        }
        Ok((o.status.code().unwrap_or(-1), out))
    }

    fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.checks.push((what.into(), ok));
    }

    fn alloc_tour(mut self, count: usize) -> Result<Vec<(String, bool)>> {
        println!(
            "== ve-alloc: address pairs for containers (scratch store {})\n",
            dir(&self.store)
        );
        let (code, first) = self.show(&["alloc", "web"], 10)?;
        self.check(
            "alloc prints HOST_ADDRESS/LOCAL_ADDRESS (+6)",
            code == 0 && first.contains("LOCAL_ADDRESS6="),
        );
        let (_, again) = self.show(&["alloc", "web"], 10)?;
        self.check("alloc of the same name is idempotent", again == first);
        let (_, ip) = self.show(&["show-ip", "web"], 10)?;
        self.check(
            "show-ip prints the container address",
            first.contains(&format!("LOCAL_ADDRESS={}", ip.trim())),
        );

        println!("\n# {count} containers at once (NixOS stops at 254)");
        let children: Vec<_> = (0..count)
            .map(|i| {
                self.cmd(&["alloc", &format!("ct{i:04}")])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .collect::<std::io::Result<_>>()
            .map_err(|e| format!("spawning ve-alloc: {e}"))?;
        let mut all_ok = true;
        for c in children {
            all_ok &= c
                .wait_with_output()
                .map(|o| o.status.success())
                .unwrap_or(false);
        }
        let (_, json) = self.show(&["list", "--json"], 0)?;
        let addrs: Vec<&str> = json
            .split('"')
            .filter(|s| s.starts_with("10.233.") || s.starts_with("fd42:ee:"))
            .collect();
        let unique: std::collections::HashSet<&&str> = addrs.iter().collect();
        self.check(
            format!(
                "{count} parallel allocs succeed with {} distinct addresses",
                4 * (count + 1)
            ),
            all_ok && addrs.len() == 4 * (count + 1) && unique.len() == addrs.len(),
        );
        self.show(&["list"], 4)?;
        let (_, hosts) = self.show(&["list", "--hosts"], 2)?;
        self.check(
            "list --hosts gives /etc/hosts lines",
            hosts.lines().any(|l| l.ends_with(" web.containers")),
        );

        println!("\n# crash leftovers: only web and ct0000 still exist");
        let (code, gone) = self.show(&["gc", "web", "ct0000"], 3)?;
        self.check(
            format!("gc releases the {count} others"),
            code == 0 && gone.lines().count() == count - 1,
        );
        let (code, _) = self.show(&["release", "web"], 3)?;
        let (_, list) = self.show(&["list"], 5)?;
        self.check("release frees a lease", code == 0 && !list.contains("web"));
        let (code, _) = self.show(&["alloc", "bad/name"], 3)?;
        let (_, after) = self.show(&["list"], 0)?;
        self.check(
            "bad input: exit 65, nothing changed",
            code == 65 && after == list,
        );
        Ok(self.checks)
    }
}

fn dir(p: &Path) -> String {
    p.display().to_string()
}
