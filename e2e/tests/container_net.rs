//! examples/container-net run as a user would, inside a sandbox host: 20 containers up
//! at once, traffic through NAT, a port forward, status, idempotency, down and up again
//! with the same addresses, destroy to the exact state before; a real NetworkManager
//! that would take every new veth's addresses; and the failure paths, which must roll
//! back and keep the failing tool's exit code.

mod support;

use std::{path::Path, process::Stdio, time::Duration};

use common::lease;
use support::*;
use testbed::{http_get_within, privileged, run_ok, HttpServer};

const CONTAINERS: usize = 20;
const FORWARD_PORT: u16 = 8080;

fn gate(test: &str, nm: bool) -> bool {
    let mut commands = vec![
        "ip",
        "unshare",
        "nsenter",
        "mount",
        "iptables",
        "iptables-save",
        "ip6tables-save",
    ];
    if nm {
        commands.extend(testbed::NetworkManager::COMMANDS);
    }
    privileged(test, &commands)
}

#[test]
fn twenty_containers_up_reach_out_through_nat_and_come_down_without_a_trace() {
    if !gate("twenty_containers_up...", true) {
        return;
    }
    let h = Host::new(true);
    let before = h.snapshot();
    h.tool("ve-nat", &["up", "--external", "up0"]);
    let with_nat = h.snapshot();

    let containers: Vec<Container> = (0..CONTAINERS)
        .map(|i| h.container(&format!("ct{i:02}")))
        .collect();

    // `container-net VERB NAME NETNS` for every container, all at once.
    let all = |h: &Host, verb: &str| {
        parallel(
            containers
                .iter()
                .map(|c| {
                    let mut cmd = h.script();
                    cmd.args([verb, &c.name, &c.netns()]);
                    cmd
                })
                .collect(),
        )
    };
    let up = |h: &Host| all(h, "up");
    let first = up(&h);
    for (c, o) in containers.iter().zip(&first) {
        assert!(
            o.status.success(),
            "up {}: {}\n{}",
            c.name,
            o.status,
            stderr(o)
        );
        assert_eq!(
            env_value(&stdout(o), lease::HOST_IFACE).as_deref(),
            Some(format!("ve-{}", c.name).as_str()),
            "up {} printed: {}",
            c.name,
            stdout(o)
        );
    }
    let local: Vec<String> = first
        .iter()
        .map(|o| env_value(&stdout(o), lease::LOCAL_ADDRESS).expect("LOCAL_ADDRESS"))
        .collect();
    let mut distinct = local.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), CONTAINERS, "addresses: {local:?}");

    // Every container reaches the outside; the server sees the host's uplink address.
    for c in &containers {
        let saw = http_get_within(
            &c.netns_path(),
            outside(SERVER_PORT),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| {
            let nm = h.nm.as_ref().unwrap();
            let o = nm.client("nmcli").args(["device"]).output().unwrap();
            panic!(
                "{}: {e}\n{}\n{}\n{}\n{}",
                c.name,
                h.host.ip(&["addr"]),
                h.host.ip(&["route"]),
                stdout(&o),
                nm.log_tail()
            )
        });
        assert_eq!(saw, HOST_UPLINK, "{} was not masqueraded", c.name);
    }

    // NetworkManager (real, on the sandbox bus) keeps its hands off every veth.
    let nm = h.nm.as_ref().expect("NetworkManager");
    for c in &containers {
        let ifname = format!("ve-{}", c.name);
        eventually(&format!("{ifname} unmanaged"), 5, || {
            nm.is_unmanaged(&ifname)
        });
    }

    // A port forward from outside to ct00.
    let _web = HttpServer::start(
        &containers[0].netns_path(),
        "0.0.0.0:80".parse().unwrap(),
        |peer| format!("ct00 saw {}", peer.ip()),
    )
    .expect("server in ct00");
    let forward = format!("tcp:{FORWARD_PORT}:{}:80", local[0]);
    h.tool(
        "ve-nat",
        &["up", "--external", "up0", "--forward", &forward],
    );
    let answer = http_get_within(&h.out.path(), uplink(FORWARD_PORT), Duration::from_secs(5))
        .expect("the port forward answers");
    assert_eq!(answer, format!("ct00 saw {OUTSIDE}"));

    // status reports every container with its lease.
    for (c, addr) in containers.iter().zip(&local) {
        let o = h
            .script()
            .args(["status", &c.name, &c.netns()])
            .output()
            .unwrap();
        assert!(o.status.success(), "status {}: {}", c.name, stderr(&o));
        assert_eq!(env_value(&stdout(&o), "STATE").as_deref(), Some("up"));
        assert_eq!(
            env_value(&stdout(&o), lease::LOCAL_ADDRESS).as_ref(),
            Some(addr)
        );
    }

    // up again: the same output, and nothing changes on the host or in any container.
    let inside = |cs: &[Container]| -> Vec<String> {
        cs.iter()
            .map(|c| c.ip(&["-4", "-o", "addr"]) + &c.ip(&["route"]) + &c.ip(&["-6", "route"]))
            .collect()
    };
    let host_before = h.snapshot();
    let inside_before = inside(&containers);
    let second = up(&h);
    for ((c, o1), o2) in containers.iter().zip(&first).zip(&second) {
        assert!(o2.status.success(), "up {} again: {}", c.name, stderr(o2));
        assert_eq!(
            stdout(o1),
            stdout(o2),
            "up {} again printed otherwise",
            c.name
        );
    }
    assert_eq!(h.snapshot(), host_before, "up again changed the host");
    assert_eq!(
        inside(&containers),
        inside_before,
        "up again changed a container"
    );

    // down, all at once: no link, every lease kept, rules as ve-nat alone made them.
    h.tool("ve-nat", &["up", "--external", "up0"]);
    let downs = all(&h, "down");
    for (c, o) in containers.iter().zip(&downs) {
        assert!(o.status.success(), "down {}: {}", c.name, stderr(o));
    }
    assert_eq!(h.links(), ["lo", "up0"]);
    assert_eq!(h.leases().len(), CONTAINERS, "down gave leases back");
    for c in &containers {
        assert_eq!(
            c.ip(&["-br", "link"]).lines().count(),
            1,
            "{} kept more than lo",
            c.name
        );
        let o = h
            .script()
            .args(["status", &c.name, &c.netns()])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "status {} after down", c.name);
        assert_eq!(env_value(&stdout(&o), "STATE").as_deref(), Some("down"));
    }

    // up after down (a restart): every container gets its addresses back.
    let again = up(&h);
    for ((c, o1), o2) in containers.iter().zip(&first).zip(&again) {
        assert!(
            o2.status.success(),
            "up {} after down: {}",
            c.name,
            stderr(o2)
        );
        assert_eq!(stdout(o1), stdout(o2), "{} came back otherwise", c.name);
    }

    // destroy, all at once: no link, no lease, the rules as ve-nat alone made them.
    let destroys = all(&h, "destroy");
    for (c, o) in containers.iter().zip(&destroys) {
        assert!(o.status.success(), "destroy {}: {}", c.name, stderr(o));
    }
    assert_eq!(h.links(), ["lo", "up0"]);
    assert!(h.leases().is_empty(), "leases left: {:?}", h.leases());
    assert_eq!(h.snapshot(), with_nat, "destroy left something behind");
    // down and destroy again: already gone is success.
    for cmd in ["down", "destroy"] {
        let o = h
            .script()
            .args([cmd, "ct00", &containers[0].netns()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd} twice: {}", stderr(&o));
    }

    h.tool("ve-nat", &["down"]);
    assert_eq!(h.snapshot(), before, "the sandbox host is not as it was");
}

