//! `nm-unmanage` as a chained CNI plugin. ADD keeps every network manager that runs
//! off the host interfaces of the previous result (those without a `sandbox`), through
//! the shell interface's one-shot path: NetworkManager gets Managed=false on them,
//! systemd-networkd a `Name=` in its file (`networkdDir`, default its per-boot
//! directory; a name the default patterns match is covered by that pattern's glob, so
//! the file does not grow per container), a reload only when needed and a reconfigure
//! of those links. With no manager running it is a pass-through. ADD passes the previous
//! result on. CHECK fails while a manager that runs still manages one of them. DEL, GC
//! and STATUS have nothing to do: the flag goes with the device.

use clap::Parser;
use serde_json::Value;

use common::{
    cni::{self, code, CniError, Handled, Request, Verb},
    Error, Kind as ErrorKind,
};

use crate::{
    act, networkd::Networkd, nm::Nm, reach, Args, Pattern, Reach, DEFAULT_BUS, DEFAULT_NETWORKD_DIR,
};

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
    let nd_dir = req.field("networkdDir")?.unwrap_or(DEFAULT_NETWORKD_DIR);
    if patterns.is_empty() {
        return Ok((req.verb == Verb::Add).then(|| prev.clone()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))?;
    if req.verb == Verb::Add {
        let globs = file_globs(&names)?;
        let mut args = Args::try_parse_from([
            "nm-unmanage",
            "--if-running",
            "--bus-address",
            &address,
            "--networkd-dir",
            nd_dir,
        ])
        .map_err(|e| Error::internal(format!("the one-shot arguments: {e}")))?;
        args.cni = true;
        match rt.block_on(act(&args, &patterns, Some(&globs))) {
            Ok(()) => {}
            // A manager that went away or does not answer: nothing to keep off.
            Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::NoAnswer) => {
                log::warn!("{e}; nothing more to do");
            }
            Err(e) => return Err(e.into()),
        }
        return Ok(Some(prev.clone()));
    }
    rt.block_on(check(&address, &names))?;
    Ok(None)
}

/// CHECK: no manager that runs manages one of `names`.
async fn check(address: &str, names: &[String]) -> Result<(), CniError> {
    let (bus, nm_up) = match reach(address, crate::DEFAULT_TIMEOUT).await? {
        Reach::Up(bus) => (bus, true),
        Reach::NoNm(bus, _) => (bus, false),
        Reach::NoBus(e) => {
            log::info!("{e}; nothing to keep off");
            return Ok(());
        }
    };
    let mut managed = Vec::new();
    if nm_up {
        managed.extend(
            bus.devices()
                .await?
                .into_iter()
                .filter(|d| d.managed && names.contains(&d.interface))
                .map(|d| format!("NetworkManager manages {}", d.interface)),
        );
    }
    if bus.networkd_running().await? {
        for l in bus.links().await? {
            if !names.contains(&l.name) {
                continue;
            }
            match bus.state(&l).await?.as_deref() {
                Some("unmanaged") | None => {}
                Some(s) => managed.push(format!("systemd-networkd manages {} ({s})", l.name)),
            }
        }
    }
    if managed.is_empty() {
        Ok(())
    } else {
        Err(CniError::from(Error::new(
            ErrorKind::Differs,
            managed.join("; "),
        )))
    }
}

/// The `Name=` globs networkd's file gets for `names`: the default pattern's glob for a
/// name it matches (ve-*, which every CNI host end of ve-link is), else the name itself.
fn file_globs(names: &[String]) -> common::Result<Vec<String>> {
    let defaults = Pattern::defaults();
    let mut globs = Vec::new();
    for n in names {
        let glob = match defaults.iter().find(|p| p.matches(n)) {
            Some(p) => p.networkd_glob()?,
            None => Pattern::parse(&format!("interface-name:={n}"))?.networkd_glob()?,
        };
        if !globs.contains(&glob) {
            globs.push(glob);
        }
    }
    Ok(globs)
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
