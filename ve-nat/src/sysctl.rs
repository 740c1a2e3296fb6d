//! The forwarding and `route_localnet` sysctls, written under /proc/sys of the network
//! namespace ve-nat runs in (they are per namespace; /proc/sys/net shows the opener's
//! namespace).
//!
//! `route_localnet` (localhost forwards): a connection the host opens from 127.0.0.1 and
//! ve-nat DNATs to a container leaves on the container's host-side interface with source
//! 127.0.0.1, which the kernel allows only with `net.ipv4.conf.<that
//! interface>.route_localnet=1` (else the route lookup fails); the reply, un-NATed back
//! to 127.0.0.1 in PREROUTING, arrives on the same interface and needs it there too
//! (else it is a martian). `conf.all` would do as well, but it would also open the
//! uplink; so ve-nat sets it on each existing interface that an `--internal` pattern
//! matches, and nowhere else. An interface made after `up` has it off until the next
//! `up` (or `ve-nat watch`) sets it: until then localhost forwards to that container
//! time out, and nothing is exposed.

use std::path::{Path, PathBuf};

use common::{Error, Result};

use crate::config::{Family, IfPattern, Request};

/// Where the sysctls live: `/proc/sys`, or a directory standing in for it in tests.
#[derive(Debug, Clone)]
pub struct Sysctl {
    root: PathBuf,
}

impl Default for Sysctl {
    fn default() -> Self {
        Sysctl {
            root: PathBuf::from("/proc/sys"),
        }
    }
}

impl Sysctl {
    pub fn at(root: &Path) -> Sysctl {
        Sysctl {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, family: Family) -> PathBuf {
        self.root.join(match family {
            // Writing ip_forward also sets every interface's conf/*/forwarding.
            Family::Ipv4 => "net/ipv4/ip_forward",
            // Note: forwarding makes the namespace an IPv6 router, which stops it from
            // accepting router advertisements unless accept_ra is 2.
            Family::Ipv6 => "net/ipv6/conf/all/forwarding",
        })
    }

    /// The sysctl's name, for messages.
    pub fn name(family: Family) -> &'static str {
        match family {
            Family::Ipv4 => "net.ipv4.ip_forward",
            Family::Ipv6 => "net.ipv6.conf.all.forwarding",
        }
    }

