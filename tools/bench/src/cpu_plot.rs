//! The second plot, `cpu.svg`: the backend's CPU against the throughput it delivered,
//! one panel per throughput cell, one dot per run, one colour per variant. It shows
//! what each polling mode pays: DPDK's lcore at a whole CPU whatever it moves, vdpad's
//! fixed polling, adaptive polling and notifications between them. Drawn after every
//! run, and for an earlier results directory with `vdpa-bench --plot DIR` (from its
//! `runs.csv`).

use std::fmt::Write;

use crate::runner::Run;

/// One run's position in the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Cell id (one panel each).
    pub cell: String,
    /// Variant name (one colour each).
    pub variant: String,
    /// Aggregate throughput.
    pub mpps: f64,
    /// Backend CPU, 1.0 = one CPU.
    pub cpu: f64,
}

/// The points of the throughput runs that produced both numbers.
pub fn points(runs: &[Run]) -> Vec<Point> {
    runs.iter()
        .filter(|r| r.ok() && !r.discarded && r.latency.is_none())
        .filter_map(|r| {
            Some(Point {
                cell: r.cell.clone(),
                variant: r.variant.clone(),
                mpps: r.mpps?,
                cpu: r.backend_cpu_util?,
            })
        })
        .collect()
}

/// The points of a `runs.csv` written by [`crate::report::runs_csv`] (any vdpa-bench
/// since the column was added: columns are found by name).
pub fn points_from_csv(text: &str) -> Result<Vec<Point>, String> {
    let mut lines = text.lines();
    let head = split_csv(lines.next().ok_or("runs.csv is empty")?);
    let col = |name: &str| {
        head.iter()
            .position(|h| h == name)
            .ok_or(format!("runs.csv has no `{name}` column"))
    };
    let (cell, variant, ok, mpps, cpu, p50) = (
        col("cell")?,
        col("variant")?,
        col("ok")?,
        col("mpps")?,
        col("backend_cpu_util")?,
        col("p50_us")?,
    );
    let discarded = col("discarded").ok();
    let mut out = Vec::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
        let f = split_csv(line);
        let get = |i: usize| {
            f.get(i)
                .map(String::as_str)
                .ok_or(format!("runs.csv line {}: too few fields", n + 2))
        };
        if get(ok)? != "true" || discarded.is_some_and(|d| f.get(d).is_some_and(|v| v == "true")) {
            continue;
        }
        if !get(p50)?.is_empty() {
            continue;
        }
        let (Ok(m), Ok(c)) = (get(mpps)?.parse::<f64>(), get(cpu)?.parse::<f64>()) else {
            continue;
        };
        out.push(Point {
            cell: get(cell)?.to_string(),
            variant: get(variant)?.to_string(),
            mpps: m,
            cpu: c,
        });
    }
    Ok(out)
}

/// Splits one CSV line, honouring double quotes (`""` inside is one quote).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("one field").push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

const COLOURS: [&str; 8] = [
    "#1f4e9c", "#3a7d44", "#c0504d", "#e69f00", "#7b3294", "#008b8b", "#8c564b", "#555555",
];

/// Appears-first order of the distinct values of `key`.
fn order<'a>(points: &'a [Point], key: impl Fn(&'a Point) -> &'a str) -> Vec<&'a str> {
    let mut v: Vec<&str> = Vec::new();
    for p in points {
        let k = key(p);
        if !v.contains(&k) {
            v.push(k);
        }
    }
    v
}

