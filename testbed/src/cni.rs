//! CNI plugins called as a runtime calls them, for the tests and the CNI bench:
//! `CNI_COMMAND` and the other `CNI_*` variables in an otherwise clean environment, the
//! configuration on stdin, the result or error JSON read back from stdout; and a
//! conflist's plugins chained as libcni chains them (each ADD gets the previous result,
//! DEL runs in reverse order with the cached result).

use std::{
    io::{self, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// A 64-hex container ID, as runtimes make them; `n` tells them apart.
pub fn container_id(n: u32) -> String {
    format!("{n:08x}").repeat(8)
}

/// What one plugin call printed and how it ended.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    /// The exit code (`None` when a signal ended it).
    pub code: Option<i32>,
    /// The result or error object (`Null` when the plugin printed nothing).
    pub stdout: Value,
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub took: Duration,
}

/// Nothing inherited but a PATH: the environment of a runtime that passes only `CNI_*`.
pub fn clean_env(c: &mut Command) -> &mut Command {
    c.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
}

/// Run plugin command `c` with `CNI_COMMAND=verb` and `env` added to the environment it
/// has (see [`clean_env`]), the configuration on stdin. An error when it cannot run,
/// prints something that is not JSON, or fails without the CNI error object the spec
/// asks for (a code and a msg).
pub fn invoke(
    mut c: Command,
    verb: &str,
    conf: &Value,
    env: &[(&str, String)],
) -> Result<Reply, String> {
    c.env("CNI_COMMAND", verb)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = c.spawn().map_err(|e| format!("{c:?}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.to_string().as_bytes())
            .map_err(|e| format!("{c:?}: writing the configuration: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{c:?}: {e}"))?;
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{verb}: not JSON ({e}): {text}"))?
    };
    let cni_error = stdout["code"].as_u64().is_some() && stdout["msg"].is_string();
    if !out.status.success() && !cni_error {
        return Err(format!(
            "{verb} failed without a CNI error: {text} / {}",
            stderr.trim()
        ));
    }
    Ok(Reply {
        ok: out.status.success(),
        code: out.status.code(),
        stdout,
        stderr,
        took,
    })
}

/// `program`, to be run inside the network namespace at `ns` (entered between fork and
/// exec, as a runtime on that host would start it: no `ip netns exec`, so no mount
/// namespace or sysfs remount is timed with it).
pub fn command_in(ns: &Path, program: &Path) -> io::Result<Command> {
    let f = std::fs::File::open(ns)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", ns.display())))?;
    let mut c = Command::new(program);
    // SAFETY: only setns(2), async-signal-safe, runs in the child; the closure owns the
    // file, so the fd stays open as long as the command can be spawned.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(c)
}

/// A network configuration list (`.conflist`): its plugins in order.
#[derive(Debug, Clone)]
pub struct Conflist {
    pub name: String,
    pub version: String,
    pub plugins: Vec<Value>,
}

/// The runtime's side of one attachment: what goes into `CNI_*`, and its runtime
/// configuration (such as `{"portMappings": [...]}`), given to the plugins whose
/// `capabilities` name it.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub path: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub runtime: Value,
}

impl Attachment {
    /// The `CNI_*` variables (`CNI_COMMAND` aside).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_PATH", self.path.clone()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns.clone()),
            ("CNI_IFNAME", self.ifname.clone()),
            ("CNI_ARGS", self.args.clone()),
        ]
    }
}

/// One chain's calls: each plugin's type and time, and the final result of an ADD.
#[derive(Debug, Default)]
pub struct ChainRun {
    pub calls: Vec<(String, Duration)>,
    pub result: Value,
}

impl ChainRun {
    pub fn total(&self) -> Duration {
        self.calls.iter().map(|c| c.1).sum()
    }
}

