//! testbed's NetworkManager on a private D-Bus bus inside throwaway namespaces, with
//! this crate's bus policies (an unprivileged client may reach the bus but not
//! NetworkManager; or only root may connect), a D-Bus client to inspect it, and a DHCP
//! listener that counts what leaks onto the wire. Everything is stopped, and the
//! namespaces and the scratch directory removed, on drop.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::UdpSocket,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

pub mod nd;

use nm_unmanage::{Bus, Device, Nm, NM_IFACE, NM_NAME, NM_PATH};
use testbed::{nm::Setup, privileged, Netns, NetworkManager, Sandbox};

/// The tool under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_nm-unmanage");

/// ve-link, built next to the tool (`cargo build -p nm-unmanage -p ve-link --bins`).
pub fn ve_link() -> PathBuf {
    let p = Path::new(BIN).with_file_name("ve-link");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p nm-unmanage -p ve-link --bins` first",
        p.display()
    );
    p
}

/// A sandboxed NetworkManager and its bus: testbed's, with this crate's bus policies
/// and an administrator's own unmanaged device in its configuration.
pub struct NmSandbox {
    pub host: Netns,
    client: Option<Client>,
    // Dropped after the client: stops NetworkManager and the bus, removes the scratch
    // directory.
    nm: NetworkManager,
    // Dropped last: deletes the namespaces with anything still inside.
    sandbox: Sandbox,
}

impl NmSandbox {
    /// Gate on privileges, then start dbus-daemon and NetworkManager and wait until
    /// NetworkManager has finished starting. `None` when the test is skipped.
    pub fn start(test: &str) -> Option<NmSandbox> {
        if !privileged(test, &["ip", "dbus-daemon", "NetworkManager", "mount"]) {
            return None;
        }
        let mut sb = NmSandbox::bus_only();
        sb.start_nm();
        Some(sb)
    }

    /// Only the private bus, no NetworkManager on it (the caller has gated).
    pub fn bus_only() -> NmSandbox {
        NmSandbox::bus_with(bus_conf)
    }

    /// A private bus that only root may connect to (the caller has gated).
    pub fn bus_for_root_only() -> NmSandbox {
        NmSandbox::bus_with(root_only_bus_conf)
    }

    fn bus_with(bus_conf: fn(&Path) -> String) -> NmSandbox {
        let mut sandbox = Sandbox::new();
        let host = sandbox.netns("host");
        let dir = std::env::temp_dir().join(format!("nmu-{}", sandbox.prefix()));
        // `vz-keep` is the administrator's own unmanaged device: `--persist` must add
        // to it, not replace it. etc-nm goes over /etc/NetworkManager in
        // `tool_in_private_mounts`.
        let nm = Setup::new(dir)
            .bus_conf(bus_conf)
            .keyfile("unmanaged-devices=interface-name:vz-keep\n")
            .dir("etc-nm/conf.d")
            .bus(&host)
            .unwrap_or_else(|e| panic!("{e}"));
        NmSandbox {
            host,
            client: None,
            nm,
            sandbox,
        }
    }

    /// `unix:path=DIR/bus`.
    pub fn bus_address(&self) -> String {
        self.nm.bus_address()
    }

    /// The sandbox's scratch directory (removed on drop).
    pub fn scratch(&self) -> &Path {
        self.nm.scratch()
    }

    /// The conf.d directory NetworkManager reads (for `--persist --conf-dir`).
    pub fn conf_dir(&self) -> PathBuf {
        self.nm.conf_dir()
    }

    /// The per-boot drop-in directory NetworkManager reads: `/run/NetworkManager/conf.d`
    /// in its mount namespace, where the scratch `run` directory is bound over `/run`
    /// (for `--runtime-dir`).
    pub fn runtime_dir(&self) -> PathBuf {
        self.scratch().join("run/NetworkManager/conf.d")
    }

    /// The tool run as NetworkManager sees the world: in the sandbox's host namespace
    /// with a private mount namespace (`ip netns exec`) in which the scratch `run` is
    /// bound over `/run` and an empty scratch directory over `/etc/NetworkManager`, so
    /// that its default directories (/run/NetworkManager/conf.d, /etc/NetworkManager/
    /// conf.d) are the sandbox's, never the machine's. Same pid as the tool (`exec`).
    pub fn tool_in_private_mounts(&self) -> Command {
        let d = self.scratch().display();
        let script = format!(
            "mount --bind {d}/run /run && mount --bind {d}/etc-nm /etc/NetworkManager && \
             exec \"$0\" \"$@\""
        );
        let mut c = self.host.command("sh");
        c.args(["-c", &script, BIN])
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .env_remove("RUST_LOG")
            .env_remove(nm_unmanage::RUNTIME_DIR_ENV)
            .env_remove(nm_unmanage::TIMEOUT_ENV);
        c
    }

    /// The pid of the running NetworkManager.
    pub fn nm_pid(&self) -> u32 {
        self.nm.pid().expect("NetworkManager is running")
    }

    /// Stop NetworkManager with SIGSTOP (it keeps its bus name, and answers nothing)
    /// until the guard drops.
    pub fn freeze_nm(&self) -> Frozen {
        let pid = self.nm_pid() as i32;
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Frozen(pid)
    }

    /// `ve-link up NAME --netns CTR` with the given addresses, in the host namespace.
    pub fn ve_link_up(&self, name: &str, ctr: &Netns, host: &str, local: &str) {
        let out = self
            .host
            .command(ve_link().to_str().unwrap())
            .args(["up", name, "--netns", ctr.name()])
            .args(["--host-address", host, "--local-address", local, "-q"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ve-link up {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new namespace of this sandbox (a "container").
    pub fn netns(&mut self, role: &str) -> Netns {
        self.sandbox.netns(role)
    }

    /// Start NetworkManager and wait until its `Startup` property is false.
    pub fn start_nm(&mut self) {
        self.nm.spawn().unwrap_or_else(|e| panic!("{e}"));
        let client = self.client();
        wait_until(
            "NetworkManager to finish starting",
            Duration::from_secs(20),
            || (client.nm_running() && !client.starting()).then_some(()),
        );
    }

    /// Stop NetworkManager (SIGTERM, then SIGKILL after 5 s) and wait until its name
    /// has left the bus.
    pub fn stop_nm(&mut self) {
        self.nm.stop();
        let client = self.client();
        wait_until(
            "NetworkManager to leave the bus",
            Duration::from_secs(5),
            || (!client.nm_running()).then_some(()),
        );
    }

    pub fn restart_nm(&mut self) {
        self.stop_nm();
        self.start_nm();
    }

    /// A D-Bus client of this bus (kept, so repeated calls are cheap).
    pub fn client(&mut self) -> Client {
        if self.client.is_none() {
            self.client = Some(Client::new(&self.bus_address()));
        }
        self.client.clone().unwrap()
    }

    /// The tool with the bus address in its environment.
    pub fn tool(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .env_remove("RUST_LOG")
            .env_remove(nm_unmanage::RUNTIME_DIR_ENV)
            .env_remove(nm_unmanage::TIMEOUT_ENV);
        c
    }

    /// Create veth `ifname` in the host namespace with `peer_name` in `peer`, both up,
    /// as `ve-link` does. Returns right after the kernel created the link.
    pub fn add_veth(&self, ifname: &str, peer: &Netns, peer_name: &str) {
        self.host.ip(&[
            "link",
            "add",
            ifname,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "netns",
            peer.name(),
        ]);
        peer.ip(&["link", "set", peer_name, "up"]);
        self.host.ip(&["link", "set", ifname, "up"]);
    }

    pub fn del_link(&self, ifname: &str) {
        self.host.ip(&["link", "del", ifname]);
    }

    /// The last lines of NetworkManager's log, for failure messages.
    pub fn nm_log_tail(&self) -> String {
        self.nm.log_tail()
    }
}

impl Drop for NmSandbox {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- NetworkManager log (tail) ---\n{}", self.nm_log_tail());
        }
        self.client = None;
        // `nm` drops next (NetworkManager, the bus, the scratch directory), then
        // `sandbox`: namespaces deleted with any process left inside.
    }
}

/// A frozen NetworkManager, thawed (SIGCONT) on drop, also when the test panics, so
/// that the sandbox's drop can stop it.
pub struct Frozen(i32);

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on the pid of our own child.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Root may do everything; anyone else may connect and talk to the bus itself but not
/// to NetworkManager (the permission-denied test). No service directories: nothing
/// gets activated.
fn bus_conf(dir: &Path) -> String {
    let default = r#"  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <deny own="*"/>
    <deny send_destination="org.freedesktop.NetworkManager"/>
  </policy>
  <policy user="root">
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
  </policy>
"#;
    // A sandboxed networkd may join too (the test with both managers on one bus).
    let policies = format!("{default}{}", testbed::networkd::POLICY);
    testbed::nm::bus_conf_with(dir, &policies)
}

/// Only root may connect: dbus-daemon lets a user connect only when a policy allows it.
fn root_only_bus_conf(dir: &Path) -> String {
    let default = r#"  <policy context="default">
    <allow user="root"/>
  </policy>
"#;
    testbed::nm::bus_conf_with(dir, &format!("{default}{}", testbed::nm::ROOT_POLICY))
}

/// Poll `f` every 5 ms until it returns `Some`, or panic after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// A blocking D-Bus client for assertions.
#[derive(Clone)]
pub struct Client {
    rt: Arc<tokio::runtime::Runtime>,
    bus: Bus,
}

impl Client {
    pub fn new(address: &str) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = rt
            // Generous: the assertions must not fail on a loaded machine.
            .block_on(nm_unmanage::connect(address, Duration::from_secs(30)))
            .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
        Client {
            rt: Arc::new(rt),
            bus: Bus::new(conn),
        }
    }

    pub fn nm_running(&self) -> bool {
        self.rt.block_on(self.bus.nm_running()).unwrap()
    }

    fn starting(&self) -> bool {
        let r = self.rt.block_on(self.bus.connection().call_method(
            Some(NM_NAME),
            NM_PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(NM_IFACE, "Startup"),
        ));
        match r {
            Ok(m) => m
                .body()
                .deserialize::<zbus::OwnedVariant>()
                .ok()
                .and_then(|v| bool::try_from(v).ok())
                .unwrap_or(true),
            Err(_) => true,
        }
    }

    /// The device NetworkManager has for `ifname`, if any.
    pub fn device(&self, ifname: &str) -> Option<Device> {
        self.rt.block_on(async {
            let m = self
                .bus
                .connection()
                .call_method(
                    Some(NM_NAME),
                    NM_PATH,
                    Some(NM_IFACE),
                    "GetDeviceByIpIface",
                    &(ifname,),
                )
                .await
                .ok()?;
            let path: zbus::OwnedObjectPath = m.body().deserialize().ok()?;
            self.bus.device(path.as_str()).await.ok().flatten()
        })
    }

    /// The unique bus name of the connection that process `pid` holds, if any.
    pub fn unique_name_of(&self, pid: u32) -> Option<String> {
        self.rt.block_on(async {
            let conn = self.bus.connection();
            let dbus = |method: &'static str, name: Option<String>| async move {
                let r = match name {
                    Some(n) => {
                        conn.call_method(
                            Some("org.freedesktop.DBus"),
                            "/org/freedesktop/DBus",
                            Some("org.freedesktop.DBus"),
                            method,
                            &(n,),
                        )
                        .await
                    }
                    None => {
                        conn.call_method(
                            Some("org.freedesktop.DBus"),
                            "/org/freedesktop/DBus",
                            Some("org.freedesktop.DBus"),
                            method,
                            &(),
                        )
                        .await
                    }
                };
                r.ok()
            };
            let names: Vec<String> = dbus("ListNames", None).await?.body().deserialize().ok()?;
            for n in names.into_iter().filter(|n| n.starts_with(':')) {
                let Some(m) = dbus("GetConnectionUnixProcessID", Some(n.clone())).await else {
                    continue;
                };
                if m.body().deserialize::<u32>().ok() == Some(pid) {
                    return Some(n);
                }
            }
            None
        })
    }

    /// Announce, as if this client were NetworkManager, that device `path` was added
    /// (DeviceAdded), broadcast or sent to `to` only.
    pub fn forge_device_added(&self, to: Option<&str>, path: &str) {
        let path = zbus::ObjectPath::try_from(path).unwrap();
        self.rt
            .block_on(self.bus.connection().emit_signal(
                to,
                NM_PATH,
                NM_IFACE,
                "DeviceAdded",
                &(path,),
            ))
            .expect("emitting DeviceAdded");
    }

    /// The same with the ObjectManager's InterfacesAdded, for a device called `ifname`.
    pub fn forge_interfaces_added(&self, to: Option<&str>, path: &str, ifname: &str) {
        use std::collections::HashMap;
        use zbus::{ObjectPath, Variant as Value};
        let path = ObjectPath::try_from(path).unwrap();
        let props: HashMap<&str, Value> = HashMap::from([
            ("Interface", Value::from(ifname)),
            ("Managed", Value::from(true)),
            ("State", Value::from(100u32)),
        ]);
        let ifaces = HashMap::from([("org.freedesktop.NetworkManager.Device", props)]);
        self.rt
            .block_on(self.bus.connection().emit_signal(
                to,
                "/org/freedesktop",
                "org.freedesktop.DBus.ObjectManager",
                "InterfacesAdded",
                &(path, ifaces),
            ))
            .expect("emitting InterfacesAdded");
    }

    /// The `NMDeviceState` of `ifname`'s device.
    pub fn state(&self, ifname: &str) -> Option<u32> {
        self.device(ifname).map(|d| d.state)
    }
}

/// Collects DHCP DISCOVERs arriving on UDP port 67 in one namespace.
pub struct DhcpListener {
    seen: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DhcpListener {
    /// Bind 0.0.0.0:67 inside `ns` (a thread that enters the namespace first, so the
    /// socket belongs to it) and record the arrival time of every DISCOVER. The time is
    /// the kernel's receive timestamp (SO_TIMESTAMPNS), so a listener thread that is
    /// scheduled late on a busy machine does not make a packet look late.
    pub fn start(ns: &Netns) -> DhcpListener {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let path = ns.path();
        let (s2, st2) = (seen.clone(), stop.clone());
        let thread = thread::spawn(move || {
            testbed::enter(&path).unwrap_or_else(|e| panic!("setns: {e}"));
            let sock = UdpSocket::bind("0.0.0.0:67").expect("binding UDP 67");
            let on: libc::c_int = 1;
            // SAFETY: setsockopt on our own socket with a c_int option value.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_TIMESTAMPNS,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
            // Blocking receive; the timeout only bounds how long a stop takes.
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !st2.load(Ordering::Relaxed) {
                if let Some((n, at)) = recv_stamped(&sock, &mut buf) {
                    if is_discover(&buf[..n]) {
                        s2.lock().unwrap().push(at);
                    }
                }
            }
        });
        ready_rx.recv().expect("listener thread started");
        DhcpListener {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Arrival times of all DISCOVERs so far.
    pub fn discovers(&self) -> Vec<Instant> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for DhcpListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Receive one datagram into `buf`: its length and when the kernel received it, as an
/// `Instant` (the kernel stamps CLOCK_REALTIME; its age now is subtracted from
/// `Instant::now()`). `None` on timeout or error.
fn recv_stamped(sock: &UdpSocket, buf: &mut [u8]) -> Option<(usize, Instant)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one control message (u64 for alignment).
    let mut control = [0u64; 16];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: recvmsg on our socket with buffers that live across the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    let (now, wall) = (Instant::now(), std::time::SystemTime::now());
    if n < 0 {
        return None;
    }
    let mut at = now;
    // SAFETY: walking the control messages the kernel wrote into `control`, with the
    // libc CMSG helpers and the lengths recvmsg returned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let stamp =
                    std::time::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
                let age = wall.duration_since(stamp).unwrap_or_default();
                at = now.checked_sub(age).unwrap_or(now);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((n as usize, at))
}

/// A BOOTP request carrying DHCP option 53 (message type) = 1 (DISCOVER).
fn is_discover(p: &[u8]) -> bool {
    if p.len() < 240 || p[0] != 1 || p[236..240] != [99, 130, 83, 99] {
        return false;
    }
    let mut i = 240;
    while i < p.len() {
        match p[i] {
            0 => i += 1,
            255 => return false,
            code => {
                let Some(&len) = p.get(i + 1) else {
                    return false;
                };
                if code == 53 && len >= 1 {
                    return p.get(i + 2) == Some(&1);
                }
                i += 2 + len as usize;
            }
        }
    }
    false
}

/// `nm-unmanage --watch --json` running in the background; its stdout lines arrive on
/// a channel with their arrival time.
pub struct Watcher {
    child: Child,
    lines: mpsc::Receiver<(Instant, serde_json::Value)>,
    /// Its stderr, line by line (also passed on to the test's stderr).
    log: mpsc::Receiver<String>,
}

impl Watcher {
    /// Started with `--runtime-dir` in the sandbox, never the machine's own.
    pub fn start(sb: &NmSandbox, extra: &[&str]) -> Watcher {
        let mut cmd = sb.tool();
        cmd.arg("--runtime-dir").arg(sb.runtime_dir());
        Watcher::spawn(cmd, extra)
    }

    /// `cmd` (the tool, or a wrapper that runs it) with `--watch --json -v` and `extra`.
    pub fn spawn(mut cmd: Command, extra: &[&str]) -> Watcher {
        let mut child = cmd
            .args(["--watch", "--json", "-v"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the watcher");
        let err = child.stderr.take().unwrap();
        let (log_tx, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                // The test may have stopped listening; keep draining the pipe.
                let _ = log_tx.send(line);
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
                if tx.send((Instant::now(), v)).is_err() {
                    break;
                }
            }
        });
        Watcher {
            child,
            lines: rx,
            log,
        }
    }

    /// Wait up to `timeout` for a stderr line containing `text`.
    pub fn logged(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(text) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// The next record for `ifname`, waiting up to `timeout`.
    pub fn next_for(
        &self,
        ifname: &str,
        timeout: Duration,
    ) -> Option<(Instant, serde_json::Value)> {
        self.next_where(|v| v["interface"] == ifname, timeout)
    }

    /// The next record for which `f` holds, waiting up to `timeout`.
    pub fn next_where(
        &self,
        f: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> Option<(Instant, serde_json::Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (t, v) = self.lines.recv_timeout(left).ok()?;
            if f(&v) {
                return Some((t, v));
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, once it has exited.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Whether the watcher is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "watcher ignored SIGTERM"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Median and maximum of a list of durations.
pub fn median_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], *v.last().unwrap())
}
