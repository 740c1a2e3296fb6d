//! This project as users run it: `ve-alloc alloc NAME | ve-link up NAME --addresses -`
//! in one shell pipeline per container, `ve-nat up` once; teardown `ve-link down` then
//! `ve-alloc release`; bulk teardown `ve-link down --all` and one `ve-alloc release` of
//! every name. Its extra figures: each process alone, and the store on tmpfs. A second,
//! labelled row runs the same with the store's opt-in `--durability normal`
//! (`VE_ALLOC_DURABILITY`), which syncs nothing per lease: what the default's durable
//! commit costs in the pipeline.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use super::{
    report::{cell, median, ms},
    system::{timed, Ctr, Host, Parts, System},
    Fig, Samples, Window,
};
use crate::util::Result;

/// Samples of each process alone.
const PHASE_SAMPLES: usize = 10;

/// `normal`: the store with `--durability normal`, through the environment of every
/// process of the system (the shell passes it on to the pipeline's ve-alloc).
pub struct Ve {
    pub normal: bool,
}

pub const KEY: &str = "ve";

/// The row of [`Ve`] with `normal`.
pub const KEY_NORMAL: &str = "ve-normal";

/// What `normal` puts in the environment.
const NORMAL: (&str, &str) = ("VE_ALLOC_DURABILITY", "normal");

impl Ve {
    fn env(&self, mut c: Command) -> Command {
        if self.normal {
            c.env(NORMAL.0, NORMAL.1);
        }
        c
    }
}

impl System for Ve {
    fn key(&self) -> &'static str {
        if self.normal {
            KEY_NORMAL
        } else {
            KEY
        }
    }

    fn label(&self) -> &'static str {
        if self.normal {
            "the same, store with --durability normal (no sync per lease)"
        } else {
            "ve-alloc piped to ve-link (ve-nat once)"
        }
    }

    fn prepare(&self, h: &Host) -> Result {
        // Installed once, before any container; the store exists on a real host too.
        timed(h.tool("ve-nat").args(["up", "--external", "up0"]), None)?;
        timed(
            self.env(h.tool("ve-alloc")).args(["alloc", "warm-up"]),
            None,
        )?;
        timed(
            self.env(h.tool("ve-alloc")).args(["release", "warm-up"]),
            None,
        )?;
        Ok(())
    }

    fn setup(&self, h: &Host, c: &Ctr) -> Result<Duration> {
        timed(&mut self.env(pipeline(h, c)), None)
    }

    fn teardown(&self, h: &Host, c: &Ctr) -> Result<Parts> {
        let (d, r) = down(h, &c.name, self.normal)?;
        Ok(vec![("teardown-link", d), ("teardown-release", r)])
    }

    fn bulk_setup(&self) -> Option<fn(&Host, usize) -> Result<Duration>> {
        Some(if self.normal {
            |h, n| timed(&mut Ve { normal: true }.env(bulk_pipeline(h, n)), None)
        } else {
            bulk_setup
        })
    }

    fn bulk_teardown(&self) -> Option<fn(&Host, usize) -> Result<Parts>> {
        Some(if self.normal {
            |h, n| bulk_teardown(h, n, true)
        } else {
            |h, n| bulk_teardown(h, n, false)
        })
    }

    fn extra(&self, h: &Host) -> Result<Vec<Fig>> {
        // The phases are measured once, on the default store.
        if self.normal {
            return Ok(Vec::new());
        }
        let xs: Vec<String> = (0..PHASE_SAMPLES)
            .map(|j| format!("{}-x{j}", h.prefix))
            .collect();
        h.make_netns(&xs)?;
        let figs = phases(h);
        h.del_netns(&xs)?;
        figs
    }

    fn notes(&self, s: &Samples, ws: &[Window], n: usize) -> String {
        let mut r = String::new();
        if self.normal {
            return r;
        }
        if let (Some(d), Some(rel)) = (s.total("bulk-down"), s.total("bulk-release")) {
            let _ = writeln!(
                r,
                "bulk teardown of {n}: `ve-link down --all` {} ms + `ve-alloc release` of \
                 all {n} names in one call {} ms = {} ms",
                ms(d),
                ms(rel),
                ms(d + rel)
            );
        }
        let split: Vec<String> = ws
            .iter()
            .map(|w| {
                format!(
                    "{}: ve-link down {} + ve-alloc release {}",
                    w.label,
                    cell(s.window("teardown-link", w)),
                    cell(s.window("teardown-release", w))
                )
            })
            .collect();
        let _ = writeln!(r, "\nve teardown, ms (median / p90): {}", split.join("; "));
        let _ = writeln!(
            r,
            "ve phases with {n} containers present, median of {PHASE_SAMPLES}: `sh -c true` {} ms, \
             `ve-alloc alloc` {} ms, `ve-link up` (flags) {} ms, `ve-link down` {} ms, \
             `ve-alloc release` {} ms; with the store on tmpfs (no fsync cost): \
             `ve-alloc alloc` {} ms, `ve-alloc release` {} ms",
            ms(median(s.get("phase-sh"))),
            ms(median(s.get("phase-alloc"))),
            ms(median(s.get("phase-up"))),
            ms(median(s.get("phase-down"))),
            ms(median(s.get("phase-release"))),
            ms(median(s.get("phase-alloc-tmpfs"))),
            ms(median(s.get("phase-release-tmpfs"))),
        );
        r
    }
}

