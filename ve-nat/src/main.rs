//! `ve-nat`: the binary; everything lives in the library.

fn main() {
    common::cli::main("ve-nat", ve_nat::run)
}
