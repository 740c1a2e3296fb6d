//! nm-unmanage as a chained CNI plugin, called as a runtime calls it: against a real
//! NetworkManager on a private bus it unmanages the host interface of the previous
//! result (and only that one) and passes the result on; without NetworkManager it
//! passes the result on untouched. Against a real systemd-networkd (testbed::networkd)
//! it releases the host interface the same way, and CHECK sees networkd's state.

mod support;

use std::{process::Command, time::Duration};

use serde_json::{json, Value};
use support::{
    nd::{has_networkd_address, tool_in, v4_addrs, wait_setup, NdSandbox},
    wait_until, NmSandbox,
};
use testbed::privileged;

/// A previous result as ve-link (or ptp) prints it: the host end, then the container's.
fn prev(host_if: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": host_if, "mac": "02:00:00:00:00:01"},
            {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/x"}
        ],
        "ips": [{"address": "10.233.0.3/32", "gateway": "10.233.0.2", "interface": 1}]
    })
}

/// One call with exactly a runtime's environment; (success, stdout as JSON or Null).
fn call(c: Command, verb: &str, version: &str, prev: &Value) -> (bool, Value) {
    let conf = json!({"cniVersion": version, "name": "vetest", "type": "nm-unmanage",
                      "prevResult": prev});
    let env = [
        ("CNI_CONTAINERID", "0123456789abcdef".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_NETNS", "/run/netns/x".to_string()),
        ("CNI_PATH", "/nonexistent".to_string()),
    ];
    let r = testbed::cni::invoke(c, verb, &conf, &env).unwrap_or_else(|e| panic!("{e}"));
    (r.ok, r.stdout)
}

/// The result passed on is the previous one, in the request's version.
fn assert_passed_on(out: &Value, prev: &Value, version: &str) {
    assert_eq!(out["cniVersion"], version);
    assert_eq!(out["interfaces"], prev["interfaces"]);
    assert_eq!(out["ips"], prev["ips"]);
}

#[test]
fn add_unmanages_the_previous_results_host_interface_and_passes_it_on() {
    let Some(mut sb) = NmSandbox::start("cni_add") else {
        return;
    };
    let (ctr, other) = (sb.netns("ctr"), sb.netns("other"));
    // Names the default patterns do not match: only the previous result names them.
    sb.add_veth("vz-cni", &ctr, "eth0");
    sb.add_veth("vz-other", &other, "eth0");
    let c = sb.client();
    let managed = |n: &str| {
        wait_until(&format!("{n} managed"), Duration::from_secs(10), || {
            c.device(n).filter(|d| d.managed).map(drop)
        })
    };
    managed("vz-cni");
    managed("vz-other");
    let p = prev("vz-cni");

    let (ok, _) = call(sb.tool(), "CHECK", "1.0.0", &p);
    assert!(!ok, "CHECK passed while NetworkManager manages vz-cni");
    let (ok, out) = call(sb.tool(), "ADD", "1.0.0", &p);
    assert!(ok, "ADD: {out}");
    assert_passed_on(&out, &p, "1.0.0");
    wait_until("vz-cni unmanaged", Duration::from_secs(5), || {
        c.device("vz-cni").filter(|d| !d.managed).map(drop)
    });
    assert!(
        c.device("vz-other").unwrap().managed,
        "vz-other was touched"
    );
    let (ok, out) = call(sb.tool(), "CHECK", "1.0.0", &p);
    assert!(ok, "CHECK after ADD: {out}");
    let (ok, out) = call(sb.tool(), "DEL", "1.0.0", &p);
    assert!(ok && out.is_null(), "DEL: {out}");
}

#[test]
fn without_network_manager_every_version_passes_the_result_on() {
    if !privileged("cni_pass_through", &["ip", "dbus-daemon"]) {
        return;
    }
    let sb = NmSandbox::bus_only();
    let p = prev("ve-0123456789ab");
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let (ok, out) = call(sb.tool(), "ADD", v, &p);
        assert!(ok, "{v} ADD: {out}");
        assert_passed_on(&out, &p, v);
        let (ok, out) = call(sb.tool(), "DEL", v, &p);
        assert!(ok && out.is_null(), "{v} DEL: {out}");
    }
    // Chained means a previous result: without one, CNI error 7 and exit 78.
    let env = [
        ("CNI_CONTAINERID", "x".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_NETNS", "/run/netns/x".to_string()),
    ];
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "nm-unmanage"});
    let r = testbed::cni::invoke(sb.tool(), "ADD", &conf, &env).unwrap();
    assert_eq!(r.code, Some(78));
    assert_eq!(r.stdout["code"], 7);
}

