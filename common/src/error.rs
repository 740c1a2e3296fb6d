//! The one error type of every tool: a kind callers match on, the exit code that kind
//! maps to, and a one-line message with context.

use std::{fmt, io};

use crate::Exit;

/// Shorthand used throughout the tools.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, for code to match on: control flow never looks at message text.
/// The exit code follows from the kind alone ([`Kind::exit`]); several kinds share one
/// code where a caller needs to tell them apart (a race is retried, a held lock is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `--help` or `--version`: clap printed it. Exit 0, no error line.
    Help,
    /// A command line without its subcommand: clap printed the help. Exit 64, no error
    /// line.
    UsageHelp,
    /// A write to stdout found its reader gone (`tool list | head -1`): not an error for
    /// a Unix filter. Exit 0, no error line.
    BrokenPipe,
    /// Checked and found different (`check`, like `diff`).
    Differs,
    /// A bad command line.
    Usage,
    /// Bad input data: a malformed name, address, pool or file.
    Data,
    /// A required input does not exist: a lease, a network namespace, an interface, a file.
    NotFound,
    /// A service the tool talks to is not there (NetworkManager, iptables).
    Unavailable,
    /// A service is there but did not answer within the time allowed.
    NoAnswer,
    /// A bug in the tool.
    Internal,
    /// An operating system call failed.
    Os,
    /// Cannot create what was asked for (an exhausted pool, no free temporary name).
    CantCreate,
    /// Something that is not ours is in the way of what we would create.
    Exists,
    /// Reading or writing a file or store failed, or the store is corrupt.
    Io,
    /// A temporary failure: try again.
    TempFail,
    /// A lock (or a store) stayed held by another process for the time allowed.
    Busy,
    /// Another run changed the same object between our look and our change.
    Raced,
    /// Not enough privilege.
    Permission,
    /// A configuration error: a bad config file, an unknown store version, an unsafe
    /// directory.
    Config,
}

impl Kind {
    /// Every kind (for tests and documentation).
    pub const ALL: [Kind; 19] = [
        Kind::Help,
        Kind::UsageHelp,
        Kind::BrokenPipe,
        Kind::Differs,
        Kind::Usage,
        Kind::Data,
        Kind::NotFound,
        Kind::Unavailable,
        Kind::NoAnswer,
        Kind::Internal,
        Kind::Os,
        Kind::CantCreate,
        Kind::Exists,
        Kind::Io,
        Kind::TempFail,
        Kind::Busy,
        Kind::Raced,
        Kind::Permission,
        Kind::Config,
    ];

    /// The exit code of an error of this kind: the one mapping, used by `cli::main`.
    pub const fn exit(self) -> Exit {
        match self {
            Kind::Help | Kind::BrokenPipe => Exit::Ok,
            Kind::Differs => Exit::Differs,
            Kind::Usage | Kind::UsageHelp => Exit::Usage,
            Kind::Data => Exit::DataErr,
            Kind::NotFound => Exit::NoInput,
            Kind::Unavailable | Kind::NoAnswer => Exit::Unavailable,
            Kind::Internal => Exit::Software,
            Kind::Os => Exit::OsErr,
            Kind::CantCreate | Kind::Exists => Exit::CantCreate,
            Kind::Io => Exit::IoErr,
            Kind::TempFail | Kind::Busy | Kind::Raced => Exit::TempFail,
            Kind::Permission => Exit::NoPerm,
            Kind::Config => Exit::Config,
        }
    }

    /// Whether `cli::main` prints no error line: what there was to say is on the
    /// terminal already, or nobody is reading.
    pub const fn is_silent(self) -> bool {
        matches!(self, Kind::Help | Kind::UsageHelp | Kind::BrokenPipe)
    }
}

/// The general kind of each exit code, so `Error::new(Exit::OsErr, ...)` still reads.
/// `Exit::Ok` is [`Kind::Help`]: an "error" that only stops the tool after it showed
/// something.
impl From<Exit> for Kind {
    fn from(exit: Exit) -> Kind {
        match exit {
            Exit::Ok => Kind::Help,
            Exit::Differs => Kind::Differs,
            Exit::Usage => Kind::Usage,
            Exit::DataErr => Kind::Data,
            Exit::NoInput => Kind::NotFound,
            Exit::Unavailable => Kind::Unavailable,
            Exit::Software => Kind::Internal,
            Exit::OsErr => Kind::Os,
            Exit::CantCreate => Kind::CantCreate,
            Exit::IoErr => Kind::Io,
            Exit::TempFail => Kind::TempFail,
            Exit::NoPerm => Kind::Permission,
            Exit::Config => Kind::Config,
        }
    }
}

/// An error a user sees: `tool: error: <message>` on stderr, then the exit code of its
/// kind.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
}

impl Error {
    /// An error of `kind` (or of the general kind of an [`Exit`]).
    pub fn new(kind: impl Into<Kind>, message: impl fmt::Display) -> Self {
        Error {
            kind: kind.into(),
            message: message.to_string(),
        }
    }

    pub fn usage(message: impl fmt::Display) -> Self {
        Self::new(Kind::Usage, message)
    }

    pub fn data(message: impl fmt::Display) -> Self {
        Self::new(Kind::Data, message)
    }

    pub fn no_input(message: impl fmt::Display) -> Self {
        Self::new(Kind::NotFound, message)
    }

    pub fn unavailable(message: impl fmt::Display) -> Self {
        Self::new(Kind::Unavailable, message)
    }

    pub fn internal(message: impl fmt::Display) -> Self {
        Self::new(Kind::Internal, message)
    }

