//! A real etcd cluster (Debian's etcd-server) in sandbox namespaces: a `lan` namespace
//! with a bridge, one namespace per member and per node, each on the bridge by a veth,
//! addressed from 198.51.100.0/24. Node commands run in a private mount namespace with
//! their own /var/lib, working directory and TMPDIR, so nodes share nothing but etcd.
//! Dropping the cluster kills every process in its namespaces and deletes them.
//! [`Cluster::start_tls`] serves clients over TLS only, with certificates the `openssl`
//! CLI makes in the cluster's scratch directory (see [`Certs`]).

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use crate::{process::wait_for, sandbox::run_ok, Netns, Sandbox, TempDir};

pub const CLIENT_PORT: u16 = 2379;

/// One member of the cluster.
pub struct Member {
    pub name: String,
    pub ns: Netns,
    pub addr: String,
    child: Mutex<Option<Child>>,
}

impl Member {
    /// `ADDR:2379`.
    pub fn endpoint(&self) -> String {
        format!("{}:{CLIENT_PORT}", self.addr)
    }

    /// SIGKILL the member (as a crash would).
    pub fn kill(&self) {
        let taken = self.child.lock().ok().and_then(|mut c| c.take());
        if let Some(mut c) = taken {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A node (host) of the fleet: a namespace with its own scratch directories.
pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub addr: String,
    dir: PathBuf,
}

impl Node {
    /// `program ARGS` inside the node: its namespace, a private mount namespace with
    /// its own /var/lib, working directory and TMPDIR.
    pub fn command(&self, program: &str) -> Command {
        let d = self.dir.display();
        let mut c = self.ns.command("unshare");
        c.args(["-m", "--propagation", "slave", "sh", "-c"])
            .arg(format!(
                "mount --bind {d}/var-lib /var/lib && cd {d}/work && TMPDIR={d}/tmp exec \"$@\""
            ))
            .arg("sh")
            .arg(program);
        c
    }

    /// The node's private directory (holding var-lib, work, tmp).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// The PEM files of a TLS cluster: a CA that signed the members' certificate (naming
/// every member's address, and good for client auth too: etcd 3.4's JSON gateway
/// presents it to the member's own gRPC server) and a client certificate, and a second, unrelated CA with a
/// client certificate of its own (for "wrong CA" cases).
pub struct Certs {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub other_ca: PathBuf,
    pub other_cert: PathBuf,
    pub other_key: PathBuf,
}

impl Certs {
    /// Make the files in `dir` for members at `addrs`.
    pub fn make(dir: &Path, addrs: &[&str]) -> Result<Certs, String> {
        let f = |n: &str| dir.join(n);
        let openssl = |args: &[&str]| -> Result<(), String> {
            let o = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running openssl: {e}"))?;
            if o.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&o.stderr)
                ))
            }
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let mut a = vec!["req", "-x509", "-days", "2", "-subj"];
            let subj = format!("/CN=ve-test {ca}");
            a.push(&subj);
            a.extend(ec);
            let (cert, key) = (format!("{ca}.pem"), format!("{ca}-key.pem"));
            a.extend(["-keyout", &key, "-out", &cert]);
            openssl(&a)?;
        }
        let sans: Vec<String> = addrs.iter().map(|a| format!("IP:{a}")).collect();
        let sign = |name: &str, ca: &str, usage: &str, san: Option<&str>| {
            let (csr, key, cert) = (
                format!("{name}.csr"),
                format!("{name}-key.pem"),
                format!("{name}.pem"),
            );
            let subj = format!("/CN=ve-test {name}");
            let mut a = vec!["req", "-new", "-subj", &subj];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &csr]);
            openssl(&a)?;
            let ext = format!("{name}.ext");
            let mut text = format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n");
            if let Some(san) = san {
                text.push_str(&format!("subjectAltName={san}\n"));
            }
            std::fs::write(dir.join(&ext), text).map_err(|e| e.to_string())?;
            let (ca_cert, ca_key) = (format!("{ca}.pem"), format!("{ca}-key.pem"));
            openssl(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ])
        };
        sign(
            "server",
            "ca",
            "serverAuth,clientAuth",
            Some(&sans.join(",")),
        )?;
        sign("client", "ca", "clientAuth", None)?;
        sign("other", "other-ca", "clientAuth", None)?;
        Ok(Certs {
            ca: f("ca.pem"),
            client_cert: f("client.pem"),
            client_key: f("client-key.pem"),
            server_cert: f("server.pem"),
            server_key: f("server-key.pem"),
            other_ca: f("other-ca.pem"),
            other_cert: f("other.pem"),
            other_key: f("other-key.pem"),
        })
    }
}