    /// Whether forwarding is on (`None` when the sysctl does not exist, e.g. IPv6
    /// disabled).
    pub fn forwarding(&self, family: Family) -> Result<Option<bool>> {
        let p = self.path(family);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim() != "0")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }

    /// A host that forwards IPv6 ignores router advertisements on an interface whose
    /// `accept_ra` is 1 (the default), and so would lose the IPv6 default route it
    /// learnt by SLAAC on the uplink. Set 2 ("even when forwarding") where it is 1;
    /// 0 (the administrator's "never") is left alone. Returns whether it changed.
    pub fn keep_router_advertisements(&self, iface: &str) -> Result<bool> {
        let p = self.root.join(format!("net/ipv6/conf/{iface}/accept_ra"));
        match std::fs::read_to_string(&p) {
            Ok(v) if v.trim() == "1" => {
                std::fs::write(&p, "2\n")
                    .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
                log::info!("net.ipv6.conf.{iface}.accept_ra = 2 (keeps router advertisements while forwarding)");
                Ok(true)
            }
            Ok(_) => Ok(false),
            // No such interface or no IPv6 on it: nothing to keep.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }

    /// Turn forwarding on; returns whether it was off.
    pub fn enable_forwarding(&self, family: Family) -> Result<bool> {
        let p = self.path(family);
        match self.forwarding(family)? {
            Some(true) => Ok(false),
            Some(false) => {
                std::fs::write(&p, "1\n")
                    .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
                log::info!("{} = 1", Self::name(family));
                Ok(true)
            }
            None => Err(Error::unavailable(format!(
                "{} does not exist: is {family} disabled in this kernel?",
                p.display()
            ))),
        }
    }
}

impl Sysctl {
    /// The interfaces of this namespace, as /proc/sys/net/ipv4/conf lists them (every
    /// entry but `all` and `default`), sorted.
    pub fn interfaces(&self) -> Result<Vec<String>> {
        let dir = self.root.join("net/ipv4/conf");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            // No IPv4 at all: no interface to set anything on.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name != "all" && name != "default" {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The existing interfaces that one of `patterns` matches.
    pub fn matching(&self, patterns: &[IfPattern]) -> Result<Vec<String>> {
        Ok(self
            .interfaces()?
            .into_iter()
            .filter(|i| patterns.iter().any(|p| p.matches(i)))
            .collect())
    }

    fn localnet_path(&self, iface: &str) -> PathBuf {
        self.root
            .join(format!("net/ipv4/conf/{iface}/route_localnet"))
    }

    /// `net.ipv4.conf.IFACE.route_localnet`; `None` when the interface is gone.
    pub fn route_localnet(&self, iface: &str) -> Result<Option<bool>> {
        let p = self.localnet_path(iface);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim() != "0")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }

    /// Set `route_localnet` of `iface`; returns whether it changed. An interface that
    /// went away meanwhile (a container stopping) is not an error.
    pub fn set_route_localnet(&self, iface: &str, on: bool) -> Result<bool> {
        if self.route_localnet(iface)?.is_none_or(|v| v == on) {
            return Ok(false);
        }
        let p = self.localnet_path(iface);
        match std::fs::write(&p, if on { "1\n" } else { "0\n" }) {
            Ok(()) => {
                log::info!("net.ipv4.conf.{iface}.route_localnet = {}", u8::from(on));
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("writing {}", p.display()), e)),
        }
    }

    /// `up`: `route_localnet` on for every existing interface `req.internal` matches
    /// when `req` has localhost forwards, off otherwise (`--no-localhost`, or no IPv4
    /// forward). Call it after the rules (the loopback guard) are in place. Returns the
    /// interfaces it changed.
    pub fn apply_localhost(&self, req: &Request) -> Result<Vec<String>> {
        let on = req.localhost_forwards();
        let mut changed = Vec::new();
        for iface in self.matching(&req.internal)? {
            if self.set_route_localnet(&iface, on)? {
                changed.push(iface);
            }
        }
        Ok(changed)
    }

    /// `check`: the interfaces `req.internal` matches whose `route_localnet` is not as
    /// `up` leaves it, one line each.
    pub fn localhost_differences(&self, req: &Request) -> Result<Vec<String>> {
        let on = req.localhost_forwards();
        let mut diffs = Vec::new();
        for iface in self.matching(&req.internal)? {
            if self.route_localnet(&iface)?.is_some_and(|v| v != on) {
                diffs.push(format!(
                    "net.ipv4.conf.{iface}.route_localnet is {}",
                    u8::from(!on)
                ));
            }
        }
        Ok(diffs)
    }

    /// `down`: `route_localnet` off on every interface one of `patterns` matches (those
    /// of the installed rules, and the default `ve-+`). Call it before the rules go.
    /// Keeps going after a failure; returns the errors.
    pub fn clear_route_localnet(&self, patterns: &[IfPattern]) -> Vec<Error> {
        let ifaces = match self.matching(patterns) {
            Ok(i) => i,
            Err(e) => return vec![e],
        };
        ifaces
            .iter()
            .filter_map(|i| self.set_route_localnet(i, false).err())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enables_once() {
        let dir = std::env::temp_dir().join(format!("ve-nat-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("net/ipv4")).unwrap();
        std::fs::write(dir.join("net/ipv4/ip_forward"), "0\n").unwrap();
        let s = Sysctl::at(&dir);
        assert_eq!(s.forwarding(Family::Ipv4).unwrap(), Some(false));
        assert!(s.enable_forwarding(Family::Ipv4).unwrap());
        assert!(!s.enable_forwarding(Family::Ipv4).unwrap());
        assert_eq!(s.forwarding(Family::Ipv6).unwrap(), None);
        assert_eq!(s.enable_forwarding(Family::Ipv6).unwrap_err().code(), 69);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn router_advertisements_kept_on_the_uplink_unless_refused() {
        let dir = std::env::temp_dir().join(format!("ve-nat-ra-{}", std::process::id()));
        for (iface, v) in [("up0", "1"), ("up1", "0"), ("up2", "2")] {
            std::fs::create_dir_all(dir.join(format!("net/ipv6/conf/{iface}"))).unwrap();
            std::fs::write(dir.join(format!("net/ipv6/conf/{iface}/accept_ra")), v).unwrap();
        }
        let s = Sysctl::at(&dir);
        assert!(s.keep_router_advertisements("up0").unwrap());
        let read = |i: &str| {
            std::fs::read_to_string(dir.join(format!("net/ipv6/conf/{i}/accept_ra"))).unwrap()
        };
        assert_eq!(read("up0").trim(), "2");
        assert!(!s.keep_router_advertisements("up0").unwrap(), "idempotent");
        assert!(!s.keep_router_advertisements("up1").unwrap());
        assert_eq!(read("up1").trim(), "0", "an administrator's 0 stays");
        assert!(!s.keep_router_advertisements("up2").unwrap());
        assert!(!s.keep_router_advertisements("nope").unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn route_localnet_on_matching_interfaces_only() {
        let dir = std::env::temp_dir().join(format!("ve-nat-localnet-{}", std::process::id()));
        for iface in ["all", "default", "lo", "up0", "ve-a", "ve-b", "vb-c"] {
            std::fs::create_dir_all(dir.join(format!("net/ipv4/conf/{iface}"))).unwrap();
            std::fs::write(
                dir.join(format!("net/ipv4/conf/{iface}/route_localnet")),
                "0\n",
            )
            .unwrap();
        }
        let s = Sysctl::at(&dir);
        assert_eq!(
            s.interfaces().unwrap(),
            ["lo", "up0", "vb-c", "ve-a", "ve-b"]
        );
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut req = Request::new(
            "up0",
            &[],
            &[],
            &[],
            &v(&["tcp:8080:10.233.1.2:80"]),
            false,
            None,
        )
        .unwrap();
        assert_eq!(s.localhost_differences(&req).unwrap().len(), 2);
        assert_eq!(s.apply_localhost(&req).unwrap(), ["ve-a", "ve-b"]);
        assert!(s.apply_localhost(&req).unwrap().is_empty(), "idempotent");
        assert!(s.localhost_differences(&req).unwrap().is_empty());
        for (i, want) in [
            ("up0", false),
            ("vb-c", false),
            ("all", false),
            ("ve-a", true),
        ] {
            assert_eq!(s.route_localnet(i).unwrap(), Some(want), "{i}");
        }
        assert_eq!(s.route_localnet("gone").unwrap(), None);
        assert!(!s.set_route_localnet("gone", true).unwrap());
        // --no-localhost turns it off again, and check sees the 1s left.
        req.localhost = false;
        assert_eq!(s.localhost_differences(&req).unwrap().len(), 2);
        assert_eq!(s.apply_localhost(&req).unwrap(), ["ve-a", "ve-b"]);
        req.localhost = true;
        s.apply_localhost(&req).unwrap();
        let pats = ["vb-+".parse().unwrap(), "ve-+".parse().unwrap()];
        assert!(s.clear_route_localnet(&pats).is_empty());
        assert_eq!(s.route_localnet("ve-b").unwrap(), Some(false));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
