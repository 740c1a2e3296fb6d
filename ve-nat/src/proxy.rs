//! The userland proxy that makes IPv6 forwards answer on `[::1]:HOST_PORT` of the host,
//! run by `ve-nat watch` only (a listening socket needs a process that stays).
//!
//! The kernel cannot forward ::1: IPv6 has no `route_localnet`, and a reply un-NATed
//! to ::1 that arrives on a container interface is dropped as unroutable. So, as
//! Docker's docker-proxy does, the watcher listens on `[::1]:HOST_PORT` (IPV6_V6ONLY,
//! SO_REUSEADDR) and, per accepted connection, connects to `[ADDR]:PORT` and copies
//! bytes both ways, passing a half-close on. Only host processes can reach ::1, so
//! this opens nothing to the containers or the network. The container sees the host's
//! own address on its link as the peer, not ::1.
//!
//! TCP: one thread polls the listeners (and rebinds one that could not be bound or
//! failed, every [`REBIND`]); each connection takes two threads, at most [`MAX_CONNS`]
//! at a time. UDP: a thread per port; each client address is a session with a socket
//! of its own connected to the container and a thread sending the answers back, ended
//! after [`UDP_IDLE`] without an answer, at most [`MAX_CONNS`] sessions per port. Errors
//! are logged, never fatal. Dropping the [`Proxy`] closes the listeners within
//! [`TICK`]; connections still open end with the process.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{Ipv6Addr, Shutdown, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::config::{Family, Proto, Request};

/// Connections proxied at once; one more is accepted and closed straight away.
pub const MAX_CONNS: usize = 256;
/// Listeners at most (a forwarded port range listens on each of its ports).
pub const MAX_LISTENERS: usize = 1024;
/// How often a listener that is not bound is tried again.
pub const REBIND: Duration = Duration::from_secs(2);
/// How long the accept loop waits for a connection before looking at its stop flag.
pub const TICK: Duration = Duration::from_millis(100);
/// A UDP session without an answer from the container for this long ends (the next
/// datagram from its client starts a new one).
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// How long connecting to the container may take.
const CONNECT: Duration = Duration::from_secs(5);

/// One listener: connections (datagrams) to `listen` go to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub proto: Proto,
    pub listen: SocketAddrV6,
    pub to: SocketAddr,
}

/// What the proxy listens for: each port of each IPv6 forward on ::1, unless
/// `--no-localhost`.
pub fn routes(req: &Request) -> Vec<Route> {
    if !req.localhost {
        return Vec::new();
    }
    let mut out = Vec::new();
    for f in &req.forwards {
        if f.family() != Family::Ipv6 {
            continue;
        }
        for i in 0..f.host_ports.count() {
            let i = i as u16; // a count of u16 ports, so offsets fit
            out.push(Route {
                proto: f.proto,
                listen: SocketAddrV6::new(Ipv6Addr::LOCALHOST, f.host_ports.first + i, 0, 0),
                to: SocketAddr::new(f.addr, f.ports.first + i),
            });
        }
    }
    if out.len() > MAX_LISTENERS {
        log::warn!(
            "{} ports to proxy on [::1]; only the first {MAX_LISTENERS} are",
            out.len()
        );
        out.truncate(MAX_LISTENERS);
    }
    out
}

