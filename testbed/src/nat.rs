//! The NAT topology ve-nat's tests, the demo and the benches share: `ctr -- host --
//! out` in sandbox namespaces, the tool running in `host`, with tiny TCP and UDP servers
//! that answer with the peer address they saw, and clients that ask them.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{spawn_in, Netns, Sandbox, TempDir};

/// A TCP server that answers every connection with `PEER_IP LOCAL_PORT` and closes.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &Netns, addr: &str) -> Server {
        let addr: SocketAddr = addr.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = spawn_in(&ns.path(), move || {
            let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let local = s.local_addr().map(|a| a.port()).unwrap_or(0);
                        let _ = write!(s, "{} {local}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server did not start");
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP server that answers every datagram with the sender's address.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    pub fn start(ns: &Netns, addr: &str) -> UdpServer {
        let addr: SocketAddr = addr.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = spawn_in(&ns.path(), move || {
            let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(peer.ip().to_string().as_bytes(), peer);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server did not start");
        UdpServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Send a datagram from `ns` to `addr` (a few tries) and return the answer.
pub fn udp_ask(ns: &Netns, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().unwrap();
    spawn_in(&ns.path(), move || {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.connect(addr).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        for _ in 0..4 {
            s.send(b"?").map_err(|e| e.to_string())?;
            if let Ok(n) = s.recv(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        Err(format!("no answer from {addr}"))
    })
    .join()
    .unwrap()
}

/// Connect from `ns` to `addr` and read the answer: `Ok("PEER_IP PORT")` or why not.
/// Generous: neighbour discovery on fresh links can take a retransmit under load.
pub fn fetch(ns: &Netns, addr: &str) -> Result<String, String> {
    fetch_within(ns, addr, Duration::from_secs(4))
}

/// For connections that must fail: a short wait.
pub fn blocked(ns: &Netns, addr: &str) -> bool {
    fetch_within(ns, addr, Duration::from_millis(1500)).is_err()
}

pub fn fetch_within(ns: &Netns, addr: &str, wait: Duration) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().unwrap();
    spawn_in(&ns.path(), move || {
        let mut s =
            TcpStream::connect_timeout(&addr, wait).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read {addr}: {e}"))?;
        Ok(text)
    })
    .join()
    .unwrap()
}

/// The peer address a server reported. Where a connection is expected to work, a
/// first failure is retried for a few seconds: on a loaded machine IPv6 neighbour
/// discovery in a namespace made a moment ago can still be under way.
pub fn seen(ns: &Netns, addr: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        match fetch(ns, addr) {
            Ok(t) => break t,
            Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    text.split(' ').next().unwrap_or("").to_string()
}

pub struct Topo {
    pub sb: Sandbox,
    /// Holds ve-nat's lock directory (see `lock_dir`).
    pub lockdir: TempDir,
    pub host: Netns,
    pub out: Netns,
    pub ctrs: Vec<Netns>,
    /// The ve-nat binary.
    pub bin: String,
    /// `--backend` of every `nat` call.
    pub backend: &'static str,
    pub v6: bool,
}

impl Topo {
    /// host (up0 192.0.2.1) -- out (up1 192.0.2.2, routes back to the containers),
    /// plus `n` containers.
    pub fn new(bin: &str, backend: &'static str, n: usize, v6: bool) -> Topo {
        let mut sb = Sandbox::new();
        let host = sb.netns("host");
        let out = sb.netns("out");
        crate::uplink(&host, &out);
        if v6 {
            host.ip(&["addr", "add", "2001:db8::1/64", "dev", "up0", "nodad"]);
            out.ip(&["addr", "add", "2001:db8::2/64", "dev", "up1", "nodad"]);
            out.ip(&["route", "add", "fd00::/16", "via", "2001:db8::1"]);
        }
        let mut t = Topo {
            sb,
            lockdir: TempDir::new("ve-nat-lock"),
            host,
            out,
            ctrs: Vec::new(),
            bin: bin.to_string(),
            backend,
            v6,
        };
        for _ in 0..n {
            t.add_container();
        }
        t
    }

    /// Container i (from 1): ve-c<i> 10.233.i.1 on the host, eth0 10.233.i.2 inside.
    pub fn add_container(&mut self) -> Netns {
        let i = self.ctrs.len() + 1;
        self.add_container_on(&format!("ve-c{i}"))
    }

    /// Container i with the host end of its veth named `ve`.
    pub fn add_container_on(&mut self, ve: &str) -> Netns {
        let i = self.ctrs.len() + 1;
        let ctr = self.sb.netns(&format!("c{i}"));
        let ve = ve.to_string();
        self.host.ip(&[
            "link",
            "add",
            &ve,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ctr.name(),
        ]);
        self.host
            .ip(&["addr", "add", &format!("10.233.{i}.1/24"), "dev", &ve]);
        self.host.ip(&["link", "set", &ve, "up"]);
        ctr.ip(&["addr", "add", &format!("10.233.{i}.2/24"), "dev", "eth0"]);
        ctr.ip(&["link", "set", "eth0", "up"]);
        ctr.ip(&["route", "add", "default", "via", &format!("10.233.{i}.1")]);
        if self.v6 {
            let h = format!("fd00:{i}::1/64");
            self.host.ip(&["addr", "add", &h, "dev", &ve, "nodad"]);
            ctr.ip(&[
                "addr",
                "add",
                &format!("fd00:{i}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ctr.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:{i}::1"),
            ]);
        }
        self.ctrs.push(ctr.clone());
        ctr
    }

    /// VE_NAT_LOCK_DIR: a directory ve-nat creates itself (so its mode does not
    /// depend on the test's umask), never the machine's /run/ve-nat.
    pub fn lock_dir(&self) -> std::path::PathBuf {
        self.lockdir.path().join("ve-nat")
    }

    /// `ve-nat ARGS --backend B` in the host namespace, not run yet.
    pub fn nat_cmd(&self, args: &[&str]) -> Command {
        self.nat_cmd_with(self.backend, args)
    }

    /// `ve-nat ARGS --backend BACKEND` in the host namespace, not run yet.
    pub fn nat_cmd_with(&self, backend: &str, args: &[&str]) -> Command {
        let mut c = self.host.command(&self.bin);
        c.args(args)
            .args(["--backend", backend])
            .env("VE_NAT_LOCK_DIR", self.lock_dir())
            .env_remove("RUST_LOG");
        c
    }

    /// `ve-nat ARGS --backend B` in the host namespace.
    pub fn nat(&self, args: &[&str]) -> Output {
        let out = self.nat_cmd(args).output().expect("running ve-nat");
        eprintln!(
            "ve-nat {args:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        out
    }

    pub fn nat_ok(&self, args: &[&str]) -> String {
        let out = self.nat(args);
        assert!(out.status.success(), "ve-nat {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// `iptables-B ARGS` (and `ip6tables-B` with `six`) in the host namespace.
    pub fn ipt(&self, six: bool, args: &[&str]) {
        let bin = format!(
            "{}-{}",
            if six { "ip6tables" } else { "iptables" },
            self.backend
        );
        let out = self.host.command(&bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{bin} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Both families' rules, as `*-save` prints them, without comments and counters,
    /// tables sorted by name, and without tables that hold nothing (the legacy
    /// backend shows a table once anyone has looked at it: not a rule change).
    pub fn save(&self) -> String {
        self.save_of(self.backend)
    }

    /// The same for `backend`.
    pub fn save_of(&self, backend: &str) -> String {
        let mut all = String::new();
        for fam in ["iptables", "ip6tables"] {
            let bin = format!("{fam}-{backend}-save");
            let out = self.host.command(&bin).output().unwrap();
            assert!(out.status.success(), "{bin}");
            let mut tables: Vec<String> = Vec::new();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.starts_with('#') {
                    continue;
                }
                if line.starts_with('*') {
                    tables.push(String::new());
                }
                let line = match line.rfind(" [") {
                    Some(i) if line.starts_with(':') => &line[..i],
                    _ => line,
                };
                if let Some(t) = tables.last_mut() {
                    t.push_str(line);
                    t.push('\n');
                }
            }
            tables.retain(|t| {
                t.lines()
                    .any(|l| l.starts_with("-A") || (l.starts_with(':') && !l.ends_with(" ACCEPT")))
            });
            tables.sort();
            all.push_str(&tables.concat());
            all.push_str("--\n");
        }
        all
    }

    pub fn forwarding_on(&self) {
        self.host.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
        if self.v6 {
            self.host
                .sh("echo 1 > /proc/sys/net/ipv6/conf/all/forwarding");
        }
    }
}

impl Topo {
    /// `nft ARGS` in the host namespace; panics on failure.
    pub fn nft(&self, args: &[&str]) -> String {
        let out = self.host.command("nft").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `nft -f -` with `script` in the host namespace; panics on failure.
    pub fn nft_script(&self, script: &str) {
        let mut child = self
            .host
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
