//! `cargo xtask bench`: the tools measured next to what users would pick instead.

mod alloc;
mod cni;
mod cni_podman;
mod link;
mod nat;
mod nm;
mod pipeline;
mod stats;
mod watch;

use crate::util::Result;

const USAGE: &str = "\
usage: cargo xtask bench [WHAT] [options]

WHAT:
  alloc   ve-alloc per process at growing lease counts, and the CNI host-local plugin;
          the etcd store on a 3-member etcd cluster in namespaces: alloc at growing
          fleet lease counts, the etcdctl put floor, 1 vs 3 nodes x 16 allocators
          options: --runs K (timed allocations per point, default 100)
                   --sizes N,N,...  (default 100,1000,10000,30000)
                   --host-local-sizes N,...  (default 1000,10000)
                   --etcd on|off  (default on)
                   --fleet-leases N,...  (default 100,1000,30000)
                   --parallel P, --per-node N  (default 16, 160)
  cni     the tools as a CNI chain (ve-link + ve-alloc, ve-nat, nm-unmanage) against
          ptp + host-local (ipMasq) and portmap, called as a runtime calls a conflist:
          ADD and DEL up to N containers, rules per container
          ADD and DEL up to N containers, rules per container; then podman 4.3
          `run --rm ... true` on each chain and on `--network none`: each network's
          share of it
          options: --containers N (default 1000), --tools DIR, --podman-runs K
  nm      nm-unmanage --watch and --persist against a sandboxed NetworkManager and
          systemd-networkd: time from veth creation to unmanaged, DHCP DISCOVERs
          and networkd addresses that got out
          options: see `cargo xtask bench nm --help`
  nat     ve-nat up/down and the per-container NAT cost, against CNI ptp with ipMasq
          options: --containers N, --runs R
  watch   ve-nat watch: NAT back after `nft flush ruleset` (--flushes N, default 20)
  link    ve-link up/down alone against the NixOS `ip` sequence: the pipeline bench
          with ve, ve-link, both NixOS rows and `ip -batch`
          options: --containers N (default 1000), --tools DIR
  pipeline  the whole job per container: ve-alloc | ve-link (+ ve-nat) against the NixOS
          `ip` sequence, CNI ptp+host-local with ipMasq, netavark and `ip -batch`;
          then alloc and nm; a table, CSVs and a PNG plot
          options: see `cargo xtask bench pipeline --help`
  all     alloc, nat, nm and pipeline with default options (the default; `link` is a
          subset of `pipeline`)

Results: a table on stdout and CSV files under target/bench/.
";

pub fn run(args: &[String]) -> Result {
    let (what, rest) = match args.split_first() {
        Some((w, r)) if !w.starts_with('-') => (w.as_str(), r),
        _ => ("all", args),
    };
    match what {
        "alloc" => alloc::run(rest),
        "cni" => cni::run(rest),
        "nm" => nm::run(rest),
        "nat" => nat::run(rest),
        "link" => link::run(rest),
        "pipeline" => pipeline::run(rest),
        "watch" => watch::run(rest),
        "all" => {
            if help_only(what, rest)? {
                say!("{USAGE}");
                return Ok(());
            }
            alloc::run(&[])
                .and_then(|()| nat::run(&[]))
                .and_then(|()| nm::run(&[]))
                .and_then(|()| pipeline::run(&["--no-alloc".into(), "--no-nm".into()]))
        }
        "help" => {
            say!("{USAGE}");
            Ok(())
        }
        other => Err(format!("bench: unknown benchmark {other:?}\n{USAGE}")),
    }
}

/// Parse only: whether `bench WHAT REST` asks for its usage (and so runs nothing), or
/// the usage error it gets before anything runs.
fn help_only(what: &str, rest: &[String]) -> Result<bool> {
    match what {
        "alloc" => alloc::parse(rest).map(|o| o.is_none()),
        "cni" => cni::parse(rest).map(|o| o.is_none()),
        "nm" => nm::parse(rest).map(|o| o.is_none()),
        "nat" => nat::parse(rest).map(|o| o.is_none()),
        "link" => link::parse(rest).map(|o| o.is_none()),
        "pipeline" => pipeline::parse(rest).map(|o| o.is_none()),
        "all" => match rest {
            [] => Ok(false),
            [h] if h == "-h" || h == "--help" => Ok(true),
            [other, ..] => Err(format!(
                "bench: `all` takes no options (got {other:?})\n{USAGE}"
            )),
        },
        other => Err(format!("bench: unknown benchmark {other:?}\n{USAGE}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_bench_takes_help_and_refuses_unknown_options_before_running() {
        for what in ["all", "alloc", "cni", "nm", "nat", "link", "pipeline"] {
            for help in ["-h", "--help"] {
                assert_eq!(help_only(what, &args(&[help])), Ok(true), "{what} {help}");
            }
            assert!(help_only(what, &args(&["--bogus"])).is_err(), "{what}");
        }
        assert_eq!(help_only("link", &args(&["--containers", "5"])), Ok(false));
        assert!(help_only("alloc", &args(&["--runs"])).is_err());
        assert!(help_only("nope", &[]).is_err());
    }
}
