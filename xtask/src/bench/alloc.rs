//! `cargo xtask bench alloc`: one `ve-alloc alloc` process, the way users call it, at
//! growing numbers of existing leases, next to the CNI `host-local` IPAM plugin doing the
//! same allocation on the same machine.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::stats::{list_opt, machine, median_p90, ms, opt, out_dir, refuse_unknown, timed};
use crate::util::{self, cargo, ensure_debian_packages, Result};

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

/// Median and p90 of one measurement point.
type Stat = (Duration, Duration);

pub(super) const USAGE: &str = "\
usage: cargo xtask bench alloc [--runs K] [--sizes N,N,...] [--host-local-sizes N,...]

  --runs K                 timed allocations per point (default 100)
  --sizes N,...            lease counts ve-alloc is measured at (default 100,1000,10000,30000)
  --host-local-sizes N,... lease counts the CNI host-local plugin is measured at
                           (default 1000,10000)

Installs containernetworking-plugins when missing (as root). Writes
target/bench/alloc.csv and alloc.txt.
";

pub(super) struct Opts {
    runs: usize,
    sizes: Vec<usize>,
    hl_sizes: Vec<usize>,
}

/// The options, or `None` for `--help`; unknown options are refused.
pub(super) fn parse(args: &[String]) -> Result<Option<Opts>> {
    if refuse_unknown(
        "bench alloc",
        args,
        &["--runs", "--sizes", "--host-local-sizes"],
        USAGE,
    )? {
        return Ok(None);
    }
    Ok(Some(Opts {
        runs: opt(args, "--runs")?.unwrap_or(100),
        sizes: list_opt(args, "--sizes", &[100, 1000, 10_000, 30_000])?,
        hl_sizes: list_opt(args, "--host-local-sizes", &[1000, 10_000])?,
    }))
}

pub fn run(args: &[String]) -> Result {
    let Some(Opts {
        runs,
        sizes,
        hl_sizes,
    }) = parse(args)?
    else {
        crate::out::print(USAGE);
        return Ok(());
    };
    if util::is_root() {
        ensure_debian_packages(&["containernetworking-plugins"])?;
    }
    util::run(cargo().args(["build", "--release", "--quiet", "-p", "ve-alloc"]))?;
    let bin = util::root().join("target/release/ve-alloc");
    let work = out_dir()?.join("alloc-work");
    let _ = std::fs::remove_dir_all(&work);
    crate::guard::dir(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;

    eprintln!(
        "bench alloc: {runs} timed allocations per point on {}",
        machine()
    );
    // Every point is prepared first and then sampled in turn, one allocation each per
    // round, so a change in machine load during the run hits all points alike and the
    // ratios between them stay fair.
    // Whichever store is made first measures some 0.5 ms slower, whatever its size (a
    // file system effect we have not pinned down): the largest goes first, so the
    // flatness figure errs against us.
    let mut points: Vec<(usize, bool, Point)> = Vec::new();
    let mut sizes = sizes;
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    for &n in &sizes {
        points.push((
            n,
            false,
            Point::ve_alloc(&bin, &work.join(format!("va-{n}")), n)?,
        ));
    }
    if Path::new(HOST_LOCAL).exists() {
        for &n in &hl_sizes {
            points.push((
                n,
                true,
                Point::host_local(&work.join(format!("hl-{n}")), n)?,
            ));
        }
    } else {
        eprintln!("bench alloc: {HOST_LOCAL} missing; host-local not measured");
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); points.len()];
    for round in 0..runs {
        // Rotate who goes first: a point right after host-local's directory scan would
        // otherwise always start with a colder cache.
        for k in 0..points.len() {
            let i = (round + k) % points.len();
            samples[i].push(points[i].2.sample()?);
        }
    }
    let mut rows: Vec<(usize, Option<Stat>, Option<Stat>)> = Vec::new();
    for ((n, hl, _), mut s) in points.into_iter().zip(samples) {
        let t = median_p90(&mut s);
        let tool = if hl { "host-local" } else { "ve-alloc  " };
        eprintln!("  {tool} at {n:>6} leases: median {} ms", ms(t.0));
        let row = match rows.iter_mut().position(|r| r.0 == n) {
            Some(i) => &mut rows[i],
            None => {
                rows.push((n, None, None));
                rows.last_mut().expect("just pushed")
            }
        };
        if hl {
            row.2 = Some(t);
        } else {
            row.1 = Some(t);
        }
    }
    rows.sort_by_key(|r| r.0);
    let _ = std::fs::remove_dir_all(&work);

    let cell =
        |t: Option<Stat>| t.map_or("-".to_string(), |(m, p)| format!("{} / {}", ms(m), ms(p)));
    let mut table = String::new();
    let _ = writeln!(
        table,
        "allocation per process, ms (median / p90 of {runs}), {}",
        machine()
    );
    let _ = writeln!(
        table,
        "{:>8}  {:>17}  {:>17}",
        "leases", "ve-alloc alloc", "host-local ADD"
    );
    let mut csv = String::from("leases,tool,median_ms,p90_ms\n");
    for (n, va, hl) in &rows {
        let _ = writeln!(table, "{n:>8}  {:>17}  {:>17}", cell(*va), cell(*hl));
        for (tool, t) in [("ve-alloc", va), ("host-local", hl)] {
            if let Some((m, p)) = t {
                let _ = writeln!(csv, "{n},{tool},{},{}", ms(*m), ms(*p));
            }
        }
    }
    let med = |n: usize, hl: bool| {
        rows.iter()
            .find(|r| r.0 == n)
            .and_then(|r| if hl { r.2 } else { r.1 })
            .map(|t| t.0.as_secs_f64())
    };
    if let (Some(lo), Some(hi)) = (
        sizes.iter().min().and_then(|&n| med(n, false)),
        sizes.iter().max().and_then(|&n| med(n, false)),
    ) {
        let _ = writeln!(
            table,
            "flatness: ve-alloc at {} leases costs {:.2}x its cost at {} (target <= 1.5x)",
            sizes.iter().max().copied().unwrap_or(0),
            hi / lo,
            sizes.iter().min().copied().unwrap_or(0)
        );
    }
    for &n in &hl_sizes {
        if let (Some(va), Some(hl)) = (med(n, false), med(n, true)) {
            let _ = writeln!(
                table,
                "speed-up: ve-alloc is {:.2}x faster than host-local at {n} leases{}",
                hl / va,
                if n == 1000 { " (target >= 2x)" } else { "" }
            );
        }
    }
    say!("{table}");
    let dir = out_dir()?;
    std::fs::write(dir.join("alloc.csv"), csv).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("alloc.txt"), table).map_err(|e| e.to_string())?;
    eprintln!("bench alloc: wrote {}", dir.join("alloc.csv").display());
    Ok(())
}

