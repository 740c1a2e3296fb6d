//! systemd-networkd: the `.network` file of ours that leaves matching links unmanaged,
//! the D-Bus calls that make it take effect (`Reload`, `ReconfigureLink`) behind a small
//! trait, and the one-shot logic over it.
//!
//! Facts of networkd (systemd 252) this relies on, seen on the real daemon: it does not
//! watch its configuration directories (a file counts from the next `Reload()`);
//! `Reload()` releases a link that a new `Unmanaged=yes` file matches, and a link it
//! releases keeps every address networkd did not add itself (ve-link's); a
//! `ReconfigureLink()` before that `Reload()` would apply the old configuration again.

use std::path::Path;

use serde::Serialize;

use common::{Error, Kind, Result};
use zbus::OwnedObjectPath;

use crate::{
    nm::{dbus_error_as, error_name, Bus},
    persist,
    spec::{any_matches, Pattern},
    unmanage::Cause,
};

pub const ND_NAME: &str = "org.freedesktop.network1";
pub const ND_PATH: &str = "/org/freedesktop/network1";
pub const ND_MANAGER: &str = "org.freedesktop.network1.Manager";
pub const ND_LINK: &str = "org.freedesktop.network1.Link";
/// Where networkd's link objects live: `ND_LINK_PATH/_3N` for ifindex N (bus-escaped).
pub const ND_LINK_PATH: &str = "/org/freedesktop/network1/link";
const PROPS_IFACE: &str = "org.freedesktop.DBus.Properties";

/// The file: `10-` sorts it before the stock `80-container-ve.network` (networkd uses
/// the first file that matches a link).
pub const NETWORK_FILE: &str = "10-nm-unmanage.network";

/// Where it goes unless `--networkd-dir` says otherwise: networkd's per-boot directory.
pub const DEFAULT_NETWORKD_DIR: &str = "/run/systemd/network";

/// Who the errors name.
const WHO: &str = "systemd-networkd";

/// One link as networkd lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: i32,
    pub name: String,
    pub path: String,
}

/// The networkd operations the tool performs. A link that disappears meanwhile (a
/// container stopping) is not an error: `state` returns `None`, `reconfigure` `false`.
#[allow(async_fn_in_trait)]
pub trait Networkd {
    async fn links(&self) -> Result<Vec<Link>>;
    /// The link's `AdministrativeState` (`unmanaged`, `configuring`, `configured`, ...).
    async fn state(&self, link: &Link) -> Result<Option<String>>;
    /// The link with this ifindex, if networkd has it.
    async fn link(&self, ifindex: i32) -> Result<Option<Link>>;
    async fn reload(&self) -> Result<()>;
    async fn reconfigure(&self, ifindex: i32) -> Result<bool>;
}

/// One link networkd now leaves alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Released {
    pub interface: String,
    pub manager: &'static str,
    pub ifindex: i32,
    /// Whether networkd managed it before (any state but `unmanaged`).
    pub was_managed: bool,
    /// Its `AdministrativeState` before.
    pub state_before: String,
    pub cause: Cause,
}

/// The patterns' networkd globs; refused (exit 65) when one has none.
pub fn globs(patterns: &[Pattern]) -> Result<Vec<String>> {
    patterns.iter().map(Pattern::networkd_glob).collect()
}

/// The file's text: a `[Match] Name=` with every glob, `[Link] Unmanaged=yes`.
pub fn render(globs: &[String]) -> String {
    format!(
        "# Written by nm-unmanage; `nm-unmanage --remove` deletes it.\n\
         # Sorts before 80-container-ve.network: systemd-networkd leaves these links alone.\n\
         [Match]\n\
         Name={}\n\
         \n\
         [Link]\n\
         Unmanaged=yes\n",
        globs.join(" ")
    )
}

