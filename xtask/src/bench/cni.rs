//! `cargo xtask bench cni`: our CNI chain (ve-link with ve-alloc as IPAM, ve-nat with
//! one port mapping, nm-unmanage) against Debian's reference chain (ptp with host-local
//! and ipMasq, portmap), both driven exactly as a runtime drives a conflist
//! (testbed::cni: `CNI_*` environment, each plugin's configuration on stdin, the
//! previous result chained, DEL in reverse order with the cached result).
//!
//! Each chain gets a sandbox host namespace of its own (so one chain's rules never slow
//! the other down), where its plugins are started directly (setns between fork and
//! exec, as a runtime on that host starts them). Container namespaces are made before
//! their ADD and deleted after their DEL, untimed. Containers are added in lockstep
//! (container i of both chains before container i+1 of either, the order alternating)
//! up to N, then deleted from the last to the first, so the ~Nth window of DEL is taken
//! with N containers up, as in `bench pipeline`. Rules and set/map elements are counted
//! in each host namespace after 0, 1 and N containers and after the last DEL.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use testbed::{
    cni::{self, Attachment, ChainRun, Conflist, Reply},
    Netns, Sandbox, TempDir,
};

use super::{
    pipeline::{load_average, windows, Window},
    stats::{self, ip_batch, machine, median_p90},
};
use crate::util::{self, Result};

const USAGE: &str = "\
usage: cargo xtask bench cni [--containers N] [--tools DIR] [--podman-runs K]

  --containers N  containers per chain (default 1000); ADD and DEL medians for the
                  1st-10th, ~100th, ~500th and ~Nth container
  --tools DIR     the tools in DIR instead of release builds
  --podman-runs K timed `podman run --rm ... true` per network after the chains
                  (default 10; 0 leaves podman out)

Our chain: ve-link (IPAM ve-alloc), ve-nat (one portMapping per container),
nm-unmanage (a private bus with no network manager on it). Reference: Debian's
containernetworking-plugins, ptp (IPAM host-local, ipMasq) and portmap. Needs root;
installs iproute2, nftables, iptables, dbus and containernetworking-plugins when
missing. Then podman 4.3 (CNI backend) runs a container on our conflist, on the
reference one and with `--network none`: each network's share of the run (target: ours
at most half the reference's); it needs podman and debootstrap. Writes target/bench/cni.txt and cni.csv (one row per call).";

/// Issue 15's targets at the ~Nth container: reference / ours.
const ADD_TARGET: f64 = 5.0;
const DEL_TARGET: f64 = 2.0;

const REFERENCE_DIR: &str = "/usr/lib/cni";
const OUR_TOOLS: [&str; 4] = ["ve-link", "ve-alloc", "ve-nat", "nm-unmanage"];

pub(super) struct Opts {
    containers: usize,
    tools: Option<PathBuf>,
    podman_runs: usize,
}

pub(super) fn parse(args: &[String]) -> Result<Option<Opts>> {
    if stats::refuse_unknown(
        "bench cni",
        args,
        &["--containers", "--tools", "--podman-runs"],
        USAGE,
    )? {
        return Ok(None);
    }
    let containers = match stats::opt::<usize>(args, "--containers")? {
        Some(0) => return Err("bench cni: --containers needs a positive number".into()),
        Some(n) => n,
        None => 1000,
    };
    Ok(Some(Opts {
        containers,
        tools: stats::opt::<String>(args, "--tools")?.map(PathBuf::from),
        podman_runs: stats::opt::<usize>(args, "--podman-runs")?.unwrap_or(10),
    }))
}

