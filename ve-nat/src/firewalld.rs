//! firewalld, through its D-Bus API only: the container interfaces (and `--internal-ip`
//! networks) go into its `trusted` zone, runtime and permanent, so that its forward
//! chain lets container traffic through and a reload or restart keeps them there.
//!
//! What ve-nat added is remembered in a file of its own (`firewalld` in the state
//! directory, one `LAYER KIND VALUE` line each), written before the change is made: an
//! entry that was there already (put there by an administrator) is never recorded, so
//! `down` removes exactly what ve-nat added, and nothing that was there before. A host
//! with no bus, or no firewalld on it, or a firewalld in another network namespace than
//! ve-nat's, is left alone without a word.

use std::{
    collections::BTreeSet,
    fmt, fs,
    io::ErrorKind,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use common::{Error, Kind, Result};
use zbus::Connection;

use crate::config::Request;

/// firewalld's bus name, object path and interfaces (API version 1).
pub const NAME: &str = "org.fedoraproject.FirewallD1";
pub const PATH: &str = "/org/fedoraproject/FirewallD1";
pub const IFACE: &str = NAME;
const ZONE_IFACE: &str = "org.fedoraproject.FirewallD1.zone";
const CONFIG_PATH: &str = "/org/fedoraproject/FirewallD1/config";
const CONFIG_IFACE: &str = "org.fedoraproject.FirewallD1.config";
const CONFIG_ZONE_IFACE: &str = "org.fedoraproject.FirewallD1.config.zone";

/// The zone container traffic goes into: target ACCEPT, forwarding allowed.
pub const ZONE: &str = "trusted";

/// Where the record of what ve-nat added lives, unless `VE_NAT_STATE_DIR` says so:
/// permanent changes outlive /run, so the record must too.
pub const STATE_DIR: &str = "/var/lib/ve-nat";
pub const STATE_DIR_ENV: &str = "VE_NAT_STATE_DIR";
const RECORD: &str = "firewalld";

/// How long one call to firewalld may take (it is a Python daemon that may be in the
/// middle of a reload).
const TIMEOUT: Duration = Duration::from_secs(25);

/// firewalld's runtime config (gone at a reload or restart) or its permanent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    Permanent,
    Runtime,
}

/// A zone entry: an interface (firewalld's wildcard is a trailing `+`) or a source
/// network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum What {
    Interface,
    Source,
}

/// One entry of one layer of the trusted zone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub layer: Layer,
    pub what: What,
    pub value: String,
}

impl Layer {
    fn as_str(self) -> &'static str {
        match self {
            Layer::Permanent => "permanent",
            Layer::Runtime => "runtime",
        }
    }
}

impl What {
    fn as_str(self) -> &'static str {
        match self {
            What::Interface => "interface",
            What::Source => "source",
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.layer.as_str(),
            self.what.as_str(),
            self.value
        )
    }
}

impl Entry {
    fn parse(line: &str) -> Option<Entry> {
        let mut it = line.split(' ');
        let layer = match it.next()? {
            "permanent" => Layer::Permanent,
            "runtime" => Layer::Runtime,
            _ => return None,
        };
        let what = match it.next()? {
            "interface" => What::Interface,
            "source" => What::Source,
            _ => return None,
        };
        let value = it.next()?.to_string();
        (it.next().is_none() && !value.is_empty()).then_some(Entry { layer, what, value })
    }
}

/// Whether nftables table `name` is firewalld's own: `firewalld`, and
/// `firewalld_policy_drop`, which it puts in place while it starts or reloads.
pub fn owns_table(name: &str) -> bool {
    name == "firewalld" || name == "firewalld_policy_drop"
}

