//! nm-unmanage against a real NetworkManager on a private bus in throwaway namespaces:
//! asserted through D-Bus (device State and Managed) and on the wire (DHCP DISCOVERs
//! seen by a listener in the container's namespace).

mod support;

use std::{
    thread,
    time::{Duration, Instant},
};

use support::{median_max, wait_until, Client, DhcpListener, NmSandbox, Watcher};
use testbed::{privileged, Netns};

const UNMANAGED: u32 = nm_unmanage::STATE_UNMANAGED;
/// NetworkManager waits ~0.25 s before it activates a new device; holding a little
/// longer than that shows whether a device *stays* unmanaged.
const HOLD: Duration = Duration::from_millis(400);
/// A DISCOVER that arrives this long after the watcher's report was read counts as DHCP
/// going on after Managed=false. The arrival times are the kernel's receive stamps and
/// the report is read after NetworkManager acknowledged the Set, so a packet sent before
/// it is never late by this much; the margin absorbs scheduling noise on a busy machine.
const LATE: Duration = Duration::from_millis(250);

/// Wait until NetworkManager manages `ifname` and has started activating it.
fn wait_managed(c: &Client, ifname: &str) -> u32 {
    wait_until(
        &format!("{ifname} to be managed"),
        Duration::from_secs(10),
        || {
            c.device(ifname)
                .filter(|d| d.managed && d.state >= 40)
                .map(|d| d.state)
        },
    )
}

fn wait_unmanaged(c: &Client, ifname: &str) {
    wait_until(
        &format!("{ifname} to be unmanaged"),
        Duration::from_secs(5),
        || {
            c.device(ifname)
                .filter(|d| !d.managed && d.state == UNMANAGED)
                .map(drop)
        },
    )
}

