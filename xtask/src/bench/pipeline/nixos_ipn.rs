//! The NixOS `ip` sequence as the first version of this bench ran it, kept as a second,
//! labelled row: the host side as in [`super::nixos`], the container side as one
//! `ip -n NS` process per command. Each `ip -n` copies the mount namespace (to see the
//! namespace's /sys), a cost that grows with the namespaces mounted under /run/netns
//! and that NixOS does not pay; so this row overstates NixOS, more so with many
//! containers.

use std::time::{Duration, Instant};

use super::{
    nixos,
    system::{ip, timed, Ctr, Host, Parts, System},
};
use crate::util::Result;

pub struct NixosIpN;

impl System for NixosIpN {
    fn key(&self) -> &'static str {
        "nixos-ipn"
    }

    fn label(&self) -> &'static str {
        "NixOS `ip` sequence, container side as `ip -n` (overstated)"
    }

    fn setup(&self, _h: &Host, c: &Ctr) -> Result<Duration> {
        let t = Instant::now();
        for args in commands(c) {
            timed(&mut ip(&args), None)?;
        }
        Ok(t.elapsed())
    }

    fn teardown(&self, _h: &Host, c: &Ctr) -> Result<Parts> {
        nixos::teardown(c)
    }
}

/// All nine commands (arguments after `ip`), the container's through `-n`.
fn commands(c: &Ctr) -> Vec<Vec<String>> {
    let ctr = nixos::container_commands(c).into_iter().map(|args| {
        ["-n".to_string(), c.ns.clone()]
            .into_iter()
            .chain(args)
            .collect()
    });
    nixos::host_commands(c).into_iter().chain(ctr).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_side_goes_through_ip_n() {
        let c = Ctr::new("p", 2);
        let v = commands(&c);
        assert_eq!(v.len(), 9);
        assert_eq!(v[..4], nixos::host_commands(&c)[..]);
        assert_eq!(v[4].join(" "), "-n p-c2 link set lo up");
        assert!(v[4..].iter().all(|a| a[..2] == ["-n", "p-c2"]));
    }
}
