//! testbed's systemd-networkd in throwaway namespaces, for nm-unmanage's tests: the tool
//! runs in the daemon's mount namespace (where /run/systemd/network and
//! /etc/systemd/network are scratch directories), and an address monitor records every
//! address that ever appears on the host's links.

use std::{path::PathBuf, process::Command, thread, time::Duration};

use testbed::{networkd::Networkd, privileged, Netns, Sandbox};

use super::{ve_link, wait_until, BIN};

/// A sandboxed networkd on a bus of its own, no NetworkManager.
pub struct NdSandbox {
    pub host: Netns,
    pub nd: Networkd,
    // Dropped last: deletes the namespaces with anything still inside.
    sandbox: Sandbox,
}

impl NdSandbox {
    /// Gate on privileges, then start the bus and networkd. `None` when skipped.
    pub fn start(test: &str) -> Option<NdSandbox> {
        let mut needs = vec!["ip"];
        needs.extend(Networkd::COMMANDS);
        if !privileged(test, &needs) {
            return None;
        }
        let mut sandbox = Sandbox::new();
        let host = sandbox.netns("host");
        let nd = Networkd::start(&host, &format!("nmu-{}", sandbox.prefix()))
            .unwrap_or_else(|e| panic!("{e}"));
        Some(NdSandbox { host, nd, sandbox })
    }

    pub fn netns(&mut self, role: &str) -> Netns {
        self.sandbox.netns(role)
    }

    /// The tool in networkd's namespaces, the bus in its environment.
    pub fn tool(&self) -> Command {
        tool_in(&self.nd)
    }

    /// `ve-link up NAME` into `ctr` with host address `host` (a /32) and container
    /// address `local`.
    pub fn ve_link_up(&self, name: &str, ctr: &Netns, host: &str, local: &str) {
        ve_link_up(&self.host, name, ctr, host, local)
    }

    /// /run/systemd/network inside the sandbox.
    pub fn run_dir(&self) -> PathBuf {
        self.nd.scratch().join("run/systemd/network")
    }
}

impl Drop for NdSandbox {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- networkd log (tail) ---\n{}", self.nd.log_tail());
        }
    }
}

/// nm-unmanage in `nd`'s mount and network namespaces.
pub fn tool_in(nd: &Networkd) -> Command {
    let mut c = nd.command_in_mounts(BIN);
    c.env_remove("RUST_LOG")
        .env_remove(nm_unmanage::RUNTIME_DIR_ENV)
        .env_remove(nm_unmanage::TIMEOUT_ENV);
    c
}

pub fn ve_link_up(host: &Netns, name: &str, ctr: &Netns, addr: &str, local: &str) {
    let out = host
        .command(ve_link().to_str().unwrap())
        .args(["up", name, "--netns", ctr.name()])
        .args(["--host-address", addr, "--local-address", local, "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ve-link up {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The IPv4 addresses (`A.B.C.D/N`) on `ifname` in `ns` now.
pub fn v4_addrs(ns: &Netns, ifname: &str) -> Vec<String> {
    let v = ns.ip_json(&["-4", "addr", "show", "dev", ifname]);
    let mut out = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if let (Some(ip), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                out.push(format!("{ip}/{len}"));
            }
        }
    }
    out
}

/// Whether networkd has added an address of its own to `ifname`: one from its
/// `Address=0.0.0.0/28` pool (192.168.0.0/16) or IPv4LL.
pub fn has_networkd_address(ns: &Netns, ifname: &str) -> bool {
    v4_addrs(ns, ifname)
        .iter()
        .any(|a| a.starts_with("192.168.") || a.starts_with("169.254."))
}

/// Wait until networkctl shows `ifname` in SETUP state `state`.
pub fn wait_setup(nd: &Networkd, ifname: &str, state: &str, timeout: Duration) {
    wait_until(
        &format!("networkctl to show {ifname} {state}"),
        timeout,
        || (nd.setup_state(ifname).as_deref() == Some(state)).then_some(()),
    );
}