/// Fields drop in order: the sandbox (killing every process in it) before the scratch
/// directories.
pub struct Cluster {
    sandbox: Sandbox,
    pub members: Vec<Member>,
    pub nodes: Vec<Node>,
    /// Set when clients speak TLS to the members.
    pub certs: Option<Certs>,
    _lan: Netns,
    _dir: TempDir,
}

impl Cluster {
    /// Whether Debian's etcd-server and etcd-client are installed.
    pub fn available() -> bool {
        crate::have_command("etcd") && crate::have_command("etcdctl")
    }

    /// Start `members` etcd members and create `nodes` node namespaces; waits until the
    /// cluster is healthy.
    pub fn start(members: usize, node_count: usize) -> Result<Cluster, String> {
        Self::start_with(members, node_count, false, &[])
    }

    /// [`Cluster::start`] with `args` added to every member's command line (say
    /// `--heartbeat-interval 100 --election-timeout 5000` for a test that holds a
    /// member's traffic back longer than the default 1 s election timeout).
    pub fn start_with_args(
        members: usize,
        node_count: usize,
        args: &[&str],
    ) -> Result<Cluster, String> {
        Self::start_with(members, node_count, false, args)
    }

    /// [`Cluster::start`] with clients served over TLS only, each presenting a client
    /// certificate the cluster's CA signed (`--client-cert-auth`); needs `openssl`.
    pub fn start_tls(members: usize, node_count: usize) -> Result<Cluster, String> {
        Self::start_with(members, node_count, true, &[])
    }