/// The trusted-zone entries `req` needs, in both layers: each container interface
/// pattern (`ve-*` spelled `ve-+`, firewalld's wildcard) and each `--internal-ip`.
pub fn wanted(req: &Request) -> Vec<Entry> {
    let mut items: Vec<(What, String)> = req
        .internal
        .iter()
        .map(|p| {
            let s = p.as_str();
            let v = match s.strip_suffix('*') {
                Some(stem) => format!("{stem}+"),
                None => s.to_string(),
            };
            (What::Interface, v)
        })
        .collect();
    items.extend(
        req.internal_ips
            .iter()
            .map(|n| (What::Source, n.to_string())),
    );
    let mut out = Vec::new();
    for layer in [Layer::Permanent, Layer::Runtime] {
        for (what, value) in &items {
            out.push(Entry {
                layer,
                what: *what,
                value: value.clone(),
            });
        }
    }
    out
}

/// What firewalld is asked: the zone an entry is in (`""`: none), add one to the
/// trusted zone, remove one from it. [`Firewalld`] is the real one.
pub trait Zones {
    fn zone_of(&self, e: &Entry) -> Result<String>;
    fn add(&self, e: &Entry) -> Result<()>;
    fn remove(&self, e: &Entry) -> Result<()>;
}

/// Bring the trusted zone to `want`: add what is in no zone (recording it in `owned`
/// first, and saving through `save`), remove what ve-nat added earlier and `want` no
/// longer has. An entry in another zone is left there: the warnings say so.
pub fn up(
    z: &dyn Zones,
    want: &[Entry],
    owned: &mut BTreeSet<Entry>,
    save: &mut dyn FnMut(&BTreeSet<Entry>) -> Result<()>,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for e in want {
        let zone = z.zone_of(e)?;
        if zone == ZONE {
            continue;
        }
        if !zone.is_empty() {
            warnings.push(in_other_zone(e, &zone));
            continue;
        }
        if owned.insert(e.clone()) {
            save(owned)?;
        }
        z.add(e)
            .map_err(|err| err.context(format!("firewalld: adding {e} to zone {ZONE}")))?;
        log::info!("firewalld: added {e} to zone {ZONE}");
    }
    let stale: Vec<Entry> = owned
        .iter()
        .filter(|e| !want.contains(e))
        .cloned()
        .collect();
    for e in stale {
        remove_one(z, &e)?;
        owned.remove(&e);
        save(owned)?;
    }
    Ok(warnings)
}

fn in_other_zone(e: &Entry, zone: &str) -> String {
    format!(
        "firewalld: {} {} is in zone {zone} ({}), not {ZONE}: container traffic gets that \
         zone's treatment",
        e.what.as_str(),
        e.value,
        e.layer.as_str()
    )
}

/// Remove `e` from the trusted zone if it is still there.
fn remove_one(z: &dyn Zones, e: &Entry) -> Result<()> {
    if z.zone_of(e)? == ZONE {
        z.remove(e)
            .map_err(|err| err.context(format!("firewalld: removing {e} from zone {ZONE}")))?;
        log::info!("firewalld: removed {e} from zone {ZONE}");
    }
    Ok(())
}

/// Remove everything in `owned` (what ve-nat added); what was removed leaves `owned`.
/// Best effort: every failure is returned, the rest goes on.
pub fn down(z: &dyn Zones, owned: &mut BTreeSet<Entry>) -> Vec<Error> {
    let mut errors = Vec::new();
    for e in owned.clone() {
        match remove_one(z, &e) {
            Ok(()) => {
                owned.remove(&e);
            }
            Err(err) => errors.push(err),
        }
    }
    errors
}

/// How the trusted zone differs from `want`, one line each.
pub fn differences(z: &dyn Zones, want: &[Entry]) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    for e in want {
        let zone = z.zone_of(e)?;
        if zone.is_empty() {
            diffs.push(format!("firewalld: {e} is not in zone {ZONE}"));
        } else if zone != ZONE {
            diffs.push(in_other_zone(e, &zone));
        }
    }
    Ok(diffs)
}

/// The state directory (`VE_NAT_STATE_DIR`, else [`STATE_DIR`]).
pub fn state_dir() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(STATE_DIR))
}

