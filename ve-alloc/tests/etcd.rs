//! `ve-alloc` on a real 3-member etcd cluster (Debian's etcd-server) in sandbox
//! namespaces, with three node namespaces that share nothing but etcd: concurrency
//! across nodes, a leader killed mid-round, no quorum, and output and exit codes equal
//! to the SQLite store's.

use std::{
    collections::{HashMap, HashSet},
    process::{Command, Output},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{etcd::Cluster, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_ve-alloc");

fn cluster(test: &str) -> Option<Cluster> {
    if !testbed::privileged(test, &["ip", "unshare", "etcd", "etcdctl", "iptables"]) {
        return None;
    }
    Some(Cluster::start(3, 3).unwrap_or_else(|e| panic!("{e}")))
}

/// `ve-alloc ARGS` on node `i` against the cluster's store under `prefix`.
fn va(c: &Cluster, i: usize, prefix: &str, args: &[&str]) -> Command {
    let n = &c.nodes[i];
    let mut cmd = n.command(BIN);
    cmd.env("VE_ALLOC_STORE", c.url(prefix))
        .env("VE_ALLOC_NODE", &n.name)
        .env("VE_ALLOC_NODE_ADDRESS", &n.addr)
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .env_remove("VE_ALLOC_POOL")
        .env_remove("VE_ALLOC_POOL6")
        .args(args);
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn list(c: &Cluster, i: usize, prefix: &str) -> Vec<Value> {
    let o = va(c, i, prefix, &["list", "--json"]).output().unwrap();
    assert!(o.status.success(), "list: {}", text(&o.stderr));
    text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `KEY=value` lines of one alloc's stdout.
fn env(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Run `per_node` allocations on every node, `parallel` at a time per node, all nodes
/// at once, with `during` called once a third of them have finished. Returns each
/// command's name and output.
fn round(
    c: &Cluster,
    prefix: &str,
    per_node: usize,
    parallel: usize,
    wait: &str,
    during: impl FnOnce(),
) -> Vec<(String, Output)> {
    let done = Arc::new(AtomicUsize::new(0));
    let total = per_node * c.nodes.len();
    let results = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for i in 0..c.nodes.len() {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..parallel {
                let (next, done) = (next.clone(), done.clone());
                handles.push(s.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::SeqCst);
                        if k >= per_node {
                            return out;
                        }
                        let name = format!("c{i}-{k}");
                        let o = va(c, i, prefix, &["--wait", wait, "alloc", &name])
                            .output()
                            .unwrap();
                        done.fetch_add(1, Ordering::SeqCst);
                        out.push((name, o));
                    }
                }));
            }
        }
        while done.load(Ordering::SeqCst) < total / 3 {
            std::thread::sleep(Duration::from_millis(5));
        }
        during();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    results
}

/// Every address in `leases` is held once.
fn assert_unique(leases: &[Value]) {
    let mut seen = HashMap::new();
    for l in leases {
        for k in ["host_address", "local_address"] {
            if let Some(a) = l[k].as_str() {
                let name = l["name"].as_str().unwrap().to_string();
                if let Some(other) = seen.insert(a.to_string(), name.clone()) {
                    panic!("{a} leased to both {other} and {name}");
                }
            }
        }
    }
}

#[test]
fn three_nodes_allocate_concurrently_without_duplicates() {
    let Some(c) = cluster("three_nodes_allocate_concurrently_without_duplicates") else {
        return;
    };
    let before = c.counters().unwrap();
    let t = Instant::now();
    let results = round(&c, "fleet", 100, 16, "30", || {});
    let took = t.elapsed();
    // A node's parallel allocators take turns: next to no commit is lost (each lost
    // one is a quorum write and three more requests). Without the turns: 2.6 quorum
    // writes and 10 requests per allocation.
    let after = c.counters().unwrap();
    let per = |a: u64, b: u64| (b - a) as f64 / 300.0;
    let (requests, writes) = (per(before.0, after.0), per(before.1, after.1));
    eprintln!("per allocation: {requests:.2} requests, {writes:.2} quorum writes");
    assert!(writes <= 1.25, "{writes:.2} quorum writes per allocation");
    assert!(requests <= 4.0, "{requests:.2} requests per allocation");
    let mut printed = HashMap::new();
    for (name, o) in &results {
        assert!(
            o.status.success(),
            "{name}: exit {:?}: {}",
            o.status.code(),
            text(&o.stderr)
        );
        let e = env(&text(&o.stdout));
        assert!(
            e.contains_key("HOST_ADDRESS"),
            "{name}: {}",
            text(&o.stdout)
        );
        printed.insert(name.clone(), e);
    }
    let mut addrs = HashSet::new();
    for e in printed.values() {
        assert!(addrs.insert(e["HOST_ADDRESS"].clone()), "duplicate {e:?}");
        assert!(addrs.insert(e["LOCAL_ADDRESS"].clone()), "duplicate {e:?}");
    }
    for i in 0..3 {
        let leases = list(&c, i, "fleet");
        assert_eq!(leases.len(), 300, "node {i} sees every lease");
        assert_unique(&leases);
        for l in &leases {
            let name = l["name"].as_str().unwrap();
            let e = &printed[name];
            assert_eq!(l["host_address"].as_str(), Some(e["HOST_ADDRESS"].as_str()));
            assert_eq!(
                l["local_address"].as_str(),
                Some(e["LOCAL_ADDRESS"].as_str())
            );
            // c<node>-<k> was allocated on node n<node+1>.
            let node = format!("n{}", &name[1..2].parse::<usize>().unwrap() + 1);
            assert_eq!(l["node"].as_str(), Some(node.as_str()), "{l}");
        }
    }
    // Routes: from n1, every block of n2 and n3 via their addresses; each of their
    // leases is inside one of them; none of n1's blocks.
    let o = va(&c, 0, "fleet", &["routes"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let routes: Vec<(ipnet::Ipv4Net, String)> = text(&o.stdout)
        .lines()
        .map(|l| {
            let (block, via) = l.split_once(" via ").unwrap_or_else(|| panic!("{l}"));
            (block.parse().unwrap(), via.to_string())
        })
        .collect();
    let leases = list(&c, 0, "fleet");
    for l in &leases {
        let a: std::net::Ipv4Addr = l["host_address"].as_str().unwrap().parse().unwrap();
        let via: Vec<&String> = routes
            .iter()
            .filter(|(b, _)| b.contains(&a))
            .map(|(_, v)| v)
            .collect();
        match l["node"].as_str().unwrap() {
            "n1" => assert!(via.is_empty(), "{a} of n1 routed away: {via:?}"),
            n => {
                let i: usize = n[1..].parse().unwrap();
                assert_eq!(via, [&c.nodes[i - 1].addr], "{a} of {n}");
            }
        }
    }
    let o = va(&c, 0, "fleet", &["routes", "--json"]).output().unwrap();
    let lines = text(&o.stdout);
    assert_eq!(lines.lines().count(), routes.len());
    for l in lines.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["node"] == "n2" || v["node"] == "n3", "{v}");
        assert!(v["block"].as_str().unwrap().ends_with("/26"), "{v}");
    }
    // Names are fleet-wide: another node shows and releases them.
    let o = va(&c, 2, "fleet", &["show-ip", "c0-0"]).output().unwrap();
    assert_eq!(text(&o.stdout).trim(), printed["c0-0"]["LOCAL_ADDRESS"]);
    let o = va(&c, 2, "fleet", &["release", "c0-0"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(list(&c, 0, "fleet").len(), 299);
    eprintln!("300 allocations, 3 nodes x 16 at a time: {took:?}");
}

#[test]
fn leader_killed_mid_round_loses_nothing_and_duplicates_nothing() {
    let Some(c) = cluster("leader_killed_mid_round_loses_nothing_and_duplicates_nothing") else {
        return;
    };
    let leader = c.leader().expect("a leader");
    let results = round(&c, "kill", 40, 8, "20", || c.members[leader].kill());
    let leases = list(&c, 1, "kill");
    assert_unique(&leases);
    let by_name: HashMap<&str, &Value> = leases
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l))
        .collect();
    let mut failed = 0;
    for (name, o) in &results {
        if o.status.success() {
            let e = env(&text(&o.stdout));
            let l = by_name
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{name} printed {e:?} but is not in the store"));
            assert_eq!(l["host_address"].as_str(), Some(e["HOST_ADDRESS"].as_str()));
        } else {
            failed += 1;
            assert!(o.stdout.is_empty(), "{name} failed but printed a lease");
            assert!(
                matches!(o.status.code(), Some(75 | 69)),
                "{name}: exit {:?}: {}",
                o.status.code(),
                text(&o.stderr)
            );
        }
    }
    eprintln!(
        "{} allocations, {failed} failed around the leader kill",
        results.len()
    );
    // After the election allocations go on.
    let o = va(&c, 0, "kill", &["alloc", "after"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn without_quorum_alloc_fails_within_wait_and_prints_nothing() {
    let Some(c) = cluster("without_quorum_alloc_fails_within_wait_and_prints_nothing") else {
        return;
    };
    let o = va(&c, 0, "q", &["alloc", "before"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    c.members[0].kill();
    c.members[1].kill();
    for args in [
        &["--wait", "3", "alloc", "x"][..],
        &["--wait", "3", "alloc", "before"],
        &["--wait", "3", "show", "before"],
        &["--wait", "3", "release", "before"],
    ] {
        let t = Instant::now();
        let o = va(&c, 0, "q", args).output().unwrap();
        let took = t.elapsed();
        assert!(
            matches!(o.status.code(), Some(75 | 69)),
            "{args:?}: exit {:?}: {}",
            o.status.code(),
            text(&o.stderr)
        );
        assert!(o.stdout.is_empty(), "{args:?} printed {}", text(&o.stdout));
        assert!(took < Duration::from_millis(4500), "{args:?} took {took:?}");
    }
    // Nothing listens at this address of the sandbox LAN: unreachable is 69.
    let mut cmd = va(&c, 0, "q", &["--wait", "1", "alloc", "x"]);
    cmd.env("VE_ALLOC_STORE", "etcd://198.51.100.99:2379");
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(69), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());
}

/// Output and exit codes of one command sequence on SQLite and on etcd are the same.
#[test]
fn commands_match_the_sqlite_store() {
    let Some(c) = cluster("commands_match_the_sqlite_store") else {
        return;
    };
    let dir = TempDir::new("va-etcd-sqlite");
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(
        conf.join("imp.conf"),
        "HOST_ADDRESS=10.233.8.2\nLOCAL_ADDRESS=10.233.8.3\n",
    )
    .unwrap();
    let conf = conf.display().to_string();
    // Two batches of 30 new leases, then a release of 45 names.
    let batch = |r: std::ops::Range<usize>, verb: &str| -> Vec<String> {
        let mut v = vec![verb.to_string()];
        v.extend(r.map(|k| format!("m{k}")));
        v
    };
    let (mut first, mut second) = (batch(0..30, "alloc"), batch(30..60, "alloc"));
    first.push("--json".into());
    second.push("--json".into());
    let release = batch(0..45, "release");
    let steps: Vec<Vec<&str>> = vec![
        vec!["alloc", "a"],
        vec!["alloc", "a"],
        vec!["alloc", "b", "c", "a", "--json"],
        vec!["alloc", "b", "c"],
        vec!["alloc", "bad/name"],
        vec!["show", "a"],
        vec!["show", "a", "--json"],
        vec!["show-ip", "b"],
        vec!["show-ip", "b", "--json"],
        vec!["show", "missing"],
        vec!["list"],
        vec!["list", "--hosts"],
        vec!["release", "a", "nothing"],
        vec!["release", "a"],
        vec!["alloc", "d"],
        vec![
            "reserve",
            "r",
            "--host-address",
            "10.233.9.2",
            "--local-address",
            "10.233.9.3",
        ],
        vec![
            "reserve",
            "r",
            "--host-address",
            "10.233.9.2",
            "--local-address",
            "10.233.9.3",
        ],
        vec![
            "reserve",
            "x",
            "--host-address",
            "10.233.9.3",
            "--local-address",
            "10.233.9.7",
        ],
        vec![
            "reserve",
            "y",
            "--host-address",
            "10.234.9.2",
            "--local-address",
            "10.234.9.3",
        ],
        vec!["import", &conf],
        vec!["gc", "--dry-run", "b"],
        vec!["gc", "b"],
        vec!["gc", "--all-gone"],
        vec!["list", "--json"],
        vec!["list"],
    ];
    // On a fresh store and prefix: more leases than one etcd transaction's 128
    // operations can release (no allocation after the release: there the stores part
    // on purpose, SQLite walking on through the pool, a node reusing its own blocks).
    let many: Vec<Vec<&str>> = vec![
        first.iter().map(String::as_str).collect(),
        second.iter().map(String::as_str).collect(),
        vec!["list"],
        release.iter().map(String::as_str).collect(),
        vec!["list"],
        vec!["alloc", "m0"],
        vec!["gc", "--all-gone"],
        vec!["list"],
    ];
    // Bad node settings are refused before etcd is contacted.
    for (k, v) in [
        ("VE_ALLOC_NODE", "bad/name"),
        ("VE_ALLOC_NODE_ADDRESS", "nope"),
        ("VE_ALLOC_BLOCK_SIZE", "31"),
    ] {
        let o = va(&c, 0, "same", &["alloc", "web"])
            .env(k, v)
            .output()
            .unwrap();
        assert!(matches!(o.status.code(), Some(64 | 65)), "{k}={v}: {o:?}");
        assert!(o.stdout.is_empty());
    }
    compare(&c, &dir.path().join("store"), "same", &steps);
    compare(&c, &dir.path().join("many"), "many", &many);
}

/// Run `steps` on the SQLite store `store` and on the etcd prefix `prefix`, from node 1,
/// and check that stdout and exit codes are equal.
fn compare(c: &Cluster, store: &std::path::Path, prefix: &str, steps: &[Vec<&str>]) {
    for s in steps {
        let sq = c.nodes[0]
            .command(BIN)
            .env("VE_ALLOC_STORE", store)
            .env("VE_ALLOC_CONFIG", "/dev/null")
            .env_remove("VE_ALLOC_POOL")
            .env_remove("VE_ALLOC_POOL6")
            .args(s)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let et = va(c, 0, prefix, s)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            sq.status.code(),
            et.status.code(),
            "{s:?}: exit codes differ; sqlite: {} etcd: {}",
            text(&sq.stderr),
            text(&et.stderr)
        );
        let mut etcd_out = text(&et.stdout);
        if s.contains(&"list") && s.contains(&"--json") {
            // The etcd store adds each lease's node; otherwise the lines are the same.
            let lines: Vec<String> = etcd_out
                .lines()
                .map(|l| {
                    let mut v: serde_json::Map<String, Value> = serde_json::from_str(l).unwrap();
                    assert_eq!(v.remove("node"), Some(Value::from("n1")), "{l}");
                    format!("{}\n", Value::Object(v))
                })
                .collect();
            let sq_lines: Vec<String> = text(&sq.stdout)
                .lines()
                .map(|l| format!("{}\n", serde_json::from_str::<Value>(l).unwrap()))
                .collect();
            assert_eq!(lines, sq_lines, "{s:?}");
            etcd_out = String::new();
            assert!(!sq.stdout.is_empty());
        } else {
            assert_eq!(text(&sq.stdout), etcd_out, "{s:?}: stdout differs");
        }
    }
}

/// A store string that is neither a directory nor a valid store URL is refused before
/// anything is created: no directory named `etcd:` ever appears.
#[test]
fn garbage_store_urls_are_refused_and_create_nothing() {
    let dir = TempDir::new("va-etcd-garbage");
    for (store, code) in [
        ("etcd:", 64),
        ("etcd:localhost:2379", 64),
        ("ETCD:x", 64),
        ("etcd://", 64),
        ("etcd://host", 64),
        ("etcd://h:99999/p", 64),
        ("http://h:2379", 64),
        ("etcd+tls:h:2379", 64),
        ("etcd+tls://h", 64),
        ("etcds://h:2379", 64),
    ] {
        let o = Command::new(BIN)
            .current_dir(dir.path())
            .env("VE_ALLOC_STORE", store)
            .env("VE_ALLOC_CONFIG", "/dev/null")
            .args(["alloc", "web"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(code), "{store}: {}", text(&o.stderr));
        assert!(o.stdout.is_empty());
        assert_eq!(text(&o.stderr).lines().count(), 1, "{}", text(&o.stderr));
    }
    let conf = dir.path().join("ve-alloc.conf");
    std::fs::write(&conf, "STORE=etcd:foo\n").unwrap();
    let o = Command::new(BIN)
        .current_dir(dir.path())
        .env_remove("VE_ALLOC_STORE")
        .arg("--config")
        .arg(&conf)
        .args(["alloc", "web"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", text(&o.stderr));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("ve-alloc.conf")]);
    let o = Command::new(BIN)
        .args(["alloc", "--help"])
        .output()
        .unwrap();
    for flag in [
        "--node <NAME>",
        "--node-address <ADDR>",
        "--block-size",
        "etcd://",
        "etcd+tls://",
        "--etcd-cacert <FILE>",
        "--etcd-cert <FILE>",
        "--etcd-key <FILE>",
    ] {
        assert!(text(&o.stdout).contains(flag), "alloc --help lacks {flag}");
    }
}

/// A node cut off from etcd fails without printing; once it is released as gone its
/// blocks go to another node, and when it comes back it never hands out an address
/// from them: it claims a new block.
#[test]
fn a_released_node_that_comes_back_hands_out_nothing_another_node_holds() {
    let Some(c) = cluster("a_released_node_that_comes_back_hands_out_nothing_another_node_holds")
    else {
        return;
    };
    let p = "back";
    let ok = |i: usize, args: &[&str]| {
        let o = va(&c, i, p, args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    for k in 0..3 {
        ok(1, &["alloc", &format!("old{k}")]);
    }
    let old = env(&ok(1, &["show", "old0"]));
    assert_eq!(
        old["HOST_ADDRESS"], "10.233.0.2",
        "n2 claimed the first block"
    );
    ok(0, &["alloc", "a0"]);
    c.nodes[1].ns.ip(&["link", "set", "eth0", "down"]);
    let o = va(&c, 1, p, &["--wait", "2", "alloc", "cut"])
        .output()
        .unwrap();
    assert!(matches!(o.status.code(), Some(69 | 75)), "{o:?}");
    assert!(o.stdout.is_empty());
    // n2 is known gone: its dynamic leases and blocks are freed.
    assert_eq!(ok(0, &["node", "release", "n2"]), "old0\nold1\nold2\n");
    assert_eq!(ok(0, &["node", "release", "n2"]), "", "idempotent");
    // n1 fills its own block (32 pairs) and takes the freed first one.
    for batch in [1..21, 21..41] {
        let names: Vec<String> = batch.map(|k| format!("a{k}")).collect();
        let mut args = vec!["alloc", "--json"];
        args.extend(names.iter().map(String::as_str));
        ok(0, &args);
    }
    let leases = list(&c, 0, p);
    assert!(
        leases
            .iter()
            .any(|l| l["host_address"] == "10.233.0.2" && l["node"] == "n1"),
        "n1 now holds n2's old first pair"
    );
    // n2 comes back: its next lease is from a block of its own, not its old one.
    c.nodes[1].ns.ip(&["link", "set", "eth0", "up"]);
    let late = env(&ok(1, &["alloc", "late"]));
    let leases = list(&c, 2, p);
    assert_unique(&leases);
    let late_host: std::net::Ipv4Addr = late["HOST_ADDRESS"].parse().unwrap();
    assert!(
        late_host.octets()[3] >= 128,
        "late got {late_host}, inside a block n1 owns"
    );
    // Node settings from the config file; a block size other than the fleet's is 78.
    let conf = c.nodes[2].dir().join("ve-alloc.conf");
    let from_conf = |extra: &str| {
        std::fs::write(&conf, format!("STORE={}\nNODE=n9\n{extra}", c.url(p))).unwrap();
        va(&c, 2, p, &["alloc", "fromconf"])
            .env("VE_ALLOC_CONFIG", &conf)
            .env_remove("VE_ALLOC_STORE")
            .env_remove("VE_ALLOC_NODE")
            .env_remove("VE_ALLOC_NODE_ADDRESS")
            .output()
            .unwrap()
    };
    for bad in ["BLOCK_SIZE=31\n", "BLOCK_SIZE=28\n", "NODE_ADDRESS=x\n"] {
        let o = from_conf(bad);
        assert_eq!(o.status.code(), Some(78), "{bad}: {}", text(&o.stderr));
        assert!(o.stdout.is_empty());
    }
    let o = from_conf("NODE_ADDRESS=198.51.100.99\nBLOCK_SIZE=26\n");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let l = list(&c, 0, p);
    let l = l.iter().find(|l| l["name"] == "fromconf").unwrap();
    assert_eq!(l["node"], "n9");
    // The directory store has no nodes.
    let o = c.nodes[0]
        .command(BIN)
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .env("VE_ALLOC_STORE", c.nodes[0].dir().join("sq"))
        .args(["node", "release", "n2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64));
    let o = c.nodes[0]
        .command(BIN)
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .env("VE_ALLOC_STORE", c.nodes[0].dir().join("sq"))
        .arg("routes")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64));
    // n2's old block is n1's now, so n3 routes it to n1.
    let o = va(&c, 2, p, &["routes"]).output().unwrap();
    let routes = text(&o.stdout);
    assert!(
        routes.contains(&format!("10.233.0.0/26 via {}\n", c.nodes[0].addr)),
        "{routes}"
    );
}

/// A node cut off from etcd in the middle of an allocation, after it read its blocks
/// and before its commit reached etcd, while the fleet gives its block away (`node
/// release`, then another node claims it and allocates): when it comes back, its
/// delayed commit must not land in the block it no longer owns. The cut is a drop rule
/// in the node's own namespace that matches only the commit (the one request that
/// writes, `request_put`), so the node's reads went through and its commit is held
/// back exactly between "chose a pair" and "committed".
#[test]
fn a_node_cut_off_mid_allocation_comes_back_without_using_a_block_given_away() {
    let Some(c) =
        cluster("a_node_cut_off_mid_allocation_comes_back_without_using_a_block_given_away")
    else {
        return;
    };
    let p = "cut";
    let ok = |i: usize, args: &[&str]| {
        let o = va(&c, i, p, args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    ok(0, &["alloc", "a0"]);
    ok(0, &["alloc", "a1"]);
    let cut = Cut::new(&c, 0, "request_put");
    let late = va(&c, 0, p, &["--wait", "20", "alloc", "late"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while cut.dropped() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "n1 never sent its commit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Meanwhile n1 is taken for gone; n2 claims its freed block and leases from it.
    assert_eq!(ok(1, &["node", "release", "n1"]), "a0\na1\n");
    let b0 = env(&ok(1, &["alloc", "b0"]));
    assert_eq!(b0["HOST_ADDRESS"], "10.233.0.2", "n2 took n1's old block");
    // n1 comes back: its held commit reaches etcd now.
    cut.heal();
    let o = late.wait_with_output().unwrap();
    assert!(o.status.success(), "late: {}", text(&o.stderr));
    let late = env(&text(&o.stdout));
    for k in 1..4 {
        ok(1, &["alloc", &format!("b{k}")]);
    }
    let leases = list(&c, 2, p);
    assert_unique(&leases);
    let host: std::net::Ipv4Addr = late["HOST_ADDRESS"].parse().unwrap();
    let block = std::net::Ipv4Addr::from(u32::from(host) & !63);
    let routes = text(&va(&c, 2, p, &["routes"]).output().unwrap().stdout);
    assert!(
        routes.contains(&format!("{block}/26 via {}\n", c.nodes[0].addr)),
        "late got {host}, in a block n1 does not own: routes from n3:\n{routes}"
    );
    assert!(
        routes.contains(&format!("10.233.0.0/26 via {}\n", c.nodes[1].addr)),
        "{routes}"
    );
    let node_of = |name: &str| {
        leases
            .iter()
            .find(|l| l["name"] == name)
            .map(|l| l["node"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(node_of("late").as_deref(), Some("n1"));
}

/// A drop rule in node `i`'s own namespace for its etcd requests that contain `text`,
/// and how many packets it dropped so far.
struct Cut<'a> {
    ns: &'a testbed::Netns,
    text: &'a str,
}

impl<'a> Cut<'a> {
    fn new(c: &'a Cluster, i: usize, text: &'a str) -> Cut<'a> {
        let cut = Cut {
            ns: &c.nodes[i].ns,
            text,
        };
        cut.iptables("-I");
        cut
    }

    fn iptables(&self, op: &str) {
        let o = self
            .ns
            .command("iptables")
            .args([op, "OUTPUT", "-p", "tcp", "--dport", "2379", "-m", "string"])
            .args(["--string", self.text, "--algo", "bm", "-j", "DROP"])
            .output()
            .unwrap();
        assert!(o.status.success(), "iptables {op}: {o:?}");
    }

    fn dropped(&self) -> u64 {
        let o = self
            .ns
            .command("iptables")
            .args(["-L", "OUTPUT", "-n", "-v", "-x"])
            .output()
            .unwrap();
        text(&o.stdout)
            .lines()
            .find(|l| l.contains("STRING match"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    }

    /// Take the rule away: the node reaches etcd again.
    fn heal(self) {
        self.iptables("-D");
    }
}

/// `node release` of a node is cut off after it freed the node's blocks and before it
/// removed the node's record, so the record still lists a block that another node then
/// claims and leases from. The released node re-validates its blocks as it allocates:
/// it never leases from that block (nor waits out --wait on it), drops it from its
/// record and claims a block of its own.
#[test]
fn a_node_whose_record_lists_a_block_given_away_never_uses_it() {
    let Some(c) = cluster("a_node_whose_record_lists_a_block_given_away_never_uses_it") else {
        return;
    };
    let p = "stale";
    let ok = |i: usize, args: &[&str]| {
        let o = va(&c, i, p, args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    ok(0, &["alloc", "a0"]);
    ok(0, &["alloc", "a1"]);
    // The record's removal is the only request of a release without a compare.
    let cut = Cut::new(&c, 1, r#""compare":[]"#);
    let o = va(&c, 1, p, &["--wait", "3", "node", "release", "n1"])
        .output()
        .unwrap();
    assert!(matches!(o.status.code(), Some(69 | 75)), "{o:?}");
    assert!(cut.dropped() > 0);
    // The rule stays: the kernel would still deliver the dropped request once it went
    // (n2 only reads from here on, which the rule lets through).
    let record = |node: &str| {
        let o = c
            .etcdctl(&["get", "--print-value-only", &format!("/{p}/node/{node}")])
            .output()
            .unwrap();
        assert!(o.status.success(), "etcdctl get: {o:?}");
        text(&o.stdout)
    };
    assert!(
        record("n1").contains("4/0ae90000"),
        "n1's record kept its block"
    );
    // n3 claims the freed block and leases from it.
    assert_eq!(env(&ok(2, &["alloc", "c0"]))["HOST_ADDRESS"], "10.233.0.2");
    let t = Instant::now();
    let back = env(&ok(0, &["--wait", "10", "alloc", "back"]));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    for k in 1..4 {
        ok(2, &["alloc", &format!("c{k}")]);
    }
    assert_unique(&list(&c, 1, p));
    let host: std::net::Ipv4Addr = back["HOST_ADDRESS"].parse().unwrap();
    let block = std::net::Ipv4Addr::from(u32::from(host) & !63);
    let routes = text(&va(&c, 1, p, &["routes"]).output().unwrap().stdout);
    assert!(
        routes.contains(&format!("{block}/26 via {}\n", c.nodes[0].addr)),
        "back got {host}, in a block n1 does not own: routes from n2:\n{routes}"
    );
    assert!(
        routes.contains(&format!("10.233.0.0/26 via {}\n", c.nodes[2].addr)),
        "{routes}"
    );
    assert!(
        !record("n1").contains("4/0ae90000"),
        "n1 dropped the block from its record: {}",
        record("n1")
    );
    cut.heal();
}

/// With authentication enabled in etcd: no credentials or a wrong password is 77 and
/// prints nothing; a user and its password file work.
/// Claims are first-fit: the lowest free block, also past the first page of claimed
/// blocks the search reads, also when `node release` freed it below where the last
/// claims went (the claim hint is dropped then).
#[test]
fn claims_take_the_lowest_free_block_beyond_a_page_and_after_node_release() {
    let Some(c) = cluster("claims_take_the_lowest_free_block_beyond_a_page_and_after_node_release")
    else {
        return;
    };
    let p = "firstfit";
    // /29 blocks: 4 pairs each, the first 3 (10.233.0.0 is the pool's network).
    let ok = |i: usize, args: &[&str]| {
        let o = va(&c, i, p, args)
            .env("VE_ALLOC_BLOCK_SIZE", "29")
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    let host = |out: &str| env(out)["HOST_ADDRESS"].clone();
    let batch = |i: usize, names: std::ops::Range<usize>, tag: &str| {
        let names: Vec<String> = names.map(|k| format!("{tag}{k}")).collect();
        for chunk in names.chunks(24) {
            let mut args = vec!["alloc", "--json"];
            args.extend(chunk.iter().map(String::as_str));
            ok(i, &args);
        }
    };
    assert_eq!(host(&ok(0, &["alloc", "a0"])), "10.233.0.2");
    batch(0, 1..3, "a");
    // n2: blocks 1 to 66, more than one page (64) of claimed blocks.
    batch(1, 0..264, "b");
    // n3: block 67 (10.233.2.24/29); n2 then block 68.
    assert_eq!(host(&ok(2, &["alloc", "c0"])), "10.233.2.24");
    batch(1, 264..268, "b");
    assert_eq!(ok(0, &["node", "release", "n3"]), "c0\n");
    // n1's block is full: it claims block 67 again, found on the second page.
    assert_eq!(host(&ok(0, &["alloc", "a3"])), "10.233.2.24");
    batch(0, 4..7, "a");
    // Block 67 is full too: the next free one is 69 (10.233.2.40/29).
    assert_eq!(host(&ok(0, &["alloc", "a7"])), "10.233.2.40");
    // Pairs freed in n1's older blocks are found after the wrap (those blocks are
    // counted, not all held, then read), before any new block is claimed.
    ok(0, &["release", "a1", "a4"]);
    for (name, want) in [
        ("a8", "10.233.2.42"),
        ("a9", "10.233.2.44"),
        ("a10", "10.233.2.46"),
        ("a11", "10.233.0.4"),
        ("a12", "10.233.2.26"),
    ] {
        assert_eq!(host(&ok(0, &["alloc", name])), want, "{name}");
    }
    let leases = list(&c, 1, p);
    assert_eq!(leases.len(), 3 + 268 + 8);
    assert_unique(&leases);
}

#[test]
fn etcd_authentication_with_user_and_password_file() {
    let Some(c) = cluster("etcd_authentication_with_user_and_password_file") else {
        return;
    };
    for args in [
        &["user", "add", "root:s3cret", "--interactive=false"][..],
        &["auth", "enable"],
    ] {
        let o = c.etcdctl(args).output().unwrap();
        assert!(o.status.success(), "etcdctl {args:?}: {o:?}");
    }
    let dir = c.nodes[0].dir();
    std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
    std::fs::write(dir.join("bad"), "wrong\n").unwrap();
    let run = |user: Option<&str>, file: &str| {
        let mut cmd = va(&c, 0, "auth", &["--wait", "3", "alloc", "web"]);
        if let Some(u) = user {
            cmd.env("VE_ALLOC_ETCD_USER", u)
                .env("VE_ALLOC_ETCD_PASSWORD_FILE", dir.join(file));
        }
        cmd.output().unwrap()
    };
    for (user, file) in [(Some("root"), "bad"), (Some("nobody"), "pw")] {
        let o = run(user, file);
        assert_eq!(
            o.status.code(),
            Some(77),
            "{user:?} {file}: {}",
            text(&o.stderr)
        );
        assert!(o.stdout.is_empty());
    }
    // No credentials: etcd's "user name is empty" carries the code of any refused
    // argument; an anonymous login's code tells that authentication is on: 77, on one
    // line naming the flags that mend it.
    let o = run(None, "");
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(77), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--etcd-user") && err.contains("--etcd-password-file"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
    let o = run(Some("root"), "pw");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(env(&text(&o.stdout))["HOST_ADDRESS"], "10.233.0.2");
    // routes --watch sends the token with its watch stream too: n2's claim arrives.
    let creds = |mut cmd: Command| {
        cmd.env("VE_ALLOC_ETCD_USER", "root")
            .env("VE_ALLOC_ETCD_PASSWORD_FILE", dir.join("pw"));
        cmd
    };
    let mut watch = creds(va(&c, 1, "auth", &["routes", "--watch"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sets = watch_sets(&mut watch);
    let n1 = &c.nodes[0].addr;
    next_set(&sets, Duration::from_secs(5), "n1's block", |s| {
        s == [format!("10.233.0.0/26 via {n1}")]
    });
    std::fs::write(c.nodes[2].dir().join("pw"), "s3cret\n").unwrap();
    let o = va(&c, 2, "auth", &["alloc", "web3"])
        .env("VE_ALLOC_ETCD_USER", "root")
        .env("VE_ALLOC_ETCD_PASSWORD_FILE", c.nodes[2].dir().join("pw"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    next_set(&sets, Duration::from_secs(5), "n3's block", |s| {
        s.len() == 2
    });
    let _ = watch.kill();
    let o = watch.wait_with_output().unwrap();
    // Through the watch itself, not by listing again after etcd refused it.
    assert_eq!(text(&o.stderr), "", "the watch had trouble");
    // A user without a password file is a usage error, before etcd is asked.
    let o = va(&c, 0, "auth", &["alloc", "web"])
        .env("VE_ALLOC_ETCD_USER", "root")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", text(&o.stderr));
}

/// The sets `routes --watch` prints, read on a thread: each set's lines, sent when its
/// blank line comes.
fn watch_sets(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<Vec<String>> {
    use std::io::BufRead;
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut set = Vec::new();
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                if tx.send(std::mem::take(&mut set)).is_err() {
                    return;
                }
            } else {
                set.push(line);
            }
        }
    });
    rx
}

/// The first set from `rx` within `within` that satisfies `f`, and when it came.
#[track_caller]
fn next_set(
    rx: &std::sync::mpsc::Receiver<Vec<String>>,
    within: Duration,
    what: &str,
    f: impl Fn(&[String]) -> bool,
) -> (Vec<String>, Duration) {
    let t = Instant::now();
    loop {
        let left = within.saturating_sub(t.elapsed());
        match rx.recv_timeout(left) {
            Ok(set) if f(&set) => return (set, t.elapsed()),
            Ok(_) => {}
            Err(e) => panic!("no set with {what} within {within:?}: {e}"),
        }
    }
}

/// `routes --watch` prints the whole set again, then a blank line, when a block is
/// claimed or freed; it goes on when the member it watches on is cut off without a word
/// (the silence probe moves it) and when that next member is killed; it ends when its
/// reader goes away; a directory store has no routes to watch (64).
#[test]
fn routes_watch_follows_claims_and_releases_across_member_loss() {
    let Some(c) = cluster("routes_watch_follows_claims_and_releases_across_member_loss") else {
        return;
    };
    let p = "watch";
    let ok = |i: usize, args: &[&str]| {
        let o = va(&c, i, p, args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    ok(1, &["alloc", "b0"]);
    let mut watch = va(&c, 0, p, &["--wait", "5", "routes", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sets = watch_sets(&mut watch);
    let (n2, n3) = (&c.nodes[1].addr, &c.nodes[2].addr);
    let (first, _) = next_set(&sets, Duration::from_secs(5), "the first set", |_| true);
    assert_eq!(first, [format!("10.233.0.0/26 via {n2}")]);
    // A claim is printed at once, as the whole set.
    let t = Instant::now();
    ok(2, &["alloc", "c0"]);
    let (set, _) = next_set(&sets, Duration::from_secs(5), "n3's block", |s| {
        s.len() == 2
    });
    let took = t.elapsed();
    assert_eq!(
        set,
        [
            format!("10.233.0.0/26 via {n2}"),
            format!("10.233.0.64/26 via {n3}")
        ]
    );
    eprintln!("a claim reached the watch within {took:?} of its alloc starting");
    // The watch runs on the first endpoint: cut that member off silently. A claim made
    // meanwhile arrives once the probe has moved the watch on (5 s of silence, then a
    // failed listing).
    c.members[0].ns.ip(&["link", "set", "eth0", "down"]);
    let cut = Instant::now();
    ok(1, &["--pool", "10.234.0.0/16", "alloc", "b1"]);
    next_set(&sets, Duration::from_secs(20), "n2's second block", |s| {
        s.contains(&format!("10.234.0.0/26 via {n2}"))
    });
    let took = cut.elapsed();
    eprintln!("with the watched member cut off, a claim reached the watch {took:?} after the cut");
    c.members[0].ns.ip(&["link", "set", "eth0", "up"]);
    testbed::wait_for("member 1 back", Duration::from_secs(20), || {
        c.etcdctl(&["endpoint", "health"])
            .status()
            .is_ok_and(|s| s.success())
    })
    .unwrap();
    // Now it watches on the second member: kill it.
    c.members[1].kill();
    let t = Instant::now();
    ok(0, &["node", "release", "n3"]);
    let (set, _) = next_set(&sets, Duration::from_secs(15), "n3's block gone", |s| {
        !s.iter().any(|l| l.ends_with(&format!(" via {n3}")))
    });
    assert_eq!(
        set,
        [
            format!("10.233.0.0/26 via {n2}"),
            format!("10.234.0.0/26 via {n2}")
        ]
    );
    let took = t.elapsed();
    eprintln!("with the watched member killed, a release reached the watch within {took:?}");
    let _ = watch.kill();
    let _ = watch.wait();
    // The reader goes away: the watch ends (0) though it has nothing more to print.
    let t = Instant::now();
    let o = c.nodes[0]
        .command("sh")
        .env("VE_ALLOC_STORE", c.url(p))
        .env("VE_ALLOC_NODE", "n1")
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .args([
            "-c",
            &format!("{{ {BIN} routes --watch; echo watch exit $? >&2; }} | head -1"),
        ])
        .output()
        .unwrap();
    assert!(
        text(&o.stderr).contains("watch exit 0"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(text(&o.stdout), format!("10.233.0.0/26 via {n2}\n"));
    let took = t.elapsed();
    eprintln!("the watch ended {took:?} after it started, its reader gone after one line");
    assert!(
        took < Duration::from_secs(10),
        "watch outlived its reader: {took:?}"
    );
    let o = c.nodes[0]
        .command(BIN)
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .env("VE_ALLOC_STORE", c.nodes[0].dir().join("sq"))
        .args(["routes", "--watch"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", text(&o.stderr));
}

/// A command run on a node without `--node-address` (a `release` from a shell without
/// the unit's environment) keeps the address the node recorded, so the other nodes go
/// on routing its blocks to it; a new address replaces it.
#[test]
fn a_write_without_node_address_keeps_the_recorded_one() {
    let Some(c) = cluster("a_write_without_node_address_keeps_the_recorded_one") else {
        return;
    };
    let p = "keep";
    let run = |i: usize, args: &[&str], address: Option<&str>| {
        let mut cmd = va(&c, i, p, args);
        match address {
            Some(a) => cmd.env("VE_ALLOC_NODE_ADDRESS", a),
            None => cmd.env_remove("VE_ALLOC_NODE_ADDRESS"),
        };
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    let n2 = c.nodes[1].addr.clone();
    run(1, &["alloc", "a"], Some(&n2));
    run(1, &["alloc", "b"], None);
    run(1, &["release", "a"], None);
    assert_eq!(
        run(0, &["routes"], None),
        format!("10.233.0.0/26 via {n2}\n")
    );
    run(1, &["alloc", "c"], Some("198.51.100.99"));
    assert_eq!(
        run(0, &["routes"], None),
        "10.233.0.0/26 via 198.51.100.99\n"
    );
}

/// With an IPv6 pool, a node known by an IPv4 address has IPv6 blocks no route can go
/// to: `routes` leaves them out with a warning (ve-link would refuse the whole set),
/// and prints the IPv6 blocks of a node whose address is IPv6.
#[test]
fn routes_leave_out_blocks_of_the_other_family_than_the_node_address() {
    let Some(c) = cluster("routes_leave_out_blocks_of_the_other_family_than_the_node_address")
    else {
        return;
    };
    let p = "dual";
    let alloc = |i: usize, name: &str, address: &str| {
        let o = va(&c, i, p, &["alloc", name])
            .env("VE_ALLOC_POOL6", "fd42::/64")
            .env("VE_ALLOC_NODE_ADDRESS", address)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    };
    // No node has blocks yet: the empty set is a blank line, never nothing.
    let o = va(&c, 0, p, &["routes"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "\n");
    let n2 = c.nodes[1].addr.clone();
    alloc(1, "v4", &n2);
    let o = va(&c, 0, p, &["routes"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), format!("10.233.0.0/26 via {n2}\n"));
    assert!(
        text(&o.stderr).contains("fd42::/122"),
        "{}",
        text(&o.stderr)
    );
    alloc(2, "v6", "2001:db8::13");
    let o = va(&c, 0, p, &["routes"]).output().unwrap();
    assert_eq!(
        text(&o.stdout),
        format!("10.233.0.0/26 via {n2}\nfd42::40/122 via 2001:db8::13\n")
    );
}

/// Standard base64, as the gateway's JSON carries keys.
fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(A[((n >> (18 - 6 * i)) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// The lease names of a listing.
fn names_of(leases: &[Value]) -> Vec<String> {
    leases
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

/// A `node release` that fails partway (every request about one lease dropped on the
/// wire, so that lease's release runs out of --wait) has printed each lease it released
/// before: its output is exactly the leases gone from etcd, and it exits with the
/// failure's code. The same with --json.
#[test]
fn a_node_release_that_fails_partway_prints_the_leases_it_released() {
    let Some(c) = cluster("a_node_release_that_fails_partway_prints_the_leases_it_released") else {
        return;
    };
    for (p, json) in [("relcut", false), ("relcutj", true)] {
        let names: Vec<String> = (0..10).map(|k| format!("r{k}")).collect();
        let mut args = vec!["alloc", "--json"];
        args.extend(names.iter().map(String::as_str));
        let o = va(&c, 1, p, &args).output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        // Leases are released in name order; r6's key, quoted, is in every request
        // about it and in no other.
        let key = format!("\"{}\"", b64(format!("/{p}/lease/r6").as_bytes()));
        let cut = Cut::new(&c, 2, &key);
        let mut args = vec!["--wait", "3", "node", "release", "n2"];
        if json {
            args.insert(0, "--json");
        }
        let o = va(&c, 2, p, &args).output().unwrap();
        assert!(
            matches!(o.status.code(), Some(69 | 75)),
            "{:?}: {}",
            o.status,
            text(&o.stderr)
        );
        assert!(cut.dropped() > 0, "the cut dropped nothing");
        let printed: Vec<String> = text(&o.stdout)
            .lines()
            .map(|l| {
                if json {
                    let v: Value = serde_json::from_str(l).unwrap();
                    v["name"].as_str().unwrap().to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        // Read from n1, whose requests the cut never sees.
        let left = names_of(&list(&c, 0, p));
        let gone: Vec<String> = names
            .iter()
            .filter(|n| !left.contains(n))
            .cloned()
            .collect();
        assert_eq!(printed, gone, "printed vs gone from etcd (left: {left:?})");
        assert_eq!(gone, names[..6], "released up to the cut");
        // The rule is never taken away: the kernel would still deliver the dropped
        // request once it went.
    }
}

/// `alloc` of 200 names and `import` of 200 files, far more than one etcd transaction
/// takes (128 compares or writes), work on etcd as on SQLite, with the same output and
/// exit codes: again (idempotent), with long names and an IPv6 pool (the most
/// operations per name), and an import whose last file conflicts, which records
/// nothing on either store.
#[test]
fn alloc_and_import_of_200_names_match_the_sqlite_store() {
    let Some(c) = cluster("alloc_and_import_of_200_names_match_the_sqlite_store") else {
        return;
    };
    let dir = TempDir::new("va-etcd-many");
    let conf = |name: &str, files: &[(String, String, String)]| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for (f, h, l) in files {
            std::fs::write(
                d.join(format!("{f}.conf")),
                format!("HOST_ADDRESS={h}\nLOCAL_ADDRESS={l}\n"),
            )
            .unwrap();
        }
        d.display().to_string()
    };
    let pair = |net: u32, k: u32| {
        let h = format!("10.233.{}.{}", net + k / 100, 2 * (k % 100) + 2);
        let l = format!("10.233.{}.{}", net + k / 100, 2 * (k % 100) + 3);
        (h, l)
    };
    let files: Vec<(String, String, String)> = (0..200)
        .map(|k| {
            let (h, l) = pair(100, k);
            (format!("imp{k:03}"), h, l)
        })
        .collect();
    let imp = conf("imp", &files);
    // 199 good files, then one whose host address big000 holds.
    let mut files: Vec<(String, String, String)> = (0..199)
        .map(|k| {
            let (h, l) = pair(120, k);
            (format!("bad{k:03}"), h, l)
        })
        .collect();
    files.push(("zz".into(), "10.233.0.2".into(), "10.233.130.3".into()));
    let bad = conf("bad", &files);
    let names = |tag: &str| -> Vec<String> { (0..200).map(|k| format!("{tag}{k:03}")).collect() };
    let (big, long) = (names("big"), names("a-rather-long-name-"));
    // A generous --wait: a loaded CI machine may answer slowly.
    let mut alloc = vec!["--wait", "60", "alloc", "--json"];
    alloc.extend(big.iter().map(String::as_str));
    let mut alloc6 = vec!["--wait", "60", "--pool6", "fd42:ee::/64", "alloc", "--json"];
    alloc6.extend(long.iter().map(String::as_str));
    let steps: Vec<Vec<&str>> = vec![
        alloc.clone(),
        alloc,
        alloc6.clone(),
        alloc6,
        vec!["list"],
        vec!["--wait", "60", "import", &imp],
        vec!["--wait", "60", "import", &imp],
        vec!["--wait", "60", "import", &bad],
        vec!["list", "--json"],
    ];
    let t = Instant::now();
    compare(&c, &dir.path().join("store"), "many200", &steps);
    eprintln!("{} steps on both stores in {:?}", steps.len(), t.elapsed());
    assert_eq!(list(&c, 0, "many200").len(), 600);
}

/// `alloc NAME...` cut off partway on etcd (every request about one name dropped on
/// the wire, after the first transaction committed) fails with nothing printed and
/// keeps the leases of the committed transaction; the same command again leases the
/// rest and prints what the SQLite store prints for it in one go.
#[test]
fn alloc_of_many_names_failing_partway_is_finished_by_running_it_again() {
    let Some(c) = cluster("alloc_of_many_names_failing_partway_is_finished_by_running_it_again")
    else {
        return;
    };
    let p = "again";
    let names: Vec<String> = (0..60).map(|k| format!("x{k:02}")).collect();
    let mut args = vec!["--wait", "3", "alloc", "--json"];
    args.extend(names.iter().map(String::as_str));
    let key = format!("\"{}\"", b64(format!("/{p}/lease/x50").as_bytes()));
    let cut = Cut::new(&c, 0, &key);
    let o = va(&c, 0, p, &args).output().unwrap();
    assert!(
        matches!(o.status.code(), Some(69 | 75)),
        "{:?}: {}",
        o.status,
        text(&o.stderr)
    );
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
    assert!(cut.dropped() > 0, "the cut dropped nothing");
    let kept = names_of(&list(&c, 1, p));
    assert!(
        !kept.is_empty() && kept.len() < 50 && kept == names[..kept.len()],
        "kept {kept:?}"
    );
    // What was dropped was a read: nothing arrives late that could change the store.
    cut.heal();
    let o = va(&c, 0, p, &args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let dir = TempDir::new("va-etcd-again");
    let sq = c.nodes[0]
        .command(BIN)
        .env("VE_ALLOC_STORE", dir.path().join("store"))
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .env_remove("VE_ALLOC_POOL")
        .env_remove("VE_ALLOC_POOL6")
        .args(&args)
        .output()
        .unwrap();
    assert!(sq.status.success(), "{}", text(&sq.stderr));
    assert_eq!(text(&o.stdout), text(&sq.stdout));
    assert_eq!(names_of(&list(&c, 1, p)), names);
}

/// Member `m`'s metrics (`GET /metrics`, asked from node 1): each sample's value by its
/// name with labels.
fn metrics(c: &Cluster, m: usize) -> HashMap<String, f64> {
    use std::io::{Read, Write};
    let ep = c.members[m].endpoint();
    let text = testbed::in_netns(&c.nodes[0].ns.path(), move || {
        let mut s = std::net::TcpStream::connect(&ep)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {ep}\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        std::io::Result::Ok(text)
    })
    .unwrap()
    .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0.0)))
        .collect()
}

/// The sum of the samples of metric `name` whose labels contain `label`.
fn sum(m: &HashMap<String, f64>, name: &str, label: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
        .map(|(_, v)| v)
        .sum()
}

/// The first attempt of a write reads serializably: the member asked answers from what
/// it applied, without the leader. Here that member lags: a filter in its namespace
/// holds back everything the leader sends it while the node leases `c` through the
/// leader. The node's next allocation, through the lagging member, is served its reads
/// at once (a linearizable read would wait for the leader: the member's range counter
/// would not move), chooses `c`'s pair from its stale view, loses that commit on the
/// compare and, reading linearizably, commits the next free pair: unique and the one
/// SQLite's round robin gives. Then `a` is released through the leader while the member
/// lags again: `alloc a` through it must not print the stale lease (its first attempt
/// has nothing to write, so it reads again linearizably) but a new, committed one.
#[test]
fn a_write_reads_from_a_lagging_member_and_still_commits_a_free_unique_pair() {
    let test = "a_write_reads_from_a_lagging_member_and_still_commits_a_free_unique_pair";
    if !testbed::privileged(test, &["ip", "unshare", "etcd", "etcdctl", "iptables"]) {
        return;
    }
    // Members stand for election after 5 s without the leader, not etcd's default 1 s:
    // the hold below stays well under that on a loaded machine.
    let c = Cluster::start_with_args(
        3,
        3,
        &["--heartbeat-interval", "100", "--election-timeout", "5000"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let p = "lag";
    let t = Instant::now();
    let leader = loop {
        if let Some(l) = c.leader() {
            break l;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no leader");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (lag, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let via = |order: &[usize], args: &[&str]| {
        let eps: Vec<String> = order.iter().map(|m| c.members[*m].endpoint()).collect();
        let mut cmd = va(&c, 0, p, args);
        cmd.env("VE_ALLOC_STORE", format!("etcd://{}/{p}", eps.join(",")));
        cmd
    };
    let ok = |mut cmd: Command| {
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{cmd:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    let lagging_first = [lag, leader, other];
    let a = env(&ok(via(&lagging_first, &["alloc", "a"])));
    ok(via(&lagging_first, &["alloc", "b"]));
    let hold = |op: &str| {
        let o = c.members[lag]
            .ns
            .command("iptables")
            .args([op, "INPUT", "-s", &c.members[leader].addr, "-j", "DROP"])
            .output()
            .unwrap();
        assert!(o.status.success(), "iptables {op}: {o:?}");
    };
    let in_flight = |m: &HashMap<String, f64>| {
        sum(m, "grpc_server_started_total", "grpc_method=\"Txn\"")
            - sum(m, "grpc_server_handled_total", "grpc_method=\"Txn\"")
    };
    // `first` through the leader while the lagging member hears nothing from it, then
    // `args` through the lagging member until that member keeps one of its requests
    // waiting (or it exits); then the member hears the leader again. Returns the
    // outputs of both, the ranges the lagging member served `args` meanwhile and the
    // quorum writes `args` made. The hold must stay under the election timeout (5 s
    // here), or the lagging member would stand for election; what need not be inside
    // it (the lagging member's counters before) is done first.
    let lagging = |first: &[&str], args: &[&str]| {
        let m0 = metrics(&c, lag);
        hold("-I");
        let held = Instant::now();
        let before = env(&ok(via(&[leader], first)));
        let p0 = metrics(&c, leader);
        let mut child = via(&lagging_first, &[&["--wait", "10"], args].concat())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A request seen in flight may be a read about to be served: wait for one kept
        // waiting after the reads were served (a serializable view: two ranges at least),
        // or the hold's end (a linearizable read waits for the leader: none served).
        let served =
            |m: &HashMap<String, f64>| m["etcd_mvcc_range_total"] - m0["etcd_mvcc_range_total"];
        let m1 = loop {
            let m = metrics(&c, lag);
            if (in_flight(&m) >= 1.0 && served(&m) >= 2.0)
                || child.try_wait().unwrap().is_some()
                || held.elapsed() > Duration::from_secs(4)
            {
                break m;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        hold("-D");
        let held = held.elapsed();
        let ranges = served(&m1);
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        let writes = metrics(&c, leader)["etcd_server_proposals_committed_total"]
            - p0["etcd_server_proposals_committed_total"];
        eprintln!(
            "{args:?}: held {held:?}; the lagging member served {ranges} ranges before \
             the leader was heard again; {writes} quorum writes"
        );
        (before, env(&text(&o.stdout)), ranges, writes)
    };
    let (lc, ld, ranges, writes) = lagging(&["alloc", "c"], &["alloc", "d"]);
    assert!(
        ranges >= 2.0,
        "the lagging member served d's reads only through the leader ({ranges} ranges)"
    );
    assert!(
        writes >= 2.0,
        "d's first commit did not lose: its read was not stale ({writes} quorum writes)"
    );
    let next = |a: &str| {
        let a: std::net::Ipv4Addr = a.parse().unwrap();
        std::net::Ipv4Addr::from(u32::from(a) + 2).to_string()
    };
    assert_eq!(
        ld["HOST_ADDRESS"],
        next(&lc["HOST_ADDRESS"]),
        "d: {ld:?}, c: {lc:?}"
    );
    assert_eq!(ld["LOCAL_ADDRESS"], next(&lc["LOCAL_ADDRESS"]), "d: {ld:?}");
    // a's lease is released through the leader; the lagging member still holds it.
    let (_, la, _, _) = lagging(&["release", "a"], &["alloc", "a"]);
    assert_ne!(
        la["HOST_ADDRESS"], a["HOST_ADDRESS"],
        "alloc a printed the released lease"
    );
    assert_eq!(
        la["HOST_ADDRESS"],
        next(&ld["HOST_ADDRESS"]),
        "a: {la:?}, d: {ld:?}"
    );
    let leases = list(&c, 2, p);
    assert_eq!(leases.len(), 4, "{leases:?}");
    assert_unique(&leases);
    for (name, l) in [("d", &ld), ("a", &la)] {
        let listed = leases.iter().find(|x| x["name"] == name).unwrap();
        assert_eq!(
            listed["host_address"].as_str(),
            Some(l["HOST_ADDRESS"].as_str())
        );
        assert_eq!(
            listed["local_address"].as_str(),
            Some(l["LOCAL_ADDRESS"].as_str())
        );
    }
}

/// `--wait 0` bounds waiting for other writers, not the recheck of a first attempt
/// that read serializably: an existing lease, a release of nothing and an interface-name
/// clash end as on SQLite (0, 0, 65), not with 75.
#[test]
fn wait_0_rechecks_what_a_serializable_attempt_decided_and_matches_sqlite() {
    let Some(c) = cluster("wait_0_rechecks_what_a_serializable_attempt_decided_and_matches_sqlite")
    else {
        return;
    };
    let dir = TempDir::new("va-etcd-wait0");
    // These two shorten to the same interface name (common::name pins the pair).
    let (x, y) = ("abc10eeb871e86d1243", "abcf567240c36315443");
    let w = |args: &[&'static str]| [&["--wait", "0"], args].concat();
    let steps: Vec<Vec<&str>> = vec![
        w(&["alloc", "a"]),
        w(&["alloc", "a"]),
        w(&["alloc", "a", "--json"]),
        w(&["release", "nothere"]),
        w(&["alloc", x]),
        w(&["alloc", y]),
        w(&["alloc", "--json", "b", y]),
        w(&["release", "a"]),
        w(&["release", "a"]),
        vec!["list", "--json"],
    ];
    // (A request's first try has at least 1 s, whatever is left of --wait.)
    compare(&c, &dir.path().join("store"), "wait0", &steps);
}

/// Bad input changes nothing, also when `alloc NAME...` takes several etcd
/// transactions: 60 names whose last one would get the interface name of the third,
/// or of a name leased before, are refused (65) with nothing kept, as on SQLite.
#[test]
fn alloc_of_many_names_with_an_interface_name_clash_at_the_end_keeps_nothing() {
    let Some(c) =
        cluster("alloc_of_many_names_with_an_interface_name_clash_at_the_end_keeps_nothing")
    else {
        return;
    };
    let dir = TempDir::new("va-etcd-clash");
    // These two shorten to the same interface name (common::name pins the pair).
    let (x, y) = ("abc10eeb871e86d1243", "abcf567240c36315443");
    let mut names: Vec<String> = (0..58).map(|k| format!("k{k:02}")).collect();
    names.insert(2, x.to_string());
    names.push(y.to_string());
    let mut among = vec!["alloc", "--json"];
    among.extend(names.iter().map(String::as_str));
    // The same without x, leased by itself first.
    let mut stored = vec!["alloc", "--json"];
    stored.extend(names.iter().map(String::as_str).filter(|n| *n != x));
    let steps: Vec<Vec<&str>> = vec![
        among.clone(),
        vec!["list"],
        vec!["alloc", x],
        stored.clone(),
        vec!["list"],
    ];
    compare(&c, &dir.path().join("store"), "clash", &steps);
    for args in [&among, &stored] {
        let o = va(&c, 0, "clash", args).output().unwrap();
        assert_eq!(o.status.code(), Some(65), "{}", text(&o.stderr));
        assert!(o.stdout.is_empty());
    }
    assert_eq!(names_of(&list(&c, 1, "clash")), [x]);
}

/// A node whose record lists many blocks another node owns (as after `node release`
/// cut off, then the blocks claimed by others) still allocates: the owner of each block
/// a transaction drops from the record is compared at its commit, and etcd allows 128
/// compares per transaction, so it drops 8 per transaction (the later ones start from
/// its cursor, in its own block, and drop none); a claim (which compares the record
/// instead) drops them all.
#[test]
fn a_record_listing_many_blocks_given_away_drops_them_within_etcds_limit() {
    let Some(c) = cluster("a_record_listing_many_blocks_given_away_drops_them_within_etcds_limit")
    else {
        return;
    };
    // Under `p`: 150 blocks n2 owns, then (with `own`) one n1 owns; n1's record lists
    // them all.
    let seed = |p: &str, own: bool| {
        let blocks: Vec<String> = (0..151u32)
            .map(|k| {
                format!(
                    "{:08x}",
                    u32::from(std::net::Ipv4Addr::new(10, 233, 0, 0)) + 64 * k
                )
            })
            .collect();
        for (n, chunk) in blocks.chunks(76).enumerate() {
            let mut input = String::from("\n");
            for (k, b) in chunk.iter().enumerate() {
                let owner = if own && n * 76 + k == 150 { "n1" } else { "n2" };
                if owner == "n1" || n * 76 + k < 150 {
                    input.push_str(&format!("put /{p}/block/4/{b} {owner}\n"));
                }
            }
            input.push_str("\n\n");
            let o = testbed::output_with_stdin(&mut c.etcdctl(&["txn"]), input.as_bytes());
            assert!(
                o.status.success() && text(&o.stdout).starts_with("SUCCESS"),
                "etcdctl txn: {o:?}"
            );
        }
        let listed: Vec<String> = blocks[..if own { 151 } else { 150 }]
            .iter()
            .map(|b| format!("\"4/{b}\""))
            .collect();
        let record = format!(
            "{{\"address\":\"{}\",\"blocks\":[{}]}}",
            c.nodes[0].addr,
            listed.join(",")
        );
        for (k, v) in [
            (format!("/{p}/node/n1"), record),
            (format!("/{p}/meta/block-bits/4"), "6".to_string()),
        ] {
            let o = c.etcdctl(&["put", &k, &v]).output().unwrap();
            assert!(o.status.success(), "etcdctl put: {o:?}");
        }
    };
    let listed = |p: &str| {
        let o = c
            .etcdctl(&["get", "--print-value-only", &format!("/{p}/node/n1")])
            .output()
            .unwrap();
        let record: Value = serde_json::from_slice(&o.stdout).unwrap();
        record["blocks"].as_array().unwrap().len()
    };
    for (p, own, left) in [("ownlast", true, 151 - 8), ("claims", false, 1)] {
        seed(p, own);
        let o = va(&c, 0, p, &["--wait", "20", "alloc", "x"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{p}: {}", text(&o.stderr));
        // The first pair of the block after the 150 n2 owns.
        assert_eq!(
            env(&text(&o.stdout))["HOST_ADDRESS"],
            "10.233.37.128",
            "{p}"
        );
        let o = va(&c, 0, p, &["--wait", "20", "alloc", "--json", "y", "z"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{p}: {}", text(&o.stderr));
        assert_eq!(listed(p), left, "{p}: blocks left in n1's record");
        assert_unique(&list(&c, 1, p));
    }
}
