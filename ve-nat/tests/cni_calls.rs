//! ve-nat as a chained CNI plugin, for what a runtime pays per container: after the
//! first ADD installed the tables, an ADD or DEL reads the ruleset once and writes it
//! once (every nft process is paid by every container, and each listing grows with the
//! containers), and the mappings it adds and deletes are still exactly the container's.
//! (The NAT and port mappings with real traffic are e2e/tests/cni.rs's.)

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use serde_json::{json, Value};
use testbed::{cni, privileged, Netns, Sandbox, TempDir};

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
}

impl Host {
    /// The nft calls one ve-nat call made, as `nft` was given them (logged by a wrapper
    /// first on PATH), and its reply.
    fn call(&self, verb: &str, n: u32) -> (Vec<String>, cni::Reply) {
        let log = self.dir.path().join("nft.log");
        let _ = std::fs::remove_file(&log);
        let conf = json!({"cniVersion": "1.0.0", "name": "vetest", "type": "ve-nat",
            "external": "up0", "backend": "nftables",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": 8000 + n, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": prev(n)});
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
        let r = cni::invoke(c, verb, &conf, &env).unwrap_or_else(|e| panic!("{e}"));
        assert!(r.ok, "{verb} {n}: {} {}", r.stdout, r.stderr);
        let calls = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        (calls, r)
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

#[test]
fn add_and_del_read_the_ruleset_once_and_write_it_once() {
    if !privileged(
        "add_and_del_read_the_ruleset_once_and_write_it_once",
        &["ip", "nft"],
    ) {
        return;
    }
    let mut sb = Sandbox::new();
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
    let host = Host { ns, dir };

    // The first ADD installs both tables; what it runs is not counted.
    let (_, first) = host.call("ADD", 1);
    assert_eq!(first.stdout["ips"], prev(1)["ips"], "prevResult passed on");
    for n in 2..=3 {
        let (calls, r) = host.call("ADD", n);
        assert_eq!(r.stdout["interfaces"], prev(n)["interfaces"]);
        assert_eq!(calls, ["-j list ruleset", "-j -f -"], "ADD {n}");
    }
    let table = host.cni_table();
    for n in 1..=3 {
        let owner = format!("vetest/{}/eth0", cni::container_id(n));
        assert!(table.contains(&owner), "{owner} not in {table}");
        assert!(table.contains(&format!("{}", 8000 + n)), "{table}");
    }
    // A repeated ADD with the same mapping reads and writes nothing more.
    let (calls, _) = host.call("ADD", 2);
    assert_eq!(calls, ["-j list ruleset"], "a repeated ADD");

    let (calls, r) = host.call("DEL", 2);
    assert!(r.stdout.is_null());
    assert_eq!(calls, ["-j list ruleset", "-j -f -"], "DEL");
    let table = host.cni_table();
    assert!(!table.contains(&cni::container_id(2)), "{table}");
    assert!(table.contains(&cni::container_id(1)) && table.contains(&cni::container_id(3)));
    // DEL of what is gone already: one look, nothing written.
    let (calls, _) = host.call("DEL", 2);
    assert_eq!(calls, ["-j list ruleset"], "a second DEL");
}
