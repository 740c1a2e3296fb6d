//! ve-nat on a host where a real firewalld (Debian 12's 1.3.3) runs, on a private bus in
//! the sandbox host namespace, with real traffic: NAT and forwards work, survive
//! `firewall-cmd --reload` and a firewalld restart (with the watcher), and `down` leaves
//! firewalld's config as it was.

mod support;

use std::time::Duration;

use support::{Topo, WANT};
use testbed::{firewalld::root_ruleset, firewalld::Firewalld, privileged, HOST_UPLINK};

fn gate(test: &str) -> bool {
    let mut cmds = vec!["ip", "nft", "iptables-nft", "iptables-legacy"];
    cmds.extend(Firewalld::COMMANDS);
    privileged(test, &cmds)
}

fn trusted(fw: &Firewalld, permanent: bool) -> String {
    let mut args = vec!["--zone=trusted", "--list-interfaces"];
    if permanent {
        args.insert(0, "--permanent");
    }
    fw.cmd(&args).expect("firewall-cmd").trim().to_string()
}

fn fw(t: &Topo) -> &Firewalld {
    t.fw.as_ref().expect("a firewalld sandbox")
}

fn firewalld_running_reloaded_restarted(backend: &'static str) {
    let root_before = root_ruleset();
    let mut t = Topo::new(backend, true);
    let config_before = fw(&t).config().expect("firewalld's config");

    // The negative control: firewalld rejects forwarded container traffic from an
    // interface in no zone, whatever our rules accept, so NAT alone does not do it.
    // (`up` with the zone setting taken out again.)
    t.nat_ok(&[&["up"], WANT].concat());
    fw(&t)
        .cmd(&["--zone=trusted", "--remove-interface=ve-+"])
        .unwrap();
    assert!(
        t.seen_outside(Duration::from_millis(1500)).is_err(),
        "container traffic got through firewalld without the trusted zone"
    );
    assert_eq!(t.check(), Some(1), "check with the zone setting missing");

    // `up` puts it back: NAT and forwards work, runtime and permanent.
    t.nat_ok(&[&["up"], WANT].concat());
    t.assert_nat_works("after up");
    assert_eq!(t.check(), Some(0));
    assert_eq!(trusted(fw(&t), false), "ve-+");
    assert_eq!(trusted(fw(&t), true), "ve-+");

    // firewalld 1.3 flushes every iptables-nft table at a reload: without the watcher
    // our rules are gone (the zone settings are not). Our own nftables table, and
    // iptables-legacy, it leaves alone.
    fw(&t).cmd(&["--reload"]).unwrap();
    let want = if backend == "nft" { 1 } else { 0 };
    assert_eq!(t.check(), Some(want), "check after a reload, no watcher");
    assert_eq!(trusted(fw(&t), false), "ve-+");
    if backend != "nft" {
        t.assert_nat_works("after a reload, no watcher");
    }

    let mut w = t.watcher();
    t.assert_nat_works("watcher started");
    fw(&t).cmd(&["--reload"]).unwrap();
    t.assert_nat_works("after firewall-cmd --reload");
    assert_eq!(t.check(), Some(0), "check after a reload");

    // A restart: stop (it removes its table and, on iptables-nft, flushes ours), start.
    let old_pid = fw(&t).pid();
    t.fw.as_mut()
        .unwrap()
        .restart()
        .unwrap_or_else(|e| panic!("firewalld restart: {e}"));
    assert_ne!(fw(&t).pid(), old_pid);
    t.assert_nat_works("after a firewalld restart");
    assert_eq!(t.check(), Some(0), "check after a restart");

    let (st, took) = w.stop_with(libc::SIGTERM);
    assert!(st.success(), "watcher exit: {st}");
    assert!(
        took < Duration::from_secs(3),
        "watcher took {took:?} to exit"
    );

    t.nat_ok(&["down"]);
    assert_eq!(
        fw(&t).config().unwrap(),
        config_before,
        "firewalld's config after down"
    );
    assert!(!t.state_dir().join("firewalld").exists());
    assert!(t.seen_outside(Duration::from_millis(1500)).is_err());
    // down again: nothing left to do, success.
    t.nat_ok(&["down"]);
    drop(t);
    assert_eq!(
        root_ruleset(),
        root_before,
        "the machine's own ruleset changed"
    );
}

#[test]
fn firewalld_running_reloaded_restarted_iptables_nft() {
    if gate("firewalld_running_reloaded_restarted_iptables_nft") {
        firewalld_running_reloaded_restarted("nft");
    }
}

