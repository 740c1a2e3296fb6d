//! `cargo xtask bench link`: `ve-link up`/`down` against the NixOS sequence of `ip`
//! commands, for the 1st, 100th and 1,000th container on one (sandboxed) host.
//!
//! Everything happens in throwaway namespaces: a "host" namespace, in which this
//! benchmark re-runs itself so that `ve-link` and the host-side `ip` commands start
//! there directly (as on a real host, with no namespace switch), and one namespace per
//! container. The `ip` sequence does the same work as `ve-link up` (IPv4): veth with the
//! peer made in the container namespace, host end up, host address and route, then in
//! the container lo up, eth0 up, address, route to the host and default route: once
//! with one `ip -n NS` process per command, once all five in one `ip -n NS -batch -`.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use super::stats::{ip_batch, median, timed};
use crate::util::{self, Result};

const USAGE: &str = "\
usage: cargo xtask bench link [--containers N] [--samples S] [--tools DIR]
  --containers N  containers on the host at the end (default 1000); checkpoints are the
                  1st, 100th and 1,000th container that exist within N
  --samples S     timed runs per measurement at each checkpoint (default 7, median shown)
  --tools DIR     use DIR/ve-link instead of building a release one
";

/// Twin namespaces per sample: 3 checkpoints, 3 ways of doing it.
const TWINS: usize = 9;

pub(super) struct Opts {
    containers: usize,
    samples: usize,
    tools: Option<PathBuf>,
}

pub(super) fn parse(args: &[String]) -> Result<(Opts, Option<(String, String)>)> {
    let mut o = Opts {
        containers: 1000,
        samples: 7,
        tools: None,
    };
    let mut inner = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> Result<usize> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{what} needs a positive number\n{USAGE}"))
        };
        match a.as_str() {
            "--containers" => o.containers = num("--containers")?,
            "--samples" => o.samples = num("--samples")?,
            "--tools" => {
                o.tools =
                    Some(PathBuf::from(it.next().ok_or_else(|| {
                        format!("--tools needs a directory\n{USAGE}")
                    })?))
            }
            "--inner" => {
                let p = it.next().ok_or("--inner needs PREFIX BIN")?.clone();
                let b = it.next().ok_or("--inner needs PREFIX BIN")?.clone();
                inner = Some((p, b));
            }
            "-h" | "--help" => return Ok((o, Some((String::new(), String::new())))),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    Ok((o, inner))
}

pub fn run(args: &[String]) -> Result {
    let (opts, inner) = parse(args)?;
    if let Some((prefix, bin)) = inner {
        if prefix.is_empty() {
            say!("{USAGE}");
            return Ok(());
        }
        return inner_run(&opts, &prefix, &PathBuf::from(bin));
    }
    if !util::is_root() {
        return Err("bench link needs root (it creates network namespaces)".into());
    }
    let bin = match &opts.tools {
        Some(dir) => dir.join("ve-link"),
        None => {
            util::run(util::cargo().args(["build", "--quiet", "--release", "-p", "ve-link"]))?;
            util::root().join("target/release/ve-link")
        }
    };
    let prefix = format!("vbl{}", std::process::id());
    let host = format!("{prefix}-host");
    crate::guard::namespaces(&prefix);
    let guard = Namespaces {
        prefix: prefix.clone(),
        count: opts.containers.max(TWINS * opts.samples),
    };
    ip(&["netns", "add", &host])?;
    ip(&["-n", &host, "link", "set", "lo", "up"])?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let status = Command::new("ip")
        .args(["netns", "exec", &host])
        .arg(exe)
        .args(["bench", "link", "--containers"])
        .arg(opts.containers.to_string())
        .arg("--samples")
        .arg(opts.samples.to_string())
        .arg("--inner")
        .arg(&prefix)
        .arg(&bin)
        .status()
        .map_err(|e| e.to_string())?;
    drop(guard);
    if status.success() {
        Ok(())
    } else {
        Err(format!("bench link failed: {status}"))
    }
}

