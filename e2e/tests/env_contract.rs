//! The env-file contract (`common::lease`) as the scripts and docs use it: every
//! `KEY=value` key that examples/container-net reads, and every key the units and
//! READMEs name, is one the tools define. A renamed key fails here, not on a host.

use std::{fs, path::Path};

use common::lease::{ADDRESS_KEYS, ALL_KEYS, LINK_KEYS};

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Words that look like keys and are not: ve-nat's forward syntax
/// (`PROTO:HOST_PORT[-END]:ADDR:PORT[-END]`).
const NOT_KEYS: [&str; 1] = ["HOST_PORT"];

/// The words of `text` that look like a contract key: `HOST_...` or `LOCAL_...`.
fn key_like(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.starts_with("HOST_") || w.starts_with("LOCAL_"))
        .filter(|w| !NOT_KEYS.contains(w))
        .collect()
}

/// The KEY of each `env_value KEY ...` call in a shell script.
fn env_value_keys(script: &str) -> Vec<&str> {
    script
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split("env_value ").skip(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect()
}

#[test]
fn container_net_reads_only_keys_that_ve_link_up_prints() {
    let script = read("examples/container-net");
    let keys = env_value_keys(&script);
    assert!(
        keys.contains(&common::lease::HOST_IFACE),
        "container-net no longer reads HOST_IFACE? {keys:?}"
    );
    for k in &keys {
        assert!(
            LINK_KEYS.contains(k) || ADDRESS_KEYS.contains(k),
            "examples/container-net reads {k}, which ve-link up never prints (common::lease)"
        );
    }
    for k in key_like(&script) {
        assert!(ALL_KEYS.contains(&k), "examples/container-net names {k}");
    }
}

#[test]
fn units_and_readmes_name_only_defined_keys() {
    let mut seen = 0;
    for rel in [
        "examples/systemd/ve-net@.service",
        "README.md",
        "ve-link/README.md",
        "ve-nat/README.md",
        "nm-unmanage/README.md",
    ] {
        for k in key_like(&read(rel)) {
            seen += 1;
            assert!(
                ALL_KEYS.contains(&k),
                "{rel} names {k}, which is not a key of common::lease"
            );
        }
    }
    assert!(seen > 0, "no key found at all: the scan is broken");
}

#[test]
fn the_scanners_find_what_they_look_for() {
    let s = "# env_value NOT_ME x\nx=$(env_value HOST_IFACE \"$out\")\ny=$(env_value LOCAL_ADDRESS6 \"$o\")";
    assert_eq!(env_value_keys(s), ["HOST_IFACE", "LOCAL_ADDRESS6"]);
    assert_eq!(
        key_like("(HOST_BRIDGE, LOCAL_X=1)"),
        ["HOST_BRIDGE", "LOCAL_X"]
    );
}

/// The README's table of the contract has a row for every key.
#[test]
fn the_readme_contract_table_covers_every_key() {
    let readme = read("README.md");
    let section = readme
        .split("\n### The env-file contract\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README.md has a `### The env-file contract` section");
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
    for k in ALL_KEYS {
        assert!(
            rows.iter().any(|r| r.contains(&format!("`{k}`"))),
            "README.md's env-file contract table lacks {k}"
        );
    }
}

/// Every `--help` (each subcommand's too) names only defined keys.
#[test]
fn help_texts_name_only_defined_keys() {
    fn walk(cmd: &mut clap::Command, path: String, seen: &mut usize) {
        let help = cmd.render_long_help().to_string();
        for k in key_like(&help) {
            *seen += 1;
            assert!(ALL_KEYS.contains(&k), "{path} --help names {k}");
        }
        for sub in cmd.get_subcommands_mut() {
            let p = format!("{path} {}", sub.get_name());
            walk(sub, p, seen);
        }
    }
    let mut seen = 0;
    for (name, mut cmd) in [
        ("ve-alloc", ve_alloc::command()),
        ("ve-link", ve_link::command()),
        ("ve-nat", ve_nat::command()),
        ("nm-unmanage", nm_unmanage::command()),
    ] {
        cmd.build();
        walk(&mut cmd, name.to_string(), &mut seen);
    }
    assert!(seen > 0, "no key in any help: the scan is broken");
}
