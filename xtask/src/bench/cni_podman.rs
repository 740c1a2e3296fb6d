//! The podman row of `cargo xtask bench cni`: the median wall time of `podman run --rm
//! --rootfs ... true` (Debian 12's podman 4.3.1, CNI backend, in `testbed::podman`'s
//! sandbox) on our conflist (README's podman one: ve-link with ve-alloc, ve-nat with
//! portMappings, nm-unmanage), on the reference one (ptp with ipMasq and host-local,
//! portmap) and with `--network none`. The network's share is a time minus the
//! none time; issue 15's target is ours at most half the reference's.
//!
//! The three run in lockstep (round-robin, the order rotating every round), each in a
//! sandbox host namespace of its own, so load changes hit all alike; one discarded
//! warm-up run each (podman's first run in a fresh
//! root initialises its database, and ve-nat's first ADD installs its table).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{json, Value};
use testbed::{podman::Podman, Sandbox, TempDir, OUTSIDE};

use super::stats::{median_p90, ms, timed};
use crate::util::{self, Result};

/// Debian's containernetworking-plugins.
const REFERENCE: &str = "/usr/lib/cni";

/// The target: our network share at most this fraction of the reference's.
const TARGET_RATIO: f64 = 0.5;

/// One network's timings.
#[derive(Debug, Clone)]
pub struct Timing {
    pub label: &'static str,
    pub median: Duration,
    pub p90: Duration,
}

/// The podman row: ours, the reference, `--network none`.
#[derive(Debug, Clone)]
pub struct PodmanRow {
    pub runs: usize,
    pub ours: Timing,
    pub reference: Timing,
    pub none: Timing,
}

impl PodmanRow {
    /// Our share over the reference's (medians minus the none median).
    pub fn ratio(&self) -> f64 {
        let share = |t: &Timing| t.median.saturating_sub(self.none.median).as_secs_f64();
        let theirs = share(&self.reference);
        if theirs == 0.0 {
            f64::INFINITY
        } else {
            share(&self.ours) / theirs
        }
    }

    /// Whether the target holds.
    pub fn met(&self) -> bool {
        self.ratio() <= TARGET_RATIO
    }

    /// The table: median, p90 and network share per row, then the ratio and verdict.
    pub fn report(&self) -> String {
        let rows = [&self.none, &self.ours, &self.reference];
        let w = rows.iter().map(|t| t.label.len()).max().unwrap_or(0);
        let mut s = format!(
            "podman 4.3 `run --rm --rootfs ... true`, {} runs each (ms; share: minus none)\n\
             {:<w$} {:>9} {:>9} {:>9}\n",
            self.runs, "network", "median", "p90", "share"
        );
        for t in rows {
            let share = if t.label == self.none.label {
                "-".to_string()
            } else {
                ms(t.median.saturating_sub(self.none.median))
            };
            s.push_str(&format!(
                "{:<w$} {:>9} {:>9} {:>9}\n",
                t.label,
                ms(t.median),
                ms(t.p90),
                share
            ));
        }
        s.push_str(&format!(
            "our network share / the reference's: {:.2} (target <= {TARGET_RATIO:.2}): {}\n",
            self.ratio(),
            if self.met() { "met" } else { "NOT met" }
        ));
        s
    }
}

/// One sandbox: a host namespace with an uplink (the default route, for ve-nat's
/// `external: auto`) and podman with one network, or none.
struct Bed {
    label: &'static str,
    network: &'static str,
    pm: Podman,
    _state: TempDir,
    _sb: Sandbox,
}

impl Bed {
    fn new(
        label: &'static str,
        rootfs: &Path,
        plugins: &[(&str, PathBuf)],
        conflist: Option<Value>,
        state: TempDir,
    ) -> Result<Bed> {
        let mut sb = Sandbox::new();
        crate::guard::namespaces(sb.prefix());
        crate::guard::dir(state.path());
        let host = sb.netns("host");
        let out = sb.netns("out");
        testbed::uplink(&host, &out);
        host.ip(&["route", "add", "default", "via", OUTSIDE]);
        let plugins: Vec<(&str, &Path)> = plugins.iter().map(|(n, p)| (*n, p.as_path())).collect();
        let networks: Vec<(&str, &Value)> = conflist.iter().map(|c| ("vetest", c)).collect();
        let pm = Podman::start(&host, rootfs, &plugins, &networks)
            .map_err(|e| format!("bench cni (podman): {label}: {e}"))?;
        crate::guard::dir(pm.scratch());
        Ok(Bed {
            label,
            network: if conflist.is_some() { "vetest" } else { "none" },
            pm,
            _state: state,
            _sb: sb,
        })
    }