/// The running proxy; dropping it closes every listener.
pub struct Proxy {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Bind what can be bound now (so a connection made once this returns is answered),
/// then serve in a thread of its own. None when there is nothing to proxy.
pub fn start(routes: Vec<Route>) -> Option<Proxy> {
    if routes.is_empty() {
        return None;
    }
    let (tcp, udp): (Vec<Route>, Vec<Route>) =
        routes.into_iter().partition(|r| r.proto == Proto::Tcp);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let now = Instant::now();
    if !tcp.is_empty() {
        let mut slots: Vec<Slot> = tcp.into_iter().map(Slot::new).collect();
        for s in &mut slots {
            s.try_bind(now);
        }
        let flag = stop.clone();
        match thread::Builder::new()
            .name("proxy".into())
            .spawn(move || serve(slots, &flag))
        {
            Ok(t) => threads.push(t),
            Err(e) => log::warn!("cannot start the [::1] TCP proxy: {e}"),
        }
    }
    for r in udp {
        let mut slot = Slot::new(r);
        slot.try_bind_udp(now);
        let flag = stop.clone();
        match thread::Builder::new()
            .name("proxy-udp".into())
            .spawn(move || serve_udp(slot, &flag))
        {
            Ok(t) => threads.push(t),
            Err(e) => log::warn!("cannot start the [::1] UDP proxy of {}: {e}", r.listen),
        }
    }
    Some(Proxy { stop, threads })
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A route and its listener, when bound.
struct Slot {
    route: Route,
    listener: Option<TcpListener>,
    udp: Option<UdpSocket>,
    next_try: Instant,
    /// The last bind error logged, so a lasting one is logged once.
    last_error: Option<String>,
}

impl Slot {
    fn new(route: Route) -> Slot {
        Slot {
            route,
            listener: None,
            udp: None,
            next_try: Instant::now(),
            last_error: None,
        }
    }

    fn try_bind(&mut self, now: Instant) {
        if self.listener.is_some() || now < self.next_try {
            return;
        }
        let r = bind(self.route.listen, libc::SOCK_STREAM).and_then(|fd| {
            // SAFETY: listen(2) on our own socket.
            if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(TcpListener::from(fd))
        });
        if let Some(l) = self.bound(now, r) {
            self.listener = Some(l);
        }
    }

    fn try_bind_udp(&mut self, now: Instant) {
        if self.udp.is_some() || now < self.next_try {
            return;
        }
        let r = bind(self.route.listen, libc::SOCK_DGRAM).and_then(|fd| {
            let s = UdpSocket::from(fd);
            s.set_nonblocking(false)?;
            s.set_read_timeout(Some(TICK))?;
            Ok(s)
        });
        if let Some(s) = self.bound(now, r) {
            self.udp = Some(s);
        }
    }

    /// Log the outcome of a bind (a lasting error once) and plan the next try.
    fn bound<T>(&mut self, now: Instant, r: io::Result<T>) -> Option<T> {
        match r {
            Ok(s) => {
                log::info!(
                    "proxying {} {} to {}",
                    self.route.proto.as_str(),
                    self.route.listen,
                    self.route.to
                );
                self.last_error = None;
                Some(s)
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(&msg) {
                    log::warn!(
                        "cannot listen on {} {} ({msg}); trying again every {} s",
                        self.route.proto.as_str(),
                        self.route.listen,
                        REBIND.as_secs()
                    );
                }
                self.last_error = Some(msg);
                self.next_try = now + REBIND;
                None
            }
        }
    }

    /// Close a listener that failed; it is bound again at the next try.
    fn lost(&mut self, why: &str) {
        log::warn!(
            "listener on {} {} failed ({why}); binding it again",
            self.route.proto.as_str(),
            self.route.listen
        );
        self.listener = None;
        self.udp = None;
        self.next_try = Instant::now() + REBIND;
    }
}

/// A socket of `kind` (SOCK_STREAM or SOCK_DGRAM) bound to `addr`, non-blocking, with
/// IPV6_V6ONLY, and SO_REUSEADDR for TCP (a restart binds at once despite TIME_WAIT;
/// for UDP it would let two sockets share the port).
fn bind(addr: SocketAddrV6, kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let on: libc::c_int = 1;
    let mut opts = vec![(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)];
    if kind == libc::SOCK_STREAM {
        opts.push((libc::SOL_SOCKET, libc::SO_REUSEADDR));
    }
    for (level, opt) in opts {
        // SAFETY: setsockopt with a c_int option value of the right length.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                level,
                opt,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: a zeroed sockaddr_in6 is a valid value; the fields are set below.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = addr.port().to_be();
    sa.sin6_addr.s6_addr = addr.ip().octets();
    // SAFETY: sa is a valid sockaddr_in6 of the length given.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&sa as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Accept on every bound listener until `stop`.
fn serve(mut slots: Vec<Slot>, stop: &AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for s in &mut slots {
            s.try_bind(now);
        }
        let bound: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].listener.is_some())
            .collect();
        let mut fds: Vec<libc::pollfd> = bound
            .iter()
            .filter_map(|&i| slots[i].listener.as_ref())
            .map(|l| libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if fds.is_empty() {
            thread::sleep(TICK);
            continue;
        }
        // SAFETY: poll(2) over a slice of pollfds of the length given.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                TICK.as_millis() as libc::c_int,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                log::warn!("proxy: poll: {e}");
                thread::sleep(TICK);
            }
            continue;
        }
        for (p, &i) in fds.iter().zip(&bound) {
            if p.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                slots[i].lost("poll error");
            } else if p.revents & libc::POLLIN != 0 {
                accept_all(&mut slots[i], &active);
            }
        }
    }
}

