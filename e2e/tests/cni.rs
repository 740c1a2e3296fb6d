//! The tools as CNI plugins, driven exactly as a runtime drives them: `CNI_*`
//! environment, the configuration on stdin, the result or error JSON on stdout. The
//! IPAM harness runs against ve-alloc and, as the control, against the reference
//! host-local (Debian's containernetworking-plugins), so a failure is shown to be the
//! plugin's and not the harness's.

mod support;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{json, Value};
use testbed::{
    cni::{container_id, Reply},
    TempDir,
};

/// Every spec version the tools speak.
const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Where Debian's containernetworking-plugins live.
const REFERENCE: &str = "/usr/lib/cni";

/// One call: the runtime's environment (nothing inherited but PATH) and stdin.
fn call(bin: &Path, verb: &str, conf: &Value, id: &str, ifname: &str, args: &str) -> Reply {
    let mut env = vec![(
        "CNI_PATH",
        bin.parent().unwrap_or(Path::new("/")).display().to_string(),
    )];
    if !id.is_empty() {
        env.extend([
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_IFNAME", ifname.to_string()),
            // IPAM plugins never enter it: a namespace that is gone must not matter.
            ("CNI_NETNS", "/proc/self/ns/net-gone".to_string()),
            ("CNI_ARGS", args.to_string()),
        ]);
    }
    run_plugin(Command::new(bin), verb, conf, &env)
}

/// Run a plugin command as a runtime does, with nothing inherited but PATH; a failure
/// must come with a CNI error object (testbed::cni::invoke checks).
fn run_plugin(mut c: Command, verb: &str, conf: &Value, env: &[(&str, String)]) -> Reply {
    testbed::cni::clean_env(&mut c);
    testbed::cni::invoke(c, verb, conf, env).unwrap_or_else(|e| panic!("{e}"))
}

fn ok(bin: &Path, verb: &str, conf: &Value, id: &str, ifname: &str, args: &str) -> Value {
    let r = call(bin, verb, conf, id, ifname, args);
    assert!(r.ok, "{verb} {}: {}", bin.display(), r.stdout);
    r.stdout
}

fn versions_of(bin: &Path) -> Vec<String> {
    let v = ok(bin, "VERSION", &json!({"cniVersion": "1.0.0"}), "", "", "");
    assert_eq!(
        v["cniVersion"], "1.0.0",
        "VERSION answers in the request's version"
    );
    v["supportedVersions"]
        .as_array()
        .expect("supportedVersions")
        .iter()
        .map(|s| s.as_str().expect("version string").to_string())
        .collect()
}

#[test]
fn every_tool_answers_version_in_the_requested_version() {
    let dir = support::tools_dir();
    for tool in ["ve-alloc", "ve-link", "ve-nat", "nm-unmanage"] {
        let bin = dir.join(tool);
        assert_eq!(versions_of(&bin), VERSIONS, "{tool}");
        for v in VERSIONS {
            let r = ok(&bin, "VERSION", &json!({"cniVersion": v}), "", "", "");
            assert_eq!(r["cniVersion"], v, "{tool}");
        }
    }
    // ve-nat is a chained plugin: ADD without prevResult is CNI error 7, nothing done.
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "ve-nat", "external": "up0"});
    let r = call(
        &dir.join("ve-nat"),
        "ADD",
        &conf,
        &container_id(1),
        "eth0",
        "",
    );
    assert!(!r.ok);
    assert_eq!(r.stdout["code"], 7, "{}", r.stdout);
}

/// The reference control's data dir, or our store, per test.
struct Ipam {
    bin: PathBuf,
    conf: fn(&Path, &str) -> Value,
    dir: TempDir,
    /// A repeated ADD of one attachment returns its lease again.
    repeat_add: bool,
}

impl Ipam {
    fn conf(&self, version: &str) -> Value {
        (self.conf)(self.dir.path(), version)
    }
}

fn ve_alloc() -> Ipam {
    Ipam {
        bin: support::tools_dir().join("ve-alloc"),
        conf: |dir, v| {
            json!({
                "cniVersion": v, "name": "vetest", "type": "ve-link",
                "ipam": {"type": "ve-alloc", "pool": "10.233.0.0/16", "pool6": "fd42::/64",
                         "store": dir.join("store")}
            })
        },
        dir: TempDir::new("cni-va"),
        repeat_add: true,
    }
}

