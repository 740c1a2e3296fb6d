//! The NetworkManager D-Bus calls the tool needs, behind a small trait, and their zbus
//! implementation on a connection to the system bus.

use std::{collections::HashMap, time::Duration};

use common::{Error, Kind, Result};
use zbus::{Connection, OwnedObjectPath, OwnedVariant, Variant};

pub const NM_NAME: &str = "org.freedesktop.NetworkManager";
pub const NM_PATH: &str = "/org/freedesktop/NetworkManager";
pub const NM_IFACE: &str = "org.freedesktop.NetworkManager";
pub const DEVICE_IFACE: &str = "org.freedesktop.NetworkManager.Device";
const PROPS_IFACE: &str = "org.freedesktop.DBus.Properties";

/// `NMDeviceState` value of an unmanaged device.
pub const STATE_UNMANAGED: u32 = 10;

/// `Reload` flag: re-read NetworkManager.conf and conf.d only (not DNS).
const RELOAD_CONF: u32 = 0x1;

/// What the tool needs to know about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: String,
    pub interface: String,
    pub managed: bool,
    pub state: u32,
}

impl Device {
    /// From the properties of the `org.freedesktop.NetworkManager.Device` interface.
    pub fn from_properties(path: &str, mut props: HashMap<String, OwnedVariant>) -> Option<Device> {
        let mut take = |k: &str| props.remove(k);
        Some(Device {
            path: path.to_string(),
            interface: String::try_from(take("Interface")?).ok()?,
            managed: bool::try_from(take("Managed")?).ok()?,
            state: u32::try_from(take("State")?).ok()?,
        })
    }
}

/// The NetworkManager operations the tool performs. A device that disappears while it
/// is being looked at (a container stopping) is not an error: `device` returns `None`
/// and `set_unmanaged` returns `false`.
#[allow(async_fn_in_trait)]
pub trait Nm {
    /// Every realized device.
    async fn devices(&self) -> Result<Vec<Device>>;
    /// One device by object path.
    async fn device(&self, path: &str) -> Result<Option<Device>>;
    /// Set `Managed=false`; `false` when the device is gone.
    async fn set_unmanaged(&self, path: &str) -> Result<bool>;
    /// Ask NetworkManager to re-read its configuration files.
    async fn reload_config(&self) -> Result<()>;
    /// The unique bus name that owns NetworkManager's name now, if any (the bus's answer).
    async fn owner(&self) -> Result<Option<String>>;
}

/// NetworkManager over a zbus connection.
#[derive(Debug, Clone)]
pub struct Bus {
    conn: Connection,
}

/// How long any one D-Bus exchange may take unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connect to the bus at `address`, every later method call on the connection bounded
/// by `timeout` as well. Failing to reach the bus ([`Kind::Unavailable`]), or no answer
/// within `timeout` ([`Kind::NoAnswer`]), is 69; a refusal is "permission denied" (77): a socket we may not open,
/// rejected credentials, or a bus that hangs up on us during the handshake (what
/// dbus-daemon does to a user its policy does not allow to connect).
pub async fn connect(address: &str, timeout: Duration) -> Result<Connection> {
    let doing = format!("connecting to the system bus at {address}");
    let build = zbus::connection::Builder::address(address)
        .method_timeout(timeout)
        .build();
    match tokio::time::timeout(timeout, build).await {
        Err(_) => Err(Error::new(
            Kind::NoAnswer,
            format!("{doing}: no answer within {} (--timeout)", seconds(timeout)),
        )),
        Ok(Ok(conn)) => Ok(conn),
        // dbus-daemon hangs up on a user its policy does not let connect. Root is let in
        // by every policy we know, so for root a hang-up is a bus going away (a restart,
        // a crash): unavailable, which --if-running forgives.
        Ok(Err(zbus::Error::InputOutput(io))) if hung_up(io.kind()) && !is_root() => {
            Err(Error::new(
                Kind::Permission,
                format!(
                    "{doing}: permission denied: the bus closed the connection during the \
                     handshake (its policy does not let this user connect)"
                ),
            ))
        }
        Ok(Err(zbus::Error::InputOutput(io))) if hung_up(io.kind()) => Err(Error::unavailable(
            format!("{doing}: the bus closed the connection during the handshake"),
        )),
        Ok(Err(e)) => Err(dbus_error(&doing, e)),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The peer closed the connection on us.
fn hung_up(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        BrokenPipe | UnexpectedEof | ConnectionReset | ConnectionAborted
    )
}

/// `5 s`, `0.5 s`.
pub fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

impl Bus {
    pub fn new(conn: Connection) -> Bus {
        Bus { conn }
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Whether NetworkManager owns its name on this bus.
    pub async fn nm_running(&self) -> Result<bool> {
        self.has_owner(NM_NAME, "NetworkManager").await
    }

    /// The unique name that owns NetworkManager's name on this bus now, if any.
    pub async fn nm_owner(&self) -> Result<Option<String>> {
        self.owner_of(NM_NAME, "NetworkManager").await
    }

    /// Whether `name` (the service `who`) has an owner on this bus.
    pub async fn has_owner(&self, name: &str, who: &str) -> Result<bool> {
        let doing = format!("asking the bus for {who}");
        let reply = self
            .conn
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "NameHasOwner",
                &(name,),
            )
            .await
            .map_err(|e| dbus_error(&doing, e))?;
        reply
            .body()
            .deserialize::<bool>()
            .map_err(|e| dbus_error("reading NameHasOwner", e))
    }

    /// The unique name that owns `name` (the service `who`) now, if any.
    pub async fn owner_of(&self, name: &str, who: &str) -> Result<Option<String>> {
        let reply = match self
            .conn
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "GetNameOwner",
                &(name,),
            )
            .await
        {
            Ok(r) => r,
            Err(e) if is_missing_service(&e) => return Ok(None),
            Err(e) => return Err(dbus_error(&format!("asking the bus for {who}"), e)),
        };
        reply
            .body()
            .deserialize::<String>()
            .map(Some)
            .map_err(|e| dbus_error("reading GetNameOwner", e))
    }

    async fn call<B>(
        &self,
        path: &str,
        iface: &str,
        method: &str,
        body: &B,
    ) -> zbus::Result<zbus::Message>
    where
        B: serde::Serialize + zbus::DynamicType,
    {
        self.conn
            .call_method(Some(NM_NAME), path, Some(iface), method, body)
            .await
    }
}