/// Accept every pending connection on one listener.
fn accept_all(slot: &mut Slot, active: &Arc<AtomicUsize>) {
    let Some(l) = slot.listener.as_ref() else {
        return;
    };
    loop {
        match l.accept() {
            Ok((client, peer)) => {
                if active.load(Ordering::Relaxed) >= MAX_CONNS {
                    log::warn!(
                        "{}: {MAX_CONNS} connections already open; closing the one from {peer}",
                        slot.route.listen
                    );
                    continue;
                }
                active.fetch_add(1, Ordering::Relaxed);
                let (to, count) = (slot.route.to, active.clone());
                let spawned = thread::Builder::new()
                    .name("proxy-conn".into())
                    .spawn(move || {
                        relay(client, to);
                        count.fetch_sub(1, Ordering::Relaxed);
                    });
                if let Err(e) = spawned {
                    active.fetch_sub(1, Ordering::Relaxed);
                    log::warn!("proxy: cannot start a thread for {peer}: {e}");
                }
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock => return,
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                _ => match e.raw_os_error() {
                    // Out of descriptors or memory for now: the pending ones wait.
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        log::warn!("{}: accept: {e}", slot.route.listen);
                        thread::sleep(TICK);
                        return;
                    }
                    _ => {
                        slot.lost(&format!("accept: {e}"));
                        return;
                    }
                },
            },
        }
    }
}

/// Connect to `to` and copy both ways until both sides have closed.
fn relay(client: TcpStream, to: SocketAddr) {
    let peer = client
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // The accepted socket inherits nothing of the listener's O_NONBLOCK on Linux, but
    // say so rather than rely on it.
    if let Err(e) = client.set_nonblocking(false) {
        log::warn!("proxy {peer}: {e}");
        return;
    }
    let upstream = match TcpStream::connect_timeout(&to, CONNECT) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("proxy {peer}: connecting to {to}: {e}");
            return;
        }
    };
    log::debug!("proxy {peer} -> {to}");
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (c2, u2) = match (client.try_clone(), upstream.try_clone()) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            log::warn!("proxy {peer}: {e}");
            return;
        }
    };
    let back = thread::Builder::new()
        .name("proxy-back".into())
        .spawn(move || copy(u2, c2));
    match back {
        Ok(back) => {
            copy(client, upstream);
            let _ = back.join();
        }
        Err(e) => log::warn!("proxy {peer}: cannot start a thread: {e}"),
    }
}

