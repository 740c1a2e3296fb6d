//! `--watch`: unmanage matching devices the moment NetworkManager announces them, and
//! all of them again whenever NetworkManager (re)appears on the bus.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use zbus::{message::Type, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant};

use common::{Error, Kind, Result};

use crate::{
    emit,
    nm::{dbus_error, seconds, Bus, Device, Nm, DEVICE_IFACE, NM_IFACE, NM_NAME, NM_PATH},
    spec::Pattern,
    unmanage::{unmanage_added, unmanage_announced, unmanage_existing, Outcome, Unmanaged},
};

/// Where NetworkManager's ObjectManager lives.
const OM_PATH: &str = "/org/freedesktop";

/// The bus daemon's own name: the sender of `NameOwnerChanged`.
const BUS_NAME: &str = "org.freedesktop.DBus";

/// How long NetworkManager may own its name without answering (or while it is still
/// starting) before the watcher gives up with exit 69, as a multiple of the D-Bus
/// timeout: a NetworkManager whose start never finishes must not leave a watcher idling
/// where its service manager cannot see it (`Restart=on-failure` then restarts it).
pub const START_BOUND_TIMEOUTS: u32 = 6;

/// How often a NetworkManager that owns its name but did not answer is asked again.
const RETRY: Duration = Duration::from_secs(1);

/// Run until the caller stops it (the caller races this against SIGTERM and SIGINT).
/// NetworkManager need not be on the bus yet: the watch starts as soon as it appears.
/// Failures on single devices are logged and the watch goes on (a later announcement of
/// the device retries it); losing the bus connection, or a NetworkManager that owns its
/// name but does not answer for [`START_BOUND_TIMEOUTS`] times `timeout`, ends it with
/// exit 69.
pub async fn watch(bus: &Bus, patterns: &[Pattern], json: bool, timeout: Duration) -> Result<()> {
    let conn = bus.connection();
    let rule_err = |e| dbus_error("subscribing to NetworkManager's signals", e);
    // Any local client may broadcast a DeviceAdded (or send one, or any other signal,
    // straight to us), so every signal is believed only from its rightful sender, checked
    // here against the message header: NetworkManager's current unique name (tracked
    // through NameOwnerChanged), or the bus itself. A restarting NetworkManager that
    // announces devices before it owns its name again loses nothing: when it takes the
    // name, every device it has is listed anyway.
    let added_rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .sender(NM_NAME)
        .interface(NM_IFACE)
        .member("DeviceAdded")
        .path(NM_PATH)
        .build()
        .map_err(rule_err)?;
    // NetworkManager announces a new device with its properties in the ObjectManager's
    // InterfacesAdded just before DeviceAdded: acting on it saves the round trip that
    // asks for the interface name.
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
        .sender(BUS_NAME)
        .interface(BUS_NAME)
        .member("NameOwnerChanged")
        .add_arg(NM_NAME)
        .build()
        .map_err(rule_err)?;
    // Subscribe first, look second: a device created (or a NetworkManager started) in
    // between is then announced to us rather than missed.
    let mut added = MessageStream::for_match_rule(added_rule, conn, None)
        .await
        .map_err(rule_err)?;
    let mut announced = MessageStream::for_match_rule(props_rule, conn, None)
        .await
        .map_err(rule_err)?;
    let mut owners = MessageStream::for_match_rule(owner_rule, conn, None)
        .await
        .map_err(rule_err)?;

    let mut state = State {
        owner: bus.nm_owner().await?,
        seen: Seen::default(),
    };
    let specs = patterns
        .iter()
        .map(Pattern::nm_spec)
        .collect::<Vec<_>>()
        .join(", ");
    let bound = timeout * START_BOUND_TIMEOUTS;
    // Since when NetworkManager has owned its name without answering, and when to ask
    // it again.
    let mut pending: Option<(Instant, Instant)> = None;
    if state.owner.is_some() {
        pending = catch_up(bus, patterns, json, None).await?;
        log::info!("watching for new devices matching {specs}");
    } else {
        log::warn!("NetworkManager is not on the bus yet; waiting for it, to keep it off {specs}");
    }

    loop {
        let retry_at = pending.map(|(_, at)| at);
        tokio::select! {
            _ = sleep_until(retry_at), if retry_at.is_some() => {
                let since = pending.map(|(since, _)| since);
                pending = catch_up(bus, patterns, json, since).await?;
                if let Some((since, _)) = pending {
                    if since.elapsed() >= bound {
                        return Err(Error::new(
                            Kind::NoAnswer,
                            format!(
                                "NetworkManager has owned its bus name for {} without \
                                 answering (a start that never finished?); giving up",
                                seconds(bound)
                            ),
                        ));
                    }
                }
            }
            msg = announced.next() => {
                let msg = next_message(msg)?;
                let received = Instant::now();
                if !state.sent_by_nm(bus, &msg).await {
                    continue;
                }
                let Some(device) = announced_device(&msg) else {
                    continue;
                };
                let result = state.handle(bus, Announced::Device(device), patterns).await;
                report_added(result, received, "InterfacesAdded", json)?;
            }
            msg = added.next() => {
                let msg = next_message(msg)?;
                let received = Instant::now();
                if !state.sent_by_nm(bus, &msg).await {
                    continue;
                }
                let path: OwnedObjectPath = match msg.body().deserialize() {
                    Ok(p) => p,
                    Err(e) => {
                        log::warn!("ignoring a malformed DeviceAdded signal: {e}");
                        continue;
                    }
                };
                let result = state.handle(bus, Announced::Path(path.to_string()), patterns).await;
                report_added(result, received, "DeviceAdded", json)?;
            }
            msg = owners.next() => {
                let msg = next_message(msg)?;
                let Some(owner) = owner_change(&msg) else {
                    continue;
                };
                let back = owner.is_some();
                state.new_owner(owner);
                if !back {
                    log::warn!("NetworkManager left the bus; waiting for it to come back");
                    pending = None;
                    continue;
                }
                // A new NetworkManager knows nothing of the Managed=false we set before.
                log::info!(
                    "NetworkManager is on the bus as {}; unmanaging {specs}",
                    state.owner.as_deref().unwrap_or_default()
                );
                pending = catch_up(bus, patterns, json, None).await?;
            }
        }
    }
}

