//! ve-nat as a chained CNI plugin, for what a runtime pays per container: after the
//! first ADD installed the tables, an ADD, DEL, CHECK or GC starts no nft process at all
//! (it talks to nf_tables over netlink; every process is paid by every container, and
//! nft's listing grows with the containers), and the mappings it adds and deletes are
//! still exactly the container's. Elements it writes are those nft writes, byte for
//! byte, and it reads and deletes those an older ve-nat wrote through nft. (The NAT and
//! port mappings with real traffic are e2e/tests/cni.rs's.)

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use serde_json::{json, Value};
use testbed::{cni, privileged, Netns, Sandbox, TempDir};
use ve_nat::nft_cni::{self, Mapping, Owner};

const BIN: &str = env!("CARGO_BIN_EXE_ve-nat");

/// A previous result as ve-link prints it for container `n`.
fn prev(n: u32) -> Value {
    json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": format!("ve-{n:012}")},
                       {"name": "eth0", "sandbox": format!("/run/netns/c{n}")}],
        "ips": [{"address": format!("10.233.0.{}/32", 10 + n), "gateway": "10.233.0.1",
                 "interface": 1}]})
}

struct Host {
    ns: Netns,
    dir: TempDir,
    /// The configuration's `backend`.
    backend: &'static str,
}

impl Host {
    /// A host namespace with an uplink, and an `nft` that logs its calls.
    fn new(sb: &mut Sandbox, backend: &'static str) -> Host {
        let ns = sb.netns("host");
        ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
        ns.ip(&["link", "set", "up0", "up"]);
        let dir = TempDir::new("ve-nat-cni-calls");
        let nft = Command::new("sh")
            .args(["-c", "command -v nft"])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .unwrap();
        let real = String::from_utf8_lossy(&nft.stdout).trim().to_string();
        let wrapper = dir.path().join("nft");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\nexec {real} \"$@\"\n",
                dir.path().join("nft.log").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        Host { ns, dir, backend }
    }

