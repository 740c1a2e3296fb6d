//! The CNI protocol (spec versions 0.3.0 to 1.1.0), for the tools acting as CNI plugins:
//! the verb and `CNI_*` environment, the configuration on stdin, the result and error
//! JSON on stdout, CNI's error codes, and the lease name a CNI attachment gets.
//!
//! A tool is a CNI plugin when `CNI_COMMAND` is set ([`command`]). Its `run()` then
//! hands over to [`serve`] with a handler for the verbs it implements. `VERSION` is
//! answered here for every tool. The result's `cniVersion` is always the request's:
//! runtimes that speak an older version cannot read a newer result.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use serde_json::{json, Map, Value};

use crate::{output, Error, Kind, Result};

/// The spec versions every tool speaks, oldest first.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version: what an error says when the request named none we know.
pub const LATEST: &str = "1.1.0";

/// CNI's well-known error codes (spec, "Error"). Codes from 100 up are the plugin's own:
/// ours are 100 + the tool's exit code (e.g. 173: cannot create, the pool is exhausted).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (`CNI_COMMAND`, `CNI_CONTAINERID`, ...).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (the configuration is not JSON).
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin is not available (it cannot serve ADD now).
    pub const NOT_AVAILABLE: u32 = 50;
    /// Our own codes start here.
    pub const PLUGIN_BASE: u32 = 100;
}

/// A CNI verb, from `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Verb {
    pub fn parse(s: &str) -> Option<Verb> {
        Some(match s {
            "ADD" => Verb::Add,
            "DEL" => Verb::Del,
            "CHECK" => Verb::Check,
            "VERSION" => Verb::Version,
            "STATUS" => Verb::Status,
            "GC" => Verb::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
            Verb::Version => "VERSION",
            Verb::Status => "STATUS",
            Verb::Gc => "GC",
        }
    }

    /// The first spec version that has this verb.
    fn since(self) -> &'static str {
        match self {
            Verb::Check => "0.4.0",
            Verb::Status | Verb::Gc => "1.1.0",
            _ => "0.3.0",
        }
    }
}

/// `Some(raw value)` when the tool runs as a CNI plugin (`CNI_COMMAND` is set).
pub fn command() -> Option<String> {
    std::env::var_os("CNI_COMMAND").map(|v| v.to_string_lossy().into_owned())
}

/// A CNI error: a code from [`code`], a one-line message and optional details.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
    /// The tool's own error, whose exit code the process ends with.
    pub error: Error,
}

impl CniError {
    pub fn new(code: u32, kind: Kind, msg: impl Into<String>) -> Self {
        let msg = msg.into();
        CniError {
            code,
            error: Error::new(kind, &msg),
            msg,
            details: String::new(),
        }
    }
}

/// A tool error as a CNI error: the well-known code where one fits, else 100 + the exit
/// code.
impl From<Error> for CniError {
    fn from(error: Error) -> Self {
        let code = match error.kind() {
            Kind::Usage => code::INVALID_ENV,
            Kind::Data | Kind::Config => code::INVALID_CONFIG,
            Kind::Io => code::IO_FAILURE,
            Kind::TempFail | Kind::Busy | Kind::Raced | Kind::NoAnswer => code::TRY_AGAIN,
            k => code::PLUGIN_BASE + k.exit().code() as u32,
        };
        CniError {
            code,
            msg: error.message().to_string(),
            details: String::new(),
            error,
        }
    }
}

