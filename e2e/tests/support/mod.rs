//! A sandbox host for running examples/container-net as a user would: a `host`
//! namespace where the script and the tools run (`ip netns exec`, with a scratch
//! directory over /run), an uplink to an `out` namespace with an HTTP server that
//! answers with the peer address it saw, a scratch lease store, and containers that are
//! processes in namespaces of their own.

#![allow(dead_code)]

pub mod boot;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use testbed::{run_ok, wait_for, HttpServer, Netns, NetworkManager, Sandbox, TempDir};

pub use testbed::{HOST_UPLINK, OUTSIDE};
pub const SERVER_PORT: u16 = 80;

/// The directory of the workspace's binaries: the test executable lives in its `deps/`.
pub fn tools_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    for tool in ["ve-alloc", "ve-link", "ve-nat", "nm-unmanage"] {
        assert!(
            dir.join(tool).is_file(),
            "{} is missing: run `cargo build --workspace --bins` first (cargo xtask test does)",
            dir.join(tool).display()
        );
    }
    dir
}

/// examples/container-net.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/container-net")
}

pub struct Host {
    pub host: Netns,
    pub out: Netns,
    store: TempDir,
    tools: PathBuf,
    bus: String,
    /// Bound over /run for everything run in the host: NetworkManager's own scratch
    /// /run when there is one (so `nm-unmanage --runtime` writes the drop-in where the
    /// sandbox NetworkManager reads it), else a scratch directory; never the machine's.
    run: PathBuf,
    _run_scratch: Option<TempDir>,
    /// Put first on PATH by `command` when set (a fault-injecting wrapper).
    pub path_first: Option<PathBuf>,
    pub nm: Option<NetworkManager>,
    /// A sandboxed systemd-networkd ([`Host::with_networkd`]).
    pub nd: Option<testbed::networkd::Networkd>,
    server: Option<HttpServer>,
    // Dropped last: the namespaces go, with every process still in them.
    sandbox: Sandbox,
}

impl Host {
    /// The sandbox, the uplink, the outside server, and NetworkManager on a private bus
    /// when `with_nm` (otherwise the bus address points nowhere, so nm-unmanage
    /// --if-running has nothing to do and the machine's own bus is never used).
    pub fn new(with_nm: bool) -> Host {
        let tools = tools_dir();
        let mut sandbox = Sandbox::new();
        let host = sandbox.netns("host");
        let out = sandbox.netns("out");
        // Without NAT the server would see container addresses: the negative control.
        testbed::uplink(&host, &out);
        let server = HttpServer::start(&out.path(), outside(SERVER_PORT), |peer| {
            peer.ip().to_string()
        })
        .expect("starting the outside HTTP server");
        let store = TempDir::new("e2e-store");
        // No drop-in beforehand: container-net must keep NetworkManager off by itself.
        let (nm, bus, run, run_scratch) = if with_nm {
            let nm =
                NetworkManager::start(&host, sandbox.prefix()).unwrap_or_else(|e| panic!("{e}"));
            let bus = nm.bus_address();
            // The testbed binds DIR/run over NetworkManager's /run, next to DIR/conf.d.
            let run = nm.conf_dir().with_file_name("run");
            (Some(nm), bus, run, None)
        } else {
            let scratch = TempDir::new("e2e-run");
            let bus = format!("unix:path={}/no-bus", store.path().display());
            (None, bus, scratch.path().to_path_buf(), Some(scratch))
        };
        Host {
            host,
            out,
            store,
            tools,
            bus,
            run,
            _run_scratch: run_scratch,
            path_first: None,
            nm,
            nd: None,
            server: Some(server),
            sandbox,
        }
    }

