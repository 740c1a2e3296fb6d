//! Child processes and polling.

use std::{
    process::Child,
    thread,
    time::{Duration, Instant},
};

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
