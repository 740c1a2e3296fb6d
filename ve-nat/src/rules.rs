//! All rule text ve-nat ever writes is built here, from validated values only.
//!
//! Architecture invariant: no other module formats an iptables rule or restore line.
//! Every rule is in the canonical form `iptables-save` prints (checked against both
//! backends by the privileged tests), so "installed equals wanted" is a plain string
//! comparison.
//!
//! Design: connections entering from a container interface (or an `--internal-ip`
//! source) get a mark bit in nat PREROUTING; POSTROUTING masquerades marked
//! connections leaving on the external interface. The wildcard `ve-+` makes a new
//! container need no rule at all. Port forwards DNAT any local destination address
//! (`addrtype LOCAL`) in PREROUTING (outside and other containers) and OUTPUT (the host
//! itself); a hairpinned connection (from a container, DNATed back into a container) is
//! masqueraded so replies come back through the host.
//!
//! Localhost forwards (IPv4): the OUTPUT DNAT covers 127.0.0.0/8 too, and a DNATed
//! connection from 127.0.0.0/8 leaving on a container interface is masqueraded to the
//! host's address there (the container would otherwise answer its own loopback). The
//! kernel routes it only with `route_localnet` on that interface (see `sysctl`), which
//! also lets a container send to the host's 127.0.0.1: filter INPUT's `ve-nat-in`
//! drops anything to 127.0.0.0/8 that did not come in on `lo` and was not DNATed
//! (CVE-2020-8558), whether or not localhost forwards are on.

use std::net::IpAddr;

use crate::config::{Family, Forward, IfPattern, Request};

/// The nat and filter tables.
pub const NAT: &str = "nat";
pub const FILTER: &str = "filter";

/// One chain of ours and the built-in chain that jumps to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainId {
    pub table: &'static str,
    pub chain: &'static str,
    pub hook: &'static str,
    /// The staging chain earlier versions built a new set in (one may be left by an
    /// interrupted `up` of theirs; `up` and `down` remove it).
    pub staging: &'static str,
}

pub const PRE: ChainId = ChainId {
    table: NAT,
    chain: "ve-nat-pre",
    hook: "PREROUTING",
    staging: "ve-nat-pre-new",
};
pub const POST: ChainId = ChainId {
    table: NAT,
    chain: "ve-nat-post",
    hook: "POSTROUTING",
    staging: "ve-nat-post-new",
};
pub const OUT: ChainId = ChainId {
    table: NAT,
    chain: "ve-nat-out",
    hook: "OUTPUT",
    staging: "ve-nat-out-new",
};
pub const FWD: ChainId = ChainId {
    table: FILTER,
    chain: "ve-nat-fwd",
    hook: "FORWARD",
    staging: "ve-nat-fwd-new",
};
pub const IN: ChainId = ChainId {
    table: FILTER,
    chain: "ve-nat-in",
    hook: "INPUT",
    staging: "ve-nat-in-new",
};

/// Every chain of ours, in the order `up` installs them: filter first, so forwarded
/// traffic is accepted and the loopback guard is in place before anything is NATed.
pub const CHAINS: [ChainId; 5] = [FWD, IN, PRE, OUT, POST];

/// Whether `name` is one of our chains (or an earlier version's staging chain): the
/// shell-mode NAT's, not CNI mode's (`CNI_CHAINS`).
pub fn is_ours(name: &str) -> bool {
    CHAINS.iter().any(|c| c.chain == name || c.staging == name)
}

/// CNI mode's chains with an iptables backend (see `ipt_cni`): the port mappings of CNI
/// containers, one rule per mapping and chain, tagged with a comment naming the
/// attachment; `ve-nat up` and `down` never touch them. `first`: the jump goes at the
/// top of the hook (the forward accepts, before anyone's drop); otherwise at the end,
/// after ve-nat's own jump, whose MARK the hairpin masquerade needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CniChain {
    pub table: &'static str,
    pub chain: &'static str,
    pub hook: &'static str,
    pub first: bool,
}

