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
//! commit alone keeps the store right.

use std::{
    io::Read,
    os::{
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
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [endpoints.join(","), prefix.to_string(), node.to_string()] {
        for b in part.bytes().chain([0]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("ve-alloc/etcd-node/{h:016x}")
}

/// Take the lock `name`, waiting until `until` at most; None when it stayed held (or
/// abstract sockets are not to be had): the caller goes on without it.
pub fn acquire(name: &str, until: Instant) -> Option<NodeLock> {
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
    let mut waited = false;
    loop {
        match UnixListener::bind_addr(&addr) {
            Ok(l) => {
                if waited {
                    log::debug!("took the node's write lock after waiting");
                }
                return Some(NodeLock { _held: l });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
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
        match UnixStream::connect_addr(&addr) {
            // Sleeps until the holder's socket closes (a reset or end of file) or the
            // time is up; the holder never accepts, so nothing is ever read.
            Ok(s) => {
                if s.set_read_timeout(Some(left)).is_ok() {
                    let _ = (&s).read(&mut [0u8; 1]);
                }
            }
            // Bound but not listening yet, or just released: look again shortly.
            Err(_) => std::thread::sleep(left.min(Duration::from_micros(200))),
        }
    }
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

    #[test]
    fn names_differ_by_node_and_prefix() {
        let e = ["a:1".to_string()];
        assert_ne!(name(&e, "/p", "n1"), name(&e, "/p", "n2"));
        assert_ne!(name(&e, "/p", "n1"), name(&e, "/q", "n1"));
        assert_ne!(name(&e, "/pn", "1"), name(&e, "/p", "n1"));
        assert!(name(&e, "/p", &"x".repeat(500)).len() < 107);
    }
}
