//! Everything xtask prints on stdout. `println!` panics when stdout is gone (Rust
//! ignores SIGPIPE, so a closed pipe is an EPIPE error), which would skip the cleanup;
//! here a failed write stops the task through [`guard::stop`] instead, sandbox removed.

use std::io::Write;

use crate::guard;

/// Write `text` to stdout and flush; on failure, clean up and exit
/// ([`guard::BROKEN_PIPE`] for a closed pipe).
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        drop(out);
        guard::stop(if e.kind() == std::io::ErrorKind::BrokenPipe {
            guard::BROKEN_PIPE
        } else {
            74
        });
    }
}

/// `print!` through [`print`].
macro_rules! say {
    ($($t:tt)*) => {
        $crate::out::print(&format!($($t)*))
    };
}

/// `println!` through [`print`].
macro_rules! sayln {
    () => {
        $crate::out::print("\n")
    };
    ($($t:tt)*) => {{
        let mut line = format!($($t)*);
        line.push('\n');
        $crate::out::print(&line)
    }};
}
