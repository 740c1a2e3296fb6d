//! The `ve-alloc` binary: everything lives in the library.

fn main() {
    common::cli::main("ve-alloc", ve_alloc::run)
}
