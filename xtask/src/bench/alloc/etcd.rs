//! `bench alloc`'s etcd rows: ve-alloc on its etcd store, a real 3-member etcd cluster
//! (testbed::etcd) in sandbox namespaces, every process started from a node namespace
//! with nothing in between (the spawning thread has entered the namespace).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use testbed::etcd::Cluster;

use crate::{bench::stats::timed, util::Result};

/// Fleet nodes that hold the fleet's leases (besides the measured node, which holds
/// only what it allocates itself); each is filled by one thread.
pub const FILL_NODES: usize = 4;
/// Names per `ve-alloc alloc --json NAME...` while filling: one etcd transaction, which
/// etcd caps at 128 operations (3 puts and about 3 compares per name).
const FILL_BATCH: usize = 32;

/// The cluster and the release binary.
pub struct Fleet {
    pub cluster: Cluster,
    bin: PathBuf,
}

/// `ve-alloc` with the etcd store at `url` as node `node`.
fn va(bin: &Path, url: &str, node: &str, addr: &str) -> Command {
    let mut c = Command::new(bin);
    c.env("VE_ALLOC_STORE", url)
        .env("VE_ALLOC_NODE", node)
        .env("VE_ALLOC_NODE_ADDRESS", addr)
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .env_remove("VE_ALLOC_POOL")
        .env_remove("VE_ALLOC_POOL6");
    c
}

/// Run `f` on a thread inside the network namespace at `ns` (its children start there).
fn in_ns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    testbed::in_netns(ns, f).map_err(|e| format!("entering {}: {e}", ns.display()))?
}

