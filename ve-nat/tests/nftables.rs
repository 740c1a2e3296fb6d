//! ve-nat's native nftables backend against the real nft and kernel, with real
//! traffic, in sandbox namespaces (testbed::nat: ctr -- host -- out).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Output,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use testbed::{
    nat::{
        blocked, fetch, route_loopback_to_host, seen, udp_ask, EchoServer, PeerServer as Server,
        UdpPeerServer as UdpServer,
    },
    privileged, spawn_in, TempDir,
};

mod support;

use support::{code, topo::Topo, BIN};

/// nftables.rs's own: the nft tool.
impl Topo {
    /// `nft ARGS` in the host namespace; must succeed.
    fn nft(&self, args: &[&str]) -> String {
        let out = self.host.command("nft").args(args).output().unwrap();
        assert!(out.status.success(), "nft {args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `nft -f -` with `script` in the host namespace; must succeed.
    fn nft_script(&self, script: &str) {
        let out = testbed::output_with_stdin(
            self.host.command("nft").args(["-f", "-"]),
            script.as_bytes(),
        );
        assert!(out.status.success(), "nft -f: {}", stderr(&out));
    }

    /// `iptables-B-save` and `ip6tables-B-save` output.
    fn save_of(&self, b: &str) -> String {
        self.host
            .sh(&format!("iptables-{b}-save; ip6tables-{b}-save"))
    }
}

fn topo(n: usize, v6: bool) -> Topo {
    Topo::new("nftables", n, v6)
}

fn gate(test: &str) -> bool {
    privileged(test, &["ip", "nft"])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Our table as nft prints it, handles included.
fn ours(t: &Topo) -> String {
    t.nft(&["-a", "list", "table", "inet", "ve-nat"])
}

fn has_ours(t: &Topo) -> bool {
    t.nft(&["list", "tables"]).contains("table inet ve-nat")
}

/// `ve-nat ARGS` in the host namespace with PATH set to `path` (for ve-nat only, not
/// for the `ip netns exec` that starts it).
fn with_path(t: &Topo, path: &std::path::Path, args: &[&str]) -> Output {
    t.scratch_env(&mut t.host.command("/usr/bin/env"))
        .arg(format!("PATH={}", path.display()))
        .arg(BIN)
        .args(args)
        .args(["--backend", t.backend])
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// A PATH with nothing but `nft`: ve-nat must not need (or run) any iptables.
fn nft_only_path() -> TempDir {
    let d = TempDir::new("ve-nat-path");
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nft installed");
    std::os::unix::fs::symlink(nft, d.path().join("nft")).unwrap();
    d
}

#[test]
fn masquerade_forwards_and_hairpin() {
    if !gate("masquerade_forwards_and_hairpin") {
        return;
    }
    let t = topo(2, false);
    t.forwarding_on();
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    let _web = Server::start(&t.ctrs[0], "10.233.1.2:80");
    let _r0 = Server::start(&t.ctrs[0], "10.233.1.2:7000");
    let _r1 = Server::start(&t.ctrs[0], "10.233.1.2:7001");
    let _dns = UdpServer::start(&t.ctrs[0], "10.233.1.2:53");
    // Negative control: routed, not NATed, the server sees the container.
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "10.233.1.2");
    assert!(blocked(&t.out, "192.0.2.1:8080"), "reachable before up");

    let args = [
        "--external",
        "up0",
        "--forward",
        "tcp:8080:10.233.1.2:80",
        "--forward",
        "tcp:9000-9001:10.233.1.2:7000-7001",
        "--forward",
        "udp:5353:10.233.1.2:53",
    ];
    // No iptables on PATH: the nftables backend runs nft only.
    let path = nft_only_path();
    let out = with_path(&t, path.path(), &[&["up"][..], &args].concat());
    assert!(out.status.success(), "{}", stderr(&out));

    let table = ours(&t);
    // The NixOS bug: `ve-+` copied verbatim matches nothing in nft.
    assert!(table.contains("iifname \"ve-*\""), "{table}");
    assert!(!table.contains("ve-+"), "{table}");
    assert!(table.contains("tcp . 8080 : 10.233.1.2"), "{table}");
    assert!(
        !t.host
            .sh("iptables-nft-save 2>/dev/null")
            .contains("ve-nat"),
        "iptables rules were written"
    );

    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    // From outside: the container sees the real client.
    assert_eq!(fetch(&t.out, "192.0.2.1:8080").unwrap(), "192.0.2.2 80");
    assert_eq!(fetch(&t.out, "192.0.2.1:9000").unwrap(), "192.0.2.2 7000");
    assert_eq!(fetch(&t.out, "192.0.2.1:9001").unwrap(), "192.0.2.2 7001");
    assert_eq!(udp_ask(&t.out, "192.0.2.1:5353").unwrap(), "192.0.2.2");
    // From the host itself, through its uplink address (output DNAT).
    assert_eq!(seen(&t.host, "192.0.2.1:8080"), "192.0.2.1");
    // Hairpin: from another container, masqueraded so replies come back.
    assert_eq!(seen(&t.ctrs[1], "192.0.2.1:8080"), "10.233.1.1");
    assert_eq!(seen(&t.ctrs[1], "10.233.2.1:8080"), "10.233.1.1");

    assert_eq!(code(&t.nat(&[&["check"][..], &args].concat())), 0);
    assert_eq!(
        code(&t.nat(&["check", "--external", "up0"])),
        1,
        "check ignores the forwards"
    );

    // status --json: JSON Lines, one object per chain, map and set, with counters.
    let lines: Vec<serde_json::Value> = t
        .nat_ok(&["status", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let post = lines
        .iter()
        .find(|l| l["kind"] == "chain" && l["name"] == "postrouting")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(post["backend"], "nftables");
    assert_eq!(post["forwarding_ipv4"], true);
    let masq = &post["rules"][0];
    assert!(
        masq["rule"].as_str().unwrap().ends_with("masquerade"),
        "{masq}"
    );
    assert!(masq["packets"].as_u64().unwrap() >= 1, "{post}");
    let fwd4 = lines.iter().find(|l| l["name"] == "fwd4").unwrap();
    assert_eq!(fwd4["elements"].as_array().unwrap().len(), 4, "{fwd4}");
    let text = t.nat_ok(&["status"]);
    assert!(
        text.contains("chain forward") && text.contains("accept"),
        "{text}"
    );
}

#[test]
fn ipv6_masquerade_and_forward() {
    if !gate("ipv6_masquerade_and_forward") {
        return;
    }
    let t = topo(1, true);
    let _srv = Server::start(&t.out, "[2001:db8::2]:7777");
    let _web = Server::start(&t.ctrs[0], "[fd00:1::2]:80");
    let args = [
        "--external",
        "up0",
        "--ipv6",
        "--forward",
        "tcp:8080:[fd00:1::2]:80",
    ];
    t.nat_ok(&[&["up"][..], &args].concat());
    assert_eq!(seen(&t.ctrs[0], "[2001:db8::2]:7777"), "2001:db8::1");
    assert_eq!(seen(&t.out, "[2001:db8::1]:8080"), "2001:db8::2");
    assert_eq!(seen(&t.host, "[2001:db8::1]:8080"), "2001:db8::1");
    // IPv4 from the same table.
    let _srv4 = Server::start(&t.out, "192.0.2.2:7777");
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    assert_eq!(code(&t.nat(&[&["check"][..], &args].concat())), 0);

    // Without --ipv6 the table's rules are IPv4 only.
    t.nat_ok(&["up", "--external", "up0"]);
    assert_eq!(seen(&t.ctrs[0], "[2001:db8::2]:7777"), "fd00:1::2");
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    assert_eq!(code(&t.nat(&["check", "--external", "up0"])), 0);
}

#[test]
fn foreign_forward_drop_warns_and_fails_check() {
    if !gate("foreign_forward_drop_warns_and_fails_check") {
        return;
    }
    let t = topo(1, false);
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    t.nft_script(
        "table inet filter {\n chain forward {\n type filter hook forward priority 0; policy drop;\n }\n}\n",
    );
    let out = t.nat(&["up", "--external", "up0"]);
    assert_eq!(code(&out), 0);
    assert!(
        stderr(&out).contains("inet filter forward"),
        "{}",
        stderr(&out)
    );
    // The warning is true: our accept cannot override a drop in another table.
    assert!(blocked(&t.ctrs[0], "192.0.2.2:7777"));
    let c = t.nat(&["check", "--external", "up0"]);
    assert_eq!(code(&c), 1);
    assert!(stderr(&c).contains("inet filter forward"), "{}", stderr(&c));

    // A final unconditional reject counts too; a conditional drop does not.
    t.nft(&["delete", "table", "inet", "filter"]);
    assert_eq!(code(&t.nat(&["check", "--external", "up0"])), 0);
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    t.nft_script(
        "table ip fw {\n chain f {\n type filter hook forward priority 10;\n ct state invalid drop\n }\n}\n",
    );
    assert_eq!(code(&t.nat(&["check", "--external", "up0"])), 0);
    t.nft(&["add", "rule", "ip", "fw", "f", "counter", "reject"]);
    let c = t.nat(&["check", "--external", "up0"]);
    assert_eq!(code(&c), 1, "{}", stderr(&c));
    assert!(stderr(&c).contains("ip fw f"), "{}", stderr(&c));
}

#[test]
fn idempotent_up_and_down_leaves_foreign_tables() {
    if !gate("idempotent_up_and_down_leaves_foreign_tables") {
        return;
    }
    let t = topo(1, false);
    // Someone else's tables, in both families' hooks, with sets and a drop.
    t.nft_script(
        "table inet other {
            set blocked { type ipv4_addr; elements = { 198.51.100.7 } }
            chain guard {
                type filter hook forward priority 5;
                ip saddr @blocked drop
            }
            chain theirs {
                type nat hook postrouting priority 110;
                ip saddr 198.51.100.0/24 oifname \"up0\" masquerade
            }
        }
        table ip nat {
            chain POSTROUTING {
                type nat hook postrouting priority 100;
            }
        }
",
    );
    let before = t.nft(&["-a", "list", "ruleset"]);
    let a = ["--external", "up0", "--forward", "tcp:8080:10.233.1.2:80"];
    t.nat_ok(&[&["up"][..], &a].concat());
    let once = ours(&t);
    t.nat_ok(&[&["up"][..], &a].concat());
    assert_eq!(ours(&t), once, "a second up rewrote the table");
    assert_eq!(code(&t.nat(&[&["check"][..], &a].concat())), 0);

    // Something else in our table is found by check and undone by up.
    t.nft(&["add", "rule", "inet", "ve-nat", "forward", "accept"]);
    assert_eq!(code(&t.nat(&[&["check"][..], &a].concat())), 1);
    t.nat_ok(&[&["up"][..], &a].concat());
    assert_eq!(code(&t.nat(&[&["check"][..], &a].concat())), 0);
    t.nft(&["flush", "map", "inet", "ve-nat", "fwd4"]);
    assert_eq!(code(&t.nat(&[&["check"][..], &a].concat())), 1);

    t.nat_ok(&["down"]);
    assert!(!has_ours(&t));
    assert_eq!(
        t.nft(&["-a", "list", "ruleset"]),
        before,
        "down changed someone else's tables"
    );
    assert_eq!(code(&t.nat(&[&["check"][..], &a].concat())), 1);
    t.nat_ok(&["down"]);
    assert_eq!(t.nft(&["-a", "list", "ruleset"]), before);
}

#[test]
fn replace_under_traffic() {
    if !gate("replace_under_traffic") {
        return;
    }
    let t = topo(1, false);
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    let _web = Server::start(&t.ctrs[0], "10.233.1.2:80");
    let a = [
        "up",
        "--external",
        "up0",
        "--forward",
        "tcp:8080:10.233.1.2:80",
        "--forward",
        "tcp:8081:10.233.1.2:81",
    ];
    let b = [
        "up",
        "--external",
        "up0",
        "--forward",
        "tcp:8080:10.233.1.2:80",
        "--forward",
        "tcp:8081:10.233.1.2:81",
        "--forward",
        "udp:5353:10.233.1.2:53",
        "--internal-ip",
        "10.99.0.0/16",
    ];
    t.nat_ok(&a);
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    assert_eq!(seen(&t.out, "192.0.2.1:8080"), "192.0.2.2");

    // New connections without pause, both ways, while up replaces the table back and
    // forth: each NAT decision is taken when a connection starts, so a moment without
    // the table shows as an un-NATed connection or a refused forward.
    let stop = Arc::new(AtomicBool::new(false));
    let client = |ns: &testbed::Netns, to: &'static str| {
        let flag = stop.clone();
        spawn_in(&ns.path(), move || {
            let addr: SocketAddr = to.parse().unwrap();
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let r =
                    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(2)))?;
                        let mut text = String::new();
                        s.read_to_string(&mut text)?;
                        Ok(text)
                    });
                seen.push(match r {
                    Ok(text) => text.split(' ').next().unwrap_or("").to_string(),
                    Err(e) => format!("error: {e}"),
                });
            }
            seen
        })
    };
    let out_client = client(&t.ctrs[0], "192.0.2.2:7777");
    let in_client = client(&t.out, "192.0.2.1:8080");
    // And one connection through the forward kept open the whole time: a byte every
    // few milliseconds must come back (conntrack keeps its DNAT through the swaps).
    let _echo = EchoServer::start(&t.ctrs[0], "10.233.1.2:81");
    let flag = stop.clone();
    let kept = spawn_in(&t.out.path(), move || -> Result<usize, String> {
        let addr: SocketAddr = "192.0.2.1:8081".parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(4))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut n = 0;
        while !flag.load(Ordering::Relaxed) {
            s.write_all(b"x").map_err(|e| format!("write {n}: {e}"))?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).map_err(|e| format!("read {n}: {e}"))?;
            n += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(n)
    });
    for _ in 0..5 {
        t.nat_ok(&b);
        t.nat_ok(&a);
    }
    stop.store(true, Ordering::Relaxed);
    let n = kept.join().unwrap().expect("the kept connection broke");
    assert!(n >= 10, "only {n} round trips on the kept connection");
    for (c, want) in [(out_client, "192.0.2.1"), (in_client, "192.0.2.2")] {
        let seen = c.join().unwrap();
        assert!(seen.len() >= 10, "only {} connections", seen.len());
        let bad: Vec<&String> = seen.iter().filter(|s| *s != want).collect();
        assert!(bad.is_empty(), "{} of {}: {bad:?}", bad.len(), seen.len());
    }
}

