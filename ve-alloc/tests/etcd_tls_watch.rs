//! `ve-alloc routes --watch` over `etcd+tls://`, on a real 3-member etcd cluster that
//! serves clients over TLS only and checks their certificates: the watch stream is a
//! TLS connection too, and claims reach it.

use std::{
    io::BufRead,
    process::{Command, Stdio},
    time::Duration,
};

use testbed::etcd::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_ve-alloc");

fn va(c: &Cluster, i: usize, args: &[&str]) -> Command {
    let n = &c.nodes[i];
    let certs = c.certs.as_ref().expect("a TLS cluster");
    let mut cmd = n.command(BIN);
    cmd.env("VE_ALLOC_STORE", c.url("tlswatch"))
        .env("VE_ALLOC_NODE", &n.name)
        .env("VE_ALLOC_NODE_ADDRESS", &n.addr)
        .env("VE_ALLOC_CONFIG", "/dev/null")
        .env_remove("VE_ALLOC_POOL")
        .env_remove("VE_ALLOC_POOL6")
        .env("VE_ALLOC_ETCD_CACERT", &certs.ca)
        .env("VE_ALLOC_ETCD_CERT", &certs.client_cert)
        .env("VE_ALLOC_ETCD_KEY", &certs.client_key)
        .args(args);
    cmd
}

#[test]
fn routes_watch_over_tls() {
    if !testbed::privileged(
        "routes_watch_over_tls",
        &["ip", "unshare", "etcd", "etcdctl", "openssl"],
    ) {
        return;
    }
    let c = Cluster::start_tls(3, 2).unwrap_or_else(|e| panic!("{e}"));
    let mut watch = va(&c, 0, &["routes", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    // The first set is empty: a blank line alone.
    assert_eq!(lines.next().unwrap().unwrap(), "");
    let o = va(&c, 1, &["alloc", "db"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let set: Vec<String> = lines
            .by_ref()
            .map_while(|l| l.ok())
            .take_while(|l| !l.is_empty())
            .collect();
        let _ = tx.send(set);
    });
    let set = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("n2's claim within 5 s");
    assert_eq!(set, [format!("10.233.0.0/26 via {}", c.nodes[1].addr)]);
    let _ = watch.kill();
    let o = watch.wait_with_output().unwrap();
    // Through the watch itself, with no trouble on the way.
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
}
