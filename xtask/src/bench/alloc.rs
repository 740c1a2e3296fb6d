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

mod etcd;

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

/// Median and p90 of one measurement point.
type Stat = (Duration, Duration);

pub(super) const USAGE: &str = "\
usage: cargo xtask bench alloc [--runs K] [--sizes N,N,...] [--host-local-sizes N,...]
                               [--etcd on|off] [--fleet-leases N,...] [--parallel P]
                               [--per-node N] [--node-cpu F]

  --runs K                 timed allocations per point (default 100)
  --sizes N,...            lease counts ve-alloc is measured at (default 100,1000,10000,30000)
  --host-local-sizes N,... lease counts the CNI host-local plugin is measured at
                           (default 1000,10000)
  --etcd on|off            the etcd store's rows (default on; as root, with etcd-server
                           and etcd-client): a 3-member etcd cluster in namespaces,
                           ve-alloc started from a node namespace
  --fleet-leases N,...     fleet lease counts the etcd store is measured at
                           (default 100,1000,30000)
  --parallel P             allocators per node in the throughput rounds (default 16)
  --per-node N             allocations per node in each throughput round (default 160)
  --node-cpu F             then the same two throughput rounds again with each node's
                           allocators and their ve-alloc processes in a CPU cgroup of F
                           cores (cgroup v1, as root; 0.01 to the number of cores, e.g.
                           0.1), the etcd members unconfined: a model of nodes on hosts
                           of their own, next to the rounds above (default off)

Installs containernetworking-plugins (and etcd-server, etcd-client for the etcd rows)
when missing (as root). Writes target/bench/alloc.csv, alloc-etcd.csv and alloc.txt.
";

pub(super) struct Opts {
    runs: usize,
    sizes: Vec<usize>,
    hl_sizes: Vec<usize>,
    etcd: bool,
    fleet: Vec<usize>,
    parallel: usize,
    per_node: usize,
    node_cpu: Option<f64>,
}

