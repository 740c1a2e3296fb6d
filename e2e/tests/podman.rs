//! The tools as CNI plugins under a real runtime: Debian 12's podman 4.3.1 with
//! `network_backend = "cni"`, sandboxed by `testbed::podman` (a host namespace with a
//! private mount and PID namespace, scratch root, runroot and configuration, containers
//! from the cached debootstrap rootfs the boot test uses), the README's podman conflist
//! with our plugins linked into a scratch plugin directory. Checked: a container
//! reaches an outside server through NAT (the server sees the uplink address), `-p
//! 8080:80` answers from outside, and removing the containers leaves no link, lease,
//! rule or element behind. The same body runs with Debian's reference plugins (ptp
//! with ipMasq, host-local, portmap) as the control: the harness passes with them, so
//! a failure with ours is ours.

mod support;

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use support::{outside, tools_dir, OUTSIDE};
use testbed::{http_get_within, podman::Podman, privileged, HttpServer, Netns, Sandbox, TempDir};

/// Where Debian's containernetworking-plugins live.
const REFERENCE: &str = "/usr/lib/cni";

/// The container's answer to a `GET` on port 80: perl-base is in minbase, python is not.
const SERVER: &str = r#"use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalPort => 80, Listen => 8, ReuseAddr => 1) or die "listen: $!";
while (my $c = $s->accept) {
    while (my $l = <$c>) { last if $l =~ /^\r?$/ }
    my $b = "served from the container";
    print $c "HTTP/1.0 200 OK\r\nContent-Length: " . length($b) . "\r\nConnection: close\r\n\r\n$b";
    close $c;
}"#;

/// A container's own address, then `GET /` from the outside server with bash's
/// /dev/tcp (minbase has no curl or nc).
const PROBE: &str = "ip -4 -o addr show dev eth0 && exec 3<>/dev/tcp/192.0.2.2/80 && \
     printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3";

