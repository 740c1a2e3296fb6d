//! `cargo xtask bench pipeline`: the whole job (veth, addresses, routes, masquerade) done
//! per container by this project as users run it, next to the NixOS `ip` sequence, CNI
//! `ptp` + `host-local` with `ipMasq`, netavark's bridge driver and a near-limit
//! `ip -batch` reference, in one run on one machine; then the allocator against
//! host-local (`bench alloc`) and nm-unmanage's reaction time (`bench nm`).
//!
//! Each system gets a host namespace of its own (so one system's iptables rules never
//! slow another down); the N container namespaces are shared and used by one system
//! after the other, each leaving them empty. This program re-runs itself inside each
//! host namespace (`--inner`), so every timed process starts there directly, as on a
//! real host; the inner run prints `KEY INDEX NANOS` lines that the outer run collects.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    link, nat,
    stats::{machine, median_p90, out_dir},
};
use crate::util::{self, Result};

const USAGE: &str = "\
usage: cargo xtask bench pipeline [--containers N] [--systems S,S,...] [--no-alloc] [--no-nm]

  --containers N  containers per system (default 1000); figures for the 1st-10th, ~100th,
                  ~500th and ~Nth container (windows of 10 and 20 containers)
  --systems LIST  which of ve,nixos,cni,netavark,batch (default: all)
  --no-alloc      skip ve-alloc against host-local at 1,000 and 10,000 leases
  --no-nm         skip nm-unmanage --watch against a sandboxed NetworkManager

Needs root. Installs iproute2, iptables, containernetworking-plugins, netavark and
fonts-dejavu-core (for the plot) when missing. Writes target/bench/pipeline.csv (one row
per container and system), pipeline-summary.csv, pipeline.txt and pipeline.png.";

const CNI_DIR: &str = "/usr/lib/cni";
const NETAVARK: &str = "/usr/lib/podman/netavark";
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const PHASE_SAMPLES: usize = 10;

/// The systems, in table order: key, label.
const SYSTEMS: &[(&str, &str)] = &[
    ("ve", "ve-alloc piped to ve-link (ve-nat once)"),
    ("nixos", "NixOS `ip` sequence"),
    ("cni", "CNI ptp + host-local, ipMasq"),
    ("netavark", "netavark bridge"),
    ("batch", "`ip -batch` x2 (near-limit)"),
];

pub(super) struct Opts {
    containers: usize,
    systems: Vec<String>,
    alloc: bool,
    nm: bool,
    inner: Option<Inner>,
}

/// What the re-run inside a host namespace needs.
struct Inner {
    system: String,
    prefix: String,
    work: PathBuf,
}

