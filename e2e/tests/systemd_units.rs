//! The systemd units in examples/systemd: the right service types and ordering, and
//! every tool command line in them accepted by that tool's own argument parser (a
//! misspelt flag would otherwise only show up on a booting host).

use std::{collections::BTreeMap, fs, path::Path};

fn unit(name: &str) -> BTreeMap<String, Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/systemd")
        .join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';', '[']) {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{name}: not KEY=value: {line}"));
        keys.entry(k.to_string()).or_default().push(v.to_string());
    }
    keys
}

fn one<'a>(u: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match u.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}: expected one value, got {other:?}"),
    }
}

/// Split a command line the way systemd and sh do for these simple lines: on
/// whitespace, with '...' as one word.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// Check one Exec line: tools through their clap definitions, container-net by its
/// usage; `sh -c SCRIPT` is looked into (each command of its `||` lists and `|`
/// pipes). Returns the programs it runs.
fn check_exec(line: &str) -> Vec<String> {
    // %i as a container name, the environment as ve-nat.service sets it by default and
    // /etc/default/ve-nat's example adds to it.
    let line = line
        .trim_start_matches('-')
        .replace("%i", "web")
        .replace("${EXTERNAL}", "auto")
        .replace("$VE_NAT_ARGS", "--forward tcp:8080:10.233.9.3:80 --ipv6");
    let w = words(&line);
    if w[0] == "/bin/sh" {
        assert_eq!(w[1], "-c", "{line}");
        return w[2]
            .split('|')
            .filter(|cmd| !cmd.trim().is_empty())
            .flat_map(|cmd| check_exec(cmd.trim().trim_start_matches("exec ").trim()))
            .collect();
    }
    if w[0] == "test" {
        return vec![];
    }
    let program = w[0].rsplit('/').next().unwrap().to_string();
    let args: Vec<&str> = w
        .iter()
        .map(String::as_str)
        .take_while(|a| *a != ">")
        .collect();
    let cmd = match program.as_str() {
        "ve-alloc" => Some(ve_alloc::command()),
        "ve-link" => Some(ve_link::command()),
        "ve-nat" => Some(ve_nat::command()),
        "nm-unmanage" => Some(nm_unmanage::command()),
        "container-net" => {
            assert!(
                matches!(
                    args[1..],
                    ["up", _, _]
                        | ["down" | "destroy", _]
                        | ["down" | "destroy", _, _]
                        | ["status", _, _]
                ),
                "container-net usage: {line}"
            );
            None
        }
        "ip" => {
            assert!(
                matches!(args[1..], ["netns", "add" | "delete", "web"]),
                "{line}"
            );
            None
        }
        other => panic!("unexpected program {other} in {line}"),
    };
    if let Some(cmd) = cmd {
        if let Err(e) = cmd.try_get_matches_from(&args) {
            panic!("{line}: {e}");
        }
    }
    vec![program]
}

fn programs(u: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    u.iter()
        .filter(|(k, _)| k.starts_with("Exec"))
        .flat_map(|(_, v)| v.iter().flat_map(|l| check_exec(l)))
        .collect()
}

#[test]
fn ve_net_template_networks_a_container_before_it_starts() {
    let u = unit("ve-net@.service");
    assert_eq!(one(&u, "Type"), "oneshot");
    assert_eq!(one(&u, "RemainAfterExit"), "yes");
    assert!(one(&u, "Before").contains("systemd-nspawn@%i.service"));
    assert!(one(&u, "Wants").contains("ve-nat.service"));
    assert!(one(&u, "After").contains("ve-nat.service"));
    let p = programs(&u);
    for want in ["container-net", "ip"] {
        assert!(p.iter().any(|x| x == want), "{want} not run: {p:?}");
    }
    assert!(one(&u, "ExecStart").contains("container-net up %i /run/netns/%i"));
    assert!(one(&u, "ExecStop").contains("container-net down %i"));
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/container-net")
        .is_file());
}

#[test]
fn ve_nat_unit_watches_and_removes_nat_once() {
    let u = unit("ve-nat.service");
    // Ready once the rules are in; it stays to put them back when they vanish.
    assert_eq!(one(&u, "Type"), "notify");
    assert!(!u.contains_key("RemainAfterExit"));
    assert_eq!(programs(&u), ["ve-nat", "ve-nat"]);
    assert!(one(&u, "ExecStart").contains(" watch --external ${EXTERNAL} "));
    // `down` only once the watcher is gone: an ExecStop would race it.
    assert!(!u.contains_key("ExecStop"));
    assert!(one(&u, "ExecStopPost").ends_with(" down"));
    assert_eq!(one(&u, "Restart"), "on-failure");
    // The uplink is the default route's interface unless /etc/default/ve-nat names it,
    // so it starts once the network (and with it the default route) is up.
    let env = &u["Environment"];
    assert!(env.iter().any(|e| e == "EXTERNAL=auto"), "{env:?}");
    assert!(one(&u, "Wants").contains("network-online.target"));
    assert!(u["After"]
        .iter()
        .any(|a| a.contains("network-online.target")));
    assert!(
        !u.contains_key("Before"),
        "network.target comes before online"
    );
}

#[test]
fn nm_unmanage_unit_is_ready_before_network_manager_starts() {
    let u = unit("nm-unmanage.service");
    // Ready (READY=1) only once --watch has written its runtime drop-in, and
    // NetworkManager waits for that: it never sees a veth without the drop-in.
    assert_eq!(one(&u, "Type"), "notify");
    assert_eq!(one(&u, "After"), "dbus.service");
    // The same for systemd-networkd and its file (`--manager all`: written even before
    // networkd runs).
    assert_eq!(
        one(&u, "Before"),
        "NetworkManager.service systemd-networkd.service"
    );
    assert_eq!(programs(&u), ["nm-unmanage"]);
    assert_eq!(
        one(&u, "ExecStart"),
        "/usr/local/bin/nm-unmanage --watch --manager all"
    );
    assert!(
        !u.contains_key("ExecStartPre"),
        "--persist is the alternative, not a step"
    );
    assert_eq!(one(&u, "Restart"), "on-failure");
    assert_eq!(one(&u, "WantedBy"), "multi-user.target");
}

#[test]
fn ve_routes_unit_pipes_the_watch_into_ve_link() {
    let u = unit("ve-routes.service");
    assert_eq!(one(&u, "Type"), "simple");
    assert_eq!(one(&u, "Restart"), "always");
    assert_eq!(programs(&u), ["ve-alloc", "ve-link"]);
    let exec = one(&u, "ExecStart");
    assert!(exec.contains("routes --watch |"), "{exec}");
    assert!(exec.contains("--follow"), "{exec}");
}

#[test]
fn a_misspelt_flag_is_caught() {
    let r = std::panic::catch_unwind(|| check_exec("/usr/local/bin/ve-nat up --externl eth0"));
    assert!(r.is_err());
}