/// The reference host-local, when installed (`cargo xtask test` installs it).
fn host_local() -> Option<Ipam> {
    let bin = Path::new(REFERENCE).join("host-local");
    if !bin.is_file() {
        assert!(
            std::env::var_os(testbed::REQUIRE_PRIVILEGED).is_none(),
            "{} is missing: apt-get install containernetworking-plugins",
            bin.display()
        );
        eprintln!("skipping the host-local control: {} missing", bin.display());
        return None;
    }
    Some(Ipam {
        bin,
        conf: |dir, v| {
            json!({
                "cniVersion": v, "name": "vetest", "type": "ptp",
                "ipam": {"type": "host-local", "dataDir": dir.join("data"),
                         "ranges": [[{"subnet": "10.233.0.0/16"}], [{"subnet": "fd42::/64"}]],
                         "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
            })
        },
        dir: TempDir::new("cni-hl"),
        repeat_add: false,
    })
}

fn is_cidr(s: &str) -> bool {
    s.split_once('/').is_some_and(|(a, p)| {
        a.parse::<IpAddr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 128)
    })
}

/// An IPAM result as the spec has it for `version`.
fn check_ipam_result(r: &Value, version: &str) {
    assert_eq!(
        r["cniVersion"], version,
        "the result is in the request's version"
    );
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "an IPv4 and an IPv6 address: {r}");
    for ip in ips {
        let a = ip["address"].as_str().expect("address");
        assert!(is_cidr(a), "{a}");
        let gw: IpAddr = ip["gateway"].as_str().expect("gateway").parse().unwrap();
        let addr: IpAddr = a.split('/').next().unwrap().parse().unwrap();
        assert_eq!(gw.is_ipv4(), addr.is_ipv4(), "{ip}");
        // 0.3.x and 0.4.0 say the family in "version"; 1.0.0 dropped it.
        let family = if addr.is_ipv4() { "4" } else { "6" };
        if version.starts_with("0.") {
            assert_eq!(ip["version"], family, "{version}: {ip}");
        } else {
            assert!(ip.get("version").is_none(), "{version}: {ip}");
        }
    }
    let routes = r["routes"].as_array().expect("routes");
    let dsts: Vec<&str> = routes.iter().filter_map(|x| x["dst"].as_str()).collect();
    assert!(dsts.contains(&"0.0.0.0/0") && dsts.contains(&"::/0"), "{r}");
    for rt in routes {
        if let Some(gw) = rt.get("gw") {
            assert!(
                gw.as_str().is_some_and(|g| g.parse::<IpAddr>().is_ok()),
                "{rt}"
            );
        }
    }
}

