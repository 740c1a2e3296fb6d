//! What the pipeline bench prints and writes: the table, each system's notes, the
//! target verdicts, the CSVs and the PNG plot.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use super::{ip_batch, machine, nixos, ve, windows, Samples, Window, SYSTEMS};
pub use crate::bench::stats::median;
use crate::{bench::stats::out_dir, util::Result};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub type Results = BTreeMap<&'static str, Samples>;

pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

pub fn cell(s: Option<(Duration, Duration)>) -> String {
    s.map_or("-".into(), |(m, p)| format!("{} / {}", ms(m), ms(p)))
}

pub fn pipeline(res: &Results, n: usize, load: &str) -> Result<String> {
    let ws = windows(n);
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\nPer-container wall time, ms, median / p90 over the window, each tool's process \
         starts included; {n} containers per system\n{}; load before the run {load}\n",
        machine()
    );
    let head: Vec<String> = ws
        .iter()
        .map(|w| format!("{} ({}-{})", w.label, w.lo, w.hi))
        .collect();
    for key in ["setup", "teardown"] {
        let _ = writeln!(r, "| {key} | {} |", head.join(" | "));
        let _ = writeln!(r, "|---|{}", "---|".repeat(ws.len()));
        for sys in SYSTEMS {
            let Some(s) = res.get(sys.key()) else {
                continue;
            };
            let cells: Vec<String> = ws.iter().map(|w| cell(s.window(key, w))).collect();
            let _ = writeln!(r, "| {} | {} |", sys.label(), cells.join(" | "));
        }
        let _ = writeln!(r);
    }
    for sys in SYSTEMS {
        if let Some(t) = res.get(sys.key()).and_then(|s| s.total("teardown")) {
            let _ = writeln!(
                r,
                "teardown one by one, all {n}: {} {} ms",
                sys.label(),
                ms(t)
            );
        }
    }
    for sys in SYSTEMS {
        if let Some(s) = res.get(sys.key()) {
            if let Some(b) = s.total("bulk-setup") {
                let _ = writeln!(r, "bulk setup of {n}: {} {} ms", sys.label(), ms(b));
            }
            r.push_str(&sys.notes(s, &ws, n));
        }
    }

    let med =
        |sys: &str, key: &str, w: &Window| res.get(sys).and_then(|s| s.window(key, w)).map(|x| x.0);
    let bulk = res
        .get(ve::KEY)
        .and_then(|s| s.total("bulk-setup"))
        .zip(res.get(nixos::KEY).and_then(|s| s.total("setup")));
    let _ = writeln!(r, "\nTargets (medians over each window):");
    for v in verdicts(&med, &ws, bulk) {
        let _ = writeln!(r, "- {}", v.line());
    }

    write_csv(res, &ws)?;
    plot(res, n)?;
    Ok(r)
}

/// What a target asks of a ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Want {
    AtMost(f64),
    AtLeast(f64),
}

/// One target's outcome; `ratio` is `None` when a system was not measured.
#[derive(Debug, PartialEq)]
pub struct Verdict {
    pub what: String,
    pub ratio: Option<f64>,
    pub want: Want,
}

impl Verdict {
    pub fn met(&self) -> Option<bool> {
        self.ratio.map(|x| match self.want {
            Want::AtMost(m) => x <= m,
            Want::AtLeast(m) => x >= m,
        })
    }

    pub fn line(&self) -> String {
        match (self.ratio, self.met()) {
            (Some(x), Some(ok)) => {
                format!(
                    "{}: {x:.2}x, {}",
                    self.what,
                    if ok { "met" } else { "MISSED" }
                )
            }
            _ => format!("{}: not measured", self.what),
        }
    }
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
    Some(a?.as_secs_f64() / b?.as_secs_f64()).filter(|x| x.is_finite())
}

