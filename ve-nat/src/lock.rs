//! One `up` or `down` at a time: a rule update is several iptables calls, and two
//! interleaved updates would trip over each other's staging chains.
//!
//! The lock is `flock` on `/run/ve-nat/lock`, a file only its owner (root) can open, in
//! a directory only root can write, so no other user can take it and make ve-nat wait.
//! It is one lock for every network namespace that shares this /run: updates are rare
//! and short, and a file per namespace would be left behind by every namespace that ever
//! ran ve-nat. `VE_NAT_LOCK_DIR` puts it elsewhere (tests and sandboxes, which must not
//! write the machine's /run). The kernel drops a `flock` when its last descriptor
//! closes, so a crash leaves nothing to clean up.
//!
//! The descriptor is inherited by the iptables processes ve-nat runs: a ve-nat killed
//! while one of them is still at work holds the lock, through that child, until the
//! child has finished, so the next `up` never races a dead one's last change.

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    },
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{Error, Kind, Result};

/// Where the lock file lives unless `VE_NAT_LOCK_DIR` says otherwise.
pub const DIR: &str = "/run/ve-nat";
/// The environment variable that moves the lock directory.
pub const DIR_ENV: &str = "VE_NAT_LOCK_DIR";
const FILE: &str = "lock";

/// Held while it lives.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

fn dir() -> PathBuf {
    std::env::var_os(DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DIR))
}

/// Refuse a directory or file that someone else could replace or open.
fn check_owned(what: &str, path: &std::path::Path, md: &fs::Metadata, others: u32) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if md.uid() != euid || md.mode() & others != 0 {
        return Err(Error::config(format!(
            "refusing the ve-nat lock {what} {}: it must belong to uid {euid} and not be \
             {} by others (mode {:o}, owner {})",
            path.display(),
            if others == 0o022 {
                "writable"
            } else {
                "accessible"
            },
            md.mode() & 0o7777,
            md.uid()
        )));
    }
    Ok(())
}

fn open() -> Result<File> {
    let dir = dir();
    match fs::DirBuilder::new().mode(0o755).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::io(
                format!("creating the lock directory {}", dir.display()),
                e,
            ))
        }
    }
    let md = fs::symlink_metadata(&dir)
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    if !md.is_dir() {
        return Err(Error::config(format!(
            "the ve-nat lock directory {} is not a directory",
            dir.display()
        )));
    }
    check_owned("directory", &dir, &md, 0o022)?;
    let path = dir.join(FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::io(format!("opening the lock {}", path.display()), e))?;
    let md = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    check_owned("file", &path, &md, 0o077)?;
    // Inherited by the iptables children (see the module comment).
    // SAFETY: F_SETFD on a descriptor we own; no memory is involved.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
        return Err(Error::io(
            format!("keeping {} open for iptables", path.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(file)
}

/// Take the lock, waiting up to `wait` for another ve-nat to finish (exit 75 then).
pub fn acquire(wait: Duration) -> Result<Lock> {
    let file = open()?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Lock { _file: file }),
            Err(TryLockError::WouldBlock) => {
                if start.elapsed() >= wait {
                    return Err(Error::new(
                        Kind::Busy,
                        "another ve-nat is changing the rules; try again",
                    ));
                }
                log::debug!("waiting for another ve-nat");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io("taking the ve-nat lock", e)),
        }
    }
}
