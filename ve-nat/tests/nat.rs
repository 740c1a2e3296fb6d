//! ve-nat against real iptables (both backends) with real traffic, in sandbox
//! namespaces: ctr -- host -- out, the tool running in `host`.

use std::{
    io::Read,
    net::{SocketAddr, TcpStream},
    process::{Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use testbed::{
    nat::{
        blocked, fetch, route_loopback_to_host, seen, udp_ask, PeerServer as Server,
        UdpPeerServer as UdpServer,
    },
    privileged, spawn_in, Netns,
};

mod support;

use support::{code, topo::Topo, BIN};

/// nat.rs's own: the iptables backends' tools.
impl Topo {
    /// `iptables-B ARGS` (and `ip6tables-B` with `six`) in the host namespace.
    fn ipt(&self, six: bool, args: &[&str]) {
        let bin = format!(
            "{}-{}",
            if six { "ip6tables" } else { "iptables" },
            self.backend
        );
        let out = self.host.command(&bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{bin} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Both families' rules, as `*-save` prints them, without comments and counters,
    /// tables sorted by name, and without tables that hold nothing (the legacy
    /// backend shows a table once anyone has looked at it: not a rule change).
    fn save(&self) -> String {
        self.save_of(self.backend)
    }

    /// The same for `backend`.
    fn save_of(&self, backend: &str) -> String {
        let mut all = String::new();
        for fam in ["iptables", "ip6tables"] {
            let bin = format!("{fam}-{backend}-save");
            let out = self.host.command(&bin).output().unwrap();
            assert!(out.status.success(), "{bin}");
            let mut tables: Vec<String> = Vec::new();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.starts_with('#') {
                    continue;
                }
                if line.starts_with('*') {
                    tables.push(String::new());
                }
                let line = match line.rfind(" [") {
                    Some(i) if line.starts_with(':') => &line[..i],
                    _ => line,
                };
                if let Some(t) = tables.last_mut() {
                    t.push_str(line);
                    t.push('\n');
                }
            }
            tables.retain(|t| {
                t.lines()
                    .any(|l| l.starts_with("-A") || (l.starts_with(':') && !l.ends_with(" ACCEPT")))
            });
            tables.sort();
            all.push_str(&tables.concat());
            all.push_str("--\n");
        }
        all
    }
}

fn gate(test: &str, backend: &str) -> bool {
    privileged(
        test,
        &[
            "ip",
            &format!("iptables-{backend}"),
            &format!("ip6tables-{backend}"),
        ],
    )
}

/// Each scenario runs once per backend, each in its own namespaces.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn nft() {
                super::$name("nft")
            }
            #[test]
            fn legacy() {
                super::$name("legacy")
            }
        }
    )*};
}

both_backends!(
    masquerade,
    port_forward,
    forward_policy_drop,
    external_ip_snat,
    internal_patterns_and_networks,
    ipv6,
    idempotent_and_down_restores,
    replace_without_gap,
    concurrent_ups,
    injection_rejected,
    external_interface,
    unprivileged,
    lock_not_taken_by_others,
    crash_recovery_random_kills,
    every_source_canonical,
    mixed_backends,
    nft_forward_drop_policy,
    localhost_forward,
    loopback_guard,
    down_best_effort,
    earlier_versions_staging_chains,
);