fn addresses(r: &Value) -> Vec<String> {
    r["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str().map(str::to_string))
        .collect()
}

/// ADD, ADD again, CHECK, DEL, DEL again, CHECK after DEL, for every version the
/// plugin lists of ours.
fn ipam_lifecycle(p: &Ipam) {
    let supported = versions_of(&p.bin);
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web";
    for (n, v) in (1u32..).zip(VERSIONS) {
        if !supported.iter().any(|s| s == v) {
            eprintln!("{}: does not list {v}; skipped", p.bin.display());
            continue;
        }
        let conf = p.conf(v);
        let id = container_id(n);
        let first = ok(&p.bin, "ADD", &conf, &id, "eth0", args);
        check_ipam_result(&first, v);
        // A repeated ADD (a runtime retrying) gets the same lease from ve-alloc; the
        // spec does not ask it, and host-local refuses it ("duplicate allocation").
        if p.repeat_add {
            // Without the pod name this time: the attachment, not the name, is the key.
            let again = ok(&p.bin, "ADD", &conf, &id, "eth0", "");
            assert_eq!(addresses(&again), addresses(&first), "{v}: a repeated ADD");
        }
        let other = ok(&p.bin, "ADD", &conf, &id, "eth1", args);
        let (a, b) = (addresses(&first), addresses(&other));
        assert!(
            a.iter().all(|x| !b.contains(x)),
            "eth0 {a:?} and eth1 {b:?} share"
        );
        let mut checked = conf.clone();
        checked["prevResult"] = first.clone();
        if v != "0.3.0" && v != "0.3.1" {
            ok(&p.bin, "CHECK", &checked, &id, "eth0", args);
        }
        for _ in 0..2 {
            ok(&p.bin, "DEL", &conf, &id, "eth0", args);
            ok(&p.bin, "DEL", &conf, &id, "eth1", args);
        }
        if v != "0.3.0" && v != "0.3.1" {
            let r = call(&p.bin, "CHECK", &checked, &id, "eth0", args);
            assert!(!r.ok, "{v}: CHECK of a released attachment passed");
        }
        // An address given back is handed out again only later (round robin), and an
        // ADD after DEL gets a working lease.
        let readd = ok(&p.bin, "ADD", &conf, &id, "eth0", "");
        check_ipam_result(&readd, v);
        ok(&p.bin, "DEL", &conf, &id, "eth0", "");
    }
}

#[test]
fn ve_alloc_ipam_lifecycle_in_every_version() {
    ipam_lifecycle(&ve_alloc());
}

#[test]
fn reference_host_local_passes_the_same_harness() {
    if let Some(p) = host_local() {
        ipam_lifecycle(&p);
    }
}

fn list(p: &Ipam) -> Vec<Value> {
    let out = Command::new(&p.bin)
        .args(["list", "--json"])
        .env("VE_ALLOC_STORE", p.dir.path().join("store"))
        .env("VE_ALLOC_CONFIG", "")
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn ve_alloc_leases_show_in_list_and_gc_keeps_only_valid_attachments() {
    let p = ve_alloc();
    let conf = p.conf("1.1.0");
    let ids: Vec<String> = (1..=3).map(container_id).collect();
    for id in &ids {
        ok(&p.bin, "ADD", &conf, id, "eth0", "K8S_POD_NAME=web");
    }
    // A lease of the shell interface in the same store: GC is not its business.
    let shell = Command::new(&p.bin)
        .args(["alloc", "shell-one"])
        .env("VE_ALLOC_STORE", p.dir.path().join("store"))
        .env("VE_ALLOC_CONFIG", "")
        .output()
        .unwrap();
    assert!(shell.status.success());
    let names: Vec<String> = list(&p)
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let lease = |id: &str| common::cni::lease_name("vetest", id, "eth0", Some("web"));
    let web = lease(&ids[0]);
    assert!(names.contains(&web), "{web} not in {names:?}");
    for n in &names {
        assert!(n.len() <= 63, "{n}");
    }

    ok(&p.bin, "STATUS", &conf, "", "", "");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": ids[1], "ifname": "eth0"}]);
    ok(&p.bin, "GC", &gc, "", "", "");
    let mut left: Vec<String> = list(&p)
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    left.sort();
    assert_eq!(left, vec![lease(&ids[1]), "shell-one".to_string()]);
    // GC is 1.1.0's: an older configuration is refused with code 1, changing nothing.
    let r = call(&p.bin, "GC", &p.conf("1.0.0"), "", "", "");
    assert!(!r.ok);
    assert_eq!(r.stdout["code"], 1);
    assert_eq!(list(&p).len(), 2);
}

#[test]
fn ve_alloc_gc_of_one_network_keeps_another_networks_leases_in_a_shared_store() {
    let p = ve_alloc();
    let a = p.conf("1.1.0");
    let mut b = a.clone();
    b["name"] = json!("vetest-b");
    let id = container_id(7);
    // One container on both networks (same ifname), one only on b.
    let ra = ok(&p.bin, "ADD", &a, &id, "eth0", "");
    let rb = ok(&p.bin, "ADD", &b, &id, "eth0", "");
    assert_ne!(addresses(&ra), addresses(&rb), "one lease for two networks");
    ok(&p.bin, "ADD", &b, &container_id(8), "eth0", "");
    assert_eq!(list(&p).len(), 3);
    let mut gc = a.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    ok(&p.bin, "GC", &gc, "", "", "");
    let mut left: Vec<String> = list(&p)
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    left.sort();
    let mut want: Vec<String> = [7, 8]
        .iter()
        .map(|n| common::cni::lease_name("vetest-b", &container_id(*n), "eth0", None))
        .collect();
    want.sort();
    assert_eq!(left, want);
    // b's attachment is still its own: CHECK passes, and DEL on a of it touches nothing.
    let mut chk = b.clone();
    chk["prevResult"] = rb.clone();
    ok(&p.bin, "CHECK", &chk, &id, "eth0", "");
    ok(&p.bin, "DEL", &a, &id, "eth0", "");
    assert_eq!(list(&p).len(), 2);
}

#[test]
fn ve_alloc_refuses_bad_calls_with_cni_errors_and_no_state() {
    let p = ve_alloc();
    let id = container_id(7);
    // No store named: no state anywhere else, so a refusal (7: invalid config).
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "ve-alloc"});
    let r = call(&p.bin, "ADD", &conf, &id, "eth0", "");
    assert!(!r.ok);
    assert_eq!(r.stdout["code"], 7);
    assert_eq!(r.stdout["cniVersion"], "1.0.0");
    // An unknown version: 1, in a version the runtime can read.
    let r = call(&p.bin, "ADD", &p.conf("9.9.9"), &id, "eth0", "");
    assert_eq!(r.stdout["code"], 1);
    // A bad container ID: 4 (invalid environment).
    let r = call(&p.bin, "ADD", &p.conf("1.0.0"), "-bad", "eth0", "");
    assert_eq!(r.stdout["code"], 4);
    // A bad pool: 7.
    let mut bad = p.conf("1.0.0");
    bad["ipam"]["pool"] = json!("10.0.0.0/33");
    let r = call(&p.bin, "ADD", &bad, &id, "eth0", "");
    assert_eq!(r.stdout["code"], 7);
    assert!(
        !p.dir.path().join("store").exists(),
        "a refused call created the store"
    );
}

