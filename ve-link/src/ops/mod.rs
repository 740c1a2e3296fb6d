//! The subcommands at work, one file per job: `up` and `check` (observe, plan, apply
//! with rollback), teardown (`down`, `gc`), `list`, and the rule for which links are
//! ve-link's (`crate::ours`).

use std::fs;

use common::{Error, Exit, Result};

pub mod bulk;
mod list;
pub mod routes;
mod teardown;
mod up;

pub use list::list;
pub use teardown::{down, gc};
pub use up::{bring_up, check, differences, up, up_opened, Opened};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Exit 77 before touching anything when the process cannot change the network (and,
/// for commands that enter a container namespace, cannot `setns`).
pub fn require_privilege(setns: bool) -> Result<()> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("reading /proc/self/status", e))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let mut missing = Vec::new();
    if eff & (1 << CAP_NET_ADMIN) == 0 {
        missing.push("CAP_NET_ADMIN");
    }
    if setns && eff & (1 << CAP_SYS_ADMIN) == 0 {
        missing.push("CAP_SYS_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            Exit::NoPerm,
            format!(
                "not enough privilege: needs {} (run as root)",
                missing.join(" and ")
            ),
        ))
    }
}

/// The first of `errors`, carrying the others' text along.
fn first_of(mut errors: Vec<Error>) -> Option<Error> {
    if errors.is_empty() {
        return None;
    }
    let first = errors.remove(0);
    let rest: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    if rest.is_empty() {
        Some(first)
    } else {
        Some(Error::new(
            first.exit(),
            format!("{first}; {}", rest.join("; ")),
        ))
    }
}