/// The record of what ve-nat added to firewalld, in `dir`. A missing file is an empty
/// record; a line that is not ours is a configuration error (nothing is removed on a
/// guess).
pub fn load(dir: &Path) -> Result<BTreeSet<Entry>> {
    let path = dir.join(RECORD);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let mut out = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let e = Entry::parse(line).ok_or_else(|| {
            Error::config(format!(
                "{}: not a line ve-nat writes: {line:?}",
                path.display()
            ))
        })?;
        out.insert(e);
    }
    Ok(out)
}

/// Write the record (atomically: a new file renamed over the old); an empty record
/// removes the file.
pub fn save(dir: &Path, owned: &BTreeSet<Entry>) -> Result<()> {
    let path = dir.join(RECORD);
    if owned.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", path.display()), e))
            }
            _ => Ok(()),
        };
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut text =
        String::from("# what ve-nat added to firewalld's trusted zone; `ve-nat down` removes it\n");
    for e in owned {
        text.push_str(&format!("{e}\n"));
    }
    let tmp = dir.join(format!(".{RECORD}.tmp"));
    fs::write(&tmp, text).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// A connection to firewalld on the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else the
/// standard socket). zbus is async only: calls run on a runtime of their own.
pub struct Firewalld {
    rt: tokio::runtime::Runtime,
    conn: Connection,
}

impl Firewalld {
    /// firewalld, when it is on the bus; `None` (and a debug line) when there is no bus
    /// or no firewalld on it.
    pub fn connect() -> Option<Firewalld> {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                log::warn!("firewalld: cannot start the async runtime: {e}");
                return None;
            }
        };
        let conn = rt.block_on(async {
            let build = zbus::connection::Builder::system()
                .method_timeout(TIMEOUT)
                .build();
            tokio::time::timeout(TIMEOUT, build).await.ok()?.ok()
        });
        let Some(conn) = conn else {
            log::debug!("firewalld: no system bus; leaving firewalld alone");
            return None;
        };
        let fw = Firewalld { rt, conn };
        match fw.running() {
            Ok(true) if fw.in_our_netns() => Some(fw),
            Ok(true) => None,
            Ok(false) => {
                log::debug!("firewalld: not on the bus; nothing to do there");
                None
            }
            Err(e) => {
                log::debug!("firewalld: asking the bus for it: {e}");
                None
            }
        }
    }

    /// Whether firewalld runs in this network namespace: a firewalld elsewhere (the
    /// machine's, seen from a container or a sandbox sharing its bus) does not filter
    /// our traffic and must not be changed for it.
    fn in_our_netns(&self) -> bool {
        let pid: Result<u32> = self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetConnectionUnixProcessID",
            &(NAME,),
        );
        let ns = |p: String| fs::metadata(p).map(|m| (m.dev(), m.ino()));
        match pid.map(|pid| {
            (
                ns(format!("/proc/{pid}/ns/net")),
                ns("/proc/self/ns/net".into()),
            )
        }) {
            Ok((Ok(theirs), Ok(ours))) if theirs == ours => true,
            Ok((Ok(_), Ok(_))) => {
                log::debug!("firewalld runs in another network namespace; leaving it alone");
                false
            }
            Ok((Err(e), _) | (_, Err(e))) => {
                log::debug!("firewalld: cannot tell its network namespace ({e}); leaving it alone");
                false
            }
            Err(e) => {
                log::debug!("firewalld: {e}; leaving it alone");
                false
            }
        }
    }

    /// Whether firewalld owns its name.
    fn running(&self) -> Result<bool> {
        self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            &(NAME,),
        )
    }

    fn call<B, R>(&self, dest: &str, path: &str, iface: &str, method: &str, body: &B) -> Result<R>
    where
        B: serde::Serialize + zbus::wire::DynamicType,
        R: for<'d> zbus::wire::DynamicDeserialize<'d>,
    {
        self.rt.block_on(async {
            let reply = self
                .conn
                .call_method(Some(dest), path, Some(iface), method, body)
                .await
                .map_err(|e| dbus_error(method, e))?;
            reply
                .body()
                .deserialize::<R>()
                .map_err(|e| dbus_error(method, e))
        })
    }

    /// The object path of the permanent config of zone `name`.
    fn config_zone(&self, name: &str) -> Result<zbus::OwnedObjectPath> {
        self.call(NAME, CONFIG_PATH, CONFIG_IFACE, "getZoneByName", &(name,))
    }

    fn method(e: &Entry, verb: &str) -> String {
        let noun = match e.what {
            What::Interface => "Interface",
            What::Source => "Source",
        };
        format!("{verb}{noun}")
    }
}

