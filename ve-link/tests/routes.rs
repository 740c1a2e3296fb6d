//! `ve-link routes` against the real kernel, in throwaway namespaces: a host with a LAN
//! link (198.51.100.1/24, 2001:db8::1/64) and a container brought up by `ve-link up`;
//! the host's routes to other nodes' blocks converged to given sets, once and
//! following a stream, next to the container's routes and someone else's.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use testbed::{privileged, Netns, Sandbox};

const BIN: &str = env!("CARGO_BIN_EXE_ve-link");

fn routes_cmd(host: &Netns, args: &[&str]) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-k", "2", "20", "ip", "netns", "exec", host.name(), BIN])
        .arg("routes")
        .args(args);
    c
}

/// `ve-link routes --from -` with `input` on stdin.
fn converge(host: &Netns, input: &str) -> Output {
    testbed::output_with_stdin(&mut routes_cmd(host, &["--from", "-"]), input.as_bytes())
}

/// Every route of the host's main table, as `ip route` prints it (both families).
fn table(host: &Netns) -> String {
    host.ip(&["route", "show"]) + &host.ip(&["-6", "route", "show"])
}

/// The host's routes with a gateway, `DST via GW proto P`, sorted.
fn gw_routes(host: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let v = host.ip_json(&[fam, "route", "show"]);
        for r in v.as_array().unwrap() {
            if let Some(gw) = r["gateway"].as_str() {
                out.push(format!(
                    "{} via {gw} proto {}",
                    r["dst"].as_str().unwrap(),
                    r["protocol"].as_str().unwrap()
                ));
            }
        }
    }
    out.sort();
    out
}

