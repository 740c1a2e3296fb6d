//! IPv6 forwards on `[::1]` of the host, TCP and UDP, with real traffic in sandbox
//! namespaces: the kernel cannot forward ::1, so `ve-nat watch` proxies it in userland. A plain `up`
//! and `--no-localhost` do not answer there; the watcher still exits 0 within 3 s on
//! SIGTERM with a proxied connection open, and nothing listens on ::1 afterwards.

mod support;

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixDatagram,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::{Watcher, BIN};
use testbed::{
    nat::{udp_ask, NatNet, UdpPeerServer},
    privileged, spawn_in, Netns, TempDir,
};

const LOOP6: &str = "[::1]:8080";
const FORWARD: &str = "tcp:8080:[fd00:1::2]:80";
const UDP_LOOP6: &str = "[::1]:5353";
const UDP_FORWARD: &str = "udp:5353:[fd00:1::2]:53";

fn gate(test: &str, backend: &str) -> bool {
    let ipt = |t: &str| format!("{t}-{backend}");
    let mut tools = vec!["ip".to_string()];
    if backend == "nftables" {
        tools.push("nft".into());
    } else {
        tools.push(ipt("iptables"));
        tools.push(ipt("ip6tables"));
    }
    let tools: Vec<&str> = tools.iter().map(String::as_str).collect();
    privileged(test, &tools)
}

#[test]
fn ipv6_forward_answers_on_loopback_with_the_watcher_nftables() {
    if gate(
        "ipv6_forward_answers_on_loopback_with_the_watcher_nftables",
        "nftables",
    ) {
        loopback6("nftables");
    }
}

#[test]
fn ipv6_forward_answers_on_loopback_with_the_watcher_iptables_legacy() {
    if gate(
        "ipv6_forward_answers_on_loopback_with_the_watcher_iptables_legacy",
        "legacy",
    ) {
        loopback6("legacy");
    }
}

/// A server in the container that reads to the client's end (so a half-close must get
/// through) and answers `PEER got DATA`.
fn echo_server(ctr: &Netns) {
    let (tx, rx) = std::sync::mpsc::channel();
    // Detached: it blocks in accept and goes with the namespace and the test process.
    drop(spawn_in(&ctr.path(), move || {
        let l = TcpListener::bind("[fd00:1::2]:80").expect("bind in the container");
        let _ = tx.send(());
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let peer = s
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let mut got = Vec::new();
                if s.read_to_end(&mut got).is_ok() {
                    let _ = write!(s, "{peer} got {}", String::from_utf8_lossy(&got));
                }
            });
        }
    }));
    rx.recv_timeout(Duration::from_secs(5))
        .expect("server in the container");
}

/// From `ns`: connect to `addr`, send `hello`, half-close, read the answer.
fn ask(ns: &Netns, addr: &str, wait: Duration) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    spawn_in(&ns.path(), move || {
        let mut s =
            TcpStream::connect_timeout(&addr, wait).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"hello").map_err(|e| e.to_string())?;
        s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read {addr}: {e}"))?;
        Ok(text)
    })
    .join()
    .unwrap_or_else(|_| Err("client thread panicked".into()))
}

