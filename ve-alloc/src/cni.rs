//! `ve-alloc` as a CNI IPAM plugin (like host-local): ADD leases a pair to an
//! attachment (network name + container ID + ifname), DEL releases it, CHECK finds it,
//! GC releases every attachment of its network not in `cni.dev/valid-attachments`
//! (another network's leases in the same store stay), STATUS says whether the store
//! can be read. The configuration names the store: no state anywhere else.

use std::{collections::HashSet, net::IpAddr, path::PathBuf, time::Duration};

use serde_json::{json, Map, Value};

use common::{
    cni::{self, code, CniError, Handled, Request, Verb},
    Error, Kind,
};

use crate::{
    alloc::{self, Pools},
    lease::Lease,
    pool::{Layout, Pool},
    store::{SqliteStore, Store, Txn},
    DEFAULT_POOL,
};

/// How long a call waits for a store another process holds.
const WAIT: Duration = Duration::from_secs(10);

/// Run one CNI call (`CNI_COMMAND` is set).
pub fn run() -> common::Result<()> {
    cni::serve("ve-alloc", handle)
}

fn handle(req: &Request) -> Handled {
    let conf = Conf::parse(req)?;
    let mut store = SqliteStore::new(&conf.store, WAIT);
    let net = req.field("name")?.unwrap_or_default().to_string();
    let key = matches!(req.verb, Verb::Add | Verb::Del | Verb::Check)
        .then(|| cni::attachment_key(&net, &req.container_id, &req.ifname));
    match req.verb {
        Verb::Version => Ok(Some(cni::version_result(&req.version))),
        Verb::Add => {
            let key = key.unwrap_or_default();
            let label = req.arg("K8S_POD_NAME");
            let fresh = cni::lease_name(&net, &req.container_id, &req.ifname, label);
            let pools = conf.pools()?;
            let lease = store.write(|tx| {
                // An attachment keeps its lease, whatever label a later ADD brings.
                let name = find(tx, &key)?.map_or(fresh, |l| l.name);
                alloc::allocate(tx, &pools, &name)
            })?;
            Ok(Some(result(req, &lease)))
        }
        Verb::Del => {
            let key = key.unwrap_or_default();
            // Releasing what holds nothing touches nothing, not even the lock.
            if store.read(|tx| find(tx, &key))?.is_some() {
                store.write(|tx| match find(tx, &key)? {
                    Some(l) => tx.remove(&l.name).map(drop),
                    None => Ok(()),
                })?;
            }
            Ok(None)
        }
        Verb::Check => {
            let key = key.unwrap_or_default();
            let lease = store.read(|tx| find(tx, &key))?.ok_or_else(|| {
                CniError::new(
                    code::UNKNOWN_CONTAINER,
                    Kind::NotFound,
                    format!(
                        "no lease for container {} interface {}",
                        req.container_id, req.ifname
                    ),
                )
            })?;
            check_prev(req, &lease)?;
            Ok(None)
        }
        Verb::Gc => {
            let valid: HashSet<String> = req
                .valid_attachments()?
                .iter()
                .map(|a| cni::attachment_key(&net, &a.container_id, &a.ifname))
                .collect();
            let ours = cni::network_prefix(&net);
            let gone = store.write(|tx| {
                // Leases that are not CNI attachments are the shell's, those of another
                // network sharing the store that network's: kept.
                let keep: HashSet<String> = tx
                    .all()?
                    .into_iter()
                    .filter(|l| {
                        cni::key_of_lease(&l.name)
                            .is_none_or(|k| !k.starts_with(&ours) || valid.contains(k))
                    })
                    .map(|l| l.name)
                    .collect();
                alloc::gc(tx, &keep, false)
            })?;
            for l in gone {
                log::info!("released {}", l.name);
            }
            Ok(None)
        }
        Verb::Status => {
            conf.pools()?;
            store.read(|tx| tx.all().map(drop)).map_err(|e| {
                let mut c = CniError::from(e);
                c.code = code::NOT_AVAILABLE;
                c
            })?;
            Ok(None)
        }
    }
}

