//! `ve-nat` as a chained CNI plugin (`CNI_COMMAND` set), after an interface plugin
//! such as ve-link. Configuration `{"type": "ve-nat", "external": IFACE|"auto",
//! "backend": ..., "ipv6": bool, "mark": ..., "capabilities": {"portMappings": true}}`.
//!
//! ADD installs the shared NAT once: table `inet ve-nat` as `ve-nat up --external ...`
//! makes it, only when it is not there (an existing one, with the forwards of
//! `ve-nat up --forward`, is left as it is); its `ve-*` masquerade covers every CNI
//! host end, so nothing is added per container for it. The `portMappings` runtime
//! capability (`runtimeConfig.portMappings`) becomes elements of table `inet
//! ve-nat-cni` (`nft_cni`), commented with the attachment (network name, container ID,
//! ifname), to the container's addresses from `prevResult`, in one nf_tables
//! transaction with the attachment's earlier elements deleted (over netlink once the
//! tables are there: `cni_nft`); a host port another attachment maps, or `ve-nat up
//! --forward` forwards in table `inet ve-nat`, is refused (exit 73, CNI code 173).
//! DEL deletes that attachment's elements only (nothing there is success); GC those of this network's
//! attachments not in `cni.dev/valid-attachments` (another network's are left alone);
//! CHECK finds exactly the attachment's elements and
//! the shared table. ADD passes `prevResult` on. With an iptables backend the shared
//! NAT is ve-nat's chains (as `ve-nat up --backend ...` makes them), installed once, and
//! the mappings are tagged rules in chains of their own (`ipt_cni`): the same verbs, the
//! same refusals.

use std::net::IpAddr;

use clap::ValueEnum;
use common::{
    cni::{self, code, CniError, Handled, Request as Cni, Verb},
    Error, Kind,
};
use serde_json::Value;

use crate::{
    apply,
    backend::{BackendName, Chosen},
    cni_nft,
    config::{Family, IfPattern, Request, DEFAULT_INTERNAL},
    firewall::{Backend, Iptables},
    firewalld_up, iface, ipt_cni, lock, native, need_net_admin,
    nft_cni::{Deletion, Mapping, Owner},
    up_iptables_if_absent, up_nftables_if_absent, LOCK_WAIT,
};

/// Run one CNI call.
pub fn run() -> common::Result<()> {
    cni::serve("ve-nat", handle)
}

fn config_err(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, Kind::Config, msg)
}

/// The network's `name`: every element is of one network (`Owner`).
fn network(req: &Cni) -> Result<String, CniError> {
    req.field("name")?
        .map(str::to_string)
        .ok_or_else(|| config_err("the network configuration has no \"name\""))
}

fn handle(req: &Cni) -> Handled {
    match req.verb {
        Verb::Version => return Ok(Some(cni::version_result(&req.version))),
        Verb::Status => return status(backend(req)?).map(|()| None),
        Verb::Gc => return gc(req).map(|()| None),
        Verb::Add | Verb::Check | Verb::Del => {}
    }
    let net = network(req)?;
    let owner = Owner::new(&net, &req.container_id, &req.ifname)?;
    let backend = backend(req)?;
    if req.verb == Verb::Del {
        need_net_admin()?;
        let tag = ipt_cni::tag(&net, &owner);
        return delete_everywhere(backend, &|o| o == owner.as_str(), &|t| t == tag).map(|()| None);
    }
    let prev = req.config.get("prevResult").ok_or_else(|| {
        config_err("ve-nat is a chained plugin: the configuration needs prevResult")
    })?;
    let shared = shared_request(req)?;
    let mappings = mappings(req, prev, shared.ipv6)?;
    let mark = mark(req)?;
    let internal = internal()?;
    // Every value is valid: now the system.
    need_net_admin()?;
    // Only `auto` looks at the firewall to choose; an explicit backend is its own answer.
    let mut io = cni_nft::Io::open();
    let chosen = choose_with(backend, &mut io);
    if req.verb == Verb::Check {
        return match chosen {
            Chosen::Nftables => check(&mut io, &owner, &mappings),
            Chosen::Iptables(b) => {
                check_iptables(b, shared.ipv6, &ipt_cni::tag(&net, &owner), &mappings)
            }
        }
        .map(|()| None);
    }
    match chosen {
        Chosen::Nftables => add(&mut io, &owner, &mappings, internal, mark, shared)?,
        Chosen::Iptables(b) => {
            let fws = firewalls(b, shared.ipv6)?;
            let tag = ipt_cni::tag(&net, &owner);
            // A refused ADD changes nothing, as on nftables: the clashes of every
            // family are looked for before the shared chains are installed, and
            // again under the lock before any family's mapping is written (a
            // concurrent ADD may have taken a port in between).
            let refuse_clashes = || {
                fws.iter()
                    .try_for_each(|fw| ipt_cni::refuse_clashes(fw, fw.family, &mappings, &tag))
            };
            refuse_clashes()?;
            // The shared NAT once, as for nftables (checked again under the lock).
            if !apply::holds_ours(&fws[0])? {
                let shared = shared_resolved(shared)?;
                if up_iptables_if_absent(&shared, b)? {
                    firewalld_up(&shared)?;
                    log::info!("{}: ve-nat's chains installed", fws[0].kind);
                }
            }
            let _lock = lock::acquire(LOCK_WAIT)?;
            refuse_clashes()?;
            for fw in &fws {
                if ipt_cni::add(fw, fw.family, &mappings, &tag, &internal[0], mark)? {
                    log::info!("{}: port mappings of {} set", fw.family, owner.as_str());
                }
            }
        }
    }
    Ok(Some(prev.clone()))
}