impl Firewalld {
    /// `add` or `remove` (`verb`) entry `e` in our zone, at its layer: runtime through
    /// the zone interface, permanent through the zone's configuration object.
    fn change(&self, e: &Entry, verb: &str) -> Result<()> {
        let m = Self::method(e, verb);
        match e.layer {
            Layer::Runtime => self
                .call::<_, String>(NAME, PATH, ZONE_IFACE, &m, &(ZONE, e.value.as_str()))
                .map(drop),
            Layer::Permanent => {
                let zone = self.config_zone(ZONE)?;
                self.call::<_, ()>(
                    NAME,
                    zone.as_str(),
                    CONFIG_ZONE_IFACE,
                    &m,
                    &(e.value.as_str(),),
                )
            }
        }
    }
}

impl Zones for Firewalld {
    fn zone_of(&self, e: &Entry) -> Result<String> {
        let m = Self::method(e, "getZoneOf");
        match e.layer {
            Layer::Runtime => self.call(NAME, PATH, ZONE_IFACE, &m, &(e.value.as_str(),)),
            Layer::Permanent => {
                self.call(NAME, CONFIG_PATH, CONFIG_IFACE, &m, &(e.value.as_str(),))
            }
        }
    }

    fn add(&self, e: &Entry) -> Result<()> {
        self.change(e, "add")
    }

    fn remove(&self, e: &Entry) -> Result<()> {
        self.change(e, "remove")
    }
}