/// The globs of our file as it is in `dir` (none when it is not there).
fn current_globs(dir: &Path) -> Vec<String> {
    let Some(text) = persist::read_nofollow(&dir.join(NETWORK_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Name="))
        .flat_map(|n| n.split_whitespace().map(str::to_string))
        .collect()
}

/// What the file must say to cover `globs` as well as everything it covers now: a call
/// with fewer patterns (a per-container one-shot) never gives links back to networkd,
/// which would delete ve-link's addresses on them. Only `--remove` shrinks it.
pub fn merged(dir: &Path, globs: &[String]) -> String {
    let mut all = current_globs(dir);
    for g in globs {
        if !all.contains(g) {
            all.push(g.clone());
        }
    }
    render(&all)
}

/// Write the file into `dir` (made, mode 0755, when missing) so that it covers `globs`
/// too ([`merged`]), with [`persist::write_file`]'s checks. Whether it changed.
///
/// The read, merge and replace happen under an exclusive `flock` on the directory
/// itself, so parallel calls (a container manager starting several containers at once)
/// never drop each other's names. The lock needs no file of its own: networkd reads
/// only `*.network`, and the kernel drops the lock with the descriptor.
pub fn write(dir: &Path, globs: &[String]) -> Result<bool> {
    persist::create_dir(dir)?;
    let locked = std::fs::File::open(dir)
        .and_then(|d| d.lock().map(|()| d))
        .map_err(|e| Error::io(format!("locking {}", dir.display()), e))?;
    let text = merged(dir, globs);
    let changed = persist::write_file(dir, NETWORK_FILE, &text)?;
    drop(locked);
    let path = dir.join(NETWORK_FILE);
    if changed {
        log::info!("wrote {}", path.display());
    } else {
        log::debug!("{} is up to date", path.display());
    }
    Ok(changed)
}

/// When [`apply`] reloads networkd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Always,
    /// Only when the file changed or a matching link is not unmanaged.
    IfNeeded,
}

/// Make networkd leave every matching link alone, in the one order that works: the file
/// first (`write`), then `Reload()` (which releases the links the file now matches),
/// then `ReconfigureLink()` for each matching link. Never touches an address: what
/// networkd added goes with its release, everything else stays. One failing link does
/// not stop the others; the first error is returned after all.
pub async fn apply<N: Networkd>(
    nd: &N,
    patterns: &[Pattern],
    write: impl FnOnce() -> Result<bool>,
    cause: Cause,
    when: Reload,
) -> Result<Vec<Released>> {
    // What each link was before, for the report.
    let mut before = Vec::new();
    for l in nd.links().await? {
        if any_matches(patterns, &l.name) {
            if let Some(s) = nd.state(&l).await? {
                before.push((l, s));
            }
        }
    }
    let changed = write()?;
    if when == Reload::IfNeeded && !changed && before.iter().all(|(_, s)| s == "unmanaged") {
        log::debug!("networkd leaves every matching link alone already; not reloaded");
        return Ok(Vec::new());
    }
    nd.reload().await?;
    log::info!("systemd-networkd reloaded its configuration");
    let mut done = Vec::new();
    let mut first_err: Option<Error> = None;
    for (l, state) in before {
        match nd.reconfigure(l.ifindex).await {
            Ok(true) => done.push(Released {
                interface: l.name,
                manager: "networkd",
                ifindex: l.ifindex,
                was_managed: state != "unmanaged",
                state_before: state,
                cause,
            }),
            Ok(false) => log::info!("{} went away before it could be released", l.name),
            Err(e) => {
                log::error!("{}: {e}", l.name);
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// The ifindex of a link object path (`.../link/_33` is 3); `None` for anything else.
pub fn ifindex_of(path: &str) -> Option<i32> {
    let rest = path.strip_prefix(ND_LINK_PATH)?.strip_prefix('/')?;
    // sd-bus escapes every byte that is not [A-Za-z0-9] (a leading digit included) as
    // `_XX` in hex.
    let mut s = String::new();
    let mut b = rest.as_bytes();
    while let Some((&c, tail)) = b.split_first() {
        if c == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            s.push(char::from(u8::from_str_radix(hex, 16).ok()?));
            b = &tail[2..];
        } else {
            s.push(char::from(c));
            b = tail;
        }
    }
    s.parse().ok().filter(|&i| i > 0)
}

/// Method errors networkd raises for a link it does not have (any more).
fn is_no_link(e: &zbus::Error) -> bool {
    matches!(
        error_name(e).as_deref(),
        Some(
            "org.freedesktop.network1.NoSuchLink"
                | "org.freedesktop.DBus.Error.UnknownObject"
                | "org.freedesktop.DBus.Error.UnknownMethod"
                | "org.freedesktop.DBus.Error.UnknownInterface"
        )
    )
}

impl Bus {
    /// Whether systemd-networkd owns its name on this bus.
    pub async fn networkd_running(&self) -> Result<bool> {
        self.has_owner(ND_NAME, WHO).await
    }

    /// The unique name that owns networkd's name now, if any.
    pub async fn networkd_owner(&self) -> Result<Option<String>> {
        self.owner_of(ND_NAME, WHO).await
    }

    async fn nd_call<B>(
        &self,
        path: &str,
        iface: &str,
        method: &str,
        body: &B,
    ) -> zbus::Result<zbus::Message>
    where
        B: serde::Serialize + zbus::DynamicType,
    {
        self.connection()
            .call_method(Some(ND_NAME), path, Some(iface), method, body)
            .await
    }
}

impl Networkd for Bus {
    async fn links(&self) -> Result<Vec<Link>> {
        let doing = "listing systemd-networkd's links";
        let reply = self
            .nd_call(ND_PATH, ND_MANAGER, "ListLinks", &())
            .await
            .map_err(|e| dbus_error_as(doing, e, WHO))?;
        let links: Vec<(i32, String, OwnedObjectPath)> = reply
            .body()
            .deserialize()
            .map_err(|e| dbus_error_as(doing, e, WHO))?;
        Ok(links
            .into_iter()
            .map(|(ifindex, name, path)| Link {
                ifindex,
                name,
                path: path.to_string(),
            })
            .collect())
    }

    async fn state(&self, link: &Link) -> Result<Option<String>> {
        let doing = format!("reading the state of {}", link.name);
        let reply = match self
            .nd_call(
                &link.path,
                PROPS_IFACE,
                "Get",
                &(ND_LINK, "AdministrativeState"),
            )
            .await
        {
            Ok(r) => r,
            Err(e) if is_no_link(&e) => return Ok(None),
            Err(e) => return Err(dbus_error_as(&doing, e, WHO)),
        };
        let v: zbus::OwnedVariant = reply
            .body()
            .deserialize()
            .map_err(|e| dbus_error_as(&doing, e, WHO))?;
        String::try_from(v)
            .map(Some)
            .map_err(|e| Error::internal(format!("{doing}: {e}")))
    }

    async fn link(&self, ifindex: i32) -> Result<Option<Link>> {
        let doing = format!("asking systemd-networkd for link {ifindex}");
        let reply = match self
            .nd_call(ND_PATH, ND_MANAGER, "GetLinkByIndex", &(ifindex,))
            .await
        {
            Ok(r) => r,
            Err(e) if is_no_link(&e) => return Ok(None),
            Err(e) => return Err(dbus_error_as(&doing, e, WHO)),
        };
        let (name, path): (String, OwnedObjectPath) = reply
            .body()
            .deserialize()
            .map_err(|e| dbus_error_as(&doing, e, WHO))?;
        Ok(Some(Link {
            ifindex,
            name,
            path: path.to_string(),
        }))
    }

    async fn reload(&self) -> Result<()> {
        self.nd_call(ND_PATH, ND_MANAGER, "Reload", &())
            .await
            .map(drop)
            .map_err(|e| dbus_error_as("asking systemd-networkd to reload", e, WHO))
    }

    async fn reconfigure(&self, ifindex: i32) -> Result<bool> {
        match self
            .nd_call(ND_PATH, ND_MANAGER, "ReconfigureLink", &(ifindex,))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_no_link(&e) => Ok(false),
            Err(e) => Err(dbus_error_as(
                &format!("asking systemd-networkd to reconfigure link {ifindex}"),
                e,
                WHO,
            )),
        }
    }
}

/// The stdout text for `done`: JSON lines, or interface names (with `changed_only`,
/// just those networkd managed before).
pub fn render_released(done: &[Released], json: bool, changed_only: bool) -> Result<String> {
    let mut out = String::new();
    for r in done.iter().filter(|r| r.was_managed || !changed_only) {
        if json {
            out.push_str(&common::output::json_line(r)?);
        } else {
            out.push_str(&r.interface);
            out.push('\n');
        }
    }
    Ok(out)
}

/// networkd is not on the bus (for `--manager networkd`).
pub fn not_running(address: &str) -> Error {
    Error::new(
        Kind::Unavailable,
        format!("systemd-networkd is not running on the bus at {address}"),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::unmanage::tests::block_on;

    /// networkd as a list of links and their states; records every call in order.
    #[derive(Default)]
    pub(crate) struct FakeNd {
        pub links: RefCell<Vec<(Link, String)>>,
        pub calls: RefCell<Vec<String>>,
    }

    impl FakeNd {
        pub fn with(links: &[(&str, &str)]) -> FakeNd {
            let nd = FakeNd::default();
            for (i, (name, state)) in links.iter().enumerate() {
                let ifindex = i as i32 + 1;
                nd.links.borrow_mut().push((
                    Link {
                        ifindex,
                        name: name.to_string(),
                        path: format!("{ND_LINK_PATH}/_3{ifindex}"),
                    },
                    state.to_string(),
                ));
            }
            nd
        }
    }

    impl Networkd for FakeNd {
        async fn links(&self) -> Result<Vec<Link>> {
            Ok(self.links.borrow().iter().map(|(l, _)| l.clone()).collect())
        }
        async fn state(&self, link: &Link) -> Result<Option<String>> {
            let links = self.links.borrow();
            Ok(links
                .iter()
                .find(|(l, _)| l == link)
                .map(|(_, s)| s.clone()))
        }
        async fn link(&self, ifindex: i32) -> Result<Option<Link>> {
            let links = self.links.borrow();
            Ok(links
                .iter()
                .find(|(l, _)| l.ifindex == ifindex)
                .map(|(l, _)| l.clone()))
        }
        async fn reload(&self) -> Result<()> {
            self.calls.borrow_mut().push("reload".into());
            Ok(())
        }
        async fn reconfigure(&self, ifindex: i32) -> Result<bool> {
            self.calls
                .borrow_mut()
                .push(format!("reconfigure {ifindex}"));
            Ok(true)
        }
    }

    #[test]
    fn writes_then_reloads_then_reconfigures_matching_links_only() {
        let nd = FakeNd::with(&[
            ("lo", "unmanaged"),
            ("ve-a", "configured"),
            ("eth0", "configured"),
            ("vb-b", "unmanaged"),
        ]);
        let done = block_on(apply(
            &nd,
            &Pattern::defaults(),
            || {
                nd.calls.borrow_mut().push("write".into());
                Ok(true)
            },
            Cause::Existing,
            Reload::Always,
        ))
        .unwrap();
        assert_eq!(
            *nd.calls.borrow(),
            ["write", "reload", "reconfigure 2", "reconfigure 4"]
        );
        let names: Vec<_> = done
            .iter()
            .map(|r| (r.interface.as_str(), r.was_managed))
            .collect();
        assert_eq!(names, [("ve-a", true), ("vb-b", false)]);
        assert_eq!(render_released(&done, false, true).unwrap(), "ve-a\n");
        let line = render_released(&done[..1], true, true).unwrap();
        assert_eq!(
            line,
            "{\"interface\":\"ve-a\",\"manager\":\"networkd\",\"ifindex\":2,\
             \"was_managed\":true,\"state_before\":\"configured\",\"cause\":\"existing\"}\n"
        );
    }

    #[test]
    fn if_needed_reloads_only_for_a_changed_file_or_a_managed_link() {
        let run = |nd: &FakeNd, changed: bool| {
            let pats = Pattern::defaults();
            let when = Reload::IfNeeded;
            block_on(apply(nd, &pats, || Ok(changed), Cause::Existing, when)).unwrap();
            nd.calls.borrow_mut().drain(..).collect::<Vec<_>>()
        };
        let settled = FakeNd::with(&[("ve-a", "unmanaged"), ("eth0", "configured")]);
        assert!(run(&settled, false).is_empty());
        assert_eq!(run(&settled, true), ["reload", "reconfigure 1"]);
        let taken = FakeNd::with(&[("ve-a", "configuring")]);
        assert_eq!(run(&taken, false), ["reload", "reconfigure 1"]);
    }

    #[test]
    fn a_failed_write_calls_nothing() {
        let nd = FakeNd::with(&[("ve-a", "configured")]);
        let e = block_on(apply(
            &nd,
            &Pattern::defaults(),
            || Err(Error::config("no")),
            Cause::Existing,
            Reload::Always,
        ))
        .unwrap_err();
        assert_eq!(e.code(), 78);
        assert!(nd.calls.borrow().is_empty());
    }

    #[test]
    fn the_file_only_ever_grows_until_removed() {
        let tmp = testbed::TempDir::new("nmu-nd-merge");
        let dir = tmp.path().join("network");
        let g = |p: &[&str]| {
            globs(
                &p.iter()
                    .map(|p| Pattern::parse(p).unwrap())
                    .collect::<Vec<_>>(),
            )
            .unwrap()
        };
        assert!(write(&dir, &g(&["ve-*", "vb-*"])).unwrap());
        // A per-container call adds its name; the same call again changes nothing.
        assert!(write(&dir, &g(&["interface-name:=ve-web"])).unwrap());
        assert!(!write(&dir, &g(&["interface-name:=ve-web"])).unwrap());
        assert!(!write(&dir, &g(&["vb-*"])).unwrap());
        let text = std::fs::read_to_string(dir.join(NETWORK_FILE)).unwrap();
        assert!(text.contains("\nName=ve-* vb-* ve-web\n"), "{text}");
    }

    #[test]
    fn concurrent_calls_never_lose_each_others_names() {
        // Container managers start containers in parallel, each with its own
        // one-shot call: every name must end up in the file.
        let tmp = testbed::TempDir::new("nmu-nd-race");
        let dir = tmp.path().join("network");
        persist::create_dir(&dir).unwrap();
        let names: Vec<String> = (0..16).map(|i| format!("ve-c{i}")).collect();
        std::thread::scope(|s| {
            for n in &names {
                let dir = &dir;
                s.spawn(move || write(dir, std::slice::from_ref(n)).unwrap());
            }
        });
        let have = current_globs(&dir);
        for n in &names {
            assert!(have.contains(n), "{n} lost: {have:?}");
        }
    }

    #[test]
    fn the_file_matches_names_and_leaves_them_unmanaged() {
        let text = render(
            &globs(&[
                Pattern::parse("ve-*").unwrap(),
                Pattern::parse("interface-name:=vb-x").unwrap(),
            ])
            .unwrap(),
        );
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            ["[Match]", "Name=ve-* vb-x", "", "[Link]", "Unmanaged=yes"]
        );
        assert!(NETWORK_FILE < "80-container-ve.network");
    }

    #[test]
    fn link_paths_give_their_ifindex() {
        assert_eq!(ifindex_of("/org/freedesktop/network1/link/_33"), Some(3));
        assert_eq!(ifindex_of("/org/freedesktop/network1/link/_312"), Some(12));
        assert_eq!(ifindex_of("/org/freedesktop/network1/link/_3a"), None);
        assert_eq!(ifindex_of("/org/freedesktop/network1/network/_33"), None);
        assert_eq!(ifindex_of("/org/freedesktop/network1/link"), None);
    }
}