/// The one shell pipeline a user writes.
fn pipeline(h: &Host, c: &Ctr) -> Command {
    let mut cmd = h.cmd(Path::new("sh"));
    cmd.args([
        "-c",
        "\"$0\"/ve-alloc alloc \"$1\" | \"$0\"/ve-link up \"$1\" --netns \"$2\" --addresses -",
    ])
    .arg(&h.bin)
    .args([c.name.as_str(), &c.netns_path()]);
    cmd
}

/// Every container at once: one `ve-alloc alloc` of all names, one `ve-link up --from -`.
/// The bench's namespaces are `<prefix>-<name>`, not `<name>`, so a `sed` between them
/// gives each line its `netns` field (a host whose namespaces are named after the
/// containers needs no such step; the sed is timed along, to our cost).
fn bulk_pipeline(h: &Host, n: usize) -> Command {
    let names: Vec<String> = (0..n).map(|i| h.ctr(i).name).collect();
    let netns = format!(
        r#"s|^{{"name":"\([^"]*\)"|{{"netns":"{}-\1","name":"\1"|"#,
        h.prefix
    );
    let mut cmd = h.cmd(Path::new("sh"));
    cmd.args([
        "-c",
        r#"bin=$1 netns=$2; shift 2
"$bin"/ve-alloc alloc "$@" --json | sed "$netns" | "$bin"/ve-link up --from - >/dev/null"#,
        "sh",
    ])
    .arg(&h.bin)
    .arg(netns)
    .args(&names);
    cmd
}

fn bulk_setup(h: &Host, n: usize) -> Result<Duration> {
    timed(&mut bulk_pipeline(h, n), None)
}

fn down(h: &Host, name: &str, normal: bool) -> Result<(Duration, Duration)> {
    let d = timed(h.tool("ve-link").args(["down", name]), None)?;
    let r = timed(
        Ve { normal }
            .env(h.tool("ve-alloc"))
            .args(["release", name]),
        None,
    )?;
    Ok((d, r))
}

fn bulk_teardown(h: &Host, n: usize, normal: bool) -> Result<Parts> {
    let names: Vec<String> = (0..n).map(|i| h.ctr(i).name).collect();
    let down = timed(h.tool("ve-link").args(["down", "--all"]), None)?;
    let release = timed(
        Ve { normal }
            .env(h.tool("ve-alloc"))
            .arg("release")
            .args(&names),
        None,
    )?;
    Ok(vec![("bulk-down", down), ("bulk-release", release)])
}