#[test]
fn auto_picks_as_documented() {
    if !privileged(
        "auto_picks_as_documented",
        &["ip", "nft", "iptables-nft", "iptables-legacy"],
    ) {
        return;
    }
    let up = ["up", "--external", "up0"];
    let nat_auto = |t: &Topo, args: &[&str]| {
        let o = t
            .nat_cmd_with("auto", args)
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stderr(&o)
    };

    // A plain host: nftables.
    let t = Topo::new("auto", 1, false);
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    let log = nat_auto(&t, &up);
    assert!(log.contains("Nftables"), "{log}");
    assert!(has_ours(&t));
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    // Explicitly to iptables-nft and back: ours move, never in both.
    let o = t.nat_cmd_with("iptables-nft", &up).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!has_ours(&t), "table left next to the iptables chains");
    assert!(t.save_of("nft").contains("ve-nat-post"));
    nat_auto(&t, &up);
    assert!(has_ours(&t));
    assert!(!t.save_of("nft").contains("ve-nat"), "iptables chains left");
    nat_auto(&t, &["down"]);
    assert!(!has_ours(&t));
    // down (with nftables) removes ours from every backend.
    let o = t.nat_cmd_with("iptables-nft", &up).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = t.nat_cmd_with("nftables", &["down"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !t.save_of("nft").contains("ve-nat"),
        "down left iptables chains"
    );

    // Docker-style iptables FORWARD DROP: iptables-nft, whose accepts go there.
    let t = Topo::new("auto", 1, false);
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    t.forwarding_on();
    t.host.sh("iptables-nft -P FORWARD DROP");
    assert!(blocked(&t.ctrs[0], "192.0.2.2:7777"));
    let log = nat_auto(&t, &up);
    assert!(log.contains("FORWARD"), "{log}");
    assert!(!has_ours(&t));
    assert!(t.save_of("nft").contains("-A FORWARD -j ve-nat-fwd"));
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    let c = t
        .nat_cmd_with("auto", &["check", "--external", "up0"])
        .output()
        .unwrap();
    assert_eq!(code(&c), 0, "{}", stderr(&c));

    // iptables-legacy rules in use: iptables-legacy.
    let t = Topo::new("auto", 1, false);
    let _srv = Server::start(&t.out, "192.0.2.2:7777");
    t.host
        .sh("iptables-legacy -A INPUT -s 198.51.100.9 -j DROP");
    let log = nat_auto(&t, &up);
    assert!(log.contains("legacy"), "{log}");
    assert!(!has_ours(&t));
    assert!(t.save_of("legacy").contains("ve-nat-post"));
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:7777"), "192.0.2.1");
    nat_auto(&t, &["down"]);
    assert!(!t.save_of("legacy").contains("ve-nat"));
}