/// An interface plugin with its IPAM plugin, as a conflist names them.
struct Main {
    /// CNI_PATH: a directory of plugins (ours: a directory of symlinks).
    path: PathBuf,
    conf: fn(&Path, &str) -> Value,
    dir: TempDir,
    plugin: &'static str,
    /// How to tell whether the attachment's addresses are still leased.
    leased: fn(&Path) -> usize,
}

fn ve_link() -> Main {
    let dir = TempDir::new("cni-vl");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["ve-link", "ve-alloc"] {
        std::os::unix::fs::symlink(support::tools_dir().join(tool), bin.join(tool)).unwrap();
    }
    Main {
        path: bin,
        conf: |dir, v| {
            json!({
                "cniVersion": v, "name": "vetest", "type": "ve-link",
                "ipam": {"type": "ve-alloc", "pool": "10.233.0.0/16", "pool6": "fd42::/64",
                         "store": dir.join("store")}
            })
        },
        dir,
        plugin: "ve-link",
        leased: |dir| {
            let out = Command::new(support::tools_dir().join("ve-alloc"))
                .args(["list", "--json"])
                .env("VE_ALLOC_STORE", dir.join("store"))
                .env("VE_ALLOC_CONFIG", "")
                .env_remove("CNI_COMMAND")
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).lines().count()
        },
    }
}

fn ptp() -> Option<Main> {
    if !Path::new(REFERENCE).join("ptp").is_file() {
        assert!(
            std::env::var_os(testbed::REQUIRE_PRIVILEGED).is_none(),
            "{REFERENCE}/ptp is missing: apt-get install containernetworking-plugins"
        );
        eprintln!("skipping the ptp control: {REFERENCE}/ptp missing");
        return None;
    }
    Some(Main {
        path: PathBuf::from(REFERENCE),
        conf: |dir, v| {
            json!({
                "cniVersion": v, "name": "vetest", "type": "ptp",
                "ipam": {"type": "host-local", "dataDir": dir.join("data"),
                         "ranges": [[{"subnet": "10.233.0.0/16"}], [{"subnet": "fd42::/64"}]],
                         "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
            })
        },
        dir: TempDir::new("cni-ptp"),
        plugin: "ptp",
        leased: |dir| {
            // host-local keeps one file per address, named after it.
            std::fs::read_dir(dir.join("data/vetest"))
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
                        .count()
                })
                .unwrap_or(0)
        },
    })
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
        && s != "00:00:00:00:00:00"
}

/// The addresses (without prefix) on `ifname` in `ns`.
fn addrs_in(ns: &testbed::Netns, ifname: &str) -> Vec<String> {
    ns.ip_json(&["addr", "show", "dev", ifname])
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] == "global")
        .filter_map(|a| a["local"].as_str().map(str::to_string))
        .collect()
}