/// Deletes every namespace of the run, also on error.
struct Namespaces {
    prefix: String,
    count: usize,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        eprintln!("xtask: removing the benchmark's namespaces");
        let mut script = String::new();
        for i in 0..self.count {
            script.push_str(&format!(
                "netns del {}-c{i}\nnetns del {}-t{i}\n",
                self.prefix, self.prefix
            ));
        }
        script.push_str(&format!("netns del {}-host\n", self.prefix));
        let _ = ip_batch(&["-force"], &script);
    }
}

fn ip(args: &[&str]) -> Result {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Host and container addresses of container number `k` (unique over the run).
pub(super) fn addrs(k: usize) -> (String, String) {
    let a = k * 4;
    let net = format!("10.{}.{}", 64 + (a >> 16), (a >> 8) & 255);
    (
        format!("{net}.{}", (a & 255) + 1),
        format!("{net}.{}", (a & 255) + 2),
    )
}

struct Ctx<'a> {
    prefix: &'a str,
    bin: &'a PathBuf,
}

impl Ctx<'_> {
    fn ns(&self, kind: &str, i: usize) -> String {
        format!("{}-{kind}{i}", self.prefix)
    }

    fn ve_up(&self, name: &str, ns: &str, k: usize) -> Result<Duration> {
        let (h, l) = addrs(k);
        timed(
            Command::new(self.bin).args([
                "up",
                name,
                "--netns",
                ns,
                "--host-address",
                &h,
                "--local-address",
                &l,
            ]),
            None,
        )
    }

    /// The NixOS sequence: host side with bare `ip`; container side one `ip -n` per
    /// command (`batched`: all five in one `ip -n NS -batch -`, the cheapest way).
    fn ip_up(&self, name: &str, ns: &str, k: usize, batched: bool) -> Result<Duration> {
        let (h, l) = addrs(k);
        let dev = format!("ve-{name}");
        let t = Instant::now();
        timed(
            Command::new("ip").args([
                "link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]),
            None,
        )?;
        timed(Command::new("ip").args(["link", "set", &dev, "up"]), None)?;
        timed(
            Command::new("ip").args(["addr", "add", &format!("{h}/32"), "dev", &dev]),
            None,
        )?;
        timed(
            Command::new("ip").args(["route", "add", &format!("{l}/32"), "dev", &dev]),
            None,
        )?;
        let script = format!(
            "link set lo up\nlink set eth0 up\naddr add {l}/32 dev eth0\nroute add {h}/32 dev eth0\nroute add default via {h} dev eth0\n"
        );
        if batched {
            ip_batch(&["-n", ns], &script)?;
        } else {
            for line in script.lines() {
                timed(
                    Command::new("ip").args(["-n", ns]).args(line.split(' ')),
                    None,
                )?;
            }
        }
        Ok(t.elapsed())
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn inner_run(o: &Opts, prefix: &str, bin: &PathBuf) -> Result {
    let cx = Ctx { prefix, bin };
    let n = o.containers;
    let s = o.samples;
    eprintln!("xtask: creating {} namespaces", n + TWINS * s);
    let mut script = String::new();
    for i in 0..n {
        script.push_str(&format!("netns add {}\n", cx.ns("c", i)));
    }
    for i in 0..TWINS * s {
        script.push_str(&format!("netns add {}\n", cx.ns("t", i)));
    }
    ip_batch(&[], &script)?;

    let checkpoints: Vec<usize> = [1, 100, 1000].into_iter().filter(|c| *c <= n).collect();
    let mut rows = Vec::new();
    let mut twin = 0;
    let mut k = 0;
    for i in 1..=n {
        let name = format!("c{}", i - 1);
        let ns = cx.ns("c", i - 1);
        k += 1;
        if checkpoints.contains(&i) {
            // Container i by ve-link (timed), plus S-1 more ve-link and S `ip` runs on
            // twin namespaces at the same host size, alternating; removed afterwards.
            let mut ve = vec![cx.ve_up(&name, &ns, k)?];
            let mut ve_twins = Vec::new();
            let mut ip_twins = Vec::new();
            let (mut ipt, mut ipb) = (Vec::new(), Vec::new());
            for j in 0..s {
                for batched in [false, true] {
                    let tn = format!("it{twin}");
                    let d = cx.ip_up(&tn, &cx.ns("t", twin), k + 1, batched)?;
                    if batched {
                        ipb.push(d)
                    } else {
                        ipt.push(d)
                    }
                    ip_twins.push(format!("ve-{tn}"));
                    twin += 1;
                    k += 1;
                }
                if j + 1 < s {
                    let tn = format!("t{twin}");
                    ve.push(cx.ve_up(&tn, &cx.ns("t", twin), k + 1)?);
                    ve_twins.push(tn);
                    twin += 1;
                    k += 1;
                }
            }
            let (v, p, b) = (median(ve), median(ipt), median(ipb));
            eprintln!(
                "xtask: container {i}: ve-link up {} / ip sequence {} / batched {}",
                ms(v),
                ms(p),
                ms(b)
            );
            rows.push((i, v, p, b));
            // Back to exactly i containers on the host.
            if !ve_twins.is_empty() {
                timed(Command::new(bin).arg("down").args(&ve_twins), None)?;
            }
            for dev in &ip_twins {
                timed(Command::new("ip").args(["link", "del", dev]), None)?;
            }
        } else {
            cx.ve_up(&name, &ns, k)?;
        }
    }

    // Teardown with n containers present: single deletes, then 100 at once.
    let single = s.min(n / 2).max(1);
    let mut ve_down = Vec::new();
    let mut ip_del = Vec::new();
    let mut next = n;
    for _ in 0..single {
        next -= 1;
        ve_down.push(timed(
            Command::new(bin).args(["down", &format!("c{next}")]),
            None,
        )?);
        if next == 0 {
            break;
        }
        next -= 1;
        ip_del.push(timed(
            Command::new("ip").args(["link", "del", &format!("ve-c{next}")]),
            None,
        )?);
    }
    let bulk = 100.min(next / 2);
    let mut bulk_rows = None;
    if bulk > 0 {
        let names: Vec<String> = (next - bulk..next).map(|i| format!("c{i}")).collect();
        let ve_bulk = timed(Command::new(bin).arg("down").args(&names), None)?;
        next -= bulk;
        let t = Instant::now();
        for i in next - bulk..next {
            timed(
                Command::new("ip").args(["link", "del", &format!("ve-c{i}")]),
                None,
            )?;
        }
        let ip_bulk = t.elapsed();
        bulk_rows = Some((bulk, ve_bulk, ip_bulk));
    }

    sayln!("\nve-link vs the NixOS `ip` sequence (IPv4, medians of {s}; host with N containers)\n");
    sayln!("| measurement | ve-link | ip | ip / ve-link |");
    sayln!("|---|---|---|---|");
    for (i, v, p, b) in &rows {
        sayln!(
            "| up, container #{i} (ip: one process per command) | {} | {} | {:.1}x |",
            ms(*v),
            ms(*p),
            p.as_secs_f64() / v.as_secs_f64()
        );
        sayln!(
            "| up, container #{i} (ip: container side in one `ip -n -batch`) | {} | {} | {:.1}x |",
            ms(*v),
            ms(*b),
            b.as_secs_f64() / v.as_secs_f64()
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        sayln!(
            "| up, #{} / #{} | {:.2}x | {:.2}x | |",
            last.0,
            first.0,
            last.1.as_secs_f64() / first.1.as_secs_f64(),
            last.2.as_secs_f64() / first.2.as_secs_f64()
        );
    }
    let (vd, id) = (median(ve_down), median(ip_del.clone()));
    sayln!(
        "| down, one container (ve-link down vs ip link del) | {} | {} | {:.2}x |",
        ms(vd),
        ms(id),
        id.as_secs_f64() / vd.as_secs_f64()
    );
    if let Some((b, v, p)) = bulk_rows {
        sayln!(
            "| down, {b} containers (one ve-link down vs {b} ip link del) | {} | {} | {:.1}x |",
            ms(v),
            ms(p),
            p.as_secs_f64() / v.as_secs_f64()
        );
    }
    Ok(())
}
