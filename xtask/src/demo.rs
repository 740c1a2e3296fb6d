//! `cargo xtask demo`: the README's main command. The real tools, built from this
//! workspace, give containers their network inside a sandbox of network namespaces that
//! stands for a host; every step is checked, everything is torn down, and the machine's
//! own network is compared with how it was before.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::lease;
use testbed::{
    have_command, http_get_within, networkd::Networkd, HttpServer, Netns, NetworkManager, Sandbox,
    HOST_UPLINK, OUTSIDE, REQUIRE_PRIVILEGED,
};

use crate::{
    guard,
    util::{self, cargo, Result},
};

const USAGE: &str = "\
usage: cargo xtask demo [--count N] [--allocs N] [--tools DIR] [--require-full]

  --count N    containers in the pipeline sandbox (default 3)
  --allocs N   parallel allocations in the ve-alloc tour (default 300)
  --tools DIR  use the tool binaries in DIR instead of building them
  --require-full  fail, rather than skip with a note, when a part cannot run (no root,
               no iptables, no network-manager); `cargo xtask test` passes it
";

const FORWARD_PORT: u16 = 8080;
/// The IPv6 side of the sandbox: the containers' pool, the host's uplink address and
/// the outside server's (documentation range).
const POOL6: &str = "fd00:233::/64";
const HOST_UPLINK6: &str = "2001:db8::1";
const OUTSIDE6: &str = "2001:db8::2";
const TOOLS: [&str; 4] = ["ve-alloc", "ve-link", "ve-nat", "nm-unmanage"];

