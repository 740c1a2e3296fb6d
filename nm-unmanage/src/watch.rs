//! `--watch`: unmanage matching devices the moment NetworkManager announces them, and
//! all of them again whenever NetworkManager (re)appears on the bus.

use std::time::Instant;

use futures_util::StreamExt;
use tokio::signal::unix::{signal, SignalKind};
use zbus::{message::Type, MatchRule, MessageStream, OwnedObjectPath};

use common::{Error, Result};

use crate::{
    emit,
    nm::{dbus_error, Bus, NM_IFACE, NM_NAME, NM_PATH},
    spec::Pattern,
    unmanage::{unmanage_added, unmanage_existing},
};

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
                match unmanage_added(bus, path.as_str(), patterns).await {
                    Ok(Some(mut u)) => {
                        let us = received.elapsed().as_micros();
                        u.after_signal_us = Some(u64::try_from(us).unwrap_or(u64::MAX));
                        log::debug!("{} unmanaged {us} us after DeviceAdded", u.interface);
                        emit(&[u], json, false)?;
                    }
                    Ok(None) => {}
                    Err(e) => log::error!("{e}"),
                }
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
                // A new NetworkManager knows nothing of the Managed=false we set before.
                log::info!("NetworkManager is back on the bus as {new}; unmanaging again");
                match unmanage_existing(bus, patterns).await {
                    Ok(done) => emit(&done, json, false)?,
                    Err(e) => log::error!("{e}"),
                }
            }
        }
    }
}

fn next_message(msg: Option<zbus::Result<zbus::Message>>) -> Result<zbus::Message> {
    match msg {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(dbus_error("receiving from the bus", e)),
        None => Err(Error::unavailable("the bus connection closed")),
    }
}
