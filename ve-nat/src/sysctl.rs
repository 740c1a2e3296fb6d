//! The forwarding sysctls, written under /proc/sys of the network namespace ve-nat runs
//! in (they are per namespace; /proc/sys/net shows the opener's namespace).

use std::path::{Path, PathBuf};

use common::{Error, Result};

use crate::config::Family;

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
}
