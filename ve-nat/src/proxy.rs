//! The userland proxy that makes IPv6 TCP forwards answer on `[::1]:HOST_PORT` of the
//! host, run by `ve-nat watch` only (a listening socket needs a process that stays).
//!
//! The kernel cannot forward ::1: IPv6 has no `route_localnet`, and a reply un-NATed
//! to ::1 that arrives on a container interface is dropped as unroutable. So, as
//! Docker's docker-proxy does, the watcher listens on `[::1]:HOST_PORT` (IPV6_V6ONLY,
//! SO_REUSEADDR) and, per accepted connection, connects to `[ADDR]:PORT` and copies
//! bytes both ways, passing a half-close on. Only host processes can reach ::1, so
//! this opens nothing to the containers or the network. The container sees the host's
//! own address on its link as the peer, not ::1.
//!
//! One thread polls the listeners (and rebinds one that could not be bound or failed,
//! every [`REBIND`]); each connection takes two threads, at most [`MAX_CONNS`] at a
//! time. Errors are logged, never fatal. Dropping the [`Proxy`] closes the listeners
//! within [`TICK`]; connections still open end with the process.

use std::{
    io::{self, Read, Write},
    net::{Ipv6Addr, Shutdown, SocketAddr, SocketAddrV6, TcpListener, TcpStream},
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
/// How long connecting to the container may take.
const CONNECT: Duration = Duration::from_secs(5);

/// One listener: connections to `listen` go to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub listen: SocketAddrV6,
    pub to: SocketAddr,
}

/// What the proxy listens for: each port of each IPv6 TCP forward on ::1, unless
/// `--no-localhost`. UDP forwards are not proxied.
pub fn routes(req: &Request) -> Vec<Route> {
    if !req.localhost {
        return Vec::new();
    }
    let mut out = Vec::new();
    for f in &req.forwards {
        if f.family() != Family::Ipv6 {
            continue;
        }
        if f.proto != Proto::Tcp {
            log::info!("forward {f}: UDP is not proxied on [::1]");
            continue;
        }
        for i in 0..f.host_ports.count() {
            let i = i as u16; // a count of u16 ports, so offsets fit
            out.push(Route {
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
    thread: Option<JoinHandle<()>>,
}

/// Bind what can be bound now (so a connection made once this returns is answered),
/// then serve in a thread of its own. None when there is nothing to proxy.
pub fn start(routes: Vec<Route>) -> Option<Proxy> {
    if routes.is_empty() {
        return None;
    }
    let mut slots: Vec<Slot> = routes.into_iter().map(Slot::new).collect();
    let now = Instant::now();
    for s in &mut slots {
        s.try_bind(now);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = thread::Builder::new()
        .name("proxy".into())
        .spawn(move || serve(slots, &flag));
    match thread {
        Ok(t) => Some(Proxy {
            stop,
            thread: Some(t),
        }),
        Err(e) => {
            log::warn!("cannot start the [::1] proxy: {e}");
            None
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A route and its listener, when bound.
struct Slot {
    route: Route,
    listener: Option<TcpListener>,
    next_try: Instant,
    /// The last bind error logged, so a lasting one is logged once.
    last_error: Option<String>,
}

impl Slot {
    fn new(route: Route) -> Slot {
        Slot {
            route,
            listener: None,
            next_try: Instant::now(),
            last_error: None,
        }
    }

    fn try_bind(&mut self, now: Instant) {
        if self.listener.is_some() || now < self.next_try {
            return;
        }
        match listen(self.route.listen) {
            Ok(l) => {
                log::info!("proxying {} to {}", self.route.listen, self.route.to);
                self.listener = Some(l);
                self.last_error = None;
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(&msg) {
                    log::warn!(
                        "cannot listen on {} ({msg}); trying again every {} s",
                        self.route.listen,
                        REBIND.as_secs()
                    );
                }
                self.last_error = Some(msg);
                self.next_try = now + REBIND;
            }
        }
    }

    /// Close a listener that failed; it is bound again at the next try.
    fn lost(&mut self, why: &str) {
        log::warn!(
            "listener on {} failed ({why}); binding it again",
            self.route.listen
        );
        self.listener = None;
        self.next_try = Instant::now() + REBIND;
    }
}

/// A listening TCP socket on `addr` with IPV6_V6ONLY and SO_REUSEADDR, non-blocking.
fn listen(addr: SocketAddrV6) -> io::Result<TcpListener> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let on: libc::c_int = 1;
    for (level, opt) in [
        (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
        (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    ] {
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
    // SAFETY: listen(2) on our own socket.
    if unsafe { libc::listen(sock.as_raw_fd(), 128) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(sock))
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
    fn routes_are_the_ipv6_tcp_ports_on_loopback() {
        let r = req(
            &[
                "tcp:8080:10.233.1.2:80",
                "tcp:9000-9001:[fd00:1::2]:7000-7001",
                "udp:5353:[fd00:1::2]:53",
            ],
            true,
        );
        let got: Vec<(String, String)> = routes(&r)
            .iter()
            .map(|r| (r.listen.to_string(), r.to.to_string()))
            .collect();
        let want = [
            ("[::1]:9000", "[fd00:1::2]:7000"),
            ("[::1]:9001", "[fd00:1::2]:7001"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        assert!(routes(&req(&["tcp:9000:[fd00:1::2]:70"], false)).is_empty());
    }
}
