//! One writer at a time per node on one host: the processes of a node that write to
//! the store take turns, as calico-ipam's host-wide lock makes them do, instead of
//! reading the same free pair at once and all but one losing the commit (every lost
//! commit is a full quorum write for etcd, and 16 parallel allocators lost about four
//! for each one that won).
//!
//! The lock is an abstract Unix socket, bound while held: no file is made, the kernel
//! frees it when its holder exits however it exits, and it is scoped to the network
//! namespace (each node of the testbed has its own). A waiter connects to the holder's
//! socket and sleeps until that socket closes. The lock is only an economy: a writer
//! that cannot have it in time (or at all) goes on without it, and the compare-and-swap
//! commit alone keeps the store right. An abstract name has no permissions, so a holder
//! of another uid (SO_PEERCRED) or a bound socket that never listens is no holder: the
//! writer goes on at once; a full backlog is looked at again, never blocked on.

use std::{
    io::{self, Read},
    mem,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixListener, UnixStream},
    },
    time::{Duration, Instant},
};

/// Held while alive.
pub struct NodeLock {
    _held: UnixListener,
}

/// The abstract socket name of the lock of `node` at `prefix` of the cluster at
/// `endpoints` (hashed: abstract names hold at most 107 bytes).
pub fn name(endpoints: &[String], prefix: &str, node: &str) -> String {
    let mut text = Vec::new();
    for part in [endpoints.join(","), prefix.to_string(), node.to_string()] {
        text.extend(part.bytes().chain([0]));
    }
    let h = common::name::fnv1a64(&text);
    format!("ve-alloc/etcd-node/{h:016x}")
}

