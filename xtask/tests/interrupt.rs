//! The built xtask binary, interrupted: the demo and the benches stopped by a signal or a
//! closed stdout leave no namespace under /run/netns, no process and no scratch
//! directory behind. And `--help` on every task runs nothing.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use testbed::privileged;

fn xtask() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("{path}:/usr/sbin:/sbin"))
        .stdin(Stdio::null());
    c
}

/// The workspace's debug binaries, next to the xtask binary.
fn tools_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_xtask"))
        .parent()
        .expect("target/debug")
        .to_path_buf();
    for tool in ["ve-alloc", "ve-link", "ve-nat", "nm-unmanage"] {
        assert!(
            dir.join(tool).is_file(),
            "{} is missing: run `cargo build --workspace --bins` first (cargo xtask test does)",
            dir.join(tool).display()
        );
    }
    dir
}

/// Names under /run/netns that start with `prefix`.
fn netns_with(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The processes inside the namespaces `names`.
fn pids_in(names: &[String]) -> Vec<String> {
    let mut pids = Vec::new();
    for n in names {
        if let Ok(o) = Command::new("ip").args(["netns", "pids", n]).output() {
            pids.extend(
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string),
            );
        }
    }
    pids
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out after {timeout:?}: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A running xtask, killed, with whatever it left deleted, if the test fails.
struct Run {
    child: Child,
    prefix: String,
}

impl Run {
    fn start(mut cmd: Command, prefix: impl FnOnce(u32) -> String) -> Run {
        let child = cmd.spawn().expect("starting xtask");
        let prefix = prefix(child.id());
        Run { child, prefix }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("waiting for xtask") {
                return st;
            }
            assert!(
                t.elapsed() < timeout,
                "xtask still running after {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Nothing of it left: no namespace with its prefix, none of `pids`, no `dirs`.
    fn assert_clean(&self, pids: &[String], dirs: &[PathBuf]) {
        assert_eq!(
            netns_with(&self.prefix),
            Vec::<String>::new(),
            "namespaces left"
        );
        let alive = || -> Vec<&String> { pids.iter().filter(|p| running(p)).collect() };
        // A killed process may take a moment to go (reparented to init, reaped).
        let _ = (0..100).find(|_| {
            thread::sleep(Duration::from_millis(20));
            alive().is_empty()
        });
        assert!(alive().is_empty(), "processes left: {:?}", alive());
        for d in dirs {
            assert!(!d.exists(), "{} left", d.display());
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Twice: an orphaned `ip -batch` may still be adding namespaces.
        for _ in 0..2 {
            let names = netns_with(&self.prefix);
            for p in pids_in(&names) {
                let _ = Command::new("kill").args(["-9", &p]).status();
            }
            for n in names {
                let _ = Command::new("ip").args(["netns", "del", &n]).status();
            }
            thread::sleep(Duration::from_millis(300));
        }
    }
}

fn demo(out: Stdio) -> Run {
    let mut c = xtask();
    c.arg("demo")
        .arg("--tools")
        .arg(tools_dir())
        .stdout(out)
        .stderr(Stdio::null());
    Run::start(c, |pid| format!("vt{pid}x"))
}

fn demo_dirs(pid: u32) -> Vec<PathBuf> {
    let tmp = std::env::temp_dir();
    vec![
        tmp.join(format!("ve-demo-{pid}")),
        tmp.join(format!("ve-nm-vt{pid}x0")),
    ]
}

#[test]
fn demo_stopped_by_sigint_removes_its_sandbox() {
    if !privileged("demo_stopped_by_sigint_removes_its_sandbox", &["ip"]) {
        return;
    }
    let mut run = demo(Stdio::null());
    let host = format!("/run/netns/{}0-host", run.prefix);
    wait_until("the demo's sandbox host", Duration::from_secs(20), || {
        Path::new(&host).exists()
    });
    // NetworkManager and its bus, when installed, are the processes to outlive it.
    let _ = (0..100).find(|_| {
        thread::sleep(Duration::from_millis(20));
        pids_in(&netns_with(&run.prefix)).len() >= 2
    });
    let pids = pids_in(&netns_with(&run.prefix));
    run.signal(libc::SIGINT);
    let st = run.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(130), "{st}");
    run.assert_clean(&pids, &demo_dirs(run.child.id()));
}

#[test]
fn demo_with_stdout_closed_early_removes_its_sandbox() {
    if !privileged("demo_with_stdout_closed_early_removes_its_sandbox", &["ip"]) {
        return;
    }
    let mut run = demo(Stdio::piped());
    let mut out = BufReader::new(run.child.stdout.take().expect("piped"));
    // `| head -1`: one line, then the reader is gone.
    let mut line = String::new();
    out.read_line(&mut line)
        .expect("reading the demo's first line");
    let names = netns_with(&run.prefix);
    assert!(
        !names.is_empty(),
        "the demo printed before making its sandbox"
    );
    let pids = pids_in(&names);
    drop(out);
    let st = run.wait(Duration::from_secs(20));
    assert_eq!(st.code(), Some(141), "{st}");
    run.assert_clean(&pids, &demo_dirs(run.child.id()));
}

#[test]
fn bench_link_stopped_by_sigterm_removes_its_namespaces() {
    if !privileged(
        "bench_link_stopped_by_sigterm_removes_its_namespaces",
        &["ip"],
    ) {
        return;
    }
    let mut c = xtask();
    c.args(["bench", "link", "--containers", "300"])
        .arg("--tools")
        .arg(tools_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // The pipeline bench's sandbox: a host namespace vbn<pid>-<system>-host per system,
    // container namespaces vbn<pid>-<system>-c<i>.
    let mut run = Run::start(c, |pid| format!("vbn{pid}-"));
    wait_until(
        "50 of the bench's namespaces",
        Duration::from_secs(20),
        || netns_with(&run.prefix).len() >= 50,
    );
    // The bench re-runs itself inside each host namespace: those processes must go too.
    let hosts: Vec<String> = netns_with(&run.prefix)
        .into_iter()
        .filter(|n| n.ends_with("-host"))
        .collect();
    assert_eq!(hosts.len(), 5, "{hosts:?}");
    let pids = pids_in(&hosts);
    assert!(pids.len() >= 5, "no inner runs in the host namespaces");
    run.signal(libc::SIGTERM);
    let st = run.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(143), "{st}");
    run.assert_clean(&pids, &[]);
}

#[test]
fn bench_cni_stopped_by_sigterm_removes_its_namespaces_bus_and_scratch() {
    if !privileged(
        "bench_cni_stopped_by_sigterm_removes_its_namespaces_bus_and_scratch",
        &["ip", "nft", "dbus-daemon"],
    ) {
        return;
    }
    let mut c = xtask();
    c.args(["bench", "cni", "--containers", "300"])
        .arg("--tools")
        .arg(tools_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // testbed's sandbox: host namespaces vt<pid>x0-ours and -ref, container namespaces
    // vt<pid>x0-o<i> and -r<i>; the scratch directory ve-test-bench-cni-<pid>-<n>.
    let mut run = Run::start(c, |pid| format!("vt{pid}x"));
    wait_until("10 containers per chain", Duration::from_secs(60), || {
        netns_with(&run.prefix).len() >= 22
    });
    let hosts: Vec<String> = netns_with(&run.prefix)
        .into_iter()
        .filter(|n| n.ends_with("-ours") || n.ends_with("-ref"))
        .collect();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    // The private bus nm-unmanage talks to runs in ours.
    let pids = pids_in(&hosts);
    assert!(!pids.is_empty(), "no dbus-daemon in {hosts:?}");
    let scratch = format!("ve-test-bench-cni-{}-", run.child.id());
    let scratch_dirs = || -> Vec<PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .expect("temp dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&scratch))
            .map(|e| e.path())
            .collect()
    };
    assert_eq!(scratch_dirs().len(), 1, "the bench's scratch directory");
    run.signal(libc::SIGTERM);
    let st = run.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(143), "{st}");
    assert_eq!(
        scratch_dirs(),
        Vec::<PathBuf>::new(),
        "scratch directories left"
    );
    run.assert_clean(&pids, &[]);
}

/// `bench nm` runs nm-unmanage --watch and --persist against a sandboxed
/// NetworkManager; it fails itself when the machine's NetworkManager or networkd
/// directories changed, and leaves nothing behind.
#[test]
fn bench_nm_writes_nothing_of_the_machines() {
    if !privileged(
        "bench_nm_writes_nothing_of_the_machines",
        &[
            "ip",
            "nsenter",
            "NetworkManager",
            "dbus-daemon",
            "nm-online",
            "nmcli",
        ],
    ) {
        return;
    }
    let mut c = xtask();
    c.args(["bench", "nm", "--cycles", "1"])
        .arg("--tools")
        .arg(tools_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // testbed's sandbox: namespaces vt<pid>x0-host and -ctr, NetworkManager's
    // scratch directory ve-nm-vt<pid>x0.
    let mut run = Run::start(c, |pid| format!("vt{pid}x"));
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(run.child.stderr.as_mut().expect("piped"), &mut err);
    let st = run.wait(Duration::from_secs(30));
    assert!(st.success(), "{st}: {err}");
    let pid = run.child.id();
    run.assert_clean(
        &[],
        &[std::env::temp_dir().join(format!("ve-nm-vt{pid}x0"))],
    );
}

/// Every task and subcommand prints its usage on -h and --help, exits 0 at once and
/// creates nothing; an unknown option is refused the same way.
#[test]
fn help_prints_usage_and_runs_nothing() {
    let commands: &[&[&str]] = &[
        &[],
        &["test"],
        &["demo"],
        &["dist"],
        &["bench"],
        &["bench", "all"],
        &["bench", "pipeline"],
        &["bench", "alloc"],
        &["bench", "cni"],
        &["bench", "link"],
        &["bench", "nat"],
        &["bench", "nm"],
    ];
    for cmd in commands {
        for flag in ["-h", "--help", "--no-such-option"] {
            let t = Instant::now();
            let mut c = xtask();
            c.args(*cmd).arg(flag);
            let child = c
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting xtask");
            let pid = child.id();
            let o = child.wait_with_output().expect("xtask output");
            let took = t.elapsed();
            let (stdout, stderr) = (
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
            );
            let what = format!("xtask {} {flag}", cmd.join(" "));
            assert!(took < Duration::from_secs(5), "{what} took {took:?}");
            if flag == "--no-such-option" {
                assert!(!o.status.success(), "{what}: {stdout}");
                assert!(stderr.contains("--no-such-option"), "{what}: {stderr}");
                assert!(
                    !stderr.contains("xtask: $"),
                    "{what} ran something: {stderr}"
                );
            } else {
                assert!(o.status.success(), "{what}: {stderr}");
                assert!(stdout.starts_with("usage: cargo xtask"), "{what}: {stdout}");
                // Nothing was run: no command echoed, nothing built, no sandbox made.
                assert!(stderr.is_empty(), "{what} wrote to stderr: {stderr}");
            }
            for p in [
                format!("vt{pid}x"),
                format!("vbl{pid}-"),
                format!("vbn{pid}-"),
                format!("nmbench{pid}-"),
            ] {
                assert!(netns_with(&p).is_empty(), "{what} made namespaces {p}*");
            }
            assert!(!std::env::temp_dir().join(format!("ve-demo-{pid}")).exists());
        }
    }
}
