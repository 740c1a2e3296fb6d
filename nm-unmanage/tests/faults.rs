//! nm-unmanage when the bus or NetworkManager misbehaves, and against hostile input:
//! a frozen NetworkManager, a socket that accepts and never answers, a NetworkManager
//! whose start never finishes, a bus that will not have us, unsafe drop-in directories
//! and patterns that would take every interface.

mod support;

use std::{
    fs,
    os::unix::{fs::PermissionsExt, net::UnixListener},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use support::{NmSandbox, Watcher, BIN};
use testbed::{privileged, TempDir};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run `cmd`, returning its output and how long it took.
fn timed(cmd: &mut Command) -> (Output, Duration) {
    let t = Instant::now();
    let out = cmd.output().unwrap();
    (out, t.elapsed())
}

/// A unix socket that accepts every connection and never sends a byte (the accepted
/// streams are kept open until the listener is dropped with the test).
struct SilentSocket {
    path: PathBuf,
    _held: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
}

impl SilentSocket {
    fn start(dir: &Path) -> SilentSocket {
        let path = dir.join("silent");
        let listener = UnixListener::bind(&path).unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                h.lock().unwrap().push(s);
            }
        });
        SilentSocket { path, _held: held }
    }

    fn address(&self) -> String {
        format!("unix:path={}", self.path.display())
    }
}

/// A scratch directory that only its owner may write (what the drop-in code demands).
fn scratch(tag: &str) -> TempDir {
    let d = TempDir::new(tag);
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn a_socket_that_never_answers_is_69_within_the_timeout_or_0_with_if_running() {
    let dir = scratch("nmu-silent");
    let silent = SilentSocket::start(dir.path());
    let (conf, rt) = (dir.path().join("conf.d"), dir.path().join("run"));
    fs::create_dir(&conf).unwrap();
    let dirs = |c: &mut Command| {
        c.arg("--conf-dir").arg(&conf).arg("--runtime-dir").arg(&rt);
    };
    for mode in [&[][..], &["--persist"], &["--runtime"], &["--watch"]] {
        for if_running in [false, true] {
            let mut cmd = Command::new(BIN);
            cmd.args(["--bus-address", &silent.address(), "--timeout", "0.5"])
                .args(mode);
            dirs(&mut cmd);
            if if_running {
                cmd.arg("--if-running");
            }
            let (out, took) = timed(&mut cmd);
            let want = if if_running { 0 } else { 69 };
            assert_eq!(
                out.status.code(),
                Some(want),
                "{mode:?} --if-running={if_running}: {}",
                stderr(&out)
            );
            assert!(took < Duration::from_secs(2), "{mode:?}: took {took:?}");
            assert!(
                stderr(&out).contains("no answer within 0.5 s"),
                "{}",
                stderr(&out)
            );
        }
    }
    // --runtime --if-running wrote nothing; a watcher never got as far as its drop-in.
    assert!(!rt.join(nm_unmanage::WATCH_DROP_IN).exists());
}

#[test]
fn a_frozen_network_manager_is_69_within_the_timeout_and_a_watcher_still_stops_at_once() {
    let Some(sb) = NmSandbox::start("frozen") else {
        return;
    };
    let (conf, rt) = (sb.conf_dir(), sb.runtime_dir());
    let frozen = sb.freeze_nm();
    for mode in [&[][..], &["--persist"], &["--runtime"]] {
        for if_running in [false, true] {
            let mut cmd = sb.tool();
            cmd.args(["--timeout", "1"])
                .args(mode)
                .arg("--conf-dir")
                .arg(&conf)
                .arg("--runtime-dir")
                .arg(&rt);
            if if_running {
                cmd.arg("--if-running");
            }
            let (out, took) = timed(&mut cmd);
            let want = if if_running { 0 } else { 69 };
            assert_eq!(
                out.status.code(),
                Some(want),
                "{mode:?} --if-running={if_running}: {}",
                stderr(&out)
            );
            assert!(
                took < Duration::from_millis(2500),
                "{mode:?}: took {took:?}"
            );
            assert!(
                stderr(&out).contains("no answer in time"),
                "{}",
                stderr(&out)
            );
        }
    }

    // A watcher whose Reload never returns: SIGTERM ends it within a second, and its
    // drop-in goes with it.
    let w = Watcher::start(&sb, &["--timeout", "30"]);
    assert!(
        w.logged("wrote", Duration::from_secs(5)),
        "the watcher wrote no drop-in"
    );
    let file = rt.join(nm_unmanage::WATCH_DROP_IN);
    assert!(file.exists());
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let status = w.stop();
    let took = t.elapsed();
    // The watcher itself stops within ~0.3 s (its last reload's bound); the slack is for
    // a loaded 2-core CI machine running other tests at once.
    assert!(took < Duration::from_millis(1500), "SIGTERM took {took:?}");
    assert!(status.success(), "watcher exit on SIGTERM: {status}");
    assert!(!file.exists(), "the drop-in outlived the watcher");

    // SIGINT too, this time while it waits for GetDevices (Reload timed out first).
    let mut w = Watcher::start(&sb, &["--timeout", "0.3"]);
    assert!(
        w.logged("asking again", Duration::from_secs(5)),
        "the watcher never retried"
    );
    assert!(w.running());
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(w.pid() as i32, libc::SIGINT) };
    let t = Instant::now();
    while w.running() {
        assert!(t.elapsed() < Duration::from_millis(1500), "SIGINT ignored");
        thread::sleep(Duration::from_millis(5));
    }
    drop(frozen);
}