/// One attachment in `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// A CNI call: the verb, the `CNI_*` environment and the configuration from stdin.
#[derive(Debug, Clone)]
pub struct Request {
    pub verb: Verb,
    /// The configuration's `cniVersion`: the result carries the same.
    pub version: String,
    /// The whole configuration object.
    pub config: Map<String, Value>,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS`: a path, empty when not given (DEL may come without it).
    pub netns: String,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: String,
    /// `CNI_ARGS`: `KEY=value` pairs separated by `;`.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where other plugins are found.
    pub path: Vec<PathBuf>,
}

/// Where a request's environment comes from: the process's, or a map in tests.
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var_os(key).map(|v| v.to_string_lossy().into_owned())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    }
}

impl Request {
    /// Parse a call from its environment and stdin text. VERSION needs only
    /// `CNI_COMMAND` (its stdin may be empty); the others need a configuration with a
    /// supported `cniVersion`.
    pub fn parse(env: &dyn Env, stdin: &str) -> Result<Request, CniError> {
        let raw = env.get("CNI_COMMAND").unwrap_or_default();
        let verb = Verb::parse(&raw).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                Kind::Usage,
                format!(
                    "CNI_COMMAND {raw:?} is not a CNI verb \
                     (ADD, DEL, CHECK, VERSION, STATUS, GC)"
                ),
            )
        })?;
        let config: Map<String, Value> = if stdin.trim().is_empty() && verb == Verb::Version {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(stdin) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(CniError::new(
                        code::DECODE_FAILURE,
                        Kind::Data,
                        "the network configuration on stdin is not a JSON object",
                    ))
                }
                Err(e) => {
                    return Err(CniError::new(
                        code::DECODE_FAILURE,
                        Kind::Data,
                        format!("the network configuration on stdin is not JSON: {e}"),
                    ))
                }
            }
        };
        let version = match config.get("cniVersion") {
            Some(Value::String(v)) => v.clone(),
            None if verb == Verb::Version => LATEST.to_string(),
            _ => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    Kind::Data,
                    "the network configuration has no cniVersion string",
                ))
            }
        };
        if verb != Verb::Version && !SUPPORTED.contains(&version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                Kind::Data,
                format!(
                    "cniVersion {version:?} is not supported (supported: {})",
                    SUPPORTED.join(", ")
                ),
            ));
        }
        if verb != Verb::Version && !version_at_least(&version, verb.since()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                Kind::Data,
                format!(
                    "{} needs cniVersion {} or later; the configuration says {version}",
                    verb.as_str(),
                    verb.since()
                ),
            ));
        }
        let var = |k: &str| env.get(k).unwrap_or_default();
        let req = Request {
            verb,
            version,
            config,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: parse_args(&var("CNI_ARGS"))?,
            path: std::env::split_paths(&var("CNI_PATH"))
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
        };
        if matches!(verb, Verb::Add | Verb::Del | Verb::Check) {
            req.check_attachment_env()?;
        }
        Ok(req)
    }

    fn check_attachment_env(&self) -> Result<(), CniError> {
        let bad = |m: String| Err(CniError::new(code::INVALID_ENV, Kind::Usage, m));
        if !valid_container_id(&self.container_id) {
            return bad(format!(
                "CNI_CONTAINERID {:?} is not a container ID (letters, digits, '_', '.', '-', \
                 starting with a letter or digit)",
                self.container_id
            ));
        }
        if let Err(e) = crate::name::validate_ifname(&self.ifname) {
            return bad(format!("CNI_IFNAME: {}", e.message()));
        }
        if self.verb != Verb::Del && self.netns.is_empty() {
            return bad(format!("{} needs CNI_NETNS", self.verb.as_str()));
        }
        Ok(())
    }

    /// The value of `key` in `CNI_ARGS`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A string field of the configuration; absent and empty are both `None`.
    pub fn field(&self, key: &str) -> Result<Option<&str>, CniError> {
        match self.config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(CniError::new(
                code::INVALID_CONFIG,
                Kind::Data,
                format!("network configuration field {key:?} must be a string"),
            )),
        }
    }

    /// GC's `cni.dev/valid-attachments`: the attachments to keep. Absent means none.
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>, CniError> {
        let bad = || {
            CniError::new(
                code::INVALID_CONFIG,
                Kind::Data,
                "cni.dev/valid-attachments must be a list of {\"containerID\", \"ifname\"} objects",
            )
        };
        let Some(list) = self.config.get("cni.dev/valid-attachments") else {
            return Ok(Vec::new());
        };
        let list = list.as_array().ok_or_else(bad)?;
        list.iter()
            .map(|a| {
                let s = |k| a.get(k).and_then(Value::as_str).map(str::to_string);
                Ok(Attachment {
                    container_id: s("containerID").ok_or_else(bad)?,
                    ifname: s("ifname").ok_or_else(bad)?,
                })
            })
            .collect()
    }

    /// Whether the request's version has the `version` field in `ips` (before 1.0.0).
    pub fn ips_have_version(&self) -> bool {
        !version_at_least(&self.version, "1.0.0")
    }
}

/// `a >= b` for dotted version numbers.
pub fn version_at_least(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parts(a) >= parts(b)
}

/// A container ID as the spec allows it: letters, digits and `_.-`, starting with a
/// letter or digit.
pub fn valid_container_id(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn parse_args(text: &str) -> Result<Vec<(String, String)>, CniError> {
    text.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::new(
                code::INVALID_ENV,
                Kind::Usage,
                format!("CNI_ARGS: {p:?} is not KEY=value"),
            )),
        })
        .collect()
}

/// FNV-1a 64 of `bytes`, the low 60 bits in base32 `a-z2-7` (12 characters).
pub fn hash12(bytes: &[u8]) -> String {
    let h = crate::name::fnv1a64(bytes);
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    (0..12)
        .map(|i| ALPHABET[((h >> (5 * i)) & 31) as usize] as char)
        .collect()
}

/// The short form of a container ID: 12 characters, a valid container name. A hex ID
/// of 12 or more characters (what runtimes make) keeps its first 12, as `podman ps` and
/// `docker ps` show it; any other ID becomes 12 characters of a hash of all of it.
pub fn short_id(id: &str) -> String {
    if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id[..12].to_ascii_lowercase()
    } else {
        hash12(id.as_bytes())
    }
}

/// The start of every CNI lease name: `cni-` + the short ID.
const MARK: &str = "cni-";

/// Longest label (pod or container name) kept at the end of a lease name.
const LABEL_LEN: usize = 21;

/// Characters of the network name's hash in an attachment key.
const NET_LEN: usize = 8;

/// `<short id>.<ifname>`, the ifname hashed when it has characters a container name
/// cannot hold (or a `.`) or is over 15 bytes: distinct per attachment on one network,
/// at most 28 bytes.
pub fn attachment_name(container_id: &str, ifname: &str) -> String {
    let ifpart = if !ifname.is_empty()
        && ifname.len() <= 15
        && ifname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        ifname.to_string()
    } else {
        hash12(ifname.as_bytes())
    };
    format!("{}.{ifpart}", short_id(container_id))
}

/// The start of the attachment keys of network `network`: `cni-<8 hex digits of its
/// name's hash>-`.
pub fn network_prefix(network: &str) -> String {
    format!("{MARK}{}-", &hash12(network.as_bytes())[..NET_LEN])
}

/// The key of an attachment on network `network`: `cni-<net hash>-<short id>.<ifname>`
/// (see [`network_prefix`], [`attachment_name`]). It starts every CNI lease name, so
/// the store finds an attachment's lease by a range on its key, and one network's GC
/// tells its own leases from another's in a shared store.
pub fn attachment_key(network: &str, container_id: &str, ifname: &str) -> String {
    format!(
        "{}{}",
        network_prefix(network),
        attachment_name(container_id, ifname)
    )
}

/// The lease name of an attachment: its key, then `.<label>` when a pod or container
/// name is given (cut to 21 bytes, characters a name cannot hold made `-`). At most 63
/// bytes, always a valid container name.
pub fn lease_name(network: &str, container_id: &str, ifname: &str, label: Option<&str>) -> String {
    let key = attachment_key(network, container_id, ifname);
    let l: String = label
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(LABEL_LEN)
        .collect();
    if l.is_empty() {
        key
    } else {
        format!("{key}.{l}")
    }
}

/// Whether lease `name` is the lease of attachment `key` (made by [`lease_name`]).
pub fn is_lease_of(name: &str, key: &str) -> bool {
    name.strip_prefix(key)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The attachment key of a lease name made by [`lease_name`], `None` for other names.
pub fn key_of_lease(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(MARK)?;
    let (id, tail) = rest.split_once('.')?;
    let ifpart = tail.split('.').next().unwrap_or_default();
    let alnum = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    let ok = id.len() == NET_LEN + 1 + 12
        && id.as_bytes()[NET_LEN] == b'-'
        && alnum(&id[..NET_LEN])
        && alnum(&id[NET_LEN + 1..])
        && !ifpart.is_empty()
        && ifpart
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    ok.then(|| &name[..MARK.len() + id.len() + 1 + ifpart.len()])
}

/// The VERSION answer.
pub fn version_result(version: &str) -> Value {
    json!({ "cniVersion": version, "supportedVersions": SUPPORTED })
}

/// The error JSON of `e`, in `version`.
pub fn error_json(version: &str, e: &CniError) -> Value {
    let mut v = json!({ "cniVersion": version, "code": e.code, "msg": e.msg });
    if !e.details.is_empty() {
        v["details"] = Value::String(e.details.clone());
    }
    v
}

/// What a handler returns: the result object to print (ADD, CHECK returns nothing).
pub type Handled = Result<Option<Value>, CniError>;

/// Serve one CNI call of `tool`: read the environment and stdin, answer VERSION, give
/// every other verb to `handler`, and print its result (with the request's
/// `cniVersion`) or the CNI error JSON on stdout. A failure also comes back as the
/// tool's error, so `cli::main` prints its line on stderr and exits non-zero.
pub fn serve(tool: &'static str, handler: impl FnOnce(&Request) -> Handled) -> Result<()> {
    // Warnings and errors on stderr, which runtimes log; RUST_LOG says more.
    crate::cli::Verbosity::default().init_logging(tool);
    let mut stdin = String::new();
    let read = std::io::stdin()
        .read_to_string(&mut stdin)
        .map_err(|e| CniError::from(Error::io("reading the network configuration", e)));
    let mut version = LATEST.to_string();
    let outcome = read
        .and_then(|_| Request::parse(&ProcessEnv, &stdin))
        .and_then(|req| {
            version = req.version.clone();
            match req.verb {
                Verb::Version => Ok(Some(version_result(&req.version))),
                _ => {
                    let mut out = handler(&req)?;
                    if let Some(Value::Object(m)) = &mut out {
                        m.insert("cniVersion".into(), Value::String(req.version.clone()));
                    }
                    Ok(out)
                }
            }
        });
    match outcome {
        Ok(Some(v)) => output::print(&format!("{}\n", pretty(&v)?)),
        Ok(None) => Ok(()),
        Err(e) => {
            if !SUPPORTED.contains(&version.as_str()) {
                version = LATEST.to_string();
            }
            output::print(&format!("{}\n", pretty(&error_json(&version, &e))?))?;
            Err(e.error.context(format!("CNI {tool}")))
        }
    }
}

fn pretty(v: &Value) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::internal(format!("encoding JSON: {e}")))
}

