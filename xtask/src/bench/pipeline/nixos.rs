//! The NixOS `ip` sequence timed the way NixOS runs it (the `containers.<name>` module
//! with `privateNetwork`, `hostAddress` and `localAddress`).
//!
//! What NixOS pays per container:
//! - host side, in the host namespace, from the `container@` unit's script: the veth
//!   (here `ip link add ... peer name eth0 netns NS`; systemd-nspawn makes it over
//!   netlink itself, so this row counts one process start more than NixOS pays), the
//!   host end up, the host address, the route to the container;
//! - container side, from the container's own init, a shell that is already running in
//!   the container namespace: lo up, eth0 up, the address, the route to the host, the
//!   default route, one `ip` process each, with no namespace switch and no copy of the
//!   mount namespace (which `ip -n` and `ip netns exec` make for every command).
//!
//! So the container side is run by one `sh` started (untimed, and waited for) in the
//! container namespace before the clock starts; the clock covers the host-side
//! processes and the shell running the five `ip` commands, nothing of the shell's own
//! start (the container boots its init anyway). Both ways this errs in NixOS's favour:
//! the host-side commands are started by the bench directly, where NixOS starts a bash
//! for the unit's script first, and the container's shell is dash where NixOS's init
//! is bash (a bigger process to fork). Teardown: `ip link del` of the host end.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use super::system::{ip, timed, Ctr, Host, Parts, System};
use crate::util::Result;

pub struct Nixos;

pub const KEY: &str = "nixos";

impl System for Nixos {
    fn key(&self) -> &'static str {
        KEY
    }

    fn label(&self) -> &'static str {
        "NixOS `ip` sequence (container side from its init's shell)"
    }

    fn setup(&self, _h: &Host, c: &Ctr) -> Result<Duration> {
        let mut init = Shell::start(&c.ns)?;
        let t = Instant::now();
        for args in host_commands(c) {
            timed(&mut ip(&args), None)?;
        }
        init.run(&shell_script(c))?;
        let d = t.elapsed();
        init.exit()?;
        Ok(d)
    }

    fn teardown(&self, _h: &Host, c: &Ctr) -> Result<Parts> {
        teardown(c)
    }
}

/// `ip link del` of the host end: the peer goes with it.
pub fn teardown(c: &Ctr) -> Result<Parts> {
    Ok(vec![(
        "teardown",
        timed(&mut ip(&["link", "del", &c.host_dev()]), None)?,
    )])
}

/// The host side's `ip` commands (arguments after `ip`).
pub fn host_commands(c: &Ctr) -> Vec<Vec<String>> {
    let dev = c.host_dev();
    [
        vec![
            "link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns", &c.ns,
        ],
        vec!["link", "set", &dev, "up"],
        vec!["addr", "add", &format!("{}/32", c.host_addr), "dev", &dev],
        vec!["route", "add", &format!("{}/32", c.local_addr), "dev", &dev],
    ]
    .iter()
    .map(|v| v.iter().map(|s| s.to_string()).collect())
    .collect()
}

/// The container side's `ip` commands (arguments after `ip`).
pub fn container_commands(c: &Ctr) -> Vec<Vec<String>> {
    let (h, l) = (&c.host_addr, &c.local_addr);
    [
        vec!["link", "set", "lo", "up"],
        vec!["link", "set", "eth0", "up"],
        vec!["addr", "add", &format!("{l}/32"), "dev", "eth0"],
        vec!["route", "add", &format!("{h}/32"), "dev", "eth0"],
        vec!["route", "add", "default", "via", h, "dev", "eth0"],
    ]
    .iter()
    .map(|v| v.iter().map(|s| s.to_string()).collect())
    .collect()
}

/// What the container's init runs: the container-side commands, stopping at the first
/// that fails.
pub fn shell_script(c: &Ctr) -> String {
    container_commands(c)
        .iter()
        .map(|args| {
            let line = args.join(" ");
            format!("ip {line} || {{ echo \"failed: ip {line}\"; exit 1; }}\n")
        })
        .collect()
}

/// A shell running in a container namespace, as the container's init does: it runs
/// what it is sent and answers `ok`.
struct Shell {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Shell {
    /// Started, and answering, before anything is timed.
    fn start(ns: &str) -> Result<Shell> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "sh"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting a shell in {ns}: {e}"))?;
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let mut sh = Shell { child, stdin, out };
        sh.run("")?;
        Ok(sh)
    }

    /// Run `script`, then wait for its `ok`.
    fn run(&mut self, script: &str) -> Result {
        let stdin = self.stdin.as_mut().ok_or("the shell was closed")?;
        stdin
            .write_all(format!("{script}echo ok\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("writing to the container's shell: {e}"))?;
        let mut line = String::new();
        self.out
            .read_line(&mut line)
            .map_err(|e| format!("reading from the container's shell: {e}"))?;
        match line.trim() {
            "ok" => Ok(()),
            "" => Err("the container's shell exited".into()),
            other => Err(other.to_string()),
        }
    }

    fn exit(mut self) -> Result {
        drop(self.stdin.take());
        let st = self.child.wait().map_err(|e| e.to_string())?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("the container's shell: {st}"))
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_nine_ip_commands_split_as_nixos_runs_them() {
        let c = Ctr::new("p", 0);
        let host: Vec<String> = host_commands(&c).iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            host,
            [
                "link add ve-c0 type veth peer name eth0 netns p-c0",
                "link set ve-c0 up",
                "addr add 10.64.0.5/32 dev ve-c0",
                "route add 10.64.0.6/32 dev ve-c0",
            ]
        );
        let script = shell_script(&c);
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(
            lines[4],
            "ip route add default via 10.64.0.5 dev eth0 || \
             { echo \"failed: ip route add default via 10.64.0.5 dev eth0\"; exit 1; }"
        );
        // Nothing on the container side switches namespaces per command.
        assert!(!script.contains(" -n ") && !script.contains("netns"));
    }
}