#[test]
fn a_failed_step_is_rolled_back_and_its_exit_code_kept() {
    if !gate("a_failed_step_is_rolled_back...", false) {
        return;
    }
    let mut h = Host::new(false);
    let before = h.snapshot();

    // ve-link fails: the container's namespace is gone. The new lease is given back.
    // (A path that never existed, not a dead container's /proc/PID/ns/net: that pid
    // could be reused by any process, in the machine's own namespace.)
    let scratch = testbed::TempDir::new("e2e-gone");
    let netns = scratch.path().join("netns-of-gone").display().to_string();
    let o = h.script().args(["up", "gone", &netns]).output().unwrap();
    assert_eq!(o.status.code(), Some(66), "ve-link's code: {}", stderr(&o));
    assert!(stderr(&o).contains("ve-link"), "{}", stderr(&o));
    assert!(h.leases().is_empty(), "lease kept: {:?}", h.leases());
    assert_eq!(h.snapshot(), before);

    // nm-unmanage fails at once (a bus address it cannot parse: 64), before anything
    // was made: nothing changes.
    let web = h.container("web");
    let o = h
        .script()
        .args(["up", "web", &web.netns()])
        .env("DBUS_SYSTEM_BUS_ADDRESS", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(64),
        "nm-unmanage's code: {}",
        stderr(&o)
    );
    assert_eq!(h.snapshot(), before, "the failed up left something");
    assert_eq!(web.ip(&["-br", "link"]).lines().count(), 1);

    // The per-veth nm-unmanage fails after ve-link made the pair: the pair and the new
    // lease are both undone, and its exit code is kept.
    let faults = Faults::new(&h);
    h.path_first = Some(faults.dir().to_path_buf());
    let o = h
        .script()
        .args(["up", "web", &web.netns()])
        .env(FAULT, "oneshot-fails")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(71), "{}", stderr(&o));
    assert_eq!(h.snapshot(), before, "the failed up left something");
    assert_eq!(web.ip(&["-br", "link"]).lines().count(), 1);

    // Something takes the host end's addresses right after ve-link set them (as
    // NetworkManager did): `ve-link check` catches it, up exits 1 and undoes its work
    // instead of printing addresses the host no longer has.
    let o = h
        .script()
        .args(["up", "web", &web.netns()])
        .env(FAULT, "flush-after")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "printed: {}", stdout(&o));
    assert!(
        stderr(&o).contains("up web: the pair changed right after ve-link made it"),
        "{}",
        stderr(&o)
    );
    assert_eq!(h.snapshot(), before, "the failed up left something");
    assert_eq!(web.ip(&["-br", "link"]).lines().count(), 1);
    h.path_first = None;

    // A failure on an `up` of a container that was already up undoes nothing that
    // was there before: the pair and the lease stay.
    let o = h
        .script()
        .args(["up", "web", &web.netns()])
        .output()
        .unwrap();
    assert!(o.status.success(), "up web: {}", stderr(&o));
    let up = h.snapshot();
    let o = h
        .script()
        .args(["up", "web", &web.netns()])
        .env("DBUS_SYSTEM_BUS_ADDRESS", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64));
    assert_eq!(h.snapshot(), up, "a failed re-up took the container down");
    // Nor does a failed check: the pair stays (as the flush left it), and the next
    // `up` repairs it.
    h.path_first = Some(faults.dir().to_path_buf());
    let o = h
        .script()
        .args(["up", "web", &web.netns()])
        .env(FAULT, "flush-after")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    h.path_first = None;
    assert_eq!(h.leases(), ["web"]);
    assert!(h.links().iter().any(|l| l == "ve-web"), "{:?}", h.links());
    let o = h
        .script()
        .args(["up", "web", &web.netns()])
        .output()
        .unwrap();
    assert!(o.status.success(), "up web after a flush: {}", stderr(&o));
    assert_eq!(h.snapshot(), up, "up did not repair the flushed pair");

    // A static lease is the administrator's: a failed up and a destroy both keep it.
    h.tool(
        "ve-alloc",
        &[
            "reserve",
            "db",
            "--host-address",
            "10.233.9.2",
            "--local-address",
            "10.233.9.3",
        ],
    );
    let o = h.script().args(["up", "db", &netns]).output().unwrap();
    assert_eq!(o.status.code(), Some(66));
    assert_eq!(h.leases(), ["db", "web"]);
    let o = h.script().args(["destroy", "db"]).output().unwrap();
    assert!(o.status.success(), "destroy db: {}", stderr(&o));
    assert!(
        stderr(&o).contains("keeping its static lease"),
        "{}",
        stderr(&o)
    );
    assert_eq!(h.leases(), ["db", "web"]);

    let o = h.script().args(["destroy", "web"]).output().unwrap();
    assert!(o.status.success(), "destroy web: {}", stderr(&o));
    h.tool("ve-alloc", &["release", "db"]);
    assert_eq!(h.snapshot(), before);

    // Usage errors are 64 and change nothing; a bad name is ve-alloc's 65.
    for args in [&["up", "web"][..], &["stop", "web", "x"], &["destroy"]] {
        let o = h.script().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(64), "{args:?}");
    }
    let o = h.script().args(["up", "no/such", "x"]).output().unwrap();
    assert_eq!(o.status.code(), Some(65));
    assert_eq!(h.snapshot(), before);
}

