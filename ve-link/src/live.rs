//! Which container namespaces are still in use, for `gc` and `list`: a namespace that
//! nothing names, mounts or runs in is a container that is gone.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use common::{Error, Exit, Result};

use crate::{
    kernel::{step_error, Netlink, Reply, Req},
    plan::Link,
};

/// The namespaces in use, as the host's namespace ids.
#[derive(Debug, Default)]
pub struct Live {
    /// Namespace id to what holds it (`pid N`, a name under /run/netns, a mount point).
    ids: BTreeMap<i32, String>,
    /// Namespaces of processes ve-link may not inspect (without CAP_SYS_PTRACE even root
    /// may not open the namespace of a process with more capabilities than it has),
    /// known only by their interface tables, which /proc shows to anyone.
    hidden: Vec<Hidden>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Hidden {
    label: String,
    /// Every IPv6 address in that namespace: (ifindex, address, interface name).
    addrs: Vec<(u32, [u8; 16], String)>,
    /// Every interface name in that namespace.
    names: Vec<String>,
}

/// The container end of a pair as the host sees it.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    pub index: u32,
    pub name: &'a str,
    pub mac: &'a [u8],
}

/// Whether a container namespace is still in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// In use, by this holder.
    Live(String),
    Gone,
    /// A process ve-link may not inspect may hold it: it cannot tell.
    Unknown(String),
}

impl Live {
    /// Does any process ve-link could not inspect exist?
    pub fn has_hidden(&self) -> bool {
        !self.hidden.is_empty()
    }

    /// The namespace the host knows as `nsid`, whose container end is `peer` (only
    /// needed when [`Live::has_hidden`]). A hidden namespace holds it when it has that
    /// link with the link-local address the kernel derives from its MAC. One that has
    /// a link of that name without any IPv6 address (so no index to compare) leaves it
    /// unknown; so does a container end that cannot be read.
    pub fn verdict(&self, nsid: i32, peer: Option<Peer>) -> Verdict {
        if let Some(l) = self.ids.get(&nsid) {
            return Verdict::Live(l.clone());
        }
        let Some(first) = self.hidden.first() else {
            return Verdict::Gone;
        };
        let Some(p) = peer else {
            return Verdict::Unknown(first.label.clone());
        };
        let ll = link_local(p.mac);
        for h in &self.hidden {
            let held = h
                .addrs
                .iter()
                .any(|(i, a, _)| *i == p.index && Some(*a) == ll);
            if held {
                return Verdict::Live(h.label.clone());
            }
        }
        for h in &self.hidden {
            let named = h.names.iter().any(|n| n == p.name);
            if named && !h.addrs.iter().any(|(_, _, n)| n == p.name) {
                return Verdict::Unknown(h.label.clone());
            }
        }
        Verdict::Gone
    }
}

/// The EUI-64 link-local address (fe80::/64) the kernel gives a link with this MAC.
fn link_local(mac: &[u8]) -> Option<[u8; 16]> {
    let m: [u8; 6] = mac.try_into().ok()?;
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8..].copy_from_slice(&[m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]);
    Some(a)
}

/// `/proc/net/if_inet6`: `ADDR(32 hex) IFINDEX(hex) PREFIXLEN SCOPE FLAGS NAME` lines.
fn parse_if_inet6(text: &str) -> Vec<(u32, [u8; 16], String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [hex, idx, _, _, _, name] = f[..] else {
                return None;
            };
            let idx = u32::from_str_radix(idx, 16).ok()?;
            if hex.len() != 32 {
                return None;
            }
            let mut a = [0u8; 16];
            for (i, b) in a.iter_mut().enumerate() {
                *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some((idx, a, name.to_string()))
        })
        .collect()
}

/// `/proc/net/dev`: two header lines, then `NAME: counters...`.
fn parse_net_dev(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_string()))
        .collect()
}

