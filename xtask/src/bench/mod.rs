//! `cargo xtask bench`: the tools measured next to what users would pick instead.

use crate::util::Result;

pub fn run(_args: &[String]) -> Result {
    Err("bench: not yet written".into())
}