/// The plot: a grid of panels (three per row), Mpps across, backend CPU up.
pub fn svg(points: &[Point], subtitle: &str) -> String {
    let cells = order(points, |p| &p.cell);
    let variants = order(points, |p| &p.variant);
    let (pw, ph, cols) = (300.0, 210.0, 3usize);
    let rows = cells.len().div_ceil(cols).max(1);
    let legend_h = 18.0 * variants.len() as f64;
    let top = 60.0 + legend_h;
    let width = 40.0 + cols as f64 * (pw + 50.0);
    let height = top + rows as f64 * (ph + 70.0);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{:.0}" y="22" font-size="15" font-weight="bold" text-anchor="middle">Backend CPU against throughput, one dot per run</text>"#,
        width / 2.0
    );
    let _ = writeln!(
        o,
        r##"<text x="{:.0}" y="40" fill="#555" text-anchor="middle">{}</text>"##,
        width / 2.0,
        esc(subtitle)
    );
    for (i, v) in variants.iter().enumerate() {
        let y = 58.0 + 18.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<circle cx="50" cy="{:.0}" r="5" fill="{}"/><text x="62" y="{:.0}">{}</text>"#,
            y - 4.0,
            COLOURS[i % COLOURS.len()],
            y,
            esc(v)
        );
    }
    for (k, cell) in cells.iter().enumerate() {
        let x0 = 60.0 + (k % cols) as f64 * (pw + 50.0);
        let y0 = top + (k / cols) as f64 * (ph + 70.0) + 20.0;
        let mine: Vec<&Point> = points.iter().filter(|p| p.cell == *cell).collect();
        let xmax = nice(mine.iter().map(|p| p.mpps).fold(0.1, f64::max));
        // Headroom above one CPU, where DPDK's dots sit.
        let ymax = match mine.iter().map(|p| p.cpu).fold(0.0, f64::max) {
            m if m <= 1.2 => 1.2,
            m => nice(m),
        };
        let _ = writeln!(
            o,
            r##"<text x="{:.0}" y="{:.0}" font-weight="bold" text-anchor="middle">{}</text><rect x="{x0:.0}" y="{y0:.0}" width="{pw:.0}" height="{ph:.0}" fill="none" stroke="#999"/>"##,
            x0 + pw / 2.0,
            y0 - 6.0,
            esc(cell)
        );
        for f in [0.0, 0.5, 1.0] {
            let _ = writeln!(
                o,
                r##"<text x="{:.1}" y="{:.0}" text-anchor="middle" fill="#333">{:.1}</text><text x="{:.0}" y="{:.1}" text-anchor="end" fill="#333">{:.1}</text>"##,
                x0 + pw * f,
                y0 + ph + 15.0,
                xmax * f,
                x0 - 4.0,
                y0 + ph * (1.0 - f) + 4.0,
                ymax * f
            );
        }
        let _ = writeln!(
            o,
            r##"<text x="{:.0}" y="{:.0}" text-anchor="middle" fill="#555">Mpps</text><text x="{:.0}" y="{:.0}" fill="#555">CPU</text>"##,
            x0 + pw / 2.0,
            y0 + ph + 32.0,
            x0 - 36.0,
            y0 - 6.0
        );
        for p in mine {
            let c = variants.iter().position(|v| *v == p.variant).unwrap_or(0);
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}" opacity="0.8"/>"#,
                x0 + pw * (p.mpps / xmax).clamp(0.0, 1.0),
                y0 + ph * (1.0 - (p.cpu / ymax).clamp(0.0, 1.0)),
                COLOURS[c % COLOURS.len()]
            );
        }
    }
    o += "</svg>\n";
    o
}

/// `v` rounded up to 1, 2 or 5 times a power of ten.
fn nice(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&x| x >= v)
        .unwrap_or(10.0 * p)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "\
date,commit,cell,variant,rep,ok,mpps,gbps,p50_us,backend_cpu_util,discarded,error
d,c,tp-64,A,0,true,4.5,2.3,,1.000000,false,
d,c,tp-64,\"event_idx=off,burst=8\",0,true,9.0,4.6,,0.500000,false,
d,c,tp-64,B,1,true,9.5,4.8,,0.600000,true,
d,c,lat-64,A,0,true,,,15.1,0.2,false,
d,c,tp-64,B,2,false,,,,,false,\"vdpad does not accept x, y\"
";

    #[test]
    fn csv_points_skip_latency_failed_and_discarded_runs() {
        let p = points_from_csv(CSV).unwrap();
        assert_eq!(
            p,
            vec![
                Point {
                    cell: "tp-64".into(),
                    variant: "A".into(),
                    mpps: 4.5,
                    cpu: 1.0
                },
                Point {
                    cell: "tp-64".into(),
                    variant: "event_idx=off,burst=8".into(),
                    mpps: 9.0,
                    cpu: 0.5
                },
            ]
        );
        assert!(points_from_csv("cell,variant\n")
            .unwrap_err()
            .contains("no `ok` column"));
    }

    #[test]
    fn one_panel_per_cell_and_one_colour_per_variant() {
        let pt = |cell: &str, variant: &str, mpps, cpu| Point {
            cell: cell.into(),
            variant: variant.into(),
            mpps,
            cpu,
        };
        let s = svg(
            &[
                pt("scale-16", "A (DPDK)", 7.0, 1.0),
                pt("scale-16", "vdpad <defaults>", 12.0, 0.99),
                pt("idle-1", "A (DPDK)", 0.0, 1.0),
            ],
            "sub",
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches(r##"fill="none" stroke="#999""##).count(), 2);
        assert_eq!(s.matches(r#"r="4""#).count(), 3);
        assert!(s.contains("vdpad &lt;defaults&gt;"));
        // The two A points share a colour, B has another.
        assert_eq!(s.matches(r##"r="4" fill="#1f4e9c""##).count(), 2);
        assert_eq!(s.matches(r##"r="4" fill="#3a7d44""##).count(), 1);
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice(0.93), 1.0);
        assert_eq!(nice(12.2), 20.0);
        assert_eq!(nice(4.1), 5.0);
        assert_eq!(nice(1.0), 1.0);
    }
}