/// What /proc shows anyone about the namespace of task directory `task`; None when the
/// task is gone.
fn hidden(task: &Path, label: String) -> Option<Hidden> {
    let read = |f: &str| match fs::read_to_string(task.join("net").join(f)) {
        Ok(t) => Some(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        // No IPv6 in that namespace, or not readable: nothing known.
        Err(_) => Some(None),
    };
    let names = read("dev")?.map(|t| parse_net_dev(&t)).unwrap_or_default();
    let addrs = read("if_inet6")?
        .map(|t| parse_if_inet6(&t))
        .unwrap_or_default();
    Some(Hidden {
        label,
        addrs,
        names,
    })
}

/// The namespaces in use, by the namespace's file identity: named under /run/netns,
/// bind-mounted anywhere (Docker's, a user's, whatever path was given to `--netns`), or
/// entered by some process or thread. A namespace that only a stray file descriptor
/// keeps alive is a container that is gone.
pub fn live(nl: &dyn Netlink) -> Result<Live> {
    let mut seen = HashSet::new();
    let mut out = Live::default();
    // (namespace file, label, the task directory for a process's)
    let mut candidates: Vec<(PathBuf, String, Option<PathBuf>)> = Vec::new();
    if let Ok(d) = fs::read_dir(common::netns::NETNS_DIR) {
        for e in d.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            candidates.push((e.path(), n, None));
        }
    }
    candidates.extend(nsfs_mounts().into_iter().map(|(p, l)| (p, l, None)));
    if let Ok(d) = fs::read_dir("/proc") {
        for e in d.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            // Every thread: one may have entered a namespace its process has not.
            match fs::read_dir(e.path().join("task")) {
                Ok(tasks) => {
                    for t in tasks.flatten() {
                        let task = t.path();
                        candidates.push((task.join("ns/net"), format!("pid {n}"), Some(task)));
                    }
                }
                Err(_) => {
                    let task = e.path();
                    candidates.push((task.join("ns/net"), format!("pid {n}"), Some(task)));
                }
            }
        }
    }
    // Namespace files opened, asked about a chunk at a time (one exchange each, and
    // not too many descriptors open at once).
    let mut open: Vec<(fs::File, String)> = Vec::new();
    for (path, label, task) in candidates {
        let f = match open_ns(&path, &mut seen) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) if is_denied(&e) => {
                let Some(task) = task else {
                    return Err(denied(&path, e));
                };
                let Some(h) = hidden(&task, label) else {
                    continue;
                };
                if !out
                    .hidden
                    .iter()
                    .any(|o| o.addrs == h.addrs && o.names == h.names)
                {
                    log::debug!(
                        "cannot inspect the namespace of {}: {}",
                        h.label,
                        Error::from(e)
                    );
                    out.hidden.push(h);
                }
                continue;
            }
            // Gone meanwhile (a process that exited) is no namespace in use.
            Err(_) => continue,
        };
        open.push((f, label));
        if open.len() == CHUNK {
            ask_ids(nl, open.drain(..), &mut out)?;
        }
    }
    ask_ids(nl, open.drain(..), &mut out)?;
    Ok(out)
}

/// Whether the container namespace of host end `l` (namespace id `id`) is in use. Only
/// when some process may not be inspected is the container end looked at.
pub fn verdict_of(nl: &dyn Netlink, live: &Live, l: &Link, id: i32) -> Result<Verdict> {
    let mut peer = None;
    if let v @ Verdict::Live(_) = live.verdict(id, None) {
        return Ok(v);
    }
    if live.has_hidden() {
        if let Some(pi) = l.peer {
            peer = nl
                .link_at(pi, id)
                .map_err(|e| step_error(format!("reading the container end of {}", l.name), e))?;
        }
    }
    Ok(live.verdict(
        id,
        peer.as_ref().map(|p| Peer {
            index: p.index,
            name: &p.name,
            mac: &p.mac,
        }),
    ))
}

/// Namespace files asked about in one exchange.
const CHUNK: usize = 64;

/// Record the namespace ids of `files` (those that have one) in `out`.
fn ask_ids(
    nl: &dyn Netlink,
    files: impl Iterator<Item = (fs::File, String)>,
    out: &mut Live,
) -> Result<()> {
    let (files, labels): (Vec<fs::File>, Vec<String>) = files.unzip();
    let reqs: Vec<Req> = files.iter().map(|f| Req::NsidOf(f.as_raw_fd())).collect();
    for (label, r) in labels.into_iter().zip(nl.batch(&reqs)) {
        match r.and_then(Reply::nsid) {
            Ok(Some(id)) => {
                out.ids.entry(id).or_insert(label);
            }
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut || is_denied(&e) => {
                return Err(step_error("asking for a namespace id", e));
            }
            // Not a network namespace (other namespace files are mounted too).
            Err(_) => {}
        }
    }
    Ok(())
}

