//! `cargo xtask bench pipeline`: the whole job (veth, addresses, routes, masquerade) done
//! per container by this project as users run it, next to the systems it replaces, in
//! one run on one machine; then the allocator against host-local (`bench alloc`) and
//! nm-unmanage's reaction time (`bench nm`).
//!
//! Every compared system is one [`System`] adapter in a file of its own; adding a system
//! is one new file and one line in [`SYSTEMS`]. Each system gets a host namespace of its
//! own (so one system's iptables rules never slow another down); the N container
//! namespaces are shared and used by one system after the other, each leaving them
//! empty. This program re-runs itself inside each host namespace (`--inner`), so every
//! timed process starts there directly, as on a real host; the inner run prints
//! `KEY INDEX NANOS` lines that the outer run collects.

mod cni_ptp;
mod ip_batch;
mod netavark;
mod nixos;
mod nixos_ipn;
mod report;
mod system;
mod ve;
mod ve_link;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    nat,
    stats::{self, machine, median_p90},
};
use crate::util::{self, Result};
use system::{Host, System};

const USAGE: &str = "\
usage: cargo xtask bench pipeline [--containers N] [--systems S,S,...] [--tools DIR]
                                  [--no-alloc] [--no-nm]

  --containers N  containers per system (default 1000); figures for the 1st-10th, ~100th,
                  ~500th and ~Nth container (windows of 10 and 20 containers)
  --systems LIST  which of ve,ve-normal,nixos,nixos-ipn,cni,netavark,batch (default:
                  all of these) and ve-link (ve-link alone, as `bench link` runs it);
                  ve-normal is ve with the store's opt-in --durability normal
  --tools DIR     the tools in DIR instead of release builds
  --no-alloc      skip ve-alloc against host-local at 1,000 and 10,000 leases
  --no-nm         skip nm-unmanage --watch against a sandboxed NetworkManager

Needs root. Installs iproute2, iptables, containernetworking-plugins, netavark and
fonts-dejavu-core (for the plot) when missing. Writes target/bench/pipeline.csv (one row
per container and system), pipeline-summary.csv, pipeline.txt and pipeline.png.";

/// The compared systems, in table order.
static SYSTEMS: &[&dyn System] = &[
    &ve::Ve { normal: false },
    &ve::Ve { normal: true },
    &ve_link::VeLink,
    &nixos::Nixos,
    &nixos_ipn::NixosIpN,
    &cni_ptp::CniPtp,
    &netavark::Netavark,
    &ip_batch::IpBatch,
];

fn find(key: &str) -> Option<&'static dyn System> {
    SYSTEMS.iter().copied().find(|s| s.key() == key)
}

pub(super) struct Opts {
    containers: usize,
    systems: Vec<&'static dyn System>,
    tools: Option<PathBuf>,
    alloc: bool,
    nm: bool,
    inner: Option<Inner>,
}

/// What the re-run inside a host namespace needs.
struct Inner {
    system: &'static dyn System,
    prefix: String,
    work: PathBuf,
    bin: PathBuf,
}

fn systems_opt(list: &str) -> Result<Vec<&'static dyn System>> {
    let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
    if let Some(bad) = wanted.iter().find(|w| find(w).is_none()) {
        return Err(format!("bench pipeline: unknown system {bad:?}\n{USAGE}"));
    }
    Ok(SYSTEMS
        .iter()
        .copied()
        .filter(|s| wanted.contains(&s.key()))
        .collect())
}

