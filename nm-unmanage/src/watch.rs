//! `--watch`: unmanage matching devices the moment NetworkManager announces them, and
//! all of them again whenever NetworkManager (re)appears on the bus.

use std::{
    collections::{HashMap, VecDeque},
    time::Instant,
};

use futures_util::StreamExt;
use tokio::signal::unix::{signal, SignalKind};
use zbus::{message::Type, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant};

use common::{Error, Result};

use crate::{
    emit,
    nm::{dbus_error, Bus, Device, DEVICE_IFACE, NM_IFACE, NM_NAME, NM_PATH},
    spec::Pattern,
    unmanage::{unmanage_added, unmanage_announced, unmanage_existing, Unmanaged},
};

/// Where NetworkManager's ObjectManager lives.
const OM_PATH: &str = "/org/freedesktop";

/// Run until SIGTERM or SIGINT. Failures on single devices are logged and the watch
/// goes on; losing the bus connection ends it with exit 69.
pub async fn watch(bus: &Bus, patterns: &[Pattern], json: bool) -> Result<()> {
    let conn = bus.connection();
    let rule_err = |e| dbus_error("subscribing to NetworkManager's signals", e);
    // No sender in this rule: a restarting NetworkManager may announce devices before
    // it owns its well-known name again.
    let added_rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .interface(NM_IFACE)
        .member("DeviceAdded")
        .path(NM_PATH)
        .build()
        .map_err(rule_err)?;
    // NetworkManager announces a new device with its properties in the ObjectManager's
    // InterfacesAdded just before DeviceAdded: acting on it saves the round trip that
    // asks for the interface name. The properties are believed only from the sender
    // that owns NetworkManager's name (the bus checks that).
    let props_rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .sender(NM_NAME)
        .path(OM_PATH)
        .interface("org.freedesktop.DBus.ObjectManager")
        .member("InterfacesAdded")
        .build()
        .map_err(rule_err)?;
    let owner_rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .sender("org.freedesktop.DBus")
        .interface("org.freedesktop.DBus")
        .member("NameOwnerChanged")
        .add_arg(NM_NAME)
        .build()
        .map_err(rule_err)?;
    // Subscribe first, list second: a device created in between is then announced to us
    // rather than missed.
    let mut added = MessageStream::for_match_rule(added_rule, conn, None)
        .await
        .map_err(rule_err)?;
    let mut announced = MessageStream::for_match_rule(props_rule, conn, None)
        .await
        .map_err(rule_err)?;
    let mut owners = MessageStream::for_match_rule(owner_rule, conn, None)
        .await
        .map_err(rule_err)?;
    let sig = |kind| signal(kind).map_err(|e| Error::io("installing a signal handler", e));
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;

    let done = unmanage_existing(bus, patterns).await?;
    emit(&done, json, false)?;
    log::info!(
        "watching for new devices matching {}",
        patterns
            .iter()
            .map(Pattern::nm_spec)
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut seen = Seen::default();
    loop {
        tokio::select! {
            _ = term.recv() => {
                log::info!("SIGTERM: stopping");
                return Ok(());
            }
            _ = int.recv() => {
                log::info!("SIGINT: stopping");
                return Ok(());
            }
            msg = announced.next() => {
                let msg = next_message(msg)?;
                let received = Instant::now();
                let Some(device) = announced_device(&msg) else {
                    continue;
                };
                if !seen.insert(&device.path) {
                    continue;
                }
                let result = unmanage_announced(bus, device, patterns).await;
                report_added(result, received, "InterfacesAdded", json)?;
            }
            msg = added.next() => {
                let msg = next_message(msg)?;
                let received = Instant::now();
                let path: OwnedObjectPath = match msg.body().deserialize() {
                    Ok(p) => p,
                    Err(e) => {
                        log::warn!("ignoring a malformed DeviceAdded signal: {e}");
                        continue;
                    }
                };
                if !seen.insert(path.as_str()) {
                    continue;
                }
                let result = unmanage_added(bus, path.as_str(), patterns).await;
                report_added(result, received, "DeviceAdded", json)?;
            }
            msg = owners.next() => {
                let msg = next_message(msg)?;
                let (_, _, new): (String, String, String) = match msg.body().deserialize() {
                    Ok(t) => t,
                    Err(e) => {
                        log::warn!("ignoring a malformed NameOwnerChanged signal: {e}");
                        continue;
                    }
                };
                if new.is_empty() {
                    log::warn!("NetworkManager left the bus; waiting for it to come back");
                    continue;
                }
                // A new NetworkManager knows nothing of the Managed=false we set before,
                // and numbers its devices from 1 again.
                seen = Seen::default();
                log::info!("NetworkManager is back on the bus as {new}; unmanaging again");
                match unmanage_existing(bus, patterns).await {
                    Ok(done) => emit(&done, json, false)?,
                    Err(e) => log::error!("{e}"),
                }
            }
        }
    }
}

/// Report the outcome for one announced device; a failure is logged, not fatal.
fn report_added(
    result: Result<Option<Unmanaged>>,
    received: Instant,
    signal: &str,
    json: bool,
) -> Result<()> {
    match result {
        Ok(Some(mut u)) => {
            let us = received.elapsed().as_micros();
            u.after_signal_us = Some(u64::try_from(us).unwrap_or(u64::MAX));
            log::debug!("{} unmanaged {us} us after {signal}", u.interface);
            emit(&[u], json, false)
        }
        Ok(None) => Ok(()),
        Err(e) => {
            log::error!("{e}");
            Ok(())
        }
    }
}

/// The NetworkManager device in an `InterfacesAdded` signal, if it announces one.
fn announced_device(msg: &zbus::Message) -> Option<Device> {
    type Interfaces = HashMap<String, HashMap<String, OwnedVariant>>;
    let (path, mut ifaces): (OwnedObjectPath, Interfaces) = msg.body().deserialize().ok()?;
    let props = ifaces.remove(DEVICE_IFACE)?;
    Device::from_properties(path.as_str(), props)
}

/// Device paths already handled, so the second announcement of a device (DeviceAdded
/// after InterfacesAdded) costs nothing. NetworkManager never reuses a device path;
/// the last few hundred are plenty.
#[derive(Default)]
struct Seen(VecDeque<String>);

impl Seen {
    /// Whether `path` is new (and remember it).
    fn insert(&mut self, path: &str) -> bool {
        if self.0.iter().any(|p| p == path) {
            return false;
        }
        if self.0.len() == 256 {
            self.0.pop_front();
        }
        self.0.push_back(path.to_string());
        true
    }
}

fn next_message(msg: Option<zbus::Result<zbus::Message>>) -> Result<zbus::Message> {
    match msg {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(dbus_error("receiving from the bus", e)),
        None => Err(Error::unavailable("the bus connection closed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_remembers_recent_paths_only() {
        let mut s = Seen::default();
        assert!(s.insert("/a"));
        assert!(!s.insert("/a"));
        for i in 0..256 {
            s.insert(&format!("/n{i}"));
        }
        assert!(s.insert("/a"), "forgotten after 256 newer ones");
        assert_eq!(s.0.len(), 256);
    }
}