    pub fn config(message: impl fmt::Display) -> Self {
        Self::new(Kind::Config, message)
    }

    /// An I/O error with what was being done, e.g. `reading /etc/foo: permission denied`.
    /// The kind follows the I/O error's (permission denied is 77, not found 66, ...).
    pub fn io(doing: impl fmt::Display, err: io::Error) -> Self {
        Self::from(err).context(doing)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The same error as another kind (the message stays).
    pub fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    /// The process exit code.
    pub fn code(&self) -> i32 {
        self.kind.exit().code()
    }

    pub fn exit(&self) -> Exit {
        self.kind.exit()
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// A write to stdout failed because the reader went away (see [`Kind::BrokenPipe`]).
    pub fn is_broken_pipe(&self) -> bool {
        self.kind == Kind::BrokenPipe
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

/// The kind of an I/O error. A broken pipe here is an OS error like any other (a child
/// that died before reading its stdin): only [`crate::output`] knows that a write went
/// to stdout, and only there is it [`Kind::BrokenPipe`].
fn io_kind(err: &io::Error) -> Kind {
    match err.kind() {
        io::ErrorKind::PermissionDenied => Kind::Permission,
        io::ErrorKind::NotFound => Kind::NotFound,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
            Kind::TempFail
        }
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => Kind::Data,
        _ if err.raw_os_error() == Some(libc::EPERM) => Kind::Permission,
        _ if err.raw_os_error().is_some() => Kind::Os,
        _ => Kind::Io,
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::new(io_kind(&err), io_text(&err))
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        match err.io_error_kind() {
            Some(kind) => io::Error::from(kind).into(),
            None => Error::data(format!("JSON: {err}")),
        }
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
    fn io_errors_map_to_kinds_and_read_as_one_sentence() {
        let e = Error::io("reading /x", io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!((e.kind(), e.exit()), (Kind::Permission, Exit::NoPerm));
        assert_eq!(e.to_string(), "reading /x: permission denied");
        let e: Error = io::Error::from_raw_os_error(libc::ENOENT).into();
        assert_eq!((e.kind(), e.exit()), (Kind::NotFound, Exit::NoInput));
        let e: Error = io::Error::from_raw_os_error(libc::EPERM).into();
        assert_eq!(e.kind(), Kind::Permission);
        let e: Error = io::Error::from_raw_os_error(libc::EEXIST).into();
        assert_eq!((e.kind(), e.code()), (Kind::Os, 71));
        let e: Error = io::Error::from(io::ErrorKind::UnexpectedEof).into();
        assert_eq!(e.kind(), Kind::Io);
    }

    /// A broken pipe to a child (iptables-restore that died early) is an OS error, not
    /// the silent success of a vanished stdout reader.
    #[test]
    fn a_broken_pipe_is_only_silent_when_output_says_so() {
        let e: Error = io::Error::from_raw_os_error(libc::EPIPE).into();
        assert_eq!((e.kind(), e.code()), (Kind::Os, 71));
        assert!(!e.is_broken_pipe() && !e.kind().is_silent());
        let e = Error::new(Kind::BrokenPipe, "stdout");
        assert!(e.is_broken_pipe() && e.kind().is_silent());
        assert_eq!(e.code(), 0);
    }

    /// The mapping, spelled out once more: a change to it is a change to every tool's
    /// documented exit codes.
    #[test]
    fn every_kind_has_its_exit_code() {
        use Kind::*;
        let want = [
            (Help, 0),
            (UsageHelp, 64),
            (BrokenPipe, 0),
            (Differs, 1),
            (Usage, 64),
            (Data, 65),
            (NotFound, 66),
            (Unavailable, 69),
            (NoAnswer, 69),
            (Internal, 70),
            (Os, 71),
            (CantCreate, 73),
            (Exists, 73),
            (Io, 74),
            (TempFail, 75),
            (Busy, 75),
            (Raced, 75),
            (Permission, 77),
            (Config, 78),
        ];
        assert_eq!(want.map(|(k, _)| k), Kind::ALL);
        for (k, code) in want {
            assert_eq!(k.exit().code(), code, "{k:?}");
            assert_eq!(Error::new(k, "x").code(), code, "{k:?}");
        }
        let silent: Vec<Kind> = Kind::ALL.into_iter().filter(|k| k.is_silent()).collect();
        assert_eq!(silent, [Help, UsageHelp, BrokenPipe]);
    }

    /// Every exit code has a kind, and the general kind of a code maps back to it.
    #[test]
    fn exit_codes_round_trip_through_their_general_kind() {
        for exit in Exit::ALL {
            assert_eq!(Kind::from(exit).exit(), exit, "{exit:?}");
            assert!(Kind::ALL.iter().any(|k| k.exit() == exit), "{exit:?}");
        }
    }

    #[test]
    fn context_prefixes_and_keeps_the_kind() {
        let r: Result<()> = Err(Error::new(Kind::Raced, "bad")).context("parsing x");
        let e = r.unwrap_err();
        assert_eq!(
            (e.to_string().as_str(), e.kind()),
            ("parsing x: bad", Kind::Raced)
        );
        let e = e.with_kind(Kind::Config);
        assert_eq!((e.code(), e.message()), (78, "parsing x: bad"));
    }

    #[test]
    fn json_io_errors_keep_their_io_kind() {
        let e: Error = serde_json::Error::io(io::Error::from(io::ErrorKind::BrokenPipe)).into();
        assert!(!e.is_broken_pipe());
        let e: Error = serde_json::from_str::<u8>("x").unwrap_err().into();
        assert_eq!(e.kind(), Kind::Data);
    }
}
