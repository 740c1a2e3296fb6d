//! examples/container-net run as a user would, inside a sandbox host: 20 containers up
//! at once, traffic through NAT, a port forward, status, idempotency, teardown to the
//! exact state before; and the failure paths, which must roll back and keep the
//! failing tool's exit code.

mod support;

use std::time::Duration;

use common::{
    harness::{http_get_within, HttpServer},
    lease,
    testing::privileged,
};
use support::*;

const CONTAINERS: usize = 20;
const FORWARD_PORT: u16 = 8080;

fn gate(test: &str, nm: bool) -> bool {
    let mut commands = vec![
        "ip",
        "unshare",
        "nsenter",
        "iptables",
        "iptables-save",
        "ip6tables-save",
    ];
    if nm {
        commands.extend(common::harness::NetworkManager::COMMANDS);
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

    // up, all at once.
    let up = |h: &Host| {
        parallel(
            containers
                .iter()
                .map(|c| {
                    let mut cmd = h.script();
                    cmd.args(["up", &c.name, &c.netns()]);
                    cmd
                })
                .collect(),
        )
    };
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

    // down, all at once: no link, no lease, and the rules are what ve-nat alone made.
    h.tool("ve-nat", &["up", "--external", "up0"]);
    let downs = parallel(
        containers
            .iter()
            .map(|c| {
                let mut cmd = h.script();
                cmd.args(["down", &c.name, &c.netns()]);
                cmd
            })
            .collect(),
    );
    for (c, o) in containers.iter().zip(&downs) {
        assert!(o.status.success(), "down {}: {}", c.name, stderr(o));
    }
    assert_eq!(h.links(), ["lo", "up0"]);
    assert!(h.leases().is_empty(), "leases left: {:?}", h.leases());
    assert_eq!(h.snapshot(), with_nat, "down left something behind");
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
    // down again: already gone is success.
    let o = h
        .script()
        .args(["down", "ct00", &containers[0].netns()])
        .output()
        .unwrap();
    assert!(o.status.success(), "down twice: {}", stderr(&o));

    h.tool("ve-nat", &["down"]);
    assert_eq!(h.snapshot(), before, "the sandbox host is not as it was");
}

#[test]
fn a_failed_step_is_rolled_back_and_its_exit_code_kept() {
    if !gate("a_failed_step_is_rolled_back...", false) {
        return;
    }
    let h = Host::new(false);
    let before = h.snapshot();

    // ve-link fails: the container's namespace is gone. The new lease is given back.
    // (A path that never existed, not a dead container's /proc/PID/ns/net: that pid
    // could be reused by any process, in the machine's own namespace.)
    let scratch = common::testing::TempDir::new("e2e-gone");
    let netns = scratch.path().join("netns-of-gone").display().to_string();
    let o = h.script().args(["up", "gone", &netns]).output().unwrap();
    assert_eq!(o.status.code(), Some(66), "ve-link's code: {}", stderr(&o));
    assert!(stderr(&o).contains("ve-link"), "{}", stderr(&o));
    assert!(h.leases().is_empty(), "lease kept: {:?}", h.leases());
    assert_eq!(h.snapshot(), before);

    // nm-unmanage fails (a bus address it cannot parse: 64) after ve-link made the
    // pair: the pair and the new lease are both undone.
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

    // A static lease is the administrator's: a failed up and a down both keep it.
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
    let o = h.script().args(["down", "db"]).output().unwrap();
    assert!(o.status.success(), "down db: {}", stderr(&o));
    assert_eq!(h.leases(), ["db", "web"]);

    let o = h.script().args(["down", "web"]).output().unwrap();
    assert!(o.status.success(), "down web: {}", stderr(&o));
    h.tool("ve-alloc", &["release", "db"]);
    assert_eq!(h.snapshot(), before);

    // Usage errors are 64 and change nothing; a bad name is ve-alloc's 65.
    let o = h.script().args(["up", "web"]).output().unwrap();
    assert_eq!(o.status.code(), Some(64));
    let o = h.script().args(["up", "no/such", "x"]).output().unwrap();
    assert_eq!(o.status.code(), Some(65));
    assert_eq!(h.snapshot(), before);
}