#[test]
fn add_releases_the_host_interface_from_networkd_and_check_sees_it() {
    let Some(mut sb) = NdSandbox::start("cni_networkd") else {
        return;
    };
    let ctr = sb.netns("ctr");
    // ve-link's host end, which networkd's stock 80-container-ve.network takes.
    sb.ve_link_up("x", &ctr, "10.233.0.1", "10.233.0.2");
    wait_until(
        "networkd's address on ve-x",
        Duration::from_secs(10),
        || has_networkd_address(&sb.host, "ve-x").then_some(()),
    );
    let p = prev("ve-x");

    let (ok, out) = call(sb.tool(), "CHECK", "1.0.0", &p);
    assert!(!ok, "CHECK passed while networkd manages ve-x: {out}");
    assert!(
        out["msg"]
            .as_str()
            .unwrap_or("")
            .contains("systemd-networkd"),
        "{out}"
    );
    let (ok, out) = call(sb.tool(), "ADD", "1.0.0", &p);
    assert!(ok, "ADD: {out}");
    assert_passed_on(&out, &p, "1.0.0");
    wait_setup(&sb.nd, "ve-x", "unmanaged", Duration::from_secs(5));
    wait_until(
        "networkd's address to go from ve-x",
        Duration::from_secs(5),
        || (!has_networkd_address(&sb.host, "ve-x")).then_some(()),
    );
    // ve-link's address stays.
    assert_eq!(v4_addrs(&sb.host, "ve-x"), ["10.233.0.1/32"]);
    // The file covers ve-* (the default glob), not one name per container.
    let file = sb.run_dir().join(nm_unmanage::NETWORK_FILE);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("Name=ve-*\n"), "{text}");
    let (ok, out) = call(sb.tool(), "CHECK", "1.0.0", &p);
    assert!(ok, "CHECK after ADD: {out}");
    // ADD again: the same result, the file unchanged.
    let (ok, out) = call(sb.tool(), "ADD", "0.4.0", &p);
    assert!(ok, "second ADD: {out}");
    assert_passed_on(&out, &p, "0.4.0");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    let (ok, out) = call(sb.tool(), "DEL", "1.0.0", &p);
    assert!(ok && out.is_null(), "DEL: {out}");
}

#[test]
fn add_keeps_both_managers_off_when_both_run_on_one_bus() {
    let Some(mut sb) = NmSandbox::start("cni_both") else {
        return;
    };
    if !privileged("cni_both", testbed::networkd::Networkd::COMMANDS) {
        return;
    }
    let run = sb.scratch().join("run");
    let mut nd = testbed::networkd::Networkd::on_bus(
        &sb.host,
        sb.scratch().join("nd"),
        &sb.bus_address(),
        Some(&run),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    nd.spawn().unwrap_or_else(|e| panic!("{e}"));
    let (ca, co) = (sb.netns("ca"), sb.netns("co"));
    support::nd::ve_link_up(&sb.host, "a", &ca, "10.233.0.1", "10.233.0.2");
    // The control, not in the previous result.
    support::nd::ve_link_up(&sb.host, "o", &co, "10.233.1.1", "10.233.1.2");
    let c = sb.client();
    wait_until(
        "both managers to take ve-a and ve-o",
        Duration::from_secs(10),
        || {
            let nm = ["ve-a", "ve-o"]
                .iter()
                .all(|i| c.device(i).is_some_and(|d| d.managed));
            let networkd = ["ve-a", "ve-o"].iter().all(|i| {
                matches!(
                    nd.setup_state(i).as_deref(),
                    Some("configuring" | "configured")
                )
            });
            (nm && networkd).then_some(())
        },
    );
    let p = prev("ve-a");
    let (ok, _) = call(tool_in(&nd), "CHECK", "1.1.0", &p);
    assert!(!ok, "CHECK passed while both manage ve-a");
    let (ok, out) = call(tool_in(&nd), "ADD", "1.1.0", &p);
    assert!(ok, "ADD: {out}");
    assert_passed_on(&out, &p, "1.1.0");
    wait_setup(&nd, "ve-a", "unmanaged", Duration::from_secs(5));
    wait_until(
        "NetworkManager to leave ve-a",
        Duration::from_secs(5),
        || c.device("ve-a").filter(|d| !d.managed).map(drop),
    );
    assert!(
        c.device("ve-o").unwrap().managed,
        "NetworkManager left ve-o"
    );
    let (ok, out) = call(tool_in(&nd), "CHECK", "1.1.0", &p);
    assert!(ok, "CHECK after ADD: {out}");
}
