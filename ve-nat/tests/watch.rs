//! `ve-nat watch` with real traffic in sandbox namespaces: the rules come back when
//! someone flushes them (`nft flush ruleset` as NixOS's nftables reload does, iptables
//! flushed on either backend), it says READY=1 only once they are in, and SIGTERM or
//! SIGINT end it with exit 0 within 3 s. No firewalld and no bus here: it keeps running
//! all the same.

mod support;

use std::time::Duration;

use support::{time_until, Topo, CTR, WANT};
use testbed::{privileged, HOST_UPLINK};

fn gate(test: &str, backend: &str) -> bool {
    privileged(
        test,
        &["ip", "nft", &format!("iptables-{backend}"), "nsenter"],
    )
}

/// How long after a flush the outside server sees the host's address again.
fn back_after(t: &Topo, limit: Duration) -> Option<Duration> {
    time_until(limit, || {
        t.seen_outside_once().is_ok_and(|s| s == HOST_UPLINK)
    })
}

#[test]
fn nft_flush_ruleset_is_undone_within_a_second_iptables_nft() {
    if gate(
        "nft_flush_ruleset_is_undone_within_a_second_iptables_nft",
        "nft",
    ) {
        flush_undone("nft");
    }
}

#[test]
fn nft_flush_ruleset_is_undone_within_a_second_nftables() {
    if gate(
        "nft_flush_ruleset_is_undone_within_a_second_nftables",
        "nft",
    ) {
        flush_undone("nftables");
    }
}

fn flush_undone(backend: &'static str) {
    let t = Topo::new(backend, false);
    let mut w = t.watcher();
    // READY=1 came after the first apply.
    assert_eq!(t.check(), Some(0), "check right after READY=1");
    t.assert_nat_works("watcher started");

    // The negative control: with the watcher stopped, a flush takes NAT away (the
    // outside server sees the container's own address) and check sees it.
    w.pause();
    t.host.sh("nft flush ruleset");
    assert_eq!(
        t.seen_outside(Duration::from_secs(3)).unwrap(),
        CTR,
        "traffic after a flush"
    );
    assert_eq!(t.check(), Some(1));
    w.resume();
    let d = back_after(&t, Duration::from_secs(3)).expect("rules back after SIGCONT");
    eprintln!("back {d:?} after the watcher resumed");
    t.assert_nat_works("after the first flush");

    // The figure: 20 flushes, each timed from starting `nft flush ruleset` (the
    // process's own start and exit included, so an upper bound) to the first NATed
    // connection.
    let mut took = Vec::new();
    for i in 0..20 {
        let start = std::time::Instant::now();
        t.host.sh("nft flush ruleset");
        back_after(&t, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("flush {i}: NAT not back within 5 s"));
        took.push(start.elapsed());
        // Let the watcher finish its look after its own apply.
        std::thread::sleep(Duration::from_millis(200));
    }
    took.sort();
    let median = (took[9] + took[10]) / 2;
    eprintln!(
        "MEASURED watcher re-apply after `nft flush ruleset` (--backend {backend}), 20 \
         flushes: median {} ms, min {} ms, max {} ms",
        median.as_millis(),
        took[0].as_millis(),
        took[19].as_millis()
    );
    assert!(median < Duration::from_secs(1), "median {median:?}");
    t.assert_nat_works("after 20 flushes");

    if backend == "nft" {
        // iptables-nft's own flush by someone else, in both tables.
        t.host
            .sh("iptables-nft -t nat -F && iptables-nft -t filter -F");
        back_after(&t, Duration::from_secs(3)).expect("rules back after iptables -F");
        t.assert_nat_works("after iptables-nft -F");
    } else {
        // Someone deletes our table.
        t.host.sh("nft delete table inet ve-nat");
        back_after(&t, Duration::from_secs(3)).expect("table back after nft delete");
        t.assert_nat_works("after nft delete table inet ve-nat");
    }
    assert_eq!(t.check(), Some(0));

    let (st, d) = w.stop_with(libc::SIGTERM);
    assert!(st.success(), "exit after SIGTERM: {st}");
    assert!(d < Duration::from_secs(3), "{d:?} to exit");
    t.nat_ok(&["down"]);
}

#[test]
fn iptables_legacy_flush_is_reapplied() {
    if !gate("iptables_legacy_flush_is_reapplied", "legacy") {
        return;
    }
    let t = Topo::new("legacy", false);
    let mut w = t.watcher_as(&["up", "--watch"]);
    assert_eq!(t.check(), Some(0), "check right after READY=1");
    t.assert_nat_works("watcher started");
    // No events from iptables-legacy: the watcher's poll finds it.
    t.host
        .sh("iptables-legacy -t nat -F && iptables-legacy -t filter -F");
    let d = back_after(&t, Duration::from_secs(4)).expect("rules back after a legacy flush");
    eprintln!(
        "MEASURED watcher re-apply after an iptables-legacy flush: {} ms",
        d.as_millis()
    );
    t.assert_nat_works("after iptables-legacy -F");
    assert_eq!(t.check(), Some(0));

    let (st, d) = w.stop_with(libc::SIGINT);
    assert!(st.success(), "exit after SIGINT: {st}");
    assert!(d < Duration::from_secs(3), "{d:?} to exit");
    t.nat_ok(&["down"]);
}

/// With no bus at all, `up` and `down` do nothing firewalld-ish and say nothing of it.
#[test]
fn no_bus_is_no_firewalld_quietly() {
    if !gate("no_bus_is_no_firewalld_quietly", "nft") {
        return;
    }
    let t = Topo::new("nft", false);
    let out = t.nat(&[&["up"], WANT].concat());
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert!(
        !t.state_dir().exists(),
        "a state directory without firewalld"
    );
    assert_eq!(t.seen_outside(Duration::from_secs(5)).unwrap(), HOST_UPLINK);
    let out = t.nat(&["down"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