impl Nm for Bus {
    async fn devices(&self) -> Result<Vec<Device>> {
        let reply = match self.call(NM_PATH, NM_IFACE, "GetDevices", &()).await {
            Ok(r) => r,
            // It owns its name but has not exported its objects yet.
            Err(e) if is_gone(&e) => {
                return Err(Error::unavailable(
                    "listing NetworkManager devices: NetworkManager is still starting",
                ))
            }
            Err(e) => return Err(dbus_error("listing NetworkManager devices", e)),
        };
        let paths: Vec<OwnedObjectPath> = reply
            .body()
            .deserialize()
            .map_err(|e| dbus_error("reading GetDevices", e))?;
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            if let Some(d) = self.device(p.as_str()).await? {
                out.push(d);
            }
        }
        Ok(out)
    }

    async fn device(&self, path: &str) -> Result<Option<Device>> {
        let reply = match self
            .call(path, PROPS_IFACE, "GetAll", &(DEVICE_IFACE,))
            .await
        {
            Ok(r) => r,
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(dbus_error(&format!("reading device {path}"), e)),
        };
        let props: HashMap<String, OwnedVariant> = reply
            .body()
            .deserialize()
            .map_err(|e| dbus_error(&format!("reading device {path}"), e))?;
        Device::from_properties(path, props)
            .map(Some)
            .ok_or_else(|| {
                Error::internal(format!(
                    "device {path}: NetworkManager did not report Interface, Managed and State"
                ))
            })
    }

    async fn set_unmanaged(&self, path: &str) -> Result<bool> {
        let value = Variant::from(false);
        match self
            .call(path, PROPS_IFACE, "Set", &(DEVICE_IFACE, "Managed", &value))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_gone(&e) => Ok(false),
            Err(e) => Err(dbus_error(&format!("setting Managed=false on {path}"), e)),
        }
    }

    async fn reload_config(&self) -> Result<()> {
        self.call(NM_PATH, NM_IFACE, "Reload", &(RELOAD_CONF,))
            .await
            .map(drop)
            .map_err(|e| dbus_error("asking NetworkManager to reload its configuration", e))
    }

    async fn owner(&self) -> Result<Option<String>> {
        self.nm_owner().await
    }
}

/// The D-Bus error name of a method error, if it is one.
pub(crate) fn error_name(e: &zbus::Error) -> Option<String> {
    name_and_detail(e).map(|(name, _)| name)
}

/// The D-Bus error name of a method error and its description, if it is one.
fn name_and_detail(e: &zbus::Error) -> Option<(String, Option<String>)> {
    match e {
        zbus::Error::MethodError(name, detail, _) => {
            Some((name.as_str().to_string(), detail.clone()))
        }
        zbus::Error::FDO(f) => {
            let f: &dyn zbus::DBusError = f.as_ref();
            Some((
                f.name().as_str().to_string(),
                f.description().map(str::to_string),
            ))
        }
        zbus::Error::DBus(d) => Some((
            d.name().as_str().to_string(),
            d.description().map(str::to_string),
        )),
        _ => None,
    }
}