/// One measurement point: a store holding `n` leases, and how to time one more
/// allocation in it (released again right after, untimed, so the count stays at `n`).
enum Point {
    VeAlloc {
        bin: PathBuf,
        store: PathBuf,
        next: usize,
    },
    HostLocal {
        conf: String,
        next: usize,
    },
}

impl Point {
    /// `ve-alloc alloc` at `n` existing leases: the store is filled with `n` leases
    /// through `ve-alloc import` (NixOS conf files, as a migrating host would).
    fn ve_alloc(bin: &Path, dir: &Path, n: usize) -> Result<Point> {
        let confs = dir.join("confs");
        std::fs::create_dir_all(&confs).map_err(|e| e.to_string())?;
        for i in 0..n {
            // Pair i of 10.233.0.0/16: host 10.233.0.0 + 2(i+1), container +1.
            let h = 0x0ae9_0000u32 + 2 * (i as u32 + 1);
            let text = common::output::env_lines(&[
                (
                    common::lease::HOST_ADDRESS,
                    std::net::Ipv4Addr::from(h).to_string(),
                ),
                (
                    common::lease::LOCAL_ADDRESS,
                    std::net::Ipv4Addr::from(h + 1).to_string(),
                ),
            ]);
            std::fs::write(confs.join(format!("c{i}.conf")), text).map_err(|e| e.to_string())?;
        }
        let mut p = Point::VeAlloc {
            bin: bin.to_path_buf(),
            store: dir.join("store"),
            next: 0,
        };
        p.ve_alloc_cmd(&["import", confs.to_str().unwrap_or_default()])?;
        // The first allocation after an import walks past the imported block once.
        p.sample()?;
        Ok(p)
    }

    fn ve_alloc_cmd(&self, args: &[&str]) -> Result<Duration> {
        let Point::VeAlloc { bin, store, .. } = self else {
            unreachable!("ve-alloc command on a host-local point")
        };
        timed(
            Command::new(bin)
                .env("VE_ALLOC_STORE", store)
                .env("VE_ALLOC_CONFIG", "/dev/null")
                .args(args),
            None,
        )
    }

    /// host-local ADD at `n` existing leases, invoked as a CNI runtime does. The store
    /// is filled by writing host-local's own files (one per address: container id, CRLF,
    /// interface), which is what `n` ADDs would leave, without waiting for them.
    fn host_local(dir: &Path, n: usize) -> Result<Point> {
        let data = dir.join("data");
        let net = data.join("benchnet");
        std::fs::create_dir_all(&net).map_err(|e| e.to_string())?;
        for i in 0..n {
            let a = std::net::Ipv4Addr::from(0x0ae9_0002u32 + i as u32);
            std::fs::write(net.join(a.to_string()), format!("pre-{i}\r\neth0"))
                .map_err(|e| e.to_string())?;
        }
        let conf = format!(
            r#"{{"cniVersion":"0.4.0","name":"benchnet","ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.233.0.0/16"}}]],"dataDir":"{}"}}}}"#,
            data.display()
        );
        let mut p = Point::HostLocal { conf, next: 0 };
        p.sample()?;
        Ok(p)
    }

    fn cni(&self, command: &str, id: &str) -> Result<Duration> {
        let Point::HostLocal { conf, .. } = self else {
            unreachable!("CNI command on a ve-alloc point")
        };
        let mut c = Command::new(HOST_LOCAL);
        c.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", "/var/run/netns/bench")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t = Instant::now();
        let mut child = c.spawn().map_err(|e| format!("running host-local: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let d = t.elapsed();
        if !out.status.success() {
            return Err(format!(
                "host-local {command} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(d)
    }

    /// Time one allocation of a new container, then release it (untimed).
    fn sample(&mut self) -> Result<Duration> {
        let (Point::VeAlloc { next, .. } | Point::HostLocal { next, .. }) = self;
        let name = format!("bench-{next}");
        *next += 1;
        match self {
            Point::VeAlloc { .. } => {
                let d = self.ve_alloc_cmd(&["alloc", &name])?;
                self.ve_alloc_cmd(&["release", &name])?;
                Ok(d)
            }
            Point::HostLocal { .. } => {
                let d = self.cni("ADD", &name)?;
                self.cni("DEL", &name)?;
                Ok(d)
            }
        }
    }
}