/// One chain in its host namespace.
struct Chain {
    label: &'static str,
    list: Conflist,
    /// CNI_PATH.
    path: PathBuf,
    host: Netns,
    /// Added to a clean environment for every plugin (the sandbox's state paths).
    env: Vec<(&'static str, String)>,
    /// Container namespaces are `<ns_prefix><i>`.
    ns_prefix: String,
    adds: Vec<ChainRun>,
    dels: Vec<ChainRun>,
    results: Vec<Value>,
    counts: Vec<(&'static str, Counts)>,
}

/// Container `i`'s attachment (0-based): a 64-hex ID, namespace `<ns_prefix><i>`, and
/// host port 20000 + i mapped to its port 80.
fn attachment(path: &Path, ns_prefix: &str, i: usize) -> Attachment {
    Attachment {
        path: path.display().to_string(),
        container_id: cni::container_id(u32::try_from(i + 1).unwrap_or(u32::MAX)),
        netns: format!("/run/netns/{ns_prefix}{i}"),
        ifname: "eth0".into(),
        args: format!("IgnoreUnknown=1;K8S_POD_NAME=c{i}"),
        runtime: json!({"portMappings": [
            {"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"}]}),
    }
}

/// DEL runs are pushed last container first: by container number again.
fn in_order(dels: &[ChainRun]) -> Vec<&ChainRun> {
    dels.iter().rev().collect()
}

impl Chain {
    fn attachment(&self, i: usize) -> Attachment {
        attachment(&self.path, &self.ns_prefix, i)
    }

    fn call(&self, a: &Attachment, plugin: &str, verb: &str, conf: &Value) -> Result<Reply> {
        let mut c = cni::command_in(&self.host.path(), &self.path.join(plugin))
            .map_err(|e| format!("{plugin}: {e}"))?;
        cni::clean_env(&mut c).envs(self.env.iter().map(|(k, v)| (k, v)));
        cni::invoke(c, verb, conf, &a.env())
    }

    fn add(&mut self, i: usize) -> Result {
        let ns = format!("{}{i}", self.ns_prefix);
        ip_batch(
            &[],
            &format!("netns add {ns}\nnetns exec {ns} ip link set lo up\n"),
        )?;
        let a = self.attachment(i);
        let run = self
            .list
            .add(&a, |p, v, c| self.call(&a, p, v, c))
            .map_err(|e| format!("{}: container {}: {e}", self.label, i + 1))?;
        self.results.push(run.result.clone());
        self.adds.push(run);
        Ok(())
    }

    fn del(&mut self, i: usize) -> Result {
        let a = self.attachment(i);
        let run = self
            .list
            .del(&a, &self.results[i], |p, v, c| self.call(&a, p, v, c))
            .map_err(|e| format!("{}: container {}: {e}", self.label, i + 1))?;
        self.dels.push(run);
        ip_batch(&[], &format!("netns del {}{i}\n", self.ns_prefix))
    }

    fn count(&mut self, when: &'static str) -> Result {
        let c = Counts::take(&self.host)?;
        self.counts.push((when, c));
        Ok(())
    }
}

/// What the firewall holds in a host namespace.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counts {
    /// Rules in the whole nf_tables ruleset (iptables-nft's tables included).
    nft_rules: usize,
    /// Of those, rules iptables-nft and ip6tables-nft list.
    iptables_nft: usize,
    /// Rules of the legacy (x_tables) backend.
    iptables_legacy: usize,
    /// Elements of every set and map.
    elements: usize,
}

impl Counts {
    fn take(host: &Netns) -> Result<Counts> {
        let out = run_in(host, "nft", &["-j", "list", "ruleset"])?;
        let (nft_rules, elements) = if out.trim().is_empty() {
            (0, 0)
        } else {
            let v: Value =
                serde_json::from_str(&out).map_err(|e| format!("nft -j list ruleset: {e}"))?;
            ruleset_counts(&v)
        };
        let dash_a = |t: &str| t.lines().filter(|l| l.starts_with("-A ")).count();
        let mut iptables_nft = 0;
        for save in ["iptables-nft-save", "ip6tables-nft-save"] {
            iptables_nft += dash_a(&run_in(host, save, &[])?);
        }
        // Without the x_tables module loaded nothing can be there; reading would load it.
        let mut iptables_legacy = 0;
        if Path::new("/proc/net/ip_tables_names").exists() {
            for save in ["iptables-legacy-save", "ip6tables-legacy-save"] {
                iptables_legacy += run_in(host, save, &[]).map_or(0, |t| dash_a(&t));
            }
        }
        Ok(Counts {
            nft_rules,
            iptables_nft,
            iptables_legacy,
            elements,
        })
    }
}

/// Rules and set/map elements in `nft -j list ruleset` output.
fn ruleset_counts(v: &Value) -> (usize, usize) {
    let objs = v["nftables"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let rules = objs.iter().filter(|o| o.get("rule").is_some()).count();
    let elements = objs
        .iter()
        .filter_map(|o| o.get("set").or_else(|| o.get("map")))
        .filter_map(|s| s["elem"].as_array())
        .map(Vec::len)
        .sum();
    (rules, elements)
}

/// `program ARGS` in `host` (entered directly), its stdout; fail with its stderr.
fn run_in(host: &Netns, program: &str, args: &[&str]) -> Result<String> {
    let mut c =
        cni::command_in(&host.path(), Path::new(program)).map_err(|e| format!("{program}: {e}"))?;
    let out = c
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?} in {}: {}: {}",
            host.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A host namespace with its uplink `up0` (up, so ve-nat has its external interface).
fn host_ns(sb: &mut Sandbox, role: &str) -> Result<Netns> {
    let host = sb.netns(role);
    ip_batch(
        &["-n", host.name()],
        "link add up0 type veth peer name up1\nlink set up0 up\nlink set up1 up\n",
    )?;
    Ok(host)
}

fn ours(sb: &mut Sandbox, work: &Path, bin: &Path) -> Result<(Chain, testbed::NetworkManager)> {
    let host = host_ns(sb, "ours")?;
    // CNI_PATH as installed: a directory of symlinks to the tools.
    let path = work.join("ours-bin");
    std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    for t in OUR_TOOLS {
        std::os::unix::fs::symlink(bin.join(t), path.join(t))
            .map_err(|e| format!("{}: {e}", path.join(t).display()))?;
    }
    // A host with a system bus and no network manager on it: nm-unmanage's
    // --if-running path connects, finds none and passes the result on.
    let bus = testbed::nm::Setup::new(work.join("bus")).bus(&host)?;
    let list = Conflist {
        name: "vebench".into(),
        version: "1.0.0".into(),
        plugins: vec![
            json!({"type": "ve-link", "ipam": {"type": "ve-alloc", "pool": "10.233.0.0/16",
                   "store": work.join("ve-alloc")}}),
            json!({"type": "ve-nat", "external": "up0", "backend": "nftables",
                   "capabilities": {"portMappings": true}}),
            json!({"type": "nm-unmanage", "networkdDir": work.join("networkd")}),
        ],
    };
    let env = vec![
        ("DBUS_SYSTEM_BUS_ADDRESS", bus.bus_address()),
        // Never the machine's /run/ve-nat lock nor its /var/lib/ve-nat record.
        (
            "VE_NAT_LOCK_DIR",
            work.join("ve-nat-lock").display().to_string(),
        ),
        (
            "VE_NAT_STATE_DIR",
            work.join("ve-nat-state").display().to_string(),
        ),
    ];
    let prefix = format!("{}-o", sb.prefix());
    Ok((
        chain(
            "ours: ve-link + ve-alloc, ve-nat, nm-unmanage",
            list,
            path,
            host,
            env,
            prefix,
        ),
        bus,
    ))
}

fn reference(sb: &mut Sandbox, work: &Path) -> Result<Chain> {
    let host = host_ns(sb, "ref")?;
    let list = Conflist {
        name: "vebench".into(),
        version: "1.0.0".into(),
        plugins: vec![
            json!({"type": "ptp", "ipMasq": true, "ipam": {"type": "host-local",
                   "ranges": [[{"subnet": "10.240.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}],
                   "dataDir": work.join("host-local")}}),
            json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
        ],
    };
    let prefix = format!("{}-r", sb.prefix());
    Ok(chain(
        "reference: ptp + host-local (ipMasq), portmap",
        list,
        PathBuf::from(REFERENCE_DIR),
        host,
        Vec::new(),
        prefix,
    ))
}

fn chain(
    label: &'static str,
    list: Conflist,
    path: PathBuf,
    host: Netns,
    env: Vec<(&'static str, String)>,
    ns_prefix: String,
) -> Chain {
    Chain {
        label,
        list,
        path,
        host,
        env,
        ns_prefix,
        adds: Vec::new(),
        dels: Vec::new(),
        results: Vec::new(),
        counts: Vec::new(),
    }
}

/// Container namespaces left when a run stops half-way: deleted on drop.
struct Leftovers(Vec<String>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/run/netns") else {
            return;
        };
        let script: String = dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| self.0.iter().any(|p| n.starts_with(p.as_str())))
            .map(|n| format!("netns del {n}\n"))
            .collect();
        if !script.is_empty() {
            let _ = ip_batch(&[], &script);
        }
    }
}

pub fn run(args: &[String]) -> Result {
    let Some(opts) = parse(args)? else {
        sayln!("{USAGE}");
        return Ok(());
    };
    if !util::is_root() {
        return Err("bench cni: needs root (it creates network namespaces)".into());
    }
    util::ensure_debian_packages(&[
        "iproute2",
        "nftables",
        "iptables",
        "dbus",
        "containernetworking-plugins",
    ])?;
    let bin = match &opts.tools {
        Some(dir) => dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))?,
        None => {
            let mut c = util::cargo();
            c.args(["build", "--release", "--quiet"]);
            for t in OUR_TOOLS {
                c.args(["-p", t]);
            }
            util::run(&mut c)?;
            util::root().join("target/release")
        }
    };
    let n = opts.containers;
    let load = load_average();
    eprintln!(
        "bench cni: {n} containers per chain on {}; load {load}",
        machine()
    );

    let mut sb = Sandbox::new();
    crate::guard::namespaces(sb.prefix());
    let work = TempDir::new("bench-cni");
    crate::guard::dir(work.path());
    let (ours, _bus) = ours(&mut sb, work.path(), &bin)?;
    let mut chains = [ours, reference(&mut sb, work.path())?];
    let _leftovers = Leftovers(chains.iter().map(|c| c.ns_prefix.clone()).collect());

    let t = Instant::now();
    for c in chains.iter_mut() {
        c.count("0")?;
    }
    for i in 0..n {
        for j in 0..chains.len() {
            chains[(i + j) % 2].add(i)?;
        }
        if i == 0 {
            for c in chains.iter_mut() {
                c.count("1")?;
            }
        }
        if (i + 1) % 100 == 0 {
            eprintln!(
                "bench cni: {} containers per chain, {:.0} s",
                i + 1,
                t.elapsed().as_secs_f64()
            );
        }
    }
    for c in chains.iter_mut() {
        c.count("N")?;
    }
    for i in (0..n).rev() {
        for j in 0..chains.len() {
            chains[(i + j) % 2].del(i)?;
        }
    }
    for c in chains.iter_mut() {
        c.count("after DEL")?;
    }
    eprintln!("bench cni: done in {:.0} s", t.elapsed().as_secs_f64());

    let mut text = report(&chains, n, &load);
    if opts.podman_runs > 0 {
        eprintln!("bench cni: podman, {} runs per network", opts.podman_runs);
        let row = super::cni_podman::podman_row(&bin, opts.podman_runs)?;
        text.push('\n');
        text.push_str(&row.report());
        text.push('\n');
    }
    say!("{text}");
    let dir = stats::out_dir()?;
    std::fs::write(dir.join("cni.txt"), &text).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("cni.csv"), csv(&chains)).map_err(|e| e.to_string())?;
    eprintln!("bench cni: wrote {}/cni{{.txt,.csv}}", dir.display());
    Ok(())
}

