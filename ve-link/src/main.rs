//! `ve-link`: the veth/netns plumber (all the work is in the library).
fn main() {
    common::cli::main("ve-link", ve_link::run)
}
