//! `cargo xtask bench watch`: how soon `ve-nat watch` puts the rules back after
//! `nft flush ruleset` (what NixOS's nftables service runs on every reload), timed from
//! the flush to the first container connection the outside server sees NATed again.
//! [`flush_reapply`] is the part `bench nat` can call for the table.

use std::{
    net::SocketAddr,
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use testbed::{http_get, nat::NatNet, HttpServer, TempDir, HOST_UPLINK, OUTSIDE};

use super::stats::{median_p90, ms};
use crate::util::{self, Result};

const USAGE: &str = "\
usage: cargo xtask bench watch [--flushes N]

  --flushes N   `nft flush ruleset` runs to time (default 20), with the nftables and
                the iptables-nft backend

Needs root, iproute2, nftables and iptables.";

/// The number of flushes, or `None` for `--help`.
pub(super) fn parse(args: &[String]) -> Result<Option<usize>> {
    let mut flushes = 20usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--flushes" => {
                flushes = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("bench watch: --flushes needs a positive number")?
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("bench watch: unknown option {other:?}\n{USAGE}")),
        }
    }
    Ok(Some(flushes))
}

pub fn run(args: &[String]) -> Result {
    let Some(flushes) = parse(args)? else {
        sayln!("{USAGE}");
        return Ok(());
    };
    if !util::is_root() {
        return Err("bench watch: needs root (it creates network namespaces)".into());
    }
    util::run(util::cargo().args(["build", "--release", "--quiet", "-p", "ve-nat"]))?;
    let bin = util::root().join("target/release/ve-nat");
    for backend in ["nftables", "iptables-nft"] {
        say!("{}", flush_reapply(&bin, backend, flushes)?);
    }
    Ok(())
}

/// Kills the watcher on drop (also when the bench fails half-way).
struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `ve-nat watch` in a sandbox (ctr -- host -- out), flush the ruleset `flushes`
/// times, and report the median, p90 and worst time until NAT works again.
pub fn flush_reapply(bin: &Path, backend: &str, flushes: usize) -> Result<String> {
    let net = NatNet::new(1, false);
    // An interruption removes the namespaces, the scratch dir and the daemon too.
    crate::guard::namespaces(net.sb.prefix());
    let (host, out, ctr) = (&net.host, &net.out, &net.ctrs[0]);
    let dirs = TempDir::new("bench-watch");
    crate::guard::dir(dirs.path());
    let server: SocketAddr = format!("{OUTSIDE}:80")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let _srv = HttpServer::start(&out.path(), server, |a| a.ip().to_string())
        .map_err(|e| format!("server: {e}"))?;

    let notify = dirs.path().join("notify");
    let sock = UnixDatagram::bind(&notify).map_err(|e| format!("notify socket: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let child = host
        .command(&bin.display().to_string())
        .args(["watch", "--external", "up0", "--backend", backend])
        .env("VE_NAT_LOCK_DIR", dirs.path().join("lock"))
        .env("VE_NAT_STATE_DIR", dirs.path().join("state"))
        // Never the machine's bus: no firewalld here.
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            format!("unix:path={}/no-bus", dirs.path().display()),
        )
        .env("NOTIFY_SOCKET", &notify)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its warnings at every re-apply are the expected course here.
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting ve-nat watch: {e}"))?;
    crate::guard::pid(child.id());
    let _w = Watcher(child);
    let mut buf = [0u8; 16];
    sock.recv(&mut buf)
        .map_err(|e| format!("no READY=1 from ve-nat watch: {e}"))?;

    let natted = || {
        http_get(&ctr.path(), server, Duration::from_millis(300)).is_ok_and(|s| s == HOST_UPLINK)
    };
    let mut took = Vec::new();
    for i in 0..flushes {
        // From starting the flush (its process included: an upper bound).
        let t = Instant::now();
        let st = host
            .command("nft")
            .args(["flush", "ruleset"])
            .status()
            .map_err(|e| format!("nft: {e}"))?;
        if !st.success() {
            return Err(format!("nft flush ruleset: {st}"));
        }
        while !natted() {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("flush {i}: NAT not back within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        took.push(t.elapsed());
        // Let the watcher finish its look after its own apply.
        std::thread::sleep(Duration::from_millis(200));
    }
    let worst = took.iter().max().copied().unwrap_or_default();
    let (median, p90) = median_p90(&mut took);
    Ok(format!(
        "ve-nat watch ({backend}): NAT back after `nft flush ruleset`, {flushes} flushes: \
         median {} ms, p90 {} ms, max {} ms (target: median < 1000 ms)\n",
        ms(median),
        ms(p90),
        ms(worst)
    ))
}
