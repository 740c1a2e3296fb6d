//! The `nm-unmanage` binary: everything lives in the library.

fn main() {
    common::cli::main("nm-unmanage", nm_unmanage::run)
}