impl Fleet {
    /// Start 3 members and 3 node namespaces; registered with the interrupt guard.
    pub fn start(bin: &Path) -> Result<Fleet> {
        let t = Instant::now();
        let cluster = Cluster::start(3, 3)?;
        crate::guard::namespaces(cluster.prefix());
        crate::guard::dir(cluster.dir());
        eprintln!(
            "bench alloc: etcd cluster of 3 members up in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        Ok(Fleet {
            cluster,
            bin: bin.to_path_buf(),
        })
    }

    fn url(&self, prefix: &str) -> String {
        self.cluster.url(prefix)
    }

    /// Fill the store under `prefix` with `n` leases held by [`FILL_NODES`] other nodes,
    /// through `ve-alloc alloc --json` of [`FILL_BATCH`] names per process, all nodes at
    /// once (from node namespace 2). Returns how long it took.
    pub fn fill(&self, prefix: &str, n: usize) -> Result<Duration> {
        let t = Instant::now();
        let ns = self.cluster.nodes[1].ns.path();
        let addr = self.cluster.nodes[1].addr.clone();
        let url = self.url(prefix);
        let results: Vec<Result> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..FILL_NODES)
                .map(|f| {
                    let (ns, url, addr, bin) =
                        (ns.clone(), url.clone(), addr.clone(), self.bin.clone());
                    s.spawn(move || {
                        // Node f holds leases f, f + FILL_NODES, ...
                        let names: Vec<String> = (f..n)
                            .step_by(FILL_NODES)
                            .map(|i| format!("f{i}"))
                            .collect();
                        let node = format!("fleet-{f}");
                        in_ns(&ns, move || {
                            for batch in names.chunks(FILL_BATCH) {
                                timed(
                                    va(&bin, &url, &node, &addr)
                                        .args(["--wait", "30", "alloc", "--json"])
                                        .args(batch),
                                    None,
                                )?;
                            }
                            Ok(())
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("fill thread panicked".into()))
                })
                .collect()
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(t.elapsed())
    }

    /// A measurement point on node 1 under `prefix`.
    pub fn point(&self, prefix: &str) -> Point {
        let n = &self.cluster.nodes[0];
        Point {
            bin: self.bin.clone(),
            ns: n.ns.path(),
            url: self.url(prefix),
            node: n.name.clone(),
            addr: n.addr.clone(),
        }
    }

    /// `etcdctl put` as a process from node 1, `runs` times: the quorum-write floor of a
    /// per-process client.
    pub fn etcdctl_put(&self, runs: usize) -> Result<Vec<Duration>> {
        let ns = self.cluster.nodes[0].ns.path();
        let endpoints = self.cluster.endpoints();
        in_ns(&ns, move || {
            (0..runs)
                .map(|i| {
                    timed(
                        Command::new("etcdctl")
                            .env("ETCDCTL_API", "3")
                            .arg(format!("--endpoints={endpoints}"))
                            .args(["put", "/floor/etcdctl", &i.to_string()]),
                        None,
                    )
                })
                .collect()
        })
    }

    /// One `PUT` per request over one kept-alive connection to the gateway of the first
    /// endpoint (the one ve-alloc talks to first), `runs` times, after one untimed.
    pub fn gateway_put(&self, runs: usize) -> Result<Vec<Duration>> {
        // "/floor/gateway" and a value, base64 as the gateway takes bytes.
        self.gateway_calls(runs, "/v3/kv/put", |i| {
            format!(
                r#"{{"key":"L2Zsb29yL2dhdGV3YXk=","value":"{}"}}"#,
                ["MA==", "MQ=="][i % 2]
            )
        })
    }

    /// One read-only transaction of three ranges per request, as [`Self::gateway_put`]
    /// does its puts: linearizable (as `show` and `list` read), or serializable (as
    /// the first attempt of an allocation reads: the member answers without the leader).
    pub fn gateway_read(&self, runs: usize, serializable: bool) -> Result<Vec<Duration>> {
        // Three ranges of "/floor/gateway".
        let range = if serializable {
            r#"{"request_range":{"key":"L2Zsb29yL2dhdGV3YXk=","serializable":true}}"#
        } else {
            r#"{"request_range":{"key":"L2Zsb29yL2dhdGV3YXk="}}"#
        };
        self.gateway_calls(runs, "/v3/kv/txn", move |_| {
            format!(r#"{{"compare":[],"success":[{range},{range},{range}]}}"#)
        })
    }

    /// `POST path` with `body(i)`, `runs` timed times after one untimed, over one
    /// kept-alive connection to the first endpoint's gateway, from node 1.
    fn gateway_calls(
        &self,
        runs: usize,
        path: &'static str,
        body: impl Fn(usize) -> String + Send + 'static,
    ) -> Result<Vec<Duration>> {
        let ns = self.cluster.nodes[0].ns.path();
        let ep = self.cluster.members[0].endpoint();
        in_ns(&ns, move || {
            let s = TcpStream::connect(&ep).map_err(|e| format!("connecting {ep}: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let mut r = BufReader::new(s);
            let mut out = Vec::with_capacity(runs);
            for i in 0..=runs {
                let body = body(i);
                let req = format!(
                    "POST {path} HTTP/1.1\r\nHost: {ep}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let t = Instant::now();
                r.get_mut()
                    .write_all(req.as_bytes())
                    .map_err(|e| format!("gateway {path}: {e}"))?;
                let status = read_response(&mut r).map_err(|e| format!("gateway {path}: {e}"))?;
                let d = t.elapsed();
                if status != 200 {
                    return Err(format!("gateway {path}: HTTP {status}"));
                }
                if i > 0 {
                    out.push(d);
                }
            }
            Ok(out)
        })
    }

    /// CPU time the etcd members have used so far.
    pub fn members_cpu(&self) -> Duration {
        self.cluster
            .members
            .iter()
            .flat_map(|m| pids_in(m.ns.name()))
            .map(cpu_of)
            .sum()
    }

    /// The members' request counters: gateway requests the members served (`Range` and
    /// `Txn` calls, summed over members) and quorum writes (proposals committed, the
    /// highest count of any member, as each member commits every one). None when a
    /// member's `/metrics` could not be read.
    pub fn counters(&self) -> Option<(u64, u64)> {
        self.cluster.counters().ok()
    }

    /// Allocations per second of `nodes` nodes (prefix `prefix`, empty at the start),
    /// `parallel` allocator threads per node, `per_node` allocations per node, all at
    /// once; each allocation is one `ve-alloc alloc NAME` process. With the CPU time
    /// the allocations and the etcd members used, to tell a CPU-bound run. With `caps`,
    /// node `i`'s allocators (and so their processes) run in its CPU cgroup.
    pub fn throughput(
        &self,
        prefix: &str,
        nodes: usize,
        parallel: usize,
        per_node: usize,
        caps: Option<&NodeCpu>,
    ) -> Result<Throughput> {
        let url = self.url(prefix);
        let counters0 = self.counters();
        let usage = || -> Vec<Option<Duration>> {
            (0..nodes).map(|i| caps.and_then(|c| c.usage(i))).collect()
        };
        let throttled = || -> Vec<(u64, u64)> {
            (0..nodes)
                .filter_map(|i| caps.map(|c| c.throttled(i)))
                .collect()
        };
        let (usage0, throttled0) = (usage(), throttled());
        let (etcd0, children0, machine0) = (self.members_cpu(), children_cpu(), machine_cpu());
        let t = Instant::now();
        let results: Vec<Result> = std::thread::scope(|s| {
            let mut handles = Vec::new();
            for (i, node) in self.cluster.nodes[..nodes].iter().enumerate() {
                let next = Arc::new(AtomicUsize::new(0));
                let tasks = caps.map(|c| c.tasks(i));
                for _ in 0..parallel {
                    let (next, url, bin) = (next.clone(), url.clone(), self.bin.clone());
                    let (ns, name, addr) = (node.ns.path(), node.name.clone(), node.addr.clone());
                    let tasks = tasks.clone();
                    handles.push(s.spawn(move || {
                        in_ns(&ns, move || {
                            if let Some(t) = &tasks {
                                join_cgroup(t)?;
                            }
                            loop {
                                let k = next.fetch_add(1, Ordering::SeqCst);
                                if k >= per_node {
                                    return Ok(());
                                }
                                timed(
                                    va(&bin, &url, &name, &addr).args([
                                        "--wait",
                                        "30",
                                        "alloc",
                                        &format!("{name}-{k}"),
                                    ]),
                                    None,
                                )?;
                            }
                        })
                    }));
                }
            }
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("allocator thread panicked".into()))
                })
                .collect()
        });
        let took = t.elapsed();
        let node_cores = usage0
            .iter()
            .zip(usage())
            .map(|(a, b)| Some(b?.saturating_sub((*a)?).as_secs_f64() / took.as_secs_f64()))
            .collect();
        let throttled = throttled0
            .iter()
            .zip(throttled())
            .map(|(a, b)| (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)))
            .collect();
        let n = (nodes * per_node) as u32;
        let (busy, total) = machine_cpu();
        let per_alloc = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / f64::from(n);
        let counts = match (counters0, self.counters()) {
            (Some((r0, p0)), Some((r1, p1))) => Some((per_alloc(r0, r1), per_alloc(p0, p1))),
            _ => None,
        };
        let tp = Throughput {
            per_second: f64::from(n) / took.as_secs_f64(),
            alloc_cpu: children_cpu().saturating_sub(children0) / n,
            etcd_cpu: self.members_cpu().saturating_sub(etcd0) / n,
            machine_busy: (busy - machine0.0) as f64 / ((total - machine0.1).max(1)) as f64,
            requests: counts.map(|c| c.0),
            quorum_writes: counts.map(|c| c.1),
            node_cores,
            throttled,
        };
        results.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(tp)
    }
}

/// One throughput round's result.
pub struct Throughput {
    pub per_second: f64,
    /// CPU time per allocation of the ve-alloc processes (user + system).
    pub alloc_cpu: Duration,
    /// CPU time per allocation of the three etcd members.
    pub etcd_cpu: Duration,
    /// The share of the machine's CPU time that was busy during the round (any
    /// process's, also other work's).
    pub machine_busy: f64,
    /// Gateway requests per allocation (three when no commit is lost).
    pub requests: Option<f64>,
    /// Quorum writes per allocation (one when no commit is lost: a commit that loses
    /// its compare is a quorum write too, plus one per block claimed).
    pub quorum_writes: Option<f64>,
    /// With CPU cgroups: each node's CPU time over the round's wall time, in cores
    /// (None without cpuacct); empty without.
    pub node_cores: Vec<Option<f64>>,
    /// With CPU cgroups: each node's CFS periods in the round and how many throttled.
    pub throttled: Vec<(u64, u64)>,
}

/// The processes in network namespace `ns`.
fn pids_in(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ticks(t: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(t * 1_000_000_000 / hz)
}

/// User + system CPU time of process `pid` (zero when it is gone).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which ends with the last ')': state is field 3,
    // utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    ticks(f.iter().sum())
}

/// User + system CPU time of this process's waited-for children so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass; zeroed is a valid rusage.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The machine's busy and total CPU ticks so far (/proc/stat).
fn machine_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    (total - idle, total)
}

