//! `cargo xtask bench nm`: how fast `nm-unmanage` keeps a real NetworkManager off a
//! re-created container veth, and how many DHCP DISCOVERs get out first; with `--watch`
//! and with `--persist`, next to a baseline with no tool at all. Then the same for a
//! real systemd-networkd (testbed's, standalone on a bus of its own): creation to
//! "unmanaged" in networkctl with `--watch`, and every address networkd ever puts on a
//! `ve-*` link with `--watch` and `--persist`.
//!
//! Everything runs in throwaway namespaces: the sandboxed NetworkManager of
//! `testbed` (the one the tests and the demo use: a private bus, read-only /sys,
//! scratch dirs over /run and /var/lib/NetworkManager) in a `host` namespace, the
//! container end in a `ctr` namespace
//! where a UDP :67 listener (this program again, re-executed inside it) counts
//! DISCOVERs.

use std::{
    io::{BufRead, BufReader, Write},
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use nm_unmanage::NETWORK_FILE;
use testbed::{
    have_command,
    networkd::{AddrMonitor, Networkd},
    Netns, NetworkManager, Sandbox,
};

use crate::util::{self, Result};

const USAGE: &str = "\
usage: cargo xtask bench nm [--cycles N] [--tools DIR] [--manager nm|networkd|all]

Re-creates a veth `ve-test` N times (default 100) next to a sandboxed NetworkManager:
first 10 times with no tool (when does the first DHCP DISCOVER leave?), then N times
with `nm-unmanage --watch` (creation -> Managed=false, DISCOVERs leaked), then N times
after `nm-unmanage --persist` (devices left unmanaged, DISCOVERs leaked). Then next to a
sandboxed systemd-networkd: 10 times with no tool (when does its first address come?),
N times with `--watch` (creation -> \"unmanaged\" in networkctl), N times after
`--persist`; every address networkd adds to a ve-* link is counted. Needs root.
--tools DIR uses DIR/nm-unmanage instead of building a release one; --manager picks
the managers (default all).";

/// How long NetworkManager gets to (not) take a new device over: it activates ~0.25 s
/// after a veth appears.
const HOLD: Duration = Duration::from_millis(400);

/// What to run: the benchmark with N cycles, the DISCOVER counter (its inner re-run),
/// or `None` for `--help`; unknown options are refused.
pub(super) enum Opts {
    Cycles(usize, Option<PathBuf>, Managers),
    Listener,
}

/// Which managers' benchmarks run.
#[derive(Clone, Copy)]
pub(super) struct Managers {
    nm: bool,
    networkd: bool,
}

pub(super) fn parse(args: &[String]) -> Result<Option<Opts>> {
    let mut cycles = 100usize;
    let mut tools = None;
    let mut managers = Managers {
        nm: true,
        networkd: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--udp67-listener" => return Ok(Some(Opts::Listener)),
            "--cycles" => {
                cycles = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--cycles needs a positive number")?
            }
            "--tools" => tools = Some(PathBuf::from(it.next().ok_or("--tools needs a directory")?)),
            "--manager" => {
                let (nm, networkd) = match it.next().map(String::as_str) {
                    Some("nm") => (true, false),
                    Some("networkd") => (false, true),
                    Some("all") => (true, true),
                    _ => return Err("--manager needs nm, networkd or all".into()),
                };
                managers = Managers { nm, networkd };
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("bench nm: unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Some(Opts::Cycles(cycles, tools, managers)))
}

pub fn run(args: &[String]) -> Result {
    let (cycles, tools, managers) = match parse(args)? {
        None => {
            sayln!("{USAGE}");
            return Ok(());
        }
        Some(Opts::Listener) => return udp67_listener(),
        Some(Opts::Cycles(n, tools, m)) => (n, tools, m),
    };
    if !util::is_root() {
        return Err("bench nm needs root (network namespaces, NetworkManager)".into());
    }
    let nm_cmds = if managers.nm {
        NetworkManager::COMMANDS
    } else {
        &[]
    };
    let nd_cmds = if managers.networkd {
        Networkd::COMMANDS
    } else {
        &[]
    };
    if let Some(cmd) = ["ip", "nsenter"]
        .iter()
        .chain(nm_cmds)
        .chain(nd_cmds)
        .find(|c| !have_command(c))
    {
        return Err(format!(
            "bench nm needs `{cmd}` (run `cargo xtask test` once to install the test packages)"
        ));
    }
    let bin = match tools {
        // Absolute: it runs in NetworkManager's mount namespace, cwd its root.
        Some(dir) => dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .join("nm-unmanage"),
        None => {
            util::run(util::cargo().args(["build", "--release", "--quiet", "-p", "nm-unmanage"]))?;
            target_dir().join("release/nm-unmanage")
        }
    };

    let config_before = crate::demo::machine_config();
    if managers.nm {
        bench_nm(&bin, cycles)?;
    }
    if managers.networkd {
        bench_networkd(&bin, cycles)?;
    }
    if crate::demo::machine_config() != config_before {
        return Err(format!(
            "bench nm changed files under {}: it must write only the sandbox's",
            crate::demo::MACHINE_CONFIG_DIRS.join(", ")
        ));
    }
    Ok(())
}

/// The NetworkManager part.
fn bench_nm(bin: &Path, cycles: usize) -> Result {
    let lab = Lab::start()?;
    let version = Command::new("NetworkManager")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    sayln!(
        "nm-unmanage bench: veth re-creations next to NetworkManager {version} on a private bus"
    );

    // Baseline: nothing keeps NetworkManager off.
    let base_n = cycles.min(10);
    let mut first = Vec::new();
    for _ in 0..base_n {
        let t0 = Instant::now();
        lab.add_veth("ve-test")?;
        let deadline = t0 + Duration::from_secs(3);
        while Instant::now() < deadline && lab.discovers_since(t0).is_empty() {
            thread::sleep(Duration::from_millis(2));
        }
        if let Some(t) = lab.discovers_since(t0).first() {
            first.push(*t - t0);
        }
        lab.del_veth("ve-test")?;
    }
    sayln!(
        "baseline, no tool ({base_n} re-creations): a DHCP DISCOVER left in {} of {base_n}; \
         the first one {} after link creation",
        first.len(),
        stats(&first)
    );

    // --watch.
    lab.add_veth("vb-ready")?;
    let watcher = Watcher::start(lab.nm.command_in_mounts(bin), bin)?;
    watcher
        .next_for("vb-ready", Duration::from_secs(10))
        .ok_or("the watcher did not start")?;
    lab.del_veth("vb-ready")?;
    let (mut from_creation, mut from_signal) = (Vec::new(), Vec::new());
    let (mut leaked, mut leaky_cycles, mut late, mut missed) = (0, 0, 0, 0);
    for _ in 0..cycles {
        let t0 = Instant::now();
        lab.add_veth("ve-test")?;
        match watcher.next_for("ve-test", Duration::from_secs(5)) {
            Some((acked, line)) => {
                from_creation.push(acked - t0);
                if let Some(us) = json_u64(&line, "after_signal_us") {
                    from_signal.push(Duration::from_micros(us));
                }
                thread::sleep(HOLD);
                let seen = lab.discovers_since(t0);
                leaked += seen.len();
                leaky_cycles += usize::from(!seen.is_empty());
                late += seen
                    .iter()
                    .filter(|t| **t > acked + Duration::from_millis(20))
                    .count();
            }
            None => missed += 1,
        }
        lab.del_veth("ve-test")?;
    }
    drop(watcher);
    sayln!(
        "--watch ({cycles} re-creations): link creation -> Managed=false {}; \
         NetworkManager's announcement -> Managed=false {}; \
         DHCP DISCOVERs that got out first: {leaked} (in {leaky_cycles} of {cycles}); \
         DISCOVERs after Managed=false: {late}; devices missed: {missed}",
        stats(&from_creation),
        stats(&from_signal)
    );

    // --persist, with the sandbox's drop-in directory, in NetworkManager's namespaces.
    let out = lab
        .nm
        .command_in_mounts(bin)
        .args(["--persist", "--conf-dir"])
        .arg(lab.nm.conf_dir())
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "nm-unmanage --persist failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (mut leaked, mut managed) = (0, 0);
    for _ in 0..cycles {
        let t0 = Instant::now();
        lab.add_veth("ve-test")?;
        thread::sleep(HOLD);
        leaked += lab.discovers_since(t0).len();
        if !lab.nm.is_unmanaged("ve-test") {
            managed += 1;
        }
        lab.del_veth("ve-test")?;
    }
    sayln!(
        "--persist ({cycles} re-creations, no watcher): left unmanaged {} of {cycles}; \
         DHCP DISCOVERs that got out: {leaked}",
        cycles - managed
    );
    drop(lab);
    Ok(())
}

/// How long a link is watched for networkd's addresses: it adds its first 25-105 ms
/// after the link appears.
const ND_HOLD: Duration = Duration::from_millis(300);

/// The systemd-networkd part: a host namespace with testbed's networkd on a bus of its
/// own, veths into a container namespace, `ip monitor address` recording every address.
fn bench_networkd(bin: &Path, cycles: usize) -> Result {
    let mut sandbox = Sandbox::new();
    crate::guard::namespaces(sandbox.prefix());
    let tag = format!("bench-{}", sandbox.prefix());
    crate::guard::dir(&Networkd::scratch_dir(&tag));
    let host = sandbox.netns("host");
    let ctr = sandbox.netns("ctr");
    let nd = Networkd::start(&host, &tag)?;
    let version = Command::new(testbed::networkd::DAEMON)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    sayln!("networkd: veth re-creations next to systemd-networkd ({version}) on a private bus");
    let mon = AddrMonitor::start(&host).map_err(|e| format!("ip monitor: {e}"))?;
    crate::guard::pid(mon.pid());
    let lab = NdLab { host, ctr, nd };

    // Baseline: networkd's first address on a new ve-test.
    let base_n = cycles.min(10);
    let mut first = Vec::new();
    for _ in 0..base_n {
        let t0 = Instant::now();
        let mark = mon.mark();
        lab.add_veth()?;
        let deadline = t0 + Duration::from_secs(3);
        while Instant::now() < deadline && mon.foreign_since(mark, "ve-", |_| false).is_empty() {
            thread::sleep(Duration::from_millis(1));
        }
        if let Some((t, _)) = mon.foreign_since(mark, "ve-", |_| false).first() {
            first.push(*t - t0);
        }
        lab.del_veth()?;
    }
    sayln!(
        "baseline, no tool ({base_n} re-creations): networkd put an address on ve-test in {} \
         of {base_n}; the first one {} after link creation",
        first.len(),
        stats(&first)
    );

    // --watch.
    let mut cmd = lab.nd.command_in_mounts(bin);
    cmd.args(["--manager", "networkd", "-v"])
        .stderr(Stdio::piped());
    let watcher = Watcher::start(cmd, bin)?;
    watcher.wait_logged(
        "systemd-networkd reloaded its configuration",
        Duration::from_secs(10),
    )?;
    let mark = mon.mark();
    let (mut to_unmanaged, mut missed, mut not_in_networkctl) = (Vec::new(), 0, 0);
    for _ in 0..cycles {
        let t0 = Instant::now();
        lab.add_veth()?;
        match lab.wait_unmanaged(t0 + Duration::from_secs(5))? {
            Some(t) => to_unmanaged.push(t - t0),
            None => missed += 1,
        }
        thread::sleep(ND_HOLD);
        if lab.nd.setup_state("ve-test").as_deref() != Some("unmanaged") {
            not_in_networkctl += 1;
        }
        lab.del_veth()?;
    }
    let watch_addrs = mon.foreign_since(mark, "ve-", |_| false).len();
    drop(watcher);
    sayln!(
        "--watch ({cycles} re-creations): link creation -> \"unmanaged\" in networkctl {}; \
         never unmanaged: {missed}; not unmanaged in networkctl after {} ms: \
         {not_in_networkctl}; networkd addresses seen on ve-*: {watch_addrs}",
        stats(&to_unmanaged),
        ND_HOLD.as_millis()
    );

    // --persist (the file in networkd's /etc/systemd/network, the sandbox's), no watcher.
    let file = lab.nd.etc_dir().join(NETWORK_FILE);
    let _ = std::fs::remove_file(&file);
    let out = lab
        .nd
        .command_in_mounts(bin)
        .args([
            "--persist",
            "--manager",
            "networkd",
            "--networkd-dir",
            "/etc/systemd/network",
        ])
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "nm-unmanage --persist failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mark = mon.mark();
    let mut unmanaged = 0;
    for _ in 0..cycles {
        lab.add_veth()?;
        thread::sleep(ND_HOLD);
        if lab.nd.setup_state("ve-test").as_deref() == Some("unmanaged") {
            unmanaged += 1;
        }
        lab.del_veth()?;
    }
    sayln!(
        "--persist ({cycles} re-creations, no watcher): \"unmanaged\" in networkctl {unmanaged} \
         of {cycles}; networkd addresses seen on ve-*: {}",
        mon.foreign_since(mark, "ve-", |_| false).len()
    );
    Ok(())
}

/// The networkd sandbox's host and container namespaces.
struct NdLab {
    host: Netns,
    ctr: Netns,
    nd: Networkd,
}

impl NdLab {
    fn add_veth(&self) -> Result {
        let ctr = self.ctr.name();
        ip(
            &self.host,
            &[
                "link", "add", "ve-test", "type", "veth", "peer", "name", "eth0", "netns", ctr,
            ],
        )?;
        ip(&self.ctr, &["link", "set", "eth0", "up"])?;
        ip(&self.host, &["link", "set", "ve-test", "up"])
    }

    fn del_veth(&self) -> Result {
        ip(&self.host, &["link", "del", "ve-test"])?;
        thread::sleep(Duration::from_millis(50));
        Ok(())
    }

    /// When networkd's state for ve-test first says unmanaged (polled every 0.5 ms in
    /// /run/systemd/netif/links/IFINDEX, the file `networkctl list` shows as SETUP);
    /// `None` by `deadline`.
    fn wait_unmanaged(&self, deadline: Instant) -> Result<Option<Instant>> {
        let v = self.host.ip_json(&["link", "show", "ve-test"]);
        let ifindex = v[0]["ifindex"].as_u64().ok_or("ve-test has no ifindex")?;
        let state = self
            .nd
            .scratch()
            .join(format!("run/systemd/netif/links/{ifindex}"));
        while Instant::now() < deadline {
            if std::fs::read_to_string(&state).is_ok_and(|t| t.contains("ADMIN_STATE=unmanaged")) {
                return Ok(Some(Instant::now()));
            }
            thread::sleep(Duration::from_micros(500));
        }
        Ok(None)
    }
}

fn ip(ns: &Netns, args: &[&str]) -> Result {
    let out = Command::new("ip")
        .args(["-n", ns.name()])
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip -n {} {}: {}",
            ns.name(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `median X ms, worst Y ms` of `v`.
fn stats(v: &[Duration]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let mut v = v.to_vec();
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.2} ms, worst {:.2} ms",
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}

fn json_u64(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root().join("target"))
}

/// Run inside the container namespace: print one line per DHCP DISCOVER on UDP 67.
fn udp67_listener() -> Result {
    let sock = UdpSocket::bind("0.0.0.0:67").map_err(|e| format!("binding UDP 67: {e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
        if is_discover(&buf[..n]) && writeln!(out, "D").and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
}

/// A BOOTP request with DHCP option 53 (message type) = 1 (DISCOVER).
fn is_discover(p: &[u8]) -> bool {
    if p.len() < 240 || p[0] != 1 || p[236..240] != [99, 130, 83, 99] {
        return false;
    }
    let mut i = 240;
    while i + 1 < p.len() {
        match p[i] {
            0 => i += 1,
            255 => return false,
            53 => return p[i + 1] >= 1 && p.get(i + 2) == Some(&1),
            _ => i += 2 + p[i + 1] as usize,
        }
    }
    false
}

/// The sandbox: a host namespace with `testbed`'s NetworkManager on a private
/// bus, a container namespace with the DISCOVER listener; all of it torn down on drop.
struct Lab {
    // Dropped in this order, after `drop` has stopped the listener: NetworkManager and
    // its bus, then the namespaces (with anything left in them).
    listener: Child,
    nm: NetworkManager,
    _sandbox: Sandbox,
    host: Netns,
    ctr: Netns,
    discovers: Arc<Mutex<Vec<Instant>>>,
}

impl Lab {
    fn start() -> Result<Lab> {
        let mut sandbox = Sandbox::new();
        crate::guard::namespaces(sandbox.prefix());
        crate::guard::dir(&NetworkManager::scratch_dir(sandbox.prefix()));
        let host = sandbox.netns("host");
        let ctr = sandbox.netns("ctr");
        let nm = NetworkManager::start(&host, sandbox.prefix())?;
        // The DISCOVER counter, inside the container namespace.
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut listener = ctr
            .command(&exe.to_string_lossy())
            .args(["bench", "nm", "--udp67-listener"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the DHCP listener: {e}"))?;
        let out = listener
            .stdout
            .take()
            .ok_or("the DHCP listener has no stdout")?;
        let lab = Lab {
            listener,
            nm,
            _sandbox: sandbox,
            host,
            ctr,
            discovers: Arc::default(),
        };
        let mut lines = BufReader::new(out).lines();
        match lines.next() {
            Some(Ok(l)) if l == "ready" => {}
            _ => return Err("the DHCP listener did not start".into()),
        }
        let seen = lab.discovers.clone();
        thread::spawn(move || {
            for line in lines {
                if line.is_err() {
                    break;
                }
                if let Ok(mut v) = seen.lock() {
                    v.push(Instant::now());
                }
            }
        });
        Ok(lab)
    }

    fn ip(&self, ns: &Netns, args: &[&str]) -> Result {
        ip(ns, args)
    }

    /// A container veth as `ve-link` makes it: created, both ends up.
    fn add_veth(&self, ifname: &str) -> Result {
        let peer = if ifname == "ve-test" { "eth0" } else { "eth1" };
        let ctr = self.ctr.name();
        self.ip(
            &self.host,
            &[
                "link", "add", ifname, "type", "veth", "peer", "name", peer, "netns", ctr,
            ],
        )?;
        self.ip(&self.ctr, &["link", "set", peer, "up"])?;
        self.ip(&self.host, &["link", "set", ifname, "up"])
    }

    /// Delete and give NetworkManager a moment to drop the device.
    fn del_veth(&self, ifname: &str) -> Result {
        self.ip(&self.host, &["link", "del", ifname])?;
        thread::sleep(Duration::from_millis(100));
        Ok(())
    }

    fn discovers_since(&self, t: Instant) -> Vec<Instant> {
        let Ok(seen) = self.discovers.lock() else {
            return Vec::new();
        };
        seen.iter().copied().filter(|d| *d >= t).collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.listener.kill();
        let _ = self.listener.wait();
    }
}

/// `nm-unmanage --watch --json` with its stdout lines timestamped on arrival.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    log: Option<mpsc::Receiver<String>>,
}

impl Watcher {
    /// `cmd` (the tool in a sandbox daemon's network and mount namespaces: `--watch`
    /// writes under /run, which there is the sandbox's scratch directory, never the
    /// machine's) with `--watch --json`; its stderr, when piped, line by line.
    fn start(mut cmd: Command, bin: &Path) -> Result<Watcher> {
        let mut child = cmd
            .args(["--watch", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        crate::guard::pid(child.id());
        let log = child.stderr.take().map(|err| {
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
            rx
        });
        let out = child.stdout.take().ok_or("the watcher has no stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Watcher {
            child,
            lines: rx,
            log,
        })
    }

    /// Wait for a stderr line containing `text`.
    fn wait_logged(&self, text: &str, timeout: Duration) -> Result {
        let deadline = Instant::now() + timeout;
        let log = self
            .log
            .as_ref()
            .ok_or("the watcher's stderr is not piped")?;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| format!("the watcher did not log {text:?}"))?;
            match log.recv_timeout(left) {
                Ok(l) if l.contains(text) => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(format!("the watcher did not log {text:?}")),
            }
        }
    }

    fn next_for(&self, ifname: &str, timeout: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        let key = format!("\"interface\":\"{ifname}\"");
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (t, line) = self.lines.recv_timeout(left).ok()?;
            if line.contains(&key) {
                return Some((t, line));
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_from_json_lines() {
        let l = r#"{"interface":"ve-test","after_signal_us":1234,"x":1}"#;
        assert_eq!(json_u64(l, "after_signal_us"), Some(1234));
        assert_eq!(json_u64(l, "missing"), None);
    }

    #[test]
    fn stats_are_median_and_worst() {
        let v: Vec<_> = [3, 1, 2]
            .iter()
            .map(|&m| Duration::from_millis(m))
            .collect();
        assert_eq!(stats(&v), "median 2.00 ms, worst 3.00 ms");
        assert_eq!(stats(&[]), "n/a");
    }
}
