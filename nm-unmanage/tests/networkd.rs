//! nm-unmanage against a real systemd-networkd (Debian 12, systemd 252) with its stock
//! 80-container-ve.network, running standalone in a sandbox namespace on a private bus
//! (testbed::networkd): asserted with `ip -j addr`, an address monitor and `networkctl`.

mod support;

use std::{
    thread,
    time::{Duration, Instant},
};

use support::{
    nd::{has_networkd_address, v4_addrs, wait_setup, AddrMonitor, NdSandbox},
    wait_until,
};

/// networkd adds its first /28 25-105 ms after a veth appears: a link that is still as
/// ve-link made it after this long was left alone.
const HOLD: Duration = Duration::from_secs(3);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn negative_control_networkd_takes_ve_links_veth_and_adds_its_address() {
    let Some(mut sb) = NdSandbox::start("nd_negative_control") else {
        return;
    };
    let ctr = sb.netns("ctr");
    let mon = AddrMonitor::start(&sb.host);
    sb.ve_link_up("x", &ctr, "10.233.0.1", "10.233.0.2");
    wait_until(
        "networkd's address on ve-x",
        Duration::from_secs(10),
        || has_networkd_address(&sb.host, "ve-x").then_some(()),
    );
    let addrs = v4_addrs(&sb.host, "ve-x");
    assert!(
        addrs
            .iter()
            .any(|a| a.starts_with("192.168.") && a.ends_with("/28")),
        "{addrs:?}"
    );
    let state = sb.nd.setup_state("ve-x");
    assert!(
        matches!(state.as_deref(), Some("configuring" | "configured")),
        "networkctl: {state:?}"
    );
    let status = sb.nd.networkctl(&["status", "ve-x"]).unwrap();
    assert!(status.contains("80-container-ve.network"), "{status}");
    assert!(!mon.foreign("ve-", |a| a.starts_with("10.233.")).is_empty());
}