/// One `alloc` on node 1 at a fleet's size, released again (untimed).
pub struct Point {
    bin: PathBuf,
    ns: PathBuf,
    url: String,
    node: String,
    addr: String,
}

impl Point {
    /// Time `alloc NAME`, then release it.
    pub fn sample(&self, name: &str) -> Result<Duration> {
        let (bin, url, node, addr, name) = (
            self.bin.clone(),
            self.url.clone(),
            self.node.clone(),
            self.addr.clone(),
            name.to_string(),
        );
        in_ns(&self.ns, move || {
            let d = timed(va(&bin, &url, &node, &addr).args(["alloc", &name]), None)?;
            timed(va(&bin, &url, &node, &addr).args(["release", &name]), None)?;
            Ok(d)
        })
    }
}

/// The status of one HTTP/1.1 response, its body read and dropped (Content-Length or
/// chunked), so the connection can carry the next request.
fn read_response(r: &mut impl BufRead) -> std::io::Result<u16> {
    let bad = |w: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, w.to_string());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| bad("bad Content-Length"))?;
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.trim().eq_ignore_ascii_case("chunked");
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).map_err(|_| bad("bad chunk"))?;
            skip(r, n)?;
            line.clear();
            r.read_line(&mut line)?;
            if n == 0 {
                return Ok(status);
            }
        }
    }
    skip(r, length)?;
    Ok(status)
}