pub const CNI_FWD: CniChain = CniChain {
    table: FILTER,
    chain: "ve-nat-cni-fwd",
    hook: "FORWARD",
    first: true,
};
pub const CNI_PRE: CniChain = CniChain {
    table: NAT,
    chain: "ve-nat-cni-pre",
    hook: "PREROUTING",
    first: false,
};
pub const CNI_OUT: CniChain = CniChain {
    table: NAT,
    chain: "ve-nat-cni-out",
    hook: "OUTPUT",
    first: false,
};
pub const CNI_POST: CniChain = CniChain {
    table: NAT,
    chain: "ve-nat-cni-post",
    hook: "POSTROUTING",
    first: false,
};
pub const CNI_CHAINS: [CniChain; 4] = [CNI_FWD, CNI_PRE, CNI_OUT, CNI_POST];

/// CNI mode's fixed rule: a container reaching a mapped port through a host address
/// (hairpin) is masqueraded, so the reply comes back through the host.
pub fn cni_hairpin(internal: &IfPattern, mark: u32) -> String {
    let p = internal.as_str();
    format!("-o {p} -m mark --mark 0x{mark:x}/0x{mark:x} -m conntrack --ctstate DNAT -j MASQUERADE")
}

/// The rules of one CNI port mapping (`fwd`, a single port, on `host_ip` only when
/// given), tagged `tag` (letters, digits and `-` only: iptables-save prints it bare).
pub fn cni_mapping(fwd: &Forward, host_ip: Option<IpAddr>, tag: &str) -> Vec<(CniChain, String)> {
    let p = fwd.proto.as_str();
    let hp = fwd.host_ports.first;
    let to = format!("{}:{}", bracket(fwd.addr), fwd.ports.first);
    let comment = format!("-m comment --comment {tag}");
    let dnat = |dst: String| {
        format!(
            "{dst}-p {p} -m addrtype --dst-type LOCAL -m {p} --dport {hp} {comment} -j DNAT \
             --to-destination {to}"
        )
    };
    let mut out = Vec::new();
    let on = host_ip.map(|h| format!("-d {} ", host_cidr(&h)));
    out.push((CNI_PRE, dnat(on.clone().unwrap_or_default())));
    // From the host itself: any local address but loopback (nothing answers there).
    let loopback = match fwd.family() {
        Family::Ipv4 => LOOPBACK4,
        Family::Ipv6 => "::1/128",
    };
    match (host_ip, on) {
        (Some(h), _) if h.is_loopback() => {}
        (_, Some(on)) => out.push((CNI_OUT, dnat(on))),
        (_, None) => out.push((CNI_OUT, dnat(format!("! -d {loopback} ")))),
    }
    out.push((
        CNI_FWD,
        format!(
            "-d {} -p {p} -m {p} --dport {} -m conntrack --ctstate DNAT {comment} -j ACCEPT",
            host_cidr(&fwd.addr),
            fwd.ports.first
        ),
    ));
    out
}

/// The tag of a CNI mapping rule (`--comment TAG`).
pub fn cni_tag(rule: &str) -> Option<&str> {
    let mut it = rule.split(' ');
    it.find(|t| *t == "--comment")?;
    it.next()
}

/// What a DNAT rule in a prerouting chain takes: `(destination or None for every
/// local address, protocol, first and last host port)`, from its `-d`, `-p` and
/// `--dport` (a range `A:B` too), for finding host ports taken twice.
pub fn dnat_key(rule: &str) -> Option<(Option<String>, String, u16, u16)> {
    if !rule.contains(" -j DNAT ") {
        return None;
    }
    let toks: Vec<&str> = rule.split(' ').collect();
    let after = |k: &str| {
        toks.iter()
            .position(|t| *t == k)
            .filter(|&i| i == 0 || toks[i - 1] != "!")
            .and_then(|i| toks.get(i + 1).copied())
    };
    let proto = after("-p")?.to_string();
    let ports = after("--dport")?;
    let (a, b) = ports.split_once(':').unwrap_or((ports, ports));
    Some((
        after("-d").map(str::to_string),
        proto,
        a.parse().ok()?,
        b.parse().ok()?,
    ))
}

/// IPv4's loopback network, which only `lo` may deliver to unless we DNATed it.
const LOOPBACK4: &str = "127.0.0.0/8";

