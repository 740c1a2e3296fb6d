//! What the firewalld and watcher tests share: ctr -- host -- out with HTTP servers that
//! answer with the peer address they saw, ve-nat run in `host` (inside a firewalld
//! sandbox's mounts when there is one), and a watcher process with its READY=1 socket.
//! `topo` is the plainer topology nat.rs and nftables.rs share.

#![allow(dead_code)]

pub mod topo;

use std::{
    net::SocketAddr,
    os::unix::net::UnixDatagram,
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use testbed::{
    firewalld::Firewalld, http_get, http_get_within, nat::NatNet, HttpServer, Netns, TempDir,
    HOST_UPLINK, OUTSIDE,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_ve-nat");

/// The request every test makes: masquerade behind up0 and one forward to the container.
pub const WANT: &[&str] = &["--external", "up0", "--forward", "tcp:8080:10.233.1.2:80"];
/// The container's address.
pub const CTR: &str = "10.233.1.2";

pub struct Topo {
    pub host: Netns,
    pub out: Netns,
    pub ctr: Netns,
    pub backend: &'static str,
    /// ve-nat's lock and state directories live here.
    pub dirs: TempDir,
    pub fw: Option<Firewalld>,
    _servers: Vec<HttpServer>,
    // Dropped last: the namespaces go once everything in them has stopped.
    _net: NatNet,
}

impl Topo {
    /// host (up0 192.0.2.1, ve-c1 10.233.1.1) -- out (192.0.2.2, a route back to the
    /// containers, so un-NATed traffic shows the container's address) and ctr
    /// (10.233.1.2); HTTP servers on out:80 and ctr:80. With `firewalld`, a real one
    /// runs in `host`.
    pub fn new(backend: &'static str, firewalld: bool) -> Topo {
        let net = NatNet::new(1, false);
        let (host, out, ctr) = (net.host.clone(), net.out.clone(), net.ctrs[0].clone());
        let peer = |a: SocketAddr| a.ip().to_string();
        let servers = vec![
            HttpServer::start(&out.path(), format!("{OUTSIDE}:80").parse().unwrap(), peer)
                .expect("server outside"),
            HttpServer::start(&ctr.path(), format!("{CTR}:80").parse().unwrap(), peer)
                .expect("server in the container"),
        ];
        let fw = firewalld.then(|| {
            Firewalld::start(&host, net.sb.prefix()).unwrap_or_else(|e| panic!("firewalld: {e}"))
        });
        Topo {
            host,
            out,
            ctr,
            backend,
            dirs: TempDir::new("ve-nat-fwd"),
            fw,
            _servers: servers,
            _net: net,
        }
    }

    pub fn state_dir(&self) -> std::path::PathBuf {
        self.dirs.path().join("state")
    }

    /// `ve-nat ARGS --backend B` in `host`, not run yet: in the firewalld sandbox's
    /// mounts and on its bus when there is one, else with a bus address that leads
    /// nowhere (never the machine's bus).
    pub fn nat_cmd(&self, args: &[&str]) -> Command {
        let mut c = match &self.fw {
            Some(fw) => fw.command(BIN),
            None => {
                let mut c = self.host.command(BIN);
                c.env(
                    "DBUS_SYSTEM_BUS_ADDRESS",
                    format!("unix:path={}/no-bus", self.dirs.path().display()),
                );
                c
            }
        };
        c.args(args)
            .args(["--backend", self.backend])
            .env("VE_NAT_LOCK_DIR", self.dirs.path().join("lock"))
            .env("VE_NAT_STATE_DIR", self.state_dir())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG");
        c
    }

    pub fn nat(&self, args: &[&str]) -> Output {
        run_nat(self.nat_cmd(args), args)
    }

    pub fn nat_ok(&self, args: &[&str]) {
        assert!(self.nat(args).status.success(), "ve-nat {args:?} failed");
    }

    /// `ve-nat check` with the request: its exit code.
    pub fn check(&self) -> Option<i32> {
        self.nat(&[&["check"], WANT].concat()).status.code()
    }

    /// The address the outside server saw for a connection from the container.
    pub fn seen_outside(&self, within: Duration) -> Result<String, String> {
        let addr = format!("{OUTSIDE}:80").parse().unwrap();
        http_get_within(&self.ctr.path(), addr, within)
    }

    /// One quick try of the same (for polling).
    pub fn seen_outside_once(&self) -> Result<String, String> {
        let addr = format!("{OUTSIDE}:80").parse().unwrap();
        http_get(&self.ctr.path(), addr, Duration::from_millis(300))
    }

    /// The address the container's server saw for a connection to the forward from `ns`.
    pub fn forwarded_from(&self, ns: &Netns, within: Duration) -> Result<String, String> {
        let addr = format!("{HOST_UPLINK}:8080").parse().unwrap();
        http_get_within(&ns.path(), addr, within)
    }

    /// Masquerade, the forward from outside and the forward from the host all work
    /// (within 5 s: a watcher may be re-applying).
    pub fn assert_nat_works(&self, when: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let short = Duration::from_millis(500);
        let last = loop {
            let m = self.seen_outside(short).unwrap_or_else(|e| e);
            let o = self.forwarded_from(&self.out, short).unwrap_or_else(|e| e);
            let h = self
                .forwarded_from(&self.host, short)
                .map(|_| String::from("ok"));
            let h = h.unwrap_or_else(|e| e);
            if m == HOST_UPLINK && o == OUTSIDE && h == "ok" {
                return;
            }
            if Instant::now() > deadline {
                break (m, o, h);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        panic!(
            "{when}: masquerade: outside saw {:?} (want {HOST_UPLINK}); forward from \
             outside: the container saw {:?} (want {OUTSIDE}); forward from the host: {:?}",
            last.0, last.1, last.2
        );
    }

    /// Start `ve-nat watch` with the request; returns once it said READY=1.
    pub fn watcher(&self) -> Watcher {
        self.watcher_as(&["watch"])
    }

    /// The same as `ve-nat VERB... REQUEST` (`up --watch`).
    pub fn watcher_as(&self, verb: &[&str]) -> Watcher {
        let sock_path = self.dirs.path().join("notify");
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut cmd = self.nat_cmd(&[verb, WANT].concat());
        cmd.env("NOTIFY_SOCKET", &sock_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null());
        let child = cmd.spawn().expect("starting ve-nat watch");
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).expect("READY=1 from ve-nat watch");
        assert_eq!(&buf[..n], b"READY=1");
        Watcher { child }
    }
}

/// A running `ve-nat watch` (killed on drop if still running).
pub struct Watcher {
    pub child: Child,
}

impl Watcher {
    /// Send `sig`; the exit status and how long the exit took.
    pub fn stop_with(&mut self, sig: i32) -> (ExitStatus, Duration) {
        // `nsenter` (with firewalld) or `ip netns exec` exec the tool: the child is it.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("waiting for the watcher") {
                return (st, t.elapsed());
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the watcher did not exit"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pause(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    pub fn resume(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` until it is true; how long that took, or None after `limit`.
pub fn time_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Run `cmd` (ve-nat with `args`), logging its exit status and stderr.
pub fn run_nat(mut cmd: Command, args: &[&str]) -> Output {
    let out = cmd.output().expect("running ve-nat");
    eprintln!(
        "ve-nat {args:?}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// A process's exit code, -1 when killed by a signal.
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}
