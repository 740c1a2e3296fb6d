//! Interrupted tasks leave nothing behind. SIGINT, SIGTERM, SIGHUP or a closed stdout
//! stop the task after removing what it registered here: every namespace under
//! /run/netns with a registered prefix (with every process inside it killed first,
//! since a process still in it, or a mount namespace it holds, keeps it alive), the
//! registered processes, the registered scratch directories and the registered (empty
//! by then) cgroups.
//!
//! The signal handler only writes the signal number to a pipe (async-signal-safe); a
//! thread of ours reads it and cleans up, whatever the main thread is blocked on, then
//! exits with 128 + the signal. Drop guards still do the normal cleanup when a task
//! ends; this is for when it does not get to.

use std::{
    fs,
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        Mutex, MutexGuard,
    },
    thread,
    time::Duration,
};

/// The exit code after a closed stdout: what a process killed by SIGPIPE reports.
pub const BROKEN_PIPE: i32 = 128 + libc::SIGPIPE;

#[derive(Default)]
struct Registered {
    prefixes: Vec<String>,
    dirs: Vec<PathBuf>,
    pids: Vec<i32>,
    cgroups: Vec<PathBuf>,
}

static REGISTERED: Mutex<Registered> = Mutex::new(Registered {
    prefixes: Vec::new(),
    dirs: Vec::new(),
    pids: Vec::new(),
    cgroups: Vec::new(),
});
static STOPPING: AtomicBool = AtomicBool::new(false);
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

fn registered() -> MutexGuard<'static, Registered> {
    REGISTERED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Namespaces named `PREFIX-...` are this run's.
pub fn namespaces(prefix: &str) {
    registered().prefixes.push(format!("{prefix}-"));
}

/// A scratch directory of this run, removed on interruption.
pub fn dir(path: &Path) {
    registered().dirs.push(path.to_path_buf());
}

/// A cgroup directory of this run, removed (rmdir, the last registered first) on
/// interruption once the processes killed have gone.
pub fn cgroup(path: &Path) {
    registered().cgroups.push(path.to_path_buf());
}

