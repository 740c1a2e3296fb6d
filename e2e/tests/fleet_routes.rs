//! Containers on three nodes of a fleet reach each other without NAT through the routes
//! `ve-alloc routes | ve-link routes --from -` installs: a real 3-member etcd cluster and
//! three node namespaces on a sandbox LAN (testbed::etcd), a real `ve-link up` of a
//! container namespace on each node, forwarding on. Then `ve-alloc routes --watch |
//! ve-link routes --from - --follow` keeps node 1's routes current as node 3 claims a
//! block and is released.

mod support;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use testbed::{etcd::Cluster, http_get, http_get_within, HttpServer, Netns, Sandbox};

struct Fleet {
    // Dropped first: the follower and servers before the namespaces they run in.
    follower: Option<Child>,
    servers: Vec<HttpServer>,
    ctrs: Vec<Netns>,
    _ctr_sandbox: Sandbox,
    c: Cluster,
    tools: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(mut f) = self.follower.take() {
            let _ = f.kill();
            let _ = f.wait();
        }
    }
}

impl Fleet {
    /// `sh -c SCRIPT` on node `i`, with `$VA` and `$VL` the tools and ve-alloc's
    /// settings for this node in the environment.
    fn sh(&self, i: usize, script: &str) -> Command {
        let n = &self.c.nodes[i];
        let mut cmd = n.command("sh");
        cmd.env("VA", self.tools.join("ve-alloc"))
            .env("VL", self.tools.join("ve-link"))
            .env("VE_ALLOC_STORE", self.c.url("fleet"))
            .env("VE_ALLOC_NODE", &n.name)
            .env("VE_ALLOC_NODE_ADDRESS", &n.addr)
            .env("VE_ALLOC_CONFIG", "/dev/null")
            .env_remove("VE_ALLOC_POOL")
            .env_remove("VE_ALLOC_POOL6")
            .args(["-c", script]);
        cmd
    }

    #[track_caller]
    fn ok(&self, i: usize, script: &str) -> String {
        let o = self.sh(i, script).output().expect("running sh");
        assert!(
            o.status.success(),
            "node {}: {script}: {}\n{}",
            i + 1,
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Node `i`'s routes of protocol 118, one per line as `ip route` prints them.
    fn routes(&self, i: usize) -> String {
        self.c.nodes[i].ns.ip(&["route", "show", "proto", "118"])
    }

    /// Wait until node `i`'s routes satisfy `f`; how long that took.
    #[track_caller]
    fn until(&self, i: usize, what: &str, f: impl Fn(&str) -> bool) -> Duration {
        let t = Instant::now();
        loop {
            let r = self.routes(i);
            if f(&r) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "node {}: {what} not within 5 s; routes:\n{r}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn fleet(test: &str) -> Option<(Fleet, Vec<IpAddr>)> {
    if !testbed::privileged(test, &["ip", "unshare", "etcd", "etcdctl", "sysctl"]) {
        return None;
    }
    let tools = support::tools_dir();
    let c = Cluster::start(3, 3).unwrap_or_else(|e| panic!("{e}"));
    let mut sb = Sandbox::new();
    let ctrs: Vec<Netns> = (1..=3).map(|n| sb.netns(&format!("c{n}"))).collect();
    let mut f = Fleet {
        follower: None,
        servers: Vec::new(),
        ctrs,
        _ctr_sandbox: sb,
        c,
        tools,
    };
    let mut addrs = Vec::new();
    for i in 0..3 {
        let ctr = f.ctrs[i].clone();
        f.c.nodes[i]
            .ns
            .command("sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"])
            .status()
            .expect("sysctl");
        f.ok(
            i,
            &format!(
                "$VA alloc c{n} | $VL up c{n} --netns {ns} --addresses - >/dev/null",
                n = i + 1,
                ns = ctr.name()
            ),
        );
        let ip: IpAddr = f
            .ok(i, &format!("$VA show-ip c{}", i + 1))
            .trim()
            .parse()
            .expect("show-ip prints an address");
        // Answers with the peer address it saw: the caller's own when nothing NATs.
        f.servers.push(
            HttpServer::start(&ctr.path(), SocketAddr::new(ip, 80), |peer| {
                peer.ip().to_string()
            })
            .expect("server in the container"),
        );
        addrs.push(ip);
    }
    Some((f, addrs))
}

#[test]
fn containers_on_three_nodes_reach_each_other_through_the_routes_and_follow_changes() {
    let Some((mut f, addrs)) =
        fleet("containers_on_three_nodes_reach_each_other_through_the_routes_and_follow_changes")
    else {
        return;
    };
    let from = f.ctrs[0].path();
    // Each node leased from a block of its own.
    let nets: Vec<String> = addrs
        .iter()
        .map(|a| match a {
            IpAddr::V4(v) => format!("{}", u32::from(*v) >> 6),
            IpAddr::V6(_) => panic!("IPv4 pool"),
        })
        .collect();
    assert!(
        nets[0] != nets[1] && nets[1] != nets[2] && nets[0] != nets[2],
        "{addrs:?}"
    );

    // Before the routes: node 1 has no way to the other nodes' containers.
    for a in &addrs[1..] {
        let r = http_get(&from, SocketAddr::new(*a, 80), Duration::from_secs(1));
        assert!(r.is_err(), "{a} reachable without routes: {r:?}");
    }

    for i in 0..3 {
        f.ok(i, "$VA routes | $VL routes --from -");
    }
    let (n1, n2, n3) = (&f.c.nodes[0].addr, &f.c.nodes[1].addr, &f.c.nodes[2].addr);
    let r1 = f.routes(0);
    assert!(
        r1.contains(&format!(" via {n2} ")) && r1.contains(&format!(" via {n3} ")),
        "{r1}"
    );
    assert!(!r1.contains(&format!(" via {n1} ")), "{r1}");
    // ve-link's own route to its container is still there, beside the node routes.
    assert!(r1.contains(&format!("{} dev ve-c1 ", addrs[0])), "{r1}");
    for a in &addrs[1..] {
        let seen = http_get_within(&from, SocketAddr::new(*a, 80), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{a} from c1: {e}\nnode 1:\n{r1}"));
        assert_eq!(seen.trim(), addrs[0].to_string(), "{a} saw another address");
    }
    // Idempotent: the same set again changes nothing.
    f.ok(0, "$VA routes | $VL routes --from -");
    assert_eq!(f.routes(0), r1);

    // Following: node 3 claims a block of another pool, then is released.
    let follower = f
        .sh(
            0,
            "exec $VA routes --watch | $VL -v routes --from - --follow",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the follower");
    f.follower = Some(follower);
    // The follower's first set is the one already in place.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.routes(0), r1);
    f.ok(2, "VE_ALLOC_POOL=10.234.0.0/16 $VA alloc extra >/dev/null");
    let new = format!("10.234.0.0/26 via {n3} ");
    let took = f.until(0, "node 3's new block", |r| r.contains(&new));
    eprintln!("a block node 3 claimed was routed on node 1 after {took:?}");
    f.ok(1, "$VA node release n3 >/dev/null");
    let took = f.until(0, "node 3's blocks gone", |r| {
        !r.contains(&format!(" via {n3} "))
    });
    eprintln!("node 3's released blocks left node 1's routes after {took:?}");
    let r = f.routes(0);
    assert!(r.contains(&format!(" via {n2} ")), "{r}");
    assert!(r.contains(&format!("{} dev ve-c1 ", addrs[0])), "{r}");
    http_get_within(&from, SocketAddr::new(addrs[1], 80), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("c2 from c1 after the release: {e}"));
}
