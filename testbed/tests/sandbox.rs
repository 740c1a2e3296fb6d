//! The sandbox itself against the real kernel: namespaces go away on drop with what
//! runs inside, a thread that entered one sees that namespace's links only, and a
//! namespace that is not there is an error, not a silent run in the host's.

use std::{path::Path, process::Stdio, time::Duration};

use testbed::{enter_fd, in_netns, privileged, spawn_in, Sandbox};

/// The interface names in the calling thread's network namespace.
fn links() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The links a thread in the namespace at `ns` sees, through the kernel's own view of
/// the namespace (/proc/thread-self/net/dev, which follows the thread's namespace,
/// unlike /sys, which follows the mount).
fn links_in(ns: &Path) -> Vec<String> {
    in_netns(ns, || {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        let mut names: Vec<String> = text
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|n| n.trim().to_string())
            .collect();
        names.sort();
        names
    })
    .unwrap()
}

#[test]
fn a_thread_in_a_namespace_sees_its_links_and_the_process_stays_home() {
    if !privileged("testbed sandbox test", &["ip"]) {
        return;
    }
    let mut sb = Sandbox::new();
    let a = sb.netns("a");
    a.ip(&[
        "link", "add", "tb-0", "type", "veth", "peer", "name", "tb-1",
    ]);
    assert_eq!(links_in(&a.path()), ["lo", "tb-0", "tb-1"]);
    // Entered through an fd, as for a namespace that has lost its name.
    let fd = std::fs::File::open(a.path()).unwrap();
    let seen = std::thread::spawn(move || {
        enter_fd(&fd).unwrap();
        std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()
    })
    .join()
    .unwrap();
    assert!(seen.contains("tb-0:"), "{seen}");
    // The test's own threads never moved.
    assert!(!links().contains(&"tb-0".to_string()));
    let home = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    assert!(!home.contains("tb-0:"), "{home}");
}

#[test]
fn a_missing_namespace_is_an_error() {
    let missing = Path::new("/run/netns/testbed-no-such-namespace");
    let err = in_netns(missing, || ()).unwrap_err();
    assert!(
        err.to_string().contains("testbed-no-such-namespace"),
        "{err}"
    );
    let joined = spawn_in(missing, || ()).join();
    assert!(joined.is_err(), "spawn_in ran outside the namespace");
}

/// Wait until process `pid` runs in the network namespace mounted at `ns`.
fn wait_inside(pid: u32, ns: &Path) {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).ok();
    let its = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
    let t = std::time::Instant::now();
    while ino(ns).is_none() || ino(ns) != ino(&its) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{pid} never got into {ns:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn dropping_the_sandbox_deletes_its_namespaces_and_what_runs_in_them() {
    if !privileged("testbed sandbox test", &["ip", "sleep"]) {
        return;
    }
    let mut sb = Sandbox::new();
    let ns = sb.netns("gone");
    let path = ns.path();
    let mut child = ns
        .command("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(path.exists());
    // `ip netns exec` enters the namespace a moment after it starts: wait for that, or
    // the drop may find nothing to kill yet.
    wait_inside(child.id(), &path);
    drop(sb);
    assert!(!path.exists(), "{} is still there", path.display());
    // Killed, not left running in a namespace nobody can name.
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the process survived");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success());
}

#[test]
fn namespaces_a_killed_test_left_are_swept_and_live_ones_kept() {
    if !privileged("testbed sandbox test", &["ip"]) {
        return;
    }
    // A pid that has just exited stands for a test process killed mid-run.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("vt{dead}x0-stale");
    let live = format!("vt{}x4242-live", std::process::id());
    for n in [&stale, &live] {
        testbed::run_ok(std::process::Command::new("ip").args(["netns", "add", n]));
    }
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_inside(sleeper.id(), &Path::new("/run/netns").join(&stale));
    testbed::sweep_stale();
    let exists = |n: &str| Path::new("/run/netns").join(n).exists();
    let stale_left = exists(&stale);
    let live_left = exists(&live);
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &live])
        .status();
    assert!(!stale_left, "{stale} was not swept");
    assert!(live_left, "{live} belongs to a running test and was swept");
    // What ran inside was killed, not left running namespace-less.
    let t = std::time::Instant::now();
    while sleeper.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(5), "the sleeper survived");
        std::thread::sleep(Duration::from_millis(20));
    }
}
