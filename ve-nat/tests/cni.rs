//! ve-nat as a chained CNI plugin with the iptables backends (iptables-nft and
//! iptables-legacy), called the way a runtime calls it (CNI_* environment, the
//! configuration with prevResult and runtimeConfig.portMappings on stdin), against the
//! real iptables and kernel with real traffic, in sandbox namespaces (testbed::nat:
//! ctr -- host -- out). And `ve-nat down` next to CNI mode's mappings.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
};

use serde_json::{json, Value};
use testbed::{
    nat::{blocked, seen, PeerServer as Server},
    privileged,
};

mod support;

use support::{topo::Topo, BIN};

const NET: &str = "vetest";

fn gate(test: &str) -> bool {
    privileged(
        test,
        &[
            "ip",
            "nft",
            "iptables-nft-save",
            "iptables-legacy-save",
            "ip6tables-nft-save",
        ],
    )
}

fn id(n: u32) -> String {
    format!("{n:08x}").repeat(8)
}

/// What the interface plugin would have returned for container `i` (1-based) of
/// the topology: host end ve-c<i>, eth0 10.233.i.2 in the container.
fn prev(t: &Topo, i: usize) -> Value {
    json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": format!("ve-c{i}")},
                       {"name": "eth0", "sandbox": t.ctrs[i - 1].path().display().to_string()}],
        "ips": [{"address": format!("10.233.{i}.2/24"), "interface": 1}]})
}

fn conf(t: &Topo, i: usize, ports: &[(u16, u16)], network: &str) -> Value {
    let pm: Vec<Value> = ports
        .iter()
        .map(|(h, c)| json!({"hostPort": h, "containerPort": c, "protocol": "tcp"}))
        .collect();
    json!({"cniVersion": "1.0.0", "name": network, "type": "ve-nat",
        "external": "up0", "backend": t.backend,
        "runtimeConfig": {"portMappings": pm}, "prevResult": prev(t, i)})
}

struct Reply {
    ok: bool,
    stdout: Value,
}

/// One plugin call in the host namespace, not started yet: the runtime's environment
/// (nothing inherited but PATH, plus the topology's scratch lock and state
/// directories).
fn plugin(t: &Topo, verb: &str, container: &str) -> Command {
    let mut c = t.host.command(BIN);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", verb)
        .env("CNI_PATH", "/nonexistent")
        .env("CNI_CONTAINERID", container)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", "/proc/self/ns/net-gone");
    t.scratch_env(&mut c);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Start `plugin`, its configuration written to its stdin.
fn start(mut c: Command, conf: &Value) -> Child {
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    child
}

/// One plugin call (see `plugin`).
fn call(t: &Topo, verb: &str, conf: &Value, container: &str) -> Reply {
    reply(verb, start(plugin(t, verb, container), conf))
}

fn reply(verb: &str, child: Child) -> Reply {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let stdout = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{verb}: not JSON ({e}): {text}"))
    };
    if !out.status.success() {
        eprintln!("{verb}: {text} / {}", String::from_utf8_lossy(&out.stderr));
    }
    Reply {
        ok: out.status.success(),
        stdout,
    }
}

fn ok(t: &Topo, verb: &str, conf: &Value, container: &str) -> Value {
    let r = call(t, verb, conf, container);
    assert!(r.ok, "{verb}: {}", r.stdout);
    r.stdout
}

/// `iptables-B-save -t TABLE` in the host namespace (B: nft or legacy), without the
/// counters and comment lines.
fn save(t: &Topo, table: &str) -> String {
    let b = backend_suffix(t);
    t.host
        .sh(&format!("iptables-{b}-save -t {table}"))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{}\n", l.split(" [").next().unwrap_or(l)))
        .collect()
}

/// Both families' nat and filter tables as their save commands list them, without
/// the comment lines and the chains' counters (an IPv6 rule's `[addr]:port` kept).
fn save_both(t: &Topo) -> String {
    let b = backend_suffix(t);
    let mut out = String::new();
    for fam in ["iptables", "ip6tables"] {
        for table in ["nat", "filter"] {
            out += &format!("== {fam} {table}\n");
            for l in t.host.sh(&format!("{fam}-{b}-save -t {table}")).lines() {
                if l.starts_with(':') {
                    out += l.split(" [").next().unwrap_or(l);
                } else if !l.starts_with('#') {
                    out += l;
                }
                out.push('\n');
            }
        }
    }
    out
}

fn backend_suffix(t: &Topo) -> &'static str {
    match t.backend {
        "iptables-legacy" => "legacy",
        _ => "nft",
    }
}

