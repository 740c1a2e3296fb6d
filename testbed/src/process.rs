//! Child processes and polling.

use std::{
    io::Write,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Run `cmd` with `input` on its stdin (then closed), its stdout and stderr captured.
/// Panics when it cannot be started: for tests.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    // A child that exits without reading closes the pipe: its output still tells.
    let _ = child.stdin.take().map(|mut i| i.write_all(input));
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"))
}

/// Stop a child: SIGTERM, then SIGKILL after 5 s.
pub fn stop(mut child: Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    stop_now(&mut child);
}

pub(crate) fn stop_now(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Poll `f` every 5 ms until it is true, or fail after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