fn masquerade(b: &'static str) {
    if !gate("masquerade", b) {
        return;
    }
    let mut t = Topo::new(b, 1, false);
    t.forwarding_on();
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    // Negative control: routed, not NATed, the server sees the container.
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "10.233.1.2");

    t.nat_ok(&["up", "--external", "up0"]);
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    assert_eq!(code(&t.nat(&["check", "--external", "up0"])), 0);

    // A container started afterwards: no rule change, and it is NATed too.
    let rules = t.save();
    let c2 = t.add_container();
    assert_eq!(t.save(), rules, "adding a container changed rules");
    assert_eq!(seen(&c2, "192.0.2.2:7777"), "192.0.2.1");

    // JSON Lines: one object per chain and family.
    let lines: Vec<serde_json::Value> = t
        .nat_ok(&["status", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(lines.len() >= 4, "{lines:?}");
    assert!(lines
        .iter()
        .all(|l| l.is_object() && l["chain"].is_string()));
    let post = lines
        .iter()
        .find(|c| c["chain"] == "ve-nat-post" && c["family"] == "ipv4")
        .unwrap();
    assert_eq!(post["forwarding"], true);
    assert_eq!(post["table"], "nat");
    assert_eq!(post["installed"], true);
    assert_eq!(post["jumps"], 1);
    let masq = &post["rules"][0];
    assert!(masq["rule"].as_str().unwrap().ends_with("-j MASQUERADE"));
    // Two connections (one per container), one NAT decision each.
    assert_eq!(masq["packets"], 2, "{post}");
    let table = t.nat_ok(&["status"]);
    assert!(
        table.contains("ve-nat-post") && table.contains("MASQUERADE"),
        "{table}"
    );
}

fn port_forward(b: &'static str) {
    if !gate("port_forward", b) {
        return;
    }
    let t = Topo::new(b, 2, false);
    let _web = Server::start(&t.ctrs[0], "10.233.1.2:80");
    let _r0 = Server::start(&t.ctrs[0], "10.233.1.2:7000");
    let _r1 = Server::start(&t.ctrs[0], "10.233.1.2:7001");
    let _dns = UdpServer::start(&t.ctrs[0], "10.233.1.2:53");
    assert!(blocked(&t.out, "192.0.2.1:8080"), "reachable before up");

    t.nat_ok(&[
        "up",
        "--external",
        "up0",
        "--forward",
        "tcp:8080:10.233.1.2:80",
        "--forward",
        "tcp:9000-9001:10.233.1.2:7000-7001",
        "--forward",
        "udp:5353:10.233.1.2:53",
    ]);
    // From outside: the container sees the real client.
    assert_eq!(fetch(&t.out, "192.0.2.1:8080").unwrap(), "192.0.2.2 80");
    // A shifted range maps one to one.
    assert_eq!(fetch(&t.out, "192.0.2.1:9000").unwrap(), "192.0.2.2 7000");
    assert_eq!(fetch(&t.out, "192.0.2.1:9001").unwrap(), "192.0.2.2 7001");
    // From the host itself, through its own uplink address (OUTPUT DNAT).
    assert_eq!(seen(&t.host, "192.0.2.1:8080"), "192.0.2.1");
    // From another container (hairpin): masqueraded to the host's address on ve-c1,
    // so the reply goes back through the host.
    assert_eq!(seen(&t.ctrs[1], "192.0.2.1:8080"), "10.233.1.1");
    // ... and through the host's address on its own side.
    assert_eq!(seen(&t.ctrs[1], "10.233.2.1:8080"), "10.233.1.1");
    // The container itself, through the host.
    assert!(fetch(&t.ctrs[0], "192.0.2.1:8080").is_ok());
    // UDP from outside.
    assert_eq!(udp_ask(&t.out, "192.0.2.1:5353").unwrap(), "192.0.2.2");
    // And through the host's loopback (localhost forwards, on by default).
    assert_eq!(seen(&t.host, "127.0.0.1:8080"), "10.233.1.1");
}

fn forward_policy_drop(b: &'static str) {
    if !gate("forward_policy_drop", b) {
        return;
    }
    let t = Topo::new(b, 1, false);
    t.forwarding_on();
    t.ipt(false, &["-P", "FORWARD", "DROP"]);
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    let _web = Server::start(&t.ctrs[0], "10.233.1.2:80");
    assert!(
        blocked(&t.ctrs[0], "192.0.2.2:7777"),
        "DROP policy lets through"
    );

    t.nat_ok(&[
        "up",
        "--external",
        "up0",
        "--forward",
        "tcp:8080:10.233.1.2:80",
    ]);
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    assert_eq!(seen(&t.out, "192.0.2.1:8080"), "192.0.2.2");
    // iptables' own FORWARD policy is handled by ve-nat's accept rules: not flagged.
    let c = [
        "check",
        "--external",
        "up0",
        "--forward",
        "tcp:8080:10.233.1.2:80",
    ];
    assert_eq!(code(&t.nat(&c)), 0);
    // Only ours went: the policy stays DROP after down.
    t.nat_ok(&["down"]);
    assert!(t.save().contains(":FORWARD DROP"));
    assert!(blocked(&t.ctrs[0], "192.0.2.2:7777"));
}

fn external_ip_snat(b: &'static str) {
    if !gate("external_ip_snat", b) {
        return;
    }
    let t = Topo::new(b, 1, false);
    t.host.ip(&["addr", "add", "192.0.2.10/24", "dev", "up0"]);
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    t.nat_ok(&["up", "--external", "up0", "--external-ip", "192.0.2.10"]);
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.10");
    assert_eq!(
        code(&t.nat(&["check", "--external", "up0"])),
        1,
        "check ignores --external-ip"
    );
}

fn internal_patterns_and_networks(b: &'static str) {
    if !gate("internal_patterns_and_networks", b) {
        return;
    }
    let mut t = Topo::new(b, 1, false);
    t.forwarding_on();
    // Containers whose host interfaces do not match ve-+.
    let vb = t.add_container_on("vb-c2");
    let other = t.add_container_on("xy-c3");
    let _srv = Server::start(&t.out, "192.0.2.2:7777");

    t.nat_ok(&["up", "--external", "up0", "--internal", "vb-*"]);
    assert_eq!(seen(&vb, "192.0.2.2:7777"), "192.0.2.1");
    // Only the given pattern: ve-c1 is routed, not NATed, now.
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "10.233.1.2");
    assert_eq!(seen(&other, "192.0.2.2:7777"), "10.233.3.2");

    // By source network instead of by interface.
    t.nat_ok(&["up", "--external", "up0", "--internal-ip", "10.233.3.0/24"]);
    assert_eq!(seen(&other, "192.0.2.2:7777"), "192.0.2.1");
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    assert_eq!(seen(&vb, "192.0.2.2:7777"), "10.233.2.2");
}

fn ipv6(b: &'static str) {
    if !gate("ipv6", b) {
        return;
    }
    let t = Topo::new(b, 1, true);
    t.forwarding_on();
    let _srv = Server::start(&t.out, "[2001:db8::2]:7777");
    let _web = Server::start(&t.ctrs[0], "[fd00:1::2]:80");
    assert_eq!(seen(&t.ctrs[0], "[2001:db8::2]:7777"), "fd00:1::2");

    let args = [
        "--external",
        "up0",
        "--ipv6",
        "--forward",
        "tcp:8080:[fd00:1::2]:80",
    ];
    t.nat_ok(&[&["up"][..], &args].concat());
    // A forwarding host still takes router advertisements on its uplink.
    assert_eq!(
        t.host
            .sh("cat /proc/sys/net/ipv6/conf/up0/accept_ra")
            .trim(),
        "2"
    );
    assert_eq!(seen(&t.ctrs[0], "[2001:db8::2]:7777"), "2001:db8::1");
    assert_eq!(seen(&t.out, "[2001:db8::1]:8080"), "2001:db8::2");
    assert_eq!(seen(&t.host, "[2001:db8::1]:8080"), "2001:db8::1");
    // Documented limit: the kernel never routes the reply to ::1 that arrives on ve-c1.
    assert!(blocked(&t.host, "[::1]:8080"));
    // IPv4 is NATed as well.
    let _srv4 = Server::start(&t.out, "192.0.2.2:7777");
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    assert_eq!(code(&t.nat(&[&["check"][..], &args].concat())), 0);

    // Without --ipv6 the IPv6 rules go again.
    t.nat_ok(&["up", "--external", "up0"]);
    assert_eq!(seen(&t.ctrs[0], "[2001:db8::2]:7777"), "fd00:1::2");
    assert_eq!(code(&t.nat(&["check", "--external", "up0"])), 0);
}

