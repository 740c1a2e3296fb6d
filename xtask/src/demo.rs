//! `cargo xtask demo`: the README's main command.

use crate::util::Result;

pub fn run(_args: &[String]) -> Result {
    Err("demo: not yet written".into())
}