pub fn run(args: &[String]) -> Result {
    let mut count = 3usize;
    let mut allocs = 300usize;
    // Under `cargo xtask test` (or with the variable set) a part that cannot run is a
    // failure, not a note.
    let mut require = std::env::var_os(REQUIRE_PRIVILEGED).is_some();
    let mut tools_from = None;
    let mut it = args.iter();
    let number = |what: &str, v: Option<&String>| -> Result<usize> {
        v.and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or(format!("demo: {what} needs a positive number\n{USAGE}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--count" => count = number("--count", it.next())?,
            "--allocs" => allocs = number("--allocs", it.next())?,
            "--require-full" => require = true,
            "--tools" => {
                tools_from = Some(PathBuf::from(
                    it.next()
                        .ok_or(format!("demo: --tools needs a directory\n{USAGE}"))?,
                ))
            }
            "-h" | "--help" => {
                say!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("demo: unknown option {other:?}\n{USAGE}")),
        }
    }
    if count > 200 {
        return Err("demo: --count is at most 200".into());
    }
    let tools = match tools_from {
        Some(dir) => tools_in(dir)?,
        None => {
            let mut build = cargo();
            build.args(["build", "--quiet"]);
            for t in TOOLS {
                build.args(["-p", t]);
            }
            util::run(&mut build)?;
            tools_dir()?
        }
    };
    let scratch = std::env::temp_dir().join(format!("ve-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    guard::dir(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;

    let mut checks = Checks::default();
    let result = (|| -> Result {
        if pipeline_possible(require)? {
            let table = pipeline(&tools, &scratch, count, require, &mut checks)?;
            section("Summary");
            say!("{table}");
        }
        alloc_tour(&tools, &scratch.join("tour"), allocs, &mut checks)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    checks.add("scratch state removed", !scratch.exists());
    checks.report()
}

/// The directory of the binaries `cargo build` just made: where this xtask binary is.
fn tools_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| format!("finding xtask: {e}"))?;
    tools_in(exe.parent().ok_or("xtask has no directory")?.to_path_buf())
}

/// `dir` as an absolute path (it goes on PATH in other mount namespaces, where the
/// working directory is their root), when it holds every tool.
fn tools_in(dir: PathBuf) -> Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    for t in TOOLS {
        if !dir.join(t).is_file() {
            return Err(format!("{} was not built", dir.join(t).display()));
        }
    }
    Ok(dir)
}

/// The pipeline needs root (namespaces, links, rules), iproute2, nftables and iptables. Without
/// root it is skipped with a note, unless privileged runs are required (CI).
fn pipeline_possible(require: bool) -> Result<bool> {
    let mut missing: Vec<&str> = ["ip", "nft", "iptables", "iptables-save"]
        .into_iter()
        .filter(|c| !have_command(c))
        .collect();
    if !util::is_root() {
        missing.insert(0, "root");
    }
    if missing.is_empty() {
        return Ok(true);
    }
    let why = format!(
        "the pipeline part of the demo needs {}",
        missing.join(" and ")
    );
    if require {
        return Err(format!("{why}, and the demo must run in full"));
    }
    sayln!("SKIPPED: {why}; showing the ve-alloc tour only\n");
    Ok(false)
}

/// Named checks, printed at the end; the demo fails if any failed.
#[derive(Default)]
struct Checks(Vec<(String, bool)>);

impl Checks {
    fn add(&mut self, what: impl Into<String>, ok: bool) -> bool {
        self.0.push((what.into(), ok));
        ok
    }

    fn report(&self) -> Result {
        sayln!();
        let width = self.0.iter().map(|c| c.0.len()).max().unwrap_or(0);
        let mut failed = 0;
        for (what, ok) in &self.0 {
            sayln!("  {what:width$}  {}", if *ok { "pass" } else { "FAIL" });
            failed += usize::from(!ok);
        }
        if failed > 0 {
            return Err(format!("demo: {failed} of {} checks failed", self.0.len()));
        }
        sayln!(
            "\ndemo: all {} checks passed; sandbox and scratch state removed",
            self.0.len()
        );
        Ok(())
    }
}

fn section(title: &str) {
    sayln!("\n== {title}\n");
}

/// Print captured output indented, at most `max` lines.
fn show_output(text: &str, max: usize) {
    let n = text.lines().count();
    for (i, l) in text.lines().enumerate() {
        if i == max {
            sayln!("  ... ({n} lines in all)");
            break;
        }
        sayln!("  {l}");
    }
}

/// The sandbox host: the tools run in `host` (`ip netns exec`), with the workspace's
/// binaries first on PATH, a scratch store and, when there is one, the sandbox bus.
struct Host<'a> {
    tools: &'a Path,
    store: PathBuf,
    host: Netns,
    nm: Option<&'a NetworkManager>,
    nd: Option<&'a Networkd>,
}

impl Host<'_> {
    /// Run a shell command line in the host, shown as a terminal session; returns its
    /// exit code and stdout. Pipelines fail when any of their commands does.
    fn sh(&self, line: &str, max_lines: usize) -> Result<(i32, String)> {
        self.run(self.host.command("bash"), line, max_lines)
    }

    /// [`Host::sh`] in the sandbox managers' mount namespace (networkd's, whose /run is
    /// NetworkManager's too, else NetworkManager's), for nm-unmanage: whatever it writes
    /// under /run or /etc/NetworkManager without an explicit directory lands in scratch
    /// directories there, never in the machine's.
    fn managers_sh(&self, line: &str, max_lines: usize) -> Result<(i32, String)> {
        let c = match (self.nd, self.nm) {
            (Some(nd), _) => nd.command_in_mounts("bash"),
            (None, Some(nm)) => nm.command_in_mounts("bash"),
            (None, None) => return Err("no network manager in the sandbox".into()),
        };
        self.run(c, line, max_lines)
    }

    fn run(&self, mut c: Command, line: &str, max_lines: usize) -> Result<(i32, String)> {
        sayln!("host# {line}");
        let path = format!(
            "{}:{}",
            self.tools.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.args(["-o", "pipefail", "-c", line])
            .env("PATH", path)
            .env("VE_ALLOC_STORE", &self.store)
            .env("VE_ALLOC_CONFIG", "/dev/null")
            // ve-nat's lock in scratch, never the machine's /run/ve-nat.
            .env("VE_NAT_LOCK_DIR", self.store.with_file_name("ve-nat-lock"))
            // Its firewalld record in scratch, never the machine's /var/lib/ve-nat.
            .env(
                "VE_NAT_STATE_DIR",
                self.store.with_file_name("ve-nat-state"),
            )
            .env_remove("VE_ALLOC_POOL")
            .env_remove("VE_ALLOC_POOL6")
            .env_remove("VE_ALLOC_LAYOUT")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        // Never the machine's own bus: without the sandbox NetworkManager, a socket
        // that does not exist.
        let unreachable = self.store.with_file_name("no-bus");
        let bus = match (self.nm, self.nd) {
            (Some(nm), _) => nm.bus_address(),
            (None, Some(nd)) => nd.bus_address().to_string(),
            (None, None) => format!("unix:path={}", unreachable.display()),
        };
        c.env("DBUS_SYSTEM_BUS_ADDRESS", bus);
        let o = c
            .output()
            .map_err(|e| format!("running {line:?} in the sandbox host: {e}"))?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        show_output(&out, max_lines);
        for l in String::from_utf8_lossy(&o.stderr).lines() {
            sayln!("  (stderr) {l}");
        }
        Ok((o.status.code().unwrap_or(-1), out))
    }
}

/// One container's row in the summary table.
struct Row {
    name: String,
    iface: String,
    addresses: String,
    saw: String,
    /// The container's IPv6 address, and what the outside server saw over IPv6.
    local6: String,
    saw6: String,
    nm: String,
    ok: bool,
}

/// The whole pipeline in a sandbox; returns the summary table.
fn pipeline(
    tools: &Path,
    scratch: &Path,
    count: usize,
    require: bool,
    checks: &mut Checks,
) -> Result<String> {
    let machine_before = machine_network()?;
    let config_before = machine_config();
    let mut sandbox = Sandbox::new();
    let prefix = sandbox.prefix().to_string();
    guard::namespaces(&prefix);
    guard::dir(&NetworkManager::scratch_dir(&prefix));
    guard::dir(&Networkd::scratch_dir(&prefix));
    let table = in_sandbox(&mut sandbox, tools, scratch, count, require, checks);
    drop(sandbox);
    let table = table?;

    let left: Vec<String> = netns_list()?
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    checks.add(
        "every sandbox namespace deleted",
        left.is_empty() || {
            sayln!("left behind: {left:?}");
            false
        },
    );
    let machine_after = machine_network()?;
    checks.add(
        "the machine's own links, addresses, routes and rules are as before",
        machine_after == machine_before,
    );
    checks.add(
        "nothing written to the machine's NetworkManager or networkd configuration",
        machine_config() == config_before,
    );
    Ok(table)
}

fn in_sandbox(
    sandbox: &mut Sandbox,
    tools: &Path,
    scratch: &Path,
    count: usize,
    require: bool,
    checks: &mut Checks,
) -> Result<String> {
    let host = sandbox.netns("host");
    let out = sandbox.netns("outside");
    let containers: Vec<(String, Netns)> = (1..=count)
        .map(|i| {
            let name = format!("ct{i}");
            let ns = sandbox.netns(&name);
            (name, ns)
        })
        .collect();
    // A route back to the containers: without NAT the server would see their own
    // addresses, so "the server saw the uplink address" proves NAT did its job.
    testbed::uplink(&host, &out);
    host.ip(&[
        "addr",
        "add",
        &format!("{HOST_UPLINK6}/64"),
        "dev",
        "up0",
        "nodad",
    ]);
    out.ip(&[
        "addr",
        "add",
        &format!("{OUTSIDE6}/64"),
        "dev",
        "up1",
        "nodad",
    ]);
    out.ip(&["route", "add", POOL6, "via", HOST_UPLINK6]);
    let server_addr: SocketAddr = format!("{OUTSIDE}:80").parse().unwrap();
    let _server = HttpServer::start(&out.path(), server_addr, |peer| format!("{}\n", peer.ip()))
        .map_err(|e| format!("starting the outside HTTP server: {e}"))?;
    let server6: SocketAddr = format!("[{OUTSIDE6}]:80").parse().unwrap();
    let _server6 = HttpServer::start(&out.path(), server6, |peer| format!("{}\n", peer.ip()))
        .map_err(|e| format!("starting the outside HTTP server (IPv6): {e}"))?;

    let nm = if NetworkManager::available() {
        Some(NetworkManager::start(&host, sandbox.prefix())?)
    } else if require {
        return Err("network-manager is not installed, and the demo must run in full".into());
    } else {
        None
    };

    section("The sandbox: a host, its uplink and the outside world, all network namespaces");
    sayln!(
        "  host      {:<22} up0 {HOST_UPLINK}/24 {HOST_UPLINK6}/64, where the tools run",
        host.name()
    );
    sayln!(
        "  outside   {:<22} up1 {OUTSIDE}/24 {OUTSIDE6}/64, an HTTP server on :80 that answers with the address it saw",
        out.name()
    );
    for (name, ns) in &containers {
        sayln!(
            "  {name:<9} {:<22} a container (an empty namespace)",
            ns.name()
        );
    }
    // systemd-networkd too, when installed: on NetworkManager's bus with its /run, so
    // that one nm-unmanage sees both (or alone, on a bus of its own).
    let nd = if Networkd::available() {
        Some(match &nm {
            Some(nm) => {
                let run = nm.scratch().join("run");
                let dir = Networkd::scratch_dir(sandbox.prefix());
                let mut nd = Networkd::on_bus(&host, dir, &nm.bus_address(), Some(&run))?;
                nd.spawn()?;
                nd
            }
            None => Networkd::start(&host, sandbox.prefix())?,
        })
    } else {
        None
    };
    if nd.is_some() {
        sayln!(
            "  systemd-networkd runs in the host too, with its stock 80-container-ve.network,\n  \
             which takes every new ve-* veth (a /28, DHCP server, masquerading)"
        );
    }
    match &nm {
        Some(_) => sayln!(
            "  NetworkManager runs in the host on a private bus, and manages any new veth\n  \
             it sees (there is no udev here to keep it off): the worst case"
        ),
        None => {
            sayln!("  NOTE: network-manager is not installed: the nm-unmanage steps are skipped")
        }
    }
    let h = Host {
        tools,
        store: scratch.join("store"),
        host: host.clone(),
        nm: nm.as_ref(),
        nd: nd.as_ref(),
    };

    if nm.is_some() || nd.is_some() {
        section("nm-unmanage.service: keep the network managers off container interfaces");
        let conf = nm
            .as_ref()
            .map(|nm| format!(" --conf-dir {}", nm.conf_dir().display()));
        let (code, _) = h.managers_sh(
            &format!("nm-unmanage --persist{}", conf.unwrap_or_default()),
            5,
        )?;
        checks.add(
            "nm-unmanage --persist: drop-in and networkd's file written, managers reloaded",
            code == 0,
        );
    }

    section("ve-net@NAME.service: lease addresses, then make the veth pair");
    let mut rows = Vec::new();
    for (name, ns) in &containers {
        let (code, up) = h.sh(
            &format!(
                "ve-alloc alloc {name} --pool6 {POOL6} | ve-link up {name} --netns {} --addresses -",
                ns.name()
            ),
            10,
        )?;
        let iface = env_value(&up, lease::HOST_IFACE).unwrap_or_default();
        let mut ok = checks.add(format!("{name}: ve-alloc | ve-link up"), code == 0);
        if nm.is_some() || nd.is_some() {
            let (code, _) = h.managers_sh(
                &format!("nm-unmanage --if-running interface-name:={iface}"),
                5,
            )?;
            ok &= checks.add(format!("{name}: nm-unmanage"), code == 0);
        }
        rows.push((
            ns.clone(),
            Row {
                name: name.clone(),
                addresses: format!(
                    "{} / {}",
                    env_value(&up, lease::HOST_ADDRESS).unwrap_or_default(),
                    env_value(&up, lease::LOCAL_ADDRESS).unwrap_or_default()
                ),
                local6: env_value(&up, lease::LOCAL_ADDRESS6).unwrap_or_default(),
                saw6: String::new(),
                iface,
                saw: String::new(),
                nm: "-".into(),
                ok,
            },
        ));
    }
    let first_local = rows
        .first()
        .and_then(|(_, r)| r.addresses.split(" / ").nth(1).map(str::to_string))
        .unwrap_or_default();

    let first_local6 = rows
        .first()
        .map(|(_, r)| r.local6.clone())
        .unwrap_or_default();

    section("ve-nat.service: NAT for every container at once (IPv4 and IPv6), and a port forward to ct1");
    // The default backend: nftables here (nothing of iptables in the sandbox host).
    let forward = format!(
        "--ipv6 --forward tcp:{FORWARD_PORT}:{first_local}:80 \
         --forward tcp:{FORWARD_PORT}:[{first_local6}]:80"
    );
    let (code, _) = h.sh(&format!("ve-nat up --external up0 {forward}"), 5)?;
    checks.add("ve-nat up (once, for all containers)", code == 0);
    let (code, _) = h.sh(&format!("ve-nat check --external up0 {forward}"), 5)?;
    checks.add("ve-nat check: installed as requested", code == 0);
    let (_, tables) = h.sh("nft list tables", 5)?;
    checks.add(
        "the default backend is nftables here: table inet ve-nat",
        tables.lines().any(|l| l.trim() == "table inet ve-nat"),
    );
    h.sh("ve-alloc list --hosts", 10)?;

    section("Traffic");
    let (ct1_ns, _) = &rows[0];
    let _web = HttpServer::start(&ct1_ns.path(), "0.0.0.0:80".parse().unwrap(), |peer| {
        format!("hello from ct1, you are {}\n", peer.ip())
    })
    .map_err(|e| format!("starting the HTTP server in ct1: {e}"))?;
    let web6_addr: SocketAddr = format!("[{first_local6}]:80")
        .parse()
        .map_err(|e| format!("ct1's IPv6 address {first_local6:?}: {e}"))?;
    let _web6 = HttpServer::start(&ct1_ns.path(), web6_addr, |peer| {
        format!("hello from ct1, you are {}\n", peer.ip())
    })
    .map_err(|e| format!("starting the IPv6 HTTP server in ct1: {e}"))?;
    for (ns, row) in &mut rows {
        let got = http_get_within(&ns.path(), server_addr, Duration::from_secs(5));
        sayln!(
            "  {:<5} GET http://{server_addr}/  ->  {}",
            row.name,
            got.as_deref().map(str::trim).unwrap_or_else(|e| e.as_str())
        );
        row.saw = got
            .as_deref()
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "nothing".into());
        row.ok &= checks.add(
            format!("{}: reaches the outside through NAT", row.name),
            row.saw == HOST_UPLINK,
        );
        let got6 = http_get_within(&ns.path(), server6, Duration::from_secs(5));
        sayln!(
            "  {:<5} GET http://{server6}/  ->  {}",
            row.name,
            got6.as_deref()
                .map(str::trim)
                .unwrap_or_else(|e| e.as_str())
        );
        row.saw6 = got6
            .as_deref()
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "nothing".into());
        row.ok &= checks.add(
            format!("{}: reaches the outside through NAT over IPv6", row.name),
            row.saw6 == HOST_UPLINK6,
        );
        if let Some(nm) = &nm {
            row.nm = nm
                .device_state(&row.iface)
                .map(|s| s.split(['(', ')']).nth(1).unwrap_or(&s).to_string())
                .unwrap_or_else(|| "no device".into());
            row.ok &= checks.add(
                format!("{}: NetworkManager leaves {} alone", row.name, row.iface),
                row.nm == "unmanaged",
            );
        }
        if let Some(nd) = &nd {
            row.ok &= checks.add(
                format!("{}: systemd-networkd leaves {} alone", row.name, row.iface),
                nd.setup_state(&row.iface).as_deref() == Some("unmanaged"),
            );
        }
    }
    let fwd_addr: SocketAddr = format!("{HOST_UPLINK}:{FORWARD_PORT}").parse().unwrap();
    let got = http_get_within(&out.path(), fwd_addr, Duration::from_secs(5));
    sayln!(
        "  outside GET http://{fwd_addr}/  ->  {}",
        got.as_deref().map(str::trim).unwrap_or_else(|e| e.as_str())
    );
    let forward_ok4 = checks.add(
        format!("port forward {HOST_UPLINK}:{FORWARD_PORT} -> ct1:80 answers from outside"),
        got.as_deref()
            .is_ok_and(|s| s.trim() == format!("hello from ct1, you are {OUTSIDE}")),
    );
    let fwd6: SocketAddr = format!("[{HOST_UPLINK6}]:{FORWARD_PORT}").parse().unwrap();
    let got = http_get_within(&out.path(), fwd6, Duration::from_secs(5));
    sayln!(
        "  outside GET http://{fwd6}/  ->  {}",
        got.as_deref().map(str::trim).unwrap_or_else(|e| e.as_str())
    );
    let forward_ok = checks.add(
        format!("port forward [{HOST_UPLINK6}]:{FORWARD_PORT} -> ct1:80 answers from outside"),
        got.as_deref()
            .is_ok_and(|s| s.trim() == format!("hello from ct1, you are {OUTSIDE6}")),
    ) && forward_ok4;

    section("Teardown: ve-link down, ve-nat down, ve-alloc release");
    let names: Vec<&str> = containers.iter().map(|(n, _)| n.as_str()).collect();
    let names = names.join(" ");
    let (c1, _) = h.sh(&format!("ve-link down {names}"), 5)?;
    let (c2, _) = h.sh("ve-nat down", 5)?;
    let (c3, _) = h.sh(&format!("ve-alloc release {names}"), 5)?;
    checks.add("teardown commands succeed", c1 == 0 && c2 == 0 && c3 == 0);
    let links = host.ip(&["-br", "link"]);
    checks.add(
        "no container link left in the host",
        !links.lines().any(|l| l.starts_with("ve-")),
    );
    let (_, leases) = h.sh("ve-alloc list --json", 3)?;
    // JSON Lines of nothing is nothing; older ve-alloc printed one empty array.
    checks.add("no lease left", matches!(leases.trim(), "" | "[]"));
    let (_, rules) = h.sh(
        "{ iptables-save; ip6tables-save; nft list ruleset; } 2>/dev/null | grep -c ve-nat || true",
        3,
    )?;
    checks.add("no ve-nat rule left", rules.trim() == "0");

    let mut table = String::from(
        "CONTAINER  INTERFACE  ADDRESSES (host / container)  SERVER SAW  SAW (IPv6)   NETWORKMANAGER  RESULT\n",
    );
    for (_, r) in &rows {
        table.push_str(&format!(
            "{:<10} {:<10} {:<29} {:<11} {:<12} {:<15} {}\n",
            r.name,
            r.iface,
            r.addresses,
            r.saw,
            r.saw6,
            r.nm,
            if r.ok { "pass" } else { "FAIL" }
        ));
    }
    table.push_str(&format!(
        "port forward {HOST_UPLINK}:{FORWARD_PORT} and [{HOST_UPLINK6}]:{FORWARD_PORT} from outside -> ct1:80: {}\n",
        if forward_ok { "pass" } else { "FAIL" }
    ));
    Ok(table)
}

