//! The decisions: which devices to unmanage, and what to report about them. Pure logic
//! over the [`Nm`] trait, so it is unit-tested against a fake.

use serde::Serialize;

use common::{Error, Result};

use crate::{
    nm::{Device, Nm},
    spec::{any_matches, Pattern},
};

/// Why the tool looked at a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// It was there when the tool started (or when NetworkManager came back).
    Existing,
    /// NetworkManager announced it with `DeviceAdded`.
    Added,
}

/// One device the tool set `Managed=false` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmanaged {
    pub interface: String,
    pub path: String,
    /// Whether NetworkManager managed it before.
    pub was_managed: bool,
    /// Its `NMDeviceState` before (100 activated, 70 getting an address, 10 unmanaged).
    pub state_before: u32,
    pub cause: Cause,
    /// Microseconds from receiving `DeviceAdded` to NetworkManager acknowledging
    /// `Managed=false` (watch mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_signal_us: Option<u64>,
}

impl Unmanaged {
    fn new(d: &Device, cause: Cause) -> Unmanaged {
        Unmanaged {
            interface: d.interface.clone(),
            path: d.path.clone(),
            was_managed: d.managed,
            state_before: d.state,
            cause,
            after_signal_us: None,
        }
    }
}

/// Set `Managed=false` on every current device matching `patterns` and return them.
/// Devices that do not match are never touched. Matching devices that are already
/// unmanaged get the flag too: NetworkManager may be just about to take a brand-new
/// device over, and the flag it keeps for the device's lifetime prevents that. One
/// failing device does not stop the others; the first error is returned after all.
pub async fn unmanage_existing<N: Nm>(nm: &N, patterns: &[Pattern]) -> Result<Vec<Unmanaged>> {
    let mut done = Vec::new();
    let mut first_err: Option<Error> = None;
    for d in nm.devices().await? {
        if !any_matches(patterns, &d.interface) {
            continue;
        }
        match nm.set_unmanaged(&d.path).await {
            Ok(true) => done.push(Unmanaged::new(&d, Cause::Existing)),
            Ok(false) => log::info!("{} went away before it could be unmanaged", d.interface),
            Err(e) => {
                log::error!("{}: {e}", d.interface);
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// What became of a device NetworkManager announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It matched and is now unmanaged.
    Unmanaged(Unmanaged),
    /// It does not match: left alone.
    NoMatch,
    /// NetworkManager has no such device (any more, or not yet).
    Gone,
}

impl Outcome {
    /// Whether NetworkManager confirmed the device and it has been dealt with for good:
    /// only then may a later announcement of the same path be ignored.
    pub fn settled(&self) -> bool {
        !matches!(self, Outcome::Gone)
    }
}

/// A device NetworkManager just announced: unmanage it when it matches.
pub async fn unmanage_added<N: Nm>(nm: &N, path: &str, patterns: &[Pattern]) -> Result<Outcome> {
    let Some(d) = nm.device(path).await? else {
        return Ok(Outcome::Gone);
    };
    unmanage_announced(nm, d, patterns).await
}

/// A device NetworkManager announced together with its properties (`InterfacesAdded`):
/// unmanage it when it matches, with no round trip to ask what it is.
pub async fn unmanage_announced<N: Nm>(nm: &N, d: Device, patterns: &[Pattern]) -> Result<Outcome> {
    if !any_matches(patterns, &d.interface) {
        log::debug!("{} ({}) does not match; left alone", d.interface, d.path);
        return Ok(Outcome::NoMatch);
    }
    Ok(if nm.set_unmanaged(&d.path).await? {
        Outcome::Unmanaged(Unmanaged::new(&d, Cause::Added))
    } else {
        Outcome::Gone
    })
}

/// The stdout text for `done`: JSON lines, or interface names (with `changed_only`,
/// just those that NetworkManager managed before).
pub fn render(done: &[Unmanaged], json: bool, changed_only: bool) -> Result<String> {
    let mut out = String::new();
    for u in done.iter().filter(|u| u.was_managed || !changed_only) {
        if json {
            out.push_str(&common::output::json_line(u)?);
        } else {
            out.push_str(&u.interface);
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{cell::RefCell, collections::BTreeMap};

    use super::*;

    /// NetworkManager as a map of devices; records every Set.
    #[derive(Default)]
    pub(crate) struct FakeNm {
        pub devices: RefCell<BTreeMap<String, Device>>,
        pub sets: RefCell<Vec<String>>,
        pub reloads: RefCell<u32>,
        pub fail_set_on: Option<String>,
        /// Fail this many Sets, whatever the device (a transient error).
        pub fail_sets: RefCell<u32>,
        /// Who owns NetworkManager's name, as the bus would say.
        pub owner: RefCell<Option<String>>,
    }

    impl FakeNm {
        pub fn with(devs: &[(&str, bool)]) -> FakeNm {
            let nm = FakeNm::default();
            for (i, (name, managed)) in devs.iter().enumerate() {
                let path = format!("/org/freedesktop/NetworkManager/Devices/{}", i + 1);
                nm.devices.borrow_mut().insert(
                    path.clone(),
                    Device {
                        path,
                        interface: name.to_string(),
                        managed: *managed,
                        state: if *managed { 100 } else { 10 },
                    },
                );
            }
            nm
        }

        pub fn path_of(&self, ifname: &str) -> String {
            self.devices
                .borrow()
                .values()
                .find(|d| d.interface == ifname)
                .map(|d| d.path.clone())
                .unwrap()
        }

        pub fn managed(&self, ifname: &str) -> bool {
            self.devices.borrow()[&self.path_of(ifname)].managed
        }
    }

    impl Nm for FakeNm {
        async fn devices(&self) -> Result<Vec<Device>> {
            Ok(self.devices.borrow().values().cloned().collect())
        }
        async fn device(&self, path: &str) -> Result<Option<Device>> {
            Ok(self.devices.borrow().get(path).cloned())
        }
        async fn set_unmanaged(&self, path: &str) -> Result<bool> {
            self.sets.borrow_mut().push(path.to_string());
            let mut devs = self.devices.borrow_mut();
            let Some(d) = devs.get_mut(path) else {
                return Ok(false);
            };
            if self.fail_set_on.as_deref() == Some(d.interface.as_str()) {
                return Err(Error::new(common::Kind::Permission, "not allowed"));
            }
            let mut fail = self.fail_sets.borrow_mut();
            if *fail > 0 {
                *fail -= 1;
                return Err(Error::new(common::Kind::Os, "transient failure"));
            }
            d.managed = false;
            d.state = 10;
            Ok(true)
        }
        async fn reload_config(&self) -> Result<()> {
            *self.reloads.borrow_mut() += 1;
            Ok(())
        }
        async fn owner(&self) -> Result<Option<String>> {
            Ok(self.owner.borrow().clone())
        }
    }

    pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn text_lines(done: &[Unmanaged]) -> String {
        render(done, false, true).unwrap()
    }

    #[test]
    fn only_matching_devices_are_touched() {
        let nm = FakeNm::with(&[
            ("eth0", true),
            ("ve-a", true),
            ("vz-other", true),
            ("vb-b", false),
        ]);
        let done = block_on(unmanage_existing(&nm, &Pattern::defaults())).unwrap();
        let names: Vec<_> = done.iter().map(|u| u.interface.as_str()).collect();
        assert_eq!(names, ["ve-a", "vb-b"]);
        assert!(nm.managed("eth0") && nm.managed("vz-other"));
        assert!(!nm.managed("ve-a") && !nm.managed("vb-b"));
        let set = nm.sets.borrow().clone();
        assert_eq!(set, [nm.path_of("ve-a"), nm.path_of("vb-b")]);
        // Only a device whose state changed is printed.
        assert_eq!(text_lines(&done), "ve-a\n");
    }

    #[test]
    fn second_run_changes_nothing() {
        let nm = FakeNm::with(&[("ve-a", true)]);
        let pats = Pattern::defaults();
        assert_eq!(
            text_lines(&block_on(unmanage_existing(&nm, &pats)).unwrap()),
            "ve-a\n"
        );
        assert_eq!(
            text_lines(&block_on(unmanage_existing(&nm, &pats)).unwrap()),
            ""
        );
    }

    #[test]
    fn one_failure_does_not_stop_the_others() {
        let mut nm = FakeNm::with(&[("ve-a", true), ("ve-b", true), ("ve-c", true)]);
        nm.fail_set_on = Some("ve-b".into());
        let e = block_on(unmanage_existing(&nm, &Pattern::defaults())).unwrap_err();
        assert_eq!(e.code(), 77);
        assert!(!nm.managed("ve-a") && !nm.managed("ve-c"));
    }

    #[test]
    fn added_devices_are_checked_against_the_patterns() {
        let nm = FakeNm::with(&[("ve-new", false), ("eth1", true)]);
        let pats = Pattern::defaults();
        let Outcome::Unmanaged(u) =
            block_on(unmanage_added(&nm, &nm.path_of("ve-new"), &pats)).unwrap()
        else {
            panic!("ve-new not unmanaged");
        };
        assert_eq!((u.interface.as_str(), u.cause), ("ve-new", Cause::Added));
        let o = block_on(unmanage_added(&nm, &nm.path_of("eth1"), &pats)).unwrap();
        assert_eq!(o, Outcome::NoMatch);
        assert!(o.settled());
        assert!(nm.managed("eth1"));
        // Vanished before we looked (or not there yet): nothing to do, no error, and
        // not settled.
        let o = block_on(unmanage_added(&nm, "/gone", &pats)).unwrap();
        assert_eq!(o, Outcome::Gone);
        assert!(!o.settled());
        // Custom patterns.
        let only_eth = [Pattern::parse("interface-name:eth*").unwrap()];
        block_on(unmanage_added(&nm, &nm.path_of("eth1"), &only_eth)).unwrap();
        assert!(!nm.managed("eth1"));
    }

    #[test]
    fn json_shape() {
        let nm = FakeNm::with(&[("ve-a", true)]);
        let done = block_on(unmanage_existing(&nm, &Pattern::defaults())).unwrap();
        let line = common::output::json_line(&done[0]).unwrap();
        assert_eq!(
            line,
            "{\"interface\":\"ve-a\",\"path\":\"/org/freedesktop/NetworkManager/Devices/1\",\
             \"was_managed\":true,\"state_before\":100,\"cause\":\"existing\"}\n"
        );
    }
}