pub(super) fn parse(args: &[String]) -> Result<Option<Opts>> {
    let mut o = Opts {
        containers: 1000,
        systems: SYSTEMS.iter().map(|s| s.0.to_string()).collect(),
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
            "--systems" => {
                o.systems = value("--systems")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect();
                if let Some(bad) = o
                    .systems
                    .iter()
                    .find(|s| !SYSTEMS.iter().any(|k| k.0 == s.as_str()))
                {
                    return Err(format!("bench pipeline: unknown system {bad:?}\n{USAGE}"));
                }
            }
            "--no-alloc" => o.alloc = false,
            "--no-nm" => o.nm = false,
            "--inner" => {
                o.inner = Some(Inner {
                    system: value("--inner")?,
                    prefix: value("--inner")?,
                    work: PathBuf::from(value("--inner")?),
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
    util::ensure_debian_packages(&[
        "iproute2",
        "iptables",
        "containernetworking-plugins",
        "netavark",
        "fonts-dejavu-core",
    ])?;
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
    let n = opts.containers;
    let load = load_average();
    eprintln!(
        "bench pipeline: {n} containers per system on {}; load {load}",
        machine()
    );

    let mut sb = nat::Sandbox::new();
    std::fs::create_dir_all(&sb.tmp).map_err(|e| format!("{}: {e}", sb.tmp.display()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let systems: Vec<&str> = SYSTEMS
        .iter()
        .map(|s| s.0)
        .filter(|s| opts.systems.iter().any(|o| o == s))
        .collect();
    let mut servers = Vec::new();
    for sys in &systems {
        let host = sb.netns(&[format!("{sys}-host")])?.remove(0);
        let prefix = host.trim_end_matches("-host").to_string();
        nat::ip_batch(
            Some(&host),
            "link set lo up\nlink add up0 type veth peer name up1\nlink set up0 up\n",
        )?;
        let work = sb.tmp.join(sys);
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        servers.push(Server::start(&exe, sys, &host, &prefix, &work, n)?);
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
    for s in servers.iter_mut().filter(|s| s.system == "ve") {
        s.call("phases")?;
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
    for s in servers.iter_mut().filter(|s| s.system == "ve") {
        eprintln!("bench pipeline: ve: {n} containers up again for the bulk teardown");
        s.call("bulk")?;
    }
    eprintln!("bench pipeline: done in {:.0} s", t.elapsed().as_secs_f64());
    let results: BTreeMap<String, Samples> = servers
        .drain(..)
        .map(|s| Ok((s.system.to_string(), s.finish()?)))
        .collect::<Result<_>>()?;
    drop(sb);

    let mut report = pipeline_report(&results, n, &load)?;
    if opts.alloc {
        super::alloc::run(&[
            "--sizes".into(),
            "1000,10000".into(),
            "--host-local-sizes".into(),
            "1000,10000".into(),
            "--runs".into(),
            "50".into(),
        ])?;
        report.push_str(&alloc_summary()?);
    }
    if opts.nm {
        report.push_str(&nm_summary(&exe)?);
    }
    report.push_str(&format!("\nload after the run: {}\n", load_average()));
    say!("{report}");
    let dir = out_dir()?;
    std::fs::write(dir.join("pipeline.txt"), &report).map_err(|e| e.to_string())?;
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
            let _ = nat::ip_batch(None, &script);
        }
    }
}

/// This program re-run inside one system's host namespace, taking commands on stdin.
struct Server {
    system: &'static str,
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    samples: Samples,
}

impl Server {
    fn start(
        exe: &Path,
        sys: &str,
        host: &str,
        prefix: &str,
        work: &Path,
        n: usize,
    ) -> Result<Server> {
        use std::io::BufRead as _;
        let system = SYSTEMS
            .iter()
            .find(|s| s.0 == sys)
            .expect("a known system")
            .0;
        let mut child = Command::new("ip")
            .args(["netns", "exec", host])
            .arg(exe)
            .args([
                "bench",
                "pipeline",
                "--containers",
                &n.to_string(),
                "--inner",
                sys,
                prefix,
            ])
            .arg(work)
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
        s.reply(&format!("starting {sys}"))?;
        Ok(s)
    }

    /// Send one command, collect its figures.
    fn call(&mut self, cmd: &str) -> Result {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("bench pipeline: {}: {e}", self.system))?;
        self.reply(cmd)
    }

    fn reply(&mut self, cmd: &str) -> Result {
        loop {
            let line = match self.lines.next() {
                Some(Ok(l)) => l,
                _ => return Err(format!("bench pipeline: {}: {cmd}: no answer", self.system)),
            };
            if line == "done" {
                return Ok(());
            }
            if let Some(e) = line.strip_prefix("error ") {
                return Err(format!("bench pipeline: {}: {cmd}: {e}", self.system));
            }
            self.samples.push_line(&line)?;
        }
    }

    fn finish(mut self) -> Result<Samples> {
        drop(self.stdin);
        let st = self.child.wait().map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("bench pipeline: {}: {st}", self.system));
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
struct Window {
    label: String,
    lo: usize,
    hi: usize,
}

fn windows(n: usize) -> Vec<Window> {
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

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn cell(s: Option<(Duration, Duration)>) -> String {
    s.map_or("-".into(), |(m, p)| format!("{} / {}", ms(m), ms(p)))
}

fn label(sys: &str) -> &'static str {
    SYSTEMS.iter().find(|s| s.0 == sys).map_or("?", |s| s.1)
}

fn pipeline_report(res: &BTreeMap<String, Samples>, n: usize, load: &str) -> Result<String> {
    let ws = windows(n);
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\nPer-container wall time, ms, median / p90 over the window, each tool's process \
         starts included; {n} containers per system\n{}; load before the run {load}\n",
        machine()
    );
    let head: Vec<String> = ws
        .iter()
        .map(|w| format!("{} ({}-{})", w.label, w.lo, w.hi))
        .collect();
    for (phase, key) in [("setup", "setup"), ("teardown", "teardown")] {
        let _ = writeln!(r, "| {phase} | {} |", head.join(" | "));
        let _ = writeln!(r, "|---|{}", "---|".repeat(ws.len()));
        for (sys, lab) in SYSTEMS {
            let Some(s) = res.get(*sys) else { continue };
            let cells: Vec<String> = ws.iter().map(|w| cell(s.window(key, w))).collect();
            let _ = writeln!(r, "| {lab} | {} |", cells.join(" | "));
        }
        let _ = writeln!(r);
    }

    // Teardown of all N at once (ve) against the NixOS sequence deleting them one by one.
    let ve = res.get("ve");
    let bulk_ve = ve.and_then(|s| Some(s.total("bulk-down")? + s.total("bulk-release")?));
    let nixos_all = res.get("nixos").and_then(|s| s.total("teardown"));
    if let Some(b) = bulk_ve {
        let _ = writeln!(
            r,
            "bulk teardown of {n}: `ve-link down --all` {} ms + `ve-alloc release` of all {n} \
             names in one call {} ms = {} ms",
            ms(ve.and_then(|s| s.total("bulk-down")).unwrap_or_default()),
            ms(ve.and_then(|s| s.total("bulk-release")).unwrap_or_default()),
            ms(b)
        );
    }
    for (sys, _) in SYSTEMS {
        if let Some(t) = res.get(*sys).and_then(|s| s.total("teardown")) {
            let _ = writeln!(r, "one by one, all {n}: {} {} ms", label(sys), ms(t));
        }
    }
    if let Some(s) = ve {
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
    }

    // Targets, at the last window.
    let last = ws.last().expect("at least one window");
    let first = ws.first().expect("at least one window");
    let med =
        |sys: &str, key: &str, w: &Window| res.get(sys).and_then(|s| s.window(key, w)).map(|x| x.0);
    let _ = writeln!(
        r,
        "\nTargets (at the {} container unless said otherwise):",
        last.label
    );
    let mut target = |what: String, ratio: Option<f64>, ok: &dyn Fn(f64) -> bool| {
        let _ = match ratio {
            Some(x) => writeln!(
                r,
                "- {what}: {:.2}x, {}",
                x,
                if ok(x) { "met" } else { "MISSED" }
            ),
            None => writeln!(r, "- {what}: not measured"),
        };
    };
    let ratio = |a: Option<Duration>, b: Option<Duration>| {
        Some(a?.as_secs_f64() / b?.as_secs_f64()).filter(|x| x.is_finite())
    };
    let ve_set = med("ve", "setup", last);
    for (sys, want) in [("nixos", 5.0), ("cni", 8.0), ("netavark", 8.0)] {
        target(
            format!("setup at least {want}x faster than {}", label(sys)),
            ratio(med(sys, "setup", last), ve_set),
            &move |x| x >= want,
        );
    }
    target(
        format!(
            "flat: setup at {} within 1.3x of the {}",
            last.label, first.label
        ),
        ratio(ve_set, med("ve", "setup", first)),
        &|x| x <= 1.3,
    );
    target(
        "setup within 2x of the `ip -batch` reference".into(),
        ratio(ve_set, med("batch", "setup", last)),
        &|x| x <= 2.0,
    );
    let ve_down = med("ve", "teardown", last);
    target(
        "teardown (ve-link down + ve-alloc release) within 1.3x of one `ip link del`".into(),
        ratio(ve_down, med("nixos", "teardown", last)),
        &|x| x <= 1.3,
    );
    target(
        "teardown at least 2x faster than CNI ptp DEL".into(),
        ratio(med("cni", "teardown", last), ve_down),
        &|x| x >= 2.0,
    );
    target(
        format!("bulk teardown of {n} at least 10x faster than the NixOS sequence one by one"),
        ratio(nixos_all, bulk_ve),
        &|x| x >= 10.0,
    );

    write_csv(res, &ws)?;
    plot(res, n)?;
    Ok(r)
}

fn median(mut v: Vec<Duration>) -> Duration {
    median_p90(&mut v).0
}

fn write_csv(res: &BTreeMap<String, Samples>, ws: &[Window]) -> Result {
    let dir = out_dir()?;
    let mut rows = String::from("system,container,setup_ms,teardown_ms\n");
    let mut summary = String::from("system,phase,window,first,last,median_ms,p90_ms\n");
    for (sys, _) in SYSTEMS {
        let Some(s) = res.get(*sys) else { continue };
        let (setup, down) = (s.get("setup"), s.get("teardown"));
        for (i, d) in setup.iter().enumerate() {
            let t = down.get(i).map(|d| format!("{:.3}", d.as_secs_f64() * 1e3));
            let _ = writeln!(
                rows,
                "{sys},{},{:.3},{}",
                i + 1,
                d.as_secs_f64() * 1e3,
                t.unwrap_or_default()
            );
        }
        for key in ["setup", "teardown"] {
            for w in ws {
                if let Some((m, p)) = s.window(key, w) {
                    let _ = writeln!(
                        summary,
                        "{sys},{key},{},{},{},{:.3},{:.3}",
                        w.label,
                        w.lo,
                        w.hi,
                        m.as_secs_f64() * 1e3,
                        p.as_secs_f64() * 1e3
                    );
                }
            }
        }
    }
    std::fs::write(dir.join("pipeline.csv"), rows).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("pipeline-summary.csv"), summary).map_err(|e| e.to_string())
}

/// target/bench/pipeline.png: setup time against the container count, one line per
/// system (a running median over 11 containers, so the lines stay readable).
fn plot(res: &BTreeMap<String, Samples>, n: usize) -> Result {
    use plotters::prelude::*;
    let font = std::fs::read(FONT)
        .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| format!("{FONT}: not a usable font"))?;
    let path = out_dir()?.join("pipeline.png");
    let err = |e: DrawingAreaErrorKind<_>| format!("drawing {}: {e:?}", path.display());
    let series: Vec<(&str, Vec<(f64, f64)>)> = SYSTEMS
        .iter()
        .filter_map(|(sys, lab)| {
            let v = res.get(*sys)?.get("setup");
            let pts = (0..v.len())
                .map(|i| {
                    let lo = i.saturating_sub(5);
                    let hi = (i + 6).min(v.len());
                    (
                        (i + 1) as f64,
                        median(v[lo..hi].to_vec()).as_secs_f64() * 1e3,
                    )
                })
                .collect();
            Some((*lab, pts))
        })
        .collect();
    let all = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let (lo, hi) = all.fold((f64::MAX, 0f64), |(a, b), y| (a.min(y), b.max(y)));
    if series.is_empty() || hi <= 0.0 {
        return Ok(());
    }
    let root = BitMapBackend::new(&path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Per-container setup time, process starts included ({})",
                machine()
            ),
            ("sans-serif", 18),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            1f64..n.max(2) as f64,
            ((10f64.powf((lo * 0.8).log10().floor()))..(hi * 3.0)).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("containers on the host (this one included)")
        .y_desc("setup, ms (log scale; running median of 11)")
        .label_style(("sans-serif", 15))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_labels(30)
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    let colors = [
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(90, 90, 90),
    ];
    for (i, (lab, pts)) in series.into_iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(3)))
            .map_err(err)?
            .label(lab)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 25, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// `bench alloc`'s CSV, as lines for the report.
fn alloc_summary() -> Result<String> {
    let csv = std::fs::read_to_string(out_dir()?.join("alloc.csv")).map_err(|e| e.to_string())?;
    let mut r = String::from("\nAllocator alone (one process per allocation, median / p90 ms):\n");
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if let [n, tool, m, p] = f[..] {
            let _ = writeln!(r, "- {tool} at {n} leases: {m} / {p}");
        }
    }
    Ok(r)
}

/// `bench nm --cycles 30` run as a child; its `--watch` line for the report.
fn nm_summary(exe: &Path) -> Result<String> {
    let out = Command::new(exe)
        .args(["bench", "nm", "--cycles", "30"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("bench nm: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    say!("{text}");
    if !out.status.success() {
        return Err(format!("bench nm failed: {}", out.status));
    }
    let watch = text
        .lines()
        .find(|l| l.starts_with("--watch"))
        .unwrap_or("--watch: no result");
    Ok(format!(
        "\nnm-unmanage against a sandboxed NetworkManager: {watch}\n"
    ))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---- inside a host namespace ----

/// Run `cmd` with `input` on stdin (if any); its wall time; fail with its stderr.
fn timed(cmd: &mut Command, input: Option<&str>) -> Result<Duration> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{}: {e}", util::show(cmd)))?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", util::show(cmd)))?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let d = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{}: {}: {}{}",
            util::show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(d)
}

struct Host<'a> {
    prefix: &'a str,
    work: &'a Path,
    bin: PathBuf,
    system: &'a str,
    cni_conf: String,
}

impl Host<'_> {
    fn ns(&self, i: usize) -> String {
        format!("{}-c{i}", self.prefix)
    }

    fn tool(&self, name: &str) -> Command {
        self.cmd(&self.bin.join(name))
    }

    fn cmd(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("VE_ALLOC_STORE", self.work.join("store"))
            .env("VE_ALLOC_CONFIG", "/dev/null")
            .env("VE_NAT_LOCK_DIR", self.work.join("ve-nat-lock"));
        c
    }

    /// This project as users run it: one shell pipeline.
    fn ve_up(&self, name: &str, ns: &str) -> Result<Duration> {
        timed(
            self.cmd(Path::new("sh"))
                .args([
                    "-c",
                    "\"$0\"/ve-alloc alloc \"$1\" | \"$0\"/ve-link up \"$1\" --netns \"$2\" --addresses -",
                ])
                .arg(&self.bin)
                .args([name, &format!("/run/netns/{ns}")]),
            None,
        )
    }

    fn ve_down(&self, name: &str) -> Result<(Duration, Duration)> {
        let d = timed(self.tool("ve-link").args(["down", name]), None)?;
        let r = timed(self.tool("ve-alloc").args(["release", name]), None)?;
        Ok((d, r))
    }

    fn cni_conf(&self) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"vebench","type":"ptp","ipMasq":true,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.240.0.0/16"}}]],"dataDir":"{}"}}}}"#,
            self.work.join("ipam").display()
        )
    }

    fn cni(&self, command: &str, name: &str, ns: &str, conf: &str) -> Result<Duration> {
        timed(
            Command::new(Path::new(CNI_DIR).join("ptp"))
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", name)
                .env("CNI_NETNS", format!("/run/netns/{ns}"))
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", CNI_DIR),
            Some(conf),
        )
    }

    /// netavark's input as podman writes it: one bridge network, the container's
    /// address chosen by the caller.
    fn netavark_conf(&self, name: &str, k: usize) -> String {
        let a = k + 2;
        format!(
            r#"{{"container_id":"{name}","container_name":"{name}","networks":{{"vebench":{{"static_ips":["10.88.{}.{}"],"interface_name":"eth0"}}}},"network_info":{{"vebench":{{"name":"vebench","id":"5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e","driver":"bridge","network_interface":"vebr0","subnets":[{{"gateway":"10.88.0.1","subnet":"10.88.0.0/16"}}],"ipv6_enabled":false,"internal":false,"dns_enabled":false,"ipam_options":{{"driver":"host-local"}}}}}}}}"#,
            a >> 8,
            a & 255
        )
    }

    fn netavark(&self, command: &str, ns: &str, conf: &str) -> Result<Duration> {
        timed(
            Command::new(NETAVARK)
                .env("NETAVARK_FW", "iptables")
                .arg("--config")
                .arg(self.work.join("netavark"))
                .args([command, &format!("/run/netns/{ns}")]),
            Some(conf),
        )
    }

    /// The same work as the NixOS sequence with one `ip -batch` per namespace.
    fn batch_up(&self, name: &str, ns: &str, k: usize) -> Result<Duration> {
        let (h, l) = link::addrs(k);
        let dev = format!("ve-{name}");
        let host = format!(
            "link add {dev} type veth peer name eth0 netns {ns}\nlink set {dev} up\n\
             addr add {h}/32 dev {dev}\nroute add {l}/32 dev {dev}\n"
        );
        let ctr = format!(
            "link set lo up\nlink set eth0 up\naddr add {l}/32 dev eth0\n\
             route add {h}/32 dev eth0\nroute add default via {h} dev eth0\n"
        );
        let t = timed(Command::new("ip").args(["-batch", "-"]), Some(&host))?;
        Ok(t + timed(
            Command::new("ip").args(["-n", ns, "-batch", "-"]),
            Some(&ctr),
        )?)
    }

    fn ip_link_del(&self, name: &str) -> Result<Duration> {
        timed(
            Command::new("ip").args(["link", "del", &format!("ve-{name}")]),
            None,
        )
    }
}

