//! One `up` or `down` at a time per network namespace: a rule update is several
//! iptables calls, and two interleaved updates would trip over each other's staging
//! chains. The lock is an abstract unix socket, which belongs to the network namespace
//! and disappears with the process, so nothing is left behind on a crash.

use std::{
    io,
    os::{linux::net::SocketAddrExt, unix::net::SocketAddr, unix::net::UnixListener},
    time::{Duration, Instant},
};

use common::{Error, Exit, Result};

const NAME: &[u8] = b"ve-nat/rules-lock";

/// Held while it lives.
#[derive(Debug)]
pub struct Lock {
    _socket: UnixListener,
}

/// Take the lock, waiting up to `wait` for another ve-nat to finish (exit 75 then).
pub fn acquire(wait: Duration) -> Result<Lock> {
    let addr =
        SocketAddr::from_abstract_name(NAME).map_err(|e| Error::io("naming the lock socket", e))?;
    let start = Instant::now();
    loop {
        match UnixListener::bind_addr(&addr) {
            Ok(s) => return Ok(Lock { _socket: s }),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if start.elapsed() >= wait {
                    return Err(Error::new(
                        Exit::TempFail,
                        "another ve-nat is changing the rules of this network namespace; try again",
                    ));
                }
                log::debug!("waiting for another ve-nat");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::io("taking the ve-nat lock", e)),
        }
    }
}