/// The same, retried for up to `limit` (neighbour discovery on fresh links, a rebind).
fn ask_until(ns: &Netns, addr: &str, limit: Duration) -> Result<String, String> {
    let t = Instant::now();
    loop {
        match ask(ns, addr, Duration::from_secs(1)) {
            Ok(a) => return Ok(a),
            Err(e) if t.elapsed() > limit => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

struct Host<'a> {
    ns: &'a Netns,
    dirs: TempDir,
    backend: &'static str,
}

impl Host<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.ns.command(BIN);
        c.args(args)
            .args(["--backend", self.backend])
            .env("VE_NAT_LOCK_DIR", self.dirs.path().join("lock"))
            .env("VE_NAT_STATE_DIR", self.dirs.path().join("state"))
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                format!("unix:path={}/no-bus", self.dirs.path().display()),
            )
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG");
        c
    }

    fn ok(&self, args: &[&str]) {
        let out = self.cmd(args).output().expect("running ve-nat");
        eprintln!(
            "ve-nat {args:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert!(out.status.success(), "ve-nat {args:?}");
    }

    /// `ve-nat ARGS` that stays (watch), once it said READY=1.
    fn watcher(&self, args: &[&str]) -> Watcher {
        let sock_path = self.dirs.path().join("notify");
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut cmd = self.cmd(args);
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

fn loopback6(backend: &'static str) {
    let net = NatNet::new(1, true);
    let (host, ctr) = (&net.host, &net.ctrs[0]);
    echo_server(ctr);
    let _udp = UdpPeerServer::start(ctr, "[fd00:1::2]:53");
    let h = Host {
        ns: host,
        dirs: TempDir::new("ve-nat-lo6"),
        backend,
    };
    let want = [
        "--external",
        "up0",
        "--ipv6",
        "--forward",
        FORWARD,
        "--forward",
        UDP_FORWARD,
    ];
    let short = Duration::from_millis(1500);

    // Negative control: a one-shot up forwards the host's own address, not ::1.
    h.ok(&[&["up"], &want[..]].concat());
    let via_uplink = ask_until(host, "[2001:db8::1]:8080", Duration::from_secs(5));
    assert_eq!(via_uplink.as_deref(), Ok("2001:db8::1 got hello"));
    let plain = ask(host, LOOP6, short);
    assert!(
        plain.is_err(),
        "[::1] answered without the watcher: {plain:?}"
    );
    let plain = udp_ask(host, UDP_LOOP6);
    assert!(
        plain.is_err(),
        "UDP [::1] answered without the watcher: {plain:?}"
    );

    // The port is taken when the watcher starts: it says so, keeps running, and binds
    // once the port is free.
    let squatter = spawn_in(&host.path(), || TcpListener::bind(LOOP6).expect("squat"))
        .join()
        .expect("binding the squatter");
    // `up --watch` is the same watcher: one backend each.
    let verb: &[&str] = if backend == "nftables" {
        &["watch"]
    } else {
        &["up", "--watch"]
    };
    let mut w = h.watcher(&[verb, &want[..]].concat());
    let squatted = ask(host, LOOP6, short);
    assert!(
        !squatted.is_ok_and(|a| a.contains("got hello")),
        "the squatter's port proxied"
    );
    drop(squatter);
    // Bound again within REBIND (2 s); the container's server saw the host's address
    // on its link, and got the bytes and the half-close.
    let got = ask_until(host, LOOP6, Duration::from_secs(5));
    assert_eq!(
        got.as_deref(),
        Ok("fd00:1::1 got hello"),
        "[::1] via the watcher"
    );
    // UDP: the container's server saw the host's link address, and answered.
    assert_eq!(
        udp_ask(host, UDP_LOOP6).as_deref(),
        Ok("fd00:1::1"),
        "UDP [::1]"
    );
    // The forward from outside still works as before.
    assert_eq!(
        ask_until(&net.out, "[2001:db8::1]:8080", Duration::from_secs(5)).as_deref(),
        Ok("2001:db8::2 got hello")
    );

    // SIGTERM with a proxied connection open (the server waits for our end, which
    // never comes): exit 0 within 3 s, and nothing listens on ::1 afterwards.
    let held = spawn_in(&host.path(), || {
        let mut s = TcpStream::connect(LOOP6).expect("connect to the proxy");
        s.write_all(b"partial").expect("write");
        s
    })
    .join()
    .expect("holding a connection");
    std::thread::sleep(Duration::from_millis(200));
    let (st, d) = w.stop_with(libc::SIGTERM);
    assert!(st.success(), "exit after SIGTERM: {st}");
    assert!(d < Duration::from_secs(3), "{d:?} to exit");
    eprintln!("MEASURED watcher exit with a proxied connection open: {d:?}");
    drop(held);
    let after = ask(host, LOOP6, short);
    assert!(
        after.is_err(),
        "[::1] answered after the watcher: {after:?}"
    );
    let after = udp_ask(host, UDP_LOOP6);
    assert!(
        after.is_err(),
        "UDP [::1] answered after the watcher: {after:?}"
    );
    let ss = host.sh("ss -Hltun 'src [::1]'");
    assert_eq!(ss.trim(), "", "listening on ::1 after the watcher");

    // --no-localhost: the watcher does not proxy.
    let mut w = h.watcher(&[&["watch", "--no-localhost"], &want[..]].concat());
    let off = ask(host, LOOP6, short);
    assert!(off.is_err(), "[::1] answered with --no-localhost: {off:?}");
    let off = udp_ask(host, UDP_LOOP6);
    assert!(
        off.is_err(),
        "UDP [::1] answered with --no-localhost: {off:?}"
    );
    let (st, _) = w.stop_with(libc::SIGTERM);
    assert!(st.success());

    h.ok(&["down"]);
}