/// Median and p90 of the chain totals of containers `w.lo..=w.hi`.
fn window(runs: &[&ChainRun], w: &Window) -> Option<(Duration, Duration)> {
    let mut v: Vec<Duration> = runs
        .get(w.lo - 1..w.hi)?
        .iter()
        .map(|r| r.total())
        .collect();
    Some(median_p90(&mut v))
}

/// Each plugin's median over the window, in chain order.
fn parts(runs: &[&ChainRun], w: &Window) -> Vec<(String, Duration)> {
    let Some(part) = runs.get(w.lo - 1..w.hi) else {
        return Vec::new();
    };
    let names: Vec<String> = part
        .first()
        .map(|r| r.calls.iter().map(|c| c.0.clone()).collect())
        .unwrap_or_default();
    names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let v: Vec<Duration> = part
                .iter()
                .filter_map(|r| r.calls.get(k))
                .map(|c| c.1)
                .collect();
            (name.clone(), stats::median(v))
        })
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// A row of the firewall table: its name and what it counts.
type Field = (&'static str, fn(&Counts) -> usize);

fn report(chains: &[Chain; 2], n: usize, load: &str) -> String {
    let ws = windows(n);
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\nCNI chains called as a runtime calls a conflist, whole chain per container, ms, \
         median / p90 over the window; {n} containers per chain\n{}; load before the run {load}\n",
        machine()
    );
    let head: Vec<String> = ws
        .iter()
        .map(|w| format!("{} ({}-{})", w.label, w.lo, w.hi))
        .collect();
    let mut ratios = Vec::new();
    for verb in ["ADD", "DEL"] {
        let runs: Vec<Vec<&ChainRun>> = chains
            .iter()
            .map(|c| {
                if verb == "ADD" {
                    c.adds.iter().collect()
                } else {
                    in_order(&c.dels)
                }
            })
            .collect();
        let _ = writeln!(r, "| {verb} | {} |", head.join(" | "));
        let _ = writeln!(r, "|---|{}", "---|".repeat(ws.len()));
        for (c, runs) in chains.iter().zip(&runs) {
            let cells: Vec<String> = ws
                .iter()
                .map(|w| {
                    window(runs, w).map_or("-".into(), |(m, p)| format!("{} / {}", ms(m), ms(p)))
                })
                .collect();
            let _ = writeln!(r, "| {} | {} |", c.label, cells.join(" | "));
        }
        let row: Vec<Option<f64>> = ws
            .iter()
            .map(|w| {
                let ours = window(&runs[0], w)?.0.as_secs_f64();
                let refr = window(&runs[1], w)?.0.as_secs_f64();
                (ours > 0.0).then(|| refr / ours)
            })
            .collect();
        let cells: Vec<String> = row
            .iter()
            .map(|x| x.map_or("-".into(), |x| format!("{x:.1}x")))
            .collect();
        let _ = writeln!(r, "| reference / ours | {} |\n", cells.join(" | "));
        if let Some(last) = ws.last() {
            for (c, runs) in chains.iter().zip(&runs) {
                let p: Vec<String> = parts(runs, last)
                    .iter()
                    .map(|(name, d)| format!("{name} {}", ms(*d)))
                    .collect();
                let _ = writeln!(
                    r,
                    "{verb} per plugin at {}: {}: {}",
                    last.label,
                    c.label,
                    p.join(", ")
                );
            }
            let _ = writeln!(r);
        }
        ratios.push(row.last().copied().flatten());
    }

    let _ = writeln!(
        r,
        "| firewall, {n} containers | after 0 | after 1st | after {n} | after all DEL | per container (Nth - 1st) / (N - 1) |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|");
    let mut ours_per = None;
    for (k, c) in chains.iter().enumerate() {
        let at = |when: &str| c.counts.iter().find(|x| x.0 == when).map(|x| x.1);
        let fields: [Field; 4] = [
            ("nft rules (all tables)", |c| c.nft_rules),
            ("of which iptables-nft", |c| c.iptables_nft),
            ("iptables-legacy rules", |c| c.iptables_legacy),
            ("set/map elements", |c| c.elements),
        ];
        for (what, f) in fields {
            let v: Vec<Option<usize>> = ["0", "1", "N", "after DEL"]
                .iter()
                .map(|w| at(w).map(|x| f(&x)))
                .collect();
            let per = match (v[1], v[2]) {
                (Some(a), Some(b)) if n > 1 => Some((b as f64 - a as f64) / (n - 1) as f64),
                _ => None,
            };
            if k == 0 && what.starts_with("nft rules") {
                ours_per = per;
            }
            let cells: Vec<String> = v
                .iter()
                .map(|x| x.map_or("-".into(), |x| x.to_string()))
                .collect();
            let _ = writeln!(
                r,
                "| {}: {what} | {} | {} |",
                c.label.split(':').next().unwrap_or(""),
                cells.join(" | "),
                per.map_or("-".into(), |p| format!("{p:.2}"))
            );
        }
    }

    let verdict = |x: Option<f64>, want: f64| match x {
        Some(x) if x >= want => format!("{x:.1}x, met"),
        Some(x) => format!("{x:.1}x, MISSED"),
        None => "not measured".into(),
    };
    let last = ws.last().map_or(String::new(), |w| w.label.clone());
    let _ = writeln!(r, "\nTargets (medians at the {last} container; issue 15):");
    let _ = writeln!(
        r,
        "- ADD at least {ADD_TARGET}x faster than the reference: {}",
        verdict(ratios[0], ADD_TARGET)
    );
    let _ = writeln!(
        r,
        "- DEL at least {DEL_TARGET}x faster: {}",
        verdict(ratios.get(1).copied().flatten(), DEL_TARGET)
    );
    let _ = writeln!(
        r,
        "- no nft rule added per container by ours: {}",
        match ours_per {
            Some(0.0) => "0 per container, met".to_string(),
            Some(p) => format!("{p:.2} per container, MISSED"),
            None => "not measured (N = 1)".into(),
        }
    );
    let _ = writeln!(r, "\nload after the run: {}", load_average());
    r
}

