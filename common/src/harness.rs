//! A sandboxed host for the demo and the end-to-end tests (feature `testing`): HTTP
//! served and fetched inside network namespaces, and a real NetworkManager on a
//! private D-Bus bus. Only std, libc and the programs of Debian's `dbus` and
//! `network-manager` packages.
//!
//! Sockets are opened on threads that entered the namespace first (`setns` on that
//! thread only), so the process itself never leaves its own namespace.

use std::{
    fs,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::testing::{have_command, Netns};

/// The host's uplink address in every sandbox (TEST-NET-1, documentation range).
pub const HOST_UPLINK: &str = "192.0.2.1";
/// The "outside world" on the other end of the uplink.
pub const OUTSIDE: &str = "192.0.2.2";

/// Wire `host` to `out`: a veth `up0` (HOST_UPLINK/24) -- `up1` (OUTSIDE/24), both up,
/// and a route in `out` back to the container pool 10.233.0.0/16 through the host, so
/// that without NAT a server outside sees container addresses (the negative control)
/// and with NAT the uplink address.
pub fn uplink(host: &Netns, out: &Netns) {
    host.ip(&[
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "up1",
        "netns",
        out.name(),
    ]);
    host.ip(&["addr", "add", &format!("{HOST_UPLINK}/24"), "dev", "up0"]);
    host.ip(&["link", "set", "up0", "up"]);
    out.ip(&["addr", "add", &format!("{OUTSIDE}/24"), "dev", "up1"]);
    out.ip(&["link", "set", "up1", "up"]);
    out.ip(&["route", "add", "10.233.0.0/16", "via", HOST_UPLINK]);
}

/// Run `f` on a new thread that has entered the network namespace at `ns` (a file such
/// as `/run/netns/NAME` or `/proc/PID/ns/net`), and return its result.
pub fn in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let ns = ns.to_path_buf();
    thread::spawn(move || enter(&ns).map(|()| f()))
        .join()
        .map_err(|_| io::Error::other("thread panicked"))?
}

