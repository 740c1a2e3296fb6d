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
//! ifname), to the container's
//! addresses from `prevResult`, in one nft transaction with the attachment's earlier
//! elements deleted; a host port another attachment maps, or `ve-nat up --forward`
//! forwards in table `inet ve-nat`, is refused (exit 73, CNI code 173). DEL deletes that
//! attachment's elements only (nothing there is success); GC those of this network's
//! attachments not in `cni.dev/valid-attachments` (another network's are left alone);
//! CHECK finds exactly the attachment's elements and
//! the shared table. ADD passes `prevResult` on. Only the native nftables backend is
//! supported in CNI mode.

use std::net::IpAddr;

use clap::ValueEnum;
use common::{
    cni::{self, code, CniError, Handled, Request as Cni, Verb},
    Error, Kind,
};
use nftables::batch::Batch;
use serde_json::Value;

use crate::{
    backend::{BackendName, Chosen},
    choose,
    config::{Family, IfPattern, Request, DEFAULT_INTERNAL},
    firewalld_up, iface, lock, native, need_net_admin, nft,
    nft_cni::{self, Mapping, Owner},
    up_nftables_if_absent, LOCK_WAIT,
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
        Verb::Status => {
            native::installed()
                .map_err(|e| CniError::new(code::NOT_AVAILABLE, Kind::Unavailable, e.message()))?;
            return Ok(None);
        }
        Verb::Gc => return gc(req).map(|()| None),
        Verb::Add | Verb::Check | Verb::Del => {}
    }
    let owner = Owner::new(&network(req)?, &req.container_id, &req.ifname)?;
    if req.verb == Verb::Del {
        return del(&owner).map(|()| None);
    }
    let prev = req.config.get("prevResult").ok_or_else(|| {
        config_err("ve-nat is a chained plugin: the configuration needs prevResult")
    })?;
    let shared = shared_request(req)?;
    let mappings = mappings(req, prev, shared.ipv6)?;
    let backend = backend(req)?;
    if req.verb == Verb::Check {
        return check(&owner, &mappings).map(|()| None);
    }
    // Every value is valid: now the system.
    need_net_admin()?;
    // Only `auto` looks at the ruleset to choose; an explicit backend is its own answer.
    let rs = match backend.explicit() {
        Some(_) => None,
        None => nft::ruleset(),
    };
    if let Chosen::Iptables(_) = choose(backend, rs.as_deref()) {
        return Err(CniError::from(Error::unavailable(
            "only the nftables backend is supported in CNI mode for now (the backend here \
             is an iptables one; give \"backend\": \"nftables\" where nft works)",
        )));
    }
    add(&owner, &mappings, internal()?, mark(req)?, shared)?;
    Ok(Some(prev.clone()))
}

/// The shared table, installed when the ruleset `rs` (read under the lock) lacks it.
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

fn run_batch(batch: Batch<'_>, what: &str) -> common::Result<()> {
    let text = serde_json::to_string(&batch.to_nftables())
        .map_err(|e| Error::internal(format!("writing nft's JSON: {e}")))?;
    native::nft(&["-j", "-f", "-"], Some(&text))
        .map(drop)
        .map_err(|e| e.context(what))
}

/// The container's elements replace its earlier ones, in one transaction; the table
/// is made in the same one when missing, and the shared table `inet ve-nat` first when
/// that is missing. One `nft -j list ruleset`, under the lock, is all it reads: every
/// process it starts is paid by every container.
fn add(
    owner: &Owner,
    mappings: &[Mapping],
    internal: Vec<IfPattern>,
    mark: u32,
    shared: Shared,
) -> common::Result<()> {
    native::installed()?;
    let mut lock = lock::acquire(LOCK_WAIT)?;
    let mut have = native::ruleset()?;
    if !native::present(&have) {
        // Installing takes the lock itself.
        drop(lock);
        install_shared(shared)?;
        lock = lock::acquire(LOCK_WAIT)?;
        have = native::ruleset()?;
    }
    let _lock = lock;
    let installed = nft_cni::installed(&have);
    for m in mappings {
        if let Some((o, _)) = installed
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
    // `ve-nat up --forward`'s host ports are taken too.
    let forwarded = nft_cni::forwarded(&have);
    for m in mappings {
        if let Some((_, p, hp)) = forwarded.iter().find(|f| m.clashes_forward(f)) {
            return Err(Error::new(
                Kind::Exists,
                format!("host port {hp}/{p} is forwarded already, by `ve-nat up --forward`"),
            ));
        }
    }
    let old: Vec<Mapping> = installed
        .into_iter()
        .filter(|(o, _)| o == owner.as_str())
        .map(|(_, m)| m)
        .collect();
    if old == mappings {
        return Ok(());
    }
    let mut batch = Batch::new();
    if !nft_cni::present(&have) {
        for o in nft_cni::skeleton(&internal, mark) {
            batch.add(o);
        }
    }
    for o in nft_cni::elements(owner, &old) {
        batch.delete(o);
    }
    for o in nft_cni::elements(owner, mappings) {
        batch.add(o);
    }
    run_batch(batch, "adding the port mappings to table inet ve-nat-cni")?;
    log::info!("{} port mapping(s) for {}", mappings.len(), owner.as_str());
    Ok(())
}

/// Delete the elements of the containers `gone` chooses, in one transaction.
fn delete_where(gone: impl Fn(&str) -> bool) -> common::Result<()> {
    // Without nft there is nothing of ours to delete.
    if native::installed().is_err() {
        return Ok(());
    }
    let _lock = lock::acquire(LOCK_WAIT)?;
    let have = native::ruleset()?;
    let mut batch = Batch::new();
    let mut n = 0;
    for (o, m) in nft_cni::installed(&have) {
        if gone(&o) {
            for obj in nft_cni::elements_of(&o, std::slice::from_ref(&m)) {
                batch.delete(obj);
            }
            n += 1;
        }
    }
    if n == 0 {
        return Ok(());
    }
    run_batch(batch, "deleting port mappings from table inet ve-nat-cni")?;
    log::info!("{n} port mapping(s) deleted");
    Ok(())
}

fn del(owner: &Owner) -> Result<(), CniError> {
    need_net_admin()?;
    delete_where(|o| o == owner.as_str()).map_err(CniError::from)
}

/// Only this network's elements, those of attachments not in `valid-attachments`.
fn gc(req: &Cni) -> Result<(), CniError> {
    let net = network(req)?;
    let keep: Vec<String> = req
        .valid_attachments()?
        .into_iter()
        .filter_map(|a| Owner::new(&net, &a.container_id, &a.ifname).ok())
        .map(|o| o.as_str().to_string())
        .collect();
    need_net_admin()?;
    delete_where(|o| Owner::on_network(o, &net) && !keep.iter().any(|k| k == o))
        .map_err(CniError::from)
}

fn check(owner: &Owner, mappings: &[Mapping]) -> Result<(), CniError> {
    native::installed()?;
    let rs = native::ruleset()?;
    let mut diffs = Vec::new();
    if !native::present(&rs) {
        diffs.push("table inet ve-nat is missing".to_string());
    }
    let have: Vec<Mapping> = nft_cni::installed(&rs)
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