/// The CVE-2020-8558 guard, as `iptables -S` prints it.
pub fn loopback_guard() -> String {
    format!("-d {LOOPBACK4} ! -i lo -m conntrack ! --ctstate DNAT -j DROP")
}

/// The container interface patterns of the installed `ve-nat-pre` rules (`-i PATTERN
/// -j MARK ...`), so `down` knows where an earlier `up` may have set `route_localnet`.
pub fn internal_patterns(pre_rules: &[String]) -> Vec<IfPattern> {
    pre_rules
        .iter()
        .filter_map(|r| {
            let rest = r.strip_prefix("-i ")?;
            let (pat, tail) = rest.split_once(' ')?;
            tail.starts_with("-j MARK ")
                .then(|| pat.parse::<IfPattern>().ok())
                .flatten()
        })
        .collect()
}

/// The contents of one chain: rule specifications without the `-A CHAIN` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRules {
    pub id: ChainId,
    pub rules: Vec<String>,
}

/// The unconditional jump from a built-in chain to ours.
pub fn jump(chain: &str) -> String {
    format!("-j {chain}")
}

/// One line of an `iptables-restore --noflush` transaction on one table. Rule texts
/// are ours (checked with `is_safe` before they get here) or as `iptables-save` printed
/// them (a jump of someone else's to our chain, to delete), which restore reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `:CHAIN - [0:0]`: create the user-defined chain, or flush it when it exists.
    Chain(String),
    Append(String, String),
    /// Insert at a 1-based position.
    Insert(String, usize, String),
    /// Delete the first rule equal to the text.
    Delete(String, String),
    Flush(String),
    DeleteChain(String),
}

impl Op {
    /// The restore line.
    pub fn line(&self) -> String {
        match self {
            Op::Chain(c) => format!(":{c} - [0:0]"),
            Op::Append(c, r) => format!("-A {c} {r}"),
            Op::Insert(c, pos, r) => format!("-I {c} {pos} {r}"),
            Op::Delete(c, r) => format!("-D {c} {r}"),
            Op::Flush(c) => format!("-F {c}"),
            Op::DeleteChain(c) => format!("-X {c}"),
        }
    }
}

