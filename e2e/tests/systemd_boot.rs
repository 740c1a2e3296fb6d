//! examples/systemd run by systemd itself: a Debian rootfs booted with systemd as PID 1
//! (`systemd-nspawn -b`, in a network namespace of its own) is the "host"; the release
//! binaries, examples/container-net and the units are installed in it as the README
//! says (/usr/local/bin, /etc/systemd/system, enabled), next to a real NetworkManager.
//! Checked: the boot order, `ve-net@web` start, restart and stop, the `ve-nat` watcher
//! putting back a rule removed by hand, its restart, and
//! `systemd-analyze verify` of every unit.

mod support;

use std::{collections::BTreeMap, path::PathBuf, thread, time::Duration};

use support::{boot, env_value, script};
use testbed::privileged;

const TOOLS: [&str; 4] = ["ve-alloc", "ve-link", "ve-nat", "nm-unmanage"];
const UNITS: [&str; 3] = ["nm-unmanage.service", "ve-nat.service", "ve-net@.service"];

/// The booted host's uplink: an interface holding the default route, so that
/// `ve-nat up --external auto` has one to find. A bridge without ports (the kernel
/// here has no dummy driver): no packet leaves it, and the namespace is the
/// container's own anyway.
const UPLINK_UNIT: &str = "\
[Unit]
Description=Test uplink: an interface with the default route
Wants=network-pre.target
Before=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/ip link add up0 type bridge
ExecStart=/usr/bin/ip addr add 192.0.2.1/24 dev up0
ExecStart=/usr/bin/ip link set up0 up
ExecStart=/usr/bin/ip route add default via 192.0.2.2 dev up0 onlink

[Install]
WantedBy=multi-user.target
";

/// target/release: the binaries `cargo xtask test` builds before the tests.
fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    let dir = target.join("release");
    for tool in TOOLS {
        assert!(
            dir.join(tool).is_file(),
            "{} is missing: run `cargo build --release --bins` first (cargo xtask test does)",
            dir.join(tool).display()
        );
    }
    dir
}

/// `systemctl show` of `units`: per unit id, its properties.
fn show(host: &boot::Booted, units: &[&str]) -> BTreeMap<String, BTreeMap<String, String>> {
    let text = host.sh(&format!(
        "systemctl show -p Id -p ActiveState -p InactiveExitTimestampMonotonic \
         -p ActiveEnterTimestampMonotonic {}",
        units.join(" ")
    ));
    let mut out = BTreeMap::new();
    for block in text.split("\n\n") {
        let props: BTreeMap<String, String> = block
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(id) = props.get("Id") {
            out.insert(id.clone(), props);
        }
    }
    out
}

fn monotonic(props: &BTreeMap<String, String>, key: &str) -> u64 {
    let v: u64 = props
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in {props:?}"));
    assert_ne!(v, 0, "{key} unset: {props:?}");
    v
}