/// The targets. `med(system, key, window)` is a median; `bulk` the bulk setup
/// of all containers and the NixOS sequence's setups one by one, when measured.
pub fn verdicts(
    med: &dyn Fn(&str, &str, &Window) -> Option<Duration>,
    ws: &[Window],
    bulk: Option<(Duration, Duration)>,
) -> Vec<Verdict> {
    let (Some(first), Some(last)) = (ws.first(), ws.last()) else {
        return Vec::new();
    };
    let ends: Vec<&Window> = if ws.len() > 1 {
        vec![first, last]
    } else {
        vec![first]
    };
    let (v, nix, batch) = (ve::KEY, nixos::KEY, ip_batch::KEY);
    let mut out = Vec::new();
    for w in &ends {
        out.push(Verdict {
            what: format!(
                "setup no slower than the `ip -batch` reference at the {} (ve / reference)",
                w.label
            ),
            ratio: ratio(med(v, "setup", w), med(batch, "setup", w)),
            want: Want::AtMost(1.0),
        });
    }
    for w in ws {
        out.push(Verdict {
            what: format!(
                "setup at least 2.5x faster than the NixOS sequence at the {} (NixOS / ve)",
                w.label
            ),
            ratio: ratio(med(nix, "setup", w), med(v, "setup", w)),
            want: Want::AtLeast(2.5),
        });
    }
    out.push(Verdict {
        what: format!(
            "flat: setup at the {} within 1.3x of the {}",
            last.label, first.label
        ),
        ratio: ratio(med(v, "setup", last), med(v, "setup", first)),
        want: Want::AtMost(1.3),
    });
    for w in &ends {
        out.push(Verdict {
            what: format!(
                "single teardown (ve-link down + ve-alloc release) no slower than NixOS's \
                 `ip link del` at the {} (ve / ip link del)",
                w.label
            ),
            ratio: ratio(med(v, "teardown", w), med(nix, "teardown", w)),
            want: Want::AtMost(1.0),
        });
    }
    if let Some((b, one_by_one)) = bulk {
        out.push(Verdict {
            what: "bulk setup at least 15x faster than the NixOS sequence one by one".into(),
            ratio: ratio(Some(one_by_one), Some(b)),
            want: Want::AtLeast(15.0),
        });
    }
    out
}

fn write_csv(res: &Results, ws: &[Window]) -> Result {
    let dir = out_dir()?;
    let mut rows = String::from("system,container,setup_ms,teardown_ms\n");
    let mut summary = String::from("system,phase,window,first,last,median_ms,p90_ms\n");
    for sys in SYSTEMS {
        let key = sys.key();
        let Some(s) = res.get(key) else { continue };
        let (setup, down) = (s.get("setup"), s.get("teardown"));
        for (i, d) in setup.iter().enumerate() {
            let t = down.get(i).map(|d| format!("{:.3}", d.as_secs_f64() * 1e3));
            let _ = writeln!(
                rows,
                "{key},{},{:.3},{}",
                i + 1,
                d.as_secs_f64() * 1e3,
                t.unwrap_or_default()
            );
        }
        for phase in ["setup", "teardown"] {
            for w in ws {
                if let Some((m, p)) = s.window(phase, w) {
                    let _ = writeln!(
                        summary,
                        "{key},{phase},{},{},{},{:.3},{:.3}",
                        w.label,
                        w.lo,
                        w.hi,
                        m.as_secs_f64() * 1e3,
                        p.as_secs_f64() * 1e3
                    );
                }
            }
        }
    }
    std::fs::write(dir.join("pipeline.csv"), rows).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("pipeline-summary.csv"), summary).map_err(|e| e.to_string())
}

/// target/bench/pipeline.png: setup time against the container count, one line per
/// system (a running median over 11 containers, so the lines stay readable).
fn plot(res: &Results, n: usize) -> Result {
    use plotters::prelude::*;
    let font = std::fs::read(FONT)
        .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| format!("{FONT}: not a usable font"))?;
    let path = out_dir()?.join("pipeline.png");
    let err = |e: DrawingAreaErrorKind<_>| format!("drawing {}: {e:?}", path.display());
    let series: Vec<(&str, Vec<(f64, f64)>)> = SYSTEMS
        .iter()
        .filter_map(|sys| {
            let v = res.get(sys.key())?.get("setup");
            let pts = (0..v.len())
                .map(|i| {
                    let lo = i.saturating_sub(5);
                    let hi = (i + 6).min(v.len());
                    (
                        (i + 1) as f64,
                        median(v[lo..hi].to_vec()).as_secs_f64() * 1e3,
                    )
                })
                .collect();
            Some((sys.label(), pts))
        })
        .collect();
    let all = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let (lo, hi) = all.fold((f64::MAX, 0f64), |(a, b), y| (a.min(y), b.max(y)));
    if series.is_empty() || hi <= 0.0 {
        return Ok(());
    }
    let root = BitMapBackend::new(&path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Per-container setup time, process starts included ({})",
                machine()
            ),
            ("sans-serif", 18),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            1f64..n.max(2) as f64,
            ((10f64.powf((lo * 0.8).log10().floor()))..(hi * 3.0)).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("containers on the host (this one included)")
        .y_desc("setup, ms (log scale; running median of 11)")
        .label_style(("sans-serif", 15))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_labels(30)
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    let colors = [
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(230, 159, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(90, 90, 90),
    ];
    for (i, (lab, pts)) in series.into_iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(3)))
            .map_err(err)?
            .label(lab)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 25, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// `bench alloc`'s CSV, as lines for the report.