/// A D-Bus failure as our error: firewalld's own refusal (a D-Bus error reply) is a
/// service refusing (exit 69), no answer in time is exit 69 too.
fn dbus_error(method: &str, e: zbus::Error) -> Error {
    let text = match &e {
        zbus::Error::MethodError(name, detail, _) => match detail {
            Some(d) if !d.is_empty() => format!("{d} ({name})"),
            _ => name.to_string(),
        },
        other => other.to_string(),
    };
    Error::new(Kind::Unavailable, format!("firewalld: {method}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{cell::RefCell, collections::BTreeMap};

    /// firewalld's zone bindings per layer, in memory.
    #[derive(Default)]
    struct Fake {
        zones: RefCell<BTreeMap<(Layer, What, String), String>>,
    }

    impl Fake {
        fn key(e: &Entry) -> (Layer, What, String) {
            (e.layer, e.what, e.value.clone())
        }
        fn set(&self, e: &Entry, zone: &str) {
            self.zones.borrow_mut().insert(Self::key(e), zone.into());
        }
    }

    impl Zones for Fake {
        fn zone_of(&self, e: &Entry) -> Result<String> {
            Ok(self
                .zones
                .borrow()
                .get(&Self::key(e))
                .cloned()
                .unwrap_or_default())
        }
        fn add(&self, e: &Entry) -> Result<()> {
            self.set(e, ZONE);
            Ok(())
        }
        fn remove(&self, e: &Entry) -> Result<()> {
            self.zones.borrow_mut().remove(&Self::key(e));
            Ok(())
        }
    }

    fn req(internal: &[&str], ips: &[&str]) -> Request {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Request::new("eth0", &s(internal), &s(ips), &[], &[], false, None).unwrap()
    }

    fn entry(layer: Layer, what: What, v: &str) -> Entry {
        Entry {
            layer,
            what,
            value: v.into(),
        }
    }

    #[test]
    fn wanted_spells_wildcards_as_firewalld_does_in_both_layers() {
        let w = wanted(&req(&["ve-*", "vb-+"], &["10.233.0.0/16"]));
        assert_eq!(w.len(), 6);
        assert!(w.contains(&entry(Layer::Runtime, What::Interface, "ve-+")));
        assert!(w.contains(&entry(Layer::Permanent, What::Interface, "vb-+")));
        assert!(w.contains(&entry(Layer::Permanent, What::Source, "10.233.0.0/16")));
    }

    #[test]
    fn down_removes_only_what_up_added() {
        let fake = Fake::default();
        // An administrator put ve-+ into trusted at runtime; vb-+ sits in zone home.
        fake.set(&entry(Layer::Runtime, What::Interface, "ve-+"), ZONE);
        fake.set(&entry(Layer::Permanent, What::Interface, "vb-+"), "home");
        let want = wanted(&req(&["ve-+", "vb-+"], &[]));
        let mut owned = BTreeSet::new();
        let mut saves = 0;
        let warnings = up(&fake, &want, &mut owned, &mut |_| {
            saves += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("home"));
        let expect: BTreeSet<Entry> = [
            entry(Layer::Permanent, What::Interface, "ve-+"),
            entry(Layer::Runtime, What::Interface, "vb-+"),
        ]
        .into();
        assert_eq!(owned, expect);
        assert_eq!(saves, 2);
        // up again changes nothing.
        let again = owned.clone();
        up(&fake, &want, &mut owned, &mut |_| {
            panic!("no save expected")
        })
        .unwrap();
        assert_eq!(owned, again);
        assert_eq!(differences(&fake, &want).unwrap().len(), 1);

        assert!(down(&fake, &mut owned).is_empty());
        assert!(owned.is_empty());
        let z = fake.zones.borrow();
        assert_eq!(z.len(), 2, "{z:?}");
        assert_eq!(z[&(Layer::Runtime, What::Interface, "ve-+".into())], ZONE);
        assert_eq!(
            z[&(Layer::Permanent, What::Interface, "vb-+".into())],
            "home"
        );
    }

    #[test]
    fn up_drops_what_it_added_for_an_earlier_request() {
        let fake = Fake::default();
        let mut owned = BTreeSet::new();
        up(
            &fake,
            &wanted(&req(&["ve-+"], &[])),
            &mut owned,
            &mut |_| Ok(()),
        )
        .unwrap();
        up(
            &fake,
            &wanted(&req(&["vb-+"], &[])),
            &mut owned,
            &mut |_| Ok(()),
        )
        .unwrap();
        assert!(owned.iter().all(|e| e.value == "vb-+"));
        assert_eq!(fake.zones.borrow().len(), 2);
        let missing = differences(&fake, &wanted(&req(&["ve-+"], &[]))).unwrap();
        assert_eq!(missing.len(), 2, "{missing:?}");
    }

    #[test]
    fn record_round_trips_and_refuses_strangers() {
        let dir = std::env::temp_dir().join(format!("ve-nat-fwd-rec-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert!(load(&dir).unwrap().is_empty());
        let owned: BTreeSet<Entry> = [
            entry(Layer::Runtime, What::Source, "10.233.0.0/16"),
            entry(Layer::Permanent, What::Interface, "ve-+"),
        ]
        .into();
        save(&dir, &owned).unwrap();
        assert_eq!(load(&dir).unwrap(), owned);
        save(&dir, &BTreeSet::new()).unwrap();
        assert!(!dir.join(RECORD).exists());
        fs::write(dir.join(RECORD), "runtime interface ve-+ extra\n").unwrap();
        assert_eq!(load(&dir).unwrap_err().kind(), Kind::Config);
        fs::remove_dir_all(&dir).unwrap();
    }
}