/// Where a setup's time goes, with the containers present: each process alone.
fn phases(h: &Host) -> Result<Vec<Fig>> {
    let mut figs = Vec::new();
    for j in 0..PHASE_SAMPLES {
        let (name, ns) = (format!("x{j}"), format!("{}-x{j}", h.prefix));
        figs.push((
            "phase-sh",
            j,
            timed(Command::new("sh").args(["-c", "true"]), None)?,
        ));
        let t = Instant::now();
        let out = h
            .tool("ve-alloc")
            .args(["alloc", &name])
            .output()
            .map_err(|e| e.to_string())?;
        figs.push(("phase-alloc", j, t.elapsed()));
        if !out.status.success() {
            return Err(format!("ve-alloc alloc {name}: {}", out.status));
        }
        let up = timed(
            h.tool("ve-link").args([
                "up",
                &name,
                "--netns",
                &format!("/run/netns/{ns}"),
                "--addresses",
                "-",
            ]),
            Some(&String::from_utf8_lossy(&out.stdout)),
        )?;
        figs.push(("phase-up", j, up));
        let (d, r) = down(h, &name, false)?;
        figs.push(("phase-down", j, d));
        figs.push(("phase-release", j, r));
    }
    // The same store on tmpfs, where fsync costs nothing: what the disk adds.
    let shm = PathBuf::from(format!("/dev/shm/{}-store", h.prefix));
    let on_shm = |args: &[&str]| {
        timed(
            h.tool("ve-alloc").env("VE_ALLOC_STORE", &shm).args(args),
            None,
        )
    };
    // The database and its write-ahead log (kept between runs), not the shm index.
    let copied = std::fs::create_dir_all(&shm)
        .and_then(|()| std::fs::read_dir(h.work.join("store")))
        .and_then(|dir| {
            for e in dir {
                let e = e?;
                if !e.file_name().to_string_lossy().ends_with("-shm") {
                    std::fs::copy(e.path(), shm.join(e.file_name()))?;
                }
            }
            Ok(())
        });
    let result = copied
        .map_err(|e| format!("copying the store to {}: {e}", shm.display()))
        .and_then(|()| {
            for j in 0..PHASE_SAMPLES {
                let name = format!("x{j}");
                figs.push(("phase-alloc-tmpfs", j, on_shm(&["alloc", &name])?));
                figs.push(("phase-release-tmpfs", j, on_shm(&["release", &name])?));
            }
            Ok(())
        });
    let _ = std::fs::remove_dir_all(&shm);
    result.map(|()| figs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::pipeline::system::argv;

    #[test]
    fn setup_is_one_shell_pipeline_of_the_release_tools() {
        let work = PathBuf::from("/w");
        let h = Host {
            prefix: "p",
            work: &work,
            bin: PathBuf::from("/b"),
        };
        let a = argv(&pipeline(&h, &h.ctr(4)));
        assert_eq!(a[..2], ["sh", "-c"]);
        assert!(a[2].contains(
            "ve-alloc alloc \"$1\" | \"$0\"/ve-link up \"$1\" --netns \"$2\" --addresses -"
        ));
        assert_eq!(a[3..], ["/b", "c4", "/run/netns/p-c4"]);
    }

    #[test]
    fn bulk_setup_is_one_alloc_of_every_name_piped_to_one_up_from() {
        let work = PathBuf::from("/w");
        let h = Host {
            prefix: "p",
            work: &work,
            bin: PathBuf::from("/b"),
        };
        let a = argv(&bulk_pipeline(&h, 3));
        assert!(
            a[2].contains(r#"ve-alloc alloc "$@" --json | sed"#),
            "{}",
            a[2]
        );
        assert!(a[2].contains(r#"ve-link up --from -"#), "{}", a[2]);
        assert_eq!(a[4], "/b");
        assert_eq!(a[6..], ["c0", "c1", "c2"]);
        // The sed gives ve-alloc's line its namespace.
        let mut sed = Command::new("sed")
            .arg(&a[5])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = sed.stdin.take().unwrap();
            stdin
                .write_all(br#"{"name":"c1","host_address":"10.0.0.1"}"#)
                .unwrap();
            stdin.write_all(b"\n").unwrap();
        }
        let out = sed.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "{\"netns\":\"p-c1\",\"name\":\"c1\",\"host_address\":\"10.0.0.1\"}\n"
        );
    }
}