/// Value of `key` in `KEY=value` lines (quotes removed).
/// `key`'s value in a tool's `KEY=value` output, read by the parser the tools use.
fn env_value(text: &str, key: &str) -> Option<String> {
    common::output::parse_env(text, "output").ok()?.remove(key)
}

fn netns_list() -> Result<Vec<String>> {
    let o = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map_err(|e| format!("ip netns list: {e}"))?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// The machine's own network, read only: links, addresses, IPv4 routes, iptables rules.
fn machine_network() -> Result<String> {
    let mut s = String::new();
    for args in [
        &["-br", "link"][..],
        &["-br", "addr"],
        &["-4", "route", "show", "table", "all"],
    ] {
        let o = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        s.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    let o = Command::new("iptables-save")
        .output()
        .map_err(|e| format!("iptables-save: {e}"))?;
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        if l.starts_with('-') {
            s.push_str(l);
            s.push('\n');
        }
    }
    Ok(s)
}

/// Directories the tools would write network configuration to on a real host: the demo
/// must leave them as they were (everything it writes goes to scratch directories).
pub(crate) const MACHINE_CONFIG_DIRS: &[&str] = &[
    "/etc/NetworkManager",
    "/run/NetworkManager",
    "/etc/systemd/network",
    "/run/systemd/network",
];

/// Every file under [`MACHINE_CONFIG_DIRS`] with its size and modification time.
pub(crate) fn machine_config() -> Vec<(PathBuf, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo: Vec<PathBuf> = MACHINE_CONFIG_DIRS.iter().map(PathBuf::from).collect();
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                todo.push(e.path());
            }
            out.push((
                e.path(),
                m.size(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
            ));
        }
    }
    out.sort();
    out
}

