//! `ve-alloc` on a real 3-member etcd cluster that serves clients over TLS only and
//! checks their certificates (`--client-cert-auth`), with certificates the `openssl`
//! CLI made: alloc and list over `etcd+tls://` work, also with the first member dead;
//! no client certificate, one from
//! another CA, or a CA that did not sign the members' certificate each fail at once
//! with their documented code and change nothing; bad files are refused before etcd is
//! asked.

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use testbed::etcd::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_ve-alloc");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `ve-alloc ARGS` on node `i`, with no TLS files unless the caller adds them.
fn va(c: &Cluster, i: usize, args: &[&str]) -> Command {
    let n = &c.nodes[i];
    let mut cmd = n.command(BIN);
    cmd.env("VE_ALLOC_STORE", c.url("tls"))
        .env("VE_ALLOC_NODE", &n.name)
        .env("VE_ALLOC_NODE_ADDRESS", &n.addr)
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .env_remove("VE_ALLOC_POOL")
        .env_remove("VE_ALLOC_POOL6")
        .env_remove("VE_ALLOC_ETCD_CACERT")
        .env_remove("VE_ALLOC_ETCD_CERT")
        .env_remove("VE_ALLOC_ETCD_KEY")
        .args(args);
    cmd
}

/// `cmd` with these TLS files (None: not given).
fn with_files(
    mut cmd: Command,
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Command {
    for (var, f) in [
        ("VE_ALLOC_ETCD_CACERT", ca),
        ("VE_ALLOC_ETCD_CERT", cert),
        ("VE_ALLOC_ETCD_KEY", key),
    ] {
        if let Some(f) = f {
            cmd.env(var, f);
        }
    }
    cmd
}

/// How many keys the store holds under the test's prefix.
fn keys(c: &Cluster) -> usize {
    let o = c
        .etcdctl(&["get", "--prefix", "--keys-only", "/tls/"])
        .output()
        .unwrap();
    assert!(o.status.success(), "etcdctl get: {o:?}");
    text(&o.stdout).lines().filter(|l| !l.is_empty()).count()
}

fn expect(what: &str, o: &Output, code: i32, took: Duration) {
    eprint!("{what}: {}", text(&o.stderr));
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: stderr {}",
        text(&o.stderr)
    );
    assert!(o.stdout.is_empty(), "{what} printed {}", text(&o.stdout));
    assert_eq!(
        text(&o.stderr).trim_end().lines().count(),
        1,
        "{what}: one error line: {}",
        text(&o.stderr)
    );
    // Refusals are final: no waiting out --wait on the other endpoints.
    assert!(took < Duration::from_secs(4), "{what} took {took:?}");
}