    fn start_with(
        members: usize,
        node_count: usize,
        tls: bool,
        args: &[&str],
    ) -> Result<Cluster, String> {
        // Locals drop in reverse order: on an early return the sandbox (killing the
        // members) goes before the directory they write in.
        let dir = TempDir::new("etcd");
        let mut sandbox = Sandbox::new();
        let lan = sandbox.netns("lan");
        lan.ip(&["link", "add", "br0", "type", "bridge"]);
        lan.ip(&["link", "set", "br0", "up"]);
        let mut n = 0u8;
        let mut attach = |sandbox: &mut Sandbox, role: &str| -> (Netns, String) {
            n += 1;
            let ns = sandbox.netns(role);
            let port = format!("p{n}");
            lan.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ]);
            lan.ip(&["link", "set", &port, "master", "br0", "up"]);
            let addr = format!("198.51.100.{}", 10 + n);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            (ns, addr)
        };
        let mut ms = Vec::new();
        for i in 1..=members {
            let (ns, addr) = attach(&mut sandbox, &format!("e{i}"));
            ms.push(Member {
                name: format!("e{i}"),
                ns,
                addr,
                child: Mutex::new(None),
            });
        }
        let initial: Vec<String> = ms
            .iter()
            .map(|m| format!("{}=http://{}:2380", m.name, m.addr))
            .collect();
        let token = sandbox.prefix().to_string();
        let certs = if tls {
            let addrs: Vec<&str> = ms.iter().map(|m| m.addr.as_str()).collect();
            Some(Certs::make(dir.path(), &addrs)?)
        } else {
            None
        };
        let scheme = if tls { "https" } else { "http" };
        for m in &mut ms {
            let data = dir.path().join(&m.name);
            let log = std::fs::File::create(dir.path().join(format!("{}.log", m.name)))
                .map_err(|e| e.to_string())?;
            let a = &m.addr;
            let mut cmd = m.ns.command("etcd");
            if let Some(c) = &certs {
                cmd.arg("--cert-file")
                    .arg(&c.server_cert)
                    .arg("--key-file")
                    .arg(&c.server_key)
                    .arg("--trusted-ca-file")
                    .arg(&c.ca)
                    .arg("--client-cert-auth");
            }
            let child = cmd
                .args(["--name", &m.name])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &format!("{scheme}://{a}:2379")])
                .args(["--advertise-client-urls", &format!("{scheme}://{a}:2379")])
                .args(["--listen-peer-urls", &format!("http://{a}:2380")])
                .args(["--initial-advertise-peer-urls", &format!("http://{a}:2380")])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-token", &token])
                .args(["--initial-cluster-state", "new"])
                .args(args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("starting etcd: {e}"))?;
            m.child = Mutex::new(Some(child));
        }
        let mut nodes = Vec::new();
        for i in 1..=node_count {
            let (ns, addr) = attach(&mut sandbox, &format!("n{i}"));
            let d = dir.path().join(format!("n{i}"));
            for sub in ["var-lib", "work", "tmp"] {
                std::fs::create_dir_all(d.join(sub)).map_err(|e| e.to_string())?;
            }
            nodes.push(Node {
                name: format!("n{i}"),
                ns,
                addr,
                dir: d,
            });
        }
        let c = Cluster {
            sandbox,
            members: ms,
            nodes,
            certs,
            _lan: lan,
            _dir: dir,
        };
        wait_for("etcd cluster healthy", Duration::from_secs(30), || {
            c.etcdctl(&["endpoint", "health"])
                .status()
                .is_ok_and(|s| s.success())
        })?;
        Ok(c)
    }

    /// Every member's endpoint, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcd://E1,E2,E3/PREFIX` (`etcd+tls://` on a TLS cluster).
    pub fn url(&self, prefix: &str) -> String {
        let scheme = if self.certs.is_some() {
            "etcd+tls"
        } else {
            "etcd"
        };
        format!("{scheme}://{}/{prefix}", self.endpoints())
    }

    /// `etcdctl --endpoints=ALL ARGS`, run in the first node.
    pub fn etcdctl(&self, args: &[&str]) -> Command {
        let mut c = self.nodes[0].ns.command("etcdctl");
        c.env("ETCDCTL_API", "3");
        match &self.certs {
            Some(certs) => {
                let urls: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("https://{}", m.endpoint()))
                    .collect();
                c.arg(format!("--endpoints={}", urls.join(",")))
                    .arg("--cacert")
                    .arg(&certs.ca)
                    .arg("--cert")
                    .arg(&certs.client_cert)
                    .arg("--key")
                    .arg(&certs.client_key)
            }
            None => c.arg(format!("--endpoints={}", self.endpoints())),
        }
        .args(["--dial-timeout=1s", "--command-timeout=2s"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        c
    }

    /// The index of the member that leads now.
    pub fn leader(&self) -> Option<usize> {
        let out = run_ok(&mut self.etcdctl(&["endpoint", "status", "-w", "json"]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let list = v.as_array()?;
        for s in list {
            let st = &s["Status"];
            if st["header"]["member_id"] == st["leader"] {
                let ep = s["Endpoint"].as_str()?;
                return self.members.iter().position(|m| ep.contains(&m.endpoint()));
            }
        }
        None
    }

    /// The members' request counters, read from node 1: gateway requests the members
    /// served (`Range` and `Txn` calls, summed over members) and quorum writes
    /// (proposals committed: each member commits every one, so the highest count).
    pub fn counters(&self) -> Result<(u64, u64), String> {
        let eps: Vec<String> = self.members.iter().map(|m| m.endpoint()).collect();
        let ns = self.nodes[0].ns.path();
        crate::in_netns(&ns, move || {
            let (mut requests, mut proposals) = (0u64, 0u64);
            for ep in &eps {
                let text = get_metrics(ep).map_err(|e| format!("{ep}/metrics: {e}"))?;
                let (r, p) = parse_counters(&text);
                requests += r;
                proposals = proposals.max(p);
            }
            Ok((requests, proposals))
        })
        .map_err(|e| format!("entering {}: {e}", ns.display()))?
    }

    /// The sandbox's unique prefix.
    pub fn prefix(&self) -> &str {
        self.sandbox.prefix()
    }

    /// The scratch directory holding the members' data and the nodes' directories.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }
}

/// `GET /metrics` of the member at `ep` (HOST:PORT): its Prometheus text. A member that
/// stops answering is an error after 5 s, not a hang.
fn get_metrics(ep: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(ep)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {ep}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// From a member's metrics: the `Range` and `Txn` calls it served, and the proposals
/// it committed.
fn parse_counters(text: &str) -> (u64, u64) {
    let (mut requests, mut proposals) = (0u64, 0u64);
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        // Counters print as floats ("1.234e+06" for large ones).
        let v = value.parse::<f64>().unwrap_or(0.0) as u64;
        if name.starts_with("grpc_server_handled_total{")
            && (name.contains("grpc_method=\"Range\"") || name.contains("grpc_method=\"Txn\""))
        {
            requests += v;
        } else if name == "etcd_server_proposals_committed_total" {
            proposals = v;
        }
    }
    (requests, proposals)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_sum_range_and_txn_and_read_float_notation() {
        let text = "# HELP x\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 7\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1.5e+03\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 9\n\
            etcd_server_proposals_committed_total 42\n";
        assert_eq!(super::parse_counters(text), (1507, 42));
    }
}