    fn once(&self) -> Result<Duration> {
        let mut run = self
            .pm
            .run_command(&["--rm", "--network", self.network], &["true"]);
        timed(&mut run, None).map_err(|e| format!("bench cni (podman): {}: {e}", self.label))
    }
}

/// Our conflist (the README's podman one) with its store in `state`.
fn ours(state: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "vetest",
        "plugins": [
            { "type": "ve-link",
              "ipam": { "type": "ve-alloc", "pool": "10.233.0.0/16",
                        "store": state.join("store") } },
            { "type": "ve-nat", "external": "auto", "capabilities": { "portMappings": true } },
            { "type": "nm-unmanage" }
        ]
    })
}

/// The reference conflist, host-local's data in `state`.
fn reference(state: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "vetest",
        "plugins": [
            { "type": "ptp", "ipMasq": true,
              "ipam": { "type": "host-local", "dataDir": state.join("data"),
                        "ranges": [[{ "subnet": "10.233.0.0/16" }]],
                        "routes": [{ "dst": "0.0.0.0/0" }] } },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
}

/// The podman row, with our plugins from `tools` (a directory holding the four
/// binaries, e.g. target/release) and `runs` timed runs per network.
pub fn podman_row(tools: &Path, runs: usize) -> Result<PodmanRow> {
    if !util::is_root() {
        return Err("bench cni (podman): needs root (it creates network namespaces)".into());
    }
    if !Podman::available() {
        return Err(format!(
            "bench cni (podman): needs {:?} (apt-get install podman)",
            Podman::COMMANDS
        ));
    }
    let ref_plugins: Vec<(&str, PathBuf)> = ["ptp", "host-local", "portmap"]
        .into_iter()
        .map(|p| (p, Path::new(REFERENCE).join(p)))
        .collect();
    if let Some((p, path)) = ref_plugins.iter().find(|(_, path)| !path.is_file()) {
        return Err(format!(
            "bench cni (podman): {} ({p}) is missing: apt-get install containernetworking-plugins",
            path.display()
        ));
    }
    let our_plugins: Vec<(&str, PathBuf)> = ["ve-alloc", "ve-link", "ve-nat", "nm-unmanage"]
        .into_iter()
        .map(|t| (t, tools.join(t)))
        .collect();
    if let Some((_, path)) = our_plugins.iter().find(|(_, path)| !path.is_file()) {
        return Err(format!("bench cni (podman): {} is missing", path.display()));
    }
    let rootfs = testbed::rootfs::cached(&util::root().join("target/tmp/boot-rootfs"));

    let (s1, s2) = (
        TempDir::new("bench-podman-va"),
        TempDir::new("bench-podman-hl"),
    );
    let (c1, c2) = (ours(s1.path()), reference(s2.path()));
    let beds = [
        Bed::new(
            "none (--network none)",
            &rootfs,
            &[],
            None,
            TempDir::new("bench-podman-none"),
        )?,
        Bed::new(
            "ours (ve-link+ve-alloc, ve-nat, nm-unmanage)",
            &rootfs,
            &our_plugins,
            Some(c1),
            s1,
        )?,
        Bed::new(
            "reference (ptp+host-local ipMasq, portmap)",
            &rootfs,
            &ref_plugins,
            Some(c2),
            s2,
        )?,
    ];
    for bed in &beds {
        bed.once()?;
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); beds.len()];
    // Round-robin, each round starting one bed later: no network always runs right
    // after the same other one.
    for round in 0..runs {
        for k in 0..beds.len() {
            let i = (round + k) % beds.len();
            samples[i].push(beds[i].once()?);
        }
    }
    let mut timings = beds.iter().zip(samples.iter_mut()).map(|(bed, s)| {
        let (median, p90) = median_p90(s);
        Timing {
            label: bed.label,
            median,
            p90,
        }
    });
    let (Some(none), Some(ours), Some(reference)) =
        (timings.next(), timings.next(), timings.next())
    else {
        return Err("bench cni (podman): three networks expected".into());
    };
    Ok(PodmanRow {
        runs,
        ours,
        reference,
        none,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(label: &'static str, ms: u64) -> Timing {
        Timing {
            label,
            median: Duration::from_millis(ms),
            p90: Duration::from_millis(ms),
        }
    }

    #[test]
    fn the_ratio_compares_network_shares() {
        let row = PodmanRow {
            runs: 1,
            none: t("none", 100),
            ours: t("ours", 150),
            reference: t("ref", 220),
        };
        assert!((row.ratio() - 50.0 / 120.0).abs() < 1e-9);
        assert!(row.met());
        let worse = PodmanRow {
            ours: t("ours", 200),
            ..row.clone()
        };
        assert!(!worse.met());
        assert!(worse.report().contains("NOT met"), "{}", worse.report());
    }
}