#[test]
fn a_watcher_gives_up_on_a_network_manager_that_never_finishes_starting() {
    if !privileged("never_starts", &["ip", "dbus-daemon"]) {
        return;
    }
    let sb = NmSandbox::bus_only();
    // --timeout 0.5: it gives up after 6 x 0.5 s.
    let mut w = Watcher::start(&sb, &["--timeout", "0.5"]);
    assert!(w.logged("waiting for it", Duration::from_secs(5)));
    // Someone takes NetworkManager's name and never answers: its connection is never
    // driven after the name is taken (a runtime nobody polls).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _impostor = rt
        .block_on(async {
            zbus::connection::Builder::address(sb.bus_address().as_str())
                .name(nm_unmanage::NM_NAME)
                .build()
                .await
        })
        .expect("taking NetworkManager's name");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = w.try_status() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the watcher still idles after {:?}",
            t.elapsed()
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(69), "{status}");
    assert!(t.elapsed() >= Duration::from_secs(2), "gave up too early");
    assert!(w.logged("without answering", Duration::from_secs(1)));
    assert!(!sb.runtime_dir().join(nm_unmanage::WATCH_DROP_IN).exists());
}

/// `nobody` running the tool (a one-shot: it writes nothing).
fn as_nobody(address: &str) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(["--bus-address", address, "--timeout", "2"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn a_bus_that_will_not_have_us_is_permission_denied_77() {
    if !privileged("bus_refuses", &["ip", "dbus-daemon", "setpriv"]) {
        return;
    }
    // A policy that lets only root connect: dbus-daemon hangs up after the handshake.
    let sb = NmSandbox::bus_for_root_only();
    for if_running in [false, true] {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(["--bus-address", &sb.bus_address()]);
        if if_running {
            cmd.arg("--if-running");
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("permission denied"), "{err}");
        assert!(!err.contains("failed to read from socket"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A socket it may not open (its directory is root's, mode 0700).
    let dir = TempDir::new("nmu-private");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let silent = SilentSocket::start(dir.path());
    let out = as_nobody(&silent.address());
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unsafe_drop_in_directories_are_refused_with_nothing_written() {
    for kind in ["--persist", "--runtime"] {
        let dir = TempDir::new("nmu-ww");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let out = Command::new(BIN)
            .args(["--bus-address", "unix:path=/nonexistent/bus", kind])
            .arg("--conf-dir")
            .arg(dir.path())
            .arg("--runtime-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{kind}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("group- or world-writable"),
            "{}",
            stderr(&out)
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "{kind}");
    }
}

#[test]
fn a_pattern_that_takes_every_interface_is_65_before_any_bus_access() {
    let dir = scratch("nmu-star");
    // A socket that never answers: touching the bus would show as a 0.5 s wait and 69.
    let silent = SilentSocket::start(dir.path());
    for bad in ["*", "interface-name:*", "?*", "**"] {
        for mode in [&[][..], &["--watch"], &["--persist"], &["--runtime"]] {
            let (out, took) = timed(
                Command::new(BIN)
                    .args(["--bus-address", &silent.address(), "--timeout", "5"])
                    .arg("--conf-dir")
                    .arg(dir.path())
                    .arg("--runtime-dir")
                    .arg(dir.path())
                    .args(mode)
                    .arg(bad),
            );
            assert_eq!(
                out.status.code(),
                Some(65),
                "{bad} {mode:?}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains("matches every interface"),
                "{}",
                stderr(&out)
            );
            assert!(took < Duration::from_secs(3), "{bad}: {took:?}");
        }
    }
    // Only the socket itself in the directory.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn the_runtime_directory_can_come_from_the_environment() {
    let dir = scratch("nmu-env");
    let rt = dir.path().join("run/conf.d");
    let out = Command::new(BIN)
        .args(["--bus-address", "unix:path=/nonexistent/bus", "--runtime"])
        .env(nm_unmanage::RUNTIME_DIR_ENV, &rt)
        .output()
        .unwrap();
    // No bus: written all the same (read when NetworkManager starts), and 69.
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(rt.join(nm_unmanage::RUNTIME_DROP_IN).exists());
}