/// The lease of attachment `key`: a range on the names that start with it.
fn find(tx: &mut dyn Txn, key: &str) -> common::Result<Option<Lease>> {
    match tx
        .names_with_prefix(key)?
        .into_iter()
        .find(|n| cni::is_lease_of(n, key))
    {
        Some(name) => tx.get(&name),
        None => Ok(None),
    }
}

/// The IPAM result: the container addresses (a /32 or /128, the host address their
/// gateway) and a default route through the host end per family.
fn result(req: &Request, lease: &Lease) -> Value {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    let pairs = [
        (
            lease.local_address.map(IpAddr::V4),
            lease.host_address.map(IpAddr::V4),
            32,
            "4",
        ),
        (
            lease.local_address6.map(IpAddr::V6),
            lease.host_address6.map(IpAddr::V6),
            128,
            "6",
        ),
    ];
    for (local, host, len, family) in pairs {
        let (Some(local), Some(host)) = (local, host) else {
            continue;
        };
        let mut ip = json!({ "address": cni::cidr(local, len), "gateway": host.to_string() });
        if req.ips_have_version() {
            ip["version"] = json!(family);
        }
        ips.push(ip);
        let default = if local.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
        routes.push(json!({ "dst": default, "gw": host.to_string() }));
    }
    json!({ "cniVersion": req.version, "ips": ips, "routes": routes, "dns": {} })
}

/// CHECK: the previous result, when given, must hold the lease's container addresses.
fn check_prev(req: &Request, lease: &Lease) -> Result<(), CniError> {
    let Some(prev) = req.config.get("prevResult") else {
        return Ok(());
    };
    let have: HashSet<String> = prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .filter_map(|a| a.split('/').next())
        .map(str::to_string)
        .collect();
    let want = [
        lease.local_address.map(IpAddr::V4),
        lease.local_address6.map(IpAddr::V6),
    ];
    match want
        .into_iter()
        .flatten()
        .find(|a| !have.contains(&a.to_string()))
    {
        Some(missing) => Err(CniError::from(Error::new(
            Kind::Differs,
            format!(
                "the previous result lacks {missing}, which {} holds",
                lease.name
            ),
        ))),
        None => Ok(()),
    }
}

/// The plugin's configuration: the `ipam` object when ve-alloc is the IPAM plugin of
/// another, else the top level.
struct Conf {
    store: PathBuf,
    pool: String,
    pool6: Option<String>,
    layout: String,
}

impl Conf {
    fn parse(req: &Request) -> Result<Conf, CniError> {
        let obj: &Map<String, Value> = match req.config.get("ipam") {
            Some(Value::Object(ipam)) => ipam,
            Some(_) => return Err(invalid("\"ipam\" must be an object")),
            None => &req.config,
        };
        let s = |k: &str| match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) if v.is_empty() => Ok(None),
            Some(Value::String(v)) => Ok(Some(v.clone())),
            Some(_) => Err(invalid(&format!("{k:?} must be a string"))),
        };
        let store = s("store")?
            .map(PathBuf::from)
            .ok_or_else(|| invalid("\"store\" is required: the directory that holds the leases"))?;
        if !store.is_absolute() {
            return Err(invalid("\"store\" must be an absolute path"));
        }
        crate::check_store_path(&store, Some(std::path::Path::new("network configuration")))?;
        Ok(Conf {
            store,
            pool: s("pool")?.unwrap_or_else(|| DEFAULT_POOL.to_string()),
            pool6: s("pool6")?.filter(|p| p != "none"),
            layout: s("layout")?.unwrap_or_else(|| "pairs".to_string()),
        })
    }

    fn pools(&self) -> Result<Pools, CniError> {
        let cfg = |e: Error| CniError::from(e.with_kind(Kind::Config));
        let layout: Layout = self.layout.parse().map_err(cfg)?;
        Ok(Pools {
            v4: Pool::parse(&self.pool, false, layout).map_err(cfg)?,
            v6: self
                .pool6
                .as_deref()
                .map(|p| Pool::parse(p, true, Layout::Pairs))
                .transpose()
                .map_err(cfg)?,
        })
    }
}

fn invalid(msg: &str) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        Kind::Config,
        format!("network configuration: {msg}"),
    )
}