#[test]
fn tls_with_client_certificates() {
    if !testbed::privileged(
        "tls_with_client_certificates",
        &["ip", "unshare", "etcd", "etcdctl", "openssl"],
    ) {
        return;
    }
    let c = Cluster::start_tls(3, 2).unwrap_or_else(|e| panic!("{e}"));
    let certs = c.certs.as_ref().unwrap();
    let (ca, cert, key) = (
        Some(certs.ca.as_path()),
        Some(certs.client_cert.as_path()),
        Some(certs.client_key.as_path()),
    );
    let dir = c.nodes[0].dir().to_path_buf();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.join("missing.pem");
    let run = |what: &str, cmd: Command, code: i32| {
        let mut cmd = cmd;
        let t = Instant::now();
        let o = cmd.output().unwrap();
        expect(what, &o, code, t.elapsed());
    };
    let alloc = || va(&c, 0, &["--wait", "8", "alloc", "web"]);
    // Refused by etcd: no client certificate, or one another CA signed (77).
    run(
        "no client certificate",
        with_files(alloc(), ca, None, None),
        77,
    );
    run(
        "a client certificate of another CA",
        with_files(alloc(), ca, Some(&certs.other_cert), Some(&certs.other_key)),
        77,
    );
    // Refused by us: the members' certificate is not signed by the CA we trust (78),
    // also the system bundle's default when no CA is given.
    run(
        "the wrong CA",
        with_files(alloc(), Some(&certs.other_ca), cert, key),
        78,
    );
    let system = Path::new("/etc/ssl/certs/ca-certificates.crt").exists();
    run(
        "the system CAs",
        with_files(alloc(), None, cert, key),
        if system { 78 } else { 66 },
    );
    // Plain HTTP to a TLS listener: etcd closes the connection unanswered, as a dead
    // member might, so it is unreachable (69) once --wait has passed.
    let mut plain = va(&c, 0, &["--wait", "2", "alloc", "web"]);
    plain.env(
        "VE_ALLOC_STORE",
        c.url("tls").replacen("etcd+tls://", "etcd://", 1),
    );
    run("etcd:// to TLS members", plain, 69);
    // Bad files, refused before etcd is asked: missing 66, not PEM 78, a key that is
    // not the certificate's 78, half a pair 64, TLS files for a plain store 64.
    run(
        "a missing CA",
        with_files(alloc(), Some(&missing), cert, key),
        66,
    );
    run(
        "a missing key",
        with_files(alloc(), ca, cert, Some(&missing)),
        66,
    );
    run(
        "a garbage CA",
        with_files(alloc(), Some(&garbage), cert, key),
        78,
    );
    run(
        "a garbage certificate",
        with_files(alloc(), ca, Some(&garbage), key),
        78,
    );
    run(
        "a garbage key",
        with_files(alloc(), ca, cert, Some(&garbage)),
        78,
    );
    run(
        "another certificate's key",
        with_files(alloc(), ca, cert, Some(&certs.other_key)),
        78,
    );
    run(
        "a certificate without its key",
        with_files(alloc(), ca, cert, None),
        64,
    );
    let mut plain = with_files(alloc(), ca, cert, key);
    plain.env(
        "VE_ALLOC_STORE",
        c.url("tls").replacen("etcd+tls://", "etcd://", 1),
    );
    run("TLS files for etcd://", plain, 64);
    assert_eq!(keys(&c), 0, "a refused command wrote nothing");

    // The right files: alloc and list over TLS, from both nodes.
    let o = with_files(alloc(), ca, cert, key).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout).lines().next(),
        Some("HOST_ADDRESS=10.233.0.2")
    );
    let o = with_files(va(&c, 1, &["alloc", "db"]), ca, cert, key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = with_files(va(&c, 1, &["list", "--json"]), ca, cert, key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let nodes: Vec<(String, String)> = text(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["name"].as_str().unwrap().into(),
                v["node"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [("db".into(), "n2".into()), ("web".into(), "n1".into())]
    );
    // The first endpoint dies: the next one is tried, over TLS too.
    c.members[0].kill();
    let o = with_files(va(&c, 0, &["--wait", "8", "alloc", "after"]), ca, cert, key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));

    // The same from the config file, and its bad values are 78 (a missing file 66).
    let conf = dir.join("ve-alloc.conf");
    let from_conf = |extra: &str| {
        std::fs::write(
            &conf,
            format!(
                "STORE={}\nETCD_CACERT={}\nETCD_CERT={}\n{extra}",
                c.url("tls"),
                certs.ca.display(),
                certs.client_cert.display()
            ),
        )
        .unwrap();
        let mut cmd = va(&c, 0, &["--wait", "8", "show-ip", "web"]);
        cmd.env("VE_ALLOC_CONFIG", &conf)
            .env_remove("VE_ALLOC_STORE");
        cmd
    };
    run("ETCD_KEY missing", from_conf(""), 78);
    run(
        "ETCD_KEY garbage",
        from_conf(&format!("ETCD_KEY={}\n", garbage.display())),
        78,
    );
    run(
        "ETCD_KEY absent file",
        from_conf(&format!("ETCD_KEY={}\n", missing.display())),
        66,
    );
    let o = from_conf(&format!("ETCD_KEY={}\n", certs.client_key.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "10.233.0.3\n");
}