/// `setns` the calling thread into the network namespace at `ns`.
fn enter(ns: &Path) -> io::Result<()> {
    let f = fs::File::open(ns)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", ns.display())))?;
    // SAFETY: setns on the calling thread only; the fd is valid for the call.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A tiny HTTP/1.0 server listening inside a network namespace, answering every
/// request with `200 OK` and a body made from the peer address it saw.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Listen on `addr` inside the namespace at `ns`; returns once the socket is bound.
    pub fn start(
        ns: &Path,
        addr: SocketAddr,
        body: impl Fn(SocketAddr) -> String + Send + 'static,
    ) -> io::Result<HttpServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns, stop2) = (ns.to_path_buf(), stop.clone());
        let thread = thread::spawn(move || {
            let listener = enter(&ns)
                .and_then(|()| TcpListener::bind(addr))
                .and_then(|l| l.set_nonblocking(true).map(|()| l));
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        let _ = answer(conn, &body(peer));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("server thread died"))??;
        Ok(HttpServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read one request (up to the blank line) and write the response.
fn answer(mut conn: TcpStream, body: &str) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    write!(
        conn,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.shutdown(Shutdown::Write)
}

/// `GET /` from inside the namespace at `ns`; the body of a `200` answer.
pub fn http_get(ns: &Path, addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    in_netns(ns, move || get(addr, timeout))
        .map_err(|e| format!("entering {}: {e}", ns.display()))?
}

/// [`http_get`], retried for up to `within` while it fails: for a connection that must
/// work, where a loaded machine may still be resolving neighbours in a namespace made a
/// moment ago. The last error when it never worked.
pub fn http_get_within(ns: &Path, addr: SocketAddr, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match http_get(ns, addr, left.max(Duration::from_millis(500))) {
            Ok(body) => return Ok(body),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn get(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let fail = |e: io::Error| format!("GET http://{addr}/: {e}");
    let mut conn = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    conn.set_read_timeout(Some(timeout)).map_err(fail)?;
    write!(conn, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(fail)?;
    let mut resp = String::new();
    conn.read_to_string(&mut resp).map_err(fail)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{addr}/: malformed answer {resp:?}"))?;
    if !head.starts_with("HTTP/1.0 200 ") && !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!(
            "GET http://{addr}/: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_string())
}

/// A real NetworkManager and a private system bus, both running in one sandbox
/// namespace (the "host"). NetworkManager gets a private mount namespace with `/sys`
/// read-only (its no-udev mode: with a writable /sys and no udevd it never finishes
/// starting) and scratch directories over `/run` and `/var/lib/NetworkManager`, so it
/// writes nothing of the machine's. Both processes are stopped, and the scratch
/// directory removed, on drop.
pub struct NetworkManager {
    dir: PathBuf,
    dbus: Child,
    nm: Option<Child>,
}

impl NetworkManager {
    /// The programs it needs.
    pub const COMMANDS: &'static [&'static str] = &[
        "dbus-daemon",
        "NetworkManager",
        "nm-online",
        "nmcli",
        "mount",
    ];

    /// Whether network-manager and dbus are installed.
    pub fn available() -> bool {
        Self::COMMANDS.iter().all(|c| have_command(c))
    }

    /// Start the bus and NetworkManager in `host`; returns when NetworkManager has
    /// finished starting. Devices that exist now (an uplink with addresses) are
    /// assumed as they are; veths created later get NetworkManager's default
    /// treatment (a DHCP connection), the worst case for containers.
    pub fn start(host: &Netns, tag: &str) -> Result<NetworkManager, String> {
        let dir = Self::scratch_dir(tag);
        let _ = fs::remove_dir_all(&dir);
        for sub in ["run", "varlib", "conf.d", "sysconf.d", "conns"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let d = dir.display().to_string();
        let write = |name: &str, text: String| {
            fs::write(dir.join(name), text).map_err(|e| format!("writing {name}: {e}"))
        };
        write("bus.conf", bus_conf(&d))?;
        write("nm.conf", nm_conf(&dir, ""))?;
        let logs = dir.clone();
        let log = move |name: &str| {
            fs::File::create(logs.join(name)).map_err(|e| format!("creating {name}: {e}"))
        };
        let dbus = host
            .command("dbus-daemon")
            .arg(format!("--config-file={d}/bus.conf"))
            .args(["--nofork", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("dbus.log")?)
            .spawn()
            .map_err(|e| format!("starting dbus-daemon: {e}"))?;
        let mut sb = NetworkManager {
            dir,
            dbus,
            nm: None,
        };
        wait_for("the private bus", Duration::from_secs(5), || {
            sb.dir.join("bus").exists()
        })?;
        let nm = nm_command(host, &sb.dir, &sb.bus_address())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("nm.log")?)
            .spawn()
            .map_err(|e| format!("starting NetworkManager: {e}"))?;
        sb.nm = Some(nm);
        // nm-online -s: wait until NetworkManager has finished starting.
        let mut online = sb.client("nm-online");
        online.args(["-s", "-q", "-t", "20"]);
        let ok = online.status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            return Err(format!(
                "NetworkManager did not finish starting; its log:\n{}",
                sb.log_tail()
            ));
        }
        Ok(sb)
    }

    /// The scratch directory `start(_, tag)` uses (and removes on drop), so that a
    /// caller that may be interrupted can register it for removal beforehand.
    pub fn scratch_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ve-nm-{tag}"))
    }

    /// A command that runs `program` in NetworkManager's own network and mount
    /// namespaces (`nsenter`), where scratch directories cover /run and
    /// /var/lib/NetworkManager: a client that writes under /run/NetworkManager (such as
    /// `nm-unmanage --watch`, which writes a runtime drop-in there) writes the
    /// sandbox's, never the machine's. /run/netns is not visible there.
    pub fn command_in_mounts(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let pid = self.nm.as_ref().map_or(0, Child::id);
        let mut c = Command::new("nsenter");
        c.args(["-t", &pid.to_string(), "-m", "-n", "--"])
            .arg(program)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .stdin(Stdio::null());
        c
    }

    /// `unix:path=DIR/bus`, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.dir.join("bus").display())
    }

    /// The drop-in directory NetworkManager reads (`nm-unmanage --persist --conf-dir`).
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("conf.d")
    }

    /// A client program (nmcli, nm-online, nm-unmanage...) pointed at this bus.
    pub fn client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .stdin(Stdio::null());
        c
    }

    /// NetworkManager's state of the device `ifname`, e.g. `10 (unmanaged)` or
    /// `100 (connected)`; `None` when it has no such device.
    pub fn device_state(&self, ifname: &str) -> Option<String> {
        let out = self
            .client("nmcli")
            .args(["-g", "GENERAL.STATE", "device", "show", ifname])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    }

    /// Whether NetworkManager has `ifname` and leaves it alone (state 10).
    pub fn is_unmanaged(&self, ifname: &str) -> bool {
        self.device_state(ifname)
            .is_some_and(|s| s.starts_with("10 "))
    }

    /// The last lines of NetworkManager's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("nm.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for NetworkManager {
    fn drop(&mut self) {
        if let Some(nm) = self.nm.take() {
            stop(nm);
        }
        stop_now(&mut self.dbus);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `nm.conf` for a sandboxed NetworkManager whose scratch directory is `dir`: keyfile
/// connections kept there, no DNS, hostname or connectivity business; `keyfile_extra`
/// lines go into its `[keyfile]` section.
pub fn nm_conf(dir: &Path, keyfile_extra: &str) -> String {
    format!(
        "[main]\nplugins=keyfile\ndns=none\nrc-manager=unmanaged\nhostname-mode=none\n\
         [connectivity]\nenabled=false\n[keyfile]\npath={}/conns\n{keyfile_extra}",
        dir.display()
    )
}

/// The command that runs NetworkManager in `host` on the bus at `bus_address`, all its
/// state in `dir` (with `run`, `varlib`, `conf.d`, `sysconf.d` and `nm.conf` made).
/// `ip netns exec` gives it a private mount namespace, where `/sys` is remounted
/// read-only (no udev: otherwise it never finishes starting and manages nothing) and
/// scratch directories cover `/run` and `/var/lib/NetworkManager`.
pub fn nm_command(host: &Netns, dir: &Path, bus_address: &str) -> Command {
    let d = dir.display();
    let script = format!(
        "mount -o remount,ro /sys && mount --bind {d}/run /run && \
         mount --bind {d}/varlib /var/lib/NetworkManager && \
         exec NetworkManager --no-daemon --config={d}/nm.conf --config-dir={d}/conf.d \
         --system-config-dir={d}/sysconf.d --intern-config={d}/intern.conf \
         --state-file={d}/state --pid-file=/run/nm.pid"
    );
    let mut c = host.command("sh");
    c.args(["-c", &script])
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus_address);
    c
}

/// Stop a child: SIGTERM, then SIGKILL after 5 s.
pub fn stop(mut child: Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    stop_now(&mut child);
}

fn stop_now(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Poll `f` every 5 ms until it is true, or fail after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A system bus that root may use for everything and nothing gets activated on.
fn bus_conf(dir: &str) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={dir}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy user="root">
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#
    )
}