/// The shared table, installed when the ruleset (read under the lock) lacks it.
/// Checked again under ve-nat's lock by `up_nftables_if_absent`, where it is installed
/// only when still missing: a concurrent `ve-nat up --forward` or ADD keeps what it
/// made.
fn install_shared(shared: Shared) -> common::Result<()> {
    let shared = shared_resolved(shared)?;
    if up_nftables_if_absent(&shared)? {
        firewalld_up(&shared)?;
        log::info!("table inet ve-nat installed");
    }
    Ok(())
}

/// The iptables firewalls of CNI mode: IPv4, and IPv6 with `ipv6`.
fn firewalls(b: Option<Backend>, ipv6: bool) -> common::Result<Vec<Iptables>> {
    let mut fws = vec![Iptables::open(b, Family::Ipv4)?];
    if ipv6 {
        fws.push(Iptables::open(b, Family::Ipv6)?);
    }
    Ok(fws)
}

fn status(backend: BackendName) -> Result<(), CniError> {
    let unavailable = |e: Error| CniError::new(code::NOT_AVAILABLE, Kind::Unavailable, e.message());
    match backend.explicit() {
        Some(Chosen::Iptables(b)) => Iptables::open(b, Family::Ipv4)
            .map(drop)
            .map_err(unavailable),
        _ => native::installed().map_err(unavailable),
    }
}

/// `--backend`, `auto` decided by what `io` reads (see `backend::pick`).
fn choose_with(backend: BackendName, io: &mut cni_nft::Io) -> Chosen {
    if let Some(c) = backend.explicit() {
        return c;
    }
    let (c, why) = crate::backend::pick(&io.facts(true).0);
    log::info!("backend auto: {c:?} ({why})");
    c
}

/// DEL and GC: the mappings `gone_nft` (by nftables element comment) and `gone_tag` (by
/// iptables rule tag) choose, wherever they are: table inet ve-nat-cni, and the chosen
/// iptables backend, or iptables-nft when its tables show CNI chains of ours (an
/// `auto` that picked otherwise at ADD). Best effort: every place is tried.
fn delete_everywhere(
    backend: BackendName,
    gone_nft: &dyn Fn(&str) -> bool,
    gone_tag: &dyn Fn(&str) -> bool,
) -> Result<(), CniError> {
    let mut errors = Vec::new();
    let mut io = cni_nft::Io::open();
    if let Err(e) = delete_where(&mut io, gone_nft) {
        errors.push(e);
    }
    let (facts, cni_ipt) = io.facts(backend.explicit().is_none());
    let mut backends = Vec::new();
    let chosen = match backend.explicit() {
        Some(c) => c,
        None => crate::backend::pick(&facts).0,
    };
    if let Chosen::Iptables(b) = chosen {
        backends.push(b);
    }
    if cni_ipt && !backends.contains(&Some(Backend::Nft)) {
        backends.push(Some(Backend::Nft));
    }
    let _lock = if backends.is_empty() {
        None
    } else {
        Some(lock::acquire(LOCK_WAIT)?)
    };
    for b in backends {
        for family in [Family::Ipv4, Family::Ipv6] {
            let fw = match Iptables::open_optional(b, family) {
                Ok(Some(fw)) => fw,
                Ok(None) => continue,
                Err(e) if family == Family::Ipv4 => {
                    errors.push(e);
                    continue;
                }
                Err(_) => continue,
            };
            match ipt_cni::delete_where(&fw, gone_tag) {
                Ok(0) => {}
                Ok(n) => log::info!("{family} {}: {n} mapping rule(s) deleted", fw.kind),
                // IPv6 may have no ip6tables nat table at all (no --ipv6, no module).
                Err(e) if family == Family::Ipv4 => errors.push(e),
                Err(e) => log::debug!("{family}: {e}"),
            }
        }
    }
    match errors.into_iter().next() {
        Some(e) => Err(CniError::from(e)),
        None => Ok(()),
    }
}