/// Read and drop `n` bytes.
fn skip(r: &mut impl BufRead, n: usize) -> std::io::Result<()> {
    std::io::copy(&mut r.by_ref().take(n as u64), &mut std::io::sink()).map(|_| ())
}

/// Where cgroup v1 mounts its cpu controller (quotas) and its cpuacct controller (CPU
/// time used); on systems that mount the two together both name the same directory.
const CPU_CGROUP: &str = "/sys/fs/cgroup/cpu";
const CPUACCT_CGROUP: &str = "/sys/fs/cgroup/cpuacct";
/// The bench's cgroups are `NAME-PID/node-N` under each hierarchy, nothing else.
const CGROUP_NAME: &str = "xtask-bench-alloc";
/// The CFS period the quotas are set against.
const PERIOD_US: u64 = 100_000;

/// A host of its own for each node: one cgroup v1 CPU cgroup per node with a quota of
/// `cores` cores. A node's allocator threads move themselves in (`tasks` takes a thread
/// id), so the ve-alloc processes they start are in it too; the rest of the bench and
/// the etcd members stay where they were. Removed on drop (empty by then: the threads
/// have been joined and their children waited for), and by the interrupt cleanup
/// ([`crate::guard`]); a run killed with SIGKILL leaves empty groups, which the next run
/// removes.
pub struct NodeCpu {
    /// Every directory this run made, in the order made (removed in reverse).
    made: Vec<PathBuf>,
    nodes: Vec<NodeGroup>,
}

struct NodeGroup {
    /// The `tasks` files a thread writes its id to (cpu, and cpuacct when apart).
    tasks: Vec<PathBuf>,
    /// `cpu.stat` (throttling counts) and `cpuacct.usage` (nanoseconds used).
    stat: PathBuf,
    usage: Option<PathBuf>,
}

fn write(path: &Path, v: &str) -> Result {
    std::fs::write(path, v).map_err(|e| format!("writing {v} to {}: {e}", path.display()))
}

impl NodeCpu {
    /// Whether cgroup v1's cpu controller is there to set quotas in (an error saying
    /// what is missing otherwise).
    pub fn check() -> Result {
        if Path::new(CPU_CGROUP).join("cpu.cfs_quota_us").is_file() {
            Ok(())
        } else {
            Err(format!(
                "bench alloc: --node-cpu needs cgroup v1's cpu controller at {CPU_CGROUP} \
                 (no cpu.cfs_quota_us there)"
            ))
        }
    }

