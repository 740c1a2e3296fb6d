//! A NAT topology with real traffic, for every NAT backend's tests: containers --
//! host -- outside, peer-reporting TCP and UDP servers, a TCP echo server, clients
//! that say what the server saw, and the container-side route tricks that try to
//! reach the host's loopback (CVE-2020-8558).
//!
//! ```text
//! ctr i (eth0 10.233.i.2, fd00:i::2) -- ve-c<i> (10.233.i.1, fd00:i::1)
//!   host (up0 192.0.2.1, 2001:db8::1) -- up1 (192.0.2.2, 2001:db8::2) out
//! ```
//!
//! `out` routes the container pool back through the host, so that without NAT a
//! server outside sees the container's own address (the negative control).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{spawn_in, uplink, Netns, Sandbox};

/// The sandbox: `host`, `out` and the containers.
pub struct NatNet {
    pub sb: Sandbox,
    pub host: Netns,
    pub out: Netns,
    pub ctrs: Vec<Netns>,
    pub v6: bool,
}

impl NatNet {
    /// host -- out, plus `n` containers; with `v6` IPv6 addresses and routes too.
    pub fn new(n: usize, v6: bool) -> NatNet {
        let mut sb = Sandbox::new();
        let host = sb.netns("host");
        let out = sb.netns("out");
        uplink(&host, &out);
        if v6 {
            host.ip(&["addr", "add", "2001:db8::1/64", "dev", "up0", "nodad"]);
            out.ip(&["addr", "add", "2001:db8::2/64", "dev", "up1", "nodad"]);
            out.ip(&["route", "add", "fd00::/16", "via", "2001:db8::1"]);
        }
        let mut t = NatNet {
            sb,
            host,
            out,
            ctrs: Vec::new(),
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
        self.host.ip(&[
            "link",
            "add",
            ve,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ctr.name(),
        ]);
        self.host
            .ip(&["addr", "add", &format!("10.233.{i}.1/24"), "dev", ve]);
        self.host.ip(&["link", "set", ve, "up"]);
        ctr.ip(&["addr", "add", &format!("10.233.{i}.2/24"), "dev", "eth0"]);
        ctr.ip(&["link", "set", "eth0", "up"]);
        ctr.ip(&["route", "add", "default", "via", &format!("10.233.{i}.1")]);
        if self.v6 {
            let h = format!("fd00:{i}::1/64");
            self.host.ip(&["addr", "add", &h, "dev", ve, "nodad"]);
            let c = format!("fd00:{i}::2/64");
            ctr.ip(&["addr", "add", &c, "dev", "eth0", "nodad"]);
            let gw = format!("fd00:{i}::1");
            ctr.ip(&["-6", "route", "add", "default", "via", &gw]);
        }
        self.ctrs.push(ctr.clone());
        ctr
    }

    /// Forwarding on in the host, as a router would have it before any NAT.
    pub fn forwarding_on(&self) {
        self.host.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
        if self.v6 {
            self.host
                .sh("echo 1 > /proc/sys/net/ipv6/conf/all/forwarding");
        }
    }

    /// The host's `net.ipv4.conf.IFACE.route_localnet` (`None`: no such interface).
    pub fn route_localnet(&self, iface: &str) -> Option<bool> {
        let o = self.host.sh_output(&format!(
            "cat /proc/sys/net/ipv4/conf/{iface}/route_localnet"
        ));
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim() != "0")
    }

    /// Every host interface whose route_localnet is 1 (`all` and `default` included).
    pub fn route_localnet_on(&self) -> Vec<String> {
        let out = self.host.sh("cd /proc/sys/net/ipv4/conf && for i in *; do \
             [ \"$(cat $i/route_localnet)\" = 1 ] && echo $i; done; true");
        out.lines().map(str::to_string).collect()
    }
}

/// Make container `ctr` send everything for 127.0.0.1 to the host at `gateway`: its
/// own route_localnet on, the local table looked up after a table that routes
/// 127.0.0.1/32 through eth0, so a connect to 127.0.0.1 leaves as a packet to the
/// host's loopback (what an attacker on the link does with raw packets).
pub fn route_loopback_to_host(ctr: &Netns, gateway: &str) {
    ctr.sh(&format!(
        "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet && \
         echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet && \
         ip rule add to 127.0.0.1 lookup 100 pref 10 && \
         ip rule add lookup local pref 100 && ip rule del pref 0 && \
         ip route add 127.0.0.1/32 via {gateway} dev eth0 table 100"
    ));
    let r = ctr.ip(&["route", "get", "127.0.0.1"]);
    assert!(r.contains("dev eth0"), "the trick did not take: {r}");
}

/// A TCP server that answers every connection with `PEER_IP LOCAL_PORT` and closes.
pub struct PeerServer {
    _serving: Serving,
}

impl PeerServer {
    pub fn start(ns: &Netns, addr: &str) -> PeerServer {
        let _serving = serve_tcp(ns, addr, |mut s, peer| {
            let local = s.local_addr().map(|a| a.port()).unwrap_or(0);
            let _ = write!(s, "{} {local}", peer.ip());
        });
        PeerServer { _serving }
    }
}

/// A TCP server that echoes every byte back as it comes, until the peer closes (each
/// connection on a thread of its own, so one kept open does not hold up the others).
pub struct EchoServer {
    _serving: Serving,
}

impl EchoServer {
    pub fn start(ns: &Netns, addr: &str) -> EchoServer {
        let _serving = serve_tcp(ns, addr, |mut s, _| {
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        });
        EchoServer { _serving }
    }
}

/// A TCP server's accept loop: stopped and joined when dropped.
struct Serving {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Listen on `addr` in `ns` and hand every connection (blocking) to `handle`, until
/// dropped; returns once it listens.
fn serve_tcp(
    ns: &Netns,
    addr: &str,
    handle: impl Fn(TcpStream, SocketAddr) + Send + 'static,
) -> Serving {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let flag = stop.clone();
    let thread = spawn_in(&ns.path(), move || {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        l.set_nonblocking(true).expect("nonblocking");
        let _ = tx.send(());
        while !flag.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    handle(s, peer);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("server did not start");
    Serving {
        stop,
        thread: Some(thread),
    }
}

/// A UDP server that answers every datagram with the sender's address.
pub struct UdpPeerServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpPeerServer {
    pub fn start(ns: &Netns, addr: &str) -> UdpPeerServer {
        let addr: SocketAddr = addr.parse().expect("a socket address");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = spawn_in(&ns.path(), move || {
            let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            let _ = tx.send(());
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(peer.ip().to_string().as_bytes(), peer);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server did not start");
        UdpPeerServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpPeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Send a datagram from `ns` to `addr` (a few tries) and return the answer.
pub fn udp_ask(ns: &Netns, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    spawn_in(&ns.path(), move || {
        let bind = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
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
    .unwrap_or_else(|_| Err("client thread panicked".into()))
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
    let addr: SocketAddr = addr.parse().expect("a socket address");
    spawn_in(&ns.path(), move || {
        let mut s =
            TcpStream::connect_timeout(&addr, wait).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read {addr}: {e}"))?;
        Ok(text)
    })
    .join()
    .unwrap_or_else(|_| Err("client thread panicked".into()))
}

/// The peer address a server reported. Where a connection is expected to work, a
/// first failure is retried for a few seconds: on a loaded machine IPv6 neighbour
/// discovery in a namespace made a moment ago can still be under way.
pub fn seen(ns: &Netns, addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        match fetch(ns, addr) {
            Ok(t) => break t,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    text.split(' ').next().unwrap_or("").to_string()
}
