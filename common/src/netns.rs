//! Network namespace handles: a path, a name under /run/netns or a process id, opened as
//! an fd, and entered only on a thread of its own or for one call and straight back.

use std::{
    fmt,
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    thread,
};

use crate::{Error, Result};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// `NS_GET_NSTYPE` from <linux/nsfs.h>: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// How a user names a network namespace on a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsSpec {
    /// A file: `/run/netns/foo`, `/proc/PID/ns/net`, any bind mount of one.
    Path(PathBuf),
    /// A name under /run/netns (`ip netns add NAME`).
    Name(String),
    /// The namespace of a running process.
    Pid(u32),
}

impl NetnsSpec {
    /// `--netns` text: anything with a `/` is a path, anything else a name under
    /// /run/netns. A name must be a plain file name (no `.`/`..`, no control characters).
    pub fn parse(text: &str) -> Result<Self> {
        if text.is_empty() {
            return Err(Error::data("invalid network namespace: empty"));
        }
        if text.contains('\0') {
            return Err(Error::data(format!(
                "invalid network namespace {text:?}: contains a NUL byte"
            )));
        }
        if text.contains('/') {
            return Ok(NetnsSpec::Path(PathBuf::from(text)));
        }
        if text == "." || text == ".." || text.chars().any(char::is_control) {
            return Err(Error::data(format!(
                "invalid network namespace name {text:?}"
            )));
        }
        Ok(NetnsSpec::Name(text.to_string()))
    }

    /// The file this spec refers to.
    pub fn path(&self) -> PathBuf {
        match self {
            NetnsSpec::Path(p) => p.clone(),
            NetnsSpec::Name(n) => Path::new(NETNS_DIR).join(n),
            NetnsSpec::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        }
    }

    /// Open the namespace. A missing file or process is exit 66, a file that is not a
    /// network namespace (an `ip netns` name whose mount is gone) too; no permission 77.
    pub fn open(&self) -> Result<Netns> {
        let path = self.path();
        let label = self.to_string();
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::no_input(format!("network namespace {label} does not exist"))
            } else {
                Error::io(format!("opening network namespace {label}"), e)
            }
        })?;
        // SAFETY: ioctl on an fd we own; NS_GET_NSTYPE takes no argument.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(Error::no_input(format!(
                "{label} is not a network namespace (deleted, or not a namespace file)"
            )));
        }
        Ok(Netns {
            fd: file.into(),
            label,
        })
    }
}

impl fmt::Display for NetnsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetnsSpec::Path(p) => write!(f, "{}", p.display()),
            NetnsSpec::Name(n) => write!(f, "{NETNS_DIR}/{n}"),
            NetnsSpec::Pid(pid) => write!(f, "of process {pid}"),
        }
    }
}

/// An open network namespace. Holding it keeps the namespace alive.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    label: String,
}

impl Netns {
    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        let file = File::open("/proc/thread-self/ns/net")
            .map_err(|e| Error::io("opening the current network namespace", e))?;
        Ok(Netns {
            fd: file.into(),
            label: "current".into(),
        })
    }

    /// How the user named it, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The device and inode numbers that identify the namespace: two handles refer to
    /// the same namespace exactly when these are equal.
    pub fn id(&self) -> Result<(u64, u64)> {
        // SAFETY: fstat into a zeroed stat buffer on an fd we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) };
        if rc != 0 {
            return Err(Error::io(
                format!("inspecting network namespace {}", self.label),
                io::Error::last_os_error(),
            ));
        }
        Ok((st.st_dev, st.st_ino))
    }

    /// Move the calling thread into this namespace. Only ever call this on a thread of
    /// its own (see [`Netns::spawn`]), or for one call and straight back to a handle of
    /// the thread's own namespace ([`Netns::current`]), as ve-link opens its container
    /// socket: everything created on the thread meanwhile, such as a netlink socket,
    /// belongs to this namespace.
    pub fn enter(&self) -> Result<()> {
        // SAFETY: setns on a valid namespace fd; affects only the calling thread.
        let rc = unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(Error::io(
                format!("entering network namespace {}", self.label),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Run `f` on a new thread that has entered this namespace; the thread ends with
    /// `f`, so no other work ever runs in the wrong namespace.
    pub fn spawn<T, F>(&self, name: &str, f: F) -> Result<thread::JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| Error::io("duplicating a namespace fd", e))?;
        let ns = Netns {
            fd,
            label: self.label.clone(),
        };
        thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                ns.enter()?;
                drop(ns);
                f()
            })
            .map_err(|e| Error::io("starting a thread", e))
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_paths_or_names() {
        assert_eq!(
            NetnsSpec::parse("/proc/1/ns/net").unwrap().path(),
            PathBuf::from("/proc/1/ns/net")
        );
        assert_eq!(
            NetnsSpec::parse("foo").unwrap().path(),
            PathBuf::from("/run/netns/foo")
        );
        assert_eq!(NetnsSpec::Pid(42).path(), PathBuf::from("/proc/42/ns/net"));
        for bad in ["", "..", ".", "a\nb"] {
            assert_eq!(NetnsSpec::parse(bad).unwrap_err().code(), 65, "{bad:?}");
        }
    }

    #[test]
    fn missing_namespaces_are_exit_66() {
        let e = NetnsSpec::parse("ve-test-no-such-namespace")
            .unwrap()
            .open()
            .unwrap_err();
        assert_eq!(e.code(), 66, "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = NetnsSpec::Path("/etc/hostname".into()).open().unwrap_err();
        assert_eq!(e.code(), 66, "{e}");
    }

    #[test]
    fn current_namespace_has_a_stable_id() {
        let a = Netns::current().unwrap();
        let b = NetnsSpec::Pid(std::process::id()).open().unwrap();
        assert_eq!(a.id().unwrap(), b.id().unwrap());
    }
}