/// Unmanage every current match (at the start, and when NetworkManager (re)appears).
/// A NetworkManager that does not answer or is still starting is not an error yet:
/// `Some((since, retry_at))` says since when it has not answered (`since`, or now) and
/// when to ask again; `None` once it answered.
async fn catch_up(
    bus: &Bus,
    patterns: &[Pattern],
    json: bool,
    since: Option<Instant>,
) -> Result<Option<(Instant, Instant)>> {
    match unmanage_existing(bus, patterns).await {
        Ok(done) => {
            emit(&done, json, false)?;
            Ok(None)
        }
        // Still starting or not answering: it also announces its devices as it sets them
        // up, and it is asked again.
        Err(e) if matches!(e.kind(), Kind::Unavailable | Kind::NoAnswer) => {
            log::info!("{e}; asking again in {}", seconds(RETRY));
            let now = Instant::now();
            Ok(Some((since.unwrap_or(now), now + RETRY)))
        }
        Err(e) => {
            log::error!("{e}");
            Ok(None)
        }
    }
}

/// Sleep until `at` (forever for `None`; the select guard keeps that branch off).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A device announcement: its path alone (`DeviceAdded`) or the device with its
/// properties (`InterfacesAdded`).
enum Announced {
    Path(String),
    Device(Device),
}

impl Announced {
    fn path(&self) -> &str {
        match self {
            Announced::Path(p) => p,
            Announced::Device(d) => &d.path,
        }
    }
}

/// What the watcher knows: who NetworkManager is on the bus, and the devices settled.
struct State {
    /// NetworkManager's unique name, while it is on the bus.
    owner: Option<String>,
    seen: Seen,
}

impl State {
    /// Whether `msg` comes from NetworkManager as the bus knows it now. A sender other
    /// than the owner we know may be the new one, announced in a NameOwnerChanged not
    /// processed yet (the streams are polled in no fixed order): then the bus is asked.
    async fn sent_by_nm<N: Nm>(&mut self, nm: &N, msg: &zbus::Message) -> bool {
        let header = msg.header();
        let Some(sender) = header.sender().map(|s| s.as_str()) else {
            return false;
        };
        if self.owner.as_deref() == Some(sender) {
            return true;
        }
        match nm.owner().await {
            Ok(Some(owner)) if owner == sender => {
                log::debug!("NetworkManager is on the bus as {owner}");
                self.new_owner(Some(owner));
                return true;
            }
            Ok(_) => {}
            Err(e) => log::warn!("{e}"),
        }
        log::debug!(
            "ignoring {} from {sender}: not NetworkManager ({})",
            header.member().map(|m| m.as_str()).unwrap_or("a signal"),
            self.owner.as_deref().unwrap_or("not on the bus")
        );
        false
    }