/// What `req` wants in each chain of `family`, in `CHAINS` order.
pub fn wanted(req: &Request, family: Family) -> Vec<ChainRules> {
    let mark = format!("0x{:x}/0x{:x}", req.mark, req.mark);
    // `-s NET ` / `-d NET ` prefixes; a /0 network matches every address, and
    // iptables prints no match for it at all, so neither do we.
    let nets: Vec<(String, String)> = req
        .internal_ips
        .iter()
        .filter(|n| {
            matches!(
                (n, family),
                (ipnet::IpNet::V4(_), Family::Ipv4) | (ipnet::IpNet::V6(_), Family::Ipv6)
            )
        })
        .map(|n| {
            if n.prefix_len() == 0 {
                (String::new(), String::new())
            } else {
                (format!("-s {n} "), format!("-d {n} "))
            }
        })
        .collect();
    let fwds: Vec<&Forward> = req
        .forwards
        .iter()
        .filter(|f| f.family() == family)
        .collect();
    let ext = req.external.as_str();
    // The OUTPUT DNAT leaves loopback alone unless localhost forwards are on (IPv4
    // only: the kernel never routes a reply to ::1 that arrives on another interface).
    let localhost = family == Family::Ipv4 && req.localhost_forwards();
    let loopback = match family {
        _ if localhost => None,
        Family::Ipv4 => Some(LOOPBACK4),
        Family::Ipv6 => Some("::1/128"),
    };

    let mut pre = Vec::new();
    for p in &req.internal {
        pre.push(format!("-i {} -j MARK --set-xmark {mark}", p.as_str()));
    }
    for (src, _) in &nets {
        pre.push(format!("{src}-j MARK --set-xmark {mark}"));
    }
    for f in &fwds {
        pre.push(dnat(f, None));
    }

    let mut out = Vec::new();
    for f in &fwds {
        out.push(dnat(f, loopback));
    }

    let mut post = Vec::new();
    let snat = req
        .external_ips
        .iter()
        .find(|a| Family::of(a) == family)
        .map(|a| format!("-j SNAT --to-source {a}"))
        .unwrap_or_else(|| "-j MASQUERADE".to_string());
    post.push(format!("-o {ext} -m mark --mark {mark} {snat}"));
    if !fwds.is_empty() {
        for p in &req.internal {
            post.push(format!(
                "-o {} -m mark --mark {mark} -m conntrack --ctstate DNAT -j MASQUERADE",
                p.as_str()
            ));
        }
    }
    if localhost {
        for p in &req.internal {
            post.push(format!("-s {LOOPBACK4} -o {} -j MASQUERADE", p.as_str()));
        }
    }

    let mut input = Vec::new();
    if family == Family::Ipv4 {
        input.push(loopback_guard());
    }

    let mut fwd = Vec::new();
    for p in &req.internal {
        fwd.push(format!("-i {} -o {ext} -j ACCEPT", p.as_str()));
        fwd.push(format!(
            "-o {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            p.as_str()
        ));
    }
    for (src, dst) in &nets {
        fwd.push(format!("{src}-o {ext} -j ACCEPT"));
        fwd.push(format!(
            "{dst}-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ));
    }
    for f in &fwds {
        let p = f.proto.as_str();
        fwd.push(format!(
            "-d {} -p {p} -m {p} --dport {} -m conntrack --ctstate DNAT -j ACCEPT",
            host_cidr(&f.addr),
            port_match(f.ports.first, f.ports.last)
        ));
    }

    vec![
        ChainRules {
            id: FWD,
            rules: fwd,
        },
        ChainRules {
            id: IN,
            rules: input,
        },
        ChainRules {
            id: PRE,
            rules: pre,
        },
        ChainRules {
            id: OUT,
            rules: out,
        },
        ChainRules {
            id: POST,
            rules: post,
        },
    ]
}

/// The DNAT rule of a port forward; `not_dst` excludes a destination (loopback, in
/// OUTPUT, without localhost forwards: a DNATed packet from 127.0.0.1 could not leave
/// the host).
fn dnat(f: &Forward, not_dst: Option<&str>) -> String {
    let p = f.proto.as_str();
    let to = match (f.addr, f.ports) {
        (a, ports) if ports.is_single() => format!("{}:{}", bracket(a), ports.first),
        // Same ports on both sides: leaving the port out keeps it.
        (a, ports) if ports == f.host_ports => a.to_string(),
        // A shifted range: `/BASE` maps host port BASE+i to first+i (kernel >= 5.6).
        (a, ports) => format!(
            "{}:{}-{}/{}",
            bracket(a),
            ports.first,
            ports.last,
            f.host_ports.first
        ),
    };
    let neg = not_dst.map(|d| format!("! -d {d} ")).unwrap_or_default();
    format!(
        "{neg}-p {p} -m addrtype --dst-type LOCAL -m {p} --dport {} -j DNAT --to-destination {to}",
        port_match(f.host_ports.first, f.host_ports.last)
    )
}

fn port_match(first: u16, last: u16) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}:{last}")
    }
}