/// The device object vanished between the signal or listing and our call.
pub(crate) fn is_gone(e: &zbus::Error) -> bool {
    matches!(
        error_name(e).as_deref(),
        Some(
            "org.freedesktop.DBus.Error.UnknownObject"
                | "org.freedesktop.DBus.Error.UnknownMethod"
                | "org.freedesktop.DBus.Error.UnknownInterface"
        )
    )
}

/// Turn a zbus error into the tool's error of the right kind (see [`kind_for`]).
/// A method error's message names the D-Bus error.
pub fn dbus_error(doing: &str, e: zbus::Error) -> Error {
    dbus_error_as(doing, e, "NetworkManager")
}

/// [`dbus_error`] for a call to the service `who` (named in the hint for a missing
/// service).
pub fn dbus_error_as(doing: &str, e: zbus::Error, who: &str) -> Error {
    let kind = kind_for(&e);
    let text = match (&e, name_and_detail(&e)) {
        (_, Some((name, Some(detail)))) if !detail.is_empty() => format!("{detail} ({name})"),
        (_, Some((name, _))) => name,
        (zbus::Error::InputOutput(io), None) if io.kind() == std::io::ErrorKind::TimedOut => {
            "no answer in time (--timeout)".to_string()
        }
        (zbus::Error::InputOutput(io) | zbus::Error::Connection(io, _), None) => {
            Error::from(std::io::Error::new(io.kind(), io.to_string()))
                .message()
                .to_string()
        }
        (other, None) => other.to_string(),
    };
    // One line, whatever the peer put into its error description.
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let hint = if kind == Kind::Unavailable && is_missing_service(&e) {
        format!(" (is {who} running on this bus?)")
    } else {
        String::new()
    };
    Error::new(kind, format!("{doing}: {text}{hint}"))
}

pub(crate) fn is_missing_service(e: &zbus::Error) -> bool {
    matches!(
        error_name(e).as_deref(),
        Some(
            "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner"
        )
    )
}

