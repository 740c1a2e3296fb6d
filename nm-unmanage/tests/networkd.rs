//! nm-unmanage against a real systemd-networkd (Debian 12, systemd 252) with its stock
//! 80-container-ve.network, running standalone in a sandbox namespace on a private bus
//! (testbed::networkd): asserted with `ip -j addr`, an address monitor and `networkctl`.

mod support;

use std::{
    thread,
    time::{Duration, Instant},
};

use support::{
    nd::{has_networkd_address, tool_in, v4_addrs, wait_setup, NdSandbox},
    wait_until, NmSandbox, Watcher,
};
use testbed::networkd::{AddrMonitor, Networkd};

const UNMANAGED: u32 = nm_unmanage::STATE_UNMANAGED;

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
    let mon = AddrMonitor::start(&sb.host).expect("ip monitor");
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

/// The file the tool writes, in the sandbox's /run/systemd/network.
fn runtime_file(sb: &NdSandbox) -> std::path::PathBuf {
    sb.run_dir().join(nm_unmanage::NETWORK_FILE)
}

#[test]
fn one_shot_releases_ve_x_networkds_address_goes_and_ve_links_stays() {
    let Some(mut sb) = NdSandbox::start("nd_one_shot") else {
        return;
    };
    let (ctr, other) = (sb.netns("ctr"), sb.netns("other"));
    sb.ve_link_up("x", &ctr, "10.233.0.1", "10.233.0.2");
    // A link the pattern below does not match, that networkd manages too.
    sb.ve_link_up("y", &other, "10.233.1.1", "10.233.1.2");
    wait_until(
        "networkd's address on ve-x and ve-y",
        Duration::from_secs(10),
        || {
            (has_networkd_address(&sb.host, "ve-x") && has_networkd_address(&sb.host, "ve-y"))
                .then_some(())
        },
    );
    let before = v4_addrs(&sb.host, "ve-x");
    assert!(before.contains(&"10.233.0.1/32".to_string()), "{before:?}");

    let out = sb.tool().arg("interface-name:=ve-x").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ve-x\n", "{}", stderr(&out));
    wait_setup(&sb.nd, "ve-x", "unmanaged", Duration::from_secs(5));
    wait_until(
        "networkd's address to go from ve-x",
        Duration::from_secs(5),
        || (!has_networkd_address(&sb.host, "ve-x")).then_some(()),
    );
    thread::sleep(HOLD);
    assert_eq!(v4_addrs(&sb.host, "ve-x"), ["10.233.0.1/32"]);
    let routes = sb.host.ip(&["route", "show", "dev", "ve-x"]);
    assert!(routes.contains("10.233.0.2 proto 118"), "{routes}");
    assert_eq!(sb.nd.setup_state("ve-x").as_deref(), Some("unmanaged"));
    // The other link: still networkd's, with its address.
    assert!(has_networkd_address(&sb.host, "ve-y"));
    assert_ne!(sb.nd.setup_state("ve-y").as_deref(), Some("unmanaged"));
    // The runtime file, and nothing in /etc/systemd/network.
    let text = std::fs::read_to_string(runtime_file(&sb)).unwrap();
    assert!(
        text.contains("[Match]\nName=ve-x\n") && text.contains("Unmanaged=yes"),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(sb.nd.etc_dir()).unwrap().count(), 0);

    // Again: nothing changes, nothing printed.
    let out = sb.tool().arg("interface-name:=ve-x").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(v4_addrs(&sb.host, "ve-x"), ["10.233.0.1/32"]);

    // --manager nm on a host without NetworkManager: 69, networkd untouched by it.
    let out = sb
        .tool()
        .args(["--manager", "nm", "--if-running"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sb.tool().args(["--manager", "nm"]).output().unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
}

/// ve-link's address of pair `i`.
fn host_address(i: usize) -> String {
    format!("10.233.{i}.1")
}

/// Make `n` pairs `{prefix}{i}` with ve-link while `mon` records every address, hold
/// them for HOLD after the last, and assert that each stayed exactly as ve-link made it
/// (its one address, networkctl "unmanaged") and that networkd never added an address.
fn assert_pairs_left_alone(sb: &mut NdSandbox, mon: &AddrMonitor, prefix: &str, n: usize) {
    let ctrs: Vec<_> = (0..n).map(|i| sb.netns(&format!("{prefix}{i}"))).collect();
    for (i, ctr) in ctrs.iter().enumerate() {
        let local = format!("10.233.{i}.2");
        sb.ve_link_up(&format!("{prefix}{i}"), ctr, &host_address(i), &local);
    }
    let start = Instant::now();
    while start.elapsed() < HOLD {
        for i in 0..n {
            let iface = format!("ve-{prefix}{i}");
            assert_eq!(
                v4_addrs(&sb.host, &iface),
                [format!("{}/32", host_address(i))],
                "{iface} after {:?}",
                start.elapsed()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    for i in 0..n {
        let iface = format!("ve-{prefix}{i}");
        assert_eq!(
            sb.nd.setup_state(&iface).as_deref(),
            Some("unmanaged"),
            "{iface}"
        );
    }
    let foreign = mon.foreign("ve-", |a| a.starts_with("10.233."));
    assert!(foreign.is_empty(), "networkd added addresses: {foreign:#?}");
}

#[test]
fn persist_keeps_20_new_veths_as_ve_link_made_them_and_remove_gives_them_back() {
    let Some(mut sb) = NdSandbox::start("nd_persist") else {
        return;
    };
    let mon = AddrMonitor::start(&sb.host).expect("ip monitor");
    let out = sb
        .tool()
        .args(["--persist", "--networkd-dir", "/etc/systemd/network"])
        .output()
        .unwrap();
    // No NetworkManager (and no /etc/NetworkManager/conf.d): networkd alone is success.
    assert!(out.status.success(), "{}", stderr(&out));
    let file = sb.nd.etc_dir().join(nm_unmanage::NETWORK_FILE);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("Name=ve-* vb-*\n"), "{text}");
    assert!(!runtime_file(&sb).exists());
    assert_pairs_left_alone(&mut sb, &mon, "p", 20);

    // --remove: the file goes, networkd is reloaded: a new veth is managed again.
    let out = sb
        .tool()
        .args(["--remove", "--networkd-dir", "/etc/systemd/network"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!file.exists());
    let ctr = sb.netns("late");
    sb.ve_link_up("late", &ctr, "10.233.99.1", "10.233.99.2");
    wait_until(
        "networkd's address on ve-late",
        Duration::from_secs(10),
        || has_networkd_address(&sb.host, "ve-late").then_some(()),
    );
    assert_ne!(sb.nd.setup_state("ve-late").as_deref(), Some("unmanaged"));
    // As documented: networkd takes the old ones back too.
    wait_until(
        "networkd to take ve-p0 back",
        Duration::from_secs(10),
        || (sb.nd.setup_state("ve-p0").as_deref() != Some("unmanaged")).then_some(()),
    );
    // Removing again: nothing there, still success.
    let out = sb
        .tool()
        .args(["--remove", "--networkd-dir", "/etc/systemd/network"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn watch_keeps_new_veths_as_ve_link_made_them_across_a_networkd_restart() {
    let Some(mut sb) = NdSandbox::start("nd_watch") else {
        return;
    };
    let mon = AddrMonitor::start(&sb.host).expect("ip monitor");
    let w = Watcher::spawn(tool_in(&sb.nd), &["--manager", "networkd"]);
    assert!(
        w.logged(
            "systemd-networkd reloaded its configuration",
            Duration::from_secs(10)
        ),
        "the watcher did not apply its file"
    );
    assert!(runtime_file(&sb).exists());
    assert_pairs_left_alone(&mut sb, &mon, "a", 5);

    sb.nd.stop();
    // A pair made while networkd is away, then networkd back: it reads the file at its
    // start, and the watcher applies it again.
    let ctr = sb.netns("gap");
    sb.ve_link_up("gap", &ctr, "10.233.50.1", "10.233.50.2");
    sb.nd.spawn().unwrap();
    assert!(
        w.logged("systemd-networkd is on the bus", Duration::from_secs(10)),
        "the watcher did not see networkd come back"
    );
    assert_pairs_left_alone(&mut sb, &mon, "b", 5);
    assert_eq!(v4_addrs(&sb.host, "ve-gap"), ["10.233.50.1/32"]);
    assert_eq!(sb.nd.setup_state("ve-gap").as_deref(), Some("unmanaged"));
    for i in 0..5 {
        assert_eq!(
            v4_addrs(&sb.host, &format!("ve-a{i}")),
            [format!("{}/32", host_address(i))]
        );
    }

    // Someone deletes the file and reloads networkd: it takes every ve-* link back
    // (deleting ve-link's addresses, as after --remove); the watcher, told by networkd,
    // writes the file again and releases them, and new veths are left alone again.
    std::fs::remove_file(runtime_file(&sb)).unwrap();
    let out = sb
        .nd
        .command_in_mounts("busctl")
        .args([
            "call",
            "org.freedesktop.network1",
            "/org/freedesktop/network1",
        ])
        .args(["org.freedesktop.network1.Manager", "Reload"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The first link networkd reports taken makes the watcher reload with the file,
    // which releases the others too.
    let (_, rec) = w
        .next_where(|v| v["cause"] == "added", Duration::from_secs(10))
        .expect("the watcher released a link networkd took");
    assert_eq!(rec["manager"], "networkd");
    assert_eq!(rec["state_before"], "configuring");
    assert!(runtime_file(&sb).exists());
    for l in ["ve-a0", "ve-a4", "ve-b0", "ve-gap"] {
        wait_setup(&sb.nd, l, "unmanaged", Duration::from_secs(5));
    }
    let mon = AddrMonitor::start(&sb.host).expect("ip monitor");
    assert_pairs_left_alone(&mut sb, &mon, "c", 3);

    // Stopping leaves the file: removing it would give the links back to networkd.
    assert!(w.stop().success());
    assert!(runtime_file(&sb).exists());
}

#[test]
fn with_network_manager_and_networkd_on_one_bus_both_are_handled() {
    let Some(mut sb) = NmSandbox::start("nd_both") else {
        return;
    };
    if !testbed::privileged("nd_both", Networkd::COMMANDS) {
        return;
    }
    // networkd on NetworkManager's bus, with NetworkManager's /run as its own.
    let run = sb.scratch().join("run");
    let mut nd = Networkd::on_bus(
        &sb.host,
        sb.scratch().join("nd"),
        &sb.bus_address(),
        Some(&run),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    nd.spawn().unwrap_or_else(|e| panic!("{e}"));
    let (ca, co) = (sb.netns("ca"), sb.netns("co"));
    support::nd::ve_link_up(&sb.host, "a", &ca, "10.233.0.1", "10.233.0.2");
    // The control: both managers take it, the patterns below do not match it.
    support::nd::ve_link_up(&sb.host, "o", &co, "10.233.1.1", "10.233.1.2");
    let c = sb.client();
    wait_until(
        "both managers to take ve-a and ve-o",
        Duration::from_secs(10),
        || {
            let nm = ["ve-a", "ve-o"].iter().all(|i| {
                c.device(i)
                    .is_some_and(|d| d.managed && d.state > UNMANAGED)
            });
            let networkd = ["ve-a", "ve-o"].iter().all(|i| {
                matches!(
                    nd.setup_state(i).as_deref(),
                    Some("configuring" | "configured")
                )
            });
            (nm && networkd).then_some(())
        },
    );

    let out = tool_in(&nd)
        .args(["--json", "interface-name:=ve-a", "interface-name:=ve-n"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let recs: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(recs.iter().all(|r| r["interface"] == "ve-a"), "{recs:?}");
    assert!(recs.iter().any(|r| r["manager"] == "networkd"), "{recs:?}");
    assert!(
        recs.iter().any(|r| r["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/org/freedesktop/NetworkManager/"))),
        "{recs:?}"
    );
    wait_setup(&nd, "ve-a", "unmanaged", Duration::from_secs(5));
    wait_until(
        "NetworkManager to leave ve-a",
        Duration::from_secs(5),
        || (c.state("ve-a") == Some(UNMANAGED)).then_some(()),
    );
    thread::sleep(Duration::from_millis(500));
    // The control: still both managers'.
    let d = c.device("ve-o").unwrap();
    assert!(
        d.managed && d.state > UNMANAGED,
        "NetworkManager left ve-o: {d:?}"
    );
    assert_ne!(
        nd.setup_state("ve-o").as_deref(),
        Some("unmanaged"),
        "networkd left ve-o"
    );

    // --persist for both: a new matching veth is left alone by both from the start.
    let out = tool_in(&nd)
        .arg("--persist")
        .arg("--conf-dir")
        .arg(sb.conf_dir())
        .args(["interface-name:=ve-a", "interface-name:=ve-n"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mon = AddrMonitor::start(&sb.host).expect("ip monitor");
    let cn = sb.netns("cn");
    support::nd::ve_link_up(&sb.host, "n", &cn, "10.233.2.1", "10.233.2.2");
    let start = Instant::now();
    while start.elapsed() < HOLD {
        assert_eq!(v4_addrs(&sb.host, "ve-n"), ["10.233.2.1/32"]);
        if let Some(d) = c.device("ve-n") {
            assert!(
                !d.managed || d.state == UNMANAGED,
                "NetworkManager took ve-n: {d:?}"
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(nd.setup_state("ve-n").as_deref(), Some("unmanaged"));
    assert_eq!(c.state("ve-n"), Some(UNMANAGED));
    let foreign = mon.foreign("ve-n", |a| a.starts_with("10.233."));
    assert!(foreign.is_empty(), "{foreign:?}");
    assert_ne!(nd.setup_state("ve-o").as_deref(), Some("unmanaged"));
    assert!(c.device("ve-o").is_some_and(|d| d.managed));
}

#[test]
fn networkd_dir_others_may_write_is_refused_and_a_planted_link_is_not_followed() {
    use std::os::unix::fs::PermissionsExt;
    let Some(sb) = NdSandbox::start("nd_hardening") else {
        return;
    };
    let etc = sb.nd.etc_dir();
    let persist = |sb: &NdSandbox| {
        sb.tool()
            .args(["--persist", "--networkd-dir", "/etc/systemd/network"])
            .output()
            .unwrap()
    };
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = persist(&sb);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("group- or world-writable"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 0);
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A symlink where the file goes is replaced, never written through.
    let victim = sb.nd.scratch().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let file = etc.join(nm_unmanage::NETWORK_FILE);
    std::os::unix::fs::symlink(&victim, &file).unwrap();
    let out = persist(&sb);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(!std::fs::symlink_metadata(&file)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("Unmanaged=yes"));
}

#[test]
fn a_default_watcher_on_a_networkd_only_host_keeps_networkd_off_and_waits_for_nm() {
    let Some(mut sb) = NdSandbox::start("nd_watch_default") else {
        return;
    };
    let mon = AddrMonitor::start(&sb.host).expect("ip monitor");
    let w = Watcher::spawn(tool_in(&sb.nd), &[]);
    assert!(
        w.logged(
            "systemd-networkd reloaded its configuration",
            Duration::from_secs(10)
        ),
        "the watcher did not apply networkd's file"
    );
    assert_pairs_left_alone(&mut sb, &mon, "d", 3);
    // Without NetworkManager its runtime drop-in is written all the same (it takes
    // effect when NetworkManager starts), and the watcher waits for it.
    let nm_runtime = sb.nd.scratch().join("run/NetworkManager/conf.d");
    assert!(nm_runtime.join(nm_unmanage::WATCH_DROP_IN).exists());
    assert!(w.stop().success());
    assert!(runtime_file(&sb).exists());
}