fn bracket(a: IpAddr) -> String {
    match a {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

fn host_cidr(a: &IpAddr) -> String {
    match a {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Defence in depth: iptables-restore splits a line on spaces and quotes, and a line
/// break starts a new command, so a token with a quote, a control character or an empty
/// token would change a rule's meaning. Validated input never produces one; refuse to
/// run if it ever does.
pub fn is_safe(rule: &str) -> bool {
    !rule.is_empty()
        && rule.split(' ').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\'')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(fwd: &[&str], ipv6: bool, ext_ip: &[&str], nets: &[&str]) -> Request {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Request::new("up0", &[], &s(nets), &s(ext_ip), &s(fwd), ipv6, None).unwrap()
    }

    #[test]
    fn minimal_request() {
        let w = wanted(&req(&[], false, &[], &[]), Family::Ipv4);
        let by = |id: ChainId| w.iter().find(|c| c.id == id).unwrap().rules.clone();
        assert_eq!(by(PRE), ["-i ve-+ -j MARK --set-xmark 0x2000/0x2000"]);
        assert_eq!(
            by(POST),
            ["-o up0 -m mark --mark 0x2000/0x2000 -j MASQUERADE"]
        );
        assert!(by(OUT).is_empty());
        assert_eq!(
            by(FWD),
            [
                "-i ve-+ -o up0 -j ACCEPT",
                "-o ve-+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            ]
        );
    }

    #[test]
    fn forwards_snat_and_families() {
        let r = req(
            &[
                "tcp:8080:10.233.1.2:80",
                "udp:5000-5001:[fd00::2]:6000-6001",
                "tcp:9000-9001:10.233.1.2:9000-9001",
            ],
            true,
            &["192.0.2.10"],
            &["10.233.0.0/16", "fd00::/64"],
        );
        let w4 = wanted(&r, Family::Ipv4);
        let by =
            |w: &[ChainRules], id: ChainId| w.iter().find(|c| c.id == id).unwrap().rules.clone();
        assert_eq!(
            by(&w4, PRE)[2],
            "-p tcp -m addrtype --dst-type LOCAL -m tcp --dport 8080 -j DNAT --to-destination 10.233.1.2:80"
        );
        assert_eq!(
            by(&w4, PRE)[3],
            "-p tcp -m addrtype --dst-type LOCAL -m tcp --dport 9000:9001 -j DNAT --to-destination 10.233.1.2"
        );
        // Localhost forwards (the default): OUTPUT DNATs 127.0.0.1 too.
        assert!(by(&w4, OUT)[0].starts_with("-p tcp "));
        assert_eq!(
            by(&w4, POST)[0],
            "-o up0 -m mark --mark 0x2000/0x2000 -j SNAT --to-source 192.0.2.10"
        );
        assert_eq!(by(&w4, POST).len(), 3);
        assert_eq!(by(&w4, POST)[2], "-s 127.0.0.0/8 -o ve-+ -j MASQUERADE");
        let w6 = wanted(&r, Family::Ipv6);
        assert_eq!(
            by(&w6, PRE)[1],
            "-s fd00::/64 -j MARK --set-xmark 0x2000/0x2000"
        );
        assert_eq!(
            by(&w6, PRE)[2],
            "-p udp -m addrtype --dst-type LOCAL -m udp --dport 5000:5001 -j DNAT --to-destination [fd00::2]:6000-6001/5000"
        );
        assert_eq!(
            by(&w6, POST)[0],
            "-o up0 -m mark --mark 0x2000/0x2000 -j MASQUERADE"
        );
        // ::1 is never forwarded, and IPv6 has no loopback guard to hold.
        assert!(by(&w6, OUT)[0].starts_with("! -d ::1/128 -p udp "));
        assert_eq!(by(&w6, POST).len(), 2);
        assert!(by(&w6, IN).is_empty());
        assert!(by(&w6, FWD).contains(
            &"-d fd00::2/128 -p udp -m udp --dport 6000:6001 -m conntrack --ctstate DNAT -j ACCEPT"
                .to_string()
        ));
        for c in w4.iter().chain(&w6) {
            for rule in &c.rules {
                assert!(is_safe(rule), "{rule}");
            }
        }
    }

    #[test]
    fn localhost_forwards_and_the_loopback_guard() {
        let by =
            |w: &[ChainRules], id: ChainId| w.iter().find(|c| c.id == id).unwrap().rules.clone();
        let guard = "-d 127.0.0.0/8 ! -i lo -m conntrack ! --ctstate DNAT -j DROP";
        // No forward: nothing to answer on 127.0.0.1, but the guard is there.
        let w = wanted(&req(&[], false, &[], &[]), Family::Ipv4);
        assert_eq!(by(&w, IN), [guard]);
        assert_eq!(by(&w, POST).len(), 1);
        let mut r = req(&["tcp:8080:10.233.1.2:80"], false, &[], &[]);
        let w = wanted(&r, Family::Ipv4);
        assert_eq!(
            by(&w, OUT),
            ["-p tcp -m addrtype --dst-type LOCAL -m tcp --dport 8080 -j DNAT --to-destination 10.233.1.2:80"]
        );
        assert!(by(&w, POST).contains(&"-s 127.0.0.0/8 -o ve-+ -j MASQUERADE".to_string()));
        assert_eq!(by(&w, IN), [guard]);
        // --no-localhost: loopback excluded again, no masquerade from it, guard kept.
        r.localhost = false;
        let w = wanted(&r, Family::Ipv4);
        assert!(by(&w, OUT)[0].starts_with("! -d 127.0.0.0/8 -p tcp "));
        assert!(!by(&w, POST).iter().any(|x| x.contains("127.0.0.0/8")));
        assert_eq!(by(&w, IN), [guard]);
        // `down` finds the patterns again in ve-nat-pre.
        let pre = by(&w, PRE);
        let pats = internal_patterns(&pre);
        assert_eq!(pats.len(), 1);
        assert_eq!(pats[0].as_str(), "ve-+");
        assert!(internal_patterns(&["-i x -j ACCEPT".into()]).is_empty());
    }

    #[test]
    fn every_source_network_has_no_match() {
        let w = wanted(&req(&[], true, &[], &["0.0.0.0/0", "::/0"]), Family::Ipv6);
        let pre = &w.iter().find(|c| c.id == PRE).unwrap().rules;
        assert_eq!(pre[1], "-j MARK --set-xmark 0x2000/0x2000");
        let fwd = &w.iter().find(|c| c.id == FWD).unwrap().rules;
        assert!(fwd.contains(&"-o up0 -j ACCEPT".to_string()), "{fwd:?}");
        for c in &w {
            assert!(c.rules.iter().all(|r| is_safe(r) && !r.contains("/0 ")));
        }
    }

    #[test]
    fn restore_lines() {
        let r = "-j ve-nat-pre".to_string();
        assert_eq!(Op::Chain("ve-nat-pre".into()).line(), ":ve-nat-pre - [0:0]");
        assert_eq!(
            Op::Insert("PREROUTING".into(), 2, r.clone()).line(),
            "-I PREROUTING 2 -j ve-nat-pre"
        );
        assert_eq!(
            Op::Delete("PREROUTING".into(), r).line(),
            "-D PREROUTING -j ve-nat-pre"
        );
        assert_eq!(Op::DeleteChain("x".into()).line(), "-X x");
    }

    #[test]
    fn unsafe_text_is_caught() {
        assert!(!is_safe("-o a\"b -j ACCEPT"));
        assert!(!is_safe("-o a  -j ACCEPT"));
        assert!(!is_safe(""));
        assert!(!is_safe("-o a\n-F -j ACCEPT"));
        assert!(is_safe("-j ve-nat-pre"));
    }

    #[test]
    fn cni_mapping_rules_and_their_keys() {
        let f: Forward = "tcp:8080:10.233.1.2:80".parse().unwrap();
        let rs = cni_mapping(&f, None, "vecni-a-b");
        let chains: Vec<&str> = rs.iter().map(|(c, _)| c.chain).collect();
        assert_eq!(
            chains,
            ["ve-nat-cni-pre", "ve-nat-cni-out", "ve-nat-cni-fwd"]
        );
        assert!(rs
            .iter()
            .all(|(_, r)| is_safe(r) && cni_tag(r) == Some("vecni-a-b")));
        assert_eq!(
            rs[1].1,
            "! -d 127.0.0.0/8 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 8080 -m \
             comment --comment vecni-a-b -j DNAT --to-destination 10.233.1.2:80"
        );
        assert_eq!(dnat_key(&rs[0].1), Some((None, "tcp".into(), 8080, 8080)));
        // `! -d` is no destination; the forward accept is no DNAT.
        assert_eq!(dnat_key(&rs[1].1), Some((None, "tcp".into(), 8080, 8080)));
        assert_eq!(dnat_key(&rs[2].1), None);
        let on = cni_mapping(&f, Some("127.0.0.1".parse().unwrap()), "t");
        assert_eq!(on.len(), 2, "no output DNAT to a loopback hostIP");
        assert_eq!(
            dnat_key(&on[0].1),
            Some((Some("127.0.0.1/32".into()), "tcp".into(), 8080, 8080))
        );
        let range: Forward = "udp:5000-5009:10.233.1.2:5000-5009".parse().unwrap();
        let shell = dnat(&range, None);
        assert_eq!(dnat_key(&shell), Some((None, "udp".into(), 5000, 5009)));
        assert!(is_ours("ve-nat-pre") && is_ours("ve-nat-fwd-new"));
        assert!(!is_ours("ve-nat-cni-pre"));
    }
}
