//! ve-link against the real kernel, in throwaway namespaces: one plays the host (the tool
//! runs inside it with `ip netns exec`), others play containers.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;
use testbed::{privileged, spawn_in, Netns, Sandbox, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_ve-link");

const ADDRS: [&str; 8] = [
    "--host-address",
    "10.233.0.1",
    "--local-address",
    "10.233.0.2",
    "--host-address6",
    "fd42::1",
    "--local-address6",
    "fd42::2",
];

/// Longer than any ve-link command may take (its netlink timeout is 5 s): a hang fails
/// the test instead of the suite.
const BOUND: &str = "20";

/// `cmd` under `ip netns exec`, killed if it runs longer than [`BOUND`] (exit 124).
fn bounded(ns: &Netns, program: &str) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-k", "2", BOUND, "ip", "netns", "exec", ns.name(), program]);
    c
}

fn ve_link(host: &Netns, args: &[&str]) -> Output {
    bounded(host, BIN)
        .args(args)
        .output()
        .expect("running ve-link")
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "ve-link failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn setup(test: &str) -> Option<(Sandbox, Netns, Netns)> {
    if !privileged(test, &["ip", "setpriv", "timeout"]) {
        return None;
    }
    let mut sb = Sandbox::new();
    let host = sb.netns("host");
    let ctr = sb.netns("ctr");
    Some((sb, host, ctr))
}

fn link(ns: &Netns, name: &str) -> Option<Value> {
    let v = ns.ip_json(&["-d", "link", "show"]);
    v.as_array()?.iter().find(|l| l["ifname"] == name).cloned()
}

fn addrs(ns: &Netns, dev: &str) -> Vec<String> {
    let v = ns.ip_json(&["addr", "show", "dev", dev, "scope", "global"]);
    v[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| Some(format!("{}/{}", i["local"].as_str()?, i["prefixlen"])))
                .collect()
        })
        .unwrap_or_default()
}

fn routes(ns: &Netns, family: &str) -> Vec<String> {
    let v = ns.ip_json(&[family, "route", "show", "proto", "118"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut s = format!(
                "{} dev {}",
                r["dst"].as_str().unwrap(),
                r["dev"].as_str().unwrap()
            );
            if let Some(gw) = r["gateway"].as_str() {
                s.push_str(&format!(" via {gw}"));
            }
            s
        })
        .collect()
}

/// Accept one connection inside `server` and answer with what the client sent, then
/// connect from `client` and check the echo: proves routing both ways.
fn tcp_roundtrip(server: &Netns, client: &Netns, addr: IpAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    let s = spawn_in(&server.path(), move || {
        let l = TcpListener::bind(SocketAddr::new(addr, 0)).unwrap_or_else(|e| panic!("bind: {e}"));
        tx.send(l.local_addr().unwrap().port()).unwrap();
        let (mut c, peer) = l.accept().unwrap_or_else(|e| panic!("accept: {e}"));
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
        peer.ip()
    });
    let port = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener up");
    let c = spawn_in(&client.path(), move || {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::new(addr, port), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&c.join().expect("the client"), b"hello");
    s.join().expect("the listener");
}

#[test]
fn up_plumbs_both_sides_and_tcp_flows_both_ways() {
    let Some((_sb, host, ctr)) = setup("up_plumbs_both_sides") else {
        return;
    };
    let ns = ctr.path();
    let out = ok(&ve_link(
        &host,
        &[&["up", "foo", "--netns", ns.to_str().unwrap()][..], &ADDRS].concat(),
    ));
    assert_eq!(
        out,
        "HOST_IFACE=ve-foo\nLOCAL_IFACE=eth0\nHOST_ADDRESS=10.233.0.1\nLOCAL_ADDRESS=10.233.0.2\nHOST_ADDRESS6=fd42::1\nLOCAL_ADDRESS6=fd42::2\n"
    );
    let h = link(&host, "ve-foo").expect("host end");
    assert_eq!(h["ifalias"], "ve-link:foo");
    assert_eq!(h["linkinfo"]["info_kind"], "veth");
    assert!(is_up(&h), "{h}");
    assert!(h["link_netnsid"].as_i64().is_some());
    let c = link(&ctr, "eth0").expect("container end");
    assert!(is_up(&c), "{c}");
    assert!(is_up(&link(&ctr, "lo").unwrap()));
    // Stable, locally administered MACs.
    assert_eq!(h["address"].as_str().unwrap(), common_mac("foo", "host"));
    assert_eq!(addrs(&host, "ve-foo"), ["10.233.0.1/32", "fd42::1/128"]);
    assert_eq!(addrs(&ctr, "eth0"), ["10.233.0.2/32", "fd42::2/128"]);
    let v6 = ctr.ip_json(&["-6", "addr", "show", "dev", "eth0", "scope", "global"]);
    assert_eq!(v6[0]["addr_info"][0]["nodad"], true);
    assert_eq!(routes(&host, "-4"), ["10.233.0.2 dev ve-foo"]);
    assert_eq!(routes(&host, "-6"), ["fd42::2 dev ve-foo"]);
    assert_eq!(
        routes(&ctr, "-4"),
        ["default dev eth0 via 10.233.0.1", "10.233.0.1 dev eth0"]
    );
    assert_eq!(
        routes(&ctr, "-6"),
        ["fd42::1 dev eth0", "default dev eth0 via fd42::1"]
    );
    // Nothing leaked into the namespace the tests run in.
    assert!(Command::new("ip")
        .args(["link", "show", "ve-foo"])
        .stderr(Stdio::null())
        .output()
        .unwrap()
        .stdout
        .is_empty());

    tcp_roundtrip(&host, &ctr, "10.233.0.1".parse().unwrap());
    tcp_roundtrip(&ctr, &host, "10.233.0.2".parse().unwrap());
    tcp_roundtrip(&host, &ctr, "fd42::1".parse().unwrap());
    tcp_roundtrip(&ctr, &host, "fd42::2".parse().unwrap());

    let json = ok(&ve_link(&host, &["list", "--json"]));
    let row: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(row["name"], "foo");
    assert_eq!(row["netns"], ctr.name());
    assert_eq!(
        row["addresses"],
        serde_json::json!(["10.233.0.1", "fd42::1"])
    );
    assert_eq!(row["peer"], "eth0");
    assert_eq!(
        row["container_addresses"],
        serde_json::json!(["10.233.0.2", "fd42::2"])
    );
    let table = ok(&ve_link(&host, &["list"]));
    assert!(table.starts_with("NAME  IFACE   MODE    NETNS"), "{table}");
    assert!(
        table.contains("10.233.0.1,fd42::1  10.233.0.2,fd42::2"),
        "{table}"
    );
}

/// `up --addresses -` opens the namespace while the command before the pipe is still
/// writing; if that command deleted the namespace and made a new one of the same name
/// meanwhile, the pair goes into the new one, not the old one ve-link held open.
#[test]
fn up_from_a_pipe_follows_a_namespace_made_again_while_it_waited() {
    let Some((_sb, host, ctr)) = setup("up_pipe_renewed") else {
        return;
    };
    // A namespace is its (device, inode) pair on nsfs.
    let id = |m: std::fs::Metadata| (m.dev(), m.ino());
    let old = id(std::fs::metadata(ctr.path()).unwrap());
    let mut child = bounded(&host, BIN)
        .args(["up", "foo", "--netns", ctr.name(), "--addresses", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until ve-link holds the namespace open (it then waits for stdin).
    let holds = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read_link(p.path().join("exe")).is_ok_and(|e| e == std::path::Path::new(BIN))
                && std::fs::read_dir(p.path().join("fd")).is_ok_and(|fds| {
                    fds.flatten()
                        .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| id(m) == old))
                })
        })
    };
    let t = std::time::Instant::now();
    while !holds() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "ve-link never opened the namespace"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let run = |args: &[&str]| {
        let o = Command::new("ip").args(args).output().unwrap();
        assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
    };
    run(&["netns", "del", ctr.name()]);
    run(&["netns", "add", ctr.name()]);
    let new = id(std::fs::metadata(ctr.path()).unwrap());
    assert_ne!(old, new, "the namespace was not made again");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"HOST_ADDRESS=10.233.0.1\nLOCAL_ADDRESS=10.233.0.2\n")
        .unwrap();
    ok(&child.wait_with_output().unwrap());
    assert!(
        link(&ctr, "eth0").is_some(),
        "eth0 is not in the namespace named {} now",
        ctr.name()
    );
    assert_eq!(addrs(&ctr, "eth0"), ["10.233.0.2/32"]);
}