/// `chain,container,verb,plugin,ns`: every call, and each chain run's total.
fn csv(chains: &[Chain; 2]) -> String {
    let mut s = String::from("chain,container,verb,plugin,ns\n");
    for (key, c) in ["ours", "reference"].iter().zip(chains) {
        for (verb, runs) in [("ADD", c.adds.iter().collect()), ("DEL", in_order(&c.dels))] {
            for (i, run) in runs.iter().enumerate() {
                for (p, d) in run.calls.iter() {
                    let _ = writeln!(s, "{key},{},{verb},{p},{}", i + 1, d.as_nanos());
                }
                let _ = writeln!(s, "{key},{},{verb},total,{}", i + 1, run.total().as_nanos());
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_are_checked_before_anything_runs() {
        assert!(parse(&args(&["--help"])).unwrap().is_none());
        let o = parse(&args(&["--containers", "30"])).unwrap().unwrap();
        assert_eq!(o.containers, 30);
        assert_eq!(parse(&[]).unwrap().unwrap().containers, 1000);
        assert_eq!(parse(&[]).unwrap().unwrap().podman_runs, 10);
        let o = parse(&args(&["--podman-runs", "0"])).unwrap().unwrap();
        assert_eq!(o.podman_runs, 0);
        assert!(parse(&args(&["--podman-runs", "x"])).is_err());
        assert!(parse(&args(&["--containers", "0"])).is_err());
        assert!(parse(&args(&["--containers", "x"])).is_err());
        assert!(parse(&args(&["--bogus"])).is_err());
    }

    #[test]
    fn rules_and_elements_are_counted_from_nft_json() {
        let v = json!({"nftables": [
            {"metainfo": {}},
            {"table": {"family": "inet", "name": "t"}},
            {"chain": {"family": "inet", "table": "t", "name": "c"}},
            {"rule": {"family": "inet", "table": "t", "chain": "c"}},
            {"rule": {"family": "inet", "table": "t", "chain": "c"}},
            {"map": {"name": "m", "elem": [[1, 2], [3, 4]]}},
            {"set": {"name": "s", "elem": [5]}},
            {"set": {"name": "empty"}}
        ]});
        assert_eq!(ruleset_counts(&v), (2, 3));
    }

    #[test]
    fn deletes_are_reported_by_container_number() {
        let run = |ms: u64| ChainRun {
            calls: vec![("p".into(), Duration::from_millis(ms))],
            result: Value::Null,
        };
        // Deleted last first: container 2, then 1.
        let dels = vec![run(2), run(1)];
        let totals: Vec<u128> = in_order(&dels)
            .iter()
            .map(|r| r.total().as_millis())
            .collect();
        assert_eq!(totals, [1, 2]);
        let a = attachment(Path::new("/bin"), "p-", 4);
        assert_eq!(a.netns, "/run/netns/p-4");
        assert_eq!(a.runtime["portMappings"][0]["hostPort"], 20004);
        assert_eq!(a.container_id.len(), 64);
    }
}