fn assert_unmanaged(c: &Client, ifname: &str) {
    let d = c
        .device(ifname)
        .unwrap_or_else(|| panic!("NetworkManager lost {ifname}"));
    assert!(
        !d.managed && d.state == UNMANAGED,
        "{ifname} is managed again: {d:?}"
    );
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn negative_control_network_manager_takes_a_bare_veth_and_starts_dhcp() {
    let Some(mut sb) = NmSandbox::start("negative_control") else {
        return;
    };
    let ctr = sb.netns("ctr");
    let dhcp = DhcpListener::start(&ctr);
    sb.add_veth("ve-test", &ctr, "eth0");
    let c = sb.client();
    wait_managed(&c, "ve-test");
    wait_until(
        "a DHCP DISCOVER from ve-test",
        Duration::from_secs(10),
        || (dhcp.count() > 0).then_some(()),
    );
}

#[test]
fn one_shot_unmanages_matching_devices_only() {
    let Some(mut sb) = NmSandbox::start("one_shot") else {
        return;
    };
    let (ctr, other) = (sb.netns("ctr"), sb.netns("other"));
    sb.add_veth("ve-test", &ctr, "eth0");
    sb.add_veth("vz-other", &other, "eth0");
    let c = sb.client();
    wait_managed(&c, "ve-test");
    wait_managed(&c, "vz-other");

    let out = sb.tool().output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ve-test\n");
    wait_unmanaged(&c, "ve-test");
    thread::sleep(HOLD);
    assert_unmanaged(&c, "ve-test");
    let o = c.device("vz-other").unwrap();
    assert!(
        o.managed && o.state > UNMANAGED,
        "control device touched: {o:?}"
    );

    // Again: nothing changes, nothing printed.
    let out = sb.tool().output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");

    // Nothing matches: exit 0, a note on stderr; device-spec form accepted.
    let out = sb
        .tool()
        .args(["--json", "interface-name:nomatch-*"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("no NetworkManager device matches"),
        "{}",
        stderr(&out)
    );

    // An explicit pattern for the control device, with --json.
    let out = sb.tool().args(["--json", "vz-*"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["interface"], "vz-other");
    assert_eq!(v["was_managed"], true);
    wait_unmanaged(&c, "vz-other");
}

/// Addresses (without link-local) and routes of `ifname`, as `ip -j` reports them.
fn l3_config(ns: &Netns, ifname: &str) -> Vec<String> {
    let mut out = Vec::new();
    for a in ns.ip_json(&["addr", "show", "dev", ifname])[0]["addr_info"]
        .as_array()
        .unwrap()
    {
        if a["scope"] != "link" {
            out.push(format!("addr {}/{}", a["local"], a["prefixlen"]));
        }
    }
    for fam in ["-4", "-6"] {
        for r in ns
            .ip_json(&[fam, "route", "show", "dev", ifname])
            .as_array()
            .unwrap()
        {
            if !r["dst"].as_str().unwrap_or("").starts_with("fe80") {
                out.push(format!("route {r}"));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn external_connection_is_released_with_addresses_and_routes_untouched() {
    if !privileged(
        "external_connection",
        &["ip", "dbus-daemon", "NetworkManager", "mount"],
    ) {
        return;
    }
    // The veth is configured before NetworkManager starts: with NetworkManager already
    // running, whether it assumes the link as external or races ahead with its own DHCP
    // profile (and flushes the IPv4 address) depends on timing.
    let mut sb = NmSandbox::bus_only();
    let ctr = sb.netns("ctr");
    let h = &sb.host.clone();
    // What ve-link leaves behind: addresses and a route, then the link up.
    h.ip(&[
        "link",
        "add",
        "ve-ext",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ctr.name(),
    ]);
    h.ip(&["addr", "add", "192.0.2.1/24", "dev", "ve-ext"]);
    h.ip(&["addr", "add", "2001:db8::1/64", "dev", "ve-ext", "nodad"]);
    ctr.ip(&["link", "set", "eth0", "up"]);
    h.ip(&["link", "set", "ve-ext", "up"]);
    h.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "192.0.2.2",
        "dev",
        "ve-ext",
        "onlink",
    ]);
    sb.start_nm();
    let c = sb.client();
    wait_until(
        "ve-ext taken over as external (State 100)",
        Duration::from_secs(10),
        || {
            c.device("ve-ext")
                .filter(|d| d.managed && d.state == 100)
                .map(drop)
        },
    );
    let before = l3_config(h, "ve-ext");
    assert_eq!(
        before.iter().filter(|l| l.starts_with("addr")).count(),
        2,
        "{before:?}"
    );
    assert!(
        before.iter().any(|l| l.contains("198.51.100.0/24")),
        "{before:?}"
    );

    let out = sb.tool().arg("ve-ext").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ve-ext\n");
    wait_unmanaged(&c, "ve-ext");
    thread::sleep(HOLD);
    assert_unmanaged(&c, "ve-ext");
    assert_eq!(l3_config(&sb.host, "ve-ext"), before);
}

#[test]
fn watch_catches_twenty_recreations_in_time() {
    const CYCLES: usize = 20;
    let Some(mut sb) = NmSandbox::start("watch_recreations") else {
        return;
    };
    let (ctr, early) = (sb.netns("ctr"), sb.netns("early"));
    // A device that exists before the watcher starts: it must be caught by the listing.
    sb.add_veth("vb-early", &early, "eth0");
    let c = sb.client();
    wait_managed(&c, "vb-early");
    let dhcp = DhcpListener::start(&ctr);
    let w = Watcher::start(&sb, &[]);
    let (_, v) = w
        .next_for("vb-early", Duration::from_secs(10))
        .expect("vb-early caught");
    assert_eq!(v["cause"], "existing");

    let (mut from_creation, mut from_signal) = (Vec::new(), Vec::new());
    let (mut leaked, mut cycles_leaking) = (0, 0);
    for i in 0..CYCLES {
        let created = Instant::now();
        sb.add_veth("ve-test", &ctr, "eth0");
        let (acked, v) = w
            .next_for("ve-test", Duration::from_secs(5))
            .unwrap_or_else(|| panic!("cycle {i}: the watcher did not report ve-test"));
        assert_eq!(v["cause"], "added", "cycle {i}: {v}");
        from_creation.push(acked - created);
        from_signal.push(Duration::from_micros(
            v["after_signal_us"].as_u64().unwrap(),
        ));
        thread::sleep(HOLD);
        assert_unmanaged(&c, "ve-test");
        let discovers = dhcp.discovers();
        let before: Vec<_> = discovers.iter().filter(|t| **t >= created).collect();
        let late = before.iter().filter(|t| ***t > acked + LATE).count();
        assert_eq!(
            late, 0,
            "cycle {i}: DHCP went on after ve-test was unmanaged"
        );
        for t in &before {
            eprintln!(
                "cycle {i}: DISCOVER {:?} after creation; unmanaged after {:?}; state before {}",
                **t - created,
                acked - created,
                v["state_before"]
            );
        }
        leaked += before.len();
        cycles_leaking += usize::from(!before.is_empty());
        sb.del_link("ve-test");
        // Wait for NetworkManager to drop the old device so the next one is new.
        wait_until("ve-test to be gone", Duration::from_secs(5), || {
            c.device("ve-test").is_none().then_some(())
        });
    }
    // The last one, left in place a while longer: silent. NetworkManager's DHCP client
    // (measured here) sends its first DISCOVER ~40 ms after creation and retransmits
    // 1-3 s later, so a hold of 3.5 s would see DHCP that went on after Managed=false.
    sb.add_veth("ve-test", &ctr, "eth0");
    let (acked, _) = w
        .next_for("ve-test", Duration::from_secs(5))
        .expect("last ve-test");
    thread::sleep(Duration::from_millis(3500));
    assert_unmanaged(&c, "ve-test");
    let late = dhcp
        .discovers()
        .iter()
        .filter(|t| **t > acked + LATE)
        .count();
    assert_eq!(late, 0, "DHCP from ve-test after it was unmanaged");

    let (cm, cx) = median_max(from_creation);
    let (sm, sx) = median_max(from_signal);
    eprintln!(
        "watch: {CYCLES} re-creations: link creation -> unmanaged median {cm:?}, worst {cx:?}; \
         announcement (InterfacesAdded/DeviceAdded) -> unmanaged median {sm:?}, worst {sx:?}; \
         {leaked} DHCP DISCOVERs got out, in {cycles_leaking} of {CYCLES} cycles"
    );
    let status = w.stop();
    assert!(status.success(), "watcher exit on SIGTERM: {status}");
}

#[test]
fn watch_survives_a_network_manager_restart() {
    let Some(mut sb) = NmSandbox::start("watch_restart") else {
        return;
    };
    let (a, b) = (sb.netns("a"), sb.netns("b"));
    sb.add_veth("ve-a", &a, "eth0");
    let w = Watcher::start(&sb, &[]);
    w.next_for("ve-a", Duration::from_secs(10))
        .expect("ve-a caught at start");
    let c = sb.client();
    wait_unmanaged(&c, "ve-a");

    sb.restart_nm();
    // The new NetworkManager knows nothing of Managed=false: the watcher says it again.
    w.next_for("ve-a", Duration::from_secs(10))
        .expect("ve-a unmanaged again after the restart");
    let c = sb.client();
    wait_unmanaged(&c, "ve-a");

    sb.add_veth("ve-b", &b, "eth0");
    let (_, v) = w
        .next_for("ve-b", Duration::from_secs(5))
        .expect("ve-b caught");
    assert_eq!(v["cause"], "added");
    thread::sleep(HOLD);
    assert_unmanaged(&c, "ve-b");
    assert_unmanaged(&c, "ve-a");
    let status = w.stop();
    assert!(status.success(), "watcher exit on SIGTERM: {status}");
}

/// The number at the end of a NetworkManager device path.
fn device_number(path: &str) -> u32 {
    path.rsplit('/').next().unwrap().parse().unwrap()
}

#[test]
fn watch_ignores_forged_announcements() {
    const AHEAD: u32 = 12;
    let Some(mut sb) = NmSandbox::start("watch_forged") else {
        return;
    };
    let (a, b) = (sb.netns("a"), sb.netns("b"));
    sb.add_veth("ve-a", &a, "eth0");
    let c = sb.client();
    wait_managed(&c, "ve-a");
    let w = Watcher::start(&sb, &[]);
    let (_, v) = w
        .next_for("ve-a", Duration::from_secs(10))
        .expect("ve-a caught at start");
    let last = device_number(v["path"].as_str().unwrap());
    let watcher = c
        .unique_name_of(w.pid())
        .expect("the watcher's connection on the bus");

    // Another client (any local user may do this) announces the device paths
    // NetworkManager will give out next: broadcast and straight to the watcher, as
    // DeviceAdded and as InterfacesAdded (naming a device that does not match). A watcher
    // that believed them, or remembered the paths before NetworkManager confirmed them,
    // would then skip the real device.
    for n in last + 1..=last + AHEAD {
        let path = format!("/org/freedesktop/NetworkManager/Devices/{n}");
        for to in [None, Some(watcher.as_str())] {
            c.forge_device_added(to, &path);
            c.forge_interfaces_added(to, &path, "vz-forged");
        }
    }
    // Let the watcher take them all in before the real device comes.
    thread::sleep(Duration::from_millis(300));

    sb.add_veth("ve-b", &b, "eth0");
    let (_, v) = w
        .next_for("ve-b", Duration::from_secs(5))
        .expect("the watcher skipped ve-b after forged announcements");
    assert_eq!(v["cause"], "added");
    let n = device_number(v["path"].as_str().unwrap());
    assert!(
        (last + 1..=last + AHEAD).contains(&n),
        "ve-b got path number {n}, outside the forged {}..={}: the test proved nothing",
        last + 1,
        last + AHEAD
    );
    thread::sleep(HOLD);
    assert_unmanaged(&c, "ve-b");
    let status = w.stop();
    assert!(status.success(), "watcher exit on SIGTERM: {status}");
}

#[test]
fn persist_holds_across_recreation_and_restart_and_remove_undoes_it() {
    let Some(mut sb) = NmSandbox::start("persist") else {
        return;
    };
    let (ctr, keep) = (sb.netns("ctr"), sb.netns("keep"));
    let dhcp = DhcpListener::start(&ctr);
    let conf_dir = sb.conf_dir();
    let out = sb
        .tool()
        .args(["--persist", "--conf-dir"])
        .arg(&conf_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let file = conf_dir.join(nm_unmanage::DROP_IN);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("[keyfile]\nunmanaged-devices+=interface-name:ve-*;interface-name:vb-*\n"),
        "{text}"
    );
    let c = sb.client();

    let fresh = |sb: &NmSandbox, c: &Client, what: &str| {
        sb.add_veth("ve-test", &ctr, "eth0");
        wait_until(
            "NetworkManager to see ve-test",
            Duration::from_secs(5),
            || c.device("ve-test"),
        );
        thread::sleep(Duration::from_millis(1000));
        assert_unmanaged(c, "ve-test");
        assert_eq!(dhcp.count(), 0, "DHCP from ve-test {what}");
    };
    fresh(&sb, &c, "with the drop-in");
    // The administrator's own unmanaged-devices still holds (we append, not replace).
    sb.add_veth("vz-keep", &keep, "eth0");
    wait_until(
        "NetworkManager to see vz-keep",
        Duration::from_secs(5),
        || c.device("vz-keep"),
    );
    thread::sleep(HOLD);
    assert_unmanaged(&c, "vz-keep");

    sb.del_link("ve-test");
    sb.restart_nm();
    let c = sb.client();
    fresh(&sb, &c, "after a NetworkManager restart");

    for _ in 0..2 {
        let out = sb
            .tool()
            .args(["--remove", "--conf-dir"])
            .arg(&conf_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!file.exists());
    }
    sb.del_link("ve-test");
    wait_until("ve-test to be gone", Duration::from_secs(5), || {
        c.device("ve-test").is_none().then_some(())
    });
    sb.add_veth("ve-test", &ctr, "eth0");
    wait_managed(&c, "ve-test");
}

#[test]
fn no_network_manager_is_exit_69_or_0_with_if_running_but_a_watcher_waits() {
    if !privileged("no_network_manager", &["ip", "dbus-daemon"]) {
        return;
    }
    let sb = NmSandbox::bus_only();
    let conf_dir = sb.conf_dir().display().to_string();
    for extra in [&[][..], &["--persist", "--conf-dir", &conf_dir]] {
        let out = sb.tool().args(extra).output().unwrap();
        assert_eq!(out.status.code(), Some(69), "{extra:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("NetworkManager is not running"),
            "{}",
            stderr(&out)
        );
        let out = sb.tool().args(extra).arg("--if-running").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "");
    }
    // --persist wrote its drop-in all the same: it takes effect when NetworkManager starts.
    assert!(sb.conf_dir().join(nm_unmanage::DROP_IN).exists());
    // --runtime --if-running (examples/container-net) writes nothing on a host without
    // NetworkManager, not even the directory; without --if-running it writes (69).
    let out = sb
        .tool_in_private_mounts()
        .args(["--runtime", "--if-running"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!sb.runtime_dir().exists(), "--runtime --if-running wrote");
    let out = sb
        .tool_in_private_mounts()
        .arg("--runtime")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(sb.runtime_dir().join(nm_unmanage::RUNTIME_DROP_IN).exists());
    // A watcher (a service started at boot before NetworkManager) waits for it instead,
    // with or without --if-running, and still stops cleanly.
    for extra in [&[][..], &["--if-running"]] {
        let mut w = Watcher::start(&sb, extra);
        assert!(
            w.logged("waiting for it", Duration::from_secs(5)),
            "{extra:?}: no note that the watcher waits"
        );
        thread::sleep(Duration::from_millis(300));
        assert!(w.running(), "{extra:?}: the watcher gave up");
        let status = w.stop();
        assert!(
            status.success(),
            "{extra:?}: watcher exit on SIGTERM: {status}"
        );
    }
    // No bus at all: 69, also for a watcher (there is nothing to wait on).
    for extra in [&[][..], &["--watch"]] {
        let out = sb
            .tool()
            .args(["--bus-address", "unix:path=/nonexistent/bus"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(69), "{extra:?}: {}", stderr(&out));
    }
}

#[test]
fn watch_started_before_network_manager_acts_once_it_appears() {
    if !privileged(
        "watch_before_nm",
        &["ip", "dbus-daemon", "NetworkManager", "mount"],
    ) {
        return;
    }
    let mut sb = NmSandbox::bus_only();
    let ctr = sb.netns("ctr");
    let w = Watcher::start(&sb, &[]);
    assert!(
        w.logged("waiting for it", Duration::from_secs(5)),
        "no note that the watcher waits"
    );
    sb.start_nm();
    assert!(
        w.logged("NetworkManager is on the bus", Duration::from_secs(5)),
        "the watcher did not notice NetworkManager"
    );
    let dhcp = DhcpListener::start(&ctr);
    sb.add_veth("ve-test", &ctr, "eth0");
    let (acked, v) = w
        .next_for("ve-test", Duration::from_secs(5))
        .expect("ve-test caught once NetworkManager is there");
    assert_eq!(v["cause"], "added", "{v}");
    let c = sb.client();
    thread::sleep(HOLD);
    assert_unmanaged(&c, "ve-test");
    let late = dhcp
        .discovers()
        .iter()
        .filter(|t| **t > acked + LATE)
        .count();
    assert_eq!(late, 0, "DHCP from ve-test after it was unmanaged");
    let status = w.stop();
    assert!(status.success(), "watcher exit on SIGTERM: {status}");
}

#[test]
fn permission_denied_on_the_bus_is_exit_77() {
    if !privileged("permission_denied", &["setpriv"]) {
        return;
    }
    let Some(sb) = NmSandbox::start("permission_denied") else {
        return;
    };
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            support::BIN,
        ])
        .env("DBUS_SYSTEM_BUS_ADDRESS", sb.bus_address())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(stderr(&out).contains("AccessDenied"), "{}", stderr(&out));
}