    /// `nodes` cgroups of `cores` cores each, the quota read back and a child of a
    /// joined thread seen inside.
    pub fn new(nodes: usize, cores: f64) -> Result<NodeCpu> {
        Self::check()?;
        let cpu_root = PathBuf::from(CPU_CGROUP);
        // cpuacct apart, together with cpu, or missing (then no usage figure).
        let acct_root = if cpu_root.join("cpuacct.usage").is_file() {
            None
        } else if Path::new(CPUACCT_CGROUP).join("cpuacct.usage").is_file() {
            Some(PathBuf::from(CPUACCT_CGROUP))
        } else {
            None
        };
        let together = cpu_root.join("cpuacct.usage").is_file();
        let name = format!("{CGROUP_NAME}-{}", std::process::id());
        for r in std::iter::once(&cpu_root).chain(acct_root.as_ref()) {
            remove_stale(r);
        }
        let mut me = NodeCpu {
            made: Vec::new(),
            nodes: Vec::new(),
        };
        let mkdir = |me: &mut NodeCpu, d: PathBuf| -> Result<PathBuf> {
            std::fs::create_dir(&d).map_err(|e| format!("creating cgroup {}: {e}", d.display()))?;
            crate::guard::cgroup(&d);
            me.made.push(d.clone());
            Ok(d)
        };
        let cpu_dir = mkdir(&mut me, cpu_root.join(&name))?;
        let acct_dir = match &acct_root {
            Some(r) => Some(mkdir(&mut me, r.join(&name))?),
            None => None,
        };
        let quota = ((cores * PERIOD_US as f64).round() as u64).max(1000);
        for i in 1..=nodes {
            let d = mkdir(&mut me, cpu_dir.join(format!("node-{i}")))?;
            write(&d.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
            write(&d.join("cpu.cfs_quota_us"), &quota.to_string())?;
            let got = std::fs::read_to_string(d.join("cpu.cfs_quota_us")).unwrap_or_default();
            if got.trim() != quota.to_string() {
                return Err(format!(
                    "cgroup {}: quota {quota} us written, {:?} read back",
                    d.display(),
                    got.trim()
                ));
            }
            let mut tasks = vec![d.join("tasks")];
            let usage = if together {
                Some(d.join("cpuacct.usage"))
            } else if let Some(a) = &acct_dir {
                let ad = mkdir(&mut me, a.join(format!("node-{i}")))?;
                tasks.push(ad.join("tasks"));
                Some(ad.join("cpuacct.usage"))
            } else {
                None
            };
            me.nodes.push(NodeGroup {
                tasks,
                stat: d.join("cpu.stat"),
                usage,
            });
        }
        // A child of a thread that joined node 1 must be in node 1's cpu cgroup.
        let tasks = me.tasks(0);
        let want = format!("/{name}/node-1");
        let seen = std::thread::spawn(move || -> Result<String> {
            join_cgroup(&tasks)?;
            let out = Command::new("cat")
                .arg("/proc/self/cgroup")
                .output()
                .map_err(|e| format!("cat /proc/self/cgroup: {e}"))?;
            Ok(cpu_cgroup_of(&String::from_utf8_lossy(&out.stdout)))
        })
        .join()
        .unwrap_or_else(|_| Err("cgroup check thread panicked".into()))?;
        if seen != want {
            return Err(format!(
                "a child of a thread in cgroup {want} is in {seen:?}: quotas would not apply"
            ));
        }
        Ok(me)
    }

    /// The `tasks` files of node `i` (from 0), for [`join_cgroup`].
    pub fn tasks(&self, i: usize) -> Vec<PathBuf> {
        self.nodes[i].tasks.clone()
    }

    /// CPU time node `i` has used so far (None without cpuacct).
    pub fn usage(&self, i: usize) -> Option<Duration> {
        let p = self.nodes[i].usage.as_ref()?;
        let ns: u64 = std::fs::read_to_string(p).ok()?.trim().parse().ok()?;
        Some(Duration::from_nanos(ns))
    }

    /// Node `i`'s CFS periods so far and how many of them it was throttled in.
    pub fn throttled(&self, i: usize) -> (u64, u64) {
        let s = std::fs::read_to_string(&self.nodes[i].stat).unwrap_or_default();
        let field = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
                .unwrap_or(0)
        };
        (field("nr_periods "), field("nr_throttled "))
    }
}

impl Drop for NodeCpu {
    fn drop(&mut self) {
        for d in self.made.iter().rev() {
            if let Err(e) = rmdir_waiting(d) {
                eprintln!("bench alloc: warning: removing cgroup {}: {e}", d.display());
            }
        }
    }
}

/// rmdir a cgroup, waiting up to 2 s for exiting tasks to leave it (EBUSY).
fn rmdir_waiting(d: &Path) -> std::io::Result<()> {
    for _ in 0..200 {
        match std::fs::remove_dir(d) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            r => return r,
        }
    }
    std::fs::remove_dir(d)
}