fn link_exists(ns: &testbed::Netns, ifname: &str) -> bool {
    ns.command("ip")
        .args(["link", "show", "dev", ifname])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// ADD, CHECK, CHECK after drift, DEL twice, and DEL after the namespace is gone, for
/// every version the plugin lists of ours, as a runtime calls it from the host.
fn interface_lifecycle(m: &Main) {
    let mut sb = testbed::Sandbox::new();
    let host = sb.netns("host");
    let bin = m.path.join(m.plugin);
    let supported = versions_of(&bin);
    for (n, v) in (1u32..).zip(VERSIONS) {
        if !supported.iter().any(|s| s == v) {
            eprintln!("{}: does not list {v}; skipped", bin.display());
            continue;
        }
        let ctr = sb.netns(&format!("c{n}"));
        let id = container_id(n);
        let conf = (m.conf)(m.dir.path(), v);
        let env = |netns: &str| {
            vec![
                ("CNI_PATH", m.path.display().to_string()),
                ("CNI_CONTAINERID", id.clone()),
                ("CNI_IFNAME", "eth0".to_string()),
                ("CNI_NETNS", netns.to_string()),
                ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web".to_string()),
            ]
        };
        let netns = ctr.path().display().to_string();
        let call = |verb: &str, conf: &Value, netns: &str| {
            run_plugin(
                host.command(&bin.display().to_string()),
                verb,
                conf,
                &env(netns),
            )
        };
        let add = call("ADD", &conf, &netns);
        assert!(add.ok, "{v} ADD: {}", add.stdout);
        let r = add.stdout;
        check_ipam_result(&r, v);
        let ifs = r["interfaces"].as_array().expect("interfaces");
        let sandboxed: Vec<usize> = (0..ifs.len())
            .filter(|&i| ifs[i]["sandbox"].as_str() == Some(netns.as_str()))
            .collect();
        assert_eq!(sandboxed.len(), 1, "{v}: one interface in the sandbox: {r}");
        let ci = sandboxed[0];
        assert_eq!(ifs[ci]["name"], "eth0");
        for i in ifs {
            assert!(i["mac"].as_str().is_some_and(is_mac), "{v}: {i}");
        }
        let host_end = ifs
            .iter()
            .find(|i| i.get("sandbox").is_none())
            .and_then(|i| i["name"].as_str())
            .expect("a host interface");
        assert!(
            link_exists(&host, host_end),
            "{v}: {host_end} not on the host"
        );
        let have = addrs_in(&ctr, "eth0");
        for ip in r["ips"].as_array().unwrap() {
            assert_eq!(ip["interface"], ci, "{v}: ips[].interface: {ip}");
            let a = ip["address"].as_str().unwrap().split('/').next().unwrap();
            assert!(
                have.iter().any(|h| h == a),
                "{v}: {a} not on eth0 ({have:?})"
            );
        }
        assert!(
            ctr.ip(&["route", "show", "default"])
                .contains("default via"),
            "{v}: no default route in the container"
        );
        let mut checked = conf.clone();
        checked["prevResult"] = r.clone();
        if v != "0.3.0" && v != "0.3.1" {
            let c = call("CHECK", &checked, &netns);
            assert!(c.ok, "{v} CHECK: {}", c.stdout);
            // Drift: the container loses its IPv4 address.
            let a4 = r["ips"][0]["address"].as_str().unwrap();
            ctr.ip(&["addr", "del", a4, "dev", "eth0"]);
            let c = call("CHECK", &checked, &netns);
            assert!(!c.ok, "{v}: CHECK passed after the address was removed");
        }
        for _ in 0..2 {
            let d = call("DEL", &checked, &netns);
            assert!(d.ok, "{v} DEL: {}", d.stdout);
        }
        assert!(
            !link_exists(&host, host_end),
            "{v}: {host_end} left after DEL"
        );
        assert_eq!((m.leased)(m.dir.path()), 0, "{v}: addresses left after DEL");

        // DEL after the namespace is gone: the runtime removed it first.
        let add = call("ADD", &conf, &netns);
        assert!(add.ok, "{v} ADD again: {}", add.stdout);
        run_ok_cmd(Command::new("ip").args(["netns", "del", ctr.name()]));
        let d = call("DEL", &conf, &netns);
        assert!(d.ok, "{v} DEL without the namespace: {}", d.stdout);
        let d = call("DEL", &conf, "");
        assert!(d.ok, "{v} DEL without CNI_NETNS: {}", d.stdout);
        assert_eq!((m.leased)(m.dir.path()), 0, "{v}: addresses left after DEL");
    }
}

fn run_ok_cmd(c: &mut Command) {
    testbed::run_ok(c);
}

#[test]
fn ve_link_with_ve_alloc_as_a_runtime_calls_them() {
    if !testbed::privileged("ve_link_with_ve_alloc_as_a_runtime_calls_them", &["ip"]) {
        return;
    }
    let m = ve_link();
    interface_lifecycle(&m);

    // GC and STATUS through ve-link reach its IPAM plugin: two attachments, one valid.
    let mut sb = testbed::Sandbox::new();
    let host = sb.netns("host");
    let bin = m.path.join("ve-link");
    let conf = (m.conf)(m.dir.path(), "1.1.0");
    let ids = [container_id(101), container_id(102)];
    let env = |id: &str, netns: &str| {
        vec![
            ("CNI_PATH", m.path.display().to_string()),
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_NETNS", netns.to_string()),
        ]
    };
    for (i, id) in ids.iter().enumerate() {
        let ctr = sb.netns(&format!("gc{i}"));
        let r = run_plugin(
            host.command(&bin.display().to_string()),
            "ADD",
            &conf,
            &env(id, &ctr.path().display().to_string()),
        );
        assert!(r.ok, "ADD: {}", r.stdout);
    }
    assert_eq!((m.leased)(m.dir.path()), 2);
    let path_only = vec![("CNI_PATH", m.path.display().to_string())];
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": ids[0], "ifname": "eth0"}]);
    let r = run_plugin(Command::new(&bin), "GC", &gc, &path_only);
    assert!(r.ok, "GC: {}", r.stdout);
    assert_eq!(
        (m.leased)(m.dir.path()),
        1,
        "GC kept more than the valid attachment"
    );
    let r = run_plugin(Command::new(&bin), "STATUS", &conf, &path_only);
    assert!(r.ok, "STATUS: {}", r.stdout);
    // An IPAM plugin that is not in CNI_PATH: a CNI error, nothing made.
    let mut missing = conf.clone();
    missing["ipam"]["type"] = json!("no-such-ipam");
    let ctr = sb.netns("missing");
    let r = run_plugin(
        host.command(&bin.display().to_string()),
        "ADD",
        &missing,
        &env(&container_id(103), &ctr.path().display().to_string()),
    );
    assert!(!r.ok);
    assert_eq!(r.stdout["code"], 7, "{}", r.stdout);
    assert!(!link_exists(
        &host,
        &format!("ve-{}", &container_id(103)[..12])
    ));
}

#[test]
fn reference_ptp_with_host_local_passes_the_same_harness() {
    if !testbed::privileged(
        "reference_ptp_with_host_local_passes_the_same_harness",
        &["ip"],
    ) {
        return;
    }
    if let Some(m) = ptp() {
        interface_lifecycle(&m);
    }
}

/// ve-link, ve-alloc and ve-nat in one CNI_PATH, as a conflist chains them.
fn chain_bin() -> Main {
    let m = ve_link();
    std::os::unix::fs::symlink(support::tools_dir().join("ve-nat"), m.path.join("ve-nat")).unwrap();
    m
}

/// ve-nat's elements in table `inet ve-nat-cni` and `inet ve-nat`'s fwd4, as nft lists them.
fn nft_list(host: &testbed::Netns, what: &str) -> String {
    let o = host
        .command("nft")
        .args(["list", "table", "inet", what])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn ve_nat_chained_after_ve_link_nats_and_maps_ports_per_container() {
    use testbed::nat::{blocked, fetch, seen, PeerServer};
    if !testbed::privileged(
        "ve_nat_chained_after_ve_link_nats_and_maps_ports_per_container",
        &["ip", "nft"],
    ) {
        return;
    }
    let m = chain_bin();
    let mut sb = testbed::Sandbox::new();
    let host = sb.netns("host");
    let out = sb.netns("out");
    testbed::uplink(&host, &out);
    let lock = m.dir.path().join("lock");
    // Never the machine's /var/lib/ve-nat record.
    let state = m.dir.path().join("ve-nat-state");
    let env = |id: &str, netns: &str| {
        vec![
            ("CNI_PATH", m.path.display().to_string()),
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_NETNS", netns.to_string()),
            ("VE_NAT_LOCK_DIR", lock.display().to_string()),
            ("VE_NAT_STATE_DIR", state.display().to_string()),
            // No bus: firewalld is not asked (never the machine's).
            (
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/nonexistent".to_string(),
            ),
        ]
    };
    let call = |plugin: &str, verb: &str, conf: &Value, id: &str, netns: &str| {
        run_plugin(
            host.command(&m.path.join(plugin).display().to_string()),
            verb,
            conf,
            &env(id, netns),
        )
    };
    let nat_conf = |prev: &Value, host_port: u16| {
        json!({
            "cniVersion": "1.0.0", "name": "vetest", "type": "ve-nat",
            "external": "up0", "backend": "nftables",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": prev
        })
    };
    let server = PeerServer::start(&out, &format!("{}:9000", testbed::OUTSIDE));
    let mut ctrs = Vec::new();
    for (n, port) in [(201u32, 8081u16), (202, 8082)] {
        let ctr = sb.netns(&format!("n{n}"));
        let id = container_id(n);
        let netns = ctr.path().display().to_string();
        let link = call(
            "ve-link",
            "ADD",
            &(m.conf)(m.dir.path(), "1.0.0"),
            &id,
            &netns,
        );
        assert!(link.ok, "ve-link ADD: {}", link.stdout);
        let conf = nat_conf(&link.stdout, port);
        let add = call("ve-nat", "ADD", &conf, &id, &netns);
        assert!(add.ok, "ve-nat ADD: {}", add.stdout);
        // Chained: the previous result, passed on.
        assert_eq!(add.stdout["interfaces"], link.stdout["interfaces"]);
        assert_eq!(add.stdout["ips"], link.stdout["ips"]);
        assert_eq!(add.stdout["cniVersion"], "1.0.0");
        let addr = link.stdout["ips"][0]["address"].as_str().unwrap();
        let addr = addr.split('/').next().unwrap().to_string();
        let web = PeerServer::start(&ctr, &format!("{addr}:80"));
        ctrs.push((id, netns, conf, ctr, web, port));
        if n == 201 {
            // `ve-nat up` with a forward of its own, after the first ADD made the
            // shared table: later CNI calls must leave that forward alone.
            let o = host
                .command(&support::tools_dir().join("ve-nat").display().to_string())
                .args(["up", "--external", "up0", "--backend", "nftables"])
                .args(["--forward", "tcp:9090:10.233.250.2:80", "-q"])
                .env("VE_NAT_LOCK_DIR", &lock)
                .env("VE_NAT_STATE_DIR", &state)
                .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
                .env_remove("CNI_COMMAND")
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "ve-nat up: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    for (_, _, _, ctr, _, port) in &ctrs {
        // Out through NAT: the server sees the uplink address, not the container's.
        assert_eq!(
            seen(ctr, &format!("{}:9000", testbed::OUTSIDE)),
            testbed::HOST_UPLINK
        );
        // In through the port mapping, from outside.
        let r = fetch(&out, &format!("{}:{port}", testbed::HOST_UPLINK));
        assert!(
            r.as_ref().is_ok_and(|t| t.ends_with(" 80")),
            "port {port}: {r:?}"
        );
    }
    drop(server);
    // Hairpin: the second container reaches the first's mapping through the uplink
    // address.
    let r = fetch(&ctrs[1].3, &format!("{}:8081", testbed::HOST_UPLINK));
    assert!(
        r.as_ref().is_ok_and(|t| t.ends_with(" 80")),
        "hairpin: {r:?}"
    );
    // No rule per container: the mappings are elements, commented with the
    // attachment (network, container ID, ifname).
    let cni_table = nft_list(&host, "ve-nat-cni");
    for (id, ..) in &ctrs {
        assert!(
            cni_table.contains(&format!("comment \"vetest/{id}/eth0\"")),
            "{cni_table}"
        );
    }
    for (id, netns, conf, ..) in &ctrs {
        let c = call("ve-nat", "CHECK", conf, id, netns);
        assert!(c.ok, "CHECK: {}", c.stdout);
    }
    assert!(
        nft_list(&host, "ve-nat").contains("9090"),
        "ve-nat up's forward"
    );

    // DEL of the first: its mapping goes, the second's and ve-nat up's stay.
    let (id1, netns1, conf1, ..) = &ctrs[0];
    for _ in 0..2 {
        let d = call("ve-nat", "DEL", conf1, id1, netns1);
        assert!(d.ok && d.stdout.is_null(), "DEL: {}", d.stdout);
    }
    assert!(blocked(&out, &format!("{}:8081", testbed::HOST_UPLINK)));
    let c = call("ve-nat", "CHECK", conf1, id1, netns1);
    assert!(!c.ok, "CHECK passed after DEL");
    let (id2, netns2, conf2, _, _, port2) = &ctrs[1];
    let r = fetch(&out, &format!("{}:{port2}", testbed::HOST_UPLINK));
    assert!(r.is_ok(), "the other container's mapping went: {r:?}");
    let c = call("ve-nat", "CHECK", conf2, id2, netns2);
    assert!(c.ok, "CHECK of the other: {}", c.stdout);
    let t = nft_list(&host, "ve-nat-cni");
    assert!(!t.contains(id1.as_str()) && t.contains(id2.as_str()), "{t}");
    assert!(
        nft_list(&host, "ve-nat").contains("9090"),
        "ve-nat up's forward went"
    );

    // A host port another container maps: refused, nothing changed.
    let ctr3 = sb.netns("n203");
    let id3 = container_id(203);
    let netns3 = ctr3.path().display().to_string();
    let link = call(
        "ve-link",
        "ADD",
        &(m.conf)(m.dir.path(), "1.0.0"),
        &id3,
        &netns3,
    );
    assert!(link.ok, "ve-link ADD: {}", link.stdout);
    let r = call(
        "ve-nat",
        "ADD",
        &nat_conf(&link.stdout, *port2),
        &id3,
        &netns3,
    );
    assert!(!r.ok, "a taken host port was mapped again");
    assert!(!nft_list(&host, "ve-nat-cni").contains(id3.as_str()));
    // Bad input: CNI error 7, nothing added.
    for bad in [
        json!({"hostPort": 8084, "containerPort": 80, "protocol": "sctp"}),
        json!({"hostPort": 0, "containerPort": 80}),
        json!({"hostPort": 8084, "containerPort": 80, "hostIP": "127.0.0.1"}),
    ] {
        let mut c = nat_conf(&link.stdout, 8084);
        c["runtimeConfig"]["portMappings"] = json!([bad]);
        let r = call("ve-nat", "ADD", &c, &id3, &netns3);
        assert!(!r.ok && r.stdout["code"] == 7, "{bad}: {}", r.stdout);
    }
    let mut c = nat_conf(&link.stdout, 8084);
    c.as_object_mut().unwrap().remove("external");
    let r = call("ve-nat", "ADD", &c, &id3, &netns3);
    assert!(!r.ok && r.stdout["code"] == 7, "no external: {}", r.stdout);
    assert!(!nft_list(&host, "ve-nat-cni").contains(id3.as_str()));
    // (The iptables backends in CNI mode are tested in ve-nat/tests/cni.rs, each in
    // a namespace of its own: backends are never mixed in one.)
    // A host port `ve-nat up --forward` forwards: refused with 173, nothing added.
    let r = call(
        "ve-nat",
        "ADD",
        &nat_conf(&link.stdout, 9090),
        &id3,
        &netns3,
    );
    assert!(!r.ok && r.stdout["code"] == 173, "9090: {}", r.stdout);
    assert!(!nft_list(&host, "ve-nat-cni").contains(id3.as_str()));

    // A second network: the third container mapped there.
    let mut conf_b = nat_conf(&link.stdout, 8085);
    conf_b["name"] = json!("vetest-b");
    let add = call("ve-nat", "ADD", &conf_b, &id3, &netns3);
    assert!(add.ok, "ADD on vetest-b: {}", add.stdout);
    let addr3 = link.stdout["ips"][0]["address"].as_str().unwrap();
    let addr3 = addr3.split('/').next().unwrap().to_string();
    let _web3 = PeerServer::start(&ctr3, &format!("{addr3}:80"));
    // DEL of the second container on vetest-b (never there) leaves vetest's alone.
    let d = call("ve-nat", "DEL", &conf_b, id2, netns2);
    assert!(d.ok, "DEL: {}", d.stdout);
    let c = call("ve-nat", "CHECK", conf2, id2, netns2);
    assert!(c.ok, "CHECK after another network's DEL: {}", c.stdout);

    // GC keeps only the valid attachments' mappings, of its own network only.
    let mut gc = conf2.clone();
    gc.as_object_mut().unwrap().remove("prevResult");
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let r = run_plugin(
        host.command(&m.path.join("ve-nat").display().to_string()),
        "GC",
        &gc,
        &[
            ("VE_NAT_LOCK_DIR", lock.display().to_string()),
            ("VE_NAT_STATE_DIR", state.display().to_string()),
            (
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/nonexistent".to_string(),
            ),
        ],
    );
    assert!(r.ok, "GC: {}", r.stdout);
    assert!(!nft_list(&host, "ve-nat-cni").contains(id2.as_str()));
    assert!(
        nft_list(&host, "ve-nat").contains("9090"),
        "GC took ve-nat up's forward"
    );
    // vetest-b's mapping is still there, and works.
    assert!(nft_list(&host, "ve-nat-cni").contains(&format!("vetest-b/{id3}/eth0")));
    let r = fetch(&out, &format!("{}:8085", testbed::HOST_UPLINK));
    assert!(
        r.as_ref().is_ok_and(|t| t.ends_with(" 80")),
        "vetest-b's mapping after vetest's GC: {r:?}"
    );
    let c = call("ve-nat", "CHECK", &conf_b, &id3, &netns3);
    assert!(c.ok, "CHECK on vetest-b after vetest's GC: {}", c.stdout);
}
