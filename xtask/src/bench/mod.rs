//! `cargo xtask bench`: the tools measured next to what users would pick instead.

mod link;

use crate::util::Result;

pub fn run(args: &[String]) -> Result {
    match args.first().map(String::as_str) {
        Some("link") => link::run(&args[1..]),
        _ => Err("bench: not yet written".into()),
    }
}