    fn iptables(&self, args: &[&str]) -> String {
        let o = self.ns.command("iptables-nft").args(args).output().unwrap();
        assert!(o.status.success(), "iptables-nft {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn has_cni_table(&self) -> bool {
        self.ns
            .command("nft")
            .args(["list", "table", "inet", "ve-nat-cni"])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// The nft calls one ve-nat call made, as `nft` was given them (logged by a wrapper
    /// first on PATH), and its reply, which must be a success.
    fn call(&self, verb: &str, n: u32) -> (Vec<String>, cni::Reply) {
        let (calls, r) = self.call_port(verb, n, 8000 + n);
        assert!(r.ok, "{verb} {n}: {} {}", r.stdout, r.stderr);
        (calls, r)
    }

    /// As `call`, container `n` mapping host port `host_port`, whatever the reply. A
    /// GC keeps container `n` only.
    fn call_port(&self, verb: &str, n: u32, host_port: u32) -> (Vec<String>, cni::Reply) {
        self.call_conf(verb, n, &self.conf(verb, n, host_port, prev(n)))
    }

    /// The configuration of `call_port`, with previous result `prev`.
    fn conf(&self, verb: &str, n: u32, host_port: u32, prev: Value) -> Value {
        let mut conf = json!({"cniVersion": "1.0.0", "name": "vetest", "type": "ve-nat",
            "external": "up0", "backend": self.backend,
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": prev});
        if verb == "GC" {
            conf["cniVersion"] = json!("1.1.0");
            conf["cni.dev/valid-attachments"] =
                json!([{"containerID": cni::container_id(n), "ifname": "eth0"}]);
        }
        conf
    }

    /// The elements of set `dst4` (the forward accepts) as nft lists them.
    fn dst4(&self) -> String {
        self.nft(&["list", "set", "inet", "ve-nat-cni", "dst4"], None)
    }

    /// Container `n`'s call with configuration `conf`, whatever the reply.
    fn call_conf(&self, verb: &str, n: u32, conf: &Value) -> (Vec<String>, cni::Reply) {
        let log = self.dir.path().join("nft.log");
        let _ = std::fs::remove_file(&log);
        let mut c = cni::command_in(&self.ns.path(), Path::new(BIN)).unwrap();
        cni::clean_env(&mut c)
            .env(
                "PATH",
                format!(
                    "{}:/usr/sbin:/usr/bin:/sbin:/bin",
                    self.dir.path().display()
                ),
            )
            .env("VE_NAT_LOCK_DIR", self.dir.path().join("lock"))
            .env("VE_NAT_STATE_DIR", self.dir.path().join("state"))
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                format!("unix:path={}/no-bus", self.dir.path().display()),
            );
        let env = [
            ("CNI_CONTAINERID", cni::container_id(n)),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_NETNS", format!("/run/netns/c{n}")),
            ("CNI_PATH", "/nonexistent".to_string()),
        ];
        let r = cni::invoke(c, verb, conf, &env).unwrap_or_else(|e| panic!("{e}"));
        let calls = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        (calls, r)
    }

    fn nft(&self, args: &[&str], input: Option<&str>) -> String {
        let o = testbed::output_with_stdin(
            self.ns.command("nft").args(args),
            input.unwrap_or("").as_bytes(),
        );
        assert!(
            o.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The mappings in table inet ve-nat-cni as nft lists them, parsed as an older
    /// ve-nat did.
    fn listed(&self) -> Vec<(String, Mapping)> {
        let text = self.nft(&["-j", "list", "table", "inet", "ve-nat-cni"], None);
        let v: Value = serde_json::from_str(&text).unwrap();
        nft_cni::installed(v["nftables"].as_array().unwrap())
    }

    /// The elements of container `n` (its comment) as the kernel holds them, byte by
    /// byte: nft's netlink debug output of the table's maps and sets.
    fn raw_elements(&self, n: u32) -> Vec<String> {
        let mut out = Vec::new();
        let sets = ["fwd", "port", "hfwd", "hport"]
            .into_iter()
            .map(|m| ("map", m))
            .chain([("set", "dst")]);
        for (kind, set) in sets.flat_map(|(k, s)| ["4", "6"].map(|f| (k, format!("{s}{f}")))) {
            let set = set.as_str();
            let text = self.nft(
                &["--debug=netlink", "list", kind, "inet", "ve-nat-cni", set],
                None,
            );
            out.extend(
                text.lines()
                    .filter(|l| {
                        l.trim_start().starts_with("element ") && l.contains(&cni::container_id(n))
                    })
                    .map(|l| format!("{set}: {}", l.trim())),
            );
        }
        out
    }

    /// Container `n`'s mapping written as an older ve-nat wrote it: through nft's JSON.
    fn write_with_nft(&self, n: u32, delete: bool) {
        self.write_mappings_with_nft(n, &[mapping(n)], delete);
    }

    fn write_mappings_with_nft(&self, n: u32, mappings: &[Mapping], delete: bool) {
        let mut batch = nftables::batch::Batch::new();
        for o in nft_cni::elements(&owner(n), mappings) {
            if delete {
                batch.delete(o);
            } else {
                batch.add(o);
            }
        }
        let text = serde_json::to_string(&batch.to_nftables()).unwrap();
        self.nft(&["-j", "-f", "-"], Some(&text));
    }

    fn cni_table(&self) -> String {
        let o = self
            .ns
            .command("nft")
            .args(["list", "table", "inet", "ve-nat-cni"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

fn owner(n: u32) -> Owner {
    Owner::new("vetest", &cni::container_id(n), "eth0").unwrap()
}

/// `prev(n)`, the container's address that of container `addr_of`.
fn prev_at(n: u32, addr_of: u32) -> Value {
    let mut p = prev(n);
    p["ips"][0]["address"] = json!(format!("10.233.0.{}/32", 10 + addr_of));
    p
}

/// The mapping `Host::call` asks for container `n`.
fn mapping(n: u32) -> Mapping {
    let to = format!("10.233.0.{}", 10 + n).parse().unwrap();
    Mapping::new("tcp", u16::try_from(8000 + n).unwrap(), to, 80, None).unwrap()
}

#[test]
fn calls_with_the_tables_there_start_no_nft() {
    if !privileged("calls_with_the_tables_there_start_no_nft", &["ip", "nft"]) {
        return;
    }
    let mut sb = Sandbox::new();
    let host = Host::new(&mut sb, "nftables");

    // The first ADD installs both tables; what it runs is not counted.
    let (_, first) = host.call("ADD", 1);
    assert_eq!(first.stdout["ips"], prev(1)["ips"], "prevResult passed on");
    for n in 2..=3 {
        let (calls, r) = host.call("ADD", n);
        assert_eq!(r.stdout["interfaces"], prev(n)["interfaces"]);
        assert!(calls.is_empty(), "ADD {n}: {calls:?}");
    }
    let table = host.cni_table();
    for n in 1..=3 {
        let owner = format!("vetest/{}/eth0", cni::container_id(n));
        assert!(table.contains(&owner), "{owner} not in {table}");
        assert!(table.contains(&format!("{}", 8000 + n)), "{table}");
    }
    // What this ve-nat wrote over netlink (2, 3) reads back through nft's listing as
    // what nft itself wrote (1, in the first ADD's transaction).
    let mut listed = host.listed();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let want: Vec<(String, Mapping)> = (1..=3)
        .map(|n| (owner(n).as_str().to_string(), mapping(n)))
        .collect();
    assert_eq!(listed, want);
    // A repeated ADD with the same mapping writes nothing; CHECK reads only.
    let (calls, _) = host.call("ADD", 2);
    assert!(calls.is_empty(), "a repeated ADD: {calls:?}");
    let (calls, _) = host.call("CHECK", 2);
    assert!(calls.is_empty(), "CHECK: {calls:?}");
    // Another container's host port: refused, nothing changed.
    let (calls, r) = host.call_port("ADD", 4, 8002);
    assert!(
        !r.ok && r.stdout["code"] == 173,
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert!(calls.is_empty(), "a refused ADD: {calls:?}");
    let (_, r) = host.call_port("DEL", 4, 8002);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        host.cni_table().contains(&cni::container_id(2)),
        "DEL after a refused ADD"
    );

    let (calls, r) = host.call("DEL", 2);
    assert!(r.stdout.is_null());
    assert!(calls.is_empty(), "DEL: {calls:?}");
    let table = host.cni_table();
    assert!(!table.contains(&cni::container_id(2)), "{table}");
    assert!(table.contains(&cni::container_id(1)) && table.contains(&cni::container_id(3)));
    // DEL of what is gone already: nothing written.
    let (calls, r) = host.call("DEL", 2);
    assert!(r.ok && calls.is_empty(), "a second DEL: {calls:?}");

    // Byte for byte what nft writes: container 5's elements over netlink, then the
    // same mapping through nft (as an older ve-nat wrote it), as the kernel holds them.
    host.call("ADD", 5);
    let ours = host.raw_elements(5);
    assert_eq!(ours.len(), 3, "{ours:?}");
    host.write_with_nft(5, true);
    assert!(
        host.raw_elements(5).is_empty(),
        "nft deleted what netlink wrote"
    );
    host.write_with_nft(5, false);
    assert_eq!(host.raw_elements(5), ours);
    // And what nft wrote is read (CHECK, a clash) and deleted (DEL) over netlink.
    let (calls, r) = host.call("CHECK", 5);
    assert!(
        r.ok && calls.is_empty(),
        "CHECK of nft's elements: {calls:?}"
    );
    let (_, r) = host.call_port("ADD", 6, 8005);
    assert!(
        !r.ok && r.stdout["code"] == 173,
        "{} {}",
        r.stdout,
        r.stderr
    );
    let (calls, _) = host.call("DEL", 5);
    assert!(calls.is_empty(), "{calls:?}");
    assert!(host.raw_elements(5).is_empty(), "DEL left nft's elements");
    let mut left: Vec<String> = host.listed().into_iter().map(|(o, _)| o).collect();
    left.sort();
    assert_eq!(left, [owner(1).as_str(), owner(3).as_str()]);
    // GC keeping container 3: container 1's elements (written by nft) go, no nft runs.
    let (calls, _) = host.call("GC", 3);
    assert!(calls.is_empty(), "GC: {calls:?}");
    let left: Vec<String> = host.listed().into_iter().map(|(o, _)| o).collect();
    assert_eq!(left, [owner(3).as_str()]);
}

/// `backend: auto` decides from what netlink shows: nftables unless iptables-nft's
/// `filter FORWARD` drops (policy drop, or a rule anywhere in it that drops whatever
/// reaches it), as `ve-nat up` decides from nft's listing; with the tables there, it
/// starts no nft.
#[test]
fn auto_reads_the_firewall_over_netlink() {
    if !privileged(
        "auto_reads_the_firewall_over_netlink",
        &["ip", "nft", "iptables-nft"],
    ) {
        return;
    }
    let mut sb = Sandbox::new();
    let host = Host::new(&mut sb, "auto");
    host.call("ADD", 1);
    assert!(host.has_cni_table(), "auto picked nftables");
    let (calls, _) = host.call("ADD", 2);
    assert!(calls.is_empty(), "ADD with auto: {calls:?}");
    let (calls, _) = host.call("DEL", 2);
    assert!(calls.is_empty(), "DEL with auto: {calls:?}");
    assert!(!host.cni_table().contains(&cni::container_id(2)));

    // A FORWARD chain that drops: its mappings go into iptables-nft, found there by DEL.
    for drop in [
        &[&["-P", "FORWARD", "DROP"][..]][..],
        &[&["-A", "FORWARD", "-j", "DROP"]],
        // An accept after the unconditional drop changes nothing (nft's reading, too).
        &[
            &["-A", "FORWARD", "-j", "DROP"],
            &["-A", "FORWARD", "-i", "x", "-j", "ACCEPT"],
        ],
    ] {
        let mut sb = Sandbox::new();
        let host = Host::new(&mut sb, "auto");
        // A rule that matches some traffic first.
        host.iptables(&["-A", "FORWARD", "-i", "up0", "-j", "DROP"]);
        for rule in drop {
            host.iptables(rule);
        }
        host.call("ADD", 3);
        assert!(!host.has_cni_table(), "{drop:?}: auto picked nftables");
        // Once the shared chains are there, deciding starts no nft either (the CNI
        // table never exists on this path).
        let (calls, _) = host.call("ADD", 5);
        assert!(calls.is_empty(), "{drop:?}: ADD with auto: {calls:?}");
        let (calls, _) = host.call("DEL", 5);
        assert!(calls.is_empty(), "{drop:?}: DEL with auto: {calls:?}");
        let saved = host.iptables(&["-S", "-t", "nat"]);
        assert!(saved.contains("8003"), "{drop:?}: {saved}");
        host.call("DEL", 3);
        let saved = host.iptables(&["-S", "-t", "nat"]);
        assert!(!saved.contains("8003"), "{drop:?}: DEL left {saved}");
    }
    // A drop that only matches some traffic: nftables.
    let mut sb = Sandbox::new();
    let host = Host::new(&mut sb, "auto");
    host.iptables(&["-A", "FORWARD", "-i", "up0", "-j", "DROP"]);
    host.call("ADD", 4);
    assert!(host.has_cni_table(), "a conditional drop");
}

/// Every map and set of the table, both families, with and without `hostIP`: what this
/// ve-nat writes over netlink is byte for byte what nft writes for the same mappings,
/// and each side reads and deletes the other's.
#[test]
fn netlink_elements_of_every_map_are_nfts() {
    if !privileged("netlink_elements_of_every_map_are_nfts", &["ip", "nft"]) {
        return;
    }
    let mut sb = Sandbox::new();
    let host = Host::new(&mut sb, "nftables");
    host.call("ADD", 1);
    let n = 2;
    let conf = json!({"cniVersion": "1.0.0", "name": "vetest", "type": "ve-nat",
        "external": "up0", "backend": "nftables", "ipv6": true,
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8002, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 53, "containerPort": 5353, "protocol": "udp", "hostIP": "2001:db8::1"},
            {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "192.0.2.1"}]},
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "ve-x"}, {"name": "eth0", "sandbox": "/run/netns/c2"}],
            "ips": [{"address": "10.233.0.12/32", "interface": 1},
                    {"address": "fd42::12/128", "interface": 1}]}});
    let (calls, r) = host.call_conf("ADD", n, &conf);
    assert!(r.ok && calls.is_empty(), "{calls:?} {}", r.stderr);
    let ip = |s: &str| s.parse().unwrap();
    let mut want = vec![
        Mapping::new("tcp", 8002, ip("10.233.0.12"), 80, None).unwrap(),
        Mapping::new("tcp", 8002, ip("fd42::12"), 80, None).unwrap(),
        Mapping::new("udp", 53, ip("fd42::12"), 5353, Some(ip("2001:db8::1"))).unwrap(),
        Mapping::new("tcp", 8443, ip("10.233.0.12"), 443, Some(ip("192.0.2.1"))).unwrap(),
    ];
    let key = |m: &Mapping| m.fwd.to_string() + &format!("{:?}", m.host_ip);
    want.sort_by_key(key);
    let mine = || {
        let mut m: Vec<Mapping> = host
            .listed()
            .into_iter()
            .filter(|(o, _)| o == owner(n).as_str())
            .map(|(_, m)| m)
            .collect();
        m.sort_by_key(key);
        m
    };
    assert_eq!(mine(), want, "netlink's elements as nft lists them");
    let ours = host.raw_elements(n);
    // 4 mappings: 4 address, 4 port and 4 destination elements.
    assert_eq!(ours.len(), 12, "{ours:#?}");
    for set in [
        "fwd4", "fwd6", "hfwd4", "hfwd6", "port6", "hport4", "dst4", "dst6",
    ] {
        assert!(
            ours.iter().any(|l| l.starts_with(&format!("{set}:"))),
            "{set}: {ours:#?}"
        );
    }
    host.write_mappings_with_nft(n, &want, true);
    assert!(
        host.raw_elements(n).is_empty(),
        "nft deleted what netlink wrote"
    );
    host.write_mappings_with_nft(n, &want, false);
    assert_eq!(host.raw_elements(n), ours, "nft's bytes");
    let (calls, r) = host.call_conf("CHECK", n, &conf);
    assert!(
        r.ok && calls.is_empty(),
        "CHECK of nft's elements: {calls:?} {}",
        r.stderr
    );
    let (calls, r) = host.call_conf("DEL", n, &conf);
    assert!(r.ok && calls.is_empty(), "{calls:?}");
    assert!(host.raw_elements(n).is_empty(), "DEL left nft's elements");
    assert_eq!(host.listed().len(), 1, "container 1's stays");
}

/// A `dst` element (the forward accept of `PROTO . ADDR . PORT`) is deleted only when
/// it is there and no mapping that stays needs it. A's ADD succeeded but its DEL never
/// reached ve-nat, so IPAM gave A's address to B, for another host port: B's element
/// is A's (the same key, A's comment). A's DEL retried, or a GC, must leave it; B's DEL
/// then deletes it; a DEL or GC with an element already gone still does the rest.
#[test]
fn a_dst_element_another_mapping_needs_stays() {
    if !privileged("a_dst_element_another_mapping_needs_stays", &["ip", "nft"]) {
        return;
    }
    let mut sb = Sandbox::new();
    let host = Host::new(&mut sb, "nftables");
    let ok = |(_, r): (Vec<String>, cni::Reply), what: &str| {
        assert!(r.ok, "{what}: {} {}", r.stdout, r.stderr);
    };
    let a = host.conf("ADD", 1, 8001, prev(1));
    ok(host.call_conf("ADD", 1, &a), "A's ADD");
    let b = host.conf("ADD", 2, 8002, prev_at(2, 1));
    ok(host.call_conf("ADD", 2, &b), "B's ADD (A's address)");
    ok(host.call_conf("ADD", 2, &b), "B's ADD again");
    let b_dst = "tcp . 10.233.0.11 . 80";
    assert!(host.dst4().contains(b_dst), "{}", host.dst4());

    ok(host.call_conf("DEL", 1, &a), "A's DEL");
    assert!(
        host.dst4().contains(b_dst),
        "A's DEL took B's: {}",
        host.dst4()
    );
    let left: Vec<String> = host.listed().into_iter().map(|(o, _)| o).collect();
    assert_eq!(left, [owner(2).as_str()]);
    // A's elements back (as an older ve-nat left them), then a GC that keeps B.
    let a_map = Mapping::new("tcp", 8001, "10.233.0.11".parse().unwrap(), 80, None).unwrap();
    host.write_mappings_with_nft(1, std::slice::from_ref(&a_map), false);
    assert_eq!(host.listed().len(), 2);
    ok(host.call_port("GC", 2, 8002), "GC keeping B");
    assert!(host.dst4().contains(b_dst), "GC took B's: {}", host.dst4());
    let left: Vec<String> = host.listed().into_iter().map(|(o, _)| o).collect();
    assert_eq!(left, [owner(2).as_str()]);
    ok(host.call_conf("CHECK", 2, &b), "B's CHECK");
    ok(host.call_conf("DEL", 2, &b), "B's DEL");
    assert!(host.listed().is_empty());
    assert!(!host.dst4().contains("10.233.0.11"), "{}", host.dst4());

    // A repeated ADD writes a lost `dst` element again (its forward accept).
    ok(host.call("ADD", 3), "ADD");
    let lost = "{ tcp . 10.233.0.13 . 80 }";
    host.nft(
        &["delete", "element", "inet", "ve-nat-cni", "dst4", lost],
        None,
    );
    assert!(!host.dst4().contains("10.233.0.13"), "{}", host.dst4());
    ok(host.call("ADD", 3), "a repeated ADD");
    assert!(
        host.dst4().contains("10.233.0.13"),
        "not repaired: {}",
        host.dst4()
    );
    ok(host.call("DEL", 3), "DEL");

    // An element already gone: DEL and GC still delete the rest, and succeed.
    for verb in ["DEL", "GC"] {
        ok(host.call("ADD", 3), "ADD");
        let missing = "{ tcp . 10.233.0.13 . 80 }";
        host.nft(
            &["delete", "element", "inet", "ve-nat-cni", "dst4", missing],
            None,
        );
        let r = match verb {
            "DEL" => host.call("DEL", 3),
            _ => host.call_port("GC", 9, 8009),
        };
        ok(r, verb);
        assert!(host.listed().is_empty(), "{verb} left {:?}", host.listed());
    }
}

/// An ADD refused for a host port another container maps changes nothing: not even
/// the shared table inet ve-nat, when it is missing, is installed.
#[test]
fn a_refused_add_installs_nothing() {
    if !privileged("a_refused_add_installs_nothing", &["ip", "nft"]) {
        return;
    }
    let mut sb = Sandbox::new();
    let host = Host::new(&mut sb, "nftables");
    host.call("ADD", 1);
    host.nft(&["delete", "table", "inet", "ve-nat"], None);
    let before = host.nft(&["list", "ruleset"], None);
    let (_, r) = host.call_port("ADD", 2, 8001);
    assert!(
        !r.ok && r.stdout["code"] == 173,
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert!(
        host.nft(&["list", "ruleset"], None) == before,
        "a refused ADD changed the ruleset: {}",
        host.nft(&["list", "tables"], None)
    );
    // Not refused: the shared table is installed again.
    host.call("ADD", 2);
    let after = host.nft(&["list", "tables"], None);
    assert!(after.contains("table inet ve-nat\n"), "{after}");
}
