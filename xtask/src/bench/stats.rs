//! What the benchmarks share: timing one process, `ip -batch`, medians and percentiles,
//! options, output files.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::util::{root, show, Result};

/// Run `cmd` with `input` on stdin (if any); its wall time; fail with its output.
pub fn timed(cmd: &mut Command, input: Option<&str>) -> Result<Duration> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", show(cmd)))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", show(cmd)))?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let d = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{}: {}: {}{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(d)
}

/// `ip OPTS -batch -` with `script` on stdin (`-force` in `opts` to go on past errors).
pub fn ip_batch(opts: &[&str], script: &str) -> Result {
    timed(
        Command::new("ip").args(opts).args(["-batch", "-"]),
        Some(script),
    )
    .map(|_| ())
}

/// Median and 90th percentile of `samples` (sorted in place).
pub fn median_p90(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

/// The median of `v`.
pub fn median(mut v: Vec<Duration>) -> Duration {
    median_p90(&mut v).0
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Checks that `args` are `--help`/`-h` or pairs of an option in `known` and its value:
/// true for help, an error naming the first argument that is neither.
pub fn refuse_unknown(what: &str, args: &[String], known: &[&str], usage: &str) -> Result<bool> {
    let mut it = args.iter();
    let mut help = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => help = true,
            k if known.contains(&k) => {
                it.next()
                    .ok_or_else(|| format!("{what}: {k} needs a value\n{usage}"))?;
            }
            other => return Err(format!("{what}: unknown option {other:?}\n{usage}")),
        }
    }
    Ok(help)
}

/// The value of `--name V` in `args`, parsed.
pub fn opt<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{name} needs a valid value")),
    }
}

/// A comma-separated list option.
pub fn list_opt(args: &[String], name: &str, default: &[usize]) -> Result<Vec<usize>> {
    match opt::<String>(args, name)? {
        None => Ok(default.to_vec()),
        Some(v) => v
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .map_err(|_| format!("{name}: bad number {n:?}"))
            })
            .collect(),
    }
}

/// target/bench/, created.
pub fn out_dir() -> Result<PathBuf> {
    let d = root().join("target").join("bench");
    std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    Ok(d)
}

/// The machine, for the record: CPU model, cores, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}
