//! The near-limit reference: the NixOS sequence's netlink work from one `ip -batch`
//! process per namespace (two processes per container); teardown `ip link del`.

use std::time::Duration;

use super::{
    nixos,
    system::{ip, timed, Ctr, Host, Parts, System},
};
use crate::util::Result;

pub struct IpBatch;

pub const KEY: &str = "batch";

impl System for IpBatch {
    fn key(&self) -> &'static str {
        KEY
    }

    fn label(&self) -> &'static str {
        "`ip -batch` x2 (near-limit)"
    }

    fn setup(&self, _h: &Host, c: &Ctr) -> Result<Duration> {
        let (host, ctr) = scripts(c);
        let t = timed(&mut ip(&["-batch", "-"]), Some(&host))?;
        Ok(t + timed(&mut ip(&["-n", &c.ns, "-batch", "-"]), Some(&ctr))?)
    }

    fn teardown(&self, _h: &Host, c: &Ctr) -> Result<Parts> {
        nixos::teardown(c)
    }
}

/// The host's and the container's batch, the same commands as the NixOS sequence.
fn scripts(c: &Ctr) -> (String, String) {
    let lines = |v: Vec<Vec<String>>| -> String { v.iter().map(|a| a.join(" ") + "\n").collect() };
    (
        lines(nixos::host_commands(c)),
        lines(nixos::container_commands(c)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_batches_with_the_nixos_commands() {
        let (host, ctr) = scripts(&Ctr::new("p", 0));
        assert_eq!(host.lines().count(), 4);
        assert!(host.starts_with("link add ve-c0 type veth peer name eth0 netns p-c0\n"));
        assert_eq!(ctr.lines().count(), 5);
        assert!(ctr.ends_with("route add default via 10.64.0.5 dev eth0\n"));
    }
}