/// The server side of [`Server`]: `up I`, `down I`, `phases`, `bulk` on stdin; figures
/// as `KEY INDEX NANOS` lines, then `done` (or `error MESSAGE`) on stdout.
fn inner_run(inner: &Inner, n: usize) -> Result {
    use std::io::BufRead as _;
    let h = Host {
        prefix: &inner.prefix,
        work: &inner.work,
        bin: util::root().join("target/release"),
        system: &inner.system,
        cni_conf: String::new(),
    }
    .with_cni_conf();
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
    reply(h.prepare().map(|()| Vec::new()))?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let (cmd, arg) = line.split_once(' ').unwrap_or((&line, ""));
        let i: usize = arg.parse().unwrap_or(0);
        reply(match cmd {
            "up" => h
                .make_netns(&[h.ns(i)])
                .and_then(|()| h.up(i))
                .map(|d| vec![("setup", i + 1, d)]),
            "down" => h.down(i).and_then(|f| h.del_netns(&[h.ns(i)]).map(|()| f)),
            "phases" => h.phases(),
            "bulk" => h.bulk(n),
            other => Err(format!("unknown command {other:?}")),
        })?;
    }
    Ok(())
}

/// One figure: key, container number (1-based) or sample number, wall time.
type Fig = (&'static str, usize, Duration);

impl Host<'_> {
    fn with_cni_conf(mut self) -> Self {
        self.cni_conf = self.cni_conf();
        self
    }

    /// Container namespaces, made (untimed) just before their container is set up, in
    /// this process's own mount namespace (`ip netns exec` gave it one): the host sees
    /// as many of them as it has containers, as a real host would, and they go away
    /// with this process.
    fn make_netns(&self, names: &[String]) -> Result {
        let script: String = names
            .iter()
            .map(|n| format!("netns add {n}\nnetns exec {n} ip link set lo up\n"))
            .collect();
        nat::ip_batch(None, &script)
    }

    fn del_netns(&self, names: &[String]) -> Result {
        let script: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
        nat::ip_batch(None, &script)
    }

    fn prepare(&self) -> Result {
        if self.system == "ve" {
            // Installed once, before any container; the store exists on a real host too.
            timed(self.tool("ve-nat").args(["up", "--external", "up0"]), None)?;
            timed(self.tool("ve-alloc").args(["alloc", "warm-up"]), None)?;
            timed(self.tool("ve-alloc").args(["release", "warm-up"]), None)?;
        }
        Ok(())
    }

    fn up(&self, i: usize) -> Result<Duration> {
        let (name, ns) = (format!("c{i}"), self.ns(i));
        match self.system {
            "ve" => self.ve_up(&name, &ns),
            "nixos" => {
                let unused = PathBuf::new();
                let ctx = link::Ctx {
                    prefix: self.prefix,
                    bin: &unused,
                };
                ctx.ip_up(&name, &ns, i + 1, false)
            }
            "cni" => self.cni("ADD", &name, &ns, &self.cni_conf),
            "netavark" => self.netavark("setup", &ns, &self.netavark_conf(&name, i)),
            "batch" => self.batch_up(&name, &ns, i + 1),
            other => Err(format!("unknown system {other}")),
        }
    }

    fn down(&self, i: usize) -> Result<Vec<Fig>> {
        let (name, ns) = (format!("c{i}"), self.ns(i));
        let mut figs = Vec::new();
        let d = match self.system {
            "ve" => {
                let (d, r) = self.ve_down(&name)?;
                figs.push(("teardown-link", i + 1, d));
                figs.push(("teardown-release", i + 1, r));
                d + r
            }
            "nixos" | "batch" => self.ip_link_del(&name)?,
            "cni" => self.cni("DEL", &name, &ns, &self.cni_conf)?,
            "netavark" => self.netavark("teardown", &ns, &self.netavark_conf(&name, i))?,
            other => return Err(format!("unknown system {other}")),
        };
        figs.push(("teardown", i + 1, d));
        Ok(figs)
    }

    /// Where a ve setup's time goes, with the containers present: each process alone.
    fn phases(&self) -> Result<Vec<Fig>> {
        let xs: Vec<String> = (0..PHASE_SAMPLES)
            .map(|j| format!("{}-x{j}", self.prefix))
            .collect();
        self.make_netns(&xs)?;
        let figs = self.phases_in();
        self.del_netns(&xs)?;
        figs
    }

    fn phases_in(&self) -> Result<Vec<Fig>> {
        let mut figs = Vec::new();
        for j in 0..PHASE_SAMPLES {
            let (name, ns) = (format!("x{j}"), format!("{}-x{j}", self.prefix));
            figs.push((
                "phase-sh",
                j,
                timed(Command::new("sh").args(["-c", "true"]), None)?,
            ));
            let t = Instant::now();
            let out = self
                .tool("ve-alloc")
                .args(["alloc", &name])
                .output()
                .map_err(|e| e.to_string())?;
            figs.push(("phase-alloc", j, t.elapsed()));
            if !out.status.success() {
                return Err(format!("ve-alloc alloc {name}: {}", out.status));
            }
            let up = timed(
                self.tool("ve-link").args([
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
            let (d, r) = self.ve_down(&name)?;
            figs.push(("phase-down", j, d));
            figs.push(("phase-release", j, r));
        }
        // The same store on tmpfs, where fsync costs nothing: what the disk adds.
        let shm = PathBuf::from(format!("/dev/shm/{}-store", self.prefix));
        let on_shm = |args: &[&str]| {
            timed(
                self.tool("ve-alloc").env("VE_ALLOC_STORE", &shm).args(args),
                None,
            )
        };
        // The database and its write-ahead log (kept between runs), not the shm index.
        let copied = std::fs::create_dir_all(&shm)
            .and_then(|()| std::fs::read_dir(self.work.join("store")))
            .and_then(|dir| {
                for e in dir {
                    let e = e?;
                    if !e.file_name().to_string_lossy().ends_with("-shm") {
                        std::fs::copy(e.path(), shm.join(e.file_name()))?;
                    }
                }
                Ok(0)
            });
        let result = copied.map_err(|e| format!("copying the store to {}: {e}", shm.display()));
        let result = result.and_then(|_| {
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

    /// Host shutdown: all n up again, then removed with one call per tool.
    fn bulk(&self, n: usize) -> Result<Vec<Fig>> {
        let all: Vec<String> = (0..n).map(|i| self.ns(i)).collect();
        self.make_netns(&all)?;
        for i in 0..n {
            self.up(i)?;
        }
        let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let down = timed(self.tool("ve-link").args(["down", "--all"]), None)?;
        let release = timed(self.tool("ve-alloc").arg("release").args(&names), None)?;
        self.del_netns(&all)?;
        Ok(vec![("bulk-down", n, down), ("bulk-release", n, release)])
    }
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
}