/// A process of this run (a daemon, a holder), killed on interruption.
pub fn pid(pid: u32) {
    if let Ok(p) = i32::try_from(pid) {
        registered().pids.push(p);
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe; the fd stays open for the process's life.
    unsafe {
        libc::write(
            SIGNAL_FD.load(Ordering::Relaxed),
            (&raw const byte).cast(),
            1,
        )
    };
}

/// Catch SIGINT, SIGTERM and SIGHUP: clean up and exit. Call once, first thing.
pub fn install() {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("xtask: warning: no signal pipe; an interrupted run may leave namespaces");
        return;
    }
    SIGNAL_FD.store(fds[1], Ordering::Relaxed);
    // Orphans of our children (an `ip -batch` whose xtask re-run was killed) become
    // ours, so the cleanup still finds them among our descendants.
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let reader = fds[0];
    thread::spawn(move || {
        let mut byte = 0u8;
        // SAFETY: a one-byte read into a local buffer.
        let n = unsafe { libc::read(reader, (&raw mut byte).cast(), 1) };
        if n == 1 {
            stop(128 + i32::from(byte));
        }
    });
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only calls write(2); SA_RESTART
        // so the main thread's blocking calls carry on until the cleanup exits.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Remove everything registered and exit with `code`. A second caller (the signal
/// thread while a closed stdout stops the main thread) waits for the first one's exit.
pub fn stop(code: i32) -> ! {
    if STOPPING.swap(true, Ordering::SeqCst) {
        loop {
            thread::sleep(Duration::from_secs(1));
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "xtask: interrupted; removing the sandbox"
    );
    let reg = registered();
    clean(&reg);
    std::process::exit(code)
}

/// Called before the task returns: while a stop is under way (the task's work failed
/// because the cleanup killed its processes), leave the exit to the cleanup.
pub fn wait_if_stopping() {
    if STOPPING.load(Ordering::SeqCst) {
        loop {
            thread::sleep(Duration::from_secs(1));
        }
    }
}

fn clean(reg: &Registered) {
    // Twice: what a process was starting or creating during the first pass goes in
    // the second.
    let mut killed = Vec::new();
    for pass in 0..2 {
        // Our descendants first (re-runs of xtask, `ip -batch` creating namespaces,
        // tools under test), so that nothing creates more while we delete. Only when
        // there is a sandbox to delete: `cargo xtask test` leaves its `cargo test` to
        // finish (and clean up after) itself.
        let mut victims = if reg.prefixes.is_empty() && reg.pids.is_empty() {
            Vec::new()
        } else {
            descendants()
        };
        victims.extend(&reg.pids);
        let names = ours(&reg.prefixes);
        victims.extend(inside(&names));
        for &p in &victims {
            // SAFETY: kill(2); a pid already gone yields ESRCH.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        killed.extend(victims);
        for path in ours(&reg.prefixes) {
            remove_netns(&path);
        }
        if pass == 0 {
            thread::sleep(Duration::from_millis(50));
        }
    }
    for d in &reg.dirs {
        let _ = fs::remove_dir_all(d);
    }
    // Exit only when what was killed is gone (a zombie has let go of everything).
    for _ in 0..200 {
        if killed.iter().all(|&p| !running(p)) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    // A cgroup goes only empty: our own threads that joined it (the bench's node
    // allocators) move up to its parent first; killed tasks may take a moment to leave.
    for d in reg.cgroups.iter().rev() {
        for _ in 0..100 {
            // Again each time: a thread still starting a process may have joined since.
            if let (Ok(tids), Some(parent)) = (fs::read_to_string(d.join("tasks")), d.parent()) {
                for tid in tids.lines() {
                    let _ = fs::write(parent.join("tasks"), tid);
                }
            }
            match fs::remove_dir(d) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    thread::sleep(Duration::from_millis(10));
                }
                _ => break,
            }
        }
    }
}

/// State and parent pid from /proc/PID/stat.
fn stat(pid: i32) -> Option<(char, i32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: skip past the last.
    let rest = &s[s.rfind(')')? + 2..];
    let mut w = rest.split(' ');
    let state = w.next()?.chars().next()?;
    let ppid = w.next()?.parse().ok()?;
    Some((state, ppid))
}

fn running(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

fn pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every process below this one.
fn descendants() -> Vec<i32> {
    let parents: Vec<(i32, i32)> = pids()
        .into_iter()
        .filter_map(|p| stat(p).map(|(_, ppid)| (p, ppid)))
        .collect();
    let mut found = vec![std::process::id() as i32];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|x| x.1 == parent).map(|x| x.0));
        i += 1;
    }
    found.remove(0);
    found
}

/// The entries of /run/netns named with one of `prefixes`.
fn ours(prefixes: &[String]) -> Vec<PathBuf> {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            prefixes.iter().any(|p| n.starts_with(p.as_str()))
        })
        .map(|e| e.path())
        .collect()
}

/// The processes whose network namespace is one of `names` (as `ip netns pids` finds
/// them: the same device and inode as the bind mount).
fn inside(names: &[PathBuf]) -> Vec<i32> {
    let ids: Vec<(u64, u64)> = names
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let me = std::process::id() as i32;
    pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|p| {
            fs::metadata(format!("/proc/{p}/ns/net"))
                .is_ok_and(|m| ids.contains(&(m.dev(), m.ino())))
        })
        .collect()
}

/// `ip netns del`: detach the bind mount, remove the file.
fn remove_netns(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let mut c = path.as_os_str().as_bytes().to_vec();
    c.push(0);
    // SAFETY: a NUL-terminated path; failure (not a mount point here) is fine.
    unsafe { libc::umount2(c.as_ptr().cast(), libc::MNT_DETACH) };
    let _ = fs::remove_file(path);
}