fn check_iptables(
    b: Option<Backend>,
    ipv6: bool,
    tag: &str,
    mappings: &[Mapping],
) -> Result<(), CniError> {
    let fws = firewalls(b, ipv6)?;
    let mut diffs = Vec::new();
    if !apply::holds_ours(&fws[0])? {
        diffs.push(format!("{}: ve-nat's chains are missing", fws[0].kind));
    }
    for fw in &fws {
        diffs.extend(ipt_cni::differences(fw, fw.family, mappings, tag)?);
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::from(Error::new(Kind::Differs, diffs.join("; "))))
    }
}

/// The shared NAT's request as far as the configuration says (`external` unresolved).
struct Shared {
    external: String,
    ipv6: bool,
    mark: Option<String>,
}

fn shared_request(req: &Cni) -> Result<Shared, CniError> {
    let external = req.field("external")?.ok_or_else(|| {
        config_err("ve-nat needs \"external\": the uplink interface, or \"auto\"")
    })?;
    let ipv6 = match req.config.get("ipv6") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(config_err("\"ipv6\" must be true or false")),
    };
    let s = Shared {
        external: external.to_string(),
        ipv6,
        mark: req.field("mark")?.map(str::to_string),
    };
    // Validate now (with a stand-in for auto), before anything is touched.
    let probe = if s.external == iface::AUTO {
        "eth0"
    } else {
        &s.external
    };
    Request::new(probe, &[], &[], &[], &[], s.ipv6, s.mark.as_deref())?;
    Ok(s)
}

fn shared_resolved(s: Shared) -> common::Result<Request> {
    let external = if s.external == iface::AUTO {
        let name = iface::pick(&iface::default_routes()?)?;
        log::info!("external auto: {name}");
        name
    } else {
        s.external
    };
    Request::new(&external, &[], &[], &[], &[], s.ipv6, s.mark.as_deref())
}

/// The container interfaces: ve-link's CNI host ends are all `ve-*`.
fn internal() -> common::Result<Vec<IfPattern>> {
    Ok(vec![DEFAULT_INTERNAL.parse()?])
}

fn mark(req: &Cni) -> common::Result<u32> {
    match req.field("mark").map_err(|e| e.error)? {
        Some(m) => crate::config::parse_mark(m),
        None => Ok(crate::config::DEFAULT_MARK),
    }
}

fn backend(req: &Cni) -> Result<BackendName, CniError> {
    match req.field("backend")? {
        None => Ok(BackendName::Auto),
        Some(b) => BackendName::from_str(b, false).map_err(|_| {
            config_err(format!(
                "backend {b:?}: not auto, nftables, iptables-nft or iptables-legacy"
            ))
        }),
    }
}

