//! The issue-10 acceptance test: NetworkManager (no-udev mode, the worst case) must not
//! take the veths ve-link makes, nor their addresses, with `--watch` alone or with
//! `--runtime` before each `ve-link up`; and without either it does (the negative
//! control, so that the test can fail). The tool runs with its default directories in
//! the sandbox's private mount namespace, so these tests also show that NetworkManager
//! reads /run/NetworkManager/conf.d.

mod support;

use std::{
    os::unix::net::UnixDatagram,
    thread,
    time::{Duration, Instant},
};

use support::{wait_until, DhcpListener, NmSandbox, Watcher};
use testbed::Netns;

const PAIRS: usize = 10;
/// How long every pair is watched after the last one was made: NetworkManager takes a
/// new veth within ~0.3 s and its DHCP client sends at once.
const HOLD: Duration = Duration::from_millis(2000);

/// What NetworkManager did to one pair.
#[derive(Debug)]
struct Fate {
    iface: String,
    /// The host address went away at some point of the hold.
    lost_address: bool,
    /// NetworkManager's device state at the end (10: unmanaged).
    state: Option<u32>,
    /// DHCP DISCOVERs seen in the container.
    discovers: usize,
}

impl Fate {
    fn left_alone(&self) -> bool {
        !self.lost_address
            && self.state == Some(nm_unmanage::STATE_UNMANAGED)
            && self.discovers == 0
    }
}

fn host_address(i: usize) -> String {
    format!("10.233.{i}.1")
}