#[test]
fn a_stopped_container_keeps_its_address_until_destroyed() {
    if !gate("a_stopped_container_keeps_its_address...", false) {
        return;
    }
    let h = Host::new(false);
    let before = h.snapshot();
    let web = h.container("web");
    let db = h.container("db");
    let up = |c: &Container| {
        let o = h
            .script()
            .args(["up", &c.name, &c.netns()])
            .output()
            .unwrap();
        assert!(o.status.success(), "up {}: {}", c.name, stderr(&o));
        stdout(&o)
    };
    let script_ok = |args: &[&str]| {
        let o = h.script().args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    };

    let first = up(&web);
    script_ok(&["down", "web", &web.netns()]);
    assert!(!h.links().iter().any(|l| l == "ve-web"), "{:?}", h.links());
    assert_eq!(h.leases(), ["web"], "down gave the lease back");
    // Another container in between: the pool is round robin, so a released lease
    // would not come back.
    up(&db);
    assert_eq!(up(&web), first, "web came back with other addresses");

    // destroy frees it: the pair and the lease go, twice is fine, and up leases anew.
    script_ok(&["destroy", "web", &web.netns()]);
    script_ok(&["destroy", "web"]);
    assert_eq!(h.leases(), ["db"]);
    assert!(!h.links().iter().any(|l| l == "ve-web"), "{:?}", h.links());
    let again = up(&web);
    assert!(
        env_value(&again, "LOCAL_ADDRESS").is_some(),
        "up after destroy: {again}"
    );
    assert_eq!(h.leases().len(), 2);

    script_ok(&["destroy", "web"]);
    script_ok(&["destroy", "db"]);
    assert_eq!(h.snapshot(), before);
}