fn idempotent_and_down_restores(b: &'static str) {
    if !gate("idempotent_and_down_restores", b) {
        return;
    }
    let t = Topo::new(b, 1, false);
    // Other programs' rules, before ve-nat.
    t.ipt(
        false,
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "198.51.100.0/24",
            "-o",
            "up0",
            "-j",
            "MASQUERADE",
        ],
    );
    t.ipt(false, &["-N", "other"]);
    t.ipt(false, &["-A", "other", "-i", "foo", "-j", "DROP"]);
    t.ipt(false, &["-I", "FORWARD", "1", "-j", "other"]);
    t.ipt(true, &["-A", "FORWARD", "-i", "foo", "-j", "DROP"]);
    let before = t.save();

    let a = ["--external", "up0", "--forward", "tcp:8080:10.233.1.2:80"];
    t.nat_ok(&[&["up"][..], &a].concat());
    let once = t.save();
    assert_ne!(once, before);
    t.nat_ok(&[&["up"][..], &a].concat());
    assert_eq!(t.save(), once, "second up changed rules");
    assert_eq!(code(&t.nat(&[&["check"][..], &a].concat())), 0);

    // Someone else's rule after ve-nat, then ve-nat with other arguments.
    t.ipt(
        false,
        &["-t", "nat", "-A", "PREROUTING", "-i", "foo", "-j", "ACCEPT"],
    );
    let bb = [
        "--external",
        "up0",
        "--forward",
        "tcp:8080:10.233.1.2:80",
        "--forward",
        "udp:5353:10.233.1.2:53",
        "--internal-ip",
        "10.99.0.0/16",
    ];
    t.nat_ok(&[&["up"][..], &bb].concat());
    assert_eq!(code(&t.nat(&[&["check"][..], &bb].concat())), 0);
    assert_eq!(code(&t.nat(&[&["check"][..], &a].concat())), 1);
    let changed = t.save();
    assert_one_jump_per_hook(&changed);
    assert!(!changed.contains("-new"), "{changed}");
    assert!(changed.contains("-A PREROUTING -i foo -j ACCEPT"));
    assert!(changed.contains("--dport 5353"));

    t.nat_ok(&["down"]);
    assert_eq!(code(&t.nat(&[&["check"][..], &bb].concat())), 1);
    let after = t.save();
    assert!(after.contains("-A PREROUTING -i foo -j ACCEPT"), "{after}");
    assert!(!after.contains("ve-nat"), "{after}");
    t.ipt(
        false,
        &["-t", "nat", "-D", "PREROUTING", "-i", "foo", "-j", "ACCEPT"],
    );
    assert_eq!(
        t.save(),
        before,
        "down did not restore the rules from before up"
    );
    t.nat_ok(&["down"]);
    assert_eq!(t.save(), before);
}

fn replace_without_gap(b: &'static str) {
    if !gate("replace_without_gap", b) {
        return;
    }
    let t = Topo::new(b, 1, false);
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    let a = ["up", "--external", "up0"];
    let bb = [
        "up",
        "--external",
        "up0",
        "--forward",
        "tcp:8080:10.233.1.2:80",
    ];
    t.nat_ok(&a);
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");

    // New connections without pause while `up` replaces the chains back and forth:
    // each NAT decision is taken when a connection starts, so a moment without our
    // masquerade rule would show up as the container's own address.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let client = spawn_in(&t.ctrs[0].path(), move || {
        let addr: SocketAddr = "192.0.2.2:7777".parse().unwrap();
        let mut seen = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(4)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            seen.push(text.split(' ').next().unwrap_or("").to_string());
        }
        seen
    });
    for _ in 0..3 {
        t.nat_ok(&bb);
        t.nat_ok(&a);
    }
    stop.store(true, Ordering::Relaxed);
    let seen = client.join().unwrap();
    assert!(seen.len() >= 10, "only {} connections", seen.len());
    let bad: Vec<&String> = seen.iter().filter(|s| *s != "192.0.2.1").collect();
    assert!(
        bad.is_empty(),
        "{} of {} un-NATed: {bad:?}",
        bad.len(),
        seen.len()
    );
    assert_one_jump_per_hook(&t.save());
}

/// Exactly one jump from each built-in chain ve-nat hooks into.
fn assert_one_jump_per_hook(rules: &str) {
    for hook in ["PREROUTING", "POSTROUTING", "OUTPUT", "FORWARD"] {
        let n = rules
            .lines()
            .filter(|l| l.starts_with(&format!("-A {hook} -j ve-nat-")))
            .count();
        assert_eq!(n, 1, "jumps from {hook}:\n{rules}");
    }
}