/// The options, or `None` for `--help`; unknown options are refused.
pub(super) fn parse(args: &[String]) -> Result<Option<Opts>> {
    if refuse_unknown(
        "bench alloc",
        args,
        &[
            "--runs",
            "--sizes",
            "--host-local-sizes",
            "--etcd",
            "--fleet-leases",
            "--parallel",
            "--per-node",
            "--node-cpu",
        ],
        USAGE,
    )? {
        return Ok(None);
    }
    let etcd = match opt::<String>(args, "--etcd")?.as_deref() {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => {
            return Err(format!(
                "bench alloc: --etcd takes on or off, not {other:?}"
            ))
        }
    };
    let positive = |name: &str, default: usize| -> Result<usize> {
        match opt::<usize>(args, name)?.unwrap_or(default) {
            0 => Err(format!("bench alloc: {name} must be at least 1")),
            n => Ok(n),
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let node_cpu = match opt::<f64>(args, "--node-cpu")? {
        Some(f) if !(0.01..=cores).contains(&f) => {
            return Err(format!(
                "bench alloc: --node-cpu takes cores per node from 0.01 to {cores}, not {f}"
            ))
        }
        Some(_) if !etcd => {
            return Err("bench alloc: --node-cpu needs the etcd rows (not --etcd off)".into())
        }
        f => f,
    };
    Ok(Some(Opts {
        runs: positive("--runs", 100)?,
        sizes: list_opt(args, "--sizes", &[100, 1000, 10_000, 30_000])?,
        hl_sizes: list_opt(args, "--host-local-sizes", &[1000, 10_000])?,
        etcd,
        fleet: list_opt(args, "--fleet-leases", &[100, 1000, 30_000])?,
        parallel: positive("--parallel", 16)?,
        per_node: positive("--per-node", 160)?,
        node_cpu,
    }))
}

/// Which column a point belongs to.
#[derive(Clone, Copy, PartialEq)]
enum Tool {
    VeAlloc,
    Etcd,
    HostLocal,
}

/// One row of the table: medians and p90s at one lease count.
#[derive(Default)]
struct Row {
    n: usize,
    sqlite: Option<Stat>,
    etcd: Option<Stat>,
    hl: Option<Stat>,
}

pub fn run(args: &[String]) -> Result {
    let Some(Opts {
        runs,
        sizes,
        hl_sizes,
        etcd,
        fleet: fleet_sizes,
        parallel,
        per_node,
        node_cpu,
    }) = parse(args)?
    else {
        crate::out::print(USAGE);
        return Ok(());
    };
    let root = util::is_root();
    if node_cpu.is_some() {
        if !root {
            return Err("bench alloc: --node-cpu needs root (the etcd rows and cgroups)".into());
        }
        etcd::NodeCpu::check()?;
    }
    if root {
        let mut want = vec!["containernetworking-plugins"];
        if etcd {
            want.extend(["etcd-server", "etcd-client"]);
        }
        ensure_debian_packages(&want)?;
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
    let mut points: Vec<(usize, Tool, Point)> = Vec::new();
    let mut sizes = sizes;
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    for &n in &sizes {
        points.push((
            n,
            Tool::VeAlloc,
            Point::ve_alloc(&bin, &work.join(format!("va-{n}")), n)?,
        ));
    }
    if Path::new(HOST_LOCAL).exists() {
        for &n in &hl_sizes {
            points.push((
                n,
                Tool::HostLocal,
                Point::host_local(&work.join(format!("hl-{n}")), n)?,
            ));
        }
    } else {
        eprintln!("bench alloc: {HOST_LOCAL} missing; host-local not measured");
    }
    let fleet = if !etcd {
        None
    } else if !root || !testbed::etcd::Cluster::available() {
        eprintln!("bench alloc: the etcd rows need root and etcd-server, etcd-client; skipped");
        None
    } else {
        let f = etcd::Fleet::start(&bin)?;
        let mut fleet_sizes = fleet_sizes.clone();
        fleet_sizes.sort_unstable_by(|a, b| b.cmp(a));
        for &n in &fleet_sizes {
            let prefix = format!("bench-{n}");
            let took = f.fill(&prefix, n)?;
            eprintln!(
                "bench alloc: {n} fleet leases on {} other nodes written in {:.1} s",
                etcd::FILL_NODES,
                took.as_secs_f64()
            );
            let mut p = Point::Etcd {
                p: f.point(&prefix),
                next: 0,
            };
            // The measured node claims its block here, untimed.
            p.sample()?;
            points.push((n, Tool::Etcd, p));
        }
        Some(f)
    };
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); points.len()];
    for round in 0..runs {
        // Rotate who goes first: a point right after host-local's directory scan would
        // otherwise always start with a colder cache.
        for k in 0..points.len() {
            let i = (round + k) % points.len();
            samples[i].push(points[i].2.sample()?);
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    for ((n, tool, _), mut s) in points.into_iter().zip(samples) {
        let t = median_p90(&mut s);
        let name = match tool {
            Tool::VeAlloc => "ve-alloc (SQLite)",
            Tool::Etcd => "ve-alloc (etcd)  ",
            Tool::HostLocal => "host-local       ",
        };
        eprintln!("  {name} at {n:>6} leases: median {} ms", ms(t.0));
        let row = match rows.iter_mut().position(|r| r.n == n) {
            Some(i) => &mut rows[i],
            None => {
                rows.push(Row {
                    n,
                    ..Row::default()
                });
                rows.last_mut().expect("just pushed")
            }
        };
        match tool {
            Tool::VeAlloc => row.sqlite = Some(t),
            Tool::Etcd => row.etcd = Some(t),
            Tool::HostLocal => row.hl = Some(t),
        }
    }
    rows.sort_by_key(|r| r.n);
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
        "{:>8}  {:>17}  {:>17}  {:>17}",
        "leases", "ve-alloc (SQLite)", "ve-alloc (etcd)", "host-local ADD"
    );
    let mut csv = String::from("leases,tool,median_ms,p90_ms\n");
    for r in &rows {
        let _ = writeln!(
            table,
            "{:>8}  {:>17}  {:>17}  {:>17}",
            r.n,
            cell(r.sqlite),
            cell(r.etcd),
            cell(r.hl)
        );
        for (tool, t) in [
            ("ve-alloc", r.sqlite),
            ("ve-alloc-etcd", r.etcd),
            ("host-local", r.hl),
        ] {
            if let Some((m, p)) = t {
                let _ = writeln!(csv, "{},{tool},{},{}", r.n, ms(m), ms(p));
            }
        }
    }
    let med = |n: usize, tool: Tool| {
        rows.iter()
            .find(|r| r.n == n)
            .and_then(|r| match tool {
                Tool::VeAlloc => r.sqlite,
                Tool::Etcd => r.etcd,
                Tool::HostLocal => r.hl,
            })
            .map(|t| t.0.as_secs_f64())
    };
    let flat = |sizes: &[usize], tool: Tool| {
        let (lo, hi) = (sizes.iter().min()?, sizes.iter().max()?);
        Some((*lo, *hi, med(*hi, tool)? / med(*lo, tool)?))
    };
    if let Some((lo, hi, x)) = flat(&sizes, Tool::VeAlloc) {
        let _ = writeln!(
            table,
            "flatness: ve-alloc at {hi} leases costs {x:.2}x its cost at {lo} (target <= 1.5x)"
        );
    }
    for &n in &hl_sizes {
        if let (Some(va), Some(hl)) = (med(n, Tool::VeAlloc), med(n, Tool::HostLocal)) {
            let _ = writeln!(
                table,
                "speed-up: ve-alloc is {:.2}x faster than host-local at {n} leases{}",
                hl / va,
                if n == 1000 { " (target >= 2x)" } else { "" }
            );
        }
    }
    let mut fleet_csv = String::from("metric,value,unit\n");
    if let Some(f) = &fleet {
        for &n in &fleet_sizes {
            if let (Some(e), Some(s)) = (med(n, Tool::Etcd), med(n, Tool::VeAlloc)) {
                let _ = writeln!(
                    table,
                    "etcd store: alloc costs {:.2}x the SQLite store's at {n} leases{}",
                    e / s,
                    if n == 1000 { " (target <= 3x)" } else { "" }
                );
            }
        }
        if let Some((lo, hi, x)) = flat(&fleet_sizes, Tool::Etcd) {
            let _ = writeln!(
                table,
                "etcd flatness: alloc at {hi} fleet leases costs {x:.2}x its cost at {lo} \
                 (target <= 1.5x)"
            );
        }
        let mut ctl = f.etcdctl_put(runs)?;
        let before = f.members_cpu();
        // The members' CPU time counts in clock ticks (10 ms): enough requests that a
        // tick is a small part of their sum.
        let gw_runs = runs.max(300);
        let mut gw = f.gateway_put(gw_runs)?;
        let gw_cpu = f.members_cpu().saturating_sub(before) / (gw_runs as u32 + 1);
        let before = f.members_cpu();
        let mut rd = f.gateway_read(gw_runs, false)?;
        let rd_cpu = f.members_cpu().saturating_sub(before) / (gw_runs as u32 + 1);
        let before = f.members_cpu();
        let mut sr = f.gateway_read(gw_runs, true)?;
        let sr_cpu = f.members_cpu().saturating_sub(before) / (gw_runs as u32 + 1);
        let (ctl, gw, rd, sr) = (
            median_p90(&mut ctl),
            median_p90(&mut gw),
            median_p90(&mut rd),
            median_p90(&mut sr),
        );
        let _ = writeln!(
            table,
            "quorum-write floor: `etcdctl put` process {} / {} ms, one put on a kept-alive \
             gateway connection {} / {} ms (median / p90 of {runs} and {gw_runs}; {} ms of \
             etcd CPU each)",
            ms(ctl.0),
            ms(ctl.1),
            ms(gw.0),
            ms(gw.1),
            ms(gw_cpu)
        );
        let _ = writeln!(
            table,
            "  one linearizable read (a transaction of 3 ranges) on that connection {} / {} \
             ms ({} ms of etcd CPU), one serializable read {} / {} ms ({} ms): an \
             allocation's 2 serializable reads and 1 commit sent alone cost {} ms of etcd CPU",
            ms(rd.0),
            ms(rd.1),
            ms(rd_cpu),
            ms(sr.0),
            ms(sr.1),
            ms(sr_cpu),
            ms(gw_cpu + sr_cpu * 2)
        );
        let one = f.throughput("tput-1", 1, parallel, per_node, None)?;
        let three = f.throughput("tput-3", 3, parallel, per_node, None)?;
        let _ = writeln!(
            table,
            "throughput: 1 node x {parallel} allocators {:.0} allocs/s, 3 nodes x {parallel} \
             {:.0} allocs/s: {:.2}x (target >= 3x; {per_node} allocations per node)",
            one.per_second,
            three.per_second,
            three.per_second / one.per_second
        );
        for (what, t) in [("1 node ", &one), ("3 nodes", &three)] {
            let _ = writeln!(
                table,
                "  {what}: CPU per allocation {} ms in ve-alloc + {} ms in etcd; machine CPU \
                 {:.0}% busy during the round",
                ms(t.alloc_cpu),
                ms(t.etcd_cpu),
                t.machine_busy * 100.0
            );
            if let (Some(r), Some(q)) = (t.requests, t.quorum_writes) {
                let _ = writeln!(
                    table,
                    "  {what}: {r:.2} gateway requests and {q:.2} quorum writes per allocation \
                     (3 and 1 when no commit is lost)"
                );
            }
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The cheaper round's CPU per allocation (more nodes batch more in etcd): the
        // most any number of nodes could run on these cores.
        let cpu = (one.alloc_cpu + one.etcd_cpu).min(three.alloc_cpu + three.etcd_cpu);
        let cap = cores as f64 / cpu.as_secs_f64().max(1e-9);
        let _ = writeln!(
            table,
            "  at the lower of those CPU costs ({} ms per allocation), {cores} cores run at \
             most {cap:.0} allocs/s with members and nodes on one machine: {:.2}x the \
             1-node round at best, whatever the number of nodes",
            ms(cpu),
            cap / one.per_second.max(1e-9)
        );
        // The 1-node round's own share of the machine: its ve-alloc processes' and the
        // members' CPU over what the cores had (the machine's busy share also counts
        // other work).
        let share = (one.alloc_cpu + one.etcd_cpu).as_secs_f64() * one.per_second / cores as f64;
        let _ = writeln!(
            table,
            "  the 1-node round used {:.0}% of this machine's {cores} cores (ve-alloc and the \
             members; the machine was {:.0}% busy, other work included{}): 3 nodes on the \
             same cores can run at most 1/{share:.2} = {:.2}x it, whatever the design (the \
             target needs 3x: nodes and members on hosts of their own, see --node-cpu)",
            share * 100.0,
            one.machine_busy * 100.0,
            if one.machine_busy > share + 0.1 {
                ", which squeezed the round: quiet, the bound is tighter"
            } else {
                ""
            },
            1.0 / share.max(1e-9)
        );
        let floor = one.alloc_cpu + gw_cpu + sr_cpu * 2;
        let _ = writeln!(
            table,
            "  an allocation's requests one at a time (2 serializable reads, 1 commit: {} ms \
             of etcd CPU) and {} ms in ve-alloc: {cores} cores would run at most {:.0} \
             allocs/s without the batching etcd does when requests overlap",
            ms(gw_cpu + sr_cpu * 2),
            ms(one.alloc_cpu),
            cores as f64 / floor.as_secs_f64().max(1e-9)
        );
        for (metric, v, unit) in [
            ("etcdctl_put_median", ms(ctl.0), "ms"),
            ("gateway_put_median", ms(gw.0), "ms"),
            ("gateway_put_etcd_cpu", ms(gw_cpu), "ms"),
            ("gateway_read_median", ms(rd.0), "ms"),
            ("gateway_read_etcd_cpu", ms(rd_cpu), "ms"),
            ("gateway_serializable_read_median", ms(sr.0), "ms"),
            ("gateway_serializable_read_etcd_cpu", ms(sr_cpu), "ms"),
            (
                "throughput_1_node",
                format!("{:.1}", one.per_second),
                "allocs/s",
            ),
            (
                "throughput_3_nodes",
                format!("{:.1}", three.per_second),
                "allocs/s",
            ),
            ("cpu_ceiling", format!("{cap:.1}"), "allocs/s"),
            (
                "machine_busy_1_node",
                format!("{:.1}", one.machine_busy * 100.0),
                "%",
            ),
            (
                "machine_busy_3_nodes",
                format!("{:.1}", three.machine_busy * 100.0),
                "%",
            ),
            ("share_1_node", format!("{:.1}", share * 100.0), "%"),
            (
                "share_bound_ratio",
                format!("{:.2}", 1.0 / share.max(1e-9)),
                "x",
            ),
            ("cpu_per_alloc_1_node_ve_alloc", ms(one.alloc_cpu), "ms"),
            ("cpu_per_alloc_1_node_etcd", ms(one.etcd_cpu), "ms"),
            ("cpu_per_alloc_3_nodes_ve_alloc", ms(three.alloc_cpu), "ms"),
            ("cpu_per_alloc_3_nodes_etcd", ms(three.etcd_cpu), "ms"),
            ("requests_per_alloc_1_node", opt2(one.requests), "requests"),
            (
                "requests_per_alloc_3_nodes",
                opt2(three.requests),
                "requests",
            ),
            (
                "quorum_writes_per_alloc_1_node",
                opt2(one.quorum_writes),
                "writes",
            ),
            (
                "quorum_writes_per_alloc_3_nodes",
                opt2(three.quorum_writes),
                "writes",
            ),
        ] {
            let _ = writeln!(fleet_csv, "{metric},{v},{unit}");
        }
        if let Some(cores) = node_cpu {
            hosts_rounds(f, cores, parallel, per_node, &mut table, &mut fleet_csv)?;
        }
    }
    drop(fleet);
    say!("{table}");
    let dir = out_dir()?;
    std::fs::write(dir.join("alloc.csv"), csv).map_err(|e| e.to_string())?;
    if etcd {
        std::fs::write(dir.join("alloc-etcd.csv"), fleet_csv).map_err(|e| e.to_string())?;
    }
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
    Etcd {
        p: etcd::Point,
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
        let (Point::VeAlloc { next, .. }
        | Point::HostLocal { next, .. }
        | Point::Etcd { next, .. }) = self;
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
            Point::Etcd { p, .. } => p.sample(&name),
        }
    }
}

/// The machine share above which the etcd members may not have had the CPU they needed.
const KEPT_UP_BUSY: f64 = 0.95;

/// The throughput rounds again with each node in a CPU cgroup of `cores` cores (the
/// same for a node in both rounds), the members unconfined: what the design does when
/// every node has a host of its own. Printed to `table`, written to `csv`.
fn hosts_rounds(
    f: &etcd::Fleet,
    cores: f64,
    parallel: usize,
    per_node: usize,
    table: &mut String,
    csv: &mut String,
) -> Result {
    let caps = etcd::NodeCpu::new(3, cores)?;
    let one = f.throughput("hosts-1", 1, parallel, per_node, Some(&caps))?;
    let three = f.throughput("hosts-3", 3, parallel, per_node, Some(&caps))?;
    drop(caps);
    let ratio = three.per_second / one.per_second.max(1e-9);
    let _ = writeln!(
        table,
        "separate hosts, modelled (--node-cpu {cores}): each node's allocators and their \
         ve-alloc processes in a CPU cgroup of {cores} cores, the etcd members unconfined \
         (they get what is left of the machine); not the target's own round above"
    );
    let _ = writeln!(
        table,
        "  throughput: 1 node x {parallel} allocators {:.0} allocs/s, 3 nodes x {parallel} \
         {:.0} allocs/s: {ratio:.2}x ({per_node} allocations per node)",
        one.per_second, three.per_second
    );
    let margin = (cores * 0.1).max(0.02);
    let mut held = true;
    for (what, t) in [("1 node ", &one), ("3 nodes", &three)] {
        let kept_up = t.machine_busy < KEPT_UP_BUSY;
        let _ = writeln!(
            table,
            "  {what}: CPU per allocation {} ms in ve-alloc + {} ms in etcd; machine CPU \
             {:.0}% busy: the members {} (machine < {:.0}% busy)",
            ms(t.alloc_cpu),
            ms(t.etcd_cpu),
            t.machine_busy * 100.0,
            if kept_up {
                "kept up"
            } else {
                "may NOT have kept up"
            },
            KEPT_UP_BUSY * 100.0
        );
        let used: Vec<String> = t
            .node_cores
            .iter()
            .map(|c| c.map_or("-".into(), |c| format!("{c:.3}")))
            .collect();
        let over = t.node_cores.iter().flatten().any(|&c| c > cores + margin);
        held &= !over;
        let bound = node_bound(t, cores);
        let (periods, throttled) = t
            .throttled
            .iter()
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let _ = writeln!(
            table,
            "  {what}: each node used {} cores of its {cores} over the round ({}), throttled \
             in {throttled} of {periods} CFS periods",
            used.join(", "),
            if t.node_cores.iter().any(Option::is_none) {
                "quota unchecked: no cpuacct".to_string()
            } else if over {
                format!("OVER the quota + {margin:.2}: not a model of {cores}-core hosts")
            } else {
                format!("quota held, <= {cores} + {margin:.2}")
            }
        );
        let _ = writeln!(
            table,
            "  {what}: {}",
            if bound {
                "every node used at least 90% of its quota: bound by its own CPU, as a host \
                 of that size would be"
            } else {
                "a node used less than 90% of its quota: something else (the members, other \
                 work) held it back, so the ratio understates what separate hosts do"
            }
        );
    }
    if !held {
        eprintln!("bench alloc: warning: a node used more CPU than its --node-cpu quota");
    }
    let max_cores = |t: &etcd::Throughput| {
        t.node_cores
            .iter()
            .flatten()
            .fold(None, |m: Option<f64>, &c| Some(m.map_or(c, |m| m.max(c))))
            .map_or("-".into(), |c| format!("{c:.3}"))
    };
    let throttled_share = |t: &etcd::Throughput| {
        let (p, n) = t
            .throttled
            .iter()
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        format!("{:.1}", n as f64 * 100.0 / (p.max(1)) as f64)
    };
    let yes = |b: bool| (if b { "yes" } else { "no" }).to_string();
    let kept = |t: &etcd::Throughput| yes(t.machine_busy < KEPT_UP_BUSY);
    for (metric, v, unit) in [
        ("hosts_node_cpu", format!("{cores}"), "cores"),
        (
            "hosts_throughput_1_node",
            format!("{:.1}", one.per_second),
            "allocs/s",
        ),
        (
            "hosts_throughput_3_nodes",
            format!("{:.1}", three.per_second),
            "allocs/s",
        ),
        ("hosts_ratio", format!("{ratio:.2}"), "x"),
        (
            "hosts_cpu_per_alloc_1_node_ve_alloc",
            ms(one.alloc_cpu),
            "ms",
        ),
        ("hosts_cpu_per_alloc_1_node_etcd", ms(one.etcd_cpu), "ms"),
        (
            "hosts_cpu_per_alloc_3_nodes_ve_alloc",
            ms(three.alloc_cpu),
            "ms",
        ),
        ("hosts_cpu_per_alloc_3_nodes_etcd", ms(three.etcd_cpu), "ms"),
        (
            "hosts_machine_busy_1_node",
            format!("{:.1}", one.machine_busy * 100.0),
            "%",
        ),
        (
            "hosts_machine_busy_3_nodes",
            format!("{:.1}", three.machine_busy * 100.0),
            "%",
        ),
        ("hosts_members_kept_up_1_node", kept(&one), "yes/no"),
        ("hosts_members_kept_up_3_nodes", kept(&three), "yes/no"),
        (
            "hosts_node_bound_1_node",
            yes(node_bound(&one, cores)),
            "yes/no",
        ),
        (
            "hosts_node_bound_3_nodes",
            yes(node_bound(&three, cores)),
            "yes/no",
        ),
        ("hosts_node_cores_max_1_node", max_cores(&one), "cores"),
        ("hosts_node_cores_max_3_nodes", max_cores(&three), "cores"),
        ("hosts_throttled_periods_1_node", throttled_share(&one), "%"),
        (
            "hosts_throttled_periods_3_nodes",
            throttled_share(&three),
            "%",
        ),
    ] {
        let _ = writeln!(csv, "{metric},{v},{unit}");
    }
    Ok(())
}

/// Whether every node of a capped round used at least 90% of its `cores`: the round was
/// bound by the nodes' own CPU, as the model means it to be.
fn node_bound(t: &etcd::Throughput, cores: f64) -> bool {
    !t.node_cores.is_empty()
        && t.node_cores
            .iter()
            .all(|c| c.is_some_and(|c| c >= 0.9 * cores))
}

/// A per-allocation figure with two decimals, `-` when it was not measured.
fn opt2(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.2}"))
}