#[test]
fn the_units_run_under_systemd_on_a_booted_host() {
    if !privileged(
        "the_units_run_under_systemd...",
        &[
            "debootstrap",
            "systemd-nspawn",
            "systemctl",
            "unshare",
            "nsenter",
            "mount",
        ],
    ) {
        return;
    }
    let release = release_dir();
    let rootfs = boot::rootfs();
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut install = boot::Install::default();
    for tool in TOOLS {
        install.copy(&release.join(tool), &format!("/usr/local/bin/{tool}"));
    }
    install.copy(&script(), "/usr/local/bin/container-net");
    for unit in UNITS {
        install.copy(
            &examples.join("systemd").join(unit),
            &format!("/etc/systemd/system/{unit}"),
        );
    }
    install.file(
        "/etc/systemd/system/ve-test-uplink.service",
        UPLINK_UNIT.into(),
        0o644,
    );
    // As the README says: enable the two once-per-boot units. NetworkManager too (the
    // minbase install leaves it disabled), as on a desktop or server that runs it.
    for unit in [
        "ve-test-uplink.service",
        "NetworkManager.service",
        "nm-unmanage.service",
        "ve-nat.service",
    ] {
        install.enable(unit);
    }
    let host = boot::Booted::start(&rootfs, &install);
    host.wait_booted();

    // Boot order: nm-unmanage ready (its drop-in written) before NetworkManager even
    // starts; ve-nat once the network is online, with the uplink in place.
    let units = show(
        &host,
        &[
            "nm-unmanage.service",
            "NetworkManager.service",
            "ve-test-uplink.service",
            "network-online.target",
            "ve-nat.service",
        ],
    );
    for (id, props) in &units {
        assert_eq!(props["ActiveState"], "active", "{id}: {props:?}");
    }
    let at = |unit: &str, key: &str| monotonic(&units[unit], key);
    assert!(
        at("nm-unmanage.service", "ActiveEnterTimestampMonotonic")
            <= at("NetworkManager.service", "InactiveExitTimestampMonotonic"),
        "NetworkManager started before nm-unmanage was ready: {units:?}"
    );
    for before in ["ve-test-uplink.service", "network-online.target"] {
        assert!(
            at(before, "ActiveEnterTimestampMonotonic")
                <= at("ve-nat.service", "InactiveExitTimestampMonotonic"),
            "ve-nat started before {before}: {units:?}"
        );
    }
    // nm-unmanage --watch's runtime drop-in, the only one so far.
    let drop_in = host.sh("grep -l unmanaged-devices /run/NetworkManager/conf.d/*.conf");
    let drop_in = drop_in.trim().to_string();
    assert!(!drop_in.is_empty(), "no runtime drop-in");
    host.sh("ve-nat check --external auto");

    // ve-net@web plumbs a namespace; NetworkManager (no udev in a container: it would
    // manage every new veth) leaves the addresses alone.
    host.sh("systemctl start ve-net@web");
    let env = host.sh("cat /run/ve-net/web/env");
    let iface = env_value(&env, "HOST_IFACE").expect("HOST_IFACE");
    let host_address = env_value(&env, "HOST_ADDRESS").expect("HOST_ADDRESS");
    let local_address = env_value(&env, "LOCAL_ADDRESS").expect("LOCAL_ADDRESS");
    let lease = host.sh("ve-alloc show web");
    assert_eq!(
        env_value(&lease, "HOST_ADDRESS").as_ref(),
        Some(&host_address),
        "{lease}"
    );
    // Until NetworkManager has seen the veth, "it left it alone" proves nothing.
    let seen_by_nm = || {
        let show = format!("nmcli -g GENERAL.STATE device show {iface}");
        for _ in 0..100 {
            if host.sh_output(&show).status.success() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("NetworkManager never saw {iface}");
    };
    let plumbed_once = || {
        let status = host.sh("container-net status web /run/netns/web");
        assert_eq!(
            env_value(&status, "STATE").as_deref(),
            Some("up"),
            "{status}"
        );
        let addrs = host.sh(&format!("ip -4 -o addr show dev {iface}"));
        assert!(addrs.contains(&format!("{host_address}/32")), "{addrs}");
        let inside = host.sh("ip -n web -4 -o addr show dev eth0");
        assert!(inside.contains(&format!("{local_address}/32")), "{inside}");
        let state = host.sh(&format!("nmcli -g GENERAL.STATE device show {iface}"));
        assert!(
            state.starts_with("10 "),
            "NetworkManager: {iface} is {state}"
        );
    };
    // NetworkManager acts within milliseconds of a new device (DHCP, removing addresses):
    // still as built when it has seen the veth and for two seconds after.
    let plumbed = || {
        seen_by_nm();
        for _ in 0..3 {
            plumbed_once();
            thread::sleep(Duration::from_secs(1));
        }
    };
    plumbed();

    // restart: the same addresses.
    host.sh("systemctl restart ve-net@web");
    assert_eq!(host.sh("cat /run/ve-net/web/env"), env, "restart moved web");
    plumbed();

    // stop: no link, no namespace; the lease stays for the next start.
    host.sh("systemctl stop ve-net@web");
    let o = host.sh_output(&format!("ip link show dev {iface}"));
    assert!(!o.status.success(), "{iface} left after stop");
    host.sh("test ! -e /run/netns/web");
    host.sh("ve-alloc show web");

    // The watcher puts back a rule removed by hand (within a second; 5 s allowed).
    host.sh("r=$(iptables -t nat -S ve-nat-post | grep -m1 '^-A ') && \
         eval \"iptables -t nat -D ${r#-A }\"");
    host.sh(
        "for i in $(seq 50); do ve-nat check --external auto 2>/dev/null && exit 0; \
         sleep 0.1; done; ve-nat check --external auto",
    );
    // A restart (how a changed /etc/default/ve-nat takes effect) comes back complete.
    host.sh("systemctl restart ve-nat");
    host.sh("systemctl is-active ve-nat");
    host.sh("ve-nat check --external auto");

    // Every unit as systemd itself reads it. (--man=no: the rootfs has no man.)
    let verify = host.sh_output(
        "systemd-analyze verify --man=no /etc/systemd/system/nm-unmanage.service \
         /etc/systemd/system/ve-nat.service /etc/systemd/system/ve-net@web.service",
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // Warnings too: anything it says about a unit is a finding.
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}): {said}",
        verify.status
    );

    // Stopping the once-per-boot units takes their work away.
    host.sh("systemctl stop ve-nat nm-unmanage");
    let rules = host.sh("iptables-save");
    assert!(
        !rules.contains("ve-nat"),
        "ve-nat rules after stop:\n{rules}"
    );
    // (container-net's own drop-in, written by `up`, stays for the boot.)
    host.sh(&format!("test ! -e {drop_in}"));
}
