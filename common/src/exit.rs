//! The exit-code table every tool shares (`<sysexits.h>` values).

use std::fmt;

/// Why a tool stopped. The numeric value is the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// Checked and found different (like `diff` and `grep`).
    Differs = 1,
    /// Bad command line.
    Usage = 64,
    /// Bad input data: a malformed name, address, pool or file.
    DataErr = 65,
    /// A required input does not exist (a network namespace, a file).
    NoInput = 66,
    /// A service the tool talks to is not there (NetworkManager, iptables).
    Unavailable = 69,
    /// A bug in the tool.
    Software = 70,
    /// An operating system call failed.
    OsErr = 71,
    /// Cannot create what was asked for (an exhausted address pool).
    CantCreate = 73,
    /// Reading or writing a file or store failed, or the store is corrupt.
    IoErr = 74,
    /// Temporary failure: try again (a lock held too long).
    TempFail = 75,
    /// Not enough privilege.
    NoPerm = 77,
    /// Configuration error (a bad config file, a store written by an unknown version).
    Config = 78,
}

impl Exit {
    /// Every code, in table order (for documentation and tests).
    pub const ALL: [Exit; 13] = [
        Exit::Ok,
        Exit::Differs,
        Exit::Usage,
        Exit::DataErr,
        Exit::NoInput,
        Exit::Unavailable,
        Exit::Software,
        Exit::OsErr,
        Exit::CantCreate,
        Exit::IoErr,
        Exit::TempFail,
        Exit::NoPerm,
        Exit::Config,
    ];

    /// The process exit code.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// A short description, as printed in the README's table.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "success",
            Exit::Differs => "checked and found different",
            Exit::Usage => "bad command line",
            Exit::DataErr => "bad input data (name, address, pool, file contents)",
            Exit::NoInput => "input missing (lease, network namespace, interface, file)",
            Exit::Unavailable => {
                "service unavailable (NetworkManager, iptables; or not answering in time)"
            }
            Exit::Software => "internal error",
            Exit::OsErr => "operating system error",
            Exit::CantCreate => "cannot create (address pool exhausted, a foreign link in the way)",
            Exit::IoErr => "I/O error (writing a file, a corrupt store)",
            Exit::TempFail => "temporary failure, try again (lock busy, no answer in time, a race)",
            Exit::NoPerm => "permission denied",
            Exit::Config => {
                "configuration error (bad config file, unknown store version, unsafe directory)"
            }
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.meaning())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sysexits_and_unique() {
        let mut codes: Vec<i32> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes[..3], [0, 1, 64]);
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Exit::ALL.len());
        assert!(Exit::ALL[2..].iter().all(|e| (64..=78).contains(&e.code())));
    }
}
