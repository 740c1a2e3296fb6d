//! `cargo xtask bench`: the tools measured next to what users would pick instead.

mod alloc;
mod link;
mod nat;
mod nm;
mod pipeline;
mod stats;

use crate::util::Result;

const USAGE: &str = "\
usage: cargo xtask bench [WHAT] [options]

WHAT:
  alloc   ve-alloc per process at growing lease counts, and the CNI host-local plugin
          options: --runs K (timed allocations per point, default 100)
                   --sizes N,N,...  (default 100,1000,10000,30000)
                   --host-local-sizes N,...  (default 1000,10000)
  nm      nm-unmanage --watch and --persist against a sandboxed NetworkManager:
          time from veth creation to unmanaged, DHCP DISCOVERs that got out
          options: see `cargo xtask bench nm --help`
  nat     ve-nat up/down and the per-container NAT cost, against CNI ptp with ipMasq
          options: --containers N, --runs R
  link    ve-link up/down against the NixOS `ip` sequence, 1st/100th/1000th container
          options: --containers N (default 1000), --samples S (default 7)
  pipeline  the whole job per container: ve-alloc | ve-link (+ ve-nat) against the NixOS
          `ip` sequence, CNI ptp+host-local with ipMasq, netavark and `ip -batch`;
          then alloc and nm; a table, CSVs and a PNG plot
          options: see `cargo xtask bench pipeline --help`
  all     everything above with default options (the default)

Results: a table on stdout and CSV files under target/bench/.
";

pub fn run(args: &[String]) -> Result {
    let (what, rest) = match args.split_first() {
        Some((w, r)) if !w.starts_with('-') => (w.as_str(), r),
        _ => ("all", args),
    };
    match what {
        "alloc" => alloc::run(rest),
        "nm" => nm::run(rest),
        "nat" => nat::run(rest),
        "link" => link::run(rest),
        "pipeline" => pipeline::run(rest),
        "all" => alloc::run(&[])
            .and_then(|()| link::run(&[]))
            .and_then(|()| nat::run(&[]))
            .and_then(|()| nm::run(&[]))
            .and_then(|()| pipeline::run(&["--no-alloc".into(), "--no-nm".into()])),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("bench: unknown benchmark {other:?}\n{USAGE}")),
    }
}