/// The container's addresses in `prev`: the `ips` on an interface with a `sandbox` (or
/// on no named interface), first of each family.
fn container_addrs(prev: &Value) -> Vec<IpAddr> {
    let ifaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    let in_sandbox = |i: &Value| {
        i.as_u64()
            .and_then(|n| ifaces.get(usize::try_from(n).ok()?))
            .is_none_or(|x| !x["sandbox"].as_str().unwrap_or("").is_empty())
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in prev["ips"].as_array().into_iter().flatten() {
        if !in_sandbox(&ip["interface"]) {
            continue;
        }
        let Some(a) = ip["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse::<IpAddr>().ok())
        else {
            continue;
        };
        if !out.iter().any(|o| Family::of(o) == Family::of(&a)) {
            out.push(a);
        }
    }
    out
}

/// `runtimeConfig.portMappings`, validated, to the container's addresses (IPv6 ones
/// only with `ipv6`): a mapping with a `hostIP` goes to the address of its family, one
/// without to each.
fn mappings(req: &Cni, prev: &Value, ipv6: bool) -> Result<Vec<Mapping>, CniError> {
    let list = match req.config.get("runtimeConfig").map(|r| &r["portMappings"]) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(config_err("runtimeConfig.portMappings must be a list")),
    };
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let mut addrs = container_addrs(prev);
    addrs.retain(|a| ipv6 || Family::of(a) == Family::Ipv4);
    if addrs.is_empty() {
        return Err(config_err(
            "portMappings, but prevResult gives the container no address",
        ));
    }
    let port = |v: &Value, what: &str| -> Result<u16, CniError> {
        v.as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| config_err(format!("portMappings: {what} {v} is not a port")))
    };
    let mut out: Vec<Mapping> = Vec::new();
    for pm in &list {
        let hp = port(&pm["hostPort"], "hostPort")?;
        let cp = port(&pm["containerPort"], "containerPort")?;
        let proto = pm["protocol"]
            .as_str()
            .unwrap_or("tcp")
            .to_ascii_lowercase();
        let host_ip = match pm["hostIP"].as_str().unwrap_or("") {
            "" | "0.0.0.0" | "::" => None,
            h => Some(crate::config::parse_addr(h).map_err(|e| e.context("portMappings: hostIP"))?),
        };
        let mut any = false;
        for to in &addrs {
            if host_ip.is_some_and(|h| Family::of(&h) != Family::of(to)) {
                continue;
            }
            let m = Mapping::new(&proto, hp, *to, cp, host_ip)
                .map_err(|e| e.context("portMappings"))?;
            if let Some(o) = out.iter().find(|o| o.clashes(&m)) {
                return Err(config_err(format!(
                    "portMappings: host port {}/{} twice (to {} and {})",
                    hp, proto, o.fwd.ports.first, m.fwd.ports.first
                )));
            }
            out.push(m);
            any = true;
        }
        if !any {
            return Err(config_err(format!(
                "portMappings: hostIP {} has no container address of its family",
                host_ip.map(|h| h.to_string()).unwrap_or_default()
            )));
        }
    }
    Ok(out)
}

/// The container's elements replace its earlier ones, in one transaction; the table
/// is made in the same one when missing, and the shared table `inet ve-nat` first when
/// that is missing. What it reads and how it writes is `cni_nft`'s: with the tables
/// there, no process at all (every process it starts is paid by every container).
fn add(
    io: &mut cni_nft::Io,
    owner: &Owner,
    mappings: &[Mapping],
    internal: Vec<IfPattern>,
    mark: u32,
    shared: Shared,
) -> common::Result<()> {
    native::installed()?;
    let mut lock = lock::acquire(LOCK_WAIT)?;
    let mut have = io.read(true)?;
    // A refused ADD changes nothing: the clashes are looked for before anything is
    // installed, and again once the shared table is there (with its forwards).
    refuse_clashes(&have, owner, mappings)?;
    if !have.shared {
        // Installing takes the lock itself.
        drop(lock);
        install_shared(shared)?;
        lock = lock::acquire(LOCK_WAIT)?;
        have = io.read(true)?;
        refuse_clashes(&have, owner, mappings)?;
    }
    let _lock = lock;
    let old: Vec<Mapping> = have
        .installed
        .iter()
        .filter(|(o, _)| o == owner.as_str())
        .map(|(_, m)| m.clone())
        .collect();
    // The same mappings with every `dst` element there: nothing to do. A lost `dst`
    // element (deleted by an older ve-nat's DEL of a container that shared it) is
    // written again.
    if old == mappings && mappings.iter().all(|m| have.dsts.contains(&m.dst_bytes())) {
        return Ok(());
    }
    let delete = Deletion::new(
        &have.installed,
        &have.dsts,
        &|o| o == owner.as_str(),
        mappings,
    );
    io.write(
        &have,
        &delete,
        Some((owner, mappings)),
        Some((&internal, mark)),
        "adding the port mappings to table inet ve-nat-cni",
    )?;
    log::info!("{} port mapping(s) for {}", mappings.len(), owner.as_str());
    Ok(())
}

/// A host port of `mappings` that another attachment maps, or `ve-nat up --forward`
/// forwards, is refused.
fn refuse_clashes(have: &cni_nft::Seen, owner: &Owner, mappings: &[Mapping]) -> common::Result<()> {
    for m in mappings {
        if let Some((o, _)) = have
            .installed
            .iter()
            .find(|(o, x)| o != owner.as_str() && x.clashes(m))
        {
            return Err(Error::new(
                Kind::Exists,
                format!(
                    "host port {}/{} is mapped already, for attachment {o}",
                    m.fwd.host_ports.first,
                    m.fwd.proto.as_str()
                ),
            ));
        }
    }
    for m in mappings {
        if let Some((_, p, hp)) = have.forwarded.iter().find(|f| m.clashes_forward(f)) {
            return Err(Error::new(
                Kind::Exists,
                format!("host port {hp}/{p} is forwarded already, by `ve-nat up --forward`"),
            ));
        }
    }
    Ok(())
}

