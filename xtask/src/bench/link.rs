//! `cargo xtask bench link`: `ve-link up`/`down` alone against the NixOS sequence of
//! `ip` commands, as a subset of `bench pipeline` (the same lockstep, table and files).

use crate::util::Result;

const USAGE: &str = "\
usage: cargo xtask bench link [--containers N] [--tools DIR]

Runs `cargo xtask bench pipeline --systems ve,ve-link,nixos,nixos-ipn,batch --no-alloc
--no-nm`: ve-link alone (addresses as flags), the whole ve pipeline, both NixOS rows and
the `ip -batch` reference, N containers each (default 1000), up one by one, down one by
one, then `ve-link down --all`. --tools DIR uses the tools in DIR instead of building
release ones.";

const SYSTEMS: &str = "ve,ve-link,nixos,nixos-ipn,batch";

/// The pipeline bench's arguments, or `None` for `--help`.
pub(super) fn parse(args: &[String]) -> Result<Option<Vec<String>>> {
    let mut out: Vec<String> = ["--systems", SYSTEMS, "--no-alloc", "--no-nm"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--containers" | "--tools" => {
                let v = it
                    .next()
                    .ok_or_else(|| format!("bench link: {a} needs a value\n{USAGE}"))?;
                out.extend([a.clone(), v.clone()]);
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("bench link: unknown option {other:?}\n{USAGE}")),
        }
    }
    // The pipeline's own parser checks the values.
    super::pipeline::parse(&out)?;
    Ok(Some(out))
}

pub fn run(args: &[String]) -> Result {
    match parse(args)? {
        None => {
            sayln!("{USAGE}");
            Ok(())
        }
        Some(pipeline_args) => super::pipeline::run(&pipeline_args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn link_is_the_pipeline_with_ve_link_and_the_nixos_rows() {
        let a = parse(&args(&["--containers", "7", "--tools", "/t"]))
            .unwrap()
            .unwrap();
        assert_eq!(
            a,
            args(&[
                "--systems",
                SYSTEMS,
                "--no-alloc",
                "--no-nm",
                "--containers",
                "7",
                "--tools",
                "/t"
            ])
        );
        assert!(parse(&args(&["--containers", "0"])).is_err());
        assert!(parse(&args(&["--containers"])).is_err());
        assert!(parse(&args(&["--samples", "1"])).is_err());
        assert_eq!(parse(&args(&["-h"])).unwrap(), None);
    }
}