#[test]
fn bad_backend_and_missing_nft() {
    if !gate("bad_backend_and_missing_nft") {
        return;
    }
    let t = topo(0, false);
    let o = t.nat_cmd_with("xt", &["down"]).output().unwrap();
    assert_eq!(code(&o), 64);
    // --backend nftables without nft: exit 69, nothing changed.
    let empty = TempDir::new("ve-nat-nopath");
    let o = with_path(&t, empty.path(), &["up", "--external", "up0"]);
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(!has_ours(&t));
}

#[test]
fn localhost_forward() {
    if !gate("localhost_forward") {
        return;
    }
    let t = topo(2, true);
    let _web = Server::start(&t.ctrs[0], "10.233.1.2:80");
    let _web6 = Server::start(&t.ctrs[0], "[fd00:1::2]:80");
    assert!(blocked(&t.host, "127.0.0.1:8080"), "reachable before up");
    let fwd = [
        "--external",
        "up0",
        "--ipv6",
        "--forward",
        "tcp:8080:10.233.1.2:80",
        "--forward",
        "tcp:8080:[fd00:1::2]:80",
    ];
    let no = [&fwd[..], &["--no-localhost"]].concat();
    t.nat_ok(&[&["up"][..], &fwd].concat());
    // Masqueraded to the host's address on ve-c1: the container answers the host.
    assert_eq!(seen(&t.host, "127.0.0.1:8080"), "10.233.1.1");
    assert_eq!(seen(&t.host, "127.0.0.2:8080"), "10.233.1.1");
    // ::1 is not forwarded (measured: the kernel drops the reply, see the README);
    // the host's own IPv6 address is.
    assert!(blocked(&t.host, "[::1]:8080"));
    assert_eq!(seen(&t.host, "[2001:db8::1]:8080"), "2001:db8::1");
    assert_eq!(t.route_localnet_on(), ["ve-c1", "ve-c2"]);
    assert_eq!(code(&t.nat(&[&["check"][..], &fwd].concat())), 0);
    assert_eq!(code(&t.nat(&[&["check"][..], &no].concat())), 1);

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
}