pub(super) fn parse(args: &[String]) -> Result<Option<Opts>> {
    let mut o = Opts {
        containers: 1000,
        systems: SYSTEMS
            .iter()
            .copied()
            .filter(|s| s.in_default_run())
            .collect(),
        tools: None,
        alloc: true,
        nm: true,
        inner: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |what: &str| -> Result<String> {
            it.next()
                .cloned()
                .ok_or_else(|| format!("bench pipeline: {what} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--containers" => {
                o.containers = value("--containers")?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("bench pipeline: --containers needs a positive number")?
            }
            "--systems" => o.systems = systems_opt(&value("--systems")?)?,
            "--tools" => o.tools = Some(PathBuf::from(value("--tools")?)),
            "--no-alloc" => o.alloc = false,
            "--no-nm" => o.nm = false,
            "--inner" => {
                let key = value("--inner")?;
                o.inner = Some(Inner {
                    system: find(&key).ok_or_else(|| format!("unknown system {key:?}"))?,
                    prefix: value("--inner")?,
                    work: PathBuf::from(value("--inner")?),
                    bin: PathBuf::from(value("--inner")?),
                })
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("bench pipeline: unknown option {other:?}\n{USAGE}")),
        }
    }
    Ok(Some(o))
}

pub fn run(args: &[String]) -> Result {
    let Some(opts) = parse(args)? else {
        sayln!("{USAGE}");
        return Ok(());
    };
    if let Some(inner) = &opts.inner {
        return inner_run(inner, opts.containers);
    }
    if !util::is_root() {
        return Err("bench pipeline: needs root (it creates network namespaces)".into());
    }
    let mut packages = vec!["iproute2", "iptables", "fonts-dejavu-core"];
    for p in opts.systems.iter().flat_map(|s| s.packages()) {
        if !packages.contains(p) {
            packages.push(p);
        }
    }
    util::ensure_debian_packages(&packages)?;
    // Absolute: the inner runs use it from their own namespaces.
    let bin = match &opts.tools {
        Some(dir) => dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))?,
        None => {
            util::run(util::cargo().args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "ve-alloc",
                "-p",
                "ve-link",
                "-p",
                "ve-nat",
            ]))?;
            util::root().join("target/release")
        }
    };
    let n = opts.containers;
    let load = load_average();
    eprintln!(
        "bench pipeline: {n} containers per system on {}; load {load}",
        machine()
    );

    let mut sb = nat::Sandbox::new();
    std::fs::create_dir_all(&sb.tmp).map_err(|e| format!("{}: {e}", sb.tmp.display()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut servers = Vec::new();
    for sys in &opts.systems {
        let host = sb.netns(&[format!("{}-host", sys.key())])?.remove(0);
        let prefix = host.trim_end_matches("-host").to_string();
        stats::ip_batch(
            &["-n", &host],
            "link set lo up\nlink add up0 type veth peer name up1\nlink set up0 up\n",
        )?;
        let work = sb.tmp.join(sys.key());
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        servers.push(Server::start(&exe, *sys, &host, &prefix, &work, &bin, n)?);
    }

    // Lockstep: container i of every system before container i+1 of any, the order
    // rotating, so that a busy moment on the machine hits all systems alike.
    let _leftovers = Leftovers(sb.tmp.file_name().map(|f| f.to_string_lossy().into_owned()));
    let t = Instant::now();
    let k = servers.len();
    for i in 0..n {
        for j in 0..k {
            servers[(i + j) % k].call(&format!("up {i}"))?;
        }
        if (i + 1) % 100 == 0 {
            eprintln!(
                "bench pipeline: {} containers up per system, {:.0} s",
                i + 1,
                t.elapsed().as_secs_f64()
            );
        }
    }
    for s in servers.iter_mut() {
        s.call("extra")?;
    }
    for i in (0..n).rev() {
        for j in 0..k {
            servers[(i + j) % k].call(&format!("down {i}"))?;
        }
        if i % 100 == 0 {
            eprintln!(
                "bench pipeline: {i} containers left per system, {:.0} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    for s in servers
        .iter_mut()
        .filter(|s| s.system.bulk_teardown().is_some())
    {
        eprintln!(
            "bench pipeline: {}: {n} containers up again for the bulk teardown",
            s.system.key()
        );
        s.call("bulk")?;
    }
    eprintln!("bench pipeline: done in {:.0} s", t.elapsed().as_secs_f64());
    let results: BTreeMap<&'static str, Samples> = servers
        .drain(..)
        .map(|s| Ok((s.system.key(), s.finish()?)))
        .collect::<Result<_>>()?;
    drop(sb);

    let mut text = report::pipeline(&results, n, &load)?;
    if opts.alloc {
        super::alloc::run(&[
            "--sizes".into(),
            "1000,10000".into(),
            "--host-local-sizes".into(),
            "1000,10000".into(),
            "--runs".into(),
            "50".into(),
            "--etcd".into(),
            "off".into(),
        ])?;
        text.push_str(&report::alloc_summary()?);
    }
    if opts.nm {
        text.push_str(&report::nm_summary(&exe)?);
    }
    text.push_str(&format!("\nload after the run: {}\n", load_average()));
    say!("{text}");
    let dir = super::stats::out_dir()?;
    std::fs::write(dir.join("pipeline.txt"), &text).map_err(|e| e.to_string())?;
    eprintln!(
        "bench pipeline: wrote {}/pipeline{{.txt,.csv,-summary.csv,.png}}",
        dir.display()
    );
    Ok(())
}

/// Container namespaces live in the servers' private mount namespaces and go with them;
/// a server that dies leaves only empty mountpoint files under /run/netns, removed here.
struct Leftovers(Option<String>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let Some(prefix) = &self.0 else { return };
        let Ok(dir) = std::fs::read_dir("/run/netns") else {
            return;
        };
        let script: String = dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{prefix}-")) && !n.ends_with("-host"))
            .map(|n| format!("netns del {n}\n"))
            .collect();
        if !script.is_empty() {
            let _ = stats::ip_batch(&[], &script);
        }
    }
}

/// This program re-run inside one system's host namespace, taking commands on stdin.
struct Server {
    system: &'static dyn System,
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    samples: Samples,
}

impl Server {
    fn start(
        exe: &Path,
        system: &'static dyn System,
        host: &str,
        prefix: &str,
        work: &Path,
        bin: &Path,
        n: usize,
    ) -> Result<Server> {
        use std::io::BufRead as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", host])
            .arg(exe)
            .args([
                "bench",
                "pipeline",
                "--containers",
                &n.to_string(),
                "--inner",
                system.key(),
                prefix,
            ])
            .arg(work)
            .arg(bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("re-running {} in {host}: {e}", exe.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut s = Server {
            system,
            child,
            stdin,
            lines,
            samples: Samples::default(),
        };
        s.reply(&format!("starting {}", system.key()))?;
        Ok(s)
    }

    /// Send one command, collect its figures.
    fn call(&mut self, cmd: &str) -> Result {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("bench pipeline: {}: {e}", self.system.key()))?;
        self.reply(cmd)
    }

    fn reply(&mut self, cmd: &str) -> Result {
        let key = self.system.key();
        loop {
            let line = match self.lines.next() {
                Some(Ok(l)) => l,
                _ => return Err(format!("bench pipeline: {key}: {cmd}: no answer")),
            };
            if line == "done" {
                return Ok(());
            }
            if let Some(e) = line.strip_prefix("error ") {
                return Err(format!("bench pipeline: {key}: {cmd}: {e}"));
            }
            self.samples.push_line(&line)?;
        }
    }

    fn finish(mut self) -> Result<Samples> {
        drop(self.stdin);
        let st = self.child.wait().map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("bench pipeline: {}: {st}", self.system.key()));
        }
        Ok(self.samples)
    }
}

/// Per-container times of one system, from the inner run's `KEY INDEX NANOS` lines.
#[derive(Default)]
struct Samples {
    series: BTreeMap<String, Vec<(usize, Duration)>>,
}

impl Samples {
    /// One `KEY INDEX NANOS` line.
    fn push_line(&mut self, line: &str) -> Result {
        let mut w = line.split_whitespace();
        let (Some(key), Some(i), Some(ns), None) = (w.next(), w.next(), w.next(), w.next()) else {
            return Err(format!(
                "bench pipeline: bad line from the inner run: {line:?}"
            ));
        };
        let i: usize = i.parse().map_err(|_| format!("bad index in {line:?}"))?;
        let ns: u64 = ns.parse().map_err(|_| format!("bad time in {line:?}"))?;
        self.series
            .entry(key.to_string())
            .or_default()
            .push((i, Duration::from_nanos(ns)));
        Ok(())
    }

    /// The values of `key`, by container number (1-based, in order).
    fn get(&self, key: &str) -> Vec<Duration> {
        let mut v = self.series.get(key).cloned().unwrap_or_default();
        v.sort_by_key(|x| x.0);
        v.into_iter().map(|x| x.1).collect()
    }

    fn window(&self, key: &str, w: &Window) -> Option<(Duration, Duration)> {
        let v = self.get(key);
        let mut part = v.get(w.lo - 1..w.hi)?.to_vec();
        Some(median_p90(&mut part))
    }

    fn total(&self, key: &str) -> Option<Duration> {
        let v = self.get(key);
        (!v.is_empty()).then(|| v.iter().sum())
    }
}

/// Containers `lo..=hi` (1-based): "the ~100th container".
pub(in crate::bench) struct Window {
    pub(in crate::bench) label: String,
    pub(in crate::bench) lo: usize,
    pub(in crate::bench) hi: usize,
}

pub(in crate::bench) fn windows(n: usize) -> Vec<Window> {
    let mut v: Vec<Window> = [
        ("1st-10th", 1, 10),
        ("~100th", 91, 110),
        ("~500th", 491, 510),
    ]
    .into_iter()
    .filter(|w| w.2 <= n)
    .map(|(l, lo, hi)| Window {
        label: l.into(),
        lo,
        hi,
    })
    .collect();
    let lo = n.saturating_sub(19).max(1);
    if v.last().is_none_or(|w| w.hi < n) {
        v.push(Window {
            label: format!("~{}th", thousands(n)),
            lo,
            hi: n,
        });
    }
    v
}

fn thousands(n: usize) -> String {
    if n >= 1000 {
        format!("{},{:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}

pub(in crate::bench) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---- inside a host namespace ----

/// One figure: key, container number (1-based) or sample number, wall time.
type Fig = (&'static str, usize, Duration);

/// The server side of [`Server`]: `up I`, `down I`, `extra`, `bulk` on stdin; figures
/// as `KEY INDEX NANOS` lines, then `done` (or `error MESSAGE`) on stdout.
fn inner_run(inner: &Inner, n: usize) -> Result {
    use std::io::BufRead as _;
    let h = Host {
        prefix: &inner.prefix,
        work: &inner.work,
        bin: inner.bin.clone(),
    };
    let sys = inner.system;
    let mut out = std::io::stdout().lock();
    let mut reply = |r: Result<Vec<Fig>>| -> Result {
        match r {
            Ok(figs) => {
                for (key, i, d) in figs {
                    writeln!(out, "{key} {i} {}", d.as_nanos()).map_err(|e| e.to_string())?;
                }
                writeln!(out, "done")
            }
            Err(e) => writeln!(out, "error {}", e.replace('\n', " ")),
        }
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())
    };
    reply(sys.prepare(&h).map(|()| Vec::new()))?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let (cmd, arg) = line.split_once(' ').unwrap_or((&line, ""));
        let i: usize = arg.parse().unwrap_or(0);
        reply(match cmd {
            "up" => {
                let c = h.ctr(i);
                h.make_netns(std::slice::from_ref(&c.ns))
                    .and_then(|()| sys.setup(&h, &c))
                    .map(|d| vec![("setup", i + 1, d)])
            }
            "down" => {
                let c = h.ctr(i);
                sys.teardown(&h, &c)
                    .map(|parts| teardown_figs(&parts, i + 1))
                    .and_then(|f| h.del_netns(std::slice::from_ref(&c.ns)).map(|()| f))
            }
            "extra" => sys.extra(&h),
            "bulk" => bulk(sys, &h, n),
            other => Err(format!("unknown command {other:?}")),
        })?;
    }
    Ok(())
}

/// A teardown's figures: `teardown` (the sum), and `teardown-PART` for each named part
/// when there are several.
fn teardown_figs(parts: &[(&'static str, Duration)], k: usize) -> Vec<Fig> {
    let mut figs: Vec<Fig> = Vec::new();
    if parts.len() > 1 {
        figs.extend(parts.iter().map(|(p, d)| (*p, k, *d)));
    }
    figs.push(("teardown", k, parts.iter().map(|p| p.1).sum()));
    figs
}

/// Host shutdown: all n up again (in one go where the system can), then removed in one
/// go.
fn bulk(sys: &dyn System, h: &Host, n: usize) -> Result<Vec<Fig>> {
    let Some(teardown) = sys.bulk_teardown() else {
        return Ok(Vec::new());
    };
    let all: Vec<String> = (0..n).map(|i| h.ctr(i).ns).collect();
    h.make_netns(&all)?;
    let mut figs = Vec::new();
    match sys.bulk_setup() {
        Some(setup) => figs.push(("bulk-setup", n, setup(h, n)?)),
        None => {
            for i in 0..n {
                sys.setup(h, &h.ctr(i))?;
            }
        }
    }
    figs.extend(teardown(h, n)?.into_iter().map(|(k, d)| (k, n, d)));
    h.del_netns(&all)?;
    Ok(figs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_checkpoints_that_exist() {
        let w: Vec<(String, usize, usize)> = windows(1000)
            .into_iter()
            .map(|w| (w.label, w.lo, w.hi))
            .collect();
        assert_eq!(
            w,
            [
                ("1st-10th".to_string(), 1, 10),
                ("~100th".to_string(), 91, 110),
                ("~500th".to_string(), 491, 510),
                ("~1,000th".to_string(), 981, 1000),
            ]
        );
        let w: Vec<(usize, usize)> = windows(50).iter().map(|w| (w.lo, w.hi)).collect();
        assert_eq!(w, [(1, 10), (31, 50)]);
        assert_eq!(windows(10).len(), 1);
        assert_eq!(windows(3)[0].hi, 3);
    }

    #[test]
    fn samples_come_back_in_container_order() {
        let mut s = Samples::default();
        for line in [
            "teardown 2 2000000",
            "teardown 1 1000000",
            "teardown 3 5000000",
        ] {
            s.push_line(line).unwrap();
        }
        let ms: Vec<u128> = s.get("teardown").iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [1, 2, 5]);
        assert_eq!(s.total("teardown"), Some(Duration::from_millis(8)));
        assert!(s.total("setup").is_none());
        let w = Window {
            label: String::new(),
            lo: 1,
            hi: 3,
        };
        assert_eq!(
            s.window("teardown", &w),
            Some((Duration::from_millis(2), Duration::from_millis(5)))
        );
        assert!(s.push_line("setup x 1").is_err());
        assert!(s.push_line("setup 1").is_err());
    }

    #[test]
    fn every_system_has_a_distinct_key_and_label() {
        for (i, a) in SYSTEMS.iter().enumerate() {
            for b in &SYSTEMS[i + 1..] {
                assert_ne!(a.key(), b.key());
                assert_ne!(a.label(), b.label());
            }
            assert!(find(a.key()).is_some_and(|f| f.label() == a.label()));
            assert!(!a.key().contains(',') && !a.key().contains(' '));
        }
    }

    #[test]
    fn systems_option_keeps_table_order_and_refuses_unknown_keys() {
        let keys: Vec<&str> = systems_opt("batch, ve")
            .unwrap()
            .iter()
            .map(|s| s.key())
            .collect();
        assert_eq!(keys, ["ve", "batch"]);
        assert!(systems_opt("ve,bogus").is_err());
        let args: Vec<String> = ["--systems", "nixos,nixos-ipn", "--containers", "30"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = parse(&args).unwrap().unwrap();
        assert_eq!(o.containers, 30);
        assert_eq!(o.systems.len(), 2);
    }

    #[test]
    fn teardown_figures_sum_the_parts_and_name_them_only_when_several() {
        let ms = Duration::from_millis;
        assert_eq!(teardown_figs(&[("x", ms(3))], 7), [("teardown", 7, ms(3))]);
        assert_eq!(
            teardown_figs(&[("teardown-link", ms(3)), ("teardown-release", ms(2))], 1),
            [
                ("teardown-link", 1, ms(3)),
                ("teardown-release", 1, ms(2)),
                ("teardown", 1, ms(5))
            ]
        );
    }
}