/// Administratively up with carrier (operstate follows later, from the linkwatch queue).
fn is_up(l: &Value) -> bool {
    let flags = l["flags"].as_array().unwrap();
    flags.iter().any(|f| f == "UP") && flags.iter().any(|f| f == "LOWER_UP")
}

fn common_mac(name: &str, side: &str) -> String {
    ve_link::request::mac_text(&ve_link::request::mac_for(name, side))
}

#[test]
fn up_is_idempotent_and_converges_and_reads_env_input() {
    let Some((_sb, host, ctr)) = setup("up_is_idempotent") else {
        return;
    };
    let env = "HOST_ADDRESS=10.233.0.1/32\nLOCAL_ADDRESS=10.233.0.2/24\nHOST_ADDRESS6=fd42::1\nLOCAL_ADDRESS6=fd42::2/64\n";
    let run = |cmd: &str, env: &str, extra: &[&str]| {
        let mut c = bounded(&host, BIN);
        c.args([cmd, "foo", "--netns", ctr.name(), "--addresses", "-"])
            .args(extra);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(env.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let up = |env: &str, extra: &[&str]| run("up", env, extra);
    // check takes the very input up took (container-net runs it with the same lines),
    // and refuses an empty one as up does.
    let o = run("check", "", &[]);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    let o = up("", &[]);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    ok(&up(env, &[]));
    ok(&run("check", env, &[]));
    let c: Value = serde_json::from_str(&ok(&run("check", env, &["--json"]))).unwrap();
    assert_eq!(c["ok"], true, "{c}");
    let before = link(&host, "ve-foo").unwrap()["ifindex"].clone();
    let again: Value = serde_json::from_str(&ok(&up(env, &["--json"]))).unwrap();
    assert_eq!(again["changes"], serde_json::json!([]), "{again}");
    assert_eq!(
        link(&host, "ve-foo").unwrap()["ifindex"],
        before,
        "second up recreated the link"
    );
    ok(&ve_link(
        &host,
        &[
            "check",
            "foo",
            "--netns",
            ctr.name(),
            "--addresses",
            "/dev/null",
            "--host-address",
            "10.233.0.1",
            "--local-address",
            "10.233.0.2",
            "--host-address6",
            "fd42::1",
            "--local-address6",
            "fd42::2",
        ],
    ));

    // New addresses, new MTU: converge in place.
    let env2 = "HOST_ADDRESS=10.233.5.1\nLOCAL_ADDRESS=10.233.5.2\n";
    let out: Value = serde_json::from_str(&ok(&up(env2, &["--json", "--mtu", "1400"]))).unwrap();
    assert!(!out["changes"].as_array().unwrap().is_empty());
    assert_eq!(link(&host, "ve-foo").unwrap()["ifindex"], before);
    assert_eq!(addrs(&host, "ve-foo"), ["10.233.5.1/32"]);
    assert_eq!(addrs(&ctr, "eth0"), ["10.233.5.2/32"]);
    assert_eq!(routes(&host, "-4"), ["10.233.5.2 dev ve-foo"]);
    assert!(routes(&host, "-6").is_empty());
    assert_eq!(
        routes(&ctr, "-4"),
        ["default dev eth0 via 10.233.5.1", "10.233.5.1 dev eth0"]
    );
    assert!(routes(&ctr, "-6").is_empty());
    assert_eq!(link(&ctr, "eth0").unwrap()["mtu"], 1400);
    assert_eq!(link(&host, "ve-foo").unwrap()["mtu"], 1400);
    tcp_roundtrip(&host, &ctr, "10.233.5.1".parse().unwrap());
}

#[test]
fn rollback_when_the_container_already_has_eth0() {
    let Some((mut sb, host, ctr)) = setup("rollback_eth0") else {
        return;
    };
    ctr.ip(&["link", "add", "eth0", "type", "bridge"]);
    let out = ve_link(
        &host,
        &[&["up", "foo", "--netns", ctr.name()][..], &ADDRS].concat(),
    );
    assert_eq!(out.status.code(), Some(73), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("eth0 already exists"),
        "{}",
        stderr(&out)
    );
    assert!(link(&host, "ve-foo").is_none());
    assert_eq!(
        link(&ctr, "eth0").unwrap()["linkinfo"]["info_kind"],
        "bridge"
    );

    // A failure after the pair exists: IPv6 is off in the container, so its address
    // step fails, and everything made so far goes.
    let ctr2 = sb.netns("ctr2");
    ctr2.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
    let out = ve_link(
        &host,
        &[&["up", "bar", "--netns", ctr2.name()][..], &ADDRS].concat(),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("adding address fd42::2/128 to container link eth0"),
        "{err}"
    );
    assert!(err.contains("rolled back"), "{err}");
    assert!(link(&host, "ve-bar").is_none(), "host end left behind");
    assert!(link(&ctr2, "eth0").is_none(), "container end left behind");
    assert!(routes(&host, "-4").is_empty());

    // A converging `up` that fails half-way puts back what it had removed.
    let ctr3 = sb.netns("ctr3");
    let old = [
        "--host-address",
        "10.233.0.5",
        "--local-address",
        "10.233.0.6",
    ];
    ok(&ve_link(
        &host,
        &[&["up", "baz", "--netns", ctr3.name()][..], &old].concat(),
    ));
    let (addrs_before, routes_before) = (addrs(&ctr3, "eth0"), routes(&ctr3, "-4"));
    let host_before = routes(&host, "-4");
    ctr3.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.eth0.disable_ipv6=1");
    let new = [
        "--host-address",
        "10.233.0.7",
        "--local-address",
        "10.233.0.8",
        "--host-address6",
        "fd42::7",
        "--local-address6",
        "fd42::8",
    ];
    let out = ve_link(
        &host,
        &[&["up", "baz", "--netns", ctr3.name()][..], &new].concat(),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("rolled back"), "{}", stderr(&out));
    assert_eq!(addrs(&ctr3, "eth0"), addrs_before);
    assert_eq!(routes(&ctr3, "-4"), routes_before);
    assert_eq!(routes(&host, "-4"), host_before);
    tcp_roundtrip(&host, &ctr3, "10.233.0.5".parse().unwrap());
}

#[test]
fn long_names_get_distinct_valid_interfaces_with_altnames() {
    let Some((mut sb, host, ctr)) = setup("long_names") else {
        return;
    };
    let ctr2 = sb.netns("ctr2");
    let a = format!("{}{}", "shared-prefix-twenty", "-aaaaaaaaaaaaaaaaaaa");
    let b = format!("{}{}", "shared-prefix-twenty", "-bbbbbbbbbbbbbbbbbbb");
    assert_eq!(a.len(), 40);
    let ia = ok(&ve_link(&host, &["up", &a, "--netns", ctr.name()]));
    let ib = ok(&ve_link(&host, &["up", &b, "--netns", ctr2.name()]));
    let ifa = common::output::parse_env(&ia, "a").unwrap()["HOST_IFACE"].clone();
    let ifb = common::output::parse_env(&ib, "b").unwrap()["HOST_IFACE"].clone();
    assert_ne!(ifa, ifb);
    for (ifn, name) in [(&ifa, &a), (&ifb, &b)] {
        assert!(ifn.len() <= 15, "{ifn}");
        let l = link(&host, ifn).expect("link exists");
        assert_eq!(l["altnames"], serde_json::json!([format!("ve-{name}")]));
        // The altname finds the link too.
        host.ip(&["link", "show", &format!("ve-{name}")]);
    }
    ok(&ve_link(&host, &["up", &a, "--netns", ctr.name()]));
    ok(&ve_link(&host, &["check", &a, "--netns", ctr.name()]));
    ok(&ve_link(&host, &["down", &a, &b]));
    assert!(link(&host, &ifa).is_none() && link(&host, &ifb).is_none());
}

#[test]
fn bridge_mode_attaches_to_the_bridge_without_host_address() {
    let Some((_sb, host, ctr)) = setup("bridge_mode") else {
        return;
    };
    host.ip(&["link", "add", "br0", "type", "bridge"]);
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", "br0"]);
    host.ip(&["link", "set", "br0", "up"]);
    let out = ok(&ve_link(
        &host,
        &[
            "up",
            "web",
            "--netns",
            ctr.name(),
            "--bridge",
            "br0",
            "--host-address",
            "192.0.2.1",
            "--local-address",
            "192.0.2.10/24",
        ],
    ));
    assert!(
        out.starts_with("HOST_IFACE=vb-web\nLOCAL_IFACE=eth0\nHOST_BRIDGE=br0\n"),
        "{out}"
    );
    let l = link(&host, "vb-web").unwrap();
    assert_eq!(l["master"], "br0");
    assert!(addrs(&host, "vb-web").is_empty());
    assert!(routes(&host, "-4").is_empty());
    assert_eq!(addrs(&ctr, "eth0"), ["192.0.2.10/32"]);
    tcp_roundtrip(&host, &ctr, "192.0.2.1".parse().unwrap());
    ok(&ve_link(
        &host,
        &[
            "check",
            "web",
            "--netns",
            ctr.name(),
            "--bridge",
            "br0",
            "--host-address",
            "192.0.2.1",
            "--local-address",
            "192.0.2.10",
        ],
    ));
    // Switching the same container to routed mode replaces the bridged pair.
    let routed = [
        "up",
        "web",
        "--netns",
        ctr.name(),
        "--ifname",
        "host0",
        "--host-address",
        "10.233.7.1",
        "--local-address",
        "10.233.7.2",
    ];
    ok(&ve_link(&host, &routed));
    assert!(link(&host, "vb-web").is_none(), "bridged pair left behind");
    assert!(link(&host, "ve-web").is_some());
    assert_eq!(addrs(&ctr, "host0"), ["10.233.7.2/32"]);
    ok(&ve_link(&host, &[&["check"][..], &routed[1..]].concat()));
    let out = ok(&ve_link(
        &host,
        &[
            "up",
            "web",
            "--netns",
            ctr.name(),
            "--bridge",
            "br0",
            "--ifname",
            "host0",
            "--host-address",
            "192.0.2.1",
            "--local-address",
            "192.0.2.10",
        ],
    ));
    assert!(out.starts_with("HOST_IFACE=vb-web\n"), "{out}");
    assert!(link(&host, "ve-web").is_none(), "routed pair left behind");
    // A missing bridge is missing input, and changes nothing.
    let out = ve_link(
        &host,
        &["up", "other", "--netns", ctr.name(), "--bridge", "br9"],
    );
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    assert!(link(&host, "vb-other").is_none());
    ok(&ve_link(&host, &["down", "web"]));
    assert!(link(&host, "vb-web").is_none());
    assert!(link(&host, "br0").is_some(), "the bridge is not ours");
}

#[test]
fn check_reports_a_deleted_route_and_up_repairs_it() {
    let Some((_sb, host, ctr)) = setup("check_route") else {
        return;
    };
    let args = [&["--netns", ctr.name()][..], &ADDRS].concat();
    ok(&ve_link(&host, &[&["up", "foo"][..], &args].concat()));
    ok(&ve_link(&host, &[&["check", "foo"][..], &args].concat()));
    ctr.ip(&["route", "del", "default", "via", "10.233.0.1"]);
    host.ip(&["-6", "route", "del", "fd42::2/128", "dev", "ve-foo"]);
    let out = ve_link(&host, &[&["check", "foo"][..], &args].concat());
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "host: route fd42::2/128 missing\ncontainer: route default via 10.233.0.1 missing\n"
    );
    let out = ve_link(&host, &[&["check", "foo", "--json"][..], &args].concat());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    ok(&ve_link(&host, &[&["up", "foo"][..], &args].concat()));
    ok(&ve_link(&host, &[&["check", "foo"][..], &args].concat()));
}

#[test]
fn down_twice_and_only_managed_links_go() {
    let Some((mut sb, host, ctr)) = setup("down_twice") else {
        return;
    };
    let ctr2 = sb.netns("ctr2");
    let ctr3 = sb.netns("ctr3");
    let ctr4 = sb.netns("ctr4");
    ok(&ve_link(&host, &["up", "foo", "--netns", ctr.name()]));
    ok(&ve_link(&host, &["up", "baz", "--netns", ctr3.name()]));
    ok(&ve_link(&host, &["up", "qux", "--netns", ctr4.name()]));
    // Someone else's veth that happens to be called like ours.
    host.ip(&[
        "link",
        "add",
        "ve-bar",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ctr2.name(),
    ]);
    ok(&ve_link(&host, &["down", "foo"]));
    assert!(link(&host, "ve-foo").is_none());
    assert!(link(&ctr, "eth0").is_none());
    ok(&ve_link(&host, &["down", "foo"]));
    let out = ve_link(&host, &["down", "bar"]);
    assert!(ok(&out).is_empty());
    assert!(
        stderr(&out).contains("ve-bar is not managed by ve-link"),
        "{}",
        stderr(&out)
    );
    assert!(link(&host, "ve-bar").is_some(), "foreign link removed");
    // Several names: one batch, the foreign one still left alone, a missing one is fine.
    ok(&ve_link(&host, &["down", "bar", "baz", "nothere"]));
    assert!(link(&host, "ve-baz").is_none());
    assert!(link(&ctr3, "eth0").is_none());
    assert!(
        link(&host, "ve-bar").is_some(),
        "foreign link removed by a batch"
    );
    assert!(
        link(&host, "ve-qux").is_some(),
        "unnamed link removed by a batch"
    );
    ok(&ve_link(&host, &["down", "--all"]));
    assert!(link(&host, "ve-qux").is_none());
    assert!(
        link(&host, "ve-bar").is_some(),
        "foreign link removed by --all"
    );
    ok(&ve_link(&host, &["down", "--all"]));
    let out = ve_link(&host, &["up", "bar", "--netns", ctr.name()]);
    assert_eq!(out.status.code(), Some(73), "{}", stderr(&out));
    assert!(stderr(&out).contains("not made by ve-link"));
}

#[test]
fn fifty_parallel_ups_all_succeed_and_one_down_removes_them() {
    let Some((mut sb, host, _ctr)) = setup("fifty_parallel") else {
        return;
    };
    let ctrs: Vec<Netns> = (0..50).map(|i| sb.netns(&format!("c{i}"))).collect();
    let children: Vec<_> = ctrs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = format!("par{i}");
            let (h, l) = (format!("10.234.{i}.1"), format!("10.234.{i}.2"));
            host.command(BIN)
                .args([
                    "up",
                    &name,
                    "--netns",
                    c.name(),
                    "--host-address",
                    &h,
                    "--local-address",
                    &l,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let rows = ok(&ve_link(&host, &["list", "--json"]));
    assert_eq!(rows.lines().count(), 50);
    for (i, c) in ctrs.iter().enumerate() {
        assert_eq!(addrs(c, "eth0"), [format!("10.234.{i}.2/32")]);
    }
    let names: Vec<String> = (0..50).map(|i| format!("par{i}")).collect();
    let mut args = vec!["down".to_string()];
    args.extend(names);
    let out = host.command(BIN).args(&args).arg("-v").output().unwrap();
    ok(&out);
    assert!(
        stderr(&out).contains("removed 50 links in one batch"),
        "{}",
        stderr(&out)
    );
    assert!(ok(&ve_link(&host, &["list", "--json"])).is_empty());
}

#[test]
fn concurrent_ups_of_one_container_all_succeed() {
    let Some((_sb, host, ctr)) = setup("concurrent_same") else {
        return;
    };
    let args = [&["up", "same", "--netns", ctr.name()][..], &ADDRS].concat();
    let children: Vec<_> = (0..5)
        .map(|_| {
            host.command(BIN)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    ok(&ve_link(
        &host,
        &[&["check", "same", "--netns", ctr.name()][..], &ADDRS].concat(),
    ));
    assert_eq!(addrs(&ctr, "eth0"), ["10.233.0.2/32", "fd42::2/128"]);
}

#[test]
fn missing_namespace_is_66_and_no_privilege_is_77_with_no_change() {
    let Some((_sb, host, ctr)) = setup("exit_codes") else {
        return;
    };
    let out = ve_link(
        &host,
        &["up", "foo", "--netns", "/run/netns/ve-link-test-none"],
    );
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"));
    let out = ve_link(&host, &["up", "foo", "--pid", "999999999"]);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    let out = ve_link(
        &host,
        &[
            "up",
            "foo",
            "--netns",
            ctr.name(),
            "--host-address",
            "10.0.0.1",
        ],
    );
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    // As nobody, with no capabilities.
    let out = host
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            BIN,
            "up",
            "foo",
            "--netns",
            ctr.name(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(host.ip_json(&["link", "show"]).as_array().unwrap().len() == 1);
    // The namespace ve-link runs in is no container's: refused, nothing made.
    for own in [
        vec!["--netns", "/proc/self/ns/net"],
        vec!["--netns", host.name()],
    ] {
        let mut args = vec!["up", "foo"];
        args.extend(own);
        args.extend([
            "--host-address",
            "10.233.0.1",
            "--local-address",
            "10.233.0.2",
        ]);
        let out = ve_link(&host, &args);
        assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("the one ve-link runs in"),
            "{}",
            stderr(&out)
        );
        assert!(host.ip_json(&["link", "show"]).as_array().unwrap().len() == 1);
    }
}

#[test]
fn stale_links_are_replaced_by_up_and_removed_by_gc() {
    let Some((mut sb, host, ctr)) = setup("stale") else {
        return;
    };
    let ctr2 = sb.netns("ctr2");
    ok(&ve_link(
        &host,
        &[
            "up",
            "foo",
            "--netns",
            ctr.name(),
            "--host-address",
            "10.233.0.1",
            "--local-address",
            "10.233.0.2",
        ],
    ));
    // The container restarts in a new namespace (given by pid this time): the old pair is
    // stale and is replaced.
    let mut sleeper = ctr2.command("sleep").arg("30").spawn().unwrap();
    // `ip netns exec` execs sleep in place: the child's pid is in ctr2.
    let pid = sleeper.id().to_string();
    // Until `ip netns exec` has entered ctr2, the child is in the test's own namespace,
    // the machine's: wait until it is really in ctr2 (ve-link also refuses its own).
    let want = std::fs::metadata(ctr2.path()).unwrap().ino();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| m.ino())
        .ok()
        != Some(want)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "sleeper never entered ctr2"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    ok(&ve_link(
        &host,
        &[
            "up",
            "foo",
            "--pid",
            &pid,
            "--host-address",
            "10.233.0.1",
            "--local-address",
            "10.233.0.2",
        ],
    ));
    assert!(link(&ctr, "eth0").is_none(), "old peer still there");
    assert_eq!(addrs(&ctr2, "eth0"), ["10.233.0.2/32"]);
    ok(&ve_link(
        &host,
        &[
            "check",
            "foo",
            "--netns",
            ctr2.name(),
            "--host-address",
            "10.233.0.1",
            "--local-address",
            "10.233.0.2",
        ],
    ));
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // A namespace kept alive by nothing but an open fd is gone for gc: no name, no
    // mount, no process or thread in it.
    ok(&ve_link(&host, &["up", "bar", "--netns", ctr.name()]));
    // gc prints container names, which `ve-alloc release -` keys on, also for a long
    // name whose interface name is shortened.
    let long = "a-rather-long-container";
    let long_if = common::name::host_ifname(long);
    assert_ne!(long_if, format!("ve-{long}"));
    ok(&ve_link(
        &host,
        &["up", long, "--netns", ctr.name(), "--ifname", "eth1"],
    ));
    let held = std::fs::File::open(ctr.path()).unwrap();
    Command::new("ip")
        .args(["netns", "del", ctr.name()])
        .status()
        .unwrap();
    assert!(link(&host, "ve-bar").is_some());
    let names = format!("{long}\nbar\n");
    assert_eq!(ok(&ve_link(&host, &["gc", "--dry-run"])), names);
    assert!(link(&host, "ve-bar").is_some());
    assert_eq!(ok(&ve_link(&host, &["gc"])), names);
    assert!(link(&host, "ve-bar").is_none());
    assert!(link(&host, &long_if).is_none());
    assert!(link(&host, "ve-foo").is_some(), "gc removed a live link");
    drop(held);
}

/// A bind mount of a namespace file, unmounted on drop (also when the test panics).
struct BindMount(PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn gc_keeps_links_of_namespaces_mounted_elsewhere_or_entered_by_a_thread_only() {
    let Some((_sb, host, ctr)) = setup("gc_keeps_live") else {
        return;
    };
    ok(&ve_link(&host, &["up", "baz", "--netns", ctr.name()]));
    // Mounted somewhere other than /run/netns, as Docker and others do, and unnamed.
    let tmp = TempDir::new("ve-link-bind");
    let point = tmp.path().join("ns");
    std::fs::write(&point, b"").unwrap();
    let status = Command::new("mount")
        .arg("--bind")
        .arg(ctr.path())
        .arg(&point)
        .status()
        .unwrap();
    assert!(status.success());
    let mount = BindMount(point.clone());
    Command::new("ip")
        .args(["netns", "del", ctr.name()])
        .status()
        .unwrap();
    assert!(link(&host, "ve-baz").is_some());
    assert_eq!(
        ok(&ve_link(&host, &["gc"])),
        "",
        "gc removed a live container's link"
    );
    assert!(link(&host, "ve-baz").is_some());

    // Entered by one thread of a process only: also alive.
    let held = std::fs::File::open(&point).unwrap();
    drop(mount);
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let entered = testbed::enter_fd(&held).map_err(|e| e.to_string());
        drop(held);
        tx.send(entered).unwrap();
        let _ = done_rx.recv();
    });
    assert_eq!(rx.recv().unwrap(), Ok(()), "setns");
    assert_eq!(
        ok(&ve_link(&host, &["gc"])),
        "",
        "gc removed a link whose namespace a thread is in"
    );
    assert!(link(&host, "ve-baz").is_some());
    drop(done_tx);
    t.join().unwrap();
}

/// Set interface `dev`'s alias in `ns` to raw bytes (not UTF-8), as a container's root may.
fn raw_alias(ns: &Netns, dev: &str, alias: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let st = Command::new("ip")
        .args(["-n", ns.name(), "link", "set", dev, "alias"])
        .arg(std::ffi::OsStr::from_bytes(alias))
        .status()
        .unwrap();
    assert!(st.success());
}

/// Whether link `dev` exists in `ns` (`ip -j` cannot print a non-UTF-8 alias).
fn exists(ns: &Netns, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns.name(), "link", "show", "dev", dev])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// `ve_link`, which must also finish well within ve-link's own netlink timeout.
#[track_caller]
fn quick(host: &Netns, args: &[&str]) -> Output {
    let start = std::time::Instant::now();
    let out = ve_link(host, args);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "ve-link {args:?} took {:?} ({}): {}",
        start.elapsed(),
        out.status,
        stderr(&out)
    );
    out
}

#[test]
fn undecodable_aliases_neither_hang_nor_flood_stderr() {
    let Some((mut sb, host, ctr)) = setup("bad_alias") else {
        return;
    };
    let up_foo = [&["up", "foo", "--netns", ctr.name()][..], &ADDRS].concat();
    let check_foo = [&["check", "foo", "--netns", ctr.name()][..], &ADDRS].concat();
    ok(&quick(&host, &up_foo));
    // The container's root sets aliases that are not UTF-8 on its own lo and eth0.
    raw_alias(&ctr, "lo", b"\xff\xfe");
    raw_alias(&ctr, "eth0", b"\xff\xfe");
    ok(&quick(&host, &check_foo));
    assert_eq!(ok(&quick(&host, &up_foo)).lines().count(), 6);
    // The same before the first up.
    let ctr2 = sb.netns("ctr2");
    raw_alias(&ctr2, "lo", b"\xfe");
    let bar = [
        "--netns",
        ctr2.name(),
        "--host-address",
        "10.233.1.1",
        "--local-address",
        "10.233.1.2",
    ];
    ok(&quick(&host, &[&["up", "bar"][..], &bar].concat()));
    ok(&quick(&host, &[&["check", "bar"][..], &bar].concat()));
    assert_eq!(addrs(&ctr2, "eth0"), ["10.233.1.2/32"]);
    // (check passing means lo is up too; `ip -j` cannot print a non-UTF-8 alias.)

    // On the host end: then the link is not ours any more.
    raw_alias(&host, "ve-foo", b"ve-link:foo\xff");
    let out = quick(&host, &up_foo);
    assert_eq!(out.status.code(), Some(73), "{}", stderr(&out));
    let out = quick(&host, &["down", "foo"]);
    ok(&out);
    assert!(stderr(&out).contains("ve-foo is not managed by ve-link"));
    assert!(exists(&host, "ve-foo"));

    // A foreign link with such an alias: no hex dump, on any command that lists links.
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["gc"],
        &["down", "--all"],
    ] {
        let out = quick(&host, args);
        ok(&out);
        assert!(stderr(&out).len() < 200, "{args:?}: {}", stderr(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ve-foo"));
    }
    assert!(!exists(&host, "ve-bar"), "down --all kept ours");
    assert!(exists(&host, "ve-foo"), "down --all removed a foreign link");
}

/// A privilege-dropping prefix: `setpriv` with these arguments before the program.
fn as_nobody() -> Vec<&'static str> {
    vec![
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ]
}

/// Waits until process `pid` is in namespace `ns` (`ip netns exec` enters it after the
/// fork).
fn wait_in(pid: u32, ns: &std::path::Path) {
    let want = std::fs::metadata(ns).unwrap().ino();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| m.ino())
        .ok()
        != Some(want)
    {
        assert!(std::time::Instant::now() < deadline, "{pid} never entered");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child process killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn list_and_gc_need_privilege_and_a_process_they_may_not_inspect_keeps_its_pair() {
    let Some((mut sb, host, ctr)) = setup("unprivileged") else {
        return;
    };
    ok(&ve_link(&host, &["up", "baz", "--netns", ctr.name()]));
    for args in [&["list"][..], &["list", "--json"], &["gc", "--dry-run"]] {
        let out = bounded(&host, "setpriv")
            .args(as_nobody())
            .arg(BIN)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(77), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        assert!(stderr(&out).contains("CAP_NET_ADMIN"), "{}", stderr(&out));
    }

    // Only a process holds the container namespace, and ve-link runs with fewer
    // capabilities than it has, without CAP_SYS_PTRACE: it may not open that
    // process's namespace, and must still not take the container for gone.
    let sleeper = Child(ctr.command("sleep").arg("60").spawn().unwrap());
    let pid = sleeper.0.id();
    wait_in(pid, &ctr.path());
    Command::new("ip")
        .args(["netns", "del", ctr.name()])
        .status()
        .unwrap();
    let weaker = |args: &[&str]| {
        bounded(&host, "setpriv")
            .args([
                "--inh-caps=-sys_ptrace,-sys_boot",
                "--bounding-set=-sys_ptrace,-sys_boot",
                BIN,
            ])
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(
        ok(&weaker(&["gc"])),
        "",
        "gc removed a live container's pair"
    );
    assert!(link(&host, "ve-baz").is_some());
    let rows = ok(&weaker(&["list", "--json"]));
    let row: Value = serde_json::from_str(rows.trim()).unwrap();
    assert_eq!(row["netns"], format!("pid {pid}"), "{rows}");

    // A namespace that is really gone is still collected, unless a process it may not
    // inspect is in a namespace with a link of the container end's name and no IPv6 to
    // tell them apart. (A name no other test uses: their processes are hidden too.)
    let ctr2 = sb.netns("ctr2");
    ok(&ve_link(
        &host,
        &["up", "qux", "--netns", ctr2.name(), "--ifname", "qux0"],
    ));
    let held = std::fs::File::open(ctr2.path()).unwrap();
    Command::new("ip")
        .args(["netns", "del", ctr2.name()])
        .status()
        .unwrap();
    let ctr3 = sb.netns("ctr3");
    ctr3.ip(&[
        "link", "add", "qux0", "type", "veth", "peer", "name", "qux1",
    ]);
    ctr3.ip(&["link", "set", "qux0", "up"]);
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ctr3.name(),
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
        ])
        .status()
        .unwrap();
    let blind = Child(ctr3.command("sleep").arg("60").spawn().unwrap());
    wait_in(blind.0.id(), &ctr3.path());
    Command::new("ip")
        .args(["netns", "del", ctr3.name()])
        .status()
        .unwrap();
    let out = weaker(&["gc"]);
    assert_eq!(ok(&out), "");
    assert!(
        stderr(&out).contains("keeping ve-qux: cannot tell"),
        "{}",
        stderr(&out)
    );
    let rows = ok(&weaker(&["list"]));
    assert!(rows.contains("(unknown)"), "{rows}");
    drop(blind);
    assert_eq!(ok(&weaker(&["gc"])), "qux\n");
    assert!(link(&host, "ve-qux").is_none());
    assert!(link(&host, "ve-baz").is_some());
    drop(held);
    drop(sleeper);
}

#[test]
fn up_refuses_the_hosts_own_addresses_and_networks_and_changes_nothing() {
    let Some((mut sb, host, ctr)) = setup("hijack") else {
        return;
    };
    let out = sb.netns("out");
    testbed::uplink(&host, &out);
    host.ip(&["route", "add", "default", "via", testbed::OUTSIDE]);
    host.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "up0",
        "nodad",
    ]);
    // An address on another link of the host.
    host.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);
    host.ip(&["addr", "add", "198.51.100.7/32", "dev", "other0"]);
    let before = host.ip(&["-d", "link", "show"]);
    let up = |extra: &[&str]| {
        let mut args = vec!["up", "foo", "--netns", ctr.name()];
        args.extend(extra);
        ve_link(&host, &args)
    };
    for (bad, why) in [
        (
            [
                "--host-address",
                "10.233.0.1",
                "--local-address",
                testbed::OUTSIDE,
            ],
            "is on the host's route 192.0.2.0/24 dev up0",
        ),
        (
            [
                "--host-address",
                "10.233.0.1",
                "--local-address",
                "192.0.2.50",
            ],
            "is on the host's route 192.0.2.0/24 dev up0",
        ),
        (
            [
                "--host-address",
                "10.233.0.1",
                "--local-address",
                "198.51.100.7",
            ],
            "already an address of the host namespace (on other0)",
        ),
        (
            [
                "--host-address",
                "198.51.100.7",
                "--local-address",
                "10.233.0.2",
            ],
            "already an address of the host namespace (on other0)",
        ),
        (
            [
                "--host-address",
                testbed::HOST_UPLINK,
                "--local-address",
                "10.233.0.2",
            ],
            "already an address of the host namespace (on up0)",
        ),
        (
            [
                "--host-address6",
                "2001:db8:1::1",
                "--local-address6",
                "fd42::2",
            ],
            "already an address of the host namespace (on up0)",
        ),
        (
            [
                "--host-address6",
                "fd42::1",
                "--local-address6",
                "2001:db8:1::9",
            ],
            "is on the host's route 2001:db8:1::/64 dev up0",
        ),
    ] {
        let o = up(&bad);
        assert_eq!(o.status.code(), Some(65), "{bad:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(why), "{bad:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        assert_eq!(
            host.ip(&["-d", "link", "show"]),
            before,
            "{bad:?} changed the host"
        );
        assert!(link(&ctr, "eth0").is_none(), "{bad:?} made a container end");
    }
    // A pool address still works, and again (re-up sees its own address and route).
    ok(&up(&ADDRS));
    let o = host
        .command(BIN)
        .args(["up", "foo", "--netns", ctr.name(), "-v"])
        .args(ADDRS)
        .output()
        .unwrap();
    ok(&o);
    assert!(
        stderr(&o).contains("already up, nothing changed"),
        "{}",
        stderr(&o)
    );
    ok(&ve_link(
        &host,
        &[&["check", "foo", "--netns", ctr.name()][..], &ADDRS].concat(),
    ));
    // Another container may share the host address (as NixOS containers may), not take
    // it as its own.
    let ctr2 = sb.netns("ctr2");
    let shared = [
        "--host-address",
        "10.233.0.1",
        "--local-address",
        "10.233.0.3",
    ];
    ok(&ve_link(
        &host,
        &[&["up", "bar", "--netns", ctr2.name()][..], &shared].concat(),
    ));
    let o = ve_link(
        &host,
        &[
            "up",
            "baz",
            "--netns",
            ctr2.name(),
            "--ifname",
            "eth1",
            "--host-address",
            "10.233.0.5",
            "--local-address",
            "10.233.0.1",
        ],
    );
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(stderr(&o).contains("(on ve-foo)"), "{}", stderr(&o));
}

#[test]
fn up_racing_down_of_one_name_is_success_or_71_or_75_never_70() {
    let Some((_sb, host, ctr)) = setup("race_down") else {
        return;
    };
    let up = [&["up", "race", "--netns", ctr.name()][..], &ADDRS].concat();
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..15 {
        let spawn = |args: &[&str]| {
            bounded(&host, BIN)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let children = [
            spawn(&up),
            spawn(&["down", "race"]),
            spawn(&up),
            spawn(&["down", "race"]),
        ];
        for c in children {
            let o = c.wait_with_output().unwrap();
            let code = o.status.code().unwrap_or(-1);
            assert!([0, 71, 75].contains(&code), "exit {code}: {}", stderr(&o));
            *codes.entry(code).or_insert(0) += 1;
        }
    }
    eprintln!("exit codes: {codes:?}");
    ok(&ve_link(&host, &up));
    ok(&ve_link(
        &host,
        &[&["check", "race", "--netns", ctr.name()][..], &ADDRS].concat(),
    ));
}

/// The `ve-alloc` binary next to ve-link's (`cargo build -p ve-alloc --bins` first).
fn ve_alloc_bin() -> PathBuf {
    let bin = std::path::Path::new(BIN).with_file_name("ve-alloc");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p ve-alloc --bins` first",
        bin.display()
    );
    bin
}

#[test]
fn bulk_up_from_ve_alloc_brings_up_twenty_and_a_missing_namespace_fails_alone() {
    let Some((mut sb, host, _ctr)) = setup("bulk_up_from") else {
        return;
    };
    let va = ve_alloc_bin();
    let store = TempDir::new("bulk-store");
    let ctrs: Vec<Netns> = (1..=20).map(|i| sb.netns(&format!("c{i}"))).collect();
    let names: Vec<&str> = ctrs.iter().map(|c| c.name()).collect();
    // One line more, for a container whose namespace does not exist.
    let gone = format!("{}-gone", sb.prefix());
    let conf = store.path().join("none.conf");
    std::fs::write(&conf, "").unwrap();
    let pipeline = |json: bool| {
        let line = format!(
            "{va} --store {store} alloc {names} {gone} --json | \
             timeout -k 2 {BOUND} ip netns exec {host} {BIN} up --from - {json}",
            va = va.display(),
            store = store.path().join("s").display(),
            names = names.join(" "),
            host = host.name(),
            json = if json { "--json" } else { "" },
        );
        Command::new("sh")
            .args(["-c", &line])
            .env_remove("VE_ALLOC_POOL")
            .env("VE_ALLOC_CONFIG", &conf)
            .output()
            .unwrap()
    };
    let out = pipeline(true);
    assert_eq!(
        out.status.code(),
        Some(66),
        "the missing one's code: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("1 of 21 containers failed"), "{err}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 21, "one JSON line per container");
    let last = &lines[20];
    assert_eq!(last["name"], gone.as_str());
    assert_eq!(last["exit"], 66);
    assert!(
        last["error"].as_str().unwrap().contains("does not exist"),
        "{last}"
    );
    // Every other container: its addresses on both sides, as leased.
    for (c, l) in ctrs.iter().zip(&lines) {
        assert_eq!(l["name"], c.name());
        assert!(!l["changes"].as_array().unwrap().is_empty(), "{l}");
        let (h, loc) = (
            l["host_address"].as_str().unwrap(),
            l["local_address"].as_str().unwrap(),
        );
        assert_eq!(addrs(c, "eth0"), [format!("{loc}/32")]);
        let hif = l["host_iface"].as_str().unwrap();
        assert_eq!(addrs(&host, hif), [format!("{h}/32")]);
        assert!(is_up(&link(c, "eth0").unwrap()));
    }
    assert!(!exists(&host, &format!("ve-{gone}")));
    // Real traffic to two of them, both ways.
    for i in [0, 19] {
        let loc: IpAddr = lines[i]["local_address"].as_str().unwrap().parse().unwrap();
        let h: IpAddr = lines[i]["host_address"].as_str().unwrap().parse().unwrap();
        tcp_roundtrip(&ctrs[i], &host, loc);
        tcp_roundtrip(&host, &ctrs[i], h);
    }
    // Again: nothing changes; without --json the names that are up, one per line.
    // The kernel's own duplicate address detection may finish on some link-local
    // addresses in between ("tentative" goes): that is not ve-link's change.
    let addr_state = || host.ip(&["-d", "addr", "show"]).replace(" tentative", "");
    let before = addr_state();
    let again = pipeline(true);
    assert_eq!(again.status.code(), Some(66), "{}", stderr(&again));
    let lines2: Vec<Value> = String::from_utf8_lossy(&again.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for l in &lines2[..20] {
        assert_eq!(l["changes"], serde_json::json!([]), "{l}");
    }
    assert_eq!(addr_state(), before);
    let plain = pipeline(false);
    assert_eq!(plain.status.code(), Some(66));
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        format!("{}\n", names.join("\n"))
    );
    let err = stderr(&plain);
    assert_eq!(
        err.lines().count(),
        2,
        "the failure, then the summary: {err}"
    );
    assert!(err.lines().next().unwrap().contains(&gone), "{err}");
    let rows = ok(&ve_link(&host, &["list", "--json"]));
    assert_eq!(rows.lines().count(), 20);
}

#[test]
fn bulk_up_refuses_a_malformed_line_and_rolls_back_a_failed_one_alone() {
    let Some((mut sb, host, ctr)) = setup("bulk_malformed") else {
        return;
    };
    // bm3's namespace has IPv6 off: its address step fails after its pair exists.
    let ctr3 = sb.netns("ctr3");
    ctr3.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
    let input = format!(
        "{{\"name\":\"bm1\",\"netns\":\"{}\",\"host_address\":\"10.233.5.2\",\"local_address\":\"10.233.5.3\"}}\n\
         {{\"name\":\"bm2\",\"netns\":\"{}\",\"host_address\":\"10.233.5.999\"}}\n\
         {{\"name\":\"bm3\",\"netns\":\"{}\",\"host_address\":\"10.233.5.4\",\"local_address\":\"10.233.5.5\",\
           \"host_address6\":\"fd42::4\",\"local_address6\":\"fd42::5\"}}\n",
        ctr.name(),
        ctr.name(),
        ctr3.name()
    );
    let out = testbed::output_with_stdin(
        bounded(&host, BIN).args(["up", "--from", "-", "--json"]),
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["name"], "bm1");
    assert_eq!(lines[1]["exit"], 65);
    assert_eq!(lines[1]["line"], 2);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["name"], "bm3");
    assert!(lines[2]["exit"].as_i64().unwrap() > 0, "{}", lines[2]);
    let e = lines[2]["error"].as_str().unwrap();
    assert!(e.starts_with("up bm3: adding address fd42::5/128"), "{e}");
    assert!(e.ends_with("; rolled back"), "{e}");
    assert!(
        link(&host, "ve-bm3").is_none(),
        "bm3's pair was rolled back"
    );
    assert!(link(&ctr3, "eth0").is_none());
    assert_eq!(addrs(&ctr, "eth0"), ["10.233.5.3/32"], "bm1 stays up");
    assert_eq!(addrs(&host, "ve-bm1"), ["10.233.5.2/32"]);
    assert!(!exists(&host, "ve-bm2"));
    let out = ve_link(&host, &["check", "--from", "-"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}

/// `ve-link up ... --addresses -` with `input` on its stdin, written after `delay`.
fn up_piped(host: &Netns, args: &[&str], input: &str, delay: &str) -> Output {
    let mut c = bounded(host, "sh");
    c.args([
        "-c",
        r#"d=$1; i=$2; shift 2; { sleep "$d"; printf %s "$i"; } | "$@" --addresses -"#,
        "sh",
        delay,
        input,
        BIN,
        "up",
    ])
    .args(args);
    c.output().expect("running ve-link")
}

#[test]
fn piped_addresses_are_checked_before_what_was_opened_while_waiting() {
    // With `--addresses -`, up opens the namespace and its sockets while the pipe is
    // still empty: the answers must be those of reading first.
    let Some((_sb, host, ctr)) = setup("piped_addresses") else {
        return;
    };
    let good = "HOST_ADDRESS=10.233.7.1\nLOCAL_ADDRESS=10.233.7.2\n";
    let nothing_made =
        |host: &Netns| host.ip_json(&["link", "show"]).as_array().unwrap().len() == 1;
    // The command before the pipe failed: 65, nothing made.
    let out = up_piped(&host, &["foo", "--netns", ctr.name()], "", "0");
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did the command before the pipe fail"),
        "{}",
        stderr(&out)
    );
    assert!(nothing_made(&host));
    // Bad input wins over a missing namespace, as when the input was read first.
    let missing = "/run/netns/ve-link-test-none";
    let out = up_piped(
        &host,
        &["foo", "--netns", missing],
        "HOST_ADDRESS=300.1.1.1\n",
        "0",
    );
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    let out = up_piped(&host, &["foo", "--netns", missing], good, "0");
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    // The namespace ve-link runs in is refused, whatever the pipe says.
    let out = up_piped(&host, &["foo", "--netns", host.name()], good, "0");
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the one ve-link runs in"),
        "{}",
        stderr(&out)
    );
    assert!(nothing_made(&host));
    // Addresses that come late are used once they come.
    let out = up_piped(&host, &["foo", "--netns", ctr.name()], good, "0.3");
    ok(&out);
    assert_eq!(addrs(&host, "ve-foo"), ["10.233.7.1/32"]);
    assert_eq!(addrs(&ctr, "eth0"), ["10.233.7.2/32"]);
    // And again: nothing changes.
    let out = up_piped(&host, &["foo", "--netns", ctr.name(), "--json"], good, "0");
    let line: Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(line["changes"], serde_json::json!([]), "{line}");
}
