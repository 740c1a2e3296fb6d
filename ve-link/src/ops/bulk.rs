//! `up --from FILE`: bring up every container of a JSON Lines input (what
//! `ve-alloc alloc NAME... --json` prints) in one process, several at a time.
//!
//! Each line is one container: `name` (required), the four address fields (`null` or
//! absent: none), `netns` (default: the name under /run/netns), `static` (ignored).
//! Every line is validated before anything is changed for it; a line that is not such
//! an object fails alone (65), as does a second line for a name already given. Each
//! container is brought up exactly as `up` does, rolled back on its own failure, and
//! a failure never stops the others. The exit status is 0 when every container is up,
//! else the code of the first failed line (in input order); an input without any
//! container is 66.

use std::{
    collections::HashSet,
    os::fd::{AsFd, AsRawFd},
    sync::Mutex,
};

use common::{output, Error, Result};
use serde::{Deserialize, Serialize};

use super::{
    require_privilege,
    up::{converge, refuse_own_namespace, up_json, Kernels},
};
use crate::{
    kernel::Socket,
    plan::Change,
    request::{UpInput, UpRequest},
};

/// How many containers are brought up at the same time: each has its requests in
/// flight while the kernel works on another's. More does not help: the kernel takes
/// the RTNL lock for every change.
pub const WORKERS: usize = 8;

/// What every line shares: the command line's `--ifname` and `--mtu`.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    pub ifname: Option<String>,
    pub mtu: Option<u32>,
}

/// One line of the input, as ve-alloc prints it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    name: String,
    #[serde(default)]
    netns: Option<String>,
    #[serde(default)]
    host_address: Option<String>,
    #[serde(default)]
    local_address: Option<String>,
    #[serde(default)]
    host_address6: Option<String>,
    #[serde(default)]
    local_address6: Option<String>,
    #[serde(default, rename = "static")]
    _fixed: Option<bool>,
}

/// One container of the input: its line number, its name when the line has one, and
/// its validated request or why the line is refused.
#[derive(Debug)]
pub struct Entry {
    pub line: usize,
    pub name: Option<String>,
    pub req: Result<UpRequest>,
}

/// Parse and validate every non-blank line of `text`; nothing is looked at on the
/// system yet.
pub fn parse(text: &str, origin: &str, shared: &Shared) -> Vec<Entry> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let at = format!("{origin}: line {line}");
        let parsed: std::result::Result<Line, _> = serde_json::from_str(raw);
        let l = match parsed {
            Ok(l) => l,
            Err(e) => {
                // serde_json's message names the problem and its column, not the text.
                out.push(Entry {
                    line,
                    name: name_of(raw),
                    req: Err(Error::data(format!(
                        "{at}: not a container's JSON object ({e})"
                    ))),
                });
                continue;
            }
        };
        let name = l.name.clone();
        let req = if !seen.insert(name.clone()) {
            Err(Error::data(format!(
                "{at}: {name} is already given on an earlier line"
            )))
        } else {
            UpRequest::build(UpInput {
                netns: Some(l.netns.unwrap_or_else(|| l.name.clone())),
                name: l.name,
                host_address: l.host_address,
                local_address: l.local_address,
                host_address6: l.host_address6,
                local_address6: l.local_address6,
                ifname: shared.ifname.clone(),
                mtu: shared.mtu,
                ..Default::default()
            })
            .map_err(|e| e.context(&at))
        };
        out.push(Entry {
            line,
            name: Some(name),
            req,
        });
    }
    out
}

/// The name a malformed line carries, if it is an object with a string `name`, so its
/// failure can be told apart in the report.
fn name_of(raw: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(raw).ok()?;
    Some(v.get("name")?.as_str()?.to_string())
}

/// Bring up every valid entry with `up_one`, `workers` at a time (at least one);
/// the results in input order.
pub fn run_all<F>(entries: Vec<Entry>, workers: usize, up_one: F) -> Vec<Outcome>
where
    F: Fn(&UpRequest) -> Result<Vec<Change>> + Sync,
{
    let todo: Vec<(usize, &UpRequest)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.req.as_ref().ok().map(|r| (i, r)))
        .collect();
    let next = Mutex::new(todo.into_iter());
    let done: Mutex<Vec<(usize, Result<Vec<Change>>)>> = Mutex::new(Vec::new());
    let work = || {
        while let Some((i, req)) = next.lock().ok().and_then(|mut n| n.next()) {
            let r = up_one(req);
            if let Ok(mut d) = done.lock() {
                d.push((i, r));
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..workers.max(1) {
            s.spawn(work);
        }
        work();
    });
    let mut results: Vec<Option<Result<Vec<Change>>>> = entries.iter().map(|_| None).collect();
    for (i, r) in done.into_inner().unwrap_or_default() {
        results[i] = Some(r);
    }
    entries
        .into_iter()
        .zip(results)
        .map(|(e, r)| Outcome {
            line: e.line,
            name: e.name,
            result: match e.req {
                Err(err) => Err(err),
                Ok(req) => match r {
                    Some(Ok(changes)) => Ok((req, changes)),
                    Some(Err(err)) => Err(err),
                    None => Err(Error::internal(format!("up {}: never run", req.name))),
                },
            },
        })
        .collect()
}