impl Conflist {
    /// The configuration plugin `i` gets: its own object with the list's name and
    /// version, `runtimeConfig` with the capabilities it declares, and `prev` as
    /// `prevResult`.
    pub fn plugin_conf(&self, i: usize, runtime: &Value, prev: Option<&Value>) -> Value {
        let mut conf = self.plugins[i].clone();
        conf["name"] = json!(self.name);
        conf["cniVersion"] = json!(self.version);
        let caps: Vec<&String> = conf["capabilities"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, on)| on == &&json!(true))
                    .map(|(k, _)| k)
                    .collect()
            })
            .unwrap_or_default();
        let rc: serde_json::Map<String, Value> = runtime
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| caps.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !rc.is_empty() {
            conf["runtimeConfig"] = Value::Object(rc);
        }
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    fn plugin_type(&self, i: usize) -> String {
        self.plugins[i]["type"].as_str().unwrap_or("").to_string()
    }

    /// ADD through the chain: `run(type, verb, conf)` calls one plugin (found by its
    /// type in `CNI_PATH`); the first failure ends it.
    pub fn add(
        &self,
        a: &Attachment,
        mut run: impl FnMut(&str, &str, &Value) -> Result<Reply, String>,
    ) -> Result<ChainRun, String> {
        let mut out = ChainRun::default();
        let mut prev: Option<Value> = None;
        for i in 0..self.plugins.len() {
            let t = self.plugin_type(i);
            let r = run(&t, "ADD", &self.plugin_conf(i, &a.runtime, prev.as_ref()))?;
            if !r.ok {
                return Err(format!("{t} ADD: {} {}", r.stdout, r.stderr.trim()));
            }
            out.calls.push((t, r.took));
            prev = Some(r.stdout);
        }
        out.result = prev.unwrap_or(Value::Null);
        Ok(out)
    }

    /// DEL through the chain in reverse order, each plugin given the cached ADD result
    /// (`cached`, `Null` when there is none); every plugin is called, and the failures
    /// are reported together.
    pub fn del(
        &self,
        a: &Attachment,
        cached: &Value,
        mut run: impl FnMut(&str, &str, &Value) -> Result<Reply, String>,
    ) -> Result<ChainRun, String> {
        let mut out = ChainRun::default();
        let mut errors = Vec::new();
        let prev = (!cached.is_null()).then_some(cached);
        for i in (0..self.plugins.len()).rev() {
            let t = self.plugin_type(i);
            match run(&t, "DEL", &self.plugin_conf(i, &a.runtime, prev)) {
                Ok(r) if r.ok => out.calls.push((t, r.took)),
                Ok(r) => errors.push(format!("{t} DEL: {} {}", r.stdout, r.stderr.trim())),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_gets_name_version_previous_result_and_only_its_capabilities() {
        let list = Conflist {
            name: "net".into(),
            version: "1.0.0".into(),
            plugins: vec![
                json!({"type": "a", "ipam": {"type": "i"}}),
                json!({"type": "b", "capabilities": {"portMappings": true, "other": false}}),
            ],
        };
        let runtime = json!({"portMappings": [{"hostPort": 1}], "other": 2});
        let a = list.plugin_conf(0, &runtime, None);
        assert_eq!(a["name"], "net");
        assert_eq!(a["cniVersion"], "1.0.0");
        assert!(a.get("runtimeConfig").is_none() && a.get("prevResult").is_none());
        let prev = json!({"ips": []});
        let b = list.plugin_conf(1, &runtime, Some(&prev));
        assert_eq!(
            b["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 1}]})
        );
        assert_eq!(b["prevResult"], prev);
        assert_eq!(container_id(1).len(), 64);
    }

    #[test]
    fn add_chains_results_and_del_runs_backwards_with_the_cached_result() {
        let list = Conflist {
            name: "net".into(),
            version: "1.0.0".into(),
            plugins: vec![json!({"type": "a"}), json!({"type": "b"})],
        };
        let att = Attachment {
            path: String::new(),
            container_id: container_id(1),
            netns: String::new(),
            ifname: "eth0".into(),
            args: String::new(),
            runtime: Value::Null,
        };
        let mut seen = Vec::new();
        let mut fake = |t: &str, verb: &str, conf: &Value| {
            seen.push(format!("{t} {verb} {}", conf["prevResult"]["by"]));
            Ok(Reply {
                ok: true,
                code: Some(0),
                stdout: if verb == "ADD" {
                    json!({"by": t})
                } else {
                    Value::Null
                },
                stderr: String::new(),
                took: Duration::from_millis(1),
            })
        };
        let r = list.add(&att, &mut fake).unwrap();
        assert_eq!(r.result, json!({"by": "b"}));
        assert_eq!(r.total(), Duration::from_millis(2));
        list.del(&att, &r.result, &mut fake).unwrap();
        assert_eq!(
            seen,
            ["a ADD null", "b ADD \"a\"", "b DEL \"b\"", "a DEL \"b\""]
        );
    }
}