/// The CNI error for a verb a tool does not implement as a plugin.
pub fn unsupported(tool: &str, verb: Verb) -> CniError {
    CniError::new(
        code::INVALID_ENV,
        Kind::Usage,
        format!(
            "{tool} answers only CNI VERSION in this version, not {}",
            verb.as_str()
        ),
    )
}

/// An address with its prefix length, as CNI writes it (`10.0.0.2/32`).
pub fn cidr(addr: std::net::IpAddr, prefix: u8) -> String {
    format!("{addr}/{prefix}")
}

/// The path of a plugin named `name` in `path` (the first that exists; symlinks are
/// followed).
pub fn find_plugin(path: &[PathBuf], name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('/') {
        return None;
    }
    path.iter()
        .map(|d| d.join(name))
        .find(|p| Path::new(p).is_file())
}

/// Call the plugin `plugin` (an `ipam.type`) the CNI way: found through `CNI_PATH`, run
/// with this process's `CNI_*` environment but `CNI_COMMAND=verb`, the request's
/// configuration on stdin. Its result object, `None` when it printed nothing; its CNI
/// error (code and message kept) when it failed.
pub fn delegate(req: &Request, plugin: &str, verb: Verb) -> Handled {
    use std::{io::Write, process::Stdio};
    let bin = find_plugin(&req.path, plugin).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            Kind::NotFound,
            format!(
                "plugin {plugin:?} not found in CNI_PATH ({})",
                req.path
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            ),
        )
    })?;
    let input = serde_json::to_vec(&req.config)
        .map_err(|e| Error::internal(format!("encoding the configuration: {e}")))?;
    let mut child = std::process::Command::new(&bin)
        .env("CNI_COMMAND", verb.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", bin.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&input)
            .map_err(|e| Error::io(format!("writing to {}", bin.display()), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for {}", bin.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value: Option<Value> = if text.trim().is_empty() {
        None
    } else {
        Some(serde_json::from_str(&text).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                Kind::Data,
                format!("{plugin} {}: its output is not JSON: {e}", verb.as_str()),
            )
        })?)
    };
    if out.status.success() {
        return Ok(value);
    }
    let code = value
        .as_ref()
        .and_then(|v| v["code"].as_u64())
        .map_or(code::PLUGIN_BASE + 70, |c| c as u32);
    let msg = value
        .as_ref()
        .and_then(|v| v["msg"].as_str())
        .unwrap_or("failed without a CNI error")
        .to_string();
    let mut e = CniError::new(
        code,
        Kind::Unavailable,
        format!("{plugin} {}: {msg}", verb.as_str()),
    );
    e.details = value
        .as_ref()
        .and_then(|v| v["details"].as_str())
        .unwrap_or_default()
        .to_string();
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_round_trip_and_unknown_is_refused() {
        for v in ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"] {
            assert_eq!(Verb::parse(v).map(Verb::as_str), Some(v));
        }
        let e = Request::parse(&[("CNI_COMMAND", "add")], "{}").unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
    }

    #[test]
    fn version_needs_no_config_and_others_need_a_known_version() {
        let r = Request::parse(&[("CNI_COMMAND", "VERSION")], "").unwrap();
        assert_eq!(r.version, LATEST);
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
        ];
        let e = Request::parse(&env, r#"{"cniVersion":"0.2.0"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let e = Request::parse(&env, "not json").unwrap_err();
        assert_eq!(e.code, code::DECODE_FAILURE);
        let r = Request::parse(&env, r#"{"cniVersion":"0.3.1"}"#).unwrap();
        assert!(r.ips_have_version());
        let gc = [("CNI_COMMAND", "GC")];
        let e = Request::parse(&gc, r#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "GC is 1.1.0's");
    }

    #[test]
    fn attachment_env_is_checked() {
        let base = r#"{"cniVersion":"1.0.0"}"#;
        let e = Request::parse(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "-x"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/n"),
            ],
            base,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        let e = Request::parse(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "x"),
                ("CNI_IFNAME", "eth0"),
            ],
            base,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV, "ADD without a netns");
        let r = Request::parse(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "x"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
            ],
            base,
        )
        .unwrap();
        assert_eq!(r.arg("K8S_POD_NAME"), Some("web"));
    }

    #[test]
    fn lease_names_fit_and_are_recognised() {
        let id = "0123456789abcdef".repeat(4);
        let net = network_prefix("net");
        assert_eq!(net.len(), 13);
        let k = format!("{net}0123456789ab.eth0");
        let n = lease_name("net", &id, "eth0", None);
        assert_eq!(n, k);
        assert_eq!(key_of_lease(&n), Some(k.as_str()));
        let n = lease_name("net", &id, "eth0", Some("web"));
        assert_eq!(n, format!("{k}.web"));
        assert_eq!(key_of_lease(&n), Some(k.as_str()));
        assert!(is_lease_of(&n, &k));
        assert!(!is_lease_of(&format!("{k}1"), &k));
        // Another network: another key, another prefix.
        let other = attachment_key("net2", &id, "eth0");
        assert_ne!(other, k);
        assert!(!other.starts_with(&net));
        let long = "a.very/long pod name that goes on and on and on";
        for ifname in ["eth0.100", "abcdefghijklmno", "abcdefghijklmnop"] {
            let n = lease_name(&"x".repeat(200), &id, ifname, Some(long));
            assert!(n.len() <= crate::name::MAX_NAME_LEN, "{n}");
            crate::name::validate(&n).unwrap();
            assert_eq!(
                key_of_lease(&n),
                Some(attachment_key(&"x".repeat(200), &id, ifname).as_str())
            );
        }
        assert_ne!(short_id("ctr-1"), short_id("ctr-2"));
        for shell in [
            "web",
            "web.example.com",
            "cni-x.eth0",
            "cni-0123456789ab",
            "cni-0123456789ab.eth0",
        ] {
            assert_eq!(key_of_lease(shell), None, "{shell}");
        }
    }

    #[test]
    fn tool_errors_map_to_cni_codes() {
        let c = |k| CniError::from(Error::new(k, "x")).code;
        assert_eq!(c(Kind::Data), code::INVALID_CONFIG);
        assert_eq!(c(Kind::Busy), code::TRY_AGAIN);
        assert_eq!(c(Kind::CantCreate), 173);
    }
}