/// What became of one container.
#[derive(Debug)]
pub struct Outcome {
    pub line: usize,
    pub name: Option<String>,
    pub result: Result<(UpRequest, Vec<Change>)>,
}

#[derive(Serialize)]
struct FailedLine<'a> {
    name: Option<&'a str>,
    line: usize,
    exit: i32,
    error: &'a str,
}

/// The report: with `json`, one JSON line per container in input order (`up --json`'s
/// object, or `name`, `line`, `exit` and `error` for a failure); else the names of the
/// containers that are up on stdout and one error line per failure on stderr. Then the
/// exit status: the first failure's code.
pub fn report(outcomes: &[Outcome], json: bool) -> Result<()> {
    let mut text = String::new();
    let mut failed: Vec<&Error> = Vec::new();
    for o in outcomes {
        match &o.result {
            Ok((req, changes)) => {
                if changes.is_empty() {
                    log::info!("{}: already up, nothing changed", req.name);
                }
                if json {
                    text.push_str(&up_json(req, changes)?);
                } else {
                    text.push_str(&format!("{}\n", req.name));
                }
            }
            Err(e) => {
                if json {
                    text.push_str(&output::json_line(&FailedLine {
                        name: o.name.as_deref(),
                        line: o.line,
                        exit: e.code(),
                        error: e.message(),
                    })?);
                } else {
                    eprintln!("ve-link: error: {e}");
                }
                failed.push(e);
            }
        }
    }
    output::print(&text)?;
    if outcomes.is_empty() {
        return Err(Error::no_input("no container in the input"));
    }
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(Error::new(
            first.exit(),
            format!(
                "{} of {} containers failed; the first: {first}",
                failed.len(),
                outcomes.len()
            ),
        )),
    }
}

/// `ve-link up --from`: `text` is the input, read from `origin`.
pub fn up_from(text: &str, origin: &str, shared: &Shared, json: bool) -> Result<()> {
    let entries = parse(text, origin, shared);
    if entries.iter().any(|e| e.req.is_ok()) {
        require_privilege(true)?;
    }
    let outcomes = run_all(entries, WORKERS, up_one);
    report(&outcomes, json)
}

