//! `nm-unmanage` as a chained CNI plugin: ADD sets Managed=false on the host
//! interfaces of the previous result (those without a `sandbox`) when NetworkManager
//! runs, and passes the previous result on; with no NetworkManager there is nothing
//! to keep off. CHECK finds them unmanaged. DEL, GC and STATUS have nothing to do:
//! the flag goes with the device, and nothing is written anywhere.

use serde_json::Value;

use common::{
    cni::{self, code, CniError, Handled, Request, Verb},
    Error, Kind as ErrorKind,
};

use crate::{nm::Nm, reach, unmanage_existing, Pattern, Reach, DEFAULT_BUS, DEFAULT_TIMEOUT};

/// Run one CNI call.
pub fn run() -> common::Result<()> {
    cni::serve("nm-unmanage", handle)
}

fn handle(req: &Request) -> Handled {
    match req.verb {
        Verb::Add | Verb::Check => {}
        Verb::Version => return Ok(Some(cni::version_result(&req.version))),
        Verb::Del | Verb::Gc | Verb::Status => return Ok(None),
    }
    let prev = req.config.get("prevResult").ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            ErrorKind::Config,
            "nm-unmanage is a chained plugin: the configuration needs prevResult",
        )
    })?;
    let names = host_interfaces(prev);
    let patterns = names
        .iter()
        .map(|n| Pattern::parse(&format!("interface-name:={n}")))
        .collect::<common::Result<Vec<_>>>()?;
    // The bus of the configuration, else the runtime's, else the system bus.
    let address = req
        .field("busAddress")?
        .map(str::to_string)
        .or_else(|| std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| DEFAULT_BUS.to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))?;
    rt.block_on(async {
        let bus = match reach(&address, DEFAULT_TIMEOUT).await? {
            Reach::Up(bus) => bus,
            Reach::NoNm(_, e) | Reach::NoBus(e) => {
                log::info!("{e}; nothing to keep off");
                return Ok::<_, CniError>(());
            }
        };
        if patterns.is_empty() {
            return Ok(());
        }
        if req.verb == Verb::Add {
            for u in unmanage_existing(&bus, &patterns).await? {
                log::info!("{}: unmanaged", u.interface);
            }
            return Ok(());
        }
        let managed: Vec<String> = bus
            .devices()
            .await?
            .into_iter()
            .filter(|d| d.managed && names.contains(&d.interface))
            .map(|d| d.interface)
            .collect();
        if managed.is_empty() {
            Ok(())
        } else {
            Err(CniError::from(Error::new(
                ErrorKind::Differs,
                format!("NetworkManager manages {}", managed.join(", ")),
            )))
        }
    })?;
    Ok((req.verb == Verb::Add).then(|| prev.clone()))
}

/// The interfaces of a result that are on the host: no `sandbox`.
fn host_interfaces(result: &Value) -> Vec<String> {
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            i.get("sandbox")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        })
        .filter_map(|i| i["name"].as_str().map(str::to_string))
        .collect()
}