fn concurrent_ups(b: &'static str) {
    if !gate("concurrent_ups", b) {
        return;
    }
    let t = Topo::new(b, 0, false);
    let a: &[&str] = &["up", "--external", "up0"];
    let bb: &[&str] = &[
        "up",
        "--external",
        "up0",
        "--forward",
        "tcp:80:10.233.1.2:80",
    ];
    let children: Vec<_> = (0..6)
        .map(|i| {
            t.nat_cmd(if i % 2 == 0 { a } else { bb })
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut checks = [a, bb].map(|args| {
        let mut c = args.to_vec();
        c[0] = "check";
        code(&t.nat(&c))
    });
    checks.sort();
    assert_eq!(checks, [0, 1], "exactly one request is installed");
    assert_one_jump_per_hook(&t.save());
}

fn injection_rejected(b: &'static str) {
    if !gate("injection_rejected", b) {
        return;
    }
    let t = Topo::new(b, 0, false);
    t.ipt(
        false,
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "up0",
            "-j",
            "RETURN",
        ],
    );
    let before = t.save();
    let bad: &[&[&str]] = &[
        &["up", "--external", "eth0 -j ACCEPT"],
        &["up", "--external", "up0", "--internal", "ve- +"],
        &["up", "--external", "up0", "--internal", "ve-\"x+"],
        &["up", "--external", "up0", "--internal", "ve-'x"],
        &["up", "--external", "up0", "--internal", "!ve-+"],
        &["up", "--external", "up0", "--internal", "ve-+ ! -s 1.2.3.4"],
        &[
            "up",
            "--external",
            "up0",
            "--internal-ip",
            "10.0.0.0/8 -j ACCEPT",
        ],
        &[
            "up",
            "--external",
            "up0",
            "--external-ip",
            "192.0.2.1 --random",
        ],
        &[
            "up",
            "--external",
            "up0",
            "--forward",
            "tcp:80:10.233.1.2:80 -j ACCEPT",
        ],
        &[
            "up",
            "--external",
            "up0",
            "--forward",
            "tcp:80:10.233.1.2:80'",
        ],
        &[
            "up",
            "--external",
            "up0",
            "--forward",
            "tcp:8080:[fd00::1]:80",
        ],
        &["up", "--external", "up0", "--mark", "0x2000 -j DROP"],
        // 16 bytes with the wildcard: iptables itself would refuse it mid-way.
        &["up", "--external", "up0", "--internal", "abcdefghijklmno+"],
        // IPv4 written as IPv6: never routed, and not in iptables' -S form.
        &[
            "up",
            "--external",
            "up0",
            "--ipv6",
            "--forward",
            "tcp:80:[::ffff:10.233.1.2]:80",
        ],
        &[
            "up",
            "--external",
            "up0",
            "--ipv6",
            "--forward",
            "tcp:80:[::10.233.1.2]:80",
        ],
        &["check", "--external", "up0 -j DROP"],
    ];
    for args in bad {
        let out = t.nat(args);
        assert_eq!(code(&out), 65, "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("ve-nat: error: "), "{err}");
    }
    assert_eq!(t.save(), before, "a rejected request changed rules");

    // No iptables at all: exit 69, nothing changed.
    let out = t
        .scratch_env(&mut t.host.command("env"))
        .args([
            "PATH=/nonexistent",
            BIN,
            "up",
            "--external",
            "up0",
            "--backend",
            b,
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(t.save(), before);
}

/// The backend that is not `b`.
fn other(b: &str) -> &'static str {
    if b == "nft" {
        "legacy"
    } else {
        "nft"
    }
}

/// The one stderr line of a failed run, `ve-nat: error: ...`.
fn one_error_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("ve-nat: error: "), "{err}");
    err
}

const NOBODY: [&str; 3] = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"];

fn external_interface(b: &'static str) {
    if !gate("external_interface", b) {
        return;
    }
    let t = Topo::new(b, 1, false);
    t.forwarding_on();
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    t.host.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    let before = t.save();

    // A name that is not there: refused, naming the default route's interface.
    let o = t.nat(&["up", "--external", "eth0"]);
    assert_eq!(code(&o), 66);
    let err = one_error_line(&o);
    assert!(
        err.contains("--external eth0") && err.contains("default route is on up0"),
        "{err}"
    );
    assert_eq!(t.save(), before, "a refused up changed rules");

    // auto: the default route's interface.
    t.nat_ok(&["up", "--external", "auto"]);
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    assert_eq!(code(&t.nat(&["check", "--external", "auto"])), 0);
    assert_eq!(code(&t.nat(&["check", "--external", "up0"])), 0);

    // An external interface that goes away after up: check says so.
    t.host.ip(&[
        "link", "add", "eth5", "type", "veth", "peer", "name", "eth6",
    ]);
    t.nat_ok(&["up", "--external", "eth5"]);
    assert_eq!(code(&t.nat(&["check", "--external", "eth5"])), 0);
    t.host.ip(&["link", "del", "eth5"]);
    let o = t.nat(&["check", "--external", "eth5"]);
    assert_eq!(code(&o), 1);
    assert!(one_error_line(&o).contains("eth5"));

    // No default route: auto is refused; an IPv6 one is taken when there is no IPv4 one.
    t.host.ip(&["route", "del", "default"]);
    let before = t.save();
    let o = t.nat(&["up", "--external", "auto"]);
    assert_eq!(code(&o), 66);
    assert!(one_error_line(&o).contains("no default route"));
    assert_eq!(t.save(), before);
    t.host
        .ip(&["addr", "add", "2001:db8::1/64", "dev", "up0", "nodad"]);
    t.host.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8::2",
        "dev",
        "up0",
    ]);
    t.nat_ok(&["up", "--external", "auto"]);
    assert_eq!(code(&t.nat(&["check", "--external", "up0"])), 0);
}