/// One container, as `up` brings it up, on the calling thread's own sockets. What
/// `converge` reports says which container already; the steps before it are named.
fn up_one(req: &UpRequest) -> Result<Vec<Change>> {
    let up = format!("up {}", req.name);
    let ns = req.netns.open().map_err(|e| e.context(&up))?;
    refuse_own_namespace(&ns).map_err(|e| e.context(&up))?;
    let host = Socket::host().map_err(|e| e.context(&up))?;
    let ctr = Socket::inside(&ns).map_err(|e| e.context(&up))?;
    let k = Kernels {
        host: &host,
        ctr: &ctr,
        ns: ns.as_fd().as_raw_fd(),
    };
    converge(req, &k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::{
            fake::{FakeLink, World},
            Req,
        },
        plan::Where,
    };
    use common::Exit;

    fn lines(n: usize) -> String {
        (1..=n)
            .map(|i| {
                format!(
                    "{{\"name\":\"c{i}\",\"host_address\":\"10.233.0.{}\",\
                     \"local_address\":\"10.233.0.{}\",\"host_address6\":null,\
                     \"local_address6\":null,\"static\":false}}\n",
                    2 * i,
                    2 * i + 1
                )
            })
            .collect()
    }

    type Seen = Mutex<Vec<(String, Vec<FakeLink>, Vec<(Where, Req)>)>>;

    /// Bring the entries up over one fake kernel per container, `bad` failing at its
    /// container route; what each fake holds afterwards.
    fn up_fake(entries: Vec<Entry>, bad: &str) -> (Vec<Outcome>, Seen) {
        let seen: Seen = Mutex::new(Vec::new());
        let outcomes = run_all(entries, 3, |req| {
            let w = World::default();
            if req.name == bad {
                w.fail(
                    Where::Container,
                    |q| matches!(q, Req::AddRoute(..)),
                    libc::EINVAL,
                );
            }
            let (host, ctr) = (w.host(), w.ctr());
            let k = Kernels {
                host: &host,
                ctr: &ctr,
                ns: 3,
            };
            let r = converge(req, &k);
            seen.lock()
                .unwrap()
                .push((req.name.clone(), w.links(), w.log()));
            r
        });
        (outcomes, seen)
    }

    #[test]
    fn one_failed_container_is_rolled_back_alone_and_the_others_are_up() {
        let entries = parse(&lines(6), "stdin", &Shared::default());
        assert!(entries.iter().all(|e| e.req.is_ok()));
        assert_eq!(
            entries[0].req.as_ref().unwrap().netns.to_string(),
            "/run/netns/c1"
        );
        let (outcomes, seen) = up_fake(entries, "c4");
        let names: Vec<_> = outcomes.iter().map(|o| o.name.clone().unwrap()).collect();
        assert_eq!(names, ["c1", "c2", "c3", "c4", "c5", "c6"], "input order");
        for (name, links, log) in seen.into_inner().unwrap() {
            let host = links
                .iter()
                .find(|l| l.ns == Where::Host && l.link.name != "lo");
            let deleted = log.iter().any(|(_, q)| matches!(q, Req::DelLink(_)));
            if name == "c4" {
                assert!(host.is_none(), "c4's pair was rolled back");
                assert!(deleted);
            } else {
                let h = host.unwrap_or_else(|| panic!("{name} has no host end"));
                assert_eq!(h.link.name, format!("ve-{name}"));
                assert_eq!(h.addrs.len(), 1);
                assert!(!deleted, "{name} was rolled back");
            }
        }
        let e = outcomes[3].result.as_ref().unwrap_err();
        assert!(e.to_string().ends_with("; rolled back"), "{e}");
        assert!(outcomes
            .iter()
            .enumerate()
            .all(|(i, o)| o.result.is_ok() == (i != 3)));
        let code = outcomes[3].result.as_ref().unwrap_err().exit();
        let e = report(&outcomes, true).unwrap_err();
        assert_eq!(e.exit(), code, "the failed container's own code: {e}");
        assert!(e.to_string().starts_with("1 of 6 containers failed"), "{e}");
    }

    #[test]
    fn a_bad_line_fails_alone_before_anything_is_done_for_it() {
        let mut text = lines(3);
        text.push_str("not json\n\n");
        text.push_str("{\"name\":\"c9\",\"host_address\":\"10.233.0.300\"}\n");
        text.push_str("{\"name\":\"c1\",\"host_address\":\"10.233.0.2\"}\n");
        text.push_str("{\"name\":\"c8\",\"netns\":\"/proc/1/ns/net\",\"typo\":1}\n");
        text.push_str("{\"name\":\"c7\",\"netns\":\"/run/other/c7\"}\n");
        let entries = parse(&text, "stdin", &Shared::default());
        assert_eq!(entries.len(), 8, "the blank line is skipped");
        let bad: Vec<usize> = entries
            .iter()
            .filter(|e| e.req.is_err())
            .map(|e| e.line)
            .collect();
        assert_eq!(bad, [4, 6, 7, 8]);
        for e in &entries[3..7] {
            let err = e.req.as_ref().unwrap_err();
            assert_eq!(err.exit(), Exit::DataErr, "{err}");
            assert!(err
                .to_string()
                .starts_with(&format!("stdin: line {}", e.line)));
        }
        assert!(entries[5]
            .req
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("already given"));
        assert_eq!(entries[6].name.as_deref(), Some("c8"));
        assert_eq!(
            entries[7].req.as_ref().unwrap().netns.to_string(),
            "/run/other/c7"
        );
        let (outcomes, seen) = up_fake(entries, "none");
        let up: Vec<String> = seen
            .into_inner()
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(
            up.len(),
            4,
            "only the valid lines reached the kernel: {up:?}"
        );
        assert!(!up.contains(&"c9".to_string()) && !up.contains(&"c8".to_string()));
        let e = report(&outcomes, true).unwrap_err();
        assert_eq!(e.exit(), Exit::DataErr, "{e}");
        assert!(e.to_string().contains("line 4"), "the first failure: {e}");
    }

    #[test]
    fn no_container_at_all_is_66() {
        let entries = parse("\n\n", "stdin", &Shared::default());
        let outcomes = run_all(entries, 2, |_| unreachable!());
        assert_eq!(report(&outcomes, false).unwrap_err().exit(), Exit::NoInput);
    }
}