/// ve-alloc on its own: a scratch store, many containers at once, gc, bad input.
fn alloc_tour(tools: &Path, store: &Path, count: usize, checks: &mut Checks) -> Result {
    let bin = tools.join("ve-alloc");
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.env("VE_ALLOC_STORE", store)
            .env("VE_ALLOC_CONFIG", "/dev/null")
            .env("VE_ALLOC_POOL6", "fd42:ee::/64")
            .env_remove("VE_ALLOC_POOL")
            .env_remove("VE_ALLOC_LAYOUT")
            .args(args);
        c
    };
    let show = |args: &[&str], max: usize| -> Result<(i32, String)> {
        sayln!("$ ve-alloc {}", args.join(" "));
        let o = cmd(args)
            .output()
            .map_err(|e| format!("running ve-alloc: {e}"))?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        show_output(&out, max);
        for l in String::from_utf8_lossy(&o.stderr).lines() {
            sayln!("  (stderr) {l}");
        }
        Ok((o.status.code().unwrap_or(-1), out))
    };

    section(&format!(
        "ve-alloc on its own: address pairs for containers (scratch store {})",
        store.display()
    ));
    let (code, first) = show(&["alloc", "web"], 10)?;
    checks.add(
        "alloc prints HOST_ADDRESS/LOCAL_ADDRESS (+6)",
        code == 0 && env_value(&first, lease::LOCAL_ADDRESS6).is_some(),
    );
    let (_, again) = show(&["alloc", "web"], 10)?;
    checks.add("alloc of the same name is idempotent", again == first);
    let (_, ip) = show(&["show-ip", "web"], 10)?;
    checks.add(
        "show-ip prints the container address",
        env_value(&first, lease::LOCAL_ADDRESS).as_deref() == Some(ip.trim()),
    );

    sayln!("\n# {count} containers at once (NixOS stops at 254)");
    let children: Vec<_> = (0..count)
        .map(|i| {
            // Hundreds of processes queue for the store's lock, each syncing to disk:
            // give a slow disk time rather than a lock timeout (exit 75).
            cmd(&["--wait", "120", "alloc", &format!("ct{i:04}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<_>>()
        .map_err(|e| format!("spawning ve-alloc: {e}"))?;
    let mut all_ok = true;
    for c in children {
        all_ok &= c
            .wait_with_output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    }
    let (_, json) = show(&["list", "--json"], 0)?;
    let addrs: Vec<&str> = json
        .split('"')
        .filter(|s| s.starts_with("10.233.") || s.starts_with("fd42:ee:"))
        .collect();
    let unique: HashSet<&&str> = addrs.iter().collect();
    checks.add(
        format!(
            "{count} parallel allocs succeed with {} distinct addresses",
            4 * (count + 1)
        ),
        all_ok && addrs.len() == 4 * (count + 1) && unique.len() == addrs.len(),
    );
    show(&["list"], 4)?;
    let (_, hosts) = show(&["list", "--hosts"], 2)?;
    checks.add(
        "list --hosts gives /etc/hosts lines",
        hosts.lines().any(|l| l.ends_with(" web.containers")),
    );

    sayln!("\n# crash leftovers: only web and ct0000 still exist");
    let (code, gone) = show(&["gc", "web", "ct0000"], 3)?;
    checks.add(
        format!("gc releases the {} others", count - 1),
        code == 0 && gone.lines().count() == count - 1,
    );
    let (code, _) = show(&["release", "web"], 3)?;
    let (_, list) = show(&["list"], 5)?;
    checks.add("release frees a lease", code == 0 && !list.contains("web"));
    let (code, _) = show(&["alloc", "bad/name"], 3)?;
    let (_, after) = show(&["list"], 0)?;
    checks.add(
        "bad input: exit 65, nothing changed",
        code == 65 && after == list,
    );
    Ok(())
}
