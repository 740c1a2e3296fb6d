//! `ve-link` as a CNI interface plugin (like ptp): ADD gets addresses from the IPAM
//! plugin of `ipam.type` (exec through `CNI_PATH`) and makes the pair as `up` does:
//! host end `ve-<short container ID>` under the common naming rule, `CNI_IFNAME`
//! inside `CNI_NETNS`, the addresses and routes `up` gives. DEL removes the pair
//! (already gone, or the namespace gone, is success) and calls IPAM DEL. CHECK
//! compares the pair with the previous result. GC and STATUS go to the IPAM plugin:
//! a pair whose namespace is gone is gone with it (the kernel removes both ends).

use serde_json::{json, Value};

use common::{
    cni::{self, code, CniError, Handled, Request, Verb},
    Error, Kind,
};

use crate::{
    ops,
    request::{mac_text, UpInput, UpRequest, DEFAULT_IFNAME},
};

/// Run one CNI call.
pub fn run() -> common::Result<()> {
    cni::serve("ve-link", handle)
}

fn handle(req: &Request) -> Handled {
    let ipam = ipam_type(req)?;
    match req.verb {
        Verb::Version => Ok(Some(cni::version_result(&req.version))),
        Verb::Add => {
            let leased = cni::delegate(req, &ipam, Verb::Add)?
                .ok_or_else(|| ipam_error(&ipam, "ADD printed no result"))?;
            let made = up_request(req, &leased).and_then(|up| {
                ops::bring_up(&up)?;
                Ok(up)
            });
            match made {
                Ok(up) => Ok(Some(result(req, &up, &leased))),
                Err(e) => {
                    // Give the addresses back; the pair was rolled back by `up`.
                    if let Err(d) = cni::delegate(req, &ipam, Verb::Del) {
                        log::warn!("releasing the addresses again: {}", d.msg);
                    }
                    Err(e)
                }
            }
        }
        Verb::Del => {
            let name = container_name(req);
            // Both, whatever the first says: teardown is best effort.
            let link = ops::down(std::slice::from_ref(&name), false);
            let ipam = cni::delegate(req, &ipam, Verb::Del);
            link?;
            ipam?;
            Ok(None)
        }
        Verb::Check => {
            let prev = req.config.get("prevResult").ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    Kind::Data,
                    "CHECK needs prevResult in the configuration",
                )
            })?;
            cni::delegate(req, &ipam, Verb::Check)?;
            let up = up_request(req, prev)?;
            let diffs = ops::differences(&up)?;
            if diffs.is_empty() {
                Ok(None)
            } else {
                Err(CniError::from(Error::new(
                    Kind::Differs,
                    format!("{}: {}", up.host_ifname, diffs.join("; ")),
                )))
            }
        }
        Verb::Gc | Verb::Status => cni::delegate(req, &ipam, req.verb).map(|_| None),
    }
}

/// `ipam.type`: required, ve-link gets its addresses from it.
fn ipam_type(req: &Request) -> Result<String, CniError> {
    req.config
        .get("ipam")
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                Kind::Config,
                "network configuration: ve-link needs \"ipam\": {\"type\": ...}",
            )
        })
}

fn ipam_error(ipam: &str, msg: &str) -> CniError {
    CniError::new(
        code::PLUGIN_BASE + 70,
        Kind::Internal,
        format!("{ipam} {msg}"),
    )
}

/// The container name the pair is made for: the short container ID (host end
/// `ve-<12 characters>`, which fits), with `-<ifname>` when the interface is not eth0.
fn container_name(req: &Request) -> String {
    let id = cni::short_id(&req.container_id);
    if req.ifname == DEFAULT_IFNAME {
        id
    } else {
        // Over 15 bytes: shortened by the naming rule, which keeps it distinct.
        format!(
            "cni-{}",
            cni::attachment_name(&req.container_id, &req.ifname)
        )
    }
}

/// The `up` request for the addresses of an IPAM (or previous) result: each `ips`
/// entry is a container address, its gateway the host end's address.
fn up_request(req: &Request, result: &Value) -> Result<UpRequest, CniError> {
    let mut input = UpInput {
        name: container_name(req),
        netns: Some(req.netns.clone()),
        ifname: Some(req.ifname.clone()),
        mtu: match req.config.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|m| u32::try_from(m).ok())
                    .ok_or_else(|| invalid("\"mtu\" must be a number"))?,
            ),
        },
        ..Default::default()
    };
    let ips = result["ips"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for ip in ips {
        let addr = ip["address"].as_str().unwrap_or_default();
        let addr = addr.split('/').next().unwrap_or_default().to_string();
        let gw = ip["gateway"].as_str().map(str::to_string).ok_or_else(|| {
            invalid("every address from IPAM needs a gateway: the host end's address")
        })?;
        let (local, host) = if addr.contains(':') {
            (&mut input.local_address6, &mut input.host_address6)
        } else {
            (&mut input.local_address, &mut input.host_address)
        };
        if local.is_some() {
            return Err(invalid("IPAM gave two addresses of one family"));
        }
        (*local, *host) = (Some(addr), Some(gw));
    }
    if input.local_address.is_none() && input.local_address6.is_none() {
        return Err(invalid("IPAM gave no address"));
    }
    Ok(UpRequest::build(input)?)
}

fn invalid(msg: &str) -> CniError {
    CniError::new(code::INVALID_CONFIG, Kind::Data, msg.to_string())
}

/// The ADD result: both ends (the container's with its namespace), the IPAM addresses
/// on the container end, IPAM's routes and DNS.
fn result(req: &Request, up: &UpRequest, leased: &Value) -> Value {
    let ips: Vec<Value> = leased["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ip| {
            let mut ip = ip.clone();
            ip["interface"] = json!(1);
            ip
        })
        .collect();
    json!({
        "cniVersion": req.version,
        "interfaces": [
            { "name": up.host_ifname, "mac": mac_text(&up.host_mac) },
            { "name": up.peer_ifname, "mac": mac_text(&up.peer_mac), "sandbox": req.netns },
        ],
        "ips": ips,
        "routes": leased.get("routes").cloned().unwrap_or(json!([])),
        "dns": leased.get("dns").cloned().unwrap_or(json!({})),
    })
}