/// The kind of a D-Bus failure (exit code in front):
/// - 69: NetworkManager (or the bus) is not there (no such name, service unknown,
///   disconnected, a broken connection: [`Kind::Unavailable`]) or does not answer (no
///   reply, a timeout: [`Kind::NoAnswer`]);
/// - 77: refused: the bus policy, polkit, NetworkManager's own permission checks, or
///   the bus rejecting our credentials;
/// - 70: any other error of the D-Bus protocol family (`org.freedesktop.DBus.Error.*`,
///   e.g. InvalidArgs, UnknownMethod) or a reply we cannot read: we and NetworkManager
///   disagree about the interface;
/// - 71: any other error NetworkManager raised itself (e.g.
///   `org.freedesktop.NetworkManager.Failed`): the operation failed on its side;
/// - 64: a malformed bus address.
fn kind_for(e: &zbus::Error) -> Kind {
    if let Some(name) = error_name(e) {
        return match name.as_str() {
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner"
            | "org.freedesktop.DBus.Error.Disconnected"
            | "org.freedesktop.DBus.Error.NoServer" => Kind::Unavailable,
            "org.freedesktop.DBus.Error.NoReply"
            | "org.freedesktop.DBus.Error.Timeout"
            | "org.freedesktop.DBus.Error.TimedOut" => Kind::NoAnswer,
            "org.freedesktop.DBus.Error.AccessDenied"
            | "org.freedesktop.DBus.Error.AuthFailed"
            | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" => Kind::Permission,
            n if n.starts_with("org.freedesktop.NetworkManager")
                && n.ends_with(".PermissionDenied") =>
            {
                Kind::Permission
            }
            n if n.starts_with("org.freedesktop.DBus.Error.") => Kind::Internal,
            _ => Kind::Os,
        };
    }
    match e {
        zbus::Error::InputOutput(io) | zbus::Error::Connection(io, _)
            if io.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Kind::Permission
        }
        zbus::Error::InputOutput(io) if io.kind() == std::io::ErrorKind::TimedOut => Kind::NoAnswer,
        zbus::Error::InputOutput(_) | zbus::Error::Connection(..) => Kind::Unavailable,
        // The bus refused our credentials.
        zbus::Error::Handshake(_) => Kind::Permission,
        zbus::Error::Address(_) => Kind::Usage,
        // A reply of the wrong shape, or zbus refusing what we asked of it.
        _ => Kind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use std::{io, sync::Arc};

    use common::Exit;

    use super::*;

    #[test]
    fn bus_errors_map_to_exit_codes() {
        let io_err = |kind| zbus::Error::InputOutput(Arc::new(io::Error::from(kind)));
        let e = dbus_error("connecting", io_err(io::ErrorKind::PermissionDenied));
        assert_eq!(e.exit(), Exit::NoPerm);
        assert!(
            e.to_string().starts_with("connecting: permission denied"),
            "{e}"
        );
        let e = dbus_error("connecting", io_err(io::ErrorKind::NotFound));
        assert_eq!((e.kind(), e.exit()), (Kind::Unavailable, Exit::Unavailable));
        let e = dbus_error("connecting", io_err(io::ErrorKind::ConnectionRefused));
        assert_eq!(e.exit(), Exit::Unavailable);
        let e = dbus_error("connecting", zbus::Error::Handshake("rejected".into()));
        assert_eq!(e.exit(), Exit::NoPerm);
        let e = dbus_error("x", zbus::Error::Address("bad".into()));
        assert_eq!(e.exit(), Exit::Usage);
        let denied = zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied("no".into())));
        assert_eq!(dbus_error("x", denied).exit(), Exit::NoPerm);
        let unknown = zbus::Error::FDO(Box::new(zbus::fdo::Error::ServiceUnknown("no".into())));
        let e = dbus_error("x", unknown);
        assert_eq!(e.exit(), Exit::Unavailable);
        assert!(e.to_string().contains("is NetworkManager running"), "{e}");
        let gone = zbus::Error::FDO(Box::new(zbus::fdo::Error::UnknownObject("gone".into())));
        assert!(is_gone(&gone));
    }

    /// A method error as zbus returns it from a call: name, description.
    fn method_error(name: &str, detail: &str) -> zbus::Error {
        let call = zbus::Message::method_call("/x", "Get")
            .sender(":1.1")
            .build(&())
            .unwrap();
        let reply = zbus::Message::error(&call.header(), name)
            .build(&(detail,))
            .unwrap();
        zbus::Error::from(reply)
    }

    #[test]
    fn method_errors_map_by_name() {
        for (name, exit) in [
            (
                "org.freedesktop.DBus.Error.ServiceUnknown",
                Exit::Unavailable,
            ),
            (
                "org.freedesktop.DBus.Error.NameHasNoOwner",
                Exit::Unavailable,
            ),
            ("org.freedesktop.DBus.Error.NoReply", Exit::Unavailable),
            ("org.freedesktop.DBus.Error.Disconnected", Exit::Unavailable),
            ("org.freedesktop.DBus.Error.AccessDenied", Exit::NoPerm),
            (
                "org.freedesktop.NetworkManager.PermissionDenied",
                Exit::NoPerm,
            ),
            (
                "org.freedesktop.NetworkManager.Settings.PermissionDenied",
                Exit::NoPerm,
            ),
            ("org.freedesktop.DBus.Error.InvalidArgs", Exit::Software),
            ("org.freedesktop.DBus.Error.UnknownMethod", Exit::Software),
            (
                "org.freedesktop.DBus.Error.PropertyReadOnly",
                Exit::Software,
            ),
            ("org.freedesktop.NetworkManager.Failed", Exit::OsErr),
            (
                "org.freedesktop.NetworkManager.Device.NotAllowed",
                Exit::OsErr,
            ),
        ] {
            let e = dbus_error("setting Managed=false", method_error(name, "it said\nno"));
            assert_eq!(e.exit(), exit, "{name}: {e}");
            // One line, with the D-Bus error name in it.
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("setting Managed=false: it said no ({name})")),
                "{text}"
            );
            assert!(!text.contains('\n'), "{text}");
        }
        // The same names from zbus's own error types.
        let bad = zbus::Error::FDO(Box::new(zbus::fdo::Error::InvalidArgs("nope".into())));
        let e = dbus_error("x", bad);
        assert_eq!(e.exit(), Exit::Software);
        assert!(
            e.to_string()
                .contains("org.freedesktop.DBus.Error.InvalidArgs"),
            "{e}"
        );
        let no_reply = zbus::Error::FDO(Box::new(zbus::fdo::Error::NoReply("late".into())));
        let e = dbus_error("x", no_reply);
        assert_eq!((e.kind(), e.exit()), (Kind::NoAnswer, Exit::Unavailable));
        let late = zbus::Error::InputOutput(Arc::new(io::Error::from(io::ErrorKind::TimedOut)));
        let e = dbus_error("x", late);
        assert_eq!((e.kind(), e.exit()), (Kind::NoAnswer, Exit::Unavailable));
        // A reply we cannot read is our problem, not a missing service.
        assert_eq!(
            dbus_error("reading GetDevices", zbus::Error::IncorrectType).exit(),
            Exit::Software
        );
    }
}