#[test]
fn network_manager_never_takes_the_addresses_of_a_new_veth() {
    if !gate("network_manager_never_takes_the_addresses...", true) {
        return;
    }
    // The sandbox NetworkManager runs without udev: it manages every new veth, the
    // worst case, and (before container-net wrote its drop-in first) removed ve-link's
    // IPv4 address a moment after it was set.
    let mut h = Host::new(true);
    let machine_conf_d = list_dir(Path::new("/run/NetworkManager/conf.d"));
    let faults = Faults::new(&h);
    h.path_first = Some(faults.dir().to_path_buf());
    let containers: Vec<Container> = (0..6).map(|i| h.container(&format!("nm{i}"))).collect();
    let mut leases = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let mut cmd = h.script();
        cmd.args(["up", &c.name, &c.netns()]);
        // Half of them without the per-veth Managed=false: the drop-in alone must
        // hold NetworkManager off.
        if i % 2 == 1 {
            cmd.env(FAULT, "skip-oneshot");
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "up {}: {}", c.name, stderr(&o));
        leases.push(stdout(&o));
    }
    // NetworkManager would have activated its DHCP profile by now (~0.25 s).
    std::thread::sleep(Duration::from_secs(2));
    let nm = h.nm.as_ref().expect("NetworkManager");
    for (c, out) in containers.iter().zip(&leases) {
        let ifname = format!("ve-{}", c.name);
        let lease = run_ok(h.command("ve-alloc").args(["show", &c.name]));
        let o = h
            .command("ve-link")
            .args(["check", &c.name, "--netns", &c.netns(), "--addresses", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(&lease.stdout)?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(
            o.status.success(),
            "{ifname} lost what ve-link made: {}{}\n{}\n{}",
            stdout(&o),
            stderr(&o),
            h.host.ip(&["addr", "show", "dev", &ifname]),
            nm.log_tail()
        );
        let host_address = env_value(out, "HOST_ADDRESS").expect("HOST_ADDRESS");
        assert!(
            h.host
                .ip(&["-4", "-o", "addr", "show", "dev", &ifname])
                .contains(&format!("{host_address}/32")),
            "{ifname} lost {host_address}"
        );
        assert!(
            nm.is_unmanaged(&ifname),
            "{ifname}: {:?}",
            nm.device_state(&ifname)
        );
    }
    // The drop-in is where the sandbox NetworkManager reads it, and the machine's own
    // runtime configuration is untouched.
    let written = list_dir(&h.run_dir().join("NetworkManager/conf.d"));
    assert!(!written.is_empty(), "no runtime drop-in was written");
    assert_eq!(
        list_dir(Path::new("/run/NetworkManager/conf.d")),
        machine_conf_d
    );
    h.path_first = None;
    for c in &containers {
        let o = h.script().args(["destroy", &c.name]).output().unwrap();
        assert!(o.status.success(), "destroy {}: {}", c.name, stderr(&o));
    }
}

#[test]
fn networkd_never_takes_a_new_veth_or_its_addresses() {
    if !gate("networkd_never_takes_a_new_veth...", false)
        || !privileged(
            "networkd_never_takes...",
            testbed::networkd::Networkd::COMMANDS,
        )
    {
        return;
    }
    // systemd-networkd's stock 80-container-ve.network gives every new ve-* a /28 of
    // its own 25-105 ms after it appears (nm-unmanage's negative control shows it).
    let h = Host::with_networkd();
    let machine = (
        list_dir(Path::new("/run/systemd/network")),
        list_dir(Path::new("/etc/systemd/network")),
    );
    let nd = h.nd.as_ref().expect("networkd");
    let containers: Vec<Container> = (0..4).map(|i| h.container(&format!("nd{i}"))).collect();
    for c in &containers {
        let o = h
            .script()
            .args(["up", &c.name, &c.netns()])
            .output()
            .unwrap();
        assert!(o.status.success(), "up {}: {}", c.name, stderr(&o));
    }
    std::thread::sleep(Duration::from_secs(1));
    for c in &containers {
        let ifname = format!("ve-{}", c.name);
        let o = h
            .script()
            .args(["status", &c.name, &c.netns()])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "status {}: {}{}",
            c.name,
            stdout(&o),
            stderr(&o)
        );
        let addrs = h.host.ip(&["-4", "-o", "addr", "show", "dev", &ifname]);
        assert_eq!(addrs.lines().count(), 1, "{ifname}: {addrs}");
        assert_eq!(
            nd.setup_state(&ifname).as_deref(),
            Some("unmanaged"),
            "{ifname}"
        );
    }
    // networkd's file is in the sandbox's /run, the machine's directories as before.
    let file = h
        .run_dir()
        .join("systemd/network")
        .join(nm_unmanage::NETWORK_FILE);
    assert!(file.exists(), "{}", file.display());
    for c in &containers {
        let o = h.script().args(["destroy", &c.name]).output().unwrap();
        assert!(o.status.success(), "destroy {}: {}", c.name, stderr(&o));
    }
    assert_eq!(
        (
            list_dir(Path::new("/run/systemd/network")),
            list_dir(Path::new("/etc/systemd/network")),
        ),
        machine
    );
}

/// The file names in `dir` (none when it does not exist).
fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