/// One network as podman is given it, with what the test needs to look at its state.
struct Network {
    plugins: Vec<(&'static str, PathBuf)>,
    conflist: Value,
    /// The leases the network's IPAM holds now.
    leases: Box<dyn Fn() -> Vec<String>>,
    /// Whether each container adds firewall rules of its own (the reference's ptp
    /// ipMasq chain and portmap's DNAT chain do; ve-nat adds elements only).
    rules_per_container: bool,
    _state: TempDir,
}

/// The README's podman conflist, verbatim but for the store, which goes to scratch.
fn ours() -> Network {
    let state = TempDir::new("podman-va");
    let store = state.path().join("store");
    let mut conflist = readme_podman_conflist();
    conflist["plugins"][0]["ipam"]["store"] = Value::from(store.display().to_string());
    let tools = tools_dir();
    let ve_alloc = tools.join("ve-alloc");
    Network {
        plugins: ["ve-alloc", "ve-link", "ve-nat", "nm-unmanage"]
            .into_iter()
            .map(|t| (t, tools.join(t)))
            .collect(),
        conflist,
        leases: Box::new(move || {
            let out = testbed::run_ok(
                std::process::Command::new(&ve_alloc)
                    .arg("--store")
                    .arg(&store)
                    .args(["list", "--json"]),
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        }),
        rules_per_container: false,
        _state: state,
    }
}

/// The control: ptp (ipMasq) with host-local, and portmap, in a scratch data dir.
fn reference() -> Network {
    let state = TempDir::new("podman-hl");
    let data = state.path().join("data");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "vetest",
        "plugins": [
            { "type": "ptp", "ipMasq": true,
              "ipam": { "type": "host-local", "dataDir": data,
                        "ranges": [[{ "subnet": "10.233.0.0/16" }]],
                        "routes": [{ "dst": "0.0.0.0/0" }] } },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    });
    Network {
        plugins: ["ptp", "host-local", "portmap"]
            .into_iter()
            .map(|t| (t, Path::new(REFERENCE).join(t)))
            .collect(),
        conflist,
        // host-local keeps a file per leased address, named by it.
        leases: Box::new(move || {
            fs::read_dir(data.join("vetest"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect()
        }),
        rules_per_container: true,
        _state: state,
    }
}

/// The JSON block after the README's "podman 4 with `network_backend`" line.
fn readme_podman_conflist() -> Value {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = fs::read_to_string(&readme).expect("README.md");
    let after = text
        .split_once("podman 4 with `network_backend = \"cni\"`")
        .expect("the README's podman conflist")
        .1;
    let block = after
        .split_once("```json\n")
        .and_then(|(_, b)| b.split_once("```"))
        .expect("a ```json block after the podman line")
        .0;
    serde_json::from_str(block).unwrap_or_else(|e| panic!("the README's podman conflist: {e}"))
}

/// The sandbox host's interface names.
fn links(host: &Netns) -> Vec<String> {
    host.ip_json(&["link"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// Every table of the host namespace as nft prints it (iptables-nft's too), and
/// iptables-legacy's, which nft does not see.
fn ruleset(pm: &Podman) -> String {
    let mut text = String::new();
    for (prog, args) in [
        ("nft", &["list", "ruleset"][..]),
        ("iptables-legacy-save", &[]),
    ] {
        if let Ok(o) = pm.in_mounts(prog).args(args).output() {
            text.push_str(&String::from_utf8_lossy(&o.stdout));
        }
    }
    text
}

/// How many rules the host namespace's nftables hold (iptables-nft's included).
fn rule_count(pm: &Podman) -> usize {
    let o = testbed::run_ok(pm.in_mounts("nft").args(["-j", "list", "ruleset"]));
    let v: Value = serde_json::from_slice(&o.stdout).expect("nft -j output");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o.get("rule").is_some())
        .count()
}

/// The address in `ip -4 -o addr show` output.
fn address_in(text: &str) -> String {
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address in {text:?}"))
        .to_string()
}

fn exercise(what: &str, net: Network) {
    let rootfs = support::boot::rootfs();
    let mut sandbox = Sandbox::new();
    let host = sandbox.netns("host");
    let out = sandbox.netns("out");
    testbed::uplink(&host, &out);
    // `"external": "auto"` picks the interface of the default route.
    host.ip(&["route", "add", "default", "via", OUTSIDE]);
    let _server = HttpServer::start(&out.path(), outside(80), |peer| peer.ip().to_string())
        .expect("the outside server");
    let plugins: Vec<(&str, &Path)> = net.plugins.iter().map(|(n, p)| (*n, p.as_path())).collect();
    // Declared after the sandbox: dropped (every process of it killed) first.
    let pm = Podman::start(&host, &rootfs, &plugins, &[("vetest", &net.conflist)])
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let podman = |args: &[&str]| pm.podman(args).unwrap_or_else(|e| panic!("{what}: {e}"));

    // Out through NAT: the server sees the uplink address, not the container's (the
    // outside namespace routes 10.233.0.0/16 back, so without NAT it would).
    let probe = pm
        .run(
            &["--rm", "--name", "probe", "--network", "vetest"],
            &["bash", "-c", PROBE],
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let probe_addr = address_in(&probe);
    assert!(probe_addr.starts_with("10.233."), "{what}: {probe}");
    let saw = probe
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim())
        .unwrap_or_else(|| panic!("{what}: no answer from outside: {probe}"));
    assert_eq!(
        saw,
        testbed::HOST_UPLINK,
        "{what}: the outside server saw {saw}"
    );
    // In through port mappings (podman's -p is the portMappings capability), two
    // containers: the second shows what one container adds to the firewall. web1 maps
    // two host ports to its port 80, one of them on the uplink address only.
    let web = |name: &str, maps: &[(&str, u16)]| {
        let mut options = vec!["-d", "--name", name, "--network", "vetest"];
        for (spec, _) in maps {
            options.extend(["-p", spec]);
        }
        let id = pm
            .run(&options, &["perl", "-e", SERVER])
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let id = id.trim().to_string();
        assert_eq!(id.len(), 64, "{what}: container ID {id:?}");
        let addr = podman(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.Networks.vetest.IPAddress}}",
            name,
        ]);
        for (spec, port) in maps {
            let at: SocketAddr = format!("{}:{port}", testbed::HOST_UPLINK).parse().unwrap();
            let body = http_get_within(&out.path(), at, Duration::from_secs(15))
                .unwrap_or_else(|e| panic!("{what}: -p {spec} from outside: {e}"));
            assert_eq!(body, "served from the container", "{what}: {name}");
        }
        (id, addr.trim().to_string())
    };
    let (id1, addr1) = web("web1", &[("8080:80", 8080), ("192.0.2.1:8082:80", 8082)]);
    let rules_one = rule_count(&pm);
    let (id2, addr2) = web("web2", &[("8081:80", 8081)]);
    let rules_two = rule_count(&pm);
    if net.rules_per_container {
        assert!(
            rules_two > rules_one,
            "{what}: {rules_one} -> {rules_two} rules"
        );
    } else {
        assert_eq!(
            rules_two, rules_one,
            "{what}: the second container added rules"
        );
    }

    // What running containers hold (so that "none left" below can fail): their host
    // links, their leases, the firewall's knowledge of their addresses.
    assert_eq!(links(&host).len(), 4, "{what}: {:?}", links(&host));
    assert_eq!((net.leases)().len(), 2, "{what}: {:?}", (net.leases)());
    let rules = ruleset(&pm);
    for addr in [&addr1, &addr2] {
        assert!(
            rules.contains(addr.as_str()),
            "{what}: nothing names {addr}:\n{rules}"
        );
    }

    podman(&["rm", "-f", "-t", "0", "web1", "web2"]);
    assert_eq!(
        podman(&["ps", "-a", "-q"]).trim(),
        "",
        "{what}: containers left"
    );
    assert_eq!(links(&host), ["lo", "up0"], "{what}: links left");
    assert_eq!((net.leases)(), Vec::<String>::new(), "{what}: leases left");
    let rules = ruleset(&pm);
    for gone in [&id1, &id2, &addr1, &addr2, &probe_addr] {
        assert!(
            !rules.contains(gone.as_str()),
            "{what}: {gone} still in the firewall:\n{rules}"
        );
    }
    let rules_after = rule_count(&pm);
    if net.rules_per_container {
        assert!(
            rules_after < rules_two,
            "{what}: {rules_two} -> {rules_after} rules"
        );
    } else {
        assert_eq!(
            rules_after, rules_one,
            "{what}: removing containers changed rules"
        );
    }
    // libcni's cache of results (in the sandbox's /var/lib) is empty again.
    let cache = testbed::run_ok(
        pm.in_mounts("sh")
            .args(["-c", "ls -A /var/lib/cni/results 2>/dev/null || true"]),
    );
    assert_eq!(
        String::from_utf8_lossy(&cache.stdout).trim(),
        "",
        "{what}: libcni cache"
    );
}

fn gate(test: &str) -> bool {
    let mut commands = Podman::COMMANDS.to_vec();
    commands.extend(["nft", "debootstrap"]);
    privileged(test, &commands)
}

#[test]
fn podman_runs_containers_on_our_plugins() {
    if !gate("podman_runs_containers_on_our_plugins") {
        return;
    }
    exercise("our plugins", ours());
}

#[test]
fn podman_runs_containers_on_the_reference_plugins() {
    if !gate("podman_runs_containers_on_the_reference_plugins") {
        return;
    }
    for p in ["ptp", "host-local", "portmap"] {
        assert!(
            Path::new(REFERENCE).join(p).is_file(),
            "{REFERENCE}/{p} is missing: apt-get install containernetworking-plugins"
        );
    }
    exercise("the reference plugins", reference());
}
