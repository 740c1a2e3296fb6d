//! Entering a network namespace on a thread of its own, for test code: sockets opened
//! there belong to the namespace, and the rest of the process stays where it was. (The
//! tools' own code enters namespaces through `common::netns`.)

use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    thread::{self, JoinHandle},
};

/// `setns` the calling thread into the network namespace at `ns` (a file such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`).
pub fn enter(ns: &Path) -> io::Result<()> {
    let f = fs::File::open(ns)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", ns.display())))?;
    enter_fd(&f)
}

/// `setns` the calling thread into the network namespace `fd` refers to (one that may
/// have no name any more).
pub fn enter_fd(fd: &impl AsFd) -> io::Result<()> {
    // SAFETY: setns on the calling thread only; the fd is valid for the call.
    if unsafe { libc::setns(fd.as_fd().as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Run `f` on a new thread that has entered the network namespace at `ns`, and return
/// its result.
pub fn in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let ns = ns.to_path_buf();
    thread::spawn(move || enter(&ns).map(|()| f()))
        .join()
        .map_err(|_| io::Error::other("thread panicked"))?
}

/// Start `f` on a new thread that has entered the network namespace at `ns`; the thread
/// panics (and `join` says so) when it cannot enter.
pub fn spawn_in<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns = ns.to_path_buf();
    thread::spawn(move || {
        enter(&ns).unwrap_or_else(|e| panic!("entering {}: {e}", ns.display()));
        f()
    })
}