/// Make PAIRS pairs with ve-link (`before_each` runs before each `ve-link up`), then
/// watch them for HOLD. Container `i` is called `{prefix}{i}`.
fn plumb_and_watch(
    sb: &mut NmSandbox,
    prefix: &str,
    mut before_each: impl FnMut(&NmSandbox),
) -> Vec<Fate> {
    let names: Vec<String> = (0..PAIRS).map(|i| format!("{prefix}{i}")).collect();
    let ctrs: Vec<Netns> = names.iter().map(|n| sb.netns(n)).collect();
    let dhcp: Vec<DhcpListener> = ctrs.iter().map(DhcpListener::start).collect();
    for (i, ctr) in ctrs.iter().enumerate() {
        before_each(sb);
        sb.ve_link_up(&names[i], ctr, &host_address(i), &format!("10.233.{i}.2"));
    }
    let mut lost = [false; PAIRS];
    let start = Instant::now();
    while start.elapsed() < HOLD {
        let links = sb.host.ip_json(&["-4", "addr", "show"]);
        for (i, lost) in lost.iter_mut().enumerate() {
            let iface = format!("ve-{}", names[i]);
            let has = links.as_array().unwrap().iter().any(|l| {
                l["ifname"] == iface.as_str()
                    && l["addr_info"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|a| a["local"] == host_address(i).as_str()))
            });
            *lost |= !has;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let c = sb.client();
    (0..PAIRS)
        .map(|i| {
            let iface = format!("ve-{}", names[i]);
            Fate {
                state: c.state(&iface),
                iface,
                lost_address: lost[i],
                discovers: dhcp[i].count(),
            }
        })
        .collect()
}

fn assert_all_left_alone(fates: &[Fate], how: &str) {
    let taken: Vec<&Fate> = fates.iter().filter(|f| !f.left_alone()).collect();
    let names: Vec<&str> = taken.iter().map(|f| f.iface.as_str()).collect();
    assert!(
        taken.is_empty(),
        "{how}: NetworkManager took {names:?}: {taken:#?}"
    );
}

#[test]
fn negative_control_network_manager_takes_ve_links_veths() {
    let Some(mut sb) = NmSandbox::start("addr_control") else {
        return;
    };
    support::ve_link();
    // Every pair becomes NetworkManager's (what the tests below assert against), and most
    // lose their address to its DHCP profile. Which ones do depends on whether
    // NetworkManager looks before or after ve-link set the address, so a second round
    // (new names) is made when the first happened to hurt none.
    let mut hurt = 0;
    for round in 0..2 {
        let fates = plumb_and_watch(&mut sb, &format!("r{round}c"), |_| {});
        for f in &fates {
            eprintln!("control: {f:?}");
            let taken = f.state.is_some_and(|s| s > nm_unmanage::STATE_UNMANAGED);
            assert!(taken, "{} not taken without the tool: {f:?}", f.iface);
        }
        hurt += fates
            .iter()
            .filter(|f| f.lost_address || f.discovers > 0)
            .count();
        if hurt > 0 {
            return;
        }
    }
    panic!("NetworkManager took every pair but hurt none: the tests prove less than they say");
}

#[test]
fn watch_alone_keeps_the_addresses_of_ten_new_veths_and_removes_its_drop_in() {
    let Some(mut sb) = NmSandbox::start("addr_watch") else {
        return;
    };
    support::ve_link();
    let notify_path = sb.scratch().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut cmd = sb.tool_in_private_mounts();
    cmd.env("NOTIFY_SOCKET", &notify_path);
    // No --runtime-dir: the default, /run/NetworkManager/conf.d, as NetworkManager sees it.
    let w = Watcher::spawn(cmd, &[]);
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 from the watcher");
    assert_eq!(&buf[..n], b"READY=1");
    let file = sb.runtime_dir().join(nm_unmanage::WATCH_DROP_IN);
    let text = std::fs::read_to_string(&file).expect("the drop-in is there when READY=1 is");
    assert!(
        text.contains("unmanaged-devices+=interface-name:ve-*;"),
        "{text}"
    );
    assert!(!sb.conf_dir().join(nm_unmanage::DROP_IN).exists());

    let fates = plumb_and_watch(&mut sb, "c", |_| {});
    assert_all_left_alone(&fates, "with --watch");
    let status = w.stop();
    assert!(status.success(), "watcher exit on SIGTERM: {status}");
    assert!(!file.exists(), "the drop-in outlived the watcher");
    // Without the drop-in (reloaded away), the Managed=false the watcher set still keeps
    // the running containers' veths out of NetworkManager's hands.
    thread::sleep(Duration::from_millis(1000));
    let c = sb.client();
    for (i, f) in fates.iter().enumerate() {
        assert_eq!(
            c.state(&f.iface),
            Some(nm_unmanage::STATE_UNMANAGED),
            "{}",
            f.iface
        );
        let addrs = sb.host.ip_json(&["-4", "addr", "show", "dev", &f.iface]);
        let text = addrs.to_string();
        assert!(
            text.contains(&host_address(i)),
            "{} lost its address: {text}",
            f.iface
        );
    }
}

#[test]
fn runtime_before_each_ve_link_up_keeps_their_addresses() {
    let Some(mut sb) = NmSandbox::start("addr_runtime") else {
        return;
    };
    support::ve_link();
    let file = sb.runtime_dir().join(nm_unmanage::RUNTIME_DROP_IN);
    let mut runs = Vec::new();
    let fates = plumb_and_watch(&mut sb, "c", |sb| {
        // As examples/container-net does before `ve-link up`.
        let out = sb
            .tool_in_private_mounts()
            .args(["--if-running", "--runtime", "-v"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        runs.push(err);
    });
    assert_all_left_alone(&fates, "with --runtime");
    // Written and reloaded once; the other runs found it in place and did not reload.
    assert!(
        runs[0].contains("wrote") && runs[0].contains("reloaded"),
        "{}",
        runs[0]
    );
    for r in &runs[1..] {
        assert!(
            r.contains("is up to date") && !r.contains("reloaded"),
            "{r}"
        );
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("[device-nm-unmanage-runtime]"), "{text}");

    let out = sb
        .tool_in_private_mounts()
        .args(["--remove", "--runtime"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!file.exists());
    // Without the drop-in NetworkManager takes a new one again.
    let ctr = sb.netns("late");
    sb.ve_link_up("late", &ctr, "10.233.99.1", "10.233.99.2");
    let c = sb.client();
    wait_until(
        "NetworkManager to take ve-late",
        Duration::from_secs(10),
        || {
            c.state("ve-late")
                .filter(|s| *s > nm_unmanage::STATE_UNMANAGED)
        },
    );
}