    /// NetworkManager's name changed owner (`None`: it left). A new NetworkManager
    /// numbers its devices from 1 again, so nothing seen before counts.
    fn new_owner(&mut self, owner: Option<String>) {
        if self.owner != owner {
            self.seen = Seen::default();
        }
        self.owner = owner;
    }

    /// Act on one announcement unless the device is already settled. The device is
    /// remembered only once NetworkManager confirmed it and it was dealt with; a
    /// failure, or a path NetworkManager does not know, leaves the next announcement of
    /// the same path free to try again.
    async fn handle<N: Nm>(
        &mut self,
        nm: &N,
        what: Announced,
        patterns: &[Pattern],
    ) -> Result<Option<Unmanaged>> {
        let path = what.path().to_string();
        if self.seen.contains(&path) {
            return Ok(None);
        }
        let outcome = match what {
            Announced::Path(p) => unmanage_added(nm, &p, patterns).await?,
            Announced::Device(d) => unmanage_announced(nm, d, patterns).await?,
        };
        if outcome.settled() {
            self.seen.insert(&path);
        }
        Ok(match outcome {
            Outcome::Unmanaged(u) => Some(u),
            Outcome::NoMatch | Outcome::Gone => None,
        })
    }
}

/// The new owner of NetworkManager's name from a `NameOwnerChanged` that the bus itself
/// sent (`Some(None)`: it left the bus); `None` for anything else.
fn owner_change(msg: &zbus::Message) -> Option<Option<String>> {
    let header = msg.header();
    if header.sender().map(|s| s.as_str()) != Some(BUS_NAME) {
        log::debug!("ignoring a NameOwnerChanged not sent by the bus");
        return None;
    }
    let (name, _, new): (String, String, String) = match msg.body().deserialize() {
        Ok(t) => t,
        Err(e) => {
            log::warn!("ignoring a malformed NameOwnerChanged signal: {e}");
            return None;
        }
    };
    if name != NM_NAME {
        return None;
    }
    Some((!new.is_empty()).then_some(new))
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
    fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|p| p == path)
    }

    /// Remember `path`; whether it was new.
    fn insert(&mut self, path: &str) -> bool {
        if self.contains(path) {
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
    use crate::unmanage::tests::{block_on, FakeNm};

    #[test]
    fn seen_remembers_recent_paths_only() {
        let mut s = Seen::default();
        assert!(s.insert("/a"));
        assert!(!s.insert("/a"));
        assert!(s.contains("/a"));
        for i in 0..256 {
            s.insert(&format!("/n{i}"));
        }
        assert!(!s.contains("/a"), "forgotten after 256 newer ones");
        assert!(s.insert("/a"));
        assert_eq!(s.0.len(), 256);
    }

    fn state(owner: Option<&str>) -> State {
        State {
            owner: owner.map(str::to_string),
            seen: Seen::default(),
        }
    }

    fn signal_from(sender: &str, iface: &str, member: &str, body: &str) -> zbus::Message {
        zbus::Message::signal(NM_PATH, iface, member)
            .sender(sender)
            .build(&(body,))
            .unwrap()
    }

    fn device_added(sender: &str) -> zbus::Message {
        signal_from(sender, NM_IFACE, "DeviceAdded", "/x")
    }

    #[test]
    fn signals_count_only_from_network_managers_current_owner() {
        let nm = FakeNm::default();
        *nm.owner.borrow_mut() = Some(":1.7".into());
        let mut st = state(Some(":1.7"));
        let from =
            |st: &mut State, sender: &str| block_on(st.sent_by_nm(&nm, &device_added(sender)));
        assert!(from(&mut st, ":1.7"));
        // Anyone else on the bus: a forgery.
        assert!(!from(&mut st, ":1.8"));
        assert_eq!(st.owner.as_deref(), Some(":1.7"));
        // NetworkManager is not on the bus: nobody speaks for it.
        *nm.owner.borrow_mut() = None;
        assert!(!from(&mut state(None), ":1.7"));
        // After a restart, only the new owner.
        st.new_owner(Some(":1.9".into()));
        *nm.owner.borrow_mut() = Some(":1.9".into());
        assert!(!from(&mut st, ":1.7"));
        assert!(from(&mut st, ":1.9"));
    }

    #[test]
    fn a_new_owner_is_believed_before_its_name_owner_changed_is_processed() {
        let nm = FakeNm::default();
        let mut st = state(Some(":1.7"));
        st.seen.insert("/org/freedesktop/NetworkManager/Devices/3");
        // NetworkManager restarted as :1.9; its DeviceAdded is polled first.
        *nm.owner.borrow_mut() = Some(":1.9".into());
        assert!(block_on(st.sent_by_nm(&nm, &device_added(":1.9"))));
        assert_eq!(st.owner.as_deref(), Some(":1.9"));
        assert!(!st
            .seen
            .contains("/org/freedesktop/NetworkManager/Devices/3"));
        // Its NameOwnerChanged, processed later, changes nothing more.
        st.seen.insert("/org/freedesktop/NetworkManager/Devices/1");
        st.new_owner(Some(":1.9".into()));
        assert!(st
            .seen
            .contains("/org/freedesktop/NetworkManager/Devices/1"));
    }

    #[test]
    fn owner_changes_are_believed_from_the_bus_only() {
        let noc = |sender: &str, name: &str, new: &str| {
            zbus::Message::signal("/org/freedesktop/DBus", BUS_NAME, "NameOwnerChanged")
                .sender(sender)
                .build(&(name, "", new))
                .unwrap()
        };
        assert_eq!(
            owner_change(&noc(BUS_NAME, NM_NAME, ":1.4")),
            Some(Some(":1.4".to_string()))
        );
        assert_eq!(owner_change(&noc(BUS_NAME, NM_NAME, "")), Some(None));
        assert_eq!(owner_change(&noc(":1.8", NM_NAME, ":1.8")), None);
        assert_eq!(
            owner_change(&noc(BUS_NAME, "org.example.Other", ":1.8")),
            None
        );
    }

    #[test]
    fn a_path_is_settled_only_after_network_manager_confirmed_it() {
        let nm = FakeNm::with(&[("eth0", true)]);
        let pats = Pattern::defaults();
        let mut st = state(Some(":1.1"));
        let next = "/org/freedesktop/NetworkManager/Devices/2";
        // Announced before NetworkManager has it (a forgery, or a lookup that raced):
        // nothing done, nothing remembered.
        let r = block_on(st.handle(&nm, Announced::Path(next.into()), &pats)).unwrap();
        assert!(r.is_none());
        assert!(!st.seen.contains(next));
        // The real device under that path is then handled.
        let ve = FakeNm::with(&[("eth0", true), ("ve-new", true)]);
        assert_eq!(ve.path_of("ve-new"), next);
        // A transient failure: reported, not remembered ...
        *ve.fail_sets.borrow_mut() = 1;
        block_on(st.handle(&ve, Announced::Path(next.into()), &pats)).unwrap_err();
        assert!(ve.managed("ve-new"));
        assert!(!st.seen.contains(next));
        // ... so the next announcement (DeviceAdded after InterfacesAdded) retries.
        let u = block_on(st.handle(&ve, Announced::Path(next.into()), &pats))
            .unwrap()
            .expect("unmanaged on the retry");
        assert_eq!(u.interface, "ve-new");
        assert!(!ve.managed("ve-new"));
        assert!(st.seen.contains(next));
        // Settled: further announcements cost nothing.
        let sets = ve.sets.borrow().len();
        let dev = ve.devices.borrow()[next].clone();
        assert!(block_on(st.handle(&ve, Announced::Device(dev), &pats))
            .unwrap()
            .is_none());
        assert_eq!(ve.sets.borrow().len(), sets);
        // A device that does not match is settled too (looked at once).
        let eth = ve.path_of("eth0");
        assert!(
            block_on(st.handle(&ve, Announced::Path(eth.clone()), &pats))
                .unwrap()
                .is_none()
        );
        assert!(st.seen.contains(&eth));
        assert!(ve.managed("eth0"));
        // A new NetworkManager forgets everything.
        st.new_owner(Some(":1.2".into()));
        assert!(!st.seen.contains(next));
    }
}