#[test]
fn loopback_guard() {
    if !gate("loopback_guard") {
        return;
    }
    let t = topo(1, false);
    t.forwarding_on();
    // A service of the host's that listens on loopback only.
    let _private = Server::start(&t.host, "127.0.0.1:9999");
    let ctr = &t.ctrs[0];
    route_loopback_to_host(ctr, "10.233.1.1");
    assert!(
        blocked(ctr, "127.0.0.1:9999"),
        "reachable with route_localnet off"
    );
    let fwd = ["--external", "up0", "--forward", "tcp:8080:10.233.1.2:80"];
    t.nat_ok(&[&["up"][..], &fwd].concat());
    assert_eq!(t.route_localnet("ve-c1"), Some(true));
    assert!(
        blocked(ctr, "127.0.0.1:9999"),
        "a container reached the host's loopback"
    );
    // It is the guard that blocks: without it the hole is open.
    let table = ours(&t);
    let handle = table
        .lines()
        .find(|l| l.contains("ct status ! dnat") && l.contains("drop"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap_or_else(|| panic!("no guard in {table}"))
        .trim()
        .to_string();
    t.nft(&[
        "delete", "rule", "inet", "ve-nat", "input", "handle", &handle,
    ]);
    assert_eq!(
        seen(ctr, "127.0.0.1:9999"),
        "10.233.1.2",
        "the hole is not open"
    );
    assert_eq!(code(&t.nat(&[&["check"][..], &fwd].concat())), 1);
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

/// `down` deletes table inet ve-nat over netlink and reads the table's --internal
/// patterns the same way (where route_localnet must go off): no `nft` process at all.
/// Every nft ve-nat starts goes through a logging wrapper first on PATH.
#[test]
fn down_runs_no_nft() {
    if !gate("down_runs_no_nft") {
        return;
    }
    let t = topo(1, false);
    let dir = TempDir::new("ve-nat-nft-wrap");
    let log = dir.path().join("nft.log");
    let real = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nft installed");
    let wrapper = dir.path().join("nft");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec {real} \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let down = |backend: &str| {
        let _ = std::fs::remove_file(&log);
        let mut c = t.nat_cmd_with(backend, &["down"]);
        let o = c.env("PATH", &path).output().unwrap();
        assert!(o.status.success(), "down: {}", stderr(&o));
        std::fs::read_to_string(&log).unwrap_or_default()
    };
    let a = ["--external", "up0", "--forward", "tcp:8080:10.233.1.2:80"];
    for backend in ["nftables", "auto"] {
        t.nat_ok(&[&["up"][..], &a, &["--no-localhost"]].concat());
        assert!(has_ours(&t));
        assert_eq!(down(backend), "", "--backend {backend}: nft ran");
        assert!(
            !has_ours(&t),
            "--backend {backend}: the table is still there"
        );
        // Gone already: still no nft, still success.
        assert_eq!(down(backend), "", "--backend {backend}: nft ran");
    }
    // Localhost forwards on, with a pattern of the request's own (not the default
    // ve-+): the table's patterns are read over netlink first, then route_localnet
    // goes off everywhere up turned it on, while the loopback guard is still in.
    for (a, b) in [("vz-a", "pz-a"), ("vq0", "pq0")] {
        t.host
            .ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
    }
    let own = [
        "--internal",
        "ve-+",
        "--internal",
        "vz-+",
        "--internal",
        "vq0",
    ];
    t.nat_ok(&[&["up"][..], &a, &own].concat());
    assert_eq!(t.route_localnet_on(), ["ve-c1", "vq0", "vz-a"]);
    assert_eq!(down("nftables"), "", "nft ran");
    assert!(!has_ours(&t));
    assert!(
        t.route_localnet_on().is_empty(),
        "{:?}",
        t.route_localnet_on()
    );
}
