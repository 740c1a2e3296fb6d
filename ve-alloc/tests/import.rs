//! `ve-alloc import` from NixOS container conf files: a host migrating from
//! `nixos-container` never gets a duplicate address.

use std::{path::Path, process::Command};

use testbed::TempDir;

fn va(store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ve-alloc"))
        .env("VE_ALLOC_STORE", store)
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .env_remove("VE_ALLOC_POOL")
        .env_remove("VE_ALLOC_POOL6")
        .args(args)
        .output()
        .unwrap()
}

fn ok(store: &Path, args: &[&str]) -> String {
    let o = va(store, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// What NixOS writes to /etc/nixos-containers/NAME.conf (the parts that matter here).
fn conf(dir: &Path, name: &str, body: &str) {
    let text = format!(
        "SYSTEM_PATH=/nix/var/nix/profiles/per-container/{name}/system\n\
         PRIVATE_NETWORK=1\nHOST_BRIDGE=\n{body}INTERFACES=\"\"\nMACVLANS=\"\"\n\
         EXTRA_NSPAWN_FLAGS=\"--bind /a --bind /b\"\n"
    );
    std::fs::write(dir.join(format!("{name}.conf")), text).unwrap();
}

#[test]
fn imports_nixos_confs_and_never_hands_their_addresses_out() {
    let tmp = TempDir::new("va-import");
    let (confs, store) = (tmp.path().join("confs"), tmp.path().join("store"));
    std::fs::create_dir(&confs).unwrap();
    conf(
        &confs,
        "web",
        "HOST_ADDRESS=10.233.1.1\nLOCAL_ADDRESS=10.233.1.2\n",
    );
    // With a prefix: nixos-container's own scan misses these; we count them.
    conf(
        &confs,
        "db",
        "HOST_ADDRESS=10.233.0.2/24\nLOCAL_ADDRESS=10.233.0.3/24\n",
    );
    conf(
        &confs,
        "six",
        "HOST_ADDRESS6=fc00::1\nLOCAL_ADDRESS6=fc00::2/7\n",
    );
    // Shares the host's network: nothing to import.
    std::fs::write(confs.join("hostnet.conf"), "PRIVATE_NETWORK=0\n").unwrap();
    std::fs::write(confs.join("README"), "not a conf\n").unwrap();

    let out = ok(&store, &["import", confs.to_str().unwrap(), "--json"]);
    // JSON Lines: one object per line.
    let v: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = v.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["db", "six", "web"]);
    assert_eq!(ok(&store, &["show-ip", "web"]), "10.233.1.2\n");
    assert_eq!(ok(&store, &["show-ip", "db"]), "10.233.0.3\n");
    assert_eq!(ok(&store, &["show-ip", "six"]), "fc00::2\n");
    assert_eq!(v[0]["static"], true);

    // New containers avoid the imported addresses, in both layouts.
    assert_eq!(
        ok(&store, &["alloc", "new"]),
        "HOST_ADDRESS=10.233.0.4\nLOCAL_ADDRESS=10.233.0.5\n"
    );
    assert_eq!(
        ok(&store, &["--layout", "nixos", "alloc", "new2"]),
        "HOST_ADDRESS=10.233.2.1\nLOCAL_ADDRESS=10.233.2.2\n"
    );
    // Imported leases survive gc: they are not ours to forget.
    assert_eq!(ok(&store, &["gc", "new2"]), "new\n");

    // Importing again is a no-op.
    let before = ok(&store, &["list", "--json"]);
    ok(&store, &["import", confs.to_str().unwrap()]);
    assert_eq!(ok(&store, &["list", "--json"]), before);
}

#[test]
fn a_bad_or_conflicting_file_fails_the_whole_import() {
    let tmp = TempDir::new("va-import-bad");
    let (confs, store) = (tmp.path().join("confs"), tmp.path().join("store"));
    std::fs::create_dir(&confs).unwrap();
    conf(
        &confs,
        "a",
        "HOST_ADDRESS=10.233.1.1\nLOCAL_ADDRESS=10.233.1.2\n",
    );
    conf(
        &confs,
        "b",
        "HOST_ADDRESS=10.233.1.1\nLOCAL_ADDRESS=10.233.1.3\n",
    );
    let o = va(&store, &["import", confs.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("10.233.1.1 is already leased to a"), "{err}");
    assert_eq!(ok(&store, &["list", "--json"]), "");

    conf(
        &confs,
        "b",
        "HOST_ADDRESS=10.233.2.1\nLOCAL_ADDRESS=10.233.2\n",
    );
    let o = va(&store, &["import", confs.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&o.stderr).contains("b.conf"));
    assert_eq!(ok(&store, &["list", "--json"]), "");

    let o = va(&store, &["import", "/nonexistent-dir"]);
    assert_eq!(o.status.code(), Some(66));
}

#[test]
fn unusable_addresses_and_prefixes_fail_the_whole_import() {
    let tmp = TempDir::new("va-import-unusable");
    let (confs, store) = (tmp.path().join("confs"), tmp.path().join("store"));
    std::fs::create_dir(&confs).unwrap();
    conf(
        &confs,
        "a-good",
        "HOST_ADDRESS=10.233.1.1\nLOCAL_ADDRESS=10.233.1.2\n",
    );
    for (body, why) in [
        (
            "HOST_ADDRESS=0.0.0.0\nLOCAL_ADDRESS=10.233.2.2\n",
            "0.0.0.0",
        ),
        (
            "HOST_ADDRESS=10.233.2.1\nLOCAL_ADDRESS=255.255.255.255\n",
            "broadcast",
        ),
        (
            "HOST_ADDRESS=10.233.2.1\nLOCAL_ADDRESS=10.233.2.255/24\n",
            "broadcast",
        ),
        (
            "HOST_ADDRESS=127.0.0.1\nLOCAL_ADDRESS=10.233.2.2\n",
            "loopback",
        ),
        (
            "HOST_ADDRESS=10.233.2.1\nLOCAL_ADDRESS=224.0.0.1\n",
            "multicast",
        ),
        (
            "HOST_ADDRESS6=ff02::1\nLOCAL_ADDRESS6=fc00::2\n",
            "multicast",
        ),
        (
            "HOST_ADDRESS=10.233.2.1/200\nLOCAL_ADDRESS=10.233.2.2\n",
            "/200",
        ),
        // Host equal to local was exit 70 (a UNIQUE constraint of the store).
        (
            "HOST_ADDRESS=10.233.2.1\nLOCAL_ADDRESS=10.233.2.1\n",
            "must differ",
        ),
        (
            "HOST_ADDRESS6=fc00::1\nLOCAL_ADDRESS6=fc00::1/64\n",
            "must differ",
        ),
    ] {
        conf(&confs, "b-bad", body);
        let o = va(&store, &["import", confs.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(65), "{body}: {err}");
        assert!(err.contains(why), "{body}: {err}");
        assert_eq!(
            ok(&store, &["list", "--json"]),
            "",
            "{body}: all or nothing"
        );
    }
    std::fs::remove_file(confs.join("b-bad.conf")).unwrap();
    ok(&store, &["import", confs.to_str().unwrap()]);
    assert_eq!(ok(&store, &["show-ip", "a-good"]), "10.233.1.2\n");
}

#[test]
fn an_imported_name_whose_interface_name_is_leased_is_refused() {
    let tmp = TempDir::new("va-import-ifname");
    let (confs, store) = (tmp.path().join("confs"), tmp.path().join("store"));
    std::fs::create_dir(&confs).unwrap();
    // These two shorten to the same interface name.
    ok(&store, &["alloc", "abc10eeb871e86d1243"]);
    conf(
        &confs,
        "abcf567240c36315443",
        "HOST_ADDRESS=10.233.1.1\nLOCAL_ADDRESS=10.233.1.2\n",
    );
    let o = va(&store, &["import", confs.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&o.stderr).contains("interface name"));
}