/// The longest pause between two looks at a lock whose holder cannot be waited on.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Take the lock `name`, waiting until `until` at most; None when it stayed held, is
/// held by another user (abstract sockets have no permissions: anyone in the network
/// namespace can bind the name), or abstract sockets are not to be had: the caller goes
/// on without it.
pub fn acquire(name: &str, until: Instant) -> Option<NodeLock> {
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut waited = false;
    let mut refused = false;
    let mut pause = Duration::from_millis(1);
    loop {
        match UnixListener::bind_addr(&addr) {
            Ok(l) => {
                if waited {
                    log::debug!("took the node's write lock after waiting");
                }
                return Some(NodeLock { _held: l });
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
            Err(e) => {
                log::debug!("no node write lock ({e}); writing without it");
                return None;
            }
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::debug!("the node's write lock stayed held; writing without it");
            return None;
        }
        waited = true;
        match connect(name.as_bytes()) {
            Ok(Some(s)) => {
                refused = false;
                pause = Duration::from_millis(1);
                match peer_uid(&s) {
                    Ok(uid) if uid == me => {}
                    Ok(uid) => {
                        log::debug!(
                            "the node's write lock is bound by uid {uid}, not {me}; writing without it"
                        );
                        return None;
                    }
                    Err(e) => {
                        log::debug!(
                            "cannot tell who holds the node's write lock ({e}); writing without it"
                        );
                        return None;
                    }
                }
                // Sleeps until the holder's socket closes (a reset or end of file) or
                // the time is up; the holder never accepts, so nothing is ever read.
                if s.set_read_timeout(Some(left)).is_ok() {
                    let _ = (&s).read(&mut [0u8; 1]);
                }
                continue;
            }
            // The holder's backlog is full (waiters that gave up): look again later.
            Ok(None) => {}
            // Just released (the next bind wins), or bound by a socket that does not
            // listen, which a holder never is for longer than between its bind and
            // listen: twice in a row, a while apart, is no holder to wait for.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                if refused {
                    log::debug!(
                        "the node's write lock is bound by a socket that does not listen; writing without it"
                    );
                    return None;
                }
                refused = true;
            }
            Err(e) => {
                log::debug!("cannot wait for the node's write lock ({e}); writing without it");
                return None;
            }
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// The abstract address `name` (no terminating NUL: the length says where it ends).
fn abstract_addr(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data, for which all zeroes is a valid value.
    let mut sa: libc::sockaddr_un = unsafe { mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if name.len() + 1 > sa.sun_path.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (d, s) in sa.sun_path[1..].iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let len = mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    Ok((sa, len as libc::socklen_t))
}

/// A new Unix stream socket, non-blocking.
fn stream_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket has no memory preconditions; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Connect to the abstract socket `name` without waiting: None when its backlog is
/// full (a blocking connect would then sleep, with no timeout, until it is not).
fn connect(name: &[u8]) -> io::Result<Option<UnixStream>> {
    let (sa, len) = abstract_addr(name)?;
    let fd = stream_socket()?;
    // SAFETY: sa is a valid sockaddr_un of which len bytes are used.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(e),
        };
    }
    let s = UnixStream::from(fd);
    s.set_nonblocking(false)?;
    Ok(Some(s))
}

/// The effective uid of the process that made the peer of `s` listen (SO_PEERCRED).
fn peer_uid(s: &UnixStream) -> io::Result<libc::uid_t> {
    // SAFETY: ucred is plain data, for which all zeroes is a valid value.
    let mut cred: libc::ucred = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred is writable and len bytes long.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_and_waiters_wake_when_it_goes() {
        let name = name(&["t:1".into()], &format!("/t{}", std::process::id()), "n");
        let held = acquire(&name, Instant::now()).expect("free lock");
        // Held: a second taker gives up at its deadline.
        let t = Instant::now();
        assert!(acquire(&name, t + Duration::from_millis(100)).is_none());
        assert!(t.elapsed() >= Duration::from_millis(100));
        // A waiter gets it as soon as the holder lets go, long before its deadline.
        let n = name.clone();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            let got = acquire(&n, t + Duration::from_secs(10)).is_some();
            (got, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        let (got, took) = waiter.join().unwrap();
        assert!(got);
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    fn unique(tag: &str) -> String {
        name(
            &["t:1".into()],
            &format!("/{tag}{}", std::process::id()),
            "n",
        )
    }

    /// A socket bound to `name` (and listening with `backlog`, if given).
    fn squat(name: &str, backlog: Option<i32>) -> OwnedFd {
        let (sa, len) = abstract_addr(name.as_bytes()).unwrap();
        let fd = stream_socket().unwrap();
        // SAFETY: sa is a valid sockaddr_un of which len bytes are used.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
                len,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        if let Some(b) = backlog {
            // SAFETY: fd is a bound socket.
            assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), b) }, 0);
        }
        fd
    }

    /// Runs `f` on a thread and fails the test if it has not returned within `limit`
    /// (a blocked connect would otherwise hang the test).
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).expect("still blocked")
    }

    #[test]
    fn a_full_backlog_does_not_block_past_the_deadline() {
        let name = unique("backlog");
        // A backlog of 0 is full with one unaccepted connection.
        let _holder = squat(&name, Some(0));
        let _first = connect(name.as_bytes()).unwrap().expect("room for one");
        assert!(connect(name.as_bytes()).unwrap().is_none(), "backlog full");
        let (got, took) = within(Duration::from_secs(3), move || {
            let t = Instant::now();
            let got = acquire(&name, t + Duration::from_millis(200)).is_some();
            (got, t.elapsed())
        });
        assert!(!got);
        assert!(took >= Duration::from_millis(200), "{took:?}");
        // Loose: a loaded CI machine; `within` catches a blocked connect.
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn a_bound_socket_that_does_not_listen_is_no_holder() {
        let name = unique("deaf");
        let _squatter = squat(&name, None);
        let t = Instant::now();
        assert!(acquire(&name, t + Duration::from_secs(5)).is_none());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn the_peer_of_a_holder_of_ours_is_us() {
        let name = unique("peer");
        let _held = acquire(&name, Instant::now()).expect("free lock");
        let s = connect(name.as_bytes()).unwrap().unwrap();
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(peer_uid(&s).unwrap(), unsafe { libc::geteuid() });
    }

    /// A holder of another uid (here a thread that listens as uid 65534) is ignored at
    /// once instead of waited for.
    #[test]
    fn a_squatter_of_another_uid_is_ignored_at_once() {
        if !testbed::privileged("a_squatter_of_another_uid_is_ignored_at_once", &[]) {
            return;
        }
        let name = unique("uid");
        let n = name.clone();
        // Credentials are per thread in Linux (glibc's setuid changes every thread; the
        // raw system call only this one): the socket listens as 65534, then the thread
        // is root again.
        let squatter = std::thread::spawn(move || {
            let set = |euid: libc::uid_t| {
                // SAFETY: setresuid takes plain integers; -1 leaves an id as it is.
                let r = unsafe {
                    libc::syscall(libc::SYS_setresuid, -1i32, euid as libc::c_long, -1i32)
                };
                assert_eq!(r, 0, "{}", io::Error::last_os_error());
            };
            set(65534);
            let fd = squat(&n, Some(16));
            set(0);
            fd
        })
        .join()
        .unwrap();
        let s = connect(name.as_bytes()).unwrap().unwrap();
        assert_eq!(peer_uid(&s).unwrap(), 65534);
        drop(s);
        let t = Instant::now();
        assert!(acquire(&name, t + Duration::from_secs(5)).is_none());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        drop(squatter);
    }

    /// The name outlives a version: processes of two versions must meet on one lock.
    #[test]
    fn names_are_stable() {
        assert_eq!(
            name(&["a:1".into()], "/p", "n1"),
            "ve-alloc/etcd-node/08705822453681df"
        );
    }

    #[test]
    fn names_differ_by_node_and_prefix() {
        let e = ["a:1".to_string()];
        assert_ne!(name(&e, "/p", "n1"), name(&e, "/p", "n2"));
        assert_ne!(name(&e, "/p", "n1"), name(&e, "/q", "n1"));
        assert_ne!(name(&e, "/pn", "1"), name(&e, "/p", "n1"));
        assert!(name(&e, "/p", &"x".repeat(500)).len() < 107);
    }
}