pub fn alloc_summary() -> Result<String> {
    let csv = std::fs::read_to_string(out_dir()?.join("alloc.csv")).map_err(|e| e.to_string())?;
    let mut r = String::from("\nAllocator alone (one process per allocation, median / p90 ms):\n");
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if let [n, tool, m, p] = f[..] {
            let _ = writeln!(r, "- {tool} at {n} leases: {m} / {p}");
        }
    }
    Ok(r)
}

/// `bench nm --cycles 30` run as a child; its `--watch` line for the report.
pub fn nm_summary(exe: &Path) -> Result<String> {
    let out = Command::new(exe)
        .args(["bench", "nm", "--cycles", "30"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("bench nm: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    say!("{text}");
    if !out.status.success() {
        return Err(format!("bench nm failed: {}", out.status));
    }
    let watch = text
        .lines()
        .find(|l| l.starts_with("--watch"))
        .unwrap_or("--watch: no result");
    Ok(format!(
        "\nnm-unmanage against a sandboxed NetworkManager: {watch}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Medians from a table of (system, key, window label) -> ms.
    fn table<'a>(
        rows: &'a [(&'static str, &'static str, &'static str, u64)],
    ) -> impl Fn(&str, &str, &Window) -> Option<Duration> + 'a {
        move |sys, key, w| {
            rows.iter()
                .find(|r| r.0 == sys && r.1 == key && r.2 == w.label)
                .map(|r| Duration::from_micros(r.3))
        }
    }

    #[test]
    fn verdicts_follow_the_targets() {
        let ws = windows(1000);
        let rows = [
            ("ve", "setup", "1st-10th", 4000),
            ("ve", "setup", "~100th", 4500),
            ("ve", "setup", "~500th", 5000),
            ("ve", "setup", "~1,000th", 5400),
            ("batch", "setup", "1st-10th", 4300),
            ("batch", "setup", "~1,000th", 5000),
            ("nixos", "setup", "1st-10th", 12000),
            ("nixos", "setup", "~100th", 12000),
            ("nixos", "setup", "~500th", 12000),
            ("nixos", "setup", "~1,000th", 12000),
            ("ve", "teardown", "1st-10th", 3000),
            ("nixos", "teardown", "1st-10th", 3000),
            ("ve", "teardown", "~1,000th", 4000),
        ];
        let med = table(&rows);
        let v = verdicts(&med, &ws, None);
        let by = |s: &str| {
            v.iter()
                .find(|x| x.what.contains(s))
                .unwrap_or_else(|| panic!("no verdict {s:?} in {v:?}"))
        };
        // 2 reference + 4 NixOS + flat + 2 teardown.
        assert_eq!(v.len(), 9);
        assert_eq!(by("reference at the 1st-10th").met(), Some(true));
        let at_end = by("reference at the ~1,000th");
        assert_eq!(at_end.met(), Some(false));
        assert!(
            at_end.line().ends_with("1.08x, MISSED"),
            "{}",
            at_end.line()
        );
        assert_eq!(by("NixOS sequence at the 1st-10th").ratio, Some(3.0));
        assert_eq!(by("NixOS sequence at the ~1,000th").met(), Some(false));
        assert_eq!(by("flat").ratio, Some(1.35));
        assert_eq!(by("flat").met(), Some(false));
        assert_eq!(by("teardown (ve-link down + ve-alloc release) no slower than NixOS's `ip link del` at the 1st-10th").met(), Some(true));
        let unmeasured = by("`ip link del` at the ~1,000th");
        assert_eq!(unmeasured.met(), None);
        assert!(unmeasured.line().ends_with("not measured"));
        let with_bulk = verdicts(
            &med,
            &ws,
            Some((Duration::from_millis(100), Duration::from_millis(1600))),
        );
        let b = with_bulk.last().unwrap();
        assert!(b.what.starts_with("bulk setup"));
        assert_eq!((b.ratio, b.met()), (Some(16.0), Some(true)));
    }

    #[test]
    fn one_window_gives_each_end_target_once() {
        let ws = windows(5);
        let rows = [("ve", "setup", "~5th", 1000)];
        let v = verdicts(&table(&rows), &ws, None);
        assert_eq!(v.len(), 4);
        assert_eq!(
            v.iter().find(|x| x.what.starts_with("flat")).unwrap().ratio,
            Some(1.0)
        );
        assert!(verdicts(&table(&rows), &[], None).is_empty());
    }

    #[test]
    fn ratios_need_both_sides_and_a_nonzero_base() {
        let d = Duration::from_millis;
        assert_eq!(ratio(Some(d(3)), Some(d(2))), Some(1.5));
        assert_eq!(ratio(None, Some(d(2))), None);
        assert_eq!(ratio(Some(d(3)), Some(d(0))), None);
        assert_eq!(cell(Some((d(2), d(5)))), "2.0 / 5.0");
        assert_eq!(cell(None), "-");
    }
}