fn unprivileged(b: &'static str) {
    if !gate("unprivileged", b) || !privileged("unprivileged", &["setpriv"]) {
        return;
    }
    let t = Topo::new(b, 0, false);
    t.nat_ok(&["up", "--external", "up0"]);
    let before = t.save();
    for args in [
        &["up", "--external", "up0"][..],
        &["down"],
        &["check", "--external", "up0"],
        &["status"],
        &["status", "--json"],
    ] {
        let o = t
            .scratch_env(&mut t.host.command("setpriv"))
            .args(NOBODY)
            .arg(BIN)
            .args(args)
            .args(["--backend", b])
            .output()
            .unwrap();
        assert_eq!(code(&o), 77, "{args:?}");
        let err = one_error_line(&o);
        assert!(err.contains("permission denied"), "{err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    assert_eq!(t.save(), before);
}

fn lock_not_taken_by_others(b: &'static str) {
    if !gate("lock_not_taken_by_others", b)
        || !privileged("lock_not_taken_by_others", &["setpriv", "perl", "flock"])
    {
        return;
    }
    let t = Topo::new(b, 0, false);
    // The lock of earlier versions, an abstract socket any user could bind, held by
    // nobody.
    let perl = r#"use Socket; socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
        bind($s, pack_sockaddr_un("\0ve-nat/rules-lock")) or die "bind: $!";
        listen($s, 1) or die "listen: $!"; $| = 1; print "bound\n"; sleep 60"#;
    let mut squatter = t
        .host
        .command("setpriv")
        .args(NOBODY)
        .args(["perl", "-e", perl])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    squatter
        .stdout
        .take()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"bound\n");

    let start = std::time::Instant::now();
    t.nat_ok(&["up", "--external", "up0"]);
    // The lock file: root's, and nobody cannot even open it.
    let lock = t.lock_dir().join("lock");
    let md = std::fs::metadata(&lock).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((md.uid(), md.mode() & 0o077), (0, 0), "{:o}", md.mode());
    let o = t
        .host
        .command("setpriv")
        .args(NOBODY)
        .arg("flock")
        .arg("-n")
        .arg(&lock)
        .arg("true")
        .output()
        .unwrap();
    assert!(!o.status.success(), "nobody took the lock");
    t.nat_ok(&[
        "up",
        "--external",
        "up0",
        "--forward",
        "tcp:80:10.233.1.2:80",
    ]);
    t.nat_ok(&["down"]);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );

    // A lock directory others could write (planted files, symlinks): refused.
    let open = t.lockdir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = t
        .nat_cmd(&["up", "--external", "up0"])
        .env("VE_NAT_LOCK_DIR", &open)
        .output()
        .unwrap();
    assert_eq!(code(&o), 78);
    assert!(one_error_line(&o).contains("lock directory"));
    assert!(!open.join("lock").exists());

    // The lock is real: root's holder makes up wait.
    // The holder says when it holds the lock, so a slow start cannot let up in first.
    let mut holder = t
        .host
        .command("flock")
        .arg(&lock)
        .args(["sh", "-c", "echo held; exec sleep 1.5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut held = [0u8; 5];
    holder.stdout.take().unwrap().read_exact(&mut held).unwrap();
    assert_eq!(&held, b"held\n");
    t.nat_ok(&["up", "--external", "up0"]);
    // up could only take the lock once the holder let it go, i.e. had exited.
    assert!(
        holder.try_wait().unwrap().is_some(),
        "up did not wait for the lock held by another process"
    );
    holder.wait().unwrap();
    let _ = squatter.kill();
    let _ = squatter.wait();
}

/// `*-save` text as (table, chain) -> rules, built-in and user chains alike.
fn parse_save(text: &str) -> std::collections::HashMap<(String, String), Vec<String>> {
    let mut out = std::collections::HashMap::new();
    let mut table = String::new();
    for l in text.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(c) = l.strip_prefix(':') {
            let name = c.split(' ').next().unwrap_or("").to_string();
            out.entry((table.clone(), name)).or_insert_with(Vec::new);
        } else if let Some(r) = l.strip_prefix("-A ") {
            let (chain, rule) = r.split_once(' ').unwrap_or((r, ""));
            out.entry((table.clone(), chain.to_string()))
                .or_insert_with(Vec::new)
                .push(rule.to_string());
        }
    }
    out
}

/// ve-nat's chains and the built-in chains that jump to them.
const HOOKS: [(&str, &str, &str); 5] = [
    ("filter", "FORWARD", "ve-nat-fwd"),
    ("filter", "INPUT", "ve-nat-in"),
    ("nat", "PREROUTING", "ve-nat-pre"),
    ("nat", "OUTPUT", "ve-nat-out"),
    ("nat", "POSTROUTING", "ve-nat-post"),
];

/// Every hook jumps to at least one chain of ours, and every chain it jumps to holds
/// one of the complete sets `complete[chain]`.
fn complete_sets_jumped(
    text: &str,
    complete: &std::collections::HashMap<&str, Vec<Vec<String>>>,
) -> Result<(), String> {
    let rules = parse_save(text);
    for (table, hook, ours) in HOOKS {
        let key = (table.to_string(), hook.to_string());
        let targets: Vec<&str> = rules
            .get(&key)
            .map(|v| v.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.strip_prefix("-j "))
            .filter(|c| c.starts_with(ours))
            .collect();
        if targets.is_empty() {
            return Err(format!("{hook} jumps to no {ours}"));
        }
        for c in targets {
            let got = &rules[&(table.to_string(), c.to_string())];
            if !complete[ours].contains(got) {
                return Err(format!("{hook} jumps to {c}, which holds {got:?}"));
            }
        }
    }
    Ok(())
}

fn crash_recovery_random_kills(b: &'static str) {
    if !gate("crash_recovery_random_kills", b) {
        return;
    }
    let t = Topo::new(b, 0, false);
    let reqs: [&[&str]; 3] = [
        &["up", "--external", "up0"],
        &[
            "up",
            "--external",
            "up0",
            "--forward",
            "tcp:8080:10.233.1.2:80",
            "--internal-ip",
            "10.99.0.0/16",
        ],
        &[
            "up",
            "--external",
            "up0",
            "--forward",
            "udp:5353:10.233.1.3:53",
            "--forward",
            "tcp:9000-9001:10.233.1.2:9000-9001",
            "--internal",
            "vb-+",
        ],
    ];
    let save_bin = format!("iptables-{b}-save");
    let raw = |host: &Netns| -> String {
        let o = host.command(&save_bin).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // The complete contents of each chain under each request, as iptables prints them,
    // and how long a changing up takes.
    let mut complete: std::collections::HashMap<&str, Vec<Vec<String>>> =
        std::collections::HashMap::new();
    let mut first_state = String::new();
    // The shortest: with one transaction per table an up is quick, and a kill moment
    // past its end (a load spike while measuring) would kill nothing.
    let mut took = Duration::MAX;
    for (i, r) in reqs.iter().enumerate() {
        let start = std::time::Instant::now();
        t.nat_ok(r);
        took = took.min(start.elapsed());
        let rules = parse_save(&raw(&t.host));
        for (table, _, ours) in HOOKS {
            complete
                .entry(ours)
                .or_default()
                .push(rules[&(table.to_string(), ours.to_string())].clone());
        }
        if i == 0 {
            first_state = t.save();
        }
    }

    // A sampler snapshots the rules without pause while ups are killed at random.
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, host, bin, sets) = (
        stop.clone(),
        t.host.clone(),
        save_bin.clone(),
        complete.clone(),
    );
    let sampler = std::thread::spawn(move || {
        let (mut n, mut bad) = (0, Vec::new());
        while !flag.load(Ordering::Relaxed) {
            let o = host.command(&bin).output().unwrap();
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            n += 1;
            if let Err(e) = complete_sets_jumped(&text, &sets) {
                bad.push(format!("{e}\n{text}"));
            }
        }
        (n, bad)
    });
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    eprintln!("seed {seed}, a changing up takes {took:?}");
    let budget = std::time::Instant::now();
    let mut kills = 0;
    for i in 0..40 {
        // xorshift64: enough randomness for kill moments.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = Duration::from_micros(seed % (took.as_micros() as u64).max(1));
        let mut child = t
            .nat_cmd(reqs[i % 3])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let st = child.wait().unwrap();
        if st.code().is_none() {
            kills += 1;
        }
        if budget.elapsed() > Duration::from_secs(25) {
            eprintln!("stopping after {} ups: time budget", i + 1);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (n, bad) = sampler.join().unwrap();
    eprintln!("{kills} ups killed, {n} snapshots");
    assert!(kills >= 5, "only {kills} ups were killed mid-way");
    assert!(n >= 20, "only {n} snapshots");
    assert!(
        bad.is_empty(),
        "{} of {n} snapshots without a complete set; first: {}",
        bad.len(),
        bad[0]
    );
    // The next up finishes the job: exactly the wanted state, no staging chain.
    t.nat_ok(reqs[0]);
    let end = t.save();
    assert!(!end.contains("-new"), "{end}");
    assert_eq!(end, first_state);
    let mut c = reqs[0].to_vec();
    c[0] = "check";
    assert_eq!(code(&t.nat(&c)), 0);
}

fn every_source_canonical(b: &'static str) {
    if !gate("every_source_canonical", b) {
        return;
    }
    let t = Topo::new(b, 0, true);
    let a = [
        "--external",
        "up0",
        "--ipv6",
        "--internal-ip",
        "0.0.0.0/0",
        "--internal-ip",
        "::/0",
    ];
    t.nat_ok(&[&["up"][..], &a].concat());
    let once = t.save();
    let o = t.nat(&[&["up", "-v"][..], &a].concat());
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("replacing"), "the second up rebuilt: {err}");
    assert_eq!(t.save(), once);
    assert_eq!(code(&t.nat(&[&["check"][..], &a].concat())), 0);
}

fn mixed_backends(b: &'static str) {
    if !gate("mixed_backends", b) || !gate("mixed_backends", other(b)) {
        return;
    }
    let t = Topo::new(b, 0, false);
    let o = other(b);
    let (before, before_o) = (t.save(), t.save_of(o));
    let on = |backend: &str, args: &[&str]| -> Output {
        let out = t.nat_cmd_with(backend, args).output().unwrap();
        eprintln!(
            "ve-nat {args:?} --backend {backend}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        out
    };
    let up = ["up", "--external", "up0"];
    let check = ["check", "--external", "up0"];

    // down with the other backend still removes ours.
    t.nat_ok(&up);
    assert!(on(o, &["down"]).status.success());
    assert_eq!(t.save(), before, "down --backend {o} left the {b} rules");

    // up in one backend, then in the other: they move, with a warning.
    t.nat_ok(&up);
    let out = on(o, &up);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("removing ve-nat's rules from the"), "{err}");
    assert_eq!(t.save(), before, "ve-nat's rules left in {b}");
    assert!(t.save_of(o).contains("ve-nat-post"));
    assert_eq!(code(&on(o, &check)), 0);

    // A chain of ours left in the other backend (by hand, an old version): flagged.
    t.ipt(false, &["-t", "nat", "-N", "ve-nat-pre"]);
    let out = on(o, &check);
    assert_eq!(code(&out), 1);
    let kind = if b == "nft" { "nf_tables" } else { "legacy" };
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{kind} backend")),
        "not flagged"
    );
    // down removes ours from both.
    t.nat_ok(&["down"]);
    assert_eq!(t.save(), before);
    assert_eq!(t.save_of(o), before_o);
}

fn nft_forward_drop_policy(b: &'static str) {
    if !gate("nft_forward_drop_policy", b) || !privileged("nft_forward_drop_policy", &["nft"]) {
        return;
    }
    let t = Topo::new(b, 1, false);
    t.forwarding_on();
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    t.host.sh(
        "nft add table inet filter && nft add chain inet filter forward \
         '{ type filter hook forward priority 0; policy drop; }'",
    );
    let o = t.nat(&["up", "--external", "up0"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning") && err.contains("inet filter forward"),
        "{err}"
    );
    // It really cuts the container off.
    assert!(
        blocked(&t.ctrs[0], "192.0.2.2:7777"),
        "drop policy let through"
    );
    let o = t.nat(&["check", "--external", "up0"]);
    assert_eq!(code(&o), 1);
    assert!(one_error_line(&o).contains("inet filter forward"));
    t.host.sh("nft delete table inet filter");
    assert_eq!(code(&t.nat(&["check", "--external", "up0"])), 0);
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
}

#[test]
fn down_removes_the_tables_it_emptied() {
    if !gate("down_removes_the_tables_it_emptied", "nft")
        || !privileged("down_removes_the_tables_it_emptied", &["nft"])
    {
        return;
    }
    let t = Topo::new("nft", 1, true);
    let ruleset = || t.host.sh("nft list ruleset");
    let a = [
        "--external",
        "up0",
        "--ipv6",
        "--forward",
        "tcp:80:10.233.1.2:80",
    ];
    let before = ruleset();
    t.nat_ok(&[&["up"][..], &a].concat());
    assert_ne!(ruleset(), before);
    t.nat_ok(&["down"]);
    assert_eq!(ruleset(), before, "down left tables behind");
    // A table that holds someone else's rule stays, with it.
    t.ipt(false, &["-A", "FORWARD", "-i", "foo", "-j", "DROP"]);
    let before = ruleset();
    t.nat_ok(&[&["up"][..], &a].concat());
    t.nat_ok(&["down"]);
    assert_eq!(ruleset(), before);
}

fn localhost_forward(b: &'static str) {
    if !gate("localhost_forward", b) {
        return;
    }
    let mut t = Topo::new(b, 2, false);
    let _web = Server::start(&t.ctrs[0], "10.233.1.2:80");
    assert!(blocked(&t.host, "127.0.0.1:8080"), "reachable before up");
    let fwd = ["--external", "up0", "--forward", "tcp:8080:10.233.1.2:80"];
    let no = [&fwd[..], &["--no-localhost"]].concat();
    t.nat_ok(&[&["up"][..], &fwd].concat());
    // Masqueraded to the host's address on ve-c1: the container answers the host.
    assert_eq!(seen(&t.host, "127.0.0.1:8080"), "10.233.1.1");
    assert_eq!(seen(&t.host, "127.0.0.2:8080"), "10.233.1.1");
    // route_localnet on the container interfaces only, never the uplink or `all`.
    assert_eq!(t.route_localnet_on(), ["ve-c1", "ve-c2"]);
    assert_eq!(code(&t.nat(&[&["check"][..], &fwd].concat())), 0);
    assert_eq!(code(&t.nat(&[&["check"][..], &no].concat())), 1);

    // A container made after up: check reads the kernel and sees it; up covers it.
    t.add_container();
    let o = t.nat(&[&["check"][..], &fwd].concat());
    assert_eq!(code(&o), 1);
    assert!(one_error_line(&o).contains("ve-c3.route_localnet"));
    t.nat_ok(&[&["up"][..], &fwd].concat());
    assert_eq!(t.route_localnet_on(), ["ve-c1", "ve-c2", "ve-c3"]);

    // --no-localhost: off again, the forward itself still works.
    t.nat_ok(&[&["up"][..], &no].concat());
    assert!(
        blocked(&t.host, "127.0.0.1:8080"),
        "--no-localhost forwarded"
    );
    assert!(
        t.route_localnet_on().is_empty(),
        "{:?}",
        t.route_localnet_on()
    );
    assert_eq!(seen(&t.host, "192.0.2.1:8080"), "192.0.2.1");
    assert_eq!(code(&t.nat(&[&["check"][..], &no].concat())), 0);
    assert_eq!(code(&t.nat(&[&["check"][..], &fwd].concat())), 1);

    // down leaves no route_localnet on, and loopback unforwarded.
    t.nat_ok(&[&["up"][..], &fwd].concat());
    assert_eq!(seen(&t.host, "127.0.0.1:8080"), "10.233.1.1");
    t.nat_ok(&["down"]);
    assert!(
        t.route_localnet_on().is_empty(),
        "{:?}",
        t.route_localnet_on()
    );
    assert!(blocked(&t.host, "127.0.0.1:8080"));

    // Other --internal patterns: route_localnet follows them, off where only the last
    // up's matched, and down leaves none on.
    t.add_container_on("vb-c4");
    let vb = [&["--internal", "vb-*"][..], &fwd].concat();
    t.nat_ok(&[&["up"][..], &vb].concat());
    assert_eq!(t.route_localnet_on(), ["vb-c4"]);
    t.nat_ok(&[&["up"][..], &fwd].concat());
    assert_eq!(t.route_localnet_on(), ["ve-c1", "ve-c2", "ve-c3"]);
    t.nat_ok(&[&["up"][..], &vb].concat());
    assert_eq!(t.route_localnet_on(), ["vb-c4"]);
    t.nat_ok(&["down"]);
    assert!(
        t.route_localnet_on().is_empty(),
        "{:?}",
        t.route_localnet_on()
    );
}

fn loopback_guard(b: &'static str) {
    if !gate("loopback_guard", b) {
        return;
    }
    let t = Topo::new(b, 1, false);
    t.forwarding_on();
    // A service of the host's that listens on loopback only.
    let _private = Server::start(&t.host, "127.0.0.1:9999");
    let ctr = &t.ctrs[0];
    route_loopback_to_host(ctr, "10.233.1.1");
    assert!(
        blocked(ctr, "127.0.0.1:9999"),
        "reachable with route_localnet off"
    );
    // The hole: route_localnet on the host's side of the veth, no guard.
    t.host
        .sh("echo 1 > /proc/sys/net/ipv4/conf/ve-c1/route_localnet");
    assert_eq!(
        seen(ctr, "127.0.0.1:9999"),
        "10.233.1.2",
        "the hole is not open"
    );
    t.host
        .sh("echo 0 > /proc/sys/net/ipv4/conf/ve-c1/route_localnet");

    let fwd = ["--external", "up0", "--forward", "tcp:8080:10.233.1.2:80"];
    t.nat_ok(&[&["up"][..], &fwd].concat());
    assert_eq!(t.route_localnet("ve-c1"), Some(true));
    assert!(
        blocked(ctr, "127.0.0.1:9999"),
        "a container reached the host's loopback"
    );
    // It is the guard that blocks: without it the hole is open again.
    let guard = "-d 127.0.0.0/8 ! -i lo -m conntrack ! --ctstate DNAT -j DROP";
    let save = t.save();
    assert!(save.contains(&format!("-A ve-nat-in {guard}")), "{save}");
    let del: Vec<&str> = ["-D", "ve-nat-in"]
        .into_iter()
        .chain(guard.split(' '))
        .collect();
    t.ipt(false, &del);
    assert_eq!(seen(ctr, "127.0.0.1:9999"), "10.233.1.2");
    t.nat_ok(&[&["up"][..], &fwd].concat());
    assert!(blocked(ctr, "127.0.0.1:9999"));

    // The guard stays with --no-localhost, for a route_localnet set by someone else.
    t.nat_ok(&[&["up"][..], &fwd, &["--no-localhost"]].concat());
    t.host
        .sh("echo 1 > /proc/sys/net/ipv4/conf/ve-c1/route_localnet");
    assert!(blocked(ctr, "127.0.0.1:9999"));
    t.nat_ok(&["down"]);
    assert_eq!(t.route_localnet("ve-c1"), Some(false));
    assert!(blocked(ctr, "127.0.0.1:9999"));
}

fn down_best_effort(b: &'static str) {
    if !gate("down_best_effort", b) {
        return;
    }
    let t = Topo::new(b, 0, false);
    t.nat_ok(&[
        "up",
        "--external",
        "up0",
        "--forward",
        "tcp:80:10.233.1.2:80",
    ]);
    // Someone else's chain jumps to ve-nat-post: that one cannot be deleted, so the
    // nat table's transaction is refused as a whole and retried chain by chain.
    t.ipt(false, &["-t", "nat", "-N", "theirs"]);
    t.ipt(false, &["-t", "nat", "-A", "theirs", "-j", "ve-nat-post"]);
    let o = t.nat(&["down"]);
    assert_eq!(code(&o), 71);
    let err = one_error_line(&o);
    assert!(
        err.contains("ve-nat-post") && err.contains("restore"),
        "{err}"
    );
    let left = t.save();
    for gone in [
        "ve-nat-pre",
        "ve-nat-out",
        "ve-nat-fwd",
        "ve-nat-in",
        "-A POSTROUTING -j ve-nat-post",
    ] {
        assert!(!left.contains(gone), "{gone} left:\n{left}");
    }
    assert!(left.contains(":ve-nat-post"), "{left}");
    // Once their jump is gone, down finishes.
    t.ipt(false, &["-t", "nat", "-F", "theirs"]);
    t.nat_ok(&["down"]);
    assert!(!t.save().contains("ve-nat"), "{}", t.save());
}

fn earlier_versions_staging_chains(b: &'static str) {
    if !gate("earlier_versions_staging_chains", b) {
        return;
    }
    let t = Topo::new(b, 1, false);
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    let up = ["up", "--external", "up0"];
    t.nat_ok(&up);
    // What an earlier version's up, killed mid-swap, left: a jumped staging chain
    // (complete) in place of the old chain, and an unjumped one (maybe half full).
    t.ipt(
        false,
        &["-t", "nat", "-E", "ve-nat-post", "ve-nat-post-new"],
    );
    t.ipt(false, &["-N", "ve-nat-fwd-new"]);
    t.ipt(false, &["-A", "ve-nat-fwd-new", "-j", "RETURN"]);
    let status = t.nat_ok(&["status", "--json"]);
    assert!(status.contains(r#""staging_left":true"#), "{status}");
    let mut check = up.to_vec();
    check[0] = "check";
    assert_eq!(code(&t.nat(&check)), 1);
    t.nat_ok(&up);
    let after = t.save();
    assert!(!after.contains("-new"), "{after}");
    assert_one_jump_per_hook(&after);
    assert_eq!(code(&t.nat(&check)), 0);
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    // And down takes any that are left.
    t.ipt(false, &["-t", "nat", "-N", "ve-nat-pre-new"]);
    t.nat_ok(&["down"]);
    assert!(!t.save().contains("ve-nat"), "{}", t.save());
}