fn denied(path: &Path, e: std::io::Error) -> Error {
    Error::new(
        Exit::NoPerm,
        format!(
            "cannot tell which network namespaces are in use: {}: {}",
            path.display(),
            Error::from(e)
        ),
    )
}

/// A namespace file not seen before, opened; None if seen already.
fn open_ns(path: &Path, seen: &mut HashSet<(u64, u64)>) -> std::io::Result<Option<fs::File>> {
    let meta = fs::metadata(path)?;
    if !seen.insert((meta.dev(), meta.ino())) {
        return Ok(None);
    }
    fs::File::open(path).map(Some)
}

fn is_denied(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EPERM)
}

/// Mount points of namespace files (`nsfs`) in this mount namespace, from
/// /proc/self/mountinfo: `ID PARENT DEV ROOT MOUNTPOINT OPTIONS ... - FSTYPE ...`, with
/// spaces and the like in paths written as octal escapes.
fn nsfs_mounts() -> Vec<(std::path::PathBuf, String)> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split(' ').next() != Some("nsfs") {
                return None;
            }
            let point = unescape_mount_path(left.split(' ').nth(4)?);
            Some((std::path::PathBuf::from(&point), point))
        })
        .collect()
}

fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0xfc, 0x00, 0x00, 0x00, 0x01];

    #[test]
    fn proc_net_files_parse_and_the_link_local_follows_the_mac() {
        let t = "fd000000000000000000000000000002 04 40 00 82     eth0\n\
                 fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
                 00000000000000000000000000000001 01 80 10 80       lo\n";
        let a = parse_if_inet6(t);
        assert_eq!(a.len(), 3);
        assert_eq!(a[1], (4, link_local(&MAC).unwrap(), "eth0".to_string()));
        let d = "Inter-|   Receive\n face |bytes\n    lo:    3193 29\n  eth0: 0 0\n";
        assert_eq!(parse_net_dev(d), ["lo", "eth0"]);
    }

    fn hid(label: &str, addrs: &[(u32, [u8; 6], &str)], names: &[&str]) -> Hidden {
        Hidden {
            label: label.into(),
            addrs: addrs
                .iter()
                .map(|(i, m, n)| (*i, link_local(m).unwrap(), n.to_string()))
                .collect(),
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn a_hidden_namespace_is_matched_by_its_link_local_or_leaves_it_unknown() {
        let peer = Some(Peer {
            index: 2,
            name: "eth0",
            mac: &MAC,
        });
        let mut l = Live::default();
        l.ids.insert(3, "pid 7".into());
        assert_eq!(l.verdict(3, None), Verdict::Live("pid 7".into()));
        assert_eq!(l.verdict(4, peer), Verdict::Gone);
        // The machine's namespace: an eth0 of its own, at another index.
        l.hidden.push(hid(
            "pid 1",
            &[(4, [2, 0, 0, 0, 0, 9], "eth0")],
            &["lo", "eth0"],
        ));
        // A namespace without links but lo.
        l.hidden.push(hid("pid 5", &[], &["lo"]));
        assert_eq!(l.verdict(4, peer), Verdict::Gone);
        // Same MAC on another link index: another namespace.
        l.hidden
            .push(hid("pid 8", &[(5, MAC, "eth0")], &["lo", "eth0"]));
        assert_eq!(l.verdict(4, peer), Verdict::Gone);
        // An eth0 without IPv6: cannot tell.
        l.hidden.push(hid("pid 2", &[], &["lo", "eth0"]));
        assert_eq!(l.verdict(4, peer), Verdict::Unknown("pid 2".into()));
        // The container end itself, whatever comes before it.
        l.hidden
            .push(hid("pid 9", &[(2, MAC, "eth0")], &["lo", "eth0"]));
        assert_eq!(l.verdict(4, peer), Verdict::Live("pid 9".into()));
        assert_eq!(l.verdict(4, None), Verdict::Unknown("pid 1".into()));
    }
}
