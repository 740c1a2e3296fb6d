//! netavark (Debian's, as podman runs it): the bridge driver with the iptables firewall,
//! `netavark setup`/`teardown NETNS` with podman's JSON on stdin.

use std::{path::Path, process::Command, time::Duration};

use super::system::{timed, Ctr, Host, Parts, System};
use crate::util::Result;

const NETAVARK: &str = "/usr/lib/podman/netavark";

pub struct Netavark;

impl System for Netavark {
    fn key(&self) -> &'static str {
        "netavark"
    }

    fn label(&self) -> &'static str {
        "netavark bridge"
    }

    fn packages(&self) -> &'static [&'static str] {
        &["netavark"]
    }

    fn setup(&self, h: &Host, c: &Ctr) -> Result<Duration> {
        timed(&mut command(h.work, "setup", c), Some(&conf(c)))
    }

    fn teardown(&self, h: &Host, c: &Ctr) -> Result<Parts> {
        Ok(vec![(
            "teardown",
            timed(&mut command(h.work, "teardown", c), Some(&conf(c)))?,
        )])
    }
}

fn command(work: &Path, verb: &str, c: &Ctr) -> Command {
    let mut cmd = Command::new(NETAVARK);
    cmd.env("NETAVARK_FW", "iptables")
        .arg("--config")
        .arg(work.join("netavark"))
        .args([verb, &c.netns_path()]);
    cmd
}

/// netavark's input as podman writes it: one bridge network, the container's address
/// chosen by the caller.
fn conf(c: &Ctr) -> String {
    let a = c.i + 2;
    let name = &c.name;
    format!(
        r#"{{"container_id":"{name}","container_name":"{name}","networks":{{"vebench":{{"static_ips":["10.88.{}.{}"],"interface_name":"eth0"}}}},"network_info":{{"vebench":{{"name":"vebench","id":"5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e","driver":"bridge","network_interface":"vebr0","subnets":[{{"gateway":"10.88.0.1","subnet":"10.88.0.0/16"}}],"ipv6_enabled":false,"internal":false,"dns_enabled":false,"ipam_options":{{"driver":"host-local"}}}}}}}}"#,
        a >> 8,
        a & 255
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::pipeline::system::argv;

    #[test]
    fn podman_style_input_with_a_unique_static_address() {
        let c = Ctr::new("p", 300);
        assert!(conf(&c).contains(r#""static_ips":["10.88.1.46"]"#));
        assert!(conf(&Ctr::new("p", 0)).contains(r#""static_ips":["10.88.0.2"]"#));
        assert_eq!(
            argv(&command(Path::new("/w"), "setup", &c)),
            [
                NETAVARK,
                "--config",
                "/w/netavark",
                "setup",
                "/run/netns/p-c300"
            ]
        );
    }
}
