//! `--watch` for systemd-networkd: with its file in place (the caller wrote it), apply
//! it again whenever networkd (re)appears on the bus, and whenever networkd reports that
//! it is configuring a matching link after all (the file removed, or a networkd that
//! started without it).

use std::collections::HashSet;

use futures_util::StreamExt;
use zbus::{message::Type, MatchRule, MessageStream, OwnedVariant};

use common::{Error, Result};

use crate::{
    emit_released,
    networkd::{self, Networkd, ND_LINK, ND_LINK_PATH, ND_NAME},
    nm::{dbus_error_as, Bus},
    spec::{any_matches, Pattern},
    unmanage::Cause,
    Args,
};

const BUS_NAME: &str = "org.freedesktop.DBus";

/// `AdministrativeState`s that mean networkd has taken the link: anything else
/// (`pending`, `initialized`, `unmanaged`, `linger`) is a link on its way to our file's
/// `Unmanaged=yes`, or gone.
fn taken(state: &str) -> bool {
    matches!(state, "configuring" | "configured" | "failed")
}

/// Run until the caller stops it. Failures on single links are logged and the watch
/// goes on; losing the bus connection ends it with exit 69.
pub async fn watch(bus: &Bus, patterns: &[Pattern], text: &[String], args: &Args) -> Result<()> {
    let conn = bus.connection();
    let rule_err = |e| {
        dbus_error_as(
            "subscribing to systemd-networkd's signals",
            e,
            "systemd-networkd",
        )
    };
    // Believed only from networkd's current unique name, or from the bus itself (any
    // local client may send signals).
    let owner_rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .sender(BUS_NAME)
        .interface(BUS_NAME)
        .member("NameOwnerChanged")
        .add_arg(ND_NAME)
        .build()
        .map_err(rule_err)?;
    let props_rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .sender(ND_NAME)
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .path_namespace(ND_LINK_PATH)
        .add_arg(ND_LINK)
        .build()
        .map_err(rule_err)?;
    let mut owners = MessageStream::for_match_rule(owner_rule, conn, None)
        .await
        .map_err(rule_err)?;
    let mut changes = MessageStream::for_match_rule(props_rule, conn, None)
        .await
        .map_err(rule_err)?;
    let mut owner = bus.networkd_owner().await?;
    // Links re-applied for since networkd last (re)appeared: a link that another file of
    // the administrator's keeps managed is not fought over in a loop.
    let mut tried: HashSet<i32> = HashSet::new();
    let again = || networkd::write(&args.networkd_dir, text);
    loop {
        tokio::select! {
            msg = owners.next() => {
                let msg = next(msg)?;
                if msg.header().sender().map(|s| s.as_str()) != Some(BUS_NAME) {
                    continue;
                }
                let Ok((_, _, new)) = msg.body().deserialize::<(String, String, String)>() else {
                    continue;
                };
                tried.clear();
                if new.is_empty() {
                    log::warn!("systemd-networkd left the bus; waiting for it to come back");
                    owner = None;
                    continue;
                }
                log::info!("systemd-networkd is on the bus as {new}; applying {}", networkd::NETWORK_FILE);
                owner = Some(new);
                match networkd::apply(bus, patterns, again, Cause::Existing, networkd::Reload::Always).await {
                    Ok(done) => emit_released(&done, args.json, false)?,
                    Err(e) => log::error!("{e}"),
                }
            }
            msg = changes.next() => {
                let msg = next(msg)?;
                let header = msg.header();
                let sender = header.sender().map(|s| s.to_string());
                if sender.is_none() || sender != owner {
                    // Maybe the new owner, its NameOwnerChanged not processed yet.
                    let now = bus.networkd_owner().await.unwrap_or(None);
                    if now.is_none() || now != sender {
                        log::debug!("ignoring PropertiesChanged from {sender:?}: not systemd-networkd");
                        continue;
                    }
                    owner = now;
                }
                let Some(ifindex) = header.path().and_then(|p| networkd::ifindex_of(p.as_str())) else {
                    continue;
                };
                type Changed = std::collections::HashMap<String, OwnedVariant>;
                let Ok((_, changed, _)) = msg.body().deserialize::<(String, Changed, Vec<String>)>() else {
                    continue;
                };
                let Some(state) = changed
                    .get("AdministrativeState")
                    .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
                else {
                    continue;
                };
                if !taken(&state) {
                    continue;
                }
                if let Err(e) = reclaim(bus, patterns, ifindex, &state, &mut tried, again, args.json).await {
                    log::error!("{e}");
                }
            }
        }
    }
}

/// networkd is configuring link `ifindex`: when it matches, write the file again (if it
/// went), reload, reconfigure the link, and report it.
async fn reclaim(
    bus: &Bus,
    patterns: &[Pattern],
    ifindex: i32,
    state: &str,
    tried: &mut HashSet<i32>,
    write: impl FnOnce() -> Result<bool>,
    json: bool,
) -> Result<()> {
    let Some(link) = bus.link(ifindex).await? else {
        return Ok(());
    };
    if !any_matches(patterns, &link.name) {
        return Ok(());
    }
    if !tried.insert(ifindex) {
        log::warn!(
            "systemd-networkd still manages {} ({state}) after a reload: another .network \
             file before {} matches it?",
            link.name,
            networkd::NETWORK_FILE
        );
        return Ok(());
    }
    log::info!(
        "systemd-networkd took {} ({state}); releasing it",
        link.name
    );
    write()?;
    bus.reload().await?;
    if bus.reconfigure(ifindex).await? {
        let r = networkd::Released {
            interface: link.name,
            manager: "networkd",
            ifindex,
            was_managed: true,
            state_before: state.to_string(),
            cause: Cause::Added,
        };
        emit_released(&[r], json, false)?;
    }
    Ok(())
}

fn next(msg: Option<zbus::Result<zbus::Message>>) -> Result<zbus::Message> {
    match msg {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(dbus_error_as(
            "receiving from the bus",
            e,
            "systemd-networkd",
        )),
        None => Err(Error::unavailable("the bus connection closed")),
    }
}
