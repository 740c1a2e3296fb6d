//! The one error type of every tool: a one-line message and the exit code it maps to.

use std::{fmt, io};

use crate::Exit;

/// Shorthand used throughout the tools.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error a user sees: `tool: error: <message>` on stderr, then exit with `exit`.
#[derive(Debug)]
pub struct Error {
    exit: Exit,
    message: String,
    broken_pipe: bool,
}

impl Error {
    pub fn new(exit: Exit, message: impl fmt::Display) -> Self {
        Error {
            exit,
            message: message.to_string(),
            broken_pipe: false,
        }
    }

    pub fn usage(message: impl fmt::Display) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub fn data(message: impl fmt::Display) -> Self {
        Self::new(Exit::DataErr, message)
    }

    pub fn no_input(message: impl fmt::Display) -> Self {
        Self::new(Exit::NoInput, message)
    }

    pub fn unavailable(message: impl fmt::Display) -> Self {
        Self::new(Exit::Unavailable, message)
    }

    pub fn internal(message: impl fmt::Display) -> Self {
        Self::new(Exit::Software, message)
    }

    pub fn config(message: impl fmt::Display) -> Self {
        Self::new(Exit::Config, message)
    }

    /// An I/O error with what was being done, e.g. `reading /etc/foo: permission denied`.
    /// The exit code follows the error kind (permission denied is 77, not found 66, ...).
    pub fn io(doing: impl fmt::Display, err: io::Error) -> Self {
        let mut e = Self::from(err);
        e.message = format!("{doing}: {}", e.message);
        e
    }

    /// The process exit code.
    pub fn code(&self) -> i32 {
        self.exit.code()
    }

    pub fn exit(&self) -> Exit {
        self.exit
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// A write to stdout failed because the reader went away (`tool list | head -1`):
    /// not an error for a Unix filter.
    pub fn is_broken_pipe(&self) -> bool {
        self.broken_pipe
    }

    /// Prefix the message with what was being done.
    pub fn context(mut self, doing: impl fmt::Display) -> Self {
        self.message = format!("{doing}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Lower-case the first letter of an OS error text and drop its `(os error N)` tail,
/// so messages read as one sentence.
fn io_text(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        let exit = match err.kind() {
            io::ErrorKind::PermissionDenied => Exit::NoPerm,
            io::ErrorKind::NotFound => Exit::NoInput,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
                Exit::TempFail
            }
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => Exit::DataErr,
            _ if err.raw_os_error() == Some(libc::EPERM) => Exit::NoPerm,
            _ if err.raw_os_error().is_some() => Exit::OsErr,
            _ => Exit::IoErr,
        };
        Error {
            exit,
            message: io_text(&err),
            broken_pipe: err.kind() == io::ErrorKind::BrokenPipe,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        if err.io_error_kind() == Some(io::ErrorKind::BrokenPipe) {
            return io::Error::from(io::ErrorKind::BrokenPipe).into();
        }
        Error::data(format!("JSON: {err}"))
    }
}

/// Attach context to any fallible result, in the style of `anyhow::Context`.
pub trait Context<T> {
    fn context(self, doing: impl fmt::Display) -> Result<T>;
    fn with_context<D: fmt::Display>(self, doing: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, doing: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(doing))
    }

    fn with_context<D: fmt::Display>(self, doing: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(doing()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_exit_codes_and_read_as_one_sentence() {
        let e = Error::io("reading /x", io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.exit(), Exit::NoPerm);
        assert_eq!(e.to_string(), "reading /x: permission denied");
        let e: Error = io::Error::from_raw_os_error(libc::ENOENT).into();
        assert_eq!(e.exit(), Exit::NoInput);
        let e: Error = io::Error::from_raw_os_error(libc::EPIPE).into();
        assert!(e.is_broken_pipe());
        let e: Error = io::Error::from_raw_os_error(libc::EPERM).into();
        assert_eq!(e.exit(), Exit::NoPerm);
    }

    #[test]
    fn context_prefixes() {
        let r: Result<()> = Err(Error::data("bad")).context("parsing x");
        assert_eq!(r.unwrap_err().to_string(), "parsing x: bad");
    }
}