/// Copy `from` to `to` until `from` ends, then pass the end on (a half-close). On an
/// error both connections are shut down, which ends the other direction too.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::debug!("proxy: reading: {e}");
                break;
            }
        };
        if let Err(e) = to.write_all(&buf[..n]) {
            log::debug!("proxy: writing: {e}");
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// One client address of a UDP port: its socket towards the container, and whether
/// its answering thread has ended.
struct Session {
    up: UdpSocket,
    done: Arc<AtomicBool>,
}

/// Relay datagrams on one UDP port until `stop`.
fn serve_udp(mut slot: Slot, stop: &Arc<AtomicBool>) {
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        slot.try_bind_udp(Instant::now());
        let Some(sock) = slot.udp.as_ref() else {
            thread::sleep(TICK);
            continue;
        };
        sessions.retain(|_, s| !s.done.load(Ordering::Relaxed));
        let (n, client) = match sock.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted
                // An ICMP error for an earlier answer: nothing lost here.
                | io::ErrorKind::ConnectionRefused => continue,
                _ => {
                    slot.lost(&format!("recv: {e}"));
                    for s in sessions.values() {
                        s.done.store(true, Ordering::Relaxed);
                    }
                    sessions.clear();
                    continue;
                }
            },
        };
        if !sessions.contains_key(&client) {
            if sessions.len() >= MAX_CONNS {
                log::warn!(
                    "{}: {MAX_CONNS} UDP sessions already open; dropping a datagram from {client}",
                    slot.route.listen
                );
                continue;
            }
            match udp_session(sock, client, slot.route.to, stop) {
                Ok(s) => {
                    sessions.insert(client, s);
                }
                Err(e) => {
                    log::warn!("proxy {client}: towards {}: {e}", slot.route.to);
                    continue;
                }
            }
        }
        if let Some(s) = sessions.get(&client) {
            if let Err(e) = s.up.send(&buf[..n]) {
                log::debug!("proxy {client}: sending to {}: {e}", slot.route.to);
            }
        }
    }
}

/// A socket connected to `to` for `client`, and a thread that sends what comes back
/// to `client` from the port's socket, until [`UDP_IDLE`] passes without an answer or
/// `stop`.
fn udp_session(
    sock: &UdpSocket,
    client: SocketAddr,
    to: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> io::Result<Session> {
    // An IPv6 forward's address is IPv6 (IPv4-mapped ones are refused as input).
    let up = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?;
    up.connect(to)?;
    up.set_read_timeout(Some(TICK))?;
    let (back, answer) = (up.try_clone()?, sock.try_clone()?);
    let done = Arc::new(AtomicBool::new(false));
    let (ended, stop) = (done.clone(), stop.clone());
    thread::Builder::new()
        .name("proxy-udp-back".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed)
                && !ended.load(Ordering::Relaxed)
                && last.elapsed() < UDP_IDLE
            {
                match back.recv(&mut buf) {
                    Ok(n) => {
                        last = Instant::now();
                        if let Err(e) = answer.send_to(&buf[..n], client) {
                            log::debug!("proxy {client}: answering: {e}");
                        }
                    }
                    Err(e) => match e.kind() {
                        io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionRefused => {}
                        _ => {
                            log::debug!("proxy {client}: from {to}: {e}");
                            break;
                        }
                    },
                }
            }
            ended.store(true, Ordering::Relaxed);
        })?;
    Ok(Session { up, done })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(forwards: &[&str], localhost: bool) -> Request {
        let f: Vec<String> = forwards.iter().map(|s| s.to_string()).collect();
        let mut r = Request::new("up0", &[], &[], &[], &f, true, None).unwrap();
        r.localhost = localhost;
        r
    }

    #[test]
    fn routes_are_the_ipv6_ports_on_loopback() {
        let r = req(
            &[
                "tcp:8080:10.233.1.2:80",
                "tcp:9000-9001:[fd00:1::2]:7000-7001",
                "udp:5353:[fd00:1::2]:53",
            ],
            true,
        );
        let got: Vec<(String, String, String)> = routes(&r)
            .iter()
            .map(|r| {
                (
                    r.proto.as_str().into(),
                    r.listen.to_string(),
                    r.to.to_string(),
                )
            })
            .collect();
        let want = [
            ("tcp", "[::1]:9000", "[fd00:1::2]:7000"),
            ("tcp", "[::1]:9001", "[fd00:1::2]:7001"),
            ("udp", "[::1]:5353", "[fd00:1::2]:53"),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(p, a, b)| (p.to_string(), a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        assert!(routes(&req(&["tcp:9000:[fd00:1::2]:70"], false)).is_empty());
    }
}
