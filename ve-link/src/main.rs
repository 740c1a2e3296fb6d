//! `ve-link`: the veth/netns plumber (all the work is in the library).
//!
//! The entry point is C's `main`, not Rust's: the runtime's set-up before `fn main`
//! (a stack-overflow handler on an alternate stack, for which glibc reads and the
//! kernel writes out /proc/self/maps) is 20 of the 64 system calls of `--version`,
//! for a message on a stack overflow. std still has the arguments (glibc hands them
//! to it).
// (Under `cargo test` the test harness brings its own `main`.)
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // As the runtime would: a closed stdout is EPIPE, which `cli::main` turns into 0.
    // SAFETY: changing a signal's disposition before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    common::cli::main("ve-link", ve_link::run)
}