/// Delete the elements of the containers `gone` chooses, in one transaction, under
/// the lock.
fn delete_where(io: &mut cni_nft::Io, gone: &dyn Fn(&str) -> bool) -> common::Result<()> {
    // Without nft no table of ours was made.
    if native::installed().is_err() {
        return Ok(());
    }
    let _lock = lock::acquire(LOCK_WAIT)?;
    let have = io.read(false)?;
    let delete = Deletion::new(&have.installed, &have.dsts, gone, &[]);
    let n = delete.mappings();
    if n > 0 {
        io.write(
            &have,
            &delete,
            None,
            None,
            "deleting port mappings from table inet ve-nat-cni",
        )?;
        log::info!("{n} port mapping(s) deleted");
    }
    Ok(())
}

/// Only this network's mappings, those of attachments not in `valid-attachments`.
fn gc(req: &Cni) -> Result<(), CniError> {
    let net = network(req)?;
    let backend = backend(req)?;
    let keep: Vec<Owner> = req
        .valid_attachments()?
        .into_iter()
        .filter_map(|a| Owner::new(&net, &a.container_id, &a.ifname).ok())
        .collect();
    let keep_tags: Vec<String> = keep.iter().map(|o| ipt_cni::tag(&net, o)).collect();
    let net_tag = ipt_cni::network_tag(&net);
    need_net_admin()?;
    delete_everywhere(
        backend,
        &|o| Owner::on_network(o, &net) && !keep.iter().any(|k| k.as_str() == o),
        &|t| t.starts_with(&net_tag) && !keep_tags.iter().any(|k| k == t),
    )
}

fn check(io: &mut cni_nft::Io, owner: &Owner, mappings: &[Mapping]) -> Result<(), CniError> {
    native::installed()?;
    let seen = io.read(false)?;
    let mut diffs = Vec::new();
    if !seen.shared {
        diffs.push("table inet ve-nat is missing".to_string());
    }
    let have: Vec<Mapping> = seen
        .installed
        .into_iter()
        .filter(|(o, _)| o == owner.as_str())
        .map(|(_, m)| m)
        .collect();
    for m in mappings.iter().filter(|m| !have.contains(m)) {
        diffs.push(format!("port mapping {} is missing", m.fwd));
    }
    for m in have.iter().filter(|m| !mappings.contains(m)) {
        diffs.push(format!("port mapping {} is not wanted", m.fwd));
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::from(Error::new(Kind::Differs, diffs.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct FakeEnv(Vec<(&'static str, String)>);

    impl cni::Env for FakeEnv {
        fn get(&self, key: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        }
    }

    fn request(pm: Value) -> Cni {
        let env = FakeEnv(vec![
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", "ab".repeat(32)),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_NETNS", "/run/netns/x".into()),
        ]);
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "ve-nat",
            "external": "up0", "runtimeConfig": {"portMappings": pm}, "prevResult": prev()});
        Cni::parse(&env, &conf.to_string()).unwrap()
    }

    fn prev() -> Value {
        json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "ve-abab"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "10.233.0.3/32", "interface": 1},
                    {"address": "fd42::3/128", "interface": 1},
                    {"address": "10.9.9.9/32", "interface": 0}]})
    }

    #[test]
    fn mappings_go_to_the_container_addresses_of_their_family() {
        let r = request(json!([{"hostPort": 8080, "containerPort": 80},
                               {"hostPort": 53, "containerPort": 53, "protocol": "UDP",
                                "hostIP": "2001:db8::1"}]));
        let prev = prev();
        let v4 = mappings(&r, &prev, false).unwrap_err();
        assert_eq!(v4.code, code::INVALID_CONFIG, "IPv6 hostIP without ipv6");
        let all = mappings(&r, &prev, true).unwrap();
        let shown: Vec<String> = all.iter().map(|m| m.fwd.to_string()).collect();
        // The host end's address (interface 0) is never a target.
        assert_eq!(
            shown,
            [
                "tcp:8080:10.233.0.3:80",
                "tcp:8080:[fd42::3]:80",
                "udp:53:[fd42::3]:53"
            ]
        );
        assert!(all[2].host_ip.is_some());
    }

    #[test]
    fn bad_mappings_are_config_errors() {
        let prev = prev();
        for pm in [
            json!([{"hostPort": 70000, "containerPort": 80}]),
            json!([{"hostPort": 80}]),
            json!([{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]),
            json!([{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81}]),
            json!({"hostPort": 80}),
        ] {
            let e = mappings(&request(pm.clone()), &prev, false).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{pm}");
        }
        assert!(mappings(&request(json!([])), &prev, false)
            .unwrap()
            .is_empty());
    }
}