    /// The same with a sandboxed systemd-networkd (its stock 80-container-ve.network,
    /// a bus of its own, no NetworkManager): the host's commands see networkd's /run.
    pub fn with_networkd() -> Host {
        let mut h = Host::new(false);
        let tag = format!("e2e-{}", h.sandbox.prefix());
        let nd =
            testbed::networkd::Networkd::start(&h.host, &tag).unwrap_or_else(|e| panic!("{e}"));
        h.bus = nd.bus_address().to_string();
        h.run = nd.scratch().join("run");
        h.nd = Some(nd);
        h
    }

    /// The directory the host's commands see as /run.
    pub fn run_dir(&self) -> &Path {
        &self.run
    }

    /// `ip netns exec HOST PROGRAM`, with the host's scratch /run (bound in the private
    /// mount namespace `ip netns exec` makes), the workspace's tools first on PATH, the
    /// scratch store and the sandbox bus.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut path = format!(
            "{}:{}",
            self.tools.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        if let Some(first) = &self.path_first {
            path = format!("{}:{path}", first.display());
        }
        let mut c = self.host.command("sh");
        c.args(["-c", r#"mount --bind "$0" /run && exec "$@""#])
            .arg(&self.run)
            .arg(program.as_ref())
            .env("PATH", path)
            .env("VE_ALLOC_STORE", self.store.path())
            .env("VE_ALLOC_CONFIG", "/dev/null")
            .env_remove("VE_ALLOC_POOL")
            .env_remove("VE_ALLOC_POOL6")
            .env_remove("VE_ALLOC_LAYOUT")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    /// `container-net ARGS` in the host namespace.
    pub fn script(&self) -> Command {
        self.command(script())
    }

    /// A tool from the workspace, in the host namespace; must succeed; its stdout.
    pub fn tool(&self, tool: &str, args: &[&str]) -> String {
        let out = run_ok(self.command(tool).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A tool, success or not.
    pub fn tool_output(&self, tool: &str, args: &[&str]) -> Output {
        self.command(tool).args(args).output().expect("spawning")
    }

    /// What the sandbox host looks like: links, IPv4 addresses, routes of both
    /// families, iptables rules (without counters) and the leases. Forwarding sysctls
    /// are left out: ve-nat turns them on and leaves them on, by design.
    pub fn snapshot(&self) -> String {
        let mut s = String::new();
        for args in [
            &["-br", "link"][..],
            &["-4", "-o", "addr"],
            &["-4", "route", "show", "table", "all"],
            &["-6", "route", "show"],
        ] {
            s.push_str(&self.host.ip(args));
        }
        for save in ["iptables-save", "ip6tables-save"] {
            let out = run_ok(&mut self.command(save));
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                // `:CHAIN POLICY [packets:bytes]`: the counters move with any traffic.
                let line = match line.find(" [") {
                    Some(i) if line.starts_with(':') => &line[..i],
                    _ => line,
                };
                // Rules and chains only: iptables-nft creates a table (with its
                // built-in chains, policy ACCEPT) on first use and never deletes it,
                // so an empty table is the same as none.
                let builtin_accept = line.starts_with(':')
                    && line.ends_with(" ACCEPT")
                    && line[1..].starts_with(|c: char| c.is_ascii_uppercase());
                if line.starts_with(['#', '*']) || line == "COMMIT" || builtin_accept {
                    continue;
                }
                s.push_str(save);
                s.push_str(": ");
                s.push_str(line);
                s.push('\n');
            }
        }
        s.push_str(&self.tool("ve-alloc", &["list", "--json"]));
        s
    }

    /// The host's interface names.
    pub fn links(&self) -> Vec<String> {
        self.host
            .ip(&["-br", "link"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// The names that have a lease (`list --json` is JSON Lines: one lease a line).
    pub fn leases(&self) -> Vec<String> {
        self.tool("ve-alloc", &["list", "--json"])
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object a line");
                v["name"].as_str().unwrap_or_default().to_string()
            })
            .collect()
    }

    /// A container: a process in new network, mount and PID namespaces, started from
    /// the host namespace.
    pub fn container(&self, name: &str) -> Container {
        let mut child = self
            .host
            .command("unshare")
            .args(["--net", "--mount", "--pid", "--fork", "--kill-child"])
            .args(["sh", "-c", "echo ready; exec sleep infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning unshare");
        let stdout = child.stdout.take().unwrap();
        // Owned from here on, so a failed start below still kills it.
        let container = Container {
            name: name.to_string(),
            child: Some(child),
        };
        // Printed by the forked child: the namespaces exist by then.
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading from the container");
        assert_eq!(line, "ready\n", "container {name} did not start");
        container
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.server = None;
        self.nm = None;
        self.nd = None;
    }
}

/// `OUTSIDE:port`.
pub fn outside(port: u16) -> SocketAddr {
    SocketAddr::new(OUTSIDE.parse().unwrap(), port)
}

/// `HOST_UPLINK:port`.
pub fn uplink(port: u16) -> SocketAddr {
    SocketAddr::new(HOST_UPLINK.parse().unwrap(), port)
}

/// A running container; killed (and with it its namespaces) on drop.
pub struct Container {
    pub name: String,
    child: Option<Child>,
}

impl Container {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("container running").id()
    }

    /// Its network namespace, as a user passes it: `/proc/PID/ns/net`.
    pub fn netns(&self) -> String {
        format!("/proc/{}/ns/net", self.pid())
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(self.netns())
    }

    /// `ip ARGS` inside the container's network namespace; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run_ok(
            Command::new("nsenter")
                .arg(format!("--net={}", self.netns()))
                .arg("ip")
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stop the container: its namespaces are gone when this returns.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run all `commands` at once; their outputs in order.
pub fn parallel(commands: Vec<Command>) -> Vec<Output> {
    let children: Vec<Child> = commands
        .into_iter()
        .map(|mut c| {
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning")
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("waiting"))
        .collect()
}

/// Value of `key` in `KEY=value` lines.
/// `key`'s value in a tool's `KEY=value` output (a `common::lease` key), read by the
/// parser the tools use.
pub fn env_value(text: &str, key: &str) -> Option<String> {
    common::output::parse_env(text, "output").ok()?.remove(key)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Poll until `f` holds, or panic after `secs` seconds.
pub fn eventually(what: &str, secs: u64, f: impl FnMut() -> bool) {
    wait_for(what, Duration::from_secs(secs), f).unwrap_or_else(|e| panic!("{e}"));
}

/// The environment variable that picks the fault [`Faults`] injects.
pub const FAULT: &str = "VE_E2E_FAULT";

/// A directory with an `nm-unmanage` that runs the real one, except that for the
/// per-veth call (`interface-name:=IFACE`) it injects the fault named by [`FAULT`]:
/// `oneshot-fails` (exit 71 without calling it), `skip-oneshot` (exit 0 without calling
/// it), `flush-after` (call it, then remove IFACE's IPv4 addresses, as NetworkManager's DHCP
/// profile did). Put it first on PATH ([`Host::path_first`]).
pub struct Faults(TempDir);

impl Faults {
    pub fn new(h: &Host) -> Faults {
        let dir = TempDir::new("e2e-faults");
        let real = h.tools.join("nm-unmanage");
        let wrapper = format!(
            r#"#!/bin/sh
for last; do :; done
case ${{last:-}} in
interface-name:=*)
    case ${{{FAULT}:-}} in
    oneshot-fails) echo "nm-unmanage: error: injected failure" >&2; exit 71 ;;
    skip-oneshot) exit 0 ;;
    flush-after) '{real}' "$@" || exit $?; exec ip -4 addr flush dev "${{last#interface-name:=}}" ;;
    esac ;;
esac
exec '{real}' "$@"
"#,
            real = real.display()
        );
        let path = dir.path().join("nm-unmanage");
        std::fs::write(&path, wrapper).expect("writing the wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the wrapper");
        Faults(dir)
    }

    pub fn dir(&self) -> &Path {
        self.0.path()
    }
}