/// Remove `root/NAME-PID` groups left by runs whose process is gone (killed before
/// their drop ran); only empty groups can go, and only ours are looked at.
fn remove_stale(root: &Path) {
    let Ok(dir) = std::fs::read_dir(root) else {
        return;
    };
    for e in dir.flatten() {
        let n = e.file_name();
        let Some(pid) = n
            .to_str()
            .and_then(|n| n.strip_prefix(CGROUP_NAME)?.strip_prefix('-'))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(sub) = std::fs::read_dir(e.path()) {
            for s in sub.flatten() {
                if s.file_name()
                    .to_str()
                    .is_some_and(|s| s.starts_with("node-"))
                {
                    let _ = std::fs::remove_dir(s.path());
                }
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

/// Move the calling thread into the cgroups whose `tasks` files are given; the
/// processes it starts from then on are born there.
pub fn join_cgroup(tasks: &[PathBuf]) -> Result {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    for t in tasks {
        write(t, &tid.to_string())?;
    }
    Ok(())
}

/// The cpu controller's path in a /proc/PID/cgroup text (v1 lines `ID:CONTROLLERS:PATH`).
fn cpu_cgroup_of(text: &str) -> String {
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            ctl.split(',').any(|c| c == "cpu").then(|| path.to_string())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_cgroup_line() {
        let text = "4:memory:/x\n2:cpuacct:/a\n1:cpu:/xtask-bench-alloc-7/node-1\n0::/\n";
        assert_eq!(cpu_cgroup_of(text), "/xtask-bench-alloc-7/node-1");
        assert_eq!(cpu_cgroup_of("3:cpu,cpuacct:/b\n"), "/b");
        assert_eq!(cpu_cgroup_of("0::/\n"), "");
    }

    /// Real cgroups: a killed run's empty group is swept, a busy child of a joined
    /// thread runs in its node's group and its quota holds it to its cores, and every
    /// group is gone after the drop. Only what holds however loaded the machine is
    /// (CI runs it on 2 busy cores): a busy child may get less than its 0.1 core, never
    /// more.
    #[test]
    fn node_cgroups_cap_children_and_go() {
        const TEST: &str = "node_cgroups_cap_children_and_go";
        if !testbed::privileged(TEST, &["timeout"]) {
            return;
        }
        // A kernel without the v1 cpu controller (a cgroup v2 only host) lacks a
        // feature, not a privilege: a skip, even under cargo xtask test.
        if let Err(e) = NodeCpu::check() {
            eprintln!(
                "SKIPPED: {TEST} needs cgroup v1's cpu controller, which this host does \
                 not have ({e}); skipped even with {} set",
                testbed::REQUIRE_PRIVILEGED
            );
            return;
        }
        // What a killed run leaves: an empty group named for a pid that is gone.
        let mut gone = Command::new("true").spawn().expect("true");
        let dead = gone.id();
        gone.wait().expect("true");
        let stale = Path::new(CPU_CGROUP).join(format!("{CGROUP_NAME}-{dead}"));
        std::fs::create_dir_all(stale.join("node-1")).expect("stale group");
        let caps = NodeCpu::new(2, 0.1).expect("cgroups");
        assert!(!stale.exists(), "{} left", stale.display());
        let made = caps.made.clone();
        assert!(made.iter().all(|d| d.is_dir()));
        let node2 = format!("/{CGROUP_NAME}-{}/node-2", std::process::id());
        let q = std::fs::read_to_string(format!("{CPU_CGROUP}{node2}/cpu.cfs_quota_us"))
            .expect("quota");
        assert_eq!(q.trim(), "10000");
        let (u0, tasks) = (caps.usage(1), caps.tasks(1));
        let t = Instant::now();
        let seen = std::thread::spawn(move || {
            join_cgroup(&tasks).expect("join");
            let mut busy = Command::new("timeout")
                .args(["1", "sh", "-c", "while :; do :; done"])
                .spawn()
                .expect("busy loop");
            // Its group, fixed when it was forked.
            let seen = std::fs::read_to_string(format!("/proc/{}/cgroup", busy.id()))
                .expect("the child's cgroups");
            assert_eq!(busy.wait().expect("busy loop").code(), Some(124));
            cpu_cgroup_of(&seen)
        })
        .join()
        .expect("thread");
        let wall = t.elapsed().as_secs_f64();
        assert_eq!(seen, node2, "the child of a joined thread");
        if let (Some(a), Some(b)) = (u0, caps.usage(1)) {
            assert!(b > a, "node 2's group counted none of the child's CPU time");
            // At most a period's burst over the quota, however loaded the machine is.
            let used = (b - a).as_secs_f64() / wall;
            assert!(used <= 0.13, "node 2 used {used:.3} cores of its 0.1");
        }
        assert_eq!(caps.throttled(0).1, 0, "node 1 ran nothing");
        drop(caps);
        for d in &made {
            assert!(!d.exists(), "{} left", d.display());
        }
    }
}
