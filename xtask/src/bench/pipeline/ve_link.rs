//! `ve-link` alone, addresses given as flags (no allocator, no NAT): what `bench link`
//! compares with the NixOS sequence. Teardown `ve-link down NAME`, bulk teardown
//! `ve-link down --all`. Not in the default run (the `ve` row has it inside).

use std::{process::Command, time::Duration};

use super::{
    report::ms,
    system::{timed, Ctr, Host, Parts, System},
    Samples, Window,
};
use crate::util::Result;

pub struct VeLink;

impl System for VeLink {
    fn key(&self) -> &'static str {
        "ve-link"
    }

    fn label(&self) -> &'static str {
        "ve-link alone (addresses as flags)"
    }

    fn in_default_run(&self) -> bool {
        false
    }

    fn setup(&self, h: &Host, c: &Ctr) -> Result<Duration> {
        timed(&mut up(h, c), None)
    }

    fn teardown(&self, h: &Host, c: &Ctr) -> Result<Parts> {
        Ok(vec![(
            "teardown",
            timed(h.tool("ve-link").args(["down", &c.name]), None)?,
        )])
    }

    fn bulk_teardown(&self) -> Option<fn(&Host, usize) -> Result<Parts>> {
        Some(|h, _| {
            let d = timed(h.tool("ve-link").args(["down", "--all"]), None)?;
            Ok(vec![("bulk-down", d)])
        })
    }

    fn notes(&self, s: &Samples, _ws: &[Window], n: usize) -> String {
        s.total("bulk-down").map_or_else(String::new, |d| {
            format!(
                "bulk teardown of {n}, ve-link alone: `ve-link down --all` {} ms\n",
                ms(d)
            )
        })
    }
}

fn up(h: &Host, c: &Ctr) -> Command {
    let mut cmd = h.tool("ve-link");
    cmd.args(["up", &c.name, "--netns", &c.netns_path()])
        .args(["--host-address", &c.host_addr])
        .args(["--local-address", &c.local_addr]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::pipeline::system::argv;
    use std::path::PathBuf;

    #[test]
    fn up_gives_the_addresses_as_flags() {
        let work = PathBuf::from("/w");
        let h = Host {
            prefix: "p",
            work: &work,
            bin: PathBuf::from("/b"),
        };
        assert_eq!(
            argv(&up(&h, &h.ctr(0))).join(" "),
            "/b/ve-link up c0 --netns /run/netns/p-c0 --host-address 10.64.0.5 \
             --local-address 10.64.0.6"
        );
    }
}