/// Wait until the host's gateway routes are `want`.
#[track_caller]
fn until_within(host: &Netns, what: &str, want: &[&str], within: Duration) {
    let t = Instant::now();
    loop {
        let got = gw_routes(host);
        if got == want {
            return;
        }
        assert!(t.elapsed() < within, "{what}: {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn setup(test: &str) -> Option<(Sandbox, Netns)> {
    if !privileged(test, &["ip", "timeout"]) {
        return None;
    }
    let mut sb = Sandbox::new();
    let host = sb.netns("host");
    let ctr = sb.netns("ctr");
    let lan = sb.netns("lan");
    host.ip(&[
        "link",
        "add",
        "lan0",
        "type",
        "veth",
        "peer",
        "name",
        "lan0",
        "netns",
        lan.name(),
    ]);
    host.ip(&["addr", "add", "198.51.100.1/24", "dev", "lan0"]);
    host.ip(&["addr", "add", "2001:db8::1/64", "dev", "lan0", "nodad"]);
    host.ip(&["link", "set", "lan0", "up"]);
    lan.ip(&["link", "set", "lan0", "up"]);
    let up = Command::new("ip")
        .args([
            "netns",
            "exec",
            host.name(),
            BIN,
            "up",
            "web",
            "--netns",
            ctr.name(),
        ])
        .args([
            "--host-address",
            "10.233.0.1",
            "--local-address",
            "10.233.0.2",
        ])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // Someone else's route, to a block ve-alloc could hand a node later.
    host.ip(&[
        "route",
        "add",
        "10.233.2.0/26",
        "via",
        "198.51.100.9",
        "proto",
        "static",
    ]);
    Some((sb, host))
}

#[test]
fn routes_converge_to_the_set_and_leave_container_and_foreign_routes_alone() {
    let Some((_sb, host)) =
        setup("routes_converge_to_the_set_and_leave_container_and_foreign_routes_alone")
    else {
        return;
    };
    let container_route = "10.233.0.2 dev ve-web proto 118 scope link";
    assert!(table(&host).contains(container_route), "{}", table(&host));
    let set = "# from ve-alloc routes\n10.233.0.64/26 via 198.51.100.12\n\
               10.233.0.128/26 via 198.51.100.13\nfd42::40/122 via 2001:db8::12\n";
    let o = converge(&host, set);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty());
    assert_eq!(
        gw_routes(&host),
        [
            "10.233.0.128/26 via 198.51.100.13 proto 118",
            "10.233.0.64/26 via 198.51.100.12 proto 118",
            "10.233.2.0/26 via 198.51.100.9 proto static",
            "fd42::40/122 via 2001:db8::12 proto 118",
        ]
    );
    let before = table(&host);
    assert!(before.contains(container_route), "{before}");
    // Idempotent.
    let o = converge(&host, set);
    assert!(o.status.success());
    assert_eq!(table(&host), before);
    // Bad input: 65, one line, nothing changed (the good first line included).
    for bad in [
        "10.233.0.192/26 via 198.51.100.14\n10.233.0.65/26 via 198.51.100.12\n",
        "10.233.0.192/26 via 198.51.100.14\n10.233.0.0/26 via fd00::1\n",
        "10.233.0.192/26 via 198.51.100.14\n10.233.0.0/26 198.51.100.12\n",
    ] {
        let o = converge(&host, bad);
        assert_eq!(o.status.code(), Some(65), "{bad}");
        assert_eq!(
            String::from_utf8_lossy(&o.stderr).lines().count(),
            1,
            "{bad}"
        );
        assert_eq!(table(&host), before, "{bad}");
    }
    // A moved block is replaced, a gone one removed, someone else's route to a block
    // is not taken over (73) while the rest of the set is still applied.
    let o = converge(
        &host,
        "10.233.0.64/26 via 198.51.100.14\n10.233.2.0/26 via 198.51.100.13\n",
    );
    assert_eq!(
        o.status.code(),
        Some(73),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("10.233.2.0/26"));
    assert_eq!(
        gw_routes(&host),
        [
            "10.233.0.64/26 via 198.51.100.14 proto 118",
            "10.233.2.0/26 via 198.51.100.9 proto static",
        ]
    );
    // A gateway on no connected network: the kernel refuses (71).
    let o = converge(&host, "10.233.0.64/26 via 192.0.2.7\n");
    assert_eq!(
        o.status.code(),
        Some(71),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(table(&host).contains(container_route));
}

#[test]
fn routes_follow_converges_after_every_set_and_ignores_a_cut_off_one() {
    let Some((_sb, host)) =
        setup("routes_follow_converges_after_every_set_and_ignores_a_cut_off_one")
    else {
        return;
    };
    let mut child = routes_cmd(&host, &["--from", "-", "--follow"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let until = |what: &str, want: &[&str]| until_within(&host, what, want, Duration::from_secs(5));
    let foreign = "10.233.2.0/26 via 198.51.100.9 proto static";
    stdin
        .write_all(b"10.233.0.64/26 via 198.51.100.12\nfd42::40/122 via 2001:db8::12\n\n")
        .unwrap();
    until(
        "the first set",
        &[
            "10.233.0.64/26 via 198.51.100.12 proto 118",
            foreign,
            "fd42::40/122 via 2001:db8::12 proto 118",
        ],
    );
    stdin
        .write_all(b"10.233.0.64/26 via 198.51.100.12\n10.233.0.128/26 via 198.51.100.13\n\n")
        .unwrap();
    until(
        "the second set",
        &[
            "10.233.0.128/26 via 198.51.100.13 proto 118",
            "10.233.0.64/26 via 198.51.100.12 proto 118",
            foreign,
        ],
    );
    // A route removed behind its back (as a link going down takes its routes) is back
    // within the recheck (5 s).
    host.ip(&["route", "del", "10.233.0.128/26"]);
    let t = Instant::now();
    until_within(
        &host,
        "the removed route back",
        &[
            "10.233.0.128/26 via 198.51.100.13 proto 118",
            "10.233.0.64/26 via 198.51.100.12 proto 118",
            foreign,
        ],
        Duration::from_secs(8),
    );
    eprintln!("a removed route was back after {:?}", t.elapsed());
    // The empty set: every route of ours goes, the container's and others' stay.
    stdin.write_all(b"\n").unwrap();
    until("the empty set", &[foreign]);
    assert!(table(&host).contains("10.233.0.2 dev ve-web proto 118 scope link"));
    // A set cut off by the end of the input changes nothing.
    stdin
        .write_all(b"10.233.0.64/26 via 198.51.100.12\n")
        .unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ended inside a set"));
    assert_eq!(gw_routes(&host), [foreign]);
    // A bad set ends it with 65, the last good set in place.
    let mut child = routes_cmd(&host, &["--from", "-", "--follow"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"10.233.0.64/26 via 198.51.100.12\n\n10.233.0.65/26 via 198.51.100.12\n\n")
        .unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(65),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        gw_routes(&host),
        ["10.233.0.64/26 via 198.51.100.12 proto 118", foreign]
    );
}
