//! CNI `ptp` with `host-local` IPAM and `ipMasq: true` (Debian's
//! containernetworking-plugins), called as a runtime calls it: `CNI_COMMAND=ADD`/`DEL`
//! in the environment, the network configuration on stdin.

use std::{path::Path, process::Command, time::Duration};

use super::system::{timed, Ctr, Host, Parts, System};
use crate::util::Result;

const CNI_DIR: &str = "/usr/lib/cni";

pub struct CniPtp;

impl System for CniPtp {
    fn key(&self) -> &'static str {
        "cni"
    }

    fn label(&self) -> &'static str {
        "CNI ptp + host-local, ipMasq"
    }

    fn packages(&self) -> &'static [&'static str] {
        &["containernetworking-plugins"]
    }

    fn setup(&self, h: &Host, c: &Ctr) -> Result<Duration> {
        timed(&mut plugin("ADD", c), Some(&conf(h.work)))
    }

    fn teardown(&self, h: &Host, c: &Ctr) -> Result<Parts> {
        Ok(vec![(
            "teardown",
            timed(&mut plugin("DEL", c), Some(&conf(h.work)))?,
        )])
    }
}

fn conf(work: &Path) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"vebench","type":"ptp","ipMasq":true,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.240.0.0/16"}}]],"dataDir":"{}"}}}}"#,
        work.join("ipam").display()
    )
}

fn plugin(command: &str, c: &Ctr) -> Command {
    let mut cmd = Command::new(Path::new(CNI_DIR).join("ptp"));
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &c.name)
        .env("CNI_NETNS", c.netns_path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_DIR);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_gets_the_cni_environment_and_its_ipam_dir() {
        let c = Ctr::new("p", 1);
        let cmd = plugin("ADD", &c);
        assert_eq!(cmd.get_program(), "/usr/lib/cni/ptp");
        let env = |k: &str| {
            cmd.get_envs()
                .find(|(n, _)| *n == k)
                .and_then(|(_, v)| v)
                .map(|v| v.to_string_lossy().into_owned())
        };
        assert_eq!(env("CNI_COMMAND").as_deref(), Some("ADD"));
        assert_eq!(env("CNI_NETNS").as_deref(), Some("/run/netns/p-c1"));
        assert_eq!(env("CNI_CONTAINERID").as_deref(), Some("c1"));
        let conf = conf(Path::new("/w"));
        assert!(conf.contains(r#""ipMasq":true"#) && conf.contains(r#""dataDir":"/w/ipam""#));
    }
}
