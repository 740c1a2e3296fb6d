//! The one message of the sd_notify protocol the watchers send: `READY=1`, a datagram
//! to the unix socket named by `$NOTIFY_SOCKET` (a leading `@` means the abstract
//! namespace), so that a `Type=notify` unit is started only once its first work is
//! done (nm-unmanage's runtime drop-in in place, ve-nat's rules applied).

use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt, net::UnixDatagram},
};

use crate::Error;

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Send `READY=1` when `$NOTIFY_SOCKET` is set; nothing otherwise. A failure is only
/// logged, as sd_notify(3) callers do: a stale variable inherited from elsewhere must
/// not stop the watch, and under systemd a missing READY=1 shows as a start timeout.
pub fn ready() {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    match send(&target, b"READY=1") {
        Ok(()) => log::debug!("sent READY=1 to {target:?}"),
        Err(e) => log::warn!(
            "{}",
            Error::io(
                format!("telling the service manager we are ready ({NOTIFY_SOCKET}={target:?})"),
                e,
            )
        ),
    }
}

fn send(target: &OsStr, msg: &[u8]) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg, &addr)?;
        }
        None => {
            sock.send_to(msg, target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_to_a_path_and_to_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("nmu-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), b"READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("nmu-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), b"READY=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
