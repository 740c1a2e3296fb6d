//! The adapter trait every compared system implements, and what an adapter gets to work
//! with inside its host namespace: the container's names and addresses, the tools, and
//! a timer for one process.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{Fig, Samples, Window};
pub use crate::bench::stats::timed;
use crate::{bench::stats::ip_batch, util::Result};

/// Named parts of a teardown (their sum is the teardown), or of a bulk teardown.
pub type Parts = Vec<(&'static str, Duration)>;

/// One compared system. It runs in a host namespace of its own and sets up or tears
/// down one container at a time; the bench times what the adapter says the system pays.
pub trait System: Sync {
    /// Short name, for `--systems`, the CSVs and the inner run.
    fn key(&self) -> &'static str;
    /// Row label in the table and the plot.
    fn label(&self) -> &'static str;
    /// Whether a run without `--systems` includes it.
    fn in_default_run(&self) -> bool {
        true
    }
    /// Debian packages it needs beyond iproute2 and iptables.
    fn packages(&self) -> &'static [&'static str] {
        &[]
    }
    /// Once, before the first container, untimed.
    fn prepare(&self, _h: &Host) -> Result {
        Ok(())
    }
    /// Set up container `c` (its namespace exists); the wall time the system pays.
    fn setup(&self, h: &Host, c: &Ctr) -> Result<Duration>;
    /// Tear down container `c`, the parts timed.
    fn teardown(&self, h: &Host, c: &Ctr) -> Result<Parts>;
    /// How it sets up containers 0..n at once, if it has a way (else one by one).
    fn bulk_setup(&self) -> Option<fn(&Host, usize) -> Result<Duration>> {
        None
    }
    /// How it tears down containers 0..n at once, if it has a way.
    fn bulk_teardown(&self) -> Option<fn(&Host, usize) -> Result<Parts>> {
        None
    }
    /// More figures, taken with all containers up.
    fn extra(&self, _h: &Host) -> Result<Vec<Fig>> {
        Ok(Vec::new())
    }
    /// Lines for the report about its own extra figures.
    fn notes(&self, _s: &Samples, _ws: &[Window], _n: usize) -> String {
        String::new()
    }
}

/// The host namespace a system runs in (this process is in it).
pub struct Host<'a> {
    pub prefix: &'a str,
    /// Its scratch directory (stores, IPAM state, configs).
    pub work: &'a Path,
    /// Where the release builds of the tools are.
    pub bin: PathBuf,
}

/// Container number `i` (0-based) of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Ctr {
    pub i: usize,
    /// `c<i>`: the container's name for the tools.
    pub name: String,
    /// Its namespace's name under /run/netns.
    pub ns: String,
    /// Host and container (local) addresses, unique over the run.
    pub host_addr: String,
    pub local_addr: String,
}

impl Ctr {
    pub fn new(prefix: &str, i: usize) -> Ctr {
        let (host_addr, local_addr) = addrs(i + 1);
        Ctr {
            i,
            name: format!("c{i}"),
            ns: format!("{prefix}-c{i}"),
            host_addr,
            local_addr,
        }
    }

    /// `/run/netns/<ns>`.
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.ns)
    }

    /// The host end of its veth, as NixOS names it.
    pub fn host_dev(&self) -> String {
        format!("ve-{}", self.name)
    }
}

/// Host and container addresses of container number `k` (1-based), a /30 each from
/// 10.64.0.0/10.
fn addrs(k: usize) -> (String, String) {
    let a = k * 4;
    let net = format!("10.{}.{}", 64 + (a >> 16), (a >> 8) & 255);
    (
        format!("{net}.{}", (a & 255) + 1),
        format!("{net}.{}", (a & 255) + 2),
    )
}

impl Host<'_> {
    pub fn ctr(&self, i: usize) -> Ctr {
        Ctr::new(self.prefix, i)
    }

    /// One of this project's tools, with its state in the scratch directory.
    pub fn tool(&self, name: &str) -> Command {
        let mut c = self.cmd(&self.bin.join(name));
        if name == "ve-nat" {
            // Never the machine's system bus (ve-nat asks firewalld on it).
            c.env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                format!("unix:path={}/no-bus", self.work.display()),
            );
        }
        c
    }

    /// `program` with this project's state directories pointed at the scratch directory.
    pub fn cmd(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("VE_ALLOC_STORE", self.work.join("store"))
            .env("VE_ALLOC_CONFIG", "/dev/null")
            .env("VE_NAT_LOCK_DIR", self.work.join("ve-nat-lock"))
            // Never the machine's /var/lib/ve-nat record.
            .env("VE_NAT_STATE_DIR", self.work.join("ve-nat-state"));
        c
    }

    /// Container namespaces, made (untimed) just before their container is set up, in
    /// this process's own mount namespace (`ip netns exec` gave it one): the host sees
    /// as many of them as it has containers, as a real host would, and they go away
    /// with this process.
    pub fn make_netns(&self, names: &[String]) -> Result {
        let script: String = names
            .iter()
            .map(|n| format!("netns add {n}\nnetns exec {n} ip link set lo up\n"))
            .collect();
        ip_batch(&[], &script)
    }

    pub fn del_netns(&self, names: &[String]) -> Result {
        let script: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
        ip_batch(&[], &script)
    }
}

/// `ip ARGS`.
pub fn ip<S: AsRef<str>>(args: &[S]) -> Command {
    let mut c = Command::new("ip");
    c.args(args.iter().map(AsRef::as_ref));
    c
}

/// The argument lists of `cmd`, for tests of the command lines adapters build.
#[cfg(test)]
pub fn argv(cmd: &Command) -> Vec<String> {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_get_unique_names_and_addresses() {
        let (a, b) = (Ctr::new("p", 0), Ctr::new("p", 300));
        assert_eq!(a.name, "c0");
        assert_eq!(a.ns, "p-c0");
        assert_eq!(a.netns_path(), "/run/netns/p-c0");
        assert_eq!(a.host_dev(), "ve-c0");
        assert_eq!(
            (a.host_addr.as_str(), a.local_addr.as_str()),
            ("10.64.0.5", "10.64.0.6")
        );
        assert_ne!(a.host_addr, b.host_addr);
        assert_ne!(a.local_addr, b.local_addr);
        assert_eq!(Ctr::new("p", 16383).host_addr, "10.65.0.1");
    }

    #[test]
    fn tools_get_the_scratch_state() {
        let work = PathBuf::from("/tmp/w");
        let h = Host {
            prefix: "p",
            work: &work,
            bin: PathBuf::from("/b"),
        };
        let c = h.tool("ve-alloc");
        assert_eq!(argv(&c), ["/b/ve-alloc"]);
        let envs: Vec<_> = c
            .get_envs()
            .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
            .collect();
        assert!(envs
            .iter()
            .any(|(k, v)| k == "VE_ALLOC_STORE"
                && v.as_deref() == Some(work.join("store").as_os_str())));
        assert!(envs
            .iter()
            .any(|(k, v)| k == "VE_ALLOC_CONFIG" && v.as_deref() == Some("/dev/null".as_ref())));
    }
}