/// The rules of `chain` as iptables-save lists them.
fn chain(t: &Topo, table: &str, chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    save(t, table)
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

fn cni_lifecycle(backend: &'static str) {
    let mut t = Topo::new(backend, 2, false);
    t.add_container(); // a third, for GC
    let _srv: Vec<Server> = (1..=3)
        .map(|i| Server::start(&t.ctrs[i - 1], &format!("10.233.{i}.2:80")))
        .collect();
    let outside = Server::start(&t.out, "192.0.2.2:9000");
    // Negative control: nothing NATs yet, the outside server sees the container.
    t.forwarding_on();
    assert_eq!(seen(&t.ctrs[0], "192.0.2.2:9000"), "10.233.1.2");

    // ADD of container 1: the shared NAT (ve-nat's chains) once, its mapping as rules.
    let c1 = conf(&t, 1, &[(8080, 80)], NET);
    let r = ok(&t, "ADD", &c1, &id(1));
    assert_eq!(r, c1["prevResult"], "ADD passes prevResult on");
    assert_eq!(
        seen(&t.ctrs[0], "192.0.2.2:9000"),
        "192.0.2.1",
        "masquerade"
    );
    // `ve-nat up` with a forward of its own replaces the shared chains; later ADDs
    // leave them as they are.
    let up = [
        "up",
        "--external",
        "up0",
        "--forward",
        "tcp:9090:10.233.3.2:80",
    ];
    t.nat_ok(&up);
    assert_eq!(seen(&t.out, "192.0.2.1:9090"), "192.0.2.2");
    assert_eq!(
        seen(&t.out, "192.0.2.1:8080"),
        "192.0.2.2",
        "mapping from outside"
    );
    // Hairpin: container 2 through the host's address, masqueraded to the host's end.
    assert_eq!(seen(&t.ctrs[1], "192.0.2.1:8080"), "10.233.1.1");
    let post = chain(&t, "nat", "ve-nat-post");
    let fwd = chain(&t, "filter", "ve-nat-fwd");
    // Nothing of iptables' other backend, and no nftables table of ours.
    assert!(!t.host.sh("nft list tables").contains("inet ve-nat"));

    // ADD of container 2: no shared rule added, one rule per chain for its mapping.
    let c2 = conf(&t, 2, &[(8081, 80)], NET);
    ok(&t, "ADD", &c2, &id(2));
    assert_eq!(
        chain(&t, "nat", "ve-nat-post"),
        post,
        "a rule per container"
    );
    assert_eq!(
        chain(&t, "filter", "ve-nat-fwd"),
        fwd,
        "a rule per container"
    );
    assert_eq!(chain(&t, "nat", "ve-nat-cni-post").len(), 1);
    assert_eq!(chain(&t, "nat", "ve-nat-cni-pre").len(), 2);
    assert_eq!(chain(&t, "filter", "ve-nat-cni-fwd").len(), 2);
    assert_eq!(seen(&t.out, "192.0.2.1:8081"), "192.0.2.2");
    assert_eq!(
        seen(&t.host, "192.0.2.1:8081"),
        "192.0.2.1",
        "from the host"
    );
    // ADD again: idempotent, nothing rewritten.
    let before = save(&t, "nat") + &save(&t, "filter");
    ok(&t, "ADD", &c2, &id(2));
    assert_eq!(save(&t, "nat") + &save(&t, "filter"), before);

    // CHECK: fine; after drift (container 1's forward accept deleted) it fails, and
    // ADD puts it back.
    ok(&t, "CHECK", &c1, &id(1));
    ok(&t, "CHECK", &c2, &id(2));
    let accept = chain(&t, "filter", "ve-nat-cni-fwd")
        .into_iter()
        .find(|r| r.contains("10.233.1.2/32"))
        .expect("container 1's accept");
    let b = backend_suffix(&t);
    t.host
        .sh(&format!("iptables-{b} -D ve-nat-cni-fwd {accept}"));
    assert!(!call(&t, "CHECK", &c1, &id(1)).ok, "CHECK after drift");
    ok(&t, "ADD", &c1, &id(1));
    ok(&t, "CHECK", &c1, &id(1));
    // A CHECK with other mappings than installed fails.
    assert!(!call(&t, "CHECK", &conf(&t, 1, &[(8090, 80)], NET), &id(1)).ok);

    // Container 3 asks for container 2's host port: refused (173), nothing added.
    let c3 = conf(&t, 3, &[(8081, 80)], NET);
    let r = call(&t, "ADD", &c3, &id(3));
    assert!(!r.ok && r.stdout["code"] == 173, "{}", r.stdout);
    // And `ve-nat up --forward`'s host port: refused too.
    let r = call(&t, "ADD", &conf(&t, 3, &[(9090, 80)], NET), &id(3));
    assert!(!r.ok && r.stdout["code"] == 173, "{}", r.stdout);
    assert_eq!(chain(&t, "nat", "ve-nat-cni-pre").len(), 2);
    let check = [&["check"][..], &up[1..]].concat();
    assert_eq!(
        t.nat(&check).status.code(),
        Some(0),
        "ADD changed up's chains"
    );

    // DEL of container 1: its rules go, container 2's stay; DEL twice is fine.
    ok(&t, "DEL", &c1, &id(1));
    assert!(blocked(&t.out, "192.0.2.1:8080"), "DEL left the mapping");
    assert_eq!(seen(&t.out, "192.0.2.1:8081"), "192.0.2.2");
    assert_eq!(chain(&t, "nat", "ve-nat-cni-pre").len(), 1);
    assert_eq!(chain(&t, "nat", "ve-nat-cni-out").len(), 1);
    assert_eq!(chain(&t, "filter", "ve-nat-cni-fwd").len(), 1);
    ok(&t, "DEL", &c1, &id(1));
    assert!(!call(&t, "CHECK", &c1, &id(1)).ok, "CHECK after DEL");

    // GC: container 3 (now mapped) is not in valid-attachments; container 2 is, and
    // another network's mapping stays whatever its list says.
    ok(&t, "ADD", &conf(&t, 3, &[(8083, 80)], NET), &id(3));
    let other = conf(&t, 1, &[(8084, 80)], "other-net");
    ok(&t, "ADD", &other, &id(1));
    let mut gc = json!({"cniVersion": "1.1.0", "name": NET, "type": "ve-nat",
        "external": "up0", "backend": backend,
        "cni.dev/valid-attachments": [{"containerID": id(2), "ifname": "eth0"}]});
    ok(&t, "GC", &gc, "");
    assert!(blocked(&t.out, "192.0.2.1:8083"), "GC left container 3");
    assert_eq!(
        seen(&t.out, "192.0.2.1:8081"),
        "192.0.2.2",
        "GC took container 2"
    );
    assert_eq!(
        seen(&t.out, "192.0.2.1:8084"),
        "192.0.2.2",
        "GC took another network's"
    );
    ok(&t, "CHECK", &c2, &id(2));
    ok(&t, "CHECK", &other, &id(1));
    gc["cni.dev/valid-attachments"] = json!([]);
    ok(&t, "GC", &gc, "");
    assert!(blocked(&t.out, "192.0.2.1:8081"));
    assert_eq!(seen(&t.out, "192.0.2.1:8084"), "192.0.2.2");
    assert_eq!(
        seen(&t.out, "192.0.2.1:9090"),
        "192.0.2.2",
        "GC took up's forward"
    );

    // `ve-nat down` (shell mode): ve-nat's chains go, CNI mode's mapping stays (and
    // still answers), with a note; `down --cni` removes it too.
    let d = t.nat_cmd(&["down"]).output().unwrap();
    assert!(d.status.success());
    assert!(
        String::from_utf8_lossy(&d.stderr).contains("down --cni"),
        "{}",
        String::from_utf8_lossy(&d.stderr)
    );
    assert!(chain(&t, "nat", "ve-nat-post").is_empty());
    assert_eq!(chain(&t, "nat", "ve-nat-cni-pre").len(), 1);
    assert_eq!(seen(&t.out, "192.0.2.1:8084"), "192.0.2.2");
    t.nat_ok(&["down", "--cni"]);
    let all = save(&t, "nat") + &save(&t, "filter");
    assert!(!all.contains("ve-nat"), "{all}");
    assert!(blocked(&t.out, "192.0.2.1:8084"));
    t.nat_ok(&["down", "--cni"]);
    drop(outside);
}

#[test]
fn cni_mode_with_iptables_nft() {
    if !gate("cni_mode_with_iptables_nft") {
        return;
    }
    cni_lifecycle("iptables-nft");
}

#[test]
fn cni_mode_with_iptables_legacy() {
    if !gate("cni_mode_with_iptables_legacy") {
        return;
    }
    cni_lifecycle("iptables-legacy");
}

/// nftables: `ve-nat down` leaves table inet ve-nat-cni (CNI containers keep their
/// mappings), says so, and `down --cni` removes it.
#[test]
fn down_leaves_cni_mappings_unless_asked() {
    if !gate("down_leaves_cni_mappings_unless_asked") {
        return;
    }
    let t = Topo::new("nftables", 1, false);
    let _srv = Server::start(&t.ctrs[0], "10.233.1.2:80");
    let c1 = conf(&t, 1, &[(8080, 80)], NET);
    ok(&t, "ADD", &c1, &id(1));
    assert_eq!(seen(&t.out, "192.0.2.1:8080"), "192.0.2.2");
    let d = t.nat_cmd(&["down"]).output().unwrap();
    assert!(d.status.success());
    assert!(String::from_utf8_lossy(&d.stderr).contains("down --cni"));
    let tables = t.host.sh("nft list tables");
    assert!(tables.contains("table inet ve-nat-cni"), "{tables}");
    assert!(!tables.contains("table inet ve-nat\n"), "{tables}");
    assert_eq!(seen(&t.out, "192.0.2.1:8080"), "192.0.2.2");
    // The next ADD brings the shared NAT back.
    ok(&t, "ADD", &c1, &id(1));
    assert!(t.host.sh("nft list tables").contains("table inet ve-nat\n"));
    t.nat_ok(&["down", "--cni"]);
    assert!(!t.host.sh("nft list tables").contains("ve-nat"));
    assert!(blocked(&t.out, "192.0.2.1:8080"));
    t.nat_ok(&["down", "--cni"]);
}

/// IPv6 (`"ipv6": true`) with iptables-nft: ip6tables gets the shared NAT and the
/// mapping to the container's IPv6 address; DEL takes both families' rules.
#[test]
fn cni_mode_with_iptables_ipv6() {
    if !gate("cni_mode_with_iptables_ipv6") {
        return;
    }
    let t = Topo::new("iptables-nft", 1, true);
    let _srv = Server::start(&t.ctrs[0], "[fd00:1::2]:80");
    let _srv4 = Server::start(&t.ctrs[0], "10.233.1.2:80");
    let outside = Server::start(&t.out, "[2001:db8::2]:9000");
    let mut c = conf(&t, 1, &[(8080, 80)], NET);
    c["ipv6"] = json!(true);
    c["prevResult"]["ips"] = json!([{"address": "10.233.1.2/24", "interface": 1},
                                    {"address": "fd00:1::2/64", "interface": 1}]);
    ok(&t, "ADD", &c, &id(1));
    assert_eq!(
        seen(&t.ctrs[0], "[2001:db8::2]:9000"),
        "2001:db8::1",
        "NAT66"
    );
    assert_eq!(seen(&t.out, "[2001:db8::1]:8080"), "2001:db8::2");
    assert_eq!(seen(&t.out, "192.0.2.1:8080"), "192.0.2.2");
    ok(&t, "CHECK", &c, &id(1));
    ok(&t, "DEL", &c, &id(1));
    assert!(blocked(&t.out, "[2001:db8::1]:8080"));
    assert!(blocked(&t.out, "192.0.2.1:8080"));
    let v6 = t.host.sh("ip6tables-nft-save -t nat");
    assert!(!v6.contains("vecni-"), "{v6}");
    drop(outside);
}

/// A refused ADD changes nothing with an iptables backend: container 1's mapping
/// stays after `ve-nat down` (which removes ve-nat's own chains), and container 2's ADD
/// of the same host port is refused (173) without installing ve-nat's chains again
/// first; iptables-save shows exactly what it showed before. Then the usual ADD
/// still works, the shared chains with it.
fn refused_add_installs_nothing(backend: &'static str) {
    let t = Topo::new(backend, 2, false);
    let _srv = Server::start(&t.ctrs[1], "10.233.2.2:80");
    let _outside = Server::start(&t.out, "192.0.2.2:9000");
    ok(&t, "ADD", &conf(&t, 1, &[(8080, 80)], NET), &id(1));
    assert!(t.nat_cmd(&["down"]).output().unwrap().status.success());
    assert!(chain(&t, "nat", "ve-nat-post").is_empty(), "down left ours");
    assert_eq!(chain(&t, "nat", "ve-nat-cni-pre").len(), 1);
    let before = save(&t, "nat") + &save(&t, "filter");
    let r = call(&t, "ADD", &conf(&t, 2, &[(8080, 80)], NET), &id(2));
    assert!(!r.ok && r.stdout["code"] == 173, "{}", r.stdout);
    let after = save(&t, "nat") + &save(&t, "filter");
    assert_eq!(after, before, "a refused ADD changed iptables");
    ok(&t, "ADD", &conf(&t, 2, &[(8081, 80)], NET), &id(2));
    assert!(!chain(&t, "nat", "ve-nat-post").is_empty(), "no shared NAT");
    assert_eq!(seen(&t.out, "192.0.2.1:8081"), "192.0.2.2");
    assert_eq!(
        seen(&t.ctrs[1], "192.0.2.2:9000"),
        "192.0.2.1",
        "masquerade"
    );
}

#[test]
fn refused_add_installs_nothing_iptables_nft() {
    if gate("refused_add_installs_nothing_iptables_nft") {
        refused_add_installs_nothing("iptables-nft");
    }
}

#[test]
fn refused_add_installs_nothing_iptables_legacy() {
    if gate("refused_add_installs_nothing_iptables_legacy") {
        refused_add_installs_nothing("iptables-legacy");
    }
}

/// Container `i`'s configuration with `"ipv6": true`, its addresses 10.233.i.2 (with
/// `v4`) and fd00:i::2.
fn conf6(t: &Topo, i: usize, ports: &[(u16, u16)], v4: bool) -> Value {
    let mut c = conf(t, i, ports, NET);
    c["ipv6"] = json!(true);
    let mut ips = vec![json!({"address": format!("fd00:{i}::2/64"), "interface": 1})];
    if v4 {
        ips.insert(
            0,
            json!({"address": format!("10.233.{i}.2/24"), "interface": 1}),
        );
    }
    c["prevResult"]["ips"] = json!(ips);
    c
}

/// A refused ADD changes nothing when only its IPv6 mapping clashes: no IPv4 rule is
/// written first. Once with the clash there from the start, once with it appearing
/// while the ADD waits for ve-nat's lock, after its first look found the port free
/// (the rules a concurrent ADD would have written, restored by the test while it holds
/// the lock). Both families' iptables-save stay byte-identical.
fn refused_add_with_an_ipv6_clash(backend: &'static str) {
    let t = Topo::new(backend, 2, true);
    // Container 1 maps 8080 over IPv6 only (it has no IPv4 address); the shared
    // chains of both families come with it.
    let c1 = conf6(&t, 1, &[(8080, 80)], false);
    ok(&t, "ADD", &c1, &id(1));
    let c2 = conf6(&t, 2, &[(8080, 80)], true);
    let before = save_both(&t);
    let r = call(&t, "ADD", &c2, &id(2));
    assert!(!r.ok && r.stdout["code"] == 173, "{}", r.stdout);
    assert_eq!(save_both(&t), before, "a refused ADD changed iptables");

    // Container 1's rules as restore input, then gone: the port is free again.
    let b = backend_suffix(&t);
    let mut rules = String::new();
    for table in ["nat", "filter"] {
        rules += &format!("*{table}\n");
        for l in t.host.sh(&format!("ip6tables-{b}-save -t {table}")).lines() {
            if l.starts_with("-A ") && l.contains("vecni-") {
                rules += &format!("{l}\n");
            }
        }
        rules += "COMMIT\n";
    }
    assert_eq!(rules.matches("vecni-").count(), 3, "{rules}");
    ok(&t, "DEL", &c1, &id(1));
    // Container 2's ADD waits for the lock the test holds.
    let lock = std::fs::File::open(t.lock_dir().join("lock")).unwrap();
    lock.lock().unwrap();
    let mut c = plugin(&t, "ADD", &id(2));
    c.env("RUST_LOG", "debug");
    let mut child = start(c, &c2);
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for l in stderr.lines().map_while(Result::ok) {
            if l.contains("waiting for another ve-nat") {
                let _ = tx.send(());
            }
            all += &l;
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .expect("the ADD never waited for the lock");
    // A concurrent ADD's IPv6 mapping of 8080, there before the waiting ADD writes.
    t.host.sh(&format!(
        "ip6tables-{b}-restore --noflush <<'EOF'\n{rules}EOF\n"
    ));
    let before = save_both(&t);
    drop(lock);
    let out = child.wait_with_output().unwrap();
    let log = log.join().unwrap();
    let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        !out.status.success() && stdout["code"] == 173,
        "{stdout} / {log}"
    );
    assert_eq!(save_both(&t), before, "a refused ADD changed iptables");
    // With the port free, container 2 gets it in both families.
    ok(&t, "DEL", &c1, &id(1));
    ok(&t, "ADD", &c2, &id(2));
    ok(&t, "CHECK", &c2, &id(2));
}

#[test]
fn refused_add_with_an_ipv6_clash_iptables_nft() {
    if gate("refused_add_with_an_ipv6_clash_iptables_nft") {
        refused_add_with_an_ipv6_clash("iptables-nft");
    }
}

#[test]
fn refused_add_with_an_ipv6_clash_iptables_legacy() {
    if gate("refused_add_with_an_ipv6_clash_iptables_legacy") {
        refused_add_with_an_ipv6_clash("iptables-legacy");
    }
}

/// `ve-nat down` when iptables-legacy-save fails (a wrapper first on PATH that fails)
/// while ve-nat's chains and CNI mode's are in iptables-legacy: a listing that fails
/// is not "nothing there". What `down` was asked to remove and could not list is an
/// error (down does the rest, then exits 71): ve-nat's own chains always, CNI mode's
/// with --cni; without --cni only the note depends on those, and it is a warning.
#[test]
fn down_reports_a_failed_iptables_listing() {
    if !gate("down_reports_a_failed_iptables_listing") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let t = Topo::new("iptables-legacy", 1, false);
    ok(&t, "ADD", &conf(&t, 1, &[(8080, 80)], NET), &id(1));
    let dir = testbed::TempDir::new("ve-nat-failing-save");
    for name in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            "#!/bin/sh\necho \"$0: cannot list (test)\" >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Its exit code, and its error and warning lines that name the failed listing.
    let down = |args: &[&str], failing: bool| {
        let mut c = t.nat_cmd_with("nftables", args);
        if failing {
            c.env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", dir.path().display()),
            );
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        eprintln!("down {args:?} (failing {failing}): {:?} {err}", o.status);
        let lines = |kind: &str| -> Vec<String> {
            err.lines()
                .filter(|l| l.starts_with(&format!("ve-nat: {kind}:")))
                .filter(|l| l.contains("cannot list (test)"))
                .map(str::to_string)
                .collect()
        };
        (o.status.code(), lines("error"), lines("warning"))
    };
    let ours = |c: &str| chain(&t, "nat", c).len();
    // ve-nat's own chains cannot be listed: an error, and they are still there.
    let (code, errors, warnings) = down(&["down"], true);
    assert_eq!(code, Some(71));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("ve-nat's chains"), "{errors:?}");
    assert!(!errors[0].contains("CNI mode's"), "{errors:?}");
    // A warning line per legacy family (IPv4, and IPv6 since the ADD listed it).
    assert!(!warnings.is_empty(), "nothing said of CNI mode's chains");
    assert!(
        warnings.iter().all(|w| w.contains("CNI mode's chains")),
        "{warnings:?}"
    );
    assert_eq!(ours("ve-nat-post"), 1, "ve-nat's chains");
    // The same with iptables-nft chosen (legacy is the other backend then).
    let failing = |backend: &str, args: &[&str]| {
        let mut c = t.nat_cmd_with(backend, args);
        c.env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", dir.path().display()),
        );
        c.output().unwrap()
    };
    let o = failing("iptables-nft", &["down"]);
    assert_eq!(o.status.code(), Some(71), "{o:?}");
    assert_eq!(ours("ve-nat-post"), 1, "ve-nat's chains");
    // They go with the real iptables-legacy-save; CNI mode's stay.
    assert_eq!(down(&["down"], false).0, Some(0));
    assert_eq!(ours("ve-nat-post"), 0);
    assert_eq!(ours("ve-nat-cni-pre"), 1);
    // With --cni, CNI mode's chains were asked for: an error too.
    let (code, errors, _) = down(&["down", "--cni"], true);
    assert_eq!(code, Some(71));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("CNI mode's chains"), "{errors:?}");
    assert_eq!(ours("ve-nat-cni-pre"), 1);
    assert_eq!(down(&["down", "--cni"], false).0, Some(0));
    let all = save(&t, "nat") + &save(&t, "filter");
    assert!(!all.contains("ve-nat"), "{all}");
}