#[test]
fn firewalld_running_reloaded_restarted_nftables() {
    if gate("firewalld_running_reloaded_restarted_nftables") {
        firewalld_running_reloaded_restarted("nftables");
    }
}

#[test]
fn firewalld_running_reloaded_restarted_iptables_legacy() {
    if gate("firewalld_running_reloaded_restarted_iptables_legacy") {
        firewalld_running_reloaded_restarted("legacy");
    }
}

/// What an administrator put into the trusted zone before `up` is still there after
/// `down`; what ve-nat added is gone, runtime and permanent alike.
#[test]
fn down_removes_only_what_up_added() {
    if !gate("down_removes_only_what_up_added") {
        return;
    }
    let t = Topo::new("nft", true);
    let fw = t.fw.as_ref().unwrap();
    // Runtime only: ve-nat adds the permanent one.
    fw.cmd(&["--zone=trusted", "--add-interface=ve-+"]).unwrap();
    // A source the request asks for, already there permanently.
    fw.cmd(&[
        "--permanent",
        "--zone=trusted",
        "--add-source=10.233.0.0/16",
    ])
    .unwrap();
    let before = fw.config().unwrap();
    let want = [WANT, &["--internal-ip", "10.233.0.0/16"]].concat();
    t.nat_ok(&[&["up"], &want[..]].concat());
    assert_eq!(trusted(fw, true), "ve-+");
    let sources = fw.cmd(&["--zone=trusted", "--list-sources"]).unwrap();
    assert_eq!(sources.trim(), "10.233.0.0/16");
    assert_eq!(t.seen_outside(Duration::from_secs(5)).unwrap(), HOST_UPLINK);
    let record = std::fs::read_to_string(t.state_dir().join("firewalld")).unwrap();
    let lines: Vec<&str> = record.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        ["permanent interface ve-+", "runtime source 10.233.0.0/16"],
        "{record}"
    );
    t.nat_ok(&["down"]);
    assert_eq!(fw.config().unwrap(), before);
    assert_eq!(trusted(fw, false), "ve-+");
    assert_eq!(trusted(fw, true), "");
}

/// A firewalld on the bus but in another network namespace (the machine's, seen from a
/// container or a test sandbox) does not filter ours: ve-nat leaves it alone. The other
/// tests are the control: from firewalld's own namespace the same `up` changes it.
#[test]
fn a_firewalld_in_another_namespace_is_left_alone() {
    if !gate("a_firewalld_in_another_namespace_is_left_alone") {
        return;
    }
    let t = Topo::new("nft", true);
    let before = fw(&t).config().unwrap();
    let run = |args: &[&str]| {
        let out = t
            .out
            .command(support::BIN)
            .args(args)
            .args(["--backend", "nft"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", fw(&t).bus_address())
            .env("VE_NAT_LOCK_DIR", t.dirs.path().join("lock"))
            .env("VE_NAT_STATE_DIR", t.state_dir())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        eprintln!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.status.code()
    };
    assert_eq!(run(&["up", "--external", "up1"]), Some(0));
    assert_eq!(run(&["check", "--external", "up1"]), Some(0));
    assert_eq!(fw(&t).config().unwrap(), before);
    assert!(!t.state_dir().exists());
    assert_eq!(run(&["down"]), Some(0));
}

/// `down` while firewalld is stopped cannot reach its config: it keeps the entries
/// recorded (and says so), and a `down` once firewalld is back (with our permanent
/// entry copied into its runtime config) removes them, runtime and permanent.
#[test]
fn down_without_firewalld_keeps_the_record_for_later() {
    if !gate("down_without_firewalld_keeps_the_record_for_later") {
        return;
    }
    let mut t = Topo::new("nft", true);
    let before = fw(&t).config().unwrap();
    t.nat_ok(&[&["up"], WANT].concat());
    t.fw.as_mut().unwrap().stop();
    let out = t.nat(&["down"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("firewalld is not running"));
    let record = std::fs::read_to_string(t.state_dir().join("firewalld")).unwrap();
    let lines: Vec<&str> = record.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        ["permanent interface ve-+", "runtime interface ve-+"]
    );

    let fwd = t.fw.as_mut().unwrap();
    fwd.spawn().unwrap();
    fwd.wait_running(Duration::from_secs(30)).unwrap();
    assert_eq!(
        trusted(fw(&t), true),
        "ve-+",
        "the permanent entry outlived the stop"
    );
    t.nat_ok(&["down"]);
    assert_eq!(fw(&t).config().unwrap(), before);
    assert!(!t.state_dir().join("firewalld").exists());
}
